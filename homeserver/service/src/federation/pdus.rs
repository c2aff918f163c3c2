//! PDUs from other servers: every one goes through the same checks — format, content hash
//! (redacted and kept when it fails), signatures of the servers that must sign it, its auth
//! events (fetched when missing), its `prev_events` (fetched with `/get_missing_events`, or the
//! state at a gap taken from `/state`) — before `Rooms::place_remote` puts it in the DAG.
//!
//! Also incoming transactions (`/send`) and joins over federation, both sides.
//!
//! Spec: https://spec.matrix.org/v1.19/server-server-api/#pdus

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use paracord_core::{
    config::SUPPORTED_ROOM_VERSIONS, time::now_ms, Config, Error, ErrorKind, Result,
};
use paracord_storage::{Batch, Db, Table};
use ruma::{
    api::{
        federation::{
            authorization::get_event_authorization,
            backfill::get_backfill,
            event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
            membership::{
                create_invite, create_join_event, create_knock_event, create_leave_event,
                prepare_join_event, prepare_knock_event, prepare_leave_event, RawStrippedState,
            },
            space::get_hierarchy,
            transactions::{edu::Edu, send_transaction_message},
        },
        path_builder::SinglePath,
        OutgoingRequest,
    },
    canonical_json::CanonicalJsonObject,
    events::room::member::MembershipState,
    events::TimelineEventType,
    serde::{Base64, Raw},
    signatures::{
        required_server_signatures_to_verify_event, verify_event, PublicKeyMap, PublicKeySet,
        Verified,
    },
    state_res::check_pdu_format,
    CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UInt, UserId,
};
use serde_json::{
    json,
    value::{to_raw_value, RawValue},
    Value,
};
use tracing::{debug, info, warn};

use crate::{
    federation::{
        client::FederationClient,
        client::FederationResponse,
        request::{remote_error, send_signed, typed_answer, typed_http_request},
    },
    keys::ServerKeys,
    rooms::{
        membership::membership_of,
        pdu::{to_canonical_object, Pdu, MAX_PDU_BYTES},
        remote::{check_auth_with, Checked, Placed},
        Rooms,
    },
    server_keys::RemoteKeys,
};

paracord_storage::key! {
    /// The key of `origintxn_response` (the answer to an incoming transaction):
    /// `origin 0xFF txn_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct TransactionKey<'a> {
        origin: str,
        txn_id: last_str,
    }
}

/// A PDU whose format is checked and whose signers' keys are at hand.
pub(crate) struct Prepared {
    pub(crate) obj: CanonicalJsonObject,
    pub(crate) event_id: OwnedEventId,
    pub(crate) keys: PublicKeyMap,
    pub(crate) rules: ruma::room_version_rules::RoomVersionRules,
}

/// A PDU whose format and size are checked, with its event id and the servers that must have
/// signed it.
pub(crate) struct Formatted {
    pub(crate) obj: CanonicalJsonObject,
    pub(crate) event_id: OwnedEventId,
    pub(crate) rules: ruma::room_version_rules::RoomVersionRules,
    pub(crate) servers: BTreeSet<OwnedServerName>,
}

/// The checks of a PDU of a room version that need nothing but the PDU: canonical JSON, size,
/// the version's event format, the event id, and which servers must have signed it.
pub(crate) fn check_format(version: &str, value: &Value) -> std::result::Result<Formatted, String> {
    let rules = version_rules(version)?;
    let mut obj = to_canonical_object(value.clone()).map_err(|e| e.to_string())?;
    obj.remove("unsigned");
    // Checked here too for a readable reason (ruma's message leaves its limit unfilled).
    let size = serde_json::to_vec(&obj).map_err(|e| e.to_string())?.len();
    if size > MAX_PDU_BYTES {
        return Err(format!(
            "the PDU is {size} bytes of canonical JSON, more than {MAX_PDU_BYTES}"
        ));
    }
    check_pdu_format(&lenient_state_key(&obj), &rules.event_format)?;
    let event_id = crate::rooms::pdu::event_id_of(&obj, &rules)?;
    let servers = required_server_signatures_to_verify_event(&obj, &rules.signatures)
        .map_err(|e| format!("{event_id}: {e}"))?;
    Ok(Formatted {
        obj,
        event_id,
        rules,
        servers,
    })
}

/// The CPU part of a PDU's checks: signatures, content hash (a mismatch redacts it), parsing,
/// and that it belongs to `room_id`.
pub(crate) fn finish_pdu(
    p: Prepared,
    room_id: Option<&RoomId>,
) -> std::result::Result<Checked, String> {
    let Prepared {
        mut obj,
        event_id,
        keys,
        rules,
    } = p;
    match verify_event(&keys, &obj, &rules) {
        Ok(Verified::All) => {}
        Ok(Verified::Signatures) => {
            info!(%event_id, "content hash mismatch: the event is kept redacted");
            obj = ruma::canonical_json::redact(obj, &rules.redaction, None)
                .map_err(|e| format!("{event_id}: cannot redact: {e}"))?;
        }
        Err(e) => return Err(format!("{event_id}: bad signature: {e}")),
    }
    let bytes = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
    let pdu = Pdu::from_json(event_id.clone(), &bytes).map_err(|e| e.to_string())?;
    if let Some(room_id) = room_id {
        let in_room = match &pdu.room_id {
            Some(r) => r == room_id,
            // A v12 create event names no room: its id is the room's.
            None => room_id.as_str()[1..] == event_id.as_str()[1..],
        };
        if !in_room {
            return Err(format!("{event_id} belongs to another room"));
        }
    }
    Ok(Checked {
        event_id,
        pdu,
        bytes,
    })
}

/// [`finish_pdu`] for many PDUs, split over the available cores.
fn finish_all(
    prepared: Vec<Prepared>,
    room_id: &RoomId,
) -> Vec<std::result::Result<Checked, String>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    if threads == 1 || prepared.len() < 64 {
        return prepared
            .into_iter()
            .map(|p| finish_pdu(p, Some(room_id)))
            .collect();
    }
    let per = prepared.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Prepared>> = Vec::new();
    let mut rest = prepared.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(per).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|p| finish_pdu(p, Some(room_id)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("a verification thread failed".to_owned())])
            })
            .collect()
    })
}

/// Why a remote PDU was not taken into the room.
#[derive(Debug)]
pub enum NotTaken {
    /// Checked and kept as rejected (the auth rules refuse it): handled as the spec says,
    /// so not an error in the answer to its transaction (as with other servers).
    Rejected(String),
    /// Not processed: it failed its checks, or what it needs could not be had.
    Failed(String),
}

impl std::fmt::Display for NotTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(r) => write!(f, "rejected: {r}"),
            Self::Failed(e) => f.write_str(e),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> NotTaken {
    NotTaken::Failed(e.to_string())
}

/// A membership event made and sent through another server.
struct Handshake {
    event_id: OwnedEventId,
    version: String,
    /// The signed event as sent.
    body: Value,
    /// The server's answer to `send_*`.
    answer: Sent,
}

/// A server's answer to `send_join`, `send_knock` or `send_leave`.
enum Sent {
    Join(create_join_event::v2::RoomState),
    Knock(Vec<RawStrippedState>),
    Leave,
}

/// Stripped state (type, state key, sender, content) of events, full PDUs or already
/// stripped, as clients see an invite's or a knock's room state. The create event stays
/// whole (MSC4311: clients check the room's version and creators with it), in client form.
fn stripped(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"].is_string())
        .map(|e| {
            if e["type"] == "m.room.create" && e.get("origin_server_ts").is_some() {
                return crate::rooms::pdu::client_form(e);
            }
            json!({
                "type": e["type"], "state_key": e["state_key"], "sender": e["sender"],
                "content": e["content"],
            })
        })
        .collect()
}

/// Most PDUs and EDUs an incoming transaction may carry.
const MAX_TXN_PDUS: usize = 50;
const MAX_TXN_EDUS: usize = 100;
/// How many missing events one `/get_missing_events` asks for.
const MISSING_EVENTS_LIMIT: u64 = 20;
/// Most unknown events of a `/state_ids` answer fetched one by one (else `/state`).
const MAX_EVENTS_ONE_BY_ONE: usize = 100;
/// Most events a `/state_ids` answer may name.
const MAX_STATE_IDS: usize = 20_000;
/// Most auth events fetched one by one for one event.
const MAX_AUTH_FETCHES: usize = 200;

pub struct Pdus {
    edus: super::edus::Edus,
    rooms: Arc<Rooms>,
    remote_keys: Arc<RemoteKeys>,
    client: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    config: Arc<Config>,
    /// The database, for the answers to incoming transactions (`origintxn_response`, this
    /// module's table).
    db: Arc<Db>,
    /// This service itself, for work it starts in the background.
    me: std::sync::Weak<Pdus>,
    /// One transaction at a time per origin: a server's transactions are taken in the order
    /// they come, and one server cannot have this one process many of its transactions (each
    /// possibly fetching missing events) at once.
    txn_locks: parking_lot::Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
}

