//! Issue 14: behaviours the Matrix community's conformance suite (Complement) checks that
//! Paracord got wrong, each pinned here so CI keeps them.

use paracord_complement::{enc, expect_error, expect_ok, Client, StatusCode, TestServer};
use serde_json::{json, Value};

async fn public_room_with_two() -> (
    TestServer,
    paracord_complement::User,
    paracord_complement::User,
    String,
) {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    (server, alice, bob, room)
}

/// Sending a state event that repeats the current one (same sender and content), or joining
/// again, makes no new event: the answer is the current event's id.
#[tokio::test]
async fn repeated_state_and_repeated_joins_make_no_new_events() {
    let (_server, alice, bob, room) = public_room_with_two().await;
    let topic = json!({ "topic": "same" });
    let put = |content: Value| {
        let alice = &alice;
        let room = &room;
        async move {
            expect_ok(
                alice
                    .put(
                        &format!("/rooms/{}/state/m.room.topic/", enc(room)),
                        &content,
                    )
                    .await,
                "set the topic",
            )["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let first = put(topic.clone()).await;
    let again = put(topic.clone()).await;
    assert_eq!(first, again, "a no-op state change is the current event");
    let changed = put(json!({ "topic": "other" })).await;
    assert_ne!(first, changed);

    let member = |who: &paracord_complement::User| {
        let alice = &alice;
        let room = &room;
        let who = who.user_id.clone();
        async move {
            alice
                .get(&format!(
                    "/rooms/{}/state/m.room.member/{}?format=event",
                    enc(room),
                    enc(&who)
                ))
                .await
        }
    };
    let (status, before) = member(&bob).await;
    assert_eq!(status, 200, "{before}");
    bob.join_ok(&room).await;
    let (_, after) = member(&bob).await;
    assert_eq!(
        before["event_id"], after["event_id"],
        "joining again changes nothing: {before} / {after}"
    );
    let messages = alice.all_messages(&room).await;
    let joins = messages
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .count();
    assert_eq!(joins, 1, "one join of bob in the timeline");
}

/// `?format=event` on a state read answers the whole event; the default is its content.
#[tokio::test]
async fn state_reads_answer_the_event_with_format_event() {
    let (_server, alice, _bob, room) = public_room_with_two().await;
    let path = format!("/rooms/{}/state/m.room.create/", enc(&room));
    let content = expect_ok(alice.get(&path).await, "create content");
    assert!(content.get("type").is_none(), "{content}");
    let event = expect_ok(
        alice.get(&format!("{path}?format=event")).await,
        "create event",
    );
    assert_eq!(event["type"], "m.room.create", "{event}");
    assert_eq!(event["room_id"], room.as_str(), "{event}");
    assert!(event["event_id"].is_string(), "{event}");
    assert_eq!(event["content"], content);
}

/// The fields of a `/join` body (but `third_party_signed`) are the member event's content.
#[tokio::test]
async fn joins_carry_the_clients_custom_content() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    expect_ok(
        bob.post(
            &format!("/join/{}", enc(&room)),
            &json!({ "foo": "bar", "reason": "hello" }),
        )
        .await,
        "join with content",
    );
    let m = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(m["membership"], "join", "{m}");
    assert_eq!(m["foo"], "bar", "{m}");
    assert_eq!(m["reason"], "hello", "{m}");
}

/// `m.room.canonical_alias` names aliases of this room only (`M_BAD_ALIAS`, or
/// `M_INVALID_PARAM` for something that is no alias); deleting an alias takes it out of the
/// canonical alias event.
#[tokio::test]
async fn canonical_aliases_point_at_the_room_and_follow_deletions() {
    let (server, alice, _bob, room) = public_room_with_two().await;
    let other = alice.create_room(&json!({})).await;
    let local = paracord_complement::random_localpart();
    let alias = format!("#{local}:{}", server.server_name());
    let elsewhere = format!("#{local}x:{}", server.server_name());
    for (a, r) in [(&alias, &room), (&elsewhere, &other)] {
        expect_ok(
            alice
                .put(
                    &format!("/directory/room/{}", enc(a)),
                    &json!({ "room_id": r }),
                )
                .await,
            "create alias",
        );
    }
    let path = format!("/rooms/{}/state/m.room.canonical_alias/", enc(&room));
    let missing = format!("#nope{local}:{}", server.server_name());
    for (content, code) in [
        (json!({ "alias": missing }), "M_BAD_ALIAS"),
        (json!({ "alias": elsewhere }), "M_BAD_ALIAS"),
        (
            json!({ "alias": alias, "alt_aliases": [elsewhere] }),
            "M_BAD_ALIAS",
        ),
        (json!({ "alias": "%invalid" }), "M_INVALID_PARAM"),
        (
            json!({ "alt_aliases": ["not an alias"] }),
            "M_INVALID_PARAM",
        ),
    ] {
        expect_error(
            &alice.put(&path, &content).await,
            StatusCode::BAD_REQUEST,
            code,
            &format!("canonical alias {content}"),
        );
    }
    expect_ok(
        alice.put(&path, &json!({ "alias": alias })).await,
        "a canonical alias of the room",
    );
    expect_ok(
        alice
            .delete(&format!("/directory/room/{}", enc(&alias)), &json!({}))
            .await,
        "delete the alias",
    );
    let content = alice
        .state_content(&room, "m.room.canonical_alias", "")
        .await;
    assert_eq!(
        content,
        json!({}),
        "the deleted alias is no longer canonical"
    );
}

/// Size limits: a state key of more than 255 bytes is refused.
#[tokio::test]
async fn state_keys_longer_than_255_bytes_are_refused() {
    let (_server, alice, _bob, room) = public_room_with_two().await;
    let long = "k".repeat(256);
    let resp = alice
        .put(
            &format!("/rooms/{}/state/org.example.long/{long}", enc(&room)),
            &json!({}),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
        "a 256-byte state key",
    );
    let ok = "k".repeat(255);
    expect_ok(
        alice
            .put(
                &format!("/rooms/{}/state/org.example.long/{ok}", enc(&room)),
                &json!({}),
            )
            .await,
        "a 255-byte state key",
    );
}

/// Events the user may not see are not found; the messages of an unknown room are refused
/// like those of a room the user is not in.
#[tokio::test]
async fn unseen_events_are_not_found_and_unknown_rooms_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "shared" },
            }],
        }))
        .await;
    let event = alice.send_text(&room, "members only").await;
    let resp = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&event)))
        .await;
    expect_error(
        &resp,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an event bob may not see",
    );
    let resp = alice
        .get(&format!(
            "/rooms/{}/messages?dir=b",
            enc(&format!("!does-not-exist:{}", server.server_name()))
        ))
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "/messages of an unknown room",
    );
}

