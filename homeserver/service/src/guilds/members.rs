//! Roles (modify, reorder, delete), members, bans and invites (spec/rest.md §7–9, §11;
//! spec/guilds.md §3, §4, §7, §10).
//!
//! Every write is carried out by the guild host as the owner after the requester's
//! permissions were checked, and the projected power levels follow every change of a role, a
//! member's roles or timeout, or the member list.

use std::{sync::Arc, time::Duration};

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{key::next_key, Batch, Db, KeyBuf, Table};
use ruma::{
    events::room::member::MembershipState, events::TimelineEventType, OwnedEventId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use super::{
    events::{
        member_state_key, ChannelContent, ChannelKind, GuildContent, InviteContent, MemberContent,
        RoleContent,
    },
    permissions::{Guild, Member, Permissions, EVERYONE},
    store::{
        channel_ids, guild_content, host_owner, is_managed, load_guild, load_member, managed_role,
        overwrites, reproject, roles, send_state, RoleEntry,
    },
};
use crate::rooms::{
    hooks::{EventObserver, FollowUp},
    membership::membership_of,
    notify::Notification,
    timeline::{Dir, EventFilter, Reader, Window},
    NewEvent, Pdu, Rooms, StateMap,
};

/// The event type of an invite, indexed by code as it is committed.
const INVITE_EVENT: &str = "chat.paracord.invite";
const ROLE_EVENT: &str = "chat.paracord.role";
const MEMBER_EVENT: &str = "chat.paracord.member";
const OVERWRITE_EVENT: &str = "chat.paracord.overwrite";

/// How far ahead a timeout may reach: 28 days (spec/guilds.md §4).
pub const MAX_TIMEOUT_MS: u64 = 2_419_200_000;
/// The longest window of messages a ban may redact: 7 days (spec/rest.md §9).
pub const MAX_DELETE_SECONDS: u64 = 604_800;
/// An invite's longest lifetime and most uses (spec/rest.md §11).
pub const MAX_INVITE_AGE: u64 = 604_800;
pub const MAX_INVITE_USES: u64 = 100;
/// The most events of one channel a ban looks through for messages to redact.
const MAX_REDACTION_SCAN: usize = 10_000;

// ----- requests, as the API reads and checks them -----

/// What a `PATCH /guilds/{id}/roles/{roleId}` body changes (spec/rest.md §7), each field
/// checked on its own; what depends on the role (@everyone) is checked here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleChanges {
    /// 1 to 100 characters.
    pub name: Option<String>,
    /// 0 to 0xFFFFFF.
    pub color: Option<u32>,
    pub position: Option<i64>,
    pub hoist: Option<bool>,
    pub mentionable: Option<bool>,
    pub permissions: Option<Permissions>,
}

/// One entry of a `PATCH /guilds/{id}/roles` body: a role's new position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMove {
    pub id: String,
    pub position: i64,
}

/// What a `PATCH /guilds/{id}/members/{userId}` body asks for (spec/rest.md §8); each `None`
/// is "no change", `Some(None)` a removal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberChanges {
    /// 1 to 32 characters.
    pub nick: Option<Option<String>>,
    /// Role ids, without @everyone and without repeats.
    pub roles: Option<Vec<String>>,
    /// The end of a timeout (ms), or none; at most [`MAX_TIMEOUT_MS`] ahead.
    pub timeout: Option<Option<u64>>,
}

/// A `PUT /guilds/{id}/bans/{userId}` body (spec/rest.md §9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BanRequest {
    pub reason: Option<String>,
    /// How many seconds of the user's messages to redact, at most [`MAX_DELETE_SECONDS`].
    pub delete_message_seconds: u64,
}

/// A `POST /channels/{id}/invites` body (spec/rest.md §11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteLimits {
    /// Seconds, 0 (never expires) to [`MAX_INVITE_AGE`].
    pub max_age: u64,
    /// 0 (unlimited) to [`MAX_INVITE_USES`].
    pub max_uses: u64,
}

// ----- permission checks, with the flag or rule named in the refusal -----

fn flag_name(flag: Permissions) -> &'static str {
    Permissions::NAMED
        .iter()
        .find(|(_, p)| *p == flag)
        .map_or("?", |(n, _)| *n)
}

fn missing(flag: Permissions) -> Error {
    Error::forbidden(format!("Missing permission: {}", flag_name(flag)))
}

/// A guild-wide flag (spec/guilds.md §6: steps 1–2).
fn need(guild: &Guild, actor: &Member, flag: Permissions) -> Result<()> {
    if guild.base_permissions(actor).contains(flag) {
        Ok(())
    } else {
        Err(missing(flag))
    }
}

/// Creating, editing, deleting, assigning or unassigning a role at `position` that grants
/// `permissions` (spec/guilds.md §7).
fn check_role(
    guild: &Guild,
    actor: &Member,
    position: i64,
    permissions: Permissions,
) -> Result<()> {
    if guild.may_manage_role(actor, position, permissions) {
        return Ok(());
    }
    need(guild, actor, Permissions::MANAGE_ROLES)?;
    if guild.highest_position(actor) <= position {
        return Err(Error::forbidden(
            "Role hierarchy: the role must be below your highest role",
        ));
    }
    Err(Error::forbidden(
        "Role hierarchy: a role cannot grant permissions you do not have",
    ))
}

/// Acting on another member with `flag` (kick, ban, timeout, nickname): never on the owner,
/// and only from a highest role strictly above theirs (spec/guilds.md §7).
fn check_act(guild: &Guild, actor: &Member, target: &Member, flag: Permissions) -> Result<()> {
    need(guild, actor, flag)?;
    if target.user_id == guild.owner {
        return Err(Error::forbidden(
            "Role hierarchy: nobody can act on the guild's owner",
        ));
    }
    if !guild.outranks(actor, target) {
        return Err(Error::forbidden(
            "Role hierarchy: your highest role must be above the member's",
        ));
    }
    Ok(())
}

// ----- roles -----

fn role_content(rooms: &Rooms, state: &StateMap, id: &str) -> Result<Option<RoleContent>> {
    Ok(rooms
        .state_content(state, ROLE_EVENT, id)?
        .and_then(|c| serde_json::from_value(c).ok()))
}

fn role_entry(id: &str, content: RoleContent) -> RoleEntry {
    RoleEntry {
        id: id.to_owned(),
        role: content,
    }
}

