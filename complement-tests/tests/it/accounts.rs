//! Registration, login, tokens, devices, password, deactivation, profile and
//! server discovery.

use paracord_complement::{
    enc, expect_error, expect_error_status, expect_ok, random_localpart, StatusCode, TestServer,
    User, WAIT,
};
use serde_json::{json, Value};
use tokio::time::Instant;

async fn password_login(
    server: &TestServer,
    user: &str,
    password: &str,
    extra: Value,
) -> (StatusCode, Value) {
    let mut body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    server.client().post("/login", &body).await
}

/// Runs a UIA-protected request: the first attempt must be a 401 with a
/// session and an `m.login.password` flow; the second carries the password.
async fn with_password_uia(
    user: &User,
    method: &str,
    path: &str,
    mut body: Value,
) -> (StatusCode, Value) {
    let first = match method {
        "DELETE" => user.delete(path, &body).await,
        _ => user.post(path, &body).await,
    };
    assert_eq!(
        first.0,
        StatusCode::UNAUTHORIZED,
        "expected a UIA 401 from {method} {path} without auth, got {}: {}",
        first.0,
        first.1
    );
    let flows = first.1["flows"].as_array().cloned().unwrap_or_default();
    assert!(
        flows.iter().any(|f| f["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "m.login.password"))),
        "expected an m.login.password flow from {method} {path}, got {}",
        first.1
    );
    let session = first.1["session"].as_str().unwrap_or_else(|| {
        panic!(
            "expected a UIA session from {method} {path}, got {}",
            first.1
        )
    });
    body["auth"] = user.password_auth(session);
    match method {
        "DELETE" => user.delete(path, &body).await,
        _ => user.post(path, &body).await,
    }
}

#[tokio::test]
async fn registration_is_user_interactive_with_a_dummy_stage() {
    let server = TestServer::start().await;
    let client = server.client();
    let localpart = random_localpart();
    let body = json!({ "username": localpart, "password": "a long password 123" });

    let (status, uia) = client.post("/register", &body).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "expected 401 UIA from /register without auth, got {status}: {uia}"
    );
    let flows = uia["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("expected `flows` in the 401, got {uia}"));
    assert!(
        flows.iter().any(|f| f["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "m.login.dummy"))),
        "expected a flow with m.login.dummy, got {uia}"
    );
    let session = uia["session"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string `session`, got {uia}"));

    let mut done = body.clone();
    done["auth"] = json!({ "type": "m.login.dummy", "session": session });
    let reg = expect_ok(
        client.post("/register", &done).await,
        "completing registration with m.login.dummy",
    );
    assert_eq!(
        reg["user_id"],
        server.user_id(&localpart),
        "expected the registered user id, got {reg}"
    );
    for key in ["access_token", "device_id"] {
        assert!(
            reg[key].as_str().is_some_and(|s| !s.is_empty()),
            "expected a non-empty `{key}`, got {reg}"
        );
    }
    let token = reg["access_token"].as_str().unwrap_or_default();
    let who = expect_ok(
        server.client_with_token(token).whoami().await,
        "whoami with the new token",
    );
    assert_eq!(
        who["user_id"], reg["user_id"],
        "expected whoami to name the new user, got {who}"
    );
}

#[tokio::test]
async fn registration_disabled_is_forbidden() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_REGISTRATION_ENABLED", "false")
    })
    .await;
    // Once the server has an admin (before, the one-time admin token is a way in).
    server.admin_register(&random_localpart(), true).await;
    let resp = server
        .register_raw(json!({ "username": random_localpart(), "password": "a long password 123" }))
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "/register with registration disabled",
    );
}

#[tokio::test]
async fn registering_a_taken_username_is_user_in_use() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let resp = server
        .register_raw(json!({ "username": alice.localpart, "password": "another password 123" }))
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
        "registering a taken username",
    );
}

#[tokio::test]
async fn registering_an_invalid_username_is_invalid_username() {
    let server = TestServer::start().await;
    let resp = server
        .register_raw(json!({ "username": "Bad Name!", "password": "a long password 123" }))
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
        "registering \"Bad Name!\"",
    );
}

