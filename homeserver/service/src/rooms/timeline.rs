//! Reading a room's timeline: client events, visibility, pagination and context.

use std::collections::HashMap;

use ruma::{events::room::member::MembershipState, EventId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{key::decode_u64, Table};

use super::{
    keys::{RoomPosKey, RoomTsPosKey},
    membership::membership_of,
    pdu::client_event,
    EventMeta, Rooms, StateMap,
};

/// Which events a timeline read keeps (the parts of a RoomEventFilter the server applies).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub contains_url: Option<bool>,
    /// The reader's ignored users: their events are left out, their state events are not
    /// (spec: "Servers must still send state events sent by ignored users").
    pub ignored: Vec<String>,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    /// Whether the filter can leave state events out (the reader's ignored users cannot:
    /// their state events are still sent).
    pub fn may_drop_state(&self) -> bool {
        self.types.is_some()
            || !self.not_types.is_empty()
            || self.senders.is_some()
            || !self.not_senders.is_empty()
            || self.contains_url.is_some()
    }

    pub fn allows(&self, ev: &Value) -> bool {
        let kind = ev["type"].as_str().unwrap_or_default();
        let sender = ev["sender"].as_str().unwrap_or_default();
        if self.not_types.iter().any(|p| type_matches(p, kind)) {
            return false;
        }
        if let Some(types) = &self.types {
            if !types.iter().any(|p| type_matches(p, kind)) {
                return false;
            }
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if ev.get("state_key").is_none() && self.ignored.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders {
            if !senders.iter().any(|s| s == sender) {
                return false;
            }
        }
        if let Some(want) = self.contains_url {
            if ev["content"].get("url").is_some_and(|u| u.is_string()) != want {
                return false;
            }
        }
        true
    }
}

/// Who is reading: the event's `unsigned.transaction_id` goes only to the sending device.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub user: &'a UserId,
    pub device: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Backward,
    Forward,
}

/// Which part of a timeline to read: from `from` (exclusive forwards, inclusive backwards)
/// towards `to` (exclusive), at most `limit` events.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: u64,
    pub to: Option<u64>,
    pub dir: Dir,
    pub limit: usize,
}

/// A page of events with the tokens around it.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<(u64, Value)>,
    /// Token to continue from, if there may be more.
    pub next: Option<u64>,
}

impl Rooms {
    /// The client JSON of an event with its `unsigned` section and, for a reader, the bundled
    /// aggregations of its relations.
    pub fn client_event(
        &self,
        short: u64,
        reader: Option<Reader<'_>>,
    ) -> Result<Option<(EventMeta, Value)>> {
        let Some((meta, mut ev)) = self.client_event_plain(short, reader)? else {
            return Ok(None);
        };
        if let Some(r) = reader {
            let sender = ev["sender"].as_str().unwrap_or_default().to_owned();
            let kind = ev["type"].as_str().unwrap_or_default().to_owned();
            if let Some(agg) = self.aggregations(short, &sender, &kind, r)? {
                ev["unsigned"]["m.relations"] = agg;
            }
        }
        Ok(Some((meta, ev)))
    }

