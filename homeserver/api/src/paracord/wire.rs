//! The wire of `/_paracord/v1` (spec/rest.md): the request bodies and the objects answered,
//! as declared by the spec, and the checks a body gets before the guild is looked at.
//!
//! Requests are read in two steps, so that a bad field gets the error code and message the
//! spec's conventions ask for (spec/rest.md §1.1: a field of the wrong type is `M_BAD_JSON`, a
//! value out of range `M_INVALID_PARAM`, a missing one `M_MISSING_PARAM`) and names the field:
//! reading a body never fails on a field ([`Input`] keeps what was sent), then each request's
//! `check` turns it into the service's request type, field by field. Unknown fields are
//! ignored (spec/rest.md §1 "Unknown request fields MUST be ignored").

use std::collections::{BTreeSet, HashSet};

use paracord_core::{Error, Result};
use paracord_service::guilds::{
    channels::{ChannelInfo, ChannelUpdate, Field, GuildUpdate, Move, NewChannel},
    create::{CreatedGuild, NewGuild},
    events::{ChannelKind, GuildContent, OverwriteTarget, RoleContent},
    members::{
        BanInfo, BanRequest, InviteInfo, InviteLimits, MemberChanges, MemberInfo, RoleChanges,
        RoleMove, MAX_DELETE_SECONDS, MAX_INVITE_AGE, MAX_INVITE_USES, MAX_TIMEOUT_MS,
    },
    permissions::{Overwrite as Grant, Permissions, EVERYONE},
    store::{OverwriteEntry, RoleEntry},
    webhooks,
};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

/// Longest channel or guild name, in characters (spec/guilds.md §1, §2).
const MAX_NAME: usize = 100;
/// Longest guild description (spec/guilds.md §1).
const MAX_DESCRIPTION: usize = 1000;
/// Longest channel topic (spec/guilds.md §2).
const MAX_TOPIC: usize = 1024;
/// Longest slow mode, in seconds (spec/guilds.md §2).
const MAX_RATE_LIMIT: i64 = 21_600;
/// Longest role name and nick, in characters (spec/guilds.md §3, §4).
const MAX_ROLE_NAME: usize = 100;
const MAX_NICK: usize = 32;

// ----- reading -----

/// A field of a request body as sent, before it is checked: absent, `null`, a value of the
/// JSON type asked for, or a value of another type. Reading it never fails: the request's
/// `check` answers for a wrong type, with the field's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Input<T> {
    #[default]
    Absent,
    Null,
    Value(T),
    WrongType,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Input<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if v.is_null() {
            return Ok(Input::Null);
        }
        Ok(serde_json::from_value(v).map_or(Input::WrongType, Input::Value))
    }
}

/// An object inside a request (an item of a list): read only from a JSON object (a derived
/// `Deserialize` would also take an array of the fields' values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Obj<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        serde_json::from_value(Value::Object(map))
            .map(Obj)
            .map_err(serde::de::Error::custom)
    }
}

/// A request body (a JSON object or array, already read as JSON) as `T`. Every field of the
/// request types is an [`Input`], so this fails only on a body of another shape.
pub(crate) fn read<T: DeserializeOwned>(body: Value) -> Result<T> {
    serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))
}

// ----- checks of single fields -----

fn wrong(key: &str, what: &str) -> Error {
    Error::bad_json(format!("{key} must be {what}"))
}

/// A string field: absent (keep), `null` (remove) or a string.
fn text(v: Input<String>, key: &str) -> Result<Field<String>> {
    match v {
        Input::Absent => Ok(Field::Keep),
        Input::Null => Ok(Field::Remove),
        Input::Value(s) => Ok(Field::Set(s)),
        Input::WrongType => Err(wrong(key, "a string")),
    }
}

/// A string field where `null` is a wrong type too.
fn string(v: Input<String>, key: &str) -> Result<Option<String>> {
    match v {
        Input::Absent => Ok(None),
        Input::Value(s) => Ok(Some(s)),
        Input::Null | Input::WrongType => Err(wrong(key, "a string")),
    }
}

fn flag(v: Input<bool>, key: &str) -> Result<Option<bool>> {
    match v {
        Input::Absent => Ok(None),
        Input::Value(b) => Ok(Some(b)),
        Input::Null | Input::WrongType => Err(wrong(key, "a boolean")),
    }
}

/// An integer from 0 to `max`: another number is out of range (`M_INVALID_PARAM`, as for
/// "position not an integer" in spec/rest.md §1.1), anything else has the wrong type.
fn bounded_integer(v: Input<Number>, key: &str, max: i64) -> Result<Option<i64>> {
    match v {
        Input::Absent => Ok(None),
        Input::Value(n) => n
            .as_i64()
            .filter(|v| (0..=max).contains(v))
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_param(format!("{key} must be an integer from 0 to {max}"))
            }),
        Input::Null | Input::WrongType => Err(wrong(key, "an integer")),
    }
}

/// An integer of any sign: another type is malformed, a fraction or a huge number is out of
/// range.
fn integer(v: Number, key: &str) -> Result<i64> {
    v.as_i64()
        .ok_or_else(|| Error::invalid_param(format!("{key} must be an integer")))
}

/// An integer field where `null` is a wrong type: see [`integer`].
fn integer_field(v: Input<Number>, key: &str) -> Result<Option<i64>> {
    match v {
        Input::Absent => Ok(None),
        Input::Value(n) => integer(n, key).map(Some),
        Input::Null | Input::WrongType => Err(wrong(key, "an integer")),
    }
}

/// An integer from 0 to `max`, `default` when absent.
fn limit(v: Input<Number>, key: &str, default: u64, max: u64) -> Result<u64> {
    let Some(n) = integer_field(v, key)? else {
        return Ok(default);
    };
    u64::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| Error::invalid_param(format!("{key} is 0 to {max}")))
}

/// A room id field: absent, `null` or a room id.
fn room_field(v: Input<String>, key: &str) -> Result<Field<OwnedRoomId>> {
    Ok(match text(v, key)? {
        Field::Keep => Field::Keep,
        Field::Remove => Field::Remove,
        Field::Set(s) => Field::Set(
            OwnedRoomId::try_from(s)
                .map_err(|_| Error::invalid_param(format!("{key} must be a room id")))?,
        ),
    })
}

fn name_of(key: &str, s: String) -> Result<String> {
    if s.trim().is_empty() || s.chars().count() > MAX_NAME {
        return Err(Error::invalid_param(format!(
            "{key} has 1 to {MAX_NAME} characters"
        )));
    }
    Ok(s)
}

