//! The one reaper: every child of the shim (OCI runtime calls, container inits re-parented to
//! this subreaper, exec'd processes) is reaped here and its exit routed to whoever watches that
//! pid.
//!
//! A process can exit before anyone knows its pid (the runtime writes the pid file after
//! forking, and a short-lived container may be gone by then). Such exits are kept as
//! "unclaimed" and handed over when the pid is watched. Pids get recycled, so a watch names
//! the instant before the process was forked: an unclaimed exit reaped before that instant
//! belonged to an earlier process with the same pid and is not matched.
//!
//! Container processes are supervised through a [`Handle`] (a pidfd where the kernel has
//! them) opened as soon as their pid is known. The handle tells when the pid no longer names
//! the watched process: an exited child under that pid that is not it, a second watch of the
//! pid, or the process gone without ever becoming this shim's zombie (someone else reaped it).
//! The watched process then gets an exit of unknown status ([`UNKNOWN_EXIT`]) instead of
//! another process's status, or none at all and a task stuck running.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tether_runtime::ChildWaiter;
use tokio::sync::oneshot;

use crate::{
    pidfd::{waitid_peek, Handle},
    rt,
    signals::Signal,
};

/// How long an exit nobody claimed is kept. Such exits come from processes that were never
/// the shim's concern (e.g. orphans re-parented to the subreaper); container processes are
/// claimed within the runtime call that created them.
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

/// The exit code reported for a process whose real exit status the shim could not see.
pub const UNKNOWN_EXIT: i32 = 255;

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

impl Exit {
    /// The exit of a watched process that ended where this reaper could not see it (`why`):
    /// its status is lost, so it is reported as [`UNKNOWN_EXIT`].
    fn lost(pid: i32, why: &str) -> Exit {
        log::warn!("pid {pid}: {why}; its exit status is unknown, reporting {UNKNOWN_EXIT}");
        Exit { pid, status: UNKNOWN_EXIT << 8, at: SystemTime::now(), reaped: Instant::now() }
    }
}

type Callback = Box<dyn FnOnce(Exit) + Send>;

/// Exits to hand to their watchers once the reaper's lock is released.
type Deliveries = Vec<(Callback, Exit)>;

fn deliver(deliveries: Deliveries) {
    for (on_exit, exit) in deliveries {
        on_exit(exit);
    }
}

struct Watch {
    /// How a container process is named; `None` for the shim's own children (runtime
    /// calls), whose pid cannot change hands before this reaper reaps them.
    handle: Option<Arc<Handle>>,
    on_exit: Callback,
}

#[derive(Default)]
struct Inner {
    watchers: HashMap<i32, Watch>,
    unclaimed: Vec<Exit>,
}

impl Inner {
    /// The watcher of a reaped exit, or else keeps the exit as unclaimed.
    fn route(&mut self, exit: Exit) -> Option<(Callback, Exit)> {
        log::debug!("reaped pid {} status {:#x}", exit.pid, exit.status);
        // The crate's helpers (rootfs mounts) wait through their own monitor.
        let _ = containerd_shim::monitor::monitor_notify_by_pid(exit.pid, tether_runtime::exit_code(exit.status));
        match self.watchers.remove(&exit.pid) {
            Some(w) => Some((w.on_exit, exit)),
            None => {
                self.unclaimed.retain(|e| exit.reaped.duration_since(e.reaped) < UNCLAIMED_TTL);
                self.unclaimed.push(exit);
                log::debug!("pid {} is watched by nobody yet; {} such exits kept", exit.pid, self.unclaimed.len());
                None
            }
        }
    }
}

/// Routes child exits to their watchers. See the module docs for the guarantees.
#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

