//! Guild settings, channels and permission overwrites (spec/rest.md §5, §6, §10), carried out
//! by the guild host as the owner: `chat.paracord.guild`, the channel rooms with their
//! `chat.paracord.channel`, `m.space.child`/`m.space.parent` links and join rules, and the
//! `chat.paracord.overwrite` events, each change followed by the projected power levels
//! (spec/guilds.md §2, §5, §7, §8).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use paracord_core::{time::now_ms, Error, Result};
use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};
use tracing::{debug, instrument, warn};

use super::{
    events::{ChannelContent, ChannelKind, GuildContent, OverwriteTarget},
    permissions::{ChannelOverwrites, Guild, Member, Overwrite, Permissions, EVERYONE},
    projection::power_levels,
    store::{
        channel_ids, guild_content, guild_object, host_owner, is_webhook, load_guild, load_member,
        overwrites, reproject, send_state, OverwriteEntry,
    },
};
use crate::{
    federation::pdus::Pdus,
    rooms::{
        create::{CreateRoom, Preset},
        hooks::{EventObserver, FollowUp},
        membership::membership_of,
        notify::Notification,
        Pdu, Rooms,
    },
};

// ----- requests, as the API reads and checks them -----

/// A field of a request body: absent (keep the current value), `null` (remove it) or a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Field<T> {
    #[default]
    Keep,
    Remove,
    Set(T),
}

/// What a `PATCH /guilds/{id}` body changes (spec/rest.md §5), each field checked on its own;
/// what needs the guild (`owner`, `version`, `system_channel`) is checked here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuildUpdate {
    /// `owner` as given: `Some(None)` when it is not a string.
    pub owner: Option<Option<String>>,
    /// `version` as given: `Some(None)` when it is not a string.
    pub version: Option<Option<String>>,
    pub name: Option<String>,
    pub description: Field<String>,
    pub icon: Field<String>,
    pub system_channel: Field<OwnedRoomId>,
}

/// A `POST /guilds/{id}/channels` body (spec/rest.md §6), checked on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChannel {
    pub name: String,
    pub kind: ChannelKind,
    /// The category asked for (`null` is none).
    pub parent: Option<OwnedRoomId>,
    /// A non-empty topic.
    pub topic: Option<String>,
    pub position: Option<i64>,
    pub nsfw: Option<bool>,
    /// Seconds, 0 to 21,600.
    pub rate_limit: Option<i64>,
    /// `None` when absent or `null`: a channel in a category then copies its overwrites.
    pub overwrites: Option<Vec<(OverwriteTarget, Overwrite)>>,
}

fn room_id(key: &str, s: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(s).map_err(|_| Error::invalid_param(format!("{key} must be a room id")))
}

fn missing(flag: &str) -> Error {
    Error::forbidden(format!("Missing permission: {flag}"))
}

fn require(have: Permissions, flag: Permissions, name: &str) -> Result<()> {
    if have.contains(flag) {
        Ok(())
    } else {
        Err(missing(name))
    }
}

// ----- the guild's channels -----

/// A live channel of a guild: listed by the space (`m.space.child` with `via`) and with a
/// readable `chat.paracord.channel`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Channel {
    pub(crate) id: OwnedRoomId,
    pub(crate) content: ChannelContent,
}

/// Every live channel of the guild, hidden ones included.
pub(crate) fn guild_channels(rooms: &Rooms, guild_id: &RoomId) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for id in channel_ids(rooms, guild_id)? {
        let state = rooms.current_state(&id)?;
        if let Some(content) = rooms
            .state_content(&state, "chat.paracord.channel", "")?
            .and_then(|c| serde_json::from_value::<ChannelContent>(c).ok())
        {
            out.push(Channel { id, content });
        }
    }
    Ok(out)
}

/// A channel in the guild's order.
#[derive(Debug)]
struct Placed<'a> {
    channel: &'a Channel,
    /// The category it is shown in: its `parent` when that is a category of the guild.
    parent: Option<&'a str>,
    /// Its `m.space.child` `order`.
    order: String,
}

fn by_position(a: &&Channel, b: &&Channel) -> std::cmp::Ordering {
    (a.content.position, a.id.as_str().as_bytes())
        .cmp(&(b.content.position, b.id.as_str().as_bytes()))
}

/// The category a channel is shown in (spec/guilds.md §2): none for categories and for a
/// `parent` that is not a category of the guild.
fn shown_parent<'a>(c: &'a Channel, categories: &BTreeSet<&str>) -> Option<&'a str> {
    if c.content.kind == ChannelKind::Category {
        return None;
    }
    c.content
        .parent
        .as_deref()
        .filter(|p| categories.contains(p))
}

/// The channels in the order a client shows them (spec/guilds.md §2.2): the top level
/// (categories, and channels without a valid `parent`) by position then room id, each
/// category followed by its own channels in the same order. Each gets an `m.space.child`
/// `order` that sorts the same way: `"0003"` for the fourth top-level item, `"0003.0001"` for
/// the second channel in it. (Four digits: Discord caps a guild at 500 channels.)
fn display_order(channels: &[Channel]) -> Vec<Placed<'_>> {
    let categories: BTreeSet<&str> = channels
        .iter()
        .filter(|c| c.content.kind == ChannelKind::Category)
        .map(|c| c.id.as_str())
        .collect();
    let mut top: Vec<&Channel> = channels
        .iter()
        .filter(|c| shown_parent(c, &categories).is_none())
        .collect();
    top.sort_by(by_position);
    let mut out = Vec::with_capacity(channels.len());
    for (i, t) in top.into_iter().enumerate() {
        out.push(Placed {
            channel: t,
            parent: None,
            order: format!("{i:04}"),
        });
        if t.content.kind != ChannelKind::Category {
            continue;
        }
        let mut children: Vec<&Channel> = channels
            .iter()
            .filter(|c| shown_parent(c, &categories) == Some(t.id.as_str()))
            .collect();
        children.sort_by(by_position);
        for (j, c) in children.into_iter().enumerate() {
            out.push(Placed {
                channel: c,
                parent: Some(t.id.as_str()),
                order: format!("{i:04}.{j:04}"),
            });
        }
    }
    out
}

