//! Delayed events (MSC4140): events a local user schedules to be sent into a room later, by
//! this server, through the same local-send path as a request of theirs would take then.
//! MatrixRTC clients use them as a dead-man switch: a call member schedules their own "left
//! the call" state event and keeps restarting its timer; if the client dies, the event goes
//! out when the timer runs out.
//!
//! A scheduled delayed event is a row of `delayid_delayedevent` plus two index rows keyed by
//! its send time (`duedelayid_scheduled`, which the timer reads from its head, and
//! `userduedelayid_scheduled`, a user's own), all written in one batch before the request
//! that made it is answered. One timer task sleeps until the earliest send time (or until a
//! sooner one is written) and sends what is due, oldest first; after a restart, whatever came
//! due while the server was down goes out at once, in order.
//!
//! Sending goes through [`Rooms`] as a user's `/send` or `/state` would, so the room's auth
//! rules and the profile's policy decide at that moment (MSC4140: power levels are evaluated
//! when the event is sent). The event carries its delay id ([`NewEvent::delay_id`]): the
//! [`SentRecorder`] observer records the delayed event as sent in the event's own batch, so a
//! crash can neither lose the event nor send it twice. A delayed event that cannot be sent is
//! finalised with the error, never retried (MSC4140). Finalised delayed events are kept for
//! [`FINALISED_TTL_MS`] for `GET /delayed_events/{delay_id}`, then expire
//! ([`crate::expiry`]).

pub mod model;

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::StatusCode;
use paracord_core::{time::now_ms, Config, Error, ErrorKind, Result};
use paracord_storage::{key, Batch, Db, KeyBuf, Table};
use parking_lot::Mutex;
use ruma::{EventId, OwnedEventId, UserId};

use self::model::{Action, DelayedEvent, Finalisation, Finalised, NewDelayedEvent, Outcome};
use crate::{
    ratelimit::{Limit, RateLimiter},
    rooms::{hooks::EventObserver, membership::membership_of, pdu::MAX_PDU_BYTES, NewEvent, Rooms},
    stream::Stream,
};

/// How long a finalised delayed event stays readable: MSC4140's recommendation, 7 days.
pub const FINALISED_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most of a user's scheduled delayed events one listing returns (the per-user cap keeps
/// them fewer unless it was lowered after they were scheduled).
const MAX_LISTED: usize = 10_000;
/// Most due delayed events the timer reads at once (it reads again until none is due).
const DUE_BATCH: usize = 64;
/// How long the timer waits after its storage failed before it tries again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Most bytes of an event type or state key (as the pipeline checks when it sends).
const MAX_ID_FIELD_BYTES: usize = 255;
/// Length of a delay id: random letters and digits, as hard to guess as an access token.
const DELAY_ID_LEN: usize = 32;

key! {
    /// The key of `duedelayid_scheduled`: `send time (ms) delay_id`. Keys sort by send time,
    /// so the timer's next delayed event is the first key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct DueKey<'a> {
        due: u64,
        delay_id: last_str,
    }
}

key! {
    /// The key of `userduedelayid_scheduled`: `user_id 0xFF send time (ms) delay_id`. A
    /// user's scheduled delayed events, the next one due first.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct UserDueKey<'a> {
        user_id: str => prefix,
        due: u64,
        delay_id: last_str,
    }
}

key! {
    /// The key of `usertxn_delayid`: `user_id 0xFF device_id 0xFF room_id 0xFF txn`, the
    /// transaction id qualified by the endpoint that used it (`send/…`, `delayed_event/…`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct TxnKey<'a> {
        user_id: str,
        device_id: str,
        room_id: str,
        txn: last_str,
    }
}

/// The first key of `duedelayid_scheduled` past every delayed event due by `now`.
fn due_upper_bound(now: u64) -> Vec<u8> {
    KeyBuf::new().u64(now.saturating_add(1)).into_vec()
}

/// The delayed events service.
pub struct DelayedEvents {
    db: Arc<Db>,
    rooms: Arc<Rooms>,
    ratelimit: Arc<RateLimiter>,
    max_delay_ms: u64,
    max_scheduled: u64,
    /// Held while a user's delayed events are counted and a new one written (and a
    /// transaction id looked up), so two requests cannot both take the last free place.
    schedule_lock: Mutex<()>,
    /// One lock per delayed event being changed or sent: a restart or cancel waits for a
    /// send in progress, and sees how it ended.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the timer: a delayed event may be due sooner than the one it sleeps for.
    wake: tokio::sync::Notify,
}

