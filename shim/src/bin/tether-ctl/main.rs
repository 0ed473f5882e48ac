//! `tether-ctl`: what is this shim doing, and why. Finds a live tether shim (by its address,
//! a task's bundle, or a namespace and task id) and talks to it over ttrpc as containerd does,
//! plus tether's debug service; or runs a bundle with a shim of its own and no containerd.
//!
//! Human-readable output by default, `--json` for scripts. See `tether-ctl --help`.

mod attach;
mod shim;
mod standalone;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use protobuf_json_mapping::print_to_string;
use tether_protos::{
    api, cgroups, cgroups_v2,
    debug::{DumpRequest, EventsRequest},
    protobuf::{well_known_types::any::Any, Message, MessageDyn},
    runc_options::ProcessDetails,
};
use tether_shim::debug::{render, render_event};

use crate::shim::{ctx, no_timeout, Shim, Target, CONTAINERD_STATE};

const USAGE: &str = "\
usage: tether-ctl [SHIM] [--json] COMMAND [ARGS]

SHIM (which shim to talk to; default: the task's, found in containerd's state dir):
  --address ADDR        the shim's socket (unix:///run/containerd/s/...)
  --bundle DIR          a task's bundle (it holds the shim's address file)
  -n, --namespace NS    the task's containerd namespace (default: default)
  --state-dir DIR       containerd's task state dir (default: /run/containerd/io.containerd.runtime.v2.task)

COMMAND:
  state ID [--exec-id E]                    a process's status, pid, exit status and stdio
  pids ID                                   the container's processes
  stats ID                                  the container's cgroup metrics
  kill ID [--exec-id E] [--all] [-s SIG]    send a signal (default SIGTERM)
  exec ID [--exec-id E] [-t] -- CMD...      run CMD in the container with this terminal's stdio
  wait ID [--exec-id E]                     wait for the exit; exit with its status
  delete ID [--exec-id E]                   delete a stopped process (and end an idle shim)
  events [ID]                               follow the shim's events
  dump [ID]                                 the shim's state: processes, stdio, queued events, fds
  run [--id ID] [--config FILE] [--namespace NS] [--keep] [--detach] [--events] [--debug] BUNDLE
                                            run a bundle with a shim of its own, no containerd
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| matches!(a.as_str(), "-h" | "--help" | "help")) {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tether-ctl: {e}");
            ExitCode::from(125)
        }
    }
}

/// Why a tether-ctl command failed: one line for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The shim could not be found or reached, or answered a call with an error.
    #[error("{call}: {message}")]
    Call { call: String, message: String },
    /// A local resource (a FIFO, a file, a child process) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CtlError {
    /// The shim's answer to `call` was the error `e`.
    pub fn call(call: &str, e: tether_protos::ttrpc::Error) -> CtlError {
        CtlError::Call { call: call.into(), message: shim::describe(e) }
    }

    /// `source` failed while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> CtlError {
        CtlError::Io { context: context.into(), source }
    }
}

/// Result of a tether-ctl step.
pub type Result<T> = std::result::Result<T, CtlError>;

/// The parsed command line.
struct Cli {
    target: Target,
    json: bool,
    command: String,
    rest: Vec<String>,
}

fn parse(args: Vec<String>) -> Result<Cli> {
    let mut target = Target { namespace: "default".into(), state_dir: CONTAINERD_STATE.into(), ..Default::default() };
    let mut json = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| CtlError::Usage(format!("{name} needs a value")));
        match arg.as_str() {
            "--address" | "-a" => target.address = Some(value(&arg)?),
            "--bundle" => target.bundle = Some(value(&arg)?.into()),
            "--namespace" | "-n" => target.namespace = value(&arg)?,
            "--state-dir" => target.state_dir = value(&arg)?.into(),
            "--json" => json = true,
            _ if arg.starts_with('-') => return Err(CtlError::Usage(format!("unknown option {arg}\n{USAGE}"))),
            _ => return Ok(Cli { target, json, command: arg, rest: it.collect() }),
        }
    }
    Err(CtlError::Usage(USAGE.trim_end().to_string()))
}

/// A command's own options: `--exec-id E`, flags, and the positional words.
#[derive(Default)]
struct Opts {
    exec_id: String,
    signal: Option<String>,
    flags: Vec<String>,
    words: Vec<String>,
}

