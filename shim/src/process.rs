//! The process table: every container this shim serves, each with its init and exec
//! processes, and the state machine each process follows.
//!
//! ```text
//!   Created ──start──▶ Running ◀──resume── Paused
//!      │                  │  └────pause────▶  │
//!      └──exit/delete──▶ Stopped ◀───exit─────┘ ──delete──▶ (gone)
//! ```
//!
//! The table owns all state; the task service only translates requests. Lifecycle calls on
//! one container (create, start, exec start, pause, resume, delete, and the handling of its
//! exits) are serialised by the container's lifecycle lock, and OCI runtime calls are made
//! without holding the table lock, so a slow runtime never blocks State, Wait or another
//! container.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, TryRecvError},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use tether_protos::{
    api, debug,
    events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
        TaskResumed, TaskStart,
    },
    protobuf::well_known_types::any::Any,
    protobuf::Message,
    runc_options::{CheckpointOptions, ProcessDetails},
    topics,
};
use tether_runtime::{runc::exit_code, CheckpointOpts, CreateOpts, CriuOpts, ExecOpts, Executor, RestoreOpts};

use crate::{
    cgroup::{self, Cgroup},
    config::{self, Settings},
    error::{Error, Result},
    events::{timestamp, to_any, Publisher},
    idle,
    journal::{Entry, ExitJournal},
    logger, mount,
    oom::OomMonitor,
    pidfd::Handle,
    reaper::{Exit, Reaper},
    resources,
    stdio::{ProcessIo, StdioSpec},
};

/// How long an exit waits for the process's output to drain before it is reported anyway
/// (a background child may hold the stream open forever).
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The file in the bundle holding the executor settings, for the `delete` subcommand.
pub const SETTINGS_FILE: &str = "tether.json";
/// The file in the bundle where the runtime writes the init's pid.
pub const INIT_PID_FILE: &str = "init.pid";
/// CRIU's work directory in the bundle when the request names none.
const CRIU_WORK_DIR: &str = "criu-work";
/// How often the exits thread looks again at a process that is gone without an exit from the
/// reaper so far (see [`Table::heal`]), or that only a pid names.
const HEAL_INTERVAL: Duration = Duration::from_secs(5);

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    fn api(self) -> api::Status {
        match self {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// The exit code; death by signal N is 128 + N.
    pub code: u32,
    pub at: SystemTime,
}

/// One process: a container's init (empty exec id) or an exec.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub status: Status,
    pub exited: Option<Exited>,
    pub stdio: StdioSpec,
    io: Option<Arc<ProcessIo>>,
    /// How the process is signalled and checked on, once its pid is known.
    handle: Option<Arc<Handle>>,
    /// An exec's OCI process spec (JSON), kept until it is started.
    spec: Vec<u8>,
}

