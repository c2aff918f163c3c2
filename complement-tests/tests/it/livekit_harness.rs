//! The LiveKit harness on its own, without Paracord: a real livekit-server on loopback, real
//! participants (the Python binding of LiveKit's Rust SDK), tokens minted in the test, the
//! RoomService and signed webhooks. The MatrixRTC focus tests stand on these pieces.

use std::time::Duration;

use paracord_complement::{
    livekit::{jwt_claims, LiveKit, LiveKitOptions, Peer, WebhookRecorder},
    random_word,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs).unwrap()
}

async fn with_webhooks() -> (WebhookRecorder, LiveKit) {
    let hooks = WebhookRecorder::start().await;
    let lk = LiveKit::start(LiveKitOptions {
        webhook_urls: vec![hooks.url()],
        ..LiveKitOptions::default()
    })
    .await;
    (hooks, lk)
}

#[tokio::test]
async fn livekit_carries_a_sine_wave_and_a_screen_share_and_signs_its_webhooks() {
    let (hooks, lk) = with_webhooks().await;
    let room = random_word();
    let token = lk.token("alice", &room, json!({}));
    let claims = jwt_claims(&token);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["video"]["room"], room.as_str(), "{claims}");

    let mut alice = Peer::connect(&lk.url(), &token).await.unwrap();
    let mut bob = Peer::connect(&lk.url(), &lk.token("bob", &room, json!({})))
        .await
        .unwrap();
    assert_eq!(alice.identity(), "alice");
    assert!(alice.permissions().can_publish, "{:?}", alice.permissions());

    let audio_sid = alice.publish_audio().await.unwrap();
    assert!(audio_sid.starts_with("TR_"), "{audio_sid}");
    let heard = bob.wait_audio("alice", 100, WAIT).await.unwrap();
    assert!(heard.frames >= 100, "{heard:?}");
    assert_eq!(heard.sample_rate, 48_000, "{heard:?}");
    assert!(!heard.silent && heard.rms > 0.1, "{heard:?}");
    // The count is per sender: nobody else is publishing.
    let nobody = bob
        .wait_audio("carol", 1, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(nobody.frames, 0, "{nobody:?}");

    let video_sid = alice.publish_video(true).await.unwrap();
    let seen = bob.wait_video("alice", 3, WAIT).await.unwrap();
    assert!(seen.frames >= 3, "{seen:?}");
    assert_eq!((seen.width, seen.height), (320, 240), "{seen:?}");
    let room_view = bob.wait_participants(&["alice"], &[], WAIT).await.unwrap();
    assert_eq!(room_view.remote, vec!["alice".to_owned()]);
    let alice_tracks = &room_view.tracks["alice"];
    assert!(
        alice_tracks
            .iter()
            .any(|t| t.sid == audio_sid && t.kind == "audio" && t.source == "microphone"),
        "{alice_tracks:?}"
    );
    assert!(
        alice_tracks
            .iter()
            .any(|t| t.sid == video_sid && t.kind == "video" && t.source == "screenshare"),
        "{alice_tracks:?}"
    );
    let listed = lk.list_participants(&room).await.unwrap();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        vec!["alice", "bob"],
        "{listed:?}"
    );
    assert!(
        listed["alice"]
            .iter()
            .any(|t| t.sid == video_sid && t.source == "screen_share"),
        "{listed:?}"
    );

    // LiveKit's webhooks carry an Authorization JWT signed with the API secret whose
    // `sha256` claim is the body's hash.
    let joined = hooks
        .wait_event("participant_joined", Some("alice"), WAIT)
        .await;
    let event = joined.verify(lk.api_key(), lk.api_secret()).unwrap();
    assert_eq!(event["room"]["name"], room.as_str(), "{event}");
    assert_eq!(joined.method, "POST");
    assert_eq!(
        joined.content_type.as_deref(),
        Some("application/webhook+json")
    );
    let mut forged = joined.clone();
    forged.body = forged.body.replace("alice", "mallory");
    assert!(forged.verify(lk.api_key(), lk.api_secret()).is_err());
    assert!(joined.verify(lk.api_key(), "another secret").is_err());

    alice.leave().await.unwrap();
    let gone = bob.wait_participants(&[], &["alice"], WAIT).await.unwrap();
    assert!(gone.remote.is_empty(), "{gone:?}");
    let left = hooks
        .wait_event("participant_left", Some("alice"), WAIT)
        .await;
    left.verify(lk.api_key(), lk.api_secret()).unwrap();
    bob.leave().await.unwrap();
}

