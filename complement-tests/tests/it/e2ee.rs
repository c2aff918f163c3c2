//! End-to-end encryption key handling: `/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/changes`, send-to-device messages, the e2ee extensions to `/sync`
//! (`to_device`, `device_lists`, one-time key counts, unused fallback key types), and
//! cross-signing (`/keys/device_signing/upload`, `/keys/signatures/upload`).
//!
//! Keys are real ed25519 keys signing canonical JSON (see `paracord_complement::e2ee`), so
//! the server can check every signature it is given.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use paracord_complement::{
    e2ee::{
        random_curve25519, verify_signature, CrossSigning, Ed25519Key, FakeDevice,
        SIGNED_CURVE25519,
    },
    enc, expect_error, expect_error_status, expect_ok, has_event_id, random_localpart,
    room_timeline, Client, Method, StatusCode, TestServer, User, WAIT,
};
use serde_json::{json, Value};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fake device for the device `user` is logged in with.
fn device_of(user: &User) -> FakeDevice {
    FakeDevice::new(&user.user_id, &user.device_id)
}

async fn upload(user: &Client, body: &Value) -> (StatusCode, Value) {
    user.post("/keys/upload", body).await
}

/// POST /keys/upload expecting 200; returns the `signed_curve25519` count it reports.
async fn upload_ok(user: &Client, body: &Value, what: &str) -> u64 {
    let resp = expect_ok(upload(user, body).await, what);
    assert!(
        resp["one_time_key_counts"].is_object(),
        "expected an object `one_time_key_counts` from /keys/upload ({what}), got {resp}"
    );
    otk_count(&resp["one_time_key_counts"])
}

/// The `signed_curve25519` entry of a count map; a missing algorithm counts as zero.
fn otk_count(counts: &Value) -> u64 {
    match &counts[SIGNED_CURVE25519] {
        Value::Null => 0,
        n => n
            .as_u64()
            .unwrap_or_else(|| panic!("expected an integer count, got {counts}")),
    }
}

/// The server's current `signed_curve25519` count, from an empty upload.
async fn current_otk_count(user: &Client) -> u64 {
    upload_ok(user, &json!({}), "an empty /keys/upload").await
}

/// Uploads the device's self-signed device keys.
async fn upload_device_keys(user: &User, device: &FakeDevice) {
    upload_ok(
        user,
        &json!({ "device_keys": device.device_keys() }),
        "uploading device keys",
    )
    .await;
}

/// POST /keys/query expecting 200.
async fn query(user: &Client, device_keys: Value) -> Value {
    let resp = expect_ok(
        user.post("/keys/query", &json!({ "device_keys": device_keys }))
            .await,
        "POST /keys/query",
    );
    assert!(
        resp["device_keys"].is_object(),
        "expected an object `device_keys` from /keys/query, got {resp}"
    );
    resp
}

/// All devices of `user_id` as `user` sees them: `{device_id: DeviceKeys}` (empty when none).
async fn queried_devices(user: &Client, user_id: &str) -> serde_json::Map<String, Value> {
    let resp = query(user, json!({ user_id: [] })).await;
    resp["device_keys"]
        .get(user_id)
        .map(|d| {
            d.as_object()
                .cloned()
                .unwrap_or_else(|| panic!("expected a device map for {user_id}, got {resp}"))
        })
        .unwrap_or_default()
}

/// POST /keys/claim for one device's `signed_curve25519` key; returns the
/// `(key_id, key_object)` handed out, or `None` when the device got nothing.
async fn claim_one(claimer: &Client, user_id: &str, device_id: &str) -> Option<(String, Value)> {
    let resp = expect_ok(
        claimer
            .post(
                "/keys/claim",
                &json!({ "one_time_keys": { user_id: { device_id: SIGNED_CURVE25519 } } }),
            )
            .await,
        "POST /keys/claim",
    );
    assert!(
        resp["one_time_keys"].is_object(),
        "expected an object `one_time_keys` from /keys/claim, got {resp}"
    );
    let keys = resp["one_time_keys"]
        .get(user_id)
        .and_then(|d| d.get(device_id))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    assert!(
        keys.len() <= 1,
        "expected at most one key per device and algorithm, got {resp}"
    );
    let (key_id, key) = keys.into_iter().next()?;
    assert!(
        key_id.starts_with("signed_curve25519:"),
        "expected a signed_curve25519 key id, got {key_id} in {resp}"
    );
    Some((key_id, key))
}

/// The key ids and objects of an uploaded key map, without their algorithm.
fn key_map(keys: &Value) -> BTreeMap<String, Value> {
    keys.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// A room with `m.room.encryption` set, which anyone may join: device-list tracking is
/// about users who share an encrypted room.
async fn encrypted_room(creator: &User) -> String {
    creator
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.encryption",
                "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" },
            }],
        }))
        .await
}

/// Runs `method path body`; expects the user-interactive 401 offering `m.login.password`,
/// then repeats it with password auth and returns that second answer.
async fn with_password_uia(
    user: &User,
    method: Method,
    path: &str,
    mut body: Value,
) -> (StatusCode, Value) {
    let first = user
        .client
        .try_json(method.clone(), path, Some(&body))
        .await;
    let (status, challenge) =
        first.unwrap_or_else(|e| panic!("expected an answer to {method} {path}: {e}"));
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "expected a UIA 401 from {method} {path} without auth, got {status}: {challenge}"
    );
    assert_password_flow(&challenge, &format!("{method} {path}"));
    let session = challenge["session"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a UIA session from {method} {path}, got {challenge}"));
    body["auth"] = user.password_auth(session);
    user.client
        .try_json(method.clone(), path, Some(&body))
        .await
        .unwrap_or_else(|e| panic!("expected an answer to {method} {path}: {e}"))
}

/// POSTs `body`; if the server asks for user-interactive auth, completes it with the
/// password and returns the second answer. For requests whose outcome should not depend
/// on whether the server checks auth or content first.
async fn with_uia_if_asked(user: &User, path: &str, mut body: Value) -> (StatusCode, Value) {
    let (status, first) = user.post(path, &body).await;
    if status != StatusCode::UNAUTHORIZED || first.get("flows").is_none() {
        return (status, first);
    }
    let session = first["session"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a UIA session from POST {path}, got {first}"));
    body["auth"] = user.password_auth(session);
    user.post(path, &body).await
}

fn assert_password_flow(challenge: &Value, what: &str) {
    let flows = challenge["flows"].as_array().cloned().unwrap_or_default();
    assert!(
        flows.iter().any(|f| f["stages"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "m.login.password"))),
        "expected `flows` with an m.login.password stage from {what}, got {challenge}"
    );
    assert!(
        challenge["session"].is_string(),
        "expected a UIA `session` from {what}, got {challenge}"
    );
}

/// PUT /sendToDevice/{event_type}/{txn} expecting 200.
async fn send_to_device(sender: &Client, event_type: &str, txn: &str, messages: Value) {
    expect_ok(
        sender
            .put(
                &format!("/sendToDevice/{}/{}", enc(event_type), enc(txn)),
                &json!({ "messages": messages }),
            )
            .await,
        "PUT /sendToDevice",
    );
}

/// `to_device.events` of a sync response (empty when absent).
fn to_device_events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Asserts that `sync` carries exactly one to-device event, with this sender, type and content.
fn assert_one_to_device(sync: &Value, sender: &str, event_type: &str, content: &Value) {
    let events = to_device_events(sync);
    assert_eq!(
        events.len(),
        1,
        "expected exactly one to-device event, got {sync}"
    );
    let event = &events[0];
    assert_eq!(event["sender"], sender, "to-device `sender`: {event}");
    assert_eq!(event["type"], event_type, "to-device `type`: {event}");
    assert_eq!(&event["content"], content, "to-device `content`: {event}");
}

/// A filter that keeps presence out, so long-polls wake only for what a test sends.
fn no_presence() -> String {
    json!({ "presence": { "not_types": ["*"] } }).to_string()
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap_or_default().to_owned()
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a run of incremental syncs reported in `device_lists`, accumulated.
#[derive(Default, Debug)]
struct DeviceListUpdates {
    changed: HashSet<String>,
    left: HashSet<String>,
    /// The `next_batch` of the last sync.
    next_batch: String,
}

/// Syncs incrementally from `since`, accumulating `device_lists`, until `done` holds for
/// what has been seen so far (failing after [`WAIT`]).
async fn device_lists_until(
    user: &Client,
    since: &str,
    what: &str,
    done: impl Fn(&DeviceListUpdates) -> bool,
) -> DeviceListUpdates {
    let filter = no_presence();
    let deadline = Instant::now() + WAIT;
    let mut seen = DeviceListUpdates {
        next_batch: since.to_owned(),
        ..DeviceListUpdates::default()
    };
    loop {
        let sync = user.sync(Some(&seen.next_batch), 500, Some(&filter)).await;
        seen.changed
            .extend(string_list(&sync["device_lists"]["changed"]));
        seen.left.extend(string_list(&sync["device_lists"]["left"]));
        seen.next_batch = next_batch(&sync);
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "expected device_lists where {what} within {WAIT:?}; seen so far {seen:?}, last sync {sync}"
        );
    }
}