fn kind_of(s: String) -> Result<ChannelKind> {
    serde_json::from_value(Value::String(s)).map_err(|_| {
        Error::invalid_param("kind is one of text, voice, forum, announcement, category")
    })
}

fn kind_field(v: Input<String>) -> Result<Option<ChannelKind>> {
    string(v, "kind")?.map(kind_of).transpose()
}

/// A topic: at most [`MAX_TOPIC`] characters; an empty one is none.
fn topic_field(v: Input<String>) -> Result<Field<String>> {
    Ok(match text(v, "topic")? {
        Field::Set(s) if s.chars().count() > MAX_TOPIC => {
            return Err(Error::invalid_param(format!(
                "topic has at most {MAX_TOPIC} characters"
            )))
        }
        Field::Set(s) if s.is_empty() => Field::Remove,
        other => other,
    })
}

fn permissions_text(s: &str, key: &str) -> Result<Permissions> {
    Permissions::parse(s)
        .ok_or_else(|| Error::invalid_param(format!("{key} must be a u64 as a decimal string")))
}

/// One side of an overwrite: none when absent.
fn grant(v: Input<String>, key: &str) -> Result<Permissions> {
    match string(v, key)? {
        None => Ok(Permissions::NONE),
        Some(s) => permissions_text(&s, key),
    }
}

/// An overwrite id (spec/rest.md §10): `role:<role id>` or `user:<user id>`.
pub(crate) fn overwrite_target(id: &str) -> Result<OverwriteTarget> {
    let target = OverwriteTarget::parse(id).ok_or_else(|| {
        Error::invalid_param("an overwrite id is role:<role id> or user:<user id>")
    })?;
    if let OverwriteTarget::User(u) = &target {
        if UserId::parse(u.as_str()).is_err() {
            return Err(Error::invalid_param(format!("{u} is not a user id")));
        }
    }
    Ok(target)
}

// ----- requests: guilds and channels (spec/rest.md §5, §6, §10) -----

/// `POST /_paracord/v1/guilds` (spec/rest.md §5): `name`, optional `description` and `icon`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CreateGuild {
    pub name: Input<String>,
    pub description: Input<String>,
    pub icon: Input<String>,
}

impl CreateGuild {
    pub(crate) fn check(self) -> Result<NewGuild> {
        let optional = |v: Input<String>, key: &str| -> Result<Option<String>> {
            match text(v, key)? {
                Field::Set(s) => Ok(Some(s)),
                Field::Keep | Field::Remove => Ok(None),
            }
        };
        let name =
            optional(self.name, "name")?.ok_or_else(|| Error::missing_param("name is required"))?;
        let description = optional(self.description, "description")?;
        let icon = optional(self.icon, "icon")?;
        if name.trim().is_empty() || name.chars().count() > MAX_NAME {
            return Err(Error::invalid_param("a guild name has 1 to 100 characters"));
        }
        if icon.as_deref().is_some_and(|i| !i.starts_with("mxc://")) {
            return Err(Error::invalid_param("icon must be an mxc:// URI"));
        }
        Ok(NewGuild {
            name,
            description,
            icon,
        })
    }
}

/// `PATCH /_paracord/v1/guilds/{guildId}` (spec/rest.md §5): any of `name`, `description`,
/// `icon`, `system_channel`; `owner` and `version` only unchanged.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UpdateGuild {
    pub owner: Input<String>,
    pub version: Input<String>,
    pub name: Input<String>,
    pub description: Input<String>,
    pub icon: Input<String>,
    pub system_channel: Input<String>,
}

impl UpdateGuild {
    pub(crate) fn check(self) -> Result<GuildUpdate> {
        let given = |v: Input<String>| match v {
            Input::Absent => None,
            Input::Value(s) => Some(Some(s)),
            Input::Null | Input::WrongType => Some(None),
        };
        let name = match text(self.name, "name")? {
            Field::Keep => None,
            Field::Remove => return Err(Error::invalid_param("a guild must have a name")),
            Field::Set(s) => Some(name_of("name", s)?),
        };
        let description = match text(self.description, "description")? {
            Field::Set(s) if s.chars().count() > MAX_DESCRIPTION => {
                return Err(Error::invalid_param(format!(
                    "description has at most {MAX_DESCRIPTION} characters"
                )))
            }
            other => other,
        };
        let icon = match text(self.icon, "icon")? {
            Field::Set(s) if !s.starts_with("mxc://") => {
                return Err(Error::invalid_param("icon must be an mxc:// URI"))
            }
            other => other,
        };
        Ok(GuildUpdate {
            owner: given(self.owner),
            version: given(self.version),
            name,
            description,
            icon,
            system_channel: room_field(self.system_channel, "system_channel")?,
        })
    }
}

/// An item of `permission_overwrites` (spec/rest.md §6), as the overwrite of §10 with its
/// `id`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct OverwriteItem {
    pub id: Input<String>,
    pub allow: Input<String>,
    pub deny: Input<String>,
}

/// `permission_overwrites` of a new channel: `None` when absent or `null`.
fn overwrite_list(
    v: Input<Vec<Input<Obj<OverwriteItem>>>>,
) -> Result<Option<Vec<(OverwriteTarget, Grant)>>> {
    let items = match v {
        Input::Absent | Input::Null => return Ok(None),
        Input::Value(items) => items,
        Input::WrongType => return Err(Error::bad_json("permission_overwrites must be an array")),
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Input::Value(Obj(item)) = item else {
            return Err(Error::bad_json("each overwrite must be an object"));
        };
        let id = match item.id {
            Input::Absent => return Err(Error::missing_param("each overwrite needs an id")),
            Input::Value(s) => s,
            Input::Null | Input::WrongType => {
                return Err(Error::bad_json("an overwrite's id must be a string"))
            }
        };
        let target = overwrite_target(&id)?;
        if !seen.insert(target.state_key()) {
            return Err(Error::invalid_param(format!(
                "overwrite {id} is given twice"
            )));
        }
        let ow = Grant {
            allow: grant(item.allow, "allow")?,
            deny: grant(item.deny, "deny")?,
        };
        out.push((target, ow));
    }
    Ok(Some(out))
}

