//! Server-side key backups.

use std::collections::BTreeMap;

use axum::extract::State;
use paracord_core::Error;
use paracord_service::backup::{BackedUpKey, BackupInfo, KeyCounts, RoomKeys, Upload};
use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version, BackupAlgorithm, KeyBackupData, RoomKeyBackup,
    },
    serde::Raw,
    UInt,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// The `algorithm` and `auth_data` of a backup version, as the server keeps them: the
/// `auth_data` is opaque to it.
#[derive(Deserialize)]
struct AlgorithmBody {
    algorithm: String,
    auth_data: Map<String, Value>,
}

fn algorithm_body(raw: &Raw<BackupAlgorithm>) -> Result<AlgorithmBody, Error> {
    raw.deserialize_as_unchecked()
        .map_err(|e| Error::bad_json(format!("invalid backup algorithm: {e}")))
}

fn algorithm_raw(info: &BackupInfo) -> Result<Raw<BackupAlgorithm>, Error> {
    let json = serde_json::json!({ "algorithm": info.algorithm, "auth_data": info.auth_data });
    Ok(Raw::new(&json)?.cast_unchecked())
}

fn uint(n: u64) -> Result<UInt, Error> {
    UInt::try_from(n).map_err(Error::internal)
}

fn key_data(raw: &Raw<KeyBackupData>) -> Result<BackedUpKey, Error> {
    BackedUpKey::from_json(raw.json().get())
}

fn key_raw(key: &BackedUpKey) -> Result<Raw<KeyBackupData>, Error> {
    Ok(Raw::new(key)?.cast_unchecked())
}

fn sessions_raw(
    sessions: BTreeMap<String, BackedUpKey>,
) -> Result<BTreeMap<String, Raw<KeyBackupData>>, Error> {
    sessions
        .into_iter()
        .map(|(id, key)| Ok((id, key_raw(&key)?)))
        .collect()
}

fn rooms_raw(rooms: RoomKeys) -> Result<BTreeMap<ruma::OwnedRoomId, RoomKeyBackup>, Error> {
    rooms
        .into_iter()
        .map(|(room, sessions)| Ok((room, RoomKeyBackup::new(sessions_raw(sessions)?))))
        .collect()
}

fn counts(c: KeyCounts) -> Result<(String, UInt), Error> {
    Ok((c.etag, uint(c.count)?))
}

/// `POST /_matrix/client/v3/room_keys/version` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3room_keysversion
pub(crate) async fn create_backup_version_route(
    State(state): State<AppState>,
    req: Ruma<create_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<create_backup_version::v3::Response>> {
    let id = req.user()?;
    let body = algorithm_body(&req.body.algorithm)?;
    let version = state
        .backups
        .create(&id.user_id, &body.algorithm, body.auth_data)?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(
        version,
    )))
}

/// `GET /_matrix/client/v3/room_keys/version` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keysversion
pub(crate) async fn get_latest_backup_info_route(
    State(state): State<AppState>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<RumaResponse<get_latest_backup_info::v3::Response>> {
    let id = req.user()?;
    let info = state
        .backups
        .current(&id.user_id)?
        .ok_or_else(|| Error::not_found("no current backup version"))?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(
        algorithm_raw(&info)?,
        uint(info.count)?,
        info.etag,
        info.version,
    )))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keysversionversion
pub(crate) async fn get_backup_info_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_info::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_info::v3::Response>> {
    let id = req.user()?;
    let info = state
        .backups
        .get(&id.user_id, &req.body.version)?
        .ok_or_else(|| Error::not_found("unknown backup version"))?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(
        algorithm_raw(&info)?,
        uint(info.count)?,
        info.etag,
        info.version,
    )))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keysversionversion