impl DelayedEvents {
    pub fn new(
        db: Arc<Db>,
        config: &Config,
        rooms: Arc<Rooms>,
        ratelimit: Arc<RateLimiter>,
    ) -> Self {
        Self {
            db,
            rooms,
            ratelimit,
            max_delay_ms: config.delayed_events_max_delay_ms,
            max_scheduled: config.delayed_events_max_scheduled,
            schedule_lock: Mutex::new(()),
            locks: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Schedules a delayed event of `user` (sent from `device`); returns its delay id. A
    /// repeated transaction gets the delay id it got the first time. The limits: delayed
    /// events turned off (`403 M_FORBIDDEN`), a delay of 0 (`400 M_INVALID_PARAM`) or over
    /// the maximum (`400` [`ErrorKind::MaxDelayExceeded`]), as many scheduled as allowed
    /// (`400` [`ErrorKind::MaxDelayedEventsExceeded`]), and the rate limit of sends. Whether
    /// the user may send the event is decided when it is sent (MSC4140).
    #[tracing::instrument(skip_all, fields(room_id = %new.room_id))]
    pub fn schedule(&self, user: &UserId, device: &str, new: NewDelayedEvent) -> Result<String> {
        if self.max_scheduled == 0 {
            return Err(Error::forbidden(
                "delayed events are turned off on this server",
            ));
        }
        if new.delay_ms == 0 {
            return Err(Error::invalid_param(
                "the delay must be a positive number of milliseconds",
            ));
        }
        if new.delay_ms > self.max_delay_ms {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::MaxDelayExceeded {
                    max_delay_ms: self.max_delay_ms,
                },
                format!(
                    "the delay is longer than the {} ms this server allows",
                    self.max_delay_ms
                ),
            ));
        }
        check_new_event(&new)?;
        self.rooms.room_or_404(&new.room_id)?;
        let txn_key = new.txn.as_deref().map(|txn| {
            TxnKey {
                user_id: user.as_str(),
                device_id: device,
                room_id: new.room_id.as_str(),
                txn,
            }
            .encode()
        });
        let now = now_ms();
        let record = {
            let _guard = self.schedule_lock.lock();
            if let Some(key) = &txn_key {
                if let Some(existing) = self.db.get(Table::UsertxnDelayid, key)? {
                    return String::from_utf8(existing).map_err(Error::internal);
                }
            }
            self.ratelimit.check(Limit::Send, user.as_str())?;
            let scheduled = self.scheduled_keys(user, self.max_scheduled)?;
            if scheduled.len() as u64 >= self.max_scheduled {
                let next = scheduled
                    .first()
                    .and_then(|k| UserDueKey::decode(k).ok())
                    .map_or(now, |k| k.due);
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::MaxDelayedEventsExceeded {
                        retry_after_ms: next.saturating_sub(now),
                    },
                    "the maximum number of delayed events has been reached",
                ));
            }
            let record = DelayedEvent {
                delay_id: new_delay_id(),
                user_id: user.to_owned(),
                device_id: device.to_owned(),
                room_id: new.room_id,
                kind: new.kind,
                state_key: new.state_key,
                content: new.content,
                delay_ms: new.delay_ms,
                running_since: now,
                ts: new.ts,
                finalised: None,
            };
            let mut batch = Batch::new();
            put_scheduled(&mut batch, &record)?;
            if let Some(key) = txn_key {
                crate::expiry::schedule(
                    &mut batch,
                    Table::UsertxnDelayid,
                    &key,
                    now.saturating_add(crate::expiry::TRANSACTION_TTL_MS),
                );
                batch.put(
                    Table::UsertxnDelayid,
                    key,
                    record.delay_id.as_bytes().to_vec(),
                );
            }
            self.db.write(batch)?;
            record
        };
        self.wake.notify_one();
        Ok(record.delay_id)
    }

    /// A delayed event of `user`, scheduled or finalised (and not yet expired). Someone
    /// else's is not found, as an unknown one.
    pub fn get(&self, user: &UserId, delay_id: &str) -> Result<DelayedEvent> {
        self.load(delay_id)?
            .filter(|r| r.user_id == user)
            .ok_or_else(|| Error::not_found("no such delayed event"))
    }

    /// The scheduled delayed events of `user`, the next one due first.
    pub fn list(&self, user: &UserId) -> Result<Vec<DelayedEvent>> {
        let keys = self.scheduled_keys(user, MAX_LISTED as u64)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let key = UserDueKey::decode(&key)?;
            match self.load(key.delay_id)? {
                Some(record) if record.finalised.is_none() => out.push(record),
                _ => {
                    tracing::warn!(user = %user, "a scheduled delayed event's index row names no scheduled event")
                }
            }
        }
        Ok(out)
    }

    /// Restarts, cancels or sends a delayed event of `user`. Someone else's, or an unknown
    /// one, is `404`; a finalised one is treated as `finalisation` says. A `send` that fails
    /// answers the error a `/send` or `/state` would have, and the delayed event stays
    /// scheduled (MSC4140).
    #[tracing::instrument(skip_all, fields(user = %user, action = ?action))]
    pub async fn manage(
        &self,
        user: &UserId,
        delay_id: &str,
        action: Action,
        finalisation: Finalisation,
    ) -> Result<()> {
        self.ratelimit.check(Limit::DelayedEvents, user.as_str())?;
        self.manage_unlimited(user, delay_id, action, finalisation)
            .await
    }

    /// [`DelayedEvents::manage`] on the server's own behalf (the RTC focus keeping a
    /// delegated leave event alive, MSC4195): not counted against the user's rate limit.
    pub async fn manage_delegated(
        &self,
        user: &UserId,
        delay_id: &str,
        action: Action,
    ) -> Result<()> {
        self.manage_unlimited(user, delay_id, action, Finalisation::Current)
            .await
    }

    async fn manage_unlimited(
        &self,
        user: &UserId,
        delay_id: &str,
        action: Action,
        finalisation: Finalisation,
    ) -> Result<()> {
        let lock = self.lock_of(delay_id);
        let _guard = lock.lock().await;
        let record = self.get(user, delay_id)?;
        let Some(finalised) = &record.finalised else {
            return match action {
                Action::Restart => self.restart(record),
                Action::Cancel => self.finalise(&record, Outcome::Cancelled),
                Action::Send => {
                    let event_id = self.send_now(&record).await?;
                    self.record_sent(&record.delay_id, event_id)
                }
            };
        };
        match (finalisation, action, &finalised.outcome) {
            (_, Action::Send, Outcome::Sent { .. }) => Ok(()),
            (Finalisation::Legacy, _, _) => Err(Error::not_found("no such delayed event")),
            (
                Finalisation::Current,
                Action::Cancel,
                Outcome::Cancelled | Outcome::Failed { .. },
            ) => Ok(()),
            (Finalisation::Current, _, Outcome::Sent { .. }) => Err(Error::new(
                StatusCode::CONFLICT,
                ErrorKind::Unknown,
                "the delayed event has already been sent",
            )),
            (Finalisation::Current, _, _) => Err(Error::new(
                StatusCode::CONFLICT,
                ErrorKind::Unknown,
                "the delayed event has already been cancelled",
            )),
        }
    }

    /// The limits clients are told of (`/capabilities`): the longest delay and how many
    /// delayed events a user may have scheduled.
    pub fn limits(&self) -> (u64, u64) {
        (self.max_delay_ms, self.max_scheduled)
    }

    /// Spawns the timer on the current tokio runtime (it stops when the server shuts down).
    /// Without a runtime nothing is sent until one starts it.
    pub fn start(self: &Arc<Self>, stream: Arc<Stream>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!("the delayed events timer was started outside a tokio runtime");
            return;
        };
        let me = self.clone();
        handle.spawn(async move {
            let shutdown = stream.notifier().shutting_down();
            tokio::pin!(shutdown);
            loop {
                let wait = match me.send_due().await {
                    Ok(Some(next)) => Some(Duration::from_millis(next.saturating_sub(now_ms()))),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!("cannot send due delayed events: {e}");
                        Some(RETRY_AFTER_FAILURE)
                    }
                };
                let sleep = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = me.wake.notified() => {}
                    () = sleep => {}
                }
            }
        });
    }

    /// Sends every delayed event that is due, the earliest first; returns when the next one
    /// is due (`None`: nothing is scheduled).
    async fn send_due(&self) -> Result<Option<u64>> {
        loop {
            let now = now_ms();
            let due = self.db.scan(
                Table::DuedelayidScheduled,
                &[],
                &[],
                Some(&due_upper_bound(now)),
                false,
                DUE_BATCH,
            )?;
            if due.is_empty() {
                let next = self
                    .db
                    .scan(Table::DuedelayidScheduled, &[], &[], None, false, 1)?;
                return match next.first() {
                    Some((key, _)) => Ok(Some(DueKey::decode(key)?.due)),
                    None => Ok(None),
                };
            }
            for (key, _) in &due {
                let key = DueKey::decode(key)?;
                self.send_when_due(key.due, key.delay_id).await?;
            }
        }
    }

    /// Sends the delayed event the timer found due at `due`, unless it was restarted,
    /// cancelled or sent meanwhile. A failure to send finalises it with the error; only a
    /// failure to write is returned.
    async fn send_when_due(&self, due: u64, delay_id: &str) -> Result<()> {
        let lock = self.lock_of(delay_id);
        let _guard = lock.lock().await;
        let record = match self.load(delay_id)? {
            Some(r) if r.finalised.is_none() && r.due() == due => r,
            found => {
                // Restarted, cancelled or sent since the timer read its row, which went with
                // that change; a row still there names nothing to send (damage, or a
                // deleted event) and would be found due again and again: it goes.
                if found.is_none() {
                    tracing::warn!("dropping a delayed event timer row without its event");
                }
                let mut batch = Batch::new();
                batch.delete(
                    Table::DuedelayidScheduled,
                    DueKey { due, delay_id }.encode(),
                );
                return Ok(self.db.write(batch)?);
            }
        };
        match self.send_now(&record).await {
            Ok(event_id) => self.record_sent(delay_id, event_id),
            Err(e) => {
                tracing::info!(
                    user = %record.user_id, room_id = %record.room_id, error = %e,
                    "a delayed event could not be sent"
                );
                let (_, error) = e.classify();
                self.finalise(&record, Outcome::Failed { error })
            }
        }
    }

    /// Sends a delayed event now, as its user's `/send` or `/state` would (membership, rate
    /// limit, the room's rules): the event's id, or the error such a request would get.
    async fn send_now(&self, record: &DelayedEvent) -> Result<OwnedEventId> {
        let (room, user) = (&record.room_id, &record.user_id);
        let kind = record.kind.as_str().into();
        let content = record.content.clone();
        let mut new = match &record.state_key {
            None => {
                if !self.rooms.is_joined(room, user)? {
                    self.rooms.room_or_404(room)?;
                    return Err(Error::forbidden("you are not in this room"));
                }
                NewEvent::message(kind, content)
            }
            Some(state_key) => {
                self.rooms
                    .check_state_submission(room, user, &record.kind, &content)?;
                NewEvent::state(kind, state_key, content)
            }
        };
        self.ratelimit.check(Limit::Send, user.as_str())?;
        new.ts = record.ts;
        new.delay_id = Some(record.delay_id.clone());
        if new.state_key.is_some() {
            self.rooms.send_state(room, user, new).await
        } else {
            self.rooms.append(room, user, new).await
        }
    }

    /// Records a delayed event as sent, if its event's batch did not already (a state event
    /// that changed nothing, or a join, makes no event carrying its delay id).
    fn record_sent(&self, delay_id: &str, event_id: OwnedEventId) -> Result<()> {
        match self.load(delay_id)? {
            Some(record) if record.finalised.is_none() => {
                self.finalise(&record, Outcome::Sent { event_id })
            }
            _ => Ok(()),
        }
    }

    /// Starts the timer of a scheduled delayed event again from now.
    fn restart(&self, record: DelayedEvent) -> Result<()> {
        let mut batch = Batch::new();
        delete_scheduled(&mut batch, &record);
        let restarted = DelayedEvent {
            running_since: now_ms(),
            ..record
        };
        put_scheduled(&mut batch, &restarted)?;
        self.db.write(batch)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Finalises a scheduled delayed event with `outcome`.
    fn finalise(&self, record: &DelayedEvent, outcome: Outcome) -> Result<()> {
        let mut batch = Batch::new();
        finalise_into(&mut batch, record, outcome, now_ms())?;
        Ok(self.db.write(batch)?)
    }

    fn load(&self, delay_id: &str) -> Result<Option<DelayedEvent>> {
        load(&self.db, delay_id)
    }

    /// The keys of up to `limit` scheduled delayed events of `user`, the next one due first.
    fn scheduled_keys(&self, user: &UserId, limit: u64) -> Result<Vec<Box<[u8]>>> {
        let prefix = UserDueKey::prefix(user.as_str());
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .db
            .scan(
                Table::UserduedelayidScheduled,
                &prefix,
                &prefix,
                None,
                false,
                limit,
            )?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// The lock of one delayed event (see [`DelayedEvents::locks`]).
    fn lock_of(&self, delay_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock();
        if locks.len() > 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(delay_id.to_owned()).or_default().clone()
    }
}

/// The checks of a new delayed event that need no state: what a `/send` or `/state` would
/// refuse as malformed is refused now rather than failing when it is due.
fn check_new_event(new: &NewDelayedEvent) -> Result<()> {
    if !new.content.is_object() {
        return Err(Error::bad_json("event content must be a JSON object"));
    }
    if new.kind.len() > MAX_ID_FIELD_BYTES {
        return Err(Error::too_large("the event type is longer than 255 bytes"));
    }
    if new
        .state_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_ID_FIELD_BYTES)
    {
        return Err(Error::too_large("the state key is longer than 255 bytes"));
    }
    if serde_json::to_vec(&new.content)?.len() > MAX_PDU_BYTES {
        return Err(Error::too_large(
            "the content is larger than an event may be",
        ));
    }
    if new.kind == "m.room.member" && membership_of(&new.content).is_none() {
        return Err(Error::bad_json("m.room.member needs a membership"));
    }
    if new.kind == "m.room.create" {
        return Err(Error::bad_json(
            "a room has one create event, made with the room",
        ));
    }
    Ok(())
}

