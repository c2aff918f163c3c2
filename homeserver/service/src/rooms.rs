//! Rooms: the event pipeline, state snapshots and the room timeline.
//!
//! Every event is a PDU of its room version: canonical JSON, content hash, reference-hash event
//! id, signed with the server key, `prev_events` = the room's forward extremities and
//! `auth_events` chosen by `auth_types_for_event`. It is checked with ruma's auth rules against
//! its auth events and the state before it, then committed in one batch at one stream position.

mod commit;
pub mod create;
pub mod directory;
pub mod federation_read;
pub mod hooks;
mod keys;
pub mod membership;
pub mod notify;
pub mod pdu;
pub mod relations;
pub mod remote;
pub mod spaces;
mod state_res_v1;
pub mod timeline;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use paracord_core::{time::now_ms, Config, Error, Result};
use paracord_storage::{key::decode_u64, Batch, Db, Table};
use parking_lot::Mutex;
use ruma::{
    canonical_json::CanonicalJsonObject,
    events::{room::member::MembershipState, StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{hash_and_sign_event, reference_hash},
    state_res::{
        auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules,
    },
    CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use self::hooks::{EventObserver, EventPolicy};
use self::keys::{RoomPosKey, RoomTsPosKey, RoomUserKey, TxnKey, UserRoomKey};
pub use self::pdu::Pdu;
use crate::{account_data::AccountData, keys::ServerKeys, stream::Stream};

/// `(event type, state key)` → short event id.
pub type StateMap = BTreeMap<(String, String), u64>;

/// A room as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: String,
    pub extremities: Vec<OwnedEventId>,
    /// Snapshot id of the current state (0 = empty).
    pub state: u64,
    pub depth: u64,
    /// Stream position of the newest event in the room.
    pub last_pos: u64,
    /// `prev_events` not in the DAG of events that were placed with another server's state
    /// (a gap was filled with `/state`). When one of them arrives later it already has a
    /// child here, so it is not a forward extremity. Oldest first, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<OwnedEventId>,
    /// Stream positions of timeline events placed after a gap in the DAG (some of their
    /// `prev_events` are not here): `/sync` starts a timeline after the newest gap since the
    /// client's token and says it is `limited`. Oldest first, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<u64>,
    /// Timeline positions kept free before a join over federation for history fetched later
    /// (`/backfill`, when a client pages back): `[backfill_floor, backfill_next)` are still
    /// free, filled from the top down. Both 0 when there are none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backfill_next: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backfill_floor: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Per-event metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventMeta {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub state_before: u64,
    pub state_after: u64,
    #[serde(default)]
    pub redacted_by: Option<OwnedEventId>,
    /// `(device id, transaction id)` of a local client send.
    #[serde(default)]
    pub txn: Option<(String, String)>,
    /// The delayed event (MSC4140) a local event was sent for: its sender sees it in
    /// `unsigned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_id: Option<String>,
    /// Stored without the state around it (part of a joined room's state or auth chain, or a
    /// fetched auth event): `state_before`/`state_after` mean nothing, and it is not in the
    /// timeline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outlier: bool,
    /// In the room's DAG with known state but not in the timeline: soft-failed. (Databases
    /// written before gap-filled events went into the timeline also have such events hidden.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// A remote event that failed the auth rules, stored with the state before it (which is
    /// also the state after it) so that events built on it can be placed (spec: rejection).
    /// Never shown to clients, never an auth event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
}

/// A state snapshot: a parent and what changed, or a full map when `parent` is 0.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    parent: u64,
    depth: u32,
    changes: Vec<(String, String, u64)>,
}

/// Most bytes of a PDU's `type` and `state_key` (and of its ids).
const MAX_ID_FIELD_BYTES: usize = 255;
/// Deltas longer than this are folded into a full snapshot.
const MAX_SNAPSHOT_DEPTH: u32 = 32;
const STATE_CACHE_ENTRIES: usize = 4096;
const PDU_CACHE_ENTRIES: usize = 16_384;

/// What a local request adds to the rows of its event: the client's transaction id and the
/// delayed event (MSC4140) it was sent for.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub(crate) txn: Option<(String, String)>,
    pub(crate) delay_id: Option<String>,
}

/// What a local client asks to send.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
    pub redacts: Option<OwnedEventId>,
    pub txn: Option<(String, String)>,
    /// `origin_server_ts` chosen by the sender (an application service's `?ts=`); `None`: now.
    pub ts: Option<u64>,
    /// The delayed event (MSC4140) this event is sent for: kept in its metadata (its sender
    /// sees it in `unsigned`), and the observers record it in the event's batch
    /// ([`hooks::EventObserver::delayed_event_sent`]).
    pub delay_id: Option<String>,
}

impl NewEvent {
    pub fn state(kind: TimelineEventType, state_key: &str, content: serde_json::Value) -> Self {
        Self {
            kind,
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
            txn: None,
            ts: None,
            delay_id: None,
        }
    }
    pub fn message(kind: TimelineEventType, content: serde_json::Value) -> Self {
        Self {
            kind,
            state_key: None,
            content,
            redacts: None,
            txn: None,
            ts: None,
            delay_id: None,
        }
    }
}

pub struct Rooms {
    pub(crate) db: Arc<Db>,
    pub(crate) config: Arc<Config>,
    pub(crate) keys: Arc<ServerKeys>,
    pub(crate) stream: Arc<Stream>,
    room_locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    state_cache: Mutex<HashMap<u64, Arc<StateMap>>>,
    pdu_cache: Mutex<HashMap<u64, Arc<Pdu>>>,
    /// Event id → short id, read through (a short id never changes once given).
    short_cache: Mutex<HashMap<OwnedEventId, u64>>,
    /// Each room's member list, read through; see [`Rooms::members_changed`].
    members_cache: Mutex<MembersCache>,
    last_create_ts: Mutex<u64>,
    /// Push rules live in account data; `None` only in tests that need no notifications.
    account_data: Option<Arc<AccountData>>,
    /// The profile's rules on top of the Matrix auth rules.
    policy: Arc<dyn EventPolicy>,
    /// Told of every event accepted into a timeline.
    observers: Vec<Arc<dyn EventObserver>>,
    /// This service, for observers' follow-ups (which outlive a call).
    me: std::sync::Weak<Rooms>,
    /// The full-text index, fed as events are committed.
    search: Option<Arc<crate::search::Search>>,
    /// Where local events go to reach other servers.
    outgoing: Option<OutgoingPdu>,
}

