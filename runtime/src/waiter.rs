//! Waiting for the exit of a child the executor forked, and spawning one beside a reaper.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    process::{Child, Command},
    sync::{PoisonError, RwLock, RwLockWriteGuard},
    time::Instant,
};

use async_trait::async_trait;
use tokio::io::{unix::AsyncFd, Interest};

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
#[async_trait]
pub trait ChildWaiter: Send + Sync {
    /// Resolves to the raw wait status of the child `pid` once it has exited. Awaiting it
    /// blocks no thread: the exit is an event of the caller's loop.
    async fn wait_child(&self, pid: i32, spawned: Instant) -> i32;
}

/// A waiter for processes that do not run a reaper: waits for the pid itself.
///
/// For tools and tests (the `delete` subcommand, `-info`); inside the serving shim use its
/// reaper. The child's pidfd, registered with the caller's tokio runtime (which must have IO
/// enabled), says when it has exited, and it is then reaped at once. Only on a kernel without
/// pidfds (before 5.3) does the wait block the calling thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectWaiter;

#[async_trait]
impl ChildWaiter for DirectWaiter {
    async fn wait_child(&self, pid: i32, _spawned: Instant) -> i32 {
        if let Some(exited) = pidfd(pid) {
            // Readable once the child has exited. On an error, waitpid waits.
            let _ = exited.readable().await;
        }
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

/// A pidfd of `pid` (pidfd_open): ENOSYS where the kernel has none, ESRCH when no process
/// (not even a zombie) has the pid.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with no flags returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave this process the descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pidfd of `pid` registered with the current runtime, `None` where the kernel has none.
fn pidfd(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid).ok()?;
    // SAFETY: the AsyncFd owns `fd`, so it stays open, and the same pidfd, while registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
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

    // The waiter under test reaps the child, not its `Child`.
    #[allow(clippy::zombie_processes)]
    #[test]
    fn the_direct_waiter_blocks_no_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let spawned = Instant::now();
            let child = Command::new("sh").args(["-c", "sleep 0.5; exit 3"]).spawn().unwrap();
            let waited = DirectWaiter.wait_child(child.id() as i32, spawned);
            // A timer on the same thread fires while the child runs: the wait does not hold
            // the thread.
            let ticked = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Instant::now()
            };
            let (status, ticked) = tokio::join!(waited, ticked);
            assert_eq!(exit_code(status), 3);
            assert!(ticked.duration_since(spawned) < std::time::Duration::from_millis(400), "the timer waited");
        });
    }
}
