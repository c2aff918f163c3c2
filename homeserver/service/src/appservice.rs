//! Application services (the Matrix Application Service API): the registrations loaded from
//! `appservice_dir` or added with the admin API (kept in `appserviceid_registration`), the questions the API asks of them (whose token is this, who owns this
//! user or alias namespace), the per-appservice transaction queue fed by an observer of the
//! room pipeline, its sender, pings and user/alias queries.
//!
//! Every event an appservice is interested in is written to `appserviceseq_event`
//! (`appservice id 0xFF seq` → event id) in the batch that commits the event, so nothing
//! accepted is lost by a crash. One sender task per appservice reads the oldest rows (at most
//! [`TXN_EVENTS`]), writes their sequence range down as the formed transaction (so it stays
//! the same across restarts), sends them as one `PUT /_matrix/app/v1/transactions/{txnId}` and
//! deletes exactly those rows and the range on a 200. A failure keeps the transaction (same
//! events, same id) and retries with exponential backoff up to [`RETRY_MAX`]. A new event
//! wakes the sender.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Weak},
    time::Duration,
};

use paracord_core::{Config, Error, ErrorKind, Result};
use paracord_storage::{
    key::{KeyBuf, KeyReader},
    Batch, Db, StorageError, Table,
};
use parking_lot::{Mutex, RwLock};
use regex::Regex;
use ruma::{
    api::appservice::{Namespace, Registration},
    thirdparty::Protocol,
    OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::{
    e2ee::DeviceObserver,
    ephemeral::{EphemeralKind, EphemeralObserver, EphemeralUpdate},
    outbound::{GuardedClient, OutboundGuard},
    rooms::{hooks::EventObserver, notify::Notification, Pdu, Rooms},
    stream::Stream,
};

/// Most events in one transaction.
pub const TXN_EVENTS: usize = 100;
/// First wait after a failed transaction; doubled per further failure.
const RETRY_BASE: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How long a transaction, a ping or a query may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms whose member interest is remembered (past it the cache starts over).
const MEMBER_CACHE_ROOMS: usize = 10_000;
/// Most bytes of an appservice's answer copied into a ping error.
const MAX_ERROR_BODY: usize = 1000;
/// The device id of requests made with an appservice's `as_token` (appservice users have no
/// device of their own until `?device_id=` is supported).
pub const APPSERVICE_DEVICE: &str = "APPSERVICE";
/// The id of the built-in registration whose users are the webhooks' senders
/// (spec/webhooks.md): it has no URL (no traffic), a token nobody is told and an exclusive
/// user namespace, `@_webhook_.*:server`, that normal registration cannot claim.
pub const WEBHOOKS_ID: &str = "paracord-webhooks";

/// A room's member list and which appservices have a user in it.
type MemberInterest = (
    Arc<crate::rooms::RoomMembers>,
    Arc<Vec<Arc<Appservice>>>,
    Arc<Vec<bool>>,
);

/// The key of a queued event in `appserviceseq_event`: `appservice id 0xFF seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKey<'a> {
    pub appservice: &'a str,
    pub seq: u64,
}

impl<'a> QueueKey<'a> {
    pub fn encode(&self) -> Vec<u8> {
        KeyBuf::new().str(self.appservice).u64(self.seq).into_vec()
    }

    pub fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut reader = KeyReader::new(key);
        let appservice = reader.str()?;
        let seq = reader.u64()?;
        reader.finish()?;
        Ok(Self { appservice, seq })
    }

    /// Every key of `appservice`'s queue starts with this.
    pub fn prefix(appservice: &str) -> Vec<u8> {
        KeyBuf::new().str(appservice).into_vec()
    }
}

/// The `global_value` key of the sequence after the last delivered one, so a transaction id
/// is never used twice, even once the queue is empty and the server restarted.
fn delivered_key(appservice: &str) -> Vec<u8> {
    format!("appservice_delivered\u{ff}{appservice}").into_bytes()
}

/// The `global_value` key of the sequence range (`first` and `last`, 8 bytes each) of the
/// transaction formed for an appservice and not yet accepted: written before it is first
/// sent, deleted with its rows once it is accepted.
fn formed_key(appservice: &str) -> Vec<u8> {
    format!("appservice_formed\u{ff}{appservice}").into_bytes()
}

/// The transaction field of to-device messages: MSC4203's `to_device`, under the unstable
/// name of MSC2409's to-device part, which MSC4203 was split from.
const TO_DEVICE_FIELD: &str = "de.sorunome.msc2409.to_device";
/// The registration key naming the user who made a registration (a namespaced application).
pub const OWNER_FIELD: &str = "chat.paracord.owner";

/// A queue row: key and value.
type Row = (Vec<u8>, Vec<u8>);

/// How long queued typing and presence stay worth sending: older rows are dropped when a
/// transaction is formed (an appservice that was down gets the receipts, not stale typing).
const EPHEMERAL_MAX_AGE: u64 = 120_000;

/// A queued piece of ephemeral data (the value of an `appserviceseq_event` row that is not an
/// event id: JSON, so it starts with `{` where an event id starts with `$`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct QueuedEphemeral {
    /// When it was queued (ms since the epoch).
    ts: u64,
    /// Whether it may be dropped once older than [`EPHEMERAL_MAX_AGE`] (typing, presence).
    droppable: bool,
    event: Value,
    /// Instead of an event: a device's key counts (MSC3202).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<KeyCounts>,
    /// `event` is a to-device message for one of its users' devices (MSC4203).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    to_device: bool,
    /// Instead of an event: the user whose device list changed (MSC3202).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_list_changed: Option<String>,
    /// Instead of an event: a user who no longer shares a room with any of the appservice's
    /// users (MSC3202 `device_lists.left`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_list_left: Option<String>,
}

/// One device's one-time key counts and unused fallback key types, as queued.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KeyCounts {
    user: String,
    device: String,
    counts: std::collections::BTreeMap<String, u64>,
    fallback: Vec<String>,
}

impl QueuedEphemeral {
    fn decode(value: &[u8]) -> Option<Self> {
        if value.first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(value).ok()
    }

    fn is_stale(value: &[u8], now: u64) -> bool {
        Self::decode(value)
            .is_some_and(|q| q.droppable && now.saturating_sub(q.ts) > EPHEMERAL_MAX_AGE)
    }
}

/// A formed transaction: its id, queue rows and body.
struct Pending {
    txn_id: String,
    keys: Vec<Vec<u8>>,
    body: Value,
}

/// One namespace: a regex matched against the whole id.
#[derive(Debug)]
struct Pattern {
    regex: Regex,
    exclusive: bool,
}

fn patterns(kind: &str, list: &[Namespace]) -> Result<Vec<Pattern>, String> {
    list.iter()
        .map(|n| {
            // The spec: the regex must match the whole id.
            Regex::new(&format!("^(?:{})$", n.regex))
                .map(|regex| Pattern {
                    regex,
                    exclusive: n.exclusive,
                })
                .map_err(|e| format!("namespaces.{kind}: bad regex {:?}: {e}", n.regex))
        })
        .collect()
}

fn matches(list: &[Pattern], id: &str, exclusive_only: bool) -> bool {
    list.iter()
        .any(|p| (!exclusive_only || p.exclusive) && p.regex.is_match(id))
}

/// A loaded registration.
#[derive(Debug)]
pub struct Appservice {
    pub registration: Registration,
    /// Whether it gets typing, receipts and presence (`receive_ephemeral`, or MSC2409's
    /// `de.sorunome.msc2409.push_ephemeral`).
    pub receive_ephemeral: bool,
    /// Added with the admin API (kept in `appserviceid_registration`), not from a file.
    pub added: bool,
    /// Whether it gets one-time and fallback key counts of its users' devices in
    /// transactions (MSC3202, registration key `org.matrix.msc3202: true`).
    pub msc3202: bool,
    /// The server's own registration for webhook users ([`WEBHOOKS_ID`]): not listed by the
    /// admin API, not removable, its token never accepted.
    pub builtin: bool,
    /// `@sender_localpart:server`.
    pub sender: OwnedUserId,
    /// The user who made it (registration key `chat.paracord.owner`, written by the server
    /// for a user's namespaced application): its `url` is that user's choice, not the
    /// operator's, so requests to it keep the outbound guard's allowlist.
    pub owner: Option<String>,
    users: Vec<Pattern>,
    aliases: Vec<Pattern>,
    rooms: Vec<Pattern>,
}

