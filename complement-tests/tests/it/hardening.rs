//! Issue 15: defences the server claims, each attacked here (settings, accounts, sessions).

use paracord_complement::TestServer;

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
