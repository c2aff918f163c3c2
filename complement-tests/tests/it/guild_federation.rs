//! A guild across two Paracord servers (spec/rest.md §3, spec/profile.md §5): a user of
//! another server accepts an invite through their own server, which relays to the guild
//! host; their writes are relayed and checked by the host; both servers hold them to the
//! same permissions.

use std::time::Duration;

use paracord_complement::{
    enc, expect_ok,
    federation::{federating_server, server_signing_key, x_matrix_with_content},
    User,
};
use serde_json::{json, Value};

/// Polls `check` every 100 ms for up to 20 s until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A new guild of `owner` and an invite to its #general: `(guild, general, code)`.
async fn guild_with_invite(owner: &User, name: &str, max_uses: u32) -> (String, String, String) {
    let guild = expect_ok(
        owner
            .post("/_paracord/v1/guilds", &json!({ "name": name }))
            .await,
        "create guild",
    );
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let general = text(&guild["system_channel"]);
    let invite = expect_ok(
        owner
            .post(
                &format!("/_paracord/v1/channels/{}/invites", enc(&general)),
                &json!({ "max_uses": max_uses }),
            )
            .await,
        "create invite",
    );
    (text(&guild["id"]), general, text(&invite["code"]))
}

async fn send(user: &User, room: &str, text: &str) -> (u16, Value) {
    let (status, body) = user
        .put(
            &format!(
                "/rooms/{}/send/m.room.message/{}",
                enc(room),
                paracord_complement::random_word()
            ),
            &json!({ "msgtype": "m.text", "body": text }),
        )
        .await;
    (status.as_u16(), body)
}

