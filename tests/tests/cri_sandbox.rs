//! Pods without a pause container: containerd 2.x's CRI plugin with a runtime handler whose
//! `sandboxer = "shim"` drives tether's Sandbox API (docs/sandbox.md). The pod is the shim:
//! its IPC and UTS namespaces are the shim's, created at StartSandbox; its containers join
//! them through `/proc/<shim pid>/ns`.

use std::fs;

use k8s_cri::v1::{ContainerState, NamespaceMode, NamespaceOption, PodSandboxState};
use tether_tests::cri::config::sandbox_handler_for;
use tether_tests::cri::{CriEnv, Pod, K8S_NAMESPACE};
use tether_tests::env::{children_of, parent_pid, pid_alive, skip};
use tether_tests::{secs, wait_until, Case, Daemon, Executor};

tether_tests::for_each_executor!(pod_without_pause);

/// A container that runs until stopped.
const LOOP: &str = "while :; do sleep 0.1; done";

/// The namespace `kind` (`ipc`, `uts`, `net`) of `pid` ("self" for the test).
fn ns(pid: &str, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .display()
        .to_string()
}

/// A pod's (or its container's) network: the pod's own.
fn set_network(options: Option<&mut NamespaceOption>) {
    options.expect("the harness' configs name their namespaces").network = NamespaceMode::Pod as i32;
}

/// RunPodSandbox starts no process: the sandbox's pid is its shim's, which has no child until
/// a container starts. The shim holds a new IPC and UTS namespace (and joins the network namespace containerd made); both containers of the pod join them. StopPodSandbox stops the containers
/// and reports the pod not ready; RemovePodSandbox ends the shim, and nothing is left.
fn pod_without_pause(case: Case) {
    if case.daemon != Daemon::V2 {
        skip("pod_without_pause", "sandboxer = \"shim\" is containerd 2.x's");
        return;
    }
    if case.executor == Executor::Native {
        // The native executor is chosen by the handler's ConfigPath, which containerd 2.1.9
        // refuses for a sandbox's containers (docs/sandbox.md, "Left").
        skip("pod_without_pause", "containerd 2.1 fails a sandboxed task whose handler has tether's options");
        return;
    }
    let Some(mut env) = CriEnv::for_case("pod_without_pause", case) else { return };
    if !env.runtime.is_tether() {
        skip("pod_without_pause", "the Sandbox API is tether's");
        return;
    }
    env.handler = sandbox_handler_for(case.executor);
    // containerd 2.1 crashes on a hostNetwork pod of a shim sandboxer (containerd#12983, fixed
    // by containerd#13131): the pod gets a network namespace of its own, from an inert CNI.
    env.plugin().install_inert_cni();
    let mut config = env.pod_config("pod1");
    set_network(
        config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()),
    );
    // The CRI plugin loads the CNI config a moment after it appears.
    let id = wait_until(secs(20), || env.client.run_pod_sandbox(config.clone(), env.handler).ok())
        .unwrap_or_else(|| panic!("RunPodSandbox: {:?}", env.client.run_pod_sandbox(config.clone(), env.handler)));
    let pod = Pod { id, config };
    let status = env.client.pod_sandbox_status(&pod.id).expect("PodSandboxStatus").status.expect("a status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "{status:?}");
    assert_eq!(status.runtime_handler, env.handler);
    // containerd 2.1's verbose PodSandboxStatus carries no pid for a shim sandboxer's pod.
    let shims = env.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod: {:?}", env.containerd.shim_processes());
    let pid = shims[0];
    assert!(children_of(pid).is_empty(), "no pause process: the shim has children {:?}", children_of(pid));
    let shim = pid.to_string();
    assert_ne!(ns(&shim, "ipc"), ns("self", "ipc"), "the pod has an IPC namespace of its own");
    assert_ne!(ns(&shim, "net"), ns("self", "net"), "the shim is in the pod's network namespace");
    assert_ne!(ns(&shim, "uts"), ns("self", "uts"), "the pod has a UTS namespace of its own");

    let mut containers = Vec::new();
    for name in ["c1", "c2"] {
        let mut config = env.container_config(name, 0, LOOP);
        set_network(
            config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()),
        );
        let id = env.start_container(&pod, config);
        env.wait_running(&id, secs(30));
        let cpid = env.container_pid(&id).to_string();
        assert_eq!(parent_pid(env.container_pid(&id)), Some(pid), "{name} runs under the pod's shim");
        assert_eq!(ns(&cpid, "ipc"), ns(&shim, "ipc"), "{name} is in the pod's IPC namespace");
        assert_eq!(ns(&cpid, "net"), ns(&shim, "net"), "{name} is in the pod's network namespace");
        assert_eq!(ns(&cpid, "uts"), ns(&shim, "uts"), "{name} is in the pod's UTS namespace");
        containers.push(id);
    }

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
