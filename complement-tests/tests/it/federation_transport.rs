//! Federation's transport: the TLS listener (`tls_listen`) with a generated or configured
//! certificate, and `/.well-known/matrix/server` delegation from config.

use std::{path::Path, time::Duration};

use paracord_complement::{expect_error, expect_ok, free_port, StatusCode, TestServer};
use serde_json::Value;

/// A server with a TLS listener on a free port; returns it and that port.
async fn start_with_tls(
    configure: impl FnOnce(&mut paracord_complement::Env),
) -> (TestServer, u16) {
    let tls_port = free_port();
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_TLS_LISTEN", &format!("127.0.0.1:{tls_port}"));
        configure(env);
    })
    .await;
    (server, tls_port)
}

/// An HTTPS client that trusts only the certificate in `cert_pem` (no public roots).
fn https_client(cert_pem: &[u8]) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(cert_pem)
        .unwrap_or_else(|e| panic!("expected a PEM certificate: {e}"));
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("expected an HTTPS client: {e}"))
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<(StatusCode, Value), String> {
    let resp = client.get(url).send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })?;
    let status = resp.status();
    let body = resp.json::<Value>().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("expected to read {}: {e}", path.display()))
}

/// Key answers over TLS are the same as over plain HTTP.
async fn assert_keys_over_tls(server: &TestServer, client: &reqwest::Client, tls_port: u16) {
    let plain = expect_ok(
        server.client().get("/_matrix/key/v2/server").await,
        "GET /_matrix/key/v2/server over HTTP",
    );
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{tls_port}/_matrix/key/v2/server");
        let (status, keys) = get_json(client, &url)
            .await
            .unwrap_or_else(|e| panic!("expected {url} to answer over TLS: {e}"));
        assert_eq!(status, StatusCode::OK, "got {keys}");
        assert_eq!(keys["server_name"], server.server_name(), "got {keys}");
        assert_eq!(keys["verify_keys"], plain["verify_keys"], "got {keys}");
    }
}

#[tokio::test]
async fn tls_listener_serves_keys_with_a_generated_certificate_kept_across_restarts() {
    let (mut server, tls_port) = start_with_tls(|_| {}).await;
    let cert_path = server.data_dir().join("tls/cert.pem");
    let key_path = server.data_dir().join("tls/key.pem");
    let cert = read(&cert_path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path)
            .unwrap_or_else(|e| panic!("expected the generated key at {}: {e}", key_path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key must be private");
    }
    let client = https_client(&cert);
    assert_keys_over_tls(&server, &client, tls_port).await;

    // A client trusting some other certificate is refused: TLS is really checked.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("expected a certificate: {e}"));
    let stranger = https_client(other.cert.pem().as_bytes());
    let url = format!("https://localhost:{tls_port}/_matrix/key/v2/server");
    assert!(
        get_json(&stranger, &url).await.is_err(),
        "a client that does not trust the generated certificate must not connect"
    );

    server.restart().await;
    assert_eq!(
        read(&cert_path),
        cert,
        "the generated certificate must be reused after a restart"
    );
    assert_keys_over_tls(&server, &client, tls_port).await;
}

#[tokio::test]
async fn configured_certificate_and_key_are_used() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("expected a temp dir: {e}"));
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("expected a certificate: {e}"));
    let cert_path = dir.path().join("fullchain.pem");
    let key_path = dir.path().join("privkey.pem");
    std::fs::write(&cert_path, pair.cert.pem()).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::write(&key_path, pair.signing_key.serialize_pem())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let (server, tls_port) = start_with_tls(|env| {
        TestServer::set_env(env, "PARACORD_TLS_CERT", &cert_path.display().to_string());
        TestServer::set_env(env, "PARACORD_TLS_KEY", &key_path.display().to_string());
    })
    .await;
    let client = https_client(pair.cert.pem().as_bytes());
    let url = format!("https://localhost:{tls_port}/_matrix/federation/v1/version");
    let (status, body) = get_json(&client, &url)
        .await
        .unwrap_or_else(|e| panic!("expected {url} to answer with the configured cert: {e}"));
    assert_eq!(status, StatusCode::OK, "got {body}");
    assert!(
        !server.data_dir().join("tls/cert.pem").exists(),
        "no certificate is generated when one is configured"
    );
}

