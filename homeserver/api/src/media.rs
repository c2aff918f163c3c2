//! The media repository endpoints: authenticated media (`/_matrix/client/v1/media/...`), uploads
//! (`/_matrix/media/v3/upload`, `/_matrix/media/v1/create`) and the legacy `/_matrix/media/v3`
//! reads. Bodies are raw bytes, so these are plain axum handlers that authenticate with the
//! same token rules as every other endpoint.

use std::collections::HashMap;

use axum::{
    body::Body,
    extract::{Query, Request, State},
    response::{IntoResponse, Response},
    Json,
};
use http::{header, HeaderValue, StatusCode};
use paracord_core::Error;
use paracord_service::{
    accounts::Identity,
    media::{inline_safe, Media, ThumbnailMethod},
    ratelimit::Limit,
};
use ruma::{
    api::federation::authenticated_media::{
        get_content, get_content_thumbnail, Content, ContentMetadata, FileOrLocation,
    },
    http_headers::{ContentDisposition, ContentDispositionType},
};
use serde_json::{json, Value};

use crate::params::Params;
use crate::{ruma_wrapper::access_token, ApiError, ApiResult, AppState};

fn authenticate(state: &AppState, parts: &http::request::Parts) -> Result<Identity, ApiError> {
    let token = access_token(parts).ok_or_else(|| ApiError(Error::missing_token()))?;
    Ok(state.accounts.authenticate(&token)?)
}

/// The key media is stored under here: its id for local media; for another server's, its
/// cached copy, fetched over federation the first time.
async fn media_key(
    state: &AppState,
    server_name: &str,
    media_id: &str,
) -> Result<String, ApiError> {
    if server_name == state.config.server_name {
        return Ok(media_id.to_owned());
    }
    let server = ruma::OwnedServerName::try_from(server_name)
        .map_err(|_| Error::invalid_param("not a server name"))?;
    let key = Media::remote_key(server_name, media_id);
    if state.media.meta(&key)?.is_some() {
        return Ok(key);
    }
    let path = format!(
        "/_matrix/federation/v1/media/download/{}",
        crate::percent_encode(media_id)
    );
    let response = paracord_service::federation::request::signed_request(
        &state.federation,
        &state.keys,
        &state.config.server_name,
        &server,
        http::Method::GET,
        &path,
        None,
    )
    .await?;
    let (file, content_type, filename) = if response.status.is_success() {
        let content_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        file_part(&content_type, &response.body).ok_or_else(|| {
            Error::new(
                StatusCode::BAD_GATEWAY,
                paracord_core::ErrorKind::Unknown,
                format!("{server} sent media that is not a multipart answer with a file"),
            )
        })?
    } else {
        // Servers from before authenticated media (Matrix 1.11) serve it only on the
        // legacy client path, unauthenticated.
        match legacy_download(state, &server, media_id).await? {
            Some(found) => found,
            None => {
                let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
                return Err(paracord_service::federation::request::remote_error(
                    &server,
                    response.status,
                    &body,
                )
                .into());
            }
        }
    };
    state
        .media
        .store_remote(server_name, media_id, &file, content_type, filename)?;
    Ok(key)
}

/// Remote media from the legacy `/_matrix/media/v3/download/{serverName}/{mediaId}` of its
/// server: `(bytes, content type, file name)`, or `None` when that fails too.
async fn legacy_download(
    state: &AppState,
    server: &ruma::ServerName,
    media_id: &str,
) -> Result<Option<(Vec<u8>, Option<String>, Option<String>)>, ApiError> {
    let path = format!(
        "/_matrix/media/v3/download/{}/{}?allow_remote=false",
        crate::percent_encode(server.as_str()),
        crate::percent_encode(media_id)
    );
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri(path)
        .body(Vec::new())
        .map_err(|e| ApiError(Error::internal(format!("media request: {e}"))))?;
    let Ok(response) = state.federation.send(server, request).await else {
        return Ok(None);
    };
    if !response.status.is_success() {
        return Ok(None);
    }
    let header_str = |name: header::HeaderName| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let filename = header_str(header::CONTENT_DISPOSITION)
        .and_then(|d| ContentDisposition::try_from(d.as_bytes()).ok())
        .and_then(|d| d.filename);
    Ok(Some((
        response.body,
        header_str(header::CONTENT_TYPE),
        filename,
    )))
}

