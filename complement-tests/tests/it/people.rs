//! Discovery and people: tags, the user directory, ignored users, reports, jumping to a date
//! and OpenID tokens.

use paracord_complement::{enc, expect_error, expect_ok, room_timeline, StatusCode, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn tags_round_trip_and_reach_sync() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let base = format!("/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room));
    expect_ok(
        alice
            .put(&format!("{base}/m.favourite"), &json!({ "order": 0.25 }))
            .await,
        "PUT tag",
    );
    expect_ok(
        alice.put(&format!("{base}/u.work"), &json!({})).await,
        "PUT second tag",
    );
    let tags = expect_ok(alice.get(&base).await, "GET tags");
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.25, "{tags}");
    assert!(tags["tags"]["u.work"].is_object(), "{tags}");
    expect_ok(
        alice.delete(&format!("{base}/u.work"), &json!({})).await,
        "DELETE tag",
    );
    let tags = expect_ok(alice.get(&base).await, "GET tags after delete");
    assert!(tags["tags"].get("u.work").is_none(), "{tags}");
    let sync = alice.sync(None, 0, None).await;
    let ad = &sync["rooms"]["join"][&room]["account_data"]["events"];
    let tag_event = ad
        .as_array()
        .and_then(|a| a.iter().find(|e| e["type"] == "m.tag"))
        .cloned();
    assert!(
        tag_event.is_some_and(|e| e["content"]["tags"]["m.favourite"].is_object()),
        "m.tag in the room's account data: {ad}"
    );
    let bob = server.register_random().await;
    let resp = bob.get(&base).await;
    assert_eq!(
        resp.0,
        StatusCode::FORBIDDEN,
        "others' tags are private: {resp:?}"
    );
}

#[tokio::test]
async fn user_directory_finds_people_in_shared_and_public_rooms_only() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let friend = server.register_random().await;
    let public_person = server.register_random().await;
    let stranger = server.register_random().await;
    expect_ok(
        friend
            .put(
                &format!("/profile/{}/displayname", enc(&friend.user_id)),
                &json!({ "displayname": "Zebra Friend" }),
            )
            .await,
        "set displayname",
    );
    let private = alice
        .create_room(&json!({ "preset": "private_chat", "invite": [friend.user_id] }))
        .await;
    friend.join_ok(&private).await;
    let public = public_person
        .create_room(&json!({ "preset": "public_chat" }))
        .await;
    let _strangers_room = stranger
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let _ = public;

    let search = |term: &str| json!({ "search_term": term, "limit": 10 });
    let found = expect_ok(
        alice.post("/user_directory/search", &search("zebra")).await,
        "search by display name",
    );
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["user_id"].as_str())
        .collect();
    assert_eq!(ids, vec![friend.user_id.as_str()], "{found}");
    assert_eq!(
        found["results"][0]["display_name"], "Zebra Friend",
        "{found}"
    );

    let found = expect_ok(
        alice
            .post("/user_directory/search", &search(&public_person.localpart))
            .await,
        "public room member",
    );
    assert!(
        found.to_string().contains(&public_person.user_id),
        "{found}"
    );

    let found = expect_ok(
        alice
            .post("/user_directory/search", &search(&stranger.localpart))
            .await,
        "stranger",
    );
    assert!(
        !found.to_string().contains(&stranger.user_id),
        "no shared or public room: {found}"
    );

    // Issue 14: the searcher is not a result; the exact id of a user finds them.
    let found = expect_ok(
        alice
            .post("/user_directory/search", &search(&alice.localpart))
            .await,
        "oneself",
    );
    assert!(!found.to_string().contains(&alice.user_id), "{found}");
    let found = expect_ok(
        alice
            .post("/user_directory/search", &search(&stranger.user_id))
            .await,
        "a stranger by exact id",
    );
    assert_eq!(
        found["results"][0]["user_id"],
        stranger.user_id.as_str(),
        "{found}"
    );
}

