//! `ctr` against the private containerd: every call is bounded in time, and its output parsed
//! where the scenarios need it (task list, process list, events).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, Output, Proc};

/// How long one ordinary `ctr` call may take before it is killed and reported.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// `ctr --address SOCK -n NAMESPACE ...`.
#[derive(Clone, Debug)]
pub struct Ctr {
    /// The ctr of the containerd's own generation ([`crate::Daemon::ctr`]).
    pub binary: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
    /// Where ctr makes its FIFOs (never the default /run/containerd/fifo).
    pub fifo_dir: PathBuf,
    pub timeout: Duration,
}

/// One row of `ctr task ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub pid: u32,
    /// RUNNING, STOPPED, PAUSED, CREATED, ...
    pub status: String,
}

/// One row of `ctr task ps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PsRow {
    pub pid: u32,
    /// `-` for the init process; for the Go shim `&ProcessDetails{ExecID:ID,...}` for execs.
    pub info: String,
}

impl Ctr {
    pub fn new(binary: &Path, address: &Path, namespace: &str, fifo_dir: &Path) -> Ctr {
        Ctr {
            binary: binary.to_path_buf(),
            address: address.to_path_buf(),
            namespace: namespace.to_owned(),
            fifo_dir: fifo_dir.to_path_buf(),
            timeout: CTR_TIMEOUT,
        }
    }