/// The file of a federation media answer (`multipart/mixed`: a JSON metadata part, then the
/// file with its own `Content-Type` and `Content-Disposition`): its bytes, type and name.
/// `None` when the answer is not such a multipart body (or redirects with `Location`).
fn file_part(content_type: &str, body: &[u8]) -> Option<(Vec<u8>, Option<String>, Option<String>)> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let find = |from: usize| -> Option<usize> {
        body.get(from..)?
            .windows(d.len())
            .position(|w| w == d)
            .map(|i| i + from)
    };
    let first = find(0)?;
    let second = find(first + d.len())?;
    let start = second + d.len();
    let end = find(start)?;
    // The part, between its CRLF after the delimiter and the CRLF before the next one.
    let part = body.get(start..end)?;
    let part = part.strip_prefix(b"\r\n").unwrap_or(part);
    let part = part.strip_suffix(b"\r\n").unwrap_or(part);
    let split = part.windows(4).position(|w| w == b"\r\n\r\n")?;
    let headers = std::str::from_utf8(&part[..split]).ok()?;
    let file = part[split + 4..].to_vec();
    let mut ct = None;
    let mut name = None;
    for line in headers.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => ct = Some(v.trim().to_owned()),
            "content-disposition" => {
                name = ContentDisposition::try_from(v.trim().as_bytes())
                    .ok()
                    .and_then(|d| d.filename)
            }
            "location" => return None,
            _ => {}
        }
    }
    Some((file, ct, name))
}