/// GET /keys/changes?from&to expecting 200.
async fn keys_changes(user: &Client, from: &str, to: &str) -> Value {
    let path = format!("/keys/changes?from={}&to={}", enc(from), enc(to));
    let resp = expect_ok(user.get(&path).await, "GET /keys/changes");
    assert!(
        resp["changed"].is_array() || resp["changed"].is_null(),
        "expected `changed` to be a list, got {resp}"
    );
    resp
}

fn master_public(cross: &CrossSigning) -> String {
    cross.master.public_key()
}

async fn upload_cross_signing(user: &User, body: &Value) -> (StatusCode, Value) {
    user.post("/keys/device_signing/upload", body).await
}

async fn upload_signatures(user: &Client, body: &Value) -> Value {
    expect_ok(
        user.post("/keys/signatures/upload", body).await,
        "POST /keys/signatures/upload",
    )
}

/// True when `resp.failures` has nothing in it.
fn no_failures(resp: &Value) -> bool {
    match &resp["failures"] {
        Value::Null => true,
        Value::Object(m) => m
            .values()
            .all(|v| v.as_object().is_none_or(|m| m.is_empty())),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. /keys/upload
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn uploaded_device_keys_and_one_time_keys_round_trip_with_counts() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    let device_keys = device.device_keys();

    let count = upload_ok(
        &alice,
        &json!({ "device_keys": device_keys, "one_time_keys": device.one_time_keys(5) }),
        "device keys with five one-time keys",
    )
    .await;
    assert_eq!(count, 5, "one_time_key_counts after uploading five keys");
    let count = upload_ok(
        &alice,
        &json!({ "one_time_keys": device.one_time_keys(3) }),
        "three more one-time keys",
    )
    .await;
    assert_eq!(count, 8, "one_time_key_counts adds up across uploads");
    assert_eq!(
        current_otk_count(&alice).await,
        8,
        "an upload without keys reports the current count"
    );

    // Counts are per algorithm; `curve25519` one-time keys are plain strings.
    let resp = expect_ok(
        upload(
            &alice,
            &json!({ "one_time_keys": {
                format!("curve25519:{}", device.next_key_id()): random_curve25519(),
            } }),
        )
        .await,
        "an unsigned curve25519 one-time key",
    );
    let counts = &resp["one_time_key_counts"];
    assert_eq!(
        (otk_count(counts), counts["curve25519"].as_u64()),
        (8, Some(1)),
        "expected a count for each algorithm, got {resp}"
    );

    for (who, viewer) in [("alice herself", &alice), ("bob", &bob)] {
        let devices = queried_devices(viewer, &alice.user_id).await;
        let got = devices.get(&alice.device_id).unwrap_or_else(|| {
            panic!("expected {who} to see alice's device in /keys/query, got {devices:?}")
        });
        for field in ["user_id", "device_id", "algorithms", "keys", "signatures"] {
            assert_eq!(
                got[field], device_keys[field],
                "expected {field} as uploaded when {who} queries, got {got}"
            );
        }
        assert!(
            verify_signature(
                got,
                &alice.user_id,
                &device.key_id(),
                &device.ed25519.public_key()
            ),
            "expected the device keys {who} gets to still carry a valid self-signature: {got}"
        );
    }
}

#[tokio::test]
async fn device_keys_for_another_user_or_device_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;

    // Properly self-signed, but not the caller's identity.
    let as_bob = FakeDevice::new(&bob.user_id, &alice.device_id);
    expect_error(
        &upload(&alice, &json!({ "device_keys": as_bob.device_keys() })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "device keys naming another user",
    );
    let other_device = FakeDevice::new(&alice.user_id, "NOTMYDEVICE");
    expect_error(
        &upload(
            &alice,
            &json!({ "device_keys": other_device.device_keys() }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "device keys naming another device of the caller",
    );

    let alices = queried_devices(&alice, &alice.user_id).await;
    assert!(
        alices.is_empty(),
        "expected no device keys stored for alice after refused uploads, got {alices:?}"
    );
    let bobs = queried_devices(&alice, &bob.user_id).await;
    assert!(
        bobs.is_empty(),
        "expected no device keys stored for bob, got {bobs:?}"
    );
}

#[tokio::test]
async fn device_keys_with_a_bad_self_signature_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = device_of(&alice);

    // Signed under the right key id, by a key other than the one in `keys`.
    let impostor = Ed25519Key::for_device(&alice.device_id);
    let mut forged = device.unsigned_device_keys();
    impostor.sign(&alice.user_id, &mut forged);
    expect_error(
        &upload(&alice, &json!({ "device_keys": forged })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "device keys signed by a key other than their own ed25519 key",
    );

    // Signed correctly, then changed.
    let mut tampered = device.device_keys();
    tampered["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2"]);
    expect_error(
        &upload(&alice, &json!({ "device_keys": tampered })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "device keys changed after they were signed",
    );

    let stored = queried_devices(&alice, &alice.user_id).await;
    assert!(
        stored.is_empty(),
        "expected refused device keys not to be stored, got {stored:?}"
    );
    upload_device_keys(&alice, &device).await;
}

/// Issue 14: device keys with no self-signature at all are stored as given (the spec leaves
/// trusting them to clients; other servers and Complement's tests upload such keys), while a
/// self-signature that is present must verify (above).
#[tokio::test]
async fn device_keys_without_a_self_signature_are_stored_as_given() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = device_of(&alice);
    let mut unsigned = device.unsigned_device_keys();
    unsigned["signatures"] = json!({});
    expect_ok(
        upload(&alice, &json!({ "device_keys": unsigned })).await,
        "unsigned device keys",
    );
    let stored = queried_devices(&alice, &alice.user_id).await;
    assert_eq!(
        stored[&alice.device_id]["keys"], unsigned["keys"],
        "stored as given: {stored:?}"
    );
}

#[tokio::test]
async fn one_time_and_fallback_keys_with_a_bad_signature_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    let impostor = Ed25519Key::for_device(&alice.device_id);

    let mut forged = json!({ "key": random_curve25519() });
    impostor.sign(&alice.user_id, &mut forged);
    expect_error(
        &upload(
            &alice,
            &json!({ "one_time_keys": { "signed_curve25519:FORGED": forged } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "a signed_curve25519 one-time key signed by another key",
    );

    let mut tampered = device.signed_key(false);
    tampered["key"] = json!(random_curve25519());
    expect_error(
        &upload(
            &alice,
            &json!({ "one_time_keys": { "signed_curve25519:TAMPERED": tampered } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "a signed_curve25519 one-time key changed after signing",
    );

    let mut forged_fallback = json!({
        "key": random_curve25519(),
        "fallback": true,
    });
    impostor.sign(&alice.user_id, &mut forged_fallback);
    expect_error(
        &upload(
            &alice,
            &json!({ "fallback_keys": { "signed_curve25519:FORGEDFB": forged_fallback } }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "a signed_curve25519 fallback key signed by another key",
    );

    assert_eq!(
        current_otk_count(&alice).await,
        0,
        "expected refused one-time keys not to be counted"
    );
    let bob = server.register_random().await;
    assert!(
        claim_one(&bob, &alice.user_id, &alice.device_id)
            .await
            .is_none(),
        "expected no refused key, one-time or fallback, to be claimable"
    );
}

#[tokio::test]
async fn reuploading_a_one_time_key_is_idempotent_but_changing_it_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    let keys = device.one_time_keys(2);

    assert_eq!(
        upload_ok(
            &alice,
            &json!({ "one_time_keys": keys }),
            "two one-time keys"
        )
        .await,
        2
    );
    assert_eq!(
        upload_ok(
            &alice,
            &json!({ "one_time_keys": keys }),
            "the same two one-time keys again (a retried request)",
        )
        .await,
        2,
        "expected an identical re-upload not to add keys"
    );

    let (reused_id, original) = key_map(&keys)
        .into_iter()
        .next()
        .unwrap_or_else(|| unreachable!());
    let mut changed = keys.clone();
    changed[&reused_id] = device.signed_key(false);
    expect_error(
        &upload(&alice, &json!({ "one_time_keys": changed })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "a re-upload of an existing one-time key id with a different key",
    );
    assert_eq!(
        current_otk_count(&alice).await,
        2,
        "expected the refused upload to change nothing"
    );

    let bob = server.register_random().await;
    let mut claimed = BTreeMap::new();
    while let Some((id, key)) = claim_one(&bob, &alice.user_id, &alice.device_id).await {
        assert!(
            claimed.insert(id.clone(), key).is_none(),
            "expected {id} to be claimed once"
        );
    }
    assert_eq!(
        claimed.get(&reused_id),
        Some(&original),
        "expected the originally uploaded key under {reused_id}, claimed {claimed:?}"
    );
    assert_eq!(claimed.len(), 2, "claimed {claimed:?}");
}

#[tokio::test]
async fn reuploading_identical_device_keys_is_accepted() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    upload_device_keys(&alice, &device).await;
    let devices = queried_devices(&alice, &alice.user_id).await;
    assert_eq!(
        devices.len(),
        1,
        "expected one device after two identical uploads, got {devices:?}"
    );
    assert_eq!(
        devices[&alice.device_id]["keys"],
        device.device_keys()["keys"],
        "{devices:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. /keys/query
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keys_query_shows_display_names_and_answers_for_the_devices_asked() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let phone = server.login(&alice.localpart, &alice.password).await;
    let bob = server.register_random().await;
    let laptop_device = device_of(&alice);
    let phone_device = device_of(&phone);
    upload_device_keys(&alice, &laptop_device).await;
    upload_device_keys(&phone, &phone_device).await;
    expect_ok(
        alice
            .put(
                &format!("/devices/{}", enc(&phone.device_id)),
                &json!({ "display_name": "Alice's phone" }),
            )
            .await,
        "PUT /devices/{id} display_name",
    );

    let all = query(&bob, json!({ &alice.user_id: [] })).await;
    // `failures` is optional in the spec's response schema (it lists unreachable remote
    // servers), so only its content is checked.
    assert!(
        no_failures(&all),
        "expected no `failures` for a local query, got {all}"
    );
    let devices = &all["device_keys"][&alice.user_id];
    let ids: HashSet<&str> = devices
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        HashSet::from([alice.device_id.as_str(), phone.device_id.as_str()]),
        "expected both of alice's devices for an empty device list, got {all}"
    );
    assert_eq!(
        devices[&phone.device_id]["unsigned"]["device_display_name"], "Alice's phone",
        "expected the display name in `unsigned`, got {all}"
    );
    assert!(
        verify_signature(
            &devices[&phone.device_id],
            &alice.user_id,
            &phone_device.key_id(),
            &phone_device.ed25519.public_key()
        ),
        "expected `unsigned` to leave the self-signature valid: {all}"
    );

    let one = query(&bob, json!({ &alice.user_id: [&phone.device_id] })).await;
    let ids: Vec<&String> = one["device_keys"][&alice.user_id]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        vec![&phone.device_id],
        "expected only the device asked for, got {one}"
    );

    let unknown_device = query(&bob, json!({ &alice.user_id: ["NOSUCHDEVICE"] })).await;
    assert!(
        unknown_device["device_keys"][&alice.user_id]
            .get("NOSUCHDEVICE")
            .is_none(),
        "expected an unknown device to be left out, got {unknown_device}"
    );

    let ghost = server.user_id(&random_localpart());
    let mixed = query(&bob, json!({ &ghost: [], &alice.user_id: [] })).await;
    let ghost_devices = &mixed["device_keys"][&ghost];
    assert!(
        ghost_devices.is_null() || ghost_devices.as_object().is_some_and(|m| m.is_empty()),
        "expected no devices for an unknown user (absent or an empty map), got {mixed}"
    );
    assert_eq!(
        mixed["device_keys"][&alice.user_id]
            .as_object()
            .map(|m| m.len()),
        Some(2),
        "expected an unknown user not to spoil the rest of the answer, got {mixed}"
    );
    assert!(
        no_failures(&mixed),
        "expected an unknown local user to be no failure, got {mixed}"
    );
}

#[tokio::test]
async fn cross_signing_keys_are_public_but_the_user_signing_key_is_the_owners_only() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let cross = CrossSigning::new(&alice.user_id);
    expect_ok(
        upload_cross_signing(&alice, &cross.upload_body()).await,
        "first /keys/device_signing/upload",
    );

    let own = query(&alice, json!({ &alice.user_id: [] })).await;
    for (field, expected) in [
        ("master_keys", cross.master_key()),
        ("self_signing_keys", cross.self_signing_key()),
        ("user_signing_keys", cross.user_signing_key()),
    ] {
        let got = &own[field][&alice.user_id];
        for part in ["user_id", "usage", "keys"] {
            assert_eq!(
                got[part], expected[part],
                "expected alice's own {field} {part} as uploaded, got {own}"
            );
        }
    }
    let ssk = &own["self_signing_keys"][&alice.user_id];
    assert!(
        verify_signature(
            ssk,
            &alice.user_id,
            cross.master.key_id(),
            &master_public(&cross)
        ),
        "expected the self-signing key's master signature to be kept, got {own}"
    );

    let theirs = query(&bob, json!({ &alice.user_id: [] })).await;
    assert_eq!(
        theirs["master_keys"][&alice.user_id]["keys"],
        cross.master_key()["keys"],
        "expected bob to see alice's master key, got {theirs}"
    );
    assert_eq!(
        theirs["self_signing_keys"][&alice.user_id]["keys"],
        cross.self_signing_key()["keys"],
        "expected bob to see alice's self-signing key, got {theirs}"
    );
    assert!(
        theirs["user_signing_keys"].get(&alice.user_id).is_none(),
        "expected bob not to see alice's user-signing key, got {theirs}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. /keys/claim and the key counts in /sync
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn one_time_keys_are_claimed_once_then_the_fallback_key_is_reused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    let otks = device.one_time_keys(2);
    let fallback = device.fallback_keys();
    upload_ok(
        &alice,
        &json!({
            "device_keys": device.device_keys(),
            "one_time_keys": otks,
            "fallback_keys": fallback,
        }),
        "device keys, two one-time keys and a fallback key",
    )
    .await;
    // Incremental syncs from here on: the answers must reflect each change.
    let sync = alice.sync(None, 0, None).await;
    assert_eq!(
        otk_count(&sync["device_one_time_keys_count"]),
        2,
        "expected two unclaimed keys in /sync, got {sync}"
    );
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!([SIGNED_CURVE25519]),
        "expected the unused fallback key's algorithm in /sync, got {sync}"
    );

    let otks = key_map(&otks);
    let (fallback_id, fallback_key) = key_map(&fallback)
        .into_iter()
        .next()
        .unwrap_or_else(|| unreachable!());
    let first = claim_one(&bob, &alice.user_id, &alice.device_id)
        .await
        .unwrap_or_else(|| panic!("expected a one-time key from the first claim"));
    let second = claim_one(&bob, &alice.user_id, &alice.device_id)
        .await
        .unwrap_or_else(|| panic!("expected a one-time key from the second claim"));
    for (id, key) in [&first, &second] {
        assert_eq!(
            otks.get(id),
            Some(key),
            "expected an uploaded one-time key, unchanged, got {id}: {key}"
        );
        assert!(
            verify_signature(
                key,
                &alice.user_id,
                &device.key_id(),
                &device.ed25519.public_key()
            ),
            "expected the claimed key to carry the device's valid signature: {key}"
        );
    }
    assert_ne!(
        first.0, second.0,
        "expected two claims to get two different one-time keys"
    );

    for attempt in ["third", "fourth"] {
        let (id, key) = claim_one(&bob, &alice.user_id, &alice.device_id)
            .await
            .unwrap_or_else(|| {
                panic!("expected the fallback key from the {attempt} claim, got nothing")
            });
        assert_eq!(
            (&id, &key),
            (&fallback_id, &fallback_key),
            "expected the fallback key from the {attempt} claim"
        );
    }

    let sync = alice.sync(Some(&next_batch(&sync)), 0, None).await;
    assert_eq!(
        otk_count(&sync["device_one_time_keys_count"]),
        0,
        "expected no unclaimed one-time keys left, got {sync}"
    );
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!([]),
        "expected a used fallback key to drop out of the (still present) list, got {sync}"
    );

    // A new fallback key is unused again, and replaces the old one.
    let replacement = device.fallback_keys();
    upload_ok(
        &alice,
        &json!({ "fallback_keys": replacement }),
        "a replacement fallback key",
    )
    .await;
    let sync = alice.sync(Some(&next_batch(&sync)), 0, None).await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!([SIGNED_CURVE25519]),
        "expected the replacement fallback key to be unused, got {sync}"
    );
    let (id, key) = claim_one(&bob, &alice.user_id, &alice.device_id)
        .await
        .unwrap_or_else(|| panic!("expected the replacement fallback key from a claim"));
    assert_eq!(
        key_map(&replacement).get(&id),
        Some(&key),
        "expected the replacement, not the old fallback key, got {id}: {key}"
    );
}

#[tokio::test]
async fn device_one_time_keys_count_in_sync_goes_down_after_claims() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    upload_ok(
        &alice,
        &json!({ "device_keys": device.device_keys(), "one_time_keys": device.one_time_keys(5) }),
        "five one-time keys",
    )
    .await;
    let since = alice.sync_token().await;
    let initial = alice.sync(None, 0, None).await;
    assert_eq!(
        otk_count(&initial["device_one_time_keys_count"]),
        5,
        "{initial}"
    );

    for _ in 0..2 {
        claim_one(&bob, &alice.user_id, &alice.device_id)
            .await
            .unwrap_or_else(|| panic!("expected a one-time key"));
    }
    let incremental = alice.sync(Some(&since), 0, None).await;
    assert_eq!(
        otk_count(&incremental["device_one_time_keys_count"]),
        3,
        "expected the incremental sync to report the count after two claims, got {incremental}"
    );
    assert_eq!(
        current_otk_count(&alice).await,
        3,
        "expected /keys/upload to agree"
    );
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_the_same_key_twice() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let device = device_of(&alice);
    let uploaded = device.one_time_keys(10);
    upload_ok(
        &alice,
        &json!({ "device_keys": device.device_keys(), "one_time_keys": uploaded }),
        "ten one-time keys",
    )
    .await;

    let mut tasks = Vec::new();
    for i in 0..20 {
        let claimer = if i % 2 == 0 {
            bob.client.clone()
        } else {
            carol.client.clone()
        };
        let (user_id, device_id) = (alice.user_id.clone(), alice.device_id.clone());
        tasks.push(tokio::spawn(async move {
            claim_one(&claimer, &user_id, &device_id).await
        }));
    }
    let mut handed_out = Vec::new();
    for task in tasks {
        if let Some(claimed) = task
            .await
            .unwrap_or_else(|e| panic!("expected the claim task to finish: {e}"))
        {
            handed_out.push(claimed);
        }
    }

    let ids: HashSet<&String> = handed_out.iter().map(|(id, _)| id).collect();
    let keys: HashSet<&Value> = handed_out.iter().map(|(_, k)| &k["key"]).collect();
    assert_eq!(
        (handed_out.len(), ids.len(), keys.len()),
        (10, 10, 10),
        "expected 20 concurrent claims to hand out each of the 10 keys exactly once, got {handed_out:?}"
    );
    let uploaded = key_map(&uploaded);
    for (id, key) in &handed_out {
        assert_eq!(
            uploaded.get(id),
            Some(key),
            "expected an uploaded key, got {id}"
        );
    }
    assert_eq!(current_otk_count(&alice).await, 0);
}

#[tokio::test]
async fn one_time_keys_are_claimed_in_upload_order() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    // keys.yaml, /keys/claim: "One-time keys are given out in the order that they were
    // uploaded via /keys/upload." Key ids are chosen so that their sort order is the reverse.
    let mut uploaded = Vec::new();
    for id in [
        "signed_curve25519:CCCC",
        "signed_curve25519:BBBB",
        "signed_curve25519:AAAA",
    ] {
        let key = device.signed_key(false);
        upload_ok(
            &alice,
            &json!({ "one_time_keys": { id: key } }),
            "one one-time key",
        )
        .await;
        uploaded.push(id.to_owned());
    }
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (id, _) = claim_one(&bob, &alice.user_id, &alice.device_id)
            .await
            .unwrap_or_else(|| panic!("expected a one-time key, claimed so far {claimed:?}"));
        claimed.push(id);
    }
    assert_eq!(
        claimed, uploaded,
        "expected one-time keys to be handed out in upload order"
    );
}

#[tokio::test]
async fn claims_for_unknown_users_and_devices_are_no_error() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    upload_ok(
        &alice,
        &json!({ "device_keys": device.device_keys(), "one_time_keys": device.one_time_keys(1) }),
        "one one-time key",
    )
    .await;
    let ghost = server.user_id(&random_localpart());
    let resp = expect_ok(
        bob.post(
            "/keys/claim",
            &json!({ "one_time_keys": {
                &ghost: { "GHOSTDEVICE": SIGNED_CURVE25519 },
                &alice.user_id: { &alice.device_id: SIGNED_CURVE25519, "NOSUCHDEVICE": SIGNED_CURVE25519 },
            } }),
        )
        .await,
        "a claim naming unknown users and devices",
    );
    let ghost_keys = &resp["one_time_keys"][&ghost];
    assert!(
        ghost_keys.is_null() || ghost_keys.as_object().is_some_and(|m| m.is_empty()),
        "expected nothing for an unknown user, got {resp}"
    );
    let missing = &resp["one_time_keys"][&alice.user_id]["NOSUCHDEVICE"];
    assert!(
        missing.is_null() || missing.as_object().is_some_and(|m| m.is_empty()),
        "expected nothing for an unknown device, got {resp}"
    );
    assert_eq!(
        resp["one_time_keys"][&alice.user_id][&alice.device_id]
            .as_object()
            .map(|m| m.len()),
        Some(1),
        "expected the known device's key alongside, got {resp}"
    );
    assert!(no_failures(&resp), "expected no failures, got {resp}");
}

