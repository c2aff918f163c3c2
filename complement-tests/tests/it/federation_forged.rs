//! Forged federation input. A holds a room that Bob of B has joined; the test then speaks as B
//! (with B's own signing key, read from its data directory) and sends A transactions holding
//! PDUs that must not get in: a bad signature, a sender of another server, an event its sender
//! has no power for, an event above the size limit, and one whose content hash does not match
//! (kept, but redacted). Each is refused in the transaction's per-PDU answer while a good PDU
//! in the same transaction is accepted: one bad PDU never fails its transaction. A replayed
//! transaction gets the same answer and adds nothing; a request signed with a key B does not
//! have is refused as a whole (401). Throughout, A's room state and timeline stay as they were.
//!
//! Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu

use std::collections::BTreeSet;

use paracord_complement::{
    e2ee::{b64, Ed25519Key},
    enc,
    federation::{
        federating_server, federating_server_with, server_signing_key, x_matrix_with_content,
        SplittableServer,
    },
    Env, TestServer, User,
};
use ruma::{
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash, sign_event, Ed25519KeyPair},
    RoomVersionId,
};
use serde_json::{json, Value};

use crate::forging::{canonical, now_ms, server_key_pair};
use sha2::{Digest, Sha256};

/// The test speaking as B to A, about one room.
struct AsB {
    a_url: String,
    a_name: String,
    b_name: String,
    /// B's key, for PDUs (ruma) and for `X-Matrix` (the harness).
    pdu_key: Ed25519KeyPair,
    request_key: Ed25519Key,
    rules: RoomVersionRules,
    room: String,
    /// Where forged events attach: A's newest event and its depth.
    prev: String,
    depth: u64,
    /// The auth events of a message or power-levels change of Bob's: power levels, Bob's
    /// membership (the create event is the room id from v12 on).
    auth_events: Vec<String>,
}

impl AsB {
    fn template(&self, sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Value {
        let mut event = json!({
            "room_id": self.room,
            "sender": sender,
            "type": kind,
            "content": content,
            "origin_server_ts": now_ms(),
            "depth": self.depth + 1,
            "prev_events": [self.prev],
            "auth_events": self.auth_events,
        });
        if let Some(k) = state_key {
            event["state_key"] = json!(k);
        }
        event
    }

    fn event_id(&self, pdu: &Value) -> String {
        let hash = reference_hash(&canonical(pdu.clone()), &self.rules)
            .unwrap_or_else(|e| panic!("expected a reference hash of {pdu}: {e}"));
        format!("${hash}")
    }

    /// Hashed and signed by B: `(event id, PDU)`.
    fn signed(&self, event: Value) -> (String, Value) {
        self.signed_with(event, &self.pdu_key)
    }

    fn signed_with(&self, event: Value, key: &Ed25519KeyPair) -> (String, Value) {
        let mut obj = canonical(event);
        hash_and_sign_event(&self.b_name, key, &mut obj, &self.rules.redaction)
            .unwrap_or_else(|e| panic!("expected to hash and sign the event: {e}"));
        let pdu = serde_json::to_value(&obj).unwrap_or_else(|e| panic!("{e}"));
        (self.event_id(&pdu), pdu)
    }

    /// Like [`AsB::signed`] for an event too large for ruma's content hash (it refuses events
    /// above the size limit): the SHA-256 of the canonical JSON without `hashes`, `signatures`
    /// and `unsigned`, then the signature over the redacted event.
    fn signed_oversized(&self, event: Value) -> (String, Value) {
        let mut obj = canonical(event);
        let text = serde_json::to_string(&obj).unwrap_or_else(|e| panic!("{e}"));
        let hash = b64(&Sha256::digest(text.as_bytes()));
        obj.insert(
            "hashes".to_owned(),
            serde_json::from_value(json!({ "sha256": hash })).unwrap_or_else(|e| panic!("{e}")),
        );
        // The signature covers the redacted event only, which is small.
        sign_event(&self.b_name, &self.pdu_key, &mut obj, &self.rules.redaction)
            .unwrap_or_else(|e| panic!("expected to sign the redacted event: {e}"));
        let pdu = serde_json::to_value(&obj).unwrap_or_else(|e| panic!("{e}"));
        (self.event_id(&pdu), pdu)
    }

    fn transaction(&self, pdus: &[Value]) -> Value {
        json!({
            "origin": self.b_name,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": [],
        })
    }

    /// `PUT /send/{txn}` with `body`, authorized by `auth` (given the URI and body).
    async fn put_send_with(
        &self,
        txn: &str,
        body: &Value,
        auth: impl FnOnce(&str, &Value) -> String,
    ) -> (u16, Value) {
        let uri = format!("/_matrix/federation/v1/send/{}", enc(txn));
        let resp = reqwest::Client::new()
            .put(format!("{}{uri}", self.a_url))
            .header("Authorization", auth(&uri, body))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("expected an answer to PUT {uri}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `PUT /send/{txn}` signed by B.
    async fn put_send(&self, txn: &str, body: &Value) -> (u16, Value) {
        self.put_send_with(txn, body, |uri, body| {
            x_matrix_with_content(
                &self.request_key,
                &self.b_name,
                &self.a_name,
                "PUT",
                uri,
                Some(body),
            )
        })
        .await
    }

    async fn get(&self, uri: &str) -> Value {
        let auth = x_matrix_with_content(
            &self.request_key,
            &self.b_name,
            &self.a_name,
            "GET",
            uri,
            None,
        );
        let resp = reqwest::Client::new()
            .get(format!("{}{uri}", self.a_url))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap_or_else(|e| panic!("expected an answer to GET {uri}: {e}"));
        assert_eq!(resp.status(), 200, "GET {uri} signed as B");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("expected JSON from GET {uri}: {e}"))
    }
}

type StateSet = BTreeSet<(String, String, String)>;

async fn state_set(user: &User, room: &str) -> StateSet {
    user.full_state(room)
        .await
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("state_key"), s("event_id"))
        })
        .collect()
}

