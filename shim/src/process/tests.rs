//! The table's orderings and races, shown without root and in milliseconds: a fake executor
//! whose "containers" are plain child processes (`sleep`, `sh -c`), reaped by the test
//! binary's one reaper, and whose exec can be held at will to stand for a slow runtime.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use tempfile::TempDir;
use tether_protos::ttrpc::Code;
use tether_runtime::{CheckpointOpts, ContainerState, CreateOpts, ExecOpts, Executor, RestoreOpts};
use tokio::sync::watch;

use super::{CreateRequest, Executors, Table};
use crate::{
    cgroup::Cgroup,
    config::Settings,
    error::Result,
    events::Publisher,
    oom::OomWatch,
    reaper::{self, Exit},
    stdio::StdioSpec,
};

/// A held door: `wait` resolves once it is open (a runtime call held on the loop, as a slow
/// one is, without holding the thread).
struct Door(watch::Sender<bool>);

impl Default for Door {
    fn default() -> Door {
        Door(watch::channel(false).0)
    }
}

impl Door {
    fn set(&self, shut: bool) {
        self.0.send_replace(shut);
    }

    async fn wait(&self) {
        // The sender lives as long as the door: the wait ends only when it opens.
        let _ = self.0.subscribe().wait_for(|shut| !shut).await;
    }
}

/// Drives a table call to its end from the test's thread; the loop runs on its own.
fn block_on<F: std::future::Future>(call: F) -> F::Output {
    crate::rt::handle().block_on(call)
}

/// Containers as plain processes: the init runs the command named in the bundle's
/// `config.json` (`process.args`), an exec the args of its process spec.
#[derive(Default)]
struct Fake {
    /// Every pid started for a container (the init first).
    pids: Mutex<HashMap<String, Vec<i32>>>,
    /// Execs of the container named here wait at the door before they start.
    held_exec: Mutex<Option<(String, Arc<Door>)>>,
}

fn spawn(args: &[String]) -> tether_runtime::Result<i32> {
    let child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tether_runtime::Error::io("spawning a fake container process", e))?;
    // The reaper reaps it (waitpid -1), not this handle.
    Ok(child.id() as i32)
}

