//! Room creation, single events, context and aliases of a room.

use axum::extract::State;
use paracord_core::Error;
use paracord_service::rooms::{
    create::{CreateRoom, Preset},
    timeline::{Dir, Window},
};
use ruma::api::client::{
    context::get_context,
    room::{aliases, create_room, get_room_event},
};
use serde_json::json;

use super::{
    message::{json_of, raw},
    reader,
};
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};
use paracord_service::ratelimit::Limit;

/// `POST /_matrix/client/v3/createRoom` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3createroom
pub(crate) async fn create_room_route(
    State(state): State<AppState>,
    req: Ruma<create_room::v3::Request>,
) -> ApiResult<RumaResponse<create_room::v3::Response>> {
    let id = req.user()?;
    state
        .ratelimit
        .check(Limit::CreateRoom, id.user_id.as_str())?;
    let b = &req.body;
    let alias = match &b.room_alias_name {
        Some(local) => {
            let alias =
                ruma::OwnedRoomAliasId::try_from(format!("#{local}:{}", state.config.server_name))
                    .map_err(|_| Error::invalid_param("invalid room_alias_name"))?;
            Some(alias)
        }
        None => None,
    };
    let preset = b.preset.as_ref().map(|p| match p.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        other => Err(Error::invalid_param(format!("unknown preset {other}"))),
    });
    let preset = match preset {
        Some(p) => Some(p?),
        None => None,
    };
    let mut initial_state = Vec::new();
    for item in &b.initial_state {
        let item = json_of(item)?;
        let kind = item["type"]
            .as_str()
            .ok_or_else(|| Error::bad_json("initial_state entry without type"))?;
        let key = item.get("state_key").and_then(|k| k.as_str()).unwrap_or("");
        let content = item
            .get("content")
            .cloned()
            .filter(|c| c.is_object())
            .ok_or_else(|| Error::bad_json("initial_state content must be an object"))?;
        initial_state.push((kind.to_owned(), key.to_owned(), content));
    }
    let profile = state.accounts.profile(&id.user_id).unwrap_or((None, None));
    let create = CreateRoom {
        version: b.room_version.as_ref().map(|v| v.to_string()),
        preset,
        public: b.visibility == ruma::api::client::room::Visibility::Public,
        name: b.name.clone(),
        topic: b.topic.clone(),
        alias,
        invite: b.invite.clone(),
        is_direct: b.is_direct,
        initial_state,
        power_level_override: b
            .power_level_content_override
            .as_ref()
            .map(json_of)
            .transpose()?,
        creation_content: b.creation_content.as_ref().map(json_of).transpose()?,
        profile,
    };
    let room_id = state.rooms.create_room(&id.user_id, create).await?;
    // Users of other servers are invited over federation now that the room exists.
    for user in b.invite.iter().filter(|u| !state.accounts.is_local(u)) {
        let mut content = json!({ "membership": "invite" });
        if b.is_direct {
            content["is_direct"] = json!(true);
        }
        state
            .pdus
            .invite_remote(&room_id, &id.user_id, user, content)
            .await?;
    }
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomideventeventid
pub(crate) async fn get_room_event_route(
    State(state): State<AppState>,
    req: Ruma<get_room_event::v3::Request>,
) -> ApiResult<RumaResponse<get_room_event::v3::Response>> {
    let r = reader(&req)?;
    // An event the user may not see is, to them, an event that does not exist (404, as the
    // spec and other servers answer), not a room they are refused.
    if let Err(e) = state.rooms.check_can_read(&req.body.room_id, r.user) {
        return Err(match e {
            Error::Matrix { .. } => Error::not_found("event not found or not visible to you"),
            other => other,
        }
        .into());
    }
    let (_, _, ev) = state
        .rooms
        .visible_event(r, Some(&req.body.room_id), &req.body.event_id)?;
    Ok(RumaResponse(get_room_event::v3::Response::new(raw(&ev)?)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidcontexteventid
pub(crate) async fn get_context_route(
    State(state): State<AppState>,
    req: Ruma<get_context::v3::Request>,
) -> ApiResult<RumaResponse<get_context::v3::Response>> {
    let r = reader(&req)?;
    let room_id = &req.body.room_id;
    state.rooms.check_can_read(room_id, r.user)?;
    let (short, meta, ev) = state
        .rooms
        .visible_event(r, Some(room_id), &req.body.event_id)?;
    let _ = meta;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(10)
        .min(100);
    // A user who left reads no further than their leave (issue 15).
    let ceiling = state.rooms.read_ceiling(room_id, r.user)?;
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let mut filter = crate::client::message::filter_of(&req.body.filter);
    filter.ignored = state.account_data.ignored_users(r.user)?;
    // The event's stream position is its short id.
    let pos = short;
    let before = state.rooms.paginate(
        room_id,
        r,
        Window {
            from: pos.saturating_sub(1),
            to: None,
            dir: Dir::Backward,
            limit: before_n,
        },
        &filter,
    )?;
    let after = state.rooms.paginate(
        room_id,
        r,
        Window {
            from: pos,
            to: ceiling,
            dir: Dir::Forward,
            limit: after_n,
        },
        &filter,
    )?;
    let start = before
        .events
        .last()
        .map(|(p, _)| p.saturating_sub(1))
        .unwrap_or(pos.saturating_sub(1));
    let end = after.events.last().map(|(p, _)| *p).unwrap_or(pos);
    let state_map = state.rooms.state(state.rooms.state_at_pos(room_id, end)?)?;
    let mut state_events = state.rooms.state_events(&state_map, Some(r))?;
    // Lazy-loading members: only those of the senders of the events returned (and the
    // reader's own), as at `end`.
    if matches!(
        req.body.filter.lazy_load_options,
        ruma::api::client::filter::LazyLoadOptions::Enabled { .. }
    ) {
        let mut senders: Vec<&str> = before
            .events
            .iter()
            .chain(after.events.iter())
            .map(|(_, e)| e)
            .chain(std::iter::once(&ev))
            .filter_map(|e| e["sender"].as_str())
            .chain(std::iter::once(r.user.as_str()))
            .collect();
        senders.sort_unstable();
        senders.dedup();
        state_events.retain(|e| {
            e["type"] != "m.room.member"
                || e["state_key"]
                    .as_str()
                    .is_some_and(|k| senders.binary_search(&k).is_ok())
        });
    }
    let mut resp = get_context::v3::Response::new();
    resp.event = Some(raw(&ev)?);
    resp.events_before = before
        .events
        .iter()
        .map(|(_, e)| raw(e))
        .collect::<Result<_, _>>()?;
    resp.events_after = after
        .events
        .iter()
        .map(|(_, e)| raw(e))
        .collect::<Result<_, _>>()?;
    resp.start = Some(paracord_service::sync::make_token(start));
    resp.end = Some(paracord_service::sync::make_token(end));
    resp.state = state_events.iter().map(raw).collect::<Result<_, _>>()?;
    Ok(RumaResponse(resp))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3roomsroomidaliases
pub(crate) async fn aliases_route(
    State(state): State<AppState>,
    req: Ruma<aliases::v3::Request>,
) -> ApiResult<RumaResponse<aliases::v3::Response>> {
    let r = reader(&req)?;
    state.rooms.check_can_read(&req.body.room_id, r.user)?;
    // The aliases were checked when they were made.
    let aliases = state
        .rooms
        .local_aliases(&req.body.room_id)?
        .into_iter()
        .filter_map(|a| ruma::OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(RumaResponse(aliases::v3::Response::new(aliases)))
}
