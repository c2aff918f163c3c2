//! Thumbnails: requested sizes snap to a fixed set (so a client asking for thousands of sizes
//! gets at most `THUMBNAIL_SIZES.len()` thumbnails per method and image), images are decoded
//! under `image::Limits` (a decompression bomb is a 413, not an out-of-memory kill), at most
//! `thumbnail_max_concurrent_decodes` at a time, and each thumbnail is made once and cached.

use std::{
    io::{BufRead, BufReader, Cursor, Seek},
    path::{Path, PathBuf},
    sync::Arc,
};

use paracord_core::{Config, Error, Result};

use super::{Media, ThumbnailMethod};

/// The sizes thumbnails are made in, smallest first: the ones the spec recommends servers
/// produce (32×32 and 96×96 crops, 320×240, 640×480 and 800×600 scales). Any method can be
/// asked for at any of them.
pub const THUMBNAIL_SIZES: &[(u32, u32)] =
    &[(32, 32), (96, 96), (320, 240), (640, 480), (800, 600)];

/// The size a `width`×`height` request is served at: the smallest of [`THUMBNAIL_SIZES`] at
/// least that large both ways (the spec lets a server answer with a larger thumbnail), or the
/// largest when none is.
pub fn snap_thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    THUMBNAIL_SIZES
        .iter()
        .copied()
        .find(|&(w, h)| w >= width && h >= height)
        .or_else(|| THUMBNAIL_SIZES.last().copied())
        .unwrap_or((800, 600))
}

fn method_name(method: ThumbnailMethod) -> &'static str {
    match method {
        ThumbnailMethod::Crop => "crop",
        ThumbnailMethod::Scale => "scale",
    }
}

impl Media {
    /// Where the thumbnail of content `hash` at a snapped size is cached.
    pub(super) fn thumbnail_path(
        &self,
        hash: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
    ) -> PathBuf {
        self.dir.join("thumbnails").join(format!(
            "{hash}-{width}x{height}-{}.png",
            method_name(method)
        ))
    }

    fn decode_limits(&self) -> image::Limits {
        decode_limits(&self.config)
    }

    /// A thumbnail (PNG) of image media at the snapped size of `width`×`height`, made once
    /// per content, size and method and cached on disk.
    pub async fn thumbnail(
        &self,
        media_id: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
    ) -> Result<Vec<u8>> {
        let (meta, source) = self.locate(media_id)?;
        let hash = meta.hash.unwrap_or_default();
        let (w, h) = snap_thumbnail_size(width, height);
        let cached = self.thumbnail_path(&hash, w, h, method);
        if let Ok(bytes) = tokio::fs::read(&cached).await {
            return Ok(bytes);
        }
        let permit = Arc::clone(&self.decodes)
            .acquire_owned()
            .await
            .map_err(Error::internal)?;
        // Made by another request while this one waited?
        if let Ok(bytes) = tokio::fs::read(&cached).await {
            return Ok(bytes);
        }
        let limits = self.decode_limits();
        let tmp = cached.with_extension(format!("tmp{}", Self::new_id()));
        tokio::task::spawn_blocking(move || {
            // The permit goes with the decode, which runs on even if the request is dropped.
            let _permit = permit;
            let out = make_thumbnail(&source, w, h, method, limits)?;
            if std::fs::write(&tmp, &out).is_ok() {
                let _ = std::fs::rename(&tmp, &cached);
            }
            Ok(out)
        })
        .await
        .map_err(Error::internal)?
    }
}

/// The limits images are decoded under: `thumbnail_max_source_side` pixels each way and
/// `thumbnail_max_decode_bytes` of memory.
pub(crate) fn decode_limits(config: &Config) -> image::Limits {
    let side = config.thumbnail_max_source_side;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(config.thumbnail_max_decode_bytes);
    limits
}

/// Decodes `source` under `limits` and makes its `width`×`height` thumbnail, never larger
/// than the image itself.
fn make_thumbnail(
    source: &Path,
    width: u32,
    height: u32,
    method: ThumbnailMethod,
    limits: image::Limits,
) -> Result<Vec<u8>> {
    let file = std::fs::File::open(source).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::not_found("media not found"),
        _ => Error::internal(format!("media file: {e}")),
    })?;
    thumbnail_of(BufReader::new(file), width, height, method, limits)
}

