//! The Kubernetes path: containerd's CRI plugin drives tether as a runtime handler (`tether`
//! for the runc executor, `tether-native` for the native one), through the CRI gRPC API the
//! kubelet uses. Pause-based pods use the host's network; images are made by the harness.
//! Every scenario runs on tether's own sandboxes too (`tether-sandbox`, containerd 2.x: no
//! pause container, `tests/tests/cri_sandbox.rs`), unless it says why it cannot.

use std::fs;
use std::path::Path;

use k8s_cri::v1::{
    security_profile::ProfileType, Capability, ContainerState, LinuxContainerResources, Mount, MountPropagation,
    NamespaceMode, PodSandboxState, SecurityProfile,
};
use tether_tests::cgroup::{cgroup_dir, is_v2, read};
use tether_tests::cri::config::inline_handler_for;
use tether_tests::cri::{with_pid_namespace, CriEnv, Pod, Stream, K8S_NAMESPACE};
use tether_tests::env::skip;
use tether_tests::env::{children_of, parent_pid, pid_alive};
use tether_tests::mounts::{host_sh, mount_with_mark, SharedDir};
use tether_tests::{secs, wait_until, Case, Runtime, Sandboxer};

tether_tests::for_each_cri_case!(
    pod_sandbox_lifecycle,
    one_shim_per_pod,
    container_lifecycle_and_stop_grace_period,
    exec_sync_output_exit_code_and_timeout,
    container_stats,
    update_container_resources,
    reopen_container_log,
    oom_killed_reason,
    container_restart_in_running_pod,
    exec_stream,
    attach_stream,
    stop_with_a_worker_in_the_pods_pid_namespace,
    stop_with_a_worker_in_the_hosts_pid_namespace,
    runtime_config_inline_in_the_handler,
    seccomp_reaches_exec_processes,
    mount_propagation,
);

/// A container that runs until stopped.
const LOOP: &str = "while :; do sleep 0.1; done";
/// Container states, for short.
const RUNNING: ContainerState = ContainerState::ContainerRunning;
const EXITED: ContainerState = ContainerState::ContainerExited;

/// Starts a container `name` (attempt 0) running `script` in `pod` and waits until it runs.
fn running(env: &CriEnv, pod: &Pod, name: &str, script: &str) -> String {
    let id = env.start_container(pod, env.container_config(name, 0, script));
    env.wait_running(&id, secs(30));
    id
}

/// Waits until the log file `log` contains `needle`; its text.
#[track_caller]
fn logged(log: &Path, needle: &str) -> String {
    wait_until(secs(30), || fs::read_to_string(log).ok().filter(|t| t.contains(needle)))
        .unwrap_or_else(|| panic!("{} never contained {needle:?}: {:?}", log.display(), fs::read_to_string(log)))
}

/// The network namespace of `pid`.
fn net_ns(pid: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/net: {e}"))
        .display()
        .to_string()
}