impl Reaper {
    /// Starts reaping on the loop, at every SIGCHLD. Call before the shim forks any child, so
    /// that no SIGCHLD is missed.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = Signal::catch(libc::SIGCHLD)?;
        let r = reaper.clone();
        rt::spawn(async move {
            // Children may have exited before the handler was installed.
            r.reap_all();
            while sigchld.recv().await.is_ok() {
                r.reap_all();
            }
            log::error!("SIGCHLD can no longer be awaited: no exit is reaped from now on");
        });
        Ok(reaper)
    }

    /// Calls `on_exit` with the exit of `pid`, a child the shim forked itself after
    /// `spawned`: now, from the calling thread, if it has already been reaped, else later
    /// from the loop. `on_exit` must not block.
    pub fn watch(&self, pid: i32, spawned: Instant, on_exit: impl FnOnce(Exit) + Send + 'static) {
        let (_, deliveries) = self.register(pid, spawned, None, Box::new(on_exit));
        deliver(deliveries);
    }

    /// Like [`Reaper::watch`], for a container process whose pid a runtime just reported:
    /// returns the handle to signal it by, [`Handle::Exited`] when its exit was already known.
    pub fn supervise(&self, pid: i32, spawned: Instant, on_exit: impl FnOnce(Exit) + Send + 'static) -> Arc<Handle> {
        // Opened before the unclaimed exits are searched: if none of them is this process's,
        // it was not reaped yet, so it still held the pid when the pidfd was opened.
        let handle = Arc::new(Handle::open(pid));
        let (watching, deliveries) = self.register(pid, spawned, Some(handle.clone()), Box::new(on_exit));
        deliver(deliveries);
        if watching {
            handle
        } else {
            // The pidfd may name whoever got the pid since.
            Arc::new(Handle::Exited)
        }
    }

    /// Watches `pid` unless its exit is known already; returns whether it is watched, and
    /// the exits to deliver.
    fn register(
        &self,
        pid: i32,
        spawned: Instant,
        handle: Option<Arc<Handle>>,
        on_exit: Callback,
    ) -> (bool, Deliveries) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(pos) = inner.unclaimed.iter().position(|e| e.pid == pid && e.reaped >= spawned) {
            let exit = inner.unclaimed.remove(pos);
            return (false, vec![(on_exit, exit)]);
        }
        if handle.as_deref().is_some_and(|h| matches!(h, Handle::Exited)) {
            return (false, vec![(on_exit, Exit::lost(pid, "gone, and not reaped here, when its pid became known"))]);
        }
        let previous = inner.watchers.insert(pid, Watch { handle, on_exit });
        // Only a new process can have the pid now: the one watched before ended unseen.
        let deliveries = previous
            .map(|old| (old.on_exit, Exit::lost(pid, "ended unseen, and its pid was given to another process")))
            .into_iter()
            .collect();
        (true, deliveries)
    }

    /// Ends the watch of `pid` held with `handle` with an exit of unknown status if that
    /// process is gone without an exit for this reaper to collect ([`Handle::is_lost`], with
    /// the caller's `vacated` evidence); returns whether it did.
    pub fn notice_vanished(&self, pid: i32, handle: &Arc<Handle>, vacated: impl FnOnce() -> bool) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let ours = inner.watchers.get(&pid).is_some_and(|w| w.handle.as_ref().is_some_and(|h| Arc::ptr_eq(h, handle)));
        // Checked under the lock: the reaper cannot collect the exit meanwhile.
        if !ours || !handle.is_lost(vacated) {
            return false;
        }
        let watch = inner.watchers.remove(&pid).expect("checked above");
        drop(inner);
        (watch.on_exit)(Exit::lost(pid, "gone, but its exit never reached the reaper"));
        true
    }

    /// Reaps every exited child without blocking and routes each exit. No child is spawned
    /// meanwhile ([`tether_runtime::reaping`]): std may still have to reap one whose exec
    /// failed.
    fn reap_all(&self) {
        let _no_spawn = tether_runtime::reaping();
        while let Some(deliveries) = self.reap_one() {
            deliver(deliveries);
        }
    }

    /// Reaps one exited child, if there is one; returns the exits to deliver (`None`: stop).
    fn reap_one(&self) -> Option<Deliveries> {
        let mut inner = self.inner.lock().unwrap();
        // Looked at before it is reaped, while the pid still names it.
        let pid = waitid_peek(libc::P_ALL, 0)?;
        let mut deliveries = Deliveries::new();
        let impostor = inner.watchers.get(&pid).and_then(|w| w.handle.as_ref()).is_some_and(|h| !h.is_waiting_zombie());
        if impostor {
            let watch = inner.watchers.remove(&pid).expect("checked above");
            let exit = Exit::lost(pid, "ended unseen, and another child of the shim with its pid exited");
            deliveries.push((watch.on_exit, exit));
        }
        let Some(status) = reap(pid) else {
            drop(inner);
            deliver(deliveries);
            return None;
        };
        let exit = Exit { pid, status, at: SystemTime::now(), reaped: Instant::now() };
        deliveries.extend(inner.route(exit));
        Some(deliveries)
    }
}

