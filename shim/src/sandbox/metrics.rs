//! SandboxMetrics: the pod's cgroup metrics. containerd's CRI plugin answers PodSandboxStats
//! (the kubelet's pod cpu and memory) from them, decoding the metric's data as the cgroup v1
//! or v2 `Metrics` message, the same message a container's Stats carries. The pod's cgroup is
//! the cgroup parent the kubelet names in the pod's config: every container of the pod is
//! below it, and no pause process is.

use std::time::SystemTime;

use tether_protos::{protobuf::MessageField, sandbox_api as api};

use crate::{
    cgroup::Cgroup,
    error::{Error, Result},
    events::timestamp,
};

/// The metrics of the pod `id` whose cgroup parent is `cgroup_parent`, as SandboxMetrics
/// answers them.
pub fn of_pod(id: &str, cgroup_parent: &str) -> Result<api::SandboxMetricsResponse> {
    let path = cgroup_path(cgroup_parent)
        .ok_or_else(|| Error::NotFound(format!("cgroup of sandbox {id} (its pod names no cgroup parent)")))?;
    let cgroup = Cgroup::at(&path).map_err(|e| Error::io("reading the cgroup mounts", e))?;
    if !cgroup.exists() {
        return Err(Error::NotFound(format!("cgroup {path} of sandbox {id}")));
    }
    let mut response = api::SandboxMetricsResponse::new();
    let metric = response.mut_metrics();
    metric.timestamp = MessageField::some(timestamp(SystemTime::now()));
    metric.id = id.to_string();
    metric.data = MessageField::some(cgroup.metrics());
    Ok(response)
}

/// The path below each hierarchy's root of a CRI cgroup parent: a cgroupfs path as it is
/// (`/kubepods/burstable/pod1`), a systemd slice expanded as systemd nests it
/// (`kubepods-burstable-pod1.slice` is `/kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod1.slice`). `None` for no parent.
fn cgroup_path(cgroup_parent: &str) -> Option<String> {
    if cgroup_parent.is_empty() {
        return None;
    }
    let Some(name) = cgroup_parent.strip_suffix(".slice").filter(|n| !n.contains('/')) else {
        return Some(cgroup_parent.to_string());
    };
    // Each dash-separated prefix is a slice of its own, the parent of the next.
    let mut path = String::new();
    for (at, _) in name.match_indices('-').chain([(name.len(), "")]) {
        path.push('/');
        path.push_str(&name[..at]);
        path.push_str(".slice");
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_of_either_driver_name_a_path() {
        assert_eq!(cgroup_path("/kubepods/burstable/pod1").as_deref(), Some("/kubepods/burstable/pod1"));
        assert_eq!(
            cgroup_path("kubepods-burstable-pod1.slice").as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(cgroup_path("kubepods.slice").as_deref(), Some("/kubepods.slice"));
        assert_eq!(cgroup_path(""), None);
    }

    #[test]
    fn a_pod_without_a_cgroup_is_not_found() {
        for parent in ["", "/tether-test-no-such-cgroup/pod1"] {
            let err = of_pod("s1", parent).unwrap_err();
            assert_eq!(err.code(), tether_protos::ttrpc::Code::NOT_FOUND, "{parent:?}: {err}");
        }
    }
}
