//! Memory cgroups the bench makes for itself, to read what the kernel charges to a group of
//! processes: every page they fault in (anonymous and page cache) and, on the kernels nodes
//! run, their kernel memory too (stacks, page tables, slab objects: task structs, files,
//! sockets, epoll items). That is what a node pays, and what RSS does not show.
//!
//! cgroup v1 (or hybrid): the memory hierarchy at /sys/fs/cgroup/memory; the bench's group
//! goes below the memory cgroup the bench itself is in, so whatever limits and accounting
//! apply to the bench apply to it too. `memory.usage_in_bytes` includes kernel memory on
//! kernels since 5.x; `memory.kmem.usage_in_bytes`, where it exists, is that kernel part.
//! cgroup v2: beside the bench's own cgroup (v2 allows no processes in a cgroup whose
//! children have controllers, so it cannot go below it); `memory.current`, whose kernel part
//! is memory.stat's `kernel` (or, before 6.x, the sum of its kernel fields).
//!
//! Dropping a group moves whatever is still in it back to where the bench is, then removes it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a removal keeps retrying while processes are still leaving.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// v2 when /sys/fs/cgroup is the unified hierarchy itself (hybrid mounts it below).
    pub fn of_host() -> Version {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Version::V2
        } else {
            Version::V1
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        }
    }

    fn mount(self) -> &'static Path {
        match self {
            Version::V1 => Path::new("/sys/fs/cgroup/memory"),
            Version::V2 => Path::new("/sys/fs/cgroup"),
        }
    }
}

/// What the kernel charges to a group, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    pub total: u64,
    /// The kernel part of `total`, where the kernel says.
    pub kernel: Option<u64>,
    /// Its anonymous pages (v1 `total_rss`, v2 `anon`), where memory.stat says.
    pub anon: Option<u64>,
    /// Its page cache, tmpfs included (v1 `total_cache`, v2 `file`), where memory.stat says.
    pub file: Option<u64>,
}

/// One memory cgroup the bench created.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    version: Version,
    /// Where processes go back to when the group is removed: the bench's own cgroup.
    home: PathBuf,
}

impl Cgroup {
    /// A new top group named `name`, for the bench's own processes and their children.
    pub fn create(name: &str) -> Result<Cgroup, String> {
        let version = Version::of_host();
        let own = own_cgroup(version)?;
        let home = version.mount().join(own.trim_start_matches('/'));
        let parent = match version {
            Version::V1 => home.clone(),
            Version::V2 => match home.parent() {
                Some(p) if own != "/" && home.join("memory.current").exists() => p.to_path_buf(),
                _ => version.mount().to_path_buf(),
            },
        };
        let group = Cgroup::make(parent.join(name), version, home)?;
        if version == Version::V2 {
            let subtree = group.path.join("cgroup.subtree_control");
            fs::write(&subtree, "+memory").map_err(|e| format!("{}: +memory: {e}", subtree.display()))?;
        }
        Ok(group)
    }

    /// A group `name` below this one.
    pub fn child(&self, name: &str) -> Result<Cgroup, String> {
        Cgroup::make(self.path.join(name), self.version, self.home.clone())
    }