    /// The same, in another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Ctr {
        Ctr { namespace: namespace.to_owned(), ..self.clone() }
    }

    /// The full argv (without the program) for `args`.
    pub fn argv<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        let mut v = vec![
            "--address".to_owned(),
            self.address.display().to_string(),
            "--namespace".to_owned(),
            self.namespace.clone(),
        ];
        v.extend(args.iter().map(|a| a.as_ref().to_owned()));
        v
    }

    /// A `Command` for `ctr ARGS` (not started).
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.argv(args));
        cmd
    }

    /// Runs `ctr ARGS` with stdin at /dev/null.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Output {
        process::run(self.command(args), None, self.timeout)
    }

    /// Runs `ctr ARGS` with a longer deadline.
    pub fn run_for<S: AsRef<str>>(&self, args: &[S], timeout: Duration) -> Output {
        process::run(self.command(args), None, timeout)
    }

    /// Runs `ctr ARGS` with `input` on stdin, then EOF.
    pub fn run_input<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> Output {
        process::run(self.command(args), Some(input), self.timeout)
    }

    /// Starts `ctr ARGS` in the background with a piped stdin.
    pub fn spawn<S: AsRef<str>>(&self, args: &[S]) -> Proc {
        Proc::spawn(self.command(args), true)
    }

    /// Runs `ctr ARGS` on a pseudo-terminal of `cols`×`rows` (through util-linux `script`),
    /// as a user at a terminal would. Output has `\r\n` line ends; the status is ctr's.
    pub fn run_on_tty<S: AsRef<str>>(&self, args: &[S], cols: u16, rows: u16) -> Output {
        let argv: Vec<String> = std::iter::once(self.binary.display().to_string()).chain(self.argv(args)).collect();
        process::run_on_tty(&argv, cols, rows, self.timeout)
    }

    // ---- tasks -----------------------------------------------------------------------------

    /// `ctr task ls`, parsed.
    pub fn tasks(&self) -> Vec<TaskRow> {
        let out = self.run(&["task", "ls"]);
        out.expect_ok();
        parse_task_ls(&out.stdout)
    }

    /// The row of `id` in `ctr task ls`.
    pub fn task(&self, id: &str) -> Option<TaskRow> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// The status of task `id` (RUNNING, STOPPED, PAUSED...), None if there is no such task.
    pub fn status(&self, id: &str) -> Option<String> {
        self.task(id).map(|t| t.status)
    }

    /// Waits until task `id` has `status` (at most `timeout`); panics with the last listing.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> TaskRow {
        let mut last = Vec::new();
        process::wait_until(timeout, || {
            last = self.tasks();
            last.iter().find(|t| t.id == id && t.status == status).cloned()
        })
        .unwrap_or_else(|| panic!("task {id} did not reach {status} within {timeout:?}; last `ctr task ls`: {last:?}"))
    }

    /// Waits until task `id` is no longer listed.
    #[track_caller]
    pub fn wait_gone(&self, id: &str, timeout: Duration) {
        let mut last = Vec::new();
        process::wait_until(timeout, || {
            last = self.tasks();
            (!last.iter().any(|t| t.id == id)).then_some(())
        })
        .unwrap_or_else(|| panic!("task {id} still listed after {timeout:?}: {last:?}"));
    }

    /// `ctr task ps ID`, parsed.
    pub fn ps(&self, id: &str) -> Vec<PsRow> {
        let out = self.run(&["task", "ps", id]);
        out.expect_ok();
        parse_ps(&out.stdout)
    }

    /// `ctr task exec --exec-id EXEC_ID ID CMD...` (stdin /dev/null): its status is the
    /// process's exit status.
    pub fn exec<S: AsRef<str>>(&self, id: &str, exec_id: &str, cmd: &[S]) -> Output {
        self.run(&self.exec_args(&[], id, exec_id, cmd))
    }

    /// The ctr arguments for an exec, with extra `flags` (e.g. `-t`, `-d`).
    pub fn exec_args<S: AsRef<str>>(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[S]) -> Vec<String> {
        let mut args: Vec<String> = vec!["task".into(), "exec".into(), "--fifo-dir".into()];
        args.push(self.fifo_dir.display().to_string());
        args.extend(flags.iter().map(|s| s.to_string()));
        args.extend(["--exec-id".to_owned(), exec_id.to_owned(), id.to_owned()]);
        args.extend(cmd.iter().map(|s| s.as_ref().to_owned()));
        args
    }

    /// `ctr task kill [-s SIGNAL] [--all] ID`.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Output {
        let mut args = vec!["task", "kill", "-s", signal];
        if all {
            args.push("--all");
        }
        args.push(id);
        self.run(&args)
    }

    /// `ctr task rm ID` for a stopped task: the exit status it reported, parsed from ctr's
    /// warning "task ID exit with non-zero exit code N" (0 when there is none). Panics if the
    /// delete fails.
    #[track_caller]
    pub fn rm_task(&self, id: &str) -> i32 {
        let out = self.run(&["task", "rm", id]);
        out.expect_ok();
        exit_code_from_rm(id, &out.stderr)
    }

    /// `ctr container rm ID`.
    pub fn rm_container(&self, id: &str) -> Output {
        self.run(&["container", "rm", id])
    }

    /// `ctr container ls -q`.
    pub fn containers(&self) -> Vec<String> {
        let out = self.run(&["container", "ls", "-q"]);
        out.expect_ok();
        words(&out.stdout)
    }

    /// `ctr namespaces ls -q`.
    pub fn namespaces(&self) -> Vec<String> {
        let out = self.run(&["namespaces", "ls", "-q"]);
        if !out.ok() {
            return Vec::new();
        }
        words(&out.stdout)
    }

    /// Best-effort removal of every task and container in this namespace (for teardown):
    /// resume paused tasks, SIGKILL everything, force-delete tasks, delete containers.
    pub fn remove_everything(&self) {
        let short = Ctr { timeout: Duration::from_secs(20), ..self.clone() };
        let Some(tasks) = short.run(&["task", "ls"]).ok_output().map(|o| parse_task_ls(&o.stdout)) else {
            return;
        };
        for t in &tasks {
            if t.status == "PAUSED" {
                short.run(&["task", "resume", &t.id]);
            }
            if t.status != "STOPPED" {
                short.run(&["task", "kill", "-s", "SIGKILL", "--all", &t.id]);
                short.run(&["task", "kill", "-s", "SIGKILL", &t.id]);
            }
        }
        for t in &tasks {
            process::wait_until(Duration::from_secs(5), || {
                let rows = short.run(&["task", "ls"]).ok_output().map(|o| parse_task_ls(&o.stdout))?;
                (!rows.iter().any(|r| r.id == t.id && r.status != "STOPPED")).then_some(())
            });
            short.run(&["task", "rm", "-f", &t.id]);
        }
        if let Some(out) = short.run(&["container", "ls", "-q"]).ok_output() {
            for id in out.stdout.split_whitespace() {
                // A task the listing missed (e.g. one whose shim just came back) goes first.
                short.run(&["task", "rm", "-f", id]);
                short.run(&["container", "rm", id]);
            }
        }
    }

    // ---- events ----------------------------------------------------------------------------

    /// Starts `ctr events` and returns once it is subscribed (it has seen a probe event).
    pub fn subscribe(&self) -> Events {
        let proc = self.spawn(&["events"]);
        let events = Events { proc, namespace: self.namespace.clone() };
        // ctr prints nothing when it is subscribed: provoke events until one shows up.
        let _ = self.run(&["namespaces", "create", &self.namespace]);
        let subscribed = process::wait_until(Duration::from_secs(15), || {
            let _ = self.run(&["namespaces", "label", &self.namespace, "tether-test-probe=1"]);
            std::thread::sleep(Duration::from_millis(100));
            events.all().iter().any(|e| e.topic.starts_with("/namespaces/")).then_some(())
        });
        assert!(subscribed.is_some(), "ctr events saw no event within 15 s: {}", events.proc.stderr_so_far());
        events
    }
}

/// A running `ctr events`.
pub struct Events {
    proc: Proc,
    namespace: String,
}

/// One line of `ctr events`: `DATE TIME ZONE UTC NAMESPACE TOPIC JSON`.
#[derive(Clone, Debug)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub payload: serde_json::Value,
}

