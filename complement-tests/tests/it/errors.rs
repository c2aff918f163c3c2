//! Error responses, input limits, robustness against garbage and rate limits.

use paracord_complement::{
    enc, expect_error, expect_ok, random_localpart, Client, Method, Reply, StatusCode, TestServer,
};
use rand::RngCore;
use serde_json::{json, Value};
use tokio::task::JoinSet;

fn as_pair(reply: &Reply) -> (StatusCode, Value) {
    (reply.status, reply.body.clone())
}

async fn raw_json(client: &Client, method: Method, path: &str, body: &str) -> Reply {
    client
        .raw(
            method,
            path,
            Some((body.as_bytes().to_vec(), "application/json")),
        )
        .await
}

#[tokio::test]
async fn unknown_endpoint_is_unrecognized() {
    let server = TestServer::start().await;
    let client = server.client();
    for path in [
        "/_matrix/client/v3/this/does/not/exist",
        "/_matrix/client/r0/nothing_here",
        "/_matrix/nothing",
    ] {
        let resp = client.get(path).await;
        expect_error(
            &resp,
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            &format!("GET {path}"),
        );
    }
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_unrecognized_405() {
    let server = TestServer::start().await;
    let client = server.client();
    let reply = client
        .raw(Method::POST, "/_matrix/client/versions", None)
        .await;
    expect_error(
        &as_pair(&reply),
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "POST /_matrix/client/versions",
    );
    let reply = client
        .raw(Method::DELETE, "/_matrix/client/v3/login", None)
        .await;
    expect_error(
        &as_pair(&reply),
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "DELETE /login",
    );
}

#[tokio::test]
async fn missing_token_is_missing_token() {
    let server = TestServer::start().await;
    let client = server.client();
    let resp = client.whoami().await;
    expect_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "whoami without a token",
    );
    let resp = client.post("/createRoom", &json!({})).await;
    expect_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "createRoom without a token",
    );
}

#[tokio::test]
async fn unknown_token_is_unknown_token() {
    let server = TestServer::start().await;
    let client = server.client_with_token("syt_this_is_not_a_token");
    let resp = client.whoami().await;
    expect_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "whoami with a made-up token",
    );
    let resp = client.get("/sync?timeout=0").await;
    expect_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "sync with a made-up token",
    );
}

#[tokio::test]
async fn non_json_body_is_not_json() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let reply = raw_json(
        &alice,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        "{not json",
    )
    .await;
    expect_error(
        &as_pair(&reply),
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
        "createRoom with a broken body",
    );
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/nj1",
        enc(&room)
    );
    let reply = raw_json(&alice, Method::PUT, &path, "nope").await;
    expect_error(
        &as_pair(&reply),
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
        "send with a non-JSON body",
    );
    let reply = raw_json(
        &server.client(),
        Method::POST,
        "/_matrix/client/v3/login",
        "\u{1}\u{2}",
    )
    .await;
    expect_error(
        &as_pair(&reply),
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
        "login with a non-JSON body",
    );
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_bad_json() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let resp = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &json!({ "user_id": 42 }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "invite with a numeric user_id",
    );
    let resp = alice.post("/createRoom", &json!([1, 2, 3])).await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "createRoom with an array body",
    );
    let resp = alice
        .send_with_txn(&room, "m.room.message", "bj1", &json!("a string"))
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "event content that is not an object",
    );
}

#[tokio::test]
async fn oversized_event_is_too_large() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let big = "x".repeat(70_000);
    let (status, body) = alice
        .send_with_txn(
            &room,
            "m.room.message",
            "big1",
            &json!({ "msgtype": "m.text", "body": big }),
        )
        .await;
    assert!(
        status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST,
        "expected 413 (or 400) for a 70 kB event, got {status}: {body}"
    );
    assert_eq!(
        body["errcode"], "M_TOO_LARGE",
        "expected M_TOO_LARGE for a 70 kB event, got {status}: {body}"
    );
    assert!(
        body["error"].is_string(),
        "expected an error string, got {body}"
    );

    let (status, body) = alice
        .put(
            &format!("/rooms/{}/state/org.example.big/", enc(&room)),
            &json!({ "blob": "y".repeat(70_000) }),
        )
        .await;
    assert!(
        (status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST)
            && body["errcode"] == "M_TOO_LARGE",
        "expected 413/400 M_TOO_LARGE for a 70 kB state event, got {status}: {body}"
    );

    // Comfortably under the 65536-byte limit once the envelope is added.
    alice
        .send_event(
            &room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": "z".repeat(60_000) }),
        )
        .await;
}

