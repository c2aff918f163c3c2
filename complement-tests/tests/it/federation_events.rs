//! Another server reading a room it is not in: `/event`, `/state_ids`, `/state`, `/event_auth`,
//! `/get_missing_events` and `/backfill`, answered when history visibility allows it, refused
//! (403) when not or when the room's server ACL denies the server, and 404 for unknown events.
//!
//! Two real servers: A holds the rooms; requests go to A signed as B (A fetches B's key from B
//! over TLS to check them).

use std::collections::BTreeSet;

use paracord_complement::{
    e2ee::Ed25519Key,
    enc,
    federation::{federating_server, server_signing_key, x_matrix_with_content},
    TestServer, User,
};
use serde_json::{json, Value};

/// Signs requests to A as B.
struct AsB {
    key: Ed25519Key,
    b_name: String,
    a_name: String,
    a_url: String,
}

impl AsB {
    fn new(a: &TestServer, a_name: &str, b: &TestServer, b_name: &str) -> AsB {
        AsB {
            key: server_signing_key(b),
            b_name: b_name.to_owned(),
            a_name: a_name.to_owned(),
            a_url: a.base_url(),
        }
    }

    /// An `X-Matrix` header for a request with an optional JSON body (which the signature
    /// covers as `content`).
    fn auth(&self, method: &str, uri: &str, content: Option<&Value>) -> String {
        x_matrix_with_content(&self.key, &self.b_name, &self.a_name, method, uri, content)
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<&Value>,
        signed: bool,
    ) -> (u16, Value) {
        let http = reqwest::Client::new();
        let url = format!("{}{uri}", self.a_url);
        let mut req = match method {
            "GET" => http.get(url),
            _ => http.post(url),
        };
        if signed {
            req = req.header("Authorization", self.auth(method, uri, body));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("expected an answer to {method} {uri}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, uri: &str) -> (u16, Value) {
        self.send("GET", uri, None, true).await
    }

    async fn get_ok(&self, uri: &str) -> Value {
        let (status, body) = self.get(uri).await;
        assert_eq!(status, 200, "GET {uri} signed as B: {body}");
        body
    }

    async fn post_ok(&self, uri: &str, content: &Value) -> Value {
        let (status, body) = self.send("POST", uri, Some(content), true).await;
        assert_eq!(status, 200, "POST {uri} {content} signed as B: {body}");
        body
    }
}

fn assert_error(got: &(u16, Value), status: u16, errcode: &str, what: &str) {
    assert_eq!(
        (got.0, got.1["errcode"].as_str()),
        (status, Some(errcode)),
        "{what}: {}",
        got.1
    );
}

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("expected an array `{key}`, got {v}"))
}

fn strings(v: &Value, key: &str) -> BTreeSet<String> {
    array(v, key)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings in `{key}`, got {v}"))
                .to_owned()
        })
        .collect()
}

/// The message bodies of PDUs, `null` for events without one.
fn bodies(pdus: &[Value]) -> Vec<Value> {
    pdus.iter().map(|p| p["content"]["body"].clone()).collect()
}

/// A room on A with the given history visibility.
async fn room_with(alice: &User, visibility: &str) -> String {
    alice
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": visibility },
            }],
        }))
        .await
}

fn state_ids_uri(room: &str, event: &str) -> String {
    format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(room),
        enc(event)
    )
}

fn event_uri(event: &str) -> String {
    format!("/_matrix/federation/v1/event/{}", enc(event))
}