impl Event {
    /// A string field of the payload ("" if absent).
    pub fn str(&self, key: &str) -> &str {
        self.payload.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }

    /// `exit_status` (absent means 0: protobuf's JSON leaves out zero values).
    pub fn exit_status(&self) -> u64 {
        self.payload.get("exit_status").and_then(|v| v.as_u64()).unwrap_or(0)
    }
}

impl Events {
    /// Every event seen so far, in all namespaces.
    pub fn all(&self) -> Vec<Event> {
        self.proc.stdout_so_far().lines().filter_map(parse_event).collect()
    }

    /// The task events (`/tasks/...`) of container `id` in this namespace.
    pub fn for_container(&self, id: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.namespace == self.namespace && e.topic.starts_with("/tasks/") && e.str("container_id") == id)
            .collect()
    }

    /// Waits until `pred` holds for the events of container `id`; returns them.
    #[track_caller]
    pub fn wait_for(&self, id: &str, timeout: Duration, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let mut last = Vec::new();
        let got = process::wait_until(timeout, || {
            last = self.for_container(id);
            pred(&last).then(|| last.clone())
        });
        got.unwrap_or_else(|| {
            panic!(
                "events of {id} did not match within {timeout:?}; seen:\n{}",
                last.iter().map(|e| format!("  {} {}", e.topic, e.payload)).collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// The raw output so far (for messages).
    pub fn raw(&self) -> String {
        self.proc.stdout_so_far()
    }
}

fn parse_event(line: &str) -> Option<Event> {
    let mut parts = line.splitn(7, ' ');
    let (_date, _time, _zone, _utc) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let namespace = parts.next()?.to_owned();
    let topic = parts.next()?.to_owned();
    if !topic.starts_with('/') {
        return None;
    }
    let payload = parts.next().and_then(|j| serde_json::from_str(j).ok()).unwrap_or(serde_json::Value::Null);
    Some(Event { namespace, topic, payload })
}

trait OkOutput {
    fn ok_output(self) -> Option<Output>;
}

impl OkOutput for Output {
    fn ok_output(self) -> Option<Output> {
        self.ok().then_some(self)
    }
}

/// Parses `ctr task ls` (header `TASK PID STATUS`).
pub fn parse_task_ls(text: &str) -> Vec<TaskRow> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("TASK"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(TaskRow { id: f.next()?.to_owned(), pid: f.next()?.parse().ok()?, status: f.next()?.to_owned() })
        })
        .collect()
}

/// Parses `ctr task ps` (header `PID INFO`).
pub fn parse_ps(text: &str) -> Vec<PsRow> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .skip(1)
        .filter_map(|l| {
            let l = l.trim();
            let (pid, info) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            Some(PsRow { pid: pid.parse().ok()?, info: info.trim().to_owned() })
        })
        .collect()
}

/// ctr's `task rm` reports a non-zero exit status only as a warning on stderr:
/// `... msg="task ID exit with non-zero exit code N"`.
pub fn exit_code_from_rm(id: &str, stderr: &str) -> i32 {
    let needle = format!("task {id} exit with non-zero exit code ");
    stderr
        .lines()
        .find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
        })
        .unwrap_or(0)
}

/// The non-empty lines of a `ls -q` listing, trimmed.
fn words(listing: &str) -> Vec<String> {
    listing.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_ls() {
        let text = "TASK    PID     STATUS    \nc1      5301    RUNNING\nc2      0       STOPPED\n";
        let rows = parse_task_ls(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], TaskRow { id: "c1".into(), pid: 5301, status: "RUNNING".into() });
        assert_eq!(rows[1].status, "STOPPED");
        assert!(parse_task_ls("TASK    PID    STATUS    \n").is_empty());
    }

    #[test]
    fn parses_ps() {
        let text = "PID      INFO\n12352    -\n12385    &ProcessDetails{ExecID:x,XXX_unrecognized:[],}\n";
        let rows = parse_ps(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].info, "-");
        assert!(rows[1].info.contains("ExecID:x"));
    }

    #[test]
    fn parses_rm_warning() {
        let err = "time=\"2026-11-23T12:14:39Z\" level=warning msg=\"task c1 exit with non-zero exit code 7\"\n";
        assert_eq!(exit_code_from_rm("c1", err), 7);
        assert_eq!(exit_code_from_rm("c", err), 0);
        assert_eq!(exit_code_from_rm("c1", ""), 0);
    }

    #[test]
    fn parses_events() {
        let line = "2026-11-23 12:14:49.323 +0000 UTC t2 /tasks/exit {\"container_id\":\"f1\",\"id\":\"f1\",\"pid\":5962,\"exit_status\":3}";
        let e = parse_event(line).unwrap();
        assert_eq!(e.namespace, "t2");
        assert_eq!(e.topic, "/tasks/exit");
        assert_eq!(e.str("container_id"), "f1");
        assert_eq!(e.exit_status(), 3);
    }
}
