//! The MatrixRTC focus (spec/voice.md): this server hands out LiveKit access tokens for calls
//! in the rooms it is in, to users its copy of the room state lets in, and keeps the SFU in
//! step with that state — a member who leaves, is kicked or banned, or loses a permission is
//! removed from the call or loses what they may publish, within a second.
//!
//! Who may do what in a call is a [`CallAccess`]: plain Matrix rooms let every joined member
//! in ([`JoinedMembers`]); the guild profile plugs in its CONNECT / SPEAK / STREAM rules
//! without this module knowing it. The ways in, for the clients that exist:
//! - MSC4195's `POST /_matrix/client/v1/rtc/livekit/get_token`, with the user's access token:
//!   for this server's SFU, or relayed to another server's
//!   (`POST /_matrix/federation/v1/rtc/livekit/get_token`), which answers users of other
//!   servers with tokens that subscribe but do not publish (they publish on their own SFU);
//! - the focus service URL advertised in `.well-known` (`/_paracord/livekit`), where Element
//!   Call's builds exchange an OpenID token: `POST …/get_token` (MSC4195 with the OpenID
//!   token in the body) and the legacy `POST …/sfu/get`. A user of another server is
//!   checked with their server over federation (`/_matrix/federation/v1/openid/userinfo`).
//!
//! Every token handed out is a row (`RoomuseridentityRtcparticipant`) until LiveKit's webhook
//! says the participant left, so enforcement still reaches them after a restart.

pub mod livekit;
pub mod model;
pub mod presets;

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use http::StatusCode;
use paracord_core::{error::ErrorKind, time::now_ms, Config, Error, Result};
use paracord_storage::{Batch, Db, KeyBuf, KeyReader, Table};
use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    accounts::Accounts,
    delayed_events::{model::Action, DelayedEvents},
    federation::{client::FederationClient, request},
    keys::ServerKeys,
    ratelimit::{Limit, RateLimiter},
    rooms::{
        hooks::{EventObserver, FollowUp},
        notify::Notification,
        Pdu, Rooms,
    },
};
use livekit::{LiveKit, Publish, Webhook};
pub use model::{
    DelegateLeave, InCall, Moderation, Muted, OpenIdToken, RtcMember, ServerTokenRequest,
    SlotTokenRequest, TokenAnswer,
};

/// Where Element Call finds this focus: `{public_baseurl}` + this.
pub const SERVICE_PATH: &str = "/_paracord/livekit";

/// Most tokens a user holds unused (not connected yet) for one room: asking for more drops
/// the oldest, so asking in a loop costs the server nothing that grows.
const MAX_UNUSED_TOKENS: usize = 16;

/// How long a LiveKit room the server created (or tried to) is taken to exist without asking
/// the SFU again; LiveKit's `room_finished` webhook forgets it sooner.
const ROOM_CREATED_FOR_MS: u64 = 30_000;

/// Most LiveKit rooms remembered as created; past it the oldest are forgotten (and created
/// again when asked for, which is harmless).
const MAX_CREATED_ROOMS: usize = 4096;

/// How often the focus looks at the delayed leave events delegated to it.
const DELEGATION_TICK: Duration = Duration::from_secs(1);

/// The federation endpoint of MSC4195, stable and unstable.
const SERVER_TOKEN_PATHS: [&str; 2] = [
    "/_matrix/federation/v1/rtc/livekit/get_token",
    "/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token",
];

/// What a user may do in a call in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallGrant {
    /// Not at all: why (shown to the user).
    Refused(String),
    /// Join and listen, and publish what `publish` says.
    Allowed {
        publish: Publish,
        /// Attributes every participant sees (`chat.paracord.priority_speaker`).
        attributes: Vec<(&'static str, &'static str)>,
    },
}

/// Who may do what in calls: the profile's rules, or plain Matrix's.
pub trait CallAccess: Send + Sync {
    /// What `user`, joined to `room_id`, may do in its calls now.
    fn grant(&self, rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<CallGrant>;

    /// Whether `actor` may take `action` on others' calls in `room_id`; `Err` says why not.
    fn moderates(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        actor: &UserId,
        action: Moderation,
    ) -> Result<()>;
}

/// Plain Matrix rooms: every joined member may join, speak and stream; there are no
/// moderators of calls (that is a guild's permission).
pub struct JoinedMembers;

impl CallAccess for JoinedMembers {
    fn grant(&self, _: &Rooms, _: &RoomId, _: &UserId) -> Result<CallGrant> {
        Ok(CallGrant::Allowed {
            publish: Publish {
                audio: true,
                video: true,
                listen: true,
            },
            attributes: Vec::new(),
        })
    }