#[tokio::test]
async fn another_server_reads_a_world_readable_room_it_is_not_in() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let as_b = AsB::new(&a, &a_name, &b, &b_name);
    let alice = a.register_random().await;
    let room = room_with(&alice, "world_readable").await;
    let mut m = Vec::new();
    for i in 0..6 {
        m.push(alice.send_text(&room, &format!("m{i}")).await);
    }

    // A single event, as stored: signed by A, no `unsigned`.
    let got = as_b.get_ok(&event_uri(&m[5])).await;
    assert_eq!(got["origin"], a_name.as_str(), "got {got}");
    assert!(got["origin_server_ts"].is_u64(), "got {got}");
    let pdus = array(&got, "pdus");
    assert_eq!(pdus.len(), 1, "got {got}");
    let pdu = &pdus[0];
    assert_eq!(pdu["content"]["body"], "m5", "got {pdu}");
    assert_eq!(pdu["room_id"], room.as_str(), "got {pdu}");
    assert!(pdu["signatures"][&a_name].is_object(), "signed by A: {pdu}");
    assert!(pdu["hashes"]["sha256"].is_string(), "got {pdu}");
    assert!(
        pdu["prev_events"].as_array().is_some_and(|p| p.len() == 1),
        "federation format: {pdu}"
    );
    assert!(pdu.get("unsigned").is_none(), "got {pdu}");

    // The state at m5 (before it; a message changes nothing) is what A's clients see.
    let client_state = alice.full_state(&room).await;
    let client_ids: BTreeSet<String> = client_state
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let create_id = client_state
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or_else(|| panic!("expected a create event in {client_state:?}"))
        .to_owned();
    let ids = as_b.get_ok(&state_ids_uri(&room, &m[5])).await;
    assert_eq!(strings(&ids, "pdu_ids"), client_ids, "got {ids}");
    let chain_ids = strings(&ids, "auth_chain_ids");
    assert!(chain_ids.contains(&create_id), "got {ids}");
    assert!(
        chain_ids.iter().all(|id| client_ids.contains(id)),
        "nothing changed, so the chain is made of current state: {ids}"
    );

    // The same as full PDUs.
    let state = as_b
        .get_ok(&format!(
            "/_matrix/federation/v1/state/{}?event_id={}",
            enc(&room),
            enc(&m[5])
        ))
        .await;
    let keys = |events: &[Value]| -> BTreeSet<(String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    e["state_key"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        keys(array(&state, "pdus")),
        keys(&client_state),
        "got {state}"
    );
    assert_eq!(array(&state, "auth_chain").len(), chain_ids.len());
    assert!(
        array(&state, "pdus")
            .iter()
            .all(|p| p["signatures"][&a_name].is_object()),
        "got {state}"
    );

    // The auth chain of one message: create, power levels, alice's join, and no messages.
    let auth = as_b
        .get_ok(&format!(
            "/_matrix/federation/v1/event_auth/{}/{}",
            enc(&room),
            enc(&m[5])
        ))
        .await;
    let chain = array(&auth, "auth_chain");
    let types: Vec<&str> = chain.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types.first(),
        Some(&"m.room.create"),
        "oldest first: {auth}"
    );
    for t in ["m.room.power_levels", "m.room.member"] {
        assert!(types.contains(&t), "expected {t} in {auth}");
    }
    assert!(!types.contains(&"m.room.message"), "got {auth}");

    // Missing events between m1 (B has it) and m5: the limit keeps the newest, oldest first.
    let missing_uri = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let missing = as_b
        .post_ok(
            &missing_uri,
            &json!({ "earliest_events": [m[1]], "latest_events": [m[5]], "limit": 2 }),
        )
        .await;
    assert_eq!(
        bodies(array(&missing, "events")),
        [json!("m3"), json!("m4")],
        "got {missing}"
    );
    let missing = as_b
        .post_ok(
            &missing_uri,
            &json!({ "earliest_events": [m[1]], "latest_events": [m[5]] }),
        )
        .await;
    assert_eq!(
        bodies(array(&missing, "events")),
        [json!("m2"), json!("m3"), json!("m4")],
        "stops at earliest_events: {missing}"
    );

    // Backfill from m5: m5 itself and what precedes it, newest first, at most `limit`.
    let back = as_b
        .get_ok(&format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit=3",
            enc(&room),
            enc(&m[5])
        ))
        .await;
    assert_eq!(back["origin"], a_name.as_str(), "got {back}");
    assert_eq!(
        bodies(array(&back, "pdus")),
        [json!("m5"), json!("m4"), json!("m3")],
        "got {back}"
    );

    // Unsigned: refused before anything else.
    let unsigned = as_b.send("GET", &event_uri(&m[5]), None, false).await;
    assert_error(&unsigned, 401, "M_UNAUTHORIZED", "unsigned /event");
}

