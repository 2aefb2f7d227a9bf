//! `demo`: the table's figures agree with the upstream's counter.

use clap::Parser;
use singleflight_cli::{Cli, Command, demo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_table_agrees_with_the_upstream_counter() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-test.svg");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(out.with_extension("png"));
    let out_arg = out.to_string_lossy().into_owned();
    let cli = Cli::parse_from([
        "singleflight",
        "demo",
        "--clients",
        "20",
        "--spread",
        "300ms",
        "--delay",
        "150ms",
        "--out",
        &out_arg,
    ]);
    let Command::Demo(opts) = cli.command else {
        panic!("not demo")
    };
    let report = demo::run(&opts).await.unwrap();

    let [normal, coalesced] = &report.endpoints[..] else {
        panic!("two endpoints")
    };
    assert_eq!(normal.endpoint, "/normal");
    assert_eq!(normal.summary.requests, 20);
    assert_eq!(normal.summary.ok, 20);
    assert_eq!(
        normal.upstream_calls, 20,
        "/normal: one upstream call per request"
    );
    assert_eq!(normal.summary.shared, 0);
    assert_eq!(
        normal.faster_than_delay, 0,
        "the upstream makes every /normal request wait its delay"
    );

    assert_eq!(coalesced.endpoint, "/singleflight");
    assert_eq!(coalesced.summary.requests, 20);
    assert_eq!(coalesced.summary.ok, 20);
    assert!(
        coalesced.upstream_calls >= 1 && coalesced.upstream_calls < 20,
        "{}",
        coalesced.upstream_calls
    );
    // Every flight has one leader; only a leader without followers is unshared.
    let unshared = coalesced.summary.requests - coalesced.summary.shared;
    assert!(
        unshared <= coalesced.upstream_calls,
        "{unshared} unshared > {} calls",
        coalesced.upstream_calls
    );
    let counted = coalesced.samples.iter().filter(|s| s.shared).count() as u64;
    assert_eq!(counted, coalesced.summary.shared);

    let table = demo::render_table(&report.endpoints, report.delay);
    let row = table
        .lines()
        .find(|l| l.starts_with("/singleflight"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "20");
    assert_eq!(cells[2], coalesced.upstream_calls.to_string());
    let row = table.lines().find(|l| l.starts_with("/normal")).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("20"));

    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("/singleflight"),
        "a plot with both series"
    );
    assert_eq!(report.plot_png, out.with_extension("png"));
    let png = std::fs::read(&report.plot_png).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG next to the SVG"
    );
}
