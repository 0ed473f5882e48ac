//! `tether-ctl` against real shims: one serving containerd's task (found by its bundle or by
//! namespace and id), and shims it starts itself for a bundle with no containerd at all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tether_tests::env::{Env, TetherConfig};
use tether_tests::process::{run, run_on_tty, Output, Proc};
use tether_tests::runtime::tether_ctl_binary;
use tether_tests::{secs, wait_until};
use tether_tests::{Case, Daemon};

tether_tests::for_each_executor!(
    ctl_inspects_and_drives_a_shim_under_containerd,
    ctl_runs_a_bundle_without_containerd,
    ctl_attaches_a_terminal,
    hooks_run_after_start_and_at_delete,
    dump_names_who_holds_an_exited_process_output,
    sigterm_ends_the_shim_gracefully,
);

const LOOP_UNTIL_TERM: &str = "trap 'exit 7' TERM; while :; do sleep 0.1; done";

/// `tether-ctl ARGS...` with `input` on stdin.
fn ctl<S: AsRef<std::ffi::OsStr>>(args: &[S], input: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(tether_ctl_binary());
    cmd.args(args);
    run(cmd, input, secs(60))
}

fn ctl_inspects_and_drives_a_shim_under_containerd(case: Case) {
    let Some(env) = Env::for_case("ctl_containerd", case) else { return };
    if !env.tether_only("ctl_inspects_and_drives_a_shim_under_containerd") {
        return;
    }
    env.run("c1").detach().run(&["sh", "-c", LOOP_UNTIL_TERM]).expect_ok();
    let task = env.ctr.wait_status("c1", "RUNNING", secs(10));
    let bundle = env.containerd.bundle(&env.ns, "c1");
    let b = bundle.display().to_string();
    // containerd's task state dir, as `-n NS --state-dir DIR ID` finds the shim.
    let state_dir = bundle.parent().and_then(Path::parent).unwrap().display().to_string();
    let by_id = |args: &[&str]| -> Output {
        let mut all = vec!["-n", &env.ns, "--state-dir", &state_dir];
        all.extend_from_slice(args);
        ctl(&all, None)
    };

    // state and pids, by namespace and id, for people and as JSON.
    let out = by_id(&["state", "c1"]);
    out.expect_ok();
    assert!(out.stdout.contains("RUNNING") && out.stdout.contains(&format!("pid {}", task.pid)), "{out}");
    let out = by_id(&["--json", "state", "c1"]);
    let state: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(state["status"], "RUNNING", "{state}");
    assert_eq!(state["pid"], task.pid, "{state}");
    let out = ctl(&["--bundle", &b, "pids", "c1"], None);
    assert!(out.stdout_lines().contains(&task.pid.to_string()), "{out}");

    // stats: the cgroup's memory figures.
    let out = ctl(&["--bundle", &b, "stats", "c1"], None);
    assert!(out.ok() && out.stdout.contains("memory"), "{out}");
    let out = ctl(&["--bundle", &b, "--json", "stats", "c1"], None);
    let stats: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(stats.get("memory").is_some(), "{stats}");

    // Follow the events while an exec runs with our stdio.
    let mut follower = Proc::spawn(
        {
            let mut cmd = Command::new(tether_ctl_binary());
            cmd.args(["--bundle", &b, "events"]);
            cmd
        },
        false,
    );
    let out = ctl(
        &["--bundle", &b, "exec", "c1", "--exec-id", "x1", "--", "sh", "-c", "read l; echo got $l; echo e >&2; exit 3"],
        Some(b"line\n"),
    );
    out.expect_code(3);
    assert_eq!(out.stdout, "got line\n", "{out}");
    assert!(out.stderr.contains('e'), "{out}");
    for topic in ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"] {
        assert!(follower.wait_for_stdout(topic, secs(10)), "events never showed {topic}: {}", follower.stdout_so_far());
    }
    assert!(follower.stdout_so_far().contains("exec_id: \"x1\""), "{}", follower.stdout_so_far());
    drop(follower);

    // dump: the process table, stdio with bytes copied, the queue, the fds.
    let out = ctl(&["--bundle", &b, "dump"], None);
    out.expect_ok();
    for needle in [
        "container c1",
        &format!("init: pid {}, running", task.pid),
        "executor",
        "events not yet delivered: 0",
        "open fds:",
    ] {
        assert!(out.stdout.contains(needle), "{needle:?} in dump:\n{out}");
    }
    let out = ctl(&["--bundle", &b, "--json", "dump"], None);
    let dump: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(dump["containers"][0]["id"], "c1", "{dump}");
    let expected_executor = case.executor.shown_as();
    assert_eq!(dump["containers"][0]["executor"], expected_executor, "{dump}");

    // SIGUSR1: the same dump in the shim's log (which containerd copies into its own).
    let shim = env.shim_pid_of("c1");
    // SAFETY: kill on the pid of a shim this test's containerd started.
    unsafe { libc::kill(shim as i32, libc::SIGUSR1) };
    assert!(
        wait_until(secs(10), || env.containerd.log().contains("dump: container c1").then_some(())).is_some(),
        "SIGUSR1 wrote no dump to the log"
    );

    // kill, then wait: the trap's status.
    by_id(&["kill", "c1", "-s", "TERM"]).expect_ok();
    let out = by_id(&["wait", "c1"]);
    out.expect_code(7);
    assert!(out.stdout.contains("exit status 7"), "{out}");
    assert_eq!(env.ctr.rm_task("c1"), 7);
}

