//! The HTTP side: the target server, how users are registered on it, and the
//! handful of client-server endpoints the scenarios use.

use std::{
    future::Future,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use hmac::{Hmac, Mac};
use rand::{distributions::Alphanumeric, Rng};
use reqwest::{Method, Url};
use serde_json::{json, Value};

use crate::error::LoadError;

pub(crate) const CLIENT_V3: &str = "/_matrix/client/v3";
const SHARED_SECRET_REGISTER: &str = "/_synapse/admin/v1/register";
pub(crate) const RTC_GET_TOKEN: &str = "/_matrix/client/v1/rtc/livekit/get_token";

/// Timeout of every request except long-polls, which get their own
/// `timeout` plus [`LONG_POLL_SLACK`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
const LONG_POLL_SLACK: Duration = Duration::from_secs(30);

/// Upper bounds on the shared knobs; each scenario bounds its own sizes.
pub(crate) const MAX_CONCURRENCY: usize = 64;
pub(crate) const MAX_TIME_LIMIT: Duration = Duration::from_secs(3600);
/// How long a scenario may overrun its time limit (one request's worth)
/// before it is abandoned outright.
const HARD_LIMIT_GRACE: Duration = Duration::from_secs(120);

/// How the tool creates its users.
#[derive(Clone, Debug)]
pub enum Registration {
    /// `POST /_matrix/client/v3/register`, completing the `m.login.dummy`
    /// user-interactive auth stage.
    Dummy,
    /// Synapse's shared-secret admin API (`/_synapse/admin/v1/register`),
    /// which Paracord implements too; the value is the shared secret.
    SharedSecret(String),
}

/// The server under load and the knobs shared by every scenario.
#[derive(Clone, Debug)]
pub struct Target {
    base_url: String,
    registration: Registration,
    pid: Option<u32>,
    concurrency: usize,
    time_limit: Duration,
    http: reqwest::Client,
    run_id: String,
    next_user: Arc<AtomicU64>,
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) localpart: String,
    pub(crate) password: String,
    pub(crate) token: String,
}

/// A response: status, parsed body (`Null` when empty or not JSON) and the
/// body's size in bytes.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) bytes: usize,
}

