//! Rooms across servers: a user of one Paracord server joins a room on another
//! (make_join/send_join), the room's state arrives verified, and events flow both ways
//! through the federation sender and incoming transactions.

use paracord_complement::{
    enc, expect_ok, federation::federating_server, find_state, joined_room, room_state,
    room_timeline,
};
use serde_json::{json, Value};

#[tokio::test]
async fn a_user_of_another_server_joins_and_sees_the_room_state() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Across" }))
        .await;
    alice.send_text(&room, "before bob").await;
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins through A: {body}");
    // B has the room with its state: the name set on A, alice and bob joined.
    let sync = bob.sync(None, 0, None).await;
    assert!(
        joined_room(&sync, &room).is_some(),
        "expected the room in bob's sync: {sync}"
    );
    let name = expect_ok(
        bob.get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
            .await,
        "room name on B",
    );
    assert_eq!(name["name"], "Across");
    let members = expect_ok(
        bob.get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await,
        "joined members on B",
    );
    assert!(
        members["joined"][&alice.user_id].is_object(),
        "got {members}"
    );
    assert!(members["joined"][&bob.user_id].is_object(), "got {members}");
    // A accepted the join.
    let m = expect_ok(
        alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await,
        "bob's membership on A",
    );
    assert_eq!(m["membership"], "join", "got {m}");
    let state = room_state(&sync, &room);
    let timeline = room_timeline(&sync, &room);
    let all: Vec<Value> = state.into_iter().chain(timeline).collect();
    assert!(
        find_state(&all, "m.room.create", "").is_some(),
        "got {sync}"
    );
}

#[tokio::test]
async fn joining_a_room_that_does_not_allow_it_is_refused() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 403, "an invite-only room: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "got {body}");
    let sync = bob.sync(None, 0, None).await;
    assert!(joined_room(&sync, &room).is_none(), "got {sync}");
}

#[tokio::test]
async fn an_invite_to_a_user_of_another_server_can_be_accepted_or_rejected() {
    let (a, _) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let carol = b.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Invitation only" }))
        .await;
    alice.invite_ok(&room, &bob.user_id).await;
    alice.invite_ok(&room, &carol.user_id).await;
    // Bob sees the invite with the room's name, sent along by A.
    let sync = bob
        .sync_until(None, None, "bob is invited", |s| {
            s["rooms"]["invite"].get(&room).is_some()
        })
        .await;
    let invite_state = sync["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        invite_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invitation only"),
        "got {sync}"
    );
    assert!(
        invite_state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
        "got {sync}"
    );
    // Carol rejects while B shares no room with A: A hears of it through
    // make_leave/send_leave.
    carol.leave_ok(&room).await;
    let m = expect_ok(
        alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&carol.user_id)
            ))
            .await,
        "carol's membership on A",
    );
    assert_eq!(m["membership"], "leave", "got {m}");
    let sync = carol.sync(None, 0, None).await;
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "got {sync}");
    // Joining needs no via: the invite says where the room is.
    bob.join_ok(&room).await;
    let m = expect_ok(
        alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await,
        "bob's membership on A",
    );
    assert_eq!(m["membership"], "join", "got {m}");
}

/// Whether `sync` has an event of `sender` with body `body` in `room`'s timeline.
fn has_text(sync: &Value, room: &str, sender: &str, body: &str) -> bool {
    room_timeline(sync, room)
        .iter()
        .any(|e| e["sender"] == sender && e["content"]["body"] == body)
}

