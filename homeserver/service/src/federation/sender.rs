//! The federation sender: outgoing transactions, `PUT /_matrix/federation/v1/send/{txnId}`
//! (<https://spec.matrix.org/v1.19/server-server-api/#transactions>).
//!
//! Every PDU and EDU for another server is first written to RocksDB, in `destinationseq_pdu`
//! and `destinationseq_edu`, keyed by destination and a per-destination sequence number, so
//! nothing queued is lost by a restart. A destination with queued items has one worker task.
//! It sends one transaction at a time (the oldest 50 PDUs and 100 EDUs), deletes exactly those
//! items in one batch when the destination answers 200, and otherwise keeps them and retries
//! with exponential backoff (`federation_retry_base_ms` doubling up to
//! `federation_retry_max_ms`). [`Sender::wake`] cuts a backoff short when the destination shows
//! signs of life. A worker exits when its queue is empty; the next queued item spawns another.
//! Workers stop when the server shuts down; [`Sender::start`] resumes every non-empty queue.
//!
//! Nothing queued grows without bound. A destination's EDUs (typing, receipts, presence:
//! worthless when stale) are capped at [`MAX_QUEUED_EDUS`] and its PDUs at [`MAX_QUEUED_PDUS`];
//! reaching a cap drops the oldest with a warning. A destination that has been failing for
//! `federation_catch_up_after_ms` (a day by default; since when is kept in
//! `destination_downsince`, so restarts do not reset it) keeps only the newest queued PDU of
//! each room, as Synapse's catch-up does: when it is back it receives those and fetches
//! whatever it misses through their `prev_events` (`/get_missing_events`, `/backfill`).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, Weak,
    },
    time::Duration,
};

use futures::FutureExt;
use paracord_core::{time::now_ms, Config, Error, Result};
use paracord_storage::{db::Entry, next_key, Batch, Db, StorageError, Table};
use parking_lot::Mutex;
use rand::Rng;
use ruma::{
    api::federation::transactions::{edu::Edu, send_transaction_message},
    serde::Raw,
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, OwnedTransactionId,
    ServerName, UInt,
};
use serde_json::{value::RawValue, Value};
use tokio::{runtime::Handle, sync::Notify};

use crate::{
    federation::{
        client::FederationClient,
        request::{send_signed, typed_answer, typed_http_request},
    },
    keys::ServerKeys,
    stream::Stream,
};

/// Most PDUs in one transaction (the spec's limit).
pub const MAX_PDUS_PER_TRANSACTION: usize = 50;
/// Most EDUs in one transaction (the spec's limit).
pub const MAX_EDUS_PER_TRANSACTION: usize = 100;
/// Most EDUs queued for one destination.
pub const MAX_QUEUED_EDUS: u64 = 10_000;
/// How many of the oldest EDUs go when a destination's queue is full: a tenth at once, so a
/// long-dead destination costs a warning per thousand EDUs rather than one per EDU.
pub const EDUS_DROPPED_AT_CAP: u64 = MAX_QUEUED_EDUS / 10;
/// Most bytes of PDUs and EDUs in one transaction: a destination with the common 1 MiB limit
/// on request bodies takes it (50 PDUs of 64 KiB would not fit). One item always goes, however
/// large.
pub const TRANSACTION_BYTE_BUDGET: usize = 900 * 1024;
/// Most PDUs queued for one destination: about a day of a busy server's traffic to it.
pub const MAX_QUEUED_PDUS: u64 = 10_000;
/// How many of the oldest PDUs go when a destination's queue is full (a tenth, as for EDUs).
pub const PDUS_DROPPED_AT_CAP: u64 = MAX_QUEUED_PDUS / 10;
/// Longest piece of a remote error message copied into our logs.
const LOGGED_ERROR_CHARS: usize = 200;

paracord_storage::key! {
    /// The key of a queued item in `destinationseq_pdu` and `destinationseq_edu`:
    /// `destination 0xFF seq`. The sequence is per destination and per table.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct QueueKey<'a> {
        destination: str => prefix,
        seq: u64,
    }
}

/// The sender of outgoing federation transactions.
pub struct Sender {
    db: Arc<Db>,
    config: Arc<Config>,
    keys: Arc<ServerKeys>,
    client: Arc<FederationClient>,
    stream: Arc<Stream>,
    /// Lets `&self` methods hand a worker its own `Arc`.
    this: Weak<Sender>,
    /// Held while a sequence number is chosen and written, so concurrent queueing for one
    /// destination cannot pick the same number or commit out of order.
    queue_lock: Mutex<()>,
    /// The running worker of each destination. A destination with queued items has one
    /// (once started); a worker removes itself under this lock after finding its queue empty.
    workers: Mutex<HashMap<OwnedServerName, Arc<Worker>>>,
    /// Set by [`Sender::start`]; until then items are only queued.
    runtime: OnceLock<Handle>,
    /// Transaction ids are `<random prefix of this instance>.<counter>`: unique across
    /// restarts without a write per transaction.
    txn_prefix: String,
    txn_counter: AtomicU64,
}

/// What the outside world can tell a running worker.
struct Worker {
    /// Notified by [`Sender::wake`]: retry now.
    wake: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Queue {
    Pdu,
    Edu,
}

impl Queue {
    fn table(self) -> Table {
        match self {
            Queue::Pdu => Table::DestinationseqPdu,
            Queue::Edu => Table::DestinationseqEdu,
        }
    }
}

/// What one round of a worker did.
enum Step {
    /// Nothing is queued.
    Empty,
    /// A transaction was accepted and its items deleted.
    Sent,
    /// The destination refused the same transaction [`MAX_REFUSALS`] times in a row as
    /// malformed, too large or forbidden: its items were deleted so that the rest of the queue
    /// can go.
    Dropped,
}

/// How many times in a row a destination may refuse a transaction (400, 403, 413) before its
/// items are given up: a refusal of the whole transaction is no network trouble, and retrying
/// it for ever would hold back everything queued behind it.
const MAX_REFUSALS: u32 = 3;

/// Why a transaction did not go through; its items stay queued.
struct Failure {
    reason: String,
    /// The destination asked us to wait at least this long (429 `retry_after_ms`).
    retry_after: Option<Duration>,
    /// The destination refused the transaction itself (400, 403, 413).
    refused: bool,
    /// How many items (PDUs and EDUs) the transaction held.
    items: usize,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry_after: None,
            refused: false,
            items: 0,
        }
    }
}

impl Sender {
    pub fn new(
        db: Arc<Db>,
        config: Arc<Config>,
        keys: Arc<ServerKeys>,
        client: Arc<FederationClient>,
        stream: Arc<Stream>,
    ) -> Arc<Self> {
        let txn_prefix: String = crate::random::random_string(12);
        Arc::new_cyclic(|this| Self {
            db,
            config,
            keys,
            client,
            stream,
            this: this.clone(),
            queue_lock: Mutex::new(()),
            workers: Mutex::new(HashMap::new()),
            runtime: OnceLock::new(),
            txn_prefix,
            txn_counter: AtomicU64::new(0),
        })
    }

