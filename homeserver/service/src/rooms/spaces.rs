//! Spaces and the ways into a room: `/hierarchy`, room summaries, restricted joins, knocking
//! and room upgrades.

use ruma::{
    events::room::member::MembershipState, events::TimelineEventType, OwnedEventId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
};
use serde_json::{json, Value};

use paracord_core::{config::SUPPORTED_ROOM_VERSIONS, Error, ErrorKind, Result};

use super::{create::CreateRoom, pdu::stripped_event, NewEvent, Rooms, StateMap};

/// Rooms `/hierarchy` walks at most, whatever the pagination.
const MAX_HIERARCHY_ROOMS: usize = 1000;
/// Most rooms one `/hierarchy` asks other servers about.
const MAX_REMOTE_SUMMARIES: usize = 50;

/// Asks other servers (`via`) for the summary of a room this server is not in, with its
/// `children_state`.
pub type RemoteSummary<'a> = &'a (dyn Fn(OwnedRoomId, Vec<OwnedServerName>) -> futures::future::BoxFuture<'a, Option<Value>>
         + Send
         + Sync);

/// State copied into the replacement room by an upgrade.
const UPGRADE_COPIED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

impl Rooms {
    /// A local user's join of a room that replaces another (its create event names a
    /// `predecessor`): their settings for the old room follow them (spec, room upgrades:
    /// "When a user joins the new room, the server should automatically transfer ... the
    /// user's personalized settings such as notifications"), which is the room's push rule.
    /// This covers every upgrade alike: made here or by another server, through
    /// `/upgrade` or by hand. `state` is the room's state at the join.
    pub(crate) fn follow_predecessor(&self, room_id: &RoomId, state: &StateMap, user: &UserId) {
        let Some(account_data) = &self.account_data else {
            return;
        };
        let predecessor = match self.state_content(state, "m.room.create", "") {
            Ok(Some(c)) => c["predecessor"]["room_id"]
                .as_str()
                .and_then(|r| OwnedRoomId::try_from(r).ok()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%room_id, "create event unreadable: {e}");
                None
            }
        };
        let Some(old) = predecessor.filter(|old| old != room_id) else {
            return;
        };
        // The join is committed whatever happens here: a failure only loses the copy.
        match account_data.copy_room_push_rule(user, &old, room_id) {
            Ok(true) => tracing::debug!(%room_id, %old, %user, "push rule carried over"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%room_id, %old, %user, "push rule not carried over: {e}"),
        }
    }
}

/// The state an invite carries so the invitee can see what the room is.
pub(crate) const INVITE_STATE_KINDS: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

impl Rooms {
    fn join_rule(&self, state: &StateMap) -> Result<String> {
        Ok(self
            .state_content(state, "m.room.join_rules", "")?
            .and_then(|c| c["join_rule"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "invite".to_owned()))
    }

    /// Rooms named by a restricted join rule's allow list.
    fn allowed_rooms(&self, state: &StateMap) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .state_content(state, "m.room.join_rules", "")?
            .and_then(|c| c["allow"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|a| a["type"] == "m.room_membership")
            .filter_map(|a| {
                a["room_id"]
                    .as_str()
                    .and_then(|r| OwnedRoomId::try_from(r).ok())
            })
            .collect())
    }

