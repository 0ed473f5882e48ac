//! Small process and fd helpers shared by the launcher and the stdio loggers.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    process::Command,
};

/// Makes `fds` the child's fds 3, 4, 5, ... (in order), as containerd's protocols expect.
///
/// The fds are first moved above 9 so that the dup2s between fork and exec cannot overwrite
/// one another; the returned copies must live until the child is spawned.
pub fn pass_fds(cmd: &mut Command, fds: &[&OwnedFd]) -> io::Result<Vec<OwnedFd>> {
    let moved: Vec<OwnedFd> = fds.iter().map(|fd| dup_above(fd.as_raw_fd(), 10)).collect::<io::Result<_>>()?;
    let raw: Vec<RawFd> = moved.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: only dup2 (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(moved)
}

fn dup_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd that we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
