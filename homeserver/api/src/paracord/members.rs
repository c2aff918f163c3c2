//! Roles (modify, reorder, delete), members, bans and invites (spec/rest.md §7, §8, §9, §11).

use std::collections::HashMap;

use axum::{
    extract::{Query, Request, State},
    response::{IntoResponse, Response},
    routing::{get, patch, post, put},
    Json, Router,
};
use http::Method;
use paracord_core::{time::now_ms, Error};
use paracord_service::guilds::members;

use super::{
    json_body, member_guild,
    relay::{forward, RelayedUser},
    user, user_param,
    wire::{
        self, role_moves, Ban, CreateInvite, Empty, Input, Invite, InviteAccepted, Member, Obj,
        PutBan, Role, RolePosition, UpdateMember, UpdateRole,
    },
    Caller, JsonBody, JsonList,
};
use crate::params::Params;
use crate::{ApiResult, AppState};

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
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonList(items): JsonList<Input<Obj<RolePosition>>>,
) -> ApiResult<Json<Vec<Role>>> {
    let id = member_guild(&state, &user, &id)?;
    let moves = role_moves(items)?;
    let roles = members::reorder_roles(&state.rooms, &id, &user, moves).await?;
    Ok(Json(roles.into_iter().map(Role::from).collect()))
}

/// `PATCH /_paracord/v1/guilds/{guildId}/roles/{roleId}`
pub(crate) async fn modify_role_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, role)): Params<(String, String)>,
    JsonBody(body): JsonBody<UpdateRole>,
) -> ApiResult<Json<Role>> {
    let id = member_guild(&state, &user, &id)?;
    let changes = body.check()?;
    let role = members::modify_role(&state.rooms, &id, &user, &role, changes).await?;
    Ok(Json(role.into()))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/roles/{roleId}`
pub(crate) async fn delete_role_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, role)): Params<(String, String)>,
) -> ApiResult<Json<Empty>> {
    let id = member_guild(&state, &user, &id)?;
    members::delete_role(&state.rooms, &id, &user, &role).await?;
    Ok(Json(Empty {}))
}

/// `GET /_paracord/v1/guilds/{guildId}/members?limit=&after=`
pub(crate) async fn list_members_route(
    State(state): State<AppState>,
    Params(id): Params<String>,
    req: Request,
) -> ApiResult<Json<Vec<Member>>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts).await?;
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
    let list = members::members(&state.rooms, &id, limit, q.get("after").map(String::as_str))?;
    Ok(Json(list.into_iter().map(Member::from).collect()))
}

/// `GET /_paracord/v1/guilds/{guildId}/members/{userId}`
pub(crate) async fn get_member_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, target)): Params<(String, String)>,
) -> ApiResult<Json<Member>> {
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    Ok(Json(
        members::member(&state.rooms, &id, &target, false)?.into(),
    ))
}

/// `PATCH /_paracord/v1/guilds/{guildId}/members/{userId}`
pub(crate) async fn modify_member_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, target)): Params<(String, String)>,
    JsonBody(body): JsonBody<UpdateMember>,
) -> ApiResult<Json<Member>> {
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    let changes = body.check(now_ms())?;
    let member = members::modify_member(&state.rooms, &id, &user, &target, changes).await?;
    Ok(Json(member.into()))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/members/{userId}?reason=`
pub(crate) async fn remove_member_route(
    State(state): State<AppState>,
    Params((id, target)): Params<(String, String)>,
    req: Request,
) -> ApiResult<Json<Empty>> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts).await?;
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
    Ok(Json(Empty {}))
}

/// `GET /_paracord/v1/guilds/{guildId}/bans`
pub(crate) async fn bans_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Ban>>> {
    let id = member_guild(&state, &user, &id)?;
    let bans = members::bans(&state.rooms, &id, &user)?;
    Ok(Json(bans.into_iter().map(Ban::from).collect()))
}