    /// Persists the PDU for each destination (never our own server name), then wakes their
    /// workers. Returns once written.
    #[tracing::instrument(skip_all, fields(event_id = %event_id))]
    pub fn queue_pdu(
        &self,
        destinations: &[OwnedServerName],
        event_id: &EventId,
        pdu_json: &[u8],
    ) -> Result<()> {
        let targets: BTreeSet<&ServerName> = destinations
            .iter()
            .map(|d| d.as_ref())
            .filter(|d| !self.is_own(d))
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let is_object = serde_json::from_slice::<&RawValue>(pdu_json)
            .is_ok_and(|raw| raw.get().starts_with('{'));
        if !is_object {
            return Err(Error::internal(format!(
                "PDU {event_id} queued for federation is not a JSON object"
            )));
        }
        {
            let _guard = self.queue_lock.lock();
            let mut batch = Batch::new();
            for destination in &targets {
                let seq = self.next_seq(Queue::Pdu, destination)?;
                self.cap_pdu_queue(&mut batch, destination, seq)?;
                let key = QueueKey {
                    destination: destination.as_str(),
                    seq,
                };
                batch.put(Queue::Pdu.table(), key.encode(), pdu_json.to_vec());
            }
            self.db.write(batch)?;
        }
        tracing::debug!(destinations = targets.len(), "PDU queued for federation");
        for destination in targets {
            self.ensure_worker(destination);
        }
        Ok(())
    }

    /// Queues `edu` for each of `servers` (a room's, say) but this one.
    pub fn queue_edu_to_all(
        &self,
        servers: impl IntoIterator<Item = OwnedServerName>,
        edu: &Value,
    ) -> Result<()> {
        for server in servers {
            if !self.is_own(&server) {
                self.queue_edu(&server, edu.clone())?;
            }
        }
        Ok(())
    }

    /// Persists one EDU (`{"edu_type": .., "content": ..}`) for a destination. An EDU for our
    /// own server name is ignored.
    #[tracing::instrument(skip_all, fields(destination = %destination))]
    pub fn queue_edu(&self, destination: &ServerName, edu: Value) -> Result<()> {
        if self.is_own(destination) {
            return Ok(());
        }
        if !edu.get("edu_type").is_some_and(Value::is_string) || edu.get("content").is_none() {
            return Err(Error::internal(
                "an EDU needs a string edu_type and a content",
            ));
        }
        let bytes = serde_json::to_vec(&edu)?;
        {
            let _guard = self.queue_lock.lock();
            let table = Queue::Edu.table();
            let prefix = QueueKey::prefix(destination.as_str());
            let mut batch = Batch::new();
            let seq = self.next_seq(Queue::Edu, destination)?;
            if let Some((first, _)) = self
                .db
                .scan(table, &prefix, &prefix, None, false, 1)?
                .into_iter()
                .next()
            {
                // Items leave a queue only from its front (sent or dropped) and join at its
                // end, so its sequence numbers have no gaps and the first and next numbers
                // give its length.
                let first = QueueKey::decode(&first)?.seq;
                let queued = seq.saturating_sub(first);
                if queued >= MAX_QUEUED_EDUS {
                    let excess = queued
                        .saturating_sub(MAX_QUEUED_EDUS)
                        .saturating_add(EDUS_DROPPED_AT_CAP);
                    let limit = usize::try_from(excess).unwrap_or(usize::MAX);
                    for (key, _) in self.db.scan(table, &prefix, &prefix, None, false, limit)? {
                        batch.delete(table, key.to_vec());
                    }
                    tracing::warn!(
                        destination = %destination,
                        dropped = excess,
                        "federation EDU queue is full: dropping the oldest EDUs"
                    );
                }
            }
            let key = QueueKey {
                destination: destination.as_str(),
                seq,
            };
            batch.put(table, key.encode(), bytes);
            self.db.write(batch)?;
        }
        self.ensure_worker(destination);
        Ok(())
    }

    /// Adds to `batch` the deletion of the destination's oldest PDUs when its queue, about to
    /// receive sequence number `seq`, is full. The queue's length is taken as the distance
    /// from its first sequence number to `seq`: items leave a PDU queue from its front, and
    /// from its middle only when it is reduced for catch-up, so the distance is never less
    /// than the length. Call with `queue_lock` held.
    fn cap_pdu_queue(&self, batch: &mut Batch, destination: &ServerName, seq: u64) -> Result<()> {
        let table = Queue::Pdu.table();
        let prefix = QueueKey::prefix(destination.as_str());
        let Some((first, _)) = self
            .db
            .scan(table, &prefix, &prefix, None, false, 1)?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let first = QueueKey::decode(&first)?.seq;
        if seq.saturating_sub(first) < MAX_QUEUED_PDUS {
            return Ok(());
        }
        // Kept: the sequence numbers from `cut` on, the new one included.
        let cut = seq.saturating_sub(MAX_QUEUED_PDUS - PDUS_DROPPED_AT_CAP);
        let upper = QueueKey {
            destination: destination.as_str(),
            seq: cut,
        }
        .encode();
        let old = self
            .db
            .scan(table, &prefix, &prefix, Some(&upper), false, usize::MAX)?;
        let dropped = old.len();
        for (key, _) in old {
            batch.delete(table, key.to_vec());
        }
        tracing::warn!(
            destination = %destination,
            dropped,
            "federation PDU queue is full: dropping the oldest PDUs"
        );
        Ok(())
    }

    /// Reduces the destination's PDU queue to the newest PDU of each room (and PDUs without a
    /// room id): what Synapse's catch-up sends to a destination back from a long absence.
    /// Returns how many PDUs were dropped. Only the destination's worker calls it, so no
    /// transaction of these PDUs is in flight; PDUs queued meanwhile are not looked at.
    fn reduce_for_catch_up(&self, destination: &ServerName) -> Result<u64> {
        #[derive(serde::Deserialize)]
        struct RoomOf {
            room_id: Option<String>,
        }
        let table = Queue::Pdu.table();
        let prefix = QueueKey::prefix(destination.as_str());
        let mut newest: HashMap<String, Vec<u8>> = HashMap::new();
        let mut batch = Batch::new();
        let mut dropped = 0u64;
        self.db
            .for_each_prefix(table, &prefix, usize::MAX, |key, value| {
                let room = serde_json::from_slice::<RoomOf>(value)
                    .ok()
                    .and_then(|r| r.room_id);
                if let Some(room) = room {
                    if let Some(older) = newest.insert(room, key.to_vec()) {
                        batch.delete(table, older);
                        dropped += 1;
                    }
                }
                Ok(())
            })?;
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(dropped)
    }

