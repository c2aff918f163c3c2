//! Server-side key backups (`/room_keys/...`): backup versions and the encrypted session keys
//! stored in them. The server never reads `auth_data` or `session_data`; it only keeps the
//! best copy of each session, counts the keys and changes the etag when they change.
//!
//! Spec: https://spec.matrix.org/v1.19/client-server-api/#server-side-key-backups

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use paracord_core::{Error, Result};
use paracord_storage::{Batch, Db, KeyBuf, Table};
use parking_lot::{Mutex, MutexGuard};
use ruma::{OwnedRoomId, RoomId, UInt, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The one algorithm the spec defines; others are stored as given.
pub const MEGOLM_BACKUP_V1: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

/// Writers of one user's backups take one of these locks, so concurrent uploads cannot lose
/// an etag increment or a count.
const LOCK_STRIPES: usize = 64;

paracord_storage::key! {
    /// `user_id 0xFF version` in [`Table::UserversionBackup`]; `prefix` is every version of a
    /// user.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct VersionKey<'a> {
        user: str => prefix,
        version: u64,
    }
}

paracord_storage::key! {
    /// `user_id 0xFF version room_id 0xFF session_id` in
    /// [`Table::UserversionroomsessionRoomkey`]. The version is a fixed-width integer, so it
    /// needs no separator.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct SessionKey<'a> {
        user: str,
        version: u64,
        room: str,
        session: last_str,
    }
}

impl SessionKey<'_> {
    /// Every key of one backup version, or of one room in it.
    fn prefix(user: &str, version: u64, room: Option<&str>) -> Vec<u8> {
        let key = KeyBuf::new().str(user).u64(version);
        match room {
            Some(room) => key.str(room).into_vec(),
            None => key.into_vec(),
        }
    }
}

/// What is stored per backup version. Deleted versions stay as tombstones so their number is
/// never handed out again and a second DELETE still succeeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionRecord {
    algorithm: String,
    #[serde(default)]
    auth_data: Map<String, Value>,
    /// Bumped whenever the stored keys change.
    etag: u64,
    /// The number of keys stored.
    count: u64,
    #[serde(default)]
    deleted: bool,
}

/// A backup version as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupInfo {
    pub version: String,
    pub algorithm: String,
    pub auth_data: Map<String, Value>,
    pub count: u64,
    pub etag: String,
}

/// The answer to a key upload or deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCounts {
    pub etag: String,
    pub count: u64,
}

/// One backed-up session key (`KeyBackupData`). `session_data` is algorithm-dependent and
/// kept as the client sent it; the other fields decide which copy of a session is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackedUpKey {
    pub first_message_index: UInt,
    pub forwarded_count: UInt,
    pub is_verified: bool,
    pub session_data: Map<String, Value>,
}

impl BackedUpKey {
    /// Parses and checks a client's `KeyBackupData`.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::bad_json(format!("invalid key data: {e}")))
    }

    /// Whether this key should replace `existing` (spec: a verified key wins, then the lower
    /// `first_message_index`, then the lower `forwarded_count`; on a tie the existing one
    /// stays).
    pub fn is_better_than(&self, existing: &Self) -> bool {
        if self.is_verified != existing.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != existing.first_message_index {
            return self.first_message_index < existing.first_message_index;
        }
        self.forwarded_count < existing.forwarded_count
    }
}

/// Keys of one backup, by room and session.
pub type RoomKeys = BTreeMap<OwnedRoomId, BTreeMap<String, BackedUpKey>>;

/// The keys an upload names: `(room, session, key)`.
pub type Upload = Vec<(OwnedRoomId, String, BackedUpKey)>;

pub struct KeyBackups {
    db: Arc<Db>,
    locks: [Mutex<()>; LOCK_STRIPES],
}

/// A version string names a stored version only in the canonical decimal form the server
/// hands out ("1", "2", …); anything else is simply not found.
fn parse_version(version: &str) -> Option<u64> {
    if version.is_empty()
        || version.starts_with('0')
        || !version.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    version.parse().ok()
}

fn not_found() -> Error {
    Error::not_found("unknown backup version")
}

