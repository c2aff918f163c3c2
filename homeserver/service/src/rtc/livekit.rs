//! LiveKit, as the focus sees it (spec/voice.md): the names MSC4195 gives LiveKit rooms and
//! participants, access tokens with grants from the user's permissions, the webhook LiveKit
//! posts (verified with the API secret), and RoomService calls over Twirp.
//!
//! The Twirp calls go through the server's own guarded HTTP client (the appservice guard:
//! LiveKit's URL is the operator's configuration, so loopback and private addresses are
//! allowed, and no redirect is followed), not through `livekit-api`'s `services` client, so
//! that everything the server fetches has one guard and one HTTP stack.

use std::time::Duration;

use base64::Engine;
use livekit_api::access_token::{AccessToken, TokenVerifier, VideoGrants};
use paracord_core::{Error, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::outbound::{GuardedClient, OutboundGuard};

/// The slot of a room's one call, as Element Call and lk-jwt-service name it.
pub const ROOM_CALL_SLOT: &str = "m.call#ROOM";

/// Most a RoomService call may take: a slow SFU never holds a request of a Matrix client.
const TWIRP_TIMEOUT: Duration = Duration::from_secs(5);

/// `base64(SHA256(canonical JSON of the strings as an array))`, unpadded (MSC4195's hash).
pub fn hashed(parts: &[&str]) -> String {
    // An array of strings in canonical JSON is what serde_json writes: no spaces, and
    // strings escaped the same way.
    let json = serde_json::to_string(parts).unwrap_or_default();
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

/// The LiveKit room of a MatrixRTC slot in a Matrix room (MSC4195 "LiveKit room alias", in
/// its minimal form: the server and the SFU are the same operator's).
pub fn room_alias(room_id: &str, slot_id: &str) -> String {
    hashed(&[room_id, slot_id])
}

/// The pseudonymous LiveKit identity of a member, as the first revisions of MSC4195 (and
/// Element Call's `member.claimed_device_id` requests) derive it.
pub fn identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    hashed(&[user_id, device_id, member_id])
}

/// The pseudonymous LiveKit identity of an `m.rtc.member`'s sender and `member.id`, as
/// MSC4195's current revision derives it.
pub fn member_identity(user_id: &str, member_id: &str) -> String {
    hashed(&[user_id, member_id])
}

/// What a token lets its holder do in the LiveKit room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Publish {
    /// The microphone (SPEAK, and not server-muted).
    pub audio: bool,
    /// Camera and screen share (STREAM).
    pub video: bool,
    /// Others' media (not server-deafened).
    #[serde(default = "yes")]
    pub listen: bool,
}

fn yes() -> bool {
    true
}

impl Publish {
    /// LiveKit's track sources, as tokens name them.
    pub fn token_sources(self) -> Vec<String> {
        let mut out = Vec::new();
        if self.audio {
            out.push("microphone".to_owned());
        }
        if self.video {
            out.extend(["camera", "screen_share", "screen_share_audio"].map(str::to_owned));
        }
        out
    }

    /// The same, as RoomService's `TrackSource` enum names them.
    fn api_sources(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.audio {
            out.push("MICROPHONE");
        }
        if self.video {
            out.extend(["CAMERA", "SCREEN_SHARE", "SCREEN_SHARE_AUDIO"]);
        }
        out
    }
}

/// An event of LiveKit's webhook that the focus acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Webhook {
    Joined { room: String, identity: String },
    Left { room: String, identity: String },
    RoomFinished { room: String },
    Other(String),
}

/// A configured LiveKit SFU.
pub struct LiveKit {
    /// What clients connect to.
    pub url: String,
    api_url: String,
    key: String,
    secret: String,
    ttl: Duration,
    http: GuardedClient,
    verifier: TokenVerifier,
}

impl LiveKit {
    pub fn new(
        url: String,
        api_url: String,
        key: String,
        secret: String,
        ttl: Duration,
    ) -> Result<Self> {
        let http = GuardedClient::new(OutboundGuard::for_appservices(), 0, TWIRP_TIMEOUT)
            .map_err(Error::internal)?;
        let verifier = TokenVerifier::with_api_key(&key, &secret);
        Ok(Self {
            url,
            api_url,
            key,
            secret,
            ttl,
            http,
            verifier,
        })
    }

