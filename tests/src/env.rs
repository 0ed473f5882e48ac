//! One test's world: a private containerd, a busybox rootfs, a namespace of its own, and
//! builders for `ctr run` that know how to pass runtime options to the runtime under test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tether_protos::{
    protobuf::{well_known_types::any::Any, Message},
    runtimeoptions, type_urls,
};

use crate::containerd::Containerd;
use crate::ctr::{Ctr, CTR_TIMEOUT};
use crate::daemon::Daemon;
use crate::oci_image;
use crate::process::{Output, Proc};
use crate::rootfs;
use crate::runtime::Runtime;
use crate::Case;

/// The name [`Env::image`] imports the busybox rootfs under.
pub const IMAGE: &str = "docker.io/library/tether-busybox:latest";

/// PATH inside containers: `ctr run --rootfs` gives the process no environment at all.
pub const CONTAINER_PATH: &str = "PATH=/bin:/sbin:/usr/bin";

/// How tether runs a scenario's containers: its config's `executor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    /// An OCI runtime binary (runc), forked per operation.
    Runc,
    /// youki's libcontainer inside the shim.
    Native,
}

impl Executor {
    /// The config file's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Executor::Runc => "runc",
            Executor::Native => "native",
        }
    }

    /// How the shim's debug dump names it (the executor's own name).
    pub fn shown_as(self) -> &'static str {
        match self {
            Executor::Runc => "runc",
            Executor::Native => "libcontainer",
        }
    }
}

pub struct Env {
    pub runtime: Runtime,
    /// The executor tether runs this test's containers with.
    pub executor: Executor,
    /// The tether config every `ctr run` (and every Create made through [`Env::runtime_options`])
    /// sends unless it names its own.
    pub default_config: Option<PathBuf>,
    /// This test's containerd namespace (unique: cgroup paths are `/NAMESPACE/ID`).
    pub ns: String,
    /// ctr in `ns`.
    pub ctr: Ctr,
    /// A busybox rootfs (shared by the test's containers; they only read it).
    pub rootfs: PathBuf,
    /// Dropped last: removes tasks and containers, stops containerd, deletes the temp dir.
    pub containerd: Containerd,
}

impl Env {
    /// A fresh containerd of generation `daemon` for the runtime named by
    /// `$TETHER_TEST_RUNTIME` (default tether), with tether's default executor (runc, or what
    /// `$TETHER_TEST_RUNTIME_CONFIG` says).
    pub fn new(test: &str, daemon: Daemon) -> Env {
        Env::with_runtime(test, Runtime::from_env(), daemon)
    }

    pub fn with_runtime(test: &str, runtime: Runtime, daemon: Daemon) -> Env {
        Env::with_containerd(test, Containerd::start(&runtime, daemon), runtime)
    }

    /// [`Env::with_runtime`] with containerd at its default log level (info), so that shims
    /// run as on a node, without `-debug`: what the benchmark measures.
    pub fn at_info_level(test: &str, runtime: Runtime, daemon: Daemon) -> Env {
        Env::with_containerd(test, Containerd::start_at_info(&runtime, daemon), runtime)
    }

    fn with_containerd(test: &str, containerd: Containerd, runtime: Runtime) -> Env {
        let ns = unique_namespace(test);
        let ctr = containerd.ctr(&ns);
        let rootfs = rootfs::build(&containerd.dir().join("rootfs"));
        Env { default_config: runtime.default_config(), runtime, executor: Executor::Runc, ns, ctr, rootfs, containerd }
    }

    /// A fresh containerd of `case.daemon` (as [`Env::new`]) whose tether runs containers with
    /// `case.executor`. `None`, after saying why, when the runtime under test is not tether and
    /// the executor is not runc: containerd's Go shim has only the runc way.
    pub fn for_case(test: &str, case: Case) -> Option<Env> {
        let Case { daemon, executor, .. } = case;
        let runtime = Runtime::from_env();
        if executor != Executor::Runc && !runtime.is_tether() {
            skip(test, &format!("the {} executor is tether's (runtime is {})", executor.name(), runtime.name));
            return None;
        }
        let mut env = Env::with_runtime(&format!("{test}-{}", executor.name()), runtime, daemon);
        env.executor = executor;
        if executor != Executor::Runc {
            let config = TetherConfig { executor: Some(executor.name().into()), ..Default::default() };
            env.default_config = Some(config.write(&env.work().join(format!("{}.toml", executor.name()))));
        }
        Some(env)
    }

