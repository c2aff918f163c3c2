//! What the focus's API reads and answers (spec/voice.md): request pieces, answers, the
//! moderation actions. No storage here: handlers depend on these types, not on the service.

use serde::{Deserialize, Serialize};

/// A moderator's action on someone else's call (spec/voice.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moderation {
    /// Disconnect them (MOVE_MEMBERS).
    Disconnect,
    /// Server mute or unmute (MUTE_MEMBERS).
    Mute,
    /// Server deafen or undeafen (DEAFEN_MEMBERS).
    Deafen,
}

/// A moderator's standing mute/deafen of a user in a room: the row with an empty identity.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Muted {
    #[serde(default)]
    pub mute: bool,
    #[serde(default)]
    pub deafen: bool,
}

/// A token, as the three ways in answer it.
#[derive(Clone, Debug, Serialize)]
pub struct TokenAnswer {
    pub url: String,
    pub jwt: String,
}

/// The member object of MSC4195's requests.
#[derive(Clone, Debug, Deserialize)]
pub struct RtcMember {
    pub id: String,
    pub claimed_device_id: String,
    #[serde(default)]
    pub claimed_user_id: Option<String>,
}

/// MSC4195's `POST /_matrix/client/v1/rtc/livekit/get_token` body (its current revision):
/// a token for the SFU at `url` of `server_name` (this server when absent).
#[derive(Clone, Debug, Deserialize)]
pub struct SlotTokenRequest {
    #[serde(default)]
    pub server_name: Option<String>,
    pub url: String,
    pub room_id: String,
    pub slot_id: String,
    pub member_id: String,
}

/// The same request, relayed by the user's server to the SFU's server
/// (`POST /_matrix/federation/v1/rtc/livekit/get_token`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ServerTokenRequest {
    pub user_id: String,
    pub url: String,
    pub room_id: String,
    pub slot_id: String,
    pub member_id: String,
}

/// MSC4195's `POST /_matrix/client/v1/rtc/livekit/delegate_delayed_leave` body.
#[derive(Clone, Debug, Deserialize)]
pub struct DelegateLeave {
    pub url: String,
    pub room_id: String,
    pub slot_id: String,
    pub member_id: String,
    pub delay_id: String,
}

/// An OpenID token as Element Call sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct OpenIdToken {
    pub access_token: String,
    pub matrix_server_name: String,
}

/// Who is in a room's call, for `GET /_paracord/v1/channels/{id}/voice`.
#[derive(Clone, Debug, Serialize)]
pub struct InCall {
    pub user_id: String,
    pub device_id: String,
    pub speak: bool,
    pub stream: bool,
    pub server_muted: bool,
    pub server_deafened: bool,
}
