//! Latency samples, percentiles and error tallies.

use std::time::Duration;

use crate::error::LoadError;

/// Latency samples of one kind of request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latencies(Vec<Duration>);

impl Latencies {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub(crate) fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank `p`th percentile in milliseconds (0 when empty).
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let idx = rank.clamp(1, n) - 1;
        sorted.get(idx).map_or(0.0, |d| ms(*d))
    }

    pub(crate) fn max_ms(&self) -> f64 {
        self.0.iter().max().map_or(0.0, |d| ms(*d))
    }
}

/// Failed measured requests: how many, and the first one's text.
#[derive(Clone, Debug, Default)]
pub(crate) struct Errors {
    pub(crate) count: u64,
    pub(crate) first: Option<String>,
}

impl Errors {
    pub(crate) fn record(&mut self, e: &LoadError) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e.to_string());
        }
    }

    /// Records a failure that is not a request error (a missing event, …).
    pub(crate) fn note(&mut self, what: impl Into<String>) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(what.into());
        }
    }

    pub(crate) fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `count` per second over `d` (0 when `d` is zero).
pub(crate) fn per_s(count: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// Rounds to 3 decimals, so JSON lines stay readable.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{per_s, Latencies};

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), 50.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(l.percentile_ms(100.0), 100.0);
        assert_eq!(l.max_ms(), 100.0);
        let mut one = Latencies::default();
        one.push(Duration::from_millis(7));
        assert_eq!(one.percentile_ms(50.0), 7.0);
        assert_eq!(one.percentile_ms(99.0), 7.0);
        assert_eq!(Latencies::default().percentile_ms(50.0), 0.0);
    }

    #[test]
    fn rates() {
        assert_eq!(per_s(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_s(10, Duration::ZERO), 0.0);
    }
}
