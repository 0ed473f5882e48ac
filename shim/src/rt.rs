//! The shim's one event loop: a current-thread tokio runtime that runs on the shim's main
//! thread and owns everything the shim waits on (its ttrpc server, exits, stdio, OOM
//! notifications, events, signals).
//!
//! Work that must block (an OCI runtime call, a drain with a deadline) runs on tokio's
//! blocking pool through [`blocking`]; those threads exist only while such work does and end
//! after [`BLOCKING_KEEP_ALIVE`] without any. Nothing that blocks may run on the loop itself.
//!
//! Code on any thread, loop or pool, starts tasks with [`spawn`]: the loop's handle is kept
//! here once [`start`] made it, so that a module need not be handed one.

use std::{future::Future, io, os::fd::OwnedFd, sync::OnceLock, time::Duration};

use tokio::{
    io::{unix::AsyncFd, Interest},
    runtime::{Builder, Handle, Runtime},
    task::JoinHandle,
};

/// How long an idle thread of the blocking pool lives: long enough to serve a burst of calls
/// (an exec storm, a pod's containers starting) without a thread per call, short enough that
/// an idle shim soon runs on its one thread again.
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// How many readiness events the loop takes from the kernel per turn. A shim waits on a
/// handful of descriptors per process (its sockets, stdio pipes, pidfds), and events beyond
/// this many are taken on the next turn; tokio's default (1024) is a 12 KiB buffer that every
/// shim would keep for its whole life.
const EVENTS_PER_TURN: usize = 64;

static LOOP: OnceLock<Handle> = OnceLock::new();

/// Makes the shim's runtime; the caller runs it on its own thread (`Runtime::block_on`).
/// Called once, before anything is spawned.
pub fn start() -> io::Result<Runtime> {
    let runtime = Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(EVENTS_PER_TURN)
        .thread_name("blocking")
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()?;
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

/// Runs `work`, which may block, on the blocking pool; its result comes back to the loop.
pub fn blocking<F, R>(work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    handle().spawn_blocking(work)
}

/// Registers `fd` with the loop (from any thread), so that a task can await its
/// readability; dropping the result deregisters it before the fd closes.
pub fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    let _in_loop = handle().enter();
    // SAFETY: the AsyncFd owns `fd`, so it stays open, and the same file, while registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}
