//! Resource use of a local server process, read from `/proc`.

use std::io;

use serde::Serialize;

/// `sysconf(_SC_CLK_TCK)` on every Linux architecture this runs on.
const CLK_TCK: f64 = 100.0;

/// One reading of a process's memory and CPU time.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcessSample {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// User plus system CPU time since the process started, seconds.
    pub cpu_s: f64,
}

impl ProcessSample {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
    pub fn read(pid: u32) -> io::Result<ProcessSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(ProcessSample {
            rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            peak_rss_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
            cpu_s: stat_cpu_ticks(&stat)
                .map(|t| t as f64 / CLK_TCK)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?,
        })
    }
}

/// What a scenario cost the server process.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcessStats {
    pub pid: u32,
    /// Peak RSS when the scenario started, KiB.
    pub peak_rss_kib_before: u64,
    /// Peak RSS when it ended, KiB.
    pub peak_rss_kib_after: u64,
    /// RSS when it ended, KiB.
    pub rss_kib_after: u64,
    /// CPU seconds the server spent in the measured phase.
    pub cpu_s: f64,
    /// CPU seconds the server spent in setup (registering users, filling rooms).
    pub setup_cpu_s: f64,
}

impl ProcessStats {
    /// Combines the samples taken at the start, at the start of the measured
    /// phase and at the end.
    pub(crate) fn from_samples(
        pid: u32,
        start: ProcessSample,
        measured: ProcessSample,
        end: ProcessSample,
    ) -> ProcessStats {
        let round = crate::stats::round3;
        ProcessStats {
            pid,
            peak_rss_kib_before: start.peak_rss_kib,
            peak_rss_kib_after: end.peak_rss_kib,
            rss_kib_after: end.rss_kib,
            cpu_s: round((end.cpu_s - measured.cpu_s).max(0.0)),
            setup_cpu_s: round((measured.cpu_s - start.cpu_s).max(0.0)),
        }
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime (fields 14 and 15). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::{stat_cpu_ticks, status_kib, ProcessSample};

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_own_process() {
        let s = ProcessSample::read(std::process::id());
        assert!(
            matches!(s, Ok(ref s) if s.peak_rss_kib > 0 && s.rss_kib > 0),
            "{s:?}"
        );
    }
}
