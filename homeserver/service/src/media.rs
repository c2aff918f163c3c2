//! The media repository: content stored on disk addressed by its SHA-256, metadata in
//! RocksDB, thumbnails made with the `image` crate and cached, and URL previews.
//!
//! Media of other servers is cached under `media/remote/`, one file per cached copy, within a
//! byte quota per origin server (`remote_cache`); thumbnails come in a fixed set of sizes and
//! are decoded under limits (`thumbnail`).

mod multipart;
mod remote_cache;
pub(crate) mod thumbnail;

use std::{io::Cursor, path::PathBuf, sync::Arc, time::Duration};

use paracord_core::{time::now_ms, Config, Error, ErrorKind, Result};
use paracord_storage::{Batch, Db, Table};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use self::{
    multipart::{multipart_boundary, FilePart, MultipartFile},
    remote_cache::CacheFile,
    thumbnail::{snap_thumbnail_size, THUMBNAIL_SIZES},
};

/// Media metadata as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MediaMeta {
    /// Hex SHA-256 of the content; `None` while an async upload is pending.
    pub hash: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub uploader: String,
    pub created: u64,
    /// For `/media/create`: when the reserved id expires unused.
    #[serde(default)]
    pub unused_expires_at: Option<u64>,
    /// For media of another server cached here (since the per-origin quota): its own file and
    /// when it was last used. Copies cached before that live in the content store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<CachedCopy>,
}

/// Where a cached copy of another server's media is and when it was last used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedCopy {
    pub origin: String,
    /// Relative to the media directory (`remote/ab/abc…`).
    pub file: String,
    /// Access stamp (microseconds, strictly increasing): the LRU order of the origin's copies.
    pub last_access: u64,
}

/// How to make a thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Crop,
    Scale,
}

const PENDING_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
const MAX_PREVIEW_BYTES: usize = 1024 * 1024;
/// Largest image a preview fetches.
const MAX_PREVIEW_IMAGE_BYTES: usize = 10 * 1024 * 1024;
/// Redirects a preview follows (each hop checked by the outbound guard).
const PREVIEW_MAX_REDIRECTS: usize = 5;
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Content types served inline; everything else is an attachment.
const INLINE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/apng",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/webm",
    "audio/mp4",
    "audio/aac",
    "audio/flac",
    "text/plain",
    "text/csv",
    "application/json",
];

pub struct Media {
    db: Arc<Db>,
    config: Arc<Config>,
    dir: PathBuf,
    /// Fetches pages and images for previews, through the outbound guard.
    preview_http: crate::outbound::GuardedClient,
    /// Held while the remote cache's accounting (per-origin bytes, LRU index) changes; holds
    /// the last access stamp handed out.
    cache_lock: parking_lot::Mutex<u64>,
    /// Permits for image decodes (`thumbnail_max_concurrent_decodes`).
    decodes: Arc<tokio::sync::Semaphore>,
}

/// Whether a content type may be shown inline by a browser (never HTML or SVG).
pub fn inline_safe(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&base.as_str())
}

impl Media {
    pub fn new(db: Arc<Db>, config: Arc<Config>) -> Result<Self> {
        let dir = config.data_dir.join("media");
        std::fs::create_dir_all(dir.join("thumbnails")).map_err(Error::internal)?;
        if config.url_preview_allow_private {
            tracing::warn!(
                "url_preview_allow_private is deprecated: previews may fetch any address; \
                 list the ranges they need in ip_range_allowlist or url_preview_ip_allowlist"
            );
        }
        let preview_http = crate::outbound::GuardedClient::new(
            crate::outbound::OutboundGuard::for_previews(&config),
            PREVIEW_MAX_REDIRECTS,
            PREVIEW_TIMEOUT,
        )
        .map_err(Error::internal)?;
        // Fetches that were cut short by a crash leave their partial files here.
        let _ = std::fs::remove_dir_all(dir.join(remote_cache::TMP_DIR));
        std::fs::create_dir_all(dir.join(remote_cache::TMP_DIR)).map_err(Error::internal)?;
        let decodes = Arc::new(tokio::sync::Semaphore::new(
            config.thumbnail_max_concurrent_decodes.max(1),
        ));
        Ok(Self {
            db,
            config,
            dir,
            preview_http,
            cache_lock: parking_lot::Mutex::new(0),
            decodes,
        })
    }

