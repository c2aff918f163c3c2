//! Account data.

use axum::{extract::State, Json};
use paracord_core::Error;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

fn own<T>(req: &Ruma<T>, user: &ruma::UserId) -> Result<(), Error> {
    match &req.ident {
        Some(id) if id.user_id == user => Ok(()),
        _ => Err(Error::forbidden(
            "you may only access your own account data",
        )),
    }
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridaccount_datatype
pub(crate) async fn set_global_account_data_route(
    State(state): State<AppState>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    let content = req
        .json
        .clone()
        .ok_or_else(|| Error::bad_json("content must be a JSON object"))?;
    state.account_data.set(
        &req.body.user_id,
        None,
        &req.body.event_type.to_string(),
        content,
    )?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridaccount_datatype
pub(crate) async fn get_global_account_data_route(
    State(state): State<AppState>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    let v = state
        .account_data
        .get(&req.body.user_id, None, &req.body.event_type.to_string())?;
    Ok(Json(v.ok_or_else(|| {
        Error::not_found("account data not found")
    })?))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridroomsroomidaccount_datatype
pub(crate) async fn set_room_account_data_route(
    State(state): State<AppState>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    let content = req
        .json
        .clone()
        .ok_or_else(|| Error::bad_json("content must be a JSON object"))?;
    state.rooms.room_or_404(&req.body.room_id)?;
    state.account_data.set(
        &req.body.user_id,
        Some(&req.body.room_id),
        &req.body.event_type.to_string(),
        content,
    )?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridroomsroomidaccount_datatype
pub(crate) async fn get_room_account_data_route(
    State(state): State<AppState>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<Json<Value>> {
    own(&req, &req.body.user_id)?;
    let v = state.account_data.get(
        &req.body.user_id,
        Some(&req.body.room_id),
        &req.body.event_type.to_string(),
    )?;
    Ok(Json(v.ok_or_else(|| {
        Error::not_found("account data not found")
    })?))
}