    fn moderates(&self, _: &Rooms, _: &RoomId, _: &UserId, _: Moderation) -> Result<()> {
        Err(Error::forbidden(
            "call moderation is a permission of guild voice channels",
        ))
    }
}

/// A token handed out: the row of `RoomuseridentityRtcparticipant`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Participant {
    /// The LiveKit room.
    pub alias: String,
    pub device_id: String,
    pub issued_at: u64,
    /// LiveKit said they joined (and has not said they left).
    #[serde(default)]
    pub connected: bool,
    /// What their token (or the last update) lets them publish.
    pub publish: Publish,
    /// The delayed leave event the focus keeps alive while they are connected and sends
    /// when they leave the SFU (MSC4195 `delegate_delayed_leave`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated: Option<String>,
}

type Key = (OwnedRoomId, OwnedUserId, String);

pub struct Rtc {
    config: Arc<Config>,
    db: Arc<Db>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    federation: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    delayed: Arc<DelayedEvents>,
    ratelimit: Arc<RateLimiter>,
    access: Arc<dyn CallAccess>,
    livekit: Option<LiveKit>,
    /// The table, in memory: the participants of every room with tokens out.
    participants: Mutex<BTreeMap<Key, Participant>>,
    /// LiveKit rooms created (or tried) lately, and when.
    created: Mutex<BTreeMap<String, u64>>,
}

/// Who a token is for, as the way in knows them.
struct Asker<'a> {
    user: &'a UserId,
    /// Their device, when the way in names one (not over federation).
    device_id: &'a str,
    identity: String,
    /// What a refusal is: MSC4195's current revision says 403 `M_FORBIDDEN`, its first
    /// revisions (the OpenID ways in) 401 `M_UNAUTHORIZED`.
    refused: fn() -> Error,
    /// A user of this server: they may publish here. Users of other servers subscribe and
    /// publish on their own server's SFU (MSC4195).
    may_publish: bool,
}

/// The generic refusal of MSC4195: no word on whether the room or user exists.
fn unauthorized() -> Error {
    Error::new(
        StatusCode::UNAUTHORIZED,
        ErrorKind::Unauthorized,
        "The request could not be authorised: not a joined member of that room",
    )
}

/// MSC4195's current refusal: no word on whether the room or user exists.
fn forbidden() -> Error {
    Error::forbidden("Not a joined member of that room, or not allowed in its calls")
}

fn not_configured() -> Error {
    Error::unrecognized(
        "Voice and video calls are not configured on this server (no livekit_url, \
         livekit_api_key and livekit_api_secret)",
    )
}

fn row_key(room: &str, user: &str, identity: &str) -> Vec<u8> {
    KeyBuf::new()
        .str(room)
        .str(user)
        .last_str(identity)
        .into_vec()
}

/// A non-empty identifier of at most 255 bytes, as a field of a request.
fn checked<'a>(name: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() || value.len() > 255 {
        return Err(Error::bad_json(format!(
            "{name} must be a string of 1 to 255 bytes"
        )));
    }
    Ok(value)
}

/// The SFU, slot and member of MSC4195's current requests, as fields.
fn check_slot(url: &str, slot_id: &str, member_id: &str) -> Result<()> {
    checked("url", url)?;
    checked("slot_id", slot_id)?;
    checked("member_id", member_id)?;
    Ok(())
}

