//! A private containerd: its own config, root, state and sockets in a temp dir, the shim under
//! test on its PATH. Dropping it removes every task and container it holds, stops it, and
//! unmounts anything left under the temp dir before deleting it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::config::CriPlugin;
use crate::ctr::Ctr;
use crate::daemon::Daemon;
use crate::env::Executor;
use crate::process::{self, wait_until};
use crate::runtime::{self, Runtime};

/// eprintln! that never panics: teardown runs in Drop (maybe while unwinding), where a panic
/// would abort, and stderr may be a closed pipe (`tether-demo | head`).
macro_rules! note {
    ($($arg:tt)*) => {
        if stderr_writable() {
            eprintln!($($arg)*);
        }
    };
}

/// False when fd 2 is a pipe whose reader has gone (or is otherwise broken).
fn stderr_writable() -> bool {
    let mut pfd = libc::pollfd { fd: 2, events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll on one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n >= 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0
}

/// The environment variable naming the node's default tether config, for handlers without
/// options (shim/src/config.rs); empty means none.
const CONFIG_ENV: &str = "TETHER_CONFIG";

/// containerd's CRI plugins: off unless a test asks for them ([`Containerd::start_with_cri`]).
/// 1.x has one; 2.x splits it into the API, the runtime and the image service.
const CRI_PLUGINS: &[&str] =
    &["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"];

/// Plugins that are not needed (legacy snapshotters, tracing) or would touch the host
/// (`opt` creates /opt/containerd). `io.containerd.runtime.v1.linux` must stay: containerd
/// 1.6's tasks service refuses to load without it.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.tracing.processor.v1.otlp",
    // NRI (2.x, on by default) would listen on /var/run/nri/nri.sock, the host's.
    "io.containerd.nri.v1.nri",
];

/// How long containerd may take to answer after being started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Containerd {
    /// None once leaked on purpose (something stayed mounted, or TETHER_TEST_KEEP is set).
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    child: Option<Child>,
    daemon: Daemon,
    runtime: Runtime,
    /// The CRI plugin's settings, when it is on.
    cri: Option<CriPlugin>,
    /// The node's default tether config its shims see (`TETHER_CONFIG`); none without.
    tether_config: Option<PathBuf>,
}

impl Containerd {
    /// Starts a private containerd of generation `daemon` whose PATH holds the shim of
    /// `runtime` (for tether, a symlink to the built binary; containerd's Go shim is the
    /// daemon's own; other runtimes are taken from the host's PATH).
    pub fn start(runtime: &Runtime, daemon: Daemon) -> Containerd {
        Containerd::launch(runtime, daemon, false, LogLevel::Debug)
    }

    /// [`Containerd::start`] at containerd's default log level (info), as nodes run it:
    /// containerd then starts shims without `-debug`.
    pub fn start_at_info(runtime: &Runtime, daemon: Daemon) -> Containerd {
        Containerd::launch(runtime, daemon, false, LogLevel::Info)
    }

    /// [`Containerd::start`] with the CRI plugin on (see `cri::config`): its gRPC API on the
    /// same socket, runtime handlers for tether's executors and containerd's Go shim. Handlers
    /// without options (the sandbox handler) run tether on `default_executor`: containerd's
    /// environment names that executor's config as the node's default (`TETHER_CONFIG`).
    /// containerd and its shims log at `level`.
    pub fn start_with_cri(
        runtime: &Runtime,
        daemon: Daemon,
        default_executor: Executor,
        level: LogLevel,
    ) -> Containerd {
        let mut c = Containerd::prepare(runtime, daemon, true, level);
        c.tether_config = c.cri.as_ref().map(|cri| cri.handler_config(default_executor));
        c.spawn();
        c
    }

    fn launch(runtime: &Runtime, daemon: Daemon, with_cri: bool, level: LogLevel) -> Containerd {
        let mut c = Containerd::prepare(runtime, daemon, with_cri, level);
        c.spawn();
        c
    }

