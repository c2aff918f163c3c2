//! Invites, joins, leaves, kicks, bans, forgetting and member lists.

use paracord_complement::{
    enc, expect_error, expect_error_status, expect_ok, find_event, random_word, StatusCode,
    TestServer,
};
use serde_json::{json, Value};

fn member_ids(body: &Value, membership: Option<&str>) -> Vec<String> {
    body["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|e| e["type"] == "m.room.member")
                .filter(|e| membership.is_none_or(|m| e["content"]["membership"] == m))
                .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn invite_reaches_the_invitee_with_stripped_state() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Invite only" }))
        .await;

    let since = bob.sync_token().await;
    alice.invite_ok(&room, &bob.user_id).await;
    let sync = bob
        .sync_until(Some(&since), None, "the room is in rooms.invite", |s| {
            s["rooms"]["invite"].get(&room).is_some()
        })
        .await;
    let events = sync["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("expected invite_state.events for {room}, got {sync}"));
    let me = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .unwrap_or_else(|| {
            panic!("expected bob's invite member event in invite_state, got {sync}")
        });
    assert_eq!(
        me["content"]["membership"], "invite",
        "expected membership invite, got {me}"
    );
    assert_eq!(
        me["sender"], alice.user_id,
        "expected the inviter as sender, got {me}"
    );
    let name = find_event(&events, "m.room.name")
        .unwrap_or_else(|| panic!("expected m.room.name in invite_state, got {sync}"));
    assert_eq!(
        name["content"]["name"], "Invite only",
        "expected the room name in invite_state, got {name}"
    );
    assert!(
        find_event(&events, "m.room.create").is_some(),
        "expected m.room.create in invite_state, got {sync}"
    );

    let uninvited = server.register_random().await;
    let (status, body) = uninvited.join(&room).await;
    expect_error(
        &(status, body),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "joining an invite-only room uninvited",
    );

    let joined = expect_ok(
        bob.post(&format!("/rooms/{}/join", enc(&room)), &json!({}))
            .await,
        "accepting the invite",
    );
    assert_eq!(
        joined["room_id"],
        room.as_str(),
        "expected the joined room id, got {joined}"
    );
    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        member["membership"], "join",
        "expected bob joined, got {member}"
    );
}

#[tokio::test]
async fn users_join_by_room_id_and_by_alias() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let local = random_word();
    let alias = format!("#{local}:{}", server.server_name());
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "room_alias_name": local }))
        .await;

    let by_alias = expect_ok(bob.join(&alias).await, "POST /join/{alias}");
    assert_eq!(
        by_alias["room_id"],
        room.as_str(),
        "expected joining by alias to return the room id, got {by_alias}"
    );
    let by_id = expect_ok(
        carol
            .post(&format!("/rooms/{}/join", enc(&room)), &json!({}))
            .await,
        "POST /rooms/{roomId}/join",
    );
    assert_eq!(
        by_id["room_id"],
        room.as_str(),
        "expected joining by id to return the room id, got {by_id}"
    );

    let members = expect_ok(
        alice
            .get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await,
        "GET joined_members",
    );
    for user in [&alice.user_id, &bob.user_id, &carol.user_id] {
        assert!(
            members["joined"].get(user).is_some(),
            "expected {user} in joined_members, got {members}"
        );
    }
}

#[tokio::test]
async fn leaving_ends_membership() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    bob.leave_ok(&room).await;

    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        member["membership"], "leave",
        "expected bob's membership leave, got {member}"
    );
    let rooms = expect_ok(bob.get("/joined_rooms").await, "GET /joined_rooms");
    assert!(
        !rooms["joined_rooms"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == room.as_str())),
        "expected the left room absent from joined_rooms, got {rooms}"
    );
}

#[tokio::test]
async fn kick_records_the_reason() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;

    // A power-0 member cannot kick.
    let denied = bob
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            &json!({ "user_id": alice.user_id }),
        )
        .await;
    expect_error(
        &denied,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a power-0 member kicking the creator",
    );

    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/kick", enc(&room)),
                &json!({ "user_id": bob.user_id, "reason": "spam" }),
            )
            .await,
        "kicking bob",
    );
    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        member["membership"], "leave",
        "expected a kick to set membership leave, got {member}"
    );
    assert_eq!(
        member["reason"], "spam",
        "expected the kick reason, got {member}"
    );
    let state = alice.full_state(&room).await;
    let ev = state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .unwrap_or_else(|| panic!("expected bob's member event in state, got {state:?}"));
    assert_eq!(
        ev["sender"], alice.user_id,
        "expected the kicker as sender, got {ev}"
    );
}

