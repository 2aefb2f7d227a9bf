//! `singleflight demo`: `/normal` against `/singleflight`, end to end, in one process.
//!
//! Starts the embedded upstream and the demo server on free loopback ports,
//! sends the same load to `/normal` and then to `/singleflight` (clients whose
//! arrivals are spread over a window, so later ones join a call already under
//! way), prints a side-by-side table and writes a plot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use http_body_util::BodyExt as _;
use serde::Serialize;

use crate::BadInput;
use crate::args::{fmt_duration, parse_duration, parse_listen};
use crate::load::{progress, timed_get};
use crate::net::{ClientSettings, HttpClient};
use crate::plot::{Series, write_svg};
use crate::prom::read_metric;
use crate::serve::{self, ServeOpts};
use crate::stats::{Sample, Summary, pct, table, write_stdout};
use crate::upstream::{self, UpstreamOpts};

/// Options of `singleflight demo`.
#[derive(Args, Clone, Debug)]
pub struct DemoOpts {
    /// Clients per endpoint.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// The window over which the clients' arrivals are spread, evenly.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub spread: Duration,
    /// The upstream's delay.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Where to write the plot (SVG; a PNG is written next to it).
    #[arg(long, default_value = "singleflight-demo.svg")]
    pub out: PathBuf,
}

/// One endpoint's row of the demo's table.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct EndpointReport {
    /// `/normal` or `/singleflight`.
    pub endpoint: &'static str,
    /// Requests sent, latencies and statuses.
    pub summary: Summary,
    /// Calls that reached the upstream during this endpoint's run, read from
    /// the upstream's `upstream_requests_total`.
    pub upstream_calls: u64,
    /// Responses that came back faster than the upstream's delay.
    pub faster_than_delay: u64,
    /// Every request.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// What the demo measured.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct DemoReport {
    /// `/normal` then `/singleflight`.
    pub endpoints: Vec<EndpointReport>,
    /// The upstream's delay.
    #[serde(skip)]
    pub delay: Duration,
    /// The plot written, as SVG.
    pub plot: PathBuf,
    /// The same plot as PNG.
    pub plot_png: PathBuf,
}

/// Runs the demo, prints the table and writes the plot.
///
/// # Examples
///
/// ```
/// use clap::Parser;
/// use singleflight_cli::{Cli, Command, demo};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let out = std::env::temp_dir().join("singleflight-doc-demo.svg");
/// let cli = Cli::parse_from([
///     "singleflight", "demo", "--clients", "5", "--spread", "50ms", "--delay", "20ms",
///     "--out", out.to_str().unwrap(),
/// ]);
/// let Command::Demo(opts) = cli.command else { unreachable!() };
/// let report = demo::run(&opts).await?;
/// assert_eq!(report.endpoints[0].upstream_calls, 5, "/normal: one call per request");
/// # anyhow::Ok(()) }).unwrap();
/// ```
///
/// # Errors
///
/// Zero clients, or a failure to start the servers or to write the plot.
pub async fn run(opts: &DemoOpts) -> anyhow::Result<DemoReport> {
    if opts.clients == 0 {
        return Err(BadInput::new("--clients 0 sends nothing; use 1 or more").into());
    }
    let upstream = upstream::start(&UpstreamOpts::embedded(opts.delay)).await?;
    let upstream_url =
        crate::parse_http_url(&format!("{}/status", upstream.url())).map_err(anyhow::Error::msg)?;
    let serve_opts = ServeOpts {
        listen: parse_listen("127.0.0.1:0").map_err(anyhow::Error::msg)?,
        upstream: Some(upstream_url),
        upstream_ca: None,
        delay: opts.delay,
        timeout: opts.delay * 4 + Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(2),
        quiet: true,
        redis: None,
    };
    let running = serve::start(&serve_opts).await?;
    let base = running.server.url();
    let metrics_uri: http::Uri = format!("{}/metrics", upstream.url())
        .parse()
        .context("the upstream's /metrics URL")?;
    let client = ClientSettings::new(opts.clients, None)?.client();

    eprintln!(
        "upstream {} (delay {}), server {}: {} clients per endpoint over {}",
        upstream.url(),
        fmt_duration(opts.delay),
        base,
        opts.clients,
        fmt_duration(opts.spread)
    );
    let mut endpoints = Vec::new();
    for endpoint in ["/normal", "/singleflight"] {
        let uri: http::Uri = format!("{base}{endpoint}")
            .parse()
            .context("the endpoint's URL")?;
        let before = upstream_count(&client, &metrics_uri).await?;
        let (samples, elapsed) = burst(&client, &uri, opts).await;
        let after = upstream_count(&client, &metrics_uri).await?;
        let faster = samples
            .iter()
            .filter(|s| s.status == Some(200) && s.latency < opts.delay)
            .count() as u64;
        endpoints.push(EndpointReport {
            endpoint,
            summary: Summary::of(&samples, elapsed),
            upstream_calls: after.saturating_sub(before),
            faster_than_delay: faster,
            samples,
        });
    }
    running.shutdown(Duration::from_secs(2)).await;
    upstream.shutdown(Duration::from_secs(2)).await;

    write_stdout(&render_table(&endpoints, opts.delay))?;
    let series: Vec<Series<'_>> = endpoints
        .iter()
        .map(|e| Series {
            name: e.endpoint,
            samples: &e.samples,
        })
        .collect();
    let title = format!(
        "singleflight demo: {} clients per endpoint over {}, upstream delay {}",
        opts.clients,
        fmt_duration(opts.spread),
        fmt_duration(opts.delay)
    );
    let png = write_svg(&opts.out, &title, &series, Some(opts.delay))?;
    write_stdout(&format!(
        "plot: {} (and {})\n",
        opts.out.display(),
        png.display()
    ))?;
    Ok(DemoReport {
        endpoints,
        delay: opts.delay,
        plot: opts.out.clone(),
        plot_png: png,
    })
}