/// Where a new channel goes by default: after the last of its siblings.
fn next_position(channels: &[Channel], parent: Option<&str>) -> i64 {
    display_order(channels)
        .iter()
        .filter(|p| p.parent == parent)
        .map(|p| p.channel.content.position.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// A channel as the Channel object shows it (spec/rest.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    pub id: OwnedRoomId,
    pub guild_id: OwnedRoomId,
    /// From `m.room.name`, when it has one.
    pub name: Option<String>,
    /// Its `chat.paracord.channel`, with `topic` from `m.room.topic` when there is one.
    pub content: ChannelContent,
    pub overwrites: Vec<OverwriteEntry>,
    /// A voice channel: whether this server has an SFU for its calls (spec/voice.md §5).
    pub voice_available: Option<bool>,
}

/// The Channel object (spec/rest.md §4): `name` and `topic` from `m.room.name` and
/// `m.room.topic` (which clients prefer over the copy in `chat.paracord.channel`), the rest
/// from `chat.paracord.channel`, and the overwrites.
pub(crate) fn channel_object(
    rooms: &Rooms,
    guild_id: &RoomId,
    channel: &Channel,
    overwrites: Vec<OverwriteEntry>,
) -> Result<ChannelInfo> {
    let state = rooms.current_state(&channel.id)?;
    let mut content = channel.content.clone();
    let name = rooms
        .state_content(&state, "m.room.name", "")?
        .and_then(|n| n.get("name").and_then(Value::as_str).map(str::to_owned));
    if let Some(topic) = rooms.state_content(&state, "m.room.topic", "")? {
        content.topic = match topic.get("topic") {
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            _ => None,
        };
    }
    let voice_available =
        (content.kind == ChannelKind::Voice).then(|| rooms.config.livekit().is_some());
    Ok(ChannelInfo {
        id: channel.id.clone(),
        guild_id: guild_id.to_owned(),
        name,
        content,
        overwrites,
        voice_available,
    })
}

/// `GET /guilds/{id}/channels`: the channels `user` can see (VIEW_CHANNEL) in the guild's
/// order; a category is listed when it or any of its channels is visible.
pub fn list(rooms: &Rooms, guild_id: &RoomId, user: &UserId) -> Result<Vec<ChannelInfo>> {
    let guild = load_guild(rooms, guild_id)?;
    let member = load_member(rooms, guild_id, user)?;
    let now = now_ms();
    let all = guild_channels(rooms, guild_id)?;
    let placed = display_order(&all);
    let mut seen = Vec::with_capacity(placed.len());
    for p in &placed {
        let (o, list) = overwrites(rooms, &p.channel.id)?;
        let visible = guild
            .channel_permissions(&member, &o, now)
            .contains(Permissions::VIEW_CHANNEL);
        seen.push((p, visible, list));
    }
    let shown_categories: BTreeSet<&str> = seen
        .iter()
        .filter(|(_, visible, _)| *visible)
        .filter_map(|(p, _, _)| p.parent)
        .collect();
    let mut out = Vec::new();
    for (p, visible, list) in seen {
        if visible || shown_categories.contains(p.channel.id.as_str()) {
            out.push(channel_object(rooms, guild_id, p.channel, list)?);
        }
    }
    Ok(out)
}

/// A channel room with its guild, as the channel endpoints need it.
struct Ctx {
    guild_id: OwnedRoomId,
    guild: Guild,
    channel: Channel,
    overwrites: ChannelOverwrites,
    list: Vec<OverwriteEntry>,
}

fn no_channel() -> Error {
    Error::not_found("no such channel")
}

/// Whether the space lists `child` (an `m.space.child` with `via`).
fn is_child(rooms: &Rooms, guild_id: &RoomId, child: &RoomId) -> Result<bool> {
    let state = rooms.current_state(guild_id)?;
    Ok(rooms
        .state_content(&state, "m.space.child", child.as_str())?
        .and_then(|c| {
            c.get("via")
                .and_then(Value::as_array)
                .map(|v| !v.is_empty())
        })
        .unwrap_or(false))
}

/// The channel and its guild: a room with `chat.paracord.channel` whose `m.space.parent`
/// is a guild listing it. Anything else is 404.
fn resolve(rooms: &Rooms, channel_id: &RoomId) -> Result<Ctx> {
    if rooms.room(channel_id)?.is_none() {
        return Err(no_channel());
    }
    let state = rooms.current_state(channel_id)?;
    let content = rooms
        .state_content(&state, "chat.paracord.channel", "")?
        .and_then(|c| serde_json::from_value::<ChannelContent>(c).ok())
        .ok_or_else(no_channel)?;
    for ((kind, key), _) in state.range(("m.space.parent".to_owned(), String::new())..) {
        if kind != "m.space.parent" {
            break;
        }
        let Ok(guild_id) = OwnedRoomId::try_from(key.as_str()) else {
            continue;
        };
        if rooms.room(&guild_id)?.is_none() || !is_child(rooms, &guild_id, channel_id)? {
            continue;
        }
        let Ok(guild) = load_guild(rooms, &guild_id) else {
            continue;
        };
        let (overwrites, list) = overwrites(rooms, channel_id)?;
        return Ok(Ctx {
            guild_id,
            guild,
            channel: Channel {
                id: channel_id.to_owned(),
                content,
            },
            overwrites,
            list,
        });
    }
    Err(no_channel())
}

/// The requester as a member who can see the channel, with their permissions in it; 404
/// for anyone else (spec/rest.md §1).
fn viewer(rooms: &Rooms, ctx: &Ctx, user: &UserId) -> Result<(Member, Permissions)> {
    if !rooms.is_joined(&ctx.guild_id, user)? {
        return Err(no_channel());
    }
    let member = load_member(rooms, &ctx.guild_id, user)?;
    let p = ctx
        .guild
        .channel_permissions(&member, &ctx.overwrites, now_ms());
    if !p.contains(Permissions::VIEW_CHANNEL) {
        return Err(no_channel());
    }
    Ok((member, p))
}

/// That `user` is a member who can see the channel (VIEW_CHANNEL); `404` otherwise, as if it
/// did not exist (spec/rest.md §1).
pub(crate) fn check_viewer(rooms: &Rooms, channel_id: &RoomId, user: &UserId) -> Result<()> {
    let ctx = resolve(rooms, channel_id)?;
    viewer(rooms, &ctx, user).map(drop)
}

/// The permissions in the channel of `user`, a member who can see it (VIEW_CHANNEL); `404`
/// otherwise, as if it did not exist (spec/rest.md §1).
pub(crate) fn viewer_permissions(
    rooms: &Rooms,
    channel_id: &RoomId,
    user: &UserId,
) -> Result<Permissions> {
    let ctx = resolve(rooms, channel_id)?;
    viewer(rooms, &ctx, user).map(|(_, p)| p)
}

/// `GET /channels/{id}`: VIEW_CHANNEL.
pub fn get_channel(rooms: &Rooms, channel_id: &RoomId, user: &UserId) -> Result<ChannelInfo> {
    let ctx = resolve(rooms, channel_id)?;
    viewer(rooms, &ctx, user)?;
    channel_object(rooms, &ctx.guild_id, &ctx.channel, ctx.list)
}

// ----- writes -----

fn is_local(rooms: &Rooms, user: &UserId) -> bool {
    user.server_name().as_str() == rooms.config.server_name
}

/// Members of the guild for the projection: joined or invited to the space.
fn guild_members(rooms: &Rooms, guild_id: &RoomId) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    for (user, m) in rooms.members(guild_id)? {
        if m == MembershipState::Join || m == MembershipState::Invite {
            out.push(load_member(rooms, guild_id, &user)?);
        }
    }
    Ok(out)
}

fn is_guild_member(rooms: &Rooms, guild_id: &RoomId, user: &UserId) -> Result<bool> {
    Ok(matches!(
        rooms.membership(guild_id, user)?,
        Some(MembershipState::Join) | Some(MembershipState::Invite)
    ))
}

fn restricted_to(guild_id: &RoomId) -> Value {
    json!({
        "join_rule": "restricted",
        "allow": [{ "type": "m.room_membership", "room_id": guild_id }],
    })
}

/// Whether @everyone alone (no role, no overwrite of one's own) cannot see the channel: a
/// private channel, whose join rule is `invite` (spec/guilds.md §2.1).
fn is_private(guild: &Guild, o: &ChannelOverwrites) -> bool {
    !guild
        .channel_permissions(&Member::default(), o, now_ms())
        .contains(Permissions::VIEW_CHANNEL)
}

