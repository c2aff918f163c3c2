//! `/sync`: initial and incremental, long-polling on the notifier.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use paracord_core::{Error, Result};
use ruma::{
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
        sync::sync_events::{
            v3::{
                Ephemeral as EphemeralEvents, GlobalAccountData, InviteState, InvitedRoom,
                JoinedRoom, KnockState, KnockedRoom, LeftRoom, Presence as PresenceEvents,
                Response, RoomSummary, State, StateEvents, Timeline, ToDevice,
            },
            DeviceLists, UnreadNotificationsCount,
        },
    },
    events::room::member::MembershipState,
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{
    account_data::AccountData,
    e2ee::E2ee,
    ephemeral::Ephemeral,
    rooms::{
        membership::membership_of,
        timeline::{Dir, EventFilter, Reader, Window},
        MembershipRecord, Rooms,
    },
    stream::Stream,
};

/// Parses a `since`/`from` token (`s<pos>`, or a sync token `s<pos>_<to-device ack>`) into
/// its stream position.
pub fn parse_token(token: &str) -> Result<u64> {
    Ok(parse_sync_token(token)?.0)
}

/// Parses a sync token: the stream position, and up to where the to-device messages were
/// delivered (the same position unless a sync handed out only part of them).
pub fn parse_sync_token(token: &str) -> Result<(u64, u64)> {
    let t = token.strip_prefix('s').unwrap_or(token);
    let bad = || Error::invalid_param("invalid pagination token");
    match t.split_once('_') {
        None => {
            let pos = t.parse().map_err(|_| bad())?;
            Ok((pos, pos))
        }
        Some((pos, ack)) => {
            let pos: u64 = pos.parse().map_err(|_| bad())?;
            let ack: u64 = ack.parse().map_err(|_| bad())?;
            Ok((pos, ack.min(pos)))
        }
    }
}

pub fn make_token(pos: u64) -> String {
    format!("s{pos}")
}

/// The server-side parts of a RoomEventFilter.
pub fn event_filter(f: &RoomEventFilter) -> EventFilter {
    EventFilter {
        types: f.types.clone(),
        not_types: f.not_types.clone(),
        senders: f
            .senders
            .as_ref()
            .map(|s| s.iter().map(|u| u.to_string()).collect()),
        not_senders: f.not_senders.iter().map(|u| u.to_string()).collect(),
        contains_url: f
            .url_filter
            .map(|u| matches!(u, ruma::api::client::filter::UrlFilter::EventsWithUrl)),
        ignored: Vec::new(),
    }
}

fn lazy_members(f: &RoomEventFilter) -> bool {
    matches!(f.lazy_load_options, LazyLoadOptions::Enabled { .. })
}

pub struct SyncRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a str,
    pub since: Option<u64>,
    /// To-device messages up to here were received (from the `since` token).
    pub to_device_ack: Option<u64>,
    pub full_state: bool,
    pub filter: FilterDefinition,
    pub timeout: Duration,
}

pub struct Sync {
    rooms: Arc<Rooms>,
    stream: Arc<Stream>,
    account_data: Arc<AccountData>,
    ephemeral: Arc<Ephemeral>,
    e2ee: Arc<E2ee>,
    /// With `sync_writes`, what a sync gives is on disk first (set once at start-up).
    durability: Arc<crate::durability::Durability>,
}

const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 1000;

impl Sync {
    pub fn new(
        rooms: Arc<Rooms>,
        stream: Arc<Stream>,
        account_data: Arc<AccountData>,
        ephemeral: Arc<Ephemeral>,
        e2ee: Arc<E2ee>,
        durability: Arc<crate::durability::Durability>,
    ) -> Self {
        Self {
            rooms,
            stream,
            account_data,
            ephemeral,
            e2ee,
            durability,
        }
    }

