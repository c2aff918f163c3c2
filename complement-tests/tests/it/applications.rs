//! Applications, their bots, slash commands and interactions (spec/applications.md),
//! through `/_paracord/v1`, and what plain Matrix clients see of them.

use std::time::{Duration, Instant};

use paracord_complement::{enc, expect_error, expect_ok, Client, StatusCode, TestServer, User};
use serde_json::{json, Value};

const KICK_MEMBERS: u64 = 1 << 1;
const BAN_MEMBERS: u64 = 1 << 2;
const MANAGE_GUILD: u64 = 1 << 5;
const VIEW_CHANNEL: u64 = 1 << 10;
const SEND_MESSAGES: u64 = 1 << 11;
const MANAGE_ROLES: u64 = 1 << 28;

/// A guild owned by `users[0]` with the others joined to its space and #general, and an
/// application of `users[0]`.
struct Setup {
    server: TestServer,
    users: Vec<User>,
    guild: String,
    general: String,
    app: String,
    bot_user: String,
    bot: Client,
}

impl Setup {
    async fn new(members: usize) -> Setup {
        Self::on(TestServer::start().await, members).await
    }

    async fn on(server: TestServer, members: usize) -> Setup {
        let mut users = Vec::new();
        for _ in 0..=members {
            users.push(server.register_random().await);
        }
        let guild = expect_ok(
            users[0]
                .post("/_paracord/v1/guilds", &json!({ "name": "Apps" }))
                .await,
            "create guild",
        );
        let id = guild["id"].as_str().unwrap_or_default().to_owned();
        let general = guild["system_channel"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for u in &users[1..] {
            users[0].invite_ok(&id, &u.user_id).await;
            u.join_ok(&id).await;
            u.join_ok(&general).await;
        }
        let app = expect_ok(
            users[0]
                .post(
                    "/_paracord/v1/applications",
                    &json!({ "name": "Dice Roller", "description": "rolls dice" }),
                )
                .await,
            "create application",
        );
        let token = app["bot_token"].as_str().unwrap_or_default().to_owned();
        Setup {
            bot: server.client_with_token(&token),
            bot_user: app["bot_user_id"].as_str().unwrap_or_default().to_owned(),
            app: app["id"].as_str().unwrap_or_default().to_owned(),
            server,
            users,
            guild: id,
            general,
        }
    }

    fn guild_path(&self, rest: &str) -> String {
        format!("/_paracord/v1/guilds/{}{rest}", enc(&self.guild))
    }

    fn commands_path(&self) -> String {
        format!(
            "/_paracord/v1/applications/{}/guilds/{}/commands",
            enc(&self.app),
            enc(&self.guild)
        )
    }

    /// The owner adds the application with these permissions.
    async fn authorize(&self, permissions: u64) -> Value {
        expect_ok(
            self.users[0]
                .post(
                    &self.guild_path(&format!("/applications/{}", enc(&self.app))),
                    &json!({ "permissions": permissions.to_string() }),
                )
                .await,
            "authorize the application",
        )
    }

    async fn membership(&self, room: &str, user: &str) -> Option<String> {
        let (status, content) = self.users[0].get_state(room, "m.room.member", user).await;
        if status != StatusCode::OK {
            return None;
        }
        content["membership"].as_str().map(str::to_owned)
    }

    async fn roles(&self) -> Vec<Value> {
        let roles = expect_ok(self.users[0].get(&self.guild_path("/roles")).await, "roles");
        roles.as_array().cloned().unwrap_or_default()
    }

    /// A `/roll` command with a required INTEGER and an optional BOOLEAN, registered by the bot.
    async fn roll_command(&self) -> Value {
        expect_ok(
            self.bot
                .post(
                    &self.commands_path(),
                    &json!({
                        "name": "roll", "description": "Rolls a die",
                        "options": [
                            { "type": 4, "name": "sides", "description": "faces",
                              "required": true, "min_value": 2, "max_value": 100 },
                            { "type": 5, "name": "loud", "description": "shout it" },
                            { "type": 6, "name": "for", "description": "on behalf of" },
                        ],
                    }),
                )
                .await,
            "register /roll",
        )
    }

    /// `user` runs /roll in #general.
    async fn invoke(&self, user: &User, options: Value) -> (StatusCode, Value) {
        user.post(
            "/_paracord/v1/interactions",
            &json!({
                "application_id": self.app, "guild_id": self.guild,
                "channel_id": self.general, "name": "roll", "options": options,
            }),
        )
        .await
    }
}

/// Syncs `client` from `since` until a to-device event of `kind` arrives; returns it.
async fn to_device(client: &Client, since: Option<&str>, kind: &str) -> Value {
    let resp = client
        .sync_until(since, None, &format!("a {kind} to-device event"), |r| {
            r["to_device"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["type"] == kind))
        })
        .await;
    resp["to_device"]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["type"] == kind).cloned())
        .unwrap_or_default()
}