impl Rtc {
    // The services it uses, wired once in lib.rs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        db: Arc<Db>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        federation: Arc<FederationClient>,
        keys: Arc<ServerKeys>,
        delayed: Arc<DelayedEvents>,
        ratelimit: Arc<RateLimiter>,
        access: Arc<dyn CallAccess>,
    ) -> Result<Self> {
        let livekit = match config.livekit() {
            Some((url, api, key, secret)) => Some(LiveKit::new(
                url,
                api,
                key,
                secret,
                Duration::from_millis(config.livekit_token_ttl_ms),
            )?),
            None => None,
        };
        let mut participants = BTreeMap::new();
        for entry in db.scan_prefix(Table::RoomuseridentityRtcparticipant, &[])? {
            let mut r = KeyReader::new(&entry.0);
            let (room, user, identity) = (r.str()?, r.str()?, r.last_str()?);
            if identity.is_empty() {
                continue;
            }
            let (Ok(room), Ok(user)) = (OwnedRoomId::try_from(room), OwnedUserId::try_from(user))
            else {
                continue;
            };
            if let Ok(p) = serde_json::from_slice::<Participant>(&entry.1) {
                participants.insert((room, user, identity.to_owned()), p);
            }
        }
        Ok(Self {
            config,
            db,
            rooms,
            accounts,
            federation,
            keys,
            delayed,
            ratelimit,
            access,
            livekit,
            participants: Mutex::new(participants),
            created: Mutex::new(BTreeMap::new()),
        })
    }

    fn livekit(&self) -> Result<&LiveKit> {
        self.livekit.as_ref().ok_or_else(not_configured)
    }

    pub fn configured(&self) -> bool {
        self.livekit.is_some()
    }

    /// The focus service URL Element Call uses (`.well-known`'s `rtc_foci`).
    pub fn service_url(&self) -> Option<String> {
        self.livekit
            .as_ref()
            .map(|_| format!("{}{SERVICE_PATH}", self.config.public_baseurl()))
    }

    /// `GET /_matrix/client/v1/rtc/transports` (MSC4143): LiveKit when configured, with
    /// the SFU's `url` (MSC4195) and the focus service URL older Element Call builds use.
    pub fn transports(&self) -> Vec<Value> {
        match (self.service_url(), &self.livekit) {
            (Some(service), Some(lk)) => vec![serde_json::json!({
                "type": "livekit",
                "url": lk.url,
                "livekit_service_url": service,
            })],
            _ => Vec::new(),
        }
    }

    /// The slot and member of a token request, as fields (MSC4195).
    fn check_member(slot_id: &str, member: &RtcMember) -> Result<()> {
        checked("slot_id", slot_id)?;
        checked("member.id", &member.id)?;
        checked("member.claimed_device_id", &member.claimed_device_id)?;
        Ok(())
    }

    /// MSC4195 `get_token` (its first revisions' body, `member.claimed_device_id`) for a user
    /// of this server, authenticated by their access token (so the device is known, and
    /// must be the claimed one).
    pub async fn token_for_device(
        &self,
        user: &UserId,
        device_id: &str,
        room_id: &str,
        slot_id: &str,
        member: &RtcMember,
    ) -> Result<TokenAnswer> {
        self.livekit()?;
        Self::check_member(slot_id, member)?;
        if member.claimed_device_id != device_id {
            return Err(Error::forbidden(
                "member.claimed_device_id must be the device of the access token",
            ));
        }
        if member
            .claimed_user_id
            .as_deref()
            .is_some_and(|c| c != user.as_str())
        {
            return Err(Error::forbidden(
                "member.claimed_user_id must be the user of the access token",
            ));
        }
        let asker = Asker {
            user,
            device_id,
            identity: livekit::identity(user.as_str(), device_id, &member.id),
            refused: unauthorized,
            may_publish: true,
        };
        self.mint(room_id, slot_id, asker).await
    }

    /// MSC4195 `get_token` (its current body) for a user of this server: a token for this
    /// server's SFU, or one asked of `server_name`'s over federation.
    pub async fn token_for_slot(
        &self,
        user: &UserId,
        device_id: &str,
        req: &SlotTokenRequest,
    ) -> Result<TokenAnswer> {
        check_slot(&req.url, &req.slot_id, &req.member_id)?;
        let server = match req.server_name.as_deref() {
            None => None,
            Some(name) if name == self.config.server_name => None,
            Some(name) => Some(
                ServerName::parse(name)
                    .map_err(|_| Error::invalid_param("server_name is not a server name"))?,
            ),
        };
        if let Some(server) = server {
            return self.remote_token(user, &server, req).await;
        }
        self.own_sfu(&req.url)?;
        let asker = Asker {
            user,
            device_id,
            identity: livekit::member_identity(user.as_str(), &req.member_id),
            refused: forbidden,
            may_publish: true,
        };
        self.mint(&req.room_id, &req.slot_id, asker).await
    }

    /// `POST /_matrix/federation/v1/rtc/livekit/get_token` from `origin`, for one of its
    /// users: a token to subscribe on this server's SFU.
    pub async fn token_for_server(
        &self,
        origin: &ServerName,
        req: &ServerTokenRequest,
    ) -> Result<TokenAnswer> {
        check_slot(&req.url, &req.slot_id, &req.member_id)?;
        let user = <&UserId>::try_from(req.user_id.as_str())
            .map_err(|_| Error::invalid_param("user_id is not a user ID"))?;
        // A server asks for its own users only.
        if user.server_name() != origin || origin.as_str() == self.config.server_name {
            return Err(forbidden());
        }
        // A server the room's ACL denies gets nothing of the room.
        if let Ok(room_id) = <&RoomId>::try_from(req.room_id.as_str()) {
            if self.rooms.check_server_acl(room_id, origin).is_err() {
                return Err(forbidden());
            }
        }
        self.own_sfu(&req.url)?;
        let asker = Asker {
            user,
            device_id: "",
            identity: livekit::member_identity(user.as_str(), &req.member_id),
            refused: forbidden,
            may_publish: false,
        };
        self.mint(&req.room_id, &req.slot_id, asker).await
    }

    /// `url` is this server's SFU, or the request is 400 `M_INVALID_PARAM` (MSC4195).
    fn own_sfu(&self, url: &str) -> Result<()> {
        if self.livekit()?.is_url(url) {
            Ok(())
        } else {
            Err(Error::invalid_param("url is not an SFU of this server"))
        }
    }

    /// Asks `server` for a token for its SFU on behalf of `user`. Its 403 `M_FORBIDDEN` and
    /// 400 `M_INVALID_PARAM` reach the client as such, anything else as a 502 (MSC4195);
    /// what the remote server said goes to the log only.
    async fn remote_token(
        &self,
        user: &UserId,
        server: &ServerName,
        req: &SlotTokenRequest,
    ) -> Result<TokenAnswer> {
        let body = serde_json::to_value(ServerTokenRequest {
            user_id: user.to_string(),
            url: req.url.clone(),
            room_id: req.room_id.clone(),
            slot_id: req.slot_id.clone(),
            member_id: req.member_id.clone(),
        })?;
        let bad_gateway = || {
            Error::new(
                StatusCode::BAD_GATEWAY,
                ErrorKind::Unknown,
                format!("{server} did not give a token for its SFU"),
            )
        };
        for path in SERVER_TOKEN_PATHS {
            let (status, answer) = request::signed_json(
                &self.federation,
                &self.keys,
                &self.config.server_name,
                server,
                http::Method::POST,
                path,
                Some(&body),
            )
            .await
            .map_err(|_| bad_gateway())?;
            let errcode = answer.get("errcode").and_then(Value::as_str);
            if status.is_success() {
                let jwt = answer.get("jwt").and_then(Value::as_str).ok_or_else(|| {
                    tracing::info!(%server, "a token answer without a jwt");
                    bad_gateway()
                })?;
                return Ok(TokenAnswer {
                    url: req.url.clone(),
                    jwt: jwt.to_owned(),
                });
            }
            tracing::info!(%server, %status, ?errcode, path, "SFU token refused");
            match (status, errcode) {
                // Not this path: the unstable one may be there.
                (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, _)
                    if path == SERVER_TOKEN_PATHS[0] =>
                {
                    continue
                }
                (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")) => {
                    return Err(Error::forbidden(format!(
                        "{server} refused: not a joined member of that room there, or not \
                         allowed in its calls"
                    )))
                }
                (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")) => {
                    return Err(Error::invalid_param(format!(
                        "{server} refused the request: url is not one of its SFUs"
                    )))
                }
                _ => return Err(bad_gateway()),
            }
        }
        Err(bad_gateway())
    }

    /// The focus service URL's `get_token`: MSC4195's body with an OpenID token, as Element
    /// Call sends it to lk-jwt-service.
    pub async fn token_for_openid(
        &self,
        token: &OpenIdToken,
        room_id: &str,
        slot_id: &str,
        member: &RtcMember,
    ) -> Result<TokenAnswer> {
        self.livekit()?;
        Self::check_member(slot_id, member)?;
        let user = self.openid_user(token).await?;
        if member
            .claimed_user_id
            .as_deref()
            .is_some_and(|c| c != user.as_str())
        {
            return Err(unauthorized());
        }
        let asker = Asker {
            user: &user,
            device_id: &member.claimed_device_id,
            identity: livekit::identity(user.as_str(), &member.claimed_device_id, &member.id),
            refused: unauthorized,
            may_publish: true,
        };
        self.mint(room_id, slot_id, asker).await
    }

    /// The legacy `POST /sfu/get` of lk-jwt-service: the room's one call, the identity
    /// `user:device` older Element Call builds expect.
    pub async fn token_legacy(
        &self,
        token: &OpenIdToken,
        room_id: &str,
        device_id: &str,
    ) -> Result<TokenAnswer> {
        self.livekit()?;
        checked("device_id", device_id)?;
        let user = self.openid_user(token).await?;
        let asker = Asker {
            user: &user,
            device_id,
            identity: format!("{user}:{device_id}"),
            refused: unauthorized,
            may_publish: true,
        };
        self.mint(room_id, livekit::ROOM_CALL_SLOT, asker).await
    }

    /// Whose OpenID token this is: asked of this server's accounts, or of the token's server
    /// over federation. Any failure is the same `M_UNAUTHORIZED` (MSC4195's security
    /// considerations); the detail goes to the log.
    async fn openid_user(&self, token: &OpenIdToken) -> Result<OwnedUserId> {
        checked("openid_token.access_token", &token.access_token)?;
        let server = ServerName::parse(&token.matrix_server_name)
            .map_err(|_| Error::bad_json("openid_token.matrix_server_name is not a server name"))?;
        if server.as_str() == self.config.server_name {
            return self
                .accounts
                .openid_user(&token.access_token)?
                .ok_or_else(unauthorized);
        }
        let path = format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            crate::percent_encode(&token.access_token)
        );
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::internal(format!("userinfo request: {e}")))?;
        let answer = match self.federation.send(&server, request).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(server = %server, error = %e, "OpenID userinfo unreachable");
                return Err(unauthorized());
            }
        };
        if !answer.status.is_success() {
            tracing::info!(server = %server, status = %answer.status, "OpenID token refused");
            return Err(unauthorized());
        }
        let sub = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("sub").and_then(Value::as_str).map(str::to_owned))
            .and_then(|s| OwnedUserId::try_from(s).ok());
        match sub {
            // A server vouches for its own users only.
            Some(user) if user.server_name() == server => Ok(user),
            _ => {
                tracing::info!(server = %server, "OpenID userinfo named no user of that server");
                Err(unauthorized())
            }
        }
    }

    /// Checks the user against the room and its rules, makes sure the LiveKit room exists,
    /// then signs their token and keeps a row of it.
    async fn mint(&self, room_id: &str, slot_id: &str, asker: Asker<'_>) -> Result<TokenAnswer> {
        let livekit = self.livekit()?;
        let user = asker.user;
        self.ratelimit.check(Limit::Rtc, user.as_str())?;
        let room_id = <&RoomId>::try_from(room_id).map_err(|_| (asker.refused)())?;
        if self.rooms.room(room_id)?.is_none() || !self.rooms.is_joined(room_id, user)? {
            return Err((asker.refused)());
        }
        let (mut publish, attributes) = match self.access.grant(&self.rooms, room_id, user)? {
            CallGrant::Allowed {
                publish,
                attributes,
            } => (publish, attributes),
            CallGrant::Refused(why) => return Err(Error::forbidden(why)),
        };
        if !asker.may_publish {
            publish.audio = false;
            publish.video = false;
        }
        let publish = self.apply_mute(room_id, user, publish)?;
        let alias = livekit::room_alias(room_id.as_str(), slot_id);
        self.ensure_room(livekit, &alias).await;
        let jwt = livekit.join_token(&alias, &asker.identity, publish, &attributes)?;
        let key = (room_id.to_owned(), user.to_owned(), asker.identity.clone());
        let delegated = self
            .participants
            .lock()
            .get(&key)
            .and_then(|p| p.delegated.clone());
        let participant = Participant {
            alias,
            device_id: asker.device_id.to_owned(),
            issued_at: now_ms(),
            connected: false,
            publish,
            delegated,
        };
        self.store(room_id, user, &asker.identity, Some(&participant))?;
        self.prune_unused(room_id, user)?;
        Ok(TokenAnswer {
            url: livekit.url.clone(),
            jwt,
        })
    }

    /// Creates the LiveKit room unless it was created lately: tokens never carry
    /// `roomCreate` (MSC4195), so an SFU that does not create rooms on join still admits
    /// them. An SFU that cannot be reached is logged, not an error: the token is still good
    /// with LiveKit's default `auto_create`, and tokens never wait for a down SFU for long.
    async fn ensure_room(&self, livekit: &LiveKit, alias: &str) {
        let now = now_ms();
        {
            let mut created = self.created.lock();
            if created
                .get(alias)
                .is_some_and(|at| now.saturating_sub(*at) < ROOM_CREATED_FOR_MS)
            {
                return;
            }
            if created.len() >= MAX_CREATED_ROOMS {
                let oldest = created
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    created.remove(&oldest);
                }
            }
            created.insert(alias.to_owned(), now);
        }
        if let Err(e) = livekit.create_room(alias).await {
            tracing::warn!(%alias, error = %e, "could not create the LiveKit room");
        }
    }

    /// MSC4195 `delegate_delayed_leave`: from now on the focus restarts `user`'s delayed
    /// leave event while the member is connected to this server's SFU (or still expected),
    /// and sends it as soon as LiveKit says they left. A later delegation for the same
    /// member replaces this one.
    pub fn delegate_leave(
        &self,
        user: &UserId,
        device_id: &str,
        req: &DelegateLeave,
    ) -> Result<()> {
        check_slot(&req.url, &req.slot_id, &req.member_id)?;
        checked("delay_id", &req.delay_id)?;
        self.own_sfu(&req.url)?;
        self.ratelimit.check(Limit::Rtc, user.as_str())?;
        let invalid = || {
            Error::invalid_param(
                "no scheduled delayed event of yours in that room has that delay_id",
            )
        };
        let record = self
            .delayed
            .get(user, &req.delay_id)
            .map_err(|_| invalid())?;
        if record.room_id.as_str() != req.room_id || record.finalised.is_some() {
            return Err(invalid());
        }
        let room_id = record.room_id.clone();
        let identity = livekit::member_identity(user.as_str(), &req.member_id);
        let alias = livekit::room_alias(room_id.as_str(), &req.slot_id);
        let key = (room_id.clone(), user.to_owned(), identity.clone());
        let existing = self.participants.lock().get(&key).cloned();
        let participant = match existing {
            Some(mut p) => {
                p.alias = alias;
                p.delegated = Some(req.delay_id.clone());
                p
            }
            // Delegated before the token (or after it was dropped): the member is expected.
            None => Participant {
                alias,
                device_id: device_id.to_owned(),
                issued_at: now_ms(),
                connected: false,
                publish: Publish::default(),
                delegated: Some(req.delay_id.clone()),
            },
        };
        self.store(&room_id, user, &identity, Some(&participant))
    }

    /// Keeps delegated leave events alive (restarted when half their delay has run) for
    /// members connected, or expected while a token could still admit them; forgets those
    /// finalised elsewhere or no longer expected (their event then fires on its own).
    pub fn start(self: &Arc<Self>) {
        if self.livekit.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DELEGATION_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(rtc) = weak.upgrade() else { return };
                rtc.keep_delegations_alive().await;
            }
        });
    }

    async fn keep_delegations_alive(&self) {
        let now = now_ms();
        let expected_since = now.saturating_sub(self.config.livekit_token_ttl_ms);
        let delegated: Vec<(Key, Participant, String)> = self
            .participants
            .lock()
            .iter()
            .filter_map(|(k, p)| p.delegated.clone().map(|d| (k.clone(), p.clone(), d)))
            .collect();
        for (key, mut participant, delay_id) in delegated {
            let live = match self.delayed.get(&key.1, &delay_id) {
                Ok(record) if record.finalised.is_none() => Some(record),
                _ => None,
            };
            let expected = participant.connected || participant.issued_at >= expected_since;
            let Some(record) = live.filter(|_| expected) else {
                participant.delegated = None;
                if let Err(e) = self.store(&key.0, &key.1, &key.2, Some(&participant)) {
                    tracing::warn!(error = %e, "could not forget a delegated leave event");
                }
                continue;
            };
            if now.saturating_sub(record.running_since) * 2 >= record.delay_ms {
                if let Err(e) = self
                    .delayed
                    .manage_delegated(&key.1, &delay_id, Action::Restart)
                    .await
                {
                    tracing::info!(%delay_id, error = %e, "could not restart a delegated leave event");
                }
            }
        }
    }

    /// The member left the SFU: their delegated leave event, if any, is sent now.
    async fn send_delegated(&self, user: &UserId, participant: &Participant) {
        let Some(delay_id) = &participant.delegated else {
            return;
        };
        if let Err(e) = self
            .delayed
            .manage_delegated(user, delay_id, Action::Send)
            .await
        {
            tracing::info!(%delay_id, error = %e, "could not send a delegated leave event");
        }
    }

    /// Drops a user's unused tokens for a room beyond [`MAX_UNUSED_TOKENS`] (oldest first)
    /// and those too old to admit anyone any more.
    fn prune_unused(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let expired_before = now_ms().saturating_sub(self.config.livekit_token_ttl_ms);
        let mut unused: Vec<(u64, String)> = self
            .participants
            .lock()
            .iter()
            .filter(|(k, p)| k.0 == room_id && k.1 == user && !p.connected)
            .map(|(k, p)| (p.issued_at, k.2.clone()))
            .collect();
        unused.sort();
        let over = unused.len().saturating_sub(MAX_UNUSED_TOKENS);
        for (i, (issued_at, identity)) in unused.iter().enumerate() {
            if i < over || *issued_at < expired_before {
                self.store(room_id, user, identity, None)?;
            }
        }
        Ok(())
    }

    fn mutes(&self, room_id: &RoomId, user: &UserId) -> Result<Muted> {
        Ok(self
            .db
            .get(
                Table::RoomuseridentityRtcparticipant,
                &row_key(room_id.as_str(), user.as_str(), ""),
            )?
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default())
    }

    fn apply_mute(&self, room_id: &RoomId, user: &UserId, mut publish: Publish) -> Result<Publish> {
        let muted = self.mutes(room_id, user)?;
        publish.audio &= !muted.mute;
        publish.listen &= !muted.deafen;
        Ok(publish)
    }

    fn store(
        &self,
        room_id: &RoomId,
        user: &UserId,
        identity: &str,
        participant: Option<&Participant>,
    ) -> Result<()> {
        let key = row_key(room_id.as_str(), user.as_str(), identity);
        let mut batch = Batch::new();
        match participant {
            Some(p) => batch.put(
                Table::RoomuseridentityRtcparticipant,
                key,
                serde_json::to_vec(p)?,
            ),
            None => batch.delete(Table::RoomuseridentityRtcparticipant, key),
        }
        self.db.write(batch)?;
        let key = (room_id.to_owned(), user.to_owned(), identity.to_owned());
        let mut map = self.participants.lock();
        match participant {
            Some(p) => map.insert(key, p.clone()),
            None => map.remove(&key),
        };
        Ok(())
    }

    /// LiveKit's webhook (`POST /_paracord/livekit/webhook`): `false` when the signature is
    /// not ours.
    pub async fn webhook(self: &Arc<Self>, body: &str, authorization: &str) -> Result<bool> {
        let livekit = self.livekit()?;
        let Some(event) = livekit.webhook(body, authorization) else {
            return Ok(false);
        };
        match event {
            Webhook::Joined { room, identity } => {
                let Some((key, mut p)) = self.find(&room, &identity) else {
                    // Not a token of ours (another deployment's, or one we dropped): out.
                    tracing::info!(%room, %identity, "an unknown participant joined; removing");
                    livekit.remove_participant(&room, &identity).await?;
                    return Ok(true);
                };
                p.connected = true;
                self.store(&key.0, &key.1, &key.2, Some(&p))?;
                // The state may have changed since the token was handed out.
                self.reconcile(&key.0).await;
            }
            Webhook::Left { room, identity } => {
                if let Some((key, p)) = self.find(&room, &identity) {
                    self.store(&key.0, &key.1, &key.2, None)?;
                    self.send_delegated(&key.1, &p).await;
                }
            }
            Webhook::RoomFinished { room } => {
                self.created.lock().remove(&room);
                let gone: Vec<(Key, Participant)> = self
                    .participants
                    .lock()
                    .iter()
                    .filter(|(_, p)| p.alias == room && p.connected)
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect();
                for (k, p) in gone {
                    self.store(&k.0, &k.1, &k.2, None)?;
                    self.send_delegated(&k.1, &p).await;
                }
            }
            Webhook::Other(_) => {}
        }
        Ok(true)
    }

    fn find(&self, alias: &str, identity: &str) -> Option<(Key, Participant)> {
        self.participants
            .lock()
            .iter()
            .find(|(k, p)| k.2 == identity && p.alias == alias)
            .map(|(k, p)| (k.clone(), p.clone()))
    }

    fn in_room(&self, room_id: &RoomId) -> Vec<(Key, Participant)> {
        self.participants
            .lock()
            .iter()
            .filter(|(k, _)| k.0 == room_id)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }

    /// Brings the SFU in line with the room's state for everyone with a token in it: a user
    /// no longer joined or no longer allowed is removed; one whose permissions changed gets
    /// them. Failures are logged: a down SFU never blocks the room.
    pub async fn reconcile(&self, room_id: &RoomId) {
        let Some(livekit) = self.livekit.as_ref() else {
            return;
        };
        for ((room, user, identity), p) in self.in_room(room_id) {
            let wanted = match self.wanted(&room, &user) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(%room, %user, error = %e, "cannot check a call participant");
                    continue;
                }
            };
            let result = match wanted {
                None => {
                    let removed = livekit.remove_participant(&p.alias, &identity).await;
                    if removed.is_ok() {
                        if let Err(e) = self.store(&room, &user, &identity, None) {
                            tracing::warn!(error = %e, "cannot drop a participant's row");
                        }
                        tracing::info!(%room, %user, "removed from the call");
                    }
                    removed
                }
                Some(publish) if publish != p.publish => {
                    let updated = if p.connected {
                        livekit
                            .update_permissions(&p.alias, &identity, publish)
                            .await
                    } else {
                        Ok(())
                    };
                    if updated.is_ok() {
                        let p = Participant { publish, ..p };
                        if let Err(e) = self.store(&room, &user, &identity, Some(&p)) {
                            tracing::warn!(error = %e, "cannot update a participant's row");
                        }
                    }
                    updated
                }
                Some(_) => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(%room, %user, error = %e, "cannot update the SFU");
            }
        }
    }

    /// What the user may publish now; `None`: they may not be in the call.
    fn wanted(&self, room: &RoomId, user: &UserId) -> Result<Option<Publish>> {
        if !self.rooms.is_joined(room, user)? {
            return Ok(None);
        }
        match self.access.grant(&self.rooms, room, user)? {
            CallGrant::Refused(_) => Ok(None),
            CallGrant::Allowed { publish, .. } => Ok(Some(self.apply_mute(room, user, publish)?)),
        }
    }

    /// Who is connected to the calls of a room the asker is joined to.
    pub fn in_call(&self, room_id: &RoomId, asker: &UserId) -> Result<Vec<InCall>> {
        if !self.rooms.is_joined(room_id, asker)? {
            return Err(Error::not_found("no such channel"));
        }
        let mut out = Vec::new();
        for ((_, user, _), p) in self.in_room(room_id) {
            if !p.connected {
                continue;
            }
            let muted = self.mutes(room_id, &user)?;
            out.push(InCall {
                user_id: user.to_string(),
                device_id: p.device_id,
                speak: p.publish.audio,
                stream: p.publish.video,
                server_muted: muted.mute,
                server_deafened: muted.deafen,
            });
        }
        Ok(out)
    }

    /// A moderator disconnects `target` from the room's calls: how many connections.
    pub async fn disconnect(
        &self,
        room_id: &RoomId,
        actor: &UserId,
        target: &UserId,
    ) -> Result<usize> {
        let livekit = self.livekit()?;
        self.moderator(room_id, actor, Moderation::Disconnect)?;
        let mut removed = 0;
        for ((room, user, identity), p) in self.in_room(room_id) {
            if user != target {
                continue;
            }
            if p.connected {
                livekit
                    .remove_participant(&p.alias, &identity)
                    .await
                    .map_err(|_| sfu_unreachable())?;
                removed += 1;
            }
            // Unused tokens go too: they would be refused when they connect anyway.
            self.store(&room, &user, &identity, None)?;
        }
        Ok(removed)
    }

    /// A moderator moves `target` from this room's call to `to`'s (MOVE_MEMBERS in both, and
    /// `target` allowed in `to`): they are disconnected here, and their client is told where
    /// to go (the API sends the `chat.paracord.voice.move` to-device message). The SFU cannot
    /// move a connection between rooms, so the client rejoins with a token of `to`.
    pub async fn move_member(
        &self,
        room_id: &RoomId,
        to: &RoomId,
        actor: &UserId,
        target: &UserId,
    ) -> Result<usize> {
        self.livekit()?;
        if room_id == to {
            return Err(Error::invalid_param(
                "channel_id is the channel they are in",
            ));
        }
        self.moderator(to, actor, Moderation::Disconnect)?;
        if self.rooms.room(to)?.is_none() {
            return Err(Error::not_found("no such channel"));
        }
        match self.access.grant(&self.rooms, to, target)? {
            CallGrant::Allowed { .. } => {}
            CallGrant::Refused(why) => {
                return Err(Error::forbidden(format!(
                    "They may not join that call: {why}"
                )))
            }
        }
        if !self.rooms.is_joined(to, target)? {
            return Err(Error::forbidden(
                "They may not join that call: not joined to that channel",
            ));
        }
        self.disconnect(room_id, actor, target).await
    }

    /// A moderator's server mute or deafen of `target` in the room: kept until undone, for
    /// this connection and the next tokens.
    pub async fn set_muted(
        &self,
        room_id: &RoomId,
        actor: &UserId,
        target: &UserId,
        action: Moderation,
        on: bool,
    ) -> Result<Muted> {
        self.livekit()?;
        self.moderator(room_id, actor, action)?;
        if !matches!(
            self.rooms.membership(room_id, target)?,
            Some(MembershipState::Join)
        ) {
            return Err(Error::not_found("that user is not in this channel"));
        }
        let mut muted = self.mutes(room_id, target)?;
        match action {
            Moderation::Mute => muted.mute = on,
            Moderation::Deafen => muted.deafen = on,
            Moderation::Disconnect => {}
        }
        let mut batch = Batch::new();
        let key = row_key(room_id.as_str(), target.as_str(), "");
        if muted == Muted::default() {
            batch.delete(Table::RoomuseridentityRtcparticipant, key);
        } else {
            batch.put(
                Table::RoomuseridentityRtcparticipant,
                key,
                serde_json::to_vec(&muted)?,
            );
        }
        self.db.write(batch)?;
        self.reconcile(room_id).await;
        Ok(muted)
    }

    fn moderator(&self, room_id: &RoomId, actor: &UserId, action: Moderation) -> Result<()> {
        if !self.rooms.is_joined(room_id, actor)? {
            return Err(Error::not_found("no such channel"));
        }
        self.access.moderates(&self.rooms, room_id, actor, action)
    }

    /// Rooms with participants connected whose state `changed` may decide: the room itself,
    /// or a room whose parent space it is (a guild's roles and members live in its space).
    /// Tokens not used yet need nothing: the room is checked again when they connect.
    fn affected_by(&self, changed: &RoomId) -> Vec<OwnedRoomId> {
        let rooms: std::collections::BTreeSet<OwnedRoomId> = self
            .participants
            .lock()
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(k, _)| k.0.clone())
            .collect();
        rooms
            .into_iter()
            .filter(|room| {
                room == changed
                    || self.rooms.current_state(room).ok().is_some_and(|s| {
                        s.contains_key(&("m.space.parent".to_owned(), changed.to_string()))
                    })
            })
            .collect()
    }
}