fn role_permissions(content: &RoleContent) -> Permissions {
    Permissions::parse(&content.permissions).unwrap_or_default()
}

/// `PATCH /guilds/{id}/roles/{roleId}`: any of name, color, position, hoist, mentionable,
/// permissions; the hierarchy must allow the role before and after the change.
pub async fn modify_role(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    role_id: &str,
    changes: RoleChanges,
) -> Result<RoleEntry> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let state = rooms.current_state(guild_id)?;
    let old =
        role_content(rooms, &state, role_id)?.ok_or_else(|| Error::not_found("no such role"))?;
    let new = changed_role(&old, role_id == EVERYONE, changes)?;
    let me = load_member(rooms, guild_id, actor)?;
    let granted = role_permissions(&new);
    check_role(&guild, &me, old.position, granted)?;
    if new.position != old.position {
        check_role(&guild, &me, new.position, granted)?;
    }
    if new != old {
        send_state(
            rooms,
            guild_id,
            &owner,
            ROLE_EVENT,
            role_id,
            serde_json::to_value(&new)?,
        )
        .await?;
        reproject(rooms, guild_id).await?;
    }
    Ok(role_entry(role_id, new))
}

/// A role as `changes` changes it (`everyone`: the role is @everyone, whose name and
/// position stay).
pub(crate) fn changed_role(
    old: &RoleContent,
    everyone: bool,
    changes: RoleChanges,
) -> Result<RoleContent> {
    let mut new = old.clone();
    if let Some(name) = changes.name {
        if everyone && name != old.name {
            return Err(Error::invalid_param("@everyone cannot be renamed"));
        }
        new.name = name;
    }
    if let Some(color) = changes.color {
        new.color = color;
    }
    if let Some(position) = changes.position {
        if everyone && position != old.position {
            return Err(Error::invalid_param(
                "the position of @everyone cannot change",
            ));
        }
        if !everyone && position < 1 {
            return Err(Error::invalid_param(
                "a role's position is at least 1 (@everyone is 0)",
            ));
        }
        new.position = position;
    }
    if let Some(hoist) = changes.hoist {
        new.hoist = hoist;
    }
    if let Some(mentionable) = changes.mentionable {
        new.mentionable = mentionable;
    }
    if let Some(permissions) = changes.permissions {
        new.permissions = permissions.to_wire();
    }
    Ok(new)
}

/// `PATCH /guilds/{id}/roles`: new positions for some roles, each move allowed by the
/// hierarchy at its old and its new position; @everyone stays at 0. Every entry is checked
/// before anything is written. Answers every role.
pub async fn reorder_roles(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    moves: Vec<RoleMove>,
) -> Result<Vec<RoleEntry>> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let state = rooms.current_state(guild_id)?;
    let me = load_member(rooms, guild_id, actor)?;
    let mut changed = Vec::new();
    for RoleMove { id, position } in moves {
        let role = role_content(rooms, &state, &id)?
            .ok_or_else(|| Error::not_found(format!("no such role: {id}")))?;
        if id == EVERYONE {
            if position != role.position {
                return Err(Error::invalid_param("@everyone cannot be moved"));
            }
            continue;
        }
        if position < 1 {
            return Err(Error::invalid_param(
                "a role's position is at least 1 (@everyone is 0)",
            ));
        }
        if position == role.position {
            continue;
        }
        let granted = role_permissions(&role);
        check_role(&guild, &me, role.position, granted)?;
        check_role(&guild, &me, position, granted)?;
        changed.push((id, RoleContent { position, ..role }));
    }
    for (id, content) in &changed {
        send_state(
            rooms,
            guild_id,
            &owner,
            ROLE_EVENT,
            id,
            serde_json::to_value(content)?,
        )
        .await?;
    }
    if !changed.is_empty() {
        reproject(rooms, guild_id).await?;
    }
    roles(rooms, guild_id)
}

/// `DELETE /guilds/{id}/roles/{roleId}`: the role leaves every member and every channel's
/// overwrites, then is replaced with `{}`. In that order, so that a request cut short can be
/// repeated: the role is still there to be found.
pub async fn delete_role(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    role_id: &str,
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    if role_id == EVERYONE {
        return Err(Error::invalid_param("@everyone cannot be deleted"));
    }
    let state = rooms.current_state(guild_id)?;
    let role =
        role_content(rooms, &state, role_id)?.ok_or_else(|| Error::not_found("no such role"))?;
    let me = load_member(rooms, guild_id, actor)?;
    check_role(&guild, &me, role.position, role_permissions(&role))?;
    if role.managed_by.is_some() {
        return Err(managed_role());
    }
    remove_role(rooms, guild_id, &owner, role_id).await
}

/// Deletes a role without asking who may (the checks are the caller's): it leaves every
/// member and every channel's overwrites, then is replaced with `{}`.
pub(crate) async fn remove_role(
    rooms: &Rooms,
    guild_id: &RoomId,
    owner: &UserId,
    role_id: &str,
) -> Result<()> {
    let state = rooms.current_state(guild_id)?;
    for ((kind, key), _) in state.range((MEMBER_EVENT.to_owned(), String::new())..) {
        if kind != MEMBER_EVENT {
            break;
        }
        let Some(mut content) = rooms
            .state_content(&state, kind, key)?
            .and_then(|c| serde_json::from_value::<MemberContent>(c).ok())
        else {
            continue;
        };
        if !content.roles.iter().any(|r| r == role_id) {
            continue;
        }
        content.roles.retain(|r| r != role_id);
        send_state(
            rooms,
            guild_id,
            owner,
            MEMBER_EVENT,
            key,
            serde_json::to_value(&content)?,
        )
        .await?;
    }
    let key = format!("role:{role_id}");
    for channel in channel_ids(rooms, guild_id)? {
        let cstate = rooms.current_state(&channel)?;
        let present = rooms
            .state_content(&cstate, OVERWRITE_EVENT, &key)?
            .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()));
        if present {
            send_state(rooms, &channel, owner, OVERWRITE_EVENT, &key, json!({})).await?;
        }
    }
    send_state(rooms, guild_id, owner, ROLE_EVENT, role_id, json!({})).await?;
    reproject(rooms, guild_id).await
}

// ----- members -----

fn member_content(rooms: &Rooms, state: &StateMap, user: &UserId) -> Result<MemberContent> {
    Ok(rooms
        .state_content(state, MEMBER_EVENT, &member_state_key(user.as_str()))?
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default())
}