/// `POST /_paracord/v1/guilds/{guildId}/channels` (spec/rest.md §6): `name` and `kind`,
/// optional `parent`, `topic`, `position`, `nsfw`, `rate_limit_per_user`,
/// `permission_overwrites`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CreateChannel {
    pub name: Input<String>,
    pub kind: Input<String>,
    pub parent: Input<String>,
    pub topic: Input<String>,
    pub position: Input<Number>,
    pub nsfw: Input<bool>,
    pub rate_limit_per_user: Input<Number>,
    pub permission_overwrites: Input<Vec<Input<Obj<OverwriteItem>>>>,
}

impl CreateChannel {
    pub(crate) fn check(self) -> Result<NewChannel> {
        let name = match text(self.name, "name")? {
            Field::Set(s) => name_of("name", s)?,
            Field::Keep => return Err(Error::missing_param("name is required")),
            Field::Remove => return Err(wrong("name", "a string")),
        };
        let kind = match self.kind {
            Input::Absent => return Err(Error::missing_param("kind is required")),
            Input::Value(s) => kind_of(s)?,
            Input::Null | Input::WrongType => return Err(wrong("kind", "a string")),
        };
        let parent = match room_field(self.parent, "parent")? {
            Field::Set(id) => Some(id),
            Field::Keep | Field::Remove => None,
        };
        let topic = match topic_field(self.topic)? {
            Field::Set(s) => Some(s),
            Field::Keep | Field::Remove => None,
        };
        Ok(NewChannel {
            name,
            kind,
            parent,
            topic,
            position: bounded_integer(self.position, "position", i64::MAX)?,
            nsfw: flag(self.nsfw, "nsfw")?,
            rate_limit: bounded_integer(
                self.rate_limit_per_user,
                "rate_limit_per_user",
                MAX_RATE_LIMIT,
            )?,
            overwrites: overwrite_list(self.permission_overwrites)?,
        })
    }
}

/// An item of `PATCH /_paracord/v1/guilds/{guildId}/channels` (spec/rest.md §6): `id`,
/// `position`, optionally `parent` (`null` = top level).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ChannelMove {
    pub id: Input<String>,
    pub position: Input<Number>,
    pub parent: Input<String>,
}

/// The items of a `PATCH /_paracord/v1/guilds/{guildId}/channels` body.
pub(crate) fn channel_moves(items: Vec<Input<Obj<ChannelMove>>>) -> Result<Vec<Move>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Input::Value(Obj(item)) = item else {
            return Err(Error::bad_json("each item must be an object"));
        };
        let id = match item.id {
            Input::Absent => return Err(Error::missing_param("each item needs an id")),
            Input::Value(s) => {
                OwnedRoomId::try_from(s).map_err(|_| Error::not_found("no such channel"))?
            }
            Input::Null | Input::WrongType => return Err(wrong("id", "a string")),
        };
        if !seen.insert(id.clone()) {
            return Err(Error::invalid_param(format!("{id} is listed twice")));
        }
        let parent = room_field(item.parent, "parent")?;
        out.push(Move {
            id,
            position: bounded_integer(item.position, "position", i64::MAX)?,
            parent,
        });
    }
    Ok(out)
}

/// `PATCH /_paracord/v1/channels/{channelId}` (spec/rest.md §6): any of `name`, `topic`,
/// `kind`, `position`, `parent`, `nsfw`, `rate_limit_per_user`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UpdateChannel {
    pub name: Input<String>,
    pub topic: Input<String>,
    pub kind: Input<String>,
    pub parent: Input<String>,
    pub position: Input<Number>,
    pub nsfw: Input<bool>,
    pub rate_limit_per_user: Input<Number>,
}

impl UpdateChannel {
    pub(crate) fn check(self) -> Result<ChannelUpdate> {
        let name = match text(self.name, "name")? {
            Field::Keep => None,
            Field::Remove => return Err(Error::invalid_param("a channel must have a name")),
            Field::Set(s) => Some(name_of("name", s)?),
        };
        Ok(ChannelUpdate {
            name,
            topic: topic_field(self.topic)?,
            kind: kind_field(self.kind)?,
            parent: room_field(self.parent, "parent")?,
            position: bounded_integer(self.position, "position", i64::MAX)?,
            nsfw: flag(self.nsfw, "nsfw")?,
            rate_limit: bounded_integer(
                self.rate_limit_per_user,
                "rate_limit_per_user",
                MAX_RATE_LIMIT,
            )?,
        })
    }
}

/// `PUT /_paracord/v1/channels/{channelId}/permissions/{overwriteId}` (spec/rest.md §10):
/// `allow` and `deny`, each none when absent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PutOverwrite {
    pub allow: Input<String>,
    pub deny: Input<String>,
}

impl PutOverwrite {
    /// The overwrite `overwrite_id` names, and what it grants.
    pub(crate) fn check(self, overwrite_id: &str) -> Result<(OverwriteTarget, Grant)> {
        let target = overwrite_target(overwrite_id)?;
        let ow = Grant {
            allow: grant(self.allow, "allow")?,
            deny: grant(self.deny, "deny")?,
        };
        Ok((target, ow))
    }
}

// ----- requests: roles, members, bans, invites (spec/rest.md §7–9, §11) -----

/// `POST /_paracord/v1/guilds/{guildId}/roles` (spec/rest.md §7): all fields optional,
/// defaults `"new role"`, 0, 1, `false`, `false`, `"0"`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CreateRole {
    pub name: Input<String>,
    pub color: Input<Number>,
    pub position: Input<Number>,
    pub hoist: Input<bool>,
    pub mentionable: Input<bool>,
    pub permissions: Input<String>,
}

impl CreateRole {
    /// The role asked for; whether the requester may create it is the service's check.
    pub(crate) fn check(self) -> Result<RoleContent> {
        // A fraction is out of range, as everywhere (spec/rest.md §1.1).
        let number = |v: Input<Number>, key: &str, default: i64| {
            integer_field(v, key).map(|n| n.unwrap_or(default))
        };
        let permissions = permissions_text(
            &string(self.permissions, "permissions")?.unwrap_or_else(|| "0".to_owned()),
            "permissions",
        )?;
        let position = number(self.position, "position", 1)?;
        let color = u32::try_from(number(self.color, "color", 0)?)
            .ok()
            .filter(|c| *c <= 0xFF_FFFF)
            .ok_or_else(|| Error::invalid_param("color is 0 to 0xFFFFFF"))?;
        if position < 1 {
            return Err(Error::invalid_param(
                "a role's position is at least 1 (@everyone is 0)",
            ));
        }
        let content = RoleContent {
            name: string(self.name, "name")?.unwrap_or_else(|| "new role".to_owned()),
            color,
            position,
            hoist: flag(self.hoist, "hoist")?.unwrap_or(false),
            mentionable: flag(self.mentionable, "mentionable")?.unwrap_or(false),
            permissions: permissions.to_wire(),
            managed_by: None,
        };
        if content.name.is_empty() || content.name.chars().count() > MAX_ROLE_NAME {
            return Err(Error::invalid_param("a role name has 1 to 100 characters"));
        }
        Ok(content)
    }
}

