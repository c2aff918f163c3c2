//! Relations: reactions, edits, threads and references; `/relations` and `/threads`, bundled
//! aggregations, and what redaction does to them.

use paracord_complement::{enc, expect_error, expect_ok, StatusCode, TestServer, User};
use serde_json::{json, Value};

fn rel(rel_type: &str, target: &str) -> Value {
    json!({ "rel_type": rel_type, "event_id": target })
}

async fn react(user: &User, room: &str, target: &str, key: &str) -> (StatusCode, Value) {
    let mut r = rel("m.annotation", target);
    r["key"] = json!(key);
    user.send_with_txn(room, "m.reaction", &txn(), &json!({ "m.relates_to": r }))
        .await
}

fn txn() -> String {
    paracord_complement::Client::txn_id()
}

async fn relations(user: &User, room: &str, event: &str, rest: &str) -> Value {
    expect_ok(
        user.get(&format!(
            "/_matrix/client/v1/rooms/{}/relations/{}{rest}",
            enc(room),
            enc(event)
        ))
        .await,
        "GET /relations",
    )
}

fn ids(v: &Value) -> Vec<String> {
    v["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn two_users_in_a_room(server: &TestServer) -> (User, User, String) {
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    (alice, bob, room)
}

#[tokio::test]
async fn the_same_reaction_twice_by_one_user_is_rejected() {
    let server = TestServer::start().await;
    let (alice, bob, room) = two_users_in_a_room(&server).await;
    let target = alice.send_text(&room, "react to me").await;
    expect_ok(react(&bob, &room, &target, "👍").await, "first reaction");
    let again = react(&bob, &room, &target, "👍").await;
    expect_error(
        &again,
        StatusCode::BAD_REQUEST,
        "M_DUPLICATE_ANNOTATION",
        "same key twice",
    );
    expect_ok(react(&bob, &room, &target, "🎉").await, "another key");
    expect_ok(
        react(&alice, &room, &target, "👍").await,
        "same key, other user",
    );
    let listed = relations(&alice, &room, &target, "/m.annotation").await;
    assert_eq!(ids(&listed).len(), 3, "three reactions listed: {listed}");
}

#[tokio::test]
async fn redacting_a_reaction_removes_it_and_allows_it_again() {
    let server = TestServer::start().await;
    let (alice, bob, room) = two_users_in_a_room(&server).await;
    let target = alice.send_text(&room, "react to me").await;
    let reaction = expect_ok(react(&bob, &room, &target, "👍").await, "reaction");
    let reaction_id = reaction["event_id"].as_str().unwrap().to_owned();
    expect_ok(
        bob.put(
            &format!(
                "/rooms/{}/redact/{}/{}",
                enc(&room),
                enc(&reaction_id),
                txn()
            ),
            &json!({}),
        )
        .await,
        "redact the reaction",
    );
    let listed = relations(&alice, &room, &target, "").await;
    assert!(
        ids(&listed).is_empty(),
        "the redacted reaction is gone: {listed}"
    );
    expect_ok(
        react(&bob, &room, &target, "👍").await,
        "reacting again after the redaction",
    );
}

/// Issue 14: an invalid edit (by another sender, of an edit) is accepted as an event — the
/// spec has servers ignore it when aggregating, not refuse it — and never bundled.
#[tokio::test]
async fn edits_are_bundled_and_only_the_senders_count() {
    let server = TestServer::start().await;
    let (alice, bob, room) = two_users_in_a_room(&server).await;
    let original = alice.send_text(&room, "helo").await;
    let edit = |body: &str, target: &str| {
        json!({
            "msgtype": "m.text",
            "body": format!("* {body}"),
            "m.new_content": { "msgtype": "m.text", "body": body },
            "m.relates_to": rel("m.replace", target),
        })
    };
    let first_edit = alice
        .send_event(&room, "m.room.message", &edit("hello", &original))
        .await;
    let second_edit = alice
        .send_event(&room, "m.room.message", &edit("hello!", &original))
        .await;
    // Newer than alice's edits, but by bob: ignored.
    let by_bob = bob
        .send_event(&room, "m.room.message", &edit("hijack", &original))
        .await;
    // An edit of an edit: ignored too.
    let edit_of_edit = alice
        .send_event(&room, "m.room.message", &edit("nested", &first_edit))
        .await;

    let get = |id: String| {
        let bob = &bob;
        let room = &room;
        async move {
            expect_ok(
                bob.get(&format!("/rooms/{}/event/{}", enc(room), enc(&id)))
                    .await,
                "GET an event",
            )
        }
    };
    let event = get(original.clone()).await;
    let bundled = &event["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(
        bundled["event_id"], second_edit,
        "the latest valid edit is bundled in full, not bob's {by_bob}: {event}"
    );
    assert_eq!(
        bundled["content"]["m.new_content"]["body"], "hello!",
        "{event}"
    );
    assert_eq!(
        event["content"]["body"], "helo",
        "the original content is not replaced: {event}"
    );
    let first = get(first_edit.clone()).await;
    assert!(
        first["unsigned"]["m.relations"]["m.replace"].is_null(),
        "an edit of an edit ({edit_of_edit}) is not bundled: {first}"
    );
}

#[tokio::test]
async fn threads_count_replies_and_list_roots() {
    let server = TestServer::start().await;
    let (alice, bob, room) = two_users_in_a_room(&server).await;
    let root_a = alice.send_text(&room, "thread A").await;
    let root_b = alice.send_text(&room, "thread B").await;
    let reply = |body: &str, root: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": rel("m.thread", root) });
    bob.send_event(&room, "m.room.message", &reply("b1", &root_b))
        .await;
    alice
        .send_event(&room, "m.room.message", &reply("a1", &root_a))
        .await;
    let last_a = bob
        .send_event(&room, "m.room.message", &reply("a2", &root_a))
        .await;
    // A thread cannot hang off a thread reply.
    let nested = bob
        .send_with_txn(&room, "m.room.message", &txn(), &reply("nested", &last_a))
        .await;
    assert!(
        nested.0.is_client_error(),
        "no thread from a reply: {nested:?}"
    );

    let root = expect_ok(
        bob.get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root_a)))
            .await,
        "GET thread root",
    );
    let summary = &root["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{root}");
    assert_eq!(summary["latest_event"]["event_id"], last_a, "{root}");
    assert_eq!(
        summary["current_user_participated"], true,
        "bob replied: {root}"
    );

    let threads = expect_ok(
        bob.get(&format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)))
            .await,
        "GET /threads",
    );
    assert_eq!(
        ids(&threads),
        vec![root_a.clone(), root_b.clone()],
        "most recent first: {threads}"
    );

    let carol = server.register_random().await;
    carol.join_ok(&room).await;
    carol
        .send_event(&room, "m.room.message", &reply("c1", &root_b))
        .await;
    let mine = expect_ok(
        carol
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/threads?include=participated",
                enc(&room)
            ))
            .await,
        "GET /threads participated",
    );
    assert_eq!(
        ids(&mine),
        vec![root_b.clone()],
        "carol took part only in B: {mine}"
    );

    let replies = relations(&alice, &room, &root_a, "/m.thread?dir=f").await;
    assert_eq!(ids(&replies).len(), 2, "{replies}");
    assert_eq!(
        ids(&replies)[1],
        last_a,
        "forwards, oldest first: {replies}"
    );
}

