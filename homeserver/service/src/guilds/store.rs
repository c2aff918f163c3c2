//! Guilds as rooms (spec/guilds.md, spec/rest.md §5–7): reading guilds, channels and roles
//! back from room state, and the guild's writes (sent by its host as the owner).

use paracord_core::{time::now_ms, Error, Result};
use ruma::{events::room::member::MembershipState, OwnedRoomId, RoomId, UserId};
use serde_json::Value;

use super::{
    events::{
        ChannelContent, ChannelKind, GuildContent, OverwriteContent, OverwriteTarget, RoleContent,
    },
    permissions::{ChannelOverwrites, Guild, Member, Permissions, EVERYONE},
    projection::power_levels,
};
use crate::rooms::{Rooms, StateMap};

/// The guild's `chat.paracord.guild` content, or 404 when the room is no guild.
pub(crate) fn guild_content(rooms: &Rooms, guild_id: &RoomId) -> Result<GuildContent> {
    let state = rooms.current_state(guild_id)?;
    let content = rooms
        .state_content(&state, "chat.paracord.guild", "")?
        .ok_or_else(|| Error::not_found("no such guild"))?;
    serde_json::from_value(content).map_err(|_| Error::not_found("no such guild"))
}

/// The guild's settings, for the Guild object (spec/rest.md §4): its `chat.paracord.guild`.
pub fn guild_object(rooms: &Rooms, guild_id: &RoomId) -> Result<GuildContent> {
    guild_content(rooms, guild_id)
}

/// A role of a guild: its id (the state key) and its `chat.paracord.role` (the Role object
/// of spec/rest.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleEntry {
    pub id: String,
    pub role: RoleContent,
}

/// A permission overwrite of a channel: its id (the state key, `role:…` or `user:…`) and its
/// `chat.paracord.overwrite` as sent (spec/rest.md §4 Channel, §10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverwriteEntry {
    pub id: String,
    pub allow: String,
    pub deny: String,
}

/// The guild's roles, by position.
pub fn roles(rooms: &Rooms, guild_id: &RoomId) -> Result<Vec<RoleEntry>> {
    let state = rooms.current_state(guild_id)?;
    let mut out = Vec::new();
    for ((kind, key), _) in state.range(("chat.paracord.role".to_owned(), String::new())..) {
        if kind != "chat.paracord.role" {
            break;
        }
        let Some(content) = rooms.state_content(&state, kind, key)? else {
            continue;
        };
        let Ok(role) = serde_json::from_value::<RoleContent>(content) else {
            continue;
        };
        out.push(RoleEntry {
            id: key.clone(),
            role,
        });
    }
    out.sort_by(|a, b| (a.role.position, &a.id).cmp(&(b.role.position, &b.id)));
    Ok(out)
}

/// The guild's roles and owner, for the permission algorithm.
pub fn load_guild(rooms: &Rooms, guild_id: &RoomId) -> Result<Guild> {
    let content = guild_content(rooms, guild_id)?;
    let mut guild = Guild {
        owner: content.owner,
        roles: Default::default(),
    };
    for r in roles(rooms, guild_id)? {
        if let Some(role) = r.role.role() {
            guild.roles.insert(r.id, role);
        }
    }
    Ok(guild)
}

/// A member of the guild as the permission algorithm needs it.
pub fn load_member(rooms: &Rooms, guild_id: &RoomId, user: &UserId) -> Result<Member> {
    let state = rooms.current_state(guild_id)?;
    let content = rooms
        .state_content(
            &state,
            "chat.paracord.member",
            &super::events::member_state_key(user.as_str()),
        )?
        .and_then(|c| serde_json::from_value::<super::events::MemberContent>(c).ok())
        .unwrap_or_default();
    Ok(Member {
        user_id: user.to_string(),
        roles: content.roles,
        communication_disabled_until: content.communication_disabled_until,
    })
}