/// `PATCH /_paracord/v1/guilds/{guildId}/roles/{roleId}` (spec/rest.md §7): any of `name`,
/// `color`, `position`, `hoist`, `mentionable`, `permissions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UpdateRole {
    pub name: Input<String>,
    pub color: Input<Number>,
    pub position: Input<Number>,
    pub hoist: Input<bool>,
    pub mentionable: Input<bool>,
    pub permissions: Input<String>,
}

impl UpdateRole {
    pub(crate) fn check(self) -> Result<RoleChanges> {
        let name = string(self.name, "name")?;
        if name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.chars().count() > MAX_ROLE_NAME)
        {
            return Err(Error::invalid_param("a role name has 1 to 100 characters"));
        }
        let color = integer_field(self.color, "color")?
            .map(|c| {
                u32::try_from(c)
                    .ok()
                    .filter(|c| *c <= 0xFF_FFFF)
                    .ok_or_else(|| Error::invalid_param("color is 0 to 0xFFFFFF"))
            })
            .transpose()?;
        let position = integer_field(self.position, "position")?;
        let hoist = flag(self.hoist, "hoist")?;
        let mentionable = flag(self.mentionable, "mentionable")?;
        let permissions = string(self.permissions, "permissions")?
            .map(|p| permissions_text(&p, "permissions"))
            .transpose()?;
        Ok(RoleChanges {
            name,
            color,
            position,
            hoist,
            mentionable,
            permissions,
        })
    }
}

/// An entry of `PATCH /_paracord/v1/guilds/{guildId}/roles` (spec/rest.md §7): `id` and
/// `position`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RolePosition {
    pub id: Input<String>,
    pub position: Input<Number>,
}

/// The entries of a `PATCH /_paracord/v1/guilds/{guildId}/roles` body, each role once.
pub(crate) fn role_moves(items: Vec<Input<Obj<RolePosition>>>) -> Result<Vec<RoleMove>> {
    let mut seen = HashSet::new();
    let mut moves = Vec::with_capacity(items.len());
    for item in items {
        let Input::Value(Obj(item)) = item else {
            return Err(Error::bad_json(
                "each entry is an object with id and position",
            ));
        };
        let id = match item.id {
            Input::Absent => return Err(Error::missing_param("each entry needs an id")),
            other => string(other, "id")?.unwrap_or_default(),
        };
        let position = match item.position {
            Input::Absent => return Err(Error::missing_param("each entry needs a position")),
            other => integer_field(other, "position")?.unwrap_or_default(),
        };
        if !seen.insert(id.clone()) {
            return Err(Error::invalid_param(format!("role {id} is listed twice")));
        }
        moves.push(RoleMove { id, position });
    }
    Ok(moves)
}

/// `PATCH /_paracord/v1/guilds/{guildId}/members/{userId}` (spec/rest.md §8): any of `nick`,
/// `roles` (the full list), `communication_disabled_until`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UpdateMember {
    pub nick: Input<String>,
    pub roles: Input<Vec<Input<String>>>,
    pub communication_disabled_until: Input<Number>,
}

impl UpdateMember {
    /// The changes asked for at `now` (ms).
    pub(crate) fn check(self, now: u64) -> Result<MemberChanges> {
        let nick = match self.nick {
            Input::Absent => None,
            Input::Null => Some(None),
            other => {
                let n = string(other, "nick")?.unwrap_or_default();
                if n.is_empty() || n.chars().count() > MAX_NICK {
                    return Err(Error::invalid_param("a nick has 1 to 32 characters"));
                }
                Some(Some(n))
            }
        };
        let roles = match self.roles {
            Input::Absent => None,
            Input::Value(list) => {
                // Repeats are dropped through a set: a body of a megabyte holds some 100,000
                // role ids, too many to compare each with every other.
                let mut seen = HashSet::new();
                let mut ids: Vec<String> = Vec::new();
                for v in list {
                    let id = match v {
                        Input::Value(id) => id,
                        _ => return Err(wrong("roles", "a string")),
                    };
                    if id != EVERYONE && seen.insert(id.clone()) {
                        ids.push(id);
                    }
                }
                Some(ids)
            }
            Input::Null | Input::WrongType => {
                return Err(Error::bad_json("roles must be an array of role ids"))
            }
        };
        let key = "communication_disabled_until";
        let timeout = match self.communication_disabled_until {
            Input::Absent => None,
            Input::Null => Some(None),
            Input::WrongType => return Err(wrong(key, "an integer")),
            Input::Value(n) => {
                let until = u64::try_from(integer(n, key)?).map_err(|_| {
                    Error::invalid_param("communication_disabled_until is a time in ms")
                })?;
                if until > now.saturating_add(MAX_TIMEOUT_MS) {
                    return Err(Error::invalid_param(
                        "a timeout reaches at most 28 days ahead",
                    ));
                }
                // A timeout in the past means none.
                Some(Some(until).filter(|t| *t > now))
            }
        };
        Ok(MemberChanges {
            nick,
            roles,
            timeout,
        })
    }
}

/// `PUT /_paracord/v1/guilds/{guildId}/bans/{userId}` (spec/rest.md §9): optional `reason`
/// and `delete_message_seconds` (0–604800, default 0).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PutBan {
    pub reason: Input<String>,
    pub delete_message_seconds: Input<Number>,
}

impl PutBan {
    pub(crate) fn check(self) -> Result<BanRequest> {
        let reason = match self.reason {
            Input::Absent | Input::Null => None,
            other => string(other, "reason")?,
        };
        Ok(BanRequest {
            reason,
            delete_message_seconds: limit(
                self.delete_message_seconds,
                "delete_message_seconds",
                0,
                MAX_DELETE_SECONDS,
            )?,
        })
    }
}

/// `POST /_paracord/v1/channels/{channelId}/invites` (spec/rest.md §11): `max_age` seconds
/// (0–604800, default 86400), `max_uses` (0–100, default 0).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CreateInvite {
    pub max_age: Input<Number>,
    pub max_uses: Input<Number>,
}