impl Appservice {
    /// The device id of requests made with this appservice's `as_token`.
    pub fn device_id(&self) -> &'static str {
        APPSERVICE_DEVICE
    }

    /// Checks a registration and compiles its namespaces.
    pub fn new(mut registration: Registration, server_name: &str) -> Result<Self, String> {
        // Some generators write an empty url for "no url".
        if registration
            .url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            registration.url = None;
        }
        let r = &registration;
        if r.id.is_empty() {
            return Err("id is empty".into());
        }
        if r.as_token.is_empty() || r.hs_token.is_empty() {
            return Err("as_token and hs_token must not be empty".into());
        }
        if r.as_token == r.hs_token {
            return Err("as_token and hs_token must differ".into());
        }
        if let Some(url) = &r.url {
            reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
        }
        let sender = UserId::parse(format!("@{}:{server_name}", r.sender_localpart))
            .map_err(|e| format!("sender_localpart {:?}: {e}", r.sender_localpart))?;
        let users = patterns("users", &r.namespaces.users)?;
        let aliases = patterns("aliases", &r.namespaces.aliases)?;
        let rooms = patterns("rooms", &r.namespaces.rooms)?;
        Ok(Self {
            sender,
            users,
            aliases,
            rooms,
            receive_ephemeral: registration.receive_ephemeral,
            added: false,
            builtin: false,
            msc3202: false,
            owner: None,
            registration,
        })
    }

    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether `user` is one of this appservice's users (its sender or in its users
    /// namespace, exclusive or not).
    pub fn owns_user(&self, user: &UserId) -> bool {
        user == self.sender || matches(&self.users, user.as_str(), false)
    }

    pub fn is_exclusive_user(&self, user: &str) -> bool {
        matches(&self.users, user, true)
    }

    pub fn owns_alias(&self, alias: &str) -> bool {
        matches(&self.aliases, alias, false)
    }

    pub fn is_exclusive_alias(&self, alias: &str) -> bool {
        matches(&self.aliases, alias, true)
    }

    /// Whether users of this appservice are exempt from rate limits.
    pub fn rate_limited(&self) -> bool {
        self.registration.rate_limited.unwrap_or(true)
    }

    fn url(&self, path: &str) -> Option<Result<reqwest::Url>> {
        let base = self.registration.url.as_deref()?;
        Some(
            reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
                .map_err(Error::internal),
        )
    }

    /// Whether this appservice wants `pdu` of `room_id` for the event itself: its sender or
    /// state key is one of its users, or the room id or one of the room's aliases is in its
    /// namespaces. (Whether one of its users is a member is asked apart, with a cache.)
    fn interested(&self, rooms: &Rooms, room_id: &RoomId, pdu: &Pdu) -> bool {
        if self.owns_user(&pdu.sender)
            || pdu
                .state_key
                .as_deref()
                .and_then(|k| UserId::parse(k).ok())
                .is_some_and(|u| self.owns_user(&u))
            || matches(&self.rooms, room_id.as_str(), false)
        {
            return true;
        }
        if !self.aliases.is_empty() {
            if let Ok(state) = rooms.current_state(room_id) {
                if let Ok(Some(c)) = rooms.state_content(&state, "m.room.canonical_alias", "") {
                    let alias = c["alias"].as_str().into_iter();
                    let alt = c["alt_aliases"].as_array().into_iter().flatten();
                    if alias
                        .chain(alt.filter_map(Value::as_str))
                        .any(|a| self.owns_alias(a))
                    {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// Parses a registration (YAML, or JSON, which is YAML too). MSC2409's unstable
/// `de.sorunome.msc2409.push_ephemeral: true` counts as `receive_ephemeral: true`.
pub fn parse_registration(text: &str) -> Result<Registration, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let unstable = value
        .get("de.sorunome.msc2409.push_ephemeral")
        .and_then(serde_yaml::Value::as_bool)
        .unwrap_or(false);
    let mut registration: Registration =
        serde_yaml::from_value(value).map_err(|e| e.to_string())?;
    registration.receive_ephemeral |= unstable;
    Ok(registration)
}

impl Appservice {
    /// The built-in registration of webhook users ([`WEBHOOKS_ID`]), with fresh random tokens.
    pub fn builtin_webhooks(server_name: &str) -> Result<Self, String> {
        let registration = json!({
            "id": WEBHOOKS_ID,
            "url": null,
            "as_token": crate::random::random_string(64),
            "hs_token": crate::random::random_string(64),
            "sender_localpart": "_webhooks",
            "namespaces": {
                "users": [{
                    "exclusive": true,
                    "regex": format!("@_webhook_.*:{}", regex::escape(server_name)),
                }],
                "aliases": [],
                "rooms": [],
            },
        });
        let mut a = Self::from_text(&registration.to_string(), server_name)?;
        a.builtin = true;
        Ok(a)
    }

    /// [`parse_registration`] and [`Appservice::new`], with the unstable keys read too.
    pub fn from_text(text: &str, server_name: &str) -> Result<Self, String> {
        let mut a = Self::new(parse_registration(text)?, server_name)?;
        let extra = serde_yaml::from_str::<serde_yaml::Value>(text).ok();
        a.msc3202 = extra
            .as_ref()
            .and_then(|v| {
                v.get("org.matrix.msc3202")
                    .and_then(serde_yaml::Value::as_bool)
            })
            .unwrap_or(false);
        a.owner = extra
            .as_ref()
            .and_then(|v| v.get(OWNER_FIELD))
            .map(|o| o.as_str().unwrap_or_default().to_owned());
        Ok(a)
    }
}

/// Reads every `*.yaml` / `*.yml` file of `dir` (in name order). A file that cannot be read
/// or parsed, or that clashes with one loaded before it (id, a token, an exclusive user
/// namespace), is logged with why and skipped.
pub fn load_dir(dir: &Path, server_name: &str) -> Vec<Appservice> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e == "yaml" || e == "yml")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "appservice_dir does not exist: no appservices");
            return Vec::new();
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), "cannot read appservice_dir: {e}");
            return Vec::new();
        }
    };
    files.sort();
    let mut loaded: Vec<Appservice> = Vec::new();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|text| Appservice::from_text(&text, server_name))
            .and_then(|a| match clash(&loaded, &a) {
                Some(why) => Err(why),
                None => Ok(a),
            });
        match parsed {
            Ok(a) => {
                tracing::info!(file = %file.display(), id = a.id(), "loaded appservice registration");
                loaded.push(a);
            }
            Err(why) => {
                let why = why.replace('\n', " ");
                tracing::error!(file = %file.display(), "skipping appservice registration: {why}");
            }
        }
    }
    loaded
}

/// Why `new` cannot sit beside `loaded`, if it cannot.
fn clash(loaded: &[Appservice], new: &Appservice) -> Option<String> {
    clash_any(&loaded.iter().collect::<Vec<_>>(), new)
}

fn clash_any(loaded: &[&Appservice], new: &Appservice) -> Option<String> {
    let (n, nr) = (new, &new.registration);
    for old in loaded.iter().copied() {
        let or = &old.registration;
        if or.id == nr.id {
            return Some(format!("id {:?} is already registered", nr.id));
        }
        if [&or.as_token, &or.hs_token].contains(&&nr.as_token)
            || [&or.as_token, &or.hs_token].contains(&&nr.hs_token)
        {
            return Some(format!("a token is already used by appservice {:?}", or.id));
        }
        if old.sender == n.sender {
            return Some(format!(
                "sender_localpart {:?} is already appservice {:?}'s",
                nr.sender_localpart, or.id
            ));
        }
        // Exclusive user namespaces of two appservices may not overlap. Regexes cannot be
        // intersected in general: an id made from one regex's text (its wildcards and classes
        // replaced by a sample character) that the other matches counts as a clash.
        for (a, b) in [(old, n), (n, old)] {
            let exclusive = a
                .registration
                .namespaces
                .users
                .iter()
                .filter(|p| p.exclusive);
            for p in exclusive {
                let probe = sample_of(&p.regex);
                if b.is_exclusive_user(&probe) {
                    return Some(format!(
                        "its exclusive user namespace overlaps appservice {:?}'s",
                        or.id
                    ));
                }
            }
        }
        if old.is_exclusive_user(n.sender.as_str()) || n.is_exclusive_user(old.sender.as_str()) {
            return Some(format!(
                "its sender is in appservice {:?}'s exclusive namespace (or the reverse)",
                or.id
            ));
        }
    }
    None
}

/// An id that a namespace regex probably matches: its text with anchors, groups and escapes
/// taken out and wildcards or classes replaced by one sample character.
fn sample_of(regex: &str) -> String {
    let mut s = regex
        .trim_start_matches('^')
        .trim_end_matches('$')
        .to_owned();
    for (from, to) in [
        (r"\d+", "1"),
        (r"\d*", "1"),
        (r"\d", "1"),
        (r"\w+", "x"),
        (r"\w*", "x"),
        (r"\w", "x"),
        ("[0-9]+", "1"),
        (".*", "x"),
        (".+", "x"),
        (r"\.", "."),
        ("(?:", ""),
    ] {
        s = s.replace(from, to);
    }
    s.chars()
        .filter(|c| !matches!(c, '(' | ')' | '\\'))
        .collect()
}