/// Removes everyone but the owner from a room (spec/rest.md §5, §6).
async fn kick_all(rooms: &Rooms, room: &RoomId, owner: &UserId) -> Result<()> {
    for (user, m) in rooms.members(room)? {
        if user != owner
            && matches!(
                m,
                MembershipState::Join | MembershipState::Invite | MembershipState::Knock
            )
        {
            rooms.kick(room, owner, &user, None).await?;
        }
    }
    Ok(())
}

/// [`sync_access`] for every channel of the guild: after a change of roles, which may change
/// who sees which private channel. [`ChannelAccess`] calls it.
pub async fn sync_all_access(rooms: &Rooms, pdus: &Pdus, guild_id: &RoomId) -> Result<()> {
    for channel in channel_ids(rooms, guild_id)? {
        sync_access(rooms, pdus, guild_id, &channel).await?;
    }
    Ok(())
}

/// [`sync_access`] for one user in every channel of the guild: after a change of their roles
/// or of their guild membership, which changes what they alone see.
pub async fn sync_member_access(
    rooms: &Rooms,
    pdus: &Pdus,
    guild_id: &RoomId,
    user: &UserId,
) -> Result<()> {
    for channel in channel_ids(rooms, guild_id)? {
        sync_channel_access(rooms, pdus, guild_id, &channel, Some(user)).await?;
    }
    Ok(())
}

/// Keeps who may enter a channel in line with who can see it (spec/guilds.md §2.1): a private
/// channel gets the `invite` join rule, an invite for every guild member who can see it and
/// a kick for everyone in it who cannot; a channel visible to @everyone gets the
/// `restricted` join rule back. Call it after anything that may change who sees a channel.
#[instrument(skip_all, fields(channel = %channel))]
pub async fn sync_access(
    rooms: &Rooms,
    pdus: &Pdus,
    guild_id: &RoomId,
    channel: &RoomId,
) -> Result<()> {
    sync_channel_access(rooms, pdus, guild_id, channel, None).await
}

/// [`sync_access`], for everyone or for `only` one user.
async fn sync_channel_access(
    rooms: &Rooms,
    pdus: &Pdus,
    guild_id: &RoomId,
    channel: &RoomId,
    only: Option<&UserId>,
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let (o, _) = overwrites(rooms, channel)?;
    let private = is_private(&guild, &o);
    let rule = if private {
        json!({ "join_rule": "invite" })
    } else {
        restricted_to(guild_id)
    };
    let state = rooms.current_state(channel)?;
    if rooms
        .state_content(&state, "m.room.join_rules", "")?
        .as_ref()
        != Some(&rule)
    {
        send_state(rooms, channel, &owner, "m.room.join_rules", "", rule).await?;
    }
    if !private {
        return Ok(());
    }
    let now = now_ms();
    let sees = |user: &UserId| -> Result<bool> {
        Ok(rooms.is_joined(guild_id, user)?
            && guild
                .channel_permissions(&load_member(rooms, guild_id, user)?, &o, now)
                .contains(Permissions::VIEW_CHANNEL))
    };
    let concerned = |user: &UserId| only.is_none_or(|u| u == user);
    for (user, m) in rooms.members(guild_id)? {
        if m != MembershipState::Join || user == owner || !concerned(&user) || !sees(&user)? {
            continue;
        }
        if matches!(
            rooms.membership(channel, &user)?,
            Some(MembershipState::Join)
                | Some(MembershipState::Invite)
                | Some(MembershipState::Ban)
        ) {
            continue;
        }
        if is_local(rooms, &user) {
            rooms.invite(channel, &owner, &user, None, false).await?;
        } else if let Err(e) = pdus
            .invite_remote(channel, &owner, &user, json!({ "membership": "invite" }))
            .await
        {
            // Their server may be down: they can still be let in later by an invite.
            warn!(user = %user, error = %e, "could not invite a member to a private channel");
        }
    }
    let channel_state = rooms.current_state(channel)?;
    for (user, m) in rooms.members(channel)? {
        if user != owner
            && concerned(&user)
            && !is_webhook(rooms, &channel_state, user.as_str())?
            && matches!(
                m,
                MembershipState::Join | MembershipState::Invite | MembershipState::Knock
            )
            && !sees(&user)?
        {
            rooms.kick(channel, &owner, &user, None).await?;
        }
    }
    Ok(())
}

/// Keeps private channels in line with who can see them whenever an event that changes it is
/// accepted into a guild's space, however it arrived (a request here, a relayed one, or over
/// federation): a `chat.paracord.role` (any member's view may change: [`sync_all_access`]),
/// a `chat.paracord.member` (that member's roles: [`sync_member_access`]) or a member joining
/// the space (roles given while invited: [`sync_member_access`]), when it changes a role's
/// permissions, a member's roles or their membership. Only the guild host, whose
/// owner writes the channels, acts. Its own events (join rules, invites and kicks in the
/// channels) are none of these, so they set off nothing more. Overwrites in a channel are
/// followed by [`sync_access`] where they are written.
pub struct ChannelAccess {
    /// Made after the rooms, whose observer this is: set once, when it is.
    pdus: std::sync::OnceLock<std::sync::Weak<Pdus>>,
}

/// What a [`ChannelAccess`] follow-up re-syncs.
enum AccessChange {
    Everyone,
    Member(OwnedUserId),
}

impl ChannelAccess {
    pub fn new() -> Self {
        Self {
            pdus: std::sync::OnceLock::new(),
        }
    }

    /// The federation PDU service, for invites of users of other servers.
    pub fn set_pdus(&self, pdus: std::sync::Weak<Pdus>) {
        let _ = self.pdus.set(pdus);
    }

    fn change(rooms: &Rooms, room_id: &RoomId, pdu: &Pdu) -> Option<AccessChange> {
        let key = pdu.state_key.as_deref()?;
        let kind = pdu.kind.to_string();
        // What of the event decides who sees what: unchanged (a role renamed or moved, a
        // nickname, a new display name), there is nothing to do.
        let (change, field) = match kind.as_str() {
            "chat.paracord.role" => (AccessChange::Everyone, "permissions"),
            "chat.paracord.member" => (
                AccessChange::Member(OwnedUserId::try_from(key.strip_prefix("user:")?).ok()?),
                "roles",
            ),
            "m.room.member"
                if membership_of(&pdu.content_value()) == Some(MembershipState::Join) =>
            {
                (
                    AccessChange::Member(OwnedUserId::try_from(key).ok()?),
                    "membership",
                )
            }
            _ => return None,
        };
        // A guild's space, hosted here.
        let guild = load_guild(rooms, room_id).ok()?;
        host_owner(rooms, &guild).ok()?;
        let before = previous_content(rooms, pdu, &kind, key);
        let unchanged = before
            .as_ref()
            .and_then(|b| b.get(field))
            .is_some_and(|b| Some(b) == pdu.content_value().get(field));
        (!unchanged).then_some(change)
    }
}

/// The content of the state entry an event replaced (in the state before it), if any.
fn previous_content(rooms: &Rooms, pdu: &Pdu, kind: &str, key: &str) -> Option<Value> {
    let short = rooms.short_id(&pdu.event_id).ok()??;
    let before = rooms.meta(short).ok()??.state_before;
    let state = rooms.state(before).ok()?;
    rooms.state_content(&state, kind, key).ok()?
}

impl Default for ChannelAccess {
    fn default() -> Self {
        Self::new()
    }
}

