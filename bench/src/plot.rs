//! SVG plots of a report: latency by percentile, one line per case.
//!
//! Percentiles are spaced as "nines" (50, 90, 99, 99.9, 99.99), so that the
//! tail gets as much room as the median; latency is linear, in ms. Plain
//! SVG, written by hand: no plotting dependency for one kind of chart.

use std::fmt::Write;

use crate::report::Curve;

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
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15">{}</text>
"#,
        escape(title)
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let (right, at, label_x, label_y) = (LEFT + PLOT_W, y(v), LEFT - 6.0, y(v) + 4.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{label_x}" y="{label_y:.1}" text-anchor="end">{v:.2} ms</text>"##
        );
    }
    for (i, p) in PERCENTILES.iter().enumerate() {
        let (at, bottom, label_y) = (x(i), TOP + PLOT_H, TOP + PLOT_H + 18.0);
        let _ = writeln!(
            s,
            r##"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{bottom}" stroke="#eee"/><text x="{at:.1}" y="{label_y}" text-anchor="middle">p{p}</text>"##
        );
    }
    for (n, c) in curves.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<String> = c
            .points
            .iter()
            .enumerate()
            .map(|(i, (_, ms))| format!("{:.1},{:.1}", x(i), y(*ms)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let (lx, ly) = (LEFT + PLOT_W + 20.0, TOP + 16.0 * n as f64);
        let (mark_y, text_x, name) = (ly - 4.0, lx + 18.0, escape(&c.case));
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{mark_y:.1}" width="12" height="3" fill="{colour}"/><text x="{text_x}" y="{ly:.1}" font-size="11">{name}</text>"#
        );
    }
    s.push_str("</svg>\n");
    s
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
}
