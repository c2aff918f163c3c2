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

use super::{
    json_body, member_guild, user, user_param,
    wire::{
        self, Channel, CreateGuild, CreatedGuildAnswer, EffectivePermissions, Guild, Member, Role,
    },
    Caller,
};
use crate::params::Params;
use crate::{ApiResult, AppState};

/// `POST /_paracord/v1/guilds`
pub(crate) async fn create_guild_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<CreatedGuildAnswer>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts).await?;
    let limit = state.config.max_request_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::too_large(format!("the body is larger than {limit} bytes")))?;
    let new = new_guild(&body)?;
    let profile = state.accounts.profile(&user).unwrap_or((None, None));
    let created = create_guild(&state.rooms, &user, new, profile).await?;
    Ok(Json(created.into()))
}

/// The guild a `POST /_paracord/v1/guilds` body asks for. JSON other than an object asks for
/// nothing: `name` is missing.
pub(crate) fn new_guild(body: &[u8]) -> ApiResult<NewGuild> {
    let body: Value = serde_json::from_slice(body).map_err(|e| Error::not_json(e.to_string()))?;
    let body: CreateGuild = if body.is_object() {
        wire::read(body)?
    } else {
        CreateGuild::default()
    };
    Ok(body.check()?)
}

/// `GET /_paracord/v1/guilds/{guildId}`
pub(crate) async fn get_guild_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Guild>> {
    let id = member_guild(&state, &user, &id)?;
    let guild = store::guild_object(&state.rooms, &id)?;
    Ok(Json(Guild::new(id, guild)))
}

/// `GET /_paracord/v1/guilds/{guildId}/channels`
pub(crate) async fn guild_channels_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Channel>>> {
    let id = member_guild(&state, &user, &id)?;
    let list = channels::list(&state.rooms, &id, &user)?;
    Ok(Json(list.into_iter().map(Channel::from).collect()))
}

/// `GET /_paracord/v1/guilds/{guildId}/roles`
pub(crate) async fn guild_roles_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Role>>> {
    let id = member_guild(&state, &user, &id)?;
    let roles = store::roles(&state.rooms, &id)?;
    Ok(Json(roles.into_iter().map(Role::from).collect()))
}

/// `POST /_paracord/v1/guilds/{guildId}/roles`
pub(crate) async fn create_role_route(
    State(state): State<AppState>,
    Params(id): Params<String>,
    req: Request,
) -> ApiResult<Json<Role>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts).await?;
    let id = member_guild(&state, &user, &id)?;
    let body: wire::CreateRole = wire::read(json_body(&state, body).await?)?;
    let role = body.check()?;
    Ok(Json(
        store::create_role(&state.rooms, &id, &user, role)
            .await?
            .into(),
    ))
}

async fn member_role(
    state: AppState,
    (id, target, role): (String, String, String),
    req: Request,
    add: bool,
) -> ApiResult<Json<Member>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts).await?;
    let id = member_guild(&state, &user, &id)?;
    let target = user_param(&target)?;
    store::set_member_role(&state.rooms, &id, &user, &target, &role, add).await?;
    // The full Member object (spec/rest.md §4); roles may be given to an invited user too.
    Ok(Json(
        paracord_service::guilds::members::member(&state.rooms, &id, &target, true)?.into(),
    ))
}

/// `PUT /_paracord/v1/guilds/{guildId}/members/{userId}/roles/{roleId}`
pub(crate) async fn add_member_role_route(
    State(state): State<AppState>,
    Params(p): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<Json<Member>> {
    member_role(state, p, req, true).await
}

/// `DELETE /_paracord/v1/guilds/{guildId}/members/{userId}/roles/{roleId}`
pub(crate) async fn remove_member_role_route(
    State(state): State<AppState>,
    Params(p): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<Json<Member>> {
    member_role(state, p, req, false).await
}

/// `GET /_paracord/v1/channels/{channelId}/permissions/{userId}`
pub(crate) async fn channel_permissions_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((channel, target)): Params<(String, String)>,
) -> ApiResult<Json<EffectivePermissions>> {
    let channel =
        ruma::OwnedRoomId::try_from(channel).map_err(|_| Error::not_found("no such channel"))?;
    if state.rooms.room(&channel)?.is_none() {
        return Err(Error::not_found("no such channel").into());
    }
    let target = user_param(&target)?;
    let permissions = store::effective_permissions(&state.rooms, &channel, &user, &target)?;
    Ok(Json(EffectivePermissions {
        permissions: permissions.to_wire(),
    }))
}
