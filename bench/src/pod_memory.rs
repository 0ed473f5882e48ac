//! Node memory per pod (issue 20): what a node pays for what holds each pod, its shim and,
//! where there is one, its pause container, for the kinds of pod of `pods` (containerd's Go
//! shim and tether with pause, tether's sandbox without).
//!
//! Measured as `node_memory` measures shims, per private containerd 2.x: containerd in a
//! memory cgroup of its own, every shim it starts in another (its name in containerd's `bin/`
//! wrapped to join that cgroup at exec), the marginal pod between M = N/2 and N pods, each
//! with one `sleep` container, while a kubelet-like poller asks the CRI for every container's
//! and pod's stats (ListContainerStats and ListPodSandboxStats, as a kubelet with CRI stats
//! does) every 10 s. The pause container runs in a cgroup of its own, which the CRI names
//! `<cgroup parent>/<pod id>`; it is read too and added. The app container's cgroup is not:
//! it is the same in every kind of pod. What runc charges to the shims' cgroup while it
//! creates the app container (its processes' kernel structures) is in every kind alike.
//! containerd's own growth (the pod's records, the pause container's snapshot) is shown
//! separately and not counted.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether_tests::cri::client::CriClient;
use tether_tests::cri::config::TETHER_SANDBOX_HANDLER;
use tether_tests::cri::CriEnv;

use crate::alternate::{alternate, series};
use crate::cgroups::{Cgroup, Charge};
use crate::node_memory::{pause, NodeCgroups, Polled, Polling, POLL_EVERY};
use crate::options::Options;
use crate::pods::{remove_pod, run_pod, Kind};
use crate::results::{Figure, Unit};

/// What one kind's pods cost in one round.
struct Reading {
    /// Shims' cgroup and pause containers' growth from M to N pods, per pod (KiB).
    per_pod_kib: f64,
    /// Of which the pause containers' cgroups (KiB).
    pause_kib: f64,
    /// containerd's cgroup growth over the same pods, per pod (KiB).
    containerd_kib: f64,
    /// Shims plus pause containers at M and at N pods (MiB), for the notes.
    at: [f64; 2],
    /// The shims' cgroup's growth per pod by kind of memory (KiB): anonymous, page cache,
    /// kernel, where the kernel says.
    shims_by_kind: [Option<f64>; 3],
    polled: Polled,
}

/// The figures of `--only pod-memory`: shim plus pause per pod, the pause part, containerd's
/// own growth. `envs` are the containerds `kinds` run on.
pub fn figures(envs: &[&CriEnv], kinds: &[Kind], opts: &Options) -> Vec<Figure> {
    let mut groups = Vec::new();
    for (k, env) in envs.iter().enumerate() {
        let name = format!("tether-bench-{}-pods-{k}", std::process::id());
        match wrapped_shims(env).and_then(|shims| NodeCgroups::set_up(&name, env.containerd.dir(), &shims)) {
            Ok(g) => groups.push(g),
            Err(e) => {
                eprintln!("cannot set up the cgroups of pod memory, skipping it: {e}");
                return Vec::new();
            }
        }
    }
    let cgroups_of = |kind: &Kind| {
        let k = envs.iter().position(|e| std::ptr::eq(*e, kind.env)).expect("a kind runs on one of the containerds");
        &groups[k]
    };
    let collected = alternate(
        "pod memory",
        kinds,
        |k| k.series.to_string(),
        0,
        opts.memory_rounds,
        |kind, round| measure(kind, cgroups_of(kind), round, opts),
    );
    drop(groups);
    let (m, n) = (opts.pods / 2, opts.pods);
    let mut memory = Figure::new(
        "pod_memory",
        format!("node memory per pod via the CRI: shim + pause, pods {m}→{n}, stats every {}s", POLL_EVERY.as_secs()),
        Unit::KiB,
        series(&collected, |r| r.per_pod_kib),
    );
    memory.notes.push(format!(
        "the cgroup holding containerd 2.x's shims (wrapped to join it at exec) plus each pod's pause container's \
         cgroup, read after {} s of ListContainerStats and ListPodSandboxStats every {} s, at {m} and at {n} pods of \
         one `sleep` container; (at {n} − at {m}) / {}; `no pause` pods have no pause container",
        opts.node_settle_secs,
        POLL_EVERY.as_secs(),
        n - m
    ));
    for c in &collected {
        if let Some(r) = c.values.first() {
            let [anon, file, kernel] = r.shims_by_kind.map(|v| v.map_or("?".to_string(), |v| format!("{v:.0}")));
            memory.notes.push(format!(
                "{}: shims + pause {:.2} MiB at {m} pods, {:.2} MiB at {n}; the shims' growth per pod: anon {anon}, \
                 page cache {file}, kernel {kernel} KiB; {}",
                c.name,
                r.at[0],
                r.at[1],
                r.polled.describe("rounds of stats calls")
            ));
        }
    }
    let pause_part = Figure::new(
        "pod_memory_pause",
        "node memory per pod via the CRI: of which the pause container's cgroup",
        Unit::KiB,
        series(&collected, |r| r.pause_kib),
    );
    let containerd = Figure::new(
        "pod_memory_containerd",
        "containerd 2.x's own growth per pod (not in the rows above)",
        Unit::KiB,
        series(&collected, |r| r.containerd_kib),
    );
    vec![memory, pause_part, containerd]
}

