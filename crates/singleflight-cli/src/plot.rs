//! The picture `demo` (and `load --plot`) leave behind: each request's latency
//! against the time it was sent, one colour per endpoint, and below it one
//! latency histogram per endpoint, as SVG and as PNG. Text is laid out (and,
//! in the PNG, drawn) with a small font embedded in the binary through
//! plotters' `ab_glyph` feature, so neither a system font nor a system
//! library is needed; the PNG is encoded with the `png` crate.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// DejaVu Sans cut down to the characters the plots use (see assets/DejaVu-LICENSE).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

const SIZE: (u32, u32) = (1000, 720);

/// Registers the embedded font as "sans-serif", once per process.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    anyhow::ensure!(ok, "the embedded font could not be loaded");
    Ok(())
}

use crate::stats::Sample;

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

/// One series of the plot.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) samples: &'a [Sample],
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Writes the plot to `path` as SVG and next to it as PNG (same name,
/// `.png`); returns the PNG's path. `reference` draws a dashed line at that
/// latency (the upstream's delay in the demo).
pub(crate) fn write_svg(
    path: &Path,
    title: &str,
    series: &[Series<'_>],
    reference: Option<Duration>,
) -> anyhow::Result<PathBuf> {
    font()?;
    let context = || format!("writing the plot {}", path.display());
    draw(
        SVGBackend::new(path, SIZE).into_drawing_area(),
        title,
        series,
        reference,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(context)?;
    let png = path.with_extension("png");
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area(),
        title,
        series,
        reference,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| format!("drawing the plot {}", png.display()))?;
    write_png(&png, &pixels).with_context(|| format!("writing the plot {}", png.display()))?;
    Ok(png)
}

fn write_png(path: &Path, rgb: &[u8]) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, SIZE.0, SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

fn draw<DB>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series<'_>],
    reference: Option<Duration>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(400);

    let all = series.iter().flat_map(|s| s.samples.iter());
    let max_x = all
        .clone()
        .map(|s| s.arrival.as_secs_f64())
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.05;
    let max_y = all
        .map(|s| ms(s.latency))
        .chain(reference.map(ms))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;

    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .caption(
            "latency of each request against the time it was sent",
            ("sans-serif", 16),
        )
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("sent at (s)")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 13))
        .draw()?;
    if let Some(r) = reference {
        let y = ms(r);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, y), (max_x, y)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))?
            .label(format!("upstream delay ({})", crate::args::fmt_duration(r)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(s.samples.iter().map(|p| {
                Circle::new(
                    (p.arrival.as_secs_f64(), ms(p.latency)),
                    3,
                    color.mix(0.7).filled(),
                )
            }))?
            .label(s.name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;

    let panels = bottom.split_evenly((1, series.len().max(1)));
    const BINS: usize = 30;
    let bin_width = max_y / BINS as f64;
    for (i, (s, panel)) in series.iter().zip(panels.iter()).enumerate() {
        let mut counts = [0u32; BINS];
        for p in s.samples {
            let bin = ((ms(p.latency) / bin_width) as usize).min(BINS - 1);
            counts[bin] += 1;
        }
        let top_count = counts.iter().copied().max().unwrap_or(0).max(1);
        let color = COLORS[i % COLORS.len()];
        let mut hist = ChartBuilder::on(panel)
            .margin(12)
            .caption(format!("{}: latency histogram", s.name), ("sans-serif", 15))
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_y, 0u32..top_count + top_count / 10 + 1)?;
        hist.configure_mesh()
            .x_desc("latency (ms)")
            .y_desc("requests")
            .label_style(("sans-serif", 12))
            .disable_x_mesh()
            .draw()?;
        hist.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(b, c)| {
                    let x0 = b as f64 * bin_width;
                    Rectangle::new(
                        [(x0, 0), (x0 + bin_width * 0.9, *c)],
                        color.mix(0.8).filled(),
                    )
                }),
        )?;
        if let Some(r) = reference {
            let x = ms(r);
            hist.draw_series(DashedLineSeries::new(
                vec![(x, 0), (x, top_count)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
