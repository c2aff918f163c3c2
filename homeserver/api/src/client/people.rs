//! Discovery and people: tags, the user directory, reports, jumping to a date and OpenID.

use axum::{
    extract::{Query, State},
    Json,
};
use paracord_core::Error;
use paracord_service::{reports::Subject, rooms::timeline::Dir};
use ruma::api::{
    client::{
        account::request_openid_token,
        reporting::report_user,
        room::{get_event_by_timestamp, report_content, report_room},
        tag::{create_tag, delete_tag, get_tags},
        user_directory::search_users,
    },
    Direction,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::reader;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState};
use paracord_service::ratelimit::Limit;

fn own<T>(req: &Ruma<T>, user: &ruma::UserId) -> Result<(), Error> {
    match &req.ident {
        Some(id) if id.user_id == user => Ok(()),
        _ => Err(Error::forbidden("you may only access your own tags")),
    }
}

fn tags_of(
    state: &AppState,
    user: &ruma::UserId,
    room: &ruma::RoomId,
) -> Result<serde_json::Map<String, Value>, Error> {
    Ok(state
        .account_data
        .get(user, Some(room), "m.tag")?
        .and_then(|c| c.get("tags").and_then(|t| t.as_object()).cloned())
        .unwrap_or_default())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridroomsroomidtags
pub(crate) async fn get_tags_route(
    State(state): State<AppState>,
    req: Ruma<get_tags::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    Ok(Json(
        json!({ "tags": tags_of(&state, &req.body.user_id, &req.body.room_id)? }),
    ))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridroomsroomidtagstag
pub(crate) async fn create_tag_route(
    State(state): State<AppState>,
    req: Ruma<create_tag::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    if req.body.tag.is_empty() || req.body.tag.len() > 255 {
        return Err(Error::invalid_param("tag must be 1 to 255 bytes").into());
    }
    state.rooms.room_or_404(&req.body.room_id)?;
    let info = req
        .json
        .clone()
        .filter(|j| j.is_object())
        .unwrap_or_else(|| json!({}));
    if info.get("order").is_some_and(|o| !o.is_number()) {
        return Err(Error::bad_json("order must be a number").into());
    }
    let mut tags = tags_of(&state, &req.body.user_id, &req.body.room_id)?;
    tags.insert(req.body.tag.clone(), info);
    state.account_data.set(
        &req.body.user_id,
        Some(&req.body.room_id),
        "m.tag",
        json!({ "tags": tags }),
    )?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3useruseridroomsroomidtagstag
pub(crate) async fn delete_tag_route(
    State(state): State<AppState>,
    req: Ruma<delete_tag::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    let mut tags = tags_of(&state, &req.body.user_id, &req.body.room_id)?;
    if tags.remove(&req.body.tag).is_some() {
        state.account_data.set(
            &req.body.user_id,
            Some(&req.body.room_id),
            "m.tag",
            json!({ "tags": tags }),
        )?;
    }
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/user_directory/search` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3user_directorysearch
pub(crate) async fn search_users_route(
    State(state): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(10)
        .clamp(1, 100);
    let (users, limited) = state
        .rooms
        .search_users(&id.user_id, &req.body.search_term, limit)?;
    let mut results: Vec<Value> = users
        .into_iter()
        .map(|u| json!({ "user_id": u.user_id, "display_name": u.display_name, "avatar_url": u.avatar_url }))
        .collect();
    // A search for the exact id of a user of this server finds them, rooms shared or not
    // (someone who knows the id already knows they exist).
    if let Ok(exact) = ruma::OwnedUserId::try_from(req.body.search_term.trim()) {
        let known = state.accounts.is_local(&exact)
            && state
                .accounts
                .account(&exact)?
                .is_some_and(|a| !a.deactivated);
        if known && exact != id.user_id && !results.iter().any(|r| r["user_id"] == exact.as_str()) {
            let (display_name, avatar_url) = state.accounts.profile(&exact)?;
            results.insert(
                0,
                json!({ "user_id": exact, "display_name": display_name, "avatar_url": avatar_url }),
            );
            results.truncate(limit);
        }
    }
    Ok(Json(json!({ "results": results, "limited": limited })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidreporteventid
pub(crate) async fn report_content_route(
    State(state): State<AppState>,
    req: Ruma<report_content::v3::Request>,
) -> ApiResult<Json<Value>> {
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
    let score = req.json.as_ref().and_then(|j| j["score"].as_i64());
    state.reports.report(
        r.user,
        Subject::Event {
            room_id: req.body.room_id.as_str(),
            event_id: req.body.event_id.as_str(),
        },
        req.body.reason.as_deref(),
        score,
    )?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidreport
pub(crate) async fn report_room_route(
    State(state): State<AppState>,
    req: Ruma<report_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    state.ratelimit.check(Limit::Report, id.user_id.as_str())?;
    state.rooms.room_or_404(&req.body.room_id)?;
    state.reports.report(
        &id.user_id,
        Subject::Room(req.body.room_id.as_str()),
        Some(&req.body.reason),
        None,
    )?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/users/{userId}/report` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3usersuseridreport
pub(crate) async fn report_user_route(
    State(state): State<AppState>,
    req: Ruma<report_user::v3::Request>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidtimestamp_to_event
pub(crate) async fn get_event_by_timestamp_route(
    State(state): State<AppState>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(
        json!({ "event_id": event_id, "origin_server_ts": ts }),
    ))
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3useruseridopenidrequest_token
pub(crate) async fn request_openid_token_route(
    State(state): State<AppState>,
    req: Ruma<request_openid_token::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only request tokens for yourself").into());
    }
    let (token, expires_in) = state.accounts.request_openid_token(&id.user_id)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": state.config.server_name,
        "expires_in": expires_in,
    })))
}

#[derive(Deserialize)]
pub(crate) struct UserinfoQuery {
    access_token: Option<String>,
}

/// `GET /_matrix/federation/v1/openid/userinfo` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1openiduserinfo
///
/// Third parties (integration managers, widgets) check an OpenID token here; it needs no
/// server signature.
pub(crate) async fn openid_userinfo_route(
    State(state): State<AppState>,
    Query(q): Query<UserinfoQuery>,
) -> ApiResult<Json<Value>> {
    let token = q.access_token.ok_or_else(Error::missing_token)?;
    let user = state
        .accounts
        .openid_user(&token)?
        .ok_or_else(|| Error::unknown_token(false))?;
    Ok(Json(json!({ "sub": user })))
}
