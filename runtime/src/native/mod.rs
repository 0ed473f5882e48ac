//! The native executor: youki's libcontainer, driven from the shim, with no OCI runtime
//! binary in between.
//!
//! Calls that create processes (create, exec, checkpoint, start with its poststart hooks,
//! delete of a container with poststop hooks) run in a worker forked by the
//! [`helper::Helper`], for the fork-safety reasons given there, and because the shim's reaper
//! would take the exit of a hook process that libcontainer waits for. Start always does:
//! libcontainer changes the working directory of the whole process while it connects to the
//! container's notify socket. The shim awaits the worker's reply on its loop (see
//! [`helper::Helper::call`]). Calls that only read state, write cgroup files, send signals or
//! remove directories (state, ps, kill, pause, resume, update; delete without hooks) run in
//! the calling thread, the shim's loop: they never clone, and they are short file I/O and
//! system calls, which spare the fork of a worker (and, for the delete of a container that
//! ran a while, the start of a new helper). libcgroups does sleep in some of them, in steps of
//! 10 ms, while a freezer state settles or a cgroup being emptied still refuses its removal.
//!
//! State lives where libcontainer keeps it, `<root>/<id>`, so that a fresh process (the
//! shim's `delete` subcommand) can find and remove a container that a dead shim created.

pub mod features;
pub mod helper;
mod hierarchies;
mod payload;
mod propagation;
pub mod wire;
mod worker;

use std::{
    fs::{self, OpenOptions},
    os::{fd::OwnedFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, AnyManagerError, CgroupConfig, CgroupManager, ControllerOpt,
};
use libcontainer::{
    container::{Container, ContainerStatus},
    error::LibcontainerError,
    signal::Signal,
};
use oci_spec::runtime::{Hooks, LinuxResources};

use self::{
    helper::Helper,
    wire::{Failure, Op, Request},
};
use crate::{CheckpointOpts, ContainerState, CreateOpts, Error, ExecOpts, Executor, RestoreOpts, Result, Stdio};

/// The name errors and logs give this executor.
const NAME: &str = "libcontainer";

/// Settings of a [`NativeExecutor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeConfig {
    /// libcontainer's state directory; each container's state is `<root>/<id>`.
    pub root: PathBuf,
    /// Let systemd manage the container's cgroups.
    pub systemd_cgroup: bool,
}

/// How the calls that fork are carried out.
enum Runner {
    /// In a worker of the shim's helper process (the serving shim, many threads).
    Helper(Arc<Helper>),
    /// In this very process, which must have a single thread (the `delete` subcommand).
    Direct,
}

/// Runs containers in-process with libcontainer. See the module docs.
///
/// One executor serves one container (the shim makes one per container), and its calls are
/// serialised: libcontainer rewrites the container's `state.json` in place, so a call reading
/// it while another writes it would find it empty. A call waiting for its turn waits on the
/// loop (an async mutex), as does one waiting for a worker's reply.
pub struct NativeExecutor {
    config: NativeConfig,
    runner: Runner,
    serial: tokio::sync::Mutex<()>,
}

impl NativeExecutor {
    /// An executor whose forking calls run in `helper`'s workers.
    pub fn new(config: NativeConfig, helper: Arc<Helper>) -> Self {
        NativeExecutor { config, runner: Runner::Helper(helper), serial: tokio::sync::Mutex::const_new(()) }
    }

    /// An executor that makes every call in the calling process.
    ///
    /// Only for a process that has, and keeps, a single thread while the executor is in use:
    /// libcontainer clones the caller (see [`helper`]).
    pub fn single_threaded(config: NativeConfig) -> Self {
        NativeExecutor { config, runner: Runner::Direct, serial: tokio::sync::Mutex::const_new(()) }
    }

    /// The settings this executor runs with.
    pub fn config(&self) -> &NativeConfig {
        &self.config
    }

    /// Carries out `op`: in a worker if it `forks` (and this is the serving shim), else here.
    async fn run(&self, id: &str, op: Op, stdio: Stdio, forks: bool) -> Result<i32> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.config.root)
            .map_err(|e| Error::io(format!("creating the state root {}", self.config.root.display()), e))?;
        let name = op.name();
        let req = Request {
            id: id.to_string(),
            root: self.config.root.clone(),
            systemd_cgroup: self.config.systemd_cgroup,
            op,
        };
        let stdio = [stream(stdio.stdin)?, stream(stdio.stdout)?, stream(stdio.stderr)?];
        let _serial = self.serial.lock().await;
        let reply = match &self.runner {
            Runner::Helper(helper) if forks => helper.call(&req, stdio).await,
            _ => worker::run(req, stdio),
        };
        reply.map_err(|(failure, message)| failure_to_error(id, name, failure, message))
    }

    /// Calls `f` on the container's state, loaded from `<root>/<id>`, while no other call of
    /// this executor runs.
    async fn with_container<T>(
        &self,
        id: &str,
        op: &'static str,
        f: impl FnOnce(&mut Container) -> std::result::Result<T, LibcontainerError>,
    ) -> Result<T> {
        let dir = self.config.root.join(id);
        let _serial = self.serial.lock().await;
        if !dir.join("state.json").exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Container::load(dir).and_then(|mut c| f(&mut c)).map_err(|e| lib_error(id, op, &e))
    }

    /// Whether `id`'s config has poststop hooks (libcontainer runs them as processes at
    /// delete). Where that cannot be read, it is taken to have them.
    async fn has_poststop_hooks(&self, id: &str) -> bool {
        let has = |h: &Hooks| h.poststop().as_ref().is_some_and(|v| !v.is_empty());
        self.with_container(id, "load", |c| Ok(c.spec()?.hooks.as_ref().is_some_and(has))).await.unwrap_or(true)
    }

    /// Calls `f` with the manager of the container's cgroup.
    async fn with_cgroup<T>(
        &self,
        id: &str,
        op: &'static str,
        f: impl FnOnce(&AnyCgroupManager) -> std::result::Result<T, AnyManagerError>,
    ) -> Result<T> {
        let manager = self
            .with_container(id, op, |c| {
                Ok(create_cgroup_manager(CgroupConfig {
                    cgroup_path: c.spec()?.cgroup_path,
                    systemd_cgroup: c.systemd(),
                    container_name: id.to_string(),
                })?)
            })
            .await?;
        f(&manager).map_err(|e| runtime(op, worker::describe(&e)))
    }
}