#[tokio::test]
async fn messages_edits_and_reactions_flow_both_ways() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins: {body}");
    let alice_since = alice.sync_token().await;
    let bob_since = bob.sync_token().await;
    // A → B
    let hello = alice.send_text(&room, "hello from A").await;
    bob.sync_until(Some(&bob_since), None, "alice's message reaches B", |s| {
        has_text(s, &room, &alice.user_id, "hello from A")
    })
    .await;
    // B → A, a reaction to alice's message and an edit of bob's own
    let reply = bob.send_text(&room, "hello from B").await;
    bob.send_event(
        &room,
        "m.reaction",
        &json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": hello, "key": "👍" } }),
    )
    .await;
    bob.send_event(
        &room,
        "m.room.message",
        &json!({
            "msgtype": "m.text", "body": "* hello from B, edited",
            "m.new_content": { "msgtype": "m.text", "body": "hello from B, edited" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": reply },
        }),
    )
    .await;
    let seen = std::cell::RefCell::new(Vec::new());
    alice
        .sync_until(
            Some(&alice_since),
            None,
            "bob's message, reaction and edit reach A",
            |s| {
                seen.borrow_mut().extend(room_timeline(s, &room));
                let t = seen.borrow();
                t.iter().any(|e| {
                    e["sender"] == bob.user_id.as_str() && e["content"]["body"] == "hello from B"
                }) && t.iter().any(|e| e["type"] == "m.reaction")
                    && t.iter()
                        .any(|e| e["content"]["m.new_content"]["body"] == "hello from B, edited")
            },
        )
        .await;
    // Both servers have the same timeline, in the same order.
    let on_a: Vec<String> = paracord_complement::bodies(&alice.all_messages(&room).await);
    let on_b: Vec<String> = paracord_complement::bodies(&bob.all_messages(&room).await);
    assert_eq!(on_a, on_b, "the two servers' timelines differ");
    // The annotation is aggregated on A like a local one.
    let relations = expect_ok(
        alice
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/relations/{}/m.annotation",
                enc(&room),
                enc(&hello)
            ))
            .await,
        "relations of alice's message on A",
    );
    assert_eq!(
        relations["chunk"].as_array().map(Vec::len),
        Some(1),
        "got {relations}"
    );
    // Bob leaves: A sees it.
    bob.leave_ok(&room).await;
    let deadline = std::time::Instant::now() + paracord_complement::WAIT;
    loop {
        let (_, m) = alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await;
        if m["membership"] == "leave" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob's leave never reached A: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Alice on A and bob on B in a room of A.
async fn two_servers_one_room() -> (
    paracord_complement::TestServer,
    paracord_complement::TestServer,
    paracord_complement::User,
    paracord_complement::User,
    String,
) {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins: {body}");
    (a, b, alice, bob, room)
}

fn typing_users(sync: &Value, room: &str) -> Vec<String> {
    paracord_complement::ephemeral(sync, room)
        .iter()
        .filter(|e| e["type"] == "m.typing")
        .flat_map(|e| {
            e["content"]["user_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn typing_and_read_receipts_cross_servers_both_ways() {
    let (_a, _b, alice, bob, room) = two_servers_one_room().await;
    let since = bob.sync_token().await;
    expect_ok(
        alice
            .put(
                &format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
                &json!({ "typing": true, "timeout": 20000 }),
            )
            .await,
        "alice types",
    );
    bob.sync_until(Some(&since), None, "alice typing reaches B", |s| {
        typing_users(s, &room).contains(&alice.user_id)
    })
    .await;
    let since = alice.sync_token().await;
    expect_ok(
        bob.put(
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
            &json!({ "typing": true, "timeout": 20000 }),
        )
        .await,
        "bob types",
    );
    alice
        .sync_until(Some(&since), None, "bob typing reaches A", |s| {
            typing_users(s, &room).contains(&bob.user_id)
        })
        .await;
    // Read receipts: bob reads alice's message; alice reads bob's.
    let from_alice = alice.send_text(&room, "read me").await;
    bob.sync_until(None, None, "alice's message reaches B", |s| {
        has_text(s, &room, &alice.user_id, "read me")
    })
    .await;
    let since = alice.sync_token().await;
    expect_ok(
        bob.post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&from_alice)),
            &json!({}),
        )
        .await,
        "bob's receipt",
    );
    alice
        .sync_until(Some(&since), None, "bob's receipt reaches A", |s| {
            paracord_complement::ephemeral(s, &room).iter().any(|e| {
                e["type"] == "m.receipt"
                    && e["content"][&from_alice]["m.read"][&bob.user_id].is_object()
            })
        })
        .await;
    let from_bob = bob.send_text(&room, "and me").await;
    alice
        .sync_until(None, None, "bob's message reaches A", |s| {
            has_text(s, &room, &bob.user_id, "and me")
        })
        .await;
    let since = bob.sync_token().await;
    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&from_bob)),
                &json!({}),
            )
            .await,
        "alice's receipt",
    );
    bob.sync_until(Some(&since), None, "alice's receipt reaches B", |s| {
        paracord_complement::ephemeral(s, &room).iter().any(|e| {
            e["type"] == "m.receipt"
                && e["content"][&from_bob]["m.read"][&alice.user_id].is_object()
        })
    })
    .await;
}