async fn timeline_ids(user: &User, room: &str) -> Vec<String> {
    user.all_messages(room)
        .await
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

fn state_event_id(state: &StateSet, kind: &str, state_key: &str) -> String {
    state
        .iter()
        .find(|(t, k, _)| t == kind && k == state_key)
        .map(|(_, _, id)| id.clone())
        .unwrap_or_else(|| panic!("expected {kind}/{state_key} in the state {state:?}"))
}

/// A on one side, B (whose user Bob joined A's room) on the other, and the test able to speak
/// as B about that room.
async fn setup() -> (TestServer, TestServer, User, User, AsB) {
    setup_with(|_| {}).await
}

/// [`setup`] with A's environment adjusted by `configure`.
async fn setup_with(configure: impl FnOnce(&mut Env)) -> (TestServer, TestServer, User, User, AsB) {
    let (a, a_name) = federating_server_with(configure).await;
    let (b, b_name) = federating_server().await;
    let (alice, bob, as_b) = setup_between(&a, a_name, &b, b_name).await;
    (a, b, alice, bob, as_b)
}

/// [`setup`] between two given servers.
async fn setup_between(
    a: &TestServer,
    a_name: String,
    b: &TestServer,
    b_name: String,
) -> (User, User, AsB) {
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins through A: {body}");
    let prev = alice.send_text(&room, "the last honest event").await;
    let state = state_set(&alice, &room).await;
    let create = alice.state_content(&room, "m.room.create", "").await;
    let version = create["room_version"].as_str().unwrap_or("1").to_owned();
    let rules = RoomVersionId::try_from(version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .unwrap_or_else(|| panic!("expected rules for room version {version}"));
    let mut as_b = AsB {
        a_url: a.base_url(),
        a_name,
        b_name,
        pdu_key: server_key_pair(b),
        request_key: server_signing_key(b),
        rules,
        room: room.clone(),
        prev: prev.clone(),
        depth: 0,
        auth_events: vec![
            state_event_id(&state, "m.room.power_levels", ""),
            state_event_id(&state, "m.room.member", &bob.user_id),
        ],
    };
    if !as_b.rules.authorization.room_create_event_id_as_room_id {
        as_b.auth_events
            .push(state_event_id(&state, "m.room.create", ""));
    }
    let got = as_b
        .get(&format!("/_matrix/federation/v1/event/{}", enc(&prev)))
        .await;
    as_b.depth = got["pdus"][0]["depth"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected the depth of {prev}: {got}"));
    (alice, bob, as_b)
}

fn message(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

#[tokio::test]
async fn bad_pdus_are_refused_one_by_one_and_the_good_one_in_their_transaction_gets_in() {
    let (_a, _b, alice, bob, as_b) = setup().await;
    let room = as_b.room.clone();
    let state_before = state_set(&alice, &room).await;
    let power_before = alice.state_content(&room, "m.room.power_levels", "").await;

    let (good, good_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("honest")));
    // Signed with another key under B's key id.
    let stranger = Ed25519KeyPair::from_der(
        &Ed25519KeyPair::generate(),
        as_b.request_key
            .key_id()
            .trim_start_matches("ed25519:")
            .to_owned(),
    )
    .unwrap_or_else(|e| panic!("expected a fresh key pair: {e}"));
    let (bad_sig, bad_sig_pdu) = as_b.signed_with(
        as_b.template(
            &bob.user_id,
            "m.room.message",
            None,
            message("bad signature"),
        ),
        &stranger,
    );
    // The content changed after hashing and signing (the signature covers only what
    // redaction keeps, so it still verifies).
    let (bad_hash, mut bad_hash_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("original")));
    bad_hash_pdu["content"]["body"] = json!("tampered");
    assert_eq!(
        as_b.event_id(&bad_hash_pdu),
        bad_hash,
        "the id ignores the content"
    );
    // A user of another server, signed by B alone.
    let other_server_user = format!("@mallory:{}", "127.0.0.1:9");
    let (impostor, impostor_pdu) = as_b.signed(as_b.template(
        &other_server_user,
        "m.room.message",
        None,
        message("someone else's words"),
    ));
    // Bob (power 0) making himself an admin.
    let mut power = power_before.clone();
    power["users"][&bob.user_id] = json!(100);
    let (coup, coup_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.power_levels", Some(""), power));
    // Above the 65536-byte limit of a PDU.
    let (huge, huge_pdu) = as_b.signed_oversized(as_b.template(
        &bob.user_id,
        "m.room.message",
        None,
        message(&"x".repeat(70_000)),
    ));
    assert!(
        serde_json::to_string(&huge_pdu).map_or(0, |s| s.len()) > 65_536,
        "the oversized PDU is oversized"
    );

    let body = as_b.transaction(&[
        bad_sig_pdu,
        good_pdu.clone(),
        bad_hash_pdu,
        impostor_pdu,
        coup_pdu,
        huge_pdu,
    ]);
    let (status, answer) = as_b.put_send("forged-1", &body).await;
    assert_eq!(
        status, 200,
        "a transaction with bad PDUs is still answered: {answer}"
    );
    let results = &answer["pdus"];
    assert_eq!(
        results[&good],
        json!({}),
        "the good PDU is accepted: {answer}"
    );
    assert_eq!(
        results[&bad_hash],
        json!({}),
        "a content hash mismatch is accepted redacted, not refused: {answer}"
    );
    // Issue 14: an event the auth rules refuse is handled (kept as rejected, never shown),
    // which is no error in the answer, as with other servers; A's view below shows it is not
    // there.
    assert_eq!(
        results[&coup],
        json!({}),
        "a power change without power is rejected, not an error: {answer}"
    );
    for (what, id) in [
        ("a bad signature", &bad_sig),
        ("a sender of another server", &impostor),
        ("an oversized PDU", &huge),
    ] {
        assert!(
            results[id]["error"].is_string(),
            "expected {what} ({id}) to be refused with an error, got {answer}"
        );
    }

    // A's view: the good event and the redacted one are there, the others are not.
    let event_uri = |id: &str| format!("/rooms/{}/event/{}", enc(&room), enc(id));
    let (status, got) = alice.get(&event_uri(&good)).await;
    assert_eq!(status, 200, "the good event on A: {got}");
    assert_eq!(got["content"]["body"], "honest", "got {got}");
    let (status, got) = alice.get(&event_uri(&bad_hash)).await;
    assert_eq!(
        status, 200,
        "the event with a bad content hash is kept: {got}"
    );
    assert_eq!(got["sender"], bob.user_id.as_str(), "got {got}");
    assert_eq!(got["type"], "m.room.message", "got {got}");
    assert_eq!(got["content"], json!({}), "its content is gone: {got}");
    for id in [&bad_sig, &impostor, &coup, &huge] {
        let (status, got) = alice.get(&event_uri(id)).await;
        assert_eq!(
            status, 404,
            "expected {id} not to be on A, got {status}: {got}"
        );
    }
    let timeline = timeline_ids(&alice, &room).await;
    assert!(
        timeline.contains(&good) && timeline.contains(&bad_hash),
        "got {timeline:?}"
    );
    for id in [&bad_sig, &impostor, &coup, &huge] {
        assert!(
            !timeline.contains(id),
            "{id} reached A's timeline: {timeline:?}"
        );
    }
    // No state changed: the messages are not state, the power change was refused.
    assert_eq!(state_set(&alice, &room).await, state_before);
    assert_eq!(
        alice.state_content(&room, "m.room.power_levels", "").await,
        power_before
    );

    // The same transaction again: the same answer, and nothing twice.
    let (status, again) = as_b.put_send("forged-1", &body).await;
    assert_eq!(status, 200, "the replayed transaction: {again}");
    assert_eq!(
        again, answer,
        "a replayed transaction gets the first answer"
    );
    let timeline = timeline_ids(&alice, &room).await;
    assert_eq!(
        timeline.iter().filter(|id| **id == good).count(),
        1,
        "the replayed PDU is in A's timeline once: {timeline:?}"
    );
}

#[tokio::test]
async fn a_transaction_signed_with_a_key_its_origin_does_not_have_is_refused() {
    let (_a, _b, alice, bob, as_b) = setup().await;
    let room = as_b.room.clone();
    let (good, good_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("hello")));
    let body = as_b.transaction(&[good_pdu]);
    let timeline_before = timeline_ids(&alice, &room).await;

    // A key id B never published.
    let unknown = Ed25519Key::from_seed(&rand::random::<[u8; 32]>(), "forged");
    let (status, answer) = as_b
        .put_send_with("forged-2", &body, |uri, body| {
            x_matrix_with_content(&unknown, &as_b.b_name, &as_b.a_name, "PUT", uri, Some(body))
        })
        .await;
    assert_eq!(status, 401, "an unknown key: {answer}");
    assert_eq!(answer["errcode"], "M_UNAUTHORIZED", "got {answer}");
    // Another key under the id B does use.
    let version = as_b
        .request_key
        .key_id()
        .trim_start_matches("ed25519:")
        .to_owned();
    let impostor = Ed25519Key::from_seed(&rand::random::<[u8; 32]>(), &version);
    let (status, answer) = as_b
        .put_send_with("forged-3", &body, |uri, body| {
            x_matrix_with_content(
                &impostor,
                &as_b.b_name,
                &as_b.a_name,
                "PUT",
                uri,
                Some(body),
            )
        })
        .await;
    assert_eq!(status, 401, "a signature B's key does not verify: {answer}");
    assert_eq!(answer["errcode"], "M_UNAUTHORIZED", "got {answer}");
    // B's key, but a body other than the one signed.
    let (status, answer) = as_b
        .put_send_with("forged-4", &body, |uri, _| {
            let other = as_b.transaction(&[]);
            x_matrix_with_content(
                &as_b.request_key,
                &as_b.b_name,
                &as_b.a_name,
                "PUT",
                uri,
                Some(&other),
            )
        })
        .await;
    assert_eq!(status, 401, "a signature over another body: {answer}");
    // Signed by B but naming another origin in the body.
    let mut elsewhere = body.clone();
    elsewhere["origin"] = json!("127.0.0.1:9");
    let (status, answer) = as_b.put_send("forged-5", &elsewhere).await;
    assert_eq!(status, 403, "a transaction of another origin: {answer}");
    assert_eq!(answer["errcode"], "M_FORBIDDEN", "got {answer}");

    assert_eq!(
        timeline_ids(&alice, &room).await,
        timeline_before,
        "a refused transaction changed A's timeline"
    );
    let (status, got) = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&good)))
        .await;
    assert_eq!(
        status, 404,
        "the PDU of a refused transaction is not on A: {got}"
    );
    // Properly signed, the same PDU gets in: what was refused was the request, not the event.
    let (status, answer) = as_b.put_send("forged-6", &body).await;
    assert_eq!(status, 200, "got {answer}");
    assert_eq!(answer["pdus"][&good], json!({}), "got {answer}");
    let timeline = timeline_ids(&alice, &room).await;
    assert!(timeline.contains(&good), "got {timeline:?}");
}

