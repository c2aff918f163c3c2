//! Account data.

use axum::extract::State;
use paracord_core::Error;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};

use super::message::{json_of, raw};
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

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
) -> ApiResult<RumaResponse<set_global_account_data::v3::Response>> {
    own(&req, &req.body.user_id)?;
    // An empty body reaches ruma as `{}`: only the raw body tells it apart.
    if req.body_is_empty() {
        return Err(Error::bad_json("content must be a JSON object").into());
    }
    let content = json_of(&req.body.data)?;
    state.account_data.set(
        &req.body.user_id,
        None,
        &req.body.event_type.to_string(),
        content,
    )?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridaccount_datatype
pub(crate) async fn get_global_account_data_route(
    State(state): State<AppState>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<RumaResponse<get_global_account_data::v3::Response>> {
    own(&req, &req.body.user_id)?;
    let v = state
        .account_data
        .get(&req.body.user_id, None, &req.body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("account data not found"))?;
    Ok(RumaResponse(get_global_account_data::v3::Response::new(
        raw(&v)?,
    )))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridroomsroomidaccount_datatype
pub(crate) async fn set_room_account_data_route(
    State(state): State<AppState>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<RumaResponse<set_room_account_data::v3::Response>> {
    own(&req, &req.body.user_id)?;
    // An empty body reaches ruma as `{}`: only the raw body tells it apart.
    if req.body_is_empty() {
        return Err(Error::bad_json("content must be a JSON object").into());
    }
    let content = json_of(&req.body.data)?;
    state.rooms.room_or_404(&req.body.room_id)?;
    state.account_data.set(
        &req.body.user_id,
        Some(&req.body.room_id),
        &req.body.event_type.to_string(),
        content,
    )?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridroomsroomidaccount_datatype
pub(crate) async fn get_room_account_data_route(
    State(state): State<AppState>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<RumaResponse<get_room_account_data::v3::Response>> {
    own(&req, &req.body.user_id)?;
    let v = state
        .account_data
        .get(
            &req.body.user_id,
            Some(&req.body.room_id),
            &req.body.event_type.to_string(),
        )?
        .ok_or_else(|| Error::not_found("account data not found"))?;
    Ok(RumaResponse(get_room_account_data::v3::Response::new(raw(
        &v,
    )?)))
}
