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
use futures::StreamExt;
use http::{header, HeaderValue, StatusCode};
use paracord_core::Error;
use paracord_service::{
    accounts::Identity,
    media::{inline_safe, Media, MediaMeta, ThumbnailMethod},
    ratelimit::Limit,
};
use ruma::{
    api::{
        client::{
            authenticated_media::{get_media_config, get_media_preview},
            media::{self as legacy_media, create_content, create_mxc_uri},
        },
        federation::authenticated_media::{
            get_content, get_content_thumbnail, Content, ContentMetadata, FileOrLocation,
        },
    },
    http_headers::{ContentDisposition, ContentDispositionType},
    MilliSecondsSinceUnixEpoch, OwnedMxcUri, UInt,
};

use crate::params::Params;
use crate::{
    ruma_wrapper::{caller_ip, identify},
    ApiError, ApiResult, AppState, RumaResponse,
};

/// The caller: a user's access token, or an application service's `as_token` (with
/// `?user_id=`) as on every other client endpoint.
async fn authenticate(
    state: &AppState,
    parts: &http::request::Parts,
) -> Result<Identity, ApiError> {
    let (id, _) = identify(state, parts, caller_ip(state, parts)).await?;
    Ok(id)
}

/// Whether a read of another server's media may fetch it from there. The legacy
/// unauthenticated routes may not (as with Synapse's `enable_authenticated_media`): they serve
/// only what is already here, so anyone on the internet cannot make this server fetch and
/// store arbitrary remote media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    Fetch,
    CachedOnly,
}

/// What the legacy unauthenticated routes may do with other servers' media: serve what is
/// cached, or (`legacy_media_fetches_remote`, like Synapse's `enable_authenticated_media:
/// false`) fetch it too.
fn legacy(state: &AppState) -> Remote {
    if state.config.legacy_media_fetches_remote {
        Remote::Fetch
    } else {
        Remote::CachedOnly
    }
}

/// The key media is stored under here: its id for local media; for another server's, its
/// cached copy, fetched over federation the first time (when `remote` allows).
async fn media_key(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    remote: Remote,
) -> Result<String, ApiError> {
    // Cached copies are keyed `server/id`: an id with a `/` (a decoded `%2F`) must not name one.
    local_id(media_id)?;
    if server_name == state.config.server_name {
        return Ok(media_id.to_owned());
    }
    let server = ruma::OwnedServerName::try_from(server_name)
        .map_err(|_| Error::invalid_param("not a server name"))?;
    let key = Media::remote_key(server_name, media_id);
    if state.media.meta(&key)?.is_some() {
        return Ok(key);
    }
    if remote == Remote::CachedOnly {
        return Err(Error::not_found(
            "media not found (media of other servers is fetched through authenticated media only)",
        )
        .into());
    }
    state.queries.fetch_media(&server, media_id).await?;
    Ok(key)
}

/// Size of the pieces a fetched body is written to disk in.
const FETCH_CHUNK: usize = 64 * 1024;

/// A media id other servers may ask for: this server's own media only, never a cached copy of
/// a third server's (keyed `server/id`).
fn local_id(media_id: &str) -> Result<&str, ApiError> {
    if media_id.contains('/') {
        return Err(Error::not_found("media not found").into());
    }
    Ok(media_id)
}

/// A file read from disk in pieces of [`FETCH_CHUNK`] bytes.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(FETCH_CHUNK);
        let n = file.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some((buf.freeze(), file)))
    })
}

/// A file streamed from disk as a response body.
fn file_body(file: tokio::fs::File) -> Body {
    Body::from_stream(file_stream(file))
}

/// Opens the file of a media key: the file and its length. A file gone between the lookup and
/// the open (evicted from the cache) is a 404.
async fn open_media(
    state: &AppState,
    key: &str,
) -> Result<(MediaMeta, tokio::fs::File, u64), ApiError> {
    let (meta, path) = state.media.locate(key)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError(Error::not_found("media not found")),
            _ => ApiError(Error::internal(format!("media file: {e}"))),
        })?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError(Error::internal(format!("media file: {e}"))))?
        .len();
    Ok((meta, file, len))
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
///
/// The `multipart/mixed` answer is written here rather than by ruma, so the file streams from
/// disk instead of being read into memory first.
pub(crate) async fn federation_download_route(
    State(state): State<AppState>,
    req: crate::ruma_wrapper::Ruma<get_content::v1::Request>,
) -> ApiResult<Response> {
    let (meta, file, len) = open_media(&state, local_id(&req.body.media_id)?).await?;
    let boundary = paracord_service::random::random_string(32);
    let content_type: String = meta
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\nContent-Disposition: {}\r\n\r\n",
        disposition(meta.filename.as_deref())
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let total = (head.len() as u64)
        .saturating_add(len)
        .saturating_add(tail.len() as u64);
    let stream = futures::stream::iter([Ok(bytes::Bytes::from(head))])
        .chain(file_stream(file))
        .chain(futures::stream::iter([Ok(bytes::Bytes::from(tail))]));
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    Ok(response)
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
    let png = state
        .media
        .thumbnail(local_id(&b.media_id)?, w, h, method)
        .await?;
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
) -> ApiResult<RumaResponse<create_content::v3::Response>> {
    let (parts, body) = req.into_parts();
    let id = authenticate(&state, &parts).await?;
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let bytes = body_of(&state, body).await?;
    let media_id = state.media.upload(
        &id.user_id,
        &bytes,
        content_type_of(&parts),
        q.get("filename").cloned(),
    )?;
    Ok(RumaResponse(create_content::v3::Response::new(mxc(
        &state, &media_id,
    ))))
}

