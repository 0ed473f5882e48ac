//! An executor that forks a runc-compatible OCI runtime binary (runc, crun, youki) per
//! operation, speaking the CLI those binaries share.

use std::{
    ffi::OsString,
    fs,
    os::{
        fd::OwnedFd,
        unix::{fs::DirBuilderExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{ChildStdout, Command, Stdio as ProcStdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::{io::AsyncReadExt, net::unix::pipe};

use crate::{
    exit_code, CheckpointOpts, ChildWaiter, ContainerState, CreateOpts, CriuOpts, Error, ExecOpts, Executor,
    RestoreOpts, Result, Stdio,
};

/// The highest signal number on Linux (`SIGRTMAX` as the kernel counts, not as glibc does).
const SIGNAL_MAX: libc::c_int = 64;

/// Every signal back to its default disposition, and an empty signal mask, in a process about
/// to exec a runtime or a container's program: ignored signals and the mask survive `execve`.
/// The shim ignores SIGPIPE (Rust's runtime does) and signal 32 (it comes ignored from the
/// shim's own parent); Rust's `Command` restores SIGPIPE and the mask in its children but
/// not 32, and runc passes what it was given on to the container. The raw system calls,
/// because glibc refuses to touch the two signals it keeps for itself (32 and 33).
/// Async-signal-safe: only system calls, on the stack.
pub(crate) fn default_signals() {
    /// The kernel's `struct sigaction` on x86_64 and aarch64 (handler, flags, restorer, mask).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    let empty: u64 = 0;
    for signal in 1..=SIGNAL_MAX {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a valid kernel sigaction for the duration of the call; no old action wanted.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                size_of::<u64>(),
            )
        };
    }
    // SAFETY: an 8-byte signal set, as the kernel expects.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            size_of::<u64>(),
        )
    };
}

/// Settings of a [`RuncExecutor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuncConfig {
    /// The runtime binary: a path, or a name looked up on PATH.
    pub binary: PathBuf,
    /// The runtime's state directory (`--root`).
    pub root: PathBuf,
    /// Let systemd manage the container's cgroups (`--systemd-cgroup`).
    pub systemd_cgroup: bool,
    /// The CRIU binary for checkpoint and restore (`--criu`): a path, or a name looked up on
    /// PATH; `None` is the runtime's default, `criu` on PATH.
    pub criu: Option<PathBuf>,
}

/// Runs containers by forking a runc-compatible binary.
///
/// Each call writes the runtime's log (`--log`, JSON) to its own file under the root, so that a
/// failure is reported in the runtime's own words even when its stderr is the container's.
pub struct RuncExecutor {
    config: RuncConfig,
    waiter: Arc<dyn ChildWaiter>,
    log_seq: AtomicU64,
}

impl RuncExecutor {
    /// An executor using `config`, waiting for its children through `waiter`.
    pub fn new(config: RuncConfig, waiter: Arc<dyn ChildWaiter>) -> Self {
        RuncExecutor { config, waiter, log_seq: AtomicU64::new(0) }
    }

    /// The settings this executor runs with.
    pub fn config(&self) -> &RuncConfig {
        &self.config
    }

