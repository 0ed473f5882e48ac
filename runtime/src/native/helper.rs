//! The native helper: a single-threaded process that forks one worker per libcontainer call
//! that creates processes.
//!
//! # Why a helper (fork safety)
//!
//! libcontainer creates a container by cloning the calling process (raw `clone3`, which skips
//! glibc's fork handlers) and then runs ordinary Rust in the clone: it allocates, formats
//! errors, serialises messages. In a multi-threaded process (a test binary; the shim, once it
//! had a blocking pool), another thread may hold the malloc arena lock (or the stderr lock, or
//! any other) at the instant of the clone; the clone inherits the lock held, with no thread
//! left to release it, and deadlocks on its first allocation. And in the serving shim, one
//! thread or not, the clone would carry the shim's event loop, and the shim's reaper would take
//! the exits libcontainer waits for. So the shim never clones itself for libcontainer.
//!
//! Instead the shim execs a fresh copy of its own binary as the helper (`fork` + `exec` from a
//! threaded process is safe: between the two only async-signal-safe calls run, in
//! [`Helper::spawn`]'s `pre_exec`). The helper has exactly one thread, forever. For each
//! request it forks a worker: the fork of a single-threaded process holds no lock it cannot
//! release, so the worker may allocate freely, and libcontainer's clones of the worker are
//! just as safe. The worker answers on the reply socket that came with the request and exits.
//!
//! # A helper only while there is work
//!
//! The helper exits once it has had no request for a while ([`IDLE_EXIT_MS`]): a shim whose
//! containers just run holds no second process. It first shuts its side of the control
//! socket for reading, which the kernel orders against the shim's sends: a request is either
//! queued before (and served) or refused with EPIPE, and the shim starts a new helper for it.
//!
//! # Who is whose child
//!
//! libcontainer makes the container's init (and an exec'd process) a child of the worker.
//! When the worker exits, they are re-parented to the nearest subreaper: the helper is not
//! one, the serving shim is. The shim's reaper therefore sees every container exit, including
//! that of a process that ended before its worker did (the kernel notifies the new parent of
//! a re-parented zombie). The helper ignores SIGCHLD so that its workers are reaped by the
//! kernel; each worker restores the default first, since libcontainer waits for its own
//! children.

use std::{
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::{unix::AsyncFd, Interest};

use super::{
    wire::{self, Failure, Reply, Request},
    worker,
};
use crate::{Error, Result};

/// The argument that makes the shim binary run [`serve`] (see [`Helper::new`]).
pub const HELPER_ARG: &str = "native-helper";
/// The helper's `argv[0]`.
const SHIM_NAME: &str = "containerd-shim-tether-v2";
/// The descriptor on which the helper receives requests.
const CONTROL_FD: RawFd = 3;
/// How long the helper waits for a request before it exits (the shim starts another on its
/// next call, for a few milliseconds). Long enough that a create and its start, or a burst
/// of execs, share one helper; short enough that a shim whose containers just run does not
/// keep a second process for nothing.
const IDLE_EXIT_MS: u16 = 2000;

/// The shim's handle on its helper: started on first use, and again after the helper died
/// or left for want of work.
pub struct Helper {
    /// The binary to run with [`HELPER_ARG`]: the shim's own (`/proc/self/exe`).
    exe: PathBuf,
    /// The shim's end of the running helper's control socket, non-blocking and registered
    /// with the loop that started the helper.
    control: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
}

impl Helper {
    /// A helper run as `exe native-helper`; `exe` must call [`serve`] for that argument
    /// before it does anything else (in particular before it starts a thread).
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        Helper { exe: exe.into(), control: Mutex::new(None) }
    }

    /// Has a worker carry out `req` with the process streams `stdio`, and awaits its reply.
    /// Both sockets are registered with the caller's runtime (a tokio runtime with IO
    /// enabled): the request goes out, and the reply comes in, whenever the loop finds them
    /// ready, so no thread waits for the worker.
    pub async fn call(&self, req: &Request, stdio: [OwnedFd; 3]) -> Reply {
        let bytes = serde_json::to_vec(req).expect("requests serialise");
        let (mine, theirs) = wire::pair().map_err(|e| internal("creating a reply socket", e))?;
        let mine = registered(mine).map_err(|e| internal("registering the reply socket", e))?;
        let fds = [theirs.as_raw_fd(), stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()];
        // A helper that died (or was killed, or left when idle) since the last call is
        // replaced once; nothing was sent to it, so the request cannot run twice.
        let mut sent = Err(std::io::Error::from(nix::errno::Errno::EPIPE));
        for _ in 0..2 {
            let control = self.control().map_err(|e| (Failure::Runtime, e.to_string()))?;
            sent = control.async_io(Interest::WRITABLE, |fd| as_io(wire::send(fd.as_raw_fd(), &bytes, &fds))).await;
            if sent.is_ok() {
                break;
            }
            // Forget this helper, unless a concurrent call already replaced it.
            let mut current = self.control.lock().unwrap();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &control)) {
                current.take();
            }
        }
        sent.map_err(|e| internal("sending a request to the native helper", e))?;
        // Only the worker may hold the write side of the reply socket and the process's
        // streams, or a dead worker would leave us (and the container's readers) waiting.
        drop(theirs);
        drop(stdio);
        match mine.async_io(Interest::READABLE, |fd| as_io(wire::recv(fd.as_raw_fd()))).await {
            Ok(Some((reply, _))) => serde_json::from_slice(&reply)
                .unwrap_or_else(|e| Err((Failure::Runtime, format!("unreadable reply from the native helper: {e}")))),
            Ok(None) => Err((Failure::Runtime, "the native helper's worker exited without an answer".into())),
            Err(e) => Err(internal("reading the native helper's reply", e)),
        }
    }

    /// The control socket of a running helper, starting one if there is none.
    fn control(&self) -> Result<Arc<AsyncFd<OwnedFd>>> {
        let mut control = self.control.lock().unwrap();
        if let Some(c) = control.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.spawn()?);
        *control = Some(c.clone());
        Ok(c)
    }

    fn spawn(&self) -> Result<AsyncFd<OwnedFd>> {
        let (ours, helpers) = wire::pair().map_err(|e| Error::io("creating the native helper's socket", e.into()))?;
        let helper_fd = helpers.as_raw_fd();
        let mut cmd = Command::new(&self.exe);
        // Named like the shim in `ps`, not `/proc/self/exe`.
        cmd.arg0(SHIM_NAME).arg(HELPER_ARG).stdin(Stdio::null()).stdout(Stdio::null());
        // stderr stays the shim's: the helper's rare complaints belong in the shim's log.
        // SAFETY: only dup2/fcntl run between fork and exec, both async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if helper_fd == CONTROL_FD {
                    // dup2 onto itself would keep close-on-exec set.
                    if libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(helper_fd, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The helper is the shim's child: the shim's reaper collects it when it exits.
        crate::spawn(&mut cmd).map_err(|source| Error::Spawn { binary: self.exe.clone(), source })?;
        registered(ours).map_err(|e| Error::io("registering the native helper's socket", e))
    }
}

