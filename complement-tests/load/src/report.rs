//! The result of one scenario, printed as one JSON line.

use std::{collections::BTreeMap, time::Instant};

use serde::Serialize;
use serde_json::Value;

use crate::{
    client::Target,
    error::LoadError,
    process::{ProcessSample, ProcessStats},
    stats::{round3, Errors, Latencies},
};

/// One scenario's (or one growth step's) results.
///
/// `counts` are what was done (they match the parameters unless requests
/// failed or the time limit hit); `metrics` are rates (`*_per_s`, higher is
/// better) and times (`*_ms`, `*_s`, lower is better).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub base_url: String,
    pub params: BTreeMap<String, Value>,
    pub counts: BTreeMap<String, u64>,
    pub metrics: BTreeMap<String, f64>,
    /// Measured requests that failed, and checks that did not hold.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// True when the time limit stopped the scenario early.
    pub timed_out: bool,
    /// True when the scenario could not run at all (its setup failed);
    /// `first_error` says why.
    pub failed: bool,
    /// Why the server cannot run this scenario at all (it does not implement the API it
    /// measures); the scenario then has no figures and counts no errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    /// Wall time of the whole scenario, setup included.
    pub elapsed_s: f64,
    /// Wall time of the setup (users, rooms, history) before measuring.
    pub setup_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessStats>,
    #[serde(skip)]
    started: Option<Instant>,
    #[serde(skip)]
    measuring_since: Option<Instant>,
    #[serde(skip)]
    pid: Option<u32>,
    #[serde(skip)]
    start_sample: Option<ProcessSample>,
    #[serde(skip)]
    measured_sample: Option<ProcessSample>,
}

impl Report {
    /// Starts the clock (and samples the server process, if any).
    pub(crate) fn start(scenario: &str, target: &Target) -> Report {
        let pid = target.pid();
        Report {
            scenario: scenario.to_owned(),
            base_url: target.base_url().to_owned(),
            params: BTreeMap::new(),
            counts: BTreeMap::new(),
            metrics: BTreeMap::new(),
            errors: 0,
            first_error: None,
            timed_out: false,
            failed: false,
            unsupported: None,
            elapsed_s: 0.0,
            setup_s: 0.0,
            process: None,
            started: Some(Instant::now()),
            measuring_since: None,
            pid,
            start_sample: pid.and_then(|p| ProcessSample::read(p).ok()),
            measured_sample: None,
        }
    }

    pub(crate) fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), value.into());
    }

    pub(crate) fn count(&mut self, key: &str, n: usize) {
        self.counts.insert(key.to_owned(), n as u64);
    }

    pub(crate) fn metric(&mut self, key: &str, value: f64) {
        self.metrics.insert(key.to_owned(), round3(value));
    }

    /// `<prefix>_p50_ms` and `<prefix>_p99_ms`.
    pub(crate) fn latencies(&mut self, prefix: &str, l: &Latencies) {
        self.metric(&format!("{prefix}_p50_ms"), l.percentile_ms(50.0));
        self.metric(&format!("{prefix}_p99_ms"), l.percentile_ms(99.0));
    }

    /// Marks the end of setup: server CPU from here on is the measured cost.
    pub(crate) fn measuring(&mut self) {
        let now = Instant::now();
        self.setup_s = round3(
            self.started
                .map_or(0.0, |s| now.duration_since(s).as_secs_f64()),
        );
        self.measuring_since = Some(now);
        self.measured_sample = self.pid.and_then(|p| ProcessSample::read(p).ok());
    }

    /// Stops the clock and samples the server process again.
    pub(crate) fn finish(mut self, errors: Errors, timed_out: bool) -> Report {
        if self.measuring_since.is_none() {
            self.measuring();
        }
        self.errors = errors.count;
        self.first_error = errors.first;
        self.timed_out = timed_out;
        self.elapsed_s = round3(self.started.map_or(0.0, |s| s.elapsed().as_secs_f64()));
        if let (Some(pid), Some(start), Some(measured)) =
            (self.pid, self.start_sample, self.measured_sample)
        {
            if let Ok(end) = ProcessSample::read(pid) {
                self.process = Some(ProcessStats::from_samples(pid, start, measured, end));
            }
        }
        self
    }

    /// Ends a scenario the server does not support: no figures, no errors, and `why`.
    pub(crate) fn unsupported(self, why: impl Into<String>) -> Report {
        let mut report = self.finish(Errors::default(), false);
        report.unsupported = Some(why.into());
        report
    }

    /// The report of a scenario that ended with `error` instead of results.
    pub fn failure(scenario: &str, target: &Target, error: &LoadError) -> Report {
        let mut errors = Errors::default();
        errors.record(error);
        let mut report = Report::start(scenario, target).finish(errors, false);
        report.failed = true;
        report
    }

    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"scenario\":\"{}\",\"serialize_error\":\"{e}\"}}",
                self.scenario
            )
        })
    }

    pub fn metric_value(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }

    pub fn count_value(&self, key: &str) -> Option<u64> {
        self.counts.get(key).copied()
    }
}