/// A ruma federation media answer (multipart) as an axum response.
fn multipart(content: Content) -> Result<Response, ApiError> {
    use ruma::api::OutgoingResponseExt;
    let response =
        get_content::v1::Response::new(ContentMetadata::new(), FileOrLocation::File(content))
            .try_into_http_response::<Vec<u8>>()
            .map_err(|e| ApiError(Error::internal(format!("media answer: {e}"))))?;
    let (parts, mut body) = response.into_parts();
    // ruma ends the body with `--boundary`, not the closing delimiter `--boundary--` that
    // RFC 2046 requires (and other servers' parsers insist on).
    let boundary = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| {
            ct.split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("boundary="))
        })
        .map(|b| format!("--{}", b.trim_matches('"')));
    if boundary.is_some_and(|b| body.ends_with(b.as_bytes())) {
        body.extend_from_slice(b"--\r\n");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn disposition(filename: Option<&str>) -> ContentDisposition {
    let mut d = ContentDisposition::new(ContentDispositionType::Attachment);
    d.filename = filename.map(str::to_owned);
    d
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1mediadownloadmediaid
pub(crate) async fn federation_download_route(
    State(state): State<AppState>,
    req: crate::ruma_wrapper::Ruma<get_content::v1::Request>,
) -> ApiResult<Response> {
    let (meta, bytes) = state.media.download(&req.body.media_id)?;
    multipart(Content::new(
        bytes,
        meta.content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        disposition(meta.filename.as_deref()),
    ))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1mediathumbnailmediaid
pub(crate) async fn federation_thumbnail_route(
    State(state): State<AppState>,
    req: crate::ruma_wrapper::Ruma<get_content_thumbnail::v1::Request>,
) -> ApiResult<Response> {
    let b = &req.body;
    let method = match b.method.as_ref().map(|m| m.as_str()) {
        Some("crop") => ThumbnailMethod::Crop,
        _ => ThumbnailMethod::Scale,
    };
    let (w, h) = (
        u32::try_from(u64::from(b.width)).unwrap_or(u32::MAX),
        u32::try_from(u64::from(b.height)).unwrap_or(u32::MAX),
    );
    let media = state.media.clone();
    let id = b.media_id.clone();
    let png = tokio::task::spawn_blocking(move || media.thumbnail(&id, w, h, method))
        .await
        .map_err(|e| ApiError(Error::internal(e)))??;
    multipart(Content::new(png, "image/png".to_owned(), disposition(None)))
}

async fn body_of(state: &AppState, body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = state.config.max_upload_bytes;
    axum::body::to_bytes(body, limit)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| {
            ApiError(Error::too_large(format!(
                "uploads are limited to {limit} bytes"
            )))
        })
}

fn content_type_of(parts: &http::request::Parts) -> Option<String> {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /_matrix/media/v3/upload` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixmediav3upload
pub(crate) async fn upload_route(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let id = authenticate(&state, &parts)?;
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let bytes = body_of(&state, body).await?;
    let media_id = state.media.upload(
        &id.user_id,
        &bytes,
        content_type_of(&parts),
        q.get("filename").cloned(),
    )?;
    Ok(Json(
        json!({ "content_uri": format!("mxc://{}/{media_id}", state.config.server_name) }),
    ))
}

/// `POST /_matrix/media/v1/create` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixmediav1create
pub(crate) async fn create_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let id = authenticate(&state, &parts)?;
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let (media_id, expires) = state.media.create_pending(&id.user_id)?;
    Ok(Json(json!({
        "content_uri": format!("mxc://{}/{media_id}", state.config.server_name),
        "unused_expires_at": expires,
    })))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixmediav3uploadservernamemediaid
pub(crate) async fn upload_pending_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let id = authenticate(&state, &parts)?;
    if server_name != state.config.server_name {
        return Err(
            Error::forbidden("media ids of other servers cannot be uploaded to here").into(),
        );
    }
    let bytes = body_of(&state, body).await?;
    state.media.upload_pending(
        &id.user_id,
        &media_id,
        &bytes,
        content_type_of(&parts),
        q.get("filename").cloned(),
    )?;
    Ok(Json(json!({})))
}

fn media_response(bytes: Vec<u8>, content_type: Option<&str>, filename: Option<&str>) -> Response {
    let ct = content_type.unwrap_or("application/octet-stream");
    let disposition = if inline_safe(ct) {
        "inline"
    } else {
        "attachment"
    };
    let disposition = match filename {
        // RFC 6266 with RFC 8187 encoding, so any file name is safe in the header.
        Some(name) => {
            let encoded: String = name
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{disposition}; filename*=utf-8''{encoded}")
        }
        None => disposition.to_owned(),
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    resp
}

async fn download(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    file_name: Option<&str>,
) -> Result<Response, ApiError> {
    let key = media_key(state, server_name, media_id).await?;
    let (meta, bytes) = state.media.download(&key)?;
    let name = file_name.or(meta.filename.as_deref());
    Ok(media_response(bytes, meta.content_type.as_deref(), name))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediadownloadservernamemediaid
pub(crate) async fn download_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts)?;
    download(&state, &server_name, &media_id, None).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub(crate) async fn download_named_route(
    State(state): State<AppState>,
    Params((server_name, media_id, file_name)): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts)?;
    download(&state, &server_name, &media_id, Some(&file_name)).await
}

/// Legacy unauthenticated `GET /_matrix/media/v3/download/{serverName}/{mediaId}`.
pub(crate) async fn legacy_download_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
) -> ApiResult<Response> {
    download(&state, &server_name, &media_id, None).await
}

/// Legacy unauthenticated `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}`.
pub(crate) async fn legacy_download_named_route(
    State(state): State<AppState>,
    Params((server_name, media_id, file_name)): Params<(String, String, String)>,
) -> ApiResult<Response> {
    download(&state, &server_name, &media_id, Some(&file_name)).await
}

async fn thumbnail(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let key = media_key(state, server_name, media_id).await?;
    let dim = |k: &str| -> Result<u32, ApiError> {
        q.get(k)
            .ok_or_else(|| ApiError(Error::missing_param(format!("missing {k}"))))?
            .parse::<u32>()
            .map_err(|_| {
                ApiError(Error::invalid_param(format!(
                    "{k} must be a positive integer"
                )))
            })
    };
    let (w, h) = (dim("width")?, dim("height")?);
    let method = match q.get("method").map(String::as_str) {
        None | Some("scale") => ThumbnailMethod::Scale,
        Some("crop") => ThumbnailMethod::Crop,
        Some(_) => return Err(Error::invalid_param("method must be crop or scale").into()),
    };
    let media = state.media.clone();
    let png = tokio::task::spawn_blocking(move || media.thumbnail(&key, w, h, method))
        .await
        .map_err(|e| ApiError(Error::internal(e)))??;
    Ok(media_response(png, Some("image/png"), None))
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediathumbnailservernamemediaid
pub(crate) async fn thumbnail_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts)?;
    thumbnail(&state, &server_name, &media_id, &q).await
}

/// Legacy unauthenticated `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`.
pub(crate) async fn legacy_thumbnail_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    thumbnail(&state, &server_name, &media_id, &q).await
}

/// `GET /_matrix/client/v1/media/config` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediaconfig
pub(crate) async fn config_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts)?;
    Ok(Json(
        json!({ "m.upload.size": state.config.max_upload_bytes }),
    ))
}

/// Legacy `GET /_matrix/media/v3/config`.
pub(crate) async fn legacy_config_route(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.upload.size": state.config.max_upload_bytes }))
}

/// `GET /_matrix/client/v1/media/preview_url` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediapreview_url
pub(crate) async fn preview_url_route(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let id = authenticate(&state, &parts)?;
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let url = q
        .get("url")
        .ok_or_else(|| ApiError(Error::missing_param("missing url")))?;
    Ok(Json(state.media.preview_url(&id.user_id, url).await?))
}