/// The `origin_server_ts` of the user's latest join: the member event of the state, followed
/// back through the joins before it (profile changes are joins too) to the first of the run.
fn joined_at(rooms: &Rooms, state: &StateMap, user: &UserId) -> Result<Option<u64>> {
    let key = ("m.room.member".to_owned(), user.to_string());
    let mut short = state.get(&key).copied();
    let mut at = None;
    // A bound, so a long history of profile changes costs little.
    for _ in 0..1000 {
        let Some(s) = short else { break };
        let Some(pdu) = rooms.pdu_by_short(s)? else {
            break;
        };
        if membership_of(&pdu.content_value()) != Some(MembershipState::Join) {
            break;
        }
        at = Some(u64::from(pdu.origin_server_ts.get()));
        let Some(meta) = rooms.meta(s)?.filter(|m| !m.outlier) else {
            break;
        };
        short = rooms.state(meta.state_before)?.get(&key).copied();
    }
    Ok(at)
}

/// A member as the Member object shows it (spec/rest.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub user_id: OwnedUserId,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub nick: Option<String>,
    /// The roles of the guild they hold, @everyone left out.
    pub roles: Vec<String>,
    /// The end of a timeout still running.
    pub communication_disabled_until: Option<u64>,
    pub joined_at: Option<u64>,
}

/// The Member object (spec/rest.md §4).
fn member_value(
    rooms: &Rooms,
    guild: &Guild,
    state: &StateMap,
    user: &UserId,
    now: u64,
) -> Result<MemberInfo> {
    let profile = rooms
        .state_content(state, "m.room.member", user.as_str())?
        .unwrap_or_default();
    let text = |k: &str| profile.get(k).and_then(Value::as_str).map(str::to_owned);
    let content = member_content(rooms, state, user)?;
    let roles: Vec<String> = content
        .roles
        .into_iter()
        .filter(|r| r.as_str() != EVERYONE && guild.roles.contains_key(r.as_str()))
        .collect();
    Ok(MemberInfo {
        user_id: user.to_owned(),
        displayname: text("displayname"),
        avatar_url: text("avatar_url"),
        nick: content.nick,
        roles,
        communication_disabled_until: content.communication_disabled_until.filter(|t| *t > now),
        joined_at: joined_at(rooms, state, user)?,
    })
}

/// `GET /guilds/{id}/members/{userId}`: a joined member, or 404. With `invited`, a user
/// invited to the space counts too (roles may be given before joining).
pub fn member(
    rooms: &Rooms,
    guild_id: &RoomId,
    user: &UserId,
    invited: bool,
) -> Result<MemberInfo> {
    let membership = rooms.membership(guild_id, user)?;
    let counts = match membership {
        Some(MembershipState::Join) => true,
        Some(MembershipState::Invite) => invited,
        _ => false,
    };
    if !counts {
        return Err(Error::not_found("not a member of this guild"));
    }
    let guild = load_guild(rooms, guild_id)?;
    let state = rooms.current_state(guild_id)?;
    member_value(rooms, &guild, &state, user, now_ms())
}

/// `GET /guilds/{id}/members`: joined members by user id (byte order), after `after`.
pub fn members(
    rooms: &Rooms,
    guild_id: &RoomId,
    limit: usize,
    after: Option<&str>,
) -> Result<Vec<MemberInfo>> {
    let guild = load_guild(rooms, guild_id)?;
    let state = rooms.current_state(guild_id)?;
    let now = now_ms();
    let mut joined = rooms.joined_members(guild_id)?;
    joined.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    joined
        .iter()
        .filter(|u| after.is_none_or(|a| u.as_bytes() > a.as_bytes()))
        .take(limit)
        .map(|u| member_value(rooms, &guild, &state, u, now))
        .collect()
}

/// `PATCH /guilds/{id}/members/{userId}`: nick, roles and timeout, each with its own
/// permission (spec/rest.md §8). The whole request is checked before anything is written.
pub async fn modify_member(
    rooms: &Arc<Rooms>,
    guild_id: &RoomId,
    actor: &UserId,
    target: &UserId,
    changes: MemberChanges,
) -> Result<MemberInfo> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let MemberChanges {
        nick,
        roles: wanted_roles,
        timeout,
    } = changes;
    if !rooms.is_joined(guild_id, target)? {
        return Err(Error::not_found("not a member of this guild"));
    }
    let me = load_member(rooms, guild_id, actor)?;
    let them = load_member(rooms, guild_id, target)?;
    let state = rooms.current_state(guild_id)?;
    let old = member_content(rooms, &state, target)?;
    let mut new = old.clone();
    if let Some(nick) = nick {
        if actor == target {
            need(&guild, &me, Permissions::CHANGE_NICKNAME)?;
        } else {
            check_act(&guild, &me, &them, Permissions::MANAGE_NICKNAMES)?;
        }
        new.nick = nick;
    }
    if let Some(wanted) = wanted_roles {
        need(&guild, &me, Permissions::MANAGE_ROLES)?;
        if let Some(unknown) = wanted
            .iter()
            .find(|r| !guild.roles.contains_key(r.as_str()))
        {
            return Err(Error::invalid_param(format!("no such role: {unknown}")));
        }
        let held: Vec<&String> = old
            .roles
            .iter()
            .filter(|r| r.as_str() != EVERYONE && guild.roles.contains_key(r.as_str()))
            .collect();
        let added = wanted.iter().filter(|r| !held.contains(r));
        let removed = held.iter().copied().filter(|r| !wanted.contains(*r));
        for id in added.chain(removed) {
            if let Some(role) = guild.roles.get(id) {
                check_role(&guild, &me, role.position, role.permissions)?;
            }
            if is_managed(rooms, &state, id)? {
                return Err(managed_role());
            }
        }
        new.roles = wanted;
    }
    if let Some(until) = timeout {
        check_act(&guild, &me, &them, Permissions::MODERATE_MEMBERS)?;
        if until.is_some()
            && guild
                .base_permissions(&them)
                .contains(Permissions::ADMINISTRATOR)
        {
            return Err(Error::forbidden(
                "Timeouts: the owner and administrators cannot be timed out",
            ));
        }
        new.communication_disabled_until = until;
    }
    if new != old {
        send_state(
            rooms,
            guild_id,
            &owner,
            MEMBER_EVENT,
            &member_state_key(target.as_str()),
            serde_json::to_value(&new)?,
        )
        .await?;
        let timeout_changed = new.communication_disabled_until != old.communication_disabled_until;
        if new.roles != old.roles || timeout_changed {
            reproject(rooms, guild_id).await?;
        }
        if let Some(until) = new.communication_disabled_until.filter(|_| timeout_changed) {
            schedule_timeout_end(rooms.clone(), guild_id.to_owned(), until);
        }
    }
    member(rooms, guild_id, target, false)
}