#[tokio::test]
async fn to_device_messages_and_device_list_changes_cross_servers() {
    let (_a, b, alice, bob, room) = two_servers_one_room().await;
    let _ = room;
    let bob_device = bob.device_id.clone();
    let since = bob.sync_token().await;
    expect_ok(
        alice
            .put(
                &format!(
                    "/sendToDevice/m.test/{}",
                    paracord_complement::Client::txn_id()
                ),
                &json!({ "messages": { &bob.user_id: { &bob_device: { "hello": "from A" } } } }),
            )
            .await,
        "alice sends to bob's device",
    );
    bob.sync_until(
        Some(&since),
        None,
        "the to-device message reaches bob",
        |s| {
            s["to_device"]["events"].as_array().is_some_and(|evs| {
                evs.iter().any(|e| {
                    e["type"] == "m.test"
                        && e["sender"] == alice.user_id.as_str()
                        && e["content"]["hello"] == "from A"
                })
            })
        },
    )
    .await;
    // Bob's device uploads its keys: alice is told his device list changed, and sees the
    // keys when she asks (over federation).
    let since = alice.sync_token().await;
    let device = paracord_complement::e2ee::FakeDevice::new(&bob.user_id, &bob_device);
    expect_ok(
        bob.post(
            "/keys/upload",
            &json!({ "device_keys": device.device_keys() }),
        )
        .await,
        "bob uploads device keys",
    );
    alice
        .sync_until(
            Some(&since),
            None,
            "bob's device list change reaches A",
            |s| {
                s["device_lists"]["changed"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|u| u == bob.user_id.as_str()))
            },
        )
        .await;
    let keys = expect_ok(
        alice
            .post(
                "/keys/query",
                &json!({ "device_keys": { &bob.user_id: [] } }),
            )
            .await,
        "alice queries bob's keys",
    );
    assert_eq!(
        keys["device_keys"][&bob.user_id][&bob_device]["keys"],
        device.device_keys()["keys"],
        "got {keys}"
    );
    let _ = b;
}

#[tokio::test]
async fn a_third_server_joins_later_sees_history_and_hears_everyone() {
    let (_a, _b, alice, bob, room) = two_servers_one_room().await;
    let (c, _) = federating_server().await;
    let carol = c.register_random().await;
    alice.send_text(&room, "early from A").await;
    bob.send_text(&room, "early from B").await;
    // Wait until A has bob's message, so that it is history when carol joins through A.
    alice
        .sync_until(None, None, "bob's message reaches A", |s| {
            has_text(s, &room, &bob.user_id, "early from B")
        })
        .await;
    let a_name = alice
        .user_id
        .split_once(':')
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    let (status, body) = carol
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "carol joins through A: {body}");
    // Carol sees what was said before she came.
    let history = paracord_complement::bodies(&carol.all_messages(&room).await);
    assert!(
        history.iter().any(|b| b == "early from A") && history.iter().any(|b| b == "early from B"),
        "carol's history: {history:?}"
    );
    // B learns of carol's join (from A) and sends to C directly afterwards.
    let since = carol.sync_token().await;
    let deadline = std::time::Instant::now() + paracord_complement::WAIT;
    loop {
        let members = expect_ok(
            bob.get(&format!("/rooms/{}/joined_members", enc(&room)))
                .await,
            "members on B",
        );
        if members["joined"][&carol.user_id].is_object() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never saw carol join: {members}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bob.send_text(&room, "welcome from B").await;
    alice.send_text(&room, "welcome from A").await;
    let seen = std::cell::RefCell::new(Vec::new());
    carol
        .sync_until(Some(&since), None, "both welcomes reach C", |s| {
            seen.borrow_mut().extend(room_timeline(s, &room));
            let t = seen.borrow();
            ["welcome from A", "welcome from B"]
                .iter()
                .all(|w| t.iter().any(|e| e["content"]["body"] == *w))
        })
        .await;
}

