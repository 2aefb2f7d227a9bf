//! Per-request samples and their summaries (HDR-histogram percentiles,
//! status counts), shared by `demo` and `load`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::fmt_duration;

/// One request as seen by the client.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// When it was sent, from the start of its run.
    pub arrival: Duration,
    /// How long it took until the whole response was read.
    pub latency: Duration,
    /// The response status, or `None` for a transport error or a timeout.
    pub status: Option<u16>,
    /// Whether the server said the response was shared (`x-singleflight-shared: true`).
    pub shared: bool,
}

/// Percentiles and counts over a set of samples.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// Requests sent.
    pub requests: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Requests that got no response (connection error or timeout).
    pub errors: u64,
    /// Count per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Responses marked shared.
    pub shared: u64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 90th percentile, microseconds.
    pub p90_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Slowest, microseconds.
    pub max_us: u64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
}

impl Summary {
    /// Summarises `samples` taken over `elapsed`.
    pub fn of(samples: &[Sample], elapsed: Duration) -> Self {
        // 1 µs to 1 hour at 3 significant digits; values beyond are clamped.
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("static bounds are valid");
        let mut statuses = BTreeMap::new();
        let (mut ok, mut errors, mut shared) = (0, 0, 0);
        for s in samples {
            hist.saturating_record((s.latency.as_micros() as u64).max(1));
            match s.status {
                Some(code) => {
                    *statuses.entry(code).or_insert(0) += 1;
                    if (200..300).contains(&code) {
                        ok += 1;
                    }
                }
                None => errors += 1,
            }
            shared += u64::from(s.shared);
        }
        let q = |q: f64| {
            if hist.is_empty() {
                0
            } else {
                hist.value_at_quantile(q)
            }
        };
        Self {
            requests: samples.len() as u64,
            ok,
            errors,
            statuses,
            shared,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: if hist.is_empty() { 0 } else { hist.max() },
            mean_us: if hist.is_empty() { 0.0 } else { hist.mean() },
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    /// Shared responses as a percentage of requests.
    pub fn shared_pct(&self) -> f64 {
        pct(self.shared, self.requests)
    }

    /// Requests per second over the run.
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.requests as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    pub(crate) fn p(us: u64) -> String {
        fmt_duration(Duration::from_micros(us))
    }

    /// `200×98 502×2`.
    pub(crate) fn status_text(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(c, n)| format!("{c}×{n}"))
            .collect();
        if self.errors > 0 {
            parts.push(format!("error×{}", self.errors));
        }
        parts.join(" ")
    }
}

pub(crate) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Renders rows as a plain-text table with a header rule; the first column is
/// left-aligned, the others right-aligned.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// Writes to stdout, returning the error (a closed pipe included) instead of
/// panicking as `print!` does; `main` treats a broken pipe as success.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
