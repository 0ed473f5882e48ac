//! A process's cgroup files, on cgroup v1 (this project's hosts) and v2, for tests that check
//! what limits a container really got.

use std::fs;
use std::path::{Path, PathBuf};

/// The directory of `pid`'s cgroup for a v1 `controller` (or the unified one on a v2 host).
pub fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let unified = is_v2();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if unified && ctrls.is_empty() {
            return Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        }
        if ctrls.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup").join(ctrls).join(path.trim_start_matches('/'));
        }
    }
    panic!("pid {pid} has no {controller} cgroup:\n{text}");
}

/// The trimmed contents of `file` in cgroup `dir`.
pub fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display())).trim().to_owned()
}

/// Whether this host runs the unified hierarchy alone (cgroup v2).
pub fn is_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}
