//! `initial-sync`: one user in R rooms, each with H messages. Times an
//! initial `/sync` (no filter), an incremental one with nothing new, and an
//! incremental one with one new message in one of the R rooms.

use std::time::Instant;

use crate::{
    client::{Target, User},
    error::LoadError,
    report::Report,
    scenario::{bound, create_rooms, fill_history, joined_count, next_batch, timeline_has},
    stats::{Errors, Latencies},
};

/// Initial syncs measured, each from a fresh login so that no server-side
/// response cache for the device can answer it.
const INITIAL_REPEATS: usize = 3;
/// Incremental syncs measured of each kind.
const INCREMENTAL_REPEATS: usize = 5;

/// Parameters of `initial-sync`.
#[derive(Clone, Debug, clap::Args)]
pub struct InitialSyncParams {
    /// Rooms the user is in (1..=500).
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Messages in each room (0..=1000).
    #[arg(long, default_value_t = 50)]
    pub history: usize,
}

impl InitialSyncParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("rooms", self.rooms, 1, 500)?;
        bound("history", self.history, 0, 1000)?;
        bound("rooms × history", self.rooms * self.history, 0, 100_000)
    }
}

/// Runs the sync-cost scenario.
pub async fn initial_sync(target: &Target, p: &InitialSyncParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("initial-sync", run(target, p)).await
}

async fn run(target: &Target, p: &InitialSyncParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("initial-sync", target);
    report.param("rooms", p.rooms);
    report.param("history", p.history);
    let user = target
        .register_many(1, &deadline)
        .await?
        .pop()
        .ok_or_else(|| LoadError::Params("no user".into()))?;
    let rooms = create_rooms(target, &user, p.rooms, &deadline).await?;
    let marker = format!("history {} ", target.run_id());
    fill_history(target, &user, &rooms, p.history, &marker, &deadline).await?;
    let mut devices = Vec::with_capacity(INITIAL_REPEATS);
    for _ in 0..INITIAL_REPEATS {
        deadline.check("logging in")?;
        devices.push(target.login(&user.localpart, &user.password).await?);
    }
    report.measuring();

    let mut errors = Errors::default();
    let mut timed_out = false;
    let mut initial = Latencies::default();
    let mut since = None;
    let mut bytes = 0;
    let mut first_ms = None;
    for device in &devices {
        if deadline.expired() {
            timed_out = true;
            break;
        }
        let t = Instant::now();
        match target.sync(device, None, 0, None).await {
            Ok(reply) => {
                let d = t.elapsed();
                first_ms.get_or_insert(crate::stats::ms(d));
                initial.push(d);
                bytes = reply.bytes;
                let n = joined_count(&reply.body, &rooms);
                if n != rooms.len() {
                    errors.note(format!("initial sync listed {n} of {} rooms", rooms.len()));
                }
                since = Some(next_batch(&reply.body));
            }
            Err(e) => errors.record(&e),
        }
    }
    let last = devices.last().unwrap_or(&user);
    let (nochange, change, incr_timed_out) = incremental(
        target,
        last,
        &rooms,
        since,
        &mut errors,
        &deadline,
        INCREMENTAL_REPEATS,
    )
    .await;
    timed_out |= incr_timed_out;

    report.count("initial_syncs", initial.len());
    report.count("incremental_syncs", nochange.len() + change.len());
    report.metric("initial_sync_first_ms", first_ms.unwrap_or(0.0));
    report.latencies("initial_sync", &initial);
    report.metric("initial_sync_bytes", bytes as f64);
    report.latencies("incr_sync_nochange", &nochange);
    report.latencies("incr_sync_change", &change);
    Ok(report.finish(errors, timed_out))
}

/// Times `repeats` incremental syncs with nothing new, then `repeats` with
/// one new message each (in rooms taken in turn), checking each change shows.
pub(crate) async fn incremental(
    target: &Target,
    user: &User,
    rooms: &[String],
    since: Option<String>,
    errors: &mut Errors,
    deadline: &crate::client::Deadline,
    repeats: usize,
) -> (Latencies, Latencies, bool) {
    let mut nochange = Latencies::default();
    let mut change = Latencies::default();
    let Some(mut since) = since else {
        return (nochange, change, false);
    };
    for _ in 0..repeats {
        if deadline.expired() {
            return (nochange, change, true);
        }
        let t = Instant::now();
        match target.sync(user, Some(&since), 0, None).await {
            Ok(reply) => {
                nochange.push(t.elapsed());
                since = next_batch(&reply.body);
            }
            Err(e) => errors.record(&e),
        }
    }
    for i in 0..repeats {
        if deadline.expired() {
            return (nochange, change, true);
        }
        let Some(room) = rooms.get(i % rooms.len().max(1)) else {
            break;
        };
        let event_id = match target
            .send_text(user, room, &format!("change-{i}"), &format!("change {i}"))
            .await
        {
            Ok(id) => id,
            Err(e) => {
                errors.record(&e);
                continue;
            }
        };
        let t = Instant::now();
        match target.sync(user, Some(&since), 0, None).await {
            Ok(reply) => {
                change.push(t.elapsed());
                if !timeline_has(&reply.body, room, &event_id) {
                    errors.note(format!("incremental sync lacks the new event {event_id}"));
                }
                since = next_batch(&reply.body);
            }
            Err(e) => errors.record(&e),
        }
    }
    (nochange, change, false)
}