    /// Whether `user` may see a room's summary without being in it.
    pub fn can_peek_summary(&self, room_id: &RoomId, user: Option<&UserId>) -> Result<bool> {
        let state = self.current_state(room_id)?;
        if let Some(u) = user {
            if matches!(
                self.membership(room_id, u)?,
                Some(MembershipState::Join)
                    | Some(MembershipState::Invite)
                    | Some(MembershipState::Knock)
            ) {
                return Ok(true);
            }
        }
        let rule = self.join_rule(&state)?;
        if matches!(rule.as_str(), "public" | "knock" | "knock_restricted") {
            return Ok(true);
        }
        let world_readable = self
            .state_content(&state, "m.room.history_visibility", "")?
            .is_some_and(|c| c["history_visibility"] == "world_readable");
        if world_readable {
            return Ok(true);
        }
        if rule == "restricted" {
            if let Some(u) = user {
                for allowed in self.allowed_rooms(&state)? {
                    if self.is_joined(&allowed, u)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// The summary of a room (`/room_summary`), with the asker's membership.
    pub fn room_summary(&self, room_id: &RoomId, user: Option<&UserId>) -> Result<Value> {
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("room not known to this server"))?;
        if !self.can_peek_summary(room_id, user)? {
            return Err(Error::forbidden("you may not see this room"));
        }
        let state = self.state(room.state)?;
        let mut summary = self.public_room_chunk(room_id)?;
        summary["room_version"] = json!(room.version);
        if let Some(enc) = self.state_content(&state, "m.room.encryption", "")? {
            summary["encryption"] = enc["algorithm"].clone();
        }
        if let Some(u) = user {
            summary["membership"] = json!(self
                .membership(room_id, u)?
                .unwrap_or(MembershipState::Leave)
                .as_str());
        }
        Ok(summary)
    }

    /// A room's `m.space.child` events (stripped, with their timestamps) that name at least
    /// one server, with the child room and those servers.
    fn space_children(
        &self,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<Vec<(Value, OwnedRoomId, Vec<OwnedServerName>)>> {
        let state = self.current_state(room_id)?;
        let mut out = Vec::new();
        for ((kind, key), short) in state.range(("m.space.child".to_owned(), String::new())..) {
            if kind != "m.space.child" {
                break;
            }
            let Some(raw) = self.raw_pdu(*short)? else {
                continue;
            };
            let mut ev = stripped_event(&raw)?;
            let via: Vec<OwnedServerName> = ev["content"]["via"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .filter_map(|v| OwnedServerName::try_from(v).ok())
                .collect();
            let suggested = ev["content"]["suggested"].as_bool().unwrap_or(false);
            let Ok(child) = OwnedRoomId::try_from(key.as_str()) else {
                continue;
            };
            if via.is_empty() || (suggested_only && !suggested) {
                continue;
            }
            // Children state carries its timestamp (clients order children by it).
            ev["origin_server_ts"] =
                serde_json::from_slice::<Value>(&raw)?["origin_server_ts"].clone();
            out.push((ev, child, via));
        }
        Ok(out)
    }

    /// Whether this server has a member joined to the room.
    fn resident_here(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.room(room_id)?.is_some()
            && self
                .joined_members(room_id)?
                .iter()
                .any(|m| m.server_name() == self.config.server_name.as_str()))
    }

    /// `/hierarchy`: the space tree under `root`, breadth first. Rooms this server is not in
    /// are asked of the servers their `m.space.child` events name, through `remote` (which
    /// returns the room's summary with its `children_state`), at most [`MAX_REMOTE_SUMMARIES`]
    /// times. Returns the page and the offset of the next one.
    #[allow(clippy::too_many_arguments)]
    pub async fn hierarchy(
        &self,
        user: &UserId,
        root: &RoomId,
        suggested_only: bool,
        max_depth: Option<usize>,
        from: usize,
        limit: usize,
        remote: RemoteSummary<'_>,
    ) -> Result<(Vec<Value>, Option<usize>)> {
        let root_here = self.resident_here(root)?;
        if root_here && !self.can_peek_summary(root, Some(user))? {
            return Err(Error::forbidden("you may not see this space"));
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let root_via: Vec<OwnedServerName> = root
            .server_name()
            .map(|s| s.to_owned())
            .into_iter()
            .collect();
        let mut queue = std::collections::VecDeque::from([(root.to_owned(), 0usize, root_via)]);
        let mut asked = 0usize;
        // Depth first, children in their order (as other servers walk it, and clients page
        // through it): the queue is a stack, children pushed last to first.
        while let Some((room_id, depth, via)) = queue.pop_back() {
            if out.len() >= MAX_HIERARCHY_ROOMS || !seen.insert(room_id.clone()) {
                continue;
            }
            let (mut chunk, children) = if self.resident_here(&room_id)? {
                if !self.can_peek_summary(&room_id, Some(user))? {
                    continue;
                }
                let children = self.space_children(&room_id, suggested_only)?;
                let chunk = self.public_room_chunk(&room_id)?;
                (chunk, children)
            } else {
                if asked >= MAX_REMOTE_SUMMARIES || via.is_empty() {
                    continue;
                }
                asked += 1;
                let Some(mut chunk) = remote(room_id.clone(), via).await else {
                    continue;
                };
                // A restricted room of another server is shown only to users in a room that
                // grants access to it (the summary names them: `allowed_room_ids`).
                // (A `knock_restricted` room can be knocked on by anyone: it stays.)
                if chunk["join_rule"] == "restricted" {
                    let allowed: Vec<OwnedRoomId> = chunk["allowed_room_ids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
                        .collect();
                    let mut may = self.is_joined(&room_id, user)?;
                    for r in &allowed {
                        may = may || self.is_joined(r, user)?;
                    }
                    if !may {
                        continue;
                    }
                }
                if let Some(o) = chunk.as_object_mut() {
                    o.remove("allowed_room_ids");
                }
                let children = chunk["children_state"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ev| {
                        let child = OwnedRoomId::try_from(ev["state_key"].as_str()?).ok()?;
                        let via: Vec<OwnedServerName> = ev["content"]["via"]
                            .as_array()?
                            .iter()
                            .filter_map(|v| v.as_str())
                            .filter_map(|v| OwnedServerName::try_from(v).ok())
                            .collect();
                        let suggested = ev["content"]["suggested"].as_bool().unwrap_or(false);
                        (!via.is_empty() && (!suggested_only || suggested))
                            .then(|| (ev.clone(), child, via))
                    })
                    .collect();
                (chunk, children)
            };
            let mut children = children;
            // Only spaces have children to follow: an `m.space.child` in an ordinary room
            // is not part of the hierarchy (spec: "rooms which are not spaces").
            if chunk["room_type"] != "m.space" {
                children.clear();
            }
            order_children(&mut children);
            let mut children_state = Vec::new();
            let mut next = Vec::new();
            for (ev, child, via) in children {
                if max_depth.is_none_or(|d| depth < d) {
                    next.push((child, depth + 1, via));
                }
                children_state.push(ev);
            }
            queue.extend(next.into_iter().rev());
            chunk["children_state"] = json!(children_state);
            out.push(chunk);
        }
        if out.is_empty() {
            return Err(Error::not_found(
                "space not known to this server or its servers",
            ));
        }
        let total = out.len();
        let page: Vec<Value> = out.into_iter().skip(from).take(limit).collect();
        let next = (from.saturating_add(limit) < total).then(|| from.saturating_add(limit));
        Ok((page, next))
    }

    /// Whether another server may see a room's summary: the room is public, knockable or
    /// world-readable, the server has a member in it, or (restricted) in a room it allows.
    fn server_may_peek(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        let state = self.current_state(room_id)?;
        let rule = self.join_rule(&state)?;
        if matches!(rule.as_str(), "public" | "knock" | "knock_restricted") {
            return Ok(true);
        }
        let world_readable = self
            .state_content(&state, "m.room.history_visibility", "")?
            .is_some_and(|c| c["history_visibility"] == "world_readable");
        if world_readable || self.server_in_room(room_id, server)? {
            return Ok(true);
        }
        if rule == "restricted" {
            for allowed in self.allowed_rooms(&state)? {
                if self.room(&allowed)?.is_some() && self.server_in_room(&allowed, server)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// A child's summary for another server (no `children_state`; restricted rooms name
    /// the rooms that allow joining).
    fn child_summary(&self, room_id: &RoomId) -> Result<Value> {
        let room = self.room_or_404(room_id)?;
        let state = self.state(room.state)?;
        let mut chunk = self.public_room_chunk(room_id)?;
        chunk["room_version"] = json!(room.version);
        let allowed = self.allowed_rooms(&state)?;
        if !allowed.is_empty() {
            chunk["allowed_room_ids"] = json!(allowed);
        }
        if let Some(enc) = self.state_content(&state, "m.room.encryption", "")? {
            chunk["encryption"] = enc["algorithm"].clone();
        }
        Ok(chunk)
    }

    /// `GET /_matrix/federation/v1/hierarchy/{roomId}`: the room with its `children_state`,
    /// the children this server knows and `origin` may see, and those it may not.
    pub fn federation_hierarchy(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<Value> {
        if !self.resident_here(room_id)? {
            return Err(Error::not_found("room not known to this server"));
        }
        if !self.server_may_peek(room_id, origin)? {
            return Err(Error::forbidden(
                "this room's summary is not visible to your server",
            ));
        }
        let mut room = self.child_summary(room_id)?;
        let mut children_state = Vec::new();
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for (ev, child, _) in self.space_children(room_id, suggested_only)? {
            children_state.push(ev);
            if !self.resident_here(&child)? {
                continue;
            }
            if self.server_may_peek(&child, origin)? {
                children.push(self.child_summary(&child)?);
            } else {
                inaccessible.push(json!(child));
            }
        }
        room["children_state"] = json!(children_state);
        Ok(json!({ "room": room, "children": children, "inaccessible_children": inaccessible }))
    }

    /// For a restricted room: the local member who vouches for `user`'s join, or `None` when
    /// the join rule does not need one.
    pub(crate) fn join_authoriser(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let room = self.room_or_404(room_id)?;
        let state = self.state(room.state)?;
        let rule = self.join_rule(&state)?;
        if !matches!(rule.as_str(), "restricted" | "knock_restricted") {
            return Ok(None);
        }
        if matches!(
            self.membership_in(&state, user)?,
            Some(MembershipState::Invite) | Some(MembershipState::Join)
        ) {
            return Ok(None);
        }
        let mut allowed = false;
        for r in self.allowed_rooms(&state)? {
            // Only a room this server is still in tells who is in it now.
            let resident = self
                .servers_in_room(&r)?
                .iter()
                .any(|s| s.as_str() == self.config.server_name);
            if resident && self.is_joined(&r, user)? {
                allowed = true;
                break;
            }
        }
        if !allowed {
            if rule == "knock_restricted" {
                return Ok(None);
            }
            return Err(Error::forbidden(
                "you are not in any room that grants access to this one",
            ));
        }
        let invite_level = self.required_level(&state, "invite", 0)?;
        for member in self.joined_members(room_id)? {
            if member.server_name() == self.config.server_name.as_str()
                && self.power_level(&room.version, &state, &member)? >= invite_level
            {
                return Ok(Some(member));
            }
        }
        // Spec: another resident server may be able to (the joining server tries it).
        Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ErrorKind::UnableToAuthoriseJoin,
            "no member of this server can authorise your join",
        ))
    }

    /// Knocks on a room.
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.room(room_id)?.ok_or_else(|| {
            Error::not_found("room not known to this server (federation is not supported yet)")
        })?;
        let mut content = json!({ "membership": "knock" });
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        self.append(
            room_id,
            user,
            NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content),
        )
        .await
    }

    /// Stripped state shown to a knocker or invitee.
    pub fn stripped_state(
        &self,
        room_id: &RoomId,
        own_member_event: Option<&str>,
    ) -> Result<Vec<Value>> {
        let state = self.current_state(room_id)?;
        let mut events = Vec::new();
        for kind in INVITE_STATE_KINDS {
            if let Some(short) = state.get(&((*kind).to_owned(), String::new())) {
                if *kind == "m.room.create" {
                    // The whole create event (MSC4311), as clients see events.
                    if let Some((_, ev)) = self.client_event(*short, None)? {
                        events.push(ev);
                    }
                    continue;
                }
                if let Some(raw) = self.raw_pdu(*short)? {
                    events.push(stripped_event(&raw)?);
                }
            }
        }
        if let Some(eid) = own_member_event.and_then(|e| OwnedEventId::try_from(e).ok()) {
            if let Some(short) = self.short_id(&eid)? {
                if let Some(raw) = self.raw_pdu(short)? {
                    events.push(stripped_event(&raw)?);
                }
            }
        }
        Ok(events)
    }

    /// The invite state as full PDUs, as federation sends it (since Matrix 1.16).
    pub fn invite_state_pdus(&self, room_id: &RoomId) -> Result<Vec<Value>> {
        let state = self.current_state(room_id)?;
        let mut events = Vec::new();
        for kind in INVITE_STATE_KINDS {
            if let Some(short) = state.get(&((*kind).to_owned(), String::new())) {
                if let Some(raw) = self.raw_pdu(*short)? {
                    events.push(serde_json::from_slice(&raw)?);
                }
            }
        }
        Ok(events)
    }

    /// Upgrades a room: a new room of `new_version` with the old one's important state, a
    /// tombstone in the old one, its local aliases moved, and sending there restricted.
    pub async fn upgrade_room(
        &self,
        old: &RoomId,
        user: &UserId,
        new_version: &str,
        additional_creators: Option<&Value>,
        profile: (Option<String>, Option<String>),
    ) -> Result<OwnedRoomId> {
        if !SUPPORTED_ROOM_VERSIONS.contains(&new_version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::UnsupportedRoomVersion,
                format!("room version {new_version} is not supported"),
            ));
        }
        let room = self.room_or_404(old)?;
        let state = self.state(room.state)?;
        if !self.is_joined(old, user)? {
            return Err(Error::forbidden("you are not in this room"));
        }
        let tombstone_level = self
            .state_content(&state, "m.room.power_levels", "")?
            .and_then(|pl| {
                pl["events"]
                    .get("m.room.tombstone")
                    .and_then(super::json_int)
            })
            .map_or_else(|| self.required_level(&state, "state_default", 50), Ok)?;
        if self.power_level(&room.version, &state, user)? < tombstone_level {
            return Err(Error::forbidden("you may not upgrade this room"));
        }
        let old_create = self
            .state_content(&state, "m.room.create", "")?
            .unwrap_or_default();
        let mut creation = json!({ "predecessor": { "room_id": old } });
        if new_version != "12" {
            if let Some(last) = room.extremities.first() {
                creation["predecessor"]["event_id"] = json!(last);
            }
        }
        for key in ["type", "m.federate"] {
            if let Some(v) = old_create.get(key) {
                creation[key] = v.clone();
            }
        }
        let mut initial_state = Vec::new();
        for kind in UPGRADE_COPIED_STATE {
            if let Some(content) = self.state_content(&state, kind, "")? {
                initial_state.push(((*kind).to_owned(), String::new(), content));
            }
        }
        let new_rules = super::rules_for(new_version)?;
        // MSC4289: the upgrade may name further creators of the new room.
        let additional = super::create::additional_creators(additional_creators)?;
        if !additional.is_empty() {
            if !new_rules.authorization.additional_room_creators {
                return Err(Error::bad_json(format!(
                    "room version {new_version} has no additional creators"
                )));
            }
            creation["additional_creators"] = json!(additional);
        }
        let mut pl = self
            .state_content(&state, "m.room.power_levels", "")?
            .unwrap_or_else(|| json!({}));
        if new_rules.authorization.explicitly_privilege_room_creators {
            // Creators of v12 rooms hold their power through the create event.
            if let Some(users) = pl["users"].as_object_mut() {
                users.remove(user.as_str());
                for c in &additional {
                    users.remove(c.as_str());
                }
            }
        } else {
            pl["users"][user.as_str()] = json!(100);
        }
        let aliases = self.local_aliases(old)?;
        let canonical = self.state_content(&state, "m.room.canonical_alias", "")?;
        let new_room = self
            .create_room(
                user,
                CreateRoom {
                    version: Some(new_version.to_owned()),
                    preset: None,
                    public: false,
                    name: None,
                    topic: None,
                    alias: None,
                    invite: vec![],
                    is_direct: false,
                    initial_state,
                    power_level_override: Some(pl),
                    creation_content: Some(creation),
                    profile,
                },
            )
            .await?;
        // Bans carry over.
        for (member, m) in self.members(old)? {
            if m == MembershipState::Ban {
                let _ = self
                    .ban(
                        &new_room,
                        user,
                        &member,
                        Some("banned in the predecessor room"),
                    )
                    .await;
            }
        }
        self.append(
            old,
            user,
            NewEvent::state(
                TimelineEventType::RoomTombstone,
                "",
                json!({ "body": "This room has been replaced", "replacement_room": new_room }),
            ),
        )
        .await?;
        // Aliases now lead to the new room.
        for alias in aliases {
            if let Ok(a) = ruma::OwnedRoomAliasId::try_from(alias) {
                self.repoint_alias(&a, &new_room)?;
            }
        }
        if let Some(c) = canonical {
            self.append(
                &new_room,
                user,
                NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", c),
            )
            .await?;
            let _ = self
                .append(
                    old,
                    user,
                    NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", json!({})),
                )
                .await;
        }
        // Keep people from talking in the old room.
        let room = self.room_or_404(old)?;
        let state = self.state(room.state)?;
        if let Some(mut pl) = self.state_content(&state, "m.room.power_levels", "")? {
            let users_default = pl["users_default"].as_i64().unwrap_or(0);
            let restricted = users_default.saturating_add(1).max(50);
            pl["events_default"] = json!(restricted);
            pl["invite"] = json!(restricted);
            let _ = self
                .append(
                    old,
                    user,
                    NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl),
                )
                .await;
        }
        Ok(new_room)
    }
}

/// A space's children in the order the spec gives clients
/// (https://spec.matrix.org/v1.19/client-server-api/#ordering-of-children-within-a-space):
/// those with a valid `order` (up to 50 characters of 0x20–0x7E) first, by `order`; then by
/// the `m.space.child` event's `origin_server_ts`; ties by room id. `/hierarchy` walks them in
/// that order, so a guild's channels come out as the guild lists them.
fn order_children<T>(children: &mut [(Value, OwnedRoomId, T)]) {
    fn order(ev: &Value) -> Option<&str> {
        ev["content"]["order"]
            .as_str()
            .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7E).contains(&b)))
    }
    children.sort_by(|(a, a_id, _), (b, b_id, _)| {
        let key = |ev: &Value| {
            (
                // `None` sorts first: invert so that ordered children come first.
                order(ev).is_none(),
                order(ev).map(str::to_owned),
                ev["origin_server_ts"].as_u64().unwrap_or(u64::MAX),
            )
        };
        key(a).cmp(&key(b)).then_with(|| a_id.cmp(b_id))
    });
}

#[cfg(test)]
mod ordering_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn children_come_by_order_then_timestamp_then_room_id() {
        let child = |id: &str, content: Value, ts: u64| {
            (
                json!({ "content": content, "origin_server_ts": ts }),
                OwnedRoomId::try_from(id).unwrap_or_else(|_| panic!("room id {id}")),
                (),
            )
        };
        let mut children = vec![
            child("!late:x", json!({ "via": ["x"] }), 5),
            child("!b:x", json!({ "via": ["x"], "order": "0002" }), 9),
            child("!early:x", json!({ "via": ["x"] }), 1),
            child("!bad:x", json!({ "via": ["x"], "order": "\u{7f}" }), 3),
            child("!a:x", json!({ "via": ["x"], "order": "0001" }), 9),
            child("!tie2:x", json!({ "via": ["x"], "order": "0003" }), 4),
            child("!tie1:x", json!({ "via": ["x"], "order": "0003" }), 4),
        ];
        order_children(&mut children);
        let ids: Vec<&str> = children.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            ["!a:x", "!b:x", "!tie1:x", "!tie2:x", "!early:x", "!bad:x", "!late:x"]
        );
    }
}
