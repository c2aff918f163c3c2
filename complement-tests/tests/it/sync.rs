//! /sync: initial and incremental, long-polling, filters, full_state, the
//! leave section, account data and lazy-loaded members.

use std::time::Duration;

use paracord_complement::{
    bodies, enc, expect_error, expect_ok, find_event, find_state, has_event_id, room_account_data,
    room_state, room_timeline, StatusCode, TestServer,
};
use serde_json::{json, Value};
use tokio::time::Instant;

/// A filter that keeps presence out, so a long-poll wakes only for room data.
fn no_presence() -> String {
    json!({ "presence": { "not_types": ["*"] } }).to_string()
}

#[tokio::test]
async fn initial_sync_contains_the_created_room() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "name": "Sync me" })).await;
    let hello = alice.send_text(&room, "hello").await;

    let sync = alice.sync(None, 0, None).await;
    let joined = paracord_complement::joined_room(&sync, &room)
        .unwrap_or_else(|| panic!("expected {room} in rooms.join, got {sync}"));
    let timeline = room_timeline(&sync, &room);
    assert!(
        has_event_id(&timeline, &hello),
        "expected the message in the timeline, got {joined}"
    );
    let mut all = room_state(&sync, &room);
    all.extend(timeline);
    assert!(
        find_state(&all, "m.room.create", "").is_some(),
        "expected m.room.create in state or timeline, got {joined}"
    );
    assert!(
        find_state(&all, "m.room.member", &alice.user_id).is_some(),
        "expected alice's membership, got {joined}"
    );
    let name = find_state(&all, "m.room.name", "")
        .unwrap_or_else(|| panic!("expected m.room.name, got {joined}"));
    assert_eq!(
        name["content"]["name"], "Sync me",
        "expected the room name, got {name}"
    );
}

#[tokio::test]
async fn incremental_sync_returns_only_new_events() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    alice.send_text(&room, "before").await;
    let since = alice.sync_token().await;
    let after = alice.send_text(&room, "after").await;

    let sync = alice.sync(Some(&since), 0, None).await;
    let timeline = room_timeline(&sync, &room);
    let ids: Vec<&str> = timeline
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![after.as_str()],
        "expected only the new event in the incremental timeline, got {sync}"
    );
    assert!(
        !room_state(&sync, &room)
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "expected no unchanged state in an incremental sync, got {sync}"
    );
    assert_eq!(
        sync["rooms"]["join"][&room]["timeline"]["limited"], false,
        "expected an unlimited incremental timeline, got {sync}"
    );
}

#[tokio::test]
async fn long_poll_sync_wakes_when_an_event_arrives() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let filter = no_presence();
    let since = bob.sync(None, 0, Some(&filter)).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let poller = bob.client.clone();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        let resp = poller.sync(Some(&since), 10_000, Some(&filter)).await;
        (resp, Instant::now())
    });
    // Scenario step, not a wait: give the request time to park on the server
    // so the send below has to wake it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent_at = Instant::now();
    let event = alice.send_text(&room, "wake up").await;
    let (resp, returned_at) = task
        .await
        .unwrap_or_else(|e| panic!("expected the sync task to finish: {e}"));

    assert!(
        has_event_id(&room_timeline(&resp, &room), &event),
        "expected the long-poll to return the new event, got {resp}"
    );
    assert!(
        returned_at >= sent_at,
        "expected the long-poll to wait for the event, it returned after {:?}: {resp}",
        returned_at - started
    );
    let latency = returned_at - sent_at;
    assert!(latency < Duration::from_secs(5), "expected the long-poll to return well before its 10 s timeout, took {latency:?} after the send");
}

#[tokio::test]
async fn zero_timeout_sync_returns_at_once_without_new_events() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let filter = no_presence();
    let since = alice.sync(None, 0, Some(&filter)).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let started = Instant::now();
    let sync = alice.sync(Some(&since), 0, Some(&filter)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "expected timeout=0 to return at once, took {took:?}"
    );
    assert!(
        room_timeline(&sync, &room).is_empty(),
        "expected no new timeline events, got {sync}"
    );
}

