//! Resources: Stats (`ctr task metrics`), Update (straight to the shim over ttrpc: ctr 1.6 has
//! no `task update`), OOM events, and no watcher left behind by deleted containers.

use std::fs;

use tether_protos::ttrpc::Code;
use tether_tests::cgroup::{cgroup_dir, is_v2, read};
use tether_tests::env::{usage, Env};
use tether_tests::shim::{code_of, message_of, ShimClient};
use tether_tests::Case;
use tether_tests::{secs, wait_until, Event};

tether_tests::for_each_executor!(
    metrics_and_update,
    oom_kill_is_reported_before_the_exit,
    deleted_containers_leave_no_watcher_behind,
);

const LOOP: &str = "while :; do sleep 0.1; done";

fn metrics_and_update(case: Case) {
    let Some(env) = Env::for_case("metrics_update", case) else { return };
    let ctr = &env.ctr;
    // Two processes all along (a loop of short sleeps has moments with one).
    env.run("c1").detach().run(&["sh", "-c", "sleep 1000 & wait"]).expect_ok();
    let task = ctr.wait_status("c1", "RUNNING", secs(10));

    // ctr task metrics: the whole metrics message for this host's cgroup mode.
    let out = ctr.run(&["task", "metrics", "--format", "json", "c1"]);
    out.expect_ok();
    let m: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("metrics are not JSON ({e}):\n{out}"));
    // protobuf's JSON leaves out zero values: absent reads as 0.
    let num = |path: &[&str]| -> u64 { path.iter().fold(&m, |v, k| &v[*k]).as_u64().unwrap_or(0) };
    if is_v2() {
        assert!(num(&["memory", "usage"]) > 0, "{m:#}");
        assert!(num(&["cpu", "usage_usec"]) > 0, "{m:#}");
        assert!(num(&["pids", "current"]) >= 2, "{m:#}");
    } else {
        assert!(num(&["memory", "usage", "usage"]) > 0, "memory usage: {m:#}");
        assert!(num(&["memory", "usage", "limit"]) > 0, "memory limit: {m:#}");
        assert!(num(&["memory", "cache"]) + num(&["memory", "rss"]) > 0, "cache/rss details: {m:#}");
        assert!(num(&["cpu", "usage", "total"]) > 0, "cpu usage: {m:#}");
        let per_cpu = m["cpu"]["usage"]["per_cpu"].as_array().expect("per-cpu usage");
        assert!(!per_cpu.is_empty(), "per-cpu usage: {m:#}");
        assert!(m["cpu"]["throttling"].is_object(), "throttling: {m:#}");
        assert!(num(&["pids", "current"]) >= 2, "sh and its sleep: {m:#}");
        assert!(m["blkio"].is_object(), "blkio: {m:#}");
    }
    // The table form prints too.
    let table = ctr.run(&["task", "metrics", "c1"]);
    table.expect_ok();
    assert!(table.stdout.contains("memory"), "{table}");

    // Update: memory, cpu shares/quota/period, cpuset, pids, all visible in the cgroup.
    let shim = ShimClient::for_task(&env, "c1");
    shim.update(
        "c1",
        r#"{"memory":{"limit":67108864},"cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0"},"pids":{"limit":64}}"#,
    )
    .unwrap_or_else(|e| panic!("update: {e}"));
    if is_v2() {
        let dir = cgroup_dir(task.pid, "");
        assert_eq!(read(&dir, "memory.max"), "67108864");
        assert_eq!(read(&dir, "cpu.max"), "50000 100000");
        assert_eq!(read(&dir, "cpuset.cpus"), "0");
        assert_eq!(read(&dir, "pids.max"), "64");
    } else {
        assert_eq!(read(&cgroup_dir(task.pid, "memory"), "memory.limit_in_bytes"), "67108864");
        let cpu = cgroup_dir(task.pid, "cpu");
        assert_eq!(read(&cpu, "cpu.shares"), "512");
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&cgroup_dir(task.pid, "cpuset"), "cpuset.cpus"), "0");
        assert_eq!(read(&cgroup_dir(task.pid, "pids"), "pids.max"), "64");
        // Stats reflect the new limits.
        let out = ctr.run(&["task", "metrics", "--format", "json", "c1"]);
        let m: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(m["memory"]["usage"]["limit"].as_u64(), Some(67108864), "{m:#}");
        assert_eq!(m["pids"]["limit"].as_u64(), Some(64), "{m:#}");
    }

    // Invalid resources: InvalidArgument naming the field; nothing changes, the task runs on.
    if env.runtime.is_tether() {
        for (bad, field) in [
            (r#"{"cpu":{"shares":1}}"#, "cpu.shares"),
            (r#"{"cpu":{"cpus":"0-4095"}}"#, "cpu.cpus"),
            (r#"{"memory":{"limit":"lots"}}"#, "LinuxResources"),
            (r#"{"pids":{"limit":-7}}"#, "pids.limit"),
        ] {
            let err = shim.update("c1", bad).expect_err(bad);
            assert_eq!(code_of(&err), Code::INVALID_ARGUMENT, "{bad}: {err}");
            assert!(message_of(&err).contains(field), "{bad}: {}", message_of(&err));
        }
        let err = shim.update("nosuch", r#"{"pids":{"limit":5}}"#).unwrap_err();
        assert_eq!(code_of(&err), Code::NOT_FOUND, "{err}");
        let err = shim.stats("nosuch").unwrap_err();
        assert_eq!(code_of(&err), Code::NOT_FOUND, "{err}");
        let stats = shim.stats("c1").unwrap_or_else(|e| panic!("stats: {e}"));
        assert!(stats.type_url.contains("io.containerd.cgroups.v"), "metrics type: {}", stats.type_url);
        if !is_v2() {
            assert_eq!(read(&cgroup_dir(task.pid, "cpu"), "cpu.shares"), "512");
        }
    }
    assert_eq!(ctr.status("c1").as_deref(), Some("RUNNING"));
    ctr.kill("c1", "SIGKILL", false).expect_ok();
    ctr.wait_status("c1", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("c1"), 137);
}

fn position(events: &[Event], topic: &str) -> Option<usize> {
    events.iter().position(|e| e.topic == topic)
}

fn oom_kill_is_reported_before_the_exit(case: Case) {
    let Some(env) = Env::for_case("oom_kill", case) else { return };
    let ctr = &env.ctr;
    let events = ctr.subscribe();

    // The init itself exceeds the limit: /tasks/oom, then /tasks/exit with 137.
    env.run("hog").detach().flag("--memory-limit").flag("16777216").run(&["tail", "/dev/zero"]).expect_ok();
    ctr.wait_status("hog", "STOPPED", secs(60));
    let seen = events.wait_for("hog", secs(15), |evs| position(evs, "/tasks/exit").is_some());
    let topics: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    let oom = position(&seen, "/tasks/oom").unwrap_or_else(|| panic!("no /tasks/oom in {topics:?}"));
    let exit = position(&seen, "/tasks/exit").unwrap();
    assert!(oom < exit, "/tasks/oom comes before /tasks/exit: {topics:?}");
    assert_eq!(seen[exit].exit_status(), 137, "an OOM kill is SIGKILL");
    assert_eq!(seen.iter().filter(|e| e.topic == "/tasks/oom").count(), 1, "{topics:?}");
    assert_eq!(ctr.rm_task("hog"), 137);

    // A child of the init is OOM-killed and the init lives on: the event comes from the
    // cgroup watch alone, with no exit to prompt it.
    env.run("parent")
        .detach()
        .flag("--memory-limit")
        .flag("16777216")
        .run(&["sh", "-c", "tail /dev/zero; echo survived; while :; do sleep 0.1; done"])
        .expect_ok();
    events.wait_for("parent", secs(60), |evs| position(evs, "/tasks/oom").is_some());
    assert_eq!(ctr.status("parent").as_deref(), Some("RUNNING"), "the init survives its child's OOM kill");
    ctr.kill("parent", "SIGKILL", false).expect_ok();
    ctr.wait_status("parent", "STOPPED", secs(10));
    assert_eq!(ctr.rm_task("parent"), 137);
}

fn deleted_containers_leave_no_watcher_behind(case: Case) {
    let Some(env) = Env::for_case("oom_watch_leak", case) else { return };
    if !env.tether_only("deleted_containers_leave_no_watcher_behind") {
        return;
    }
    let ctr = &env.ctr;
    let group = "io.containerd.runc.v2.group";
    // An anchor keeps the one shim of the group alive across the churn.
    env.run("anchor").detach().annotation(group, "churn").run(&["sh", "-c", LOOP]).expect_ok();
    ctr.wait_status("anchor", "RUNNING", secs(10));
    let shim = env.shim_pid_of("anchor");
    let held = || {
        let u = usage(shim);
        (u.fds, u.threads)
    };
    // One full cycle first, so that lazily opened things (event connection) are counted.
    let cycle = |id: &str| {
        env.run(id).detach().annotation(group, "churn").run(&["true"]).expect_ok();
        ctr.wait_status(id, "STOPPED", secs(10));
        assert_eq!(ctr.rm_task(id), 0);
        ctr.rm_container(id).expect_ok();
    };
    cycle("warmup");
    let (fds, threads) = held();
    for i in 0..50 {
        cycle(&format!("c{i}"));
        assert_eq!(env.shim_pid_of("anchor"), shim, "every container was served by the same shim");
    }
    let settled = wait_until(secs(10), || {
        let now = held();
        (now == (fds, threads)).then_some(now)
    });
    let (fds_after, threads_after) = held();
    println!("shim {shim}: {fds} fds and {threads} threads before 50 containers; after: {fds_after} fds, {threads_after} threads");
    assert!(
        settled.is_some(),
        "fds/threads back to {fds}/{threads}; now {fds_after}/{threads_after}: {:?}",
        fs::read_dir(format!("/proc/{shim}/fd"))
            .map(|d| d.filter_map(|e| fs::read_link(e.ok()?.path()).ok()).collect::<Vec<_>>())
    );
    assert_eq!(ctr.status("anchor").as_deref(), Some("RUNNING"));
}
