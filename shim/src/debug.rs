//! tether's debug service (`tether.debug.v1.Debug`, defined in protos/proto/debug.proto),
//! served on the shim's socket next to the task API and so as restricted as it is: `Dump`,
//! the shim's whole state, and `Events`, a long poll over the events it recorded. The same
//! dump, rendered by [`render`], is what SIGUSR1 writes to the shim's log and what
//! `tether-ctl dump` prints.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt::Write as _,
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tether_protos::{
    debug::{Container, DumpRequest, DumpResponse, Event, EventsRequest, EventsResponse, OutputHolder, Process},
    debug_ttrpc::{create_debug, Debug},
    topics,
    ttrpc::{self, r#async::TtrpcContext},
};

use crate::{
    events::{Publisher, Recorded},
    journal,
    logger::rfc3339,
    process::{unix_nanos, Table},
};

/// The longest a follower's `Events` call is held open.
const MAX_EVENTS_WAIT: Duration = Duration::from_secs(30);

/// The debug service of one shim.
pub struct DebugService {
    table: Arc<Table>,
    events: Arc<Publisher>,
    namespace: String,
    started: Instant,
}

impl DebugService {
    pub fn new(table: Arc<Table>, events: Arc<Publisher>, namespace: &str) -> Self {
        DebugService { table, events, namespace: namespace.to_string(), started: Instant::now() }
    }

    /// The ttrpc service, for the shim's async server.
    pub fn service(self: Arc<Self>) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        create_debug(self)
    }

    /// The shim's state now.
    pub fn dump_now(&self) -> DumpResponse {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let mut containers = self.table.dump();
        // Outside the table's lock: a walk of /proc takes a while on a busy node.
        add_output_holders(&mut containers, std::process::id());
        let journal = containers
            .iter()
            .flat_map(|c| journal::read(Path::new(&c.bundle)).into_iter().map(|e| journaled(&c.id, &e)))
            .collect();
        DumpResponse {
            pid: std::process::id(),
            namespace: self.namespace.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            containers,
            journal,
            pending_events: self.events.undelivered().iter().map(event).collect(),
            open_fds: open_fds(),
            threads: field("Threads:") as u32,
            rss_kib: field("VmRSS:"),
            ..Default::default()
        }
    }
}

fn event(r: &Recorded) -> Event {
    Event {
        seq: r.seq,
        topic: r.topic.clone(),
        timestamp_unix_nanos: unix_nanos(r.at),
        text: r.text(),
        delivered: r.delivered,
        ..Default::default()
    }
}

/// A journaled exit, shown as the /tasks/exit event it waits to be delivered as.
fn journaled(container: &str, e: &journal::Entry) -> Event {
    Event {
        topic: topics::TASK_EXIT_EVENT_TOPIC.into(),
        timestamp_unix_nanos: unix_nanos(e.at()),
        text: format!("container_id: {container:?} id: {:?} pid: {} exit_status: {}", e.id, e.pid, e.code),
        ..Default::default()
    }
}

/// `fd -> target` for each of this process's open descriptors.
fn open_fds() -> Vec<String> {
    let mut fds: Vec<(u32, String)> = fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    fds.sort();
    fds.into_iter().map(|(fd, target)| format!("{fd} -> {target}")).collect()
}

/// Adds to each exited process the processes other than `shim` that still hold a write end
/// of its stdout or stderr pipe.
fn add_output_holders(containers: &mut [Container], shim: u32) {
    let streams = |p: &Process| {
        let s = p.stdio.as_ref().cloned().unwrap_or_default();
        [("stdout", s.stdout_pipe), ("stderr", s.stderr_pipe)].into_iter().filter(|(_, inode)| *inode != 0)
    };
    let exited =
        |c: &Container| c.init.as_ref().into_iter().chain(&c.execs).filter(|p| p.exited).cloned().collect::<Vec<_>>();
    let wanted: HashSet<u64> = containers
        .iter()
        .flat_map(exited)
        .flat_map(|p| streams(&p).map(|(_, inode)| inode).collect::<Vec<_>>())
        .collect();
    if wanted.is_empty() {
        return;
    }
    let writers = pipe_writers(&wanted, shim);
    for c in containers {
        for p in c.init.as_mut().into_iter().chain(c.execs.iter_mut()).filter(|p| p.exited) {
            let mut held: BTreeMap<i32, Vec<String>> = BTreeMap::new();
            for (stream, inode) in streams(p) {
                for pid in writers.get(&inode).into_iter().flatten() {
                    held.entry(*pid).or_default().push(stream.to_string());
                }
            }
            p.output_holders = held
                .into_iter()
                .map(|(pid, streams)| OutputHolder { pid, command: command_of(pid), streams, ..Default::default() })
                .collect();
        }
    }
}