impl Process {
    fn new(exec_id: &str, stdio: StdioSpec) -> Self {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: Status::Created,
            exited: None,
            stdio,
            io: None,
            handle: None,
            spec: Vec::new(),
        }
    }

    /// Moves to `to` if the state machine allows it.
    fn transition(&mut self, to: Status) -> Result<()> {
        use Status::*;
        let ok = matches!(
            (self.status, to),
            (Created, Running)
                | (Created, Stopped)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopped)
                | (Paused, Stopped)
        );
        if !ok {
            return Err(Error::FailedPrecondition(format!(
                "{} is {:?}, cannot become {:?}",
                self.name(),
                self.status,
                to
            )));
        }
        self.status = to;
        Ok(())
    }

    fn name(&self) -> String {
        if self.exec_id.is_empty() {
            "the container's init process".into()
        } else {
            format!("exec process {}", self.exec_id)
        }
    }

    fn is_live(&self) -> bool {
        matches!(self.status, Status::Running | Status::Paused)
    }

    fn exit_fields(&self) -> (u32, SystemTime) {
        self.exited.map(|e| (e.code, e.at)).unwrap_or((0, SystemTime::UNIX_EPOCH))
    }

    /// The process as the debug service shows it.
    fn dump(&self) -> debug::Process {
        let (code, at) = self.exit_fields();
        let count = |c: Option<&Arc<AtomicU64>>| c.map_or(0, |c| c.load(Ordering::Relaxed));
        let copied = self.io.as_ref().map(|io| &io.copied);
        let pipes = self.io.as_ref().map(|io| io.pipes).unwrap_or_default();
        debug::Process {
            exec_id: self.exec_id.clone(),
            pid: self.pid,
            status: format!("{:?}", self.status).to_lowercase(),
            exited: self.exited.is_some(),
            exit_status: code,
            exited_at_unix_nanos: if self.exited.is_some() { unix_nanos(at) } else { 0 },
            stdio: Some(debug::Stdio {
                stdin: self.stdio.stdin.clone(),
                stdout: self.stdio.stdout.clone(),
                stderr: self.stdio.stderr.clone(),
                terminal: self.stdio.terminal,
                stdin_bytes: count(copied.map(|c| &c.stdin)),
                stdout_bytes: count(copied.map(|c| &c.stdout)),
                stderr_bytes: count(copied.map(|c| &c.stderr)),
                stdout_pipe: pipes.stdout,
                stderr_pipe: pipes.stderr,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// One container and its processes.
struct Container {
    bundle: PathBuf,
    executor: Arc<dyn Executor>,
    init: Process,
    execs: HashMap<String, Process>,
    /// The init's exit, held back until every exec's exit has been reported.
    deferred_init_exit: Option<Exit>,
    rootfs: Option<PathBuf>,
    /// The container's cgroup, found once its init exists (`None` if it could not be read).
    cgroup: Option<Cgroup>,
    /// Restored from a checkpoint at Create: its processes already run, Start only says so.
    restored: bool,
    /// Its init is PID 1 of a namespace of its own, so the kernel kills every other process
    /// of the container when the init exits. Otherwise the shim does (see `handle_exit`).
    owns_pid_namespace: bool,
    lifecycle: Arc<Mutex<()>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| Error::NotFound(format!("exec {exec_id}")))
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs.get_mut(exec_id).ok_or_else(|| Error::NotFound(format!("exec {exec_id}")))
    }

    fn live_execs(&self) -> bool {
        self.execs.values().any(Process::is_live)
    }
}

/// What Create needs.
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<api::Mount>,
    pub stdio: StdioSpec,
    pub options: Option<Any>,
    /// A checkpoint image directory to restore the container from, instead of its spec.
    pub checkpoint: Option<PathBuf>,
}

/// What Checkpoint needs.
pub struct CheckpointRequest {
    /// Where containerd wants the images (used unless the options name an image path).
    pub path: PathBuf,
    /// containerd's runc `CheckpointOptions`, when sent.
    pub options: Option<Any>,
}

/// A process's exit as Delete and Wait report it.
pub struct ExitInfo {
    pub pid: u32,
    pub code: u32,
    pub at: SystemTime,
}

type ExitMsg = (String, String, Exit);

/// Exits on their way from the reaper to the exits thread, and a pipe that wakes the thread
/// from its poll: for an exit, a process newly supervised, or the table going away.
struct ExitQueue {
    tx: Mutex<mpsc::Sender<ExitMsg>>,
    wake: OwnedFd,
}

impl ExitQueue {
    /// The queue, its receiving end and the read end of its pipe.
    fn new() -> std::io::Result<(ExitQueue, mpsc::Receiver<ExitMsg>, OwnedFd)> {
        let (tx, rx) = mpsc::channel();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok((ExitQueue { tx: Mutex::new(tx), wake: write }, rx, read))
    }

    fn send(&self, msg: ExitMsg) {
        let _ = self.tx.lock().unwrap().send(msg);
        self.wake();
    }

    fn wake(&self) {
        // A full pipe already wakes the thread; nothing else can fail here.
        let _ = nix::unistd::write(&self.wake, &[1]);
    }
}

/// Sleeps until the pipe `wake` or a pidfd of `running` polls readable, or `recheck` passes;
/// then empties the pipe.
fn wait_for_exits(wake: &OwnedFd, running: &[Arc<Handle>], recheck: Option<Duration>) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
        .chain(running.iter().filter_map(|h| h.exit_fd()))
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let timeout = recheck.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: poll on valid pollfds (the handles own their fds and outlive the call).
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    let mut buf = [0u8; 64];
    while nix::unistd::read(wake, &mut buf).is_ok_and(|n| n > 0) {}
}

/// Every container this shim serves. See the module docs.
pub struct Table {
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    /// Ids being created, so that two Creates of one id cannot both proceed.
    creating: Mutex<HashSet<String>>,
    changed: Condvar,
    /// Exits not yet delivered to containerd, per bundle.
    journal: Arc<ExitJournal>,
    reaper: Arc<Reaper>,
    events: Arc<Publisher>,
    oom: Arc<OomMonitor>,
    exits: Arc<ExitQueue>,
    /// Forks for the native executor's containers (idle until the first one).
    native_helper: Arc<config::Helper>,
}

impl Drop for Table {
    fn drop(&mut self) {
        // The exits thread holds the table only weakly: woken, it finds it gone and ends.
        self.exits.wake();
    }
}