fn options(rest: Vec<String>, with_value: &[&str]) -> Result<Opts> {
    let mut o = Opts::default();
    let mut it = rest.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            o.words.extend(it.by_ref());
            break;
        }
        if with_value.contains(&arg.as_str()) {
            let v = it.next().ok_or_else(|| CtlError::Usage(format!("{arg} needs a value")))?;
            match arg.as_str() {
                "--exec-id" => o.exec_id = v,
                "-s" | "--signal" => o.signal = Some(v),
                _ => o.flags.push(format!("{arg}={v}")),
            }
        } else if arg.starts_with('-') {
            o.flags.push(arg);
        } else {
            o.words.push(arg);
        }
    }
    Ok(o)
}

impl Opts {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn value(&self, flag: &str) -> Option<String> {
        self.flags.iter().find_map(|f| f.strip_prefix(&format!("{flag}=")).map(String::from))
    }

    fn id(&self) -> Result<String> {
        self.words.first().cloned().ok_or_else(|| CtlError::Usage("a task id is needed".into()))
    }
}

fn json_of(m: &dyn MessageDyn) -> Result<String> {
    print_to_string(m).map_err(|e| CtlError::io("encoding JSON", std::io::Error::other(e)))
}

fn run(args: Vec<String>) -> Result<u8> {
    let cli = parse(args)?;
    if cli.command == "run" {
        return standalone::run(options(cli.rest, &["--id", "--config", "--namespace", "-n"])?, cli.json);
    }
    let o = options(cli.rest, &["--exec-id", "-s", "--signal"])?;
    let id = o.words.first().map(String::as_str);
    let shim = Arc::new(Shim::connect(&cli.target.address(id)?)?);
    match cli.command.as_str() {
        "state" => state(&shim, &o.id()?, &o.exec_id, cli.json),
        "pids" => pids(&shim, &o.id()?, cli.json),
        "stats" => stats(&shim, &o.id()?, cli.json),
        "kill" => {
            let signal = parse_signal(o.signal.as_deref().unwrap_or("SIGTERM"))?;
            let req = api::KillRequest {
                id: o.id()?,
                exec_id: o.exec_id.clone(),
                signal,
                all: o.has("--all"),
                ..Default::default()
            };
            shim.task.kill(ctx(), &req).map_err(|e| CtlError::call("kill", e))?;
            Ok(0)
        }
        "exec" => exec(shim, &o),
        "wait" => {
            let code = attach::wait(&shim, &o.id()?, &o.exec_id)?;
            if cli.json {
                println!("{{\"exitStatus\":{code}}}");
            } else {
                println!("exit status {code}");
            }
            Ok(code.min(255) as u8)
        }
        "delete" => {
            let req = api::DeleteRequest { id: o.id()?, exec_id: o.exec_id.clone(), ..Default::default() };
            let resp = shim.task.delete(ctx(), &req).map_err(|e| CtlError::call("delete", e))?;
            if o.exec_id.is_empty() {
                standalone::shutdown_if_idle(&shim);
            }
            println!("deleted (exit status {})", resp.exit_status);
            Ok(0)
        }
        "events" => follow_events(&shim, cli.json, |line| println!("{line}")),
        "dump" => {
            let dump = shim.debug.dump(ctx(), &DumpRequest::new()).map_err(|e| CtlError::call("dump", e))?;
            if cli.json {
                println!("{}", json_of(&dump)?);
            } else {
                print!("{}", render(&dump));
            }
            Ok(0)
        }
        other => Err(CtlError::Usage(format!("unknown command {other:?}\n{USAGE}"))),
    }
}

fn state(shim: &Shim, id: &str, exec_id: &str, json: bool) -> Result<u8> {
    let req = api::StateRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
    let s = shim.task.state(ctx(), &req).map_err(|e| CtlError::call("state", e))?;
    if json {
        println!("{}", json_of(&s)?);
        return Ok(0);
    }
    let status = format!("{:?}", s.status.enum_value_or_default());
    println!("{}: {status}, pid {}", if exec_id.is_empty() { id } else { exec_id }, s.pid);
    if s.exited_at.is_some() {
        println!("  exit status {}", s.exit_status);
    }
    println!("  bundle {}", s.bundle);
    println!("  stdin {:?}, stdout {:?}, stderr {:?}, terminal {}", s.stdin, s.stdout, s.stderr, s.terminal);
    Ok(0)
}

fn pids(shim: &Shim, id: &str, json: bool) -> Result<u8> {
    let req = api::PidsRequest { id: id.into(), ..Default::default() };
    let resp = shim.task.pids(ctx(), &req).map_err(|e| CtlError::call("pids", e))?;
    if json {
        let rows: Vec<String> =
            resp.processes.iter().map(|p| format!("{{\"pid\":{},\"execId\":{:?}}}", p.pid, exec_id_of(p))).collect();
        println!("[{}]", rows.join(","));
        return Ok(0);
    }
    for p in &resp.processes {
        match exec_id_of(p) {
            e if e.is_empty() => println!("{}", p.pid),
            e => println!("{} exec {e}", p.pid),
        }
    }
    Ok(0)
}

