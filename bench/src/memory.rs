//! Figure 1, memory: what shims cost while their containers sleep. One shim with one
//! container; N containers each in its own shim; N containers grouped in one shim. Each is
//! RSS (what `ps` shows; shared pages counted in every process) and PSS (shared pages split
//! among their users: what N shims really cost together), per container.

use std::collections::BTreeSet;
use std::time::Duration;

use tether_tests::{env::parent_pid, Env};

use crate::alternate::{alternate, series, Collected};
use crate::containers::{self, start_sleepers};
use crate::options::Options;
use crate::procfs::{self, Memory};
use crate::results::{Figure, Unit};
use crate::targets::Target;

/// How long containers sleep before their shims are measured: long enough for start-up
/// garbage to be collected (Go) or trimmed, short enough not to drag the run.
const SETTLE: Duration = Duration::from_secs(3);

/// One memory reading of a scenario, per container.
struct Reading {
    per_container: Memory,
    /// Shim processes found (N, 1 or 1), and helper processes counted with them.
    shims: usize,
    helpers: usize,
}

/// The three scenarios, each for every target, `--memory-rounds` times.
pub fn figures(env: &Env, targets: &[Target], opts: &Options) -> Vec<Figure> {
    let n = opts.containers;
    let scenarios = [
        ("memory_idle", "idle shim, 1 sleeping container".to_string(), 1, false),
        ("memory_separate", format!("per container, {n} containers in {n} shims"), n, false),
        ("memory_grouped", format!("per container, {n} containers grouped in 1 shim"), n, true),
    ];
    let mut out = Vec::new();
    for (id, title, count, grouped) in scenarios {
        let collected = alternate(&title, targets, |t| t.name.to_string(), 0, opts.memory_rounds, |t, round| {
            scenario(env, t, id, round, count, grouped, opts.in_flight)
        });
        out.push(figure(id, "rss", &title, &collected, |r| r.per_container.rss_kib));
        out.push(figure(id, "pss", &title, &collected, |r| r.per_container.pss_kib));
    }
    out
}

fn figure(
    scenario: &str,
    metric: &str,
    title: &str,
    collected: &[Collected<Reading>],
    kib: impl Fn(&Reading) -> u64,
) -> Figure {
    let mut f = Figure::new(format!("{scenario}_{metric}"), format!("memory {}: {title}", metric.to_uppercase()), Unit::MiB, series(collected, |r| kib(r) as f64 / 1024.0));
    for c in collected {
        if let Some(r) = c.values.first() {
            if r.helpers > 0 {
                f.notes.push(format!("{}: includes {} native-helper process(es) beside {} shim(s)", c.name, r.helpers, r.shims));
            }
        }
    }
    f
}

/// Starts `count` sleeping containers on `target`, lets them settle, measures every shim
/// serving them (and its helper), removes them again.
fn scenario(
    env: &Env,
    target: &Target,
    scenario: &str,
    round: usize,
    count: usize,
    grouped: bool,
    in_flight: usize,
) -> Result<Reading, String> {
    let prefix = format!("{}-{}-{round}", scenario.trim_start_matches("memory_"), target.name);
    let ids: Vec<String> = (0..count).map(|k| format!("{prefix}-{k}")).collect();
    let group = grouped.then_some(prefix.as_str());
    start_sleepers(env, target, &ids, in_flight, group)?;
    std::thread::sleep(SETTLE);
    let reading = measure(env, &ids, count);
    containers::remove(env, &ids, in_flight);
    let reading = reading?;
    let expected = if grouped { 1 } else { count };
    if reading.shims != expected {
        return Err(format!("found {} shim processes for {count} containers, expected {expected}", reading.shims));
    }
    Ok(reading)
}

/// The shims serving `ids` are the parents of their init processes (a shim is its
/// containers' subreaper).
fn measure(env: &Env, ids: &[String], count: usize) -> Result<Reading, String> {
    let tasks = env.ctr.tasks();
    let mut shims = BTreeSet::new();
    for id in ids {
        let task = tasks.iter().find(|t| &t.id == id).ok_or_else(|| format!("task {id} is not listed"))?;
        let shim = parent_pid(task.pid).ok_or_else(|| format!("no parent for {id}'s init {}", task.pid))?;
        if !procfs::cmdline(shim).first().is_some_and(|a| a.contains("containerd-shim")) {
            return Err(format!("the parent {shim} of {id}'s init is not a shim: {:?}", procfs::cmdline(shim)));
        }
        shims.insert(shim);
    }
    let helpers: Vec<u32> = shims.iter().flat_map(|s| procfs::helpers(*s)).collect();
    let mut total = Memory::default();
    for pid in shims.iter().chain(&helpers) {
        total = total + procfs::memory(*pid).ok_or_else(|| format!("cannot read the memory of {pid}"))?;
    }
    let n = count as u64;
    Ok(Reading {
        per_container: Memory { rss_kib: total.rss_kib / n, pss_kib: total.pss_kib / n },
        shims: shims.len(),
        helpers: helpers.len(),
    })
}
