//! Room aliases and the public room directory.

use axum::{extract::State, Json};
use paracord_core::Error;
use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    directory::{
        get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
    },
    room::Visibility,
};
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3directoryroomroomalias
pub(crate) async fn create_alias_route(
    State(state): State<AppState>,
    req: Ruma<create_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    if !state.rooms.is_joined(&req.body.room_id, &id.user_id)? && !id.admin {
        state.rooms.room_or_404(&req.body.room_id)?;
        return Err(Error::forbidden("you are not in this room").into());
    }
    state
        .rooms
        .set_alias(&req.body.room_alias, &req.body.room_id, &id.user_id)?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3directoryroomroomalias
pub(crate) async fn delete_alias_route(
    State(state): State<AppState>,
    req: Ruma<delete_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let room_id = state
        .rooms
        .delete_alias(&req.body.room_alias, &id.user_id, id.admin)?;
    state
        .rooms
        .forget_canonical_alias(&room_id, &req.body.room_alias, &id.user_id)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3directoryroomroomalias
pub(crate) async fn get_alias_route(
    State(state): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    let alias = &req.body.room_alias;
    if alias.server_name().as_str() != state.config.server_name {
        // Another server's alias: ask that server.
        let server = alias.server_name();
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            crate::percent_encode(alias.as_str())
        );
        let body = crate::federation::ask(&state, server, http::Method::GET, &path, None).await?;
        if !body["room_id"].is_string() {
            return Err(Error::not_found(format!("{server} gave no room for the alias")).into());
        }
        return Ok(Json(
            json!({ "room_id": body["room_id"], "servers": body["servers"] }),
        ));
    }
    let room_id = state
        .rooms
        .resolve_alias(&req.body.room_alias)?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    Ok(Json(
        json!({ "room_id": room_id, "servers": [state.config.server_name] }),
    ))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3directorylistroomroomid
pub(crate) async fn get_room_visibility_route(
    State(state): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<Json<Value>> {
    state.rooms.room_or_404(&req.body.room_id)?;
    let v = if state.rooms.is_published(&req.body.room_id)? {
        "public"
    } else {
        "private"
    };
    Ok(Json(json!({ "visibility": v })))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3directorylistroomroomid
pub(crate) async fn set_room_visibility_route(
    State(state): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let room = state.rooms.room_or_404(&req.body.room_id)?;
    let map = state.rooms.state(room.state)?;
    let level = state.rooms.power_level(&room.version, &map, &id.user_id)?;
    let needed = state.rooms.required_level(&map, "state_default", 50)?;
    if !id.admin && (!state.rooms.is_joined(&req.body.room_id, &id.user_id)? || level < needed) {
        return Err(Error::forbidden("you may not change this room's visibility").into());
    }
    state
        .rooms
        .set_published(&req.body.room_id, req.body.visibility == Visibility::Public)?;
    Ok(Json(json!({})))
}

pub(crate) fn page(
    all: Vec<Value>,
    since: Option<&str>,
    limit: Option<u64>,
) -> Result<Value, Error> {
    let total = all.len();
    let start = match since {
        Some(s) => paracord_service::sync::parse_offset_token::<usize>('p', s)
            .ok_or_else(|| Error::invalid_param("invalid since token"))?,
        None => 0,
    };
    let limit = limit
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
        .max(1);
    let end = start.saturating_add(limit).min(total);
    let chunk: Vec<Value> = all
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if end < total {
        body["next_batch"] = json!(format!("p{end}"));
    }
    if start > 0 {
        body["prev_batch"] = json!(format!("p{}", start.saturating_sub(limit)));
    }
    Ok(body)
}

/// `GET /_matrix/client/v3/publicRooms` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3publicrooms
pub(crate) async fn get_public_rooms_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<Json<Value>> {
    if let Some(server) = req
        .body
        .server
        .as_ref()
        .filter(|s| s.as_str() != state.config.server_name)
    {
        let mut path = "/_matrix/federation/v1/publicRooms".to_owned();
        let mut query = Vec::new();
        if let Some(l) = req.body.limit {
            query.push(format!("limit={l}"));
        }
        if let Some(s) = &req.body.since {
            query.push(format!("since={}", crate::percent_encode(s)));
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        return Ok(Json(
            crate::federation::ask(&state, server, http::Method::GET, &path, None).await?,
        ));
    }
    let all = state.rooms.public_rooms(None)?;
    Ok(Json(page(
        all,
        req.body.since.as_deref(),
        req.body.limit.map(u64::from),
    )?))
}

/// `POST /_matrix/client/v3/publicRooms` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3publicrooms
pub(crate) async fn get_public_rooms_filtered_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<Json<Value>> {
    if let Some(server) = req
        .body
        .server
        .as_ref()
        .filter(|s| s.as_str() != state.config.server_name)
    {
        let mut body = json!({ "filter": req.body.filter });
        if let Some(l) = req.body.limit {
            body["limit"] = json!(l);
        }
        if let Some(s) = &req.body.since {
            body["since"] = json!(s);
        }
        return Ok(Json(
            crate::federation::ask(
                &state,
                server,
                http::Method::POST,
                "/_matrix/federation/v1/publicRooms",
                Some(&body),
            )
            .await?,
        ));
    }
    let term = req.body.filter.generic_search_term.as_deref();
    let all = state.rooms.public_rooms(term)?;
    Ok(Json(page(
        all,
        req.body.since.as_deref(),
        req.body.limit.map(u64::from),
    )?))
}
