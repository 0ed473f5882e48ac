//! Runtime options: the OCI runtime binary and its state dir (tether: `--runtime-config-path`
//! TOML; the Go shim: ctr's runc flags), crun, defaults, and bad configs.

use std::fs;
use std::path::{Path, PathBuf};

use tether_tests::env::{skip, usage, Env, Executor, TetherConfig};
use tether_tests::runtime::{recording_runc, which};
use tether_tests::{secs, wait_until, Case, Daemon, Sandboxer};

tether_tests::for_each_daemon!(
    runtime_binary_under_another_name,
    runtime_root_is_honoured,
    crun_binary,
    tether_config_file_and_defaults,
    tether_bad_config_is_a_clear_error,
    native_executor_runs_containers_without_a_runtime_binary,
    log_level_from_the_config_file,
    an_idle_shim_trims_its_memory_and_goes_on_serving,
);

/// The words the runtime was called with (one invocation per line of `record`).
fn subcommands(record: &Path) -> String {
    fs::read_to_string(record).unwrap_or_default()
}

fn runtime_binary_under_another_name(daemon: Daemon) {
    let env = Env::new("runtime_binary", daemon);
    let ctr = &env.ctr;

    // By path, outside any PATH.
    let record = env.work().join("my-runc.calls");
    let my_runc = recording_runc(&env.work().join("alt-bin"), "my-runc", &record);
    env.run("c1").detach().runtime_binary(&my_runc.display().to_string()).run(&["sleep", "1000"]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));
    env.exec("c1", "e1", &["echo", "exec-ok"]).expect_ok();
    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c1"), 137);
    let calls = subcommands(&record);
    for sub in ["create", "start", "exec", "kill", "delete"] {
        assert!(
            calls.lines().any(|l| l.split_whitespace().any(|w| w == sub)),
            "my-runc was used for `{sub}`; calls:\n{calls}"
        );
    }

    // By name, looked up on containerd's PATH (which the shim inherits).
    let record2 = env.work().join("runc-by-name.calls");
    recording_runc(&env.containerd.dir().join("bin"), "runc-by-name", &record2);
    env.run("c2").rm().runtime_binary("runc-by-name").run(&["sh", "-c", "exit 3"]).expect_code(3);
    assert!(subcommands(&record2).contains("create"), "runc-by-name was used: {}", subcommands(&record2));
}

fn runtime_root_is_honoured(daemon: Daemon) {
    let env = Env::new("runtime_root", daemon);
    let root = env.work().join("rt-root");
    env.run("c1").detach().runtime_root(&root).run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    // runc keeps ROOT/[namespace/]ID/state.json (the Go shim adds the namespace).
    let state = find_state(&root, "c1");
    assert!(state.is_some(), "runc state of c1 under {}: {:?}", root.display(), list(&root));
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    env.ctr.rm_task("c1");
    assert!(find_state(&root, "c1").is_none(), "runc state removed with the task: {:?}", list(&root));
}

fn find_state(root: &Path, id: &str) -> Option<PathBuf> {
    let direct = root.join(id).join("state.json");
    if direct.exists() {
        return Some(direct);
    }
    fs::read_dir(root).ok()?.flatten().map(|e| e.path().join(id).join("state.json")).find(|p| p.exists())
}

fn list(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) && out.len() < 200 {
                stack.push(e.path());
            }
        }
    }
    out
}

fn crun_binary(daemon: Daemon) {
    let env = Env::new("crun_binary", daemon);
    if which("crun").is_none() {
        panic!("crun not found: apt-get install crun");
    }
    let out = env.run("c1").detach().runtime_binary("crun").run(&["sleep", "1000"]);
    if !out.ok() {
        // crun 1.8 (Debian 12) refuses cgroup v1 "hybrid" hosts, and the runtime-spec version
        // (1.2) of containerd 2.x's specs. Only these may skip the test.
        if out.stderr.contains("cgroups in hybrid mode not supported")
            || out.stderr.contains("unknown version specified")
        {
            skip("crun_binary", &format!("crun refuses this host: {}", out.stderr.trim()));
            return;
        }
        panic!("crun run failed:\n{out}");
    }
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    env.exec("c1", "e1", &["echo", "hello-crun"]).expect_ok();
    env.ctr.kill("c1", "SIGKILL", false).expect_ok();
    env.ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(env.ctr.rm_task("c1"), 137);
}

