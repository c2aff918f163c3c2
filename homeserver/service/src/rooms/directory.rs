//! Room aliases and the public room directory.

use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use paracord_core::{Error, Result};
use paracord_storage::{Batch, Table};

use super::{NewEvent, Rooms};

#[derive(Debug, Serialize, Deserialize)]
struct AliasRecord {
    room_id: OwnedRoomId,
    creator: OwnedUserId,
}

impl Rooms {
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        match self
            .db
            .get(Table::AliasRoomid, alias.as_bytes())
            .map_err(Error::internal)?
        {
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
        self.db.write(batch).map_err(Error::internal)
    }

    /// Points an existing local alias at another room (room upgrades).
    pub(crate) fn repoint_alias(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let Some(v) = self
            .db
            .get(Table::AliasRoomid, alias.as_bytes())
            .map_err(Error::internal)?
        else {
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
        self.db.write(batch).map_err(Error::internal)
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
        let Some(v) = self
            .db
            .get(Table::AliasRoomid, alias.as_bytes())
            .map_err(Error::internal)?
        else {
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
        self.db.write(batch).map_err(Error::internal)?;
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
        for (k, v) in self
            .db
            .scan_prefix(Table::AliasRoomid, b"")
            .map_err(Error::internal)?
        {
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
        self.db.write(batch).map_err(Error::internal)
    }

    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        self.db
            .exists(Table::RoomidPublished, room_id.as_bytes())
            .map_err(Error::internal)
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
        for (k, _) in self
            .db
            .scan_prefix(Table::RoomidPublished, b"")
            .map_err(Error::internal)?
        {
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

/// One user directory hit.
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl Rooms {
    /// Users who share a room with `requester` or are in a public room, whose id or display
    /// name contains `term` (case-insensitive). Returns at most `limit` and whether there were more.
    pub fn search_users(
        &self,
        requester: &UserId,
        term: &str,
        limit: usize,
        global_profile: &dyn Fn(&UserId) -> Option<(Option<String>, Option<String>)>,
    ) -> Result<(Vec<DirectoryUser>, bool)> {
        let term = term.to_lowercase();
        let mut rooms: Vec<OwnedRoomId> = self
            .user_rooms(requester)?
            .into_iter()
            .filter(|(_, r)| r.membership == "join")
            .map(|(room, _)| room)
            .collect();
        // Public rooms: published in the directory or with a public join rule.
        for (k, _) in self
            .db
            .scan_prefix(Table::RoomidRoom, b"")
            .map_err(Error::internal)?
        {
            let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&k).into_owned())
            else {
                continue;
            };
            let state = self.current_state(&room_id)?;
            let public = self.is_published(&room_id)?
                || self
                    .state_content(&state, "m.room.join_rules", "")?
                    .is_some_and(|c| c["join_rule"] == "public");
            if public {
                rooms.push(room_id);
            }
        }
        rooms.sort();
        rooms.dedup();
        let mut found: std::collections::BTreeMap<OwnedUserId, DirectoryUser> = Default::default();
        for room_id in rooms {
            let state = self.current_state(&room_id)?;
            for user in self.joined_members(&room_id)? {
                // The searcher is not among the results (as with other servers).
                if found.contains_key(&user) || user == requester {
                    continue;
                }
                let member = self
                    .state_content(&state, "m.room.member", user.as_str())?
                    .unwrap_or_default();
                // A user's own profile where this server has it: a name given in one room
                // stays in that room (other servers' users have only their room profiles).
                let (display_name, avatar_url) = global_profile(&user).unwrap_or_else(|| {
                    (
                        member["displayname"].as_str().map(str::to_owned),
                        member["avatar_url"].as_str().map(str::to_owned),
                    )
                });
                let hit = user.as_str().to_lowercase().contains(&term)
                    || display_name
                        .as_ref()
                        .is_some_and(|d| d.to_lowercase().contains(&term));
                if hit {
                    found.insert(
                        user.clone(),
                        DirectoryUser {
                            user_id: user,
                            display_name,
                            avatar_url,
                        },
                    );
                }
            }
        }
        let limited = found.len() > limit;
        Ok((found.into_values().take(limit).collect(), limited))
    }
}