/// What a ping or a query got from the appservice.
fn outbound_error(e: &reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::new(
            http::StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ConnectionTimeout,
            "the application service did not answer in time",
        )
    } else {
        Error::new(
            http::StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectionFailed,
            "cannot connect to the application service",
        )
    }
}

/// The loaded appservices, their queues and senders.
pub struct Appservices {
    db: Arc<Db>,
    server_name: String,
    /// The registrations; replaced whole when the admin API adds or removes one, so readers
    /// take a snapshot.
    list: RwLock<Arc<Vec<Arc<Appservice>>>>,
    /// For the operator's registrations (files, the admin API): every range.
    http: GuardedClient,
    /// For registrations a user made ([`Appservice::owner`]): `ip_range_allowlist`.
    http_guarded: GuardedClient,
    /// The next sequence number of each appservice's queue.
    next_seq: Mutex<HashMap<String, u64>>,
    /// Wakes an appservice's sender (a new event).
    wakes: Mutex<HashMap<String, Arc<Notify>>>,
    /// The running sender tasks, stopped when their appservice is removed.
    senders: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// What senders started later need, once [`Appservices::start`] ran.
    started: Mutex<Option<(Weak<Rooms>, Arc<Stream>)>>,
    /// Per room, which appservices (by their place in `list`) have a user among its members:
    /// read once, forgotten at the room's next state event or merge of forks.
    /// By room: the member list it was worked out from, and which appservices have a user in
    /// it.
    member_interest: Mutex<HashMap<OwnedRoomId, MemberInterest>>,
}

impl Appservices {
    /// The appservices of `config.appservice_dir` (none when it is unset) and those added
    /// with the admin API (kept in `appserviceid_registration`).
    pub fn from_config(db: Arc<Db>, config: &Config) -> Result<Self> {
        // The webhooks' registration comes first: a file that clashes with it is skipped.
        let mut list = vec![Appservice::builtin_webhooks(&config.server_name)
            .map_err(|e| Error::internal(format!("the webhooks' registration: {e}")))?];
        if let Some(dir) = &config.appservice_dir {
            for a in load_dir(dir, &config.server_name) {
                match clash(&list, &a) {
                    Some(why) => {
                        tracing::error!(id = a.id(), "skipping appservice registration: {why}")
                    }
                    None => list.push(a),
                }
            }
        }
        for (id, row) in db.scan_prefix(Table::AppserviceidRegistration, b"")? {
            let id = String::from_utf8_lossy(&id).into_owned();
            // The registration as the admin sent it (YAML or JSON).
            let parsed = std::str::from_utf8(&row)
                .map_err(|e| e.to_string())
                .and_then(|text| Appservice::from_text(text, &config.server_name))
                .and_then(|a| match clash(&list, &a) {
                    Some(why) => Err(why),
                    None => Ok(a),
                });
            match parsed {
                Ok(mut a) => {
                    a.added = true;
                    tracing::info!(id, "loaded appservice registration added by an admin");
                    list.push(a);
                }
                Err(why) => tracing::error!(id, "skipping appservice registration: {why}"),
            }
        }
        Self::new(
            db,
            list,
            OutboundGuard::for_appservices(),
            OutboundGuard::from_config(config),
            &config.server_name,
        )
    }

    pub fn new(
        db: Arc<Db>,
        list: Vec<Appservice>,
        operator_guard: OutboundGuard,
        user_guard: OutboundGuard,
        server_name: &str,
    ) -> Result<Self> {
        let http =
            GuardedClient::new(operator_guard, 0, REQUEST_TIMEOUT).map_err(Error::internal)?;
        let http_guarded =
            GuardedClient::new(user_guard, 0, REQUEST_TIMEOUT).map_err(Error::internal)?;
        let mut next_seq = HashMap::new();
        let mut wakes = HashMap::new();
        for a in &list {
            next_seq.insert(a.id().to_owned(), Self::resume_seq(&db, a.id())?);
            wakes.insert(a.id().to_owned(), Arc::new(Notify::new()));
        }
        Ok(Self {
            db,
            server_name: server_name.to_owned(),
            list: RwLock::new(Arc::new(list.into_iter().map(Arc::new).collect())),
            http,
            http_guarded,
            next_seq: Mutex::new(next_seq),
            wakes: Mutex::new(wakes),
            senders: Mutex::default(),
            started: Mutex::default(),
            member_interest: Mutex::default(),
        })
    }

    /// The sequence number after the last one `id` used (queued or delivered).
    fn resume_seq(db: &Db, id: &str) -> Result<u64> {
        let last = db
            .last_with_prefix(Table::AppserviceseqEvent, &QueueKey::prefix(id))?
            .map(|(k, _)| QueueKey::decode(&k).map(|k| k.seq.saturating_add(1)))
            .transpose()?
            .unwrap_or(0);
        let delivered = db
            .get(Table::GlobalValue, &delivered_key(id))?
            .map(|v| paracord_storage::key::decode_u64(&v))
            .transpose()?
            .unwrap_or(0);
        Ok(last.max(delivered))
    }

    /// The registrations now (a snapshot).
    pub fn all(&self) -> Arc<Vec<Arc<Appservice>>> {
        self.list.read().clone()
    }

    /// Whether no appservice but the built-in one is registered.
    pub fn is_empty(&self) -> bool {
        self.list.read().iter().all(|a| a.builtin)
    }

    /// Adds a registration (YAML or JSON) at run time, checked like the files and against
    /// every registration loaded, kept in `appserviceid_registration` so a restart keeps it;
    /// its sender starts at once.
    pub fn add(self: &Arc<Self>, text: &str) -> Result<Arc<Appservice>> {
        let mut a = Appservice::from_text(text, &self.server_name)
            .map_err(|why| Error::invalid_param(format!("bad registration: {why}")))?;
        a.added = true;
        let a = Arc::new(a);
        {
            let mut list = self.list.write();
            let current: Vec<&Appservice> = list.iter().map(|a| a.as_ref()).collect();
            if let Some(why) = clash_any(&current, &a) {
                return Err(Error::invalid_param(why));
            }
            let mut batch = Batch::new();
            batch.put(
                Table::AppserviceidRegistration,
                a.id().as_bytes().to_vec(),
                text.as_bytes().to_vec(),
            );
            self.db.write(batch)?;
            self.next_seq
                .lock()
                .insert(a.id().to_owned(), Self::resume_seq(&self.db, a.id())?);
            self.wakes
                .lock()
                .insert(a.id().to_owned(), Arc::new(Notify::new()));
            let mut next = list.as_ref().clone();
            next.push(a.clone());
            *list = Arc::new(next);
        }
        self.member_interest.lock().clear();
        let started = self.started.lock().clone();
        if let Some((rooms, stream)) = started {
            if let Some(rooms) = rooms.upgrade() {
                self.start_one(&a, rooms, stream);
            }
        }
        tracing::info!(id = a.id(), "appservice registration added");
        Ok(a)
    }

    /// Removes a registration added with the admin API: its sender stops, its queue and
    /// row are deleted (the sequence goes on from where it was should the id come back, so
    /// no transaction id is used twice).
    pub fn remove(&self, id: &str) -> Result<()> {
        {
            let mut list = self.list.write();
            let Some(a) = list.iter().find(|a| a.id() == id && !a.builtin) else {
                return Err(Error::not_found("no application service with this id"));
            };
            if !a.added {
                return Err(Error::invalid_param(
                    "this application service comes from a file in appservice_dir: remove the file and restart",
                ));
            }
            if let Some(task) = self.senders.lock().remove(id) {
                task.abort();
            }
            self.wakes.lock().remove(id);
            let next_seq = self
                .next_seq
                .lock()
                .get(id)
                .copied()
                .unwrap_or(0)
                .max(Self::resume_seq(&self.db, id)?);
            let mut batch = Batch::new();
            for (k, _) in self
                .db
                .scan_prefix(Table::AppserviceseqEvent, &QueueKey::prefix(id))?
            {
                batch.delete(Table::AppserviceseqEvent, k.to_vec());
            }
            batch.delete(Table::GlobalValue, formed_key(id));
            batch.put(
                Table::GlobalValue,
                delivered_key(id),
                next_seq.to_be_bytes().to_vec(),
            );
            batch.delete(Table::AppserviceidRegistration, id.as_bytes().to_vec());
            self.db.write(batch)?;
            let next: Vec<_> = list.iter().filter(|a| a.id() != id).cloned().collect();
            *list = Arc::new(next);
        }
        self.member_interest.lock().clear();
        tracing::info!(id, "appservice registration removed");
        Ok(())
    }

    /// The appservice whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<Arc<Appservice>> {
        // Compared in constant time per registration, so timing does not tell a prefix.
        self.all()
            .iter()
            .filter(|a| !a.builtin)
            .find(|a| {
                let t = a.registration.as_token.as_bytes();
                t.len() == token.len()
                    && t.iter()
                        .zip(token.as_bytes())
                        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                        == 0
            })
            .cloned()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Appservice>> {
        self.all().iter().find(|a| a.id() == id).cloned()
    }