#[tokio::test]
async fn limited_timeline_gives_a_prev_batch_that_messages_continues_from() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    for i in 0..10 {
        alice.send_text(&room, &format!("m{i}")).await;
    }
    let filter = json!({ "room": { "timeline": { "limit": 3 } } }).to_string();
    let sync = alice.sync(None, 0, Some(&filter)).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    let events = room_timeline(&sync, &room);
    assert_eq!(
        bodies(&events),
        vec!["m7", "m8", "m9"],
        "expected the 3 newest messages oldest first, got {sync}"
    );
    assert_eq!(
        timeline["limited"], true,
        "expected limited: true, got {sync}"
    );
    let prev = timeline["prev_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a prev_batch, got {sync}"));

    let page = alice
        .messages(&room, &[("dir", "b"), ("limit", "3"), ("from", prev)])
        .await;
    let older = page["chunk"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        bodies(&older),
        vec!["m6", "m5", "m4"],
        "expected /messages from prev_batch to continue before the timeline, got {page}"
    );
}

#[tokio::test]
async fn stored_filters_round_trip_and_apply_to_sync() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    for i in 0..5 {
        alice.send_text(&room, &format!("f{i}")).await;
    }
    let path = format!("/user/{}/filter", enc(&alice.user_id));
    let created = expect_ok(
        alice
            .post(&path, &json!({ "room": { "timeline": { "limit": 2 } } }))
            .await,
        "POST filter",
    );
    let id = created["filter_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string filter_id, got {created}"));
    assert!(
        !id.starts_with('{'),
        "expected a filter id that cannot be mistaken for JSON, got {created}"
    );

    let stored = expect_ok(
        alice.get(&format!("{path}/{}", enc(id))).await,
        "GET filter",
    );
    assert_eq!(
        stored["room"]["timeline"]["limit"], 2,
        "expected the stored filter back, got {stored}"
    );

    let sync = alice.sync(None, 0, Some(id)).await;
    assert_eq!(
        bodies(&room_timeline(&sync, &room)),
        vec!["f3", "f4"],
        "expected the stored filter to cap the timeline at 2, got {sync}"
    );
    assert_eq!(
        sync["rooms"]["join"][&room]["timeline"]["limited"], true,
        "expected limited: true, got {sync}"
    );

    let missing = alice.get(&format!("{path}/999999")).await;
    expect_error(
        &missing,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET of an unknown filter id",
    );
}

#[tokio::test]
async fn full_state_resends_the_room_state() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "name": "full" })).await;
    let since = alice.sync_token().await;

    let sync = alice
        .sync_query(&[("since", &since), ("timeout", "0"), ("full_state", "true")])
        .await;
    let mut all = room_state(&sync, &room);
    all.extend(room_timeline(&sync, &room));
    for (ty, key) in [
        ("m.room.create", ""),
        ("m.room.member", alice.user_id.as_str()),
        ("m.room.name", ""),
    ] {
        assert!(
            find_state(&all, ty, key).is_some(),
            "expected {ty}/{key} with full_state=true, got {sync}"
        );
    }
}

#[tokio::test]
async fn leaving_moves_the_room_to_the_leave_section() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let since = bob.sync_token().await;
    bob.leave_ok(&room).await;

    let sync = bob
        .sync_until(Some(&since), None, "the room is in rooms.leave", |s| {
            s["rooms"]["leave"].get(&room).is_some()
        })
        .await;
    let left = &sync["rooms"]["leave"][&room];
    let events = left["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "leave"),
        "expected bob's leave event in the leave section's timeline, got {left}"
    );
    assert!(
        sync["rooms"]["join"].get(&room).is_none(),
        "expected the room gone from rooms.join, got {sync}"
    );
}