// ---------------------------------------------------------------------------------------------
// 4. Send-to-device
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn to_device_message_reaches_only_the_named_device_with_sender_type_and_content() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let bob_phone = server.login(&bob.localpart, &bob.password).await;
    let since = bob.sync_token().await;
    let phone_since = bob_phone.sync_token().await;

    let content = json!({ "secret": "for bob's first device", "n": 1 });
    send_to_device(
        &alice,
        "org.example.test",
        &Client::txn_id(),
        json!({ &bob.user_id: { &bob.device_id: content } }),
    )
    .await;

    let sync = bob
        .sync_until(Some(&since), None, "a to-device event arrived", |s| {
            !to_device_events(s).is_empty()
        })
        .await;
    assert_one_to_device(&sync, &alice.user_id, "org.example.test", &content);

    let phone_sync = bob_phone.sync(Some(&phone_since), 0, None).await;
    assert!(
        to_device_events(&phone_sync).is_empty(),
        "expected a message for bob's first device not to reach his phone, got {phone_sync}"
    );
}

#[tokio::test]
async fn to_device_wildcard_reaches_every_device_of_the_user() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let bob_phone = server.login(&bob.localpart, &bob.password).await;
    let since = bob.sync_token().await;
    let phone_since = bob_phone.sync_token().await;

    send_to_device(
        &alice,
        "org.example.everywhere",
        &Client::txn_id(),
        json!({ &bob.user_id: { "*": { "hello": "all" } } }),
    )
    .await;

    for (device, since) in [(&bob, since), (&bob_phone, phone_since)] {
        let sync = device
            .sync_until(Some(&since), None, "the wildcard message arrived", |s| {
                !to_device_events(s).is_empty()
            })
            .await;
        assert_one_to_device(
            &sync,
            &alice.user_id,
            "org.example.everywhere",
            &json!({ "hello": "all" }),
        );
    }
}

