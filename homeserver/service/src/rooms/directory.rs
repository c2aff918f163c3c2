//! Room aliases and the public room directory.

use ruma::{
    events::room::member::MembershipState, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use paracord_core::{Error, Result};
use std::collections::{HashMap, HashSet};

use paracord_storage::{Batch, Table};

use super::{NewEvent, Rooms};
use crate::user_directory;

#[derive(Debug, Serialize, Deserialize)]
struct AliasRecord {
    room_id: OwnedRoomId,
    creator: OwnedUserId,
}

impl Rooms {
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        match self.db.get(Table::AliasRoomid, alias.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice::<AliasRecord>(&v)?.room_id)),
            None => Ok(None),
        }
    }

    fn check_local_alias(&self, alias: &RoomAliasId) -> Result<()> {
        if alias.server_name() != self.config.server_name.as_str() {
            return Err(Error::invalid_param("alias must be on this server"));
        }
        Ok(())
    }

    pub fn set_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        self.check_local_alias(alias)?;
        if self.resolve_alias(alias)?.is_some() {
            return Err(Error::new(
                http::StatusCode::CONFLICT,
                paracord_core::ErrorKind::Unknown,
                "room alias already exists",
            ));
        }
        self.room_or_404(room_id)?;
        let mut batch = Batch::new();
        let rec = AliasRecord {
            room_id: room_id.to_owned(),
            creator: creator.to_owned(),
        };
        batch.put(
            Table::AliasRoomid,
            alias.as_bytes().to_vec(),
            serde_json::to_vec(&rec)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// Points an existing local alias at another room (room upgrades).
    pub(crate) fn repoint_alias(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let Some(v) = self.db.get(Table::AliasRoomid, alias.as_bytes())? else {
            return Ok(());
        };
        let mut rec: AliasRecord = serde_json::from_slice(&v)?;
        rec.room_id = room_id.to_owned();
        let mut batch = Batch::new();
        batch.put(
            Table::AliasRoomid,
            alias.as_bytes().to_vec(),
            serde_json::to_vec(&rec)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// Deletes an alias: its creator, a server admin, or a room member with power to change
    /// the canonical alias may.
    pub fn delete_alias(
        &self,
        alias: &RoomAliasId,
        user: &UserId,
        is_admin: bool,
    ) -> Result<OwnedRoomId> {
        self.check_local_alias(alias)?;
        let Some(v) = self.db.get(Table::AliasRoomid, alias.as_bytes())? else {
            return Err(Error::not_found("room alias not found"));
        };
        let rec: AliasRecord = serde_json::from_slice(&v)?;
        let allowed = is_admin || rec.creator == user || {
            let room = self.room_or_404(&rec.room_id)?;
            let state = self.state(room.state)?;
            let needed = self
                .state_content(&state, "m.room.power_levels", "")?
                .and_then(|pl| {
                    pl["events"]
                        .get("m.room.canonical_alias")
                        .and_then(super::json_int)
                })
                .unwrap_or(50);
            self.is_joined(&rec.room_id, user)?
                && self.power_level(&room.version, &state, user)? >= needed
        };
        if !allowed {
            return Err(Error::forbidden("you may not delete this alias"));
        }
        let mut batch = Batch::new();
        batch.delete(Table::AliasRoomid, alias.as_bytes().to_vec());
        self.db.write(batch)?;
        Ok(rec.room_id)
    }

    /// Takes a deleted alias out of the room's `m.room.canonical_alias` (as `alias` or among
    /// `alt_aliases`), sent by `user`. A user without the power to change it leaves it as it
    /// is (the alias is deleted either way).
    pub async fn forget_canonical_alias(
        &self,
        room_id: &RoomId,
        alias: &RoomAliasId,
        user: &UserId,
    ) -> Result<()> {
        let state = self.current_state(room_id)?;
        let Some(mut content) = self.state_content(&state, "m.room.canonical_alias", "")? else {
            return Ok(());
        };
        let Some(obj) = content.as_object_mut() else {
            return Ok(());
        };
        let mut changed = false;
        if obj.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            obj.remove("alias");
            changed = true;
        }
        if let Some(alt) = obj.get_mut("alt_aliases").and_then(Value::as_array_mut) {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
            if alt.is_empty() {
                obj.remove("alt_aliases");
            }
        }
        if !changed {
            return Ok(());
        }
        if let Err(e) = self
            .append(
                room_id,
                user,
                NewEvent::state(
                    ruma::events::TimelineEventType::RoomCanonicalAlias,
                    "",
                    content,
                ),
            )
            .await
        {
            tracing::info!(%room_id, "the canonical alias keeps a deleted alias: {e}");
        }
        Ok(())
    }

    /// Local aliases pointing at a room.
    pub fn local_aliases(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Table::AliasRoomid, b"")? {
            let rec: AliasRecord = serde_json::from_slice(&v)?;
            if rec.room_id == room_id {
                out.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(out)
    }

    pub fn set_published(&self, room_id: &RoomId, public: bool) -> Result<()> {
        self.room_or_404(room_id)?;
        let mut batch = Batch::new();
        if public {
            batch.put(
                Table::RoomidPublished,
                room_id.as_bytes().to_vec(),
                Vec::new(),
            );
        } else {
            batch.delete(Table::RoomidPublished, room_id.as_bytes().to_vec());
        }
        Ok(self.db.write(batch)?)
    }

    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.db.exists(Table::RoomidPublished, room_id.as_bytes())?)
    }

    /// A public-rooms chunk entry for a room.
    pub fn public_room_chunk(&self, room_id: &RoomId) -> Result<Value> {
        let state = self.current_state(room_id)?;
        let get = |t: &str, field: &str| -> Result<Option<Value>> {
            Ok(self
                .state_content(&state, t, "")?
                .and_then(|c| c.get(field).cloned()))
        };
        let mut chunk = json!({
            "room_id": room_id,
            "num_joined_members": self.joined_members(room_id)?.len(),
            "world_readable": get("m.room.history_visibility", "history_visibility")?
                .is_some_and(|v| v == "world_readable"),
            "guest_can_join": get("m.room.guest_access", "guest_access")?.is_some_and(|v| v == "can_join"),
            "join_rule": get("m.room.join_rules", "join_rule")?.unwrap_or(json!("invite")),
        });
        for (t, f, out) in [
            ("m.room.name", "name", "name"),
            ("m.room.topic", "topic", "topic"),
            ("m.room.canonical_alias", "alias", "canonical_alias"),
            ("m.room.avatar", "url", "avatar_url"),
            ("m.room.create", "type", "room_type"),
        ] {
            if let Some(v) = get(t, f)? {
                if v.is_string() {
                    chunk[out] = v;
                }
            }
        }
        Ok(chunk)
    }

    /// The published rooms, filtered by a search term, most members first.
    pub fn public_rooms(&self, term: Option<&str>) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Table::RoomidPublished, b"")? {
            let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&k).into_owned())
            else {
                continue;
            };
            let chunk = self.public_room_chunk(&room_id)?;
            if let Some(term) = term.map(str::to_lowercase).filter(|t| !t.is_empty()) {
                let hay = ["name", "topic", "canonical_alias"]
                    .iter()
                    .filter_map(|f| chunk[*f].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                if !hay.contains(&term) {
                    continue;
                }
            }
            out.push(chunk);
        }
        out.sort_by(|a, b| {
            b["num_joined_members"]
                .as_u64()
                .cmp(&a["num_joined_members"].as_u64())
                .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        Ok(out)
    }
}

