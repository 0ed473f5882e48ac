//! The libcontainer calls that fork: creating a container, starting it (poststart hooks),
//! exec, delete (poststop hooks) and checkpoint. They run in a process of their own (see
//! [`super::helper`]) and answer with a [`Reply`].

use std::{
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use libcontainer::{
    container::{builder::ContainerBuilder, Container, ContainerStatus},
    error::LibcontainerError,
    syscall::syscall::SyscallType,
};

use oci_spec::runtime::{Process, Spec};

use super::{
    hierarchies::Cgroups,
    payload::{ExecPlan, Payload},
    propagation::{self, Propagation},
    wire::{Failure, Op, Reply, Request},
};

/// Carries out `req` with the container process's streams `stdio` (stdin, stdout, stderr;
/// ignored when a console socket gives the process a terminal instead).
pub fn run(req: Request, stdio: [OwnedFd; 3]) -> Reply {
    let op = req.op.name();
    execute(req, stdio).map_err(|e| classify(op, &e))
}

fn execute(req: Request, stdio: [OwnedFd; 3]) -> Result<i32, LibcontainerError> {
    let dir = req.root.join(&req.id);
    match req.op {
        Op::Create { bundle, pid_file, console_socket, no_pivot_root } => {
            // A spec that cannot be read is left to libcontainer to report.
            let spec = Spec::load(bundle.join("config.json")).ok();
            let plan = spec.as_ref().map(|spec| Propagation::of(spec, &bundle)).unwrap_or_default();
            let cgroups = match &spec {
                Some(spec) => cgroups_of(spec, &req.id)?,
                None => Cgroups::default(),
            };
            // A spec libcontainer must read in place of the bundle's goes to a bundle of its
            // own beside the containers' state, for the moment of the create.
            let own_bundle = match &plan.spec {
                Some(spec) => Some(own_bundle(&req.root, &req.id, spec)?),
                None => None,
            };
            let built = inside(&cgroups, || {
                builder(&req.id, &req.root, &pid_file, console_socket.as_deref(), stdio)?
                    .with_executor(Payload::for_init())
                    .as_init(own_bundle.as_ref().unwrap_or(&bundle))
                    .with_systemd(req.systemd_cgroup)
                    .with_detach(true)
                    .with_no_pivot(no_pivot_root)
                    .build()
            });
            if let Some(dir) = &own_bundle {
                let _ = fs::remove_dir_all(dir);
            }
            let mut container = match built {
                Ok(container) => container,
                // That container is another create's.
                Err(err @ LibcontainerError::Exist) => return Err(err),
                Err(err) => {
                    // libcontainer has removed the rest of what it made, and waited for its
                    // processes to leave; the failure is the create's, not this cleanup's.
                    let _ = cgroups.remove(Instant::now());
                    return Err(err);
                }
            };
            if own_bundle.is_some() {
                container.state.bundle = fs::canonicalize(&bundle).map_err(LibcontainerError::OtherIO)?;
                container.save()?;
            }
            let pid = container.pid().map_or(0, |p| p.as_raw());
            if !plan.mounts.is_empty() {
                if let Err(err) = propagation::apply(pid, &plan.mounts) {
                    let _ = delete(&dir, true);
                    return Err(LibcontainerError::Other(format!("failed to prepare rootfs: {err}")));
                }
            }
            Ok(pid)
        }
        Op::Exec { process_spec, pid_file, console_socket } => {
            let spec = Spec::load(Container::load(dir.clone())?.bundle().join("config.json"))?;
            let plan = exec_plan(&spec, &process_spec)?;
            let cgroups = cgroups_of(&spec, &req.id)?;
            // libcontainer reads the process spec from a file: a changed one goes next to
            // the container's state, for the moment of the call.
            let changed = plan.changed.then(|| dir.join(format!("tether-exec-{}.json", std::process::id())));
            if let Some(path) = &changed {
                let text = serde_json::to_vec(&plan.process).map_err(LibcontainerError::OtherSerialization)?;
                fs::write(path, text).map_err(LibcontainerError::OtherIO)?;
            }
            let built = inside(&cgroups, || {
                builder(&req.id, &req.root, &pid_file, console_socket.as_deref(), stdio)?
                    .with_executor(plan.payload)
                    .as_tenant()
                    .with_detach(true)
                    .with_process(Some(changed.as_ref().unwrap_or(&process_spec)))
                    .build()
            });
            if let Some(path) = &changed {
                let _ = fs::remove_file(path);
            }
            Ok(built?.as_raw())
        }
        Op::Start => Container::load(dir)?.start().map(|()| 0),
        Op::Delete { force } => delete(&dir, force).map(|()| 0),
        Op::Checkpoint(opts) => {
            let options = libcontainer::container::CheckpointOptions {
                ext_unix_sk: opts.criu.external_unix_sockets,
                file_locks: opts.criu.file_locks,
                image_path: opts.criu.image_path,
                leave_running: opts.leave_running,
                shell_job: opts.criu.terminal,
                tcp_established: opts.criu.open_tcp,
                work_path: Some(opts.criu.work_path),
                manage_cgroups_mode: match opts.criu.cgroups_mode.as_deref() {
                    Some("full") => rust_criu::CgMode::FULL,
                    Some("strict") => rust_criu::CgMode::STRICT,
                    Some("ignore") => rust_criu::CgMode::IGNORE,
                    _ => rust_criu::CgMode::SOFT,
                },
                link_remap: false,
            };
            Container::load(dir)?.checkpoint(&options).map(|()| 0)
        }
    }
}

/// Deletes the container whose state is in `dir`: what libcontainer made, then its cgroups in
/// the hierarchies libcontainer leaves alone.
fn delete(dir: &Path, force: bool) -> Result<(), LibcontainerError> {
    let patience = Instant::now() + FORCE_DELETE_PATIENCE;
    // Read before libcontainer removes the state that names them.
    let mut cgroups = None;
    loop {
        if !dir.exists() {
            break;
        }
        let mut container = Container::load(dir.to_path_buf())?;
        if cgroups.is_none() {
            // A create that died before libcontainer wrote the container's config made none.
            cgroups = Some(match container.spec() {
                Ok(config) => Cgroups::at(&config.cgroup_path)?,
                Err(_) => Cgroups::default(),
            });
        }
        if force && container.status() == ContainerStatus::Creating {
            // A create that died half way: libcontainer refuses to delete a container
            // it believes is still being created, and nothing of it can run.
            container.set_status(ContainerStatus::Stopped);
        }
        match container.delete(force) {
            // libcontainer gives the processes it just killed about 0.1 s to leave
            // the cgroup before it gives up removing it; a loaded machine needs longer.
            Err(_) if force && Instant::now() < patience => thread::sleep(FORCE_DELETE_RETRY),
            Err(err) => return Err(err),
            Ok(()) => break,
        }
    }
    cgroups.map_or(Ok(()), |c| c.remove(patience))
}

/// The cgroups of the container `id` of `spec` in the hierarchies libcontainer leaves alone:
/// at the cgroups path libcontainer gives its controllers.
fn cgroups_of(spec: &Spec, id: &str) -> Result<Cgroups, LibcontainerError> {
    let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    Cgroups::at(&libcontainer::utils::get_cgroup_path(&path, id))
}

/// Runs `build` (libcontainer's create or exec) with this process in `cgroups`, so that the
/// processes libcontainer clones from it start in them, and moves it back to its own cgroups
/// after (see [`super::hierarchies`]).
fn inside<T>(cgroups: &Cgroups, build: impl FnOnce() -> Result<T, LibcontainerError>) -> Result<T, LibcontainerError> {
    let own = cgroups.enter()?;
    let built = build();
    // A worker that stays in them only until it exits, a moment later, harms nothing; the
    // outcome is libcontainer's.
    let _ = own.join();
    built
}

/// Writes `spec` as the `config.json` of a bundle of its own for the container `id`, in the
/// state root `root`; returns the bundle's dir.
fn own_bundle(root: &Path, id: &str, spec: &Spec) -> Result<PathBuf, LibcontainerError> {
    let dir = root.join(format!(".tether-bundle-{id}"));
    fs::create_dir_all(&dir).map_err(LibcontainerError::OtherIO)?;
    spec.save(dir.join("config.json"))?;
    Ok(dir)
}

/// How a process exec'd in the container of `spec` must be started: the container's seccomp
/// profile, which libcontainer leaves out of an exec, goes to the payload (see
/// [`super::payload`]).
fn exec_plan(spec: &Spec, process_spec: &Path) -> Result<ExecPlan, LibcontainerError> {
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let text = fs::read(process_spec).map_err(LibcontainerError::OtherIO)?;
    let process: Process = serde_json::from_slice(&text).map_err(LibcontainerError::OtherSerialization)?;
    Ok(Payload::for_exec(process, seccomp))
}

/// The settings create and exec share: state root, pid file, and either a console socket
/// or the three streams.
fn builder(
    id: &str,
    root: &Path,
    pid_file: &Path,
    console_socket: Option<&Path>,
    [stdin, stdout, stderr]: [OwnedFd; 3],
) -> Result<ContainerBuilder, LibcontainerError> {
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(root)?
        .with_pid_file(Some(pid_file))?;
    Ok(match console_socket {
        Some(socket) => builder.with_console_socket(Some(socket)),
        None => builder.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr),
    })
}

