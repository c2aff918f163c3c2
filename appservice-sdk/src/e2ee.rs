//! End-to-end encryption for one device of one of the appservice's users (feature `e2ee`):
//! an [`OlmMachine`] fed from the transactions' MSC3202/MSC4203 fields instead of `/sync`,
//! whose requests go out with the `as_token`, `?user_id=` and `?device_id=` (MSC4190,
//! MSC4326).

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use matrix_sdk_crypto::{
    types::{
        events::room::encrypted::EncryptedEvent,
        requests::{AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest},
    },
    DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, OlmMachine, OlmMachineBuilder,
    TrustRequirement,
};
use reqwest::Method;
use ruma::{
    api::{
        client::{
            keys::{claim_keys, get_keys, upload_keys, upload_signatures},
            message::send_message_event,
            sync::sync_events::DeviceLists,
            to_device::send_event_to_device,
        },
        IncomingResponse, IncomingResponseExt,
    },
    events::{AnyMessageLikeEventContent, AnyTimelineEvent, AnyToDeviceEvent},
    serde::Raw,
    DeviceId, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    event::{Encryption, Event},
    wire::{enc, txn_id, CLIENT_V3},
};

/// How the device reaches the homeserver: the appservice's HTTP client, the homeserver's
/// client-server API base and the `as_token`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) homeserver: &'a str,
    pub(crate) as_token: &'a str,
}

/// Undecryptable events kept for a retry when their room key arrives; the oldest go first.
const MAX_PENDING: usize = 256;

/// The MSC3202/MSC4203 fields of a transaction, each read on its own so that a malformed one
/// costs only itself (the events of the transaction are still delivered).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TransactionCrypto {
    #[serde(rename = "org.matrix.msc3202.device_one_time_keys_count")]
    otk_counts: Option<Value>,
    #[serde(rename = "org.matrix.msc3202.device_unused_fallback_key_types")]
    fallback_key_types: Option<Value>,
    #[serde(rename = "org.matrix.msc3202.device_lists")]
    device_lists: Option<Value>,
    #[serde(rename = "de.sorunome.msc2409.to_device")]
    to_device: Option<Value>,
    /// The name MSC4203 gives the field; read too, in case a server sends that one.
    #[serde(rename = "org.matrix.msc4203.to_device")]
    to_device_msc4203: Option<Value>,
}

/// The encrypted device and its Olm machine.
pub(crate) struct Crypto {
    machine: OlmMachine,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    /// Rooms known to have `m.room.encryption` (it cannot be removed, so never forgotten).
    encrypted_rooms: Mutex<HashSet<OwnedRoomId>>,
    /// `m.room.encrypted` events that did not decrypt, with their room.
    pending: Mutex<Vec<(OwnedRoomId, Raw<AnyTimelineEvent>)>>,
    /// Held while outgoing requests are sent or a room key is shared, so two senders do not
    /// send the same request twice or share keys concurrently.
    send_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn crypto_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Crypto(format!("{what}: {e}"))
}

fn decryption_settings() -> DecryptionSettings {
    // The bot reads what any device sends; the event says whether that device is verified.
    DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    }
}

impl Crypto {
    /// Creates the device (MSC4190), starts its Olm machine (its keys in memory, or in the
    /// SQLite store at `store`, opened with the passphrase) and uploads its keys.
    pub(crate) async fn start(
        conn: &Link<'_>,
        user_id: OwnedUserId,
        device_id: OwnedDeviceId,
        display_name: &str,
        store: Option<(&std::path::Path, Option<&str>)>,
    ) -> Result<Crypto> {
        let machine = match store {
            None => OlmMachine::new(&user_id, &device_id).await,
            Some((path, passphrase)) => {
                let store = matrix_sdk_sqlite::SqliteCryptoStore::open(path, passphrase)
                    .await
                    .map_err(|e| crypto_err("opening the crypto store", e))?;
                OlmMachineBuilder::new(&user_id, &device_id)
                    .with_crypto_store(store)
                    .build()
                    .await
                    .map_err(|e| crypto_err("loading the crypto store", e))?
            }
        };
        let crypto = Crypto {
            machine,
            user_id,
            device_id,
            encrypted_rooms: Mutex::new(HashSet::new()),
            pending: Mutex::new(Vec::new()),
            send_lock: tokio::sync::Mutex::new(()),
        };
        // Without `?device_id=`: the device does not exist yet.
        let path = format!("{CLIENT_V3}/devices/{}", enc(crypto.device_id.as_str()));
        crypto
            .http(
                conn,
                Method::PUT,
                &path,
                Some(&json!({ "display_name": display_name })),
                false,
            )
            .await?;
        crypto.send_outgoing_requests(conn).await?;
        Ok(crypto)
    }

