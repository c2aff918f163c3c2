//! Relaying Paracord requests to the guild host (spec/rest.md §3).
//!
//! Writes on a guild are carried out by its guild host, the owner's server. A handler that
//! finds the guild hosted elsewhere fails with `Error::HostedElsewhere`; [`relay_layer`], over
//! every `/_paracord/v1` route, then sends the same request to the host as
//! `PUT /_paracord/federation/v1/relay/{txnId}` and answers with the host's status and body.
//! On the host, [`relay_route`] checks the signature and that the user belongs to the asking
//! server, and runs the request through the same routes as that user ([`RelayedUser`]).
//! Writes are rate-limited here too, with the sending limit.

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use http::{Method, StatusCode};
use paracord_core::Error;
use paracord_service::{guilds::relay, ratelimit::Limit};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::wire::{self, Input, RelayAnswer, RelayRequest, RelayedBody};
use crate::params::Params;
use crate::{
    error::{ApiError, RelayTo},
    ApiResult, AppState,
};

/// Put on a request the guild host runs for a user of another server: that user is the
/// requester. Only [`relay_route`] sets it (extensions never come from the wire).
#[derive(Clone, Debug)]
pub(crate) struct RelayedUser(pub OwnedUserId);

/// The largest answer a relayed request may produce.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Over every `/_paracord/v1` route: runs the request here, and relays it to the guild host
/// when the handler says the guild is hosted elsewhere.
pub(crate) async fn relay_layer(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<RelayedUser>().is_some() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // Every write becomes several room events: writes share the sending rate limit. (A
    // request without a valid token is left to the handler to refuse.)
    if parts.method != Method::GET {
        if let Ok(user) = super::user(&state, &parts).await {
            if let Err(e) = state.ratelimit.check(Limit::Send, user.as_str()) {
                return ApiError(e).into_response();
            }
        }
    }
    let limit = state.config.max_request_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return ApiError(Error::too_large(format!(
            "the body is larger than {limit} bytes"
        )))
        .into_response();
    };
    let response = next
        .run(Request::from_parts(
            parts.clone(),
            Body::from(bytes.clone()),
        ))
        .await;
    let Some(RelayTo(host)) = response.extensions().get::<RelayTo>().cloned() else {
        return response;
    };
    match relay(&state, &parts, &host, &bytes).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn relay(
    state: &AppState,
    parts: &http::request::Parts,
    host: &str,
    bytes: &Bytes,
) -> ApiResult<Response> {
    let user = super::user(state, parts).await?;
    let host = OwnedServerName::try_from(host)
        .map_err(|_| Error::internal(format!("guild host {host} is not a server name")))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let body = if bytes.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(bytes).map_err(|e| Error::not_json(e.to_string()))?)
    };
    let (status, body) = forward(state, &host, &user, &parts.method, path, body).await?;
    Ok((status, Json(body)).into_response())
}

/// Sends `method path` with `body` to the guild host `host` on behalf of `user` and returns
/// the host's status and body for it.
pub(crate) async fn forward(
    state: &AppState,
    host: &ruma::ServerName,
    user: &UserId,
    method: &Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), Error> {
    let relayed = serde_json::to_value(RelayRequest {
        user_id: user,
        method: method.as_str(),
        path,
        body,
    })
    .map_err(Error::from)?;
    tracing::debug!(%host, %method, path, "relaying a Paracord request to the guild host");
    state.queries.relay(host, &relayed).await
}

/// `PUT /_paracord/federation/v1/relay/{txnId}` — spec/rest.md §3.
pub(crate) async fn relay_route(
    State(state): State<AppState>,
    Params(txn_id): Params<String>,
    req: Request,
) -> ApiResult<Json<RelayAnswer>> {
    let (origin, bytes) = crate::federation::signed_body(&state, req).await?;
    if let Some(done) = relay::answered(&state.db, &origin, &txn_id)? {
        let done = serde_json::from_value(done)
            .map_err(|e| Error::internal(format!("a stored relay answer: {e}")))?;
        return Ok(Json(done));
    }
    let Relayed {
        user,
        method,
        uri,
        body,
    } = relayed_request(&bytes, &origin, &state.config.server_name)?;
    let mut inner = http::Request::new(Body::from(body));
    *inner.method_mut() = method;
    *inner.uri_mut() = uri;
    inner.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    inner.extensions_mut().insert(RelayedUser(user));
    let router = super::routes()
        .fallback(|| async { ApiError(Error::unrecognized("unrecognized request")) })
        .with_state(state.clone());
    let response = match router.oneshot(inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .map_err(|e| Error::internal(format!("reading a relayed answer: {e}")))?;
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
    let answer = RelayAnswer { status, body };
    relay::remember(
        &state.db,
        &origin,
        &txn_id,
        &serde_json::to_value(&answer).map_err(Error::from)?,
    )?;
    Ok(Json(answer))
}

/// A request relayed to the guild host (the body of `PUT /_paracord/federation/v1/relay/…`).
#[derive(Debug)]
pub(crate) struct Relayed {
    /// The user of the asking server the request is for.
    pub(crate) user: OwnedUserId,
    pub(crate) method: Method,
    pub(crate) uri: http::Uri,
    pub(crate) body: Vec<u8>,
}

/// Reads and checks the body of a relay from `origin` to `own_name`: a user of `origin`, and
/// a `/_paracord/v1` request other than creating a guild.
pub(crate) fn relayed_request(
    bytes: &[u8],
    origin: &ruma::ServerName,
    own_name: &str,
) -> ApiResult<Relayed> {
    let relayed: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::not_json(e.to_string()))?;
    // JSON other than an object has none of the fields.
    let relayed: RelayedBody = if relayed.is_object() {
        wire::read(relayed)?
    } else {
        RelayedBody::default()
    };
    let field = |v: Input<String>, k: &str| -> Result<String, Error> {
        match v {
            Input::Value(s) => Ok(s),
            Input::Absent => Err(Error::missing_param(format!("{k} is required"))),
            Input::Null | Input::WrongType => Err(Error::bad_json(format!("{k} must be a string"))),
        }
    };
    let user = OwnedUserId::try_from(field(relayed.user_id, "user_id")?)
        .map_err(|_| Error::invalid_param("user_id is not a user id"))?;
    if user.server_name() != origin || origin.as_str() == own_name {
        return Err(Error::forbidden(format!("{origin} cannot act for {user}")).into());
    }
    let method = match field(relayed.method, "method")?.as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        m => return Err(Error::invalid_param(format!("cannot relay method {m}")).into()),
    };
    let path = field(relayed.path, "path")?;
    if !path.starts_with("/_paracord/v1/") {
        return Err(Error::invalid_param("only /_paracord/v1 requests are relayed").into());
    }
    if method == Method::POST && path.split('?').next() == Some("/_paracord/v1/guilds") {
        return Err(Error::forbidden("guilds are created by their owner's own server").into());
    }
    let uri: http::Uri = path
        .parse()
        .map_err(|_| Error::invalid_param("path is not a valid request path"))?;
    let body = match relayed.body {
        None => Vec::new(),
        Some(v) => serde_json::to_vec(&v).map_err(Error::from)?,
    };
    Ok(Relayed {
        user,
        method,
        uri,
        body,
    })
}
