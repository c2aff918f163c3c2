//! Reports of events, rooms and users to the server's admins.

use axum::extract::State;
use paracord_core::Error;
use paracord_service::{ratelimit::Limit, reports::Subject};
use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use super::reader;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidreporteventid
pub(crate) async fn report_content_route(
    State(state): State<AppState>,
    req: Ruma<report_content::v3::Request>,
) -> ApiResult<RumaResponse<report_content::v3::Response>> {
    let r = reader(&req)?;
    state.ratelimit.check(Limit::Report, r.user.as_str())?;
    // Only events the reporter can see may be reported; others are "not found".
    state
        .rooms
        .check_can_read(&req.body.room_id, r.user)
        .map_err(|_| Error::not_found("event not found"))?;
    state
        .rooms
        .visible_event(r, Some(&req.body.room_id), &req.body.event_id)?;
    // ruma's request has no `score` (no longer in the spec); older clients still send it.
    let score = req.raw_field("score").and_then(|s| s.as_i64());
    state.reports.report(
        r.user,
        Subject::Event {
            room_id: req.body.room_id.as_str(),
            event_id: req.body.event_id.as_str(),
        },
        req.body.reason.as_deref(),
        score,
    )?;
    Ok(RumaResponse(report_content::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidreport
pub(crate) async fn report_room_route(
    State(state): State<AppState>,
    req: Ruma<report_room::v3::Request>,
) -> ApiResult<RumaResponse<report_room::v3::Response>> {
    let id = req.user()?;
    state.ratelimit.check(Limit::Report, id.user_id.as_str())?;
    state.rooms.room_or_404(&req.body.room_id)?;
    state.reports.report(
        &id.user_id,
        Subject::Room(req.body.room_id.as_str()),
        Some(&req.body.reason),
        None,
    )?;
    Ok(RumaResponse(report_room::v3::Response::new()))
}

/// `POST /_matrix/client/v3/users/{userId}/report` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3usersuseridreport
pub(crate) async fn report_user_route(
    State(state): State<AppState>,
    req: Ruma<report_user::v3::Request>,
) -> ApiResult<RumaResponse<report_user::v3::Response>> {
    let id = req.user()?;
    state.ratelimit.check(Limit::Report, id.user_id.as_str())?;
    if state.accounts.is_local(&req.body.user_id)
        && state.accounts.account(&req.body.user_id)?.is_none()
    {
        return Err(Error::not_found("no such user").into());
    }
    state.reports.report(
        &id.user_id,
        Subject::User(req.body.user_id.as_str()),
        Some(&req.body.reason),
        None,
    )?;
    Ok(RumaResponse(report_user::v3::Response::new()))
}
