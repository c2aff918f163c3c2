//! `POST /search`.

use std::collections::BTreeMap;

use axum::{extract::State, Json};
use paracord_core::Error;
use paracord_service::{
    rooms::timeline::{Dir, EventFilter, Reader, Window},
    search::{Keys, SearchQuery},
    sync::make_token,
};
use ruma::{
    api::client::{
        filter::UrlFilter,
        search::search_events::v3::{
            self as search_events, EventContextResult, GroupingKey, OrderBy, ResultCategories,
            ResultGroup, ResultGroupMap, ResultGroupMapsByGroupingKey, ResultRoomEvents,
            SearchKeys, SearchResult, UserProfile,
        },
    },
    OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, UInt,
};
use serde::Serialize;
use serde_json::Value;

use super::{message::raw, reader};
use crate::{ruma_wrapper::Ruma, ApiResult, AppState, Patched};

const MAX_LIMIT: usize = 50;

fn uint(n: usize) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

/// `POST /_matrix/client/v3/search` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3search
pub(crate) async fn search_events_route(
    State(state): State<AppState>,
    req: Ruma<search_events::Request>,
) -> ApiResult<Patched<search_events::Response>> {
    let r = reader(&req)?;
    let Some(criteria) = &req.body.search_categories.room_events else {
        return Ok(search_answer(search_events::Response::new(
            ResultCategories::new(),
        )));
    };
    // Two things ruma's criteria do not carry: whether `event_context` was sent at all (ruma
    // fills in its defaults; without one no context is returned) and Paracord's date bounds
    // in the filter.
    let raw_body = req
        .raw_field("search_categories")
        .map(|c| c["room_events"].clone());
    let raw_criteria = raw_body.as_ref();
    let term = criteria.search_term.as_str();
    let keys = match &criteria.keys {
        Some(k) => Keys {
            body: k.contains(&SearchKeys::ContentBody),
            name: k.contains(&SearchKeys::ContentName),
            topic: k.contains(&SearchKeys::ContentTopic),
        },
        None => Keys {
            body: true,
            name: true,
            topic: true,
        },
    };
    let filter = &criteria.filter;
    let limit = filter
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
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
    if let Some(only) = &filter.rooms {
        rooms.retain(|(room, _)| only.iter().any(|o| o.as_str() == room));
    }
    rooms.retain(|(room, _)| !filter.not_rooms.iter().any(|n| n.as_str() == room));
    let senders: Option<Vec<String>> = filter
        .senders
        .as_ref()
        .map(|s| s.iter().map(|u| u.to_string()).collect());
    let recent = matches!(criteria.order_by, Some(OrderBy::Recent));
    let offset = match &req.body.next_batch {
        Some(t) => paracord_service::tokens::parse_offset_token::<usize>('o', t)
            .ok_or_else(|| Error::invalid_param("invalid next_batch"))?,
        None => 0,
    };
    // Paracord extension (the spec's filter has no dates): origin_server_ts bounds in ms.
    let raw_filter = raw_criteria.map(|c| &c["filter"]);
    let from_ts = raw_filter.and_then(|f| f["org.paracord.from_ts"].as_u64());
    let until_ts = raw_filter.and_then(|f| f["org.paracord.until_ts"].as_u64());
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
        types: filter.types.clone(),
        not_types: filter.not_types.clone(),
        senders: None,
        not_senders: filter
            .not_senders
            .iter()
            .map(|u| u.to_string())
            .chain(state.account_data.ignored_users(r.user)?)
            .collect(),
        contains_url: filter.url_filter.as_ref().map(|u| match u {
            UrlFilter::EventsWithUrl => true,
            UrlFilter::EventsWithoutUrl => false,
        }),
        ignored: Vec::new(),
    };
    let ctx = raw_criteria.map_or(&Value::Null, |c| &c["event_context"]);
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
    let mut groups_room: BTreeMap<OwnedRoomId, Vec<OwnedEventId>> = BTreeMap::new();
    let mut groups_sender: BTreeMap<OwnedUserId, Vec<OwnedEventId>> = BTreeMap::new();
    for (rank, pos) in &hits {
        let Some((meta, ev)) = state.rooms.client_event(*pos, Some(r))? else {
            continue;
        };
        if !post_filter.allows(&ev) || !state.rooms.can_see(r.user, &meta)? {
            continue;
        }
        let mut item = SearchResult::new();
        item.rank = Some(f64::from(*rank));
        item.result = Some(raw(&ev)?);
        if with_context {
            item.context = context(
                &state,
                r,
                &meta.room_id,
                ceiling_of(&meta.room_id),
                *pos,
                (before, after),
                include_profile.then(|| ev["sender"].as_str().unwrap_or_default()),
            )?;
        }
        let id = ev["event_id"]
            .as_str()
            .and_then(|e| OwnedEventId::try_from(e).ok());
        let sender = ev["sender"]
            .as_str()
            .and_then(|s| OwnedUserId::try_from(s).ok());
        if let Some(id) = id {
            groups_room
                .entry(meta.room_id.clone())
                .or_default()
                .push(id.clone());
            if let Some(sender) = sender {
                groups_sender.entry(sender).or_default().push(id);
            }
        }
        results.push(item);
    }
    let mut out = ResultRoomEvents::new();
    out.count = Some(uint(count));
    out.highlights = term
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    out.results = results;
    // A full page has a next one, possibly empty (the end is a page without `next_batch`),
    // as other servers and clients expect.
    if !hits.is_empty() && hits.len() == limit {
        out.next_batch = Some(format!("o{}", offset + hits.len()));
    }
    fn grouped<K: Ord + Clone>(
        source: &BTreeMap<K, Vec<OwnedEventId>>,
    ) -> BTreeMap<K, ResultGroup> {
        source
            .iter()
            .enumerate()
            .map(|(i, (k, ids))| {
                let mut g = ResultGroup::new();
                g.results = ids.clone();
                g.order = Some(uint(i + 1));
                (k.clone(), g)
            })
            .collect()
    }
    let mut groups = ResultGroupMapsByGroupingKey::new();
    for grouping in &criteria.groupings.group_by {
        match &grouping.key {
            None => {}
            Some(GroupingKey::RoomId) => {
                groups.insert(ResultGroupMap::RoomId(grouped(&groups_room)));
            }
            Some(GroupingKey::Sender) => {
                groups.insert(ResultGroupMap::Sender(grouped(&groups_sender)));
            }
            Some(_) => {
                return Err(Error::invalid_param("group_by key must be room_id or sender").into())
            }
        }
    }
    out.groups = groups;
    if criteria.include_state.unwrap_or(false) {
        for room_id in groups_room.keys() {
            // The state a user who left saw last: at their leave (issue 15).
            let map = state_for(&state, room_id, ceiling_of(room_id))?;
            let events = state
                .rooms
                .state_events(&map, Some(r))?
                .iter()
                .map(raw)
                .collect::<Result<_, _>>()?;
            out.state.insert(room_id.clone(), events);
        }
    }
    let mut categories = ResultCategories::new();
    categories.room_events = out;
    Ok(search_answer(search_events::Response::new(categories)))
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
) -> Result<EventContextResult, Error> {
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
    let mut out = EventContextResult::new();
    out.events_before = b.iter().map(|(_, e)| raw(e)).collect::<Result<_, _>>()?;
    out.events_after = a.iter().map(|(_, e)| raw(e)).collect::<Result<_, _>>()?;
    out.start = Some(make_token(start));
    out.end = Some(make_token(end));
    if let Some(result_sender) = profiles_for {
        // Historic profiles: as at the result, which the reader may see (issue 15: not the
        // current ones, which a user who left may not), for its sender and the events around.
        let map = state.rooms.state(state.rooms.state_at_pos(room_id, pos)?)?;
        let senders = b
            .iter()
            .chain(a.iter())
            .filter_map(|(_, e)| e["sender"].as_str())
            .chain(std::iter::once(result_sender));
        for sender in senders {
            let Ok(user_id) = OwnedUserId::try_from(sender) else {
                continue;
            };
            let member = state
                .rooms
                .state_content(&map, "m.room.member", sender)?
                .unwrap_or_default();
            let mut profile = UserProfile::new();
            profile.displayname = member["displayname"].as_str().map(str::to_owned);
            profile.avatar_url = member["avatar_url"].as_str().map(OwnedMxcUri::from);
            out.profile_info.insert(user_id, profile);
        }
    }
    Ok(out)
}

/// The answer of `POST /_paracord/v1/admin/search/rebuild`.
#[derive(Serialize)]
pub(crate) struct RebuildResponse {
    /// How many events the rebuilt index holds.
    indexed_events: u64,
}

/// `POST /_paracord/v1/admin/search/rebuild`: rebuilds the full-text index (server admins).
pub(crate) async fn rebuild_route(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Json<RebuildResponse>> {
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
    Ok(Json(RebuildResponse { indexed_events: n }))
}

/// A page of room events always has `results`, empty on the page after the last (ruma
/// leaves an empty list out; Complement reads the key).
fn search_answer(response: search_events::Response) -> Patched<search_events::Response> {
    Patched {
        response,
        patch: |answer| {
            if let Some(room_events) = answer
                .pointer_mut("/search_categories/room_events")
                .and_then(Value::as_object_mut)
            {
                room_events
                    .entry("results")
                    .or_insert_with(|| Value::Array(Vec::new()));
            }
        },
    }
}