#[tokio::test]
async fn account_data_is_stored_and_synced_globally_and_per_room() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let uid = enc(&alice.user_id);
    let global = format!("/user/{uid}/account_data/org.example.global");
    let per_room = format!(
        "/user/{uid}/rooms/{}/account_data/org.example.room",
        enc(&room)
    );

    expect_ok(
        alice.put(&global, &json!({ "a": 1 })).await,
        "PUT global account data",
    );
    expect_ok(
        alice.put(&per_room, &json!({ "b": 2 })).await,
        "PUT room account data",
    );
    assert_eq!(
        expect_ok(alice.get(&global).await, "GET global account data"),
        json!({ "a": 1 }),
        "expected global account data back"
    );
    assert_eq!(
        expect_ok(alice.get(&per_room).await, "GET room account data"),
        json!({ "b": 2 }),
        "expected room account data back"
    );

    let sync = alice.sync(None, 0, None).await;
    let globals = sync["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let g = find_event(&globals, "org.example.global")
        .unwrap_or_else(|| panic!("expected global account data in sync, got {sync}"));
    assert_eq!(
        g["content"],
        json!({ "a": 1 }),
        "expected the global content, got {g}"
    );
    let rooms = room_account_data(&sync, &room);
    let r = find_event(&rooms, "org.example.room")
        .unwrap_or_else(|| panic!("expected room account data in sync, got {sync}"));
    assert_eq!(
        r["content"],
        json!({ "b": 2 }),
        "expected the room content, got {r}"
    );

    let since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    expect_ok(
        alice.put(&global, &json!({ "a": 2 })).await,
        "updating global account data",
    );
    let next = alice
        .sync_until(
            Some(&since),
            None,
            "the updated global account data arrives",
            |s| {
                s["account_data"]["events"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["type"] == "org.example.global" && e["content"]["a"] == 2)
                })
            },
        )
        .await;
    assert!(
        next["next_batch"].is_string(),
        "expected next_batch, got {next}"
    );

    let bob = server.register_random().await;
    let snoop = bob.get(&global).await;
    expect_error(
        &snoop,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "reading another user's account data",
    );
}

#[tokio::test]
async fn lazy_loaded_members_cover_only_timeline_senders() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    // Named, so no server needs "hero" memberships to name it.
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Lazy" }))
        .await;
    bob.join_ok(&room).await;
    carol.join_ok(&room).await;
    for i in 0..3 {
        bob.send_text(&room, &format!("bob {i}")).await;
    }

    let filter =
        json!({ "room": { "timeline": { "limit": 2 }, "state": { "lazy_load_members": true } } })
            .to_string();
    let sync = alice.sync(None, 0, Some(&filter)).await;
    let timeline = room_timeline(&sync, &room);
    assert_eq!(
        bodies(&timeline),
        vec!["bob 1", "bob 2"],
        "expected bob's last two messages, got {sync}"
    );
    let state = room_state(&sync, &room);
    assert!(
        find_state(&state, "m.room.member", &bob.user_id).is_some(),
        "expected the timeline sender's membership, got {sync}"
    );
    assert!(
        find_state(&state, "m.room.member", &carol.user_id).is_none(),
        "expected no membership for carol who sent nothing, got {sync}"
    );
    assert!(
        find_state(&state, "m.room.create", "").is_some(),
        "expected non-member state to be unaffected, got {sync}"
    );

    let full = alice
        .sync(
            None,
            0,
            Some(&json!({ "room": { "timeline": { "limit": 2 } } }).to_string()),
        )
        .await;
    let state: Vec<Value> = room_state(&full, &room);
    assert!(
        find_state(&state, "m.room.member", &carol.user_id).is_some(),
        "expected carol's membership without lazy loading, got {full}"
    );
}

/// The events of `room` in the `leave` section of a sync: its timeline and state.
fn left_events(sync: &Value, room: &str) -> Vec<Value> {
    let left = &sync["rooms"]["leave"][room];
    ["timeline", "state"]
        .iter()
        .filter_map(|s| left[s]["events"].as_array())
        .flatten()
        .cloned()
        .collect()
}

// Issue 14: a room left and then forgotten still reports the leave to an incremental sync
// from before it (another device must learn the room was left), and its history is closed:
// `/messages` is 403 M_FORBIDDEN before any parameter is looked at.
#[tokio::test]
async fn a_forgotten_rooms_leave_reaches_incremental_sync_and_its_messages_are_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    alice.send_text(&room, "hello").await;
    let before_leave = alice.sync_token().await;
    alice.leave_ok(&room).await;
    expect_ok(
        alice
            .post(&format!("/rooms/{}/forget", enc(&room)), &json!({}))
            .await,
        "POST /forget",
    );
    bob.send_text(&room, "after the forget").await;

    let filter = json!({ "room": { "include_leave": true } }).to_string();
    let sync = alice.sync(Some(&before_leave), 0, Some(&filter)).await;
    assert!(
        left_events(&sync, &room)
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == alice.user_id.as_str()
                && e["content"]["membership"] == "leave"),
        "expected the leave of the forgotten room in rooms.leave, got {sync}"
    );
    let initial = alice.sync(None, 0, Some(&filter)).await;
    assert!(
        initial["rooms"]["leave"].get(&room).is_none(),
        "expected no forgotten room in an initial sync, got {initial}"
    );

    // No `dir`: the membership check comes first.
    let resp = alice.get(&format!("/rooms/{}/messages", enc(&room))).await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "/messages of a forgotten room without dir",
    );
    let resp = alice
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "/messages of a forgotten room",
    );
    // A member's request without `dir` is still a parameter error.
    let resp = bob.get(&format!("/rooms/{}/messages", enc(&room))).await;
    assert_eq!(
        resp.0,
        StatusCode::BAD_REQUEST,
        "expected 400 for /messages without dir, got {resp:?}"
    );
}