#[tokio::test]
async fn banned_user_cannot_join_until_unbanned() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    bob.join_ok(&room).await;

    expect_ok(
        alice
            .post(
                &format!("/rooms/{r}/ban"),
                &json!({ "user_id": bob.user_id, "reason": "rude" }),
            )
            .await,
        "banning bob",
    );
    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        member["membership"], "ban",
        "expected membership ban, got {member}"
    );
    assert_eq!(
        member["reason"], "rude",
        "expected the ban reason, got {member}"
    );

    let rejoin = bob.join(&room).await;
    expect_error_status(&rejoin, StatusCode::FORBIDDEN, "a banned user joining");

    expect_ok(
        alice
            .post(
                &format!("/rooms/{r}/unban"),
                &json!({ "user_id": bob.user_id }),
            )
            .await,
        "unbanning bob",
    );
    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        member["membership"], "leave",
        "expected unban to set membership leave, got {member}"
    );
    bob.join_ok(&room).await;
}

#[tokio::test]
async fn forget_requires_leaving_first() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let path = format!("/rooms/{}/forget", enc(&room));

    let (status, body) = bob.post(&path, &json!({})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "expected 400 forgetting a joined room, got {status}: {body}"
    );
    assert!(
        body["errcode"].is_string() && body["error"].is_string(),
        "expected a Matrix error body, got {body}"
    );

    bob.leave_ok(&room).await;
    expect_ok(bob.post(&path, &json!({})).await, "forgetting a left room");
}

#[tokio::test]
async fn joined_rooms_lists_exactly_the_joined_rooms() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let a = alice.create_room(&json!({})).await;
    let b = alice.create_room(&json!({})).await;
    let c = alice.create_room(&json!({})).await;
    alice.leave_ok(&c).await;

    let body = expect_ok(alice.get("/joined_rooms").await, "GET /joined_rooms");
    let mut rooms: Vec<String> = body["joined_rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a joined_rooms array, got {body}"))
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    rooms.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(
        rooms, expected,
        "expected exactly the two joined rooms, got {body}"
    );
}

#[tokio::test]
async fn members_can_be_filtered_by_membership_and_read_at_a_sync_token() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    bob.join_ok(&room).await;

    let first = alice.sync(None, 0, None).await;
    let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
    carol.join_ok(&room).await;
    bob.leave_ok(&room).await;

    // Both changes are committed before their requests return, so one
    // incremental sync holds them both, after the prev_batch position.
    let later = alice.sync(Some(&since), 0, None).await;
    let timeline = &later["rooms"]["join"][&room]["timeline"];
    let events = timeline["events"].as_array().cloned().unwrap_or_default();
    for (who, membership) in [(&carol.user_id, "join"), (&bob.user_id, "leave")] {
        assert!(
            events.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == who.as_str()
                && e["content"]["membership"] == membership),
            "expected {who}'s {membership} in the incremental timeline, got {later}"
        );
    }
    let at = timeline["prev_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a prev_batch for the room timeline, got {later}"))
        .to_owned();

    let now = expect_ok(
        alice.get(&format!("/rooms/{r}/members")).await,
        "GET /members",
    );
    let mut joined = member_ids(&now, Some("join"));
    joined.sort();
    let mut expected = vec![alice.user_id.clone(), carol.user_id.clone()];
    expected.sort();
    assert_eq!(
        joined, expected,
        "expected alice and carol joined now, got {now}"
    );
    assert!(
        member_ids(&now, Some("leave")).contains(&bob.user_id),
        "expected bob listed as left, got {now}"
    );

    let only_join = expect_ok(
        alice
            .get(&format!("/rooms/{r}/members?membership=join"))
            .await,
        "GET /members?membership=join",
    );
    let mut ids = member_ids(&only_join, None);
    ids.sort();
    assert_eq!(
        ids, expected,
        "expected membership=join to return only joined members, got {only_join}"
    );

    let not_leave = expect_ok(
        alice
            .get(&format!("/rooms/{r}/members?not_membership=leave"))
            .await,
        "GET /members?not_membership=leave",
    );
    assert!(
        !member_ids(&not_leave, None).contains(&bob.user_id),
        "expected not_membership=leave to drop bob, got {not_leave}"
    );
    assert_eq!(
        member_ids(&not_leave, None).len(),
        2,
        "expected two non-left members, got {not_leave}"
    );

    // At the start of the incremental timeline bob was still joined.
    let then = expect_ok(
        alice
            .get(&format!("/rooms/{r}/members?at={}", enc(&at)))
            .await,
        "GET /members?at=prev_batch",
    );
    let then_joined = member_ids(&then, Some("join"));
    assert!(
        then_joined.contains(&bob.user_id),
        "expected bob joined at the prev_batch token, got {then}"
    );
    assert!(
        then_joined.contains(&alice.user_id),
        "expected alice joined at the prev_batch token, got {then}"
    );
    assert!(
        !then_joined.contains(&carol.user_id),
        "expected carol not yet joined at the prev_batch token, got {then}"
    );
}

