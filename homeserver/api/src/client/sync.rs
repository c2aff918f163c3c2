//! `/sync` and filters.

use std::{collections::BTreeMap, time::Duration};

use axum::{extract::State, Json};
use paracord_core::Error;
use paracord_service::sync::{parse_sync_token, SyncRequest};
use ruma::{
    api::client::{
        filter::{create_filter, get_filter, FilterDefinition},
        sync::sync_events,
    },
    presence::PresenceState,
};

use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// Longest long-poll honoured.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /_matrix/client/v3/sync` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync
pub(crate) async fn sync_events_route(
    State(state): State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> ApiResult<Json<SyncBody>> {
    let id = req.user()?.clone();
    let filter = match &req.body.filter {
        None => FilterDefinition::default(),
        Some(sync_events::v3::Filter::FilterDefinition(f)) => f.clone(),
        Some(sync_events::v3::Filter::FilterId(fid)) => {
            let raw = state
                .account_data
                .filter(&id.user_id, fid)?
                .ok_or_else(|| Error::not_found("filter not found"))?;
            stored_filter(raw)?
        }
        Some(_) => FilterDefinition::default(),
    };
    let since = req
        .body
        .since
        .as_deref()
        .map(parse_sync_token)
        .transpose()?;
    match req.body.set_presence {
        PresenceState::Offline => {}
        ref p => {
            state
                .ephemeral
                .set_presence(&id.user_id, p.as_str(), None, vec![])?;
        }
    }
    let timeout = req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let body = state
        .sync
        .sync(SyncRequest {
            user: &id.user_id,
            device: id.device_id.as_str(),
            since: since.map(|(pos, _)| pos),
            to_device_ack: since.map(|(_, ack)| ack),
            full_state: req.body.full_state,
            filter,
            timeout,
        })
        .await?;
    Ok(Json(SyncBody(body)))
}

/// `POST /_matrix/client/v3/user/{userId}/filter` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3useruseridfilter
pub(crate) async fn create_filter_route(
    State(state): State<AppState>,
    req: Ruma<create_filter::v3::Request>,
) -> ApiResult<RumaResponse<create_filter::v3::Response>> {
    let id = req.user()?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only create filters for yourself").into());
    }
    let filter = serde_json::to_value(&req.body.filter).map_err(Error::from)?;
    let filter_id = state.account_data.create_filter(&id.user_id, &filter)?;
    Ok(RumaResponse(create_filter::v3::Response::new(filter_id)))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridfilterfilterid
pub(crate) async fn get_filter_route(
    State(state): State<AppState>,
    req: Ruma<get_filter::v3::Request>,
) -> ApiResult<RumaResponse<get_filter::v3::Response>> {
    let id = req.user()?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only read your own filters").into());
    }
    let f = state
        .account_data
        .filter(&id.user_id, &req.body.filter_id)?
        .ok_or_else(|| Error::not_found("filter not found"))?;
    Ok(RumaResponse(get_filter::v3::Response::new(stored_filter(
        f,
    )?)))
}

/// A filter as it was stored when it was created.
fn stored_filter(raw: serde_json::Value) -> Result<FilterDefinition, Error> {
    serde_json::from_value(raw)
        .map_err(|e| Error::internal(format!("stored filter unreadable: {e}")))
}

/// ruma's sync response, written as ruma writes it but for the sections of a joined or left
/// room: ruma leaves out an empty section and a timeline's `limited` when false, where
/// Synapse always sends them (`"ephemeral": {"events": []}`) and Complement reads them.
pub(crate) struct SyncBody(sync_events::v3::Response);

impl Serialize for SyncBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("next_batch", &r.next_batch)?;
        if !r.rooms.is_empty() {
            m.serialize_entry("rooms", &RoomsOut(&r.rooms))?;
        }
        if !r.presence.is_empty() {
            m.serialize_entry("presence", &r.presence)?;
        }
        if !r.account_data.is_empty() {
            m.serialize_entry("account_data", &r.account_data)?;
        }
        if !r.to_device.is_empty() {
            m.serialize_entry("to_device", &r.to_device)?;
        }
        if !r.device_lists.is_empty() {
            m.serialize_entry("device_lists", &r.device_lists)?;
        }
        if !r.device_one_time_keys_count.is_empty() {
            m.serialize_entry("device_one_time_keys_count", &r.device_one_time_keys_count)?;
        }
        if let Some(types) = &r.device_unused_fallback_key_types {
            m.serialize_entry("device_unused_fallback_key_types", types)?;
        }
        m.end()
    }
}

struct RoomsOut<'a>(&'a sync_events::v3::Rooms);

impl Serialize for RoomsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        if !r.leave.is_empty() {
            let leave: BTreeMap<_, _> = r.leave.iter().map(|(k, v)| (k, LeftOut(v))).collect();
            m.serialize_entry("leave", &leave)?;
        }
        if !r.join.is_empty() {
            let join: BTreeMap<_, _> = r.join.iter().map(|(k, v)| (k, JoinedOut(v))).collect();
            m.serialize_entry("join", &join)?;
        }
        if !r.invite.is_empty() {
            m.serialize_entry("invite", &r.invite)?;
        }
        if !r.knock.is_empty() {
            m.serialize_entry("knock", &r.knock)?;
        }
        m.end()
    }
}

struct JoinedOut<'a>(&'a sync_events::v3::JoinedRoom);

impl Serialize for JoinedOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("summary", &r.summary)?;
        if !r.unread_notifications.is_empty() {
            m.serialize_entry("unread_notifications", &r.unread_notifications)?;
        }
        if !r.unread_thread_notifications.is_empty() {
            m.serialize_entry(
                "unread_thread_notifications",
                &r.unread_thread_notifications,
            )?;
        }
        m.serialize_entry("timeline", &TimelineOut(&r.timeline))?;
        state_entry(&mut m, &r.state)?;
        m.serialize_entry("account_data", &Events(&r.account_data.events))?;
        m.serialize_entry("ephemeral", &Events(&r.ephemeral.events))?;
        m.end()
    }
}

struct LeftOut<'a>(&'a sync_events::v3::LeftRoom);

impl Serialize for LeftOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("timeline", &TimelineOut(&r.timeline))?;
        state_entry(&mut m, &r.state)?;
        m.serialize_entry("account_data", &Events(&r.account_data.events))?;
        m.end()
    }
}

/// `state` (the state before the timeline), or `state_after` (MSC4222).
fn state_entry<M: SerializeMap>(m: &mut M, state: &sync_events::v3::State) -> Result<(), M::Error> {
    match state {
        sync_events::v3::State::After(after) => {
            m.serialize_entry("state_after", &Events(&after.events))
        }
        sync_events::v3::State::Before(before) => {
            m.serialize_entry("state", &Events(&before.events))
        }
        _ => m.serialize_entry("state", &Events::<()>(&[])),
    }
}

/// `{"events": [...]}`, empty or not.
struct Events<'a, T>(&'a [ruma::serde::Raw<T>]);

impl<T> Serialize for Events<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("events", self.0)?;
        m.end()
    }
}

struct TimelineOut<'a>(&'a sync_events::v3::Timeline);

impl Serialize for TimelineOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("events", &t.events)?;
        m.serialize_entry("limited", &t.limited)?;
        if let Some(prev) = &t.prev_batch {
            m.serialize_entry("prev_batch", prev)?;
        }
        m.end()
    }
}
