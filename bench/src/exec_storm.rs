//! The exec storm (on demand: `--only exec-storm`): what one shim holds after many execs
//! into one container. containerd's Go shim is reported to keep something per exec; a shim
//! that does grows with the number of execs, which a long-lived pod that is probed by exec
//! (liveness checks every few seconds) reaches in days.
//!
//! Straight to the shim (see `launch`), so that the storm is the shim's and its runtime's
//! work only, not containerd's and ctr's: one shim with one sleeping container, started in a
//! memory cgroup of its own, then Exec, Start, Wait, Delete of /bin/true over ttrpc,
//! `--in-flight` at a time, until each count of `--exec-storm`. At 0 and after each count the
//! shim's RSS (with its native helper, if there is one) and its cgroup's charge are read.
//! The cgroup also holds what the runtime processes it forked left charged behind (page
//! cache, kernel objects), so it shows what the node pays for the storm; RSS is the shim's
//! own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use tether_protos::api;
use tether_tests::{
    shim::{code_of, exec_request, message_of, ShimClient},
    Env,
};

use crate::alternate::{alternate, series, Collected};
use crate::cgroups::Cgroup;
use crate::containers::SLEEP;
use crate::interrupt;
use crate::launch::Launch;
use crate::options::Options;
use crate::procfs;
use crate::results::{Figure, Unit};
use crate::targets::Target;

/// Growth from the first count to the last below which a shim counts as flat: the noise of
/// a heap that reuses its pages (and of Go's collector, which runs when it likes).
const FLAT_KIB: u64 = 512;

/// The shim's memory at one count.
#[derive(Debug, Clone, Copy)]
struct Point {
    rss_kib: u64,
    /// The anonymous part of the RSS: what the shim holds of its own (heap, stacks). The rest
    /// of the RSS is its binary's pages, shared page cache that rises and falls with the code
    /// the last calls ran (and with tether's idle trim).
    anon_kib: u64,
    cgroup_kib: u64,
}

/// One target's storm: a point at 0 and after each count, and how long the execs took.
struct Storm {
    points: Vec<Point>,
    seconds: f64,
}

pub fn figures(env: &Env, targets: &[Target], spec: &Value, opts: &Options) -> Vec<Figure> {
    let top = match Cgroup::create(&format!("tether-bench-{}-storm", std::process::id())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot make the exec storm's cgroup, skipping it: {e}");
            return Vec::new();
        }
    };
    let counts: Vec<usize> = std::iter::once(0).chain(opts.storm.iter().copied()).collect();
    let collected = alternate(
        "exec storm",
        targets,
        |t| t.name.to_string(),
        0,
        1,
        |t, round| storm(env, &top, t, spec, round, &counts, opts.in_flight),
    );
    drop(top);
    let mut out = Vec::new();
    for (k, count) in counts.iter().enumerate() {
        let when = if *count == 0 { "before any exec".to_string() } else { format!("after {count} execs") };
        let mut rss = Figure::new(
            format!("exec_storm_rss_{count}"),
            format!("exec storm: shim RSS {when} ({} in flight)", opts.in_flight),
            Unit::MiB,
            series(&collected, |s| s.points[k].rss_kib as f64 / 1024.0),
        );
        let anon = Figure::new(
            format!("exec_storm_anon_{count}"),
            format!("exec storm: shim anonymous memory {when}"),
            Unit::MiB,
            series(&collected, |s| s.points[k].anon_kib as f64 / 1024.0),
        );
        let cgroup = Figure::new(
            format!("exec_storm_cgroup_{count}"),
            format!("exec storm: shim's cgroup {when}"),
            Unit::MiB,
            series(&collected, |s| s.points[k].cgroup_kib as f64 / 1024.0),
        );
        if k == counts.len() - 1 && k > 1 {
            rss.notes.extend(verdicts(&collected, counts[1], *count));
        }
        out.push(rss);
        out.push(anon);
        out.push(cgroup);
    }
    out
}

