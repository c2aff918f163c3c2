//! Read-only views into /sync responses and event lists.

use serde_json::Value;

/// `rooms.join.{room}` of a sync response.
pub fn joined_room<'a>(sync: &'a Value, room: &str) -> Option<&'a Value> {
    sync["rooms"]["join"].get(room)
}

fn events_at(v: Option<&Value>, section: &str) -> Vec<Value> {
    v.and_then(|r| r[section]["events"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// `rooms.join.{room}.timeline.events` (empty when absent).
pub fn room_timeline(sync: &Value, room: &str) -> Vec<Value> {
    events_at(joined_room(sync, room), "timeline")
}

/// `rooms.join.{room}.state.events` (empty when absent).
pub fn room_state(sync: &Value, room: &str) -> Vec<Value> {
    events_at(joined_room(sync, room), "state")
}

/// `rooms.join.{room}.ephemeral.events` (empty when absent).
pub fn ephemeral(sync: &Value, room: &str) -> Vec<Value> {
    events_at(joined_room(sync, room), "ephemeral")
}

/// `rooms.join.{room}.account_data.events` (empty when absent).
pub fn room_account_data(sync: &Value, room: &str) -> Vec<Value> {
    events_at(joined_room(sync, room), "account_data")
}

/// The first event of `event_type` in `events`.
pub fn find_event<'a>(events: &'a [Value], event_type: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["type"] == event_type)
}

/// The state event `(event_type, state_key)` in `events`.
pub fn find_state<'a>(events: &'a [Value], event_type: &str, state_key: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["type"] == event_type && e["state_key"] == state_key)
}

/// True when some event in `events` has `event_id`.
pub fn has_event_id(events: &[Value], event_id: &str) -> bool {
    events.iter().any(|e| e["event_id"] == event_id)
}

/// `content.body` of every `m.room.message` in `events`, in order.
pub fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