/// A channel room's overwrites.
pub(crate) fn overwrites(
    rooms: &Rooms,
    channel: &RoomId,
) -> Result<(ChannelOverwrites, Vec<OverwriteEntry>)> {
    let state = rooms.current_state(channel)?;
    let mut o = ChannelOverwrites::default();
    let mut list = Vec::new();
    for ((kind, key), _) in state.range(("chat.paracord.overwrite".to_owned(), String::new())..) {
        if kind != "chat.paracord.overwrite" {
            break;
        }
        let Some(content) = rooms.state_content(&state, kind, key)? else {
            continue;
        };
        let Ok(c) = serde_json::from_value::<OverwriteContent>(content) else {
            continue;
        };
        let (Some(target), Some(ow)) = (OverwriteTarget::parse(key), c.overwrite()) else {
            continue;
        };
        match target {
            OverwriteTarget::Role(r) => o.roles.insert(r, ow),
            OverwriteTarget::User(u) => o.users.insert(u, ow),
        };
        list.push(OverwriteEntry {
            id: key.clone(),
            allow: c.allow,
            deny: c.deny,
        });
    }
    Ok((o, list))
}

// ----- webhooks' users (spec/webhooks.md) -----

/// The event type that records a webhook in its channel, keyed by the webhook's id (a state
/// key may not be another user's id), its content naming the webhook's user.
pub(crate) const WEBHOOK_EVENT: &str = "chat.paracord.webhook";
/// The localpart of a webhook's user is this followed by the webhook's id.
pub(crate) const WEBHOOK_LOCALPART_PREFIX: &str = "_webhook_";

/// Whether `user` is the user of a live webhook of the channel whose state this is: its
/// localpart names a webhook whose `chat.paracord.webhook` entry names this user (a deleted
/// webhook's entry is `{}`).
pub(crate) fn is_webhook(rooms: &Rooms, state: &StateMap, user: &str) -> Result<bool> {
    let Some(id) = user
        .strip_prefix('@')
        .and_then(|u| u.strip_prefix(WEBHOOK_LOCALPART_PREFIX))
        .and_then(|u| u.split(':').next())
    else {
        return Ok(false);
    };
    Ok(rooms
        .state_content(state, WEBHOOK_EVENT, id)?
        .is_some_and(|c| c.get("user_id").and_then(Value::as_str) == Some(user)))
}

/// The users of the channel's live webhooks.
pub(crate) fn webhook_users(rooms: &Rooms, state: &StateMap) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for ((kind, key), _) in state.range((WEBHOOK_EVENT.to_owned(), String::new())..) {
        if kind != WEBHOOK_EVENT {
            break;
        }
        if let Some(user) = rooms
            .state_content(state, kind, key)?
            .and_then(|c| c.get("user_id").and_then(Value::as_str).map(str::to_owned))
        {
            if is_webhook(rooms, state, &user)? {
                out.push(user);
            }
        }
    }
    Ok(out)
}

/// A webhook's user may send messages in its channel whatever @everyone may: it gets the
/// sending level there when the default is below it.
pub(crate) fn webhook_levels(pl: &mut Value, users: &[String]) {
    let default = pl["users_default"].as_i64().unwrap_or(0);
    if default >= super::projection::SENDER_LEVEL {
        return;
    }
    if let Some(map) = pl.get_mut("users").and_then(Value::as_object_mut) {
        for u in users {
            map.insert(u.clone(), super::projection::SENDER_LEVEL.into());
        }
    }
}

// ----- writes: sent by the guild host as the owner (spec/guilds.md) -----

/// The guild's owner, who sends the guild's state: a user of this server, or
/// [`Error::HostedElsewhere`] naming the guild host, to which the API relays the request.
pub(crate) fn host_owner(rooms: &Rooms, guild: &Guild) -> Result<ruma::OwnedUserId> {
    let owner = ruma::OwnedUserId::try_from(guild.owner.as_str())
        .map_err(|_| Error::internal("guild owner is not a user id"))?;
    if owner.server_name().as_str() != rooms.config.server_name {
        return Err(Error::HostedElsewhere(owner.server_name().to_string()));
    }
    Ok(owner)
}

