//! Pods without a pause container: containerd 2.x's CRI plugin with a runtime handler whose
//! `sandboxer = "shim"` drives tether's Sandbox API (docs/sandbox.md). The pod is the shim:
//! its IPC and UTS namespaces are the shim's, created at StartSandbox; its containers join
//! them through `/proc/<shim pid>/ns`.

use std::fs;
use std::time::Instant;

use k8s_cri::v1::{ContainerState, DnsConfig, NamespaceMode, PodSandboxState};
use tether_protos::api::{self, Status};
use tether_protos::cgroups::metrics as v1;
use tether_protos::cgroups_v2::metrics as v2;
use tether_protos::{protobuf::Message, ttrpc::Code};
use tether_tests::cri::{with_pid_namespace, CriClient, CriEnv, Pod, K8S_NAMESPACE};
use tether_tests::env::{children_of, parent_pid, pid_alive};
use tether_tests::shim::{code_of, ShimClient};
use tether_tests::{secs, wait_until, Case};

tether_tests::for_each_sandbox_case!(
    pod_without_pause,
    stop_pod_sandbox_stops_what_is_left,
    containerd_restart_mid_pod,
    sandbox_metrics,
    pod_files,
    shared_pid_namespace,
    host_ipc
);

/// A container that runs until stopped.
const LOOP: &str = "while :; do sleep 0.1; done";

/// The namespace `kind` (`ipc`, `uts`, `net`) of `pid` ("self" for the test).
fn ns(pid: &str, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .display()
        .to_string()
}

