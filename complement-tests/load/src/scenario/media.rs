//! `media`: N uploads of B bytes, their downloads, and thumbnails of a small
//! PNG.

use std::time::Instant;

use rand::Rng;

use crate::{
    client::{enc, Target, User},
    error::LoadError,
    report::Report,
    scenario::{bound, register::phase},
    stats::{Errors, Latencies},
};

/// Thumbnail requests timed per run.
const THUMBNAILS: usize = 10;
const MIB: f64 = 1024.0 * 1024.0;

/// A 64x32 red RGB PNG.
const RED_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x20, 0x08, 0x02, 0x00, 0x00, 0x00, 0x2d, 0xff, 0xe9,
    0xd3, 0x00, 0x00, 0x00, 0x34, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0xed, 0xcf, 0x41, 0x09, 0x00,
    0x00, 0x08, 0x00, 0xb1, 0xeb, 0x5f, 0x5a, 0x33, 0xf8, 0x14, 0x06, 0x2b, 0xb0, 0xa6, 0x5e, 0x4b,
    0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
    0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0xe0, 0x6a, 0x01, 0x32, 0xc3, 0xf8, 0x6a, 0x4f, 0xe7, 0xe3,
    0x57, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Parameters of `media`.
#[derive(Clone, Debug, clap::Args)]
pub struct MediaParams {
    /// Blobs to upload and download (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub uploads: usize,
    /// Bytes per blob (1..=10485760).
    #[arg(long, default_value_t = 256 * 1024)]
    pub size: usize,
}

impl MediaParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("uploads", self.uploads, 1, 1000)?;
        bound("size", self.size, 1, 10 * 1024 * 1024)
    }
}

/// Runs the media scenario.
pub async fn media(target: &Target, p: &MediaParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("media", run(target, p)).await
}

/// Blob `i`: the random `base` with its first bytes XORed with `i`, so the
/// blobs differ without holding all of them in memory.
fn blob(base: &[u8], i: usize) -> Vec<u8> {
    let mut data = base.to_vec();
    for (d, k) in data.iter_mut().zip(i.to_le_bytes()) {
        *d ^= k;
    }
    data
}

/// `(server, media id)` of an `mxc://` URI.
fn parse_mxc(uri: &str) -> Option<(String, String)> {
    let (server, id) = uri.strip_prefix("mxc://")?.split_once('/')?;
    Some((enc(server), enc(id)))
}

/// GETs `kind` (`download` or `thumbnail`) of `(server, id)` through the
/// authenticated `/_matrix/client/v1/media` API, or through the legacy
/// `/_matrix/media/v3` one once the server has answered 404 M_UNRECOGNIZED
/// (`legacy` remembers that for the rest of the phase).
async fn media_get(
    target: &Target,
    user: &User,
    kind: &str,
    media: &(String, String),
    query: &str,
    legacy: &mut bool,
) -> Result<Vec<u8>, LoadError> {
    let (server, id) = media;
    loop {
        let prefix = if *legacy {
            "/_matrix/media/v3"
        } else {
            "/_matrix/client/v1/media"
        };
        let path = format!("{prefix}/{kind}/{server}/{id}{query}");
        let (status, data) = target.get_bytes(user, &path, kind).await?;
        if (200..300).contains(&status) {
            return Ok(data);
        }
        let body: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
        if status == 404 && body["errcode"] == "M_UNRECOGNIZED" && !*legacy {
            *legacy = true;
            continue;
        }
        let mut text = body.to_string();
        text.truncate(300);
        return Err(LoadError::Status {
            what: kind.to_owned(),
            status,
            body: text,
        });
    }
}

async fn run(target: &Target, p: &MediaParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("media", target);
    report.param("uploads", p.uploads);
    report.param("size", p.size);
    let user = target
        .register_many(1, &deadline)
        .await?
        .pop()
        .ok_or_else(|| LoadError::Params("no user".into()))?;
    let png_uri = target.upload(&user, RED_PNG.to_vec(), "image/png").await?;
    let png = parse_mxc(&png_uri)
        .ok_or_else(|| LoadError::protocol("upload", format!("not an mxc URI: {png_uri}")))?;
    let mut base = vec![0u8; p.size];
    rand::thread_rng().fill(&mut base[..]);
    report.measuring();

    let mut errors = Errors::default();
    let mut timed_out = false;

    let mut up_lat = Latencies::default();
    let mut uploaded = Vec::with_capacity(p.uploads);
    let start = Instant::now();
    for i in 0..p.uploads {
        if deadline.expired() {
            timed_out = true;
            break;
        }
        let data = blob(&base, i);
        let t = Instant::now();
        match target.upload(&user, data, "application/octet-stream").await {
            Ok(uri) => {
                up_lat.push(t.elapsed());
                match parse_mxc(&uri) {
                    Some(m) => uploaded.push((i, m)),
                    None => errors.note(format!("upload: not an mxc URI: {uri}")),
                }
            }
            Err(e) => errors.record(&e),
        }
    }
    let up_wall = start.elapsed();
    report.count("uploads", up_lat.len());
    phase(&mut report, "upload", "upload_per_s", &up_lat, up_wall);

    let mut down_lat = Latencies::default();
    let mut down_bytes = 0usize;
    let mut legacy = false;
    let start = Instant::now();
    for (i, m) in &uploaded {
        if deadline.expired() {
            timed_out = true;
            break;
        }
        let t = Instant::now();
        match media_get(target, &user, "download", m, "", &mut legacy).await {
            Ok(data) => {
                down_lat.push(t.elapsed());
                down_bytes += data.len();
                if data != blob(&base, *i) {
                    errors.note(format!(
                        "download of blob {i}: {} bytes that differ from the {} uploaded",
                        data.len(),
                        p.size
                    ));
                }
            }
            Err(e) => errors.record(&e),
        }
    }
    let down_wall = start.elapsed();
    report.count("downloads", down_lat.len());
    report.count("bytes_downloaded", down_bytes);
    report.metric("download_s", down_wall.as_secs_f64());
    let secs = down_wall.as_secs_f64();
    if secs > 0.0 {
        report.metric("download_mib_per_s", down_bytes as f64 / MIB / secs);
    }
    report.latencies("download", &down_lat);

    let mut thumb_lat = Latencies::default();
    let mut legacy = false;
    let query = "?width=32&height=32&method=scale";
    for _ in 0..THUMBNAILS {
        if deadline.expired() {
            timed_out = true;
            break;
        }
        let t = Instant::now();
        match media_get(target, &user, "thumbnail", &png, query, &mut legacy).await {
            Ok(data) if !data.is_empty() => thumb_lat.push(t.elapsed()),
            Ok(_) => errors.note("thumbnail: empty body"),
            Err(e) => errors.record(&e),
        }
    }
    report.count("thumbnails", thumb_lat.len());
    report.latencies("thumbnail", &thumb_lat);
    Ok(report.finish(errors, timed_out))
}
