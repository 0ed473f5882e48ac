//! The pod's files. For a pause pod containerd's CRI plugin writes the pod's `/etc/hostname`,
//! `/etc/hosts` and `/etc/resolv.conf` and mounts one `/dev/shm` that all the pod's containers
//! share; for a shim sandbox it does none of that (measured: docs/sandbox.md). So the shim does
//! it as the CRI does: at StartSandbox it writes the files into the sandbox's bundle and mounts
//! the pod's shm there (a tmpfs), and at each Create of a container of the pod it binds them
//! into the container's spec, where the spec does not mount those paths itself (the kubelet
//! mounts its own `/etc/hosts`).
//!
//! The shm is the only mount: ShutdownSandbox unmounts it, and so does the `delete`
//! subcommand that containerd runs after a shim died (`launch::delete`, [`SHM`]).

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::mount::{mount, MsFlags};
use serde_json::{json, Value};

use super::pod::PodConfig;
use crate::{
    error::{Error, Result},
    mount::unmount,
};

/// The pod's shm, below the sandbox's bundle.
pub const SHM: &str = "shm";
/// Its size, as the CRI's for a pause pod (`defaultShmSize`).
const SHM_OPTIONS: &str = "mode=1777,size=65536k";
/// The annotation the CRI puts on each container of a pod: the pod's sandbox id.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation that tells a pod's containers from its sandbox (`container`, `sandbox`).
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The files of a pod, in order: where a container sees it, its name in the sandbox's bundle.
const FILES: [(&str, &str); 3] =
    [("/etc/hostname", "hostname"), ("/etc/hosts", "hosts"), ("/etc/resolv.conf", "resolv.conf")];

/// Writes the pod's files into `bundle` and mounts its shm there (unless the pod uses the
/// node's IPC namespace, whose `/dev/shm` the CRI leaves to the container). The hostname is
/// the pod's, else the node's; resolv.conf the pod's DNS settings, else the node's; hosts the
/// node's, as the CRI's.
pub fn make(bundle: &Path, pod: &PodConfig) -> Result<()> {
    // The pod's UTS namespace began as a copy of the node's: without a name of the pod's own,
    // it has the node's.
    let hostname = match pod.hostname.as_str() {
        "" => read("/proc/sys/kernel/hostname")?.trim().to_string(),
        name => name.to_string(),
    };
    let resolv = match &pod.dns {
        Some(dns) => dns.resolv_conf(),
        None => read("/etc/resolv.conf")?,
    };
    for ((_, name), text) in FILES.iter().zip([format!("{hostname}\n"), read("/etc/hosts")?, resolv]) {
        fs::write(bundle.join(name), text).map_err(|e| Error::io(format!("writing the pod's {name}"), e))?;
    }
    if !pod.own_ipc() {
        return Ok(());
    }
    let shm = bundle.join(SHM);
    fs::create_dir_all(&shm).map_err(|e| Error::io("making the pod's shm directory", e))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("shm"), &shm, Some("tmpfs"), flags, Some(SHM_OPTIONS))
        .map_err(|e| Error::io(format!("mounting the pod's shm at {}", shm.display()), e.into()))
}

/// Unmounts the pod's shm in `bundle`, if it is mounted.
pub fn release(bundle: &Path) {
    unmount(&bundle.join(SHM));
}

fn read(path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(format!("reading {path}"), e))
}

/// Binds the pod's files (from sandbox `sandbox_id`'s `bundle`) into the spec of a container
/// of that pod, in its own bundle's `config.json`: a path the spec mounts itself keeps its
/// mount, and the pod's shm replaces the container's own `/dev/shm` tmpfs. Specs of other
/// pods' containers, or of no pod, are left alone.
pub fn bind_into(container_bundle: &Path, sandbox_id: &str, bundle: &Path) -> Result<()> {
    let config = container_bundle.join("config.json");
    let text = fs::read(&config).map_err(|e| Error::io(format!("reading {}", config.display()), e))?;
    let mut spec: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("{}: not a JSON spec: {e}", config.display())))?;
    let annotation =
        |key: &str| spec.pointer(&format!("/annotations/{}", key.replace('/', "~1"))).and_then(Value::as_str);
    if annotation(SANDBOX_ID) != Some(sandbox_id) || annotation(CONTAINER_TYPE) == Some("sandbox") {
        return Ok(());
    }
    if add_mounts(&mut spec, bundle) {
        let text = serde_json::to_vec(&spec).map_err(|e| Error::encoding("the container's spec", e))?;
        fs::write(&config, text).map_err(|e| Error::io(format!("writing {}", config.display()), e))?;
    }
    Ok(())
}

