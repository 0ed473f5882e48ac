//! The benchmark's goals, checked against a run's figures. They are the benchmark's verdict,
//! printed as one summary line; nothing fails because of them (benchmarks are not tests).

use crate::results::{Results, GO, RAW_PIPE, TETHER_NATIVE, TETHER_NATIVE_NO_PAUSE, TETHER_RUNC, TETHER_RUNC_NO_PAUSE};

/// Figure ids the goals read (the scenarios produce them).
pub mod ids {
    pub const NODE_MEMORY: &str = "node_memory";
    pub const LIFECYCLE_E2E: &str = "lifecycle_e2e";
    pub const SHIM_LIFECYCLE: &str = "shim_lifecycle";
    pub const STDIO: &str = "stdio";
    pub const POD_START: &str = "pod_start";
    pub const POD_MEMORY: &str = "pod_memory";
}

/// One comparison: `series`'s median over `base`'s median, against `limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub figure: &'static str,
    pub series: &'static str,
    pub base: &'static str,
    /// The ratio must be ≤ this (or ≥, for throughput).
    pub limit: f64,
    pub at_least: bool,
    /// None when the figure or one of the series was not measured.
    pub ratio: Option<f64>,
}

impl Goal {
    pub fn met(&self) -> Option<bool> {
        let r = self.ratio?;
        Some(if self.at_least { r >= self.limit } else { r <= self.limit })
    }

    /// `stdio tether-runc/raw pipe ≥ 0.80: 0.93 ok`.
    pub fn describe(&self) -> String {
        let cmp = if self.at_least { "≥" } else { "≤" };
        let verdict = match (self.ratio, self.met()) {
            (Some(r), Some(true)) => format!("{r:.2} ok"),
            (Some(r), _) => format!("{r:.2} MISSED"),
            (None, _) => "not measured".into(),
        };
        format!("{} {}/{} {cmp} {:.2}: {verdict}", self.figure, self.series, self.base, self.limit)
    }
}

/// The goals, in the order the issue lists them.
pub fn check(results: &Results) -> Vec<Goal> {
    let goal = |figure: &'static str, series: &'static str, base: &'static str, limit: f64, at_least: bool| Goal {
        figure,
        series,
        base,
        limit,
        at_least,
        ratio: results.figure(figure).and_then(|f| f.ratio(series, base)),
    };
    let mut goals = vec![
        // What a node pays per pod (see `node_memory`); RSS after the idle trim is only a row.
        goal(ids::NODE_MEMORY, TETHER_RUNC, GO, 1.0 / 8.0, false),
        goal(ids::NODE_MEMORY, TETHER_NATIVE, GO, 1.0 / 8.0, false),
        goal(ids::SHIM_LIFECYCLE, TETHER_RUNC, GO, 1.0, false),
        goal(ids::SHIM_LIFECYCLE, TETHER_NATIVE, GO, 1.0 / 3.0, false),
        goal(ids::LIFECYCLE_E2E, TETHER_NATIVE, GO, 0.7, false),
        // A pod without pause starts in at most half the time of a pause-based Go pod (issue 20).
        goal(ids::POD_START, TETHER_RUNC_NO_PAUSE, GO, 0.5, false),
        goal(ids::POD_START, TETHER_NATIVE_NO_PAUSE, GO, 0.5, false),
        // ... and costs at most 1/10 of a pause-based Go pod's node memory (shim + pause).
        goal(ids::POD_MEMORY, TETHER_RUNC_NO_PAUSE, GO, 0.1, false),
        goal(ids::POD_MEMORY, TETHER_NATIVE_NO_PAUSE, GO, 0.1, false),
    ];
    for t in [TETHER_RUNC, TETHER_NATIVE] {
        goals.push(goal(ids::STDIO, t, GO, 1.0, true));
        goals.push(goal(ids::STDIO, t, RAW_PIPE, 0.8, true));
    }
    goals
}

/// `goals: 6/9 met, 1 not measured | node_memory tether-runc/go ≤ 0.12: 0.09 ok | ...`.
pub fn summary_line(goals: &[Goal]) -> String {
    let met = goals.iter().filter(|g| g.met() == Some(true)).count();
    let unmeasured = goals.iter().filter(|g| g.met().is_none()).count();
    let measured = goals.len() - unmeasured;
    let mut line = format!("goals: {met}/{measured} met");
    if unmeasured > 0 {
        line += &format!(", {unmeasured} not measured");
    }
    for g in goals {
        line += " | ";
        line += &g.describe();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{test_figure, Unit};

    #[test]
    fn goals_compare_medians_in_the_right_direction() {
        let results = Results {
            figures: vec![
                test_figure(
                    ids::NODE_MEMORY,
                    Unit::KiB,
                    &[(GO, &[3200.0]), (TETHER_RUNC, &[300.0]), (TETHER_NATIVE, &[800.0])],
                ),
                test_figure(
                    ids::STDIO,
                    Unit::MBps,
                    &[(GO, &[1000.0]), (RAW_PIPE, &[2000.0]), (TETHER_RUNC, &[1700.0])],
                ),
            ],
        };
        let goals = check(&results);
        let find = |fig: &str, s: &str, base: &str| {
            goals.iter().find(|g| g.figure == fig && g.series == s && g.base == base).unwrap()
        };
        assert_eq!(find(ids::NODE_MEMORY, TETHER_RUNC, GO).met(), Some(true));
        assert_eq!(find(ids::NODE_MEMORY, TETHER_NATIVE, GO).met(), Some(false));
        assert_eq!(find(ids::STDIO, TETHER_RUNC, GO).met(), Some(true));
        assert_eq!(find(ids::STDIO, TETHER_RUNC, RAW_PIPE).met(), Some(true));
        assert_eq!(find(ids::STDIO, TETHER_NATIVE, GO).met(), None);
        let line = summary_line(&goals);
        assert!(line.starts_with("goals: 3/4 met, 9 not measured"), "{line}");
        assert!(line.contains("node_memory tether-native/go ≤ 0.12: 0.25 MISSED"), "{line}");
    }
}