#[tokio::test]
async fn relations_paginate_with_tokens_and_filter_by_type() {
    let server = TestServer::start().await;
    let (alice, _bob, room) = two_users_in_a_room(&server).await;
    let target = alice.send_text(&room, "referenced").await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let id = alice
            .send_event(
                &room,
                "org.example.note",
                &json!({ "n": i, "m.relates_to": rel("m.reference", &target) }),
            )
            .await;
        sent.push(id);
    }
    alice
        .send_event(&room, "m.room.message", &json!({ "body": "r", "msgtype": "m.text", "m.relates_to": rel("m.reference", &target) }))
        .await;
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let q = match &from {
            Some(f) => format!("/m.reference/org.example.note?limit=3&from={}", enc(f)),
            None => "/m.reference/org.example.note?limit=3".to_owned(),
        };
        let page = relations(&alice, &room, &target, &q).await;
        let got = ids(&page);
        assert!(got.len() <= 3, "limit honoured: {page}");
        seen.extend(got);
        match page["next_batch"].as_str() {
            Some(n) => from = Some(n.to_owned()),
            None => break,
        }
    }
    let mut expected = sent.clone();
    expected.reverse();
    assert_eq!(seen, expected, "every note once, newest first");

    let event = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&target)))
            .await,
        "GET referenced event",
    );
    let chunk = event["unsigned"]["m.relations"]["m.reference"]["chunk"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(chunk.len(), 8, "references bundled: {event}");
}

#[tokio::test]
async fn relations_to_unknown_events_are_refused_and_hidden_rooms_unreadable() {
    let server = TestServer::start().await;
    let (alice, _bob, room) = two_users_in_a_room(&server).await;
    let bad = alice
        .send_with_txn(
            &room,
            "m.reaction",
            &txn(),
            &json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": "$doesnotexist", "key": "x" } }),
        )
        .await;
    assert!(bad.0.is_client_error(), "unknown target: {bad:?}");
    let target = alice.send_text(&room, "secret-ish").await;
    let outsider = server.register_random().await;
    let private = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let private_target = alice.send_text(&private, "private").await;
    let resp = outsider
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/relations/{}",
            enc(&private),
            enc(&private_target)
        ))
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "outsider reads relations of a private room",
    );
    let _ = target;
}