/// User ids log in whatever the case of their localpart.
#[tokio::test]
async fn logins_ignore_the_case_of_the_user_id() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let upper = format!(
        "@{}:{}",
        alice.localpart.to_uppercase(),
        server.server_name()
    );
    let body = expect_ok(
        server
            .client()
            .post(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": upper },
                    "password": alice.password,
                }),
            )
            .await,
        "login with an upper-case user id",
    );
    assert_eq!(body["user_id"], alice.user_id.as_str(), "{body}");
    let me = Client::new(
        &server.base_url(),
        body["access_token"].as_str().map(str::to_owned),
    );
    let (_, who) = me.whoami().await;
    assert_eq!(who["user_id"], alice.user_id.as_str(), "{who}");
}

/// User-interactive auth with another user's valid password is refused (403), and the device
/// stays.
#[tokio::test]
async fn uia_with_someone_elses_credentials_is_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let second = server.login(&alice.localpart, &alice.password).await;
    let path = format!("/devices/{}", enc(&second.device_id));
    let resp = alice
        .delete(
            &path,
            &json!({ "auth": {
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": bob.user_id },
                "password": bob.password,
            }}),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob's credentials for alice",
    );
    expect_ok(alice.get(&path).await, "the device is still there");
    expect_ok(
        alice
            .delete(
                &path,
                &json!({ "auth": {
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": alice.user_id },
                    "password": alice.password,
                }}),
            )
            .await,
        "alice's own credentials",
    );
}

/// A pusher belongs to the session that set it: changing the password (which logs out the
/// other devices) deletes the pushers of the other sessions and keeps the caller's.
#[tokio::test]
async fn a_password_change_deletes_the_other_sessions_pushers() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let other = server.login(&alice.localpart, &alice.password).await;
    let pusher = |key: &str| {
        json!({
            "kind": "http", "app_id": "chat.paracord.test", "app_display_name": "t",
            "device_display_name": "d", "pushkey": key, "lang": "en",
            "data": { "url": "http://127.0.0.1:9/_matrix/push/v1/notify" },
        })
    };
    expect_ok(
        alice.post("/pushers/set", &pusher("mine")).await,
        "own pusher",
    );
    expect_ok(
        other.post("/pushers/set", &pusher("theirs")).await,
        "other pusher",
    );
    let listed = expect_ok(alice.get("/pushers").await, "pushers");
    assert_eq!(
        listed["pushers"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert!(
        listed["pushers"][0].get("paracord.device_id").is_none(),
        "no internal fields shown: {listed}"
    );
    expect_ok(
        alice
            .post(
                "/account/password",
                &json!({
                    "new_password": "a whole new password",
                    "auth": {
                        "type": "m.login.password",
                        "identifier": { "type": "m.id.user", "user": alice.user_id },
                        "password": alice.password,
                    },
                }),
            )
            .await,
        "change the password",
    );
    let listed = expect_ok(alice.get("/pushers").await, "pushers after");
    let keys: Vec<&str> = listed["pushers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pushkey"].as_str())
        .collect();
    assert_eq!(keys, vec!["mine"], "{listed}");
}

