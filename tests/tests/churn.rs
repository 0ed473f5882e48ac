//! Churn: 300 containers and 600 execs that exit at once, 8 at a time, all in one shim, twice.
//! Every exit code is right, no Wait hangs, no zombie is left, and the shim's fds, threads and
//! anonymous memory come back to where the first round left them (less than 512 bytes more per
//! container and exec), both read once the shim has gone quiet and trimmed. The figures are
//! printed.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tether_tests::env::{usage, Env, TetherConfig, Usage};
use tether_tests::Case;
use tether_tests::{secs, wait_until};

tether_tests::for_each_executor!(churn_of_containers_and_execs_leaves_nothing_behind,);

const CONTAINERS: usize = 300;
const EXECS: usize = 600;
const IN_FLIGHT: usize = 8;
const GROUP: &str = "io.containerd.runc.v2.group";
/// The shim's quiet time before its idle trim, in this test.
const QUIET: Duration = Duration::from_millis(500);
/// How long after its last call the shim has trimmed (and its rootfs mounts' threads are gone).
const SETTLE: Duration = Duration::from_secs(4);

/// The most anonymous memory the second round may add, per container or exec it ran. What
/// the shim holds for one is several KiB (its records, stdio relays, events, the table's
/// entries), so keeping even a part of each shows; below this is the allocator's and the
/// thread stack cache's noise (how many blocking-pool threads a round happened to need).
const GROWTH_PER_OP_BYTES: u64 = 512;

fn within(now_kib: u64, base_kib: u64) -> bool {
    now_kib * 1024 <= base_kib * 1024 + (CONTAINERS + EXECS) as u64 * GROWTH_PER_OP_BYTES
}

/// Children of `pid` that are zombies.
fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // After the ")" of the command: state, ppid.
        let mut f = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace()).into_iter().flatten();
        if let (Some("Z"), Some(ppid)) = (f.next(), f.next()) {
            if ppid == pid.to_string() {
                out.push(child);
            }
        }
    }
    out
}

/// Runs `work(i)` for i in 0..n, `IN_FLIGHT` at a time.
fn in_parallel(n: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                work(i);
            });
        }
    });
}

/// The shim's own memory (heap, stacks): resident pages not mapped from a file.
fn anon(u: Usage) -> u64 {
    u.rss_kib.saturating_sub(u.rss_file_kib)
}

fn churn_of_containers_and_execs_leaves_nothing_behind(case: Case) {
    let Some(mut env) = Env::for_case("churn", case) else { return };
    if !env.tether_only("churn_of_containers_and_execs_leaves_nothing_behind") {
        return;
    }
    // A short quiet spell before the idle trim, so that both readings are taken after one: the
    // trim gives free heap pages back (malloc_trim), and what is left to compare is what the
    // shim keeps, not where the allocator's high-water mark happened to stop. (Its dropping
    // of code pages does not matter: only anonymous memory is compared.)
    let config = TetherConfig {
        executor: Some(case.executor.name().into()),
        idle_trim_ms: Some(QUIET.as_millis() as u64),
        ..Default::default()
    };
    env.default_config = Some(config.write(&env.work().join("churn.toml")));
    let ctr = &env.ctr;
    env.run("anchor").detach().annotation(GROUP, "churn").run(&["sh", "-c", "while :; do sleep 1; done"]).expect_ok();
    ctr.wait_status("anchor", "RUNNING", secs(10));
    let shim = env.shim_pid_of("anchor");

    let container = |i: usize| {
        let id = format!("c{i}");
        let code = i % 200;
        env.run(&id).detach().annotation(GROUP, "churn").run(&["sh", "-c", &format!("exit {code}")]).expect_ok();
        ctr.wait_status(&id, "STOPPED", secs(60));
        assert_eq!(ctr.rm_task(&id), code as i32, "exit code of {id}");
        ctr.rm_container(&id).expect_ok();
    };
    let exec = |i: usize| {
        let code = i % 200;
        env.exec("anchor", &format!("x{i}"), &["sh", "-c", &format!("exit {code}")]).expect_code(code as i32);
    };
    // A first round of the same churn sets up what a shim keeps at its high-water mark (the
    // events connection, table and queue capacities, the allocator's arenas, the exits of
    // orphans kept for a while, and the last 1024 events its debug history keeps); a leak
    // grows again with the second, the same size.
    in_parallel(CONTAINERS, |i| container(CONTAINERS + i));
    in_parallel(EXECS, |i| exec(EXECS + i));
    // Past the trim.
    std::thread::sleep(SETTLE);
    let before = usage(shim);

    let started = Instant::now();
    in_parallel(CONTAINERS, container);
    let containers_took = started.elapsed();
    let started = Instant::now();
    in_parallel(EXECS, exec);
    let execs_took = started.elapsed();
    assert_eq!(env.shim_pid_of("anchor"), shim, "one shim served the whole churn");

    std::thread::sleep(SETTLE);
    let settled = wait_until(secs(15), || {
        let now = usage(shim);
        (now.fds <= before.fds && now.threads <= before.threads && within(anon(now), anon(before))).then_some(now)
    });
    let after = usage(shim);
    println!(
        "churn: {CONTAINERS} containers in {containers_took:?}, {EXECS} execs in {execs_took:?}, {IN_FLIGHT} in flight\n\
         shim {shim} before: {} fds, {} threads, {} KiB anonymous; after: {} fds, {} threads, {} KiB anonymous \
         ({} bytes more per container and exec)",
        before.fds,
        before.threads,
        anon(before),
        after.fds,
        after.threads,
        anon(after),
        (anon(after) * 1024).saturating_sub(anon(before) * 1024) / (CONTAINERS + EXECS) as u64
    );
    assert!(settled.is_some(), "the shim did not come back to {before:?}: {after:?}");
    assert!(zombie_children(shim).is_empty(), "zombies under the shim: {:?}", zombie_children(shim));
    assert_eq!(ctr.status("anchor").as_deref(), Some("RUNNING"));
}
