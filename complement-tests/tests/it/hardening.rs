//! Issue 15: defences the server claims, each attacked here (settings, accounts, sessions).

use paracord_complement::{enc, StatusCode, TestServer};
use serde_json::{json, Value};

// Issue 15 item 15: a misspelt `PARACORD_*` variable stops the start with its name, instead
// of being ignored while the operator believes it applies.
#[tokio::test]
async fn an_unknown_paracord_variable_stops_the_start_and_is_named() {
    let (status, log) = TestServer::start_expecting_failure(|env| {
        TestServer::set_env(env, "PARACORD_REGISTRATION_ENABLD", "false");
    })
    .await;
    assert!(!status.success(), "expected a failed start, log:\n{log}");
    assert!(
        log.contains("PARACORD_REGISTRATION_ENABLD"),
        "expected the variable named, log:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    // The project's own tools' variables are not configuration and do not stop it.
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_CLI_STORE", "/tmp/nowhere");
    })
    .await;
    server.register_random().await;
}

// Issue 15 item 10: refreshes of one token are serialized: of many at once, one wins and
// every access token handed out but the device's current one is dead; logging out then
// leaves no token that works.
#[tokio::test]
async fn racing_refreshes_leave_one_live_token_and_logout_kills_it() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let client = server.client();
    for round in 0..3 {
        let (status, login) = client
            .post(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": alice.localpart },
                    "password": alice.password,
                    "refresh_token": true,
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login: {login}");
        let refresh = login["refresh_token"].as_str().unwrap().to_owned();
        let answers = futures::future::join_all((0..8).map(|_| {
            let client = server.client();
            let refresh = refresh.clone();
            async move {
                client
                    .post("/refresh", &json!({ "refresh_token": refresh }))
                    .await
            }
        }))
        .await;
        let mut issued: Vec<String> = vec![login["access_token"].as_str().unwrap().to_owned()];
        let mut won = 0;
        for (status, body) in &answers {
            if *status == StatusCode::OK {
                won += 1;
                issued.push(body["access_token"].as_str().unwrap().to_owned());
            } else {
                assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "round {round}: {body}");
            }
        }
        assert_eq!(won, 1, "round {round}: one refresh wins, got {answers:?}");
        let mut live = Vec::new();
        for token in &issued {
            let (status, _) = server.client_with_token(token).get("/account/whoami").await;
            if status == StatusCode::OK {
                live.push(token.clone());
            }
        }
        assert_eq!(live.len(), 1, "round {round}: one live token of {issued:?}");
        let (status, body) = server
            .client_with_token(&live[0])
            .post("/logout", &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "logout: {body}");
        for token in &issued {
            let (status, _) = server.client_with_token(token).get("/account/whoami").await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "round {round}: {token} after logout"
            );
        }
    }
}

/// POSTs a registration with `auth` (and a fixed password) for `localpart`.
async fn register_with(server: &TestServer, localpart: &str, auth: Value) -> (StatusCode, Value) {
    server
        .client()
        .post(
            "/register",
            &json!({ "username": localpart, "password": "a long enough password", "auth": auth }),
        )
        .await
}

/// The token a server without an admin printed at start.
fn printed_admin_token(server: &TestServer) -> Option<String> {
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let marker = "one-time registration token";
    log.lines()
        .rfind(|l| l.contains(marker) && l.starts_with("No admin"))
        .and_then(|l| l.rsplit(": ").next())
        .map(|t| t.trim().to_owned())
}