fn args_of(json: &[u8]) -> Vec<String> {
    let spec: serde_json::Value = serde_json::from_slice(json).expect("a JSON spec");
    let args = spec.get("process").unwrap_or(&spec)["args"].as_array().cloned().unwrap_or_default();
    args.iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

fn unsupported(op: &'static str) -> tether_runtime::Error {
    tether_runtime::Error::Unsupported { executor: "fake", op }
}

#[async_trait]
impl Executor for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    async fn create(&self, opts: CreateOpts) -> tether_runtime::Result<i32> {
        let config = std::fs::read(opts.bundle.join("config.json")).unwrap();
        let pid = spawn(&args_of(&config))?;
        self.pids.lock().unwrap().insert(opts.id, vec![pid]);
        Ok(pid)
    }

    async fn start(&self, _: &str) -> tether_runtime::Result<()> {
        Ok(())
    }

    async fn exec(&self, id: &str, opts: ExecOpts) -> tether_runtime::Result<i32> {
        let door = self.held_exec.lock().unwrap().clone().filter(|(held, _)| held == id);
        if let Some((_, door)) = door {
            door.wait().await;
        }
        let pid = spawn(&args_of(&std::fs::read(&opts.process_spec).unwrap()))?;
        self.pids.lock().unwrap().entry(id.to_string()).or_default().push(pid);
        Ok(pid)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> tether_runtime::Result<()> {
        let pids = self.pids.lock().unwrap().get(id).cloned().unwrap_or_default();
        for pid in if all { &pids[..] } else { &pids[..1] } {
            // SAFETY: signalling a child this test started.
            unsafe { libc::kill(*pid, signal as i32) };
        }
        Ok(())
    }

    async fn pause(&self, _: &str) -> tether_runtime::Result<()> {
        Ok(())
    }

    async fn resume(&self, _: &str) -> tether_runtime::Result<()> {
        Ok(())
    }

    async fn delete(&self, id: &str, _: bool) -> tether_runtime::Result<()> {
        self.kill(id, libc::SIGKILL as u32, true).await?;
        self.pids.lock().unwrap().remove(id);
        Ok(())
    }

    async fn state(&self, _: &str) -> tether_runtime::Result<ContainerState> {
        Err(unsupported("state"))
    }

    async fn ps(&self, id: &str) -> tether_runtime::Result<Vec<i32>> {
        Ok(self.pids.lock().unwrap().get(id).cloned().unwrap_or_default())
    }

    async fn update(&self, _: &str, _: &[u8]) -> tether_runtime::Result<()> {
        Ok(())
    }

    async fn checkpoint(&self, _: &str, _: &CheckpointOpts) -> tether_runtime::Result<()> {
        Err(unsupported("checkpoint"))
    }

    async fn restore(&self, opts: RestoreOpts) -> tether_runtime::Result<i32> {
        // The restored process runs at once, as CRIU's does.
        self.create(opts.create).await
    }
}

/// The fake's processes are in the test's own cgroup: there is nothing to watch.
struct NoOom;

impl OomWatch for NoOom {
    fn watch(&self, _: &str, _: &Cgroup) -> std::io::Result<()> {
        Ok(())
    }

    fn check(&self, _: &str) {}

    fn unwatch(&self, _: &str) {}
}

struct FakeExecutors(Arc<Fake>);

impl Executors for FakeExecutors {
    fn executor(&self, _: &Settings) -> Result<Arc<dyn Executor>> {
        Ok(self.0.clone())
    }
}

/// A table on the fake executor, its events recorded (no containerd to send them to).
struct World {
    table: Arc<Table>,
    events: Arc<Publisher>,
    fake: Arc<Fake>,
    dir: TempDir,
}

impl World {
    fn new() -> World {
        let events = Publisher::start(None, "test", std::env::temp_dir());
        let oom = Arc::new(NoOom);
        let fake = Arc::new(Fake::default());
        let executors = Arc::new(FakeExecutors(fake.clone()));
        let table = Table::new("test", executors, reaper::tests::shared(), events.clone(), oom);
        World { table, events, fake, dir: tempfile::tempdir().unwrap() }
    }

    /// Creates container `id` whose init runs `args`.
    fn create(&self, id: &str, args: &[&str]) -> u32 {
        self.create_from(id, args, None)
    }

    /// [`World::create`], restored from the checkpoint image `checkpoint` when given.
    fn create_from(&self, id: &str, args: &[&str], checkpoint: Option<PathBuf>) -> u32 {
        let bundle: PathBuf = self.dir.path().join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let config = serde_json::json!({
            "root": {"path": "rootfs"},
            "process": {"args": args},
            "linux": {"namespaces": [{"type": "pid"}]},
        });
        std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let req = CreateRequest {
            id: id.into(),
            bundle,
            rootfs: Vec::new(),
            stdio: StdioSpec::default(),
            options: None,
            checkpoint,
        };
        block_on(self.table.create(req)).unwrap_or_else(|e| panic!("create {id}: {e}"))
    }

    /// Registers exec `exec_id` of `id` running `args`.
    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<()> {
        let spec = serde_json::json!({"args": args}).to_string().into_bytes();
        self.table.exec(id, exec_id, spec, StdioSpec::default())
    }

    /// (topic, the event's text) of every event so far.
    fn events(&self) -> Vec<(String, String)> {
        self.events.recorded_since(0).into_iter().map(|r| (r.topic.clone(), r.text())).collect()
    }

    /// The topics of the events that name `needle` (a container or exec id, quoted).
    fn topics_of(&self, needle: &str) -> Vec<String> {
        let quoted = format!("\"{needle}\"");
        self.events().into_iter().filter(|(_, text)| text.contains(&quoted)).map(|(topic, _)| topic).collect()
    }

    /// Wait on the loop, bounded: the exit code, or None if it did not come in `limit`.
    fn wait_within(&self, id: &str, exec_id: &str, limit: Duration) -> Option<u32> {
        let (tx, rx) = mpsc::channel();
        let (table, id, exec_id) = (self.table.clone(), id.to_string(), exec_id.to_string());
        crate::rt::spawn(async move {
            let _ = tx.send(table.wait(&id, &exec_id).await.map(|e| e.code));
        });
        rx.recv_timeout(limit).ok().map(|r| r.expect("Wait"))
    }

    /// Kills and deletes whatever is left of container `id`.
    fn remove(&self, id: &str) {
        let _ = block_on(self.table.kill(id, "", libc::SIGKILL as u32, true));
        let _ = self.wait_within(id, "", Duration::from_secs(10));
        block_on(self.table.delete(id, "")).unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }
}

impl Drop for World {
    /// Leaves no process behind, also when a test fails half-way.
    fn drop(&mut self) {
        if let Some((_, door)) = self.fake.held_exec.lock().unwrap().take() {
            door.set(false);
        }
        for pid in self.fake.pids.lock().unwrap().values().flatten() {
            // SAFETY: signalling a child this test started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_container_is_announced_created_started_exited_deleted_in_that_order() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    block_on(w.table.kill("c1", "", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("c1", "", 10 * SECOND), Some(137));
    let info = block_on(w.table.delete("c1", "")).unwrap();
    assert_eq!(info.code, 137);
    assert_eq!(w.topics_of("c1"), ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]);
}

#[test]
fn an_init_that_dies_before_its_start_is_created_before_it_exits() {
    let w = World::new();
    // `true` is gone before the table even watches it.
    w.create("c1", &["true"]);
    assert_eq!(w.wait_within("c1", "", 10 * SECOND), Some(0));
    assert_eq!(w.topics_of("c1"), ["/tasks/create", "/tasks/exit"]);
    assert_eq!(block_on(w.table.start("c1", "")).unwrap_err().code(), Code::FAILED_PRECONDITION);
    block_on(w.table.delete("c1", "")).unwrap();
}

#[test]
fn an_exec_that_exits_while_it_starts_is_reported_after_its_start() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    w.exec("c1", "e1", &["sh", "-c", "exit 3"]).unwrap();
    block_on(w.table.start("c1", "e1")).unwrap();
    assert_eq!(w.wait_within("c1", "e1", 10 * SECOND), Some(3));
    assert_eq!(w.topics_of("e1"), ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]);
    w.remove("c1");
}

