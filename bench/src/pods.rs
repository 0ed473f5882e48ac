//! Pod start through the CRI (issue 20): what a Kubernetes node waits for between scheduling a
//! pod and its container running. RunPodSandbox, then CreateContainer and StartContainer of one
//! container, timed until StartContainer returns (the container's task has started), on
//! containerd 2.x's CRI plugin, for:
//!
//! - containerd's Go shim, with containerd's pause container holding the pod's namespaces;
//! - tether (runc, native), with the same pause container;
//! - tether's own sandbox (`sandboxer = "shim"`): the pod's shim holds the namespaces, no
//!   pause container; with the runc executor, and with the native one in a second containerd
//!   whose default tether config names it (a sandbox handler has no options, see README).
//!
//! Every pod has a network namespace of its own, from the harness's inert CNI plugin (it only
//! reports an address), as a Kubernetes pod has; so all of them pay the same network setup.
//! The pod is stopped and removed after each sample, outside the timed part.

use std::time::Instant;

use tether_tests::cri::config::{GO_RUNC_HANDLER, TETHER_HANDLER, TETHER_NATIVE_HANDLER, TETHER_SANDBOX_HANDLER};
use tether_tests::cri::CriEnv;
use tether_tests::{Case, Daemon, Executor, Sandboxer};

use crate::alternate::{alternate, series};
use crate::options::Options;
use crate::results::{Figure, Unit, GO, TETHER_NATIVE, TETHER_NATIVE_NO_PAUSE, TETHER_RUNC, TETHER_RUNC_NO_PAUSE};

/// One kind of pod: a series of the figure.
struct Kind<'a> {
    series: &'static str,
    handler: &'static str,
    /// The containerd (and CRI plugin) its pods are started through.
    env: &'a CriEnv,
}

/// A private containerd 2.x with the CRI plugin whose sandbox handler runs `executor`.
fn containerd(executor: Executor) -> Option<CriEnv> {
    eprintln!("  pod start: a private containerd 2.x with the CRI plugin ({} sandboxes)", executor.name());
    CriEnv::for_case("tether-bench pod start", Case { daemon: Daemon::V2, executor, sandboxer: Sandboxer::Shim })
}

pub fn figure(opts: &Options) -> Option<Figure> {
    let wanted = |t: &str| opts.targets.iter().any(|x| x == t);
    let env = containerd(Executor::Runc)?;
    let native = if wanted("native") { containerd(Executor::Native) } else { None };
    // Each target with a pause container; tether's executors also without.
    let mut kinds = Vec::new();
    if wanted("go") {
        kinds.push(Kind { series: GO, handler: GO_RUNC_HANDLER, env: &env });
    }
    if wanted("runc") {
        kinds.push(Kind { series: TETHER_RUNC, handler: TETHER_HANDLER, env: &env });
        kinds.push(Kind { series: TETHER_RUNC_NO_PAUSE, handler: TETHER_SANDBOX_HANDLER, env: &env });
    }
    if wanted("native") {
        kinds.push(Kind { series: TETHER_NATIVE, handler: TETHER_NATIVE_HANDLER, env: &env });
    }
    if let Some(native) = &native {
        kinds.push(Kind { series: TETHER_NATIVE_NO_PAUSE, handler: TETHER_SANDBOX_HANDLER, env: native });
    }
    let collected = alternate("pod start", &kinds, |k| k.series.to_string(), opts.warmup, opts.pod_starts, start_pod);
    let mut f = Figure::new(
        "pod_start",
        "pod start via the CRI, containerd 2.x (RunPodSandbox + CreateContainer + StartContainer)",
        Unit::Millis,
        series(&collected, |v| *v),
    );
    f.notes.push(
        "one pod with one `sleep` container each, on a network namespace of its own (an inert CNI plugin); \
         `no pause` is tether's sandbox: no pause container"
            .into(),
    );
    Some(f)
}

/// One pod of `kind`, timed until its container's StartContainer returned; then removed.
fn start_pod(kind: &Kind, round: usize) -> Result<f64, String> {
    let env = kind.env;
    let name = format!("ps-{}-{round}", kind.handler);
    let config = env.pod_config(&name);
    let container = env.container_config("app", 0, "exec sleep 3600");
    let started = Instant::now();
    let pod = env.client.run_pod_sandbox(config.clone(), kind.handler).map_err(|e| format!("RunPodSandbox: {e}"))?;
    let ran = env
        .client
        .create_container(&pod, container, &config)
        .map_err(|e| format!("CreateContainer: {e}"))
        .and_then(|id| env.client.start_container(&id).map_err(|e| format!("StartContainer: {e}")));
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    // StopPodSandbox kills the pod's containers; the pod must go whether or not it started.
    let stopped = env.client.stop_pod_sandbox(&pod).map_err(|e| format!("StopPodSandbox: {e}"));
    let removed = env.client.remove_pod_sandbox(&pod).map_err(|e| format!("RemovePodSandbox: {e}"));
    ran.and(stopped).and(removed).map(|()| millis)
}