/// Issue 14: the deprecated v1 `send_join`/`send_leave` (answered `[200, {…}]`) take the same
/// checks as v2: a leave is refused through `send_join`, then accepted through `send_leave`.
#[tokio::test]
async fn v1_send_join_and_send_leave_check_the_membership() {
    let (_a, _b, alice, bob, as_b) = setup().await;
    let leave = as_b.template(
        &bob.user_id,
        "m.room.member",
        Some(&bob.user_id),
        json!({ "membership": "leave" }),
    );
    let (id, pdu) = as_b.signed(leave);
    let put = |path: String, body: Value| {
        let as_b = &as_b;
        async move {
            let auth = x_matrix_with_content(
                &as_b.request_key,
                &as_b.b_name,
                &as_b.a_name,
                "PUT",
                &path,
                Some(&body),
            );
            let resp = reqwest::Client::new()
                .put(format!("{}{path}", as_b.a_url))
                .header("Authorization", auth)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("expected an answer to PUT {path}: {e}"));
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = put(
        format!(
            "/_matrix/federation/v1/send_join/{}/{}",
            enc(&as_b.room),
            enc(&id)
        ),
        pdu.clone(),
    )
    .await;
    assert_eq!(status, 400, "a leave through v1 send_join: {body}");
    let (status, body) = put(
        format!(
            "/_matrix/federation/v1/send_leave/{}/{}",
            enc(&as_b.room),
            enc(&id)
        ),
        pdu,
    )
    .await;
    assert_eq!(status, 200, "the leave through v1 send_leave: {body}");
    assert_eq!(body[0], 200, "the v1 answer is [200, {{…}}]: {body}");
    let m = alice
        .state_content(&as_b.room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(m["membership"], "leave", "{m}");
}

/// Issue 14: a remote state event whose `state_key` is more than 255 bytes but at most 255
/// code points is taken in (other servers have long allowed it, so rooms hold such events);
/// one of more than 255 code points is refused.
#[tokio::test]
async fn long_state_keys_of_remote_events_are_counted_in_code_points() {
    let (_a, _b, alice, bob, mut as_b) = setup().await;
    let room = as_b.room.clone();
    let mut levels = alice.state_content(&room, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(50);
    alice
        .put_state(&room, "m.room.power_levels", "", &levels)
        .await;
    let state = state_set(&alice, &room).await;
    let levels_id = state_event_id(&state, "m.room.power_levels", "");
    as_b.auth_events[0] = levels_id.clone();
    let got = as_b
        .get(&format!("/_matrix/federation/v1/event/{}", enc(&levels_id)))
        .await;
    as_b.depth = got["pdus"][0]["depth"].as_u64().unwrap_or_default();
    as_b.prev = levels_id;
    let emoji = "💥".repeat(70); // 280 bytes, 70 code points
    let (ok_id, ok) =
        as_b.signed(as_b.template(&bob.user_id, "org.example.breaker", Some(&emoji), json!({})));
    let too_long = "x".repeat(256);
    let (bad_id, bad) = as_b.signed(as_b.template(
        &bob.user_id,
        "org.example.breaker",
        Some(&too_long),
        json!({}),
    ));
    let (status, answer) = as_b
        .put_send("long-keys", &as_b.transaction(&[ok, bad]))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&ok_id], json!({}), "{answer}");
    assert!(answer["pdus"][&bad_id]["error"].is_string(), "{answer}");
    let (status, _) = alice.get_state(&room, "org.example.breaker", &emoji).await;
    assert_eq!(status, 200, "the event is state on A");
}

/// Issue 14 (and the hardening issue): a server the room's `m.room.server_acl` denies cannot
/// send PDUs into it (each is refused in the transaction's answer) nor use the membership
/// endpoints (403).
#[tokio::test]
async fn a_server_denied_by_the_rooms_acl_is_refused() {
    let (_a, _b, alice, bob, as_b) = setup().await;
    let room = as_b.room.clone();
    let before =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("allowed")));
    let (_, answer) = as_b
        .put_send("acl-before", &as_b.transaction(&[before.1]))
        .await;
    assert_eq!(
        answer["pdus"][&before.0],
        json!({}),
        "before the ACL: {answer}"
    );
    // Both test servers are IP literals on loopback: denying IP literals denies B (A's own
    // events are not checked against the ACL).
    alice
        .put_state(
            &room,
            "m.room.server_acl",
            "",
            &json!({ "allow": ["*"], "deny": [], "allow_ip_literals": false }),
        )
        .await;
    let (id, pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("denied")));
    let (status, answer) = as_b.put_send("acl-after", &as_b.transaction(&[pdu])).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["pdus"][&id]["error"]
            .as_str()
            .is_some_and(|e| e.contains("server ACL")),
        "{answer}"
    );
    let timeline: Vec<String> = timeline_ids(&alice, &room).await;
    assert!(
        !timeline.contains(&id),
        "the denied event is not in A's timeline"
    );
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12&ver=10",
        enc(&room),
        enc(&format!("@newcomer:{}", as_b.b_name))
    );
    let auth = x_matrix_with_content(
        &as_b.request_key,
        &as_b.b_name,
        &as_b.a_name,
        "GET",
        &uri,
        None,
    );
    let resp = reqwest::Client::new()
        .get(format!("{}{uri}", as_b.a_url))
        .header("Authorization", auth)
        .send()
        .await
        .expect("make_join");
    assert_eq!(resp.status(), 403, "make_join from a denied server");
}