    /// Since when the destination has been failing, if it has.
    fn down_since(&self, destination: &ServerName) -> Option<u64> {
        match self
            .db
            .get(Table::DestinationDownsince, destination.as_bytes())
        {
            Ok(Some(v)) => paracord_storage::key::decode_u64(&v).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(destination = %destination, "cannot read the destination's state: {e}");
                None
            }
        }
    }

    fn set_down_since(&self, destination: &ServerName, since: Option<u64>) {
        let mut batch = Batch::new();
        let key = destination.as_bytes().to_vec();
        match since {
            Some(ms) => batch.put(Table::DestinationDownsince, key, ms.to_be_bytes().to_vec()),
            None => batch.delete(Table::DestinationDownsince, key),
        }
        if let Err(e) = self.db.write(batch) {
            tracing::warn!(destination = %destination, "cannot record the destination's state: {e}");
        }
    }

    /// The destination contacted us: retry now instead of waiting out its backoff.
    pub fn wake(&self, destination: &ServerName) {
        if let Some(worker) = self.workers.lock().get(destination) {
            worker.wake.notify_one();
        }
    }

    /// Spawns workers for every destination with queued items (resume after restart);
    /// idempotent. Must be called within a tokio runtime; without one it logs an error and
    /// leaves the queues alone.
    pub fn start(self: &Arc<Self>) {
        let handle = match Handle::try_current() {
            Ok(handle) => handle,
            Err(_) => {
                tracing::error!("the federation sender was started outside a tokio runtime");
                return;
            }
        };
        // A second start keeps the first runtime.
        let _ = self.runtime.set(handle);
        match self.queued_destinations() {
            Ok(destinations) => {
                if !destinations.is_empty() {
                    tracing::info!(
                        destinations = destinations.len(),
                        "resuming queued federation transactions"
                    );
                }
                for destination in destinations {
                    self.ensure_worker(&destination);
                }
            }
            Err(e) => tracing::error!("cannot read the federation queues: {e}"),
        }
    }

    fn is_own(&self, destination: &ServerName) -> bool {
        destination
            .as_str()
            .eq_ignore_ascii_case(&self.config.server_name)
    }

    /// The sequence number after the last one queued for `destination` (0 for an empty queue).
    /// Call with `queue_lock` held.
    fn next_seq(&self, queue: Queue, destination: &ServerName) -> Result<u64> {
        let prefix = QueueKey::prefix(destination.as_str());
        match self.db.last_with_prefix(queue.table(), &prefix)? {
            Some((key, _)) => QueueKey::decode(&key)?
                .seq
                .checked_add(1)
                .ok_or_else(|| Error::internal("federation queue sequence exhausted")),
            None => Ok(0),
        }
    }

    /// Every destination with something queued, one seek per destination.
    fn queued_destinations(&self) -> Result<BTreeSet<OwnedServerName>> {
        let mut out = BTreeSet::new();
        for queue in [Queue::Pdu, Queue::Edu] {
            // The first key at or after `from`, then past all of that destination's keys.
            let mut from = Some(Vec::new());
            while let Some(lower) = from.take() {
                let found = self.db.scan(queue.table(), &[], &lower, None, false, 1)?;
                let Some((key, _)) = found.first() else {
                    break;
                };
                let destination = QueueKey::decode(key)?.destination;
                match OwnedServerName::try_from(destination) {
                    Ok(name) => {
                        out.insert(name);
                    }
                    Err(e) => tracing::error!(
                        "queued federation items for an invalid server name {destination:?}: {e}"
                    ),
                }
                from = next_key(&QueueKey::prefix(destination));
            }
        }
        Ok(out)
    }

    fn has_queued(&self, destination: &ServerName) -> Result<bool> {
        let prefix = QueueKey::prefix(destination.as_str());
        for queue in [Queue::Pdu, Queue::Edu] {
            let found = self
                .db
                .scan(queue.table(), &prefix, &prefix, None, false, 1)?;
            if !found.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Spawns the destination's worker unless it runs already (or the sender is not started).
    fn ensure_worker(&self, destination: &ServerName) {
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let mut workers = self.workers.lock();
        if workers.contains_key(destination) {
            return;
        }
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let worker = Arc::new(Worker {
            wake: Notify::new(),
        });
        workers.insert(destination.to_owned(), worker.clone());
        runtime.spawn(this.run(destination.to_owned(), worker));
    }

    /// Removes the worker if its queue is (still) empty. The check and the removal happen
    /// under the workers lock, and queueing writes before it looks for a worker, so an item
    /// queued meanwhile is either seen here or finds no worker and spawns one.
    fn retire(&self, destination: &ServerName, worker: &Arc<Worker>) -> bool {
        let mut workers = self.workers.lock();
        match self.has_queued(destination) {
            Ok(true) => false,
            Ok(false) => {
                if workers
                    .get(destination)
                    .is_some_and(|w| Arc::ptr_eq(w, worker))
                {
                    workers.remove(destination);
                }
                true
            }
            Err(e) => {
                tracing::warn!(destination = %destination, "cannot read the federation queue: {e}");
                false
            }
        }
    }

    /// One destination's worker: transactions until the queue is empty or the server stops.
    #[tracing::instrument(skip_all, fields(destination = %destination))]
    async fn run(self: Arc<Self>, destination: OwnedServerName, worker: Arc<Worker>) {
        let _registration = Registration {
            sender: &self,
            destination: &destination,
            worker: &worker,
        };
        let shutdown = self.stream.notifier().shutting_down();
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        let mut refusals: u32 = 0;
        // Items per transaction while a refused transaction is being narrowed down.
        let mut limit = usize::MAX;
        let mut down_since = self.down_since(&destination);
        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown => return,
                step = self.send_next(&destination, refusals, limit) => step,
            };
            let failure = match step {
                Ok(Step::Sent | Step::Dropped) => {
                    failures = 0;
                    refusals = 0;
                    limit = usize::MAX;
                    if down_since.take().is_some() {
                        self.set_down_since(&destination, None);
                    }
                    // A wake-up that came while things went well is no reason to skip a
                    // later backoff.
                    let _ = worker.wake.notified().now_or_never();
                    continue;
                }
                Ok(Step::Empty) => {
                    if self.retire(&destination, &worker) {
                        return;
                    }
                    continue;
                }
                Err(failure) if failure.refused && failure.items > 1 => {
                    // The destination refuses the transaction as a whole: the trouble is one
                    // of its items (or its size). Halves go at once until a single item is
                    // refused; only that one is given up, not those around it.
                    limit = failure.items.div_ceil(2);
                    refusals = 0;
                    tracing::info!(
                        destination = %destination,
                        items = failure.items,
                        "{}: sending {limit} items at a time to find the one refused",
                        failure.reason
                    );
                    continue;
                }
                Err(failure) => failure,
            };
            refusals = if failure.refused {
                refusals.saturating_add(1)
            } else {
                0
            };
            failures = failures.saturating_add(1);
            let now = now_ms();
            match down_since {
                None => {
                    down_since = Some(now);
                    self.set_down_since(&destination, down_since);
                }
                Some(since)
                    if now.saturating_sub(since) >= self.config.federation_catch_up_after_ms =>
                {
                    match self.reduce_for_catch_up(&destination) {
                        Ok(0) => {}
                        Ok(dropped) => tracing::warn!(
                            destination = %destination,
                            dropped,
                            down_for_ms = now.saturating_sub(since),
                            "destination down for long: keeping only the newest PDU of each room"
                        ),
                        Err(e) => tracing::warn!(
                            destination = %destination,
                            "cannot reduce the federation queue: {e}"
                        ),
                    }
                }
                Some(_) => {}
            }
            let delay = self.backoff(failures, failure.retry_after);
            tracing::warn!(
                destination = %destination,
                failures,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "federation transaction failed: {}",
                failure.reason
            );
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = worker.wake.notified() => {
                    tracing::debug!(destination = %destination, "woken: retrying now");
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Sends the oldest queued items of `destination` as one transaction.
    async fn send_next(
        &self,
        destination: &ServerName,
        refusals: u32,
        limit: usize,
    ) -> Result<Step, Failure> {
        let storage = |e: StorageError| Failure::new(format!("federation queue: {e}"));
        let prefix = QueueKey::prefix(destination.as_str());
        let pdus = self
            .db
            .scan(
                Queue::Pdu.table(),
                &prefix,
                &prefix,
                None,
                false,
                MAX_PDUS_PER_TRANSACTION.min(limit),
            )
            .map_err(storage)?;
        let edus = self
            .db
            .scan(
                Queue::Edu.table(),
                &prefix,
                &prefix,
                None,
                false,
                MAX_EDUS_PER_TRANSACTION.min(limit.saturating_sub(pdus.len())),
            )
            .map_err(storage)?;
        if pdus.is_empty() && edus.is_empty() {
            return Ok(Step::Empty);
        }
        // Within the byte budget, oldest first, PDUs before EDUs; at least one item.
        let mut budget = TRANSACTION_BYTE_BUDGET;
        let mut fits = |rows: Vec<Entry>, first: bool| -> Vec<Entry> {
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                let size = row.1.len();
                if size > budget && !(first && kept.is_empty()) {
                    budget = 0;
                    break;
                }
                budget = budget.saturating_sub(size);
                kept.push(row);
            }
            kept
        };
        let pdus = fits(pdus, true);
        let edus = fits(edus, pdus.is_empty());
        // Deleted together once the destination has accepted them.
        let mut sent = Batch::new();
        let mut items = |queue: Queue, rows: Vec<Entry>| -> Vec<Box<RawValue>> {
            let mut values = Vec::with_capacity(rows.len());
            for (key, value) in rows {
                sent.delete(queue.table(), key.to_vec());
                match serde_json::from_slice::<Box<RawValue>>(&value) {
                    Ok(v) => values.push(v),
                    // Queueing checked the JSON, so this is a damaged record: it would fail
                    // again on every retry.
                    Err(e) => tracing::error!(
                        destination = %destination,
                        "dropping an unreadable queued {queue:?}: {e}"
                    ),
                }
            }
            values
        };
        let pdus = items(Queue::Pdu, pdus);
        let edus: Vec<Raw<Edu>> = items(Queue::Edu, edus)
            .into_iter()
            .map(Raw::from_json)
            .collect();
        let (pdu_count, edu_count) = (pdus.len(), edus.len());
        let txn_id = format!(
            "{}.{}",
            self.txn_prefix,
            self.txn_counter.fetch_add(1, Ordering::Relaxed)
        );
        let failure = |e: Error| match e {
            Error::Matrix { message, .. } => Failure::new(message),
            other => Failure::new(other.to_string()),
        };
        let origin = OwnedServerName::try_from(self.config.server_name.as_str())
            .map_err(|e| Failure::new(format!("own server name: {e}")))?;
        let mut request = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from(txn_id.as_str()),
            origin,
            MilliSecondsSinceUnixEpoch(UInt::new_saturating(now_ms())),
        );
        request.pdus = pdus;
        request.edus = edus;
        let request = typed_http_request(
            self.keys.keypair(),
            &self.config.server_name,
            destination,
            request,
        )
        .map_err(failure)?;
        let response = send_signed(&self.client, destination, request)
            .await
            .map_err(failure)?;
        let status = response.status;
        if status != http::StatusCode::OK {
            let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            let retry_after = (status == http::StatusCode::TOO_MANY_REQUESTS)
                .then(|| answer.get("retry_after_ms").and_then(Value::as_u64))
                .flatten()
                .map(Duration::from_millis);
            let message = answer
                .get("error")
                .and_then(Value::as_str)
                .map(|m| m.chars().take(LOGGED_ERROR_CHARS).collect::<String>())
                .unwrap_or_default();
            let refused = matches!(status.as_u16(), 400 | 403 | 413);
            if refused && refusals.saturating_add(1) >= MAX_REFUSALS {
                tracing::warn!(
                    destination = %destination,
                    txn_id,
                    pdus = pdu_count,
                    edus = edu_count,
                    "giving up a transaction refused {MAX_REFUSALS} times ({status} {message})"
                );
                self.db.write(sent).map_err(storage)?;
                return Ok(Step::Dropped);
            }
            return Err(Failure {
                reason: format!("{destination} answered {status} {message}"),
                retry_after,
                refused,
                items: pdu_count + edu_count,
            });
        }
        // A 200 is the destination's acceptance whether or not its answer reads.
        match typed_answer::<send_transaction_message::v1::Response>(destination, response) {
            Ok(answer) => log_rejected_pdus(destination, &answer.pdus),
            Err(e) => tracing::debug!(destination = %destination, txn_id, "{e}"),
        }
        self.db.write(sent).map_err(storage)?;
        tracing::debug!(
            destination = %destination,
            txn_id,
            pdus = pdu_count,
            edus = edu_count,
            "federation transaction sent"
        );
        Ok(Step::Sent)
    }

    /// The wait after the `failures`-th failure in a row: the base doubled per failure, plus
    /// up to a quarter of jitter (so destinations that failed together do not retry
    /// together), capped at the maximum; at least what the destination asked for.
    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let base = self.config.federation_retry_base_ms.max(1);
        let max = self.config.federation_retry_max_ms.max(base);
        let doublings = failures.saturating_sub(1).min(32);
        let ms = base.saturating_mul(1u64 << doublings).min(max);
        let jitter = rand::thread_rng().gen_range(0..=ms / 4);
        let mut ms = ms.saturating_add(jitter).min(max);
        if let Some(asked) = retry_after {
            let asked = u64::try_from(asked.as_millis()).unwrap_or(u64::MAX);
            ms = ms.max(asked.min(max));
        }
        Duration::from_millis(ms)
    }
}

