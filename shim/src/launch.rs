//! The short-lived subcommands containerd runs: `start` (spawn or find the serving shim and
//! print its address) and `delete` (clean up after a shim that died).

use std::{
    fs,
    io::Write,
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use tether_protos::{api, protobuf::Message};

use crate::{
    bundle::{self, read_init_pid},
    cli::Args,
    config::Settings,
    error::{Error, Result},
    events::timestamp,
    journal, mount,
};

/// Annotations that group containers into one shim (one shim per pod), in order of precedence.
const GROUP_ANNOTATIONS: [&str; 2] = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];

/// The bundle: `-bundle`, else the working directory containerd started us in.
pub fn bundle_dir(args: &Args) -> Result<PathBuf> {
    match &args.bundle {
        Some(b) => Ok(b.clone()),
        None => std::env::current_dir().map_err(|e| Error::io("cannot read the working directory", e)),
    }
}

/// The key that names the shim serving this container: a group annotation in config.json,
/// else the container id.
pub fn grouping(bundle: &Path, id: &str) -> String {
    let spec: Option<serde_json::Value> =
        fs::read(bundle.join(bundle::CONFIG)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let annotations = spec.as_ref().and_then(|s| s.get("annotations"));
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|key| annotations?.get(*key)?.as_str().filter(|v| !v.is_empty()))
        .unwrap_or(id)
        .to_string()
}

/// The socket path of a `unix://` address (a bare path stays as it is).
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: finds the live shim of this container's group or spawns one, writes the bundle's
/// `address` file and returns what to print: the address in the form the caller reads.
pub fn start(args: &Args) -> Result<Vec<u8>> {
    let caller = crate::bootstrap::Caller::of_this_process(&args.id, &args.namespace);
    let params = caller.params();
    let bundle = bundle_dir(args)?;
    let group = grouping(&bundle, &args.id);
    let mut address = containerd_shim::socket_address(&args.address, &args.namespace, &group);
    // containerd 2.3+ may name the socket's directory; the name stays the group's hash.
    if let Some(dir) = params.and_then(|p| p.socket_dir.as_deref()).filter(|d| !d.is_empty()) {
        let name = Path::new(socket_path(&address)).file_name().map(PathBuf::from).unwrap_or_default();
        address = format!("unix://{}", Path::new(dir).join(name).display());
    }
    let path = socket_path(&address);

    let listener = if UnixStream::connect(path).is_ok() {
        // A shim for this group serves already (another container of the pod).
        None
    } else {
        let _ = fs::remove_file(path);
        if let Some(dir) = Path::new(path).parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        // Created 0600 from the start (start is single-threaded, so the umask is ours alone):
        // no moment in which another user could connect.
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(umask);
        let l = bound.map_err(|e| Error::io(format!("binding {path}"), e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("restricting {path}"), e))?;
        Some(l)
    };

    if let Some(listener) = listener {
        let exe = std::env::current_exe().map_err(|e| Error::io("finding the shim binary", e))?;
        let mut cmd = Command::new(exe);
        cmd.current_dir(&bundle)
            .args(["-namespace", &args.namespace, "-id", &args.id, "-address", &args.address])
            .args(["-publish-binary", &args.publish_binary, "-socket", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if args.debug || caller.wants_debug() {
            cmd.arg("-debug");
        }
        // 2.3+ says where events go in the params (the environment variable is deprecated).
        if let Some(ttrpc) = params.map(|p| p.containerd_ttrpc_address.as_str()).filter(|a| !a.is_empty()) {
            cmd.env("TTRPC_ADDRESS", ttrpc);
        }
        cmd.arg("serve");
        let listener_fd = std::os::fd::OwnedFd::from(listener);
        let passed =
            crate::sys::pass_fds(&mut cmd, &[&listener_fd]).map_err(|e| Error::io("passing the listener", e))?;
        // SAFETY: setsid is async-signal-safe; the serving shim must outlive containerd's
        // process group and session.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| Error::io("spawning the serving shim", e))?;
        drop(passed);
    }
    fs::write(bundle.join(bundle::ADDRESS), &address).map_err(|e| Error::io("writing the address file", e))?;
    caller.reply(&address)
}

/// `delete`: the shim is gone; force-delete the container through the executor it used,
/// unmount its rootfs, remove the dead shim's socket and return the DeleteResponse containerd
/// expects on stdout: the init's exit from the shim's exit journal, else SIGKILL's (the
/// runtime just killed it).
pub fn delete(args: &Args) -> Result<Vec<u8>> {
    let bundle = bundle_dir(args)?;
    // The settings are written before the executor creates anything and removed once the
    // shim deleted the container: without them there is nothing for an executor to remove
    // (containerd runs `delete` after every shim exit, a clean one too).
    match fs::read(bundle.join(bundle::SETTINGS)) {
        Err(_) => log::debug!("{}: no executor settings in the bundle; nothing to force-delete", args.id),
        Ok(bytes) => {
            let settings = serde_json::from_slice::<Settings>(&bytes).unwrap_or_else(|e| {
                log::warn!("{}: unreadable {} ({e}); force-deleting with the defaults", args.id, bundle::SETTINGS);
                Settings::defaults(&args.namespace)
            });
            let deleted = settings.standalone_executor().and_then(|executor| {
                // This process has no loop: a runtime of its one thread drives the call (the
                // native executor clones this process, which must keep a single thread).
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("making an event loop for the delete", e))?;
                Ok(runtime.block_on(executor.delete(&args.id, true))?)
            });
            if let Err(e) = deleted {
                log::warn!("force-deleting {}: {e}", args.id);
            }
        }
    }
    mount::unmount(&bundle.join("rootfs"));
    // A sandbox's bundle: the pod's shm, which only a clean ShutdownSandbox unmounts.
    crate::sandbox::files::release(&bundle);
    remove_dead_socket(&bundle);
    let pid = read_init_pid(&bundle);
    let (exit_status, exited_at) = journal::read(&bundle)
        .into_iter()
        .find(|e| e.id == args.id && e.pid == pid)
        .map(|e| (e.code, e.at()))
        .unwrap_or((128 + libc::SIGKILL as u32, SystemTime::now()));
    let resp =
        api::DeleteResponse { pid, exit_status, exited_at: Some(timestamp(exited_at)).into(), ..Default::default() };
    resp.write_to_bytes().map_err(|e| Error::encoding("the DeleteResponse", e))
}

/// Removes the socket named by the bundle's address file if no shim listens on it any more
/// (a killed shim cannot remove it itself).
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = fs::read_to_string(bundle.join(bundle::ADDRESS)) else { return };
    let path = socket_path(address.trim());
    if let Err(e) = UnixStream::connect(path) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            let _ = fs::remove_file(path);
        }
    }
}

/// Writes `bytes` to stdout in full.
pub fn print(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| Error::io("writing stdout", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_prefers_annotations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "c1");
        fs::write(dir.path().join("config.json"), r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#)
            .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "pod1");
        fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.containerd.runc.v2.group":"g"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "g");
    }
}