    /// The appservice with an exclusive user namespace that matches `user`.
    pub fn exclusive_user_owner(&self, user: &str) -> Option<Arc<Appservice>> {
        self.all()
            .iter()
            .find(|a| a.is_exclusive_user(user))
            .cloned()
    }

    /// The appservice with an exclusive alias namespace that matches `alias`.
    pub fn exclusive_alias_owner(&self, alias: &str) -> Option<Arc<Appservice>> {
        self.all()
            .iter()
            .find(|a| a.is_exclusive_alias(alias))
            .cloned()
    }

    /// The appservice whose users include `user` (sender or namespace), exclusive first.
    pub fn user_owner(&self, user: &UserId) -> Option<Arc<Appservice>> {
        self.exclusive_user_owner(user.as_str())
            .or_else(|| self.all().iter().find(|a| a.owns_user(user)).cloned())
    }

    /// Whether `user` is never rate limited: an appservice's sender (the spec excludes it),
    /// or a user of an appservice registered with `rate_limited: false`.
    pub fn exempt_from_rate_limits(&self, user: &str) -> bool {
        let list = self.all();
        if list.is_empty() {
            return false;
        }
        let Ok(user) = UserId::parse(user) else {
            return false;
        };
        list.iter()
            .any(|a| a.sender == user || (!a.rate_limited() && a.owns_user(&user)))
    }

    /// Queues `event_id` for every appservice interested in it, in `batch`.
    fn queue(&self, batch: &mut Batch, rooms: &Rooms, room_id: &RoomId, pdu: &Pdu) {
        let list = self.all();
        if list.iter().all(|a| a.registration.url.is_none()) {
            return;
        }
        let by_members = self.member_interest(rooms, room_id, &list);
        self.queue_membership_device_lists(batch, rooms, room_id, pdu, &list);
        for (i, a) in list.iter().enumerate() {
            // `url: null`: the appservice wants no traffic; nothing would ever send the rows.
            if a.registration.url.is_none() {
                continue;
            }
            if !a.interested(rooms, room_id, pdu) && by_members.get(i) != Some(&true) {
                continue;
            }
            self.put_row(batch, a, pdu.event_id.as_bytes().to_vec());
        }
    }

    /// MSC3202 device lists from a membership change: a user who starts sharing a room with
    /// one of an appservice's users is `changed` for it (their devices are new to it), one who
    /// no longer shares any room with them is `left`. Rows in the event's batch; only for
    /// appservices registered with `org.matrix.msc3202`.
    fn queue_membership_device_lists(
        &self,
        batch: &mut Batch,
        rooms: &Rooms,
        room_id: &RoomId,
        pdu: &Pdu,
        list: &Arc<Vec<Arc<Appservice>>>,
    ) {
        if pdu.rejected
            || pdu.kind != ruma::events::TimelineEventType::RoomMember
            || !list
                .iter()
                .any(|a| a.msc3202 && a.registration.url.is_some())
        {
            return;
        }
        let Some(Ok(user)) = pdu.state_key.as_deref().map(UserId::parse) else {
            return;
        };
        let membership = serde_json::from_str::<Value>(pdu.content.get())
            .ok()
            .and_then(|c| {
                c.get("membership")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let joins = match membership.as_deref() {
            Some("join") => true,
            Some("leave" | "ban") => false,
            _ => return,
        };
        // The batch is not written yet: the member list is the one before this event.
        let Ok(before) = rooms.joined_members(room_id) else {
            return;
        };
        let was_joined = before.contains(&user);
        if joins == was_joined {
            // A profile change, or a leave of someone who was not joined.
            return;
        }
        for (i, a) in list.iter().enumerate() {
            if !a.msc3202 || a.registration.url.is_none() {
                continue;
            }
            let theirs_after: Vec<&OwnedUserId> = before
                .iter()
                .filter(|u| **u != user && a.owns_user(u))
                .collect();
            let mut changed: Vec<&UserId> = Vec::new();
            let mut left: Vec<&UserId> = Vec::new();
            if joins {
                if a.owns_user(&user) {
                    changed.extend(
                        before
                            .iter()
                            .filter(|u| !a.owns_user(u))
                            .map(|u| -> &UserId { u }),
                    );
                } else if !theirs_after.is_empty() {
                    changed.push(&user);
                }
            } else if a.owns_user(&user) {
                if theirs_after.is_empty() {
                    for m in before.iter().filter(|u| **u != user && !a.owns_user(u)) {
                        if !self.shares_elsewhere(rooms, room_id, m, i, list) {
                            left.push(m);
                        }
                    }
                }
            } else if !theirs_after.is_empty()
                && !self.shares_elsewhere(rooms, room_id, &user, i, list)
            {
                left.push(&user);
            }
            for (u, is_left) in changed
                .into_iter()
                .map(|u| (u, false))
                .chain(left.into_iter().map(|u| (u, true)))
            {
                let row = QueuedEphemeral {
                    ts: paracord_core::time::now_ms(),
                    droppable: false,
                    event: Value::Null,
                    keys: None,
                    to_device: false,
                    device_list_changed: (!is_left).then(|| u.to_string()),
                    device_list_left: is_left.then(|| u.to_string()),
                };
                let Ok(value) = serde_json::to_vec(&row) else {
                    continue;
                };
                self.put_row(batch, a, value);
            }
        }
    }

    /// Whether `user` is joined to a room other than `except` where appservice `i` of `list`
    /// has a user.
    fn shares_elsewhere(
        &self,
        rooms: &Rooms,
        except: &RoomId,
        user: &UserId,
        i: usize,
        list: &Arc<Vec<Arc<Appservice>>>,
    ) -> bool {
        let Ok(theirs) = rooms.user_rooms(user) else {
            // Unknown: say they still share one (no `left` that may be wrong).
            return true;
        };
        theirs.iter().any(|(room, rec)| {
            **room != *except
                && rec.membership == ruma::events::room::member::MembershipState::Join
                && self
                    .member_interest(rooms, room, list)
                    .get(i)
                    .copied()
                    .unwrap_or(false)
        })
    }

    /// Which appservices have a user among the room's joined members. The answer is kept
    /// with the member list it came from: the rooms' cache hands out a new list after every
    /// membership write, which makes the answer be worked out again.
    fn member_interest(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        list: &Arc<Vec<Arc<Appservice>>>,
    ) -> Arc<Vec<bool>> {
        let Ok(members) = rooms.shared_members(room_id) else {
            return Arc::default();
        };
        if let Some((from, of, known)) = self.member_interest.lock().get(room_id) {
            if Arc::ptr_eq(from, &members) && Arc::ptr_eq(of, list) {
                return known.clone();
            }
        }
        let answer = Arc::new(
            list.iter()
                .map(|a| members.joined.iter().any(|u| a.owns_user(u)))
                .collect::<Vec<_>>(),
        );
        let mut cache = self.member_interest.lock();
        if cache.len() >= MEMBER_CACHE_ROOMS {
            cache.clear();
        }
        cache.insert(room_id.to_owned(), (members, list.clone(), answer.clone()));
        answer
    }

    /// Wakes every sender (events were committed).
    fn wake_all(&self) {
        for w in self.wakes.lock().values() {
            w.notify_one();
        }
    }

    /// Starts one sender task per appservice with a URL; each resumes what its queue holds.
    /// Appservices added later start theirs when added.
    pub fn start(self: &Arc<Self>, rooms: Arc<Rooms>, stream: Arc<Stream>) {
        *self.started.lock() = Some((Arc::downgrade(&rooms), stream.clone()));
        for a in self.all().iter() {
            self.start_one(a, rooms.clone(), stream.clone());
        }
    }

    fn start_one(self: &Arc<Self>, a: &Arc<Appservice>, rooms: Arc<Rooms>, stream: Arc<Stream>) {
        if a.registration.url.is_none() {
            return;
        }
        let Some(wake) = self.wakes.lock().get(a.id()).cloned() else {
            return;
        };
        let me = self.clone();
        let id = a.id().to_owned();
        let a = a.clone();
        let task = tokio::spawn(async move { me.run_sender(a, rooms, stream, wake).await });
        if let Some(old) = self.senders.lock().insert(id, task) {
            old.abort();
        }
    }

    /// The oldest rows of `appservice`'s queue, at most [`TXN_EVENTS`].
    fn oldest_rows(&self, appservice: &str) -> Result<Vec<Row>> {
        let prefix = QueueKey::prefix(appservice);
        let rows = self.db.scan(
            Table::AppserviceseqEvent,
            &prefix,
            &prefix,
            None,
            false,
            TXN_EVENTS,
        )?;
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect())
    }

    /// The transaction `appservice` is to be sent next: its id and rows. It is the one formed
    /// before (its sequence numbers persisted in `global_value`, so a retry, also after a
    /// restart, carries the same id and the same rows, never more), or a new one of the oldest
    /// queued rows, persisted before it is first sent. Typing and presence rows older than
    /// [`EPHEMERAL_MAX_AGE`] are dropped when a transaction is formed. `None` when the queue
    /// is empty.
    fn form(&self, appservice: &str) -> Result<Option<(String, Vec<Row>)>> {
        if let Some(seqs) = self.formed(appservice)? {
            let mut rows = Vec::with_capacity(seqs.len());
            for seq in &seqs {
                let key = QueueKey {
                    appservice,
                    seq: *seq,
                }
                .encode();
                if let Some(v) = self.db.get(Table::AppserviceseqEvent, &key)? {
                    rows.push((key, v));
                }
            }
            if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
                if !rows.is_empty() {
                    return Ok(Some((format!("{first}-{last}"), rows)));
                }
            }
            // Its rows are gone (they are deleted with the marker, so only by hand).
            let mut batch = Batch::new();
            batch.delete(Table::GlobalValue, formed_key(appservice));
            self.db.write(batch)?;
        }
        let now = paracord_core::time::now_ms();
        loop {
            let rows = self.oldest_rows(appservice)?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut batch = Batch::new();
            let mut kept = Vec::with_capacity(rows.len());
            let mut seqs = Vec::with_capacity(rows.len() * 8);
            for (k, v) in rows {
                if QueuedEphemeral::is_stale(&v, now) {
                    batch.delete(Table::AppserviceseqEvent, k);
                    continue;
                }
                seqs.extend_from_slice(&QueueKey::decode(&k)?.seq.to_be_bytes());
                kept.push((k, v));
            }
            let (Some((first, _)), Some((last, _))) = (kept.first(), kept.last()) else {
                // Only stale rows: dropped, look again.
                self.db.write(batch)?;
                continue;
            };
            let txn_id = format!(
                "{}-{}",
                QueueKey::decode(first)?.seq,
                QueueKey::decode(last)?.seq
            );
            batch.put(Table::GlobalValue, formed_key(appservice), seqs);
            self.db.write(batch)?;
            return Ok(Some((txn_id, kept)));
        }
    }

