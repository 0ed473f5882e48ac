//! What a container's processes are given, the same under both executors and as runc gives
//! it: the container's seccomp filter, no_new_privs and capabilities in every exec'd process;
//! default signal dispositions and an empty signal mask in every process; a program named by
//! its path runs without PATH; a mount's propagation (`rprivate`, `rslave`, `rshared`, with the
//! matching `rootfsPropagation`) decides which mounts cross between the host and the container.
//! (`differential.rs` compares everything a container observes under the two executors side
//! by side.)

use std::collections::BTreeMap;
use std::path::Path;

use tether_tests::env::{Env, CONTAINER_PATH};
use tether_tests::mounts::{host_sh, mount_with_mark, SharedDir};
use tether_tests::{secs, Case, Output};

tether_tests::for_each_executor!(
    exec_gets_the_containers_seccomp_filter,
    processes_start_with_default_signals,
    program_named_by_path_runs_without_path,
    mount_propagation_follows_the_mount_options,
);

/// The lines of a `/proc/PID/status` whose names start with one of `prefixes`.
fn status_fields(out: &Output, prefixes: &[&str]) -> BTreeMap<String, String> {
    out.expect_ok();
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

const SECURITY: &[&str] = &["Seccomp", "NoNewPrivs", "Cap"];

fn exec_gets_the_containers_seccomp_filter(case: Case) {
    let Some(env) = Env::for_case("exec_gets_the_containers_seccomp_filter", case) else { return };
    // ctr's default profile, with the default capabilities (no CAP_SYS_ADMIN: the filter
    // must be installed without it) and with CAP_SYS_ADMIN added (the profile allows more).
    for (id, caps) in [("default", "CAP_CHOWN"), ("sys-admin", "CAP_SYS_ADMIN")] {
        let run = env.run(id).detach().flag("--seccomp").flag("--cap-add").flag(caps);
        run.run(&["sleep", "1000"]).expect_ok();
        env.ctr.wait_status(id, "RUNNING", secs(10));
        let init = status_fields(&env.exec(id, "init-status", &["cat", "/proc/1/status"]), SECURITY);
        assert_eq!(init.get("Seccomp").map(String::as_str), Some("2"), "{id}: the init is filtered: {init:?}");
        for exec_id in ["exec-1", "exec-2"] {
            let exec = status_fields(&env.exec(id, exec_id, &["cat", "/proc/self/status"]), SECURITY);
            assert_eq!(exec, init, "{id}: an exec'd process gets the init's filter, no_new_privs and capabilities");
        }
    }
}

/// `SigIgn` and `SigBlk` of a status, which must be empty.
fn signal_sets(out: &Output) -> BTreeMap<String, String> {
    status_fields(out, &["SigIgn", "SigBlk"])
}

const EMPTY_SET: &str = "0000000000000000";
/// `yes` writing into a pipe whose reader left dies of SIGPIPE: the shell says 141.
const YES_INTO_CLOSED_PIPE: &str = "{ yes; echo \"yes: $?\" >&2; } | head -n 1 >/dev/null";

fn processes_start_with_default_signals(case: Case) {
    let Some(env) = Env::for_case("processes_start_with_default_signals", case) else { return };
    let empty = BTreeMap::from([("SigBlk".to_string(), EMPTY_SET.to_string()), ("SigIgn".into(), EMPTY_SET.into())]);

    env.run("c1").detach().run(&["sleep", "1000"]).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    assert_eq!(signal_sets(&env.exec("c1", "e1", &["cat", "/proc/1/status"])), empty, "the init");
    assert_eq!(signal_sets(&env.exec("c1", "e2", &["cat", "/proc/self/status"])), empty, "an exec'd process");

    let out = env.exec("c1", "e3", &["sh", "-c", YES_INTO_CLOSED_PIPE]);
    out.expect_ok();
    assert!(out.stderr.contains("yes: 141"), "yes in an exec'd process dies of SIGPIPE: {out}");
    let out = env.run("c2").rm().run(&["sh", "-c", YES_INTO_CLOSED_PIPE]);
    out.expect_ok();
    assert!(out.stderr.contains("yes: 141"), "yes under the init dies of SIGPIPE: {out}");
}

fn program_named_by_path_runs_without_path(case: Case) {
    let Some(env) = Env::for_case("program_named_by_path_runs_without_path", case) else { return };
    // ctr run --rootfs gives the process no environment but what --env adds: drop the PATH
    // the harness adds.
    let without_path = |args: Vec<String>| -> Vec<String> {
        let at = args.iter().position(|a| a == CONTAINER_PATH).expect("the harness passes PATH");
        args.into_iter().enumerate().filter(|(i, _)| *i + 1 != at && *i != at).map(|(_, a)| a).collect()
    };
    let cmd = ["/bin/sh", "-c", "echo ran; sleep 1000"];
    let args = without_path(env.run("c1").detach().args(&cmd));
    assert!(!args.iter().any(|a| a.starts_with("PATH=")), "{args:?}");
    env.ctr.run(&args).expect_ok();
    env.ctr.wait_status("c1", "RUNNING", secs(10));
    let out = env.exec("c1", "e1", &["/bin/echo", "exec ran"]);
    out.expect_ok();
    assert_eq!(out.stdout_lines(), ["exec ran"], "{out}");
}

fn mount_propagation_follows_the_mount_options(case: Case) {
    let Some(env) = Env::for_case("mount_propagation_follows_the_mount_options", case) else { return };
    let shared = SharedDir::new(env.work().join("shared"));
    // A mount's propagation option, the rootfs propagation CRI sets with it, and whether a
    // mount made afterwards below the mount point crosses host → container and
    // container → host (what runc does).
    let cases = [
        ("private", None, "rprivate", false, false),
        ("slave", Some("rslave"), "rslave", true, false),
        ("shared", Some("rshared"), "rshared", true, true),
    ];
    for (id, rootfs_propagation, option, inward, outward) in cases {
        let src = shared.0.join(id);
        std::fs::create_dir_all(&src).unwrap();
        let mount = format!("type=bind,src={},dst=/m,options=rbind:{option}", src.display());
        let mut run = env.run(id).detach().flag("--cap-add").flag("CAP_SYS_ADMIN").flag("--mount").flag(&mount);
        if let Some(p) = rootfs_propagation {
            run = run.flag("--rootfs-propagation").flag(p);
        }
        run.run(&["sleep", "1000"]).expect_ok();
        env.ctr.wait_status(id, "RUNNING", secs(10));

        host_sh(&mount_with_mark(&src, "from-host"));
        let seen = env.exec(id, "look-in", &["cat", "/m/from-host/mark"]);
        assert_eq!(seen.ok(), inward, "{id}: a mount the host made shows in the container: {seen}");

        env.exec(id, "mount-in", &["sh", "-c", &mount_with_mark(Path::new("/m"), "from-container")]).expect_ok();
        let mark = src.join("from-container/mark");
        assert_eq!(mark.exists(), outward, "{id}: a mount the container made shows on the host");
    }
}