impl Table {
    /// A table publishing to `events`, learning of exits from `reaper` and of OOM kills
    /// from `oom`.
    pub fn new(namespace: &str, reaper: Arc<Reaper>, events: Arc<Publisher>, oom: Arc<OomMonitor>) -> Arc<Table> {
        let (exits, rx, wake) = ExitQueue::new().expect("creating the exits queue's pipe");
        let journal = Arc::new(ExitJournal::default());
        let settle = journal.clone();
        events.on_delivered(move |event| settle.settle(event));
        let table = Arc::new(Table {
            namespace: namespace.to_string(),
            containers: Mutex::default(),
            creating: Mutex::default(),
            changed: Condvar::new(),
            journal,
            reaper,
            events,
            oom,
            exits: Arc::new(exits),
            native_helper: config::native_helper(),
        });
        let weak = Arc::downgrade(&table);
        thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                // One thread handles every exit, in reap order, so events keep their order.
                // Between exits it sleeps in poll on the pidfds of the running processes, so
                // that one whose exit the reaper never sees (it was not the shim's child) is
                // noticed without the shim waking up on a timer while all is well.
                loop {
                    let Some(table) = weak.upgrade() else { return };
                    let (running, recheck) = table.exit_watch();
                    drop(table);
                    wait_for_exits(&wake, &running, recheck.then_some(HEAL_INTERVAL));
                    drop(running);
                    let Some(table) = weak.upgrade() else { return };
                    loop {
                        match rx.try_recv() {
                            Ok((id, exec_id, exit)) => table.handle_exit(&id, &exec_id, exit),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                    }
                    table.heal_all();
                }
            })
            .expect("spawning the exits thread");
        table
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap()
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        let mut map = self.lock();
        let c = map.get_mut(id).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        f(c)
    }

    fn lifecycle(&self, id: &str) -> Result<Arc<Mutex<()>>> {
        self.with(id, |c| Ok(c.lifecycle.clone()))
    }

    /// Supervises a process whose pid the runtime just reported; returns its handle, which
    /// the caller stores in the process and then passes to [`Table::supervised`].
    fn supervise(&self, id: &str, exec_id: &str, pid: i32, spawned: Instant) -> Arc<Handle> {
        let exits = self.exits.clone();
        let journal = self.journal.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        self.reaper.supervise(pid, spawned, move |exit| {
            // Written down as it is reaped, before anything may wait (an exit is handled
            // after the ones before it): from here a shim crash cannot lose it.
            let event_id = if exec_id.is_empty() { &id } else { &exec_id };
            let code = exit_code(exit.status) as u32;
            journal.record(&id, &Entry::new(event_id, exit.pid as u32, code, exit.at));
            exits.send((id, exec_id, exit));
        })
    }

    /// Has the exits thread watch the handles stored since it last looked.
    fn supervised(&self) {
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
    fn heal(&self, id: &str, exec_id: &str) -> bool {
        let supervised = self.with(id, |c| {
            let p = c.process(exec_id)?;
            let cgroup = if exec_id.is_empty() { c.cgroup.clone() } else { None };
            Ok(p.handle.clone().filter(|_| p.exited.is_none()).map(|h| (p.pid, h, cgroup)))
        });
        let Ok(Some((pid, handle, cgroup))) = supervised else { return false };
        // Where only a pid names the init, an empty cgroup says it is gone even if its pid
        // was recycled.
        self.reaper.heal(pid, &handle, || cgroup.is_some_and(|cg| !cg.populated()))
    }

    /// [`Table::heal`] for every process believed to run.
    fn heal_all(&self) {
        for (id, exec_id, _) in self.running() {
            self.heal(&id, &exec_id);
        }
    }

    /// Whether no container is left (Shutdown may exit the shim).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty() && self.creating.lock().unwrap().is_empty()
    }

    /// Creates a container: mounts its rootfs, prepares stdio, has the executor create it.
    pub fn create(&self, req: CreateRequest) -> Result<u32> {
        validate_id(&req.id)?;
        let owns_pid_namespace = check_bundle(&req.bundle, req.rootfs.is_empty())?;
        {
            let map = self.lock();
            let mut creating = self.creating.lock().unwrap();
            if map.contains_key(&req.id) || !creating.insert(req.id.clone()) {
                return Err(Error::AlreadyExists(format!("container {}", req.id)));
            }
        }
        let result = self.create_reserved(&req, owns_pid_namespace);
        self.creating.lock().unwrap().remove(&req.id);
        result
    }

    fn create_reserved(&self, req: &CreateRequest, owns_pid_namespace: bool) -> Result<u32> {
        // The new container's init is moved into its cgroup.
        cgroup::start_migration_grace_period();
        let settings = Settings::from_options(&self.namespace, req.options.as_ref())?;
        if let Some(level) = settings.log_level {
            logger::set_level(level.filter());
        }
        if let Some(ms) = settings.idle_trim_ms {
            idle::SHIM.set_after(Duration::from_millis(ms));
        }
        let settings_json = serde_json::to_vec(&settings).expect("settings serialise");
        fs::write(req.bundle.join(SETTINGS_FILE), settings_json)
            .map_err(|e| Error::io(format!("writing {SETTINGS_FILE} in the bundle"), e))?;
        let executor = settings.executor(self.reaper.clone(), &self.native_helper)?;

        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = req.bundle.join("rootfs");
            mount::mount_all(&req.rootfs, &target)?;
            Some(target)
        };
        let undo_mount = || {
            if let Some(t) = &rootfs {
                mount::unmount(t);
            }
        };

        let (mut io, stdio, console) = match ProcessIo::prepare(&req.stdio, &req.id, &self.namespace) {
            Ok(p) => p,
            Err(e) => {
                undo_mount();
                return Err(e);
            }
        };
        let spawned = Instant::now();
        let opts = CreateOpts {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid_file: req.bundle.join(INIT_PID_FILE),
            console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
            stdio,
            no_pivot_root: false,
            no_new_keyring: false,
        };
        let created = match &req.checkpoint {
            None => executor.create(opts).map_err(Error::from),
            Some(image) => {
                let criu = CriuOpts {
                    image_path: image.clone(),
                    work_path: req.bundle.join(CRIU_WORK_DIR),
                    terminal: req.stdio.terminal,
                    ..Default::default()
                };
                let restored = executor.restore(RestoreOpts { create: opts, criu: criu.clone() });
                restored.map_err(|e| criu_failure(e, &criu.work_path, &req.bundle, "restore"))
            }
        };
        let pid = match created.and_then(|pid| io.start(console).map(|()| pid)) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = executor.delete(&req.id, true);
                undo_mount();
                return Err(e);
            }
        };

        let mut init = Process::new("", req.stdio.clone());
        init.pid = pid;
        init.io = Some(Arc::new(io));
        let cgroup = Cgroup::of_pid(pid)
            .inspect_err(|e| log::warn!("container {}: cannot read its cgroup: {e}; no stats or OOM events", req.id))
            .ok();
        if let Some(cg) = &cgroup {
            if let Err(e) = self.oom.watch(&req.id, cg) {
                log::warn!("container {}: cannot watch for OOM kills: {e}", req.id);
            }
        }
        self.journal.open(&req.id, &req.bundle);
        self.lock().insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                executor,
                init,
                execs: HashMap::new(),
                deferred_init_exit: None,
                rootfs,
                cgroup,
                restored: req.checkpoint.is_some(),
                owns_pid_namespace,
                lifecycle: Arc::default(),
            },
        );
        let handle = self.supervise(&req.id, "", pid, spawned);
        // A Delete may have come in since the insert: then the handle has nobody to serve.
        let _ = self.with(&req.id, |c| {
            c.init.handle = Some(handle);
            Ok(())
        });
        self.supervised();
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            &TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.display().to_string(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdio.stdin.clone(),
                    stdout: req.stdio.stdout.clone(),
                    stderr: req.stdio.stderr.clone(),
                    terminal: req.stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid as u32)
    }

    /// Starts the init (empty `exec_id`) or an exec; returns its pid.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().unwrap();
        if exec_id.is_empty() {
            let (executor, restored) = self.with(id, |c| {
                if c.init.status != Status::Created {
                    return Err(Error::FailedPrecondition(format!(
                        "container {id} is {:?}, not created",
                        c.init.status
                    )));
                }
                Ok((c.executor.clone(), c.restored))
            })?;
            if !restored {
                executor.start(id)?;
            }
            let pid = self.with(id, |c| {
                c.init.transition(Status::Running)?;
                Ok(c.init.pid as u32)
            })?;
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                &TaskStart { container_id: id.into(), pid, ..Default::default() },
            );
            return Ok(pid);
        }
        self.start_exec(id, exec_id)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (executor, stdio, spec, bundle) = self.with(id, |c| {
            if c.init.status != Status::Running {
                return Err(Error::FailedPrecondition(format!(
                    "cannot start exec {exec_id}: container {id} is {:?}",
                    c.init.status
                )));
            }
            let p = c.process(exec_id)?;
            if p.status != Status::Created {
                return Err(Error::FailedPrecondition(format!("exec {exec_id} is {:?}, not created", p.status)));
            }
            Ok((c.executor.clone(), p.stdio.clone(), p.spec.clone(), c.bundle.clone()))
        })?;
        // The exec'd process joins the container's cgroup.
        cgroup::start_migration_grace_period();
        let spec_file = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        fs::write(&spec_file, &spec).map_err(|e| Error::io("writing the exec's process spec", e))?;
        let (mut io, streams, console) = ProcessIo::prepare(&stdio, id, &self.namespace)?;
        let spawned = Instant::now();
        let result = executor
            .exec(
                id,
                ExecOpts {
                    process_spec: spec_file.clone(),
                    pid_file: pid_file.clone(),
                    console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
                    stdio: streams,
                },
            )
            .map_err(Error::from)
            .and_then(|pid| io.start(console).map(|()| pid));
        let _ = fs::remove_file(&spec_file);
        let _ = fs::remove_file(&pid_file);
        let pid = result?;
        // An exit delivered at once is handled after this call: it holds the lifecycle lock.
        let handle = self.supervise(id, exec_id, pid, spawned);
        let started = self.with(id, |c| {
            let p = c.process_mut(exec_id)?;
            p.pid = pid;
            p.io = Some(Arc::new(io));
            p.handle = Some(handle);
            p.transition(Status::Running)
        });
        self.supervised();
        started?;
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            &TaskExecStarted {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid as u32)
    }

    /// Registers an exec process (started later by [`Table::start`]).
    pub fn exec(&self, id: &str, exec_id: &str, spec: Vec<u8>, stdio: StdioSpec) -> Result<()> {
        validate_id(exec_id)?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| Error::InvalidArgument(format!("exec {exec_id}: the process spec is not a JSON object")))?;
        self.with(id, |c| {
            if c.init.status == Status::Stopped {
                return Err(Error::FailedPrecondition(format!("container {id} has exited")));
            }
            if c.execs.contains_key(exec_id) {
                return Err(Error::AlreadyExists(format!("exec {exec_id}")));
            }
            let mut p = Process::new(exec_id, stdio);
            p.spec = spec;
            c.execs.insert(exec_id.to_string(), p);
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            &TaskExecAdded { container_id: id.into(), exec_id: exec_id.into(), ..Default::default() },
        );
        Ok(())
    }

    /// Sends a signal to the init (with `all`, to every process of the container) or an exec.
    /// With `all`, whatever is left in the container's cgroup is signalled even after its init
    /// has exited.
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let finished = || Error::NotFound(format!("process {exec_id:?} of {id} has already finished"));
        let healed = self.heal(id, exec_id);
        let (executor, status, handle) = self.with(id, |c| {
            let p = c.process(exec_id)?;
            Ok((c.executor.clone(), p.status, p.handle.clone()))
        })?;
        match (status, handle) {
            _ if all && exec_id.is_empty() => Ok(executor.kill(id, signal, true)?),
            _ if healed => Err(finished()),
            (Status::Stopped, _) => Err(finished()),
            (Status::Created, _) if !exec_id.is_empty() => {
                Err(Error::FailedPrecondition(format!("exec {exec_id} has not been started")))
            }
            _ if exec_id.is_empty() => Ok(executor.kill(id, signal, all)?),
            // An exec is not the runtime's to signal: it is our child, named by its handle so
            // that a recycled pid is never signalled.
            (_, Some(handle)) => handle.signal(signal as i32).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => finished(),
                Some(libc::EINVAL) => Error::InvalidArgument(format!("invalid signal {signal}")),
                _ => Error::io(format!("signalling exec {exec_id}"), e),
            }),
            (_, None) => Err(Error::FailedPrecondition(format!("exec {exec_id} has no process yet"))),
        }
    }

    /// Freezes (`pause = true`) or thaws the container.
    pub fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().unwrap();
        let (from, to) = if pause { (Status::Running, Status::Paused) } else { (Status::Paused, Status::Running) };
        let executor = self.with(id, |c| {
            if c.init.status != from {
                return Err(Error::FailedPrecondition(format!("container {id} is {:?}, not {from:?}", c.init.status)));
            }
            Ok(c.executor.clone())
        })?;
        if pause {
            executor.pause(id)?;
        } else {
            executor.resume(id)?;
        }
        self.with(id, |c| c.init.transition(to))?;
        if pause {
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                &TaskPaused { container_id: id.into(), ..Default::default() },
            );
        } else {
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                &TaskResumed { container_id: id.into(), ..Default::default() },
            );
        }
        Ok(())
    }

    /// Deletes a stopped (or never started) process; deleting the init removes the container.
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        if !exec_id.is_empty() {
            return self.with(id, |c| {
                let p = c.process(exec_id)?;
                if p.is_live() {
                    return Err(Error::FailedPrecondition(format!("exec {exec_id} is still running")));
                }
                let (code, at) = p.exit_fields();
                let pid = p.pid as u32;
                c.execs.remove(exec_id);
                Ok(ExitInfo { pid, code, at })
            });
        }
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().unwrap();
        let (executor, status) = self.with(id, |c| Ok((c.executor.clone(), c.init.status)))?;
        if matches!(status, Status::Running | Status::Paused) {
            return Err(Error::FailedPrecondition(format!("container {id} is still running; kill it first")));
        }
        executor.delete(id, true)?;
        // Only once the runtime let go: a failed delete leaves the container, still watched.
        self.oom.unwatch(id);
        let c = self.lock().remove(id).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        // containerd learns the exit from this answer.
        self.journal.close(id);
        if let Some(t) = &c.rootfs {
            mount::unmount(t);
        }
        let _ = fs::remove_file(c.bundle.join(SETTINGS_FILE));
        self.changed.notify_all();
        // Hand freed memory back to the system: a long-lived shim of a pod should shrink
        // when its containers go.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let (code, at) = match c.init.exited {
            Some(e) => (e.code, e.at),
            // Deleted before it ran: the runtime killed it.
            None => (128 + libc::SIGKILL as u32, SystemTime::now()),
        };
        let pid = c.init.pid as u32;
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            &TaskDelete {
                container_id: id.into(),
                pid,
                exit_status: code,
                exited_at: Some(timestamp(at)).into(),
                ..Default::default()
            },
        );
        Ok(ExitInfo { pid, code, at })
    }

    /// Every container and process, as the debug service shows them (sorted by id).
    pub fn dump(&self) -> Vec<debug::Container> {
        let map = self.lock();
        let mut containers: Vec<debug::Container> = map
            .iter()
            .map(|(id, c)| {
                let mut execs: Vec<&Process> = c.execs.values().collect();
                execs.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
                debug::Container {
                    id: id.clone(),
                    bundle: c.bundle.display().to_string(),
                    executor: c.executor.name().to_string(),
                    init: Some(c.init.dump()).into(),
                    execs: execs.into_iter().map(Process::dump).collect(),
                    cgroup: c
                        .cgroup
                        .as_ref()
                        .and_then(Cgroup::memory_dir)
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    ..Default::default()
                }
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        containers
    }

    /// The State response for a process.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        self.heal(id, exec_id);
        self.with(id, |c| {
            let p = c.process(exec_id)?;
            let (code, at) = p.exit_fields();
            Ok(api::StateResponse {
                id: if exec_id.is_empty() { id.into() } else { exec_id.into() },
                bundle: c.bundle.display().to_string(),
                pid: p.pid as u32,
                status: p.status.api().into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: code,
                exited_at: p.exited.map(|_| timestamp(at)).into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
        })
    }

    /// Blocks until the process has stopped, and reports how.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        self.heal(id, exec_id);
        let mut map = self.lock();
        loop {
            let c = map.get(id).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
            let p = c.process(exec_id)?;
            if let Some(e) = p.exited {
                return Ok(ExitInfo { pid: p.pid as u32, code: e.code, at: e.at });
            }
            map = self.changed.wait(map).unwrap();
        }
    }

    /// The container's processes, exec processes named by their exec id.
    pub fn pids(&self, id: &str) -> Result<Vec<api::ProcessInfo>> {
        let (executor, execs) = self.with(id, |c| {
            // Only execs still running: the pid of one that ended may be another process's.
            let execs: HashMap<i32, String> = c
                .execs
                .values()
                .filter(|p| p.handle.as_ref().is_some_and(|h| h.is_running()))
                .map(|p| (p.pid, p.exec_id.clone()))
                .collect();
            Ok((c.executor.clone(), execs))
        })?;
        let pids = executor.ps(id)?;
        Ok(pids
            .into_iter()
            .map(|pid| {
                let mut info = api::ProcessInfo { pid: pid as u32, ..Default::default() };
                if let Some(exec_id) = execs.get(&pid) {
                    info.info = Some(to_any(&ProcessDetails { exec_id: exec_id.clone(), ..Default::default() })).into();
                }
                info
            })
            .collect())
    }

    /// The container's cgroup metrics, in containerd's message for the host's cgroup mode.
    pub fn stats(&self, id: &str) -> Result<Any> {
        let cgroup =
            self.with(id, |c| c.cgroup.clone().ok_or_else(|| Error::NotFound(format!("cgroup of container {id}"))))?;
        if !cgroup.exists() {
            return Err(Error::NotFound(format!("cgroup of container {id} (it has exited)")));
        }
        Ok(cgroup.metrics())
    }

    /// Applies new resource limits (an OCI `LinuxResources`, JSON in `resources`).
    pub fn update(&self, id: &str, resources: &Any) -> Result<()> {
        let json = resources::validate(resources)?;
        let executor = self.with(id, |c| {
            if c.init.status == Status::Stopped {
                return Err(Error::FailedPrecondition(format!("container {id} has exited")));
            }
            Ok(c.executor.clone())
        })?;
        Ok(executor.update(id, &json)?)
    }

    /// Checkpoints the container with CRIU, and publishes /tasks/checkpointed.
    pub fn checkpoint(&self, id: &str, req: CheckpointRequest) -> Result<()> {
        let options = match &req.options {
            Some(any) if !any.type_url.is_empty() => {
                if !any.type_url.ends_with("containerd.runc.v1.CheckpointOptions") {
                    return Err(Error::InvalidArgument(format!(
                        "unsupported checkpoint options type {:?}: tether takes containerd.runc.v1.CheckpointOptions",
                        any.type_url
                    )));
                }
                CheckpointOptions::parse_from_bytes(&any.value)
                    .map_err(|e| Error::InvalidArgument(format!("bad checkpoint options: {e}")))?
            }
            _ => CheckpointOptions::default(),
        };
        let lifecycle = self.lifecycle(id)?;
        let _serial = lifecycle.lock().unwrap();
        let (executor, bundle) = self.with(id, |c| {
            if !c.init.is_live() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is {:?}; only a running or paused container can be checkpointed",
                    c.init.status
                )));
            }
            Ok((c.executor.clone(), c.bundle.clone()))
        })?;
        let image_path =
            if options.image_path.is_empty() { req.path.clone() } else { options.image_path.clone().into() };
        if image_path.as_os_str().is_empty() {
            return Err(Error::InvalidArgument("checkpoint needs an image path".into()));
        }
        let keep_work = !options.work_path.is_empty();
        let work_path = if keep_work { PathBuf::from(&options.work_path) } else { bundle.join(CRIU_WORK_DIR) };
        for dir in [&image_path, &work_path] {
            fs::create_dir_all(dir)
                .map_err(|e| Error::InvalidArgument(format!("checkpoint directory {}: {e}", dir.display())))?;
        }
        let opts = CheckpointOpts {
            criu: CriuOpts {
                image_path: image_path.clone(),
                work_path: work_path.clone(),
                open_tcp: options.open_tcp,
                external_unix_sockets: options.external_unix_sockets,
                terminal: options.terminal,
                file_locks: options.file_locks,
                empty_namespaces: options.empty_namespaces.clone(),
                cgroups_mode: Some(options.cgroups_mode.clone()).filter(|m| !m.is_empty()),
            },
            leave_running: !options.exit,
        };
        let result = executor.checkpoint(id, &opts).map_err(|e| criu_failure(e, &work_path, &bundle, "dump"));
        if !keep_work {
            let _ = fs::remove_dir_all(&work_path);
        }
        result?;
        self.events.publish(
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            &TaskCheckpointed {
                container_id: id.into(),
                checkpoint: image_path.display().to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    fn io(&self, id: &str, exec_id: &str) -> Result<Arc<ProcessIo>> {
        self.with(id, |c| {
            let p = c.process(exec_id)?;
            p.io.clone().ok_or_else(|| Error::FailedPrecondition(format!("{} has no stdio yet", p.name())))
        })
    }

    /// Closes a process's stdin (CloseIO).
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.io(id, exec_id)?.close_stdin();
        Ok(())
    }

    /// Resizes a process's terminal.
    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        self.io(id, exec_id)?.resize(width, height)
    }

    /// The init's pid, for Connect (0 when the container is unknown).
    pub fn init_pid(&self, id: &str) -> u32 {
        self.with(id, |c| Ok(c.init.pid as u32)).unwrap_or(0)
    }

    /// Records an exit: drains the process's output, marks it stopped, wakes waiters and
    /// publishes /tasks/exit. An init's exit waits until its execs' exits are reported.
    fn handle_exit(&self, id: &str, exec_id: &str, exit: Exit) {
        let Ok(lifecycle) = self.lifecycle(id) else {
            log::debug!("exit of pid {} for deleted container {id}", exit.pid);
            return;
        };
        let _serial = lifecycle.lock().unwrap();
        if exec_id.is_empty() {
            self.kill_orphans(id);
            let deferred = self
                .with(id, |c| {
                    if c.live_execs() {
                        c.deferred_init_exit = Some(exit);
                        return Ok(true);
                    }
                    Ok(false)
                })
                .unwrap_or(true);
            if !deferred {
                self.finish(id, "", exit);
            }
            return;
        }
        self.finish(id, exec_id, exit);
        let init_exit =
            self.with(id, |c| Ok(if c.live_execs() { None } else { c.deferred_init_exit.take() })).ok().flatten();
        if let Some(init_exit) = init_exit {
            self.finish(id, "", init_exit);
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
        let pid = self.with(id, |c| {
            let p = c.process_mut(exec_id)?;
            p.transition(Status::Stopped)?;
            p.exited = Some(Exited { code, at: exit.at });
            // Nothing is signalled or checked on once it has exited: give its pidfd back.
            p.handle = None;
            Ok(p.pid as u32)
        });
        let Ok(pid) = pid else { return };
        self.changed.notify_all();
        self.events.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            &TaskExit {
                container_id: id.into(),
                id: if exec_id.is_empty() { id.into() } else { exec_id.into() },
                pid,
                exit_status: code,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            },
        );
    }
}

