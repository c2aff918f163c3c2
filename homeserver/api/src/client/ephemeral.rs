//! Typing, receipts, read markers and presence.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::client::{
        presence::{get_presence, set_presence},
        read_marker::set_read_marker,
        receipt::create_receipt,
        typing::create_typing_event,
    },
    api::federation::transactions::edu::{
        Edu, PresenceContent, PresenceUpdate, ReceiptContent, ReceiptData, ReceiptMap,
        TypingContent,
    },
    events::{
        receipt::{Receipt, ReceiptThread},
        room::member::MembershipState,
    },
    presence::PresenceState,
    MilliSecondsSinceUnixEpoch, UInt,
};
use serde_json::json;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};
use paracord_service::ratelimit::Limit;

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3roomsroomidtypinguserid
pub(crate) async fn create_typing_event_route(
    State(state): State<AppState>,
    req: Ruma<create_typing_event::v3::Request>,
) -> ApiResult<RumaResponse<create_typing_event::v3::Response>> {
    let id = req.user()?;
    state.ratelimit.check(Limit::Typing, id.user_id.as_str())?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only set your own typing state").into());
    }
    if !state.rooms.is_joined(&req.body.room_id, &id.user_id)? {
        return Err(Error::forbidden("you are not in this room").into());
    }
    let members = state.rooms.joined_members(&req.body.room_id)?;
    let typing = match req.body.state {
        create_typing_event::v3::Typing::Yes(ref info) => {
            let ms = u64::try_from(info.timeout.as_millis()).unwrap_or(u64::MAX);
            state
                .ephemeral
                .set_typing(&req.body.room_id, &id.user_id, true, ms, members)?;
            true
        }
        _ => {
            state
                .ephemeral
                .set_typing(&req.body.room_id, &id.user_id, false, 0, members)?;
            false
        }
    };
    state.sender.queue_edu_to_all(
        state.rooms.servers_in_room(&req.body.room_id)?,
        &edu_json(Edu::Typing(TypingContent::new(
            req.body.room_id.clone(),
            id.user_id.clone(),
            typing,
        )))?,
    )?;
    Ok(RumaResponse(create_typing_event::v3::Response::new()))
}

/// An EDU in the JSON form the federation sender queues.
fn edu_json(edu: Edu) -> Result<serde_json::Value, Error> {
    Ok(serde_json::to_value(edu)?)
}

