//! The server's signing keys as other servers see them: `/_matrix/key/v2/server`, the notary
//! endpoints answering for this server, key rotation, `/_matrix/federation/v1/version`, and
//! `X-Matrix` request signatures on the federation query endpoints.

use std::time::{SystemTime, UNIX_EPOCH};

use paracord_complement::{
    e2ee::{verify_signature, Ed25519Key},
    enc, expect_ok,
    federation::{federating_server, server_signing_key, x_matrix},
    TestServer,
};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The one current key of a key response: `(key id, public key)`.
fn current_key(keys: &Value) -> (String, String) {
    let verify = keys["verify_keys"]
        .as_object()
        .unwrap_or_else(|| panic!("expected verify_keys, got {keys}"));
    assert_eq!(verify.len(), 1, "expected one current key, got {keys}");
    let (id, k) = verify.iter().next().unwrap_or_else(|| unreachable!());
    let public = k["key"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a key string, got {keys}"));
    (id.clone(), public.to_owned())
}

/// Checks a key response of `server`: its name, validity and self-signature.
fn assert_signed_keys(keys: &Value, server: &str) -> (String, String) {
    assert_eq!(keys["server_name"], server, "got {keys}");
    let (id, public) = current_key(keys);
    assert!(id.starts_with("ed25519:"), "got key id {id}");
    assert!(
        verify_signature(keys, server, &id, &public),
        "expected the key response to be signed by {id}: {keys}"
    );
    let mut tampered = keys.clone();
    tampered["valid_until_ts"] = json!(1);
    assert!(
        !verify_signature(&tampered, server, &id, &public),
        "a changed response must not verify (is the check real?)"
    );
    (id, public)
}

async fn server_keys(server: &TestServer) -> Value {
    expect_ok(
        server.client().get("/_matrix/key/v2/server").await,
        "GET /_matrix/key/v2/server",
    )
}

#[tokio::test]
async fn server_keys_are_self_signed_and_valid_for_the_configured_period() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_KEY_VALIDITY_PERIOD_MS", "3600000");
    })
    .await;
    let before = now_ms();
    let keys = server_keys(&server).await;
    assert_signed_keys(&keys, &server.server_name());
    let valid_until = keys["valid_until_ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected valid_until_ts, got {keys}"));
    assert!(
        valid_until >= before + 3_600_000 && valid_until <= now_ms() + 3_600_000,
        "expected valid_until_ts an hour from now, got {valid_until} (now {before})"
    );
    assert_eq!(keys["old_verify_keys"], json!({}), "got {keys}");
}

#[tokio::test]
async fn a_replaced_signing_key_stays_published_as_an_old_key() {
    let mut server = TestServer::start_with(|env| {
        TestServer::set_env(
            env,
            "PARACORD_OLD_VERIFY_KEYS",
            r#"{ "ed25519:legacy" = { key = "bGVnYWN5a2V5", expired_ts = 5 } }"#,
        );
    })
    .await;
    let first = server_keys(&server).await;
    let (old_id, old_public) = assert_signed_keys(&first, &server.server_name());
    assert_eq!(
        first["old_verify_keys"]["ed25519:legacy"],
        json!({ "key": "bGVnYWN5a2V5", "expired_ts": 5 }),
        "keys from the config are published, got {first}"
    );

    // Rotate: a new key file, then a restart.
    server.kill9();
    std::fs::remove_file(server.data_dir().join("signing.key"))
        .unwrap_or_else(|e| panic!("expected to remove the signing key: {e}"));
    let rotated_at = now_ms();
    server.restart().await;
    let second = server_keys(&server).await;
    let (new_id, new_public) = assert_signed_keys(&second, &server.server_name());
    assert_ne!(new_public, old_public, "expected a new key after rotation");
    assert_ne!(new_id, old_id);
    let old = &second["old_verify_keys"][&old_id];
    assert_eq!(old["key"], old_public.as_str(), "got {second}");
    let expired = old["expired_ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected expired_ts, got {second}"));
    assert!(
        expired >= rotated_at && expired <= now_ms(),
        "expected the old key to expire at the restart, got {expired}"
    );
    assert!(second["old_verify_keys"]["ed25519:legacy"].is_object());

    // Another restart with the same key changes nothing.
    server.restart().await;
    let third = server_keys(&server).await;
    assert_eq!(third["old_verify_keys"], second["old_verify_keys"]);
    assert_eq!(current_key(&third), (new_id, new_public));
}

