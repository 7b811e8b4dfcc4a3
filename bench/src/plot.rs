//! SVG plots of a report: latency by percentile, one line per case
//! ([`latency_svg`]), and figures over time with marked instants
//! ([`timeline_svg`]: throughput over time, a failover timeline).
//!
//! Percentiles are spaced as "nines" (50, 90, 99, 99.9, 99.99), so that the
//! tail gets as much room as the median; latency is linear, in ms. Plain
//! SVG, written by hand: no plotting dependency for two kinds of chart.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::report::{Curve, Report, Timeline};

/// The percentiles every curve is sampled at.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const PLOT_W: f64 = 520.0;
const PLOT_H: f64 = 320.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Writes every plot of `report` into `dir` (created if missing):
/// `latency.svg` when it has latency distributions, and one file per
/// figure over time, named after its title. Returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    if !report.curves.is_empty() {
        let title = format!("{}: latency by percentile", report.command);
        let path = dir.join("latency.svg");
        std::fs::write(&path, latency_svg(&title, &report.curves))?;
        written.push(path);
    }
    for t in &report.timelines {
        let path = dir.join(format!("{}.svg", file_name(&t.title)));
        std::fs::write(&path, timeline_svg(t))?;
        written.push(path);
    }
    if written.is_empty() {
        eprintln!("this workload records nothing to plot");
    }
    Ok(written)
}

/// A title as a file name: lower-case letters and digits, runs of anything
/// else as one '-'.
fn file_name(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(80).collect()
}

/// Latency by percentile for `curves`, titled `title`.
pub fn latency_svg(title: &str, curves: &[Curve]) -> String {
    let height = TOP + PLOT_H + 60.0;
    let max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let top = nice_ceiling(max);
    let x = |i: usize| LEFT + PLOT_W * i as f64 / (PERCENTILES.len() - 1) as f64;
    let y = |ms: f64| TOP + PLOT_H * (1.0 - ms / top);
    let mut s = header(title, height);
    y_grid(&mut s, top, "latency, ms", y);
    for (i, p) in PERCENTILES.iter().enumerate() {
        let (at, bottom, label_y) = (x(i), TOP + PLOT_H, TOP + PLOT_H + 18.0);
        let _ = writeln!(
            s,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{bottom}" stroke="#eee"/><text x="{at:.1}" y="{label_y}" text-anchor="middle">p{p}</text>"##
        );
    }
    for (n, c) in curves.iter().enumerate() {
        let points: Vec<String> = c
            .points
            .iter()
            .enumerate()
            .map(|(i, (_, ms))| format!("{:.1},{:.1}", x(i), y(*ms)))
            .collect();
        line(&mut s, n, &c.case, &points);
    }
    s.push_str("</svg>\n");
    s
}

/// A plot over time: one line per series, seconds along the x axis, the
/// marked instants as dashed vertical lines with their labels.
pub fn timeline_svg(t: &Timeline) -> String {
    let height = TOP + PLOT_H + 60.0;
    let xs = t
        .series
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .chain(t.marks.iter().map(|m| m.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (x0, x1) = if x0 < x1 { (x0, x1) } else { (0.0, 1.0) };
    let max = t
        .series
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let top = nice_ceiling(max);
    let x = |v: f64| LEFT + PLOT_W * (v - x0) / (x1 - x0);
    let y = |v: f64| TOP + PLOT_H * (1.0 - v / top);
    let mut s = header(&t.title, height);
    y_grid(&mut s, top, &t.y_label, y);
    for i in 0..=5 {
        let v = x0 + (x1 - x0) * i as f64 / 5.0;
        let (at, bottom, label_y) = (x(v), TOP + PLOT_H, TOP + PLOT_H + 18.0);
        let _ = writeln!(
            s,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{bottom}" stroke="#eee"/><text x="{at:.1}" y="{label_y}" text-anchor="middle">{v:.1} s</text>"##
        );
    }
    for (at, label) in &t.marks {
        let (at, bottom, label_y) = (x(*at), TOP + PLOT_H, TOP - 4.0);
        let label = escape(label);
        let _ = writeln!(
            s,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{bottom}" stroke="#555" stroke-dasharray="4 3"/><text x="{at:.1}" y="{label_y}" font-size="10" text-anchor="middle">{label}</text>"##
        );
    }
    for (n, c) in t.series.iter().enumerate() {
        let points: Vec<String> = c
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        line(&mut s, n, &c.name, &points);
    }
    s.push_str("</svg>\n");
    s
}

/// The opening of a plot: white background and title.
fn header(title: &str, height: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15">{}</text>
"#,
        escape(title)
    )
}

/// Horizontal grid lines from 0 to `top`, with the unit above the axis.
fn y_grid(s: &mut String, top: f64, unit: &str, y: impl Fn(f64) -> f64) {
    let (unit_x, unit_y) = (LEFT - 6.0, TOP - 8.0);
    let _ = writeln!(
        s,
        r#"<text x="{unit_x}" y="{unit_y}" font-size="11" text-anchor="end">{}</text>"#,
        escape(unit)
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let (right, at, label_x, label_y) = (LEFT + PLOT_W, y(v), LEFT - 6.0, y(v) + 4.0);
        let value = short(v, top);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{label_x}" y="{label_y:.1}" text-anchor="end">{value}</text>"##
        );
    }
}

