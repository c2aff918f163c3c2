//! Room creation, room versions, the room directory, aliases and state.

use paracord_complement::{
    enc, expect_error, expect_ok, find_state, is_hash_id, random_word, StatusCode, TestServer, User,
};
use serde_json::{json, Value};

async fn public_rooms(user: &User) -> Value {
    expect_ok(user.get("/publicRooms?limit=500").await, "GET /publicRooms")
}

fn chunk_has(body: &Value, room: &str) -> Option<Value> {
    body["chunk"]
        .as_array()?
        .iter()
        .find(|r| r["room_id"] == room)
        .cloned()
}

#[tokio::test]
async fn public_chat_room_gets_name_topic_and_is_listed_in_the_directory() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let word = random_word();
    let room = alice
        .create_room(&json!({
            "name": format!("Room {word}"),
            "topic": "A place to talk",
            "preset": "public_chat",
            "visibility": "public",
        }))
        .await;

    let name = alice.state_content(&room, "m.room.name", "").await;
    assert_eq!(
        name["name"],
        format!("Room {word}"),
        "expected the room name, got {name}"
    );
    let topic = alice.state_content(&room, "m.room.topic", "").await;
    assert_eq!(
        topic["topic"], "A place to talk",
        "expected the topic, got {topic}"
    );
    let rules = alice.state_content(&room, "m.room.join_rules", "").await;
    assert_eq!(
        rules["join_rule"], "public",
        "expected public_chat to set join_rule public, got {rules}"
    );
    let hist = alice
        .state_content(&room, "m.room.history_visibility", "")
        .await;
    assert_eq!(
        hist["history_visibility"], "shared",
        "expected public_chat history_visibility shared, got {hist}"
    );
    let guest = alice.get_state(&room, "m.room.guest_access", "").await;
    // An absent m.room.guest_access means forbidden.
    assert!(
        // Issue 14: no event at all, as other servers' public_chat preset.
        guest.0 == StatusCode::NOT_FOUND,
        "expected public_chat guest_access forbidden (or absent), got {}: {}",
        guest.0,
        guest.1
    );

    let listed = public_rooms(&alice).await;
    let entry = chunk_has(&listed, &room)
        .unwrap_or_else(|| panic!("expected {room} in GET /publicRooms, got {listed}"));
    assert_eq!(
        entry["name"],
        format!("Room {word}"),
        "expected the name in the directory entry, got {entry}"
    );
    assert_eq!(
        entry["topic"], "A place to talk",
        "expected the topic in the directory entry, got {entry}"
    );
    assert_eq!(
        entry["num_joined_members"], 1,
        "expected one joined member, got {entry}"
    );
    assert_eq!(
        entry["world_readable"], false,
        "expected world_readable false, got {entry}"
    );
    assert_eq!(
        entry["guest_can_join"], false,
        "expected guest_can_join false, got {entry}"
    );
    // `join_rule` is optional in the chunk (absent means public).
    assert!(
        entry.get("join_rule").is_none_or(|j| j == "public"),
        "expected join_rule public or absent, got {entry}"
    );

    let found = expect_ok(
        alice
            .post(
                "/publicRooms",
                &json!({ "filter": { "generic_search_term": word } }),
            )
            .await,
        "POST /publicRooms with a matching search term",
    );
    assert!(
        chunk_has(&found, &room).is_some(),
        "expected {room} when searching {word:?}, got {found}"
    );
    let missed = expect_ok(
        alice
            .post(
                "/publicRooms",
                &json!({ "filter": { "generic_search_term": random_word() } }),
            )
            .await,
        "POST /publicRooms with a non-matching search term",
    );
    assert!(
        chunk_has(&missed, &room).is_none(),
        "expected {room} absent for an unrelated term, got {missed}"
    );
}