// Issue 14: `timeline.limit` 0 is honoured for a left room in an initial sync: no events,
// and the state up to the leave (the leave included, nothing sent after it).
#[tokio::test]
async fn timeline_limit_zero_gives_a_left_room_its_state_and_no_events() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    alice
        .put_state(&room, "a.test.state", "", &json!({ "when": "before" }))
        .await;
    bob.leave_ok(&room).await;
    alice
        .put_state(&room, "a.test.state", "", &json!({ "when": "after" }))
        .await;

    let filter = json!({ "room": { "timeline": { "limit": 0 }, "include_leave": true } });
    let sync = bob.sync(None, 0, Some(&filter.to_string())).await;
    let left = &sync["rooms"]["leave"][&room];
    assert_eq!(
        left["timeline"]["events"].as_array().map(Vec::len),
        Some(0),
        "expected an empty timeline, got {sync}"
    );
    let state = left["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let leave = find_state(&state, "m.room.member", &bob.user_id)
        .unwrap_or_else(|| panic!("expected bob's membership in the state, got {sync}"));
    assert_eq!(leave["content"]["membership"], "leave", "got {sync}");
    let custom = find_state(&state, "a.test.state", "")
        .unwrap_or_else(|| panic!("expected the test state, got {sync}"));
    assert_eq!(
        custom["content"]["when"], "before",
        "expected the state as of the leave, got {sync}"
    );
}

// Issue 14: the presence of people the user starts sharing a room with reaches the
// incremental sync, however old it is: all members of a room the user joins, and a member
// who joins a room the user is in.
#[tokio::test]
async fn incremental_sync_brings_the_presence_of_newly_shared_members() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    for u in [&alice, &bob, &carol] {
        expect_ok(
            u.put(
                &format!("/presence/{}/status", enc(&u.user_id)),
                &json!({ "presence": "online" }),
            )
            .await,
            "PUT presence",
        );
    }
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let bob_since = bob.sync_token().await;
    let alice_since = alice.sync_token().await;
    bob.join_ok(&room).await;

    let senders = |s: &Value| -> Vec<String> {
        s["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.presence")
            .filter_map(|e| e["sender"].as_str().map(str::to_owned))
            .collect()
    };
    let sync = bob.sync(Some(&bob_since), 0, None).await;
    assert!(
        senders(&sync).contains(&alice.user_id),
        "expected alice's presence for the newly joined room, got {sync}"
    );
    assert!(
        !senders(&sync).contains(&carol.user_id),
        "expected no presence of carol, who shares no room with bob, got {sync}"
    );
    let sync = alice.sync(Some(&alice_since), 0, None).await;
    assert!(
        senders(&sync).contains(&bob.user_id),
        "expected the presence of bob, newly joined, got {sync}"
    );
    // Told once: the next incremental sync has no news of it.
    let next = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    let again = alice.sync(Some(&next), 0, None).await;
    assert!(
        !senders(&again).contains(&bob.user_id),
        "expected bob's unchanged presence only once, got {again}"
    );
}

