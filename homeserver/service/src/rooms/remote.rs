//! Events from other servers, once their format, hashes and signatures are checked (in
//! `federation::events`): kept as outliers when their state is unknown, rejected when they fail
//! their auth checks, and otherwise placed in the room's DAG — the state before them resolved
//! from their `prev_events`, auth checked against it, soft-failed when the room's current state
//! no longer allows them.
//!
//! Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu

use std::collections::{BTreeSet, HashMap, HashSet};

use paracord_core::{Error, Result};
use paracord_storage::{key::decode_u64, Batch, Table};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res::{
        self, check_state_dependent_auth_rules, check_state_independent_auth_rules,
        utils::event_id_set::EventIdSet,
    },
    EventId, OwnedEventId, OwnedUserId, RoomId, UserId,
};
use tracing::{debug, info};

use super::{
    commit::{Accepted, Before, Pending, RESOLVED_BEFORE},
    hooks,
    keys::{invite_key, RoomPosKey},
    put_timeline_row, rules_for, write_event_rows, write_full_snapshot, write_membership,
    EventMeta, Pdu, RoomRecord, Rooms, StateMap,
};

/// Timeline positions kept free before a join over federation for the history before it.
const BACKFILL_SLOTS: u64 = 100_000;

/// A remote event whose format, hashes and signatures passed (redacted if its content hash
/// did not match).
#[derive(Debug, Clone)]
pub struct Checked {
    pub event_id: OwnedEventId,
    pub pdu: Pdu,
    /// Canonical JSON as it will be stored.
    pub bytes: Vec<u8>,
}

/// What happened to a remote event offered to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// In the timeline at this stream position.
    Accepted(u64),
    /// Stored, but current state no longer allows it: not in the timeline, not an extremity.
    SoftFailed,
    /// Failed its auth checks; kept only as rejected.
    Rejected(String),
    /// Already stored (or rejected before).
    Known,
    /// The state after these `prev_events` is not known here yet.
    MissingState(Vec<OwnedEventId>),
}

/// Auth checks of an event against its own auth events, found through `lookup`: the rules
/// that do not depend on the room's state, then the rest with the auth events as the state.
pub fn check_auth_with(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    lookup: impl Fn(&EventId) -> Option<Pdu>,
) -> std::result::Result<(), String> {
    check_state_independent_auth_rules(&rules.authorization, pdu, &lookup)
        .map_err(|e| format!("fails the auth rules: {e}"))?;
    let mut by_key: HashMap<(String, String), Pdu> = HashMap::new();
    // Since v12 the create event is not listed: the room id names it.
    if rules.authorization.room_create_event_id_as_room_id {
        if let Some(room_id) = &pdu.room_id {
            let create = EventId::parse(format!("${}", &room_id.as_str()[1..]))
                .map_err(|e| format!("bad room id {room_id}: {e}"))?;
            if let Some(c) = lookup(&create) {
                by_key.insert(("m.room.create".to_owned(), String::new()), c);
            }
        }
    }
    for id in &pdu.auth_events {
        let auth =
            lookup(id).ok_or_else(|| format!("auth event {id} is missing or was rejected"))?;
        if let Some(k) = &auth.state_key {
            by_key.insert((auth.kind.to_string(), k.clone()), auth);
        }
    }
    check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k| {
        by_key.get(&(t.to_string(), k.to_owned())).cloned()
    })
    .map_err(|e| format!("not allowed by its auth events: {e}"))
}

impl Rooms {
    /// Whether an event was rejected, and why.
    pub fn rejection(&self, event_id: &EventId) -> Result<Option<String>> {
        Ok(self
            .db
            .get(Table::EventidRejected, event_id.as_bytes())?
            .map(|r| String::from_utf8_lossy(&r).into_owned()))
    }

