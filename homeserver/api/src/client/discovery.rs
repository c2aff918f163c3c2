//! `/versions`, `/capabilities`.

use std::collections::BTreeMap;

use axum::{extract::State, Json};
use paracord_core::Error;
use ruma::{
    api::client::discovery::{get_capabilities::v3 as caps, get_supported_versions},
    RoomVersionId,
};
use serde::Serialize;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// `GET /_matrix/client/versions` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientversions
pub(crate) async fn get_supported_versions_route(
    State(state): State<AppState>,
    _req: Ruma<get_supported_versions::Request>,
) -> RumaResponse<get_supported_versions::Response> {
    let versions = [
        "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
        "v1.11", "v1.12",
    ];
    let mut response =
        get_supported_versions::Response::new(versions.into_iter().map(str::to_owned).collect());
    // Delayed events (MSC4140, docs/delayed-events.md).
    response
        .unstable_features
        .insert("org.matrix.msc4140".to_owned(), true);
    // MatrixRTC transports (MSC4143, spec/voice.md): only with an SFU to offer.
    response
        .unstable_features
        .insert("org.matrix.msc4143".to_owned(), state.rtc.configured());
    RumaResponse(response)
}

/// The body of `GET /capabilities`: ruma's [`caps::Capabilities`] leaves a capability at its
/// default value out of the JSON, and clients (and Complement) look for `m.change_password`
/// and the profile capabilities, so they are written out in full here.
#[derive(Serialize)]
pub(crate) struct CapabilitiesBody {
    capabilities: AllCapabilities,
}

#[derive(Serialize)]
#[allow(deprecated)]
struct AllCapabilities {
    #[serde(rename = "m.room_versions")]
    room_versions: caps::RoomVersionsCapability,
    #[serde(rename = "m.change_password")]
    change_password: caps::ChangePasswordCapability,
    #[serde(rename = "m.set_displayname")]
    set_displayname: caps::SetDisplayNameCapability,
    #[serde(rename = "m.set_avatar_url")]
    set_avatar_url: caps::SetAvatarUrlCapability,
    #[serde(rename = "m.3pid_changes")]
    thirdparty_id_changes: caps::ThirdPartyIdChangesCapability,
    #[serde(rename = "m.get_login_token")]
    get_login_token: caps::GetLoginTokenCapability,
    /// MSC4140's limits (unstable name of `m.delayed_events`).
    #[serde(rename = "org.matrix.msc4140.delayed_events")]
    delayed_events: DelayedEventsCapability,
}

/// MSC4140: the longest delay and how many delayed events a user may have scheduled.
#[derive(Serialize)]
struct DelayedEventsCapability {
    max_delay_ms: u64,
    max_scheduled: u64,
}

/// `GET /_matrix/client/v3/capabilities` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3capabilities
///
/// Written out in full (see [`CapabilitiesBody`]).
#[allow(deprecated)]
pub(crate) async fn get_capabilities_route(
    State(state): State<AppState>,
    req: Ruma<caps::Request>,
) -> ApiResult<Json<CapabilitiesBody>> {
    req.user()?;
    let mut available = BTreeMap::new();
    for v in paracord_core::config::SUPPORTED_ROOM_VERSIONS {
        if let Ok(id) = RoomVersionId::try_from(*v) {
            available.insert(id, caps::RoomVersionStability::Stable);
        }
    }
    let default = RoomVersionId::try_from(state.config.default_room_version.as_str())
        .map_err(|e| Error::internal(format!("default room version: {e}")))?;
    Ok(Json(CapabilitiesBody {
        capabilities: AllCapabilities {
            room_versions: caps::RoomVersionsCapability::new(default, available),
            change_password: caps::ChangePasswordCapability::new(true),
            set_displayname: caps::SetDisplayNameCapability::new(true),
            set_avatar_url: caps::SetAvatarUrlCapability::new(true),
            thirdparty_id_changes: caps::ThirdPartyIdChangesCapability::new(false),
            get_login_token: caps::GetLoginTokenCapability::new(false),
            delayed_events: {
                let (max_delay_ms, max_scheduled) = state.delayed_events.limits();
                DelayedEventsCapability {
                    max_delay_ms,
                    max_scheduled,
                }
            },
        },
    }))
}
