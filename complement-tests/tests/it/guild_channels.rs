//! Guild settings, channels and permission overwrites through `/_paracord/v1`
//! (spec/rest.md §2, §5, §6, §10), checked both there and in the Matrix rooms they become:
//! join rules, power levels, `m.space.child` orders and memberships.

use paracord_complement::{
    enc, expect_error, expect_ok, Client, Method, StatusCode, TestServer, User,
};
use serde_json::{json, Value};

/// D, @everyone's default permissions (spec/guilds.md §5.1).
const DEFAULTS: u64 = 563_330_128_662_081;
const VIEW_CHANNEL: u64 = 1024;
const SEND_MESSAGES: u64 = 2048;

async fn patch(user: &User, path: &str, body: &Value) -> (StatusCode, Value) {
    user.client
        .try_json(Method::PATCH, path, Some(body))
        .await
        .unwrap_or_else(|e| panic!("PATCH {path}: {e}"))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn guild_path(id: &str) -> String {
    format!("/_paracord/v1/guilds/{}", enc(id))
}

fn channels_path(id: &str) -> String {
    format!("/_paracord/v1/guilds/{}/channels", enc(id))
}

fn channel_path(id: &str) -> String {
    format!("/_paracord/v1/channels/{}", enc(id))
}

fn overwrite_path(channel: &str, target: &str) -> String {
    format!(
        "/_paracord/v1/channels/{}/permissions/{}",
        enc(channel),
        enc(target)
    )
}

/// The guild as `user` lists it: `(name, kind, parent)` in order.
async fn listing(user: &User, guild: &str) -> Vec<(String, String, Option<String>)> {
    let list = expect_ok(user.get(&channels_path(guild)).await, "GET channels");
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                s(&c["name"]),
                s(&c["kind"]),
                c["parent"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn sorted_overwrites(c: &Value) -> Vec<Value> {
    let mut v = c["permission_overwrites"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    v.sort_by_key(|o| s(&o["id"]));
    v
}

async fn membership(owner: &User, room: &str, user: &str) -> String {
    s(&owner.state_content(room, "m.room.member", user).await["membership"])
}

/// The `order` of a channel's `m.space.child` in the guild space.
async fn child_order(owner: &User, guild: &str, channel: &str) -> String {
    s(&owner.state_content(guild, "m.space.child", channel).await["order"])
}

async fn effective(asker: &User, channel: &str, user: &str) -> u64 {
    let p = expect_ok(
        asker.get(&overwrite_path(channel, user)).await,
        "effective permissions",
    );
    p["permissions"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("permissions as a decimal string: {p}"))
}

/// Alice's guild with bob and carol joined to the space and #general:
/// `(server, alice, bob, carol, guild, text channels category, general)`.
async fn guild_with_members() -> (TestServer, User, User, User, String, String, String) {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let guild = expect_ok(
        alice
            .post("/_paracord/v1/guilds", &json!({ "name": "Builders" }))
            .await,
        "create guild",
    );
    let id = s(&guild["id"]);
    let category = s(&guild["channels"][0]["id"]);
    let general = s(&guild["system_channel"]);
    for u in [&bob, &carol] {
        alice.invite_ok(&id, &u.user_id).await;
        u.join_ok(&id).await;
        u.join_ok(&general).await;
    }
    (server, alice, bob, carol, id, category, general)
}

#[tokio::test]
async fn versions_are_answered_with_or_without_a_token() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let with = expect_ok(alice.get("/_paracord/v1/versions").await, "versions");
    assert_eq!(with, json!({ "versions": ["1"] }));
    let without = expect_ok(
        server.client().get("/_paracord/v1/versions").await,
        "versions",
    );
    assert_eq!(without, json!({ "versions": ["1"] }));
}

#[tokio::test]
async fn the_owner_builds_channels_with_overwrites_that_become_power_levels_and_join_rules() {
    let (_server, alice, bob, carol, guild, text_category, general) = guild_with_members().await;
    // A Speaker role for carol.
    let speaker = expect_ok(
        alice
            .post(
                &format!("{}/roles", guild_path(&guild)),
                &json!({ "name": "Speaker", "position": 1, "permissions": "0" }),
            )
            .await,
        "create Speaker",
    );
    let speaker = s(&speaker["id"]);
    expect_ok(
        alice
            .put(
                &format!(
                    "{}/members/{}/roles/{}",
                    guild_path(&guild),
                    enc(&carol.user_id),
                    enc(&speaker)
                ),
                &json!({}),
            )
            .await,
        "carol is a Speaker",
    );

    // A second category, after the first.
    let info = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "Info", "kind": "category" }),
            )
            .await,
        "create category",
    );
    assert_eq!(info["kind"], "category");
    assert_eq!(info["position"], 1, "after Text Channels: {info}");
    assert!(info.get("parent").is_none(), "{info}");
    let info_id = s(&info["id"]);

    // #announcements: @everyone may not send or invite, Speakers may send.
    let ann = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({
                    "name": "announcements",
                    "kind": "announcement",
                    "parent": info_id,
                    "topic": "News from the team.",
                    "permission_overwrites": [
                        { "id": "role:everyone", "allow": "0", "deny": "2049" },
                        { "id": format!("role:{speaker}"), "allow": "2048", "deny": "0" },
                    ],
                }),
            )
            .await,
        "create announcements",
    );
    let ann_id = s(&ann["id"]);
    assert_eq!(ann["guild_id"], guild.as_str());
    assert_eq!(ann["kind"], "announcement");
    assert_eq!(ann["name"], "announcements");
    assert_eq!(ann["topic"], "News from the team.");
    assert_eq!(ann["parent"], info_id.as_str());
    assert_eq!(ann["position"], 0);
    assert_eq!(ann["nsfw"], false);
    assert_eq!(ann["rate_limit_per_user"], 0);
    let mut expected = vec![
        json!({ "id": "role:everyone", "allow": "0", "deny": "2049" }),
        json!({ "id": format!("role:{speaker}"), "allow": "2048", "deny": "0" }),
    ];
    expected.sort_by_key(|o| s(&o["id"]));
    assert_eq!(sorted_overwrites(&ann), expected);
    // GET answers the same object.
    assert_eq!(
        expect_ok(alice.get(&channel_path(&ann_id)).await, "GET channel"),
        ann
    );

    // Matrix: a restricted room of the space whose power levels are the projection.
    let rules = alice.state_content(&ann_id, "m.room.join_rules", "").await;
    assert_eq!(rules["join_rule"], "restricted", "{rules}");
    assert_eq!(rules["allow"][0]["room_id"], guild.as_str(), "{rules}");
    let parent = alice.state_content(&ann_id, "m.space.parent", &guild).await;
    assert_eq!(parent["canonical"], true);
    let pl = alice
        .state_content(&ann_id, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users_default"], 0, "{pl}");
    assert_eq!(pl["events_default"], 1, "{pl}");
    assert_eq!(pl["invite"], 50, "{pl}");
    assert_eq!(pl["users"][&carol.user_id], 1, "{pl}");
    assert!(pl["users"].get(&bob.user_id).is_none(), "{pl}");
    bob.join_ok(&ann_id).await;
    carol.join_ok(&ann_id).await;
    let (status, body) = bob
        .send_with_txn(
            &ann_id,
            "m.room.message",
            &Client::txn_id(),
            &json!({ "msgtype": "m.text", "body": "may I?" }),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "bob cannot send in #announcements: {body}"
    );
    carol.send_text(&ann_id, "news!").await;
    // spec/guilds.md §6.1 example 2, less CREATE_INSTANT_INVITE (1), which this @everyone
    // overwrite denies too.
    assert_eq!(
        effective(&carol, &ann_id, &bob.user_id).await,
        563_330_128_610_881 - 1
    );
    assert_eq!(effective(&bob, &ann_id, &carol.user_id).await, DEFAULTS - 1);

    // The Info category gets an overwrite; a channel created in it copies it.
    let everyone_no_reactions = expect_ok(
        alice
            .put(
                &overwrite_path(&info_id, "role:everyone"),
                &json!({ "allow": "0", "deny": "64" }),
            )
            .await,
        "overwrite on the category",
    );
    assert_eq!(
        everyone_no_reactions,
        json!({ "id": "role:everyone", "allow": "0", "deny": "64" })
    );
    let rules_channel = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "rules", "kind": "text", "parent": info_id }),
            )
            .await,
        "create rules",
    );
    let rules_id = s(&rules_channel["id"]);
    assert_eq!(rules_channel["position"], 1, "after announcements");
    assert_eq!(
        rules_channel["permission_overwrites"],
        json!([{ "id": "role:everyone", "allow": "0", "deny": "64" }])
    );

    // Top-level voice and forum channels.
    let voice = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "Lounge", "kind": "voice" }),
            )
            .await,
        "create voice",
    );
    assert_eq!(voice["position"], 2, "after the two categories: {voice}");
    assert_eq!(voice["permission_overwrites"], json!([]));
    let voice_id = s(&voice["id"]);
    let forum = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "help", "kind": "forum", "nsfw": true, "rate_limit_per_user": 30 }),
            )
            .await,
        "create forum",
    );
    assert_eq!(
        (forum["nsfw"].clone(), forum["rate_limit_per_user"].clone()),
        (json!(true), json!(30))
    );
    let forum_id = s(&forum["id"]);

    // A private channel: hidden from @everyone, shown to carol.
    let mods = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({
                    "name": "mods",
                    "kind": "text",
                    "permission_overwrites": [
                        { "id": "role:everyone", "allow": "0", "deny": VIEW_CHANNEL.to_string() },
                        { "id": format!("user:{}", carol.user_id), "allow": VIEW_CHANNEL.to_string(), "deny": "0" },
                    ],
                }),
            )
            .await,
        "create mods",
    );
    let mods_id = s(&mods["id"]);
    let rules_of_mods = alice.state_content(&mods_id, "m.room.join_rules", "").await;
    assert_eq!(rules_of_mods["join_rule"], "invite", "{rules_of_mods}");
    assert_eq!(membership(&alice, &mods_id, &carol.user_id).await, "invite");
    let (status, _) = bob.join(&mods_id).await;
    assert_eq!(
        status.as_u16(),
        403,
        "bob is not invited to the private channel"
    );
    carol.join_ok(&mods_id).await;
    expect_error(
        &bob.get(&channel_path(&mods_id)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "bob cannot see #mods",
    );
    assert_eq!(effective(&carol, &mods_id, &bob.user_id).await, 0);

    // The order: each category followed by its channels.
    let all = |v: &[(&str, &str, Option<&str>)]| -> Vec<(String, String, Option<String>)> {
        v.iter()
            .map(|(n, k, p)| ((*n).to_owned(), (*k).to_owned(), p.map(str::to_owned)))
            .collect()
    };
    let tc = text_category.as_str();
    let inf = info_id.as_str();
    assert_eq!(
        listing(&alice, &guild).await,
        all(&[
            ("Text Channels", "category", None),
            ("general", "text", Some(tc)),
            ("Info", "category", None),
            ("announcements", "announcement", Some(inf)),
            ("rules", "text", Some(inf)),
            ("Lounge", "voice", None),
            ("help", "forum", None),
            ("mods", "text", None),
        ])
    );
    let bobs: Vec<String> = listing(&bob, &guild)
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert!(!bobs.contains(&"mods".to_owned()), "{bobs:?}");
    let carols: Vec<String> = listing(&carol, &guild)
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert!(carols.contains(&"mods".to_owned()), "{carols:?}");
    // Plain Matrix clients sort m.space.child by order the same way.
    assert_eq!(child_order(&alice, &guild, &general).await, "0000.0000");
    assert_eq!(child_order(&alice, &guild, &rules_id).await, "0001.0001");
    assert_eq!(child_order(&alice, &guild, &mods_id).await, "0004");

    // Reorder and re-parent: Lounge last, #general to the top level, #rules into Text
    // Channels (taking that category's overwrites: none).
    expect_ok(
        patch(
            &alice,
            &channels_path(&guild),
            &json!([
                { "id": voice_id, "position": 10 },
                { "id": general, "position": 7, "parent": null },
                { "id": rules_id, "position": 0, "parent": text_category },
            ]),
        )
        .await,
        "reorder",
    );
    assert_eq!(
        listing(&alice, &guild).await,
        all(&[
            ("Text Channels", "category", None),
            ("rules", "text", Some(tc)),
            ("Info", "category", None),
            ("announcements", "announcement", Some(inf)),
            ("help", "forum", None),
            ("mods", "text", None),
            ("general", "text", None),
            ("Lounge", "voice", None),
        ])
    );
    // A plain Matrix client walking /hierarchy sees the channels in the same order.
    let hierarchy = expect_ok(
        alice
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/hierarchy",
                enc(&guild)
            ))
            .await,
        "hierarchy",
    );
    let names: Vec<String> = hierarchy["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .map(|r| s(&r["name"]))
        .collect();
    assert_eq!(
        names,
        [
            "Text Channels",
            "rules",
            "Info",
            "announcements",
            "help",
            "mods",
            "general",
            "Lounge"
        ],
        "{hierarchy}"
    );
    let rules_now = expect_ok(alice.get(&channel_path(&rules_id)).await, "GET rules");
    assert_eq!(rules_now["permission_overwrites"], json!([]), "{rules_now}");
    assert_eq!(child_order(&alice, &guild, &voice_id).await, "0005");
    assert_eq!(child_order(&alice, &guild, &general).await, "0004");

    // Editing a channel: name and topic are the Matrix room's.
    let edited = expect_ok(
        patch(
            &alice,
            &channel_path(&ann_id),
            &json!({ "name": "news", "topic": "Fresh.", "rate_limit_per_user": 10, "kind": "text" }),
        )
        .await,
        "PATCH channel",
    );
    assert_eq!(edited["name"], "news");
    assert_eq!(edited["topic"], "Fresh.");
    assert_eq!(edited["kind"], "text");
    assert_eq!(edited["rate_limit_per_user"], 10);
    assert_eq!(
        alice.state_content(&ann_id, "m.room.name", "").await["name"],
        "news"
    );
    assert_eq!(
        alice.state_content(&ann_id, "m.room.topic", "").await["topic"],
        "Fresh."
    );
    let untopiced = expect_ok(
        patch(&alice, &channel_path(&ann_id), &json!({ "topic": null })).await,
        "remove the topic",
    );
    assert!(untopiced.get("topic").is_none(), "{untopiced}");
    expect_error(
        &patch(&alice, &channel_path(&ann_id), &json!({ "kind": "voice" })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "text → voice",
    );

    // An overwrite on #general: @everyone may not send, so the default level falls to 0.
    expect_ok(
        alice
            .put(
                &overwrite_path(&general, "role:everyone"),
                &json!({ "allow": "0", "deny": SEND_MESSAGES.to_string() }),
            )
            .await,
        "deny sending in general",
    );
    let pl = alice
        .state_content(&general, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users_default"], 0, "{pl}");
    let (status, _) = bob
        .send_with_txn(
            &general,
            "m.room.message",
            &Client::txn_id(),
            &json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    assert_eq!(status.as_u16(), 403);
    expect_ok(
        alice
            .delete(&overwrite_path(&general, "role:everyone"), &json!({}))
            .await,
        "remove the overwrite",
    );
    let pl = alice
        .state_content(&general, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users_default"], 1, "{pl}");
    bob.send_text(&general, "back").await;
    expect_error(
        &alice
            .delete(&overwrite_path(&general, "role:everyone"), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "removed already",
    );

    // Making #mods visible to @everyone again opens it (restricted); hiding it again
    // closes it and removes bob, who joined meanwhile.
    expect_ok(
        alice
            .delete(&overwrite_path(&mods_id, "role:everyone"), &json!({}))
            .await,
        "open mods",
    );
    let opened = alice.state_content(&mods_id, "m.room.join_rules", "").await;
    assert_eq!(opened["join_rule"], "restricted", "{opened}");
    bob.join_ok(&mods_id).await;
    expect_ok(
        alice
            .put(
                &overwrite_path(&mods_id, "role:everyone"),
                &json!({ "deny": VIEW_CHANNEL.to_string() }),
            )
            .await,
        "close mods",
    );
    let closed = alice.state_content(&mods_id, "m.room.join_rules", "").await;
    assert_eq!(closed["join_rule"], "invite", "{closed}");
    assert_eq!(membership(&alice, &mods_id, &bob.user_id).await, "leave");
    assert_eq!(membership(&alice, &mods_id, &carol.user_id).await, "join");

    // A category hidden from bob is still listed to him when one of its channels is
    // visible; an explicit empty list of overwrites copies nothing from the category.
    let staff = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "Staff", "kind": "category", "permission_overwrites": [
                    { "id": "role:everyone", "allow": "0", "deny": VIEW_CHANNEL.to_string() },
                ] }),
            )
            .await,
        "create Staff",
    );
    let staff_id = s(&staff["id"]);
    let desk = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "desk", "kind": "text", "parent": staff_id,
                         "permission_overwrites": [] }),
            )
            .await,
        "create desk",
    );
    assert_eq!(desk["permission_overwrites"], json!([]), "{desk}");
    let bobs = listing(&bob, &guild).await;
    assert!(
        bobs.contains(&("Staff".to_owned(), "category".to_owned(), None))
            && bobs.contains(&("desk".to_owned(), "text".to_owned(), Some(staff_id.clone()))),
        "{bobs:?}"
    );
    expect_error(
        &bob.get(&channel_path(&staff_id)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "bob cannot open Staff itself",
    );

    // Guild settings.
    let patched = expect_ok(
        patch(
            &alice,
            &guild_path(&guild),
            &json!({ "name": "Makers", "description": "We make things.",
                     "icon": "mxc://example.org/abc", "system_channel": rules_id }),
        )
        .await,
        "PATCH guild",
    );
    assert_eq!(patched["name"], "Makers");
    assert_eq!(patched["description"], "We make things.");
    assert_eq!(patched["system_channel"], rules_id.as_str());
    assert_eq!(patched["owner"], alice.user_id.as_str());
    assert_eq!(
        alice.state_content(&guild, "m.room.name", "").await["name"],
        "Makers"
    );
    assert_eq!(
        alice.state_content(&guild, "m.room.avatar", "").await["url"],
        "mxc://example.org/abc"
    );
    for (body, what) in [
        (json!({ "system_channel": voice_id }), "a voice channel"),
        (json!({ "system_channel": info_id }), "a category"),
        (json!({ "owner": bob.user_id }), "a new owner"),
        (json!({ "version": "2" }), "a new version"),
        (json!({ "name": null }), "no name"),
    ] {
        expect_error(
            &patch(&alice, &guild_path(&guild), &body).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            what,
        );
    }
    let cleared = expect_ok(
        patch(
            &alice,
            &guild_path(&guild),
            &json!({ "description": null, "owner": alice.user_id }),
        )
        .await,
        "remove the description",
    );
    assert!(cleared.get("description").is_none(), "{cleared}");

    // Deleting the Info category moves its channel to the top level; deleting the system
    // channel clears it; members are removed from a deleted channel.
    expect_ok(
        alice.delete(&channel_path(&info_id), &json!({})).await,
        "delete Info",
    );
    let after: Vec<(String, String, Option<String>)> = listing(&alice, &guild).await;
    assert!(!after.iter().any(|c| c.0 == "Info"), "{after:?}");
    assert!(
        after.contains(&("news".to_owned(), "text".to_owned(), None)),
        "{after:?}"
    );
    expect_ok(
        alice.delete(&channel_path(&rules_id), &json!({})).await,
        "delete rules",
    );
    let g = expect_ok(alice.get(&guild_path(&guild)).await, "GET guild");
    assert!(g.get("system_channel").is_none(), "{g}");
    expect_ok(
        alice.delete(&channel_path(&forum_id), &json!({})).await,
        "delete help",
    );
    expect_error(
        &alice.get(&channel_path(&forum_id)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "a deleted channel",
    );
    assert_eq!(membership(&alice, &ann_id, &bob.user_id).await, "join");
    expect_ok(
        alice.delete(&channel_path(&ann_id), &json!({})).await,
        "delete news",
    );
    assert_eq!(membership(&alice, &ann_id, &bob.user_id).await, "leave");
    let child = alice.state_content(&guild, "m.space.child", &ann_id).await;
    assert_eq!(child, json!({}));

    // Deleting the guild: the owner only.
    expect_error(
        &bob.delete(&guild_path(&guild), &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob deletes the guild",
    );
    expect_ok(
        alice.delete(&guild_path(&guild), &json!({})).await,
        "delete the guild",
    );
    assert_eq!(
        alice.state_content(&guild, "chat.paracord.guild", "").await,
        json!({})
    );
    assert_eq!(membership(&alice, &guild, &bob.user_id).await, "leave");
    assert_eq!(membership(&alice, &general, &carol.user_id).await, "leave");
    expect_error(
        &alice.get(&guild_path(&guild)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "a deleted guild",
    );
}

#[tokio::test]
async fn members_without_the_permission_are_refused_and_bad_input_is_named() {
    let (server, alice, bob, carol, guild, text_category, general) = guild_with_members().await;
    let forbidden = |resp: (StatusCode, Value), flag: &str, what: &str| {
        let (status, body) = resp;
        assert_eq!(
            (status.as_u16(), body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{what}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap_or_default().contains(flag),
            "{what}: the error names {flag}: {body}"
        );
    };
    // Bob, a plain member.
    forbidden(
        patch(&bob, &guild_path(&guild), &json!({ "name": "Mine" })).await,
        "MANAGE_GUILD",
        "PATCH guild",
    );
    forbidden(
        bob.delete(&guild_path(&guild), &json!({})).await,
        "owner",
        "DELETE guild",
    );
    forbidden(
        bob.post(
            &channels_path(&guild),
            &json!({ "name": "x", "kind": "text" }),
        )
        .await,
        "MANAGE_CHANNELS",
        "POST channel",
    );
    forbidden(
        patch(
            &bob,
            &channels_path(&guild),
            &json!([{ "id": general, "position": 3 }]),
        )
        .await,
        "MANAGE_CHANNELS",
        "reorder",
    );
    forbidden(
        patch(&bob, &channel_path(&general), &json!({ "topic": "mine" })).await,
        "MANAGE_CHANNELS",
        "PATCH channel",
    );
    forbidden(
        bob.delete(&channel_path(&general), &json!({})).await,
        "MANAGE_CHANNELS",
        "DELETE channel",
    );
    forbidden(
        bob.put(
            &overwrite_path(&general, "role:everyone"),
            &json!({ "allow": "0", "deny": "2048" }),
        )
        .await,
        "MANAGE_ROLES",
        "PUT overwrite",
    );
    forbidden(
        bob.delete(&overwrite_path(&general, "role:everyone"), &json!({}))
            .await,
        "MANAGE_ROLES",
        "DELETE overwrite",
    );
    // Nothing changed.
    let g = expect_ok(bob.get(&guild_path(&guild)).await, "GET guild");
    assert_eq!(g["name"], "Builders");
    let general_now = expect_ok(bob.get(&channel_path(&general)).await, "GET general");
    assert_eq!(general_now["permission_overwrites"], json!([]));
    assert!(general_now.get("topic").is_none());

    // Carol manages channels and roles from position 5: within her own permissions and
    // below her own rank only.
    let roles = format!("{}/roles", guild_path(&guild));
    let manager = s(&expect_ok(
        alice
            .post(
                &roles,
                // MANAGE_CHANNELS | MANAGE_ROLES
                &json!({ "name": "Manager", "position": 5, "permissions": "268435472" }),
            )
            .await,
        "create Manager",
    )["id"]);
    let peer = s(&expect_ok(
        alice
            .post(&roles, &json!({ "name": "Peer", "position": 5 }))
            .await,
        "create Peer",
    )["id"]);
    expect_ok(
        alice
            .put(
                &format!(
                    "{}/members/{}/roles/{}",
                    guild_path(&guild),
                    enc(&carol.user_id),
                    enc(&manager)
                ),
                &json!({}),
            )
            .await,
        "carol is a Manager",
    );
    let (status, body) = carol
        .post(
            &channels_path(&guild),
            &json!({ "name": "kicks", "kind": "text",
                     "permission_overwrites": [{ "id": "role:everyone", "allow": "2", "deny": "0" }] }),
        )
        .await;
    assert_eq!(status.as_u16(), 403, "KICK_MEMBERS is not carol's: {body}");
    let (status, body) = carol
        .put(
            &overwrite_path(&general, &format!("role:{peer}")),
            &json!({ "allow": "0", "deny": "2048" }),
        )
        .await;
    assert_eq!(status.as_u16(), 403, "a role at carol's own rank: {body}");
    let quiet = expect_ok(
        carol
            .post(
                &channels_path(&guild),
                &json!({ "name": "quiet", "kind": "text", "parent": text_category,
                         "permission_overwrites": [
                             { "id": "role:everyone", "allow": "0", "deny": "2048" },
                             { "id": format!("user:{}", carol.user_id), "allow": "2048", "deny": "0" },
                         ] }),
            )
            .await,
        "carol creates #quiet",
    );
    let quiet_id = s(&quiet["id"]);
    assert_eq!(quiet["position"], 1, "after #general");
    expect_ok(
        carol
            .put(
                &overwrite_path(&quiet_id, &format!("user:{}", bob.user_id)),
                &json!({ "allow": "2048" }),
            )
            .await,
        "carol lets bob speak in #quiet",
    );
    let pl = alice
        .state_content(&quiet_id, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users_default"], 0, "{pl}");
    assert_eq!(pl["users"][&bob.user_id], 1, "{pl}");
    assert_eq!(pl["users"][&carol.user_id], 50, "{pl}");

    // Bad input.
    let channels = channels_path(&guild);
    for (body, status, code) in [
        (json!({}), 400, "M_MISSING_PARAM"),
        (json!({ "name": "x" }), 400, "M_MISSING_PARAM"),
        (
            json!({ "name": "x", "kind": "stage" }),
            400,
            "M_INVALID_PARAM",
        ),
        (json!({ "name": "x", "kind": 5 }), 400, "M_BAD_JSON"),
        (
            json!({ "name": "", "kind": "text" }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "parent": general }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "parent": "nope" }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "category", "parent": text_category }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "position": 1.5 }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "position": -1 }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "position": "1" }),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({ "name": "x", "kind": "text", "nsfw": "yes" }),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({ "name": "x", "kind": "text", "rate_limit_per_user": 21601 }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "permission_overwrites": "none" }),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({ "name": "x", "kind": "text", "permission_overwrites": [{ "id": "role:nope" }] }),
            404,
            "M_NOT_FOUND",
        ),
        (
            json!({ "name": "x", "kind": "text", "permission_overwrites": [{ "id": "user:@nobody:example.org" }] }),
            404,
            "M_NOT_FOUND",
        ),
        (
            json!({ "name": "x", "kind": "text", "permission_overwrites": [{ "id": "role:everyone", "allow": "abc" }] }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "x", "kind": "text", "permission_overwrites": [{ "id": "everyone" }] }),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let (got, answer) = alice.post(&channels, &body).await;
        assert_eq!(
            (got.as_u16(), answer["errcode"].as_str()),
            (status, Some(code)),
            "POST channel {body} → {answer}"
        );
    }
    let (got, answer) = alice.post(&channels, &json!(["not", "an", "object"])).await;
    assert_eq!(
        (got.as_u16(), answer["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{answer}"
    );
    for (body, status, code) in [
        (json!({ "id": general }), 400, "M_BAD_JSON"),
        (json!([{ "position": 1 }]), 400, "M_MISSING_PARAM"),
        (
            json!([{ "id": general, "position": "1" }]),
            400,
            "M_BAD_JSON",
        ),
        (
            json!([{ "id": general, "parent": general }]),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!([{ "id": text_category, "parent": text_category }]),
            400,
            "M_INVALID_PARAM",
        ),
        (
            json!([{ "id": "!nope:example.org", "position": 1 }]),
            404,
            "M_NOT_FOUND",
        ),
    ] {
        let (got, answer) = patch(&alice, &channels, &body).await;
        assert_eq!(
            (got.as_u16(), answer["errcode"].as_str()),
            (status, Some(code)),
            "PATCH channels {body} → {answer}"
        );
    }
    for (body, code) in [
        (json!({ "name": "" }), "M_INVALID_PARAM"),
        (json!({ "name": 5 }), "M_BAD_JSON"),
        (json!({ "nsfw": 1 }), "M_BAD_JSON"),
        (json!({ "position": -3 }), "M_INVALID_PARAM"),
        (json!({ "kind": "category" }), "M_INVALID_PARAM"),
        (json!({ "topic": "x".repeat(1025) }), "M_INVALID_PARAM"),
    ] {
        let (got, answer) = patch(&alice, &channel_path(&general), &body).await;
        assert_eq!(
            (got.as_u16(), answer["errcode"].as_str()),
            (400, Some(code)),
            "PATCH channel {body} → {answer}"
        );
    }
    for (target, body, status, code) in [
        ("mods", json!({}), 400, "M_INVALID_PARAM"),
        ("role:nope", json!({}), 404, "M_NOT_FOUND"),
        ("user:@nobody:example.org", json!({}), 404, "M_NOT_FOUND"),
        ("role:everyone", json!({ "allow": 5 }), 400, "M_BAD_JSON"),
        (
            "role:everyone",
            json!({ "deny": "18446744073709551616" }),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let (got, answer) = alice.put(&overwrite_path(&general, target), &body).await;
        assert_eq!(
            (got.as_u16(), answer["errcode"].as_str()),
            (status, Some(code)),
            "PUT overwrite {target} {body} → {answer}"
        );
    }
    for (body, code) in [
        (json!({ "name": 5 }), "M_BAD_JSON"),
        (json!({ "name": "" }), "M_INVALID_PARAM"),
        (
            json!({ "icon": "https://example.org/a.png" }),
            "M_INVALID_PARAM",
        ),
        (
            json!({ "system_channel": "!nope:example.org" }),
            "M_INVALID_PARAM",
        ),
        (
            json!({ "description": "x".repeat(1001) }),
            "M_INVALID_PARAM",
        ),
    ] {
        let (got, answer) = patch(&alice, &guild_path(&guild), &body).await;
        assert_eq!(
            (got.as_u16(), answer["errcode"].as_str()),
            (400, Some(code)),
            "PATCH guild {body} → {answer}"
        );
    }
    // Unknown or invisible channels, and strangers.
    let stranger = server.register_random().await;
    for (who, path) in [
        (&alice, channel_path("!nope:example.org")),
        (&alice, channel_path("not-a-room")),
        (&stranger, channel_path(&general)),
    ] {
        expect_error(
            &who.get(&path).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &path,
        );
    }
    expect_error(
        &patch(&stranger, &guild_path(&guild), &json!({ "name": "x" })).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "a stranger patches the guild",
    );
    let (status, _) = stranger
        .client
        .with_token(None)
        .post(&channels, &json!({ "name": "x", "kind": "text" }))
        .await;
    assert_eq!(status.as_u16(), 401, "no token");
}

#[tokio::test]
async fn a_role_that_sees_a_private_channel_brings_its_members_in_and_out() {
    let (_server, alice, bob, _carol, guild, _category, _general) = guild_with_members().await;
    let staff = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/roles", enc(&guild)),
                &json!({ "name": "Staff" }),
            )
            .await,
        "create role",
    );
    let staff = s(&staff["id"]);
    let private = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "staff-room", "kind": "text", "permission_overwrites": [
                    { "id": "role:everyone", "allow": "0", "deny": VIEW_CHANNEL.to_string() },
                    { "id": format!("role:{staff}"), "allow": VIEW_CHANNEL.to_string(), "deny": "0" },
                ] }),
            )
            .await,
        "create private channel",
    );
    let private = s(&private["id"]);
    let (status, _) = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&private),
            enc(&bob.user_id)
        ))
        .await;
    assert_eq!(
        status, 404,
        "bob has no membership in the private channel yet"
    );
    let role_path = format!(
        "/_paracord/v1/guilds/{}/members/{}/roles/{staff}",
        enc(&guild),
        enc(&bob.user_id)
    );
    expect_ok(alice.put(&role_path, &json!({})).await, "give bob Staff");
    assert_eq!(
        membership(&alice, &private, &bob.user_id).await,
        "invite",
        "the role lets bob see the private channel: he is invited"
    );
    let (status, body) = bob
        .post(&format!("/join/{}", enc(&private)), &json!({}))
        .await;
    assert_eq!(status, 200, "bob joins: {body}");
    expect_ok(
        alice.delete(&role_path, &json!({})).await,
        "take Staff away",
    );
    assert_eq!(
        membership(&alice, &private, &bob.user_id).await,
        "leave",
        "without the role bob cannot see it: he is removed"
    );
}

