//! The one concrete database type.

use std::path::Path;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB,
};

use crate::{key::next_key, Table};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A storage failure is an internal error of the server: 500 `M_UNKNOWN` for the client, the
/// detail for the log. Lives here because the core crate does not know the storage crate.
impl From<StorageError> for paracord_core::Error {
    fn from(e: StorageError) -> Self {
        paracord_core::Error::internal(e)
    }
}

/// The database: one RocksDB instance with a column family per [`Table`].
pub struct Db {
    db: DB,
    /// Batches written so far (a sequence for [`Db::sync_wal`]).
    written: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.db.path()).finish()
    }
}

/// One logical change: applied atomically by [`Db::write`]. A batch that is built and then
/// dropped writes nothing, hence `must_use`.
#[derive(Default)]
#[must_use = "a batch writes nothing until it is given to Db::write"]
pub struct Batch {
    ops: Vec<Op>,
}

enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(table, key.into(), value.into()));
    }
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(table, key.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// What this batch will leave at `key`: `Some(Some(value))` for a put, `Some(None)` for a
    /// delete (the last of them wins), `None` when the batch does not touch the key. For
    /// read-modify-write of a row the same batch may already have changed.
    pub fn pending(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.iter().rev().find_map(|op| match op {
            Op::Put(t, k, v) if *t == table && k == key => Some(Some(v.as_slice())),
            Op::Delete(t, k) if *t == table && k == key => Some(None),
            _ => None,
        })
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A key-value pair read from a scan.
pub type Entry = (Box<[u8]>, Box<[u8]>);

impl Db {
    /// Opens (creating if needed) the database at `path` with every table of the catalogue.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(512);
        opts.set_keep_log_file_num(4);
        opts.increase_parallelism(2);
        // Memory: every column family has its own memtable, whose arena grows in blocks of
        // write_buffer_size / 8 by default (8 MiB with the 64 MiB default). With ~20 tables
        // that dominated the resident size of a small server, so memtables are small and grow
        // in small blocks; one block cache is shared by every table.
        let cache = rocksdb::Cache::new_lru_cache(16 * 1024 * 1024);
        // Memtables of all tables together stay under 4 MiB: past that, the largest is
        // flushed. Without a shared budget every table could hold 8 MiB of recent writes.
        // 4 MiB rather than 8 took 2-3 MiB off the benchmark's peak RSS at no measurable
        // cost in send throughput (docs/benchmarks.md); less than 4 saved nothing more.
        let write_buffers = rocksdb::WriteBufferManager::new_write_buffer_manager(4 << 20, false);
        opts.set_write_buffer_manager(&write_buffers);
        let cfs = Table::ALL.iter().map(|t| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            cf_opts.set_write_buffer_size(8 * 1024 * 1024);
            cf_opts.set_arena_block_size(64 * 1024);
            let mut table_opts = rocksdb::BlockBasedOptions::default();
            table_opts.set_block_cache(&cache);
            cf_opts.set_block_based_table_factory(&table_opts);
            ColumnFamilyDescriptor::new(t.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self {
            db,
            written: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn cf(&self, table: Table) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(table.name())
            .ok_or_else(|| StorageError::Corrupt(format!("missing column family {}", table.name())))
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(table)?, key)?)
    }

    pub fn exists(&self, table: Table, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.get(table, key)?.is_some())
    }

    /// Applies a batch atomically. The write goes to the WAL before this returns, so it
    /// survives the process being killed; it survives the machine losing power once a
    /// [`Db::sync_wal`] that started after it has returned (the service layer does that
    /// before a write is acknowledged, for many writes at once).
    pub fn write(&self, batch: Batch) -> Result<(), StorageError> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(t, k, v) => wb.put_cf(self.cf(t)?, k, v),
                Op::Delete(t, k) => wb.delete_cf(self.cf(t)?, k),
            }
        }
        self.db.write(wb)?;
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How many batches have been written since the database was opened.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forces the WAL to disk (fsync). Returns the [`Db::written`] count it covers: every
    /// batch written before the call.
    pub fn sync_wal(&self) -> Result<u64, StorageError> {
        let covered = self.written();
        self.db.flush_wal(true)?;
        Ok(covered)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StorageError> {
        self.scan(
            table,
            prefix,
            prefix,
            next_key(prefix).as_deref(),
            false,
            usize::MAX,
        )
    }

    /// Entries with `lower <= key < upper` (upper `None` = to the end of `prefix`), forwards or
    /// backwards, at most `limit`, all starting with `prefix`.
    pub fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        lower: &[u8],
        upper: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let cf = self.cf(table)?;
        let mut ropts = rocksdb::ReadOptions::default();
        ropts.set_iterate_lower_bound(lower.to_vec());
        let upper_owned = match upper {
            Some(u) => Some(u.to_vec()),
            None => next_key(prefix),
        };
        if let Some(u) = &upper_owned {
            ropts.set_iterate_upper_bound(u.clone());
        }
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::From(lower, Direction::Forward)
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, ropts, mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                if reverse {
                    continue;
                }
                break;
            }
            out.push((k, v));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The last entry starting with `prefix`.
    /// Calls `visit` with the entries whose key starts with `prefix`, in key order, at most
    /// `limit` of them, without collecting them; returns how many were visited.
    pub fn for_each_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<usize, StorageError> {
        let cf = self.cf(table)?;
        let mut ropts = rocksdb::ReadOptions::default();
        ropts.set_iterate_lower_bound(prefix.to_vec());
        if let Some(upper) = next_key(prefix) {
            ropts.set_iterate_upper_bound(upper);
        }
        let mut iter = self.db.raw_iterator_cf_opt(cf, ropts);
        iter.seek(prefix);
        let mut n = 0;
        while n < limit && iter.valid() {
            let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
                break;
            };
            if !k.starts_with(prefix) {
                break;
            }
            visit(k, v)?;
            n += 1;
            iter.next();
        }
        iter.status()?;
        Ok(n)
    }

    pub fn last_with_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Option<Entry>, StorageError> {
        Ok(self
            .scan(table, prefix, prefix, None, true, 1)?
            .into_iter()
            .next())
    }

    /// Flushes memtables to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        for t in Table::ALL {
            self.db.flush_cf(self.cf(*t)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyBuf;

    fn temp_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        (dir, db)
    }

    #[test]
    fn batch_is_atomic_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Table::GlobalValue, b"a".to_vec(), b"1".to_vec());
            b.put(Table::UseridAccount, b"@u:x".to_vec(), b"{}".to_vec());
            db.write(b).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(
            db.get(Table::GlobalValue, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert!(db.exists(Table::UseridAccount, b"@u:x").unwrap());
    }

    #[test]
    fn scans_are_bounded_and_ordered() {
        let (_dir, db) = temp_db();
        let mut b = Batch::new();
        for (room, n) in [("!a", 3u64), ("!a", 1), ("!a", 2), ("!ab", 1), ("!b", 1)] {
            b.put(
                Table::RoompositionShorteventid,
                KeyBuf::new().str(room).u64(n).into_vec(),
                vec![],
            );
        }
        db.write(b).unwrap();
        let prefix = KeyBuf::new().str("!a").into_vec();
        let all = db
            .scan_prefix(Table::RoompositionShorteventid, &prefix)
            .unwrap();
        assert_eq!(all.len(), 3);
        let lower = KeyBuf::new().str("!a").u64(2).into_vec();
        let from2 = db
            .scan(
                Table::RoompositionShorteventid,
                &prefix,
                &lower,
                None,
                false,
                10,
            )
            .unwrap();
        assert_eq!(from2.len(), 2);
        let upper = KeyBuf::new().str("!a").u64(3).into_vec();
        let back = db
            .scan(
                Table::RoompositionShorteventid,
                &prefix,
                &prefix,
                Some(&upper),
                true,
                10,
            )
            .unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[0].0.as_ref(),
            KeyBuf::new().str("!a").u64(2).as_slice()
        );
        let last = db
            .last_with_prefix(Table::RoompositionShorteventid, &prefix)
            .unwrap()
            .unwrap();
        assert_eq!(last.0.as_ref(), KeyBuf::new().str("!a").u64(3).as_slice());
    }

    #[test]
    fn storage_errors_are_internal_errors() {
        let e = StorageError::Corrupt("bad row".into());
        let detail = e.to_string();
        let err = paracord_core::Error::from(e);
        assert!(matches!(&err, paracord_core::Error::Internal(d) if *d == detail));
        let (status, body) = err.classify();
        assert_eq!(status.as_u16(), 500);
        assert_eq!(body["errcode"], "M_UNKNOWN");
    }
}
