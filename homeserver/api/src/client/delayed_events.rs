//! Delayed events (MSC4140, docs/delayed-events.md): scheduling them, in both forms clients
//! use, and reading and managing them at the unstable and the stable paths.
//!
//! Two revisions of the MSC are in use, and both are served:
//! - the one clients ship today (matrix-js-sdk, matrix-rust-sdk, Synapse): `PUT /send` and
//!   `PUT /state` with `?org.matrix.msc4140.delay=<ms>`, answering `{"delay_id"}`; management
//!   with `POST /delayed_events/{delay_id}` and `{"action": …}`;
//! - the current one: `PUT /rooms/{roomId}/delayed_event/{eventType}/{txnId}` with
//!   `{"delay_ms", "state_key", "content"}`; management with
//!   `POST /delayed_events/{delay_id}/{restart|cancel|send}`.
//!
//! Every endpoint takes the user's access token: the current revision dropped the
//! unauthenticated management of the earlier one, and only the user who scheduled a delayed
//! event (from any of their devices) may see or manage it.

use std::time::Duration;

use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use paracord_core::{Error, ErrorKind};
use paracord_service::{
    accounts::Identity,
    delayed_events::model::{Action, DelayedEvent, Finalisation, NewDelayedEvent, Outcome},
    ratelimit::Limit,
};
use ruma::{
    api::{
        client::{
            delayed_events::{
                delayed_message_event, delayed_state_event, get_all_delayed_events,
                get_delayed_event, send_delayed_event,
                update_delayed_event::{unstable_v1, unstable_v2, UpdateAction},
                DelayedEventData,
            },
            message::send_message_event,
            state::send_state_event,
        },
        error::StandardErrorBody,
    },
    MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
};
use serde_json::Value;

use super::{
    message::{self, json_of, raw},
    state,
};
use crate::{
    params::Params,
    ruma_wrapper::{caller_ip, check_body_json, identify, Ruma},
    ApiError, ApiResult, AppState, Patched, RumaResponse,
};

/// The query parameter that makes `/send` and `/state` schedule a delayed event.
pub(crate) const DELAY_PARAM: &str = "org.matrix.msc4140.delay";

/// The paths of the current revision's scheduling endpoint, unstable and stable.
pub(crate) const DELAYED_EVENT_PATHS: &[&str] = &[
    "/_matrix/client/unstable/org.matrix.msc4140/rooms/{room_id}/delayed_event/{event_type}/{txn_id}",
    "/_matrix/client/v3/rooms/{room_id}/delayed_event/{event_type}/{txn_id}",
];

/// The stable paths of the endpoints ruma declares with their unstable path only.
pub(crate) const STABLE_LIST: &[&str] = &["/_matrix/client/v1/delayed_events"];
pub(crate) const STABLE_ONE: &[&str] = &["/_matrix/client/v1/delayed_events/{delay_id}"];
pub(crate) const STABLE_ACTION: &[&str] =
    &["/_matrix/client/v1/delayed_events/{delay_id}/{action}"];

/// `?org.matrix.msc4140.delay=` of a request: `None` when absent; anything but a positive
/// integer of milliseconds is `400 M_INVALID_PARAM`.
fn delay_param(uri: &http::Uri) -> Result<Option<u64>, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let Some(value) = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == DELAY_PARAM)
        .map(|(_, v)| v.into_owned())
        .last()
    else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(ms)),
        _ => Err(Error::invalid_param(format!(
            "{DELAY_PARAM} must be a positive integer of milliseconds, not {value:?}"
        ))
        .into()),
    }
}