/// A grid value, short: 250k, 1.5M, 12, 0.25 (decimals only on a small
/// scale, `top`).
fn short(v: f64, top: f64) -> String {
    let trim = |t: String| {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        }
    };
    if v >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if v >= 1e3 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else if top >= 10.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.3}"))
    }
}

/// The `n`th line of a plot and its entry in the legend.
fn line(s: &mut String, n: usize, name: &str, points: &[String]) {
    let colour = COLOURS[n % COLOURS.len()];
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        points.join(" ")
    );
    let (lx, ly) = (LEFT + PLOT_W + 20.0, TOP + 16.0 * n as f64);
    let (mark_y, text_x, name) = (ly - 4.0, lx + 18.0, escape(name));
    let _ = writeln!(
        s,
        r#"<rect x="{lx}" y="{mark_y:.1}" width="12" height="3" fill="{colour}"/><text x="{text_x}" y="{ly:.1}" font-size="11">{name}</text>"#
    );
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round_and_not_below() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(12.7), 20.0);
    }

    #[test]
    fn one_polyline_per_curve_with_escaped_names() {
        let curves = vec![
            Curve {
                case: "a <b>".into(),
                points: PERCENTILES.iter().map(|p| (*p, p / 10.0)).collect(),
            },
            Curve {
                case: "c".into(),
                points: PERCENTILES.iter().map(|p| (*p, 1.0)).collect(),
            },
        ];
        let svg = latency_svg("t & u", &curves);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("t &amp; u"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn grid_values_are_short() {
        assert_eq!(short(250_000.0, 1e6), "250k");
        assert_eq!(short(1_500_000.0, 2e6), "1.5M");
        assert_eq!(short(12.0, 20.0), "12");
        assert_eq!(short(0.25, 1.0), "0.25");
        assert_eq!(short(0.0, 1.0), "0");
    }

    #[test]
    fn file_names_from_titles() {
        assert_eq!(
            file_name("Throughput over time: 3 replicas, 64 B"),
            "throughput-over-time-3-replicas-64-b"
        );
    }

    #[test]
    fn timelines_place_points_and_marks_within_the_plot() {
        let t = Timeline {
            title: "over time".into(),
            y_label: "appends/s".into(),
            series: vec![crate::report::Series {
                name: "a".into(),
                points: vec![(0.0, 0.0), (5.0, 150.0), (10.0, 300.0)],
            }],
            marks: vec![(2.5, "killed".into())],
        };
        let svg = timeline_svg(&t);
        assert_eq!(svg.matches("<polyline").count(), 1);
        // x from 0 s (LEFT) to 10 s (LEFT + PLOT_W); y from 0 to 500, the
        // round ceiling of 300.
        let (right, bottom) = (LEFT + PLOT_W, TOP + PLOT_H);
        let mid_y = TOP + PLOT_H * (1.0 - 150.0 / 500.0);
        let mid_x = LEFT + PLOT_W / 2.0;
        assert!(svg.contains(&format!("{LEFT:.1},{bottom:.1} {mid_x:.1},{mid_y:.1}")));
        assert!(svg.contains(&format!("{right:.1},")));
        let mark = LEFT + PLOT_W / 4.0;
        assert!(svg.contains(&format!(r#"x1="{mark:.1}""#)) && svg.contains(">killed<"));
        assert!(svg.contains(">500<") && svg.contains(">appends/s<"));
    }
}
