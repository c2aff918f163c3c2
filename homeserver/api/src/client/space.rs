//! Spaces and ways into rooms: `/hierarchy`, room summaries, knocking and upgrades.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::client::{
        knock::knock_room,
        room::{get_summary, upgrade_room},
        space::{get_hierarchy, SpaceHierarchyRoomsChunk},
    },
    events::room::member::MembershipState,
    room::RoomSummary,
};
use serde_json::{json, Value};

use futures::future::BoxFuture;

use super::resolve_room;
use crate::{public_join_rules, ruma_wrapper::Ruma, ApiResult, AppState, Patched, RumaResponse};

/// A room summary as the service writes it (`public_room_chunk` and what other servers
/// sent), with the `allowed_room_ids` of a restricted room this server knows (read from its
/// join rules: ruma writes the field for such rooms, and an empty list would say that no
/// room grants access).
fn with_allowed_rooms(state: &AppState, mut chunk: Value) -> Result<Value, Error> {
    let restricted = matches!(
        chunk["join_rule"].as_str(),
        Some("restricted" | "knock_restricted")
    );
    if !restricted || chunk.get("allowed_room_ids").is_some() {
        return Ok(chunk);
    }
    let Some(room_id) = chunk["room_id"]
        .as_str()
        .and_then(|r| ruma::OwnedRoomId::try_from(r).ok())
    else {
        return Ok(chunk);
    };
    if state.rooms.room(&room_id)?.is_none() {
        return Ok(chunk);
    }
    let current = state.rooms.current_state(&room_id)?;
    let allowed: Vec<Value> = state
        .rooms
        .state_content(&current, "m.room.join_rules", "")?
        .and_then(|c| c["allow"].as_array().cloned())
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| {
            a["room_id"]
                .as_str()
                .filter(|r| ruma::RoomId::parse(r).is_ok())
                .map(|r| json!(r))
        })
        .collect();
    chunk["allowed_room_ids"] = Value::Array(allowed);
    Ok(chunk)
}

/// A summary the service wrote, as ruma's type: an alias that is not one (state content is
/// what clients and other servers sent) is left out rather than failing the whole summary.
fn summary_of<T: serde::de::DeserializeOwned>(mut chunk: Value) -> serde_json::Result<T> {
    if chunk["canonical_alias"]
        .as_str()
        .is_some_and(|a| ruma::RoomAliasId::parse(a).is_err())
    {
        if let Some(o) = chunk.as_object_mut() {
            o.remove("canonical_alias");
        }
    }
    serde_json::from_value(chunk)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidhierarchy
pub(crate) async fn get_hierarchy_route(
    State(state): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<Patched<get_hierarchy::v1::Response>> {
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
            state
                .queries
                .hierarchy_room(&room, &via, suggested_only)
                .await
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
    let mut resp = get_hierarchy::v1::Response::new();
    for chunk in rooms {
        let chunk = with_allowed_rooms(&state, chunk)?;
        // Local rooms' summaries always read; another server's that does not is left out.
        match summary_of::<SpaceHierarchyRoomsChunk>(chunk) {
            Ok(c) => resp.rooms.push(c),
            Err(e) => tracing::debug!("hierarchy: a room summary that does not read: {e}"),
        }
    }
    resp.next_batch = next.map(|n| format!("h{n}"));
    Ok(public_join_rules(resp))
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1room_summaryroomidoralias
pub(crate) async fn get_summary_route(
    State(state): State<AppState>,
    req: Ruma<get_summary::v1::Request>,
) -> ApiResult<Patched<get_summary::v1::Response>> {
    let room_id = resolve_room(&state, &req.body.room_id_or_alias)?;
    let user = req.ident.as_ref().map(|i| i.user_id.as_ref());
    let summary = with_allowed_rooms(&state, state.rooms.room_summary(&room_id, user)?)?;
    let membership = summary["membership"].as_str().map(MembershipState::from);
    let summary: RoomSummary =
        summary_of(summary).map_err(|e| Error::internal(format!("room summary: {e}")))?;
    let mut resp = get_summary::v1::Response::new(summary);
    resp.membership = membership;
    Ok(public_join_rules(resp))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3knockroomidoralias
pub(crate) async fn knock_room_route(
    State(state): State<AppState>,
    req: Ruma<knock_room::v3::Request>,
) -> ApiResult<RumaResponse<knock_room::v3::Response>> {
    let id = req.user()?;
    let room_id = state
        .joins
        .knock(
            &id.user_id,
            &req.body.room_id_or_alias,
            &req.body.via,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidupgrade
pub(crate) async fn upgrade_room_route(
    State(state): State<AppState>,
    req: Ruma<upgrade_room::v3::Request>,
) -> ApiResult<RumaResponse<upgrade_room::v3::Response>> {
    let id = req.user()?;
    let profile = state.accounts.profile(&id.user_id).unwrap_or((None, None));
    let additional_creators =
        (!req.body.additional_creators.is_empty()).then(|| json!(req.body.additional_creators));
    let new_room = state
        .rooms
        .upgrade_room(
            &req.body.room_id,
            &id.user_id,
            req.body.new_version.as_str(),
            additional_creators.as_ref(),
            profile,
        )
        .await?;
    Ok(RumaResponse(upgrade_room::v3::Response::new(new_room)))
}
