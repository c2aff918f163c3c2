//! `remote-join`: a user of a second server joins a room of the first (the target) whose
//! state has M members, over federation. Measures how long the joining server takes to
//! answer the client's `/join` — make_join, send_join, checking the returned state and
//! auth chain, storing the room — and then how long until the joined room's member list is
//! complete there.

use std::time::{Duration, Instant};

use crate::{
    client::{enc, Target, CLIENT_V3},
    error::LoadError,
    report::Report,
    scenario::{bound, create_rooms, join_all},
    stats::{ms, Errors},
};

/// Parameters of `remote-join`.
#[derive(Clone, Debug, clap::Args)]
pub struct RemoteJoinParams {
    /// Members of the room on the target server, its creator included (1..=5000).
    #[arg(long, default_value_t = 200)]
    pub members: usize,
    /// Client API base URL of the joining server (another homeserver federating with the
    /// target).
    #[arg(long)]
    pub joiner_url: String,
    /// The target's server name, given to the joining server as `via`.
    #[arg(long)]
    pub via: String,
}

/// Runs `remote-join`; `joiner` drives the second server.
pub async fn remote_join(
    target: &Target,
    joiner: &Target,
    p: &RemoteJoinParams,
) -> Result<Report, LoadError> {
    bound("members", p.members, 1, 5000)?;
    target
        .hard_limit("remote-join", run(target, joiner, p))
        .await
}

async fn run(target: &Target, joiner: &Target, p: &RemoteJoinParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("remote-join", target);
    report.param("members", p.members);
    report.param("concurrency", target.concurrency());
    let users = target.register_many(p.members, &deadline).await?;
    let Some((creator, others)) = users.split_first() else {
        return Err(LoadError::Params("no users".into()));
    };
    let rooms = create_rooms(target, creator, 1, &deadline).await?;
    let Some(room) = rooms.first() else {
        return Err(LoadError::Params("no room".into()));
    };
    join_all(target, others, &rooms, &deadline).await?;
    let newcomer = joiner.register_many(1, &deadline).await?;
    let Some(newcomer) = newcomer.first() else {
        return Err(LoadError::Params("no joining user".into()));
    };
    report.measuring();
    let mut errors = Errors::default();

    let start = Instant::now();
    let reply = joiner
        .call(
            reqwest::Method::POST,
            &format!("{CLIENT_V3}/join/{}?via={}", enc(room), enc(&p.via)),
            Some(&newcomer.token),
            Some(&serde_json::json!({})),
            None,
            "remote join",
        )
        .await;
    let join_time = start.elapsed();
    if let Err(e) = reply {
        errors.record(&e);
        return Ok(report.finish(errors, false));
    }
    report.metric("join_ms", ms(join_time));

    // The joining server knows every member once the join returned (its state came with
    // it); wait for the full list in case a server fills it in later.
    let mut complete = None;
    while !deadline.expired() {
        match joiner.joined_members(newcomer, room).await {
            Ok(n) if n > p.members => {
                complete = Some(start.elapsed());
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                errors.record(&e);
                break;
            }
        }
    }
    match complete {
        Some(d) => report.metric("members_complete_ms", ms(d)),
        None => errors.note(format!(
            "the joining server never listed {} members",
            p.members + 1
        )),
    }
    Ok(report.finish(errors, complete.is_none() && deadline.expired()))
}