/// RunPodSandbox starts no process: the sandbox's pid is its shim's, which has no child until
/// a container starts. The shim holds a new IPC and UTS namespace (and joins the network
/// namespace containerd made); both containers of the pod join them. StopPodSandbox stops the
/// containers and reports the pod not ready; RemovePodSandbox ends the shim, and nothing is
/// left.
fn pod_without_pause(case: Case) {
    let Some(env) = CriEnv::for_case("pod_without_pause", case) else { return };
    let pod = env.run_pod("pod1");
    let status = env.client.pod_sandbox_status(&pod.id).expect("PodSandboxStatus").status.expect("a status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "{status:?}");
    assert_eq!(status.runtime_handler, env.handler);
    // containerd 2.1's verbose PodSandboxStatus carries no pid for a shim sandboxer's pod.
    assert_eq!(env.shim_pids().len(), 1, "one shim for the pod: {:?}", env.containerd.shim_processes());
    let pid = env.shim_of(&pod);
    // The shim's only child, for a few milliseconds after it starts, is its `cgroup-move`
    // helper (shim/src/cgroup.rs); a pause process would stay.
    let childless = wait_until(secs(5), || children_of(pid).is_empty().then_some(()));
    assert!(childless.is_some(), "no pause process: the shim has children {:?}", children_of(pid));
    let shim = pid.to_string();
    assert_ne!(ns(&shim, "ipc"), ns("self", "ipc"), "the pod has an IPC namespace of its own");
    assert_ne!(ns(&shim, "net"), ns("self", "net"), "the shim is in the pod's network namespace");
    assert_ne!(ns(&shim, "uts"), ns("self", "uts"), "the pod has a UTS namespace of its own");

    let mut containers = Vec::new();
    for name in ["c1", "c2"] {
        let id = env.start_container(&pod, env.container_config(name, 0, LOOP));
        env.wait_running(&id, secs(30));
        let cpid = env.container_pid(&id).to_string();
        assert_eq!(parent_pid(env.container_pid(&id)), Some(pid), "{name} runs under the pod's shim");
        assert_eq!(ns(&cpid, "ipc"), ns(&shim, "ipc"), "{name} is in the pod's IPC namespace");
        assert_eq!(ns(&cpid, "net"), ns(&shim, "net"), "{name} is in the pod's network namespace");
        assert_eq!(ns(&cpid, "uts"), ns(&shim, "uts"), "{name} is in the pod's UTS namespace");
        containers.push(id);
    }
    // The handler has no options: the node's default config picks the executor.
    let expected = case.executor.shown_as();
    assert_eq!(env.shim_executors(&containers[0]), [expected, expected], "both containers' executor");

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    let status = env.client.pod_sandbox_status(&pod.id).expect("PodSandboxStatus").status.unwrap();
    assert_eq!(status.state, PodSandboxState::SandboxNotready as i32, "{status:?}");
    for id in &containers {
        assert_eq!(env.container_status(id).state, ContainerState::ContainerExited as i32, "{id}");
    }
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    assert!(
        wait_until(secs(10), || (!pid_alive(pid)).then_some(())).is_some(),
        "the shim ends with its pod: {:?}",
        env.containerd.shim_processes()
    );
    let leftover = env.containerd.ctr(K8S_NAMESPACE).containers();
    assert!(leftover.is_empty(), "no containerd container is left: {leftover:?}");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
}

/// StopPodSandbox stops what is left of the pod. The CRI plugin stops the containers it knows
/// of before it calls StopSandbox, so the task left here is one another client created in the
/// sandbox through its Task API endpoint (as containerd does for a sandboxed task): it runs in
/// the pod's namespaces and ignores SIGTERM. The shim's StopSandbox SIGKILLs it and records its
/// exit before it returns, so StopPodSandbox returns promptly with the task stopped, and the
/// pod goes with nothing left behind.
fn stop_pod_sandbox_stops_what_is_left(case: Case) {
    let Some(env) = CriEnv::for_case("stop_what_is_left", case) else { return };
    let pod = env.run_pod("pod");
    let known = env.start_container(&pod, env.container_config("known", 0, LOOP));
    env.wait_running(&known, secs(30));
    let shim = ShimClient::connect(&sandbox_address(&env, &pod)).expect("connecting to the pod's shim");
    let id = "stray";
    let bundle = env.containerd.dir().join("work").join(id);
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    // The known container's spec (the pod's namespaces), with a command that ignores SIGTERM
    // and a cgroup of its own; as another client's, without the CRI's annotations and the
    // pod's files (its read-only rootfs has no /etc/hosts to mount them on).
    let config = env.containerd.bundle(K8S_NAMESPACE, &known).join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(config).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(["sh", "-c", format!("trap '' TERM; {LOOP}")]);
    spec["annotations"] = serde_json::json!({});
    let pod_files = ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"];
    spec["mounts"].as_array_mut().unwrap().retain(|m| !pod_files.iter().any(|f| m["destination"] == *f));
    let cgroup = spec["linux"]["cgroupsPath"].as_str().unwrap().replace(&known, id);
    spec["linux"]["cgroupsPath"] = cgroup.into();
    fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let rootfs = api::Mount {
        type_: "bind".into(),
        source: env.containerd.dir().join("images/rootfs").display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    };
    let create = api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        rootfs: vec![rootfs],
        ..Default::default()
    };
    shim.create(&create).expect("Create in the sandbox's shim");
    let pid = shim.start(id).expect("Start");
    assert_eq!(parent_pid(pid), Some(env.shim_of(&pod)), "the task runs in the pod's shim");

    let started = Instant::now();
    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    let took = started.elapsed();
    assert!(took < secs(5), "StopPodSandbox took {took:?}");
    let state: api::StateResponse =
        shim.call("State", &api::StateRequest { id: id.into(), ..Default::default() }).expect("State");
    assert_eq!(state.status.enum_value(), Ok(Status::STOPPED), "stopped with its pod: {state:?}");
    assert_eq!(state.exit_status, 137, "SIGKILL: {state:?}");
    assert!(!pid_alive(pid), "the task's process {pid} is gone");
    assert_eq!(env.container_status(&known).state, ContainerState::ContainerExited as i32);
    shim.delete(id).expect("Delete");
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
}

/// The address of the shim serving `pod`'s sandbox, from the sandbox's bundle.
fn sandbox_address(env: &CriEnv, pod: &Pod) -> String {
    let bundle = env.containerd.dir().join("state/io.containerd.sandbox.controller.v1.shim").join(K8S_NAMESPACE);
    let file = bundle.join(&pod.id).join("address");
    fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).trim().to_string()
}