#[tokio::test]
async fn rooms_of_versions_10_11_and_12_are_joined_and_used_across_servers() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    for version in ["10", "11", "12"] {
        let room = alice
            .create_room(&json!({ "preset": "public_chat", "room_version": version }))
            .await;
        let (status, body) = bob
            .post(
                &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "bob joins a v{version} room: {body}");
        let create = expect_ok(
            bob.get(&format!("/rooms/{}/state/m.room.create/", enc(&room)))
                .await,
            "create event on B",
        );
        assert_eq!(create["room_version"], version, "got {create}");
        let text = format!("hello in v{version}");
        bob.send_text(&room, &text).await;
        alice
            .sync_until(None, None, "bob's message reaches A", |s| {
                has_text(s, &room, &bob.user_id, &text)
            })
            .await;
        // A redaction crosses too (v11 moved `redacts` into content).
        let id = alice.send_text(&room, "to be redacted").await;
        expect_ok(
            alice
                .put(
                    &format!(
                        "/rooms/{}/redact/{}/{}",
                        enc(&room),
                        enc(&id),
                        paracord_complement::Client::txn_id()
                    ),
                    &json!({}),
                )
                .await,
            "alice redacts",
        );
        let deadline = std::time::Instant::now() + paracord_complement::WAIT;
        loop {
            let (status, ev) = bob
                .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&id)))
                .await;
            if status == 200 && ev["content"].as_object().is_some_and(|c| c.is_empty()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the redaction never reached B in v{version}: {status} {ev}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_user_of_another_server_knocks_is_invited_and_joins() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat", "name": "Knock first",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;
    let (status, body) = bob
        .post(
            &format!("/knock/{}?via={}", enc(&room), enc(&a_name)),
            &json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "bob knocks through A: {body}");
    let sync = bob
        .sync_until(None, None, "bob's knock in his sync", |s| {
            s["rooms"]["knock"].get(&room).is_some()
        })
        .await;
    let knock_state = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock first"),
        "got {sync}"
    );
    let m = expect_ok(
        alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await,
        "bob's knock on A",
    );
    assert_eq!(m["membership"], "knock", "got {m}");
    assert_eq!(m["reason"], "let me in", "got {m}");
    alice.invite_ok(&room, &bob.user_id).await;
    bob.sync_until(None, None, "bob is invited", |s| {
        s["rooms"]["invite"].get(&room).is_some()
    })
    .await;
    bob.join_ok(&room).await;
    let m = expect_ok(
        alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await,
        "bob's membership on A",
    );
    assert_eq!(m["membership"], "join", "got {m}");
}

#[tokio::test]
async fn a_join_fails_over_to_the_next_server_and_restricted_joins_are_authorised() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    // A space bob joins, and a room open to the space's members only.
    let space = alice
        .create_room(&json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }))
        .await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": space }],
            }}],
        }))
        .await;
    // Not yet in the space: refused.
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(
        status, 403,
        "a restricted room before joining the space: {body}"
    );
    // The first server named does not answer; the second is A.
    let dead = format!("127.0.0.1:{}", paracord_complement::free_port());
    let (status, body) = bob
        .post(
            &format!(
                "/join/{}?via={}&via={}",
                enc(&space),
                enc(&dead),
                enc(&a_name)
            ),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "joining the space fails over to A: {body}");
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(
        status, 200,
        "a space member joins the restricted room: {body}"
    );
    let m = expect_ok(
        alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await,
        "bob's membership on A",
    );
    assert_eq!(m["membership"], "join", "got {m}");
    assert_eq!(
        m["join_authorised_via_users_server"],
        alice.user_id.as_str(),
        "A authorises the join through its member: {m}"
    );
}

