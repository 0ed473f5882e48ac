//! Pods through the CRI (issue 20), on containerd 2.x's CRI plugin: node memory per pod (see
//! `pod_memory`) and pod start, what a Kubernetes node waits for between scheduling a pod and
//! its container running: RunPodSandbox, then CreateContainer and StartContainer of one
//! container, timed until StartContainer returns (the container's task has started). Both for:
//!
//! - containerd's Go shim, with containerd's pause container holding the pod's namespaces;
//! - tether (runc, native), with the same pause container;
//! - tether's own sandbox (`sandboxer = "shim"`): the pod's shim holds the namespaces, no
//!   pause container; with the runc executor, and with the native one in a second containerd
//!   whose default tether config names it (a sandbox handler has no options, see README).
//!
//! Every pod has a network namespace of its own, from the harness's inert CNI plugin (it only
//! reports an address), as a Kubernetes pod has; so all of them pay the same network setup.
//! In pod start, the pod is stopped and removed after each sample, outside the timed part.

use std::time::Instant;

use tether_tests::cri::config::{GO_RUNC_HANDLER, TETHER_HANDLER, TETHER_NATIVE_HANDLER, TETHER_SANDBOX_HANDLER};
use tether_tests::cri::CriEnv;
use tether_tests::{Case, Daemon, Executor, LogLevel, Sandboxer};

use crate::alternate::{alternate, series};
use crate::interrupt;
use crate::options::Options;
use crate::pod_memory;
use crate::results::{Figure, Unit, GO, TETHER_NATIVE, TETHER_NATIVE_NO_PAUSE, TETHER_RUNC, TETHER_RUNC_NO_PAUSE};

/// One kind of pod: a series of the figures.
pub struct Kind<'a> {
    pub series: &'static str,
    pub handler: &'static str,
    /// The containerd (and CRI plugin) its pods are started through.
    pub env: &'a CriEnv,
}

/// A private containerd 2.x with the CRI plugin whose sandbox handler runs `executor`.
fn containerd(executor: Executor) -> Option<CriEnv> {
    eprintln!("  pods: a private containerd 2.x with the CRI plugin ({} sandboxes)", executor.name());
    // At containerd's default log level, as nodes run it: the shims then do not log at debug.
    let case = Case { daemon: Daemon::V2, executor, sandboxer: Sandboxer::Shim };
    CriEnv::for_case_at("tether-bench pods", case, LogLevel::Info)
}

/// The figures of pods through the CRI that `opts` asks for: node memory per pod
/// (`pod_memory`), then pod start.
pub fn figures(opts: &Options) -> Vec<Figure> {
    let wanted = |t: &str| opts.targets.iter().any(|x| x == t);
    let Some(env) = containerd(Executor::Runc) else { return Vec::new() };
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
    let mut figures = Vec::new();
    if opts.wants("pod-memory") && !interrupt::requested() {
        let envs: Vec<&CriEnv> = std::iter::once(&env).chain(native.as_ref()).collect();
        figures.extend(pod_memory::figures(&envs, &kinds, opts));
    }
    if opts.wants("pod-start") && !interrupt::requested() {
        figures.push(start_figure(&kinds, opts));
    }
    figures
}

fn start_figure(kinds: &[Kind], opts: &Options) -> Figure {
    let collected = alternate("pod start", kinds, |k| k.series.to_string(), opts.warmup, opts.pod_starts, start_pod);
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
    f
}

/// One pod of `kind`, timed until its container's StartContainer returned; then removed.
fn start_pod(kind: &Kind, round: usize) -> Result<f64, String> {
    let started = Instant::now();
    let ran = run_pod(kind, &format!("ps-{}-{round}", kind.handler));
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    remove_pod(kind.env, &ran?).map(|()| millis)
}

/// Pod `name` of `kind` with one `sleep` container: RunPodSandbox, CreateContainer,
/// StartContainer. The pod's id; a pod whose container did not start is removed.
pub fn run_pod(kind: &Kind, name: &str) -> Result<String, String> {
    let env = kind.env;
    let config = env.pod_config(name);
    let container = env.container_config("app", 0, "exec sleep 3600");
    let pod = env.client.run_pod_sandbox(config.clone(), kind.handler).map_err(|e| format!("RunPodSandbox: {e}"))?;
    let ran = env
        .client
        .create_container(&pod, container, &config)
        .map_err(|e| format!("CreateContainer: {e}"))
        .and_then(|id| env.client.start_container(&id).map_err(|e| format!("StartContainer: {e}")));
    match ran {
        Ok(()) => Ok(pod),
        Err(e) => Err(match remove_pod(env, &pod) {
            Ok(()) => e,
            Err(also) => format!("{e}; then {also}"),
        }),
    }
}

/// StopPodSandbox (which kills the pod's containers), then RemovePodSandbox.
pub fn remove_pod(env: &CriEnv, pod: &str) -> Result<(), String> {
    env.client.stop_pod_sandbox(pod).map_err(|e| format!("StopPodSandbox: {e}"))?;
    env.client.remove_pod_sandbox(pod).map_err(|e| format!("RemovePodSandbox: {e}"))
}
