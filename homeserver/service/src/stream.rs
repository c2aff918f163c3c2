//! The global stream: one persistent, monotonically increasing position that orders everything
//! a client can see, and the notifier that wakes long-polling syncs.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use paracord_core::Result;
use paracord_storage::{key::decode_u64, Batch, Db, Table};
use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

const STREAM_KEY: &[u8] = b"stream_position";

/// Allocates stream positions and commits batches in position order.
pub struct Stream {
    db: Arc<Db>,
    pos: AtomicU64,
    commit_lock: Mutex<()>,
    notifier: Notifier,
}

impl Stream {
    pub fn load(db: Arc<Db>) -> Result<Self> {
        let pos = match db.get(Table::GlobalValue, STREAM_KEY)? {
            Some(v) => decode_u64(&v)?,
            None => 0,
        };
        Ok(Self {
            db,
            pos: AtomicU64::new(pos),
            commit_lock: Mutex::new(()),
            notifier: Notifier::default(),
        })
    }

    /// The position of the newest committed change.
    pub fn current(&self) -> u64 {
        self.pos.load(Ordering::Acquire)
    }

    /// Allocates the next position, lets `fill` add the change to a batch, and writes it
    /// atomically together with the new position. Positions become visible in order: a reader
    /// that sees position `n` can read everything at or below `n`.
    pub fn commit<R>(&self, fill: impl FnOnce(u64, &mut Batch) -> Result<R>) -> Result<(u64, R)> {
        self.commit_n(1, fill)
    }

    /// Like [`Stream::commit`] but allocates `n` (at least one) consecutive positions at once,
    /// for changes that need several ids (events stored together); `fill` gets the first.
    pub fn commit_n<R>(
        &self,
        n: u64,
        fill: impl FnOnce(u64, &mut Batch) -> Result<R>,
    ) -> Result<(u64, R)> {
        let _guard = self.commit_lock.lock();
        let first = self.pos.load(Ordering::Acquire) + 1;
        let last = first + n.max(1) - 1;
        let mut batch = Batch::new();
        let out = fill(first, &mut batch)?;
        batch.put(
            Table::GlobalValue,
            STREAM_KEY.to_vec(),
            last.to_be_bytes().to_vec(),
        );
        self.db.write(batch)?;
        self.pos.store(last, Ordering::Release);
        Ok((first, out))
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }
}

/// Wakes the long-polling syncs of particular users.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Arc<Notify>>>,
    shutting_down: std::sync::atomic::AtomicBool,
    shutdown: Notify,
}

impl Notifier {
    /// The handle a sync waits on. Call `notified()` and `enable()` it before checking for
    /// news, so a wake-up between the check and the wait is not lost.
    pub fn handle(&self, user: &UserId) -> Arc<Notify> {
        self.users
            .lock()
            .entry(user.to_owned())
            .or_default()
            .clone()
    }

    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let map = self.users.lock();
        for u in users {
            if let Some(n) = map.get(u) {
                n.notify_waiters();
            }
        }
    }

    /// Ends every long-poll: the server is shutting down.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }

    /// Resolves when [`Notifier::shutdown`] is called (at once if it already was).
    pub async fn shutting_down(&self) {
        let notified = self.shutdown.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Drops handles nobody waits on (called now and then).
    pub fn prune(&self) {
        self.users.lock().retain(|_, n| Arc::strong_count(n) > 1);
    }
}
