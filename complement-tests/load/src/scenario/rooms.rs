//! `rooms`: one user creates R public rooms, then U other users join each.

use std::{collections::HashSet, time::Instant};

use crate::{
    client::Target,
    error::LoadError,
    report::Report,
    scenario::{bound, register::phase},
    stats::{Errors, Latencies},
};

/// Parameters of `rooms`.
#[derive(Clone, Debug, clap::Args)]
pub struct RoomsParams {
    /// Rooms to create (1..=1000).
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Users who join every room, besides its creator (0..=200).
    #[arg(long, default_value_t = 10)]
    pub members: usize,
}

impl RoomsParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("rooms", self.rooms, 1, 1000)?;
        bound("members", self.members, 0, 200)?;
        bound("rooms × members", self.rooms * self.members, 0, 50_000)
    }
}

/// Creates `rooms` rooms and has `members` users join each.
pub async fn rooms(target: &Target, p: &RoomsParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("rooms", run(target, p)).await
}

async fn run(target: &Target, p: &RoomsParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("rooms", target);
    report.param("rooms", p.rooms);
    report.param("members", p.members);
    report.param("concurrency", target.concurrency());
    let users = target.register_many(p.members + 1, &deadline).await?;
    let Some((creator, members)) = users.split_first() else {
        return Err(LoadError::Params("no users".into()));
    };
    report.measuring();
    let mut errors = Errors::default();
    let mut timed_out = false;

    let start = Instant::now();
    let results = target
        .limited((0..p.rooms).collect(), |i| async move {
            if deadline.expired() {
                return None;
            }
            let t = Instant::now();
            let r = target
                .create_room(creator, &format!("load {} room {i}", target.run_id()))
                .await;
            Some(r.map(|room| (room, t.elapsed())))
        })
        .await;
    let create_wall = start.elapsed();
    let mut created = Vec::new();
    let mut create_lat = Latencies::default();
    for r in results {
        match r {
            None => timed_out = true,
            Some(Ok((room, d))) => {
                create_lat.push(d);
                created.push(room);
            }
            Some(Err(e)) => errors.record(&e),
        }
    }

    // Each createRoom must have made a room of its own.
    let distinct: HashSet<&String> = created.iter().collect();
    if distinct.len() != created.len() {
        errors.note(format!(
            "{} createRoom calls returned only {} distinct room ids",
            created.len(),
            distinct.len()
        ));
    }

    let pairs: Vec<(&String, usize)> = created
        .iter()
        .flat_map(|room| (0..members.len()).map(move |m| (room, m)))
        .collect();
    let start = Instant::now();
    let results = target
        .limited(pairs, |(room, m)| async move {
            if deadline.expired() {
                return None;
            }
            let t = Instant::now();
            let user = members.get(m)?;
            Some(target.join(user, room).await.map(|()| t.elapsed()))
        })
        .await;
    let join_wall = start.elapsed();
    let mut join_lat = Latencies::default();
    for r in results {
        match r {
            None => timed_out = true,
            Some(Ok(d)) => join_lat.push(d),
            Some(Err(e)) => errors.record(&e),
        }
    }

    // Every join must have landed: the first room lists all its members.
    if let Some(room) = created.first() {
        if !timed_out {
            match target.joined_members(creator, room).await {
                Ok(n) if n == members.len() + 1 => {}
                Ok(n) => errors.note(format!(
                    "joined_members of {room}: {n}, expected {}",
                    members.len() + 1
                )),
                Err(e) => errors.record(&e),
            }
        }
    }

    report.count("rooms_created", create_lat.len());
    report.count("joins", join_lat.len());
    phase(
        &mut report,
        "create",
        "rooms_per_s",
        &create_lat,
        create_wall,
    );
    phase(&mut report, "join", "joins_per_s", &join_lat, join_wall);
    Ok(report.finish(errors, timed_out))
}
