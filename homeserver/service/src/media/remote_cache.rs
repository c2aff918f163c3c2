//! The cache of other servers' media: each origin server gets
//! `remote_media_cache_bytes_per_origin` bytes; storing past that evicts the origin's least
//! recently used copies. A fetched body goes to a temporary file as it arrives (capped, hashed
//! on the way, fsynced), which is renamed into `remote/` and only then recorded.
//!
//! Accounting lives in two tables, changed in one batch with the media metadata and under
//! [`Media::cache_lock`]: `originaccess_media` (`origin 0xFF stamp media_id` → size, so a
//! prefix scan lists an origin's copies least recently used first) and `origin_cachebytes`
//! (`origin` → bytes cached).

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use paracord_core::{time::now_ms, Error, ErrorKind, Result};
use paracord_storage::{key::decode_u64, Batch, Table};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{CachedCopy, Media, MediaMeta, ThumbnailMethod, THUMBNAIL_SIZES};

/// Partial downloads, emptied at start.
pub(super) const TMP_DIR: &str = "tmp";
/// Cached copies of other servers' media.
const REMOTE_DIR: &str = "remote";
/// How many LRU entries one scan reads while looking for copies to evict.
const EVICTION_PAGE: usize = 64;

paracord_storage::key! {
    /// A key of `originaccess_media`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct AccessKey<'a> {
        origin: str => prefix,
        stamp: u64,
        media_id: last_str,
    }
}

/// A body of another server's media being written to disk: at most `cap` bytes, hashed as it
/// is written. Dropped unfinished, its file is removed.
pub struct CacheFile {
    file: tokio::fs::File,
    tmp: PathBuf,
    hasher: Sha256,
    len: u64,
    cap: u64,
    kept: bool,
}