/// Deletes what a standalone shim still serves when a test ends early, and the namespace's
/// empty runtime root and cgroup parents, which no containerd teardown knows of.
struct Standalone<'a> {
    namespace: &'a str,
    bundles: Vec<(&'a str, PathBuf)>,
}

impl Drop for Standalone<'_> {
    fn drop(&mut self) {
        self.delete_tasks();
        tether_tests::containerd::remove_empty_cgroups(self.namespace);
        let _ = fs::remove_dir(Path::new("/run/tether").join(self.namespace));
    }
}

impl Standalone<'_> {
    fn delete_tasks(&self) {
        for (id, bundle) in &self.bundles {
            let b = bundle.display().to_string();
            if fs::read_to_string(bundle.join("address")).is_ok() {
                let _ = ctl(&["--bundle", &b, "kill", id, "--all", "-s", "KILL"], None);
                let _ = ctl(&["--bundle", &b, "wait", id], None);
                let _ = ctl(&["--bundle", &b, "delete", id], None);
            }
        }
    }
}

/// A bundle `name` for `sh -c script`, on the test's (read-only) busybox rootfs.
fn standalone_bundle(env: &Env, name: &str, script: &str) -> PathBuf {
    bundle_with(env, name, script, false)
}

/// [`standalone_bundle`], with a terminal when `terminal`.
fn bundle_with(env: &Env, name: &str, script: &str, terminal: bool) -> PathBuf {
    let dir = env.work().join(name);
    fs::create_dir_all(&dir).unwrap();
    let spec = Command::new("runc").arg("spec").current_dir(&dir).output().expect("runc spec");
    assert!(spec.status.success(), "runc spec: {spec:?}");
    let file = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    config["root"] = serde_json::json!({ "path": env.rootfs, "readonly": true });
    config["process"]["terminal"] = terminal.into();
    config["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    config["process"]["env"] = serde_json::json!(["PATH=/bin:/sbin:/usr/bin"]);
    config["linux"]["cgroupsPath"] = format!("/{}/{name}", env.ns).into();
    fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
    dir
}

/// The `--config` option that runs a standalone bundle on the test's executor.
fn config_args(env: &Env) -> Vec<String> {
    env.default_config.iter().flat_map(|p| ["--config".to_string(), p.display().to_string()]).collect()
}

fn ctl_attaches_a_terminal(case: Case) {
    let Some(env) = Env::for_case("ctl_tty", case) else { return };
    if !env.tether_only("ctl_attaches_a_terminal") {
        return;
    }
    // `run` of a terminal bundle: the container's stdin and stdout are a terminal of our size.
    let probe = "[ -t 0 ] && [ -t 1 ] && echo tty-yes; for i in $(seq 1 100); do s=$(stty size); [ \"$s\" = \"33 111\" ] && break; sleep 0.05; done; echo \"size=$s\"; exit 5";
    let bundle = bundle_with(&env, "tty1", probe, true);
    let _cleanup = Standalone { namespace: &env.ns, bundles: vec![("tty1", bundle.clone())] };
    let mut argv = vec![tether_ctl_binary().display().to_string(), "run".into(), "--namespace".into(), env.ns.clone()];
    argv.extend(config_args(&env));
    argv.extend(["--id".into(), "tty1".into(), bundle.display().to_string()]);
    let out = run_on_tty(&argv, 111, 33, secs(60));
    out.expect_code(5);
    assert!(out.stdout.contains("tty-yes") && out.stdout.contains("size=33 111"), "{out}");

    // `exec -t` into a container under containerd.
    env.run("c1").detach().run(&["sh", "-c", LOOP_UNTIL_TERM]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let b = env.containerd.bundle(&env.ns, "c1").display().to_string();
    let exec: Vec<String> = [
        tether_ctl_binary().display().to_string(),
        "--bundle".into(),
        b,
        "exec".into(),
        "-t".into(),
        "c1".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        probe.into(),
    ]
    .to_vec();
    let out = run_on_tty(&exec, 111, 33, secs(60));
    out.expect_code(5);
    assert!(out.stdout.contains("tty-yes") && out.stdout.contains("size=33 111"), "{out}");
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}

fn ctl_runs_a_bundle_without_containerd(case: Case) {
    let Some(env) = Env::for_case("ctl_standalone", case) else { return };
    if !env.tether_only("ctl_runs_a_bundle_without_containerd") {
        return;
    }
    let run_args = |id: &'static str, extra: &[&'static str], bundle: &Path| -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--namespace".into(), env.ns.clone(), "--id".into(), id.into()];
        a.extend(config_args(&env));
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(bundle.display().to_string());
        a
    };

    // Output, input, exit status, and the events it printed.
    let b1 = standalone_bundle(&env, "sa1", "echo out; echo err >&2; read x; echo got $x; exit 7");
    let b2 = standalone_bundle(&env, "sa2", LOOP_UNTIL_TERM);
    let b3 = standalone_bundle(&env, "sa3", "echo kept; exit 4");
    let b4 = standalone_bundle(&env, "sa4", LOOP_UNTIL_TERM);
    let _cleanup = Standalone {
        namespace: &env.ns,
        bundles: vec![("sa1", b1.clone()), ("sa2", b2.clone()), ("sa3", b3.clone()), ("sa4", b4.clone())],
    };
    let out = ctl(&run_args("sa1", &["--events"], &b1), Some(b"hello\n"));
    out.expect_code(7);
    assert_eq!(out.stdout, "out\ngot hello\n", "{out}");
    assert!(out.stderr.contains("err"), "{out}");
    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit"] {
        assert!(out.stderr.contains(topic), "{topic} printed: {out}");
    }
    assert!(fs::read_to_string(b1.join("log")).unwrap().contains("serving"), "the shim logged to the bundle's log");

    // Our signals reach the container.
    let mut running = Proc::spawn(
        {
            let mut cmd = Command::new(tether_ctl_binary());
            cmd.args(run_args("sa2", &[], &b2));
            cmd
        },
        true,
    );
    let b2s = b2.display().to_string();
    wait_until(secs(20), || ctl(&["--bundle", &b2s, "state", "sa2"], None).stdout.contains("RUNNING").then_some(()))
        .expect("sa2 runs");
    running.signal(libc::SIGTERM);
    let out = running.finish(secs(20));
    out.expect_code(7);

    // --keep: the shim serves on after the exit, for state and dump, until deleted.
    ctl(&run_args("sa3", &["--keep"], &b3), None).expect_code(4);
    let b3s = b3.display().to_string();
    let out = ctl(&["--bundle", &b3s, "state", "sa3"], None);
    assert!(out.stdout.contains("STOPPED") && out.stdout.contains("exit status 4"), "{out}");
    let out = ctl(&["--bundle", &b3s, "dump"], None);
    assert!(out.stdout.contains("init: pid") && out.stdout.contains("stopped, exit status 4"), "{out}");
    assert!(out.stdout.contains("(5 bytes)"), "stdout bytes copied (\"kept\\n\"): {out}");
    // With no containerd to deliver it to, the exit waits in the journal.
    assert!(
        out.stdout.contains("exit journal: 1")
            && out.stdout.contains("/tasks/exit")
            && out.stdout.contains("exit_status: 4"),
        "{out}"
    );
    // --detach: started in the background, driven by later calls.
    let out = ctl(&run_args("sa4", &["--detach"], &b4), None);
    out.expect_ok();
    assert!(out.stdout.starts_with("started sa4 (pid "), "{out}");
    let b4s = b4.display().to_string();
    assert!(ctl(&["--bundle", &b4s, "state", "sa4"], None).stdout.contains("RUNNING"));
    ctl(&["--bundle", &b4s, "kill", "sa4"], None).expect_ok();
    ctl(&["--bundle", &b4s, "wait", "sa4"], None).expect_code(7);
    ctl(&["--bundle", &b4s, "delete", "sa4"], None).expect_ok();

    let address = fs::read_to_string(b3.join("address")).unwrap();
    ctl(&["--bundle", &b3s, "delete", "sa3"], None).expect_ok();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(
        wait_until(secs(10), || (!socket.exists()).then_some(())).is_some(),
        "the idle standalone shim exited after the delete"
    );
}

