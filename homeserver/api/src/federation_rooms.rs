//! Server-Server API for rooms: incoming transactions (`/send`) and membership through a
//! resident server (`make_join`/`send_join`, `make_leave`/`send_leave`). The checks live in
//! `paracord_service::federation::pdus`; these handlers only take the request apart.

use axum::{extract::State, Json};
use paracord_core::Error;
use paracord_service::federation::pdus::{JoinAnswer, MembershipAnswer};
use ruma::{
    api::federation::{
        membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event,
            prepare_join_event, prepare_knock_event, prepare_leave_event, RawStrippedState,
        },
        space::{get_hierarchy, SpaceHierarchyParentSummary},
        transactions::send_transaction_message,
    },
    room::RoomSummary,
};
use serde_json::Value;

use crate::{public_join_rules, ruma_wrapper::Ruma, ApiResult, AppState, Patched, RumaResponse};

fn origin<T>(req: &Ruma<T>) -> ApiResult<ruma::OwnedServerName> {
    req.origin
        .clone()
        .ok_or_else(|| Error::forbidden("the request is not signed by a server").into())
}

fn raw_value(raw: &serde_json::value::RawValue) -> ApiResult<Value> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("bad PDU: {e}")).into())
}

/// The `send_join` / `send_leave` / `send_knock` handlers' common part.
async fn sent_membership<T>(
    state: &AppState,
    req: &Ruma<T>,
    room_id: &ruma::RoomId,
    event_id: &ruma::EventId,
    pdu: &serde_json::value::RawValue,
    membership: &str,
) -> ApiResult<MembershipAnswer> {
    let origin = origin(req)?;
    let pdu = raw_value(pdu)?;
    Ok(state
        .pdus
        .send_membership(&origin, room_id, event_id, &pdu, membership)
        .await?)
}

/// An answer of `send_membership` that is not the one its membership gives.
fn unexpected_answer(membership: &str) -> crate::ApiError {
    Error::internal(format!("an unexpected answer to a {membership}")).into()
}