    fn new_id() -> String {
        crate::random::random_string(24)
    }

    fn content_path(&self, hash: &str) -> PathBuf {
        self.dir.join(hash.get(..2).unwrap_or("00")).join(hash)
    }

    pub fn meta(&self, media_id: &str) -> Result<Option<MediaMeta>> {
        match self.db.get(Table::MediaidMedia, media_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn put_meta(&self, media_id: &str, meta: &MediaMeta) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Table::MediaidMedia,
            media_id.as_bytes().to_vec(),
            serde_json::to_vec(meta)?,
        );
        Ok(self.db.write(batch)?)
    }

    fn check_size(&self, len: usize) -> Result<()> {
        if len > self.config.max_upload_bytes {
            return Err(Error::too_large(format!(
                "uploads are limited to {} bytes",
                self.config.max_upload_bytes
            )));
        }
        Ok(())
    }

    /// Stores content (once per distinct hash) and returns its hash.
    fn store(&self, bytes: &[u8]) -> Result<String> {
        let hash = hex::encode(Sha256::digest(bytes));
        let path = self.content_path(&hash);
        if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(Error::internal)?;
            }
            // Write then rename, so a crash never leaves a half-written file under the hash;
            // the file and its directory entry are on disk before the record that points at
            // them is written (with `sync_writes`), so a power loss cannot leave a record of
            // content that is not there.
            let tmp = path.with_extension(format!("tmp{}", Self::new_id()));
            {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp).map_err(Error::internal)?;
                file.write_all(bytes).map_err(Error::internal)?;
                if self.config.sync_writes {
                    file.sync_all().map_err(Error::internal)?;
                }
            }
            std::fs::rename(&tmp, &path).map_err(Error::internal)?;
            if self.config.sync_writes {
                if let Some(parent) = path.parent() {
                    std::fs::File::open(parent)
                        .and_then(|d| d.sync_all())
                        .map_err(Error::internal)?;
                }
            }
        }
        Ok(hash)
    }

    /// `/upload`: stores new media and returns its id.
    pub fn upload(
        &self,
        uploader: &UserId,
        bytes: &[u8],
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<String> {
        self.check_size(bytes.len())?;
        let hash = self.store(bytes)?;
        let id = Self::new_id();
        let meta = MediaMeta {
            hash: Some(hash),
            content_type,
            filename,
            size: bytes.len() as u64,
            uploader: uploader.to_string(),
            created: now_ms(),
            unused_expires_at: None,
            cached: None,
        };
        self.put_meta(&id, &meta)?;
        Ok(id)
    }

    /// `/media/create`: reserves an id for a later upload; returns it and its expiry.
    pub fn create_pending(&self, uploader: &UserId) -> Result<(String, u64)> {
        let id = Self::new_id();
        let expires = now_ms().saturating_add(PENDING_LIFETIME_MS);
        let meta = MediaMeta {
            hash: None,
            content_type: None,
            filename: None,
            size: 0,
            uploader: uploader.to_string(),
            created: now_ms(),
            unused_expires_at: Some(expires),
            cached: None,
        };
        self.put_meta(&id, &meta)?;
        Ok((id, expires))
    }

    /// `PUT /upload/{server}/{id}`: fills a reserved id, once, by the user who reserved it.
    pub fn upload_pending(
        &self,
        uploader: &UserId,
        media_id: &str,
        bytes: &[u8],
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()> {
        let mut meta = self
            .meta(media_id)?
            .ok_or_else(|| Error::not_found("unknown media id"))?;
        if meta.uploader != uploader.as_str() {
            return Err(Error::forbidden(
                "this media id was reserved by someone else",
            ));
        }
        if meta.hash.is_some() {
            return Err(Error::new(
                http::StatusCode::CONFLICT,
                ErrorKind::CannotOverwriteMedia,
                "media already uploaded",
            ));
        }
        if meta.unused_expires_at.is_some_and(|t| t < now_ms()) {
            return Err(Error::not_found("the reserved media id expired"));
        }
        self.check_size(bytes.len())?;
        meta.hash = Some(self.store(bytes)?);
        meta.content_type = content_type;
        meta.filename = filename;
        meta.size = bytes.len() as u64;
        meta.unused_expires_at = None;
        self.put_meta(media_id, &meta)
    }

    /// The key remote media is cached under (local ids never contain `/`).
    pub fn remote_key(server: &str, media_id: &str) -> String {
        format!("{server}/{media_id}")
    }

    /// The metadata and the file of a media id (local, or another server's cached here). Using
    /// a cached copy makes it the origin's most recently used one.
    pub fn locate(&self, media_id: &str) -> Result<(MediaMeta, PathBuf)> {
        let meta = self
            .meta(media_id)?
            .ok_or_else(|| Error::not_found("media not found"))?;
        let Some(hash) = &meta.hash else {
            return Err(Error::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::NotYetUploaded,
                "media not uploaded yet",
            ));
        };
        let path = match &meta.cached {
            Some(copy) => {
                self.touch(media_id)?;
                self.dir.join(&copy.file)
            }
            None => self.content_path(hash),
        };
        Ok((meta, path))
    }

    /// Fetches an http(s) URL for a preview through the outbound guard (its preview rules),
    /// following up to [`PREVIEW_MAX_REDIRECTS`] redirects, each checked: the body (at most
    /// `max` bytes) and its `Content-Type`. Failures reach the client as one generic error.
    async fn fetch_for_preview(
        &self,
        url: &reqwest::Url,
        max: usize,
    ) -> Result<(Vec<u8>, Option<String>)> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_param(
                "only http and https URLs can be previewed",
            ));
        }
        let fetch_failed = |e: &dyn std::fmt::Display| {
            tracing::info!(%url, "a preview fetch failed: {e}");
            crate::outbound::unreachable()
        };
        let resp = self
            .preview_http
            .request(reqwest::Method::GET, url.clone())
            .map_err(|e| fetch_failed(&e))?
            .send()
            .await
            .map_err(|e| fetch_failed(&e))?;
        if !resp.status().is_success() {
            return Err(Error::not_found(format!(
                "the page answered {}",
                resp.status()
            )));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_failed(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > max {
                body.truncate(max);
                break;
            }
        }
        Ok((body, content_type))
    }

    /// `/preview_url`: fetches an http(s) page (through the outbound guard) and
    /// reads its title, description and image from OpenGraph tags or `<title>`. The image is
    /// fetched too and kept as media of this server, so the preview names it with an `mxc://`
    /// URI, its size (`matrix:image:size`) and dimensions, as clients expect.
    pub async fn preview_url(&self, requester: &UserId, url: &str) -> Result<Value> {
        if !self.config.url_preview_enabled {
            return Err(Error::forbidden("URL previews are disabled on this server"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| Error::invalid_param("invalid url"))?;
        let (body, _) = self.fetch_for_preview(&parsed, MAX_PREVIEW_BYTES).await?;
        let mut preview = parse_preview(&String::from_utf8_lossy(&body));
        let image = preview["og:image"]
            .as_str()
            .and_then(|i| parsed.join(i).ok());
        if let Some(image_url) = image {
            match self.preview_image(requester, &image_url).await {
                Ok(fields) => {
                    if let (Some(p), Some(f)) = (preview.as_object_mut(), fields.as_object()) {
                        p.extend(f.clone());
                    }
                }
                Err(e) => tracing::debug!(url = %image_url, "a preview image was not fetched: {e}"),
            }
        }
        Ok(preview)
    }

    /// An image at an http(s) URL, fetched through the previews' outbound guard (with their
    /// size limit) and stored as uploaded by `uploader`: its `mxc://` URI.
    pub async fn import_image(&self, uploader: &UserId, url: &str) -> Result<String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| Error::invalid_param("invalid url"))?;
        let max = self.config.max_upload_bytes.min(MAX_PREVIEW_IMAGE_BYTES);
        let (bytes, content_type) = self.fetch_for_preview(&parsed, max + 1).await?;
        if bytes.len() > max {
            return Err(Error::too_large("the image is too large"));
        }
        if !content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("image/"))
            || image_dimensions(&bytes).is_none()
        {
            return Err(Error::invalid_param("not an image"));
        }
        let id = self.upload(uploader, &bytes, content_type, None)?;
        Ok(format!("mxc://{}/{id}", self.config.server_name))
    }

    /// A preview's image, fetched and stored: `og:image` (mxc), `og:image:type`,
    /// `matrix:image:size` and, when it decodes, `og:image:width`/`og:image:height`.
    async fn preview_image(&self, requester: &UserId, url: &reqwest::Url) -> Result<Value> {
        let max = self.config.max_upload_bytes.min(MAX_PREVIEW_IMAGE_BYTES);
        let (bytes, content_type) = self.fetch_for_preview(url, max + 1).await?;
        if bytes.len() > max {
            return Err(Error::too_large("the image is too large"));
        }
        if !content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("image/"))
        {
            return Err(Error::invalid_param("not an image"));
        }
        let dimensions = image_dimensions(&bytes);
        let id = self.upload(requester, &bytes, content_type.clone(), None)?;
        let mut out = json!({
            "og:image": format!("mxc://{}/{id}", self.config.server_name),
            "matrix:image:size": bytes.len(),
        });
        if let Some(ct) = content_type {
            out["og:image:type"] = json!(ct);
        }
        if let Some((w, h)) = dimensions {
            out["og:image:width"] = json!(w);
            out["og:image:height"] = json!(h);
        }
        Ok(out)
    }
}

