//! Guild roles (modify, reorder, delete), members, bans and invites through `/_paracord/v1`
//! (spec/rest.md §7–9, §11), and what they do to the rooms as plain Matrix sees them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paracord_complement::{enc, expect_error, expect_ok, StatusCode, TestServer, User};
use serde_json::{json, Value};

const KICK_MEMBERS: u64 = 2;
const BAN_MEMBERS: u64 = 4;
const ADMINISTRATOR: u64 = 8;
const MANAGE_MESSAGES: u64 = 8192;
const CHANGE_NICKNAME: u64 = 67_108_864;
const MANAGE_NICKNAMES: u64 = 134_217_728;
const MANAGE_ROLES: u64 = 268_435_456;
const MODERATE_MEMBERS: u64 = 1_099_511_627_776;
/// @everyone's permissions in a new guild.
const DEFAULTS: u64 = 563_330_128_662_081;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A guild owned by the first user, with the others joined to the space and #general.
struct Guild {
    server: TestServer,
    users: Vec<User>,
    id: String,
    general: String,
}

impl Guild {
    async fn with_members(n: usize) -> Guild {
        let server = TestServer::start().await;
        let mut users = Vec::new();
        for _ in 0..=n {
            users.push(server.register_random().await);
        }
        let guild = expect_ok(
            users[0]
                .post("/_paracord/v1/guilds", &json!({ "name": "Members" }))
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
        Guild {
            server,
            users,
            id,
            general,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/_paracord/v1/guilds/{}{rest}", enc(&self.id))
    }

    fn member(&self, user: &str) -> String {
        self.path(&format!("/members/{}", enc(user)))
    }

    fn ban(&self, user: &str) -> String {
        self.path(&format!("/bans/{}", enc(user)))
    }

    /// Creates a role as the owner; returns its id.
    async fn role(&self, name: &str, position: i64, permissions: u64) -> String {
        let role = expect_ok(
            self.users[0]
                .post(
                    &self.path("/roles"),
                    &json!({ "name": name, "position": position,
                             "permissions": permissions.to_string() }),
                )
                .await,
            "create role",
        );
        role["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Gives `user` exactly these roles, as the owner.
    async fn set_roles(&self, user: &str, roles: &[&str]) {
        let member = expect_ok(
            self.users[0]
                .client
                .json_patch(&self.member(user), &json!({ "roles": roles }))
                .await,
            "set roles",
        );
        assert_eq!(member["roles"], json!(roles), "{member}");
    }

    /// The level of `user` in the current power levels of `room` (None: the default).
    async fn level(&self, room: &str, user: &str) -> Option<i64> {
        let pl = self.users[0]
            .state_content(room, "m.room.power_levels", "")
            .await;
        pl["users"].get(user).and_then(Value::as_i64)
    }

    async fn membership(&self, room: &str, user: &str) -> Option<String> {
        let (status, content) = self.users[0].get_state(room, "m.room.member", user).await;
        if status != StatusCode::OK {
            return None;
        }
        content["membership"].as_str().map(str::to_owned)
    }
}

/// PATCH is not among the client's helpers.
trait Patch {
    async fn json_patch(&self, path: &str, body: &Value) -> (StatusCode, Value);
}

impl Patch for paracord_complement::Client {
    async fn json_patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let reply = self
            .raw(
                paracord_complement::Method::PATCH,
                path,
                Some((body.to_string().into_bytes(), "application/json")),
            )
            .await;
        (reply.status, reply.body)
    }
}

fn forbidden(resp: &(StatusCode, Value), what: &str) {
    expect_error(resp, StatusCode::FORBIDDEN, "M_FORBIDDEN", what);
}

fn not_found(resp: &(StatusCode, Value), what: &str) {
    expect_error(resp, StatusCode::NOT_FOUND, "M_NOT_FOUND", what);
}

fn bad(resp: &(StatusCode, Value), errcode: &str, what: &str) {
    expect_error(resp, StatusCode::BAD_REQUEST, errcode, what);
}

#[tokio::test]
async fn members_are_listed_by_user_id_a_page_at_a_time() {
    let g = Guild::with_members(3).await;
    let alice = &g.users[0];
    let mut ids: Vec<String> = g.users.iter().map(|u| u.user_id.clone()).collect();
    ids.sort();
    let all = expect_ok(alice.get(&g.path("/members")).await, "GET members");
    let listed: Vec<&str> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    assert_eq!(listed, ids, "{all}");
    let before = now_ms();
    for m in all.as_array().into_iter().flatten() {
        assert_eq!(m["roles"], json!([]), "{m}");
        assert_eq!(m["nick"], Value::Null, "{m}");
        assert_eq!(m["communication_disabled_until"], Value::Null, "{m}");
        let joined = m["joined_at"].as_u64().unwrap_or(0);
        assert!(
            joined > before - 600_000 && joined <= before,
            "joined_at is when they joined: {m}"
        );
    }
    // Pages: two, then what comes after the second.
    let page = expect_ok(alice.get(&g.path("/members?limit=2")).await, "first page");
    let first: Vec<&str> = page
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    assert_eq!(first, ids[..2], "{page}");
    let rest = expect_ok(
        alice
            .get(&g.path(&format!("/members?limit=100&after={}", enc(&ids[1]))))
            .await,
        "after the first page",
    );
    let second: Vec<&str> = rest
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    assert_eq!(second, ids[2..], "{rest}");
    for limit in ["0", "1001", "ten"] {
        bad(
            &alice.get(&g.path(&format!("/members?limit={limit}"))).await,
            "M_INVALID_PARAM",
            limit,
        );
    }
    // One member: their profile in the space.
    let bob = &g.users[1];
    let profile = alice
        .state_content(&g.id, "m.room.member", &bob.user_id)
        .await;
    let one = expect_ok(alice.get(&g.member(&bob.user_id)).await, "GET member");
    assert_eq!(one["user_id"], bob.user_id.as_str());
    assert_eq!(one["displayname"], profile["displayname"], "{one}");
    // A new join event for a profile change does not move joined_at.
    let joined_at = one["joined_at"].clone();
    expect_ok(
        bob.put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            &json!({ "displayname": "Bob B." }),
        )
        .await,
        "displayname",
    );
    let again = expect_ok(alice.get(&g.member(&bob.user_id)).await, "GET member");
    assert_eq!(again["displayname"], "Bob B.", "{again}");
    assert_eq!(again["joined_at"], joined_at, "{again}");
    // Not a member, or asked by a non-member: as if it did not exist.
    let stranger = g.server.register_random().await;
    not_found(
        &alice.get(&g.member(&stranger.user_id)).await,
        "a user who is not a member",
    );
    not_found(
        &stranger.get(&g.path("/members")).await,
        "a non-member lists members",
    );
}

#[tokio::test]
async fn nicknames_are_set_by_their_owner_or_by_a_moderator_above_them() {
    let g = Guild::with_members(2).await;
    let (alice, bob, carol) = (&g.users[0], &g.users[1], &g.users[2]);
    let own = expect_ok(
        bob.client
            .json_patch(&g.member(&bob.user_id), &json!({ "nick": "Bobby" }))
            .await,
        "bob's own nick",
    );
    assert_eq!(own["nick"], "Bobby", "{own}");
    let resp = carol
        .client
        .json_patch(&g.member(&bob.user_id), &json!({ "nick": "Bobo" }))
        .await;
    forbidden(&resp, "carol lacks MANAGE_NICKNAMES");
    assert!(
        resp.1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("MANAGE_NICKNAMES"),
        "{}",
        resp.1
    );
    let nicks = g.role("Nicks", 3, MANAGE_NICKNAMES).await;
    g.set_roles(&carol.user_id, &[&nicks]).await;
    let renamed = expect_ok(
        carol
            .client
            .json_patch(&g.member(&bob.user_id), &json!({ "nick": "Bobo" }))
            .await,
        "carol renames bob",
    );
    assert_eq!(renamed["nick"], "Bobo");
    forbidden(
        &carol
            .client
            .json_patch(&g.member(&alice.user_id), &json!({ "nick": "Boss" }))
            .await,
        "nobody renames the owner",
    );
    g.set_roles(&bob.user_id, &[&nicks]).await;
    forbidden(
        &carol
            .client
            .json_patch(&g.member(&bob.user_id), &json!({ "nick": "Peer" }))
            .await,
        "an equal member",
    );
    // Clearing, and bad input.
    let cleared = expect_ok(
        bob.client
            .json_patch(&g.member(&bob.user_id), &json!({ "nick": null }))
            .await,
        "clear nick",
    );
    assert_eq!(cleared["nick"], Value::Null, "{cleared}");
    bad(
        &bob.client
            .json_patch(&g.member(&bob.user_id), &json!({ "nick": "x".repeat(33) }))
            .await,
        "M_INVALID_PARAM",
        "33 characters",
    );
    bad(
        &bob.client
            .json_patch(&g.member(&bob.user_id), &json!({ "nick": 5 }))
            .await,
        "M_BAD_JSON",
        "a number",
    );
    // Without CHANGE_NICKNAME for @everyone, a plain member keeps their nick.
    let dave = g.server.register_random().await;
    alice.invite_ok(&g.id, &dave.user_id).await;
    dave.join_ok(&g.id).await;
    expect_ok(
        alice
            .client
            .json_patch(
                &g.path("/roles/everyone"),
                &json!({ "permissions": (DEFAULTS & !CHANGE_NICKNAME).to_string() }),
            )
            .await,
        "@everyone loses CHANGE_NICKNAME",
    );
    forbidden(
        &dave
            .client
            .json_patch(&g.member(&dave.user_id), &json!({ "nick": "D" }))
            .await,
        "CHANGE_NICKNAME",
    );
}

#[tokio::test]
async fn a_moderator_kicks_bans_and_times_out_only_members_ranked_below() {
    let g = Guild::with_members(5).await;
    let (alice, bob, carol, dave, erin, frank) = (
        &g.users[0],
        &g.users[1],
        &g.users[2],
        &g.users[3],
        &g.users[4],
        &g.users[5],
    );
    let moderator = g
        .role(
            "Moderator",
            5,
            KICK_MEMBERS | BAN_MEMBERS | MODERATE_MEMBERS | MANAGE_ROLES,
        )
        .await;
    let admin = g.role("Admin", 3, ADMINISTRATOR).await;
    g.set_roles(&bob.user_id, &[&moderator]).await;
    g.set_roles(&carol.user_id, &[&moderator]).await;
    g.set_roles(&frank.user_id, &[&admin]).await;
    assert_eq!(g.level(&g.general, &bob.user_id).await, Some(50));
    assert_eq!(g.level(&g.general, &frank.user_id).await, Some(90));

    // A plain member has no such powers.
    let resp = dave.delete(&g.member(&erin.user_id), &json!({})).await;
    forbidden(&resp, "dave lacks KICK_MEMBERS");
    assert!(
        resp.1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("KICK_MEMBERS"),
        "{}",
        resp.1
    );
    // Bob may not act on his equal nor on the owner.
    forbidden(
        &bob.delete(&g.member(&carol.user_id), &json!({})).await,
        "kick an equal",
    );
    forbidden(
        &bob.put(&g.ban(&carol.user_id), &json!({})).await,
        "ban an equal",
    );
    forbidden(
        &bob.delete(&g.member(&alice.user_id), &json!({})).await,
        "kick the owner",
    );
    forbidden(
        &bob.put(&g.ban(&alice.user_id), &json!({})).await,
        "ban the owner",
    );
    let until = now_ms() + 600_000;
    forbidden(
        &bob.client
            .json_patch(
                &g.member(&alice.user_id),
                &json!({ "communication_disabled_until": until }),
            )
            .await,
        "time out the owner",
    );
    // Frank (Admin, position 3) is below bob but cannot be timed out.
    forbidden(
        &bob.client
            .json_patch(
                &g.member(&frank.user_id),
                &json!({ "communication_disabled_until": until }),
            )
            .await,
        "time out an administrator",
    );
    // Bob cannot give himself a role at his own position, nor one granting what he lacks.
    forbidden(
        &bob.client
            .json_patch(&g.member(&dave.user_id), &json!({ "roles": [&moderator] }))
            .await,
        "a role at bob's position",
    );
    forbidden(
        &bob.client
            .json_patch(&g.member(&dave.user_id), &json!({ "roles": [&admin] }))
            .await,
        "a role granting ADMINISTRATOR",
    );

    // Within the hierarchy: carol loses the role, then bob kicks her.
    g.set_roles(&carol.user_id, &[]).await;
    expect_ok(
        bob.delete(
            &format!("{}?reason=bye", g.member(&carol.user_id)),
            &json!({}),
        )
        .await,
        "bob kicks carol",
    );
    assert_eq!(
        g.membership(&g.id, &carol.user_id).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        g.membership(&g.general, &carol.user_id).await.as_deref(),
        Some("leave")
    );
    let kicked = alice
        .state_content(&g.id, "m.room.member", &carol.user_id)
        .await;
    assert_eq!(kicked["reason"], "bye", "{kicked}");
    not_found(
        &alice.get(&g.member(&carol.user_id)).await,
        "carol is no member",
    );
    not_found(
        &bob.delete(&g.member(&carol.user_id), &json!({})).await,
        "kicking a non-member",
    );
    // Bob bans dave: banned in the space and #general.
    let ban = expect_ok(
        bob.put(&g.ban(&dave.user_id), &json!({ "reason": "Spam" }))
            .await,
        "bob bans dave",
    );
    assert_eq!(ban, json!({ "user_id": dave.user_id, "reason": "Spam" }));
    assert_eq!(
        g.membership(&g.id, &dave.user_id).await.as_deref(),
        Some("ban")
    );
    assert_eq!(
        g.membership(&g.general, &dave.user_id).await.as_deref(),
        Some("ban")
    );
    // Bob times erin out.
    let timed = expect_ok(
        bob.client
            .json_patch(
                &g.member(&erin.user_id),
                &json!({ "communication_disabled_until": until }),
            )
            .await,
        "bob times erin out",
    );
    assert_eq!(timed["communication_disabled_until"], until, "{timed}");
    assert_eq!(g.level(&g.general, &erin.user_id).await, Some(0));
    // Erin leaves by herself; the owner may not.
    expect_ok(
        erin.delete(&g.member(&erin.user_id), &json!({})).await,
        "erin leaves",
    );
    assert_eq!(
        g.membership(&g.id, &erin.user_id).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        g.membership(&g.general, &erin.user_id).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        g.level(&g.general, &erin.user_id).await,
        None,
        "a departed member leaves the power levels"
    );
    forbidden(
        &alice.delete(&g.member(&alice.user_id), &json!({})).await,
        "the owner leaves",
    );
}

/// Polls (up to 15 s) until `user` can send in #general again, which must not be before
/// `until`.
async fn speaks_again_after(g: &Guild, user: &User, until: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = user
            .send_with_txn(
                &g.general,
                "m.room.message",
                &paracord_complement::Client::txn_id(),
                &json!({ "msgtype": "m.text", "body": "back" }),
            )
            .await;
        if status == StatusCode::OK {
            assert!(now_ms() >= until, "sent before the timeout ended: {body}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still muted after the timeout: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_timed_out_member_is_muted_until_the_timeout_ends_by_itself() {
    let g = Guild::with_members(1).await;
    let (alice, bob) = (&g.users[0], &g.users[1]);
    let path = g.member(&bob.user_id);
    bad(
        &alice
            .client
            .json_patch(
                &path,
                &json!({ "communication_disabled_until": now_ms() + 29 * 86_400_000 }),
            )
            .await,
        "M_INVALID_PARAM",
        "29 days ahead",
    );
    bad(
        &alice
            .client
            .json_patch(&path, &json!({ "communication_disabled_until": "soon" }))
            .await,
        "M_BAD_JSON",
        "a string",
    );
    let until = now_ms() + 4_000;
    let member = expect_ok(
        alice
            .client
            .json_patch(&path, &json!({ "communication_disabled_until": until }))
            .await,
        "time out bob",
    );
    assert_eq!(member["communication_disabled_until"], until, "{member}");
    assert_eq!(g.level(&g.general, &bob.user_id).await, Some(0));
    assert_eq!(g.level(&g.id, &bob.user_id).await, Some(0));
    let (status, body) = bob
        .send_with_txn(
            &g.general,
            "m.room.message",
            &paracord_complement::Client::txn_id(),
            &json!({ "msgtype": "m.text", "body": "muted?" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The timeout ends by itself: bob's level and his voice come back.
    speaks_again_after(&g, bob, until).await;
    assert_eq!(g.level(&g.general, &bob.user_id).await, None);
    let member = expect_ok(alice.get(&path).await, "GET bob");
    assert_eq!(
        member["communication_disabled_until"],
        Value::Null,
        "{member}"
    );
}

#[tokio::test]
async fn leaving_the_guild_space_through_plain_matrix_leaves_its_channels() {
    let g = Guild::with_members(1).await;
    let bob = &g.users[1];
    let (status, body) = bob
        .post(&format!("/rooms/{}/leave", enc(&g.id)), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m = g.users[0]
        .state_content(&g.general, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(m["membership"], "leave", "bob left #general too: {m}");
}

#[tokio::test]
async fn a_timeout_still_ends_when_the_server_restarted_during_it() {
    let mut g = Guild::with_members(1).await;
    let path = g.member(&g.users[1].user_id);
    let until = now_ms() + 3_000;
    expect_ok(
        g.users[0]
            .client
            .json_patch(&path, &json!({ "communication_disabled_until": until }))
            .await,
        "time out bob",
    );
    assert_eq!(g.level(&g.general, &g.users[1].user_id).await, Some(0));
    // The task that would have lifted it dies with the process.
    g.server.restart().await;
    let bob = &g.users[1];
    speaks_again_after(&g, bob, until).await;
    assert_eq!(g.level(&g.general, &bob.user_id).await, None);
}

#[tokio::test]
async fn a_ban_redacts_recent_messages_keeps_the_user_out_and_can_be_lifted() {
    let g = Guild::with_members(2).await;
    let (alice, bob, carol) = (&g.users[0], &g.users[1], &g.users[2]);
    let spam: Vec<String> = vec![
        bob.send_text(&g.general, "spam one").await,
        bob.send_text(&g.general, "spam two").await,
    ];
    let kept = carol.send_text(&g.general, "a fine message").await;
    for (body, errcode) in [
        (
            json!({ "delete_message_seconds": 604_801 }),
            "M_INVALID_PARAM",
        ),
        (json!({ "delete_message_seconds": -1 }), "M_INVALID_PARAM"),
        (json!({ "delete_message_seconds": "1h" }), "M_BAD_JSON"),
        (json!({ "reason": 3 }), "M_BAD_JSON"),
    ] {
        bad(
            &alice.put(&g.ban(&bob.user_id), &body).await,
            errcode,
            &body.to_string(),
        );
    }
    forbidden(
        &carol.put(&g.ban(&bob.user_id), &json!({})).await,
        "carol lacks BAN_MEMBERS",
    );
    forbidden(&carol.get(&g.path("/bans")).await, "carol lists bans");
    expect_ok(
        alice
            .put(
                &g.ban(&bob.user_id),
                &json!({ "reason": "Spam", "delete_message_seconds": 3600 }),
            )
            .await,
        "ban bob",
    );
    let event = |id: &str| format!("/rooms/{}/event/{}", enc(&g.general), enc(id));
    for id in &spam {
        let ev = expect_ok(alice.get(&event(id)).await, "a redacted message");
        assert_eq!(ev["content"], json!({}), "{ev}");
        assert!(ev["unsigned"]["redacted_because"].is_object(), "{ev}");
    }
    let ev = expect_ok(alice.get(&event(&kept)).await, "carol's message");
    assert_eq!(ev["content"]["body"], "a fine message", "{ev}");
    let bans = expect_ok(alice.get(&g.path("/bans")).await, "GET bans");
    assert_eq!(
        bans,
        json!([{ "user_id": bob.user_id, "reason": "Spam" }]),
        "{bans}"
    );
    // Bob stays out, even with an invite.
    let (status, body) = bob.join(&g.id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = bob.join(&g.general).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let invite = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/channels/{}/invites", enc(&g.general)),
                &json!({}),
            )
            .await,
        "create invite",
    );
    let code = invite["code"].as_str().unwrap_or_default().to_owned();
    forbidden(
        &bob.post(&format!("/_paracord/v1/invites/{code}"), &json!({}))
            .await,
        "a banned user accepts an invite",
    );
    // Lifted: bob may come back through an invite.
    forbidden(
        &carol.delete(&g.ban(&bob.user_id), &json!({})).await,
        "carol unbans",
    );
    expect_ok(
        alice.delete(&g.ban(&bob.user_id), &json!({})).await,
        "unban bob",
    );
    assert_eq!(
        g.membership(&g.id, &bob.user_id).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        g.membership(&g.general, &bob.user_id).await.as_deref(),
        Some("leave")
    );
    assert_eq!(
        expect_ok(alice.get(&g.path("/bans")).await, "GET bans"),
        json!([])
    );
    not_found(
        &alice.delete(&g.ban(&bob.user_id), &json!({})).await,
        "no such ban",
    );
    expect_ok(
        bob.post(&format!("/_paracord/v1/invites/{code}"), &json!({}))
            .await,
        "bob accepts after the unban",
    );
    assert_eq!(
        g.membership(&g.general, &bob.user_id).await.as_deref(),
        Some("join")
    );
}

#[tokio::test]
async fn invites_are_previewed_accepted_used_up_revoked_and_expire() {
    let g = Guild::with_members(1).await;
    let (alice, bob) = (&g.users[0], &g.users[1]);
    let dave = g.server.register_random().await;
    let erin = g.server.register_random().await;
    let create = format!("/_paracord/v1/channels/{}/invites", enc(&g.general));
    for (body, errcode) in [
        (json!({ "max_age": 604_801 }), "M_INVALID_PARAM"),
        (json!({ "max_uses": 101 }), "M_INVALID_PARAM"),
        (json!({ "max_uses": "x" }), "M_BAD_JSON"),
    ] {
        bad(
            &alice.post(&create, &body).await,
            errcode,
            &body.to_string(),
        );
    }
    not_found(
        &dave.post(&create, &json!({})).await,
        "a non-member creates an invite",
    );
    let invite = expect_ok(
        bob.post(&create, &json!({ "max_uses": 1 })).await,
        "bob creates an invite",
    );
    let code = invite["code"].as_str().unwrap_or_default().to_owned();
    assert!(
        (8..=32).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphanumeric()),
        "{invite}"
    );
    assert_eq!(invite["inviter"], bob.user_id.as_str());
    assert_eq!(invite["max_uses"], 1);
    assert_eq!(invite["max_age"], 86_400);
    let created = invite["created_at"].as_u64().unwrap_or(0);
    assert_eq!(invite["expires_at"], created + 86_400_000, "{invite}");
    assert_eq!(invite["guild"]["id"], g.id.as_str());
    assert_eq!(invite["guild"]["member_count"], 2);
    assert_eq!(
        invite["channel"],
        json!({ "id": g.general, "name": "general" })
    );

    // Anyone may preview it.
    let url = format!("/_paracord/v1/invites/{code}");
    let preview = expect_ok(dave.get(&url).await, "dave previews");
    assert_eq!(preview, invite, "the same invite");
    // Dave accepts: a member of the guild, in #general; one use.
    let accepted = expect_ok(dave.post(&url, &json!({})).await, "dave accepts");
    assert_eq!(
        accepted,
        json!({ "guild_id": g.id, "channel_id": g.general })
    );
    let rooms = expect_ok(dave.get("/joined_rooms").await, "joined rooms");
    for room in [&g.id, &g.general] {
        assert!(
            rooms["joined_rooms"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == room.as_str())),
            "dave is in {room}: {rooms}"
        );
    }
    expect_ok(
        alice.get(&g.member(&dave.user_id)).await,
        "dave is a member",
    );
    // Again: the same answer, no use counted.
    assert_eq!(
        expect_ok(dave.post(&url, &json!({})).await, "dave accepts again"),
        accepted
    );
    // Used up: nobody else gets in with it.
    not_found(&erin.get(&url).await, "a used-up invite");
    not_found(
        &erin.post(&url, &json!({})).await,
        "accept a used-up invite",
    );
    assert_eq!(
        g.membership(&g.id, &erin.user_id).await,
        None,
        "erin was not invited"
    );
    // Listing: MANAGE_GUILD, valid invites only.
    let open = expect_ok(alice.post(&create, &json!({})).await, "an unlimited invite");
    let open_code = open["code"].as_str().unwrap_or_default().to_owned();
    let listed = expect_ok(alice.get(&g.path("/invites")).await, "GET invites");
    let codes: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(codes, [open_code.as_str()], "{listed}");
    forbidden(
        &bob.get(&g.path("/invites")).await,
        "bob lacks MANAGE_GUILD",
    );
    // Revoked: by the inviter or MANAGE_GUILD, not by anyone else.
    let open_url = format!("/_paracord/v1/invites/{open_code}");
    forbidden(
        &bob.delete(&open_url, &json!({})).await,
        "bob revokes alice's",
    );
    let revoked = expect_ok(alice.delete(&open_url, &json!({})).await, "revoke");
    assert_eq!(revoked["revoked"], true, "{revoked}");
    not_found(&erin.get(&open_url).await, "a revoked invite");
    not_found(
        &erin.post(&open_url, &json!({})).await,
        "accept a revoked invite",
    );
    // Expired.
    let short = expect_ok(
        alice.post(&create, &json!({ "max_age": 1 })).await,
        "a one-second invite",
    );
    let short_url = format!(
        "/_paracord/v1/invites/{}",
        short["code"].as_str().unwrap_or_default()
    );
    expect_ok(erin.get(&short_url).await, "not yet expired");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    not_found(&erin.get(&short_url).await, "an expired invite");
    not_found(
        &erin.post(&short_url, &json!({})).await,
        "accept an expired invite",
    );
    not_found(
        &erin.get("/_paracord/v1/invites/NoSuchCode1").await,
        "an unknown code",
    );
    // An invite dies with its inviter's right to invite.
    let bobs = expect_ok(bob.post(&create, &json!({})).await, "bob's second invite");
    let bobs_url = format!(
        "/_paracord/v1/invites/{}",
        bobs["code"].as_str().unwrap_or_default()
    );
    expect_ok(
        alice.delete(&g.member(&bob.user_id), &json!({})).await,
        "kick bob",
    );
    not_found(&erin.get(&bobs_url).await, "the inviter left");
}

#[tokio::test]
async fn roles_are_edited_reordered_and_deleted_within_the_hierarchy() {
    let g = Guild::with_members(2).await;
    let (alice, bob, carol) = (&g.users[0], &g.users[1], &g.users[2]);
    let low = g.role("Low", 1, 0).await;
    let helper = g.role("Helper", 2, MANAGE_MESSAGES).await;
    let manager = g.role("Manager", 5, MANAGE_ROLES).await;
    g.set_roles(&bob.user_id, &[&manager]).await;
    g.set_roles(&carol.user_id, &[&helper]).await;
    assert_eq!(g.level(&g.general, &carol.user_id).await, Some(50));
    let role = |id: &str| g.path(&format!("/roles/{}", enc(id)));

    // Edits.
    let edited = expect_ok(
        alice
            .client
            .json_patch(&role(&helper), &json!({ "name": "Helpers", "color": 255 }))
            .await,
        "edit Helper",
    );
    assert_eq!(
        edited,
        json!({ "id": helper, "name": "Helpers", "color": 255, "position": 2, "hoist": false,
                "mentionable": false, "permissions": MANAGE_MESSAGES.to_string() })
    );
    // Taking its permission away lowers carol; giving it back raises her again.
    expect_ok(
        alice
            .client
            .json_patch(&role(&helper), &json!({ "permissions": "0" }))
            .await,
        "Helper loses MANAGE_MESSAGES",
    );
    assert_eq!(g.level(&g.general, &carol.user_id).await, None);
    expect_ok(
        alice
            .client
            .json_patch(
                &role(&helper),
                &json!({ "permissions": MANAGE_MESSAGES.to_string() }),
            )
            .await,
        "Helper gets MANAGE_MESSAGES back",
    );
    assert_eq!(g.level(&g.general, &carol.user_id).await, Some(50));
    // Bob (Manager, 5, MANAGE_ROLES only) edits Low but not what grants more than he has,
    // nor his own rank, nor anything to or at his position.
    expect_ok(
        bob.client
            .json_patch(&role(&low), &json!({ "name": "Lower", "hoist": true }))
            .await,
        "bob edits Low",
    );
    for (id, body, what) in [
        (
            &helper,
            json!({ "name": "x" }),
            "a role granting MANAGE_MESSAGES",
        ),
        (&low, json!({ "permissions": "2" }), "granting KICK_MEMBERS"),
        (
            &low,
            json!({ "position": 5 }),
            "moving up to his own position",
        ),
        (&manager, json!({ "name": "x" }), "his own role"),
    ] {
        forbidden(&bob.client.json_patch(&role(id), &body).await, what);
    }
    forbidden(
        &carol
            .client
            .json_patch(&role(&low), &json!({ "name": "x" }))
            .await,
        "carol lacks MANAGE_ROLES",
    );
    for (id, body, errcode) in [
        ("everyone", json!({ "position": 1 }), "M_INVALID_PARAM"),
        (low.as_str(), json!({ "position": 0 }), "M_INVALID_PARAM"),
        (low.as_str(), json!({ "position": 1.5 }), "M_INVALID_PARAM"),
        (low.as_str(), json!({ "color": -1 }), "M_INVALID_PARAM"),
        (low.as_str(), json!({ "permissions": 8 }), "M_BAD_JSON"),
        (low.as_str(), json!({ "hoist": "yes" }), "M_BAD_JSON"),
    ] {
        bad(
            &alice.client.json_patch(&role(id), &body).await,
            errcode,
            &body.to_string(),
        );
    }
    not_found(
        &alice
            .client
            .json_patch(&role("nosuchrole"), &json!({ "name": "x" }))
            .await,
        "an unknown role",
    );

    // Reordering.
    let roles = expect_ok(
        alice
            .client
            .json_patch(
                &g.path("/roles"),
                &json!([{ "id": low, "position": 3 }, { "id": helper, "position": 1 }]),
            )
            .await,
        "reorder",
    );
    let order: Vec<(&str, i64)> = roles
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default(),
                r["position"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("everyone", 0),
            (helper.as_str(), 1),
            (low.as_str(), 3),
            (manager.as_str(), 5)
        ],
        "{roles}"
    );
    forbidden(
        &bob.client
            .json_patch(
                &g.path("/roles"),
                &json!([{ "id": manager, "position": 4 }]),
            )
            .await,
        "bob moves his own role",
    );
    forbidden(
        &bob.client
            .json_patch(&g.path("/roles"), &json!([{ "id": low, "position": 6 }]))
            .await,
        "bob moves a role above himself",
    );
    bad(
        &alice
            .client
            .json_patch(
                &g.path("/roles"),
                &json!([{ "id": "everyone", "position": 2 }]),
            )
            .await,
        "M_INVALID_PARAM",
        "moving @everyone",
    );
    bad(
        &alice
            .client
            .json_patch(&g.path("/roles"), &json!({ "id": low, "position": 2 }))
            .await,
        "M_BAD_JSON",
        "not an array",
    );
    not_found(
        &alice
            .client
            .json_patch(
                &g.path("/roles"),
                &json!([{ "id": "nosuchrole", "position": 2 }]),
            )
            .await,
        "reorder an unknown role",
    );

    // Deleting Helper takes it from carol and from #general's overwrites.
    alice
        .put_state(
            &g.general,
            "chat.paracord.overwrite",
            &format!("role:{helper}"),
            &json!({ "allow": "0", "deny": "2048" }),
        )
        .await;
    bad(
        &alice.delete(&role("everyone"), &json!({})).await,
        "M_INVALID_PARAM",
        "delete @everyone",
    );
    forbidden(
        &carol.delete(&role(&low), &json!({})).await,
        "carol deletes a role",
    );
    forbidden(
        &bob.delete(&role(&manager), &json!({})).await,
        "bob deletes his own role",
    );
    expect_ok(
        alice.delete(&role(&helper), &json!({})).await,
        "delete Helper",
    );
    let roles = expect_ok(alice.get(&g.path("/roles")).await, "GET roles");
    assert!(
        roles
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["id"] != helper.as_str())),
        "{roles}"
    );
    let member = expect_ok(alice.get(&g.member(&carol.user_id)).await, "carol");
    assert_eq!(member["roles"], json!([]), "{member}");
    let stored = alice
        .state_content(
            &g.id,
            "chat.paracord.member",
            &format!("user:{}", carol.user_id),
        )
        .await;
    assert_eq!(stored["roles"], json!([]), "{stored}");
    let overwrite = alice
        .state_content(
            &g.general,
            "chat.paracord.overwrite",
            &format!("role:{helper}"),
        )
        .await;
    assert_eq!(overwrite, json!({}));
    assert_eq!(g.level(&g.general, &carol.user_id).await, None);
    not_found(
        &alice.delete(&role(&helper), &json!({})).await,
        "deleted already",
    );
    // Bob deletes a role below him.
    expect_ok(bob.delete(&role(&low), &json!({})).await, "bob deletes Low");
}