/// RunPodSandbox starts the sandbox through the handler's shim, on the host's network;
/// StopPodSandbox stops it; RemovePodSandbox removes it and the shim exits.
fn pod_sandbox_lifecycle(case: Case) {
    if case.sandboxer == Sandboxer::Shim {
        return skip("pod_sandbox_lifecycle", "checks the pause process; cri_sandbox.rs has the pod without it");
    }
    let Some(env) = CriEnv::for_case("pod_sandbox_lifecycle", case) else { return };
    let version = env.client.version().expect("Version");
    assert_eq!(version.runtime_name, "containerd", "{version:?}");

    let pod = env.run_pod("pod1");
    let status = env.client.pod_sandbox_status(&pod.id).expect("PodSandboxStatus");
    let sandbox = status.status.clone().expect("a sandbox status");
    assert_eq!(sandbox.state, PodSandboxState::SandboxReady as i32, "{sandbox:?}");
    let (pid, info) = env.sandbox_info(&pod.id);
    assert_eq!(sandbox.runtime_handler, env.handler, "{sandbox:?}");
    assert_eq!(info["runtimeType"], env.runtime.name, "{info:#}");
    // Host network: the sandbox shares the test's network namespace.
    assert_eq!(net_ns(&pid.to_string()), net_ns("self"), "the sandbox is on the host network");
    // The sandbox runs the pause image's entrypoint (once the runtime's init has exec'd it),
    // as a child of this pod's shim.
    let cmdline = || fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let entrypoint = wait_until(secs(10), || Some(cmdline()).filter(|c| c.contains("sleep")));
    assert!(entrypoint.is_some(), "the pause entrypoint runs: {:?}", cmdline());
    let shims = env.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod: {:?}", env.containerd.shim_processes());
    assert_eq!(parent_pid(pid), Some(shims[0]), "the sandbox is the shim's child");
    let shim_argv0 = &env.containerd.shim_processes()[0].1[0];
    assert!(shim_argv0.ends_with(&env.runtime.shim_binary_name()), "{shim_argv0}");

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    let sandbox = env.client.pod_sandbox_status(&pod.id).expect("PodSandboxStatus").status.unwrap();
    assert_eq!(sandbox.state, PodSandboxState::SandboxNotready as i32, "{sandbox:?}");
    assert!(!pid_alive(pid), "the sandbox process {pid} is gone after StopPodSandbox");

    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    let err = env.client.pod_sandbox_status(&pod.id).expect_err("the pod is gone");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(env.client.list_pod_sandboxes().unwrap().is_empty());
    assert!(
        wait_until(secs(10), || env.shim_pids().is_empty().then_some(())).is_some(),
        "the pod's shim exits once the pod is removed: {:?}",
        env.containerd.shim_processes()
    );
    let leftover = env.containerd.ctr(K8S_NAMESPACE).containers();
    assert!(leftover.is_empty(), "no containerd container is left: {leftover:?}");
}

/// The sandbox and every container of a pod are children of one shim; another pod has its
/// own; a pod's shim lives while the pod does (its containers gone or not) and exits once the
/// pod is removed.
fn one_shim_per_pod(case: Case) {
    let Some(env) = CriEnv::for_case("one_shim_per_pod", case) else { return };
    let pod1 = env.run_pod("pod1");
    let c1 = running(&env, &pod1, "c1", LOOP);
    let c2 = running(&env, &pod1, "c2", LOOP);
    let shim1 = env.shim_of(&pod1);
    assert_eq!(env.shim_pids(), [shim1], "one shim for the sandbox and both containers");
    for c in [&c1, &c2] {
        assert_eq!(parent_pid(env.container_pid(c)), Some(shim1), "container {c} is a child of the pod's shim");
    }

    let pod2 = env.run_pod("pod2");
    let c3 = running(&env, &pod2, "c3", LOOP);
    let shim2 = env.shim_of(&pod2);
    assert_ne!(shim1, shim2, "each pod has its own shim");
    assert_eq!(parent_pid(env.container_pid(&c3)), Some(shim2));
    let mut shims = env.shim_pids();
    shims.sort();
    let mut expected = vec![shim1, shim2];
    expected.sort();
    assert_eq!(shims, expected);

    // The containers go; the sandbox keeps the shim.
    for c in [&c1, &c2] {
        env.client.stop_container(c, 10).unwrap_or_else(|e| panic!("StopContainer {c}: {e}"));
        env.client.remove_container(c).unwrap_or_else(|e| panic!("RemoveContainer {c}: {e}"));
    }
    assert!(pid_alive(shim1), "the shim serves the sandbox still");
    assert_eq!(env.sandbox_status(&pod1).state, PodSandboxState::SandboxReady as i32);

    env.client.stop_pod_sandbox(&pod1.id).expect("StopPodSandbox");
    env.client.remove_pod_sandbox(&pod1.id).expect("RemovePodSandbox");
    assert!(wait_until(secs(10), || (!pid_alive(shim1)).then_some(())).is_some(), "pod1's shim exits with its pod");
    assert!(pid_alive(shim2), "pod2's shim is not affected");
    assert_eq!(env.container_status(&c3).state, RUNNING as i32);

    env.client.stop_pod_sandbox(&pod2.id).expect("StopPodSandbox");
    env.client.remove_pod_sandbox(&pod2.id).expect("RemovePodSandbox");
    assert!(
        wait_until(secs(10), || env.shim_pids().is_empty().then_some(())).is_some(),
        "{:?}",
        env.containerd.shim_processes()
    );
}