/// A failed CRIU run (`action` is `dump` or `restore`): keeps CRIU's log in the bundle
/// (`criu-<action>.log`), since the work directory may be removed, and names it in the error.
fn criu_failure(err: tether_runtime::Error, work: &Path, bundle: &Path, action: &str) -> Error {
    if !matches!(err, tether_runtime::Error::Runtime { .. }) {
        return err.into();
    }
    let kept = bundle.join(format!("criu-{action}.log"));
    match fs::copy(work.join(format!("{action}.log")), &kept) {
        Ok(_) => Error::Criu { message: err.to_string(), log: kept },
        Err(_) => err.into(),
    }
}

/// Refuses a bundle the runtime could only fail on: no readable `config.json`, one that is
/// not a JSON object, or (with no rootfs mounts in the request) a root directory that is
/// missing. Otherwise returns whether the container owns its PID namespace.
fn check_bundle(bundle: &Path, needs_root_dir: bool) -> Result<bool> {
    let config = bundle.join("config.json");
    let text = fs::read(&config)
        .map_err(|e| Error::InvalidArgument(format!("bundle {}: cannot read config.json: {e}", bundle.display())))?;
    let spec: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("{} does not parse: {e}", config.display())))?;
    if !spec.is_object() {
        return Err(Error::InvalidArgument(format!("{} is not a JSON object", config.display())));
    }
    if needs_root_dir {
        let root = bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs"));
        if !root.is_dir() {
            return Err(Error::InvalidArgument(format!("the container's rootfs {} does not exist", root.display())));
        }
    }
    Ok(owns_pid_namespace(&spec))
}

