//! Waiting for the exit of a child the executor forked, and spawning one beside a reaper.

use std::{
    io,
    process::{Child, Command},
    sync::{PoisonError, RwLock, RwLockWriteGuard},
    time::Instant,
};

/// Shared by every [`spawn`], held alone by a reaper while it reaps ([`reaping`]).
static SPAWNS: RwLock<()> = RwLock::new(());

/// Spawns `cmd` so that a reaper that collects every child (`waitpid(-1)`, the shim's) cannot
/// take the child from std: when the exec of a child forked with a `pre_exec` hook fails,
/// `Command::spawn` reaps that child itself before it returns the error, and panics if
/// someone else already did (with `panic = "abort"`, the whole shim would die of a runtime
/// binary that cannot run). Every spawn of the serving shim goes through here.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let _spawning = SPAWNS.read().unwrap_or_else(PoisonError::into_inner);
    cmd.spawn()
}

/// Held by a reaper for as long as it reaps: no [`spawn`] is under way meanwhile, and none
/// starts. The holder must not spawn (it would wait for itself).
pub fn reaping() -> RwLockWriteGuard<'static, ()> {
    SPAWNS.write().unwrap_or_else(PoisonError::into_inner)
}

/// Delivers the wait status of a child process.
///
/// The shim reaps every child with `waitpid(-1)`, so `Child::wait` would race with it and lose.
/// Implementations must return the status even when the child exited (and was reaped) before
/// this call: `spawned` is an instant taken before the child was forked, so an exit reaped
/// before it belongs to an earlier process that had the same pid.
pub trait ChildWaiter: Send + Sync {
    /// Blocks until the child `pid` has exited and returns its raw wait status.
    fn wait_child(&self, pid: i32, spawned: Instant) -> i32;
}

/// A waiter for processes that do not run a reaper: waits on the pid itself.
///
/// For tools and tests; inside the serving shim use its reaper.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectWaiter;

impl ChildWaiter for DirectWaiter {
    fn wait_child(&self, pid: i32, _spawned: Instant) -> i32 {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on a pid this process forked, with a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                return status;
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // Someone else reaped it; report a generic failure rather than hang.
                return 255 << 8;
            }
        }
    }
}

/// The exit code of a raw wait status; a death by signal counts as 128 + signal.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_convention() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGKILL), 137);
    }
}
