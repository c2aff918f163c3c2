//! `search`: Q full-text searches over a room of H messages.

use std::time::{Duration, Instant};

use crate::{
    client::Target,
    error::LoadError,
    report::Report,
    scenario::{bound, create_rooms, register::phase},
    stats::{Errors, Latencies},
};

/// The words message bodies and queries draw from: message i carries word
/// `i % 20`.
const VOCABULARY: [&str; 20] = [
    "apple", "breeze", "candle", "dolphin", "ember", "falcon", "glacier", "harbor", "island",
    "jasmine", "kettle", "lantern", "meadow", "nectar", "orchid", "pebble", "quartz", "river",
    "saddle", "thistle",
];

/// How long the index may take to hold every message (Paracord commits its
/// index every 0.5 s; Synapse indexes as it persists).
const INDEX_WAIT: Duration = Duration::from_secs(30);
const INDEX_POLL: Duration = Duration::from_millis(200);

/// Parameters of `search`.
#[derive(Clone, Debug, clap::Args)]
pub struct SearchParams {
    /// Messages in the room (1..=20000).
    #[arg(long, default_value_t = 500)]
    pub history: usize,
    /// Searches to time (1..=10000).
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
}

impl SearchParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("history", self.history, 1, 20_000)?;
        bound("queries", self.queries, 1, 10_000)
    }
}

/// Runs the search scenario.
pub async fn search(target: &Target, p: &SearchParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("search", run(target, p)).await
}

async fn run(target: &Target, p: &SearchParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("search", target);
    report.param("history", p.history);
    report.param("queries", p.queries);
    let user = target
        .register_many(1, &deadline)
        .await?
        .pop()
        .ok_or_else(|| LoadError::Params("no user".into()))?;
    let rooms = create_rooms(target, &user, 1, &deadline).await?;
    let room = rooms
        .first()
        .ok_or_else(|| LoadError::Params("no room".into()))?;
    // One token, unique to the run, so earlier runs' messages do not count.
    let marker = format!("srch{}", target.run_id());
    let (user_ref, marker_ref) = (&user, &marker);
    let sent = target
        .limited((0..p.history).collect(), |i| async move {
            deadline.check("filling history")?;
            let word = VOCABULARY[i % VOCABULARY.len()];
            let body = format!("{marker_ref} {word} message {i}");
            target
                .send_text(user_ref, room, &format!("search-{i}"), &body)
                .await
                .map(drop)
        })
        .await;
    sent.into_iter().collect::<Result<(), LoadError>>()?;

    // Wait until a search for the marker finds every message.
    let wait_start = Instant::now();
    let wait_until = wait_start + INDEX_WAIT.min(deadline.remaining());
    loop {
        let reply = target.search(&user, &marker).await?;
        let found = reply.body["search_categories"]["room_events"]["count"]
            .as_u64()
            .unwrap_or_default();
        if found >= p.history as u64 {
            break;
        }
        if Instant::now() >= wait_until {
            return Err(LoadError::protocol(
                "search",
                format!(
                    "the index holds {found} of {} messages after {:?}",
                    p.history,
                    wait_start.elapsed()
                ),
            ));
        }
        tokio::time::sleep(INDEX_POLL).await;
    }
    report.metric("index_wait_s", wait_start.elapsed().as_secs_f64());
    report.measuring();

    let mut lat = Latencies::default();
    let mut errors = Errors::default();
    let mut timed_out = false;
    let mut results = 0;
    let start = Instant::now();
    for q in 0..p.queries {
        if deadline.expired() {
            timed_out = true;
            break;
        }
        let term = format!("{marker} {}", VOCABULARY[q % VOCABULARY.len()]);
        let t = Instant::now();
        match target.search(&user, &term).await {
            Ok(reply) => match reply.body["search_categories"]["room_events"]["results"].as_array()
            {
                Some(hits) => {
                    lat.push(t.elapsed());
                    results += hits.len();
                }
                None => errors.note(format!(
                    "search for {term:?}: no search_categories.room_events.results in {}",
                    reply.body
                )),
            },
            Err(e) => errors.record(&e),
        }
    }
    let wall = start.elapsed();
    report.count("queries", lat.len());
    report.count("results", results);
    phase(&mut report, "query", "queries_per_s", &lat, wall);
    Ok(report.finish(errors, timed_out))
}
