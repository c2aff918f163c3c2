//! The appservice: configuration, the HTTP side the homeserver calls, and the event stream.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{header::AUTHORIZATION, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use futures::{future::BoxFuture, Stream};
use ruma::{
    events::AnyTimelineEvent, serde::Raw, OwnedRoomAliasId, OwnedUserId, RoomAliasId, ServerName,
    UserId,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::{net::TcpListener, sync::mpsc};

use crate::{
    connection::Connection,
    error::Result,
    event::Event,
    intent::Intent,
    registration::Registration,
    store::{MemoryStore, StateStore},
};

/// How many transaction ids the appservice remembers in memory by default.
pub const DEFAULT_RECENT_TXNS: usize = 1024;

/// Transactions carry up to 100 events of up to 64 KiB each.
const MAX_TRANSACTION_BYTES: usize = 16 * 1024 * 1024;

/// An answer to a user or alias query: `true` when the user or alias now exists.
pub type QueryHandler<T> = Arc<dyn Fn(Appservice, T) -> BoxFuture<'static, bool> + Send + Sync>;

/// The appservice: cheap to clone, shared by the HTTP side and the bot's code.
#[derive(Clone)]
pub struct Appservice {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Arc<Connection>,
    events: mpsc::Sender<Event>,
    /// Held while a transaction is processed, so transactions are delivered one at a time, in
    /// the order they arrive, and a retry racing the original is seen as a repeat.
    recent: tokio::sync::Mutex<RecentTxns>,
    user_query: Option<QueryHandler<OwnedUserId>>,
    alias_query: Option<QueryHandler<OwnedRoomAliasId>>,
}

impl std::fmt::Debug for Appservice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appservice")
            .field("id", &self.inner.conn.registration.id)
            .field("homeserver", &self.inner.conn.homeserver)
            .field("server_name", &self.inner.conn.server_name)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Appservice`]; see [`Appservice::builder`].
pub struct AppserviceBuilder {
    registration: Registration,
    homeserver: String,
    server_name: String,
    store: Option<Arc<dyn StateStore>>,
    user_query: Option<QueryHandler<OwnedUserId>>,
    alias_query: Option<QueryHandler<OwnedRoomAliasId>>,
    recent_txns: usize,
    queue: usize,
}

impl AppserviceBuilder {
    /// Where processed transactions, registered users and the bot's own data are kept
    /// (default: a [`MemoryStore`]).
    pub fn store(mut self, store: impl StateStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Answers the homeserver's `GET /_matrix/app/v1/users/{userId}`: return `true` after
    /// creating the user (default: every user is unknown, 404).
    pub fn on_user_query<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Appservice, OwnedUserId) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.user_query = Some(Arc::new(move |a, u| Box::pin(f(a, u))));
        self
    }

    /// Answers the homeserver's `GET /_matrix/app/v1/rooms/{roomAlias}`: return `true` after
    /// creating a room with that alias (default: 404).
    pub fn on_alias_query<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Appservice, OwnedRoomAliasId) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.alias_query = Some(Arc::new(move |a, r| Box::pin(f(a, r))));
        self
    }

    /// How many recent transaction ids are remembered in memory (default 1024).
    pub fn recent_txns(mut self, n: usize) -> Self {
        self.recent_txns = n.max(1);
        self
    }

    /// How many events may wait for the bot before the appservice stops answering the
    /// homeserver (which then retries later); default 1024.
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// The appservice and the stream of events the homeserver pushes to it.
    pub fn build(self) -> Result<(Appservice, Events)> {
        let server_name = ServerName::parse(&self.server_name)?;
        let (tx, rx) = mpsc::channel(self.queue);
        let inner = Inner {
            conn: Arc::new(Connection {
                registration: self.registration,
                homeserver: self.homeserver.trim_end_matches('/').to_owned(),
                server_name,
                http: reqwest::Client::new(),
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                #[cfg(feature = "e2ee")]
                crypto: std::sync::OnceLock::new(),
            }),
            events: tx,
            recent: tokio::sync::Mutex::new(RecentTxns::new(self.recent_txns)),
            user_query: self.user_query,
            alias_query: self.alias_query,
        };
        Ok((
            Appservice {
                inner: Arc::new(inner),
            },
            Events { rx },
        ))
    }
}

impl Appservice {
    /// Starts building the appservice of `registration`, talking to the homeserver at
    /// `homeserver_url` (its client-server API base, e.g. `https://matrix.example.org`) whose
    /// users are `@…:server_name`.
    pub fn builder(
        registration: Registration,
        homeserver_url: &str,
        server_name: &str,
    ) -> AppserviceBuilder {
        AppserviceBuilder {
            registration,
            homeserver: homeserver_url.to_owned(),
            server_name: server_name.to_owned(),
            store: None,
            user_query: None,
            alias_query: None,
            recent_txns: DEFAULT_RECENT_TXNS,
            queue: 1024,
        }
    }

    /// The registration.
    pub fn registration(&self) -> &Registration {
        &self.inner.conn.registration
    }

    /// The homeserver's name.
    pub fn server_name(&self) -> &ServerName {
        &self.inner.conn.server_name
    }

    /// The state store.
    pub fn store(&self) -> &dyn StateStore {
        self.inner.conn.store.as_ref()
    }

    /// `@sender_localpart:server_name`, the appservice's own user.
    pub fn bot_user_id(&self) -> Result<OwnedUserId> {
        self.inner.conn.bot_user_id()
    }

    /// An [`Intent`] acting as the appservice's own user.
    pub fn bot(&self) -> Result<Intent> {
        Ok(Intent::new(self.inner.conn.clone(), self.bot_user_id()?))
    }

    /// An [`Intent`] acting as a user of the appservice: `localpart` or a full `@user:server`.
    pub fn intent(&self, localpart_or_user_id: &str) -> Result<Intent> {
        let user_id = if localpart_or_user_id.starts_with('@') {
            UserId::parse(localpart_or_user_id)?
        } else {
            UserId::parse_with_server_name(localpart_or_user_id, &self.inner.conn.server_name)?
        };
        Ok(Intent::new(self.inner.conn.clone(), user_id))
    }

    /// The routes the homeserver calls, to mount in an axum server of your own.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
            .route("/_matrix/app/v1/users/{user_id}", get(user_query))
            .route("/_matrix/app/v1/rooms/{alias}", get(alias_query))
            .route("/_matrix/app/v1/ping", post(ping))
            // The unversioned paths of older drafts, which the spec asks homeservers to fall
            // back to when the versioned ones fail.
            .route("/transactions/{txn_id}", put(transaction))
            .route("/users/{user_id}", get(user_query))
            .route("/rooms/{alias}", get(alias_query))
            .fallback(unrecognized)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(MAX_TRANSACTION_BYTES))
            .with_state(self.clone())
    }

    /// Listens on `addr` and serves [`Appservice::router`] until the task is dropped.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        self.serve_listener(TcpListener::bind(addr).await?).await
    }

    /// Serves [`Appservice::router`] on a listener already bound (e.g. to a port 0 chosen
    /// before the registration was written).
    pub async fn serve_listener(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

#[cfg(feature = "e2ee")]
impl Appservice {
    /// Gives `localpart_or_user_id` (the bot's localpart, or one of its users) an encrypted
    /// device `device_id`: creates the device (MSC4190, `PUT /devices/{deviceId}`), starts
    /// its Olm machine and uploads its identity and one-time keys. From then on the
    /// transactions' keys and to-device messages for it (MSC3202/MSC4203; the registration
    /// needs `org.matrix.msc3202: true`) reach the machine, `m.room.encrypted` events reach
    /// [`Events`] decrypted, and that user's [`Intent::send_event`] encrypts in rooms with
    /// `m.room.encryption`.
    ///
    /// One encrypted device per appservice; its keys live in memory, so after a restart
    /// call this with a new `device_id` (old messages then stay undecryptable), or use
    /// [`Appservice::enable_encryption_with_store`].
    pub async fn enable_encryption(
        &self,
        localpart_or_user_id: &str,
        device_id: &str,
    ) -> Result<()> {
        self.start_encryption(localpart_or_user_id, device_id, None)
            .await
    }

    /// [`Appservice::enable_encryption`] with the device's keys, Olm and Megolm sessions kept
    /// in a SQLite crypto store in the directory `store_dir` (created if needed; private
    /// keys encrypted with `passphrase` when given). After a restart the same call finds the
    /// same device and keys again. A store of another user or device is an error.
    pub async fn enable_encryption_with_store(
        &self,
        localpart_or_user_id: &str,
        device_id: &str,
        store_dir: impl AsRef<std::path::Path>,
        passphrase: Option<&str>,
    ) -> Result<()> {
        self.start_encryption(
            localpart_or_user_id,
            device_id,
            Some((store_dir.as_ref(), passphrase)),
        )
        .await
    }

    async fn start_encryption(
        &self,
        localpart_or_user_id: &str,
        device_id: &str,
        store: Option<(&std::path::Path, Option<&str>)>,
    ) -> Result<()> {
        let intent = self.intent(localpart_or_user_id)?;
        let conn = &self.inner.conn;
        if let Some(existing) = conn.crypto.get() {
            if existing.user_id() == intent.user_id() && existing.device_id() == device_id {
                return Ok(());
            }
            return Err(crate::Error::invalid(format!(
                "encryption is already enabled for {} {}; an appservice has one encrypted device",
                existing.user_id(),
                existing.device_id()
            )));
        }
        if device_id.is_empty() || device_id.contains(['/', '?', '#']) {
            return Err(crate::Error::invalid(format!(
                "{device_id:?} is not a usable device id"
            )));
        }
        intent.ensure_registered().await?;
        let crypto = crate::e2ee::Crypto::start(
            &conn.link(),
            intent.user_id().to_owned(),
            device_id.into(),
            &format!("{} (paracord-appservice)", self.registration().id),
            store,
        )
        .await?;
        conn.crypto
            .set(crypto)
            .map_err(|_| crate::Error::invalid("encryption was enabled twice at once"))
    }

    /// The Olm machine of the encrypted device, once [`Appservice::enable_encryption`] made it
    /// (to verify devices, read its identity keys…).
    pub fn olm_machine(&self) -> Option<&matrix_sdk_crypto::OlmMachine> {
        self.inner.conn.crypto.get().map(|c| c.machine())
    }
}

/// The events the homeserver pushed, in order. Also a [`Stream`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the appservice is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A bounded set of recently processed transaction ids: the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct RecentTxns {
    order: VecDeque<String>,
    set: HashSet<String>,
    capacity: usize,
}