/// CreateContainer / StartContainer / StopContainer / RemoveContainer. Stop sends SIGTERM
/// first (a container that exits on it reports its own status), then SIGKILL once the grace
/// period is over (a container that only notes the SIGTERM is killed: 137).
fn container_lifecycle_and_stop_grace_period(case: Case) {
    let Some(env) = CriEnv::for_case("container_lifecycle", case) else { return };
    let pod = env.run_pod("pod");
    let shim = env.shim_of(&pod);

    // Each says "ready" once its trap is set: a SIGTERM before that would be ignored (PID 1).
    let config = env.container_config("polite", 0, &format!("trap 'exit 42' TERM; echo ready; {LOOP}"));
    let polite_log = env.log_path(&pod, &config);
    let polite = env.client.create_container(&pod.id, config, &pod.config).expect("CreateContainer");
    assert_eq!(env.container_status(&polite).state, ContainerState::ContainerCreated as i32);
    env.client.start_container(&polite).expect("StartContainer");
    let status = env.wait_running(&polite, secs(30));
    assert!(status.started_at > 0, "{status:?}");
    let pid = env.container_pid(&polite);
    assert_eq!(parent_pid(pid), Some(shim), "the container runs under the pod's shim");
    logged(&polite_log, "ready");
    env.client.stop_container(&polite, 30).expect("StopContainer");
    let status = env.wait_container_state(&polite, EXITED, secs(30));
    assert_eq!(status.exit_code, 42, "SIGTERM reached the container's trap: {status:?}");
    assert!(status.finished_at >= status.started_at, "{status:?}");
    assert!(!pid_alive(pid), "the container's process {pid} is gone");

    let config = env.container_config("stubborn", 0, &format!("trap 'echo got-TERM' TERM; echo ready; {LOOP}"));
    let log = env.log_path(&pod, &config);
    let stubborn = env.start_container(&pod, config);
    env.wait_running(&stubborn, secs(30));
    logged(&log, "ready");
    env.client.stop_container(&stubborn, 2).expect("StopContainer");
    let status = env.wait_container_state(&stubborn, EXITED, secs(30));
    assert_eq!(status.exit_code, 137, "SIGKILL after the grace period: {status:?}");
    logged(&log, "got-TERM"); // SIGTERM came first: the trap wrote to the log

    for id in [&polite, &stubborn] {
        env.client.remove_container(id).unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
        let err = env.client.container_status(id).expect_err("removed");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }
    assert!(env.client.list_containers(&pod.id).unwrap().is_empty());
    assert!(pid_alive(shim), "the sandbox's shim lives on");
}

/// ExecSync: stdout, stderr and exit code come back; the exec runs inside the container; a
/// timeout fails the call and kills the process, and the container runs on.
fn exec_sync_output_exit_code_and_timeout(case: Case) {
    let Some(env) = CriEnv::for_case("exec_sync", case) else { return };
    let pod = env.run_pod("pod");
    let id = running(&env, &pod, "app", LOOP);

    let r = env.client.exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 0).expect("ExecSync");
    assert_eq!((r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()), (3, &b"out\n"[..], &b"err\n"[..]), "{r:?}");
    let r = env.client.exec_sync(&id, &["cat", "/proc/1/cmdline"], 10).expect("ExecSync");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("while"), "pid 1 of the exec is the container's init: {r:?}");

    let err = env.client.exec_sync(&id, &["sleep", "600"], 1).expect_err("ExecSync past its timeout fails");
    assert!(err.message().contains("timeout"), "{err}");
    let ps = env.client.exec_sync(&id, &["ps", "-o", "args"], 10).expect("ExecSync ps");
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(!ps.lines().any(|l| l.trim() == "sleep 600"), "the timed-out exec was killed:\n{ps}");
    assert_eq!(env.container_status(&id).state, RUNNING as i32);
}

/// ContainerStats: the container's cpu and memory usage, from the shim's cgroup metrics.
fn container_stats(case: Case) {
    let Some(env) = CriEnv::for_case("container_stats", case) else { return };
    let pod = env.run_pod("pod");
    let id = running(&env, &pod, "app", LOOP);
    let stats = env.client.container_stats(&id).expect("ContainerStats");
    assert_eq!(stats.attributes.as_ref().map(|a| a.id.as_str()), Some(id.as_str()), "{stats:?}");
    let cpu = stats.cpu.as_ref().expect("cpu stats");
    assert!(cpu.timestamp > 0, "{stats:?}");
    assert!(cpu.usage_core_nano_seconds.as_ref().is_some_and(|v| v.value > 0), "cpu usage: {stats:?}");
    let memory = stats.memory.as_ref().expect("memory stats");
    assert!(memory.working_set_bytes.as_ref().is_some_and(|v| v.value > 0), "working set: {stats:?}");
    assert!(memory.usage_bytes.as_ref().is_some_and(|v| v.value > 0), "usage: {stats:?}");
}