impl Target {
    /// A target on a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
    /// Anything else is refused: use [`Target::new_remote`] to point the
    /// tool at a server you run elsewhere.
    pub fn new(base_url: &str, registration: Registration) -> Result<Target, LoadError> {
        let url = parse_base(base_url)?;
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(LoadError::Params(format!(
                "{base_url} is not a loopback address; pass --allow-remote to load a server \
                 you run on another machine"
            )));
        }
        Self::new_remote(base_url, registration)
    }

    /// A target on any address.
    pub fn new_remote(base_url: &str, registration: Registration) -> Result<Target, LoadError> {
        parse_base(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(4 * MAX_CONCURRENCY)
            .build()
            .map_err(|e| LoadError::Transport {
                what: "building the HTTP client".into(),
                source: e,
            })?;
        let run_id: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(8)
            .map(char::from)
            .collect();
        Ok(Target {
            base_url: base_url.trim_end_matches('/').to_owned(),
            registration,
            pid: None,
            concurrency: 4,
            time_limit: Duration::from_secs(600),
            http,
            run_id: run_id.to_lowercase(),
            next_user: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The local server process whose RSS and CPU time reports include.
    pub fn with_pid(mut self, pid: Option<u32>) -> Self {
        self.pid = pid;
        self
    }

    /// How many requests setup phases and batch phases keep in flight
    /// (1..=64).
    pub fn with_concurrency(mut self, concurrency: usize) -> Result<Self, LoadError> {
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(LoadError::Params(format!(
                "concurrency must be within 1..={MAX_CONCURRENCY}"
            )));
        }
        self.concurrency = concurrency;
        Ok(self)
    }

    /// The time limit of each scenario (at most an hour).
    pub fn with_time_limit(mut self, limit: Duration) -> Result<Self, LoadError> {
        if limit.is_zero() || limit > MAX_TIME_LIMIT {
            return Err(LoadError::Params(format!(
                "time limit must be within 1..={} s",
                MAX_TIME_LIMIT.as_secs()
            )));
        }
        self.time_limit = limit;
        Ok(self)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn time_limit(&self) -> Duration {
        self.time_limit
    }

    /// When the scenario starting now has to stop.
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline(Instant::now() + self.time_limit)
    }

    /// Runs `scenario`, abandoning it if it overruns its time limit by more
    /// than a grace period (a stuck request, a server that stopped).
    pub(crate) async fn hard_limit<T>(
        &self,
        name: &str,
        scenario: impl Future<Output = Result<T, LoadError>>,
    ) -> Result<T, LoadError> {
        match tokio::time::timeout(self.time_limit + HARD_LIMIT_GRACE, scenario).await {
            Ok(result) => result,
            Err(_) => Err(LoadError::TimeLimit(name.to_owned())),
        }
    }

    /// A fresh localpart, unique within this run and random across runs.
    pub(crate) fn new_localpart(&self) -> String {
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        format!("load_{}_{n}", self.run_id)
    }

    /// A marker unique to this run, for message bodies.
    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    // ---- raw requests -------------------------------------------------

    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Reply, LoadError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        let transport = |e| LoadError::Transport {
            what: what.to_owned(),
            source: e,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            bytes: bytes.len(),
        })
    }

    /// A request that must answer 2xx; returns the reply.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Reply, LoadError> {
        let reply = self.raw(method, path, token, body, timeout, what).await?;
        if (200..300).contains(&reply.status) {
            Ok(reply)
        } else {
            Err(status_error(what, &reply))
        }
    }

    // ---- accounts -----------------------------------------------------

    /// Registers `localpart` with the target's registration method. The
    /// returned user carries the access token the registration gave.
    pub(crate) async fn register_user(
        &self,
        localpart: &str,
        password: &str,
    ) -> Result<User, LoadError> {
        let what = "register";
        let reply = match &self.registration {
            Registration::Dummy => {
                let path = format!("{CLIENT_V3}/register");
                let mut body = json!({ "username": localpart, "password": password });
                let first = self
                    .raw(Method::POST, &path, None, Some(&body), None, what)
                    .await?;
                if first.status == 401 {
                    let session = first.body["session"].as_str().ok_or_else(|| {
                        LoadError::protocol(
                            what,
                            format!("401 without a UIA session: {}", first.body),
                        )
                    })?;
                    body["auth"] = json!({ "type": "m.login.dummy", "session": session });
                    self.call(Method::POST, &path, None, Some(&body), None, what)
                        .await?
                } else if (200..300).contains(&first.status) {
                    first
                } else {
                    return Err(status_error(what, &first));
                }
            }
            Registration::SharedSecret(secret) => {
                let nonce_reply = self
                    .call(Method::GET, SHARED_SECRET_REGISTER, None, None, None, what)
                    .await?;
                let nonce = nonce_reply.body["nonce"].as_str().ok_or_else(|| {
                    LoadError::protocol(what, format!("no nonce in {}", nonce_reply.body))
                })?;
                let mac = shared_secret_mac(secret, nonce, localpart, password);
                let body = json!({
                    "nonce": nonce,
                    "username": localpart,
                    "password": password,
                    "admin": false,
                    "mac": mac,
                });
                self.call(
                    Method::POST,
                    SHARED_SECRET_REGISTER,
                    None,
                    Some(&body),
                    None,
                    what,
                )
                .await?
            }
        };
        user_from(localpart, password, &reply.body, what)
    }

    /// `m.login.password` login: a new device and access token.
    pub(crate) async fn login(&self, localpart: &str, password: &str) -> Result<User, LoadError> {
        let what = "login";
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": localpart },
            "password": password,
        });
        let reply = self
            .call(
                Method::POST,
                &format!("{CLIENT_V3}/login"),
                None,
                Some(&body),
                None,
                what,
            )
            .await?;
        user_from(localpart, password, &reply.body, what)
    }

    /// Registers `n` fresh users, `concurrency` at a time (setup, not
    /// measured). Fails on the first error or when `deadline` passes.
    pub(crate) async fn register_many(
        &self,
        n: usize,
        deadline: &Deadline,
    ) -> Result<Vec<User>, LoadError> {
        let results: Vec<Result<User, LoadError>> = self
            .limited((0..n).collect(), |_| async {
                if deadline.expired() {
                    return Err(LoadError::TimeLimit("registering users".into()));
                }
                let localpart = self.new_localpart();
                let password = password_for(&localpart);
                self.register_user(&localpart, &password).await
            })
            .await;
        results.into_iter().collect()
    }

    /// `GET /account/whoami`: the device of the user's access token.
    pub(crate) async fn whoami_device(&self, user: &User) -> Result<String, LoadError> {
        let what = "whoami";
        let reply = self
            .call(
                Method::GET,
                &format!("{CLIENT_V3}/account/whoami"),
                Some(&user.token),
                None,
                None,
                what,
            )
            .await?;
        str_field(&reply.body, "device_id", what)
    }

    // ---- rooms --------------------------------------------------------

    /// `POST /createRoom` with a public preset (anyone may join); returns the
    /// room id.
    pub(crate) async fn create_room(&self, user: &User, name: &str) -> Result<String, LoadError> {
        let what = "createRoom";
        let body = json!({ "preset": "public_chat", "name": name });
        let reply = self
            .call(
                Method::POST,
                &format!("{CLIENT_V3}/createRoom"),
                Some(&user.token),
                Some(&body),
                None,
                what,
            )
            .await?;
        str_field(&reply.body, "room_id", what)
    }

    /// `POST /rooms/{roomId}/join`.
    pub(crate) async fn join(&self, user: &User, room_id: &str) -> Result<(), LoadError> {
        self.call(
            Method::POST,
            &format!("{CLIENT_V3}/rooms/{}/join", enc(room_id)),
            Some(&user.token),
            Some(&json!({})),
            None,
            "join",
        )
        .await
        .map(drop)
    }

    /// `GET /rooms/{roomId}/joined_members`: how many members are joined.
    pub(crate) async fn joined_members(
        &self,
        user: &User,
        room_id: &str,
    ) -> Result<usize, LoadError> {
        let what = "joined_members";
        let reply = self
            .call(
                Method::GET,
                &format!("{CLIENT_V3}/rooms/{}/joined_members", enc(room_id)),
                Some(&user.token),
                None,
                None,
                what,
            )
            .await?;
        reply.body["joined"]
            .as_object()
            .map(serde_json::Map::len)
            .ok_or_else(|| {
                LoadError::protocol(what, format!("no `joined` object in {}", reply.body))
            })
    }

    /// `PUT /rooms/{roomId}/send/m.room.message/{txnId}`; returns the event id.
    pub(crate) async fn send_text(
        &self,
        user: &User,
        room_id: &str,
        txn_id: &str,
        body: &str,
    ) -> Result<String, LoadError> {
        let what = "send";
        let content = json!({ "msgtype": "m.text", "body": body });
        let reply = self
            .call(
                Method::PUT,
                &format!(
                    "{CLIENT_V3}/rooms/{}/send/m.room.message/{}",
                    enc(room_id),
                    enc(txn_id)
                ),
                Some(&user.token),
                Some(&content),
                None,
                what,
            )
            .await?;
        str_field(&reply.body, "event_id", what)
    }

    /// `GET /sync`. `timeout_ms` 0 answers at once; a long-poll gets a
    /// request timeout of its own plus slack.
    pub(crate) async fn sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Result<Reply, LoadError> {
        let mut query = format!("timeout={timeout_ms}");
        if let Some(since) = since {
            query.push_str(&format!("&since={}", enc(since)));
        }
        if let Some(filter) = filter {
            query.push_str(&format!("&filter={}", enc(filter)));
        }
        let reply = self
            .call(
                Method::GET,
                &format!("{CLIENT_V3}/sync?{query}"),
                Some(&user.token),
                None,
                Some(Duration::from_millis(timeout_ms) + LONG_POLL_SLACK),
                "sync",
            )
            .await?;
        if !reply.body["next_batch"].is_string() {
            return Err(LoadError::protocol(
                "sync",
                "response without a string next_batch",
            ));
        }
        Ok(reply)
    }

    /// `GET /rooms/{roomId}/messages?dir=b`, from the end of the room when
    /// `from` is `None`.
    pub(crate) async fn messages_backwards(
        &self,
        user: &User,
        room_id: &str,
        from: Option<&str>,
        limit: usize,
    ) -> Result<Reply, LoadError> {
        let mut query = format!("dir=b&limit={limit}");
        if let Some(from) = from {
            query.push_str(&format!("&from={}", enc(from)));
        }
        self.call(
            Method::GET,
            &format!("{CLIENT_V3}/rooms/{}/messages?{query}", enc(room_id)),
            Some(&user.token),
            None,
            None,
            "messages",
        )
        .await
    }

    // ---- search and media ---------------------------------------------

    /// `POST /search` over room events, ordered by rank.
    pub(crate) async fn search(&self, user: &User, term: &str) -> Result<Reply, LoadError> {
        let body = json!({
            "search_categories": {
                "room_events": { "search_term": term, "order_by": "rank" }
            }
        });
        self.call(
            Method::POST,
            &format!("{CLIENT_V3}/search"),
            Some(&user.token),
            Some(&body),
            None,
            "search",
        )
        .await
    }

    /// `POST /_matrix/media/v3/upload` of `data`; returns the `mxc://` URI.
    pub(crate) async fn upload(
        &self,
        user: &User,
        data: Vec<u8>,
        content_type: &str,
    ) -> Result<String, LoadError> {
        let what = "upload";
        let transport = |e| LoadError::Transport {
            what: what.to_owned(),
            source: e,
        };
        let resp = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.base_url))
            .bearer_auth(&user.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(data)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        let reply = Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            bytes: bytes.len(),
        };
        if !(200..300).contains(&status) {
            return Err(status_error(what, &reply));
        }
        str_field(&reply.body, "content_uri", what)
    }

    /// `GET path` with the user's token, returning the status and the raw
    /// body; a non-2xx answer comes back as `Ok` for the caller to judge.
    pub(crate) async fn get_bytes(
        &self,
        user: &User,
        path: &str,
        what: &str,
    ) -> Result<(u16, Vec<u8>), LoadError> {
        let transport = |e| LoadError::Transport {
            what: what.to_owned(),
            source: e,
        };
        let resp = self
            .http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(&user.token)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport)?;
        Ok((status, bytes.to_vec()))
    }

    // ---- MatrixRTC -----------------------------------------------------

    /// `POST /_matrix/client/v1/rtc/livekit/get_token` (MSC4195): a LiveKit token for
    /// `member_id` of the user's `device_id` in `slot_id` of `room_id`. The reply comes back
    /// whatever its status, for the caller to judge.
    pub(crate) async fn rtc_get_token(
        &self,
        user: &User,
        device_id: &str,
        room_id: &str,
        slot_id: &str,
        member_id: &str,
    ) -> Result<Reply, LoadError> {
        let body = json!({
            "room_id": room_id,
            "slot_id": slot_id,
            "member": { "id": member_id, "claimed_device_id": device_id },
        });
        self.raw(
            Method::POST,
            RTC_GET_TOKEN,
            Some(&user.token),
            Some(&body),
            None,
            "get_token",
        )
        .await
    }

    // ---- concurrency --------------------------------------------------

    /// Runs `f` over `items` with at most the target's concurrency in flight;
    /// results come back in completion order.
    pub(crate) async fn limited<I, F, Fut, T>(&self, items: Vec<I>, f: F) -> Vec<T>
    where
        F: FnMut(I) -> Fut,
        Fut: Future<Output = T>,
    {
        stream::iter(items)
            .map(f)
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }
}

