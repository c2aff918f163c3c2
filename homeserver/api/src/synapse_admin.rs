//! Synapse-compatible shared-secret registration (`/_synapse/admin/v1/register`), which tools
//! and test suites use to create accounts.

use axum::{body::Bytes, extract::State, Json};
use paracord_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{ApiResult, AppState};

/// `GET /_synapse/admin/v1/register`: a single-use nonce.
pub(crate) async fn get_nonce_route(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    if state.config.registration_shared_secret.is_none() {
        return Err(Error::forbidden("shared-secret registration is not enabled").into());
    }
    Ok(Json(json!({ "nonce": state.accounts.new_nonce() })))
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
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({
        "user_id": r.user_id,
        "access_token": r.access_token,
        "device_id": r.device_id,
        "home_server": state.config.server_name,
    })))
}