/// What the event pipeline is built from (`Services::build` makes them first).
pub struct RoomsParts {
    pub db: Arc<Db>,
    pub config: Arc<Config>,
    pub keys: Arc<ServerKeys>,
    pub stream: Arc<Stream>,
    /// Push rules live in account data; `None` only in tests that need no notifications.
    pub account_data: Option<Arc<AccountData>>,
    /// The full-text index, fed as events are committed.
    pub search: Option<Arc<crate::search::Search>>,
    /// Where local events go to reach other servers.
    pub outgoing: Option<OutgoingPdu>,
    /// The profile's rules on top of the Matrix auth rules.
    pub policy: Arc<dyn EventPolicy>,
    /// Told of every event accepted into a timeline.
    pub observers: Vec<Arc<dyn EventObserver>>,
}

/// Queues a local PDU (event id, canonical JSON) for other servers.
pub type OutgoingPdu =
    Arc<dyn Fn(&[ruma::OwnedServerName], &EventId, &[u8]) -> Result<()> + Send + Sync + 'static>;

pub(crate) fn rules_for(version: &str) -> Result<RoomVersionRules> {
    RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| Error::internal(format!("room version {version} has no rules")))
}

impl Rooms {
    /// The pipeline from its parts; `me` is the `Arc` it will be in (`Arc::new_cyclic`).
    pub fn new(parts: RoomsParts, me: std::sync::Weak<Rooms>) -> Self {
        let RoomsParts {
            db,
            config,
            keys,
            stream,
            account_data,
            search,
            outgoing,
            policy,
            observers,
        } = parts;
        Self {
            db,
            config,
            keys,
            stream,
            room_locks: Mutex::default(),
            state_cache: Mutex::default(),
            pdu_cache: Mutex::default(),
            short_cache: Mutex::default(),
            members_cache: Mutex::default(),
            last_create_ts: Mutex::default(),
            account_data,
            policy,
            observers,
            me,
            search,
            outgoing,
        }
    }

    /// Rebuilds the full-text index from every stored event.
    pub fn reindex(&self, search: &crate::search::Search) -> Result<u64> {
        search.clear()?;
        let mut n = 0;
        let mut batch = Batch::new();
        for (k, _) in self.db.scan_prefix(Table::RoomidRoom, b"")? {
            let room_id = String::from_utf8_lossy(&k).into_owned();
            let prefix = RoomPosKey::prefix(&room_id);
            for (_, v) in self
                .db
                .scan_prefix(Table::RoompositionShorteventid, &prefix)?
            {
                let short = decode_u64(&v)?;
                let (Some(raw), Some(meta)) = (self.raw_pdu(short)?, self.meta(short)?) else {
                    continue;
                };
                if meta.redacted_by.is_some() {
                    continue;
                }
                let ev: serde_json::Value = serde_json::from_slice(&raw)?;
                search.index_into(
                    &mut batch,
                    &room_id,
                    ev["sender"].as_str().unwrap_or_default(),
                    ev["type"].as_str().unwrap_or_default(),
                    &ev["content"],
                    short,
                    ev["origin_server_ts"].as_u64().unwrap_or(0),
                )?;
                n += 1;
                if batch.len() >= 10_000 {
                    self.db.write(std::mem::take(&mut batch))?;
                }
            }
        }
        self.db.write(batch)?;
        search.mark_ready()?;
        Ok(n)
    }