#[tokio::test]
async fn the_hierarchy_of_a_space_includes_rooms_only_another_server_is_in() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let space = alice
        .create_room(&json!({
            "preset": "public_chat", "name": "Guild",
            "creation_content": { "type": "m.space" },
        }))
        .await;
    let open = alice
        .create_room(&json!({ "preset": "public_chat", "name": "open channel" }))
        .await;
    let hidden = alice
        .create_room(&json!({ "preset": "private_chat", "name": "staff only" }))
        .await;
    for child in [&open, &hidden] {
        alice
            .put_state(&space, "m.space.child", child, &json!({ "via": [a_name] }))
            .await;
    }
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&space), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins the space: {body}");
    let h = expect_ok(
        bob.get(&format!(
            "/_matrix/client/v1/rooms/{}/hierarchy",
            enc(&space)
        ))
        .await,
        "hierarchy on B",
    );
    let rooms = h["rooms"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = rooms.iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"Guild"), "got {h}");
    assert!(
        names.contains(&"open channel"),
        "the public child, asked of A: {h}"
    );
    assert!(
        !names.contains(&"staff only"),
        "a private child A will not show: {h}"
    );
    let guild = rooms
        .iter()
        .find(|r| r["room_id"] == space.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        guild["children_state"].as_array().map(Vec::len),
        Some(2),
        "both children listed in the space's state: {h}"
    );
}

/// Issue 14: a restricted room that no user of this server may let someone into (nobody here
/// has the power to invite) is joined through another server in it, whose user authorises
/// the join; a server no longer in the allowed room cannot vouch for anyone.
#[tokio::test]
async fn a_restricted_join_nobody_here_can_authorise_goes_through_another_server() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let charlie = b.register_random().await;
    let allowed = charlie
        .create_room(&json!({ "preset": "public_chat", "name": "Space" }))
        .await;
    let room = charlie
        .create_room(&json!({
            "preset": "public_chat", "room_version": "10",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "restricted", "allow": [
                    { "type": "m.room_membership", "room_id": allowed, "via": [b_name] },
                ] },
            }],
        }))
        .await;
    // Alice (on A) is in the room but may not invite: public rooms need power 50 for that.
    let alice = a.register_random().await;
    charlie.invite_ok(&room, &alice.user_id).await;
    let (status, body) = alice
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&b_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "alice joins: {body}");
    let bob = a.register_random().await;
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            &json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, 403, "alice may not invite: {body}");
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert!(
        status.is_client_error(),
        "bob is in no allowed room yet: {status} {body}"
    );
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&allowed), enc(&b_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins the allowed room: {body}");
    // Through A, which is in the room but cannot authorise: the join goes through B.
    let (status, body) = bob
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "bob joins the restricted room: {body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, m) = charlie
            .get_state(&room, "m.room.member", &bob.user_id)
            .await;
        if m["membership"] == "join" {
            assert_eq!(
                m["join_authorised_via_users_server"],
                charlie.user_id.as_str(),
                "authorised by charlie on B: {m}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob's join on B: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Issue 14: no history is fetched at a join (other servers do not expect it); a client
/// paging back gets it with `/backfill`, also across the gap of a re-join (what was said
/// while the server was out of the room).
#[tokio::test]
async fn history_before_a_join_or_rejoin_is_backfilled_when_paging_back() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let join = |bob: &paracord_complement::User| {
        let path = format!("/join/{}?via={}", enc(&room), enc(&a_name));
        let bob = bob.client.clone();
        async move {
            let (status, body) = bob.post(&path, &json!({})).await;
            assert_eq!(status, 200, "bob joins: {body}");
        }
    };
    let mut before = Vec::new();
    for i in 0..25 {
        before.push(alice.send_text(&room, &format!("before {i}")).await);
    }
    join(&bob).await;
    let ids = |events: Vec<Value>| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect()
    };
    let seen = ids(bob.all_messages(&room).await);
    for id in &before {
        assert!(seen.contains(id), "{id} from before the join: {seen:?}");
    }
    bob.leave_ok(&room).await;
    let mut away = Vec::new();
    for i in 0..15 {
        away.push(
            alice
                .send_text(&room, &format!("while bob was away {i}"))
                .await,
        );
    }
    join(&bob).await;
    let seen = ids(bob.all_messages(&room).await);
    for id in away.iter().chain(&before) {
        assert!(seen.contains(id), "{id} after the re-join: {seen:?}");
    }
}

/// Whether `room`'s `leave` section in `sync` holds `user`'s leave (timeline or state).
fn leave_reported(sync: &Value, room: &str, user: &str) -> bool {
    let left = &sync["rooms"]["leave"][room];
    ["timeline", "state"]
        .iter()
        .filter_map(|s| left[s]["events"].as_array())
        .flatten()
        .any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == user
                && e["content"]["membership"] == "leave"
        })
}

