//! Typing notifications, read receipts, read markers and presence.

use paracord_complement::{
    enc, ephemeral, expect_ok, find_event, room_account_data, TestServer, User,
};
use serde_json::{json, Value};

async fn room_with_two(server: &TestServer) -> (User, User, String) {
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    (alice, bob, room)
}

fn typing_users(sync: &Value, room: &str) -> Option<Vec<String>> {
    let events = ephemeral(sync, room);
    let typing = find_event(&events, "m.typing")?;
    Some(
        typing["content"]["user_ids"]
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect(),
    )
}

/// The `m.receipt` entry `content[event_id][receipt_type][user]`, if present.
fn receipt(
    sync: &Value,
    room: &str,
    event_id: &str,
    receipt_type: &str,
    user: &str,
) -> Option<Value> {
    let events = ephemeral(sync, room);
    events
        .iter()
        .filter(|e| e["type"] == "m.receipt")
        .find_map(|e| e["content"][event_id][receipt_type].get(user).cloned())
}

fn mentions_private_receipts(sync: &Value, room: &str) -> bool {
    ephemeral(sync, room)
        .iter()
        .filter(|e| e["type"] == "m.receipt")
        .any(|e| {
            e["content"].as_object().is_some_and(|c| {
                c.values()
                    .any(|by_type| by_type.get("m.read.private").is_some())
            })
        })
}

#[tokio::test]
async fn typing_reaches_other_members_and_clears() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let path = format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let since = bob.sync_token().await;

    expect_ok(
        alice
            .put(&path, &json!({ "typing": true, "timeout": 30000 }))
            .await,
        "PUT typing true",
    );
    let seen = bob
        .sync_until(Some(&since), None, "alice is in m.typing", |s| {
            typing_users(s, &room).is_some_and(|u| u.contains(&alice.user_id))
        })
        .await;
    let since = seen["next_batch"].as_str().unwrap_or_default().to_owned();

    expect_ok(
        alice.put(&path, &json!({ "typing": false })).await,
        "PUT typing false",
    );
    bob.sync_until(Some(&since), None, "an m.typing without alice", |s| {
        typing_users(s, &room).is_some_and(|u| !u.contains(&alice.user_id))
    })
    .await;
}

#[tokio::test]
async fn read_receipts_appear_in_ephemeral() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let event = alice.send_text(&room, "read me").await;
    let since = alice.sync_token().await;

    expect_ok(
        bob.post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event)),
            &json!({}),
        )
        .await,
        "POST m.read receipt",
    );
    let sync = alice
        .sync_until(Some(&since), None, "bob's m.read receipt arrives", |s| {
            receipt(s, &room, &event, "m.read", &bob.user_id).is_some()
        })
        .await;
    let r = receipt(&sync, &room, &event, "m.read", &bob.user_id).unwrap_or_default();
    assert!(r["ts"].is_u64(), "expected a receipt timestamp, got {sync}");
}

#[tokio::test]
async fn private_read_receipts_are_visible_only_to_their_owner() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let first = alice.send_text(&room, "one").await;
    let second = alice.send_text(&room, "two").await;
    let alice_since = alice.sync_token().await;
    let bob_since = bob.sync_token().await;

    expect_ok(
        bob.post(
            &format!(
                "/rooms/{}/receipt/m.read.private/{}",
                enc(&room),
                enc(&first)
            ),
            &json!({}),
        )
        .await,
        "POST m.read.private receipt",
    );
    bob.sync_until(
        Some(&bob_since),
        None,
        "bob sees his own private receipt",
        |s| receipt(s, &room, &first, "m.read.private", &bob.user_id).is_some(),
    )
    .await;

    // A later public receipt is the marker that alice's sync has caught up.
    expect_ok(
        bob.post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&second)),
            &json!({}),
        )
        .await,
        "POST m.read receipt",
    );
    let sync = alice
        .sync_until(
            Some(&alice_since),
            None,
            "bob's public receipt arrives",
            |s| {
                receipt(s, &room, &second, "m.read", &bob.user_id).is_some()
                    || mentions_private_receipts(s, &room)
            },
        )
        .await;
    assert!(
        !mentions_private_receipts(&sync, &room),
        "expected alice never to see bob's m.read.private, got {sync}"
    );
    let initial = alice.sync(None, 0, None).await;
    assert!(
        !mentions_private_receipts(&initial, &room),
        "expected no m.read.private for alice in an initial sync, got {initial}"
    );
}