fn tether_config_file_and_defaults(daemon: Daemon) {
    let env = Env::new("tether_config", daemon);
    if !env.tether_only("tether_config_file_and_defaults") {
        return;
    }
    let ctr = &env.ctr;

    // No runtime options at all: runc on PATH, state under /run/tether/<namespace>.
    env.run("c0").detach().no_options().run(&["sleep", "1000"]).expect_ok();
    ctr.wait_status("c0", "RUNNING", secs(10));
    let default_state = Path::new("/run/tether").join(&env.ns).join("c0").join("state.json");
    assert!(default_state.exists(), "default runc root: {} exists", default_state.display());
    ctr.kill("c0", "SIGKILL", false).expect_ok();
    ctr.wait_status("c0", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c0"), 137);

    // Every key spelled out.
    let root = env.work().join("root-all-keys");
    let config = TetherConfig {
        executor: Some("runc".into()),
        binary: Some("runc".into()),
        root: Some(root.clone()),
        systemd_cgroup: Some(false),
        criu: Some("criu".into()),
        ..Default::default()
    }
    .write(&env.work().join("all-keys.toml"));
    let out = env.run("c1").rm().config_path(&config).run(&["sh", "-c", "echo configured; exit 4"]);
    out.expect_code(4);
    assert_eq!(out.stdout, "configured\n");
    assert!(root.exists(), "[runc] root was used: {}", root.display());
}

fn tether_bad_config_is_a_clear_error(daemon: Daemon) {
    let env = Env::new("tether_bad_config", daemon);
    if !env.tether_only("tether_bad_config_is_a_clear_error") {
        return;
    }
    let ctr = &env.ctr;

    // A value of the wrong type: the error names the file and the key.
    let bad_type = env.work().join("bad-type.toml");
    fs::write(&bad_type, "[runc]\nbinary = 42\n").unwrap();
    let out = env.run("c1").detach().config_path(&bad_type).run(&["true"]);
    out.expect_failure().expect_stderr(&bad_type.display().to_string()).expect_stderr("binary");

    // A misspelt key is not silently ignored.
    let typo = env.work().join("typo.toml");
    fs::write(&typo, "[runc]\nbinnary = \"runc\"\n").unwrap();
    let out = env.run("c2").detach().config_path(&typo).run(&["true"]);
    out.expect_failure().expect_stderr(&typo.display().to_string()).expect_stderr("binnary");

    // A config file that does not exist.
    let missing = env.work().join("missing.toml");
    let out = env.run("c3").detach().config_path(&missing).run(&["true"]);
    out.expect_failure().expect_stderr(&missing.display().to_string());

    // A runtime binary that does not exist: Create fails, nothing is left running.
    let out = env.run("c4").detach().runtime_binary("/no/such/runc").run(&["true"]);
    out.expect_failure();
    assert!(ctr.task("c4").is_none(), "no task after a failed create");

    // None of this hurt anything: a good run works.
    env.run("c5").rm().run(&["echo", "fine"]).expect_ok();
    // The failed creates left no shim behind.
    assert!(
        wait_until(secs(10), || env.containerd.shim_processes().is_empty().then_some(())).is_some(),
        "shims still running: {:?}",
        env.containerd.shim_processes()
    );
}

/// The processes whose parent is `pid`, with their command lines.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let list = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let cmdline = fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

fn native_executor_runs_containers_without_a_runtime_binary(daemon: Daemon) {
    let Some(env) =
        Env::for_case("native_executor", Case { daemon, executor: Executor::Native, sandboxer: Sandboxer::Podsandbox })
    else {
        return;
    };
    let ctr = &env.ctr;
    // A runc that records every call, first on containerd's PATH and named as the runtime
    // binary: the native executor must never run it, nor the `delete` containerd runs after
    // each shim exit.
    let record = env.work().join("runc.calls");
    recording_runc(&env.containerd.dir().join("bin"), "runc", &record);
    let root = env.work().join("native-root");
    let config = TetherConfig {
        executor: Some("native".into()),
        binary: Some("runc".into()),
        native_root: Some(root.clone()),
        ..Default::default()
    }
    .write(&env.work().join("native-root.toml"));

    env.run("c1").detach().config_path(&config).run(&["sh", "-c", "while :; do sleep 0.1; done"]).expect_ok();
    let task = ctr.wait_status("c1", "RUNNING", secs(10));
    // libcontainer's own state, under [native] root.
    let state_file = root.join("c1").join("state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_file).unwrap_or_else(|e| panic!("{}: {e}", state_file.display())))
            .unwrap();
    assert_eq!(state["id"], "c1", "{state}");
    assert_eq!(state["pid"], task.pid, "{state}");
    let out = env.exec("c1", "e1", &["sh", "-c", "echo native-exec; exit 5"]);
    out.expect_code(5);
    assert_eq!(out.stdout, "native-exec\n");

    // The shim forks through its helper: one child running `native-helper` besides the
    // container's init, while there is work.
    let shim = env.shim_pid_of("c1");
    let kids = children(shim);
    assert!(kids.iter().any(|(_, cmd)| cmd.contains("native-helper")), "the shim's children: {kids:?}");
    assert!(kids.iter().any(|(pid, _)| *pid == task.pid), "the init is the shim's child: {kids:?}");
    ctr.run(&["task", "pause", "c1"]).expect_ok();
    ctr.wait_status("c1", "PAUSED", secs(10));
    ctr.run(&["task", "resume", "c1"]).expect_ok();
    ctr.wait_status("c1", "RUNNING", secs(10));

    // An idle helper leaves (the container runs on without it), and the next call that needs
    // one starts another.
    let helper_left =
        wait_until(secs(15), || (!children(shim).iter().any(|(_, cmd)| cmd.contains("native-helper"))).then_some(()));
    assert!(helper_left.is_some(), "the idle helper stayed: {:?}", children(shim));
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));
    let out = env.exec("c1", "e2", &["sh", "-c", "echo again; exit 6"]);
    out.expect_code(6);
    assert_eq!(out.stdout, "again\n");
    let kids = children(shim);

    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c1"), 137);
    assert!(!root.join("c1").exists(), "libcontainer's state went with the task: {:?}", list(&root));
    assert!(!record.exists(), "the runtime binary was run: {}", subcommands(&record));
    // The helper goes with its shim.
    assert!(
        wait_until(secs(10), || kids.iter().all(|(pid, _)| !Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
            .is_some(),
        "the shim's children outlived it: {kids:?}"
    );
    assert!(
        wait_until(secs(10), || env
            .containerd
            .log()
            .contains("cleaning up after shim disconnected\" id=c1")
            .then_some(()))
        .is_some(),
        "containerd cleaned up after the shim"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!record.exists(), "the runtime binary was run after the shim exited: {}", subcommands(&record));
}

fn log_level_from_the_config_file(daemon: Daemon) {
    let env = Env::new("log_level", daemon);
    if !env.tether_only("log_level_from_the_config_file") {
        return;
    }
    // containerd at debug level starts its shims with -debug: every task call is logged, with
    // its id, exec id, duration and result.
    env.run("c1").rm().run(&["true"]).expect_ok();
    let logged = |needle: &str| env.containerd.log().lines().any(|l| l.contains(needle));
    assert!(
        wait_until(secs(10), || logged("Start id=c1 exec= took=").then_some(())).is_some(),
        "no debug line for c1's Start in containerd's log"
    );
    // A config's log_level rules from its container's creation on.
    let quiet =
        TetherConfig { log_level: Some("warn".into()), ..Default::default() }.write(&env.work().join("quiet.toml"));
    env.run("c2").rm().config_path(&quiet).run(&["true"]).expect_ok();
    env.run("c3").rm().run(&["true"]).expect_ok();
    assert!(
        wait_until(secs(10), || logged("Start id=c3 exec= took=").then_some(())).is_some(),
        "c3's shim logs at debug level"
    );
    assert!(
        !logged("id=c2 exec="),
        "c2's shim logged below warn:\n{}",
        tether_tests::containerd::tail(&env.containerd.log(), 30)
    );
}

fn an_idle_shim_trims_its_memory_and_goes_on_serving(daemon: Daemon) {
    let env = Env::new("idle_trim", daemon);
    if !env.tether_only("an_idle_shim_trims_its_memory_and_goes_on_serving") {
        return;
    }
    let ctr = &env.ctr;
    let config = |ms: u64| TetherConfig { idle_trim_ms: Some(ms), ..Default::default() };
    let trims = config(300).write(&env.work().join("trims.toml"));
    let keeps = config(0).write(&env.work().join("keeps.toml"));
    env.run("trims").detach().config_path(&trims).run(&["sleep", "1000"]).expect_ok();
    env.run("keeps").detach().config_path(&keeps).run(&["sleep", "1000"]).expect_ok();
    let (trimming, keeping) = (env.shim_pid_of("trims"), env.shim_pid_of("keeps"));
    assert_ne!(trimming, keeping, "each container has a shim of its own");

    // Both shims ran the same code; the one that trims gives back its mapped code once idle.
    let trimmed = || {
        let (t, k) = (usage(trimming).rss_file_kib, usage(keeping).rss_file_kib);
        (t * 2 < k).then_some((t, k))
    };
    let (t, k) = wait_until(secs(10), trimmed)
        .unwrap_or_else(|| panic!("no trim: {:?} against {:?}", usage(trimming), usage(keeping)));
    eprintln!("file-backed RSS: {t} KiB trimmed, {k} KiB kept");

    // The trimmed shim serves as before: an exec's output and status, then the init's exit.
    let out = env.exec("trims", "e1", &["echo", "after the trim"]).expect_ok().stdout.clone();
    assert_eq!(out.trim(), "after the trim");
    // ...and trims again after that busy spell (the exec faulted code back in).
    let trims_logged = || {
        let needle = format!("pid={trimming} msg=\"idle: dropped");
        env.containerd.log().lines().filter(|l| l.contains(&needle)).count()
    };
    assert!(
        wait_until(secs(10), || (trims_logged() >= 2).then_some(())).is_some(),
        "{} trims logged, expected one before the exec and one after",
        trims_logged()
    );
    ctr.kill("trims", "SIGKILL", false).expect_ok();
    ctr.wait_status("trims", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("trims"), 137, "the exit status of the killed init");
}

/// containerd 2.x's introspection of a runtime (`ctr plugins inspect-runtime`, as the CRI
/// plugin asks before it runs a pod with user namespaces) runs the shim's `-info` with the
/// handler's options: tether's name and version, and the features of the executor its config
/// names (runc's own `runc features`, or the native executor's).
#[test]
fn containerd2_inspects_the_runtime_and_its_executor() {
    let env = Env::new("inspect_runtime", Daemon::V2);
    if !env.tether_only("containerd2_inspects_the_runtime_and_its_executor") {
        return;
    }
    let native =
        TetherConfig { executor: Some("native".into()), ..Default::default() }.write(&env.work().join("native.toml"));
    let inspect = |config: Option<&Path>| -> serde_json::Value {
        let mut args =
            vec!["plugins".to_string(), "inspect-runtime".into(), "--runtime".into(), env.runtime.name.clone()];
        if let Some(c) = config {
            args.extend(["--runtime-config-path".into(), c.display().to_string()]);
        }
        let out = env.ctr.run(&args);
        out.expect_ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let runc_features: serde_json::Value = {
        let out =
            std::process::Command::new(which("runc").expect("runc")).arg("features").output().expect("runc features");
        serde_json::from_slice(&out.stdout).expect("runc features prints JSON")
    };

    let info = inspect(None);
    assert_eq!(info["Name"], env.runtime.name, "{info:#}");
    assert_eq!(info["Version"]["Version"], env!("CARGO_PKG_VERSION"), "{info:#}");
    assert_eq!(info["Features"], runc_features, "the runc executor reports runc's features: {info:#}");

    let info = inspect(Some(&native));
    assert_ne!(info["Features"], runc_features, "{info:#}");
    let namespaces =
        info["Features"]["linux"]["namespaces"].as_array().unwrap_or_else(|| panic!("no namespaces: {info:#}"));
    assert!(namespaces.iter().any(|n| n == "pid"), "{info:#}");
}
