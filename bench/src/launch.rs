//! A shim launched by the benchmark itself, exactly as containerd 1.6 launches one: a bundle
//! with config.json and the `log` FIFO (which containerd reads), then `SHIM -namespace NS
//! -address GRPC -publish-binary CONTAINERD -id ID start` in the bundle with TTRPC_ADDRESS and
//! GOMAXPROCS=2 in its environment and the runtime options on stdin, then ttrpc to the address
//! it prints. This times a shim and its runtime without containerd's own work around them.
//!
//! Both shims need the same inputs: the Go shim's `start` reads its stdin to EOF (an empty
//! stdin is fine; a runc Options Any may set the shim's cgroup), and its serving process
//! opens the `log` FIFO for writing, which blocks until someone holds the read end.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_protos::{
    api,
    protobuf::{well_known_types::empty::Empty, Message, MessageField},
    ttrpc,
};
use tether_tests::{
    containerd,
    shim::{code_of, message_of, ShimClient},
    Daemon, Env,
};

use crate::containers::{self, start_sleepers};
use crate::targets::Target;
use crate::timed;

/// How long `start` may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shim may take to exit after Shutdown before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the shim's log is kept for error messages.
const LOG_TAIL: usize = 4096;

/// The config.json containerd writes for a `ctr run --rootfs` container: namespaces, mounts,
/// capabilities, env, as containerd really makes them. Taken from a live container of
/// `target` (which is removed again).
pub fn spec_template(env: &Env, target: &Target) -> Result<Value, String> {
    let id = "spec-template".to_string();
    start_sleepers(env, target, std::slice::from_ref(&id), 1, None)?;
    let path = env.containerd.bundle(&env.ns, &id).join("config.json");
    let spec = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
    containers::remove(env, &[id], 1);
    serde_json::from_slice(&spec?).map_err(|e| format!("{}: {e}", path.display()))
}

/// The address `start` printed: a bare `unix://...` (containerd 1.x) or containerd 2.x's JSON
/// `{"version":...,"address":"unix://...","protocol":"ttrpc"}`.
pub fn parse_address(stdout: &str) -> Result<String, String> {
    let text = stdout.trim();
    let address = if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("start printed {text:?}: {e}"))?;
        v.get("address").and_then(Value::as_str).unwrap_or_default().to_owned()
    } else {
        text.to_owned()
    };
    if address.is_empty() {
        return Err(format!("start printed no address ({text:?})"));
    }
    Ok(address)
}

/// Reads the bundle's `log` FIFO as containerd does, keeping its tail for error messages.
/// The FIFO is opened read-write: it then never reports end-of-file (the reader thread just
/// blocks between the shim's lines), and a byte written by [`Drop`] wakes the thread to end.
struct LogDrain {
    fifo: File,
    stop: Arc<AtomicBool>,
    tail: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl LogDrain {
    fn open(path: &Path) -> Result<LogDrain, String> {
        mkfifo(path)?;
        let fifo =
            fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = fifo.try_clone().map_err(|e| format!("dup: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (s, t) = (stop.clone(), tail.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let mut t = t.lock().unwrap();
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(LOG_TAIL);
                t.drain(..excess);
            }
        });
        Ok(LogDrain { fifo, stop, tail, thread: Some(thread) })
    }

    fn tail(&self) -> String {
        String::from_utf8_lossy(&self.tail.lock().unwrap()).trim().to_owned()
    }
}

impl Drop for LogDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.fifo.write_all(b"\n");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes a FIFO at `path` (0600).
pub fn mkfifo(path: &Path) -> Result<(), String> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: mkfifo with a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!("mkfifo {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One bundle and the shim serving it. Dropping it cleans up whatever is left: the task is
/// killed and deleted, the shim shut down (killed if it does not exit), mounts below the
/// bundle undone, the bundle removed.
pub struct Launch<'a> {
    env: &'a Env,
    target: &'a Target,
    pub id: String,
    pub bundle: PathBuf,
    log: Option<LogDrain>,
    client: Option<ShimClient>,
    /// The `cgroup.procs` the shim is started in (see [`Launch::in_cgroup`]).
    cgroup_procs: Option<PathBuf>,
    created: bool,
    deleted: bool,
    shut_down: bool,
}