impl EventObserver for ChannelAccess {
    fn committed(
        &self,
        rooms: &Arc<Rooms>,
        room_id: &RoomId,
        pdu: &Pdu,
        _: &[Notification],
    ) -> Option<FollowUp> {
        let change = Self::change(rooms, room_id, pdu)?;
        let pdus = self.pdus.get()?.upgrade()?;
        let (rooms, guild_id) = (rooms.clone(), room_id.to_owned());
        Some(Box::pin(async move {
            let done = match &change {
                AccessChange::Everyone => sync_all_access(&rooms, &pdus, &guild_id).await,
                AccessChange::Member(user) => {
                    sync_member_access(&rooms, &pdus, &guild_id, user).await
                }
            };
            if let Err(e) = done {
                warn!(%guild_id, "private channels not kept in line with their viewers: {e}");
            }
        }))
    }
}

/// Rewrites the `order` of every `m.space.child` that no longer sorts like the guild's
/// channel list (spec/guilds.md §2).
async fn relayout(rooms: &Rooms, guild_id: &RoomId, owner: &UserId) -> Result<()> {
    let all = guild_channels(rooms, guild_id)?;
    let state = rooms.current_state(guild_id)?;
    for p in display_order(&all) {
        let key = p.channel.id.as_str();
        let Some(mut content) = rooms.state_content(&state, "m.space.child", key)? else {
            continue;
        };
        if content.get("order").and_then(Value::as_str) == Some(p.order.as_str()) {
            continue;
        }
        let Some(o) = content.as_object_mut() else {
            continue;
        };
        o.insert("order".into(), json!(p.order));
        send_state(rooms, guild_id, owner, "m.space.child", key, content).await?;
    }
    Ok(())
}

/// Hierarchy for setting or removing an overwrite (spec/guilds.md §7): its `allow` and
/// `deny` within the actor's own permissions there, and a role overwrite only for a role
/// below the actor's highest.
fn check_overwrite(
    guild: &Guild,
    actor: &Member,
    actor_permissions: Permissions,
    target: &OverwriteTarget,
    ow: Overwrite,
) -> Result<()> {
    if !actor_permissions.contains(ow.allow) || !actor_permissions.contains(ow.deny) {
        return Err(Error::forbidden(
            "hierarchy: an overwrite cannot allow or deny a permission you do not have here",
        ));
    }
    if let OverwriteTarget::Role(r) = target {
        if let Some(role) = guild.roles.get(r) {
            if actor.user_id != guild.owner && role.position >= guild.highest_position(actor) {
                return Err(Error::forbidden(
                    "hierarchy: the role is not below your highest role",
                ));
            }
        }
    }
    Ok(())
}

/// The role or user an overwrite names must exist in the guild (spec/rest.md §10).
fn check_target_exists(
    rooms: &Rooms,
    guild_id: &RoomId,
    guild: &Guild,
    target: &OverwriteTarget,
) -> Result<()> {
    match target {
        OverwriteTarget::Role(r) if !guild.roles.contains_key(r) => {
            Err(Error::not_found(format!("no such role: {r}")))
        }
        OverwriteTarget::User(u) => {
            let user = OwnedUserId::try_from(u.as_str())
                .map_err(|_| Error::invalid_param(format!("{u} is not a user id")))?;
            if is_guild_member(rooms, guild_id, &user)? {
                Ok(())
            } else {
                Err(Error::not_found(format!(
                    "{u} is not a member of this guild"
                )))
            }
        }
        OverwriteTarget::Role(_) => Ok(()),
    }
}

fn overwrite_content(ow: Overwrite) -> Value {
    json!({ "allow": ow.allow.to_wire(), "deny": ow.deny.to_wire() })
}

/// A channel's overwrites as `(target, overwrite)` pairs.
fn overwrite_entries(o: &ChannelOverwrites) -> Vec<(OverwriteTarget, Overwrite)> {
    o.roles
        .iter()
        .map(|(r, ow)| (OverwriteTarget::Role(r.clone()), *ow))
        .chain(
            o.users
                .iter()
                .map(|(u, ow)| (OverwriteTarget::User(u.clone()), *ow)),
        )
        .collect()
}

/// Makes a channel's overwrites a copy of its category's (spec/guilds.md §2: a category's
/// overwrites are templates for channels created in or moved into it).
async fn copy_overwrites(
    rooms: &Rooms,
    owner: &UserId,
    category: &RoomId,
    channel: &RoomId,
) -> Result<()> {
    let keyed = |o: &ChannelOverwrites| -> BTreeMap<String, Overwrite> {
        overwrite_entries(o)
            .into_iter()
            .map(|(t, ow)| (t.state_key(), ow))
            .collect()
    };
    let wanted = keyed(&overwrites(rooms, category)?.0);
    let current = keyed(&overwrites(rooms, channel)?.0);
    for key in current.keys().filter(|k| !wanted.contains_key(*k)) {
        send_state(
            rooms,
            channel,
            owner,
            "chat.paracord.overwrite",
            key,
            json!({}),
        )
        .await?;
    }
    for (key, ow) in wanted {
        if current.get(&key) != Some(&ow) {
            send_state(
                rooms,
                channel,
                owner,
                "chat.paracord.overwrite",
                &key,
                overwrite_content(ow),
            )
            .await?;
        }
    }
    Ok(())
}

/// Writes changed `chat.paracord.channel` contents; a channel moved into a category takes a
/// copy of its overwrites. Then the `m.space.child` orders, and, when overwrites changed,
/// the power levels and who may enter.
async fn apply_moves(
    rooms: &Rooms,
    pdus: &Pdus,
    guild_id: &RoomId,
    owner: &UserId,
    changes: Vec<(Channel, ChannelContent)>,
) -> Result<()> {
    let mut copied = Vec::new();
    for (old, new) in changes {
        if old.content == new {
            continue;
        }
        send_state(
            rooms,
            &old.id,
            owner,
            "chat.paracord.channel",
            "",
            serde_json::to_value(&new)?,
        )
        .await?;
        if let Some(category) = new
            .parent
            .as_deref()
            .filter(|p| Some(*p) != old.content.parent.as_deref())
        {
            let category = room_id("parent", category)?;
            copy_overwrites(rooms, owner, &category, &old.id).await?;
            copied.push(old.id);
        }
    }
    relayout(rooms, guild_id, owner).await?;
    if !copied.is_empty() {
        reproject(rooms, guild_id).await?;
        for c in copied {
            sync_access(rooms, pdus, guild_id, &c).await?;
        }
    }
    Ok(())
}

/// `PATCH /guilds/{id}`: MANAGE_GUILD. `owner` and `version` cannot change.
#[instrument(skip_all, fields(guild_id = %guild_id))]
pub async fn update_guild(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    update: GuildUpdate,
) -> Result<GuildContent> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let member = load_member(rooms, guild_id, actor)?;
    require(
        guild.base_permissions(&member),
        Permissions::MANAGE_GUILD,
        "MANAGE_GUILD",
    )?;
    let old = guild_content(rooms, guild_id)?;
    let (mut new, system_channel) = changed_guild(&old, update)?;
    match system_channel {
        Field::Keep => {}
        Field::Remove => new.system_channel = None,
        Field::Set(id) => {
            if !guild_channels(rooms, guild_id)?
                .iter()
                .any(|c| c.id == id && c.content.kind == ChannelKind::Text)
            {
                return Err(Error::invalid_param(
                    "system_channel must be a text channel of this guild",
                ));
            }
            new.system_channel = Some(id.to_string());
        }
    }
    if new != old {
        write_guild(rooms, guild_id, &owner, &new).await?;
    }
    // Mirrored for plain Matrix clients (spec/guilds.md §1).
    if new.name != old.name {
        send_state(
            rooms,
            guild_id,
            &owner,
            "m.room.name",
            "",
            json!({ "name": new.name }),
        )
        .await?;
    }
    if new.icon != old.icon {
        let avatar = match &new.icon {
            Some(url) => json!({ "url": url }),
            None => json!({}),
        };
        send_state(rooms, guild_id, &owner, "m.room.avatar", "", avatar).await?;
    }
    guild_object(rooms, guild_id)
}