/// Server notices (Synapse's admin API, which admin tools and Complement use): admins only;
/// the user is invited by the system user to one room they cannot refuse, may leave once
/// joined and are invited back to the same room; a repeated transaction is one notice.
#[tokio::test]
async fn server_notices_reach_users_in_one_room_they_cannot_refuse() {
    let server = TestServer::start().await;
    let admin = server
        .admin_register(&paracord_complement::random_localpart(), true)
        .await;
    let alice = server.register_random().await;
    let system = format!("@_server:{}", server.server_name());
    let notice = json!({
        "user_id": alice.user_id,
        "content": { "msgtype": "m.text", "body": "hello from the admins" },
    });
    let path = "/_synapse/admin/v1/send_server_notice";
    let url = |p: &str| format!("{}{p}", server.base_url());
    let send =
        |method: reqwest::Method, who: &paracord_complement::User, p: String, body: &Value| {
            let token = who.access_token.clone();
            let body = body.clone();
            async move {
                let resp = reqwest::Client::new()
                    .request(method, p)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
    let post = |who: &paracord_complement::User, p: String, body: &Value| {
        send(reqwest::Method::POST, who, p, body)
    };
    let put = |who: &paracord_complement::User, p: String, body: &Value| {
        send(reqwest::Method::PUT, who, p, body)
    };
    expect_error(
        &post(&alice, url(path), &notice).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a notice from a plain user",
    );
    let first = expect_ok(post(&admin, url(path), &notice).await, "a notice");
    let sync = alice
        .sync_until(None, None, "the invite from the system user", |s| {
            s["rooms"]["invite"]
                .as_object()
                .is_some_and(|rooms| !rooms.is_empty())
        })
        .await;
    let (room, invite) = sync["rooms"]["invite"]
        .as_object()
        .and_then(|r| r.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("an invite");
    assert!(
        invite["invite_state"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["sender"] == system.as_str()),
        "invited by {system}: {invite}"
    );
    let (status, body) = alice
        .post(&format!("/rooms/{}/leave", enc(&room)), &json!({}))
        .await;
    expect_error(
        &(status, body),
        StatusCode::FORBIDDEN,
        "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
        "rejecting the notices invite",
    );
    alice.join_ok(&room).await;
    let messages = alice.all_messages(&room).await;
    assert!(
        messages.iter().any(|e| e["event_id"] == first["event_id"]),
        "the notice is in the room: {messages:?}"
    );
    // Alice reads; she cannot write there.
    let (status, _) = alice
        .put(
            &format!(
                "/rooms/{}/send/m.room.message/{}",
                enc(&room),
                Client::txn_id()
            ),
            &json!({ "msgtype": "m.text", "body": "reply" }),
        )
        .await;
    assert_eq!(status, 403, "users do not write in their notices room");
    alice.leave_ok(&room).await;
    expect_ok(post(&admin, url(path), &notice).await, "another notice");
    let sync = alice
        .sync_until(None, None, "the invite back", |s| {
            s["rooms"]["invite"].get(&room).is_some()
        })
        .await;
    assert!(sync["rooms"]["invite"]
        .as_object()
        .is_some_and(|r| r.len() == 1));
    let with_txn = url(&format!("{path}/txn1"));
    let a = expect_ok(
        put(&admin, with_txn.clone(), &notice).await,
        "notice with txn",
    );
    let b = expect_ok(put(&admin, with_txn, &notice).await, "same txn again");
    assert_eq!(a["event_id"], b["event_id"], "one notice per transaction");
    // Nobody registers the system user.
    let (status, body) = server
        .register_raw(json!({
            "username": "_server", "password": "whatever pass",
            "auth": { "type": "m.login.dummy" },
        }))
        .await;
    assert_eq!(status, 400, "the system localpart is reserved: {body}");
}

/// A join -> join change (a new display name) in a restricted room ignores any
/// `join_authorised_via_users_server` the client sent, as the spec says for such transitions.
#[tokio::test]
async fn a_rejoin_ignores_a_client_supplied_join_authoriser() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let space = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let room = alice
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": space }] },
            }],
        }))
        .await;
    bob.join_ok(&space).await;
    bob.join_ok(&room).await;
    expect_ok(
        bob.put(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ),
            &json!({
                "membership": "join", "displayname": "Bobby",
                "join_authorised_via_users_server": "unused",
            }),
        )
        .await,
        "a join -> join with a bogus authoriser",
    );
    let m = alice
        .state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(m["displayname"], "Bobby", "{m}");
    assert!(m.get("join_authorised_via_users_server").is_none(), "{m}");
}