fn sfu_unreachable() -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        "The voice server (SFU) could not be reached; try again",
    )
}

/// Keeps the SFU in step with the rooms: any state event in a room with call participants,
/// or in its parent space, makes the focus check them again (off the request's path).
pub struct RtcObserver(OnceLock<Weak<Rtc>>);

impl RtcObserver {
    pub fn new() -> Self {
        Self(OnceLock::new())
    }

    pub fn set_rtc(&self, rtc: Weak<Rtc>) {
        let _ = self.0.set(rtc);
    }
}

impl Default for RtcObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl EventObserver for RtcObserver {
    fn committed(
        &self,
        _rooms: &Arc<Rooms>,
        room_id: &RoomId,
        pdu: &Pdu,
        _notifications: &[Notification],
    ) -> Option<FollowUp> {
        pdu.state_key.as_ref()?;
        let rtc = self.0.get()?.upgrade()?;
        if rtc.livekit.is_none() || !rtc.participants.lock().values().any(|p| p.connected) {
            return None;
        }
        let affected = rtc.affected_by(room_id);
        if affected.is_empty() {
            return None;
        }
        // Not a follow-up: the request that made the event is not held by the SFU.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for room in affected {
                    rtc.reconcile(&room).await;
                }
            });
        }
        None
    }
}