/// The guild settings as `update` changes them, but for `system_channel`, returned apart: it
/// must be checked against the guild's channels. `owner` and `version` may only be given
/// unchanged.
pub(crate) fn changed_guild(
    old: &GuildContent,
    update: GuildUpdate,
) -> Result<(GuildContent, Field<OwnedRoomId>)> {
    for (key, given, current) in [
        ("owner", &update.owner, &old.owner),
        ("version", &update.version, &old.version),
    ] {
        if let Some(v) = given {
            if v.as_deref() != Some(current.as_str()) {
                return Err(Error::invalid_param(format!("{key} cannot be changed")));
            }
        }
    }
    let mut new = old.clone();
    if let Some(name) = update.name {
        new.name = name;
    }
    match update.description {
        Field::Keep => {}
        Field::Remove => new.description = None,
        Field::Set(s) => new.description = Some(s),
    }
    match update.icon {
        Field::Keep => {}
        Field::Remove => new.icon = None,
        Field::Set(s) => new.icon = Some(s),
    }
    Ok((new, update.system_channel))
}

async fn write_guild(
    rooms: &Rooms,
    guild_id: &RoomId,
    owner: &UserId,
    content: &GuildContent,
) -> Result<()> {
    send_state(
        rooms,
        guild_id,
        owner,
        "chat.paracord.guild",
        "",
        serde_json::to_value(content)?,
    )
    .await
}

/// `DELETE /guilds/{id}`: the owner only. Every member leaves every channel and the space,
/// the space stops listing the channels, and `chat.paracord.guild` becomes `{}` last, so an
/// interrupted deletion can be asked again.
#[instrument(skip_all, fields(guild_id = %guild_id))]
pub async fn delete_guild(rooms: &Rooms, guild_id: &RoomId, actor: &UserId) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    if actor != owner {
        return Err(Error::forbidden("only the owner may delete the guild"));
    }
    for channel in channel_ids(rooms, guild_id)? {
        kick_all(rooms, &channel, &owner).await?;
        send_state(
            rooms,
            guild_id,
            &owner,
            "m.space.child",
            channel.as_str(),
            json!({}),
        )
        .await?;
    }
    kick_all(rooms, guild_id, &owner).await?;
    send_state(
        rooms,
        guild_id,
        &owner,
        "chat.paracord.guild",
        "",
        json!({}),
    )
    .await
}

/// `POST /guilds/{id}/channels`: MANAGE_CHANNELS guild-wide, or in `parent` when given; the
/// overwrites given need MANAGE_ROLES there and the hierarchy; without them a channel in a
/// category copies the category's.
#[instrument(skip_all, fields(guild_id = %guild_id))]
pub async fn create_channel(
    rooms: &Rooms,
    pdus: &Pdus,
    guild_id: &RoomId,
    actor: &UserId,
    new: NewChannel,
) -> Result<ChannelInfo> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let member = load_member(rooms, guild_id, actor)?;
    let now = now_ms();
    let NewChannel {
        name,
        kind,
        parent,
        topic,
        position,
        nsfw,
        rate_limit,
        overwrites: given,
    } = new;
    let all = guild_channels(rooms, guild_id)?;
    let parent = match parent {
        Some(id) => {
            let category = all
                .iter()
                .find(|c| c.id == id && c.content.kind == ChannelKind::Category)
                .ok_or_else(|| Error::invalid_param("parent must be a category of this guild"))?;
            if kind == ChannelKind::Category {
                return Err(Error::invalid_param("a category cannot have a parent"));
            }
            Some(category.id.clone())
        }
        None => None,
    };
    // Where the actor's permissions count: in the category, or guild-wide.
    let template = match &parent {
        Some(p) => overwrites(rooms, p)?.0,
        None => ChannelOverwrites::default(),
    };
    let actor_permissions = match &parent {
        Some(_) => guild.channel_permissions(&member, &template, now),
        None => guild.base_permissions(&member),
    };
    require(
        actor_permissions,
        Permissions::MANAGE_CHANNELS,
        "MANAGE_CHANNELS",
    )?;
    let entries = match given {
        Some(list) => {
            if !list.is_empty() {
                require(actor_permissions, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
            }
            for (target, ow) in &list {
                check_target_exists(rooms, guild_id, &guild, target)?;
                check_overwrite(&guild, &member, actor_permissions, target, *ow)?;
            }
            list
        }
        None => overwrite_entries(&template),
    };
    let mut entries = entries;
    // An announcement channel is posted to by those who are given SEND_MESSAGES: without an
    // overwrite of @everyone (given or from the category), the guild host adds one denying
    // it (spec/guilds.md §2).
    if kind == ChannelKind::Announcement
        && !entries
            .iter()
            .any(|(t, _)| matches!(t, OverwriteTarget::Role(r) if r == EVERYONE))
    {
        entries.push((
            OverwriteTarget::Role(EVERYONE.to_owned()),
            Overwrite {
                allow: Permissions::NONE,
                deny: Permissions::SEND_MESSAGES,
            },
        ));
    }
    let mut o = ChannelOverwrites::default();
    for (target, ow) in &entries {
        match target {
            OverwriteTarget::Role(r) => o.roles.insert(r.clone(), *ow),
            OverwriteTarget::User(u) => o.users.insert(u.clone(), *ow),
        };
    }
    let is_category = kind == ChannelKind::Category;
    let content = ChannelContent {
        kind,
        position: position
            .unwrap_or_else(|| next_position(&all, parent.as_ref().map(|p| p.as_str()))),
        parent: parent.as_ref().map(|p| p.to_string()),
        topic: topic.clone(),
        nsfw: if is_category {
            nsfw
        } else {
            Some(nsfw.unwrap_or(false))
        },
        rate_limit_per_user: if is_category {
            rate_limit.and_then(|r| u64::try_from(r).ok())
        } else {
            Some(rate_limit.and_then(|r| u64::try_from(r).ok()).unwrap_or(0))
        },
    };

    let server = rooms.config.server_name.clone();
    let join_rule = if is_private(&guild, &o) {
        json!({ "join_rule": "invite" })
    } else {
        restricted_to(guild_id)
    };
    let mut initial_state = vec![
        (
            "chat.paracord.channel".to_owned(),
            String::new(),
            serde_json::to_value(&content)?,
        ),
        (
            "m.space.parent".to_owned(),
            guild_id.to_string(),
            json!({ "via": [server], "canonical": true }),
        ),
        ("m.room.join_rules".to_owned(), String::new(), join_rule),
    ];
    for (target, ow) in &entries {
        initial_state.push((
            "chat.paracord.overwrite".to_owned(),
            target.state_key(),
            overwrite_content(*ow),
        ));
    }
    // The owner creates the room, with their profile from the space.
    let space_state = rooms.current_state(guild_id)?;
    let owner_event = rooms
        .state_content(&space_state, "m.room.member", owner.as_str())?
        .unwrap_or_default();
    let profile_field = |k: &str| {
        owner_event
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let members = guild_members(rooms, guild_id)?;
    let channel = rooms
        .create_room(
            &owner,
            CreateRoom {
                version: Some("12".to_owned()),
                preset: Some(Preset::PrivateChat),
                public: false,
                name: Some(name),
                topic,
                alias: None,
                invite: Vec::new(),
                is_direct: false,
                initial_state,
                power_level_override: Some(power_levels(
                    &guild,
                    &members,
                    &o,
                    now,
                    true,
                    kind == ChannelKind::Voice,
                )),
                creation_content: None,
                profile: (profile_field("displayname"), profile_field("avatar_url")),
            },
        )
        .await?;
    let created = Channel {
        id: channel.clone(),
        content,
    };
    let mut with_new = all;
    with_new.push(created.clone());
    let order = display_order(&with_new)
        .into_iter()
        .find(|p| p.channel.id == channel)
        .map(|p| p.order)
        .unwrap_or_default();
    send_state(
        rooms,
        guild_id,
        &owner,
        "m.space.child",
        channel.as_str(),
        json!({ "via": [rooms.config.server_name], "order": order }),
    )
    .await?;
    relayout(rooms, guild_id, &owner).await?;
    reproject(rooms, guild_id).await?;
    sync_access(rooms, pdus, guild_id, &channel).await?;
    join_local_members(rooms, guild_id, &channel).await?;
    let (_, list) = overwrites(rooms, &channel)?;
    channel_object(rooms, guild_id, &created, list)
}

/// Joins the guild's members on this server to a new channel they may enter, as members on
/// other servers are joined by theirs (`Pdus::follow_new_channel`): in Discord a member is in
/// every channel they can see (spec/rest.md §11). A channel that refuses the join (private,
/// hidden from them) is skipped; private channels reach their members as invites.
async fn join_local_members(rooms: &Rooms, guild_id: &RoomId, channel: &RoomId) -> Result<()> {
    let space_state = rooms.current_state(guild_id)?;
    for (user, m) in rooms.members(guild_id)? {
        if m != MembershipState::Join || !is_local(rooms, &user) {
            continue;
        }
        if matches!(
            rooms.membership(channel, &user)?,
            Some(MembershipState::Join)
                | Some(MembershipState::Invite)
                | Some(MembershipState::Ban)
        ) {
            continue;
        }
        let member = rooms
            .state_content(&space_state, "m.room.member", user.as_str())?
            .unwrap_or_default();
        let field = |k: &str| member.get(k).and_then(Value::as_str).map(str::to_owned);
        let profile = (field("displayname"), field("avatar_url"));
        if let Err(e) = rooms.join(channel, &user, profile, None).await {
            debug!(%user, %channel, "a guild member was not joined to a new channel: {e}");
        }
    }
    Ok(())
}

/// One item of `PATCH /guilds/{id}/channels`: a channel's new position and parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub id: OwnedRoomId,
    pub position: Option<i64>,
    pub parent: Field<OwnedRoomId>,
}