    fn make(path: PathBuf, version: Version, home: PathBuf) -> Result<Cgroup, String> {
        fs::create_dir(&path).map_err(|e| format!("creating cgroup {}: {e}", path.display()))?;
        let group = Cgroup { path, version, home };
        let usage = group.path.join(version.usage_file());
        if !usage.exists() {
            return Err(format!(
                "{} has no {}: no memory controller there",
                group.path.display(),
                version.usage_file()
            ));
        }
        Ok(group)
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Moves process `pid` (all its threads) into this group.
    pub fn join(&self, pid: u32) -> Result<(), String> {
        fs::write(self.procs_file(), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", self.path.display()))
    }

    /// The processes in this group.
    pub fn procs(&self) -> Vec<u32> {
        read_pids(&self.procs_file())
    }

    /// What is charged to this group now.
    pub fn charge(&self) -> Result<Charge, String> {
        Cgroup::charge_of(&self.path, self.version)
    }

    /// What is charged now to the memory cgroup `name` (a path in the hierarchy, as runtimes
    /// name a container's cgroup), which somebody else made; None if there is none.
    pub fn charge_of_named(name: &str) -> Result<Option<Charge>, String> {
        let version = Version::of_host();
        let path = version.mount().join(name.trim_start_matches('/'));
        if !path.is_dir() {
            return Ok(None);
        }
        Cgroup::charge_of(&path, version).map(Some)
    }

    fn charge_of(path: &Path, version: Version) -> Result<Charge, String> {
        let read = |name: &str| -> Result<String, String> {
            fs::read_to_string(path.join(name)).map_err(|e| format!("{}/{name}: {e}", path.display()))
        };
        let number = |text: String, name: &str| -> Result<u64, String> {
            text.trim().parse().map_err(|_| format!("{}/{name}: {text:?} is not a number", path.display()))
        };
        let usage = version.usage_file();
        let total = number(read(usage)?, usage)?;
        let stat = read("memory.stat").unwrap_or_default();
        let (kernel, anon, file) = match version {
            Version::V1 => (
                read("memory.kmem.usage_in_bytes").ok().and_then(|t| t.trim().parse().ok()),
                stat_field(&stat, "total_rss"),
                stat_field(&stat, "total_cache"),
            ),
            Version::V2 => (v2_kernel(&stat), stat_field(&stat, "anon"), stat_field(&stat, "file")),
        };
        Ok(Charge { total, kernel, anon, file })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let home = self.home.join("cgroup.procs");
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            // Anything still here (a shim that has not exited yet) goes back beside the bench.
            for pid in self.procs() {
                let _ = fs::write(&home, pid.to_string());
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("  could not remove cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The bench's own memory cgroup, as /proc/self/cgroup names it (`/`, `/a/b`).
fn own_cgroup(version: Version) -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    cgroup_of(&text, version).ok_or_else(|| format!("no memory cgroup in /proc/self/cgroup: {text:?}"))
}

/// The memory cgroup in a /proc/PID/cgroup text: v1's line whose controllers include
/// `memory`, v2's `0::` line.
pub fn cgroup_of(proc_cgroup: &str, version: Version) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let wanted = match version {
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
            Version::V2 => controllers.is_empty(),
        };
        wanted.then(|| path.to_owned())
    })
}

fn read_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Field `name` of a memory.stat text.
fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
}

/// The kernel part of a v2 memory.stat: its `kernel` line (6.x), else the sum of the kernel
/// fields older kernels list.
pub fn v2_kernel(stat: &str) -> Option<u64> {
    stat_field(stat, "kernel").or_else(|| {
        let parts = ["kernel_stack", "pagetables", "percpu", "sock", "slab", "vmalloc"].map(|f| stat_field(stat, f));
        parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_cgroup_of_either_version() {
        let hybrid = "5:devices:/\n4:memory:/a/b\n3:cpu,cpuacct:/c\n0::/unified\n";
        assert_eq!(cgroup_of(hybrid, Version::V1).as_deref(), Some("/a/b"));
        assert_eq!(cgroup_of(hybrid, Version::V2).as_deref(), Some("/unified"));
        assert_eq!(cgroup_of("0::/system.slice/x.service\n", Version::V2).as_deref(), Some("/system.slice/x.service"));
        assert_eq!(cgroup_of("4:cpu:/\n", Version::V1), None);
    }

    #[test]
    fn the_kernel_part_of_a_v2_stat() {
        assert_eq!(v2_kernel("anon 4096\nfile 0\nkernel 12288\nkernel_stack 8192\n"), Some(12288));
        assert_eq!(v2_kernel("anon 1\nkernel_stack 100\npagetables 20\nslab 3\n"), Some(123));
        assert_eq!(v2_kernel("anon 1\n"), None);
        assert_eq!(stat_field("cache 5\nrss 7\ntotal_rss 9\n", "rss"), Some(7));
        assert_eq!(stat_field("cache 5\nrss 7\ntotal_rss 9\n", "total_rss"), Some(9));
        assert_eq!(stat_field("rss_huge 0\n", "rss"), None);
    }
}
