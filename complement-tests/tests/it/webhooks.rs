//! Webhooks (spec/webhooks.md): managing them with MANAGE_WEBHOOKS, and executing them with
//! their token alone at Discord's path, with Discord's, Slack's and GitHub's bodies, as
//! members of the channel see the result over plain Matrix.

use hmac::{Hmac, Mac};
use paracord_complement::{
    enc, expect_error, expect_ok, room_timeline, Method, StatusCode, TestServer, User,
};
use serde_json::{json, Value};
use sha2::Sha256;

const MANAGE_WEBHOOKS: u64 = 1 << 29;
const SEND_MESSAGES: u64 = 1 << 11;

/// A guild owned by `owner`, with `member` joined to its space and #general.
struct Guild {
    server: TestServer,
    owner: User,
    member: User,
    id: String,
    general: String,
    http: reqwest::Client,
}

/// A made webhook: its object (with `token`).
struct Hook {
    id: String,
    token: String,
    user_id: String,
}

/// An execution's answer.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl Guild {
    async fn new() -> Guild {
        let server = TestServer::start().await;
        let owner = server.register_random().await;
        let member = server.register_random().await;
        let guild = expect_ok(
            owner
                .post("/_paracord/v1/guilds", &json!({ "name": "Hooks" }))
                .await,
            "create guild",
        );
        let id = guild["id"].as_str().unwrap_or_default().to_owned();
        let general = guild["system_channel"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        owner.invite_ok(&id, &member.user_id).await;
        member.join_ok(&id).await;
        member.join_ok(&general).await;
        Guild {
            server,
            owner,
            member,
            id,
            general,
            http: reqwest::Client::new(),
        }
    }

    fn channel_hooks(&self, channel: &str) -> String {
        format!("/_paracord/v1/channels/{}/webhooks", enc(channel))
    }

    async fn create_as(&self, user: &User, channel: &str, name: &str) -> (StatusCode, Value) {
        user.post(&self.channel_hooks(channel), &json!({ "name": name }))
            .await
    }

    async fn hook(&self, name: &str) -> Hook {
        self.hook_in(&self.general.clone(), name).await
    }

    async fn hook_in(&self, channel: &str, name: &str) -> Hook {
        let w = expect_ok(
            self.create_as(&self.owner, channel, name).await,
            "create webhook",
        );
        Hook {
            id: w["id"].as_str().unwrap_or_default().to_owned(),
            token: w["token"].as_str().unwrap_or_default().to_owned(),
            user_id: w["user"]["id"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// POSTs to `/api/webhooks/{id}/{token}{tail}` (a suffix and the query) with a body and
    /// content type.
    async fn post_raw(
        &self,
        id: &str,
        token: &str,
        tail: &str,
        body: Vec<u8>,
        content_type: &str,
        headers: &[(&str, String)],
    ) -> Answer {
        let url = format!("{}/api/webhooks/{id}/{token}{tail}", self.server.base_url());
        let mut req = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("expected an answer from {url}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    async fn execute(&self, hook: &Hook, query: &str, body: &Value) -> Answer {
        self.post_raw(
            &hook.id,
            &hook.token,
            query,
            body.to_string().into_bytes(),
            "application/json",
            &[],
        )
        .await
    }

    /// The event `event_id` as the member reads it.
    async fn event(&self, room: &str, event_id: &str) -> Value {
        expect_ok(
            self.member
                .get(&format!("/rooms/{}/event/{}", enc(room), enc(event_id)))
                .await,
            "get event",
        )
    }

    /// Gives the member a role with these permissions, as the owner.
    async fn grant(&self, permissions: u64) {
        let role = expect_ok(
            self.owner
                .post(
                    &format!("/_paracord/v1/guilds/{}/roles", enc(&self.id)),
                    &json!({ "name": "hooks", "position": 1,
                             "permissions": permissions.to_string() }),
                )
                .await,
            "create role",
        );
        let role = role["id"].as_str().unwrap_or_default();
        let (status, body) = self
            .owner
            .put(
                &format!(
                    "/_paracord/v1/guilds/{}/members/{}/roles/{}",
                    enc(&self.id),
                    enc(&self.member.user_id),
                    enc(role)
                ),
                &json!({}),
            )
            .await;
        assert!(
            status.is_success(),
            "expected the role given: {status} {body}"
        );
    }
}

fn unknown_webhook() -> Value {
    json!({ "code": 10015, "message": "Unknown Webhook" })
}

#[tokio::test]
async fn managing_webhooks_needs_manage_webhooks() {
    let g = Guild::new().await;
    // A member without MANAGE_WEBHOOKS may neither make nor list nor read them.
    let refused = g.create_as(&g.member, &g.general, "nope").await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "create without the flag",
    );
    let made = expect_ok(g.create_as(&g.owner, &g.general, "Deploys").await, "create");
    let id = made["id"].as_str().unwrap_or_default().to_owned();
    let token = made["token"].as_str().unwrap_or_default().to_owned();
    assert!(
        id.len() >= 18 && id.chars().all(|c| c.is_ascii_digit()),
        "{made}"
    );
    assert!(token.len() >= 60, "{made}");
    assert_eq!(made["name"], "Deploys");
    assert_eq!(made["channel_id"], g.general.as_str());
    assert_eq!(made["guild_id"], g.id.as_str());
    assert!(
        made["url"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&format!("/api/webhooks/{id}/{token}")),
        "{made}"
    );
    let user_id = made["user"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(user_id.starts_with("@_webhook_"), "{made}");

    let list = expect_ok(g.owner.get(&g.channel_hooks(&g.general)).await, "list");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert!(
        list[0].get("token").is_none(),
        "the token is shown once: {list}"
    );
    let guild_list = expect_ok(
        g.owner
            .get(&format!("/_paracord/v1/guilds/{}/webhooks", enc(&g.id)))
            .await,
        "guild list",
    );
    assert_eq!(guild_list[0]["id"], id.as_str(), "{guild_list}");
    let path = format!("/_paracord/v1/webhooks/{id}");
    for resp in [
        g.member.get(&g.channel_hooks(&g.general)).await,
        g.member
            .get(&format!("/_paracord/v1/guilds/{}/webhooks", enc(&g.id)))
            .await,
        g.member.get(&path).await,
        g.member.patch(&path, &json!({ "name": "x" })).await,
        g.member.delete(&path, &json!({})).await,
        g.member.post(&format!("{path}/token"), &json!({})).await,
    ] {
        expect_error(
            &resp,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "a member without the flag",
        );
    }

    // The owner reads, renames, rotates and deletes it.
    assert_eq!(
        expect_ok(g.owner.get(&path).await, "get")["name"],
        "Deploys"
    );
    let renamed = expect_ok(
        g.owner.patch(&path, &json!({ "name": "Releases" })).await,
        "rename",
    );
    assert_eq!(renamed["name"], "Releases");
    let member_event = g
        .owner
        .state_content(&g.general, "m.room.member", &user_id)
        .await;
    assert_eq!(member_event["displayname"], "Releases", "{member_event}");
    assert_eq!(member_event["membership"], "join", "{member_event}");
    let rotated = expect_ok(
        g.owner.post(&format!("{path}/token"), &json!({})).await,
        "rotate",
    );
    assert_ne!(rotated["token"], token.as_str());
    expect_ok(g.owner.delete(&path, &json!({})).await, "delete");
    expect_error(
        &g.owner.get(&path).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "a deleted webhook",
    );

    // With a role that has MANAGE_WEBHOOKS, the member may make one.
    g.grant(MANAGE_WEBHOOKS).await;
    expect_ok(
        g.create_as(&g.member, &g.general, "Mine").await,
        "create with the flag",
    );
}

#[tokio::test]
async fn executing_posts_as_the_webhook_user_with_the_overridden_name() {
    let g = Guild::new().await;
    let hook = g.hook("Builder").await;
    let since = g.member.sync_token().await;
    let a = g
        .execute(
            &hook,
            "",
            &json!({ "content": "build 42 passed", "username": "CI bot" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let general = g.general.clone();
    let sender = hook.user_id.clone();
    let resp = g
        .member
        .sync_until(Some(&since), None, "the webhook's message", |r| {
            room_timeline(r, &general).iter().any(|e| {
                e["sender"] == sender.as_str() && e["content"]["body"] == "build 42 passed"
            })
        })
        .await;
    let event = room_timeline(&resp, &general)
        .into_iter()
        .find(|e| e["sender"] == sender.as_str())
        .unwrap_or_default();
    let content = &event["content"];
    assert_eq!(content["msgtype"], "m.text");
    assert_eq!(
        content["com.beeper.per_message_profile"]["displayname"], "CI bot",
        "{event}"
    );
    assert_eq!(content["chat.paracord.webhook"]["id"], hook.id.as_str());
    assert_eq!(content["chat.paracord.webhook"]["username"], "CI bot");
    // Plain clients show the webhook's own name: its member event in the channel.
    let member = g
        .member
        .state_content(&g.general, "m.room.member", &hook.user_id)
        .await;
    assert_eq!(member["displayname"], "Builder", "{member}");
}

#[tokio::test]
async fn webhooks_post_where_everyone_may_not() {
    let g = Guild::new().await;
    // @everyone loses SEND_MESSAGES in #general; the webhook still posts, the member cannot.
    let (status, body) = g
        .owner
        .put(
            &format!(
                "/_paracord/v1/channels/{}/permissions/{}",
                enc(&g.general),
                "role:everyone"
            ),
            &json!({ "allow": "0", "deny": SEND_MESSAGES.to_string() }),
        )
        .await;
    assert!(
        status.is_success(),
        "expected the overwrite: {status} {body}"
    );
    let hook = g.hook("Announcer").await;
    let a = g
        .execute(
            &hook,
            "?wait=true",
            &json!({ "content": "read-only channel news" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let (status, _) = g
        .member
        .put(
            &format!(
                "/rooms/{}/send/m.room.message/{}",
                enc(&g.general),
                paracord_complement::Client::txn_id()
            ),
            &json!({ "msgtype": "m.text", "body": "me too" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the member may not post");
    // The webhook user has the sending level only.
    let pl = g
        .owner
        .state_content(&g.general, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users"][&hook.user_id], 1, "{pl}");
}

#[tokio::test]
async fn wait_true_returns_the_message() {
    let g = Guild::new().await;
    let hook = g.hook("Waiter").await;
    let a = g
        .execute(
            &hook,
            "?wait=true",
            &json!({ "content": "with wait", "username": "Named" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let m = &a.body;
    let event_id = m["id"].as_str().unwrap_or_default();
    assert!(event_id.starts_with('$'), "{m}");
    assert_eq!(m["channel_id"], g.general.as_str());
    assert_eq!(m["content"], "with wait");
    assert_eq!(m["author"]["username"], "Named");
    assert_eq!(m["author"]["bot"], true);
    assert_eq!(m["webhook_id"], hook.id.as_str());
    assert!(
        m["timestamp"].as_str().is_some_and(|t| t.contains('T')),
        "{m}"
    );
    let event = g.event(&g.general, event_id).await;
    assert_eq!(event["sender"], hook.user_id.as_str());
    assert_eq!(event["content"]["body"], "with wait");
}

#[tokio::test]
async fn wrong_token_and_unknown_id_leak_nothing() {
    let g = Guild::new().await;
    let hook = g.hook("Secret").await;
    let body = json!({ "content": "x" });
    let wrong_token = Hook {
        id: hook.id.clone(),
        token: "A".repeat(68),
        user_id: String::new(),
    };
    let unknown_id = Hook {
        id: "123456789012345678".into(),
        token: hook.token.clone(),
        user_id: String::new(),
    };
    let a = g.execute(&wrong_token, "?wait=true", &body).await;
    let b = g.execute(&unknown_id, "?wait=true", &body).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body, unknown_webhook(), "{}", a.text);
    assert_eq!(a.text, b.text, "the same answer for both");
    // A bad body with a wrong token is still unknown: nothing is checked before the token.
    let c = g
        .post_raw(&hook.id, "nope", "", b"{".to_vec(), "application/json", &[])
        .await;
    assert_eq!(c.body, unknown_webhook());
    // The same under /_paracord/v1.
    let d = g
        .http
        .post(format!(
            "{}/_paracord/v1/webhooks/{}/{}",
            g.server.base_url(),
            hook.id,
            "B".repeat(68)
        ))
        .json(&body)
        .send()
        .await
        .map(|r| r.status());
    assert_eq!(d.ok(), Some(StatusCode::NOT_FOUND));
    let ok = g
        .http
        .post(format!(
            "{}/_paracord/v1/webhooks/{}/{}",
            g.server.base_url(),
            hook.id,
            hook.token
        ))
        .json(&body)
        .send()
        .await
        .map(|r| r.status());
    assert_eq!(ok.ok(), Some(StatusCode::NO_CONTENT));
}

#[tokio::test]
async fn a_rotated_token_replaces_the_old_one() {
    let g = Guild::new().await;
    let hook = g.hook("Rotor").await;
    let rotated = expect_ok(
        g.owner
            .post(
                &format!("/_paracord/v1/webhooks/{}/token", hook.id),
                &json!({}),
            )
            .await,
        "rotate",
    );
    let new = Hook {
        id: hook.id.clone(),
        token: rotated["token"].as_str().unwrap_or_default().to_owned(),
        user_id: hook.user_id.clone(),
    };
    let old = g.execute(&hook, "", &json!({ "content": "old" })).await;
    assert_eq!(old.body, unknown_webhook(), "{}", old.text);
    let fresh = g.execute(&new, "", &json!({ "content": "new" })).await;
    assert_eq!(fresh.status, StatusCode::NO_CONTENT, "{}", fresh.text);
}

#[tokio::test]
async fn embeds_render_to_escaped_html_with_a_plain_fallback() {
    let g = Guild::new().await;
    let hook = g.hook("Embedder").await;
    let a = g
        .execute(
            &hook,
            "?wait=true",
            &json!({
                "content": "see <b>this</b>",
                "embeds": [{
                    "title": "<script>alert(1)</script>",
                    "url": "https://example.org/x?a=1&b=2",
                    "description": "line one\nline \"two\"",
                    "color": 0x00ff00,
                    "fields": [{ "name": "Status", "value": "<img src=x onerror=alert(1)>" }],
                    "footer": { "text": "footer text" },
                    "author": { "name": "Author & Co" },
                }],
            }),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["embeds"][0]["title"], "<script>alert(1)</script>");
    let event = g
        .event(&g.general, a.body["id"].as_str().unwrap_or_default())
        .await;
    let c = &event["content"];
    assert_eq!(c["format"], "org.matrix.custom.html");
    let html = c["formatted_body"].as_str().unwrap_or_default();
    assert!(
        !html.contains("<script>") && !html.contains("<img"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("see &lt;b&gt;this&lt;/b&gt;"), "{html}");
    assert!(
        html.contains("href=\"https://example.org/x?a=1&amp;b=2\""),
        "{html}"
    );
    assert!(html.contains("data-mx-border-color=\"#00ff00\""), "{html}");
    assert!(html.contains("Author &amp; Co"), "{html}");
    assert!(html.contains("line one<br>line &quot;two&quot;"), "{html}");
    let body = c["body"].as_str().unwrap_or_default();
    assert!(body.starts_with("see <b>this</b>"), "{body}");
    assert!(
        body.contains("> <script>alert(1)</script> (https://example.org/x?a=1&b=2)"),
        "{body}"
    );
    assert!(
        body.contains("> Status: <img src=x onerror=alert(1)>"),
        "{body}"
    );
    assert!(body.contains("> footer text"), "{body}");
}

#[tokio::test]
async fn allowed_mentions_are_respected() {
    let g = Guild::new().await;
    let hook = g.hook("Pinger").await;
    let content = format!("<@{}> <@{}> @everyone", g.member.user_id, g.owner.user_id);
    let only_member = g
        .execute(
            &hook,
            "?wait=true",
            &json!({ "content": content, "allowed_mentions": { "users": [g.member.user_id] } }),
        )
        .await;
    assert_eq!(only_member.status, StatusCode::OK, "{}", only_member.text);
    let event = g
        .event(
            &g.general,
            only_member.body["id"].as_str().unwrap_or_default(),
        )
        .await;
    assert_eq!(
        event["content"]["m.mentions"],
        json!({ "user_ids": [g.member.user_id] }),
        "{event}"
    );
    assert_eq!(
        event["content"]["body"],
        format!("{} {} @everyone", g.member.user_id, g.owner.user_id)
    );
    let everyone = g
        .execute(
            &hook,
            "?wait=true",
            &json!({ "content": content, "allowed_mentions": { "parse": ["everyone"] } }),
        )
        .await;
    let event = g
        .event(&g.general, everyone.body["id"].as_str().unwrap_or_default())
        .await;
    assert_eq!(
        event["content"]["m.mentions"],
        json!({ "user_ids": [], "room": true }),
        "{event}"
    );
    let none = g
        .execute(
            &hook,
            "?wait=true",
            &json!({ "content": content, "allowed_mentions": { "parse": [] } }),
        )
        .await;
    let event = g
        .event(&g.general, none.body["id"].as_str().unwrap_or_default())
        .await;
    assert_eq!(
        event["content"]["m.mentions"],
        json!({ "user_ids": [] }),
        "{event}"
    );
}

#[tokio::test]
async fn bad_bodies_get_discord_errors() {
    let g = Guild::new().await;
    let hook = g.hook("Strict").await;
    let empty = g.execute(&hook, "", &json!({ "content": "   " })).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        empty.body,
        json!({ "code": 50006, "message": "Cannot send an empty message" })
    );
    let long = g
        .execute(&hook, "", &json!({ "content": "x".repeat(2001) }))
        .await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert_eq!(long.body["code"], 50035, "{}", long.text);
    assert_eq!(long.body["message"], "Invalid Form Body");
    assert_eq!(
        long.body["errors"]["content"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let not_json = g
        .post_raw(
            &hook.id,
            &hook.token,
            "",
            b"{\"content\":".to_vec(),
            "application/json",
            &[],
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        not_json.body,
        json!({ "code": 50109, "message": "The request body contains invalid JSON." })
    );
    // Wait for the bucket to refill before the last two.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let embeds: Vec<Value> = (0..11)
        .map(|i| json!({ "title": format!("e{i}") }))
        .collect();
    let many = g.execute(&hook, "", &json!({ "embeds": embeds })).await;
    assert_eq!(many.status, StatusCode::BAD_REQUEST);
    assert_eq!(many.body["code"], 50035, "{}", many.text);
    assert!(many.body["errors"]["embeds"].is_object(), "{}", many.text);
    let wrong_type = g.execute(&hook, "", &json!({ "content": 12 })).await;
    assert_eq!(wrong_type.body["code"], 50035, "{}", wrong_type.text);
}

fn multipart(boundary: &str, payload: &Value, files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\nContent-Type: application/json\r\n\r\n{payload}\r\n"
        )
        .as_bytes(),
    );
    for (i, (name, kind, bytes)) in files.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files[{i}]\"; filename=\"{name}\"\r\nContent-Type: {kind}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn multipart_files_become_m_file_events_whose_mxc_downloads_the_same_bytes() {
    let g = Guild::new().await;
    let hook = g.hook("Uploader").await;
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let boundary = "paracordBoundary7MA4YWxkTrZu0gW";
    let body = multipart(
        boundary,
        &json!({ "content": "the log" }),
        &[("build.log", "application/octet-stream", &bytes)],
    );
    let a = g
        .post_raw(
            &hook.id,
            &hook.token,
            "?wait=true",
            body,
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["content"], "the log");
    let attachment = &a.body["attachments"][0];
    assert_eq!(attachment["filename"], "build.log", "{}", a.text);
    let file_event = g
        .event(&g.general, attachment["id"].as_str().unwrap_or_default())
        .await;
    let c = &file_event["content"];
    assert_eq!(c["msgtype"], "m.file", "{file_event}");
    assert_eq!(c["body"], "build.log");
    assert_eq!(file_event["sender"], hook.user_id.as_str());
    let mxc = c["url"].as_str().unwrap_or_default();
    let (server, media) = mxc
        .strip_prefix("mxc://")
        .and_then(|r| r.split_once('/'))
        .unwrap_or_else(|| panic!("expected an mxc URI, got {file_event}"));
    let download = g
        .member
        .raw(
            Method::GET,
            &format!("/_matrix/client/v1/media/download/{server}/{media}"),
            None,
        )
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.bytes, bytes, "the same bytes come back");
    // An image is an m.image.
    let png: &[u8] = b"\x89PNG\r\n\x1a\nnot really";
    let body = multipart(boundary, &json!({}), &[("pic.png", "image/png", png)]);
    let b = g
        .post_raw(
            &hook.id,
            &hook.token,
            "?wait=true",
            body,
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
        )
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    let event = g
        .event(
            &g.general,
            b.body["attachments"][0]["id"].as_str().unwrap_or_default(),
        )
        .await;
    assert_eq!(event["content"]["msgtype"], "m.image", "{event}");
}

#[tokio::test]
async fn thread_id_posts_into_a_matrix_thread() {
    let g = Guild::new().await;
    let hook = g.hook("Threader").await;
    let root = g.member.send_text(&g.general, "thread root").await;
    let a = g
        .execute(
            &hook,
            &format!("?wait=true&thread_id={}", enc(&root)),
            &json!({ "content": "in the thread" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let event = g
        .event(&g.general, a.body["id"].as_str().unwrap_or_default())
        .await;
    let rel = &event["content"]["m.relates_to"];
    assert_eq!(rel["rel_type"], "m.thread", "{event}");
    assert_eq!(rel["event_id"], root.as_str());
    let unknown = g
        .execute(
            &hook,
            "?thread_id=%24nothing",
            &json!({ "content": "nowhere" }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["code"], 10003, "{}", unknown.text);
}

#[tokio::test]
async fn a_slack_body_posts_its_text() {
    let g = Guild::new().await;
    let hook = g.hook("Slacky").await;
    let body = json!({
        "text": "deploy <done>",
        "username": "Deployer",
        "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": "block text" } }],
        "attachments": [{ "title": "Build", "text": "all green", "color": "good" }],
    });
    let a = g
        .post_raw(
            &hook.id,
            &hook.token,
            "/slack",
            body.to_string().into_bytes(),
            "application/json",
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.text, "ok");
    let messages = g.member.all_messages(&g.general).await;
    let event = messages
        .iter()
        .find(|e| e["sender"] == hook.user_id.as_str() && e["type"] == "m.room.message")
        .unwrap_or_else(|| panic!("expected the Slack message"));
    let c = &event["content"];
    let body = c["body"].as_str().unwrap_or_default();
    assert!(body.starts_with("deploy <done>\nblock text"), "{event}");
    assert!(body.contains("> Build"), "{event}");
    assert!(
        c["formatted_body"]
            .as_str()
            .unwrap_or_default()
            .contains("deploy &lt;done&gt;"),
        "{event}"
    );
    assert_eq!(
        c["com.beeper.per_message_profile"]["displayname"],
        "Deployer"
    );
    let empty = g
        .post_raw(
            &hook.id,
            &hook.token,
            "/slack",
            b"{}".to_vec(),
            "application/json",
            &[],
        )
        .await;
    assert_eq!(empty.body["code"], 50006, "{}", empty.text);
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|e| panic!("expected an HMAC key: {e}"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn github_deliveries_are_checked_against_the_secret() {
    let g = Guild::new().await;
    let hook = g.hook("Hub").await;
    let push = json!({
        "ref": "refs/heads/main",
        "compare": "https://github.com/o/r/compare/a...b",
        "repository": { "full_name": "o/r" },
        "sender": { "login": "octocat" },
        "commits": [{ "id": "0123456789abcdef", "message": "Fix <the> bug\n\nlong", "author": { "name": "Mona" } }],
    })
    .to_string()
    .into_bytes();
    // Without a secret, any delivery posts.
    let open = g
        .post_raw(
            &hook.id,
            &hook.token,
            "/github",
            push.clone(),
            "application/json",
            &[("X-GitHub-Event", "push".into())],
        )
        .await;
    assert_eq!(open.status, StatusCode::NO_CONTENT, "{}", open.text);
    let patched = expect_ok(
        g.owner
            .patch(
                &format!("/_paracord/v1/webhooks/{}", hook.id),
                &json!({ "secret": "s3cret" }),
            )
            .await,
        "set the secret",
    );
    assert_eq!(patched["has_secret"], true);
    assert!(patched.get("secret").is_none(), "{patched}");
    let unsigned = g
        .post_raw(
            &hook.id,
            &hook.token,
            "/github",
            push.clone(),
            "application/json",
            &[("X-GitHub-Event", "push".into())],
        )
        .await;
    assert_eq!(
        unsigned.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        unsigned.text
    );
    let wrong = g
        .post_raw(
            &hook.id,
            &hook.token,
            "/github",
            push.clone(),
            "application/json",
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", signature("other", &push)),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    let signed = g
        .post_raw(
            &hook.id,
            &hook.token,
            "/github",
            push.clone(),
            "application/json",
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", signature("s3cret", &push)),
            ],
        )
        .await;
    assert_eq!(signed.status, StatusCode::NO_CONTENT, "{}", signed.text);
    let messages = g.member.all_messages(&g.general).await;
    let pushes: Vec<&Value> = messages
        .iter()
        .filter(|e| e["sender"] == hook.user_id.as_str() && e["type"] == "m.room.message")
        .collect();
    assert_eq!(
        pushes.len(),
        2,
        "the open and the signed delivery: {pushes:?}"
    );
    let body = pushes[1]["content"]["body"].as_str().unwrap_or_default();
    assert!(body.contains("[o/r:main] 1 new commit"), "{body}");
    assert!(body.contains("0123456 Fix <the> bug - Mona"), "{body}");
    let html = pushes[1]["content"]["formatted_body"]
        .as_str()
        .unwrap_or_default();
    assert!(html.contains("Fix &lt;the&gt; bug"), "{html}");
}

#[tokio::test]
async fn executions_are_rate_limited_per_webhook() {
    let g = Guild::new().await;
    let hook = g.hook("Spammer").await;
    // Twelve at once: the bucket holds five (and refills at 2.5 a second), so however slow
    // the machine, some are refused.
    let bodies: Vec<Value> = (0..12)
        .map(|i| json!({ "content": format!("message {i}") }))
        .collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| g.execute(&hook, "", b))).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::NO_CONTENT)
        .count();
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + limited.len(), 12, "only 204s and 429s");
    assert!(ok >= 5, "the first five pass: {ok}");
    let a = limited
        .first()
        .unwrap_or_else(|| panic!("expected a 429 among 12 executions at once"));
    let retry = a.body["retry_after"].as_f64().unwrap_or(0.0);
    assert!(retry > 0.0 && retry <= 2.0, "{}", a.text);
    assert_eq!(a.body["message"], "You are being rate limited.");
    assert!(a.headers.get("retry-after").is_some(), "{:?}", a.headers);
    // Another webhook has its own bucket.
    let other = g.hook("Quiet").await;
    let b = g.execute(&other, "", &json!({ "content": "fine" })).await;
    assert_eq!(b.status, StatusCode::NO_CONTENT, "{}", b.text);
}

#[tokio::test]
async fn deleting_the_webhook_or_its_channel_stops_it() {
    let g = Guild::new().await;
    let hook = g.hook("Doomed").await;
    expect_ok(
        g.owner
            .delete(&format!("/_paracord/v1/webhooks/{}", hook.id), &json!({}))
            .await,
        "delete",
    );
    let a = g
        .execute(&hook, "", &json!({ "content": "still here?" }))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body, unknown_webhook());
    let member = g
        .owner
        .state_content(&g.general, "m.room.member", &hook.user_id)
        .await;
    assert_eq!(
        member["membership"], "leave",
        "the webhook user left: {member}"
    );

    let channel = expect_ok(
        g.owner
            .post(
                &format!("/_paracord/v1/guilds/{}/channels", enc(&g.id)),
                &json!({ "name": "temp", "kind": "text" }),
            )
            .await,
        "create channel",
    );
    let channel = channel["id"].as_str().unwrap_or_default().to_owned();
    let in_channel = g.hook_in(&channel, "Temp").await;
    let ok = g
        .execute(&in_channel, "", &json!({ "content": "hi" }))
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text);
    expect_ok(
        g.owner
            .delete(
                &format!("/_paracord/v1/channels/{}", enc(&channel)),
                &json!({}),
            )
            .await,
        "delete channel",
    );
    let gone = g
        .execute(&in_channel, "", &json!({ "content": "hi" }))
        .await;
    assert_eq!(gone.body, unknown_webhook(), "{}", gone.text);
}

#[tokio::test]
async fn webhook_user_ids_cannot_be_registered() {
    let server = TestServer::start().await;
    let (status, body) = server
        .register_raw(json!({
            "username": "_webhook_123456789012345678",
            "password": "a long password 123",
        }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_EXCLUSIVE", "{body}");
}

#[tokio::test]
async fn the_discord_webhook_package_posts_an_embed_and_a_file() {
    let python = paracord_complement::pyclients::ensure_discord_webhook();
    let g = Guild::new().await;
    let hook = g.hook("Python").await;
    let url = format!(
        "{}/api/webhooks/{}/{}",
        g.server.base_url(),
        hook.id,
        hook.token
    );
    let script = r#"
import sys
from discord_webhook import DiscordWebhook, DiscordEmbed
webhook = DiscordWebhook(url=sys.argv[1], content="from python", username="Py Bot")
embed = DiscordEmbed(title="Embedded <title>", description="described", color="03b2f8")
embed.add_embed_field(name="Field", value="value")
webhook.add_embed(embed)
webhook.add_file(file=b"python file bytes", filename="py.txt")
response = webhook.execute()
print(response.status_code)
webhook.remove_embeds()
webhook.content = "edited from python"
print(webhook.edit().status_code)
second = DiscordWebhook(url=sys.argv[1], content="to be deleted")
second.execute()
print(second.delete().status_code)
"#;
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&url)
        .output()
        .await
        .unwrap_or_else(|e| panic!("expected to run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the script failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        statuses,
        ["200", "200", "204"],
        "execute, edit, delete: {stdout}"
    );
    let messages = g.member.all_messages(&g.general).await;
    let posted: Vec<&Value> = messages
        .iter()
        .filter(|e| e["sender"] == hook.user_id.as_str() && e["type"] == "m.room.message")
        .collect();
    let text = posted
        .iter()
        .find(|e| e["content"]["msgtype"] == "m.text")
        .unwrap_or_else(|| panic!("expected the text message: {posted:?}"));
    assert!(
        text["content"]["body"]
            .as_str()
            .is_some_and(|b| b.starts_with("from python") && b.contains("Embedded <title>")),
        "{text}"
    );
    assert!(
        text["content"]["formatted_body"]
            .as_str()
            .is_some_and(|h| h.contains("Embedded &lt;title&gt;")),
        "{text}"
    );
    assert_eq!(
        text["content"]["com.beeper.per_message_profile"]["displayname"],
        "Py Bot"
    );
    let file = posted
        .iter()
        .find(|e| e["content"]["msgtype"] == "m.file")
        .unwrap_or_else(|| panic!("expected the file message: {posted:?}"));
    assert_eq!(file["content"]["body"], "py.txt", "{file}");
    let mxc = file["content"]["url"].as_str().unwrap_or_default();
    let path = mxc.strip_prefix("mxc://").unwrap_or_default();
    let download = g
        .member
        .raw(
            Method::GET,
            &format!("/_matrix/client/v1/media/download/{path}"),
            None,
        )
        .await;
    assert_eq!(download.bytes, b"python file bytes");
    let text_id = text["event_id"].as_str().unwrap_or_default();
    let edit = posted
        .iter()
        .find(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .unwrap_or_else(|| panic!("expected the edit: {posted:?}"));
    assert_eq!(edit["content"]["m.relates_to"]["event_id"], text_id);
    assert_eq!(
        edit["content"]["m.new_content"]["body"],
        "edited from python"
    );
    assert!(
        !posted
            .iter()
            .any(|e| e["content"]["body"] == "to be deleted"),
        "the deleted message is redacted: {posted:?}"
    );
}

#[tokio::test]
async fn the_token_alone_reads_changes_and_deletes_the_webhook_and_its_messages() {
    let g = Guild::new().await;
    let hook = g.hook("Tokened").await;
    let url = format!(
        "{}/api/webhooks/{}/{}",
        g.server.base_url(),
        hook.id,
        hook.token
    );
    let got = g.http.get(&url).send().await.map(|r| r.status());
    assert_eq!(got.ok(), Some(StatusCode::OK));
    let wrong = g
        .http
        .get(format!(
            "{}/api/webhooks/{}/{}",
            g.server.base_url(),
            hook.id,
            "C".repeat(68)
        ))
        .send()
        .await;
    let wrong = match wrong {
        Ok(r) => (r.status(), r.json::<Value>().await.unwrap_or_default()),
        Err(e) => panic!("expected an answer: {e}"),
    };
    assert_eq!(wrong, (StatusCode::NOT_FOUND, unknown_webhook()));

    // Edit and delete a message, as discord clients do with the id of a `wait` answer.
    let sent = g
        .execute(&hook, "?wait=true", &json!({ "content": "first draft" }))
        .await;
    let id = sent.body["id"].as_str().unwrap_or_default().to_owned();
    let edited = g
        .http
        .patch(format!("{url}/messages/{id}"))
        .json(&json!({ "content": "final <text>" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected an answer: {e}"));
    assert_eq!(edited.status(), StatusCode::OK);
    let edited: Value = edited.json().await.unwrap_or_default();
    assert_eq!(edited["id"], id.as_str());
    assert_eq!(edited["content"], "final <text>");
    let messages = g.member.all_messages(&g.general).await;
    let edit = messages
        .iter()
        .find(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .unwrap_or_else(|| panic!("expected the m.replace event"));
    assert_eq!(edit["content"]["m.relates_to"]["event_id"], id.as_str());
    assert_eq!(edit["content"]["m.new_content"]["body"], "final <text>");
    assert_eq!(edit["content"]["body"], "* final <text>");
    // Someone else's message is no message of the webhook.
    let theirs = g.member.send_text(&g.general, "mine").await;
    let refused = g
        .http
        .delete(format!("{url}/messages/{}", enc(&theirs)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected an answer: {e}"));
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let refused: Value = refused.json().await.unwrap_or_default();
    assert_eq!(refused["code"], 10008);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let deleted = g
        .http
        .delete(format!("{url}/messages/{id}"))
        .send()
        .await
        .map(|r| r.status());
    assert_eq!(deleted.ok(), Some(StatusCode::NO_CONTENT));
    let event = g.event(&g.general, &id).await;
    assert_eq!(event["content"], json!({}), "redacted: {event}");

    // Rename, refuse the secret, delete, all with the token.
    let renamed = g
        .http
        .patch(&url)
        .json(&json!({ "name": "Renamed" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected an answer: {e}"));
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(
        renamed.json::<Value>().await.unwrap_or_default()["name"],
        "Renamed"
    );
    let secret = g
        .http
        .patch(&url)
        .json(&json!({ "secret": "s" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected an answer: {e}"));
    assert_eq!(secret.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        secret.json::<Value>().await.unwrap_or_default()["code"],
        50035
    );
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let gone = g.http.delete(&url).send().await.map(|r| r.status());
    assert_eq!(gone.ok(), Some(StatusCode::NO_CONTENT));
    let after = g.execute(&hook, "", &json!({ "content": "after" })).await;
    assert_eq!(after.body, unknown_webhook());
}

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
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_guild_hosted_elsewhere_has_its_webhooks_on_its_host() {
    use paracord_complement::federation::federating_server;
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let guild = expect_ok(
        alice
            .post("/_paracord/v1/guilds", &json!({ "name": "Far" }))
            .await,
        "create guild",
    );
    let guild_id = guild["id"].as_str().unwrap_or_default().to_owned();
    let general = guild["system_channel"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let invite = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/channels/{}/invites", enc(&general)),
                &json!({}),
            )
            .await,
        "create invite",
    );
    let code = invite["code"].as_str().unwrap_or_default();
    expect_ok(
        bob.post(
            &format!("/_paracord/v1/invites/{code}?server={}", enc(&a_name)),
            &json!({}),
        )
        .await,
        "accept through B",
    );
    let role = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/roles", enc(&guild_id)),
                &json!({ "name": "hooks", "position": 1,
                         "permissions": MANAGE_WEBHOOKS.to_string() }),
            )
            .await,
        "create role",
    );
    let (status, body) = alice
        .put(
            &format!(
                "/_paracord/v1/guilds/{}/members/{}/roles/{}",
                enc(&guild_id),
                enc(&bob.user_id),
                enc(role["id"].as_str().unwrap_or_default())
            ),
            &json!({}),
        )
        .await;
    assert!(
        status.is_success(),
        "expected the role given: {status} {body}"
    );

    // Bob makes one through his server: the guild host makes it, its URL is the host's.
    let made = eventually("the webhook made through B", || async {
        let (status, body) = bob
            .post(
                &format!("/_paracord/v1/channels/{}/webhooks", enc(&general)),
                &json!({ "name": "Remote" }),
            )
            .await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    let id = made["id"].as_str().unwrap_or_default().to_owned();
    let token = made["token"].as_str().unwrap_or_default().to_owned();
    let user_id = made["user"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(user_id.ends_with(&format!(":{a_name}")), "{made}");
    let posted = reqwest::Client::new()
        .post(format!(
            "{}/api/webhooks/{id}/{token}?wait=true",
            a.base_url()
        ))
        .json(&json!({ "content": "over federation" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected an answer from A: {e}"));
    assert_eq!(posted.status(), StatusCode::OK);
    let message: Value = posted.json().await.unwrap_or_default();
    let event_id = message["id"].as_str().unwrap_or_default().to_owned();

    // Bob's server takes the webhook user's message into the timeline (not soft-failed).
    eventually("the message in B's timeline", || async {
        let messages = bob.all_messages(&general).await;
        messages
            .iter()
            .any(|e| e["event_id"] == event_id.as_str() && e["sender"] == user_id.as_str())
            .then_some(())
    })
    .await;

    // Reading and deleting it by id through B are relayed to the host.
    let read = expect_ok(
        bob.get(&format!("/_paracord/v1/webhooks/{id}")).await,
        "read through B",
    );
    assert_eq!(read["name"], "Remote");
    expect_ok(
        bob.delete(&format!("/_paracord/v1/webhooks/{id}"), &json!({}))
            .await,
        "delete through B",
    );
    let gone = reqwest::Client::new()
        .post(format!("{}/api/webhooks/{id}/{token}", a.base_url()))
        .json(&json!({ "content": "after" }))
        .send()
        .await
        .map(|r| r.status());
    assert_eq!(gone.ok(), Some(StatusCode::NOT_FOUND));
}

/// A 1×1 PNG (what Discord tools pass as `avatar_url` is an http(s) image).
const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// An http(s) `avatar_url` (what Discord tools send) is fetched once, stored in the media
/// repository and given to Matrix clients as the per-message profile's `mxc://` avatar; the
/// URL as given stays in `chat.paracord.webhook`. A URL that is not an image posts the message
/// without an avatar.
#[tokio::test]
async fn an_http_avatar_url_is_imported_once_as_the_messages_avatar() {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let (kind, body): (&str, &[u8]) = if request.starts_with("GET /avatar.png") {
                    counted.fetch_add(1, Ordering::SeqCst);
                    ("image/png", TINY_PNG)
                } else {
                    ("text/html", b"<html>not an image</html>")
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
            });
        }
    });
    let g = Guild::new().await;
    let hook = g.hook("Avatars").await;
    let avatar = format!("http://127.0.0.1:{port}/avatar.png");
    let mut mxcs = Vec::new();
    for n in 0..2 {
        let a = g
            .execute(
                &hook,
                "?wait=true",
                &json!({ "content": format!("with an avatar {n}"), "avatar_url": avatar }),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let event = g
            .event(&g.general, a.body["id"].as_str().unwrap_or_default())
            .await;
        let content = &event["content"];
        assert_eq!(
            content["chat.paracord.webhook"]["avatar_url"],
            avatar.as_str(),
            "{event}"
        );
        let mxc = content["com.beeper.per_message_profile"]["avatar_url"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an mxc avatar in {event}"))
            .to_owned();
        mxcs.push(mxc);
    }
    assert_eq!(mxcs[0], mxcs[1], "the same URL is imported once");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once");
    let path = mxcs[0]
        .strip_prefix("mxc://")
        .unwrap_or_default()
        .to_owned();
    let download = g
        .member
        .raw(
            Method::GET,
            &format!("/_matrix/client/v1/media/download/{path}"),
            None,
        )
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.bytes, TINY_PNG);

    // Not an image: posted without an avatar.
    let page = format!("http://127.0.0.1:{port}/page.html");
    let a = g
        .execute(
            &hook,
            "?wait=true",
            &json!({ "content": "page avatar", "avatar_url": page }),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let event = g
        .event(&g.general, a.body["id"].as_str().unwrap_or_default())
        .await;
    assert!(
        event["content"]["com.beeper.per_message_profile"]
            .get("avatar_url")
            .is_none(),
        "{event}"
    );
}