impl KeyBackups {
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            locks: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    fn lock(&self, user: &UserId) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        user.as_str().hash(&mut h);
        // The modulo keeps the index in range.
        self.locks[(h.finish() % LOCK_STRIPES as u64) as usize].lock()
    }

    /// Every version record of `user` (tombstones included), oldest first.
    fn versions(&self, user: &UserId) -> Result<Vec<(u64, VersionRecord)>> {
        let entries = self
            .db
            .scan_prefix(Table::UserversionBackup, &VersionKey::prefix(user.as_str()))?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let key = VersionKey::decode(&k)?;
            out.push((key.version, serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// The newest version that is not deleted.
    fn current_version(&self, user: &UserId) -> Result<Option<(u64, VersionRecord)>> {
        Ok(self
            .versions(user)?
            .into_iter()
            .rev()
            .find(|(_, r)| !r.deleted))
    }

    /// The record of a live (not deleted) version.
    fn live(&self, user: &UserId, version: &str) -> Result<Option<(u64, VersionRecord)>> {
        let Some(n) = parse_version(version) else {
            return Ok(None);
        };
        Ok(self.record(user, n)?.filter(|r| !r.deleted).map(|r| (n, r)))
    }

    fn record(&self, user: &UserId, version: u64) -> Result<Option<VersionRecord>> {
        let key = VersionKey {
            user: user.as_str(),
            version,
        };
        match self.db.get(Table::UserversionBackup, &key.encode())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn put_record(
        &self,
        batch: &mut Batch,
        user: &UserId,
        version: u64,
        record: &VersionRecord,
    ) -> Result<()> {
        let key = VersionKey {
            user: user.as_str(),
            version,
        };
        batch.put(
            Table::UserversionBackup,
            key.encode(),
            serde_json::to_vec(record)?,
        );
        Ok(())
    }

    fn info(version: u64, record: VersionRecord) -> BackupInfo {
        BackupInfo {
            version: version.to_string(),
            algorithm: record.algorithm,
            auth_data: record.auth_data,
            count: record.count,
            etag: record.etag.to_string(),
        }
    }

    fn check_algorithm(algorithm: &str, auth_data: &Map<String, Value>) -> Result<()> {
        if algorithm.is_empty() {
            return Err(Error::invalid_param("algorithm must not be empty"));
        }
        if algorithm == MEGOLM_BACKUP_V1
            && !auth_data.get("public_key").is_some_and(Value::is_string)
        {
            return Err(Error::bad_json(format!(
                "auth_data of {MEGOLM_BACKUP_V1} needs a string public_key"
            )));
        }
        Ok(())
    }

    /// Creates a new backup version, which becomes the current one; returns its version.
    #[tracing::instrument(skip_all, fields(user = %user))]
    pub fn create(
        &self,
        user: &UserId,
        algorithm: &str,
        auth_data: Map<String, Value>,
    ) -> Result<String> {
        Self::check_algorithm(algorithm, &auth_data)?;
        let _guard = self.lock(user);
        let last = self
            .db
            .last_with_prefix(Table::UserversionBackup, &VersionKey::prefix(user.as_str()))?;
        let last = match last {
            Some((k, _)) => VersionKey::decode(&k)?.version,
            None => 0,
        };
        let version = last
            .checked_add(1)
            .ok_or_else(|| Error::internal("backup version counter overflow"))?;
        let record = VersionRecord {
            algorithm: algorithm.to_owned(),
            auth_data,
            etag: 0,
            count: 0,
            deleted: false,
        };
        let mut batch = Batch::new();
        self.put_record(&mut batch, user, version, &record)?;
        self.db.write(batch)?;
        Ok(version.to_string())
    }

    /// The current backup: the newest one not deleted.
    pub fn current(&self, user: &UserId) -> Result<Option<BackupInfo>> {
        Ok(self.current_version(user)?.map(|(n, r)| Self::info(n, r)))
    }

    /// A backup version that exists and is not deleted.
    pub fn get(&self, user: &UserId, version: &str) -> Result<Option<BackupInfo>> {
        Ok(self.live(user, version)?.map(|(n, r)| Self::info(n, r)))
    }

    /// Replaces the `auth_data` of a version; the algorithm must stay the same.
    #[tracing::instrument(skip_all, fields(user = %user, version = %version))]
    pub fn update(
        &self,
        user: &UserId,
        version: &str,
        algorithm: &str,
        auth_data: Map<String, Value>,
    ) -> Result<()> {
        let _guard = self.lock(user);
        let (n, mut record) = self.live(user, version)?.ok_or_else(not_found)?;
        if record.algorithm != algorithm {
            return Err(Error::invalid_param(
                "algorithm does not match the backup's algorithm",
            ));
        }
        Self::check_algorithm(algorithm, &auth_data)?;
        record.auth_data = auth_data;
        let mut batch = Batch::new();
        self.put_record(&mut batch, user, n, &record)?;
        Ok(self.db.write(batch)?)
    }

    /// Deletes a version and every key in it. Deleting a deleted version succeeds; one that
    /// never existed is not found.
    #[tracing::instrument(skip_all, fields(user = %user, version = %version))]
    pub fn delete_version(&self, user: &UserId, version: &str) -> Result<()> {
        let n = parse_version(version).ok_or_else(not_found)?;
        let _guard = self.lock(user);
        let mut record = self.record(user, n)?.ok_or_else(not_found)?;
        if record.deleted {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.delete_keys_into(&mut batch, user, n, None, None)?;
        record.deleted = true;
        record.auth_data = Map::new();
        record.count = 0;
        self.put_record(&mut batch, user, n, &record)?;
        Ok(self.db.write(batch)?)
    }

    /// Deletes every backup of `user` (account deactivation).
    #[tracing::instrument(skip_all, fields(user = %user))]
    pub fn delete_all(&self, user: &UserId) -> Result<()> {
        let _guard = self.lock(user);
        let mut batch = Batch::new();
        for (n, mut record) in self.versions(user)? {
            if record.deleted {
                continue;
            }
            self.delete_keys_into(&mut batch, user, n, None, None)?;
            record.deleted = true;
            record.auth_data = Map::new();
            record.count = 0;
            self.put_record(&mut batch, user, n, &record)?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        Ok(self.db.write(batch)?)
    }

    /// Stores keys in the current backup, keeping the better copy of each session that is
    /// already there. Only the current version takes keys: an older live one answers
    /// `M_WRONG_ROOM_KEYS_VERSION` with the current version, an unknown one `M_NOT_FOUND`.
    #[tracing::instrument(skip_all, fields(user = %user, version = %version, keys = keys.len()))]
    pub fn put_keys(&self, user: &UserId, version: &str, keys: Upload) -> Result<KeyCounts> {
        for (_, session, _) in &keys {
            if session.is_empty() {
                return Err(Error::invalid_param("session id must not be empty"));
            }
        }
        let _guard = self.lock(user);
        let (n, mut record) = self.live(user, version)?.ok_or_else(not_found)?;
        if let Some((current, _)) = self.current_version(user)? {
            if current != n {
                return Err(Error::wrong_room_keys_version(Some(current.to_string())));
            }
        }
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, session, key) in keys {
            let skey = SessionKey {
                user: user.as_str(),
                version: n,
                room: room.as_str(),
                session: &session,
            }
            .encode();
            let existing = self.db.get(Table::UserversionroomsessionRoomkey, &skey)?;
            match existing {
                Some(old) => {
                    let old: BackedUpKey = serde_json::from_slice(&old)?;
                    if !key.is_better_than(&old) {
                        continue;
                    }
                }
                None => {
                    record.count = record
                        .count
                        .checked_add(1)
                        .ok_or_else(|| Error::internal("key count overflow"))?;
                }
            }
            batch.put(
                Table::UserversionroomsessionRoomkey,
                skey,
                serde_json::to_vec(&key)?,
            );
            changed = true;
        }
        if changed {
            record.etag = record.etag.wrapping_add(1);
            self.put_record(&mut batch, user, n, &record)?;
            self.db.write(batch)?;
        }
        Ok(KeyCounts {
            etag: record.etag.to_string(),
            count: record.count,
        })
    }

    /// Every key of a backup version, or of one room in it.
    pub fn keys(&self, user: &UserId, version: &str, room: Option<&RoomId>) -> Result<RoomKeys> {
        let (n, _) = self.live(user, version)?.ok_or_else(not_found)?;
        let prefix = SessionKey::prefix(user.as_str(), n, room.map(|r| r.as_str()));
        let mut out = RoomKeys::new();
        for (k, v) in self
            .db
            .scan_prefix(Table::UserversionroomsessionRoomkey, &prefix)?
        {
            let key = SessionKey::decode(&k)?;
            let room = OwnedRoomId::try_from(key.room).map_err(Error::internal)?;
            out.entry(room)
                .or_default()
                .insert(key.session.to_owned(), serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// One session's key; `M_NOT_FOUND` when the version or the key is missing.
    pub fn session(
        &self,
        user: &UserId,
        version: &str,
        room: &RoomId,
        session: &str,
    ) -> Result<BackedUpKey> {
        let (n, _) = self.live(user, version)?.ok_or_else(not_found)?;
        let key = SessionKey {
            user: user.as_str(),
            version: n,
            room: room.as_str(),
            session,
        };
        match self
            .db
            .get(Table::UserversionroomsessionRoomkey, &key.encode())?
        {
            Some(v) => Ok(serde_json::from_slice(&v)?),
            None => Err(Error::not_found("key not found")),
        }
    }

    /// Deletes the keys of a version: all, one room's or one session's.
    #[tracing::instrument(skip_all, fields(user = %user, version = %version))]
    pub fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&RoomId>,
        session: Option<&str>,
    ) -> Result<KeyCounts> {
        let _guard = self.lock(user);
        let (n, mut record) = self.live(user, version)?.ok_or_else(not_found)?;
        let mut batch = Batch::new();
        let deleted = self.delete_keys_into(&mut batch, user, n, room, session)?;
        if deleted > 0 {
            record.count = record.count.saturating_sub(deleted);
            record.etag = record.etag.wrapping_add(1);
            self.put_record(&mut batch, user, n, &record)?;
            self.db.write(batch)?;
        }
        Ok(KeyCounts {
            etag: record.etag.to_string(),
            count: record.count,
        })
    }

    /// Adds the deletion of keys to `batch`; returns how many there were.
    fn delete_keys_into(
        &self,
        batch: &mut Batch,
        user: &UserId,
        version: u64,
        room: Option<&RoomId>,
        session: Option<&str>,
    ) -> Result<u64> {
        if let (Some(room), Some(session)) = (room, session) {
            let key = SessionKey {
                user: user.as_str(),
                version,
                room: room.as_str(),
                session,
            }
            .encode();
            if !self.db.exists(Table::UserversionroomsessionRoomkey, &key)? {
                return Ok(0);
            }
            batch.delete(Table::UserversionroomsessionRoomkey, key);
            return Ok(1);
        }
        let prefix = SessionKey::prefix(user.as_str(), version, room.map(|r| r.as_str()));
        let mut n = 0u64;
        for (k, _) in self
            .db
            .scan_prefix(Table::UserversionroomsessionRoomkey, &prefix)?
        {
            batch.delete(Table::UserversionroomsessionRoomkey, k.into_vec());
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_room_id, user_id};
    use serde_json::json;

    use super::*;

    fn backups() -> (tempfile::TempDir, KeyBackups) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        (dir, KeyBackups::new(db))
    }

    fn auth() -> Map<String, Value> {
        json!({ "public_key": "abcdefg", "signatures": {} })
            .as_object()
            .unwrap()
            .clone()
    }

    fn key(verified: bool, first: u32, forwarded: u32, tag: &str) -> BackedUpKey {
        BackedUpKey {
            first_message_index: first.into(),
            forwarded_count: forwarded.into(),
            is_verified: verified,
            session_data: json!({ "ciphertext": tag }).as_object().unwrap().clone(),
        }
    }

    #[test]
    fn replacement_prefers_verified_then_lower_index_then_fewer_forwards() {
        // Verification beats everything else.
        assert!(key(true, 10, 10, "new").is_better_than(&key(false, 0, 0, "old")));
        assert!(!key(false, 0, 0, "new").is_better_than(&key(true, 10, 10, "old")));
        // Same verification: the lower first_message_index wins, whatever the forwards.
        assert!(key(false, 1, 9, "new").is_better_than(&key(false, 2, 0, "old")));
        assert!(!key(true, 3, 0, "new").is_better_than(&key(true, 2, 9, "old")));
        // Same index: fewer forwards win.
        assert!(key(true, 2, 0, "new").is_better_than(&key(true, 2, 1, "old")));
        assert!(!key(true, 2, 2, "new").is_better_than(&key(true, 2, 1, "old")));
        // A tie keeps the existing key.
        assert!(!key(false, 5, 5, "new").is_better_than(&key(false, 5, 5, "old")));
    }

    #[test]
    fn keys_round_trip_and_sort() {
        let k = SessionKey {
            user: "@u:x",
            version: 3,
            room: "!r:x",
            session: "sess",
        };
        let enc = k.encode();
        assert_eq!(SessionKey::decode(&enc).unwrap(), k);
        assert!(enc.starts_with(&SessionKey::prefix("@u:x", 3, Some("!r:x"))));
        assert!(enc.starts_with(&SessionKey::prefix("@u:x", 3, None)));
        assert!(!enc.starts_with(&SessionKey::prefix("@u:x", 30, None)));
        let v = VersionKey {
            user: "@u:x",
            version: 2,
        };
        assert_eq!(VersionKey::decode(&v.encode()).unwrap(), v);
        let v10 = VersionKey {
            user: "@u:x",
            version: 10,
        };
        assert!(v.encode() < v10.encode(), "versions sort numerically");
        assert!(VersionKey::decode(b"@u:x").is_err());
    }

    #[test]
    fn version_strings_are_canonical_integers() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("42"), Some(42));
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1.0",
            "abc",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions_count_up_and_current_skips_deleted() {
        let (_dir, b) = backups();
        let u = user_id!("@alice:x");
        assert_eq!(b.current(u).unwrap(), None);
        assert_eq!(b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap(), "1");
        assert_eq!(b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap(), "2");
        assert_eq!(b.current(u).unwrap().unwrap().version, "2");
        b.delete_version(u, "2").unwrap();
        b.delete_version(u, "2").unwrap();
        assert_eq!(b.current(u).unwrap().unwrap().version, "1");
        assert!(b.get(u, "2").unwrap().is_none());
        // A deleted number is never reused.
        assert_eq!(b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap(), "3");
        assert!(b.delete_version(u, "7").is_err());
        // Another user has their own numbering.
        assert_eq!(
            b.create(user_id!("@bob:x"), MEGOLM_BACKUP_V1, auth())
                .unwrap(),
            "1"
        );
    }

    #[test]
    fn put_keeps_the_better_key_and_bumps_the_etag_only_on_change() {
        let (_dir, b) = backups();
        let u = user_id!("@alice:x");
        let v = b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap();
        let room = owned_room_id!("!room:x");
        let up = |k: BackedUpKey| vec![(room.clone(), "s1".to_owned(), k)];

        let first = b.put_keys(u, &v, up(key(false, 5, 1, "a"))).unwrap();
        assert_eq!(first.count, 1);
        // Worse: unchanged, same etag.
        let same = b.put_keys(u, &v, up(key(false, 6, 0, "b"))).unwrap();
        assert_eq!(same, first);
        assert_eq!(
            b.session(u, &v, &room, "s1").unwrap(),
            key(false, 5, 1, "a")
        );
        // Better: replaced, new etag, same count.
        let better = b.put_keys(u, &v, up(key(false, 5, 0, "c"))).unwrap();
        assert_eq!(better.count, 1);
        assert_ne!(better.etag, first.etag);
        assert_eq!(
            b.session(u, &v, &room, "s1").unwrap(),
            key(false, 5, 0, "c")
        );

        let info = b.get(u, &v).unwrap().unwrap();
        assert_eq!((info.count, info.etag), (1, better.etag.clone()));

        // Deleting nothing changes nothing; deleting something does.
        let none = b.delete_keys(u, &v, Some(&room), Some("nope")).unwrap();
        assert_eq!(none, better);
        let gone = b.delete_keys(u, &v, Some(&room), None).unwrap();
        assert_eq!(gone.count, 0);
        assert_ne!(gone.etag, better.etag);
        assert!(b.keys(u, &v, None).unwrap().is_empty());
    }

    #[test]
    fn only_the_current_version_takes_keys() {
        let (_dir, b) = backups();
        let u = user_id!("@alice:x");
        let room = owned_room_id!("!room:x");
        let old = b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap();
        let new = b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap();
        let err = b
            .put_keys(
                u,
                &old,
                vec![(room.clone(), "s".into(), key(true, 0, 0, "x"))],
            )
            .unwrap_err();
        assert_eq!(
            err.kind(),
            Some(&paracord_core::ErrorKind::WrongRoomKeysVersion {
                current_version: Some(new.clone())
            })
        );
        let err = b
            .put_keys(
                u,
                "99",
                vec![(room.clone(), "s".into(), key(true, 0, 0, "x"))],
            )
            .unwrap_err();
        assert_eq!(err.kind(), Some(&paracord_core::ErrorKind::NotFound));
    }

    #[test]
    fn deleting_a_version_deletes_its_keys() {
        let (_dir, b) = backups();
        let u = user_id!("@alice:x");
        let room = owned_room_id!("!room:x");
        let v = b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap();
        b.put_keys(
            u,
            &v,
            vec![(room.clone(), "s".into(), key(true, 0, 0, "x"))],
        )
        .unwrap();
        b.delete_version(u, &v).unwrap();
        let prefix = SessionKey::prefix(u.as_str(), 1, None);
        assert!(b
            .db
            .scan_prefix(Table::UserversionroomsessionRoomkey, &prefix)
            .unwrap()
            .is_empty());
        assert!(b.keys(u, &v, None).is_err());
    }

    #[test]
    fn delete_all_removes_every_backup_of_one_user() {
        let (_dir, b) = backups();
        let (alice, bob) = (user_id!("@alice:x"), user_id!("@bob:x"));
        let room = owned_room_id!("!room:x");
        for u in [alice, bob] {
            let v = b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap();
            b.put_keys(
                u,
                &v,
                vec![(room.clone(), "s".into(), key(true, 0, 0, "x"))],
            )
            .unwrap();
        }
        b.create(alice, MEGOLM_BACKUP_V1, auth()).unwrap();
        b.delete_all(alice).unwrap();
        assert_eq!(b.current(alice).unwrap(), None);
        let prefix = KeyBuf::new().str(alice.as_str()).into_vec();
        assert!(b
            .db
            .scan_prefix(Table::UserversionroomsessionRoomkey, &prefix)
            .unwrap()
            .is_empty());
        assert_eq!(b.current(bob).unwrap().unwrap().count, 1);
        b.delete_all(alice).unwrap();
    }

    #[test]
    fn update_needs_the_same_algorithm() {
        let (_dir, b) = backups();
        let u = user_id!("@alice:x");
        let v = b.create(u, MEGOLM_BACKUP_V1, auth()).unwrap();
        let mut changed = auth();
        changed.insert("public_key".into(), "hijklmn".into());
        b.update(u, &v, MEGOLM_BACKUP_V1, changed.clone()).unwrap();
        assert_eq!(b.get(u, &v).unwrap().unwrap().auth_data, changed);
        let err = b.update(u, &v, "org.example.other", auth()).unwrap_err();
        assert_eq!(err.kind(), Some(&paracord_core::ErrorKind::InvalidParam));
    }

    #[test]
    fn key_data_is_validated() {
        assert!(BackedUpKey::from_json(
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":true,"session_data":{}}"#
        )
        .is_ok());
        for bad in [
            r#"{"first_message_index":-1,"forwarded_count":0,"is_verified":true,"session_data":{}}"#,
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":"yes","session_data":{}}"#,
            r#"{"first_message_index":1,"forwarded_count":0,"is_verified":true,"session_data":"x"}"#,
            r#"{"first_message_index":1,"is_verified":true,"session_data":{}}"#,
            r#"{"first_message_index":9007199254740992,"forwarded_count":0,"is_verified":true,"session_data":{}}"#,
        ] {
            assert!(BackedUpKey::from_json(bad).is_err(), "{bad}");
        }
    }
}
