//! The cgroup hierarchies of a cgroup v1 host that libcontainer leaves alone: systemd's named
//! hierarchy (`name=systemd`) and, on a hybrid host, the unified (v2) one mounted beside the
//! controllers' at `/sys/fs/cgroup/unified`. libcontainer moves a container's processes into
//! the controllers' hierarchies only, so in these they would stay in the shim's cgroups; runc
//! (its cgroupfs driver) puts them in both, at the container's cgroups path, and removes those
//! cgroups with the container.
//!
//! The worker that creates a container, or execs a process in it, moves itself into the
//! container's cgroups in these hierarchies before libcontainer clones it, and back to its own
//! once libcontainer is done: every container process inherits the membership from its first
//! instruction. The path is the one libcontainer gives the controllers, joined to each
//! hierarchy's root as libcgroups joins it, so that every line of a container's
//! `/proc/self/cgroup` names the same cgroup (with an absolute cgroups path, as containerd
//! gives, runc's). The prestart and createRuntime hooks, which libcontainer runs from the
//! worker, run in them too (runc runs them from its own cgroups). Deleting the container
//! removes them after libcontainer has removed the controllers' cgroups.
//!
//! On a cgroup v2 host the unified hierarchy is the only one, and libcontainer manages it.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use libcgroups::common::{get_cgroup_setup, CgroupSetup, CGROUP_PROCS, DEFAULT_CGROUP_ROOT};
use libcontainer::{error::LibcontainerError, utils::PathBufExt};
use procfs::{process::Process, ProcessCGroup};

/// One cgroup in each hierarchy libcontainer leaves alone.
#[derive(Debug, Default)]
pub struct Cgroups(Vec<PathBuf>);

/// A hierarchy libcontainer leaves alone.
#[derive(Clone, Copy)]
enum Hierarchy {
    /// systemd's named hierarchy.
    Systemd,
    /// The unified hierarchy of a hybrid host.
    Unified,
}

impl Hierarchy {
    /// Whether `line` of a `/proc/<pid>/cgroup` is this hierarchy's.
    fn is_line(self, line: &ProcessCGroup) -> bool {
        match self {
            Hierarchy::Systemd => line.controllers.iter().any(|c| c == "name=systemd"),
            Hierarchy::Unified => line.hierarchy == 0,
        }
    }
}

impl Cgroups {
    /// The cgroups at `path`, the cgroups path libcontainer gives the container's controllers
    /// (an empty one leaves a process where it is, so it names none).
    pub fn at(path: &Path) -> Result<Self, LibcontainerError> {
        if path.as_os_str().is_empty() {
            return Ok(Cgroups::default());
        }
        Ok(Cgroups(hierarchies()?.into_iter().map(|(_, mount)| below(&mount, path)).collect::<Result<_, _>>()?))
    }

    /// Moves this process into each of the cgroups, making the ones that do not exist, and
    /// returns the cgroups it left.
    pub fn enter(&self) -> Result<Cgroups, LibcontainerError> {
        if self.0.is_empty() {
            return Ok(Cgroups::default());
        }
        let own = Cgroups::own()?;
        for dir in &self.0 {
            fs::create_dir_all(dir).map_err(|e| failed("creating the cgroup", dir, &e))?;
        }
        self.join()?;
        Ok(own)
    }

    /// Moves this process into each of the cgroups, which exist.
    pub fn join(&self) -> Result<(), LibcontainerError> {
        for dir in &self.0 {
            // "0" names the writer.
            let procs = dir.join(CGROUP_PROCS);
            fs::write(&procs, "0").map_err(|e| failed("joining the cgroup", &procs, &e))?;
        }
        Ok(())
    }

    /// Removes the cgroups, waiting until `deadline` for processes still in them to leave
    /// (the container's last ones may still be exiting).
    pub fn remove(&self, deadline: Instant) -> Result<(), LibcontainerError> {
        for dir in &self.0 {
            loop {
                match fs::remove_dir(dir) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        thread::sleep(REMOVE_RETRY);
                    }
                    Err(e) => return Err(failed("removing the cgroup", dir, &e)),
                    Ok(()) => break,
                }
            }
        }
        Ok(())
    }

    /// The cgroups this process is in.
    fn own() -> Result<Self, LibcontainerError> {
        let lines = Process::myself()?.cgroups()?;
        let mut dirs = Vec::new();
        for (hierarchy, mount) in hierarchies()? {
            if let Some(line) = lines.0.iter().find(|l| hierarchy.is_line(l)) {
                dirs.push(below(&mount, Path::new(&line.pathname))?);
            }
        }
        Ok(Cgroups(dirs))
    }
}

/// The pause between two tries to remove a cgroup that still holds a process.
const REMOVE_RETRY: Duration = Duration::from_millis(20);

/// The hierarchies libcontainer leaves alone on this host, with where each is mounted.
fn hierarchies() -> Result<Vec<(Hierarchy, PathBuf)>, LibcontainerError> {
    let root = Path::new(DEFAULT_CGROUP_ROOT);
    let unified = match get_cgroup_setup()? {
        CgroupSetup::Unified => return Ok(Vec::new()),
        CgroupSetup::Legacy => None,
        // Where libcgroups (and runc) find the unified hierarchy of a hybrid host.
        CgroupSetup::Hybrid => Some((Hierarchy::Unified, root.join("unified"))),
    };
    let systemd = Process::myself()?.mountinfo()?.into_iter().find(|m| {
        m.fs_type == "cgroup"
            && m.mount_point.starts_with(root)
            && m.super_options.get("name").is_some_and(|name| name.as_deref() == Some("systemd"))
    });
    Ok(systemd.map(|m| (Hierarchy::Systemd, m.mount_point)).into_iter().chain(unified).collect())
}

/// The cgroup `path` of the hierarchy mounted at `mount`, an absolute path taken from the
/// hierarchy's root as libcgroups takes it.
fn below(mount: &Path, path: &Path) -> Result<PathBuf, LibcontainerError> {
    mount.join_safely(path).map_err(|e| LibcontainerError::OtherCgroup(e.to_string()))
}

fn failed(what: &str, path: &Path, err: &io::Error) -> LibcontainerError {
    LibcontainerError::OtherCgroup(format!("{what} {}: {err}", path.display()))
}
