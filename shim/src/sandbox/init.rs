//! The pod's init, for a pod whose containers share one PID namespace (`shareProcessNamespace`).
//! Such a namespace needs a first process that lives as long as the pod and reaps what the
//! containers orphan; a pause container is that process in a pause pod. In a tether sandbox it
//! is this binary re-executed ([`INIT_ARG`]), the first process of a PID namespace made for it.
//! StartSandbox answers its pid, so the pod's containers join its namespaces through
//! `/proc/<pid>/ns`: its PID namespace, and the network, IPC and UTS namespaces it inherited
//! from the shim's main thread, which had entered the pod's before it forked it.
//!
//! When the init ends, the kernel kills every process of its PID namespace: the pod's
//! containers go with it, as with a pause process.

use std::{fs::File, os::unix::process::CommandExt, process::Command};

use nix::sched::{setns, unshare, CloneFlags};

use crate::{
    error::{Error, Result},
    pidfd::Handle,
};

/// The argument that makes this binary the pod's init (see `main`).
pub const INIT_ARG: &str = "pod-init";
/// How the init is named in `ps`, like the shim itself.
const SHIM_NAME: &str = "containerd-shim-tether-v2";

/// Starts the pod's init as the first process of a new PID namespace; its handle. Runs on the
/// shim's main thread: the PID namespace for new children is switched for the one spawn and
/// back, so that the runtimes the shim starts later are in its own.
pub fn start() -> Result<(u32, Handle)> {
    let own = File::open("/proc/self/ns/pid").map_err(|e| Error::io("opening the shim's PID namespace", e))?;
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| Error::io("making the pod's PID namespace", std::io::Error::from(e)))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(SHIM_NAME).arg(INIT_ARG).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    let spawned = tether_runtime::spawn(&mut cmd);
    // Back before anything else is spawned; a shim whose children would all land in the pod's
    // PID namespace (runtimes reporting pids of that namespace) must not go on.
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWPID) {
        log::error!("returning to the shim's PID namespace: {e}; ending the shim");
        std::process::exit(1);
    }
    let child = spawned.map_err(|e| Error::io("starting the pod's init", e))?;
    let pid = child.id();
    Ok((pid, Handle::open(pid as i32)))
}

/// The init's whole life: reaps every child it gets, until it is killed. It is PID 1 of its
/// namespace, so only SIGKILL from the shim's (an ancestor) namespace ends it.
pub fn serve() -> ! {
    // SAFETY: an empty signal handler, a signal mask and sigsuspend: a process of one thread
    // that only waits. SIGCHLD is blocked but for sigsuspend, so that no exit comes between
    // a wait that found nothing and the suspend.
    unsafe {
        extern "C" fn noop(_: libc::c_int) {}
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = noop as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigsuspend(&none);
        }
    }
}
