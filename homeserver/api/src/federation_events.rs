//! Server-Server API reads of a room this server is resident in: single events, the state and
//! auth chain at an event, missing events and backfill. Every request is `X-Matrix` signed (the
//! [`Ruma`] extractor verifies it and names the origin); who may read what, and the server ACL
//! check each of these makes, live in `paracord_service::rooms::federation_read`.

use axum::extract::State;
use paracord_core::{Error, ErrorKind};
use ruma::{
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    },
    MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName,
};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// The server that signed the request (always set for `X-Matrix` endpoints).
fn origin<T>(req: &Ruma<T>) -> ApiResult<&ServerName> {
    req.origin.as_deref().ok_or_else(|| {
        Error::new(
            http::StatusCode::UNAUTHORIZED,
            ErrorKind::Unauthorized,
            "this endpoint needs an X-Matrix signature",
        )
        .into()
    })
}

fn own_name(state: &AppState) -> ApiResult<OwnedServerName> {
    ServerName::parse(&state.config.server_name)
        .map_err(|e| Error::internal(format!("own server name: {e}")).into())
}

/// A limit sent by another server, as a `usize` (the walks cap it further).
fn limit(n: ruma::UInt) -> usize {
    usize::try_from(u64::from(n)).unwrap_or(usize::MAX)
}

/// `GET /_matrix/federation/v1/event/{eventId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1eventeventid
///
/// The event as the asking server may see it: in full if history visibility lets it, redacted
/// if it is in the room but may not see this event, 403 if neither (or the event's room's ACL
/// denies it), 404 if unknown.
pub(crate) async fn get_event_route(
    State(state): State<AppState>,
    req: Ruma<get_event::v1::Request>,
) -> ApiResult<RumaResponse<get_event::v1::Response>> {
    let pdu = state
        .rooms
        .event_for_server(origin(&req)?, &req.body.event_id)?;
    Ok(RumaResponse(get_event::v1::Response::new(
        own_name(&state)?,
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    )))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1state_idsroomid
///
/// The state before `event_id` (not including the event's own change, as the spec says) and
/// its full auth chain, as event ids. 403 when the asking server may not see the event (it
/// is not in the room and history visibility does not let it) or the ACL denies it.
pub(crate) async fn get_room_state_ids_route(
    State(state): State<AppState>,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> ApiResult<RumaResponse<get_room_state_ids::v1::Response>> {
    let (pdu_ids, auth_chain_ids) =
        state
            .rooms
            .state_ids_for_server(origin(&req)?, &req.body.room_id, &req.body.event_id)?;
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(
        auth_chain_ids,
        pdu_ids,
    )))
}

/// `GET /_matrix/federation/v1/state/{roomId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1stateroomid
///
/// What `/state_ids` answers, as full PDUs; the same access rule.
pub(crate) async fn get_room_state_route(
    State(state): State<AppState>,
    req: Ruma<get_room_state::v1::Request>,
) -> ApiResult<RumaResponse<get_room_state::v1::Response>> {
    let (pdus, auth_chain) =
        state
            .rooms
            .state_for_server(origin(&req)?, &req.body.room_id, &req.body.event_id)?;
    Ok(RumaResponse(get_room_state::v1::Response::new(
        auth_chain, pdus,
    )))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1event_authroomideventid
///
/// The event's full auth chain, oldest first; the same access rule as `/state`.
pub(crate) async fn get_event_authorization_route(
    State(state): State<AppState>,
    req: Ruma<get_event_authorization::v1::Request>,
) -> ApiResult<RumaResponse<get_event_authorization::v1::Response>> {
    let chain =
        state
            .rooms
            .event_auth_for_server(origin(&req)?, &req.body.room_id, &req.body.event_id)?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(
        chain,
    )))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1get_missing_eventsroomid
///
/// A breadth-first walk of the `prev_events` of `latest_events`, skipping `earliest_events`,
/// at most `limit` (default 10, capped at 100) events of at least `min_depth`, oldest first.
/// Every known event of `latest_events` must be visible to the asking server (403 otherwise);
/// walked events it may not see in full are left out.
pub(crate) async fn get_missing_events_route(
    State(state): State<AppState>,
    req: Ruma<get_missing_events::v1::Request>,
) -> ApiResult<RumaResponse<get_missing_events::v1::Response>> {
    let events = state.rooms.missing_events_for_server(
        origin(&req)?,
        &req.body.room_id,
        &req.body.earliest_events,
        &req.body.latest_events,
        limit(req.body.limit),
        u64::from(req.body.min_depth),
    )?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events)))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1backfillroomid
///
/// The `v` events and those before them through `prev_events`, newest first, at most `limit`
/// (capped at 100). Every known `v` event must be visible to the asking server (403
/// otherwise; 404 if none is known); walked events it may not see in full go out redacted.
pub(crate) async fn get_backfill_route(
    State(state): State<AppState>,
    req: Ruma<get_backfill::v1::Request>,
) -> ApiResult<RumaResponse<get_backfill::v1::Response>> {
    let pdus = state.rooms.backfill_for_server(
        origin(&req)?,
        &req.body.room_id,
        &req.body.v,
        limit(req.body.limit),
    )?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        own_name(&state)?,
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    )))
}
