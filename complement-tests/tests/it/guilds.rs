//! The Paracord profile's guilds through `/_paracord/v1` (spec/rest.md §5–7), and how a guild
//! looks to plain Matrix clients: a space whose channels are restricted rooms.

use paracord_complement::{enc, expect_ok, Method, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn a_new_guild_has_everyone_a_category_and_general_and_is_a_space_to_matrix_clients() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let guild = expect_ok(
        alice
            .post(
                "/_paracord/v1/guilds",
                &json!({ "name": "Rustaceans", "description": "Talk about Rust" }),
            )
            .await,
        "POST /_paracord/v1/guilds",
    );
    let id = guild["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with('!'), "got {guild}");
    assert_eq!(guild["owner"], alice.user_id.as_str());
    assert_eq!(guild["version"], "1");
    assert_eq!(guild["name"], "Rustaceans");
    let channels = guild["channels"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = channels.iter().filter_map(|c| c["kind"].as_str()).collect();
    assert_eq!(kinds, ["category", "text"], "got {guild}");
    let general = channels[1]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(channels[1]["name"], "general");
    assert_eq!(channels[1]["parent"], channels[0]["id"]);
    assert_eq!(guild["system_channel"], general.as_str());
    assert_eq!(
        guild["roles"],
        json!([{ "id": "everyone", "name": "@everyone", "color": 0, "position": 0,
                 "hoist": false, "mentionable": false, "permissions": "563330128662081" }])
    );
    // Reading it back.
    let again = expect_ok(
        alice
            .get(&format!("/_paracord/v1/guilds/{}", enc(&id)))
            .await,
        "GET guild",
    );
    assert_eq!(again["system_channel"], general.as_str());
    let listed = expect_ok(
        alice
            .get(&format!("/_paracord/v1/guilds/{}/channels", enc(&id)))
            .await,
        "GET channels",
    );
    assert_eq!(listed, Value::Array(channels.clone()));
    // Not a member: as if it did not exist.
    let (status, body) = bob.get(&format!("/_paracord/v1/guilds/{}", enc(&id))).await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // Seen from Matrix: a space listing its channels, which its members join.
    let hierarchy = expect_ok(
        alice
            .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&id)))
            .await,
        "hierarchy",
    );
    // In the guild's order: the space, then its children by `m.space.child` `order`.
    let names: Vec<&str> = hierarchy["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["Rustaceans", "Text Channels", "general"],
        "got {hierarchy}"
    );
    let (status, body) = bob.join(&general).await;
    assert_eq!(status.as_u16(), 403, "not in the guild yet: {body}");
    alice.invite_ok(&id, &bob.user_id).await;
    bob.join_ok(&id).await;
    bob.join_ok(&general).await;
    bob.send_text(&general, "hello guild").await;
    // The projected power levels: everyone may send, the owner (creator, v12) is not listed.
    let pl = alice
        .state_content(&general, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users_default"], 1, "got {pl}");
    assert_eq!(pl["events_default"], 1, "got {pl}");
    assert!(pl["users"].get(&alice.user_id).is_none(), "got {pl}");
    assert_eq!(pl["events"]["m.room.power_levels"], 90, "got {pl}");
}

#[tokio::test]
async fn creating_a_guild_checks_its_input() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    for (body, errcode) in [
        (json!({}), "M_MISSING_PARAM"),
        (json!({ "name": "" }), "M_INVALID_PARAM"),
        (json!({ "name": 5 }), "M_BAD_JSON"),
        (
            json!({ "name": "x", "icon": "https://example.org/a.png" }),
            "M_INVALID_PARAM",
        ),
    ] {
        let (status, answer) = alice.post("/_paracord/v1/guilds", &body).await;
        assert_eq!(status.as_u16(), 400, "{body} → {answer}");
        assert_eq!(answer["errcode"], errcode, "{body} → {answer}");
    }
    let reply = alice
        .client
        .raw(
            Method::POST,
            "/_paracord/v1/guilds",
            Some((b"not json".to_vec(), "application/json")),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 400);
    let (status, _) = server
        .client()
        .post("/_paracord/v1/guilds", &json!({ "name": "x" }))
        .await;
    assert_eq!(status.as_u16(), 401, "no token");
    let (status, body) = alice.get("/_paracord/v1/guilds/!nope:x").await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
}

