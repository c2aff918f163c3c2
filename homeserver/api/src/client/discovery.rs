//! `/versions`, `/capabilities`.

use std::collections::BTreeMap;

use axum::{extract::State, Json};
use ruma::{
    api::client::discovery::{get_capabilities::v3 as caps, get_supported_versions},
    RoomVersionId,
};
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

/// `GET /_matrix/client/versions` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientversions
pub(crate) async fn get_supported_versions_route(
    _req: Ruma<get_supported_versions::Request>,
) -> Json<Value> {
    Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"],
        "unstable_features": {},
    }))
}

/// `GET /_matrix/client/v3/capabilities` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3capabilities
///
/// Written out in full: ruma leaves capabilities at their default value out of the JSON, and
/// clients (and Complement) look for `m.change_password` and the profile capabilities.
pub(crate) async fn get_capabilities_route(
    State(state): State<AppState>,
    req: Ruma<caps::Request>,
) -> ApiResult<Json<Value>> {
    req.user()?;
    let mut available = BTreeMap::new();
    for v in paracord_core::config::SUPPORTED_ROOM_VERSIONS {
        if let Ok(id) = RoomVersionId::try_from(*v) {
            available.insert(id.to_string(), "stable");
        }
    }
    Ok(Json(json!({ "capabilities": {
        "m.room_versions": {
            "default": state.config.default_room_version,
            "available": available,
        },
        "m.change_password": { "enabled": true },
        "m.set_displayname": { "enabled": true },
        "m.set_avatar_url": { "enabled": true },
        "m.3pid_changes": { "enabled": false },
        "m.get_login_token": { "enabled": false },
    }})))
}