    /// The transaction `a` is to be sent next (see [`Self::form`]), with its body.
    fn next_transaction(&self, a: &Appservice, rooms: &Rooms) -> Result<Option<Pending>> {
        let Some((txn_id, rows)) = self.form(a.id())? else {
            return Ok(None);
        };
        let mut keys = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        let (mut ephemeral, mut to_device) = (Vec::new(), Vec::new());
        let (mut otk_counts, mut fallback) = (json!({}), json!({}));
        let mut changed: Vec<String> = Vec::new();
        let mut left: Vec<String> = Vec::new();
        for (k, v) in rows {
            if let Some(q) = QueuedEphemeral::decode(&v) {
                match q.keys {
                    // The latest counts of a device win.
                    Some(c) => {
                        otk_counts[&c.user][&c.device] = json!(c.counts);
                        fallback[&c.user][&c.device] = json!(c.fallback);
                    }
                    None if q.to_device => to_device.push(q.event),
                    None if q.device_list_changed.is_some() => {
                        // The latest news of a user wins: changed after left is changed.
                        if let Some(u) = q.device_list_changed {
                            left.retain(|l| *l != u);
                            changed.push(u);
                        }
                    }
                    None if q.device_list_left.is_some() => {
                        if let Some(u) = q.device_list_left {
                            changed.retain(|c| *c != u);
                            left.push(u);
                        }
                    }
                    None => ephemeral.push(q.event),
                }
            } else {
                let event_id = ruma::EventId::parse(String::from_utf8_lossy(&v).as_ref())
                    .map_err(Error::internal)?;
                let event = match rooms.short_id(&event_id)? {
                    Some(short) => rooms.client_event_plain(short, None)?.map(|(_, e)| e),
                    None => None,
                };
                if let Some(e) = event {
                    events.push(e);
                }
            }
            keys.push(k);
        }
        let mut body = json!({ "events": events });
        if !ephemeral.is_empty() {
            body["ephemeral"] = ephemeral.into();
        }
        if !to_device.is_empty() {
            body[TO_DEVICE_FIELD] = to_device.into();
        }
        if !changed.is_empty() || !left.is_empty() {
            changed.sort();
            changed.dedup();
            left.sort();
            left.dedup();
            body["org.matrix.msc3202.device_lists"] = json!({ "changed": changed, "left": left });
        }
        if otk_counts.as_object().is_some_and(|o| !o.is_empty()) {
            body["org.matrix.msc3202.device_one_time_keys_count"] = otk_counts;
            body["org.matrix.msc3202.device_unused_fallback_key_types"] = fallback;
        }
        Ok(Some(Pending { txn_id, keys, body }))
    }

    /// The sequence numbers of `appservice`'s formed, not yet accepted transaction.
    fn formed(&self, appservice: &str) -> Result<Option<Vec<u64>>> {
        let Some(v) = self.db.get(Table::GlobalValue, &formed_key(appservice))? else {
            return Ok(None);
        };
        v.chunks(8)
            .map(paracord_storage::key::decode_u64)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(Into::into)
    }

    /// Deletes an accepted transaction's rows and marker and moves the delivered mark past it,
    /// in one write.
    fn accepted(&self, appservice: &str, keys: &[Vec<u8>]) -> Result<()> {
        let mut batch = Batch::new();
        let mut after = 0;
        for k in keys {
            if let Ok(q) = QueueKey::decode(k) {
                after = q.seq.saturating_add(1).max(after);
            }
            batch.delete(Table::AppserviceseqEvent, k.clone());
        }
        if let Some(seqs) = self.formed(appservice)? {
            if let Some(last) = seqs.iter().max() {
                after = after.max(last.saturating_add(1));
            }
        }
        let done = self
            .db
            .get(Table::GlobalValue, &delivered_key(appservice))?
            .map(|v| paracord_storage::key::decode_u64(&v))
            .transpose()?
            .unwrap_or(0);
        batch.put(
            Table::GlobalValue,
            delivered_key(appservice),
            after.max(done).to_be_bytes().to_vec(),
        );
        batch.delete(Table::GlobalValue, formed_key(appservice));
        self.db.write(batch)?;
        Ok(())
    }

    /// Whether an appservice takes the key counts of `user`'s devices (MSC3202).
    fn wants_key_counts(&self, user: &UserId) -> bool {
        self.all()
            .iter()
            .any(|a| a.msc3202 && a.registration.url.is_some() && a.owns_user(user))
    }

    /// Queues a to-device message for the appservices with `org.matrix.msc3202` that own the
    /// user (the message also stays in the device's inbox for `/sync`).
    fn queue_to_device(&self, user: &UserId, device: &str, mut event: Value) {
        let list = self.all();
        let wanted: Vec<&Arc<Appservice>> = list
            .iter()
            .filter(|a| a.msc3202 && a.registration.url.is_some() && a.owns_user(user))
            .collect();
        if wanted.is_empty() {
            return;
        }
        event["to_user_id"] = json!(user);
        event["to_device_id"] = json!(device);
        let row = QueuedEphemeral {
            ts: paracord_core::time::now_ms(),
            droppable: false,
            event,
            keys: None,
            to_device: true,
            device_list_changed: None,
            device_list_left: None,
        };
        let Ok(value) = serde_json::to_vec(&row) else {
            return;
        };
        self.put_rows(&wanted, &value);
    }

