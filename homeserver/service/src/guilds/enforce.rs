//! The fine rules of guilds (spec/guilds.md §9, spec/profile.md §4): what Paracord servers
//! check on top of the Matrix auth rules in a guild's space and channels. The coarse rules
//! (power levels) are checked by every Matrix server; these narrow them, from the same
//! permissions (spec/guilds.md §6) computed at the event's `origin_server_ts`.
//!
//! One entry point, [`check`], for every event this server is about to add to a room: a local
//! user's event is refused (`403 M_FORBIDDEN` naming the flag), a remote one is soft-failed.
//! In a room that is neither a guild space nor a channel it costs two state-map lookups.
//!
//! The rules, for anyone but the owner (who has every permission and writes the guild):
//! - `chat.paracord.*` state, and redacting it, is the owner's only;
//! - a member timed out at the event's `origin_server_ts` may only leave (joining a channel
//!   counts as reading, and is allowed);
//! - others' memberships: a ban needs BAN_MEMBERS, a kick KICK_MEMBERS, each over members
//!   ranked below (§7); an unban BAN_MEMBERS;
//! - redacting another's event needs MANAGE_MESSAGES;
//! - timeline events need VIEW_CHANNEL, and none go into a category; `m.reaction` needs
//!   ADD_REACTIONS for a key the target does not have yet; anything else needs
//!   SEND_MESSAGES, or CREATE_PUBLIC_THREADS for the first event of an `m.thread` and
//!   SEND_MESSAGES_IN_THREADS for the next ones (and for edits of them); then ATTACH_FILES for
//!   `m.sticker` and file msgtypes, MENTION_EVERYONE for `m.mentions.room`, EMBED_LINKS for
//!   previews bundled in the event (MSC4095 `m.url_previews`), and slow mode; a poll start
//!   (MSC3381, spec/polls.md) needs SEND_POLLS too, a vote only VIEW_CHANNEL, ending a poll
//!   being its sender or MANAGE_MESSAGES;
//! - joining a channel needs VIEW_CHANNEL (§2.1), checked on submission only: §9 does not
//!   list it among the rules that soft-fail.
//!
//! Not decidable from an event, so not here: mentions of roles (the profile gives roles no
//! mention syntax), USE_EXTERNAL_EMOJIS (custom emoji are not defined in version 1), the
//! previews a server generates through `/preview_url` (which names a URL, not a message),
//! READ_MESSAGE_HISTORY (a rule on reads).

use std::fmt;

use paracord_core::{time::now_ms, Error, Result};
use ruma::{
    events::room::member::MembershipState, events::TimelineEventType, OwnedRoomId, RoomId, UserId,
};
use serde_json::Value;

use super::{
    events::{ChannelContent, ChannelKind, GuildContent},
    permissions::{ChannelOverwrites, Permissions},
    pins::{invalid_pins, BadPins},
    projection::CALL_MEMBER_TYPES,
    slowmode::{counts_for_slow_mode, last_message_ts},
    store::{is_webhook, load_guild, load_member, overwrites},
};
use crate::{
    polls::{check_start, poll_event, PollEvent},
    rooms::{
        hooks::EventPolicy, membership::membership_of, relations::relates_to, Pdu, Rooms, StateMap,
    },
};

/// Where an event comes from, which decides what a broken rule means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Asked of this server: a local user's request, or another server's `make_join` (and
    /// the other `make_*`). Refused; joining a channel also needs VIEW_CHANNEL
    /// (spec/guilds.md §2.1).
    Submitted,
    /// A remote event placed in the DAG: soft-failed, and only for the rules of §9.
    Received,
}

/// Why an event breaks a fine rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The sender lacks a flag (its name from [`Permissions::NAMED`]).
    Missing(&'static str),
    /// The sender has the flag but does not outrank the member acted on (spec/guilds.md §7).
    Outranked(&'static str),
    /// The sender is timed out at the event's time (until then, ms).
    TimedOut(u64),
    /// `chat.paracord.*` state is written by the guild's owner only.
    OwnerOnly,
    /// Categories carry no messages (spec/guilds.md §2).
    Category,
    /// Slow mode: the sender's previous message is too recent (seconds left).
    SlowMode(u64),
    /// Calls happen in voice channels only (spec/voice.md §1).
    NotVoice,
    /// A call membership's state key names someone else (spec/voice.md §1).
    NotYours,
    /// An `m.room.pinned_events` list that is no valid list of pins (spec/guilds.md §11):
    /// a bad request rather than a missing permission (`M_INVALID_PARAM`).
    Pins(String),
    /// An `m.room.pinned_events` content whose `pinned` is no array of strings
    /// (`M_BAD_JSON`).
    PinsShape(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing(flag) => write!(f, "Missing permission: {flag}"),
            Refusal::Outranked(flag) => write!(
                f,
                "{flag} applies only to members ranked below you, and never to the owner"
            ),
            Refusal::TimedOut(until) => write!(
                f,
                "You are timed out in this guild until {until} (ms since the epoch); you may only leave"
            ),
            Refusal::OwnerOnly => write!(f, "Only the guild's owner may change chat.paracord.* state"),
            Refusal::Category => write!(f, "A category carries no messages"),
            Refusal::NotVoice => write!(f, "Only voice channels have calls"),
            Refusal::NotYours => write!(
                f,
                "A call membership's state key must be your user ID, or start with it (or with _ and it) followed by _"
            ),
            Refusal::Pins(why) | Refusal::PinsShape(why) => f.write_str(why),
            Refusal::SlowMode(secs) => write!(
                f,
                "Slow mode is on in this channel: wait {secs} more seconds before sending another message"
            ),
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Pins(why) => Error::invalid_param(why),
            Refusal::PinsShape(why) => Error::bad_json(why),
            r => Error::forbidden(r.to_string()),
        }
    }
}

/// What a webhook's user may do in its channel (spec/webhooks.md §6): see it, join it and
/// post there, in threads too, with files, links and `@everyone`; nothing else.
const WEBHOOK: Permissions = Permissions(
    Permissions::VIEW_CHANNEL.0
        | Permissions::SEND_MESSAGES.0
        | Permissions::SEND_MESSAGES_IN_THREADS.0
        | Permissions::CREATE_PUBLIC_THREADS.0
        | Permissions::EMBED_LINKS.0
        | Permissions::ATTACH_FILES.0
        | Permissions::MENTION_EVERYONE.0
        | Permissions::USE_EXTERNAL_EMOJIS.0,
);

/// Checks `pdu` against the fine rules of the guild whose space or channel `room_id` is, on
/// `state`, the room's current state. `Ok(None)`: allowed, or not a guild room.
pub fn check(
    rooms: &Rooms,
    room_id: &RoomId,
    state: &StateMap,
    pdu: &Pdu,
    source: Source,
) -> Result<Option<Refusal>> {
    let Some(place) = place(rooms, room_id, state)? else {
        return Ok(None);
    };
    // What a list of pins may hold binds the owner too.
    if pdu.kind == TimelineEventType::RoomPinnedEvents && pdu.state_key.as_deref() == Some("") {
        let known_only = source == Source::Received;
        match invalid_pins(rooms, room_id, state, &pdu.content_value(), known_only)? {
            Some(BadPins::Shape(why)) => return Ok(Some(Refusal::PinsShape(why))),
            Some(BadPins::Invalid(why)) => return Ok(Some(Refusal::Pins(why))),
            None => {}
        }
    }
    // The guild host's own writes (power levels, the profile's state, kicks) pass at once.
    if pdu.sender.as_str() == place.owner {
        return Ok(None);
    }
    decide(rooms, room_id, state, &place, pdu, source)
}