/// [`make_thumbnail`] of an image read from `source`.
pub(crate) fn thumbnail_of(
    source: impl BufRead + Seek,
    width: u32,
    height: u32,
    method: ThumbnailMethod,
    limits: image::Limits,
) -> Result<Vec<u8>> {
    let mut reader = image::ImageReader::new(source)
        .with_guessed_format()
        .map_err(|_| Error::invalid_param("media is not an image"))?;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::too_large("the image is too large to thumbnail"),
        _ => Error::invalid_param("media is not an image that can be thumbnailed"),
    })?;
    let (sw, sh) = (img.width(), img.height());
    if sw == 0 || sh == 0 {
        // A header may declare an empty image (a GIF's screen 0 pixels wide, say): there is
        // nothing to scale, and a thumbnail of it would be made up.
        return Err(Error::invalid_param(
            "media is not an image that can be thumbnailed",
        ));
    }
    let thumb = match method {
        // Never upscale: a thumbnail is at most the original's size.
        ThumbnailMethod::Scale => img.thumbnail(width.min(sw), height.min(sh)),
        ThumbnailMethod::Crop => img.resize_to_fill(
            width.min(sw),
            height.min(sh),
            image::imageops::FilterType::Triangle,
        ),
    };
    let mut out = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::internal(format!("thumbnail encoding: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_sizes_snap_to_the_fixed_set() {
        assert_eq!(snap_thumbnail_size(1, 1), (32, 32));
        assert_eq!(snap_thumbnail_size(32, 32), (32, 32));
        assert_eq!(snap_thumbnail_size(33, 20), (96, 96));
        assert_eq!(snap_thumbnail_size(100, 100), (320, 240));
        assert_eq!(snap_thumbnail_size(101, 101), (320, 240));
        assert_eq!(snap_thumbnail_size(320, 241), (640, 480));
        assert_eq!(snap_thumbnail_size(10, 470), (640, 480));
        assert_eq!(snap_thumbnail_size(10, 500), (800, 600));
        assert_eq!(snap_thumbnail_size(801, 10), (800, 600));
        assert_eq!(snap_thumbnail_size(u32::MAX, u32::MAX), (800, 600));
        let mut distinct: Vec<_> = (0..2000)
            .flat_map(|w| [(w, w), (w, 2000 - w)])
            .map(|(w, h)| snap_thumbnail_size(w, h))
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), THUMBNAIL_SIZES.len());
    }

    /// A PNG header declaring `width`×`height` RGBA pixels, with an empty image stream.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for b in bytes {
                crc ^= u32::from(*b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &[0x78, 0x01]);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn images_past_the_limits_are_too_large_not_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = |side, alloc| {
            let mut l = image::Limits::default();
            l.max_image_width = Some(side);
            l.max_image_height = Some(side);
            l.max_alloc = Some(alloc);
            l
        };
        let decode = |w, h, limits| {
            let path = dir.path().join(format!("{w}x{h}.png"));
            std::fs::write(&path, png_header(w, h)).unwrap();
            make_thumbnail(&path, 32, 32, ThumbnailMethod::Scale, limits)
        };
        for (w, h) in [(100_000, 100_000), (8193, 1), (1, 8193)] {
            let err = decode(w, h, limits(8192, 1 << 30)).unwrap_err();
            assert_eq!(err.classify().1["errcode"], "M_TOO_LARGE", "{w}x{h}");
        }
        // 4000×4000 RGBA is 64 MB decoded: past a 32 MiB allocation limit.
        let err = decode(4000, 4000, limits(8192, 32 << 20)).unwrap_err();
        assert_eq!(err.classify().1["errcode"], "M_TOO_LARGE");
        // Within the limits, the (empty) image stream is what fails.
        let err = decode(64, 64, limits(8192, 32 << 20)).unwrap_err();
        assert_eq!(err.classify().1["errcode"], "M_INVALID_PARAM");
    }
}