    fn binary_name(&self) -> String {
        self.config
            .binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.config.binary.display().to_string())
    }

    /// Runs `<binary> --root R --log L --log-format json [--systemd-cgroup] args...` and returns
    /// its stdout when `stdio` is not given (streams are then captured/null). The runtime's
    /// output and exit are awaited on the caller's loop; no thread waits for them.
    async fn run(&self, op: &'static str, args: Vec<OsString>, stdio: Option<Stdio>) -> Result<Vec<u8>> {
        // Runtime state (and our per-call logs) is root's alone.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.config.root)
            .map_err(|e| Error::io(format!("creating runtime root {}", self.config.root.display()), e))?;
        let log = self.scratch_file(op, "log");

        let mut cmd = Command::new(&self.config.binary);
        cmd.arg("--root").arg(&self.config.root).arg("--log").arg(&log).arg("--log-format").arg("json");
        if self.config.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(criu) = &self.config.criu {
            cmd.arg("--criu").arg(criu);
        }
        cmd.args(args);
        // SAFETY: only system calls between fork and exec (see `default_signals`).
        unsafe {
            cmd.pre_exec(|| {
                default_signals();
                Ok(())
            });
        }
        match stdio {
            Some(s) => {
                cmd.stdin(into_stdio(s.stdin)).stdout(into_stdio(s.stdout)).stderr(into_stdio(s.stderr));
            }
            None => {
                cmd.stdin(ProcStdio::null()).stdout(ProcStdio::piped()).stderr(ProcStdio::null());
            }
        }

        let spawned = Instant::now();
        let mut child =
            crate::spawn(&mut cmd).map_err(|source| Error::Spawn { binary: self.config.binary.clone(), source })?;
        // The Command keeps our copies of the streams; drop them now so the container's
        // pipes see EOF once the container (not this call) closes them.
        drop(cmd);
        // Only a call without the container's streams captures the runtime's stdout.
        let out = match child.stdout.take() {
            Some(stdout) => {
                read_all(stdout).await.map_err(|e| Error::io(format!("reading {} {op} output", self.binary_name()), e))
            }
            None => Ok(Vec::new()),
        };
        // Awaited even when the output could not be read (the runtime then sees its stdout
        // closed): its exit is the waiter's to collect either way.
        let status = self.waiter.wait_child(child.id() as i32, spawned).await;
        let out = out?;
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        if exit_code(status) == 0 {
            return Ok(out);
        }
        let message = error_message(&log_text).unwrap_or_else(|| format!("exited with {}", describe_status(status)));
        // runc prefixes its own errors with "runc <op> failed: "; say it once.
        let own_prefix = format!("{} {op} failed: ", self.binary_name());
        let message = message.strip_prefix(&own_prefix).map(str::to_string).unwrap_or(message);
        if matches!(op, "create" | "exec" | "restore") && is_exec_failure(&message) {
            return Err(Error::BadProcess { binary: self.binary_name(), op, message });
        }
        Err(Error::Runtime { binary: self.binary_name(), op, message })
    }

    /// A file under the root private to one call (`op`) of this shim.
    fn scratch_file(&self, op: &str, ext: &str) -> PathBuf {
        let seq = self.log_seq.fetch_add(1, Ordering::Relaxed);
        self.config.root.join(format!(".tether-{}-{op}-{seq}.{ext}", std::process::id()))
    }

    /// Maps the runtime's "no such container" to [`Error::NotFound`], and its "container not
    /// running" (a signal for a container whose init has exited) to [`Error::NotRunning`].
    fn absent_as(&self, id: &str, err: Error) -> Error {
        match err {
            Error::Runtime { ref message, .. } if is_not_exist(message) => Error::NotFound(id.to_string()),
            Error::Runtime { ref message, .. } if is_not_running(message) => Error::NotRunning(id.to_string()),
            other => other,
        }
    }
}

/// The runtime's flags for CRIU settings shared by `checkpoint` and `restore`.
fn criu_args(opts: &CriuOpts) -> Vec<OsString> {
    let mut args =
        vec![os("--image-path"), opts.image_path.clone().into(), os("--work-path"), opts.work_path.clone().into()];
    for (on, flag) in [
        (opts.open_tcp, "--tcp-established"),
        (opts.external_unix_sockets, "--ext-unix-sk"),
        (opts.terminal, "--shell-job"),
        (opts.file_locks, "--file-locks"),
    ] {
        if on {
            args.push(os(flag));
        }
    }
    for ns in &opts.empty_namespaces {
        args.extend([os("--empty-ns"), os(ns)]);
    }
    if let Some(mode) = &opts.cgroups_mode {
        args.extend([os("--manage-cgroups-mode"), os(mode)]);
    }
    args
}

/// `create`'s flags (and `restore`'s, which shares them) for how the container is set up.
fn create_args(opts: &CreateOpts) -> Vec<OsString> {
    let mut args = vec![os("--bundle"), opts.bundle.clone().into(), os("--pid-file"), opts.pid_file.clone().into()];
    if let Some(sock) = &opts.console_socket {
        args.extend([os("--console-socket"), sock.clone().into()]);
    }
    if opts.no_pivot_root {
        args.push(os("--no-pivot"));
    }
    args
}

/// All of a runtime's stdout, read whenever the loop finds the pipe readable.
async fn read_all(stdout: ChildStdout) -> std::io::Result<Vec<u8>> {
    let mut pipe = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?;
    let mut out = Vec::new();
    pipe.read_to_end(&mut out).await?;
    Ok(out)
}

fn into_stdio(fd: Option<OwnedFd>) -> ProcStdio {
    fd.map(ProcStdio::from).unwrap_or_else(ProcStdio::null)
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

fn read_pid(path: &Path) -> Result<i32> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(format!("reading pid file {}", path.display()), e))?;
    text.trim().parse().map_err(|_| {
        Error::io(format!("pid file {} holds {text:?}", path.display()), std::io::ErrorKind::InvalidData.into())
    })
}