#[tokio::test]
async fn register_available_reports_free_taken_and_invalid_names() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let client = server.client();

    let free = expect_ok(
        client
            .get(&format!(
                "/register/available?username={}",
                random_localpart()
            ))
            .await,
        "availability of a free username",
    );
    assert_eq!(
        free["available"], true,
        "expected available: true, got {free}"
    );

    let taken = client
        .get(&format!("/register/available?username={}", alice.localpart))
        .await;
    expect_error(
        &taken,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
        "availability of a taken username",
    );

    let invalid = client
        .get(&format!(
            "/register/available?username={}",
            enc("Bad Name!")
        ))
        .await;
    expect_error(
        &invalid,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
        "availability of an invalid username",
    );
}

#[tokio::test]
async fn shared_secret_registration_accepts_a_valid_mac_and_rejects_a_bad_one() {
    let server = TestServer::start().await;
    let localpart = random_localpart();

    let nonce = server.admin_nonce().await;
    let resp = server
        .client()
        .post(
            "/_synapse/admin/v1/register",
            &json!({
                "nonce": nonce,
                "username": localpart,
                "password": "whatever password",
                "admin": false,
                "mac": "0000000000000000000000000000000000000000",
            }),
        )
        .await;
    // Synapse's admin API fixes the 403, not the errcode.
    expect_error_status(
        &resp,
        StatusCode::FORBIDDEN,
        "shared-secret registration with a bad mac",
    );

    let admin = server.admin_register(&localpart, true).await;
    assert_eq!(
        admin.user_id,
        server.user_id(&localpart),
        "expected the requested user id"
    );
    let who = expect_ok(admin.whoami().await, "whoami of the shared-secret user");
    assert_eq!(
        who["user_id"], admin.user_id,
        "expected whoami to name the admin, got {who}"
    );
    let again = server.login(&admin.localpart, &admin.password).await;
    assert_eq!(
        again.user_id, admin.user_id,
        "expected the password given at admin registration to log in"
    );
}

#[tokio::test]
async fn login_flows_include_password() {
    let server = TestServer::start().await;
    let body = expect_ok(server.client().get("/login").await, "GET /login");
    let flows = body["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("expected `flows`, got {body}"));
    assert!(
        flows.iter().any(|f| f["type"] == "m.login.password"),
        "expected m.login.password among {body}"
    );
}

#[tokio::test]
async fn password_login_creates_a_new_device_and_rejects_a_wrong_password() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;

    let ok = expect_ok(
        password_login(
            &server,
            &alice.localpart,
            &alice.password,
            json!({ "initial_device_display_name": "laptop" }),
        )
        .await,
        "password login",
    );
    assert_eq!(
        ok["user_id"], alice.user_id,
        "expected login to name the user, got {ok}"
    );
    assert!(
        ok["access_token"].is_string(),
        "expected an access_token, got {ok}"
    );
    assert!(
        ok["device_id"].is_string(),
        "expected a device_id, got {ok}"
    );
    assert_ne!(
        ok["device_id"],
        alice.device_id.as_str(),
        "expected a new device for a new login, got {ok}"
    );
    assert_ne!(
        ok["access_token"],
        alice.access_token.as_str(),
        "expected a new access token, got {ok}"
    );

    let full_id = password_login(&server, &alice.user_id, &alice.password, json!({})).await;
    expect_ok(full_id, "password login with a full user id as identifier");

    let wrong = password_login(&server, &alice.localpart, "not the password", json!({})).await;
    expect_error(
        &wrong,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "login with a wrong password",
    );

    let nobody = password_login(&server, &random_localpart(), "whatever", json!({})).await;
    expect_error(
        &nobody,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "login as an unknown user",
    );
}

#[tokio::test]
async fn whoami_names_user_and_device() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let who = expect_ok(alice.whoami().await, "whoami");
    assert_eq!(
        who["user_id"], alice.user_id,
        "expected whoami user_id, got {who}"
    );
    assert_eq!(
        who["device_id"], alice.device_id,
        "expected whoami device_id, got {who}"
    );
}

#[tokio::test]
async fn logout_invalidates_only_that_token() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let phone = server.login(&alice.localpart, &alice.password).await;

    expect_ok(phone.post("/logout", &json!({})).await, "POST /logout");
    let dead = phone.whoami().await;
    expect_error(
        &dead,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "whoami with a logged-out token",
    );
    expect_ok(
        alice.whoami().await,
        "whoami with the other device's token after logout",
    );
}

#[tokio::test]
async fn logout_all_invalidates_every_token() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let phone = server.login(&alice.localpart, &alice.password).await;

    expect_ok(
        phone.post("/logout/all", &json!({})).await,
        "POST /logout/all",
    );
    for (name, user) in [("registration device", &alice), ("second device", &phone)] {
        let resp = user.whoami().await;
        expect_error(
            &resp,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            &format!("whoami on the {name} after logout/all"),
        );
    }
    expect_ok(
        password_login(&server, &alice.localpart, &alice.password, json!({})).await,
        "login after logout/all",
    );
}

