//! The executor seam of tether.
//!
//! The shim never runs an OCI runtime itself: every operation on a container goes through an
//! [`Executor`]. Two implementations exist: [`runc::RuncExecutor`] forks a runc-compatible binary
//! (runc, crun, youki) per operation, and `native::NativeExecutor` (cargo feature `native`)
//! runs youki's libcontainer from the shim itself.
//!
//! The shim is a child subreaper that reaps every exit with `waitpid(-1)`, so an executor must
//! never wait for its own children: it asks the shim's [`ChildWaiter`] instead.

pub mod error;
pub mod executor;
#[cfg(feature = "native")]
pub mod native;
pub mod runc;
pub mod waiter;

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

pub use error::{Error, Result};
pub use executor::{CheckpointOpts, ContainerState, CreateOpts, CriuOpts, ExecOpts, Executor, RestoreOpts, Stdio};
pub use waiter::{exit_code, pidfd_open, reaping, spawn, ChildWaiter, DirectWaiter};

/// Makes the open file description of `fd` non-blocking, for a loop that awaits its
/// readiness. Other descriptors of the same description (a child's copy) see it too, so only
/// for a description that is this process's alone.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL with integer arguments on a descriptor the caller holds.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Fails with [`Error::MissingTool`] unless the CRIU binary (`criu`, default `criu` on PATH)
/// can be found, so that a host without CRIU gets a plain answer instead of an exec error
/// from deep inside the runtime.
pub(crate) fn require_criu(criu: Option<&Path>, purpose: &'static str) -> Result<()> {
    let criu = criu.unwrap_or(Path::new("criu"));
    if find_executable(criu).is_some() {
        return Ok(());
    }
    Err(Error::MissingTool { tool: "criu", path: criu.to_path_buf(), purpose })
}

/// `name` itself when it is a path, else the first executable `name` on PATH.
fn find_executable(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.components().count() > 1 {
        return executable(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| executable(p))
}