/// The runtime's Features document (the OCI runtime spec's features.md): the JSON that
/// `<binary> features` prints, parsed. It waits for the binary itself, so it is for a process
/// without the shim's reaper (`-info`). A runtime without the subcommand (youki before 0.3)
/// fails it with [`Error::Runtime`].
pub fn features(binary: &Path) -> Result<serde_json::Value> {
    let name = binary.display().to_string();
    let out = Command::new(binary)
        .arg("features")
        .stdin(ProcStdio::null())
        .output()
        .map_err(|source| Error::Spawn { binary: binary.to_path_buf(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Runtime {
            binary: name,
            op: "features",
            message: format!("{}: {}", out.status, stderr.trim()),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Output {
        binary: name,
        op: "features",
        message: e.to_string(),
    })
}

fn describe_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {}", exit_code(status))
    }
}

/// runc's words for a process whose executable cannot be run
/// (`exec: "x": executable file not found in $PATH`, `exec: "/x": stat /x: no such file...`).
fn is_exec_failure(message: &str) -> bool {
    message.contains("exec: \"")
        && ["executable file not found", "no such file or directory", "permission denied"]
            .iter()
            .any(|m| message.contains(m))
}

fn is_not_exist(message: &str) -> bool {
    message.contains("does not exist") || message.contains("not exist") || message.contains("not found")
}

/// runc's words for a container whose processes are gone (`container not running`, or the
/// kernel's ESRCH as Go prints it).
fn is_not_running(message: &str) -> bool {
    message.contains("not running")
        || message.contains("process already finished")
        || message.contains("no such process")
}

/// The runtime's failure, from its JSON log (`{"level":"error","msg":...}`).
fn error_message(log: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: Option<String>,
        msg: Option<String>,
    }
    let errors: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| matches!(l.level.as_deref(), Some("error" | "fatal")))
        .filter_map(|l| l.msg)
        .collect();
    // runc logs cleanup trouble at error level too; its last error line is the one that
    // says why the operation failed.
    match errors.last() {
        Some(last) => Some(last.clone()),
        None => log.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()),
    }
}

#[async_trait]
impl Executor for RuncExecutor {
    fn name(&self) -> &str {
        self.config.binary.to_str().unwrap_or("runc")
    }

    async fn create(&self, opts: CreateOpts) -> Result<i32> {
        let mut args = vec![os("create")];
        args.extend(create_args(&opts));
        if opts.no_new_keyring {
            args.push(os("--no-new-keyring"));
        }
        args.push(os(&opts.id));
        self.run("create", args, Some(opts.stdio)).await?;
        read_pid(&opts.pid_file)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.run("start", vec![os("start"), os(id)], None).await.map(drop).map_err(|e| self.absent_as(id, e))
    }

