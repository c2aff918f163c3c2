//! The bridge between axum and ruma: an extractor that parses a ruma request and authenticates
//! it, a response wrapper, and a route adapter that registers every path of a ruma endpoint.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request},
    handler::Handler,
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use bytes::BytesMut;
use http::StatusCode;
use paracord_core::{Error, ErrorKind};
use paracord_service::accounts::Identity;
use ruma::api::{
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
        NoAuthentication,
    },
    path_builder::PathBuilder,
    IncomingRequest, IncomingRequestExt, Metadata, OutgoingResponse, OutgoingResponseExt,
};

use crate::{ApiError, AppState};

/// How an endpoint authenticates.
pub trait AuthRequirement {
    const REQUIRED: bool;
    const OPTIONAL: bool;
    /// A federation request signed by its origin server (`X-Matrix`).
    const SERVER_SIGNED: bool = false;
}
impl AuthRequirement for ruma::api::federation::authentication::ServerSignatures {
    const REQUIRED: bool = false;
    const OPTIONAL: bool = false;
    const SERVER_SIGNED: bool = true;
}
impl AuthRequirement for AccessToken {
    const REQUIRED: bool = true;
    const OPTIONAL: bool = false;
}
impl AuthRequirement for AccessTokenOptional {
    const REQUIRED: bool = false;
    const OPTIONAL: bool = true;
}
impl AuthRequirement for AppserviceToken {
    const REQUIRED: bool = true;
    const OPTIONAL: bool = false;
}
impl AuthRequirement for AppserviceTokenOptional {
    const REQUIRED: bool = false;
    const OPTIONAL: bool = true;
}
impl AuthRequirement for NoAuthentication {
    const REQUIRED: bool = false;
    const OPTIONAL: bool = false;
}
impl AuthRequirement for NoAccessToken {
    const REQUIRED: bool = false;
    const OPTIONAL: bool = false;
}

/// A parsed ruma request with the identity that sent it.
pub struct Ruma<T> {
    pub body: T,
    /// The authenticated user, when the endpoint takes a token and one was given.
    pub ident: Option<Identity>,
    pub client_ip: Option<IpAddr>,
    /// The server that signed a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    /// `?ts=` of a request made with an appservice's token: the `origin_server_ts` its event
    /// gets (ignored for anyone else).
    pub ts: Option<u64>,
    /// The request body as sent (checked to be JSON, or empty).
    raw_body: bytes::Bytes,
}

impl<T> Ruma<T> {
    /// Whether the request came with no body at all (ruma reads an empty body as `{}`).
    pub fn body_is_empty(&self) -> bool {
        self.raw_body.is_empty()
    }

    /// A field of the body's JSON object as sent, for what ruma's request type does not
    /// carry (a field that left the spec, an unstable name) or carries with its defaults
    /// filled in. Parsed on demand: most handlers never ask.
    pub fn raw_field(&self, name: &str) -> Option<serde_json::Value> {
        self.body_object()?.remove(name)
    }

    /// The body's JSON object, for the few endpoints that keep a client's own fields (a
    /// join's member event content). `None` when the body is empty or not an object.
    pub fn body_object(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_slice(&self.raw_body) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    /// The identity of an endpoint that requires authentication.
    pub fn user(&self) -> Result<&Identity, ApiError> {
        self.ident
            .as_ref()
            .ok_or_else(|| ApiError(Error::missing_token()))
    }
}

pub(crate) fn access_token(req: &http::request::Parts) -> Option<String> {
    if let Some(h) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(t) = h.strip_prefix("Bearer ") {
            return Some(t.trim().to_owned());
        }
    }
    req.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token=").map(|t| t.to_owned()))
    })
}

fn path_param_count<T: Metadata>() -> usize {
    T::PATH_BUILDER
        .all_paths()
        .next()
        .map(|p| p.matches('{').count())
        .unwrap_or(0)
}

/// A request whose caller is authenticated and whose path is read, but whose parsing into
/// the ruma type may have failed: for the endpoints that must refuse a caller before they
/// look at the parameters (a forgotten room's `/messages` is `403` whatever they are).
pub struct Attempt<T> {
    /// The authenticated user, when the endpoint takes a token and one was given.
    pub ident: Option<Identity>,
    /// The path parameters, percent-decoded, in order.
    pub path: Vec<String>,
    /// The parsed request, or why it could not be parsed.
    pub request: Result<Ruma<T>, ApiError>,
}

