//! What other servers may read of a room: single events, the state and auth chain at an event,
//! missing `prev_events` and backfill, and the room's server ACL, which guards all of them.
//!
//! Everything here reads the event tables (`eventid_shorteventid`, `shorteventid_pdu`,
//! `shorteventid_meta`) and never the timeline, so events stored without a timeline position
//! (outliers) are served too. PDUs go out as stored, in federation format with their hashes and
//! signatures; only an `unsigned` section, if one was stored, is removed.
//!
//! # Who may read what
//!
//! The spec requires the server ACL on every room-scoped federation read ("Server Access Control
//! Lists") and says `/state_ids` is refused to "the requesting host [that] is not in the room";
//! for the rest it leaves access to history visibility. The rules here follow Synapse's
//! `filter_events_for_server`, widened so that a server with no member in a `world_readable`
//! room may still read it (as any client may):
//!
//! * A server's *view* of one event ([`ServerView`]) depends on the room's
//!   `m.room.history_visibility` at the event (the more permissive of the values before and
//!   after it, so the event that changes it counts under both):
//!   `world_readable` → everyone; `shared` → servers with a joined member now or at the event;
//!   `invited` → servers with a joined or invited member at the event; `joined` → servers with
//!   a joined member at the event. "At the event" means in the state before or after it, so a
//!   server sees its own user's leave. Otherwise the server sees the event redacted if it has a
//!   joined member in the room now (so it can still link the DAG), else not at all.
//! * `/event`, `/state`, `/state_ids`, `/event_auth` need the asked event not to be hidden from
//!   the server; the state and auth chains then go out whole, since they are what a server
//!   needs to take part in the room.
//! * `/backfill` and `/get_missing_events` need every asked event that is known here not to be
//!   hidden. Walked events the server may not see in full go out redacted in `/backfill`; in
//!   `/get_missing_events` they go out redacted to a server in the room (it needs them to link
//!   the DAG; Complement checks these redacted copies) and not at all to others.

use std::{
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use paracord_core::{Error, ErrorKind, Result};
use ruma::{
    canonical_json::CanonicalJsonObject, room_version_rules::RoomVersionRules, EventId,
    OwnedEventId, RoomId, ServerName, UserId,
};
use serde_json::{value::RawValue, Value};
use tracing::instrument;

use super::{membership::membership_of, rules_for, EventMeta, Rooms, StateMap};

/// An auth chain longer than this is refused rather than cut short.
pub const MAX_AUTH_CHAIN: usize = 100_000;
/// The most events one `/backfill` answers with.
pub const MAX_BACKFILL: usize = 100;
/// The most events one `/get_missing_events` answers with.
pub const MAX_MISSING_EVENTS: usize = 100;

/// `/state`'s answer: the state's PDUs and their auth chain's.
pub type StatePdus = (Vec<Box<RawValue>>, Vec<Box<RawValue>>);

/// How much of one event a server may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerView {
    /// As stored.
    Full,
    /// Redacted with the room version's redaction algorithm.
    Redacted,
    /// Not at all.
    Hidden,
}

/// `m.room.history_visibility`, least permissive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HistoryVisibility {
    Joined,
    Invited,
    Shared,
    WorldReadable,
}

impl HistoryVisibility {
    /// Missing or unknown values are `shared`, as the spec says.
    fn from_content(content: Option<&Value>) -> Self {
        match content
            .and_then(|c| c.get("history_visibility"))
            .and_then(Value::as_str)
        {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// A room's `m.room.server_acl` content.
///
/// Read leniently, like Synapse: `allow_ip_literals` that is not a boolean means `true`, an
/// `allow`/`deny` that is not an array means empty, entries that are not strings are skipped.
/// The rest is the spec's: a missing `allow` denies everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAcl {
    pub allow_ip_literals: bool,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl ServerAcl {
    pub fn from_content(content: &Value) -> Self {
        let globs = |key: &str| -> Vec<String> {
            content
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            allow_ip_literals: content
                .get("allow_ip_literals")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            allow: globs("allow"),
            deny: globs("deny"),
        }
    }

    /// The spec's order: IP literals (if not allowed), then `deny`, then `allow`, else deny.
    /// Only the host is matched; the port is ignored.
    pub fn is_allowed(&self, server: &ServerName) -> bool {
        let host = server.host();
        if !self.allow_ip_literals && is_ip_literal(host) {
            return false;
        }
        if self.deny.iter().any(|g| glob_matches(g, host)) {
            return false;
        }
        self.allow.iter().any(|g| glob_matches(g, host))
    }
}

/// An IPv4 address or a bracketed IPv6 address.
fn is_ip_literal(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// The spec's glob matching (`*` any run of characters, `?` exactly one), case-insensitive.
///
/// Iterative: on a mismatch it moves the last `*` one character further, so it takes
/// O(pattern × text) steps at worst and never recurses.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was: (the pattern after it, the text it has swallowed up to).
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = t.get(ti) {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            Some(&q) if q == '?' || q == c => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((after, swallowed)) => {
                    pi = after;
                    ti = swallowed + 1;
                    star = Some((after, swallowed + 1));
                }
                None => return false,
            },
        }
    }
    p.iter().skip(pi).all(|&c| c == '*')
}

/// A stored event of a room.
#[derive(Clone)]
struct Node {
    short: u64,
    depth: u64,
    meta: EventMeta,
}

impl Rooms {
    // ----- server ACLs -----