    /// The runtime options a Create sent straight to the shim carries, so that it runs on this
    /// test's executor: containerd's runtimeoptions naming [`Env::default_config`].
    pub fn runtime_options(&self) -> Option<Any> {
        let path = self.default_config.as_ref()?;
        let options = runtimeoptions::Options { config_path: path.display().to_string(), ..Default::default() };
        Some(Any {
            type_url: type_urls::RUNTIME_OPTIONS.into(),
            value: options.write_to_bytes().expect("runtime options encode"),
            ..Default::default()
        })
    }

    /// A scratch dir of this test (inside the temp dir, made with it, removed at the end).
    pub fn work(&self) -> PathBuf {
        self.containerd.dir().join("work")
    }

    /// Where the Go shim keeps runc's state by default here (never /run/containerd/runc).
    pub fn go_runc_root(&self) -> PathBuf {
        self.containerd.dir().join("runc-root")
    }

    /// The OCI runtime's state dir of container `id` (run with the default options): under
    /// tether's default root `/run/tether/<namespace>`, or the Go shim's root here.
    pub fn runtime_state(&self, id: &str) -> PathBuf {
        let root = if self.runtime.is_go_runc() { self.go_runc_root() } else { PathBuf::from("/run/tether") };
        root.join(&self.ns).join(id)
    }

    /// Imports the busybox rootfs as an image into this test's namespace, so that containerd
    /// hands the shim rootfs mounts (an overlay) to mount, as in production; returns its name.
    pub fn image(&self) -> String {
        let dir = self.work().join("image");
        std::fs::create_dir_all(&dir).expect("creating the image dir");
        let archive = dir.join("busybox.tar");
        oci_image::write_archive(&self.rootfs, &[oci_image::Image::new(IMAGE)], &archive);
        oci_image::import(&self.ctr, &archive);
        IMAGE.to_string()
    }

    /// A `ctr run` for container `id` in this test's namespace.
    pub fn run(&self, id: &str) -> RunBuilder<'_> {
        RunBuilder {
            env: self,
            runtime: self.runtime.clone(),
            id: id.to_owned(),
            flags: Vec::new(),
            config: ConfigChoice::Default,
            binary: None,
            root: None,
            image: None,
            timeout: CTR_TIMEOUT,
        }
    }

    /// `ctr task exec --exec-id EXEC_ID ID CMD...`.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        self.ctr.exec(id, exec_id, cmd)
    }

    /// A call refused because of the task's state. The Go shim answers these with gRPC
    /// Unknown and a message (`go_message`, e.g. "cannot exec in a stopped state"); tether
    /// must answer FailedPrecondition (see [`Env::expect_code`]).
    #[track_caller]
    pub fn expect_wrong_state(&self, out: &Output, go_message: &str) {
        out.expect_failure();
        if self.runtime.is_go_runc() {
            out.expect_stderr(go_message);
        } else if self.runtime.is_tether() {
            self.expect_code(out, "failed precondition");
        }
    }

    /// A ctr call that failed with the gRPC code `word` ("failed precondition", ...): ctr 1.x
    /// prints the code, ctr 2.x only the message (the codes are checked over ttrpc too, in
    /// bad_input.rs).
    #[track_caller]
    pub fn expect_code<'o>(&self, out: &'o Output, word: &str) -> &'o Output {
        out.expect_failure();
        if !self.containerd.daemon().is_v2() {
            out.expect_stderr(word);
        }
        out
    }

    /// Whether the runtime under test is tether; otherwise prints why `test` skips.
    pub fn tether_only(&self, test: &str) -> bool {
        if self.runtime.is_tether() {
            return true;
        }
        skip(test, &format!("tether-only (runtime is {})", self.runtime.name));
        false
    }

    /// The pid of the shim serving task `id`: the parent of the task's init process (the
    /// shim is the init's subreaper), checked to be one of this containerd's shims.
    #[track_caller]
    pub fn shim_pid_of(&self, id: &str) -> u32 {
        let task = self.ctr.task(id).unwrap_or_else(|| panic!("no task {id}"));
        let ppid = parent_pid(task.pid).unwrap_or_else(|| panic!("cannot read the parent of pid {}", task.pid));
        let shims = self.containerd.shim_processes();
        assert!(
            shims.iter().any(|(pid, _)| *pid == ppid),
            "the parent ({ppid}) of {id}'s init ({}) is not one of this containerd's shims: {shims:?}",
            task.pid
        );
        ppid
    }
}

/// What a process holds: open fds, threads, resident memory (all of it, and the part mapped
/// from files: code and constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
    pub rss_file_kib: u64,
}