/// Issue 14: a member on the guild's own server is joined to a channel created after they
/// joined (members on other servers are joined by their servers); a private channel they
/// cannot see is not joined.
#[tokio::test]
async fn members_on_the_host_are_joined_to_channels_created_later() {
    let (_server, alice, bob, carol, guild, _category, _general) = guild_with_members().await;
    let later = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "later", "kind": "text" }),
            )
            .await,
        "create a channel",
    );
    let later = s(&later["id"]);
    for u in [&bob, &carol] {
        assert_eq!(
            membership(&alice, &later, &u.user_id).await,
            "join",
            "{} is in the new channel",
            u.user_id
        );
    }
    let sync = bob.sync(None, 0, None).await;
    assert!(
        sync["rooms"]["join"].get(&later).is_some(),
        "the new channel in bob's sync: {}",
        sync["rooms"]["join"]
    );
    let hidden = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "hidden", "kind": "text", "permission_overwrites": [
                    { "id": "role:everyone", "allow": "0", "deny": VIEW_CHANNEL.to_string() },
                ] }),
            )
            .await,
        "create a private channel",
    );
    let hidden = s(&hidden["id"]);
    let (status, body) = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&hidden),
            enc(&bob.user_id)
        ))
        .await;
    assert_eq!(status, 404, "bob is not in the hidden channel: {body}");
}