    /// The client JSON of an event with its `unsigned` section, without aggregations.
    pub fn client_event_plain(
        &self,
        short: u64,
        reader: Option<Reader<'_>>,
    ) -> Result<Option<(EventMeta, Value)>> {
        let (Some(raw), Some(meta)) = (self.raw_pdu(short)?, self.meta(short)?) else {
            return Ok(None);
        };
        if meta.rejected {
            return Ok(None);
        }
        let stored: Value = serde_json::from_slice(&raw)?;
        let mut unsigned = serde_json::Map::new();
        if let Some(ts) = stored["origin_server_ts"].as_u64() {
            unsigned.insert("age".into(), json!(now_ms().saturating_sub(ts)));
        }
        if let (Some(r), Some((dev, txn))) = (reader, &meta.txn) {
            if r.user.as_str() == stored["sender"].as_str().unwrap_or_default()
                && r.device == Some(dev.as_str())
            {
                unsigned.insert("transaction_id".into(), json!(txn));
            }
        }
        // MSC4140: the delayed event it was sent for, shown to its sender only (unstable name).
        if let (Some(r), Some(delay_id)) = (reader, &meta.delay_id) {
            if r.user.as_str() == stored["sender"].as_str().unwrap_or_default() {
                unsigned.insert("org.matrix.msc4140.delay_id".into(), json!(delay_id));
            }
        }
        if let Some(redaction) = &meta.redacted_by {
            if let Some(rs) = self.short_id(redaction)? {
                if let Some(raw) = self.raw_pdu(rs)? {
                    let because =
                        client_event(&raw, redaction.as_str(), meta.room_id.as_str(), None)?;
                    unsigned.insert("redacted_because".into(), because);
                }
            }
        }
        if let Some(r) = reader {
            if let Some(m) = self.membership_at(&meta, &stored, r.user)? {
                unsigned.insert("membership".into(), json!(m));
            }
        }
        if let (Some(kind), Some(key)) = (stored["type"].as_str(), stored["state_key"].as_str()) {
            let before = self.state(meta.state_before)?;
            if let Some(prev) = before.get(&(kind.to_owned(), key.to_owned())) {
                if let Some(prev_raw) = self.raw_pdu(*prev)? {
                    let pv: Value = serde_json::from_slice(&prev_raw)?;
                    unsigned.insert("prev_content".into(), pv["content"].clone());
                    if let Some(pm) = self.meta(*prev)? {
                        unsigned.insert("replaces_state".into(), json!(pm.event_id));
                    }
                    unsigned.insert("prev_sender".into(), pv["sender"].clone());
                }
            }
        }
        let ev = client_event(
            &raw,
            meta.event_id.as_str(),
            meta.room_id.as_str(),
            Some(Value::Object(unsigned)),
        )?;
        Ok(Some((meta, ev)))
    }

    /// The reader's membership at an event, with what the event itself changed
    /// (`unsigned.membership`, spec v1.11): `leave` when they had none. An outlier has no
    /// known state around it, so only its own membership events say anything.
    fn membership_at(
        &self,
        meta: &EventMeta,
        stored: &Value,
        user: &UserId,
    ) -> Result<Option<String>> {
        if meta.outlier {
            let own = stored["type"] == "m.room.member" && stored["state_key"] == user.as_str();
            return Ok(own
                .then(|| membership_of(&stored["content"]).map(|m| m.as_str().to_owned()))
                .flatten());
        }
        let state = self.state(meta.state_after)?;
        Ok(Some(
            self.membership_in(&state, user)?
                .unwrap_or(MembershipState::Leave)
                .as_str()
                .to_owned(),
        ))
    }

    /// Whether `user` may see an event, following `m.room.history_visibility`.
    pub fn can_see(&self, user: &UserId, meta: &EventMeta) -> Result<bool> {
        let state = self.state(meta.state_after)?;
        let hv = self
            .state_content(&state, "m.room.history_visibility", "")?
            .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if hv == "world_readable" {
            return Ok(true);
        }
        // The user's own membership events are theirs to see, whatever the history
        // visibility. The spec's rule (their membership before or after the event allows it)
        // covers joins and leaves after a join, not a leave after an invite or a knock; but a
        // rejected invite or rescinded knock must reach the user's sync, or the room would
        // never leave their invites or knocks.
        if meta.state_before != meta.state_after {
            if let Some(own) = state.get(&("m.room.member".to_owned(), user.to_string())) {
                if self.short_id(&meta.event_id)? == Some(*own) {
                    return Ok(true);
                }
            }
        }
        let at_event = self.membership_in(&state, user)?;
        // Whoever was joined just before an event sees it too: that covers their own leave.
        if meta.state_before != meta.state_after
            && self.membership_in(&*self.state(meta.state_before)?, user)?
                == Some(MembershipState::Join)
        {
            return Ok(true);
        }
        match at_event {
            Some(MembershipState::Join) => return Ok(true),
            Some(MembershipState::Invite) if hv == "invited" => return Ok(true),
            _ => {}
        }
        // History from before the user joined: `shared` lets members read it, unless a guild
        // channel denies them READ_MESSAGE_HISTORY.
        Ok(hv == "shared"
            && self.is_joined(&meta.room_id, user)?
            && self.policy.reads_history(self, &meta.room_id, user)?)
    }

