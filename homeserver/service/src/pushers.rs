//! Pushers and the push-gateway sender: each notification of a user with HTTP pushers is
//! POSTed to their gateway (push gateway API `/_matrix/push/v1/notify`), with retries.
//!
//! Gateways are chosen by users, so they are fetched like everything else the server fetches
//! on someone's say: through the outbound guard ([`crate::outbound`]), never through a proxy
//! from the environment, without following redirects. Each gateway (scheme, host and port)
//! has its own bounded queue and worker, so a slow or dead gateway delays only its own
//! notifications, and a circuit breaker stops trying a gateway that keeps failing for a while.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{Batch, Db, KeyBuf, KeyReader, Table};
use parking_lot::{Mutex, RwLock};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{
    ephemeral::Ephemeral,
    outbound::{GuardedClient, OutboundGuard},
    rooms::{
        hooks::{EventObserver, FollowUp},
        notify::Notification,
        Pdu, Rooms,
    },
};

/// One notification to deliver.
#[derive(Debug, Clone)]
pub struct PushJob {
    pub user: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub actions: Value,
}

/// The users with at least one pusher: the observer hands on only their notifications (in a
/// big room nearly everyone has none), [`Pushers`] keeps the set in step with its table.
#[derive(Clone, Default)]
pub struct PusherUsers(Arc<RwLock<HashSet<OwnedUserId>>>);

impl PusherUsers {
    fn contains(&self, user: &UserId) -> bool {
        self.0.read().contains(user)
    }
}

/// Hands the notifications of each accepted event to the push sender ([`Pushers::start`]).
pub struct PushObserver {
    jobs: mpsc::UnboundedSender<PushJob>,
    users: PusherUsers,
}

impl PushObserver {
    /// The observer, the receiving end for [`Pushers::start`], and the set of users with
    /// pushers for [`Pushers::new`] to fill.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<PushJob>, PusherUsers) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let users = PusherUsers::default();
        (
            Self {
                jobs,
                users: users.clone(),
            },
            rx,
            users,
        )
    }
}

impl EventObserver for PushObserver {
    fn committed(
        &self,
        _: &Arc<Rooms>,
        room_id: &RoomId,
        pdu: &Pdu,
        notifications: &[Notification],
    ) -> Option<FollowUp> {
        for n in notifications {
            if !self.users.contains(&n.user) {
                continue;
            }
            let _ = self.jobs.send(PushJob {
                user: n.user.clone(),
                room_id: room_id.to_owned(),
                event_id: pdu.event_id.clone(),
                actions: serde_json::to_value(&n.actions).unwrap_or_default(),
            });
        }
        None
    }
}

pub struct Pushers {
    db: Arc<Db>,
    users: PusherUsers,
    guard: OutboundGuard,
    http: GuardedClient,
    /// Queues and circuit breakers by gateway origin.
    gateways: Mutex<HashMap<String, Gateway>>,
}

const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Where a stored pusher records the device that set it (not shown to clients).
const DEVICE_FIELD: &str = "paracord.device_id";
/// Attempts at delivering one notification.
const ATTEMPTS: u32 = 4;
/// Time for one request to a gateway.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushers one user may have.
pub const MAX_PUSHERS_PER_USER: usize = 20;
/// Notifications waiting for one gateway; the oldest is dropped to make room.
const GATEWAY_QUEUE: usize = 200;
/// Failed attempts in a row after which a gateway is not tried for a while.
const BREAKER_THRESHOLD: u32 = 5;
/// The first pause of a failing gateway; it doubles each time the breaker opens again.
const BREAKER_BASE: Duration = Duration::from_secs(30);
const BREAKER_MAX: Duration = Duration::from_secs(15 * 60);
/// Idle gateways remembered (their breakers) before forgotten ones are pruned.
const GATEWAYS_KEPT: usize = 10_000;

