//! Sending, reading and redacting room events.

use axum::extract::State;
use paracord_core::Error;
use paracord_service::{
    ratelimit::Limit,
    rooms::{
        timeline::{Dir, EventFilter, Reader, Window},
        NewEvent,
    },
    sync::{make_token, parse_token},
};
use ruma::api::{
    client::{
        filter::RoomEventFilter,
        message::{get_message_events, send_message_event},
        redact::redact_event,
        room::get_event_by_timestamp,
    },
    Direction,
};
use ruma::{serde::Raw, MilliSecondsSinceUnixEpoch, UInt};
use serde_json::{json, Value};

use super::reader;
use crate::{
    ruma_wrapper::{Attempt, Ruma},
    ApiResult, AppState, RumaResponse,
};

/// A service's JSON (an event, a content) as the `Raw` a ruma response carries: the same
/// bytes a `Json<Value>` body would have had.
pub(crate) fn raw<T>(v: &Value) -> Result<Raw<T>, Error> {
    Ok(Raw::new(v)?.cast_unchecked())
}

/// The JSON of a typed request field kept opaque by ruma (an event content, a creation
/// content), as the service takes it.
pub(crate) fn json_of<T>(raw: &Raw<T>) -> Result<Value, Error> {
    raw.deserialize_as_unchecked()
        .map_err(|e| Error::bad_json(format!("invalid JSON: {e}")))
}

pub(crate) fn filter_of(f: &RoomEventFilter) -> EventFilter {
    paracord_service::sync::event_filter(f)
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid
pub(crate) async fn send_message_event_route(
    State(state): State<AppState>,
    req: Ruma<send_message_event::v3::Request>,
) -> ApiResult<RumaResponse<send_message_event::v3::Response>> {
    let id = req.user()?;
    // An empty body reaches ruma as `{}`: only the raw body tells it apart.
    if req.body_is_empty() {
        return Err(Error::bad_json("event content must be a JSON object").into());
    }
    let content = Some(json_of(&req.body.body)?)
        .filter(|c| c.is_object())
        .ok_or_else(|| Error::bad_json("event content must be a JSON object"))?;
    if !state.rooms.is_joined(&req.body.room_id, &id.user_id)? {
        state.rooms.room_or_404(&req.body.room_id)?;
        return Err(Error::forbidden("you are not in this room").into());
    }
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let mut new = NewEvent::message(req.body.event_type.to_string().as_str().into(), content);
    new.txn = Some((id.device_id.to_string(), req.body.txn_id.to_string()));
    new.ts = req.ts;
    let event_id = state
        .rooms
        .append(&req.body.room_id, &id.user_id, new)
        .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(
        event_id,
    )))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidredacteventidtxnid
pub(crate) async fn redact_event_route(
    State(state): State<AppState>,
    req: Ruma<redact_event::v3::Request>,
) -> ApiResult<RumaResponse<redact_event::v3::Response>> {
    let id = req.user()?;
    if !state.rooms.is_joined(&req.body.room_id, &id.user_id)? {
        state.rooms.room_or_404(&req.body.room_id)?;
        return Err(Error::forbidden("you are not in this room").into());
    }
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let mut content = json!({});
    if let Some(r) = &req.body.reason {
        content["reason"] = json!(r);
    }
    let mut new = NewEvent::message(ruma::events::TimelineEventType::RoomRedaction, content);
    new.redacts = Some(req.body.event_id.clone());
    new.txn = Some((
        id.device_id.to_string(),
        format!("redact:{}", req.body.txn_id),
    ));
    let event_id = state
        .rooms
        .append(&req.body.room_id, &id.user_id, new)
        .await?;
    Ok(RumaResponse(redact_event::v3::Response::new(event_id)))
}