    /// How far `user` reads a room: a user who is no longer joined (who left, was kicked or
    /// banned) reads up to the stream position of their leave, a member or a stranger has no
    /// ceiling (`None`).
    pub fn read_ceiling(&self, room_id: &RoomId, user: &UserId) -> Result<Option<u64>> {
        Ok(match self.user_room(user, room_id)? {
            Some(rec) if rec.membership != MembershipState::Join => Some(rec.pos),
            _ => None,
        })
    }

    /// Events of a room strictly after (`Forward`) or at-or-before (`Backward`) `from`, visible to
    /// the reader and passing the filter, at most `limit`, scanning at most a bounded window.
    pub fn paginate(
        &self,
        room_id: &RoomId,
        reader: Reader<'_>,
        window: Window,
        filter: &EventFilter,
    ) -> Result<Page> {
        let Window {
            from,
            to,
            dir,
            limit,
        } = window;
        let prefix = RoomPosKey::prefix(room_id.as_str());
        let mut page = Page::default();
        let mut cursor = from;
        const WINDOW: usize = 200;
        let mut scanned = 0usize;
        loop {
            let rows = match dir {
                Dir::Forward => {
                    let lower = RoomPosKey {
                        room_id: room_id.as_str(),
                        pos: cursor.saturating_add(1),
                    }
                    .encode();
                    let upper = to.map(|t| {
                        RoomPosKey {
                            room_id: room_id.as_str(),
                            pos: t.saturating_add(1),
                        }
                        .encode()
                    });
                    self.db.scan(
                        Table::RoompositionShorteventid,
                        &prefix,
                        &lower,
                        upper.as_deref(),
                        false,
                        WINDOW,
                    )?
                }
                Dir::Backward => {
                    let lower = match to {
                        Some(t) => RoomPosKey {
                            room_id: room_id.as_str(),
                            pos: t.saturating_add(1),
                        }
                        .encode(),
                        None => prefix.clone(),
                    };
                    let upper = RoomPosKey {
                        room_id: room_id.as_str(),
                        pos: cursor.saturating_add(1),
                    }
                    .encode();
                    self.db.scan(
                        Table::RoompositionShorteventid,
                        &prefix,
                        &lower,
                        Some(&upper),
                        true,
                        WINDOW,
                    )?
                }
            };
            let exhausted = rows.len() < WINDOW;
            for (k, v) in rows {
                let pos = RoomPosKey::decode(&k)?.pos;
                let short = decode_u64(&v)?;
                cursor = match dir {
                    Dir::Forward => pos,
                    Dir::Backward => pos.saturating_sub(1),
                };
                scanned += 1;
                let Some((meta, ev)) = self.client_event(short, Some(reader))? else {
                    continue;
                };
                if !filter.allows(&ev) || !self.can_see(reader.user, &meta)? {
                    continue;
                }
                page.events.push((pos, ev));
                if page.events.len() >= limit {
                    page.next = Some(cursor);
                    return Ok(page);
                }
            }
            if exhausted || scanned > 10_000 {
                if !exhausted {
                    page.next = Some(cursor);
                }
                return Ok(page);
            }
        }
    }

    /// Finds an event the reader may see: `(short id, meta, client json)`.
    pub fn visible_event(
        &self,
        reader: Reader<'_>,
        room_id: Option<&RoomId>,
        event_id: &EventId,
    ) -> Result<(u64, EventMeta, Value)> {
        let short = self
            .short_id(event_id)?
            .ok_or_else(|| Error::not_found("event not found"))?;
        let (meta, ev) = self
            .client_event(short, Some(reader))?
            .ok_or_else(|| Error::not_found("event not found"))?;
        if room_id.is_some_and(|r| r != meta.room_id) {
            return Err(Error::not_found("event not found"));
        }
        if !self.can_see(reader.user, &meta)? {
            return Err(Error::not_found("event not found or not visible to you"));
        }
        Ok((short, meta, ev))
    }

