//! `POST /search`.

use std::collections::BTreeMap;

use axum::{extract::State, Json};
use paracord_core::Error;
use paracord_service::{
    rooms::timeline::{Dir, EventFilter, Reader, Window},
    search::{Keys, SearchQuery},
    sync::make_token,
};
use ruma::api::client::search::search_events;
use serde_json::{json, Value};

use super::reader;
use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

const MAX_LIMIT: usize = 50;

/// `POST /_matrix/client/v3/search` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3search
pub(crate) async fn search_events_route(
    State(state): State<AppState>,
    req: Ruma<search_events::v3::Request>,
) -> ApiResult<Json<Value>> {
    let r = reader(&req)?;
    let body = req.json.clone().unwrap_or_default();
    let criteria = &body["search_categories"]["room_events"];
    if !criteria.is_object() {
        return Ok(Json(json!({ "search_categories": {} })));
    }
    let term = criteria["search_term"]
        .as_str()
        .ok_or_else(|| Error::bad_json("search_term is required"))?;
    let keys = match criteria["keys"].as_array() {
        Some(k) => Keys {
            body: k.iter().any(|x| x == "content.body"),
            name: k.iter().any(|x| x == "content.name"),
            topic: k.iter().any(|x| x == "content.topic"),
        },
        None => Keys {
            body: true,
            name: true,
            topic: true,
        },
    };
    let filter = &criteria["filter"];
    let limit = filter["limit"]
        .as_u64()
        .map(|l| usize::try_from(l).unwrap_or(MAX_LIMIT))
        .unwrap_or(10)
        .clamp(1, MAX_LIMIT);
    // Users only find what they may see: rooms they are or were in, in a room they left
    // nothing after their leave (issue 15), then per event.
    let mut rooms: Vec<(String, Option<u64>)> = state
        .rooms
        .user_rooms(r.user)?
        .into_iter()
        .filter_map(|(room, m)| match m.membership.as_str() {
            "join" => Some((room.to_string(), None)),
            "leave" | "ban" => Some((room.to_string(), Some(m.pos))),
            _ => None,
        })
        .collect();
    let strs = |v: &Value| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
    };
    if let Some(only) = strs(&filter["rooms"]) {
        rooms.retain(|(room, _)| only.contains(room));
    }
    if let Some(not) = strs(&filter["not_rooms"]) {
        rooms.retain(|(room, _)| !not.contains(room));
    }
    let senders = strs(&filter["senders"]);
    let recent = criteria["order_by"] == "recent";
    let offset = match &req.body.next_batch {
        Some(t) => paracord_service::tokens::parse_offset_token::<usize>('o', t)
            .ok_or_else(|| Error::invalid_param("invalid next_batch"))?,
        None => 0,
    };
    // Paracord extension (the spec's filter has no dates): origin_server_ts bounds in ms.
    let from_ts = filter["org.paracord.from_ts"].as_u64();
    let until_ts = filter["org.paracord.until_ts"].as_u64();
    let search = state.search.clone();
    let (term_owned, rooms_q, senders_q) = (term.to_owned(), rooms.clone(), senders.clone());
    let (hits, count) = tokio::task::spawn_blocking(move || {
        search.query(&SearchQuery {
            term: &term_owned,
            keys,
            rooms: &rooms_q,
            senders: senders_q.as_deref(),
            recent,
            offset,
            limit,
            from_ts,
            until_ts,
        })
    })
    .await
    .map_err(Error::internal)??;
    let post_filter = EventFilter {
        types: strs(&filter["types"]),
        not_types: strs(&filter["not_types"]).unwrap_or_default(),
        senders: None,
        not_senders: strs(&filter["not_senders"])
            .unwrap_or_default()
            .into_iter()
            .chain(state.account_data.ignored_users(r.user)?)
            .collect(),
        contains_url: filter["contains_url"].as_bool(),
        ignored: Vec::new(),
    };
    let ctx = &criteria["event_context"];
    let (before, after) = (
        ctx["before_limit"].as_u64().unwrap_or(0).min(20) as usize,
        ctx["after_limit"].as_u64().unwrap_or(0).min(20) as usize,
    );
    let with_context = ctx.is_object();
    let include_profile = ctx["include_profile"].as_bool().unwrap_or(false);
    let ceiling_of = |room_id: &ruma::RoomId| {
        rooms
            .iter()
            .find(|(room, _)| room == room_id.as_str())
            .and_then(|(_, until)| *until)
    };
    let mut results = Vec::new();
    let mut groups_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut groups_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (rank, pos) in &hits {
        let Some((meta, ev)) = state.rooms.client_event(*pos, Some(r))? else {
            continue;
        };
        if !post_filter.allows(&ev) || !state.rooms.can_see(r.user, &meta)? {
            continue;
        }
        let mut item = json!({ "rank": rank, "result": ev });
        if with_context {
            item["context"] = context(
                &state,
                r,
                &meta.room_id,
                ceiling_of(&meta.room_id),
                *pos,
                (before, after),
                include_profile.then(|| ev["sender"].as_str().unwrap_or_default()),
            )?;
        }
        let id = ev["event_id"].as_str().unwrap_or_default().to_owned();
        groups_room
            .entry(meta.room_id.to_string())
            .or_default()
            .push(id.clone());
        groups_sender
            .entry(ev["sender"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(id);
        results.push(item);
    }
    let highlights: Vec<String> = term
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut out = json!({ "count": count, "highlights": highlights, "results": results });
    // A full page has a next one, possibly empty (the end is a page without `next_batch`),
    // as other servers and clients expect.
    if !hits.is_empty() && hits.len() == limit {
        out["next_batch"] = json!(format!("o{}", offset + hits.len()));
    }
    let group_by: Vec<String> = criteria["groupings"]["group_by"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x["key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if !group_by.is_empty() {
        let mut groups = serde_json::Map::new();
        for key in group_by {
            let source = match key.as_str() {
                "room_id" => &groups_room,
                "sender" => &groups_sender,
                _ => {
                    return Err(
                        Error::invalid_param("group_by key must be room_id or sender").into(),
                    )
                }
            };
            let g: serde_json::Map<String, Value> = source
                .iter()
                .enumerate()
                .map(|(i, (k, ids))| (k.clone(), json!({ "results": ids, "order": i + 1 })))
                .collect();
            groups.insert(key, Value::Object(g));
        }
        out["groups"] = Value::Object(groups);
    }
    if criteria["include_state"].as_bool().unwrap_or(false) {
        let mut st = serde_json::Map::new();
        for room in groups_room.keys() {
            if let Ok(room_id) = ruma::OwnedRoomId::try_from(room.as_str()) {
                // The state a user who left saw last: at their leave (issue 15).
                let map = state_for(&state, &room_id, ceiling_of(&room_id))?;
                st.insert(
                    room.clone(),
                    Value::Array(state.rooms.state_events(&map, Some(r))?),
                );
            }
        }
        out["state"] = Value::Object(st);
    }
    Ok(Json(json!({ "search_categories": { "room_events": out } })))
}

/// The state of a room for a searcher: the current state, or at `ceiling` for a user who
/// left.
fn state_for(
    state: &AppState,
    room_id: &ruma::RoomId,
    ceiling: Option<u64>,
) -> Result<std::sync::Arc<paracord_service::rooms::StateMap>, Error> {
    match ceiling {
        Some(pos) => state.rooms.state(state.rooms.state_at_pos(room_id, pos)?),
        None => state.rooms.current_state(room_id),
    }
}

/// The events around a result; `ceiling` is where a user who left stops reading; with
/// `profiles_for` (the result's sender), the profiles of the senders.
fn context(
    state: &AppState,
    r: Reader<'_>,
    room_id: &ruma::RoomId,
    ceiling: Option<u64>,
    pos: u64,
    (before, after): (usize, usize),
    profiles_for: Option<&str>,
) -> Result<Value, Error> {
    let none = EventFilter::default();
    let b = if before > 0 {
        state
            .rooms
            .paginate(
                room_id,
                r,
                Window {
                    from: pos.saturating_sub(1),
                    to: None,
                    dir: Dir::Backward,
                    limit: before,
                },
                &none,
            )?
            .events
    } else {
        vec![]
    };
    let a = if after > 0 {
        state
            .rooms
            .paginate(
                room_id,
                r,
                Window {
                    from: pos,
                    to: ceiling,
                    dir: Dir::Forward,
                    limit: after,
                },
                &none,
            )?
            .events
    } else {
        vec![]
    };
    let start = b
        .last()
        .map(|(p, _)| p.saturating_sub(1))
        .unwrap_or(pos.saturating_sub(1));
    let end = a.last().map(|(p, _)| *p).unwrap_or(pos);
    let mut out = json!({
        "events_before": b.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        "events_after": a.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        "start": make_token(start),
        "end": make_token(end),
    });
    if let Some(result_sender) = profiles_for {
        // Historic profiles: as at the result, which the reader may see (issue 15: not the
        // current ones, which a user who left may not), for its sender and the events around.
        let map = state.rooms.state(state.rooms.state_at_pos(room_id, pos)?)?;
        let mut profiles = serde_json::Map::new();
        let senders = b
            .iter()
            .chain(a.iter())
            .filter_map(|(_, e)| e["sender"].as_str())
            .chain(std::iter::once(result_sender));
        for sender in senders {
            let member = state
                .rooms
                .state_content(&map, "m.room.member", sender)?
                .unwrap_or_default();
            profiles.insert(
                sender.to_owned(),
                json!({ "displayname": member["displayname"], "avatar_url": member["avatar_url"] }),
            );
        }
        out["profile_info"] = Value::Object(profiles);
    }
    Ok(out)
}

/// `POST /_paracord/v1/admin/search/rebuild`: rebuilds the full-text index (server admins).
pub(crate) async fn rebuild_route(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    let token = crate::ruma_wrapper::access_token(&parts).ok_or_else(Error::missing_token)?;
    let id = state.accounts.authenticate(&token)?;
    if !id.admin {
        return Err(Error::forbidden("only server admins may rebuild the search index").into());
    }
    let (rooms, search) = (state.rooms.clone(), state.search.clone());
    let n = tokio::task::spawn_blocking(move || rooms.reindex(&search))
        .await
        .map_err(Error::internal)??;
    Ok(Json(json!({ "indexed_events": n })))
}
