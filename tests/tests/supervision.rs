//! Processes the shim cannot reap: a container whose init is another process's child. Its
//! exit status never reaches the shim, yet the task must not seem to run forever.
//! And the watch for them costs nothing while all is well: an idle shim is one thread, and no
//! timer wakes it. Nor does a runtime call: the shim awaits the runtime's exit on its loop, so
//! a busy shim is one thread too.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use tether_protos::{api, protobuf::well_known_types::empty::Empty};
use tether_tests::env::{parent_pid, pid_alive, usage, Env, TetherConfig};
use tether_tests::runtime::{adopting_runc, slow_runc};
use tether_tests::shim::{exec_request, ShimClient};
use tether_tests::{secs, wait_until, Daemon};

tether_tests::for_each_daemon!(
    an_init_the_shim_cannot_reap_still_exits,
    a_shim_whose_containers_just_run_does_not_wake_on_a_timer,
    runtime_calls_in_flight_hold_no_thread,
);

/// The exit code tether reports for a process whose exit status it could not see.
const UNKNOWN_EXIT: u64 = 255;

fn an_init_the_shim_cannot_reap_still_exits(daemon: Daemon) {
    let env = Env::new("self_heal", daemon);
    if !env.tether_only("an_init_the_shim_cannot_reap_still_exits") {
        return;
    }
    let ctr = &env.ctr;
    let runc = adopting_runc(&env.work().join("bin"), "adopting-runc");
    // A container whose init exits with `code` once released, and is not the shim's child.
    let adopted = |id: &str, code: u32| {
        env.run(id)
            .detach()
            .runtime_binary(&runc.display().to_string())
            .run(&["sh", "-c", &format!("while [ ! -e /tmp/go-{id} ]; do sleep 0.05; done; exit {code}")])
            .expect_ok();
        ctr.wait_status(id, "RUNNING", secs(10))
    };
    let release = |id: &str, pid: u32| {
        fs::write(env.rootfs.join(format!("tmp/go-{id}")), "").unwrap();
        assert!(wait_until(secs(10), || (!pid_alive(pid)).then_some(())).is_some(), "{id}'s init exited");
    };
    let events = ctr.subscribe();
    let task = adopted("h1", 3);
    let parent = parent_pid(task.pid).expect("the init's parent");
    let shims: Vec<u32> = env.containerd.shim_processes().into_iter().map(|(p, _)| p).collect();
    assert!(!shims.contains(&parent), "the init's parent {parent} is not a shim ({shims:?})");

    release("h1", task.pid);
    // Nobody asks the shim anything: its exits thread, polling the init's pidfd, finds it gone.
    let seen = events.wait_for("h1", secs(30), |evs| evs.iter().any(|e| e.topic == "/tasks/exit"));
    let exit = seen.iter().find(|e| e.topic == "/tasks/exit").unwrap();
    assert_eq!(exit.exit_status(), UNKNOWN_EXIT, "{:?}", exit.payload);
    assert_eq!(exit.payload["pid"].as_u64(), Some(task.pid as u64));
    ctr.wait_status("h1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("h1"), UNKNOWN_EXIT as i32);

    // Killed once gone: the shim looks before it signals, and says the process has finished.
    let task = adopted("h2", 4);
    release("h2", task.pid);
    ctr.kill("h2", "SIGKILL", false).expect_failure().expect_stderr("has already finished");
    ctr.wait_status("h2", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("h2"), UNKNOWN_EXIT as i32);
}

/// The voluntary context switches of thread `tid` of `pid` (it slept that many times).
fn sleeps_of_thread(pid: u32, tid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?.trim().parse().ok()
}

fn a_shim_whose_containers_just_run_does_not_wake_on_a_timer(daemon: Daemon) {
    let mut env = Env::new("no_timer", daemon);
    if !env.tether_only("a_shim_whose_containers_just_run_does_not_wake_on_a_timer") {
        return;
    }
    // A short quiet spell: the shim trims once, soon after its last call, and then has
    // nothing left to do.
    let config = TetherConfig { idle_trim_ms: Some(300), ..Default::default() };
    env.default_config = Some(config.write(&env.work().join("no_timer.toml")));
    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let shim = env.shim_pid_of("c1");
    // Past the trim (and the rootfs mount's thread): from then on the shim is its loop alone.
    thread::sleep(secs(3));
    assert_eq!(usage(shim).threads, 1, "an idle shim serving one container runs one thread");
    // The loop (the main thread) waits on the init's pidfd, the signals and the sockets:
    // nothing wakes it while the init runs (it used to look for lost exits every 5 s,
    // faulting its code back into an idle shim).
    let before = sleeps_of_thread(shim, shim).expect("the shim's main thread");
    thread::sleep(secs(7));
    assert_eq!(sleeps_of_thread(shim, shim), Some(before), "the shim's loop woke while nothing happened");
    // ...and an exit still wakes it at once, not after a timer's period.
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(2));
}

