//! The shim protocol seen from containerd: grouping several containers in one shim, cleanup
//! of a dead shim (`shim delete`), and containerd restarts.

use std::fs;

use tether_tests::env::{pid_alive, pid_exists, Env};
use tether_tests::{secs, wait_until};
use tether_tests::Executor;

tether_tests::for_each_executor!(
    grouped_containers_share_one_shim,
    dead_shim_is_cleaned_up,
    containerd_restart_keeps_tasks_and_exit_statuses,
    shim_logs_reach_containerd,
);

fn address_of(env: &Env, id: &str) -> String {
    let path = env.containerd.bundle(&env.ns, id).join("address");
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn grouped_containers_share_one_shim(executor: Executor) {
    let Some(env) = Env::for_executor("grouping", executor) else { return };
    let ctr = &env.ctr;
    let group = "io.containerd.runc.v2.group";
    let sandbox = "io.kubernetes.cri.sandbox-id";

    env.run("a1")
        .detach()
        .annotation(group, "g1")
        .run(&["sleep", "1000"])
        .expect_ok();
    env.run("a2")
        .detach()
        .annotation(group, "g1")
        .run(&["sleep", "1000"])
        .expect_ok();
    env.run("b1")
        .detach()
        .annotation(sandbox, "sb1")
        .run(&["sleep", "1000"])
        .expect_ok();
    env.run("b2")
        .detach()
        .annotation(sandbox, "sb1")
        .run(&["sleep", "1000"])
        .expect_ok();
    env.run("solo").detach().run(&["sleep", "1000"]).expect_ok();
    for id in ["a1", "a2", "b1", "b2", "solo"] {
        ctr.wait_status(id, "RUNNING", secs(10));
    }

    let a = address_of(&env, "a1");
    assert!(
        a.starts_with("unix://"),
        "address file holds a unix:// address: {a}"
    );
    assert_eq!(address_of(&env, "a2"), a, "same group, same shim socket");
    let b = address_of(&env, "b1");
    assert_eq!(
        address_of(&env, "b2"),
        b,
        "same sandbox id, same shim socket"
    );
    let solo = address_of(&env, "solo");
    assert!(
        a != b && a != solo && b != solo,
        "different groups, different shims: {a} {b} {solo}"
    );

    assert_eq!(
        env.shim_pid_of("a1"),
        env.shim_pid_of("a2"),
        "one shim process for group g1"
    );
    assert_eq!(
        env.shim_pid_of("b1"),
        env.shim_pid_of("b2"),
        "one shim process for sandbox sb1"
    );
    assert_ne!(env.shim_pid_of("a1"), env.shim_pid_of("solo"));
    let shim_a = env.shim_pid_of("a1");

    // Deleting the first container of a group leaves the shim serving the second.
    ctr.kill("a1", "SIGKILL", false).expect_ok();
    ctr.wait_status("a1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("a1"), 137);
    assert_eq!(ctr.status("a2").as_deref(), Some("RUNNING"));
    env.exec("a2", "e1", &["echo", "still-served"]).expect_ok();
    assert!(pid_alive(shim_a), "the group's shim lives on");

    // When the last one goes, the shim exits.
    ctr.kill("a2", "SIGKILL", false).expect_ok();
    ctr.wait_status("a2", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("a2"), 137);
    assert!(
        wait_until(secs(10), || (!pid_alive(shim_a)).then_some(())).is_some(),
        "the shim of group g1 exited after its last task was deleted"
    );
}

fn dead_shim_is_cleaned_up(executor: Executor) {
    let Some(env) = Env::for_executor("dead_shim", executor) else { return };
    let ctr = &env.ctr;
    let events = ctr.subscribe();
    env.run("k1").detach().run(&["sleep", "1000"]).expect_ok();
    let task = ctr.wait_status("k1", "RUNNING", secs(10));
    let shim = env.shim_pid_of("k1");
    let bundle = env.containerd.bundle(&env.ns, "k1");
    assert!(bundle.join("config.json").exists());
    let socket = address_of(&env, "k1")
        .trim_start_matches("unix://")
        .to_owned();

    // SAFETY: a plain kill of the shim this test's containerd started.
    unsafe {
        libc::kill(shim as libc::pid_t, libc::SIGKILL);
    }
    // containerd notices, runs `<shim> delete` in the bundle: the container is force-deleted
    // and the task reported as exited with 137.
    ctr.wait_gone("k1", secs(20));
    assert!(
        wait_until(secs(10), || (!pid_exists(task.pid)).then_some(())).is_some(),
        "the container's init {} was killed by the cleanup",
        task.pid
    );
    let seen = events.wait_for("k1", secs(15), |evs| {
        evs.iter().any(|e| e.topic == "/tasks/delete")
    });
    let exit = seen
        .iter()
        .find(|e| e.topic == "/tasks/exit")
        .expect("an exit event");
    assert_eq!(exit.exit_status(), 137, "{:?}", exit.payload);
    assert_eq!(exit.payload["pid"].as_u64(), Some(task.pid as u64));
    assert!(!bundle.exists(), "bundle {} removed", bundle.display());
    ctr.rm_container("k1").expect_ok();

    // The namespace works as before.
    env.run("k2").rm().run(&["echo", "after"]).expect_ok();

    // A shim killed with SIGKILL cannot remove its socket: tidy it up (only that path).
    if socket.starts_with("/run/containerd/s/") {
        let _ = fs::remove_file(&socket);
    }
}

fn containerd_restart_keeps_tasks_and_exit_statuses(executor: Executor) {
    let Some(mut env) = Env::for_executor("containerd_restart", executor) else { return };
    let ctr = env.ctr.clone();
    env.run("r1").detach().run(&["sleep", "1000"]).expect_ok();
    // r2 exits with 9 when the test creates /tmp/go in the (shared, host-visible) rootfs.
    env.run("r2")
        .detach()
        .run(&[
            "sh",
            "-c",
            "while [ ! -e /tmp/go-r2 ]; do sleep 0.05; done; exit 9",
        ])
        .expect_ok();
    env.run("r3").detach().run(&["sleep", "1000"]).expect_ok();
    let r1 = ctr.wait_status("r1", "RUNNING", secs(10));
    let r2 = ctr.wait_status("r2", "RUNNING", secs(10));
    ctr.wait_status("r3", "RUNNING", secs(10));
    ctr.run(&["task", "pause", "r3"]).expect_ok();
    ctr.wait_status("r3", "PAUSED", secs(10));
    let shims_before: Vec<u32> = env
        .containerd
        .shim_processes()
        .iter()
        .map(|(p, _)| *p)
        .collect();

    env.containerd.kill9();
    assert!(pid_alive(r1.pid), "tasks survive containerd");
    for pid in &shims_before {
        assert!(pid_alive(*pid), "shim {pid} survives containerd");
    }
    // r2 exits while containerd is down.
    fs::write(env.rootfs.join("tmp/go-r2"), "").unwrap();
    assert!(
        wait_until(secs(10), || (!pid_alive(r2.pid)).then_some(())).is_some(),
        "r2 exited during the downtime"
    );

    let log_before = env.containerd.log().len();
    env.containerd.restart();
    // containerd reconnects to the shims it finds in its state dir.
    assert_eq!(ctr.wait_status("r1", "RUNNING", secs(15)).pid, r1.pid);
    assert_eq!(ctr.wait_status("r2", "STOPPED", secs(15)).pid, r2.pid);
    ctr.wait_status("r3", "PAUSED", secs(15));
    // The exit event the shim could not publish during the downtime arrives afterwards
    // (containerd logs each event a shim forwards).
    let forwarded = format!("ns={} topic=/tasks/exit", env.ns);
    assert!(
        wait_until(secs(20), || env.containerd.log()[log_before..]
            .contains(&forwarded)
            .then_some(()))
        .is_some(),
        "r2's /tasks/exit was forwarded after the restart (looked for {forwarded:?} in the log)"
    );
    let out = env.exec("r1", "after-restart", &["echo", "exec-ok"]);
    out.expect_ok();
    assert_eq!(out.stdout, "exec-ok\n");
    ctr.run(&["task", "resume", "r3"]).expect_ok();
    ctr.wait_status("r3", "RUNNING", secs(10));
    assert_eq!(
        ctr.rm_task("r2"),
        9,
        "the exit status from the downtime is kept"
    );

    ctr.kill("r1", "SIGKILL", false).expect_ok();
    ctr.wait_status("r1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("r1"), 137);
    ctr.kill("r3", "SIGKILL", false).expect_ok();
    ctr.wait_status("r3", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("r3"), 137);
    for pid in shims_before {
        assert!(
            wait_until(secs(10), || (!pid_alive(pid)).then_some(())).is_some(),
            "shim {pid} exited after its task was deleted"
        );
    }
}

fn shim_logs_reach_containerd(executor: Executor) {
    let Some(env) = Env::for_executor("shim_logs", executor) else { return };
    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let shim = env.shim_pid_of("c1");
    // containerd starts shims with -debug when its own level is debug, and copies what they
    // write to the bundle's `log` FIFO into its log.
    let argv = env
        .containerd
        .shim_processes()
        .into_iter()
        .find(|(p, _)| *p == shim)
        .map(|(_, a)| a)
        .unwrap_or_default();
    assert!(
        argv.iter().any(|a| a == "-debug"),
        "shim started with -debug: {argv:?}"
    );
    let needle = format!("pid={shim}");
    assert!(
        wait_until(secs(10), || env
            .containerd
            .log()
            .contains(&needle)
            .then_some(()))
        .is_some(),
        "containerd's log has a line from the shim ({needle})"
    );
}