    /// Queues a device list change of `user` for the appservices with `org.matrix.msc3202`
    /// that own `user` or one of the users sharing a room with them.
    fn queue_device_list_change(
        &self,
        user: &UserId,
        sharing: &std::collections::HashSet<OwnedUserId>,
    ) {
        let list = self.all();
        let wanted: Vec<&Arc<Appservice>> = list
            .iter()
            .filter(|a| a.msc3202 && a.registration.url.is_some())
            .filter(|a| a.owns_user(user) || sharing.iter().any(|u| a.owns_user(u)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let row = QueuedEphemeral {
            ts: paracord_core::time::now_ms(),
            droppable: false,
            event: Value::Null,
            keys: None,
            to_device: false,
            device_list_changed: Some(user.to_string()),
            device_list_left: None,
        };
        let Ok(value) = serde_json::to_vec(&row) else {
            return;
        };
        self.put_rows(&wanted, &value);
    }

    /// Queues a device's key counts for the appservices with `org.matrix.msc3202` that own
    /// the user.
    fn queue_key_counts(&self, counts: KeyCounts) {
        let Ok(user) = UserId::parse(counts.user.as_str()) else {
            return;
        };
        let list = self.all();
        let wanted: Vec<&Arc<Appservice>> = list
            .iter()
            .filter(|a| a.msc3202 && a.registration.url.is_some() && a.owns_user(&user))
            .collect();
        let row = QueuedEphemeral {
            ts: paracord_core::time::now_ms(),
            droppable: false,
            event: Value::Null,
            keys: Some(counts),
            to_device: false,
            device_list_changed: None,
            device_list_left: None,
        };
        let Ok(value) = serde_json::to_vec(&row) else {
            return;
        };
        self.put_rows(&wanted, &value);
    }

    /// Writes `value` as the next row of each of `wanted`'s queues and wakes their senders.
    /// Adds a row (an event id, or queued ephemeral JSON) to `a`'s queue in `batch`, under
    /// the next sequence number.
    fn put_row(&self, batch: &mut Batch, a: &Appservice, value: Vec<u8>) {
        let seq = {
            let mut next = self.next_seq.lock();
            let n = next.entry(a.id().to_owned()).or_insert(0);
            let seq = *n;
            *n = n.saturating_add(1);
            seq
        };
        let key = QueueKey {
            appservice: a.id(),
            seq,
        };
        batch.put(Table::AppserviceseqEvent, key.encode(), value);
    }

    fn put_rows(&self, wanted: &[&Arc<Appservice>], value: &[u8]) {
        if wanted.is_empty() {
            return;
        }
        let mut batch = Batch::new();
        for a in wanted {
            self.put_row(&mut batch, a, value.to_vec());
        }
        if let Err(e) = self.db.write(batch) {
            tracing::warn!("cannot queue ephemeral data for appservices: {e}");
            return;
        }
        for a in wanted {
            if let Some(w) = self.wakes.lock().get(a.id()) {
                w.notify_one();
            }
        }
    }

    /// Queues typing, a receipt or presence for the appservices registered with
    /// `receive_ephemeral` that are interested in it: typing and receipts of a room in their
    /// rooms namespace or with one of their users among its members (a private receipt only
    /// for their own users), presence of their users or of users who share a room with one.
    pub fn queue_ephemeral(&self, update: &EphemeralUpdate<'_>) {
        let owns_any = |a: &Appservice, users: &[OwnedUserId]| users.iter().any(|u| a.owns_user(u));
        let list = self.all();
        let wanted: Vec<&Arc<Appservice>> = list
            .iter()
            .filter(|a| a.receive_ephemeral && a.registration.url.is_some())
            .filter(|a| match update.kind {
                EphemeralKind::Receipt { private: true } => a.owns_user(update.user),
                EphemeralKind::Typing | EphemeralKind::Receipt { private: false } => {
                    a.owns_user(update.user)
                        || update
                            .room
                            .is_some_and(|r| matches(&a.rooms, r.as_str(), false))
                        || owns_any(a, update.audience)
                }
                EphemeralKind::Presence => a.owns_user(update.user) || owns_any(a, update.audience),
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let row = QueuedEphemeral {
            ts: paracord_core::time::now_ms(),
            droppable: update.kind != EphemeralKind::Receipt { private: false }
                && update.kind != EphemeralKind::Receipt { private: true },
            event: update.event.clone(),
            keys: None,
            to_device: false,
            device_list_changed: None,
            device_list_left: None,
        };
        let Ok(value) = serde_json::to_vec(&row) else {
            return;
        };
        self.put_rows(&wanted, &value);
    }

    async fn run_sender(
        self: Arc<Self>,
        a: Arc<Appservice>,
        rooms: Arc<Rooms>,
        stream: Arc<Stream>,
        wake: Arc<Notify>,
    ) {
        let shutdown = stream.notifier().shutting_down();
        tokio::pin!(shutdown);
        // The transaction being delivered: kept, with its id, until it is accepted.
        let mut pending: Option<Pending> = None;
        let mut failures: u32 = 0;
        loop {
            if pending.is_none() {
                match self.next_transaction(&a, &rooms) {
                    Ok(None) => {
                        tokio::select! {
                            () = wake.notified() => continue,
                            () = &mut shutdown => return,
                        }
                    }
                    Ok(Some(p)) => pending = Some(p),
                    Err(e) => {
                        tracing::error!(
                            appservice = a.id(),
                            "cannot read the appservice queue: {e}"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(RETRY_MAX) => continue,
                            () = &mut shutdown => return,
                        }
                    }
                }
            }
            let Some(p) = &pending else {
                continue;
            };
            match self.send_transaction(&a, &p.txn_id, &p.body).await {
                Ok(()) => {
                    failures = 0;
                    if let Err(e) = self.accepted(a.id(), &p.keys) {
                        tracing::error!(
                            appservice = a.id(),
                            "cannot dequeue a delivered transaction: {e}"
                        );
                    }
                    pending = None;
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    let wait = RETRY_BASE
                        .saturating_mul(1u32 << failures.min(16).saturating_sub(1))
                        .min(RETRY_MAX);
                    tracing::warn!(
                        appservice = a.id(),
                        txn = %p.txn_id,
                        retry_in_ms = wait.as_millis() as u64,
                        "appservice transaction failed: {why}"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => return,
                    }
                }
            }
        }
    }

    /// The client for requests to `a`: the operator's registrations may reach any range,
    /// a user's only what the allowlist permits.
    fn client(&self, a: &Appservice) -> &GuardedClient {
        if a.owner.is_some() {
            &self.http_guarded
        } else {
            &self.http
        }
    }

    /// `PUT {url}/_matrix/app/v1/transactions/{txnId}`.
    async fn send_transaction(
        &self,
        a: &Appservice,
        txn_id: &str,
        body: &Value,
    ) -> Result<(), String> {
        let url = a
            .url(&format!(
                "/_matrix/app/v1/transactions/{}",
                crate::percent_encode(txn_id)
            ))
            .ok_or("no url")?
            .map_err(|e| e.to_string())?;
        let resp = self
            .client(a)
            .request(reqwest::Method::PUT, url)
            .map_err(|r| r.to_string())?
            .bearer_auth(&a.registration.hs_token)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }

    /// `POST {url}/_matrix/app/v1/ping` for `a`, answering how long it took (ms).
    pub async fn ping(&self, a: &Appservice, transaction_id: Option<&str>) -> Result<u64> {
        let Some(url) = a.url("/_matrix/app/v1/ping") else {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::UrlNotSet,
                "the application service has no url",
            ));
        };
        let mut body = json!({});
        if let Some(t) = transaction_id {
            body["transaction_id"] = t.into();
        }
        let started = std::time::Instant::now();
        let resp = self
            .client(a)
            .request(reqwest::Method::POST, url?)
            .map_err(|r| {
                tracing::warn!(
                    appservice = a.id(),
                    "ping refused by the outbound guard: {r}"
                );
                Error::new(
                    http::StatusCode::BAD_GATEWAY,
                    ErrorKind::ConnectionFailed,
                    "cannot connect to the application service",
                )
            })?
            .bearer_auth(&a.registration.hs_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| outbound_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let body: String = text.chars().take(MAX_ERROR_BODY).collect();
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                ErrorKind::BadStatus {
                    status: status.as_u16(),
                    body,
                },
                "the application service answered with an error",
            ));
        }
        Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Asks the appservice that owns `user` whether it exists (`GET /_matrix/app/v1/users/`):
    /// `true` when it answered 200 (it should have created the user then).
    pub async fn query_user(&self, user: &UserId) -> bool {
        let Some(a) = self.user_owner(user) else {
            return false;
        };
        self.query(
            &a,
            &format!(
                "/_matrix/app/v1/users/{}",
                crate::percent_encode(user.as_str())
            ),
        )
        .await
    }

    /// Asks the appservices whose alias namespaces match `alias`
    /// (`GET /_matrix/app/v1/rooms/`): `true` when one answered 200 (it created the alias).
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        let path = format!(
            "/_matrix/app/v1/rooms/{}",
            crate::percent_encode(alias.as_str())
        );
        for a in self.all().iter().filter(|a| a.owns_alias(alias.as_str())) {
            if self.query(a, &path).await {
                return true;
            }
        }
        false
    }