/// Parses a pusher's `data.url`: an http(s) URL whose path is exactly
/// `/_matrix/push/v1/notify`, with no query or fragment.
pub fn gateway_url(url: &str) -> Result<reqwest::Url> {
    let bad = || {
        Error::invalid_param(format!(
            "data.url must be an http(s) URL with the path {NOTIFY_PATH} and no query or fragment"
        ))
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none_or(str::is_empty)
        || parsed.path() != NOTIFY_PATH
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(parsed)
}

fn key(user: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    KeyBuf::new()
        .str(user.as_str())
        .str(app_id)
        .last_str(pushkey)
        .into_vec()
}

impl Pushers {
    /// Pushers on `db`; gateways are reached through `guard`.
    /// The users who have pushers are read into `users` here.
    pub fn new(db: Arc<Db>, guard: OutboundGuard, users: PusherUsers) -> Result<Self> {
        let http =
            GuardedClient::new(guard.clone(), 0, GATEWAY_TIMEOUT).map_err(Error::internal)?;
        {
            let mut set = users.0.write();
            for (k, _) in db.scan_prefix(Table::UserapppushkeyPusher, &[])? {
                if let Ok(user) = OwnedUserId::try_from(KeyReader::new(&k).str()?) {
                    set.insert(user);
                }
            }
        }
        Ok(Self {
            db,
            users,
            guard,
            http,
            gateways: Mutex::new(HashMap::new()),
        })
    }

    /// The user's pushers as the client set them (plus `pushkey_ts`).
    pub fn list(&self, user: &UserId) -> Result<Vec<Value>> {
        Ok(self
            .stored(user)?
            .into_iter()
            .map(|(_, mut p)| {
                if let Some(o) = p.as_object_mut() {
                    o.remove(DEVICE_FIELD);
                }
                p
            })
            .collect())
    }

    /// The stored pushers of a user (with the device that set them) and their keys.
    fn stored(&self, user: &UserId) -> Result<Vec<(Vec<u8>, Value)>> {
        let prefix = KeyBuf::new().str(user.as_str()).into_vec();
        self.db
            .scan_prefix(Table::UserapppushkeyPusher, &prefix)?
            .into_iter()
            .map(|(k, v)| Ok((k.to_vec(), serde_json::from_slice(&v)?)))
            .collect()
    }

    /// Deletes the pushers set by devices that were deleted (every pusher of a deactivated
    /// account): a pusher belongs to the session that set it, as in other servers, so a
    /// password change that logs out the other devices stops their notifications too.
    pub fn devices_removed(&self, user: &UserId, devices: &[String], all: bool) -> Result<()> {
        let mut batch = Batch::new();
        for (k, p) in self.stored(user)? {
            let by = p.get(DEVICE_FIELD).and_then(Value::as_str);
            if all || by.is_some_and(|d| devices.iter().any(|x| x == d)) {
                batch.delete(Table::UserapppushkeyPusher, k);
            }
        }
        self.db.write(batch)?;
        self.refresh_user(user)
    }

    /// Brings the user's entry in [`PusherUsers`] in step with the table after a change.
    fn refresh_user(&self, user: &UserId) -> Result<()> {
        let has = !self.stored(user)?.is_empty();
        let mut set = self.users.0.write();
        match has {
            true => set.insert(user.to_owned()),
            false => set.remove(user),
        };
        Ok(())
    }

    /// `/pushers/set` from `device`: adds or replaces a pusher, or deletes it when `kind` is
    /// null.
    pub fn set(&self, user: &UserId, device: &str, body: &Value) -> Result<()> {
        let app_id = body["app_id"]
            .as_str()
            .filter(|a| !a.is_empty() && a.len() <= 64)
            .ok_or_else(|| Error::invalid_param("app_id must be 1 to 64 characters"))?;
        let pushkey = body["pushkey"]
            .as_str()
            .filter(|p| !p.is_empty() && p.len() <= 512)
            .ok_or_else(|| Error::invalid_param("pushkey must be 1 to 512 bytes"))?;
        let mut batch = Batch::new();
        if body["kind"].is_null() {
            batch.delete(Table::UserapppushkeyPusher, key(user, app_id, pushkey));
            self.db.write(batch)?;
            return self.refresh_user(user);
        }
        match body["kind"].as_str() {
            Some("http") => {
                let url = body["data"]["url"]
                    .as_str()
                    .ok_or_else(|| Error::missing_param("an http pusher needs data.url"))?;
                let url = gateway_url(url)?;
                // A host name is checked at each delivery (what it resolves to can change);
                // an address can be refused now.
                if self.guard.check_url(&url).is_err() {
                    return Err(Error::invalid_param(
                        "data.url names an address this server does not send pushes to",
                    ));
                }
            }
            Some("email") => return Err(Error::invalid_param("email pushers are not supported")),
            _ => return Err(Error::invalid_param("kind must be http or null")),
        }
        let append = body["append"].as_bool().unwrap_or(false);
        let this_key = key(user, app_id, pushkey);
        let mut kept = 0;
        for (k, p) in self.stored(user)? {
            if k == this_key {
                continue;
            }
            if !append && p["pushkey"] == pushkey && p["app_id"] != app_id {
                // Without append, this pushkey belongs to this app only: drop it from others.
                batch.delete(Table::UserapppushkeyPusher, k);
            } else {
                kept += 1;
            }
        }
        if kept >= MAX_PUSHERS_PER_USER {
            return Err(Error::forbidden(format!(
                "a user can have at most {MAX_PUSHERS_PER_USER} pushers: delete one first"
            )));
        }
        let mut pusher = body.clone();
        if let Some(o) = pusher.as_object_mut() {
            o.remove("append");
            o.insert("pushkey_ts".into(), json!(now_ms() / 1000));
            o.insert(DEVICE_FIELD.into(), json!(device));
        }
        batch.put(
            Table::UserapppushkeyPusher,
            key(user, app_id, pushkey),
            serde_json::to_vec(&pusher)?,
        );
        self.db.write(batch)?;
        self.refresh_user(user)
    }

    fn remove(&self, user: &UserId, app_id: &str, pushkey: &str) {
        let mut batch = Batch::new();
        batch.delete(Table::UserapppushkeyPusher, key(user, app_id, pushkey));
        let _ = self.db.write(batch);
        let _ = self.refresh_user(user);
    }

    /// Starts the sender: jobs from the event pipeline (through [`PushObserver`]) are turned
    /// into notifications and queued for their gateways in the background. Without a runtime
    /// nothing starts and the jobs are dropped.
    pub fn start(
        self: &Arc<Self>,
        rooms: Arc<Rooms>,
        ephemeral: Arc<Ephemeral>,
        mut rx: mpsc::UnboundedReceiver<PushJob>,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        handle.spawn(async move {
            while let Some(job) = rx.recv().await {
                match this.notifications(&rooms, &ephemeral, &job) {
                    Ok(deliveries) => {
                        for delivery in deliveries {
                            this.enqueue(delivery);
                        }
                    }
                    Err(e) => tracing::warn!(user = %job.user, "push notification not built: {e}"),
                }
            }
        });
    }

    /// The notifications of a job, one per HTTP pusher of the user.
    fn notifications(
        &self,
        rooms: &Rooms,
        ephemeral: &Ephemeral,
        job: &PushJob,
    ) -> Result<Vec<Delivery>> {
        let pushers: Vec<Value> = self
            .list(&job.user)?
            .into_iter()
            .filter(|p| p["kind"] == "http")
            .collect();
        if pushers.is_empty() {
            return Ok(Vec::new());
        }
        let reader = crate::rooms::timeline::Reader {
            user: &job.user,
            device: None,
        };
        let Ok((_, _, event)) = rooms.visible_event(reader, Some(&job.room_id), &job.event_id)
        else {
            return Ok(Vec::new());
        };
        let read_pos = crate::sync::read_pos(rooms, ephemeral, &job.room_id, &job.user)?;
        let (unread, _) = rooms.unread_counts(&job.user, &job.room_id, read_pos)?;
        let state = rooms.current_state(&job.room_id)?;
        let room_name = rooms
            .state_content(&state, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned));
        let sender = event["sender"].as_str().unwrap_or_default().to_owned();
        let sender_name = rooms
            .state_content(&state, "m.room.member", &sender)?
            .and_then(|c| c["displayname"].as_str().map(str::to_owned));
        let tweaks: serde_json::Map<String, Value> = job
            .actions
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                a.get("set_tweak")
                    .and_then(|t| t.as_str())
                    .map(|t| (t.to_owned(), a.get("value").cloned().unwrap_or(json!(true))))
            })
            .collect();
        let mut out = Vec::new();
        for pusher in pushers {
            let Some(url) = pusher["data"]["url"].as_str() else {
                continue;
            };
            // Pushers set before the URL rules were strict may not pass them: skipped.
            let Ok(url) = gateway_url(url) else {
                tracing::debug!(user = %job.user, "a pusher with an invalid gateway URL is skipped");
                continue;
            };
            let mut data = pusher["data"].clone();
            if let Some(o) = data.as_object_mut() {
                o.remove("url");
            }
            let event_only = pusher["data"]["format"] == "event_id_only";
            let mut notification = json!({
                "event_id": job.event_id, "room_id": job.room_id,
                "prio": if tweaks.contains_key("highlight") || tweaks.contains_key("sound") { "high" } else { "low" },
                "counts": { "unread": unread },
                "devices": [{
                    "app_id": pusher["app_id"], "pushkey": pusher["pushkey"], "pushkey_ts": pusher["pushkey_ts"],
                    "data": data, "tweaks": tweaks,
                }],
            });
            if !event_only {
                notification["type"] = event["type"].clone();
                notification["sender"] = json!(sender);
                notification["content"] = event["content"].clone();
                if let Some(n) = &sender_name {
                    notification["sender_display_name"] = json!(n);
                }
                if let Some(n) = &room_name {
                    notification["room_name"] = json!(n);
                }
            }
            out.push(Delivery {
                user: job.user.clone(),
                app_id: pusher["app_id"].as_str().unwrap_or_default().to_owned(),
                pushkey: pusher["pushkey"].as_str().unwrap_or_default().to_owned(),
                url,
                body: json!({ "notification": notification }),
            });
        }
        Ok(out)
    }

    /// Queues a notification for its gateway and starts the gateway's worker if it is idle.
    fn enqueue(self: &Arc<Self>, delivery: Delivery) {
        let origin = delivery.url.origin().ascii_serialization();
        let now = Instant::now();
        let mut gateways = self.gateways.lock();
        if gateways.len() >= GATEWAYS_KEPT && !gateways.contains_key(&origin) {
            gateways.retain(|_, g| g.running || !g.queue.is_empty() || g.breaker.is_open(now));
        }
        let gateway = gateways.entry(origin.clone()).or_default();
        if gateway.breaker.is_open(now) {
            tracing::debug!(gateway = %origin, user = %delivery.user, "gateway paused after failures: notification dropped");
            return;
        }
        if gateway.queue.len() >= GATEWAY_QUEUE {
            gateway.queue.pop_front();
            tracing::warn!(gateway = %origin, "push gateway queue full: the oldest notification was dropped");
        }
        gateway.queue.push_back(delivery);
        if !gateway.running {
            gateway.running = true;
            let this = self.clone();
            tokio::spawn(async move { this.work(origin).await });
        }
    }

    /// Delivers the queue of one gateway, one notification at a time, until it is empty.
    async fn work(self: Arc<Self>, origin: String) {
        loop {
            let delivery = {
                let mut gateways = self.gateways.lock();
                let Some(gateway) = gateways.get_mut(&origin) else {
                    return;
                };
                match gateway.queue.pop_front() {
                    Some(d) => d,
                    None => {
                        gateway.running = false;
                        if gateway.breaker.is_idle() {
                            gateways.remove(&origin);
                        }
                        return;
                    }
                }
            };
            self.deliver(&origin, delivery).await;
        }
    }

    /// Sends one notification, retrying failures while the gateway's breaker stays closed.
    async fn deliver(&self, origin: &str, d: Delivery) {
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=ATTEMPTS {
            let sent = match self.http.request(reqwest::Method::POST, d.url.clone()) {
                Ok(request) => request
                    .json(&d.body)
                    .send()
                    .await
                    .map_err(|e| e.to_string()),
                Err(refused) => Err(refused.to_string()),
            };
            let failure = match sent {
                Ok(resp) if resp.status().is_success() => {
                    self.record(origin, true);
                    let answer: Value = resp.json().await.unwrap_or(Value::Null);
                    let rejected = answer["rejected"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|k| k == d.pushkey.as_str()));
                    if rejected {
                        self.remove(&d.user, &d.app_id, &d.pushkey);
                    }
                    return;
                }
                // A 4xx other than rate limiting will not get better by retrying; the gateway
                // itself answers, so it is not failing.
                Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                    self.record(origin, true);
                    tracing::info!(gateway = %origin, status = %resp.status(), "push gateway refused a notification");
                    return;
                }
                Ok(resp) => format!("answered {}", resp.status()),
                Err(e) => e,
            };
            if self.record(origin, false) {
                tracing::warn!(gateway = %origin, "push gateway failing ({failure}): paused");
                return;
            }
            if attempt == ATTEMPTS {
                tracing::warn!(gateway = %origin, "push gateway unreachable after {ATTEMPTS} attempts: {failure}");
                return;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// Records an attempt's outcome in the gateway's breaker; `true` when the gateway is
    /// paused (its queued notifications are dropped).
    fn record(&self, origin: &str, ok: bool) -> bool {
        let mut gateways = self.gateways.lock();
        let Some(gateway) = gateways.get_mut(origin) else {
            return false;
        };
        if ok {
            gateway.breaker.success();
            return false;
        }
        let now = Instant::now();
        gateway.breaker.failure(now);
        if gateway.breaker.is_open(now) {
            let dropped = gateway.queue.len();
            gateway.queue.clear();
            if dropped > 0 {
                tracing::warn!(gateway = %origin, dropped, "push gateway paused: its queued notifications were dropped");
            }
            return true;
        }
        false
    }
}

