//! The shim's one event loop: a current-thread tokio runtime that runs on the shim's main
//! thread and owns everything the shim waits on (its ttrpc server, exits, stdio, OOM
//! notifications, events, signals, and the OCI runtime calls).
//!
//! Nothing waits on a thread of its own. A runtime call spawns the runtime binary (a brief
//! fork and exec), then awaits its output (a pipe registered here) and its exit (the reaper's
//! SIGCHLD); the native executor awaits its helper's reply on a socket registered here. What
//! runs on the loop between two awaits is short: table updates, small file reads and writes
//! (pid files, state files, cgroup files, the runtime's log), system calls. The kernel's
//! cgroup-move grace period, which the shim starts ahead of a runtime's move, is waited out
//! by a child process (`cgroup::start_migration_grace_period`). So the shim has no blocking
//! pool: a serving shim is one thread, however many calls are in flight. The one exception is
//! a Create's rootfs mounts, on a thread of their own for the milliseconds they take
//! (`mount::mount_all`): containerd-shim's mount blocks until its child's exit comes back from
//! the reaper, a task of this loop.
//!
//! Code on any thread (a test's too) starts tasks with [`spawn`]: the loop's handle is kept
//! here once [`start`] made it, so that a module need not be handed one.

use std::{future::Future, io, os::fd::OwnedFd, sync::OnceLock};

use tokio::{
    io::{unix::AsyncFd, Interest},
    runtime::{Builder, Handle, Runtime},
    task::JoinHandle,
};

/// How many readiness events the loop takes from the kernel per turn. A shim waits on a
/// handful of descriptors per process (its sockets, stdio pipes, pidfds), and events beyond
/// this many are taken on the next turn; tokio's default (1024) is a 12 KiB buffer that every
/// shim would keep for its whole life.
const EVENTS_PER_TURN: usize = 64;

static LOOP: OnceLock<Handle> = OnceLock::new();

/// Makes the shim's runtime; the caller runs it on its own thread (`Runtime::block_on`).
/// Called once, before anything is spawned.
pub fn start() -> io::Result<Runtime> {
    let runtime = Builder::new_current_thread().enable_all().max_io_events_per_tick(EVENTS_PER_TURN).build()?;
    if LOOP.set(runtime.handle().clone()).is_err() {
        return Err(io::Error::other("the shim's runtime is made once"));
    }
    Ok(runtime)
}

/// The loop's handle. Before [`start`] (in unit tests) a runtime of the test binary's own,
/// run by a thread of its own, stands in for it.
pub fn handle() -> &'static Handle {
    LOOP.get_or_init(|| {
        let runtime = Builder::new_current_thread().enable_all().build().expect("building a test runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("test-loop".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("spawning the test loop");
        handle
    })
}

/// Runs `task` on the loop.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(task)
}

/// Registers `fd` with the loop (from any thread), so that a task can await its
/// readability; dropping the result deregisters it before the fd closes.
pub fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    let _in_loop = handle().enter();
    // SAFETY: the AsyncFd owns `fd`, so it stays open, and the same file, while registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}