/// A channel's content with a new position and parent, checked: `parent` must be a category
/// of the guild, and a category has none.
fn moved(
    all: &[Channel],
    channel: &Channel,
    position: Option<i64>,
    parent: &Field<OwnedRoomId>,
) -> Result<ChannelContent> {
    let mut content = channel.content.clone();
    if let Some(p) = position {
        content.position = p;
    }
    match parent {
        Field::Keep => {}
        Field::Remove => content.parent = None,
        Field::Set(p) => {
            if channel.content.kind == ChannelKind::Category {
                return Err(Error::invalid_param("a category cannot have a parent"));
            }
            if !all
                .iter()
                .any(|c| &c.id == p && c.content.kind == ChannelKind::Category)
            {
                return Err(Error::invalid_param(
                    "parent must be a category of this guild",
                ));
            }
            content.parent = Some(p.to_string());
        }
    }
    Ok(content)
}

/// `PATCH /guilds/{id}/channels`: MANAGE_CHANNELS guild-wide. Reorders and re-parents the
/// channels listed (each visible to the actor); the others keep their values.
#[instrument(skip_all, fields(guild_id = %guild_id))]
pub async fn reorder_channels(
    rooms: &Rooms,
    pdus: &Pdus,
    guild_id: &RoomId,
    actor: &UserId,
    moves: Vec<Move>,
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let member = load_member(rooms, guild_id, actor)?;
    require(
        guild.base_permissions(&member),
        Permissions::MANAGE_CHANNELS,
        "MANAGE_CHANNELS",
    )?;
    let all = guild_channels(rooms, guild_id)?;
    let now = now_ms();
    let mut changes = Vec::with_capacity(moves.len());
    for m in &moves {
        let channel = all.iter().find(|c| c.id == m.id).ok_or_else(no_channel)?;
        let (o, _) = overwrites(rooms, &channel.id)?;
        if !guild
            .channel_permissions(&member, &o, now)
            .contains(Permissions::VIEW_CHANNEL)
        {
            return Err(no_channel());
        }
        changes.push((
            channel.clone(),
            moved(&all, channel, m.position, &m.parent)?,
        ));
    }
    apply_moves(rooms, pdus, guild_id, &owner, changes).await
}

/// `PATCH /channels/{id}`: MANAGE_CHANNELS in the channel. `kind` only between `text` and
/// `announcement`; `null` removes `topic` or `parent`.
#[instrument(skip_all, fields(channel_id = %channel_id))]
pub async fn update_channel(
    rooms: &Rooms,
    pdus: &Pdus,
    channel_id: &RoomId,
    actor: &UserId,
    update: ChannelUpdate,
) -> Result<ChannelInfo> {
    let ctx = resolve(rooms, channel_id)?;
    let owner = host_owner(rooms, &ctx.guild)?;
    let (_, p) = viewer(rooms, &ctx, actor)?;
    require(p, Permissions::MANAGE_CHANNELS, "MANAGE_CHANNELS")?;
    let ChannelUpdate {
        name,
        topic,
        kind,
        parent,
        position,
        nsfw,
        rate_limit,
    } = update;
    let all = guild_channels(rooms, &ctx.guild_id)?;
    let mut content = moved(&all, &ctx.channel, position, &parent)?;
    if let Some(k) = kind {
        use ChannelKind::{Announcement, Text};
        let old = ctx.channel.content.kind;
        if k != old && !matches!((old, k), (Text, Announcement) | (Announcement, Text)) {
            return Err(Error::invalid_param(
                "kind only changes between text and announcement",
            ));
        }
        content.kind = k;
    }
    if nsfw.is_some() {
        content.nsfw = nsfw;
    }
    if let Some(r) = rate_limit.and_then(|r| u64::try_from(r).ok()) {
        content.rate_limit_per_user = Some(r);
    }
    match &topic {
        Field::Keep => {}
        Field::Remove => content.topic = None,
        Field::Set(t) => content.topic = Some(t.clone()),
    }
    let state = rooms.current_state(channel_id)?;
    if let Some(name) = name {
        let current = rooms.state_content(&state, "m.room.name", "")?;
        if current
            .as_ref()
            .and_then(|n| n.get("name"))
            .and_then(Value::as_str)
            != Some(&name)
        {
            send_state(
                rooms,
                channel_id,
                &owner,
                "m.room.name",
                "",
                json!({ "name": name }),
            )
            .await?;
        }
    }
    let topic_now = rooms
        .state_content(&state, "m.room.topic", "")?
        .and_then(|t| t.get("topic").and_then(Value::as_str).map(str::to_owned))
        .filter(|t| !t.is_empty());
    let topic_wanted = match topic {
        Field::Keep => topic_now.clone(),
        Field::Remove => None,
        Field::Set(t) => Some(t),
    };
    if topic_wanted != topic_now {
        send_state(
            rooms,
            channel_id,
            &owner,
            "m.room.topic",
            "",
            json!({ "topic": topic_wanted.unwrap_or_default() }),
        )
        .await?;
    }
    let guild_id = ctx.guild_id.clone();
    apply_moves(rooms, pdus, &guild_id, &owner, vec![(ctx.channel, content)]).await?;
    let ctx = resolve(rooms, channel_id)?;
    channel_object(rooms, &ctx.guild_id, &ctx.channel, ctx.list)
}

