//! Pins of a channel (spec/guilds.md §11, spec/rest.md §6): the standard
//! `m.room.pinned_events` state of the channel's room, so that plain Matrix clients see the
//! same pins. Changing it needs MANAGE_MESSAGES (a fine rule, [`super::enforce`]); a list
//! holds at most [`MAX_PINS`] events, each an event of that room.
//!
//! `/_paracord/v1/channels/{id}/pins` lists them (newest pin first, only the events the
//! requester may see); `PUT` and `DELETE /pins/{eventId}` are conveniences that write the
//! state event as the requester, on the requester's own server (no relay: pinning needs no
//! power of the owner's).

use paracord_core::{Error, Result};
use ruma::{events::TimelineEventType, EventId, OwnedEventId, RoomId, UserId};
use serde_json::{json, Value};

use super::{channels::viewer_permissions, permissions::Permissions};
use crate::rooms::{timeline::Reader, NewEvent, Rooms, StateMap};

/// The state event type of pins.
pub const PINNED_EVENTS: &str = "m.room.pinned_events";
/// Most events a channel may have pinned (Discord's limit).
pub const MAX_PINS: usize = 50;

/// Serialises this server's pin writes, so that two at once do not lose one of them (each
/// reads the list, then writes it whole).
static PINNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pinned event ids of an `m.room.pinned_events` content; `None` when `pinned` is not an
/// array of strings.
pub(crate) fn pinned_of(content: &Value) -> Option<Vec<String>> {
    match content.get("pinned") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(_) => None,
    }
}

/// What is wrong with a list of pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadPins {
    /// `pinned` is no array of strings (`M_BAD_JSON`).
    Shape(String),
    /// Too many, or an event that is not of the room (`M_INVALID_PARAM`).
    Invalid(String),
}

/// The current pins of a room's state, in the order of the list (oldest pin first).
fn current_pins(rooms: &Rooms, state: &StateMap) -> Result<Vec<String>> {
    Ok(rooms
        .state_content(state, PINNED_EVENTS, "")?
        .and_then(|c| pinned_of(&c))
        .unwrap_or_default())
}

/// Why a new `m.room.pinned_events` content of a guild room is no valid list, against
/// `state`, the room's state before it: not an array of event ids, more than [`MAX_PINS`],
/// or a newly pinned event that is of another room. `known_only`: a newly pinned event this
/// server does not hold is fine (a received event may name one it has not fetched); else it
/// is refused, since a local user can only pin what they have seen.
pub(crate) fn invalid_pins(
    rooms: &Rooms,
    room_id: &RoomId,
    state: &StateMap,
    content: &Value,
    known_only: bool,
) -> Result<Option<BadPins>> {
    let Some(pinned) = pinned_of(content) else {
        return Ok(Some(BadPins::Shape(
            "pinned must be an array of event IDs".into(),
        )));
    };
    if pinned.len() > MAX_PINS {
        return Ok(Some(BadPins::Invalid(format!(
            "A channel may have at most {MAX_PINS} pinned events"
        ))));
    }
    let before = current_pins(rooms, state)?;
    for id in pinned.iter().filter(|id| !before.contains(id)) {
        let Ok(event_id) = <&EventId>::try_from(id.as_str()) else {
            return Ok(Some(BadPins::Invalid(format!("{id:?} is not an event ID"))));
        };
        let meta = match rooms.short_id(event_id)? {
            Some(short) => rooms.meta(short)?,
            None => None,
        };
        match meta {
            Some(m) if m.room_id == room_id => {}
            Some(_) => return Ok(Some(not_here(id))),
            None if known_only => {}
            None => return Ok(Some(not_here(id))),
        }
    }
    Ok(None)
}

fn not_here(id: &str) -> BadPins {
    BadPins::Invalid(format!("{id} is not an event of this room"))
}

