//! Finding a live shim and talking to it: the task API as containerd calls it, and tether's
//! debug service.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use tether_protos::{
    debug_ttrpc::DebugClient,
    shim::shim_ttrpc::TaskClient,
    ttrpc::{self, context},
};

use crate::{CtlError, Result};

/// Where containerd 1.6+ keeps each task's bundle (`<dir>/<namespace>/<id>`).
pub const CONTAINERD_STATE: &str = "/run/containerd/io.containerd.runtime.v2.task";
/// How long one call may take, unless it waits on purpose.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How the user named the shim.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--address`: the shim's socket (`unix:///run/containerd/s/...` or a path).
    pub address: Option<String>,
    /// `--bundle`: a task's bundle, which holds the shim's `address` file.
    pub bundle: Option<PathBuf>,
    /// `-n`: the containerd namespace of the task named on the command line.
    pub namespace: String,
    /// `--state-dir`: containerd's task state dir (for a containerd with its own state).
    pub state_dir: PathBuf,
}

impl Target {
    /// The socket of the shim serving task `id` (which may be absent for commands without
    /// one): `--address`, else the `address` file of `--bundle`, else of
    /// `<state dir>/<namespace>/<id>`.
    pub fn address(&self, id: Option<&str>) -> Result<String> {
        if let Some(a) = &self.address {
            return Ok(a.clone());
        }
        let bundle = match (&self.bundle, id) {
            (Some(b), _) => b.clone(),
            (None, Some(id)) => self.state_dir.join(&self.namespace).join(id),
            (None, None) => {
                return Err(CtlError::Usage(
                    "name the shim: --address ADDR, --bundle DIR, or a task id (with -n NAMESPACE)".into(),
                ))
            }
        };
        read_address(&bundle)
    }
}

/// The shim address a bundle's `address` file holds.
pub fn read_address(bundle: &Path) -> Result<String> {
    let file = bundle.join(tether_shim::bundle::ADDRESS);
    fs::read_to_string(&file)
        .map(|a| a.trim().to_string())
        .map_err(|e| CtlError::io(format!("no live shim found at {}", file.display()), e))
}

/// Both services of one shim.
pub struct Shim {
    pub task: TaskClient,
    pub debug: DebugClient,
    pub address: String,
}

impl Shim {
    pub fn connect(address: &str) -> Result<Shim> {
        let socket = if address.starts_with("unix://") { address.to_string() } else { format!("unix://{address}") };
        let client = ttrpc::Client::connect(&socket)
            .map_err(|e| CtlError::call(&format!("connecting to the shim at {address}"), e))?;
        Ok(Shim { task: TaskClient::new(client.clone()), debug: DebugClient::new(client), address: socket })
    }
}

/// The context of an ordinary call.
pub fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// The context of a call that may block as long as it needs (Wait).
pub fn no_timeout() -> context::Context {
    context::Context::default()
}

/// A failed call in one line: the status message (and its code) rather than the debug dump.
pub fn describe(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}