/// How long a forced delete keeps trying while the killed processes leave the cgroup.
const FORCE_DELETE_PATIENCE: Duration = Duration::from_secs(10);
/// The pause between two tries.
const FORCE_DELETE_RETRY: Duration = Duration::from_millis(100);

/// How libcontainer's `ChannelError::ExecError` begins: the init could not exec the program.
const EXEC_FAILED: &str = "exec process failed with error";

/// Sorts a libcontainer error into a [`Failure`] class and one readable line that names the
/// step that failed (libcontainer's own messages, outermost first, without repeats).
pub fn classify(op: &str, err: &LibcontainerError) -> (Failure, String) {
    let failure = match err {
        LibcontainerError::NoDirectory => Failure::NotFound,
        LibcontainerError::IncorrectStatus(ContainerStatus::Stopped) if op == "kill" => Failure::NotRunning,
        LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_)
        | LibcontainerError::Spec(_)
        | LibcontainerError::InvalidInput(_) => Failure::BadSpec,
        // The container's program could not be exec'd. libcontainer wraps this in errors
        // that keep their cause only as text, so it is recognised by its words.
        _ if op != "checkpoint" && err.to_string().contains(EXEC_FAILED) => Failure::BadProcess,
        _ => Failure::Runtime,
    };
    let message = match err {
        // The only variant whose text is not in its message.
        LibcontainerError::InvalidInput(detail) => format!("invalid input: {detail}"),
        _ => describe(err),
    };
    (failure, message)
}

