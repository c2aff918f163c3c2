//! Polls of channels (spec/polls.md §4).

use axum::{extract::State, routing::get, Json, Router};
use paracord_core::Error;
use paracord_service::guilds::polls::{channel_poll, PollView};

use super::Caller;
use crate::params::Params;
use crate::{ApiResult, AppState};

/// Routes of this module.
pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/_paracord/v1/channels/{channel_id}/polls/{event_id}",
        get(get_poll_route),
    )
}

/// `GET /_paracord/v1/channels/{channelId}/polls/{eventId}` — spec/polls.md §4: the poll and
/// its tally; ids that name nothing the requester may see are `404`.
pub(crate) async fn get_poll_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((channel, event)): Params<(String, String)>,
) -> ApiResult<Json<PollView>> {
    let channel =
        ruma::OwnedRoomId::try_from(channel).map_err(|_| Error::not_found("no such channel"))?;
    let event =
        ruma::OwnedEventId::try_from(event).map_err(|_| Error::not_found("no such poll"))?;
    Ok(Json(channel_poll(&state.rooms, &channel, &user, &event)?))
}