#[tokio::test]
async fn every_error_body_has_errcode_and_error() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let anon = server.client();

    let mut replies: Vec<(String, Reply)> = Vec::new();
    let r = enc(&room);
    replies.push((
        "unknown endpoint".into(),
        anon.raw(Method::GET, "/_matrix/client/v3/nope", None).await,
    ));
    replies.push((
        "wrong method".into(),
        anon.raw(Method::PUT, "/_matrix/client/v3/login", None)
            .await,
    ));
    replies.push((
        "missing token".into(),
        anon.raw(Method::GET, "/_matrix/client/v3/joined_rooms", None)
            .await,
    ));
    replies.push(("bad login".into(), raw_json(&anon, Method::POST, "/_matrix/client/v3/login", &json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": random_localpart() }, "password": "x"
    }).to_string()).await));
    replies.push((
        "unknown login type".into(),
        raw_json(
            &anon,
            Method::POST,
            "/_matrix/client/v3/login",
            r#"{"type":"m.login.nonsense"}"#,
        )
        .await,
    ));
    replies.push((
        "not json".into(),
        raw_json(&alice, Method::POST, "/_matrix/client/v3/createRoom", "{{{").await,
    ));
    replies.push((
        "forbidden join".into(),
        raw_json(
            &bob,
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{r}/join"),
            "{}",
        )
        .await,
    ));
    replies.push((
        "missing state".into(),
        alice
            .raw(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/"),
                None,
            )
            .await,
    ));
    replies.push((
        "unknown room".into(),
        alice
            .raw(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state",
                    enc("!nosuchroom:example.org")
                ),
                None,
            )
            .await,
    ));
    replies.push((
        "bad room id".into(),
        alice
            .raw(
                Method::GET,
                "/_matrix/client/v3/rooms/not-a-room-id/state",
                None,
            )
            .await,
    ));
    replies.push((
        "bad user id".into(),
        alice
            .raw(
                Method::GET,
                "/_matrix/client/v3/profile/not-a-user-id",
                None,
            )
            .await,
    ));
    replies.push((
        "bad sync token".into(),
        alice
            .raw(
                Method::GET,
                "/_matrix/client/v3/sync?since=garbage&timeout=0",
                None,
            )
            .await,
    ));
    replies.push((
        "unknown room version".into(),
        raw_json(
            &alice,
            Method::POST,
            "/_matrix/client/v3/createRoom",
            r#"{"room_version":"999"}"#,
        )
        .await,
    ));

    for (what, reply) in &replies {
        assert!(
            reply.status.is_client_error(),
            "expected a 4xx for {what}, got {}: {}",
            reply.status,
            reply.text
        );
        assert!(
            reply.body["errcode"]
                .as_str()
                .is_some_and(|c| c.starts_with("M_")),
            "expected a string M_ errcode for {what}, got {}: {}",
            reply.status,
            reply.text
        );
        assert!(
            reply.body["error"].is_string(),
            "expected a string `error` for {what}, got {}: {}",
            reply.status,
            reply.text
        );
        let content_type = reply
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "expected a JSON content type for {what}, got {content_type:?}"
        );
    }
}

