//! SVG plots of a finished run (`--plots DIR`): the latency CDF, throughput over time, and
//! sockets per replica. Drawing only; the figures come from the scenarios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::Latencies;

const SIZE: (u32, u32) = (800, 450);

fn fail<E: std::fmt::Display>(err: E) -> anyhow::Error {
    anyhow!("drawing a plot: {err}")
}

/// Where a plot of `prefix` goes.
pub fn path(dir: &Path, prefix: &str, what: &str) -> PathBuf {
    dir.join(format!("{prefix}-{what}.svg"))
}

/// Fraction of samples at or below each latency, latency on a log axis.
pub fn latency_cdf(file: &Path, title: &str, series: &[(&str, &Latencies)]) -> anyhow::Result<()> {
    let series: Vec<_> = series.iter().filter(|(_, l)| !l.is_empty()).collect();
    if series.is_empty() {
        return Ok(());
    }
    let to_ms = |us: u32| (f64::from(us) / 1000.0).max(0.001);
    let lo = series
        .iter()
        .filter_map(|(_, l)| l.sorted().first().copied())
        .map(to_ms)
        .fold(f64::MAX, f64::min);
    let hi = series
        .iter()
        .filter_map(|(_, l)| l.sorted().last().copied())
        .map(to_ms)
        .fold(0.0, f64::max);
    let (lo, hi) = (lo * 0.8, (hi * 1.25).max(lo * 2.0));
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of messages")
        .draw()
        .map_err(fail)?;
    for (i, (name, latencies)) in series.iter().enumerate() {
        let sorted = latencies.sorted();
        let n = sorted.len();
        // At most ~2000 points per curve: the shape, not every sample.
        let step = (n / 2000).max(1);
        let points = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| (to_ms(sorted[k]), (k + 1) as f64 / n as f64));
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(fail)?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

/// Events per second over the run, from each event's time (ms into the run), in `bucket_ms`
/// buckets; `marks` draws vertical lines (e.g. when a replica was killed).
pub fn throughput(
    file: &Path,
    title: &str,
    unit: &str,
    times_ms: &[u32],
    bucket_ms: u32,
    marks: &[(f64, &str)],
) -> anyhow::Result<()> {
    let Some(&end) = times_ms.iter().max() else {
        return Ok(());
    };
    let bucket_ms = bucket_ms.max(1);
    let mut buckets = vec![0u64; (end / bucket_ms) as usize + 1];
    for &t in times_ms {
        buckets[(t / bucket_ms) as usize] += 1;
    }
    // The last bucket is cut short by the end of the run; drawn, it would look like a drop.
    if buckets.len() > 1 {
        buckets.pop();
    }
    let scale = 1000.0 / f64::from(bucket_ms);
    let rates: Vec<(f64, f64)> = buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (
                (i as f64 + 0.5) * f64::from(bucket_ms) / 1000.0,
                n as f64 * scale,
            )
        })
        .collect();
    let top = rates.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.1;
    let right = (f64::from(end) / 1000.0).max(0.1) * 1.02;
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, 0.0..top)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc(format!("{unit} per second"))
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(LineSeries::new(rates, BLUE.stroke_width(2)))
        .map_err(fail)?;
    for (at, label) in marks {
        chart
            .draw_series(LineSeries::new(
                [(*at, 0.0), (*at, top)],
                RED.stroke_width(1),
            ))
            .map_err(fail)?
            .label(label.to_string())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    if !marks.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(fail)?;
    }
    root.present().map_err(fail)?;
    Ok(())
}

/// One bar per replica.
pub fn sockets_per_replica(
    file: &Path,
    title: &str,
    counts: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let names: Vec<&String> = counts.keys().collect();
    let top = counts.values().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let n = names.len() as f64;
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
        .map_err(fail)?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 {
            names
                .get(i as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&label)
        .y_desc("sockets")
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(counts.values().enumerate().map(|(i, &v)| {
            let x = i as f64;
            Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, v as f64)],
                BLUE.mix(0.7).filled(),
            )
        }))
        .map_err(fail)?;
    chart
        .draw_series(counts.values().enumerate().map(|(i, &v)| {
            Text::new(
                v.to_string(),
                (i as f64 - 0.1, v as f64 + top * 0.02),
                ("sans-serif", 16),
            )
        }))
        .map_err(fail)?;
    root.present().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let l = Latencies::from_micros(vec![900, 1200, 1500, 30_000]);
        let cdf = path(dir.path(), "t", "latency-cdf");
        latency_cdf(&cdf, "latency", &[("publish", &l)]).unwrap();
        let tp = path(dir.path(), "t", "throughput");
        throughput(
            &tp,
            "deliveries",
            "deliveries",
            &[1, 5, 300, 1200],
            100,
            &[(0.5, "kill")],
        )
        .unwrap();
        let bars = path(dir.path(), "t", "sockets");
        let counts = BTreeMap::from([("app-1".to_owned(), 3), ("app-2".to_owned(), 4)]);
        sockets_per_replica(&bars, "sockets", &counts).unwrap();
        for file in [cdf, tp, bars] {
            let svg = std::fs::read_to_string(&file).unwrap();
            assert!(svg.starts_with("<svg"), "{}", file.display());
        }
    }
}