/// Per target: how much RSS and cgroup grew from the first count to the last, flat or not,
/// and the exec rate.
fn verdicts(collected: &[Collected<Storm>], first: usize, last: usize) -> Vec<String> {
    collected
        .iter()
        .filter_map(|c| {
            let s = c.values.first()?;
            let (a, b) = (s.points[1], *s.points.last()?);
            let grew = |x: u64, y: u64| (y as i64 - x as i64) as f64 / 1024.0;
            let verdict = |kib: f64| if kib * 1024.0 > FLAT_KIB as f64 { "GROWS" } else { "flat" };
            let (rss, anon) = (grew(a.rss_kib, b.rss_kib), grew(a.anon_kib, b.anon_kib));
            Some(format!(
                "{}: from {first} to {last} execs RSS {rss:+.2} MiB ({}), anonymous {anon:+.2} MiB ({}), cgroup {:+.2} MiB \
                 (flat: < {FLAT_KIB} KiB); {:.0} execs/s",
                c.name,
                verdict(rss),
                verdict(anon),
                grew(a.cgroup_kib, b.cgroup_kib),
                last as f64 / s.seconds.max(1e-9)
            ))
        })
        .collect()
}

/// Starts one shim with a sleeping container in a cgroup of its own, storms it, and reads
/// its memory at every count; the shim, its container and the cgroup go away afterwards.
fn storm(
    env: &Env,
    top: &Cgroup,
    target: &Target,
    spec: &Value,
    round: usize,
    counts: &[usize],
    in_flight: usize,
) -> Result<Storm, String> {
    let group = top.child(&format!("{}-{round}", target.name))?;
    let id = format!("storm-{}-{round}", target.name);
    let mut launch = Launch::prepare(env, target, spec, &id, &SLEEP)?;
    launch.in_cgroup(group.procs_file());
    launch.start_shim()?;
    let shim = launch.connect()?;
    launch.create("", "")?;
    launch.start()?;
    let read = || -> Result<Point, String> {
        let own = procfs::memory(shim).ok_or_else(|| format!("shim {shim} is gone"))?;
        let all = procfs::helpers(shim).iter().filter_map(|h| procfs::memory(*h)).fold(own, |a, b| a + b);
        Ok(Point { rss_kib: all.rss_kib, anon_kib: all.anon_kib, cgroup_kib: group.charge()?.total / 1024 })
    };
    let mut points = vec![read()?];
    let started = Instant::now();
    let client = launch.client()?;
    let mut done = 0;
    for &count in &counts[1..] {
        exec_until(client, &id, done, count, in_flight)?;
        done = count;
        points.push(read()?);
        eprintln!(
            "  exec storm: {} after {count} execs: RSS {:.2} MiB",
            target.name,
            points.last().unwrap().rss_kib as f64 / 1024.0
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    launch.finish()?;
    drop(group);
    Ok(Storm { points, seconds })
}

/// Execs /bin/true in `id` with exec ids `from..to`, `in_flight` at a time: Exec, Start,
/// Wait (which must say 0), Delete. Stops at the first failure or a Ctrl-C.
fn exec_until(client: &ShimClient, id: &str, from: usize, to: usize, in_flight: usize) -> Result<(), String> {
    let next = AtomicUsize::new(from);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..in_flight.max(1) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= to || failure.lock().unwrap().is_some() {
                    break;
                }
                if interrupt::requested() {
                    failure.lock().unwrap().get_or_insert_with(|| "interrupted".into());
                    break;
                }
                if let Err(e) = one_exec(client, id, &format!("s{k}")) {
                    failure.lock().unwrap().get_or_insert(e);
                    break;
                }
            });
        }
    });
    failure.into_inner().unwrap().map_or(Ok(()), Err)
}

fn one_exec(client: &ShimClient, id: &str, exec_id: &str) -> Result<(), String> {
    let fail =
        |what: &str, e: tether_protos::ttrpc::Error| format!("{what} {exec_id}: {:?}: {}", code_of(&e), message_of(&e));
    client
        .call::<tether_protos::protobuf::well_known_types::empty::Empty>(
            "Exec",
            &exec_request(id, exec_id, &["/bin/true"]),
        )
        .map_err(|e| fail("Exec", e))?;
    let ids = || (id.to_string(), exec_id.to_string());
    let (i, x) = ids();
    client
        .call::<api::StartResponse>("Start", &api::StartRequest { id: i, exec_id: x, ..Default::default() })
        .map_err(|e| fail("Start", e))?;
    let (i, x) = ids();
    let waited: api::WaitResponse = client
        .call("Wait", &api::WaitRequest { id: i, exec_id: x, ..Default::default() })
        .map_err(|e| fail("Wait", e))?;
    if waited.exit_status != 0 {
        return Err(format!("exec {exec_id} exited with status {}", waited.exit_status));
    }
    let (i, x) = ids();
    client
        .call::<api::DeleteResponse>("Delete", &api::DeleteRequest { id: i, exec_id: x, ..Default::default() })
        .map_err(|e| fail("Delete", e))?;
    Ok(())
}