#[tokio::test]
async fn a_member_on_another_server_joins_by_invite_and_both_servers_hold_them_to_the_same_permissions(
) {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let (guild_id, general, code) = guild_with_invite(&alice, "Across", 2).await;

    // Bob's server does not know the code: without `server` it is unknown, with it the
    // guild host answers.
    let (status, body) = bob.get(&format!("/_paracord/v1/invites/{code}")).await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
    let preview = expect_ok(
        bob.get(&format!(
            "/_paracord/v1/invites/{code}?server={}",
            enc(&a_name)
        ))
        .await,
        "preview through B",
    );
    assert_eq!(preview["guild"]["name"], "Across", "got {preview}");
    assert_eq!(preview["uses"], 0);

    // Accepting: A invites bob, B joins him to the space and #general.
    let accepted = expect_ok(
        bob.post(
            &format!("/_paracord/v1/invites/{code}?server={}", enc(&a_name)),
            &json!({}),
        )
        .await,
        "accept through B",
    );
    assert_eq!(accepted["guild_id"], guild_id.as_str());
    assert_eq!(accepted["channel_id"], general.as_str());
    let joined = expect_ok(bob.get("/joined_rooms").await, "bob's rooms");
    let joined: Vec<&str> = joined["joined_rooms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        joined.contains(&guild_id.as_str()) && joined.contains(&general.as_str()),
        "bob should be in the space and #general: {joined:?}"
    );
    let used = expect_ok(
        alice.get(&format!("/_paracord/v1/invites/{code}")).await,
        "invite on A",
    );
    assert_eq!(used["uses"], 1, "one use counted: {used}");

    // Reads come from B's own copy of the guild.
    let on_b = expect_ok(
        bob.get(&format!("/_paracord/v1/guilds/{}", enc(&guild_id)))
            .await,
        "guild on B",
    );
    assert_eq!(on_b["owner"], alice.user_id.as_str());
    let channels = expect_ok(
        bob.get(&format!("/_paracord/v1/guilds/{}/channels", enc(&guild_id)))
            .await,
        "channels on B",
    );
    assert_eq!(channels.as_array().map(Vec::len), Some(2), "got {channels}");

    // A new channel reaches B's members: B joins bob to it, and B lists it.
    let random = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/channels", enc(&guild_id)),
                &json!({ "name": "random", "kind": "text" }),
            )
            .await,
        "create #random",
    );
    let random = random["id"].as_str().unwrap_or_default().to_owned();
    eventually("B to join bob to #random", || async {
        let rooms = bob.get("/joined_rooms").await.1;
        rooms["joined_rooms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r == random.as_str()))
            .then_some(())
    })
    .await;
    let channels = expect_ok(
        bob.get(&format!("/_paracord/v1/guilds/{}/channels", enc(&guild_id)))
            .await,
        "channels on B",
    );
    assert_eq!(channels.as_array().map(Vec::len), Some(3), "got {channels}");

    // A write without the permission: relayed, refused by the host, the refusal passed on.
    let path = format!("/_paracord/v1/guilds/{}", enc(&guild_id));
    let (status, body) = bob.patch(&path, &json!({ "description": "bob's" })).await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "got {body}"
    );

    // With a role granting MANAGE_GUILD (1 << 5) the same write is carried out by the host.
    let role = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/roles", enc(&guild_id)),
                &json!({ "name": "Manager", "permissions": "32" }),
            )
            .await,
        "create role",
    );
    let role_id = role["id"].as_str().unwrap_or_default().to_owned();
    expect_ok(
        alice
            .put(
                &format!(
                    "/_paracord/v1/guilds/{}/members/{}/roles/{role_id}",
                    enc(&guild_id),
                    enc(&bob.user_id)
                ),
                &json!({}),
            )
            .await,
        "give bob the role",
    );
    // B must have the role assignment before it lets the write through its own checks.
    eventually("B to see bob's role", || async {
        let m = bob
            .get(&format!(
                "/_paracord/v1/guilds/{}/members/{}",
                enc(&guild_id),
                enc(&bob.user_id)
            ))
            .await
            .1;
        (m["roles"] == json!([role_id.clone()])).then_some(())
    })
    .await;
    let patched = expect_ok(
        bob.patch(&path, &json!({ "description": "bob's" })).await,
        "PATCH guild through B",
    );
    assert_eq!(patched["description"], "bob's");
    let on_a = expect_ok(alice.get(&path).await, "guild on A");
    assert_eq!(on_a["description"], "bob's", "the host carried it out");
    eventually("B to see the new description", || async {
        (bob.get(&path).await.1["description"] == "bob's").then_some(())
    })
    .await;

    // Sending: allowed now; after @everyone is denied SEND_MESSAGES (1 << 11) in #general,
    // both servers compute the same permissions and B refuses bob's message.
    let (status, body) = send(&bob, &general, "hello from B").await;
    assert_eq!(status, 200, "bob may send: {body}");
    expect_ok(
        alice
            .put(
                &format!(
                    "/_paracord/v1/channels/{}/permissions/role:everyone",
                    enc(&general)
                ),
                &json!({ "allow": "0", "deny": "2048" }),
            )
            .await,
        "deny SEND_MESSAGES",
    );
    let perms_path = format!(
        "/_paracord/v1/channels/{}/permissions/{}",
        enc(&general),
        enc(&bob.user_id)
    );
    let on_a = alice.get(&perms_path).await.1["permissions"].clone();
    let on_b = eventually("B to agree with A on bob's permissions", || async {
        let p = bob.get(&perms_path).await.1["permissions"].clone();
        (p == on_a).then_some(p)
    })
    .await;
    let bits: u64 = on_b
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(bits & 2048, 0, "SEND_MESSAGES is gone: {on_b}");
    let (status, body) = send(&bob, &general, "should be refused").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "B refuses: {body}"
    );
    // Alice, the owner, still sends.
    let (status, _) = send(&alice, &general, "owner speaks").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn relays_are_signed_for_the_senders_own_users_and_answered_once_per_transaction() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let (guild_id, general, code) = guild_with_invite(&alice, "Signed", 5).await;
    let key = server_signing_key(&b);
    let relay = |txn: &str, body: Value, signed: bool| {
        let uri = format!("/_paracord/federation/v1/relay/{txn}");
        let auth = x_matrix_with_content(&key, &b_name, &a_name, "PUT", &uri, Some(&body));
        let url = format!("{}{uri}", a.base_url());
        async move {
            let mut req = reqwest::Client::new().put(url).json(&body);
            if signed {
                req = req.header("Authorization", auth);
            }
            let resp = req.send().await.expect("an answer to the relay");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let accept = |user: &str| {
        json!({ "user_id": user, "method": "POST",
                "path": format!("/_paracord/v1/invites/{code}"), "body": {} })
    };

    // Unsigned: 401. Signed by B for a user of A, or of a third server: 403.
    let (status, body) = relay("t0", accept(&bob.user_id), false).await;
    assert_eq!(status, 401, "unsigned relay: {body}");
    let (status, body) = relay("t1", accept(&alice.user_id), true).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "B acting for A's user: {body}"
    );
    let (status, body) = relay("t2", accept("@mallory:elsewhere.example"), true).await;
    assert_eq!(status, 403, "B acting for a third server's user: {body}");
    // Bad input: not a Paracord path, an unknown method, guild creation.
    let (status, body) = relay(
        "t3",
        json!({ "user_id": bob.user_id, "method": "GET", "path": "/_matrix/client/v3/joined_rooms" }),
        true,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "got {body}"
    );
    let (status, body) = relay(
        "t4",
        json!({ "user_id": bob.user_id, "method": "TRACE", "path": "/_paracord/v1/versions" }),
        true,
    )
    .await;
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{status}: {body}");
    let (status, body) = relay(
        "t5",
        json!({ "user_id": bob.user_id, "method": "POST", "path": "/_paracord/v1/guilds",
                "body": { "name": "not hosted for others" } }),
        true,
    )
    .await;
    assert_eq!(status, 403, "guild creation is not relayed: {body}");
    let (status, body) = relay("t6", json!({ "method": "GET" }), true).await;
    assert_eq!(body["errcode"], "M_MISSING_PARAM", "{status}: {body}");

    // A relayed acceptance, sent twice with one transaction id, counts one use.
    let (status, first) = relay("t7", accept(&bob.user_id), true).await;
    assert_eq!(status, 200, "got {first}");
    assert_eq!(first["status"], 200, "got {first}");
    assert_eq!(first["body"]["channel_id"], general.as_str());
    let (_, again) = relay("t7", accept(&bob.user_id), true).await;
    assert_eq!(again, first, "the same answer for the same transaction");
    let invite = expect_ok(
        alice.get(&format!("/_paracord/v1/invites/{code}")).await,
        "invite on A",
    );
    assert_eq!(invite["uses"], 1, "got {invite}");
    // The relayed user was invited over federation: B holds bob's invite to the space.
    eventually("bob's invite to reach B", || async {
        let sync = bob.sync(None, 0, None).await;
        sync["rooms"]["invite"].get(&guild_id).map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_moderator_on_another_server_kicks_through_the_host_and_leaves_the_same_way() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let carol = a.register_random().await;
    let bob = b.register_random().await;
    let (guild_id, general, code) = guild_with_invite(&alice, "Moderated", 5).await;
    expect_ok(
        carol
            .post(&format!("/_paracord/v1/invites/{code}"), &json!({}))
            .await,
        "carol accepts on A",
    );
    expect_ok(
        bob.post(
            &format!("/_paracord/v1/invites/{code}?server={}", enc(&a_name)),
            &json!({}),
        )
        .await,
        "bob accepts through B",
    );
    let member = |user: &User| {
        format!(
            "/_paracord/v1/guilds/{}/members/{}",
            enc(&guild_id),
            enc(&user.user_id)
        )
    };
    // Bob may not kick yet; with KICK_MEMBERS (1 << 1) he may, through B.
    let (status, body) = bob
        .delete(&format!("{}?reason=spam", member(&carol)), &json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let role = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/roles", enc(&guild_id)),
                &json!({ "name": "Mod", "permissions": "2" }),
            )
            .await,
        "create Mod",
    );
    let role_id = role["id"].as_str().unwrap_or_default().to_owned();
    expect_ok(
        alice
            .put(&format!("{}/roles/{role_id}", member(&bob)), &json!({}))
            .await,
        "give bob Mod",
    );
    eventually("B to see bob's role", || async {
        (bob.get(&member(&bob)).await.1["roles"] == json!([role_id.clone()])).then_some(())
    })
    .await;
    expect_ok(
        bob.delete(&format!("{}?reason=spam", member(&carol)), &json!({}))
            .await,
        "bob kicks carol through B",
    );
    for room in [&guild_id, &general] {
        let m = alice
            .state_content(room, "m.room.member", &carol.user_id)
            .await;
        assert_eq!(m["membership"], "leave", "carol kicked from {room}: {m}");
        assert_eq!(m["reason"], "spam", "{m}");
    }
    // Bob leaves through his own server: the host removes him from the channels too.
    expect_ok(
        bob.delete(&member(&bob), &json!({})).await,
        "bob leaves through B",
    );
    for room in [&guild_id, &general] {
        let m = alice
            .state_content(room, "m.room.member", &bob.user_id)
            .await;
        assert_eq!(m["membership"], "leave", "bob left {room}: {m}");
    }
}

/// Whether `user`'s server has them joined to `room`, and their membership there.
async fn membership_in(user: &User, room: &str) -> Option<String> {
    let (status, body) = user
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(room),
            enc(&user.user_id)
        ))
        .await;
    (status.as_u16() == 200)
        .then(|| body["membership"].as_str().map(str::to_owned))
        .flatten()
}

