//! `appservice`: M messages from S concurrent senders into a room an application service's
//! bot is in; the tool is that appservice (an HTTP receiver on the registration's `url`) and
//! measures how fast the server's transactions bring the events to it.
//!
//! The server must have been started with a registration whose `url` is `--listen`, whose
//! tokens are `--as-token`/`--hs-token`, whose `sender_localpart` is `--bot`, with
//! `rate_limited: false` and no room namespace (only rooms the bot is in interest it, so the
//! other scenarios are not delivered). `scripts/bench` writes such a registration for both
//! servers.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::put,
    Json, Router,
};
use futures::future::join_all as join_futures;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::{
    client::{Target, User},
    error::LoadError,
    report::Report,
    scenario::{bound, join_all, register::phase},
    stats::{per_s, Errors, Latencies},
};

/// Parameters of `appservice`.
#[derive(Clone, Debug, clap::Args)]
pub struct AppserviceParams {
    /// Messages to send in total (1..=100000).
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Concurrent senders, each sending its share one after another (1..=64).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// The appservice side: where to listen, the tokens and the bot's localpart.
    #[command(flatten)]
    pub registration: AppserviceRegistration,
}

/// What the server's registration of the load tool's appservice says.
#[derive(Clone, Debug, clap::Args)]
pub struct AppserviceRegistration {
    /// The address the registration's `url` points at (loopback).
    #[arg(long = "appservice-listen")]
    pub listen: SocketAddr,
    /// The registration's `as_token`.
    #[arg(long = "appservice-as-token")]
    pub as_token: String,
    /// The registration's `hs_token` (the server's transactions must carry it).
    #[arg(long = "appservice-hs-token")]
    pub hs_token: String,
    /// The registration's `sender_localpart`.
    #[arg(long = "appservice-bot", default_value = "loadbot")]
    pub bot: String,
}

impl AppserviceParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("messages", self.messages, 1, 100_000)?;
        bound("senders", self.senders, 1, 64)?;
        if !self.registration.listen.ip().is_loopback() {
            return Err(LoadError::Params(format!(
                "--appservice-listen {} is not a loopback address",
                self.registration.listen
            )));
        }
        Ok(())
    }
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Arrival time of each measured message, by its index.
    arrivals: HashMap<usize, Instant>,
    /// Room ids whose bot join was delivered.
    bot_joins: Vec<String>,
    transactions: usize,
    events: usize,
    /// Transactions refused for a wrong or missing hs_token.
    unauthorized: usize,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    hs_token: Arc<str>,
    /// `load <run> as <i>`: the prefix of measured bodies.
    prefix: Arc<str>,
    bot: Arc<str>,
}

async fn transaction(
    State(r): State<Receiver>,
    Path(_txn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let now = Instant::now();
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == &*r.hs_token);
    let mut seen = r.seen.lock().unwrap_or_else(|e| e.into_inner());
    if !authorized {
        seen.unauthorized += 1;
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "errcode": "M_FORBIDDEN", "error": "wrong hs_token" })),
        );
    }
    seen.transactions += 1;
    for event in body["events"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        seen.events += 1;
        match event["type"].as_str() {
            Some("m.room.message") => {
                let index = event["content"]["body"]
                    .as_str()
                    .and_then(|b| b.strip_prefix(&*r.prefix))
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(i) = index {
                    seen.arrivals.entry(i).or_insert(now);
                }
            }
            Some("m.room.member")
                if event["content"]["membership"] == "join"
                    && event["state_key"]
                        .as_str()
                        .is_some_and(|k| k.starts_with(&format!("@{}:", r.bot))) =>
            {
                if let Some(room) = event["room_id"].as_str() {
                    seen.bot_joins.push(room.to_owned());
                }
            }
            _ => {}
        }
    }
    drop(seen);
    r.changed.notify_waiters();
    (StatusCode::OK, Json(json!({})))
}

impl Receiver {
    /// Waits until `done` holds for what was seen, or until `limit` passes.
    async fn wait(&self, limit: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if done(&self.seen.lock().unwrap_or_else(|e| e.into_inner())) {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return done(&self.seen.lock().unwrap_or_else(|e| e.into_inner()));
            }
        }
    }
}

/// Runs the `appservice` scenario.
pub async fn appservice(target: &Target, p: &AppserviceParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("appservice", run(target, p)).await
}