    /// The protocols some registration lists (`protocols`), sorted, without repeats.
    pub fn protocols(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .all()
            .iter()
            .flat_map(|a| a.registration.protocols.iter().flatten().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn with_protocol(&self, protocol: &str) -> Vec<Arc<Appservice>> {
        self.all()
            .iter()
            .filter(|a| {
                a.registration
                    .protocols
                    .as_ref()
                    .is_some_and(|p| p.iter().any(|p| p == protocol))
            })
            .cloned()
            .collect()
    }

    /// The metadata of `protocol` (`GET /_matrix/app/v1/thirdparty/protocol/{protocol}`),
    /// merged over the appservices that registered it: the first answer's fields, every
    /// answer's instances (each with an `instance_id` of its appservice and network). `None`
    /// when no appservice registered it or none of them answered.
    pub async fn thirdparty_protocol(&self, protocol: &str) -> Option<Protocol> {
        let path = format!(
            "/_matrix/app/v1/thirdparty/protocol/{}",
            crate::percent_encode(protocol)
        );
        let mut merged: Option<Protocol> = None;
        for a in self.with_protocol(protocol) {
            let Some(answer) = self.get_json(&a, &path, &[]).await else {
                continue;
            };
            let Ok(mut p) = serde_json::from_value::<Protocol>(answer) else {
                tracing::info!(
                    appservice = a.id(),
                    protocol,
                    "bad third-party protocol answer"
                );
                continue;
            };
            for i in &mut p.instances {
                if i.instance_id.is_none() {
                    i.instance_id = Some(format!("{}|{}", a.id(), i.network_id));
                }
            }
            match &mut merged {
                Some(m) => m.instances.append(&mut p.instances),
                None => merged = Some(p),
            }
        }
        merged
    }

    /// Third-party locations or users (`kind` is `location` or `user`): of `protocol` with the
    /// search `fields`, asked of the appservices that registered it, or (`protocol` `None`)
    /// by `alias` / `userid` in `fields`, asked of every appservice with a protocol. Answers
    /// merged; an appservice that is down or answers nonsense adds nothing.
    pub async fn thirdparty_lookup(
        &self,
        kind: &str,
        protocol: Option<&str>,
        fields: &[(String, String)],
    ) -> Vec<Value> {
        let (path, asked): (String, Vec<Arc<Appservice>>) = match protocol {
            Some(p) => (
                format!(
                    "/_matrix/app/v1/thirdparty/{kind}/{}",
                    crate::percent_encode(p)
                ),
                self.with_protocol(p),
            ),
            None => (
                format!("/_matrix/app/v1/thirdparty/{kind}"),
                self.all()
                    .iter()
                    .filter(|a| {
                        a.registration
                            .protocols
                            .as_ref()
                            .is_some_and(|p| !p.is_empty())
                    })
                    .cloned()
                    .collect(),
            ),
        };
        let mut out = Vec::new();
        for a in asked {
            if let Some(Value::Array(items)) = self.get_json(&a, &path, fields).await {
                out.extend(items);
            }
        }
        out
    }

    /// `GET {url}{path}?{query}` of `a` with its `hs_token`: the JSON of a 200 answer.
    async fn get_json(
        &self,
        a: &Appservice,
        path: &str,
        query: &[(String, String)],
    ) -> Option<Value> {
        let Some(Ok(mut url)) = a.url(path) else {
            return None;
        };
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let request = self.client(a).request(reqwest::Method::GET, url).ok()?;
        match request.bearer_auth(&a.registration.hs_token).send().await {
            Ok(resp) if resp.status().is_success() => resp.json().await.ok(),
            Ok(resp) => {
                tracing::info!(appservice = a.id(), status = %resp.status(), "appservice lookup refused");
                None
            }
            Err(e) => {
                tracing::info!(appservice = a.id(), "appservice lookup failed: {e}");
                None
            }
        }
    }

    async fn query(&self, a: &Appservice, path: &str) -> bool {
        let Some(Ok(url)) = a.url(path) else {
            return false;
        };
        let Ok(request) = self.client(a).request(reqwest::Method::GET, url) else {
            return false;
        };
        match request.bearer_auth(&a.registration.hs_token).send().await {
            Ok(resp) => resp.status().is_success(),
            Err(e) => {
                tracing::info!(appservice = a.id(), "appservice query failed: {e}");
                false
            }
        }
    }
}

/// The observer that queues accepted events for the appservices interested in them.
pub struct AppserviceObserver {
    appservices: Arc<Appservices>,
    rooms: Weak<Rooms>,
}

impl AppserviceObserver {
    pub fn new(appservices: Arc<Appservices>, rooms: Weak<Rooms>) -> Self {
        Self { appservices, rooms }
    }
}

impl EventObserver for AppserviceObserver {
    fn index(&self, batch: &mut Batch, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        if self.appservices.is_empty() {
            return Ok(());
        }
        if let Some(rooms) = self.rooms.upgrade() {
            self.appservices.queue(batch, &rooms, room_id, pdu);
        }
        Ok(())
    }

    fn committed(
        &self,
        _rooms: &Arc<Rooms>,
        _room_id: &RoomId,
        _pdu: &Pdu,
        _notifications: &[Notification],
    ) -> Option<crate::rooms::hooks::FollowUp> {
        self.appservices.wake_all();
        None
    }
}

impl DeviceObserver for AppserviceObserver {
    fn wants(&self, user: &UserId) -> bool {
        self.appservices.wants_key_counts(user)
    }

    fn to_device(&self, user: &UserId, device: &str, event: Value) {
        self.appservices.queue_to_device(user, device, event);
    }

    fn device_list_changed(&self, user: &UserId, sharing: &std::collections::HashSet<OwnedUserId>) {
        if self.appservices.all().iter().any(|a| a.msc3202) {
            self.appservices.queue_device_list_change(user, sharing);
        }
    }

    fn counts_changed(
        &self,
        user: &UserId,
        device: &str,
        counts: &std::collections::BTreeMap<String, u64>,
        unused_fallback: &[String],
    ) {
        self.appservices.queue_key_counts(KeyCounts {
            user: user.to_string(),
            device: device.to_owned(),
            counts: counts.clone(),
            fallback: unused_fallback.to_vec(),
        });
    }
}

impl EphemeralObserver for AppserviceObserver {
    fn listening(&self) -> bool {
        self.appservices.all().iter().any(|a| a.receive_ephemeral)
    }

    fn changed(&self, update: &EphemeralUpdate<'_>) {
        // Presence set without the users who share a room (`/sync?set_presence=`): worked out
        // here, only when an appservice takes ephemeral data.
        if update.kind == EphemeralKind::Presence
            && update.audience.is_empty()
            && self.appservices.all().iter().any(|a| a.receive_ephemeral)
        {
            if let Some(rooms) = self.rooms.upgrade() {
                let mut audience = Vec::new();
                for (room, rec) in rooms.user_rooms(update.user).unwrap_or_default() {
                    if rec.membership == ruma::events::room::member::MembershipState::Join {
                        if let Ok(members) = rooms.shared_members(&room) {
                            audience.extend(members.joined.iter().cloned());
                        }
                    }
                }
                audience.sort();
                audience.dedup();
                self.appservices.queue_ephemeral(&EphemeralUpdate {
                    kind: update.kind,
                    event: update.event.clone(),
                    room: update.room,
                    user: update.user,
                    audience: &audience,
                });
                return;
            }
        }
        self.appservices.queue_ephemeral(update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(yaml: &str) -> Result<Appservice, String> {
        Appservice::from_text(yaml, "example.org")
    }

    const BRIDGE: &str = "id: bridge\nurl: http://127.0.0.1:9000\nas_token: a1\nhs_token: h1\nsender_localpart: bridgebot\nnamespaces:\n  users:\n    - regex: '@bridge_.*:example\\.org'\n      exclusive: true\n  aliases:\n    - regex: '#bridge_.*:example\\.org'\n      exclusive: true\n";

    #[test]
    fn queue_key_round_trips_and_sorts() {
        let a = QueueKey {
            appservice: "irc",
            seq: 2,
        };
        let b = QueueKey {
            appservice: "irc",
            seq: 256,
        };
        assert_eq!(QueueKey::decode(&a.encode()).unwrap(), a);
        assert!(a.encode() < b.encode());
        assert!(a.encode().starts_with(&QueueKey::prefix("irc")));
        assert!(!a.encode().starts_with(&QueueKey::prefix("ir")));
    }

    #[test]
    fn namespaces_match_whole_ids() {
        let a = reg(BRIDGE).unwrap();
        assert!(a.owns_user(&UserId::parse("@bridge_x:example.org").unwrap()));
        assert!(a.owns_user(&UserId::parse("@bridgebot:example.org").unwrap()));
        assert!(!a.owns_user(&UserId::parse("@xbridge_x:example.org").unwrap()));
        assert!(!a.is_exclusive_user("@bridge_x:example.org.evil"));
        assert!(a.is_exclusive_alias("#bridge_1:example.org"));
        assert!(!a.owns_alias("#other:example.org"));
    }

    /// The operator's registrations reach an appservice on loopback without an allowlist;
    /// a registration a user made (`chat.paracord.owner`) does not: its URL is the user's
    /// choice, so the outbound guard's defaults hold for it.
    #[tokio::test]
    async fn only_the_operators_registrations_reach_private_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            }
        });
        let text = |id: &str, owner: &str| {
            format!(
                "id: {id}\nurl: http://127.0.0.1:{port}\nas_token: a_{id}\nhs_token: h_{id}\n\
                 sender_localpart: {id}bot\n{owner}namespaces:\n  users: []\n"
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let services = Appservices::new(
            db,
            vec![
                reg(&text("ops", "")).unwrap(),
                reg(&text("mine", "chat.paracord.owner: '@alice:example.org'\n")).unwrap(),
            ],
            OutboundGuard::for_appservices(),
            OutboundGuard::new(&[]),
            "example.org",
        )
        .unwrap();
        let all = services.all();
        assert_eq!(all[1].owner.as_deref(), Some("@alice:example.org"));
        services.ping(&all[0], Some("t")).await.unwrap();
        let refused = services.ping(&all[1], Some("t")).await.unwrap_err();
        assert_eq!(
            refused.classify().0,
            http::StatusCode::BAD_GATEWAY,
            "{refused:?}"
        );
    }

    /// Transaction ids are made of sequence numbers: a restart must never hand out one
    /// already used, whether its rows are still queued or were delivered and deleted.
    #[test]
    fn sequences_resume_past_queued_and_delivered_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let guard = OutboundGuard::new(&[]);
        let open = |db: &Arc<Db>| {
            Appservices::new(
                db.clone(),
                vec![reg(BRIDGE).unwrap()],
                guard.clone(),
                guard.clone(),
                "example.org",
            )
            .unwrap()
        };
        assert_eq!(open(&db).next_seq.lock()["bridge"], 0);
        let mut batch = Batch::new();
        for seq in [4, 7] {
            let key = QueueKey {
                appservice: "bridge",
                seq,
            };
            batch.put(Table::AppserviceseqEvent, key.encode(), b"$e".to_vec());
        }
        db.write(batch).unwrap();
        assert_eq!(open(&db).next_seq.lock()["bridge"], 8);
        // Everything delivered (rows gone), the marker says where to go on.
        let mut batch = Batch::new();
        for seq in [4, 7] {
            let key = QueueKey {
                appservice: "bridge",
                seq,
            };
            batch.delete(Table::AppserviceseqEvent, key.encode());
        }
        batch.put(
            Table::GlobalValue,
            delivered_key("bridge"),
            8u64.to_be_bytes().to_vec(),
        );
        db.write(batch).unwrap();
        assert_eq!(open(&db).next_seq.lock()["bridge"], 8);
    }

    /// Paracord issue 17: a formed transaction is fixed. Retried after a restart, it has the
    /// same id and rows, not the rows queued since; the next one starts after it.
    #[test]
    fn a_formed_transaction_survives_a_restart_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let guard = OutboundGuard::new(&[]);
        let open = |db: &Arc<Db>| {
            Appservices::new(
                db.clone(),
                vec![reg(BRIDGE).unwrap()],
                guard.clone(),
                guard.clone(),
                "example.org",
            )
            .unwrap()
        };
        let put = |seqs: std::ops::Range<u64>| {
            let mut batch = Batch::new();
            for seq in seqs {
                let key = QueueKey {
                    appservice: "bridge",
                    seq,
                };
                batch.put(Table::AppserviceseqEvent, key.encode(), format!("$e{seq}"));
            }
            db.write(batch).unwrap();
        };
        put(0..3);
        let first = open(&db).form("bridge").unwrap().unwrap();
        assert_eq!((first.0.as_str(), first.1.len()), ("0-2", 3));
        // More events arrive, the server restarts: the same transaction comes back.
        put(3..6);
        let services = open(&db);
        let again = services.form("bridge").unwrap().unwrap();
        assert_eq!(again, first);
        let keys: Vec<_> = again.1.iter().map(|(k, _)| k.clone()).collect();
        services.accepted("bridge", &keys).unwrap();
        let next = open(&db).form("bridge").unwrap().unwrap();
        assert_eq!((next.0.as_str(), next.1.len()), ("3-5", 3));
        assert_eq!(next.1[0].1, b"$e3".to_vec());
        let keys: Vec<_> = next.1.iter().map(|(k, _)| k.clone()).collect();
        let services = open(&db);
        services.accepted("bridge", &keys).unwrap();
        assert!(services.form("bridge").unwrap().is_none());
        assert_eq!(open(&db).next_seq.lock()["bridge"], 6);
    }