/// Alice's guild with bob and carol joined to the space and #general.
async fn guild_with_members() -> (
    TestServer,
    paracord_complement::User,
    paracord_complement::User,
    paracord_complement::User,
    String,
    String,
) {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let guild = expect_ok(
        alice
            .post("/_paracord/v1/guilds", &json!({ "name": "Roles" }))
            .await,
        "create guild",
    );
    let id = guild["id"].as_str().unwrap_or_default().to_owned();
    let general = guild["system_channel"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for u in [&bob, &carol] {
        alice.invite_ok(&id, &u.user_id).await;
        u.join_ok(&id).await;
        u.join_ok(&general).await;
    }
    (server, alice, bob, carol, id, general)
}

#[tokio::test]
async fn roles_give_permissions_and_power_levels_within_the_hierarchy() {
    let (_server, alice, bob, carol, id, general) = guild_with_members().await;
    let roles_path = format!("/_paracord/v1/guilds/{}/roles", enc(&id));
    // MANAGE_MESSAGES (8192) | KICK_MEMBERS (2) | MANAGE_ROLES (268435456)
    let moderator = expect_ok(
        alice
            .post(
                &roles_path,
                &json!({ "name": "Moderator", "position": 5, "permissions": "268443650" }),
            )
            .await,
        "alice creates Moderator",
    );
    let helper = expect_ok(
        alice
            .post(
                &roles_path,
                &json!({ "name": "Helper", "position": 2, "permissions": "8192" }),
            )
            .await,
        "alice creates Helper",
    );
    let mod_id = moderator["id"].as_str().unwrap_or_default().to_owned();
    let helper_id = helper["id"].as_str().unwrap_or_default().to_owned();
    let assign = |guild: &str, user: &str, role: &str| {
        format!(
            "/_paracord/v1/guilds/{}/members/{}/roles/{}",
            enc(guild),
            enc(user),
            enc(role)
        )
    };
    // Carol has no MANAGE_ROLES: refused.
    let (status, body) = carol.post(&roles_path, &json!({ "name": "x" })).await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let (status, body) = carol
        .put(&assign(&id, &carol.user_id, &mod_id), &json!({}))
        .await;
    assert_eq!(status.as_u16(), 403, "{body}");
    // Alice makes bob a moderator: his level in #general becomes 50.
    let member = expect_ok(
        alice
            .put(&assign(&id, &bob.user_id, &mod_id), &json!({}))
            .await,
        "assign Moderator",
    );
    assert_eq!(member["roles"], json!([mod_id]));
    let pl = alice
        .state_content(&general, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users"][&bob.user_id], 50, "got {pl}");
    // At 50 bob may rename the channel through plain Matrix, but what the guild host alone
    // manages (join rules, the profile's state) is at the owner's level.
    let (status, body) = bob
        .put(
            &format!("/rooms/{}/state/m.room.name/", enc(&general)),
            &json!({ "name": "general-chat" }),
        )
        .await;
    assert_eq!(status.as_u16(), 200, "{body}");
    for (kind, key, content) in [
        ("m.room.join_rules", "", json!({ "join_rule": "public" })),
        (
            "chat.paracord.channel",
            "",
            json!({ "kind": "text", "position": 9 }),
        ),
        (
            "chat.paracord.overwrite",
            "role:everyone",
            json!({ "allow": "8", "deny": "0" }),
        ),
    ] {
        let (status, body) = bob
            .put(
                &format!("/rooms/{}/state/{kind}/{key}", enc(&general)),
                &content,
            )
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{kind} from a moderator: {body}"
        );
    }
    let perms = expect_ok(
        carol
            .get(&format!(
                "/_paracord/v1/channels/{}/permissions/{}",
                enc(&general),
                enc(&bob.user_id)
            ))
            .await,
        "bob's effective permissions",
    );
    let bits: u64 = perms["permissions"]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(
        bits & 8192 != 0 && bits & 2048 != 0,
        "MANAGE_MESSAGES and SEND_MESSAGES: {perms}"
    );
    // Bob (Moderator, position 5) may hand out Helper (2), not Moderator (5), and may not
    // create a role with a permission he lacks (BAN_MEMBERS = 4) or at his own position.
    expect_ok(
        bob.put(&assign(&id, &carol.user_id, &helper_id), &json!({}))
            .await,
        "bob assigns Helper",
    );
    let (status, _) = bob
        .put(&assign(&id, &carol.user_id, &mod_id), &json!({}))
        .await;
    assert_eq!(status.as_u16(), 403, "a role at his own position");
    let (status, _) = bob
        .post(
            &roles_path,
            &json!({ "name": "Banner", "position": 1, "permissions": "4" }),
        )
        .await;
    assert_eq!(status.as_u16(), 403, "a permission bob lacks");
    let (status, _) = bob
        .post(&roles_path, &json!({ "name": "Peer", "position": 5 }))
        .await;
    assert_eq!(status.as_u16(), 403, "a role at bob's own position");
    // Taking the role back lowers bob again.
    expect_ok(
        alice
            .delete(&assign(&id, &bob.user_id, &mod_id), &json!({}))
            .await,
        "unassign Moderator",
    );
    let pl = alice
        .state_content(&general, "m.room.power_levels", "")
        .await;
    assert!(
        pl["users"].get(&bob.user_id).is_none(),
        "back to the default: {pl}"
    );
    // Bad input.
    for (body, code) in [
        (json!({ "permissions": "-1" }), "M_INVALID_PARAM"),
        (json!({ "color": 16777216 }), "M_INVALID_PARAM"),
        (json!({ "position": 0 }), "M_INVALID_PARAM"),
        (json!({ "hoist": "yes" }), "M_BAD_JSON"),
    ] {
        let (status, answer) = alice.post(&roles_path, &body).await;
        assert_eq!(
            (status.as_u16(), answer["errcode"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, _) = alice
        .put(&assign(&id, &bob.user_id, "no-such-role"), &json!({}))
        .await;
    assert_eq!(status.as_u16(), 404);
}

#[tokio::test]
async fn a_path_that_cannot_be_read_is_a_matrix_error() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    for path in [
        "/_paracord/v1/guilds/%FF%FE",
        "/_paracord/v1/guilds/%FF/members/%FE",
        "/_paracord/v1/channels/%C3%28/permissions/x",
        "/_matrix/client/v1/media/download/%FF/x",
    ] {
        let (status, body) = alice.get(path).await;
        assert_eq!(
            (status.as_u16(), body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn guild_writes_share_the_sending_rate_limit() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_RATE_LIMITS_ENABLED", "true")
    })
    .await;
    let alice = server.register_random().await;
    let guild = expect_ok(
        alice
            .post("/_paracord/v1/guilds", &json!({ "name": "Busy" }))
            .await,
        "create guild",
    );
    let path = format!(
        "/_paracord/v1/guilds/{}",
        enc(guild["id"].as_str().unwrap_or_default())
    );
    let mut limited = None;
    for i in 0..300 {
        let (status, body) = alice
            .patch(&path, &json!({ "description": format!("take {i}") }))
            .await;
        if status.as_u16() == 429 {
            limited = Some(body);
            break;
        }
        assert_eq!(status.as_u16(), 200, "{body}");
    }
    let body = limited.unwrap_or_else(|| panic!("expected a 429 within 300 writes"));
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    // Reads are not limited.
    expect_ok(alice.get(&path).await, "GET guild while limited");
}