async fn run(target: &Target, p: &AppserviceParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("appservice", target);
    report.param("messages", p.messages);
    report.param("senders", p.senders);

    let receiver = Receiver {
        seen: Arc::default(),
        changed: Arc::new(Notify::new()),
        hs_token: p.registration.hs_token.as_str().into(),
        prefix: format!("load {} as ", target.run_id()).into(),
        bot: p.registration.bot.as_str().into(),
    };
    let listener = tokio::net::TcpListener::bind(p.registration.listen)
        .await
        .map_err(|e| {
            LoadError::Params(format!(
                "cannot listen on {} for the appservice: {e}",
                p.registration.listen
            ))
        })?;
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/transactions/{txn}", put(transaction))
        .with_state(receiver.clone());
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let result = measure(target, p, &receiver, &deadline, &mut report).await;
    // The listener is closed once the task is gone, so the next run can listen again.
    serving.abort();
    let _ = serving.await;
    let (errors, timed_out) = result?;
    Ok(report.finish(errors, timed_out))
}

async fn measure(
    target: &Target,
    p: &AppserviceParams,
    receiver: &Receiver,
    deadline: &crate::client::Deadline,
    report: &mut Report,
) -> Result<(Errors, bool), LoadError> {
    let users = target.register_many(p.senders, deadline).await?;
    let Some((owner, others)) = users.split_first() else {
        return Err(LoadError::Params("no senders".into()));
    };
    let room = target.create_room(owner, "load appservice").await?;
    join_all(target, others, std::slice::from_ref(&room), deadline).await?;
    // The bot joins with the as_token; its join coming back in a transaction shows delivery
    // works (and that no back-off from an earlier failure is pending) before measuring.
    let bot = User {
        localpart: p.registration.bot.clone(),
        password: String::new(),
        token: p.registration.as_token.clone(),
    };
    target.join(&bot, &room).await?;
    let joined = receiver
        .wait(deadline.remaining(), |s| s.bot_joins.contains(&room))
        .await;
    if !joined {
        let seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
        return Err(LoadError::protocol(
            "appservice",
            format!(
                "the bot's join never reached the appservice ({} transactions, {} refused for \
                 their hs_token)",
                seen.transactions, seen.unauthorized
            ),
        ));
    }
    let warmup = {
        let seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.transactions, seen.events)
    };
    report.measuring();

    let room = &room;
    let start = Instant::now();
    let per_sender = users.iter().enumerate().map(|(s, user)| async move {
        let mut sent = Vec::new();
        let mut lat = Latencies::default();
        let mut errors = Errors::default();
        let mut timed_out = false;
        for i in (s..p.messages).step_by(p.senders) {
            if deadline.expired() {
                timed_out = true;
                break;
            }
            let t = Instant::now();
            let body = format!("load {} as {i}", target.run_id());
            match target
                .send_text(user, room, &format!("as-{i}"), &body)
                .await
            {
                Ok(_) => {
                    let done = Instant::now();
                    lat.push(done - t);
                    sent.push((i, t, done));
                }
                Err(e) => errors.record(&e),
            }
        }
        (sent, lat, errors, timed_out)
    });
    let results = join_futures(per_sender).await;
    let send_wall = start.elapsed();

    let mut sent = Vec::new();
    let mut lat = Latencies::default();
    let mut errors = Errors::default();
    let mut timed_out = false;
    for (s, l, e, t) in results {
        sent.extend(s);
        lat.extend(l);
        errors.merge(e);
        timed_out |= t;
    }
    let want = sent.len();
    let all_in = receiver
        .wait(deadline.remaining(), |s| s.arrivals.len() >= want)
        .await;
    timed_out |= !all_in;

    let seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
    // `deliver`: from the send's request to the event's arrival at the appservice (what a
    // bridge's user waits); `added`: from the send's answer to the arrival, what the
    // appservice path adds to sending (a transaction often arrives before the answer does:
    // that counts as 0).
    let mut deliver = Latencies::default();
    let mut added = Latencies::default();
    let mut last = start;
    for (i, requested, answered) in &sent {
        if let Some(arrived) = seen.arrivals.get(i) {
            deliver.push(arrived.saturating_duration_since(*requested));
            added.push(arrived.saturating_duration_since(*answered));
            last = last.max(*arrived);
        }
    }
    if added.len() < want {
        errors.note(format!(
            "{} of {want} sent messages never reached the appservice",
            want - added.len()
        ));
    }
    let transactions = seen.transactions - warmup.0;
    let events = seen.events - warmup.1;
    report.count("messages_sent", want);
    report.count("delivered", added.len());
    report.count("transactions", transactions);
    phase(report, "send", "messages_per_s", &lat, send_wall);
    let deliver_wall = last.saturating_duration_since(start);
    report.metric("deliver_s", deliver_wall.as_secs_f64());
    report.metric("delivered_per_s", per_s(added.len(), deliver_wall));
    report.latencies("deliver", &deliver);
    report.latencies("added", &added);
    if transactions > 0 {
        report.metric(
            "events_per_transaction",
            events as f64 / transactions as f64,
        );
    }
    Ok((errors, timed_out))
}
