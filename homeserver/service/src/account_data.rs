//! Account data (global and per room) and stored sync filters.

use std::sync::Arc;

use paracord_core::{Error, Result};
use paracord_storage::{Batch, Db, Table};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stream::Stream;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    content: Value,
    pos: u64,
}

/// One account data entry: `(room or None for global, type, content)`.
pub type Entry = (Option<OwnedRoomId>, String, Value);

pub struct AccountData {
    db: Arc<Db>,
    stream: Arc<Stream>,
    /// Parsed push rules: every event is evaluated against every member's rules.
    push_rules_cache:
        parking_lot::Mutex<std::collections::HashMap<ruma::OwnedUserId, Arc<ruma::push::Ruleset>>>,
    /// Held across each read-modify-write of a rule set (`update_push_rules`), so two
    /// concurrent changes cannot both start from the same rules and lose one of them. Edits
    /// are rare and quick: one lock for every user is enough.
    push_rules_edit: parking_lot::Mutex<()>,
}

paracord_storage::key! {
    /// The key of `userroomtype_accountdata`: `user_id 0xFF room_id 0xFF type`, room "" for
    /// global account data. Every key of a user's account data (global and per room) starts
    /// with its `prefix`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct AccountDataKey<'a> {
        user_id: str => prefix,
        room_id: str,
        kind: last_str,
    }
}

paracord_storage::key! {
    /// The key of `userfilter_filter`: `user_id 0xFF filter_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct FilterKey<'a> {
        user_id: str,
        filter_id: last_str,
    }
}

fn key(user: &UserId, room: Option<&RoomId>, kind: &str) -> Vec<u8> {
    AccountDataKey {
        user_id: user.as_str(),
        room_id: room.map(|r| r.as_str()).unwrap_or(""),
        kind,
    }
    .encode()
}

impl AccountData {
    pub fn new(db: Arc<Db>, stream: Arc<Stream>) -> Self {
        Self {
            db,
            stream,
            push_rules_cache: Default::default(),
            push_rules_edit: Default::default(),
        }
    }

    pub fn get(&self, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        match self
            .db
            .get(Table::UserroomtypeAccountdata, &key(user, room, kind))?
        {
            Some(v) => Ok(Some(serde_json::from_slice::<Record>(&v)?.content)),
            None => Ok(None),
        }
    }

