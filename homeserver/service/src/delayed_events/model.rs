//! What a delayed event is (MSC4140), apart from how it is stored and sent: the record, how
//! it ended, what a client asks to schedule and the management actions. The API reads these
//! types; [`super::DelayedEvents`] keeps them.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A delayed event, scheduled or finalised, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelayedEvent {
    pub delay_id: String,
    /// Who scheduled it: the only user who may read or manage it, and its sender.
    pub user_id: OwnedUserId,
    /// The device that scheduled it (for the record: any device of the user manages it).
    pub device_id: String,
    pub room_id: OwnedRoomId,
    #[serde(rename = "type")]
    pub kind: String,
    /// Present for a state event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    /// The content as the client sent it.
    pub content: Value,
    pub delay_ms: u64,
    /// When its timer started: when it was scheduled or last restarted (ms since the epoch).
    pub running_since: u64,
    /// The `origin_server_ts` an application service asked for (`?ts=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// How it ended; `None` while it is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalised: Option<Finalised>,
}

impl DelayedEvent {
    /// When it is to be sent: its delay after its timer started.
    pub fn due(&self) -> u64 {
        self.running_since.saturating_add(self.delay_ms)
    }
}

/// How and when a delayed event ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finalised {
    /// When it was finalised (ms since the epoch).
    pub ts: u64,
    pub outcome: Outcome,
}

/// The end of a delayed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, as this event.
    Sent { event_id: OwnedEventId },
    /// Cancelled by its user.
    Cancelled,
    /// Not sent because sending failed: the Matrix error (`errcode`, `error`, …) it got.
    Failed { error: Value },
}

/// What a client asks to schedule.
#[derive(Debug, Clone)]
pub struct NewDelayedEvent {
    pub room_id: OwnedRoomId,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub delay_ms: u64,
    /// An application service's `?ts=`.
    pub ts: Option<u64>,
    /// The transaction id, qualified by the endpoint (`send/{txnId}`); `None` for `/state`.
    pub txn: Option<String>,
}

/// A management action (`POST /delayed_events/{delay_id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the timer again from now, with the original delay.
    Restart,
    /// Never send it.
    Cancel,
    /// Send it now.
    Send,
}

/// How a management request treats a delayed event that is already finalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finalisation {
    /// MSC4140 as it is now: an action that matches the outcome succeeds (retries are safe:
    /// `send` of a sent one, `cancel` of a cancelled or failed one), any other is `409`.
    Current,
    /// The single-URL form with the action in the body, which clients of the earlier
    /// revision (and Synapse) use: a finalised delayed event is not found (`404`), so such a
    /// client schedules a new one, except that `send` of a sent one succeeds.
    Legacy,
}