/// `err` and its sources as one line: each level's message once, skipping levels that only
/// repeat (or are contained in) the one above, and libcontainer's bare labels ("io error").
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        let text = text.trim();
        let known = parts.iter().any(|p| p.contains(text));
        if !text.is_empty() && !known && !is_bare_label(text) {
            parts.push(text.to_string());
        }
        next = e.source();
    }
    if parts.is_empty() {
        return err.to_string();
    }
    parts.join(": ")
}

/// libcontainer's catch-all variants say only which kind of error follows.
fn is_bare_label(text: &str) -> bool {
    matches!(text, "io error" | "syscall error" | "failed syscall" | "invalid input" | "oci spec error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct Layer {
        msg: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn chain(msgs: &[&'static str]) -> Layer {
        let mut layer: Option<Box<Layer>> = None;
        for msg in msgs.iter().rev() {
            layer = Some(Box::new(Layer { msg, source: layer }));
        }
        *layer.unwrap()
    }

    #[test]
    fn describe_keeps_each_step_once() {
        let err = chain(&["failed to prepare rootfs", "io error", "mount /x: No such file or directory"]);
        assert_eq!(describe(&err), "failed to prepare rootfs: mount /x: No such file or directory");
        let err = chain(&["exec failed: executable 'nope' not found in $PATH", "executable 'nope' not found in $PATH"]);
        assert_eq!(describe(&err), "exec failed: executable 'nope' not found in $PATH");
    }

    #[test]
    fn missing_state_is_not_found() {
        let (failure, message) = classify("start", &LibcontainerError::NoDirectory);
        assert_eq!(failure, Failure::NotFound);
        assert!(message.contains("does not exist"), "{message}");
        let exec = LibcontainerError::Other(format!("failed to create container: {EXEC_FAILED} error in executing process : executable 'nope' not found in $PATH"));
        assert_eq!(classify("create", &exec).0, Failure::BadProcess);
        let (failure, message) = classify("exec", &LibcontainerError::InvalidInput("bad root".into()));
        assert_eq!(failure, Failure::BadSpec);
        assert_eq!(message, "invalid input: bad root");
    }
}
