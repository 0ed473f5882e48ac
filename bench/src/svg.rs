//! The latency chart: one panel per latency figure, each target's empirical cumulative
//! distribution (ECDF) as a step line. An ECDF shows the whole distribution at once — the
//! median where a line crosses 0.5, the tail where it approaches 1 — and needs no binning
//! choices. Written by hand: a few hundred lines of SVG need no plotting library.

use std::fmt::Write;

use crate::report::format_value;
use crate::results::{Figure, Results, GO, RAW_PIPE, TETHER_NATIVE, TETHER_RUNC};

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 45.0;
/// Samples past this multiple of the largest p99 are drawn at the right edge, so that one
/// stray outlier does not squash every distribution into the left tenth of the panel.
const CLIP_OVER_P99: f64 = 1.5;

/// A fixed colour per well-known series, so that every panel reads the same way.
fn colour(name: &str, index: usize) -> &'static str {
    const OTHERS: [&str; 4] = ["#9467bd", "#8c564b", "#e377c2", "#17becf"];
    match name {
        GO => "#555555",
        TETHER_RUNC => "#1f77b4",
        TETHER_NATIVE => "#d62728",
        RAW_PIPE => "#2ca02c",
        _ => OTHERS[index % OTHERS.len()],
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k) that cuts `range` into about `count` parts.
pub fn tick_step(range: f64, count: usize) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw);
    step.unwrap_or(10.0 * magnitude)
}

/// A tick label with the decimals `step` needs (0, 50, 100 or 0.2, 0.4; not 100.0).
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart of every latency figure of `results` (an empty chart says so).
pub fn render(results: &Results) -> String {
    let panels: Vec<&Figure> = results
        .figures
        .iter()
        .filter(|f| f.unit.is_latency() && f.series.iter().any(|s| !s.samples.is_empty()))
        .collect();
    let height = PANEL_HEIGHT * panels.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    if panels.is_empty() {
        let _ = writeln!(svg, r#"<text x="20" y="40">no latency figure was measured</text>"#);
    }
    for (i, figure) in panels.iter().enumerate() {
        panel(&mut svg, figure, i as f64 * PANEL_HEIGHT);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One figure's panel, its top edge at `y0`.
fn panel(svg: &mut String, figure: &Figure, y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let summaries: Vec<_> = figure.series.iter().filter_map(|s| s.summary()).collect();
    let largest_p99 = summaries.iter().map(|s| s.p99).fold(0.0, f64::max);
    let largest = summaries.iter().map(|s| s.max).fold(0.0, f64::max);
    let limit = largest.min(largest_p99 * CLIP_OVER_P99).max(f64::MIN_POSITIVE);
    let step = tick_step(limit, 6);
    let x_max = (limit / step).ceil() * step;
    let x = |v: f64| LEFT + v.min(x_max) / x_max * plot_w;
    let y = |frac: f64| y0 + TOP + (1.0 - frac) * plot_h;

    let title = format!("{} ({}), cumulative distribution", figure.title, figure.unit.label());
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        y0 + 22.0,
        escape(&title)
    );
    // Axes and grid: x ticks in the figure's unit, y at quarters plus the p99 line.
    let mut t = 0.0;
    while t <= x_max + step / 2.0 {
        let px = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##,
            y(0.0),
            y(1.0)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y(0.0) + 16.0,
            tick_label(t, step)
        );
        t += step;
    }
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##,
            y(frac),
            LEFT + plot_w,
            y(frac)
        );
        let _ =
            writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{frac:.2}</text>"#, LEFT - 6.0, y(frac) + 4.0);
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
        y(0.99),
        LEFT + plot_w
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#777">p99</text>"##,
        LEFT + plot_w,
        y(0.99) - 3.0
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#333"/>"##,
        y(1.0)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        y(0.0) + 34.0,
        figure.unit.label()
    );
    if largest > x_max {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#777">samples over {} {} drawn at the edge (max {})</text>"##,
            LEFT + plot_w,
            y(0.0) + 34.0,
            format_value(x_max),
            figure.unit.label(),
            format_value(largest)
        );
    }

    // The step lines, and a legend entry with each series' median, bottom right: the lines
    // are near 1 at the right end of the axis, so that corner is free.
    let drawn = figure.series.iter().filter(|s| !s.samples.is_empty()).count() as f64;
    let mut legend_y = y(0.0) - 10.0 - 16.0 * (drawn - 1.0);
    for (i, series) in figure.series.iter().enumerate() {
        let Some(summary) = series.summary() else { continue };
        let mut sorted = series.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mut points = format!("{:.1},{:.1}", x(sorted[0]), y(0.0));
        for (k, v) in sorted.iter().enumerate() {
            let _ = write!(points, " {:.1},{:.1} {:.1},{:.1}", x(*v), y(k as f64 / n), x(*v), y((k + 1) as f64 / n));
        }
        let c = colour(&series.name, i);
        let _ = writeln!(svg, r#"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{points}"/>"#);
        let label = format!("{}: median {} {}", series.name, format_value(summary.median), figure.unit.label());
        let lx = LEFT + plot_w - 230.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{c}" stroke-width="3"/>"#,
            legend_y - 4.0,
            lx + 18.0
        );
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{legend_y:.1}">{}</text>"#, lx + 24.0, escape(&label));
        legend_y += 16.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{test_figure, Unit};

    #[test]
    fn tick_labels_have_the_decimals_of_their_step() {
        assert_eq!(tick_label(100.0, 50.0), "100");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(100.0, 5), 20.0);
        assert_eq!(tick_step(7.0, 6), 2.0);
        assert_eq!(tick_step(0.9, 6), 0.2);
        assert_eq!(tick_step(0.0, 6), 1.0);
    }

    #[test]
    fn one_panel_per_latency_figure_with_a_line_per_series() {
        let results = Results {
            figures: vec![
                test_figure("lifecycle", Unit::Millis, &[(GO, &[10.0, 12.0, 11.0]), (TETHER_NATIVE, &[3.0, 4.0])]),
                test_figure("memory", Unit::MiB, &[(GO, &[12.0])]),
                test_figure("exec", Unit::Millis, &[(GO, &[5.0, 1000.0])]),
            ],
        };
        let svg = render(&results);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3, "memory is not a latency distribution");
        assert!(svg.contains("tether-native: median 3.50 ms"));
        assert!(svg.contains(&format!(r#"height="{}""#, 2.0 * PANEL_HEIGHT)));
        // exec's outlier is past 1.5 × p99? No: with two samples p99 is near the max, nothing is clipped.
        assert!(!svg.contains("drawn at the edge"));
    }

    #[test]
    fn outliers_are_clipped_and_said_so() {
        let mut samples: Vec<f64> = (0..1000).map(|i| 10.0 + (i % 10) as f64).collect();
        samples.push(5000.0);
        let results = Results { figures: vec![test_figure("x", Unit::Millis, &[(GO, &samples)])] };
        let svg = render(&results);
        assert!(svg.contains("drawn at the edge (max 5000)"), "{svg}");
    }

    #[test]
    fn nothing_to_draw_is_said() {
        assert!(render(&Results::default()).contains("no latency figure"));
    }
}
