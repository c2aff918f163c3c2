//! What slow mode needs to know (spec/guilds.md §9): each member's latest message in each
//! room, kept in `roomuser_lastmessage` so that checking a message costs one read however
//! many events came since the member's last one.
//!
//! The [`SlowModeIndex`] observer writes the row in the batch of every accepted message that
//! slow mode counts (local or received; soft-failed events never reach observers), keeping
//! the greatest `origin_server_ts` seen, so that an older message arriving late over
//! federation does not move it back. Rows are written in every room, since slow mode may be
//! turned on later and then counts the message before: one small row per sender and room.
//! Databases written before this index are filled once at start ([`fill`]) from the last
//! 6 hours (the longest slow mode, 21600 s) of every room's timeline.

use std::sync::Arc;

use paracord_core::{time::now_ms, Result};
use paracord_storage::{key, key::decode_u64, Batch, Db, Table};
use ruma::{events::TimelineEventType, RoomId, UserId};

use crate::{
    polls::{poll_event, PollEvent},
    rooms::{hooks::EventObserver, relations::relates_to, Pdu, Rooms},
};

/// The longest slow mode a channel may have, in seconds (spec/guilds.md §2).
pub const MAX_SLOW_MODE_SECS: u64 = 21_600;

key! {
    /// The key of `roomuser_lastmessage`: `room_id 0xFF user_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct RoomUserKey<'a> {
        room_id: str,
        user_id: last_str,
    }
}

/// The events slow mode counts: messages and polls, not reactions, votes, redactions or call
/// signalling.
pub(crate) fn counts_for_slow_mode(kind: &TimelineEventType) -> bool {
    matches!(
        kind,
        TimelineEventType::RoomMessage
            | TimelineEventType::Sticker
            | TimelineEventType::RoomEncrypted
    ) || poll_event(&kind.to_string()) == Some(PollEvent::Start)
}

/// Whether `pdu` is a message slow mode counts: a timeline event of a counted type that is
/// no edit.
fn counted(pdu: &Pdu) -> bool {
    pdu.state_key.is_none()
        && counts_for_slow_mode(&pdu.kind)
        && relates_to(&pdu.content_value()).is_none_or(|r| r.0 != "m.replace")
}

/// The `origin_server_ts` of `sender`'s latest counted message in the room.
pub(crate) fn last_message_ts(db: &Db, room_id: &RoomId, sender: &UserId) -> Result<Option<u64>> {
    let key = RoomUserKey {
        room_id: room_id.as_str(),
        user_id: sender.as_str(),
    }
    .encode();
    Ok(db
        .get(Table::RoomuserLastmessage, &key)?
        .map(|v| decode_u64(&v))
        .transpose()?)
}

/// Puts `ts` as the sender's latest message unless a later one is recorded (in the database
/// or earlier in `batch`).
fn record(db: &Db, batch: &mut Batch, room_id: &RoomId, sender: &UserId, ts: u64) -> Result<()> {
    let key = RoomUserKey {
        room_id: room_id.as_str(),
        user_id: sender.as_str(),
    }
    .encode();
    let before = match batch.pending(Table::RoomuserLastmessage, &key) {
        Some(pending) => pending.map(decode_u64).transpose()?,
        None => last_message_ts(db, room_id, sender)?,
    };
    if before.is_none_or(|b| b < ts) {
        batch.put(Table::RoomuserLastmessage, key, ts.to_be_bytes().to_vec());
    }
    Ok(())
}

/// The observer that keeps `roomuser_lastmessage`.
pub struct SlowModeIndex {
    db: Arc<Db>,
}