fn hooks_run_after_start_and_at_delete(case: Case) {
    let Some(env) = Env::for_case("hooks", case) else { return };
    if !env.tether_only("hooks_run_after_start_and_at_delete") {
        return;
    }
    // Hooks are processes on the host that get the container's state on stdin. The native
    // executor deletes a container in the shim unless poststop hooks must run: then in a
    // worker, where the hook's exit is the worker's to collect.
    let bundle = standalone_bundle(&env, "hk1", "echo ran");
    let marker = |kind: &str| env.work().join(format!("{kind}.state"));
    let hook = |kind: &str| serde_json::json!({ "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", marker(kind).display())] });
    let file = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    config["hooks"] = serde_json::json!({ "poststart": [hook("poststart")], "poststop": [hook("poststop")] });
    fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
    let _cleanup = Standalone { namespace: &env.ns, bundles: vec![("hk1", bundle.clone())] };

    let mut args: Vec<String> = vec!["run".into(), "--namespace".into(), env.ns.clone(), "--id".into(), "hk1".into()];
    args.extend(config_args(&env));
    args.push(bundle.display().to_string());
    let out = ctl(&args, None);
    out.expect_ok();
    assert_eq!(out.stdout, "ran\n", "{out}");
    for kind in ["poststart", "poststop"] {
        let state =
            fs::read_to_string(marker(kind)).unwrap_or_else(|e| panic!("the {kind} hook did not run: {e}\n{out}"));
        assert!(state.contains("\"hk1\""), "the {kind} hook got the container's state: {state}");
    }
}

