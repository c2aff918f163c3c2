//! `fanout`: K users long-poll `/sync` in one room while one user sends M
//! messages one at a time, each only once all K have seen the one before.
//! Measures the time from the send returning to each listener seeing the
//! event.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    client::{Deadline, Target, User},
    error::LoadError,
    report::Report,
    scenario::{body_of, bound, join_all, next_batch, timeline, TIMELINE_ONLY_FILTER},
    stats::{per_s, Errors, Latencies},
};

/// How long the listeners' long-polls wait on the server.
const LONG_POLL_MS: u64 = 30_000;
/// How long the sender waits for every listener to see one message.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause after a failed sync before the listener tries again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Parameters of `fanout`.
#[derive(Clone, Debug, clap::Args)]
pub struct FanoutParams {
    /// Users long-polling /sync in the room (1..=200).
    #[arg(long, default_value_t = 10)]
    pub listeners: usize,
    /// Messages sent, one at a time (1..=10000).
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
}

impl FanoutParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("listeners", self.listeners, 1, 200)?;
        bound("messages", self.messages, 1, 10_000)
    }
}

/// What listener tasks tell the sender.
enum Note {
    Ready,
    Seen {
        listener: usize,
        message: usize,
        at: Instant,
    },
    Failed(LoadError),
}

/// Runs the fan-out scenario.
pub async fn fanout(target: &Target, p: &FanoutParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("fanout", run(target, p)).await
}

async fn run(target: &Target, p: &FanoutParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("fanout", target);
    report.param("listeners", p.listeners);
    report.param("messages", p.messages);
    let mut users = target.register_many(p.listeners + 1, &deadline).await?;
    let sender = users.remove(0);
    let room = target.create_room(&sender, "load fanout").await?;
    join_all(target, &users, std::slice::from_ref(&room), &deadline).await?;

    let marker = format!("fanout {} ", target.run_id());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<Listener> = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| {
            Listener(tokio::spawn(listen(
                target.clone(),
                user,
                room.clone(),
                marker.clone(),
                i,
                deadline,
                tx.clone(),
            )))
        })
        .collect();
    drop(tx);

    let mut errors = Errors::default();
    // Every listener has its initial sync before the first send.
    let mut ready = 0;
    while ready < p.listeners {
        match tokio::time::timeout(deadline.remaining(), rx.recv()).await {
            Ok(Some(Note::Ready)) => ready += 1,
            Ok(Some(Note::Failed(e))) => return Err(e),
            Ok(Some(Note::Seen { .. })) => {}
            Ok(None) | Err(_) => {
                return Err(LoadError::TimeLimit("listeners' initial sync".into()))
            }
        }
    }
    report.measuring();

    let mut send_lat = Latencies::default();
    let mut deliver = Latencies::default();
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut early: HashMap<usize, Vec<(usize, Instant)>> = HashMap::new();
    let mut timed_out = false;
    let mut sent = 0;
    let start = Instant::now();
    for i in 0..p.messages {
        if deadline.expired() {
            timed_out = true;
            break;
        }
        let t = Instant::now();
        let result = target
            .send_text(
                &sender,
                &room,
                &format!("fanout-{i}"),
                &format!("{marker}{i}"),
            )
            .await;
        let sent_at = Instant::now();
        if let Err(e) = result {
            errors.record(&e);
            continue;
        }
        send_lat.push(sent_at - t);
        sent += 1;
        let mut arrivals = early.remove(&i).unwrap_or_default();
        let until = sent_at + DELIVERY_DEADLINE.min(deadline.remaining());
        while arrivals.len() < p.listeners {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(Note::Seen {
                    listener,
                    message,
                    at,
                })) => {
                    if !seen.insert((listener, message)) {
                        continue; // delivered twice; the first one counts
                    }
                    if message == i {
                        arrivals.push((listener, at));
                    } else {
                        early.entry(message).or_default().push((listener, at));
                    }
                }
                Ok(Some(Note::Failed(e))) => errors.record(&e),
                Ok(Some(Note::Ready)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if arrivals.len() < p.listeners {
            errors.note(format!(
                "message {i}: {} of {} listeners saw it within {DELIVERY_DEADLINE:?}",
                arrivals.len(),
                p.listeners
            ));
        }
        for (_, at) in arrivals {
            // A listener can be woken before the sender reads its response;
            // that counts as no delay at all.
            deliver.push(at.saturating_duration_since(sent_at));
        }
    }
    let wall = start.elapsed();
    drop(tasks);

    report.count("messages_sent", sent);
    report.count("deliveries", deliver.len());
    report.metric("fanout_s", wall.as_secs_f64());
    report.metric("messages_per_s", per_s(sent, wall));
    report.latencies("send", &send_lat);
    report.latencies("deliver", &deliver);
    report.metric("deliver_max_ms", deliver.max_ms());
    Ok(report.finish(errors, timed_out))
}

/// Aborts its task when dropped, so no long-poll outlives the scenario.
struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One listener: an initial sync, then long-polls until aborted or the
/// deadline, reporting each marked message it sees.
async fn listen(
    target: Target,
    user: User,
    room: String,
    marker: String,
    me: usize,
    deadline: Deadline,
    tx: mpsc::UnboundedSender<Note>,
) {
    let mut since = loop {
        match target
            .sync(&user, None, 0, Some(TIMELINE_ONLY_FILTER))
            .await
        {
            Ok(reply) => break next_batch(&reply.body),
            Err(e) => {
                if tx.send(Note::Failed(e)).is_err() || deadline.expired() {
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    if tx.send(Note::Ready).is_err() {
        return;
    }
    while !deadline.expired() {
        let poll = LONG_POLL_MS.min(deadline.remaining().as_millis() as u64);
        match target
            .sync(&user, Some(&since), poll, Some(TIMELINE_ONLY_FILTER))
            .await
        {
            Ok(reply) => {
                let at = Instant::now();
                for event in timeline(&reply.body, &room) {
                    let Some(n) = body_of(event).strip_prefix(marker.as_str()) else {
                        continue;
                    };
                    if let Ok(message) = n.parse() {
                        let note = Note::Seen {
                            listener: me,
                            message,
                            at,
                        };
                        if tx.send(note).is_err() {
                            return;
                        }
                    }
                }
                since = next_batch(&reply.body);
            }
            Err(e) => {
                if tx.send(Note::Failed(e)).is_err() {
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
