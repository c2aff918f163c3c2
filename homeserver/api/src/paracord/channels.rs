//! Guild settings, channels and permission overwrites (spec/rest.md §2, §5, §6, §10).

use axum::{
    extract::State,
    routing::{get, patch, post, put},
    Json, Router,
};
use paracord_core::Error;
use paracord_service::guilds::channels;

use super::{
    member_guild,
    wire::{
        channel_moves, overwrite_target, Channel, ChannelMove, CreateChannel, Empty, Guild, Input,
        Obj, Overwrite, PutOverwrite, UpdateChannel, UpdateGuild, Versions,
    },
    Caller, JsonBody, JsonList,
};
use crate::params::Params;
use crate::{ApiResult, AppState};

/// Routes of this module; paths shared with other modules keep their parameter names.
pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route("/_paracord/v1/versions", get(versions_route))
        .route(
            "/_paracord/v1/guilds/{guild_id}",
            patch(update_guild_route).delete(delete_guild_route),
        )
        .route(
            "/_paracord/v1/guilds/{guild_id}/channels",
            post(create_channel_route).patch(reorder_channels_route),
        )
        .route(
            "/_paracord/v1/channels/{channel_id}",
            get(get_channel_route)
                .patch(update_channel_route)
                .delete(delete_channel_route),
        )
        .route(
            "/_paracord/v1/channels/{channel_id}/permissions/{target}",
            put(put_overwrite_route).delete(delete_overwrite_route),
        )
}

/// A channel id from the path; anything that is not a room id names no channel.
fn channel_id(id: &str) -> ApiResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(id).map_err(|_| Error::not_found("no such channel").into())
}

/// `GET /_paracord/v1/versions`: the profile versions this server implements. Like the
/// Matrix `/versions`, it answers with or without an access token.
pub(crate) async fn versions_route() -> Json<Versions> {
    Json(Versions {
        versions: vec!["1"],
    })
}

/// `PATCH /_paracord/v1/guilds/{guildId}`
pub(crate) async fn update_guild_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonBody(body): JsonBody<UpdateGuild>,
) -> ApiResult<Json<Guild>> {
    let id = member_guild(&state, &user, &id)?;
    let update = body.check()?;
    let guild = channels::update_guild(&state.rooms, &id, &user, update).await?;
    Ok(Json(Guild::new(id, guild)))
}

/// `DELETE /_paracord/v1/guilds/{guildId}`
pub(crate) async fn delete_guild_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Empty>> {
    let id = member_guild(&state, &user, &id)?;
    channels::delete_guild(&state.rooms, &id, &user).await?;
    Ok(Json(Empty {}))
}

/// `POST /_paracord/v1/guilds/{guildId}/channels`
pub(crate) async fn create_channel_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonBody(body): JsonBody<CreateChannel>,
) -> ApiResult<Json<Channel>> {
    let id = member_guild(&state, &user, &id)?;
    let new = body.check()?;
    let channel = channels::create_channel(&state.rooms, &state.pdus, &id, &user, new).await?;
    Ok(Json(channel.into()))
}

/// `PATCH /_paracord/v1/guilds/{guildId}/channels`
pub(crate) async fn reorder_channels_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonList(items): JsonList<Input<Obj<ChannelMove>>>,
) -> ApiResult<Json<Empty>> {
    let id = member_guild(&state, &user, &id)?;
    let moves = channel_moves(items)?;
    channels::reorder_channels(&state.rooms, &state.pdus, &id, &user, moves).await?;
    Ok(Json(Empty {}))
}

/// `GET /_paracord/v1/channels/{channelId}`
pub(crate) async fn get_channel_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Channel>> {
    let id = channel_id(&id)?;
    Ok(Json(
        channels::get_channel(&state.rooms, &id, &user)?.into(),
    ))
}

/// `PATCH /_paracord/v1/channels/{channelId}`
pub(crate) async fn update_channel_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonBody(body): JsonBody<UpdateChannel>,
) -> ApiResult<Json<Channel>> {
    let id = channel_id(&id)?;
    let update = body.check()?;
    let channel = channels::update_channel(&state.rooms, &state.pdus, &id, &user, update).await?;
    Ok(Json(channel.into()))
}

/// `DELETE /_paracord/v1/channels/{channelId}`
pub(crate) async fn delete_channel_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Empty>> {
    let id = channel_id(&id)?;
    channels::delete_channel(&state.rooms, &id, &user).await?;
    Ok(Json(Empty {}))
}

/// `PUT /_paracord/v1/channels/{channelId}/permissions/{overwriteId}`
pub(crate) async fn put_overwrite_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, target)): Params<(String, String)>,
    JsonBody(body): JsonBody<PutOverwrite>,
) -> ApiResult<Json<Overwrite>> {
    let id = channel_id(&id)?;
    let (target, ow) = body.check(&target)?;
    let entry = channels::put_overwrite(&state.rooms, &state.pdus, &id, &user, &target, ow).await?;
    Ok(Json(entry.into()))
}

/// `DELETE /_paracord/v1/channels/{channelId}/permissions/{overwriteId}`
pub(crate) async fn delete_overwrite_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params((id, target)): Params<(String, String)>,
) -> ApiResult<Json<Empty>> {
    let id = channel_id(&id)?;
    let target = overwrite_target(&target)?;
    channels::delete_overwrite(&state.rooms, &state.pdus, &id, &user, &target).await?;
    Ok(Json(Empty {}))
}
