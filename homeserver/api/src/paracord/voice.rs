//! Voice moderation under `/_paracord/v1` (spec/voice.md §3.1), relayed to the guild's host,
//! whose focus the channel's calls use: who is in a call, server mute and deafen, disconnect
//! and move.

use axum::{
    extract::{Path, Request, State},
    routing::{get, post, put},
    Json, Router,
};
use paracord_core::Error;
use paracord_service::rtc::model::Moderation;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, user_param, wire, Caller};
use crate::{ApiResult, AppState};

/// The moderation routes under `/_paracord/v1` (relayed to the guild's host, whose focus the
/// channel's calls use).
pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/_paracord/v1/channels/{channel_id}/voice",
        get(in_call_route),
    )
    .route(
        "/_paracord/v1/channels/{channel_id}/voice/members/{user_id}/disconnect",
        post(disconnect_route),
    )
    .route(
        "/_paracord/v1/channels/{channel_id}/voice/members/{user_id}/move",
        post(move_route),
    )
    .route(
        "/_paracord/v1/channels/{channel_id}/voice/members/{user_id}/mute",
        put(mute_route),
    )
    .route(
        "/_paracord/v1/channels/{channel_id}/voice/members/{user_id}/deafen",
        put(deafen_route),
    )
}

fn channel(id: &str) -> ApiResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(id).map_err(|_| Error::not_found("no such channel").into())
}

/// `GET /_paracord/v1/channels/{id}/voice`: who is connected to the channel's call.
async fn in_call_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(channel_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = channel(&channel_id)?;
    Ok(Json(
        json!({ "participants": state.rtc.in_call(&room, &user)? }),
    ))
}

/// `POST …/voice/members/{userId}/disconnect` (MOVE_MEMBERS).
async fn disconnect_route(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((channel_id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let room = channel(&channel_id)?;
    let target = user_param(&user_id)?;
    let removed = state.rtc.disconnect(&room, &actor, &target).await?;
    Ok(Json(json!({ "disconnected": removed })))
}

#[derive(Deserialize)]
struct MoveBody {
    channel_id: String,
}

/// `POST …/voice/members/{userId}/move` `{"channel_id"}` (MOVE_MEMBERS in both channels):
/// disconnects them here and tells their devices where to rejoin, with a
/// `chat.paracord.voice.move` to-device message `{"from", "to"}`.
async fn move_route(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((channel_id, user_id)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let room = channel(&channel_id)?;
    let target = user_param(&user_id)?;
    let body: MoveBody = wire::read(json_body(&state, req.into_body()).await?)?;
    let to = channel(&body.channel_id)?;
    let moved = state.rtc.move_member(&room, &to, &actor, &target).await?;
    let messages = json!({
        target.as_str(): { "*": { "from": room, "to": to } },
    });
    state.e2ee.send_to_device(
        &actor,
        "PARACORD",
        "chat.paracord.voice.move",
        &format!("move-{}", paracord_service::random::random_string(16)),
        &messages,
    )?;
    Ok(Json(json!({ "disconnected": moved })))
}

/// `PUT …/voice/members/{userId}/mute` `{"mute": bool}` (MUTE_MEMBERS).
async fn mute_route(
    state: State<AppState>,
    actor: Caller,
    path: Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    standing(state, actor, path, req, Moderation::Mute, "mute").await
}

/// `PUT …/voice/members/{userId}/deafen` `{"deafen": bool}` (DEAFEN_MEMBERS).
async fn deafen_route(
    state: State<AppState>,
    actor: Caller,
    path: Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    standing(state, actor, path, req, Moderation::Deafen, "deafen").await
}

/// A server mute or deafen, on or off (`{"<field>": bool}`): the standing state afterwards.
async fn standing(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((channel_id, user_id)): Path<(String, String)>,
    req: Request,
    action: Moderation,
    field: &str,
) -> ApiResult<Json<Value>> {
    let room = channel(&channel_id)?;
    let target = user_param(&user_id)?;
    let body = json_body(&state, req.into_body()).await?;
    let on = body
        .get(field)
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::bad_json(format!("{field} must be true or false")))?;
    let muted = state
        .rtc
        .set_muted(&room, &actor, &target, action, on)
        .await?;
    Ok(Json(json!(muted)))
}