    pub fn set(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("account data content must be an object"));
        }
        self.stream.commit(|pos, batch| {
            batch.put(
                Table::UserroomtypeAccountdata,
                key(user, room, kind),
                serde_json::to_vec(&Record {
                    content: content.clone(),
                    pos,
                })?,
            );
            Ok(())
        })?;
        if kind == "m.push_rules" && room.is_none() {
            // After the write, so a concurrent read cannot cache the old rules again; also
            // when a client writes the account data directly.
            self.push_rules_cache.lock().remove(user);
        }
        self.stream.notifier().wake([user]);
        Ok(())
    }

    /// Entries changed after `since` (all entries when `since` is None).
    pub fn changed_since(
        &self,
        user: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Entry>> {
        let prefix = AccountDataKey::prefix(user.as_str());
        let mut out = Vec::new();
        for (k, v) in self
            .db
            .scan_prefix(Table::UserroomtypeAccountdata, &prefix)?
        {
            let rec: Record = serde_json::from_slice(&v)?;
            if since.is_some_and(|s| rec.pos <= s) || rec.pos > upto {
                continue;
            }
            let AccountDataKey {
                room_id: room,
                kind,
                ..
            } = AccountDataKey::decode(&k)?;
            let kind = kind.to_owned();
            let room = if room.is_empty() {
                None
            } else {
                OwnedRoomId::try_from(room).ok()
            };
            out.push((room, kind, rec.content));
        }
        Ok(out)
    }

    /// The user's push rules: as stored in the `m.push_rules` account data, or the spec's
    /// defaults for a user who never changed them.
    pub fn push_rules(&self, user: &UserId) -> Result<Arc<ruma::push::Ruleset>> {
        if let Some(r) = self.push_rules_cache.lock().get(user) {
            return Ok(r.clone());
        }
        let rules = match self.get(user, None, "m.push_rules")? {
            Some(stored) => serde_json::from_value::<ruma::push::Ruleset>(stored["global"].clone())
                .unwrap_or_else(|_| ruma::push::Ruleset::server_default(user)),
            None => ruma::push::Ruleset::server_default(user),
        };
        let rules = Arc::new(rules);
        let mut cache = self.push_rules_cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(user.to_owned(), rules.clone());
        Ok(rules)
    }

    pub fn set_push_rules(&self, user: &UserId, rules: &ruma::push::Ruleset) -> Result<()> {
        self.set(
            user,
            None,
            "m.push_rules",
            serde_json::json!({ "global": rules }),
        )
    }

    /// Changes the user's push rules with `edit` and stores them, unless `edit` fails; no
    /// other change of push rules runs in between.
    pub fn update_push_rules<T>(
        &self,
        user: &UserId,
        edit: impl FnOnce(&mut ruma::push::Ruleset) -> Result<T>,
    ) -> Result<T> {
        let _editing = self.push_rules_edit.lock();
        let mut rules = ruma::push::Ruleset::clone(&*self.push_rules(user)?);
        let out = edit(&mut rules)?;
        self.set_push_rules(user, &rules)?;
        Ok(out)
    }

    /// Copies the user's push rule for room `from` (a room-specific rule, whose id is the
    /// room id) to room `to`, actions and enabled state alike, unless `to` has one already.
    /// Returns whether a rule was copied.
    pub fn copy_room_push_rule(&self, user: &UserId, from: &RoomId, to: &RoomId) -> Result<bool> {
        use ruma::push::{AnyPushRuleRef, NewPushRule, NewSimplePushRule, RuleKind};
        let current = self.push_rules(user)?;
        if !matches!(
            current.get(RuleKind::Room, from.as_str()),
            Some(AnyPushRuleRef::Room(_))
        ) || current.get(RuleKind::Room, to.as_str()).is_some()
        {
            // Nothing to copy: no write (and no wait for the edit lock).
            return Ok(false);
        }
        self.update_push_rules(user, |rules| {
            let Some(AnyPushRuleRef::Room(old)) = rules.get(RuleKind::Room, from.as_str()) else {
                return Ok(false);
            };
            if rules.get(RuleKind::Room, to.as_str()).is_some() {
                return Ok(false);
            }
            let (actions, enabled) = (old.actions.clone(), old.enabled);
            let copy_failed =
                |e: &dyn std::fmt::Display| Error::internal(format!("push rule not copied: {e}"));
            rules
                .insert(
                    NewPushRule::Room(NewSimplePushRule::new(to.to_owned(), actions)),
                    None,
                    None,
                )
                .map_err(|e| copy_failed(&e))?;
            rules
                .set_enabled(RuleKind::Room, to.as_str(), enabled)
                .map_err(|e| copy_failed(&e))?;
            Ok(true)
        })
    }

    /// Users in the `m.ignored_user_list` of `user`.
    pub fn ignored_users(&self, user: &UserId) -> Result<Vec<String>> {
        Ok(self
            .get(user, None, "m.ignored_user_list")?
            .and_then(|c| {
                c.get("ignored_users")
                    .and_then(|i| i.as_object())
                    .map(|o| o.keys().cloned().collect())
            })
            .unwrap_or_default())
    }

    pub fn create_filter(&self, user: &UserId, filter: &Value) -> Result<String> {
        let id: String = crate::random::random_string(12);
        let mut batch = Batch::new();
        batch.put(
            Table::UserfilterFilter,
            FilterKey {
                user_id: user.as_str(),
                filter_id: &id,
            }
            .encode(),
            serde_json::to_vec(filter)?,
        );
        self.db.write(batch)?;
        Ok(id)
    }

    pub fn filter(&self, user: &UserId, id: &str) -> Result<Option<Value>> {
        match self.db.get(
            Table::UserfilterFilter,
            &FilterKey {
                user_id: user.as_str(),
                filter_id: id,
            }
            .encode(),
        )? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn account_data_key_round_trips_and_layout_is_stable() {
        let key = AccountDataKey {
            user_id: "@u:x",
            room_id: "!r:x",
            kind: "m.tag",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFF!r:x\xFFm.tag");
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@u:x")
                .str("!r:x")
                .last_str("m.tag")
                .into_vec()
        );
        assert_eq!(AccountDataKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&AccountDataKey::prefix("@u:x")));
        // Global account data has an empty room.
        let global = AccountDataKey { room_id: "", ..key }.encode();
        assert_eq!(global, b"@u:x\xFF\xFFm.tag");
        assert_eq!(AccountDataKey::decode(&global).unwrap().room_id, "");
        assert!(AccountDataKey::decode(b"@u:x\xFFm.tag").is_err());
    }

    #[test]
    fn filter_key_layout_is_stable() {
        let bytes = FilterKey {
            user_id: "@u:x",
            filter_id: "abc",
        }
        .encode();
        assert_eq!(bytes, b"@u:x\xFFabc");
        assert_eq!(bytes, KeyBuf::new().str("@u:x").last_str("abc").into_vec());
    }
}
