//! Room state.

use axum::extract::State;
use paracord_core::Error;
use paracord_service::rooms::{membership::membership_of, NewEvent};
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::events::room::member::MembershipState;

use super::{
    message::{json_of, raw},
    reader,
};
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// The state a reader sees: current state if joined, the state at their leave otherwise.
fn visible_snapshot(
    state: &AppState,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
) -> Result<u64, crate::ApiError> {
    state.rooms.check_can_read(room_id, user)?;
    Ok(match state.rooms.user_room(user, room_id)? {
        Some(rec) if rec.membership != MembershipState::Join => {
            state.rooms.state_at_pos(room_id, rec.pos)?
        }
        _ => state.rooms.room_or_404(room_id)?.state,
    })
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidstate
pub(crate) async fn get_state_events_route(
    State(state): State<AppState>,
    req: Ruma<get_state_events::v3::Request>,
) -> ApiResult<RumaResponse<get_state_events::v3::Response>> {
    let r = reader(&req)?;
    let snap = visible_snapshot(&state, &req.body.room_id, r.user)?;
    let map = state.rooms.state(snap)?;
    let events = state
        .rooms
        .state_events(&map, Some(r))?
        .iter()
        .map(raw)
        .collect::<Result<_, _>>()?;
    Ok(RumaResponse(get_state_events::v3::Response::new(events)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidstateeventtypestatekey
pub(crate) async fn get_state_event_for_key_route(
    State(state): State<AppState>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<RumaResponse<get_state_event_for_key::v3::Response>> {
    let r = reader(&req)?;
    let snap = visible_snapshot(&state, &req.body.room_id, r.user)?;
    let map = state.rooms.state(snap)?;
    let key = (req.body.event_type.to_string(), req.body.state_key.clone());
    let short = map
        .get(&key)
        .ok_or_else(|| Error::not_found("state event not found"))?;
    let (_, ev) = state
        .rooms
        .client_event(*short, Some(r))?
        .ok_or_else(|| Error::not_found("state event not found"))?;
    // `?format=event`: the whole event, as clients see events elsewhere; otherwise its
    // content (any JSON object, as the spec has it).
    let body = if matches!(
        req.body.format,
        get_state_event_for_key::v3::StateEventFormat::Event
    ) {
        serde_json::value::to_raw_value(&ev)
    } else {
        serde_json::value::to_raw_value(&ev["content"])
    }
    .map_err(Error::from)?;
    Ok(RumaResponse(get_state_event_for_key::v3::Response::new(
        body,
    )))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidstateeventtypestatekey
pub(crate) async fn send_state_event_route(
    State(state): State<AppState>,
    req: Ruma<send_state_event::v3::Request>,
) -> ApiResult<RumaResponse<send_state_event::v3::Response>> {
    let id = req.user()?;
    // An empty body reaches ruma as `{}`: only the raw body tells it apart.
    if req.body_is_empty() {
        return Err(Error::bad_json("state content must be a JSON object").into());
    }
    let content = Some(json_of(&req.body.body)?)
        .filter(|c| c.is_object())
        .ok_or_else(|| Error::bad_json("state content must be a JSON object"))?;
    let kind = req.body.event_type.to_string();
    if kind == "m.room.member" {
        // Membership goes through the membership endpoints' checks too.
        if membership_of(&content).is_none() {
            return Err(Error::bad_json("m.room.member needs a membership").into());
        }
    }
    state
        .rooms
        .check_state_submission(&req.body.room_id, &id.user_id, &kind, &content)?;
    state.ratelimit.check(
        paracord_service::ratelimit::Limit::Send,
        id.user_id.as_str(),
    )?;
    let event_id = state
        .rooms
        .send_state(
            &req.body.room_id,
            &id.user_id,
            NewEvent {
                ts: req.ts,
                ..NewEvent::state(kind.as_str().into(), &req.body.state_key, content)
            },
        )
        .await?;
    Ok(RumaResponse(send_state_event::v3::Response::new(event_id)))
}