/// Re-projects the guild's power levels once a timeout has ended (spec/guilds.md §8: the
/// end of a timeout is an input of the projection), so the member's level comes back without
/// anyone acting. A timeout changed again before then leaves this task with nothing to send.
/// A restart forgets the task: the next re-projection of the guild catches up.
pub fn schedule_timeout_end(rooms: Arc<Rooms>, guild_id: OwnedRoomId, until: u64) {
    // A little after the end, so that `now` is past it when the projection is computed.
    let wait = until.saturating_sub(now_ms()).saturating_add(50);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if let Err(e) = reproject(&rooms, &guild_id).await {
            tracing::warn!(%guild_id, "power levels not re-projected after a timeout: {e}");
        }
    });
}

/// Leaving a guild's space means leaving the guild (spec/guilds.md §2.1): an observer of the
/// event pipeline that, when a user of this server leaves a room or is kicked or banned from
/// it, however the event arrived, has them leave the guild's channels when the room is a
/// guild space ([`left_room`]).
pub struct GuildDeparture;

impl EventObserver for GuildDeparture {
    fn committed(
        &self,
        rooms: &Arc<Rooms>,
        room_id: &RoomId,
        pdu: &Pdu,
        _: &[Notification],
    ) -> Option<FollowUp> {
        if pdu.kind != TimelineEventType::RoomMember {
            return None;
        }
        let user = OwnedUserId::try_from(pdu.state_key.as_deref()?).ok()?;
        if user.server_name() != rooms.config.server_name.as_str() {
            return None;
        }
        let membership = membership_of(&pdu.content_value())?;
        if !matches!(membership, MembershipState::Leave | MembershipState::Ban) {
            return None;
        }
        let (rooms, room_id) = (rooms.clone(), room_id.to_owned());
        Some(Box::pin(async move {
            if let Err(e) = left_room(&rooms, &room_id, &user).await {
                tracing::warn!(%room_id, %user, "the channels of a guild left were not left: {e}");
            }
        }))
    }
}

/// After `user` (of this server) left a room: when it is a guild space, they leave the
/// guild's channels too (spec/guilds.md §2.1). A channel that cannot be left now is logged.
async fn left_room(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<()> {
    let state = rooms.current_state(room_id)?;
    if rooms
        .state_content(&state, "chat.paracord.guild", "")?
        .is_none_or(|c| c.as_object().is_none_or(|o| o.is_empty()))
    {
        return Ok(());
    }
    for channel in super::store::channel_rooms(rooms, room_id)? {
        if !matches!(
            rooms.membership(&channel, user)?,
            Some(MembershipState::Join)
                | Some(MembershipState::Invite)
                | Some(MembershipState::Knock)
        ) {
            continue;
        }
        if let Err(e) = rooms.leave(&channel, user, None).await {
            tracing::warn!(%channel, %user, "a channel of a guild left was not left: {e}");
        }
    }
    Ok(())
}

/// After a start: re-projects every guild this server hosts (a timeout may have ended while
/// it was down) and schedules the end of every timeout still running.
pub fn resume_timeouts(rooms: Arc<Rooms>) {
    tokio::spawn(async move {
        let ids = match rooms.room_ids() {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!("guild timeouts not resumed: {e}"),
        };
        for guild_id in ids {
            if let Err(e) = resume_guild(&rooms, &guild_id).await {
                tracing::warn!(%guild_id, "guild timeouts not resumed: {e}");
            }
        }
    });
}

async fn resume_guild(rooms: &Arc<Rooms>, guild_id: &RoomId) -> Result<()> {
    let state = rooms.current_state(guild_id)?;
    if rooms
        .state_content(&state, "chat.paracord.guild", "")?
        .is_none()
    {
        return Ok(());
    }
    let Ok(guild) = load_guild(rooms, guild_id) else {
        return Ok(());
    };
    if host_owner(rooms, &guild).is_err() {
        return Ok(());
    }
    reproject(rooms, guild_id).await?;
    let now = now_ms();
    for (user, m) in rooms.members(guild_id)? {
        if m != MembershipState::Join {
            continue;
        }
        if let Some(until) = load_member(rooms, guild_id, &user)?.communication_disabled_until {
            if until > now {
                schedule_timeout_end(rooms.clone(), guild_id.to_owned(), until);
            }
        }
    }
    Ok(())
}

/// Replaces a departed member's `chat.paracord.member` with `{}` (spec/guilds.md §4).
async fn forget_member(
    rooms: &Rooms,
    guild_id: &RoomId,
    owner: &UserId,
    user: &UserId,
) -> Result<()> {
    let state = rooms.current_state(guild_id)?;
    let key = member_state_key(user.as_str());
    let present = rooms
        .state_content(&state, MEMBER_EVENT, &key)?
        .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()));
    if present {
        send_state(rooms, guild_id, owner, MEMBER_EVENT, &key, json!({})).await?;
    }
    Ok(())
}

/// The guild's channels, then the space: removals end with the space, so a request cut short
/// finds the user still a member and can be repeated.
fn channels_then_space(rooms: &Rooms, guild_id: &RoomId) -> Result<Vec<OwnedRoomId>> {
    let mut out = channel_ids(rooms, guild_id)?;
    out.push(guild_id.to_owned());
    Ok(out)
}

