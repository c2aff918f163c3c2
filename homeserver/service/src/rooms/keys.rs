//! The keys of the room tables, one type per key layout. The byte layouts are the on-disk
//! format: changing one needs a migration, which the `*_layout_is_stable` tests guard.

/// The key of a local user's pending invite (or knock) to a room of another server, in
/// `userroom_remoteinvite`.
pub(super) fn invite_key(user: &ruma::UserId, room_id: &ruma::RoomId) -> Vec<u8> {
    UserRoomKey {
        user_id: user.as_str(),
        room_id: room_id.as_str(),
    }
    .encode()
}

#[cfg(test)]
use paracord_storage::KeyBuf;
use paracord_storage::{key, KeyReader, StorageError};

key! {
    /// The key of `roomposition_shorteventid` (a room's timeline in stream order):
    /// `room_id 0xFF stream_pos`. Positions sort numerically within a room.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct RoomPosKey<'a> {
        room_id: str => prefix,
        pos: u64,
    }
}

key! {
    /// The key of `roomtspos_shorteventid` (a room's timeline by timestamp):
    /// `room_id 0xFF origin_server_ts stream_pos`. Within a room, keys sort by timestamp, then
    /// by position; `at_ts` is the first possible key of a room at a timestamp.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct RoomTsPosKey<'a> {
        room_id: str => prefix,
        ts: u64 => at_ts,
        pos: u64,
    }
}

key! {
    /// The key of `userroom_membership` (a user's membership in a room) and of
    /// `userroom_remoteinvite` (an invite from another server): `user_id 0xFF room_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct UserRoomKey<'a> {
        user_id: str => prefix,
        room_id: last_str,
    }
}

key! {
    /// The key of `roomuser_membership` (a room's member list): `room_id 0xFF user_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct RoomUserKey<'a> {
        room_id: str => prefix,
        user_id: last_str,
    }
}

key! {
    /// The key of `targetrelpos_shorteventid` (the relation index): `target short id,
    /// rel_type 0xFF, child stream position`. The children of a target are contiguous, grouped
    /// by relation type and in stream order within one.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct RelationKey<'a> {
        target: u64 => prefix,
        rel_type: str => rel_prefix,
        pos: u64,
    }
}

impl<'a> RelationKey<'a> {
    /// The target and relation type of a key, without reading (or checking) the rest.
    pub(crate) fn decode_target_rel(key: &'a [u8]) -> Result<(u64, &'a str), StorageError> {
        let mut r = KeyReader::new(key);
        Ok((r.u64()?, r.str()?))
    }
}

key! {
    /// The key of `targetkeysender_pos` (who annotated an event with which key):
    /// `target short id, annotation key 0xFF sender`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct AnnotationKey<'a> {
        target: u64,
        key: str => key_prefix,
        sender: last_str,
    }
}

key! {
    /// The key of `roomthread_latest` (a room's threads): `room_id 0xFF thread root short id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct ThreadKey<'a> {
        room_id: str => prefix,
        root: u64,
    }
}

key! {
    /// The key of `userpos_notification` (a user's notifications): `user_id 0xFF stream_pos`.
    /// A user's notifications are contiguous and in stream order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct NotificationKey<'a> {
        user_id: str => prefix,
        pos: u64,
    }
}

key! {
    /// The key of `userroompos_highlight` (a user's notifications in a room, for unread
    /// counts): `user_id 0xFF room_id 0xFF stream_pos`. Those of one user and room are
    /// contiguous and in stream order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct HighlightKey<'a> {
        user_id: str,
        room_id: str => prefix,
        pos: u64,
    }
}