#[tokio::test]
async fn the_notary_endpoints_answer_for_this_server_and_not_for_unreachable_ones() {
    let server = TestServer::start().await;
    let name = server.server_name();
    let client = server.client();
    let own = expect_ok(
        client
            .get(&format!("/_matrix/key/v2/query/{}", enc(&name)))
            .await,
        "GET /_matrix/key/v2/query/{own}",
    );
    let list = own["server_keys"]
        .as_array()
        .unwrap_or_else(|| panic!("expected server_keys, got {own}"));
    assert_eq!(list.len(), 1, "got {own}");
    assert_signed_keys(&list[0], &name);

    let other = expect_ok(
        client.get("/_matrix/key/v2/query/unknown.example").await,
        "GET /_matrix/key/v2/query/{other}",
    );
    assert_eq!(other["server_keys"], json!([]), "got {other}");

    let batch = expect_ok(
        client
            .post(
                "/_matrix/key/v2/query",
                &json!({ "server_keys": { &name: {}, "unknown.example": {} } }),
            )
            .await,
        "POST /_matrix/key/v2/query",
    );
    let list = batch["server_keys"]
        .as_array()
        .unwrap_or_else(|| panic!("expected server_keys, got {batch}"));
    assert_eq!(
        list.len(),
        1,
        "no keys for an unreachable server, got {batch}"
    );
    assert_signed_keys(&list[0], &name);

    let (status, _) = client
        .post("/_matrix/key/v2/query", &json!({ "server_keys": 5 }))
        .await;
    assert_eq!(status.as_u16(), 400, "a malformed query is a 400");
}

#[tokio::test]
async fn a_notary_serves_another_servers_keys_signed_by_both() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let answer = expect_ok(
        a.client()
            .get(&format!("/_matrix/key/v2/query/{}", enc(&b_name)))
            .await,
        "A's notary answer for B",
    );
    let list = answer["server_keys"]
        .as_array()
        .unwrap_or_else(|| panic!("expected server_keys, got {answer}"));
    assert_eq!(list.len(), 1, "got {answer}");
    let (b_key_id, b_key) = assert_signed_keys(&list[0], &b_name);
    let own_b = expect_ok(b.client().get("/_matrix/key/v2/server").await, "B's keys");
    assert_eq!(
        current_key(&own_b),
        (b_key_id, b_key),
        "the notary relays B's own key"
    );
    // The notary's own signature, by A's current key.
    let a_keys = expect_ok(a.client().get("/_matrix/key/v2/server").await, "A's keys");
    let (a_key_id, a_key) = current_key(&a_keys);
    assert!(
        verify_signature(&list[0], &a_name, &a_key_id, &a_key),
        "expected A's notary signature on {}",
        list[0]
    );
    // Served from A's cache once B is gone.
    drop(b);
    let again = expect_ok(
        a.client()
            .post(
                "/_matrix/key/v2/query",
                &json!({ "server_keys": { &b_name: {} } }),
            )
            .await,
        "A's notary answer for B, B gone",
    );
    assert_eq!(
        again["server_keys"].as_array().map(Vec::len),
        Some(1),
        "got {again}"
    );
}

#[tokio::test]
async fn federation_version_names_the_server() {
    let server = TestServer::start().await;
    let v = expect_ok(
        server.client().get("/_matrix/federation/v1/version").await,
        "GET /_matrix/federation/v1/version",
    );
    assert_eq!(v["server"]["name"], "Paracord", "got {v}");
    assert!(v["server"]["version"].is_string(), "got {v}");
}

