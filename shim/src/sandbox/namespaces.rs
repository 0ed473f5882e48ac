//! The pod's namespaces, held by the shim's main thread: the network namespace containerd
//! made, a new IPC and UTS namespace, the pod's hostname and sysctls in them.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use nix::sched::{setns, unshare, CloneFlags};

use super::pod::PodConfig;
use crate::error::{Error, Result};

/// Makes the calling thread, which must be the process's main thread, a member of the pod's
/// namespaces: `netns` (if the pod has a network of its own), a new IPC and UTS namespace
/// unless the pod uses the node's; then sets the pod's hostname and sysctls in them.
pub(super) fn enter(pod: &PodConfig, netns: &str) -> Result<()> {
    // /proc/<pid>/ns shows the main thread's namespaces; entering them on any other thread
    // would leave the containers joining the host's.
    if nix::unistd::gettid() != nix::unistd::getpid() {
        return Err(Error::FailedPrecondition("StartSandbox must run on the shim's main thread".into()));
    }
    if !netns.is_empty() {
        let file = File::open(netns).map_err(|e| Error::io(format!("opening {netns}"), e))?;
        setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(format!("joining the network namespace {netns}"), e.into()))?;
    }
    let mut flags = CloneFlags::empty();
    if pod.own_ipc() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if pod.own_uts() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| Error::io("creating the pod's IPC and UTS namespaces", e.into()))?;
    }
    if pod.own_uts() && !pod.hostname.is_empty() {
        // SAFETY: sethostname reads `len` bytes of a live buffer.
        if unsafe { libc::sethostname(pod.hostname.as_ptr().cast(), pod.hostname.len()) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::io(format!("setting the hostname {}", pod.hostname), e));
        }
    }
    for (key, value) in &pod.sysctls {
        let path = sysctl_path(key)?;
        fs::write(&path, value).map_err(|e| Error::io(format!("setting sysctl {key}={value}"), e))?;
    }
    Ok(())
}

/// `/proc/sys/...` of a sysctl named with dots (`net.ipv4.ip_forward`) or slashes (the form
/// that allows dots inside a name, `net/ipv4/conf/eth0.100/forwarding`).
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let relative = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    if relative.is_empty() || relative.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(Error::InvalidArgument(format!("bad sysctl name {key:?}")));
    }
    Ok(Path::new("/proc/sys").join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward").unwrap(), Path::new("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "net..x", "net/../../etc", "/abs"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }
}