/// An exec that exits while its background child keeps its stdout: the dump names the child
/// as the holder of the exec's output, by pid and command.
fn dump_names_who_holds_an_exited_process_output(case: Case) {
    let Some(env) = Env::for_case("ctl_holders", case) else { return };
    if !env.tether_only("dump_names_who_holds_an_exited_process_output") {
        return;
    }
    env.run("c1").detach().run(&["sleep", "2000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let b = env.containerd.bundle(&env.ns, "c1").display().to_string();
    // Detached, so that ctr neither waits for the output nor deletes the exec.
    env.ctr.run(&env.ctr.exec_args(&["--detach"], "c1", "x1", &["sh", "-c", "sleep 1234 & exit 0"])).expect_ok();
    wait_until(secs(20), || {
        ctl(&["--bundle", &b, "state", "c1", "--exec-id", "x1"], None).stdout.contains("STOPPED").then_some(())
    })
    .expect("the exec exits");
    let sleeper = env
        .ctr
        .ps("c1")
        .into_iter()
        .map(|row| row.pid)
        .find(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x001234\x00"))
        .expect("the exec's background sleep runs in the container");

    let out = ctl(&["--bundle", &b, "dump"], None);
    out.expect_ok();
    let line = format!("output held open by: {sleeper} (sleep 1234) on stdout, stderr");
    assert!(out.stdout.contains(&line), "{line:?} in dump:\n{out}");
    let out = ctl(&["--bundle", &b, "--json", "dump"], None);
    let dump: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    let exec = &dump["containers"][0]["execs"][0];
    assert_eq!(exec["execId"], "x1", "{dump}");
    assert_eq!(exec["outputHolders"][0]["pid"], sleeper, "{dump}");
    assert!(
        dump["containers"][0]["init"]["outputHolders"].as_array().is_none_or(|h| h.is_empty()),
        "the running init has none: {dump}"
    );

    env.ctr.kill("c1", "SIGKILL", true).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}

/// The node's default config ($TETHER_CONFIG here, /etc/tether/config.toml on a node) picks
/// the executor of a task created without runtime options; a broken one fails the create
/// with its name.
#[test]
fn the_node_default_config_applies_without_runtime_options() {
    let env = Env::new("ctl_default_config", Daemon::V1);
    if !env.tether_only("the_node_default_config_applies_without_runtime_options") {
        return;
    }
    let native =
        TetherConfig { executor: Some("native".into()), ..Default::default() }.write(&env.work().join("node.toml"));
    let broken = env.work().join("broken.toml");
    fs::write(&broken, "executor = \"jail\"\n").unwrap();
    let bundle = standalone_bundle(&env, "dc1", LOOP_UNTIL_TERM);
    let _cleanup = Standalone { namespace: &env.ns, bundles: vec![("dc1", bundle.clone())] };
    let b = bundle.display().to_string();
    // `tether-ctl run` without --config starts the shim as containerd does, in its own
    // environment, and creates the task without runtime options.
    let run = |default: &Path| {
        let mut cmd = Command::new(tether_ctl_binary());
        cmd.args(["run", "--namespace", &env.ns, "--id", "dc1", "--detach", &b]).env("TETHER_CONFIG", default);
        run(cmd, None, secs(60))
    };

    let out = run(&broken);
    assert!(!out.ok() && out.stderr.contains(&broken.display().to_string()), "{out}");

    run(&native).expect_ok();
    let out = ctl(&["--bundle", &b, "--json", "dump"], None);
    let dump: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(dump["containers"][0]["executor"], "libcontainer", "{dump}");
    ctl(&["--bundle", &b, "kill", "dc1"], None).expect_ok();
    ctl(&["--bundle", &b, "wait", "dc1"], None).expect_code(7);
    ctl(&["--bundle", &b, "delete", "dc1"], None).expect_ok();
}

/// SIGTERM to a serving shim (a node shutting down) ends it as Shutdown does: its socket is
/// removed and it exits at once, and its container keeps running, for `shim delete` (what
/// containerd runs for a shim that is gone) to clean up. A standalone shim, so that no
/// containerd cleans up behind the test's back.
fn sigterm_ends_the_shim_gracefully(case: Case) {
    let Some(env) = Env::for_case("ctl_sigterm", case) else { return };
    if !env.tether_only("sigterm_ends_the_shim_gracefully") {
        return;
    }
    let bundle = standalone_bundle(&env, "term1", LOOP_UNTIL_TERM);
    let cleanup = Standalone { namespace: &env.ns, bundles: vec![("term1", bundle.clone())] };
    let b = bundle.display().to_string();
    let mut args: Vec<String> = vec!["run".into(), "--namespace".into(), env.ns.clone(), "--id".into(), "term1".into()];
    args.extend(config_args(&env));
    args.extend(["--detach".into(), b.clone()]);
    ctl(&args, None).expect_ok();
    let state = ctl(&["--bundle", &b, "--json", "state", "term1"], None);
    state.expect_ok();
    let init = serde_json::from_str::<serde_json::Value>(&state.stdout).unwrap()["pid"].as_u64().unwrap() as u32;
    let shim = tether_tests::env::parent_pid(init).expect("the init's parent, its shim");
    let address = fs::read_to_string(bundle.join("address")).unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());

    // SAFETY: a plain kill of the shim this test started.
    assert_eq!(unsafe { libc::kill(shim as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(
        wait_until(secs(5), || (!tether_tests::env::pid_exists(shim)).then_some(())).is_some(),
        "the shim {shim} exits promptly"
    );
    assert!(!socket.exists(), "the shim removed its socket {}", socket.display());
    assert!(tether_tests::env::pid_alive(init), "the container's init {init} outlives its shim");

    // What containerd does for a shim that is gone: `shim delete` in the bundle.
    let mut delete = Command::new(tether_tests::runtime::tether_shim_binary());
    delete.args(["-namespace", &env.ns, "-id", "term1", "-bundle", &b, "delete"]).current_dir(&bundle);
    run(delete, None, secs(30)).expect_ok();
    assert!(
        wait_until(secs(10), || (!tether_tests::env::pid_exists(init)).then_some(())).is_some(),
        "shim delete ended the container"
    );
    drop(cleanup);
}