/// `DELETE /guilds/{id}/members/{userId}`: a kick (KICK_MEMBERS and the hierarchy) from the
/// space and every channel, or leaving when the user is the requester. The owner cannot
/// leave: the guild would have nobody to write it.
pub async fn remove_member(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    target: &UserId,
    reason: Option<&str>,
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    if !rooms.is_joined(guild_id, target)? {
        return Err(Error::not_found("not a member of this guild"));
    }
    let leaving = actor == target;
    if leaving {
        if target.as_str() == owner.as_str() {
            return Err(Error::forbidden(
                "the owner cannot leave their guild; delete it instead",
            ));
        }
    } else {
        let me = load_member(rooms, guild_id, actor)?;
        let them = load_member(rooms, guild_id, target)?;
        check_act(&guild, &me, &them, Permissions::KICK_MEMBERS)?;
    }
    // A local user leaves by themself; anyone else is removed by the owner.
    let own_leave = leaving && target.server_name().as_str() == rooms.config.server_name;
    for room in channels_then_space(rooms, guild_id)? {
        if !matches!(
            rooms.membership(&room, target)?,
            Some(MembershipState::Join)
                | Some(MembershipState::Invite)
                | Some(MembershipState::Knock)
        ) {
            continue;
        }
        if own_leave {
            rooms.leave(&room, target, reason).await?;
        } else {
            rooms.kick(&room, &owner, target, reason).await?;
        }
    }
    forget_member(rooms, guild_id, &owner, target).await?;
    reproject(rooms, guild_id).await
}

// ----- bans -----

/// A ban as the Ban object shows it (spec/rest.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanInfo {
    pub user_id: OwnedUserId,
    pub reason: Option<String>,
}

/// `GET /guilds/{id}/bans`: BAN_MEMBERS.
pub fn bans(rooms: &Rooms, guild_id: &RoomId, actor: &UserId) -> Result<Vec<BanInfo>> {
    let guild = load_guild(rooms, guild_id)?;
    need(
        &guild,
        &load_member(rooms, guild_id, actor)?,
        Permissions::BAN_MEMBERS,
    )?;
    let state = rooms.current_state(guild_id)?;
    let mut out = Vec::new();
    for (user, m) in rooms.members(guild_id)? {
        if m != MembershipState::Ban {
            continue;
        }
        let reason = rooms
            .state_content(&state, "m.room.member", user.as_str())?
            .and_then(|c| c.get("reason").and_then(Value::as_str).map(str::to_owned));
        out.push(BanInfo {
            user_id: user,
            reason,
        });
    }
    Ok(out)
}

/// `PUT /guilds/{id}/bans/{userId}`: BAN_MEMBERS, and the hierarchy when the user is a
/// member. Bans in every channel and the space, then redacts the user's messages of the last
/// `delete_message_seconds` in every channel.
pub async fn ban(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    target: &UserId,
    request: BanRequest,
) -> Result<BanInfo> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let BanRequest {
        reason,
        delete_message_seconds: seconds,
    } = request;
    let me = load_member(rooms, guild_id, actor)?;
    let them = load_member(rooms, guild_id, target)?;
    let is_member = matches!(
        rooms.membership(guild_id, target)?,
        Some(MembershipState::Join) | Some(MembershipState::Invite)
    );
    if is_member || them.user_id == guild.owner {
        check_act(&guild, &me, &them, Permissions::BAN_MEMBERS)?;
    } else {
        need(&guild, &me, Permissions::BAN_MEMBERS)?;
    }
    let since = now_ms().saturating_sub(seconds.saturating_mul(1000));
    for room in channels_then_space(rooms, guild_id)? {
        if rooms.membership(&room, target)? != Some(MembershipState::Ban) {
            rooms.ban(&room, &owner, target, reason.as_deref()).await?;
        }
    }
    if seconds > 0 {
        for channel in channel_ids(rooms, guild_id)? {
            redact_recent(rooms, &channel, &owner, target, since).await?;
        }
    }
    forget_member(rooms, guild_id, &owner, target).await?;
    reproject(rooms, guild_id).await?;
    Ok(BanInfo {
        user_id: target.to_owned(),
        reason,
    })
}

/// Redacts, as `redactor`, the messages `sender` sent to `room` at or after `since` (ms),
/// newest first, stopping at the first older event.
async fn redact_recent(
    rooms: &Rooms,
    room: &RoomId,
    redactor: &UserId,
    sender: &UserId,
    since: u64,
) -> Result<()> {
    let reader = Reader {
        user: redactor,
        device: None,
    };
    let mut from = rooms.stream.current();
    let mut scanned = 0;
    let mut targets: Vec<OwnedEventId> = Vec::new();
    'pages: while scanned < MAX_REDACTION_SCAN {
        let window = Window {
            from,
            to: None,
            dir: Dir::Backward,
            limit: 100,
        };
        let page = rooms.paginate(room, reader, window, &EventFilter::default())?;
        for (_, ev) in &page.events {
            scanned += 1;
            if ev["origin_server_ts"].as_u64().unwrap_or(0) < since {
                break 'pages;
            }
            let message = ev.get("state_key").is_none() && ev["type"] != "m.room.redaction";
            let redacted = ev["unsigned"].get("redacted_because").is_some();
            if ev["sender"] == sender.as_str() && message && !redacted {
                if let Some(id) = ev["event_id"]
                    .as_str()
                    .and_then(|i| OwnedEventId::try_from(i).ok())
                {
                    targets.push(id);
                }
            }
        }
        match page.next {
            Some(next) if next < from => from = next,
            _ => break,
        }
    }
    for id in targets {
        let mut new = NewEvent::message(
            TimelineEventType::RoomRedaction,
            json!({ "reason": "banned from the guild" }),
        );
        new.redacts = Some(id);
        rooms.append(room, redactor, new).await?;
    }
    Ok(())
}

/// `DELETE /guilds/{id}/bans/{userId}`: BAN_MEMBERS; unbans in every channel and the space.
pub async fn unban(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    target: &UserId,
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    need(
        &guild,
        &load_member(rooms, guild_id, actor)?,
        Permissions::BAN_MEMBERS,
    )?;
    if rooms.membership(guild_id, target)? != Some(MembershipState::Ban) {
        return Err(Error::not_found("no such ban"));
    }
    for room in channels_then_space(rooms, guild_id)? {
        if rooms.membership(&room, target)? == Some(MembershipState::Ban) {
            rooms.unban(&room, &owner, target, None).await?;
        }
    }
    Ok(())
}

// ----- invites -----

/// Invite codes: 8 to 32 characters from `[A-Za-z0-9]` (spec/guilds.md §10).
fn is_code(code: &str) -> bool {
    (8..=32).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

paracord_storage::key! {
    /// The key of `coderoom_invite` (the guild spaces holding an invite code):
    /// `code 0xFF room_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct InviteCodeKey<'a> {
        code: str,
        room_id: last_str,
    }
}