/// Issue 14 (spec: rejection): an event built on a rejected event is taken in when the auth
/// rules allow it, with the state before the rejected one; the rejected event itself is never
/// shown (404) and changes no state.
#[tokio::test]
async fn an_event_built_on_a_rejected_event_is_accepted() {
    let (_a, _b, alice, bob, mut as_b) = setup().await;
    let room = as_b.room.clone();
    let mut power = alice.state_content(&room, "m.room.power_levels", "").await;
    power["users"][&bob.user_id] = json!(100);
    let (coup, coup_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.power_levels", Some(""), power));
    as_b.prev = coup.clone();
    as_b.depth += 1;
    let (after, after_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("after")));
    let (status, answer) = as_b
        .put_send("on-rejected", &as_b.transaction(&[coup_pdu, after_pdu]))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&after], json!({}), "{answer}");
    let event = |id: &str| format!("/rooms/{}/event/{}", enc(&room), enc(id));
    let (status, got) = alice.get(&event(&after)).await;
    assert_eq!(status, 200, "the event after the rejected one: {got}");
    let (status, got) = alice.get(&event(&coup)).await;
    assert_eq!(status, 404, "the rejected event is not shown: {got}");
    let levels = alice.state_content(&room, "m.room.power_levels", "").await;
    assert!(levels["users"].get(&bob.user_id).is_none(), "{levels}");
}