/// waitpid on one exited child; its raw wait status.
fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: plain waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        log::error!("reaping pid {pid}, which waitid reported exited: {}", std::io::Error::last_os_error());
        return None;
    }
}

/// A runtime call's child, awaited on the loop: the watch completes a oneshot.
#[async_trait::async_trait]
impl ChildWaiter for Reaper {
    async fn wait_child(&self, pid: i32, spawned: Instant) -> i32 {
        let (tx, rx) = oneshot::channel();
        self.watch(pid, spawned, move |exit| {
            let _ = tx.send(exit.status);
        });
        rx.await.expect("the reaper outlives every watch")
    }
}

// The reaper under test reaps these children (waitpid -1), not their `Child`.
#[allow(clippy::zombie_processes)]
#[cfg(test)]
pub(crate) mod tests {
    use std::{
        fs,
        io::{BufRead, BufReader},
        process::{Child, Command, Stdio},
        sync::{mpsc, OnceLock},
        thread,
    };

    use tether_runtime::exit_code;

    use super::*;
    use crate::pidfd::Pidfd;

    /// The test binary's one reaper: a second one would race it for children.
    pub fn shared() -> Arc<Reaper> {
        static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();
        REAPER.get_or_init(|| Reaper::start().expect("starting the reaper")).clone()
    }

    fn exit(pid: i32, reaped: Instant) -> Exit {
        Exit { pid, status: 7 << 8, at: SystemTime::now(), reaped }
    }

    /// As if the reaper had just reaped `exit`.
    fn reaped(reaper: &Reaper, exit: Exit) {
        let delivery = reaper.inner.lock().unwrap().route(exit);
        deliver(delivery.into_iter().collect());
    }

    fn unclaimed(reaper: &Reaper) -> usize {
        reaper.inner.lock().unwrap().unclaimed.len()
    }

    #[test]
    fn exit_before_watch_is_kept_and_matched() {
        let reaper = Reaper::default();
        let before = Instant::now();
        reaped(&reaper, exit(4242, Instant::now()));
        assert_eq!(unclaimed(&reaper), 1);
        let (tx, rx) = mpsc::channel();
        reaper.watch(4242, before, move |e| tx.send(e.status).unwrap());
        assert_eq!(rx.try_recv().unwrap(), 7 << 8);
        assert_eq!(unclaimed(&reaper), 0);
    }

    #[test]
    fn stale_exit_of_a_recycled_pid_is_not_matched() {
        let reaper = Reaper::default();
        reaped(&reaper, exit(4243, Instant::now()));
        let spawned = Instant::now() + Duration::from_millis(1);
        let (tx, rx) = mpsc::channel();
        reaper.watch(4243, spawned, move |e| tx.send(e.status).unwrap());
        assert!(rx.try_recv().is_err(), "an exit reaped before the fork must not match");
        reaped(&reaper, exit(4243, spawned + Duration::from_millis(1)));
        assert_eq!(rx.try_recv().unwrap(), 7 << 8);
    }

    #[test]
    fn real_children_are_reaped_on_the_loop() {
        let reaper = shared();
        let spawned = Instant::now();
        let child = Command::new("sh").args(["-c", "exit 5"]).spawn().unwrap();
        let status = rt::handle().block_on(reaper.wait_child(child.id() as i32, spawned));
        assert_eq!(exit_code(status), 5);
    }