// Issue 14: every event served to a client carries the reader's membership at it
// (`unsigned.membership`): `leave` before they joined, `join` from their join on.
#[tokio::test]
async fn events_carry_the_readers_membership_at_them() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let before = alice.send_text(&room, "before bob").await;
    bob.join_ok(&room).await;
    let after = alice.send_text(&room, "after bob").await;

    let sync = bob.sync(None, 0, None).await;
    let timeline = room_timeline(&sync, &room);
    let mut joined = false;
    for ev in &timeline {
        if ev["type"] == "m.room.member" && ev["state_key"] == bob.user_id.as_str() {
            joined = true;
        }
        let want = if joined { "join" } else { "leave" };
        assert_eq!(
            ev["unsigned"]["membership"], want,
            "expected unsigned.membership {want} on {ev}"
        );
    }
    assert!(
        has_event_id(&timeline, &before) && has_event_id(&timeline, &after),
        "expected both messages in bob's timeline, got {sync}"
    );
    // The same through /event and /messages, and from alice's side.
    let ev = expect_ok(
        bob.get(&format!("/rooms/{}/event/{}", enc(&room), enc(&before)))
            .await,
        "GET /event",
    );
    assert_eq!(ev["unsigned"]["membership"], "leave", "got {ev}");
    let page = bob.messages(&room, &[("dir", "b"), ("limit", "1")]).await;
    assert_eq!(
        page["chunk"][0]["unsigned"]["membership"], "join",
        "got {page}"
    );
    let ev = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&before)))
            .await,
        "GET /event as alice",
    );
    assert_eq!(ev["unsigned"]["membership"], "join", "got {ev}");
}

// Issue 14: a state change the timeline filter leaves out still reaches the client, through
// `state` (Complement's TestSyncOmitsStateChangeOnFilteredEvents is the federated form).
#[tokio::test]
async fn state_changed_by_filtered_out_events_is_given_in_state() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "topic": "old" })).await;
    alice.send_text(&room, "a").await;
    alice.send_text(&room, "b").await;
    // After the last message the timeline will show.
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "new" }))
        .await;
    let filter = json!({
        "room": { "timeline": { "not_types": ["m.room.topic"], "limit": 1 } }
    })
    .to_string();
    let sync = alice.sync(None, 0, Some(&filter)).await;
    let timeline = room_timeline(&sync, &room);
    assert_eq!(timeline.len(), 1, "expected one message, got {sync}");
    assert_eq!(timeline[0]["content"]["body"], "b", "got {sync}");
    let state = room_state(&sync, &room);
    let topic = find_state(&state, "m.room.topic", "")
        .unwrap_or_else(|| panic!("expected the topic in state, got {sync}"));
    assert_eq!(topic["content"]["topic"], "new", "got {topic}");

    // Incremental: nothing in the timeline, the change in state.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "newer" }))
        .await;
    let sync = alice.sync(Some(&since), 0, Some(&filter)).await;
    assert!(
        room_timeline(&sync, &room).is_empty(),
        "expected no timeline events, got {sync}"
    );
    let state = room_state(&sync, &room);
    let topic = find_state(&state, "m.room.topic", "")
        .unwrap_or_else(|| panic!("expected the new topic in state, got {sync}"));
    assert_eq!(topic["content"]["topic"], "newer", "got {topic}");
    assert_eq!(state.len(), 1, "expected only what changed, got {sync}");
}

// Complement's TestUnbanViaInvite: an initial sync gives the rooms the user was banned or
// kicked from (their client should show it) without `include_leave`; a room they left
// themselves only with it.
#[tokio::test]
async fn initial_sync_gives_rooms_the_user_was_removed_from() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        let room = bob.create_room(&json!({ "preset": "public_chat" })).await;
        alice.join_ok(&room).await;
        rooms.push(room);
    }
    let (banned, kicked, left) = (&rooms[0], &rooms[1], &rooms[2]);
    let (status, body) = bob
        .post(
            &format!("/rooms/{}/ban", enc(banned)),
            &json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status.as_u16(), 200, "ban: {body}");
    let (status, body) = bob
        .post(
            &format!("/rooms/{}/kick", enc(kicked)),
            &json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status.as_u16(), 200, "kick: {body}");
    let (status, body) = alice
        .post(&format!("/rooms/{}/leave", enc(left)), &json!({}))
        .await;
    assert_eq!(status.as_u16(), 200, "leave: {body}");

    let sync = alice.sync(None, 0, None).await;
    let leave = &sync["rooms"]["leave"];
    for (room, what) in [(banned, "ban"), (kicked, "leave")] {
        let timeline = leave[room.as_str()]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            timeline.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == alice.user_id.as_str()
                && e["content"]["membership"] == what),
            "expected the {what} in rooms.leave, got {sync}"
        );
    }
    assert!(
        leave.get(left.as_str()).is_none(),
        "a room left by choice only with include_leave: {sync}"
    );
    let filter = json!({ "room": { "include_leave": true } }).to_string();
    let sync = alice.sync(None, 0, Some(&filter)).await;
    assert!(
        sync["rooms"]["leave"].get(left.as_str()).is_some(),
        "with include_leave: {sync}"
    );
}
