//! Mount propagation, which libcontainer 0.7 handles only in part, made to work as runc makes
//! it work (CRI's Bidirectional and HostToContainer mounts depend on it):
//!
//! - `linux.rootfsPropagation`: libcontainer knows only `shared`, `slave`, `private` and
//!   `unbindable`, and refuses the recursive names CRI sends (`rshared`, `rslave`). It applies
//!   every value recursively to the whole mount tree before it mounts anything (as runc does
//!   with the recursive names), so the recursive names are given to it as the plain ones:
//!   [`Propagation::spec`] is the bundle's spec with that one field renamed, which libcontainer
//!   reads from a bundle of its own (a copy of `config.json` with an absolute root path) for
//!   the moment of the create. The prestart, createRuntime, createContainer and
//!   startContainer hooks are told that bundle's path; the container's state names the real
//!   bundle again once it is created (poststart and poststop hooks get it).
//! - A mount's propagation options (`shared`, `slave`, `private`, `unbindable` and their
//!   recursive `r` forms): libcontainer mounts with `open_tree`/`move_mount` and drops them,
//!   so a bind mount keeps whatever propagation its source has in the container's mount
//!   namespace (a slave of the host's mount after the usual `rslave` root), and a `rprivate`
//!   mount still receives the host's mounts. runc applies them to the mount point right after
//!   the mount; [`apply`] applies them, in the spec's order, from outside the container once
//!   libcontainer has created it (its init waits for the start, its rootfs complete).

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{mount, MsFlags},
    sched::{setns, unshare, CloneFlags},
    unistd::{chroot, fchdir},
};
use oci_spec::runtime::Spec;

/// What tether does about propagation around libcontainer's create.
#[derive(Default)]
pub struct Propagation {
    /// The spec libcontainer must be given instead of the bundle's (its rootfs propagation
    /// renamed, its root path absolute), when the bundle's names a recursive propagation.
    pub spec: Option<Spec>,
    /// The propagation changes of the spec's mounts, in order: the mount point (inside the
    /// container) and the change.
    pub mounts: Vec<(PathBuf, MsFlags)>,
}

impl Propagation {
    /// What the spec of the bundle `bundle` needs.
    pub fn of(spec: &Spec, bundle: &Path) -> Propagation {
        let renamed = spec.linux().as_ref().and_then(|l| l.rootfs_propagation().as_deref()).and_then(plain_name);
        let renamed_spec = renamed.map(|name| {
            let mut spec = spec.clone();
            if let Some(linux) = spec.linux_mut() {
                linux.set_rootfs_propagation(Some(name.to_string()));
            }
            if let Some(root) = spec.root_mut() {
                if root.path().is_relative() {
                    let absolute = bundle.join(root.path());
                    root.set_path(absolute);
                }
            }
            spec
        });
        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .flat_map(|m| {
                let options = m.options().iter().flatten();
                options.filter_map(|o| option_flags(o)).map(|flags| (m.destination().clone(), flags))
            })
            .collect();
        Propagation { spec: renamed_spec, mounts }
    }
}

/// libcontainer's name for a recursive rootfs propagation (it applies them all recursively).
fn plain_name(name: &str) -> Option<&'static str> {
    match name {
        "rshared" => Some("shared"),
        "rslave" => Some("slave"),
        "rprivate" => Some("private"),
        "runbindable" => Some("unbindable"),
        _ => None,
    }
}

/// The propagation change a mount option asks for.
fn option_flags(option: &str) -> Option<MsFlags> {
    let (kind, recursive) = match option.strip_prefix('r') {
        Some(rest @ ("shared" | "slave" | "private" | "unbindable")) => (rest, true),
        _ => (option, false),
    };
    let kind = match kind {
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(if recursive { kind | MsFlags::MS_REC } else { kind })
}

/// Applies `changes` in the mount namespace of the container whose init is `pid`, to mount
/// points named inside its root. The calling process enters that namespace for the moment
/// and returns to its own (its root and working directory with it), also on failure.
pub fn apply(pid: i32, changes: &[(PathBuf, MsFlags)]) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let own = File::open("/proc/self/ns/mnt")?;
    let theirs = File::open(proc.join("ns/mnt"))?;
    let root = File::open(proc.join("root"))?;
    // setns into a mount namespace needs a filesystem context of this thread's own.
    unshare(CloneFlags::CLONE_FS)?;
    setns(&theirs, CloneFlags::CLONE_NEWNS)?;
    let result = (|| -> io::Result<()> {
        fchdir(&root)?;
        chroot(".")?;
        for (point, flags) in changes {
            let point = Path::new("/").join(point);
            mount(None::<&str>, &point, None::<&str>, *flags, None::<&str>).map_err(|errno| {
                io::Error::new(
                    io::Error::from(errno).kind(),
                    format!("setting the propagation of the mount {}: {errno}", point.display()),
                )
            })?;
        }
        Ok(())
    })();
    setns(&own, CloneFlags::CLONE_NEWNS)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn recursive_rootfs_propagation_is_renamed_and_mount_options_collected() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"rootfsPropagation": "rshared"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/m", "type": "bind", "source": "/x", "options": ["rbind", "rshared", "ro"]},
                {"destination": "/n", "type": "bind", "source": "/y", "options": ["bind", "slave", "runbindable"]},
            ],
        }));
        let plan = Propagation::of(&s, Path::new("/b"));
        let renamed = plan.spec.expect("rshared is renamed");
        assert_eq!(renamed.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("shared"));
        assert_eq!(renamed.root().as_ref().unwrap().path(), Path::new("/b/rootfs"));
        assert_eq!(
            plan.mounts,
            [
                (PathBuf::from("/m"), MsFlags::MS_SHARED | MsFlags::MS_REC),
                (PathBuf::from("/n"), MsFlags::MS_SLAVE),
                (PathBuf::from("/n"), MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            ]
        );
    }

    #[test]
    fn plain_propagation_needs_nothing() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"rootfsPropagation": "slave"},
            "mounts": [{"destination": "/m", "type": "bind", "source": "/x", "options": ["rbind", "ro"]}],
        }));
        let plan = Propagation::of(&s, Path::new("/b"));
        assert!(plan.spec.is_none() && plan.mounts.is_empty());
    }
}