    #[test]
    fn a_spawn_whose_exec_fails_is_not_reaped_from_under_std() {
        use std::os::unix::process::CommandExt;
        // The reaper runs (and reaps every child) while these spawns fail: std reaps each
        // failed child itself, and would panic had the reaper taken it first.
        let _reaper = shared();
        for _ in 0..200 {
            let mut cmd = Command::new("/no/such/runtime");
            // SAFETY: an empty hook; it only makes std fork and exec itself, as runc's does.
            unsafe { cmd.pre_exec(|| Ok(())) };
            let err = tether_runtime::spawn(&mut cmd).expect_err("no such binary");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        }
    }

    /// Set in the copy of the test binary that runs as pid 1 of a pid namespace of its own.
    const IN_PID_NAMESPACE: &str = "TETHER_TEST_IN_PID_NAMESPACE";

    /// Pid collisions forced with `ns_last_pid`, in a pid namespace where nothing else forks,
    /// so that the next pid is exactly the one asked for: the pid a watched process had is
    /// given to another process, and neither the handle nor the reaper mistakes one for the
    /// other.
    #[test]
    fn forced_pid_collisions_never_mix_up_processes() {
        if std::env::var_os(IN_PID_NAMESPACE).is_some() {
            return pid_collisions();
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED forced_pid_collisions_never_mix_up_processes: needs root for a pid namespace");
            return;
        }
        let reaper = shared();
        let spawned = Instant::now();
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "reaper::tests::forced_pid_collisions_never_mix_up_processes", "--nocapture"])
            .env(IN_PID_NAMESPACE, "1")
            .spawn()
            .expect("running unshare (util-linux)");
        let status = rt::handle().block_on(reaper.wait_child(child.id() as i32, spawned));
        assert_eq!(exit_code(status), 0, "the test failed inside its pid namespace (see its output above)");
    }

    /// Spawns `cmd` as pid `pid`.
    fn spawn_at(pid: i32, cmd: &mut Command) -> Child {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("setting ns_last_pid");
        let child = cmd.spawn().unwrap();
        assert_eq!(child.id() as i32, pid, "nothing else forks in this pid namespace");
        child
    }

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        cmd
    }

    /// A `sleep` whose parent is a shell (spawned as pid `shell`) that then runs `then`
    /// (`wait`: it reaps the sleep, so the shim never sees its exit). Returns the sleep's pid.
    fn grandchild(shell: i32, then: &str) -> i32 {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("sleep 1000 & echo $!; {then}")]).stdout(Stdio::piped());
        let mut sh = spawn_at(shell, &mut cmd);
        let mut line = String::new();
        BufReader::new(sh.stdout.take().unwrap()).read_line(&mut line).unwrap();
        line.trim().parse().unwrap()
    }

    /// A `sleep` supervised by `reaper` whose parent, a shell spawned as pid `shell`, reaps it
    /// when it is killed: returns its pid, free again by then, and its handle.
    fn killed_elsewhere(
        reaper: &Reaper,
        shell: i32,
        on_exit: impl FnOnce(Exit) + Send + 'static,
    ) -> (i32, Arc<Handle>) {
        let spawned = Instant::now();
        let pid = grandchild(shell, "wait");
        let handle = reaper.supervise(pid, spawned, on_exit);
        handle.signal(libc::SIGKILL).unwrap();
        until_reaped(pid);
        (pid, handle)
    }

    /// Waits until no process has `pid` any more.
    fn until_reaped(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Pidfd::open(pid).is_ok() {
            assert!(Instant::now() < deadline, "pid {pid} still taken after 10 s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid_collisions() {
        let reaper = Reaper::start().unwrap();
        let (tx, rx) = mpsc::channel::<(&str, Exit)>();
        let report = |name: &'static str| {
            let tx = tx.clone();
            move |exit: Exit| tx.send((name, exit)).unwrap()
        };
        let next = || {
            let (name, exit) = rx.recv_timeout(Duration::from_secs(10)).expect("an exit within 10 s");
            (name, exit_code(exit.status))
        };

        // A signal through the handle never reaches the process that got the pid next.
        let spawned = Instant::now();
        spawn_at(100, &mut sleeper());
        let first = reaper.supervise(100, spawned, report("first"));
        assert!(matches!(*first, Handle::Fd(_)), "pidfds on this kernel: {first:?}");
        first.signal(libc::SIGKILL).unwrap();
        assert_eq!(next(), ("first", 137));
        spawn_at(100, &mut sleeper());
        let err = first.signal(libc::SIGKILL).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        let second = Handle::open(100);
        assert!(second.is_running(), "the process now at pid 100 was not signalled");
        second.signal(libc::SIGKILL).unwrap();

        // A watched process reaped elsewhere; its pid goes to a child of ours that exits 7:
        // that 7 is not the watched process's exit.
        let (pid, _) = killed_elsewhere(&reaper, 200, report("lost"));
        let spawned = Instant::now();
        spawn_at(pid, Command::new("sh").args(["-c", "exit 7"]));
        assert_eq!(next(), ("lost", UNKNOWN_EXIT));
        reaper.watch(pid, spawned, report("newcomer"));
        assert_eq!(next(), ("newcomer", 7));

        // A watched process reaped elsewhere while its pid runs again: by pid it looks alive,
        // its pidfd knows better.
        let (pid, gone) = killed_elsewhere(&reaper, 300, report("gone"));
        spawn_at(pid, &mut sleeper());
        assert!(!Handle::Pid(pid).is_lost(|| false), "by pid alone the process seems to run");
        assert!(reaper.notice_vanished(pid, &gone, || false));
        assert_eq!(next(), ("gone", UNKNOWN_EXIT));
        assert!(!reaper.notice_vanished(pid, &gone, || false), "vanished once");
        Handle::open(pid).signal(libc::SIGKILL).unwrap();

        // The same by pid alone (kernels without pidfds): a pid that runs again only counts
        // as gone on the caller's evidence.
        let spawned = Instant::now();
        let pid = grandchild(400, "wait");
        let by_pid = Arc::new(Handle::Pid(pid));
        let (_, deliveries) = reaper.register(pid, spawned, Some(by_pid.clone()), Box::new(report("by pid")));
        assert!(deliveries.is_empty());
        by_pid.signal(libc::SIGKILL).unwrap();
        until_reaped(pid);
        spawn_at(pid, &mut sleeper());
        assert!(!reaper.notice_vanished(pid, &by_pid, || false), "a live pid is taken for the process");
        assert!(reaper.notice_vanished(pid, &by_pid, || true), "unless its cgroup is empty");
        assert_eq!(next(), ("by pid", UNKNOWN_EXIT));
        Handle::open(pid).signal(libc::SIGKILL).unwrap();

        // An exited process whose parent does not reap it is not lost: when that parent
        // exits, it comes to us (pid 1 here, the subreaper in the shim) with its status.
        let spawned = Instant::now();
        let pid = grandchild(600, "exec sleep 1000");
        // Killed while its parent is still the shell, the sleep could be reaped by the shell
        // on its way to exec (a slow machine): it must be the non-reaping `sleep` by then.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string("/proc/600/comm").unwrap_or_default().trim() != "sleep" {
            assert!(Instant::now() < deadline, "pid 600 never exec'd sleep");
            thread::sleep(Duration::from_millis(5));
        }
        let orphan = reaper.supervise(pid, spawned, report("orphan"));
        orphan.signal(libc::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while orphan.is_running() {
            assert!(Instant::now() < deadline, "pid {pid} did not exit");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!reaper.notice_vanished(pid, &orphan, || true), "a zombie is not lost");
        Handle::open(600).signal(libc::SIGKILL).unwrap();
        assert_eq!(next(), ("orphan", 137));

        // A second watch of a pid: the process watched before is gone.
        let (pid, _) = killed_elsewhere(&reaper, 500, report("old"));
        let spawned = Instant::now();
        spawn_at(pid, &mut sleeper());
        let new = reaper.supervise(pid, spawned, report("new"));
        assert_eq!(next(), ("old", UNKNOWN_EXIT));
        new.signal(libc::SIGKILL).unwrap();
        assert_eq!(next(), ("new", 137));
    }
}
