//! Roles (modify, reorder, delete), members, bans and invites (spec/rest.md §7, §8, §9, §11).

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, Request, State},
    routing::{get, patch, post, put},
    Json, Router,
};
use paracord_core::Error;
use paracord_service::guilds::members;
use serde_json::{json, Value};

use super::{json_array, json_body, member_guild, user};
use crate::{client::membership::join, ApiResult, AppState};

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/_paracord/v1/guilds/{guild_id}/roles",
        patch(reorder_roles_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/roles/{role_id}",
        patch(modify_role_route).delete(delete_role_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/members",
        get(list_members_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/members/{user_id}",
        get(get_member_route)
            .patch(modify_member_route)
            .delete(remove_member_route),
    )
    .route("/_paracord/v1/guilds/{guild_id}/bans", get(bans_route))
    .route(
        "/_paracord/v1/guilds/{guild_id}/bans/{user_id}",
        put(ban_route).delete(unban_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/invites",
        get(guild_invites_route),
    )
    .route(
        "/_paracord/v1/channels/{channel_id}/invites",
        post(create_invite_route),
    )
    .route(
        "/_paracord/v1/invites/{code}",
        get(get_invite_route)
            .post(accept_invite_route)
            .delete(revoke_invite_route),
    )
}

/// The query string's parameters; a malformed one is an invalid parameter.
fn query(parts: &http::request::Parts) -> ApiResult<HashMap<String, String>> {
    Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .map_err(|_| Error::invalid_param("the query string is malformed").into())
}

/// A user named in the path who must be a member (or banned): anything else is unknown.
fn known_user(id: &str) -> ApiResult<ruma::OwnedUserId> {
    ruma::OwnedUserId::try_from(id).map_err(|_| Error::not_found("no such member").into())
}

/// `PATCH /_paracord/v1/guilds/{guildId}/roles`
pub(crate) async fn reorder_roles_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Vec<Value>>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let items = json_array(&state, body).await?;
    Ok(Json(
        members::reorder_roles(&state.rooms, &id, &user, &items).await?,
    ))
}

/// `PATCH /_paracord/v1/guilds/{guildId}/roles/{roleId}`
pub(crate) async fn modify_role_route(
    State(state): State<AppState>,
    Path((id, role)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let body = json_body(&state, body).await?;
    Ok(Json(
        members::modify_role(&state.rooms, &id, &user, &role, &body).await?,
    ))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/roles/{roleId}`
pub(crate) async fn delete_role_route(
    State(state): State<AppState>,
    Path((id, role)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    members::delete_role(&state.rooms, &id, &user, &role).await?;
    Ok(Json(json!({})))
}

/// `GET /_paracord/v1/guilds/{guildId}/members?limit=&after=`
pub(crate) async fn list_members_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Vec<Value>>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let q = query(&parts)?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| Error::invalid_param("limit is 1 to 1000"))?,
    };
    Ok(Json(members::members(
        &state.rooms,
        &id,
        limit,
        q.get("after").map(String::as_str),
    )?))
}

/// `GET /_paracord/v1/guilds/{guildId}/members/{userId}`
pub(crate) async fn get_member_route(
    State(state): State<AppState>,
    Path((id, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    Ok(Json(members::member(&state.rooms, &id, &target, false)?))
}

/// `PATCH /_paracord/v1/guilds/{guildId}/members/{userId}`
pub(crate) async fn modify_member_route(
    State(state): State<AppState>,
    Path((id, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    let body = json_body(&state, body).await?;
    Ok(Json(
        members::modify_member(&state.rooms, &id, &user, &target, &body).await?,
    ))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/members/{userId}?reason=`
pub(crate) async fn remove_member_route(
    State(state): State<AppState>,
    Path((id, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    let q = query(&parts)?;
    members::remove_member(
        &state.rooms,
        &id,
        &user,
        &target,
        q.get("reason").map(String::as_str),
    )
    .await?;
    Ok(Json(json!({})))
}

/// `GET /_paracord/v1/guilds/{guildId}/bans`
pub(crate) async fn bans_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Vec<Value>>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(members::bans(&state.rooms, &id, &user)?))
}

/// `PUT /_paracord/v1/guilds/{guildId}/bans/{userId}`
pub(crate) async fn ban_route(
    State(state): State<AppState>,
    Path((id, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let target =
        ruma::OwnedUserId::try_from(target).map_err(|_| Error::invalid_param("not a user id"))?;
    let body = json_body(&state, body).await?;
    Ok(Json(
        members::ban(&state.rooms, &id, &user, &target, &body).await?,
    ))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/bans/{userId}`
pub(crate) async fn unban_route(
    State(state): State<AppState>,
    Path((id, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    members::unban(&state.rooms, &id, &user, &target).await?;
    Ok(Json(json!({})))
}

/// `GET /_paracord/v1/guilds/{guildId}/invites`
pub(crate) async fn guild_invites_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Vec<Value>>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    let id = member_guild(&state, &user, &id)?;
    Ok(Json(members::guild_invites(&state.rooms, &id, &user)?))
}

/// `POST /_paracord/v1/channels/{channelId}/invites`
pub(crate) async fn create_invite_route(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    let channel =
        ruma::OwnedRoomId::try_from(channel).map_err(|_| Error::not_found("no such channel"))?;
    let body = json_body(&state, body).await?;
    Ok(Json(
        members::create_invite(&state.rooms, &channel, &user, &body).await?,
    ))
}

/// `GET /_paracord/v1/invites/{code}?server=` (codes of guilds hosted elsewhere are not
/// relayed yet: they are unknown here)
pub(crate) async fn get_invite_route(
    State(state): State<AppState>,
    Path(code): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    user(&state, &parts)?;
    Ok(Json(members::invite(&state.rooms, &code)?))
}

/// `POST /_paracord/v1/invites/{code}?server=`: the guild host's checks and invites, then
/// the user's own joins through the ordinary Matrix join, with the guild host as `via`.
pub(crate) async fn accept_invite_route(
    State(state): State<AppState>,
    Path(code): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts)?;
    json_body(&state, body).await?;
    let accepted = members::accept_invite(&state.rooms, &code, &user).await?;
    let via = [accepted.via.clone()];
    if !state.rooms.is_joined(&accepted.guild_id, &user)? {
        join(&state, &user, &accepted.guild_id, &via, None).await?;
    }
    if accepted.join_channel && !state.rooms.is_joined(&accepted.channel_id, &user)? {
        join(&state, &user, &accepted.channel_id, &via, None).await?;
    }
    Ok(Json(json!({
        "guild_id": accepted.guild_id,
        "channel_id": accepted.channel_id,
    })))
}

/// `DELETE /_paracord/v1/invites/{code}`
pub(crate) async fn revoke_invite_route(
    State(state): State<AppState>,
    Path(code): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts)?;
    Ok(Json(
        members::revoke_invite(&state.rooms, &code, &user).await?,
    ))
}