/// `POST /_matrix/media/v1/create` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixmediav1create
pub(crate) async fn create_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<RumaResponse<create_mxc_uri::v1::Response>> {
    let (parts, _) = req.into_parts();
    let id = authenticate(&state, &parts).await?;
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let (media_id, expires) = state.media.create_pending(&id.user_id)?;
    let mut response = create_mxc_uri::v1::Response::new(mxc(&state, &media_id));
    response.unused_expires_at = Some(MilliSecondsSinceUnixEpoch(
        UInt::try_from(expires).unwrap_or(UInt::MAX),
    ));
    Ok(RumaResponse(response))
}

/// The `mxc://` URI of this server's media `media_id`.
fn mxc(state: &AppState, media_id: &str) -> OwnedMxcUri {
    OwnedMxcUri::from(format!("mxc://{}/{media_id}", state.config.server_name))
}

/// The answer of `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: an empty object.
/// (ruma's `create_content_async::v3::Response` is the same, but it can only be built by
/// ruma itself: it is `non_exhaustive` and has no constructor.)
#[derive(serde::Serialize)]
pub(crate) struct UploadedAnswer {}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixmediav3uploadservernamemediaid
pub(crate) async fn upload_pending_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Json<UploadedAnswer>> {
    let (parts, body) = req.into_parts();
    let id = authenticate(&state, &parts).await?;
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
    Ok(Json(UploadedAnswer {}))
}

fn media_response(
    body: Body,
    len: Option<u64>,
    content_type: Option<&str>,
    filename: Option<&str>,
) -> Response {
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
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
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
    remote: Remote,
) -> Result<Response, ApiError> {
    let key = media_key(state, server_name, media_id, remote).await?;
    let (meta, file, len) = open_media(state, &key).await?;
    let name = file_name.or(meta.filename.as_deref());
    Ok(media_response(
        file_body(file),
        Some(len),
        meta.content_type.as_deref(),
        name,
    ))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediadownloadservernamemediaid
pub(crate) async fn download_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts).await?;
    download(&state, &server_name, &media_id, None, Remote::Fetch).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub(crate) async fn download_named_route(
    State(state): State<AppState>,
    Params((server_name, media_id, file_name)): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts).await?;
    download(
        &state,
        &server_name,
        &media_id,
        Some(&file_name),
        Remote::Fetch,
    )
    .await
}

/// Legacy unauthenticated `GET /_matrix/media/v3/download/{serverName}/{mediaId}`: local
/// media and other servers' media already cached here, never a fetch.
pub(crate) async fn legacy_download_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
) -> ApiResult<Response> {
    download(&state, &server_name, &media_id, None, legacy(&state)).await
}

/// Legacy unauthenticated `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}`:
/// what is here only, as [`legacy_download_route`].
pub(crate) async fn legacy_download_named_route(
    State(state): State<AppState>,
    Params((server_name, media_id, file_name)): Params<(String, String, String)>,
) -> ApiResult<Response> {
    download(
        &state,
        &server_name,
        &media_id,
        Some(&file_name),
        legacy(&state),
    )
    .await
}

async fn thumbnail(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    q: &HashMap<String, String>,
    remote: Remote,
) -> Result<Response, ApiError> {
    let key = media_key(state, server_name, media_id, remote).await?;
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
    let png = state.media.thumbnail(&key, w, h, method).await?;
    let len = png.len() as u64;
    Ok(media_response(
        Body::from(png),
        Some(len),
        Some("image/png"),
        None,
    ))
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediathumbnailservernamemediaid
pub(crate) async fn thumbnail_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts).await?;
    thumbnail(&state, &server_name, &media_id, &q, Remote::Fetch).await
}

/// Legacy unauthenticated `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`: of media
/// that is here only, as [`legacy_download_route`].
pub(crate) async fn legacy_thumbnail_route(
    State(state): State<AppState>,
    Params((server_name, media_id)): Params<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    thumbnail(&state, &server_name, &media_id, &q, legacy(&state)).await
}

/// `GET /_matrix/client/v1/media/config` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediaconfig
pub(crate) async fn config_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<RumaResponse<get_media_config::v1::Response>> {
    let (parts, _) = req.into_parts();
    authenticate(&state, &parts).await?;
    Ok(RumaResponse(get_media_config::v1::Response::new(
        upload_size(&state),
    )))
}

/// The largest upload, as the media config answers it.
fn upload_size(state: &AppState) -> UInt {
    UInt::try_from(state.config.max_upload_bytes as u64).unwrap_or(UInt::MAX)
}

/// Legacy `GET /_matrix/media/v3/config`.
#[allow(deprecated)]
pub(crate) async fn legacy_config_route(
    State(state): State<AppState>,
) -> RumaResponse<legacy_media::get_media_config::v3::Response> {
    RumaResponse(legacy_media::get_media_config::v3::Response::new(
        upload_size(&state),
    ))
}

/// `GET /_matrix/client/v1/media/preview_url` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1mediapreview_url
pub(crate) async fn preview_url_route(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> ApiResult<RumaResponse<get_media_preview::v1::Response>> {
    let (parts, _) = req.into_parts();
    let id = authenticate(&state, &parts).await?;
    state.ratelimit.check(Limit::Send, id.user_id.as_str())?;
    let url = q
        .get("url")
        .ok_or_else(|| ApiError(Error::missing_param("missing url")))?;
    let preview = state.media.preview_url(&id.user_id, url).await?;
    let mut response = get_media_preview::v1::Response::new();
    response.data = Some(serde_json::value::to_raw_value(&preview).map_err(Error::internal)?);
    Ok(RumaResponse(response))
}
