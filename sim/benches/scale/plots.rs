//! The plots of docs/scale.md, as SVG files.

use std::path::Path;

use plotters::prelude::*;

const SIZE: (u32, u32) = (640, 400);

/// Hops (p50 and p99) against network size, sizes on a log axis.
pub fn hops_by_size(path: &Path, points: &[(usize, f64, f64)]) {
    if points.is_empty() {
        return;
    }
    let max_hops = points.iter().map(|p| p.2).fold(1.0, f64::max) + 1.0;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(path, || {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Lookup hops against network size", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d((500f64..200_000f64).log_scale(), 0f64..max_hops)?;
        chart
            .configure_mesh()
            .x_desc("nodes")
            .y_desc("hops")
            .draw()?;
        for (label, color, pick) in [("p50", BLUE, 1), ("p99", RED, 2)] {
            let series: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.0 as f64, if pick == 1 { p.1 } else { p.2 }))
                .collect();
            line_with_points(&mut chart, series, color, label)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()
    });
}

/// Success (every live provider found) against departures per node and hour, one series per
/// network size.
pub fn success_by_churn(path: &Path, points: &[(usize, f64, f64)]) {
    if points.is_empty() {
        return;
    }
    let max_rate = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let min_success = points.iter().map(|p| p.2).fold(100.0, f64::min).min(99.0) - 0.5;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(path, || {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Lookup success against churn", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_rate, min_success..100.2f64)?;
        chart
            .configure_mesh()
            .x_desc("departures per node and hour")
            .y_desc("% lookups finding every live provider")
            .draw()?;
        for (size, color) in [(1_000, BLUE), (10_000, RED)] {
            let mut series: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.0 == size)
                .map(|p| (p.1, p.2))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            if series.is_empty() {
                continue;
            }
            line_with_points(&mut chart, series, color, &format!("{size} nodes"))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()
    });
}

/// One labelled series: a line through the points, each point marked.
fn line_with_points<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: Vec<(f64, f64)>,
    color: RGBColor,
    label: &str,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    chart.draw_series(
        series
            .into_iter()
            .map(|p| Circle::new(p, 4, color.filled())),
    )?;
    Ok(())
}

/// Cumulative distribution of lookup latency, in median round-trip times: until the first live
/// provider, and of the whole lookup. Both sorted. The axis ends at the whole lookup's 99th
/// percentile: its last percent (lookups that waited out a lost request) would squeeze the rest.
pub fn latency_cdf(path: &Path, first: &[f64], full: &[f64]) {
    let max = macula_dht_sim::sorted_quantile(full, 0.99).max(1.0) * 1.05;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(path, || {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Lookup latency at 10 k nodes (CDF)", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..max, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("virtual latency, median RTTs")
            .y_desc("fraction of lookups")
            .draw()?;
        for (label, color, values) in [("first provider", BLUE, first), ("whole lookup", RED, full)]
        {
            let n = values.len().max(1) as f64;
            let series = values
                .iter()
                .enumerate()
                .map(|(i, &v)| (v, (i + 1) as f64 / n));
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()
    });
}

/// Runs a drawing; a plot that fails is reported, not fatal (the figures are in scale.json).
fn draw<E: std::fmt::Debug>(path: &Path, plot: impl FnOnce() -> Result<(), E>) {
    match plot() {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("plot {} failed: {e:?}", path.display()),
    }
}
