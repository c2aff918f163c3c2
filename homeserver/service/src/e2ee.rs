//! The server side of end-to-end encryption: device identity keys, one-time and fallback keys,
//! cross-signing keys and their signatures, the device-list change log, to-device messages and
//! dehydrated devices (MSC3814). The server stores and routes keys and ciphertext; it checks
//! signatures so that nobody can publish keys in another device's name, and it never sees a
//! plaintext message.
//!
//! To-device messages wait for their device's sync, but not for ever: at most
//! `to_device_max_pending` per device (the oldest go first, see [`E2ee::send_to_device`]) and
//! none older than `to_device_max_age_ms` (see [`E2ee::expire_to_device`]).
//!
//! Every table is keyed by user id first, so a remote user's devices (federation) fit in the
//! same tables.
//!
//! Spec: https://spec.matrix.org/v1.19/client-server-api/#end-to-end-encryption

mod keys;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use paracord_core::{time::now_ms, Config, Error, Result};
use paracord_storage::{Batch, Db, KeyBuf, Table};
use parking_lot::Mutex;
use ruma::{
    api::federation::transactions::edu::{DeviceListUpdateContent, DirectDeviceContent, Edu},
    events::{room::member::MembershipState, ToDeviceEventType},
    signatures::{
        to_canonical_json_string_for_signing, verify_canonical_json_bytes, SigningKeyAlgorithm,
    },
    CanonicalJsonObject, OwnedDeviceId, OwnedTransactionId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use self::keys::{
    CrossSigningKeyKey, DeviceKeysKey, FallbackKeyKey, KeyChangeKey, OneTimeKeyKey, SignatureKey,
    ToDeviceKey, ToDeviceTxnKey,
};
use crate::{
    accounts::Accounts,
    rooms::{
        membership::membership_of,
        timeline::{Dir, EventFilter, Reader, Window},
        Rooms,
    },
    stream::Stream,
};

/// To-device messages handed out per sync (the rest follow in the next ones).
pub const TO_DEVICE_PER_SYNC: usize = 100;
/// One-time keys one device may hold; more in one upload is refused.
const MAX_ONE_TIME_KEYS: usize = 10_000;
/// Users and devices in one `/keys/query` or `/keys/claim`, and recipients of one
/// `/sendToDevice`.
const MAX_TARGETS: usize = 10_000;

/// A stored one-time key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OneTimeKey {
    /// `algorithm:key_id`
    id: String,
    key: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FallbackKey {
    key_id: String,
    key: Value,
    used: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ToDevice {
    sender: String,
    #[serde(rename = "type")]
    kind: String,
    content: Value,
    /// When it was queued (ms). Absent on messages queued before messages expired: those
    /// are bounded by the per-device cap only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
}

/// How many to-device messages may wait, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ToDeviceLimits {
    /// Most messages waiting for one device.
    pub max_pending: u64,
    /// Oldest a waiting message may be, in ms.
    pub max_age_ms: u64,
}

impl ToDeviceLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_pending: config.to_device_max_pending.max(1),
            max_age_ms: config.to_device_max_age_ms.max(1),
        }
    }
}

/// Rows of `userdevicepos_todevice` read per step of an expiry sweep.
const TO_DEVICE_SWEEP_BATCH: usize = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DehydratedDevice {
    pub device_id: String,
    pub device_data: Value,
}

/// What `/keys/changes` and sync's `device_lists` report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceListChanges {
    pub changed: BTreeSet<OwnedUserId>,
    pub left: BTreeSet<OwnedUserId>,
}

impl DeviceListChanges {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

pub struct E2ee {
    db: Arc<Db>,
    stream: Arc<Stream>,
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    /// One-time key claims and uploads: a key is read and deleted under this lock, so
    /// concurrent claims never hand out the same key.
    keys_lock: Mutex<()>,
    /// Cross-signing uploads and signature uploads (read-check-write of one user's keys).
    signing_lock: Mutex<()>,
    /// The last one-time key upload sequence number (microseconds, kept increasing).
    otk_seq: std::sync::atomic::AtomicU64,
    /// Where EDUs for other servers go (to-device messages, device-list updates); set once
    /// the federation sender exists.
    edu_out: Option<OutgoingEdu>,
    to_device_limits: ToDeviceLimits,
    /// How many to-device messages wait for each device that was sent one since the start:
    /// counted once from the table, then kept up to date as messages come and go. Concurrent
    /// acknowledgements may make it drift; a count past the cap is checked against the table
    /// before anything is dropped, and the expiry sweep starts every count afresh.
    pending_counts: Mutex<HashMap<(OwnedUserId, String), u64>>,
    /// Told of key counts and to-device messages (the appservice queue).
    key_observer: Option<Arc<dyn DeviceObserver>>,
}

/// Told when a local device's one-time or fallback keys change (uploaded or claimed) and of
/// every to-device message accepted for a local device, so the application service queue can
/// pass them on (MSC3202, MSC4203); this module knows nothing of appservices.
pub trait DeviceObserver: Send + Sync {
    /// Whether `user`'s devices are of interest (counts are worked out only then).
    fn wants(&self, user: &UserId) -> bool;
    /// A to-device message for `user`'s `device`: the event as `/sync` shows it.
    fn to_device(&self, user: &UserId, device: &str, event: Value);
    /// `user`'s device list or cross-signing keys changed; `sharing`: the local users who
    /// share a room with them (and `user`).
    fn device_list_changed(&self, user: &UserId, sharing: &HashSet<OwnedUserId>);
    fn counts_changed(
        &self,
        user: &UserId,
        device: &str,
        counts: &BTreeMap<String, u64>,
        unused_fallback: &[String],
    );
}

/// Queues an EDU (`{edu_type, content}`) for another server.
pub type OutgoingEdu = Arc<dyn Fn(&ruma::ServerName, Value) -> Result<()> + Send + Sync + 'static>;

fn dev_key(user: &str, device: &str) -> Vec<u8> {
    DeviceKeysKey {
        user_id: user,
        device_id: device,
    }
    .encode()
}

fn dev_prefix(user: &str, device: &str) -> Vec<u8> {
    KeyBuf::new().str(user).str(device).into_vec()
}

fn user_prefix(user: &str) -> Vec<u8> {
    KeyBuf::new().str(user).into_vec()
}

fn as_canonical(v: &Value, what: &str) -> Result<CanonicalJsonObject> {
    let obj: CanonicalJsonObject = serde_json::from_value(v.clone())
        .map_err(|e| Error::bad_json(format!("{what} is not canonical JSON: {e}")))?;
    Ok(obj)
}

/// Checks `object.signatures[signer][key_id]` against the unpadded-base64 ed25519 `public_key`.
fn signature_valid(object: &Value, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(sig) = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
    else {
        return false;
    };
    let (Ok(sig), Ok(public_key)) = (
        STANDARD_NO_PAD.decode(sig.trim_end_matches('=')),
        STANDARD_NO_PAD.decode(public_key.trim_end_matches('=')),
    ) else {
        return false;
    };
    let Ok(canonical) = as_canonical(object, "signed object").and_then(|o| {
        to_canonical_json_string_for_signing(&o).map_err(|e| Error::bad_json(e.to_string()))
    }) else {
        return false;
    };
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public_key,
        &sig,
        canonical.as_bytes(),
    )
    .is_ok()
}

/// The object without `signatures` and `unsigned`, canonical: two uploads of one key compare
/// equal with this even when they carry different signatures.
fn signed_part(object: &Value) -> Result<String> {
    let o = as_canonical(object, "key")?;
    to_canonical_json_string_for_signing(&o).map_err(|e| Error::bad_json(e.to_string()))
}