/// A local user's event: an error naming the broken rule. A poll start in a channel is also
/// checked for what a poll must be (spec/polls.md §1: `400 M_BAD_JSON` or `M_INVALID_PARAM`).
pub fn submitted(rooms: &Rooms, room_id: &RoomId, state: &StateMap, pdu: &Pdu) -> Result<()> {
    if let Some(r) = check(rooms, room_id, state, pdu, Source::Submitted)? {
        return Err(r.into());
    }
    let kind = pdu.kind.to_string();
    if poll_event(&kind) == Some(PollEvent::Start)
        && place(rooms, room_id, state)?.is_some_and(|p| p.channel.is_some())
    {
        check_start(
            &kind,
            &pdu.content_value(),
            u64::from(pdu.origin_server_ts.get()),
        )?;
    }
    Ok(())
}

/// The guild rules as the event pipeline's policy (`rooms::hooks`).
pub struct GuildRules;

impl EventPolicy for GuildRules {
    fn check_submitted(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        state: &StateMap,
        pdu: &Pdu,
    ) -> Result<()> {
        submitted(rooms, room_id, state, pdu)
    }

    fn check_received(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        state: &StateMap,
        pdu: &Pdu,
    ) -> Result<Option<String>> {
        Ok(check(rooms, room_id, state, pdu, Source::Received)?.map(|r| r.to_string()))
    }