    /// A pending invite of `user` from another server: `{event, room_version,
    /// invite_room_state}`.
    pub fn remote_invite(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<serde_json::Value>> {
        match self
            .db
            .get(Table::UserroomRemoteinvite, &invite_key(user, room_id))?
        {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    /// Who invited `user` to a room from another server, if an invite is pending.
    pub fn remote_invite_sender(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<OwnedUserId>> {
        Ok(self.remote_invite(user, room_id)?.and_then(|v| {
            v["event"]["sender"]
                .as_str()
                .and_then(|s| OwnedUserId::try_from(s).ok())
        }))
    }

    /// Keeps an invite of a local user to a room on another server (or the user's knock on
    /// one: `membership` says which), and shows it in sync.
    pub fn store_remote_invite(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        record: &serde_json::Value,
        membership: &str,
    ) -> Result<()> {
        self.stream.commit(|pos, batch| {
            batch.put(
                Table::UserroomRemoteinvite,
                invite_key(user, room_id),
                serde_json::to_vec(record)?,
            );
            write_membership(batch, room_id, user, membership, pos, event_id)
        })?;
        self.members_changed(room_id);
        self.stream.notifier().wake([user]);
        Ok(())
    }

    /// Ends a pending remote invite or knock (rejected, rescinded, refused): the user's
    /// membership becomes `membership` (`leave` or `ban`), set by `event_id`. The event that
    /// ended it, when there is one, is kept as an outlier in the same batch: the room has no
    /// timeline here, and sync shows the user that event in the room's `leave` section.
    pub fn end_remote_invite(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        membership: &str,
        ending: Option<&Checked>,
    ) -> Result<()> {
        let stored = self.short_id(event_id)?.is_some();
        self.stream.commit(|pos, batch| {
            batch.delete(Table::UserroomRemoteinvite, invite_key(user, room_id));
            if let Some(e) = ending.filter(|_| !stored) {
                let meta = EventMeta {
                    event_id: e.event_id.clone(),
                    room_id: room_id.to_owned(),
                    state_before: 0,
                    state_after: 0,
                    redacted_by: None,
                    txn: None,
                    delay_id: None,
                    outlier: true,
                    hidden: false,
                    rejected: false,
                };
                write_event_rows(batch, pos, &e.event_id, &e.bytes, &meta)?;
            }
            write_membership(batch, room_id, user, membership, pos, event_id)
        })?;
        self.members_changed(room_id);
        self.stream.notifier().wake([user]);
        Ok(())
    }

    /// Whether the event is stored or was rejected.
    pub fn knows_event(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.short_id(event_id)?.is_some() || self.rejection(event_id)?.is_some())
    }

    /// Whether the event is in a room's DAG with its state (in the timeline, soft-failed, or
    /// placed on another server's state) or was rejected. An outlier is not: when it arrives
    /// as a room event (an auth event fetched earlier, part of the state sent at a join), it
    /// still has to be placed.
    pub fn is_placed(&self, event_id: &EventId) -> Result<bool> {
        if self.rejection(event_id)?.is_some() {
            return Ok(true);
        }
        let Some(short) = self.short_id(event_id)? else {
            return Ok(false);
        };
        Ok(self.meta(short)?.is_some_and(|m| !m.outlier))
    }

    /// The depth of the oldest event of this server's timeline of a room (its join, for a
    /// room joined over federation): older events are history from before this server was
    /// in the room, not gaps to fill.
    pub fn first_timeline_depth(&self, room_id: &RoomId) -> Result<Option<u64>> {
        let prefix = RoomPosKey::prefix(room_id.as_str());
        let first = self.db.scan(
            Table::RoompositionShorteventid,
            &prefix,
            &prefix,
            None,
            false,
            1,
        )?;
        let Some((_, value)) = first.into_iter().next() else {
            return Ok(None);
        };
        let short = <[u8; 8]>::try_from(value.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| Error::internal("bad timeline entry"))?;
        Ok(self.pdu_by_short(short)?.map(|p| u64::from(p.depth)))
    }

    /// The room's first timeline event at or after position `from`: `(position, short id)`.
    fn timeline_event_from(&self, room_id: &RoomId, from: u64) -> Result<Option<(u64, u64)>> {
        let prefix = RoomPosKey::prefix(room_id.as_str());
        let lower = RoomPosKey {
            room_id: room_id.as_str(),
            pos: from,
        }
        .encode();
        let first = self.db.scan(
            Table::RoompositionShorteventid,
            &prefix,
            &lower,
            None,
            false,
            1,
        )?;
        let Some((key, value)) = first.into_iter().next() else {
            return Ok(None);
        };
        let pos = RoomPosKey::decode(&key)?.pos;
        Ok(Some((pos, decode_u64(&value)?)))
    }

    /// The positions still free for history in a room (`backfill_floor..backfill_next`).
    pub fn backfill_room(&self, room_id: &RoomId) -> Result<Option<std::ops::Range<u64>>> {
        let room = self.room_or_404(room_id)?;
        Ok((room.backfill_next > room.backfill_floor)
            .then_some(room.backfill_floor..room.backfill_next))
    }

    /// Where history before the free positions of a room would be fetched from
    /// (`/backfill`'s `v`): the `prev_events` of the event just above them that are not in
    /// the timeline. Empty when there is nothing to fetch or no room for it.
    pub fn backfill_from(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let Some(free) = self.backfill_room(room_id)? else {
            return Ok(Vec::new());
        };
        let Some((_, short)) = self.timeline_event_from(room_id, free.end)? else {
            return Ok(Vec::new());
        };
        let Some(above) = self.pdu_by_short(short)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for prev in &above.prev_events {
            if !self.is_placed(prev)? {
                out.push(prev.clone());
            }
        }
        Ok(out)
    }

    /// Stores history fetched with `/backfill` in the room's free positions, newest at the
    /// top, each checked against its auth events (which must be stored). The state before the
    /// event just above them is the best known state for them (it decides who may see them).
    /// Returns how many were stored.
    pub async fn store_backfilled(&self, room_id: &RoomId, events: Vec<Checked>) -> Result<usize> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let mut room = self.room_or_404(room_id)?;
        let rules = rules_for(&room.version)?;
        let Some((_, above)) = self.timeline_event_from(room_id, room.backfill_next)? else {
            return Ok(0);
        };
        let Some(before) = self.meta(above)?.map(|m| m.state_before) else {
            return Ok(0);
        };
        let mut events = events;
        events.sort_by_key(|e| std::cmp::Reverse(u64::from(e.pdu.depth)));
        let mut seen = HashSet::new();
        events.retain(|e| seen.insert(e.event_id.clone()));
        let mut batch = Batch::new();
        let mut stored = 0;
        for e in &events {
            if room.backfill_next <= room.backfill_floor {
                break;
            }
            if e.pdu.room_id.as_deref() != Some(room_id) || self.is_placed(&e.event_id)? {
                continue;
            }
            if let Err(err) = self.check_against_auth_events(&rules, &e.pdu) {
                info!(event_id = %e.event_id, "a backfilled event was dropped: {err}");
                continue;
            }
            let pos = room.backfill_next - 1;
            room.backfill_next = pos;
            // A stored outlier keeps its short id (state maps may name it).
            let short = self.short_id(&e.event_id)?.unwrap_or(pos);
            let meta = EventMeta {
                event_id: e.event_id.clone(),
                room_id: room_id.to_owned(),
                state_before: before,
                state_after: before,
                redacted_by: None,
                txn: None,
                delay_id: None,
                outlier: false,
                hidden: false,
                rejected: false,
            };
            write_event_rows(&mut batch, short, &e.event_id, &e.bytes, &meta)?;
            put_timeline_row(
                &mut batch,
                room_id,
                pos,
                short,
                u64::from(e.pdu.origin_server_ts.get()),
            );
            self.pdu_cache.lock().remove(&short);
            stored += 1;
        }
        if stored > 0 {
            batch.put(
                Table::RoomidRoom,
                room_id.as_bytes().to_vec(),
                serde_json::to_vec(&room)?,
            );
            self.db.write(batch)?;
        }
        Ok(stored)
    }

    pub fn store_rejected(&self, event_id: &EventId, reason: &str) -> Result<()> {
        info!(%event_id, reason, "rejected a remote event");
        let mut batch = Batch::new();
        batch.put(
            Table::EventidRejected,
            event_id.as_bytes().to_vec(),
            reason.as_bytes().to_vec(),
        );
        Ok(self.db.write(batch)?)
    }

    /// Checks an event against its own auth events (which must all be stored): the auth rules
    /// that do not depend on the room's state, then the rest with its auth events as the state.
    pub fn check_against_auth_events(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> std::result::Result<(), String> {
        check_auth_with(rules, pdu, |id: &EventId| self.pdu(id).ok().flatten())
    }

    /// Checks an event against a state map.
    pub fn check_against_state(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
    ) -> std::result::Result<(), String> {
        check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k| {
            state
                .get(&(t.to_string(), k.to_owned()))
                .and_then(|s| self.pdu_by_short(*s).ok().flatten())
        })
        .map_err(|e| e.to_string())
    }

    /// Stores events whose surrounding state is unknown (a joined room's state and auth chain,
    /// fetched auth events), skipping those already stored, in one batch.
    pub fn store_outliers(&self, room_id: &RoomId, events: &[Checked]) -> Result<()> {
        let mut fresh = Vec::new();
        let mut seen = HashSet::new();
        for e in events {
            if seen.insert(e.event_id.clone()) && self.short_id(&e.event_id)?.is_none() {
                fresh.push(e);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        self.stream.commit_n(fresh.len() as u64, |first, batch| {
            for (i, e) in fresh.iter().enumerate() {
                let meta = EventMeta {
                    event_id: e.event_id.clone(),
                    room_id: room_id.to_owned(),
                    state_before: 0,
                    state_after: 0,
                    redacted_by: None,
                    txn: None,
                    delay_id: None,
                    outlier: true,
                    hidden: false,
                    rejected: false,
                };
                write_event_rows(batch, first + i as u64, &e.event_id, &e.bytes, &meta)?;
            }
            Ok(())
        })?;
        debug!(count = fresh.len(), %room_id, "stored outliers");
        Ok(())
    }

    /// The snapshot id of the state after an event, if the event is stored with its state.
    pub(super) fn state_after_event(&self, event_id: &EventId) -> Result<Option<u64>> {
        let Some(short) = self.short_id(event_id)? else {
            return Ok(None);
        };
        Ok(self
            .meta(short)?
            .filter(|m| !m.outlier)
            .map(|m| m.state_after))
    }

    /// Resolves several states of a room into one (state resolution v2, with the rules of the
    /// room's version).
    pub fn resolve_states(&self, version: &str, states: &[&StateMap]) -> Result<StateMap> {
        self.resolve_states_with(version, states, None)
    }

    /// [`Self::resolve_states`] where the states may hold `pending`, an event of the batch
    /// being written (so not in the database yet).
    pub(super) fn resolve_states_with(
        &self,
        version: &str,
        states: &[&StateMap],
        pending: Option<&Pending<'_>>,
    ) -> Result<StateMap> {
        let pdu_of = |id: &EventId| -> Result<Option<Pdu>> {
            match pending {
                Some(p) if p.event_id == id => Ok(Some(p.pdu.clone())),
                _ => self.pdu(id),
            }
        };
        let rules = rules_for(version)?;
        let mut maps = Vec::new();
        let mut auth_chains = Vec::new();
        for state in states {
            let mut map = state_res::StateMap::new();
            let mut ids = Vec::new();
            for ((t, k), short) in state.iter() {
                let event_id = match (self.meta(*short)?, pending) {
                    (Some(meta), _) => meta.event_id,
                    (None, Some(p)) if p.short == *short => p.event_id.to_owned(),
                    (None, _) => continue,
                };
                map.insert(
                    (StateEventType::from(t.as_str()), k.clone()),
                    event_id.clone(),
                );
                ids.push(event_id);
            }
            auth_chains.push(
                self.auth_chain_ids_with(&ids, &pdu_of)?
                    .into_iter()
                    .collect::<EventIdSet<_>>(),
            );
            maps.push(map);
        }
        let resolved = match rules.state_res.v2_rules() {
            Some(state_res_rules) => state_res::resolve(
                &rules.authorization,
                state_res_rules,
                &maps,
                auth_chains,
                |id: &EventId| pdu_of(id).ok().flatten(),
                |conflicted| {
                    self.conflicted_subgraph(conflicted, &pdu_of)
                        .map(|s| s.into_iter().collect::<EventIdSet<_>>())
                },
            )
            .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?,
            None => super::state_res_v1::resolve(&rules.authorization, &maps, |id: &EventId| {
                pdu_of(id).ok().flatten()
            }),
        };
        let mut out = StateMap::new();
        for ((t, k), id) in resolved {
            let short = match pending {
                Some(p) if p.event_id == id => Some(p.short),
                _ => self.short_id(&id)?,
            };
            if let Some(short) = short {
                out.insert((t.to_string(), k), short);
            }
        }
        Ok(out)
    }

    /// Every event in the auth chains of `ids` (not the events themselves), walked
    /// iteratively.
    pub fn auth_chain_ids(&self, ids: &[OwnedEventId]) -> Result<HashSet<OwnedEventId>> {
        self.auth_chain_ids_with(ids, &|id| self.pdu(id))
    }

    /// [`Self::auth_chain_ids`] with events found through `pdu_of`.
    fn auth_chain_ids_with(
        &self,
        ids: &[OwnedEventId],
        pdu_of: &dyn Fn(&EventId) -> Result<Option<Pdu>>,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut chain = HashSet::new();
        let mut todo: Vec<OwnedEventId> = Vec::new();
        for id in ids {
            if let Some(p) = pdu_of(id)? {
                todo.extend(p.auth_events.iter().cloned());
            }
        }
        while let Some(id) = todo.pop() {
            if !chain.insert(id.clone()) {
                continue;
            }
            if let Some(p) = pdu_of(&id)? {
                todo.extend(p.auth_events.into_iter().filter(|a| !chain.contains(a)));
            }
        }
        Ok(chain)
    }

    /// The conflicted state subgraph (room version 12): the events on an auth-event path from
    /// one conflicted event to another.
    fn conflicted_subgraph(
        &self,
        conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
        pdu_of: &dyn Fn(&EventId) -> Result<Option<Pdu>>,
    ) -> Option<HashSet<OwnedEventId>> {
        let set: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        let ids: Vec<_> = set.iter().cloned().collect();
        let ancestors = self.auth_chain_ids_with(&ids, pdu_of).ok()?;
        let mut out: HashSet<OwnedEventId> = set.clone();
        for x in ancestors {
            let chain = self
                .auth_chain_ids_with(std::slice::from_ref(&x), pdu_of)
                .ok()?;
            if chain.iter().any(|c| set.contains(c)) {
                out.insert(x);
            }
        }
        Some(out)
    }

    /// Places a checked remote event in the DAG of a room this server is in. Its auth events
    /// must be stored already; `prev_events` without known state are reported back.
    pub async fn place_remote(&self, room_id: &RoomId, event: Checked) -> Result<Placed> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        if self.is_placed(&event.event_id)? {
            return Ok(Placed::Known);
        }
        let room = self.room_or_404(room_id)?;
        let rules = rules_for(&room.version)?;
        let auth_failure = self.check_against_auth_events(&rules, &event.pdu).err();
        // The state before the event: after its prev_events, resolved where they differ. A
        // rejected prev_event counts with the state before it, when known (spec: rejection).
        let mut missing = Vec::new();
        let mut befores = BTreeSet::new();
        for prev in &event.pdu.prev_events {
            match self.state_after_event(prev)? {
                Some(s) => {
                    befores.insert(s);
                }
                None if self.rejection(prev)?.is_some() => {}
                None => missing.push(prev.clone()),
            }
        }
        if let Some(reason) = auth_failure {
            // Kept with the state before it when that is known here, so that later events
            // may still build on it; otherwise only as rejected.
            if missing.is_empty() && !befores.is_empty() {
                let (before_id, before_map, new_before) = self.state_of(&room, &befores)?;
                self.commit_rejected(room_id, &event, before_id, &before_map, new_before, &reason)?;
            } else {
                self.store_rejected(&event.event_id, &reason)?;
            }
            return Ok(Placed::Rejected(reason));
        }
        if !missing.is_empty() {
            return Ok(Placed::MissingState(missing));
        }
        let (before_id, before_map, new_before) = match befores.len() {
            0 if event.pdu.prev_events.is_empty() => {
                // Only a create event has no prev_events, and this room has its own already
                // (an outlier here when the room was joined over federation).
                if event.pdu.kind == TimelineEventType::RoomCreate
                    && self.short_id(&event.event_id)?.is_some()
                {
                    return Ok(Placed::Known);
                }
                let reason = "an event without prev_events in an existing room".to_owned();
                self.store_rejected(&event.event_id, &reason)?;
                return Ok(Placed::Rejected(reason));
            }
            0 => {
                let reason = "every prev_event was rejected".to_owned();
                self.store_rejected(&event.event_id, &reason)?;
                return Ok(Placed::Rejected(reason));
            }
            _ => self.state_of(&room, &befores)?,
        };
        self.place_on(
            room_id,
            room,
            &rules,
            event,
            before_id,
            &before_map,
            new_before,
        )
    }

    /// The state made of the states after some events (snapshot ids): `(snapshot id, map,
    /// whether it is new)`; a new one (the resolution of several) has no id yet.
    fn state_of(
        &self,
        room: &RoomRecord,
        befores: &BTreeSet<u64>,
    ) -> Result<(u64, std::sync::Arc<StateMap>, bool)> {
        if befores.len() == 1 {
            let id = befores.first().copied().unwrap_or_default();
            return Ok((id, self.state(id)?, false));
        }
        let maps: Vec<_> = befores
            .iter()
            .map(|s| self.state(*s))
            .collect::<Result<_>>()?;
        let refs: Vec<&StateMap> = maps.iter().map(|m| m.as_ref()).collect();
        Ok((
            0,
            std::sync::Arc::new(self.resolve_states(&room.version, &refs)?),
            true,
        ))
    }

    /// Stores a rejected event with the state before it as its state after too: out of the
    /// timeline, no extremity, never shown or used as an auth event (`EventMeta::rejected`),
    /// but a `prev_event` later events can be placed on (spec: rejection).
    fn commit_rejected(
        &self,
        room_id: &RoomId,
        event: &Checked,
        before_id: u64,
        before_map: &StateMap,
        new_before: bool,
        reason: &str,
    ) -> Result<()> {
        info!(event_id = %event.event_id, reason, "rejected a remote event");
        let existing_short = self.short_id(&event.event_id)?;
        self.stream.commit(|pos, batch| {
            let short = existing_short.unwrap_or(pos);
            let before = if new_before {
                let id = RESOLVED_BEFORE | pos;
                write_full_snapshot(batch, id, before_map)?;
                id
            } else {
                before_id
            };
            let meta = EventMeta {
                event_id: event.event_id.clone(),
                room_id: room_id.to_owned(),
                state_before: before,
                state_after: before,
                redacted_by: None,
                txn: None,
                delay_id: None,
                outlier: false,
                hidden: true,
                rejected: true,
            };
            write_event_rows(batch, short, &event.event_id, &event.bytes, &meta)?;
            batch.put(
                Table::EventidRejected,
                event.event_id.as_bytes().to_vec(),
                reason.as_bytes().to_vec(),
            );
            Ok(())
        })?;
        if let Some(short) = existing_short {
            self.pdu_cache.lock().remove(&short);
        }
        Ok(())
    }

    /// The rest of placing an event once the state before it is known (snapshot `before_id`,
    /// or a new one when `new_before`): auth against that state, soft fail against the
    /// current state, the commit.
    #[allow(clippy::too_many_arguments)]
    fn place_on(
        &self,
        room_id: &RoomId,
        room: RoomRecord,
        rules: &RoomVersionRules,
        event: Checked,
        before_id: u64,
        before_map: &StateMap,
        new_before: bool,
    ) -> Result<Placed> {
        if let Err(e) = self.check_against_state(rules, &event.pdu, before_map) {
            let reason = format!("not allowed by the state before it: {e}");
            self.commit_rejected(room_id, &event, before_id, before_map, new_before, &reason)?;
            return Ok(Placed::Rejected(reason));
        }
        // Soft fail: allowed where it was sent, but not by the room's current state, or
        // breaking a fine rule of the guild the room belongs to (spec/profile.md §4).
        let current = self.state(room.state)?;
        let soft_failed = (new_before || before_id != room.state)
            && self
                .check_against_state(rules, &event.pdu, &current)
                .is_err();
        let soft_failed = soft_failed || {
            let refusal = self
                .policy
                .check_received(self, room_id, &current, &event.pdu)?;
            if let Some(r) = &refusal {
                info!(event_id = %event.event_id, "breaks a rule of the profile: {r}");
            }
            refusal.is_some()
        };
        self.commit_remote(
            room_id,
            room,
            event,
            before_id,
            before_map,
            new_before,
            soft_failed,
        )
    }

    /// Writes a placed remote event (see [`Rooms::commit`]): what only a received event
    /// needs is worked out here — its push notifications and relation, whether its redaction
    /// applies — and its observers' follow-ups run in the background.
    #[allow(clippy::too_many_arguments)]
    fn commit_remote(
        &self,
        room_id: &RoomId,
        room: RoomRecord,
        event: Checked,
        before_id: u64,
        before_map: &StateMap,
        new_before: bool,
        soft_failed: bool,
    ) -> Result<Placed> {
        let pdu = &event.pdu;
        let notes = if soft_failed {
            Vec::new()
        } else {
            let client = super::pdu::client_event(
                &event.bytes,
                event.event_id.as_str(),
                room_id.as_str(),
                None,
            )?;
            self.evaluate_push(room_id, &room.version, before_map, &pdu.sender, &client)?
        };
        let relation = if soft_failed {
            None
        } else {
            self.check_relation(room_id, pdu).ok().flatten()
        };
        let redact_target = match (&pdu.kind, soft_failed) {
            (TimelineEventType::RoomRedaction, false) => pdu.redacts.clone().filter(|t| {
                self.check_redaction(&room, before_map, pdu).is_ok()
                    && self.pdu(t).ok().flatten().is_some()
            }),
            _ => None,
        };
        // An outlier placed now keeps its short id (state maps may name it already).
        let existing_short = self.short_id(&event.event_id)?;
        let committed = self.commit(
            room_id,
            room,
            Accepted {
                event_id: &event.event_id,
                pdu,
                bytes: &event.bytes,
                before: Before {
                    id: before_id,
                    map: before_map,
                    resolved: new_before,
                },
                soft_failed,
                existing_short,
                txn: None,
                delay_id: None,
                relation: relation.as_ref(),
                notes: &notes,
                redact_target: redact_target.as_ref(),
                starts_timeline: None,
            },
        )?;
        if soft_failed {
            info!(event_id = %event.event_id, "soft-failed a remote event");
            return Ok(Placed::SoftFailed);
        }
        hooks::spawn(self.after_commit(
            room_id,
            pdu,
            &notes,
            redact_target.as_deref(),
            committed.changed_members,
        )?);
        Ok(Placed::Accepted(committed.pos))
    }

    /// Places an event whose `prev_events` this server lacks, on the state before it as
    /// another server reported it (`state_ids`, all stored): checked like any event, in the
    /// timeline unless soft-failed, so later events can build on it. The missing
    /// `prev_events` become holes.
    pub async fn place_with_state(
        &self,
        room_id: &RoomId,
        event: Checked,
        state_ids: &[OwnedEventId],
    ) -> Result<Placed> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        if self.is_placed(&event.event_id)? {
            return Ok(Placed::Known);
        }
        let room = self.room_or_404(room_id)?;
        let rules = rules_for(&room.version)?;
        let mut map = StateMap::new();
        for id in state_ids {
            let (Some(short), Some(pdu)) = (self.short_id(id)?, self.pdu(id)?) else {
                continue;
            };
            if let Some(k) = pdu.state_key {
                map.insert((pdu.kind.to_string(), k), short);
            }
        }
        if let Err(reason) = self.check_against_auth_events(&rules, &event.pdu) {
            // Rejected, but with the state at it known: later events can build on it.
            self.commit_rejected(room_id, &event, 0, &map, true, &reason)?;
            return Ok(Placed::Rejected(reason));
        }
        self.place_on(room_id, room, &rules, event, 0, &map, true)
    }

    /// Creates (or replaces) a room joined over federation: `state` is the room's state before
    /// the `join` event and `auth_chain` its auth chain, all checked by the caller.
    pub async fn join_remote_room(
        &self,
        room_id: &RoomId,
        version: &str,
        state: &[Checked],
        auth_chain: &[Checked],
        join: Checked,
    ) -> Result<u64> {
        let rules = rules_for(version)?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let mut all: Vec<Checked> = auth_chain.to_vec();
        all.extend(state.iter().cloned());
        self.store_outliers(room_id, &all)?;
        let mut map = StateMap::new();
        for e in state {
            let Some(k) = &e.pdu.state_key else {
                return Err(Error::bad_json(format!(
                    "{} in the room state is not a state event",
                    e.event_id
                )));
            };
            let short = self
                .short_id(&e.event_id)?
                .ok_or_else(|| Error::internal("state event not stored"))?;
            map.insert((e.pdu.kind.to_string(), k.clone()), short);
        }
        self.check_against_auth_events(&rules, &join.pdu)
            .map_err(|e| Error::forbidden(format!("the join event {e}")))?;
        self.check_against_state(&rules, &join.pdu, &map)
            .map_err(|e| {
                Error::forbidden(format!("the join is not allowed by the room state: {e}"))
            })?;
        let joiner = OwnedUserId::try_from(join.pdu.state_key.clone().unwrap_or_default())
            .map_err(|_| Error::bad_json("the join event has no user as state_key"))?;
        // The room's timeline here starts again with the join: a new record (its depth kept),
        // and the state before the join written as a snapshot of its own. Every member of
        // that state gets their membership row (nothing is compared with what this server
        // knew of the room before). The positions before the join are kept free for the
        // history before it, fetched when a client pages back (`Rooms::store_backfilled`);
        // no request goes out now.
        let existing = self.room(room_id)?;
        let record = RoomRecord {
            version: version.to_owned(),
            extremities: Vec::new(),
            state: 0,
            depth: existing.as_ref().map_or(0, |r| r.depth),
            last_pos: 0,
            holes: Vec::new(),
            gaps: Vec::new(),
            backfill_next: 0,
            backfill_floor: 0,
        };
        let committed = self.commit(
            room_id,
            record,
            Accepted {
                event_id: &join.event_id,
                pdu: &join.pdu,
                bytes: &join.bytes,
                before: Before {
                    id: 0,
                    map: &map,
                    resolved: true,
                },
                soft_failed: false,
                existing_short: None,
                txn: None,
                delay_id: None,
                relation: None,
                notes: &[],
                redact_target: None,
                starts_timeline: Some(BACKFILL_SLOTS),
            },
        )?;
        let pos = committed.pos;
        info!(%room_id, state = state.len(), auth_chain = auth_chain.len(), "joined a room over federation");
        self.follow_predecessor(room_id, &map, &joiner);
        hooks::spawn(self.after_commit(
            room_id,
            &join.pdu,
            &[],
            None,
            committed.changed_members,
        )?);
        Ok(pos)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use paracord_core::Config;
    use ruma::{events::room::member::MembershipState, OwnedRoomId, UserId};
    use serde_json::json;

    use super::*;
    use crate::{
        rooms::{
            create::{CreateRoom, Preset},
            NewEvent,
        },
        Services,
    };

    fn server(name: &str) -> (tempfile::TempDir, Services) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            server_name: name.into(),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        (dir, Services::open(config).unwrap())
    }

    fn checked(s: &Services, short: u64) -> Checked {
        let bytes = s.rooms.raw_pdu(short).unwrap().unwrap();
        let event_id = s.rooms.meta(short).unwrap().unwrap().event_id;
        let pdu = Pdu::from_json(event_id.clone(), &bytes).unwrap();
        Checked {
            event_id,
            pdu,
            bytes,
        }
    }

    /// A public room of `alice` on `a`, and a signed join of `bob` (of another server) with
    /// the state before it and its auth chain, as `send_join` answers.
    async fn room_to_join(
        a: &Services,
        alice: &UserId,
        bob: &UserId,
    ) -> (OwnedRoomId, String, Vec<Checked>, Vec<Checked>, Checked) {
        let room = a
            .rooms
            .create_room(
                alice,
                CreateRoom {
                    version: None,
                    preset: Some(Preset::PublicChat),
                    public: false,
                    name: Some("test".into()),
                    topic: None,
                    alias: None,
                    invite: vec![],
                    is_direct: false,
                    initial_state: vec![],
                    power_level_override: None,
                    creation_content: None,
                    profile: (None, None),
                },
            )
            .await
            .unwrap();
        let new = NewEvent::state(
            TimelineEventType::RoomMember,
            bob.as_str(),
            json!({ "membership": "join" }),
        );
        let (version, obj) = a.rooms.checked_template(&room, bob, &new).unwrap();
        let (event_id, pdu, bytes) = a.rooms.sign_event(obj, &version).unwrap();
        let state: Vec<Checked> = a
            .rooms
            .current_state(&room)
            .unwrap()
            .values()
            .map(|s| checked(a, *s))
            .collect();
        let ids: Vec<OwnedEventId> = state.iter().map(|c| c.event_id.clone()).collect();
        let auth_chain = a
            .rooms
            .auth_chain_ids(&ids)
            .unwrap()
            .into_iter()
            .filter(|id| !ids.contains(id))
            .map(|id| checked(a, a.rooms.short_id(&id).unwrap().unwrap()))
            .collect();
        let join = Checked {
            event_id,
            pdu,
            bytes,
        };
        (room, version, state, auth_chain, join)
    }

    /// A join over federation goes through `Rooms::commit`: the join at the end of the
    /// positions kept free for the history before it, the state before it as a snapshot of
    /// its own, the room's record, every member's membership row (and the member list
    /// after it), and the end of the joiner's pending invite.
    #[tokio::test]
    async fn a_join_over_federation_starts_the_timeline_after_the_backfill_slots() {
        let (_a_dir, a) = server("a.test");
        let (_b_dir, b) = server("b.test");
        let alice = OwnedUserId::try_from("@alice:a.test").unwrap();
        let bob = OwnedUserId::try_from("@bob:b.test").unwrap();
        let (room, version, state, auth_chain, join) = room_to_join(&a, &alice, &bob).await;
        b.rooms
            .store_remote_invite(
                &bob,
                &room,
                &join.event_id,
                &json!({ "event": { "sender": alice } }),
                "invite",
            )
            .unwrap();
        assert_eq!(
            b.rooms.membership(&room, &bob).unwrap(),
            Some(MembershipState::Invite)
        );
        let before = b.stream.current();
        let pos = b
            .rooms
            .join_remote_room(&room, &version, &state, &auth_chain, join.clone())
            .await
            .unwrap();
        // After the positions of the outliers, stored first.
        assert!(pos > before + BACKFILL_SLOTS);
        assert_eq!(b.stream.current(), pos);
        let record = b.rooms.room(&room).unwrap().unwrap();
        assert_eq!(record.extremities, vec![join.event_id.clone()]);
        assert_eq!(record.state, pos);
        assert_eq!(record.last_pos, pos);
        assert_eq!(record.depth, u64::from(join.pdu.depth));
        assert_eq!(
            (record.backfill_floor, record.backfill_next),
            (pos - BACKFILL_SLOTS, pos)
        );
        assert!(record.holes.is_empty() && record.gaps.is_empty());
        assert_eq!(b.rooms.short_id(&join.event_id).unwrap(), Some(pos));
        let meta = b.rooms.meta(pos).unwrap().unwrap();
        assert_eq!(
            (meta.state_before, meta.state_after),
            (RESOLVED_BEFORE | pos, pos)
        );
        assert!(!meta.outlier && !meta.hidden && !meta.rejected);
        // The state after the join: the state before it and the join.
        let current = b.rooms.current_state(&room).unwrap();
        assert_eq!(current.len(), state.len() + 1);
        assert_eq!(
            current.get(&("m.room.member".to_owned(), bob.to_string())),
            Some(&pos)
        );
        for e in &state {
            let key = (e.pdu.kind.to_string(), e.pdu.state_key.clone().unwrap());
            if key.0 != "m.room.member" || key.1 != bob.as_str() {
                let short = b.rooms.short_id(&e.event_id).unwrap().unwrap();
                assert_eq!(current.get(&key), Some(&short));
                assert!(b.rooms.meta(short).unwrap().unwrap().outlier);
            }
        }
        assert_eq!(
            b.rooms
                .newest_timeline_events(&room, 2)
                .unwrap()
                .map(|s| s.unwrap())
                .collect::<Vec<_>>(),
            vec![pos]
        );
        let mut members = b.rooms.members(&room).unwrap();
        members.sort();
        let mut expected = vec![
            (alice.clone(), MembershipState::Join),
            (bob.clone(), MembershipState::Join),
        ];
        expected.sort();
        assert_eq!(members, expected);
        assert!(b.rooms.remote_invite(&bob, &room).unwrap().is_none());
    }
}
