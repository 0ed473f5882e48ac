//! `tether-ctl run BUNDLE`: a shim of its own and no containerd. The shim is launched exactly
//! as containerd launches it (`start` in the bundle), but with no events address, so it
//! records its events instead of publishing them (`--events` prints them here). The bundle's
//! container runs with this terminal's stdio, gets our signals, and its exit status is ours.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    thread,
};

use tether_protos::{
    api,
    protobuf::{well_known_types::any::Any, Message},
    runtimeoptions, type_urls,
};

use crate::{
    attach::{self, Copiers, Fifos, RawTerminal},
    shim::{ctx, Shim},
    Opts,
};

use crate::{CtlError, Result};

/// The "containerd address" a standalone shim is started with: only its socket's name is
/// derived from it (no containerd is ever dialled).
const STANDALONE_ADDRESS: &str = "/run/tether/standalone";
/// The shim binary's name, looked up next to tether-ctl and then on PATH.
const SHIM_BINARY: &str = "containerd-shim-tether-v2";

/// The bundle's OCI spec as JSON.
pub fn read_spec(bundle: &Path) -> Result<serde_json::Value> {
    let file = bundle.join("config.json");
    let text = fs::read(&file).map_err(|e| CtlError::io(format!("{}", file.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| CtlError::io(format!("{}", file.display()), e.into()))
}

/// The shim binary: beside this tool, else on PATH.
fn shim_binary() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join(SHIM_BINARY)));
    beside.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(SHIM_BINARY))
}

/// Runs the bundle named in `o` (see the module docs); returns the container's exit status.
pub fn run(o: Opts, json: bool) -> Result<u8> {
    let bundle = o.words.first().ok_or_else(|| CtlError::Usage("run needs a bundle directory".into()))?;
    let bundle = fs::canonicalize(bundle).map_err(|e| CtlError::io(format!("bundle {bundle}"), e))?;
    let spec = read_spec(&bundle)?;
    let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
    let id = o
        .value("--id")
        .unwrap_or_else(|| bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let namespace = o.value("--namespace").or(o.value("-n")).unwrap_or_else(|| "tether".into());
    let detach = o.has("--detach") || o.has("-d");

    // The shim's log goes to BUNDLE/log, as a file (containerd would read it as a FIFO).
    let log = bundle.join("log");
    fs::write(&log, b"").map_err(|e| CtlError::io(format!("creating {}", log.display()), e))?;
    let mut start = Command::new(shim_binary());
    start
        .args(["-namespace", &namespace, "-id", &id, "-address", STANDALONE_ADDRESS, "-publish-binary", ""])
        .args(o.has("--debug").then_some("-debug"))
        .arg("start")
        .current_dir(&bundle)
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = start.output().map_err(|e| CtlError::io(format!("starting {}", shim_binary().display()), e))?;
    if !out.status.success() {
        return Err(CtlError::Call {
            call: "start".into(),
            message: format!("the shim's start failed ({})", out.status),
        });
    }
    let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let shim = Arc::new(Shim::connect(&address)?);

    let fifos = if detach { None } else { Some(Fifos::new(terminal)?) };
    let (stdin, stdout, stderr) = fifos.as_ref().map(Fifos::uris).unwrap_or_default();
    let options = o.value("--config").map(|path| {
        let opts = runtimeoptions::Options { config_path: path, ..Default::default() };
        Any {
            type_url: type_urls::RUNTIME_OPTIONS.into(),
            value: opts.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        }
    });
    let create = api::CreateTaskRequest {
        id: id.clone(),
        bundle: bundle.display().to_string(),
        terminal,
        stdin,
        stdout,
        stderr,
        options: options.into(),
        ..Default::default()
    };
    if let Err(e) = shim.task.create(ctx(), &create) {
        shutdown_if_idle(&shim);
        return Err(CtlError::call("create", e));
    }
    if o.has("--events") {
        let s = shim.clone();
        thread::spawn(move || crate::follow_events(&s, json, |line| eprintln!("event: {line}")));
    }
    let Some(fifos) = fifos else {
        let pid = start_task(&shim, &id, "")?;
        println!("started {id} (pid {pid}); its shim serves at {}", shim.address);
        return Ok(0);
    };
    let code = attached(&shim, &id, "", &fifos, terminal)?;
    if o.has("--keep") {
        eprintln!("tether-ctl: {id} exited with {code}; its shim keeps serving at {}", shim.address);
        return Ok(code);
    }
    let delete = api::DeleteRequest { id, ..Default::default() };
    shim.task.delete(ctx(), &delete).map_err(|e| CtlError::call("delete", e))?;
    shutdown_if_idle(&shim);
    Ok(code)
}

fn start_task(shim: &Shim, id: &str, exec_id: &str) -> Result<u32> {
    let req = api::StartRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
    shim.task.start(ctx(), &req).map(|r| r.pid).map_err(|e| CtlError::call("start", e))
}

/// Starts a created process with our stdio attached through `fifos` and waits for its exit;
/// returns its status (as an exit code).
pub fn attached(shim: &Arc<Shim>, id: &str, exec_id: &str, fifos: &Fifos, terminal: bool) -> Result<u8> {
    let copiers = Copiers::start(fifos)?;
    let raw = terminal.then(RawTerminal::enter);
    attach::forward_signals(shim.clone(), id, exec_id, terminal)?;
    start_task(shim, id, exec_id)?;
    Copiers::feed_stdin(fifos, shim.clone(), id, exec_id)?;
    if terminal {
        attach::resize(shim, id, exec_id);
    }
    let code = attach::wait(shim, id, exec_id);
    copiers.finish();
    drop(raw);
    code.map(|c| c.min(255) as u8)
}

/// Asks the shim to exit if it serves nothing any more (it refuses otherwise).
pub fn shutdown_if_idle(shim: &Shim) {
    let _ = shim.task.shutdown(ctx(), &api::ShutdownRequest::default());
}