/// The bot's to-device interaction for `id`, read from its own /sync with its bot token.
async fn interaction(s: &Setup, since: Option<&str>, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut since = since.map(str::to_owned);
    while Instant::now() < deadline {
        let resp = s.bot.sync(since.as_deref(), 1000, None).await;
        for e in resp["to_device"]["events"].as_array().into_iter().flatten() {
            if e["type"] == "chat.paracord.interaction" && e["content"]["id"] == id {
                return e.clone();
            }
        }
        since = resp["next_batch"].as_str().map(str::to_owned);
    }
    panic!("expected the bot to receive interaction {id}");
}

#[tokio::test]
async fn an_application_is_a_bot_in_the_reserved_namespace_with_a_working_token() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let app = expect_ok(
        alice
            .post(
                "/_paracord/v1/applications",
                &json!({ "name": "Weather Bot", "avatar_url": "mxc://example.org/abc" }),
            )
            .await,
        "create application",
    );
    let bot_user = app["bot_user_id"].as_str().unwrap_or_default().to_owned();
    assert!(bot_user.starts_with("@_bot_weather_bot"), "{app}");
    assert_eq!(app["owner"], alice.user_id.as_str());
    let token = app["bot_token"].as_str().unwrap_or_default().to_owned();
    assert!(!token.is_empty(), "{app}");
    let bot = server.client_with_token(&token);
    let me = expect_ok(bot.whoami().await, "whoami with the bot token");
    assert_eq!(me["user_id"], bot_user.as_str());
    // Marked as a bot in its profile.
    let profile = expect_ok(
        alice.get(&format!("/profile/{}", enc(&bot_user))).await,
        "bot profile",
    );
    assert_eq!(profile["chat.paracord.bot"], true, "{profile}");
    assert_eq!(profile["displayname"], "Weather Bot");
    // Nobody registers into the namespace.
    let localpart = bot_user
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    for name in [localpart.as_str(), "_bot_fresh_name", "_BOT_upper"] {
        let resp = server
            .register_raw(json!({ "username": name, "password": "pw-correct-horse-battery" }))
            .await;
        expect_error(&resp, StatusCode::BAD_REQUEST, "M_EXCLUSIVE", name);
    }
    // The list and the object; the token is shown only once.
    let id = app["id"].as_str().unwrap_or_default().to_owned();
    let list = expect_ok(alice.get("/_paracord/v1/applications").await, "list");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("bot_token").is_none(), "{list}");
    let app_path = format!("/_paracord/v1/applications/{}", enc(&id));
    let carol = server.register_random().await;
    expect_error(
        &carol.get(&app_path).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "someone else's application",
    );
    // Bad input.
    for (body, code) in [
        (json!({}), "M_MISSING_PARAM"),
        (json!({ "name": "" }), "M_INVALID_PARAM"),
        (json!({ "name": "x".repeat(33) }), "M_INVALID_PARAM"),
        (json!({ "name": 5 }), "M_BAD_JSON"),
        (
            json!({ "name": "ok", "avatar_url": "https://x/y.png" }),
            "M_INVALID_PARAM",
        ),
        (
            json!({ "name": "ok", "interactions_endpoint_url": "ftp://x" }),
            "M_INVALID_PARAM",
        ),
    ] {
        let resp = alice.post("/_paracord/v1/applications", &body).await;
        expect_error(&resp, StatusCode::BAD_REQUEST, code, &body.to_string());
    }
    // A new token replaces the old one.
    let reset = expect_ok(
        alice
            .post(&format!("{app_path}/bot/reset_token"), &json!({}))
            .await,
        "reset token",
    );
    let new_token = reset["token"].as_str().unwrap_or_default().to_owned();
    expect_error(
        &bot.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "the old bot token",
    );
    let bot = server.client_with_token(&new_token);
    expect_ok(bot.whoami().await, "whoami with the new token");
    // Renaming.
    let renamed = expect_ok(
        alice
            .patch(&app_path, &json!({ "name": "Storm Bot" }))
            .await,
        "rename",
    );
    assert_eq!(renamed["name"], "Storm Bot");
    // Deleting: the bot's token stops working and the application is gone.
    expect_error(
        &carol.delete(&app_path, &json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "deleting someone else's application",
    );
    expect_ok(alice.delete(&app_path, &json!({})).await, "delete");
    expect_error(
        &bot.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "the deleted application's bot token",
    );
    expect_error(
        &alice.get(&app_path).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "the deleted application",
    );
}

