//! Spaces and ways into rooms: `/hierarchy`, room summaries, knocking and upgrades.

use axum::{extract::State, Json};
use paracord_core::Error;
use ruma::api::client::{
    knock::knock_room,
    room::{get_summary, upgrade_room},
    space::get_hierarchy,
};
use serde_json::{json, Value};

use futures::future::BoxFuture;

use super::resolve_room;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidhierarchy
pub(crate) async fn get_hierarchy_route(
    State(state): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let b = &req.body;
    let from = match &b.from {
        Some(t) => paracord_service::tokens::parse_offset_token::<usize>('h', t)
            .ok_or_else(|| Error::invalid_param("invalid from token"))?,
        None => 0,
    };
    let limit = b
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(50))
        .unwrap_or(50)
        .clamp(1, 100);
    let max_depth = b
        .max_depth
        .map(|d| usize::try_from(u64::from(d)).unwrap_or(usize::MAX));
    let suggested_only = b.suggested_only;
    // Rooms this server is not in are asked of the servers their parent names.
    let remote = |room: ruma::OwnedRoomId,
                  via: Vec<ruma::OwnedServerName>|
     -> BoxFuture<'_, Option<Value>> {
        let state = &state;
        Box::pin(async move {
            for server in via {
                if server.as_str() == state.config.server_name {
                    continue;
                }
                let path = format!(
                    "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
                    crate::percent_encode(room.as_str())
                );
                match crate::federation::ask(state, &server, http::Method::GET, &path, None).await {
                    Ok(answer) if answer["room"].is_object() => {
                        return Some(answer["room"].clone())
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%room, %server, "hierarchy over federation: {}", e),
                }
            }
            None
        })
    };
    let (rooms, next) = state
        .rooms
        .hierarchy(
            &id.user_id,
            &b.room_id,
            suggested_only,
            max_depth,
            from,
            limit,
            &remote,
        )
        .await?;
    let mut body = json!({ "rooms": rooms });
    if let Some(n) = next {
        body["next_batch"] = json!(format!("h{n}"));
    }
    Ok(Json(body))
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1room_summaryroomidoralias
pub(crate) async fn get_summary_route(
    State(state): State<AppState>,
    req: Ruma<get_summary::v1::Request>,
) -> ApiResult<Json<Value>> {
    let room_id = resolve_room(&state, &req.body.room_id_or_alias)?;
    let user = req.ident.as_ref().map(|i| i.user_id.as_ref());
    Ok(Json(state.rooms.room_summary(&room_id, user)?))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3knockroomidoralias
pub(crate) async fn knock_room_route(
    State(state): State<AppState>,
    req: Ruma<knock_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let (room_id, via) =
        super::membership::room_and_servers(&state, &req.body.room_id_or_alias, &req.body.via)
            .await?;
    let candidates = super::membership::candidates(&state, &id.user_id, &room_id, &via)?;
    if !super::membership::resident(&state, &room_id)? && !candidates.is_empty() {
        state
            .pdus
            .knock_remote(
                &id.user_id,
                &room_id,
                &candidates,
                req.body.reason.as_deref(),
            )
            .await?;
        return Ok(Json(json!({ "room_id": room_id })));
    }
    state
        .rooms
        .knock(&room_id, &id.user_id, req.body.reason.as_deref())
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidupgrade
pub(crate) async fn upgrade_room_route(
    State(state): State<AppState>,
    req: Ruma<upgrade_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let profile = state.accounts.profile(&id.user_id).unwrap_or((None, None));
    let new_room = state
        .rooms
        .upgrade_room(
            &req.body.room_id,
            &id.user_id,
            req.body.new_version.as_str(),
            req.json.as_ref().and_then(|j| j.get("additional_creators")),
            profile,
        )
        .await?;
    Ok(Json(json!({ "replacement_room": new_room })))
}