    async fn exec(&self, id: &str, opts: ExecOpts) -> Result<i32> {
        let mut args = vec![
            os("exec"),
            os("--detach"),
            os("--process"),
            opts.process_spec.into(),
            os("--pid-file"),
            opts.pid_file.clone().into(),
        ];
        if let Some(sock) = opts.console_socket {
            args.push(os("--console-socket"));
            args.push(sock.into());
        }
        args.push(os(id));
        self.run("exec", args, Some(opts.stdio)).await.map_err(|e| self.absent_as(id, e))?;
        read_pid(&opts.pid_file)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut args = vec![os("kill")];
        if all {
            args.push(os("--all"));
        }
        args.extend([os(id), os(signal.to_string())]);
        self.run("kill", args, None).await.map(drop).map_err(|e| self.absent_as(id, e))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.run("pause", vec![os("pause"), os(id)], None).await.map(drop).map_err(|e| self.absent_as(id, e))
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.run("resume", vec![os("resume"), os(id)], None).await.map(drop).map_err(|e| self.absent_as(id, e))
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec![os("delete")];
        if force {
            args.push(os("--force"));
        }
        args.push(os(id));
        match self.run("delete", args, None).await.map_err(|e| self.absent_as(id, e)) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        #[derive(Deserialize)]
        struct State {
            status: String,
            #[serde(default)]
            pid: i32,
        }
        let out = self.run("state", vec![os("state"), os(id)], None).await.map_err(|e| self.absent_as(id, e))?;
        let s: State = serde_json::from_slice(&out).map_err(|e| Error::Output {
            binary: self.binary_name(),
            op: "state",
            message: e.to_string(),
        })?;
        Ok(ContainerState { status: s.status, pid: s.pid })
    }

    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let out = self
            .run("ps", vec![os("ps"), os("--format"), os("json"), os(id)], None)
            .await
            .map_err(|e| self.absent_as(id, e))?;
        let pids: Option<Vec<i32>> = serde_json::from_slice(&out).map_err(|e| Error::Output {
            binary: self.binary_name(),
            op: "ps",
            message: e.to_string(),
        })?;
        Ok(pids.unwrap_or_default())
    }

    async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let file = self.scratch_file("update", "json");
        fs::write(&file, resources).map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
        let result = self.run("update", vec![os("update"), os("--resources"), file.clone().into(), os(id)], None).await;
        let _ = fs::remove_file(&file);
        result.map(drop).map_err(|e| self.absent_as(id, e))
    }

    async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()> {
        crate::require_criu(self.config.criu.as_deref(), "checkpoint a container")?;
        let mut args = vec![os("checkpoint")];
        args.extend(criu_args(&opts.criu));
        if opts.leave_running {
            args.push(os("--leave-running"));
        }
        args.push(os(id));
        self.run("checkpoint", args, None).await.map(drop).map_err(|e| self.absent_as(id, e))
    }

    async fn restore(&self, opts: RestoreOpts) -> Result<i32> {
        crate::require_criu(self.config.criu.as_deref(), "restore a container from a checkpoint")?;
        // --detach: runc returns once the processes run; --no-subreaper: the shim is the
        // subreaper that reaps them.
        let mut args = vec![os("restore"), os("--detach"), os("--no-subreaper")];
        args.extend(create_args(&opts.create));
        args.extend(criu_args(&opts.criu));
        args.push(os(&opts.create.id));
        self.run("restore", args, Some(opts.create.stdio)).await?;
        read_pid(&opts.create.pid_file)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// An executable shell script `name` in `dir` running `body`, standing in for a runtime.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Drives `f` on a runtime of one thread, as the shim's loop would.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn calls_in_flight_share_one_thread() {
        let dir = std::env::temp_dir().join(format!("tether-runc-concurrent-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let slow = script(&dir, "slow-runtime", r#"sleep 1; echo '{"status":"running","pid":42}'"#);
        let exec = RuncExecutor::new(
            RuncConfig { binary: slow, root: dir.join("root"), systemd_cgroup: false, criu: None },
            Arc::new(crate::DirectWaiter),
        );
        let started = Instant::now();
        let states =
            block_on(async { tokio::join!(exec.state("a"), exec.state("b"), exec.state("c"), exec.state("d")) });
        // One after another they would take 4 s: their output and exits were awaited together.
        assert!(started.elapsed() < std::time::Duration::from_millis(3000), "took {:?}", started.elapsed());
        for state in [states.0, states.1, states.2, states.3] {
            assert_eq!(state.unwrap(), ContainerState { status: "running".into(), pid: 42 });
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn features_are_the_binarys_json() {
        let dir = std::env::temp_dir().join(format!("tether-features-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ok = script(&dir, "ok", r#"[ "$1" = features ] && echo '{"ociVersionMin":"1.0.0","hooks":["prestart"]}'"#);
        let json = features(&ok).unwrap();
        assert_eq!(json["hooks"][0], "prestart", "{json}");
        let refusing = script(&dir, "refusing", "echo 'unknown command features' >&2; exit 1");
        let err = features(&refusing).unwrap_err();
        assert!(matches!(err, Error::Runtime { .. }) && err.to_string().contains("unknown command features"), "{err}");
        let garbled = script(&dir, "garbled", "echo not json");
        assert!(matches!(features(&garbled), Err(Error::Output { .. })));
        let missing = features(&dir.join("no-such-runtime")).unwrap_err();
        assert!(matches!(missing, Error::Spawn { .. }), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_message_prefers_error_lines() {
        let log = concat!(
            r#"{"level":"info","msg":"starting","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"Failed to remove cgroup","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"runc run failed: exec: \"nope\": executable file not found in $PATH","time":"t"}"#,
            "\n"
        );
        assert_eq!(error_message(log).unwrap(), "runc run failed: exec: \"nope\": executable file not found in $PATH");
    }

    #[test]
    fn exec_failures_are_told_apart() {
        assert!(is_exec_failure(
            r#"unable to start container process: exec: "/x": stat /x: no such file or directory"#
        ));
        assert!(is_exec_failure(r#"exec: "nope": executable file not found in $PATH"#));
        assert!(!is_exec_failure("unable to apply cgroup configuration: no such file or directory"));
    }

    #[test]
    fn a_container_without_processes_is_told_from_a_missing_one() {
        // runc 1.1's words for `kill` of a stopped container, and for an unknown one.
        assert!(is_not_running("container not running"));
        assert!(!is_not_exist("container not running"));
        assert!(is_not_exist("container does not exist"));
        assert!(!is_not_running("container does not exist"));
    }

    #[test]
    fn error_message_falls_back_to_last_line() {
        assert_eq!(error_message("plain text failure\n\n").unwrap(), "plain text failure");
        assert_eq!(error_message(""), None);
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        let dir = std::env::temp_dir().join(format!("tether-runc-test-{}", std::process::id()));
        let exec = RuncExecutor::new(
            RuncConfig {
                binary: "/nonexistent/runc-binary".into(),
                root: dir.clone(),
                systemd_cgroup: false,
                criu: None,
            },
            Arc::new(crate::DirectWaiter),
        );
        let err = block_on(exec.state("x")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/runc-binary"));
        let _ = fs::remove_dir_all(dir);
    }
}