fn exec_id_of(p: &api::ProcessInfo) -> String {
    p.info.as_ref().and_then(|a| ProcessDetails::parse_from_bytes(&a.value).ok()).map(|d| d.exec_id).unwrap_or_default()
}

fn stats(shim: &Shim, id: &str, json: bool) -> Result<u8> {
    let req = api::StatsRequest { id: id.into(), ..Default::default() };
    let resp = shim.task.stats(ctx(), &req).map_err(|e| CtlError::call("stats", e))?;
    let any: &Any = resp
        .stats
        .as_ref()
        .ok_or_else(|| CtlError::Call { call: "stats".into(), message: "the shim sent no metrics".into() })?;
    let metrics: Box<dyn MessageDyn> = if any.type_url.ends_with("cgroups.v2.Metrics") {
        Box::new(
            cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
                .map_err(|e| CtlError::io("decoding the metrics", std::io::Error::other(e)))?,
        )
    } else {
        Box::new(
            cgroups::metrics::Metrics::parse_from_bytes(&any.value)
                .map_err(|e| CtlError::io("decoding the metrics", std::io::Error::other(e)))?,
        )
    };
    if json {
        println!("{}", json_of(metrics.as_ref())?);
    } else {
        print!("{}", tether_protos::protobuf::text_format::print_to_string_pretty(metrics.as_ref()));
    }
    Ok(0)
}

/// Follows the shim's events, calling `line` with each (rendered, or JSON with `json`),
/// until the shim goes away.
fn follow_events(shim: &Shim, json: bool, mut line: impl FnMut(String)) -> Result<u8> {
    let mut after = 0;
    loop {
        let req = EventsRequest { after, wait_ms: 10_000, ..Default::default() };
        let resp = shim.debug.events(no_timeout(), &req).map_err(|e| CtlError::call("events", e))?;
        for e in &resp.events {
            line(if json { json_of(e)? } else { render_event(e) });
            after = e.seq;
        }
    }
}

fn exec(shim: Arc<Shim>, o: &Opts) -> Result<u8> {
    let id = o.id()?;
    let cmd = &o.words[1..];
    if cmd.is_empty() {
        return Err(CtlError::Usage("exec needs a command: tether-ctl exec ID -- CMD...".into()));
    }
    let terminal = o.has("-t") || o.has("--tty");
    let exec_id = if o.exec_id.is_empty() { format!("tether-ctl-{}", std::process::id()) } else { o.exec_id.clone() };
    // The container's own process settings (env, cwd, user), running `cmd`.
    let state = shim
        .task
        .state(ctx(), &api::StateRequest { id: id.clone(), ..Default::default() })
        .map_err(|e| CtlError::call("state", e))?;
    let spec = standalone::read_spec(&PathBuf::from(&state.bundle))?;
    let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = terminal.into();
    let fifos = attach::Fifos::new(terminal)?;
    let (stdin, stdout, stderr) = fifos.uris();
    let req = api::ExecProcessRequest {
        id: id.clone(),
        exec_id: exec_id.clone(),
        terminal,
        stdin,
        stdout,
        stderr,
        spec: Some(Any {
            type_url: tether_protos::type_urls::OCI_PROCESS.into(),
            value: process.to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    shim.task.exec(ctx(), &req).map_err(|e| CtlError::call("exec", e))?;
    let code = standalone::attached(&shim, &id, &exec_id, &fifos, terminal);
    let delete = api::DeleteRequest { id, exec_id, ..Default::default() };
    let _ = shim.task.delete(ctx(), &delete);
    code
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
fn parse_signal(s: &str) -> Result<u32> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    let name = s.to_uppercase();
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as u32)
        .map_err(|_| CtlError::Usage(format!("unknown signal {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("sigkill").unwrap(), 9);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn options_split_flags_values_and_words() {
        let o = options(
            ["--exec-id", "e1", "--all", "c1", "--", "sh", "-c", "x"].map(String::from).to_vec(),
            &["--exec-id"],
        )
        .unwrap();
        assert_eq!(o.exec_id, "e1");
        assert!(o.has("--all"));
        assert_eq!(o.words, ["c1", "sh", "-c", "x"]);
        let cli = parse(["-n", "k8s.io", "--json", "state", "c1"].map(String::from).to_vec()).unwrap();
        assert_eq!(cli.target.namespace, "k8s.io");
        assert!(cli.json);
        assert_eq!(cli.command, "state");
        assert!(cli
            .target
            .address(Some("c1"))
            .unwrap_err()
            .to_string()
            .contains("/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/address"));
    }
}