    /// Whether the room's timeline has an event before stream position `pos`.
    pub fn has_timeline_before(&self, room_id: &RoomId, pos: u64) -> Result<bool> {
        let prefix = RoomPosKey::prefix(room_id.as_str());
        let upper = RoomPosKey {
            room_id: room_id.as_str(),
            pos,
        }
        .encode();
        let rows = self.db.scan(
            Table::RoompositionShorteventid,
            &prefix,
            &prefix,
            Some(&upper),
            false,
            1,
        )?;
        Ok(!rows.is_empty())
    }

    /// The short ids of the room's newest `limit` timeline events, newest first (in stream
    /// order, which is arrival order).
    #[cfg(test)]
    pub(crate) fn newest_timeline_events(
        &self,
        room_id: &RoomId,
        limit: usize,
    ) -> Result<impl Iterator<Item = Result<u64>>> {
        let prefix = RoomPosKey::prefix(room_id.as_str());
        let rows = self.db.scan(
            Table::RoompositionShorteventid,
            &prefix,
            &prefix,
            None,
            true,
            limit,
        )?;
        Ok(rows.into_iter().map(|(_, v)| Ok(decode_u64(&v)?)))
    }

    /// The state of a room as it was at stream position `pos` (after all events up to it).
    pub fn state_at_pos(&self, room_id: &RoomId, pos: u64) -> Result<u64> {
        let prefix = RoomPosKey::prefix(room_id.as_str());
        let upper = RoomPosKey {
            room_id: room_id.as_str(),
            pos: pos.saturating_add(1),
        }
        .encode();
        let rows = self.db.scan(
            Table::RoompositionShorteventid,
            &prefix,
            &prefix,
            Some(&upper),
            true,
            1,
        )?;
        match rows.into_iter().next() {
            Some((_, v)) => {
                let short = decode_u64(&v)?;
                Ok(self.meta(short)?.map(|m| m.state_after).unwrap_or(0))
            }
            None => Ok(0),
        }
    }