#[tokio::test]
async fn private_chat_room_is_invite_only_and_unlisted() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "secret" }))
        .await;

    let rules = alice.state_content(&room, "m.room.join_rules", "").await;
    assert_eq!(
        rules["join_rule"], "invite",
        "expected private_chat to set join_rule invite, got {rules}"
    );
    let hist = alice
        .state_content(&room, "m.room.history_visibility", "")
        .await;
    assert_eq!(
        hist["history_visibility"], "shared",
        "expected private_chat history_visibility shared, got {hist}"
    );
    let guest = alice.state_content(&room, "m.room.guest_access", "").await;
    assert_eq!(
        guest["guest_access"], "can_join",
        "expected private_chat guest_access can_join, got {guest}"
    );

    let vis = expect_ok(
        alice
            .get(&format!("/directory/list/room/{}", enc(&room)))
            .await,
        "GET directory visibility",
    );
    assert_eq!(
        vis["visibility"], "private",
        "expected default visibility private, got {vis}"
    );
    let listed = public_rooms(&alice).await;
    assert!(
        chunk_has(&listed, &room).is_none(),
        "expected the private room not to be listed, got {listed}"
    );
}

#[tokio::test]
async fn room_version_11_is_honoured() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "room_version": "11" })).await;
    let create = alice.state_content(&room, "m.room.create", "").await;
    assert_eq!(
        create["room_version"], "11",
        "expected room_version 11 in m.room.create, got {create}"
    );
    assert!(
        room.starts_with('!') && room.ends_with(&format!(":{}", server.server_name())),
        "expected a v11 room id of the form !opaque:{}, got {room}",
        server.server_name()
    );
}

#[tokio::test]
async fn unknown_room_version_is_unsupported() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let resp = alice
        .post("/createRoom", &json!({ "room_version": "999" }))
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
        "createRoom with room_version 999",
    );
}

#[tokio::test]
async fn new_rooms_default_to_version_12_with_a_create_event_hash_room_id() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let create = alice.state_content(&room, "m.room.create", "").await;
    assert_eq!(
        create["room_version"], "12",
        "expected default room_version 12, got {create}"
    );
    assert!(
        is_hash_id(&room, '!'),
        "expected a v12 room id (! + 43 url-safe base64 chars, no server part), got {room}"
    );

    let state = alice.full_state(&room).await;
    let create_event = find_state(&state, "m.room.create", "")
        .unwrap_or_else(|| panic!("expected m.room.create in the room state, got {state:?}"));
    let create_id = create_event["event_id"].as_str().unwrap_or_default();
    assert_eq!(&room[1..], create_id.get(1..).unwrap_or_default(), "expected the room id to be the create event id with a ! sigil, create event {create_event}");

    let pl = alice.state_content(&room, "m.room.power_levels", "").await;
    assert!(
        pl["users"].get(&alice.user_id).is_none(),
        "expected the v12 creator not to be listed in power_levels.users, got {pl}"
    );
    let state_default = pl["state_default"].as_i64().unwrap_or(50);
    let tombstone = pl["events"]["m.room.tombstone"].as_i64();
    assert!(
        tombstone.is_some_and(|t| t > state_default),
        "expected m.room.tombstone power above state_default in a v12 room, got {pl}"
    );
}

#[tokio::test]
async fn create_room_applies_initial_state_power_level_override_and_creation_content() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat",
            "initial_state": [
                { "type": "m.room.guest_access", "state_key": "", "content": { "guest_access": "forbidden" } },
                { "type": "org.example.custom", "state_key": "k", "content": { "x": 1 } },
            ],
            "power_level_content_override": { "events_default": 50, "ban": 77 },
            "creation_content": { "m.federate": false },
        }))
        .await;

    let guest = alice.state_content(&room, "m.room.guest_access", "").await;
    assert_eq!(
        guest["guest_access"], "forbidden",
        "expected initial_state to override the preset's guest_access, got {guest}"
    );
    let custom = alice.state_content(&room, "org.example.custom", "k").await;
    assert_eq!(
        custom,
        json!({ "x": 1 }),
        "expected the custom initial_state event, got {custom}"
    );
    let pl = alice.state_content(&room, "m.room.power_levels", "").await;
    assert_eq!(
        pl["events_default"], 50,
        "expected the overridden events_default, got {pl}"
    );
    assert_eq!(pl["ban"], 77, "expected the overridden ban level, got {pl}");
    let create = alice.state_content(&room, "m.room.create", "").await;
    assert_eq!(
        create["m.federate"], false,
        "expected creation_content in m.room.create, got {create}"
    );

    // The override is enforced: a power-0 member cannot send a message.
    alice.invite_ok(&room, &bob.user_id).await;
    bob.join_ok(&room).await;
    let resp = bob
        .send_with_txn(
            &room,
            "m.room.message",
            "t1",
            &json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "sending below events_default",
    );
    alice.send_text(&room, "the creator can still speak").await;
}