/// containerd restarts (killed, as a crash) in the middle of a pod's life: it finds the pod's
/// shim again, the pod is ready and its container runs on; a new container starts in the pod,
/// and the pod stops and goes away as usual, with nothing left behind.
fn containerd_restart_mid_pod(case: Case) {
    let Some(mut env) = CriEnv::for_case("restart_mid_pod", case) else { return };
    let pod = env.run_pod("pod");
    let before = env.start_container(&pod, env.container_config("before", 0, LOOP));
    env.wait_running(&before, secs(30));
    let (shim, pid) = (env.shim_of(&pod), env.container_pid(&before));

    env.containerd.restart();
    env.client = CriClient::connect(&env.containerd.address());
    let ready = |env: &CriEnv| {
        let status = env.client.pod_sandbox_status(&pod.id).ok()?.status?;
        (status.state == PodSandboxState::SandboxReady as i32).then_some(())
    };
    assert!(
        wait_until(secs(30), || ready(&env)).is_some(),
        "the pod is ready after the restart: {:?}",
        env.client.pod_sandbox_status(&pod.id)
    );
    assert_eq!(env.shim_of(&pod), shim, "the same shim serves the pod");
    assert_eq!(env.container_status(&before).state, ContainerState::ContainerRunning as i32);
    assert!(pid_alive(pid), "the container's process {pid} runs on");

    let after = env.start_container(&pod, env.container_config("after", 0, LOOP));
    env.wait_running(&after, secs(30));
    assert_eq!(parent_pid(env.container_pid(&after)), Some(shim), "the new container runs under the pod's shim");

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    let status = env.sandbox_status(&pod);
    assert_eq!(status.state, PodSandboxState::SandboxNotready as i32, "{status:?}");
    for id in [&before, &after] {
        assert_eq!(env.container_status(id).state, ContainerState::ContainerExited as i32, "{id}");
    }
    assert!(!pid_alive(pid), "the container's process {pid} is gone");
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    assert!(wait_until(secs(10), || (!pid_alive(shim)).then_some(())).is_some(), "the shim ends with its pod");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
}

/// SandboxMetrics: the pod's cgroup metrics, in the message containerd decodes (cgroup v1 or
/// v2 `Metrics`), which hold its running container's cpu and memory; a sandbox the shim does
/// not serve is not found.
fn sandbox_metrics(case: Case) {
    let Some(env) = CriEnv::for_case("sandbox_metrics", case) else { return };
    let pod = env.run_pod("pod");
    let id = env.start_container(&pod, env.container_config("busy", 0, "while :; do :; done"));
    env.wait_running(&id, secs(30));
    let stats = env.client.container_stats(&id).expect("ContainerStats");
    let container_cpu = stats.cpu.and_then(|c| c.usage_core_nano_seconds).map_or(0, |v| v.value);
    assert!(container_cpu > 0, "the container has used the cpu");
    let shim = ShimClient::connect(&sandbox_address(&env, &pod)).expect("connecting to the pod's shim");
    let (metric_id, data) = shim.sandbox_metrics(&pod.id).expect("SandboxMetrics");
    assert_eq!(metric_id, pod.id);
    let (cpu_ns, memory) = match data.type_url.as_str() {
        "io.containerd.cgroups.v1.Metrics" => {
            let m = v1::Metrics::parse_from_bytes(&data.value).unwrap();
            (m.cpu.usage.total, m.memory.usage.usage)
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let m = v2::Metrics::parse_from_bytes(&data.value).unwrap();
            (m.cpu.usage_usec * 1000, m.memory.usage)
        }
        other => panic!("SandboxMetrics data of type {other:?}"),
    };
    assert!(cpu_ns >= container_cpu, "the pod's cpu ({cpu_ns} ns) holds its container's ({container_cpu} ns)");
    assert!(memory > 0, "the pod's memory usage");
    let err = shim.sandbox_metrics("another-sandbox").expect_err("another sandbox");
    assert_eq!(code_of(&err), Code::NOT_FOUND, "{err}");
}