    /// Everything but the daemon itself: its temp dir, shims, config.
    fn prepare(runtime: &Runtime, daemon: Daemon, with_cri: bool, level: LogLevel) -> Containerd {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the integration tests start containerd and containers: run them as root"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("tether-test-{}.", daemon.name()))
            .tempdir()
            .expect("create temp dir");
        let path = dir.path().to_path_buf();
        for d in ["bin", "root", "state", "fifo", "work"] {
            fs::create_dir_all(path.join(d)).expect("create dir");
        }
        if runtime.is_tether() {
            let shim = runtime::tether_shim_binary();
            std::os::unix::fs::symlink(&shim, path.join("bin").join(runtime::SHIM_BINARY))
                .expect("symlink the shim into bin/");
        }
        // containerd looks for shims on its PATH first: the host's Go shim is 1.x's.
        if let Some(go) = daemon.go_shim() {
            std::os::unix::fs::symlink(go, path.join("bin").join(Runtime::new(runtime::GO_RUNC).shim_binary_name()))
                .expect("symlink the Go shim into bin/");
        }
        let cri = with_cri.then(|| CriPlugin::prepare(&path));
        fs::write(path.join("config.toml"), config_toml(&path, daemon, cri.as_ref(), level))
            .expect("write containerd config");
        Containerd { dir: Some(dir), path, child: None, daemon, runtime: runtime.clone(), cri, tether_config: None }
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The gRPC socket (ctr's `--address`).
    pub fn address(&self) -> PathBuf {
        self.path.join("c.sock")
    }

    /// The ttrpc socket (where shims publish events).
    pub fn ttrpc_address(&self) -> PathBuf {
        self.path.join("c.sock.ttrpc")
    }

    /// containerd's stdout+stderr (debug level).
    pub fn log_path(&self) -> PathBuf {
        self.path.join("containerd.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The bundle containerd made for task `id` in `namespace`.
    pub fn bundle(&self, namespace: &str, id: &str) -> PathBuf {
        self.path.join("state/io.containerd.runtime.v2.task").join(namespace).join(id)
    }

    /// A ctr of this containerd's generation for `namespace` (FIFOs in this temp dir).
    pub fn ctr(&self, namespace: &str) -> Ctr {
        Ctr::new(&self.daemon.ctr(), &self.address(), namespace, &self.path.join("fifo"))
    }

    /// Which containerd generation this is.
    pub fn daemon(&self) -> Daemon {
        self.daemon
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The CRI plugin's settings, if it is on.
    pub fn cri(&self) -> Option<&CriPlugin> {
        self.cri.as_ref()
    }

    /// containerd's pid, if it is running.
    pub fn pid(&mut self) -> Option<u32> {
        self.is_running().then(|| self.child.as_ref().unwrap().id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                _ => {
                    self.child = None;
                    false
                }
            },
        }
    }

    /// SIGKILL containerd (as a crash would): its shims and their tasks live on.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own unreaped child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// kill -9, then start again with the same config and dirs.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts containerd again if it is not running.
    pub fn ensure_running(&mut self) {
        if !self.is_running() {
            self.spawn();
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: signalling our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        // SAFETY: as above.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Shim processes serving this containerd: (pid, argv). Found by their `-address` flag.
    pub fn shim_processes(&self) -> Vec<(u32, Vec<String>)> {
        let address = self.address().display().to_string();
        let mut found = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return found;
        };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(raw) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // A shim forks a child named `cgroup-move` for a few milliseconds around a create
            // or exec (shim/src/cgroup.rs, MOVER_NAME): it has the shim's command line, but it
            // is not a shim.
            let mover = fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "cgroup-move");
            let is_shim = !mover && argv.first().is_some_and(|a| a.contains("containerd-shim"));
            let ours = argv.windows(2).any(|w| w[0] == "-address" && w[1] == address);
            if is_shim && ours {
                found.push((pid, argv));
            }
        }
        found
    }

    /// Keeps the temp dir after the test (prints where it is).
    pub fn keep(&mut self) {
        if let Some(dir) = self.dir.take() {
            let p = dir.keep();
            note!("kept containerd dir {}", p.display());
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "containerd already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open containerd log");
        let path_env = match std::env::var_os("PATH") {
            Some(p) => {
                let mut v = vec![self.path.join("bin")];
                v.extend(std::env::split_paths(&p));
                std::env::join_paths(v).expect("PATH")
            }
            None => std::env::join_paths([
                self.path.join("bin"),
                "/usr/sbin".into(),
                "/usr/bin".into(),
                "/sbin".into(),
                "/bin".into(),
            ])
            .expect("PATH"),
        };
        let mut cmd = Command::new(self.daemon.containerd());
        cmd.arg("--config")
            .arg(self.path.join("config.toml"))
            .current_dir(&self.path)
            .env("PATH", path_env)
            // Never the host's /etc/tether/config.toml: a test's handlers get what it chose.
            .env(CONFIG_ENV, self.tether_config.as_deref().unwrap_or(Path::new("")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. If the test process dies without running Drop,
        // containerd goes with it (its shims and tasks survive: they are in their own sessions).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start containerd: {e}"));
        self.child = Some(child);
        let address = self.address();
        let started = Instant::now();
        loop {
            if !self.is_running() {
                panic!("containerd exited while starting; log:\n{}", tail(&self.log(), 60));
            }
            if address.exists() {
                let mut cmd = Command::new(self.daemon.ctr());
                cmd.arg("--address").arg(&address).arg("version");
                if process::run(cmd, None, Duration::from_secs(5)).ok() {
                    return;
                }
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill9();
                panic!("containerd did not answer within {START_TIMEOUT:?}; log:\n{}", tail(&self.log(), 60));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything Drop does, callable explicitly (idempotent).
    pub fn shutdown(&mut self) {
        if self.dir.is_none() && self.child.is_none() {
            return;
        }
        // Tasks can only be removed through a live containerd (their shims outlive it).
        if !self.is_running() {
            let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn()));
            if spawned.is_err() {
                note!("teardown: containerd could not be restarted to remove tasks");
            }
        }
        let mut namespaces = Vec::new();
        if self.is_running() {
            let ctr = self.ctr("default");
            namespaces = ctr.namespaces();
            for ns in &namespaces {
                ctr.in_namespace(ns).remove_everything();
            }
        }
        self.stop();
        if let Some(cri) = &self.cri {
            cri.remove_leftovers();
        }
        // runc removes /NAMESPACE/ID cgroups but leaves the empty /NAMESPACE parents.
        for ns in &namespaces {
            remove_empty_cgroups(ns);
            // tether's default runtime root is /run/tether/<namespace>; runc leaves it behind
            // (empty) once the namespace's last container is deleted. Only an empty dir goes.
            if self.runtime.is_tether() && !ns.is_empty() && !ns.contains('/') && !ns.starts_with('.') {
                let _ = fs::remove_dir(Path::new("/run/tether").join(ns));
            }
        }
        // Shims exit after their last task is deleted; give them a moment, then SIGKILL the
        // ones still serving this (now stopped) containerd: they were started for this test.
        if wait_until(Duration::from_secs(5), || self.shim_processes().is_empty().then_some(())).is_none() {
            for (pid, argv) in self.shim_processes() {
                note!("teardown: killing leftover shim {pid}: {}", argv.join(" "));
                // SAFETY: a plain kill of a pid we just read from /proc.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        let remaining = unmount_below(&self.path);
        if !remaining.is_empty() {
            note!("teardown: still mounted below {}, leaving the dir in place: {remaining:?}", self.path.display());
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        } else if std::env::var_os("TETHER_TEST_KEEP").is_some() {
            self.keep();
        }
        // Otherwise the TempDir is removed when it is dropped.
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            note!("---- containerd log (last 80 lines) ----\n{}\n----", tail(&self.log(), 80));
        }
        self.shutdown();
    }
}

/// containerd's `[debug] level`, which it also passes on to shims (`-debug` at debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// What the tests use: containerd's and the shims' logs say what happened.
    Debug,
    /// containerd's default.
    Info,
}

/// The config of the private containerd in `dir`: version 2 (1.x's format) or 3 (2.x's).
fn config_toml(dir: &Path, daemon: Daemon, cri: Option<&CriPlugin>, level: LogLevel) -> String {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
    };
    let d = dir.display();
    let disabled = DISABLED_PLUGINS
        .iter()
        .chain(CRI_PLUGINS.iter().filter(|_| cri.is_none()))
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cri = cri.map(|c| c.toml(daemon)).unwrap_or_default();
    let version = if daemon.is_v2() { 3 } else { 2 };
    format!(
        r#"# Private containerd for tether's tests: nothing outside {d}.
version = {version}
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[debug]
  level = "{level}"
{cri}"#
    )
}

/// Unmounts (lazily, deepest first) every mount point at or below `dir`; returns those that
/// are still mounted afterwards.
pub fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    let mut points = mounted_below(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &points {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    mounted_below(dir)
}

/// The mount points at or below `dir`.
pub fn mounted_below(dir: &Path) -> Vec<PathBuf> {
    mount_points().into_iter().filter(|m| m.starts_with(dir)).collect()
}

/// rmdir the cgroup `/<namespace>` (and its empty children) in every cgroup hierarchy.
/// rmdir only succeeds on cgroups without processes or children, so nothing live is touched.
pub fn remove_empty_cgroups(namespace: &str) {
    if namespace.is_empty() || namespace.contains('/') || namespace.starts_with('.') {
        return;
    }
    for point in cgroup_mount_points() {
        let dir = point.join(namespace);
        if let Ok(children) = fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(c.path());
                }
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// Where the cgroup hierarchies are mounted (one per v1 controller set, or the v2 one).
pub fn cgroup_mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter(|line| {
            let fstype = line.split_once(" - ").and_then(|(_, after)| after.split(' ').next());
            matches!(fstype, Some("cgroup" | "cgroup2"))
        })
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

/// Mount points of this mount namespace (/proc/self/mountinfo, octal escapes decoded).
pub fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_octal(p))).collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