    /// Answers a sync, waiting up to `timeout` for news when there is none.
    pub async fn sync(&self, req: SyncRequest<'_>) -> Result<Response> {
        let deadline = Instant::now() + req.timeout;
        // Events and invites of ignored users are left out (m.ignored_user_list).
        let ignored = self.account_data.ignored_users(req.user)?;
        let notify = self.stream.notifier().handle(req.user);
        // The client has the to-device messages the `since` token covers: delete them.
        if let Some(ack) = req.to_device_ack {
            self.e2ee.ack_to_device(req.user, req.device, ack)?;
        }
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let upto = self.stream.current();
            if req.since.is_some_and(|s| s > upto) {
                return Err(Error::invalid_param("since token is from the future"));
            }
            // Nobody is shown an event that a power loss could still take back: everything
            // up to `upto` was written before this, so the sync waits for its fsync (which
            // the request that wrote it waits for too, and usually started already). The
            // sender's own answer then tends to come before its event's remote echo, as
            // clients expect.
            if self.durability.enabled() {
                self.durability.settle().await?;
                // The requests that wrote are woken by the same fsync: let their answers go
                // out before this sync builds its own.
                tokio::task::yield_now().await;
            }
            let (body, has_news) = self.build(&req, &ignored, upto)?;
            if req.since.is_none() || has_news || req.full_state || Instant::now() >= deadline {
                return Ok(body);
            }
            // Nothing new: wait for a wake-up, the deadline or shutdown.
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    let (body, _) = self.build(&req, &ignored, self.stream.current())?;
                    return Ok(body);
                }
                () = self.stream.notifier().shutting_down() => return Ok(body),
            }
        }
    }

    fn build(
        &self,
        req: &SyncRequest<'_>,
        ignored: &[String],
        upto: u64,
    ) -> Result<(Response, bool)> {
        let mut join: BTreeMap<OwnedRoomId, JoinedRoom> = BTreeMap::new();
        let mut invite: BTreeMap<OwnedRoomId, InvitedRoom> = BTreeMap::new();
        let mut knock: BTreeMap<OwnedRoomId, KnockedRoom> = BTreeMap::new();
        let mut leave: BTreeMap<OwnedRoomId, LeftRoom> = BTreeMap::new();
        let room_filter = &req.filter.room;
        // Presence needs the members of every joined room: only look when some presence changed.
        let presence_changed = self.ephemeral.presence_changed_after(req.since);
        let mut shared_users: HashSet<OwnedUserId> = HashSet::new();
        // Users who started sharing a room with the user since `since`: their presence is
        // news to the user even when it did not change.
        let mut newly_shared: HashSet<OwnedUserId> = HashSet::new();
        for (room_id, rec) in self.rooms.user_rooms(req.user)? {
            // A change committed but not yet published (pos > upto) shows in the next sync; the
            // writer wakes us after publishing it.
            if rec.pos > upto {
                continue;
            }
            // A forgotten room is gone from sync, except for the leave itself when it is newer
            // than the client's token: another device (or this one, forgetting quickly) would
            // otherwise never learn that the room was left.
            if rec.forgotten && req.since.is_none_or(|s| rec.pos <= s) {
                continue;
            }
            if room_filter.not_rooms.contains(&room_id)
                || room_filter
                    .rooms
                    .as_ref()
                    .is_some_and(|r| !r.contains(&room_id))
            {
                continue;
            }
            match rec.membership {
                MembershipState::Join => {
                    if presence_changed {
                        shared_users.extend(self.rooms.joined_members(&room_id)?);
                    }
                    if let Some(v) =
                        self.joined_room(req, ignored, &room_id, rec.pos, upto, &mut newly_shared)?
                    {
                        join.insert(room_id, v);
                    }
                }
                MembershipState::Invite
                    if req.since.is_none_or(|s| rec.pos > s)
                        && !self.sent_by_ignored(&rec.event_id, ignored)? =>
                {
                    if let Some(room) =
                        self.invited_room(req.user, &room_id, rec.event_id.as_str())?
                    {
                        invite.insert(room_id, room);
                    }
                }
                MembershipState::Knock if req.since.is_none_or(|s| rec.pos > s) => {
                    let Some(events) =
                        self.pending_stripped_state(req.user, &room_id, rec.event_id.as_str())?
                    else {
                        continue;
                    };
                    let mut state = KnockState::new();
                    state.events = raws(events)?;
                    knock.insert(room_id, KnockedRoom::from(state));
                }
                MembershipState::Leave | MembershipState::Ban => {
                    // An initial sync gives the rooms the user was banned or kicked from
                    // whatever the filter says (they did not choose to go, and their client
                    // should show it), the rooms they left themselves only with
                    // `include_leave`.
                    let include = match req.since {
                        Some(s) => rec.pos > s,
                        None => {
                            room_filter.include_leave || self.removed_by_other(req.user, &rec)?
                        }
                    };
                    if include {
                        let room = self.left_room(req, ignored, &room_id, &rec)?;
                        leave.insert(room_id, room);
                    }
                }
                _ => {}
            }
        }

        let mut global_ad = Vec::new();
        // Clients read their push rules from account data; a user who never changed them has
        // the defaults, which are not stored.
        if req.since.is_none()
            && self
                .account_data
                .get(req.user, None, "m.push_rules")?
                .is_none()
        {
            let rules = self.account_data.push_rules(req.user)?;
            global_ad.push(raw(&json!({
                "type": "m.push_rules", "content": { "global": &*rules }
            }))?);
        }
        for (room, kind, content) in self.account_data.changed_since(req.user, req.since, upto)? {
            let ev = json!({ "type": kind, "content": content });
            match room {
                None => global_ad.push(raw(&ev)?),
                Some(r) => {
                    if let Some(j) = join.get_mut(&r) {
                        j.account_data.events.push(raw(&ev)?);
                    } else if self.rooms.is_joined(&r, req.user)? {
                        join.entry(r)
                            .or_default()
                            .account_data
                            .events
                            .push(raw(&ev)?);
                    }
                }
            }
        }

        let mut presence = Vec::new();
        if presence_changed {
            shared_users.insert(req.user.to_owned());
        }
        for u in &shared_users {
            if newly_shared.contains(u) {
                continue;
            }
            if let Some(p) = self.ephemeral.presence(u)? {
                if req.since.is_none_or(|s| p.pos > s) && p.pos <= upto {
                    presence.push(raw(&Ephemeral::presence_event(u, &p))?);
                }
            }
        }
        // Whoever the user just started sharing a room with: their current presence, however
        // old (the client has never been told it).
        newly_shared.remove(req.user);
        for u in &newly_shared {
            if let Some(p) = self.ephemeral.presence(u)? {
                if p.pos <= upto {
                    presence.push(raw(&Ephemeral::presence_event(u, &p))?);
                }
            }
        }

        // End-to-end encryption: to-device messages, device lists, key counts.
        let (to_device, to_device_ack) = self.e2ee.pending_to_device(
            req.user,
            req.device,
            upto,
            crate::e2ee::TO_DEVICE_PER_SYNC,
        )?;
        let device_lists = match req.since {
            Some(since) => self.e2ee.device_list_changes(req.user, since, upto)?,
            None => Default::default(),
        };
        let otk_counts = self.e2ee.one_time_key_counts(req.user, req.device)?;
        let fallback_types = self.e2ee.unused_fallback_key_types(req.user, req.device)?;

        let has_news = !join.is_empty()
            || !invite.is_empty()
            || !knock.is_empty()
            || !leave.is_empty()
            || !global_ad.is_empty()
            || !presence.is_empty()
            || !to_device.is_empty()
            || !device_lists.is_empty();
        let next_batch = match to_device_ack {
            Some(ack) => format!("{}_{ack}", make_token(upto)),
            None => make_token(upto),
        };
        let mut body = Response::new(next_batch);
        body.rooms.join = join;
        body.rooms.invite = invite;
        body.rooms.leave = leave;
        body.rooms.knock = knock;
        body.account_data = GlobalAccountData::new();
        body.account_data.events = global_ad;
        body.presence = PresenceEvents::new();
        body.presence.events = presence;
        body.to_device = ToDevice::new();
        body.to_device.events = raws(to_device)?;
        body.device_lists = DeviceLists::new();
        body.device_lists.changed = device_lists.changed.into_iter().collect();
        body.device_lists.left = device_lists.left.into_iter().collect();
        body.device_one_time_keys_count = otk_counts
            .into_iter()
            .map(|(alg, n)| (OneTimeKeyAlgorithm::from(alg), UInt::new_saturating(n)))
            .collect();
        // Always given, empty or not: it tells clients the server supports fallback keys.
        body.device_unused_fallback_key_types = Some(
            fallback_types
                .into_iter()
                .map(OneTimeKeyAlgorithm::from)
                .collect(),
        );
        Ok((body, has_news))
    }

    /// A joined room's section, or `None` if nothing changed since `since`. Members the user
    /// started sharing the room with since `since` (all of them for a newly joined room) are
    /// added to `newly_shared`.
    fn joined_room(
        &self,
        req: &SyncRequest<'_>,
        ignored: &[String],
        room_id: &RoomId,
        membership_pos: u64,
        upto: u64,
        newly_shared: &mut HashSet<OwnedUserId>,
    ) -> Result<Option<JoinedRoom>> {
        let room = self.rooms.room_or_404(room_id)?;
        let newly_joined = match req.since {
            None => true,
            Some(s) if membership_pos > s => {
                let state_then = self.rooms.state(self.rooms.state_at_pos(room_id, s)?)?;
                self.rooms.membership_in(&state_then, req.user)? != Some(MembershipState::Join)
            }
            Some(_) => false,
        };
        let since = req.since.filter(|_| !newly_joined);
        if newly_joined && req.since.is_some() {
            newly_shared.extend(self.rooms.joined_members(room_id)?);
        }
        let typing = self.ephemeral.typing_event(room_id, since);
        let receipts = self.ephemeral.receipt_events(room_id, req.user, since)?;
        let timeline_changed = since.is_none_or(|s| room.last_pos > s);
        if !timeline_changed && !req.full_state && typing.is_none() && receipts.is_empty() {
            return Ok(None);
        }
        let section = self.timeline_and_state(req, ignored, room_id, since, upto)?;
        if since.is_some() {
            newly_shared.extend(section.joins());
        }
        let mut out = JoinedRoom::new();
        (out.timeline, out.state) = section.into_ruma()?;
        out.ephemeral = EphemeralEvents::new();
        out.ephemeral.events = raws(typing.into_iter().chain(receipts))?;
        self.fill_unread_counts(req, room_id, &mut out)?;
        let members = self.rooms.members(room_id)?;
        let count = |state: MembershipState| {
            let n = members.iter().filter(|(_, m)| *m == state).count();
            UInt::new_saturating(u64::try_from(n).unwrap_or(u64::MAX))
        };
        out.summary = RoomSummary::new();
        out.summary.joined_member_count = Some(count(MembershipState::Join));
        out.summary.invited_member_count = Some(count(MembershipState::Invite));
        if self
            .rooms
            .state_content(&*self.rooms.state(room.state)?, "m.room.name", "")?
            .is_none()
        {
            out.summary.heroes = members
                .iter()
                .filter(|(u, m)| {
                    u != req.user && matches!(m, MembershipState::Join | MembershipState::Invite)
                })
                .map(|(u, _)| u.clone())
                .take(5)
                .collect();
        }
        Ok(Some(out))
    }

    /// Whether a membership of `leave` or `ban` was someone else's doing (a kick or a ban).
    fn removed_by_other(&self, user: &UserId, rec: &MembershipRecord) -> Result<bool> {
        if rec.membership == MembershipState::Ban {
            return Ok(true);
        }
        Ok(self
            .rooms
            .pdu(&rec.event_id)?
            .is_some_and(|p| p.sender != user))
    }

    /// Timeline and state of a room between `since` and `upto` (`end` bounds a left room).
    fn timeline_and_state(
        &self,
        req: &SyncRequest<'_>,
        ignored: &[String],
        room_id: &RoomId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Section> {
        let tf = &req.filter.room.timeline;
        let limit = tf
            .limit
            .map(|l| usize::try_from(u64::from(l)).unwrap_or(MAX_TIMELINE_LIMIT))
            .unwrap_or(DEFAULT_TIMELINE_LIMIT);
        // 0 is a valid limit: no events, only the state (a left room's state then ends with
        // the leave).
        let limit = limit.min(MAX_TIMELINE_LIMIT);
        let reader = Reader {
            user: req.user,
            device: Some(req.device),
        };
        let mut timeline_filter = event_filter(tf);
        timeline_filter.ignored = ignored.to_vec();
        let page = self.rooms.paginate(
            room_id,
            reader,
            Window {
                from: upto,
                to: since,
                dir: Dir::Backward,
                limit: limit + 1,
            },
            &timeline_filter,
        )?;
        let mut events = page.events;
        let mut limited = events.len() > limit || (page.next.is_some() && events.len() >= limit);
        events.truncate(limit);
        // A room joined since the token, whose history goes back further than what the
        // timeline holds: limited, as the client has not seen that history.
        if since.is_none() && req.since.is_some() && !limited {
            if let Some((oldest, _)) = events.last() {
                limited = self.rooms.has_timeline_before(room_id, *oldest)?;
            }
        }
        // A gap in the DAG since the client's token (events this server never got): the
        // timeline starts after it and is limited, as the client's view has a hole there.
        if let Some(since) = since {
            let room = self.rooms.room_or_404(room_id)?;
            if let Some(gap) = room.gaps.iter().rev().find(|g| **g > since && **g <= upto) {
                limited = true;
                events.retain(|(pos, _)| pos >= gap);
            }
        }
        events.reverse();
        let first_pos = events.first().map(|(p, _)| *p);
        let prev_batch = match events.first() {
            // The timeline starts with the room itself: there is nothing earlier to paginate
            // to (the spec lets `prev_batch` be left out then), and a point before the create
            // event is a point with no room at all. The sync's own position is given instead,
            // which `/members?at=` reads as the members the client's timeline leads to.
            Some((_, e)) if e["type"] == "m.room.create" && e["state_key"] == "" => {
                make_token(upto)
            }
            Some((p, _)) => make_token(p.saturating_sub(1)),
            None => make_token(upto),
        };
        // State at the start of the timeline.
        // (The state before the first event is right even when it came from another server
        // with a state of its own, such as the join of a room joined over federation.)
        let first_meta = match events.first().and_then(|(_, e)| e["event_id"].as_str()) {
            Some(id) => match ruma::EventId::parse(id).ok() {
                Some(id) => match self.rooms.short_id(&id)? {
                    Some(short) => self.rooms.meta(short)?,
                    None => None,
                },
                None => None,
            },
            None => None,
        };
        let state_start_snapshot = match (first_pos, first_meta) {
            (Some(_), Some(m)) => m.state_before,
            (Some(p), None) => self.rooms.state_at_pos(room_id, p.saturating_sub(1))?,
            (None, _) => self.rooms.state_at_pos(room_id, upto)?,
        };
        let in_timeline: HashSet<&str> = events
            .iter()
            .filter_map(|(_, e)| e["event_id"].as_str())
            .collect();
        let state_start = self.rooms.state(state_start_snapshot)?;
        let mut state_events = Vec::new();
        let full = since.is_none() || req.full_state;
        // A filter that leaves state events out of the timeline can leave out changes made
        // after it starts: the state then has to say where the room ended up.
        if full || limited || timeline_filter.may_drop_state() {
            let base = match since {
                Some(s) if !req.full_state => {
                    Some(self.rooms.state(self.rooms.state_at_pos(room_id, s)?)?)
                }
                _ => None,
            };
            // A key a timeline event sets is given as it was before the timeline (the
            // timeline carries the change); any other key as it is at the end of the sync
            // (a filtered-out change, or a fork merged by a filtered-out event, included).
            let touched: HashSet<(String, String)> = events
                .iter()
                .filter_map(|(_, e)| {
                    Some((
                        e["type"].as_str()?.to_owned(),
                        e.get("state_key")?.as_str()?.to_owned(),
                    ))
                })
                .collect();
            let state_end = match first_pos {
                Some(_) => Some(self.rooms.state(self.rooms.state_at_pos(room_id, upto)?)?),
                None => None,
            };
            let mut target: BTreeMap<&(String, String), u64> =
                state_start.iter().map(|(k, short)| (k, *short)).collect();
            if let Some(end) = &state_end {
                for (k, short) in end.iter() {
                    if !touched.contains(k) {
                        target.insert(k, *short);
                    }
                }
            }
            let lazy = lazy_members(&req.filter.room.state);
            let wanted: HashSet<String> = Rooms::senders_of(&events)
                .into_iter()
                .map(|u| u.to_string())
                .chain([req.user.to_string()])
                .collect();
            let sf = event_filter(&req.filter.room.state);
            for ((kind, key), short) in target {
                if base
                    .as_ref()
                    .is_some_and(|b| b.get(&(kind.clone(), key.clone())) == Some(&short))
                {
                    continue;
                }
                if lazy && kind == "m.room.member" && !wanted.contains(key) {
                    continue;
                }
                if let Some((_, ev)) = self.rooms.client_event(short, Some(reader))? {
                    if in_timeline.contains(ev["event_id"].as_str().unwrap_or_default())
                        || !sf.allows(&ev)
                    {
                        continue;
                    }
                    state_events.push(ev);
                }
            }
        }
        Ok(Section {
            events: events.into_iter().map(|(_, e)| e).collect(),
            limited,
            prev_batch: Some(prev_batch),
            state: state_events,
        })
    }

    /// `unread_notifications`, and `unread_thread_notifications` when the filter asks for them
    /// (left out when no thread has any). Every receipt counts either way: without the filter
    /// a thread's notifications read by a threaded receipt are read all the same, they are
    /// only not reported apart.
    fn fill_unread_counts(
        &self,
        req: &SyncRequest<'_>,
        room_id: &RoomId,
        out: &mut JoinedRoom,
    ) -> Result<()> {
        // Receipt positions: unthreaded applies everywhere; "main" and each thread root add to it.
        let mut unthreaded = 0;
        let mut by_thread: std::collections::HashMap<String, u64> = Default::default();
        for (thread, event_id) in self.ephemeral.own_receipts_by_thread(room_id, req.user)? {
            let pos = match OwnedEventId::try_from(event_id) {
                Ok(e) => self.rooms.short_id(&e)?.unwrap_or(0),
                Err(_) => 0,
            };
            if thread.is_empty() {
                unthreaded = unthreaded.max(pos);
            } else {
                let e = by_thread.entry(thread).or_default();
                *e = (*e).max(pos);
            }
        }
        let main_read = unthreaded.max(by_thread.get("main").copied().unwrap_or(0));
        let (main, threads) = self.rooms.unread_counts_by_thread(
            req.user,
            room_id,
            unthreaded,
            main_read,
            |root| {
                let id = self
                    .rooms
                    .meta(root)
                    .ok()
                    .flatten()
                    .map(|m| m.event_id.to_string())
                    .unwrap_or_default();
                unthreaded.max(by_thread.get(&id).copied().unwrap_or(0))
            },
        )?;
        if !req.filter.room.timeline.unread_thread_notifications {
            let (n, h) = threads
                .values()
                .fold(main, |(n, h), (tn, th)| (n + tn, h + th));
            out.unread_notifications = counts(n, h);
            return Ok(());
        }
        out.unread_notifications = counts(main.0, main.1);
        for (root, (n, h)) in threads {
            if let Some(m) = self.rooms.meta(root)? {
                let id: OwnedEventId = m.event_id.clone();
                out.unread_thread_notifications.insert(id, counts(n, h));
            }
        }
        Ok(())
    }

    /// Stream position of the user's read receipt in a room (0 when they have none).
    pub fn read_pos(&self, room_id: &RoomId, user: &UserId) -> Result<u64> {
        read_pos(&self.rooms, &self.ephemeral, room_id, user)
    }

    fn sent_by_ignored(&self, event_id: &ruma::EventId, ignored: &[String]) -> Result<bool> {
        Ok(self
            .rooms
            .pdu(event_id)?
            .is_some_and(|p| ignored.iter().any(|i| i == p.sender.as_str())))
    }

    /// The stripped state of a room on another server that `user` is invited to or knocked
    /// on, with the membership event itself.
    fn remote_stripped_state(&self, user: &UserId, room_id: &RoomId) -> Result<Option<Vec<Value>>> {
        let Some(remote) = self.rooms.remote_invite(user, room_id)? else {
            return Ok(None);
        };
        let mut events: Vec<Value> = remote["invite_room_state"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ev = &remote["event"];
        events.push(json!({
            "type": ev["type"], "state_key": ev["state_key"], "sender": ev["sender"],
            "content": ev["content"],
        }));
        Ok(Some(events))
    }

    /// The invite section of a room, `None` when the invite ended while this sync was read.
    fn invited_room(
        &self,
        user: &UserId,
        room_id: &RoomId,
        invite_event: &str,
    ) -> Result<Option<InvitedRoom>> {
        let Some(events) = self.pending_stripped_state(user, room_id, invite_event)? else {
            return Ok(None);
        };
        let mut state = InviteState::new();
        state.events = raws(events)?;
        Ok(Some(InvitedRoom::from(state)))
    }

    /// The stripped state shown with a pending invite or knock: what another server sent with
    /// it, or this server's own room's. `None` when there is neither: the invite or knock of
    /// another server's room ended (rejected, rescinded) after this sync read the user's
    /// memberships, and the writer wakes the user to sync again and see the leave.
    fn pending_stripped_state(
        &self,
        user: &UserId,
        room_id: &RoomId,
        event_id: &str,
    ) -> Result<Option<Vec<Value>>> {
        if let Some(events) = self.remote_stripped_state(user, room_id)? {
            return Ok(Some(events));
        }
        if self.rooms.room(room_id)?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.rooms.stripped_state(room_id, Some(event_id))?))
    }

    fn left_room(
        &self,
        req: &SyncRequest<'_>,
        ignored: &[String],
        room_id: &RoomId,
        rec: &MembershipRecord,
    ) -> Result<LeftRoom> {
        let mut out = LeftRoom::new();
        // An invite or knock of another server's room that ended (rejected, rescinded) is not
        // in any timeline here: the membership event that ended it is all there is to show,
        // and it is what tells the client the room left its invites or knocks.
        let ending = match self.rooms.short_id(&rec.event_id)? {
            Some(short) => self.rooms.meta(short)?.map(|m| (short, m)),
            None => None,
        };
        // (Nor is anything of a room this server holds no record of.)
        let in_timeline =
            ending.as_ref().is_some_and(|(_, m)| !m.outlier) && self.rooms.room(room_id)?.is_some();
        if !in_timeline {
            let reader = Reader {
                user: req.user,
                device: Some(req.device),
            };
            let mut events = Vec::new();
            if let Some((short, _)) = ending {
                if let Some((_, ev)) = self.rooms.client_event(short, Some(reader))? {
                    events.push(ev);
                }
            }
            let section = Section {
                events,
                limited: false,
                prev_batch: None,
                state: Vec::new(),
            };
            (out.timeline, out.state) = section.into_ruma()?;
            return Ok(out);
        }
        let section = self.timeline_and_state(req, ignored, room_id, req.since, rec.pos)?;
        (out.timeline, out.state) = section.into_ruma()?;
        Ok(out)
    }
}