// Issue 15 item 6: a transaction of 50 PDUs of nearly 64 KiB each is valid and is taken,
// whatever the limit on clients' request bodies.
#[tokio::test]
async fn a_transaction_of_fifty_full_size_pdus_is_taken() {
    let (_a, _b, alice, bob, as_b) = setup().await;
    let body = "x".repeat(60_000);
    let pdus: Vec<(String, Value)> = (0..50)
        .map(|i| {
            as_b.signed(as_b.template(
                &bob.user_id,
                "m.room.message",
                None,
                message(&format!("{i} {body}")),
            ))
        })
        .collect();
    let txn = as_b.transaction(&pdus.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
    assert!(
        serde_json::to_vec(&txn).unwrap().len() > 2 * 1024 * 1024,
        "the transaction is over 2 MiB"
    );
    let (status, answer) = as_b.put_send("full-size", &txn).await;
    assert_eq!(status, 200, "got {answer}");
    for (id, _) in &pdus {
        assert_eq!(answer["pdus"][id], json!({}), "{id}: {answer}");
    }
    let ids = timeline_ids(&alice, &as_b.room).await;
    assert!(
        pdus.iter().all(|(id, _)| ids.contains(id)),
        "all 50 in A's timeline"
    );
}

// Issue 15 item 6: before fetching anything for a pushed event, A checks that its sender
// could be in the room; a stranger's event with unknown prev_events is refused at once.
#[tokio::test]
async fn missing_events_are_not_fetched_for_a_sender_who_could_not_be_in_the_room() {
    let (_a, _b, _alice, _bob, as_b) = setup().await;
    let stranger = format!("@stranger:{}", as_b.b_name);
    let mut event = as_b.template(&stranger, "m.room.message", None, message("let me in"));
    event["prev_events"] = json!(["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    let (id, pdu) = as_b.signed(event);
    let (status, answer) = as_b.put_send("stranger", &as_b.transaction(&[pdu])).await;
    assert_eq!(status, 200, "got {answer}");
    let error = answer["pdus"][&id]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not be in"),
        "expected the cheap check's refusal, got {answer}"
    );
}

// Issue 15 item 6: what a transaction may cost in fetching is budgeted; once spent (here: a
// budget of nothing), A fetches nothing more for it and says why.
#[tokio::test]
async fn fetching_for_a_transaction_stops_when_its_budget_is_spent() {
    let (_a, _b, _alice, bob, as_b) = setup_with(|env| {
        TestServer::set_env(env, "PARACORD_FEDERATION_FETCH_BUDGET_BYTES", "0");
    })
    .await;
    let mut event = as_b.template(&bob.user_id, "m.room.message", None, message("after a gap"));
    event["prev_events"] = json!(["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    let (id, pdu) = as_b.signed(event);
    let (status, answer) = as_b.put_send("no-budget", &as_b.transaction(&[pdu])).await;
    assert_eq!(status, 200, "got {answer}");
    let error = answer["pdus"][&id]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("budget"),
        "expected the budget's refusal, got {answer}"
    );
}

// Issue 15 item 6: an origin's transactions are taken in one at a time, and what one of them
// may spend fetching is cut at its budget's time even mid-request. B hangs (accepts A's
// connections and never answers); a transaction of B's whose event has unknown prev_events
// makes A fetch from B, which holds it until the budget's 2 seconds run out. A second
// transaction of B's, sent while the first is fetching, is answered only after the first.
#[tokio::test]
async fn an_origins_transactions_are_serialized_and_a_hanging_fetch_ends_at_the_budget() {
    let (a, a_name) = federating_server_with(|env| {
        TestServer::set_env(env, "PARACORD_FEDERATION_FETCH_BUDGET_MS", "2000");
    })
    .await;
    let b = SplittableServer::start(|_| {}).await;
    let (alice, bob, as_b) = setup_between(&a, a_name, &b.server, b.name.clone()).await;
    let room = as_b.room.clone();
    b.hang();

    let mut gap = as_b.template(&bob.user_id, "m.room.message", None, message("after a gap"));
    gap["prev_events"] = json!(["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    let (gap_id, gap_pdu) = as_b.signed(gap);
    let (next_id, next_pdu) =
        as_b.signed(as_b.template(&bob.user_id, "m.room.message", None, message("next")));
    let as_b = std::sync::Arc::new(as_b);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let (as_b, order) = (as_b.clone(), order.clone());
        async move {
            let answer = as_b.put_send("gap", &as_b.transaction(&[gap_pdu])).await;
            order.lock().unwrap().push("gap");
            answer
        }
    });
    for _ in 0..1000 {
        if b.held_in() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(b.held_in() > 0, "expected A to be fetching from B (held)");
    let second = tokio::spawn({
        let (as_b, order) = (as_b.clone(), order.clone());
        async move {
            let answer = as_b.put_send("next", &as_b.transaction(&[next_pdu])).await;
            order.lock().unwrap().push("next");
            answer
        }
    });
    let (status, answer) = first.await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "got {answer}");
    let error = answer["pdus"][&gap_id]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("budget"),
        "expected the budget's refusal, got {answer}"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "the hanging fetch held the transaction for {took:?} (a request times out after 60 s)"
    );
    let (status, answer) = second.await.unwrap();
    assert_eq!(status, 200, "got {answer}");
    assert_eq!(answer["pdus"][&next_id], json!({}), "got {answer}");
    assert_eq!(
        *order.lock().unwrap(),
        ["gap", "next"],
        "B's second transaction was answered while its first was still being taken in"
    );
    assert!(timeline_ids(&alice, &room).await.contains(&next_id));
}