#[tokio::test]
async fn refresh_token_rotates_and_the_old_one_is_revoked_once_the_new_is_used() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;

    let login = expect_ok(
        password_login(
            &server,
            &alice.localpart,
            &alice.password,
            json!({ "refresh_token": true }),
        )
        .await,
        "login with refresh_token: true",
    );
    let refresh = login["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a refresh_token in the login response, got {login}"))
        .to_owned();
    assert!(
        login["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
        "expected a positive expires_in_ms, got {login}"
    );

    let client = server.client();
    let renewed = expect_ok(
        client
            .post("/refresh", &json!({ "refresh_token": refresh }))
            .await,
        "POST /refresh",
    );
    let new_access = renewed["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a new access_token from /refresh, got {renewed}"));
    assert_ne!(
        Some(new_access),
        login["access_token"].as_str(),
        "expected /refresh to issue a different access token, got {renewed}"
    );
    let who = expect_ok(
        server.client_with_token(new_access).whoami().await,
        "whoami with the refreshed access token",
    );
    assert_eq!(
        who["user_id"], alice.user_id,
        "expected the refreshed token to belong to the user, got {who}"
    );
    assert_eq!(
        who["device_id"], login["device_id"],
        "expected refreshing to keep the device, got {who}"
    );

    // The new access token has been used, so the old refresh token is revoked.
    let stale = client
        .post("/refresh", &json!({ "refresh_token": refresh }))
        .await;
    expect_error(
        &stale,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "reusing a rotated refresh token",
    );

    let bogus = client
        .post(
            "/refresh",
            &json!({ "refresh_token": "not-a-refresh-token" }),
        )
        .await;
    expect_error(
        &bogus,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "an unknown refresh token",
    );
}

#[tokio::test]
async fn devices_can_be_listed_renamed_and_deleted_with_password_uia() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let phone = server.login(&alice.localpart, &alice.password).await;

    let list = expect_ok(alice.get("/devices").await, "GET /devices");
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a `devices` array, got {list}"))
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert!(
        ids.contains(&alice.device_id.as_str()) && ids.contains(&phone.device_id.as_str()),
        "expected both devices listed, got {list}"
    );

    let path = format!("/devices/{}", enc(&phone.device_id));
    let one = expect_ok(alice.get(&path).await, "GET /devices/{id}");
    assert_eq!(
        one["device_id"], phone.device_id,
        "expected the requested device, got {one}"
    );

    expect_ok(
        alice.put(&path, &json!({ "display_name": "Phone" })).await,
        "PUT /devices/{id} display_name",
    );
    let renamed = expect_ok(alice.get(&path).await, "GET /devices/{id} after rename");
    assert_eq!(
        renamed["display_name"], "Phone",
        "expected the new display_name, got {renamed}"
    );

    let deleted = with_password_uia(&alice, "DELETE", &path, json!({})).await;
    expect_ok(deleted, "DELETE /devices/{id} with password UIA");
    let dead = phone.whoami().await;
    expect_error(
        &dead,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "whoami with a deleted device's token",
    );
    let gone = alice.get(&path).await;
    expect_error(
        &gone,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET of a deleted device",
    );
    expect_ok(
        alice.whoami().await,
        "whoami on the device that did the deleting",
    );
}

#[tokio::test]
async fn password_change_needs_uia_and_replaces_the_password() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let other = server.login(&alice.localpart, &alice.password).await;
    let new_password = "a brand new password 456";

    let changed = with_password_uia(
        &alice,
        "POST",
        "/account/password",
        json!({ "new_password": new_password }),
    )
    .await;
    expect_ok(changed, "POST /account/password with password UIA");

    let old = password_login(&server, &alice.localpart, &alice.password, json!({})).await;
    expect_error(
        &old,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "login with the old password",
    );
    expect_ok(
        password_login(&server, &alice.localpart, new_password, json!({})).await,
        "login with the new password",
    );

    // logout_devices defaults to true: other devices go, the requesting one stays.
    let revoked = other.whoami().await;
    expect_error(
        &revoked,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "another device after a password change",
    );
    expect_ok(alice.whoami().await, "the device that changed the password");
}