/// Room version 12 creators (MSC4289): `additional_creators` is validated (400), trusted
/// private chats make their invitees creators, creators may not be listed in power levels
/// (400, not 403), no second create event can be sent (400), and an upgrade names the new
/// room's additional creators and takes them out of its power levels.
#[tokio::test]
async fn v12_creators_are_validated_and_kept_out_of_power_levels() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    for bad in [
        json!("nope"),
        json!(["@a:example.org", 42]),
        json!(["not-a-user"]),
    ] {
        let (status, body) = alice
            .post(
                "/createRoom",
                &json!({ "room_version": "12", "creation_content": { "additional_creators": bad } }),
            )
            .await;
        assert_eq!(status, 400, "additional_creators {bad}: {body}");
    }
    let (status, body) = alice
        .post(
            "/createRoom",
            &json!({ "room_version": "12",
                "power_level_content_override": { "users": { alice.user_id.clone(): 100 } } }),
        )
        .await;
    assert_eq!(
        status, 400,
        "the creator in the power levels override: {body}"
    );

    let room = alice
        .create_room(&json!({
            "room_version": "12", "preset": "trusted_private_chat", "is_direct": true,
            "invite": [bob.user_id],
        }))
        .await;
    let create = alice.state_content(&room, "m.room.create", "").await;
    assert_eq!(
        create["additional_creators"],
        json!([bob.user_id]),
        "{create}"
    );
    let pl = alice.state_content(&room, "m.room.power_levels", "").await;
    assert!(pl["users"].get(&bob.user_id).is_none(), "{pl}");
    let path = format!("/rooms/{}/state/m.room.power_levels/", enc(&room));
    for who in [&alice.user_id, &bob.user_id] {
        let (status, body) = alice
            .put(&path, &json!({ "users": { who.clone(): 100 } }))
            .await;
        assert_eq!(status, 400, "creator {who} in power levels: {body}");
    }
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/state/m.room.create/", enc(&room)),
            &json!({ "room_version": "12" }),
        )
        .await;
    assert_eq!(status, 400, "a second create event: {body}");

    // An upgrade to v12 naming bob as an additional creator.
    let old = alice
        .create_room(&json!({ "room_version": "11", "preset": "public_chat" }))
        .await;
    bob.join_ok(&old).await;
    let mut levels = alice.state_content(&old, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(100);
    alice
        .put_state(&old, "m.room.power_levels", "", &levels)
        .await;
    let upgraded = expect_ok(
        alice
            .post(
                &format!("/rooms/{}/upgrade", enc(&old)),
                &json!({ "new_version": "12", "additional_creators": [bob.user_id] }),
            )
            .await,
        "upgrade",
    );
    let new_room = upgraded["replacement_room"].as_str().unwrap_or_default();
    let create = alice.state_content(new_room, "m.room.create", "").await;
    assert_eq!(
        create["additional_creators"],
        json!([bob.user_id]),
        "{create}"
    );
    let pl = alice
        .state_content(new_room, "m.room.power_levels", "")
        .await;
    assert_eq!(
        pl["users"],
        json!({}),
        "creators are not in power levels: {pl}"
    );
}

/// MSC4311: the create event in an invite's stripped state is whole (clients read the room
/// version and creators from it).
#[tokio::test]
async fn the_create_event_in_invite_state_is_whole() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    alice.invite_ok(&room, &bob.user_id).await;
    let sync = bob.sync(None, 0, None).await;
    let events = sync["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let create = events
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .unwrap_or_else(|| panic!("a create event in {events:?}"));
    assert!(create["origin_server_ts"].is_u64(), "{create}");
    assert!(create["event_id"].is_string(), "{create}");
    assert!(create.get("auth_events").is_none(), "client form: {create}");
}

/// A redaction of an event this server does not have is sent when its sender may redact
/// anyone's events (the servers that have the event apply it); others get a 404.
#[tokio::test]
async fn redacting_an_unknown_event_needs_the_power_to_redact_others() {
    let (_server, alice, bob, room) = public_room_with_two().await;
    let path = |who: &str| {
        format!(
            "/rooms/{}/redact/{}/{who}{}",
            enc(&room),
            enc("$unknown-event-id"),
            Client::txn_id()
        )
    };
    let (status, body) = bob.put(&path("b"), &json!({})).await;
    assert_eq!(status, 404, "bob may not redact others: {body}");
    let (status, body) = alice.put(&path("a"), &json!({})).await;
    assert_eq!(status, 200, "alice, the room's admin: {body}");
}