pub(crate) async fn update_backup_version_route(
    State(state): State<AppState>,
    req: Ruma<update_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<update_backup_version::v3::Response>> {
    let id = req.user()?;
    // ruma keeps the whole body as the algorithm; a `version` in it must name the path's.
    if let Some(v) = req
        .body
        .algorithm
        .get_field::<Value>("version")
        .ok()
        .flatten()
    {
        if v.as_str() != Some(req.body.version.as_str()) {
            return Err(Error::invalid_param(
                "the version in the body does not match the version in the path",
            )
            .into());
        }
    }
    let body = algorithm_body(&req.body.algorithm)?;
    state.backups.update(
        &id.user_id,
        &req.body.version,
        &body.algorithm,
        body.auth_data,
    )?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keysversionversion
pub(crate) async fn delete_backup_version_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_version::v3::Response>> {
    let id = req.user()?;
    state
        .backups
        .delete_version(&id.user_id, &req.body.version)?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

/// `PUT /_matrix/client/v3/room_keys/keys` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeys
pub(crate) async fn add_backup_keys_route(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys::v3::Response>> {
    let id = req.user()?;
    let mut upload = Upload::new();
    for (room, backup) in &req.body.rooms {
        for (session, raw) in &backup.sessions {
            upload.push((room.clone(), session.clone(), key_data(raw)?));
        }
    }
    let (etag, count) = counts(
        state
            .backups
            .put_keys(&id.user_id, &req.body.version, upload)?,
    )?;
    Ok(RumaResponse(add_backup_keys::v3::Response::new(
        etag, count,
    )))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeysroomid
pub(crate) async fn add_backup_keys_for_room_route(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys_for_room::v3::Response>> {
    let id = req.user()?;
    let mut upload = Upload::new();
    for (session, raw) in &req.body.sessions {
        upload.push((req.body.room_id.clone(), session.clone(), key_data(raw)?));
    }
    let (etag, count) = counts(
        state
            .backups
            .put_keys(&id.user_id, &req.body.version, upload)?,
    )?;
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(
        etag, count,
    )))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3room_keyskeysroomidsessionid
pub(crate) async fn add_backup_keys_for_session_route(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys_for_session::v3::Response>> {
    let id = req.user()?;
    let upload = vec![(
        req.body.room_id.clone(),
        req.body.session_id.clone(),
        key_data(&req.body.session_data)?,
    )];
    let (etag, count) = counts(
        state
            .backups
            .put_keys(&id.user_id, &req.body.version, upload)?,
    )?;
    Ok(RumaResponse(
        add_backup_keys_for_session::v3::Response::new(etag, count),
    ))
}

/// `GET /_matrix/client/v3/room_keys/keys` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeys
pub(crate) async fn get_backup_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys::v3::Response>> {
    let id = req.user()?;
    let rooms = state.backups.keys(&id.user_id, &req.body.version, None)?;
    Ok(RumaResponse(get_backup_keys::v3::Response::new(rooms_raw(
        rooms,
    )?)))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeysroomid
///
/// An existing backup without keys for the room answers `{"sessions": {}}`, as the spec says.
pub(crate) async fn get_backup_keys_for_room_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys_for_room::v3::Response>> {
    let id = req.user()?;
    let mut rooms = state
        .backups
        .keys(&id.user_id, &req.body.version, Some(&req.body.room_id))?;
    let sessions = rooms.remove(&req.body.room_id).unwrap_or_default();
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(
        sessions_raw(sessions)?,
    )))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3room_keyskeysroomidsessionid
pub(crate) async fn get_backup_keys_for_session_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys_for_session::v3::Response>> {
    let id = req.user()?;
    let key = state.backups.session(
        &id.user_id,
        &req.body.version,
        &req.body.room_id,
        &req.body.session_id,
    )?;
    Ok(RumaResponse(
        get_backup_keys_for_session::v3::Response::new(key_raw(&key)?),
    ))
}

/// `DELETE /_matrix/client/v3/room_keys/keys` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeys
pub(crate) async fn delete_backup_keys_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys::v3::Response>> {
    let id = req.user()?;
    let (etag, count) = counts(state.backups.delete_keys(
        &id.user_id,
        &req.body.version,
        None,
        None,
    )?)?;
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(
        etag, count,
    )))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeysroomid
pub(crate) async fn delete_backup_keys_for_room_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys_for_room::v3::Response>> {
    let id = req.user()?;
    let (etag, count) = counts(state.backups.delete_keys(
        &id.user_id,
        &req.body.version,
        Some(&req.body.room_id),
        None,
    )?)?;
    Ok(RumaResponse(
        delete_backup_keys_for_room::v3::Response::new(etag, count),
    ))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3room_keyskeysroomidsessionid
pub(crate) async fn delete_backup_keys_for_session_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys_for_session::v3::Response>> {
    let id = req.user()?;
    let (etag, count) = counts(state.backups.delete_keys(
        &id.user_id,
        &req.body.version,
        Some(&req.body.room_id),
        Some(&req.body.session_id),
    )?)?;
    Ok(RumaResponse(
        delete_backup_keys_for_session::v3::Response::new(etag, count),
    ))
}
