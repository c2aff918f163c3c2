//! Server-Server API: this server's signing keys (`/_matrix/key/v2/server`), the notary
//! endpoints, `/_matrix/federation/v1/version`, the profile and directory queries, device and
//! key queries and the public room directory; all but the key endpoints require an `X-Matrix`
//! signature of the asking server. Rooms (transactions, joins, invites) are in
//! `federation_rooms`, reads of a room's events in `federation_events`.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::federation::{
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{
            get_remote_server_keys, get_remote_server_keys_batch, get_server_keys,
            get_server_version, ServerSigningKeys,
        },
        keys::{claim_keys, get_keys},
        query::{get_profile_information, get_room_information},
    },
    directory::PublicRoomsChunk,
    profile::UserProfile,
    serde::Raw,
    UInt,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::{public_join_rules, ruma_wrapper::Ruma, ApiResult, AppState, Patched, RumaResponse};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A wire object a service built as JSON, read into its ruma type (a service answer that does
/// not fit is this server's bug: a 500).
pub(crate) fn wire<T: DeserializeOwned>(value: Value) -> ApiResult<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::internal(format!("a malformed answer of our own: {e}")).into())
}

/// A JSON value as a ruma `Raw`, its text as serde_json prints it.
pub(crate) fn raw<T>(value: &Value) -> ApiResult<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

/// This server's keys, signed, valid for the configured period.
fn own_keys(state: &AppState) -> ApiResult<Raw<ServerSigningKeys>> {
    let valid_until = now_ms().saturating_add(state.config.key_validity_period_ms);
    raw(&state
        .keys
        .server_keys(&state.config.server_name, valid_until)?)
}

/// `GET /_matrix/key/v2/server` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixkeyv2server
pub(crate) async fn get_server_keys_route(
    State(state): State<AppState>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> ApiResult<RumaResponse<get_server_keys::v2::Response>> {
    Ok(RumaResponse(get_server_keys::v2::Response::new(own_keys(
        &state,
    )?)))
}

/// `GET /_matrix/key/v2/query/{serverName}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixkeyv2queryservername
///
/// As a notary: this server's keys, or another server's as fetched (or cached) here, with this
/// server's signature added. A server whose keys cannot be had gets an empty list.
pub(crate) async fn get_remote_server_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<RumaResponse<get_remote_server_keys::v2::Response>> {
    let minimum = u64::from(req.body.minimum_valid_until_ts.get());
    let keys = notary_keys(&state, req.body.server_name.as_str(), minimum).await?;
    Ok(RumaResponse(get_remote_server_keys::v2::Response::new(
        keys,
    )))
}

async fn notary_keys(
    state: &AppState,
    server: &str,
    minimum: u64,
) -> ApiResult<Vec<Raw<ServerSigningKeys>>> {
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
) -> ApiResult<RumaResponse<get_remote_server_keys_batch::v2::Response>> {
    let mut keys = Vec::new();
    for (server, wanted) in req.body.server_keys.iter().take(100) {
        let minimum = wanted
            .values()
            .filter_map(|c| c.minimum_valid_until_ts.map(|t| u64::from(t.get())))
            .max()
            .unwrap_or(0);
        keys.extend(notary_keys(&state, server.as_str(), minimum).await?);
    }
    Ok(RumaResponse(
        get_remote_server_keys_batch::v2::Response::new(keys),
    ))
}

/// `GET /_matrix/federation/v1/version` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1version
pub(crate) async fn get_server_version_route(
    _req: Ruma<get_server_version::v1::Request>,
) -> ApiResult<RumaResponse<get_server_version::v1::Response>> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Paracord".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(RumaResponse(response))
}

/// `GET /_matrix/federation/v1/query/profile` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1queryprofile
pub(crate) async fn get_profile_information_route(
    State(state): State<AppState>,
    req: Ruma<get_profile_information::v1::Request>,
) -> ApiResult<RumaResponse<get_profile_information::v1::Response>> {
    let user = &req.body.user_id;
    if !state.accounts.is_local(user) || state.accounts.account(user)?.is_none() {
        return Err(Error::not_found("no such user on this server").into());
    }
    let (displayname, avatar_url) = state.accounts.profile(user)?;
    let mut profile = UserProfile::new();
    let field = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    if field.as_deref().is_none_or(|f| f == "displayname") {
        if let Some(d) = displayname {
            profile.set("displayname".to_owned(), json!(d));
        }
    }
    if field.as_deref().is_none_or(|f| f == "avatar_url") {
        if let Some(a) = avatar_url {
            profile.set("avatar_url".to_owned(), json!(a));
        }
    }
    let mut response = get_profile_information::v1::Response::new();
    response.data = profile;
    Ok(RumaResponse(response))
}