impl<T> FromRequest<AppState> for Attempt<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthRequirement,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let read = Read::from_request::<T>(req, state).await?;
        let ident = read.ident.clone();
        let path = read.path_args.clone();
        Ok(Self {
            ident,
            path,
            request: read.parse(),
        })
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// last address of `X-Forwarded-For` that is not itself a trusted proxy (the header's
/// earlier entries are whatever the client chose to send, so they are not believed).
pub(crate) fn client_address(
    trusted: &[String],
    peer: IpAddr,
    headers: &http::HeaderMap,
) -> IpAddr {
    use paracord_core::config::{cidr_contains, parse_cidr};
    let is_trusted = |ip: IpAddr| {
        trusted
            .iter()
            .filter_map(|c| parse_cidr(c))
            .any(|range| cidr_contains(range, ip))
    };
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for item in value.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A hop we cannot read: stop believing the header there.
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// A request read up to its ruma parsing: path, authentication and body.
struct Read {
    parts: http::request::Parts,
    path_args: Vec<String>,
    bytes: bytes::Bytes,
    ident: Option<Identity>,
    client_ip: Option<IpAddr>,
    origin: Option<ruma::OwnedServerName>,
    ts: Option<u64>,
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthRequirement,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Read::from_request::<T>(req, state).await?.parse()
    }
}

impl Read {
    async fn from_request<T>(req: Request, state: &AppState) -> Result<Self, ApiError>
    where
        T: IncomingRequest + Send,
        T::Authentication: AuthRequirement,
    {
        let (mut parts, body) = req.into_parts();
        let Path(mut path_args): Path<Vec<String>> = Path::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError(Error::invalid_param(format!("bad path: {e}"))))?;
        // Routes registered without a trailing optional part (`/state/{type}`) mean "".
        while path_args.len() < path_param_count::<T>() {
            path_args.push(String::new());
        }
        let client_ip = caller_ip(state, &parts);
        let limit = if <T::Authentication as AuthRequirement>::SERVER_SIGNED {
            request_limit(&state.config)
        } else {
            state.config.max_request_bytes
        };
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            ApiError(Error::too_large(format!(
                "request body is larger than {limit} bytes"
            )))
        })?;

        let mut origin = None;
        if <T::Authentication as AuthRequirement>::SERVER_SIGNED {
            origin = Some(signed_origin(state, &parts, &bytes).await?);
        }

        let mut ident = None;
        let mut ts = None;
        let requirement_required = <T::Authentication as AuthRequirement>::REQUIRED;
        let requirement_optional = <T::Authentication as AuthRequirement>::OPTIONAL;
        if requirement_required || requirement_optional {
            match identify(state, &parts, client_ip).await {
                Ok((id, massaged_ts)) => {
                    ident = Some(id);
                    ts = massaged_ts;
                }
                Err(e) if requirement_required || access_token(&parts).is_some() => return Err(e),
                Err(_) => {}
            }
        }

        check_body_json(&parts.method, &bytes)?;
        Ok(Self {
            parts,
            path_args,
            bytes,
            ident,
            client_ip,
            origin,
            ts,
        })
    }

    fn parse<T: IncomingRequest>(self) -> Result<Ruma<T>, ApiError> {
        let Self {
            parts,
            path_args,
            bytes,
            ident,
            client_ip,
            origin,
            ts,
        } = self;
        let body = ruma_request(parts, &path_args, &bytes)?;
        Ok(Ruma {
            body,
            ident,
            client_ip,
            origin,
            ts,
            raw_body: bytes,
        })
    }
}

/// The client's address for a request ([`client_address`] of the connection's peer).
pub(crate) fn caller_ip(state: &AppState, parts: &http::request::Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_address(&state.config.trusted_proxies, c.0.ip(), &parts.headers))
}

