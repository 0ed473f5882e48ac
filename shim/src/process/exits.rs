//! An exit's way from the reaper to containerd.
//!
//! 1. The reaper reaps the process and calls the callback [`Table::supervise`] gave it: the
//!    exit is written to the bundle's journal at once (from here a shim crash cannot lose it)
//!    and queued for the exits thread.
//! 2. The exits thread matches it to its process. An exit that comes while the process is
//!    still starting waits in the process until the Start has published its own event; one
//!    whose pid is not the process's (an exec id reused after a Delete) is dropped.
//! 3. Each exit is then handled on a thread of its own, so that no exit waits behind
//!    another container's (or another process's) output drain or runtime call: the init of a
//!    container without a PID namespace of its own has what it left in its cgroup killed;
//!    the output drains (up to [`OUTPUT_DRAIN_TIMEOUT`]); an OOM kill is published; the
//!    process is marked stopped and /tasks/exit queued, together, under the table lock.
//!    An init's exit is held back while any of its execs runs, and handled after the last.
//!
//! Between exits the thread sleeps in poll on the pidfds of running processes, so that one
//! whose exit the reaper never sees (it was not the shim's child) is noticed without a timer.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        mpsc::{self, TryRecvError},
        Arc, Mutex, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use tether_protos::{events::task::TaskExit, topics};
use tether_runtime::exit_code;

use super::{state::Op, Exited, Table};
use crate::{events::timestamp, journal::Entry, pidfd::Handle, reaper::Exit};

/// How long an exit waits for the process's output to drain before it is reported anyway
/// (a background child may hold the stream open forever).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the exits thread looks again at a process that is gone without an exit from the
/// reaper so far (see [`Table::notice_vanished`]), or that only a pid names.
const HEAL_INTERVAL: Duration = Duration::from_secs(5);

/// An exit on its way: container id, exec id (empty for the init), the exit.
type ExitMsg = (String, String, Exit);

/// Exits on their way from the reaper to the exits thread, and a pipe that wakes the thread
/// from its poll: for an exit, a process newly supervised, or the table going away.
pub(super) struct ExitQueue {
    tx: Mutex<mpsc::Sender<ExitMsg>>,
    wake: OwnedFd,
}

/// The exits thread's end of the queue.
pub(super) struct Intake {
    rx: mpsc::Receiver<ExitMsg>,
    wake: OwnedFd,
}

impl ExitQueue {
    pub(super) fn new() -> std::io::Result<(ExitQueue, Intake)> {
        let (tx, rx) = mpsc::channel();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok((ExitQueue { tx: Mutex::new(tx), wake: write }, Intake { rx, wake: read }))
    }

    fn send(&self, msg: ExitMsg) {
        let _ = self.tx.lock().unwrap().send(msg);
        self.wake();
    }

    pub(super) fn wake(&self) {
        // A full pipe already wakes the thread; nothing else can fail here.
        let _ = nix::unistd::write(&self.wake, &[1]);
    }
}

impl Intake {
    /// Sleeps until the wake pipe or a pidfd of `running` polls readable, or `recheck`
    /// passes; then empties the pipe.
    fn wait(&self, running: &[Arc<Handle>], recheck: Option<Duration>) {
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.wake.as_raw_fd())
            .chain(running.iter().filter_map(|h| h.exit_fd()))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let timeout = recheck.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: poll on valid pollfds (the handles own their fds and outlive the call).
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        let mut buf = [0u8; 64];
        while nix::unistd::read(&self.wake, &mut buf).is_ok_and(|n| n > 0) {}
    }
}

