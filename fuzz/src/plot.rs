//! A self-contained SVG line chart (coverage over time), written by hand:
//! no plotting library, no C dependencies.

use std::fmt::Write;

/// One series of `(x, y)` points, drawn as a step line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// CSS colour.
    pub colour: String,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker (e.g. "crash found") at `x`.
#[derive(Debug, Clone)]
pub struct Marker {
    /// Position on the x axis.
    pub x: f64,
    /// Short label.
    pub label: String,
}

const W: f64 = 800.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// A "nice" axis maximum and tick step for values up to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Renders a line chart of `series` with `markers` as an SVG document.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    markers: &[Marker],
) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all
        .clone()
        .map(|p| p.0)
        .chain(markers.iter().map(|m| m.x))
        .fold(0.0, f64::max);
    let y_max = all.map(|p| p.1).fold(0.0, f64::max);
    let (x_top, x_step) = nice_axis(x_max);
    let (y_top, y_step) = nice_axis(y_max);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_top * pw;
    let sy = |y: f64| TOP + ph - y / y_top * ph;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Grid and ticks.
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let py = sy(y);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            fmt_tick(y)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_top + x_step / 2.0 {
        let px = sx(x);
        let _ = writeln!(
            o,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            fmt_tick(x)
        );
        x += x_step;
    }
    let _ = writeln!(
        o,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 10.0,
        esc(x_label)
    );
    let _ = writeln!(
        o,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for m in markers {
        let px = sx(m.x);
        let _ = writeln!(
            o,
            r##"<line class="marker" x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#c33" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#c33" font-size="10" transform="rotate(-90 {:.1} {:.1})">{}</text>"##,
            TOP + ph,
            px + 3.0,
            TOP + 4.0,
            px + 3.0,
            TOP + 4.0,
            esc(&m.label)
        );
    }
    for (k, s) in series.iter().enumerate() {
        // Step line: a value holds until the next sample.
        let mut pts = String::new();
        let mut prev: Option<f64> = None;
        for &(x, y) in &s.points {
            if let Some(py) = prev {
                let _ = write!(pts, "{:.1},{:.1} ", sx(x), py);
            }
            let _ = write!(pts, "{:.1},{:.1} ", sx(x), sy(y));
            prev = Some(sy(y));
        }
        let _ = writeln!(
            o,
            r#"<polyline class="series" points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.trim_end(),
            esc(&s.colour)
        );
        let ly = TOP + 14.0 + 16.0 * k as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            ly - 4.0,
            LEFT + 30.0,
            ly - 4.0,
            esc(&s.colour),
            LEFT + 36.0,
            ly,
            esc(&s.label)
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(93.0), (100.0, 20.0));
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn draws_every_point_and_marker() {
        let s = Series {
            label: "blocks <covered>".into(),
            colour: "#1f77b4".into(),
            points: vec![(0.0, 1.0), (1.0, 5.0), (2.5, 9.0)],
        };
        let svg = line_chart(
            "t",
            "s",
            "blocks",
            &[s],
            &[Marker {
                x: 2.0,
                label: "panic".into(),
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let line = svg
            .lines()
            .find(|l| l.contains("class=\"series\""))
            .expect("series");
        // 3 samples, 2 of them preceded by a horizontal step.
        let pts = line.split("points=\"").nth(1).expect("points");
        let pts = pts.split('"').next().expect("end");
        assert_eq!(pts.split(' ').count(), 5);
        assert_eq!(svg.matches("class=\"marker\"").count(), 1);
        assert!(svg.contains("blocks &lt;covered&gt;"));
    }

    #[test]
    fn empty_series_is_still_a_document() {
        let svg = line_chart("t", "x", "y", &[], &[]);
        assert!(svg.contains("</svg>"));
    }
}
