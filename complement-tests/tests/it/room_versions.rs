//! Issue 14: every stable room version (1–12), created here and joined over federation.
//!
//! The versions differ in ways a server must get right for each: versions 1 and 2 have event
//! ids `$opaque:server` carried in the event and `prev_events`/`auth_events` as
//! `[id, {"sha256": …}]` pairs; version 1 resolves state with the first algorithm; version 3
//! has reference-hash ids in standard base64 (`+` and `/` inside, to be escaped in paths);
//! versions 4 and later URL-safe ones; knocking arrives in 7, restricted joins in 8, the
//! create event's `creator` goes in 11 and room ids become create-event hashes in 12.

use paracord_complement::{
    enc, expect_error, expect_ok, federation::federating_server, joined_room, room_timeline, Client,
};
use serde_json::{json, Value};

const VERSIONS: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

fn number(version: &str) -> u32 {
    version.parse().unwrap_or(u32::MAX)
}

/// The event as a client reads it with `GET /rooms/{room}/event/{id}`.
async fn event(client: &Client, room: &str, id: &str) -> Value {
    expect_ok(
        client
            .get(&format!("/rooms/{}/event/{}", enc(room), enc(id)))
            .await,
        &format!("reading {id}"),
    )
}

/// The event id format of a room version.
fn assert_event_id_format(version: &str, id: &str, server: &str) {
    let n = number(version);
    if n <= 2 {
        assert!(
            id.starts_with('$') && id.ends_with(&format!(":{server}")),
            "v{version} event ids are $opaque:server: {id}"
        );
    } else {
        assert!(!id.contains(':'), "v{version} event ids are hashes: {id}");
        assert_eq!(id.len(), 44, "a sha256 in unpadded base64: {id}");
        if n >= 4 {
            assert!(
                !id.contains('/') && !id.contains('+'),
                "v{version} ids are URL-safe: {id}"
            );
        }
    }
}

#[tokio::test]
async fn every_stable_room_version_is_advertised_created_and_used() {
    let server = paracord_complement::TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let caps = expect_ok(alice.get("/capabilities").await, "capabilities");
    for v in VERSIONS {
        assert_eq!(
            caps["capabilities"]["m.room_versions"]["available"][v], "stable",
            "version {v} advertised: {caps}"
        );
    }

    for version in VERSIONS {
        let room = alice
            .create_room(&json!({
                "preset": "public_chat", "room_version": version, "name": format!("v{version}"),
            }))
            .await;
        let create = alice.state_content(&room, "m.room.create", "").await;
        assert_eq!(create["room_version"], version, "got {create}");
        // `creator` until version 11, which takes the sender instead.
        if number(version) <= 10 {
            assert_eq!(
                create["creator"],
                alice.user_id.as_str(),
                "v{version}: {create}"
            );
        } else {
            assert!(create.get("creator").is_none(), "v{version}: {create}");
        }

        bob.join_ok(&room).await;
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(alice.send_text(&room, &format!("v{version} {i}")).await);
        }
        let by_bob = bob.send_text(&room, "bob here").await;
        for id in ids.iter().chain([&by_bob]) {
            assert_event_id_format(version, id, &server.server_name());
            // Read back by id (an id with `/` or `+` must be escaped in the path).
            let ev = event(&bob, &room, id).await;
            assert_eq!(ev["event_id"], id.as_str(), "got {ev}");
            assert!(ev.get("prev_events").is_none(), "client format: {ev}");
        }

        // A redaction by the sender, which keeps only what the version's algorithm keeps.
        let (status, body) = alice
            .put(
                &format!(
                    "/rooms/{}/redact/{}/{}",
                    enc(&room),
                    enc(&ids[0]),
                    Client::txn_id()
                ),
                &json!({ "reason": "test" }),
            )
            .await;
        assert_eq!(status, 200, "v{version} redaction: {body}");
        let redacted = event(&bob, &room, &ids[0]).await;
        assert_eq!(redacted["content"], json!({}), "v{version}: {redacted}");

        // Power levels (string levels are legal before version 10) still gate state.
        let (status, body) = bob
            .put(
                &format!("/rooms/{}/state/m.room.topic/", enc(&room)),
                &json!({ "topic": "bob's" }),
            )
            .await;
        expect_error(
            &(status, body),
            paracord_complement::StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "bob sets the topic",
        );

        // History and sync for the second member.
        let messages = bob.all_messages(&room).await;
        let bodies: Vec<&str> = messages
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert!(bodies.contains(&"bob here"), "v{version}: {bodies:?}");
        assert!(
            bodies.contains(&format!("v{version} 7").as_str()),
            "v{version}: {bodies:?}"
        );
        let sync = bob.sync(None, 0, None).await;
        assert!(joined_room(&sync, &room).is_some(), "v{version}: {sync}");

        // Knocking arrives in version 7: before it, a knock rule cannot be used.
        let knock_room = alice
            .create_room(&json!({
                "preset": "private_chat", "room_version": version,
                "initial_state": [{
                    "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" },
                }],
            }))
            .await;
        let (status, body) = bob
            .post(&format!("/knock/{}", enc(&knock_room)), &json!({}))
            .await;
        if number(version) >= 7 {
            assert_eq!(status, 200, "v{version} knock: {body}");
        } else {
            assert_eq!(status, 403, "v{version} has no knocking: {body}");
        }
    }
}

#[tokio::test]
async fn rooms_of_older_versions_federate_between_paracord_servers() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    for version in ["1", "2", "3", "6", "9"] {
        let room = alice
            .create_room(&json!({ "preset": "public_chat", "room_version": version }))
            .await;
        let first = alice.send_text(&room, "before bob").await;
        let (status, body) = bob
            .post(
                &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "v{version}: bob joins through A: {body}");
        // Bob's join event was made by B: in v1 and v2 its id names B.
        let member = bob.get_state(&room, "m.room.member", &bob.user_id).await;
        assert_eq!(member.0, 200, "v{version}: {member:?}");

        let from_bob = bob.send_text(&room, "hello from B").await;
        assert_event_id_format(version, &from_bob, &b_name);
        let sync = alice
            .sync_until(None, None, "bob's message on A", |s| {
                room_timeline(s, &room)
                    .iter()
                    .any(|e| e["event_id"] == from_bob.as_str())
            })
            .await;
        assert!(joined_room(&sync, &room).is_some());
        let from_alice = alice.send_text(&room, "hello from A").await;
        bob.sync_until(None, None, "alice's message on B", |s| {
            room_timeline(s, &room)
                .iter()
                .any(|e| e["event_id"] == from_alice.as_str())
        })
        .await;
        // History from before the join reaches B.
        let history = bob.all_messages(&room).await;
        assert!(
            history.iter().any(|e| e["event_id"] == first.as_str()),
            "v{version}: the message from before the join on B: {history:?}"
        );
        // A state change from B reaches A (bob is a plain member: he may set his own profile).
        let (status, body) = bob
            .put(
                &format!(
                    "/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&bob.user_id)
                ),
                &json!({ "membership": "join", "displayname": format!("Bob v{version}") }),
            )
            .await;
        assert_eq!(status, 200, "v{version}: {body}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (_, m) = alice.get_state(&room, "m.room.member", &bob.user_id).await;
            if m["displayname"] == format!("Bob v{version}") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "v{version}: bob's new name on A: {m}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