/// The caller of a client request, the one place an access token becomes an identity: a
/// user's access token (and its device is marked as seen from `client_ip`), or an
/// application service's `as_token` acting as its sender or the user and device that
/// `?user_id=` and `?device_id=` name (with the `?ts=` it asks for). No token is
/// `M_MISSING_TOKEN`.
pub(crate) async fn identify(
    state: &AppState,
    parts: &http::request::Parts,
    client_ip: Option<IpAddr>,
) -> Result<(Identity, Option<u64>), ApiError> {
    let token = access_token(parts).ok_or_else(|| ApiError(Error::missing_token()))?;
    if state.appservices.by_as_token(&token).is_some() {
        return appservice_identity(state, &token, parts).await;
    }
    let id = state.accounts.authenticate(&token)?;
    state.accounts.touch_device(
        &id.user_id,
        id.device_id.as_str(),
        client_ip.map(|i| i.to_string()),
    );
    Ok((id, None))
}

/// The identity of a request made with an application service's `as_token`: its sender, or
/// the user `?user_id=` names when that user is one of the appservice's (its namespace, any
/// exclusivity, or the sender) and exists — except on `/register`, which makes the user —
/// acting as its device `?device_id=` when given (it must exist: `400 M_UNKNOWN_DEVICE`).
/// Also `?ts=`, the timestamp the appservice wants its event to carry.
async fn appservice_identity(
    state: &AppState,
    token: &str,
    parts: &http::request::Parts,
) -> Result<(Identity, Option<u64>), ApiError> {
    let Some(appservice) = state.appservices.by_as_token(token) else {
        return Err(ApiError(Error::unknown_token(false)));
    };
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // The sender exists as soon as its appservice is used.
    if state.accounts.account(&appservice.sender)?.is_none() {
        state
            .accounts
            .ensure_system_account(&appservice.sender, appservice.sender.localpart())
            .await?;
    }
    let user_id = match param("user_id") {
        Some(u) => {
            let user = ruma::OwnedUserId::try_from(u.as_str())
                .map_err(|_| ApiError(Error::invalid_param("user_id is not a user id")))?;
            if !appservice.owns_user(&user) || !state.accounts.is_local(&user) {
                return Err(ApiError(Error::forbidden(
                    "the user is not in this application service's namespace",
                )));
            }
            let registering = parts.uri.path().ends_with("/register");
            let exists = state
                .accounts
                .account(&user)?
                .is_some_and(|a| !a.deactivated);
            if !exists && !registering {
                return Err(ApiError(Error::forbidden(
                    "the application service has not registered this user",
                )));
            }
            user
        }
        None => appservice.sender.clone(),
    };
    // `?device_id=` (spec v1.17, MSC3202): act as that device of the user, which must exist.
    let device_id = match param("device_id") {
        Some(d) => {
            if state.accounts.device(&user_id, &d)?.is_none() {
                return Err(ApiError(Error::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::UnknownDevice,
                    "the user has no such device",
                )));
            }
            ruma::OwnedDeviceId::from(d)
        }
        None => appservice.device_id().into(),
    };
    let ts = param("ts").and_then(|t| t.parse::<u64>().ok());
    Ok((
        Identity {
            user_id,
            device_id,
            admin: false,
            appservice: Some(appservice.id().to_owned()),
        },
        ts,
    ))
}

/// The server whose `X-Matrix` signature over the request (method, URI, destination and
/// body) verifies; the one place a request's `X-Matrix` authorization is read and checked.
pub(crate) async fn signed_origin(
    state: &AppState,
    parts: &http::request::Parts,
    bytes: &[u8],
) -> Result<ruma::OwnedServerName, ApiError> {
    let mut signed = http::Request::new(bytes.to_vec());
    *signed.method_mut() = parts.method.clone();
    *signed.uri_mut() = parts.uri.clone();
    *signed.headers_mut() = parts.headers.clone();
    Ok(state.remote_keys.verify_request(&signed).await?)
}