#[tokio::test]
async fn deactivated_account_cannot_log_in() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;

    let resp = with_password_uia(&alice, "POST", "/account/deactivate", json!({})).await;
    expect_ok(resp, "POST /account/deactivate with password UIA");

    let (status, body) =
        password_login(&server, &alice.localpart, &alice.password, json!({})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "expected 403 logging into a deactivated account, got {status}: {body}"
    );
    assert!(
        body["errcode"] == "M_FORBIDDEN" || body["errcode"] == "M_USER_DEACTIVATED",
        "expected M_FORBIDDEN or M_USER_DEACTIVATED, got {body}"
    );
    let dead = alice.whoami().await;
    expect_error(
        &dead,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "the token of a deactivated account",
    );
}

#[tokio::test]
async fn profile_round_trips_and_propagates_to_room_membership() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let uid = enc(&alice.user_id);
    let avatar = format!(
        "mxc://{}/avatar{}",
        server.server_name(),
        random_localpart()
    );

    expect_ok(
        alice
            .put(
                &format!("/profile/{uid}/displayname"),
                &json!({ "displayname": "Alice Liddell" }),
            )
            .await,
        "PUT displayname",
    );
    expect_ok(
        alice
            .put(
                &format!("/profile/{uid}/avatar_url"),
                &json!({ "avatar_url": avatar }),
            )
            .await,
        "PUT avatar_url",
    );

    let name = expect_ok(
        alice.get(&format!("/profile/{uid}/displayname")).await,
        "GET displayname",
    );
    assert_eq!(
        name["displayname"], "Alice Liddell",
        "expected the new displayname, got {name}"
    );
    let pic = expect_ok(
        alice.get(&format!("/profile/{uid}/avatar_url")).await,
        "GET avatar_url",
    );
    assert_eq!(
        pic["avatar_url"],
        avatar.as_str(),
        "expected the new avatar_url, got {pic}"
    );
    let stranger = server.register_random().await;
    let whole = expect_ok(
        stranger.get(&format!("/profile/{uid}")).await,
        "GET /profile/{userId} by another user",
    );
    assert_eq!(
        whole["displayname"], "Alice Liddell",
        "expected displayname in the full profile, got {whole}"
    );
    assert_eq!(
        whole["avatar_url"],
        avatar.as_str(),
        "expected avatar_url in the full profile, got {whole}"
    );

    let deadline = Instant::now() + WAIT;
    loop {
        let member = alice
            .state_content(&room, "m.room.member", &alice.user_id)
            .await;
        if member["displayname"] == "Alice Liddell" && member["avatar_url"] == avatar.as_str() {
            assert_eq!(
                member["membership"], "join",
                "expected the member event to stay a join, got {member}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected the profile change in m.room.member within {WAIT:?}, got {member}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn capabilities_offer_room_versions_1_to_12_with_12_default() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let caps = expect_ok(alice.get("/capabilities").await, "GET /capabilities");
    // Issue 14: the capabilities are written out, defaults included.
    assert_eq!(
        caps["capabilities"]["m.change_password"]["enabled"], true,
        "{caps}"
    );
    let versions = &caps["capabilities"]["m.room_versions"];
    assert_eq!(
        versions["default"], "12",
        "expected default room version 12, got {caps}"
    );
    for v in [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
    ] {
        assert_eq!(
            versions["available"][v], "stable",
            "expected room version {v} available as stable, got {caps}"
        );
    }
}

#[tokio::test]
async fn versions_lists_v1_releases() {
    let server = TestServer::start().await;
    let body = expect_ok(
        server.client().get("/_matrix/client/versions").await,
        "GET /_matrix/client/versions",
    );
    let versions = body["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a `versions` array, got {body}"));
    assert!(
        versions.iter().all(Value::is_string),
        "expected only strings in versions, got {body}"
    );
    assert!(
        versions
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s.starts_with("v1."))),
        "expected at least one v1.x version, got {body}"
    );
}

#[tokio::test]
async fn well_known_client_names_the_homeserver_base_url() {
    let server = TestServer::start().await;
    let body = expect_ok(
        server.client().get("/.well-known/matrix/client").await,
        "GET /.well-known/matrix/client",
    );
    let base = body["m.homeserver"]["base_url"]
        .as_str()
        .unwrap_or_else(|| panic!("expected m.homeserver.base_url, got {body}"));
    assert!(
        base.starts_with("http://") || base.starts_with("https://"),
        "expected an http(s) base_url, got {body}"
    );
}