/// The content of a delayed event's request body: a JSON object.
fn object_content(value: Value, empty: bool) -> Result<Value, ApiError> {
    if empty || !value.is_object() {
        return Err(Error::bad_json("event content must be a JSON object").into());
    }
    Ok(value)
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid
///
/// With `?org.matrix.msc4140.delay=<ms>` (MSC4140, the revision clients use today) the event
/// is scheduled instead and the answer is its `delay_id`; without, an ordinary send.
pub(crate) async fn send_message_event_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Response> {
    let delay = delay_param(req.uri())?;
    // The request is read as an ordinary send (same path and body) in both cases: ruma's
    // `delayed_message_event` type cannot read its own query parameter on the server side
    // (an untagged enum over query strings), so the delay is read above.
    let req = Ruma::<send_message_event::v3::Request>::from_request(req, &state).await?;
    let Some(delay_ms) = delay else {
        return message::send_message_event_route(State(state), req)
            .await
            .map(IntoResponse::into_response);
    };
    let id = req.user()?;
    let content = object_content(json_of(&req.body.body)?, req.body_is_empty())?;
    let delay_id = state.delayed_events.schedule(
        &id.user_id,
        id.device_id.as_str(),
        NewDelayedEvent {
            room_id: req.body.room_id.clone(),
            kind: req.body.event_type.to_string(),
            state_key: None,
            content,
            delay_ms,
            ts: req.ts,
            txn: Some(format!("send/{}", req.body.txn_id)),
        },
    )?;
    Ok(RumaResponse(delayed_message_event::unstable::Response::new(delay_id)).into_response())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidstateeventtypestatekey
///
/// With `?org.matrix.msc4140.delay=<ms>` (MSC4140, the revision clients use today) the state
/// event is scheduled instead and the answer is its `delay_id`; without, an ordinary one.
pub(crate) async fn send_state_event_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Response> {
    let delay = delay_param(req.uri())?;
    // Read as an ordinary state event, as for messages above.
    let req = Ruma::<send_state_event::v3::Request>::from_request(req, &state).await?;
    let Some(delay_ms) = delay else {
        return state::send_state_event_route(State(state), req)
            .await
            .map(IntoResponse::into_response);
    };
    let id = req.user()?;
    let content = object_content(json_of(&req.body.body)?, req.body_is_empty())?;
    let delay_id = state.delayed_events.schedule(
        &id.user_id,
        id.device_id.as_str(),
        NewDelayedEvent {
            room_id: req.body.room_id.clone(),
            kind: req.body.event_type.to_string(),
            state_key: Some(req.body.state_key.clone()),
            content,
            delay_ms,
            ts: req.ts,
            txn: None,
        },
    )?;
    Ok(RumaResponse(delayed_state_event::unstable::Response::new(delay_id)).into_response())
}

/// The caller of an endpoint ruma declares without an access token, or whose body ruma's
/// type cannot read: authenticated here, as the [`Ruma`] extractor would.
pub(crate) struct Caller {
    pub id: Identity,
    /// An application service's `?ts=`.
    pub ts: Option<u64>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (id, ts) = identify(state, parts, caller_ip(state, parts)).await?;
        Ok(Self { id, ts })
    }
}

/// The body of the current revision's scheduling endpoint. Declared here rather than taken
/// from ruma: ruma 0.17's `send_delayed_event` calls the delay `delay`, the MSC `delay_ms`;
/// both are read.
#[derive(serde::Deserialize)]
struct DelayedEventBody {
    #[serde(default)]
    delay_ms: Option<Value>,
    #[serde(default)]
    delay: Option<Value>,
    #[serde(default)]
    state_key: Option<Value>,
    #[serde(default)]
    content: Option<Value>,
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/delayed_event/{eventType}/{txnId}` (and its
/// unstable path) — https://github.com/matrix-org/matrix-spec-proposals/pull/4140
///
/// Schedules a message or state event: `{"delay_ms", "state_key"?, "content"}` in, its
/// `delay_id` out. Limits answer as the current revision says: a delay over the maximum is
/// `403 M_FORBIDDEN`, too many scheduled `429 M_LIMIT_EXCEEDED` with `Retry-After` (the time
/// until the user's next delayed event is due).
pub(crate) async fn send_delayed_event_route(
    State(state): State<AppState>,
    caller: Caller,
    Params((room_id, event_type, txn_id)): Params<(String, String, String)>,
    req: Request,
) -> ApiResult<RumaResponse<send_delayed_event::unstable::Response>> {
    let room_id = OwnedRoomId::try_from(room_id.as_str())
        .map_err(|_| Error::invalid_param(format!("{room_id:?} is not a room id")))?;
    let bytes = axum::body::to_bytes(req.into_body(), state.config.max_request_bytes)
        .await
        .map_err(|_| {
            Error::too_large(format!(
                "request body is larger than {} bytes",
                state.config.max_request_bytes
            ))
        })?;
    check_body_json(&http::Method::PUT, &bytes)?;
    if bytes.is_empty() {
        return Err(Error::bad_json("the body must be a JSON object").into());
    }
    let body: DelayedEventBody = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_json(format!("the body must be a JSON object: {e}")))?;
    let delay_ms = match body.delay_ms.or(body.delay) {
        None => return Err(Error::bad_json("delay_ms is required").into()),
        Some(v) => v
            .as_u64()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| Error::invalid_param("delay_ms must be a positive integer"))?,
    };
    let state_key = match body.state_key {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k),
        Some(_) => return Err(Error::bad_json("state_key must be a string").into()),
    };
    let content = match body.content {
        Some(c @ Value::Object(_)) => c,
        _ => return Err(Error::bad_json("content must be a JSON object").into()),
    };
    let scheduled = state.delayed_events.schedule(
        &caller.id.user_id,
        caller.id.device_id.as_str(),
        NewDelayedEvent {
            room_id,
            kind: event_type,
            state_key,
            content,
            delay_ms,
            ts: caller.ts,
            txn: Some(format!("delayed_event/{txn_id}")),
        },
    );
    let delay_id = scheduled.map_err(current_limits)?;
    Ok(RumaResponse(send_delayed_event::unstable::Response::new(
        delay_id,
    )))
}

/// The limits' errors as the current revision of MSC4140 answers them (the service's are the
/// earlier revision's unstable ones).
fn current_limits(e: Error) -> ApiError {
    match e.kind() {
        Some(ErrorKind::MaxDelayExceeded { max_delay_ms }) => ApiError(Error::forbidden(format!(
            "the delay is longer than the {max_delay_ms} ms this server allows"
        ))),
        Some(ErrorKind::MaxDelayedEventsExceeded { retry_after_ms }) => ApiError(Error::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded {
                retry_after_ms: *retry_after_ms,
            },
            "the maximum number of delayed events has been reached",
        )),
        _ => ApiError(e),
    }
}

/// `POST /_matrix/client/v1/delayed_events/{delay_id}` (and its unstable path) — the earlier
/// revision of MSC4140: `{"action": "restart" | "cancel" | "send"}`. A delayed event that
/// has been finalised is not found here (as Synapse answers), so a client of that revision
/// schedules a new one; `send` of a sent one succeeds.
pub(crate) async fn update_delayed_event_route(
    State(state): State<AppState>,
    req: Ruma<unstable_v1::Request>,
) -> ApiResult<RumaResponse<unstable_v1::Response>> {
    let id = req.user()?;
    let action = action_of(&req.body.action)
        .ok_or_else(|| Error::invalid_param("action must be restart, cancel or send"))?;
    state
        .delayed_events
        .manage(
            &id.user_id,
            &req.body.delay_id,
            action,
            Finalisation::Legacy,
        )
        .await?;
    Ok(RumaResponse(unstable_v1::Response::new()))
}

/// `POST /_matrix/client/v1/delayed_events/{delay_id}/{action}` (and its unstable path) —
/// https://github.com/matrix-org/matrix-spec-proposals/pull/4140
///
/// Restarts, cancels or sends a delayed event of the caller (ruma declares these paths
/// without authentication, as an earlier revision had them; the current one requires it).
pub(crate) async fn update_delayed_event_action_route(
    State(state): State<AppState>,
    caller: Caller,
    req: Ruma<unstable_v2::Request>,
) -> ApiResult<RumaResponse<unstable_v2::Response>> {
    let action = action_of(&req.body.action)
        .ok_or_else(|| Error::unrecognized("unrecognized delayed event action"))?;
    state
        .delayed_events
        .manage(
            &caller.id.user_id,
            &req.body.delay_id,
            action,
            Finalisation::Current,
        )
        .await?;
    Ok(RumaResponse(unstable_v2::Response::new()))
}

fn action_of(action: &UpdateAction) -> Option<Action> {
    match action {
        UpdateAction::Restart => Some(Action::Restart),
        UpdateAction::Cancel => Some(Action::Cancel),
        UpdateAction::Send => Some(Action::Send),
        _ => None,
    }
}

/// `GET /_matrix/client/v1/delayed_events` (and its unstable path) — https://github.com/matrix-org/matrix-spec-proposals/pull/4140
///
/// The caller's scheduled delayed events, the next one due first.
pub(crate) async fn get_all_delayed_events_route(
    State(state): State<AppState>,
    req: Ruma<get_all_delayed_events::unstable::Request>,
) -> ApiResult<Patched<get_all_delayed_events::unstable::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::DelayedEvents, id.user_id.as_str())?;
    let events = state
        .delayed_events
        .list(&id.user_id)?
        .iter()
        .map(data_of)
        .collect::<Result<_, _>>()?;
    Ok(Patched {
        response: get_all_delayed_events::unstable::Response::new(events),
        patch: |answer| {
            if let Some(events) = answer["delayed_events"].as_array_mut() {
                events.iter_mut().for_each(current_names);
            }
        },
    })
}

/// `GET /_matrix/client/v1/delayed_events/{delay_id}` (and its unstable path) — https://github.com/matrix-org/matrix-spec-proposals/pull/4140
///
/// One delayed event of the caller, scheduled or finalised (`finalised_ts` with `event_id`,
/// `error`, or neither for a cancelled one).
pub(crate) async fn get_delayed_event_route(
    State(state): State<AppState>,
    req: Ruma<get_delayed_event::unstable::Request>,
) -> ApiResult<Patched<get_delayed_event::unstable::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::DelayedEvents, id.user_id.as_str())?;
    let record = state.delayed_events.get(&id.user_id, &req.body.delay_id)?;
    Ok(Patched {
        response: get_delayed_event::unstable::Response::new(data_of(&record)?),
        patch: current_names,
    })
}

/// Adds the current revision's names of ruma's `delay` and `running_since` (`delay_ms`,
/// `scheduled_at`), so clients of either revision read the answer.
fn current_names(event: &mut Value) {
    if let Some(obj) = event.as_object_mut() {
        if let Some(delay) = obj.get("delay").cloned() {
            obj.insert("delay_ms".into(), delay);
        }
        if let Some(since) = obj.get("running_since").cloned() {
            obj.insert("scheduled_at".into(), since);
        }
    }
}

/// A stored delayed event as ruma's wire type.
fn data_of(record: &DelayedEvent) -> Result<DelayedEventData, Error> {
    let ms = |t: u64| {
        UInt::try_from(t)
            .map(MilliSecondsSinceUnixEpoch)
            .map_err(Error::internal)
    };
    let mut data = DelayedEventData::new(
        record.delay_id.clone(),
        record.room_id.clone(),
        record.kind.as_str().into(),
        record.state_key.clone(),
        raw(&record.content)?,
        Duration::from_millis(record.delay_ms),
        ms(record.running_since)?,
    );
    if let Some(finalised) = &record.finalised {
        data.finalized_ts = Some(ms(finalised.ts)?);
        match &finalised.outcome {
            Outcome::Sent { event_id } => data.event_id = Some(event_id.clone()),
            Outcome::Cancelled => {}
            Outcome::Failed { error } => {
                data.error = Some(
                    serde_json::from_value::<StandardErrorBody>(error.clone()).unwrap_or_else(
                        |_| {
                            StandardErrorBody::new(
                                ruma::api::error::ErrorKind::Unknown,
                                error["error"].as_str().unwrap_or_default().to_owned(),
                            )
                        },
                    ),
                );
            }
        }
    }
    Ok(data)
}
