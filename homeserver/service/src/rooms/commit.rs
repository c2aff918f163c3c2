//! The one function that writes an accepted event, local or received, and everything it
//! changes: its state snapshot, the timeline row, the room's extremities and current state,
//! the membership rows of the members whose membership changed, notifications, the relation,
//! search and observer indexes, a redaction, and a local event's transaction id — in one
//! batch at one stream position. Local and received events, and the join that starts a room
//! joined over federation, differ only in how they were checked before they get here
//! (DESIGN.md §3).

use paracord_core::{time::now_ms, Result};
use paracord_storage::{Batch, Table};
use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    EventId, OwnedEventId, OwnedUserId, RoomId,
};

use super::{
    keys::invite_key, membership::membership_of, notify::Notification, put_timeline_row, relations,
    rules_for, txn_key, write_event_rows, write_full_snapshot, write_membership,
    write_state_snapshot, EventMeta, Pdu, RoomRecord, Rooms, StateMap,
};

/// Snapshot ids of resolved states (which belong to no one event) have this bit set, and the
/// stream position of the commit that wrote them below it.
pub(super) const RESOLVED_BEFORE: u64 = 1 << 62;
pub(super) const RESOLVED_CURRENT: u64 = (1 << 62) | (1 << 61);
/// Most holes a room remembers (see `RoomRecord::holes`).
pub(super) const MAX_HOLES: usize = 1024;

/// An event of the batch being written: its short id, id and PDU, not readable from the
/// database until the batch is.
pub(super) struct Pending<'a> {
    pub(super) short: u64,
    pub(super) event_id: &'a EventId,
    pub(super) pdu: &'a Pdu,
}

/// The state before an accepted event.
pub(crate) struct Before<'a> {
    /// Its snapshot id (unused when `resolved`).
    pub id: u64,
    pub map: &'a StateMap,
    /// Resolved here from the event's `prev_events`: written as a snapshot of its own.
    pub resolved: bool,
}

/// An event that passed its checks, with what its checks found out.
pub(crate) struct Accepted<'a> {
    pub event_id: &'a OwnedEventId,
    pub pdu: &'a Pdu,
    /// Canonical JSON as it is stored.
    pub bytes: &'a [u8],
    pub before: Before<'a>,
    /// Allowed by the state before it but not by the room's current state: stored, but out
    /// of the timeline and of the room's state, and with no side effects.
    pub soft_failed: bool,
    /// The short id of an outlier being placed now (state maps may name it already).
    pub existing_short: Option<u64>,
    /// A local event's `(device, transaction id)`.
    pub txn: Option<&'a (String, String)>,
    /// The delayed event (MSC4140) a local event was sent for.
    pub delay_id: Option<&'a str>,
    pub relation: Option<&'a relations::Relation>,
    pub notes: &'a [Notification],
    /// The event this one redacts, when the redaction applies.
    pub redact_target: Option<&'a OwnedEventId>,
    /// `Some(n)` for the event that starts the room's timeline here, a join over federation
    /// (`Rooms::join_remote_room`): it is written `n` stream positions after the first one
    /// it takes, which are kept free for the history before it (`RoomRecord::backfill_floor`
    /// to `backfill_next`, filled by `Rooms::store_backfilled`), so its missing
    /// `prev_events` are no holes.
    pub starts_timeline: Option<u64>,
}

/// What a commit wrote.
pub(crate) struct Committed {
    pub pos: u64,
    /// Users whose membership in the room's current state changed.
    pub changed_members: Vec<OwnedUserId>,
}

/// How the room's current state follows from the event.
enum NewCurrent {
    /// A late event, or one that forked off: the current state stays.
    Unchanged,
    /// The event follows every extremity: the state after it.
    AfterEvent,
    /// The event is one of several extremities: their states resolved.
    Resolved(StateMap),
}