    // ----- reads -----

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        match self.db.get(Table::RoomidRoom, room_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every room this server has (joined, left or outlier-only rooms included).
    pub fn room_ids(&self) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .db
            .scan_prefix(Table::RoomidRoom, b"")?
            .into_iter()
            .filter_map(|(k, _)| {
                std::str::from_utf8(&k)
                    .ok()
                    .and_then(|id| OwnedRoomId::try_from(id).ok())
            })
            .collect())
    }

    pub fn room_or_404(&self, room_id: &RoomId) -> Result<RoomRecord> {
        self.room(room_id)?
            .ok_or_else(|| Error::not_found("room not found"))
    }

    pub fn short_id(&self, event_id: &EventId) -> Result<Option<u64>> {
        if let Some(s) = self.short_cache.lock().get(event_id) {
            return Ok(Some(*s));
        }
        let Some(v) = self
            .db
            .get(Table::EventidShorteventid, event_id.as_bytes())?
        else {
            return Ok(None);
        };
        let short = decode_u64(&v)?;
        let mut cache = self.short_cache.lock();
        if cache.len() >= SHORT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(event_id.to_owned(), short);
        Ok(Some(short))
    }

    pub fn raw_pdu(&self, short: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(Table::ShorteventidPdu, &short.to_be_bytes())?)
    }

    pub fn meta(&self, short: u64) -> Result<Option<EventMeta>> {
        match self.db.get(Table::ShorteventidMeta, &short.to_be_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// A parsed PDU; auth checks read the same few events (create, power levels, members)
    /// for every event of a room, so parsed PDUs are cached.
    pub fn pdu_by_short(&self, short: u64) -> Result<Option<Pdu>> {
        Ok(self.shared_pdu(short)?.map(|p| Pdu::clone(&p)))
    }

    /// The event of a short id as the cache holds it (no copy).
    pub(crate) fn shared_pdu(&self, short: u64) -> Result<Option<Arc<Pdu>>> {
        if let Some(p) = self.pdu_cache.lock().get(&short) {
            return Ok(Some(p.clone()));
        }
        let (Some(raw), Some(meta)) = (self.raw_pdu(short)?, self.meta(short)?) else {
            return Ok(None);
        };
        let mut pdu = Pdu::from_json(meta.event_id, &raw)?;
        pdu.rejected = meta.rejected;
        let pdu = Arc::new(pdu);
        let mut cache = self.pdu_cache.lock();
        if cache.len() >= PDU_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(short, pdu.clone());
        Ok(Some(pdu))
    }

    pub fn pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        match self.short_id(event_id)? {
            Some(s) => self.pdu_by_short(s),
            None => Ok(None),
        }
    }

    /// The state map of a snapshot.
    pub fn state(&self, snapshot: u64) -> Result<Arc<StateMap>> {
        if snapshot == 0 {
            return Ok(Arc::default());
        }
        if let Some(s) = self.state_cache.lock().get(&snapshot) {
            return Ok(s.clone());
        }
        let raw = self
            .db
            .get(Table::SnapshotidState, &snapshot.to_be_bytes())?
            .ok_or_else(|| Error::internal(format!("missing state snapshot {snapshot}")))?;
        let snap: Snapshot = serde_json::from_slice(&raw)?;
        let mut map = if snap.parent == 0 {
            StateMap::new()
        } else {
            (*self.state(snap.parent)?).clone()
        };
        for (t, k, s) in snap.changes {
            map.insert((t, k), s);
        }
        let map = Arc::new(map);
        let mut cache = self.state_cache.lock();
        if cache.len() >= STATE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(snapshot, map.clone());
        Ok(map)
    }

    pub fn snapshot_depth(&self, snapshot: u64) -> Result<u32> {
        if snapshot == 0 {
            return Ok(0);
        }
        let raw = self
            .db
            .get(Table::SnapshotidState, &snapshot.to_be_bytes())?
            .ok_or_else(|| Error::internal(format!("missing state snapshot {snapshot}")))?;
        let snap: Snapshot = serde_json::from_slice(&raw)?;
        Ok(snap.depth)
    }

    /// The current state of a room.
    pub fn current_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let room = self.room_or_404(room_id)?;
        self.state(room.state)
    }

    /// A state event of a state map.
    pub fn state_pdu(&self, state: &StateMap, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        match state.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(s) => self.pdu_by_short(*s),
            None => Ok(None),
        }
    }

    /// Content of a state event in a state map, as JSON.
    pub fn state_content(
        &self,
        state: &StateMap,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<serde_json::Value>> {
        Ok(self
            .state_pdu(state, kind, state_key)?
            .map(|p| p.content_value()))
    }

    /// The membership of `user` in a state map ("join", "leave", ...), if any.
    pub fn membership_in(
        &self,
        state: &StateMap,
        user: &UserId,
    ) -> Result<Option<MembershipState>> {
        Ok(self
            .state_content(state, "m.room.member", user.as_str())?
            .and_then(|c| membership::membership_of(&c)))
    }

    /// The user's current membership according to the membership index.
    pub fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<MembershipState>> {
        let key = RoomUserKey {
            room_id: room_id.as_str(),
            user_id: user.as_str(),
        }
        .encode();
        Ok(self
            .db
            .get(Table::RoomuserMembership, &key)?
            .map(|v| MembershipState::from(String::from_utf8_lossy(&v).as_ref())))
    }

    pub fn is_joined(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        Ok(self.membership(room_id, user)? == Some(MembershipState::Join))
    }

    /// Whether `a` and `b` are both joined to some room (who may see whose presence).
    pub fn share_a_room(&self, a: &UserId, b: &UserId) -> Result<bool> {
        for (room_id, rec) in self.user_rooms(a)? {
            if rec.membership == MembershipState::Join && self.is_joined(&room_id, b)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Members of a room with their membership.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipState)>> {
        Ok(self.shared_members(room_id)?.all.clone())
    }

    pub fn joined_members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        Ok(self.shared_members(room_id)?.joined.clone())
    }

    /// The room's member list as the cache holds it: every message reads it (push rules,
    /// who to wake, which servers to send to), few events change it.
    pub(crate) fn shared_members(&self, room_id: &RoomId) -> Result<Arc<RoomMembers>> {
        let generation = {
            let cache = self.members_cache.lock();
            if let Some(m) = cache.rooms.get(room_id) {
                return Ok(m.clone());
            }
            cache.generation
        };
        let prefix = RoomUserKey::prefix(room_id.as_str());
        let mut all = Vec::new();
        for (k, v) in self.db.scan_prefix(Table::RoomuserMembership, &prefix)? {
            let user =
                OwnedUserId::try_from(RoomUserKey::decode(&k)?.user_id).map_err(Error::internal)?;
            all.push((
                user,
                MembershipState::from(String::from_utf8_lossy(&v).as_ref()),
            ));
        }
        let joined = all
            .iter()
            .filter(|(_, m)| *m == MembershipState::Join)
            .map(|(u, _)| u.clone())
            .collect();
        let members = Arc::new(RoomMembers { all, joined });
        let mut cache = self.members_cache.lock();
        // A membership written while this list was read may be missing from it: keep it out.
        if cache.generation == generation {
            if cache.rooms.len() >= MEMBERS_CACHE_ROOMS {
                cache.rooms.clear();
            }
            cache.rooms.insert(room_id.to_owned(), members.clone());
        }
        Ok(members)
    }

    /// Forgets the room's cached member list. Every writer of membership rows
    /// ([`write_membership`]) calls it once its batch is written.
    pub(crate) fn members_changed(&self, room_id: &RoomId) {
        let mut cache = self.members_cache.lock();
        cache.generation = cache.generation.wrapping_add(1);
        cache.rooms.remove(room_id);
    }

    /// Rooms of a user with membership record `(membership, stream position, forgotten)`.
    pub fn user_rooms(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
        let prefix = UserRoomKey::prefix(user.as_str());
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Table::UserroomMembership, &prefix)? {
            let room =
                OwnedRoomId::try_from(UserRoomKey::decode(&k)?.room_id).map_err(Error::internal)?;
            out.push((room, serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    pub fn user_room(&self, user: &UserId, room_id: &RoomId) -> Result<Option<MembershipRecord>> {
        let key = UserRoomKey {
            user_id: user.as_str(),
            room_id: room_id.as_str(),
        }
        .encode();
        match self.db.get(Table::UserroomMembership, &key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Power level of `user` given a state map (creators of v12 rooms are above everyone).
    pub fn power_level(&self, version: &str, state: &StateMap, user: &UserId) -> Result<i64> {
        if rules_for(version)?
            .authorization
            .explicitly_privilege_room_creators
        {
            if let Some(create) = self.state_pdu(state, "m.room.create", "")? {
                let extra = create.content_value();
                let additional = extra
                    .get("additional_creators")
                    .and_then(|a| a.as_array())
                    .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str())));
                if create.sender == user || additional {
                    return Ok(i64::MAX);
                }
            }
        }
        match self.state_content(state, "m.room.power_levels", "")? {
            Some(pl) => Ok(pl
                .get("users")
                .and_then(|u| u.get(user.as_str()))
                .and_then(json_int)
                .or_else(|| pl.get("users_default").and_then(json_int))
                .unwrap_or(0)),
            None => {
                // No power levels: the creator has 100.
                let create = self.state_pdu(state, "m.room.create", "")?;
                Ok(if create.is_some_and(|c| c.sender == user) {
                    100
                } else {
                    0
                })
            }
        }
    }

    /// A named level from the power levels (`redact`, `kick`, ...), with the spec default.
    pub fn required_level(&self, state: &StateMap, name: &str, default: i64) -> Result<i64> {
        Ok(self
            .state_content(state, "m.room.power_levels", "")?
            .and_then(|pl| pl.get(name).and_then(json_int))
            .unwrap_or(default))
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        self.room_locks
            .lock()
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    // ----- the pipeline -----

    /// Builds, signs, authorizes and appends a local event to an existing room.
    #[instrument(skip_all, fields(room_id = %room_id, kind = %new.kind))]
    pub async fn append(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: NewEvent,
    ) -> Result<OwnedEventId> {
        // Push rules are evaluated before taking the room lock (they cost more than the rest
        // of the pipeline, and only need the event's type, content and sender), then written
        // in the event's own batch.
        let notes = {
            let before = self.room_or_404(room_id)?;
            let state = self.state(before.state)?;
            let mut provisional = serde_json::json!({
                "type": new.kind.to_string(), "content": new.content, "sender": sender,
                "room_id": room_id, "origin_server_ts": now_ms(),
            });
            if let Some(k) = &new.state_key {
                provisional["state_key"] = serde_json::json!(k);
            }
            self.evaluate_push(room_id, &before.version, &state, sender, &provisional)?
        };
        let (event_id, follow_ups) = {
            let lock = self.room_lock(room_id);
            let _guard = lock.lock().await;
            let room = self.room_or_404(room_id)?;
            if let Some(txn) = &new.txn {
                if let Some(existing) = self
                    .db
                    .get(Table::TxnEventid, &txn_key(sender, room_id, txn))?
                {
                    return OwnedEventId::try_from(String::from_utf8_lossy(&existing).into_owned())
                        .map_err(Error::internal);
                }
            }
            self.append_locked(room_id, room, sender, new, notes)?
        };
        // After the room's lock: a follow-up may append to this room too.
        hooks::run(follow_ups).await;
        Ok(event_id)
    }

    /// The checks of a local user's state event before it is sent (`PUT /state`, and a
    /// delayed state event when it is due) that the auth rules would answer less clearly:
    /// only a member sets a room's state (one's own membership aside: a room this server does
    /// not know is `404`), and a canonical alias must point at the room (`400 M_BAD_ALIAS`).
    pub fn check_state_submission(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        kind: &str,
        content: &serde_json::Value,
    ) -> Result<()> {
        if !self.is_joined(room_id, sender)? && kind != "m.room.member" {
            self.room_or_404(room_id)?;
            return Err(Error::forbidden("you are not in this room"));
        }
        if kind == "m.room.canonical_alias" {
            let aliases = content["alias"].as_str().into_iter().chain(
                content["alt_aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str()),
            );
            for alias in aliases {
                let alias = ruma::OwnedRoomAliasId::try_from(alias)
                    .map_err(|_| Error::invalid_param(format!("{alias:?} is not a room alias")))?;
                if self.resolve_alias(&alias)?.as_deref() != Some(room_id) {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        paracord_core::ErrorKind::BadAlias,
                        format!("{alias} does not point at this room"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends a local user's state event (checked with [`Rooms::check_state_submission`]).
    /// One's own join (also a join -> join profile change) goes through the join path, which
    /// sets `join_authorised_via_users_server` itself: whatever the client put there is
    /// ignored, as for `/join`.
    pub async fn send_state(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: NewEvent,
    ) -> Result<OwnedEventId> {
        if new.kind == TimelineEventType::RoomMember
            && new.state_key.as_deref() == Some(sender.as_str())
            && membership::membership_of(&new.content) == Some(MembershipState::Join)
        {
            let content = new.content.as_object().cloned().unwrap_or_default();
            return self.join_with(room_id, sender, content).await;
        }
        self.append(room_id, sender, new).await
    }

    fn append_locked(
        &self,
        room_id: &RoomId,
        room: RoomRecord,
        sender: &UserId,
        new: NewEvent,
        notes: Vec<notify::Notification>,
    ) -> Result<(OwnedEventId, Vec<hooks::FollowUp>)> {
        let rules = rules_for(&room.version)?;
        let state = self.state(room.state)?;
        self.check_local_content(&rules, &state, &new)?;
        if let Some(current) = self.same_state(&state, sender, &new)? {
            return Ok((current, Vec::new()));
        }
        let obj = self.template(room_id, &room, &state, sender, &new)?;
        let (event_id, pdu, pdu_bytes) = self.sign(obj, &rules, Some(room_id))?;
        self.authorize(&rules, &pdu, &state)?;
        self.check_redaction(&room, &state, &pdu)?;
        let relation = self.check_relation(room_id, &pdu)?;
        self.policy.check_submitted(self, room_id, &state, &pdu)?;
        let (_, follow_ups) = self.commit_event(
            room_id,
            room,
            &state,
            pdu,
            pdu_bytes,
            event_id.clone(),
            Local {
                txn: new.txn,
                delay_id: new.delay_id,
            },
            relation,
            notes,
        )?;
        Ok((event_id, follow_ups))
    }

    /// Bad input in a local event, refused with a 400 before the auth rules (which would
    /// answer 403): a second create event; power levels listing a creator of a room version
    /// that privileges its creators (MSC4289).
    fn check_local_content(
        &self,
        rules: &RoomVersionRules,
        state: &StateMap,
        new: &NewEvent,
    ) -> Result<()> {
        if new.kind == TimelineEventType::RoomCreate {
            return Err(Error::bad_json(
                "a room has one create event, made with the room",
            ));
        }
        if new.kind != TimelineEventType::RoomPowerLevels
            || !rules.authorization.explicitly_privilege_room_creators
        {
            return Ok(());
        }
        let Some(users) = new.content.get("users").and_then(|u| u.as_object()) else {
            return Ok(());
        };
        let Some(create) = self.state_pdu(state, "m.room.create", "")? else {
            return Ok(());
        };
        let mut creators = vec![create.sender.to_string()];
        if let Some(extra) = create
            .content_value()
            .get("additional_creators")
            .and_then(|a| a.as_array())
        {
            creators.extend(extra.iter().filter_map(|u| u.as_str().map(str::to_owned)));
        }
        if let Some(c) = creators.iter().find(|c| users.contains_key(c.as_str())) {
            return Err(Error::bad_json(format!(
                "{c} is a creator of the room: creators are not listed in power levels"
            )));
        }
        Ok(())
    }

    /// The current state event that a new state event would only repeat (same type, state
    /// key, sender and content): sending it again changes nothing, so no event is made and
    /// the current one is the answer, as other servers do for a repeated join or a no-op state
    /// change.
    fn same_state(
        &self,
        state: &StateMap,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<Option<OwnedEventId>> {
        let Some(key) = &new.state_key else {
            return Ok(None);
        };
        if new.redacts.is_some() {
            return Ok(None);
        }
        let Some(short) = state.get(&(new.kind.to_string(), key.clone())) else {
            return Ok(None);
        };
        let Some(current) = self.pdu_by_short(*short)? else {
            return Ok(None);
        };
        Ok(
            (current.sender == sender && current.content_value() == new.content)
                .then_some(current.event_id),
        )
    }

    /// An unsigned event built on the room's current state: auth events chosen by
    /// `auth_types_for_event`, `prev_events` = the forward extremities.
    pub(crate) fn template(
        &self,
        room_id: &RoomId,
        room: &RoomRecord,
        state: &StateMap,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<CanonicalJsonObject> {
        let rules = rules_for(&room.version)?;
        let content_raw = serde_json::value::to_raw_value(&new.content)?;
        let auth_types = auth_types_for_event(
            &new.kind,
            sender,
            new.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(Error::bad_json)?;
        let mut auth_events = Vec::new();
        for (t, k) in auth_types {
            if let Some(s) = state.get(&(t.to_string(), k)) {
                if let Some(meta) = self.meta(*s)? {
                    auth_events.push(meta.event_id);
                }
            }
        }
        let mut obj = CanonicalJsonObject::new();
        obj.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
        let depth = room.depth.saturating_add(1);
        self.fill_common(
            &mut obj,
            sender,
            new,
            auth_events,
            room.extremities.clone(),
            depth,
            &rules,
        )?;
        Ok(obj)
    }

    /// A join-event template for a user of another server (`make_join`), checked against the
    /// room's current state. Returns the room version too.
    pub fn join_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
    ) -> Result<(String, CanonicalJsonObject)> {
        let mut content = serde_json::json!({ "membership": membership });
        if membership == "join" {
            if let Some(authoriser) = self.join_authoriser(room_id, user)? {
                content["join_authorised_via_users_server"] = serde_json::json!(authoriser);
            }
        }
        let new = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content);
        self.checked_template(room_id, user, &new)
    }

    /// An unsigned event on the room's current state that the room would allow now (for
    /// events that another server must see before they are committed). Returns the room
    /// version too.
    pub fn checked_template(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<(String, CanonicalJsonObject)> {
        let room = self.room_or_404(room_id)?;
        let state = self.state(room.state)?;
        let obj = self.template(room_id, &room, &state, sender, new)?;
        let rules = rules_for(&room.version)?;
        let mut probe = obj.clone();
        probe.insert(
            "hashes".into(),
            CanonicalJsonValue::Object(Default::default()),
        );
        let pdu = Pdu::from_json(ruma::event_id!("$probe").to_owned(), &obj_bytes(&probe)?)?;
        self.check_against_state(&rules, &pdu, &state)
            .map_err(|e| Error::forbidden(format!("not allowed: {e}")))?;
        self.policy.check_submitted(self, room_id, &state, &pdu)?;
        Ok((room.version, obj))
    }

    /// Hashes and signs an event of a room version with this server's key: the event id, the
    /// parsed PDU and its canonical JSON.
    pub fn sign_event(
        &self,
        obj: CanonicalJsonObject,
        version: &str,
    ) -> Result<(OwnedEventId, Pdu, Vec<u8>)> {
        let rules = rules_for(version)?;
        let (id, _, bytes) = self.sign(obj, &rules, None)?;
        let pdu = Pdu::from_json(id.clone(), &bytes)?;
        Ok((id, pdu, bytes))
    }

    /// Adds this server's signature to an event of a room version signed by others (the
    /// event id does not change).
    pub fn cosign(&self, obj: &mut CanonicalJsonObject, version: &str) -> Result<()> {
        let rules = rules_for(version)?;
        ruma::signatures::sign_event(
            self.config.server_name.as_str(),
            self.keys.keypair(),
            obj,
            &rules.redaction,
        )
        .map_err(|e| Error::bad_json(format!("event cannot be signed: {e}")))
    }

    /// Adds the fields every PDU has.
    #[allow(clippy::too_many_arguments)]
    fn fill_common(
        &self,
        obj: &mut CanonicalJsonObject,
        sender: &UserId,
        new: &NewEvent,
        auth_events: Vec<OwnedEventId>,
        prev_events: Vec<OwnedEventId>,
        depth: u64,
        rules: &RoomVersionRules,
    ) -> Result<()> {
        // Spec size limits: `type` and `state_key` (like the ids) are at most 255 bytes.
        let kind = new.kind.to_string();
        if kind.len() > MAX_ID_FIELD_BYTES {
            return Err(Error::too_large("the event type is longer than 255 bytes"));
        }
        if new
            .state_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_ID_FIELD_BYTES)
        {
            return Err(Error::too_large("the state key is longer than 255 bytes"));
        }
        let mut content = pdu::to_canonical_object(new.content.clone())?;
        if let Some(r) = &new.redacts {
            if rules.redaction.content_field_redacts {
                content.insert("redacts".into(), CanonicalJsonValue::String(r.to_string()));
            }
        }
        obj.insert("type".into(), CanonicalJsonValue::String(kind));
        obj.insert(
            "sender".into(),
            CanonicalJsonValue::String(sender.to_string()),
        );
        obj.insert("content".into(), CanonicalJsonValue::Object(content));
        if let Some(k) = &new.state_key {
            obj.insert("state_key".into(), CanonicalJsonValue::String(k.clone()));
        }
        if let Some(r) = &new.redacts {
            // v11+ keep `redacts` in content (the client puts it there); older versions at top level.
            if !rules.redaction.content_field_redacts {
                obj.insert("redacts".into(), CanonicalJsonValue::String(r.to_string()));
            }
        }
        obj.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(new.ts.unwrap_or_else(now_ms)).unwrap_or_default(),
            ),
        );
        obj.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(depth).map_err(Error::internal)?),
        );
        let auth_events = self.event_refs(&auth_events, rules)?;
        obj.insert("auth_events".into(), CanonicalJsonValue::Array(auth_events));
        let prev_events = self.event_refs(&prev_events, rules)?;
        obj.insert("prev_events".into(), CanonicalJsonValue::Array(prev_events));
        Ok(())
    }

    /// `prev_events`/`auth_events` entries in the room version's format.
    fn event_refs(
        &self,
        ids: &[OwnedEventId],
        rules: &RoomVersionRules,
    ) -> Result<Vec<CanonicalJsonValue>> {
        let pairs = rules.events_reference_format
            == ruma::room_version_rules::EventsReferenceFormatVersion::V1;
        ids.iter()
            .map(|id| {
                let referenced = match pairs {
                    true => match self.short_id(id)? {
                        Some(short) => self.raw_pdu(short)?.and_then(|raw| {
                            serde_json::from_slice::<CanonicalJsonObject>(&raw).ok()
                        }),
                        None => None,
                    },
                    false => None,
                };
                Ok(pdu::event_ref(id, referenced.as_ref(), rules))
            })
            .collect()
    }

    fn sign_obj(
        &self,
        mut obj: CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<CanonicalJsonObject> {
        hash_and_sign_event(
            self.config.server_name.as_str(),
            self.keys.keypair(),
            &mut obj,
            &rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => {
                Error::too_large("event is larger than 65535 bytes of canonical JSON")
            }
            other => Error::bad_json(format!("event cannot be signed: {other}")),
        })?;
        Ok(obj)
    }

    /// Hashes and signs `obj`, returning the event id and the parsed PDU. For a v12 create
    /// event (`room_id` None) the room id derives from the event id.
    fn sign(
        &self,
        obj: CanonicalJsonObject,
        rules: &RoomVersionRules,
        room_id: Option<&RoomId>,
    ) -> Result<(OwnedEventId, Pdu, Vec<u8>)> {
        let mut obj = obj;
        if rules.event_id_format == EventIdFormatVersion::V1 && !obj.contains_key("event_id") {
            // Room versions 1 and 2: `$opaque:server`, chosen by the server that makes it.
            obj.insert(
                "event_id".into(),
                CanonicalJsonValue::String(format!(
                    "${}:{}",
                    crate::random::random_string(18),
                    self.config.server_name
                )),
            );
        }
        let signed = self.sign_obj(obj, rules)?;
        let bytes = obj_bytes(&signed)?;
        if bytes.len() > pdu::MAX_PDU_BYTES {
            return Err(Error::too_large(
                "event is larger than 65535 bytes of canonical JSON",
            ));
        }
        let event_id = pdu::event_id_of(&signed, rules).map_err(|e| {
            if matches!(
                reference_hash(&signed, rules),
                Err(ruma::signatures::JsonError::PduTooLarge)
            ) {
                Error::too_large("event is larger than 65535 bytes of canonical JSON")
            } else {
                Error::bad_json(format!("event cannot be hashed: {e}"))
            }
        })?;
        let mut pdu = Pdu::from_json(event_id.clone(), &bytes)?;
        if room_id.is_none() {
            pdu.room_id = None;
        }
        Ok((event_id, pdu, bytes))
    }

    /// Checks an event against ruma's auth rules: its auth events, then the state before it.
    fn authorize(&self, rules: &RoomVersionRules, pdu: &Pdu, state: &StateMap) -> Result<()> {
        check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
            self.pdu(id).ok().flatten()
        })
        .map_err(|e| Error::forbidden(format!("event not allowed: {e}")))?;
        check_state_dependent_auth_rules(
            &rules.authorization,
            pdu,
            |t: &StateEventType, k: &str| {
                state
                    .get(&(t.to_string(), k.to_owned()))
                    .and_then(|s| self.pdu_by_short(*s).ok().flatten())
            },
        )
        .map_err(|e| Error::forbidden(format!("event not allowed: {e}")))
    }

    /// A redaction is applied only if its sender sent the original or may redact others.
    fn check_redaction(&self, room: &RoomRecord, state: &StateMap, pdu: &Pdu) -> Result<()> {
        if pdu.kind != TimelineEventType::RoomRedaction {
            return Ok(());
        }
        let target_id = pdu
            .redacts
            .clone()
            .ok_or_else(|| Error::bad_json("redaction without target"))?;
        let can_redact_others = |s: &Self| -> Result<bool> {
            Ok(s.power_level(&room.version, state, &pdu.sender)?
                >= s.required_level(state, "redact", 50)?)
        };
        let Some(target) = self.pdu(&target_id)? else {
            // An event this server does not have: a redaction by someone who may redact anyone's
            // events is still sent, for the servers that have it. (This server does not
            // remember it for the event's later arrival.)
            if can_redact_others(self)? {
                return Ok(());
            }
            return Err(Error::not_found("event to redact not found"));
        };
        if target
            .room_id
            .as_deref()
            .is_some_and(|r| Some(r) != pdu.room_id.as_deref())
        {
            return Err(Error::not_found("event to redact not found in this room"));
        }
        if target.sender != pdu.sender && !can_redact_others(self)? {
            return Err(Error::forbidden("you may not redact other users' events"));
        }
        Ok(())
    }

    /// Writes an authorized local event (see [`Rooms::commit`]), follows a local user's join
    /// into the room's predecessor and hands the event to the federation sender. The
    /// observers' follow-ups are returned, for the caller to run once it let go of the
    /// room's lock.
    #[allow(clippy::too_many_arguments)]
    fn commit_event(
        &self,
        room_id: &RoomId,
        room: RoomRecord,
        state: &StateMap,
        pdu: Pdu,
        pdu_bytes: Vec<u8>,
        event_id: OwnedEventId,
        local: Local,
        relation: Option<relations::Relation>,
        notes: Vec<notify::Notification>,
    ) -> Result<(u64, Vec<hooks::FollowUp>)> {
        let redact_target = match pdu.kind {
            TimelineEventType::RoomRedaction => pdu.redacts.clone(),
            _ => None,
        };
        let state_before = room.state;
        let committed = self.commit(
            room_id,
            room,
            commit::Accepted {
                event_id: &event_id,
                pdu: &pdu,
                bytes: &pdu_bytes,
                before: commit::Before {
                    id: state_before,
                    map: state,
                    resolved: false,
                },
                soft_failed: false,
                existing_short: None,
                txn: local.txn.as_ref(),
                delay_id: local.delay_id.as_deref(),
                relation: relation.as_ref(),
                notes: &notes,
                redact_target: redact_target.as_ref(),
                starts_timeline: None,
            },
        )?;
        if let Some(user) = commit::member_target(&pdu) {
            if membership::membership_of(&pdu.content_value()) == Some(MembershipState::Join)
                && user.server_name() == self.config.server_name.as_str()
                && self.membership_in(state, &user)? != Some(MembershipState::Join)
            {
                self.follow_predecessor(room_id, state, &user);
            }
        }
        let follow_ups = self.after_commit(
            room_id,
            &pdu,
            &notes,
            redact_target.as_deref(),
            committed.changed_members,
        )?;
        self.send_out(room_id, &event_id, &pdu, &pdu_bytes)?;
        Ok((committed.pos, follow_ups))
    }

    /// What follows a commit: notifications to the push sender, the redacted event's parsed
    /// copy dropped, and everyone who can see the room (and a membership's target) woken.
    pub(crate) fn after_commit(
        &self,
        room_id: &RoomId,
        pdu: &Pdu,
        notes: &[notify::Notification],
        redact_target: Option<&EventId>,
        changed_members: Vec<OwnedUserId>,
    ) -> Result<Vec<hooks::FollowUp>> {
        let mut follow_ups = Vec::new();
        if let Some(me) = self.me.upgrade() {
            for o in &self.observers {
                follow_ups.extend(o.committed(&me, room_id, pdu, notes));
            }
        }
        if let Some(target) = redact_target {
            if let Some(short) = self.short_id(target)? {
                self.pdu_cache.lock().remove(&short);
            }
        }
        let members = self.shared_members(room_id)?;
        self.stream.notifier().wake(
            members
                .joined
                .iter()
                .chain(&changed_members)
                .map(|u| u.as_ref()),
        );
        Ok(follow_ups)
    }

    /// Hands a local event to the federation sender, for every other server with a member
    /// in the room after it, and the server of a membership event's target.
    fn send_out(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &Pdu,
        bytes: &[u8],
    ) -> Result<()> {
        self.send_out_to(room_id, event_id, pdu, bytes, None)
    }

    /// Passes on an event placed here from outside the local pipeline (a join or leave
    /// another server sent us directly, an invite its invitee's server signed) to the other
    /// servers in the room, but `except`.
    pub fn send_out_except(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        bytes: &[u8],
        except: Option<&ruma::ServerName>,
    ) -> Result<()> {
        let pdu = Pdu::from_json(event_id.to_owned(), bytes)?;
        self.send_out_to(room_id, event_id, &pdu, bytes, except)
    }

    fn send_out_to(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &Pdu,
        bytes: &[u8],
        except: Option<&ruma::ServerName>,
    ) -> Result<()> {
        let Some(outgoing) = &self.outgoing else {
            return Ok(());
        };
        let mut servers = self.servers_in_room(room_id)?;
        if pdu.kind == TimelineEventType::RoomMember {
            if let Some(user) = pdu
                .state_key
                .as_deref()
                .and_then(|k| <&UserId>::try_from(k).ok())
            {
                servers.insert(user.server_name().to_owned());
            }
        }
        servers.remove(self.config.server_name.as_str());
        if let Some(e) = except {
            servers.remove(e);
        }
        if servers.is_empty() {
            return Ok(());
        }
        let servers: Vec<_> = servers.into_iter().collect();
        outgoing(&servers, event_id, bytes)
    }

    /// The servers with a joined member in a room (this one included when it has one).
    pub fn servers_in_room(
        &self,
        room_id: &RoomId,
    ) -> Result<std::collections::BTreeSet<ruma::OwnedServerName>> {
        Ok(self
            .shared_members(room_id)?
            .joined
            .iter()
            .map(|u| u.server_name().to_owned())
            .collect())
    }

    /// Replaces the stored target of a redaction with its redacted form.
    fn redact_into(
        &self,
        batch: &mut Batch,
        target: &EventId,
        redaction_id: &EventId,
        rules: &RoomVersionRules,
    ) -> Result<()> {
        let Some(short) = self.short_id(target)? else {
            return Ok(());
        };
        let (Some(raw), Some(mut meta)) = (self.raw_pdu(short)?, self.meta(short)?) else {
            return Ok(());
        };
        self.unindex_relation(
            batch,
            &serde_json::from_slice::<serde_json::Value>(&raw).unwrap_or(serde_json::Value::Null),
            short,
        )?;
        if let Some(search) = &self.search {
            search.unindex_into(batch, short)?;
        }
        let obj: CanonicalJsonObject = serde_json::from_slice(&raw)?;
        let redacted = ruma::canonical_json::redact(obj, &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        meta.redacted_by = Some(redaction_id.to_owned());
        batch.put(
            Table::ShorteventidPdu,
            short.to_be_bytes().to_vec(),
            obj_bytes(&redacted)?,
        );
        batch.put(
            Table::ShorteventidMeta,
            short.to_be_bytes().to_vec(),
            serde_json::to_vec(&meta)?,
        );
        Ok(())
    }
}

/// A user's membership in a room, as indexed for sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub membership: MembershipState,
    pub pos: u64,
    pub event_id: OwnedEventId,
    #[serde(default)]
    pub forgotten: bool,
}

fn txn_key(sender: &UserId, room_id: &RoomId, (device, txn): &(String, String)) -> Vec<u8> {
    TxnKey {
        user_id: sender.as_str(),
        device_id: device,
        room_id: room_id.as_str(),
        txn_id: txn,
    }
    .encode()
}

/// Writes the state snapshot of a state event with short id `short` that sets `entry` on top
/// of `state_before` (whose map is `state` and chain length `depth`): a delta, or a full map
/// when the chain got long.
pub(crate) fn write_state_snapshot(
    batch: &mut Batch,
    snapshot: u64,
    state_before: u64,
    depth: u32,
    state: &StateMap,
    entry: (&str, &str),
    short: u64,
) -> Result<()> {
    let (kind, key) = entry;
    let snap = if depth >= MAX_SNAPSHOT_DEPTH || state_before == 0 {
        let mut full: Vec<_> = state
            .iter()
            .filter(|((t, sk), _)| !(t == kind && sk == key))
            .map(|((t, sk), s)| (t.clone(), sk.clone(), *s))
            .collect();
        full.push((kind.to_owned(), key.to_owned(), short));
        Snapshot {
            parent: 0,
            depth: 0,
            changes: full,
        }
    } else {
        Snapshot {
            parent: state_before,
            depth: depth + 1,
            changes: vec![(kind.to_owned(), key.to_owned(), short)],
        }
    };
    batch.put(
        Table::SnapshotidState,
        snapshot.to_be_bytes().to_vec(),
        serde_json::to_vec(&snap)?,
    );
    Ok(())
}

/// Writes a whole state map as a snapshot of its own.
pub(crate) fn write_full_snapshot(
    batch: &mut Batch,
    snapshot: u64,
    state: &StateMap,
) -> Result<()> {
    let snap = Snapshot {
        parent: 0,
        depth: 0,
        changes: state
            .iter()
            .map(|((t, sk), s)| (t.clone(), sk.clone(), *s))
            .collect(),
    };
    batch.put(
        Table::SnapshotidState,
        snapshot.to_be_bytes().to_vec(),
        serde_json::to_vec(&snap)?,
    );
    Ok(())
}

/// The rows every stored event has: id ↔ short id, the PDU and its metadata.
pub(crate) fn write_event_rows(
    batch: &mut Batch,
    short: u64,
    event_id: &EventId,
    pdu_bytes: &[u8],
    meta: &EventMeta,
) -> Result<()> {
    batch.put(
        Table::EventidShorteventid,
        event_id.as_bytes().to_vec(),
        short.to_be_bytes().to_vec(),
    );
    batch.put(
        Table::ShorteventidPdu,
        short.to_be_bytes().to_vec(),
        pdu_bytes.to_vec(),
    );
    batch.put(
        Table::ShorteventidMeta,
        short.to_be_bytes().to_vec(),
        serde_json::to_vec(meta)?,
    );
    Ok(())
}

/// Places an event (short id `short`, sent at `ts`) in a room's timeline at stream position
/// `pos`: by position, and by timestamp for `/timestamp_to_event`.
pub(crate) fn put_timeline_row(batch: &mut Batch, room_id: &RoomId, pos: u64, short: u64, ts: u64) {
    let room_id = room_id.as_str();
    batch.put(
        Table::RoompositionShorteventid,
        RoomPosKey { room_id, pos }.encode(),
        short.to_be_bytes().to_vec(),
    );
    batch.put(
        Table::RoomtsposShorteventid,
        RoomTsPosKey { room_id, ts, pos }.encode(),
        short.to_be_bytes().to_vec(),
    );
}

/// A room's members: everyone with a membership, and those joined.
pub(crate) struct RoomMembers {
    pub(crate) all: Vec<(OwnedUserId, MembershipState)>,
    pub(crate) joined: Vec<OwnedUserId>,
}

/// Member lists by room, and a count of membership writes: a list read while one was written
/// is not kept (it may predate the write).
#[derive(Default)]
struct MembersCache {
    rooms: HashMap<OwnedRoomId, Arc<RoomMembers>>,
    generation: u64,
}

/// Rooms whose member lists are kept in memory.
const MEMBERS_CACHE_ROOMS: usize = 1024;
/// Event ids whose short ids are kept in memory.
const SHORT_CACHE_ENTRIES: usize = 16_384;

/// Indexes `user`'s membership `m` in a room, set by `event_id` at stream position `pos`.
/// The caller calls [`Rooms::members_changed`] once the batch is written.
pub(crate) fn write_membership(
    batch: &mut Batch,
    room_id: &RoomId,
    user: &UserId,
    m: &str,
    pos: u64,
    event_id: &EventId,
) -> Result<()> {
    let rec = MembershipRecord {
        membership: MembershipState::from(m),
        pos,
        event_id: event_id.to_owned(),
        forgotten: false,
    };
    let (room_id, user_id) = (room_id.as_str(), user.as_str());
    batch.put(
        Table::UserroomMembership,
        UserRoomKey { user_id, room_id }.encode(),
        serde_json::to_vec(&rec)?,
    );
    batch.put(
        Table::RoomuserMembership,
        RoomUserKey { room_id, user_id }.encode(),
        m.as_bytes().to_vec(),
    );
    Ok(())
}

pub(crate) fn obj_bytes(obj: &CanonicalJsonObject) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(obj)?)
}

pub(crate) fn json_int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::{create::CreateRoom, *};
    use crate::Services;

    /// A server on a fresh data directory.
    pub(crate) fn services() -> (tempfile::TempDir, Services) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        (dir, Services::open(config).unwrap())
    }

    fn create(version: Option<&str>) -> CreateRoom {
        CreateRoom {
            version: version.map(str::to_owned),
            preset: None,
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
        }
    }

    #[tokio::test]
    async fn state_snapshots_fold_deltas_and_match_every_change() {
        let (_dir, s) = services();
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let room = s.rooms.create_room(&alice, create(None)).await.unwrap();
        // More state changes than MAX_SNAPSHOT_DEPTH, so a full snapshot gets written.
        for i in 0..(MAX_SNAPSHOT_DEPTH as usize + 8) {
            let ev = NewEvent::state(
                "org.example.counter".into(),
                &format!("k{}", i % 5),
                json!({ "n": i }),
            );
            s.rooms.append(&room, &alice, ev).await.unwrap();
        }
        let record = s.rooms.room(&room).unwrap().unwrap();
        assert!(s.rooms.snapshot_depth(record.state).unwrap() < MAX_SNAPSHOT_DEPTH);
        let state = s.rooms.current_state(&room).unwrap();
        for k in 0..5 {
            let content = s
                .rooms
                .state_content(&state, "org.example.counter", &format!("k{k}"))
                .unwrap()
                .unwrap();
            let last = (0..(MAX_SNAPSHOT_DEPTH as usize + 8))
                .filter(|i| i % 5 == k)
                .max()
                .unwrap();
            assert_eq!(content["n"], last, "k{k} holds the newest value");
        }
        assert_eq!(
            s.rooms
                .state_content(&state, "m.room.name", "")
                .unwrap()
                .unwrap()["name"],
            "test"
        );
    }

    #[tokio::test]
    async fn events_are_signed_pdus_with_reference_hash_ids() {
        let (_dir, s) = services();
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        for version in ["10", "11", "12"] {
            let room = s
                .rooms
                .create_room(&alice, create(Some(version)))
                .await
                .unwrap();
            let id = s
                .rooms
                .append(
                    &room,
                    &alice,
                    NewEvent::message("m.room.message".into(), json!({"body": "hi"})),
                )
                .await
                .unwrap();
            let short = s.rooms.short_id(&id).unwrap().unwrap();
            let raw = s.rooms.raw_pdu(short).unwrap().unwrap();
            let obj: CanonicalJsonObject = serde_json::from_slice(&raw).unwrap();
            let rules = rules_for(version).unwrap();
            assert_eq!(
                format!("${}", reference_hash(&obj, &rules).unwrap()),
                id.as_str(),
                "v{version}"
            );
            let pdu = s.rooms.pdu(&id).unwrap().unwrap();
            assert!(
                !pdu.auth_events.is_empty() && pdu.prev_events.len() == 1,
                "v{version}: {pdu:?}"
            );
            let sigs = &serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["signatures"]
                ["localhost"];
            assert!(
                sigs.get(s.keys.key_id()).is_some(),
                "v{version} signed by {}",
                s.keys.key_id()
            );
        }
    }

    #[tokio::test]
    async fn auth_rules_reject_non_members_and_missing_power() {
        let (_dir, s) = services();
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let bob = OwnedUserId::try_from("@bob:localhost").unwrap();
        let room = s.rooms.create_room(&alice, create(None)).await.unwrap();
        let msg = NewEvent::message("m.room.message".into(), json!({"body": "x"}));
        assert!(
            s.rooms.append(&room, &bob, msg.clone()).await.is_err(),
            "non-member may not send"
        );
        assert!(
            s.rooms.join(&room, &bob, (None, None), None).await.is_err(),
            "invite-only room"
        );
        s.rooms
            .invite(&room, &alice, &bob, None, false)
            .await
            .unwrap();
        s.rooms.join(&room, &bob, (None, None), None).await.unwrap();
        s.rooms.append(&room, &bob, msg).await.unwrap();
        let name = NewEvent::state(TimelineEventType::RoomName, "", json!({"name": "bob's"}));
        assert!(
            s.rooms.append(&room, &bob, name).await.is_err(),
            "state_default is 50"
        );
    }

    #[tokio::test]
    async fn redaction_replaces_the_stored_and_cached_event() {
        let (_dir, s) = services();
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let room = s.rooms.create_room(&alice, create(None)).await.unwrap();
        let id = s
            .rooms
            .append(
                &room,
                &alice,
                NewEvent::message("m.room.message".into(), json!({"body": "secret"})),
            )
            .await
            .unwrap();
        // Parse it once so it is cached.
        assert_eq!(
            s.rooms.pdu(&id).unwrap().unwrap().content_value()["body"],
            "secret"
        );
        let mut redaction = NewEvent::message(TimelineEventType::RoomRedaction, json!({}));
        redaction.redacts = Some(id.clone());
        s.rooms.append(&room, &alice, redaction).await.unwrap();
        assert_eq!(
            s.rooms.pdu(&id).unwrap().unwrap().content_value(),
            json!({})
        );
        let raw = s
            .rooms
            .raw_pdu(s.rooms.short_id(&id).unwrap().unwrap())
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("secret"));
    }
}
