//! The operations a shim needs on one container, independent of how they are carried out.

use std::{os::fd::OwnedFd, path::PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// The three standard streams handed to a container process.
///
/// `None` gives the process `/dev/null`. The executor takes ownership so that the shim's copy
/// of each write end is closed once the runtime has inherited it: otherwise the shim would
/// never see EOF on the container's output.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// What [`Executor::create`] needs to create (not yet start) a container.
#[derive(Debug)]
pub struct CreateOpts {
    /// The container id, as the runtime will know it.
    pub id: String,
    /// The OCI bundle: holds `config.json` and the rootfs.
    pub bundle: PathBuf,
    /// Where the runtime writes the container init's pid.
    pub pid_file: PathBuf,
    /// A unix socket on which the runtime sends the pty master, for terminal containers.
    pub console_socket: Option<PathBuf>,
    /// Streams of the init process (ignored for the terminal's, which the pty carries).
    pub stdio: Stdio,
    /// Do not use pivot_root (for rootfs on ramfs).
    pub no_pivot_root: bool,
    /// Do not create a new session keyring.
    pub no_new_keyring: bool,
}

/// What [`Executor::exec`] needs to start an additional process in a running container.
#[derive(Debug)]
pub struct ExecOpts {
    /// A file holding the OCI runtime spec's `Process` as JSON.
    pub process_spec: PathBuf,
    /// Where the runtime writes the new process's pid.
    pub pid_file: PathBuf,
    /// A unix socket on which the runtime sends the pty master, for terminal processes.
    pub console_socket: Option<PathBuf>,
    /// Streams of the process.
    pub stdio: Stdio,
}

/// CRIU settings shared by checkpoint and restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuOpts {
    /// Where the checkpoint images are written (checkpoint) or read (restore).
    pub image_path: PathBuf,
    /// Where CRIU writes its work files and log (`dump.log`, `restore.log`).
    pub work_path: PathBuf,
    /// Allow established TCP connections.
    pub open_tcp: bool,
    /// Allow external unix sockets.
    pub external_unix_sockets: bool,
    /// Allow a terminal (shell job).
    pub terminal: bool,
    /// Checkpoint and restore file locks.
    pub file_locks: bool,
    /// Namespaces to create but not restore the properties of (e.g. `network`).
    pub empty_namespaces: Vec<String>,
    /// How CRIU handles cgroups: `soft`, `full` or `strict`; `None` is the runtime's default.
    pub cgroups_mode: Option<String>,
}

/// What [`Executor::checkpoint`] needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOpts {
    pub criu: CriuOpts,
    /// Keep the container running after the checkpoint (otherwise it exits).
    pub leave_running: bool,
}

/// What [`Executor::restore`] needs: a container to create, running from a checkpoint.
#[derive(Debug)]
pub struct RestoreOpts {
    /// The container to create; its process comes from the images instead of the spec.
    pub create: CreateOpts,
    pub criu: CriuOpts,
}

/// The runtime's view of a container's status (`runc state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// `created`, `running`, `paused`, `stopped` (runtime's words).
    pub status: String,
    /// The init's pid, 0 when none.
    pub pid: i32,
}

/// One way of running containers. Every call names one container; implementations hold no
/// per-container state in memory that the shim could not rebuild after a restart, so that the
/// `delete` subcommand (a fresh process) can clean up what a dead shim left.
///
/// Calls for different containers may run concurrently; the shim serialises the lifecycle
/// calls of one container.
///
/// Every call is a future that the caller's event loop (the serving shim's one thread) drives:
/// an implementation never blocks that thread on a process or a peer. It awaits its children's
/// exits (through a [`crate::ChildWaiter`]) and output, and its helper's answers, as events of
/// the loop; what it does in between is short file I/O and system calls (state files, pid
/// files, signals, cgroup files), which may run on the loop. Futures are `Send`, so that a
/// multi-threaded caller may drive them too.
#[async_trait]
pub trait Executor: Send + Sync {
    /// A short name for logs and errors (`runc`, `crun`, `native`).
    fn name(&self) -> &str;

    /// Creates the container and its init process, stopped before the user's program runs.
    /// Returns the init's pid, which is a child of the shim (subreaper) from then on.
    async fn create(&self, opts: CreateOpts) -> Result<i32>;

    /// Runs the user's program in a created container.
    async fn start(&self, id: &str) -> Result<()>;

    /// Starts an additional process in a running container and returns its pid.
    async fn exec(&self, id: &str, opts: ExecOpts) -> Result<i32>;

    /// Sends `signal` to the init, or with `all` to every process of the container.
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;

    /// Freezes every process of the container.
    async fn pause(&self, id: &str) -> Result<()>;

    /// Thaws a paused container.
    async fn resume(&self, id: &str) -> Result<()>;

    /// Removes the container's runtime state; with `force` a running container is killed first.
    /// Deleting a container the runtime does not know succeeds.
    async fn delete(&self, id: &str, force: bool) -> Result<()>;

    /// The runtime's view of the container.
    async fn state(&self, id: &str) -> Result<ContainerState>;

    /// The pids of every process in the container.
    async fn ps(&self, id: &str) -> Result<Vec<i32>>;

    /// Applies new resource limits: `resources` is an OCI runtime spec `LinuxResources`
    /// object as JSON.
    async fn update(&self, id: &str, resources: &[u8]) -> Result<()>;

    /// Checkpoints the running container with CRIU into `opts.criu.image_path`.
    async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()>;

    /// Creates a container from a checkpoint and resumes its processes; returns the restored
    /// init's pid, a child of the shim from then on.
    async fn restore(&self, opts: RestoreOpts) -> Result<i32>;
}