    fn reads_history(&self, rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<bool> {
        reads_history(rooms, room_id, user)
    }
}

/// Whether `user` may read a channel's events from before their latest join: without
/// READ_MESSAGE_HISTORY a Paracord server does not serve them (spec/guilds.md §9). Rooms
/// that are no guild channel, and the owner, always may.
pub fn reads_history(rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<bool> {
    let state = rooms.current_state(room_id)?;
    let Some(place) = place(rooms, room_id, &state)? else {
        return Ok(true);
    };
    if place.channel.is_none() || user.as_str() == place.owner {
        return Ok(true);
    }
    if !rooms.is_joined(&place.guild_id, user)? {
        return Ok(false);
    }
    let guild = load_guild(rooms, &place.guild_id)?;
    let member = load_member(rooms, &place.guild_id, user)?;
    let (ow, _) = overwrites(rooms, room_id)?;
    Ok(guild
        .channel_permissions(&member, &ow, now_ms())
        .contains(Permissions::READ_MESSAGE_HISTORY))
}

/// The guild a room belongs to, and which part of it the room is.
pub(crate) struct Place {
    pub(crate) guild_id: OwnedRoomId,
    pub(crate) owner: String,
    /// `None` in the guild space itself.
    pub(crate) channel: Option<ChannelContent>,
}

fn key(kind: &str, state_key: &str) -> (String, String) {
    (kind.to_owned(), state_key.to_owned())
}

/// The room's guild: the room itself when it declares profile version 1 (with the creator
/// as owner, spec/guilds.md §1), or the space of a channel (a room with
/// `chat.paracord.channel`, created by the owner, whose `m.space.parent` is such a guild
/// listing it as a child). Anything else is no guild room.
pub(crate) fn place(rooms: &Rooms, room_id: &RoomId, state: &StateMap) -> Result<Option<Place>> {
    let is_space = state.contains_key(&key("chat.paracord.guild", ""));
    if !is_space && !state.contains_key(&key("chat.paracord.channel", "")) {
        return Ok(None);
    }
    if is_space {
        return Ok(declared_owner(rooms, state)?.map(|owner| Place {
            guild_id: room_id.to_owned(),
            owner,
            channel: None,
        }));
    }
    let Some(channel) = rooms
        .state_content(state, "chat.paracord.channel", "")?
        .and_then(|c| serde_json::from_value::<ChannelContent>(c).ok())
    else {
        return Ok(None);
    };
    let creator = rooms
        .state_pdu(state, "m.room.create", "")?
        .map(|c| c.sender);
    let parents = state
        .range(key("m.space.parent", "")..)
        .take_while(|((k, _), _)| k == "m.space.parent")
        .filter_map(|((_, p), _)| OwnedRoomId::try_from(p.as_str()).ok());
    for guild_id in parents {
        let Some(record) = rooms.room(&guild_id)? else {
            continue;
        };
        let space = rooms.state(record.state)?;
        let Some(owner) = declared_owner(rooms, &space)? else {
            continue;
        };
        let listed = rooms
            .state_content(&space, "m.space.child", room_id.as_str())?
            .and_then(|c| {
                c.get("via")
                    .and_then(Value::as_array)
                    .map(|v| !v.is_empty())
            })
            .unwrap_or(false);
        if !listed || creator.as_ref().map(|c| c.as_str()) != Some(owner.as_str()) {
            continue;
        }
        return Ok(Some(Place {
            guild_id,
            owner,
            channel: Some(channel),
        }));
    }
    Ok(None)
}

/// The owner of a space that declares a guild of profile version 1 whose owner is the
/// space's creator; `None` for anything else (a plain space, spec/profile.md §2).
fn declared_owner(rooms: &Rooms, space: &StateMap) -> Result<Option<String>> {
    let Some(content) = rooms
        .state_content(space, "chat.paracord.guild", "")?
        .and_then(|c| serde_json::from_value::<GuildContent>(c).ok())
    else {
        return Ok(None);
    };
    let creator = rooms
        .state_pdu(space, "m.room.create", "")?
        .map(|c| c.sender);
    Ok(
        (content.version == "1" && creator.is_some_and(|c| c.as_str() == content.owner))
            .then_some(content.owner),
    )
}

/// The `mxc://` sources of the custom emoji in an HTML body: `<img data-mx-emoticon
/// src="mxc://…">` (https://spec.matrix.org/v1.19/client-server-api/#mroommessage-msgtypes,
/// MSC2545).
fn custom_emoji(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<img") {
        let tag_and_after = &rest[start..];
        let end = tag_and_after.find('>').unwrap_or(tag_and_after.len());
        let tag = &tag_and_after[..end];
        if tag.contains("data-mx-emoticon") {
            for quote in ['"', '\''] {
                let opening = format!("src={quote}");
                if let Some(at) = tag.find(&opening) {
                    let value = &tag[at + opening.len()..];
                    let value = &value[..value.find(quote).unwrap_or(value.len())];
                    if value.starts_with("mxc://") {
                        out.push(value);
                    }
                    break;
                }
            }
        }
        rest = &tag_and_after[end..];
    }
    out
}

/// USE_EXTERNAL_EMOJIS: custom emoji (`mxc://` images) not in one of the guild's own packs,
/// the `im.ponies.room_emotes` state of its space (MSC2545), need the flag.
fn external_emoji(
    rooms: &Rooms,
    guild_id: &RoomId,
    used: &[&str],
    perms: Permissions,
) -> Result<Option<Refusal>> {
    if used.is_empty() || perms.contains(Permissions::USE_EXTERNAL_EMOJIS) {
        return Ok(None);
    }
    let space = rooms.current_state(guild_id)?;
    let mut own = std::collections::BTreeSet::new();
    for ((kind, state_key), _) in space.range(key("im.ponies.room_emotes", "")..) {
        if kind != "im.ponies.room_emotes" {
            break;
        }
        if let Some(pack) = rooms.state_content(&space, kind, state_key)? {
            if let Some(images) = pack.get("images").and_then(Value::as_object) {
                own.extend(
                    images
                        .values()
                        .filter_map(|i| i.get("url").and_then(Value::as_str))
                        .map(str::to_owned),
                );
            }
        }
    }
    Ok(used
        .iter()
        .any(|u| !own.contains(*u))
        .then_some(Refusal::Missing("USE_EXTERNAL_EMOJIS")))
}

fn missing(have: Permissions, flag: Permissions) -> Option<Refusal> {
    if have.contains(flag) {
        return None;
    }
    let name = Permissions::NAMED
        .iter()
        .find(|(_, p)| *p == flag)
        .map_or("UNKNOWN", |(n, _)| *n);
    Some(Refusal::Missing(name))
}

/// Whether a call membership event joins a call (rather than leaving one): a non-empty
/// content that is not the older `memberships: []` form nor MSC4143's `leave`.
fn joins_call(content: &Value) -> bool {
    let Some(map) = content.as_object() else {
        return false;
    };
    if map.is_empty() {
        return false;
    }
    if map
        .get("memberships")
        .and_then(Value::as_array)
        .is_some_and(|m| m.is_empty())
    {
        return false;
    }
    let leave = |v: Option<&Value>| v.and_then(Value::as_str) == Some("leave");
    !(leave(content.pointer("/member/membership")) || leave(map.get("membership")))
}

/// Call membership (spec/voice.md §1): a state key of one's own; joining needs a voice
/// channel, VIEW_CHANNEL and CONNECT (so a timed-out member cannot); leaving is always
/// allowed.
fn call_member(place: &Place, pdu: &Pdu, content: &Value, perms: Permissions) -> Option<Refusal> {
    if let Some(key) = pdu.state_key.as_deref() {
        let sender = pdu.sender.as_str();
        let own = key == sender
            || key
                .strip_prefix('_')
                .unwrap_or(key)
                .strip_prefix(sender)
                .is_some_and(|rest| rest.starts_with('_'));
        if !own {
            return Some(Refusal::NotYours);
        }
    }
    if !joins_call(content) {
        return None;
    }
    if !place
        .channel
        .as_ref()
        .is_some_and(|c| c.kind == ChannelKind::Voice)
    {
        return Some(Refusal::NotVoice);
    }
    missing(perms, Permissions::VIEW_CHANNEL).or_else(|| missing(perms, Permissions::CONNECT))
}

/// The rules, for a sender who is not the owner.
fn decide(
    rooms: &Rooms,
    room_id: &RoomId,
    state: &StateMap,
    place: &Place,
    pdu: &Pdu,
    source: Source,
) -> Result<Option<Refusal>> {
    let kind = pdu.kind.to_string();
    if pdu.state_key.is_some() && kind.starts_with("chat.paracord.") {
        return Ok(Some(Refusal::OwnerOnly));
    }
    let guild = &load_guild(rooms, &place.guild_id)?;
    let ts = u64::from(pdu.origin_server_ts.get());
    // Only members (joined to the space) have permissions (spec/guilds.md §6).
    let member = if rooms.is_joined(&place.guild_id, &pdu.sender)? {
        Some(load_member(rooms, &place.guild_id, &pdu.sender)?)
    } else {
        None
    };
    let ow = match place.channel {
        Some(_) => overwrites(rooms, room_id)?.0,
        None => ChannelOverwrites::default(),
    };
    let (perms, guild_wide) = match &member {
        Some(m) => (
            guild.channel_permissions(m, &ow, ts),
            guild.base_permissions(m),
        ),
        // A webhook's user is no member, but may post in its own channel (spec/webhooks.md).
        None if place.channel.is_some() && is_webhook(rooms, state, pdu.sender.as_str())? => {
            (WEBHOOK, Permissions::NONE)
        }
        None => (Permissions::NONE, Permissions::NONE),
    };
    let timed_out = member
        .as_ref()
        .and_then(|m| m.communication_disabled_until)
        .filter(|until| *until > ts && guild_wide != Permissions::ALL);
    let content = pdu.content_value();

    if pdu.kind == TimelineEventType::RoomMember {
        let Some(target) = pdu.state_key.as_deref() else {
            return Ok(None);
        };
        let membership = membership_of(&content);
        if target == pdu.sender.as_str() {
            // Leaving, knocking and (for a timed-out member, who may still read) joining.
            let joins_channel =
                membership == Some(MembershipState::Join) && place.channel.is_some();
            return Ok(match source {
                Source::Submitted if joins_channel => missing(perms, Permissions::VIEW_CHANNEL),
                _ => None,
            });
        }
        if let Some(until) = timed_out {
            return Ok(Some(Refusal::TimedOut(until)));
        }
        let target = match <&UserId>::try_from(target) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let (flag, name) = match membership {
            Some(MembershipState::Ban) => (Permissions::BAN_MEMBERS, "BAN_MEMBERS"),
            Some(MembershipState::Leave) => match rooms.membership_in(state, target)? {
                // Unbanning: the flag, no hierarchy (the user is no member).
                Some(MembershipState::Ban) => {
                    return Ok(missing(guild_wide, Permissions::BAN_MEMBERS))
                }
                _ => (Permissions::KICK_MEMBERS, "KICK_MEMBERS"),
            },
            _ => return Ok(None),
        };
        if let Some(r) = missing(guild_wide, flag) {
            return Ok(Some(r));
        }
        let Some(actor) = member else {
            return Ok(Some(Refusal::Missing(name)));
        };
        let target = load_member(rooms, &place.guild_id, target)?;
        return Ok((!guild.outranks(&actor, &target)).then_some(Refusal::Outranked(name)));
    }

    if CALL_MEMBER_TYPES.contains(&kind.as_str()) {
        return Ok(call_member(place, pdu, &content, perms));
    }

    if let Some(until) = timed_out {
        return Ok(Some(Refusal::TimedOut(until)));
    }

    if pdu.kind == TimelineEventType::RoomRedaction {
        let Some(target) = pdu.redacts.as_deref().map(|t| rooms.pdu(t)).transpose()? else {
            return Ok(None);
        };
        let Some(target) = target else {
            return Ok(None);
        };
        if target.sender == pdu.sender {
            return Ok(None);
        }
        // Redacting the guild's state would rewrite it.
        if target.state_key.is_some() && target.kind.to_string().starts_with("chat.paracord.") {
            return Ok(Some(Refusal::OwnerOnly));
        }
        return Ok(missing(perms, Permissions::MANAGE_MESSAGES));
    }

    if pdu.kind == TimelineEventType::RoomPinnedEvents {
        // Pins are MANAGE_MESSAGES's, not every level 50's (spec/guilds.md §11).
        return Ok(missing(perms, Permissions::MANAGE_MESSAGES));
    }
    if pdu.state_key.is_some() {
        // Other state changes are the coarse layer's (spec/guilds.md §9).
        return Ok(None);
    }

    // Messages and everything else sent into the timeline.
    if place
        .channel
        .as_ref()
        .is_some_and(|c| c.kind == ChannelKind::Category)
    {
        return Ok(Some(Refusal::Category));
    }
    if let Some(r) = missing(perms, Permissions::VIEW_CHANNEL) {
        return Ok(Some(r));
    }
    let relation = relates_to(&content);
    match poll_event(&kind) {
        // Voting needs what joining an existing reaction needs: seeing the channel
        // (spec/polls.md §3).
        Some(PollEvent::Response) => return Ok(None),
        // Ending a poll: its sender, or a member who may remove others' messages.
        Some(PollEvent::End) => {
            let start = match &relation {
                Some((rel, target, _)) if rel == "m.reference" => rooms.pdu(target)?,
                _ => None,
            };
            if start.is_some_and(|s| s.sender == pdu.sender) {
                return Ok(None);
            }
            return Ok(missing(perms, Permissions::MANAGE_MESSAGES));
        }
        Some(PollEvent::Start) | None => {}
    }
    if pdu.kind == TimelineEventType::Reaction {
        // A new key needs ADD_REACTIONS; joining an existing one only seeing the channel.
        let existing = match &relation {
            Some((rel, target, Some(key))) if rel == "m.annotation" => {
                match rooms.short_id(target)? {
                    Some(short) => rooms.has_annotation(short, key)?,
                    None => false,
                }
            }
            _ => false,
        };
        if existing {
            return Ok(None);
        }
        if let Some(r) = missing(perms, Permissions::ADD_REACTIONS) {
            return Ok(Some(r));
        }
        let key = relation.as_ref().and_then(|(_, _, k)| k.as_deref());
        let custom: Vec<&str> = key
            .filter(|k| k.starts_with("mxc://"))
            .into_iter()
            .collect();
        return external_emoji(rooms, &place.guild_id, &custom, perms);
    }
    let (needed, is_edit) = match &relation {
        Some((rel, root, _)) if rel == "m.thread" => {
            let started = match rooms.short_id(root)? {
                Some(short) => rooms.thread_started(room_id, short)?,
                None => false,
            };
            if started {
                (Permissions::SEND_MESSAGES_IN_THREADS, false)
            } else {
                (Permissions::CREATE_PUBLIC_THREADS, false)
            }
        }
        Some((rel, original, _)) if rel == "m.replace" => {
            let in_thread = rooms
                .pdu(original)?
                .and_then(|o| relates_to(&o.content_value()))
                .is_some_and(|r| r.0 == "m.thread");
            if in_thread {
                (Permissions::SEND_MESSAGES_IN_THREADS, true)
            } else {
                (Permissions::SEND_MESSAGES, true)
            }
        }
        _ => (Permissions::SEND_MESSAGES, false),
    };
    if let Some(r) = missing(perms, needed) {
        return Ok(Some(r));
    }
    // A poll (or an edit of one) also needs SEND_POLLS (spec/polls.md §3).
    if poll_event(&kind) == Some(PollEvent::Start) {
        if let Some(r) = missing(perms, Permissions::SEND_POLLS) {
            return Ok(Some(r));
        }
    }
    // An edit is checked with what it turns the message into, too.
    let bodies = [Some(&content), content.get("m.new_content")];
    let bodies = bodies.iter().flatten();
    let attaches = pdu.kind == TimelineEventType::Sticker
        || bodies.clone().any(|c| {
            matches!(
                c.get("msgtype").and_then(Value::as_str),
                Some("m.image" | "m.file" | "m.audio" | "m.video")
            )
        });
    if attaches {
        if let Some(r) = missing(perms, Permissions::ATTACH_FILES) {
            return Ok(Some(r));
        }
    }
    let mentions_room = bodies
        .clone()
        .any(|c| c.pointer("/m.mentions/room") == Some(&Value::Bool(true)));
    if mentions_room {
        if let Some(r) = missing(perms, Permissions::MENTION_EVERYONE) {
            return Ok(Some(r));
        }
    }
    // Previews bundled by the sender (MSC4095) are previews of the member's messages.
    let previews = bodies.clone().any(|c| {
        ["m.url_previews", "com.beeper.linkpreviews"]
            .iter()
            .any(|k| {
                c.get(*k)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            })
    });
    if previews {
        if let Some(r) = missing(perms, Permissions::EMBED_LINKS) {
            return Ok(Some(r));
        }
    }
    let custom: Vec<&str> = bodies
        .clone()
        .filter_map(|c| c.get("formatted_body").and_then(Value::as_str))
        .flat_map(custom_emoji)
        .collect();
    if let Some(r) = external_emoji(rooms, &place.guild_id, &custom, perms)? {
        return Ok(Some(r));
    }
    let limit = place
        .channel
        .as_ref()
        .and_then(|c| c.rate_limit_per_user)
        .unwrap_or(0);
    let exempt = perms.contains(Permissions::MANAGE_MESSAGES)
        || perms.contains(Permissions::MANAGE_CHANNELS);
    if limit > 0 && !exempt && !is_edit && counts_for_slow_mode(&pdu.kind) {
        // The sender's latest counted message, however many events came since
        // (`roomuser_lastmessage`, issue 20).
        if let Some(last) = last_message_ts(&rooms.db, room_id, &pdu.sender)? {
            let next = last.saturating_add(limit.saturating_mul(1000));
            if ts < next {
                return Ok(Some(Refusal::SlowMode((next - ts).div_ceil(1000))));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use paracord_core::{time::now_ms, Config};
    use ruma::{OwnedEventId, OwnedUserId};
    use serde_json::json;

    use super::*;
    use crate::{
        guilds::{
            create::{create_guild, NewGuild},
            store::{reproject, send_state},
        },
        rooms::NewEvent,
        Services,
    };

    /// A guild of `owner` with `bob` and `carol` joined to the space and #general.
    struct Fixture {
        _dir: tempfile::TempDir,
        s: Services,
        owner: OwnedUserId,
        bob: OwnedUserId,
        carol: OwnedUserId,
        space: OwnedRoomId,
        category: OwnedRoomId,
        general: OwnedRoomId,
    }

    fn user(id: &str) -> OwnedUserId {
        OwnedUserId::try_from(id).unwrap()
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let s = Services::open(config).unwrap();
        let owner = user("@owner:localhost");
        let g = create_guild(
            &s.rooms,
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
        let category = g.channels[0].id.clone();
        let (bob, carol) = (user("@bob:localhost"), user("@carol:localhost"));
        for u in [&bob, &carol] {
            s.rooms
                .invite(&space, &owner, u, None, false)
                .await
                .unwrap();
            s.rooms.join(&space, u, (None, None), None).await.unwrap();
            s.rooms.join(&general, u, (None, None), None).await.unwrap();
        }
        Fixture {
            _dir: dir,
            s,
            owner,
            bob,
            carol,
            space,
            category,
            general,
        }
    }

    impl Fixture {
        /// State written by the owner, as the guild host does.
        async fn owner_state(&self, room: &RoomId, kind: &str, key: &str, content: Value) {
            send_state(&self.s.rooms, room, &self.owner, kind, key, content)
                .await
                .unwrap();
        }

        async fn overwrite(&self, target: &str, allow: Permissions, deny: Permissions) {
            self.owner_state(
                &self.general,
                "chat.paracord.overwrite",
                target,
                json!({ "allow": allow.to_wire(), "deny": deny.to_wire() }),
            )
            .await;
        }

        /// A role at `position` with `permissions`, given to `member`; power levels follow.
        async fn role(&self, id: &str, position: i64, permissions: Permissions, member: &UserId) {
            self.owner_state(
                &self.space,
                "chat.paracord.role",
                id,
                json!({ "name": id, "color": 0, "position": position, "hoist": false,
                        "mentionable": false, "permissions": permissions.to_wire() }),
            )
            .await;
            self.owner_state(
                &self.space,
                "chat.paracord.member",
                &format!("user:{member}"),
                json!({ "roles": [id] }),
            )
            .await;
            reproject(&self.s.rooms, &self.space).await.unwrap();
        }

        async fn send(
            &self,
            room: &RoomId,
            sender: &UserId,
            new: NewEvent,
        ) -> Result<OwnedEventId> {
            self.s.rooms.append(room, sender, new).await
        }

        async fn say(&self, sender: &UserId, content: Value) -> Result<OwnedEventId> {
            self.send(
                &self.general,
                sender,
                NewEvent::message("m.room.message".into(), content),
            )
            .await
        }

        async fn react(
            &self,
            sender: &UserId,
            target: &OwnedEventId,
            key: &str,
        ) -> Result<OwnedEventId> {
            self.send(
                &self.general,
                sender,
                NewEvent::message(
                    "m.reaction".into(),
                    json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key } }),
                ),
            )
            .await
        }

        async fn redact(
            &self,
            sender: &UserId,
            room: &RoomId,
            target: &OwnedEventId,
        ) -> Result<OwnedEventId> {
            let mut r = NewEvent::message(
                TimelineEventType::RoomRedaction,
                json!({ "redacts": target }),
            );
            r.redacts = Some(target.clone());
            self.send(room, sender, r).await
        }

        async fn member(
            &self,
            sender: &UserId,
            target: &UserId,
            membership: &str,
        ) -> Result<OwnedEventId> {
            self.send(
                &self.general,
                sender,
                NewEvent::state(
                    TimelineEventType::RoomMember,
                    target.as_str(),
                    json!({ "membership": membership }),
                ),
            )
            .await
        }
    }

    fn text(body: &str) -> Value {
        json!({ "msgtype": "m.text", "body": body })
    }

    /// Asserts a 403 M_FORBIDDEN whose message contains `what`.
    #[track_caller]
    fn refused<T: fmt::Debug>(r: Result<T>, what: &str) {
        let e = r.expect_err(&format!("refused for {what}"));
        let (status, body) = e.classify();
        assert_eq!(status, http::StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(what), "{msg:?} should name {what}");
    }

    const EVERYONE: &str = "role:everyone";
    const NONE: Permissions = Permissions::NONE;

    #[tokio::test]
    async fn rooms_outside_guilds_are_not_checked() {
        let f = fixture().await;
        // A room of bob's own that claims to be a channel of the guild: the guild does not
        // list it, so bob writes chat.paracord.* state there like any state.
        let rogue =
            f.s.rooms
                .create_room(
                    &f.bob,
                    crate::rooms::create::CreateRoom {
                        version: Some("12".into()),
                        preset: None,
                        public: false,
                        name: None,
                        topic: None,
                        alias: None,
                        invite: vec![],
                        is_direct: false,
                        initial_state: vec![(
                            "m.space.parent".into(),
                            f.space.to_string(),
                            json!({ "via": ["localhost"] }),
                        )],
                        power_level_override: None,
                        creation_content: None,
                        profile: (None, None),
                    },
                )
                .await
                .unwrap();
        let kind = TimelineEventType::from("chat.paracord.channel");
        f.send(
            &rogue,
            &f.bob,
            NewEvent::state(kind, "", json!({ "kind": "text", "position": 0 })),
        )
        .await
        .unwrap();
        f.send(
            &rogue,
            &f.bob,
            NewEvent::message(
                "m.room.message".into(),
                json!({ "msgtype": "m.image", "body": "x", "m.mentions": { "room": true } }),
            ),
        )
        .await
        .unwrap();
        // A space whose chat.paracord.guild declares another profile version is a plain space.
        f.owner_state(
            &f.space,
            "chat.paracord.guild",
            "",
            json!({ "version": "2", "name": "Test", "owner": f.owner }),
        )
        .await;
        f.overwrite(EVERYONE, NONE, Permissions::SEND_MESSAGES)
            .await;
        f.say(&f.bob, text("version 2 is not ours")).await.unwrap();
    }

    #[tokio::test]
    async fn messages_need_view_channel_and_send_messages() {
        let f = fixture().await;
        f.say(&f.bob, text("hello")).await.unwrap();
        f.overwrite(EVERYONE, NONE, Permissions::SEND_MESSAGES)
            .await;
        refused(
            f.say(&f.bob, text("denied")).await,
            "Missing permission: SEND_MESSAGES",
        );
        // Other state than the profile's stays with the coarse layer; the owner is exempt.
        f.say(&f.owner, text("the owner speaks")).await.unwrap();
        f.overwrite(&format!("user:{}", f.bob), Permissions::SEND_MESSAGES, NONE)
            .await;
        f.say(&f.bob, text("allowed again")).await.unwrap();
        refused(f.say(&f.carol, text("still denied")).await, "SEND_MESSAGES");
        // Hidden: nothing at all, not even a reaction to an existing key.
        let msg = f.say(&f.owner, text("react")).await.unwrap();
        f.react(&f.owner, &msg, "👍").await.unwrap();
        f.overwrite(
            &format!("user:{}", f.carol),
            NONE,
            Permissions::VIEW_CHANNEL,
        )
        .await;
        refused(
            f.react(&f.carol, &msg, "👍").await,
            "Missing permission: VIEW_CHANNEL",
        );
    }

    #[tokio::test]
    async fn attachments_need_attach_files() {
        let f = fixture().await;
        f.overwrite(EVERYONE, NONE, Permissions::ATTACH_FILES).await;
        for msgtype in ["m.image", "m.file", "m.audio", "m.video"] {
            refused(
                f.say(
                    &f.bob,
                    json!({ "msgtype": msgtype, "body": "f", "url": "mxc://localhost/a" }),
                )
                .await,
                "Missing permission: ATTACH_FILES",
            );
        }
        refused(
            f.send(
                &f.general,
                &f.bob,
                NewEvent::message(
                    "m.sticker".into(),
                    json!({ "body": "s", "url": "mxc://localhost/s", "info": {} }),
                ),
            )
            .await,
            "ATTACH_FILES",
        );
        let plain = f.say(&f.bob, text("text is fine")).await.unwrap();
        refused(
            f.say(
                &f.bob,
                json!({ "msgtype": "m.text", "body": "* img",
                        "m.new_content": { "msgtype": "m.image", "body": "img", "url": "mxc://localhost/a" },
                        "m.relates_to": { "rel_type": "m.replace", "event_id": plain } }),
            )
            .await,
            "ATTACH_FILES",
        );
        f.role("uploader", 1, Permissions::ATTACH_FILES, &f.bob)
            .await;
        // The role cannot beat the @everyone overwrite; a role overwrite can.
        refused(
            f.say(
                &f.bob,
                json!({ "msgtype": "m.image", "body": "f", "url": "mxc://localhost/a" }),
            )
            .await,
            "ATTACH_FILES",
        );
        f.overwrite("role:uploader", Permissions::ATTACH_FILES, NONE)
            .await;
        f.say(
            &f.bob,
            json!({ "msgtype": "m.image", "body": "f", "url": "mxc://localhost/a" }),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_new_reaction_key_needs_add_reactions_an_existing_one_does_not() {
        let f = fixture().await;
        let msg = f.say(&f.owner, text("react to me")).await.unwrap();
        f.overwrite(EVERYONE, NONE, Permissions::ADD_REACTIONS)
            .await;
        refused(
            f.react(&f.bob, &msg, "🎉").await,
            "Missing permission: ADD_REACTIONS",
        );
        f.react(&f.owner, &msg, "🎉").await.unwrap();
        f.react(&f.bob, &msg, "🎉").await.unwrap();
        // Once the only reaction with a key is redacted, the key is new again.
        let other = f.react(&f.owner, &msg, "👀").await.unwrap();
        f.redact(&f.owner, &f.general, &other).await.unwrap();
        refused(f.react(&f.carol, &msg, "👀").await, "ADD_REACTIONS");
    }

    #[test]
    fn custom_emoji_are_the_emoticon_images_of_a_body() {
        let html = r#"hi <img data-mx-emoticon src="mxc://a/one" alt=":one:"> and
            <img src="mxc://a/photo"> <img data-mx-emoticon height="32" src='mxc://b/two'>
            <img data-mx-emoticon src="https://not/mxc">"#;
        assert_eq!(custom_emoji(html), ["mxc://a/one", "mxc://b/two"]);
        assert!(custom_emoji("<img data-mx-emoticon").is_empty());
        assert!(custom_emoji("plain text").is_empty());
    }

    #[tokio::test]
    async fn emoji_from_outside_the_guilds_packs_need_use_external_emojis() {
        let f = fixture().await;
        f.owner_state(
            &f.space,
            "im.ponies.room_emotes",
            "pack",
            json!({ "images": { "party": { "url": "mxc://localhost/party" } } }),
        )
        .await;
        let emote = |src: &str| {
            json!({ "msgtype": "m.text", "body": ":e:", "format": "org.matrix.custom.html",
                    "formatted_body": format!("<img data-mx-emoticon src=\"{src}\" alt=\":e:\">") })
        };
        // The guild's own emoji need nothing more; @everyone has USE_EXTERNAL_EMOJIS by
        // default, so it is denied here.
        f.overwrite(EVERYONE, NONE, Permissions::USE_EXTERNAL_EMOJIS)
            .await;
        f.say(&f.bob, emote("mxc://localhost/party")).await.unwrap();
        refused(
            f.say(&f.bob, emote("mxc://elsewhere/cat")).await,
            "Missing permission: USE_EXTERNAL_EMOJIS",
        );
        let msg = f.say(&f.owner, text("react to me")).await.unwrap();
        f.react(&f.bob, &msg, "mxc://localhost/party")
            .await
            .unwrap();
        refused(
            f.react(&f.bob, &msg, "mxc://elsewhere/cat").await,
            "USE_EXTERNAL_EMOJIS",
        );
        // Once someone may use it, joining the reaction needs only VIEW_CHANNEL.
        f.react(&f.owner, &msg, "mxc://elsewhere/dog")
            .await
            .unwrap();
        f.react(&f.bob, &msg, "mxc://elsewhere/dog").await.unwrap();
    }

    #[tokio::test]
    async fn mentioning_the_room_needs_mention_everyone() {
        let f = fixture().await;
        // Not among @everyone's defaults.
        let room_mention =
            json!({ "msgtype": "m.text", "body": "@room hi", "m.mentions": { "room": true } });
        refused(
            f.say(&f.bob, room_mention.clone()).await,
            "Missing permission: MENTION_EVERYONE",
        );
        f.say(
            &f.bob,
            json!({ "msgtype": "m.text", "body": "hi", "m.mentions": { "room": false } }),
        )
        .await
        .unwrap();
        f.role("herald", 1, Permissions::MENTION_EVERYONE, &f.bob)
            .await;
        f.say(&f.bob, room_mention).await.unwrap();
    }

    #[tokio::test]
    async fn bundled_url_previews_need_embed_links() {
        let f = fixture().await;
        f.overwrite(EVERYONE, NONE, Permissions::EMBED_LINKS).await;
        let preview = json!({ "msgtype": "m.text", "body": "https://example.org",
                              "m.url_previews": [{ "matched_url": "https://example.org", "og:title": "Example" }] });
        refused(
            f.say(&f.bob, preview).await,
            "Missing permission: EMBED_LINKS",
        );
        f.say(
            &f.bob,
            json!({ "msgtype": "m.text", "body": "https://example.org", "m.url_previews": [] }),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn threads_need_create_public_threads_then_send_messages_in_threads() {
        let f = fixture().await;
        let root = f.say(&f.owner, text("root")).await.unwrap();
        let in_thread = |body: &str| {
            json!({ "msgtype": "m.text", "body": body,
                    "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
        };
        f.overwrite(
            EVERYONE,
            NONE,
            Permissions::CREATE_PUBLIC_THREADS.union(Permissions::SEND_MESSAGES),
        )
        .await;
        refused(
            f.say(&f.bob, in_thread("first")).await,
            "Missing permission: CREATE_PUBLIC_THREADS",
        );
        f.say(&f.owner, in_thread("started")).await.unwrap();
        // Replying needs SEND_MESSAGES_IN_THREADS, not SEND_MESSAGES.
        let reply = f.say(&f.bob, in_thread("reply")).await.unwrap();
        f.say(
            &f.bob,
            json!({ "msgtype": "m.text", "body": "* edited", "m.new_content": text("edited"),
                    "m.relates_to": { "rel_type": "m.replace", "event_id": reply } }),
        )
        .await
        .unwrap();
        f.overwrite(EVERYONE, NONE, Permissions::SEND_MESSAGES_IN_THREADS)
            .await;
        refused(
            f.say(&f.bob, in_thread("again")).await,
            "Missing permission: SEND_MESSAGES_IN_THREADS",
        );
    }

    #[tokio::test]
    async fn level_fifty_is_narrowed_to_the_flags_and_the_hierarchy() {
        let f = fixture().await;
        // A kicker is at level 50 (so may redact, kick and ban at the Matrix level) but
        // holds KICK_MEMBERS only.
        f.role("kicker", 2, Permissions::KICK_MEMBERS, &f.bob).await;
        let owners = f.say(&f.owner, text("the owner's")).await.unwrap();
        refused(
            f.redact(&f.bob, &f.general, &owners).await,
            "Missing permission: MANAGE_MESSAGES",
        );
        let own = f.say(&f.bob, text("bob's own")).await.unwrap();
        f.redact(&f.bob, &f.general, &own).await.unwrap();
        refused(
            f.member(&f.bob, &f.carol, "ban").await,
            "Missing permission: BAN_MEMBERS",
        );
        // Carol's role, without permissions, ranks above bob's: at the Matrix level she is
        // below him (level 1), but he may not kick her.
        f.role("elder", 5, NONE, &f.carol).await;
        refused(
            f.member(&f.bob, &f.carol, "leave").await,
            "KICK_MEMBERS applies only to members ranked below you",
        );
        f.owner_state(
            &f.space,
            "chat.paracord.member",
            &format!("user:{}", f.carol),
            json!({}),
        )
        .await;
        reproject(&f.s.rooms, &f.space).await.unwrap();
        f.member(&f.bob, &f.carol, "leave").await.unwrap();
        // With MANAGE_MESSAGES, others' events can be redacted.
        f.role(
            "kicker",
            2,
            Permissions::KICK_MEMBERS.union(Permissions::MANAGE_MESSAGES),
            &f.bob,
        )
        .await;
        f.redact(&f.bob, &f.general, &owners).await.unwrap();
    }

    #[tokio::test]
    async fn bans_and_unbans_need_ban_members() {
        let f = fixture().await;
        f.role("mod", 3, Permissions::BAN_MEMBERS, &f.bob).await;
        f.member(&f.bob, &f.carol, "ban").await.unwrap();
        f.owner_state(
            &f.space,
            "chat.paracord.member",
            &format!("user:{}", f.bob),
            json!({}),
        )
        .await;
        // Still at level 50 until the power levels follow: the fine rule stops the unban.
        refused(
            f.member(&f.bob, &f.carol, "leave").await,
            "Missing permission: BAN_MEMBERS",
        );
        f.member(&f.owner, &f.carol, "leave").await.unwrap();
    }

    #[tokio::test]
    async fn only_the_owner_writes_or_redacts_the_guilds_state() {
        let f = fixture().await;
        f.role("admin", 9, Permissions::ADMINISTRATOR, &f.bob).await;
        // Projected power levels keep the profile's state at the owner's level; here they
        // leave it at 50 (as a guild of an older projection or of another implementation
        // might), so that only the fine rule stands in the way.
        for room in [&f.space, &f.general] {
            let state = f.s.rooms.current_state(room).unwrap();
            let mut pl =
                f.s.rooms
                    .state_content(&state, "m.room.power_levels", "")
                    .unwrap()
                    .unwrap();
            for kind in ["chat.paracord.role", "chat.paracord.overwrite"] {
                pl["events"][kind] = json!(50);
            }
            f.owner_state(room, "m.room.power_levels", "", pl).await;
        }
        let role = NewEvent::state(
            "chat.paracord.role".into(),
            "sneaky",
            json!({ "name": "sneaky", "color": 0, "position": 10, "hoist": false,
                    "mentionable": false, "permissions": "8" }),
        );
        refused(
            f.send(&f.space, &f.bob, role).await,
            "Only the guild's owner",
        );
        let ow = NewEvent::state(
            "chat.paracord.overwrite".into(),
            EVERYONE,
            json!({ "allow": "0", "deny": "2048" }),
        );
        refused(
            f.send(&f.general, &f.bob, ow).await,
            "Only the guild's owner",
        );
        // Redacting the role would strip its permissions.
        let state = f.s.rooms.current_state(&f.space).unwrap();
        let everyone_role =
            f.s.rooms
                .state_pdu(&state, "chat.paracord.role", "everyone")
                .unwrap()
                .unwrap()
                .event_id;
        refused(
            f.redact(&f.bob, &f.space, &everyone_role).await,
            "Only the guild's owner",
        );
        // An administrator may still do what the coarse layer allows.
        f.send(
            &f.general,
            &f.bob,
            NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": "new" })),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_timed_out_member_may_only_leave() {
        let f = fixture().await;
        let key = format!("user:{}", f.bob);
        let until = now_ms() + 3_600_000;
        f.owner_state(
            &f.space,
            "chat.paracord.member",
            &key,
            json!({ "roles": [], "communication_disabled_until": until }),
        )
        .await;
        refused(f.say(&f.bob, text("muted")).await, "timed out");
        let msg = f.say(&f.owner, text("x")).await.unwrap();
        f.react(&f.owner, &msg, "👍").await.unwrap();
        refused(f.react(&f.bob, &msg, "👍").await, "timed out");
        f.s.rooms.leave(&f.general, &f.bob, None).await.unwrap();
        // Joining is reading.
        f.s.rooms
            .join(&f.general, &f.bob, (None, None), None)
            .await
            .unwrap();
        // A timeout in the past is none.
        f.owner_state(
            &f.space,
            "chat.paracord.member",
            &key,
            json!({ "communication_disabled_until": now_ms() - 1 }),
        )
        .await;
        f.say(&f.bob, text("back")).await.unwrap();
        // Administrators cannot be timed out.
        f.role("admin", 9, Permissions::ADMINISTRATOR, &f.carol)
            .await;
        f.owner_state(
            &f.space,
            "chat.paracord.member",
            &format!("user:{}", f.carol),
            json!({ "roles": ["admin"], "communication_disabled_until": until }),
        )
        .await;
        f.say(&f.carol, text("admin")).await.unwrap();
    }

    #[tokio::test]
    async fn joining_a_channel_needs_view_channel() {
        let f = fixture().await;
        let dave = user("@dave:localhost");
        f.s.rooms
            .invite(&f.space, &f.owner, &dave, None, false)
            .await
            .unwrap();
        f.s.rooms
            .join(&f.space, &dave, (None, None), None)
            .await
            .unwrap();
        f.overwrite(&format!("user:{dave}"), NONE, Permissions::VIEW_CHANNEL)
            .await;
        refused(
            f.s.rooms.join(&f.general, &dave, (None, None), None).await,
            "Missing permission: VIEW_CHANNEL",
        );
        // The same join received from another server is not soft-failed for it: only the
        // rules of spec/guilds.md §9 are.
        let state = f.s.rooms.current_state(&f.general).unwrap();
        let new = NewEvent::state(
            TimelineEventType::RoomMember,
            dave.as_str(),
            json!({ "membership": "join" }),
        );
        let room = f.s.rooms.room(&f.general).unwrap().unwrap();
        let obj =
            f.s.rooms
                .template(&f.general, &room, &state, &dave, &new)
                .unwrap();
        let (_, pdu, _) = f.s.rooms.sign_event(obj, "12").unwrap();
        assert_eq!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Received).unwrap(),
            None
        );
        assert_eq!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Submitted).unwrap(),
            Some(Refusal::Missing("VIEW_CHANNEL"))
        );
        f.overwrite(&format!("user:{dave}"), NONE, NONE).await;
        f.s.rooms
            .join(&f.general, &dave, (None, None), None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn slow_mode_spaces_a_members_messages() {
        let f = fixture().await;
        f.owner_state(
            &f.general,
            "chat.paracord.channel",
            "",
            json!({ "kind": "text", "position": 0, "parent": f.category, "rate_limit_per_user": 60 }),
        )
        .await;
        let first = f.say(&f.bob, text("one")).await.unwrap();
        refused(f.say(&f.bob, text("two")).await, "Slow mode");
        // Others, reactions and edits are not held back; neither is the owner.
        f.say(&f.carol, text("carol")).await.unwrap();
        f.react(&f.bob, &first, "👍").await.unwrap();
        f.say(
            &f.bob,
            json!({ "msgtype": "m.text", "body": "* uno", "m.new_content": text("uno"),
                    "m.relates_to": { "rel_type": "m.replace", "event_id": first } }),
        )
        .await
        .unwrap();
        f.say(&f.owner, text("a")).await.unwrap();
        f.say(&f.owner, text("b")).await.unwrap();
        // MANAGE_MESSAGES exempts.
        f.role("mod", 3, Permissions::MANAGE_MESSAGES, &f.bob).await;
        f.say(&f.bob, text("two")).await.unwrap();
    }

    /// Issue 20: slow mode finds the sender's last message however many events came after
    /// it (the scan it replaced stopped 500 events back).
    #[tokio::test]
    async fn slow_mode_sees_past_any_number_of_others_messages() {
        let f = fixture().await;
        f.owner_state(
            &f.general,
            "chat.paracord.channel",
            "",
            json!({ "kind": "text", "position": 0, "parent": f.category, "rate_limit_per_user": 21600 }),
        )
        .await;
        f.say(&f.bob, text("one")).await.unwrap();
        for i in 0..520 {
            f.say(&f.owner, text(&format!("chatter {i}")))
                .await
                .unwrap();
        }
        refused(f.say(&f.bob, text("two")).await, "Slow mode");
        // A received message of bob's is soft-failed for it too.
        let state = f.s.rooms.current_state(&f.general).unwrap();
        let room = f.s.rooms.room(&f.general).unwrap().unwrap();
        let new = NewEvent::message("m.room.message".into(), text("remote two"));
        let obj =
            f.s.rooms
                .template(&f.general, &room, &state, &f.bob, &new)
                .unwrap();
        let (_, pdu, _) = f.s.rooms.sign_event(obj, "12").unwrap();
        assert!(matches!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Received).unwrap(),
            Some(Refusal::SlowMode(secs)) if secs > 21_000
        ));
    }

    /// A pins event of `sender` built on the channel's current state, and the state.
    fn pins_event(f: &Fixture, sender: &UserId, pinned: Value) -> (Pdu, std::sync::Arc<StateMap>) {
        let state = f.s.rooms.current_state(&f.general).unwrap();
        let room = f.s.rooms.room(&f.general).unwrap().unwrap();
        let new = NewEvent::state(
            TimelineEventType::RoomPinnedEvents,
            "",
            json!({ "pinned": pinned }),
        );
        let obj =
            f.s.rooms
                .template(&f.general, &room, &state, sender, &new)
                .unwrap();
        let (_, pdu, _) = f.s.rooms.sign_event(obj, "12").unwrap();
        (pdu, state)
    }

    #[tokio::test]
    async fn pins_need_manage_messages_at_most_fifty_of_this_room() {
        let f = fixture().await;
        let msg = f.say(&f.carol, text("pin me")).await.unwrap();
        // A kicker is at level 50, so the Matrix rules let him; the fine rule does not.
        f.role("kicker", 2, Permissions::KICK_MEMBERS, &f.bob).await;
        let (pdu, state) = pins_event(&f, &f.bob, json!([msg]));
        for source in [Source::Submitted, Source::Received] {
            assert_eq!(
                check(&f.s.rooms, &f.general, &state, &pdu, source).unwrap(),
                Some(Refusal::Missing("MANAGE_MESSAGES"))
            );
        }
        refused(
            f.send(
                &f.general,
                &f.bob,
                NewEvent::state(
                    TimelineEventType::RoomPinnedEvents,
                    "",
                    json!({ "pinned": [msg] }),
                ),
            )
            .await,
            "Missing permission: MANAGE_MESSAGES",
        );
        f.role("kicker", 2, Permissions::MANAGE_MESSAGES, &f.bob)
            .await;
        let pins = |pinned: Value| {
            NewEvent::state(
                TimelineEventType::RoomPinnedEvents,
                "",
                json!({ "pinned": pinned }),
            )
        };
        f.send(&f.general, &f.bob, pins(json!([msg])))
            .await
            .unwrap();
        // An event of another room, even the owner's, is a bad request.
        let space_state = f.s.rooms.current_state(&f.space).unwrap();
        let elsewhere =
            f.s.rooms
                .state_pdu(&space_state, "chat.paracord.guild", "")
                .unwrap()
                .unwrap()
                .event_id;
        let e = f
            .send(&f.general, &f.owner, pins(json!([msg, elsewhere])))
            .await
            .unwrap_err();
        assert_eq!(e.classify().1["errcode"], "M_INVALID_PARAM");
        let (pdu, state) = pins_event(&f, &f.bob, json!([msg, elsewhere]));
        assert!(matches!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Received).unwrap(),
            Some(Refusal::Pins(_))
        ));
        // An event this server does not hold: refused from a local user, not soft-failed.
        let unknown = "$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let (pdu, state) = pins_event(&f, &f.bob, json!([msg, unknown]));
        assert!(matches!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Submitted).unwrap(),
            Some(Refusal::Pins(_))
        ));
        assert_eq!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Received).unwrap(),
            None
        );
        // Fifty-one is too many, for a received list too.
        let many: Vec<String> = (0..51).map(|_| msg.to_string()).collect();
        let e = f
            .send(&f.general, &f.bob, pins(json!(many)))
            .await
            .unwrap_err();
        assert_eq!(e.classify().1["errcode"], "M_INVALID_PARAM");
        let (pdu, state) = pins_event(&f, &f.bob, json!(many));
        assert!(matches!(
            check(&f.s.rooms, &f.general, &state, &pdu, Source::Received).unwrap(),
            Some(Refusal::Pins(_))
        ));
        let fifty: Vec<String> = (0..50).map(|_| msg.to_string()).collect();
        f.send(&f.general, &f.bob, pins(json!(fifty)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn polls_need_send_polls_votes_only_the_channel_and_ends_the_sender_or_manage_messages() {
        let f = fixture().await;
        async fn start(f: &Fixture, sender: &UserId) -> Result<OwnedEventId> {
            let content = json!({
                "m.text": [{ "body": "Lunch?" }],
                "m.poll": {
                    "question": { "m.text": [{ "body": "Lunch?" }] },
                    "answers": [
                        { "m.id": "a", "m.text": [{ "body": "A" }] },
                        { "m.id": "b", "m.text": [{ "body": "B" }] },
                    ],
                },
            });
            f.send(
                &f.general,
                sender,
                NewEvent::message("m.poll.start".into(), content),
            )
            .await
        }
        let related = |kind: &str, poll: &OwnedEventId, extra: Value| {
            let mut content =
                json!({ "m.relates_to": { "rel_type": "m.reference", "event_id": poll } });
            if let (Some(c), Some(e)) = (content.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            NewEvent::message(kind.into(), content)
        };
        let poll = start(&f, &f.bob).await.unwrap();
        // A poll that is no poll is refused in a channel with 400.
        let bad = f
            .send(
                &f.general,
                &f.bob,
                NewEvent::message(
                    "m.poll.start".into(),
                    json!({ "m.text": [{ "body": "?" }] }),
                ),
            )
            .await
            .unwrap_err();
        assert_eq!(bad.classify().0, http::StatusCode::BAD_REQUEST);

        f.overwrite(
            EVERYONE,
            NONE,
            Permissions::SEND_POLLS | Permissions::SEND_MESSAGES,
        )
        .await;
        refused(
            start(&f, &f.carol).await,
            "Missing permission: SEND_MESSAGES",
        );
        f.overwrite(EVERYONE, NONE, Permissions::SEND_POLLS).await;
        refused(start(&f, &f.carol).await, "Missing permission: SEND_POLLS");
        // Voting needs neither: seeing the channel is enough.
        f.send(
            &f.general,
            &f.carol,
            related("m.poll.response", &poll, json!({ "m.selections": ["a"] })),
        )
        .await
        .unwrap();
        // Ending: carol may not end bob's poll; bob may.
        let end = |poll: &OwnedEventId| {
            related(
                "m.poll.end",
                poll,
                json!({ "m.text": [{ "body": "closed" }] }),
            )
        };
        refused(
            f.send(&f.general, &f.carol, end(&poll)).await,
            "Missing permission: MANAGE_MESSAGES",
        );
        f.send(&f.general, &f.bob, end(&poll)).await.unwrap();
        // The unstable names are the same events.
        let unstable = f
            .send(
                &f.general,
                &f.carol,
                NewEvent::message(
                    "org.matrix.msc3381.poll.start".into(),
                    json!({ "org.matrix.msc1767.text": "?" }),
                ),
            )
            .await;
        refused(unstable, "Missing permission: SEND_POLLS");
    }

    #[tokio::test]
    async fn categories_carry_no_messages() {
        let f = fixture().await;
        f.s.rooms
            .join(&f.category, &f.bob, (None, None), None)
            .await
            .unwrap();
        refused(
            f.send(
                &f.category,
                &f.bob,
                NewEvent::message("m.room.message".into(), text("x")),
            )
            .await,
            "A category carries no messages",
        );
    }
}