// Issue 15 item 12: a fresh server does not hand admin to whoever registers first. With the
// default settings registration is closed but for the one-time token printed at start; the
// account made with it is the admin, and the token works once.
#[tokio::test]
async fn a_fresh_server_gives_admin_only_to_its_printed_token() {
    let mut server = TestServer::start_with(|env| {
        env.retain(|(k, _)| k != "PARACORD_REGISTRATION_ENABLED");
    })
    .await;
    let token = printed_admin_token(&server)
        .unwrap_or_else(|| panic!("expected a token at start, log:\n{}", server.log_tail(40)));

    // The first comer without the token gets nothing: only the token flow is offered.
    let (status, body) = register_with(&server, "mallory", Value::Null).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "got {body}");
    assert_eq!(
        body["flows"],
        json!([{ "stages": ["m.login.registration_token"] }]),
        "got {body}"
    );
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = register_with(
        &server,
        "mallory",
        json!({ "type": "m.login.dummy", "session": session }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "dummy must not pass: {body}"
    );
    let (status, body) = register_with(
        &server,
        "mallory",
        json!({ "type": "m.login.registration_token", "token": "guess", "session": session }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a wrong token must not pass: {body}"
    );
    assert_eq!(body["errcode"], "M_FORBIDDEN", "got {body}");
    let validity = |t: String| {
        let client = server.client();
        async move {
            client
                .get(&format!(
                    "/_matrix/client/v1/register/m.login.registration_token/validity?token={t}"
                ))
                .await
        }
    };
    let (_, v) = validity("guess".into()).await;
    assert_eq!(v["valid"], false, "got {v}");
    let (_, v) = validity(token.clone()).await;
    assert_eq!(v["valid"], true, "got {v}");

    // The operator, with the token: the admin.
    let (status, body) = register_with(
        &server,
        "operator",
        json!({ "type": "m.login.registration_token", "token": token, "session": session }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "got {body}");
    let admin = server.client_with_token(body["access_token"].as_str().unwrap());
    let (status, body) = admin
        .post(
            "/_synapse/admin/v1/send_server_notice",
            &json!({
                "user_id": body["user_id"],
                "content": { "msgtype": "m.text", "body": "admin works" }
            }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the token's account is an admin: {body}"
    );

    // Used up: registration is closed now, also after a restart (no new token).
    let (status, body) = register_with(
        &server,
        "mallory",
        json!({ "type": "m.login.registration_token", "token": token }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "got {body}");
    server.restart().await;
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    assert_eq!(
        log.matches("No admin account yet").count(),
        1,
        "no token once an admin exists, log:\n{log}"
    );
    let (status, body) = register_with(&server, "mallory", Value::Null).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "got {body}");
}

// Issue 15 item 12: with registration opened on purpose, the first account is still not an
// admin.
#[tokio::test]
async fn with_open_registration_the_first_account_is_not_admin() {
    let server = TestServer::start().await;
    let first = server.register_random().await;
    let (status, body) = first
        .post(
            "/_synapse/admin/v1/send_server_notice",
            &json!({
                "user_id": first.user_id,
                "content": { "msgtype": "m.text", "body": "not an admin" }
            }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "got {body}");
}

// Issue 15 item 8: password checks of user-interactive auth are limited per user: a stolen
// access token cannot be used to guess the account's password at full speed.
#[tokio::test]
async fn uia_password_guesses_are_rate_limited_per_user() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_RATE_LIMITS_ENABLED", "true");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_AUTH_BURST", "4");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_AUTH_PER_SECOND", "0.01");
    })
    .await;
    let alice = server.register_random().await;
    let whoami = alice.get("/account/whoami").await.1;
    let device = whoami["device_id"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, body) = alice
            .post(
                "/delete_devices",
                &json!({
                    "devices": [device],
                    "auth": {
                        "type": "m.login.password",
                        "identifier": { "type": "m.id.user", "user": alice.user_id },
                        "password": "not the password",
                    }
                }),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "got {body}");
        }
        statuses.push(status.as_u16());
    }
    assert!(
        statuses.contains(&429),
        "expected guesses to be cut off, got {statuses:?}"
    );
    assert_eq!(
        statuses[0], 401,
        "the first guess is answered: {statuses:?}"
    );
}

/// POST /register with no auth from behind `xff` (a value of X-Forwarded-For, if any).
async fn register_attempt(server: &TestServer, xff: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/register", server.base_url()))
        .json(&json!({ "password": "a long enough password" }));
    if let Some(xff) = xff {
        req = req.header("X-Forwarded-For", xff);
    }
    req.send().await.expect("an answer").status().as_u16()
}

// Issue 15 item 9: behind a trusted proxy, limits apply to the address the proxy names, so one
// abusive client does not lock everyone out; from anyone else the header is ignored, so a
// client cannot dodge its limit by inventing addresses.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let limited = |trusted: Option<&'static str>| {
        TestServer::start_with(move |env| {
            TestServer::set_env(env, "PARACORD_RATE_LIMITS_ENABLED", "true");
            TestServer::set_env(env, "PARACORD_RATE_LIMIT_AUTH_BURST", "3");
            TestServer::set_env(env, "PARACORD_RATE_LIMIT_AUTH_PER_SECOND", "0.01");
            if let Some(t) = trusted {
                TestServer::set_env(env, "PARACORD_TRUSTED_PROXIES", t);
            }
        })
    };
    // Not trusted: invented addresses share the peer's bucket.
    let server = limited(None).await;
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(register_attempt(&server, Some(&format!("198.51.100.{i}"))).await);
    }
    assert_eq!(
        got[4], 429,
        "invented addresses must not reset the limit: {got:?}"
    );

    // Trusted (loopback is the proxy here): each forwarded client has its own bucket.
    let server = limited(Some("127.0.0.1/32,::1/128")).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(register_attempt(&server, Some("198.51.100.7")).await);
    }
    assert_eq!(got[4], 429, "one client is limited: {got:?}");
    assert_eq!(
        register_attempt(&server, Some("198.51.100.8")).await,
        401,
        "another client behind the same proxy is not"
    );
}

