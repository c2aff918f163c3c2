//! `/.well-known/matrix/client`.

use axum::{extract::State, Json};
use serde_json::{json, Value};

use crate::AppState;

/// `GET /.well-known/matrix/client` — https://spec.matrix.org/v1.19/client-server-api/#getwell-knownmatrixclient
pub(crate) async fn well_known_client_route(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": state.config.public_baseurl() } }))
}