#[tokio::test]
async fn room_alias_name_creates_a_resolvable_canonical_alias() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let local = random_word();
    let alias = format!("#{local}:{}", server.server_name());
    let room = alice
        .create_room(&json!({ "room_alias_name": local }))
        .await;

    let resolved = expect_ok(
        alice.get(&format!("/directory/room/{}", enc(&alias))).await,
        "GET /directory/room/{alias}",
    );
    assert_eq!(
        resolved["room_id"],
        room.as_str(),
        "expected the alias to resolve to the room, got {resolved}"
    );
    let servers = resolved["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a `servers` array, got {resolved}"));
    assert!(
        servers.iter().any(|s| s == server.server_name().as_str()),
        "expected our server among servers, got {resolved}"
    );

    let canonical = alice
        .state_content(&room, "m.room.canonical_alias", "")
        .await;
    assert_eq!(
        canonical["alias"],
        alias.as_str(),
        "expected the canonical alias, got {canonical}"
    );

    let taken = alice
        .post("/createRoom", &json!({ "room_alias_name": local }))
        .await;
    expect_error(
        &taken,
        StatusCode::BAD_REQUEST,
        "M_ROOM_IN_USE",
        "createRoom with a taken alias",
    );
}

#[tokio::test]
async fn directory_aliases_can_be_added_and_removed() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let alias = format!("#{}:{}", random_word(), server.server_name());
    let path = format!("/directory/room/{}", enc(&alias));

    let missing = alice.get(&path).await;
    expect_error(
        &missing,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "resolving an alias that does not exist",
    );

    expect_ok(
        alice.put(&path, &json!({ "room_id": room })).await,
        "PUT /directory/room/{alias}",
    );
    let resolved = expect_ok(alice.get(&path).await, "GET the new alias");
    assert_eq!(
        resolved["room_id"],
        room.as_str(),
        "expected the alias to resolve, got {resolved}"
    );

    let other = alice.create_room(&json!({})).await;
    let dup = alice.put(&path, &json!({ "room_id": other })).await;
    assert_eq!(
        dup.0,
        StatusCode::CONFLICT,
        "expected 409 re-using an alias, got {}: {}",
        dup.0,
        dup.1
    );

    let aliases = expect_ok(
        alice.get(&format!("/rooms/{}/aliases", enc(&room))).await,
        "GET /rooms/{roomId}/aliases",
    );
    assert!(
        aliases["aliases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == alias.as_str())),
        "expected the alias in the room's local aliases, got {aliases}"
    );

    expect_ok(
        alice.delete(&path, &json!({})).await,
        "DELETE /directory/room/{alias}",
    );
    let gone = alice.get(&path).await;
    expect_error(
        &gone,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "resolving a deleted alias",
    );
}

#[tokio::test]
async fn directory_visibility_can_be_read_and_changed() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let path = format!("/directory/list/room/{}", enc(&room));

    let vis = expect_ok(
        server.client().get(&path).await,
        "unauthenticated GET directory visibility",
    );
    assert_eq!(
        vis["visibility"], "private",
        "expected default visibility private, got {vis}"
    );

    expect_ok(
        alice.put(&path, &json!({ "visibility": "public" })).await,
        "PUT visibility public",
    );
    let vis = expect_ok(alice.get(&path).await, "GET visibility after publishing");
    assert_eq!(
        vis["visibility"], "public",
        "expected visibility public, got {vis}"
    );
    let listed = public_rooms(&alice).await;
    assert!(
        chunk_has(&listed, &room).is_some(),
        "expected the published room in /publicRooms, got {listed}"
    );

    expect_ok(
        alice.put(&path, &json!({ "visibility": "private" })).await,
        "PUT visibility private",
    );
    let listed = public_rooms(&alice).await;
    assert!(
        chunk_has(&listed, &room).is_none(),
        "expected the unpublished room gone from /publicRooms, got {listed}"
    );
}