/// Unregisters a worker when its task ends for any reason (shutdown, runtime dropped), unless
/// another worker has taken its place.
struct Registration<'a> {
    sender: &'a Sender,
    destination: &'a ServerName,
    worker: &'a Arc<Worker>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut workers = self.sender.workers.lock();
        if workers
            .get(self.destination)
            .is_some_and(|w| Arc::ptr_eq(w, self.worker))
        {
            workers.remove(self.destination);
        }
    }
}

/// Logs the PDUs the destination refused. The spec says such PDUs are not sent again.
fn log_rejected_pdus(
    destination: &ServerName,
    results: &std::collections::BTreeMap<OwnedEventId, std::result::Result<(), String>>,
) {
    let rejected = results
        .iter()
        .filter_map(|(id, result)| Some((id, result.as_ref().err()?)))
        .take(MAX_PDUS_PER_TRANSACTION);
    for (event_id, error) in rejected {
        let error: String = error.chars().take(LOGGED_ERROR_CHARS).collect();
        tracing::warn!(
            destination = %destination,
            event_id = %event_id.as_str().chars().take(LOGGED_ERROR_CHARS).collect::<String>(),
            "the destination rejected a PDU: {error}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::{
        collections::VecDeque,
        path::Path,
        sync::atomic::AtomicUsize,
        time::{Duration, Instant},
    };

    use serde_json::json;
    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        net::TcpListener,
        sync::watch,
        task::JoinHandle,
    };

    use super::*;
    use crate::federation::{
        client::{ClientSettings, DEFAULT_MAX_RESPONSE_BYTES},
        resolve::tests::FakeDns,
    };

    const ORIGIN: &str = "origin.test";

    /// A transaction as the receiver saw it.
    #[derive(Debug, Clone)]
    struct Received {
        txn_id: String,
        authorization: String,
        body: Value,
        status: u16,
        at: Instant,
    }

    #[derive(Default)]
    struct ReceiverState {
        received: Mutex<Vec<Received>>,
        /// Statuses to answer, in order; 200 once they are used up.
        statuses: Mutex<VecDeque<u16>>,
        /// The body of 200 answers; `{"pdus": {}}` when unset.
        ok_body: Mutex<Option<Value>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        /// A transaction holding the PDU with this `content.n` is refused (400).
        poison: Mutex<Option<u64>>,
    }

    impl ReceiverState {
        fn received(&self) -> Vec<Received> {
            self.received.lock().clone()
        }
        fn delivered(&self) -> Vec<Received> {
            self.received()
                .into_iter()
                .filter(|r| r.status == 200)
                .collect()
        }
    }

    /// Another server on loopback over HTTPS (self-signed): answers
    /// `PUT /_matrix/federation/v1/send/{txnId}` and records every transaction. While the gate
    /// is closed it holds requests after recording them.
    struct Receiver {
        name: OwnedServerName,
        state: Arc<ReceiverState>,
        gate: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Receiver {
        async fn start() -> Self {
            Self::start_on(0).await
        }

        async fn start_on(port: u16) -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(ReceiverState::default());
            let (gate, gate_rx) = watch::channel(true);
            let task = tokio::spawn({
                let state = state.clone();
                async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            return;
                        };
                        let acceptor = acceptor.clone();
                        let state = state.clone();
                        let gate = gate_rx.clone();
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve(tls, &state, gate).await;
                            }
                        });
                    }
                }
            });
            Self {
                name: OwnedServerName::try_from(addr.to_string()).unwrap(),
                state,
                gate,
                task,
            }
        }

        fn hold(&self, hold: bool) {
            self.gate.send_replace(!hold);
        }
    }

    /// One HTTP/1.1 request on a connection, answered with `connection: close`.
    async fn serve(
        mut io: impl AsyncRead + AsyncWrite + Unpin,
        state: &ReceiverState,
        mut gate: watch::Receiver<bool>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + length {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = match path.strip_prefix("/_matrix/federation/v1/send/") {
            Some(txn_id) if method == "PUT" => {
                let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
                    .unwrap_or(Value::Null);
                let poisoned = state.poison.lock().is_some_and(|n| {
                    body["pdus"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|p| p["content"]["n"] == n))
                });
                let status = if poisoned {
                    400
                } else {
                    state.statuses.lock().pop_front().unwrap_or(200)
                };
                state.received.lock().push(Received {
                    txn_id: txn_id.to_owned(),
                    authorization: header("authorization"),
                    body,
                    status,
                    at: Instant::now(),
                });
                let _ = gate.wait_for(|open| *open).await;
                let body = if status == 200 {
                    state
                        .ok_body
                        .lock()
                        .clone()
                        .unwrap_or_else(|| json!({ "pdus": {} }))
                } else {
                    json!({ "errcode": "M_UNKNOWN", "error": "the test says no" })
                };
                // Before the answer leaves: once it has, the next request may come.
                state.in_flight.fetch_sub(1, Ordering::SeqCst);
                (status, body)
            }
            _ => (404, json!({ "errcode": "M_UNRECOGNIZED" })),
        };
        let body = body.to_string();
        let response = format!(
            "HTTP/1.1 {status} Test\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = io.write_all(response.as_bytes()).await;
        let _ = io.shutdown().await;
    }

    fn config(server_name: &str, base_ms: u64, max_ms: u64) -> Config {
        Config {
            server_name: server_name.to_owned(),
            federation_verify_tls: false,
            federation_retry_base_ms: base_ms,
            federation_retry_max_ms: max_ms,
            ..Config::default()
        }
    }

    /// A sender on `db`, with the signing key in `dir` and certificate checks off.
    fn sender_on(db: Arc<Db>, dir: &Path, config: Config) -> (Arc<Stream>, Arc<Sender>) {
        let (keys, _) = ServerKeys::load_or_generate(&dir.join("signing.key")).unwrap();
        let stream = Arc::new(Stream::load(db.clone()).unwrap());
        let settings = ClientSettings {
            ca_file: None,
            verify_tls: config.federation_verify_tls,
            well_known_port: 443,
            request_timeout: Duration::from_secs(10),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            proxy: None,
            guard: crate::outbound::OutboundGuard::new(&["127.0.0.0/8".to_owned()]),
        };
        let client =
            Arc::new(FederationClient::new(&settings, Arc::new(FakeDns::default())).unwrap());
        let sender = Sender::new(db, Arc::new(config), Arc::new(keys), client, stream.clone());
        (stream, sender)
    }

    struct Origin {
        dir: tempfile::TempDir,
        db: Arc<Db>,
        stream: Arc<Stream>,
        sender: Arc<Sender>,
    }

    fn origin(config: Config) -> Origin {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let (stream, sender) = sender_on(db.clone(), dir.path(), config);
        Origin {
            dir,
            db,
            stream,
            sender,
        }
    }

    fn event_id(n: usize) -> OwnedEventId {
        EventId::parse(format!("$event{n}")).unwrap()
    }

    fn pdu(n: usize) -> Vec<u8> {
        json!({ "type": "m.test", "content": { "n": n } })
            .to_string()
            .into_bytes()
    }

    fn edu(n: usize) -> Value {
        json!({ "edu_type": "m.test", "content": { "n": n } })
    }

    /// The `content.n` of every PDU (`field = "pdus"`) or EDU in `txns`, in order.
    fn numbers(txns: &[Received], field: &str) -> Vec<u64> {
        txns.iter()
            .flat_map(|t| t.body[field].as_array().cloned().unwrap_or_default())
            .map(|item| item["content"]["n"].as_u64().unwrap())
            .collect()
    }

    /// What is queued for `destination` in `table`, oldest first.
    fn queued(db: &Db, table: Table, destination: &ServerName) -> Vec<Value> {
        let prefix = QueueKey::prefix(destination.as_str());
        db.scan_prefix(table, &prefix)
            .unwrap()
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).unwrap())
            .collect()
    }

    fn queue_is_empty(db: &Db, destination: &ServerName) -> bool {
        queued(db, Table::DestinationseqPdu, destination).is_empty()
            && queued(db, Table::DestinationseqEdu, destination).is_empty()
    }

    /// A parameter of an `X-Matrix` authorization header.
    fn x_matrix_param(header: &str, name: &str) -> Option<String> {
        header
            .strip_prefix("X-Matrix ")?
            .split(',')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
    }

    async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const DEADLINE: Duration = Duration::from_secs(20);

    #[test]
    fn queue_keys_round_trip_and_sort_by_sequence() {
        let key = QueueKey {
            destination: "remote.test:8448",
            seq: 42,
        };
        let bytes = key.encode();
        assert_eq!(QueueKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&QueueKey::prefix("remote.test:8448")));
        let at = |seq| {
            QueueKey {
                destination: "a.test",
                seq,
            }
            .encode()
        };
        assert!(at(255) < at(256) && at(256) < at(1 << 40));
        // One destination's prefix does not cover another whose name extends it.
        let other = QueueKey {
            destination: "a.test.org",
            seq: 0,
        }
        .encode();
        assert!(!other.starts_with(&QueueKey::prefix("a.test")));
        assert!(QueueKey::decode(b"no separator").is_err());
        assert!(QueueKey::decode(&[b'a', 0xFF, 1, 2]).is_err());
        let mut long = at(1);
        long.push(0);
        assert!(QueueKey::decode(&long).is_err());
    }

    #[tokio::test]
    async fn transactions_hold_at_most_50_pdus_and_100_edus_in_order_once_each() {
        let receiver = Receiver::start().await;
        let o = origin(config(ORIGIN, 20, 1_000));
        let dest = receiver.name.clone();
        // Queued before the start, so the batching is deterministic.
        for n in 0..120 {
            o.sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &pdu(n))
                .unwrap();
        }
        for n in 0..150 {
            o.sender.queue_edu(&dest, edu(n)).unwrap();
        }
        let before = now_ms();
        o.sender.start();
        wait_for("the queue to drain", DEADLINE, || {
            queue_is_empty(&o.db, &dest) && o.sender.workers.lock().is_empty()
        })
        .await;
        let after = now_ms();
        let txns = receiver.state.received();
        assert!(txns.iter().all(|t| t.status == 200));
        let sizes: Vec<(usize, usize)> = txns
            .iter()
            .map(|t| {
                (
                    t.body["pdus"].as_array().unwrap().len(),
                    // No EDUs: the field is left out, as the spec allows (ruma's request).
                    t.body["edus"].as_array().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(sizes, vec![(50, 100), (50, 50), (20, 0)]);
        assert_eq!(numbers(&txns, "pdus"), (0..120).collect::<Vec<_>>());
        assert_eq!(numbers(&txns, "edus"), (0..150).collect::<Vec<_>>());
        let ids: BTreeSet<&str> = txns.iter().map(|t| t.txn_id.as_str()).collect();
        assert_eq!(ids.len(), txns.len(), "transaction ids repeat");
        for t in &txns {
            assert_eq!(t.body["origin"], ORIGIN);
            let ts = t.body["origin_server_ts"].as_u64().unwrap();
            assert!((before..=after).contains(&ts), "origin_server_ts {ts}");
            assert_eq!(
                x_matrix_param(&t.authorization, "origin").as_deref(),
                Some(ORIGIN),
                "authorization {:?}",
                t.authorization
            );
            assert_eq!(
                x_matrix_param(&t.authorization, "destination").as_deref(),
                Some(dest.as_str())
            );
            assert!(x_matrix_param(&t.authorization, "sig").is_some());
        }
    }

    #[tokio::test]
    async fn one_transaction_in_flight_per_destination() {
        let held = Receiver::start().await;
        let free = Receiver::start().await;
        held.hold(true);
        let o = origin(config(ORIGIN, 20, 1_000));
        o.sender.start();
        o.sender.start(); // idempotent: still one worker per destination
        let both = [held.name.clone(), free.name.clone()];
        o.sender.queue_pdu(&both, &event_id(0), &pdu(0)).unwrap();
        wait_for("the first transaction to arrive", DEADLINE, || {
            held.state.received().len() == 1
        })
        .await;
        // The other destination is not held up by this one.
        wait_for("the other destination's transaction", DEADLINE, || {
            free.state.delivered().len() == 1
        })
        .await;
        for n in 1..61 {
            o.sender
                .queue_pdu(std::slice::from_ref(&held.name), &event_id(n), &pdu(n))
                .unwrap();
        }
        for n in 0..10 {
            o.sender.queue_edu(&held.name, edu(n)).unwrap();
        }
        // While the first transaction is unanswered, nothing else goes to this destination.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(held.state.received().len(), 1);
        held.hold(false);
        wait_for("everything to be delivered", DEADLINE, || {
            numbers(&held.state.delivered(), "pdus").len() == 61
                && queue_is_empty(&o.db, &held.name)
        })
        .await;
        let txns = held.state.delivered();
        assert_eq!(numbers(&txns, "pdus"), (0..61).collect::<Vec<_>>());
        assert_eq!(numbers(&txns, "edus"), (0..10).collect::<Vec<_>>());
        assert_eq!(held.state.max_in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(free.state.max_in_flight.load(Ordering::SeqCst), 1);
    }

    // Issue 15 item 6: a transaction refused as a whole is narrowed down to the item the
    // destination refuses; only that item is given up, not the 49 around it.
    #[tokio::test]
    async fn only_the_item_a_destination_refuses_is_given_up() {
        let receiver = Receiver::start().await;
        *receiver.state.poison.lock() = Some(7);
        let o = origin(config(ORIGIN, 20, 200));
        let dest = receiver.name.clone();
        let total = MAX_PDUS_PER_TRANSACTION + 2;
        for n in 0..total {
            o.sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &pdu(n))
                .unwrap();
        }
        o.sender.start();
        wait_for("the queue to be delivered", DEADLINE, || {
            queue_is_empty(&o.db, &dest)
        })
        .await;
        let mut delivered = numbers(&receiver.state.delivered(), "pdus");
        delivered.sort_unstable();
        let expected: Vec<u64> = (0..total as u64).filter(|n| *n != 7).collect();
        assert_eq!(delivered, expected, "everything but the refused PDU");
        // The refused one alone was refused the last times.
        let txns = receiver.state.received();
        let last_refused: Vec<_> = txns
            .iter()
            .filter(|t| t.status == 400)
            .rev()
            .take(3)
            .collect();
        assert!(last_refused
            .iter()
            .all(|t| numbers(std::slice::from_ref(t), "pdus") == vec![7]));
    }

    // Issue 15 item 6: transactions are packed by bytes as well as by count.
    #[tokio::test]
    async fn transactions_are_packed_within_the_byte_budget() {
        let receiver = Receiver::start().await;
        let o = origin(config(ORIGIN, 20, 200));
        let dest = receiver.name.clone();
        let big = |n: usize| {
            json!({ "type": "m.test", "content": { "n": n, "pad": "x".repeat(60_000) } })
                .to_string()
                .into_bytes()
        };
        for n in 0..40 {
            o.sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &big(n))
                .unwrap();
        }
        o.sender.start();
        wait_for("the queue to be delivered", DEADLINE, || {
            queue_is_empty(&o.db, &dest)
        })
        .await;
        let txns = receiver.state.delivered();
        assert!(
            txns.len() >= 3,
            "40 PDUs of 60 KB take several transactions"
        );
        for t in &txns {
            let size = serde_json::to_vec(&t.body["pdus"]).unwrap().len();
            assert!(
                size <= TRANSACTION_BYTE_BUDGET + 1024,
                "{size} bytes in one transaction"
            );
        }
        assert_eq!(numbers(&txns, "pdus"), (0..40).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn failed_transactions_are_retried_after_a_backoff() {
        let receiver = Receiver::start().await;
        receiver.state.statuses.lock().push_back(500);
        let base = 200;
        let o = origin(config(ORIGIN, base, 5_000));
        let dest = receiver.name.clone();
        for n in 0..3 {
            o.sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &pdu(n))
                .unwrap();
        }
        for n in 0..2 {
            o.sender.queue_edu(&dest, edu(n)).unwrap();
        }
        o.sender.start();
        wait_for("the retry to be delivered", DEADLINE, || {
            receiver.state.delivered().len() == 1 && queue_is_empty(&o.db, &dest)
        })
        .await;
        let txns = receiver.state.received();
        assert_eq!(
            txns.iter().map(|t| t.status).collect::<Vec<_>>(),
            vec![500, 200]
        );
        assert_eq!(txns[0].body["pdus"], txns[1].body["pdus"]);
        assert_eq!(txns[0].body["edus"], txns[1].body["edus"]);
        assert_eq!(numbers(&txns[1..], "pdus"), vec![0, 1, 2]);
        assert_eq!(numbers(&txns[1..], "edus"), vec![0, 1]);
        assert_ne!(txns[0].txn_id, txns[1].txn_id);
        let waited = txns[1].at.duration_since(txns[0].at);
        assert!(
            waited >= Duration::from_millis(base),
            "retried after {waited:?}, before the backoff"
        );
    }

    #[tokio::test]
    async fn queue_survives_a_restart() {
        // The receiver's port, with nothing listening on it yet.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dest = OwnedServerName::try_from(format!("127.0.0.1:{port}")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("db");
        let db = Arc::new(Db::open(&db_path).unwrap());
        let (stream, sender) = sender_on(db.clone(), dir.path(), config(ORIGIN, 20, 100));
        sender.start();
        for n in 0..5 {
            sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &pdu(n))
                .unwrap();
        }
        for n in 0..3 {
            sender.queue_edu(&dest, edu(n)).unwrap();
        }
        // A few attempts fail: nobody listens.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.notifier().shutdown();
        drop((stream, sender));
        // The worker lets go of the database once it has stopped; then it is closed for real.
        wait_for("the worker to stop", DEADLINE, || {
            Arc::strong_count(&db) == 1
        })
        .await;
        drop(Arc::into_inner(db).unwrap());

        let db = Arc::new(Db::open(&db_path).unwrap());
        assert_eq!(queued(&db, Table::DestinationseqPdu, &dest).len(), 5);
        assert_eq!(queued(&db, Table::DestinationseqEdu, &dest).len(), 3);
        let (_stream, sender) = sender_on(db.clone(), dir.path(), config(ORIGIN, 20, 100));
        sender.start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let receiver = Receiver::start_on(port).await;
        wait_for("the resumed queue to be delivered", DEADLINE, || {
            queue_is_empty(&db, &dest)
        })
        .await;
        let txns = receiver.state.delivered();
        assert_eq!(numbers(&txns, "pdus"), vec![0, 1, 2, 3, 4]);
        assert_eq!(numbers(&txns, "edus"), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn wake_cuts_a_backoff_short() {
        let receiver = Receiver::start().await;
        receiver.state.statuses.lock().push_back(503);
        // A backoff far longer than the test.
        let o = origin(config(ORIGIN, 600_000, 600_000));
        let dest = receiver.name.clone();
        o.sender.start();
        o.sender
            .queue_pdu(std::slice::from_ref(&dest), &event_id(0), &pdu(0))
            .unwrap();
        wait_for("the failed attempt", DEADLINE, || {
            receiver.state.received().len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.state.received().len(), 1, "retried without a wake");
        // Waking a destination with nothing queued is harmless.
        o.sender
            .wake(<&ServerName>::try_from("elsewhere.test").unwrap());
        o.sender.wake(&dest);
        wait_for("the retry after the wake", DEADLINE, || {
            receiver.state.delivered().len() == 1 && queue_is_empty(&o.db, &dest)
        })
        .await;
    }

    #[tokio::test]
    async fn own_server_name_is_never_a_destination() {
        let own = Receiver::start().await;
        let other = Receiver::start().await;
        // We are the server at `own`'s address.
        let o = origin(config(own.name.as_str(), 20, 1_000));
        o.sender.start();
        o.sender
            .queue_pdu(
                &[own.name.clone(), other.name.clone(), other.name.clone()],
                &event_id(0),
                &pdu(0),
            )
            .unwrap();
        o.sender
            .queue_pdu(std::slice::from_ref(&own.name), &event_id(1), &pdu(1))
            .unwrap();
        o.sender.queue_edu(&own.name, edu(0)).unwrap();
        assert!(queue_is_empty(&o.db, &own.name));
        assert!(!o.sender.workers.lock().contains_key(&own.name));
        wait_for("the other server's transaction", DEADLINE, || {
            other.state.delivered().len() == 1 && queue_is_empty(&o.db, &other.name)
        })
        .await;
        // Listed twice, sent once.
        assert_eq!(numbers(&other.state.delivered(), "pdus"), vec![0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(own.state.received().is_empty());
    }

    #[tokio::test]
    async fn rejected_pdus_are_not_retried() {
        let receiver = Receiver::start().await;
        *receiver.state.ok_body.lock() =
            Some(json!({ "pdus": { "$event0": { "error": "not allowed" }, "$event1": {} } }));
        let o = origin(config(ORIGIN, 20, 1_000));
        let dest = receiver.name.clone();
        for n in 0..2 {
            o.sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &pdu(n))
                .unwrap();
        }
        o.sender.start();
        wait_for("the queue to drain", DEADLINE, || {
            queue_is_empty(&o.db, &dest) && o.sender.workers.lock().is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(receiver.state.received().len(), 1);
    }

    #[tokio::test]
    async fn workers_stop_at_shutdown_and_keep_the_queue() {
        let receiver = Receiver::start().await;
        receiver.hold(true);
        let o = origin(config(ORIGIN, 20, 1_000));
        let dest = receiver.name.clone();
        o.sender.start();
        o.sender
            .queue_pdu(std::slice::from_ref(&dest), &event_id(0), &pdu(0))
            .unwrap();
        wait_for("the transaction to arrive", DEADLINE, || {
            receiver.state.received().len() == 1
        })
        .await;
        o.stream.notifier().shutdown();
        // The worker gives up its transaction in flight and ends at once, well before the
        // client's 10 s request timeout would have ended the request.
        wait_for("the worker to end", Duration::from_secs(5), || {
            o.sender.workers.lock().is_empty() && Arc::strong_count(&o.sender) == 1
        })
        .await;
        assert_eq!(queued(&o.db, Table::DestinationseqPdu, &dest).len(), 1);
        assert!(o.dir.path().exists());
    }

    // Issue 15: both queues of a destination are capped, the oldest items dropped.
    #[test]
    fn edu_and_pdu_queues_are_capped() {
        let o = origin(config(ORIGIN, 20, 1_000));
        let dest = <&ServerName>::try_from("remote.test").unwrap();
        let extra = 5;
        let total = usize::try_from(MAX_QUEUED_EDUS).unwrap() + extra;
        for n in 0..total {
            o.sender.queue_edu(dest, edu(n)).unwrap();
            o.sender
                .queue_pdu(&[dest.to_owned()], &event_id(n), &pdu(n))
                .unwrap();
        }
        let edus = queued(&o.db, Table::DestinationseqEdu, dest);
        // The EDU that found the queue full dropped the oldest tenth.
        let dropped = usize::try_from(EDUS_DROPPED_AT_CAP).unwrap();
        assert_eq!(edus.len(), total - dropped);
        assert!(edus.len() <= usize::try_from(MAX_QUEUED_EDUS).unwrap());
        assert_eq!(edus[0]["content"]["n"], dropped, "the oldest are dropped");
        assert_eq!(edus[edus.len() - 1]["content"]["n"], total - 1);
        let pdus = queued(&o.db, Table::DestinationseqPdu, dest);
        let dropped = usize::try_from(PDUS_DROPPED_AT_CAP).unwrap();
        assert_eq!(pdus.len(), total - dropped);
        assert!(pdus.len() <= usize::try_from(MAX_QUEUED_PDUS).unwrap());
        assert_eq!(pdus[0]["content"]["n"], dropped, "the oldest are dropped");
        assert_eq!(pdus[pdus.len() - 1]["content"]["n"], total - 1);
        // Not started: nothing was sent, nothing runs.
        assert!(o.sender.workers.lock().is_empty());
    }

    fn pdu_in(room: Option<&str>, n: usize) -> Vec<u8> {
        let mut pdu = json!({ "type": "m.test", "content": { "n": n } });
        if let Some(room) = room {
            pdu["room_id"] = json!(room);
        }
        pdu.to_string().into_bytes()
    }

    // Issue 15: a destination that has been failing for longer than
    // federation_catch_up_after_ms keeps only the newest PDU of each room; once back, it gets
    // those and the record of its failure is gone.
    #[tokio::test]
    async fn a_destination_down_for_long_keeps_the_newest_pdu_of_each_room() {
        // The receiver's port, with nothing listening on it yet.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dest = OwnedServerName::try_from(format!("127.0.0.1:{port}")).unwrap();
        let o = origin(Config {
            federation_catch_up_after_ms: 300,
            ..config(ORIGIN, 20, 50)
        });
        let rooms = [
            Some("!a:origin.test"),
            Some("!b:origin.test"),
            Some("!a:origin.test"),
            None,
            Some("!a:origin.test"),
            Some("!b:origin.test"),
            Some("!c:origin.test"),
        ];
        for (n, room) in rooms.iter().enumerate() {
            o.sender
                .queue_pdu(std::slice::from_ref(&dest), &event_id(n), &pdu_in(*room, n))
                .unwrap();
        }
        o.sender.start();
        wait_for("the failure to be recorded", DEADLINE, || {
            o.sender.down_since(&dest).is_some()
        })
        .await;
        // Not before the bound.
        assert_eq!(queued(&o.db, Table::DestinationseqPdu, &dest).len(), 7);
        let newest = |db: &Db| {
            queued(db, Table::DestinationseqPdu, &dest)
                .iter()
                .map(|p| p["content"]["n"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        wait_for("the queue to be reduced", DEADLINE, || {
            newest(&o.db) == vec![3, 4, 5, 6]
        })
        .await;
        let receiver = Receiver::start_on(port).await;
        wait_for("the rest to be delivered", DEADLINE, || {
            queue_is_empty(&o.db, &dest)
        })
        .await;
        assert_eq!(
            numbers(&receiver.state.delivered(), "pdus"),
            vec![3, 4, 5, 6]
        );
        assert_eq!(o.sender.down_since(&dest), None);
    }

    // Issue 15: the time a destination started failing survives a restart, so a server
    // restarted daily still gives up on a destination that is gone for good.
    #[tokio::test]
    async fn the_start_of_a_failure_survives_a_restart() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dest = OwnedServerName::try_from(format!("127.0.0.1:{port}")).unwrap();
        let o = origin(Config {
            federation_catch_up_after_ms: 60_000,
            ..config(ORIGIN, 20, 50)
        });
        // Failing since long before this start.
        o.sender
            .set_down_since(&dest, Some(now_ms().saturating_sub(120_000)));
        for n in 0..4 {
            o.sender
                .queue_pdu(
                    std::slice::from_ref(&dest),
                    &event_id(n),
                    &pdu_in(Some("!a:origin.test"), n),
                )
                .unwrap();
        }
        o.sender.start();
        wait_for("the queue to be reduced", DEADLINE, || {
            queued(&o.db, Table::DestinationseqPdu, &dest).len() == 1
        })
        .await;
        assert_eq!(
            queued(&o.db, Table::DestinationseqPdu, &dest)[0]["content"]["n"],
            3
        );
    }

    #[test]
    fn malformed_items_are_refused() {
        let o = origin(config(ORIGIN, 20, 1_000));
        let dest = <&ServerName>::try_from("remote.test").unwrap();
        let dests = [dest.to_owned()];
        assert!(o
            .sender
            .queue_pdu(&dests, &event_id(0), b"not json")
            .is_err());
        assert!(o.sender.queue_pdu(&dests, &event_id(0), b"[1, 2]").is_err());
        assert!(o.sender.queue_edu(dest, json!({ "content": {} })).is_err());
        assert!(o
            .sender
            .queue_edu(dest, json!({ "edu_type": "m.typing" }))
            .is_err());
        assert!(queue_is_empty(&o.db, dest));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let o = origin(config(ORIGIN, 1_000, 10_000));
        let ms = |failures, asked: Option<u64>| {
            o.sender
                .backoff(failures, asked.map(Duration::from_millis))
                .as_millis()
        };
        for _ in 0..20 {
            assert!((1_000..=1_250).contains(&ms(1, None)));
            assert!((2_000..=2_500).contains(&ms(2, None)));
            assert!((8_000..=10_000).contains(&ms(4, None)));
            assert_eq!(ms(5, None), 10_000);
            assert_eq!(ms(u32::MAX, None), 10_000);
            assert_eq!(ms(1, Some(5_000)), 5_000);
            assert_eq!(ms(1, Some(60_000)), 10_000);
        }
    }
}