impl<'a> Launch<'a> {
    /// A bundle for container `id` running `args`, from containerd's `spec`: its root is
    /// `<bundle>/rootfs`, where the shim mounts the busybox rootfs at Create (as it mounts a
    /// snapshot), and its cgroup is `/<namespace>/<id>` like ctr's containers.
    pub fn prepare(
        env: &'a Env,
        target: &'a Target,
        spec: &Value,
        id: &str,
        args: &[&str],
    ) -> Result<Launch<'a>, String> {
        let bundle = env.work().join("shims").join(id);
        fs::create_dir_all(bundle.join("rootfs")).map_err(|e| format!("{}: {e}", bundle.display()))?;
        let mut spec = spec.clone();
        spec["root"] = serde_json::json!({ "path": "rootfs" });
        spec["process"]["args"] = serde_json::json!(args);
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", env.ns).into();
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
        fs::write(bundle.join("config.json"), text).map_err(|e| format!("writing config.json: {e}"))?;
        let mut launch = Launch {
            env,
            target,
            id: id.to_owned(),
            bundle,
            log: None,
            client: None,
            cgroup_procs: None,
            created: false,
            deleted: false,
            shut_down: false,
        };
        launch.log = Some(LogDrain::open(&launch.bundle.join("log"))?);
        Ok(launch)
    }

    /// An error message with the shim's log so far.
    fn fail(&self, what: &str, err: impl std::fmt::Display) -> String {
        let log = self.log.as_ref().map(LogDrain::tail).unwrap_or_default();
        if log.is_empty() {
            format!("{} {what}: {err}", self.target.name)
        } else {
            format!("{} {what}: {err}\n    shim log: {}", self.target.name, log.replace('\n', "\n    "))
        }
    }

    /// Starts the shim in the cgroup whose `cgroup.procs` is `procs`: its `start` process
    /// joins it before it runs, so the serving shim it forks, and everything that one forks,
    /// is charged there from its first page on.
    pub fn in_cgroup(&mut self, procs: PathBuf) {
        self.cgroup_procs = Some(procs);
    }

    /// `start`, then a ttrpc connection to the address it printed.
    pub fn start_shim(&mut self) -> Result<(), String> {
        let env = self.env;
        let mut cmd = std::process::Command::new(self.target.shim_binary());
        cmd.arg("-namespace")
            .arg(&env.ns)
            .arg("-address")
            .arg(env.containerd.address())
            .arg("-publish-binary")
            .arg(Daemon::V1.containerd())
            .args(["-id", &self.id, "start"])
            .current_dir(&self.bundle)
            .env("TTRPC_ADDRESS", env.containerd.ttrpc_address())
            .env("GOMAXPROCS", "2");
        if let Some(procs) = &self.cgroup_procs {
            let path = std::ffi::CString::new(procs.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: open, write and close are async-signal-safe; the path was made before
            // the fork. "0" names the writing process itself.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(err);
                    }
                    Ok(())
                });
            }
        }
        let options = self.target.options(env).write_to_bytes().map_err(|e| e.to_string())?;
        let started = timed::run(cmd, Some(&options), START_TIMEOUT).and_then(timed::Finished::success);
        let out = started.map_err(|e| self.fail("start", e))?;
        let address = parse_address(&out.stdout).map_err(|e| self.fail("start", e))?;
        self.client =
            Some(ShimClient::connect(&address).map_err(|e| self.fail(&format!("connecting to {address}"), e))?);
        Ok(())
    }

    /// The ttrpc connection to the started shim.
    pub fn client(&self) -> Result<&ShimClient, String> {
        self.client.as_ref().ok_or_else(|| self.fail("calling", "the shim was not started"))
    }

    fn call<Resp: Message>(&self, method: &str, req: &impl Message) -> Result<Resp, String> {
        let client = self.client.as_ref().ok_or_else(|| self.fail(method, "the shim was not started"))?;
        client.call(method, req).map_err(|e| self.fail(method, format!("{:?}: {}", code_of(&e), message_of(&e))))
    }

    /// Connect: the shim's pid.
    pub fn connect(&self) -> Result<u32, String> {
        let resp: api::ConnectResponse =
            self.call("Connect", &api::ConnectRequest { id: self.id.clone(), ..Default::default() })?;
        Ok(resp.shim_pid)
    }

    /// Create, as containerd sends it: the rootfs as a read-only bind mount, the runtime
    /// options, `stdout` and `stderr` (FIFO paths, or both empty for none: the Go shim wants
    /// either none or both).
    pub fn create(&mut self, stdout: &str, stderr: &str) -> Result<(), String> {
        let req = api::CreateTaskRequest {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            rootfs: vec![api::Mount {
                type_: "bind".into(),
                source: self.env.rootfs.display().to_string(),
                options: vec!["rbind".into(), "ro".into()],
                ..Default::default()
            }],
            stdout: stdout.into(),
            stderr: stderr.into(),
            options: MessageField::some(self.target.options(self.env)),
            ..Default::default()
        };
        self.call::<api::CreateTaskResponse>("Create", &req)?;
        self.created = true;
        Ok(())
    }

    pub fn start(&self) -> Result<(), String> {
        self.call::<api::StartResponse>("Start", &api::StartRequest { id: self.id.clone(), ..Default::default() })
            .map(drop)
    }

    /// Waits for the init to exit; an error unless it exited 0.
    pub fn wait(&self) -> Result<(), String> {
        let resp: api::WaitResponse =
            self.call("Wait", &api::WaitRequest { id: self.id.clone(), ..Default::default() })?;
        match resp.exit_status {
            0 => Ok(()),
            s => Err(self.fail("Wait", format!("the container exited with status {s}"))),
        }
    }

    pub fn delete(&mut self) -> Result<(), String> {
        self.call::<api::DeleteResponse>("Delete", &api::DeleteRequest { id: self.id.clone(), ..Default::default() })?;
        self.deleted = true;
        Ok(())
    }

    /// Shutdown. A shim may exit before its answer is sent (containerd accepts a closed
    /// connection as success too); only an error status is a failure.
    pub fn shutdown(&mut self) -> Result<(), String> {
        self.shut_down = true;
        let req = api::ShutdownRequest { id: self.id.clone(), ..Default::default() };
        match self.client.as_ref().map(|c| c.call::<Empty>("Shutdown", &req)) {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e @ ttrpc::Error::RpcStatus(_))) => Err(self.fail("Shutdown", e)),
            Some(Err(_)) => Ok(()),
        }
    }

    /// Cleans up now (untimed: after a measurement) and says what could not be.
    pub fn finish(mut self) -> Result<(), String> {
        self.cleanup()
    }

    /// The processes serving this bundle: shims of our containerd started with `-id ID`.
    fn shim_pids(&self) -> Vec<u32> {
        self.env
            .containerd
            .shim_processes()
            .into_iter()
            .filter(|(_, argv)| argv.windows(2).any(|w| w[0] == "-id" && w[1] == self.id))
            .map(|(pid, _)| pid)
            .collect()
    }

    fn cleanup(&mut self) -> Result<(), String> {
        if self.created && !self.deleted {
            if let Some(c) = &self.client {
                let _ = c.kill(&self.id, libc::SIGKILL as u32);
                let _ = c.wait(&self.id);
                let _ = c.delete(&self.id);
            }
            self.deleted = true;
        }
        if !self.shut_down {
            let _ = self.shutdown();
        }
        self.client = None;
        let mut problems = Vec::new();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for pid in self.shim_pids() {
            problems.push(format!("shim {pid} did not exit after Shutdown: killed"));
            // SAFETY: a shim this launch started (found by its -address and -id flags).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let leftovers = empty_cgroup(&self.env.ns, &self.id);
        if !leftovers.is_empty() {
            problems.push(format!("processes {leftovers:?} were left in the container's cgroup: killed"));
        }
        let mounted = containerd::unmount_below(&self.bundle);
        if mounted.is_empty() {
            let _ = fs::remove_dir_all(&self.bundle);
        } else {
            problems.push(format!("still mounted: {mounted:?}"));
        }
        self.log = None;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{} {}: {}", self.target.name, self.id, problems.join("; ")))
        }
    }
}

