//! tether's debug service (`tether.debug.v1.Debug`, defined in protos/proto/debug.proto),
//! served on the shim's socket next to the task API and so as restricted as it is: `Dump`,
//! the shim's whole state, and `Events`, a long poll over the events it recorded. The same
//! dump, rendered by [`render`], is what SIGUSR1 writes to the shim's log and what
//! `tether-ctl dump` prints.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tether_protos::{
    debug::{DumpRequest, DumpResponse, Event, EventsRequest, EventsResponse, Process},
    debug_ttrpc::{create_debug, Debug},
    topics,
    ttrpc::{self, MethodHandler, TtrpcContext},
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

    /// The ttrpc method table.
    pub fn methods(self: Arc<Self>) -> std::collections::HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
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
        let containers = self.table.dump();
        let journal = containers.iter().flat_map(|c| journal::read(Path::new(&c.bundle)).into_iter().map(|e| journaled(&c.id, &e))).collect();
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

impl Debug for DebugService {
    fn dump(&self, _: &TtrpcContext, _: DumpRequest) -> ttrpc::Result<DumpResponse> {
        Ok(self.dump_now())
    }

    fn events(&self, _: &TtrpcContext, req: EventsRequest) -> ttrpc::Result<EventsResponse> {
        let wait = Duration::from_millis(req.wait_ms.into()).min(MAX_EVENTS_WAIT);
        let events = self.events.recorded_after(req.after, wait).iter().map(event).collect();
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
    let exit = if p.exited { format!(", exit status {} at {}", p.exit_status, time_of(p.exited_at_unix_nanos)) } else { String::new() };
    let _ = writeln!(out, "  {name}: pid {}, {}{exit}", p.pid, p.status);
    if let Some(s) = p.stdio.as_ref() {
        let stream = |path: &str, bytes: u64| if path.is_empty() { "-".to_string() } else { format!("{path} ({bytes} bytes)") };
        let _ = writeln!(
            out,
            "    stdin {}, stdout {}, stderr {}{}",
            stream(&s.stdin, s.stdin_bytes),
            stream(&s.stdout, s.stdout_bytes),
            stream(&s.stderr, s.stderr_bytes),
            if s.terminal { ", terminal" } else { "" }
        );
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
            "0 -> /dev/null",
        ] {
            assert!(text.contains(needle), "{needle:?} in:\n{text}");
        }
    }
}
