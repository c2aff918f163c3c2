//! Spaces and ways into rooms: /hierarchy, restricted joins, knocking, upgrades, summaries.

use paracord_complement::{enc, expect_error, expect_ok, StatusCode, TestServer, User};
use serde_json::{json, Value};

async fn add_child(user: &User, space: &str, child: &str, suggested: bool) {
    let server_name = user.user_id.split_once(':').map(|(_, s)| s).unwrap();
    user.put_state(
        space,
        "m.space.child",
        child,
        &json!({ "via": [server_name], "suggested": suggested }),
    )
    .await;
}

fn room_ids(v: &Value) -> Vec<String> {
    v["rooms"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn hierarchy_walks_children_with_depth_suggestions_and_pages() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let space = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Space", "creation_content": { "type": "m.space" } }))
        .await;
    let a = alice
        .create_room(&json!({ "preset": "public_chat", "name": "A", "creation_content": { "type": "m.space" } }))
        .await;
    let b = alice
        .create_room(&json!({ "preset": "public_chat", "name": "B" }))
        .await;
    let deep = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Deep" }))
        .await;
    add_child(&alice, &space, &a, true).await;
    add_child(&alice, &space, &b, false).await;
    add_child(&alice, &a, &deep, false).await;
    // Issue 14: an ordinary room's `m.space.child` is not followed.
    let plain = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Plain" }))
        .await;
    let hidden = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Hidden" }))
        .await;
    add_child(&alice, &plain, &hidden, false).await;
    add_child(&alice, &b, &plain, false).await;
    let path = |q: &str| format!("/_matrix/client/v1/rooms/{}/hierarchy{q}", enc(&space));

    let all = expect_ok(alice.get(&path("")).await, "hierarchy");
    let ids = room_ids(&all);
    assert!(
        !ids.contains(&hidden),
        "below a room that is no space: {all}"
    );
    assert!(
        !ids.contains(&plain),
        "below a room that is no space: {all}"
    );
    // Depth first, children in order: A's child comes before B.
    assert_eq!(
        ids,
        vec![space.clone(), a.clone(), deep.clone(), b.clone()],
        "{all}"
    );
    assert_eq!(ids[0], space, "the root comes first: {all}");
    assert_eq!(all["rooms"][0]["room_type"], "m.space", "{all}");
    assert_eq!(
        all["rooms"][0]["children_state"].as_array().map(Vec::len),
        Some(2),
        "{all}"
    );

    let shallow = expect_ok(alice.get(&path("?max_depth=1")).await, "max_depth=1");
    assert!(
        !room_ids(&shallow).contains(&deep),
        "Deep is two levels down: {shallow}"
    );

    let suggested = expect_ok(
        alice.get(&path("?suggested_only=true")).await,
        "suggested_only",
    );
    let ids = room_ids(&suggested);
    assert!(
        ids.contains(&a) && !ids.contains(&b),
        "only suggested children: {suggested}"
    );

    let mut paged = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let q = match &from {
            Some(f) => format!("?limit=1&from={}", enc(f)),
            None => "?limit=1".to_owned(),
        };
        let page = expect_ok(alice.get(&path(&q)).await, "page");
        paged.extend(room_ids(&page));
        match page["next_batch"].as_str() {
            Some(n) => from = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, room_ids(&all), "pages of one add up to the whole");
}

#[tokio::test]
async fn restricted_rooms_admit_members_of_the_allowed_space() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let space = alice
        .create_room(&json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }))
        .await;
    let room = alice
        .create_room(&json!({
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }]
            }}]
        }))
        .await;
    let refused = bob.join(&room).await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "join before joining the space",
    );
    bob.join_ok(&space).await;
    bob.join_ok(&room).await;
    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(member["membership"], "join", "{member}");
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice.user_id.as_str(),
        "{member}"
    );
}