impl SlowModeIndex {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

impl EventObserver for SlowModeIndex {
    fn index(&self, batch: &mut Batch, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        if !counted(pdu) {
            return Ok(());
        }
        record(
            &self.db,
            batch,
            room_id,
            &pdu.sender,
            u64::from(pdu.origin_server_ts.get()),
        )
    }
}

/// Fills `roomuser_lastmessage` once on a database written before it: the counted messages
/// of every room's last [`MAX_SLOW_MODE_SECS`] (older ones can no longer hold anyone back).
/// Returns how many messages were read.
pub fn fill(rooms: &Rooms) -> Result<usize> {
    crate::migrations::once(&rooms.db, b"slow_mode_index_v1", || {
        let since = now_ms().saturating_sub(MAX_SLOW_MODE_SECS * 1000);
        let mut count = 0;
        for room_id in rooms.room_ids()? {
            let mut batch = Batch::new();
            for short in rooms.timeline_since(&room_id, since)? {
                let Some(p) = rooms.pdu_by_short(short)? else {
                    continue;
                };
                if counted(&p) {
                    let ts = u64::from(p.origin_server_ts.get());
                    record(&rooms.db, &mut batch, &room_id, &p.sender, ts)?;
                    count += 1;
                }
            }
            rooms.db.write(batch)?;
        }
        Ok(count)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use paracord_core::Config;
    use ruma::{OwnedRoomId, OwnedUserId};
    use serde_json::json;

    use super::*;
    use crate::{
        guilds::create::{create_guild, NewGuild},
        rooms::NewEvent,
        Services,
    };

    /// The index follows each message, ignores edits and state, and is filled again from the
    /// timeline on a database that lacks it.
    #[tokio::test]
    async fn the_index_keeps_the_latest_message_and_is_filled_from_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let s = Services::open(config).unwrap();
        let owner = OwnedUserId::try_from("@owner:localhost").unwrap();
        let g = create_guild(
            &s.rooms,
            &owner,
            NewGuild {
                name: "Test".into(),
                ..NewGuild::default()
            },
            (None, None),
        )
        .await
        .unwrap();
        let general = OwnedRoomId::try_from(g.guild.system_channel.unwrap()).unwrap();
        assert_eq!(
            last_message_ts(&s.rooms.db, &general, &owner).unwrap(),
            None
        );
        let say = |content: serde_json::Value| {
            s.rooms.append(
                &general,
                &owner,
                NewEvent::message("m.room.message".into(), content),
            )
        };
        let first = say(json!({ "msgtype": "m.text", "body": "one" }))
            .await
            .unwrap();
        let at = |id: &ruma::EventId| {
            u64::from(s.rooms.pdu(id).unwrap().unwrap().origin_server_ts.get())
        };
        let first_ts = at(&first);
        assert_eq!(
            last_message_ts(&s.rooms.db, &general, &owner).unwrap(),
            Some(first_ts)
        );
        // An edit is not a message of its own.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        say(json!({ "msgtype": "m.text", "body": "* uno", "m.new_content": { "msgtype": "m.text", "body": "uno" },
                    "m.relates_to": { "rel_type": "m.replace", "event_id": first } }))
        .await
        .unwrap();
        assert_eq!(
            last_message_ts(&s.rooms.db, &general, &owner).unwrap(),
            Some(first_ts)
        );
        let second = say(json!({ "msgtype": "m.text", "body": "two" }))
            .await
            .unwrap();
        let second_ts = at(&second);
        assert_eq!(
            last_message_ts(&s.rooms.db, &general, &owner).unwrap(),
            Some(second_ts)
        );
        // A database from before the index: the fill finds the latest message again.
        let mut batch = Batch::new();
        for (k, _) in s
            .rooms
            .db
            .scan_prefix(Table::RoomuserLastmessage, b"")
            .unwrap()
        {
            batch.delete(Table::RoomuserLastmessage, k.to_vec());
        }
        batch.delete(Table::GlobalValue, b"slow_mode_index_v1".to_vec());
        s.rooms.db.write(batch).unwrap();
        assert_eq!(
            last_message_ts(&s.rooms.db, &general, &owner).unwrap(),
            None
        );
        assert!(fill(&s.rooms).unwrap() >= 2);
        assert_eq!(
            last_message_ts(&s.rooms.db, &general, &owner).unwrap(),
            Some(second_ts)
        );
        // Once only.
        assert_eq!(fill(&s.rooms).unwrap(), 0);
    }

    #[test]
    fn keys_round_trip() {
        let k = RoomUserKey {
            room_id: "!r:x",
            user_id: "@u:x",
        };
        assert_eq!(RoomUserKey::decode(&k.encode()).unwrap(), k);
    }
}
