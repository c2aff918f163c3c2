//! Issue 15: defences the server claims, each attacked here (settings, accounts, sessions).

use paracord_complement::{StatusCode, TestServer};
use serde_json::json;

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