#[tokio::test]
async fn ignored_users_messages_and_invites_are_hidden() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let troll = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    troll.join_ok(&room).await;
    expect_ok(
        alice
            .put(
                &format!(
                    "/user/{}/account_data/m.ignored_user_list",
                    enc(&alice.user_id)
                ),
                &json!({ "ignored_users": { troll.user_id.clone(): {} } }),
            )
            .await,
        "ignore",
    );
    let trolling = troll.send_text(&room, "trolling").await;
    // Issue 14: state events of ignored users still reach the client (the room must look the
    // same to everyone); only their other events are hidden.
    let (status, body) = troll
        .put(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&troll.user_id)
            ),
            &json!({ "membership": "join", "displayname": "Troll" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let renamed = body["event_id"].as_str().unwrap_or_default().to_owned();
    let fine = alice.send_text(&room, "fine").await;
    let sync = alice.sync(None, 0, None).await;
    let timeline = room_timeline(&sync, &room);
    assert!(
        timeline.iter().any(|e| e["event_id"] == renamed.as_str()),
        "an ignored user's state event is delivered: {timeline:?}"
    );
    assert!(
        timeline.iter().any(|e| e["event_id"] == fine.as_str()),
        "own message present"
    );
    assert!(
        !timeline.iter().any(|e| e["event_id"] == trolling.as_str()),
        "ignored user's message hidden: {timeline:?}"
    );
    let messages = alice.all_messages(&room).await;
    assert!(
        !messages.iter().any(|e| e["event_id"] == trolling.as_str()),
        "hidden in /messages too"
    );

    let other = troll
        .create_room(&json!({ "invite": [alice.user_id] }))
        .await;
    let sync = alice.sync(None, 0, None).await;
    assert!(
        sync["rooms"]["invite"].get(&other).is_none(),
        "invite from an ignored user hidden: {}",
        sync["rooms"]["invite"]
    );
}

#[tokio::test]
async fn reports_need_a_visible_event() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let event = alice.send_text(&room, "report me").await;
    expect_ok(
        bob.post(
            &format!("/rooms/{}/report/{}", enc(&room), enc(&event)),
            &json!({ "reason": "spam", "score": -100 }),
        )
        .await,
        "report event",
    );
    let unknown = bob
        .post(
            &format!("/rooms/{}/report/{}", enc(&room), enc("$nope")),
            &json!({ "reason": "x" }),
        )
        .await;
    expect_error(
        &unknown,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "report of an unknown event",
    );
    let private = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let hidden = alice.send_text(&private, "hidden").await;
    let resp = bob
        .post(
            &format!("/rooms/{}/report/{}", enc(&private), enc(&hidden)),
            &json!({ "reason": "x" }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "report of an event bob cannot see",
    );
    expect_ok(
        bob.post(
            &format!("/rooms/{}/report", enc(&room)),
            &json!({ "reason": "bad room" }),
        )
        .await,
        "report room",
    );
    expect_ok(
        bob.post(
            &format!("/users/{}/report", enc(&alice.user_id)),
            &json!({ "reason": "rude" }),
        )
        .await,
        "report user",
    );
    let server_name = alice.user_id.split_once(':').map(|(_, s)| s).unwrap();
    let nobody = bob
        .post(
            &format!("/users/{}/report", enc(&format!("@nobody:{server_name}"))),
            &json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(nobody.0, StatusCode::NOT_FOUND, "{nobody:?}");
}

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_event() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let first = alice.send_text(&room, "first").await;
    let ts_of = |ev: &Value| ev["origin_server_ts"].as_u64().unwrap();
    let first_ev = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&first)))
            .await,
        "GET first",
    );
    // Make sure the second message gets a later millisecond.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = alice.send_text(&room, "second").await;
    let second_ev = expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&second)))
            .await,
        "GET second",
    );
    let between = ts_of(&first_ev) + 1;
    assert!(between <= ts_of(&second_ev));
    let path = |ts: u64, dir: &str| {
        format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
            enc(&room)
        )
    };
    let fwd = expect_ok(alice.get(&path(between, "f")).await, "forwards");
    assert_eq!(fwd["event_id"], second, "{fwd}");
    let back = expect_ok(alice.get(&path(between, "b")).await, "backwards");
    assert_eq!(back["event_id"], first, "{back}");
    let future = alice.get(&path(ts_of(&second_ev) + 60_000, "f")).await;
    expect_error(
        &future,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "nothing after the last event",
    );
}

#[tokio::test]
async fn openid_tokens_are_checked_by_userinfo() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let token = expect_ok(
        alice
            .post(
                &format!("/user/{}/openid/request_token", enc(&alice.user_id)),
                &json!({}),
            )
            .await,
        "request token",
    );
    assert_eq!(token["token_type"], "Bearer", "{token}");
    assert!(token["expires_in"].as_u64().unwrap_or(0) > 0, "{token}");
    let access = token["access_token"].as_str().unwrap();
    let info = expect_ok(
        alice
            .with_token(None)
            .get(&format!(
                "/_matrix/federation/v1/openid/userinfo?access_token={}",
                enc(access)
            ))
            .await,
        "userinfo",
    );
    assert_eq!(info["sub"], alice.user_id.as_str(), "{info}");
    let bad = alice
        .with_token(None)
        .get("/_matrix/federation/v1/openid/userinfo?access_token=nope")
        .await;
    expect_error(
        &bad,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "unknown openid token",
    );
    let bob = server.register_random().await;
    let other = bob
        .post(
            &format!("/user/{}/openid/request_token", enc(&alice.user_id)),
            &json!({}),
        )
        .await;
    assert_eq!(
        other.0,
        StatusCode::FORBIDDEN,
        "tokens only for oneself: {other:?}"
    );
}

/// Issue 14: the user directory shows a user's own profile; a name given in one room stays in
/// that room (it is neither shown nor searchable).
#[tokio::test]
async fn the_user_directory_shows_global_profiles_not_room_names() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    expect_ok(
        alice
            .put(
                &format!("/profile/{}/displayname", enc(&alice.user_id)),
                &json!({ "displayname": "Alice Public" }),
            )
            .await,
        "global name",
    );
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await;
    bob.join_ok(&room).await;
    expect_ok(
        alice
            .put(
                &format!(
                    "/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&alice.user_id)
                ),
                &json!({ "membership": "join", "displayname": "Secret Name" }),
            )
            .await,
        "room-specific name",
    );
    let found = expect_ok(
        bob.post(
            "/user_directory/search",
            &json!({ "search_term": alice.localpart }),
        )
        .await,
        "search by localpart",
    );
    assert_eq!(
        found["results"][0]["display_name"], "Alice Public",
        "{found}"
    );
    let found = expect_ok(
        bob.post(
            "/user_directory/search",
            &json!({ "search_term": "Secret" }),
        )
        .await,
        "search by the room name",
    );
    assert_eq!(found["results"], json!([]), "{found}");
}