fn version_rules(
    version: &str,
) -> std::result::Result<ruma::room_version_rules::RoomVersionRules, String> {
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(format!("room version {version} is not supported"));
    }
    RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| format!("room version {version} has no rules"))
}

/// What fetching for one incoming transaction may still cost (missing events, state, auth
/// events): bytes of answers and time. Set while a transaction is taken in; requests made
/// outside one (joins, a user's own actions) have no such budget.
#[derive(Debug)]
struct FetchBudget {
    bytes_left: usize,
    deadline: tokio::time::Instant,
}

impl FetchBudget {
    /// Refuses a request once the time or the bytes are spent.
    fn check(&self) -> Result<()> {
        if self.bytes_left == 0 || tokio::time::Instant::now() >= self.deadline {
            return Err(Self::spent());
        }
        Ok(())
    }

    fn spent() -> Error {
        Error::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::LimitExceeded {
                retry_after_ms: 1000,
            },
            "the budget for fetching what this transaction is missing is spent",
        )
    }

    /// Takes `bytes` off the budget.
    fn charge(&mut self, bytes: usize) {
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
    }
}

tokio::task_local! {
    static FETCH_BUDGET: std::cell::RefCell<FetchBudget>;
}

/// PDUs of a typed answer as JSON values (a PDU that is not JSON cannot come: ruma read it).
fn raw_values(list: Vec<Box<RawValue>>) -> Vec<Value> {
    list.iter()
        .filter_map(|raw| serde_json::from_str(raw.get()).ok())
        .collect()
}

/// The room a PDU of a transaction names.
pub(crate) fn room_of(value: &Value) -> Option<OwnedRoomId> {
    value
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok())
}

/// The server of a PDU's sender.
pub(crate) fn sender_server(value: &Value) -> Option<OwnedServerName> {
    value
        .get("sender")
        .and_then(Value::as_str)
        .and_then(|s| <&UserId>::try_from(s).ok())
        .map(|u| u.server_name().to_owned())
}

/// The PDUs and EDUs of a transaction's body, at most [`MAX_TXN_PDUS`] and [`MAX_TXN_EDUS`].
pub(crate) fn transaction_items(
    pdus: &[Box<RawValue>],
    edus: &[Raw<Edu>],
) -> Result<(Vec<Value>, Vec<Value>)> {
    if pdus.len() > MAX_TXN_PDUS || edus.len() > MAX_TXN_EDUS {
        return Err(Error::bad_json(format!(
            "a transaction carries at most {MAX_TXN_PDUS} PDUs and {MAX_TXN_EDUS} EDUs"
        )));
    }
    let value = |raw: &RawValue| -> Result<Value> {
        serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("bad PDU: {e}")))
    };
    let pdus = pdus.iter().map(|p| value(p)).collect::<Result<_>>()?;
    let edus = edus
        .iter()
        .map(|e| value(e.json()))
        .collect::<Result<_>>()?;
    Ok((pdus, edus))
}

/// The per-PDU answers of a transaction as they are kept (the wire form: `{}` or
/// `{"error": …}` per event id), read back.
fn stored_answer(bytes: &[u8]) -> Result<TransactionAnswer> {
    let stored: Value = serde_json::from_slice(bytes)?;
    Ok(stored
        .get("pdus")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(id, outcome)| {
            let id = OwnedEventId::try_from(id.as_str()).ok()?;
            let outcome = match outcome.get("error") {
                Some(e) => Err(e.as_str().map_or_else(|| e.to_string(), str::to_owned)),
                None => Ok(()),
            };
            Some((id, outcome))
        })
        .collect())
}

/// The per-PDU answers of a transaction in the form they are kept in.
fn stored_form(answer: &TransactionAnswer) -> Value {
    let pdus: serde_json::Map<String, Value> = answer
        .iter()
        .map(|(id, outcome)| {
            let entry = match outcome {
                Ok(()) => json!({}),
                Err(e) => json!({ "error": e }),
            };
            (id.to_string(), entry)
        })
        .collect();
    json!({ "pdus": pdus })
}

/// A transaction must name as its origin the server that signed it.
pub fn check_transaction_origin(
    txn: &send_transaction_message::v1::Request,
    origin: &ServerName,
) -> Result<()> {
    if txn.origin != origin {
        return Err(Error::forbidden(format!(
            "the transaction names {} as its origin but is signed by {origin}",
            txn.origin
        )));
    }
    Ok(())
}

/// What `send_join` / `send_leave` / `send_knock` answer.
pub enum MembershipAnswer {
    /// A join: the room's state before it and the auth chain.
    Join(JoinAnswer),
    /// A leave: nothing.
    Leave,
    /// A knock: the room's stripped state, as full PDUs.
    Knock(Vec<Box<RawValue>>),
}

/// The answer to `send_join` (v2), as the spec has it. (ruma's `RoomState` lacks `origin`,
/// which the spec requires.) PDUs go out as stored, never parsed into a JSON tree and
/// printed again.
#[derive(Debug, serde::Serialize)]
pub struct JoinAnswer {
    /// This server, the resident server answering.
    pub origin: String,
    /// The room's state before the join, full PDUs.
    pub state: Vec<Box<RawValue>>,
    /// The auth chain of the state and of the join, full PDUs.
    pub auth_chain: Vec<Box<RawValue>>,
    /// Always `false`: the whole state is sent.
    pub members_omitted: bool,
    /// The servers in the room.
    pub servers_in_room: Vec<String>,
    /// The join event as this server signed it too, for a restricted join it authorised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<RawValue>>,
}

/// The answer to a transaction: per PDU (by event id) whether it was taken, or why not.
pub type TransactionAnswer = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