async fn get_with_auth(server: &TestServer, uri: &str, auth: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{uri}", server.base_url()));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected an answer to GET {uri}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn federation_queries_need_a_valid_x_matrix_signature() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    expect_ok(
        alice
            .put(
                &format!("/profile/{}/displayname", enc(&alice.user_id)),
                &json!({ "displayname": "Alice" }),
            )
            .await,
        "setting a display name",
    );
    let name = server.server_name();
    let uri = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id)
    );

    let (status, body) = get_with_auth(&server, &uri, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "unsigned: {body}"
    );
    let (status, body) = get_with_auth(&server, &uri, Some("X-Matrix nonsense")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "malformed: {body}"
    );

    // Signed by a server whose keys cannot be fetched.
    let stranger = Ed25519Key::from_seed(&rand::random(), "a_stranger");
    let auth = x_matrix(&stranger, "127.0.0.1:1", &name, "GET", &uri);
    let (status, body) = get_with_auth(&server, &uri, Some(&auth)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "unknown origin: {body}"
    );

    // Signed with the server's own key (a key it knows without fetching): accepted...
    let own = server_signing_key(&server);
    let auth = x_matrix(&own, &name, &name, "GET", &uri);
    let (status, body) = get_with_auth(&server, &uri, Some(&auth)).await;
    assert_eq!(status, 200, "a valid signature: {body}");
    assert_eq!(body["displayname"], "Alice", "got {body}");
    // ...but not for another request, another destination or with another key id.
    let other_uri = format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=displayname",
        enc(&alice.user_id)
    );
    let (status, _) = get_with_auth(&server, &other_uri, Some(&auth)).await;
    assert_eq!(status, 401, "a signature covers the URI");
    let elsewhere = x_matrix(&own, &name, "other.example", "GET", &uri);
    let (status, _) = get_with_auth(&server, &uri, Some(&elsewhere)).await;
    assert_eq!(status, 401, "a signature for another destination");
    let wrong_id = Ed25519Key::from_seed(&rand::random(), "a_other");
    let (status, _) = get_with_auth(
        &server,
        &uri,
        Some(&x_matrix(&wrong_id, &name, &name, "GET", &uri)),
    )
    .await;
    assert_eq!(status, 401, "an unknown key id");

    // The directory query, signed.
    expect_ok(
        alice
            .post("/createRoom", &json!({ "room_alias_name": "lobby" }))
            .await,
        "creating a room with an alias",
    );
    let alias_uri = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        enc(&format!("#lobby:{name}"))
    );
    let auth = x_matrix(&own, &name, &name, "GET", &alias_uri);
    let (status, body) = get_with_auth(&server, &alias_uri, Some(&auth)).await;
    assert_eq!(status, 200, "directory query: {body}");
    assert!(
        body["room_id"].is_string() && body["servers"][0] == name.as_str(),
        "got {body}"
    );
    let missing_uri = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        enc(&format!("#nope:{name}"))
    );
    let auth = x_matrix(&own, &name, &name, "GET", &missing_uri);
    let (status, body) = get_with_auth(&server, &missing_uri, Some(&auth)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "got {body}"
    );
}

#[tokio::test]
async fn a_request_signed_by_another_server_is_verified_with_keys_fetched_over_tls() {
    // B: a server whose name is its TLS address, so A finds it without DNS.
    let b_tls = paracord_complement::free_port();
    let b_name = format!("127.0.0.1:{b_tls}");
    let b = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_SERVER_NAME", &b_name);
        TestServer::set_env(env, "PARACORD_TLS_LISTEN", &b_name);
    })
    .await;
    // A: trusts B's self-signed certificate by not checking certificates (test-only switch).
    let a = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_FEDERATION_VERIFY_TLS", "false");
    })
    .await;
    let alice = a.register_random().await;
    let a_name = a.server_name();
    let uri = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id)
    );

    let b_key = server_signing_key(&b);
    let auth = x_matrix(&b_key, &b_name, &a_name, "GET", &uri);
    let (status, body) = get_with_auth(&a, &uri, Some(&auth)).await;
    assert_eq!(
        status, 200,
        "signed by B, whose key A fetches over TLS: {body}"
    );

    // B's name with a key B does not have: A fetches B's keys and refuses.
    let impostor = Ed25519Key::from_seed(
        &rand::random(),
        b_key.key_id().trim_start_matches("ed25519:"),
    );
    let forged = x_matrix(&impostor, &b_name, &a_name, "GET", &uri);
    let (status, body) = get_with_auth(&a, &uri, Some(&forged)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED")),
        "same key id, another key: {body}"
    );
}

#[tokio::test]
async fn profiles_and_aliases_of_another_server_are_asked_over_federation() {
    let (a, _) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    assert!(
        bob.user_id.ends_with(&format!(":{b_name}")),
        "got {}",
        bob.user_id
    );
    expect_ok(
        bob.put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            &json!({ "displayname": "Bob on B" }),
        )
        .await,
        "bob sets a display name",
    );
    expect_ok(
        bob.post("/createRoom", &json!({ "room_alias_name": "square" }))
            .await,
        "bob creates a room with an alias",
    );

    // A asks B, signing as A; B fetches A's key over TLS to check the signature.
    let profile = expect_ok(
        alice.get(&format!("/profile/{}", enc(&bob.user_id))).await,
        "alice reads bob's profile through A",
    );
    assert_eq!(profile["displayname"], "Bob on B", "got {profile}");
    let name = expect_ok(
        alice
            .get(&format!("/profile/{}/displayname", enc(&bob.user_id)))
            .await,
        "alice reads bob's display name through A",
    );
    assert_eq!(name["displayname"], "Bob on B");
    let alias = expect_ok(
        alice
            .get(&format!(
                "/directory/room/{}",
                enc(&format!("#square:{b_name}"))
            ))
            .await,
        "alice resolves an alias of B through A",
    );
    assert!(alias["room_id"].is_string(), "got {alias}");
    assert_eq!(alias["servers"][0], b_name.as_str(), "got {alias}");

    // Unknown on B: a 404 through A.
    let (status, body) = alice
        .get(&format!("/profile/{}", enc(&format!("@nobody:{b_name}"))))
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "got {body}"
    );
    let (status, body) = alice
        .get(&format!(
            "/directory/room/{}",
            enc(&format!("#nothing:{b_name}"))
        ))
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "got {body}"
    );
    // A server nobody runs: an error, not a hang or a 200.
    let (status, body) = alice
        .get(&format!("/profile/{}", enc("@x:127.0.0.1:1")))
        .await;
    assert_eq!(status.as_u16(), 502, "unreachable server: {body}");
}