impl CreateInvite {
    pub(crate) fn check(self) -> Result<InviteLimits> {
        Ok(InviteLimits {
            max_age: limit(self.max_age, "max_age", 86_400, MAX_INVITE_AGE)?,
            max_uses: limit(self.max_uses, "max_uses", 0, MAX_INVITE_USES)?,
        })
    }
}

// ----- responses (spec/rest.md §2, §4) -----

/// `{}`: the answer to a deletion and to the other requests without an object to answer
/// (spec/rest.md §1).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Empty {}

/// `GET /_paracord/v1/versions` (spec/rest.md §2).
#[derive(Debug, Serialize)]
pub(crate) struct Versions {
    pub versions: Vec<&'static str>,
}

/// The Guild object (spec/rest.md §4).
#[derive(Debug, Serialize)]
pub(crate) struct Guild {
    pub id: OwnedRoomId,
    pub version: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_channel: Option<String>,
}

impl Guild {
    pub(crate) fn new(id: OwnedRoomId, g: GuildContent) -> Guild {
        Guild {
            id,
            version: g.version,
            name: g.name,
            description: g.description,
            icon: g.icon,
            owner: g.owner,
            system_channel: g.system_channel,
        }
    }
}

/// The answer to `POST /_paracord/v1/guilds` (spec/rest.md §5): the Guild object, with its
/// `channels` and `roles`.
#[derive(Debug, Serialize)]
pub(crate) struct CreatedGuildAnswer {
    #[serde(flatten)]
    pub guild: Guild,
    pub channels: Vec<Channel>,
    pub roles: Vec<Role>,
}

impl From<CreatedGuild> for CreatedGuildAnswer {
    fn from(c: CreatedGuild) -> Self {
        CreatedGuildAnswer {
            guild: Guild::new(c.id, c.guild),
            channels: c.channels.into_iter().map(Channel::from).collect(),
            roles: c.roles.into_iter().map(Role::from).collect(),
        }
    }
}

/// A permission overwrite (spec/rest.md §4 Channel, §10), with its `id`.
#[derive(Debug, Serialize)]
pub(crate) struct Overwrite {
    pub id: String,
    pub allow: String,
    pub deny: String,
}

impl From<OverwriteEntry> for Overwrite {
    fn from(o: OverwriteEntry) -> Self {
        Overwrite {
            id: o.id,
            allow: o.allow,
            deny: o.deny,
        }
    }
}

/// The Channel object (spec/rest.md §4).
#[derive(Debug, Serialize)]
pub(crate) struct Channel {
    pub id: OwnedRoomId,
    pub guild_id: OwnedRoomId,
    pub kind: ChannelKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub position: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nsfw: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_user: Option<u64>,
    pub permission_overwrites: Vec<Overwrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceInfo>,
}

impl From<ChannelInfo> for Channel {
    fn from(c: ChannelInfo) -> Self {
        Channel {
            id: c.id,
            guild_id: c.guild_id,
            kind: c.content.kind,
            name: c.name,
            topic: c.content.topic,
            position: c.content.position,
            parent: c.content.parent,
            nsfw: c.content.nsfw,
            rate_limit_per_user: c.content.rate_limit_per_user,
            permission_overwrites: c.overwrites.into_iter().map(Overwrite::from).collect(),
            voice: c.voice_available.map(|available| VoiceInfo { available }),
        }
    }
}

/// A voice channel's `voice` field (spec/voice.md §5): whether calls can happen here.
#[derive(Debug, Serialize)]
pub(crate) struct VoiceInfo {
    pub available: bool,
}

/// The Role object (spec/rest.md §4).
#[derive(Debug, Serialize)]
pub(crate) struct Role {
    pub id: String,
    pub name: String,
    pub color: u32,
    pub position: i64,
    pub hoist: bool,
    pub mentionable: bool,
    /// A u64 as a decimal string.
    pub permissions: String,
    /// Only on a managed role (spec/applications.md): `true`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub managed: bool,
    /// Only on a managed role: the application and its bot user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<RoleTags>,
}

/// What a managed role belongs to (spec/applications.md).
#[derive(Debug, Serialize)]
pub(crate) struct RoleTags {
    pub application_id: String,
}

impl From<RoleEntry> for Role {
    fn from(r: RoleEntry) -> Self {
        Role {
            id: r.id,
            name: r.role.name,
            color: r.role.color,
            position: r.role.position,
            hoist: r.role.hoist,
            mentionable: r.role.mentionable,
            permissions: r.role.permissions,
            managed: r.role.managed_by.is_some(),
            tags: r
                .role
                .managed_by
                .map(|application_id| RoleTags { application_id }),
        }
    }
}

/// The Member object (spec/rest.md §4); every field is sent, `null` when there is none.
#[derive(Debug, Serialize)]
pub(crate) struct Member {
    pub user_id: OwnedUserId,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub nick: Option<String>,
    pub roles: Vec<String>,
    pub communication_disabled_until: Option<u64>,
    pub joined_at: Option<u64>,
    /// Only for an application's bot user (spec/applications.md): `true`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bot: bool,
}

impl From<MemberInfo> for Member {
    fn from(m: MemberInfo) -> Self {
        Member {
            bot: paracord_service::accounts::is_bot_user(&m.user_id),
            user_id: m.user_id,
            displayname: m.displayname,
            avatar_url: m.avatar_url,
            nick: m.nick,
            roles: m.roles,
            communication_disabled_until: m.communication_disabled_until,
            joined_at: m.joined_at,
        }
    }
}

/// The Ban object (spec/rest.md §4); `reason` is `null` when there is none.
#[derive(Debug, Serialize)]
pub(crate) struct Ban {
    pub user_id: OwnedUserId,
    pub reason: Option<String>,
}

impl From<BanInfo> for Ban {
    fn from(b: BanInfo) -> Self {
        Ban {
            user_id: b.user_id,
            reason: b.reason,
        }
    }
}

/// The guild an Invite leads to (spec/rest.md §4).
#[derive(Debug, Serialize)]
pub(crate) struct InviteGuild {
    pub id: OwnedRoomId,
    pub name: String,
    pub icon: Option<String>,
    pub description: Option<String>,
    pub member_count: usize,
}

/// The channel an Invite leads to (spec/rest.md §4).
#[derive(Debug, Serialize)]
pub(crate) struct InviteChannel {
    pub id: String,
    pub name: Option<String>,
}