/// The single `ed25519:<public key>` of a cross-signing key: `(key id, public key)`.
fn cross_signing_public_key(key: &Value) -> Result<(String, String)> {
    let keys = key
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("a cross-signing key needs `keys`"))?;
    if keys.len() != 1 {
        return Err(Error::invalid_param(
            "a cross-signing key has exactly one public key",
        ));
    }
    let Some((id, public)) = keys.iter().next() else {
        return Err(Error::invalid_param(
            "a cross-signing key has no public key",
        ));
    };
    let public = public
        .as_str()
        .ok_or_else(|| Error::bad_json("public keys are strings"))?;
    match id.strip_prefix("ed25519:") {
        Some(suffix) if suffix == public => Ok((id.clone(), public.to_owned())),
        _ => Err(Error::invalid_param(
            "a cross-signing key's id is `ed25519:` followed by the public key",
        )),
    }
}

/// Splits `algorithm:key_id`.
fn split_key_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once(':') {
        Some((alg, kid)) if !alg.is_empty() && !kid.is_empty() => Ok((alg, kid)),
        _ => Err(Error::invalid_param(format!(
            "key id `{id}` is not `<algorithm>:<key id>`"
        ))),
    }
}

impl E2ee {
    pub fn new(
        db: Arc<Db>,
        stream: Arc<Stream>,
        accounts: Arc<Accounts>,
        rooms: Arc<Rooms>,
        to_device_limits: ToDeviceLimits,
        edu_out: Option<OutgoingEdu>,
        key_observer: Option<Arc<dyn DeviceObserver>>,
    ) -> Self {
        Self {
            db,
            stream,
            accounts,
            rooms,
            keys_lock: Mutex::new(()),
            signing_lock: Mutex::new(()),
            otk_seq: std::sync::atomic::AtomicU64::new(0),
            edu_out,
            to_device_limits,
            pending_counts: Mutex::default(),
            key_observer,
        }
    }

    /// Tells the observer of `user`'s `device`'s key counts, if it wants them.
    fn tell_counts(&self, user: &UserId, device: &str) {
        let Some(o) = self.key_observer.as_ref() else {
            return;
        };
        if !o.wants(user) {
            return;
        }
        if let (Ok(counts), Ok(fallback)) = (
            self.one_time_key_counts(user, device),
            self.unused_fallback_key_types(user, device),
        ) {
            o.counts_changed(user, device, &counts, &fallback);
        }
    }

    // ---- device keys -----------------------------------------------------------------------