#[tokio::test]
async fn livekit_refuses_expired_and_forged_tokens() {
    let lk = LiveKit::start(LiveKitOptions::default()).await;
    let room = random_word();
    let claims = |exp: i64| {
        json!({
            "iss": lk.api_key(), "sub": "eve", "nbf": now() - 7200, "exp": exp,
            "video": { "room": room, "roomJoin": true },
        })
    };

    let expired = Peer::connect(&lk.url(), &lk.sign(claims(now() - 3600)))
        .await
        .err()
        .expect("an expired token must be refused");
    assert_eq!(expired.code, "connect_failed", "{expired}");
    assert!(expired.message.contains("401"), "{expired}");

    let forged = paracord_complement::livekit::sign_hs256(
        "not the secret of this server, 40 chars",
        &claims(now() + 600),
    );
    let refused = Peer::connect(&lk.url(), &forged)
        .await
        .err()
        .expect("a token signed with another secret must be refused");
    assert_eq!(refused.code, "connect_failed", "{refused}");
    assert!(refused.message.contains("401"), "{refused}");

    // The same claims, in date and signed with the server's secret, are accepted.
    let eve = Peer::connect(&lk.url(), &lk.sign(claims(now() + 600)))
        .await
        .unwrap();
    assert_eq!(eve.identity(), "eve");
    eve.leave().await.unwrap();
}

#[tokio::test]
async fn livekit_token_without_can_publish_cannot_publish() {
    let lk = LiveKit::start(LiveKitOptions::default()).await;
    let room = random_word();
    let mut carol = Peer::connect(
        &lk.url(),
        &lk.token("carol", &room, json!({ "canPublish": false })),
    )
    .await
    .unwrap();
    assert!(
        !carol.permissions().can_publish,
        "{:?}",
        carol.permissions()
    );
    let refused = carol
        .publish_audio()
        .await
        .expect_err("a participant without canPublish must not publish");
    assert_eq!(refused.code, "publish_failed", "{refused}");
    let listed = lk.list_participants(&room).await.unwrap();
    assert_eq!(listed["carol"], vec![], "{listed:?}");
    carol.leave().await.unwrap();
}

#[tokio::test]
async fn livekit_publish_sources_limit_what_may_be_published() {
    let lk = LiveKit::start(LiveKitOptions::default()).await;
    let room = random_word();
    let token = lk.token(
        "dave",
        &room,
        json!({ "canPublish": true, "canPublishSources": ["microphone"] }),
    );
    let mut dave = Peer::connect(&lk.url(), &token).await.unwrap();
    assert_eq!(
        dave.permissions().can_publish_sources,
        vec!["microphone".to_owned()]
    );
    let audio = dave.publish_audio().await.unwrap();
    let refused = dave
        .publish_video(true)
        .await
        .expect_err("a screen share outside canPublishSources must be refused");
    assert_eq!(refused.code, "publish_failed", "{refused}");
    let listed = lk.list_participants(&room).await.unwrap();
    let sids: Vec<&str> = listed["dave"].iter().map(|t| t.sid.as_str()).collect();
    assert_eq!(sids, vec![audio.as_str()], "{listed:?}");
    dave.leave().await.unwrap();
}

#[tokio::test]
async fn livekit_remove_participant_disconnects_the_peer() {
    let (hooks, lk) = with_webhooks().await;
    let room = random_word();
    let mut alice = Peer::connect(&lk.url(), &lk.token("alice", &room, json!({})))
        .await
        .unwrap();
    let mut bob = Peer::connect(&lk.url(), &lk.token("bob", &room, json!({})))
        .await
        .unwrap();
    alice.wait_participants(&["bob"], &[], WAIT).await.unwrap();
    assert_eq!(
        bob.wait_disconnected(Duration::from_millis(300))
            .await
            .unwrap(),
        None,
        "bob is still connected before the removal"
    );

    let missing = lk
        .remove_participant(&room, "nobody")
        .await
        .expect_err("removing someone absent is an error");
    assert_eq!(missing.code, "server_error", "{missing}");
    assert!(missing.message.contains("not_found"), "{missing}");

    lk.remove_participant(&room, "bob").await.unwrap();
    assert_eq!(
        bob.wait_disconnected(WAIT).await.unwrap().as_deref(),
        Some("PARTICIPANT_REMOVED")
    );
    let view = alice.wait_participants(&[], &["bob"], WAIT).await.unwrap();
    assert!(view.remote.is_empty(), "{view:?}");
    let listed = lk.list_participants(&room).await.unwrap();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        vec!["alice"],
        "{listed:?}"
    );
    let left = hooks
        .wait_event("participant_left", Some("bob"), WAIT)
        .await;
    left.verify(lk.api_key(), lk.api_secret()).unwrap();
    alice.leave().await.unwrap();
}
