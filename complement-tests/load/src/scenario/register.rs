//! `register`: register N users, then log each in with its password.
//! Password hashing (argon2 in Paracord, bcrypt in Synapse) dominates both
//! phases by design; the rates are reported separately so it shows.

use std::time::{Duration, Instant};

use crate::{
    client::{password_for, Target},
    error::LoadError,
    report::Report,
    scenario::bound,
    stats::{per_s, Errors, Latencies},
};

/// Parameters of `register`.
#[derive(Clone, Debug, clap::Args)]
pub struct RegisterParams {
    /// Users to register and then log in (1..=10000).
    #[arg(long, default_value_t = 20)]
    pub users: usize,
}

impl RegisterParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("users", self.users, 1, 10_000)
    }
}

/// Registers and logs in `users` users, `concurrency` at a time.
pub async fn register(target: &Target, p: &RegisterParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit("register", run(target, p)).await
}

async fn run(target: &Target, p: &RegisterParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start("register", target);
    report.param("users", p.users);
    report.param("concurrency", target.concurrency());
    report.measuring();
    let mut errors = Errors::default();
    let mut timed_out = false;

    let localparts: Vec<String> = (0..p.users).map(|_| target.new_localpart()).collect();
    let start = Instant::now();
    let results = target
        .limited(localparts, |localpart| async move {
            if deadline.expired() {
                return None;
            }
            let t = Instant::now();
            let r = target
                .register_user(&localpart, &password_for(&localpart))
                .await;
            Some((localpart, r.map(|_| t.elapsed())))
        })
        .await;
    let register_wall = start.elapsed();
    let mut registered = Vec::new();
    let mut register_lat = Latencies::default();
    for r in results {
        match r {
            None => timed_out = true,
            Some((localpart, Ok(d))) => {
                register_lat.push(d);
                registered.push(localpart);
            }
            Some((_, Err(e))) => errors.record(&e),
        }
    }

    let start = Instant::now();
    let results = target
        .limited(registered, |localpart| async move {
            if deadline.expired() {
                return None;
            }
            let t = Instant::now();
            let r = target.login(&localpart, &password_for(&localpart)).await;
            Some(r.map(|_| t.elapsed()))
        })
        .await;
    let login_wall = start.elapsed();
    let mut login_lat = Latencies::default();
    for r in results {
        match r {
            None => timed_out = true,
            Some(Ok(d)) => login_lat.push(d),
            Some(Err(e)) => errors.record(&e),
        }
    }

    report.count("registered", register_lat.len());
    report.count("logged_in", login_lat.len());
    phase(
        &mut report,
        "register",
        "register_per_s",
        &register_lat,
        register_wall,
    );
    phase(&mut report, "login", "login_per_s", &login_lat, login_wall);
    Ok(report.finish(errors, timed_out))
}

/// `<name>_s` (wall time), `<rate>` (completed per second of it),
/// `<name>_p50_ms` and `<name>_p99_ms`.
pub(crate) fn phase(report: &mut Report, name: &str, rate: &str, lat: &Latencies, wall: Duration) {
    report.metric(&format!("{name}_s"), wall.as_secs_f64());
    report.metric(rate, per_s(lat.len(), wall));
    report.latencies(name, lat);
}
