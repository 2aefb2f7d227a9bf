//! `singleflight load`: sends the same load to each URL in turn and reports
//! HDR-histogram percentiles and status counts, as a table or JSON.
//!
//! A small tool for running the `/normal` vs `/singleflight` experiment against one's own
//! endpoints, not a wrk clone: `--concurrency` workers share one request
//! budget (`--requests` or `--duration`), optionally paced to `--rate`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use http_body_util::BodyExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::BadInput;
use crate::args::{HttpUrl, parse_duration, parse_http_url};
use crate::net::{ClientSettings, HttpClient, with_timeout};
use crate::plot::{Series, write_svg};
use crate::serve::SHARED_HEADER;
use crate::stats::{Sample, Summary, table, write_stdout};

/// Options of `singleflight load`.
#[derive(Args, Clone, Debug)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["requests", "duration"])))]
pub struct LoadOpts {
    /// The URLs to load (`http://` or `https://`), one after the other with the same budget.
    #[arg(required = true, value_parser = parse_http_url)]
    pub urls: Vec<HttpUrl>,
    /// Send this many requests to each URL.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Send requests to each URL for this long.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub concurrency: usize,
    /// Total requests per second (default: as fast as the concurrency allows).
    /// Latency is then measured from each request's scheduled time, so a slow
    /// server cannot hide its queueing.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// The longest a request may take before it counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A CA certificate (PEM) the HTTPS URLs' servers may be signed by,
    /// trusted besides the platform's roots.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Also write a plot (latency against send time, histograms) to this SVG
    /// file, and as PNG next to it.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The result for one URL.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct UrlReport {
    /// The URL loaded.
    pub url: String,
    /// Its summary.
    pub summary: Summary,
    /// Every request, in order of completion (not serialised).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Sends one GET and times it until the last body byte.
pub(crate) async fn timed_get(
    client: &HttpClient,
    uri: &http::Uri,
    limit: Duration,
    arrival: Duration,
    since: Instant,
) -> Sample {
    let call = async {
        let response = client.get(uri.clone()).await.ok()?;
        let status = response.status().as_u16();
        let shared = response
            .headers()
            .get(SHARED_HEADER)
            .is_some_and(|v| v == "true");
        response.into_body().collect().await.ok()?;
        Some((status, shared))
    };
    let outcome = with_timeout(limit, call).await.flatten();
    Sample {
        arrival,
        latency: since.elapsed(),
        status: outcome.map(|(s, _)| s),
        shared: outcome.is_some_and(|(_, shared)| shared),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub(crate) fn progress(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    bar
}

/// Runs the load and prints the report; returns one report per URL.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use clap::Parser;
/// use singleflight_cli::upstream::{self, UpstreamOpts};
/// use singleflight_cli::{Cli, Command, load};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let up = upstream::start(&UpstreamOpts::embedded(Duration::ZERO)).await?;
/// let url = format!("{}/x", up.url());
/// let cli = Cli::parse_from(["singleflight", "load", &url, "--requests", "20", "--concurrency", "4"]);
/// let Command::Load(opts) = cli.command else { unreachable!() };
/// let reports = load::run(&opts).await?;
/// assert_eq!(reports[0].summary.ok, 20);
/// # anyhow::Ok(()) }).unwrap();
/// ```
///
/// # Errors
///
/// Bad options (zero concurrency, a non-positive rate), or a failure to write
/// the output or the plot.
pub async fn run(opts: &LoadOpts) -> anyhow::Result<Vec<UrlReport>> {
    if opts.concurrency == 0 {
        return Err(BadInput::new("--concurrency 0 sends nothing; use 1 or more").into());
    }
    if let Some(rate) = opts.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(BadInput::new(format!(
            "--rate {rate} is not a positive number of requests per second"
        ))
        .into());
    }
    let client = ClientSettings::new(opts.concurrency, opts.upstream_ca.as_deref())?.client();
    let mut reports = Vec::new();
    for url in &opts.urls {
        reports.push(load_one(opts, &client, url).await);
    }
    let mut out = String::new();
    if opts.json {
        out = serde_json::to_string_pretty(&reports).context("encoding the report")?;
        out.push('\n');
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                let s = &r.summary;
                vec![
                    r.url.clone(),
                    s.requests.to_string(),
                    format!("{:.0}", s.rate()),
                    format!("{:.1}%", s.shared_pct()),
                    Summary::p(s.p50_us),
                    Summary::p(s.p90_us),
                    Summary::p(s.p99_us),
                    Summary::p(s.max_us),
                    s.status_text(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "url", "requests", "req/s", "shared", "p50", "p90", "p99", "max", "statuses",
            ],
            &rows,
        ));
    }
    if let Some(path) = &opts.plot {
        let series: Vec<Series<'_>> = reports
            .iter()
            .map(|r| Series {
                name: &r.url,
                samples: &r.samples,
            })
            .collect();
        let png = write_svg(path, "singleflight load", &series, None)?;
        if !opts.json {
            out.push_str(&format!(
                "plot: {} (and {})\n",
                path.display(),
                png.display()
            ));
        }
    }
    write_stdout(&out)?;
    Ok(reports)
}

async fn load_one(opts: &LoadOpts, client: &HttpClient, url: &HttpUrl) -> UrlReport {
    let bar = match (opts.requests, opts.duration) {
        (Some(n), _) => progress(n, &url.to_string()),
        (None, Some(d)) => progress(d.as_millis() as u64, &url.to_string()),
        (None, None) => progress(0, &url.to_string()),
    };
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (client, uri, next, bar) = (
            client.clone(),
            url.uri().clone(),
            Arc::clone(&next),
            bar.clone(),
        );
        let (requests, duration, rate, limit) =
            (opts.requests, opts.duration, opts.rate, opts.timeout);
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if requests.is_some_and(|n| k >= n) {
                    break;
                }
                // With a rate, request k is due at k / rate; sleeping until then is pacing, not polling.
                let due = match rate {
                    Some(r) => start + Duration::from_secs_f64(k as f64 / r),
                    None => Instant::now(),
                };
                if duration.is_some_and(|d| due.duration_since(start) >= d) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let sample = timed_get(&client, &uri, limit, due.duration_since(start), due).await;
                samples.push(sample);
                match duration {
                    Some(_) => bar.set_position(start.elapsed().as_millis() as u64),
                    None => bar.inc(1),
                }
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = workers.join_next().await {
        // A worker cannot panic short of a bug; lose its samples rather than the run.
        if let Ok(mut s) = done {
            samples.append(&mut s);
        }
    }
    bar.finish_and_clear();
    let summary = Summary::of(&samples, start.elapsed());
    UrlReport {
        url: url.to_string(),
        summary,
        samples,
    }
}
