//! CPU time and resident memory of the server processes under test, read from /proc.
//!
//! "CPU per message" and "KiB per connection" are the figures that compare Switchyard with its
//! peers fairly, independent of how busy the shared machine is; both come from sampling the
//! server PIDs given with `--pid` at the start and end of the measured window.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One sample of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime of all its threads, in microseconds.
    pub cpu_us: u64,
    /// stime alone (time in the kernel: syscalls, and for loopback TCP the receiver's stack).
    pub sys_us: u64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

/// Clock ticks per second for /proc/PID/stat (`getconf CLK_TCK`, 100 on Linux in practice).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// Parses (utime, stime) (clock ticks) out of /proc/PID/stat text.
fn parse_stat_user_sys(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// Parses VmRSS (KiB) out of /proc/PID/status text.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The set of PIDs being watched.
#[derive(Debug, Clone)]
pub struct Watched {
    pids: Vec<u32>,
    names: BTreeMap<u32, String>,
    ticks: u64,
}

impl Watched {
    /// Checks every PID exists now; remembers its command name.
    pub fn new(pids: &[u32]) -> Result<Self> {
        let mut names = BTreeMap::new();
        for &pid in pids {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .with_context(|| format!("--pid {pid}: no such process"))?;
            names.insert(pid, comm.trim().to_string());
        }
        let mut unique = pids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != pids.len() {
            bail!("--pid given twice for the same process");
        }
        Ok(Watched {
            pids: unique,
            names,
            ticks: clock_ticks(),
        })
    }

    /// True if no PIDs are watched.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Samples every PID (a vanished process samples as zero and is reported by name "gone").
    pub fn sample(&self) -> BTreeMap<u32, Sample> {
        self.pids
            .iter()
            .map(|&pid| {
                let (user, sys) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| parse_stat_user_sys(&s))
                    .unwrap_or((0, 0));
                let cpu_us = (user + sys) * 1_000_000 / self.ticks;
                let sys_us = sys * 1_000_000 / self.ticks;
                let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| parse_rss_kib(&s))
                    .unwrap_or(0);
                (
                    pid,
                    Sample {
                        cpu_us,
                        sys_us,
                        rss_kib,
                    },
                )
            })
            .collect()
    }

    /// Per-PID deltas between two samples.
    pub fn delta(&self, before: &BTreeMap<u32, Sample>, after: &BTreeMap<u32, Sample>) -> Vec<PidDelta> {
        self.pids
            .iter()
            .map(|pid| {
                let b = before.get(pid).copied().unwrap_or_default();
                let a = after.get(pid).copied().unwrap_or_default();
                PidDelta {
                    pid: *pid,
                    name: self.names.get(pid).cloned().unwrap_or_default(),
                    cpu_us: a.cpu_us.saturating_sub(b.cpu_us),
                    sys_cpu_us: a.sys_us.saturating_sub(b.sys_us),
                    rss_before_kib: b.rss_kib,
                    rss_after_kib: a.rss_kib,
                }
            })
            .collect()
    }
}

/// What one PID did over a window.
#[derive(Debug, Clone, Serialize)]
pub struct PidDelta {
    pub pid: u32,
    pub name: String,
    pub cpu_us: u64,
    /// Of `cpu_us`, the part spent in the kernel.
    pub sys_cpu_us: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat_user_sys(stat), Some((250, 75)));
    }

    #[test]
    fn parses_status_rss() {
        let status = "Name:\tx\nVmPeak:\t  1000 kB\nVmRSS:\t   4242 kB\n";
        assert_eq!(parse_rss_kib(status), Some(4242));
    }

    #[test]
    fn samples_self() {
        let me = std::process::id();
        let w = Watched::new(&[me]).expect("self exists");
        let s = w.sample();
        assert!(s[&me].rss_kib > 0);
    }
}
