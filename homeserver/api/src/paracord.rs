//! The Paracord REST extension under `/_paracord/v1` (spec/rest.md). Each resource has its
//! module; anything not routed here answers `M_UNRECOGNIZED` through the router's fallback.

use axum::{
    routing::{get, post, put},
    Router,
};
use paracord_core::Error;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    ruma_wrapper::{caller_ip, identify},
    ApiResult, AppState,
};

mod applications;
mod channels;
pub(crate) mod guilds;
mod members;
mod pins;
mod polls;
pub(crate) mod relay;
mod voice;
pub(crate) mod webhooks;
pub(crate) mod wire;

/// Every `/_paracord/v1` route. Modules may add methods to the same path.
pub(crate) fn routes() -> Router<AppState> {
    let r = Router::new()
        .route("/_paracord/v1/guilds", post(guilds::create_guild_route))
        .route(
            "/_paracord/v1/guilds/{guild_id}",
            get(guilds::get_guild_route),
        )
        .route(
            "/_paracord/v1/guilds/{guild_id}/channels",
            get(guilds::guild_channels_route),
        )
        .route(
            "/_paracord/v1/guilds/{guild_id}/roles",
            get(guilds::guild_roles_route).post(guilds::create_role_route),
        )
        .route(
            "/_paracord/v1/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
            put(guilds::add_member_role_route).delete(guilds::remove_member_role_route),
        )
        .route(
            "/_paracord/v1/channels/{channel_id}/permissions/{target}",
            get(guilds::channel_permissions_route),
        )
        .route(
            "/_paracord/federation/v1/relay/{txn_id}",
            put(relay::relay_route),
        );
    let r = channels::routes(r);
    let r = applications::routes(r);
    let r = webhooks::routes(r);
    let r = voice::routes(r);
    let r = polls::routes(r);
    let r = pins::routes(r);
    members::routes(r)
}

/// The requester: the owner of the access token, or the user of another server for whom the
/// guild host runs a relayed request.
pub(crate) async fn user(
    state: &AppState,
    parts: &http::request::Parts,
) -> ApiResult<ruma::OwnedUserId> {
    if let Some(relay::RelayedUser(user)) = parts.extensions.get::<relay::RelayedUser>() {
        return Ok(user.clone());
    }
    let (id, _) = identify(state, parts, caller_ip(state, parts)).await?;
    Ok(id.user_id)
}

/// A user id from the path; anything else is an invalid parameter.
pub(crate) fn user_param(id: &str) -> ApiResult<ruma::OwnedUserId> {
    ruma::OwnedUserId::try_from(id).map_err(|_| Error::invalid_param("not a user id").into())
}

pub(crate) fn guild_id(id: &str) -> ApiResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(id).map_err(|_| Error::not_found("no such guild").into())
}

/// A guild the user is in (joined to its space); anything else is 404, as if it did not exist.
pub(crate) fn member_guild(
    state: &AppState,
    user: &ruma::UserId,
    id: &str,
) -> ApiResult<ruma::OwnedRoomId> {
    let id = guild_id(id)?;
    if state.rooms.room(&id)?.is_none() || !state.rooms.is_joined(&id, user)? {
        return Err(Error::not_found("no such guild").into());
    }
    Ok(id)
}

/// The requester, as an extractor: see [`user`].
pub(crate) struct Caller(pub ruma::OwnedUserId);

impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = crate::error::ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        user(state, parts).await.map(Caller)
    }
}

/// The request body (a JSON object) read into a request type of [`wire`], as an extractor:
/// malformed JSON is `M_NOT_JSON` and anything but an object `M_BAD_JSON` (see
/// [`json_body`]); the fields are checked by the request type's `check`.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> axum::extract::FromRequest<AppState> for JsonBody<T> {
    type Rejection = crate::error::ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let body = json_body(state, req.into_body()).await?;
        Ok(JsonBody(wire::read(body)?))
    }
}

/// The request body (a JSON array) read as a list of `T`, as an extractor: malformed JSON is
/// `M_NOT_JSON` and anything but an array `M_BAD_JSON` (see [`json_array`]).
pub(crate) struct JsonList<T>(pub Vec<T>);

impl<T: DeserializeOwned> axum::extract::FromRequest<AppState> for JsonList<T> {
    type Rejection = crate::error::ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let items = json_array(state, req.into_body()).await?;
        Ok(JsonList(wire::read(Value::Array(items))?))
    }
}

/// The request body as JSON of any shape (an empty body is `{}`).
pub(crate) async fn json_value(state: &AppState, body: axum::body::Body) -> ApiResult<Value> {
    let limit = state.config.max_request_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::too_large(format!("the body is larger than {limit} bytes")))?;
    json_of(&bytes)
}

/// A request body as JSON of any shape (an empty body is `{}`).
pub(crate) fn json_of(bytes: &[u8]) -> ApiResult<Value> {
    if bytes.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::not_json(e.to_string()).into())
}

/// The request body as a JSON object (an empty body is `{}`).
pub(crate) async fn json_body(state: &AppState, body: axum::body::Body) -> ApiResult<Value> {
    object_of(json_value(state, body).await?)
}

/// A request body that must be a JSON object.
pub(crate) fn object_of(v: Value) -> ApiResult<Value> {
    if !v.is_object() {
        return Err(Error::bad_json("the body must be a JSON object").into());
    }
    Ok(v)
}

/// The request body as a JSON array.
pub(crate) async fn json_array(state: &AppState, body: axum::body::Body) -> ApiResult<Vec<Value>> {
    array_of(json_value(state, body).await?)
}

/// A request body that must be a JSON array.
pub(crate) fn array_of(v: Value) -> ApiResult<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(Error::bad_json("the body must be a JSON array").into()),
    }
}
