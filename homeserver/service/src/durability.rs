//! Durable acknowledgements: a write is on disk before the request that made it is answered.
//!
//! Writes go to RocksDB's WAL without waiting for the disk (the room pipeline holds a room's
//! lock while it writes, and an fsync takes milliseconds). Before a mutating request is
//! answered, [`Durability::settle`] waits until an fsync of the WAL that started after the
//! request's writes has finished. One fsync covers every write made before it started, so
//! concurrent requests share them (group commit): one caller syncs, the others wait for it.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use paracord_core::{Error, Result};
use paracord_storage::Db;
use tokio::sync::watch;

pub struct Durability {
    db: Arc<Db>,
    enabled: bool,
    /// Whether a caller is running an fsync now.
    syncing: AtomicBool,
    /// The [`Db::written`] count the last finished fsync covers.
    synced: watch::Sender<u64>,
    /// Fsyncs run (the tests count them).
    syncs: std::sync::atomic::AtomicU64,
}

impl Durability {
    /// `enabled: false` (the operator's `sync_writes = false`) answers without waiting: a
    /// write then survives the process being killed but not the machine losing power.
    pub fn new(db: Arc<Db>, enabled: bool) -> Self {
        Self {
            db,
            enabled,
            syncing: AtomicBool::new(false),
            synced: watch::Sender::new(0),
            syncs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Waits until every write made so far is on disk.
    pub async fn settle(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.through(self.db.written()).await
    }

    /// Waits until the writes up to `ticket` (a [`Db::written`] count) are on disk.
    async fn through(&self, ticket: u64) -> Result<()> {
        loop {
            let mut changed = self.synced.subscribe();
            if *changed.borrow_and_update() >= ticket {
                return Ok(());
            }
            if self
                .syncing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // This caller syncs for everyone written so far. The guard ends its turn
                // however this future ends, dropped mid-fsync included (its request's
                // client hung up): the others must not wait for a leader that is gone.
                let turn = Turn(self);
                let db = self.db.clone();
                let result = tokio::task::spawn_blocking(move || db.sync_wal()).await;
                self.syncs.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(Ok(covered)) => {
                        self.synced.send_modify(|s| *s = (*s).max(covered));
                    }
                    // The guard wakes the others: one of them tries again.
                    Ok(Err(e)) => {
                        return Err(Error::internal(format!("syncing the database: {e}")));
                    }
                    Err(e) => {
                        return Err(Error::internal(format!("syncing the database: {e}")));
                    }
                }
                drop(turn);
            } else if changed.changed().await.is_err() {
                return Err(Error::internal("the database sync stopped"));
            }
        }
    }

    /// Fsyncs run so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// The fsync leader's turn: when it ends, another caller may lead, and the waiters are
/// woken to check whether they are covered or must lead themselves.
struct Turn<'a>(&'a Durability);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.syncing.store(false, Ordering::Release);
        self.0.synced.send_modify(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use paracord_storage::{Batch, Table};

    use super::*;

    fn db() -> (tempfile::TempDir, Arc<Db>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        (dir, db)
    }

    fn write(db: &Db, i: u32) {
        let mut b = Batch::new();
        b.put(
            Table::GlobalValue,
            format!("k{i}").into_bytes(),
            b"v".to_vec(),
        );
        db.write(b).unwrap();
    }

    // Issue 15 item 13: an acknowledgement waits for an fsync that covers the write, and
    // concurrent ones share fsyncs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settling_syncs_what_was_written_and_shares_the_fsync() {
        let (_d, db) = db();
        let d = Arc::new(Durability::new(db.clone(), true));
        d.settle().await.unwrap();
        assert_eq!(d.syncs(), 0, "nothing written, nothing to sync");
        write(&db, 0);
        d.settle().await.unwrap();
        assert_eq!(d.syncs(), 1);
        assert!(*d.synced.borrow() >= 1);
        d.settle().await.unwrap();
        assert_eq!(d.syncs(), 1, "already on disk");

        let tasks: Vec<_> = (1..=64)
            .map(|i| {
                let (db, d) = (db.clone(), d.clone());
                tokio::spawn(async move {
                    write(&db, i);
                    let ticket = db.written();
                    d.settle().await.unwrap();
                    assert!(*d.synced.borrow() >= ticket, "settled before its fsync");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            d.syncs() < 64,
            "64 concurrent writes took {} fsyncs",
            d.syncs()
        );
    }

    // A leader dropped while its fsync runs (the client of its request hung up) used to
    // leave `syncing` set: every later settle then waited forever, and so did every /sync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_dropped_mid_fsync_does_not_stall_the_others() {
        let (_d, db) = db();
        let d = Durability::new(db.clone(), true);
        write(&db, 0);
        {
            let mut leader = std::pin::pin!(d.settle());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                leader.as_mut().poll(&mut cx).is_pending(),
                "the leader waits for its fsync"
            );
        }
        write(&db, 1);
        tokio::time::timeout(std::time::Duration::from_secs(10), d.settle())
            .await
            .expect("a later settle is not stuck behind the dropped leader")
            .unwrap();
        assert!(*d.synced.borrow() >= db.written());
    }

    #[tokio::test]
    async fn switched_off_it_does_not_wait() {
        let (_d, db) = db();
        let d = Durability::new(db.clone(), false);
        write(&db, 0);
        d.settle().await.unwrap();
        assert_eq!(d.syncs(), 0);
    }
}
