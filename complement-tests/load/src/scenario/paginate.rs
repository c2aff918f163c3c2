//! `paginate`: `/messages` backwards through a room of H messages in pages
//! of P.

use crate::{
    client::Target,
    error::LoadError,
    report::Report,
    scenario::{bound, create_rooms, fill_history, paginate_room},
    stats::per_s,
};

/// Pages allowed beyond `history / page`, for the room's state events.
const EXTRA_PAGES: usize = 50;

/// Parameters of `paginate`.
#[derive(Clone, Debug, clap::Args)]
pub struct PaginateParams {
    /// Messages in the room (1..=20000).
    #[arg(long, default_value_t = 1000)]
    pub history: usize,
    /// Events per /messages page (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub page: usize,
}

impl PaginateParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("history", self.history, 1, 20_000)?;
        bound("page", self.page, 1, 1000)
    }
}

/// Runs the pagination scenario.
pub async fn paginate(target: &Target, p: &PaginateParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("paginate", run(target, p)).await
}

async fn run(target: &Target, p: &PaginateParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("paginate", target);
    report.param("history", p.history);
    report.param("page", p.page);
    let user = target
        .register_many(1, &deadline)
        .await?
        .pop()
        .ok_or_else(|| LoadError::Params("no user".into()))?;
    let rooms = create_rooms(target, &user, 1, &deadline).await?;
    let room = rooms
        .first()
        .ok_or_else(|| LoadError::Params("no room".into()))?;
    let marker = format!("paginate {} ", target.run_id());
    fill_history(target, &user, &rooms, p.history, &marker, &deadline).await?;
    report.measuring();

    let max_pages = p.history / p.page + EXTRA_PAGES;
    let mut pg = paginate_room(target, &user, room, p.page, max_pages, &marker, &deadline).await;
    if !pg.timed_out && pg.errors.count == 0 && pg.messages != p.history {
        pg.errors.note(format!(
            "paginated {} of {} messages in {} pages",
            pg.messages, p.history, pg.pages
        ));
    }
    report.count("pages", pg.pages);
    report.count("events", pg.events);
    report.count("messages", pg.messages);
    report.metric("paginate_s", pg.wall.as_secs_f64());
    report.metric("events_per_s", per_s(pg.events, pg.wall));
    report.latencies("page", &pg.latencies);
    Ok(report.finish(pg.errors, pg.timed_out))
}