impl RecentTxns {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            capacity,
        }
    }

    pub(crate) fn contains(&self, txn_id: &str) -> bool {
        self.set.contains(txn_id)
    }

    pub(crate) fn insert(&mut self, txn_id: &str) {
        if !self.set.insert(txn_id.to_owned()) {
            return;
        }
        self.order.push_back(txn_id.to_owned());
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

fn matrix_error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": message}))).into_response()
}

fn ok() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

/// Why a request from the homeserver is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    Missing,
    Wrong,
}

/// Checks the `hs_token`: `Authorization: Bearer`, or the legacy `?access_token=` (both must
/// match when both are given), compared in constant time.
pub(crate) fn check_hs_token(
    expected: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), AuthFailure> {
    let from_header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let from_query = query.get("access_token").map(String::as_str);
    let given: Vec<&str> = from_header.into_iter().chain(from_query).collect();
    if given.is_empty() {
        return Err(AuthFailure::Missing);
    }
    // Every token given is compared, so the time taken does not say which one was wrong.
    let all_match = given.iter().fold(subtle::Choice::from(1), |ok, token| {
        ok & token.as_bytes().ct_eq(expected.as_bytes())
    });
    if bool::from(all_match) {
        Ok(())
    } else {
        Err(AuthFailure::Wrong)
    }
}

