//! The files of a task's bundle, named in one place: what containerd puts there, what the
//! runtime and the shim add, and who removes them.
//!
//! | file | written by | holds |
//! | --- | --- | --- |
//! | `config.json` | containerd | the OCI spec |
//! | `rootfs/` | containerd, or the shim's mounts of the Create request | the container's root |
//! | `log` | containerd (a FIFO it reads) | the shim's log |
//! | `address` | the shim's `start` | the serving shim's socket: containerd redials it after a restart, `tether-ctl` finds the shim by it |
//! | `tether.json` | the shim at Create | the executor settings, for `shim delete` after the shim is gone |
//! | `init.pid` | the runtime | the init's pid |
//! | `exec-<id>.json`, `exec-<id>.pid` | the shim and the runtime while an exec starts | its process spec, its pid (both removed once it runs) |
//! | `criu-work/` | the shim, when a checkpoint names no work dir | CRIU's work files (removed after) |
//! | `criu-dump.log`, `criu-restore.log` | the shim, after CRIU failed | CRIU's log |
//! | `exit-journal` | the shim | exits containerd has not accepted yet (see `journal`) |

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// The OCI spec.
pub const CONFIG: &str = "config.json";
/// The serving shim's socket address.
pub const ADDRESS: &str = "address";
/// The executor settings of the container, for the `delete` subcommand.
pub const SETTINGS: &str = "tether.json";
/// Where the runtime writes the init's pid.
pub const INIT_PID: &str = "init.pid";
/// CRIU's work directory when the request names none.
pub const CRIU_WORK: &str = "criu-work";
/// Exits not yet delivered to containerd: one JSON `journal::Entry` per line.
pub const EXIT_JOURNAL: &str = "exit-journal";

/// The process spec of exec `exec_id` while it starts.
pub fn exec_spec(bundle: &Path, exec_id: &str) -> PathBuf {
    bundle.join(format!("exec-{exec_id}.json"))
}

/// Where the runtime writes the pid of exec `exec_id`.
pub fn exec_pid(bundle: &Path, exec_id: &str) -> PathBuf {
    bundle.join(format!("exec-{exec_id}.pid"))
}

/// CRIU's log of a failed `action` (`dump` or `restore`), kept.
pub fn criu_log(bundle: &Path, action: &str) -> PathBuf {
    bundle.join(format!("criu-{action}.log"))
}

/// What the shim needs to know of a bundle's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecFacts {
    /// The container's init is PID 1 of a PID namespace of its own (see [`owns_pid_namespace`]).
    pub owns_pid_namespace: bool,
}

/// Refuses a bundle the runtime could only fail on: no readable `config.json`, one that is
/// not a JSON object, or (with no rootfs mounts in the request) a root directory that is
/// missing. Otherwise returns what the shim needs of its spec.
pub fn check(bundle: &Path, needs_root_dir: bool) -> Result<SpecFacts> {
    let config = bundle.join(CONFIG);
    let text = fs::read(&config)
        .map_err(|e| Error::InvalidArgument(format!("bundle {}: cannot read config.json: {e}", bundle.display())))?;
    let spec: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("{} does not parse: {e}", config.display())))?;
    if !spec.is_object() {
        return Err(Error::InvalidArgument(format!("{} is not a JSON object", config.display())));
    }
    if needs_root_dir {
        let root = bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs"));
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!("the container's rootfs {} does not exist", root.display())));
        }
    }
    Ok(SpecFacts { owns_pid_namespace: owns_pid_namespace(&spec) })
}

/// Whether the spec gives the container a PID namespace of its own: a `pid` namespace entry
/// without a path. Without one it joins the host's, and with a path another container's
/// (a Kubernetes pod with shareProcessNamespace, or hostPID).
pub fn owns_pid_namespace(spec: &serde_json::Value) -> bool {
    spec["linux"]["namespaces"].as_array().is_some_and(|namespaces| {
        namespaces.iter().any(|ns| ns["type"] == "pid" && ns["path"].as_str().is_none_or(str::is_empty))
    })
}

/// Ids name directories and runtime state: reject what could escape or confuse a path.
pub fn validate_id(id: &str) -> Result<()> {
    // Ids name files: the longest is an exec's `exec-<id>.json` (and `.pid`) in the bundle,
    // and a file name holds at most NAME_MAX (255) bytes. 255 - "exec-" - ".json" = 245.
    const MAX_LEN: usize = 245;
    let ok = !id.is_empty()
        && id.len() <= MAX_LEN
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '@' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid id {id:?}: use 1-{MAX_LEN} characters of [A-Za-z0-9_.+@:-]")))
    }
}

/// Reads the init's pid a runtime wrote into `bundle` (0 when none).
pub fn read_init_pid(bundle: &Path) -> u32 {
    fs::read_to_string(bundle.join(INIT_PID)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        for good in ["c1", "my-container_2", "a.b", "sha256:abc", "x@y"] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", "x\0y"] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(err.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT, "{bad}");
        }
    }
}