#[tokio::test]
async fn device_keys_of_another_server_are_queried_and_claimed_over_federation() {
    use paracord_complement::e2ee::{FakeDevice, SIGNED_CURVE25519};
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let device = FakeDevice::new(&alice.user_id, &alice.device_id);
    expect_ok(
        alice
            .post(
                "/keys/upload",
                &json!({ "device_keys": device.device_keys(), "one_time_keys": device.one_time_keys(2) }),
            )
            .await,
        "alice uploads keys on A",
    );

    // Bob, on B, asks for Alice's keys: B asks A.
    let q = expect_ok(
        bob.post(
            "/keys/query",
            &json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await,
        "bob queries alice's keys through B",
    );
    let keys = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(keys["keys"], device.device_keys()["keys"], "got {q}");
    assert!(
        verify_signature(
            keys,
            &alice.user_id,
            &device.key_id(),
            &device.ed25519.public_key()
        ),
        "the device keys arrive with their signature intact: {q}"
    );
    let claim = |n: u32| {
        let bob = &bob;
        let alice = &alice;
        async move {
            expect_ok(
                bob.post(
                    "/keys/claim",
                    &json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: SIGNED_CURVE25519 } } }),
                )
                .await,
                &format!("claim {n} through B"),
            )
        }
    };
    let first = claim(1).await;
    let second = claim(2).await;
    let third = claim(3).await;
    let got = |c: &Value| c["one_time_keys"][&alice.user_id][&alice.device_id].clone();
    assert!(
        got(&first).is_object() && got(&second).is_object(),
        "{first} {second}"
    );
    assert_ne!(
        got(&first),
        got(&second),
        "each one-time key once, across servers too"
    );
    assert_eq!(
        got(&third),
        Value::Null,
        "no keys left (and no fallback): {third}"
    );

    // A federation user's devices, as other servers see them.
    let own = server_signing_key(&a);
    let uri = format!(
        "/_matrix/federation/v1/user/devices/{}",
        enc(&alice.user_id)
    );
    let auth = x_matrix(&own, &a_name, &a_name, "GET", &uri);
    let (status, devices) = get_with_auth(&a, &uri, Some(&auth)).await;
    assert_eq!(status, 200, "got {devices}");
    assert_eq!(
        devices["devices"][0]["device_id"],
        alice.device_id.as_str(),
        "got {devices}"
    );
    assert!(devices["stream_id"].is_u64(), "got {devices}");

    // A server nobody runs shows up in failures, not as an error.
    let q = expect_ok(
        bob.post(
            "/keys/query",
            &json!({ "device_keys": { "@x:127.0.0.1:1": [] } }),
        )
        .await,
        "querying a user of an unreachable server",
    );
    assert!(q["failures"]["127.0.0.1:1"].is_object(), "got {q}");
}

#[tokio::test]
async fn another_servers_public_room_directory_is_read_over_federation() {
    let (a, _) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    for name in ["Gardening club", "Chess corner"] {
        expect_ok(
            bob.post(
                "/createRoom",
                &json!({ "name": name, "visibility": "public", "preset": "public_chat" }),
            )
            .await,
            "bob publishes a room on B",
        );
    }
    let all = expect_ok(
        alice
            .get(&format!("/publicRooms?server={}", enc(&b_name)))
            .await,
        "alice lists B's directory through A",
    );
    let names: Vec<&str> = all["chunk"]
        .as_array()
        .map(|c| c.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"Gardening club") && names.contains(&"Chess corner"),
        "got {all}"
    );
    let filtered = expect_ok(
        alice
            .post(
                &format!("/publicRooms?server={}", enc(&b_name)),
                &json!({ "filter": { "generic_search_term": "chess" } }),
            )
            .await,
        "alice searches B's directory through A",
    );
    let names: Vec<&str> = filtered["chunk"]
        .as_array()
        .map(|c| c.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["Chess corner"], "got {filtered}");
    // A's own directory does not contain B's rooms.
    let own = expect_ok(alice.get("/publicRooms").await, "A's own directory");
    assert_eq!(own["chunk"], json!([]), "got {own}");
}
