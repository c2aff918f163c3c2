//! Pins of channels (spec/rest.md §6, spec/guilds.md §11).

use axum::{extract::State, routing::get, Json, Router};
use paracord_core::Error;
use paracord_service::guilds::pins::{event_param, list_pins, pin, unpin};
use serde_json::Value;

use super::{wire::Empty, Caller};
use crate::params::Params;
use crate::{ApiResult, AppState};

/// Routes of this module.
pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/_paracord/v1/channels/{channel_id}/pins",
        get(list_pins_route),
    )
    .route(
        "/_paracord/v1/channels/{channel_id}/pins/{event_id}",
        axum::routing::put(pin_route).delete(unpin_route),
    )
}

fn channel(id: String) -> ApiResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(id).map_err(|_| Error::not_found("no such channel").into())
}

/// `GET /_paracord/v1/channels/{channelId}/pins` — the pinned events the requester may see,
/// newest pin first.
pub(crate) async fn list_pins_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let id = channel(id)?;
    Ok(Json(list_pins(&state.rooms, &id, &user)?))
}

/// `PUT /_paracord/v1/channels/{channelId}/pins/{eventId}` — pins the event (MANAGE_MESSAGES).
pub(crate) async fn pin_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, event)): Params<(String, String)>,
) -> ApiResult<Json<Empty>> {
    let id = channel(id)?;
    let event = event_param(&event)?;
    pin(&state.rooms, &id, &user, &event).await?;
    Ok(Json(Empty {}))
}

/// `DELETE /_paracord/v1/channels/{channelId}/pins/{eventId}` — unpins the event
/// (MANAGE_MESSAGES).
pub(crate) async fn unpin_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, event)): Params<(String, String)>,
) -> ApiResult<Json<Empty>> {
    let id = channel(id)?;
    let event = event_param(&event)?;
    unpin(&state.rooms, &id, &user, &event).await?;
    Ok(Json(Empty {}))
}