    /// MSC2409: stale typing is dropped when a transaction is formed, receipts are kept, and
    /// the unstable registration spelling turns ephemeral data on.
    #[test]
    fn stale_typing_is_dropped_receipts_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let yaml = format!("{BRIDGE}de.sorunome.msc2409.push_ephemeral: true\n");
        let services = Appservices::new(
            db.clone(),
            vec![reg(&yaml).unwrap()],
            OutboundGuard::new(&[]),
            OutboundGuard::new(&[]),
            "example.org",
        )
        .unwrap();
        assert!(services.all()[0].receive_ephemeral);
        let room = ruma::room_id!("!r:example.org");
        let user = UserId::parse("@bridge_a:example.org").unwrap();
        for kind in [
            EphemeralKind::Typing,
            EphemeralKind::Receipt { private: false },
        ] {
            services.queue_ephemeral(&EphemeralUpdate {
                kind,
                event: json!({ "type": "x", "room_id": room }),
                room: Some(room),
                user: &user,
                audience: &[],
            });
        }
        // Both made old.
        let mut batch = Batch::new();
        for (k, v) in services.oldest_rows("bridge").unwrap() {
            let mut q = QueuedEphemeral::decode(&v).unwrap();
            q.ts = 0;
            batch.put(
                Table::AppserviceseqEvent,
                k,
                serde_json::to_vec(&q).unwrap(),
            );
        }
        db.write(batch).unwrap();
        let (txn, rows) = services.form("bridge").unwrap().unwrap();
        assert_eq!(txn, "1-1");
        assert!(!QueuedEphemeral::decode(&rows[0].1).unwrap().droppable);
        assert_eq!(services.oldest_rows("bridge").unwrap().len(), 1);
        // Without the flag nothing is queued.
        let plain = Appservices::new(
            db,
            vec![reg(BRIDGE).unwrap()],
            OutboundGuard::new(&[]),
            OutboundGuard::new(&[]),
            "example.org",
        )
        .unwrap();
        assert!(!plain.all()[0].receive_ephemeral);
    }

    #[test]
    fn bad_registrations_say_why() {
        assert!(reg("id: x\n").unwrap_err().contains("missing field"));
        let bad_regex = BRIDGE.replace("'@bridge_.*", "'@bridge_(");
        assert!(reg(&bad_regex).unwrap_err().contains("namespaces.users"));
        let null_url = BRIDGE.replace("url: http://127.0.0.1:9000", "url: null");
        assert!(reg(&null_url).unwrap().registration.url.is_none());
        let empty_url = BRIDGE.replace("url: http://127.0.0.1:9000", "url: ''");
        assert!(reg(&empty_url).unwrap().registration.url.is_none());
        let bad_url = BRIDGE.replace("url: http://127.0.0.1:9000", "url: 'not a url'");
        assert!(reg(&bad_url).unwrap_err().contains("url"));
    }

    #[test]
    fn clashes_are_refused() {
        let a = reg(BRIDGE).unwrap();
        let same_id = reg(&BRIDGE
            .replace("a1", "a2")
            .replace("h1", "h2")
            .replace("bridgebot", "b2")
            .replace("@bridge_", "@other_"))
        .unwrap();
        assert!(clash(std::slice::from_ref(&a), &same_id)
            .unwrap()
            .contains("id"));
        let same_token = reg(&BRIDGE
            .replace("id: bridge", "id: b2")
            .replace("h1", "h2")
            .replace("bridgebot", "b2")
            .replace("@bridge_", "@other_"))
        .unwrap();
        assert!(clash(std::slice::from_ref(&a), &same_token)
            .unwrap()
            .contains("token"));
        let overlap = reg(&BRIDGE
            .replace("id: bridge", "id: b2")
            .replace("a1", "a2")
            .replace("h1", "h2")
            .replace("bridgebot", "b2"))
        .unwrap();
        assert!(clash(std::slice::from_ref(&a), &overlap)
            .unwrap()
            .contains("namespace"));
        // A narrower namespace inside the other, with a port pattern.
        let ported = |id: &str, users: &str| {
            reg(&BRIDGE
                .replace("id: bridge", &format!("id: {id}"))
                .replace("a1", &format!("a_{id}"))
                .replace("h1", &format!("h_{id}"))
                .replace("bridgebot", &format!("{id}bot"))
                .replace(r"'@bridge_.*:example\.org'", users))
            .unwrap()
        };
        let wide = ported("wide", r"'@irc_.*:localhost:\d+'");
        let narrow = ported("narrow", r"'@irc_libera_.*:localhost:\d+'");
        assert!(clash(std::slice::from_ref(&wide), &narrow).is_some());
        assert!(clash(std::slice::from_ref(&narrow), &wide).is_some());
        let apart = ported("apart", r"'@xmpp_.*:localhost:\d+'");
        assert!(clash(std::slice::from_ref(&wide), &apart).is_none());
        let fine = reg(&BRIDGE
            .replace("id: bridge", "id: b2")
            .replace("a1", "a2")
            .replace("h1", "h2")
            .replace("bridgebot", "b2")
            .replace("@bridge_", "@other_"))
        .unwrap();
        assert!(clash(std::slice::from_ref(&a), &fine).is_none());
    }
}