impl Rooms {
    /// Writes an accepted event and everything it changes in one batch.
    pub(crate) fn commit(
        &self,
        room_id: &RoomId,
        mut room: RoomRecord,
        ev: Accepted<'_>,
    ) -> Result<Committed> {
        let rules = rules_for(&room.version)?;
        let pdu = ev.pdu;
        let kind = pdu.kind.to_string();
        let own_key = pdu.state_key.as_ref().map(|k| (kind.clone(), k.clone()));
        let snapshot_depth = match (&own_key, ev.before.resolved) {
            (Some(_), false) => self.snapshot_depth(ev.before.id)?,
            _ => 0,
        };
        // Extremities after the event. An event that fills a hole has a child here already:
        // it is no forward extremity.
        let late = room.holes.contains(ev.event_id);
        let mut extremities: Vec<OwnedEventId> = room
            .extremities
            .iter()
            .filter(|e| !pdu.prev_events.contains(e))
            .cloned()
            .collect();
        if !late || extremities.is_empty() {
            extremities.push(ev.event_id.clone());
        }
        // Placed on another server's state: the prev_events not here are holes now.
        let mut holes_after: Vec<OwnedEventId> = room
            .holes
            .iter()
            .filter(|h| *h != ev.event_id)
            .cloned()
            .collect();
        let mut after_gap = false;
        let placed_on_other_state =
            !room.holes.is_empty() || ev.before.resolved || ev.before.id != room.state;
        if ev.starts_timeline.is_none() && placed_on_other_state {
            for prev in &pdu.prev_events {
                if !self.is_placed(prev)? {
                    after_gap = true;
                    if !holes_after.contains(prev) {
                        holes_after.push(prev.clone());
                    }
                }
            }
        }
        let overflow = holes_after.len().saturating_sub(MAX_HOLES);
        holes_after.drain(..overflow);
        // On the current state, an event changes it by its own entry only; anything else
        // may change any entry, so the memberships are compared in full.
        let on_current = !ev.before.resolved && ev.before.id == room.state;
        let old_current_arc = match on_current {
            true => None,
            false => Some(self.state(room.state)?),
        };
        let old_current: &StateMap = match &old_current_arc {
            Some(map) => map,
            None => ev.before.map,
        };
        let search = self.search.clone();
        let content = pdu.content_value();
        let reserved = ev.starts_timeline.unwrap_or(0);
        let (_, (pos, changed)) = self.stream.commit_n(reserved + 1, |first, batch| {
            let pos = first + reserved;
            let short = ev.existing_short.unwrap_or(pos);
            let before = if ev.before.resolved {
                let id = RESOLVED_BEFORE | pos;
                write_full_snapshot(batch, id, ev.before.map)?;
                id
            } else {
                ev.before.id
            };
            let mut after = before;
            if let Some(k) = &own_key {
                after = short;
                write_state_snapshot(
                    batch,
                    short,
                    before,
                    snapshot_depth,
                    ev.before.map,
                    (&k.0, &k.1),
                    short,
                )?;
            }
            let meta = EventMeta {
                event_id: ev.event_id.clone(),
                room_id: room_id.to_owned(),
                state_before: before,
                state_after: after,
                redacted_by: None,
                txn: ev.txn.cloned(),
                delay_id: ev.delay_id.map(str::to_owned),
                outlier: false,
                hidden: ev.soft_failed,
                rejected: false,
            };
            write_event_rows(batch, short, ev.event_id, ev.bytes, &meta)?;
            if ev.soft_failed {
                return Ok((pos, Vec::new()));
            }
            self.write_notifications(batch, room_id, ev.event_id.as_str(), pos, ev.notes)?;
            put_timeline_row(
                batch,
                room_id,
                pos,
                short,
                u64::from(pdu.origin_server_ts.get()),
            );
            let after_map = || {
                let mut map = ev.before.map.clone();
                if let Some(k) = &own_key {
                    map.insert(k.clone(), short);
                }
                map
            };
            let new_current = if extremities == room.extremities {
                NewCurrent::Unchanged
            } else if extremities == [ev.event_id.clone()] {
                room.state = after;
                NewCurrent::AfterEvent
            } else {
                let mut maps = Vec::new();
                for e in &extremities {
                    if e == ev.event_id {
                        maps.push(after_map());
                    } else if let Some(s) = self.state_after_event(e)? {
                        maps.push((*self.state(s)?).clone());
                    }
                }
                let refs: Vec<&StateMap> = maps.iter().collect();
                // The event's own state entry must take part: it is in this batch, not yet
                // readable, and would otherwise drop out of the current state.
                let pending = Pending {
                    short,
                    event_id: ev.event_id,
                    pdu,
                };
                let resolved = self.resolve_states_with(&room.version, &refs, Some(&pending))?;
                let id = RESOLVED_CURRENT | pos;
                write_full_snapshot(batch, id, &resolved)?;
                room.state = id;
                NewCurrent::Resolved(resolved)
            };
            room.extremities = extremities.clone();
            room.holes = holes_after.clone();
            if after_gap {
                room.gaps.push(pos);
                let overflow = room.gaps.len().saturating_sub(MAX_HOLES);
                room.gaps.drain(..overflow);
            }
            room.depth = room.depth.max(u64::from(pdu.depth));
            room.last_pos = pos;
            if ev.starts_timeline.is_some() {
                room.backfill_next = pos;
                room.backfill_floor = first;
            }
            batch.put(
                Table::RoomidRoom,
                room_id.as_bytes().to_vec(),
                serde_json::to_vec(&room)?,
            );
            // Memberships that changed in the current state.
            let changed = match &new_current {
                NewCurrent::Unchanged => Vec::new(),
                NewCurrent::AfterEvent if on_current => {
                    self.write_own_membership(batch, room_id, ev.event_id, pdu, pos)?
                }
                NewCurrent::AfterEvent => self.write_changed_memberships(
                    batch,
                    room_id,
                    old_current,
                    &after_map(),
                    pos,
                    &ev,
                )?,
                NewCurrent::Resolved(new) => {
                    self.write_changed_memberships(batch, room_id, old_current, new, pos, &ev)?
                }
            };
            // Relations and search entries name the event by its short id (which is `pos`
            // unless an outlier is being placed).
            if let Some(r) = ev.relation {
                self.index_relation(batch, room_id, r, short)?;
            }
            for o in &self.observers {
                o.index(batch, room_id, pdu)?;
                if let Some(delay_id) = ev.delay_id {
                    o.delayed_event_sent(batch, delay_id, ev.event_id)?;
                }
            }
            if let Some(t) = ev.txn {
                let key = txn_key(&pdu.sender, room_id, t);
                crate::expiry::schedule(
                    batch,
                    Table::TxnEventid,
                    &key,
                    now_ms().saturating_add(crate::expiry::TRANSACTION_TTL_MS),
                );
                batch.put(Table::TxnEventid, key, ev.event_id.as_bytes().to_vec());
            }
            if let Some(target) = ev.redact_target {
                self.redact_into(batch, target, ev.event_id, &rules)?;
            }
            if let Some(search) = &search {
                search.index_into(
                    batch,
                    room_id.as_str(),
                    pdu.sender.as_str(),
                    &kind,
                    &content,
                    short,
                    u64::from(pdu.origin_server_ts.get()),
                )?;
            }
            Ok((pos, changed))
        })?;
        if !changed.is_empty() {
            self.members_changed(room_id);
        }
        Ok(Committed {
            pos,
            changed_members: changed,
        })
    }