/// A request body that is not JSON is `M_NOT_JSON`, unless it is empty or the body of a
/// `GET` (which is ignored). Checked without building the JSON: ruma parses it next.
pub(crate) fn check_body_json(method: &http::Method, bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.is_empty() || method == http::Method::GET {
        return Ok(());
    }
    // Skipping a value has no depth limit in serde_json, parsing one into a type does (128):
    // a body nested deeper is refused here, whatever ruma's type would skip of it.
    if nesting_exceeds(bytes, MAX_JSON_NESTING) {
        return Err(ApiError(Error::not_json(format!(
            "request body is not valid JSON: nested deeper than {MAX_JSON_NESTING} levels"
        ))));
    }
    // Skipping a string does not check its UTF-8 either.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError(Error::not_json(format!(
            "request body is not valid UTF-8: {e}"
        ))));
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => Ok(()),
        Err(e) => Err(ApiError(Error::not_json(format!(
            "request body is not valid JSON: {e}"
        )))),
    }
}

/// How deep a request body's arrays and objects may nest (serde_json's own limit).
const MAX_JSON_NESTING: usize = 128;

/// Whether the arrays and objects of a JSON text nest deeper than `limit` (brackets inside
/// strings do not count).
fn nesting_exceeds(bytes: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a request (its head, percent-decoded path parameters and body) into the ruma
/// request type `T`.
pub(crate) fn ruma_request<T: IncomingRequest>(
    parts: http::request::Parts,
    path_args: &[String],
    bytes: &[u8],
) -> Result<T, ApiError> {
    let body_for_ruma: &[u8] = if bytes.is_empty() && parts.method != http::Method::GET {
        b"{}"
    } else {
        bytes
    };
    let http_req = http::Request::from_parts(parts, body_for_ruma);
    let path_refs: Vec<&str> = path_args.iter().map(String::as_str).collect();
    T::try_from_http_request(http_req, &path_refs).map_err(|e| {
        use ruma::api::error::{DeserializationError, FromHttpRequestError};
        match e {
            // A required query parameter (such as `?version=`) that is absent.
            FromHttpRequestError::Deserialization(DeserializationError::Query(q))
                if q.to_string().starts_with("missing field") =>
            {
                ApiError(Error::missing_param(format!("invalid request: {q}")))
            }
            FromHttpRequestError::MethodMismatch { .. } => ApiError(Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorKind::Unrecognized,
                "method not allowed",
            )),
            other => ApiError(Error::bad_json(format!("invalid request: {other}"))),
        }
    })
}

/// A ruma response as an HTTP response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Body::from(body.freeze()))
            }
            Err(e) => {
                ApiError(Error::internal(format!("response serialization: {e}"))).into_response()
            }
        }
    }
}

/// A ruma response with keys added where ruma leaves out an empty or absent value that the
/// community's clients and test suite (Complement) expect to find: the answer is ruma's,
/// read back and given the keys by `patch`. For small answers only (it is parsed again).
pub struct Patched<T> {
    pub response: T,
    pub patch: fn(&mut serde_json::Value),
}

impl<T: OutgoingResponse> IntoResponse for Patched<T> {
    fn into_response(self) -> Response {
        let patched = self
            .response
            .try_into_http_response::<Vec<u8>>()
            .map_err(|e| Error::internal(format!("response serialization: {e}")))
            .and_then(|resp| {
                let (parts, body) = resp.into_parts();
                let mut json: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::internal(format!("response serialization: {e}")))?;
                (self.patch)(&mut json);
                let body = serde_json::to_vec(&json)
                    .map_err(|e| Error::internal(format!("response serialization: {e}")))?;
                Ok(Response::from_parts(parts, Body::from(body)))
            });
        match patched {
            Ok(resp) => resp,
            Err(e) => ApiError(e).into_response(),
        }
    }
}

/// A room directory page, hierarchy or summary whose rooms all say their `join_rule`: ruma
/// leaves out `public` (the spec's default), where Synapse writes it and Complement reads it.
pub fn public_join_rules<T: OutgoingResponse>(response: T) -> Patched<T> {
    Patched {
        response,
        patch: |answer| fill_join_rule(answer, 0),
    }
}

/// Gives every room object (one with `room_id` and `num_joined_members`) under `v` a
/// `join_rule`, `public` when it has none.
fn fill_join_rule(v: &mut serde_json::Value, depth: usize) {
    if depth > 4 {
        return;
    }
    match v {
        serde_json::Value::Object(map) => {
            if map.contains_key("room_id") && map.contains_key("num_joined_members") {
                map.entry("join_rule")
                    .or_insert_with(|| serde_json::Value::from("public"));
            }
            for child in map.values_mut() {
                fill_join_rule(child, depth + 1);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                fill_join_rule(item, depth + 1);
            }
        }
        _ => {}
    }
}

