//! Guilds, roles, member roles and effective permissions (spec/rest.md §5, §7, §8, §10).

use axum::{
    extract::{Request, State},
    Json,
};
use paracord_core::Error;
use paracord_service::guilds::{
    channels,
    create::{create_guild, NewGuild},
    store,
};
use serde_json::Value;

use super::{json_body, member_guild, user, user_param, Caller};
use crate::params::Params;
use crate::{ApiResult, AppState};

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
    let new = new_guild(&body)?;
    let profile = state.accounts.profile(&user).unwrap_or((None, None));
    Ok(Json(create_guild(&state.rooms, &user, new, profile).await?))
}

/// The guild a `POST /_paracord/v1/guilds` body asks for.
pub(crate) fn new_guild(body: &[u8]) -> ApiResult<NewGuild> {
    let body: Value = serde_json::from_slice(body).map_err(|e| Error::not_json(e.to_string()))?;
    let text = |k: &str| -> ApiResult<Option<String>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::bad_json(format!("{k} must be a string")).into()),
        }
    };
    Ok(NewGuild {
        name: text("name")?.ok_or_else(|| Error::missing_param("name is required"))?,
        description: text("description")?,
        icon: text("icon")?,
    })
}

/// `GET /_paracord/v1/guilds/{guildId}`
pub(crate) async fn get_guild_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Value>> {
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(store::guild_object(&state.rooms, &id)?))
}

/// `GET /_paracord/v1/guilds/{guildId}/channels`
pub(crate) async fn guild_channels_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(channels::list(&state.rooms, &id, &user)?))
}

/// `GET /_paracord/v1/guilds/{guildId}/roles`
pub(crate) async fn guild_roles_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(store::roles(&state.rooms, &id)?))
}

/// `POST /_paracord/v1/guilds/{guildId}/roles`
pub(crate) async fn create_role_route(
    State(state): State<AppState>,
    Params(id): Params<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let body = json_body(&state, body).await?;
    Ok(Json(
        store::create_role(&state.rooms, &id, &user, &body).await?,
    ))
}

async fn member_role(
    state: AppState,
    (id, target, role): (String, String, String),
    req: Request,
    add: bool,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let target = user_param(&target)?;
    store::set_member_role(&state.rooms, &id, &user, &target, &role, add).await?;
    channels::sync_all_access(&state.rooms, &state.pdus, &id).await?;
    // The full Member object (spec/rest.md §4); roles may be given to an invited user too.
    Ok(Json(paracord_service::guilds::members::member(
        &state.rooms,
        &id,
        &target,
        true,
    )?))
}

/// `PUT /_paracord/v1/guilds/{guildId}/members/{userId}/roles/{roleId}`
pub(crate) async fn add_member_role_route(
    State(state): State<AppState>,
    Params(p): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    member_role(state, p, req, true).await
}

/// `DELETE /_paracord/v1/guilds/{guildId}/members/{userId}/roles/{roleId}`
pub(crate) async fn remove_member_role_route(
    State(state): State<AppState>,
    Params(p): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    member_role(state, p, req, false).await
}

/// `GET /_paracord/v1/channels/{channelId}/permissions/{userId}`
pub(crate) async fn channel_permissions_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((channel, target)): Params<(String, String)>,
) -> ApiResult<Json<Value>> {
    let channel =
        ruma::OwnedRoomId::try_from(channel).map_err(|_| Error::not_found("no such channel"))?;
    if state.rooms.room(&channel)?.is_none() {
        return Err(Error::not_found("no such channel").into());
    }
    let target = user_param(&target)?;
    Ok(Json(store::effective_permissions(
        &state.rooms,
        &channel,
        &user,
        &target,
    )?))
}