/// Syncs from `since` (acknowledging as it goes) until a `marker` event type arrives;
/// returns every to-device event seen, in order.
async fn to_device_until_marker(user: &User, since: &str, marker: &str) -> Vec<Value> {
    let filter = no_presence();
    let deadline = Instant::now() + WAIT;
    let mut since = since.to_owned();
    let mut seen = Vec::new();
    loop {
        let sync = user.sync(Some(&since), 500, Some(&filter)).await;
        let events = to_device_events(&sync);
        let done = events.iter().any(|e| e["type"] == marker);
        seen.extend(events);
        if done {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "expected the {marker} to-device event within {WAIT:?}; seen {seen:?}"
        );
        since = next_batch(&sync);
    }
}

#[tokio::test]
async fn to_device_with_a_repeated_transaction_id_is_delivered_once() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let since = bob.sync_token().await;

    let txn = Client::txn_id();
    let messages = json!({ &bob.user_id: { &bob.device_id: { "once": true } } });
    send_to_device(&alice, "org.example.once", &txn, messages.clone()).await;
    send_to_device(&alice, "org.example.once", &txn, messages).await;
    send_to_device(
        &alice,
        "org.example.marker",
        &Client::txn_id(),
        json!({ &bob.user_id: { &bob.device_id: {} } }),
    )
    .await;

    let seen = to_device_until_marker(&bob, &since, "org.example.marker").await;
    let once = seen
        .iter()
        .filter(|e| e["type"] == "org.example.once")
        .count();
    assert_eq!(
        once, 1,
        "expected a retried transaction to be delivered once, got {seen:?}"
    );
}

#[tokio::test]
async fn to_device_transaction_ids_are_scoped_to_the_device_and_the_endpoint() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let alice_phone = server.login(&alice.localpart, &alice.password).await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let since = bob.sync_token().await;

    // "The scope of a transaction ID is for a single device, and a single HTTP endpoint."
    let txn = Client::txn_id();
    let to_bob = |from: &str| json!({ &bob.user_id: { &bob.device_id: { "from": from } } });
    send_to_device(&alice, "org.example.scoped", &txn, to_bob("laptop")).await;
    send_to_device(&alice_phone, "org.example.scoped", &txn, to_bob("phone")).await;
    expect_ok(
        alice
            .send_with_txn(
                &room,
                "m.room.message",
                &txn,
                &json!({ "msgtype": "m.text", "body": "same txn" }),
            )
            .await,
        "a room message reusing the to-device transaction id",
    );
    send_to_device(
        &alice,
        "org.example.marker",
        &Client::txn_id(),
        json!({ &bob.user_id: { &bob.device_id: {} } }),
    )
    .await;

    let seen = to_device_until_marker(&bob, &since, "org.example.marker").await;
    let mut from: Vec<&str> = seen
        .iter()
        .filter(|e| e["type"] == "org.example.scoped")
        .filter_map(|e| e["content"]["from"].as_str())
        .collect();
    from.sort_unstable();
    assert_eq!(
        from,
        vec!["laptop", "phone"],
        "expected the same transaction id from two devices to be two messages, got {seen:?}"
    );
}