/// Issue 20: an announcement channel is posted to only by those given SEND_MESSAGES. Created
/// without an overwrite of @everyone, it gets one denying SEND_MESSAGES; one given at
/// creation is kept as it is.
#[tokio::test]
async fn an_announcement_channel_denies_everyone_sending_unless_told_otherwise() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let guild = expect_ok(
        alice
            .post("/_paracord/v1/guilds", &json!({ "name": "News" }))
            .await,
        "create guild",
    );
    let guild = s(&guild["id"]);
    alice.invite_ok(&guild, &bob.user_id).await;
    bob.join_ok(&guild).await;
    let news = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "news", "kind": "announcement" }),
            )
            .await,
        "create #news",
    );
    assert_eq!(
        news["permission_overwrites"],
        json!([{ "id": "role:everyone", "allow": "0", "deny": SEND_MESSAGES.to_string() }]),
        "{news}"
    );
    let news = s(&news["id"]);
    bob.join_ok(&news).await;
    let refused = bob
        .send_with_txn(
            &news,
            "m.room.message",
            &Client::txn_id(),
            &json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob posts in #news",
    );
    alice.send_text(&news, "the news").await;
    // Told otherwise at creation: @everyone may post.
    let open = expect_ok(
        alice
            .post(
                &channels_path(&guild),
                &json!({ "name": "open-news", "kind": "announcement",
                         "permission_overwrites": [{ "id": "role:everyone", "allow": "0", "deny": "0" }] }),
            )
            .await,
        "create #open-news",
    );
    let open = s(&open["id"]);
    bob.join_ok(&open).await;
    bob.send_text(&open, "hello").await;
}