/// The [`Usage`] of `pid` now (/proc/PID/fd, /proc/PID/task, VmRSS, RssFile).
pub fn usage(pid: u32) -> Usage {
    let count = |d: String| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        rss_kib: kib("VmRSS:"),
        rss_file_kib: kib("RssFile:"),
    }
}

/// The parent pid of `pid` (/proc/PID/status).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

/// The pids whose parent is `pid` (/proc/*/status).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_pid(*child) == Some(pid))
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => false,
        Ok(s) => !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

/// True while `/proc/PID` exists at all (a zombie counts: nobody reaped it).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reports a skipped test on the real stderr (libtest only captures `print!`/`eprint!`), so the
/// reason shows in `cargo test` output even when the test "passes".
pub fn skip(test: &str, reason: &str) {
    let line = format!("\nSKIPPED {test}: {}\n", reason.trim().replace('\n', " | "));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn unique_namespace(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(40)
        .collect();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!(
        "{}-{}-{}{:x}",
        if base.is_empty() { "t" } else { base.trim_end_matches('-') },
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff
    )
}

/// Which runtime options `ctr run` sends.
#[derive(Clone, Debug)]
enum ConfigChoice {
    /// The runtime's default (for tether: `$TETHER_TEST_RUNTIME_CONFIG` if set, else none).
    Default,
    /// None at all.
    Nothing,
    /// `--runtime-config-path FILE`.
    File(PathBuf),
}

/// tether's TOML config (what `--runtime-config-path` names).
#[derive(Clone, Debug, Default)]
pub struct TetherConfig {
    /// `executor = "runc"`.
    pub executor: Option<String>,
    /// `[runc] binary`: a path or a name on PATH.
    pub binary: Option<String>,
    /// `[runc] root`: the runtime's state dir.
    pub root: Option<PathBuf>,
    /// `[runc] systemd_cgroup`.
    pub systemd_cgroup: Option<bool>,
    /// `[runc] criu`: the CRIU binary.
    pub criu: Option<String>,
    /// `[native] root`: libcontainer's state dir.
    pub native_root: Option<PathBuf>,
    /// `log_level`: the shim's log level.
    pub log_level: Option<String>,
    /// `idle_trim_ms`: quiet time before the shim trims its memory (0: never).
    pub idle_trim_ms: Option<u64>,
}

impl TetherConfig {
    pub fn to_toml(&self) -> String {
        let mut s = String::from("# tether runtime config (written by tether-tests)\n");
        if let Some(e) = &self.executor {
            s += &format!("executor = {}\n", toml_str(e));
        }
        if let Some(l) = &self.log_level {
            s += &format!("log_level = {}\n", toml_str(l));
        }
        if let Some(ms) = self.idle_trim_ms {
            s += &format!("idle_trim_ms = {ms}\n");
        }
        s += "\n[runc]\n";
        if let Some(b) = &self.binary {
            s += &format!("binary = {}\n", toml_str(b));
        }
        if let Some(r) = &self.root {
            s += &format!("root = {}\n", toml_str(&r.display().to_string()));
        }
        if let Some(c) = self.systemd_cgroup {
            s += &format!("systemd_cgroup = {c}\n");
        }
        if let Some(c) = &self.criu {
            s += &format!("criu = {}\n", toml_str(c));
        }
        if let Some(r) = &self.native_root {
            s += &format!("\n[native]\nroot = {}\n", toml_str(&r.display().to_string()));
        }
        s
    }

    /// Writes the TOML to `path` and returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_toml()).expect("write tether config");
        path.to_path_buf()
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds `ctr run --runtime RUNTIME --rootfs ROOTFS ID CMD...`.
pub struct RunBuilder<'a> {
    env: &'a Env,
    runtime: Runtime,
    id: String,
    flags: Vec<String>,
    config: ConfigChoice,
    binary: Option<String>,
    root: Option<PathBuf>,
    image: Option<String>,
    timeout: Duration,
}

impl<'a> RunBuilder<'a> {
    /// `-d`: return once the task started.
    pub fn detach(self) -> Self {
        self.flag("--detach")
    }

    /// `--rm`: delete the container when the task ended (foreground only).
    pub fn rm(self) -> Self {
        self.flag("--rm")
    }

    /// `-t`: a terminal (use `run_on_tty`).
    pub fn tty(self) -> Self {
        self.flag("--tty")
    }

    /// `--log-uri URI` (`file:///path`, `binary:///path?k=v`).
    pub fn log_uri(self, uri: &str) -> Self {
        self.flag("--log-uri").flag(uri)
    }

    /// `--annotation KEY=VALUE` (an OCI annotation in config.json).
    pub fn annotation(self, key: &str, value: &str) -> Self {
        self.flag("--annotation").flag(&format!("{key}={value}"))
    }

    /// Any other ctr run flag (one argv word).
    pub fn flag(mut self, f: &str) -> Self {
        self.flags.push(f.to_owned());
        self
    }

    /// `--runtime-config-path FILE` (tether's TOML).
    pub fn config_path(mut self, path: &Path) -> Self {
        self.config = ConfigChoice::File(path.to_path_buf());
        self
    }

    /// Send no runtime options at all (the runtime's defaults). For the Go shim the harness
    /// still sends `--runc-root`, which keeps runc's state inside the temp dir.
    pub fn no_options(mut self) -> Self {
        self.config = ConfigChoice::Nothing;
        self
    }

    /// The OCI runtime binary: for the Go shim `--runc-binary`, for tether `[runc] binary`
    /// in a generated config.
    pub fn runtime_binary(mut self, binary: &str) -> Self {
        self.binary = Some(binary.to_owned());
        self
    }

    /// The OCI runtime's state dir: for the Go shim `--runc-root`, for tether `[runc] root`.
    pub fn runtime_root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// Run from `image` (see [`Env::image`]) instead of the rootfs directory.
    pub fn image(mut self, image: &str) -> Self {
        self.image = Some(image.to_owned());
        self
    }

    /// Another runtime than the test's (one containerd serves them all), e.g. to compare two.
    pub fn runtime(mut self, runtime: &Runtime) -> Self {
        self.runtime = runtime.clone();
        self
    }

    /// Deadline of the ctr call (default 30 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The ctr arguments for running `cmd`.
    pub fn args(&self, cmd: &[&str]) -> Vec<String> {
        let env = self.env;
        let mut a: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            self.runtime.name.clone(),
            "--fifo-dir".into(),
            env.ctr.fifo_dir.display().to_string(),
            "--env".into(),
            CONTAINER_PATH.into(),
        ];
        if self.runtime.is_go_runc() {
            // ctr sends runc options for io.containerd.runc.v2 (it ignores a config path then).
            let root = self.root.clone().unwrap_or_else(|| env.go_runc_root());
            a.extend(["--runc-root".into(), root.display().to_string()]);
            if let Some(b) = &self.binary {
                a.extend(["--runc-binary".into(), b.clone()]);
            }
        } else {
            let config = match (&self.config, self.binary.is_some() || self.root.is_some()) {
                (ConfigChoice::File(p), false) => Some(p.clone()),
                (ConfigChoice::File(_), true) => {
                    panic!("runtime_binary/runtime_root cannot be combined with config_path")
                }
                (ConfigChoice::Nothing, _) => None,
                (ConfigChoice::Default, true) => {
                    // The binary and root are settings of the runc executor.
                    let cfg = TetherConfig {
                        executor: Some("runc".into()),
                        binary: self.binary.clone(),
                        root: self.root.clone(),
                        ..Default::default()
                    };
                    Some(cfg.write(&env.work().join(format!("config-{}.toml", self.id))))
                }
                (ConfigChoice::Default, false) => env.default_config.clone(),
            };
            if let Some(p) = config {
                a.extend(["--runtime-config-path".into(), p.display().to_string()]);
            }
        }
        a.extend(self.flags.iter().cloned());
        match &self.image {
            Some(image) => a.push(image.clone()),
            None => a.extend(["--rootfs".into(), env.rootfs.display().to_string()]),
        }
        a.push(self.id.clone());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// Runs it (stdin /dev/null, so ctr closes the task's stdin at once).
    pub fn run(self, cmd: &[&str]) -> Output {
        self.env.ctr.run_for(&self.args(cmd), self.timeout)
    }

    /// Starts it in the background with a piped stdin (see `Proc`).
    pub fn spawn(self, cmd: &[&str]) -> Proc {
        self.env.ctr.spawn(&self.args(cmd))
    }

    /// Runs it on a pseudo-terminal of `cols`×`rows` (add `.tty()` for a container tty).
    pub fn run_on_tty(self, cmd: &[&str], cols: u16, rows: u16) -> Output {
        let ctr = Ctr { timeout: self.timeout, ..self.env.ctr.clone() };
        ctr.run_on_tty(&self.args(cmd), cols, rows)
    }
}