    /// Client JSON for every event of a state map.
    pub fn state_events(&self, state: &StateMap, reader: Option<Reader<'_>>) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(state.len());
        for short in state.values() {
            if let Some((_, ev)) = self.client_event(*short, reader)? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// The reader must be, or have been, in the room to read it (and not have forgotten it).
    pub fn check_can_read(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        self.room_or_404(room_id)?;
        if self.user_room(user, room_id)?.is_some_and(|r| r.forgotten) {
            return Err(Error::forbidden("you have forgotten this room"));
        }
        match self.membership(room_id, user)? {
            Some(MembershipState::Join)
            | Some(MembershipState::Leave)
            | Some(MembershipState::Ban) => Ok(()),
            _ => {
                let state = self.current_state(room_id)?;
                let hv = self
                    .state_content(&state, "m.room.history_visibility", "")?
                    .and_then(|c| c["history_visibility"].as_str().map(str::to_owned));
                if hv.as_deref() == Some("world_readable") {
                    Ok(())
                } else {
                    Err(Error::forbidden("you are not a member of this room"))
                }
            }
        }
    }

    /// Members that sent the given events (for lazy-loading members).
    pub fn senders_of(events: &[(u64, Value)]) -> Vec<OwnedUserId> {
        let mut out: Vec<OwnedUserId> = events
            .iter()
            .filter_map(|(_, e)| {
                e["sender"]
                    .as_str()
                    .and_then(|s| OwnedUserId::try_from(s).ok())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// [`Rooms::can_see`] for many events of a room read by one user, such as the relations of an
/// event: an event that changes no state is judged by the state it was sent in alone, so a
/// long thread costs one judgement per state snapshot, not one per reply.
pub(crate) struct Sight<'a> {
    rooms: &'a Rooms,
    user: &'a UserId,
    by_state: HashMap<u64, bool>,
}

impl<'a> Sight<'a> {
    pub(crate) fn new(rooms: &'a Rooms, user: &'a UserId) -> Self {
        Self {
            rooms,
            user,
            by_state: HashMap::new(),
        }
    }

    /// Whether the user may see the event with this short id (an unknown or rejected event
    /// is not seen).
    pub(crate) fn sees(&mut self, short: u64) -> Result<bool> {
        let Some(meta) = self.rooms.meta(short)? else {
            return Ok(false);
        };
        if meta.rejected {
            return Ok(false);
        }
        if meta.state_before != meta.state_after || meta.outlier {
            return self.rooms.can_see(self.user, &meta);
        }
        if let Some(seen) = self.by_state.get(&meta.state_after) {
            return Ok(*seen);
        }
        let seen = self.rooms.can_see(self.user, &meta)?;
        self.by_state.insert(meta.state_after, seen);
        Ok(seen)
    }
}

impl Rooms {
    /// Fills the timeline's index by timestamp (`roomtspos_shorteventid`), once, for databases
    /// written before it existed. Returns how many events it indexed.
    pub fn migrate_timestamp_index(&self) -> Result<usize> {
        crate::migrations::once(&self.db, b"timestamp_index_v1", || {
            // In pages, each written before the next is read: a large database is not held in
            // memory. Rows that do not decode are left alone.
            let mut count = 0;
            let mut lower = Vec::new();
            loop {
                let rows = self.db.scan(
                    Table::RoompositionShorteventid,
                    b"",
                    &lower,
                    None,
                    false,
                    10_000,
                )?;
                let mut batch = paracord_storage::Batch::new();
                for (k, v) in &rows {
                    let (Ok(RoomPosKey { room_id, pos }), Ok(short)) =
                        (RoomPosKey::decode(k), decode_u64(v))
                    else {
                        continue;
                    };
                    let Some(p) = self.pdu_by_short(short)? else {
                        continue;
                    };
                    let ts = u64::from(p.origin_server_ts.get());
                    batch.put(
                        Table::RoomtsposShorteventid,
                        RoomTsPosKey { room_id, ts, pos }.encode(),
                        short.to_be_bytes().to_vec(),
                    );
                    count += 1;
                }
                self.db.write(batch)?;
                match rows.last() {
                    Some((last, _)) if rows.len() == 10_000 => {
                        lower = [last.as_ref(), &[0]].concat()
                    }
                    _ => break,
                }
            }
            Ok(count)
        })
    }
}

impl Rooms {
    /// The short ids of the room's timeline events whose `origin_server_ts` is `since` or
    /// later, oldest first (one scan of the timestamp index; for one-time fills).
    pub fn timeline_since(&self, room_id: &RoomId, since: u64) -> Result<Vec<u64>> {
        let prefix = RoomTsPosKey::prefix(room_id.as_str());
        let rows = self.db.scan(
            Table::RoomtsposShorteventid,
            &prefix,
            &RoomTsPosKey::at_ts(room_id.as_str(), since),
            None,
            false,
            usize::MAX,
        )?;
        rows.iter().map(|(_, v)| Ok(decode_u64(v)?)).collect()
    }
}

/// Events `/timestamp_to_event` skips (the reader may not see them) before answering "none".
const MAX_TIMESTAMP_CANDIDATES: usize = 1_000;
/// Rows of the timestamp index read at a time.
const TIMESTAMP_PAGE: usize = 50;

impl Rooms {
    /// The event closest to `ts` in direction `dir` (`Forward`: the first at or after `ts`;
    /// `Backward`: the last at or before it) that `reader` may see.
    ///
    /// Issue 15: read from the timeline's index by timestamp, so the work does not grow with
    /// the room's history; at most [`MAX_TIMESTAMP_CANDIDATES`] events the reader may not see
    /// are skipped before the answer is "none".
    pub fn event_by_timestamp(
        &self,
        room_id: &RoomId,
        reader: Reader<'_>,
        ts: u64,
        dir: Dir,
    ) -> Result<Option<(String, u64)>> {
        let prefix = RoomTsPosKey::prefix(room_id.as_str());
        let (lower, upper) = match dir {
            Dir::Forward => (RoomTsPosKey::at_ts(room_id.as_str(), ts), None),
            Dir::Backward => (
                prefix.clone(),
                ts.checked_add(1)
                    .map(|t| RoomTsPosKey::at_ts(room_id.as_str(), t)),
            ),
        };
        let (mut lower, mut upper) = (lower, upper);
        let mut skipped = 0;
        loop {
            let rows = self.db.scan(
                Table::RoomtsposShorteventid,
                &prefix,
                &lower,
                upper.as_deref(),
                dir == Dir::Backward,
                TIMESTAMP_PAGE,
            )?;
            for (k, v) in &rows {
                let ev_ts = RoomTsPosKey::decode(k)?.ts;
                let short = decode_u64(v)?;
                if let Some(meta) = self.meta(short)? {
                    if self.can_see(reader.user, &meta)? {
                        return Ok(Some((meta.event_id.to_string(), ev_ts)));
                    }
                }
                skipped += 1;
                if skipped >= MAX_TIMESTAMP_CANDIDATES {
                    return Ok(None);
                }
            }
            let Some((last, _)) = rows.last() else {
                return Ok(None);
            };
            if rows.len() < TIMESTAMP_PAGE {
                return Ok(None);
            }
            // The next page starts just past the last key seen.
            match dir {
                Dir::Forward => lower = [last.as_ref(), &[0]].concat(),
                Dir::Backward => upper = Some(last.to_vec()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use paracord_storage::{Batch, KeyBuf};
    use serde_json::json;

    use super::*;
    use crate::rooms::relations::tests::{private_room, send_message};

    // Issue 15 item 14: `/timestamp_to_event` reads the index by timestamp, not the timeline.
    // 100,000 timeline rows after the room's messages (which a backwards scan of the
    // timeline reads first, up to its cap, and gives up) are never touched; a database from
    // before the index gets it at start.
    #[tokio::test]
    async fn timestamp_lookups_use_the_index_not_the_timeline() {
        let (_dir, s, alice, room) = private_room().await;
        let mut sent = Vec::new();
        for n in 0..3 {
            // Each message at a millisecond of its own, after the room's creation.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            let content = json!({ "body": format!("m{n}"), "msgtype": "m.text" });
            let id = send_message(&s, &room, &alice, content).await;
            let ts = u64::from(
                s.rooms
                    .pdu_by_short(s.rooms.short_id(&id).unwrap().unwrap())
                    .unwrap()
                    .unwrap()
                    .origin_server_ts
                    .get(),
            );
            sent.push((id.to_string(), ts));
        }
        let mut batch = Batch::new();
        for pos in 1_000_000..1_100_000u64 {
            batch.put(
                Table::RoompositionShorteventid,
                KeyBuf::new().str(room.as_str()).u64(pos).into_vec(),
                b"not a short id".to_vec(),
            );
        }
        s.db.write(batch).unwrap();
        let reader = Reader {
            user: &alice,
            device: None,
        };
        let at = |ts, dir| s.rooms.event_by_timestamp(&room, reader, ts, dir).unwrap();
        let (first, last) = (&sent[0], &sent[2]);
        assert_eq!(at(first.1, Dir::Forward).as_ref(), Some(first));
        assert_eq!(at(first.1 + 1, Dir::Forward).as_ref(), Some(&sent[1]));
        assert_eq!(at(last.1, Dir::Backward).as_ref(), Some(last));
        assert_eq!(at(last.1 - 1, Dir::Backward).as_ref(), Some(&sent[1]));
        assert_eq!(at(u64::MAX, Dir::Backward).as_ref(), Some(last));
        assert_eq!(at(last.1 + 1, Dir::Forward), None);

        // Without the index (a database written before it), the start fills it again.
        let mut batch = Batch::new();
        for row in s.db.scan_prefix(Table::RoomtsposShorteventid, b"").unwrap() {
            batch.delete(Table::RoomtsposShorteventid, row.0.to_vec());
        }
        batch.delete(Table::GlobalValue, b"timestamp_index_v1".to_vec());
        s.db.write(batch).unwrap();
        assert_eq!(at(first.1, Dir::Forward), None);
        assert!(s.rooms.migrate_timestamp_index().unwrap() >= 3);
        assert_eq!(at(first.1, Dir::Forward).as_ref(), Some(first));
        assert_eq!(s.rooms.migrate_timestamp_index().unwrap(), 0, "only once");
    }
}
