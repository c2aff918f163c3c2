//! Server-Server API. So far: this server's signing keys (`/_matrix/key/v2/server`), the
//! notary endpoints answering for this server, `/_matrix/federation/v1/version`, and the
//! profile and directory queries, which require an `X-Matrix` signature of the asking server.
//! The rest of federation (transactions, joins) is not built yet and answers `M_UNRECOGNIZED`.

use axum::{extract::State, Json};
use paracord_core::Error;
use ruma::api::federation::{
    device::get_devices,
    directory::{get_public_rooms, get_public_rooms_filtered},
    discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
    },
    keys::{claim_keys, get_keys},
    query::{get_profile_information, get_room_information},
};
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This server's keys, signed, valid for the configured period.
fn own_keys(state: &AppState) -> ApiResult<Value> {
    let valid_until = now_ms().saturating_add(state.config.key_validity_period_ms);
    Ok(state
        .keys
        .server_keys(&state.config.server_name, valid_until)?)
}

/// `GET /_matrix/key/v2/server` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixkeyv2server
pub(crate) async fn get_server_keys_route(
    State(state): State<AppState>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(own_keys(&state)?))
}

/// `GET /_matrix/key/v2/query/{serverName}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixkeyv2queryservername
///
/// As a notary: this server's keys, or another server's as fetched (or cached) here, with this
/// server's signature added. A server whose keys cannot be had gets an empty list.
pub(crate) async fn get_remote_server_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<Json<Value>> {
    let minimum = u64::from(req.body.minimum_valid_until_ts.get());
    let keys = notary_keys(&state, req.body.server_name.as_str(), minimum).await?;
    Ok(Json(json!({ "server_keys": keys })))
}

async fn notary_keys(state: &AppState, server: &str, minimum: u64) -> ApiResult<Vec<Value>> {
    if server == state.config.server_name {
        return Ok(vec![own_keys(state)?]);
    }
    Ok(state
        .remote_keys
        .notary(server, minimum)
        .await?
        .into_iter()
        .collect())
}

/// `POST /_matrix/key/v2/query` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixkeyv2query
pub(crate) async fn get_remote_server_keys_batch_route(
    State(state): State<AppState>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<Json<Value>> {
    let mut keys = Vec::new();
    for (server, wanted) in req.body.server_keys.iter().take(100) {
        let minimum = wanted
            .values()
            .filter_map(|c| c.minimum_valid_until_ts.map(|t| u64::from(t.get())))
            .max()
            .unwrap_or(0);
        keys.extend(notary_keys(&state, server.as_str(), minimum).await?);
    }
    Ok(Json(json!({ "server_keys": keys })))
}

/// `GET /_matrix/federation/v1/version` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1version
pub(crate) async fn get_server_version_route(
    _req: Ruma<get_server_version::v1::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "server": { "name": "Paracord", "version": env!("CARGO_PKG_VERSION") } }),
    ))
}

/// `GET /_matrix/federation/v1/query/profile` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1queryprofile
pub(crate) async fn get_profile_information_route(
    State(state): State<AppState>,
    req: Ruma<get_profile_information::v1::Request>,
) -> ApiResult<Json<Value>> {
    let user = &req.body.user_id;
    if !state.accounts.is_local(user) || state.accounts.account(user)?.is_none() {
        return Err(Error::not_found("no such user on this server").into());
    }
    let (displayname, avatar_url) = state.accounts.profile(user)?;
    let mut out = serde_json::Map::new();
    let field = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    if field.as_deref().is_none_or(|f| f == "displayname") {
        if let Some(d) = displayname {
            out.insert("displayname".into(), json!(d));
        }
    }
    if field.as_deref().is_none_or(|f| f == "avatar_url") {
        if let Some(a) = avatar_url {
            out.insert("avatar_url".into(), json!(a));
        }
    }
    Ok(Json(Value::Object(out)))
}

/// `GET /_matrix/federation/v1/query/directory` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1querydirectory
pub(crate) async fn get_room_information_route(
    State(state): State<AppState>,
    req: Ruma<get_room_information::v1::Request>,
) -> ApiResult<Json<Value>> {
    let alias = &req.body.room_alias;
    if alias.server_name().as_str() != state.config.server_name {
        return Err(Error::not_found("the alias is not on this server").into());
    }
    let room_id = state
        .rooms
        .resolve_alias(alias)?
        .ok_or_else(|| Error::not_found("no such alias"))?;
    Ok(Json(
        json!({ "room_id": room_id, "servers": [state.config.server_name] }),
    ))
}

