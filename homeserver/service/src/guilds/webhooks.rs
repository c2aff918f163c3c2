//! Webhooks (spec/webhooks.md): a channel's secret URLs that post into it as the webhook's
//! own user, with Discord's (and Slack's and GitHub's) execute bodies.
//!
//! A webhook is two things. Its public part is `chat.paracord.webhook` state in its channel,
//! keyed by its id and naming its user (`@_webhook_<id>:server`, a user of the server's
//! built-in appservice registration, `appservice::WEBHOOKS_ID`), written by the guild host as the owner like the
//! rest of the guild's state: it tells every Paracord server that this user may post there
//! (`enforce`) and keeps it at the sending level (`store::reproject`). Its secret part is a
//! row of `webhookid_webhook` on the guild host: the channel, the SHA-256 of its token (the
//! token itself is shown once, when made or rotated) and the GitHub secret. Executing checks
//! the token in constant time, then that the webhook is still in the channel's state and its
//! user still joined there, so a deleted webhook or channel stops at once.

pub mod render;

use std::sync::Arc;

use hmac::{Hmac, Mac};
use paracord_core::{time::now_ms, Error, ErrorKind, Result};
use paracord_storage::{Batch, Db, Table};
use rand::Rng;
use ruma::{
    events::room::member::MembershipState, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::instrument;

pub use self::render::{Embed, ExecuteError, Message, Upload};
use super::{
    events::{ChannelContent, ChannelKind, WebhookContent},
    permissions::Permissions,
    store::{
        channel_ids, guild_content, host_owner, is_webhook, load_guild, load_member, overwrites,
        reproject, send_state, WEBHOOK_EVENT, WEBHOOK_LOCALPART_PREFIX,
    },
};
use crate::{
    accounts::Accounts,
    media::Media,
    ratelimit::{Limit, RateLimiter},
    rooms::{NewEvent, Rooms},
};

/// A webhook as stored on the guild host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Webhook {
    /// 18 or 19 digits, like Discord's ids, so clients that check the URL's shape take it.
    pub id: String,
    pub guild_id: OwnedRoomId,
    pub channel_id: OwnedRoomId,
    /// `@_webhook_<id>:server`.
    pub user_id: OwnedUserId,
    pub name: String,
    pub avatar_url: Option<String>,
    /// Who made it.
    pub creator: OwnedUserId,
    pub created_at: u64,
    /// Hex SHA-256 of the token.
    token_sha256: String,
    /// The GitHub secret (`X-Hub-Signature-256`), when set.
    #[serde(default)]
    secret: Option<String>,
}

impl Webhook {
    /// Whether a GitHub secret is set.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }
}

/// A webhook with its token, as made or rotated: the only time the token is known.
#[derive(Clone, Debug)]
pub struct WithToken {
    pub webhook: Webhook,
    pub token: String,
}

/// A `PATCH /webhooks/{id}`: `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub name: Option<String>,
    pub avatar_url: Option<Option<String>>,
    pub secret: Option<Option<String>>,
}

/// What an execution posted: the events, the first one being the message's.
#[derive(Clone, Debug)]
pub struct Posted {
    pub webhook: Webhook,
    pub event_ids: Vec<OwnedEventId>,
    /// The files' contents, in order.
    pub files: Vec<Value>,
    pub message: Message,
    pub ts: u64,
}

/// The webhooks of this server (the guild host of their guilds).
pub struct Webhooks {
    db: Arc<Db>,
    rooms: Arc<Rooms>,
    accounts: Arc<Accounts>,
    media: Arc<Media>,
    ratelimit: Arc<RateLimiter>,
    /// http(s) avatar URLs of executions, imported into the media repository: URL → mxc.
    avatars: parking_lot::Mutex<std::collections::HashMap<String, String>>,
}

