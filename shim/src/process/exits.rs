//! An exit's way from the reaper to containerd.
//!
//! 1. The reaper reaps the process and calls the callback [`Table::supervise`] gave it: the
//!    exit is written to the bundle's journal at once (from here a shim crash cannot lose it)
//!    and queued for the exits task, on the loop.
//! 2. The exits task matches it to its process, in the order the exits were reaped. An exit
//!    that comes while the process is still starting waits in the process until the Start
//!    has published its own event; one whose pid is not the process's (an exec id reused
//!    after a Delete) is dropped.
//! 3. Each exit is then handled apart, in a task of its own, so that no exit waits behind
//!    another container's (or another process's) output drain or runtime call: the init of a
//!    container without a PID namespace of its own has what it left in its cgroup killed;
//!    the output drains (up to [`OUTPUT_DRAIN_TIMEOUT`]); an OOM kill is published; the
//!    process is marked stopped and /tasks/exit queued, together, under the table lock.
//!    An init's exit is held back while any of its execs runs, and handled after the last.
//!
//! Each running process also has a task that awaits its pidfd ([`Table::watch_vanishing`]),
//! so that one whose exit the reaper never sees (it was not the shim's child) is noticed
//! without a timer.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use tether_protos::{events::task::TaskExit, topics};
use tether_runtime::exit_code;
use tokio::sync::mpsc;

use super::{state::Op, Exited, Table};
use crate::{events::timestamp, journal::Entry, pidfd::Handle, reaper::Exit, rt};

/// How long an exit waits for the process's output to drain before it is reported anyway
/// (a background child may hold the stream open forever).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a process that has exited without an exit from the reaper so far, or that only a
/// pid names, is looked at again (see [`Table::notice_vanished`]).
const HEAL_INTERVAL: Duration = Duration::from_secs(5);

/// An exit on its way: container id, exec id (empty for the init), the exit.
type ExitMsg = (String, String, Exit);

/// Exits on their way from the reaper to the exits task, in the order they were reaped.
pub(super) type ExitQueue = mpsc::UnboundedSender<ExitMsg>;

/// Makes the exits queue and starts the task that matches each exit to its process (step 2
/// of the module docs); the task ends once the table is gone.
pub(super) fn start(table: Weak<Table>) -> ExitQueue {
    let (tx, mut rx) = mpsc::unbounded_channel::<ExitMsg>();
    rt::spawn(async move {
        while let Some((id, exec_id, exit)) = rx.recv().await {
            let Some(t) = table.upgrade() else { return };
            t.exit_arrived(&id, &exec_id, exit);
        }
    });
    tx
}

impl Table {
    /// Supervises a process whose pid the runtime just reported; returns its handle, which
    /// the caller stores in the process and then passes to [`Table::watch_vanishing`].
    pub(super) fn supervise(&self, id: &str, exec_id: &str, pid: i32, spawned: Instant) -> Arc<Handle> {
        let exits = self.exits.clone();
        let journal = self.journal.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        self.reaper.supervise(pid, spawned, move |exit| {
            let event_id = if exec_id.is_empty() { &id } else { &exec_id };
            let code = exit_code(exit.status) as u32;
            journal.record(&id, &Entry::new(event_id, exit.pid as u32, code, exit.at));
            // Only fails once the exits task has ended with the table: nobody is left to tell.
            let _ = exits.send((id, exec_id, exit));
        })
    }

    /// Watches a process stored with its handle until that handle is dropped (it exited):
    /// once its pidfd polls readable (it exited), and every [`HEAL_INTERVAL`] from then on or
    /// from the start where no pidfd names it, looks whether it is gone without an exit for
    /// the reaper. A task of its own, sleeping without a timer while the process runs.
    pub(super) fn watch_vanishing(self: &Arc<Self>, id: &str, exec_id: &str) {
        let Ok(Some(handle)) = self.with(id, |c| Ok(c.process(exec_id)?.handle.clone())) else { return };
        let exited = handle.exit_fd().map(|fd| fd.try_clone_to_owned().and_then(rt::watch));
        let (table, handle) = (Arc::downgrade(self), Arc::downgrade(&handle));
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        rt::spawn(async move {
            match exited {
                Some(Ok(pidfd)) => drop(pidfd.readable().await),
                Some(Err(e)) => {
                    log::warn!("{id}/{exec_id}: cannot watch its pidfd ({e}); looking every {HEAL_INTERVAL:?}")
                }
                None => {}
            }
            loop {
                let (Some(t), Some(h)) = (table.upgrade(), handle.upgrade()) else { return };
                if !t.supervises(&id, &exec_id, &h) || t.notice_vanished(&id, &exec_id) {
                    return;
                }
                drop((t, h));
                tokio::time::sleep(HEAL_INTERVAL).await;
            }
        });
    }

    /// Whether `handle` still names the process `id`/`exec_id`, which has no exit yet.
    fn supervises(&self, id: &str, exec_id: &str, handle: &Arc<Handle>) -> bool {
        self.with(id, |c| {
            let p = c.process(exec_id)?;
            Ok(p.exited.is_none() && p.handle.as_ref().is_some_and(|h| Arc::ptr_eq(h, handle)))
        })
        .unwrap_or(false)
    }

