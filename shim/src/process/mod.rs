//! The process table: every container this shim serves, each with its init and exec
//! processes. The task service only translates requests into calls on [`Table`]; the table
//! decides, through the one state table of [`state`], what each process may do.
//!
//! | module | what |
//! | --- | --- |
//! | [`state`] | a process's states and what each allows |
//! | `lifecycle` | create, start, exec, kill, pause/resume, delete, update, stdin and terminal |
//! | `exits` | an exit's way from the reaper to containerd |
//! | `queries` | State, Wait, Pids, Stats and the debug dump |
//! | `checkpoint` | checkpoints with CRIU |
//!
//! The calls that run the runtime are futures on the shim's loop: each awaits the executor,
//! and the loop serves everything else meanwhile. The task service runs each as a task of its
//! own, so that it completes even if its caller goes away.
//!
//! Locks, always taken in this order:
//! 1. a container's lifecycle lock (an async mutex, awaited on the loop): serialises the calls
//!    that run the runtime on one container (start, exec start, pause, resume, delete,
//!    checkpoint), so that two never drive it at once; it is held across their runtime call.
//!    Exits never take it: one container's slow runtime call holds back nothing of another's,
//!    nor its own exits.
//! 2. the table lock: every read and change of the process records, held only for moments
//!    and never across an await (a runtime call, a wait for output). A state change and the
//!    event that announces it are made under it together, so events go out in the order of
//!    the changes.
//! 3. the event queue's lock (inside `Publisher::publish`).

mod checkpoint;
mod exits;
mod lifecycle;
mod queries;
pub mod state;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use tether_protos::{api, protobuf::well_known_types::any::Any};
use tether_runtime::Executor;

pub use self::state::{unix_nanos, Exited, Process, Status};
use crate::{
    cgroup::Cgroup,
    config::{self, Settings},
    error::{Error, Result},
    events::Publisher,
    journal::ExitJournal,
    oom::OomWatch,
    reaper::{Exit, Reaper},
    stdio::StdioSpec,
};

/// Makes the executor that a container's settings name. The serving shim's
/// ([`Runtimes`]) makes runc and native executors; tests give the table fakes.
pub trait Executors: Send + Sync {
    fn executor(&self, settings: &Settings) -> Result<Arc<dyn Executor>>;
}

/// The executors of the serving shim: runc's children are reaped by the shim's reaper, native
/// containers are forked through one helper process (started on first use).
pub struct Runtimes {
    reaper: Arc<Reaper>,
    native_helper: Arc<config::Helper>,
}

impl Runtimes {
    pub fn new(reaper: Arc<Reaper>) -> Runtimes {
        Runtimes { reaper, native_helper: config::native_helper() }
    }
}

impl Executors for Runtimes {
    fn executor(&self, settings: &Settings) -> Result<Arc<dyn Executor>> {
        settings.executor(self.reaper.clone(), &self.native_helper)
    }
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
    /// of the container when the init exits. Otherwise the shim does (see `exits`).
    owns_pid_namespace: bool,
    /// Serialises the runtime calls on this container (see the module docs).
    lifecycle: Arc<tokio::sync::Mutex<()>>,
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

    /// Whether an exec runs, or is being started: the init's exit waits for these.
    fn live_execs(&self) -> bool {
        self.execs.values().any(|p| p.is_live() || p.starting)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    pub code: u32,
    pub at: SystemTime,
}

/// Every container this shim serves. See the module docs.
pub struct Table {
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    /// Ids being created, so that two Creates of one id cannot both proceed.
    creating: Mutex<HashSet<String>>,
    /// Signalled whenever a process stops or a container goes (Wait sleeps on it).
    changed: tokio::sync::Notify,
    /// Exits not yet delivered to containerd, per bundle.
    journal: Arc<ExitJournal>,
    executors: Arc<dyn Executors>,
    reaper: Arc<Reaper>,
    events: Arc<Publisher>,
    oom: Arc<dyn OomWatch>,
    exits: exits::ExitQueue,
}

impl Table {
    /// A table whose containers run on the executors `executors` makes, publishing to
    /// `events`, learning of exits from `reaper` and of OOM kills from `oom`. Starts the exits
    /// task, which ends when the table is dropped.
    pub fn new(
        namespace: &str,
        executors: Arc<dyn Executors>,
        reaper: Arc<Reaper>,
        events: Arc<Publisher>,
        oom: Arc<dyn OomWatch>,
    ) -> Arc<Table> {
        let journal = Arc::new(ExitJournal::default());
        let settle = journal.clone();
        events.on_delivered(move |event| settle.settle(event));
        Arc::new_cyclic(|table| Table {
            namespace: namespace.to_string(),
            containers: Mutex::default(),
            creating: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            journal,
            executors,
            reaper,
            events,
            oom,
            // The exits task holds the table only weakly: it ends with it.
            exits: exits::start(table.clone()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap()
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        let mut map = self.lock();
        let c = map.get_mut(id).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        f(c)
    }

    fn lifecycle(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        self.with(id, |c| Ok(c.lifecycle.clone()))
    }
}

#[cfg(test)]
mod tests;
