//! Synapse-compatible shared-secret registration (`/_synapse/admin/v1/register`), which tools
//! and test suites use to create accounts.

use axum::{body::Bytes, extract::State, Json};
use paracord_core::Error;
use ruma::{OwnedDeviceId, OwnedEventId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    paracord::wire::{self, Input},
    ApiResult, AppState,
};

/// The answer to `GET /_synapse/admin/v1/register`.
#[derive(Debug, Serialize)]
pub(crate) struct Nonce {
    pub nonce: String,
}

/// The answer to `POST /_synapse/admin/v1/register`.
#[derive(Debug, Serialize)]
pub(crate) struct Registered {
    pub user_id: OwnedUserId,
    pub access_token: String,
    pub device_id: OwnedDeviceId,
    pub home_server: String,
}

/// The answer to `…/send_server_notice`.
#[derive(Debug, Serialize)]
pub(crate) struct NoticeSent {
    pub event_id: OwnedEventId,
}

/// `GET /_synapse/admin/v1/register`: a single-use nonce.
pub(crate) async fn get_nonce_route(State(state): State<AppState>) -> ApiResult<Json<Nonce>> {
    if state.config.registration_shared_secret.is_none() {
        return Err(Error::forbidden("shared-secret registration is not enabled").into());
    }
    Ok(Json(Nonce {
        nonce: state.accounts.new_nonce(),
    }))
}

#[derive(Deserialize)]
struct SharedSecretRegister {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    mac: String,
    displayname: Option<String>,
}

/// `POST /_synapse/admin/v1/register`.
pub(crate) async fn register_route(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<Registered>> {
    let req: SharedSecretRegister = match serde_json::from_slice::<Value>(&body) {
        Err(e) => return Err(Error::not_json(format!("request body is not JSON: {e}")).into()),
        Ok(v) => serde_json::from_value(v)
            .map_err(|e| Error::bad_json(format!("invalid request: {e}")))?,
    };
    state.accounts.check_shared_secret_mac(
        &req.nonce,
        &req.username,
        &req.password,
        req.admin,
        &req.mac,
    )?;
    let r = state
        .accounts
        .register(
            Some(&req.username),
            Some(req.password),
            None,
            None,
            false,
            false,
            Some(req.admin),
        )
        .await?;
    if let Some(d) = req.displayname {
        state
            .accounts
            .set_profile(&r.user_id, Some(Some(d)), None)?;
    }
    Ok(Json(Registered {
        user_id: r.user_id,
        access_token: r.access_token,
        device_id: r.device_id,
        home_server: state.config.server_name.clone(),
    }))
}

/// The body of `…/send_server_notice`: `user_id`, `content` (an event content: any JSON
/// object), optional `type` and `state_key`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServerNotice {
    user_id: Input<String>,
    content: Input<serde_json::Map<String, Value>>,
    #[serde(rename = "type")]
    kind: Input<String>,
    state_key: Input<String>,
}

/// `POST /_synapse/admin/v1/send_server_notice` and `PUT …/send_server_notice/{txnId}`
/// (Synapse admin API, server admins): a notice to a local user in their server notices
/// room. Body: `user_id`, `content`, optional `type` (default `m.room.message`) and
/// `state_key`. Answer: `{"event_id": …}`; a repeated `txnId` answers with the same event.
pub(crate) async fn send_server_notice_route(
    State(state): State<AppState>,
    txn: Option<axum::extract::Path<String>>,
    req: axum::extract::Request,
) -> ApiResult<Json<NoticeSent>> {
    let (parts, body) = req.into_parts();
    let token = crate::ruma_wrapper::access_token(&parts).ok_or_else(Error::missing_token)?;
    let id = state.accounts.authenticate(&token)?;
    if !id.admin {
        return Err(Error::forbidden("only server admins may send server notices").into());
    }
    let bytes = axum::body::to_bytes(body, state.config.max_request_bytes)
        .await
        .map_err(|_| Error::too_large("request body too large"))?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::not_json(format!("request body is not JSON: {e}")))?;
    // JSON other than an object has none of the fields.
    let body: ServerNotice = if body.is_object() {
        wire::read(body)?
    } else {
        ServerNotice::default()
    };
    let Input::Value(user) = body.user_id else {
        return Err(Error::missing_param("user_id is required").into());
    };
    let user = OwnedUserId::try_from(user)
        .map_err(|_| Error::invalid_param("user_id is not a user id"))?;
    let Input::Value(content) = body.content else {
        return Err(Error::missing_param("content must be an object").into());
    };
    let kind = match body.kind {
        Input::Absent | Input::Null => "m.room.message".to_owned(),
        Input::Value(t) if !t.is_empty() => t,
        _ => return Err(Error::invalid_param("type must be an event type").into()),
    };
    let state_key = match body.state_key {
        Input::Absent | Input::Null => None,
        Input::Value(k) => Some(k),
        Input::WrongType => return Err(Error::invalid_param("state_key must be a string").into()),
    };
    let txn = txn.map(|axum::extract::Path(t)| {
        (format!("server notice {} {}", id.user_id, id.device_id), t)
    });
    let event_id = state
        .server_notices
        .send(
            paracord_service::server_notices::Notice {
                user,
                kind,
                state_key,
                content: Value::Object(content),
            },
            txn,
        )
        .await?;
    Ok(Json(NoticeSent { event_id }))
}