#[tokio::test]
async fn reads_are_refused_without_a_member_unknown_events_and_acl_denied_servers() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let as_b = AsB::new(&a, &a_name, &b, &b_name);
    let alice = a.register_random().await;

    // `shared`: B has no member, so B sees nothing.
    let shared = room_with(&alice, "shared").await;
    let secret = alice.send_text(&shared, "secret").await;
    for (what, uri) in [
        ("/event", event_uri(&secret)),
        ("/state_ids", state_ids_uri(&shared, &secret)),
        (
            "/event_auth",
            format!(
                "/_matrix/federation/v1/event_auth/{}/{}",
                enc(&shared),
                enc(&secret)
            ),
        ),
        (
            "/backfill",
            format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=5",
                enc(&shared),
                enc(&secret)
            ),
        ),
    ] {
        let got = as_b.get(&uri).await;
        assert_error(
            &got,
            403,
            "M_FORBIDDEN",
            &format!("{what} of a shared room"),
        );
        assert!(
            !got.1.to_string().contains("secret\""),
            "nothing leaks: {}",
            got.1
        );
    }
    let got = as_b
        .send(
            "POST",
            &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&shared)),
            Some(&json!({ "earliest_events": [], "latest_events": [secret] })),
            true,
        )
        .await;
    assert_error(
        &got,
        403,
        "M_FORBIDDEN",
        "/get_missing_events of a shared room",
    );

    // Unknown events and rooms, and events of another room than the path's.
    let open = room_with(&alice, "world_readable").await;
    let visible = alice.send_text(&open, "hello").await;
    as_b.get_ok(&state_ids_uri(&open, &visible)).await;
    let unknown = "$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_error(
        &as_b.get(&event_uri(unknown)).await,
        404,
        "M_NOT_FOUND",
        "/event of an unknown event",
    );
    assert_error(
        &as_b.get(&state_ids_uri(&open, unknown)).await,
        404,
        "M_NOT_FOUND",
        "/state_ids at an unknown event",
    );
    assert_error(
        &as_b.get(&state_ids_uri(&open, &secret)).await,
        404,
        "M_NOT_FOUND",
        "/state_ids at an event of another room",
    );
    assert_error(
        &as_b
            .get(&state_ids_uri(&format!("!nowhere:{a_name}"), &visible))
            .await,
        404,
        "M_NOT_FOUND",
        "/state_ids of an unknown room",
    );

    // An ACL that does not name B changes nothing; one that denies B's host (whatever its
    // port) refuses B even in the world-readable room.
    alice
        .put_state(
            &open,
            "m.room.server_acl",
            "",
            &json!({ "allow": ["*"], "deny": ["evil.example"] }),
        )
        .await;
    as_b.get_ok(&event_uri(&visible)).await;
    alice
        .put_state(
            &open,
            "m.room.server_acl",
            "",
            &json!({ "allow": ["*"], "deny": ["127.0.0.1"] }),
        )
        .await;
    assert_error(
        &as_b.get(&state_ids_uri(&open, &visible)).await,
        403,
        "M_FORBIDDEN",
        "/state_ids denied by the ACL",
    );
    assert_error(
        &as_b.get(&event_uri(&visible)).await,
        403,
        "M_FORBIDDEN",
        "/event denied by the ACL",
    );
    let got = as_b
        .send(
            "POST",
            &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&open)),
            Some(&json!({ "earliest_events": [], "latest_events": [visible] })),
            true,
        )
        .await;
    assert_error(
        &got,
        403,
        "M_FORBIDDEN",
        "/get_missing_events denied by the ACL",
    );
}

/// Issue 14: `/get_missing_events` answers a server in the room with redacted copies of the
/// events it may not see (a `joined` room's history from before its member joined): it needs
/// them to link the DAG.
#[tokio::test]
async fn missing_events_a_member_server_may_not_see_come_redacted() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let as_b = AsB::new(&a, &a_name, &b, &b_name);
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = room_with(&alice, "joined").await;
    let before = alice.send_text(&room, "before bob").await;
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = alice.send_text(&room, "after bob").await;
    let state = alice.full_state(&room).await;
    let create_id = state
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let missing = as_b
        .post_ok(
            &format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room)),
            &json!({ "earliest_events": [create_id], "latest_events": [after], "limit": 20 }),
        )
        .await;
    let events = array(&missing, "events");
    let copy = events
        .iter()
        .find(|e| {
            e["type"] == "m.room.message" && e["content"].get("body") != Some(&json!("after bob"))
        })
        .unwrap_or_else(|| panic!("the message from before bob's join ({before}): {missing}"));
    assert_eq!(copy["content"], json!({}), "redacted: {copy}");
}