/// A point in time after which a scenario stops starting new work.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub(crate) fn expired(&self) -> bool {
        Instant::now() >= self.0
    }

    /// Time left, zero once expired.
    pub(crate) fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// `Err(TimeLimit)` once expired, for setup steps that cannot be cut short.
    pub(crate) fn check(&self, what: &str) -> Result<(), LoadError> {
        if self.expired() {
            Err(LoadError::TimeLimit(what.to_owned()))
        } else {
            Ok(())
        }
    }
}

/// The password the tool gives `localpart`.
pub(crate) fn password_for(localpart: &str) -> String {
    format!("pw-{localpart}-load")
}

/// The MAC of Synapse's shared-secret registration: hex HMAC-SHA1, keyed by
/// the secret, of `nonce\0username\0password\0notadmin`.
pub(crate) fn shared_secret_mac(secret: &str, nonce: &str, user: &str, password: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the
    // fallback keeps this free of panics all the same.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(user.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0notadmin");
    hex::encode(mac.finalize().into_bytes())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_base(base_url: &str) -> Result<Url, LoadError> {
    let url = Url::parse(base_url)
        .map_err(|e| LoadError::Params(format!("base URL {base_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(LoadError::Params(format!(
            "base URL {base_url:?} must be http(s)://host[:port]"
        )));
    }
    Ok(url)
}

