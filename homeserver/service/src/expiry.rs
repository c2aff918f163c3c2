//! Rows that are kept for a while and then deleted: the answers to incoming federation and
//! relay transactions, the transaction ids of sent events and to-device messages. They exist
//! so that a retried request is recognised, which matters for minutes, not for ever.
//!
//! Whoever writes such a row also writes, in the same batch, an entry in
//! `deadlinerow_expire` (see [`schedule`]): its deadline, its table and its key. The deadline
//! comes first in that key, so [`sweep`] reads only what has expired, oldest first, and deletes
//! each row together with its entry. The background task in [`crate::housekeeping`] sweeps.

use paracord_core::Result;
use paracord_storage::{Batch, Db, KeyBuf, KeyReader, StorageError, Table};

/// How long a stored transaction answer (federation `/send`, Paracord relays) or transaction
/// id (`/send/{eventType}/{txnId}`, `/sendToDevice`) is kept: a day, as Synapse keeps client
/// transaction ids. A retry after that is treated as a new request.
pub const TRANSACTION_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Most rows one call of [`sweep`] deletes, so one sweep step is one bounded batch.
pub const SWEEP_BATCH: usize = 1_000;

/// Tables whose rows may be scheduled; a deadline naming another table is ignored.
const EXPIRING: &[Table] = &[
    Table::OrigintxnResponse,
    Table::OrigintxnRelay,
    Table::TxnEventid,
    Table::UserdevicetxnTodevice,
    Table::InteractionidInteraction,
    Table::UsertxnDelayid,
    Table::DelayidDelayedevent,
];

/// The expiring tables that existed before rows expired, whose old rows
/// [`adopt_existing`] schedules. Tables added later schedule every row they write (and
/// `delayid_delayedevent` only its finalised ones: a scheduled delayed event must not go).
const ADOPTED: &[Table] = &[
    Table::OrigintxnResponse,
    Table::OrigintxnRelay,
    Table::TxnEventid,
    Table::UserdevicetxnTodevice,
    Table::InteractionidInteraction,
];

/// The key of an entry in `deadlinerow_expire`: `deadline table_name 0xFF row_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineKey<'a> {
    pub deadline: u64,
    pub table: Table,
    pub row: &'a [u8],
}

impl<'a> DeadlineKey<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut key = KeyBuf::new()
            .u64(self.deadline)
            .str(self.table.name())
            .into_vec();
        key.extend_from_slice(self.row);
        key
    }

    pub fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut reader = KeyReader::new(key);
        let deadline = reader.u64()?;
        let name = reader.str()?;
        let table = EXPIRING
            .iter()
            .copied()
            .find(|t| t.name() == name)
            .ok_or_else(|| StorageError::Corrupt(format!("no expiring table {name:?}")))?;
        let row = key.get(8 + name.len() + 1..).unwrap_or_default();
        Ok(Self {
            deadline,
            table,
            row,
        })
    }
}

/// Adds to `batch` the deletion of `table`'s row `key` once `deadline` (ms since the epoch)
/// has passed. Write it in the batch that writes the row.
pub fn schedule(batch: &mut Batch, table: Table, key: &[u8], deadline: u64) {
    debug_assert!(EXPIRING.contains(&table), "{table:?} rows do not expire");
    batch.put(
        Table::DeadlinerowExpire,
        DeadlineKey {
            deadline,
            table,
            row: key,
        }
        .encode(),
        Vec::new(),
    );
}

