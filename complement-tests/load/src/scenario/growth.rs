//! `growth`: rooms, members and history doubled step by step (1, 2, 4, 8, …
//! times a base), with the cost of sync, send and pagination measured at
//! each step, one report per step, so one can see how each cost grows.

use std::time::Instant;

use crate::{
    client::{Target, User},
    error::LoadError,
    report::Report,
    scenario::{
        bound, create_rooms, fill_history, initial_sync::incremental, join_all, joined_count,
        next_batch, paginate_room,
    },
    stats::{per_s, Errors, Latencies},
};

/// Incremental syncs (each with one change) measured per step.
const INCREMENTAL_REPEATS: usize = 3;
/// Largest sizes the last step may reach.
const MAX_ROOMS: usize = 512;
const MAX_MEMBERS: usize = 256;
const MAX_HISTORY: usize = 5000;
const MAX_JOINS: usize = 20_000;
const MAX_MESSAGES: usize = 100_000;

/// Parameters of `growth`.
#[derive(Clone, Debug, clap::Args)]
pub struct GrowthParams {
    /// Rooms at step 1 (the user is in all of them) (1..=64).
    #[arg(long, default_value_t = 2)]
    pub base_rooms: usize,
    /// Other members of every room at step 1 (0..=64).
    #[arg(long, default_value_t = 2)]
    pub base_members: usize,
    /// Messages in every room at step 1 (1..=1000).
    #[arg(long, default_value_t = 20)]
    pub base_history: usize,
    /// Steps; step k multiplies the base by 2^(k-1) (1..=8).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Messages sent (one at a time) to time sends at each step (1..=1000).
    #[arg(long, default_value_t = 20)]
    pub sends: usize,
    /// Page size of the pagination measured at each step (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub page: usize,
}

impl GrowthParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("base_rooms", self.base_rooms, 1, 64)?;
        bound("base_members", self.base_members, 0, 64)?;
        bound("base_history", self.base_history, 1, 1000)?;
        bound("steps", self.steps, 1, 8)?;
        bound("sends", self.sends, 1, 1000)?;
        bound("page", self.page, 1, 1000)?;
        let f = 1 << (self.steps - 1);
        let (r, m, h) = (
            self.base_rooms * f,
            self.base_members * f,
            self.base_history * f,
        );
        bound("rooms at the last step", r, 1, MAX_ROOMS)?;
        bound("members at the last step", m, 0, MAX_MEMBERS)?;
        bound("history at the last step", h, 1, MAX_HISTORY)?;
        bound("joins at the last step", r * m, 0, MAX_JOINS)?;
        bound("messages at the last step", r * h, 1, MAX_MESSAGES)
    }
}

/// Runs every step; returns one report per step. The time limit applies to
/// each step.
pub async fn growth(target: &Target, p: &GrowthParams) -> Result<Vec<Report>, LoadError> {
    p.validate()?;
    let mut pool: Vec<User> = Vec::new();
    let mut reports = Vec::with_capacity(p.steps);
    for step in 1..=p.steps {
        let report = target
            .hard_limit("growth", run_step(target, p, step, &mut pool))
            .await?;
        let stop = report.timed_out;
        reports.push(report);
        if stop {
            break;
        }
    }
    Ok(reports)
}

async fn run_step(
    target: &Target,
    p: &GrowthParams,
    step: usize,
    pool: &mut Vec<User>,
) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let factor = 1usize << (step - 1);
    let (n_rooms, n_members, history) = (
        p.base_rooms * factor,
        p.base_members * factor,
        p.base_history * factor,
    );
    let mut report = Report::start("growth", target);
    report.param("step", step);
    report.param("factor", factor);
    report.param("rooms", n_rooms);
    report.param("members", n_members);
    report.param("history", history);
    report.param("sends", p.sends);
    report.param("page", p.page);

    // Members are reused from step to step; the measured user is new, so
    // its rooms are exactly this step's.
    if pool.len() < n_members {
        let more = target
            .register_many(n_members - pool.len(), &deadline)
            .await?;
        pool.extend(more);
    }
    let user = target
        .register_many(1, &deadline)
        .await?
        .pop()
        .ok_or_else(|| LoadError::Params("no user".into()))?;
    let rooms = create_rooms(target, &user, n_rooms, &deadline).await?;
    join_all(
        target,
        pool.get(..n_members).unwrap_or(pool),
        &rooms,
        &deadline,
    )
    .await?;
    let marker = format!("growth {} {step} ", target.run_id());
    fill_history(target, &user, &rooms, history, &marker, &deadline).await?;
    report.measuring();

    let mut errors = Errors::default();
    let mut timed_out = false;

    // Initial sync of everything.
    let mut since = None;
    let t = Instant::now();
    match target.sync(&user, None, 0, None).await {
        Ok(reply) => {
            report.metric("initial_sync_ms", crate::stats::ms(t.elapsed()));
            report.metric("initial_sync_bytes", reply.bytes as f64);
            let n = joined_count(&reply.body, &rooms);
            if n != rooms.len() {
                errors.note(format!("initial sync listed {n} of {} rooms", rooms.len()));
            }
            since = Some(next_batch(&reply.body));
        }
        Err(e) => errors.record(&e),
    }

    // Incremental syncs, each after one new message.
    let (_, change, t_out) = incremental(
        target,
        &user,
        &rooms,
        since,
        &mut errors,
        &deadline,
        INCREMENTAL_REPEATS,
    )
    .await;
    timed_out |= t_out;
    report.latencies("incr_sync_change", &change);

    // Sends into the first room, which has every member.
    let mut send = Latencies::default();
    if let Some(room) = rooms.first() {
        for i in 0..p.sends {
            if deadline.expired() {
                timed_out = true;
                break;
            }
            let t = Instant::now();
            match target
                .send_text(
                    &user,
                    room,
                    &format!("growth-send-{i}"),
                    &format!("send {i}"),
                )
                .await
            {
                Ok(_) => send.push(t.elapsed()),
                Err(e) => errors.record(&e),
            }
        }
    }
    report.latencies("send", &send);

    // Pagination through the first room's history.
    let mut paginated = 0;
    if let Some(room) = rooms.first() {
        let max_pages = (history + p.sends) / p.page + 50;
        let pg = paginate_room(target, &user, room, p.page, max_pages, &marker, &deadline).await;
        if !pg.timed_out && pg.errors.count == 0 && pg.messages != history {
            errors.note(format!(
                "paginated {} of {history} history messages",
                pg.messages
            ));
        }
        paginated = pg.events;
        timed_out |= pg.timed_out;
        report.metric("paginate_events_per_s", per_s(pg.events, pg.wall));
        report.latencies("page", &pg.latencies);
        errors.merge(pg.errors);
    }

    report.count("messages_sent", send.len());
    report.count("incremental_syncs", change.len());
    report.count("events_paginated", paginated);
    Ok(report.finish(errors, timed_out))
}