pub(crate) fn status_error(what: &str, reply: &Reply) -> LoadError {
    let mut body = reply.body.to_string();
    body.truncate(300);
    LoadError::Status {
        what: what.to_owned(),
        status: reply.status,
        body,
    }
}

pub(crate) fn str_field(body: &Value, name: &str, what: &str) -> Result<String, LoadError> {
    body[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| LoadError::protocol(what, format!("no string `{name}` in {body}")))
}

fn user_from(localpart: &str, password: &str, body: &Value, what: &str) -> Result<User, LoadError> {
    str_field(body, "user_id", what)?;
    Ok(User {
        localpart: localpart.to_owned(),
        password: password.to_owned(),
        token: str_field(body, "access_token", what)?,
    })
}

#[cfg(test)]
mod tests {
    use super::{enc, shared_secret_mac, Registration, Target};

    #[test]
    fn mac_matches_rfc2202_style_vector() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog")
        // is a well-known vector; build the same message through the
        // registration layout by hand and compare with a direct HMAC.
        use hmac::{Hmac, Mac};
        let mut direct = Hmac::<sha1::Sha1>::new_from_slice(b"key").unwrap_or_else(|_| {
            unreachable!("HMAC takes any key length");
        });
        direct.update(b"n\0u\0p\0notadmin");
        assert_eq!(
            shared_secret_mac("key", "n", "u", "p"),
            hex::encode(direct.finalize().into_bytes())
        );
        let mut fox = Hmac::<sha1::Sha1>::new_from_slice(b"key").unwrap_or_else(|_| {
            unreachable!("HMAC takes any key length");
        });
        fox.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            hex::encode(fox.finalize().into_bytes()),
            "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
        );
    }

    #[test]
    fn encodes_room_ids() {
        assert_eq!(enc("!a:b.c"), "%21a%3Ab.c");
    }

    #[test]
    fn refuses_non_loopback_targets() {
        for ok in [
            "http://127.0.0.1:8008",
            "http://localhost:8008/",
            "http://[::1]:8008",
        ] {
            assert!(Target::new(ok, Registration::Dummy).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8008",
            "https://matrix.org",
            "ftp://127.0.0.1",
        ] {
            assert!(Target::new(bad, Registration::Dummy).is_err(), "{bad}");
        }
    }
}
