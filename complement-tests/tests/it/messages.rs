//! Sending (transaction ids), /messages pagination and filters, /context,
//! /event and redactions.

use paracord_complement::{bodies, enc, expect_error, expect_ok, StatusCode, TestServer};
use serde_json::{json, Value};

fn chunk(page: &Value) -> Vec<Value> {
    page["chunk"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn same_txn_id_on_the_same_device_sends_once() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let content = json!({ "msgtype": "m.text", "body": "exactly once" });

    let first = expect_ok(
        alice
            .send_with_txn(&room, "m.room.message", "dup-1", &content)
            .await,
        "first send",
    );
    let second = expect_ok(
        alice
            .send_with_txn(&room, "m.room.message", "dup-1", &content)
            .await,
        "retransmitted send",
    );
    assert!(
        first["event_id"].is_string(),
        "expected an event_id, got {first}"
    );
    assert_eq!(
        first["event_id"], second["event_id"],
        "expected the retransmission to return the same event_id, got {first} then {second}"
    );

    let timeline = alice.all_messages(&room).await;
    let copies = bodies(&timeline)
        .iter()
        .filter(|b| *b == "exactly once")
        .count();
    assert_eq!(
        copies, 1,
        "expected one event for a retransmitted txn id, got {timeline:?}"
    );
}

#[tokio::test]
async fn same_txn_id_on_another_device_sends_a_new_event() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let phone = server.login(&alice.localpart, &alice.password).await;
    let room = alice.create_room(&json!({})).await;
    let content = json!({ "msgtype": "m.text", "body": "per device" });

    let a = expect_ok(
        alice
            .send_with_txn(&room, "m.room.message", "shared-txn", &content)
            .await,
        "send from device 1",
    );
    let b = expect_ok(
        phone
            .send_with_txn(&room, "m.room.message", "shared-txn", &content)
            .await,
        "send from device 2",
    );
    assert_ne!(
        a["event_id"], b["event_id"],
        "expected distinct events for the same txn id on two devices, got {a} and {b}"
    );

    let timeline = alice.all_messages(&room).await;
    let copies = bodies(&timeline)
        .iter()
        .filter(|b| *b == "per device")
        .count();
    assert_eq!(
        copies, 2,
        "expected both devices' events in the timeline, got {timeline:?}"
    );
}

#[tokio::test]
async fn messages_paginate_25_events_backwards_and_forwards_in_pages_of_10() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let before = alice.sync_token().await;
    let sent: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..25 {
            alice.send_text(&room, &format!("msg {i}")).await;
            v.push(format!("msg {i}"));
        }
        v
    };

    // Backwards from the end of the room (no `from`, allowed since v1.3).
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(
            pages <= 20,
            "expected backwards pagination to end, collected {seen:?}"
        );
        let mut params = vec![("dir", "b"), ("limit", "10")];
        if let Some(f) = &from {
            params.push(("from", f.as_str()));
        }
        let page = alice.messages(&room, &params).await;
        let events = chunk(&page);
        assert!(
            events.len() <= 10,
            "expected at most `limit` events, got {page}"
        );
        if let Some(f) = &from {
            assert_eq!(
                page["start"],
                f.as_str(),
                "expected `start` to echo `from`, got {page}"
            );
        }
        match pages {
            1 => assert_eq!(
                bodies(&events),
                sent[15..].iter().rev().cloned().collect::<Vec<_>>(),
                "expected the 10 newest messages newest first, got {page}"
            ),
            2 => assert_eq!(
                bodies(&events),
                sent[5..15].iter().rev().cloned().collect::<Vec<_>>(),
                "expected messages 14..5 on page 2, got {page}"
            ),
            _ => {}
        }
        seen.extend(bodies(&events));
        match page["end"].as_str() {
            Some(end) if !events.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    seen.reverse();
    assert_eq!(
        seen, sent,
        "expected all 25 messages exactly once, in order, paginating backwards"
    );

    // Forwards from a sync token taken before the first message.
    let mut seen = Vec::new();
    let mut from = before;
    for page_no in 1.. {
        assert!(
            page_no <= 20,
            "expected forward pagination to reach the end, collected {seen:?}"
        );
        let page = alice
            .messages(&room, &[("dir", "f"), ("limit", "10"), ("from", &from)])
            .await;
        let events = chunk(&page);
        assert!(
            events.len() <= 10,
            "expected at most `limit` events, got {page}"
        );
        seen.extend(bodies(&events));
        match page["end"].as_str() {
            Some(end) if !events.is_empty() => from = end.to_owned(),
            _ => break,
        }
    }
    assert_eq!(
        seen, sent,
        "expected all 25 messages exactly once, oldest first, paginating forwards"
    );
}