/// UpdateContainerResources reaches the container's cgroup (below the pod's cgroup parent).
fn update_container_resources(case: Case) {
    let Some(env) = CriEnv::for_case("update_resources", case) else { return };
    let pod = env.run_pod("pod");
    let id = running(&env, &pod, "app", LOOP);
    let pid = env.container_pid(&id);
    let memory = cgroup_dir(pid, "memory");
    assert!(
        memory.ends_with(format!("{}/{id}", env.plugin().tag)),
        "the container's cgroup is <cgroup parent>/<id>: {}",
        memory.display()
    );
    let resources = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    env.client.update_container_resources(&id, resources).expect("UpdateContainerResources");
    if is_v2() {
        assert_eq!(read(&memory, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read(&memory, "cpu.max"), "50000 100000");
        assert_eq!(read(&memory, "cpuset.cpus"), "0");
    } else {
        assert_eq!(read(&memory, "memory.limit_in_bytes"), (64u64 << 20).to_string());
        let cpu = cgroup_dir(pid, "cpu");
        assert_eq!(read(&cpu, "cpu.shares"), "512");
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&cgroup_dir(pid, "cpuset"), "cpuset.cpus"), "0");
    }
    assert_eq!(env.container_status(&id).state, RUNNING as i32);
}

/// The numbers of the `line-N` records of a CRI log, checking the format of each record:
/// `<RFC 3339 time> stdout F line-N`.
fn logged_lines(text: &str) -> Vec<u64> {
    text.lines()
        .map(|record| {
            let fields: Vec<&str> = record.splitn(4, ' ').collect();
            assert_eq!(fields.len(), 4, "a CRI log record: {record:?}");
            assert!(fields[0].contains('T') && fields[0].ends_with('Z'), "a timestamp: {record:?}");
            assert_eq!((fields[1], fields[2]), ("stdout", "F"), "{record:?}");
            fields[3].strip_prefix("line-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{record:?}"))
        })
        .collect()
}

/// containerd writes the container's output (the shim's stdio) to the CRI log file;
/// ReopenContainerLog after a rotation makes it write a new file, losing nothing.
fn reopen_container_log(case: Case) {
    let Some(env) = CriEnv::for_case("reopen_log", case) else { return };
    let pod = env.run_pod("pod");
    let config = env.container_config("logger", 0, "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.05; done");
    let log = env.log_path(&pod, &config);
    let id = env.start_container(&pod, config);
    env.wait_running(&id, secs(30));
    let enough = |path: &Path| {
        wait_until(secs(30), || fs::read_to_string(path).ok().filter(|t| t.lines().count() >= 5))
            .unwrap_or_else(|| panic!("{} never had 5 lines: {:?}", path.display(), fs::read_to_string(path)))
    };
    enough(&log);
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    env.client.reopen_container_log(&id).expect("ReopenContainerLog");
    let new = logged_lines(&enough(&log));
    let old = logged_lines(&fs::read_to_string(&rotated).unwrap());
    let in_order = |lines: &[u64]| lines.windows(2).all(|w| w[1] == w[0] + 1);
    assert!(old.first() == Some(&0) && in_order(&old), "the first file holds line-0 on, in order: {old:?}");
    assert!(in_order(&new), "{new:?}");
    assert_eq!(new[0], old[old.len() - 1] + 1, "the new file goes on where the rotated one stops");
}

/// A container killed by its memory limit is reported OOMKilled (the shim's OOM event
/// before its exit) with status 137.
fn oom_killed_reason(case: Case) {
    let Some(env) = CriEnv::for_case("oom_killed", case) else { return };
    let pod = env.run_pod("pod");
    let mut config = env.container_config("hog", 0, "exec tail /dev/zero");
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.resources = Some(LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() });
    let id = env.start_container(&pod, config);
    let status = env.wait_container_state(&id, EXITED, secs(60));
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
}