/// What a `PATCH /channels/{id}` body changes (spec/rest.md §6), checked on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelUpdate {
    pub name: Option<String>,
    /// A non-empty topic, or its removal.
    pub topic: Field<String>,
    pub kind: Option<ChannelKind>,
    pub parent: Field<OwnedRoomId>,
    pub position: Option<i64>,
    pub nsfw: Option<bool>,
    /// Seconds, 0 to 21,600.
    pub rate_limit: Option<i64>,
}

/// `DELETE /channels/{id}`: MANAGE_CHANNELS in the channel. A category's channels move to
/// the top level; the guild's `system_channel` is cleared if it was this one.
#[instrument(skip_all, fields(channel_id = %channel_id))]
pub async fn delete_channel(rooms: &Rooms, channel_id: &RoomId, actor: &UserId) -> Result<()> {
    let ctx = resolve(rooms, channel_id)?;
    let owner = host_owner(rooms, &ctx.guild)?;
    let (_, p) = viewer(rooms, &ctx, actor)?;
    require(p, Permissions::MANAGE_CHANNELS, "MANAGE_CHANNELS")?;
    let guild_id = &ctx.guild_id;
    if ctx.channel.content.kind == ChannelKind::Category {
        for c in guild_channels(rooms, guild_id)? {
            if c.content.parent.as_deref() == Some(channel_id.as_str()) {
                let mut content = c.content.clone();
                content.parent = None;
                send_state(
                    rooms,
                    &c.id,
                    &owner,
                    "chat.paracord.channel",
                    "",
                    serde_json::to_value(&content)?,
                )
                .await?;
            }
        }
    }
    let mut guild = guild_content(rooms, guild_id)?;
    if guild.system_channel.as_deref() == Some(channel_id.as_str()) {
        guild.system_channel = None;
        write_guild(rooms, guild_id, &owner, &guild).await?;
    }
    send_state(
        rooms,
        guild_id,
        &owner,
        "m.space.child",
        channel_id.as_str(),
        json!({}),
    )
    .await?;
    send_state(
        rooms,
        channel_id,
        &owner,
        "chat.paracord.channel",
        "",
        json!({}),
    )
    .await?;
    kick_all(rooms, channel_id, &owner).await?;
    relayout(rooms, guild_id, &owner).await
}

/// `PUT /channels/{id}/permissions/{overwriteId}`: MANAGE_ROLES in the channel and the
/// hierarchy; the role or user must exist in the guild.
#[instrument(skip_all, fields(channel_id = %channel_id))]
pub async fn put_overwrite(
    rooms: &Rooms,
    pdus: &Pdus,
    channel_id: &RoomId,
    actor: &UserId,
    target: &OverwriteTarget,
    ow: Overwrite,
) -> Result<OverwriteEntry> {
    let ctx = resolve(rooms, channel_id)?;
    let owner = host_owner(rooms, &ctx.guild)?;
    let (member, p) = viewer(rooms, &ctx, actor)?;
    require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
    check_target_exists(rooms, &ctx.guild_id, &ctx.guild, target)?;
    check_overwrite(&ctx.guild, &member, p, target, ow)?;
    let key = target.state_key();
    send_state(
        rooms,
        channel_id,
        &owner,
        "chat.paracord.overwrite",
        &key,
        overwrite_content(ow),
    )
    .await?;
    reproject(rooms, &ctx.guild_id).await?;
    sync_access(rooms, pdus, &ctx.guild_id, channel_id).await?;
    Ok(OverwriteEntry {
        id: key,
        allow: ow.allow.to_wire(),
        deny: ow.deny.to_wire(),
    })
}