/// A container whose create failed half-way can leave its init behind (`runc init`, waiting
/// for a start that never comes, re-parented away from the shim that exited). Its cgroup is
/// `/<namespace>/<id>`, set by [`Launch::prepare`], so whatever is still in it is this
/// launch's: kill it and remove the cgroup. Returns the pids it had to kill.
fn empty_cgroup(namespace: &str, id: &str) -> Vec<u32> {
    let dirs: Vec<PathBuf> = containerd::cgroup_mount_points()
        .into_iter()
        .map(|m| m.join(namespace).join(id))
        .filter(|d| d.is_dir())
        .collect();
    let members = || -> BTreeSet<u32> {
        let read = |d: &PathBuf| fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        dirs.iter()
            .flat_map(|d| read(d).split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
            .collect()
    };
    let mut killed = BTreeSet::new();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let pids = members();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // SAFETY: a plain kill of a process in a cgroup only this launch's container uses.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for d in &dirs {
        let _ = fs::remove_dir(d);
    }
    killed.into_iter().collect()
}

impl Drop for Launch<'_> {
    fn drop(&mut self) {
        if self.log.is_some() {
            if let Err(e) = self.cleanup() {
                eprintln!("  cleanup: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_both_formats() {
        assert_eq!(parse_address("unix:///run/containerd/s/ab\n").unwrap(), "unix:///run/containerd/s/ab");
        let json = r#"{"version":2,"address":"unix:///run/containerd/s/cd","protocol":"ttrpc"}"#;
        assert_eq!(parse_address(json).unwrap(), "unix:///run/containerd/s/cd");
        assert!(parse_address("  \n").is_err());
        assert!(parse_address("{}").is_err());
    }

    #[test]
    fn the_log_drain_reads_and_stops() {
        let dir = std::env::temp_dir().join(format!("tether-bench-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let drain = LogDrain::open(&path).unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"hello from a shim\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while drain.tail().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(drain.tail(), "hello from a shim");
        drop(drain);
        fs::remove_dir_all(&dir).unwrap();
    }
}