    /// Whether `url` names this SFU (as clients connect to it; a trailing `/` aside).
    pub fn is_url(&self, url: &str) -> bool {
        url.trim_end_matches('/') == self.url.trim_end_matches('/')
    }

    /// A token admitting `identity` to the LiveKit room `alias`. It never grants
    /// `roomCreate`: that grant also lets its holder delete any LiveKit room (MSC4195), so
    /// the server creates rooms itself ([`LiveKit::create_room`]).
    pub fn join_token(
        &self,
        alias: &str,
        identity: &str,
        publish: Publish,
        attributes: &[(&str, &str)],
    ) -> Result<String> {
        let sources = publish.token_sources();
        let grants = VideoGrants {
            room_join: true,
            room_create: false,
            room: alias.to_owned(),
            can_publish: Some(!sources.is_empty()),
            can_publish_sources: sources,
            can_subscribe: Some(publish.listen),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(false),
            ..VideoGrants::default()
        };
        let mut token = AccessToken::with_api_key(&self.key, &self.secret)
            .with_identity(identity)
            .with_ttl(self.ttl)
            .with_grants(grants);
        if !attributes.is_empty() {
            token = token.with_attributes(
                attributes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
        }
        token
            .to_jwt()
            .map_err(|e| Error::internal(format!("cannot sign a LiveKit token: {e}")))
    }

    /// Reads a webhook body LiveKit signed (`Authorization` is a JWT of our key whose
    /// `sha256` claim is the body's hash). `None`: not from our LiveKit.
    pub fn webhook(&self, body: &str, authorization: &str) -> Option<Webhook> {
        let token = authorization
            .strip_prefix("Bearer ")
            .unwrap_or(authorization)
            .trim();
        let claims = self.verifier.verify(token).ok()?;
        let signed = base64::engine::general_purpose::STANDARD
            .decode(claims.sha256)
            .ok()?;
        if signed[..] != Sha256::digest(body.as_bytes())[..] {
            return None;
        }
        // The fields the focus reads of LiveKit's `WebhookEvent` (its JSON form), rather than
        // the whole generated protocol.
        #[derive(serde::Deserialize)]
        struct Named {
            #[serde(default)]
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct Identified {
            #[serde(default)]
            identity: String,
        }
        #[derive(serde::Deserialize)]
        struct Event {
            event: String,
            room: Option<Named>,
            participant: Option<Identified>,
        }
        let event: Event = serde_json::from_str(body).ok()?;
        let room = event.room.map(|r| r.name).unwrap_or_default();
        let identity = event.participant.map(|p| p.identity).unwrap_or_default();
        Some(match event.event.as_str() {
            "participant_joined" => Webhook::Joined { room, identity },
            "participant_left" | "participant_connection_aborted" => {
                Webhook::Left { room, identity }
            }
            "room_finished" => Webhook::RoomFinished { room },
            other => Webhook::Other(other.to_owned()),
        })
    }

    /// Removes a participant from a LiveKit room; one already gone is no error.
    pub async fn remove_participant(&self, alias: &str, identity: &str) -> Result<()> {
        self.twirp(
            alias,
            "RemoveParticipant",
            json!({ "room": alias, "identity": identity }),
        )
        .await
        .map(drop)
    }

    /// Changes what a connected participant may publish and hear; LiveKit unpublishes the
    /// tracks whose source is no longer allowed.
    pub async fn update_permissions(
        &self,
        alias: &str,
        identity: &str,
        publish: Publish,
    ) -> Result<()> {
        let sources = publish.api_sources();
        self.twirp(
            alias,
            "UpdateParticipant",
            json!({
                "room": alias,
                "identity": identity,
                "permission": {
                    "can_subscribe": publish.listen,
                    "can_publish": !sources.is_empty(),
                    "can_publish_data": true,
                    "can_publish_sources": sources,
                },
            }),
        )
        .await
        .map(drop)
    }

    /// Creates the LiveKit room `alias` (RoomService `CreateRoom`; an existing room is no
    /// error), so that members can join it when the SFU does not create rooms on join.
    pub async fn create_room(&self, alias: &str) -> Result<()> {
        self.twirp(alias, "CreateRoom", json!({ "name": alias }))
            .await
            .map(drop)
    }

    /// A RoomService method, with a token for this room alone. `Ok(None)`: the room or
    /// participant does not exist (any more).
    async fn twirp(&self, alias: &str, method: &str, body: Value) -> Result<Option<Value>> {
        let admin = VideoGrants {
            room_admin: true,
            room_create: method == "CreateRoom",
            room: alias.to_owned(),
            ..VideoGrants::default()
        };
        let token = AccessToken::with_api_key(&self.key, &self.secret)
            .with_ttl(Duration::from_secs(60))
            .with_grants(admin)
            .to_jwt()
            .map_err(|e| Error::internal(format!("cannot sign a LiveKit token: {e}")))?;
        let url = format!("{}/twirp/livekit.RoomService/{method}", self.api_url);
        let url = reqwest::Url::parse(&url).map_err(|e| Error::internal(format!("{url}: {e}")))?;
        let unreachable =
            |e: &dyn std::fmt::Display| Error::internal(format!("LiveKit {method}: {e}"));
        let response = self
            .http
            .request(reqwest::Method::POST, url)
            .map_err(|e| unreachable(&e))?
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Some(answer));
        }
        if answer.get("code").and_then(Value::as_str) == Some("not_found") {
            return Ok(None);
        }
        Err(unreachable(&format_args!("{status} {answer}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The test vectors of MSC4195's appendix.
    #[test]
    fn names_match_the_msc_test_vectors() {
        assert_eq!(
            room_alias("!roomid:example.com", "slot1234"),
            "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
        );
        assert_eq!(
            hashed(&["!roomid:example.com", "slot123", "random123"]),
            "IMeDd+K3MIqJTI20EXBIrepKkhhORvf3q8fx3rlrhTk"
        );
        assert_eq!(
            identity("@alice:example.com", "DEVICE123", "memberABC"),
            "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
        );
        assert_eq!(
            member_identity("@alice:example.com", "memberABC"),
            "M3VnsLXrkbxIDINXO64u8PZzFyD9ZYFiQULR2dshWYs"
        );
    }

    fn livekit() -> LiveKit {
        LiveKit::new(
            "ws://127.0.0.1:7880".into(),
            "http://127.0.0.1:7880".into(),
            "key".into(),
            "a-secret-of-at-least-thirty-two-characters".into(),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    fn claims(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn tokens_carry_the_grants_of_the_permissions() {
        let lk = livekit();
        let speak_only = Publish {
            audio: true,
            video: false,
            listen: true,
        };
        let c = claims(&lk.join_token("alias", "who", speak_only, &[]).unwrap());
        assert_eq!(c["sub"], "who");
        assert_eq!(c["iss"], "key");
        assert_eq!(c["video"]["room"], "alias");
        assert_eq!(c["video"]["roomJoin"], true);
        // Never `roomCreate` (it also deletes rooms): a false grant is left out.
        assert_ne!(c["video"]["roomCreate"], true, "{c}");
        assert_eq!(c["video"]["canPublish"], true);
        assert_eq!(c["video"]["canPublishSources"], json!(["microphone"]));
        let exp = c["exp"].as_u64().unwrap();
        let nbf = c["nbf"].as_u64().unwrap();
        assert!(exp > nbf && exp - nbf <= 61, "{c}");

        let listener = Publish {
            audio: false,
            video: false,
            listen: true,
        };
        let c = claims(&lk.join_token("alias", "who", listener, &[]).unwrap());
        assert_eq!(c["video"]["canPublish"], false);
        assert_eq!(c["video"]["canSubscribe"], true);
    }

    #[test]
    fn a_webhook_needs_our_signature_over_its_body() {
        let lk = livekit();
        let body = r#"{"event":"participant_left","room":{"name":"alias"},"participant":{"identity":"who"},"id":"EV_1","createdAt":"1"}"#;
        let sign = |secret: &str, body: &str| {
            let hash =
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes()));
            AccessToken::with_api_key("key", secret)
                .with_sha256(&hash)
                .to_jwt()
                .unwrap()
        };
        let good = sign("a-secret-of-at-least-thirty-two-characters", body);
        assert_eq!(
            lk.webhook(body, &good),
            Some(Webhook::Left {
                room: "alias".into(),
                identity: "who".into()
            })
        );
        let forged = sign("another-secret-of-at-least-thirty-two-chars", body);
        assert_eq!(lk.webhook(body, &forged), None);
        let other_body = body.replace("who", "someone-else");
        assert_eq!(lk.webhook(&other_body, &good), None);
    }
}
