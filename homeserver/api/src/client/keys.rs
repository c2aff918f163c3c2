//! End-to-end encryption: device keys, cross-signing, to-device messages and dehydrated
//! devices (MSC3814). The logic is in `paracord_service::e2ee`; handlers pass the request's
//! JSON through unchanged, since signatures cover every field, known or not.

use std::collections::BTreeMap;

use axum::extract::State;
use paracord_core::Error;
use paracord_service::{
    accounts::UiaFlow, e2ee::DehydratedDevice, rooms::pdu::raw, sync::parse_sync_token,
};
use ruma::{
    api::client::{
        dehydrated_device::{
            delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
        },
        keys::{
            claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures,
            upload_signing_keys,
        },
        to_device::send_event_to_device,
    },
    OneTimeKeyAlgorithm, UInt,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};
use paracord_service::ratelimit::Limit;

/// The request body as JSON (an empty object when there is none): `/keys/upload` also takes
/// fallback keys under their unstable name, which ruma's request type does not carry.
fn body<T>(req: &Ruma<T>) -> Value {
    Value::Object(req.body_object().unwrap_or_default())
}

/// The entries of the JSON object `v` whose key and value parse as `K` and `V`. The service
/// builds these maps from keys it checked; an entry that does not parse can only come from
/// another server's answer, and is left out.
fn typed_map<K: DeserializeOwned + Ord, V: DeserializeOwned>(v: Value) -> BTreeMap<K, V> {
    let Value::Object(entries) = v else {
        return BTreeMap::new();
    };
    entries
        .into_iter()
        .filter_map(|(k, v)| {
            let k = serde_json::from_value(Value::String(k)).ok()?;
            Some((k, serde_json::from_value(v).ok()?))
        })
        .collect()
}

/// A JSON value taken out of a typed request field (`null` when the field is absent).
fn json_of<T: serde::Serialize>(field: &T) -> ApiResult<Value> {
    Ok(serde_json::to_value(field).map_err(Error::from)?)
}

/// `POST /_matrix/client/v3/keys/upload` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysupload
pub(crate) async fn upload_keys_route(
    State(state): State<AppState>,
    req: Ruma<upload_keys::v3::Request>,
) -> ApiResult<RumaResponse<upload_keys::v3::Response>> {
    let id = req.user()?;
    // The whole body, not ruma's fields: it also takes the fallback keys under their
    // unstable name `org.matrix.msc2732.fallback_keys`, which ruma's request does not have.
    let counts = state
        .e2ee
        .upload_keys(&id.user_id, id.device_id.as_str(), &body(&req))?;
    Ok(RumaResponse(upload_keys::v3::Response::new(key_counts(
        counts,
    ))))
}

/// One-time key counts per algorithm, as ruma has them.
fn key_counts(counts: BTreeMap<String, u64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    counts
        .into_iter()
        .map(|(alg, n)| (alg.as_str().into(), UInt::new_saturating(n)))
        .collect()
}

/// `POST /_matrix/client/v3/keys/query` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysquery
pub(crate) async fn get_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_keys::v3::Request>,
) -> ApiResult<RumaResponse<get_keys::v3::Response>> {
    let id = req.user()?;
    let wanted = paracord_service::e2ee::query_wanted(&req.body.device_keys);
    let mut out = state.e2ee.query_keys(Some(&id.user_id), &wanted)?;
    // Other servers' users: ask each server once, in parallel.
    state
        .queries
        .remote_device_keys(&mut out, wanted.iter().map(|(u, ds)| (u, json!(ds))))
        .await;
    let mut resp = get_keys::v3::Response::new();
    resp.failures = typed_map(out["failures"].take());
    resp.device_keys = typed_map(out["device_keys"].take());
    resp.master_keys = typed_map(out["master_keys"].take());
    resp.self_signing_keys = typed_map(out["self_signing_keys"].take());
    resp.user_signing_keys = typed_map(out["user_signing_keys"].take());
    Ok(RumaResponse(resp))
}