/// One page of the public room directory (`since` tokens `p<offset>`), for clients and
/// other servers alike.
pub fn public_rooms_page(
    all: Vec<Value>,
    since: Option<&str>,
    limit: Option<u64>,
) -> Result<Value> {
    let total = all.len();
    let start = match since {
        Some(s) => crate::tokens::parse_offset_token::<usize>('p', s)
            .ok_or_else(|| Error::invalid_param("invalid since token"))?,
        None => 0,
    };
    let limit = limit
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
        .max(1);
    let end = start.saturating_add(limit).min(total);
    let chunk: Vec<Value> = all
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if end < total {
        body["next_batch"] = json!(format!("p{end}"));
    }
    if start > 0 {
        body["prev_batch"] = json!(format!("p{}", start.saturating_sub(limit)));
    }
    Ok(body)
}

/// One user directory hit.
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl Rooms {
    /// Keeps the directory row of another server's user who joined a room (their name and
    /// avatar of that join; this server's users are in the directory under their global
    /// profile, written with their account).
    pub(crate) fn index_remote_member(
        &self,
        batch: &mut Batch,
        user: &UserId,
        membership: &str,
        content: &Value,
    ) -> Result<()> {
        if membership == "join" && user.server_name() != self.config.server_name.as_str() {
            user_directory::put(batch, user, &user_directory::entry_of_member(content))?;
        }
        Ok(())
    }

    /// Writes the directory rows of other servers' users joined to rooms here before the
    /// directory had rows, once. Returns how many it wrote.
    pub fn migrate_user_directory(&self) -> Result<usize> {
        crate::migrations::once(&self.db, b"user_directory_remote_v1", || {
            let mut batch = Batch::new();
            let mut count = 0;
            for (k, _) in self.db.scan_prefix(Table::RoomidRoom, b"")? {
                let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&k).into_owned())
                else {
                    continue;
                };
                let state = self.current_state(&room_id)?;
                for user in self.joined_members(&room_id)? {
                    if user.server_name() == self.config.server_name.as_str() {
                        continue;
                    }
                    let content = self
                        .state_content(&state, "m.room.member", user.as_str())?
                        .unwrap_or_default();
                    self.index_remote_member(&mut batch, &user, "join", &content)?;
                    count += 1;
                }
            }
            self.db.write(batch)?;
            Ok(count)
        })
    }

    /// Users who share a room with `requester` or are in a public room, whose id or display
    /// name contains `term` (case-insensitive), in user id order. Returns at most `limit` and
    /// whether there were more.
    ///
    /// Issue 15 item 14: the directory's rows are read (one per user this server knows), not
    /// every room's members and state; only the users whose name matches have their rooms
    /// looked at, and the search stops once it has one more than `limit`.
    pub fn search_users(
        &self,
        requester: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<DirectoryUser>, bool)> {
        let term = term.to_lowercase();
        let shared: HashSet<OwnedRoomId> = self
            .user_rooms(requester)?
            .into_iter()
            .filter(|(_, r)| r.membership == MembershipState::Join)
            .map(|(room, _)| room)
            .collect();
        // Whether a room is public (published in the directory or with a public join rule),
        // judged once per search.
        let mut public: HashMap<OwnedRoomId, bool> = HashMap::new();
        let mut found = Vec::new();
        let mut lower = Vec::new();
        'pages: loop {
            let rows = user_directory::page(&self.db, &lower, DIRECTORY_PAGE)?;
            for (k, v) in &rows {
                let Some((user, entry)) = user_directory::decode(k, v) else {
                    continue;
                };
                // The searcher is not among the results (as with other servers).
                if user == requester {
                    continue;
                }
                let hit = user.as_str().to_lowercase().contains(&term)
                    || entry
                        .displayname
                        .as_ref()
                        .is_some_and(|d| d.to_lowercase().contains(&term));
                if !hit {
                    continue;
                }
                let mut visible = false;
                for (room, r) in self.user_rooms(&user)? {
                    if r.membership != MembershipState::Join {
                        continue;
                    }
                    if shared.contains(&room) {
                        visible = true;
                        break;
                    }
                    let is_public = match public.get(&room) {
                        Some(p) => *p,
                        None => {
                            let state = self.current_state(&room)?;
                            let p = self.is_published(&room)?
                                || self
                                    .state_content(&state, "m.room.join_rules", "")?
                                    .is_some_and(|c| c["join_rule"] == "public");
                            public.insert(room, p);
                            p
                        }
                    };
                    if is_public {
                        visible = true;
                        break;
                    }
                }
                if visible {
                    found.push(DirectoryUser {
                        user_id: user,
                        display_name: entry.displayname,
                        avatar_url: entry.avatar_url,
                    });
                    if found.len() > limit {
                        break 'pages;
                    }
                }
            }
            match rows.last() {
                Some((last, _)) if rows.len() == DIRECTORY_PAGE => {
                    lower = [last.as_ref(), &[0]].concat();
                }
                _ => break,
            }
        }
        let limited = found.len() > limit;
        found.truncate(limit);
        Ok((found, limited))
    }
}