/// The side-by-side table the demo prints.
pub fn render_table(endpoints: &[EndpointReport], delay: Duration) -> String {
    let faster_header = format!("< {}", fmt_duration(delay));
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let s = &e.summary;
            vec![
                e.endpoint.to_string(),
                s.requests.to_string(),
                e.upstream_calls.to_string(),
                format!("{:.1}%", s.shared_pct()),
                Summary::p(s.p50_us),
                Summary::p(s.p90_us),
                Summary::p(s.p99_us),
                Summary::p(s.max_us),
                format!("{:.1}%", pct(e.faster_than_delay, s.requests)),
                s.status_text(),
            ]
        })
        .collect();
    table(
        &[
            "endpoint",
            "requests",
            "upstream calls",
            "shared",
            "p50",
            "p90",
            "p99",
            "max",
            &faster_header,
            "statuses",
        ],
        &rows,
    )
}

/// N clients, arrival i at i × spread / N, each sending one request.
async fn burst(client: &HttpClient, uri: &http::Uri, opts: &DemoOpts) -> (Vec<Sample>, Duration) {
    let bar = progress(opts.clients as u64, uri.path());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.clients {
        let offset = opts.spread.mul_f64(i as f64 / opts.clients as f64);
        let (client, uri, bar) = (client.clone(), uri.clone(), bar.clone());
        let limit = opts.delay * 4 + Duration::from_secs(5);
        tasks.spawn(async move {
            let due = start + offset;
            tokio::time::sleep_until(due.into()).await;
            let sample = timed_get(
                &client,
                &uri,
                limit,
                due.duration_since(start),
                Instant::now(),
            )
            .await;
            bar.inc(1);
            sample
        });
    }
    let mut samples = Vec::with_capacity(opts.clients);
    while let Some(done) = tasks.join_next().await {
        if let Ok(s) = done {
            samples.push(s);
        }
    }
    bar.finish_and_clear();
    samples.sort_by_key(|s| s.arrival);
    (samples, start.elapsed())
}

/// The upstream's `upstream_requests_total`, read over HTTP like any scraper would.
async fn upstream_count(client: &HttpClient, metrics: &http::Uri) -> anyhow::Result<u64> {
    let response = client
        .get(metrics.clone())
        .await
        .context("reading the upstream's /metrics")?;
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the upstream's /metrics")?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    // Absent until the first request is counted.
    Ok(read_metric(&text, "upstream_requests_total", None).unwrap_or(0.0) as u64)
}
