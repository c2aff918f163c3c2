//! `/.well-known/matrix/client` and `/.well-known/matrix/server`.

use axum::extract::State;
use axum::Json;
use paracord_core::Error;
use ruma::{api::federation::discovery::discover_homeserver as server_discovery, OwnedServerName};
use serde_json::{json, Value};

use crate::{ApiError, AppState, RumaResponse};

/// `GET /.well-known/matrix/client` — https://spec.matrix.org/v1.19/client-server-api/#getwell-knownmatrixclient
///
/// With a LiveKit SFU configured, it names this server's focus for MatrixRTC clients
/// (`org.matrix.msc4143.rtc_foci`, which Element Call reads; spec/voice.md §2).
pub(crate) async fn well_known_client_route(State(state): State<AppState>) -> Json<Value> {
    let mut body = json!({ "m.homeserver": { "base_url": state.config.public_baseurl() } });
    if let Some(url) = state.rtc.service_url() {
        body["org.matrix.msc4143.rtc_foci"] =
            json!([{ "type": "livekit", "livekit_service_url": url }]);
    }
    Json(body)
}

/// `GET /.well-known/matrix/server` — https://spec.matrix.org/v1.19/server-server-api/#getwell-knownmatrixserver
///
/// Delegation of federation traffic, from the `well_known_server` config key; without it other
/// servers fall back to SRV records and port 8448.
pub(crate) async fn well_known_server_route(
    State(state): State<AppState>,
) -> Result<RumaResponse<server_discovery::Response>, ApiError> {
    match &state.config.well_known_server {
        // The config's check at start-up made sure it is a server name.
        Some(server) => {
            let server = OwnedServerName::try_from(server.as_str())
                .map_err(|e| Error::internal(format!("well_known_server: {e}")))?;
            Ok(RumaResponse(server_discovery::Response::new(server)))
        }
        None => Err(Error::not_found("no server delegation is configured").into()),
    }
}