/// `PUT /_matrix/federation/v1/send/{txnId}` — https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv1sendtxnid
pub(crate) async fn send_transaction_message_route(
    State(state): State<AppState>,
    req: Ruma<send_transaction_message::v1::Request>,
) -> ApiResult<RumaResponse<send_transaction_message::v1::Response>> {
    let origin = origin(&req)?;
    paracord_service::federation::pdus::check_transaction_origin(&req.body, &origin)?;
    // The server is talking to us: whatever we queued for it can go now.
    state.sender.wake(&origin);
    let pdus = state.pdus.transaction(&origin, &req.body).await?;
    Ok(RumaResponse(send_transaction_message::v1::Response::new(
        pdus,
    )))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1make_joinroomiduserid
pub(crate) async fn prepare_join_event_route(
    State(state): State<AppState>,
    req: Ruma<prepare_join_event::v1::Request>,
) -> ApiResult<RumaResponse<prepare_join_event::v1::Response>> {
    let origin = origin(&req)?;
    let versions: Vec<String> = if req.body.ver.is_empty() {
        vec!["1".to_owned()]
    } else {
        req.body.ver.iter().map(|v| v.to_string()).collect()
    };
    let (version, event) = state.pdus.make_membership(
        &origin,
        &req.body.room_id,
        &req.body.user_id,
        "join",
        &versions,
    )?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(RumaResponse(response))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}` — https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2send_joinroomideventid
pub(crate) async fn create_join_event_route(
    State(state): State<AppState>,
    req: Ruma<create_join_event::v2::Request>,
) -> ApiResult<Json<JoinAnswer>> {
    match sent_membership(
        &state,
        &req,
        &req.body.room_id,
        &req.body.event_id,
        &req.body.pdu,
        "join",
    )
    .await?
    {
        MembershipAnswer::Join(answer) => Ok(Json(answer)),
        _ => Err(unexpected_answer("join")),
    }
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1make_leaveroomiduserid
pub(crate) async fn prepare_leave_event_route(
    State(state): State<AppState>,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> ApiResult<RumaResponse<prepare_leave_event::v1::Response>> {
    let origin = origin(&req)?;
    let (version, event) =
        state
            .pdus
            .make_membership(&origin, &req.body.room_id, &req.body.user_id, "leave", &[])?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(
        Some(version),
        event,
    )))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}` — https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2send_leaveroomideventid
pub(crate) async fn create_leave_event_route(
    State(state): State<AppState>,
    req: Ruma<create_leave_event::v2::Request>,
) -> ApiResult<RumaResponse<create_leave_event::v2::Response>> {
    match sent_membership(
        &state,
        &req,
        &req.body.room_id,
        &req.body.event_id,
        &req.body.pdu,
        "leave",
    )
    .await?
    {
        MembershipAnswer::Leave => Ok(RumaResponse(create_leave_event::v2::Response::new())),
        _ => Err(unexpected_answer("leave")),
    }
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` — https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2inviteroomideventid
pub(crate) async fn create_invite_route(
    State(state): State<AppState>,
    req: Ruma<create_invite::v2::Request>,
) -> ApiResult<RumaResponse<create_invite::v2::Response>> {
    let origin = origin(&req)?;
    let event = raw_value(&req.body.event)?;
    if let Some(target) = event["state_key"]
        .as_str()
        .and_then(|k| <&ruma::UserId>::try_from(k).ok())
    {
        if !state.accounts.is_local(target) || state.accounts.account(target)?.is_none() {
            return Err(Error::not_found("no such user on this server").into());
        }
    }
    let stripped = req
        .body
        .invite_room_state
        .iter()
        .map(|e| match e {
            #[allow(deprecated)]
            RawStrippedState::Stripped(s) => raw_value(s.json()),
            RawStrippedState::Pdu(p) => raw_value(p),
            _ => Err(Error::bad_json("unknown invite_room_state entry").into()),
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let signed = state
        .pdus
        .receive_invite(
            &origin,
            &req.body.room_id,
            &req.body.event_id,
            req.body.room_version.as_str(),
            &event,
            &stripped,
        )
        .await?;
    Ok(RumaResponse(create_invite::v2::Response::new(signed)))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1make_knockroomiduserid
pub(crate) async fn prepare_knock_event_route(
    State(state): State<AppState>,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> ApiResult<RumaResponse<prepare_knock_event::v1::Response>> {
    let origin = origin(&req)?;
    let versions: Vec<String> = req.body.ver.iter().map(|v| v.to_string()).collect();
    let (version, event) = state.pdus.make_membership(
        &origin,
        &req.body.room_id,
        &req.body.user_id,
        "knock",
        &versions,
    )?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(
        version, event,
    )))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}` — https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv1send_knockroomideventid
pub(crate) async fn create_knock_event_route(
    State(state): State<AppState>,
    req: Ruma<create_knock_event::v1::Request>,
) -> ApiResult<RumaResponse<create_knock_event::v1::Response>> {
    match sent_membership(
        &state,
        &req,
        &req.body.room_id,
        &req.body.event_id,
        &req.body.pdu,
        "knock",
    )
    .await?
    {
        MembershipAnswer::Knock(knock_room_state) => {
            Ok(RumaResponse(create_knock_event::v1::Response::new(
                knock_room_state
                    .into_iter()
                    .map(RawStrippedState::Pdu)
                    .collect(),
            )))
        }
        _ => Err(unexpected_answer("knock")),
    }
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1hierarchyroomid
pub(crate) async fn get_hierarchy_route(
    State(state): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<Patched<get_hierarchy::v1::Response>> {
    let origin = origin(&req)?;
    state.rooms.check_server_acl(&req.body.room_id, &origin)?;
    let mut hierarchy =
        state
            .rooms
            .federation_hierarchy(&origin, &req.body.room_id, req.body.suggested_only)?;
    let mut room = hierarchy["room"].take();
    let children_state = crate::federation::wire(room["children_state"].take())?;
    let room = room_summary(room)
        .ok_or_else(|| Error::internal("the room's summary cannot be told to another server"))?;
    let mut response =
        get_hierarchy::v1::Response::new(SpaceHierarchyParentSummary::new(room, children_state));
    response.children = match hierarchy["children"].take() {
        Value::Array(children) => children.into_iter().filter_map(room_summary).collect(),
        _ => Vec::new(),
    };
    response.inaccessible_children =
        crate::federation::wire(hierarchy["inaccessible_children"].take())?;
    Ok(public_join_rules(response))
}

/// A room's summary for `/hierarchy`, as `paracord_service::rooms` builds it, in ruma's type.
/// Its fields come from room state, which another server may have filled with anything: a
/// `canonical_alias` or `avatar_url` ruma cannot read is left out, and a room ruma cannot
/// tell (a join rule the spec does not know, which ruma cannot write) is `None`.
fn room_summary(mut room: Value) -> Option<RoomSummary> {
    if let Some(o) = room.as_object_mut() {
        o.remove("children_state");
    }
    let summary = serde_json::from_value::<RoomSummary>(room.clone())
        .or_else(|_| {
            if let Some(o) = room.as_object_mut() {
                o.remove("canonical_alias");
                o.remove("avatar_url");
            }
            serde_json::from_value::<RoomSummary>(room)
        })
        .map_err(|e| tracing::warn!("a room summary that cannot be told: {e}"))
        .ok()?;
    let known = matches!(
        summary.join_rule.as_str(),
        "public" | "invite" | "knock" | "private" | "restricted" | "knock_restricted"
    );
    if !known {
        tracing::warn!(
            room_id = %summary.room_id,
            join_rule = summary.join_rule.as_str(),
            "a room summary with a join rule ruma cannot write"
        );
        return None;
    }
    Some(summary)
}

/// The answer of the v1 `send_join` / `send_leave`: `[200, answer]`, the v2 answer after the
/// status code the v1 API repeats in its body.
#[derive(serde::Serialize)]
pub(crate) struct V1MembershipAnswer(u16, V1Answer);

/// The v2 answer inside a v1 one: a join's, or a leave's `{}`.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(crate) enum V1Answer {
    Join(JoinAnswer),
    Leave {},
}

/// `PUT /_matrix/federation/v1/send_join/{roomId}/{eventId}` and `…/v1/send_leave/…` — the
/// deprecated v1 forms (https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv1send_joinroomideventid),
/// which servers still send: the same checks as v2, answered as `[200, {…}]`. ruma has no
/// types for them, so the X-Matrix signature is checked here.
pub(crate) async fn create_membership_event_v1_route(
    State(state): State<AppState>,
    crate::params::Params((room_id, event_id)): crate::params::Params<(String, String)>,
    req: axum::extract::Request,
) -> ApiResult<Json<V1MembershipAnswer>> {
    let membership = if req.uri().path().contains("/send_join/") {
        "join"
    } else {
        "leave"
    };
    let (origin, bytes) = crate::federation::signed_body(&state, req).await?;
    let room_id =
        ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("not a room id"))?;
    let event_id = ruma::OwnedEventId::try_from(event_id)
        .map_err(|_| Error::invalid_param("not an event id"))?;
    let pdu: Value = serde_json::from_slice(&bytes).map_err(|e| Error::not_json(e.to_string()))?;
    if !pdu.is_object() {
        return Err(Error::bad_json("the body must be a PDU").into());
    }
    let answer = state
        .pdus
        .send_membership(&origin, &room_id, &event_id, &pdu, membership)
        .await?;
    let answer = match answer {
        MembershipAnswer::Join(join) => V1Answer::Join(join),
        MembershipAnswer::Leave => V1Answer::Leave {},
        MembershipAnswer::Knock(_) => return Err(unexpected_answer(membership)),
    };
    Ok(Json(V1MembershipAnswer(200, answer)))
}
