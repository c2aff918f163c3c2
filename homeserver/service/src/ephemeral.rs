//! Typing notifications, receipts and presence.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{Db, Table};
use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::stream::Stream;

/// Longest typing timeout honoured.
const MAX_TYPING_MS: u64 = 120_000;

paracord_storage::key! {
    /// The key of `roomreceipt_receipt` (read receipts):
    /// `room_id 0xFF receipt_type 0xFF user_id 0xFF thread`, thread "" for an unthreaded
    /// receipt. Every key of `user_id`'s receipts of `receipt_type` in `room_id` (one per
    /// thread) starts with its `user_prefix`; the rest of the key is the thread.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct ReceiptKey<'a> {
        room_id: str => room_prefix,
        receipt_type: str,
        user_id: str => user_prefix,
        thread: last_str,
    }
}

#[derive(Debug, Default)]
struct RoomTyping {
    /// user → expiry (ms since epoch)
    users: HashMap<OwnedUserId, u64>,
    pos: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    event_id: String,
    ts: u64,
    pos: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Presence {
    pub presence: String,
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
    pub pos: u64,
}

/// What kind of ephemeral data an [`EphemeralUpdate`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EphemeralKind {
    Typing,
    /// A receipt; `private` for `m.read.private`.
    Receipt {
        private: bool,
    },
    Presence,
}

/// One change of typing, receipts or presence, as an observer is told of it.
#[derive(Debug)]
pub struct EphemeralUpdate<'a> {
    pub kind: EphemeralKind,
    /// The event as `/sync` shows it, with `room_id` added for typing and receipts.
    pub event: Value,
    /// The room of typing and receipts.
    pub room: Option<&'a RoomId>,
    /// Who typed, read or changed presence (typing: who changed).
    pub user: &'a UserId,
    /// Typing and receipts: the room's joined members; presence: the users who share a room
    /// with `user` as far as the caller worked it out (may be empty).
    pub audience: &'a [OwnedUserId],
}

/// Told of every change of typing, receipts and presence after it is recorded (the
/// application service queue listens), so this module knows nothing of who listens.
pub trait EphemeralObserver: Send + Sync {
    /// Whether it wants updates now (the update is built only then).
    fn listening(&self) -> bool {
        true
    }
    fn changed(&self, update: &EphemeralUpdate<'_>);
}

pub struct Ephemeral {
    db: Arc<Db>,
    observers: Vec<Arc<dyn EphemeralObserver>>,
    stream: Arc<Stream>,
    typing: Arc<Mutex<HashMap<OwnedRoomId, RoomTyping>>>,
    /// Stream position of the newest receipt per room (rooms missing: unknown since restart).
    receipt_pos: Mutex<HashMap<OwnedRoomId, u64>>,
    /// Stream position of the newest presence change (at start: the stream position, so
    /// tokens from before a restart look at presence once).
    presence_pos: AtomicU64,
}

impl Ephemeral {
    /// Typing, receipts and presence, told to `observers` as they change.
    pub fn new(
        db: Arc<Db>,
        stream: Arc<Stream>,
        observers: Vec<Arc<dyn EphemeralObserver>>,
    ) -> Self {
        let presence_pos = AtomicU64::new(stream.current());
        Self {
            db,
            observers,
            stream,
            typing: Arc::default(),
            receipt_pos: Mutex::default(),
            presence_pos,
        }
    }

    /// Whether some observer wants updates.
    fn listened(&self) -> bool {
        self.observers.iter().any(|o| o.listening())
    }

    fn tell(&self, update: &EphemeralUpdate<'_>) {
        for o in &self.observers {
            o.changed(update);
        }
    }