/// Every key of the rooms indexed for `code` starts with this.
fn code_prefix(code: &str) -> Vec<u8> {
    KeyBuf::new().str(code).into_vec()
}

/// Keeps the invite index (a guild invite is found by its code alone, spec/rest.md §11): an
/// observer of the event pipeline, so an invite is indexed in its event's batch however the
/// event arrived. It owns `coderoom_invite`: the rooms of a code are read through it.
pub struct InviteIndex {
    db: Arc<Db>,
}

impl InviteIndex {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Rooms indexed for a code (a few: anyone allowed to send state could reuse a code in
    /// another room; only the guild owner's invite counts).
    fn rooms(&self, code: &str) -> Result<Vec<OwnedRoomId>> {
        let prefix = code_prefix(code);
        let upper = next_key(&prefix);
        let rows = self.db.scan(
            Table::CoderoomInvite,
            &prefix,
            &prefix,
            upper.as_deref(),
            false,
            16,
        )?;
        let mut out = Vec::new();
        for (k, _) in rows {
            if let Ok(room) = OwnedRoomId::try_from(InviteCodeKey::decode(&k)?.room_id) {
                out.push(room);
            }
        }
        Ok(out)
    }
}

impl EventObserver for InviteIndex {
    fn index(&self, batch: &mut Batch, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        if pdu.kind.to_string() == INVITE_EVENT {
            if let Some(code) = pdu.state_key.as_deref() {
                index_invite(batch, code, room_id);
            }
        }
        Ok(())
    }
}

/// Indexes an invite code with the room whose state holds it, in the batch of its event.
fn index_invite(batch: &mut Batch, code: &str, room_id: &RoomId) {
    if is_code(code) {
        batch.put(
            Table::CoderoomInvite,
            InviteCodeKey {
                code,
                room_id: room_id.as_str(),
            }
            .encode(),
            Vec::new(),
        );
    }
}

/// The guild and content of an invite this server knows: a `chat.paracord.invite` sent by
/// the owner in the state of a guild space. Nothing else is an invite (spec/guilds.md: only
/// the owner writes `chat.paracord.*` state).
fn find_invite(
    rooms: &Rooms,
    invites: &InviteIndex,
    code: &str,
) -> Result<(OwnedRoomId, Guild, InviteContent)> {
    let unknown = || Error::not_found("no such invite");
    if !is_code(code) {
        return Err(unknown());
    }
    for room in invites.rooms(code)? {
        if rooms.room(&room)?.is_none() {
            continue;
        }
        let state = rooms.current_state(&room)?;
        if rooms
            .state_content(&state, "chat.paracord.guild", "")?
            .is_none()
        {
            continue;
        }
        let guild = load_guild(rooms, &room)?;
        let Some(pdu) = rooms.state_pdu(&state, INVITE_EVENT, code)? else {
            continue;
        };
        if pdu.sender.as_str() != guild.owner {
            continue;
        }
        if let Ok(invite) = serde_json::from_value::<InviteContent>(pdu.content_value()) {
            return Ok((room, guild, invite));
        }
    }
    Err(unknown())
}

/// Whether the invite is valid now, but for its number of uses: not revoked nor expired, its
/// channel still a channel of the guild, its inviter still a member allowed to invite there
/// (spec/guilds.md §10).
fn valid_but_uses(
    rooms: &Rooms,
    guild_id: &RoomId,
    guild: &Guild,
    invite: &InviteContent,
    now: u64,
) -> Result<bool> {
    let unused = InviteContent {
        uses: 0,
        ..invite.clone()
    };
    if !unused.usable(now) {
        return Ok(false);
    }
    let (Ok(channel), Ok(inviter)) = (
        OwnedRoomId::try_from(invite.channel.as_str()),
        OwnedUserId::try_from(invite.inviter.as_str()),
    ) else {
        return Ok(false);
    };
    if !channel_ids(rooms, guild_id)?.contains(&channel)
        || channel_content(rooms, &channel)?.is_none()
    {
        return Ok(false);
    }
    if !rooms.is_joined(guild_id, &inviter)? {
        return Ok(false);
    }
    let (o, _) = overwrites(rooms, &channel)?;
    Ok(guild
        .channel_permissions(&load_member(rooms, guild_id, &inviter)?, &o, now)
        .contains(Permissions::CREATE_INSTANT_INVITE))
}

fn exhausted(invite: &InviteContent) -> bool {
    invite.max_uses != 0 && invite.uses >= invite.max_uses
}

fn channel_content(rooms: &Rooms, channel: &RoomId) -> Result<Option<ChannelContent>> {
    let state = rooms.current_state(channel)?;
    Ok(rooms
        .state_content(&state, "chat.paracord.channel", "")?
        .and_then(|c| serde_json::from_value(c).ok()))
}

/// An invite as the Invite object shows it (spec/rest.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteInfo {
    pub code: String,
    pub guild_id: OwnedRoomId,
    /// The guild's settings, for its name, icon and description.
    pub guild: GuildContent,
    pub member_count: usize,
    pub channel_name: Option<String>,
    /// Its `chat.paracord.invite`.
    pub invite: InviteContent,
    /// `created_at` plus `max_age`; none when it never expires.
    pub expires_at: Option<u64>,
}

/// The Invite object (spec/rest.md §4).
fn invite_value(
    rooms: &Rooms,
    guild_id: &RoomId,
    code: &str,
    invite: &InviteContent,
) -> Result<InviteInfo> {
    let guild = guild_content(rooms, guild_id)?;
    let channel_name = match OwnedRoomId::try_from(invite.channel.as_str()) {
        Ok(c) if rooms.room(&c)?.is_some() => {
            let state = rooms.current_state(&c)?;
            rooms
                .state_content(&state, "m.room.name", "")?
                .and_then(|n| n.get("name").and_then(Value::as_str).map(str::to_owned))
        }
        _ => None,
    };
    let expires_at = (invite.max_age != 0).then(|| {
        invite
            .created_at
            .saturating_add(invite.max_age.saturating_mul(1000))
    });
    Ok(InviteInfo {
        code: code.to_owned(),
        guild_id: guild_id.to_owned(),
        guild,
        member_count: rooms.joined_members(guild_id)?.len(),
        channel_name,
        invite: invite.clone(),
        expires_at,
    })
}