    /// Gives a process that is gone without an exit for the reaper (it was not the shim's
    /// child, or someone else reaped it) an exit of unknown status, so that its task does not
    /// seem to run forever; returns whether it did.
    pub(super) fn notice_vanished(&self, id: &str, exec_id: &str) -> bool {
        let supervised = self.with(id, |c| {
            let p = c.process(exec_id)?;
            let cgroup = if exec_id.is_empty() { c.cgroup.clone() } else { None };
            Ok(p.handle.clone().filter(|_| p.exited.is_none()).map(|h| (p.pid, h, cgroup)))
        });
        let Ok(Some((pid, handle, cgroup))) = supervised else { return false };
        // Where only a pid names the init, an empty cgroup says it is gone even if its pid
        // was recycled.
        self.reaper.notice_vanished(pid, &handle, || cgroup.is_some_and(|cg| !cg.populated()))
    }

    /// Step 2 of the module docs: an exit matched to its process, held while it starts, or
    /// handed to a task of its own.
    pub(super) fn exit_arrived(self: &Arc<Self>, id: &str, exec_id: &str, exit: Exit) {
        let handle_now = self.with(id, |c| {
            let p = c.process_mut(exec_id)?;
            if p.starting {
                p.early_exit = Some(exit);
                return Ok(false);
            }
            if p.pid != exit.pid || p.exited.is_some() {
                log::warn!("{id}/{exec_id}: exit of pid {} is not its process's (pid {}); ignored", exit.pid, p.pid);
                return Ok(false);
            }
            Ok(true)
        });
        match handle_now {
            Ok(true) => self.handle_exit_apart(id, exec_id, exit),
            Ok(false) => {}
            Err(_) => log::debug!("exit of pid {} for {id}/{exec_id}, which is gone", exit.pid),
        }
    }

    /// Handles `exit` apart from every other (step 3 of the module docs): a task of its own.
    pub(super) fn handle_exit_apart(self: &Arc<Self>, id: &str, exec_id: &str, exit: Exit) {
        let table = self.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        rt::spawn(async move { table.handle_exit(&id, &exec_id, exit).await });
    }

    /// Records an exit: kills what an init left behind where no kernel will, drains the
    /// process's output, marks it stopped, wakes waiters and publishes /tasks/exit. An
    /// init's exit waits until its execs' exits are reported.
    async fn handle_exit(self: &Arc<Self>, id: &str, exec_id: &str, exit: Exit) {
        if exec_id.is_empty() {
            self.kill_orphans(id).await;
            // Held until no exec runs or starts; reported at once when none does.
            let _ = self.with(id, |c| {
                c.deferred_init_exit = Some(exit);
                Ok(())
            });
        } else {
            self.finish(id, exec_id, exit).await;
        }
        self.release_init_exit(id);
    }

    /// Reports the init's held-back exit, in a task of its own, once no exec of the container
    /// runs or starts.
    pub(super) fn release_init_exit(self: &Arc<Self>, id: &str) {
        let init_exit = self.with(id, |c| Ok(if c.live_execs() { None } else { c.deferred_init_exit.take() }));
        if let Ok(Some(exit)) = init_exit {
            let (table, id) = (self.clone(), id.to_string());
            rt::spawn(async move { table.finish(&id, "", exit).await });
        }
    }

    /// When the init of a container without a PID namespace of its own has exited, kills
    /// what is left in its cgroup, as the kernel would have done in its own namespace (and as
    /// containerd's Go shim does). A worker left behind would hold the container's output
    /// open, and containerd 2.x waits for that output to close before it deletes the task:
    /// the pod could never stop.
    async fn kill_orphans(&self, id: &str) {
        let Ok(Some(executor)) = self.with(id, |c| Ok((!c.owns_pid_namespace).then(|| c.executor.clone()))) else {
            return;
        };
        match executor.kill(id, libc::SIGKILL as u32, true).await {
            Ok(()) | Err(tether_runtime::Error::NotFound(_) | tether_runtime::Error::NotRunning(_)) => {}
            Err(e) => log::warn!("{id}: cannot kill the processes left after its init exited: {e}"),
        }
    }

    async fn finish(&self, id: &str, exec_id: &str, exit: Exit) {
        if let Ok(io) = self.io(id, exec_id) {
            if !io.output_closed(OUTPUT_DRAIN_TIMEOUT).await {
                log::warn!("{id}/{exec_id}: output still open {OUTPUT_DRAIN_TIMEOUT:?} after exit; reporting the exit");
            }
        }
        // An OOM kill is published before the exit it caused.
        self.oom.check(id);
        let code = exit_code(exit.status) as u32;
        let recorded = self.with(id, |c| {
            let p = c.process_mut(exec_id)?;
            p.apply(Op::Exit)?;
            p.exited = Some(Exited { code, at: exit.at });
            // Nothing is signalled or checked on once it has exited: give its pidfd back.
            p.handle = None;
            // Under the table lock with the change: a Delete cannot slip in between.
            self.events.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                &TaskExit {
                    container_id: id.into(),
                    id: if exec_id.is_empty() { id.into() } else { exec_id.into() },
                    pid: p.pid as u32,
                    exit_status: code,
                    exited_at: Some(timestamp(exit.at)).into(),
                    ..Default::default()
                },
            );
            Ok(())
        });
        if let Err(e) = recorded {
            log::debug!("{id}/{exec_id}: exit of pid {} not recorded: {e}", exit.pid);
        }
        self.changed.notify_waiters();
    }
}