/// For each pipe inode of `inodes`, the processes other than `skip` that hold it open for
/// writing: found by their `/proc/PID/fd` links (`pipe:[INODE]`) and the access mode in
/// `/proc/PID/fdinfo`. Processes that end during the walk are left out.
fn pipe_writers(inodes: &HashSet<u64>, skip: u32) -> BTreeMap<u64, BTreeSet<i32>> {
    let mut found: BTreeMap<u64, BTreeSet<i32>> = BTreeMap::new();
    let pids = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids.filter(|pid| *pid != skip) {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let inode = target.to_str().and_then(|t| t.strip_prefix("pipe:[")?.strip_suffix(']')?.parse::<u64>().ok());
            let Some(inode) = inode.filter(|i| inodes.contains(i)) else { continue };
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
            let flags =
                info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
            if flags.is_some_and(|f| f as i32 & libc::O_ACCMODE != libc::O_RDONLY) {
                found.entry(inode).or_default().insert(pid as i32);
            }
        }
    }
    found
}

/// A process's command line, or its name when it has none (a kernel thread, a zombie).
fn command_of(pid: i32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    if words.is_empty() {
        fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_string()).unwrap_or_default()
    } else {
        words.join(" ")
    }
}

#[async_trait::async_trait]
impl Debug for DebugService {
    async fn dump(&self, _: &TtrpcContext, _: DumpRequest) -> ttrpc::Result<DumpResponse> {
        // On the loop, as SIGUSR1's dump: the one slow part, a walk of every process's fds,
        // happens only on this request and only while an exited process's output is still
        // held open by another (milliseconds; tens of them on a node with thousands of
        // processes).
        Ok(self.dump_now())
    }

    async fn events(&self, _: &TtrpcContext, req: EventsRequest) -> ttrpc::Result<EventsResponse> {
        let wait = Duration::from_millis(req.wait_ms.into()).min(MAX_EVENTS_WAIT);
        let events = self.events.recorded_after(req.after, wait).await.iter().map(event).collect();
        Ok(EventsResponse { events, ..Default::default() })
    }
}

/// A time given as Unix nanoseconds, for people.
pub fn time_of(nanos: i64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64))
}

/// One line for an event: `seq time topic fields`.
pub fn render_event(e: &Event) -> String {
    format!("{:>5} {} {} {}", e.seq, time_of(e.timestamp_unix_nanos), e.topic, e.text.trim())
}

/// The dump for people, one fact per line.
pub fn render(d: &DumpResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shim pid {} (tether {}), namespace {}, up {}s, {} threads, {} KiB RSS",
        d.pid, d.version, d.namespace, d.uptime_seconds, d.threads, d.rss_kib
    );
    if d.containers.is_empty() {
        let _ = writeln!(out, "no containers");
    }
    for c in &d.containers {
        let _ = writeln!(out, "container {}", c.id);
        let _ = writeln!(out, "  bundle    {}", c.bundle);
        let _ = writeln!(out, "  executor  {}", c.executor);
        let _ = writeln!(out, "  cgroup    {}", if c.cgroup.is_empty() { "(unknown)" } else { &c.cgroup });
        for p in c.init.as_ref().into_iter().chain(&c.execs) {
            render_process(&mut out, p);
        }
    }
    let _ = writeln!(out, "events not yet delivered: {}", d.pending_events.len());
    for e in &d.pending_events {
        let _ = writeln!(out, "  {}", render_event(e));
    }
    let _ = writeln!(out, "exit journal: {}", d.journal.len());
    for e in &d.journal {
        let _ = writeln!(out, "  {}", render_event(e));
    }
    let _ = writeln!(out, "open fds: {}", d.open_fds.len());
    for fd in &d.open_fds {
        let _ = writeln!(out, "  {fd}");
    }
    out
}