/// The shims `env`'s containerd runs: every `containerd-shim-*` symlink in its `bin/`, with
/// what it names.
fn wrapped_shims(env: &CriEnv) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let bin = env.containerd.dir().join("bin");
    let entries = std::fs::read_dir(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut shims = Vec::new();
    for entry in entries.flatten() {
        let link = entry.path();
        if entry.file_name().to_string_lossy().starts_with("containerd-shim-") {
            let target = std::fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
            shims.push((link, target));
        }
    }
    Ok(shims)
}

/// One round of one kind: M pods, then N, each read after the polling. The pods are removed
/// whatever happens.
fn measure(kind: &Kind, cgroups: &NodeCgroups, round: usize, opts: &Options) -> Result<Reading, String> {
    let (m, n) = (opts.pods / 2, opts.pods);
    let names: Vec<String> = (0..n).map(|k| format!("pm-{}-{round}-{k}", kind.handler)).collect();
    let polling = Polling::default();
    // The poller's own connection: the client blocks on a runtime of its own.
    let poller = CriClient::connect(&kind.env.containerd.address());
    let settle = Duration::from_secs(opts.node_settle_secs);
    let mut pods = Vec::new();
    let reading = std::thread::scope(|scope| {
        let (polling, poller) = (&polling, &poller);
        scope.spawn(move || polling.run(|_| vec![poller.list_all_stats().map(drop).map_err(|e| e.to_string())]));
        let outcome = (|| {
            let mut at = [(Charge::default(), 0); 2];
            let mut containerd_at = [Charge::default(); 2];
            for (step, range) in [(0, 0..m), (1, m..n)] {
                for name in &names[range] {
                    pods.push(run_pod(kind, name)?);
                }
                polling.watch(&pods);
                if !pause(settle) {
                    return Err("interrupted".to_string());
                }
                at[step] = (cgroups.shims.charge()?, pause_containers(kind, &pods)?);
                containerd_at[step] = cgroups.containerd.charge()?;
            }
            let pods = (n - m) as f64;
            let grown = |a: u64, b: u64| (b as f64 - a as f64) / 1024.0 / pods;
            let both = |(shims, pause): &(Charge, u64)| shims.total + pause;
            let part = |f: fn(&Charge) -> Option<u64>| f(&at[0].0).zip(f(&at[1].0)).map(|(a, b)| grown(a, b));
            Ok(Reading {
                per_pod_kib: grown(both(&at[0]), both(&at[1])),
                pause_kib: grown(at[0].1, at[1].1),
                containerd_kib: grown(containerd_at[0].total, containerd_at[1].total),
                at: at.map(|c| both(&c) as f64 / (1024.0 * 1024.0)),
                shims_by_kind: [part(|c| c.anon), part(|c| c.file), part(|c| c.kernel)],
                polled: Polled::default(),
            })
        })();
        polling.stop.store(true, Ordering::Relaxed);
        outcome
    });
    let mut removed = Ok(());
    for pod in &pods {
        if let Err(e) = remove_pod(kind.env, pod) {
            removed = removed.and(Err(format!("removing pod {pod}: {e}")));
        }
    }
    let mut reading = reading?;
    removed?;
    reading.polled = polling.polled();
    Ok(reading)
}

/// What the pause containers of `pods` are charged (bytes), summed. Each pod of a kind with pause
/// must have one, and a pod of tether's sandbox none, or the figure would misplace memory.
fn pause_containers(kind: &Kind, pods: &[String]) -> Result<u64, String> {
    let with_pause = kind.handler != TETHER_SANDBOX_HANDLER;
    let parent = kind.env.plugin().cgroup_parent();
    let mut sum = 0;
    for pod in pods {
        let name = format!("{parent}/{pod}");
        match (Cgroup::charge_of_named(&name)?, with_pause) {
            (Some(c), true) => sum += c.total,
            (None, false) => {}
            (Some(_), false) => return Err(format!("pod {pod} has no pause container, yet a cgroup {name}")),
            (None, true) => return Err(format!("the pause container of pod {pod} has no memory cgroup {name}")),
        }
    }
    Ok(sum)
}