/// `DELETE /channels/{id}/permissions/{overwriteId}`: as for setting it, with the hierarchy
/// applied to the overwrite being removed.
#[instrument(skip_all, fields(channel_id = %channel_id))]
pub async fn delete_overwrite(
    rooms: &Rooms,
    pdus: &Pdus,
    channel_id: &RoomId,
    actor: &UserId,
    target: &OverwriteTarget,
) -> Result<()> {
    let ctx = resolve(rooms, channel_id)?;
    let owner = host_owner(rooms, &ctx.guild)?;
    let (member, p) = viewer(rooms, &ctx, actor)?;
    require(p, Permissions::MANAGE_ROLES, "MANAGE_ROLES")?;
    let existing = match target {
        OverwriteTarget::Role(r) => ctx.overwrites.roles.get(r),
        OverwriteTarget::User(u) => ctx.overwrites.users.get(u),
    }
    .copied()
    .ok_or_else(|| Error::not_found("no such overwrite"))?;
    check_overwrite(&ctx.guild, &member, p, target, existing)?;
    send_state(
        rooms,
        channel_id,
        &owner,
        "chat.paracord.overwrite",
        &target.state_key(),
        json!({}),
    )
    .await?;
    reproject(rooms, &ctx.guild_id).await?;
    sync_access(rooms, pdus, &ctx.guild_id, channel_id).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn errcode(e: Error) -> String {
        e.classify().1["errcode"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn channel(id: &str, kind: ChannelKind, position: i64, parent: Option<&str>) -> Channel {
        Channel {
            id: OwnedRoomId::try_from(id).unwrap(),
            content: ChannelContent {
                kind,
                position,
                parent: parent.map(str::to_owned),
                topic: None,
                nsfw: None,
                rate_limit_per_user: None,
            },
        }
    }

    /// Categories and top-level channels by position then room id, each category followed
    /// by its channels; a `parent` that is no category puts the channel at the top level.
    #[test]
    fn channels_are_shown_by_position_within_their_parent_with_matching_orders() {
        use ChannelKind::{Category, Text, Voice};
        let all = vec![
            channel("!b:x", Category, 1, None),
            channel("!a:x", Category, 1, None),
            channel("!t1:x", Text, 0, Some("!b:x")),
            channel("!t0:x", Voice, 0, Some("!b:x")),
            channel("!t2:x", Text, 5, Some("!a:x")),
            channel("!top:x", Text, 0, None),
            channel("!lost:x", Text, 3, Some("!t2:x")),
        ];
        let placed = display_order(&all);
        let got: Vec<(&str, Option<&str>, &str)> = placed
            .iter()
            .map(|p| (p.channel.id.as_str(), p.parent, p.order.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("!top:x", None, "0000"),
                ("!a:x", None, "0001"),
                ("!t2:x", Some("!a:x"), "0001.0000"),
                ("!b:x", None, "0002"),
                ("!t0:x", Some("!b:x"), "0002.0000"),
                ("!t1:x", Some("!b:x"), "0002.0001"),
                ("!lost:x", None, "0003"),
            ]
        );
        let orders: Vec<&str> = got.iter().map(|g| g.2).collect();
        let mut sorted = orders.clone();
        sorted.sort_unstable();
        assert_eq!(orders, sorted, "the order strings sort like the list");
        assert_eq!(next_position(&all, Some("!b:x")), 1);
        assert_eq!(next_position(&all, Some("!a:x")), 6);
        assert_eq!(next_position(&all, None), 4);
        assert_eq!(next_position(&[], None), 0);
    }

    #[test]
    fn moves_need_a_category_as_parent() {
        use ChannelKind::{Category, Text};
        let all = vec![
            channel("!cat:x", Category, 0, None),
            channel("!t:x", Text, 0, Some("!cat:x")),
            channel("!u:x", Text, 1, None),
        ];
        let cat = Field::Set(OwnedRoomId::try_from("!cat:x").unwrap());
        let t = moved(&all, &all[1], Some(2), &Field::Remove).unwrap();
        assert_eq!((t.position, t.parent), (2, None));
        let u = moved(&all, &all[2], None, &cat).unwrap();
        assert_eq!((u.position, u.parent.as_deref()), (1, Some("!cat:x")));
        let into_text = Field::Set(OwnedRoomId::try_from("!u:x").unwrap());
        assert_eq!(
            errcode(moved(&all, &all[1], None, &into_text).unwrap_err()),
            "M_INVALID_PARAM"
        );
        let cat_into_cat = Field::Set(OwnedRoomId::try_from("!cat:x").unwrap());
        assert_eq!(
            errcode(moved(&all, &all[0], None, &cat_into_cat).unwrap_err()),
            "M_INVALID_PARAM"
        );
    }

    #[test]
    fn overwrites_are_bounded_by_the_actors_own_permissions_and_rank() {
        use super::super::permissions::Role;
        let mut guild = Guild {
            owner: "@owner:x".into(),
            roles: BTreeMap::new(),
        };
        guild.roles.insert(
            "everyone".into(),
            Role {
                position: 0,
                permissions: Permissions::VIEW_CHANNEL | Permissions::SEND_MESSAGES,
            },
        );
        guild.roles.insert(
            "mod".into(),
            Role {
                position: 5,
                permissions: Permissions::MANAGE_ROLES,
            },
        );
        guild.roles.insert(
            "top".into(),
            Role {
                position: 9,
                permissions: Permissions::NONE,
            },
        );
        let m = Member {
            user_id: "@m:x".into(),
            roles: vec!["mod".into()],
            communication_disabled_until: None,
        };
        let p = guild.base_permissions(&m);
        let send = Overwrite {
            allow: Permissions::NONE,
            deny: Permissions::SEND_MESSAGES,
        };
        let everyone = OverwriteTarget::Role("everyone".into());
        assert!(check_overwrite(&guild, &m, p, &everyone, send).is_ok());
        let kick = Overwrite {
            allow: Permissions::KICK_MEMBERS,
            deny: Permissions::NONE,
        };
        assert_eq!(
            errcode(check_overwrite(&guild, &m, p, &everyone, kick).unwrap_err()),
            "M_FORBIDDEN"
        );
        for r in ["mod", "top"] {
            let t = OverwriteTarget::Role(r.into());
            assert_eq!(
                errcode(check_overwrite(&guild, &m, p, &t, send).unwrap_err()),
                "M_FORBIDDEN",
                "{r}"
            );
        }
        let owner = Member {
            user_id: "@owner:x".into(),
            ..Member::default()
        };
        let t = OverwriteTarget::Role("top".into());
        assert!(check_overwrite(&guild, &owner, Permissions::ALL, &t, kick).is_ok());
    }

    /// A role given to a member by an event that came over federation (placed like any
    /// received PDU, with no request here to re-sync after it) still lets them into the
    /// private channel the role can see: the [`ChannelAccess`] observer follows it.
    #[tokio::test]
    async fn a_received_role_assignment_opens_a_private_channel() {
        use crate::{
            guilds::create::{create_guild, NewGuild},
            rooms::{
                remote::{Checked, Placed},
                NewEvent,
            },
            Services,
        };
        use paracord_core::Config;
        use ruma::events::TimelineEventType;

        let dir = tempfile::tempdir().unwrap();
        let s = Services::open(Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        })
        .unwrap();
        let rooms = &s.rooms;
        let owner = OwnedUserId::try_from("@owner:localhost").unwrap();
        let bob = OwnedUserId::try_from("@bob:localhost").unwrap();
        let g = create_guild(
            rooms,
            &owner,
            NewGuild {
                name: "Test".into(),
                ..NewGuild::default()
            },
            (None, None),
        )
        .await
        .unwrap();
        let space = g.id.clone();
        let general = OwnedRoomId::try_from(g.guild.system_channel.unwrap()).unwrap();
        rooms
            .invite(&space, &owner, &bob, None, false)
            .await
            .unwrap();
        rooms.join(&space, &bob, (None, None), None).await.unwrap();
        rooms
            .join(&general, &bob, (None, None), None)
            .await
            .unwrap();
        // #general becomes private, seen by the role `seer` only: bob, without it, is out.
        let view = Permissions::VIEW_CHANNEL.to_wire();
        let view = view.as_str();
        send_state(
            rooms,
            &space,
            &owner,
            "chat.paracord.role",
            "seer",
            json!({ "name": "seer", "color": 0, "position": 1, "hoist": false,
                    "mentionable": false, "permissions": "0" }),
        )
        .await
        .unwrap();
        for (target, allow, deny) in [("role:everyone", "0", view), ("role:seer", view, "0")] {
            send_state(
                rooms,
                &general,
                &owner,
                "chat.paracord.overwrite",
                target,
                json!({ "allow": allow, "deny": deny }),
            )
            .await
            .unwrap();
        }
        sync_access(rooms, &s.pdus, &space, &general).await.unwrap();
        assert_eq!(
            rooms.membership(&general, &bob).unwrap(),
            Some(MembershipState::Leave)
        );
        // Bob gets `seer` by an event received as from another server.
        let new = NewEvent::state(
            TimelineEventType::from("chat.paracord.member"),
            &format!("user:{bob}"),
            json!({ "roles": ["seer"] }),
        );
        let (version, obj) = rooms.checked_template(&space, &owner, &new).unwrap();
        let (event_id, pdu, bytes) = rooms.sign_event(obj, &version).unwrap();
        let placed = rooms
            .place_remote(
                &space,
                Checked {
                    event_id,
                    pdu,
                    bytes,
                },
            )
            .await
            .unwrap();
        assert!(matches!(placed, Placed::Accepted(_)), "{placed:?}");
        // Its follow-ups run on their own, as for any received event.
        let mut membership = None;
        for _ in 0..100 {
            membership = rooms.membership(&general, &bob).unwrap();
            if membership == Some(MembershipState::Invite) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(membership, Some(MembershipState::Invite));
    }
}