/// The Invite object (spec/rest.md §4).
#[derive(Debug, Serialize)]
pub(crate) struct Invite {
    pub code: String,
    pub guild: InviteGuild,
    pub channel: InviteChannel,
    pub inviter: String,
    pub created_at: u64,
    pub max_age: u64,
    pub max_uses: u64,
    pub uses: u64,
    pub revoked: bool,
    pub expires_at: Option<u64>,
}

impl From<InviteInfo> for Invite {
    fn from(i: InviteInfo) -> Self {
        Invite {
            code: i.code,
            guild: InviteGuild {
                id: i.guild_id,
                name: i.guild.name,
                icon: i.guild.icon,
                description: i.guild.description,
                member_count: i.member_count,
            },
            channel: InviteChannel {
                id: i.invite.channel,
                name: i.channel_name,
            },
            inviter: i.invite.inviter,
            created_at: i.invite.created_at,
            max_age: i.invite.max_age,
            max_uses: i.invite.max_uses,
            uses: i.invite.uses,
            revoked: i.invite.revoked,
            expires_at: i.expires_at,
        }
    }
}

/// The answer to `POST /_paracord/v1/invites/{code}` (spec/rest.md §11).
#[derive(Debug, Serialize)]
pub(crate) struct InviteAccepted {
    pub guild_id: OwnedRoomId,
    pub channel_id: OwnedRoomId,
}

/// The answer to `GET /_paracord/v1/channels/{channelId}/permissions/{userId}` (spec/rest.md
/// §10).
#[derive(Debug, Serialize)]
pub(crate) struct EffectivePermissions {
    /// A u64 as a decimal string.
    pub permissions: String,
}

// ----- the relay (spec/rest.md §3) -----

/// The body of `PUT /_paracord/federation/v1/relay/{txnId}` as the relaying server sends it.
#[derive(Debug, Serialize)]
pub(crate) struct RelayRequest<'a> {
    pub user_id: &'a UserId,
    pub method: &'a str,
    /// The request's path and query string.
    pub path: &'a str,
    /// The relayed request's body, omitted when it has none: any JSON, as its endpoint takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The body of `PUT /_paracord/federation/v1/relay/{txnId}` as the guild host reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RelayedBody {
    pub user_id: Input<String>,
    pub method: Input<String>,
    pub path: Input<String>,
    /// Opaque here: the relayed endpoint reads it.
    pub body: Option<Value>,
}