/// A fresh delay id.
fn new_delay_id() -> String {
    crate::random::random_string(DELAY_ID_LEN)
}

fn load(db: &Db, delay_id: &str) -> Result<Option<DelayedEvent>> {
    match db.get(Table::DelayidDelayedevent, delay_id.as_bytes())? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Adds to `batch` a scheduled delayed event: its row and its two index rows.
fn put_scheduled(batch: &mut Batch, record: &DelayedEvent) -> Result<()> {
    let due = record.due();
    batch.put(
        Table::DelayidDelayedevent,
        record.delay_id.as_bytes().to_vec(),
        serde_json::to_vec(record)?,
    );
    batch.put(
        Table::DuedelayidScheduled,
        DueKey {
            due,
            delay_id: &record.delay_id,
        }
        .encode(),
        Vec::new(),
    );
    batch.put(
        Table::UserduedelayidScheduled,
        UserDueKey {
            user_id: record.user_id.as_str(),
            due,
            delay_id: &record.delay_id,
        }
        .encode(),
        Vec::new(),
    );
    Ok(())
}

/// Adds to `batch` the deletion of a scheduled delayed event's index rows.
fn delete_scheduled(batch: &mut Batch, record: &DelayedEvent) {
    let due = record.due();
    batch.delete(
        Table::DuedelayidScheduled,
        DueKey {
            due,
            delay_id: &record.delay_id,
        }
        .encode(),
    );
    batch.delete(
        Table::UserduedelayidScheduled,
        UserDueKey {
            user_id: record.user_id.as_str(),
            due,
            delay_id: &record.delay_id,
        }
        .encode(),
    );
}

/// Adds to `batch` the end of a scheduled delayed event: out of the indexes, its record
/// finalised with `outcome` at `now`, deleted [`FINALISED_TTL_MS`] later.
fn finalise_into(
    batch: &mut Batch,
    record: &DelayedEvent,
    outcome: Outcome,
    now: u64,
) -> Result<()> {
    delete_scheduled(batch, record);
    let finalised = DelayedEvent {
        finalised: Some(Finalised { ts: now, outcome }),
        ..record.clone()
    };
    let key = record.delay_id.as_bytes();
    batch.put(
        Table::DelayidDelayedevent,
        key.to_vec(),
        serde_json::to_vec(&finalised)?,
    );
    crate::expiry::schedule(
        batch,
        Table::DelayidDelayedevent,
        key,
        now.saturating_add(FINALISED_TTL_MS),
    );
    Ok(())
}

/// The observer that records a delayed event as sent in the batch of the event sent for it
/// ([`NewEvent::delay_id`]): the event and its delayed event's end are written together.
pub struct SentRecorder {
    db: Arc<Db>,
}

impl SentRecorder {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

impl EventObserver for SentRecorder {
    fn delayed_event_sent(
        &self,
        batch: &mut Batch,
        delay_id: &str,
        event_id: &EventId,
    ) -> Result<()> {
        // The delayed event's lock is held by whoever sends it, so nothing else changes it
        // between this read and the batch's write.
        match load(&self.db, delay_id)? {
            Some(record) if record.finalised.is_none() => finalise_into(
                batch,
                &record,
                Outcome::Sent {
                    event_id: event_id.to_owned(),
                },
                now_ms(),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ruma::{OwnedRoomId, OwnedUserId, RoomId};
    use serde_json::json;

    use super::*;
    use crate::{
        rooms::{create::CreateRoom, timeline::Reader},
        Services,
    };

    #[test]
    fn key_layouts_are_stable_and_sort_by_send_time() {
        let due = DueKey {
            due: 0x0102,
            delay_id: "abc",
        };
        assert_eq!(due.encode(), b"\0\0\0\0\0\0\x01\x02abc");
        assert_eq!(DueKey::decode(&due.encode()).unwrap(), due);
        // Numeric order of send times, whatever the ids.
        let at = |t, id| {
            DueKey {
                due: t,
                delay_id: id,
            }
            .encode()
        };
        assert!(at(255, "zzz") < at(256, "aaa"));
        assert!(at(256, "aaa") < at(1 << 40, "a"));
        // Everything due by `now` sorts below the scan's upper bound, nothing later does.
        assert!(at(1000, "zzzz") < due_upper_bound(1000));
        assert!(at(1001, "") >= due_upper_bound(1000));

        let user = UserDueKey {
            user_id: "@a:x",
            due: 7,
            delay_id: "id",
        };
        assert_eq!(user.encode(), b"@a:x\xFF\0\0\0\0\0\0\0\x07id");
        assert_eq!(UserDueKey::decode(&user.encode()).unwrap(), user);
        assert!(user.encode().starts_with(&UserDueKey::prefix("@a:x")));
        assert!(!UserDueKey {
            user_id: "@a:xy",
            ..user
        }
        .encode()
        .starts_with(&UserDueKey::prefix("@a:x")));
        let later = UserDueKey { due: 8, ..user };
        assert!(user.encode() < later.encode());

        let txn = TxnKey {
            user_id: "@a:x",
            device_id: "DEV",
            room_id: "!r:x",
            txn: "send/t1",
        };
        assert_eq!(txn.encode(), b"@a:x\xFFDEV\xFF!r:x\xFFsend/t1");
        assert_eq!(TxnKey::decode(&txn.encode()).unwrap(), txn);
        assert!(DueKey::decode(b"\0\0\x01").is_err());
    }

    #[test]
    fn records_round_trip_with_each_outcome() {
        let record = DelayedEvent {
            delay_id: "d".into(),
            user_id: OwnedUserId::try_from("@a:x").unwrap(),
            device_id: "DEV".into(),
            room_id: OwnedRoomId::try_from("!r:x").unwrap(),
            kind: "m.room.topic".into(),
            state_key: Some(String::new()),
            content: json!({ "topic": "t" }),
            delay_ms: 1500,
            running_since: 10,
            ts: None,
            finalised: None,
        };
        assert_eq!(record.due(), 1510);
        let outcomes = [
            Outcome::Sent {
                event_id: OwnedEventId::try_from("$e").unwrap(),
            },
            Outcome::Cancelled,
            Outcome::Failed {
                error: json!({ "errcode": "M_FORBIDDEN", "error": "no" }),
            },
        ];
        for outcome in outcomes {
            let finalised = DelayedEvent {
                finalised: Some(Finalised { ts: 20, outcome }),
                ..record.clone()
            };
            let bytes = serde_json::to_vec(&finalised).unwrap();
            assert_eq!(
                serde_json::from_slice::<DelayedEvent>(&bytes).unwrap(),
                finalised
            );
        }
        let saturated = DelayedEvent {
            running_since: u64::MAX,
            ..record
        };
        assert_eq!(saturated.due(), u64::MAX);
    }

    async fn room_of(s: &Services, user: &UserId) -> OwnedRoomId {
        s.rooms
            .create_room(
                user,
                CreateRoom {
                    name: Some("delayed".into()),
                    ..CreateRoom::default()
                },
            )
            .await
            .unwrap()
    }

    fn message(room: &RoomId, delay_ms: u64, txn: Option<&str>) -> NewDelayedEvent {
        NewDelayedEvent {
            room_id: room.to_owned(),
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({ "msgtype": "m.text", "body": "later" }),
            delay_ms,
            ts: None,
            txn: txn.map(str::to_owned),
        }
    }

    const HOUR: u64 = 60 * 60 * 1000;

    #[tokio::test]
    async fn schedule_checks_its_limits_and_repeats_a_transaction() {
        // Without rate limits, which a hundred schedules would run into.
        let dir = tempfile::tempdir().unwrap();
        let s = Services::open(Config {
            data_dir: dir.path().join("data"),
            rate_limits_enabled: false,
            ..Config::default()
        })
        .unwrap();
        let d = &s.delayed_events;
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let room = room_of(&s, &alice).await;

        let first = d
            .schedule(&alice, "DEV", message(&room, HOUR, Some("send/t1")))
            .unwrap();
        let again = d
            .schedule(&alice, "DEV", message(&room, HOUR, Some("send/t1")))
            .unwrap();
        assert_eq!(first, again, "a repeated transaction gets its delay id");
        let other_device = d
            .schedule(&alice, "OTHER", message(&room, HOUR, Some("send/t1")))
            .unwrap();
        assert_ne!(first, other_device, "transactions are per device");
        assert_eq!(d.list(&alice).unwrap().len(), 2);

        let too_long = d
            .schedule(&alice, "DEV", message(&room, 24 * HOUR + 1, None))
            .unwrap_err();
        assert_eq!(
            too_long.kind(),
            Some(&ErrorKind::MaxDelayExceeded {
                max_delay_ms: 24 * HOUR
            })
        );
        let zero = d
            .schedule(&alice, "DEV", message(&room, 0, None))
            .unwrap_err();
        assert_eq!(zero.kind(), Some(&ErrorKind::InvalidParam));
        let mut not_object = message(&room, HOUR, None);
        not_object.content = json!([1]);
        assert_eq!(
            d.schedule(&alice, "DEV", not_object).unwrap_err().kind(),
            Some(&ErrorKind::BadJson)
        );
        let unknown_room = RoomId::parse("!nowhere:localhost").unwrap();
        assert_eq!(
            d.schedule(&alice, "DEV", message(&unknown_room, HOUR, None))
                .unwrap_err()
                .kind(),
            Some(&ErrorKind::NotFound)
        );

        // The per-user cap (100 by default): the next one due is named for a retry.
        for _ in 2..100 {
            d.schedule(&alice, "DEV", message(&room, 2 * HOUR, None))
                .unwrap();
        }
        let full = d
            .schedule(&alice, "DEV", message(&room, HOUR, None))
            .unwrap_err();
        match full.kind() {
            Some(ErrorKind::MaxDelayedEventsExceeded { retry_after_ms }) => {
                assert!(*retry_after_ms > HOUR - 60_000 && *retry_after_ms <= HOUR);
            }
            other => panic!("expected the cap, got {other:?}"),
        }
        // Someone else is not limited by alice's.
        let bob = OwnedUserId::try_from("@bob:localhost").unwrap();
        d.schedule(&bob, "DEV", message(&room, HOUR, None)).unwrap();
        // Cancelling one frees its place.
        d.manage(&alice, &first, Action::Cancel, Finalisation::Current)
            .await
            .unwrap();
        d.schedule(&alice, "DEV", message(&room, HOUR, None))
            .unwrap();
    }

    #[tokio::test]
    async fn management_follows_the_outcome_of_a_finalised_event() {
        let (_dir, s) = crate::rooms::tests::services();
        let d = &s.delayed_events;
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let bob = OwnedUserId::try_from("@bob:localhost").unwrap();
        let room = room_of(&s, &alice).await;

        let id = d
            .schedule(&alice, "DEV", message(&room, HOUR, None))
            .unwrap();
        // Someone else's is not found, whatever they ask.
        for action in [Action::Restart, Action::Cancel, Action::Send] {
            let e = d
                .manage(&bob, &id, action, Finalisation::Current)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), Some(&ErrorKind::NotFound));
        }
        assert_eq!(
            d.get(&bob, &id).unwrap_err().kind(),
            Some(&ErrorKind::NotFound)
        );
        assert!(d.list(&bob).unwrap().is_empty());

        // A restart moves the send time on.
        let before = d.get(&alice, &id).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        d.manage(&alice, &id, Action::Restart, Finalisation::Current)
            .await
            .unwrap();
        let after = d.get(&alice, &id).unwrap();
        assert!(after.due() > before.due());
        assert_eq!(d.list(&alice).unwrap(), vec![after.clone()]);

        // Sent now, as an event of alice's that carries its delay id.
        d.manage(&alice, &id, Action::Send, Finalisation::Current)
            .await
            .unwrap();
        let sent = d.get(&alice, &id).unwrap();
        let Some(Finalised {
            outcome: Outcome::Sent { event_id },
            ..
        }) = &sent.finalised
        else {
            panic!("expected a sent delayed event, got {sent:?}");
        };
        assert!(d.list(&alice).unwrap().is_empty());
        let short = s.rooms.short_id(event_id).unwrap().unwrap();
        let meta = s.rooms.meta(short).unwrap().unwrap();
        assert_eq!(meta.delay_id.as_deref(), Some(id.as_str()));
        let reader = |user| Reader {
            user,
            device: Some("DEV"),
        };
        let (_, own) = s
            .rooms
            .client_event_plain(short, Some(reader(&alice)))
            .unwrap()
            .unwrap();
        assert_eq!(own["unsigned"]["org.matrix.msc4140.delay_id"], id.as_str());
        assert_eq!(own["content"]["body"], "later");
        let (_, others) = s
            .rooms
            .client_event_plain(short, Some(reader(&bob)))
            .unwrap()
            .unwrap();
        assert!(others["unsigned"]
            .get("org.matrix.msc4140.delay_id")
            .is_none());

        // Retrying what happened succeeds; the opposite conflicts, or (the earlier
        // revision's single URL) is not found.
        let current = |action| d.manage(&alice, &id, action, Finalisation::Current);
        current(Action::Send).await.unwrap();
        for action in [Action::Cancel, Action::Restart] {
            let e = current(action).await.unwrap_err();
            assert_eq!(e.classify().0, StatusCode::CONFLICT, "{action:?}");
        }
        let legacy = |action| d.manage(&alice, &id, action, Finalisation::Legacy);
        legacy(Action::Send).await.unwrap();
        let e = legacy(Action::Restart).await.unwrap_err();
        assert_eq!(e.kind(), Some(&ErrorKind::NotFound));

        let cancelled = d
            .schedule(&alice, "DEV", message(&room, HOUR, None))
            .unwrap();
        d.manage(&alice, &cancelled, Action::Cancel, Finalisation::Current)
            .await
            .unwrap();
        d.manage(&alice, &cancelled, Action::Cancel, Finalisation::Current)
            .await
            .unwrap();
        for action in [Action::Send, Action::Restart] {
            let e = d
                .manage(&alice, &cancelled, action, Finalisation::Current)
                .await
                .unwrap_err();
            assert_eq!(e.classify().0, StatusCode::CONFLICT, "{action:?}");
        }
        let record = d.get(&alice, &cancelled).unwrap();
        assert!(matches!(
            record.finalised,
            Some(Finalised {
                outcome: Outcome::Cancelled,
                ..
            })
        ));
    }

    /// Waits (with a deadline) until the delayed event is finalised.
    async fn finalised(d: &DelayedEvents, user: &UserId, id: &str) -> DelayedEvent {
        for _ in 0..500 {
            let record = d.get(user, id).unwrap();
            if record.finalised.is_some() {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected delayed event {id} to be finalised within 10 s");
    }

    #[tokio::test]
    async fn the_timer_sends_when_due_and_records_failures() {
        let (_dir, s) = crate::rooms::tests::services();
        let d = &s.delayed_events;
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let bob = OwnedUserId::try_from("@bob:localhost").unwrap();
        let room = room_of(&s, &alice).await;

        let id = d
            .schedule(&alice, "DEV", message(&room, 200, None))
            .unwrap();
        let scheduled = d.get(&alice, &id).unwrap();
        let record = finalised(d, &alice, &id).await;
        let Some(Finalised {
            ts,
            outcome: Outcome::Sent { event_id },
        }) = &record.finalised
        else {
            panic!("expected it sent, got {record:?}");
        };
        assert!(*ts >= scheduled.due(), "never sent before its time");
        let pdu = s.rooms.pdu(event_id).unwrap().unwrap();
        assert_eq!(pdu.sender, alice);

        // Bob is not in the room: at its time his event fails, with the error a send gets.
        let id = d.schedule(&bob, "DEV", message(&room, 100, None)).unwrap();
        let record = finalised(d, &bob, &id).await;
        match &record.finalised {
            Some(Finalised {
                outcome: Outcome::Failed { error },
                ..
            }) => assert_eq!(error["errcode"], "M_FORBIDDEN"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(d.list(&bob).unwrap().is_empty());

        // A delayed state event goes through the state path.
        let topic = NewDelayedEvent {
            kind: "m.room.topic".into(),
            state_key: Some(String::new()),
            content: json!({ "topic": "delayed" }),
            ..message(&room, 100, None)
        };
        let id = d.schedule(&alice, "DEV", topic).unwrap();
        finalised(d, &alice, &id).await;
        let state = s.rooms.current_state(&room).unwrap();
        let content = s
            .rooms
            .state_content(&state, "m.room.topic", "")
            .unwrap()
            .unwrap();
        assert_eq!(content["topic"], "delayed");
    }

    #[tokio::test]
    async fn events_due_while_nothing_ran_go_out_oldest_first() {
        let (_dir, s) = crate::rooms::tests::services();
        let d = &s.delayed_events;
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let room = room_of(&s, &alice).await;
        // As a database holds them after the server was down: past their time, written
        // out of order.
        let now = now_ms();
        let mut batch = Batch::new();
        for (id, ago) in [("b", 1_000), ("a", 5_000), ("c", 10)] {
            let record = DelayedEvent {
                delay_id: id.into(),
                user_id: alice.clone(),
                device_id: "DEV".into(),
                room_id: room.clone(),
                kind: "m.room.message".into(),
                state_key: None,
                content: json!({ "msgtype": "m.text", "body": id }),
                delay_ms: 1,
                running_since: now - ago,
                ts: None,
                finalised: None,
            };
            put_scheduled(&mut batch, &record).unwrap();
        }
        s.db.write(batch).unwrap();
        d.wake.notify_one();
        let mut sent = Vec::new();
        for id in ["a", "b", "c"] {
            let record = finalised(d, &alice, id).await;
            match record.finalised {
                Some(Finalised {
                    outcome: Outcome::Sent { event_id },
                    ..
                }) => sent.push(s.rooms.short_id(&event_id).unwrap().unwrap()),
                other => panic!("expected {id} sent, got {other:?}"),
            }
        }
        assert!(
            sent.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {sent:?}"
        );
        // Nothing is left for the timer.
        assert!(s
            .db
            .scan(Table::DuedelayidScheduled, &[], &[], None, false, 10)
            .unwrap()
            .is_empty());
    }
}
