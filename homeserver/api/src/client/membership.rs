//! Membership: join, invite, leave, kick, ban, unban, forget, member lists.

use std::collections::BTreeMap;

use axum::extract::State;
use paracord_core::Error;
use paracord_service::rooms::{membership::membership_of, pdu::raw};
use ruma::{
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    events::room::member::MembershipState,
};
use serde_json::{json, Value};

use super::reader;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, Patched, RumaResponse};
use paracord_service::ratelimit::Limit;

/// `POST /_matrix/client/v3/rooms/{roomId}/join` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidjoin
pub(crate) async fn join_room_by_id_route(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<RumaResponse<join_room_by_id::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    state
        .joins
        .join(
            &id.user_id,
            &req.body.room_id,
            &[],
            req.body.reason.as_deref(),
            req.body_object().map(Value::Object).as_ref(),
        )
        .await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(
        req.body.room_id.clone(),
    )))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3joinroomidoralias
pub(crate) async fn join_room_by_id_or_alias_route(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    // A local alias that does not exist yet, in an application service's namespace: the
    // appservice is asked first (it may create it).
    if let Ok(alias) = <&ruma::RoomAliasId>::try_from(&*req.body.room_id_or_alias) {
        if state.accounts.is_local_server(alias.server_name())
            && state.rooms.resolve_alias(alias)?.is_none()
        {
            state.appservices.query_alias(alias).await;
        }
    }
    let (room_id, via) = state
        .joins
        .room_and_servers(&req.body.room_id_or_alias, &req.body.via)
        .await?;
    state
        .joins
        .join(
            &id.user_id,
            &room_id,
            &via,
            req.body.reason.as_deref(),
            req.body_object().map(Value::Object).as_ref(),
        )
        .await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(
        room_id,
    )))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidinvite
pub(crate) async fn invite_user_route(
    State(state): State<AppState>,
    req: Ruma<invite_user::v3::Request>,
) -> ApiResult<RumaResponse<invite_user::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    let invite_user::v3::InvitationRecipient::UserId(invitee) = &req.body.recipient else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            paracord_core::ErrorKind::Unrecognized,
            "third-party invites are not supported",
        )
        .into());
    };
    let user_id = &invitee.user_id;
    if state.accounts.is_local(user_id) && state.accounts.account(user_id)?.is_none() {
        return Err(Error::not_found("no such user").into());
    }
    if !state.accounts.is_local(user_id) {
        let mut content = json!({ "membership": "invite" });
        if let Some(r) = &invitee.reason {
            content["reason"] = json!(r);
        }
        state
            .pdus
            .invite_remote(&req.body.room_id, &id.user_id, user_id, content)
            .await?;
        return Ok(RumaResponse(invite_user::v3::Response::new()));
    }
    state
        .rooms
        .invite(
            &req.body.room_id,
            &id.user_id,
            user_id,
            invitee.reason.as_deref(),
            false,
        )
        .await?;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidleave
pub(crate) async fn leave_room_route(
    State(state): State<AppState>,
    req: Ruma<leave_room::v3::Request>,
) -> ApiResult<RumaResponse<leave_room::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    // An invite from a server this one shares no room with is rejected through that server.
    if state
        .rooms
        .remote_invite(&id.user_id, &req.body.room_id)?
        .is_some()
        && !state
            .rooms
            .servers_in_room(&req.body.room_id)
            .unwrap_or_default()
            .iter()
            .any(|s| s.as_str() == state.config.server_name)
    {
        state
            .pdus
            .reject_remote_invite(&id.user_id, &req.body.room_id, req.body.reason.as_deref())
            .await?;
        return Ok(RumaResponse(leave_room::v3::Response::new()));
    }
    state.rooms.room_or_404(&req.body.room_id)?;
    state
        .server_notices
        .check_leave(&req.body.room_id, &id.user_id)?;
    state
        .rooms
        .leave(&req.body.room_id, &id.user_id, req.body.reason.as_deref())
        .await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidkick
pub(crate) async fn kick_user_route(
    State(state): State<AppState>,
    req: Ruma<kick_user::v3::Request>,
) -> ApiResult<RumaResponse<kick_user::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    state.rooms.room_or_404(&req.body.room_id)?;
    state
        .rooms
        .kick(
            &req.body.room_id,
            &id.user_id,
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidban
pub(crate) async fn ban_user_route(
    State(state): State<AppState>,
    req: Ruma<ban_user::v3::Request>,
) -> ApiResult<RumaResponse<ban_user::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    state
        .rooms
        .ban(
            &req.body.room_id,
            &id.user_id,
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidunban
pub(crate) async fn unban_user_route(
    State(state): State<AppState>,
    req: Ruma<unban_user::v3::Request>,
) -> ApiResult<RumaResponse<unban_user::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::Membership, id.user_id.as_str())?;
    state.rooms.room_or_404(&req.body.room_id)?;
    state
        .rooms
        .unban(
            &req.body.room_id,
            &id.user_id,
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3roomsroomidforget
pub(crate) async fn forget_room_route(
    State(state): State<AppState>,
    req: Ruma<forget_room::v3::Request>,
) -> ApiResult<RumaResponse<forget_room::v3::Response>> {
    let id = req.user()?;
    state.rooms.forget(&req.body.room_id, &id.user_id)?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

/// `GET /_matrix/client/v3/joined_rooms` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3joined_rooms
pub(crate) async fn joined_rooms_route(
    State(state): State<AppState>,
    req: Ruma<joined_rooms::v3::Request>,
) -> ApiResult<RumaResponse<joined_rooms::v3::Response>> {
    let id = req.user()?;
    let rooms = state
        .rooms
        .user_rooms(&id.user_id)?
        .into_iter()
        .filter(|(_, r)| r.membership == MembershipState::Join)
        .map(|(room, _)| room)
        .collect();
    Ok(RumaResponse(joined_rooms::v3::Response::new(rooms)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidmembers
pub(crate) async fn get_member_events_route(
    State(state): State<AppState>,
    req: Ruma<get_member_events::v3::Request>,
) -> ApiResult<RumaResponse<get_member_events::v3::Response>> {
    let r = reader(&req)?;
    let room_id = &req.body.room_id;
    state.rooms.check_can_read(room_id, r.user)?;
    // A user who left sees the members as of their leave, also when `at` names a later
    // point (issue 15; spec: the membership at the time they left).
    let ceiling = state.rooms.read_ceiling(room_id, r.user)?;
    let at = req
        .body
        .at
        .as_deref()
        .map(paracord_service::sync::parse_token)
        .transpose()?;
    let snapshot = match (at, ceiling) {
        (Some(at), Some(ceiling)) => state.rooms.state_at_pos(room_id, at.min(ceiling))?,
        (Some(pos), None) | (None, Some(pos)) => state.rooms.state_at_pos(room_id, pos)?,
        (None, None) => state.rooms.room_or_404(room_id)?.state,
    };
    let map = state.rooms.state(snapshot)?;
    let want = req.body.membership.as_ref().map(|m| m.to_string());
    let not = req.body.not_membership.as_ref().map(|m| m.to_string());
    let mut chunk = Vec::new();
    for ((kind, _), short) in map.iter() {
        if kind != "m.room.member" {
            continue;
        }
        if let Some((_, ev)) = state.rooms.client_event(*short, Some(r))? {
            let m = membership_of(&ev["content"]);
            let m = m.as_ref().map_or("", MembershipState::as_str);
            if want.as_ref().is_some_and(|w| *w != m) || not.as_ref().is_some_and(|n| *n == m) {
                continue;
            }
            chunk.push(raw(&ev));
        }
    }
    Ok(RumaResponse(get_member_events::v3::Response::new(chunk)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidjoined_members
pub(crate) async fn joined_members_route(
    State(state): State<AppState>,
    req: Ruma<joined_members::v3::Request>,
) -> ApiResult<Patched<joined_members::v3::Response>> {
    let id = req.user()?;
    let room_id = &req.body.room_id;
    if !state.rooms.is_joined(room_id, &id.user_id)? {
        state.rooms.room_or_404(room_id)?;
        return Err(Error::forbidden("you are not in this room").into());
    }
    let map = state.rooms.current_state(room_id)?;
    let mut joined = BTreeMap::new();
    for user in state.rooms.joined_members(room_id)? {
        let content = state
            .rooms
            .state_content(&map, "m.room.member", user.as_str())?
            .unwrap_or_default();
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = content
            .get("displayname")
            .and_then(Value::as_str)
            .map(str::to_owned);
        member.avatar_url = content
            .get("avatar_url")
            .and_then(Value::as_str)
            .map(Into::into);
        joined.insert(user, member);
    }
    Ok(Patched {
        response: joined_members::v3::Response::new(joined),
        patch: profile_keys,
    })
}

/// Every member has `display_name` and `avatar_url`, `null` when unset (ruma leaves them
/// out; Complement and Synapse's clients read them as present).
fn profile_keys(answer: &mut Value) {
    let Some(joined) = answer.get_mut("joined").and_then(Value::as_object_mut) else {
        return;
    };
    for member in joined.values_mut().filter_map(Value::as_object_mut) {
        for key in ["display_name", "avatar_url"] {
            member.entry(key).or_insert(Value::Null);
        }
    }
}
