//! The shim protocol seen from containerd: grouping several containers in one shim, cleanup
//! of a dead shim (`shim delete`), containerd restarts and long outages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether_protos::{
    api,
    protobuf::{well_known_types::empty::Empty, Message},
};
use tether_tests::containerd::mounted_below;
use tether_tests::env::{pid_alive, pid_exists, Env};
use tether_tests::runtime::{tether_ctl_binary, tether_shim_binary};
use tether_tests::shim::{exec_request, ShimClient};
use tether_tests::Case;
use tether_tests::{secs, wait_until};

tether_tests::for_each_executor!(
    grouped_containers_share_one_shim,
    dead_shim_is_cleaned_up,
    containerd_restart_keeps_tasks_and_exit_statuses,
    shim_logs_reach_containerd,
    exits_survive_a_long_containerd_outage,
    shim_delete_cleans_up_and_reports_the_journaled_exit,
);

fn address_of(env: &Env, id: &str) -> String {
    let path = env.containerd.bundle(&env.ns, id).join("address");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

fn grouped_containers_share_one_shim(case: Case) {
    let Some(env) = Env::for_case("grouping", case) else { return };
    let ctr = &env.ctr;
    let group = "io.containerd.runc.v2.group";
    let sandbox = "io.kubernetes.cri.sandbox-id";

    env.run("a1").detach().annotation(group, "g1").run(&["sleep", "1000"]).expect_ok();
    env.run("a2").detach().annotation(group, "g1").run(&["sleep", "1000"]).expect_ok();
    env.run("b1").detach().annotation(sandbox, "sb1").run(&["sleep", "1000"]).expect_ok();
    env.run("b2").detach().annotation(sandbox, "sb1").run(&["sleep", "1000"]).expect_ok();
    env.run("solo").detach().run(&["sleep", "1000"]).expect_ok();
    for id in ["a1", "a2", "b1", "b2", "solo"] {
        ctr.wait_status(id, "RUNNING", secs(10));
    }

    let a = address_of(&env, "a1");
    assert!(a.starts_with("unix://"), "address file holds a unix:// address: {a}");
    assert_eq!(address_of(&env, "a2"), a, "same group, same shim socket");
    let b = address_of(&env, "b1");
    assert_eq!(address_of(&env, "b2"), b, "same sandbox id, same shim socket");
    let solo = address_of(&env, "solo");
    assert!(a != b && a != solo && b != solo, "different groups, different shims: {a} {b} {solo}");

    assert_eq!(env.shim_pid_of("a1"), env.shim_pid_of("a2"), "one shim process for group g1");
    assert_eq!(env.shim_pid_of("b1"), env.shim_pid_of("b2"), "one shim process for sandbox sb1");
    assert_ne!(env.shim_pid_of("a1"), env.shim_pid_of("solo"));
    let shim_a = env.shim_pid_of("a1");

    // Deleting the first container of a group leaves the shim serving the second.
    ctr.kill("a1", "SIGKILL", false).expect_ok();
    ctr.wait_status("a1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("a1"), 137);
    assert_eq!(ctr.status("a2").as_deref(), Some("RUNNING"));
    env.exec("a2", "e1", &["echo", "still-served"]).expect_ok();
    assert!(pid_alive(shim_a), "the group's shim lives on");
    // containerd 2.x (bootstrap version 3) keeps one connection per shim and may call
    // Shutdown after each delete: with a task left, the shim serves on, on that connection.
    let shim = ShimClient::for_task(&env, "a2");
    shim.call::<Empty>("Shutdown", &api::ShutdownRequest { id: "a1".into(), ..Default::default() }).expect("Shutdown");
    let state: api::StateResponse =
        shim.call("State", &api::StateRequest { id: "a2".into(), ..Default::default() }).expect("State after Shutdown");
    assert_eq!(state.status.enum_value(), Ok(api::Status::RUNNING));
    assert!(pid_alive(shim_a), "Shutdown with a task left does not end the shim");

    // When the last one goes, the shim exits.
    ctr.kill("a2", "SIGKILL", false).expect_ok();
    ctr.wait_status("a2", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("a2"), 137);
    assert!(
        wait_until(secs(10), || (!pid_alive(shim_a)).then_some(())).is_some(),
        "the shim of group g1 exited after its last task was deleted"
    );
}

fn dead_shim_is_cleaned_up(case: Case) {
    let Some(env) = Env::for_case("dead_shim", case) else { return };
    let ctr = &env.ctr;
    let events = ctr.subscribe();
    // From an image, so that containerd hands the shim an overlay to mount as the rootfs.
    let image = env.image();
    env.run("k1").detach().image(&image).run(&["sleep", "1000"]).expect_ok();
    let task = ctr.wait_status("k1", "RUNNING", secs(10));
    ctr.run(&ctr.exec_args(&["--detach"], "k1", "x1", &["sleep", "1000"])).expect_ok();
    let exec = ctr.ps("k1").into_iter().map(|r| r.pid).find(|p| *p != task.pid).expect("the exec's pid");
    let shim = env.shim_pid_of("k1");
    let bundle = env.containerd.bundle(&env.ns, "k1");
    assert!(bundle.join("config.json").exists());
    assert!(!mounted_below(&bundle).is_empty(), "the shim mounted the rootfs in the bundle");
    let state = env.runtime_state("k1");
    assert!(state.is_dir(), "the runtime keeps state at {}", state.display());
    let socket = PathBuf::from(address_of(&env, "k1").trim_start_matches("unix://"));

    // SAFETY: a plain kill of the shim this test's containerd started.
    unsafe {
        libc::kill(shim as libc::pid_t, libc::SIGKILL);
    }
    // containerd notices, runs `<shim> delete` in the bundle: the container is force-deleted
    // and the task reported as exited with 137.
    ctr.wait_gone("k1", secs(20));
    for (what, pid) in [("init", task.pid), ("exec", exec)] {
        assert!(
            wait_until(secs(10), || (!pid_exists(pid)).then_some(())).is_some(),
            "the container's {what} {pid} was killed by the cleanup"
        );
    }
    let seen = events.wait_for("k1", secs(15), |evs| evs.iter().any(|e| e.topic == "/tasks/delete"));
    let exit = seen.iter().find(|e| e.topic == "/tasks/exit").expect("an exit event");
    assert_eq!(exit.exit_status(), 137, "{:?}", exit.payload);
    assert_eq!(exit.payload["pid"].as_u64(), Some(task.pid as u64));
    assert!(!bundle.exists(), "bundle {} removed", bundle.display());
    assert_eq!(mounted_below(&bundle), Vec::<PathBuf>::new(), "nothing left mounted in the bundle");
    assert!(!state.exists(), "runtime state {} removed", state.display());
    if env.runtime.is_tether() {
        assert!(!socket.exists(), "the dead shim's socket {} removed", socket.display());
    } else if socket.starts_with("/run/containerd/s/") {
        // The Go shim's delete leaves it: tidy up (only that path).
        let _ = fs::remove_file(&socket);
    }
    ctr.rm_container("k1").expect_ok();

    // The namespace works as before.
    env.run("k2").rm().run(&["echo", "after"]).expect_ok();
}

fn containerd_restart_keeps_tasks_and_exit_statuses(case: Case) {
    let Some(mut env) = Env::for_case("containerd_restart", case) else { return };
    let ctr = env.ctr.clone();
    env.run("r1").detach().run(&["sleep", "1000"]).expect_ok();
    // r2 exits with 9 when the test creates /tmp/go in the (shared, host-visible) rootfs.
    env.run("r2").detach().run(&["sh", "-c", "while [ ! -e /tmp/go-r2 ]; do sleep 0.05; done; exit 9"]).expect_ok();
    env.run("r3").detach().run(&["sleep", "1000"]).expect_ok();
    let r1 = ctr.wait_status("r1", "RUNNING", secs(10));
    let r2 = ctr.wait_status("r2", "RUNNING", secs(10));
    ctr.wait_status("r3", "RUNNING", secs(10));
    ctr.run(&["task", "pause", "r3"]).expect_ok();
    ctr.wait_status("r3", "PAUSED", secs(10));
    let shims_before: Vec<u32> = env.containerd.shim_processes().iter().map(|(p, _)| *p).collect();

    env.containerd.kill9();
    assert!(pid_alive(r1.pid), "tasks survive containerd");
    for pid in &shims_before {
        assert!(pid_alive(*pid), "shim {pid} survives containerd");
    }
    // r2 exits while containerd is down.
    fs::write(env.rootfs.join("tmp/go-r2"), "").unwrap();
    assert!(wait_until(secs(10), || (!pid_alive(r2.pid)).then_some(())).is_some(), "r2 exited during the downtime");

    let log_before = env.containerd.log().len();
    env.containerd.restart();
    // containerd reconnects to the shims it finds in its state dir.
    assert_eq!(ctr.wait_status("r1", "RUNNING", secs(15)).pid, r1.pid);
    // containerd 1.x lists r2 as stopped, with its exit status; 2.x deletes a task whose
    // shim reports no process left (it takes it for a shim leaked by a crash), and learns the
    // exit from the /tasks/exit event alone.
    let lists_exited = !env.containerd.daemon().is_v2();
    if lists_exited {
        assert_eq!(ctr.wait_status("r2", "STOPPED", secs(15)).pid, r2.pid);
    } else {
        ctr.wait_gone("r2", secs(15));
    }
    ctr.wait_status("r3", "PAUSED", secs(15));
    // The exit event the shim could not publish during the downtime arrives afterwards
    // (containerd 1.x logs each event a shim forwards; 2.x does not).
    let forwarded = format!("ns={} topic=/tasks/exit", env.ns);
    assert!(
        !lists_exited
            || wait_until(secs(20), || env.containerd.log()[log_before..].contains(&forwarded).then_some(())).is_some(),
        "r2's /tasks/exit was forwarded after the restart (looked for {forwarded:?} in the log)"
    );
    let out = env.exec("r1", "after-restart", &["echo", "exec-ok"]);
    out.expect_ok();
    assert_eq!(out.stdout, "exec-ok\n");
    ctr.run(&["task", "resume", "r3"]).expect_ok();
    ctr.wait_status("r3", "RUNNING", secs(10));
    if lists_exited {
        assert_eq!(ctr.rm_task("r2"), 9, "the exit status from the downtime is kept");
    }

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

/// Longer than containerd's own Go shim retries an event before dropping it (its publisher
/// gives up after attempts 1, 2, ... 6 s apart, about 21 s).
const OUTAGE: Duration = Duration::from_secs(25);
/// More events than tether keeps in memory (256): the rest wait in its spill file.
const OVERFLOW: usize = 300;
/// The shim's exit journal in a bundle: one JSON object per exit not yet delivered.
const JOURNAL: &str = "exit-journal";

/// The (id, exit code) pairs in the exit journal of `bundle`.
fn journal(bundle: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(bundle.join(JOURNAL))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| (e["id"].as_str().unwrap_or_default().to_owned(), e["code"].as_u64().unwrap_or(999)))
        .collect()
}

/// How many events the shim serving the task of `bundle` has not delivered yet (its debug
/// dump, through tether-ctl: JSON leaves an empty list out).
fn pending_events(bundle: &Path) -> usize {
    let mut cmd = Command::new(tether_ctl_binary());
    cmd.arg("--bundle").arg(bundle).args(["--json", "dump"]);
    let out = tether_tests::process::run(cmd, None, secs(30));
    let dump: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(dump["containers"].is_array(), "not a dump: {dump}");
    dump["pendingEvents"].as_array().map_or(0, Vec::len)
}

/// A shell loop that exits with `code` once `file` exists.
fn exit_when(file: &str, code: u32) -> String {
    format!("while [ ! -e {file} ]; do sleep 0.05; done; exit {code}")
}

fn exits_survive_a_long_containerd_outage(case: Case) {
    let Some(mut env) = Env::for_case("long_outage", case) else { return };
    if !env.tether_only("exits_survive_a_long_containerd_outage") {
        return;
    }
    let ctr = env.ctr.clone();
    // One shim for all: one event queue to overflow.
    let group = "io.containerd.runc.v2.group";
    env.run("keeper").detach().annotation(group, "outage").run(&["sleep", "1000"]).expect_ok();
    let tasks: Vec<(String, u32)> = (0..10).map(|i| (format!("x{i}"), 3 + 11 * i)).collect();
    for (id, code) in &tasks {
        env.run(id)
            .detach()
            .annotation(group, "outage")
            .run(&["sh", "-c", &exit_when("/tmp/go-outage", *code)])
            .expect_ok();
    }
    let pids: Vec<u32> = tasks.iter().map(|(id, _)| ctr.wait_status(id, "RUNNING", secs(10)).pid).collect();
    let shim = ShimClient::for_task(&env, "keeper");
    let shim_pid = env.shim_pid_of("keeper");

    env.containerd.kill9();
    let down = Instant::now();
    // Events containerd cannot take now, past what the shim keeps in memory: an exec
    // registered (/tasks/exec-added) and deleted again, many times.
    for i in 0..OVERFLOW {
        let exec_id = format!("o{i}");
        shim.call::<Empty>("Exec", &exec_request("keeper", &exec_id, &["true"])).unwrap();
        let delete = api::DeleteRequest { id: "keeper".into(), exec_id, ..Default::default() };
        shim.call::<api::DeleteResponse>("Delete", &delete).unwrap();
    }
    fs::write(env.rootfs.join("tmp/go-outage"), "").unwrap();
    for pid in &pids {
        assert!(wait_until(secs(10), || (!pid_alive(*pid)).then_some(())).is_some(), "pid {pid} exited");
    }
    for (id, code) in &tasks {
        let bundle = env.containerd.bundle(&env.ns, id);
        let entry = (id.clone(), *code as u64);
        assert!(
            wait_until(secs(10), || journal(&bundle).contains(&entry).then_some(())).is_some(),
            "{id}'s exit {code} is journaled in its bundle: {:?}",
            journal(&bundle)
        );
        // The shim answers from its table all along.
        let state: api::StateResponse =
            shim.call("State", &api::StateRequest { id: id.clone(), ..Default::default() }).unwrap();
        assert_eq!((state.status.enum_value(), state.exit_status), (Ok(api::Status::STOPPED), *code));
        assert_eq!(shim.wait(id).unwrap(), *code);
    }
    let keeper = env.containerd.bundle(&env.ns, "keeper");
    assert!(pending_events(&keeper) > OVERFLOW, "the shim holds what containerd could not take");
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));

    let log_before = env.containerd.log().len();
    env.containerd.restart();
    let outage = down.elapsed();
    // As in containerd_restart_keeps_tasks_and_exit_statuses: 1.x lists the exited tasks,
    // 2.x deletes them (the exits still reach it as events, checked below).
    let lists_exited = !env.containerd.daemon().is_v2();
    for (id, _) in &tasks {
        if lists_exited {
            ctr.wait_status(id, "STOPPED", secs(15));
        } else {
            ctr.wait_gone(id, secs(15));
        }
    }
    // An exit leaves the journal only once containerd has accepted its /tasks/exit event.
    for (id, _) in &tasks {
        let bundle = env.containerd.bundle(&env.ns, id);
        assert!(
            wait_until(secs(60), || (!bundle.join(JOURNAL).exists()).then_some(())).is_some(),
            "{id}'s exit was delivered: journal left {:?}",
            journal(&bundle)
        );
    }
    // Every event the shim queued (in memory and spilled) has been accepted by containerd:
    // its queue, as its debug dump shows it, is empty.
    assert!(
        wait_until(secs(60), || (pending_events(&keeper) == 0).then_some(())).is_some(),
        "the shim still holds {} undelivered events",
        pending_events(&keeper)
    );
    let drained = down.elapsed() - outage;
    let forwarded = |topic: &str| {
        let needle = format!("ns={} topic={topic} ", env.ns);
        env.containerd.log()[log_before..].matches(&needle).count()
    };
    let (exits, added) = (forwarded("/tasks/exit"), forwarded("/tasks/exec-added"));
    println!(
        "outage {outage:?}: after the restart containerd got {exits} exit and {added} exec-added events, \
         the last exit {drained:?} after the restart"
    );
    // containerd 2.x does not log the events it is forwarded.
    if lists_exited {
        assert!(exits >= tasks.len(), "every exit event was forwarded after the restart ({exits})");
        assert!(added >= OVERFLOW, "no event was dropped ({added} of {OVERFLOW} exec-added)");
    }
    // State through containerd, Wait straight to the shim, Delete's answer: each code as it was.
    for (id, code) in tasks.iter().filter(|_| lists_exited) {
        assert_eq!(shim.wait(id).unwrap(), *code);
        assert_eq!(ctr.rm_task(id), *code as i32, "{id}");
    }
    // containerd (2.x after each of those deletes) calls Shutdown: a shim with a task left
    // serves on.
    assert!(pid_alive(shim_pid), "the shim still serves its keeper");
}