/// How long each `runc exec` of [`runtime_calls_in_flight_hold_no_thread`] takes.
const SLOW_EXEC_SECS: u32 = 2;

fn runtime_calls_in_flight_hold_no_thread(daemon: Daemon) {
    let env = Env::new("slow_runtime", daemon);
    if !env.tether_only("runtime_calls_in_flight_hold_no_thread") {
        return;
    }
    // Four containers in one shim, whose runtime takes 2 s for every exec.
    let runc = slow_runc(&env.work().join("bin"), "slow-runc", "exec", SLOW_EXEC_SECS);
    let ids = ["s0", "s1", "s2", "s3"];
    for id in ids {
        env.run(id)
            .detach()
            .runtime_binary(&runc.display().to_string())
            .annotation("io.containerd.runc.v2.group", "slow")
            .run(&["sleep", "1000"])
            .expect_ok();
        env.ctr.wait_status(id, "RUNNING", secs(10));
    }
    let shim = env.shim_pid_of("s0");
    for id in ids {
        assert_eq!(env.shim_pid_of(id), shim, "{id} is served by the group's one shim");
    }

    // An exec of each at once: four runtime calls in flight (one container's lifecycle calls
    // are serialised, different containers' are not).
    let started = Instant::now();
    let execs: Vec<_> = ids
        .iter()
        .map(|id| {
            let (client, id) = (ShimClient::for_task(&env, id), id.to_string());
            thread::spawn(move || {
                client.call::<Empty>("Exec", &exec_request(&id, "slow", &["true"]))?;
                let start = api::StartRequest { id, exec_id: "slow".into(), ..Default::default() };
                client.call::<api::StartResponse>("Start", &start)
            })
        })
        .collect();
    let client = ShimClient::for_task(&env, "s0");
    thread::sleep(Duration::from_millis(500));
    let mut looked = 0;
    while started.elapsed() < Duration::from_millis(u64::from(SLOW_EXEC_SECS) * 1000 - 300) {
        assert_eq!(usage(shim).threads, 1, "the shim runs one thread while runtime calls are in flight");
        let asked = Instant::now();
        let state: api::StateResponse =
            client.call("State", &api::StateRequest { id: "s0".into(), ..Default::default() }).expect("State");
        let took = asked.elapsed();
        assert!(took < Duration::from_millis(500), "State took {took:?} while runtime calls were in flight");
        assert_eq!(state.status.enum_value(), Ok(api::Status::RUNNING));
        looked += 1;
        thread::sleep(Duration::from_millis(100));
    }
    assert!(looked > 0, "the calls were still in flight when looked at");
    for exec in execs {
        let pid = exec.join().unwrap().expect("the exec started").pid;
        assert!(pid > 0);
    }
    // Together, not one after another.
    let took = started.elapsed();
    assert!(took < secs(3 * SLOW_EXEC_SECS as u64), "four {SLOW_EXEC_SECS} s execs took {took:?}");
}
