//! Where a profile plugs into the Matrix event pipeline (DESIGN.md §3): the pipeline knows
//! these two traits, never the code that implements them.
//!
//! - An [`EventPolicy`] narrows what the Matrix auth rules allow: it refuses a local
//!   submission, soft-fails a received PDU, and says whether a member may read history from
//!   before their join. The Paracord guild rules are one (`guilds::policy`); a server without
//!   a profile uses [`MatrixOnly`].
//! - [`EventObserver`]s are told of every event accepted into a room's timeline, whether a
//!   local user sent it or it came over federation: first inside the batch that writes it
//!   (rows that must be written with the event), then once it is written, when they may
//!   return work that follows from the event (a [`FollowUp`]).

use std::{future::Future, pin::Pin, sync::Arc};

use paracord_core::Result;
use paracord_storage::Batch;
use ruma::{EventId, RoomId, UserId};

use super::{notify::Notification, Pdu, Rooms, StateMap};

/// The rules of a profile on top of the Matrix auth rules.
pub trait EventPolicy: Send + Sync {
    /// A local submission (a user's request, or another server's `make_*` template built
    /// here), against the state it would be added to: an error refuses it.
    fn check_submitted(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        state: &StateMap,
        pdu: &Pdu,
    ) -> Result<()>;

    /// A received PDU the Matrix rules allow, against the room's current state: `Some`
    /// (why) soft-fails it.
    fn check_received(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        state: &StateMap,
        pdu: &Pdu,
    ) -> Result<Option<String>>;

    /// Whether `user`, a member, may read the room's events from before their join where
    /// history visibility `shared` lets members read them.
    fn reads_history(&self, rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<bool>;
}

/// The Matrix rules alone.
pub struct MatrixOnly;

impl EventPolicy for MatrixOnly {
    fn check_submitted(&self, _: &Rooms, _: &RoomId, _: &StateMap, _: &Pdu) -> Result<()> {
        Ok(())
    }

    fn check_received(
        &self,
        _: &Rooms,
        _: &RoomId,
        _: &StateMap,
        _: &Pdu,
    ) -> Result<Option<String>> {
        Ok(None)
    }

    fn reads_history(&self, _: &Rooms, _: &RoomId, _: &UserId) -> Result<bool> {
        Ok(true)
    }
}

/// Told of the events accepted into rooms' timelines (local and received alike).
pub trait EventObserver: Send + Sync {
    /// Rows to write with the event, in the batch that writes it.
    fn index(&self, _batch: &mut Batch, _room_id: &RoomId, _pdu: &Pdu) -> Result<()> {
        Ok(())
    }

    /// The event is a local one sent for the delayed event (MSC4140) `delay_id`: rows that
    /// record it as sent, written in the event's batch (so the event and its record of being
    /// sent are written together, or neither is).
    fn delayed_event_sent(
        &self,
        _batch: &mut Batch,
        _delay_id: &str,
        _event_id: &EventId,
    ) -> Result<()> {
        Ok(())
    }

    /// The event is written; `notifications` are the users its push rules notify. Work that
    /// follows from the event and takes time (appending events of its own, say) is returned:
    /// a local request that made the event is answered once it is done; for an event that
    /// came over federation it runs on its own.
    fn committed(
        &self,
        _rooms: &Arc<Rooms>,
        _room_id: &RoomId,
        _pdu: &Pdu,
        _notifications: &[Notification],
    ) -> Option<FollowUp> {
        None
    }
}

/// Work an observer returns for after an event ([`EventObserver::committed`]).
pub type FollowUp = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Waits for follow-ups (a local request's own events).
pub(crate) async fn run(follow_ups: Vec<FollowUp>) {
    for f in follow_ups {
        f.await;
    }
}

/// Runs follow-ups on their own (events that came over federation), when there is a runtime.
pub(crate) fn spawn(follow_ups: Vec<FollowUp>) {
    if follow_ups.is_empty() {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(run(follow_ups));
    }
}
