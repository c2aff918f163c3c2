//! `/relations` and `/threads`.

use axum::extract::State;
use paracord_service::{
    rooms::{
        pdu::raw,
        timeline::{Dir, Reader},
    },
    sync::{make_token, parse_token},
};
use ruma::{
    api::{
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads,
        },
        Direction,
    },
    events::AnyMessageLikeEvent,
    serde::Raw,
    EventId, RoomId, UInt,
};

use super::reader;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// The query of every `/relations` form.
struct RelationsQuery<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: Direction,
    limit: Option<UInt>,
    recurse: bool,
}

/// One page of relations, as every `/relations` form answers it.
struct RelationsPage {
    chunk: Vec<Raw<AnyMessageLikeEvent>>,
    next_batch: Option<String>,
    /// Only when the client asked to recurse.
    recursion_depth: Option<UInt>,
}

/// Fills the fields that the three `/relations` responses share.
macro_rules! relations_response {
    ($endpoint:ident, $page:expr) => {{
        let page = $page;
        let mut resp = $endpoint::v1::Response::new(page.chunk);
        resp.next_batch = page.next_batch;
        resp.recursion_depth = page.recursion_depth;
        RumaResponse(resp)
    }};
}

fn relations(state: &AppState, r: Reader<'_>, q: RelationsQuery<'_>) -> ApiResult<RelationsPage> {
    state.rooms.check_can_read(q.room_id, r.user)?;
    let dir = match q.dir {
        Direction::Backward => Dir::Backward,
        Direction::Forward => Dir::Forward,
    };
    let from = q.from.map(parse_token).transpose()?;
    let to = q.to.map(parse_token).transpose()?;
    let limit = q
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(50))
        .unwrap_or(50)
        .clamp(1, 1000);
    let (chunk, next, depth) = state.rooms.relations(
        r,
        q.room_id,
        q.event_id,
        q.rel_type.as_deref(),
        q.event_type.as_deref(),
        from,
        to,
        dir,
        limit,
        q.recurse,
    )?;
    Ok(RelationsPage {
        chunk: chunk.iter().map(raw).collect(),
        next_batch: next.map(make_token),
        recursion_depth: q.recurse.then(|| UInt::from(depth)),
    })
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidrelationseventid
pub(crate) async fn get_relating_events_route(
    State(state): State<AppState>,
    req: Ruma<get_relating_events::v1::Request>,
) -> ApiResult<RumaResponse<get_relating_events::v1::Response>> {
    let b = &req.body;
    let q = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: None,
        event_type: None,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    Ok(relations_response!(
        get_relating_events,
        relations(&state, reader(&req)?, q)?
    ))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidrelationseventidreltype
pub(crate) async fn get_relating_events_with_rel_type_route(
    State(state): State<AppState>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<RumaResponse<get_relating_events_with_rel_type::v1::Response>> {
    let b = &req.body;
    let q = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: None,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    Ok(relations_response!(
        get_relating_events_with_rel_type,
        relations(&state, reader(&req)?, q)?
    ))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidrelationseventidreltypeeventtype
pub(crate) async fn get_relating_events_with_rel_type_and_event_type_route(
    State(state): State<AppState>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<RumaResponse<get_relating_events_with_rel_type_and_event_type::v1::Response>> {
    let b = &req.body;
    let q = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: Some(b.event_type.to_string()),
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    Ok(relations_response!(
        get_relating_events_with_rel_type_and_event_type,
        relations(&state, reader(&req)?, q)?
    ))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1roomsroomidthreads
pub(crate) async fn get_threads_route(
    State(state): State<AppState>,
    req: Ruma<get_threads::v1::Request>,
) -> ApiResult<RumaResponse<get_threads::v1::Response>> {
    let r = reader(&req)?;
    let b = &req.body;
    state.rooms.check_can_read(&b.room_id, r.user)?;
    let from = b.from.as_deref().map(parse_token).transpose()?;
    let limit = b
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(50))
        .unwrap_or(50)
        .clamp(1, 1000);
    let participated = b.include == get_threads::v1::IncludeThreads::Participated;
    let (chunk, next) = state
        .rooms
        .threads(r, &b.room_id, participated, from, limit)?;
    let mut resp = get_threads::v1::Response::new(chunk.iter().map(raw).collect());
    resp.next_batch = next.map(make_token);
    Ok(RumaResponse(resp))
}