/// How many imported avatar URLs are remembered (then the map starts again).
const AVATAR_CACHE: usize = 1024;

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equal bytes, compared in constant time for equal lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn missing_manage_webhooks() -> Error {
    Error::forbidden("Missing permission: MANAGE_WEBHOOKS")
}

/// Most characters of a webhook's name (Discord's limit).
pub const MAX_NAME: usize = 80;

/// Checks a webhook name: 1 to 80 characters, not only spaces.
pub fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME {
        return Err(Error::invalid_param("name must be 1 to 80 characters"));
    }
    Ok(name.to_owned())
}

impl Webhooks {
    pub fn new(
        db: Arc<Db>,
        rooms: Arc<Rooms>,
        accounts: Arc<Accounts>,
        media: Arc<Media>,
        ratelimit: Arc<RateLimiter>,
    ) -> Self {
        Self {
            db,
            rooms,
            accounts,
            media,
            ratelimit,
            avatars: parking_lot::Mutex::default(),
        }
    }

    /// The mxc URI of an execution's avatar: an `mxc://` one as it is, an http(s) one fetched
    /// (through the outbound guard of previews) and stored once per URL, as Discord fetches
    /// it. `None` when there is none or it cannot be fetched as an image (the message is
    /// posted without it).
    async fn avatar_mxc(&self, webhook: &Webhook, message: &Message) -> Option<String> {
        let url = message.avatar_url.as_deref()?;
        if url.starts_with("mxc://") {
            return Some(url.to_owned());
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return None;
        }
        if let Some(mxc) = self.avatars.lock().get(url) {
            return Some(mxc.clone());
        }
        match self.media.import_image(&webhook.user_id, url).await {
            Ok(mxc) => {
                let mut cache = self.avatars.lock();
                if cache.len() >= AVATAR_CACHE {
                    cache.clear();
                }
                cache.insert(url.to_owned(), mxc.clone());
                Some(mxc)
            }
            Err(e) => {
                tracing::info!(webhook = %webhook.id, "a webhook avatar was not fetched: {e}");
                None
            }
        }
    }

