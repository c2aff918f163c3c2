//! Room aliases and the public room directory.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::Visibility,
    },
    directory::PublicRoomsChunk,
    OwnedServerName, RoomAliasId, UInt,
};
use serde_json::Value;

use crate::{public_join_rules, ruma_wrapper::Ruma, ApiResult, AppState, Patched, RumaResponse};

/// A page of the public room directory, read from its JSON (this server's page or another
/// server's answer).
struct Page {
    chunk: Vec<PublicRoomsChunk>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    total_room_count_estimate: Option<UInt>,
}

impl Page {
    fn from_json(mut page: Value) -> Self {
        let chunk = match page["chunk"].take() {
            Value::Array(rooms) => rooms.into_iter().filter_map(room_entry).collect(),
            _ => Vec::new(),
        };
        let token = |v: &Value| v.as_str().map(str::to_owned);
        Self {
            chunk,
            next_batch: token(&page["next_batch"]),
            prev_batch: token(&page["prev_batch"]),
            total_room_count_estimate: page["total_room_count_estimate"]
                .as_u64()
                .map(UInt::new_saturating),
        }
    }
}

/// One room of a directory page. A canonical alias that is not an alias is left out rather
/// than the room (state events are not checked for it); an entry that still does not read as
/// a room (only another server's answer can have one) is left out.
fn room_entry(mut room: Value) -> Option<PublicRoomsChunk> {
    let bad_alias = room
        .get("canonical_alias")
        .is_some_and(|a| a.as_str().is_none_or(|a| RoomAliasId::parse(a).is_err()));
    if bad_alias {
        room.as_object_mut()?.remove("canonical_alias");
    }
    serde_json::from_value(room).ok()
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3directoryroomroomalias
pub(crate) async fn create_alias_route(
    State(state): State<AppState>,
    req: Ruma<create_alias::v3::Request>,
) -> ApiResult<RumaResponse<create_alias::v3::Response>> {
    let id = req.user()?;
    if !state.rooms.is_joined(&req.body.room_id, &id.user_id)? && !id.admin {
        state.rooms.room_or_404(&req.body.room_id)?;
        return Err(Error::forbidden("you are not in this room").into());
    }
    // An alias in an application service's exclusive namespace is that appservice's.
    if let Some(owner) = state
        .appservices
        .exclusive_alias_owner(req.body.room_alias.as_str())
    {
        if id.appservice.as_deref() != Some(owner.id()) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                paracord_core::ErrorKind::Exclusive,
                "this alias is reserved by an application service",
            )
            .into());
        }
    }
    state
        .rooms
        .set_alias(&req.body.room_alias, &req.body.room_id, &id.user_id)?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3directoryroomroomalias
