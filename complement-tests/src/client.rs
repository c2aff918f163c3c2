//! A small Matrix client over reqwest. Every call returns the status and the
//! body parsed as JSON (`Value::Null` when the body is not JSON), so tests
//! can assert on error responses as easily as on successes.

use std::{
    ops::Deref,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use reqwest::{header::HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use crate::enc;

/// Prefix for client-server paths that do not start with `/_` or `/.`.
pub const CLIENT_V3: &str = "/_matrix/client/v3";

/// How long `sync_until` and other polling waits keep trying.
pub const WAIT: Duration = Duration::from_secs(15);

/// Per-request ceiling, so a hung server fails a test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A full HTTP answer, for tests that look at headers or raw bodies.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
    /// The body as received (media, binary answers).
    pub bytes: Vec<u8>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

/// A registered (or logged-in) user: its client carries the access token.
pub struct User {
    pub user_id: String,
    pub localpart: String,
    pub password: String,
    pub device_id: String,
    pub access_token: String,
    pub client: Client,
}

impl Deref for User {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl User {
    /// `auth` for a user-interactive `m.login.password` stage.
    pub fn password_auth(&self, session: &str) -> Value {
        json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": self.localpart },
            "password": self.password,
            "session": session,
        })
    }
}

fn next_txn_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(rand::random::<u64>);
    format!("txn{prefix:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Client {
    pub fn new(base_url: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|e| panic!("expected an HTTP client: {e}"));
        Client {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client with another (or no) access token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// `path` as given when it starts with `/_` or `/.`, else under `/_matrix/client/v3`.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("/_") || path.starts_with("/.") {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}{CLIENT_V3}{path}", self.base_url)
        }
    }

    /// Sends a request; transport errors come back as `Err`.
    pub async fn try_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some((bytes, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            body,
            text,
            bytes: bytes.to_vec(),
        })
    }

    /// Sends a request with an arbitrary body; panics only on transport errors.
    pub async fn raw(&self, method: Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Reply {
        let what = format!("{method} {path}");
        self.try_raw(method, path, body).await.unwrap_or_else(|e| {
            panic!("expected an HTTP answer to {what}, got transport error {e}")
        })
    }

    /// JSON request; transport errors come back as `Err`.
    pub async fn try_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let body = body.map(|b| (b.to_string().into_bytes(), "application/json"));
        self.try_raw(method, path, body)
            .await
            .map(|r| (r.status, r.body))
    }

    async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let what = format!("{method} {path}");
        self.try_json(method, path, body).await.unwrap_or_else(|e| {
            panic!("expected an HTTP answer to {what}, got transport error {e}")
        })
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.json(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.json(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.json(Method::DELETE, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.json(Method::PATCH, path, Some(body)).await
    }

    pub async fn whoami(&self) -> (StatusCode, Value) {
        self.get("/account/whoami").await
    }

    /// POST /createRoom, expecting 200; returns the room id.
    pub async fn create_room(&self, body: &Value) -> String {
        let (status, resp) = self.post("/createRoom", body).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected createRoom {body} to succeed, got {status}: {resp}"
        );
        resp["room_id"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a string room_id from createRoom, got {resp}"))
            .to_owned()
    }

    /// PUT /rooms/{room}/send/{type}/{txn} with an explicit transaction id.
    pub async fn send_with_txn(
        &self,
        room: &str,
        event_type: &str,
        txn: &str,
        content: &Value,
    ) -> (StatusCode, Value) {
        self.put(
            &format!("/rooms/{}/send/{}/{}", enc(room), enc(event_type), enc(txn)),
            content,
        )
        .await
    }

    /// Sends a message event with a fresh transaction id, expecting 200; returns its event id.
    pub async fn send_event(&self, room: &str, event_type: &str, content: &Value) -> String {
        let (status, resp) = self
            .send_with_txn(room, event_type, &next_txn_id(), content)
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected sending {event_type} {content} to {room} to succeed, got {status}: {resp}"
        );
        event_id_of(&resp, "send")
    }

    /// Sends an `m.text` message, expecting 200; returns its event id.
    pub async fn send_text(&self, room: &str, body: &str) -> String {
        self.send_event(
            room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": body }),
        )
        .await
    }

    /// A fresh transaction id.
    pub fn txn_id() -> String {
        next_txn_id()
    }

    /// PUT a state event, expecting 200; returns its event id.
    pub async fn put_state(
        &self,
        room: &str,
        event_type: &str,
        state_key: &str,
        content: &Value,
    ) -> String {
        let (status, resp) = self
            .put(
                &format!(
                    "/rooms/{}/state/{}/{}",
                    enc(room),
                    enc(event_type),
                    enc(state_key)
                ),
                content,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "expected PUT state {event_type}/{state_key} {content} to succeed, got {status}: {resp}");
        event_id_of(&resp, "state PUT")
    }

    /// GET the content of a state event.
    pub async fn get_state(
        &self,
        room: &str,
        event_type: &str,
        state_key: &str,
    ) -> (StatusCode, Value) {
        self.get(&format!(
            "/rooms/{}/state/{}/{}",
            enc(room),
            enc(event_type),
            enc(state_key)
        ))
        .await
    }

    /// GET a state event's content, expecting 200.
    pub async fn state_content(&self, room: &str, event_type: &str, state_key: &str) -> Value {
        let (status, body) = self.get_state(room, event_type, state_key).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected state {event_type}/{state_key} in {room}, got {status}: {body}"
        );
        body
    }

    /// GET /rooms/{room}/state, expecting 200; returns the events.
    pub async fn full_state(&self, room: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/rooms/{}/state", enc(room))).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected GET /rooms/{room}/state to succeed, got {status}: {body}"
        );
        body.as_array()
            .unwrap_or_else(|| panic!("expected an array of state events, got {body}"))
            .clone()
    }

    /// POST /join/{room_or_alias}.
    pub async fn join(&self, room_or_alias: &str) -> (StatusCode, Value) {
        self.post(&format!("/join/{}", enc(room_or_alias)), &json!({}))
            .await
    }

    /// Joins, expecting 200.
    pub async fn join_ok(&self, room_or_alias: &str) {
        let (status, body) = self.join(room_or_alias).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected to join {room_or_alias}, got {status}: {body}"
        );
    }

    /// Invites, expecting 200.
    pub async fn invite_ok(&self, room: &str, user_id: &str) {
        let (status, body) = self
            .post(
                &format!("/rooms/{}/invite", enc(room)),
                &json!({ "user_id": user_id }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected to invite {user_id} to {room}, got {status}: {body}"
        );
    }

    /// Leaves, expecting 200.
    pub async fn leave_ok(&self, room: &str) {
        let (status, body) = self
            .post(&format!("/rooms/{}/leave", enc(room)), &json!({}))
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected to leave {room}, got {status}: {body}"
        );
    }

    /// GET /sync with raw query parameters, expecting 200.
    pub async fn sync_query(&self, params: &[(&str, &str)]) -> Value {
        let path = format!("/sync{}", query(params));
        let (status, body) = self.get(&path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected GET {path} to succeed, got {status}: {body}"
        );
        assert!(
            body["next_batch"].is_string(),
            "expected a string next_batch in sync, got {body}"
        );
        body
    }

    /// GET /sync; `filter` is either a filter id or filter JSON text.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64, filter: Option<&str>) -> Value {
        let timeout = timeout_ms.to_string();
        let mut params = vec![("timeout", timeout.as_str())];
        if let Some(since) = since {
            params.push(("since", since));
        }
        if let Some(filter) = filter {
            params.push(("filter", filter));
        }
        self.sync_query(&params).await
    }

    /// Long-polls /sync from `since` until one response satisfies `pred`,
    /// failing after [`WAIT`]. Returns that response.
    pub async fn sync_until(
        &self,
        since: Option<&str>,
        filter: Option<&str>,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut since = since.map(str::to_owned);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let resp = self.sync(since.as_deref(), 1000, filter).await;
            if pred(&resp) {
                return resp;
            }
            since = resp["next_batch"].as_str().map(str::to_owned);
            last = resp;
        }
        panic!("expected a sync response where {what} within {WAIT:?}; last response: {last}");
    }

    /// The `next_batch` of an immediate sync, to be used as `since`.
    pub async fn sync_token(&self) -> String {
        let resp = self.sync(None, 0, None).await;
        resp["next_batch"].as_str().unwrap_or_default().to_owned()
    }

    /// GET /rooms/{room}/messages with raw query parameters, expecting 200.
    pub async fn messages(&self, room: &str, params: &[(&str, &str)]) -> Value {
        let path = format!("/rooms/{}/messages{}", enc(room), query(params));
        let (status, body) = self.get(&path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected GET {path} to succeed, got {status}: {body}"
        );
        assert!(
            body["chunk"].is_array(),
            "expected a `chunk` array from {path}, got {body}"
        );
        assert!(
            body["start"].is_string(),
            "expected a string `start` from {path}, got {body}"
        );
        body
    }

    /// The whole visible timeline of `room`, oldest first, by paginating
    /// backwards from the end in pages of 100.
    pub async fn all_messages(&self, room: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        for _ in 0..1000 {
            let mut params = vec![("dir", "b"), ("limit", "100")];
            if let Some(from) = &from {
                params.push(("from", from.as_str()));
            }
            let page = self.messages(room, &params).await;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            let empty = chunk.is_empty();
            events.extend(chunk);
            match page["end"].as_str() {
                Some(end) if !empty => {
                    assert_ne!(
                        Some(end),
                        from.as_deref(),
                        "expected /messages `end` to move on, got {page}"
                    );
                    from = Some(end.to_owned());
                }
                _ => {
                    events.reverse();
                    return events;
                }
            }
        }
        panic!("expected backwards pagination of {room} to finish within 1000 pages");
    }
}

/// `?k=v&…` with values percent-encoded; empty when there are no pairs.
pub fn query(params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("?{}", pairs.join("&"))
}

fn event_id_of(resp: &Value, what: &str) -> String {
    resp["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string event_id from {what}, got {resp}"))
        .to_owned()
}
