//! Naming a supervised process so that a recycled pid can never stand in for it.
//!
//! A pidfd (Linux 5.3+, waitid on one from 5.4) stays bound to the process it was opened for:
//! once that process is gone, signals through it fail with ESRCH instead of reaching whoever
//! got the pid next, and it polls readable once the process has exited, whoever its parent
//! is. Where the kernel has no pidfds (ENOSYS) the shim falls back to the pid.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

/// How the shim names one container process (an init or an exec).
#[derive(Debug)]
pub enum Handle {
    /// A pidfd opened for the process while it still held its pid.
    Fd(Pidfd),
    /// Only the pid: the kernel has no pidfds (or none could be opened).
    Pid(i32),
    /// The process had already exited when its pid became known; nothing may be signalled.
    Exited,
}

impl Handle {
    /// A handle for `pid`, the pid a runtime just reported: a pidfd where the kernel has
    /// them, [`Handle::Exited`] when no process has the pid any more (it was reaped).
    pub fn open(pid: i32) -> Handle {
        match Pidfd::open(pid) {
            Ok(fd) => Handle::Fd(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Handle::Exited,
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOSYS) {
                    log::warn!("pidfd_open({pid}): {e}; supervising it by pid");
                }
                Handle::Pid(pid)
            }
        }
    }

    /// Sends `signal`; fails with ESRCH once the process is gone (never reaching a process
    /// that got its pid later, where pidfds exist).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let r = match self {
            Handle::Fd(fd) => return fd.signal(signal),
            // SAFETY: kill with plain integers.
            Handle::Pid(pid) => unsafe { libc::kill(*pid, signal) },
            Handle::Exited => return Err(io::Error::from_raw_os_error(libc::ESRCH)),
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The fd that polls readable once the process exits, where there is one (a pidfd);
    /// without it only looking again tells.
    pub fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Handle::Fd(fd) => Some(fd.fd.as_fd()),
            Handle::Pid(_) | Handle::Exited => None,
        }
    }

    /// Whether the process may still run (by pid, a live pid counts).
    pub fn is_running(&self) -> bool {
        match self {
            Handle::Fd(fd) => !fd.has_exited(),
            Handle::Pid(pid) => pid_exists(*pid),
            Handle::Exited => false,
        }
    }

    /// Whether the exited child waiting to be reaped under this process's pid is this
    /// process. By pid alone that cannot be told, so it is taken to be.
    pub fn is_waiting_zombie(&self) -> bool {
        match self {
            Handle::Fd(fd) => fd.is_waiting_zombie(),
            Handle::Pid(_) => true,
            Handle::Exited => false,
        }
    }

    /// Whether the process is gone and its exit status with it: another process reaped it
    /// (it was not the shim's child), so the reaper will never see it. An exited process that
    /// is still a zombie is not lost: if its parent exits, it comes to the shim (the
    /// subreaper) with its status. Where only a pid names the process, a live pid may have
    /// been recycled: then `vacated`, the caller's own evidence that the process is gone (its
    /// cgroup holds no process), decides.
    pub fn is_lost(&self, vacated: impl FnOnce() -> bool) -> bool {
        match self {
            Handle::Fd(fd) => fd.is_reaped(),
            Handle::Pid(pid) => !is_zombie(*pid) && (!pid_exists(*pid) || vacated()),
            Handle::Exited => false,
        }
    }
}

/// A pidfd and the pid it was opened for.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`: ENOSYS where the kernel has none, ESRCH when no process
    /// (not even a zombie) has the pid.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        Ok(Pidfd { fd: tether_runtime::pidfd_open(pid)?, pid })
    }

    /// pidfd_send_signal: ESRCH once the process has been reaped.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: our fd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process has been reaped (by whichever parent): a zombie still takes
    /// signals, without effect, a reaped process no longer has a pid to take them.
    fn is_reaped(&self) -> bool {
        self.signal(0).is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH))
    }

    /// Whether the process has exited (a zombie or reaped): the pidfd polls readable then.
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd without waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Whether the process is this shim's child, exited and not yet reaped.
    fn is_waiting_zombie(&self) -> bool {
        waitid_peek(libc::P_PIDFD, self.fd.as_raw_fd() as libc::id_t) == Some(self.pid)
    }
}

/// The pid of an exited child of this process that nobody has reaped yet, if there is one
/// (`P_ALL`), or if `id` names one (`P_PID`, `P_PIDFD`); the child stays unreaped.
pub fn waitid_peek(idtype: libc::idtype_t, id: libc::id_t) -> Option<i32> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid out pointer; WNOWAIT leaves the child as it is.
        let r = unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
        // SAFETY: waitid succeeded, so si_pid is set (0 when no child has exited).
        let pid = unsafe { info.si_pid() };
        return (pid > 0).then_some(pid);
    }
}

/// Whether `pid` is a zombie, whoever its parent.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, fields)| fields.starts_with('Z')))
        .unwrap_or(false)
}

/// Whether some process (maybe a zombie) has `pid`.
fn pid_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    unsafe { libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

// The reaper under test reaps these children (waitpid -1), not their `Child`.
#[allow(clippy::zombie_processes)]
#[cfg(test)]
mod tests {
    use tether_runtime::ChildWaiter;

    use super::*;

    #[test]
    fn a_pidfd_follows_its_process_only() {
        let reaper = crate::reaper::tests::shared();
        let spawned = std::time::Instant::now();
        let child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        let handle = Handle::open(pid);
        assert!(matches!(handle, Handle::Fd(_)), "this kernel has pidfds: {handle:?}");
        assert!(handle.is_running());
        assert!(!handle.is_lost(|| false));
        handle.signal(libc::SIGKILL).unwrap();
        assert_eq!(crate::rt::handle().block_on(reaper.wait_child(pid, spawned)), libc::SIGKILL);
        assert!(!handle.is_running());
        let err = handle.signal(libc::SIGTERM).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "a reaped process is never signalled");
    }
}
