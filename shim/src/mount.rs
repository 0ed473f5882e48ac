//! The container's root filesystem: the mounts containerd passes in Create (a snapshot, e.g.
//! overlay), mounted at `<bundle>/rootfs` and removed again on Delete.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tether_protos::api::Mount;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Mounts each of `mounts` at `target`, in order; on failure, undoes what was mounted.
///
/// On a thread of its own, for the few milliseconds the mounts take: containerd-shim's
/// `mount_rootfs` forks a child for each mount and blocks until the exit of that child reaches
/// the crate's monitor, which only the shim's reaper, a task of the loop, feeds. The loop
/// therefore must not be the thread that waits. The thread ends with the mounts.
pub async fn mount_all(mounts: Vec<Mount>, target: PathBuf) -> Result<()> {
    let (done, mounted) = oneshot::channel();
    std::thread::Builder::new()
        .name("mount".into())
        .spawn(move || {
            let _ = done.send(mount_each(&mounts, &target));
        })
        .map_err(|e| Error::io("starting the rootfs mount's thread", e))?;
    mounted.await.map_err(|_| Error::io("mounting the rootfs", std::io::Error::other("the mount's thread ended")))?
}

fn mount_each(mounts: &[Mount], target: &Path) -> Result<()> {
    fs::create_dir_all(target).map_err(|e| Error::io(format!("creating rootfs {}", target.display()), e))?;
    for m in mounts {
        let bind = m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
        if bind && !Path::new(&m.source).exists() {
            unmount(target);
            return Err(Error::InvalidArgument(format!("rootfs mount source {} does not exist", m.source)));
        }
        if let Err(e) = containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            target,
        ) {
            unmount(target);
            return Err(Error::io(
                format!("mounting {} ({}) at {}", m.source, m.type_, target.display()),
                std::io::Error::other(e.to_string()),
            ));
        }
    }
    Ok(())
}

/// Unmounts everything at and below `target`, detaching what is busy. Errors are logged: a
/// leftover mount must not stop a delete.
pub fn unmount(target: &Path) {
    if let Err(e) = containerd_shim::mount::umount_recursive(target.to_str(), libc::MNT_DETACH) {
        log::warn!("unmounting {}: {e}", target.display());
    }
}
