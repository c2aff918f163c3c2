//! `/.well-known/matrix/client` and `/.well-known/matrix/server`.

use axum::{extract::State, Json};
use paracord_core::Error;
use serde_json::{json, Value};

use crate::{ApiError, AppState};

/// `GET /.well-known/matrix/client` — https://spec.matrix.org/v1.19/client-server-api/#getwell-knownmatrixclient
pub(crate) async fn well_known_client_route(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": state.config.public_baseurl() } }))
}

/// `GET /.well-known/matrix/server` — https://spec.matrix.org/v1.19/server-server-api/#getwell-knownmatrixserver
///
/// Delegation of federation traffic, from the `well_known_server` config key; without it other
/// servers fall back to SRV records and port 8448.
pub(crate) async fn well_known_server_route(
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    match &state.config.well_known_server {
        Some(server) => Ok(Json(json!({ "m.server": server }))),
        None => Err(Error::not_found("no server delegation is configured").into()),
    }
}