/// One notification for one pusher.
struct Delivery {
    user: OwnedUserId,
    app_id: String,
    pushkey: String,
    url: reqwest::Url,
    body: Value,
}

/// One gateway: its waiting notifications, whether a worker delivers them, its breaker.
#[derive(Default)]
struct Gateway {
    queue: VecDeque<Delivery>,
    running: bool,
    breaker: Breaker,
}

/// A circuit breaker: after [`BREAKER_THRESHOLD`] failures in a row the gateway is not tried
/// for a pause, doubling from [`BREAKER_BASE`] up to [`BREAKER_MAX`] while it keeps failing;
/// after a pause one failure is enough to pause it again, one success closes it.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// Pauses in a row.
    trips: u32,
}

impl Breaker {
    fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| t > now)
    }

    /// Nothing to remember: no failure, no pause.
    fn is_idle(&self) -> bool {
        self.failures == 0 && self.trips == 0
    }

    fn success(&mut self) {
        *self = Self::default();
    }

    fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let threshold = if self.trips > 0 { 1 } else { BREAKER_THRESHOLD };
        if self.failures >= threshold {
            let pause = BREAKER_BASE
                .saturating_mul(1u32.checked_shl(self.trips.min(16)).unwrap_or(u32::MAX))
                .min(BREAKER_MAX);
            self.open_until = Some(now + pause);
            self.trips = self.trips.saturating_add(1);
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 15: only http(s) URLs with exactly the notify path are gateways.
    #[test]
    fn gateway_urls_need_the_exact_notify_path() {
        for ok in [
            "https://push.example.org/_matrix/push/v1/notify",
            "http://push.example.org:8080/_matrix/push/v1/notify",
            "https://[2001:4860::1]/_matrix/push/v1/notify",
        ] {
            assert!(gateway_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://push.example.org/_matrix/push/v1/notify",
            "https://push.example.org/_matrix/push/v1/notify?x=1",
            "https://push.example.org/_matrix/push/v1/notify?",
            "https://push.example.org/_matrix/push/v1/notify#f",
            "https://push.example.org/other/_matrix/push/v1/notify",
            "https://push.example.org/_matrix/push/v1/notify/",
            "https://push.example.org/?/_matrix/push/v1/notify",
            "https://push.example.org/",
            "/_matrix/push/v1/notify",
            "not a url",
        ] {
            assert!(gateway_url(bad).is_err(), "{bad}");
        }
    }

    // Issue 15: a failing gateway is paused, longer each time, and a success resets it.
    #[test]
    fn the_breaker_opens_after_failures_in_a_row() {
        let now = Instant::now();
        let mut b = Breaker::default();
        for _ in 1..BREAKER_THRESHOLD {
            b.failure(now);
            assert!(!b.is_open(now));
        }
        b.failure(now);
        assert!(b.is_open(now));
        assert!(!b.is_open(now + BREAKER_BASE));
        // After the pause, one failure pauses it again, twice as long.
        let later = now + BREAKER_BASE;
        b.failure(later);
        assert!(b.is_open(later + BREAKER_BASE));
        assert!(!b.is_open(later + BREAKER_BASE * 2));
        b.success();
        assert!(b.is_idle());
        for _ in 0..100 {
            b.failure(now);
        }
        assert!(
            !b.is_open(now + BREAKER_MAX),
            "never longer than the maximum"
        );
    }
}