/// Directory rows read at a time.
const DIRECTORY_PAGE: usize = 500;

#[cfg(test)]
mod tests {
    use ruma::OwnedUserId;

    use super::*;
    use crate::rooms::{
        create::{CreateRoom, Preset},
        write_membership,
    };

    fn room(preset: Preset) -> CreateRoom {
        CreateRoom {
            preset: Some(preset),
            ..CreateRoom::default()
        }
    }

    // Issue 15 item 14: a user directory search reads the directory's rows and the rooms of
    // the users it matches, not every room of the server: 10,000 room records that cannot
    // even be read are never touched. Who is found is unchanged: people sharing a room and
    // people in public rooms, under their global profile (other servers' users under their
    // join), never the searcher, strangers or deactivated accounts.
    #[tokio::test]
    async fn user_search_reads_the_directory_not_every_room() {
        let (_dir, s) = crate::rooms::tests::services();
        let mut users = Vec::new();
        for name in ["alice", "bob", "carol", "dave", "erin"] {
            let r = s
                .accounts
                .register(Some(name), None, None, None, true, false, None)
                .await
                .unwrap();
            users.push(r.user_id);
        }
        let [alice, bob, carol, dave, erin] = users.try_into().unwrap();
        s.accounts
            .set_profile(&bob, Some(Some("Bobby Tables".into())), None)
            .unwrap();
        let private = s
            .rooms
            .create_room(&alice, room(Preset::PrivateChat))
            .await
            .unwrap();
        for u in [&bob, &erin] {
            s.rooms
                .invite(&private, &alice, u, None, false)
                .await
                .unwrap();
            s.rooms
                .join(&private, u, (Some("in-room name".into()), None), None)
                .await
                .unwrap();
        }
        let public = s
            .rooms
            .create_room(&carol, room(Preset::PublicChat))
            .await
            .unwrap();
        s.rooms
            .create_room(&dave, room(Preset::PrivateChat))
            .await
            .unwrap();
        s.accounts.deactivate(&erin).unwrap();
        // Another server's user in the shared room, as a federated join leaves it.
        let zed = OwnedUserId::try_from("@zed:remote.example").unwrap();
        let mut batch = Batch::new();
        let join = ruma::OwnedEventId::try_from("$join:remote.example").unwrap();
        write_membership(&mut batch, &private, &zed, "join", 1, &join).unwrap();
        s.rooms
            .index_remote_member(
                &mut batch,
                &zed,
                "join",
                &json!({ "displayname": "Zed Remote" }),
            )
            .unwrap();
        for n in 0..10_000 {
            batch.put(
                Table::RoomidRoom,
                format!("!junk{n}:localhost").into_bytes(),
                b"not a room record".to_vec(),
            );
        }
        s.db.write(batch).unwrap();
        s.rooms.members_changed(&private);
        assert_ne!(public, private);

        let search = |term: &str, limit| {
            let (found, limited) = s.rooms.search_users(&alice, term, limit).unwrap();
            let ids: Vec<String> = found.iter().map(|u| u.user_id.to_string()).collect();
            (ids, limited, found)
        };
        let (ids, limited, found) = search("", 10);
        assert_eq!(ids, [bob.to_string(), carol.to_string(), zed.to_string()]);
        assert!(!limited);
        assert_eq!(found[0].display_name.as_deref(), Some("Bobby Tables"));
        assert_eq!(found[2].display_name.as_deref(), Some("Zed Remote"));
        assert_eq!(search("tables", 10).0, [bob.to_string()]);
        assert_eq!(search("in-room", 10).0, Vec::<String>::new());
        assert_eq!(search("REMOTE", 10).0, [zed.to_string()]);
        assert_eq!(search("dave", 10).0, Vec::<String>::new());
        assert_eq!(search("erin", 10).0, Vec::<String>::new());
        let (ids, limited, _) = search("", 2);
        assert_eq!(ids, [bob.to_string(), carol.to_string()]);
        assert!(limited);

        // A database from before the directory's rows gets them at start (the junk rooms
        // gone: the one-time fill does read every room).
        let mut batch = Batch::new();
        for (k, _) in s.db.scan_prefix(Table::UseridDirectory, b"").unwrap() {
            batch.delete(Table::UseridDirectory, k.to_vec());
        }
        for n in 0..10_000 {
            batch.delete(
                Table::RoomidRoom,
                format!("!junk{n}:localhost").into_bytes(),
            );
        }
        batch.delete(Table::GlobalValue, b"user_directory_local_v1".to_vec());
        batch.delete(Table::GlobalValue, b"user_directory_remote_v1".to_vec());
        s.db.write(batch).unwrap();
        assert_eq!(search("", 10).0, Vec::<String>::new());
        assert_eq!(s.accounts.migrate_user_directory().unwrap(), 5);
        assert_eq!(s.rooms.migrate_user_directory().unwrap(), 1);
        assert_eq!(
            search("", 10).0,
            [bob.to_string(), carol.to_string(), zed.to_string()]
        );
    }
}