#[tokio::test]
async fn to_device_messages_stay_until_next_batch_acknowledges_them() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let filter = no_presence();
    let mut since = bob.sync_token().await;

    send_to_device(
        &alice,
        "org.example.sticky",
        &Client::txn_id(),
        json!({ &bob.user_id: { &bob.device_id: { "keep": "me" } } }),
    )
    .await;

    // Find the `since` whose answer carries the message.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let sync = bob.sync(Some(&since), 500, Some(&filter)).await;
        if !to_device_events(&sync).is_empty() {
            break sync;
        }
        assert!(
            Instant::now() < deadline,
            "expected the to-device message within {WAIT:?}"
        );
        since = next_batch(&sync);
    };
    let expected = to_device_events(&first);

    // The answer was lost: the client asks again with the same token.
    let again = bob.sync(Some(&since), 0, Some(&filter)).await;
    assert_eq!(
        to_device_events(&again),
        expected,
        "expected an unacknowledged message again for the same `since`, got {again}"
    );

    let next = first["next_batch"].as_str().unwrap_or_default();
    let after = bob.sync(Some(next), 0, Some(&filter)).await;
    assert!(
        to_device_events(&after).is_empty(),
        "expected syncing from next_batch to acknowledge the message, got {after}"
    );
}

#[tokio::test]
async fn more_than_a_hundred_queued_to_device_messages_all_arrive_in_order() {
    const TOTAL: u64 = 150;
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let since = bob.sync_token().await;

    for n in 0..TOTAL {
        send_to_device(
            &alice,
            "org.example.queued",
            &Client::txn_id(),
            json!({ &bob.user_id: { &bob.device_id: { "n": n } } }),
        )
        .await;
    }

    let filter = no_presence();
    let deadline = Instant::now() + WAIT;
    let mut since = since;
    let mut got: Vec<u64> = Vec::new();
    while (got.len() as u64) < TOTAL {
        assert!(
            Instant::now() < deadline,
            "expected {TOTAL} to-device messages within {WAIT:?}, got {} so far: {got:?}",
            got.len()
        );
        let sync = bob.sync(Some(&since), 500, Some(&filter)).await;
        got.extend(
            to_device_events(&sync)
                .iter()
                .map(|e| e["content"]["n"].as_u64().unwrap_or(u64::MAX)),
        );
        since = next_batch(&sync);
    }
    let expected: Vec<u64> = (0..TOTAL).collect();
    assert_eq!(
        got, expected,
        "expected every queued message once, in the order sent"
    );
}

#[tokio::test]
async fn long_polling_sync_wakes_up_for_a_device_list_change() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = encrypted_room(&alice).await;
    bob.join_ok(&room).await;
    let filter = no_presence();
    let since = alice.sync(None, 0, Some(&filter)).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Let a sync see bob's join, so only the key upload is left to wake the long-poll.
    let since = device_lists_until(&alice, &since, "bob's join is seen", |_| true)
        .await
        .next_batch;

    let poller = alice.client.clone();
    let bob_id = bob.user_id.clone();
    let task = tokio::spawn(async move {
        // Some servers answer once for other news first; keep polling until bob shows up.
        let mut since = since;
        loop {
            let resp = poller.sync(Some(&since), 10_000, Some(&filter)).await;
            if string_list(&resp["device_lists"]["changed"]).contains(&bob_id) {
                return (resp, Instant::now());
            }
            since = next_batch(&resp);
        }
    });
    // Scenario step, not a wait: give the request time to park on the server
    // so the upload below has to wake it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent_at = Instant::now();
    upload_device_keys(&bob, &device_of(&bob)).await;
    let (_, returned_at) = tokio::time::timeout(WAIT, task)
        .await
        .unwrap_or_else(|_| panic!("expected bob in alice's device_lists.changed within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("expected the sync task to finish: {e}"));
    let latency = returned_at.saturating_duration_since(sent_at);
    assert!(
        latency < Duration::from_secs(3),
        "expected the long-poll to wake well before its 10 s timeout, took {latency:?} after the upload"
    );
}

#[tokio::test]
async fn long_polling_sync_wakes_up_for_a_to_device_message() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let filter = no_presence();
    let since = bob.sync(None, 0, Some(&filter)).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let poller = bob.client.clone();
    let task = tokio::spawn(async move {
        let resp = poller.sync(Some(&since), 10_000, Some(&filter)).await;
        (resp, Instant::now())
    });
    // Scenario step, not a wait: give the request time to park on the server
    // so the send below has to wake it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent_at = Instant::now();
    send_to_device(
        &alice,
        "org.example.wake",
        &Client::txn_id(),
        json!({ &bob.user_id: { &bob.device_id: { "wake": "up" } } }),
    )
    .await;
    let (resp, returned_at) = task
        .await
        .unwrap_or_else(|e| panic!("expected the sync task to finish: {e}"));

    assert!(
        to_device_events(&resp)
            .iter()
            .any(|e| e["type"] == "org.example.wake"),
        "expected the long-poll to return the to-device message, got {resp}"
    );
    assert!(
        returned_at >= sent_at,
        "expected the long-poll to wait for the message, it returned early: {resp}"
    );
    let latency = returned_at - sent_at;
    assert!(
        latency < Duration::from_secs(3),
        "expected the long-poll to wake well before its 10 s timeout, took {latency:?} after the send"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Device lists
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn new_device_keys_of_a_room_member_show_in_sync_and_keys_changes() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let room = encrypted_room(&alice).await;
    bob.join_ok(&room).await;
    // Carol has a room of her own, shared with nobody.
    encrypted_room(&carol).await;
    let since = alice.sync_token().await;

    let bob_laptop = server.login(&bob.localpart, &bob.password).await;
    upload_device_keys(&bob_laptop, &device_of(&bob_laptop)).await;
    upload_device_keys(&carol, &device_of(&carol)).await;

    let seen = device_lists_until(&alice, &since, "bob is in `changed`", |s| {
        s.changed.contains(&bob.user_id)
    })
    .await;
    // Carol uploaded before the sync that showed bob returned, so her change would be in.
    assert!(
        !seen.changed.contains(&carol.user_id),
        "expected carol, who shares no room with alice, not to be in `changed`, got {seen:?}"
    );

    let changes = keys_changes(&alice, &since, &seen.next_batch).await;
    let changed = string_list(&changes["changed"]);
    assert!(
        changed.contains(&bob.user_id),
        "expected bob in /keys/changes, got {changes}"
    );
    assert!(
        !changed.contains(&carol.user_id),
        "expected carol not in /keys/changes, got {changes}"
    );
    let devices = queried_devices(&alice, &bob.user_id).await;
    assert!(
        devices.contains_key(&bob_laptop.device_id),
        "expected bob's new device in /keys/query, got {devices:?}"
    );
}

#[tokio::test]
async fn a_user_who_leaves_the_last_shared_room_appears_in_device_lists_left() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let first = encrypted_room(&alice).await;
    let second = encrypted_room(&alice).await;
    bob.join_ok(&first).await;
    bob.join_ok(&second).await;
    let since = alice.sync_token().await;

    // Leaving one of two shared rooms: still sharing one, so not `left`.
    bob.leave_ok(&first).await;
    let marker = alice
        .send_text(&first, "after bob left the first room")
        .await;
    let filter = no_presence();
    let mut left_seen = HashSet::new();
    let mut since = since;
    let deadline = Instant::now() + WAIT;
    loop {
        let sync = alice.sync(Some(&since), 500, Some(&filter)).await;
        left_seen.extend(string_list(&sync["device_lists"]["left"]));
        since = next_batch(&sync);
        if has_event_id(&room_timeline(&sync, &first), &marker) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected alice's message after bob left within {WAIT:?}"
        );
    }
    assert!(
        !left_seen.contains(&bob.user_id),
        "expected bob, still in a shared room, not in `left`, got {left_seen:?}"
    );

    bob.leave_ok(&second).await;
    device_lists_until(&alice, &since, "bob is in `left`", |s| {
        s.left.contains(&bob.user_id)
    })
    .await;
}

#[tokio::test]
async fn a_user_who_joins_a_shared_room_appears_in_device_lists_changed() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let carol = server.register_random().await;
    upload_device_keys(&carol, &device_of(&carol)).await;
    let room = encrypted_room(&alice).await;
    let since = alice.sync_token().await;

    carol.join_ok(&room).await;
    device_lists_until(&alice, &since, "carol is in `changed`", |s| {
        s.changed.contains(&carol.user_id)
    })
    .await;
}