#[tokio::test]
async fn joined_members_reports_profiles() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    expect_ok(
        alice
            .put(
                &format!("/profile/{}/displayname", enc(&alice.user_id)),
                &json!({ "displayname": "Alice" }),
            )
            .await,
        "setting a displayname",
    );
    let room = alice.create_room(&json!({})).await;
    let body = expect_ok(
        alice
            .get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await,
        "GET joined_members",
    );
    let joined = body["joined"]
        .as_object()
        .unwrap_or_else(|| panic!("expected a `joined` object, got {body}"));
    assert_eq!(joined.len(), 1, "expected only the creator, got {body}");
    assert_eq!(
        joined[&alice.user_id]["display_name"], "Alice",
        "expected the creator's display_name, got {body}"
    );
}

#[tokio::test]
async fn non_member_cannot_send() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let eve = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let resp = eve
        .send_with_txn(
            &room,
            "m.room.message",
            "t1",
            &json!({ "msgtype": "m.text", "body": "let me in" }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a non-member sending a message",
    );
}

#[tokio::test]
async fn non_member_cannot_read_messages() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let eve = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    alice.send_text(&room, "private words").await;
    let resp = eve
        .get(&format!("/rooms/{}/messages?dir=b", enc(&room)))
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a non-member reading /messages",
    );
}

/// Whether `room`'s `leave` section in `sync` holds `user`'s leave (in its timeline or state).
fn leave_reported(sync: &Value, room: &str, user: &str, in_timeline_only: bool) -> bool {
    let left = &sync["rooms"]["leave"][room];
    let sections: &[&str] = if in_timeline_only {
        &["timeline"]
    } else {
        &["timeline", "state"]
    };
    sections
        .iter()
        .filter_map(|s| left[s]["events"].as_array())
        .flatten()
        .any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == user
                && e["content"]["membership"] == "leave"
        })
}

// Issue 14: rejecting an invite puts the room in `rooms.leave` of the incremental sync with
// the user's own leave, even in a room whose history is visible to joined members only,
// and even when the inviter left first (an empty room).
#[tokio::test]
async fn a_rejected_invite_shows_its_leave_in_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    let since = bob.sync_token().await;
    alice.invite_ok(&room, &bob.user_id).await;
    let invited = bob
        .sync_until(Some(&since), None, "bob is invited", |s| {
            s["rooms"]["invite"].get(&room).is_some()
        })
        .await;
    let since = invited["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    alice.leave_ok(&room).await;
    bob.leave_ok(&room).await;
    let sync = bob.sync(Some(&since), 0, None).await;
    assert!(
        leave_reported(&sync, &room, &bob.user_id, false),
        "expected bob's leave in rooms.leave, got {sync}"
    );
    let next = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    let later = bob.sync(Some(&next), 0, None).await;
    assert!(
        later["rooms"]["invite"].get(&room).is_none(),
        "expected no invite any more, got {later}"
    );
}

// Issue 14: a knock can be rescinded (the leave shows in the knocker's incremental sync)
// and made again, and a member can refuse a knock by kicking the knocker.
#[tokio::test]
async fn a_knock_can_be_rescinded_and_refused_with_a_kick() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "knock" },
            }],
        }))
        .await;
    let knock = |reason: &'static str| {
        let bob = &bob;
        let room = &room;
        async move {
            expect_ok(
                bob.post(
                    &format!("/knock/{}", enc(room)),
                    &json!({ "reason": reason }),
                )
                .await,
                "POST /knock",
            )
        }
    };
    knock("let me in").await;
    let since = bob.sync_token().await;
    bob.leave_ok(&room).await;
    let sync = bob.sync(Some(&since), 0, None).await;
    assert!(
        leave_reported(&sync, &room, &bob.user_id, true),
        "expected the rescinded knock's leave in the leave timeline, got {sync}"
    );

    knock("again").await;
    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/kick", enc(&room)),
                &json!({ "user_id": bob.user_id, "reason": "not now" }),
            )
            .await,
        "kicking a knocker",
    );
    let m = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        m["membership"], "leave",
        "expected the knock refused, got {m}"
    );
    knock("please").await;
}

// Issue 14: `/members?at=` a fresh sync's `prev_batch` gives the members as that sync saw
// them, before a later join, even when the sync's timeline starts with the room's creation.
#[tokio::test]
async fn members_at_a_syncs_prev_batch_leave_out_later_joins() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    alice.send_text(&room, "hello").await;
    let sync = alice.sync(None, 0, None).await;
    let at = sync["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a prev_batch, got {sync}"))
        .to_owned();
    bob.join_ok(&room).await;
    bob.send_text(&room, "hello back").await;

    let then = expect_ok(
        alice
            .get(&format!("/rooms/{}/members?at={}", enc(&room), enc(&at)))
            .await,
        "GET /members?at=prev_batch",
    );
    assert_eq!(
        member_ids(&then, None),
        vec![alice.user_id.clone()],
        "expected alice alone at the prev_batch token, got {then}"
    );
}