/// Stream position of a user's read receipt in a room (0 when they have none).
pub fn read_pos(
    rooms: &Rooms,
    ephemeral: &Ephemeral,
    room_id: &RoomId,
    user: &UserId,
) -> Result<u64> {
    let mut best = 0;
    for event_id in ephemeral.own_read_receipts(room_id, user)? {
        if let Ok(e) = OwnedEventId::try_from(event_id) {
            best = best.max(rooms.short_id(&e)?.unwrap_or(0));
        }
    }
    Ok(best)
}

/// A room's timeline and the state before it, as client events.
struct Section {
    events: Vec<Value>,
    limited: bool,
    prev_batch: Option<String>,
    state: Vec<Value>,
}

impl Section {
    /// Users who joined in this section (its timeline or state; a join that only changes a
    /// profile is not one).
    fn joins(&self) -> Vec<OwnedUserId> {
        let join = Some(MembershipState::Join);
        self.events
            .iter()
            .chain(&self.state)
            .filter(|e| {
                e["type"] == "m.room.member"
                    && membership_of(&e["content"]) == join
                    && membership_of(&e["unsigned"]["prev_content"]) != join
            })
            .filter_map(|e| e["state_key"].as_str())
            .filter_map(|u| OwnedUserId::try_from(u).ok())
            .collect()
    }

