//! The report: a plain-text table for the terminal and the README, and a JSON document with
//! every sample for anyone who wants to redo the statistics.

use serde_json::{json, Value};

use crate::goals::Goal;
use crate::results::{Figure, Results, GO};

/// Facts about the run that the numbers depend on.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// UTC, `2026-11-03T12:00:00Z`.
    pub date: String,
    /// `key: value` lines: kernel, CPU, memory, containerd, runc, load averages...
    pub machine: Vec<(String, String)>,
    /// The options the run used (`lifecycle_iterations: 200`, ...).
    pub options: Vec<(String, String)>,
}

/// A number with as many decimals as its size deserves.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const HEADER: [&str; 8] = ["figure", "unit", "target", "n", "fail", "median", "tail", "×Go"];

/// One row per (figure, series): the figure's title only on its first row.
fn rows(figure: &Figure) -> Vec<[String; 8]> {
    let mut out = Vec::new();
    for (i, s) in figure.series.iter().enumerate() {
        let summary = s.summary();
        let cell = |f: fn(&crate::stats::Summary) -> f64| {
            summary.as_ref().map(|x| format_value(f(x))).unwrap_or_else(|| "-".into())
        };
        let tail =
            summary.as_ref().map(|x| format!("{} {}", format_value(figure.unit.tail(x)), figure.unit.tail_name()));
        let ratio = figure.ratio(&s.name, GO).map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        out.push([
            if i == 0 { figure.title.clone() } else { String::new() },
            if i == 0 { figure.unit.label().to_owned() } else { String::new() },
            s.name.clone(),
            s.samples.len().to_string(),
            s.failures.to_string(),
            cell(|x| x.median),
            tail.unwrap_or_else(|| "-".into()),
            ratio,
        ]);
    }
    out
}

/// The table, columns padded to their widest cell (numbers right-aligned), then the notes.
pub fn table(results: &Results) -> String {
    let mut all: Vec<[String; 8]> = vec![HEADER.map(String::from)];
    for f in &results.figures {
        all.extend(rows(f));
    }
    let width = |c: usize| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..HEADER.len()).map(width).collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Text columns left, numbers right.
            if c < 3 {
                line += cell;
                line += &" ".repeat(pad);
            } else {
                line += &" ".repeat(pad);
                line += cell;
            }
            line += "  ";
        }
        out += line.trim_end();
        out.push('\n');
    }
    out += "tail: p99 of a time, p1 (slowest runs) of a throughput, max of a memory figure or a count; ×Go: median / Go shim's median\n";
    for f in &results.figures {
        for n in &f.notes {
            out += &format!("note ({}): {n}\n", f.id);
        }
    }
    out
}

/// The JSON document: run facts, every figure with its summaries, ratios and raw samples,
/// and the goals.
pub fn json(info: &RunInfo, results: &Results, goals: &[Goal]) -> Value {
    let pairs =
        |v: &[(String, String)]| Value::Object(v.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect());
    let figures: Vec<Value> = results
        .figures
        .iter()
        .map(|f| {
            let series: Vec<Value> = f
                .series
                .iter()
                .map(|s| {
                    let sum = s.summary();
                    json!({
                        "name": s.name,
                        "n": s.samples.len(),
                        "failures": s.failures,
                        "median": sum.map(|x| x.median),
                        "p99": sum.map(|x| x.p99),
                        "p1": sum.map(|x| x.p1),
                        "min": sum.map(|x| x.min),
                        "max": sum.map(|x| x.max),
                        "mean": sum.map(|x| x.mean),
                        "ratio_to_go": f.ratio(&s.name, GO),
                        "samples": s.samples,
                    })
                })
                .collect();
            json!({ "id": f.id, "title": f.title, "unit": f.unit.label(), "series": series, "notes": f.notes })
        })
        .collect();
    let goals: Vec<Value> = goals
        .iter()
        .map(|g| {
            json!({
                "figure": g.figure, "series": g.series, "base": g.base, "limit": g.limit,
                "at_least": g.at_least, "ratio": g.ratio, "met": g.met(),
            })
        })
        .collect();
    json!({
        "date": info.date,
        "machine": pairs(&info.machine),
        "options": pairs(&info.options),
        "figures": figures,
        "goals": goals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{test_figure, Unit, TETHER_RUNC};

    fn results() -> Results {
        let mut f = test_figure(
            "lifecycle_e2e",
            Unit::Millis,
            &[(GO, &[100.0, 110.0, 120.0]), (TETHER_RUNC, &[50.0, 55.0, 60.0])],
        );
        f.title = "lifecycle via containerd".into();
        f.notes.push("includes ctr".into());
        Results { figures: vec![f] }
    }

    #[test]
    fn table_has_one_row_per_series_and_ratios() {
        let t = table(&results());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("figure"), "{t}");
        assert!(lines[1].starts_with("lifecycle via containerd  ms"), "{t}");
        assert!(lines[1].ends_with("110.0  119.8 p99  1.00"), "{t}");
        assert!(lines[2].starts_with("                          "), "{t}");
        assert!(lines[2].ends_with("55.00  59.90 p99  0.50"), "{t}");
        assert!(t.contains("note (lifecycle_e2e): includes ctr"), "{t}");
        // Every row is as wide as its columns need, no wider.
        assert_eq!(lines[0].find("unit"), lines[1].find("ms"));
    }

    #[test]
    fn json_keeps_samples_and_ratios() {
        let info = RunInfo { date: "d".into(), machine: vec![("cpus".into(), "2".into())], options: vec![] };
        let v = json(&info, &results(), &[]);
        assert_eq!(v["machine"]["cpus"], "2");
        let s = &v["figures"][0]["series"][1];
        assert_eq!(s["name"], TETHER_RUNC);
        assert_eq!(s["ratio_to_go"], 0.5);
        assert_eq!(s["samples"].as_array().unwrap().len(), 3);
        assert_eq!(v["figures"][0]["unit"], "ms");
    }

    #[test]
    fn values_get_sensible_decimals() {
        assert_eq!(format_value(1234.4), "1234");
        assert_eq!(format_value(123.45), "123.5");
        assert_eq!(format_value(12.345), "12.35");
        assert_eq!(format_value(0.12345), "0.123");
    }
}