#[tokio::test]
async fn a_deleted_device_leaves_keys_query_and_marks_its_user_changed() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = encrypted_room(&alice).await;
    bob.join_ok(&room).await;
    let bob_phone = server.login(&bob.localpart, &bob.password).await;
    upload_device_keys(&bob, &device_of(&bob)).await;
    let phone_device = device_of(&bob_phone);
    upload_ok(
        &bob_phone,
        &json!({
            "device_keys": phone_device.device_keys(),
            "one_time_keys": phone_device.one_time_keys(2),
            "fallback_keys": phone_device.fallback_keys(),
        }),
        "the phone's keys",
    )
    .await;
    let before = queried_devices(&alice, &bob.user_id).await;
    assert!(
        before.contains_key(&bob_phone.device_id),
        "expected bob's phone in /keys/query before deletion, got {before:?}"
    );
    let since = alice.sync_token().await;

    let deleted = with_password_uia(
        &bob,
        Method::DELETE,
        &format!("/devices/{}", enc(&bob_phone.device_id)),
        json!({}),
    )
    .await;
    expect_ok(deleted, "DELETE /devices/{id} with password auth");

    let after = queried_devices(&alice, &bob.user_id).await;
    assert!(
        !after.contains_key(&bob_phone.device_id) && after.contains_key(&bob.device_id),
        "expected only the deleted device gone from /keys/query, got {after:?}"
    );
    assert!(
        claim_one(&alice, &bob.user_id, &bob_phone.device_id)
            .await
            .is_none(),
        "expected no one-time or fallback key of a deleted device to be claimable"
    );
    let seen = device_lists_until(&alice, &since, "bob is in `changed`", |s| {
        s.changed.contains(&bob.user_id)
    })
    .await;
    let changes = keys_changes(&alice, &since, &seen.next_batch).await;
    assert!(
        string_list(&changes["changed"]).contains(&bob.user_id),
        "expected bob in /keys/changes after deleting a device, got {changes}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Cross-signing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn replacing_the_master_key_needs_uia_but_the_first_upload_does_not() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let first = CrossSigning::new(&alice.user_id);
    expect_ok(
        upload_cross_signing(&alice, &first.upload_body()).await,
        "a first cross-signing upload without auth",
    );
    expect_ok(
        upload_cross_signing(&alice, &first.upload_body()).await,
        "the same keys again without auth (a retried request)",
    );

    let second = CrossSigning::new(&alice.user_id);
    let (status, challenge) = upload_cross_signing(&alice, &second.upload_body()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "expected a new master key without auth to need UIA, got {status}: {challenge}"
    );
    assert_password_flow(&challenge, "replacing the master key");
    let unchanged = query(&alice, json!({ &alice.user_id: [] })).await;
    assert_eq!(
        unchanged["master_keys"][&alice.user_id]["keys"],
        first.master_key()["keys"],
        "expected the challenged upload to change nothing, got {unchanged}"
    );

    let session = challenge["session"].as_str().unwrap_or_default();
    let mut body = second.upload_body();
    body["auth"] = alice.password_auth(session);
    expect_ok(
        upload_cross_signing(&alice, &body).await,
        "replacing the master key with password auth",
    );
    let replaced = query(&alice, json!({ &alice.user_id: [] })).await;
    for (field, expected) in [
        ("master_keys", second.master_key()),
        ("self_signing_keys", second.self_signing_key()),
        ("user_signing_keys", second.user_signing_key()),
    ] {
        assert_eq!(
            replaced[field][&alice.user_id]["keys"], expected["keys"],
            "expected the new {field}, got {replaced}"
        );
    }
}

#[tokio::test]
async fn a_self_signing_key_without_any_master_key_is_a_missing_param() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let cross = CrossSigning::new(&alice.user_id);
    // cross_signing.yaml, 400: "`M_MISSING_PARAM`: No master signing key is available."
    expect_error(
        &with_uia_if_asked(
            &alice,
            "/keys/device_signing/upload",
            json!({ "self_signing_key": cross.self_signing_key() }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
        "a self-signing key with no master key uploaded or included",
    );
    let own = query(&alice, json!({ &alice.user_id: [] })).await;
    assert!(
        own["self_signing_keys"].get(&alice.user_id).is_none(),
        "expected the refused self-signing key not to be stored, got {own}"
    );
}

#[tokio::test]
async fn cross_signing_keys_not_signed_by_the_master_key_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let cross = CrossSigning::new(&alice.user_id);
    let stranger = Ed25519Key::for_cross_signing();

    expect_error(
        &with_uia_if_asked(
            &alice,
            "/keys/device_signing/upload",
            json!({
                "master_key": cross.master_key(),
                "self_signing_key": cross.self_signing_key_signed_by(&stranger),
            }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "a self-signing key signed by a key other than the master key",
    );
    // The master key's signature of the real user-signing key, on another key.
    let other = Ed25519Key::for_cross_signing();
    let swapped = json!({
        "user_id": alice.user_id,
        "usage": ["user_signing"],
        "keys": { other.key_id(): other.public_key() },
        "signatures": cross.user_signing_key()["signatures"],
    });
    expect_error(
        &with_uia_if_asked(
            &alice,
            "/keys/device_signing/upload",
            json!({ "master_key": cross.master_key(), "user_signing_key": swapped }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "a user-signing key carrying the master signature of another key",
    );
    let own = query(&alice, json!({ &alice.user_id: [] })).await;
    assert!(
        own["self_signing_keys"].get(&alice.user_id).is_none()
            && own["user_signing_keys"].get(&alice.user_id).is_none(),
        "expected no refused key to be stored, got {own}"
    );

    // With the master key already there, a self-signing key alone is checked against it.
    expect_ok(
        upload_cross_signing(&alice, &json!({ "master_key": cross.master_key() })).await,
        "the master key alone",
    );
    expect_error(
        &with_uia_if_asked(
            &alice,
            "/keys/device_signing/upload",
            json!({ "self_signing_key": cross.self_signing_key_signed_by(&stranger) }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "a self-signing key not signed by the stored master key",
    );
}

#[tokio::test]
async fn a_device_signature_by_the_self_signing_key_shows_in_keys_query() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    let cross = CrossSigning::new(&alice.user_id);
    expect_ok(
        upload_cross_signing(&alice, &cross.upload_body()).await,
        "cross-signing keys",
    );

    let resp = upload_signatures(
        &alice,
        &json!({ &alice.user_id: { &alice.device_id: cross.sign_device(&device.device_keys()) } }),
    )
    .await;
    assert!(no_failures(&resp), "expected no failures, got {resp}");

    for (who, viewer) in [("alice", &alice), ("bob", &bob)] {
        let devices = queried_devices(viewer, &alice.user_id).await;
        let got = &devices[&alice.device_id];
        assert!(
            verify_signature(
                got,
                &alice.user_id,
                cross.self_signing.key_id(),
                &cross.self_signing.public_key()
            ),
            "expected {who} to see the self-signing key's signature of the device, got {got}"
        );
        assert!(
            verify_signature(
                got,
                &alice.user_id,
                &device.key_id(),
                &device.ed25519.public_key()
            ),
            "expected {who} to still see the device's own signature, got {got}"
        );
    }
}

#[tokio::test]
async fn a_device_signature_of_the_own_master_key_is_visible_to_others() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    let cross = CrossSigning::new(&alice.user_id);
    expect_ok(
        upload_cross_signing(&alice, &cross.upload_body()).await,
        "cross-signing keys",
    );
    // Migrating a device verification: the device signs its user's master key.
    let resp = upload_signatures(
        &alice,
        &json!({ &alice.user_id: {
            master_public(&cross): device.ed25519.signed_copy(&alice.user_id, &cross.master_key()),
        } }),
    )
    .await;
    assert!(no_failures(&resp), "expected no failures, got {resp}");

    // "signatures made by other users' devices about their respective master signing keys"
    let seen = query(&bob, json!({ &alice.user_id: [] })).await;
    assert!(
        verify_signature(
            &seen["master_keys"][&alice.user_id],
            &alice.user_id,
            &device.key_id(),
            &device.ed25519.public_key()
        ),
        "expected bob to see the device's signature of alice's master key, got {seen}"
    );
}

#[tokio::test]
async fn a_bad_cross_signing_signature_is_reported_in_failures_and_not_stored() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = device_of(&alice);
    upload_device_keys(&alice, &device).await;
    let cross = CrossSigning::new(&alice.user_id);
    expect_ok(
        upload_cross_signing(&alice, &cross.upload_body()).await,
        "cross-signing keys",
    );

    // Claims to be the self-signing key's signature, made by another key.
    let mut forged = device.unsigned_device_keys();
    let forged_signature = Ed25519Key::for_cross_signing().signature(&forged);
    forged["signatures"] =
        json!({ &alice.user_id: { cross.self_signing.key_id(): forged_signature } });
    let resp = upload_signatures(
        &alice,
        &json!({ &alice.user_id: { &alice.device_id: forged } }),
    )
    .await;
    assert_eq!(
        resp["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "expected the forged signature reported as M_INVALID_SIGNATURE, got {resp}"
    );

    // A real signature, but of keys that are not the ones uploaded.
    let mut other_keys = device.unsigned_device_keys();
    other_keys["keys"][format!("curve25519:{}", alice.device_id)] = json!(random_curve25519());
    let resp = upload_signatures(
        &alice,
        &json!({ &alice.user_id: { &alice.device_id: cross.sign_device(&other_keys) } }),
    )
    .await;
    assert!(
        resp["failures"][&alice.user_id][&alice.device_id]["errcode"].is_string(),
        "expected a signature of different device keys to be a failure, got {resp}"
    );

    let devices = queried_devices(&alice, &alice.user_id).await;
    let got = &devices[&alice.device_id];
    assert!(
        got["signatures"][&alice.user_id]
            .get(cross.self_signing.key_id())
            .is_none(),
        "expected no failed signature stored, got {got}"
    );
    assert_eq!(
        got["keys"],
        device.device_keys()["keys"],
        "expected the device keys unchanged, got {got}"
    );
}

#[tokio::test]
async fn a_user_signing_signature_of_another_users_master_key_is_seen_by_the_signer_only() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let alice_cross = CrossSigning::new(&alice.user_id);
    let bob_cross = CrossSigning::new(&bob.user_id);
    expect_ok(
        upload_cross_signing(&alice, &alice_cross.upload_body()).await,
        "alice's cross-signing keys",
    );
    expect_ok(
        upload_cross_signing(&bob, &bob_cross.upload_body()).await,
        "bob's cross-signing keys",
    );

    let resp = upload_signatures(
        &alice,
        &json!({ &bob.user_id: {
            master_public(&bob_cross): alice_cross.sign_user(&bob_cross.master_key()),
        } }),
    )
    .await;
    assert!(no_failures(&resp), "expected no failures, got {resp}");

    let seen = query(&alice, json!({ &bob.user_id: [] })).await;
    assert!(
        verify_signature(
            &seen["master_keys"][&bob.user_id],
            &alice.user_id,
            alice_cross.user_signing.key_id(),
            &alice_cross.user_signing.public_key()
        ),
        "expected alice to see her user-signing signature on bob's master key, got {seen}"
    );
    for (who, viewer) in [("bob", &bob), ("carol", &carol)] {
        let seen = query(viewer, json!({ &bob.user_id: [] })).await;
        assert_eq!(
            seen["master_keys"][&bob.user_id]["keys"],
            bob_cross.master_key()["keys"],
            "expected {who} to see bob's master key, got {seen}"
        );
        assert!(
            seen["master_keys"][&bob.user_id]["signatures"]
                .get(&alice.user_id)
                .is_none(),
            "expected {who} not to see alice's user-signing signature, got {seen}"
        );
    }
}

#[tokio::test]
async fn a_cross_signing_key_equal_to_a_device_id_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    // A master key whose base64 is a plain alphanumeric device id.
    let master = std::iter::repeat_with(Ed25519Key::for_cross_signing)
        .find(|k| k.public_key().chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| unreachable!());
    let device_id = master.public_key();
    let login = expect_ok(
        server
            .client()
            .post(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": alice.localpart },
                    "password": alice.password,
                    "device_id": device_id,
                }),
            )
            .await,
        "a login with a chosen device id",
    );
    assert_eq!(login["device_id"], device_id, "{login}");

    let cross = CrossSigning {
        master,
        ..CrossSigning::new(&alice.user_id)
    };
    expect_error(
        &upload_cross_signing(&alice, &cross.upload_body()).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a master key whose public key is one of the user's device ids",
    );
    let own = query(&alice, json!({ &alice.user_id: [] })).await;
    assert!(
        own["master_keys"].get(&alice.user_id).is_none(),
        "expected the refused master key not to be stored, got {own}"
    );
}