/// The answer refusing a request whose `hs_token` is missing or wrong, if it is.
fn refusal(
    app: &Appservice,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    match check_hs_token(&app.inner.conn.registration.hs_token, headers, query) {
        Ok(()) => None,
        Err(AuthFailure::Missing) => Some(matrix_error(
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "no hs_token was given",
        )),
        Err(AuthFailure::Wrong) => Some(matrix_error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "the hs_token is wrong",
        )),
    }
}

#[derive(Deserialize)]
struct TransactionBody {
    #[serde(default)]
    events: Vec<Raw<AnyTimelineEvent>>,
    /// MSC3202/MSC4203 key counts, device lists and to-device messages.
    #[cfg(feature = "e2ee")]
    #[serde(flatten)]
    crypto: crate::e2ee::TransactionCrypto,
}

/// `PUT /_matrix/app/v1/transactions/{txnId}`: events from the homeserver.
async fn transaction(
    State(app): State<Appservice>,
    Path(txn_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refusal(&app, &headers, &query) {
        return refused;
    }
    let body: TransactionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return matrix_error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                "the body is not JSON",
            )
        }
        Err(_) => {
            return matrix_error(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                "the body is not a transaction",
            )
        }
    };
    // Delivered in a task of its own: if the homeserver gives up on the request (a timeout
    // while the bot is slow), the delivery still finishes and the transaction is recorded,
    // so the retry is recognised instead of delivering the first events twice.
    let delivery = tokio::spawn(deliver(app, txn_id, body));
    match delivery.await {
        Ok(()) => ok(),
        Err(e) => {
            tracing::warn!(error = %e, "delivering a transaction");
            matrix_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "internal error",
            )
        }
    }
}