/// Adds the pod's mounts to `spec`; whether it changed anything.
fn add_mounts(spec: &mut Value, bundle: &Path) -> bool {
    let readonly = spec.pointer("/root/readonly").and_then(Value::as_bool).unwrap_or(false);
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else { return false };
    let mounted = |mounts: &[Value], path: &str| mounts.iter().any(|m| m["destination"] == path);
    let mut changed = false;
    for (path, name) in FILES {
        let source = bundle.join(name);
        if !mounted(mounts, path) && source.exists() {
            mounts.push(bind(path, &source, readonly));
            changed = true;
        }
    }
    let shm = bundle.join(SHM);
    let own_shm = mounts.iter().position(|m| m["destination"] == "/dev/shm" && m["type"] == "tmpfs");
    if let Some(at) = own_shm.filter(|_| is_mountpoint(&shm)) {
        mounts[at] = bind("/dev/shm", &shm, false);
        changed = true;
    }
    changed
}

/// A bind mount as the CRI makes one for a pod's file.
fn bind(destination: &str, source: &PathBuf, readonly: bool) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", if readonly { "ro" } else { "rw" }],
    })
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(parent))) = (fs::metadata(path), path.parent().map(fs::metadata)) else { return false };
    here.dev() != parent.dev()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: Value) -> Value {
        json!({
            "root": {"path": "rootfs"},
            "annotations": annotations,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/etc-hosts", "options": ["rbind"]},
            ],
        })
    }

    #[test]
    fn a_pods_container_gets_its_files_but_keeps_its_own_mounts() {
        let dir = tempfile::tempdir().unwrap();
        for (_, name) in FILES {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        let mut s = spec(json!({SANDBOX_ID: "pod1", CONTAINER_TYPE: "container"}));
        assert!(add_mounts(&mut s, dir.path()));
        let mounts = s["mounts"].as_array().unwrap();
        let at = |path: &str| mounts.iter().filter(|m| m["destination"] == path).collect::<Vec<_>>();
        assert_eq!(at("/etc/hosts").len(), 1, "the kubelet's /etc/hosts stays");
        assert_eq!(at("/etc/hosts")[0]["source"], "/var/lib/kubelet/etc-hosts");
        for path in ["/etc/hostname", "/etc/resolv.conf"] {
            let m = at(path);
            assert_eq!(m.len(), 1, "{path}");
            assert_eq!(m[0]["type"], "bind");
            assert_eq!(m[0]["options"], json!(["rbind", "rprivate", "rw"]));
        }
        assert_eq!(at("/dev/shm")[0]["type"], "tmpfs", "no pod shm is mounted here: the container keeps its own");
    }

    #[test]
    fn only_containers_of_this_sandbox_are_changed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("hostname"), "x").unwrap();
        for annotations in
            [json!({}), json!({SANDBOX_ID: "other"}), json!({SANDBOX_ID: "pod1", CONTAINER_TYPE: "sandbox"})]
        {
            let bundle = tempfile::tempdir().unwrap();
            let text = spec(annotations).to_string();
            fs::write(bundle.path().join("config.json"), &text).unwrap();
            bind_into(bundle.path(), "pod1", dir.path()).unwrap();
            assert_eq!(fs::read_to_string(bundle.path().join("config.json")).unwrap(), text);
        }
    }

    #[test]
    fn a_read_only_root_gets_read_only_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("resolv.conf"), "x").unwrap();
        let mut s = spec(json!({}));
        s["root"]["readonly"] = json!(true);
        assert!(add_mounts(&mut s, dir.path()));
        let added = s["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/etc/resolv.conf").cloned();
        assert_eq!(added.unwrap()["options"], json!(["rbind", "rprivate", "ro"]));
    }
}
