//! `send`: M messages into one room from S concurrent senders.

use std::time::Instant;

use futures::future::join_all as join_futures;

use crate::{
    client::Target,
    error::LoadError,
    report::Report,
    scenario::{bound, join_all, register::phase},
    stats::{Errors, Latencies},
};

/// Parameters of `send`.
#[derive(Clone, Debug, clap::Args)]
pub struct SendParams {
    /// Messages to send in total (1..=100000).
    #[arg(long, default_value_t = 500)]
    pub messages: usize,
    /// Concurrent senders, each sending its share one after another (1..=64).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
}

impl SendParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("messages", self.messages, 1, 100_000)?;
        bound("senders", self.senders, 1, 64)
    }
}

/// Sends `messages` messages into one room from `senders` senders at once.
pub async fn send(target: &Target, p: &SendParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("send", run(target, p)).await
}

async fn run(target: &Target, p: &SendParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("send", target);
    report.param("messages", p.messages);
    report.param("senders", p.senders);
    let users = target.register_many(p.senders, &deadline).await?;
    let Some((owner, others)) = users.split_first() else {
        return Err(LoadError::Params("no senders".into()));
    };
    let room = target.create_room(owner, "load send").await?;
    join_all(target, others, std::slice::from_ref(&room), &deadline).await?;
    report.measuring();

    let room = &room;
    let start = Instant::now();
    let per_sender = users.iter().enumerate().map(|(s, user)| async move {
        let mut lat = Latencies::default();
        let mut errors = Errors::default();
        let mut timed_out = false;
        // Sender s sends messages s, s + S, s + 2S, …
        for i in (s..p.messages).step_by(p.senders) {
            if deadline.expired() {
                timed_out = true;
                break;
            }
            let t = Instant::now();
            let body = format!("load {} message {i}", target.run_id());
            match target
                .send_text(user, room, &format!("send-{i}"), &body)
                .await
            {
                Ok(_) => lat.push(t.elapsed()),
                Err(e) => errors.record(&e),
            }
        }
        (lat, errors, timed_out)
    });
    let results = join_futures(per_sender).await;
    let wall = start.elapsed();

    let mut lat = Latencies::default();
    let mut errors = Errors::default();
    let mut timed_out = false;
    for (l, e, t) in results {
        lat.extend(l);
        errors.merge(e);
        timed_out |= t;
    }
    report.count("messages_sent", lat.len());
    phase(&mut report, "send", "messages_per_s", &lat, wall);
    Ok(report.finish(errors, timed_out))
}