#[tokio::test]
async fn messages_filter_by_types_and_not_types() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    for i in 0..2 {
        alice.send_text(&room, &format!("text {i}")).await;
        alice
            .send_event(&room, "org.example.ping", &json!({ "n": i }))
            .await;
    }

    let only = json!({ "types": ["org.example.ping"] }).to_string();
    let page = alice
        .messages(&room, &[("dir", "b"), ("limit", "50"), ("filter", &only)])
        .await;
    // Issue 14: a page with events has an `end`, even when the filter left fewer than the
    // limit; the page after the last is empty and has none.
    let end = page["end"]
        .as_str()
        .unwrap_or_else(|| panic!("`end`: {page}"))
        .to_owned();
    let last = alice
        .messages(
            &room,
            &[
                ("dir", "b"),
                ("limit", "50"),
                ("filter", &only),
                ("from", &end),
            ],
        )
        .await;
    assert!(
        chunk(&last).is_empty() && last.get("end").is_none(),
        "{last}"
    );
    let events = chunk(&page);
    assert_eq!(
        events.len(),
        2,
        "expected exactly the two ping events, got {page}"
    );
    assert!(
        events.iter().all(|e| e["type"] == "org.example.ping"),
        "expected only org.example.ping, got {page}"
    );

    let not = json!({ "not_types": ["m.room.message"] }).to_string();
    let page = alice
        .messages(&room, &[("dir", "b"), ("limit", "50"), ("filter", &not)])
        .await;
    let events = chunk(&page);
    assert!(
        events.iter().all(|e| e["type"] != "m.room.message"),
        "expected no m.room.message, got {page}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "org.example.ping")
            .count(),
        2,
        "expected the pings to remain, got {page}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.create"),
        "expected other events such as m.room.create to remain, got {page}"
    );
}

#[tokio::test]
async fn context_returns_surrounding_events_and_state() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(alice.send_text(&room, &format!("ctx {i}")).await);
    }

    let path = format!("/rooms/{}/context/{}?limit=4", enc(&room), enc(&ids[3]));
    let ctx = expect_ok(alice.get(&path).await, "GET /context");
    assert_eq!(
        ctx["event"]["event_id"],
        ids[3].as_str(),
        "expected the requested event, got {ctx}"
    );
    assert_eq!(
        ctx["event"]["content"]["body"], "ctx 3",
        "expected the requested event's content, got {ctx}"
    );
    let before = ctx["events_before"].as_array().cloned().unwrap_or_default();
    let after = ctx["events_after"].as_array().cloned().unwrap_or_default();
    assert!(
        !before.is_empty() && !after.is_empty(),
        "expected events on both sides, got {ctx}"
    );
    assert!(
        before.len() + after.len() <= 4,
        "expected limit to cap events_before + events_after, got {ctx}"
    );
    assert_eq!(
        before[0]["event_id"],
        ids[2].as_str(),
        "expected events_before newest first starting at ctx 2, got {ctx}"
    );
    assert_eq!(
        after[0]["event_id"],
        ids[4].as_str(),
        "expected events_after starting at ctx 4, got {ctx}"
    );
    let state = ctx["state"].as_array().cloned().unwrap_or_default();
    assert!(
        state.iter().any(|e| e["type"] == "m.room.create"),
        "expected room state with m.room.create, got {ctx}"
    );
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()),
        "expected the sender's membership in the context state, got {ctx}"
    );
}

