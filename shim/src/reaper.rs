//! The one reaper: every child of the shim (OCI runtime calls, container inits re-parented to
//! this subreaper, exec'd processes) is reaped here with `waitpid(-1)` and its exit routed to
//! whoever watches that pid.
//!
//! A process can exit before anyone knows its pid (the runtime writes the pid file after
//! forking, and a short-lived container may be gone by then). Such exits are kept as
//! "unclaimed" and handed over when the pid is watched. Pids get recycled, so a watch names
//! the instant before the process was forked: an unclaimed exit reaped before that instant
//! belonged to an earlier process with the same pid and is not matched.

use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use signal_hook::{consts::SIGCHLD, iterator::Signals};
use tether_runtime::ChildWaiter;

/// How long an exit nobody claimed is kept. Such exits come from processes that were never
/// the shim's concern (e.g. orphans re-parented to the subreaper); container processes are
/// claimed within the runtime call that created them.
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The child's pid.
    pub pid: i32,
    /// The raw wait status.
    pub status: i32,
    /// Wall-clock time of the reap, reported to containerd as `exited_at`.
    pub at: SystemTime,
    /// Monotonic time of the reap, for matching against watch instants.
    pub reaped: Instant,
}

type Callback = Box<dyn FnOnce(Exit) + Send>;

#[derive(Default)]
struct Inner {
    watchers: HashMap<i32, (Instant, Callback)>,
    unclaimed: Vec<Exit>,
}

/// Routes child exits to their watchers. See the module docs for the guarantees.
#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

impl Reaper {
    /// Starts the reaper thread. Call before the shim forks any child, so that no SIGCHLD is
    /// missed.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut signals = Signals::new([SIGCHLD])?;
        let r = reaper.clone();
        thread::Builder::new().name("reaper".into()).spawn(move || {
            // Children may have exited before the handler was installed.
            r.reap_all();
            for _ in signals.forever() {
                r.reap_all();
            }
        })?;
        Ok(reaper)
    }

    /// Calls `on_exit` with the exit of `pid`, a process forked after `spawned`: now, from the
    /// calling thread, if it has already been reaped, else later from the reaper thread.
    /// `on_exit` must not block.
    pub fn watch(&self, pid: i32, spawned: Instant, on_exit: impl FnOnce(Exit) + Send + 'static) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(pos) = inner
            .unclaimed
            .iter()
            .position(|e| e.pid == pid && e.reaped >= spawned)
        {
            let exit = inner.unclaimed.remove(pos);
            drop(inner);
            on_exit(exit);
            return;
        }
        inner.watchers.insert(pid, (spawned, Box::new(on_exit)));
    }

    /// Reaps every exited child without blocking and routes each exit.
    fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid with a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            self.route(Exit {
                pid,
                status,
                at: SystemTime::now(),
                reaped: Instant::now(),
            });
        }
    }

    fn route(&self, exit: Exit) {
        log::debug!("reaped pid {} status {:#x}", exit.pid, exit.status);
        // The crate's helpers (rootfs mounts) wait through their own monitor.
        let _ = containerd_shim::monitor::monitor_notify_by_pid(
            exit.pid,
            tether_runtime::runc::exit_code(exit.status),
        );
        let mut inner = self.inner.lock().unwrap();
        match inner.watchers.remove(&exit.pid) {
            Some((_, on_exit)) => {
                drop(inner);
                on_exit(exit);
            }
            None => {
                inner.unclaimed.retain(|e| exit.reaped.duration_since(e.reaped) < UNCLAIMED_TTL);
                inner.unclaimed.push(exit);
            }
        }
    }

    #[cfg(test)]
    fn unclaimed(&self) -> usize {
        self.inner.lock().unwrap().unclaimed.len()
    }
}

impl ChildWaiter for Reaper {
    fn wait_child(&self, pid: i32, spawned: Instant) -> i32 {
        let (tx, rx) = mpsc::sync_channel(1);
        self.watch(pid, spawned, move |exit| {
            let _ = tx.send(exit.status);
        });
        rx.recv().expect("the reaper outlives every watch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32, reaped: Instant) -> Exit {
        Exit {
            pid,
            status: 7 << 8,
            at: SystemTime::now(),
            reaped,
        }
    }

    #[test]
    fn exit_before_watch_is_kept_and_matched() {
        let reaper = Reaper::default();
        let before = Instant::now();
        reaper.route(exit(4242, Instant::now()));
        assert_eq!(reaper.unclaimed(), 1);
        let (tx, rx) = mpsc::channel();
        reaper.watch(4242, before, move |e| tx.send(e.status).unwrap());
        assert_eq!(rx.try_recv().unwrap(), 7 << 8);
        assert_eq!(reaper.unclaimed(), 0);
    }

    #[test]
    fn stale_exit_of_a_recycled_pid_is_not_matched() {
        let reaper = Reaper::default();
        reaper.route(exit(4243, Instant::now()));
        let spawned = Instant::now() + Duration::from_millis(1);
        let (tx, rx) = mpsc::channel();
        reaper.watch(4243, spawned, move |e| tx.send(e.status).unwrap());
        assert!(rx.try_recv().is_err(), "an exit reaped before the fork must not match");
        reaper.route(exit(4243, spawned + Duration::from_millis(1)));
        assert_eq!(rx.try_recv().unwrap(), 7 << 8);
    }

    #[test]
    fn real_children_are_reaped_through_the_thread() {
        let reaper = Reaper::start().unwrap();
        let spawned = Instant::now();
        let child = std::process::Command::new("sh").args(["-c", "exit 5"]).spawn().unwrap();
        let status = reaper.wait_child(child.id() as i32, spawned);
        assert_eq!(tether_runtime::runc::exit_code(status), 5);
    }
}