// Issue 15 item 9: creating rooms, membership changes, profile changes, typing and reports
// are limited per user.
#[tokio::test]
async fn everyday_actions_are_rate_limited_per_user() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_RATE_LIMITS_ENABLED", "true");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_AUTH_BURST", "50");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_ACTION_BURST", "3");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_ACTION_PER_SECOND", "0.01");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_EPHEMERAL_BURST", "3");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_EPHEMERAL_PER_SECOND", "0.01");
    })
    .await;
    let alice = server.register_random().await;
    let mut rooms = Vec::new();
    let mut created = Vec::new();
    for _ in 0..5 {
        let (status, body) = alice
            .post("/createRoom", &json!({ "preset": "public_chat" }))
            .await;
        if let Some(r) = body["room_id"].as_str() {
            rooms.push(r.to_owned());
        }
        created.push(status.as_u16());
    }
    assert_eq!(created[4], 429, "createRoom: {created:?}");
    let room = rooms[0].clone();
    let path = format!("/profile/{}/displayname", enc(&alice.user_id));
    let mut named = Vec::new();
    for i in 0..5 {
        named.push(
            alice
                .put(&path, &json!({ "displayname": format!("a{i}") }))
                .await
                .0
                .as_u16(),
        );
    }
    assert_eq!(named[4], 429, "profile: {named:?}");
    let path = format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let mut typed = Vec::new();
    for _ in 0..5 {
        typed.push(
            alice
                .put(&path, &json!({ "typing": true, "timeout": 1000 }))
                .await
                .0
                .as_u16(),
        );
    }
    assert_eq!(typed[4], 429, "typing: {typed:?}");
    let bob = server.register_random().await;
    let mut left = Vec::new();
    for i in 0..6 {
        let path = if i % 2 == 0 {
            format!("/rooms/{}/join", enc(&room))
        } else {
            format!("/rooms/{}/leave", enc(&room))
        };
        left.push(bob.post(&path, &json!({})).await.0.as_u16());
    }
    assert!(left.contains(&429), "membership: {left:?}");
}

// Issue 15 item 13: durability against power loss is on unless an operator turns it off, and
// the server says which it runs with.
#[tokio::test]
async fn sync_writes_are_on_by_default_and_logged() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    alice.send_text(&room, "on disk").await;
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    assert!(
        log.contains("sync_writes = true"),
        "expected the durable mode by default, log:\n{log}"
    );
    let fast = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_SYNC_WRITES", "false");
    })
    .await;
    fast.register_random().await;
    let log = std::fs::read_to_string(fast.log_path()).unwrap_or_default();
    assert!(
        log.contains("WARN") && log.contains("sync_writes = false"),
        "expected a warning when switched off, log:\n{log}"
    );
}

// Issue 15 item 14: a device that never syncs keeps at most `to_device_max_pending` to-device
// messages; past the cap the oldest are dropped and the newest still reach it, while another
// device of the same user is untouched.
#[tokio::test]
async fn a_device_that_never_syncs_keeps_at_most_the_cap_of_to_device_messages() {
    const CAP: usize = 5;
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_TO_DEVICE_MAX_PENDING", &CAP.to_string());
    })
    .await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let sent = 3 * CAP + 2;
    for n in 0..sent {
        let (status, body) = alice
            .put(
                &format!("/sendToDevice/m.test/cap{n}"),
                &json!({ "messages": { &bob.user_id: { &bob.device_id: { "n": n } } } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "sendToDevice {n}: {body}");
    }
    // One message to a second device of Bob's, which stays below the cap.
    let (status, login) = server
        .client()
        .post(
            "/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": bob.localpart },
                "password": bob.password,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "login: {login}");
    let second = server.client_with_token(login["access_token"].as_str().unwrap());
    let second_device = login["device_id"].as_str().unwrap().to_owned();
    let (status, body) = alice
        .put(
            "/sendToDevice/m.test/other",
            &json!({ "messages": { &bob.user_id: { &second_device: { "n": "other" } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "sendToDevice: {body}");

    let ns = |sync: &Value| -> Vec<Value> {
        sync["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e["content"]["n"].clone())
            .collect()
    };
    let first = bob.sync(None, 0, None).await;
    let got = ns(&first);
    assert!(
        got.len() <= CAP,
        "{} messages kept, cap {CAP}: {got:?}",
        got.len()
    );
    // The newest are kept, in order.
    let newest: Vec<Value> = (sent - got.len()..sent).map(|n| json!(n)).collect();
    assert_eq!(got, newest, "the oldest are dropped");
    assert!(!got.is_empty());
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let again = bob.sync(Some(&since), 0, None).await;
    assert!(ns(&again).is_empty(), "nothing more: {again}");
    let other = second.sync(None, 0, None).await;
    assert_eq!(ns(&other), vec![json!("other")]);
}