impl CacheFile {
    /// Appends `chunk`; refuses (and the fetch fails) once the body passes the cap.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let len = self.len.saturating_add(chunk.len() as u64);
        if len > self.cap {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                ErrorKind::TooLarge,
                format!(
                    "the remote media is larger than this server serves ({} bytes)",
                    self.cap
                ),
            ));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(Error::internal)?;
        self.len = len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes and fsyncs the file: `(its path, hex SHA-256, size)`. The caller renames it.
    async fn finish(mut self) -> Result<(PathBuf, String, u64)> {
        self.file.flush().await.map_err(Error::internal)?;
        self.file.sync_all().await.map_err(Error::internal)?;
        self.kept = true;
        let hash = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok((self.tmp.clone(), hash, self.len))
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Microseconds since the epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Flushes a directory entry change (a rename into `dir`) to disk; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Media {
    /// The most bytes one remote body may have: the upload limit, and never more than the
    /// origin's whole cache.
    fn remote_cap(&self) -> u64 {
        (self.config.max_upload_bytes as u64).min(self.config.remote_media_cache_bytes_per_origin)
    }

    /// A new temporary file for a body being fetched from another server.
    pub async fn cache_file(&self) -> Result<CacheFile> {
        let tmp = self
            .dir
            .join(TMP_DIR)
            .join(format!("fetch-{}", Self::new_id()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(Error::internal)?;
        Ok(CacheFile {
            file,
            tmp,
            hasher: Sha256::new(),
            len: 0,
            cap: self.remote_cap(),
            kept: false,
        })
    }

    /// Bytes of `origin`'s media cached here.
    fn cached_bytes(&self, origin: &str) -> Result<u64> {
        match self.db.get(Table::OriginCachebytes, origin.as_bytes())? {
            Some(v) => Ok(decode_u64(&v)?),
            None => Ok(0),
        }
    }

    /// The next access stamp: now in microseconds, or one past the last stamp if the clock
    /// has not moved (or went back), so the LRU order is the order of use.
    fn next_stamp(last: &mut u64) -> u64 {
        *last = now_us().max(last.saturating_add(1));
        *last
    }

    /// Records that `key` (another server's cached media) was just used.
    pub(super) fn touch(&self, key: &str) -> Result<()> {
        let mut last = self.cache_lock.lock();
        let Some(mut meta) = self.meta(key)? else {
            return Ok(());
        };
        let Some((_, media_id)) = key.split_once('/') else {
            return Ok(());
        };
        let size = meta.size;
        let Some(copy) = meta.cached.as_mut() else {
            return Ok(());
        };
        let mut batch = Batch::new();
        batch.delete(
            Table::OriginaccessMedia,
            AccessKey {
                origin: &copy.origin,
                stamp: copy.last_access,
                media_id,
            }
            .encode(),
        );
        copy.last_access = Self::next_stamp(&mut last);
        batch.put(
            Table::OriginaccessMedia,
            AccessKey {
                origin: &copy.origin,
                stamp: copy.last_access,
                media_id,
            }
            .encode(),
            size.to_be_bytes().to_vec(),
        );
        batch.put(
            Table::MediaidMedia,
            key.as_bytes().to_vec(),
            serde_json::to_vec(&meta)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// Caches `file`, fetched from `origin` as `media_id`: moves it under `remote/`, evicts
    /// the origin's least recently used copies until it fits the origin's quota and records
    /// it, all in one batch.
    pub async fn commit_remote(
        &self,
        origin: &str,
        media_id: &str,
        file: CacheFile,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()> {
        let (tmp, hash, size) = file.finish().await?;
        let name = Self::new_id();
        let relative = format!("{REMOTE_DIR}/{}/{name}", name.get(..2).unwrap_or("00"));
        let path = self.dir.join(&relative);
        let renamed = async {
            let parent = path
                .parent()
                .ok_or_else(|| Error::internal("a cache path without a directory"))?;
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(Error::internal)?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(Error::internal)?;
            sync_dir(parent);
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = renamed {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let meta = MediaMeta {
            hash: Some(hash),
            content_type,
            filename,
            size,
            uploader: origin.to_owned(),
            created: now_ms(),
            unused_expires_at: None,
            cached: Some(CachedCopy {
                origin: origin.to_owned(),
                file: relative,
                last_access: 0,
            }),
        };
        let evicted = match self.record_remote(origin, media_id, meta) {
            Ok(evicted) => evicted,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        };
        for old in evicted {
            self.remove_copy(&old);
        }
        Ok(())
    }

    /// Records `meta` (a new copy of `origin`'s `media_id`) after evicting, least recently
    /// used first, as many of the origin's copies as its quota needs. Returns the evicted (or
    /// replaced) copies, whose files the caller removes once the batch is written.
    fn record_remote(
        &self,
        origin: &str,
        media_id: &str,
        mut meta: MediaMeta,
    ) -> Result<Vec<MediaMeta>> {
        let quota = self.config.remote_media_cache_bytes_per_origin;
        let size = meta.size;
        if size > quota {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                ErrorKind::TooLarge,
                "the remote media is larger than this server caches for its origin",
            ));
        }
        let key = Self::remote_key(origin, media_id);
        let mut last = self.cache_lock.lock();
        let mut batch = Batch::new();
        let mut used = self.cached_bytes(origin)?;
        let mut evicted = Vec::new();
        // A copy fetched again (two fetches racing, say) replaces the one there.
        if let Some(old) = self.meta(&key)? {
            if let Some(copy) = &old.cached {
                batch.delete(
                    Table::OriginaccessMedia,
                    AccessKey {
                        origin,
                        stamp: copy.last_access,
                        media_id,
                    }
                    .encode(),
                );
                used = used.saturating_sub(old.size);
                evicted.push(old);
            }
        }
        let prefix = AccessKey::prefix(origin);
        let mut lower = prefix.clone();
        'scan: while used.saturating_add(size) > quota {
            let page = self.db.scan(
                Table::OriginaccessMedia,
                &prefix,
                &lower,
                None,
                false,
                EVICTION_PAGE,
            )?;
            if page.is_empty() {
                break;
            }
            for (k, v) in &page {
                lower = k.to_vec();
                lower.push(0);
                let entry = AccessKey::decode(k)?;
                if entry.media_id == media_id {
                    continue;
                }
                let entry_size = decode_u64(v)?;
                batch.delete(Table::OriginaccessMedia, k.to_vec());
                let victim = Self::remote_key(origin, entry.media_id);
                if let Some(old) = self.meta(&victim)? {
                    evicted.push(old);
                }
                batch.delete(Table::MediaidMedia, victim.into_bytes());
                used = used.saturating_sub(entry_size);
                tracing::debug!(origin, media_id = entry.media_id, "evicted from the cache");
                if used.saturating_add(size) <= quota {
                    break 'scan;
                }
            }
        }
        let stamp = Self::next_stamp(&mut last);
        if let Some(copy) = meta.cached.as_mut() {
            copy.last_access = stamp;
        }
        batch.put(
            Table::OriginaccessMedia,
            AccessKey {
                origin,
                stamp,
                media_id,
            }
            .encode(),
            size.to_be_bytes().to_vec(),
        );
        batch.put(
            Table::OriginCachebytes,
            origin.as_bytes().to_vec(),
            used.saturating_add(size).to_be_bytes().to_vec(),
        );
        batch.put(
            Table::MediaidMedia,
            key.into_bytes(),
            serde_json::to_vec(&meta)?,
        );
        self.db.write(batch)?;
        Ok(evicted)
    }

    /// Removes an evicted copy's file and the thumbnails made of it (made again on demand if
    /// the same content is still here under another id).
    fn remove_copy(&self, old: &MediaMeta) {
        if let Some(copy) = &old.cached {
            let _ = std::fs::remove_file(self.dir.join(&copy.file));
        }
        if let Some(hash) = &old.hash {
            for (w, h) in THUMBNAIL_SIZES {
                for method in [ThumbnailMethod::Crop, ThumbnailMethod::Scale] {
                    let _ = std::fs::remove_file(self.thumbnail_path(hash, *w, *h, method));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use paracord_core::Config;
    use paracord_storage::Db;

    use super::*;

    fn media(dir: &Path, quota: u64) -> Media {
        let db = Arc::new(Db::open(&dir.join("db")).unwrap());
        let config = Config {
            data_dir: dir.to_path_buf(),
            remote_media_cache_bytes_per_origin: quota,
            ..Config::default()
        };
        Media::new(db, Arc::new(config)).unwrap()
    }

    async fn cache(media: &Media, origin: &str, id: &str, bytes: &[u8]) -> Result<()> {
        let mut file = media.cache_file().await?;
        file.write(bytes).await?;
        media.commit_remote(origin, id, file, None, None).await
    }

    fn cached(media: &Media, origin: &str, id: &str) -> bool {
        media
            .meta(&Media::remote_key(origin, id))
            .unwrap()
            .is_some()
    }

    #[test]
    fn access_keys_round_trip_and_sort_by_stamp() {
        let a = AccessKey {
            origin: "a.example",
            stamp: 2,
            media_id: "zzz",
        };
        let b = AccessKey {
            origin: "a.example",
            stamp: 256,
            media_id: "aaa",
        };
        assert_eq!(AccessKey::decode(&a.encode()).unwrap(), a);
        assert!(a.encode() < b.encode(), "older stamps sort first");
        assert!(a.encode().starts_with(&AccessKey::prefix("a.example")));
        assert!(!a.encode().starts_with(&AccessKey::prefix("a.exampl")));
    }

    #[tokio::test]
    async fn the_least_recently_used_copy_of_an_origin_is_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let media = media(dir.path(), 250);
        cache(&media, "a.example", "one", &[1; 100]).await.unwrap();
        cache(&media, "a.example", "two", &[2; 100]).await.unwrap();
        // Another origin's copies neither count nor get evicted.
        cache(&media, "b.example", "other", &[3; 200])
            .await
            .unwrap();
        // "one" is used, so "two" is now the least recently used.
        let (_, path) = media
            .locate(&Media::remote_key("a.example", "one"))
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), vec![1; 100]);
        let (_, two_path) = media
            .locate(&Media::remote_key("a.example", "two"))
            .unwrap();
        media.touch(&Media::remote_key("a.example", "one")).unwrap();
        cache(&media, "a.example", "three", &[4; 100])
            .await
            .unwrap();
        assert!(cached(&media, "a.example", "one"));
        assert!(!cached(&media, "a.example", "two"), "the LRU copy went");
        assert!(!two_path.exists(), "and its file with it");
        assert!(cached(&media, "a.example", "three"));
        assert!(cached(&media, "b.example", "other"));
        assert_eq!(media.cached_bytes("a.example").unwrap(), 200);
        assert_eq!(media.cached_bytes("b.example").unwrap(), 200);
    }

    #[tokio::test]
    async fn a_copy_fetched_again_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let media = media(dir.path(), 1000);
        cache(&media, "a.example", "one", &[1; 100]).await.unwrap();
        let (_, old) = media
            .locate(&Media::remote_key("a.example", "one"))
            .unwrap();
        cache(&media, "a.example", "one", &[1; 120]).await.unwrap();
        let (meta, new) = media
            .locate(&Media::remote_key("a.example", "one"))
            .unwrap();
        assert_eq!(meta.size, 120);
        assert!(!old.exists() && new.exists());
        assert_eq!(media.cached_bytes("a.example").unwrap(), 120);
        let index = media
            .db
            .scan_prefix(Table::OriginaccessMedia, &AccessKey::prefix("a.example"))
            .unwrap();
        assert_eq!(index.len(), 1, "one LRU entry per copy");
    }

    #[tokio::test]
    async fn bodies_past_the_cap_are_refused_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let media = media(dir.path(), 50);
        let mut file = media.cache_file().await.unwrap();
        file.write(&[0; 40]).await.unwrap();
        let err = file.write(&[0; 20]).await.unwrap_err();
        assert_eq!(err.classify().1["errcode"], "M_TOO_LARGE");
        drop(file);
        let left = std::fs::read_dir(dir.path().join("media").join(TMP_DIR))
            .unwrap()
            .count();
        assert_eq!(left, 0, "the partial file is removed");
    }
}
