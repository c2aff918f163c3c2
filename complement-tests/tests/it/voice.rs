//! The MatrixRTC focus (spec/voice.md) against a real LiveKit SFU and real participants: a
//! token from Paracord admits a user to their voice channel's call with the grants their
//! permissions give; the SFU follows the room — a kicked member is dropped, a member who loses
//! SPEAK stops publishing; a user of another server joins with an OpenID token that the focus
//! checks over federation. Without LiveKit keys the focus says it is not configured.

use std::time::{Duration, Instant};

use base64::Engine;
use paracord_complement::{
    enc, expect_error, expect_ok,
    federation::{federating_server_with, server_signing_key, x_matrix_with_content},
    livekit::{jwt_claims, LiveKit, LiveKitOptions, Peer},
    random_word, StatusCode, TestServer, User,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(20);
const VIEW_CHANNEL: u64 = 1 << 10;
const CONNECT: u64 = 1 << 20;
const SPEAK: u64 = 1 << 21;
const MUTE_MEMBERS: u64 = 1 << 22;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The sources a token answer's JWT lets its holder publish.
fn sources(answer: &Value) -> Value {
    jwt_claims(&s(&answer["jwt"]))["video"]["canPublishSources"].clone()
}

fn mic(answer: &Value) -> bool {
    sources(answer)
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s == "microphone"))
}

/// The LiveKit keys of `lk` in a server's environment.
fn livekit_env(lk: &LiveKit) -> Vec<(String, String)> {
    vec![
        ("PARACORD_LIVEKIT_URL".into(), lk.url()),
        ("PARACORD_LIVEKIT_API_KEY".into(), lk.api_key().to_owned()),
        (
            "PARACORD_LIVEKIT_API_SECRET".into(),
            lk.api_secret().to_owned(),
        ),
    ]
}

/// A LiveKit SFU and a Paracord using it, with LiveKit's webhook pointed at Paracord.
async fn focus(extra: &[(&str, &str)]) -> (LiveKit, TestServer) {
    let mut lk = LiveKit::start(LiveKitOptions::default()).await;
    let env = livekit_env(&lk);
    let server = TestServer::start_with(|e| {
        for (k, v) in &env {
            TestServer::set_env(e, k, v);
        }
        for (k, v) in extra {
            TestServer::set_env(e, k, v);
        }
    })
    .await;
    lk.restart_with(LiveKitOptions {
        webhook_urls: vec![format!("{}/_paracord/livekit/webhook", server.base_url())],
        ..LiveKitOptions::default()
    })
    .await;
    (lk, server)
}

/// `owner`'s guild with a voice channel and a text one: `(guild, voice, text)`.
async fn guild_with_voice(owner: &User) -> (String, String, String) {
    let guild = expect_ok(
        owner
            .post("/_paracord/v1/guilds", &json!({ "name": "Voice" }))
            .await,
        "create guild",
    );
    let id = s(&guild["id"]);
    let voice = expect_ok(
        owner
            .post(
                &format!("/_paracord/v1/guilds/{}/channels", enc(&id)),
                &json!({ "name": "Lounge", "kind": "voice" }),
            )
            .await,
        "create voice channel",
    );
    (id, s(&voice["id"]), s(&guild["system_channel"]))
}

/// `member` joins the guild (through an invite) and the channel.
async fn join_guild(owner: &User, member: &User, guild: &str, text: &str, channel: &str) {
    let invite = expect_ok(
        owner
            .post(
                &format!("/_paracord/v1/channels/{}/invites", enc(text)),
                &json!({}),
            )
            .await,
        "create invite",
    );
    let code = s(&invite["code"]);
    expect_ok(
        member
            .post(&format!("/_paracord/v1/invites/{code}"), &json!({}))
            .await,
        "accept invite",
    );
    let _ = guild;
    member.join_ok(channel).await;
}