/// The kubelet restarts a container by creating the next attempt in the running pod: the
/// first attempt exited (and its task was deleted), the pod's shim serves the new one.
fn container_restart_in_running_pod(case: Case) {
    let Some(env) = CriEnv::for_case("container_restart", case) else { return };
    let pod = env.run_pod("pod");
    let created_at = env.sandbox_status(&pod).created_at;
    let shim = env.shim_of(&pod);
    let first_config = env.container_config("app", 0, "echo attempt-0; exit 3");
    let first = env.start_container(&pod, first_config.clone());
    let status = env.wait_container_state(&first, EXITED, secs(30));
    assert_eq!(status.exit_code, 3, "{status:?}");

    let second_config = env.container_config("app", 1, &format!("echo attempt-1; {LOOP}"));
    let second = env.start_container(&pod, second_config.clone());
    env.wait_running(&second, secs(30));
    assert_eq!(parent_pid(env.container_pid(&second)), Some(shim), "the same shim serves the new attempt");
    assert_eq!(env.sandbox_status(&pod).created_at, created_at, "the sandbox was not restarted");
    assert_eq!(env.shim_pids(), [shim]);

    let mut attempts: Vec<(u32, i32)> = env
        .client
        .list_containers(&pod.id)
        .unwrap()
        .iter()
        .map(|c| (c.metadata.as_ref().unwrap().attempt, c.state))
        .collect();
    attempts.sort();
    assert_eq!(attempts, [(0, EXITED as i32), (1, RUNNING as i32)]);
    for (config, text) in [(&first_config, "attempt-0"), (&second_config, "attempt-1")] {
        logged(&env.log_path(&pod, config), text);
    }
    env.client.remove_container(&first).expect("RemoveContainer of the first attempt");
    assert_eq!(env.container_status(&second).state, RUNNING as i32);
    let ctr_containers = env.containerd.ctr(K8S_NAMESPACE).containers();
    assert!(!ctr_containers.contains(&first), "{ctr_containers:?}");
    assert!(ctr_containers.contains(&second), "{ctr_containers:?}");
}

/// Exec: the streaming server's WebSocket (v4.channel.k8s.io) carries the exec's stdout and
/// stderr, then its exit status.
fn exec_stream(case: Case) {
    let Some(env) = CriEnv::for_case("exec_stream", case) else { return };
    let pod = env.run_pod("pod");
    let id = running(&env, &pod, "app", LOOP);
    let url = env.client.exec_url(&id, &["sh", "-c", "echo out-line; echo err-line >&2; exit 5"]).expect("Exec");
    let prefix = format!("http://127.0.0.1:{}/exec/", env.plugin().stream_port);
    assert!(url.starts_with(&prefix), "{url}");
    let stream = Stream::connect(&url);
    assert_eq!(stream.protocol, tether_tests::cri::stream::PROTOCOL);
    let out = stream.finish(secs(30));
    assert!(out.closed, "the server closes the stream when the exec ends: {out:?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("out-line\n", "err-line\n"), "{out:?}");
    assert_eq!(out.exit_code(), Some(5), "{out:?}");

    let url = env.client.exec_url(&id, &["cat", "/proc/1/cmdline"]).expect("Exec");
    let out = Stream::connect(&url).finish(secs(30));
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("while"), "{out:?}");
}

/// Attach: the container's live stdin and output over the streaming server; the stream
/// ends, successfully, when the container exits.
fn attach_stream(case: Case) {
    let Some(env) = CriEnv::for_case("attach_stream", case) else { return };
    let pod = env.run_pod("pod");
    // Steps driven by files: containerd's attach cuts stderr off once stdout has ended (its
    // stdin copier removes both writers), so stderr is checked while the container runs.
    let script = "read line; echo got:$line; \
                  while [ ! -e /tmp/step1 ]; do echo tick; sleep 0.1; done; echo to-stderr >&2; \
                  while [ ! -e /tmp/step2 ]; do sleep 0.1; done";
    let mut config = env.container_config("app", 0, script);
    config.stdin = true;
    let id = env.start_container(&pod, config);
    env.wait_running(&id, secs(30));
    let url = env.client.attach_url(&id, true).expect("Attach");
    let mut stream = Stream::connect(&url);
    assert_eq!(stream.protocol, tether_tests::cri::stream::PROTOCOL);
    stream.send_stdin(b"hello\n");
    let expected = "got:hello\ntick\ntick\n";
    let so_far = stream.read_until(secs(30), |o| o.stdout.contains(expected));
    assert!(so_far.stdout.contains(expected), "stdin reached the container, its output came back: {so_far:?}");
    env.client.exec_sync(&id, &["touch", "/tmp/step1"], 10).expect("ExecSync touch");
    let so_far = stream.read_until(secs(30), |o| o.stderr.contains("to-stderr"));
    assert_eq!(so_far.stderr, "to-stderr\n", "{so_far:?}");
    env.client.exec_sync(&id, &["touch", "/tmp/step2"], 10).expect("ExecSync touch");
    let out = stream.finish(secs(30));
    assert!(out.closed, "the stream ends with the container: {out:?}");
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    let status = env.wait_container_state(&id, EXITED, secs(30));
    assert_eq!(status.exit_code, 0, "{status:?}");
}