#[tokio::test]
async fn adding_an_application_needs_manage_guild_and_gives_it_a_managed_capped_role() {
    let s = Setup::new(2).await;
    let (alice, bob, carol) = (&s.users[0], &s.users[1], &s.users[2]);
    let add = s.guild_path(&format!("/applications/{}", enc(&s.app)));
    let asked = KICK_MEMBERS | BAN_MEMBERS | VIEW_CHANNEL | SEND_MESSAGES;
    // Bob has no MANAGE_GUILD.
    expect_error(
        &bob.post(&add, &json!({ "permissions": asked.to_string() }))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "adding without MANAGE_GUILD",
    );
    // Carol gets MANAGE_GUILD and KICK_MEMBERS, not BAN_MEMBERS.
    let role = expect_ok(
        alice
            .post(
                &s.guild_path("/roles"),
                &json!({ "name": "Admins-ish", "position": 3,
                         "permissions": (MANAGE_GUILD | KICK_MEMBERS).to_string() }),
            )
            .await,
        "create role",
    );
    let role_id = role["id"].as_str().unwrap_or_default();
    expect_ok(
        alice
            .put(
                &s.guild_path(&format!(
                    "/members/{}/roles/{}",
                    enc(&carol.user_id),
                    enc(role_id)
                )),
                &json!({}),
            )
            .await,
        "give carol the role",
    );
    expect_error(
        &carol.post(&add, &json!({ "permissions": "12x" })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "malformed permissions",
    );
    let install = expect_ok(
        carol
            .post(&add, &json!({ "permissions": asked.to_string() }))
            .await,
        "carol adds the application",
    );
    // Capped: no BAN_MEMBERS, which carol lacks.
    let granted: u64 = install["permissions"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(
        granted,
        KICK_MEMBERS | VIEW_CHANNEL | SEND_MESSAGES,
        "{install}"
    );
    let managed = install["role_id"].as_str().unwrap_or_default().to_owned();
    let roles = s.roles().await;
    let role = roles
        .iter()
        .find(|r| r["id"] == managed.as_str())
        .unwrap_or_else(|| panic!("expected the managed role in {roles:?}"));
    assert_eq!(role["managed"], true, "{role}");
    assert_eq!(role["name"], "Dice Roller");
    assert_eq!(role["permissions"], granted.to_string());
    assert_eq!(role["tags"]["application_id"], s.app.as_str());
    // The bot joined the guild and #general, with the role, marked as a bot.
    assert_eq!(
        s.membership(&s.guild, &s.bot_user).await.as_deref(),
        Some("join")
    );
    assert_eq!(
        s.membership(&s.general, &s.bot_user).await.as_deref(),
        Some("join")
    );
    let member = expect_ok(
        alice
            .get(&s.guild_path(&format!("/members/{}", enc(&s.bot_user))))
            .await,
        "the bot as a member",
    );
    assert_eq!(member["roles"], json!([managed]), "{member}");
    assert_eq!(member["bot"], true, "{member}");
    // A channel made later: the bot joins it too.
    let later = expect_ok(
        alice
            .post(
                &s.guild_path("/channels"),
                &json!({ "name": "dice-room", "kind": "text" }),
            )
            .await,
        "create a channel",
    );
    let later = later["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        s.membership(&later, &s.bot_user).await.as_deref(),
        Some("join")
    );
    // A second add is refused; the guild lists the application.
    expect_error(
        &alice.post(&add, &json!({ "permissions": "0" })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "adding twice",
    );
    let listed = expect_ok(bob.get(&s.guild_path("/applications")).await, "list");
    assert_eq!(listed[0]["application_id"], s.app.as_str(), "{listed}");
    // The managed role is nobody's to delete or hand out, not even the owner's.
    let role_path = s.guild_path(&format!("/roles/{}", enc(&managed)));
    expect_error(
        &alice.delete(&role_path, &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "deleting the managed role",
    );
    let assign = s.guild_path(&format!(
        "/members/{}/roles/{}",
        enc(&bob.user_id),
        enc(&managed)
    ));
    expect_error(
        &alice.put(&assign, &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "assigning the managed role",
    );
    expect_error(
        &alice
            .patch(
                &s.guild_path(&format!("/members/{}", enc(&bob.user_id))),
                &json!({ "roles": [managed] }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "giving the managed role through PATCH member",
    );
    let bot_roles = s.guild_path(&format!(
        "/members/{}/roles/{}",
        enc(&s.bot_user),
        enc(&managed)
    ));
    expect_error(
        &alice.delete(&bot_roles, &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "taking the managed role from the bot",
    );
    // Removing: MANAGE_GUILD again; then the bot leaves and the role goes.
    expect_error(
        &bob.delete(&add, &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "removing without MANAGE_GUILD",
    );
    expect_ok(
        alice.delete(&add, &json!({})).await,
        "remove the application",
    );
    assert_eq!(
        s.membership(&s.guild, &s.bot_user).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        s.membership(&s.general, &s.bot_user).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        s.membership(&later, &s.bot_user).await.as_deref(),
        Some("leave")
    );
    let roles = s.roles().await;
    assert!(
        roles.iter().all(|r| r["id"] != managed.as_str()),
        "expected the managed role gone: {roles:?}"
    );
    expect_error(
        &alice.delete(&add, &json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "removing an application not in the guild",
    );
}

#[tokio::test]
async fn slash_commands_are_validated_and_listed_to_members() {
    let s = Setup::new(1).await;
    let bob = &s.users[1];
    // Not in the guild yet: no commands there.
    expect_error(
        &s.bot
            .post(
                &s.commands_path(),
                &json!({ "name": "roll", "description": "Rolls" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "commands of an application not in the guild",
    );
    s.authorize(VIEW_CHANNEL | SEND_MESSAGES).await;
    let optional = |i: usize| json!({ "type": 3, "name": format!("o{i}"), "description": "d" });
    let bad = [
        (json!({ "name": "Roll Dice", "description": "d" }), "name"),
        (json!({ "name": "roll", "description": "" }), "description"),
        (
            json!({ "name": "roll", "description": "d",
                    "options": (0..26).map(optional).collect::<Vec<_>>() }),
            "options",
        ),
        (
            json!({ "name": "roll", "description": "d", "options": [
                { "type": 3, "name": "a", "description": "d" },
                { "type": 4, "name": "b", "description": "d", "required": true },
            ] }),
            "options[1].required",
        ),
        (
            json!({ "name": "roll", "description": "d", "options": [
                { "type": 99, "name": "a", "description": "d" },
            ] }),
            "options[0].type",
        ),
    ];
    for (body, field) in bad {
        let resp = s.bot.post(&s.commands_path(), &body).await;
        expect_error(&resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM", field);
        let msg = resp.1["error"].as_str().unwrap_or_default();
        assert!(msg.starts_with(&format!("{field}:")), "{field}: {msg}");
    }
    // Bob is neither the bot nor the owner.
    expect_error(
        &bob.post(
            &s.commands_path(),
            &json!({ "name": "roll", "description": "d" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "someone else registering commands",
    );
    let roll = s.roll_command().await;
    let roll_id = roll["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(roll["options"][0]["type"], 4, "{roll}");
    // The owner registers too; POSTing a name again replaces the command, id kept.
    let again = expect_ok(
        s.users[0]
            .post(
                &s.commands_path(),
                &json!({ "name": "roll", "description": "Rolls a die", "options": [
                    { "type": 4, "name": "sides", "description": "faces",
                      "required": true, "min_value": 2, "max_value": 100 },
                    { "type": 5, "name": "loud", "description": "shout it" },
                    { "type": 6, "name": "for", "description": "on behalf of" },
                ] }),
            )
            .await,
        "re-register /roll",
    );
    assert_eq!(again["id"], roll_id.as_str());
    expect_ok(
        s.bot
            .post(
                &s.commands_path(),
                &json!({ "name": "ban-hammer", "description": "mods only",
                         "default_member_permissions": BAN_MEMBERS.to_string() }),
            )
            .await,
        "register /ban-hammer",
    );
    // Members see what they may use: bob not /ban-hammer, the owner both.
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        n.sort();
        n
    };
    let for_bob = expect_ok(bob.get(&s.guild_path("/commands")).await, "bob's commands");
    assert_eq!(names(&for_bob), ["roll"], "{for_bob}");
    assert_eq!(for_bob[0]["application_id"], s.app.as_str());
    let for_owner = expect_ok(
        s.users[0].get(&s.guild_path("/commands")).await,
        "the owner's commands",
    );
    assert_eq!(names(&for_owner), ["ban-hammer", "roll"], "{for_owner}");
    // A stranger to the guild sees nothing.
    let stranger = s.server.register_random().await;
    expect_error(
        &stranger.get(&s.guild_path("/commands")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "commands of a guild one is not in",
    );
    // PATCH one field; PUT replaces the whole set.
    let patched = expect_ok(
        s.bot
            .patch(
                &format!("{}/{}", s.commands_path(), enc(&roll_id)),
                &json!({ "description": "Rolls any die" }),
            )
            .await,
        "patch /roll",
    );
    assert_eq!(patched["description"], "Rolls any die");
    assert_eq!(patched["options"].as_array().map(Vec::len), Some(3));
    let set = expect_ok(
        s.bot
            .put(
                &s.commands_path(),
                &json!([{ "name": "roll", "description": "Rolls" },
                        { "name": "flip", "description": "Flips a coin" }]),
            )
            .await,
        "overwrite the commands",
    );
    assert_eq!(names(&set), ["flip", "roll"]);
    let listed = expect_ok(s.bot.get(&s.commands_path()).await, "list");
    assert_eq!(names(&listed), ["flip", "roll"]);
    assert!(listed
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["id"] == roll_id.as_str()));
    let resp = s
        .bot
        .put(
            &s.commands_path(),
            &json!([{ "name": "ok", "description": "d" }, { "name": "Bad" }]),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "a bad command in a PUT",
    );
}

#[tokio::test]
async fn an_invocation_reaches_the_bot_and_its_answer_is_an_ordinary_message() {
    let s = Setup::new(2).await;
    let (bob, carol) = (&s.users[1], &s.users[2]);
    s.authorize(VIEW_CHANNEL | SEND_MESSAGES).await;
    let roll = s.roll_command().await;
    let bot_since = s.bot.sync_token().await;
    let carol_since = carol.sync_token().await;
    // Bad options: wrong type, unknown, missing required, out of range, not a member.
    for (options, code) in [
        (
            json!([{ "name": "sides", "value": "six" }]),
            "M_INVALID_PARAM",
        ),
        (
            json!([{ "name": "sides", "value": 6 }, { "name": "loud", "value": "yes" }]),
            "M_INVALID_PARAM",
        ),
        (
            json!([{ "name": "sides", "value": 6 }, { "name": "colour", "value": 1 }]),
            "M_INVALID_PARAM",
        ),
        (
            json!([{ "name": "loud", "value": true }]),
            "M_MISSING_PARAM",
        ),
        (
            json!([{ "name": "sides", "value": 1000 }]),
            "M_INVALID_PARAM",
        ),
        (
            json!([{ "name": "sides", "value": 6 }, { "name": "for", "value": "@nobody:x" }]),
            "M_INVALID_PARAM",
        ),
    ] {
        let resp = s.invoke(bob, options.clone()).await;
        expect_error(&resp, StatusCode::BAD_REQUEST, code, &options.to_string());
    }
    // A command the guild does not have.
    let resp = bob
        .post(
            "/_paracord/v1/interactions",
            &json!({ "guild_id": s.guild, "channel_id": s.general, "name": "nope" }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an unknown command",
    );
    // A good one.
    let invoked = expect_ok(
        s.invoke(
            bob,
            json!([{ "name": "loud", "value": true }, { "name": "sides", "value": 20 },
                   { "name": "for", "value": carol.user_id }]),
        )
        .await,
        "invoke /roll",
    );
    let id = invoked["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(invoked["command_id"], roll["id"]);
    // The bot sees it in its own /sync, with typed options, and a token.
    let event = interaction(&s, Some(&bot_since), &id).await;
    let c = &event["content"];
    assert_eq!(event["sender"], bob.user_id.as_str(), "{event}");
    assert_eq!(c["data"]["name"], "roll");
    assert_eq!(
        c["data"]["options"],
        json!([{ "name": "sides", "type": 4, "value": 20 },
               { "name": "loud", "type": 5, "value": true },
               { "name": "for", "type": 6, "value": carol.user_id }]),
        "{event}"
    );
    assert_eq!(c["channel_id"], s.general.as_str());
    assert_eq!(c["member"]["user_id"], bob.user_id.as_str());
    let token = c["token"].as_str().unwrap_or_default().to_owned();
    assert!(!token.is_empty(), "{event}");
    let callback =
        |id: &str, token: &str| format!("/_paracord/v1/interactions/{id}/{token}/callback");
    let anon = s.server.client();
    // A wrong token is refused, and so is a bad answer.
    expect_error(
        &anon
            .post(
                &callback(&id, "pci_wrong"),
                &json!({ "type": 4, "data": { "content": "x" } }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "a wrong interaction token",
    );
    expect_error(
        &anon
            .post(&callback(&id, &token), &json!({ "type": 4, "data": {} }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "an answer without content",
    );
    expect_error(
        &anon
            .post(&callback(&id, &token), &json!({ "type": 9 }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "an unknown answer type",
    );
    expect_ok(
        anon.post(
            &callback(&id, &token),
            &json!({ "type": 4, "data": { "content": "You rolled 17" } }),
        )
        .await,
        "answer",
    );
    // Carol, a plain Matrix client, sees an ordinary message from the bot.
    let general = s.general.clone();
    let bot_user = s.bot_user.clone();
    let resp = carol
        .sync_until(Some(&carol_since), None, "the bot's answer", |r| {
            r["rooms"]["join"][general.as_str()]["timeline"]["events"]
                .as_array()
                .is_some_and(|e| {
                    e.iter()
                        .any(|e| e["sender"] == bot_user.as_str() && e["type"] == "m.room.message")
                })
        })
        .await;
    let msg = resp["rooms"]["join"][s.general.as_str()]["timeline"]["events"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["sender"] == s.bot_user.as_str())
                .cloned()
        })
        .unwrap_or_default();
    let body = msg["content"]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains(&format!("{} used /roll", bob.user_id)),
        "{msg}"
    );
    assert!(body.ends_with("You rolled 17"), "{msg}");
    assert_eq!(msg["content"]["msgtype"], "m.text");
    assert_eq!(
        msg["content"]["chat.paracord.interaction"]["user_id"],
        bob.user_id.as_str()
    );
    assert_eq!(msg["content"]["chat.paracord.interaction"]["name"], "roll");
    // The token answers once.
    expect_error(
        &anon
            .post(
                &callback(&id, &token),
                &json!({ "type": 4, "data": { "content": "again" } }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "a second answer",
    );

    // An ephemeral answer goes to the invoker only.
    let bob_since = bob.sync_token().await;
    let bot_since = s.bot.sync_token().await;
    let second = expect_ok(
        s.invoke(bob, json!([{ "name": "sides", "value": 6 }]))
            .await,
        "invoke again",
    );
    let id2 = second["id"].as_str().unwrap_or_default().to_owned();
    let event = interaction(&s, Some(&bot_since), &id2).await;
    let token2 = event["content"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    expect_ok(
        anon.post(
            &callback(&id2, &token2),
            &json!({ "type": 4, "data": { "content": "only you see 4", "flags": 64 } }),
        )
        .await,
        "ephemeral answer",
    );
    let whisper = to_device(bob, Some(&bob_since), "chat.paracord.interaction_response").await;
    assert_eq!(whisper["content"]["content"], "only you see 4", "{whisper}");
    assert_eq!(whisper["content"]["interaction_id"], id2.as_str());
    assert_eq!(whisper["sender"], s.bot_user.as_str());

    // A deferred answer, then the original message.
    let bot_since = s.bot.sync_token().await;
    let third = expect_ok(
        s.invoke(bob, json!([{ "name": "sides", "value": 8 }]))
            .await,
        "invoke a third time",
    );
    let id3 = third["id"].as_str().unwrap_or_default().to_owned();
    let event = interaction(&s, Some(&bot_since), &id3).await;
    let token3 = event["content"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let original = format!("/_paracord/v1/interactions/{id3}/{token3}/messages/@original");
    expect_error(
        &anon
            .patch(&original, &json!({ "content": "too soon" }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "the original before any answer",
    );
    expect_ok(
        anon.post(&callback(&id3, &token3), &json!({ "type": 5 }))
            .await,
        "defer",
    );
    let posted = expect_ok(
        anon.patch(&original, &json!({ "content": "thought about it: 3" }))
            .await,
        "the deferred answer",
    );
    let edited = expect_ok(
        anon.patch(&original, &json!({ "content": "thought again: 5" }))
            .await,
        "an edit of the answer",
    );
    assert_eq!(posted["event_id"], edited["event_id"]);

    // Nothing ephemeral is in the room: only the two public answers and the edit.
    let timeline = carol.all_messages(&s.general).await;
    let from_bot: Vec<&str> = timeline
        .iter()
        .filter(|e| e["sender"] == s.bot_user.as_str() && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(from_bot.len(), 3, "{from_bot:?}");
    assert!(
        from_bot.iter().all(|b| !b.contains("only you see")),
        "{from_bot:?}"
    );
    assert!(from_bot[2].starts_with("* "), "{from_bot:?}");
}

#[tokio::test]
async fn an_expired_interaction_token_is_refused() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_INTERACTION_TOKEN_TTL_MS", "1500");
    })
    .await;
    let s = Setup::on(server, 1).await;
    s.authorize(VIEW_CHANNEL | SEND_MESSAGES).await;
    s.roll_command().await;
    let since = s.bot.sync_token().await;
    let invoked = expect_ok(
        s.invoke(&s.users[1], json!([{ "name": "sides", "value": 6 }]))
            .await,
        "invoke",
    );
    let id = invoked["id"].as_str().unwrap_or_default().to_owned();
    let event = interaction(&s, Some(&since), &id).await;
    let token = event["content"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let wait = invoked["expires_at"].as_u64().unwrap_or(0);
    assert!(wait > 0, "{invoked}");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let resp = s
        .server
        .client()
        .post(
            &format!("/_paracord/v1/interactions/{id}/{token}/callback"),
            &json!({ "type": 4, "data": { "content": "late" } }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an expired token",
    );
    assert!(
        resp.1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn a_bot_is_held_to_its_role_and_deleting_the_application_removes_it() {
    let s = Setup::new(1).await;
    // No SEND_MESSAGES for @everyone in #general: the bot's role does not grant it either.
    let everyone = s.guild_path("/roles/everyone");
    let defaults = s.roles().await[0]["permissions"]
        .as_str()
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0);
    expect_ok(
        s.users[0]
            .patch(
                &everyone,
                &json!({ "permissions": (defaults & !SEND_MESSAGES).to_string() }),
            )
            .await,
        "take SEND_MESSAGES from @everyone",
    );
    s.authorize(VIEW_CHANNEL | MANAGE_ROLES).await;
    s.roll_command().await;
    let since = s.bot.sync_token().await;
    let invoked = expect_ok(
        s.invoke(&s.users[0], json!([{ "name": "sides", "value": 6 }]))
            .await,
        "invoke",
    );
    let id = invoked["id"].as_str().unwrap_or_default().to_owned();
    let event = interaction(&s, Some(&since), &id).await;
    let token = event["content"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let resp = s
        .server
        .client()
        .post(
            &format!("/_paracord/v1/interactions/{id}/{token}/callback"),
            &json!({ "type": 4, "data": { "content": "cannot say this" } }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a bot without SEND_MESSAGES",
    );
    // Nor can it send by hand.
    let (status, _) = s
        .bot
        .put(
            &format!(
                "/rooms/{}/send/m.room.message/t{}",
                enc(&s.general),
                rand_suffix()
            ),
            &json!({ "msgtype": "m.text", "body": "sneaky" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A kicked bot can be added again: the old install is cleaned up.
    expect_ok(
        s.users[0]
            .delete(
                &s.guild_path(&format!("/members/{}", enc(&s.bot_user))),
                &json!({}),
            )
            .await,
        "kick the bot",
    );
    assert_eq!(
        s.membership(&s.guild, &s.bot_user).await.as_deref(),
        Some("leave")
    );
    let again = s.authorize(VIEW_CHANNEL).await;
    assert_eq!(
        s.membership(&s.guild, &s.bot_user).await.as_deref(),
        Some("join")
    );
    let managed: Vec<Value> = s
        .roles()
        .await
        .into_iter()
        .filter(|r| r["managed"] == true)
        .collect();
    assert_eq!(managed.len(), 1, "{managed:?}");
    assert_eq!(managed[0]["id"], again["role_id"]);
    // Deleting the application: the bot leaves every room and its token dies.
    expect_ok(
        s.users[0]
            .delete(
                &format!("/_paracord/v1/applications/{}", enc(&s.app)),
                &json!({}),
            )
            .await,
        "delete the application",
    );
    assert_eq!(
        s.membership(&s.guild, &s.bot_user).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        s.membership(&s.general, &s.bot_user).await.as_deref(),
        Some("leave")
    );
    assert!(s.roles().await.iter().all(|r| r.get("managed").is_none()));
    expect_error(
        &s.bot.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "the deleted application's bot token",
    );
    let listed = expect_ok(s.users[0].get(&s.guild_path("/commands")).await, "commands");
    assert_eq!(listed, json!([]));
}

/// An application's interactions endpoint: it records what it is sent and answers each
/// interaction with a message, as a Discord endpoint does.
#[tokio::test]
async fn the_interactions_endpoint_gets_the_interaction_and_its_answer_is_posted() {
    use std::sync::{Arc, Mutex};

    let s = Setup::new(1).await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/interactions",
        axum::routing::post({
            let seen = seen.clone();
            move |axum::Json(body): axum::Json<Value>| async move {
                let sides = body["data"]["options"][0]["value"].as_i64().unwrap_or(0);
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(body);
                axum::Json(json!({ "type": 4,
                                   "data": { "content": format!("endpoint rolled d{sides}") } }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("expected a listener: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    expect_ok(
        s.users[0]
            .patch(
                &format!("/_paracord/v1/applications/{}", enc(&s.app)),
                &json!({ "interactions_endpoint_url": format!("http://127.0.0.1:{port}/interactions") }),
            )
            .await,
        "set the interactions endpoint",
    );
    s.authorize(VIEW_CHANNEL | SEND_MESSAGES).await;
    s.roll_command().await;
    let bob = &s.users[1];
    let since = bob.sync_token().await;
    let invoked = expect_ok(
        s.invoke(bob, json!([{ "name": "sides", "value": 12 }]))
            .await,
        "invoke",
    );
    let general = s.general.clone();
    let resp = bob
        .sync_until(Some(&since), None, "the endpoint's answer", |r| {
            r["rooms"]["join"][general.as_str()]["timeline"]["events"]
                .as_array()
                .is_some_and(|e| {
                    e.iter().any(|e| {
                        e["content"]["body"]
                            .as_str()
                            .is_some_and(|b| b.ends_with("endpoint rolled d12"))
                    })
                })
        })
        .await;
    let events = resp["rooms"]["join"][s.general.as_str()]["timeline"]["events"].clone();
    let msg = events
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["content"]["chat.paracord.interaction"].is_object())
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(msg["sender"], s.bot_user.as_str(), "{msg}");
    let got = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], invoked["id"]);
    assert!(got[0]["token"].as_str().is_some_and(|t| !t.is_empty()));
    server.abort();
}

fn rand_suffix() -> String {
    paracord_complement::random_localpart()
}

/// A namespaced application is also an application service: its bot is the sender and it
/// holds `@<bot>.<anything>` exclusively, inside the namespace nobody else registers in.
#[tokio::test]
async fn a_namespaced_application_registers_its_users_in_the_bot_namespace() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let app = expect_ok(
        alice
            .post(
                "/_paracord/v1/applications",
                &json!({ "name": "Bridge", "namespaced": { "url": null } }),
            )
            .await,
        "create a namespaced application",
    );
    let bot_user = app["bot_user_id"].as_str().unwrap_or_default().to_owned();
    let as_token = app["as_token"].as_str().unwrap_or_default().to_owned();
    assert!(!as_token.is_empty() && app["hs_token"].is_string(), "{app}");
    assert!(app["appservice"]["users"].is_string(), "{app}");
    let localpart = bot_user
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let appservice = server.client_with_token(&as_token);
    // The appservice acts as its sender, the bot.
    let me = expect_ok(appservice.whoami().await, "whoami with the as_token");
    assert_eq!(me["user_id"], bot_user.as_str());
    // It registers a user of its namespace; nobody else can.
    let puppet = format!("{localpart}.alice");
    let made = expect_ok(
        appservice
            .post(
                "/register",
                &json!({ "type": "m.login.application_service", "username": puppet }),
            )
            .await,
        "the appservice registers a namespaced user",
    );
    assert_eq!(
        made["user_id"],
        format!("@{puppet}:{}", server.server_name())
    );
    let resp = server
        .register_raw(json!({ "username": format!("{localpart}.bob"),
                              "password": "pw-correct-horse-battery" }))
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
        "a user registering in the namespace",
    );
    // Outside its namespace, even in the bot namespace: refused.
    let resp = appservice
        .post(
            "/register",
            &json!({ "type": "m.login.application_service", "username": "_bot_someone_else" }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
        "outside its namespace",
    );
    // A second namespaced application does not clash with the first.
    expect_ok(
        alice
            .post(
                "/_paracord/v1/applications",
                &json!({ "name": "Bridge", "namespaced": {} }),
            )
            .await,
        "a second namespaced application of the same name",
    );
    // Deleting the application deletes its registration.
    let id = app["id"].as_str().unwrap_or_default();
    expect_ok(
        alice
            .delete(
                &format!("/_paracord/v1/applications/{}", enc(id)),
                &json!({}),
            )
            .await,
        "delete",
    );
    expect_error(
        &appservice.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "the deleted application's as_token",
    );
}

/// A namespaced application's URL is its owner's choice, not the operator's: without
/// `ip_range_allowlist`, the server does not reach it on loopback (a ping is refused and the
/// listener gets no connection), unlike an operator's registration.
#[tokio::test]
async fn a_users_namespaced_application_cannot_point_the_server_at_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let server = TestServer::start_guarded(|_| {}).await;
    let alice = server.register_random().await;
    let app = expect_ok(
        alice
            .post(
                "/_paracord/v1/applications",
                &json!({ "name": "Prober", "namespaced": { "url": format!("http://127.0.0.1:{port}") } }),
            )
            .await,
        "create a namespaced application",
    );
    let id = app["appservice"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let as_token = app["as_token"].as_str().unwrap_or_default().to_owned();
    assert!(!id.is_empty() && !as_token.is_empty(), "{app}");
    let resp = server
        .client_with_token(&as_token)
        .post(
            &format!("/_matrix/client/v1/appservice/{}/ping", enc(&id)),
            &json!({}),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_GATEWAY,
        "M_CONNECTION_FAILED",
        "a ping to a user's appservice on loopback",
    );
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the server connected to loopback for a user's registration"
    );
}