#[tokio::test]
async fn state_can_be_put_and_read_with_and_without_a_state_key() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let r = enc(&room);

    // Empty state key: the trailing slash is optional.
    let put = expect_ok(
        alice
            .put(
                &format!("/rooms/{r}/state/m.room.topic"),
                &json!({ "topic": "first" }),
            )
            .await,
        "PUT state without a state key",
    );
    assert!(
        put["event_id"].is_string(),
        "expected an event_id, got {put}"
    );
    let got = expect_ok(
        alice.get(&format!("/rooms/{r}/state/m.room.topic")).await,
        "GET state without a state key",
    );
    assert_eq!(
        got,
        json!({ "topic": "first" }),
        "expected the topic content, got {got}"
    );
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "second" }))
        .await;
    let got = expect_ok(
        alice.get(&format!("/rooms/{r}/state/m.room.topic/")).await,
        "GET state with an empty state key",
    );
    assert_eq!(
        got,
        json!({ "topic": "second" }),
        "expected the updated topic, got {got}"
    );

    alice
        .put_state(&room, "org.example.thing", "alpha", &json!({ "v": 1 }))
        .await;
    let got = alice
        .state_content(&room, "org.example.thing", "alpha")
        .await;
    assert_eq!(
        got,
        json!({ "v": 1 }),
        "expected the keyed state content, got {got}"
    );
    let missing = alice.get_state(&room, "org.example.thing", "beta").await;
    expect_error(
        &missing,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "GET of a state key never set",
    );
}

#[tokio::test]
async fn full_room_state_lists_the_creation_events() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "n" }))
        .await;
    let state = alice.full_state(&room).await;

    for (ty, key) in [
        ("m.room.create", ""),
        ("m.room.member", alice.user_id.as_str()),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.name", ""),
    ] {
        assert!(
            find_state(&state, ty, key).is_some(),
            "expected {ty}/{key} in GET /rooms/{{id}}/state, got {state:?}"
        );
    }
    for ev in &state {
        for field in ["event_id", "type", "sender", "state_key"] {
            assert!(
                ev[field].is_string(),
                "expected string `{field}` on every state event, got {ev}"
            );
        }
        assert!(
            ev["content"].is_object(),
            "expected object content on every state event, got {ev}"
        );
        assert!(
            ev["origin_server_ts"].is_u64(),
            "expected origin_server_ts on every state event, got {ev}"
        );
    }
}

#[tokio::test]
async fn event_ids_are_url_safe_reference_hashes() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    for version in ["11", "12"] {
        let room = alice.create_room(&json!({ "room_version": version })).await;
        let event_id = alice.send_text(&room, "hello").await;
        assert!(
            is_hash_id(&event_id, '$'),
            "expected $ + 43 url-safe base64 chars in a v{version} room, got {event_id}"
        );
        for ev in alice.full_state(&room).await {
            let id = ev["event_id"].as_str().unwrap_or_default();
            assert!(
                is_hash_id(id, '$'),
                "expected every state event id to be a reference hash in v{version}, got {ev}"
            );
        }
    }
}

/// Regression (found by the load tool): concurrent createRoom calls of one user with the same
/// body made identical v12 create events, hence the same room id, and half of them failed.
#[tokio::test]
async fn concurrent_room_creation_by_one_user_gives_distinct_rooms() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let body = json!({});
    let creates = (0..16).map(|_| alice.post("/createRoom", &body));
    let results = futures::future::join_all(creates).await;
    let mut ids = Vec::new();
    for (status, body) in results {
        assert_eq!(
            status,
            StatusCode::OK,
            "every createRoom succeeds, got {status}: {body}"
        );
        ids.push(body["room_id"].as_str().unwrap_or_default().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 16, "16 distinct rooms: {ids:?}");
}
