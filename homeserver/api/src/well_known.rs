//! `/.well-known/matrix/client` and `/.well-known/matrix/server`.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::{
        client::discovery::discover_homeserver as client_discovery,
        federation::discovery::discover_homeserver as server_discovery,
    },
    OwnedServerName,
};

use crate::{ApiError, AppState, RumaResponse};

/// `GET /.well-known/matrix/client` — https://spec.matrix.org/v1.19/client-server-api/#getwell-knownmatrixclient
pub(crate) async fn well_known_client_route(
    State(state): State<AppState>,
) -> RumaResponse<client_discovery::Response> {
    RumaResponse(client_discovery::Response::new(
        client_discovery::HomeserverInfo::new(state.config.public_baseurl()),
    ))
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