key! {
    /// The key of `txn_eventid` (the event a client transaction created):
    /// `user_id 0xFF device_id 0xFF room_id 0xFF txn_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct TxnKey<'a> {
        user_id: str,
        device_id: str,
        room_id: str,
        txn_id: last_str,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_pos_round_trips() {
        let key = RoomPosKey {
            room_id: "!r:x.test",
            pos: 42,
        };
        let bytes = key.encode();
        assert_eq!(RoomPosKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&RoomPosKey::prefix("!r:x.test")));
        assert!(!bytes.starts_with(&RoomPosKey::prefix("!r:x.tes")));
        assert!(RoomPosKey::decode(b"no separator").is_err());
        assert!(RoomPosKey::decode(&[b'r', 0xFF, 1, 2]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(RoomPosKey::decode(&long).is_err());
    }

    #[test]
    fn room_pos_layout_is_stable() {
        let bytes = RoomPosKey {
            room_id: "!r:x",
            pos: 0x0102,
        }
        .encode();
        assert_eq!(bytes, b"!r:x\xFF\0\0\0\0\0\0\x01\x02");
        assert_eq!(bytes, KeyBuf::new().str("!r:x").u64(0x0102).into_vec());
    }

    #[test]
    fn room_pos_sorts_by_room_then_position() {
        let key = |room_id, pos| RoomPosKey { room_id, pos }.encode();
        let mut keys = [
            key("!b", 1),
            key("!a", 256),
            key("!a", 1 << 40),
            key("!a", 255),
            key("!ab", 0),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                let k = RoomPosKey::decode(k).unwrap();
                (k.room_id, k.pos)
            })
            .collect();
        // The keys of one room are contiguous (its prefix ends with the separator, above
        // any byte of a longer room id) and in numeric order of position.
        assert_eq!(
            decoded,
            [
                ("!ab", 0),
                ("!a", 255),
                ("!a", 256),
                ("!a", 1 << 40),
                ("!b", 1)
            ]
        );
    }

    #[test]
    fn room_ts_pos_round_trips() {
        let key = RoomTsPosKey {
            room_id: "!r:x.test",
            ts: 1_700_000_000_000,
            pos: 7,
        };
        let bytes = key.encode();
        assert_eq!(RoomTsPosKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&RoomTsPosKey::prefix("!r:x.test")));
        assert!(bytes.starts_with(&RoomTsPosKey::at_ts("!r:x.test", key.ts)));
        let mut long = bytes.clone();
        long.push(0);
        assert!(RoomTsPosKey::decode(&long).is_err());
        assert!(RoomTsPosKey::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn room_ts_pos_layout_is_stable() {
        let bytes = RoomTsPosKey {
            room_id: "!r:x",
            ts: 3,
            pos: 0x0102,
        }
        .encode();
        assert_eq!(
            bytes,
            b"!r:x\xFF\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\x01\x02".as_slice()
        );
        assert_eq!(
            bytes,
            KeyBuf::new().str("!r:x").u64(3).u64(0x0102).into_vec()
        );
    }

    #[test]
    fn room_ts_pos_sorts_by_timestamp_then_position() {
        let key = |ts, pos| {
            RoomTsPosKey {
                room_id: "!a",
                ts,
                pos,
            }
            .encode()
        };
        let mut keys = [key(256, 1), key(255, 9), key(256, 0), key(1 << 40, 0)];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                let k = RoomTsPosKey::decode(k).unwrap();
                (k.ts, k.pos)
            })
            .collect();
        assert_eq!(decoded, [(255, 9), (256, 0), (256, 1), (1 << 40, 0)]);
        // The first key at a timestamp is below every key at that timestamp.
        assert!(RoomTsPosKey::at_ts("!a", 256).as_slice() < key(256, 0).as_slice());
        assert!(RoomTsPosKey::at_ts("!a", 256).as_slice() > key(255, u64::MAX).as_slice());
    }

    #[test]
    fn user_room_round_trips_and_layout_is_stable() {
        let key = UserRoomKey {
            user_id: "@u:x",
            room_id: "!r:x",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFF!r:x");
        assert_eq!(bytes, KeyBuf::new().str("@u:x").last_str("!r:x").into_vec());
        assert_eq!(UserRoomKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&UserRoomKey::prefix("@u:x")));
        assert!(!UserRoomKey {
            user_id: "@u:xy",
            room_id: "!r:x"
        }
        .encode()
        .starts_with(&UserRoomKey::prefix("@u:x")));
        assert!(UserRoomKey::decode(b"no separator").is_err());
    }

    #[test]
    fn room_user_round_trips_and_layout_is_stable() {
        let key = RoomUserKey {
            room_id: "!r:x",
            user_id: "@u:x",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"!r:x\xFF@u:x");
        assert_eq!(bytes, KeyBuf::new().str("!r:x").last_str("@u:x").into_vec());
        assert_eq!(RoomUserKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&RoomUserKey::prefix("!r:x")));
        assert!(RoomUserKey::decode(b"no separator").is_err());
    }

    #[test]
    fn relation_round_trips_and_layout_is_stable() {
        let key = RelationKey {
            target: 5,
            rel_type: "m.thread",
            pos: 0x0102,
        };
        let bytes = key.encode();
        assert_eq!(
            bytes,
            b"\0\0\0\0\0\0\0\x05m.thread\xFF\0\0\0\0\0\0\x01\x02".as_slice()
        );
        assert_eq!(
            bytes,
            KeyBuf::new().u64(5).str("m.thread").u64(0x0102).into_vec()
        );
        assert_eq!(RelationKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&RelationKey::prefix(5)));
        assert!(bytes.starts_with(&RelationKey::rel_prefix(5, "m.thread")));
        assert!(!bytes.starts_with(&RelationKey::rel_prefix(5, "m.threa")));
        let mut long = bytes.clone();
        long.push(0);
        assert!(RelationKey::decode(&long).is_err());
        assert_eq!(
            RelationKey::decode_target_rel(&long).unwrap(),
            (5, "m.thread")
        );
        assert!(RelationKey::decode(&[0, 0, 1]).is_err());
        assert!(RelationKey::decode_target_rel(&[0, 0, 1]).is_err());
    }

    #[test]
    fn relations_sort_by_target_then_type_then_position() {
        let key = |target, rel_type, pos| {
            RelationKey {
                target,
                rel_type,
                pos,
            }
            .encode()
        };
        let mut keys = [
            key(256, "m.annotation", 1),
            key(1, "m.thread", 256),
            key(1, "m.thread", 255),
            key(1, "m.annotation", 1 << 40),
            key(255, "m.thread", 0),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                let k = RelationKey::decode(k).unwrap();
                (k.target, k.rel_type, k.pos)
            })
            .collect();
        assert_eq!(
            decoded,
            [
                (1, "m.annotation", 1 << 40),
                (1, "m.thread", 255),
                (1, "m.thread", 256),
                (255, "m.thread", 0),
                (256, "m.annotation", 1),
            ]
        );
    }

    #[test]
    fn annotation_round_trips_and_layout_is_stable() {
        let key = AnnotationKey {
            target: 7,
            key: "👍",
            sender: "@u:x",
        };
        let bytes = key.encode();
        assert_eq!(
            bytes,
            KeyBuf::new().u64(7).str("👍").last_str("@u:x").into_vec()
        );
        assert_eq!(&bytes[..8], &7u64.to_be_bytes());
        assert_eq!(AnnotationKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&AnnotationKey::key_prefix(7, "👍")));
        assert!(!AnnotationKey {
            target: 7,
            key: "👍👍",
            sender: "@u:x"
        }
        .encode()
        .starts_with(&AnnotationKey::key_prefix(7, "👍")));
    }

    #[test]
    fn thread_round_trips_and_layout_is_stable() {
        let key = ThreadKey {
            room_id: "!r:x",
            root: 0x0102,
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"!r:x\xFF\0\0\0\0\0\0\x01\x02");
        assert_eq!(bytes, KeyBuf::new().str("!r:x").u64(0x0102).into_vec());
        assert_eq!(ThreadKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&ThreadKey::prefix("!r:x")));
        let mut long = bytes.clone();
        long.push(0);
        assert!(ThreadKey::decode(&long).is_err());
    }

    #[test]
    fn notification_round_trips_and_layout_is_stable() {
        let key = NotificationKey {
            user_id: "@u:x",
            pos: 0x0102,
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFF\0\0\0\0\0\0\x01\x02");
        assert_eq!(bytes, KeyBuf::new().str("@u:x").u64(0x0102).into_vec());
        assert_eq!(NotificationKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&NotificationKey::prefix("@u:x")));
        let mut long = bytes.clone();
        long.push(0);
        assert!(NotificationKey::decode(&long).is_err());
    }

    #[test]
    fn notifications_sort_by_position() {
        let key = |pos| {
            NotificationKey {
                user_id: "@u:x",
                pos,
            }
            .encode()
        };
        let mut keys = [key(1 << 40), key(256), key(255)];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| NotificationKey::decode(k).unwrap().pos)
            .collect();
        assert_eq!(decoded, [255, 256, 1 << 40]);
    }

    #[test]
    fn highlight_round_trips_and_layout_is_stable() {
        let key = HighlightKey {
            user_id: "@u:x",
            room_id: "!r:x",
            pos: 0x0102,
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFF!r:x\xFF\0\0\0\0\0\0\x01\x02");
        assert_eq!(
            bytes,
            KeyBuf::new().str("@u:x").str("!r:x").u64(0x0102).into_vec()
        );
        assert_eq!(HighlightKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&HighlightKey::prefix("@u:x", "!r:x")));
        assert!(!bytes.starts_with(&HighlightKey::prefix("@u:x", "!r:")));
        let mut long = bytes.clone();
        long.push(0);
        assert!(HighlightKey::decode(&long).is_err());
    }

    #[test]
    fn highlights_sort_by_position_within_a_room() {
        let key = |pos| {
            HighlightKey {
                user_id: "@u:x",
                room_id: "!r:x",
                pos,
            }
            .encode()
        };
        let mut keys = [key(256), key(1 << 40), key(255)];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| HighlightKey::decode(k).unwrap().pos)
            .collect();
        assert_eq!(decoded, [255, 256, 1 << 40]);
    }

    #[test]
    fn txn_round_trips_and_layout_is_stable() {
        let key = TxnKey {
            user_id: "@u:x",
            device_id: "D",
            room_id: "!r:x",
            txn_id: "t1",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFFD\xFF!r:x\xFFt1");
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@u:x")
                .str("D")
                .str("!r:x")
                .last_str("t1")
                .into_vec()
        );
        assert_eq!(TxnKey::decode(&bytes).unwrap(), key);
        assert!(TxnKey::decode(b"@u:x\xFFD").is_err());
    }
}
