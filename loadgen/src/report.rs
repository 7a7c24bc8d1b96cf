//! Latency recording (HdrHistogram) and the two output forms: human text and one JSON line.
//!
//! Every scenario records latencies the same way and prints results the same way, so the
//! scripts that collect `--json` lines can rely on one set of field names (`p50_us`, `p99_us`…).

use std::io::Write;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly (60 s); larger values are clamped.
const MAX_US: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// A latency recorder shared by many connection tasks: sharded to keep lock contention low.
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    /// A recorder with `shards` independent histograms.
    pub fn new(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1)).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records one latency in microseconds from connection `conn`.
    pub fn record(&self, conn: usize, micros: u64) {
        let shard = &self.shards[conn % self.shards.len()];
        if let Ok(mut h) = shard.lock() {
            h.saturating_record(micros.clamp(1, MAX_US));
        }
    }

    /// Merges every shard into one summary.
    pub fn summary(&self) -> LatencySummary {
        let mut all = new_histogram();
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                // Same bounds everywhere, so adding cannot fail.
                let _ = all.add(&*h);
            }
        }
        LatencySummary::from_histogram(&all)
    }
}

/// Percentiles of one latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises a histogram (all zero if empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            samples: h.len(),
            mean_us: h.mean().round() as u64,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// One line: `p50 1.2 ms  p90 …`.
    pub fn human(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, {} samples)",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            fmt_us(self.mean_us),
            self.samples
        )
    }
}

/// Formats microseconds as µs / ms / s with sensible precision.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

/// The `--label` as the human reports show it after the scenario's name: ` [daphne]`, or nothing.
pub fn label_tag(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!(" [{label}]")
    }
}

/// Prints a finished run: human text on stdout, or — with `--json` — the JSON line on stdout
/// and the human text on stderr (so `… --json >> results.jsonl` still shows progress).
pub fn emit<T: Serialize>(human: &str, figures: &T, json: bool) -> anyhow::Result<()> {
    if json {
        eprintln!("{human}");
        let line = serde_json::to_string(figures)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    } else {
        println!("{human}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_merges_shards() {
        let r = Recorder::new(4);
        for i in 1..=1000u64 {
            r.record(i as usize, i);
        }
        let s = r.summary();
        assert_eq!(s.samples, 1000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=1000).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
    }

    #[test]
    fn formats_units() {
        assert_eq!(fmt_us(999), "999 µs");
        assert_eq!(fmt_us(1_500), "1.50 ms");
        assert_eq!(fmt_us(2_000_000), "2.00 s");
    }
}