/// The shim's end of a socket to the helper or a worker, made non-blocking and registered
/// with the current runtime. The other end stays blocking: the helper and its workers wait
/// on their own single thread.
fn registered(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    crate::set_nonblocking(fd.as_fd())?;
    // SAFETY: the AsyncFd owns `fd`, so it stays open, and the same socket, while registered.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// A socket call's result as tokio's readiness loop reads it (EAGAIN is `WouldBlock`).
fn as_io<T>(result: nix::Result<T>) -> std::io::Result<T> {
    result.map_err(std::io::Error::from)
}

/// Whether `fd` has something to read (or is closed) within `ms` milliseconds.
fn readable_within(fd: RawFd, ms: u16) -> bool {
    // SAFETY: the caller keeps `fd` open across the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(0) => return false,
            // An error is left to recv to report.
            _ => return true,
        }
    }
}

fn internal(what: &str, err: impl std::fmt::Display) -> (Failure, String) {
    (Failure::Runtime, format!("{what}: {err}"))
}

/// The helper's main loop (the shim binary run with [`HELPER_ARG`]); returns when the shim
/// closes the control socket (the shim has exited), or once no request came for
/// [`IDLE_EXIT_MS`].
///
/// Must be called while the process has a single thread.
pub fn serve() {
    // Whatever else the shim left open without close-on-exec (its listener) is not ours.
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        libc::syscall(libc::SYS_close_range, CONTROL_FD + 1, u32::MAX, 0);
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    // The shim was started in its first container's bundle, which goes when that container
    // is deleted; libcontainer needs a working directory that exists (it reads it).
    if let Err(e) = std::env::set_current_dir("/") {
        eprintln!("tether native helper: cannot change to /: {e}");
    }
    loop {
        if !readable_within(CONTROL_FD, IDLE_EXIT_MS) {
            // Refuse further requests: the shim's next send fails (EPIPE) and it starts a new
            // helper, so no request is lost. One queued before this is still served, and
            // the next recv then finds the socket closed.
            // SAFETY: shutdown of a socket this process owns.
            unsafe { libc::shutdown(CONTROL_FD, libc::SHUT_RD) };
        }
        let (bytes, fds) = match wire::recv(CONTROL_FD) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                eprintln!("tether native helper: reading a request: {e}");
                return;
            }
        };
        let Ok::<[OwnedFd; wire::REQUEST_FDS], _>([reply, stdin, stdout, stderr]) = fds.try_into() else {
            eprintln!("tether native helper: a request came without its {} descriptors", wire::REQUEST_FDS);
            continue;
        };
        // SAFETY: this process has one thread (see the module docs), so the child may run
        // any code.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: plain syscalls in the single-threaded worker.
                unsafe {
                    libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                    libc::close(CONTROL_FD);
                }
                let answer = match serde_json::from_slice::<Request>(&bytes) {
                    Ok(req) => worker::run(req, [stdin, stdout, stderr]),
                    Err(e) => Err((Failure::Runtime, format!("unreadable request: {e}"))),
                };
                let code = i32::from(wire::send_reply(&reply, &answer).is_err());
                // SAFETY: the worker ends here without running the helper's destructors.
                unsafe { libc::_exit(code) };
            }
            -1 => {
                let err = std::io::Error::last_os_error();
                let _ = wire::send_reply(&reply, &Err((Failure::Runtime, format!("forking a worker: {err}"))));
            }
            _ => {}
        }
    }
}