#[test]
fn the_inits_exit_is_reported_after_its_execs_exits() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    w.exec("c1", "e1", &["sleep", "1000"]).unwrap();
    block_on(w.table.start("c1", "e1")).unwrap();
    // The fake's kill without `all` reaches the init alone.
    block_on(w.table.kill("c1", "", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("c1", "", SECOND / 2), None, "held back while e1 runs");
    assert_eq!(w.table.state("c1", "").unwrap().status.enum_value(), Ok(tether_protos::api::Status::RUNNING));
    block_on(w.table.kill("c1", "e1", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("c1", "", 10 * SECOND), Some(137));
    let exits: Vec<String> = w
        .events()
        .into_iter()
        .filter(|(topic, _)| topic == "/tasks/exit")
        .map(|(_, text)| if text.contains("\"e1\"") { "e1".into() } else { "c1".into() })
        .collect();
    assert_eq!(exits, ["e1", "c1"]);
    block_on(w.table.delete("c1", "")).unwrap();
}

#[test]
fn delete_of_an_exec_waits_for_its_start_and_leaves_nothing_unknown() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    let door = Arc::new(Door::default());
    door.set(true);
    *w.fake.held_exec.lock().unwrap() = Some(("c1".into(), door.clone()));
    w.exec("c1", "e1", &["sleep", "1000"]).unwrap();
    let table = w.table.clone();
    // On the loop, as the service runs it: the held runtime call holds no thread.
    let starting = crate::rt::spawn(async move { table.start("c1", "e1").await });
    thread::sleep(SECOND / 5);
    // containerd's Delete when an ExecSync deadline passes, while `runc exec` still runs.
    let (tx, rx) = mpsc::channel();
    let table = w.table.clone();
    crate::rt::spawn(async move { tx.send(table.delete("c1", "e1").await.map(|_| ()).map_err(|e| e.code())).unwrap() });
    assert!(rx.recv_timeout(SECOND / 2).is_err(), "Delete waits for the Start in flight");
    door.set(false);
    let pid = block_on(starting).unwrap().expect("the exec started");
    assert_eq!(rx.recv_timeout(10 * SECOND).unwrap(), Err(Code::FAILED_PRECONDITION), "a running exec stays");
    assert_eq!(w.table.state("c1", "e1").unwrap().pid, pid, "the shim knows the process it started");
    block_on(w.table.kill("c1", "e1", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("c1", "e1", 10 * SECOND), Some(137));
    block_on(w.table.delete("c1", "e1")).unwrap();
    w.remove("c1");
}

#[test]
fn an_exit_that_is_not_its_processs_is_not_taken() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    w.exec("c1", "e1", &["sleep", "1000"]).unwrap();
    block_on(w.table.start("c1", "e1")).unwrap();
    // The exit of an earlier process under the same exec id, as after a Delete and a reuse.
    let stale = Exit { pid: i32::MAX, status: 0, at: SystemTime::now(), reaped: Instant::now() };
    w.table.exit_arrived("c1", "e1", stale);
    assert_eq!(w.wait_within("c1", "e1", SECOND / 2), None);
    assert_eq!(w.table.state("c1", "e1").unwrap().status.enum_value(), Ok(tether_protos::api::Status::RUNNING));
    block_on(w.table.kill("c1", "e1", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("c1", "e1", 10 * SECOND), Some(137));
    w.remove("c1");
}

#[test]
fn a_stalled_runtime_call_on_one_container_holds_back_no_exit_of_another() {
    let w = World::new();
    w.create("a", &["sleep", "1000"]);
    block_on(w.table.start("a", "")).unwrap();
    w.create("b", &["sleep", "1000"]);
    block_on(w.table.start("b", "")).unwrap();
    let door = Arc::new(Door::default());
    door.set(true);
    *w.fake.held_exec.lock().unwrap() = Some(("a".into(), door.clone()));
    w.exec("a", "slow", &["sleep", "1000"]).unwrap();
    let table = w.table.clone();
    // Held on the loop, which goes on serving exits meanwhile.
    let stalled = crate::rt::spawn(async move { table.start("a", "slow").await });
    thread::sleep(SECOND / 5);
    // An exit of `a` while its exec is stuck in the runtime, then one of `b`.
    block_on(w.table.kill("a", "", libc::SIGKILL as u32, false)).unwrap();
    thread::sleep(SECOND / 5);
    block_on(w.table.kill("b", "", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("b", "", 2 * SECOND), Some(137), "b's exit did not wait for a's exec");
    assert!(w.topics_of("b").contains(&"/tasks/exit".to_string()));
    door.set(false);
    block_on(stalled).unwrap().expect("a's exec started once the runtime answered");
    block_on(w.table.delete("b", "")).unwrap();
    block_on(w.table.kill("a", "slow", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("a", "", 10 * SECOND), Some(137), "a's init exit, after its exec's");
    block_on(w.table.delete("a", "")).unwrap();
}

#[test]
fn a_paused_container_takes_no_exec() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    block_on(w.table.pause("c1")).unwrap();
    let err = w.exec("c1", "e1", &["true"]).unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION, "{err}");
    assert!(w.topics_of("e1").is_empty(), "no /tasks/exec-added for a refused exec");
    assert_eq!(
        block_on(w.table.delete("c1", "")).unwrap_err().code(),
        Code::FAILED_PRECONDITION,
        "a paused init stays"
    );
    block_on(w.table.resume("c1")).unwrap();
    assert_eq!(w.topics_of("c1"), ["/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed"]);
    w.remove("c1");
}

#[test]
fn kill_after_the_exit_is_not_found_and_all_still_reaches_the_cgroup() {
    let w = World::new();
    w.create("c1", &["sleep", "1000"]);
    block_on(w.table.start("c1", "")).unwrap();
    block_on(w.table.kill("c1", "", libc::SIGKILL as u32, false)).unwrap();
    assert_eq!(w.wait_within("c1", "", 10 * SECOND), Some(137));
    assert_eq!(block_on(w.table.kill("c1", "", libc::SIGTERM as u32, false)).unwrap_err().code(), Code::NOT_FOUND);
    block_on(w.table.kill("c1", "", libc::SIGKILL as u32, true)).expect("Kill all after the init's exit");
    assert!(!w.table.is_empty());
    assert_eq!(w.table.state("c1", "").unwrap().status.enum_value(), Ok(tether_protos::api::Status::STOPPED));
    block_on(w.table.delete("c1", "")).unwrap();
    assert!(w.table.is_empty(), "Shutdown may end the shim now");
    assert_eq!(w.table.state("c1", "").unwrap_err().code(), Code::NOT_FOUND);
}

#[test]
fn a_restored_container_that_exits_at_once_is_started_before_it_exits() {
    let w = World::new();
    // Restored, its process runs (and here ends) before containerd's Start.
    w.create_from("c1", &["true"], Some(w.dir.path().join("image")));
    assert_eq!(w.wait_within("c1", "", SECOND / 2), None, "no exit before the Start that announces the process");
    block_on(w.table.start("c1", "")).unwrap();
    assert_eq!(w.wait_within("c1", "", 10 * SECOND), Some(0));
    assert_eq!(w.topics_of("c1"), ["/tasks/create", "/tasks/start", "/tasks/exit"]);
    block_on(w.table.delete("c1", "")).unwrap();
}