/// MSC4195's hash: unpadded base64 of SHA-256 over the canonical JSON array of `parts`.
fn msc4195_hash(parts: &[&str]) -> String {
    let json = serde_json::to_string(parts).unwrap();
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

/// MSC4195 `get_token` in its current form (`url`, `member_id`, maybe `server_name`), asked
/// of `user`'s own server.
async fn slot_token(
    user: &User,
    server_name: Option<&str>,
    url: &str,
    room: &str,
    member_id: &str,
) -> (StatusCode, Value) {
    let mut body = json!({
        "url": url, "room_id": room, "slot_id": "m.call#ROOM", "member_id": member_id,
    });
    if let Some(name) = server_name {
        body["server_name"] = json!(name);
    }
    user.post("/_matrix/client/v1/rtc/livekit/get_token", &body)
        .await
}

/// MSC4195 `delegate_delayed_leave`.
async fn delegate(user: &User, body: Value) -> (StatusCode, Value) {
    user.post(
        "/_matrix/client/v1/rtc/livekit/delegate_delayed_leave",
        &body,
    )
    .await
}

/// MSC4195 `get_token` with the user's own access token.
async fn get_token(user: &User, room: &str, member_id: &str) -> (StatusCode, Value) {
    user.post(
        "/_matrix/client/v1/rtc/livekit/get_token",
        &json!({
            "room_id": room,
            "slot_id": "m.call#ROOM",
            "member": { "id": member_id, "claimed_device_id": user.device_id },
        }),
    )
    .await
}

/// An OpenID token of `user` from their own server.
async fn openid(user: &User) -> Value {
    expect_ok(
        user.post(
            &format!(
                "/_matrix/client/v3/user/{}/openid/request_token",
                enc(&user.user_id)
            ),
            &json!({}),
        )
        .await,
        "request an OpenID token",
    )
}

/// Element Call's legacy exchange at the focus service URL.
async fn sfu_get(server: &TestServer, user: &User, room: &str) -> (StatusCode, Value) {
    let token = openid(user).await;
    server
        .client()
        .post(
            "/_paracord/livekit/sfu/get",
            &json!({ "room": room, "openid_token": token, "device_id": user.device_id }),
        )
        .await
}

/// The call membership Element Call writes (state key `_@user:server_DEVICE_m.call`).
fn call_member(user: &User, focus: &str) -> (String, Value) {
    (
        format!("_{}_{}_m.call", user.user_id, user.device_id),
        json!({
            "application": "m.call", "call_id": "", "scope": "m.room",
            "device_id": user.device_id, "expires": 14_400_000,
            "focus_active": { "type": "livekit", "focus_selection": "oldest_membership" },
            "foci_preferred": [{ "type": "livekit", "livekit_service_url": focus }],
        }),
    )
}

async fn put_call_member(
    user: &User,
    room: &str,
    key: &str,
    content: &Value,
) -> (StatusCode, Value) {
    user.put(
        &format!(
            "/rooms/{}/state/org.matrix.msc3401.call.member/{}",
            enc(room),
            enc(key)
        ),
        content,
    )
    .await
}

async fn overwrite(owner: &User, channel: &str, target: &str, allow: u64, deny: u64) {
    expect_ok(
        owner
            .put(
                &format!(
                    "/_paracord/v1/channels/{}/permissions/{}",
                    enc(channel),
                    enc(target)
                ),
                &json!({ "allow": allow.to_string(), "deny": deny.to_string() }),
            )
            .await,
        &format!("overwrite {target}"),
    );
}

/// Waits until the focus lists `user` as connected to the channel's call (LiveKit's webhook
/// arrived) or not.
async fn wait_in_call(asker: &User, channel: &str, user: &str, present: bool) -> Value {
    let start = Instant::now();
    loop {
        let list = expect_ok(
            asker
                .get(&format!("/_paracord/v1/channels/{}/voice", enc(channel)))
                .await,
            "who is in the call",
        );
        let found = list["participants"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["user_id"] == user));
        if found == present {
            return list;
        }
        assert!(
            start.elapsed() < WAIT,
            "expected {user} {} the call: {list}",
            if present { "in" } else { "out of" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_livekit_keys_the_focus_says_it_is_not_configured() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let well_known = expect_ok(
        server.client().get("/.well-known/matrix/client").await,
        "wk",
    );
    assert!(
        well_known.get("org.matrix.msc4143.rtc_foci").is_none(),
        "{well_known}"
    );
    assert!(
        well_known["m.homeserver"]["base_url"].is_string(),
        "{well_known}"
    );
    let transports = expect_ok(alice.get("/_matrix/client/v1/rtc/transports").await, "t");
    assert_eq!(
        transports,
        json!({ "transports": [], "rtc_transports": [] })
    );
    let unauthenticated = server
        .client()
        .get("/_matrix/client/v1/rtc/transports")
        .await;
    expect_error(
        &unauthenticated,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "no token",
    );

    let token = get_token(&alice, &room, "m1").await;
    expect_error(&token, StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "get_token");
    let slot = slot_token(&alice, None, "wss://sfu.example", &room, "m1").await;
    expect_error(
        &slot,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "get_token, MSC4195 body",
    );
    // A voice channel says calls cannot happen here.
    let (_, voice, _) = guild_with_voice(&alice).await;
    let channel = expect_ok(
        alice
            .get(&format!("/_paracord/v1/channels/{}", enc(&voice)))
            .await,
        "the voice channel",
    );
    assert_eq!(channel["voice"], json!({ "available": false }), "{channel}");
    let versions = expect_ok(server.client().get("/_matrix/client/versions").await, "v");
    assert_eq!(
        versions["unstable_features"]["org.matrix.msc4143"], false,
        "{versions}"
    );
    assert!(s(&token.1["error"]).contains("not configured"), "{token:?}");
    let legacy = sfu_get(&server, &alice, &room).await;
    expect_error(&legacy, StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "sfu/get");
    // Messaging is untouched.
    alice.send_text(&room, "still here").await;
}

#[tokio::test]
async fn a_voice_channel_call_carries_audio_to_who_may_connect_and_refuses_the_rest() {
    let (lk, server) = focus(&[]).await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let (guild, voice, text) = guild_with_voice(&alice).await;
    join_guild(&alice, &bob, &guild, &text, &voice).await;
    join_guild(&alice, &carol, &guild, &text, &voice).await;

    // Discovery: .well-known names the focus; the transports list LiveKit; voice channels
    // say calls can happen.
    let channel = expect_ok(
        alice
            .get(&format!("/_paracord/v1/channels/{}", enc(&voice)))
            .await,
        "the voice channel",
    );
    assert_eq!(channel["voice"], json!({ "available": true }), "{channel}");
    let text_channel = expect_ok(
        alice
            .get(&format!("/_paracord/v1/channels/{}", enc(&text)))
            .await,
        "the text channel",
    );
    assert!(text_channel.get("voice").is_none(), "{text_channel}");
    let versions = expect_ok(server.client().get("/_matrix/client/versions").await, "v");
    assert_eq!(
        versions["unstable_features"]["org.matrix.msc4143"], true,
        "{versions}"
    );
    let well_known = expect_ok(
        server.client().get("/.well-known/matrix/client").await,
        "wk",
    );
    let service_url = format!("{}/_paracord/livekit", server.base_url());
    assert_eq!(
        well_known["org.matrix.msc4143.rtc_foci"],
        json!([{ "type": "livekit", "livekit_service_url": service_url }])
    );
    for path in [
        "/_matrix/client/v1/rtc/transports",
        "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
    ] {
        let t = expect_ok(alice.get(path).await, path);
        assert_eq!(t["rtc_transports"][0]["type"], "livekit", "{t}");
    }

    // Alice joins the call (her membership, then a token for her device).
    let (key, content) = call_member(&alice, &service_url);
    expect_ok(
        put_call_member(&alice, &voice, &key, &content).await,
        "alice joins",
    );
    let answer = expect_ok(get_token(&alice, &voice, "alice-1").await, "alice's token");
    assert_eq!(answer["url"], lk.url().as_str());
    let claims = jwt_claims(&s(&answer["jwt"]));
    // MSC4195's names: the alias of (room, slot), the identity of (user, device, member).
    let alias = claims["video"]["room"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(alias.len(), 43, "{claims}");
    assert_ne!(alias, voice);
    assert_eq!(claims["video"]["canPublish"], true, "{claims}");
    assert_eq!(
        claims["video"]["canPublishSources"],
        json!(["microphone", "camera", "screen_share", "screen_share_audio"]),
        "the owner has every permission: {claims}"
    );
    let alice_identity = s(&claims["sub"]);
    assert!(
        !alice_identity.contains(&alice.user_id),
        "pseudonymous: {claims}"
    );

    // Bob, through the focus service URL as Element Call does it.
    let legacy = expect_ok(sfu_get(&server, &bob, &voice).await, "bob's token");
    let bob_claims = jwt_claims(&s(&legacy["jwt"]));
    assert_eq!(
        bob_claims["video"]["room"],
        alias.as_str(),
        "same call: {bob_claims}"
    );
    assert_eq!(
        bob_claims["sub"],
        format!("{}:{}", bob.user_id, bob.device_id)
    );

    let mut a = Peer::connect(&lk.url(), &s(&answer["jwt"])).await.unwrap();
    let mut b = Peer::connect(&lk.url(), &s(&legacy["jwt"])).await.unwrap();
    a.publish_audio().await.unwrap();
    let heard = b.wait_audio(&alice_identity, 50, WAIT).await.unwrap();
    assert!(heard.frames >= 50 && !heard.silent, "{heard:?}");
    wait_in_call(&carol, &voice, &alice.user_id, true).await;

    // Carol loses CONNECT: no token, and Paracord refuses her call membership.
    overwrite(
        &alice,
        &voice,
        &format!("user:{}", carol.user_id),
        0,
        CONNECT,
    )
    .await;
    let refused = get_token(&carol, &voice, "carol-1").await;
    expect_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN", "no CONNECT");
    assert!(s(&refused.1["error"]).contains("CONNECT"), "{refused:?}");
    let (key, content) = call_member(&carol, &service_url);
    let refused = put_call_member(&carol, &voice, &key, &content).await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "carol's membership",
    );
    // Leaving (an empty membership) stays allowed.
    expect_ok(
        put_call_member(&carol, &voice, &key, &json!({})).await,
        "carol leaves",
    );
    // Nobody writes someone else's membership.
    let (alices_key, _) = call_member(&alice, &service_url);
    let forged = put_call_member(&bob, &voice, &alices_key, &json!({})).await;
    expect_error(
        &forged,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob writes alice's key",
    );

    // Text channels and the space have no calls; strangers and bad input get clear errors.
    let text_call = get_token(&alice, &text, "alice-2").await;
    expect_error(
        &text_call,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "text channel",
    );
    assert!(s(&text_call.1["error"]).contains("voice"), "{text_call:?}");
    let stranger = server.register_random().await;
    let outsider = get_token(&stranger, &voice, "s-1").await;
    expect_error(
        &outsider,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        "not a member",
    );
    let unknown = get_token(&alice, "!nope:nowhere", "a-3").await;
    expect_error(
        &unknown,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        "unknown room",
    );
    assert_eq!(outsider.1["error"], unknown.1["error"], "no word on which");
    let other_device = alice
        .post(
            "/_matrix/client/v1/rtc/livekit/get_token",
            &json!({ "room_id": voice, "slot_id": "m.call#ROOM",
                     "member": { "id": "x", "claimed_device_id": "SOMEONEELSE" } }),
        )
        .await;
    expect_error(
        &other_device,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "another device",
    );
    let missing = alice
        .post(
            "/_matrix/client/v1/rtc/livekit/get_token",
            &json!({ "room_id": voice }),
        )
        .await;
    expect_error(
        &missing,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "no slot or member",
    );
    let forged_openid = server
        .client()
        .post(
            "/_paracord/livekit/sfu/get",
            &json!({ "room": voice, "device_id": "D",
                     "openid_token": { "access_token": "forged", "matrix_server_name": server.server_name() } }),
        )
        .await;
    expect_error(
        &forged_openid,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        "forged OpenID",
    );
    let bad_server = server
        .client()
        .post(
            "/_paracord/livekit/sfu/get",
            &json!({ "room": voice, "device_id": "D",
                     "openid_token": { "access_token": "x", "matrix_server_name": "not a name!" } }),
        )
        .await;
    expect_error(
        &bad_server,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "bad server name",
    );
    // A webhook not signed with the key changes nothing.
    let forged_hook = reqwest::Client::new()
        .post(format!("{}/_paracord/livekit/webhook", server.base_url()))
        .header("authorization", "not-a-jwt")
        .body(r#"{"event":"participant_left","room":{"name":"x"},"participant":{"identity":"y"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged_hook.status().as_u16(), 403);
    wait_in_call(&carol, &voice, &alice.user_id, true).await;
}

#[tokio::test]
async fn the_sfu_follows_the_guild_kicks_drop_losing_speak_stops_publishing_mutes_hold() {
    let (lk, server) = focus(&[]).await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let mallory = server.register_random().await;
    let (guild, voice, text) = guild_with_voice(&alice).await;
    join_guild(&alice, &bob, &guild, &text, &voice).await;
    join_guild(&alice, &mallory, &guild, &text, &voice).await;

    let a_token = expect_ok(get_token(&alice, &voice, "a").await, "alice");
    let b_token = expect_ok(get_token(&bob, &voice, "b").await, "bob");
    let b_identity = s(&jwt_claims(&s(&b_token["jwt"]))["sub"]);
    let alias = s(&jwt_claims(&s(&b_token["jwt"]))["video"]["room"]);
    let mut a = Peer::connect(&lk.url(), &s(&a_token["jwt"])).await.unwrap();
    let mut b = Peer::connect(&lk.url(), &s(&b_token["jwt"])).await.unwrap();
    b.publish_audio().await.unwrap();
    a.wait_audio(&b_identity, 20, WAIT).await.unwrap();
    wait_in_call(&alice, &voice, &bob.user_id, true).await;

    // Bob loses SPEAK: LiveKit takes his microphone away.
    overwrite(&alice, &voice, &format!("user:{}", bob.user_id), 0, SPEAK).await;
    let start = Instant::now();
    loop {
        let tracks = lk.list_participants(&alias).await.unwrap();
        let mic = tracks.get(&b_identity).is_some_and(|t| {
            t.iter()
                .any(|t| t.source.contains("microphone") || t.source == "MICROPHONE")
        });
        if !mic {
            break;
        }
        assert!(start.elapsed() < WAIT, "bob still publishes: {tracks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("SPEAK removed to microphone gone: {:?}", start.elapsed());
    let listed = wait_in_call(&alice, &voice, &bob.user_id, true).await;
    assert!(
        listed["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user_id"] == bob.user_id.as_str() && p["speak"] == false),
        "{listed}"
    );
    // A new token for him carries no microphone either.
    let again = expect_ok(get_token(&bob, &voice, "b2").await, "bob again");
    assert_eq!(
        sources(&again),
        json!(["camera", "screen_share", "screen_share_audio"]),
        "STREAM stays, the microphone goes"
    );
    overwrite(&alice, &voice, &format!("user:{}", bob.user_id), 0, 0).await;

    // Moderation: Mallory has no MUTE_MEMBERS; with it, a server mute holds for new tokens.
    let path = format!(
        "/_paracord/v1/channels/{}/voice/members/{}/mute",
        enc(&voice),
        enc(&bob.user_id)
    );
    let refused = mallory.put(&path, &json!({ "mute": true })).await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "mute without the flag",
    );
    overwrite(
        &alice,
        &voice,
        &format!("user:{}", mallory.user_id),
        MUTE_MEMBERS | VIEW_CHANNEL,
        0,
    )
    .await;
    let muted = expect_ok(mallory.put(&path, &json!({ "mute": true })).await, "mute");
    assert_eq!(muted["mute"], true);
    let muted_token = expect_ok(get_token(&bob, &voice, "b3").await, "muted bob");
    assert!(!mic(&muted_token), "{muted_token}");
    let bad = mallory.put(&path, &json!({ "mute": "yes" })).await;
    expect_error(
        &bad,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "mute not a bool",
    );
    expect_ok(
        mallory.put(&path, &json!({ "mute": false })).await,
        "unmute",
    );
    let unmuted = expect_ok(get_token(&bob, &voice, "b4").await, "unmuted bob");
    assert!(mic(&unmuted), "{unmuted}");

    // Alice moves Bob to another voice channel: he is dropped here and told where to go.
    let other = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/guilds/{}/channels", enc(&guild)),
                &json!({ "name": "Stage", "kind": "voice" }),
            )
            .await,
        "second voice channel",
    );
    let other = s(&other["id"]);
    let move_path = format!(
        "/_paracord/v1/channels/{}/voice/members/{}/move",
        enc(&voice),
        enc(&bob.user_id)
    );
    // Not where Bob may not connect.
    overwrite(&alice, &other, &format!("user:{}", bob.user_id), 0, CONNECT).await;
    let no_connect = alice
        .post(&move_path, &json!({ "channel_id": other }))
        .await;
    expect_error(
        &no_connect,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob may not connect there",
    );
    overwrite(&alice, &other, &format!("user:{}", bob.user_id), 0, 0).await;
    bob.join_ok(&other).await;
    let since = bob.sync_token().await;
    let refused = mallory
        .post(&move_path, &json!({ "channel_id": other }))
        .await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "move without MOVE_MEMBERS",
    );
    let moved = expect_ok(
        alice
            .post(&move_path, &json!({ "channel_id": other }))
            .await,
        "move bob",
    );
    assert_eq!(moved["disconnected"], 1, "{moved}");
    let reason = b.wait_disconnected(WAIT).await.unwrap();
    assert_eq!(
        reason.as_deref(),
        Some("PARTICIPANT_REMOVED"),
        "{}",
        b.log()
    );
    let synced = bob.sync(Some(&since), 10_000, None).await;
    let told = synced["to_device"]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["type"] == "chat.paracord.voice.move"))
        .cloned()
        .unwrap_or_else(|| panic!("no move message: {synced}"));
    assert_eq!(
        told["content"],
        json!({ "from": voice, "to": other }),
        "{told}"
    );
    assert_eq!(told["sender"], alice.user_id.as_str());
    let b_token = expect_ok(
        get_token(&bob, &other, "b6").await,
        "bob in the other channel",
    );
    let mut b = Peer::connect(&lk.url(), &s(&b_token["jwt"])).await.unwrap();
    wait_in_call(&alice, &other, &bob.user_id, true).await;

    // Bob is kicked from the guild: the SFU drops him.
    let kicked_at = Instant::now();
    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/kick", enc(&guild)),
                &json!({ "user_id": bob.user_id, "reason": "bye" }),
            )
            .await,
        "kick bob",
    );
    let reason = b.wait_disconnected(WAIT).await.unwrap();
    eprintln!(
        "kick to SFU removal: {:?} ({reason:?})",
        kicked_at.elapsed()
    );
    assert_eq!(
        reason.as_deref(),
        Some("PARTICIPANT_REMOVED"),
        "{}",
        b.log()
    );
    a.wait_participants(&[], &[&b_identity], WAIT)
        .await
        .unwrap();
    wait_in_call(&alice, &other, &bob.user_id, false).await;
    let after = get_token(&bob, &other, "b5").await;
    expect_error(
        &after,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        "kicked bob",
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_by_the_sfu() {
    let (lk, server) = focus(&[("PARACORD_LIVEKIT_TOKEN_TTL_MS", "1000")]).await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let answer = expect_ok(get_token(&alice, &room, "a").await, "token");
    let claims = jwt_claims(&s(&answer["jwt"]));
    let valid = claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap();
    assert!((1..=2).contains(&valid), "a 1 s token: {claims}");
    // LiveKit allows a minute of clock skew past `exp`.
    tokio::time::sleep(Duration::from_secs(63)).await;
    let refused = Peer::connect(&lk.url(), &s(&answer["jwt"])).await;
    let err = refused.err().expect("an expired token must not connect");
    assert_eq!(err.code, "connect_failed", "{err:?}");
    // A fresh one connects: the room itself is fine.
    let fresh = expect_ok(get_token(&alice, &room, "a2").await, "fresh token");
    Peer::connect(&lk.url(), &s(&fresh["jwt"])).await.unwrap();
}

#[tokio::test]
async fn a_user_of_another_server_joins_a_call_in_a_guild_hosted_here() {
    let mut lk = LiveKit::start(LiveKitOptions::default()).await;
    let env = livekit_env(&lk);
    let (a, a_name) = federating_server_with(|e| {
        for (k, v) in &env {
            TestServer::set_env(e, k, v);
        }
    })
    .await;
    lk.restart_with(LiveKitOptions {
        webhook_urls: vec![format!("{}/_paracord/livekit/webhook", a.base_url())],
        ..LiveKitOptions::default()
    })
    .await;
    let (b, b_name) = federating_server_with(|_| {}).await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let (guild, voice, text) = guild_with_voice(&alice).await;
    let invite = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/channels/{}/invites", enc(&text)),
                &json!({}),
            )
            .await,
        "invite",
    );
    expect_ok(
        bob.post(
            &format!(
                "/_paracord/v1/invites/{}?server={}",
                s(&invite["code"]),
                enc(&a_name)
            ),
            &json!({}),
        )
        .await,
        "bob accepts through his server",
    );
    let _ = guild;
    bob.join_ok(&voice).await;

    // Bob's own server gives him an OpenID token; A's focus checks it with B.
    let token = openid(&bob).await;
    assert_eq!(token["matrix_server_name"], b_name.as_str());
    let member_id = random_word();
    let answer = expect_ok(
        a.client()
            .post(
                "/_paracord/livekit/get_token",
                &json!({
                    "room_id": voice, "slot_id": "m.call#ROOM", "openid_token": token,
                    "member": { "id": member_id, "claimed_device_id": bob.device_id,
                                "claimed_user_id": bob.user_id },
                }),
            )
            .await,
        "bob's token from A's focus",
    );
    let claims = jwt_claims(&s(&answer["jwt"]));
    assert_ne!(
        claims["video"]["roomCreate"], true,
        "no token creates rooms: {claims}"
    );
    assert_eq!(claims["video"]["canPublish"], true, "{claims}");

    let a_token = expect_ok(get_token(&alice, &voice, "alice").await, "alice");
    let alice_identity = s(&jwt_claims(&s(&a_token["jwt"]))["sub"]);
    let mut pa = Peer::connect(&lk.url(), &s(&a_token["jwt"])).await.unwrap();
    let mut pb = Peer::connect(&lk.url(), &s(&answer["jwt"])).await.unwrap();
    pa.publish_audio().await.unwrap();
    let heard = pb.wait_audio(&alice_identity, 50, WAIT).await.unwrap();
    assert!(heard.frames >= 50 && !heard.silent, "{heard:?}");

    // MSC4195's current way: Bob asks his own server for a token for A's SFU; B relays it
    // over federation (`/_matrix/federation/v1/rtc/livekit/get_token`) and A answers with a
    // token that subscribes but does not publish (Bob would publish on his own server's SFU).
    let relayed = expect_ok(
        slot_token(&bob, Some(&a_name), &lk.url(), &voice, "bob-m").await,
        "bob's token for A's SFU, through B",
    );
    let claims = jwt_claims(&s(&relayed["jwt"]));
    assert_eq!(
        claims["sub"],
        msc4195_hash(&[&bob.user_id, "bob-m"]).as_str(),
        "{claims}"
    );
    assert_ne!(claims["video"]["canPublish"], true, "{claims}");
    assert_eq!(claims["video"]["canSubscribe"], true, "{claims}");
    let mut pc = Peer::connect(&lk.url(), &s(&relayed["jwt"])).await.unwrap();
    let heard = pc.wait_audio(&alice_identity, 50, WAIT).await.unwrap();
    assert!(heard.frames >= 50 && !heard.silent, "{heard:?}");
    // A's refusals reach Bob as MSC4195 says: a URL that is not A's SFU is 400
    // M_INVALID_PARAM, a user not in the room 403 M_FORBIDDEN.
    let wrong_url = slot_token(&bob, Some(&a_name), "wss://elsewhere.invalid", &voice, "m").await;
    expect_error(
        &wrong_url,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "relayed bad url",
    );
    let dave = b.register_random().await;
    let outsider = slot_token(&dave, Some(&a_name), &lk.url(), &voice, "m").await;
    expect_error(
        &outsider,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "relayed outsider",
    );
    // A server that cannot be reached is a 502.
    let nowhere = slot_token(&bob, Some("unreachable.invalid"), &lk.url(), &voice, "m").await;
    expect_error(
        &nowhere,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "unreachable server",
    );

    // Someone else's OpenID token does not make Bob of it; a claim of another user fails.
    let lie = a
        .client()
        .post(
            "/_paracord/livekit/get_token",
            &json!({
                "room_id": voice, "slot_id": "m.call#ROOM", "openid_token": openid(&bob).await,
                "member": { "id": "m", "claimed_device_id": "D", "claimed_user_id": alice.user_id },
            }),
        )
        .await;
    expect_error(
        &lie,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        "claims alice",
    );
    let forged = a
        .client()
        .post(
            "/_paracord/livekit/get_token",
            &json!({
                "room_id": voice, "slot_id": "m.call#ROOM",
                "openid_token": { "access_token": "forged", "matrix_server_name": b_name },
                "member": { "id": "m", "claimed_device_id": "D" },
            }),
        )
        .await;
    expect_error(
        &forged,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        "forged token",
    );

    // The federation endpoint answers a server for its own users only: B signing a request
    // for Alice (of A) is refused.
    let uri = "/_matrix/federation/v1/rtc/livekit/get_token";
    let as_b = |body: Value| {
        let auth = x_matrix_with_content(
            &server_signing_key(&b),
            &b_name,
            &a_name,
            "POST",
            uri,
            Some(&body),
        );
        let url = format!("{}{uri}", a.base_url());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("Authorization", auth)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST as B: {e}"));
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let body = |user: &str| {
        json!({ "user_id": user, "url": lk.url(), "room_id": voice, "slot_id": "m.call#ROOM",
                "member_id": "m" })
    };
    let (status, own) = as_b(body(&bob.user_id)).await;
    assert_eq!(status, 200, "B asking for Bob: {own}");
    assert!(own["jwt"].is_string(), "{own}");
    let (status, other) = as_b(body(&alice.user_id)).await;
    assert_eq!(
        (status, other["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "B asking for Alice: {other}"
    );
    // A server the channel's ACL denies gets nothing of it (every server here is an IP
    // literal, so the ACL denies those; A's own users do not go through the ACL).
    expect_ok(
        alice
            .put(
                &format!("/rooms/{}/state/m.room.server_acl/", enc(&voice)),
                &json!({ "allow": ["*"], "deny": [], "allow_ip_literals": false }),
            )
            .await,
        "ACL denying IP literals",
    );
    let (status, denied) = as_b(body(&bob.user_id)).await;
    assert_eq!(
        (status, denied["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "B under the ACL: {denied}"
    );
}

#[tokio::test]
async fn a_down_sfu_never_blocks_messaging_and_moderation_says_so() {
    let (mut lk, server) = focus(&[]).await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let (guild, voice, text) = guild_with_voice(&alice).await;
    join_guild(&alice, &bob, &guild, &text, &voice).await;
    let token = expect_ok(get_token(&bob, &voice, "b").await, "bob");
    let _peer = Peer::connect(&lk.url(), &s(&token["jwt"])).await.unwrap();
    wait_in_call(&alice, &voice, &bob.user_id, true).await;

    lk.kill();
    // A moderator's disconnect needs the SFU, and says so.
    let refused = alice
        .post(
            &format!(
                "/_paracord/v1/channels/{}/voice/members/{}/disconnect",
                enc(&voice),
                enc(&bob.user_id)
            ),
            &json!({}),
        )
        .await;
    expect_error(
        &refused,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "disconnect, SFU down",
    );
    assert!(s(&refused.1["error"]).contains("SFU"), "{refused:?}");
    // State changes in a room with participants still go through at once.
    let started = Instant::now();
    overwrite(&alice, &voice, &format!("user:{}", bob.user_id), 0, SPEAK).await;
    alice
        .send_text(&voice, "the SFU is down, the channel is not")
        .await;
    expect_ok(
        alice
            .post(
                &format!("/rooms/{}/kick", enc(&guild)),
                &json!({ "user_id": bob.user_id }),
            )
            .await,
        "kick with the SFU down",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // Tokens need no SFU.
    expect_ok(
        get_token(&alice, &voice, "a").await,
        "a token with the SFU down",
    );
    let carol = server.register_random().await;
    join_guild(&alice, &carol, &guild, &text, &voice).await;
    let carol_token = expect_ok(get_token(&carol, &voice, "c").await, "carol");
    assert!(carol_token["jwt"].is_string());
}

#[tokio::test]
async fn msc4195_tokens_for_a_slot_name_the_member_and_the_server_creates_the_room() {
    // LiveKit creates no room on join here: only the focus's CreateRoom lets anyone in.
    let mut lk = LiveKit::start(LiveKitOptions {
        extra_config: "room:\n  auto_create: false\n".into(),
        ..LiveKitOptions::default()
    })
    .await;
    let env = livekit_env(&lk);
    let server = TestServer::start_with(|e| {
        for (k, v) in &env {
            TestServer::set_env(e, k, v);
        }
    })
    .await;
    lk.restart_with(LiveKitOptions {
        webhook_urls: vec![format!("{}/_paracord/livekit/webhook", server.base_url())],
        extra_config: "room:\n  auto_create: false\n".into(),
    })
    .await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let stranger = server.register_random().await;
    let (guild, voice, text) = guild_with_voice(&alice).await;
    join_guild(&alice, &bob, &guild, &text, &voice).await;

    // The transports name the SFU's URL (MSC4195) and the focus service (MSC4143's first form).
    let t = expect_ok(
        alice.get("/_matrix/client/v1/rtc/transports").await,
        "transports",
    );
    assert_eq!(t["transports"][0]["url"], lk.url().as_str(), "{t}");
    assert_eq!(t["transports"][0]["type"], "livekit", "{t}");
    assert!(
        t["rtc_transports"][0]["livekit_service_url"].is_string(),
        "{t}"
    );

    let alias = msc4195_hash(&[&voice, "m.call#ROOM"]);
    assert!(
        !lk.list_rooms().await.unwrap().contains(&alias),
        "no LiveKit room before anyone asks"
    );
    let a = expect_ok(
        slot_token(&alice, None, &lk.url(), &voice, "alice-m").await,
        "alice's token",
    );
    let claims = jwt_claims(&s(&a["jwt"]));
    assert_eq!(
        claims["sub"],
        msc4195_hash(&[&alice.user_id, "alice-m"]).as_str()
    );
    assert_eq!(claims["video"]["room"], alias.as_str(), "{claims}");
    assert_ne!(claims["video"]["roomCreate"], true, "{claims}");
    assert_eq!(claims["video"]["canPublish"], true, "{claims}");
    assert!(claims["nbf"].is_u64() && claims["exp"].is_u64(), "{claims}");
    assert!(
        lk.list_rooms().await.unwrap().contains(&alias),
        "the focus created the LiveKit room before answering"
    );
    // The same through the unstable path, and with this server's own name.
    let b = expect_ok(
        bob.post(
            "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token",
            &json!({
                "server_name": server.server_name(), "url": lk.url(), "room_id": voice,
                "slot_id": "m.call#ROOM", "member_id": "bob-m",
            }),
        )
        .await,
        "bob's token",
    );
    let mut pa = Peer::connect(&lk.url(), &s(&a["jwt"])).await.unwrap();
    let mut pb = Peer::connect(&lk.url(), &s(&b["jwt"])).await.unwrap();
    pa.publish_audio().await.unwrap();
    let heard = pb.wait_audio(&s(&claims["sub"]), 50, WAIT).await.unwrap();
    assert!(heard.frames >= 50 && !heard.silent, "{heard:?}");

    // Bad input, each a clear error: another URL, a stranger, an unknown room, a missing
    // field, an oversized one.
    let wrong = slot_token(&alice, None, "wss://other.invalid", &voice, "m").await;
    expect_error(
        &wrong,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "not our SFU",
    );
    let outsider = slot_token(&stranger, None, &lk.url(), &voice, "m").await;
    expect_error(
        &outsider,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "not joined",
    );
    let unknown = slot_token(&alice, None, &lk.url(), "!nope:nowhere", "m").await;
    expect_error(
        &unknown,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "unknown room",
    );
    let missing = alice
        .post(
            "/_matrix/client/v1/rtc/livekit/get_token",
            &json!({ "url": lk.url(), "room_id": voice, "slot_id": "m.call#ROOM" }),
        )
        .await;
    expect_error(
        &missing,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "no member_id",
    );
    let long = slot_token(&alice, None, &lk.url(), &voice, &"m".repeat(300)).await;
    expect_error(
        &long,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "member_id too long",
    );
    let bad_server = slot_token(&alice, Some("not a server"), &lk.url(), &voice, "m").await;
    expect_error(
        &bad_server,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "bad server_name",
    );
}

#[tokio::test]
async fn a_delegated_leave_event_lives_while_the_member_is_on_the_sfu_and_fires_when_they_leave() {
    let (lk, server) = focus(&[]).await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let (guild, voice, text) = guild_with_voice(&alice).await;
    join_guild(&alice, &bob, &guild, &text, &voice).await;
    let service_url = format!("{}/_paracord/livekit", server.base_url());

    // Alice joins the call and schedules her leave (an empty membership) 6 s out.
    let (key, content) = call_member(&alice, &service_url);
    expect_ok(
        put_call_member(&alice, &voice, &key, &content).await,
        "join",
    );
    let scheduled = expect_ok(
        alice
            .put(
                &format!(
                    "/rooms/{}/state/org.matrix.msc3401.call.member/{}?org.matrix.msc4140.delay=6000",
                    enc(&voice),
                    enc(&key)
                ),
                &json!({}),
            )
            .await,
        "schedule the leave",
    );
    let delay_id = s(&scheduled["delay_id"]);
    let body = json!({
        "url": lk.url(), "room_id": voice, "slot_id": "m.call#ROOM", "member_id": "alice-m",
        "delay_id": delay_id,
    });
    // Refused: another SFU, someone else's delayed event, one of another room, an unknown one.
    let mut other_url = body.clone();
    other_url["url"] = json!("wss://other.invalid");
    expect_error(
        &delegate(&alice, other_url).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "another SFU",
    );
    expect_error(
        &delegate(&bob, body.clone()).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "someone else's delayed event",
    );
    let mut other_room = body.clone();
    other_room["room_id"] = json!(text);
    expect_error(
        &delegate(&alice, other_room).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "another room",
    );
    let mut unknown = body.clone();
    unknown["delay_id"] = json!("nope");
    expect_error(
        &delegate(&alice, unknown).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "unknown delay_id",
    );
    assert_eq!(
        expect_ok(delegate(&alice, body).await, "delegate"),
        json!({})
    );

    let token = expect_ok(
        slot_token(&alice, None, &lk.url(), &voice, "alice-m").await,
        "token",
    );
    let peer = Peer::connect(&lk.url(), &s(&token["jwt"])).await.unwrap();
    // Two delays later the membership still stands: the focus restarts the event.
    let state_path = format!(
        "/rooms/{}/state/org.matrix.msc3401.call.member/{}",
        enc(&voice),
        enc(&key)
    );
    tokio::time::sleep(Duration::from_secs(13)).await;
    let still = expect_ok(alice.get(&state_path).await, "membership while connected");
    assert_eq!(still["application"], "m.call", "{still}");

    // Alice leaves the SFU (her client vanishes): the leave is sent at once. Left to its
    // timer, restarted at most half a delay ago, it would take 3 s or more.
    let left_at = Instant::now();
    peer.leave().await.unwrap();
    loop {
        let now = expect_ok(alice.get(&state_path).await, "membership after leaving");
        if now == json!({}) {
            break;
        }
        assert!(
            left_at.elapsed() < Duration::from_millis(2500),
            "the delegated leave was not sent when she left: {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = expect_ok(
        alice
            .get("/_matrix/client/unstable/org.matrix.msc4140/delayed_events")
            .await,
        "delayed events",
    );
    assert!(
        !listed.to_string().contains(&delay_id),
        "the delegated event is no longer scheduled: {listed}"
    );
}

#[tokio::test]
async fn token_requests_are_rate_limited_per_user() {
    let (lk, server) = focus(&[
        ("PARACORD_RATE_LIMITS_ENABLED", "true"),
        ("PARACORD_RATE_LIMIT_ACTION_BURST", "6"),
        ("PARACORD_RATE_LIMIT_ACTION_PER_SECOND", "0.01"),
    ])
    .await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    // A plain room: every joined member may call (one action of the burst for the room).
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let mut answers = Vec::new();
    for i in 0..8 {
        answers.push(slot_token(&alice, None, &lk.url(), &room, &format!("m{i}")).await);
    }
    let limited: Vec<&(StatusCode, Value)> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        answers[0].0 == StatusCode::OK && !limited.is_empty(),
        "{answers:?}"
    );
    assert_eq!(limited[0].1["errcode"], "M_LIMIT_EXCEEDED", "{answers:?}");
    // Per user: Bob, on his own, is not limited by Alice's requests.
    bob.join_ok(&room).await;
    expect_ok(
        slot_token(&bob, None, &lk.url(), &room, "b").await,
        "bob's token",
    );
}