async fn receipt(
    state: &AppState,
    user: &ruma::UserId,
    room_id: &ruma::RoomId,
    kind: &str,
    event_id: &ruma::EventId,
    thread: Option<String>,
) -> Result<(), Error> {
    if !state.rooms.is_joined(room_id, user)? {
        return Err(Error::forbidden("you are not in this room"));
    }
    let reader = paracord_service::rooms::timeline::Reader { user, device: None };
    state.rooms.visible_event(reader, Some(room_id), event_id)?;
    if let Some(t) = &thread {
        state.rooms.check_receipt_thread(event_id, t)?;
    }
    if kind == "m.fully_read" {
        return state.account_data.set(
            user,
            Some(room_id),
            "m.fully_read",
            json!({ "event_id": event_id }),
        );
    }
    let members = state.rooms.joined_members(room_id)?;
    state.ephemeral.set_receipt(
        room_id,
        user,
        kind,
        event_id.as_str(),
        thread.as_deref(),
        members,
    )?;
    // Public read receipts reach the other servers in the room; private ones never leave.
    if kind == "m.read" {
        let mut data = Receipt::new(MilliSecondsSinceUnixEpoch(UInt::new_saturating(
            paracord_core::time::now_ms(),
        )));
        data.thread = ReceiptThread::try_from(thread.as_deref())
            .map_err(|e| Error::invalid_param(format!("thread_id: {e}")))?;
        let read = [(
            user.to_owned(),
            ReceiptData::new(data, vec![event_id.to_owned()]),
        )];
        let receipts = [(room_id.to_owned(), ReceiptMap::new(read.into()))];
        state.sender.queue_edu_to_all(
            state.rooms.servers_in_room(room_id)?,
            &edu_json(Edu::Receipt(ReceiptContent::new(receipts.into())))?,
        )?;
    }
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidreceiptreceipttypeeventid
pub(crate) async fn create_receipt_route(
    State(state): State<AppState>,
    req: Ruma<create_receipt::v3::Request>,
) -> ApiResult<RumaResponse<create_receipt::v3::Response>> {
    let id = req.user()?;
    let kind = req.body.receipt_type.to_string();
    if !matches!(kind.as_str(), "m.read" | "m.read.private" | "m.fully_read") {
        return Err(Error::invalid_param("unknown receipt type").into());
    }
    let thread = req.body.thread.as_str().map(str::to_owned);
    if thread.is_some() && kind == "m.fully_read" {
        return Err(Error::invalid_param("m.fully_read takes no thread_id").into());
    }
    receipt(
        &state,
        &id.user_id,
        &req.body.room_id,
        &kind,
        &req.body.event_id,
        thread,
    )
    .await?;
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidread_markers
pub(crate) async fn set_read_marker_route(
    State(state): State<AppState>,
    req: Ruma<set_read_marker::v3::Request>,
) -> ApiResult<RumaResponse<set_read_marker::v3::Response>> {
    let id = req.user()?;
    let b = &req.body;
    if let Some(e) = &b.fully_read {
        receipt(&state, &id.user_id, &b.room_id, "m.fully_read", e, None).await?;
    }
    if let Some(e) = &b.read_receipt {
        receipt(&state, &id.user_id, &b.room_id, "m.read", e, None).await?;
    }
    if let Some(e) = &b.private_read_receipt {
        receipt(&state, &id.user_id, &b.room_id, "m.read.private", e, None).await?;
    }
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}

/// `PUT /_matrix/client/v3/presence/{userId}/status` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3presenceuseridstatus
pub(crate) async fn set_presence_route(
    State(state): State<AppState>,
    req: Ruma<set_presence::v3::Request>,
) -> ApiResult<RumaResponse<set_presence::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Presence, id.user_id.as_str())?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only set your own presence").into());
    }
    let mut wake = Vec::new();
    let mut servers = std::collections::BTreeSet::new();
    for (room, rec) in state.rooms.user_rooms(&id.user_id)? {
        if rec.membership == MembershipState::Join {
            wake.extend(state.rooms.joined_members(&room)?);
            servers.extend(state.rooms.servers_in_room(&room)?);
        }
    }
    wake.sort();
    wake.dedup();
    state.ephemeral.set_presence(
        &id.user_id,
        req.body.presence.as_str(),
        req.body.status_msg.clone(),
        wake,
    )?;
    // Servers sharing a room with the user hear of it.
    let mut update = PresenceUpdate::new(
        id.user_id.clone(),
        req.body.presence.clone(),
        UInt::from(0u32),
    );
    update.currently_active = req.body.presence.as_str() == "online";
    update.status_msg = req.body.status_msg.clone();
    let edu = edu_json(Edu::Presence(PresenceContent::new(vec![update])))?;
    for server in servers {
        if server.as_str() != state.config.server_name {
            state.sender.queue_edu(&server, edu.clone())?;
        }
    }
    Ok(RumaResponse(set_presence::v3::Response::new()))
}

/// `GET /_matrix/client/v3/presence/{userId}/status` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3presenceuseridstatus
pub(crate) async fn get_presence_route(
    State(state): State<AppState>,
    req: Ruma<get_presence::v3::Request>,
) -> ApiResult<RumaResponse<get_presence::v3::Response>> {
    // Issue 15: presence is for the users who share a room with its user (and the user
    // themselves), as in sync; to anyone else, whether the user exists or not, 403.
    let id = req.user()?;
    if id.user_id != req.body.user_id
        && !state.rooms.share_a_room(&id.user_id, &req.body.user_id)?
    {
        return Err(Error::forbidden("you share no room with this user").into());
    }
    let p = state.ephemeral.presence(&req.body.user_id)?;
    if p.is_none() && state.accounts.account(&req.body.user_id)?.is_none() {
        return Err(Error::not_found("unknown user").into());
    }
    let Some(p) = p else {
        return Ok(RumaResponse(get_presence::v3::Response::new(
            PresenceState::Offline,
        )));
    };
    let mut resp = get_presence::v3::Response::new(PresenceState::from(p.presence.as_str()));
    resp.last_active_ago = Some(std::time::Duration::from_millis(
        paracord_core::time::now_ms().saturating_sub(p.last_active_ts),
    ));
    resp.currently_active = Some(p.presence == "online");
    resp.status_msg = p.status_msg;
    Ok(RumaResponse(resp))
}