    fn load(&self, id: &str) -> Result<Option<Webhook>> {
        match self.db.get(Table::WebhookidWebhook, id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn store(&self, webhook: &Webhook) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Table::WebhookidWebhook,
            webhook.id.as_bytes().to_vec(),
            serde_json::to_vec(webhook)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// The guild of a channel: its `m.space.parent` that lists it as a child.
    fn channel_guild(&self, channel: &RoomId) -> Result<OwnedRoomId> {
        let rooms = &self.rooms;
        let unknown = || Error::not_found("no such channel");
        if rooms.room(channel)?.is_none() {
            return Err(unknown());
        }
        let state = rooms.current_state(channel)?;
        let parents: Vec<OwnedRoomId> = state
            .range(("m.space.parent".to_owned(), String::new())..)
            .take_while(|((k, _), _)| k == "m.space.parent")
            .filter_map(|((_, key), _)| OwnedRoomId::try_from(key.as_str()).ok())
            .collect();
        for guild_id in parents {
            if rooms.room(&guild_id)?.is_some()
                && guild_content(rooms, &guild_id).is_ok()
                && channel_ids(rooms, &guild_id)?.iter().any(|c| c == channel)
            {
                return Ok(guild_id);
            }
        }
        Err(unknown())
    }

    /// The channel's guild, its owner (this server must be the guild host:
    /// `Error::HostedElsewhere` otherwise) and the actor's permissions there. A channel the
    /// actor cannot see is unknown.
    fn access(
        &self,
        channel: &RoomId,
        actor: &UserId,
    ) -> Result<(OwnedRoomId, OwnedUserId, Permissions, ChannelContent)> {
        let rooms = &self.rooms;
        let guild_id = self.channel_guild(channel)?;
        let guild = load_guild(rooms, &guild_id)?;
        let owner = host_owner(rooms, &guild)?;
        let state = rooms.current_state(channel)?;
        let content: ChannelContent = rooms
            .state_content(&state, "chat.paracord.channel", "")?
            .and_then(|c| serde_json::from_value(c).ok())
            .ok_or_else(|| Error::not_found("no such channel"))?;
        if !rooms.is_joined(&guild_id, actor)? {
            return Err(Error::not_found("no such channel"));
        }
        let (o, _) = overwrites(rooms, channel)?;
        let perms = guild.channel_permissions(&load_member(rooms, &guild_id, actor)?, &o, now_ms());
        if !perms.contains(Permissions::VIEW_CHANNEL) {
            return Err(Error::not_found("no such channel"));
        }
        Ok((guild_id, owner, perms, content))
    }

    /// The channel's guild and owner when the actor has MANAGE_WEBHOOKS there.
    fn manage(&self, channel: &RoomId, actor: &UserId) -> Result<(OwnedRoomId, OwnedUserId)> {
        let (guild_id, owner, perms, _) = self.access(channel, actor)?;
        if !perms.contains(Permissions::MANAGE_WEBHOOKS) {
            return Err(missing_manage_webhooks());
        }
        Ok((guild_id, owner))
    }

    /// A webhook the actor may manage: unknown ids, and webhooks of channels the actor
    /// cannot see, are 404; without MANAGE_WEBHOOKS there, 403.
    fn managed(&self, id: &str, actor: &UserId) -> Result<(Webhook, OwnedUserId)> {
        let unknown = || Error::not_found("no such webhook");
        let Some(webhook) = self.load(id)? else {
            // A webhook of a guild hosted elsewhere is in the state of one of the actor's
            // channels: asking there says where to relay (`Error::HostedElsewhere`).
            if let Some(channel) = self.channel_naming(id, actor)? {
                match self.manage(&channel, actor) {
                    Err(e) if matches!(e, Error::HostedElsewhere(_)) => return Err(e),
                    Err(e) if matches!(e.kind(), Some(ErrorKind::Forbidden)) => return Err(e),
                    _ => {}
                }
            }
            return Err(unknown());
        };
        let (_, owner) = match self.manage(&webhook.channel_id, actor) {
            Err(e) if matches!(e.kind(), Some(ErrorKind::NotFound)) => {
                return Err(Error::not_found("no such webhook"))
            }
            other => other?,
        };
        Ok((webhook, owner))
    }

    /// The joined room of `actor` whose `chat.paracord.webhook` state names webhook `id`.
    fn channel_naming(&self, id: &str, actor: &UserId) -> Result<Option<OwnedRoomId>> {
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        for (room, record) in self.rooms.user_rooms(actor)? {
            if record.membership != MembershipState::Join {
                continue;
            }
            let state = self.rooms.current_state(&room)?;
            if self
                .rooms
                .state_content(&state, WEBHOOK_EVENT, id)?
                .is_some_and(|c| c.get("id").and_then(Value::as_str) == Some(id))
            {
                return Ok(Some(room));
            }
        }
        Ok(None)
    }

    fn public_content(webhook: &Webhook) -> Result<Value> {
        Ok(serde_json::to_value(WebhookContent {
            id: webhook.id.clone(),
            user_id: webhook.user_id.to_string(),
            name: webhook.name.clone(),
            avatar_url: webhook.avatar_url.clone(),
            creator: webhook.creator.to_string(),
        })?)
    }

    /// The webhook user's profile in the channel: its name, and its avatar when it is an
    /// `mxc://` URI (other URLs are not fetched).
    fn member_profile(webhook: &Webhook) -> (Option<String>, Option<String>) {
        (
            Some(webhook.name.clone()),
            webhook
                .avatar_url
                .clone()
                .filter(|a| a.starts_with("mxc://")),
        )
    }

    /// Lets the webhook's user into its channel (invited by the owner, then joined).
    async fn enter(&self, webhook: &Webhook, owner: &UserId) -> Result<()> {
        let rooms = &self.rooms;
        let channel = &webhook.channel_id;
        match rooms.membership(channel, &webhook.user_id)? {
            Some(MembershipState::Join) => return Ok(()),
            Some(MembershipState::Invite) => {}
            _ => {
                rooms
                    .invite(channel, owner, &webhook.user_id, None, false)
                    .await?;
            }
        }
        rooms
            .join(
                channel,
                &webhook.user_id,
                Self::member_profile(webhook),
                None,
            )
            .await
            .map(drop)
    }

    /// `POST /channels/{id}/webhooks`: MANAGE_WEBHOOKS in the channel, which must be a text
    /// channel (not a category).
    #[instrument(skip_all, fields(channel = %channel))]
    pub async fn create(
        &self,
        channel: &RoomId,
        actor: &UserId,
        name: String,
        avatar_url: Option<String>,
    ) -> Result<WithToken> {
        let (guild_id, owner, perms, content) = self.access(channel, actor)?;
        if !perms.contains(Permissions::MANAGE_WEBHOOKS) {
            return Err(missing_manage_webhooks());
        }
        if content.kind == ChannelKind::Category {
            return Err(Error::invalid_param("a category has no webhooks"));
        }
        let name = check_name(&name)?;
        let mut id;
        loop {
            id = rand::thread_rng()
                .gen_range(100_000_000_000_000_000u64..u64::MAX / 2)
                .to_string();
            if self.load(&id)?.is_none() {
                break;
            }
        }
        let user_id = self
            .accounts
            .user_id_for(&format!("{WEBHOOK_LOCALPART_PREFIX}{id}"))?;
        let token = crate::random::random_string(68);
        let webhook = Webhook {
            id,
            guild_id: guild_id.clone(),
            channel_id: channel.to_owned(),
            user_id,
            name,
            avatar_url,
            creator: actor.to_owned(),
            created_at: now_ms(),
            token_sha256: sha256_hex(&token),
            secret: None,
        };
        self.accounts
            .ensure_system_account(&webhook.user_id, &webhook.name)
            .await?;
        send_state(
            &self.rooms,
            channel,
            &owner,
            WEBHOOK_EVENT,
            &webhook.id,
            Self::public_content(&webhook)?,
        )
        .await?;
        reproject(&self.rooms, &guild_id).await?;
        self.enter(&webhook, &owner).await?;
        self.store(&webhook)?;
        Ok(WithToken { webhook, token })
    }

    /// `GET /channels/{id}/webhooks`: MANAGE_WEBHOOKS in the channel.
    pub fn list_channel(&self, channel: &RoomId, actor: &UserId) -> Result<Vec<Webhook>> {
        self.manage(channel, actor)?;
        self.of_channel(channel)
    }

    fn of_channel(&self, channel: &RoomId) -> Result<Vec<Webhook>> {
        let state = self.rooms.current_state(channel)?;
        let mut out = Vec::new();
        for ((kind, key), _) in state.range((WEBHOOK_EVENT.to_owned(), String::new())..) {
            if kind != WEBHOOK_EVENT {
                break;
            }
            let id = self
                .rooms
                .state_content(&state, kind, key)?
                .and_then(|c| c.get("id").and_then(Value::as_str).map(str::to_owned));
            if let Some(w) = id.map(|id| self.load(&id)).transpose()?.flatten() {
                if w.channel_id == channel {
                    out.push(w);
                }
            }
        }
        Ok(out)
    }

    /// `GET /guilds/{id}/webhooks`: the webhooks of every channel where the actor has
    /// MANAGE_WEBHOOKS (none: 403).
    pub fn list_guild(&self, guild_id: &RoomId, actor: &UserId) -> Result<Vec<Webhook>> {
        let rooms = &self.rooms;
        let guild = load_guild(rooms, guild_id)?;
        host_owner(rooms, &guild)?;
        if !rooms.is_joined(guild_id, actor)? {
            return Err(Error::not_found("no such guild"));
        }
        if !guild
            .base_permissions(&load_member(rooms, guild_id, actor)?)
            .contains(Permissions::MANAGE_WEBHOOKS)
        {
            return Err(missing_manage_webhooks());
        }
        let mut out = Vec::new();
        for channel in channel_ids(rooms, guild_id)? {
            if self.manage(&channel, actor).is_ok() {
                out.extend(self.of_channel(&channel)?);
            }
        }
        Ok(out)
    }

    /// `GET /webhooks/{id}`.
    pub fn get(&self, id: &str, actor: &UserId) -> Result<Webhook> {
        Ok(self.managed(id, actor)?.0)
    }

    /// `PATCH /webhooks/{id}`: a new name or avatar shows in the channel at once (the
    /// webhook user's membership); the GitHub secret is kept here only.
    #[instrument(skip_all, fields(webhook = %id))]
    pub async fn modify(&self, id: &str, actor: &UserId, changes: Changes) -> Result<Webhook> {
        let (webhook, owner) = self.managed(id, actor)?;
        self.apply(webhook, &owner, changes).await
    }

    /// `PATCH /api/webhooks/{id}/{token}`: the name and avatar, with the token for authority
    /// (Discord's); the GitHub secret is not changed this way.
    pub async fn modify_with_token(&self, webhook: Webhook, changes: Changes) -> Result<Webhook> {
        if changes.secret.is_some() {
            return Err(Error::invalid_param(
                "the secret is set by a member with MANAGE_WEBHOOKS",
            ));
        }
        let owner = self.owner_of(&webhook)?;
        self.apply(webhook, &owner, changes).await
    }

    /// The owner of the webhook's guild, who writes its state (this server is its host).
    fn owner_of(&self, webhook: &Webhook) -> Result<OwnedUserId> {
        host_owner(&self.rooms, &load_guild(&self.rooms, &webhook.guild_id)?)
    }

    async fn apply(
        &self,
        mut webhook: Webhook,
        owner: &UserId,
        changes: Changes,
    ) -> Result<Webhook> {
        let mut public = false;
        if let Some(name) = changes.name {
            public |= name != webhook.name;
            webhook.name = check_name(&name)?;
        }
        if let Some(avatar) = changes.avatar_url {
            public |= avatar != webhook.avatar_url;
            webhook.avatar_url = avatar;
        }
        if let Some(secret) = changes.secret {
            webhook.secret = secret.filter(|s| !s.is_empty());
        }
        self.store(&webhook)?;
        if public {
            send_state(
                &self.rooms,
                &webhook.channel_id,
                owner,
                WEBHOOK_EVENT,
                &webhook.id,
                Self::public_content(&webhook)?,
            )
            .await?;
            if self
                .rooms
                .membership(&webhook.channel_id, &webhook.user_id)?
                == Some(MembershipState::Join)
            {
                self.rooms
                    .join(
                        &webhook.channel_id,
                        &webhook.user_id,
                        Self::member_profile(&webhook),
                        None,
                    )
                    .await?;
            }
        }
        Ok(webhook)
    }

    /// `POST /webhooks/{id}/token`: a new token; the old one stops working at once.
    pub fn rotate(&self, id: &str, actor: &UserId) -> Result<WithToken> {
        let (mut webhook, _) = self.managed(id, actor)?;
        let token = crate::random::random_string(68);
        webhook.token_sha256 = sha256_hex(&token);
        self.store(&webhook)?;
        Ok(WithToken { webhook, token })
    }

    /// `DELETE /webhooks/{id}`: the row goes first (executions stop at once), then its state
    /// entry and its user's membership.
    #[instrument(skip_all, fields(webhook = %id))]
    pub async fn delete(&self, id: &str, actor: &UserId) -> Result<()> {
        let (webhook, owner) = self.managed(id, actor)?;
        self.remove(webhook, &owner).await
    }

    /// `DELETE /api/webhooks/{id}/{token}`: the token is authority enough (Discord's).
    pub async fn delete_with_token(&self, webhook: Webhook) -> Result<()> {
        let owner = self.owner_of(&webhook)?;
        self.remove(webhook, &owner).await
    }

    async fn remove(&self, webhook: Webhook, owner: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(Table::WebhookidWebhook, webhook.id.as_bytes().to_vec());
        self.db.write(batch)?;
        send_state(
            &self.rooms,
            &webhook.channel_id,
            owner,
            WEBHOOK_EVENT,
            &webhook.id,
            json!({}),
        )
        .await?;
        if matches!(
            self.rooms
                .membership(&webhook.channel_id, &webhook.user_id)?,
            Some(MembershipState::Join) | Some(MembershipState::Invite)
        ) {
            self.rooms
                .leave(&webhook.channel_id, &webhook.user_id, None)
                .await?;
        }
        reproject(&self.rooms, &webhook.guild_id).await
    }

    /// The webhook of this id and token, still in its channel with its user joined there.
    /// A wrong id, a wrong token and a webhook that no longer works give the same answer.
    pub fn authenticate(
        &self,
        id: &str,
        token: &str,
    ) -> std::result::Result<Webhook, ExecuteError> {
        let webhook = self
            .load(id)
            .map_err(ExecuteError::Internal)?
            .ok_or(ExecuteError::UnknownWebhook)?;
        let given = Sha256::digest(token.as_bytes());
        let stored = hex::decode(&webhook.token_sha256).unwrap_or_default();
        if !same(&given, &stored) {
            return Err(ExecuteError::UnknownWebhook);
        }
        // Whether its channel still holds it (`Some`), and its user is joined there.
        let live = || -> Result<Option<bool>> {
            let rooms = &self.rooms;
            let channel = &webhook.channel_id;
            if rooms.room(channel)?.is_none() {
                return Ok(None);
            }
            let state = rooms.current_state(channel)?;
            let declared = rooms
                .state_content(&state, WEBHOOK_EVENT, &webhook.id)?
                .is_some_and(|c| c["user_id"].as_str() == Some(webhook.user_id.as_str()));
            let is_channel = rooms
                .state_content(&state, "chat.paracord.channel", "")?
                .is_some_and(|c| serde_json::from_value::<ChannelContent>(c).is_ok());
            if !declared
                || !is_channel
                || !is_webhook(rooms, &state, webhook.user_id.as_str())?
                || self.channel_guild(channel).is_err()
            {
                return Ok(None);
            }
            Ok(Some(
                rooms.membership(channel, &webhook.user_id)? == Some(MembershipState::Join),
            ))
        };
        match live().map_err(ExecuteError::Internal)? {
            Some(true) => {}
            Some(false) => return Err(ExecuteError::UnknownWebhook),
            None => {
                // Its channel was deleted (or no longer holds it): the row has no use left.
                let mut batch = Batch::new();
                batch.delete(Table::WebhookidWebhook, webhook.id.as_bytes().to_vec());
                self.db
                    .write(batch)
                    .map_err(|e| ExecuteError::Internal(e.into()))?;
                return Err(ExecuteError::UnknownWebhook);
            }
        }
        Ok(webhook)
    }

    /// Takes one request from the webhook's bucket (5 per 2 seconds).
    pub fn limit(&self, webhook: &Webhook) -> std::result::Result<(), ExecuteError> {
        self.ratelimit
            .check(Limit::Webhook, &format!("webhook:{}", webhook.id))
            .map_err(|e| match e.kind() {
                Some(ErrorKind::LimitExceeded { retry_after_ms }) => ExecuteError::RateLimited {
                    retry_after_ms: *retry_after_ms,
                },
                _ => ExecuteError::Internal(e),
            })
    }

    /// Checks `X-Hub-Signature-256` (`sha256=<hex hmac of the body>`) when the webhook has a
    /// secret; without one, any request passes.
    pub fn check_github_signature(
        &self,
        webhook: &Webhook,
        signature: Option<&str>,
        body: &[u8],
    ) -> std::result::Result<(), ExecuteError> {
        let Some(secret) = &webhook.secret else {
            return Ok(());
        };
        let given = signature
            .and_then(|s| s.strip_prefix("sha256="))
            .and_then(|h| hex::decode(h.trim()).ok())
            .ok_or(ExecuteError::BadSignature)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| ExecuteError::Internal(Error::internal(e.to_string())))?;
        mac.update(body);
        mac.verify_slice(&given)
            .map_err(|_| ExecuteError::BadSignature)
    }

    /// A message this webhook posted in its channel, by event id: anything else is unknown.
    fn own_message(
        &self,
        webhook: &Webhook,
        event_id: &str,
    ) -> std::result::Result<OwnedEventId, ExecuteError> {
        let id = OwnedEventId::try_from(event_id).map_err(|_| ExecuteError::UnknownMessage)?;
        let pdu = self
            .rooms
            .pdu(&id)
            .map_err(ExecuteError::Internal)?
            .ok_or(ExecuteError::UnknownMessage)?;
        if pdu.room_id.as_deref() != Some(webhook.channel_id.as_ref())
            || pdu.sender != webhook.user_id
            || pdu.kind.to_string() != "m.room.message"
            || pdu.state_key.is_some()
        {
            return Err(ExecuteError::UnknownMessage);
        }
        Ok(id)
    }

    /// `DELETE /api/webhooks/{id}/{token}/messages/{eventId}`: redacts a message the webhook
    /// posted.
    pub async fn delete_message(
        &self,
        webhook: &Webhook,
        event_id: &str,
    ) -> std::result::Result<(), ExecuteError> {
        let target = self.own_message(webhook, event_id)?;
        let mut new = NewEvent::message("m.room.redaction".into(), json!({}));
        new.redacts = Some(target);
        self.rooms
            .append(&webhook.channel_id, &webhook.user_id, new)
            .await
            .map(drop)
            .map_err(ExecuteError::Internal)
    }

    /// `PATCH /api/webhooks/{id}/{token}/messages/{eventId}`: replaces the text of a message
    /// the webhook posted (an `m.replace` edit; files are not changed).
    pub async fn edit_message(
        &self,
        webhook: Webhook,
        event_id: &str,
        message: Message,
    ) -> std::result::Result<Posted, ExecuteError> {
        let target = self.own_message(&webhook, event_id)?;
        if !message.has_text() {
            return Err(ExecuteError::Empty);
        }
        let new_content = render::text_content(&message);
        let mut content = new_content.clone();
        content["body"] = json!(format!("* {}", new_content["body"].as_str().unwrap_or("")));
        if let Some(html) = new_content["formatted_body"].as_str() {
            content["formatted_body"] = json!(format!("* {html}"));
        }
        content["m.new_content"] = new_content;
        content["m.relates_to"] = json!({ "rel_type": "m.replace", "event_id": target });
        if let (Some(c), Some(e)) = (
            content.as_object_mut(),
            render::profile(
                &webhook.id,
                &webhook.name,
                &message,
                self.avatar_mxc(&webhook, &message).await.as_deref(),
            )
            .as_object()
            .cloned(),
        ) {
            c.extend(e);
        }
        let channel = webhook.channel_id.clone();
        let user = webhook.user_id.clone();
        self.post(&channel, &user, content).await?;
        Ok(Posted {
            webhook,
            event_ids: vec![target],
            files: Vec::new(),
            message,
            ts: now_ms(),
        })
    }

    /// Sends one `m.room.message` as the webhook's user.
    async fn post(
        &self,
        channel: &RoomId,
        user: &UserId,
        content: Value,
    ) -> std::result::Result<OwnedEventId, ExecuteError> {
        self.rooms
            .append(
                channel,
                user,
                NewEvent::message("m.room.message".into(), content),
            )
            .await
            .map_err(ExecuteError::Internal)
    }

    /// Posts a checked message as the webhook's user: the text (with its embeds) first, then
    /// each file as its own `m.file`/`m.image` event.
    #[instrument(skip_all, fields(webhook = %webhook.id))]
    pub async fn execute(
        &self,
        webhook: Webhook,
        message: Message,
    ) -> std::result::Result<Posted, ExecuteError> {
        let rooms = &self.rooms;
        let channel = &webhook.channel_id;
        let thread = match &message.thread_id {
            None => None,
            Some(t) => {
                let root = OwnedEventId::try_from(t.as_str())
                    .ok()
                    .map(|e| rooms.pdu(&e).map(|p| (e, p)))
                    .transpose()
                    .map_err(ExecuteError::Internal)?;
                match root {
                    Some((e, Some(p))) if p.room_id.as_deref() == Some(channel) => Some(e),
                    _ => return Err(ExecuteError::UnknownThread),
                }
            }
        };
        let avatar = self.avatar_mxc(&webhook, &message).await;
        let extra = render::profile(&webhook.id, &webhook.name, &message, avatar.as_deref());
        let relate = |content: &mut Value| {
            if let Some(root) = &thread {
                content["m.relates_to"] = json!({
                    "rel_type": "m.thread",
                    "event_id": root,
                    "is_falling_back": true,
                    "m.in_reply_to": { "event_id": root },
                });
            }
            if let (Some(c), Some(e)) = (content.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    c.insert(k.clone(), v.clone());
                }
            }
        };
        let mut event_ids = Vec::new();
        let ts = now_ms();
        if message.has_text() {
            let mut content = render::text_content(&message);
            relate(&mut content);
            let id = self
                .post(channel, &webhook.user_id, content.clone())
                .await?;
            event_ids.push(id);
        }
        let mut files = Vec::new();
        for f in &message.files {
            let media_id = self
                .media
                .upload(
                    &webhook.user_id,
                    &f.bytes,
                    Some(f.content_type.clone()),
                    Some(f.filename.clone()),
                )
                .map_err(ExecuteError::Internal)?;
            let mxc = format!("mxc://{}/{media_id}", rooms.config.server_name);
            let mut content = render::file_content(f, &mxc);
            relate(&mut content);
            let id = self
                .post(channel, &webhook.user_id, content.clone())
                .await?;
            event_ids.push(id);
            files.push(content);
        }
        Ok(Posted {
            webhook,
            event_ids,
            files,
            message,
            ts,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert_eq!(sha256_hex("x").len(), 64);
    }

    /// The spec's `chat.paracord.webhook` examples read into their type and print back
    /// unchanged, keyed by their id: the spec's examples are the golden files.
    #[test]
    fn the_spec_examples_are_read_and_written_unchanged() {
        let text = include_str!("../../../../spec/webhooks.md");
        let mut seen = 0;
        for block in text.split("```json").skip(1) {
            let json = block.split("```").next().unwrap();
            let v: Value = serde_json::from_str(json).unwrap();
            if v["type"] != WEBHOOK_EVENT {
                continue;
            }
            let c: WebhookContent = serde_json::from_value(v["content"].clone()).unwrap();
            assert_eq!(serde_json::to_value(&c).unwrap(), v["content"]);
            assert_eq!(v["state_key"], c.id.as_str());
            assert!(c
                .user_id
                .starts_with(&format!("@{WEBHOOK_LOCALPART_PREFIX}{}:", c.id)));
            seen += 1;
        }
        assert!(
            seen > 0,
            "no chat.paracord.webhook example in spec/webhooks.md"
        );
    }

    #[test]
    fn names_are_bounded() {
        assert!(check_name("  ").is_err());
        assert!(check_name(&"a".repeat(81)).is_err());
        assert_eq!(check_name(" Hook ").unwrap(), "Hook");
    }
}