fn render_process(out: &mut String, p: &Process) {
    let name = if p.exec_id.is_empty() { "init".to_string() } else { format!("exec {}", p.exec_id) };
    let exit = if p.exited {
        format!(", exit status {} at {}", p.exit_status, time_of(p.exited_at_unix_nanos))
    } else {
        String::new()
    };
    let _ = writeln!(out, "  {name}: pid {}, {}{exit}", p.pid, p.status);
    if let Some(s) = p.stdio.as_ref() {
        let stream =
            |path: &str, bytes: u64| if path.is_empty() { "-".to_string() } else { format!("{path} ({bytes} bytes)") };
        let _ = writeln!(
            out,
            "    stdin {}, stdout {}, stderr {}{}",
            stream(&s.stdin, s.stdin_bytes),
            stream(&s.stdout, s.stdout_bytes),
            stream(&s.stderr, s.stderr_bytes),
            if s.terminal { ", terminal" } else { "" }
        );
    }
    for h in &p.output_holders {
        let _ = writeln!(out, "    output held open by: {} ({}) on {}", h.pid, h.command, h.streams.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use tether_protos::debug::{Container, Stdio};

    use super::*;

    #[test]
    fn render_names_every_process_and_stream() {
        let exited = Process {
            exec_id: "e1".into(),
            pid: 43,
            status: "stopped".into(),
            exited: true,
            exit_status: 3,
            exited_at_unix_nanos: 1_700_000_000_000_000_000,
            output_holders: vec![OutputHolder {
                pid: 1234,
                command: "sleep 1000".into(),
                streams: vec!["stdout".into(), "stderr".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let init = Process {
            pid: 42,
            status: "running".into(),
            stdio: Some(Stdio { stdout: "/fifo/out".into(), stdout_bytes: 12, ..Default::default() }).into(),
            ..Default::default()
        };
        let dump = DumpResponse {
            pid: 7,
            namespace: "ns".into(),
            containers: vec![Container {
                id: "c1".into(),
                executor: "libcontainer".into(),
                init: Some(init).into(),
                execs: vec![exited],
                ..Default::default()
            }],
            open_fds: vec!["0 -> /dev/null".into()],
            ..Default::default()
        };
        let text = render(&dump);
        for needle in [
            "shim pid 7",
            "container c1",
            "executor  libcontainer",
            "init: pid 42, running",
            "stdout /fifo/out (12 bytes)",
            "exec e1: pid 43, stopped, exit status 3 at 2023-11-14T22:13:20",
            "output held open by: 1234 (sleep 1000) on stdout, stderr",
            "0 -> /dev/null",
        ] {
            assert!(text.contains(needle), "{needle:?} in:\n{text}");
        }
    }

    /// A child that got the write end of a pipe and keeps it after this process closed its own
    /// copy is found, with its command; the read end (ours) and other pipes are not.
    #[test]
    fn holders_of_an_exited_process_output_are_found() {
        use std::os::fd::AsRawFd;

        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let inode = nix::sys::stat::fstat(&r).unwrap().st_ino;
        let mut child =
            std::process::Command::new("sleep").arg("30").stdout(std::process::Stdio::from(w)).spawn().unwrap();
        let pid = child.id() as i32;
        let mut exited = Process { exec_id: "e1".into(), exited: true, ..Default::default() };
        exited.stdio = Some(Stdio { stdout_pipe: inode, ..Default::default() }).into();
        let running = Process { pid: 5, stdio: exited.stdio.clone(), ..Default::default() };
        let mut containers =
            vec![Container { id: "c1".into(), init: Some(running).into(), execs: vec![exited], ..Default::default() }];
        // Our read end is skipped as the shim's own would be: the skip is this process.
        add_output_holders(&mut containers, std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        let holders = &containers[0].execs[0].output_holders;
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!((holders[0].pid, holders[0].command.as_str()), (pid, "sleep 30"));
        assert_eq!(holders[0].streams, ["stdout"]);
        assert!(containers[0].init.output_holders.is_empty(), "a running process's holders are not looked for");
        // A read end alone holds no output open: with the writer gone, nobody is named.
        let again = pipe_writers(&HashSet::from([inode]), std::process::id());
        assert!(again.is_empty(), "{again:?} (read end fd {})", r.as_raw_fd());
    }
}