/// A master/worker server in a PID namespace its container does not own: the pod's
/// (shareProcessNamespace) or the host's (hostPID).
fn stop_with_a_worker_in_the_pods_pid_namespace(case: Case) {
    stop_with_a_worker(case, "shared_pid", NamespaceMode::Pod);
}

fn stop_with_a_worker_in_the_hosts_pid_namespace(case: Case) {
    stop_with_a_worker(case, "host_pid", NamespaceMode::Node);
}

/// The container's init starts a long-lived worker that shares its output, then exits on
/// SIGTERM. No PID namespace of its own ends the worker with it: the shim kills what is left
/// in the container's cgroup before it reports the exit (as containerd's Go shim does). So
/// StopContainer returns within the grace period (containerd 2.x waits for the output to
/// close), the exit status is the init's, and the pod stops and goes away with nothing left.
fn stop_with_a_worker(case: Case, test: &str, pid_namespace: NamespaceMode) {
    let Some(env) = CriEnv::for_case(test, case) else { return };
    let pod = env.run_pod_with_pid("pod", pid_namespace);
    let script = format!("sleep 100000 & trap 'exit 0' TERM; echo ready; {LOOP}");
    let config = with_pid_namespace(env.container_config("server", 0, &script), pid_namespace);
    let log = env.log_path(&pod, &config);
    let id = env.start_container(&pod, config);
    env.wait_running(&id, secs(30));
    logged(&log, "ready");
    let init = env.container_pid(&id);
    let is_worker =
        |pid: &u32| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x00100000"));
    let worker =
        children_of(init).into_iter().find(is_worker).unwrap_or_else(|| panic!("no worker under the init {init}"));

    let grace = 10;
    let started = std::time::Instant::now();
    env.client.stop_container(&id, grace).expect("StopContainer");
    let took = started.elapsed();
    assert!(took < secs(grace as u64 / 2), "StopContainer took {took:?} for an init that exits on SIGTERM");
    let status = env.wait_container_state(&id, EXITED, secs(10));
    assert_eq!(status.exit_code, 0, "the init's own exit status: {status:?}");
    assert!(!pid_alive(worker), "the worker {worker} was killed with the init");

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
    assert!(!pid_alive(init), "the init {init} is gone");
}

/// A handler whose options table is tether's config itself, with no ConfigPath: containerd
/// 2.x sends that table as the TOML of runtimeoptions' `config_body`, and the pod's shim runs
/// the executor it names. (1.x sends a config path alone.)
fn runtime_config_inline_in_the_handler(case: Case) {
    if !case.daemon.is_v2() || !Runtime::from_env().is_tether() {
        return skip("runtime_config_inline_in_the_handler", "containerd 2.x passes tether's config inline");
    }
    if case.sandboxer == Sandboxer::Shim {
        // docs/sandbox.md, "Left".
        return skip("config_body", "containerd 2.1 fails a sandboxed task whose handler has tether's options");
    }
    let Some(mut env) = CriEnv::for_case("config_body", case) else { return };
    env.handler = inline_handler_for(case.executor);
    let pod = env.run_pod("pod");
    let id = running(&env, &pod, "app", LOOP);
    let expected = case.executor.shown_as();
    assert_eq!(env.shim_executors(&id), [expected, expected], "the sandbox and the container");
}