/// `POST /_matrix/client/v3/keys/claim` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysclaim
pub(crate) async fn claim_keys_route(
    State(state): State<AppState>,
    req: Ruma<claim_keys::v3::Request>,
) -> ApiResult<RumaResponse<claim_keys::v3::Response>> {
    req.user()?;
    let wanted = paracord_service::e2ee::claim_wanted(&req.body.one_time_keys);
    let mut out = state.e2ee.claim_keys(&wanted)?;
    state
        .queries
        .claim_remote_keys(&mut out, wanted.iter().map(|(u, ds)| (u, json!(ds))))
        .await;
    let mut resp = claim_keys::v3::Response::new(typed_map(out["one_time_keys"].take()));
    resp.failures = typed_map(out["failures"].take());
    Ok(RumaResponse(resp))
}

/// `GET /_matrix/client/v3/keys/changes` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3keyschanges
pub(crate) async fn get_key_changes_route(
    State(state): State<AppState>,
    req: Ruma<get_key_changes::v3::Request>,
) -> ApiResult<RumaResponse<get_key_changes::v3::Response>> {
    let id = req.user()?;
    let (from, _) = parse_sync_token(&req.body.from)?;
    let (to, _) = parse_sync_token(&req.body.to)?;
    let to = to.min(state.stream.current());
    let changes = state.e2ee.device_list_changes(&id.user_id, from, to)?;
    Ok(RumaResponse(get_key_changes::v3::Response::new(
        changes.changed.into_iter().collect(),
        changes.left.into_iter().collect(),
    )))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysdevice_signingupload
pub(crate) async fn upload_signing_keys_route(
    State(state): State<AppState>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> ApiResult<RumaResponse<upload_signing_keys::v3::Response>> {
    let id = req.user()?.clone();
    // The keys as sent (a `Raw` keeps every field, which the signatures cover).
    let body = json!({
        "master_key": json_of(&req.body.master_key)?,
        "self_signing_key": json_of(&req.body.self_signing_key)?,
        "user_signing_key": json_of(&req.body.user_signing_key)?,
    });
    // UIA unless this is the first upload or the same keys again, or an application service
    // uploads them (MSC4190, spec v1.17).
    if id.appservice.is_none() && state.e2ee.signing_upload_needs_auth(&id.user_id, &body)? {
        let auth = req.body.auth.as_ref().map(json_of).transpose()?;
        state
            .accounts
            .uia(auth.as_ref(), UiaFlow::Password(id.user_id.clone()))
            .await?;
    }
    state.e2ee.upload_signing_keys(&id.user_id, &body)?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

/// `POST /_matrix/client/v3/keys/signatures/upload` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keyssignaturesupload
pub(crate) async fn upload_signatures_route(
    State(state): State<AppState>,
    req: Ruma<upload_signatures::v3::Request>,
) -> ApiResult<RumaResponse<upload_signatures::v3::Response>> {
    let id = req.user()?;
    let mut out = state
        .e2ee
        .upload_signatures(&id.user_id, &json_of(&req.body.signed_keys)?)?;
    let mut resp = upload_signatures::v3::Response::new();
    resp.failures = typed_map(out["failures"].take());
    Ok(RumaResponse(resp))
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid
pub(crate) async fn send_to_device_route(
    State(state): State<AppState>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> ApiResult<RumaResponse<send_event_to_device::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::ToDevice, id.user_id.as_str())?;
    state.e2ee.send_to_device(
        &id.user_id,
        id.device_id.as_str(),
        &req.body.event_type.to_string(),
        req.body.txn_id.as_str(),
        &json_of(&req.body.messages)?,
    )?;
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}

/// `PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device` — MSC3814: stores a
/// device that is not running anywhere, with its keys, so it can receive room keys while the
/// user has no client online.
pub(crate) async fn put_dehydrated_device_route(
    State(state): State<AppState>,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> ApiResult<RumaResponse<put_dehydrated_device::unstable::Response>> {
    let id = req.user()?.clone();
    let device_id = req.body.device_id.to_string();
    let device_data = Some(json_of(&req.body.device_data)?)
        .filter(Value::is_object)
        .ok_or_else(|| Error::bad_json("`device_data` must be an object"))?;
    let old = state.e2ee.dehydrated_device(&id.user_id)?;
    let replacing_same = old.as_ref().is_some_and(|o| o.device_id == device_id);
    if state.e2ee.is_cross_signing_key(&id.user_id, &device_id)? {
        return Err(Error::invalid_param("this device id is a cross-signing key").into());
    }
    if !replacing_same && state.accounts.device(&id.user_id, &device_id)?.is_some() {
        return Err(Error::invalid_param("a device with this id already exists").into());
    }
    // The previous dehydrated device (and its keys and messages) goes.
    if let Some(old) = old {
        state
            .accounts
            .delete_devices(&id.user_id, &[old.device_id])?;
    }
    state.accounts.create_tokenless_device(
        &id.user_id,
        &device_id,
        req.body.initial_device_display_name.clone(),
    )?;
    let keys = json!({
        "device_keys": json_of(&req.body.device_keys)?,
        "one_time_keys": json_of(&req.body.one_time_keys)?,
        "fallback_keys": json_of(&req.body.fallback_keys)?,
    });
    if let Err(e) = state.e2ee.upload_keys(&id.user_id, &device_id, &keys) {
        state.accounts.delete_devices(&id.user_id, &[device_id])?;
        return Err(e.into());
    }
    state.e2ee.set_dehydrated_device(
        &id.user_id,
        DehydratedDevice {
            device_id: device_id.clone(),
            device_data,
        },
    )?;
    Ok(RumaResponse(
        put_dehydrated_device::unstable::Response::new(device_id.into()),
    ))
}

/// `GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device` — MSC3814.
pub(crate) async fn get_dehydrated_device_route(
    State(state): State<AppState>,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> ApiResult<RumaResponse<get_dehydrated_device::unstable::Response>> {
    let id = req.user()?;
    let d = state
        .e2ee
        .dehydrated_device(&id.user_id)?
        .ok_or_else(|| Error::not_found("no dehydrated device"))?;
    Ok(RumaResponse(
        get_dehydrated_device::unstable::Response::new(d.device_id.into(), raw(&d.device_data)),
    ))
}

/// `DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device` — MSC3814.
pub(crate) async fn delete_dehydrated_device_route(
    State(state): State<AppState>,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> ApiResult<RumaResponse<delete_dehydrated_device::unstable::Response>> {
    let id = req.user()?;
    let d = state
        .e2ee
        .dehydrated_device(&id.user_id)?
        .ok_or_else(|| Error::not_found("no dehydrated device"))?;
    state
        .accounts
        .delete_devices(&id.user_id, std::slice::from_ref(&d.device_id))?;
    Ok(RumaResponse(
        delete_dehydrated_device::unstable::Response::new(d.device_id.into()),
    ))
}

/// `POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events` —
/// MSC3814: the to-device messages queued for the dehydrated device, a batch at a time;
/// passing `next_batch` back acknowledges the previous batch.
pub(crate) async fn dehydrated_events_route(
    State(state): State<AppState>,
    req: Ruma<get_events::unstable::Request>,
) -> ApiResult<RumaResponse<get_events::unstable::Response>> {
    let id = req.user()?;
    let device_id = req.body.device_id.as_str();
    match state.e2ee.dehydrated_device(&id.user_id)? {
        Some(d) if d.device_id == device_id => {}
        _ => return Err(Error::not_found("no such dehydrated device").into()),
    }
    if let Some(token) = &req.body.next_batch {
        let (_, acked) = parse_sync_token(token)?;
        state.e2ee.ack_to_device(&id.user_id, device_id, acked)?;
    }
    let upto = state.stream.current();
    let (events, truncated_at) = state.e2ee.pending_to_device(
        &id.user_id,
        device_id,
        upto,
        paracord_service::e2ee::TO_DEVICE_PER_SYNC,
    )?;
    let empty = events.is_empty();
    let mut resp = get_events::unstable::Response::new(events.iter().map(raw).collect());
    if !empty {
        let ack = truncated_at.unwrap_or(upto);
        resp.next_batch = Some(format!("s{upto}_{ack}"));
    }
    Ok(RumaResponse(resp))
}