    pub fn device_keys(&self, user: &UserId, device: &str) -> Result<Option<Value>> {
        match self
            .db
            .get(Table::UserdeviceDevicekeys, &dev_key(user.as_str(), device))?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The device's ed25519 identity key (unpadded base64), if it uploaded keys.
    fn device_ed25519(&self, user: &UserId, device: &str) -> Result<Option<String>> {
        Ok(self.device_keys(user, device)?.and_then(|k| {
            k.get("keys")
                .and_then(|ks| ks.get(format!("ed25519:{device}")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        }))
    }

    /// `/keys/upload` for `user`'s `device`: device keys, one-time keys and fallback keys, with
    /// their signatures checked. Returns the one-time key counts per algorithm.
    pub fn upload_keys(
        &self,
        user: &UserId,
        device: &str,
        body: &Value,
    ) -> Result<BTreeMap<String, u64>> {
        let _guard = self.keys_lock.lock();
        let mut batch = Batch::new();
        let mut device_keys_changed = false;

        // The identity key that signs the other keys: the uploaded one, or the stored one.
        let mut ed25519 = self.device_ed25519(user, device)?;
        if let Some(dk) = body.get("device_keys").filter(|v| !v.is_null()) {
            let dk_obj = dk
                .as_object()
                .ok_or_else(|| Error::bad_json("device_keys must be an object"))?;
            if dk_obj.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
                return Err(Error::invalid_param(
                    "device_keys.user_id must be the uploading user",
                ));
            }
            if dk_obj.get("device_id").and_then(Value::as_str) != Some(device) {
                return Err(Error::invalid_param(
                    "device_keys.device_id must be the uploading device",
                ));
            }
            if !dk_obj.get("algorithms").is_some_and(Value::is_array) {
                return Err(Error::bad_json("device_keys.algorithms must be a list"));
            }
            let key_id = format!("ed25519:{device}");
            let public = dk_obj
                .get("keys")
                .and_then(|k| k.get(&key_id))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid_param(format!("device_keys.keys needs `{key_id}`")))?
                .to_owned();
            // The spec leaves checking device keys to the clients (which trust no device
            // without a valid self-signature, and other servers store unsigned keys as
            // given); a self-signature that is there must verify, so a key changed after it
            // was signed is refused here already.
            let self_signed = dk
                .get("signatures")
                .and_then(|s| s.get(user.as_str()))
                .and_then(|s| s.get(&key_id))
                .is_some();
            if self_signed && !signature_valid(dk, user.as_str(), &key_id, &public) {
                return Err(Error::invalid_signature(
                    "device_keys are not signed by the device's ed25519 key",
                ));
            }
            let mut stored = dk.clone();
            if let Some(o) = stored.as_object_mut() {
                o.remove("unsigned");
            }
            let old = self.device_keys(user, device)?;
            if old.as_ref() != Some(&stored) {
                device_keys_changed = true;
                batch.put(
                    Table::UserdeviceDevicekeys,
                    dev_key(user.as_str(), device),
                    serde_json::to_vec(&stored)?,
                );
            }
            ed25519 = Some(public);
        }

        let check_signed = |key_id: &str, key: &Value| -> Result<()> {
            if key.is_string() {
                return Ok(());
            }
            if !key.is_object() {
                return Err(Error::bad_json(format!(
                    "key {key_id} must be a string or an object"
                )));
            }
            let Some(public) = &ed25519 else {
                return Err(Error::invalid_param(
                    "upload the device keys before signed one-time or fallback keys",
                ));
            };
            if !signature_valid(key, user.as_str(), &format!("ed25519:{device}"), public) {
                return Err(Error::invalid_signature(format!(
                    "key {key_id} is not signed by the device's ed25519 key"
                )));
            }
            Ok(())
        };

        if let Some(otks) = body.get("one_time_keys").filter(|v| !v.is_null()) {
            let otks = otks
                .as_object()
                .ok_or_else(|| Error::bad_json("one_time_keys must be an object"))?;
            if otks.len() > MAX_ONE_TIME_KEYS {
                return Err(Error::invalid_param("too many one-time keys in one upload"));
            }
            // Keys already stored for the device, by id: a re-upload must match.
            let mut existing: BTreeMap<String, Value> = BTreeMap::new();
            if !otks.is_empty() {
                for (_, v) in self.db.scan_prefix(
                    Table::UserdevicealgseqOnetimekey,
                    &OneTimeKeyKey::device_prefix(user.as_str(), device),
                )? {
                    let k: OneTimeKey = serde_json::from_slice(&v)?;
                    existing.insert(k.id, k.key);
                }
            }
            for (id, key) in otks {
                let (alg, _) = split_key_id(id)?;
                check_signed(id, key)?;
                match existing.get(id.as_str()) {
                    Some(old) if old == key => {}
                    Some(_) => {
                        return Err(Error::invalid_param(format!(
                            "one-time key {id} already exists with different content"
                        )));
                    }
                    None => {
                        let seq = self.next_otk_seq();
                        batch.put(
                            Table::UserdevicealgseqOnetimekey,
                            OneTimeKeyKey {
                                user_id: user.as_str(),
                                device_id: device,
                                algorithm: alg,
                                seq,
                            }
                            .encode(),
                            serde_json::to_vec(&OneTimeKey {
                                id: id.clone(),
                                key: key.clone(),
                            })?,
                        );
                        existing.insert(id.clone(), key.clone());
                    }
                }
            }
        }

        let fallback = body
            .get("fallback_keys")
            .or_else(|| body.get("org.matrix.msc2732.fallback_keys"))
            .filter(|v| !v.is_null());
        if let Some(fks) = fallback {
            let fks = fks
                .as_object()
                .ok_or_else(|| Error::bad_json("fallback_keys must be an object"))?;
            let mut per_alg: BTreeMap<&str, (&str, &Value)> = BTreeMap::new();
            for (id, key) in fks {
                let (alg, _) = split_key_id(id)?;
                check_signed(id, key)?;
                if per_alg.insert(alg, (id, key)).is_some() {
                    return Err(Error::invalid_param(format!(
                        "one fallback key per algorithm ({alg} twice)"
                    )));
                }
            }
            for (alg, (id, key)) in per_alg {
                let k = FallbackKeyKey {
                    user_id: user.as_str(),
                    device_id: device,
                    algorithm: alg,
                }
                .encode();
                let old: Option<FallbackKey> = self
                    .db
                    .get(Table::UserdevicealgFallbackkey, &k)?
                    .map(|v| serde_json::from_slice(&v))
                    .transpose()?;
                // The same key uploaded again keeps its used flag; a new one starts unused.
                let used = old
                    .as_ref()
                    .is_some_and(|o| o.key_id == id && &o.key == key && o.used);
                batch.put(
                    Table::UserdevicealgFallbackkey,
                    k,
                    serde_json::to_vec(&FallbackKey {
                        key_id: id.to_owned(),
                        key: key.clone(),
                        used,
                    })?,
                );
            }
        }

        let keys_written = !batch.is_empty();
        if device_keys_changed {
            self.commit_key_change(user, batch)?;
        } else if keys_written {
            self.db.write(batch)?;
        }
        if keys_written {
            self.tell_counts(user, device);
        }
        self.one_time_key_counts(user, device)
    }

    /// The next one-time key upload sequence number: the time in microseconds, or one more
    /// than the last number if the clock has not moved on (or went back).
    fn next_otk_seq(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut last = self.otk_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .otk_seq
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Another server says `user`'s devices or cross-signing keys changed: local users who
    /// share a room with them see it in `device_lists.changed` and ask again.
    pub fn remote_keys_changed(&self, user: &UserId) -> Result<()> {
        self.commit_key_change(user, Batch::new())
    }

    /// A local device was renamed: its display name is part of what `/keys/query` and
    /// `/user/devices` answer, so the users sharing a room (here and on other servers) are
    /// told its device list changed.
    pub fn device_renamed(&self, user: &UserId) -> Result<()> {
        self.commit_key_change(user, Batch::new())
    }

    /// Writes `batch` at a new stream position recorded as a key change of `user`, then wakes
    /// everyone who shares a room with them.
    fn commit_key_change(&self, user: &UserId, mut batch: Batch) -> Result<()> {
        let ops = std::mem::take(&mut batch);
        let (pos, ()) = self.stream.commit(|pos, b| {
            *b = ops;
            b.put(
                Table::PositionuserKeychange,
                KeyChangeKey {
                    pos,
                    user_id: user.as_str(),
                }
                .encode(),
                Vec::new(),
            );
            Ok(())
        })?;
        let mut wake: HashSet<OwnedUserId> = self.users_sharing_rooms(user)?;
        wake.insert(user.to_owned());
        self.stream.notifier().wake(wake.iter().map(|u| u.as_ref()));
        if let Some(o) = self.key_observer.as_ref() {
            o.device_list_changed(user, &wake);
        }
        if self.accounts.is_local(user) {
            self.announce_key_change(user, pos, &wake)?;
        }
        Ok(())
    }

    /// Tells the servers of users sharing a room with local `user` that its keys changed
    /// (`m.device_list_update`). The update carries no keys and no previous id, so each
    /// receiver takes a fresh snapshot from `/user/devices` rather than applying it as a delta.
    ///
    /// An empty `prev_id` is what makes Synapse resync (its `_need_to_do_resync`); a previous
    /// id it knows (the `stream_id` of its last `/user/devices` snapshot, or of an update it
    /// has seen) makes it apply the key-less update as is, and the new device stays out of
    /// its `/keys/query` answers. The spec allows an empty `prev_id` for the first update of a
    /// sequence; each update here starts one.
    fn announce_key_change(
        &self,
        user: &UserId,
        pos: u64,
        sharing: &HashSet<OwnedUserId>,
    ) -> Result<()> {
        let Some(out) = &self.edu_out else {
            return Ok(());
        };
        let servers: BTreeSet<&ruma::ServerName> = sharing
            .iter()
            .map(|u| u.server_name())
            .filter(|s| !self.accounts.is_local_server(s))
            .collect();
        if servers.is_empty() {
            return Ok(());
        }
        let device_id = self
            .accounts
            .devices(user)?
            .first()
            .map(|d| d.device_id.to_string())
            .unwrap_or_default();
        let mut content = DeviceListUpdateContent::new(
            user.to_owned(),
            OwnedDeviceId::from(device_id.as_str()),
            UInt::new_saturating(pos),
        );
        content.deleted = Some(false);
        let mut edu = serde_json::to_value(Edu::DeviceListUpdate(content))?;
        // ruma leaves an empty `prev_id` out; it is sent, as it always was (see above).
        edu["content"]["prev_id"] = json!([]);
        for server in servers {
            out(server, edu.clone())?;
        }
        Ok(())
    }

    /// Users in at least one room `user` is joined to (including `user` if joined anywhere).
    fn users_sharing_rooms(&self, user: &UserId) -> Result<HashSet<OwnedUserId>> {
        let mut out = HashSet::new();
        for (room, rec) in self.rooms.user_rooms(user)? {
            if rec.membership == MembershipState::Join {
                out.extend(self.rooms.joined_members(&room)?);
            }
        }
        Ok(out)
    }

    /// One-time keys left per algorithm (`signed_curve25519` always present).
    pub fn one_time_key_counts(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::from([("signed_curve25519".to_owned(), 0u64)]);
        for (k, _) in self.db.scan_prefix(
            Table::UserdevicealgseqOnetimekey,
            &OneTimeKeyKey::device_prefix(user.as_str(), device),
        )? {
            let alg = OneTimeKeyKey::decode_algorithm(&k)?;
            *counts.entry(alg.to_owned()).or_default() += 1;
        }
        Ok(counts)
    }

    /// Algorithms of the device's fallback keys that have not been handed out yet.
    pub fn unused_fallback_key_types(&self, user: &UserId, device: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(
            Table::UserdevicealgFallbackkey,
            &FallbackKeyKey::device_prefix(user.as_str(), device),
        )? {
            let fk: FallbackKey = serde_json::from_slice(&v)?;
            if !fk.used {
                out.push(FallbackKeyKey::decode(&k)?.algorithm.to_owned());
            }
        }
        Ok(out)
    }

    // ---- query and claim -------------------------------------------------------------------

    /// Signatures uploaded later for `target`'s key `key_id`, merged into `object`. Signatures
    /// by other users (user-signing signatures) are private to their signer.
    fn merge_signatures(
        &self,
        requester: Option<&UserId>,
        target: &UserId,
        key_id: &str,
        object: &mut Value,
    ) -> Result<()> {
        let prefix = SignatureKey::target_prefix(target.as_str(), key_id);
        for (k, v) in self.db.scan_prefix(Table::TargetsignerSignature, &prefix)? {
            let SignatureKey {
                signer, signer_key, ..
            } = SignatureKey::decode(&k)?;
            if signer != target.as_str() && requester.is_none_or(|r| signer != r.as_str()) {
                continue;
            }
            let sig = String::from_utf8_lossy(&v).into_owned();
            if !object.get("signatures").is_some_and(Value::is_object) {
                object["signatures"] = json!({});
            }
            let sigs = &mut object["signatures"];
            if !sigs.get(signer).is_some_and(Value::is_object) {
                sigs[signer] = json!({});
            }
            sigs[signer][signer_key] = Value::String(sig);
        }
        Ok(())
    }

    pub fn cross_signing_key(&self, user: &UserId, usage: &str) -> Result<Option<Value>> {
        match self.db.get(
            Table::UserusageCrosssigningkey,
            &CrossSigningKeyKey {
                user_id: user.as_str(),
                usage,
            }
            .encode(),
        )? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Whether `id` is the public key of one of `user`'s cross-signing keys.
    pub fn is_cross_signing_key(&self, user: &UserId, id: &str) -> Result<bool> {
        for usage in ["master", "self_signing", "user_signing"] {
            if let Some(k) = self.cross_signing_key(user, usage)? {
                if cross_signing_public_key(&k)?.1 == id {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// A cross-signing key as `requester` may see it, with the signatures added since.
    fn cross_signing_key_for(
        &self,
        requester: Option<&UserId>,
        user: &UserId,
        usage: &str,
    ) -> Result<Option<Value>> {
        let Some(mut key) = self.cross_signing_key(user, usage)? else {
            return Ok(None);
        };
        let (_, public) = cross_signing_public_key(&key)?;
        self.merge_signatures(requester, user, &public, &mut key)?;
        Ok(Some(key))
    }

    /// `/keys/query` for this server's users among `wanted`: device keys and cross-signing
    /// keys. `requester` is the asking user (None for another server), who also sees their own
    /// user-signing key and the signatures they made of others' keys.
    pub fn query_keys(
        &self,
        requester: Option<&UserId>,
        wanted: &BTreeMap<OwnedUserId, Vec<String>>,
    ) -> Result<Value> {
        if wanted.len() > MAX_TARGETS {
            return Err(Error::invalid_param("too many users in one query"));
        }
        let mut device_keys = Map::new();
        let mut master = Map::new();
        let mut self_signing = Map::new();
        let mut user_signing = Map::new();
        for (user, devices) in wanted {
            if !self.accounts.is_local(user) {
                // Other servers' users are asked over federation by the caller.
                continue;
            }
            let mut per_device = Map::new();
            let device_ids: Vec<String> = if devices.is_empty() {
                self.db
                    .scan_prefix(
                        Table::UserdeviceDevicekeys,
                        &DeviceKeysKey::user_prefix(user.as_str()),
                    )?
                    .into_iter()
                    .filter_map(|(k, _)| {
                        DeviceKeysKey::decode(&k)
                            .ok()
                            .map(|key| key.device_id.to_owned())
                    })
                    .collect()
            } else {
                devices.clone()
            };
            for d in device_ids {
                let Some(mut keys) = self.device_keys(user, &d)? else {
                    continue;
                };
                self.merge_signatures(requester, user, &d, &mut keys)?;
                if let Some(dev) = self.accounts.device(user, &d)? {
                    if let Some(name) = dev.display_name {
                        keys["unsigned"] = json!({ "device_display_name": name });
                    }
                }
                per_device.insert(d, keys);
            }
            device_keys.insert(user.to_string(), Value::Object(per_device));
            if let Some(k) = self.cross_signing_key_for(requester, user, "master")? {
                master.insert(user.to_string(), k);
            }
            if let Some(k) = self.cross_signing_key_for(requester, user, "self_signing")? {
                self_signing.insert(user.to_string(), k);
            }
            if requester == Some(user.as_ref()) {
                if let Some(k) = self.cross_signing_key_for(requester, user, "user_signing")? {
                    user_signing.insert(user.to_string(), k);
                }
            }
        }
        Ok(json!({
            "device_keys": device_keys,
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
            "failures": {},
        }))
    }

    /// `/keys/claim`: for each device, one one-time key of the algorithm (each handed out once),
    /// or the device's fallback key when none is left.
    pub fn claim_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<Value> {
        if wanted.values().map(BTreeMap::len).sum::<usize>() > MAX_TARGETS {
            return Err(Error::invalid_param("too many devices in one claim"));
        }
        let _guard = self.keys_lock.lock();
        let mut out = Map::new();
        let mut batch = Batch::new();
        let mut claimed: Vec<(&UserId, &str)> = Vec::new();
        for (user, devices) in wanted {
            if !self.accounts.is_local(user) {
                // Other servers' users are asked over federation by the caller.
                continue;
            }
            let mut per_device = Map::new();
            for (device, alg) in devices {
                let prefix = OneTimeKeyKey::algorithm_prefix(user.as_str(), device, alg);
                let first = self
                    .db
                    .scan(
                        Table::UserdevicealgseqOnetimekey,
                        &prefix,
                        &prefix,
                        None,
                        false,
                        1,
                    )?
                    .into_iter()
                    .next();
                if let Some((k, v)) = first {
                    // The oldest key of the algorithm: keys go out in upload order.
                    let otk: OneTimeKey = serde_json::from_slice(&v)?;
                    batch.delete(Table::UserdevicealgseqOnetimekey, k.to_vec());
                    per_device.insert(device.clone(), json!({ otk.id: otk.key }));
                    claimed.push((user, device));
                    continue;
                }
                let fk_key = FallbackKeyKey {
                    user_id: user.as_str(),
                    device_id: device,
                    algorithm: alg,
                }
                .encode();
                if let Some(v) = self.db.get(Table::UserdevicealgFallbackkey, &fk_key)? {
                    let mut fk: FallbackKey = serde_json::from_slice(&v)?;
                    per_device.insert(device.clone(), json!({ fk.key_id.clone(): fk.key.clone() }));
                    if !fk.used {
                        fk.used = true;
                        batch.put(
                            Table::UserdevicealgFallbackkey,
                            fk_key,
                            serde_json::to_vec(&fk)?,
                        );
                        claimed.push((user, device));
                    }
                }
            }
            if !per_device.is_empty() {
                out.insert(user.to_string(), Value::Object(per_device));
            }
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        for (user, device) in claimed {
            self.tell_counts(user, device);
        }
        Ok(json!({ "one_time_keys": out, "failures": {} }))
    }

    /// `/_matrix/federation/v1/user/devices/{userId}`: a local user's devices with keys and
    /// cross-signing keys, and a position that grows whenever they change.
    pub fn federation_devices(&self, user: &UserId, stream_id: u64) -> Result<Value> {
        let mut devices = Vec::new();
        for d in self.accounts.devices(user)? {
            let Some(mut keys) = self.device_keys(user, d.device_id.as_str())? else {
                continue;
            };
            self.merge_signatures(None, user, d.device_id.as_str(), &mut keys)?;
            let mut entry = json!({ "device_id": d.device_id, "keys": keys });
            if let Some(name) = d.display_name {
                entry["device_display_name"] = json!(name);
            }
            devices.push(entry);
        }
        let mut out = json!({ "user_id": user, "stream_id": stream_id, "devices": devices });
        if let Some(k) = self.cross_signing_key_for(None, user, "master")? {
            out["master_key"] = k;
        }
        if let Some(k) = self.cross_signing_key_for(None, user, "self_signing")? {
            out["self_signing_key"] = k;
        }
        Ok(out)
    }

    // ---- device lists ----------------------------------------------------------------------

    /// Users whose device lists `user` should refetch after `from` up to `to` (stream
    /// positions): those sharing a room with `user` whose keys changed, those who started
    /// sharing a room; and those who no longer share any room (`left`).
    pub fn device_list_changes(
        &self,
        user: &UserId,
        from: u64,
        to: u64,
    ) -> Result<DeviceListChanges> {
        let mut out = DeviceListChanges::default();
        if from >= to {
            return Ok(out);
        }
        let mut key_changed: BTreeSet<OwnedUserId> = BTreeSet::new();
        let lower = KeyChangeKey::at_pos(from.saturating_add(1));
        let upper = KeyChangeKey::at_pos(to.saturating_add(1));
        for (k, _) in self.db.scan(
            Table::PositionuserKeychange,
            b"",
            &lower,
            Some(&upper),
            false,
            usize::MAX,
        )? {
            if let Ok(u) = UserId::parse(KeyChangeKey::decode(&k)?.user_id) {
                key_changed.insert(u);
            }
        }

        let mut joined_candidates: BTreeSet<OwnedUserId> = BTreeSet::new();
        let mut left_candidates: BTreeSet<OwnedUserId> = BTreeSet::new();
        let mut joined_rooms = Vec::new();
        for (room, rec) in self.rooms.user_rooms(user)? {
            let in_window = rec.pos > from && rec.pos <= to;
            match rec.membership {
                MembershipState::Join => {
                    if in_window {
                        // Newly joined: every member's devices are new to us.
                        joined_candidates.extend(self.rooms.joined_members(&room)?);
                    } else {
                        self.member_changes(
                            user,
                            &room,
                            from,
                            to,
                            &mut joined_candidates,
                            &mut left_candidates,
                        )?;
                    }
                    joined_rooms.push(room);
                }
                MembershipState::Leave | MembershipState::Ban if in_window => {
                    left_candidates.extend(self.rooms.joined_members(&room)?);
                }
                _ => {}
            }
        }
        if key_changed.is_empty() && joined_candidates.is_empty() && left_candidates.is_empty() {
            // The common case (a message arrived): no member lists read.
            return Ok(out);
        }
        let mut shared: HashSet<OwnedUserId> = HashSet::new();
        for room in &joined_rooms {
            shared.extend(self.rooms.joined_members(room)?);
        }
        for u in key_changed {
            if shared.contains(&u) || u == user {
                out.changed.insert(u);
            }
        }
        for u in joined_candidates {
            if shared.contains(&u) {
                out.changed.insert(u);
            }
        }
        for u in left_candidates {
            if !shared.contains(&u) && u != user {
                out.changed.remove(&u);
                out.left.insert(u);
            }
        }
        Ok(out)
    }

    /// Joins and leaves of other members of `room` between `from` and `to`.
    fn member_changes(
        &self,
        user: &UserId,
        room: &RoomId,
        from: u64,
        to: u64,
        joined: &mut BTreeSet<OwnedUserId>,
        left: &mut BTreeSet<OwnedUserId>,
    ) -> Result<()> {
        let filter = EventFilter {
            types: Some(vec!["m.room.member".to_owned()]),
            ..EventFilter::default()
        };
        let mut cursor = from;
        loop {
            let page = self.rooms.paginate(
                room,
                Reader { user, device: None },
                Window {
                    from: cursor,
                    to: Some(to),
                    dir: Dir::Forward,
                    limit: 500,
                },
                &filter,
            )?;
            for (_, ev) in &page.events {
                let Some(target) = ev
                    .get("state_key")
                    .and_then(Value::as_str)
                    .and_then(|s| UserId::parse(s).ok())
                else {
                    continue;
                };
                if target == user {
                    continue;
                }
                match membership_of(&ev["content"]) {
                    Some(MembershipState::Join) => {
                        left.remove(&target);
                        joined.insert(target);
                    }
                    Some(MembershipState::Leave | MembershipState::Ban) => {
                        joined.remove(&target);
                        left.insert(target);
                    }
                    _ => {}
                }
            }
            match page.next {
                Some(next) if next > cursor && next < to => cursor = next,
                _ => break,
            }
        }
        Ok(())
    }

    // ---- cross-signing ---------------------------------------------------------------------

    /// Whether uploading `body` would replace an existing master key (so UIA is required).
    pub fn signing_upload_needs_auth(&self, user: &UserId, body: &Value) -> Result<bool> {
        let Some(old) = self.cross_signing_key(user, "master")? else {
            return Ok(false);
        };
        for usage in ["master", "self_signing", "user_signing"] {
            let Some(new) = body.get(format!("{usage}_key")).filter(|v| !v.is_null()) else {
                continue;
            };
            let stored = if usage == "master" {
                Some(old.clone())
            } else {
                self.cross_signing_key(user, usage)?
            };
            match stored {
                Some(s) if signed_part(&s)? == signed_part(new)? => {}
                _ => return Ok(true),
            }
        }
        Ok(false)
    }

    /// `/keys/device_signing/upload` (after UIA where needed).
    pub fn upload_signing_keys(&self, user: &UserId, body: &Value) -> Result<()> {
        let _guard = self.signing_lock.lock();
        let get = |usage: &str| body.get(format!("{usage}_key")).filter(|v| !v.is_null());
        for usage in ["master", "self_signing", "user_signing"] {
            if let Some(k) = get(usage) {
                if k.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
                    return Err(Error::invalid_param(format!(
                        "{usage}_key.user_id must be the uploading user"
                    )));
                }
                let usages = k.get("usage").and_then(Value::as_array);
                if !usages.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage))) {
                    return Err(Error::invalid_param(format!(
                        "{usage}_key.usage must contain \"{usage}\""
                    )));
                }
                cross_signing_public_key(k)?;
            }
        }
        let master = match get("master") {
            Some(m) => m.clone(),
            None => self.cross_signing_key(user, "master")?.ok_or_else(|| {
                Error::missing_param("no master key: upload one with the other cross-signing keys")
            })?,
        };
        let (master_id, master_public) = cross_signing_public_key(&master)?;
        for usage in ["self_signing", "user_signing"] {
            if let Some(k) = get(usage) {
                if !signature_valid(k, user.as_str(), &master_id, &master_public) {
                    return Err(Error::invalid_signature(format!(
                        "{usage}_key is not signed by the master key"
                    )));
                }
            }
        }
        // A cross-signing key may not share its id with a device (the spec's MUST).
        for usage in ["master", "self_signing", "user_signing"] {
            if let Some(k) = get(usage) {
                let (_, public) = cross_signing_public_key(k)?;
                if self.accounts.device(user, &public)?.is_some() {
                    return Err(Error::forbidden(format!(
                        "{usage}_key has the same id as one of your devices"
                    )));
                }
            }
        }
        let mut batch = Batch::new();
        for usage in ["master", "self_signing", "user_signing"] {
            if let Some(k) = get(usage) {
                batch.put(
                    Table::UserusageCrosssigningkey,
                    CrossSigningKeyKey {
                        user_id: user.as_str(),
                        usage,
                    }
                    .encode(),
                    serde_json::to_vec(k)?,
                );
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_key_change(user, batch)
    }

    /// `/keys/signatures/upload`: signatures of `uploader`'s own devices and master key, and
    /// of other users' master keys by the uploader's user-signing key. Returns `failures`.
    pub fn upload_signatures(&self, uploader: &UserId, body: &Value) -> Result<Value> {
        let body = body
            .as_object()
            .ok_or_else(|| Error::bad_json("the body must be an object"))?;
        let _guard = self.signing_lock.lock();
        let mut failures = Map::new();
        let mut changed: BTreeSet<OwnedUserId> = BTreeSet::new();
        let mut batch = Batch::new();
        for (target, keys) in body {
            let Some(keys) = keys.as_object() else {
                return Err(Error::bad_json("each user maps key ids to signed keys"));
            };
            let Ok(target_user) = UserId::parse(target.as_str()) else {
                failures.insert(
                    target.clone(),
                    json!({ "*": { "errcode": "M_INVALID_PARAM", "error": "not a user id" } }),
                );
                continue;
            };
            for (key_id, signed) in keys {
                match self.check_uploaded_signature(uploader, &target_user, key_id, signed) {
                    Ok((signer_key_id, signature)) => {
                        batch.put(
                            Table::TargetsignerSignature,
                            SignatureKey {
                                target_user: target_user.as_str(),
                                target_key: key_id,
                                signer: uploader.as_str(),
                                signer_key: &signer_key_id,
                            }
                            .encode(),
                            signature.into_bytes(),
                        );
                        changed.insert(target_user.clone());
                    }
                    Err(e) => {
                        let (_, body) = e.classify();
                        let entry = failures.entry(target.clone()).or_insert_with(|| json!({}));
                        entry[key_id] = body;
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
            for u in changed {
                self.commit_key_change(&u, Batch::new())?;
            }
        }
        Ok(json!({ "failures": failures }))
    }

    /// Checks one uploaded signature; returns the signing key id and the signature.
    fn check_uploaded_signature(
        &self,
        uploader: &UserId,
        target: &UserId,
        key_id: &str,
        signed: &Value,
    ) -> Result<(String, String)> {
        if !self.accounts.is_local(target) {
            return Err(Error::invalid_param(
                "signing remote users' keys needs federation, which is not available yet",
            ));
        }
        // The key being signed, as stored.
        let (stored, is_master) = if let Some(dk) = self.device_keys(target, key_id)? {
            (dk, false)
        } else {
            match self.cross_signing_key(target, "master")? {
                Some(m) if cross_signing_public_key(&m)?.1 == key_id => (m, true),
                _ => return Err(Error::not_found(format!("no key {key_id} for {target}"))),
            }
        };
        if signed_part(&stored)? != signed_part(signed)? {
            return Err(Error::invalid_param(
                "the signed object differs from the stored key",
            ));
        }
        let sigs = signed
            .get("signatures")
            .and_then(|s| s.get(uploader.as_str()))
            .and_then(Value::as_object)
            .ok_or_else(|| Error::invalid_signature("no signature by the uploader"))?;
        // Which of the uploader's keys may sign this key.
        let candidates: Vec<(String, String)> = if target == uploader {
            if is_master {
                // Own master key: signed by one of the user's devices.
                let mut c = Vec::new();
                for sig_key_id in sigs.keys() {
                    if let Some(dev) = sig_key_id.strip_prefix("ed25519:") {
                        if let Some(pk) = self.device_ed25519(uploader, dev)? {
                            c.push((sig_key_id.clone(), pk));
                        }
                    }
                }
                c
            } else {
                // Own device: signed by the self-signing key.
                let ssk = self
                    .cross_signing_key(uploader, "self_signing")?
                    .ok_or_else(|| Error::invalid_signature("no self-signing key uploaded"))?;
                vec![cross_signing_public_key(&ssk)?]
            }
        } else {
            if !is_master {
                return Err(Error::invalid_param(
                    "other users' devices are signed through their master key",
                ));
            }
            let usk = self
                .cross_signing_key(uploader, "user_signing")?
                .ok_or_else(|| Error::invalid_signature("no user-signing key uploaded"))?;
            vec![cross_signing_public_key(&usk)?]
        };
        for (sig_key_id, public) in candidates {
            if sigs.contains_key(&sig_key_id)
                && signature_valid(signed, uploader.as_str(), &sig_key_id, &public)
            {
                let sig = sigs[&sig_key_id].as_str().unwrap_or_default().to_owned();
                return Ok((sig_key_id, sig));
            }
        }
        Err(Error::invalid_signature("the signature does not verify"))
    }

    // ---- to-device -------------------------------------------------------------------------

    /// `/sendToDevice/{type}/{txnId}`: queues `messages` (user → device or `*` → content) for
    /// their recipients, once per transaction.
    pub fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        kind: &str,
        txn_id: &str,
        messages: &Value,
    ) -> Result<()> {
        let messages = messages
            .as_object()
            .ok_or_else(|| Error::bad_json("messages must be an object"))?;
        let txn_key = ToDeviceTxnKey {
            user_id: sender.as_str(),
            device_id: sender_device,
            txn_id,
        }
        .encode();
        let mut recipients: Vec<(OwnedUserId, String, Value)> = Vec::new();
        let mut remote: BTreeMap<ruma::OwnedServerName, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in messages {
            let user_id = UserId::parse(user.as_str())
                .map_err(|_| Error::invalid_param(format!("{user} is not a user id")))?;
            let devices = devices
                .as_object()
                .ok_or_else(|| Error::bad_json("each user maps device ids to contents"))?;
            if !self.accounts.is_local(&user_id) {
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user.clone(), Value::Object(devices.clone()));
                continue;
            }
            for (device, content) in devices {
                if !content.is_object() {
                    return Err(Error::bad_json("to-device contents must be objects"));
                }
                if device == "*" {
                    for d in self.accounts.devices(&user_id)? {
                        recipients.push((
                            user_id.clone(),
                            d.device_id.to_string(),
                            content.clone(),
                        ));
                    }
                } else if self.accounts.device(&user_id, device)?.is_some() {
                    recipients.push((user_id.clone(), device.clone(), content.clone()));
                }
            }
            if recipients.len() > MAX_TARGETS {
                return Err(Error::invalid_param("too many recipients"));
            }
        }
        let remote = remote
            .into_iter()
            .map(|(server, messages)| {
                let mut content = DirectDeviceContent::new(
                    sender.to_owned(),
                    ToDeviceEventType::from(kind),
                    OwnedTransactionId::from(format!("{sender_device}.{txn_id}")),
                );
                content.messages = serde_json::from_value(Value::Object(messages))
                    .map_err(|e| Error::bad_json(format!("to-device messages: {e}")))?;
                let edu = serde_json::to_value(Edu::DirectToDevice(content))?;
                Ok::<_, Error>((server, edu))
            })
            .collect::<Result<Vec<_>>>()?;
        let sender_s = sender.as_str().to_owned();
        let kind_s = kind.to_owned();
        let now = now_ms();
        let (_, accepted) = self.stream.commit(|pos, batch| {
            if self.db.exists(Table::UserdevicetxnTodevice, &txn_key)? {
                return Ok(false);
            }
            // The transaction id is remembered for retries, for a day.
            crate::expiry::schedule(
                batch,
                Table::UserdevicetxnTodevice,
                &txn_key,
                now.saturating_add(crate::expiry::TRANSACTION_TTL_MS),
            );
            batch.put(Table::UserdevicetxnTodevice, txn_key.clone(), Vec::new());
            for (seq, (user, device, content)) in recipients.iter().enumerate() {
                batch.put(
                    Table::UserdeviceposTodevice,
                    ToDeviceKey {
                        user_id: user.as_str(),
                        device_id: device,
                        pos,
                        seq: seq as u64,
                    }
                    .encode(),
                    serde_json::to_vec(&ToDevice {
                        sender: sender_s.clone(),
                        kind: kind_s.clone(),
                        content: content.clone(),
                        ts: Some(now),
                    })?,
                );
            }
            Ok(true)
        })?;
        if accepted {
            if let Some(o) = self.key_observer.as_ref() {
                for (user, device, content) in &recipients {
                    if o.wants(user) {
                        o.to_device(
                            user,
                            device,
                            json!({ "type": kind, "sender": sender, "content": content }),
                        );
                    }
                }
            }
            self.cap_to_device_queues(&recipients)?;
            let users: BTreeSet<&UserId> = recipients.iter().map(|(u, _, _)| u.as_ref()).collect();
            self.stream.notifier().wake(users);
            // Users of other servers: one EDU per server, identified by the sender's device
            // and transaction so a retry is recognised there too.
            if let Some(out) = &self.edu_out {
                for (server, edu) in remote {
                    out(&server, edu)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the device's to-device messages at or before `acked` (the client has them).
    pub fn ack_to_device(&self, user: &UserId, device: &str, acked: u64) -> Result<()> {
        let prefix = ToDeviceKey::device_prefix(user.as_str(), device);
        let upper = ToDeviceKey::at_pos(user.as_str(), device, acked.saturating_add(1));
        let rows = self.db.scan(
            Table::UserdeviceposTodevice,
            &prefix,
            &prefix,
            Some(&upper),
            false,
            usize::MAX,
        )?;
        if rows.is_empty() {
            return Ok(());
        }
        let acked = rows.len() as u64;
        let mut batch = Batch::new();
        for (k, _) in rows {
            batch.delete(Table::UserdeviceposTodevice, k.to_vec());
        }
        self.db.write(batch)?;
        if let Some(count) = self
            .pending_counts
            .lock()
            .get_mut(&(user.to_owned(), device.to_owned()))
        {
            *count = count.saturating_sub(acked);
        }
        Ok(())
    }

    /// Keeps each recipient device's queue within `to_device_max_pending` after `recipients`
    /// were queued: past the cap the oldest messages are dropped, the excess plus a tenth of
    /// the cap at once, so a device that never syncs costs one trim (and one warning) per
    /// tenth of the cap rather than per message. Dropping beats refusing: a refusal would fail
    /// the sender's request for every recipient because one device is gone for good, and the
    /// messages lost are the oldest a device that long away is least likely to need.
    fn cap_to_device_queues(&self, recipients: &[(OwnedUserId, String, Value)]) -> Result<()> {
        let cap = self.to_device_limits.max_pending;
        let mut added: BTreeMap<(&UserId, &str), u64> = BTreeMap::new();
        for (user, device, _) in recipients {
            *added.entry((user.as_ref(), device.as_str())).or_default() += 1;
        }
        for ((user, device), n) in added {
            let id = (user.to_owned(), device.to_owned());
            let known = self.pending_counts.lock().get_mut(&id).map(|count| {
                *count = count.saturating_add(n);
                *count
            });
            let count = match known {
                Some(count) => count,
                None => {
                    // The first message to this device since the start: count its queue.
                    let exact = self.count_to_device(user, device)?;
                    self.pending_counts.lock().insert(id.clone(), exact);
                    exact
                }
            };
            if count > cap {
                let left = self.trim_to_device(user, device, cap)?;
                self.pending_counts.lock().insert(id, left);
            }
        }
        Ok(())
    }

    /// How many to-device messages wait for the device.
    fn count_to_device(&self, user: &UserId, device: &str) -> Result<u64> {
        let n = self.db.for_each_prefix(
            Table::UserdeviceposTodevice,
            &ToDeviceKey::device_prefix(user.as_str(), device),
            usize::MAX,
            |_, _| Ok(()),
        )?;
        Ok(n as u64)
    }

    /// Drops the device's oldest to-device messages if more than `cap` wait; returns how many
    /// are left.
    fn trim_to_device(&self, user: &UserId, device: &str, cap: u64) -> Result<u64> {
        let prefix = ToDeviceKey::device_prefix(user.as_str(), device);
        let mut keys = Vec::new();
        self.db
            .for_each_prefix(Table::UserdeviceposTodevice, &prefix, usize::MAX, |k, _| {
                keys.push(k.to_vec());
                Ok(())
            })?;
        let pending = keys.len() as u64;
        if pending <= cap {
            return Ok(pending);
        }
        let drop = pending
            .saturating_sub(cap)
            .saturating_add(cap / 10)
            .min(pending);
        let mut batch = Batch::new();
        for key in keys
            .into_iter()
            .take(usize::try_from(drop).unwrap_or(usize::MAX))
        {
            batch.delete(Table::UserdeviceposTodevice, key);
        }
        self.db.write(batch)?;
        tracing::warn!(
            user = %user,
            device,
            dropped = drop,
            "to-device queue full: dropping the oldest messages"
        );
        Ok(pending.saturating_sub(drop))
    }

    /// Deletes the to-device messages queued before `now - to_device_max_age_ms` that their
    /// device never collected, in batches of [`TO_DEVICE_SWEEP_BATCH`]; returns how many went.
    /// Run by the housekeeping task; it also recounts every device's queue afresh.
    pub fn expire_to_device(&self, now: u64) -> Result<usize> {
        let cutoff = now.saturating_sub(self.to_device_limits.max_age_ms);
        let expired = expire_to_device_rows(&self.db, cutoff)?;
        self.pending_counts.lock().clear();
        if expired > 0 {
            tracing::info!(
                expired,
                "deleted to-device messages their devices never collected"
            );
        }
        Ok(expired)
    }

    /// The device's oldest pending to-device messages at or before `upto`, at most `limit`.
    /// When some are left for later, also the stream position up to which these cover
    /// everything (the sync token carries it, so the next sync acknowledges only these).
    pub fn pending_to_device(
        &self,
        user: &UserId,
        device: &str,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>)> {
        let prefix = ToDeviceKey::device_prefix(user.as_str(), device);
        let upper = ToDeviceKey::at_pos(user.as_str(), device, upto.saturating_add(1));
        let mut rows = Vec::new();
        for (k, v) in self.db.scan(
            Table::UserdeviceposTodevice,
            &prefix,
            &prefix,
            Some(&upper),
            false,
            limit.saturating_add(1),
        )? {
            rows.push((ToDeviceKey::decode_pos(&k)?, v));
        }
        let mut ack = None;
        if rows.len() > limit {
            // Stop at a position boundary: an acknowledgement covers whole positions.
            let first_left = rows[limit].0;
            rows.truncate(limit);
            while rows.last().is_some_and(|(p, _)| *p == first_left) && rows.len() > 1 {
                rows.pop();
            }
            ack = rows.last().map(|(p, _)| *p);
        }
        let mut events = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let m: ToDevice = serde_json::from_slice(&v)?;
            events.push(json!({ "sender": m.sender, "type": m.kind, "content": m.content }));
        }
        Ok((events, ack))
    }

    // ---- devices going away ----------------------------------------------------------------

    /// Forgets everything about devices that were deleted (logout, DELETE /devices, password
    /// change, deactivation): their keys, pending messages and the signatures on them.
    pub fn devices_removed(&self, user: &UserId, devices: &[String]) -> Result<()> {
        if devices.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        let mut had_keys = false;
        {
            let _guard = self.keys_lock.lock();
            for d in devices {
                if self
                    .db
                    .exists(Table::UserdeviceDevicekeys, &dev_key(user.as_str(), d))?
                {
                    had_keys = true;
                    batch.delete(Table::UserdeviceDevicekeys, dev_key(user.as_str(), d));
                }
                for table in [
                    Table::UserdevicealgseqOnetimekey,
                    Table::UserdevicealgFallbackkey,
                    Table::UserdeviceposTodevice,
                ] {
                    for (k, _) in self.db.scan_prefix(table, &dev_prefix(user.as_str(), d))? {
                        batch.delete(table, k.to_vec());
                    }
                }
                let sig_prefix = SignatureKey::target_prefix(user.as_str(), d);
                for (k, _) in self
                    .db
                    .scan_prefix(Table::TargetsignerSignature, &sig_prefix)?
                {
                    batch.delete(Table::TargetsignerSignature, k.to_vec());
                }
            }
            if let Some(dd) = self.dehydrated_device(user)? {
                if devices.contains(&dd.device_id) {
                    batch.delete(Table::UseridDehydrateddevice, user.as_bytes().to_vec());
                }
            }
        }
        {
            let mut counts = self.pending_counts.lock();
            for d in devices {
                counts.remove(&(user.to_owned(), d.clone()));
            }
        }
        // Every device change is a device-list change, keys or not: clients also list devices.
        let _ = had_keys;
        self.commit_key_change(user, batch)
    }

    /// Deactivation: the user's devices' keys (see [`E2ee::devices_removed`]) and their
    /// cross-signing keys.
    pub fn user_deactivated(&self, user: &UserId, devices: &[String]) -> Result<()> {
        self.devices_removed(user, devices)?;
        let mut batch = Batch::new();
        for table in [Table::UserusageCrosssigningkey] {
            for (k, _) in self.db.scan_prefix(table, &user_prefix(user.as_str()))? {
                batch.delete(table, k.to_vec());
            }
        }
        batch.delete(Table::UseridDehydrateddevice, user.as_bytes().to_vec());
        self.commit_key_change(user, batch)
    }

    // ---- dehydrated devices (MSC3814) ------------------------------------------------------

    pub fn dehydrated_device(&self, user: &UserId) -> Result<Option<DehydratedDevice>> {
        match self
            .db
            .get(Table::UseridDehydrateddevice, user.as_bytes())?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn set_dehydrated_device(&self, user: &UserId, device: DehydratedDevice) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Table::UseridDehydrateddevice,
            user.as_bytes().to_vec(),
            serde_json::to_vec(&device)?,
        );
        Ok(self.db.write(batch)?)
    }
}

/// Deletes every to-device message queued before `cutoff` (ms); messages without a queueing
/// time are kept. Reads the table in steps of [`TO_DEVICE_SWEEP_BATCH`] rows, each step's
/// deletions in one batch.
fn expire_to_device_rows(db: &Db, cutoff: u64) -> Result<usize> {
    let mut lower: Vec<u8> = Vec::new();
    let mut expired = 0usize;
    loop {
        let rows = db.scan(
            Table::UserdeviceposTodevice,
            &[],
            &lower,
            None,
            false,
            TO_DEVICE_SWEEP_BATCH,
        )?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        let mut next = last.to_vec();
        next.push(0);
        let mut batch = Batch::new();
        for (key, value) in &rows {
            let old = match serde_json::from_slice::<ToDevice>(value) {
                Ok(m) => m.ts.is_some_and(|ts| ts < cutoff),
                // Unreadable: nobody can be handed it either.
                Err(_) => true,
            };
            if old {
                batch.delete(Table::UserdeviceposTodevice, key.to_vec());
                expired += 1;
            }
        }
        if !batch.is_empty() {
            db.write(batch)?;
        }
        if rows.len() < TO_DEVICE_SWEEP_BATCH {
            break;
        }
        lower = next;
    }
    Ok(expired)
}

/// The users and devices of a key query (client or federation), as the service takes them.
pub fn query_wanted(
    asked: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
) -> BTreeMap<OwnedUserId, Vec<String>> {
    asked
        .iter()
        .map(|(u, ds)| (u.clone(), ds.iter().map(|d| d.to_string()).collect()))
        .collect()
}

/// The devices and algorithms of a key claim (client or federation), as the service takes them.
pub fn claim_wanted(
    asked: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, ruma::OneTimeKeyAlgorithm>>,
) -> BTreeMap<OwnedUserId, BTreeMap<String, String>> {
    asked
        .iter()
        .map(|(u, ds)| {
            (
                u.clone(),
                ds.iter()
                    .map(|(d, alg)| (d.to_string(), alg.to_string()))
                    .collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 15: to-device messages a device never collects are deleted once older than the
    // limit; newer ones, and those from before messages carried a time, stay.
    #[test]
    fn old_to_device_messages_expire() {
        let Ok(dir) = tempfile::tempdir() else {
            unreachable!("tempdir");
        };
        let Ok(db) = Db::open(&dir.path().join("db")) else {
            unreachable!("db");
        };
        let n = TO_DEVICE_SWEEP_BATCH + 10;
        let mut batch = Batch::new();
        for i in 0..n {
            let ts = if i % 2 == 0 { Some(100) } else { Some(200) };
            let message = ToDevice {
                sender: "@a:x".into(),
                kind: "m.test".into(),
                content: json!({ "i": i }),
                ts: if i == 0 { None } else { ts },
            };
            let key = KeyBuf::new()
                .str("@b:x")
                .str(if i % 3 == 0 { "D1" } else { "D2" })
                .u64(i as u64)
                .u64(0)
                .into_vec();
            let Ok(value) = serde_json::to_vec(&message) else {
                unreachable!("json");
            };
            batch.put(Table::UserdeviceposTodevice, key, value);
        }
        assert!(db.write(batch).is_ok());
        let left = |db: &Db| {
            db.scan_prefix(Table::UserdeviceposTodevice, b"")
                .map(|rows| rows.len())
                .unwrap_or(0)
        };
        assert!(matches!(expire_to_device_rows(&db, 100), Ok(0)));
        assert_eq!(left(&db), n);
        // Even numbers (ts 100) go, except message 0, which has no time.
        let even = n.div_ceil(2);
        assert!(matches!(expire_to_device_rows(&db, 101), Ok(k) if k == even - 1));
        assert_eq!(left(&db), n - even + 1);
        assert!(matches!(expire_to_device_rows(&db, 201), Ok(k) if k == n - even));
        assert_eq!(left(&db), 1);
    }

    #[test]
    fn key_ids_need_an_algorithm_and_an_id() {
        assert!(split_key_id("signed_curve25519:AAAAAQ").is_ok());
        assert!(split_key_id("signed_curve25519").is_err());
        assert!(split_key_id(":x").is_err());
        assert!(split_key_id("x:").is_err());
    }

    #[test]
    fn cross_signing_key_ids_carry_their_public_key() {
        let ok = json!({ "keys": { "ed25519:abc": "abc" } });
        assert_eq!(
            cross_signing_public_key(&ok).ok(),
            Some(("ed25519:abc".to_owned(), "abc".to_owned()))
        );
        assert!(cross_signing_public_key(&json!({ "keys": { "ed25519:abc": "abd" } })).is_err());
        assert!(cross_signing_public_key(&json!({ "keys": {} })).is_err());
        assert!(cross_signing_public_key(&json!({})).is_err());
    }

    #[test]
    fn signatures_are_checked_over_the_canonical_object() {
        use ruma::signatures::{sign_json, Ed25519KeyPair};
        let der = Ed25519KeyPair::generate();
        let Ok(kp) = Ed25519KeyPair::from_der(&der, "DEV".to_owned()) else {
            unreachable!("key parse");
        };
        let public = STANDARD_NO_PAD.encode(kp.public_key());
        let mut obj: CanonicalJsonObject = match serde_json::from_value(json!({
            "user_id": "@a:x", "device_id": "DEV", "keys": { "ed25519:DEV": public },
            "unsigned": { "device_display_name": "ignored" }
        })) {
            Ok(o) => o,
            Err(_) => unreachable!("object"),
        };
        assert!(sign_json("@a:x", &kp, &mut obj).is_ok());
        let signed = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(_) => unreachable!("value"),
        };
        assert!(signature_valid(&signed, "@a:x", "ed25519:DEV", &public));
        let mut tampered = signed.clone();
        tampered["device_id"] = json!("OTHER");
        assert!(!signature_valid(&tampered, "@a:x", "ed25519:DEV", &public));
        assert!(!signature_valid(&signed, "@b:x", "ed25519:DEV", &public));
    }
}