async fn membership_on(user: &paracord_complement::User, room: &str, of: &str) -> Option<String> {
    let (status, body) = user
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(of)
        ))
        .await;
    (status == 200)
        .then(|| body["membership"].as_str().map(str::to_owned))
        .flatten()
}

// Issue 14: an invite to a room the invitee's server is already in (another of its users is
// joined) reaches the invitee like any room event: it shows in `rooms.invite`, and the
// invitee can join, or reject it, locally.
#[tokio::test]
async fn an_invite_to_a_room_the_invitees_server_is_in_can_be_joined_or_rejected() {
    let (a, b, alice, _bob, room) = two_servers_one_room().await;
    let _ = a;
    let bob2 = b.register_random().await;
    let bob3 = b.register_random().await;
    for (invitee, joins) in [(&bob2, true), (&bob3, false)] {
        alice.invite_ok(&room, &invitee.user_id).await;
        invitee
            .sync_until(None, None, "the invite shows", |s| {
                s["rooms"]["invite"][&room]["invite_state"]["events"]
                    .as_array()
                    .is_some_and(|ev| {
                        ev.iter().any(|e| {
                            e["type"] == "m.room.member"
                                && e["state_key"] == invitee.user_id.as_str()
                                && e["content"]["membership"] == "invite"
                        })
                    })
            })
            .await;
        let want = if joins {
            invitee.join_ok(&room).await;
            "join"
        } else {
            invitee.leave_ok(&room).await;
            "leave"
        };
        let deadline = tokio::time::Instant::now() + paracord_complement::WAIT;
        loop {
            let m = membership_on(&alice, &room, &invitee.user_id).await;
            if m.as_deref() == Some(want) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {} to be {want} on A, got {m:?}",
                invitee.user_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

// Issue 14: rejecting an invite to a room its inviter has left (no server will take the
// leave) still rejects it: the invitee's incremental sync answers and shows the leave in
// `rooms.leave`.
#[tokio::test]
async fn rejecting_an_invite_to_an_emptied_room_of_another_server_shows_the_leave() {
    let (a, _) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    alice.invite_ok(&room, &bob.user_id).await;
    let invited = bob
        .sync_until(None, None, "bob is invited", |s| {
            s["rooms"]["invite"].get(&room).is_some()
        })
        .await;
    let since = invited["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    alice.leave_ok(&room).await;
    bob.leave_ok(&room).await;
    let filter = json!({ "room": { "include_leave": true } }).to_string();
    let sync = bob.sync(Some(&since), 0, Some(&filter)).await;
    assert!(
        leave_reported(&sync, &room, &bob.user_id),
        "expected bob's leave in rooms.leave, got {sync}"
    );
    let next = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    let later = bob.sync(Some(&next), 0, Some(&filter)).await;
    assert!(
        later["rooms"]["invite"].get(&room).is_none(),
        "expected no invite any more, got {later}"
    );
}

// Issue 14: an invite to a server not in the room can be taken back by its inviter (a kick
// of the invitee): the invitee's server ends the invite and the invitee sees the leave. A
// kick by another member is not taken from the room's side: the invite stays.
#[tokio::test]
async fn an_invite_over_federation_is_rescinded_by_its_inviter_only() {
    let (a, _) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let alice2 = a.register_random().await;
    let bob = b.register_random().await;
    let kick = |by: &paracord_complement::User, room: &str| {
        let path = format!("/rooms/{}/kick", enc(room));
        let body = json!({ "user_id": bob.user_id, "reason": "testing" });
        let by = by.client.clone();
        async move { expect_ok(by.post(&path, &body).await, "POST /kick") }
    };

    let by_inviter = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    alice.invite_ok(&by_inviter, &bob.user_id).await;
    bob.sync_until(None, None, "bob is invited", |s| {
        s["rooms"]["invite"].get(&by_inviter).is_some()
    })
    .await;
    let other = alice
        .create_room(&json!({ "preset": "private_chat", "invite": [alice2.user_id] }))
        .await;
    alice2.join_ok(&other).await;
    alice2.invite_ok(&other, &bob.user_id).await;
    bob.sync_until(None, None, "bob is invited by alice2", |s| {
        s["rooms"]["invite"].get(&other).is_some()
    })
    .await;

    kick(&alice, &other).await;
    kick(&alice, &by_inviter).await;
    let filter = json!({ "room": { "include_leave": true } }).to_string();
    bob.sync_until(None, Some(&filter), "the rescinded invite's leave", |s| {
        leave_reported(s, &by_inviter, &bob.user_id)
    })
    .await;
    // Both kicks were sent to B in order: the one of the room whose invite ended came last.
    let sync = bob.sync(None, 0, Some(&filter)).await;
    assert!(
        sync["rooms"]["invite"].get(&other).is_some(),
        "expected the invite kicked by a non-inviter to stay, got {sync}"
    );
}

// Issue 14: a room upgraded on another server: this server's users' push rules for the old
// room follow them when they join the new one, over federation or locally once their server
// is in it.
#[tokio::test]
async fn room_push_rules_follow_remote_users_into_a_room_upgraded_elsewhere() {
    let (a, b, alice, bob, old) = two_servers_one_room().await;
    let _ = a;
    let bob2 = b.register_random().await;
    bob2.join_ok(&old).await;
    for u in [&bob, &bob2] {
        expect_ok(
            u.put(
                &format!("/pushrules/global/room/{}", enc(&old)),
                &json!({ "actions": ["dont_notify"] }),
            )
            .await,
            "PUT room push rule",
        );
    }
    let up = expect_ok(
        alice
            .post(
                &format!("/rooms/{}/upgrade", enc(&old)),
                &json!({ "new_version": "11" }),
            )
            .await,
        "POST /upgrade",
    );
    let new = up["replacement_room"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a replacement_room, got {up}"))
        .to_owned();
    let a_name = alice
        .user_id
        .split_once(':')
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    expect_ok(
        bob.post(
            &format!("/join/{}?via={}", enc(&new), enc(&a_name)),
            &json!({}),
        )
        .await,
        "bob joins the new room through A",
    );
    expect_ok(bob2.join(&new).await, "bob2 joins the new room on B");
    for u in [&bob, &bob2] {
        let all = expect_ok(u.get("/pushrules/").await, "GET /pushrules/");
        assert!(
            all["global"]["room"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["rule_id"] == new.as_str() && r["actions"][0] == "dont_notify"),
            "expected {}'s rule copied to {new}, got {all}",
            u.user_id
        );
    }
}