#[tokio::test]
async fn knocking_shows_in_sync_and_leads_to_an_invite() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({
            "name": "Knock knock",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }]
        }))
        .await;
    let summary = expect_ok(
        bob.get(&format!("/_matrix/client/v1/room_summary/{}", enc(&room)))
            .await,
        "summary of a knockable room",
    );
    assert_eq!(summary["join_rule"], "knock", "{summary}");
    expect_ok(
        bob.post(
            &format!("/knock/{}", enc(&room)),
            &json!({ "reason": "let me in" }),
        )
        .await,
        "knock",
    );
    let sync = bob.sync(None, 0, None).await;
    let knock_state = &sync["rooms"]["knock"][&room]["knock_state"]["events"];
    assert!(
        knock_state.to_string().contains("Knock knock"),
        "knock_state has the room name: {}",
        sync["rooms"]
    );
    let member = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(member["membership"], "knock", "{member}");
    assert_eq!(member["reason"], "let me in", "{member}");
    alice.invite_ok(&room, &bob.user_id).await;
    bob.join_ok(&room).await;

    let private = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let resp = bob
        .post(&format!("/knock/{}", enc(&private)), &json!({}))
        .await;
    assert_eq!(
        resp.0,
        StatusCode::FORBIDDEN,
        "no knocking on invite-only rooms: {resp:?}"
    );
    let resp = bob
        .get(&format!(
            "/_matrix/client/v1/room_summary/{}",
            enc(&private)
        ))
        .await;
    assert_eq!(
        resp.0,
        StatusCode::FORBIDDEN,
        "no summary of a private room: {resp:?}"
    );
}

#[tokio::test]
async fn upgrading_a_room_replaces_it_with_state_aliases_and_bans() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let troll = server.register_random().await;
    let alias_local = format!("up{}", paracord_complement::random_word());
    let old = alice
        .create_room(&json!({
            "room_version": "11", "preset": "public_chat", "name": "Old name", "topic": "Topic",
            "room_alias_name": alias_local,
        }))
        .await;
    bob.join_ok(&old).await;
    troll.join_ok(&old).await;
    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/ban", enc(&old)),
                &json!({ "user_id": troll.user_id }),
            )
            .await,
        "ban",
    );
    let denied = bob
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            &json!({ "new_version": "12" }),
        )
        .await;
    assert_eq!(
        denied.0,
        StatusCode::FORBIDDEN,
        "bob lacks power: {denied:?}"
    );
    let bad = alice
        .post(
            &format!("/rooms/{}/upgrade", enc(&old)),
            &json!({ "new_version": "99" }),
        )
        .await;
    expect_error(
        &bad,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
        "unknown version",
    );

    let up = expect_ok(
        alice
            .post(
                &format!("/rooms/{}/upgrade", enc(&old)),
                &json!({ "new_version": "12" }),
            )
            .await,
        "upgrade",
    );
    let new = up["replacement_room"].as_str().unwrap().to_owned();
    let tombstone = alice.state_content(&old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new.as_str(), "{tombstone}");
    let create = alice.state_content(&new, "m.room.create", "").await;
    assert_eq!(create["predecessor"]["room_id"], old.as_str(), "{create}");
    assert_eq!(create["room_version"], "12", "{create}");
    assert_eq!(
        alice.state_content(&new, "m.room.name", "").await["name"],
        "Old name"
    );
    assert_eq!(
        alice.state_content(&new, "m.room.topic", "").await["topic"],
        "Topic"
    );
    let server_name = alice.user_id.split_once(':').map(|(_, s)| s).unwrap();
    let alias = format!("#{alias_local}:{server_name}");
    let resolved = expect_ok(
        alice.get(&format!("/directory/room/{}", enc(&alias))).await,
        "alias",
    );
    assert_eq!(
        resolved["room_id"],
        new.as_str(),
        "the alias moved: {resolved}"
    );
    assert_eq!(
        alice
            .state_content(&new, "m.room.member", &troll.user_id)
            .await["membership"],
        "ban"
    );
    let talk = bob
        .send_with_txn(
            &old,
            "m.room.message",
            "after-upgrade",
            &json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    assert_eq!(
        talk.0,
        StatusCode::FORBIDDEN,
        "the old room is read-only for members: {talk:?}"
    );
    bob.join_ok(&new).await;
}