/// A room this server does not know is one the user is not in (403, as other servers
/// answer; a 404 would tell which rooms exist); otherwise the user must be allowed to read it.
fn check_can_read_messages(
    state: &AppState,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
) -> ApiResult<()> {
    if state.rooms.room(room_id)?.is_none() {
        return Err(Error::forbidden("you are not a member of this room").into());
    }
    state.rooms.check_can_read(room_id, user)?;
    Ok(())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidmessages
pub(crate) async fn get_message_events_route(
    State(state): State<AppState>,
    attempt: Attempt<get_message_events::v3::Request>,
) -> ApiResult<RumaResponse<get_message_events::v3::Response>> {
    // Whether the caller may read the room is answered before their parameters are looked
    // at: a forgotten room is 403 even to a request without `dir`. (A path that names no
    // room fails the parsing below.)
    if let (Some(id), Some(room_id)) = (
        &attempt.ident,
        attempt
            .path
            .first()
            .and_then(|r| ruma::RoomId::parse(r).ok()),
    ) {
        check_can_read_messages(&state, &room_id, &id.user_id)?;
    }
    let req = attempt.request?;
    let r = reader(&req)?;
    let room_id = &req.body.room_id;
    let dir = match req.body.dir {
        Direction::Backward => Dir::Backward,
        Direction::Forward => Dir::Forward,
    };
    // A user who left reads no further than their leave.
    let ceiling = match state.rooms.read_ceiling(room_id, r.user)? {
        Some(pos) => pos,
        None => state.stream.current(),
    };
    let from = match &req.body.from {
        Some(t) => parse_token(t)?.min(ceiling),
        None => match dir {
            Dir::Backward => ceiling,
            Dir::Forward => 0,
        },
    };
    let to = req.body.to.as_deref().map(parse_token).transpose()?;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(10)
        .clamp(1, 1000);
    let mut filter = filter_of(&req.body.filter);
    filter.ignored = state.account_data.ignored_users(r.user)?;
    let to = match dir {
        Dir::Forward => Some(to.unwrap_or(ceiling).min(ceiling)),
        Dir::Backward => to,
    };
    let window = Window {
        from,
        to,
        dir,
        limit,
    };
    let mut page = state.rooms.paginate(room_id, r, window, &filter)?;
    // Paging back into the positions kept free before a join over federation: the history
    // there comes from the other servers in the room, a batch at a time.
    let mut rounds = 0;
    while dir == Dir::Backward && rounds < 5 {
        let Some(free) = state.rooms.backfill_room(room_id)? else {
            break;
        };
        let reached = from >= free.end && page.next.is_none_or(|n| n < free.end);
        if !reached {
            break;
        }
        rounds += 1;
        if state.pdus.backfill(room_id, limit).await? == 0 {
            break;
        }
        page = state.rooms.paginate(room_id, r, window, &filter)?;
    }
    let lazy = matches!(
        req.body.filter.lazy_load_options,
        ruma::api::client::filter::LazyLoadOptions::Enabled { .. }
    );
    let state_events = if lazy {
        lazy_members(&state, r, room_id, &page.events)?
    } else {
        Vec::new()
    };
    // `end` whenever events came back (where the next page starts; that page may be empty,
    // and has no `end`), as clients and other servers expect.
    let end = page.next.or_else(|| {
        page.events.last().map(|(pos, _)| match dir {
            Dir::Backward => pos.saturating_sub(1),
            Dir::Forward => *pos,
        })
    });
    let mut resp = get_message_events::v3::Response::new();
    resp.start = make_token(from);
    resp.end = end.map(make_token);
    resp.chunk = page
        .events
        .iter()
        .map(|(_, e)| raw(e))
        .collect::<Result<_, _>>()?;
    resp.state = state_events.iter().map(raw).collect::<Result<_, _>>()?;
    Ok(RumaResponse(resp))
}

/// The member events of the senders of `events` (visible events of a page), as they were at
/// the newest of them: not the current ones, which a user who left may not see (issue 15).
pub(crate) fn lazy_members(
    state: &AppState,
    r: Reader<'_>,
    room_id: &ruma::RoomId,
    events: &[(u64, Value)],
) -> Result<Vec<Value>, Error> {
    let Some(newest) = events.iter().map(|(pos, _)| *pos).max() else {
        return Ok(Vec::new());
    };
    let at = state
        .rooms
        .state(state.rooms.state_at_pos(room_id, newest)?)?;
    let mut out = Vec::new();
    for user in paracord_service::rooms::Rooms::senders_of(events) {
        if let Some(short) = at.get(&("m.room.member".to_owned(), user.to_string())) {
            if let Some((_, ev)) = state.rooms.client_event(*short, Some(r))? {
                out.push(ev);
            }
        }
    }
    Ok(out)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidtimestamp_to_event
pub(crate) async fn get_event_by_timestamp_route(
    State(state): State<AppState>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let r = reader(&req)?;
    state.rooms.check_can_read(&req.body.room_id, r.user)?;
    let dir = match req.body.dir {
        Direction::Forward => Dir::Forward,
        Direction::Backward => Dir::Backward,
    };
    let ts = u64::from(req.body.ts.get());
    let (event_id, ts) = state
        .rooms
        .event_by_timestamp(&req.body.room_id, r, ts, dir)?
        .ok_or_else(|| Error::not_found("no event found in that direction"))?;
    let ts = UInt::try_from(ts).map_err(Error::internal)?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(
        ruma::OwnedEventId::try_from(event_id).map_err(Error::internal)?,
        MilliSecondsSinceUnixEpoch(ts),
    )))
}
