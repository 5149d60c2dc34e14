//! The chart of docs/performance.md: throughput and p99 latency of each front-door
//! endpoint next to bare axum, from one run's medians, as a PNG.

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One endpoint's figures.
pub struct Bar {
    /// The label under its bars.
    pub label: &'static str,
    /// Requests per second.
    pub per_second: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Whether it is the baseline (drawn apart).
    pub baseline: bool,
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;
const FONT: &str = "sans-serif";
const BASELINE: RGBColor = RGBColor(150, 150, 150);
const SARK: RGBColor = RGBColor(40, 90, 160);

/// Draws `bars` to `path`, titled `title`.
pub fn draw(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot)?;
    let root = root.titled(title, (FONT, 20)).map_err(plot)?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    panel(&left, "requests/s (thousands)", bars, |b| {
        b.per_second / 1000.0
    })?;
    panel(&right, "p99 latency (ms)", bars, |b| b.p99_ms)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One panel: a bar per endpoint of the figure `value` picks.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    bars: &[Bar],
    value: impl Fn(&Bar) -> f64,
) -> anyhow::Result<()> {
    let top = bars.iter().map(&value).fold(0.0, f64::max) * 1.15;
    let count = i32::try_from(bars.len()).map_err(|_| anyhow!("too many bars"))?;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..count - 1).into_segmented(), 0.0..top.max(1.0))
        .map_err(plot)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| bars.get(i))
                .map_or(String::new(), |b| b.label.to_owned()),
            _ => String::new(),
        })
        .label_style((FONT, 13))
        .draw()
        .map_err(plot)?;
    for (i, bar) in (0..count).zip(bars) {
        let color = if bar.baseline { BASELINE } else { SARK };
        let v = value(bar);
        chart
            .draw_series(std::iter::once({
                let mut rectangle = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    color.filled(),
                );
                rectangle.set_margin(0, 0, 14, 14);
                rectangle
            }))
            .map_err(plot)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.1}"),
                (SegmentValue::CenterOf(i), v + top * 0.04),
                (FONT, 13)
                    .into_font()
                    .into_text_style(area)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))
            .map_err(plot)?;
    }
    Ok(())
}

/// Gives the chart's text a font: a common sans-serif face of the system, else any
/// upright proportional one (the chart names no font file of a machine).
fn register_font() -> anyhow::Result<()> {
    let mut fonts = fontdb::Database::new();
    fonts.load_system_fonts();
    let families = [
        fontdb::Family::Name("DejaVu Sans"),
        fontdb::Family::Name("Liberation Sans"),
        fontdb::Family::Name("Noto Sans"),
    ];
    let query = fontdb::Query {
        families: &families,
        ..fontdb::Query::default()
    };
    let face = fonts
        .query(&query)
        .or_else(|| {
            fonts
                .faces()
                .find(|f| !f.monospaced && f.style == fontdb::Style::Normal)
                .map(|f| f.id)
        })
        .ok_or_else(|| {
            anyhow!("no font on this system to label the chart (install fonts-dejavu-core)")
        })?;
    let data = fonts
        .with_face_data(face, |data, _| data.to_vec())
        .ok_or_else(|| anyhow!("the chosen font could not be read"))?;
    // The chart library keeps fonts for the life of the process.
    let data: &'static [u8] = Box::leak(data.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, data)
        .map_err(|_| anyhow!("the chosen font is not a usable TrueType/OpenType font"))
}

fn plot(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {err}")
}