/// The stream a container process gets: the shim's pipe, or /dev/null. Always a descriptor of
/// ours: libcontainer hands an absent stream the caller's own, which in the shim is its log.
fn stream(fd: Option<OwnedFd>) -> Result<OwnedFd> {
    match fd {
        Some(fd) => Ok(fd),
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| Error::io("opening /dev/null", e)),
    }
}

/// runc runs a process spec without `user` as root and without `cwd` in `/`; libcontainer
/// (through oci-spec) refuses a spec without these fields, which the OCI spec calls required.
/// Filling them in lets both executors take the same requests.
fn complete_process_spec(path: &Path) -> Result<()> {
    let bad = |message: String| Error::BadSpec { binary: NAME.into(), op: "exec", message };
    let text = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(format!("process spec: {e}")))?;
    let process = spec.as_object_mut().ok_or_else(|| bad("the process spec is not a JSON object".into()))?;
    let mut changed = false;
    for (field, default) in [("user", serde_json::json!({"uid": 0, "gid": 0})), ("cwd", serde_json::json!("/"))] {
        if !process.contains_key(field) {
            process.insert(field.into(), default);
            changed = true;
        }
    }
    if changed {
        fs::write(path, spec.to_string()).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

fn runtime(op: &'static str, message: String) -> Error {
    Error::Runtime { binary: NAME.into(), op, message }
}

fn failure_to_error(id: &str, op: &'static str, failure: Failure, message: String) -> Error {
    match failure {
        Failure::NotFound => Error::NotFound(id.to_string()),
        Failure::NotRunning => Error::NotRunning(id.to_string()),
        Failure::BadProcess => Error::BadProcess { binary: NAME.into(), op, message },
        Failure::BadSpec => Error::BadSpec { binary: NAME.into(), op, message },
        Failure::Runtime => runtime(op, message),
    }
}

fn lib_error(id: &str, op: &'static str, err: &LibcontainerError) -> Error {
    let (failure, message) = worker::classify(op, err);
    failure_to_error(id, op, failure, message)
}

fn status_name(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

#[async_trait]
impl Executor for NativeExecutor {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, opts: CreateOpts) -> Result<i32> {
        let op = Op::Create {
            bundle: opts.bundle,
            pid_file: opts.pid_file,
            console_socket: opts.console_socket,
            no_pivot_root: opts.no_pivot_root,
        };
        self.run(&opts.id, op, opts.stdio, true).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.run(id, Op::Start, Stdio::default(), true).await.map(drop)
    }

    async fn exec(&self, id: &str, opts: ExecOpts) -> Result<i32> {
        complete_process_spec(&opts.process_spec)?;
        let op =
            Op::Exec { process_spec: opts.process_spec, pid_file: opts.pid_file, console_socket: opts.console_socket };
        self.run(id, op, opts.stdio, true).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| runtime("kill", format!("invalid signal {signal}")))?;
        self.with_container(id, "kill", |c| {
            let status = c.status();
            c.kill(signal, all)?;
            // libcontainer records every signalled container as stopped, whatever the signal
            // did; a created container marked so could no longer be started.
            c.set_status(status).save()
        })
        .await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.with_container(id, "pause", |c| c.pause()).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.with_container(id, "resume", |c| c.resume()).await
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let hooks = self.has_poststop_hooks(id).await;
        match self.run(id, Op::Delete { force }, Stdio::default(), hooks).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        self.with_container(id, "state", |c| {
            Ok(ContainerState { status: status_name(c.status()).to_string(), pid: c.pid().map_or(0, |p| p.as_raw()) })
        })
        .await
    }

    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let pids = self.with_cgroup(id, "ps", |m| m.get_all_pids()).await?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let resources: LinuxResources = serde_json::from_slice(resources).map_err(|e| Error::BadSpec {
            binary: NAME.into(),
            op: "update",
            message: format!("resources: {e}"),
        })?;
        let opts = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.with_cgroup(id, "update", |m| m.apply(&opts)).await
    }

    async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()> {
        crate::require_criu(None, "checkpoint a container")?;
        self.run(id, Op::Checkpoint(opts.clone()), Stdio::default(), true).await.map(drop)
    }

    async fn restore(&self, _opts: RestoreOpts) -> Result<i32> {
        Err(Error::Unsupported { executor: NAME, op: "restore" })
    }
}