#[tokio::test]
async fn single_events_can_be_fetched_by_id() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let id = alice.send_text(&room, "fetch me").await;

    let ev = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&id)))
            .await,
        "GET /event/{eventId}",
    );
    assert_eq!(
        ev["event_id"],
        id.as_str(),
        "expected the event id, got {ev}"
    );
    assert_eq!(
        ev["room_id"],
        room.as_str(),
        "expected the room id, got {ev}"
    );
    assert_eq!(ev["type"], "m.room.message", "expected the type, got {ev}");
    assert_eq!(ev["sender"], alice.user_id, "expected the sender, got {ev}");
    assert_eq!(
        ev["content"]["body"], "fetch me",
        "expected the content, got {ev}"
    );
    assert!(
        ev["origin_server_ts"].is_u64(),
        "expected origin_server_ts, got {ev}"
    );

    let unknown = format!("${}", "A".repeat(43));
    let missing = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&unknown)))
        .await;
    expect_error(
        &missing,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "fetching an unknown event",
    );
}

#[tokio::test]
async fn redaction_empties_content_and_records_redacted_because() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let target = alice.send_text(&room, "oops, a secret").await;

    let path = format!(
        "/rooms/{}/redact/{}/{}",
        enc(&room),
        enc(&target),
        "redact-1"
    );
    let resp = expect_ok(
        alice.put(&path, &json!({ "reason": "leaked" })).await,
        "PUT /redact",
    );
    let redaction = resp["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected the redaction's event_id, got {resp}"));
    let again = expect_ok(
        alice.put(&path, &json!({ "reason": "leaked" })).await,
        "retransmitted PUT /redact",
    );
    assert_eq!(
        again["event_id"], redaction,
        "expected the redaction txn id to be idempotent, got {again}"
    );

    let ev = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&target)))
            .await,
        "GET the redacted event",
    );
    assert_eq!(
        ev["content"],
        json!({}),
        "expected redacted message content to be empty, got {ev}"
    );
    assert_eq!(
        ev["type"], "m.room.message",
        "expected the type to survive redaction, got {ev}"
    );
    let because = &ev["unsigned"]["redacted_because"];
    assert_eq!(
        because["event_id"], redaction,
        "expected unsigned.redacted_because to be the redaction, got {ev}"
    );
    assert_eq!(
        because["type"], "m.room.redaction",
        "expected redacted_because of type m.room.redaction, got {ev}"
    );
    assert!(
        because["content"]["redacts"] == target.as_str() || because["redacts"] == target.as_str(),
        "expected the redaction to name its target, got {ev}"
    );

    let timeline = alice.all_messages(&room).await;
    let in_timeline = timeline
        .iter()
        .find(|e| e["event_id"] == target.as_str())
        .unwrap_or_else(|| {
            panic!("expected the redacted event to stay in /messages, got {timeline:?}")
        });
    assert_eq!(
        in_timeline["content"],
        json!({}),
        "expected /messages to serve the redacted content, got {in_timeline}"
    );
}

#[tokio::test]
async fn redacting_someone_elses_event_needs_power() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let alices = alice.send_text(&room, "alice's words").await;
    let bobs = bob.send_text(&room, "bob's words").await;

    let denied = bob
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&alices)),
            &json!({}),
        )
        .await;
    expect_error(
        &denied,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a power-0 member redacting another's event",
    );
    let ev = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&alices)))
            .await,
        "GET after the refused redaction",
    );
    assert_eq!(
        ev["content"]["body"], "alice's words",
        "expected the content untouched, got {ev}"
    );

    expect_ok(
        bob.put(
            &format!("/rooms/{}/redact/{}/r2", enc(&room), enc(&bobs)),
            &json!({}),
        )
        .await,
        "redacting one's own event",
    );
    expect_ok(
        alice
            .put(
                &format!("/rooms/{}/redact/{}/r3", enc(&room), enc(&bobs)),
                &json!({}),
            )
            .await,
        "the creator redacting another's event",
    );
}
