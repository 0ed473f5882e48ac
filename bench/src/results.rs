//! What a run measured: figures, each a set of sample series (one per target), in a unit.

use crate::stats::{ratio, Summary};

/// The series every ratio is taken against: containerd's Go shim.
pub const GO: &str = "go";
/// tether with its runc executor.
pub const TETHER_RUNC: &str = "tether-runc";
/// tether with its native (libcontainer) executor.
pub const TETHER_NATIVE: &str = "tether-native";
/// tether's own sandbox (runc executor): a pod without a pause container.
pub const TETHER_RUNC_NO_PAUSE: &str = "tether-runc, no pause";
/// tether's own sandbox with its native executor.
pub const TETHER_NATIVE_NO_PAUSE: &str = "tether-native, no pause";
/// The stdio ceiling: a plain pipe between two processes.
pub const RAW_PIPE: &str = "raw pipe";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Seconds,
    MiB,
    KiB,
    MBps,
    /// A count per process (threads per shim).
    Count,
    /// Events in one minute (wake-ups of an idle shim).
    PerMinute,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Millis => "ms",
            Unit::Seconds => "s",
            Unit::MiB => "MiB",
            Unit::KiB => "KiB",
            Unit::MBps => "MB/s",
            Unit::Count => "count",
            Unit::PerMinute => "/min",
        }
    }

    /// The statistic that shows a series' bad tail: p99 of a time, p1 of a throughput (the
    /// slowest runs), the maximum of a memory figure or a count (few samples, more is worse).
    pub fn tail(self, s: &Summary) -> f64 {
        match self {
            Unit::Millis | Unit::Seconds => s.p99,
            Unit::MBps => s.p1,
            Unit::MiB | Unit::KiB | Unit::Count | Unit::PerMinute => s.max,
        }
    }

    pub fn tail_name(self) -> &'static str {
        match self {
            Unit::Millis | Unit::Seconds => "p99",
            Unit::MBps => "p1",
            Unit::MiB | Unit::KiB | Unit::Count | Unit::PerMinute => "max",
        }
    }

    /// A distribution worth drawing (many samples of a time).
    pub fn is_latency(self) -> bool {
        self == Unit::Millis
    }
}

/// The samples of one target (or the raw pipe) in one figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub samples: Vec<f64>,
    /// Iterations that failed (they have no sample; their errors were printed).
    pub failures: usize,
}

impl Series {
    pub fn summary(&self) -> Option<Summary> {
        Summary::of(&self.samples)
    }
}

/// One measured figure, e.g. "lifecycle through containerd".
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Stable key for the JSON and the goals (`lifecycle_e2e`).
    pub id: String,
    pub title: String,
    pub unit: Unit,
    pub series: Vec<Series>,
    /// Anything a reader needs to interpret the numbers (what was included, oddities seen).
    pub notes: Vec<String>,
}

impl Figure {
    pub fn new(id: impl Into<String>, title: impl Into<String>, unit: Unit, series: Vec<Series>) -> Figure {
        Figure { id: id.into(), title: title.into(), unit, series, notes: Vec::new() }
    }

    pub fn series(&self, name: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.name == name)
    }

    pub fn median(&self, name: &str) -> Option<f64> {
        Some(self.series(name)?.summary()?.median)
    }

    /// median(`name`) / median(`base`).
    pub fn ratio(&self, name: &str, base: &str) -> Option<f64> {
        ratio(self.median(name)?, self.median(base)?)
    }
}

/// Everything one run produced.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub figures: Vec<Figure>,
}

impl Results {
    pub fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }
}

/// A figure made of literal samples, for the unit tests of everything that renders figures.
#[cfg(test)]
pub fn test_figure(id: &'static str, unit: Unit, series: &[(&str, &[f64])]) -> Figure {
    let series = series
        .iter()
        .map(|(name, samples)| Series { name: name.to_string(), samples: samples.to_vec(), failures: 0 })
        .collect();
    Figure::new(id, id, unit, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_of_medians() {
        let f = test_figure("x", Unit::Millis, &[(GO, &[10.0, 20.0, 30.0]), (TETHER_RUNC, &[5.0, 10.0, 100.0])]);
        assert_eq!(f.ratio(TETHER_RUNC, GO), Some(0.5));
        assert_eq!(f.ratio(TETHER_NATIVE, GO), None);
    }

    #[test]
    fn tails_point_the_bad_way() {
        let s = Summary::of(&(1..=100).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert!(Unit::Millis.tail(&s) > s.median);
        assert!(Unit::MBps.tail(&s) < s.median);
        assert_eq!(Unit::MiB.tail(&s), 100.0);
    }
}