    /// Whether `server` may take part in `room_id` under the room's current
    /// `m.room.server_acl`: 403 `M_FORBIDDEN` if not. No ACL event allows everyone; so does a
    /// room this server does not know (it has no ACL here; callers that need the room check
    /// that themselves).
    #[instrument(skip_all, fields(room_id = %room_id, server = %server))]
    pub fn check_server_acl(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        let Some(room) = self.room(room_id)? else {
            return Ok(());
        };
        let state = self.state(room.state)?;
        let Some(content) = self.state_content(&state, "m.room.server_acl", "")? else {
            return Ok(());
        };
        if ServerAcl::from_content(&content).is_allowed(server) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "server {server} is denied by the room's server ACL"
            )))
        }
    }

    // ----- who may see what -----

    /// Whether one of `server`'s users has one of the `wanted` memberships in `state`.
    fn server_has_membership(
        &self,
        state: &StateMap,
        server: &ServerName,
        wanted: &[&str],
    ) -> Result<bool> {
        let from = ("m.room.member".to_owned(), String::new());
        for ((kind, key), short) in state.range(from..) {
            if kind != "m.room.member" {
                break;
            }
            let Ok(user) = <&UserId>::try_from(key.as_str()) else {
                continue;
            };
            if user.server_name() != server {
                continue;
            }
            let membership = self
                .pdu_by_short(*short)?
                .and_then(|p| membership_of(&p.content_value()));
            if membership.is_some_and(|m| wanted.contains(&m.as_str())) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `server` has a joined member in the room's current state.
    pub fn server_in_room(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        let state = self.current_state(room_id)?;
        self.server_has_membership(&state, server, &["join"])
    }

    /// How much of an event `server` may see (see the module documentation); `in_room` is
    /// [`Rooms::server_in_room`] for the event's room.
    pub fn server_view(
        &self,
        server: &ServerName,
        meta: &EventMeta,
        in_room: bool,
    ) -> Result<ServerView> {
        let before = self.state(meta.state_before)?;
        let after = self.state(meta.state_after)?;
        let visibility = |state: &StateMap| -> Result<HistoryVisibility> {
            Ok(HistoryVisibility::from_content(
                self.state_content(state, "m.room.history_visibility", "")?
                    .as_ref(),
            ))
        };
        let at_event = |wanted: &[&str]| -> Result<bool> {
            Ok(self.server_has_membership(&after, server, wanted)?
                || self.server_has_membership(&before, server, wanted)?)
        };
        let visible = match visibility(&before)?.max(visibility(&after)?) {
            HistoryVisibility::WorldReadable => true,
            HistoryVisibility::Shared => in_room || at_event(&["join"])?,
            HistoryVisibility::Invited => at_event(&["join", "invite"])?,
            HistoryVisibility::Joined => at_event(&["join"])?,
        };
        Ok(if visible {
            ServerView::Full
        } else if in_room {
            ServerView::Redacted
        } else {
            ServerView::Hidden
        })
    }

    // ----- reading stored events -----

    /// A stored event of `room_id`, or `None` if it is unknown here or of another room.
    fn room_event(&self, room_id: &RoomId, event_id: &EventId) -> Result<Option<Node>> {
        let Some(short) = self.short_id(event_id)? else {
            return Ok(None);
        };
        self.room_event_by_short(room_id, short)
    }

    fn room_event_by_short(&self, room_id: &RoomId, short: u64) -> Result<Option<Node>> {
        let Some(meta) = self.meta(short)? else {
            return Ok(None);
        };
        if meta.room_id != room_id {
            return Ok(None);
        }
        let Some(pdu) = self.pdu_by_short(short)? else {
            return Ok(None);
        };
        Ok(Some(Node {
            short,
            depth: u64::from(pdu.depth),
            meta,
        }))
    }

    /// A stored PDU as it goes to another server: as stored without `unsigned`, redacted for
    /// [`ServerView::Redacted`]. `None` for an unknown or hidden event.
    pub fn outgoing_pdu(
        &self,
        short: u64,
        view: ServerView,
        rules: &RoomVersionRules,
    ) -> Result<Option<Box<RawValue>>> {
        if view == ServerView::Hidden {
            return Ok(None);
        }
        let Some(raw) = self.raw_pdu(short)? else {
            return Ok(None);
        };
        let mut obj: CanonicalJsonObject = serde_json::from_slice(&raw)?;
        obj.remove("unsigned");
        if view == ServerView::Redacted {
            obj = ruma::canonical_json::redact(obj, &rules.redaction, None)
                .map_err(|e| Error::internal(format!("redacting event {short}: {e}")))?;
        }
        Ok(Some(serde_json::value::to_raw_value(&obj)?))
    }

    /// Full PDUs of stored events, in the given order (events gone since are skipped).
    fn outgoing_pdus(
        &self,
        shorts: &[u64],
        rules: &RoomVersionRules,
    ) -> Result<Vec<Box<RawValue>>> {
        let mut out = Vec::with_capacity(shorts.len());
        for short in shorts {
            if let Some(pdu) = self.outgoing_pdu(*short, ServerView::Full, rules)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    fn event_ids(&self, shorts: &[u64]) -> Result<Vec<OwnedEventId>> {
        let mut out = Vec::with_capacity(shorts.len());
        for short in shorts {
            if let Some(meta) = self.meta(*short)? {
                out.push(meta.event_id);
            }
        }
        Ok(out)
    }

    // ----- the walks -----

    /// The auth chain of the given events of `room_id`: their `auth_events`, and theirs, and
    /// so on, each once, oldest (lowest depth) first. A given event is part of it only when
    /// another one's chain reaches it. Auth events not stored here, or of another room, are
    /// skipped. Iterative; a chain longer than [`MAX_AUTH_CHAIN`] is an error, not cut short.
    pub fn auth_chain(&self, room_id: &RoomId, from: &[u64]) -> Result<Vec<u64>> {
        let room = self.room_or_404(room_id)?;
        // From v12 on the create event is no longer listed but implied by the room id; it is
        // still the root of every auth chain (Synapse adds it the same way).
        let implied_create = if rules_for(&room.version)?
            .authorization
            .room_create_event_id_as_room_id
        {
            let create_id = format!("${}", room_id.strip_sigil());
            EventId::parse(&create_id)
                .ok()
                .map(|id| self.room_event(room_id, &id))
                .transpose()?
                .flatten()
        } else {
            None
        };
        let mut expanded: HashSet<u64> = HashSet::new();
        let mut chain: HashMap<u64, u64> = HashMap::new(); // short → depth
        let mut stack: Vec<u64> = from.to_vec();
        while let Some(short) = stack.pop() {
            if !expanded.insert(short) {
                continue;
            }
            let Some(pdu) = self.pdu_by_short(short)? else {
                continue;
            };
            let mut auth = Vec::with_capacity(pdu.auth_events.len() + 1);
            for id in &pdu.auth_events {
                auth.extend(self.room_event(room_id, id)?);
            }
            if let Some(create) = &implied_create {
                if create.short != short {
                    auth.push(create.clone());
                }
            }
            for node in auth {
                if chain.insert(node.short, node.depth).is_none() {
                    if chain.len() > MAX_AUTH_CHAIN {
                        return Err(Error::internal(format!(
                            "auth chain in {room_id} has more than {MAX_AUTH_CHAIN} events"
                        )));
                    }
                    stack.push(node.short);
                }
            }
        }
        Ok(oldest_first(chain.into_iter().map(|(s, d)| (d, s))))
    }

    /// The spec's `/get_missing_events` walk: breadth-first through the `prev_events` of the
    /// `latest` events (short ids), skipping `earliest` and `latest` themselves, not going below
    /// `min_depth`, at most `limit` events (capped at [`MAX_MISSING_EVENTS`]). The answer is
    /// oldest (lowest depth) first, the order the asking server processes them in.
    pub fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[u64],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<u64>> {
        let limit = limit.min(MAX_MISSING_EVENTS);
        let mut seen: HashSet<OwnedEventId> = earliest.iter().cloned().collect();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for short in latest {
            let Some(node) = self.room_event_by_short(room_id, *short)? else {
                continue;
            };
            seen.insert(node.meta.event_id);
            if let Some(pdu) = self.pdu_by_short(node.short)? {
                queue.extend(pdu.prev_events);
            }
        }
        let mut found: Vec<(u64, u64)> = Vec::new();
        while found.len() < limit {
            let Some(id) = queue.pop_front() else {
                break;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(node) = self.room_event(room_id, &id)? else {
                continue;
            };
            // Depth grows along prev_events (an event's is one more than its deepest prev
            // event's), so what lies behind a too-shallow event is too shallow as well.
            if node.depth < min_depth {
                continue;
            }
            if let Some(pdu) = self.pdu_by_short(node.short)? {
                queue.extend(pdu.prev_events);
            }
            found.push((node.depth, node.short));
        }
        Ok(oldest_first(found))
    }

    /// The `/backfill` walk: the `from` events (short ids) and what precedes them through
    /// `prev_events`, deepest first (the newest of what is still to walk is taken next), at
    /// most `limit` events (capped at [`MAX_BACKFILL`]). Newest first, like Synapse and Conduit.
    pub fn backfill(&self, room_id: &RoomId, from: &[u64], limit: usize) -> Result<Vec<u64>> {
        let limit = limit.min(MAX_BACKFILL);
        let mut seen: HashSet<u64> = HashSet::new();
        let mut todo: BinaryHeap<(u64, u64)> = BinaryHeap::new(); // (depth, short)
        for short in from {
            if let Some(node) = self.room_event_by_short(room_id, *short)? {
                if seen.insert(node.short) {
                    todo.push((node.depth, node.short));
                }
            }
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((_, short)) = todo.pop() else {
                break;
            };
            out.push(short);
            let Some(pdu) = self.pdu_by_short(short)? else {
                continue;
            };
            for prev in &pdu.prev_events {
                if let Some(node) = self.room_event(room_id, prev)? {
                    if seen.insert(node.short) {
                        todo.push((node.depth, node.short));
                    }
                }
            }
        }
        Ok(out)
    }

    // ----- the federation reads, with their access checks -----

    /// The checks every room-scoped read makes first: the room is known here (404) and its
    /// server ACL admits `server` (403). Returns the room version's rules and whether `server`
    /// is in the room.
    fn open_room_for(
        &self,
        room_id: &RoomId,
        server: &ServerName,
    ) -> Result<(RoomVersionRules, bool)> {
        let room = self.room_or_404(room_id)?;
        self.check_server_acl(room_id, server)?;
        Ok((
            rules_for(&room.version)?,
            self.server_in_room(room_id, server)?,
        ))
    }

    /// An event a server asks about: stored here and of `room_id` (404), not hidden from the
    /// server (403).
    fn asked_event(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        server: &ServerName,
        in_room: bool,
    ) -> Result<(Node, ServerView)> {
        let node = self
            .room_event(room_id, event_id)?
            .ok_or_else(|| Error::not_found(format!("event {event_id} not found in {room_id}")))?;
        match self.server_view(server, &node.meta, in_room)? {
            ServerView::Hidden => Err(Error::forbidden(format!(
                "{server} may not see event {event_id}: it has no member in the room"
            ))),
            view => Ok((node, view)),
        }
    }

    /// `GET /_matrix/federation/v1/event/{eventId}`: the event as `server` may see it (in full
    /// or redacted); 404 if unknown, 403 if hidden from it or its ACL denies it.
    #[instrument(skip_all, fields(event_id = %event_id, server = %server))]
    pub fn event_for_server(
        &self,
        server: &ServerName,
        event_id: &EventId,
    ) -> Result<Box<RawValue>> {
        let not_found = || Error::not_found(format!("event {event_id} not found"));
        let short = self.short_id(event_id)?.ok_or_else(not_found)?;
        let meta = self.meta(short)?.ok_or_else(not_found)?;
        let (rules, in_room) = self.open_room_for(&meta.room_id, server)?;
        let (node, view) = self.asked_event(&meta.room_id, event_id, server, in_room)?;
        self.outgoing_pdu(node.short, view, &rules)?
            .ok_or_else(not_found)
    }

    /// The state before `event_id` (the spec's "prior to considering any state changes induced
    /// by the requested event") and its auth chain, as short ids.
    fn state_and_chain_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(RoomVersionRules, Vec<u64>, Vec<u64>)> {
        let (rules, in_room) = self.open_room_for(room_id, server)?;
        let (node, _) = self.asked_event(room_id, event_id, server, in_room)?;
        let state: Vec<u64> = self
            .state(node.meta.state_before)?
            .values()
            .copied()
            .collect();
        let chain = self.auth_chain(room_id, &state)?;
        Ok((rules, state, chain))
    }

    /// `GET /_matrix/federation/v1/state_ids/{roomId}`: `(pdu_ids, auth_chain_ids)` of the state
    /// before `event_id`.
    #[instrument(skip_all, fields(room_id = %room_id, server = %server))]
    pub fn state_ids_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let (_, state, chain) = self.state_and_chain_for_server(server, room_id, event_id)?;
        Ok((self.event_ids(&state)?, self.event_ids(&chain)?))
    }

    /// `GET /_matrix/federation/v1/state/{roomId}`: `(pdus, auth_chain)` of the state before
    /// `event_id`.
    #[instrument(skip_all, fields(room_id = %room_id, server = %server))]
    pub fn state_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StatePdus> {
        let (rules, state, chain) = self.state_and_chain_for_server(server, room_id, event_id)?;
        Ok((
            self.outgoing_pdus(&state, &rules)?,
            self.outgoing_pdus(&chain, &rules)?,
        ))
    }

    /// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`: the event's auth chain.
    #[instrument(skip_all, fields(room_id = %room_id, server = %server))]
    pub fn event_auth_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Box<RawValue>>> {
        let (rules, in_room) = self.open_room_for(room_id, server)?;
        let (node, _) = self.asked_event(room_id, event_id, server, in_room)?;
        let chain = self.auth_chain(room_id, &[node.short])?;
        self.outgoing_pdus(&chain, &rules)
    }

    /// The asked events of a walk that are stored here (unknown ones are skipped, as the asking
    /// server may know branches this one never saw); 403 if any is hidden from `server`.
    fn walk_anchors(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        asked: &[OwnedEventId],
        in_room: bool,
    ) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for id in asked {
            match self.asked_event(room_id, id, server, in_room) {
                Ok((node, _)) => out.push(node.short),
                Err(e) if e.kind() == Some(&ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}`: see
    /// [`Rooms::missing_events`]; events the server may not see in full are left out.
    #[instrument(skip_all, fields(room_id = %room_id, server = %server))]
    pub fn missing_events_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawValue>>> {
        let (rules, in_room) = self.open_room_for(room_id, server)?;
        let anchors = self.walk_anchors(server, room_id, latest, in_room)?;
        if anchors.is_empty() && !in_room {
            return Err(Error::forbidden(format!(
                "{server} is not in {room_id} and none of latest_events is known here"
            )));
        }
        let mut out = Vec::new();
        for short in self.missing_events(room_id, earliest, &anchors, limit, min_depth)? {
            let Some(meta) = self.meta(short)? else {
                continue;
            };
            let view = self.server_view(server, &meta, in_room)?;
            if let Some(pdu) = self.outgoing_pdu(short, view, &rules)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }

    /// `GET /_matrix/federation/v1/backfill/{roomId}`: see [`Rooms::backfill`]; events the
    /// server may not see in full go out redacted. 404 if none of `from` is known here.
    #[instrument(skip_all, fields(room_id = %room_id, server = %server))]
    pub fn backfill_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawValue>>> {
        let (rules, in_room) = self.open_room_for(room_id, server)?;
        let anchors = self.walk_anchors(server, room_id, from, in_room)?;
        if anchors.is_empty() {
            return Err(Error::not_found(format!(
                "none of the events to backfill from is known in {room_id}"
            )));
        }
        let mut out = Vec::new();
        for short in self.backfill(room_id, &anchors, limit)? {
            let Some(meta) = self.meta(short)? else {
                continue;
            };
            let view = match self.server_view(server, &meta, in_room)? {
                ServerView::Full => ServerView::Full,
                ServerView::Redacted | ServerView::Hidden => ServerView::Redacted,
            };
            if let Some(pdu) = self.outgoing_pdu(short, view, &rules)? {
                out.push(pdu);
            }
        }
        Ok(out)
    }
}

/// Short ids of `(depth, short)` pairs, by depth, then by stream position.
fn oldest_first(events: impl IntoIterator<Item = (u64, u64)>) -> Vec<u64> {
    let mut v: Vec<(u64, u64)> = events.into_iter().collect();
    v.sort_unstable();
    v.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
// STYLE.md allows unwrap in tests (`allow-unwrap-in-tests`); no clippy.toml says so yet.
#[allow(clippy::unwrap_used)]
mod tests {
    use paracord_core::Config;
    use ruma::{events::TimelineEventType, server_name, OwnedRoomId, OwnedUserId};
    use serde_json::json;

    use super::*;
    use crate::{
        rooms::{
            create::{CreateRoom, Preset},
            NewEvent,
        },
        Services,
    };

    fn services() -> (tempfile::TempDir, Services) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        (dir, Services::open(config).unwrap())
    }

    fn user(id: &str) -> OwnedUserId {
        OwnedUserId::try_from(id).unwrap()
    }

    /// A public room (so users of other servers can join) with the given history visibility.
    async fn room(s: &Services, creator: &UserId, visibility: &str) -> OwnedRoomId {
        room_v(s, creator, visibility, None).await
    }

    async fn room_v(
        s: &Services,
        creator: &UserId,
        visibility: &str,
        version: Option<&str>,
    ) -> OwnedRoomId {
        let req = CreateRoom {
            version: version.map(str::to_owned),
            preset: Some(Preset::PublicChat),
            public: false,
            name: None,
            topic: None,
            alias: None,
            invite: vec![],
            is_direct: false,
            initial_state: vec![(
                "m.room.history_visibility".into(),
                String::new(),
                json!({ "history_visibility": visibility }),
            )],
            power_level_override: None,
            creation_content: None,
            profile: (None, None),
        };
        s.rooms.create_room(creator, req).await.unwrap()
    }

    async fn say(s: &Services, room: &RoomId, sender: &UserId, body: &str) -> OwnedEventId {
        s.rooms
            .append(
                room,
                sender,
                NewEvent::message("m.room.message".into(), json!({ "body": body })),
            )
            .await
            .unwrap()
    }

    fn short(s: &Services, id: &EventId) -> u64 {
        s.rooms.short_id(id).unwrap().unwrap()
    }

    fn ids(s: &Services, shorts: &[u64]) -> Vec<OwnedEventId> {
        s.rooms.event_ids(shorts).unwrap()
    }

    fn acl(content: Value) -> ServerAcl {
        ServerAcl::from_content(&content)
    }

    #[test]
    fn globs_match_whole_names_case_insensitively() {
        for (pattern, text, expected) in [
            ("evil.com", "evil.com", true),
            ("evil.com", "EVIL.com", true),
            ("EVIL.COM", "evil.com", true),
            ("evil.com", "notevil.com", false),
            ("evil.com", "evil.com.au", false),
            ("*", "", true),
            ("*", "anything.example", true),
            ("*.evil.com", "a.b.evil.com", true),
            ("*.evil.com", "evil.com", false),
            ("*evil.com", "evil.com", true),
            ("ev?l.com", "evil.com", true),
            ("ev?l.com", "evl.com", false),
            ("ev?l.com", "eviil.com", false),
            ("?", "", false),
            ("", "", true),
            ("", "a", false),
            // Needs the first `*` to give back what it took.
            ("*a*b", "xaxxab", true),
            ("*a*b", "xaxxa", false),
            ("a*b*c", "abbbc", true),
            ("**", "x", true),
            ("é?.org", "ÉÉ.org", true),
        ] {
            assert_eq!(
                glob_matches(pattern, text),
                expected,
                "{pattern:?} against {text:?}"
            );
        }
    }

    #[test]
    fn acl_denies_before_it_allows_and_ignores_ports() {
        let a = acl(json!({ "allow": ["*"], "deny": ["evil.com", "*.evil.com"] }));
        assert!(a.is_allowed(server_name!("good.org")));
        assert!(a.is_allowed(server_name!("good.org:8448")));
        assert!(!a.is_allowed(server_name!("evil.com")));
        assert!(
            !a.is_allowed(server_name!("evil.com:1234")),
            "ports ignored"
        );
        assert!(!a.is_allowed(server_name!("sub.evil.com")));
        assert!(a.is_allowed(server_name!("notevil.com")));
        // Deny wins over an allow of the same server.
        let a = acl(json!({ "allow": ["evil.com"], "deny": ["evil.com"] }));
        assert!(!a.is_allowed(server_name!("evil.com")));
        // Only what `allow` names.
        let a = acl(json!({ "allow": ["*.good.org", "good.org"] }));
        assert!(a.is_allowed(server_name!("good.org:80")));
        assert!(a.is_allowed(server_name!("matrix.good.org")));
        assert!(!a.is_allowed(server_name!("other.org")));
        // An allow pattern with a port never matches: the port is not part of what is matched.
        let a = acl(json!({ "allow": ["good.org:8448"] }));
        assert!(!a.is_allowed(server_name!("good.org:8448")));
    }

    #[test]
    fn acl_without_allow_denies_everyone() {
        assert!(!acl(json!({})).is_allowed(server_name!("good.org")));
        assert!(!acl(json!({ "deny": [] })).is_allowed(server_name!("good.org")));
        assert!(!acl(json!("not an object")).is_allowed(server_name!("good.org")));
    }

    #[test]
    fn acl_ip_literals() {
        let open = acl(json!({ "allow": ["*"] }));
        let closed = acl(json!({ "allow": ["*"], "allow_ip_literals": false }));
        for server in [
            server_name!("1.2.3.4"),
            server_name!("1.2.3.4:8448"),
            server_name!("[::1]"),
            server_name!("[2001:db8::1]:8448"),
        ] {
            assert!(open.is_allowed(server), "{server} allowed by default");
            assert!(!closed.is_allowed(server), "{server} is an IP literal");
        }
        assert!(closed.is_allowed(server_name!("1.2.3.4.example")));
        assert!(closed.is_allowed(server_name!("example.org:8448")));
        // IP literals are matched by their host like any other name.
        let a = acl(json!({ "allow": ["*"], "deny": ["127.0.0.1", "[::1]"] }));
        assert!(!a.is_allowed(server_name!("127.0.0.1:8448")));
        assert!(!a.is_allowed(server_name!("[::1]:8448")));
        assert!(a.is_allowed(server_name!("127.0.0.2")));
    }

    #[test]
    fn acl_content_is_read_leniently() {
        let a = acl(json!({
            "allow": ["good.org", 5, null, { "x": 1 }],
            "deny": "evil.com",
            "allow_ip_literals": "no",
        }));
        assert_eq!(
            a,
            ServerAcl {
                allow_ip_literals: true,
                allow: vec!["good.org".into()],
                deny: vec![],
            }
        );
    }

    #[tokio::test]
    async fn server_acl_of_a_room_is_checked() {
        let (_dir, s) = services();
        let alice = user("@alice:localhost");
        let room = room(&s, &alice, "shared").await;
        let evil = server_name!("evil.com:8448");
        s.rooms.check_server_acl(&room, evil).unwrap();
        s.rooms
            .append(
                &room,
                &alice,
                NewEvent::state(
                    TimelineEventType::RoomServerAcl,
                    "",
                    json!({ "allow": ["*"], "deny": ["evil.com"] }),
                ),
            )
            .await
            .unwrap();
        let err = s.rooms.check_server_acl(&room, evil).unwrap_err();
        let (status, body) = err.classify();
        assert_eq!(
            (status.as_u16(), body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN"))
        );
        s.rooms
            .check_server_acl(&room, server_name!("good.org"))
            .unwrap();
        // Every federation read of the room is refused too, even of a single event.
        let create = s.rooms.current_state(&room).unwrap()[&("m.room.create".into(), "".into())];
        let create_id = s.rooms.meta(create).unwrap().unwrap().event_id;
        let err = s.rooms.event_for_server(evil, &create_id).unwrap_err();
        assert_eq!(err.kind(), Some(&ErrorKind::Forbidden));
        // A room this server does not know has no ACL here.
        let unknown = OwnedRoomId::try_from("!unknown:localhost").unwrap();
        s.rooms.check_server_acl(&unknown, evil).unwrap();
    }

    /// Every auth event of every chain member is in the chain, nothing is in it twice, and it
    /// is ordered by depth.
    fn assert_closed_chain(s: &Services, chain: &[u64]) {
        let set: HashSet<u64> = chain.iter().copied().collect();
        assert_eq!(set.len(), chain.len(), "no duplicates: {chain:?}");
        let mut last_depth = 0;
        for c in chain {
            let pdu = s.rooms.pdu_by_short(*c).unwrap().unwrap();
            assert!(u64::from(pdu.depth) >= last_depth, "oldest first");
            last_depth = u64::from(pdu.depth);
            for a in &pdu.auth_events {
                assert!(
                    set.contains(&short(s, a)),
                    "{a} of {} missing",
                    pdu.event_id
                );
            }
        }
    }

    #[tokio::test]
    async fn auth_chain_is_the_closure_of_auth_events() {
        // v10 lists the create event in auth_events; from v12 on it is implied by the room id.
        for version in ["10", "12"] {
            auth_chain_in(version).await;
        }
    }

    async fn auth_chain_in(version: &str) {
        let (_dir, s) = services();
        let alice = user("@alice:localhost");
        let bob = user("@bob:remote.example");
        let room = room_v(&s, &alice, "shared", Some(version)).await;
        s.rooms.join(&room, &bob, (None, None), None).await.unwrap();
        for i in 0..5 {
            s.rooms
                .append(
                    &room,
                    &alice,
                    NewEvent::state(TimelineEventType::RoomName, "", json!({ "name": i })),
                )
                .await
                .unwrap();
        }
        let msg = say(&s, &room, &bob, "hi").await;
        let msg_pdu = s.rooms.pdu(&msg).unwrap().unwrap();
        let chain = s.rooms.auth_chain(&room, &[short(&s, &msg)]).unwrap();
        assert_closed_chain(&s, &chain);
        let chain_ids = ids(&s, &chain);
        assert!(!chain_ids.contains(&msg), "the event is not its own auth");
        for a in &msg_pdu.auth_events {
            assert!(chain_ids.contains(a));
        }
        let state = s.rooms.current_state(&room).unwrap();
        let at = |t: &str, k: &str| state[&(t.to_owned(), k.to_owned())];
        let create = at("m.room.create", "");
        assert!(chain.contains(&create));
        assert_eq!(
            chain.first(),
            Some(&create),
            "the create event is the oldest"
        );
        assert!(chain.contains(&at("m.room.member", bob.as_str())));
        assert!(chain.contains(&at("m.room.join_rules", "")));
        // Name changes authorize nothing a message needs.
        assert!(!chain.contains(&at("m.room.name", "")));

        // The chain of the whole state: given events that others' chains reach are in it.
        let all: Vec<u64> = state.values().copied().collect();
        let chain = s.rooms.auth_chain(&room, &all).unwrap();
        assert_closed_chain(&s, &chain);
        assert!(chain.contains(&create) && chain.contains(&at("m.room.power_levels", "")));
        assert!(!chain.contains(&at("m.room.name", "")));
        // Nothing to start from, nothing in the chain.
        assert!(s.rooms.auth_chain(&room, &[]).unwrap().is_empty());
    }

    /// Ten messages after the room's initial events: `(room, ids oldest first)`.
    async fn ten_messages(s: &Services) -> (OwnedRoomId, Vec<OwnedEventId>) {
        let alice = user("@alice:localhost");
        let room = room(s, &alice, "world_readable").await;
        let mut out = Vec::new();
        for i in 0..10 {
            out.push(say(s, &room, &alice, &format!("m{i}")).await);
        }
        (room, out)
    }

    #[tokio::test]
    async fn missing_events_walk_back_to_earliest_within_the_limit() {
        let (_dir, s) = services();
        let (room, m) = ten_messages(&s).await;
        let walk = |earliest: &[OwnedEventId], latest: &[&OwnedEventId], limit, min_depth| {
            let latest: Vec<u64> = latest.iter().map(|e| short(&s, e)).collect();
            ids(
                &s,
                &s.rooms
                    .missing_events(&room, earliest, &latest, limit, min_depth)
                    .unwrap(),
            )
        };
        // Between m4 (had) and m9 (new): m5..m8, oldest first.
        assert_eq!(walk(&[m[4].clone()], &[&m[9]], 10, 0), m[5..9]);
        // The limit keeps the nearest ones.
        assert_eq!(walk(&[m[4].clone()], &[&m[9]], 2, 0), m[7..9]);
        // min_depth stops the walk.
        let depth7 = u64::from(s.rooms.pdu(&m[7]).unwrap().unwrap().depth);
        assert_eq!(walk(&[m[0].clone()], &[&m[9]], 10, depth7), m[7..9]);
        // Several latest events: each is skipped when another reaches it.
        assert_eq!(
            walk(&[m[4].clone()], &[&m[9], &m[7]], 10, 0),
            [m[5].clone(), m[6].clone(), m[8].clone()]
        );
        // Without earliest events, the walk goes on into the room's initial events.
        let back = walk(&[], &[&m[9]], 10, 0);
        assert_eq!(back.len(), 10);
        assert_eq!(back[1..], m[0..9]);
        // The cap.
        let mut long = Vec::new();
        let alice = user("@alice:localhost");
        for i in 0..MAX_MISSING_EVENTS + 5 {
            long.push(say(&s, &room, &alice, &format!("n{i}")).await);
        }
        let latest = long.last().unwrap();
        assert_eq!(walk(&[], &[latest], 10_000, 0).len(), MAX_MISSING_EVENTS);
    }

    #[tokio::test]
    async fn backfill_walks_newest_first_including_the_given_events() {
        let (_dir, s) = services();
        let (room, m) = ten_messages(&s).await;
        let back = |from: &[&OwnedEventId], limit| {
            let from: Vec<u64> = from.iter().map(|e| short(&s, e)).collect();
            ids(&s, &s.rooms.backfill(&room, &from, limit).unwrap())
        };
        assert_eq!(
            back(&[&m[9]], 3),
            [m[9].clone(), m[8].clone(), m[7].clone()]
        );
        assert_eq!(back(&[&m[5], &m[9]], 2), [m[9].clone(), m[8].clone()]);
        assert!(back(&[&m[9]], 0).is_empty());
        let all = back(&[&m[9]], 1000);
        // create, creator's join, power levels, join rules, history visibility (a public
        // room has no guest access event)
        assert_eq!(
            all.len(),
            m.len() + 5,
            "the messages and the room's initial events"
        );
        let create = s.rooms.current_state(&room).unwrap()[&("m.room.create".into(), "".into())];
        assert_eq!(
            all.last(),
            ids(&s, &[create]).first(),
            "the create event last"
        );
        // Events of another room are not walked from.
        let (_, other) = ten_messages(&s).await;
        assert!(back(&[&other[9]], 10).is_empty());
    }

    #[tokio::test]
    async fn servers_see_events_per_history_visibility() {
        let (_dir, s) = services();
        let alice = user("@alice:localhost");
        let remote = server_name!("remote.example");
        let bob = user("@bob:remote.example");

        // World-readable: anyone, in full.
        let open = room(&s, &alice, "world_readable").await;
        let m = say(&s, &open, &alice, "public").await;
        let pdu = s.rooms.event_for_server(remote, &m).unwrap();
        let raw = s.rooms.raw_pdu(short(&s, &m)).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(pdu.get()).unwrap(),
            serde_json::from_slice::<Value>(&raw).unwrap(),
            "as stored, signatures and all"
        );
        let (state, chain) = s.rooms.state_ids_for_server(remote, &open, &m).unwrap();
        assert!(!state.is_empty() && !chain.is_empty());

        // Shared: hidden from a server with no member; visible once one joins, earlier events
        // included.
        let shared = room(&s, &alice, "shared").await;
        let before = say(&s, &shared, &alice, "before bob").await;
        let err = s
            .rooms
            .state_ids_for_server(remote, &shared, &before)
            .unwrap_err();
        assert_eq!(err.kind(), Some(&ErrorKind::Forbidden));
        assert_eq!(
            s.rooms
                .event_for_server(remote, &before)
                .unwrap_err()
                .kind(),
            Some(&ErrorKind::Forbidden)
        );
        s.rooms
            .join(&shared, &bob, (None, None), None)
            .await
            .unwrap();
        assert!(s.rooms.server_in_room(&shared, remote).unwrap());
        s.rooms.event_for_server(remote, &before).unwrap();
        // The state before bob's join does not contain it.
        let join =
            s.rooms.current_state(&shared).unwrap()[&("m.room.member".to_owned(), bob.to_string())];
        let join_id = ids(&s, &[join]).remove(0);
        let (state, _) = s
            .rooms
            .state_ids_for_server(remote, &shared, &join_id)
            .unwrap();
        assert!(!state.contains(&join_id));
        let after_join = say(&s, &shared, &alice, "after").await;
        let (state, _) = s
            .rooms
            .state_ids_for_server(remote, &shared, &after_join)
            .unwrap();
        assert!(state.contains(&join_id));

        // Joined: events from before the server's member joined go out redacted to it.
        let joined = room(&s, &alice, "joined").await;
        let secret = say(&s, &joined, &alice, "secret").await;
        assert_eq!(
            s.rooms
                .event_for_server(remote, &secret)
                .unwrap_err()
                .kind(),
            Some(&ErrorKind::Forbidden)
        );
        s.rooms
            .join(&joined, &bob, (None, None), None)
            .await
            .unwrap();
        let later = say(&s, &joined, &alice, "later").await;
        let redacted: Value =
            serde_json::from_str(s.rooms.event_for_server(remote, &secret).unwrap().get()).unwrap();
        assert_eq!(redacted["content"], json!({}), "got {redacted}");
        assert!(redacted["signatures"].is_object());
        let full: Value =
            serde_json::from_str(s.rooms.event_for_server(remote, &later).unwrap().get()).unwrap();
        assert_eq!(full["content"]["body"], "later");
        // Backfill redacts what the server may not see; get_missing_events leaves it out.
        let pdus = s
            .rooms
            .backfill_for_server(remote, &joined, std::slice::from_ref(&later), 3)
            .unwrap();
        let bodies: Vec<Value> = pdus
            .iter()
            .map(|p| serde_json::from_str::<Value>(p.get()).unwrap()["content"]["body"].clone())
            .collect();
        assert_eq!(bodies, [json!("later"), Value::Null, Value::Null]);
        let third: Value = serde_json::from_str(pdus[2].get()).unwrap();
        assert_eq!(third["content"], json!({}), "secret, redacted: {third}");
        let missing = s
            .rooms
            .missing_events_for_server(remote, &joined, &[], &[later], 10, 0)
            .unwrap();
        let missing: Vec<Value> = missing
            .iter()
            .map(|p| serde_json::from_str(p.get()).unwrap())
            .collect();
        // The initial events are `shared` (no visibility set yet); "secret" is left out.
        let bodies: Vec<&Value> = missing.iter().map(|p| &p["content"]["body"]).collect();
        assert_eq!(
            missing.len(),
            7,
            "initial events and bob's join: {missing:?}"
        );
        assert!(bodies.iter().all(|b| b.is_null()), "got {bodies:?}");
        assert_eq!(missing[6]["state_key"], bob.as_str(), "oldest first");
    }
}