#[tokio::test]
async fn a_new_device_cannot_take_the_id_of_a_cross_signing_key() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let master = std::iter::repeat_with(Ed25519Key::for_cross_signing)
        .find(|k| k.public_key().chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| unreachable!());
    let cross = CrossSigning {
        master,
        ..CrossSigning::new(&alice.user_id)
    };
    expect_ok(
        upload_cross_signing(&alice, &cross.upload_body()).await,
        "cross-signing keys",
    );
    // "Servers therefore must ensure that device IDs will not collide with cross-signing
    // public keys." The spec names no error, so a refused login and a login that gets
    // another device id both pass.
    let wanted = cross.master.public_key();
    let (status, login) = server
        .client()
        .post(
            "/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": alice.localpart },
                "password": alice.password,
                "device_id": wanted,
            }),
        )
        .await;
    assert!(
        status != StatusCode::OK || login["device_id"] != wanted.as_str(),
        "expected no device to get the master key's public key as its id, got {status}: {login}"
    );
    let devices = expect_ok(alice.get("/devices").await, "GET /devices");
    assert!(
        !devices["devices"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["device_id"] == wanted.as_str())),
        "expected no device with the master key's id, got {devices}"
    );
}

#[tokio::test]
async fn uploading_cross_signing_keys_marks_the_user_changed() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = encrypted_room(&alice).await;
    bob.join_ok(&room).await;
    let since = alice.sync_token().await;

    let cross = CrossSigning::new(&bob.user_id);
    expect_ok(
        upload_cross_signing(&bob, &cross.upload_body()).await,
        "bob's cross-signing keys",
    );
    device_lists_until(&alice, &since, "bob is in `changed`", |s| {
        s.changed.contains(&bob.user_id)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_e2ee_requests_get_an_errcode_and_the_server_keeps_answering() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let device = device_of(&alice);

    let raw = |path: &'static str, body: &'static str| {
        let alice = alice.client.clone();
        async move {
            let reply = alice
                .raw(
                    Method::POST,
                    path,
                    Some((body.as_bytes().to_vec(), "application/json")),
                )
                .await;
            (reply.status, reply.body)
        }
    };
    for path in [
        "/keys/upload",
        "/keys/query",
        "/keys/claim",
        "/keys/device_signing/upload",
        "/keys/signatures/upload",
    ] {
        expect_error(
            &raw(path, "{not json").await,
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            &format!("POST {path} with a body that is not JSON"),
        );
    }
    let reply = alice
        .raw(
            Method::PUT,
            &format!("/sendToDevice/m.test/{}", Client::txn_id()),
            Some((b"{not json".to_vec(), "application/json")),
        )
        .await;
    expect_error(
        &(reply.status, reply.body),
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
        "PUT /sendToDevice with a body that is not JSON",
    );

    let bad_shapes: Vec<(&str, Value, &str)> = vec![
        (
            "/keys/upload",
            json!({ "device_keys": "not an object" }),
            "device_keys as a string",
        ),
        (
            "/keys/upload",
            json!({ "one_time_keys": { "signed_curve25519:AAAA": 5 } }),
            "a one-time key that is a number",
        ),
        ("/keys/query", json!({}), "a query without device_keys"),
        (
            "/keys/query",
            json!({ "device_keys": { &bob.user_id: "all" } }),
            "a query with a string instead of a device list",
        ),
        ("/keys/claim", json!({}), "a claim without one_time_keys"),
        (
            "/keys/claim",
            json!({ "one_time_keys": { &bob.user_id: ["signed_curve25519"] } }),
            "a claim with a list instead of a device map",
        ),
        (
            "/keys/device_signing/upload",
            json!({ "master_key": { "user_id": alice.user_id, "usage": ["master"] } }),
            "a master key without keys",
        ),
        (
            "/keys/signatures/upload",
            json!([]),
            "a signature upload that is a list",
        ),
    ];
    for (path, body, what) in bad_shapes {
        expect_error_status(
            &alice.post(path, &body).await,
            StatusCode::BAD_REQUEST,
            &format!("POST {path}: {what}"),
        );
    }
    expect_error_status(
        &alice
            .put(
                &format!("/sendToDevice/m.test/{}", Client::txn_id()),
                &json!({}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "PUT /sendToDevice without messages",
    );
    expect_error_status(
        &alice
            .put(
                &format!("/sendToDevice/m.test/{}", Client::txn_id()),
                &json!({ "messages": { &bob.user_id: { &bob.device_id: "not an object" } } }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "PUT /sendToDevice with message content that is not an object",
    );
    let token = alice.sync_token().await;
    expect_error(
        &alice
            .get(&format!("/keys/changes?to={}", enc(&token)))
            .await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
        "GET /keys/changes without `from`",
    );

    // Nesting deep enough to overflow a naive recursive parser.
    let deep = format!(
        "{{\"device_keys\":{{\"{}\":{}{}}}}}",
        bob.user_id,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let reply = alice
        .raw(
            Method::POST,
            "/keys/query",
            Some((deep.into_bytes(), "application/json")),
        )
        .await;
    assert!(
        reply.status.is_client_error() && reply.body["errcode"].is_string(),
        "expected a 4xx with an errcode for deeply nested JSON, got {}: {}",
        reply.status,
        reply.text
    );

    let anonymous = server.client();
    let no_auth: Vec<(Method, String)> = vec![
        (Method::POST, "/keys/upload".into()),
        (Method::POST, "/keys/query".into()),
        (Method::POST, "/keys/claim".into()),
        (Method::GET, "/keys/changes?from=s0&to=s0".into()),
        (Method::POST, "/keys/device_signing/upload".into()),
        (Method::POST, "/keys/signatures/upload".into()),
        (
            Method::PUT,
            format!("/sendToDevice/m.test/{}", Client::txn_id()),
        ),
    ];
    for (method, path) in no_auth {
        let body = (method != Method::GET).then(|| json!({}));
        let resp = anonymous
            .try_json(method.clone(), &path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("expected an answer to {method} {path}: {e}"));
        expect_error(
            &resp,
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            &format!("{method} {path} without an access token"),
        );
    }

    // Still serving, and still storing keys correctly.
    expect_ok(alice.whoami().await, "whoami after the bad requests");
    upload_ok(
        &alice,
        &json!({ "device_keys": device.device_keys(), "one_time_keys": device.one_time_keys(1) }),
        "a valid upload after the bad requests",
    )
    .await;
    assert!(
        queried_devices(&bob, &alice.user_id)
            .await
            .contains_key(&alice.device_id),
        "expected the valid upload to be visible"
    );
}

// ---------------------------------------------------------------------------------------------
// Dehydrated devices (MSC3814)
// ---------------------------------------------------------------------------------------------

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

/// The PUT body for a dehydrated device `device` (keys signed by it) with opaque `data`.
fn dehydrated_body(device: &FakeDevice, data: &str) -> Value {
    json!({
        "device_id": device.device_id,
        "device_data": { "algorithm": "m.dehydration.v1.olm", "device_pickle": data },
        "initial_device_display_name": "dehydrated",
        "device_keys": device.device_keys(),
        "one_time_keys": device.one_time_keys(2),
        "fallback_keys": device.fallback_keys(),
    })
}

/// POST …/dehydrated_device/{id}/events expecting 200.
async fn dehydrated_events(user: &Client, device_id: &str, next_batch: Option<&str>) -> Value {
    let body = match next_batch {
        Some(t) => json!({ "next_batch": t }),
        None => json!({}),
    };
    expect_ok(
        user.post(&format!("{DEHYDRATED}/{}/events", enc(device_id)), &body)
            .await,
        "POST dehydrated_device events",
    )
}

#[tokio::test]
async fn a_dehydrated_device_has_keys_and_receives_to_device_messages_while_offline() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let dehydrated = FakeDevice::new(&alice.user_id, "DEHYDRATEDA");

    expect_error(
        &alice.get(DEHYDRATED).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET with no dehydrated device",
    );
    let put = expect_ok(
        alice
            .put(DEHYDRATED, &dehydrated_body(&dehydrated, "pickle-1"))
            .await,
        "PUT dehydrated_device",
    );
    assert_eq!(put["device_id"], "DEHYDRATEDA", "PUT answered {put}");
    let got = expect_ok(alice.get(DEHYDRATED).await, "GET dehydrated_device");
    assert_eq!(got["device_id"], "DEHYDRATEDA");
    assert_eq!(
        got["device_data"]["device_pickle"], "pickle-1",
        "GET answered {got}"
    );

    // Others see its keys and can claim its one-time keys, so they can encrypt to it.
    let q = query(&bob, json!({ &alice.user_id: [] })).await;
    assert!(
        q["device_keys"][&alice.user_id]["DEHYDRATEDA"]["keys"].is_object(),
        "expected the dehydrated device in /keys/query, got {q}"
    );
    let claim = expect_ok(
        bob.post(
            "/keys/claim",
            &json!({ "one_time_keys": { &alice.user_id: { "DEHYDRATEDA": SIGNED_CURVE25519 } } }),
        )
        .await,
        "claiming a dehydrated device's key",
    );
    assert!(
        claim["one_time_keys"][&alice.user_id]["DEHYDRATEDA"].is_object(),
        "expected a one-time key of the dehydrated device, got {claim}"
    );

    // A to-device message for it waits until the next batch token acknowledges it.
    let content = json!({ "room_key": "for the dehydrated device" });
    send_to_device(
        &bob,
        "m.room.encrypted",
        &Client::txn_id(),
        json!({ &alice.user_id: { "DEHYDRATEDA": content } }),
    )
    .await;
    let first = dehydrated_events(&alice, "DEHYDRATEDA", None).await;
    let events = first["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "expected one event, got {first}");
    assert_eq!(events[0]["sender"], bob.user_id.as_str());
    assert_eq!(events[0]["type"], "m.room.encrypted");
    assert_eq!(events[0]["content"], content);
    let again = dehydrated_events(&alice, "DEHYDRATEDA", None).await;
    assert_eq!(
        again["events"].as_array().map(Vec::len),
        Some(1),
        "without next_batch the message is handed out again, got {again}"
    );
    let token = first["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("expected next_batch, got {first}"));
    let after = dehydrated_events(&alice, "DEHYDRATEDA", Some(token)).await;
    assert_eq!(
        after["events"].as_array().map(Vec::len),
        Some(0),
        "next_batch acknowledges the batch, got {after}"
    );

    // Another user's (or a wrong) device id is not found.
    expect_error(
        &bob.post(&format!("{DEHYDRATED}/DEHYDRATEDA/events"), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "events of someone else's dehydrated device",
    );
}

#[tokio::test]
async fn a_new_dehydrated_device_replaces_the_old_one_and_delete_removes_it() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let first = FakeDevice::new(&alice.user_id, "DEHYD1");
    let second = FakeDevice::new(&alice.user_id, "DEHYD2");
    expect_ok(
        alice.put(DEHYDRATED, &dehydrated_body(&first, "one")).await,
        "first PUT",
    );
    expect_ok(
        alice
            .put(DEHYDRATED, &dehydrated_body(&second, "two"))
            .await,
        "second PUT",
    );
    let got = expect_ok(alice.get(DEHYDRATED).await, "GET");
    assert_eq!(got["device_id"], "DEHYD2", "GET answered {got}");
    let q = query(&alice, json!({ &alice.user_id: [] })).await;
    let mine = &q["device_keys"][&alice.user_id];
    assert!(
        mine["DEHYD1"].is_null(),
        "the replaced device's keys stay, got {q}"
    );
    assert!(
        mine["DEHYD2"].is_object(),
        "the new device's keys are missing, got {q}"
    );
    let devices = expect_ok(alice.get("/devices").await, "GET /devices");
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["device_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !ids.contains(&"DEHYD1"),
        "the replaced device is still listed: {devices}"
    );
    assert!(
        ids.contains(&"DEHYD2"),
        "the dehydrated device is not listed: {devices}"
    );

    let deleted = expect_ok(
        alice.delete(DEHYDRATED, &json!({})).await,
        "DELETE dehydrated_device",
    );
    assert_eq!(deleted["device_id"], "DEHYD2");
    expect_error(
        &alice.get(DEHYDRATED).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET after DELETE",
    );
    let q = query(&alice, json!({ &alice.user_id: [] })).await;
    assert!(
        q["device_keys"][&alice.user_id]["DEHYD2"].is_null(),
        "the deleted device's keys stay, got {q}"
    );
}

#[tokio::test]
async fn a_dehydrated_device_with_bad_keys_is_refused_and_leaves_nothing() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let device = FakeDevice::new(&alice.user_id, "DEHYDBAD");
    let mut body = dehydrated_body(&device, "x");
    body["device_keys"]["signatures"][&alice.user_id]["ed25519:DEHYDBAD"] =
        json!(Ed25519Key::for_device("OTHER").signature(&device.unsigned_device_keys()));
    expect_error(
        &alice.put(DEHYDRATED, &body).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_SIGNATURE",
        "PUT with a bad self-signature",
    );
    expect_error(
        &alice.get(DEHYDRATED).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET after a refused PUT",
    );
    let devices = expect_ok(alice.get("/devices").await, "GET /devices");
    assert!(
        !devices.to_string().contains("DEHYDBAD"),
        "the refused device was created: {devices}"
    );
    // A device id that is already a normal device is refused too.
    let mut clash = dehydrated_body(&FakeDevice::new(&alice.user_id, &alice.device_id), "y");
    clash["device_id"] = json!(alice.device_id);
    expect_error(
        &alice.put(DEHYDRATED, &clash).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "PUT with the id of an existing device",
    );
    expect_ok(
        alice.get("/account/whoami").await,
        "the caller's device still works",
    );
}