#[tokio::test]
async fn server_survives_a_burst_of_garbage() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let r = enc(&room);
    let send = format!("/_matrix/client/v3/rooms/{r}/send/m.room.message");

    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let deep_content = format!(r#"{{"msgtype":"m.text","body":"x","n":{deep_array}}}"#);
    let mut bodies: Vec<(Method, String, Vec<u8>)> = Vec::new();
    let targets = [
        (Method::POST, "/_matrix/client/v3/login".to_owned()),
        (Method::POST, "/_matrix/client/v3/register".to_owned()),
        (Method::POST, "/_matrix/client/v3/createRoom".to_owned()),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{r}/state/org.example.g/"),
        ),
        (Method::PUT, format!("{send}/GARBAGE")),
    ];
    for (i, (method, path)) in targets.iter().enumerate() {
        let mut random = vec![0u8; 2048];
        rand::thread_rng().fill_bytes(&mut random);
        let path = path.replace("GARBAGE", &format!("g{i}"));
        bodies.push((method.clone(), path.clone(), random));
        bodies.push((
            method.clone(),
            path.clone(),
            deep_array.clone().into_bytes(),
        ));
        bodies.push((method.clone(), path, deep_object.clone().into_bytes()));
    }
    // Event content must be canonical JSON: no floats, integers within ±(2^53-1).
    let contents = [
        deep_content,
        r#"{"msgtype":"m.text","body":"x","n":9007199254740993}"#.to_owned(),
        r#"{"msgtype":"m.text","body":"x","n":-9007199254740993}"#.to_owned(),
        r#"{"msgtype":"m.text","body":"x","n":123456789012345678901234567890}"#.to_owned(),
        r#"{"msgtype":"m.text","body":"x","n":1e400}"#.to_owned(),
        r#"{"msgtype":"m.text","body":"\ud800"}"#.to_owned(),
    ];
    for (i, content) in contents.into_iter().enumerate() {
        bodies.push((
            Method::PUT,
            format!("{send}/num{i}"),
            content.clone().into_bytes(),
        ));
        bodies.push((
            Method::PUT,
            format!("/_matrix/client/v3/rooms/{r}/state/org.example.n/k{i}"),
            content.into_bytes(),
        ));
    }

    let mut set = JoinSet::new();
    for (method, path, body) in bodies {
        let client = alice.client.clone();
        set.spawn(async move {
            let what = format!("{method} {path} with {} garbage bytes", body.len());
            let reply = client
                .try_raw(method, &path, Some((body, "application/json")))
                .await;
            (what, reply)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (what, reply) =
            joined.unwrap_or_else(|e| panic!("expected the request task to finish: {e}"));
        match reply {
            Ok(reply) if reply.status.is_client_error() => {}
            Ok(reply) => failures.push(format!(
                "{what}: {} {}",
                reply.status,
                reply.text.chars().take(200).collect::<String>()
            )),
            Err(e) => failures.push(format!("{what}: transport error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "expected a 4xx for every garbage request, got:\n{}",
        failures.join("\n")
    );

    let versions = server.client().get("/_matrix/client/versions").await;
    expect_ok(versions, "GET /versions after the garbage burst");
    expect_ok(alice.whoami().await, "whoami after the garbage burst");
    alice.send_text(&room, "still alive").await;
}

#[tokio::test]
async fn repeated_bad_logins_are_rate_limited() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_RATE_LIMITS_ENABLED", "true")
    })
    .await;
    let alice = server.register_random().await;
    let anon = server.client();
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": alice.localpart },
        "password": "wrong password",
    })
    .to_string();

    let mut limited: Option<Reply> = None;
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let reply = raw_json(&anon, Method::POST, "/_matrix/client/v3/login", &body).await;
        statuses.push(reply.status.as_u16());
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "expected 403 or 429 for a bad login, got {}: {}",
            reply.status,
            reply.text
        );
    }
    let reply = limited.unwrap_or_else(|| {
        panic!("expected a 429 within 50 bad logins, got statuses {statuses:?}")
    });
    assert_eq!(
        reply.body["errcode"], "M_LIMIT_EXCEEDED",
        "expected M_LIMIT_EXCEEDED, got {}",
        reply.text
    );
    // v1.10+ prefers the Retry-After header; retry_after_ms is the deprecated body field.
    let header = reply.headers.get(reqwest::header::RETRY_AFTER).is_some();
    let field = reply.body["retry_after_ms"].is_u64();
    assert!(
        header || field,
        "expected Retry-After or retry_after_ms on the 429, got headers {:?} body {}",
        reply.headers,
        reply.text
    );
}