/// `PUT /_paracord/v1/guilds/{guildId}/bans/{userId}`
pub(crate) async fn ban_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, target)): Params<(String, String)>,
    JsonBody(body): JsonBody<PutBan>,
) -> ApiResult<Json<Ban>> {
    let id = member_guild(&state, &user, &id)?;
    let target = user_param(&target)?;
    let request = body.check()?;
    Ok(Json(
        members::ban(&state.rooms, &id, &user, &target, request)
            .await?
            .into(),
    ))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/bans/{userId}`
pub(crate) async fn unban_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, target)): Params<(String, String)>,
) -> ApiResult<Json<Empty>> {
    let id = member_guild(&state, &user, &id)?;
    let target = known_user(&target)?;
    members::unban(&state.rooms, &id, &user, &target).await?;
    Ok(Json(Empty {}))
}

/// `GET /_paracord/v1/guilds/{guildId}/invites`
pub(crate) async fn guild_invites_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<Invite>>> {
    let id = member_guild(&state, &user, &id)?;
    let invites = members::guild_invites(&state.rooms, &id, &user)?;
    Ok(Json(invites.into_iter().map(Invite::from).collect()))
}

/// `POST /_paracord/v1/channels/{channelId}/invites`
pub(crate) async fn create_invite_route(
    State(state): State<AppState>,
    Params(channel): Params<String>,
    req: Request,
) -> ApiResult<Json<Invite>> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts).await?;
    let channel =
        ruma::OwnedRoomId::try_from(channel).map_err(|_| Error::not_found("no such channel"))?;
    let body: CreateInvite = wire::read(json_body(&state, body).await?)?;
    let limits = body.check()?;
    Ok(Json(
        members::create_invite(&state.rooms, &state.invites, &channel, &user, limits)
            .await?
            .into(),
    ))
}

/// The guild host to ask about an invite code this server does not know: the `server`
/// parameter, unless it is this server or the request is already a relayed one.
fn invite_host(
    state: &AppState,
    parts: &http::request::Parts,
    error: &Error,
) -> ApiResult<Option<ruma::OwnedServerName>> {
    if parts.extensions.get::<RelayedUser>().is_some() {
        return Ok(None);
    }
    if let Error::HostedElsewhere(host) = error {
        return Ok(ruma::OwnedServerName::try_from(host.as_str()).ok());
    }
    if error.kind() != Some(&paracord_core::ErrorKind::NotFound) {
        return Ok(None);
    }
    let Some(server) = query(parts)?.remove("server") else {
        return Ok(None);
    };
    let server = ruma::OwnedServerName::try_from(server)
        .map_err(|_| Error::invalid_param("server is not a server name"))?;
    Ok((server.as_str() != state.config.server_name).then_some(server))
}

fn path_and_query(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str())
}

/// `GET /_paracord/v1/invites/{code}?server=`: from the guild state here, or else from the
/// guild host named by `server`.
pub(crate) async fn get_invite_route(
    State(state): State<AppState>,
    Params(code): Params<String>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    let user = user(&state, &parts).await?;
    match members::invite(&state.rooms, &state.invites, &code) {
        Ok(invite) => Ok(Json(Invite::from(invite)).into_response()),
        Err(e) => {
            let Some(host) = invite_host(&state, &parts, &e)? else {
                return Err(e.into());
            };
            let (status, body) = forward(
                &state,
                &host,
                &user,
                &Method::GET,
                path_and_query(&parts),
                None,
            )
            .await?;
            Ok((status, Json(body)).into_response())
        }
    }
}

/// `POST /_paracord/v1/invites/{code}?server=`: the guild host's checks and invites (here, or
/// relayed to the host named by `server`), then the user's own joins through the ordinary
/// Matrix join, with the guild host as `via`. A relayed acceptance is only the host's part:
/// the user's server joins.
pub(crate) async fn accept_invite_route(
    State(state): State<AppState>,
    Params(code): Params<String>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let user = user(&state, &parts).await?;
    let body = json_body(&state, body).await?;
    let (guild_id, channel_id, via, join_channel) =
        match members::accept_invite(&state.rooms, &state.invites, &state.pdus, &code, &user).await
        {
            Ok(accepted) => {
                if parts.extensions.get::<RelayedUser>().is_some() {
                    return Ok(Json(InviteAccepted {
                        guild_id: accepted.guild_id,
                        channel_id: accepted.channel_id,
                    })
                    .into_response());
                }
                (
                    accepted.guild_id,
                    accepted.channel_id,
                    accepted.via,
                    Some(accepted.join_channel),
                )
            }
            Err(e) => {
                let Some(host) = invite_host(&state, &parts, &e)? else {
                    return Err(e.into());
                };
                let (status, answer) = forward(
                    &state,
                    &host,
                    &user,
                    &Method::POST,
                    path_and_query(&parts),
                    Some(body),
                )
                .await?;
                if !status.is_success() {
                    return Ok((status, Json(answer)).into_response());
                }
                let room = |k: &str| {
                    answer[k]
                        .as_str()
                        .and_then(|r| ruma::OwnedRoomId::try_from(r).ok())
                        .ok_or_else(|| {
                            Error::new(
                                http::StatusCode::BAD_GATEWAY,
                                paracord_core::ErrorKind::Unknown,
                                format!("{host} accepted the invite without naming the {k}"),
                            )
                        })
                };
                (room("guild_id")?, room("channel_id")?, host, None)
            }
        };
    let via = [via];
    if !state.rooms.is_joined(&guild_id, &user)? {
        state.joins.join(&user, &guild_id, &via, None, None).await?;
    }
    if join_channel == Some(true) && !state.rooms.is_joined(&channel_id, &user)? {
        state
            .joins
            .join(&user, &channel_id, &via, None, None)
            .await?;
    }
    // As in Discord, a new member is in every channel they can see, categories included (so
    // that this server holds their state): the invite's channel first, then the rest. A
    // refusal means the channel is hidden from them (or private), and is no failure here.
    let mut others = paracord_service::guilds::store::channel_rooms(&state.rooms, &guild_id)?;
    others.retain(|c| *c != channel_id);
    others.insert(0, channel_id.clone());
    for channel in others {
        if state.rooms.is_joined(&channel, &user)? {
            continue;
        }
        if let Err(e) = state.joins.join(&user, &channel, &via, None, None).await {
            tracing::debug!(%channel, error = ?e, "a channel of the guild was not joined");
        }
    }
    Ok(Json(InviteAccepted {
        guild_id,
        channel_id,
    })
    .into_response())
}

/// `DELETE /_paracord/v1/invites/{code}`
pub(crate) async fn revoke_invite_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(code): Params<String>,
) -> ApiResult<Json<Invite>> {
    Ok(Json(
        members::revoke_invite(&state.rooms, &state.invites, &code, &user)
            .await?
            .into(),
    ))
}