/// The guild a channel belongs to: its `m.space.parent`, which lists it as a child.
fn channel_guild(rooms: &Rooms, channel: &RoomId) -> Result<OwnedRoomId> {
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
            && channel_ids(rooms, &guild_id)?.iter().any(|c| c == channel)
            && guild_content(rooms, &guild_id).is_ok()
        {
            return Ok(guild_id);
        }
    }
    Err(unknown())
}

fn fresh_code() -> String {
    crate::random::random_string(10)
}

/// `POST /channels/{id}/invites`: CREATE_INSTANT_INVITE in the channel.
pub async fn create_invite(
    rooms: &Rooms,
    invites: &InviteIndex,
    channel: &RoomId,
    actor: &UserId,
    limits: InviteLimits,
) -> Result<InviteInfo> {
    let guild_id = channel_guild(rooms, channel)?;
    let guild = load_guild(rooms, &guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let InviteLimits { max_age, max_uses } = limits;
    let now = now_ms();
    let me = load_member(rooms, &guild_id, actor)?;
    let (o, _) = overwrites(rooms, channel)?;
    let perms = guild.channel_permissions(&me, &o, now);
    if !rooms.is_joined(&guild_id, actor)? || !perms.contains(Permissions::VIEW_CHANNEL) {
        return Err(Error::not_found("no such channel"));
    }
    let content =
        channel_content(rooms, channel)?.ok_or_else(|| Error::not_found("no such channel"))?;
    if content.kind == ChannelKind::Category {
        return Err(Error::invalid_param(
            "an invite leads to a channel, not a category",
        ));
    }
    if !perms.contains(Permissions::CREATE_INSTANT_INVITE) {
        return Err(missing(Permissions::CREATE_INSTANT_INVITE));
    }
    let mut code = fresh_code();
    while !invites.rooms(&code)?.is_empty() {
        code = fresh_code();
    }
    let invite = InviteContent {
        channel: channel.to_string(),
        inviter: actor.to_string(),
        created_at: now,
        max_age,
        max_uses,
        uses: 0,
        revoked: false,
    };
    send_state(
        rooms,
        &guild_id,
        &owner,
        INVITE_EVENT,
        &code,
        serde_json::to_value(&invite)?,
    )
    .await?;
    invite_value(rooms, &guild_id, &code, &invite)
}

/// `GET /invites/{code}`: any user may preview a valid invite; anything else is unknown.
pub fn invite(rooms: &Rooms, invites: &InviteIndex, code: &str) -> Result<InviteInfo> {
    let (guild_id, guild, invite) = find_invite(rooms, invites, code)?;
    if exhausted(&invite) || !valid_but_uses(rooms, &guild_id, &guild, &invite, now_ms())? {
        return Err(Error::not_found("no such invite"));
    }
    invite_value(rooms, &guild_id, code, &invite)
}

/// What accepting an invite leads to: the user's server then joins the space and, when the
/// user may see it, the channel, with the guild host as `via`.
#[derive(Debug)]
pub struct Accepted {
    pub guild_id: OwnedRoomId,
    pub channel_id: OwnedRoomId,
    pub join_channel: bool,
    pub via: OwnedServerName,
}

/// Serialises acceptances, so two users cannot both take an invite's last use.
static ACCEPTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POST /invites/{code}`, the guild host's part: the invite is valid and the user is not
/// banned; the owner invites the user to the space (and to the channel when it is private,
/// `invite`-only, and the user may see it) and counts a use. A member gets the same answer
/// and no use is counted.
pub async fn accept_invite(
    rooms: &Rooms,
    invites: &InviteIndex,
    pdus: &crate::federation::pdus::Pdus,
    code: &str,
    user: &UserId,
) -> Result<Accepted> {
    let _one_at_a_time = ACCEPTING.lock().await;
    let (guild_id, guild, invite) = find_invite(rooms, invites, code)?;
    let owner = host_owner(rooms, &guild)?;
    let now = now_ms();
    if !valid_but_uses(rooms, &guild_id, &guild, &invite, now)? {
        return Err(Error::not_found("no such invite"));
    }
    let channel_id = OwnedRoomId::try_from(invite.channel.as_str())
        .map_err(|_| Error::not_found("no such invite"))?;
    let membership = rooms.membership(&guild_id, user)?;
    if membership == Some(MembershipState::Ban) {
        return Err(Error::forbidden("you are banned from this guild"));
    }
    let (o, _) = overwrites(rooms, &channel_id)?;
    let sees_channel = guild
        .channel_permissions(&load_member(rooms, &guild_id, user)?, &o, now)
        .contains(Permissions::VIEW_CHANNEL);
    let accepted = Accepted {
        guild_id: guild_id.clone(),
        channel_id: channel_id.clone(),
        join_channel: sees_channel,
        via: owner.server_name().to_owned(),
    };
    if membership == Some(MembershipState::Join) {
        return Ok(accepted);
    }
    if exhausted(&invite) {
        return Err(Error::not_found("no such invite"));
    }
    let local = user.server_name().as_str() == rooms.config.server_name;
    let owner_ref = &owner;
    let invite_to = |room: OwnedRoomId| async move {
        let owner = owner_ref;
        if local {
            rooms
                .invite(&room, owner, user, None, false)
                .await
                .map(drop)
        } else {
            pdus.invite_remote(&room, owner, user, json!({ "membership": "invite" }))
                .await
                .map(drop)
        }
    };
    if membership != Some(MembershipState::Invite) {
        invite_to(guild_id.clone()).await?;
    }
    let cstate = rooms.current_state(&channel_id)?;
    let invite_only = rooms
        .state_content(&cstate, "m.room.join_rules", "")?
        .is_some_and(|j| j["join_rule"] == "invite");
    if invite_only
        && sees_channel
        && !matches!(
            rooms.membership(&channel_id, user)?,
            Some(MembershipState::Join) | Some(MembershipState::Invite)
        )
    {
        invite_to(channel_id.clone()).await?;
    }
    let used = InviteContent {
        uses: invite.uses.saturating_add(1),
        ..invite
    };
    send_state(
        rooms,
        &guild_id,
        &owner,
        INVITE_EVENT,
        code,
        serde_json::to_value(&used)?,
    )
    .await?;
    reproject(rooms, &guild_id).await?;
    Ok(accepted)
}

/// `DELETE /invites/{code}`: the inviter, MANAGE_GUILD, or MANAGE_CHANNELS in the invite's
/// channel. Answers the revoked invite.
pub async fn revoke_invite(
    rooms: &Rooms,
    invites: &InviteIndex,
    code: &str,
    actor: &UserId,
) -> Result<InviteInfo> {
    let (guild_id, guild, invite) = find_invite(rooms, invites, code)?;
    let owner = host_owner(rooms, &guild)?;
    if !rooms.is_joined(&guild_id, actor)? {
        return Err(Error::not_found("no such invite"));
    }
    let me = load_member(rooms, &guild_id, actor)?;
    let in_channel = match OwnedRoomId::try_from(invite.channel.as_str()) {
        Ok(c) if rooms.room(&c)?.is_some() => {
            let (o, _) = overwrites(rooms, &c)?;
            guild.channel_permissions(&me, &o, now_ms())
        }
        _ => Permissions::NONE,
    };
    let allowed = invite.inviter == actor.as_str()
        || guild
            .base_permissions(&me)
            .contains(Permissions::MANAGE_GUILD)
        || in_channel.contains(Permissions::MANAGE_CHANNELS);
    if !allowed {
        return Err(Error::forbidden(
            "Missing permission: MANAGE_GUILD or MANAGE_CHANNELS (or be the inviter)",
        ));
    }
    let revoked = InviteContent {
        revoked: true,
        ..invite.clone()
    };
    if !invite.revoked {
        send_state(
            rooms,
            &guild_id,
            &owner,
            INVITE_EVENT,
            code,
            serde_json::to_value(&revoked)?,
        )
        .await?;
    }
    invite_value(rooms, &guild_id, code, &revoked)
}

/// `GET /guilds/{id}/invites`: MANAGE_GUILD; the valid invites.
pub fn guild_invites(rooms: &Rooms, guild_id: &RoomId, actor: &UserId) -> Result<Vec<InviteInfo>> {
    let guild = load_guild(rooms, guild_id)?;
    need(
        &guild,
        &load_member(rooms, guild_id, actor)?,
        Permissions::MANAGE_GUILD,
    )?;
    let state = rooms.current_state(guild_id)?;
    let now = now_ms();
    let mut out = Vec::new();
    for ((kind, code), _) in state.range((INVITE_EVENT.to_owned(), String::new())..) {
        if kind != INVITE_EVENT {
            break;
        }
        let Some(pdu) = rooms.state_pdu(&state, kind, code)? else {
            continue;
        };
        if pdu.sender.as_str() != guild.owner {
            continue;
        }
        let Ok(invite) = serde_json::from_value::<InviteContent>(pdu.content_value()) else {
            continue;
        };
        if !exhausted(&invite) && valid_but_uses(rooms, guild_id, &guild, &invite, now)? {
            out.push(invite_value(rooms, guild_id, code, &invite)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::guilds::permissions::Role;

    fn guild() -> Guild {
        let role = |position, permissions| Role {
            position,
            permissions: Permissions(permissions),
        };
        let roles = BTreeMap::from([
            (EVERYONE.to_owned(), role(0, 0)),
            (
                "mod".to_owned(),
                role(5, Permissions::KICK_MEMBERS.0 | Permissions::MANAGE_ROLES.0),
            ),
            ("low".to_owned(), role(1, 0)),
            ("ban".to_owned(), role(2, Permissions::BAN_MEMBERS.0)),
        ]);
        Guild {
            owner: "@owner:x".to_owned(),
            roles,
        }
    }

    fn member(id: &str, roles: &[&str]) -> Member {
        Member {
            user_id: id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            communication_disabled_until: None,
        }
    }

    fn refusal(r: Result<()>) -> String {
        match r {
            Ok(()) => "allowed".to_owned(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn refusals_name_the_missing_flag_or_the_rule() {
        let g = guild();
        let (owner, mo, bob) = (
            member("@owner:x", &[]),
            member("@mo:x", &["mod"]),
            member("@bob:x", &["low"]),
        );
        assert_eq!(
            refusal(check_role(&g, &owner, 99, Permissions::ALL)),
            "allowed"
        );
        assert_eq!(
            refusal(check_role(&g, &mo, 1, Permissions::NONE)),
            "allowed"
        );
        assert!(refusal(check_role(&g, &bob, 0, Permissions::NONE)).contains("MANAGE_ROLES"));
        assert!(refusal(check_role(&g, &mo, 5, Permissions::NONE)).contains("below your highest"));
        assert!(refusal(check_role(&g, &mo, 2, Permissions::BAN_MEMBERS))
            .contains("permissions you do not have"));
        assert_eq!(
            refusal(check_act(&g, &mo, &bob, Permissions::KICK_MEMBERS)),
            "allowed"
        );
        assert!(refusal(check_act(&g, &mo, &bob, Permissions::BAN_MEMBERS)).contains("BAN_MEMBERS"));
        assert!(refusal(check_act(&g, &mo, &owner, Permissions::KICK_MEMBERS)).contains("owner"));
        let peer = member("@peer:x", &["mod"]);
        assert!(
            refusal(check_act(&g, &mo, &peer, Permissions::KICK_MEMBERS))
                .contains("above the member's")
        );
    }

    #[test]
    fn invite_codes_are_8_to_32_letters_and_digits_and_index_apart() {
        assert!(is_code("hT4k9QzP"));
        assert!(is_code(&"a".repeat(32)));
        for bad in ["short7x", &"a".repeat(33), "hT4k-9QzP", "hT4k9QzP\u{e9}"] {
            assert!(!is_code(bad), "{bad}");
        }
        // A code's entries never fall under a shorter code's prefix.
        let longer = KeyBuf::new().str("abcdefghi").last_str("!r:x").into_vec();
        assert!(!longer.starts_with(&code_prefix("abcdefgh")));
        let own = KeyBuf::new().str("abcdefgh").last_str("!r:x").into_vec();
        assert!(own.starts_with(&code_prefix("abcdefgh")));
        assert_eq!(fresh_code().len(), 10);
        assert!(is_code(&fresh_code()));
    }

    #[test]
    fn invite_code_key_round_trips_and_layout_is_stable() {
        let key = InviteCodeKey {
            code: "abcdefgh",
            room_id: "!r:x",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"abcdefgh\xFF!r:x");
        assert_eq!(
            bytes,
            KeyBuf::new().str("abcdefgh").last_str("!r:x").into_vec()
        );
        assert_eq!(InviteCodeKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&code_prefix("abcdefgh")));
        assert!(InviteCodeKey::decode(b"no separator").is_err());
    }
}
