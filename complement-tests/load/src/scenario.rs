//! The scenarios, one module each, and the setup steps they share.

pub(crate) mod appservice;
pub(crate) mod fanout;
pub(crate) mod growth;
pub(crate) mod initial_sync;
pub(crate) mod media;
pub(crate) mod paginate;
pub(crate) mod register;
pub(crate) mod remote_join;
pub(crate) mod rooms;
pub(crate) mod rtc_token;
pub(crate) mod search;
pub(crate) mod send;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    client::{Deadline, Target, User},
    error::LoadError,
    stats::{Errors, Latencies},
};

/// A sync filter that leaves out presence, account data and ephemeral
/// events, for long-polls that wait for timeline events only.
pub(crate) const TIMELINE_ONLY_FILTER: &str = r#"{"presence":{"types":[]},"account_data":{"types":[]},"room":{"timeline":{"limit":20},"ephemeral":{"types":[]},"account_data":{"types":[]}}}"#;

/// Checks `lo <= value <= hi`.
pub(crate) fn bound(name: &str, value: usize, lo: usize, hi: usize) -> Result<(), LoadError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(LoadError::Params(format!(
            "{name} = {value} is outside {lo}..={hi}"
        )))
    }
}

/// `user` creates `n` public rooms (setup), one after another: two
/// createRoom calls by one user in the same millisecond can produce the same
/// `m.room.create` event and so, from room version 12 on, the same room id,
/// which a server may get wrong (the `rooms` scenario measures concurrent
/// creation on its own and checks for it).
pub(crate) async fn create_rooms(
    target: &Target,
    user: &User,
    n: usize,
    deadline: &Deadline,
) -> Result<Vec<String>, LoadError> {
    let mut rooms = Vec::with_capacity(n);
    for i in 0..n {
        deadline.check("creating rooms")?;
        rooms.push(
            target
                .create_room(user, &format!("load {} room {i}", target.run_id()))
                .await?,
        );
    }
    Ok(rooms)
}

/// Every one of `users` joins every one of `rooms` (setup).
pub(crate) async fn join_all(
    target: &Target,
    users: &[User],
    rooms: &[String],
    deadline: &Deadline,
) -> Result<(), LoadError> {
    let pairs: Vec<(&User, &String)> = rooms
        .iter()
        .flat_map(|r| users.iter().map(move |u| (u, r)))
        .collect();
    let results = target
        .limited(pairs, |(user, room)| async move {
            deadline.check("joining rooms")?;
            target.join(user, room).await
        })
        .await;
    results.into_iter().collect()
}

/// `user` sends `per_room` messages (`<marker><n>`) into each of `rooms`
/// (setup).
pub(crate) async fn fill_history(
    target: &Target,
    user: &User,
    rooms: &[String],
    per_room: usize,
    marker: &str,
    deadline: &Deadline,
) -> Result<(), LoadError> {
    let items: Vec<(usize, &String)> = rooms
        .iter()
        .flat_map(|r| (0..per_room).map(move |i| (i, r)))
        .collect();
    let results = target
        .limited(items, |(i, room)| async move {
            deadline.check("filling history")?;
            let txn = format!("hist-{}-{i}", short_hash(room));
            target
                .send_text(user, room, &txn, &format!("{marker}{i}"))
                .await
                .map(drop)
        })
        .await;
    results.into_iter().collect()
}

/// A stable short tag of a room id, to keep transaction ids distinct per room.
fn short_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The outcome of paging backwards through a room.
#[derive(Debug, Default)]
pub(crate) struct Pagination {
    pub(crate) pages: usize,
    pub(crate) events: usize,
    /// Events whose body starts with the marker.
    pub(crate) messages: usize,
    pub(crate) wall: Duration,
    pub(crate) latencies: Latencies,
    pub(crate) errors: Errors,
    pub(crate) timed_out: bool,
}

/// Pages backwards from the end of `room` with `/messages?dir=b` in pages of
/// `page` until the server says there is no more, at most `max_pages`.
pub(crate) async fn paginate_room(
    target: &Target,
    user: &User,
    room: &str,
    page: usize,
    max_pages: usize,
    marker: &str,
    deadline: &Deadline,
) -> Pagination {
    let mut out = Pagination::default();
    let mut from: Option<String> = None;
    let start = Instant::now();
    while out.pages < max_pages {
        if deadline.expired() {
            out.timed_out = true;
            break;
        }
        let t = Instant::now();
        let reply = match target
            .messages_backwards(user, room, from.as_deref(), page)
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                out.errors.record(&e);
                break;
            }
        };
        out.latencies.push(t.elapsed());
        out.pages += 1;
        let chunk = reply.body["chunk"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        out.events += chunk.len();
        out.messages += chunk
            .iter()
            .filter(|e| body_of(e).starts_with(marker))
            .count();
        match reply.body["end"].as_str() {
            Some(end) if !chunk.is_empty() && from.as_deref() != Some(end) => {
                from = Some(end.to_owned());
            }
            _ => break,
        }
    }
    out.wall = start.elapsed();
    out
}

/// `content.body` of an event, or "".
pub(crate) fn body_of(event: &Value) -> &str {
    event["content"]["body"].as_str().unwrap_or_default()
}

/// The timeline events of `room` in a sync response.
pub(crate) fn timeline<'a>(sync: &'a Value, room: &str) -> &'a [Value] {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
}

/// How many of `rooms` a sync response lists as joined.
pub(crate) fn joined_count(sync: &Value, rooms: &[String]) -> usize {
    rooms
        .iter()
        .filter(|r| sync["rooms"]["join"].get(r.as_str()).is_some())
        .count()
}

/// True when the sync response's timeline of `room` holds `event_id`.
pub(crate) fn timeline_has(sync: &Value, room: &str, event_id: &str) -> bool {
    timeline(sync, room)
        .iter()
        .any(|e| e["event_id"].as_str() == Some(event_id))
}

/// The `next_batch` of a sync response (checked present by `Target::sync`).
pub(crate) fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap_or_default().to_owned()
}
