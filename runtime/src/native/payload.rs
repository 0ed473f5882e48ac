//! The last steps of every container process the native executor starts (an init or an
//! exec'd process), run in that process after libcontainer has set it up and right before it
//! execs the container's program: libcontainer's `Executor`, which tether replaces with
//! [`Payload`] so that a container's processes start as runc starts them.
//!
//! - Signals: the process starts with every disposition at its default and nothing blocked.
//!   Ignored signals and the signal mask survive `execve`, and the worker that libcontainer
//!   clones is a copy of the shim binary, whose Rust runtime ignores SIGPIPE; without this
//!   reset, `yes | head -1` would leave `yes` failing with EPIPE instead of dying of SIGPIPE.
//! - Seccomp of an exec'd process: libcontainer's tenant builder (exec) rebuilds the spec's
//!   `linux` section from the namespaces, cgroup path, personality and time offsets alone,
//!   so the container's seccomp profile never reaches an exec'd process. runc gives every
//!   exec'd process the container's filter; [`Payload`] installs it here. Without
//!   `noNewPrivileges` the kernel only lets a process holding CAP_SYS_ADMIN install a filter,
//!   and libcontainer has already lowered the capabilities to the process spec's when it
//!   calls the payload; so [`Payload::for_exec`] has libcontainer keep CAP_SYS_ADMIN and
//!   CAP_SETPCAP a moment longer (a process spec with both added), and the payload installs
//!   the filter and then lowers every capability set to what the process spec says (this is
//!   runc's order too: the filter before the capabilities when `noNewPrivileges` is unset,
//!   after them when it is set).
//! - An absolute (or relative) program path needs no `PATH`: libcontainer's own check refuses
//!   any process without `PATH` in its environment, while runc runs `/bin/sh` without one.

use std::{collections::HashSet, os::unix::fs::PermissionsExt, path::Path};

use libcontainer::workload::{default::DefaultExecutor, Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, Process, Spec};

/// What a container process does last, in place of libcontainer's default executor (see the
/// module docs).
#[derive(Clone, Default)]
pub struct Payload {
    /// The container's seccomp profile, for an exec'd process (an init gets it from
    /// libcontainer).
    seccomp: Option<LinuxSeccomp>,
    /// The capabilities the process must end with, when libcontainer was asked to leave it
    /// more (to install `seccomp` without `noNewPrivileges`).
    capabilities: Option<LinuxCapabilities>,
}

/// A process spec for libcontainer, and the payload that finishes what libcontainer leaves.
pub struct ExecPlan {
    /// The process spec libcontainer is to apply (the caller's, or one with more capabilities).
    pub process: Process,
    /// Whether `process` differs from the caller's.
    pub changed: bool,
    pub payload: Payload,
}

impl Payload {
    /// The payload of a container's init: libcontainer applies the container's spec in full.
    pub fn for_init() -> Self {
        Payload::default()
    }

    /// The payload of a process exec'd in a container whose spec has the seccomp profile
    /// `seccomp`, and the process spec libcontainer must be given for it.
    pub fn for_exec(mut process: Process, seccomp: Option<LinuxSeccomp>) -> ExecPlan {
        let Some(seccomp) = seccomp else {
            return ExecPlan { process, changed: false, payload: Payload::default() };
        };
        let nnp = process.no_new_privileges() == Some(true);
        let wanted = process.capabilities().clone();
        let extra = [Capability::SysAdmin, Capability::Setpcap];
        // A process spec without capabilities keeps all of them (libcontainer lowers
        // nothing), so it can install the filter as it is.
        let needs_more = match &wanted {
            Some(caps) if !nnp => {
                let has = |set: &Option<HashSet<Capability>>| {
                    set.as_ref().is_some_and(|s| extra.iter().all(|c| s.contains(c)))
                };
                !(has(caps.effective()) && has(caps.permitted()) && has(caps.bounding()))
            }
            _ => false,
        };
        if !needs_more {
            return ExecPlan {
                process,
                changed: false,
                payload: Payload { seccomp: Some(seccomp), capabilities: None },
            };
        }
        let mut more = wanted.clone().expect("checked above");
        let add = |set: Option<HashSet<Capability>>| {
            let mut set = set.unwrap_or_default();
            set.extend(extra);
            Some(set)
        };
        let (effective, permitted, bounding) =
            (more.effective().clone(), more.permitted().clone(), more.bounding().clone());
        more.set_effective(add(effective)).set_permitted(add(permitted)).set_bounding(add(bounding));
        process.set_capabilities(Some(more));
        ExecPlan { process, changed: true, payload: Payload { seccomp: Some(seccomp), capabilities: wanted } }
    }
}

impl Executor for Payload {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let process = spec.process().as_ref();
        let program = process.and_then(|p| p.args().as_ref()).and_then(|a| a.first());
        let has_path =
            process.and_then(|p| p.env().as_ref()).is_some_and(|env| env.iter().any(|e| e.starts_with("PATH=")));
        match program {
            // A program named by a path is run as it is, with or without PATH (as runc does);
            // libcontainer's check would insist on PATH.
            Some(program) if program.contains('/') && !has_path => check_program(Path::new(program)),
            _ => DefaultExecutor {}.validate(spec),
        }
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        crate::runc::default_signals();
        if let Some(seccomp) = &self.seccomp {
            // A notify listener would need the fd sent to it; an exec'd process has none.
            let notify = libcontainer::seccomp::initialize_seccomp(seccomp)
                .map_err(|e| ExecutorError::Other(format!("installing the container's seccomp filter: {e}")))?;
            if let Some(fd) = notify {
                // SAFETY: the descriptor was just returned to this process and is not used again.
                unsafe { libc::close(fd) };
            }
        }
        if let Some(caps) = &self.capabilities {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
                .map_err(|e| ExecutorError::Other(format!("lowering the capabilities: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }
}

/// The container's program, named by a path: it must be a file someone may execute.
fn check_program(program: &Path) -> Result<(), ExecutorValidationError> {
    let bad = |why: String| Err(ExecutorValidationError::ArgValidationError(why));
    match program.metadata() {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => bad(format!("executable '{}' is not an executable file", program.display())),
        Err(e) => bad(format!("executable '{}' not found: {e}", program.display())),
    }
}
