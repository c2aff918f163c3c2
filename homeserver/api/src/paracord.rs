//! The Paracord REST extension under `/_paracord/v1` (spec/rest.md). So far: creating a guild
//! and reading a guild, its channels and its roles; the rest of the resources answer
//! `M_UNRECOGNIZED` through the router's fallback.

use axum::{
    extract::{Path, Request, State},
    Json,
};
use paracord_core::Error;
use paracord_service::guilds::store::{self, NewGuild};
use serde_json::Value;

use crate::{ruma_wrapper::access_token, ApiResult, AppState};

fn user(state: &AppState, parts: &http::request::Parts) -> ApiResult<ruma::OwnedUserId> {
    let token = access_token(parts).ok_or_else(Error::missing_token)?;
    Ok(state.accounts.authenticate(&token)?.user_id)
}

fn guild_id(id: &str) -> ApiResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(id).map_err(|_| Error::not_found("no such guild").into())
}

/// A guild the user is in (joined to its space); anything else is 404, as if it did not exist.
fn member_guild(state: &AppState, user: &ruma::UserId, id: &str) -> ApiResult<ruma::OwnedRoomId> {
    let id = guild_id(id)?;
    if state.rooms.room(&id)?.is_none() || !state.rooms.is_joined(&id, user)? {
        return Err(Error::not_found("no such guild").into());
    }
    Ok(id)
}

/// `POST /_paracord/v1/guilds`
pub(crate) async fn create_guild_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let limit = state.config.max_request_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::too_large(format!("the body is larger than {limit} bytes")))?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| Error::not_json(e.to_string()))?;
    let text = |k: &str| -> ApiResult<Option<String>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::bad_json(format!("{k} must be a string")).into()),
        }
    };
    let new = NewGuild {
        name: text("name")?.ok_or_else(|| Error::missing_param("name is required"))?,
        description: text("description")?,
        icon: text("icon")?,
    };
    let profile = state.accounts.profile(&user).unwrap_or((None, None));
    Ok(Json(
        store::create_guild(&state.rooms, &user, new, profile).await?,
    ))
}

/// `GET /_paracord/v1/guilds/{guildId}`
pub(crate) async fn get_guild_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(store::guild_object(&state.rooms, &id)?))
}

/// `GET /_paracord/v1/guilds/{guildId}/channels`
pub(crate) async fn guild_channels_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Vec<Value>>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(store::channels(&state.rooms, &id, &user)?))
}

/// `GET /_paracord/v1/guilds/{guildId}/roles`
pub(crate) async fn guild_roles_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Vec<Value>>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(store::roles(&state.rooms, &id)?))
}