#[tokio::test]
async fn well_known_server_is_served_from_config() {
    let (server, tls_port) = start_with_tls(|env| {
        TestServer::set_env(env, "PARACORD_WELL_KNOWN_SERVER", "matrix.example.org:443");
    })
    .await;
    let body = expect_ok(
        server.client().get("/.well-known/matrix/server").await,
        "GET /.well-known/matrix/server",
    );
    assert_eq!(
        body,
        serde_json::json!({ "m.server": "matrix.example.org:443" })
    );
    // Other servers ask over HTTPS.
    let client = https_client(&read(&server.data_dir().join("tls/cert.pem")));
    let (status, body) = get_json(
        &client,
        &format!("https://localhost:{tls_port}/.well-known/matrix/server"),
    )
    .await
    .unwrap_or_else(|e| panic!("expected .well-known over TLS: {e}"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.server"], "matrix.example.org:443");

    let undelegated = TestServer::start().await;
    let resp = undelegated.client().get("/.well-known/matrix/server").await;
    expect_error(
        &resp,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET /.well-known/matrix/server without well_known_server",
    );
}

#[tokio::test]
async fn unreadable_or_bad_certificates_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("expected a temp dir: {e}"));
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap_or_else(|e| panic!("write: {e}"));
    let a = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("expected a certificate: {e}"));
    let b = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap_or_else(|e| panic!("expected a certificate: {e}"));
    let cert_a = dir.path().join("a.pem");
    let key_b = dir.path().join("b.key");
    std::fs::write(&cert_a, a.cert.pem()).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::write(&key_b, b.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("write: {e}"));

    for (cert, key, expected) in [
        (&missing, &key_b, "cannot read tls_cert"),
        (&garbage, &key_b, "tls_cert"),
        (&cert_a, &missing, "tls_key"),
        (&cert_a, &key_b, "do not make a usable pair"),
    ] {
        let tls_port = free_port();
        let (status, log) = TestServer::start_expecting_failure(|env| {
            TestServer::set_env(env, "PARACORD_TLS_LISTEN", &format!("127.0.0.1:{tls_port}"));
            TestServer::set_env(env, "PARACORD_TLS_CERT", &cert.display().to_string());
            TestServer::set_env(env, "PARACORD_TLS_KEY", &key.display().to_string());
        })
        .await;
        assert!(!status.success(), "expected a failed start, log:\n{log}");
        assert!(
            log.contains(expected),
            "expected {expected:?} in the start-up error for cert {} key {}, log:\n{log}",
            cert.display(),
            key.display()
        );
        assert!(
            !log.contains("panicked"),
            "a bad certificate must not panic:\n{log}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_federation_ca_file_stops_the_start() {
    let missing = std::env::temp_dir().join(format!("paracord-no-ca-{}.pem", free_port()));
    let (status, log) = TestServer::start_expecting_failure(|env| {
        TestServer::set_env(
            env,
            "PARACORD_FEDERATION_CA_FILE",
            &missing.display().to_string(),
        );
    })
    .await;
    assert!(!status.success(), "expected a failed start, log:\n{log}");
    assert!(
        log.contains("cannot read federation_ca_file"),
        "expected a clear error naming federation_ca_file, log:\n{log}"
    );
}

#[tokio::test]
async fn switching_off_certificate_checks_is_logged_at_start() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_FEDERATION_VERIFY_TLS", "false");
    })
    .await;
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    assert!(
        log.contains("WARN") && log.contains("federation_verify_tls = false"),
        "expected a warning about federation_verify_tls, log:\n{log}"
    );
    let quiet = TestServer::start().await;
    let log = std::fs::read_to_string(quiet.log_path()).unwrap_or_default();
    assert!(
        !log.contains("federation_verify_tls"),
        "no warning by default, log:\n{log}"
    );
}

#[tokio::test]
async fn sigterm_stops_both_listeners_gracefully() {
    let (mut server, tls_port) = start_with_tls(|_| {}).await;
    let client = https_client(&read(&server.data_dir().join("tls/cert.pem")));
    // An open keep-alive connection on the TLS listener must not hold up the shutdown.
    assert_keys_over_tls(&server, &client, tls_port).await;
    let status = server.terminate().await;
    let log = server.log_tail(20);
    assert!(
        status.success(),
        "expected a clean exit, got {status}; log:\n{log}"
    );
    assert!(
        log.contains("flushing the database"),
        "expected the shutdown to reach the database flush; log:\n{log}"
    );
    let url = format!("https://localhost:{tls_port}/_matrix/key/v2/server");
    assert!(
        get_json(&client, &url).await.is_err(),
        "the TLS listener must be closed after shutdown"
    );
}

/// Issue 15: without `ip_range_allowlist`, federation reaches nothing on loopback: not a room
/// to join, not remote media, not keys or profiles, whether the server name is an address or a
/// name resolving to one. The client gets a generic error (no connect error text), and nothing
/// connects to the listener.
#[tokio::test]
async fn federation_and_remote_media_never_reach_loopback_without_the_allowlist() {
    use paracord_complement::network::{StubAnswer, StubHttp};
    let remote = StubHttp::start([127, 0, 0, 1], StubAnswer::ok("application/json", "{}")).await;
    let server = TestServer::start_guarded(|_| {}).await;
    let alice = server.register_random().await;
    let port = remote.port();
    for name in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ] {
        let enc = paracord_complement::enc;
        let join = alice
            .post(
                &format!(
                    "/join/{}?server_name={}&via={}",
                    enc(&format!("!room:{name}")),
                    enc(&name),
                    enc(&name)
                ),
                &serde_json::json!({}),
            )
            .await;
        assert_ne!(join.0, StatusCode::OK, "join through {name}: {:?}", join.1);
        let media = alice
            .get(&format!(
                "/_matrix/client/v1/media/download/{}/abcdef",
                enc(&name)
            ))
            .await;
        expect_error(
            &media,
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            &format!("remote media of {name}"),
        );
        let profile = alice
            .get(&format!("/profile/{}", enc(&format!("@someone:{name}"))))
            .await;
        assert_ne!(
            profile.0,
            StatusCode::OK,
            "profile on {name}: {:?}",
            profile.1
        );
        for (what, body) in [
            ("join", &join.1),
            ("media", &media.1),
            ("profile", &profile.1),
        ] {
            let error = body["error"].as_str().unwrap_or_default().to_lowercase();
            for leak in [
                "tcp",
                "connect",
                "dns",
                "refused",
                "os error",
                "tls",
                "127.0.0.1:",
            ] {
                assert!(
                    !error.contains(leak) || (leak == "127.0.0.1:" && name.contains(leak)),
                    "the {what} error of {name} tells too much: {body}"
                );
            }
        }
    }
    assert_eq!(
        remote.connections(),
        0,
        "a request reached the loopback listener: {:?}",
        remote.requests()
    );
}
