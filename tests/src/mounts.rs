//! Mounts a propagation test makes on the host: a shared tmpfs to bind into containers, and
//! the mounts made below it from either side. Everything stays below the test's temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::containerd::unmount_below;

/// A tmpfs of the host in its own shared peer group (what Kubernetes wants of a
/// Bidirectional mount's source); unmounted, with everything mounted below it, when dropped.
pub struct SharedDir(pub PathBuf);

impl SharedDir {
    pub fn new(path: PathBuf) -> SharedDir {
        std::fs::create_dir_all(&path).unwrap();
        let dir = SharedDir(path);
        host_sh(&format!("mount -t tmpfs tether-shared {0} && mount --make-shared {0}", dir.0.display()));
        dir
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let left = unmount_below(&self.0);
        if !std::thread::panicking() {
            assert!(left.is_empty(), "still mounted: {left:?}");
        }
    }
}

/// Runs `script` on the host; it must succeed.
pub fn host_sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().expect("running sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A `sh -c` script that mounts a tmpfs at `dir/name` (made first) holding a file `mark`, for
/// the host ([`host_sh`]) or a container.
pub fn mount_with_mark(dir: &Path, name: &str) -> String {
    let at = dir.join(name);
    format!("mkdir -p {0} && mount -t tmpfs {name} {0} && echo {name} > {0}/mark", at.display())
}