    pub(crate) fn machine(&self) -> &OlmMachine {
        &self.machine
    }

    pub(crate) fn user_id(&self) -> &UserId {
        &self.user_id
    }

    pub(crate) fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// A request as the device: status and body of the answer, an error for non-2xx.
    async fn http(
        &self,
        conn: &Link<'_>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        as_device: bool,
    ) -> Result<(u16, Vec<u8>)> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!(
            "{}/_matrix{path}{sep}user_id={}",
            conn.homeserver,
            enc(self.user_id.as_str())
        );
        if as_device {
            url.push_str("&device_id=");
            url.push_str(&enc(self.device_id.as_str()));
        }
        let mut req = conn.http.request(method, url).bearer_auth(conn.as_token);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?.to_vec();
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(Error::Matrix {
            status,
            errcode: value["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
            message: value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}")),
        })
    }

    /// A request as the device whose answer is parsed as ruma's response type `R`.
    async fn call<R: IncomingResponse>(
        &self,
        conn: &Link<'_>,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<R> {
        let (status, bytes) = self.http(conn, method, path, Some(body), true).await?;
        let response = http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes.as_slice())
            .map_err(|e| crypto_err(path, e))?;
        R::try_from_http_response(response).map_err(|e| crypto_err(path, e))
    }

    /// Sends every request the machine has queued and hands it the answers.
    pub(crate) async fn send_outgoing_requests(&self, conn: &Link<'_>) -> Result<()> {
        let _guard = self.send_lock.lock().await;
        self.send_outgoing_locked(conn).await
    }

    async fn send_outgoing_locked(&self, conn: &Link<'_>) -> Result<()> {
        let requests = self
            .machine
            .outgoing_requests()
            .await
            .map_err(|e| crypto_err("outgoing requests", e))?;
        for request in requests {
            self.send_one(conn, &request).await?;
        }
        Ok(())
    }

    async fn send_one(&self, conn: &Link<'_>, request: &OutgoingRequest) -> Result<()> {
        let id = request.request_id();
        let marked = match request.request() {
            AnyOutgoingRequest::KeysUpload(r) => {
                let mut body = json!({});
                if let Some(keys) = &r.device_keys {
                    body["device_keys"] = serde_json::to_value(keys)?;
                }
                if !r.one_time_keys.is_empty() {
                    body["one_time_keys"] = serde_json::to_value(&r.one_time_keys)?;
                }
                if !r.fallback_keys.is_empty() {
                    body["fallback_keys"] = serde_json::to_value(&r.fallback_keys)?;
                }
                let path = format!("{CLIENT_V3}/keys/upload");
                let resp: upload_keys::v3::Response =
                    self.call(conn, Method::POST, &path, &body).await?;
                self.machine.mark_request_as_sent(id, &resp).await
            }
            AnyOutgoingRequest::KeysQuery(r) => {
                let mut body = json!({ "device_keys": r.device_keys });
                if let Some(t) = r.timeout {
                    body["timeout"] = json!(t.as_millis() as u64);
                }
                let path = format!("{CLIENT_V3}/keys/query");
                let resp: get_keys::v3::Response =
                    self.call(conn, Method::POST, &path, &body).await?;
                self.machine.mark_request_as_sent(id, &resp).await
            }
            AnyOutgoingRequest::KeysClaim(r) => {
                let resp = self.claim(conn, r).await?;
                self.machine.mark_request_as_sent(id, &resp).await
            }
            AnyOutgoingRequest::ToDeviceRequest(r) => {
                let resp = self.to_device(conn, r).await?;
                self.machine.mark_request_as_sent(id, &resp).await
            }
            AnyOutgoingRequest::SignatureUpload(r) => {
                let path = format!("{CLIENT_V3}/keys/signatures/upload");
                let body = serde_json::to_value(&r.signed_keys)?;
                let resp: upload_signatures::v3::Response =
                    self.call(conn, Method::POST, &path, &body).await?;
                self.machine.mark_request_as_sent(id, &resp).await
            }
            AnyOutgoingRequest::RoomMessage(r) => {
                let content = serde_json::to_value(&r.content)?;
                let event_type =
                    ruma::events::MessageLikeEventContent::event_type(r.content.as_ref())
                        .to_string();
                let path = format!(
                    "{CLIENT_V3}/rooms/{}/send/{}/{}",
                    enc(r.room_id.as_str()),
                    enc(&event_type),
                    enc(r.txn_id.as_str())
                );
                let resp: send_message_event::v3::Response =
                    self.call(conn, Method::PUT, &path, &content).await?;
                self.machine.mark_request_as_sent(id, &resp).await
            }
        };
        marked.map_err(|e| crypto_err("handling an answer", e))
    }

    async fn claim(
        &self,
        conn: &Link<'_>,
        r: &claim_keys::v3::Request,
    ) -> Result<claim_keys::v3::Response> {
        let mut body = json!({ "one_time_keys": r.one_time_keys });
        if let Some(t) = r.timeout {
            body["timeout"] = json!(t.as_millis() as u64);
        }
        let path = format!("{CLIENT_V3}/keys/claim");
        self.call(conn, Method::POST, &path, &body).await
    }

    async fn to_device(
        &self,
        conn: &Link<'_>,
        r: &ToDeviceRequest,
    ) -> Result<send_event_to_device::v3::Response> {
        let path = format!(
            "{CLIENT_V3}/sendToDevice/{}/{}",
            enc(&r.event_type.to_string()),
            enc(r.txn_id.as_str())
        );
        let body = json!({ "messages": r.messages });
        self.call(conn, Method::PUT, &path, &body).await
    }

    /// Hands the transaction's to-device messages for this device, device list changes, key
    /// counts and fallback key types to the machine, then sends what it wants sent (new
    /// one-time keys, key queries).
    pub(crate) async fn receive_transaction(
        &self,
        conn: &Link<'_>,
        fields: &TransactionCrypto,
    ) -> Result<()> {
        let mut to_device: Vec<Raw<AnyToDeviceEvent>> = Vec::new();
        for list in [&fields.to_device, &fields.to_device_msc4203]
            .into_iter()
            .flatten()
        {
            let Some(items) = list.as_array() else {
                tracing::warn!("a transaction's to-device field is not an array");
                continue;
            };
            for item in items {
                let ours = item["to_user_id"].as_str() == Some(self.user_id.as_str())
                    && item["to_device_id"].as_str() == Some(self.device_id.as_str());
                if ours {
                    to_device.push(Raw::new(item)?.cast_unchecked());
                }
            }
        }
        let otk_counts: BTreeMap<OneTimeKeyAlgorithm, UInt> =
            self.own_entry(fields.otk_counts.as_ref(), "one-time key counts");
        let fallback: Option<Vec<OneTimeKeyAlgorithm>> = fields
            .fallback_key_types
            .as_ref()
            .and_then(|v| v.get(self.user_id.as_str()))
            .and_then(|v| v.get(self.device_id.as_str()))
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let device_lists: DeviceLists = fields
            .device_lists
            .as_ref()
            .and_then(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| tracing::warn!(error = %e, "a transaction's device_lists"))
                    .ok()
            })
            .unwrap_or_default();
        let nothing = to_device.is_empty()
            && otk_counts.is_empty()
            && fallback.is_none()
            && device_lists.changed.is_empty()
            && device_lists.left.is_empty();
        if nothing {
            return Ok(());
        }
        let changes = EncryptionSyncChanges {
            to_device_events: to_device,
            changed_devices: &device_lists,
            one_time_keys_counts: &otk_counts,
            unused_fallback_keys: fallback.as_deref(),
            next_batch_token: None,
        };
        self.machine
            .receive_sync_changes(changes, &decryption_settings())
            .await
            .map_err(|e| crypto_err("receiving a transaction's keys", e))?;
        self.send_outgoing_requests(conn).await
    }

    /// `{user: {device: X}}` → this device's X (default when absent or malformed).
    fn own_entry<T: for<'de> Deserialize<'de> + Default>(
        &self,
        field: Option<&Value>,
        what: &str,
    ) -> T {
        let Some(v) = field
            .and_then(|v| v.get(self.user_id.as_str()))
            .and_then(|v| v.get(self.device_id.as_str()))
        else {
            return T::default();
        };
        serde_json::from_value(v.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "a transaction's {what}");
            T::default()
        })
    }

    /// Notes rooms that turned encryption on.
    pub(crate) fn observe(&self, event: &Raw<AnyTimelineEvent>) {
        let is_encryption = event.get_field::<String>("type").ok().flatten().as_deref()
            == Some("m.room.encryption")
            && event
                .get_field::<String>("state_key")
                .ok()
                .flatten()
                .as_deref()
                == Some("");
        if let (true, Ok(Some(room_id))) = (is_encryption, event.get_field("room_id")) {
            self.lock_rooms().insert(room_id);
        }
    }

    fn lock_rooms(&self) -> std::sync::MutexGuard<'_, HashSet<OwnedRoomId>> {
        self.encrypted_rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<(OwnedRoomId, Raw<AnyTimelineEvent>)>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The event as the bot sees it: decrypted when it is an `m.room.encrypted` that
    /// decrypts, marked undecryptable (and kept for a retry) when it does not, else as is.
    pub(crate) async fn process_event(&self, raw: Raw<AnyTimelineEvent>) -> Event {
        self.observe(&raw);
        let ty = raw.get_field::<String>("type").ok().flatten();
        if ty.as_deref() != Some("m.room.encrypted") {
            return Event::new(raw);
        }
        let Ok(Some(room_id)) = raw.get_field::<OwnedRoomId>("room_id") else {
            return Event::with_encryption(
                raw,
                Encryption::Undecryptable {
                    reason: "the event has no room_id".to_owned(),
                },
            );
        };
        self.lock_rooms().insert(room_id.clone());
        match self.decrypt(&raw, &room_id).await {
            Ok(event) => event,
            Err(reason) => {
                let mut pending = self.lock_pending();
                if pending.len() >= MAX_PENDING {
                    pending.remove(0);
                }
                pending.push((room_id, raw.clone()));
                Event::with_encryption(raw, Encryption::Undecryptable { reason })
            }
        }
    }

    async fn decrypt(
        &self,
        raw: &Raw<AnyTimelineEvent>,
        room_id: &RoomId,
    ) -> std::result::Result<Event, String> {
        let encrypted: Raw<EncryptedEvent> = raw.clone().cast_unchecked();
        match self
            .machine
            .decrypt_room_event(&encrypted, room_id, &decryption_settings())
            .await
        {
            Ok(decrypted) => {
                let info = &decrypted.encryption_info;
                Ok(Event::with_encryption(
                    decrypted.event,
                    Encryption::Decrypted {
                        sender_device: info.sender_device.clone(),
                        verified: matches!(
                            info.verification_state,
                            matrix_sdk_common::deserialized_responses::VerificationState::Verified
                        ),
                    },
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The events kept undecryptable that decrypt now (their room key arrived since), removed
    /// from the retry list, oldest first.
    pub(crate) async fn retry_pending(&self) -> Vec<Event> {
        let pending = std::mem::take(&mut *self.lock_pending());
        let mut decrypted = Vec::new();
        let mut still = Vec::new();
        for (room_id, raw) in pending {
            match self.decrypt(&raw, &room_id).await {
                Ok(event) => decrypted.push(event),
                Err(_) => still.push((room_id, raw)),
            }
        }
        let mut pending = self.lock_pending();
        // Events that failed meanwhile (none while transactions are delivered one at a
        // time) come after the older ones.
        still.append(&mut pending);
        *pending = still;
        decrypted
    }

    /// Whether the room has `m.room.encryption`: remembered once seen, else asked of the
    /// homeserver. An error (other than "no such state") is an error, never "not encrypted",
    /// so a message is never sent in the clear by mistake.
    pub(crate) async fn is_encrypted(&self, conn: &Link<'_>, room_id: &RoomId) -> Result<bool> {
        if self.lock_rooms().contains(room_id) {
            return Ok(true);
        }
        let path = format!(
            "{CLIENT_V3}/rooms/{}/state/m.room.encryption/",
            enc(room_id.as_str())
        );
        match self.http(conn, Method::GET, &path, None, false).await {
            Ok(_) => {
                self.lock_rooms().insert(room_id.to_owned());
                Ok(true)
            }
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Encrypts `content` for the room's joined members' devices (sharing the Megolm session
    /// with those that lack it) and sends it as `m.room.encrypted`; returns the event id.
    pub(crate) async fn send_encrypted(
        &self,
        conn: &Link<'_>,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
    ) -> Result<ruma::OwnedEventId> {
        let _guard = self.send_lock.lock().await;
        let path = format!("{CLIENT_V3}/rooms/{}/joined_members", enc(room_id.as_str()));
        let (_, bytes) = self.http(conn, Method::GET, &path, None, false).await?;
        let joined: Value = serde_json::from_slice(&bytes)?;
        let members: Vec<OwnedUserId> = joined["joined"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| UserId::parse(k).ok()).collect())
            .unwrap_or_default();
        if members.is_empty() {
            return Err(Error::invalid(format!(
                "no joined members in {room_id} to encrypt for"
            )));
        }
        self.machine
            .update_tracked_users(members.iter().map(AsRef::as_ref))
            .await
            .map_err(|e| crypto_err("tracking the room's members", e))?;
        // Key queries of the members (and anything else queued).
        self.send_outgoing_locked(conn).await?;
        if let Some((id, request)) = self
            .machine
            .get_missing_sessions(members.iter().map(AsRef::as_ref))
            .await
            .map_err(|e| crypto_err("finding missing Olm sessions", e))?
        {
            let resp = self.claim(conn, &request).await?;
            self.machine
                .mark_request_as_sent(&id, &resp)
                .await
                .map_err(|e| crypto_err("creating Olm sessions", e))?;
        }
        let shares = self
            .machine
            .share_room_key(
                room_id,
                members.iter().map(AsRef::as_ref),
                EncryptionSettings::default(),
            )
            .await
            .map_err(|e| crypto_err("sharing the room key", e))?;
        for share in shares {
            let resp = self.to_device(conn, &share).await?;
            self.machine
                .mark_request_as_sent(&share.txn_id, &resp)
                .await
                .map_err(|e| crypto_err("marking the room key shared", e))?;
        }
        let plain: Raw<AnyMessageLikeEventContent> = Raw::new(content)?.cast_unchecked();
        let encrypted = self
            .machine
            .encrypt_room_event_raw(room_id, event_type, &plain)
            .await
            .map_err(|e| crypto_err("encrypting", e))?;
        let path = format!(
            "{CLIENT_V3}/rooms/{}/send/m.room.encrypted/{}",
            enc(room_id.as_str()),
            enc(&txn_id())
        );
        let body = serde_json::to_value(&encrypted.content)?;
        let resp: send_message_event::v3::Response =
            self.call(conn, Method::PUT, &path, &body).await?;
        Ok(resp.event_id)
    }
}