impl<T> From<T> for RumaResponse<T> {
    fn from(t: T) -> Self {
        Self(t)
    }
}

fn method_filter(m: &http::Method) -> MethodFilter {
    match *m {
        http::Method::GET => MethodFilter::GET,
        http::Method::POST => MethodFilter::POST,
        http::Method::PUT => MethodFilter::PUT,
        http::Method::DELETE => MethodFilter::DELETE,
        http::Method::PATCH => MethodFilter::PATCH,
        http::Method::HEAD => MethodFilter::HEAD,
        _ => MethodFilter::OPTIONS,
    }
}

/// Registers `handler` on every path of the ruma endpoint `T`.
pub trait RouterExt {
    fn ruma<T: Metadata, H: Handler<X, AppState>, X: 'static>(self, handler: H) -> Self;
    /// Also registers extra paths (such as the `/state/{type}` form without a state key).
    fn ruma_with<T: Metadata, H: Handler<X, AppState>, X: 'static>(
        self,
        extra: &[&'static str],
        handler: H,
    ) -> Self;
}

impl RouterExt for Router<AppState> {
    fn ruma<T: Metadata, H: Handler<X, AppState>, X: 'static>(self, handler: H) -> Self {
        self.ruma_with::<T, H, X>(&[], handler)
    }

    fn ruma_with<T: Metadata, H: Handler<X, AppState>, X: 'static>(
        mut self,
        extra: &[&'static str],
        handler: H,
    ) -> Self {
        let filter = method_filter(&T::METHOD);
        for path in T::PATH_BUILDER.all_paths().chain(extra.iter().copied()) {
            self = self.route(path, on(filter, handler.clone()));
        }
        self
    }
}

/// The largest body of a request from another server: a transaction of 50 PDUs of 64 KiB
/// each (the most the spec allows) and its EDUs fits, whatever `max_request_bytes` (which
/// bounds clients' requests) says.
pub(crate) fn request_limit(config: &paracord_core::Config) -> usize {
    const FEDERATION_REQUEST_BYTES: usize = 6 * 1024 * 1024;
    config.max_request_bytes.max(FEDERATION_REQUEST_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nesting_exceeds(deep(128).as_bytes(), 128));
        assert!(nesting_exceeds(deep(129).as_bytes(), 128));
        let in_string = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(!nesting_exceeds(in_string.as_bytes(), 128));
        let post = http::Method::POST;
        assert!(check_body_json(&post, deep(129).as_bytes()).is_err());
        assert!(check_body_json(&post, deep(100).as_bytes()).is_ok());
        assert!(check_body_json(&post, b"{").is_err());
        assert!(check_body_json(&post, b"").is_ok());
        assert!(check_body_json(&http::Method::GET, b"{").is_ok());
    }

    fn headers(xff: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Issue 15 item 9: X-Forwarded-For is believed only from a trusted proxy, and only as far
    // as the hops it and other trusted proxies added.
    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".to_owned()];
        let h = headers(&["1.2.3.4"]);
        // From an untrusted peer the header is the client's own word: ignored.
        assert_eq!(client_address(&trusted, ip("5.6.7.8"), &h), ip("5.6.7.8"));
        assert_eq!(client_address(&[], ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // From the proxy: the address it saw.
        assert_eq!(client_address(&trusted, ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // A client that sends its own header: the proxy appends the real one, which wins.
        let h = headers(&["9.9.9.9, 1.2.3.4"]);
        assert_eq!(client_address(&trusted, ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // Two trusted proxies in a row, headers split over two lines.
        let h = headers(&["1.2.3.4", "10.0.0.2"]);
        assert_eq!(client_address(&trusted, ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // Garbage or no header: the peer.
        assert_eq!(
            client_address(&trusted, ip("10.0.0.1"), &headers(&["nonsense"])),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(&trusted, ip("10.0.0.1"), &headers(&[])),
            ip("10.0.0.1")
        );
    }
}