#[tokio::test]
async fn read_markers_set_fully_read_account_data() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let event = alice.send_text(&room, "marker").await;
    let since = alice.sync_token().await;

    expect_ok(
        bob.post(
            &format!("/rooms/{}/read_markers", enc(&room)),
            &json!({ "m.fully_read": event, "m.read": event }),
        )
        .await,
        "POST /read_markers",
    );
    let marker = expect_ok(
        bob.get(&format!(
            "/user/{}/rooms/{}/account_data/m.fully_read",
            enc(&bob.user_id),
            enc(&room)
        ))
        .await,
        "GET m.fully_read account data",
    );
    assert_eq!(
        marker["event_id"],
        event.as_str(),
        "expected m.fully_read to point at the event, got {marker}"
    );

    let own = bob.sync(None, 0, None).await;
    let data = room_account_data(&own, &room);
    let fully = find_event(&data, "m.fully_read")
        .unwrap_or_else(|| panic!("expected m.fully_read in room account data, got {own}"));
    assert_eq!(
        fully["content"]["event_id"],
        event.as_str(),
        "expected the marker in sync, got {fully}"
    );

    alice
        .sync_until(
            Some(&since),
            None,
            "the m.read from read_markers arrives",
            |s| receipt(s, &room, &event, "m.read", &bob.user_id).is_some(),
        )
        .await;
}

#[tokio::test]
async fn presence_status_round_trips() {
    let server = TestServer::start().await;
    let (alice, bob, _room) = room_with_two(&server).await;
    let path = format!("/presence/{}/status", enc(&alice.user_id));

    expect_ok(
        alice
            .put(
                &path,
                &json!({ "presence": "online", "status_msg": "Busy coding" }),
            )
            .await,
        "PUT presence online",
    );
    let mine = expect_ok(alice.get(&path).await, "GET own presence");
    assert_eq!(
        mine["presence"], "online",
        "expected presence online, got {mine}"
    );
    assert_eq!(
        mine["status_msg"], "Busy coding",
        "expected the status message, got {mine}"
    );

    let seen = expect_ok(
        bob.get(&path).await,
        "GET presence of a user sharing a room",
    );
    assert_eq!(
        seen["presence"], "online",
        "expected bob to see alice online, got {seen}"
    );

    expect_ok(
        alice
            .put(&path, &json!({ "presence": "unavailable" }))
            .await,
        "PUT presence unavailable",
    );
    let away = expect_ok(
        alice.get(&path).await,
        "GET presence after going unavailable",
    );
    assert_eq!(
        away["presence"], "unavailable",
        "expected presence unavailable, got {away}"
    );
}

// Issue 14: an unthreaded and a threaded receipt of one user on the same event are both kept
// and both reach sync (MSC4102): the unthreaded one in the receipt event a client reads first,
// the threaded one after it.
#[tokio::test]
async fn unthreaded_and_threaded_receipts_on_one_event_are_both_delivered() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let root = alice.send_text(&room, "root").await;
    let reply = alice
        .send_event(
            &room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": "in thread",
                "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
        )
        .await;
    let path = format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&reply));
    expect_ok(alice.post(&path, &json!({})).await, "unthreaded receipt");
    expect_ok(
        alice.post(&path, &json!({ "thread_id": root })).await,
        "threaded receipt",
    );

    for reader in [&alice, &bob] {
        let sync = reader.sync(None, 0, None).await;
        let receipts: Vec<Value> = ephemeral(&sync, &room)
            .into_iter()
            .filter(|e| e["type"] == "m.receipt")
            .filter_map(|e| e["content"][&reply]["m.read"].get(&alice.user_id).cloned())
            .collect();
        assert_eq!(
            receipts.len(),
            2,
            "expected both of alice's receipts on the reply, got {sync}"
        );
        assert!(
            receipts[0].get("thread_id").is_none(),
            "expected the unthreaded receipt first, got {receipts:?}"
        );
        assert_eq!(
            receipts[1]["thread_id"],
            root.as_str(),
            "expected the threaded receipt second, got {receipts:?}"
        );
    }
}