pub(crate) async fn send_state(
    rooms: &Rooms,
    room: &RoomId,
    sender: &UserId,
    kind: &str,
    key: &str,
    content: Value,
) -> Result<()> {
    rooms
        .append(
            room,
            sender,
            crate::rooms::NewEvent::state(kind.into(), key, content),
        )
        .await
        .map(drop)
}

/// The guild's channel rooms (its `m.space.child` rooms this server knows). A child whose
/// content has no `via` has been removed (a deleted channel) and is left out.
pub(crate) fn channel_ids(rooms: &Rooms, guild_id: &RoomId) -> Result<Vec<OwnedRoomId>> {
    let mut out = channel_rooms(rooms, guild_id)?;
    out.retain(|id| rooms.room(id).ok().flatten().is_some());
    Ok(out)
}

/// The guild's channel rooms, categories included, whether this server is in them or not:
/// the space's `m.space.child` entries with a `via`.
pub fn channel_rooms(rooms: &Rooms, guild_id: &RoomId) -> Result<Vec<OwnedRoomId>> {
    let state = rooms.current_state(guild_id)?;
    let mut out = Vec::new();
    for ((kind, key), _) in state.range(("m.space.child".to_owned(), String::new())..) {
        if kind != "m.space.child" {
            break;
        }
        let linked = rooms
            .state_content(&state, kind, key)?
            .and_then(|c| {
                c.get("via")
                    .and_then(Value::as_array)
                    .map(|v| !v.is_empty())
            })
            .unwrap_or(false);
        if let Ok(id) = OwnedRoomId::try_from(key.as_str()) {
            if linked {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// Sends the projected power levels of the space and every channel where they changed.
pub async fn reproject(rooms: &Rooms, guild_id: &RoomId) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let owner = host_owner(rooms, &guild)?;
    let mut members = Vec::new();
    for (user, m) in rooms.members(guild_id)? {
        if m == MembershipState::Join || m == MembershipState::Invite {
            members.push(load_member(rooms, guild_id, &user)?);
        }
    }
    let now = now_ms();
    let mut targets = vec![(guild_id.to_owned(), ChannelOverwrites::default())];
    for c in channel_ids(rooms, guild_id)? {
        let (o, _) = overwrites(rooms, &c)?;
        targets.push((c, o));
    }
    for (room, o) in targets {
        let v12 = rooms.room_or_404(&room)?.version == "12";
        let state = rooms.current_state(&room)?;
        let voice = rooms
            .state_content(&state, "chat.paracord.channel", "")?
            .and_then(|c| serde_json::from_value::<ChannelContent>(c).ok())
            .is_some_and(|c| c.kind == ChannelKind::Voice);
        let mut pl = power_levels(&guild, &members, &o, now, v12, voice);
        if room != guild_id {
            webhook_levels(&mut pl, &webhook_users(rooms, &state)?);
        }
        let current = rooms.current_state(&room)?;
        if rooms
            .state_content(&current, "m.room.power_levels", "")?
            .as_ref()
            != Some(&pl)
        {
            send_state(rooms, &room, &owner, "m.room.power_levels", "", pl).await?;
        }
    }
    Ok(())
}

/// `POST /guilds/{id}/roles`: MANAGE_ROLES, below the actor's highest role, with no
/// permission the actor lacks. `content` is the role asked for, already checked on its own
/// (names, ranges; the API reads the body).
pub async fn create_role(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    content: RoleContent,
) -> Result<RoleEntry> {
    let guild = load_guild(rooms, guild_id)?;
    let member = load_member(rooms, guild_id, actor)?;
    let permissions = Permissions::parse(&content.permissions)
        .ok_or_else(|| Error::invalid_param("permissions must be a u64 as a decimal string"))?;
    if !guild.may_manage_role(&member, content.position, permissions) {
        return Err(Error::forbidden(
            "creating this role needs MANAGE_ROLES, a higher role of your own and every permission it grants",
        ));
    }
    let id: String = crate::random::random_string(8);
    let owner = host_owner(rooms, &guild)?;
    send_state(
        rooms,
        guild_id,
        &owner,
        "chat.paracord.role",
        &id,
        serde_json::to_value(&content)?,
    )
    .await?;
    Ok(RoleEntry { id, role: content })
}

/// Whether a role is managed by an application (spec/applications.md).
pub(crate) fn is_managed(rooms: &Rooms, state: &StateMap, role_id: &str) -> Result<bool> {
    Ok(rooms
        .state_content(state, "chat.paracord.role", role_id)?
        .and_then(|c| serde_json::from_value::<RoleContent>(c).ok())
        .is_some_and(|r| r.managed_by.is_some()))
}

/// The refusal of a hand-made change to a managed role's members or existence.
pub(crate) fn managed_role() -> Error {
    Error::forbidden(
        "this role is managed by an application: it goes when the application is removed from the guild",
    )
}

/// `PUT`/`DELETE /guilds/{id}/members/{userId}/roles/{roleId}`: MANAGE_ROLES and the
/// hierarchy for the role; then the power levels follow.
pub async fn set_member_role(
    rooms: &Rooms,
    guild_id: &RoomId,
    actor: &UserId,
    target: &UserId,
    role_id: &str,
    add: bool,
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let role = guild
        .roles
        .get(role_id)
        .filter(|_| role_id != EVERYONE)
        .cloned()
        .ok_or_else(|| Error::not_found("no such role"))?;
    if !matches!(
        rooms.membership(guild_id, target)?,
        Some(MembershipState::Join) | Some(MembershipState::Invite)
    ) {
        return Err(Error::not_found("not a member of this guild"));
    }
    let actor_member = load_member(rooms, guild_id, actor)?;
    if !guild.may_manage_role(&actor_member, role.position, role.permissions) {
        return Err(Error::forbidden(
            "assigning this role needs MANAGE_ROLES and a higher role of your own",
        ));
    }
    let state = rooms.current_state(guild_id)?;
    if is_managed(rooms, &state, role_id)? {
        return Err(managed_role());
    }
    let key = super::events::member_state_key(target.as_str());
    let mut content: super::events::MemberContent = rooms
        .state_content(&state, "chat.paracord.member", &key)?
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let had = content.roles.iter().any(|r| r == role_id);
    if add && !had {
        content.roles.push(role_id.to_owned());
    } else if !add && had {
        content.roles.retain(|r| r != role_id);
    }
    if add != had {
        let owner = host_owner(rooms, &guild)?;
        send_state(
            rooms,
            guild_id,
            &owner,
            "chat.paracord.member",
            &key,
            serde_json::to_value(&content)?,
        )
        .await?;
        reproject(rooms, guild_id).await?;
    }
    Ok(())
}

/// `GET /channels/{id}/permissions/{userId}`: the effective permissions now, none when the
/// user cannot see the channel. The asker must see it.
pub fn effective_permissions(
    rooms: &Rooms,
    channel: &RoomId,
    asker: &UserId,
    user: &UserId,
) -> Result<Permissions> {
    let state = rooms.current_state(channel)?;
    let guild_id = state
        .range(("m.space.parent".to_owned(), String::new())..)
        .take_while(|((k, _), _)| k == "m.space.parent")
        .find_map(|((_, key), _)| OwnedRoomId::try_from(key.as_str()).ok())
        .ok_or_else(|| Error::not_found("no such channel"))?;
    if rooms
        .state_content(&state, "chat.paracord.channel", "")?
        .is_none()
    {
        return Err(Error::not_found("no such channel"));
    }
    let guild = load_guild(rooms, &guild_id)?;
    let (o, _) = overwrites(rooms, channel)?;
    let now = now_ms();
    let asker_member = load_member(rooms, &guild_id, asker)?;
    if !rooms.is_joined(&guild_id, asker)?
        || !guild
            .channel_permissions(&asker_member, &o, now)
            .contains(Permissions::VIEW_CHANNEL)
    {
        return Err(Error::not_found("no such channel"));
    }
    if !matches!(
        rooms.membership(&guild_id, user)?,
        Some(MembershipState::Join) | Some(MembershipState::Invite)
    ) {
        return Err(Error::not_found("not a member of this guild"));
    }
    let member = load_member(rooms, &guild_id, user)?;
    Ok(guild.channel_permissions(&member, &o, now))
}