/// Hands a transaction's events to the bot unless it was processed before, then records it.
async fn deliver(app: Appservice, txn_id: String, body: TransactionBody) {
    let mut recent = app.inner.recent.lock().await;
    let seen = recent.contains(&txn_id)
        || app
            .inner
            .conn
            .store
            .txn_processed(&txn_id)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading processed transactions");
                false
            });
    if seen {
        tracing::debug!(txn_id, "transaction already processed");
        return;
    }
    let count = body.events.len();
    #[cfg(feature = "e2ee")]
    let crypto = app.inner.conn.crypto.get();
    // The keys first (a room key may come with the message it opens), then the events kept
    // undecryptable that decrypt now, then this transaction's events.
    #[cfg(feature = "e2ee")]
    let mut earlier = Vec::new();
    #[cfg(feature = "e2ee")]
    if let Some(crypto) = crypto {
        if let Err(e) = crypto
            .receive_transaction(&app.inner.conn.link(), &body.crypto)
            .await
        {
            tracing::warn!(error = %e, "handling a transaction's encryption keys");
        }
        earlier = crypto.retry_pending().await;
    }
    #[cfg(feature = "e2ee")]
    for event in earlier {
        if app.inner.events.send(event).await.is_err() {
            break;
        }
    }
    for raw in body.events {
        #[cfg(feature = "e2ee")]
        let event = match crypto {
            Some(crypto) => crypto.process_event(raw).await,
            None => Event::new(raw),
        };
        #[cfg(not(feature = "e2ee"))]
        let event = Event::new(raw);
        // The bot dropped its stream: nothing to deliver to, but the transaction is done.
        if app.inner.events.send(event).await.is_err() {
            break;
        }
    }
    recent.insert(&txn_id);
    if let Err(e) = app.inner.conn.store.mark_txn_processed(&txn_id) {
        tracing::warn!(error = %e, "recording a processed transaction");
    }
    tracing::debug!(txn_id, count, "transaction delivered");
}

/// `GET /_matrix/app/v1/users/{userId}`.
async fn user_query(
    State(app): State<Appservice>,
    Path(user_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&app, &headers, &query) {
        return refused;
    }
    let Ok(user_id) = UserId::parse(&user_id) else {
        return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "not a user id");
    };
    match &app.inner.user_query {
        Some(handler) if handler(app.clone(), user_id).await => ok(),
        _ => matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user"),
    }
}

/// `GET /_matrix/app/v1/rooms/{roomAlias}`.
async fn alias_query(
    State(app): State<Appservice>,
    Path(alias): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&app, &headers, &query) {
        return refused;
    }
    let Ok(alias) = RoomAliasId::parse(&alias) else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "not a room alias",
        );
    };
    match &app.inner.alias_query {
        Some(handler) if handler(app.clone(), alias).await => ok(),
        _ => matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such room alias"),
    }
}

/// `POST /_matrix/app/v1/ping`.
async fn ping(
    State(app): State<Appservice>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&app, &headers, &query) {
        return refused;
    }
    ok()
}

async fn method_not_allowed() -> Response {
    matrix_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "unsupported method",
    )
}