/// containerd runs `<shim> delete` for each task of a shim that died; here the test runs it
/// itself, while containerd is down, to see what the command alone reports and leaves behind.
fn shim_delete_cleans_up_and_reports_the_journaled_exit(case: Case) {
    let Some(mut env) = Env::for_case("shim_delete", case) else { return };
    if !env.tether_only("shim_delete_cleans_up_and_reports_the_journaled_exit") {
        return;
    }
    let image = env.image();
    let group = "io.containerd.runc.v2.group";
    env.run("d1").detach().image(&image).annotation(group, "d").run(&["sleep", "1000"]).expect_ok();
    env.run("d2")
        .detach()
        .image(&image)
        .annotation(group, "d")
        .run(&["sh", "-c", &exit_when("/tmp/go", 7)])
        .expect_ok();
    let d1 = env.ctr.wait_status("d1", "RUNNING", secs(10));
    let d2 = env.ctr.wait_status("d2", "RUNNING", secs(10));
    let shim = env.shim_pid_of("d1");
    let socket = PathBuf::from(address_of(&env, "d1").trim_start_matches("unix://"));

    // d2 exits while containerd is away; then the shim dies before it could tell.
    env.containerd.kill9();
    let b2 = env.containerd.bundle(&env.ns, "d2");
    fs::write(b2.join("rootfs/tmp/go"), "").unwrap();
    let entry = ("d2".to_owned(), 7);
    assert!(
        wait_until(secs(10), || journal(&b2).contains(&entry).then_some(())).is_some(),
        "d2's exit is journaled: {:?}",
        journal(&b2)
    );
    // SAFETY: a plain kill of the shim this test's containerd started.
    unsafe {
        libc::kill(shim as libc::pid_t, libc::SIGKILL);
    }
    assert!(wait_until(secs(10), || (!pid_exists(shim)).then_some(())).is_some());

    for (id, init, code) in [("d1", d1.pid, 137), ("d2", d2.pid, 7)] {
        let bundle = env.containerd.bundle(&env.ns, id);
        // As containerd runs it: in the bundle, with the shim's usual flags.
        let out = Command::new(tether_shim_binary())
            .current_dir(&bundle)
            .args(["-namespace", &env.ns, "-id", id, "-bundle"])
            .arg(&bundle)
            .arg("-address")
            .arg(env.containerd.address())
            .args(["-publish-binary", "/usr/bin/containerd", "delete"])
            .output()
            .expect("running the shim's delete");
        assert!(out.status.success(), "{id}: delete failed: {}", String::from_utf8_lossy(&out.stderr));
        let resp = api::DeleteResponse::parse_from_bytes(&out.stdout).expect("a DeleteResponse on stdout");
        assert_eq!((resp.pid, resp.exit_status), (init, code), "{id}'s DeleteResponse");
        assert!(wait_until(secs(10), || (!pid_exists(init)).then_some(())).is_some(), "{id}'s init {init} is gone");
        assert_eq!(mounted_below(&bundle), Vec::<PathBuf>::new(), "{id}'s rootfs is unmounted");
        let state = env.runtime_state(id);
        assert!(!state.exists(), "{id}'s runtime state {} is removed", state.display());
    }
    assert!(!socket.exists(), "the dead shim's socket {} is removed", socket.display());

    // containerd finds the dead shim when it comes back, runs delete itself, and is done.
    env.containerd.restart();
    for id in ["d1", "d2"] {
        env.ctr.wait_gone(id, secs(20));
    }
}

fn shim_logs_reach_containerd(case: Case) {
    let Some(env) = Env::for_case("shim_logs", case) else { return };
    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let shim = env.shim_pid_of("c1");
    // containerd starts shims with -debug when its own level is debug, and copies what they
    // write to the bundle's `log` FIFO into its log.
    let argv =
        env.containerd.shim_processes().into_iter().find(|(p, _)| *p == shim).map(|(_, a)| a).unwrap_or_default();
    assert!(argv.iter().any(|a| a == "-debug"), "shim started with -debug: {argv:?}");
    let needle = format!("pid={shim}");
    assert!(
        wait_until(secs(10), || env.containerd.log().contains(&needle).then_some(())).is_some(),
        "containerd's log has a line from the shim ({needle})"
    );
}
