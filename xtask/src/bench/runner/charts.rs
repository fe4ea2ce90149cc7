//! The report's charts (PNG, plotters). Text is drawn with DejaVu Sans loaded at run time
//! (Debian's fonts-dejavu-core, installed by `cargo xtask setup`), so no fontconfig is needed.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::{prelude::*, style::FontStyle};

use crate::{
    datapath::{self, Case},
    e2e::{self, Mode},
    load::Test,
};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

pub(crate) fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("reading {FONT} (cargo xtask setup installs fonts-dejavu-core)")
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

/// ns/packet against the number of Services (log scale), one panel per family.
pub(crate) fn per_packet(results: &datapath::Results, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 2));
    let max_size = results.sizes.iter().copied().max().unwrap_or(1) as f64;
    let y_max = results
        .rows
        .iter()
        .filter(|r| !r.case.repeated())
        .flat_map(|r| r.by_size.iter().map(|s| s.max))
        .fold(0.0, f64::max)
        * 1.25;
    for (panel, family) in panels.iter().zip(["IPv4", "IPv6"]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{family}: kernel time per packet"),
                ("sans-serif", 24),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((0.5f64..max_size * 2.0).log_scale(), 0f64..y_max.max(1.0))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("Services loaded (10 backends each)")
            .y_desc("ns / packet (median)")
            .x_label_formatter(&|x| crate::stats::number(*x, 0))
            .y_label_formatter(&|y| crate::stats::number(*y, 0))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(plot_error)?;
        for (i, case) in Case::ALL.iter().enumerate() {
            let Some(row) = results.row(family, *case) else {
                continue;
            };
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = results
                .sizes
                .iter()
                .zip(&row.by_size)
                .map(|(&size, s)| (size as f64, s.median))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)).point_size(4))
                .map_err(plot_error)?
                .label(case.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            // The spread (min–max of the runs) as a vertical bar at each size.
            chart
                .draw_series(results.sizes.iter().zip(&row.by_size).map(|(&size, s)| {
                    PathElement::new(vec![(size as f64, s.min), (size as f64, s.max)], color)
                }))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

/// One test's rate per mode (grouped bars) per number of Services, one panel per family: the
/// pod entry (cluster IP).
pub(crate) fn rates(results: &e2e::Results, test: Test, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 2));
    let y_max = results
        .cells
        .iter()
        .filter(|c| c.test == test && c.entry == e2e::Entry::Pod)
        .map(|c| c.rate.max)
        .fold(0.0, f64::max)
        * 1.2;
    let groups = results.sizes.len();
    let sizes = results.sizes.clone();
    for (panel, v6) in panels.iter().zip([false, true]) {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{family}: {}", test.label()), ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..groups as f64, 0f64..y_max.max(1.0))
            .map_err(plot_error)?;
        let sizes = sizes.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < sizes.len() {
                    crate::stats::services(sizes[i])
                } else {
                    String::new()
                }
            })
            .y_desc("per second (median; line: min–max)")
            .y_label_formatter(&|y| crate::stats::number(*y, 0))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(plot_error)?;
        let width = 0.8 / Mode::ALL.len() as f64;
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let color = COLORS[m % COLORS.len()];
            let bars: Vec<(f64, &crate::stats::Summary)> = results
                .sizes
                .iter()
                .enumerate()
                .filter_map(|(g, &size)| {
                    results
                        .cell(*mode, size, v6, test)
                        .map(|c| (g as f64 + 0.1 + m as f64 * width, &c.rate))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, s)| {
                    Rectangle::new([(*x, 0.0), (x + width * 0.9, s.median)], color.filled())
                }))
                .map_err(plot_error)?
                .label(mode.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            chart
                .draw_series(bars.iter().map(|(x, s)| {
                    let mid = x + width * 0.45;
                    PathElement::new(vec![(mid, s.min), (mid, s.max)], BLACK)
                }))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}