    /// The membership row of a member event placed on the current state, the only entry it
    /// changes.
    fn write_own_membership(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        pdu: &Pdu,
        pos: u64,
    ) -> Result<Vec<OwnedUserId>> {
        let Some(user) = member_target(pdu) else {
            return Ok(Vec::new());
        };
        let content = pdu.content_value();
        // `leave` when it names none.
        let m = membership_of(&content).unwrap_or(MembershipState::Leave);
        write_membership(batch, room_id, &user, m.as_str(), pos, event_id)?;
        self.index_remote_member(batch, &user, m.as_str(), &content)?;
        self.end_invite_on_join(batch, room_id, &user, &m);
        Ok(vec![user])
    }

    /// The membership rows of every member whose entry differs between `old` and `new`.
    fn write_changed_memberships(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        old: &StateMap,
        new: &StateMap,
        pos: u64,
        ev: &Accepted<'_>,
    ) -> Result<Vec<OwnedUserId>> {
        let short = ev.existing_short.unwrap_or(pos);
        let mut changed = Vec::new();
        for ((t, k), s) in new {
            if t != "m.room.member" || old.get(&(t.clone(), k.clone())) == Some(s) {
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(k.as_str()) else {
                continue;
            };
            // The event itself is not in the database until this batch is written.
            let member = if *s == short {
                ev.pdu.clone()
            } else {
                match self.pdu_by_short(*s)? {
                    Some(m) => m,
                    None => continue,
                }
            };
            let content = member.content_value();
            let m = membership_of(&content).unwrap_or(MembershipState::Leave);
            write_membership(batch, room_id, &user, m.as_str(), pos, &member.event_id)?;
            self.index_remote_member(batch, &user, m.as_str(), &content)?;
            self.end_invite_on_join(batch, room_id, &user, &m);
            changed.push(user);
        }
        Ok(changed)
    }
}

impl Rooms {
    /// A user of this server who joined the room has no pending invite to it from another
    /// server any more (`Rooms::store_remote_invite`).
    fn end_invite_on_join(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        user: &OwnedUserId,
        m: &MembershipState,
    ) {
        if *m == MembershipState::Join && user.server_name() == self.config.server_name.as_str() {
            batch.delete(Table::UserroomRemoteinvite, invite_key(user, room_id));
        }
    }
}

/// The user a member event is about.
pub(crate) fn member_target(pdu: &Pdu) -> Option<OwnedUserId> {
    if pdu.kind != TimelineEventType::RoomMember {
        return None;
    }
    pdu.state_key
        .as_deref()
        .and_then(|k| OwnedUserId::try_from(k).ok())
}