    /// Sets or clears a user's typing state; `members` are woken.
    pub fn set_typing(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserId,
        typing: bool,
        timeout_ms: u64,
        members: Vec<OwnedUserId>,
    ) -> Result<()> {
        let expiry = now_ms().saturating_add(timeout_ms.min(MAX_TYPING_MS));
        let (pos, ()) = self.stream.commit(|_, _| Ok(()))?;
        let typing_now = {
            let mut map = self.typing.lock();
            let entry = map.entry(room.to_owned()).or_default();
            if typing {
                entry.users.insert(user.to_owned(), expiry);
            } else {
                entry.users.remove(user);
            }
            entry.pos = pos;
            if self.listened() {
                let now = now_ms();
                let users: Vec<&OwnedUserId> = entry
                    .users
                    .iter()
                    .filter(|(_, e)| **e > now)
                    .map(|(u, _)| u)
                    .collect();
                Some(json!({
                    "type": "m.typing",
                    "room_id": room,
                    "content": { "user_ids": users },
                }))
            } else {
                None
            }
        };
        if let Some(event) = typing_now {
            self.tell(&EphemeralUpdate {
                kind: EphemeralKind::Typing,
                event,
                room: Some(room),
                user,
                audience: &members,
            });
        }
        self.stream
            .notifier()
            .wake(members.iter().map(|u| u.as_ref()));
        if typing {
            let this = self.clone();
            let room = room.to_owned();
            let user = user.to_owned();
            let wait = timeout_ms.min(MAX_TYPING_MS);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let expired = {
                    let map = this.typing.lock();
                    map.get(&room)
                        .and_then(|t| t.users.get(&user))
                        .is_some_and(|e| *e <= now_ms())
                };
                if expired {
                    let _ = this.set_typing(&room, &user, false, 0, members);
                }
            });
        }
        Ok(())
    }

    /// The `m.typing` event of a room if it changed after `since`.
    pub fn typing_event(&self, room: &RoomId, since: Option<u64>) -> Option<Value> {
        let map = self.typing.lock();
        let t = map.get(room)?;
        let now = now_ms();
        let users: Vec<&OwnedUserId> = t
            .users
            .iter()
            .filter(|(_, e)| **e > now)
            .map(|(u, _)| u)
            .collect();
        let changed = since.map_or(!users.is_empty(), |s| t.pos > s);
        changed.then(|| json!({ "type": "m.typing", "content": { "user_ids": users } }))
    }

    pub fn set_receipt(
        &self,
        room: &RoomId,
        user: &UserId,
        receipt_type: &str,
        event_id: &str,
        thread: Option<&str>,
        members: Vec<OwnedUserId>,
    ) -> Result<()> {
        let key = ReceiptKey {
            room_id: room.as_str(),
            receipt_type,
            user_id: user.as_str(),
            thread: thread.unwrap_or(""),
        }
        .encode();
        let ts = now_ms();
        let (pos, ()) = self.stream.commit(|pos, batch| {
            let rec = Receipt {
                event_id: event_id.to_owned(),
                ts,
                pos,
            };
            batch.put(
                Table::RoomreceiptReceipt,
                key.clone(),
                serde_json::to_vec(&rec)?,
            );
            Ok(())
        })?;
        self.receipt_pos.lock().insert(room.to_owned(), pos);
        if self.listened() {
            let mut entry = json!({ "ts": ts });
            if let Some(t) = thread {
                entry["thread_id"] = json!(t);
            }
            let mut content = json!({});
            content[event_id][receipt_type][user.as_str()] = entry;
            self.tell(&EphemeralUpdate {
                kind: EphemeralKind::Receipt {
                    private: receipt_type == "m.read.private",
                },
                event: json!({ "type": "m.receipt", "room_id": room, "content": content }),
                room: Some(room),
                user,
                audience: &members,
            });
        }
        if receipt_type == "m.read.private" {
            self.stream.notifier().wake([user]);
        } else {
            self.stream
                .notifier()
                .wake(members.iter().map(|u| u.as_ref()));
        }
        Ok(())
    }

    /// The `m.receipt` events with receipts newer than `since` that `reader` may see.
    ///
    /// A user may hold an unthreaded and a threaded receipt of one type on the same event;
    /// both are kept, but one `m.receipt` content has room for only one of them. The
    /// unthreaded one goes in the first event (MSC4102: on a clash servers prefer it), and the
    /// threaded ones it displaced follow in a second event, so the client still gets them.
    pub fn receipt_events(
        &self,
        room: &RoomId,
        reader: &UserId,
        since: Option<u64>,
    ) -> Result<Vec<Value>> {
        if let (Some(s), Some(p)) = (since, self.receipt_pos.lock().get(room)) {
            if *p <= s {
                return Ok(Vec::new());
            }
        }
        let prefix = ReceiptKey::room_prefix(room.as_str());
        let mut content = serde_json::Map::new();
        let mut displaced = serde_json::Map::new();
        for (k, v) in self.db.scan_prefix(Table::RoomreceiptReceipt, &prefix)? {
            let rec: Receipt = serde_json::from_slice(&v)?;
            if since.is_some_and(|s| rec.pos <= s) {
                continue;
            }
            let ReceiptKey {
                receipt_type: kind,
                user_id: user,
                thread,
                ..
            } = ReceiptKey::decode(&k)?;
            if kind == "m.read.private" && user != reader.as_str() {
                continue;
            }
            let mut entry = json!({ "ts": rec.ts });
            if !thread.is_empty() {
                entry["thread_id"] = json!(thread);
            }
            let ev = content
                .entry(rec.event_id.clone())
                .or_insert_with(|| json!({}));
            let held = &mut ev[kind][user];
            if held.is_null() {
                *held = entry;
            } else {
                // A clash: the unthreaded receipt keeps the place, the threaded one moves.
                let moved = if held.get("thread_id").is_some() && thread.is_empty() {
                    std::mem::replace(held, entry)
                } else {
                    entry
                };
                displaced.entry(rec.event_id).or_insert_with(|| json!({}))[kind][user] = moved;
            }
        }
        Ok([content, displaced]
            .into_iter()
            .filter(|c| !c.is_empty())
            .map(|c| json!({ "type": "m.receipt", "content": c }))
            .collect())
    }

    /// Event ids of the user's own unthreaded (or main-thread) read receipts in a room.
    pub fn own_read_receipts(&self, room: &RoomId, user: &UserId) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kind in ["m.read", "m.read.private"] {
            for thread in ["", "main"] {
                let key = ReceiptKey {
                    room_id: room.as_str(),
                    receipt_type: kind,
                    user_id: user.as_str(),
                    thread,
                }
                .encode();
                if let Some(v) = self.db.get(Table::RoomreceiptReceipt, &key)? {
                    out.push(serde_json::from_slice::<Receipt>(&v)?.event_id);
                }
            }
        }
        Ok(out)
    }

    /// The user's own read receipts in a room: `(thread, event id)`, thread "" for unthreaded.
    pub fn own_receipts_by_thread(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for kind in ["m.read", "m.read.private"] {
            let prefix = ReceiptKey::user_prefix(room.as_str(), kind, user.as_str());
            for (k, v) in self.db.scan_prefix(Table::RoomreceiptReceipt, &prefix)? {
                let thread =
                    String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default()).into_owned();
                out.push((thread, serde_json::from_slice::<Receipt>(&v)?.event_id));
            }
        }
        Ok(out)
    }

    pub fn set_presence(
        &self,
        user: &UserId,
        presence: &str,
        status_msg: Option<String>,
        wake: Vec<OwnedUserId>,
    ) -> Result<()> {
        if !matches!(presence, "online" | "offline" | "unavailable") {
            return Err(Error::invalid_param(
                "presence must be online, offline or unavailable",
            ));
        }
        if let Some(current) = self.presence(user)? {
            if current.presence == presence
                && current.status_msg == status_msg
                && now_ms().saturating_sub(current.last_active_ts) < 60_000
            {
                return Ok(());
            }
        }
        let (pos, p) = self.stream.commit(|pos, batch| {
            let p = Presence {
                presence: presence.to_owned(),
                status_msg: status_msg.clone(),
                last_active_ts: now_ms(),
                pos,
            };
            batch.put(
                Table::UseridPresence,
                user.as_bytes().to_vec(),
                serde_json::to_vec(&p)?,
            );
            Ok(p)
        })?;
        self.presence_pos.fetch_max(pos, Ordering::AcqRel);
        if self.listened() {
            self.tell(&EphemeralUpdate {
                kind: EphemeralKind::Presence,
                event: Self::presence_event(user, &p),
                room: None,
                user,
                audience: &wake,
            });
        }
        self.stream
            .notifier()
            .wake(wake.iter().map(|u| u.as_ref()).chain([user]));
        Ok(())
    }

    /// Whether any presence changed after `since` (always true for an initial sync).
    pub fn presence_changed_after(&self, since: Option<u64>) -> bool {
        since.is_none_or(|s| self.presence_pos.load(Ordering::Acquire) > s)
    }

    pub fn presence(&self, user: &UserId) -> Result<Option<Presence>> {
        match self.db.get(Table::UseridPresence, user.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The `m.presence` event of a user.
    pub fn presence_event(user: &UserId, p: &Presence) -> Value {
        let mut content = json!({
            "presence": p.presence,
            "last_active_ago": now_ms().saturating_sub(p.last_active_ts),
            "currently_active": p.presence == "online",
        });
        if let Some(m) = &p.status_msg {
            content["status_msg"] = json!(m);
        }
        json!({ "type": "m.presence", "sender": user, "content": content })
    }
}

#[cfg(test)]
mod tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn receipt_key_round_trips_and_layout_is_stable() {
        let key = ReceiptKey {
            room_id: "!r:x",
            receipt_type: "m.read",
            user_id: "@u:x",
            thread: "main",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"!r:x\xFFm.read\xFF@u:x\xFFmain");
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("!r:x")
                .str("m.read")
                .str("@u:x")
                .last_str("main")
                .into_vec()
        );
        assert_eq!(ReceiptKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&ReceiptKey::room_prefix("!r:x")));
        let user_prefix = ReceiptKey::user_prefix("!r:x", "m.read", "@u:x");
        assert_eq!(&bytes[user_prefix.len()..], b"main");
        // An unthreaded receipt is the user prefix alone.
        let unthreaded = ReceiptKey { thread: "", ..key }.encode();
        assert_eq!(unthreaded, user_prefix);
        assert_eq!(ReceiptKey::decode(&unthreaded).unwrap().thread, "");
        assert!(ReceiptKey::decode(b"!r:x\xFFm.read").is_err());
    }
}