/// Deletes up to [`SWEEP_BATCH`] rows whose deadline is before `now`, with their entries, in
/// one batch. Returns how many entries it went through: fewer than [`SWEEP_BATCH`] means
/// nothing more has expired.
pub fn sweep(db: &Db, now: u64) -> Result<usize> {
    let upper = KeyBuf::new().u64(now).into_vec();
    let entries = db.scan(
        Table::DeadlinerowExpire,
        &[],
        &[],
        Some(&upper),
        false,
        SWEEP_BATCH,
    )?;
    let mut batch = Batch::new();
    for (key, _) in &entries {
        match DeadlineKey::decode(key) {
            Ok(entry) => batch.delete(entry.table, entry.row.to_vec()),
            Err(e) => tracing::error!("dropping an unreadable expiry entry: {e}"),
        }
        batch.delete(Table::DeadlinerowExpire, key.to_vec());
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok(entries.len())
}

/// Sweeps until nothing more has expired; returns how many entries went.
pub fn sweep_all(db: &Db, now: u64) -> Result<usize> {
    let mut total = 0usize;
    loop {
        let n = sweep(db, now)?;
        total = total.saturating_add(n);
        if n < SWEEP_BATCH {
            return Ok(total);
        }
    }
}

/// The global value that records that rows written before expiry existed were scheduled.
const ADOPTED_KEY: &[u8] = b"expiry_adopted_v1";

/// Schedules, once per database, every row of the expiring tables written before rows
/// expired (they have no entry), with a deadline of a full [`TRANSACTION_TTL_MS`] from now.
pub fn adopt_existing(db: &Db, now: u64) -> Result<()> {
    if db.get(Table::GlobalValue, ADOPTED_KEY)?.is_some() {
        return Ok(());
    }
    let deadline = now.saturating_add(TRANSACTION_TTL_MS);
    let mut adopted = 0usize;
    for table in ADOPTED {
        let mut lower: Vec<u8> = Vec::new();
        loop {
            let rows = db.scan(*table, &[], &lower, None, false, SWEEP_BATCH)?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            let mut next = last.to_vec();
            next.push(0);
            let mut batch = Batch::new();
            for (key, _) in &rows {
                schedule(&mut batch, *table, key, deadline);
            }
            adopted = adopted.saturating_add(rows.len());
            db.write(batch)?;
            if rows.len() < SWEEP_BATCH {
                break;
            }
            lower = next;
        }
    }
    let mut batch = Batch::new();
    batch.put(Table::GlobalValue, ADOPTED_KEY.to_vec(), b"1".to_vec());
    db.write(batch)?;
    if adopted > 0 {
        tracing::info!(rows = adopted, "stored transaction answers now expire");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        (dir, db)
    }

    fn put(db: &Db, table: Table, key: &[u8], deadline: Option<u64>) {
        let mut batch = Batch::new();
        batch.put(table, key.to_vec(), b"answer".to_vec());
        if let Some(deadline) = deadline {
            schedule(&mut batch, table, key, deadline);
        }
        db.write(batch).unwrap();
    }

    #[test]
    fn deadline_keys_round_trip_and_sort_by_deadline() {
        let row = [b'a', 0xFF, 0, 1, 0xFF];
        let key = DeadlineKey {
            deadline: 7,
            table: Table::OrigintxnResponse,
            row: &row,
        };
        let bytes = key.encode();
        assert_eq!(DeadlineKey::decode(&bytes).unwrap(), key);
        let at = |deadline| {
            DeadlineKey {
                deadline,
                table: Table::OrigintxnRelay,
                row: b"x",
            }
            .encode()
        };
        assert!(at(255) < at(256) && at(256) < at(1 << 40));
        assert!(DeadlineKey::decode(b"short").is_err());
        let other = DeadlineKey {
            deadline: 1,
            table: Table::GlobalValue,
            row: b"x",
        };
        assert!(DeadlineKey::decode(&other.encode()).is_err());
    }

    // Issue 15: stored transaction answers are deleted once their deadline has passed, and
    // only those.
    #[test]
    fn sweep_deletes_expired_rows_and_keeps_the_rest() {
        let (_dir, db) = db();
        let n = SWEEP_BATCH + 5;
        for i in 0..n {
            let key = format!("origin.test\u{ff}txn{i}");
            put(&db, Table::OrigintxnResponse, key.as_bytes(), Some(1_000));
        }
        put(&db, Table::OrigintxnRelay, b"late", Some(5_000));
        put(&db, Table::TxnEventid, b"late", Some(5_000));
        assert_eq!(sweep_all(&db, 999).unwrap(), 0, "nothing is due yet");
        assert_eq!(
            db.scan_prefix(Table::OrigintxnResponse, b"").unwrap().len(),
            n
        );
        // One call is one bounded batch.
        assert_eq!(sweep(&db, 1_001).unwrap(), SWEEP_BATCH);
        assert_eq!(sweep_all(&db, 1_001).unwrap(), 5);
        assert!(db
            .scan_prefix(Table::OrigintxnResponse, b"")
            .unwrap()
            .is_empty());
        assert_eq!(db.scan_prefix(Table::OrigintxnRelay, b"").unwrap().len(), 1);
        assert_eq!(
            db.scan_prefix(Table::DeadlinerowExpire, b"").unwrap().len(),
            2
        );
        assert_eq!(sweep_all(&db, 5_001).unwrap(), 2);
        assert!(db
            .scan_prefix(Table::OrigintxnRelay, b"")
            .unwrap()
            .is_empty());
        assert!(db.scan_prefix(Table::TxnEventid, b"").unwrap().is_empty());
        assert!(db
            .scan_prefix(Table::DeadlinerowExpire, b"")
            .unwrap()
            .is_empty());
    }

    // Issue 15: answers stored before they expired are scheduled once, at the first start.
    #[test]
    fn rows_from_before_are_adopted_once() {
        let (_dir, db) = db();
        for i in 0..(SWEEP_BATCH + 3) {
            put(
                &db,
                Table::UserdevicetxnTodevice,
                format!("u\u{ff}d\u{ff}{i}").as_bytes(),
                None,
            );
        }
        put(&db, Table::OrigintxnResponse, b"o\xfft", None);
        adopt_existing(&db, 10).unwrap();
        let entries = db.scan_prefix(Table::DeadlinerowExpire, b"").unwrap();
        assert_eq!(entries.len(), SWEEP_BATCH + 4);
        // A second start adds nothing.
        put(&db, Table::OrigintxnRelay, b"new", None);
        adopt_existing(&db, 20).unwrap();
        assert_eq!(
            db.scan_prefix(Table::DeadlinerowExpire, b"").unwrap().len(),
            SWEEP_BATCH + 4
        );
        sweep_all(&db, 10 + TRANSACTION_TTL_MS + 1).unwrap();
        assert!(db
            .scan_prefix(Table::UserdevicetxnTodevice, b"")
            .unwrap()
            .is_empty());
        assert!(db
            .scan_prefix(Table::OrigintxnResponse, b"")
            .unwrap()
            .is_empty());
    }
}