/// `GET /_matrix/federation/v1/query/directory` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1querydirectory
pub(crate) async fn get_room_information_route(
    State(state): State<AppState>,
    req: Ruma<get_room_information::v1::Request>,
) -> ApiResult<RumaResponse<get_room_information::v1::Response>> {
    let alias = &req.body.room_alias;
    if alias.server_name().as_str() != state.config.server_name {
        return Err(Error::not_found("the alias is not on this server").into());
    }
    let mut room_id = state.rooms.resolve_alias(alias)?;
    // An alias in an application service's namespace: the appservice may create it now.
    if room_id.is_none() && state.appservices.query_alias(alias).await {
        room_id = state.rooms.resolve_alias(alias)?;
    }
    let room_id = room_id.ok_or_else(|| Error::not_found("no such alias"))?;
    Ok(RumaResponse(get_room_information::v1::Response::new(
        room_id,
        vec![alias.server_name().to_owned()],
    )))
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
) -> ApiResult<RumaResponse<get_devices::v1::Response>> {
    let user = &req.body.user_id;
    local_user(&state, user)?;
    let stream_id = state.stream.current();
    let mut out = state.e2ee.federation_devices(user, stream_id)?;
    let mut response = get_devices::v1::Response::new(
        user.clone(),
        UInt::try_from(stream_id).unwrap_or(UInt::MAX),
    );
    response.devices = wire(out["devices"].take())?;
    response.master_key = out.get("master_key").map(raw).transpose()?;
    response.self_signing_key = out.get("self_signing_key").map(raw).transpose()?;
    Ok(RumaResponse(response))
}

/// `POST /_matrix/federation/v1/user/keys/query` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1userkeysquery
pub(crate) async fn get_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_keys::v1::Request>,
) -> ApiResult<RumaResponse<get_keys::v1::Response>> {
    let wanted = paracord_service::e2ee::query_wanted(&req.body.device_keys);
    let mut out = state.e2ee.query_keys(None, &wanted)?;
    let mut response = get_keys::v1::Response::new(wire(out["device_keys"].take())?);
    response.master_keys = wire(out["master_keys"].take())?;
    response.self_signing_keys = wire(out["self_signing_keys"].take())?;
    Ok(RumaResponse(response))
}

/// `POST /_matrix/federation/v1/user/keys/claim` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1userkeysclaim
pub(crate) async fn claim_keys_route(
    State(state): State<AppState>,
    req: Ruma<claim_keys::v1::Request>,
) -> ApiResult<RumaResponse<claim_keys::v1::Response>> {
    let wanted = paracord_service::e2ee::claim_wanted(&req.body.one_time_keys);
    let mut out = state.e2ee.claim_keys(&wanted)?;
    Ok(RumaResponse(claim_keys::v1::Response::new(wire(
        out["one_time_keys"].take(),
    )?)))
}

/// A page of the public room directory as `public_rooms_page` builds it, in ruma's types: the
/// chunk, the page tokens and the estimate.
type PublicRoomsPage = (
    Vec<PublicRoomsChunk>,
    Option<String>,
    Option<String>,
    Option<UInt>,
);

fn public_rooms(page: Value) -> ApiResult<PublicRoomsPage> {
    let Value::Object(mut page) = page else {
        return Err(Error::internal("the public rooms page is not an object").into());
    };
    let chunk = match page.remove("chunk") {
        Some(Value::Array(rooms)) => rooms.into_iter().filter_map(public_room).collect(),
        _ => Vec::new(),
    };
    let token = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_owned));
    Ok((
        chunk,
        token(page.remove("next_batch")),
        token(page.remove("prev_batch")),
        page.remove("total_room_count_estimate")
            .and_then(|t| t.as_u64())
            .map(|t| UInt::try_from(t).unwrap_or(UInt::MAX)),
    ))
}

/// One room of the directory. Its fields come from room state, which another server may have
/// filled with anything: a `canonical_alias` or `avatar_url` that ruma cannot read is left out
/// rather than failing the whole page (and a room still unreadable is left out of it).
fn public_room(mut room: Value) -> Option<PublicRoomsChunk> {
    if let Ok(chunk) = serde_json::from_value::<PublicRoomsChunk>(room.clone()) {
        return Some(chunk);
    }
    if let Some(o) = room.as_object_mut() {
        o.remove("canonical_alias");
        o.remove("avatar_url");
    }
    serde_json::from_value(room)
        .map_err(|e| tracing::warn!("a public room the directory cannot show: {e}"))
        .ok()
}

/// `GET /_matrix/federation/v1/publicRooms` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1publicrooms
pub(crate) async fn get_public_rooms_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> ApiResult<Patched<get_public_rooms::v1::Response>> {
    let all = state.rooms.public_rooms(None)?;
    let (chunk, next_batch, prev_batch, estimate) =
        public_rooms(paracord_service::rooms::directory::public_rooms_page(
            all,
            req.body.since.as_deref(),
            req.body.limit.map(u64::from),
        )?)?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = estimate;
    Ok(public_join_rules(response))
}

/// `POST /_matrix/federation/v1/publicRooms` — https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1publicrooms
pub(crate) async fn get_public_rooms_filtered_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<Patched<get_public_rooms_filtered::v1::Response>> {
    let all = state
        .rooms
        .public_rooms(req.body.filter.generic_search_term.as_deref())?;
    let (chunk, next_batch, prev_batch, estimate) =
        public_rooms(paracord_service::rooms::directory::public_rooms_page(
            all,
            req.body.since.as_deref(),
            req.body.limit.map(u64::from),
        )?)?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = estimate;
    Ok(public_join_rules(response))
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
    let origin = crate::ruma_wrapper::signed_origin(state, &parts, &bytes).await?;
    Ok((origin, bytes))
}