/// The pod's files, as the CRI gives a pause pod's containers: the pod's hostname in
/// /etc/hostname, its DNS settings in /etc/resolv.conf, and one /dev/shm that the pod's
/// containers share; the shm goes with the pod.
fn pod_files(case: Case) {
    let Some(env) = CriEnv::for_case("pod_files", case) else { return };
    let mut config = env.pod_config("files");
    config.hostname = "web-1".into();
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["ns1.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let id = env.client.run_pod_sandbox(config.clone(), env.handler).expect("RunPodSandbox");
    let pod = Pod { id, config };
    let run = |id: &str, script: &str| {
        let r = env.client.exec_sync(id, &["sh", "-c", script], 10).expect("ExecSync");
        assert_eq!(r.exit_code, 0, "{script}: {}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    let (c1, c2) = (
        env.start_container(&pod, env.container_config("c1", 0, LOOP)),
        env.start_container(&pod, env.container_config("c2", 0, LOOP)),
    );
    env.wait_running(&c1, secs(30));
    env.wait_running(&c2, secs(30));
    assert_eq!(run(&c1, "cat /etc/hostname"), "web-1\n");
    assert_eq!(
        run(&c2, "cat /etc/resolv.conf"),
        "search ns1.svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    run(&c1, "echo shared > /dev/shm/note");
    assert_eq!(run(&c2, "cat /dev/shm/note"), "shared\n", "the pod's containers share its /dev/shm");

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
}

/// A pod whose containers share a PID namespace (shareProcessNamespace): its first process is
/// the shim's pod init, each container sees the other's processes, and the init, the
/// namespace and everything in it go with the pod.
fn shared_pid_namespace(case: Case) {
    let Some(env) = CriEnv::for_case("shared_pid_namespace", case) else { return };
    let pod = env.run_pod_with_pid("shared", NamespaceMode::Pod);
    let shim = env.shim_of(&pod);
    let init = wait_until(secs(5), || children_of(shim).into_iter().find(|c| is_pod_init(*c)))
        .unwrap_or_else(|| panic!("no pod init under the shim {shim}: {:?}", children_of(shim)));
    assert_eq!(ns(&init.to_string(), "net"), ns(&shim.to_string(), "net"), "the init is in the pod's network");
    assert_ne!(ns(&init.to_string(), "pid"), ns("self", "pid"), "the init has a PID namespace of its own");
    let start = |name: &str, script: &str| {
        let config = with_pid_namespace(env.container_config(name, 0, script), NamespaceMode::Pod);
        let id = env.start_container(&pod, config);
        env.wait_running(&id, secs(30));
        id
    };
    let (c1, c2) = (start("c1", "while :; do sleep 100001; done"), start("c2", "while :; do sleep 100002; done"));
    for id in [&c1, &c2] {
        let cpid = env.container_pid(id).to_string();
        assert_eq!(ns(&cpid, "pid"), ns(&init.to_string(), "pid"), "{id} is in the pod's PID namespace");
    }
    let r = env.client.exec_sync(&c1, &["sh", "-c", "cat /proc/1/cmdline; echo; ps -o args"], 10).expect("ExecSync");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.lines().next().is_some_and(|l| l.contains("pod-init")), "PID 1 is the pod's init: {out}");
    assert!(out.contains("sleep 100002"), "c1 sees c2's process: {out}");

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    for id in [&c1, &c2] {
        assert_eq!(env.container_status(id).state, ContainerState::ContainerExited as i32, "{id}");
    }
    assert!(wait_until(secs(10), || (!pid_alive(init)).then_some(())).is_some(), "the init {init} ends with the pod");
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
}

/// Whether `pid` is a pod init (`containerd-shim-tether-v2 pod-init`).
fn is_pod_init(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(&b"pod-init"[..]))
}

/// A hostIPC pod: the shim and the pod's containers stay in the node's IPC namespace, and the
/// pod gets no shm of its own: its containers keep the node's /dev/shm that the CRI binds for
/// them; its network and UTS namespaces are still the pod's.
fn host_ipc(case: Case) {
    let Some(env) = CriEnv::for_case("host_ipc", case) else { return };
    let ipc = |options: Option<&mut k8s_cri::v1::NamespaceOption>| {
        options.expect("the harness' configs name their namespaces").ipc = NamespaceMode::Node as i32;
    };
    let mut config = env.pod_config("hostipc");
    ipc(config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()));
    let id = env.client.run_pod_sandbox(config.clone(), env.handler).expect("RunPodSandbox");
    let pod = Pod { id, config };
    let shim = env.shim_of(&pod).to_string();
    assert_eq!(ns(&shim, "ipc"), ns("self", "ipc"), "the shim stays in the node's IPC namespace");
    assert_ne!(ns(&shim, "uts"), ns("self", "uts"), "the pod has a UTS namespace of its own");
    let mut container = env.container_config("c", 0, LOOP);
    ipc(container.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()));
    let c = env.start_container(&pod, container);
    env.wait_running(&c, secs(30));
    let cpid = env.container_pid(&c).to_string();
    assert_eq!(ns(&cpid, "ipc"), ns("self", "ipc"), "the container is in the node's IPC namespace");
    let bundle = env.containerd.bundle(K8S_NAMESPACE, &c);
    let spec: serde_json::Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let shm = spec["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/dev/shm").cloned();
    assert_eq!(
        shm.map(|m| m["source"].clone()),
        Some("/dev/shm".into()),
        "the node's /dev/shm, as the CRI binds it: {spec}"
    );

    env.client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    env.client.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    let left = env.leftovers();
    assert!(left.is_empty(), "the removed pod left behind:\n  {}", left.join("\n  "));
}