/// The lines of `/proc/<pid>/status` that say how a process is confined, read by ExecSync.
fn confinement(env: &CriEnv, id: &str, pid: &str) -> Vec<String> {
    let r = env.client.exec_sync(id, &["cat", &format!("/proc/{pid}/status")], 10).expect("ExecSync cat");
    assert_eq!(r.exit_code, 0, "{r:?}");
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    let wanted = ["Seccomp", "NoNewPrivs", "Cap"];
    text.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))).map(str::to_string).collect()
}

/// A pod container with seccomp RuntimeDefault and one with a Localhost profile (allow all but
/// mkdir): each exec'd process (ExecSync, as probes and `kubectl exec` are) runs under the
/// container's filter, with the init's no_new_privs (unset here, so the filter is installed
/// without it) and capabilities.
fn seccomp_reaches_exec_processes(case: Case) {
    let Some(env) = CriEnv::for_case("seccomp_exec", case) else { return };
    let profile = env.containerd.dir().join("no-mkdir.json");
    let rule = r#"{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}"#;
    fs::write(&profile, format!(r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{rule}]}}"#)).unwrap();
    let pod = env.run_pod("pod");
    let profiles = [
        ("default", SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, ..Default::default() }),
        (
            "localhost",
            SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: profile.display().to_string(),
            },
        ),
    ];
    for (name, seccomp) in profiles {
        let mut config = env.container_config(name, 0, LOOP);
        let security = config.linux.as_mut().and_then(|l| l.security_context.as_mut()).unwrap();
        security.seccomp = Some(seccomp);
        let id = env.start_container(&pod, config);
        env.wait_running(&id, secs(30));
        let init = confinement(&env, &id, "1");
        assert!(
            init.iter().any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
            "{name}: the init is filtered: {init:?}"
        );
        assert!(init.iter().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "0"])), "{name}: {init:?}");
        assert_eq!(confinement(&env, &id, "self"), init, "{name}: an exec'd process is confined as the init is");
        if name == "localhost" {
            let r = env.client.exec_sync(&id, &["mkdir", "/dev/shm/d"], 10).expect("ExecSync mkdir");
            assert_ne!(r.exit_code, 0, "the profile refuses mkdir to an exec'd process: {r:?}");
            assert!(String::from_utf8_lossy(&r.stderr).contains("not permitted"), "{r:?}");
        }
    }
    env.client.stop_pod_sandbox(&pod.id).unwrap();
    env.client.remove_pod_sandbox(&pod.id).unwrap();
}

/// HostToContainer and Bidirectional mounts (CRI sets `rslave`/`rshared` on the mount and as
/// the rootfs propagation): a mount the host makes below the mount's source shows in the
/// container; one the container makes shows on the host only for Bidirectional.
fn mount_propagation(case: Case) {
    let Some(env) = CriEnv::for_case("mount_propagation", case) else { return };
    let shared = SharedDir::new(env.containerd.dir().join("shared"));
    let pod = env.run_pod("pod");
    let kinds = [
        ("to-container", MountPropagation::PropagationHostToContainer, false),
        ("both", MountPropagation::PropagationBidirectional, true),
    ];
    for (name, propagation, outward) in kinds {
        let src = shared.0.join(name);
        fs::create_dir_all(&src).unwrap();
        let mut config = env.container_config(name, 0, LOOP);
        config.mounts.push(Mount {
            container_path: "/m".into(),
            host_path: src.display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        });
        let security = config.linux.as_mut().and_then(|l| l.security_context.as_mut()).unwrap();
        security.capabilities = Some(Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() });
        let id = env.start_container(&pod, config);
        env.wait_running(&id, secs(30));

        host_sh(&mount_with_mark(&src, "from-host"));
        let r = env.client.exec_sync(&id, &["cat", "/m/from-host/mark"], 10).expect("ExecSync cat");
        assert_eq!(r.exit_code, 0, "{name}: a mount the host made shows in the container: {r:?}");
        let script = mount_with_mark(Path::new("/m"), "from-container");
        let r = env.client.exec_sync(&id, &["sh", "-c", &script], 10).expect("ExecSync mount");
        assert_eq!(r.exit_code, 0, "{name}: {r:?}");
        let mark = src.join("from-container/mark");
        assert_eq!(mark.exists(), outward, "{name}: a mount the container made shows on the host");
    }
    env.client.stop_pod_sandbox(&pod.id).unwrap();
    env.client.remove_pod_sandbox(&pod.id).unwrap();
}
