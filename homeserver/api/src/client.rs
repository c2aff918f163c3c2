//! Client-Server API handlers, one module per ruma endpoint area.

pub mod account;
pub mod appservice;
pub mod backup;
pub mod config;
pub mod delayed_events;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod keys;
pub mod membership;
pub mod message;
pub mod openid;
pub mod profile;
pub mod push;
pub mod relations;
pub mod reports;
pub mod room;
pub mod search;
pub mod session;
pub mod space;
pub mod state;
pub mod sync;
pub mod tags;
pub mod thirdparty;
pub mod user_directory;

use paracord_core::Error;
use paracord_service::rooms::timeline::Reader;
use ruma::{OwnedRoomId, RoomOrAliasId};

use crate::{ruma_wrapper::Ruma, ApiError, AppState};

/// The reader view of an authenticated request.
pub(crate) fn reader<T>(req: &Ruma<T>) -> Result<Reader<'_>, ApiError> {
    let id = req.user()?;
    Ok(Reader {
        user: &id.user_id,
        device: Some(id.device_id.as_str()),
    })
}

/// Resolves a room id or a local alias.
pub(crate) fn resolve_room(
    state: &AppState,
    room: &RoomOrAliasId,
) -> Result<OwnedRoomId, ApiError> {
    match <&ruma::RoomId>::try_from(room) {
        Ok(id) => Ok(id.to_owned()),
        Err(alias) => state
            .rooms
            .resolve_alias(alias)?
            .ok_or_else(|| ApiError(Error::not_found("room alias not found"))),
    }
}
