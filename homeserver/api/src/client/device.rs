//! Devices.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use paracord_core::Error;
use paracord_service::accounts::{Device, UiaFlow};
use ruma::{
    api::client::device::{
        self as wire, delete_device, delete_devices, get_device, get_devices, update_device,
    },
    MilliSecondsSinceUnixEpoch, UInt,
};

use super::account::auth_json;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

fn device_wire(d: &Device) -> wire::Device {
    let mut out = wire::Device::new(d.device_id.clone());
    out.display_name = d.display_name.clone();
    out.last_seen_ip = d.last_seen_ip.clone();
    out.last_seen_ts = d
        .last_seen_ts
        .and_then(|ts| UInt::try_from(ts).ok())
        .map(MilliSecondsSinceUnixEpoch);
    out
}

/// `GET /_matrix/client/v3/devices` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3devices
pub(crate) async fn get_devices_route(
    State(state): State<AppState>,
    req: Ruma<get_devices::v3::Request>,
) -> ApiResult<RumaResponse<get_devices::v3::Response>> {
    let id = req.user()?;
    let devices = state
        .accounts
        .devices(&id.user_id)?
        .iter()
        .map(device_wire)
        .collect();
    Ok(RumaResponse(get_devices::v3::Response::new(devices)))
}

/// `GET /_matrix/client/v3/devices/{deviceId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3devicesdeviceid
pub(crate) async fn get_device_route(
    State(state): State<AppState>,
    req: Ruma<get_device::v3::Request>,
) -> ApiResult<RumaResponse<get_device::v3::Response>> {
    let id = req.user()?;
    let d = state
        .accounts
        .device(&id.user_id, req.body.device_id.as_str())?
        .ok_or_else(|| Error::not_found("device not found"))?;
    Ok(RumaResponse(get_device::v3::Response::new(device_wire(&d))))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3devicesdeviceid
///
/// An application service may create a device of one of its users this way (MSC4190, spec
/// v1.17): `201` when the device is new. It has no access token; the appservice uses it with
/// `?device_id=`.
pub(crate) async fn update_device_route(
    State(state): State<AppState>,
    req: Ruma<update_device::v3::Request>,
) -> ApiResult<Response> {
    let id = req.user()?;
    if id.appservice.is_some()
        && state
            .accounts
            .device(&id.user_id, req.body.device_id.as_str())?
            .is_none()
    {
        state.accounts.create_tokenless_device(
            &id.user_id,
            req.body.device_id.as_str(),
            req.body.display_name.clone(),
        )?;
        state.e2ee.device_renamed(&id.user_id)?;
        return Ok((
            StatusCode::CREATED,
            RumaResponse(update_device::v3::Response::new()),
        )
            .into_response());
    }
    state.accounts.update_device(
        &id.user_id,
        req.body.device_id.as_str(),
        req.body.display_name.clone(),
    )?;
    state.e2ee.device_renamed(&id.user_id)?;
    Ok(RumaResponse(update_device::v3::Response::new()).into_response())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3devicesdeviceid
pub(crate) async fn delete_device_route(
    State(state): State<AppState>,
    req: Ruma<delete_device::v3::Request>,
) -> ApiResult<RumaResponse<delete_device::v3::Response>> {
    let id = req.user()?.clone();
    if state
        .accounts
        .device(&id.user_id, req.body.device_id.as_str())?
        .is_none()
    {
        return Err(Error::not_found("device not found").into());
    }
    // No user-interactive auth for an application service (MSC4190, spec v1.17).
    if id.appservice.is_none() {
        let auth = auth_json(&req.body.auth)?;
        state
            .accounts
            .uia(auth.as_ref(), UiaFlow::Password(id.user_id.clone()))
            .await?;
    }
    state
        .accounts
        .delete_devices(&id.user_id, &[req.body.device_id.to_string()])?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

/// `POST /_matrix/client/v3/delete_devices` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3delete_devices
pub(crate) async fn delete_devices_route(
    State(state): State<AppState>,
    req: Ruma<delete_devices::v3::Request>,
) -> ApiResult<RumaResponse<delete_devices::v3::Response>> {
    let id = req.user()?.clone();
    // No user-interactive auth for an application service (MSC4190, spec v1.17).
    if id.appservice.is_none() {
        let auth = auth_json(&req.body.auth)?;
        state
            .accounts
            .uia(auth.as_ref(), UiaFlow::Password(id.user_id.clone()))
            .await?;
    }
    let ids: Vec<String> = req.body.devices.iter().map(|d| d.to_string()).collect();
    state.accounts.delete_devices(&id.user_id, &ids)?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}