async fn unrecognized() -> Response {
    matrix_error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "unrecognized request",
    )
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::registration::user_namespace;

    fn app() -> (Appservice, Events) {
        let r = Registration::generate(
            "t",
            Some("http://127.0.0.1:1"),
            "tbot",
            [user_namespace("@t_.*:example\\.org")],
        );
        Appservice::builder(r, "http://127.0.0.1:1", "example.org")
            .recent_txns(2)
            .build()
            .unwrap()
    }

    fn message(body: &str) -> Value {
        json!({
            "type": "m.room.message", "event_id": format!("${body}"), "room_id": "!r:example.org",
            "sender": "@u:example.org", "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": body},
        })
    }

    async fn call(
        app: &Appservice,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = app
            .router()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn put_txn(app: &Appservice, txn: &str, events: Vec<Value>) -> StatusCode {
        let auth = format!("Bearer {}", app.registration().hs_token);
        call(
            app,
            "PUT",
            &format!("/_matrix/app/v1/transactions/{txn}"),
            Some(&auth),
            json!({"events": events}),
        )
        .await
        .0
    }

    fn drain(events: &mut Events) -> Vec<String> {
        let mut bodies = Vec::new();
        while let Ok(e) = events.rx.try_recv() {
            bodies.push(e.message().unwrap().body);
        }
        bodies
    }

    #[tokio::test]
    async fn a_repeated_transaction_is_answered_but_not_delivered_again() {
        let (app, mut events) = app();
        assert_eq!(
            put_txn(&app, "1", vec![message("a"), message("b")]).await,
            StatusCode::OK
        );
        assert_eq!(
            put_txn(&app, "1", vec![message("a"), message("b")]).await,
            StatusCode::OK
        );
        assert_eq!(put_txn(&app, "2", vec![message("c")]).await, StatusCode::OK);
        assert_eq!(drain(&mut events), ["a", "b", "c"]);
        assert!(app.store().txn_processed("1").unwrap());
    }

    #[tokio::test]
    async fn the_store_remembers_what_the_bounded_memory_forgot() {
        let (app, mut events) = app();
        for t in ["1", "2", "3"] {
            put_txn(&app, t, vec![message(t)]).await;
        }
        // The in-memory window holds 2 ids; "1" fell out of it but the store has it.
        assert!(!app.inner.recent.lock().await.contains("1"));
        put_txn(&app, "1", vec![message("1")]).await;
        assert_eq!(drain(&mut events), ["1", "2", "3"]);
    }

    #[tokio::test]
    async fn a_transaction_abandoned_by_the_server_is_still_delivered_once() {
        let r = Registration::generate("t", None, "tbot", [user_namespace("t_.*")]);
        let (app, mut events) = Appservice::builder(r, "http://127.0.0.1:1", "example.org")
            .queue(1)
            .build()
            .unwrap();
        // The bot is slow: the queue holds one event, so the delivery of three waits...
        let first = {
            let app = app.clone();
            tokio::spawn(async move {
                put_txn(&app, "1", vec![message("a"), message("b"), message("c")]).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // ...and the homeserver gives up on the request.
        first.abort();
        let mut got = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv());
            let event = next
                .await
                .expect("the rest of the transaction is delivered");
            got.push(event.unwrap().message().unwrap().body);
        }
        assert_eq!(got, ["a", "b", "c"]);
        // The retry is recognised once the delivery finished.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !app.store().txn_processed("1").unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the transaction was not recorded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let retry = vec![message("a"), message("b"), message("c")];
        assert_eq!(put_txn(&app, "1", retry).await, StatusCode::OK);
        assert!(events.try_recv().is_none());
    }

    #[tokio::test]
    async fn processed_transactions_survive_a_restart_with_the_file_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let r = Registration::generate("t", None, "tbot", [user_namespace("t_.*")]);
        let start = |r: Registration| {
            let store = crate::store::JsonFileStore::open(&path).unwrap();
            Appservice::builder(r, "http://127.0.0.1:1", "example.org")
                .store(store)
                .build()
                .unwrap()
        };
        let (app, mut events) = start(r.clone());
        put_txn(&app, "1", vec![message("a")]).await;
        assert_eq!(drain(&mut events), ["a"]);
        drop((app, events));
        // A new process: nothing in memory, the file remembers.
        let (app, mut events) = start(r);
        put_txn(&app, "1", vec![message("a")]).await;
        put_txn(&app, "2", vec![message("b")]).await;
        assert_eq!(drain(&mut events), ["b"]);
    }

    #[test]
    fn recent_txns_forget_the_oldest() {
        let mut r = RecentTxns::new(2);
        r.insert("a");
        r.insert("b");
        r.insert("a");
        r.insert("c");
        assert!(!r.contains("a"));
        assert!(r.contains("b") && r.contains("c"));
    }

    #[test]
    fn token_check() {
        let none = HashMap::new();
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(
            check_hs_token("s3cret", &header("Bearer s3cret"), &none),
            Ok(())
        );
        assert_eq!(
            check_hs_token("s3cret", &header("bearer  s3cret "), &none),
            Ok(())
        );
        assert_eq!(
            check_hs_token("s3cret", &header("Bearer s3cre"), &none),
            Err(AuthFailure::Wrong)
        );
        assert_eq!(
            check_hs_token("s3cret", &header("Bearer s3cretx"), &none),
            Err(AuthFailure::Wrong)
        );
        assert_eq!(
            check_hs_token("s3cret", &header("Basic s3cret"), &none),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            check_hs_token("s3cret", &HeaderMap::new(), &none),
            Err(AuthFailure::Missing)
        );
        let legacy = HashMap::from([("access_token".to_owned(), "s3cret".to_owned())]);
        assert_eq!(check_hs_token("s3cret", &HeaderMap::new(), &legacy), Ok(()));
        let wrong = HashMap::from([("access_token".to_owned(), "nope".to_owned())]);
        assert_eq!(
            check_hs_token("s3cret", &HeaderMap::new(), &wrong),
            Err(AuthFailure::Wrong)
        );
        // Both given: both must match.
        let ok = HashMap::from([("access_token".to_owned(), "s3cret".to_owned())]);
        let bad = HashMap::from([("access_token".to_owned(), "nope".to_owned())]);
        let both = |h: &str, q: &HashMap<String, String>| check_hs_token("s3cret", &header(h), q);
        assert_eq!(both("Bearer s3cret", &bad), Err(AuthFailure::Wrong));
        assert_eq!(both("Bearer nope", &ok), Err(AuthFailure::Wrong));
        assert_eq!(both("Bearer s3cret", &ok), Ok(()));
    }

    #[tokio::test]
    async fn requests_without_or_with_a_wrong_token_are_refused() {
        let (app, mut events) = app();
        let body = json!({"events": [message("x")]});
        let (s, b) = call(
            &app,
            "PUT",
            "/_matrix/app/v1/transactions/1",
            None,
            body.clone(),
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("M_UNAUTHORIZED"))
        );
        let (s, b) = call(
            &app,
            "PUT",
            "/_matrix/app/v1/transactions/1",
            Some("Bearer wrong"),
            body.clone(),
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        let (s, b) = call(
            &app,
            "POST",
            "/_matrix/app/v1/ping?access_token=wrong",
            None,
            json!({}),
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
        );
        assert!(drain(&mut events).is_empty());
        // Refused transactions are not remembered: the real one is delivered.
        let uri = format!(
            "/_matrix/app/v1/transactions/1?access_token={}",
            app.registration().hs_token
        );
        assert_eq!(call(&app, "PUT", &uri, None, body).await.0, StatusCode::OK);
        assert_eq!(drain(&mut events), ["x"]);
    }

    #[tokio::test]
    async fn queries_ping_and_unknown_paths() {
        let (app, _events) = app();
        let auth = format!("Bearer {}", app.registration().hs_token);
        let auth = Some(auth.as_str());
        let (s, b) = call(
            &app,
            "GET",
            "/_matrix/app/v1/users/%40t_a%3Aexample.org",
            auth,
            Value::Null,
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let (s, _) = call(
            &app,
            "POST",
            "/_matrix/app/v1/ping",
            auth,
            json!({"transaction_id": "p"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = call(
            &app,
            "GET",
            "/_matrix/app/v1/thirdparty/protocol/x",
            auth,
            Value::Null,
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED"))
        );
        let (s, b) = call(
            &app,
            "PUT",
            "/_matrix/app/v1/transactions/9",
            auth,
            json!({"events": 5}),
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
        );

        // The legacy unversioned paths, and a known path with the wrong method.
        let (s, b) = call(
            &app,
            "PUT",
            "/transactions/legacy",
            auth,
            json!({"events": []}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = call(
            &app,
            "GET",
            "/users/%40t_a%3Aexample.org",
            auth,
            Value::Null,
        )
        .await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let (s, b) = call(&app, "GET", "/_matrix/app/v1/ping", auth, Value::Null).await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("M_UNRECOGNIZED"))
        );

        let r = app.registration().clone();
        let (app, _events) = Appservice::builder(r, "http://127.0.0.1:1", "example.org")
            .on_user_query(|_, user: OwnedUserId| async move { user.localpart() == "t_known" })
            .on_alias_query(|_, alias: OwnedRoomAliasId| async move { alias.alias() == "t_room" })
            .build()
            .unwrap();
        let get = |uri: &'static str| {
            let app = app.clone();
            let auth = auth.map(str::to_owned);
            async move { call(&app, "GET", uri, auth.as_deref(), Value::Null).await.0 }
        };
        assert_eq!(
            get("/_matrix/app/v1/users/%40t_known%3Aexample.org").await,
            StatusCode::OK
        );
        assert_eq!(
            get("/_matrix/app/v1/users/%40t_other%3Aexample.org").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/_matrix/app/v1/rooms/%23t_room%3Aexample.org").await,
            StatusCode::OK
        );
        assert_eq!(
            get("/_matrix/app/v1/rooms/%23t_no%3Aexample.org").await,
            StatusCode::NOT_FOUND
        );
    }
}