pub(crate) async fn delete_alias_route(
    State(state): State<AppState>,
    req: Ruma<delete_alias::v3::Request>,
) -> ApiResult<RumaResponse<delete_alias::v3::Response>> {
    let id = req.user()?;
    let room_id = state
        .rooms
        .delete_alias(&req.body.room_alias, &id.user_id, id.admin)?;
    state
        .rooms
        .forget_canonical_alias(&room_id, &req.body.room_alias, &id.user_id)
        .await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3directoryroomroomalias
pub(crate) async fn get_alias_route(
    State(state): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> ApiResult<RumaResponse<get_alias::v3::Response>> {
    let alias = &req.body.room_alias;
    if alias.server_name().as_str() != state.config.server_name {
        // Another server's alias: ask that server.
        let (room_id, servers) = state.queries.room_alias(alias).await?;
        return Ok(RumaResponse(get_alias::v3::Response::new(room_id, servers)));
    }
    let mut room_id = state.rooms.resolve_alias(alias)?;
    // An alias in an application service's namespace that does not exist yet: the appservice
    // is asked, and may create it before it answers.
    if room_id.is_none() && state.appservices.query_alias(alias).await {
        room_id = state.rooms.resolve_alias(alias)?;
    }
    let room_id = room_id.ok_or_else(|| Error::not_found("room alias not found"))?;
    let own = OwnedServerName::try_from(state.config.server_name.as_str())
        .map_err(|e| Error::internal(format!("own server name: {e}")))?;
    Ok(RumaResponse(get_alias::v3::Response::new(
        room_id,
        vec![own],
    )))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3directorylistroomroomid
pub(crate) async fn get_room_visibility_route(
    State(state): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<RumaResponse<get_room_visibility::v3::Response>> {
    state.rooms.room_or_404(&req.body.room_id)?;
    let v = if state.rooms.is_published(&req.body.room_id)? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(RumaResponse(get_room_visibility::v3::Response::new(v)))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3directorylistroomroomid
pub(crate) async fn set_room_visibility_route(
    State(state): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<RumaResponse<set_room_visibility::v3::Response>> {
    let id = req.user()?;
    let room = state.rooms.room_or_404(&req.body.room_id)?;
    let map = state.rooms.state(room.state)?;
    let level = state.rooms.power_level(&room.version, &map, &id.user_id)?;
    let needed = state.rooms.required_level(&map, "state_default", 50)?;
    if !id.admin && (!state.rooms.is_joined(&req.body.room_id, &id.user_id)? || level < needed) {
        return Err(Error::forbidden("you may not change this room's visibility").into());
    }
    state
        .rooms
        .set_published(&req.body.room_id, req.body.visibility == Visibility::Public)?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

/// `GET /_matrix/client/v3/publicRooms` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3publicrooms
pub(crate) async fn get_public_rooms_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<Patched<get_public_rooms::v3::Response>> {
    if let Some(server) = req
        .body
        .server
        .as_ref()
        .filter(|s| s.as_str() != state.config.server_name)
    {
        let answer = state
            .queries
            .public_rooms(server, req.body.limit, req.body.since.as_deref())
            .await?;
        return Ok(public_join_rules(public_rooms(Page::from_json(answer))));
    }
    let all = state.rooms.public_rooms(None)?;
    let page = paracord_service::rooms::directory::public_rooms_page(
        all,
        req.body.since.as_deref(),
        req.body.limit.map(u64::from),
    )?;
    Ok(public_join_rules(public_rooms(Page::from_json(page))))
}

/// `POST /_matrix/client/v3/publicRooms` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3publicrooms
pub(crate) async fn get_public_rooms_filtered_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<Patched<get_public_rooms_filtered::v3::Response>> {
    if let Some(server) = req
        .body
        .server
        .as_ref()
        .filter(|s| s.as_str() != state.config.server_name)
    {
        let answer = state
            .queries
            .public_rooms_filtered(
                server,
                req.body.filter.clone(),
                req.body.limit,
                req.body.since.as_deref(),
            )
            .await?;
        return Ok(public_join_rules(public_rooms_filtered(Page::from_json(
            answer,
        ))));
    }
    let term = req.body.filter.generic_search_term.as_deref();
    let all = state.rooms.public_rooms(term)?;
    let page = paracord_service::rooms::directory::public_rooms_page(
        all,
        req.body.since.as_deref(),
        req.body.limit.map(u64::from),
    )?;
    Ok(public_join_rules(public_rooms_filtered(Page::from_json(
        page,
    ))))
}

fn public_rooms(page: Page) -> get_public_rooms::v3::Response {
    let mut resp = get_public_rooms::v3::Response::new(page.chunk);
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = page.total_room_count_estimate;
    resp
}

fn public_rooms_filtered(page: Page) -> get_public_rooms_filtered::v3::Response {
    let mut resp = get_public_rooms_filtered::v3::Response::new();
    resp.chunk = page.chunk;
    resp.next_batch = page.next_batch;
    resp.prev_batch = page.prev_batch;
    resp.total_room_count_estimate = page.total_room_count_estimate;
    resp
}