/// Whether the spec gives the container a PID namespace of its own: a `pid` namespace entry
/// without a path. Without one it joins the host's, and with a path another container's
/// (a Kubernetes pod with shareProcessNamespace, or hostPID).
fn owns_pid_namespace(spec: &serde_json::Value) -> bool {
    spec["linux"]["namespaces"].as_array().is_some_and(|namespaces| {
        namespaces.iter().any(|ns| ns["type"] == "pid" && ns["path"].as_str().is_none_or(str::is_empty))
    })
}

/// Ids name directories and runtime state: reject what could escape or confuse a path.
pub fn validate_id(id: &str) -> Result<()> {
    // Ids name files: the longest is an exec's `exec-<id>.json` (and `.pid`) in the bundle,
    // and a file name holds at most NAME_MAX (255) bytes. 255 - "exec-" - ".json" = 245.
    const MAX_LEN: usize = 245;
    let ok = !id.is_empty()
        && id.len() <= MAX_LEN
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '@' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid id {id:?}: use 1-{MAX_LEN} characters of [A-Za-z0-9_.+@:-]")))
    }
}

/// Reads the init's pid a runtime wrote into `bundle` (0 when none).
pub fn read_init_pid(bundle: &Path) -> u32 {
    fs::read_to_string(bundle.join(INIT_PID_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        for good in ["c1", "my-container_2", "a.b", "sha256:abc", "x@y"] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", "x\0y"] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(err.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT, "{bad}");
        }
    }

    #[test]
    fn state_machine_allows_only_lifecycle_moves() {
        let mut p = Process::new("", StdioSpec::default());
        assert!(p.transition(Status::Paused).is_err());
        p.transition(Status::Running).unwrap();
        p.transition(Status::Paused).unwrap();
        assert!(p.transition(Status::Created).is_err());
        p.transition(Status::Running).unwrap();
        p.transition(Status::Stopped).unwrap();
        let err = p.transition(Status::Running).unwrap_err();
        assert_eq!(err.code(), tether_protos::ttrpc::Code::FAILED_PRECONDITION);
    }
}