// Issue 15: a space admin cannot join a guild's members on other servers to a room that is
// not a channel of the guild by adding it as a child: a room open to anyone is not followed
// at all, a room that claims to be restricted to the guild but is no channel of it is left
// at once; real channels are still followed.
#[tokio::test]
async fn a_guilds_child_that_is_not_its_channel_does_not_pull_members_in() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let (guild_id, _general, code) = guild_with_invite(&alice, "Lure", 2).await;
    expect_ok(
        bob.post(
            &format!("/_paracord/v1/invites/{code}?server={}", enc(&a_name)),
            &json!({}),
        )
        .await,
        "accept through B",
    );

    let public = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let restricted = alice
        .create_room(&json!({
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": guild_id }]
                }
            }]
        }))
        .await;
    for room in [&public, &restricted] {
        alice
            .put_state(
                &guild_id,
                "m.space.child",
                room,
                &json!({ "via": [a_name.clone()] }),
            )
            .await;
    }
    // A real channel after them: once bob is in it, B has handled the two children.
    let real = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/channels", enc(&guild_id)),
                &json!({ "name": "real", "kind": "text" }),
            )
            .await,
        "create #real",
    );
    let real = real["id"].as_str().unwrap_or_default().to_owned();
    eventually("B to join bob to #real", || async {
        (membership_in(&bob, &real).await.as_deref() == Some("join")).then_some(())
    })
    .await;
    // The restricted impostor may have been joined and left by then or a moment later.
    eventually("bob not to stay in the impostor", || async {
        (membership_in(&bob, &restricted).await.as_deref() != Some("join")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        membership_in(&bob, &public).await,
        None,
        "bob must never have joined the public room"
    );
    assert_ne!(
        membership_in(&bob, &restricted).await.as_deref(),
        Some("join"),
        "bob must not stay in a room that only claims to be a channel"
    );
}

// Issue 16: leaving a guild's space means leaving the guild (spec/guilds.md §2.1), however the
// departure arrives. Here the host's owner kicks Bob from the space with a plain Matrix kick
// (not the guild API, which would kick him from the channels itself): the kick reaches B
// over federation, and B has Bob leave #general on his behalf.
#[tokio::test]
async fn a_member_kicked_from_the_space_over_federation_leaves_its_channels() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let (guild_id, general, code) = guild_with_invite(&alice, "Plain kicks", 5).await;
    expect_ok(
        bob.post(
            &format!("/_paracord/v1/invites/{code}?server={}", enc(&a_name)),
            &json!({}),
        )
        .await,
        "bob accepts through B",
    );
    eventually("bob in #general", || async {
        (alice
            .state_content(&general, "m.room.member", &bob.user_id)
            .await["membership"]
            == "join")
            .then_some(())
    })
    .await;
    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/kick", enc(&guild_id)),
                &json!({ "user_id": bob.user_id }),
            )
            .await,
        "alice kicks bob from the space",
    );
    eventually("bob to have left #general", || async {
        (alice
            .state_content(&general, "m.room.member", &bob.user_id)
            .await["membership"]
            == "leave")
            .then_some(())
    })
    .await;
}