/// The guild host's answer to a relay: the relayed request's status and body, which the
/// relaying server returns to its client unchanged (the body is whatever the endpoint
/// answered, an object, an array or an error).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RelayAnswer {
    pub status: u16,
    pub body: Value,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errcode(e: Error) -> String {
        e.classify().1["errcode"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn body<T: DeserializeOwned>(v: Value) -> T {
        read(v).unwrap()
    }

    #[test]
    fn fields_are_read_whatever_their_type_and_checked_after() {
        let b: UpdateChannel = body(json!({ "position": 1.5, "rate_limit_per_user": 21601,
            "nsfw": "no", "name": 3, "topic": null, "kind": "forum", "unknown": 7 }));
        assert_eq!(b.name, Input::WrongType);
        assert_eq!(b.topic, Input::Null);
        assert_eq!(b.parent, Input::Absent);
        assert_eq!(b.kind, Input::Value("forum".to_owned()));
        assert_eq!(
            errcode(bounded_integer(b.position, "position", i64::MAX).unwrap_err()),
            "M_INVALID_PARAM"
        );
        assert_eq!(
            errcode(
                bounded_integer(b.rate_limit_per_user, "rate_limit_per_user", MAX_RATE_LIMIT)
                    .unwrap_err()
            ),
            "M_INVALID_PARAM"
        );
        assert_eq!(
            bounded_integer(Input::Value(Number::from(7)), "good", 10).unwrap(),
            Some(7)
        );
        let p: CreateChannel = body(json!({ "position": "1" }));
        assert_eq!(
            errcode(bounded_integer(p.position, "p", 10).unwrap_err()),
            "M_BAD_JSON"
        );
        assert_eq!(errcode(flag(b.nsfw, "nsfw").unwrap_err()), "M_BAD_JSON");
        assert_eq!(errcode(text(b.name, "name").unwrap_err()), "M_BAD_JSON");
        assert_eq!(text(b.topic, "topic").unwrap(), Field::Remove);
        assert_eq!(text(Input::Absent, "absent").unwrap(), Field::Keep);
        assert_eq!(kind_of("forum".into()).unwrap(), ChannelKind::Forum);
        assert_eq!(
            errcode(kind_of("stage".into()).unwrap_err()),
            "M_INVALID_PARAM"
        );
        assert_eq!(
            errcode(name_of("name", " ".into()).unwrap_err()),
            "M_INVALID_PARAM"
        );
        assert_eq!(
            errcode(name_of("name", "x".repeat(101)).unwrap_err()),
            "M_INVALID_PARAM"
        );
    }

    fn overwrites(v: Value) -> Result<Option<Vec<(OverwriteTarget, Grant)>>> {
        let c: CreateChannel = body(json!({ "permission_overwrites": v }));
        overwrite_list(c.permission_overwrites)
    }

    #[test]
    fn overwrite_lists_are_checked_item_by_item() {
        let list = overwrites(json!([
            { "id": "role:everyone", "deny": "2049" },
            { "id": "user:@bob:x", "allow": "1024", "deny": "0", "type": 1 },
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            list,
            [
                (
                    OverwriteTarget::Role("everyone".into()),
                    Grant {
                        allow: Permissions::NONE,
                        deny: Permissions(2049)
                    }
                ),
                (
                    OverwriteTarget::User("@bob:x".into()),
                    Grant {
                        allow: Permissions::VIEW_CHANNEL,
                        deny: Permissions::NONE
                    }
                ),
            ]
        );
        let c: CreateChannel = body(json!({}));
        assert_eq!(overwrite_list(c.permission_overwrites).unwrap(), None);
        assert_eq!(overwrites(Value::Null).unwrap(), None);
        for (bad, code) in [
            (json!({}), "M_BAD_JSON"),
            (json!([1]), "M_BAD_JSON"),
            (json!([["role:a"]]), "M_BAD_JSON"),
            (json!([{ "allow": "1" }]), "M_MISSING_PARAM"),
            (json!([{ "id": "mods" }]), "M_INVALID_PARAM"),
            (json!([{ "id": "user:@nope" }]), "M_INVALID_PARAM"),
            (json!([{ "id": "role:a", "allow": 1 }]), "M_BAD_JSON"),
            (json!([{ "id": "role:a", "allow": null }]), "M_BAD_JSON"),
            (
                json!([{ "id": "role:a", "allow": "-1" }]),
                "M_INVALID_PARAM",
            ),
            (
                json!([{ "id": "role:a" }, { "id": "role:a" }]),
                "M_INVALID_PARAM",
            ),
        ] {
            assert_eq!(errcode(overwrites(bad.clone()).unwrap_err()), code, "{bad}");
        }
    }

    #[test]
    fn moves_need_an_id_once_and_a_position_in_range() {
        let items: Vec<Input<Obj<ChannelMove>>> = body(json!([
            { "id": "!t:x", "position": 2, "parent": null },
            { "id": "!u:x", "parent": "!cat:x" },
        ]));
        let moves = channel_moves(items).unwrap();
        assert_eq!(moves[0].parent, Field::Remove);
        assert_eq!(moves[0].position, Some(2));
        assert_eq!(
            moves[1].parent,
            Field::Set(OwnedRoomId::try_from("!cat:x").unwrap())
        );
        for (bad, code) in [
            (json!([{ "position": 1 }]), "M_MISSING_PARAM"),
            (json!([{ "id": 5 }]), "M_BAD_JSON"),
            (json!(["!t:x"]), "M_BAD_JSON"),
            (json!([null]), "M_BAD_JSON"),
            (json!([{ "id": "nope" }]), "M_NOT_FOUND"),
            (json!([{ "id": "!t:x", "position": -1 }]), "M_INVALID_PARAM"),
            (
                json!([{ "id": "!t:x" }, { "id": "!t:x" }]),
                "M_INVALID_PARAM",
            ),
        ] {
            let items: Vec<Input<Obj<ChannelMove>>> = body(bad.clone());
            assert_eq!(errcode(channel_moves(items).unwrap_err()), code, "{bad}");
        }
    }

    // Issue 15 (fuzzing review): repeated role ids are found through a set, in one pass.
    #[test]
    fn repeated_roles_are_dropped_or_refused_in_one_pass() {
        let many: Vec<String> = (0..50_000).map(|i| format!("r{i}")).collect();
        let mut roles = many.clone();
        roles.extend(["r1".to_owned(), EVERYONE.to_owned(), "r0".to_owned()]);
        let m: UpdateMember = body(json!({ "roles": roles }));
        assert_eq!(m.check(0).unwrap().roles, Some(many.clone()));
        let moves: Vec<Value> = many
            .iter()
            .map(|id| json!({ "id": id, "position": 1 }))
            .collect();
        assert_eq!(
            role_moves(body(json!(moves.clone()))).unwrap().len(),
            50_000
        );
        let mut twice = moves;
        twice.push(json!({ "id": "r7", "position": 2 }));
        let err = role_moves(body(json!(twice))).unwrap_err();
        assert_eq!(err.kind(), Some(&paracord_core::ErrorKind::InvalidParam));
    }

    #[test]
    fn wrong_types_are_bad_json_and_out_of_range_values_invalid() {
        let kind = |v: Value, default: u64, max: u64| {
            let b: CreateInvite = body(json!({ "max_age": v }));
            limit(b.max_age, "max_age", default, max).map_err(|e| e.kind().cloned())
        };
        assert_eq!(kind(json!(5), 0, 10), Ok(5));
        assert_eq!(
            limit(Input::Absent, "missing", 7, 10).map_err(|e| e.kind().cloned()),
            Ok(7)
        );
        assert!(matches!(
            kind(json!("5"), 0, 10),
            Err(Some(paracord_core::ErrorKind::BadJson))
        ));
        assert!(matches!(
            kind(Value::Null, 0, 10),
            Err(Some(paracord_core::ErrorKind::BadJson))
        ));
        for v in [json!(1.5), json!(-1), json!(604_801)] {
            assert!(
                matches!(
                    kind(v.clone(), 0, 604_800),
                    Err(Some(paracord_core::ErrorKind::InvalidParam))
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn member_changes_tell_removals_from_values() {
        let m: UpdateMember = body(json!({ "nick": null, "communication_disabled_until": 1_000 }));
        let c = m.check(2_000).unwrap();
        assert_eq!(c.nick, Some(None));
        assert_eq!(c.timeout, Some(None), "a timeout in the past is none");
        assert_eq!(c.roles, None);
        for (bad, code) in [
            (json!({ "nick": "" }), "M_INVALID_PARAM"),
            (json!({ "nick": 5 }), "M_BAD_JSON"),
            (json!({ "roles": null }), "M_BAD_JSON"),
            (json!({ "roles": [null] }), "M_BAD_JSON"),
            (
                json!({ "communication_disabled_until": -1 }),
                "M_INVALID_PARAM",
            ),
            (
                json!({ "communication_disabled_until": "soon" }),
                "M_BAD_JSON",
            ),
            (
                json!({ "communication_disabled_until": MAX_TIMEOUT_MS + 1 }),
                "M_INVALID_PARAM",
            ),
        ] {
            let m: UpdateMember = body(bad.clone());
            assert_eq!(errcode(m.check(0).unwrap_err()), code, "{bad}");
        }
    }

    #[test]
    fn roles_are_checked_on_their_own() {
        let r: CreateRole = body(json!({}));
        let r = r.check().unwrap();
        assert_eq!((r.name.as_str(), r.position, r.color), ("new role", 1, 0));
        assert_eq!(r.permissions, "0");
        for (bad, code) in [
            (json!({ "permissions": "-1" }), "M_INVALID_PARAM"),
            (json!({ "color": 16_777_216 }), "M_INVALID_PARAM"),
            (json!({ "position": 0 }), "M_INVALID_PARAM"),
            (json!({ "position": 1.5 }), "M_INVALID_PARAM"),
            (json!({ "color": 2.5 }), "M_INVALID_PARAM"),
            (json!({ "position": "2" }), "M_BAD_JSON"),
            (json!({ "hoist": "yes" }), "M_BAD_JSON"),
            (json!({ "name": "" }), "M_INVALID_PARAM"),
        ] {
            let r: CreateRole = body(bad.clone());
            assert_eq!(errcode(r.check().unwrap_err()), code, "{bad}");
        }
        for (bad, code) in [
            (json!({ "position": 1.5 }), "M_INVALID_PARAM"),
            (json!({ "color": -1 }), "M_INVALID_PARAM"),
            (json!({ "permissions": 8 }), "M_BAD_JSON"),
            (json!({ "name": null }), "M_BAD_JSON"),
        ] {
            let r: UpdateRole = body(bad.clone());
            assert_eq!(errcode(r.check().unwrap_err()), code, "{bad}");
        }
    }

    #[test]
    fn the_objects_answered_keep_the_fields_the_spec_shows() {
        let member = Member {
            user_id: OwnedUserId::try_from("@bob:x").unwrap(),
            displayname: None,
            avatar_url: None,
            nick: None,
            roles: Vec::new(),
            communication_disabled_until: None,
            joined_at: None,
            bot: false,
        };
        assert_eq!(
            serde_json::to_value(&member).unwrap(),
            json!({ "user_id": "@bob:x", "displayname": null, "avatar_url": null,
                    "nick": null, "roles": [], "communication_disabled_until": null,
                    "joined_at": null })
        );
        // An application's bot is marked (spec/applications.md §1).
        let bot = Member {
            user_id: OwnedUserId::try_from("@_bot_dice:x").unwrap(),
            bot: true,
            ..member
        };
        assert_eq!(serde_json::to_value(bot).unwrap()["bot"], true);
        assert_eq!(serde_json::to_value(Empty {}).unwrap(), json!({}));
        let created = CreatedGuildAnswer {
            guild: Guild {
                id: OwnedRoomId::try_from("!g:x").unwrap(),
                version: "1".into(),
                name: "G".into(),
                description: None,
                icon: None,
                owner: "@a:x".into(),
                system_channel: None,
            },
            channels: Vec::new(),
            roles: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(created).unwrap(),
            json!({ "id": "!g:x", "version": "1", "name": "G", "owner": "@a:x",
                    "channels": [], "roles": [] })
        );
    }
}

// ----- webhooks (spec/webhooks.md §3) -----

/// `POST /channels/{id}/webhooks`: `name` (1–80 characters), `avatar_url` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CreateWebhook {
    pub name: Input<String>,
    pub avatar_url: Input<String>,
}

impl CreateWebhook {
    pub(crate) fn check(self) -> Result<(String, Option<String>)> {
        let name = match self.name {
            Input::Absent => return Err(Error::missing_param("name is required")),
            v => string(v, "name")?.unwrap_or_default(),
        };
        let name = webhooks::check_name(&name)?;
        let avatar_url = match text(self.avatar_url, "avatar_url")? {
            Field::Set(a) if !a.is_empty() => Some(avatar_of(a)?),
            _ => None,
        };
        Ok((name, avatar_url))
    }
}

/// An avatar URL: `mxc://`, `https://` or `http://`, at most 2048 bytes.
fn avatar_of(a: String) -> Result<String> {
    if a.len() > 2048
        || !["mxc://", "https://", "http://"]
            .iter()
            .any(|p| a.starts_with(p))
    {
        return Err(Error::invalid_param(
            "avatar_url must be an mxc://, https:// or http:// URL",
        ));
    }
    Ok(a)
}

/// `PATCH /webhooks/{id}`: `name`, `avatar_url` (`null` removes it), `secret` (the GitHub
/// secret; `null` or `""` removes it). `channel_id` cannot change.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UpdateWebhook {
    pub name: Input<String>,
    pub avatar_url: Input<String>,
    pub secret: Input<String>,
    pub channel_id: Input<String>,
}

impl UpdateWebhook {
    pub(crate) fn check(self) -> Result<webhooks::Changes> {
        if !matches!(self.channel_id, Input::Absent) {
            return Err(Error::invalid_param(
                "a webhook stays in its channel: make a new one",
            ));
        }
        let name = string(self.name, "name")?
            .map(|n| webhooks::check_name(&n))
            .transpose()?;
        let avatar_url = match text(self.avatar_url, "avatar_url")? {
            Field::Keep => None,
            Field::Remove => Some(None),
            Field::Set(a) if a.is_empty() => Some(None),
            Field::Set(a) => Some(Some(avatar_of(a)?)),
        };
        let secret = match text(self.secret, "secret")? {
            Field::Keep => None,
            Field::Remove => Some(None),
            Field::Set(s) if s.chars().count() > 256 => {
                return Err(Error::invalid_param("secret has at most 256 characters"))
            }
            Field::Set(s) => Some(Some(s).filter(|s| !s.is_empty())),
        };
        Ok(webhooks::Changes {
            name,
            avatar_url,
            secret,
        })
    }
}

/// The webhook's user, as the Webhook object shows it.
#[derive(Debug, Serialize)]
pub(crate) struct WebhookUser {
    pub id: OwnedUserId,
    pub username: String,
    pub avatar: Option<String>,
    pub bot: bool,
}

/// The Webhook object (spec/webhooks.md §2): `token` and `url` only in the answers that
/// make one (creation, rotation).
#[derive(Debug, Serialize)]
pub(crate) struct WebhookObject {
    pub id: String,
    /// 1: an incoming webhook (Discord's type).
    #[serde(rename = "type")]
    pub kind: u8,
    pub guild_id: OwnedRoomId,
    pub channel_id: OwnedRoomId,
    pub name: String,
    pub avatar: Option<String>,
    pub avatar_url: Option<String>,
    pub user: WebhookUser,
    pub creator: OwnedUserId,
    pub created_at: u64,
    pub application_id: Option<String>,
    /// Whether a GitHub secret is set (the secret itself is never shown).
    pub has_secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl WebhookObject {
    /// The object; with the token (and the URL built on `base`) when it is known.
    pub(crate) fn new(w: webhooks::Webhook, token: Option<(String, &str)>) -> Self {
        let (token, url) = match token {
            Some((t, base)) => {
                let url = format!("{}/api/webhooks/{}/{t}", base.trim_end_matches('/'), w.id);
                (Some(t), Some(url))
            }
            None => (None, None),
        };
        WebhookObject {
            kind: 1,
            has_secret: w.has_secret(),
            user: WebhookUser {
                id: w.user_id.clone(),
                username: w.name.clone(),
                avatar: w.avatar_url.clone(),
                bot: true,
            },
            avatar: w.avatar_url.clone(),
            avatar_url: w.avatar_url,
            id: w.id,
            guild_id: w.guild_id,
            channel_id: w.channel_id,
            name: w.name,
            creator: w.creator,
            created_at: w.created_at,
            application_id: None,
            token,
            url,
        }
    }
}