/// A local user of this server, or 404.
fn local_user(state: &AppState, user: &ruma::UserId) -> ApiResult<()> {
    if !state.accounts.is_local(user) || state.accounts.account(user)?.is_none() {
        return Err(Error::not_found("no such user on this server").into());
    }
    Ok(())
}

/// `GET /_matrix/federation/v1/user/devices/{userId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1userdevicesuserid
pub(crate) async fn get_devices_route(
    State(state): State<AppState>,
    req: Ruma<get_devices::v1::Request>,
) -> ApiResult<Json<Value>> {
    local_user(&state, &req.body.user_id)?;
    Ok(Json(state.e2ee.federation_devices(
        &req.body.user_id,
        state.stream.current(),
    )?))
}

/// `POST /_matrix/federation/v1/user/keys/query` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1userkeysquery
pub(crate) async fn get_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_keys::v1::Request>,
) -> ApiResult<Json<Value>> {
    let wanted = paracord_service::e2ee::query_wanted(&req.body.device_keys);
    let mut out = state.e2ee.query_keys(None, &wanted)?;
    if let Some(o) = out.as_object_mut() {
        o.remove("failures");
        o.remove("user_signing_keys");
    }
    Ok(Json(out))
}

/// `POST /_matrix/federation/v1/user/keys/claim` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1userkeysclaim
pub(crate) async fn claim_keys_route(
    State(state): State<AppState>,
    req: Ruma<claim_keys::v1::Request>,
) -> ApiResult<Json<Value>> {
    let wanted = paracord_service::e2ee::claim_wanted(&req.body.one_time_keys);
    let out = state.e2ee.claim_keys(&wanted)?;
    Ok(Json(json!({ "one_time_keys": out["one_time_keys"] })))
}

/// `GET /_matrix/federation/v1/publicRooms` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1publicrooms
pub(crate) async fn get_public_rooms_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> ApiResult<Json<Value>> {
    let all = state.rooms.public_rooms(None)?;
    Ok(Json(paracord_service::rooms::directory::public_rooms_page(
        all,
        req.body.since.as_deref(),
        req.body.limit.map(u64::from),
    )?))
}

/// `POST /_matrix/federation/v1/publicRooms` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1publicrooms
pub(crate) async fn get_public_rooms_filtered_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<Json<Value>> {
    let all = state
        .rooms
        .public_rooms(req.body.filter.generic_search_term.as_deref())?;
    Ok(Json(paracord_service::rooms::directory::public_rooms_page(
        all,
        req.body.since.as_deref(),
        req.body.limit.map(u64::from),
    )?))
}

/// Asks `server` (signed as this server) and returns its JSON object answer; its 404 is our
/// 404, any other failure a 502 naming it.
pub(crate) async fn ask(
    state: &AppState,
    server: &ruma::ServerName,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Error> {
    use paracord_service::federation::request::{remote_error, signed_json};
    let (status, answer) = signed_json(
        &state.federation,
        &state.keys,
        &state.config.server_name,
        server,
        method,
        path,
        body,
    )
    .await?;
    if !status.is_success() {
        return Err(remote_error(server, status, &answer));
    }
    if !answer.is_object() {
        return Err(remote_error(
            server,
            http::StatusCode::BAD_GATEWAY,
            &json!({ "error": "the answer is not a JSON object" }),
        ));
    }
    Ok(answer)
}

/// The body of a federation request handled without ruma types, with the origin server whose
/// `X-Matrix` signature over it (and the method, path and destination) verifies.
pub(crate) async fn signed_body(
    state: &AppState,
    req: axum::extract::Request,
) -> ApiResult<(ruma::OwnedServerName, axum::body::Bytes)> {
    let (parts, body) = req.into_parts();
    let limit = crate::ruma_wrapper::request_limit(&state.config);
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::too_large(format!("the body is larger than {limit} bytes")))?;
    let mut signed = http::Request::new(bytes.to_vec());
    *signed.method_mut() = parts.method;
    *signed.uri_mut() = parts.uri;
    *signed.headers_mut() = parts.headers;
    let origin = state.remote_keys.verify_request(&signed).await?;
    Ok((origin, bytes))
}