    fn into_ruma(self) -> Result<(Timeline, State)> {
        let mut timeline = Timeline::new();
        timeline.events = raws(self.events)?;
        timeline.limited = self.limited;
        timeline.prev_batch = self.prev_batch;
        Ok((
            timeline,
            State::Before(StateEvents::with_events(raws(self.state)?)),
        ))
    }
}

/// A JSON object the server built, as the ruma type of its place in the response.
fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

fn raws<T>(values: impl IntoIterator<Item = Value>) -> Result<Vec<Raw<T>>> {
    values.into_iter().map(|v| raw(&v)).collect()
}

fn counts(notifications: u64, highlights: u64) -> UnreadNotificationsCount {
    let mut out = UnreadNotificationsCount::new();
    out.notification_count = Some(UInt::new_saturating(notifications));
    out.highlight_count = Some(UInt::new_saturating(highlights));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 14: a pending invite or knock of another server's room that ends while a sync
    // reads it (the membership row read before the invite's record is deleted) leaves that
    // room out of this sync instead of failing it with "room not found" (Complement's
    // TestFederationRoomsInvite, whose users sync while their invites are rescinded).
    #[tokio::test]
    async fn an_invite_ending_while_a_sync_reads_it_is_left_out() {
        let (_dir, s) = crate::rooms::tests::services();
        let user = ruma::owned_user_id!("@bob:localhost");
        let event = ruma::owned_event_id!("$invite:remote.example");
        for (room, membership) in [
            (ruma::owned_room_id!("!invited:remote.example"), "invite"),
            (ruma::owned_room_id!("!knocked:remote.example"), "knock"),
        ] {
            // The membership row as it was when the sync read it; the invite's record and
            // any room record are gone, as after a rescind.
            s.stream
                .commit(|pos, batch| {
                    crate::rooms::write_membership(batch, &room, &user, membership, pos, &event)
                })
                .unwrap();
        }
        let answer = s
            .sync
            .sync(SyncRequest {
                user: &user,
                device: "DEV",
                since: None,
                to_device_ack: None,
                full_state: false,
                filter: FilterDefinition::default(),
                timeout: Duration::ZERO,
            })
            .await
            .unwrap();
        assert!(answer.rooms.invite.is_empty(), "{:?}", answer.rooms.invite);
        assert!(answer.rooms.knock.is_empty(), "{:?}", answer.rooms.knock);
    }

    #[test]
    fn tokens_round_trip() {
        assert_eq!(parse_token(&make_token(42)).unwrap(), 42);
        assert!(parse_token("garbage").is_err());
        assert!(parse_token("s-1").is_err());
    }
}