impl Pdus {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        edus: super::edus::Edus,
        rooms: Arc<Rooms>,
        remote_keys: Arc<RemoteKeys>,
        client: Arc<FederationClient>,
        keys: Arc<ServerKeys>,
        config: Arc<Config>,
        db: Arc<Db>,
        me: std::sync::Weak<Pdus>,
    ) -> Self {
        Self {
            edus,
            rooms,
            remote_keys,
            client,
            keys,
            config,
            db,
            me,
            txn_locks: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The lock that serializes `origin`'s transactions.
    fn txn_lock(&self, origin: &ServerName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.txn_locks.lock();
        if locks.len() > 10_000 {
            // Locks nobody holds or waits for can go.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(origin.to_owned()).or_default().clone()
    }

    fn own_name(&self) -> &str {
        self.config.server_name.as_str()
    }

    /// Sends the ruma `request` to `destination` (signed, within the fetch budget, a 403 a
    /// refusal) and reads the endpoint's typed answer.
    async fn ask_typed<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let request =
            typed_http_request(self.keys.keypair(), self.own_name(), destination, request)?;
        let response = self.fetch(destination, request).await?;
        typed_answer(destination, response)
    }

    /// Sends the signed `request` within the transaction's fetch budget; a refusal (403) is
    /// our 403, any other error answer [`remote_error`]'s. Only a success comes back.
    async fn fetch(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
    ) -> Result<FederationResponse> {
        FETCH_BUDGET
            .try_with(|b| b.borrow().check())
            .unwrap_or(Ok(()))?;
        let request = send_signed(&self.client, destination, request);
        // A request in flight when the budget's time runs out ends there: a peer that accepts
        // the connection and never answers holds the transaction no longer than its budget.
        let response = match FETCH_BUDGET.try_with(|b| b.borrow().deadline) {
            Ok(deadline) => tokio::time::timeout_at(deadline, request)
                .await
                .map_err(|_| FetchBudget::spent())??,
            Err(_) => request.await?,
        };
        let _ = FETCH_BUDGET.try_with(|b| {
            // The answer's size as it came.
            b.borrow_mut().charge(response.body.len());
        });
        if response.status.is_success() {
            return Ok(response);
        }
        let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status == http::StatusCode::FORBIDDEN {
            // The resident server refused: that is the answer, not a gateway failure.
            let message = json
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("forbidden");
            return Err(Error::forbidden(format!("{destination}: {message}")));
        }
        Err(remote_error(destination, response.status, &json))
    }

    // ----- checks of one PDU -----

    /// Format, event id, signatures and content hash of a PDU of a room version. A PDU whose
    /// content hash does not match is redacted and kept.
    pub async fn check_pdu(
        &self,
        version: &str,
        value: &Value,
        room_id: Option<&RoomId>,
    ) -> std::result::Result<Checked, String> {
        finish_pdu(self.prepare_pdu(version, value).await?, room_id)
    }

    /// The part of the checks that reads: format, size, event id and the keys of the servers
    /// that must have signed (fetched when not cached). [`finish_pdu`] does the CPU work.
    async fn prepare_pdu(
        &self,
        version: &str,
        value: &Value,
    ) -> std::result::Result<Prepared, String> {
        let Formatted {
            obj,
            event_id,
            rules,
            servers,
        } = check_format(version, value)?;
        let ts = match obj.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => 0,
        };
        let mut keys = PublicKeyMap::new();
        for server in servers {
            let ids: Vec<String> = match obj.get("signatures") {
                Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(by_key)) => by_key.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut set = PublicKeySet::new();
            for id in ids {
                let key = self
                    .remote_keys
                    .key(server.as_str(), &id, ts)
                    .await
                    .map_err(|e| format!("{event_id}: the keys of {server}: {e}"))?;
                if let Some(k) = key.and_then(|k| Base64::parse(k).ok()) {
                    set.insert(id, k);
                }
            }
            if set.is_empty() {
                return Err(format!(
                    "{event_id}: no valid signing key of {server} signed it"
                ));
            }
            keys.insert(server.to_string(), set);
        }
        Ok(Prepared {
            obj,
            event_id,
            keys,
            rules,
        })
    }

    /// Checks a bundle of events (a room's state and auth chain, an auth chain): each PDU's
    /// signatures and hash, then each against its auth events in depth order, with the bundle
    /// itself as where auth events are found. Events that fail are left out.
    pub async fn check_bundle(
        &self,
        version: &str,
        room_id: &RoomId,
        values: &[Value],
    ) -> Result<Vec<Checked>> {
        Ok(self
            .check_bundle_tagged(version, room_id, values)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// [`Pdus::check_bundle`], each event with its index in `values` (the last one when it
    /// is there more than once).
    async fn check_bundle_tagged(
        &self,
        version: &str,
        room_id: &RoomId,
        values: &[Value],
    ) -> Result<Vec<(usize, Checked)>> {
        let rules = version_rules(version).map_err(Error::bad_json)?;
        let mut prepared: Vec<Prepared> = Vec::with_capacity(values.len());
        let mut index: HashMap<OwnedEventId, usize> = HashMap::new();
        for (i, v) in values.iter().enumerate() {
            match self.prepare_pdu(version, v).await {
                Ok(p) => {
                    if index.insert(p.event_id.clone(), i).is_none() {
                        prepared.push(p);
                    }
                }
                Err(e) => warn!(%room_id, "dropped an event of a bundle: {e}"),
            }
        }
        let t0 = std::time::Instant::now();
        // Signatures and hashes of a large bundle (a big room's state) on every core.
        let room = room_id.to_owned();
        let results = tokio::task::spawn_blocking(move || finish_all(prepared, &room))
            .await
            .map_err(Error::internal)?;
        let t1 = std::time::Instant::now();
        let mut checked = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(c) => checked.push(c),
                Err(e) => warn!(%room_id, "dropped an event of a bundle: {e}"),
            }
        }
        checked.sort_by_key(|c| u64::from(c.pdu.depth));
        let mut good: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut out = Vec::with_capacity(checked.len());
        for c in checked {
            let lookup = |id: &EventId| {
                good.get(id)
                    .cloned()
                    .or_else(|| self.rooms.pdu(id).ok().flatten())
            };
            match check_auth_with(&rules, &c.pdu, lookup) {
                Ok(()) => {
                    good.insert(c.event_id.clone(), c.pdu.clone());
                    let i = index.get(&c.event_id).copied().unwrap_or_default();
                    out.push((i, c));
                }
                Err(e) => {
                    warn!(%room_id, event_id = %c.event_id, "dropped an event of a bundle: {e}")
                }
            }
        }
        debug!(
            events = values.len(),
            signatures_ms = (t1 - t0).as_millis() as u64,
            auth_ms = t1.elapsed().as_millis() as u64,
            "checked a bundle of events"
        );
        Ok(out)
    }

    /// Fetches the auth events of `event` that are not stored, from `from`, and stores the
    /// ones that pass as outliers.
    async fn fetch_auth_events(
        &self,
        from: &ServerName,
        room_id: &RoomId,
        version: &str,
        event: &Checked,
    ) -> Result<()> {
        let mut missing = Vec::new();
        for id in &event.pdu.auth_events {
            if !self.rooms.knows_event(id)? {
                missing.push(id.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        debug!(event_id = %event.event_id, missing = missing.len(), "fetching auth events");
        let request =
            get_event_authorization::v1::Request::new(room_id.to_owned(), event.event_id.clone());
        let chain = match self.ask_typed(from, request).await {
            Ok(v) => raw_values(v.auth_chain),
            Err(e) => {
                // Ask for the events one by one instead.
                debug!("event_auth from {from} failed ({e}); fetching one by one");
                let mut got = Vec::new();
                let mut todo = missing;
                while let Some(id) = todo.pop() {
                    if got.len() >= MAX_AUTH_FETCHES {
                        break;
                    }
                    if let Ok(v) = self.fetch_event_json(from, &id).await {
                        for a in crate::rooms::pdu::ref_ids(&v["auth_events"]) {
                            if !self.rooms.knows_event(&a)? {
                                todo.push(a);
                            }
                        }
                        got.push(v);
                    }
                }
                got
            }
        };
        let good = self.check_bundle(version, room_id, &chain).await?;
        self.rooms.store_outliers(room_id, &good)
    }

    /// The state at `prev` from `from` with `/state_ids`, fetching the events not stored here
    /// one by one (`/event`) and storing those that pass their checks as outliers: the ids of
    /// the state events now stored. (Servers answer `/state_ids` more cheaply than `/state`,
    /// and most of the state is usually known already.)
    async fn state_ids_at(
        &self,
        from: &ServerName,
        room_id: &RoomId,
        version: &str,
        prev: &EventId,
    ) -> Result<Vec<OwnedEventId>> {
        let request = get_room_state_ids::v1::Request::new(prev.to_owned(), room_id.to_owned());
        let v = self.ask_typed(from, request).await?;
        let (state, auth_chain) = (v.pdu_ids, v.auth_chain_ids);
        if state.len() + auth_chain.len() > MAX_STATE_IDS {
            return Err(Error::bad_json(format!(
                "{from} named more than {MAX_STATE_IDS} events"
            )));
        }
        let mut unknown = Vec::new();
        for id in auth_chain.iter().chain(&state) {
            if !self.rooms.knows_event(id)? {
                unknown.push(id.clone());
            }
        }
        if unknown.len() > MAX_EVENTS_ONE_BY_ONE {
            // Cheaper as one `/state` than as that many `/event`s.
            return Err(Error::bad_json(format!(
                "{} events of the state are unknown here",
                unknown.len()
            )));
        }
        let mut bundle = Vec::new();
        for id in &unknown {
            match self.fetch_event_json(from, id).await {
                Ok(v) => bundle.push(v),
                Err(e) => debug!(event_id = %id, "a state event could not be fetched: {e}"),
            }
        }
        let good = self.check_bundle(version, room_id, &bundle).await?;
        self.rooms.store_outliers(room_id, &good)?;
        let mut out = Vec::new();
        for id in state {
            if self.rooms.short_id(&id)?.is_some() && self.rooms.rejection(&id)?.is_none() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The state at `prev` from `from` with `/state` (events and auth chain in full), stored
    /// as outliers: the ids of the state events that passed their checks.
    async fn state_at(
        &self,
        from: &ServerName,
        room_id: &RoomId,
        version: &str,
        prev: &EventId,
    ) -> Result<Vec<OwnedEventId>> {
        let request = get_room_state::v1::Request::new(prev.to_owned(), room_id.to_owned());
        let v = self.ask_typed(from, request).await?;
        let pdus = raw_values(v.pdus);
        let mut bundle = raw_values(v.auth_chain);
        bundle.extend(pdus.iter().cloned());
        let good = self.check_bundle(version, room_id, &bundle).await?;
        self.rooms.store_outliers(room_id, &good)?;
        let good_ids: std::collections::HashSet<_> = good.iter().map(|c| &c.event_id).collect();
        Ok(pdus
            .into_iter()
            .filter_map(|p| event_id_of(&to_canonical_object(p).ok()?, version))
            .filter(|id| good_ids.contains(id))
            .collect())
    }

    async fn fetch_event_json(&self, from: &ServerName, id: &EventId) -> Result<Value> {
        let v = self
            .ask_typed(from, get_event::v1::Request::new(id.to_owned()))
            .await?;
        raw_values(vec![v.pdu])
            .into_iter()
            .next()
            .ok_or_else(|| Error::not_found(format!("{from} did not return {id}")))
    }

    /// Takes the state before a `prev_event` we lack from `from` (`/state`) and stores the
    /// event with it, out of the timeline, so that later events can build on it.
    async fn fill_gap(
        &self,
        from: &ServerName,
        room_id: &RoomId,
        version: &str,
        prev: &EventId,
    ) -> Result<()> {
        debug!(%room_id, %prev, server = %from, "filling a gap with the state at a prev_event");
        let state_ids = match self.state_ids_at(from, room_id, version, prev).await {
            Ok(ids) => ids,
            Err(e) => {
                debug!(%room_id, "state_ids from {from} failed ({e}); asking for /state");
                self.state_at(from, room_id, version, prev).await?
            }
        };
        let raw = self.fetch_event_json(from, prev).await?;
        let event = self
            .check_pdu(version, &raw, Some(room_id))
            .await
            .map_err(Error::bad_json)?;
        self.fetch_auth_events(from, room_id, version, &event)
            .await?;
        // A rejected event fills the gap too: it is stored with the state at it.
        if let Placed::Rejected(reason) = self
            .rooms
            .place_with_state(room_id, event, &state_ids)
            .await?
        {
            debug!(%room_id, %prev, "the event at a gap is rejected: {reason}");
        }
        Ok(())
    }

    /// The whole pipeline for one PDU of a room this server is in. `Err` explains why the
    /// PDU was not accepted (for the transaction's answer).
    pub async fn receive_pdu(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        value: &Value,
    ) -> std::result::Result<(), NotTaken> {
        let room = self
            .rooms
            .room(room_id)
            .map_err(failed)?
            .ok_or_else(|| failed(format!("this server is not in {room_id}")))?;
        let event = self
            .check_pdu(&room.version, value, Some(room_id))
            .await
            .map_err(NotTaken::Failed)?;
        self.receive_checked(origin, room_id, &room.version, event, true)
            .await
    }

    async fn receive_checked(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &str,
        event: Checked,
        fetch_missing: bool,
    ) -> std::result::Result<(), NotTaken> {
        // An outlier (fetched as an auth event, or sent as state at a join) arriving as a room
        // event is placed now.
        if self.rooms.is_placed(&event.event_id).map_err(failed)? {
            return Ok(());
        }
        // Missing prev_events first (`/get_missing_events` unless this is one of its answers,
        // then the state at what is still missing): the state they bring may hold the auth
        // events this event names.
        let mut filled = false;
        if !self.missing_prevs(&event).map_err(failed)?.is_empty() {
            // Fetching costs this server work and the room's history: only for a sender who
            // could be in the room, through a server that is.
            if fetch_missing {
                self.could_be_in_room(origin, room_id, &event)
                    .map_err(failed)?;
            }
            filled = true;
            self.fill_missing(origin, room_id, version, &event, fetch_missing)
                .await?;
        }
        self.fetch_auth_events(origin, room_id, version, &event)
            .await
            .map_err(failed)?;
        loop {
            match self
                .rooms
                .place_remote(room_id, event.clone())
                .await
                .map_err(failed)?
            {
                Placed::Accepted(_) | Placed::Known => return Ok(()),
                Placed::SoftFailed => return Ok(()),
                Placed::Rejected(reason) => return Err(NotTaken::Rejected(reason)),
                Placed::MissingState(prevs) => {
                    if filled {
                        return Err(failed(format!(
                            "the state after {} prev_events could not be found",
                            prevs.len()
                        )));
                    }
                    filled = true;
                    self.fill_missing(origin, room_id, version, &event, fetch_missing)
                        .await?;
                }
            }
        }
    }

    /// A check that costs nothing but reads of the current state, made before fetching
    /// anything for a pushed event: its sender must have some membership in the room (or the
    /// event is their own membership), and the server pushing it must have a member there.
    fn could_be_in_room(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event: &Checked,
    ) -> Result<()> {
        let state = self.rooms.current_state(room_id)?;
        let sender = &event.pdu.sender;
        let own_membership = event.pdu.kind.to_string() == "m.room.member"
            && event.pdu.state_key.as_deref() == Some(sender.as_str());
        let sender_known = own_membership || self.rooms.membership_in(&state, sender)?.is_some();
        let origin_in_room = self
            .rooms
            .servers_in_room(room_id)?
            .iter()
            .any(|s| s.as_str() == origin.as_str());
        if !sender_known || !origin_in_room {
            return Err(Error::forbidden(format!(
                "{sender} could not be in {room_id} as far as this server knows, through \
                 {origin}: its missing events are not fetched"
            )));
        }
        Ok(())
    }

    /// The `prev_events` of an event that are not placed here (and not rejected without
    /// state).
    fn missing_prevs(&self, event: &Checked) -> Result<Vec<OwnedEventId>> {
        let mut out = Vec::new();
        for prev in &event.pdu.prev_events {
            if !self.rooms.is_placed(prev)? && self.rooms.rejection(prev)?.is_none() {
                out.push(prev.clone());
            }
        }
        Ok(out)
    }

    /// Takes in what lies between the room and `event`. An event pushed to this server
    /// (`pushed`) gets its missing events with `/get_missing_events`, and is refused if some
    /// `prev_events` are still missing then: its sender has them, and taking its word for the
    /// state there would let it make the room's state whatever it likes. An event pulled in
    /// (an answer to `/get_missing_events`) gets the state at its missing `prev_events`
    /// (`/state_ids`) instead: that is where a long gap is bridged.
    async fn fill_missing(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &str,
        event: &Checked,
        pushed: bool,
    ) -> std::result::Result<(), NotTaken> {
        if pushed {
            if let Err(e) = self
                .fetch_missing_events(origin, room_id, version, event)
                .await
            {
                if matches!(e.kind(), Some(ErrorKind::LimitExceeded { .. })) {
                    return Err(failed(e));
                }
                debug!(%room_id, "get_missing_events from {origin} failed: {e}");
            }
            let still = self.missing_prevs(event).map_err(failed)?;
            if !still.is_empty() {
                return Err(failed(format!(
                    "{} prev_events of the event could not be fetched from its sender",
                    still.len()
                )));
            }
            return Ok(());
        }
        for prev in self.missing_prevs(event).map_err(failed)? {
            if let Err(e) = self.fill_gap(origin, room_id, version, &prev).await {
                return Err(failed(format!("cannot fill the gap at {prev}: {e}")));
            }
        }
        Ok(())
    }

    /// Asks `origin` for the events between this server's extremities and `event`, and takes
    /// them in, oldest first; those it cannot place are left for [`Pdus::fill_gap`].
    async fn fetch_missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &str,
        event: &Checked,
    ) -> Result<()> {
        let room = self.rooms.room_or_404(room_id)?;
        // Nothing older than this server's timeline: that is history from before it joined,
        // which would otherwise come back as "missing" events.
        let min_depth = self.rooms.first_timeline_depth(room_id)?.unwrap_or(0);
        let mut request = get_missing_events::v1::Request::new(
            room_id.to_owned(),
            room.extremities.clone(),
            vec![event.event_id.clone()],
        );
        request.limit = UInt::new_saturating(MISSING_EVENTS_LIMIT);
        request.min_depth = UInt::new_saturating(min_depth);
        let v = self.ask_typed(origin, request).await?;
        let mut events = Vec::new();
        for raw in raw_values(v.events) {
            match self.check_pdu(version, &raw, Some(room_id)).await {
                Ok(c) => events.push(c),
                Err(e) => warn!(%room_id, "a missing event failed its checks: {e}"),
            }
        }
        events.sort_by_key(|c| u64::from(c.pdu.depth));
        debug!(%room_id, %origin, count = events.len(), "took missing events");
        for e in events {
            let id = e.event_id.clone();
            // No further fetching from here: what is still missing gets its state from /state.
            if let Err(err) =
                Box::pin(self.receive_checked(origin, room_id, version, e, false)).await
            {
                debug!(event_id = %id, "a missing event was not placed: {err}");
            }
        }
        Ok(())
    }

    // ----- transactions -----

    /// `PUT /send/{txnId}` from `origin` (the server that signed the request, which the
    /// transaction must name as its own): every PDU through the pipeline (one failing does
    /// not fail the others), EDUs handed to `edus`; the answer is remembered per origin and
    /// transaction id.
    pub async fn transaction(
        &self,
        origin: &ServerName,
        txn: &send_transaction_message::v1::Request,
    ) -> Result<TransactionAnswer> {
        check_transaction_origin(txn, origin)?;
        let txn_id = txn.transaction_id.as_str();
        let lock = self.txn_lock(origin);
        let _serial = lock.lock().await;
        let key = TransactionKey {
            origin: origin.as_str(),
            txn_id,
        }
        .encode();
        if let Some(done) = self.db.get(Table::OrigintxnResponse, &key)? {
            return stored_answer(&done);
        }
        let (pdus, edus) = transaction_items(&txn.pdus, &txn.edus)?;
        let budget = FetchBudget {
            bytes_left: self.config.federation_fetch_budget_bytes,
            deadline: tokio::time::Instant::now()
                + std::time::Duration::from_millis(self.config.federation_fetch_budget_ms),
        };
        let results = FETCH_BUDGET
            .scope(
                std::cell::RefCell::new(budget),
                self.take_pdus(origin, &pdus),
            )
            .await?;
        for edu in &edus {
            self.edus.handle(origin, edu);
        }
        let mut batch = Batch::new();
        crate::expiry::schedule(
            &mut batch,
            Table::OrigintxnResponse,
            &key,
            now_ms().saturating_add(crate::expiry::TRANSACTION_TTL_MS),
        );
        batch.put(
            Table::OrigintxnResponse,
            key,
            serde_json::to_vec(&stored_form(&results))?,
        );
        self.db.write(batch)?;
        Ok(results)
    }

    /// Takes in the PDUs of a transaction: the per-PDU answers.
    async fn take_pdus(&self, origin: &ServerName, pdus: &[Value]) -> Result<TransactionAnswer> {
        let mut results = TransactionAnswer::new();
        for value in pdus {
            let Some(room_id) = room_of(value) else {
                debug!(%origin, "a PDU without a room id in a transaction");
                continue;
            };
            let Some(room) = self.rooms.room(&room_id)? else {
                match self.end_pending(origin, &room_id, value).await {
                    Ok(event_id) => {
                        results.insert(event_id, Ok(()));
                    }
                    Err(e) => {
                        debug!(%origin, %room_id, "a PDU of a room this server is not in: {e}")
                    }
                }
                continue;
            };
            let event_id = match to_canonical_object(value.clone())
                .ok()
                .and_then(|o| event_id_of(&o, &room.version))
            {
                Some(id) => id,
                None => {
                    debug!(%origin, "a PDU whose event id cannot be computed");
                    continue;
                }
            };
            // Both the server sending the PDU and the server of its sender must be admitted.
            let sender_server = sender_server(value);
            let outcome = match self.acl_allows(&room_id, origin).and_then(|()| {
                sender_server
                    .as_deref()
                    .map_or(Ok(()), |s| self.acl_allows(&room_id, s))
            }) {
                Err(e) => Err(NotTaken::Failed(e)),
                Ok(()) => self.receive_pdu(origin, &room_id, value).await,
            };
            if outcome.is_ok() && value.get("type").and_then(Value::as_str) == Some("m.space.child")
            {
                self.follow_new_channel(&room_id, &event_id);
            }
            let entry = match outcome {
                Ok(()) => Ok(()),
                Err(NotTaken::Rejected(r)) => {
                    info!(%origin, %event_id, "PDU rejected: {r}");
                    Ok(())
                }
                Err(NotTaken::Failed(e)) => {
                    info!(%origin, %event_id, "PDU not accepted: {e}");
                    Err(e)
                }
            };
            results.insert(event_id, entry);
        }
        Ok(results)
    }

    /// A PDU of a room this server is not in may still end a local user's pending invite
    /// there: its inviter's leave (or ban) of that user, a rescinded invite. Anything else of
    /// such a room is not taken.
    async fn end_pending(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        value: &Value,
    ) -> std::result::Result<OwnedEventId, String> {
        let target = value
            .get("state_key")
            .and_then(Value::as_str)
            .and_then(|k| <&UserId>::try_from(k).ok())
            .filter(|_| value.get("type").and_then(Value::as_str) == Some("m.room.member"))
            .ok_or("not a membership event")?;
        let record = self
            .rooms
            .remote_invite(target, room_id)
            .map_err(|e| e.to_string())?
            .ok_or("no pending invite of its target")?;
        let version = record["room_version"].as_str().unwrap_or_default();
        let checked = self.check_pdu(version, value, Some(room_id)).await?;
        let membership = membership_of(&checked.pdu.content_value())
            .filter(|m| matches!(m, MembershipState::Leave | MembershipState::Ban))
            .ok_or("not a leave or ban")?;
        let membership = membership.as_str();
        // Without the room's state nothing else can be checked, so only the user who made
        // the invite may take it back (another member's kick could be a forgery of their
        // server, or not allowed at all). A knock has no such author on the room's side.
        let inviter = record["event"]["sender"]
            .as_str()
            .filter(|_| membership_of(&record["event"]["content"]) == Some(MembershipState::Invite))
            .ok_or("only an invite can be ended from the room's side")?;
        if checked.pdu.sender.as_str() != inviter || origin != checked.pdu.sender.server_name() {
            return Err(format!("only {inviter} may rescind this invite"));
        }
        self.rooms
            .end_remote_invite(
                target,
                room_id,
                &checked.event_id,
                membership,
                Some(&checked),
            )
            .map_err(|e| e.to_string())?;
        info!(%room_id, user = %target, membership, "the inviter rescinded a pending invite");
        Ok(checked.event_id)
    }

    /// The room's `m.room.server_acl` admits `server` (spec: server ACLs apply to `/send` per
    /// PDU and to the membership endpoints).
    fn acl_allows(&self, room_id: &RoomId, server: &ServerName) -> std::result::Result<(), String> {
        self.rooms
            .check_server_acl(room_id, server)
            .map_err(|e| match e {
                Error::Matrix { message, .. } => message,
                other => other.to_string(),
            })
    }

    // ----- joins: the resident side -----

    /// `make_join` / `make_leave` / `make_knock`: the room's version and a template for a user
    /// of `origin`.
    pub fn make_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        versions: &[String],
    ) -> Result<(RoomVersionId, Box<RawValue>)> {
        if user.server_name() != origin {
            return Err(Error::forbidden(format!(
                "{origin} cannot ask on behalf of {user}"
            )));
        }
        let room = self.rooms.room_or_404(room_id)?;
        if !self
            .rooms
            .servers_in_room(room_id)?
            .iter()
            .any(|s| s.as_str() == self.own_name())
        {
            return Err(Error::not_found("this server is no longer in the room"));
        }
        if membership != "leave" && !versions.contains(&room.version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::IncompatibleRoomVersion {
                    room_version: room.version.clone(),
                },
                format!(
                    "the room's version {} is not among those supported",
                    room.version
                ),
            ));
        }
        self.acl_allows(room_id, origin).map_err(Error::forbidden)?;
        let (version, template) = self.rooms.join_template(room_id, user, membership)?;
        let version = RoomVersionId::try_from(version)
            .map_err(|e| Error::internal(format!("the room's version: {e}")))?;
        Ok((version, to_raw_value(&template)?))
    }

    /// `send_join` / `send_leave` (v2): takes the signed membership event of a user of `origin`
    /// through the pipeline and, for a join, answers with the room's state before it and the
    /// auth chain.
    pub async fn send_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        value: &Value,
        membership: &str,
    ) -> Result<MembershipAnswer> {
        let started = std::time::Instant::now();
        let room = self.rooms.room_or_404(room_id)?;
        self.acl_allows(room_id, origin).map_err(Error::forbidden)?;
        // A restricted join authorised by one of our users needs our signature too, before
        // the signature checks (which ask for the authorising server's).
        let mut value = value.clone();
        let mut signed_by_us = false;
        if let Some(via) = value["content"]["join_authorised_via_users_server"]
            .as_str()
            .and_then(|u| <&UserId>::try_from(u).ok())
        {
            if membership == "join" && via.server_name().as_str() == self.own_name() {
                let mut obj = to_canonical_object(value.clone())?;
                self.rooms.cosign(&mut obj, &room.version)?;
                value = serde_json::to_value(&obj)?;
                signed_by_us = true;
            }
        }
        let event = self
            .check_pdu(&room.version, &value, Some(room_id))
            .await
            .map_err(Error::bad_json)?;
        if event.event_id != event_id {
            return Err(Error::bad_json(format!(
                "the event's id is {}, not {event_id}",
                event.event_id
            )));
        }
        let content = event.pdu.content_value();
        if event.pdu.kind != TimelineEventType::RoomMember
            || event.pdu.state_key.as_deref() != Some(event.pdu.sender.as_str())
            || membership_of(&content) != Some(MembershipState::from(membership))
        {
            return Err(Error::bad_json(format!(
                "not an m.room.member {membership} event of its sender"
            )));
        }
        if event.pdu.sender.server_name() != origin {
            return Err(Error::forbidden(format!(
                "{origin} cannot send a membership event of {}",
                event.pdu.sender
            )));
        }
        let bytes = event.bytes.clone();
        self.receive_checked(origin, room_id, &room.version, event, true)
            .await
            .map_err(|e| Error::forbidden(format!("the {membership} was not accepted: {e}")))?;
        let short = self
            .rooms
            .short_id(event_id)?
            .ok_or_else(|| Error::internal("accepted event not stored"))?;
        let meta = self
            .rooms
            .meta(short)?
            .ok_or_else(|| Error::internal("accepted event has no metadata"))?;
        if meta.hidden {
            return Err(Error::forbidden(format!(
                "the {membership} is not allowed by the room's current state"
            )));
        }
        // The other servers in the room hear of it from us.
        let raw: Vec<u8> = self.rooms.raw_pdu(short)?.unwrap_or(bytes);
        self.rooms
            .send_out_except(room_id, event_id, &raw, Some(origin))?;
        if membership == "knock" {
            let state = self
                .rooms
                .invite_state_pdus(room_id)?
                .iter()
                .map(to_raw_value)
                .collect::<serde_json::Result<_>>()?;
            return Ok(MembershipAnswer::Knock(state));
        }
        if membership != "join" {
            return Ok(MembershipAnswer::Leave);
        }
        let placed_ms = started.elapsed().as_millis() as u64;
        let state = self.rooms.state(meta.state_before)?;
        // PDUs go out as stored, never parsed into a JSON tree and printed again.
        let raw_json = |bytes: Vec<u8>| -> Result<Box<RawValue>> {
            RawValue::from_string(String::from_utf8(bytes).map_err(Error::internal)?)
                .map_err(Error::internal)
        };
        let mut state_pdus = Vec::with_capacity(state.len());
        let mut ids = Vec::with_capacity(state.len() + 1);
        for s in state.values() {
            if let (Some(raw), Some(m)) = (self.rooms.raw_pdu(*s)?, self.rooms.meta(*s)?) {
                state_pdus.push(raw_json(raw)?);
                ids.push(m.event_id);
            }
        }
        ids.push(event_id.to_owned());
        let mut auth_chain = Vec::new();
        for id in self.rooms.auth_chain_ids(&ids)? {
            if let Some(s) = self.rooms.short_id(&id)? {
                if let Some(raw) = self.rooms.raw_pdu(s)? {
                    auth_chain.push(raw_json(raw)?);
                }
            }
        }
        let servers: Vec<String> = self
            .rooms
            .servers_in_room(room_id)?
            .into_iter()
            .map(|s| s.to_string())
            .collect();
        let answer = JoinAnswer {
            origin: self.own_name().to_owned(),
            state: state_pdus,
            auth_chain,
            members_omitted: false,
            servers_in_room: servers,
            event: if signed_by_us {
                Some(raw_json(raw)?)
            } else {
                None
            },
        };
        debug!(
            placed_ms,
            ms = started.elapsed().as_millis() as u64,
            state = answer.state.len(),
            auth_chain = answer.auth_chain.len(),
            "answered a send_join"
        );
        Ok(MembershipAnswer::Join(answer))
    }

    // ----- invites -----

    /// `PUT /v2/invite` on the invitee's side: checks the invite of a local user, signs it
    /// too and keeps it (with the room's stripped state) until the user joins or rejects.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        version: &str,
        event: &Value,
        invite_room_state: &[Value],
    ) -> Result<Box<RawValue>> {
        if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::IncompatibleRoomVersion {
                    room_version: version.to_owned(),
                },
                format!("room version {version} is not supported here"),
            ));
        }
        self.acl_allows(room_id, origin).map_err(Error::forbidden)?;
        let checked = self
            .check_pdu(version, event, Some(room_id))
            .await
            .map_err(Error::bad_json)?;
        if checked.event_id != event_id {
            return Err(Error::bad_json(format!(
                "the event's id is {}, not {event_id}",
                checked.event_id
            )));
        }
        let pdu = &checked.pdu;
        let target = pdu
            .state_key
            .as_deref()
            .and_then(|k| <&UserId>::try_from(k).ok())
            .filter(|_| pdu.kind == TimelineEventType::RoomMember)
            .ok_or_else(|| Error::bad_json("not an m.room.member event"))?;
        if membership_of(&pdu.content_value()) != Some(MembershipState::Invite) {
            return Err(Error::bad_json("not an invite"));
        }
        if target.server_name().as_str() != self.own_name() {
            return Err(Error::bad_json(format!(
                "{target} is not a user of this server"
            )));
        }
        if pdu.sender.server_name() != origin {
            return Err(Error::forbidden(format!(
                "{origin} cannot send an invite from {}",
                pdu.sender
            )));
        }
        let mut obj: CanonicalJsonObject = serde_json::from_slice(&checked.bytes)?;
        self.rooms.cosign(&mut obj, version)?;
        let signed = serde_json::to_value(&obj)?;
        let resident = self.rooms.room(room_id)?.is_some()
            && self
                .rooms
                .servers_in_room(room_id)?
                .iter()
                .any(|s| s.as_str() == self.own_name());
        // When this server is in the room the invite is a room event like any other: it is
        // placed now (the inviting server sends it in a transaction too, where it is then
        // known), so the invitee sees it and can join or leave locally. Otherwise, or when it
        // cannot be placed here, it is kept apart with what the inviter told about the room.
        let mut placed = false;
        if resident {
            let mut cosigned = checked.clone();
            cosigned.bytes = serde_json::to_vec(&obj)?;
            match self
                .receive_checked(origin, room_id, version, cosigned, true)
                .await
            {
                Ok(()) => {
                    placed =
                        self.rooms.membership(room_id, target)? == Some(MembershipState::Invite)
                }
                Err(e) => info!(%room_id, %event_id, "an invite not placed in the room: {e}"),
            }
        }
        if !placed {
            // Kept stripped, as clients see it (full PDUs or stripped events may arrive).
            let stripped = stripped(invite_room_state);
            let record = json!({
                "event": signed,
                "room_version": version,
                "invite_room_state": stripped,
            });
            self.rooms
                .store_remote_invite(target, room_id, event_id, &record, "invite")?;
        }
        Ok(to_raw_value(&signed)?)
    }

    /// Invites a user of another server: their server signs the invite first, then it
    /// enters the room like any event and goes to the other servers.
    pub async fn invite_remote(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: Value,
    ) -> Result<OwnedEventId> {
        let new =
            crate::rooms::NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content);
        let (version, obj) = self.rooms.checked_template(room_id, sender, &new)?;
        let (event_id, _, bytes) = self.rooms.sign_event(obj, &version)?;
        let invite_room_state = self.rooms.invite_state_pdus(room_id)?;
        let server = target.server_name();
        let room_version = RoomVersionId::try_from(version.as_str())
            .map_err(|e| Error::internal(format!("room version {version}: {e}")))?;
        let invite_room_state = invite_room_state
            .iter()
            .map(|e| Ok(RawStrippedState::Pdu(to_raw_value(e)?)))
            .collect::<Result<Vec<_>>>()?;
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            event_id.clone(),
            room_version,
            RawValue::from_string(String::from_utf8(bytes.clone()).map_err(Error::internal)?)?,
            invite_room_state,
        );
        let answer = self.ask_typed(server, request).await?;
        let returned: Value = serde_json::from_str(answer.event.get())?;
        let returned = &returned;
        if returned["signatures"].get(server.as_str()).is_none() {
            return Err(Error::bad_json(format!("{server} did not sign the invite")));
        }
        let checked = self
            .check_pdu(&version, returned, Some(room_id))
            .await
            .map_err(Error::bad_json)?;
        if checked.event_id != event_id {
            return Err(Error::bad_json(format!(
                "{server} changed the invite event"
            )));
        }
        let signed = checked.bytes.clone();
        // The invitee's server gets the invite in a transaction too when it is in the room
        // (it is one of the room's servers); otherwise it has it from `/invite` alone.
        let invitee_resident = self.rooms.servers_in_room(room_id)?.contains(server);
        match self.rooms.place_remote(room_id, checked).await? {
            Placed::Accepted(_) | Placed::Known => {}
            Placed::SoftFailed => {
                return Err(Error::forbidden("the room no longer allows the invite"));
            }
            Placed::Rejected(reason) => return Err(Error::forbidden(reason)),
            Placed::MissingState(_) => {
                return Err(Error::internal("own invite has unknown prev events"))
            }
        }
        let except = (!invitee_resident).then_some(server);
        self.rooms
            .send_out_except(room_id, &event_id, &signed, except)?;
        Ok(event_id)
    }

    /// Rejects an invite from another server (or rescinds a knock): a leave through the
    /// inviting server (`make_leave`/`send_leave`). If that server will not take it (it left
    /// the room, or cannot be reached), the invite is still rejected here, with a leave of
    /// this server's own that no other server sees.
    pub async fn reject_remote_invite(
        &self,
        user: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<()> {
        let record = self
            .rooms
            .remote_invite(user, room_id)?
            .ok_or_else(|| Error::forbidden("you are not invited to this room"))?;
        let leave = match self.leave_via_inviter(user, room_id, &record, reason).await {
            Ok(leave) => leave,
            Err(e) => {
                warn!(%room_id, %user, "rejecting the invite remotely failed ({e}); rejecting here only");
                self.local_leave(user, room_id, &record, reason)?
            }
        };
        self.rooms
            .end_remote_invite(user, room_id, &leave.event_id, "leave", Some(&leave))
    }

    /// A leave made here alone, after an invite (or knock) of another server's room: the
    /// invite is its only `prev_event` and auth event, this server signs it, and it goes to
    /// no one. It is what the user's sync shows for the rejected invite.
    fn local_leave(
        &self,
        user: &UserId,
        room_id: &RoomId,
        record: &Value,
        reason: Option<&str>,
    ) -> Result<Checked> {
        let version = record["room_version"].as_str().unwrap_or_default();
        let rules = version_rules(version).map_err(Error::internal)?;
        let invite = to_canonical_object(record["event"].clone())?;
        let invite_id = crate::rooms::pdu::event_id_of(&invite, &rules)
            .map_err(|e| Error::internal(format!("stored invite unreadable: {e}")))?;
        let reference = crate::rooms::pdu::event_ref(&invite_id, Some(&invite), &rules);
        let depth = record["event"]["depth"]
            .as_u64()
            .unwrap_or(0)
            .saturating_add(1);
        let mut content = json!({ "membership": "leave" });
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        let mut obj = to_canonical_object(json!({
            "type": "m.room.member",
            "state_key": user,
            "sender": user,
            "room_id": room_id,
            "content": content,
            "origin_server_ts": now_ms(),
            "depth": depth,
        }))?;
        obj.insert(
            "prev_events".into(),
            CanonicalJsonValue::Array(vec![reference.clone()]),
        );
        obj.insert(
            "auth_events".into(),
            CanonicalJsonValue::Array(vec![reference]),
        );
        let (event_id, pdu, bytes) = self.rooms.sign_event(obj, version)?;
        Ok(Checked {
            event_id,
            pdu,
            bytes,
        })
    }

    /// The leave of a local user through the server an invite came from (or a knock went
    /// through): `make_leave`/`send_leave` there. Returns the leave as sent.
    async fn leave_via_inviter(
        &self,
        user: &UserId,
        room_id: &RoomId,
        record: &Value,
        reason: Option<&str>,
    ) -> Result<Checked> {
        // A knock names the server it went through; an invite comes from its sender's.
        let server = match record["server"]
            .as_str()
            .and_then(|s| OwnedServerName::try_from(s).ok())
        {
            Some(s) => s,
            None => record["event"]["sender"]
                .as_str()
                .and_then(|s| <&UserId>::try_from(s).ok())
                .map(|u| u.server_name().to_owned())
                .ok_or_else(|| Error::internal("stored invite has no sender"))?,
        };
        let mut content = json!({});
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        let Handshake { event_id, body, .. } = self
            .handshake(&server, user, room_id, "leave", content)
            .await?;
        let bytes = serde_json::to_vec(&to_canonical_object(body)?)?;
        Ok(Checked {
            pdu: Pdu::from_json(event_id.clone(), &bytes)?,
            event_id,
            bytes,
        })
    }

    /// `make_{membership}` then `send_{membership}` on `server` for a local user: the template
    /// is checked (a member event of the user in the room, a version this server supports),
    /// gets `content` (for a join added to the template's, which may name an authorising
    /// user; otherwise replacing it), a fresh timestamp and this server's hashes and
    /// signature.
    async fn handshake(
        &self,
        server: &ServerName,
        user: &UserId,
        room_id: &RoomId,
        membership: &str,
        content: Value,
    ) -> Result<Handshake> {
        let ver: Vec<RoomVersionId> = SUPPORTED_ROOM_VERSIONS
            .iter()
            .filter_map(|v| RoomVersionId::try_from(*v).ok())
            .collect();
        let (room_id_owned, user_owned) = (room_id.to_owned(), user.to_owned());
        let (room_version, event) = match membership {
            "join" => {
                let mut request = prepare_join_event::v1::Request::new(room_id_owned, user_owned);
                request.ver = ver;
                let made = self.ask_typed(server, request).await?;
                (made.room_version, made.event)
            }
            "knock" => {
                let mut request = prepare_knock_event::v1::Request::new(room_id_owned, user_owned);
                request.ver = ver;
                let made = self.ask_typed(server, request).await?;
                (Some(made.room_version), made.event)
            }
            _ => {
                let request = prepare_leave_event::v1::Request::new(room_id_owned, user_owned);
                let made = self.ask_typed(server, request).await?;
                (made.room_version, made.event)
            }
        };
        let version = room_version.map_or_else(|| "1".to_owned(), |v| v.to_string());
        version_rules(&version).map_err(|e| {
            Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::UnsupportedRoomVersion,
                e,
            )
        })?;
        let mut template = serde_json::from_str::<Value>(event.get())
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| Error::bad_json(format!("{server} sent no {membership} template")))?;
        if template["type"] != "m.room.member"
            || template["state_key"] != user.as_str()
            || template["sender"] != user.as_str()
            || template["room_id"] != room_id.as_str()
        {
            return Err(Error::bad_json(format!(
                "{server} sent a wrong {membership} template"
            )));
        }
        if membership != "join" || !template["content"].is_object() {
            template["content"] = json!({});
        }
        if let (Some(c), Some(extra)) = (template["content"].as_object_mut(), content.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
            c.insert("membership".into(), json!(membership));
        }
        template["origin_server_ts"] = json!(now_ms());
        if let Some(o) = template.as_object_mut() {
            for k in ["signatures", "hashes", "event_id", "unsigned"] {
                o.remove(k);
            }
        }
        let (event_id, _, bytes) = self
            .rooms
            .sign_event(to_canonical_object(template)?, &version)?;
        let body: Value = serde_json::from_slice(&bytes)?;
        let pdu = to_raw_value(&body)?;
        let (room_id, event_id_owned) = (room_id.to_owned(), event_id.clone());
        let answer = match membership {
            "join" => Sent::Join(
                self.ask_typed(
                    server,
                    create_join_event::v2::Request::new(room_id, event_id_owned, pdu),
                )
                .await?
                .room_state,
            ),
            "knock" => Sent::Knock(
                self.ask_typed(
                    server,
                    create_knock_event::v1::Request::new(room_id, event_id_owned, pdu),
                )
                .await?
                .knock_room_state,
            ),
            _ => {
                self.ask_typed(
                    server,
                    create_leave_event::v2::Request::new(room_id, event_id_owned, pdu),
                )
                .await?;
                Sent::Leave
            }
        };
        Ok(Handshake {
            event_id,
            version,
            body,
            answer,
        })
    }

    // ----- knocks: the knocking side -----

    /// Knocks on a room of another server (`make_knock`/`send_knock`), trying each candidate
    /// server; the room's stripped state comes back and is kept for sync.
    pub async fn knock_remote(
        &self,
        user: &UserId,
        room_id: &RoomId,
        candidates: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        let mut last = Error::not_found("no server to knock through");
        for server in candidates {
            if server.as_str() == self.own_name() {
                continue;
            }
            match self.knock_via(user, room_id, server, reason).await {
                Ok(id) => return Ok(id),
                Err(e) => {
                    warn!(%room_id, %server, "knocking through {server} failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn knock_via(
        &self,
        user: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        let mut content = json!({});
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        let Handshake {
            event_id,
            version,
            body,
            answer,
        } = self
            .handshake(server, user, room_id, "knock", content)
            .await?;
        let knock_room_state = match answer {
            Sent::Knock(state) => state
                .iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect(),
            _ => Vec::new(),
        };
        let stripped = stripped(&knock_room_state);
        let record = json!({
            "event": body,
            "room_version": version,
            "invite_room_state": stripped,
            "server": server,
        });
        self.rooms
            .store_remote_invite(user, room_id, &event_id, &record, "knock")?;
        Ok(event_id)
    }

    // ----- joins: the joining side -----

    /// Joins `user` to a room over federation, trying each candidate server in turn.
    /// A guild space gained a channel (an `m.space.child` now in its current state): as in
    /// Discord, this server's members of the guild are joined to it, in the background, through
    /// the servers named in `via` (spec/rest.md §11). A join the channel refuses (a private or
    /// hidden channel) is no error.
    fn follow_new_channel(&self, space: &RoomId, event_id: &EventId) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let Ok(Some(pdu)) = self.rooms.pdu(event_id) else {
            return;
        };
        let Some(key) = pdu.state_key.clone() else {
            return;
        };
        let Ok(state) = self.rooms.current_state(space) else {
            return;
        };
        let current = self
            .rooms
            .state_pdu(&state, "m.space.child", &key)
            .ok()
            .flatten()
            .is_some_and(|p| p.event_id == event_id);
        let is_guild = self
            .rooms
            .state_content(&state, "chat.paracord.guild", "")
            .ok()
            .flatten()
            .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()));
        let via: Vec<OwnedServerName> = pdu.content_value()["via"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().and_then(|s| OwnedServerName::try_from(s).ok()))
                    .collect()
            })
            .unwrap_or_default();
        let Ok(channel) = OwnedRoomId::try_from(key) else {
            return;
        };
        if !current || !is_guild || via.is_empty() {
            return;
        }
        let members: Vec<ruma::OwnedUserId> = self
            .rooms
            .members(space)
            .unwrap_or_default()
            .into_iter()
            .filter(|(u, m)| {
                *m == MembershipState::Join && u.server_name().as_str() == self.own_name()
            })
            .map(|(u, _)| u)
            .collect();
        if members.is_empty() {
            return;
        }
        let space = space.to_owned();
        tokio::spawn(async move {
            // A child is followed only when it is a channel of this guild: a space admin
            // must not be able to join everyone to any room they like. Before anyone joins,
            // the room's summary must restrict it to the guild; after the first join, its
            // own state (signed and checked, unlike a summary) must name the guild as its
            // parent and carry the channel event, or that member leaves and no one follows.
            if !me.summary_restricts_to(&channel, &space, &via).await {
                warn!(%space, %channel, "a guild's new child is not restricted to the guild: not followed");
                return;
            }
            let mut verified = false;
            for user in members {
                if matches!(
                    me.rooms.membership(&channel, &user).ok().flatten(),
                    Some(MembershipState::Join) | Some(MembershipState::Ban)
                ) {
                    continue;
                }
                if let Err(e) = me.join_remote(&user, &channel, &via, json!({})).await {
                    debug!(%channel, %user, "a new channel of a guild was not joined: {e}");
                    continue;
                }
                if !verified {
                    if !me.is_channel_of(&channel, &space) {
                        warn!(%space, %channel, "a guild's new child is not its channel: left, not followed");
                        if let Err(e) = me.rooms.leave(&channel, &user, None).await {
                            warn!(%channel, %user, "leaving a room that is not a channel failed: {e}");
                        }
                        return;
                    }
                    verified = true;
                }
            }
        });
    }

    /// Whether `/hierarchy` of `room`, asked of `via`, says it is restricted to `space`.
    async fn summary_restricts_to(
        &self,
        room: &RoomId,
        space: &RoomId,
        via: &[OwnedServerName],
    ) -> bool {
        for server in via {
            if server.as_str() == self.own_name() {
                continue;
            }
            let request = get_hierarchy::v1::Request::new(room.to_owned());
            match self.ask_typed(server, request).await {
                Ok(answer) => {
                    let summary = &answer.room.summary;
                    return summary.room_id == room
                        && matches!(
                            &summary.join_rule,
                            ruma::room::JoinRuleSummary::Restricted(r)
                                if r.allowed_room_ids.iter().any(|r| r == space)
                        );
                }
                Err(e) => debug!(%room, %server, "summary of a new child: {e}"),
            }
        }
        false
    }

    /// Whether this server's copy of `room`'s state makes it a channel of `space`: an
    /// `m.space.parent` naming the space and a `chat.paracord.channel` event.
    fn is_channel_of(&self, room: &RoomId, space: &RoomId) -> bool {
        let Ok(state) = self.rooms.current_state(room) else {
            return false;
        };
        let non_empty = |kind: &str, key: &str| {
            self.rooms
                .state_content(&state, kind, key)
                .ok()
                .flatten()
                .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()))
        };
        non_empty("m.space.parent", space.as_str()) && non_empty("chat.paracord.channel", "")
    }

    pub async fn join_remote(
        &self,
        user: &UserId,
        room_id: &RoomId,
        candidates: &[OwnedServerName],
        extra_content: Value,
    ) -> Result<OwnedEventId> {
        let mut last = Error::not_found("no server to join the room through");
        for server in candidates {
            if server.as_str() == self.own_name() {
                continue;
            }
            match self.join_via(user, room_id, server, &extra_content).await {
                Ok(id) => return Ok(id),
                Err(e) => {
                    warn!(%room_id, %server, "joining through {server} failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_via(
        &self,
        user: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        extra_content: &Value,
    ) -> Result<OwnedEventId> {
        let handshake_started = std::time::Instant::now();
        let Handshake {
            event_id,
            version,
            body,
            answer: sent,
        } = self
            .handshake(server, user, room_id, "join", extra_content.clone())
            .await?;
        let Sent::Join(sent) = sent else {
            return Err(Error::internal("send_join answered as another membership"));
        };
        // A restricted join comes back with the resident server's signature added.
        let join_value = match sent
            .event
            .as_ref()
            .and_then(|e| serde_json::from_str::<Value>(e.get()).ok())
        {
            Some(e) if e.is_object() => e,
            _ => body,
        };
        let join = self
            .check_pdu(&version, &join_value, Some(room_id))
            .await
            .map_err(|e| Error::bad_json(format!("the join event came back wrong: {e}")))?;
        if join.event_id != event_id {
            return Err(Error::bad_json(format!("{server} changed the join event")));
        }
        // Already in the room (a restricted join that only another server could authorise):
        // the join is one more event of the room.
        if self.rooms.room(room_id)?.is_some()
            && self
                .rooms
                .servers_in_room(room_id)?
                .iter()
                .any(|s| s.as_str() == self.own_name())
        {
            self.receive_checked(server, room_id, &version, join, true)
                .await
                .map_err(|e| Error::forbidden(e.to_string()))?;
            return Ok(event_id);
        }
        let sent_at = std::time::Instant::now();
        debug!(
            ms = handshake_started.elapsed().as_millis() as u64,
            "make_join and send_join"
        );
        let mut bundle = raw_values(sent.auth_chain);
        let auth_len = bundle.len();
        bundle.extend(raw_values(sent.state));
        // No history is fetched now: clients paging back past the join fetch it
        // (`Pdus::backfill`), as other servers do.
        let good = self.check_bundle_tagged(&version, room_id, &bundle).await?;
        debug!(
            events = bundle.len(),
            ms = sent_at.elapsed().as_millis() as u64,
            "checked the state and auth chain of a join"
        );
        // What came in the `state` list is the state (an event may be in both lists).
        let mut state_ids = std::collections::HashSet::new();
        for (i, c) in &good {
            if *i >= auth_len {
                state_ids.insert(c.event_id.clone());
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut state = Vec::with_capacity(state_ids.len());
        let mut auth_chain = Vec::new();
        for (_, c) in good {
            if !seen.insert(c.event_id.clone()) {
                continue;
            }
            if state_ids.contains(&c.event_id) {
                state.push(c);
            } else {
                auth_chain.push(c);
            }
        }
        let create_ok = state.iter().any(|c| {
            c.pdu.kind == TimelineEventType::RoomCreate
                && c.pdu
                    .content_value()
                    .get("room_version")
                    .and_then(Value::as_str)
                    .unwrap_or("1")
                    == version
        });
        if !create_ok {
            return Err(Error::bad_json(format!(
                "{server} sent a room state without a valid create event of version {version}"
            )));
        }
        self.rooms
            .join_remote_room(room_id, &version, &state, &auth_chain, join)
            .await?;
        debug!(
            ms = sent_at.elapsed().as_millis() as u64,
            "stored a room joined over federation"
        );
        info!(%room_id, %server, %user, "joined over federation");
        Ok(event_id)
    }
}

impl Pdus {
    /// Fetches up to `limit` (at most 100) events of history before this server's oldest
    /// timeline event of a room from the other servers in it (`/backfill`), with their
    /// missing auth events, and stores them below it. Returns how many were stored (0 when
    /// there is nothing before, or no server answers).
    pub async fn backfill(&self, room_id: &RoomId, limit: usize) -> Result<usize> {
        let from = self.rooms.backfill_from(room_id)?;
        if from.is_empty() {
            return Ok(0);
        }
        let room = self.rooms.room_or_404(room_id)?;
        let limit = UInt::new_saturating(limit.clamp(1, 100) as u64);
        for server in self.rooms.servers_in_room(room_id)? {
            if server.as_str() == self.own_name() {
                continue;
            }
            let request = get_backfill::v1::Request::new(room_id.to_owned(), from.clone(), limit);
            let answer = match self.ask_typed(&server, request).await {
                Ok(a) => a,
                Err(e) => {
                    debug!(%room_id, %server, "backfill failed: {e}");
                    continue;
                }
            };
            let mut events = Vec::new();
            for raw in raw_values(answer.pdus) {
                match self.check_pdu(&room.version, &raw, Some(room_id)).await {
                    Ok(c) => events.push(c),
                    Err(e) => warn!(%room_id, "a backfilled event failed its checks: {e}"),
                }
            }
            // Oldest first, so that events in the answer can be auth events of later ones.
            events.sort_by_key(|c| u64::from(c.pdu.depth));
            for e in &events {
                if let Err(err) = self
                    .fetch_auth_events(&server, room_id, &room.version, e)
                    .await
                {
                    debug!(event_id = %e.event_id, "auth events of a backfilled event: {err}");
                }
            }
            let stored = self.rooms.store_backfilled(room_id, events).await?;
            debug!(%room_id, %server, stored, "backfilled");
            return Ok(stored);
        }
        Ok(0)
    }
}

/// The PDU as its format is checked: a `state_key` of at most 255 code points passes even
/// when longer than 255 bytes. Other servers have long enforced code points, so rooms hold
/// such events, and refusing them would break those rooms here (Complement checks this).
/// Events made here keep to 255 bytes.
fn lenient_state_key(obj: &CanonicalJsonObject) -> std::borrow::Cow<'_, CanonicalJsonObject> {
    match obj.get("state_key") {
        Some(CanonicalJsonValue::String(k)) if k.len() > 255 && k.chars().count() <= 255 => {
            let mut copy = obj.clone();
            copy.insert(
                "state_key".into(),
                CanonicalJsonValue::String(String::new()),
            );
            std::borrow::Cow::Owned(copy)
        }
        _ => std::borrow::Cow::Borrowed(obj),
    }
}

/// The event id of a PDU of a room version.
pub fn event_id_of(obj: &CanonicalJsonObject, version: &str) -> Option<OwnedEventId> {
    let rules = version_rules(version).ok()?;
    crate::rooms::pdu::event_id_of(obj, &rules).ok()
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    // Issue 15 item 6: the fetch budget of a transaction runs out by bytes and by time.
    #[tokio::test]
    async fn the_fetch_budget_runs_out_by_bytes_and_by_time() {
        let mut b = FetchBudget {
            bytes_left: 100,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(30),
        };
        assert!(b.check().is_ok());
        b.charge(60);
        assert!(b.check().is_ok());
        b.charge(60);
        assert!(b.check().is_err(), "bytes spent");
        let b = FetchBudget {
            bytes_left: 100,
            deadline: tokio::time::Instant::now(),
        };
        assert!(b.check().is_err(), "time spent");
    }
}

#[cfg(test)]
mod key_tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn transaction_key_round_trips_and_layout_is_stable() {
        let key = TransactionKey {
            origin: "x.test",
            txn_id: "t1",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"x.test\xFFt1");
        assert_eq!(bytes, KeyBuf::new().str("x.test").last_str("t1").into_vec());
        assert_eq!(TransactionKey::decode(&bytes).unwrap(), key);
        assert!(TransactionKey::decode(b"no separator").is_err());
    }
}