/// The width and height of an image, when its format is recognised from its first bytes and
/// its header reads.
pub fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
}

/// `og:*` and `<title>` of an HTML page, as preview JSON.
pub fn parse_preview(html: &str) -> Value {
    let mut out = serde_json::Map::new();
    let lower = html.to_ascii_lowercase();
    let mut rest = 0;
    while let Some(start) = lower[rest..].find("<meta") {
        let tag_start = rest + start;
        let Some(end) = lower[tag_start..].find('>') else {
            break;
        };
        let tag = &html[tag_start..tag_start + end];
        rest = tag_start + end;
        let prop = attr(tag, "property").or_else(|| attr(tag, "name"));
        if let (Some(p), Some(c)) = (prop, attr(tag, "content")) {
            if p.starts_with("og:") && !out.contains_key(&p) {
                out.insert(p, json!(c));
            }
        }
    }
    if !out.contains_key("og:title") {
        if let (Some(s), Some(e)) = (lower.find("<title>"), lower.find("</title>")) {
            if e > s + 7 {
                out.insert("og:title".into(), json!(html[s + 7..e].trim()));
            }
        }
    }
    Value::Object(out)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let pos = lower.find(&format!("{name}="))?;
    let after = &tag[pos + name.len() + 1..];
    let quote = after.chars().next()?;
    if quote == '"' || quote == '\'' {
        let inner = &after[1..];
        inner.find(quote).map(|e| inner[..e].to_owned())
    } else {
        Some(
            after
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_read_opengraph_and_title() {
        let html = r#"<html><head><title> Fallback </title><meta property="og:title" content="OG Title"><meta name='og:description' content='Desc'></head></html>"#;
        let v = parse_preview(html);
        assert_eq!(v["og:title"], "OG Title");
        assert_eq!(v["og:description"], "Desc");
        assert_eq!(
            parse_preview("<title>Only title</title>")["og:title"],
            "Only title"
        );
        assert_eq!(parse_preview("<meta property=\"og:title\""), json!({}));
    }

    #[test]
    fn html_and_svg_are_never_inline() {
        assert!(!inline_safe("text/html"));
        assert!(!inline_safe("image/svg+xml"));
        assert!(!inline_safe("application/javascript"));
        assert!(inline_safe("image/png"));
        assert!(inline_safe("text/plain; charset=utf-8"));
    }
}