/// Starts the exits thread of `table`; it ends once the table is gone.
pub(super) fn watch(table: Weak<Table>, intake: Intake) {
    thread::Builder::new()
        .name("exits".into())
        .spawn(move || loop {
            let Some(t) = table.upgrade() else { return };
            let (running, recheck) = t.exit_watch();
            drop(t);
            intake.wait(&running, recheck.then_some(HEAL_INTERVAL));
            drop(running);
            let Some(t) = table.upgrade() else { return };
            loop {
                match intake.rx.try_recv() {
                    Ok((id, exec_id, exit)) => t.exit_arrived(&id, &exec_id, exit),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            t.notice_all_vanished();
        })
        .expect("spawning the exits thread");
}

impl Table {
    /// Supervises a process whose pid the runtime just reported; returns its handle, which
    /// the caller stores in the process and then passes to [`Table::watch_new_handles`].
    pub(super) fn supervise(&self, id: &str, exec_id: &str, pid: i32, spawned: Instant) -> Arc<Handle> {
        let exits = self.exits.clone();
        let journal = self.journal.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        self.reaper.supervise(pid, spawned, move |exit| {
            let event_id = if exec_id.is_empty() { &id } else { &exec_id };
            let code = exit_code(exit.status) as u32;
            journal.record(&id, &Entry::new(event_id, exit.pid as u32, code, exit.at));
            exits.send((id, exec_id, exit));
        })
    }

    /// Has the exits thread watch the handles stored since it last looked.
    pub(super) fn watch_new_handles(&self) {
        self.exits.wake();
    }

    /// The processes believed to run that have a handle: (id, exec id, handle).
    fn running(&self) -> Vec<(String, String, Arc<Handle>)> {
        self.lock()
            .iter()
            .flat_map(|(id, c)| {
                std::iter::once(&c.init).chain(c.execs.values()).filter_map(move |p| {
                    let handle = p.handle.as_ref().filter(|_| p.exited.is_none())?;
                    Some((id.clone(), p.exec_id.clone(), handle.clone()))
                })
            })
            .collect()
    }

    /// What the exits thread waits on: the handles whose pidfd will poll readable when
    /// their process exits, and whether some process must be looked at again on a timer (it
    /// exited, but its exit has not come; or no fd can tell).
    fn exit_watch(&self) -> (Vec<Arc<Handle>>, bool) {
        let mut pollable = Vec::new();
        let mut recheck = false;
        for (_, _, handle) in self.running() {
            if handle.exit_fd().is_some() && handle.is_running() {
                pollable.push(handle);
            } else {
                recheck = true;
            }
        }
        (pollable, recheck)
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

    /// [`Table::notice_vanished`] for every process believed to run.
    fn notice_all_vanished(&self) {
        for (id, exec_id, _) in self.running() {
            self.notice_vanished(&id, &exec_id);
        }
    }

    /// Step 2 of the module docs: an exit matched to its process, held while it starts, or
    /// handed to a thread of its own.
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

    /// Handles `exit` on a thread of its own (step 3 of the module docs).
    pub(super) fn handle_exit_apart(self: &Arc<Self>, id: &str, exec_id: &str, exit: Exit) {
        let table = self.clone();
        let (owned_id, owned_exec_id) = (id.to_string(), exec_id.to_string());
        let spawned = thread::Builder::new()
            .name("exit".into())
            .spawn(move || table.handle_exit(&owned_id, &owned_exec_id, exit));
        if let Err(e) = spawned {
            log::error!("cannot start a thread for an exit ({e}); handling it on this one");
            self.handle_exit(id, exec_id, exit);
        }
    }

    /// Records an exit: kills what an init left behind where no kernel will, drains the
    /// process's output, marks it stopped, wakes waiters and publishes /tasks/exit. An
    /// init's exit waits until its execs' exits are reported.
    fn handle_exit(&self, id: &str, exec_id: &str, exit: Exit) {
        if exec_id.is_empty() {
            self.kill_orphans(id);
            // Held until no exec runs or starts; reported at once when none does.
            let _ = self.with(id, |c| {
                c.deferred_init_exit = Some(exit);
                Ok(())
            });
        } else {
            self.finish(id, exec_id, exit);
        }
        self.release_init_exit(id);
    }

    /// Reports the init's held-back exit once no exec of the container runs or starts.
    pub(super) fn release_init_exit(&self, id: &str) {
        let init_exit = self.with(id, |c| Ok(if c.live_execs() { None } else { c.deferred_init_exit.take() }));
        if let Ok(Some(exit)) = init_exit {
            self.finish(id, "", exit);
        }
    }

    /// When the init of a container without a PID namespace of its own has exited, kills
    /// what is left in its cgroup, as the kernel would have done in its own namespace (and as
    /// containerd's Go shim does). A worker left behind would hold the container's output
    /// open, and containerd 2.x waits for that output to close before it deletes the task:
    /// the pod could never stop.
    fn kill_orphans(&self, id: &str) {
        let Ok(Some(executor)) = self.with(id, |c| Ok((!c.owns_pid_namespace).then(|| c.executor.clone()))) else {
            return;
        };
        match executor.kill(id, libc::SIGKILL as u32, true) {
            Ok(()) | Err(tether_runtime::Error::NotFound(_) | tether_runtime::Error::NotRunning(_)) => {}
            Err(e) => log::warn!("{id}: cannot kill the processes left after its init exited: {e}"),
        }
    }

    fn finish(&self, id: &str, exec_id: &str, exit: Exit) {
        if let Ok(io) = self.io(id, exec_id) {
            if !io.wait_output(OUTPUT_DRAIN_TIMEOUT) {
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
        self.changed.notify_all();
    }
}
