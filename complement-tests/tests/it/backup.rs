//! Server-side key backups (`/room_keys/...`): versions, keys at the three levels, etags and
//! counts, the replacement rules, the wrong-version answer, privacy and durability.

use std::collections::HashSet;

use paracord_complement::{
    enc, expect_error, expect_ok, random_word, Method, StatusCode, TestServer, User,
};
use serde_json::{json, Value};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn auth_data(public_key: &str) -> Value {
    json!({
        "public_key": public_key,
        "signatures": { "@someone:example.org": { "ed25519:DEVICE": "sig" } },
    })
}

/// A `KeyBackupData`; `tag` goes into the ciphertext so tests can tell copies apart.
fn key(verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": verified,
        "session_data": { "ephemeral": "eph", "ciphertext": tag, "mac": "mac" },
    })
}

/// A valid room id; backups do not need the room to exist.
fn room_id() -> String {
    format!("!{}:example.org", random_word())
}

async fn create_backup(user: &User, public_key: &str) -> String {
    let body = expect_ok(
        user.post(
            "/room_keys/version",
            &json!({ "algorithm": ALGORITHM, "auth_data": auth_data(public_key) }),
        )
        .await,
        "POST /room_keys/version",
    );
    body["version"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string version, got {body}"))
        .to_owned()
}

fn session_path(room: &str, session: &str, version: &str) -> String {
    format!(
        "/room_keys/keys/{}/{}?version={}",
        enc(room),
        enc(session),
        enc(version)
    )
}

fn room_path(room: &str, version: &str) -> String {
    format!("/room_keys/keys/{}?version={}", enc(room), enc(version))
}

fn all_path(version: &str) -> String {
    format!("/room_keys/keys?version={}", enc(version))
}

/// PUTs one session key and returns `(etag, count)`.
async fn put_session(
    user: &User,
    room: &str,
    session: &str,
    version: &str,
    data: &Value,
) -> (String, u64) {
    let body = expect_ok(
        user.put(&session_path(room, session, version), data).await,
        "PUT /room_keys/keys/{roomId}/{sessionId}",
    );
    etag_count(&body)
}

fn etag_count(body: &Value) -> (String, u64) {
    let etag = body["etag"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string etag, got {body}"))
        .to_owned();
    let count = body["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer count, got {body}"));
    (etag, count)
}

async fn stored_ciphertext(user: &User, room: &str, session: &str, version: &str) -> String {
    let body = expect_ok(
        user.get(&session_path(room, session, version)).await,
        "GET /room_keys/keys/{roomId}/{sessionId}",
    );
    body["session_data"]["ciphertext"]
        .as_str()
        .unwrap_or_else(|| panic!("expected session_data.ciphertext, got {body}"))
        .to_owned()
}

#[tokio::test]
async fn backup_versions_are_created_read_updated_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;

    expect_error(
        &alice.get("/room_keys/version").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "the current backup before any exists",
    );

    let v1 = create_backup(&alice, "key-one").await;
    assert_eq!(v1, "1", "expected the first backup to be version 1");
    let current = expect_ok(alice.get("/room_keys/version").await, "GET current backup");
    assert_eq!(current["version"], "1", "current backup: {current}");
    assert_eq!(current["algorithm"], ALGORITHM, "current backup: {current}");
    assert_eq!(
        current["auth_data"],
        auth_data("key-one"),
        "current backup: {current}"
    );
    assert_eq!(current["count"], 0, "current backup: {current}");
    assert!(current["etag"].is_string(), "current backup: {current}");
    let by_id = expect_ok(alice.get("/room_keys/version/1").await, "GET version 1");
    assert_eq!(
        by_id, current,
        "GET /room_keys/version/1 answers like the current one"
    );

    // Update: auth_data changes, the algorithm may not; a body version must match the path.
    expect_ok(
        alice
            .put(
                "/room_keys/version/1",
                &json!({ "algorithm": ALGORITHM, "auth_data": auth_data("key-one-b") }),
            )
            .await,
        "PUT /room_keys/version/1",
    );
    expect_ok(
        alice
            .put(
                "/room_keys/version/1",
                &json!({
                    "algorithm": ALGORITHM,
                    "auth_data": auth_data("key-one-c"),
                    "version": "1",
                }),
            )
            .await,
        "PUT /room_keys/version/1 with a matching version in the body",
    );
    let updated = expect_ok(alice.get("/room_keys/version/1").await, "GET version 1");
    assert_eq!(updated["auth_data"], auth_data("key-one-c"), "{updated}");
    expect_error(
        &alice
            .put(
                "/room_keys/version/1",
                &json!({ "algorithm": "org.example.other", "auth_data": {} }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "an update that changes the algorithm",
    );
    expect_error(
        &alice
            .put(
                "/room_keys/version/1",
                &json!({ "algorithm": ALGORITHM, "auth_data": auth_data("x"), "version": "2" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "an update whose body names another version",
    );
    expect_error(
        &alice
            .put(
                "/room_keys/version/9",
                &json!({ "algorithm": ALGORITHM, "auth_data": auth_data("x") }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an update of a version that does not exist",
    );
    let still = expect_ok(alice.get("/room_keys/version/1").await, "GET version 1");
    assert_eq!(
        still["auth_data"],
        auth_data("key-one-c"),
        "refused updates change nothing: {still}"
    );

    // A second backup becomes current; deleting it makes the first current again.
    let v2 = create_backup(&alice, "key-two").await;
    assert_eq!(v2, "2", "expected versions to count up");
    let current = expect_ok(alice.get("/room_keys/version").await, "GET current backup");
    assert_eq!(current["version"], "2", "{current}");
    expect_ok(
        alice.delete("/room_keys/version/2", &json!({})).await,
        "DELETE /room_keys/version/2",
    );
    expect_ok(
        alice.delete("/room_keys/version/2", &json!({})).await,
        "DELETE of an already deleted version",
    );
    expect_error(
        &alice.get("/room_keys/version/2").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET of a deleted version",
    );
    let current = expect_ok(alice.get("/room_keys/version").await, "GET current backup");
    assert_eq!(
        current["version"], "1",
        "the newest live backup is current after a delete: {current}"
    );
    assert_eq!(
        create_backup(&alice, "key-three").await,
        "3",
        "a deleted version number is not reused"
    );

    for missing in ["9", "abc", "01", "0"] {
        let path = format!("/room_keys/version/{missing}");
        expect_error(
            &alice.get(&path).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("GET {path}"),
        );
        expect_error(
            &alice.delete(&path, &json!({})).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("DELETE {path}"),
        );
    }

    expect_ok(
        alice.delete("/room_keys/version/1", &json!({})).await,
        "DELETE version 1",
    );
    expect_ok(
        alice.delete("/room_keys/version/3", &json!({})).await,
        "DELETE version 3",
    );
    expect_error(
        &alice.get("/room_keys/version").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "the current backup after every one was deleted",
    );
}

#[tokio::test]
async fn keys_are_stored_read_and_deleted_at_every_level() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let v = create_backup(&alice, "pk").await;
    let (room_a, room_b, room_c) = (room_id(), room_id(), room_id());

    // Session level.
    let (_, count) = put_session(&alice, &room_a, "sa1", &v, &key(false, 0, 0, "a1")).await;
    assert_eq!(count, 1);
    // Room level.
    let body = expect_ok(
        alice
            .put(
                &room_path(&room_a, &v),
                &json!({ "sessions": { "sa2": key(false, 0, 0, "a2"), "sa3": key(true, 3, 1, "a3") } }),
            )
            .await,
        "PUT /room_keys/keys/{roomId}",
    );
    assert_eq!(etag_count(&body).1, 3, "{body}");
    // All rooms.
    let body = expect_ok(
        alice
            .put(
                &all_path(&v),
                &json!({ "rooms": {
                    room_b.clone(): { "sessions": { "sb1": key(false, 0, 0, "b1") } },
                    room_c.clone(): { "sessions": {
                        "sc1": key(false, 0, 0, "c1"),
                        "sc2": key(false, 0, 0, "c2"),
                    } },
                } }),
            )
            .await,
        "PUT /room_keys/keys",
    );
    assert_eq!(etag_count(&body).1, 6, "{body}");

    let one = expect_ok(
        alice.get(&session_path(&room_a, "sa3", &v)).await,
        "GET one session",
    );
    assert_eq!(
        one,
        key(true, 3, 1, "a3"),
        "the stored key comes back as sent"
    );
    let room = expect_ok(alice.get(&room_path(&room_a, &v)).await, "GET one room");
    let sessions: HashSet<&str> = room["sessions"]
        .as_object()
        .unwrap_or_else(|| panic!("expected sessions, got {room}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sessions, HashSet::from(["sa1", "sa2", "sa3"]), "{room}");
    let all = expect_ok(alice.get(&all_path(&v)).await, "GET all keys");
    let rooms = all["rooms"]
        .as_object()
        .unwrap_or_else(|| panic!("expected rooms, got {all}"));
    assert_eq!(rooms.len(), 3, "{all}");
    assert_eq!(
        all["rooms"][&room_c]["sessions"]["sc2"],
        key(false, 0, 0, "c2")
    );
    let info = expect_ok(
        alice.get(&format!("/room_keys/version/{v}")).await,
        "GET version",
    );
    assert_eq!(info["count"], 6, "{info}");

    // Missing things: a session is 404, a room without keys is an empty map (spec).
    expect_error(
        &alice.get(&session_path(&room_a, "nope", &v)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET of a session that was never backed up",
    );
    let empty = expect_ok(
        alice.get(&room_path(&room_id(), &v)).await,
        "GET of a room without keys",
    );
    assert_eq!(empty, json!({ "sessions": {} }));

    // Deleting at the three levels.
    let body = expect_ok(
        alice
            .delete(&session_path(&room_a, "sa1", &v), &json!({}))
            .await,
        "DELETE one session",
    );
    assert_eq!(etag_count(&body).1, 5, "{body}");
    expect_error(
        &alice.get(&session_path(&room_a, "sa1", &v)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET of a deleted session",
    );
    let body = expect_ok(
        alice.delete(&room_path(&room_a, &v), &json!({})).await,
        "DELETE one room",
    );
    assert_eq!(etag_count(&body).1, 3, "{body}");
    let gone = expect_ok(alice.get(&room_path(&room_a, &v)).await, "GET deleted room");
    assert_eq!(gone, json!({ "sessions": {} }));
    let left = expect_ok(alice.get(&all_path(&v)).await, "GET all keys");
    assert_eq!(
        left["rooms"].as_object().map(|r| r.len()),
        Some(2),
        "the other rooms keep their keys: {left}"
    );
    let body = expect_ok(
        alice.delete(&all_path(&v), &json!({})).await,
        "DELETE all keys",
    );
    assert_eq!(etag_count(&body).1, 0, "{body}");
    let none = expect_ok(alice.get(&all_path(&v)).await, "GET all keys when empty");
    assert_eq!(none, json!({ "rooms": {} }));

    // Deleting the version deletes its keys: reads of it are now 404.
    put_session(&alice, &room_b, "again", &v, &key(false, 0, 0, "x")).await;
    expect_ok(
        alice
            .delete(&format!("/room_keys/version/{v}"), &json!({}))
            .await,
        "DELETE the version",
    );
    for path in [
        all_path(&v),
        room_path(&room_b, &v),
        session_path(&room_b, "again", &v),
    ] {
        expect_error(
            &alice.get(&path).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("GET {path} of a deleted version"),
        );
        expect_error(
            &alice.delete(&path, &json!({})).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("DELETE {path} of a deleted version"),
        );
    }
}

#[tokio::test]
async fn etag_and_count_change_only_when_the_keys_change() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let v = create_backup(&alice, "pk").await;
    let room = room_id();
    let version_info = |alice: &User, v: String| {
        let client = alice.client.clone();
        async move {
            let info = expect_ok(
                client.get(&format!("/room_keys/version/{v}")).await,
                "GET version",
            );
            etag_count(&info)
        }
    };
    let (etag0, count0) = version_info(&alice, v.clone()).await;
    assert_eq!(count0, 0);

    let (etag1, count1) = put_session(&alice, &room, "s", &v, &key(false, 4, 2, "first")).await;
    assert_eq!(count1, 1);
    assert_ne!(etag1, etag0, "storing a key changes the etag");
    assert_eq!(version_info(&alice, v.clone()).await, (etag1.clone(), 1));

    // The same key again, and a worse one: nothing stored changes, nor does the etag.
    let same = put_session(&alice, &room, "s", &v, &key(false, 4, 2, "first")).await;
    assert_eq!(same, (etag1.clone(), 1), "re-uploading the same key");
    let worse = put_session(&alice, &room, "s", &v, &key(false, 5, 0, "worse")).await;
    assert_eq!(worse, (etag1.clone(), 1), "uploading a worse key");
    let nothing = expect_ok(
        alice
            .delete(&session_path(&room, "other", &v), &json!({}))
            .await,
        "DELETE a session that is not there",
    );
    assert_eq!(etag_count(&nothing), (etag1.clone(), 1));
    assert_eq!(version_info(&alice, v.clone()).await, (etag1.clone(), 1));

    // A better key replaces it: new etag, same count.
    let (etag2, count2) = put_session(&alice, &room, "s", &v, &key(false, 4, 1, "better")).await;
    assert_eq!(count2, 1, "replacing a key does not add one");
    assert_ne!(etag2, etag1, "replacing a key changes the etag");

    // A second session counts.
    let (etag3, count3) = put_session(&alice, &room, "t", &v, &key(false, 0, 0, "t")).await;
    assert_eq!(count3, 2);
    assert_ne!(etag3, etag2);

    let deleted = expect_ok(
        alice
            .delete(&session_path(&room, "s", &v), &json!({}))
            .await,
        "DELETE a stored session",
    );
    let (etag4, count4) = etag_count(&deleted);
    assert_eq!(count4, 1);
    assert_ne!(etag4, etag3, "deleting a key changes the etag");
    assert_eq!(version_info(&alice, v.clone()).await, (etag4, 1));

    // Concurrent uploads lose no update: every one gets its own etag and all are counted.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = alice.client.clone();
        let path = session_path(&room, &format!("c{i}"), &v);
        tasks.push(tokio::spawn(async move {
            let body = expect_ok(
                client.put(&path, &key(false, 0, 0, "c")).await,
                "concurrent PUT",
            );
            body["etag"].as_str().unwrap_or_default().to_owned()
        }));
    }
    let mut etags = HashSet::new();
    for t in tasks {
        etags.insert(
            t.await
                .unwrap_or_else(|e| panic!("upload task failed: {e}")),
        );
    }
    assert_eq!(
        etags.len(),
        16,
        "each concurrent change has its own etag: {etags:?}"
    );
    let (_, count) = version_info(&alice, v.clone()).await;
    assert_eq!(count, 17, "every concurrent upload is counted");
}

#[tokio::test]
async fn an_existing_key_is_replaced_only_by_a_better_one() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let v = create_backup(&alice, "pk").await;
    let room = room_id();

    // (upload, expected stored ciphertext afterwards)
    let steps: &[(Value, &str, &str)] = &[
        (
            key(false, 10, 5, "start"),
            "start",
            "the first upload is stored",
        ),
        (
            key(false, 11, 0, "higher-index"),
            "start",
            "a higher first_message_index loses",
        ),
        (
            key(false, 10, 6, "more-forwards"),
            "start",
            "more forwards lose",
        ),
        (
            key(false, 10, 5, "tie"),
            "start",
            "a tie keeps the existing key",
        ),
        (
            key(false, 10, 4, "fewer-forwards"),
            "fewer-forwards",
            "fewer forwards win",
        ),
        (
            key(false, 9, 9, "lower-index"),
            "lower-index",
            "a lower first_message_index wins",
        ),
        (
            key(true, 50, 50, "verified"),
            "verified",
            "a verified key beats an unverified one",
        ),
        (
            key(false, 0, 0, "unverified"),
            "verified",
            "an unverified key never beats a verified one",
        ),
        (
            key(true, 49, 60, "verified-lower"),
            "verified-lower",
            "among verified keys the lower index wins",
        ),
    ];
    for (upload, expected, what) in steps {
        put_session(&alice, &room, "s", &v, upload).await;
        assert_eq!(
            stored_ciphertext(&alice, &room, "s", &v).await,
            *expected,
            "{what}"
        );
    }

    // The rules apply the same way to room-level and bulk uploads.
    expect_ok(
        alice
            .put(
                &room_path(&room, &v),
                &json!({ "sessions": { "s": key(true, 48, 99, "room-level") } }),
            )
            .await,
        "PUT room keys",
    );
    assert_eq!(
        stored_ciphertext(&alice, &room, "s", &v).await,
        "room-level"
    );
    expect_ok(
        alice
            .put(
                &all_path(&v),
                &json!({ "rooms": { room.clone(): { "sessions": { "s": key(false, 0, 0, "bulk") } } } }),
            )
            .await,
        "PUT all keys",
    );
    assert_eq!(
        stored_ciphertext(&alice, &room, "s", &v).await,
        "room-level",
        "an unverified bulk upload does not replace a verified key"
    );
}

#[tokio::test]
async fn writes_to_a_version_that_is_not_current_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = room_id();
    let v1 = create_backup(&alice, "one").await;
    put_session(&alice, &room, "old", &v1, &key(false, 0, 0, "old")).await;
    let v2 = create_backup(&alice, "two").await;

    let k = key(false, 0, 0, "x");
    let attempts = [
        (session_path(&room, "s", &v1), k.clone()),
        (
            room_path(&room, &v1),
            json!({ "sessions": { "s": k.clone() } }),
        ),
        (
            all_path(&v1),
            json!({ "rooms": { room.clone(): { "sessions": { "s": k.clone() } } } }),
        ),
    ];
    for (path, body) in &attempts {
        let resp = alice.put(path, body).await;
        expect_error(
            &resp,
            StatusCode::FORBIDDEN,
            "M_WRONG_ROOM_KEYS_VERSION",
            &format!("PUT {path} to an old backup"),
        );
        assert_eq!(
            resp.1["current_version"], v2,
            "the 403 names the current version: {}",
            resp.1
        );
    }
    // Reading an older backup is still allowed, and the refused writes left it alone.
    let old = expect_ok(
        alice.get(&all_path(&v1)).await,
        "GET keys of the old backup",
    );
    assert_eq!(
        old["rooms"][&room]["sessions"].as_object().map(|s| s.len()),
        Some(1),
        "{old}"
    );

    for version in ["99", "abc"] {
        expect_error(
            &alice.put(&session_path(&room, "s", version), &k).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("PUT keys to version {version:?} that does not exist"),
        );
    }

    // Once the newer backup is deleted, the older one is current and writable again, and
    // the deleted one is simply gone.
    expect_ok(
        alice
            .delete(&format!("/room_keys/version/{v2}"), &json!({}))
            .await,
        "DELETE the newer backup",
    );
    let (_, count) = put_session(&alice, &room, "s", &v1, &k).await;
    assert_eq!(count, 2);
    expect_error(
        &alice.put(&session_path(&room, "s", &v2), &k).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "PUT keys to a deleted backup",
    );
}

#[tokio::test]
async fn a_backup_is_private_to_its_owner() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = room_id();
    let v = create_backup(&alice, "alice-key").await;
    put_session(
        &alice,
        &room,
        "secret",
        &v,
        &key(true, 0, 0, "alice-secret"),
    )
    .await;

    expect_error(
        &bob.get("/room_keys/version").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "bob's current backup while only alice has one",
    );
    for path in [
        format!("/room_keys/version/{v}"),
        all_path(&v),
        room_path(&room, &v),
        session_path(&room, "secret", &v),
    ] {
        expect_error(
            &bob.get(&path).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("bob's GET {path} of alice's backup"),
        );
    }
    expect_error(
        &bob.delete(&format!("/room_keys/version/{v}"), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "bob deleting alice's backup",
    );

    // Bob's own backup has his own numbering and contents.
    let bv = create_backup(&bob, "bob-key").await;
    assert_eq!(bv, v, "version numbers are per user");
    let bobs = expect_ok(bob.get("/room_keys/version").await, "bob's current backup");
    assert_eq!(bobs["auth_data"], auth_data("bob-key"), "{bobs}");
    assert_eq!(bobs["count"], 0, "{bobs}");
    let none = expect_ok(bob.get(&all_path(&bv)).await, "bob's keys");
    assert_eq!(none, json!({ "rooms": {} }));
    expect_ok(
        bob.delete(&all_path(&bv), &json!({})).await,
        "bob deletes his keys",
    );
    expect_ok(
        bob.delete(&format!("/room_keys/version/{bv}"), &json!({}))
            .await,
        "bob deletes his backup",
    );

    assert_eq!(
        stored_ciphertext(&alice, &room, "secret", &v).await,
        "alice-secret",
        "alice's key is untouched by bob"
    );
    let info = expect_ok(alice.get("/room_keys/version").await, "alice's backup");
    assert_eq!(info["auth_data"], auth_data("alice-key"), "{info}");
}

#[tokio::test]
async fn bad_backup_requests_get_matrix_errors() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let v = create_backup(&alice, "pk").await;
    let room = room_id();

    expect_error(
        &server.client().get("/room_keys/version").await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "GET /room_keys/version without a token",
    );
    for path in [
        "/room_keys/keys".to_owned(),
        format!("/room_keys/keys/{}", enc(&room)),
        format!("/room_keys/keys/{}/s", enc(&room)),
    ] {
        expect_error(
            &alice.get(&path).await,
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
            &format!("GET {path} without ?version="),
        );
    }
    expect_error(
        &alice
            .put(
                &format!("/room_keys/keys/{}/s", enc(&room)),
                &key(false, 0, 0, "x"),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
        "PUT a key without ?version=",
    );

    let reply = alice
        .raw(
            Method::PUT,
            &session_path(&room, "s", &v),
            Some((b"{\"first_message_index\": ".to_vec(), "application/json")),
        )
        .await;
    expect_error(
        &(reply.status, reply.body),
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
        "a truncated JSON key",
    );
    let reply = alice
        .raw(
            Method::POST,
            "/room_keys/version",
            Some((b"not json".to_vec(), "application/json")),
        )
        .await;
    expect_error(
        &(reply.status, reply.body),
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
        "POST /room_keys/version with a body that is not JSON",
    );

    let wrong_shapes = [
        json!({ "first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "x" }),
        json!({ "first_message_index": 0, "is_verified": false, "session_data": {} }),
        json!([1, 2, 3]),
    ];
    for bad in &wrong_shapes {
        expect_error(
            &alice.put(&session_path(&room, "s", &v), bad).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            &format!("PUT key data {bad}"),
        );
    }
    // One bad key in a bulk upload rejects the whole upload.
    expect_error(
        &alice
            .put(
                &room_path(&room, &v),
                &json!({ "sessions": { "good": key(false, 0, 0, "g"), "bad": wrong_shapes[0] } }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "a room upload with one malformed key",
    );
    let info = expect_ok(
        alice.get(&format!("/room_keys/version/{v}")).await,
        "GET version",
    );
    assert_eq!(info["count"], 0, "refused uploads store nothing: {info}");

    for bad in [
        json!({ "auth_data": auth_data("pk") }),
        json!({ "algorithm": ALGORITHM }),
        json!({ "algorithm": ALGORITHM, "auth_data": "not an object" }),
        json!({ "algorithm": ALGORITHM, "auth_data": { "signatures": {} } }),
    ] {
        expect_error(
            &alice.post("/room_keys/version", &bad).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            &format!("POST /room_keys/version {bad}"),
        );
    }

    expect_error(
        &alice
            .get(&format!("/room_keys/keys/not-a-room?version={v}"))
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "a room id that is not one",
    );

    // A body above the request limit (1 MiB by default).
    let mut sessions = serde_json::Map::new();
    for i in 0..4_000 {
        sessions.insert(format!("s{i:05}"), key(false, 0, 0, &"z".repeat(400)));
    }
    let huge = json!({ "sessions": sessions }).to_string().into_bytes();
    assert!(huge.len() > 1024 * 1024);
    // On alice's own (pooled) connection: the server answers before reading the whole body,
    // so it must close the connection and say so, or the next request on it would fail.
    let reply = alice
        .raw(
            Method::PUT,
            &room_path(&room, &v),
            Some((huge, "application/json")),
        )
        .await;
    assert_eq!(
        reply
            .headers
            .get("connection")
            .and_then(|h| h.to_str().ok()),
        Some("close"),
        "a 413 must close the connection, got headers {:?}",
        reply.headers
    );
    expect_error(
        &(reply.status, reply.body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
        "a key upload above the request size limit",
    );

    // The server is fine afterwards.
    let (_, count) = put_session(&alice, &room, "s", &v, &key(false, 0, 0, "ok")).await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_backup_survives_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = room_id();
    let v = create_backup(&alice, "durable").await;
    put_session(&alice, &room, "s1", &v, &key(true, 1, 0, "one")).await;
    let (etag, count) = put_session(&alice, &room, "s2", &v, &key(false, 2, 1, "two")).await;
    let before = expect_ok(
        alice.get(&all_path(&v)).await,
        "GET keys before the restart",
    );

    server.restart().await;

    let info = expect_ok(
        alice.get("/room_keys/version").await,
        "GET current after restart",
    );
    assert_eq!(info["version"], v.as_str(), "{info}");
    assert_eq!(info["auth_data"], auth_data("durable"), "{info}");
    assert_eq!(
        etag_count(&info),
        (etag, count),
        "etag and count survive: {info}"
    );
    let after = expect_ok(alice.get(&all_path(&v)).await, "GET keys after the restart");
    assert_eq!(after, before, "the keys survive the restart");
    assert_eq!(
        create_backup(&alice, "next").await,
        "2",
        "version numbering continues after a restart"
    );
}
