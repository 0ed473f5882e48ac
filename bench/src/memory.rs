//! Figure 1, memory: what shims cost while their containers sleep. One shim with one
//! container; N containers each in its own shim; N containers grouped in one shim. Each is
//! RSS (what `ps` shows; shared pages counted in every process) and PSS (shared pages split
//! among their users: what N shims really cost together), per container.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tether_protos::api;
use tether_shim::idle;
use tether_tests::{env::parent_pid, shim::ShimClient, Env};

use crate::alternate::{alternate, series, Collected};
use crate::containers::{self, start_sleepers};
use crate::options::Options;
use crate::procfs::{self, Memory};
use crate::results::{Figure, Unit};
use crate::targets::Target;

/// How long containers sleep before their shims are measured: long enough for start-up
/// garbage to be collected (Go) and for tether's idle trim (after its default quiet time).
const SETTLE: Duration = Duration::from_secs(idle::DEFAULT_AFTER.as_secs() + 3);

/// One memory reading of a scenario, per container.
struct Reading {
    per_container: Memory,
    /// Shim processes found (N, 1 or 1), and helper processes counted with them.
    shims: usize,
    helpers: usize,
    /// With one container: the first task call after the settle and the one right after it
    /// (State, over a connection made before the settle, as containerd keeps one), in ms.
    calls_ms: Option<[f64; 2]>,
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
        let collected = alternate(
            &title,
            targets,
            |t| t.name.to_string(),
            0,
            opts.memory_rounds,
            |t, round| scenario(env, t, id, round, count, grouped, opts.in_flight),
        );
        out.push(figure(id, "rss", &title, &collected, |r| r.per_container.rss_kib));
        out.push(figure(id, "pss", &title, &collected, |r| r.per_container.pss_kib));
        if count == 1 {
            out.push(first_call_figure(&collected));
        }
    }
    out
}

/// What the idle shim's memory costs when containerd calls it again: tether's trimmed shim
/// faults its code back in.
fn first_call_figure(collected: &[Collected<Reading>]) -> Figure {
    let call = |r: &Reading, k: usize| r.calls_ms.map_or(f64::NAN, |c| c[k]);
    let mut f = Figure::new(
        "memory_idle_first_call",
        "first call on the idle shim (State)",
        Unit::Millis,
        series(collected, |r| call(r, 0)),
    );
    for c in collected {
        if let Some(r) = c.values.first() {
            f.notes.push(format!("{}: the call right after it took {:.3} ms", c.name, call(r, 1)));
        }
    }
    f
}

fn figure(
    scenario: &str,
    metric: &str,
    title: &str,
    collected: &[Collected<Reading>],
    kib: impl Fn(&Reading) -> u64,
) -> Figure {
    let mut f = Figure::new(
        format!("{scenario}_{metric}"),
        format!("memory {}: {title}", metric.to_uppercase()),
        Unit::MiB,
        series(collected, |r| kib(r) as f64 / 1024.0),
    );
    for c in collected {
        if let Some(r) = c.values.first() {
            if r.helpers > 0 {
                f.notes.push(format!(
                    "{}: includes {} native-helper process(es) beside {} shim(s)",
                    c.name, r.helpers, r.shims
                ));
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
    // Listing tasks calls every shim (State), so the shims are found before they settle.
    let shims = shims_of(env, &ids);
    let client = if count == 1 { Some(ShimClient::try_for_task(env, &ids[0])) } else { None };
    std::thread::sleep(SETTLE);
    let reading = shims.and_then(|shims| measure(&shims, count)).and_then(|mut r| {
        if let Some(client) = client {
            r.calls_ms = Some(two_calls(&client?, &ids[0])?);
        }
        Ok(r)
    });
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
pub fn shims_of(env: &Env, ids: &[String]) -> Result<BTreeSet<u32>, String> {
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
    Ok(shims)
}

/// The memory of `shims` and their helpers, per container of `count`.
fn measure(shims: &BTreeSet<u32>, count: usize) -> Result<Reading, String> {
    let helpers: Vec<u32> = shims.iter().flat_map(|s| procfs::helpers(*s)).collect();
    let mut total = Memory::default();
    for pid in shims.iter().chain(&helpers) {
        total = total + procfs::memory(*pid).ok_or_else(|| format!("cannot read the memory of {pid}"))?;
    }
    let n = count as u64;
    Ok(Reading {
        per_container: Memory { rss_kib: total.rss_kib / n, pss_kib: total.pss_kib / n, anon_kib: total.anon_kib / n },
        shims: shims.len(),
        helpers: helpers.len(),
        calls_ms: None,
    })
}

/// Two State calls for `id` in a row, each timed in ms.
fn two_calls(client: &ShimClient, id: &str) -> Result<[f64; 2], String> {
    let mut took = [0.0; 2];
    for t in &mut took {
        let started = Instant::now();
        client
            .call::<api::StateResponse>("State", &api::StateRequest { id: id.into(), ..Default::default() })
            .map_err(|e| format!("State of {id}: {e}"))?;
        *t = started.elapsed().as_secs_f64() * 1000.0;
    }
    Ok(took)
}