/// `GET /channels/{id}/pins`: VIEW_CHANNEL; the pinned events the requester may see (as
/// client events), newest pin first. Events the server does not hold, or that the requester
/// may not see (history visibility, READ_MESSAGE_HISTORY), are left out.
pub fn list_pins(rooms: &Rooms, channel_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
    viewer_permissions(rooms, channel_id, user)?;
    let state = rooms.current_state(channel_id)?;
    let reader = Reader { user, device: None };
    let mut out = Vec::new();
    for id in current_pins(rooms, &state)?.iter().rev() {
        let Ok(event_id) = <&EventId>::try_from(id.as_str()) else {
            continue;
        };
        let Ok((_, meta, event)) = rooms.visible_event(reader, Some(channel_id), event_id) else {
            continue;
        };
        if meta.hidden || meta.rejected || meta.outlier {
            continue;
        }
        out.push(event);
    }
    Ok(out)
}

fn not_pinned() -> Error {
    Error::not_found("this event is not pinned")
}

/// The requester may change the channel's pins: VIEW_CHANNEL (else `404`), joined to the
/// channel and MANAGE_MESSAGES (else `403`).
fn pinner(rooms: &Rooms, channel_id: &RoomId, user: &UserId) -> Result<()> {
    let perms = viewer_permissions(rooms, channel_id, user)?;
    if !perms.contains(Permissions::MANAGE_MESSAGES) {
        return Err(Error::forbidden("Missing permission: MANAGE_MESSAGES"));
    }
    if !rooms.is_joined(channel_id, user)? {
        return Err(Error::forbidden("join the channel first"));
    }
    Ok(())
}

async fn write(
    rooms: &Rooms,
    channel_id: &RoomId,
    user: &UserId,
    pinned: Vec<String>,
) -> Result<()> {
    rooms
        .send_state(
            channel_id,
            user,
            NewEvent::state(
                TimelineEventType::RoomPinnedEvents,
                "",
                json!({ "pinned": pinned }),
            ),
        )
        .await
        .map(drop)
}

/// `PUT /channels/{id}/pins/{eventId}`: pins an event of the channel the requester may see
/// (`404` otherwise), as the newest pin; pinning a pinned event changes nothing. A full list
/// is `400 M_INVALID_PARAM`.
pub async fn pin(
    rooms: &Rooms,
    channel_id: &RoomId,
    user: &UserId,
    event_id: &EventId,
) -> Result<()> {
    pinner(rooms, channel_id, user)?;
    let reader = Reader { user, device: None };
    let (_, meta, _) = rooms
        .visible_event(reader, Some(channel_id), event_id)
        .map_err(|_| Error::not_found("no such event in this channel"))?;
    if meta.hidden || meta.rejected || meta.outlier {
        return Err(Error::not_found("no such event in this channel"));
    }
    let _one_at_a_time = PINNING.lock().await;
    let state = rooms.current_state(channel_id)?;
    let mut pinned = current_pins(rooms, &state)?;
    if pinned.iter().any(|p| p == event_id.as_str()) {
        return Ok(());
    }
    if pinned.len() >= MAX_PINS {
        return Err(Error::invalid_param(format!(
            "A channel may have at most {MAX_PINS} pinned events"
        )));
    }
    pinned.push(event_id.to_string());
    write(rooms, channel_id, user, pinned).await
}

/// `DELETE /channels/{id}/pins/{eventId}`: unpins an event; one that is not pinned is `404`.
pub async fn unpin(
    rooms: &Rooms,
    channel_id: &RoomId,
    user: &UserId,
    event_id: &EventId,
) -> Result<()> {
    pinner(rooms, channel_id, user)?;
    let _one_at_a_time = PINNING.lock().await;
    let state = rooms.current_state(channel_id)?;
    let mut pinned = current_pins(rooms, &state)?;
    let before = pinned.len();
    pinned.retain(|p| p != event_id.as_str());
    if pinned.len() == before {
        return Err(not_pinned());
    }
    write(rooms, channel_id, user, pinned).await
}

/// An event id from a path; anything else names no event.
pub fn event_param(id: &str) -> Result<OwnedEventId> {
    OwnedEventId::try_from(id).map_err(|_| Error::not_found("no such event in this channel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_lists_are_arrays_of_strings() {
        assert_eq!(pinned_of(&json!({})), Some(vec![]));
        assert_eq!(
            pinned_of(&json!({ "pinned": ["$a", "$b"] })),
            Some(vec!["$a".into(), "$b".into()])
        );
        assert_eq!(pinned_of(&json!({ "pinned": "$a" })), None);
        assert_eq!(pinned_of(&json!({ "pinned": ["$a", 1] })), None);
    }
}
