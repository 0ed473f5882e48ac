//! The sandbox service (`containerd.runtime.sandbox.v1.Sandbox`): what containerd 2.x's `shim`
//! sandbox controller calls when a CRI runtime handler says `sandboxer = "shim"`. The pod is
//! this shim: no pause container, no image, no second process.
//!
//! How the pod's namespaces are held (see docs/sandbox.md for the protocol and the reasons):
//! containerd's CRI plugin writes every container of the pod with the namespace paths
//! `/proc/<sandbox pid>/ns/{net,ipc,uts}`, the pid being the one StartSandbox answered. The
//! shim answers its own pid, and at StartSandbox its main thread (the loop's thread, the
//! thread group leader that `/proc/<pid>/ns` shows) joins the pod's network namespace
//! (containerd made it and passes its path) and unshares a new IPC and UTS namespace, sets
//! the pod's hostname and sysctls there. The namespaces live as long as the shim (or a
//! container in them) does: nothing is mounted, so nothing is left to unmount when the shim
//! is killed. The shim has no other thread, and needs none of the host's namespaces: it only
//! speaks over unix sockets named by path, which work from any network namespace. The runtime
//! binaries it starts from then on start in the pod's namespaces; each container joins or
//! creates what its spec names, and one the spec leaves out is one the pod shares with the
//! node, as the shim does.
//!
//! A pod whose containers share one PID namespace (`shareProcessNamespace`) needs a PID 1;
//! such a pod is refused for now (docs/sandbox.md, "Left").

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use nix::sched::{setns, unshare, CloneFlags};
use tether_protos::{
    protobuf::MessageField,
    sandbox_api as api,
    sandbox_async::{create_sandbox, Sandbox},
    ttrpc::{self, r#async::TtrpcContext},
    types::platform::Platform,
};
use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    events::timestamp,
    service::logged,
};

/// The state names containerd's own pod sandboxes report (CRI's sandbox store), which the CRI
/// plugin shows for a sandbox of any controller.
const STATE_READY: &str = "SANDBOX_READY";
const STATE_NOT_READY: &str = "SANDBOX_NOTREADY";

/// A namespace mode of the CRI (`runtime.v1.NamespaceMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NamespaceMode {
    /// Shared by the pod's containers (the CRI's default, 0).
    #[default]
    Pod,
    /// One per container.
    Container,
    /// The node's (hostNetwork, hostPID, hostIPC).
    Node,
    /// Another container's.
    Target,
}

impl NamespaceMode {
    fn from_wire(v: u64) -> Result<NamespaceMode> {
        match v {
            0 => Ok(NamespaceMode::Pod),
            1 => Ok(NamespaceMode::Container),
            2 => Ok(NamespaceMode::Node),
            3 => Ok(NamespaceMode::Target),
            _ => Err(Error::InvalidArgument(format!("unknown CRI namespace mode {v}"))),
        }
    }
}

/// What of the CRI's `PodSandboxConfig` (CreateSandbox's options) the shim acts on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodConfig {
    /// The pod's hostname (set in its UTS namespace).
    pub hostname: String,
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// Namespaced sysctls, written inside the pod's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// The pod's cgroup parent (the kubelet's pod cgroup).
    pub cgroup_parent: String,
}

impl PodConfig {
    /// Decodes the fields tether needs from an encoded `runtime.v1.PodSandboxConfig`; the
    /// rest is skipped. tether has no CRI types of its own, so the wire is read directly
    /// (field numbers from the CRI's api.proto).
    pub fn decode(bytes: &[u8]) -> Result<PodConfig> {
        let mut pod = PodConfig::default();
        for field in wire::fields(bytes)? {
            match field {
                (2, wire::Value::Bytes(b)) => pod.hostname = wire::string(b)?,
                (8, wire::Value::Bytes(linux)) => pod.decode_linux(linux)?,
                _ => {}
            }
        }
        Ok(pod)
    }

    /// `LinuxPodSandboxConfig`: 1 cgroup_parent, 2 security_context, 3 sysctls.
    fn decode_linux(&mut self, bytes: &[u8]) -> Result<()> {
        for field in wire::fields(bytes)? {
            match field {
                (1, wire::Value::Bytes(b)) => self.cgroup_parent = wire::string(b)?,
                (2, wire::Value::Bytes(security)) => {
                    // LinuxSandboxSecurityContext: 1 namespace_options.
                    for field in wire::fields(security)? {
                        if let (1, wire::Value::Bytes(options)) = field {
                            self.decode_namespaces(options)?;
                        }
                    }
                }
                (3, wire::Value::Bytes(entry)) => {
                    // A map entry: 1 key, 2 value.
                    let (mut key, mut value) = (String::new(), String::new());
                    for field in wire::fields(entry)? {
                        match field {
                            (1, wire::Value::Bytes(b)) => key = wire::string(b)?,
                            (2, wire::Value::Bytes(b)) => value = wire::string(b)?,
                            _ => {}
                        }
                    }
                    self.sysctls.insert(key, value);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `NamespaceOption`: 1 network, 2 pid, 3 ipc.
    fn decode_namespaces(&mut self, bytes: &[u8]) -> Result<()> {
        for field in wire::fields(bytes)? {
            match field {
                (1, wire::Value::Varint(v)) => self.network = NamespaceMode::from_wire(v)?,
                (2, wire::Value::Varint(v)) => self.pid = NamespaceMode::from_wire(v)?,
                (3, wire::Value::Varint(v)) => self.ipc = NamespaceMode::from_wire(v)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the pod has a UTS namespace of its own: every pod but a hostNetwork one (the
    /// CRI gives hostNetwork pods the node's UTS namespace too).
    pub fn own_uts(&self) -> bool {
        self.network != NamespaceMode::Node
    }

    /// Whether the pod has an IPC namespace of its own (not hostIPC).
    pub fn own_ipc(&self) -> bool {
        self.ipc != NamespaceMode::Node
    }
}

/// A minimal protobuf wire reader: the fields of one message, nested messages left encoded.
mod wire {
    use crate::error::{Error, Result};

    /// One field's value: a varint, or the bytes of a length-delimited field.
    #[derive(Debug, PartialEq)]
    pub enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        /// A fixed 32 or 64 bit value (none of the fields tether reads).
        Fixed,
    }

    fn bad(what: &str) -> Error {
        Error::InvalidArgument(format!("malformed PodSandboxConfig: {what}"))
    }

    fn varint(bytes: &[u8], at: &mut usize) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*at).ok_or_else(|| bad("truncated varint"))?;
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("varint too long"))
    }

    fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
        let end = at.checked_add(n).filter(|e| *e <= bytes.len()).ok_or_else(|| bad("truncated field"))?;
        let slice = &bytes[*at..end];
        *at = end;
        Ok(slice)
    }

    /// Every (field number, value) of the message `bytes`, in wire order.
    pub fn fields(bytes: &[u8]) -> Result<Vec<(u32, Value<'_>)>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let key = varint(bytes, &mut at)?;
            let number = u32::try_from(key >> 3).map_err(|_| bad("field number"))?;
            let value = match key & 7 {
                0 => Value::Varint(varint(bytes, &mut at)?),
                1 => take(bytes, &mut at, 8).map(|_| Value::Fixed)?,
                2 => {
                    let n = usize::try_from(varint(bytes, &mut at)?).map_err(|_| bad("length"))?;
                    Value::Bytes(take(bytes, &mut at, n)?)
                }
                5 => take(bytes, &mut at, 4).map(|_| Value::Fixed)?,
                t => return Err(bad(&format!("wire type {t}"))),
            };
            out.push((number, value));
        }
        Ok(out)
    }

    pub fn string(bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string that is not UTF-8"))
    }
}

/// Where a sandbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopped,
}

/// The one sandbox this shim serves.
#[derive(Debug)]
struct Pod {
    id: String,
    bundle: PathBuf,
    netns: String,
    config: PodConfig,
    phase: Phase,
    created_at: SystemTime,
    exited_at: Option<SystemTime>,
}

/// The sandbox service of one shim. A shim serves at most one sandbox (containerd starts a
/// shim per sandbox, named by the sandbox id).
pub struct SandboxService {
    pod: Mutex<Option<Pod>>,
    /// The exit (at StopSandbox) that WaitSandbox returns.
    exited: watch::Sender<Option<SystemTime>>,
    /// Ends the shim (ShutdownSandbox), once the reply is on its way.
    on_shutdown: Box<dyn Fn() + Send + Sync>,
}

impl SandboxService {
    /// A service with no sandbox yet; `on_shutdown` ends the shim.
    pub fn new(on_shutdown: impl Fn() + Send + Sync + 'static) -> Self {
        SandboxService { pod: Mutex::new(None), exited: watch::channel(None).0, on_shutdown: Box::new(on_shutdown) }
    }

    /// The ttrpc service for the shim's async server.
    pub fn service(self: Arc<Self>) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        create_sandbox(self)
    }

    /// Whether a sandbox lives in this shim: then the task API's Shutdown (which containerd
    /// sends after deleting a task that is not part of a sandbox) must not end it, even
    /// with no task left; ShutdownSandbox does.
    pub fn holds_shim(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pod>> {
        self.pod.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the sandbox named `id`.
    fn with_pod<T>(&self, id: &str, f: impl FnOnce(&mut Pod) -> Result<T>) -> Result<T> {
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(pod) if pod.id == id => f(pod),
            _ => Err(Error::NotFound(format!("sandbox {id}"))),
        }
    }

    /// CreateSandbox: records the sandbox and checks that its pod is one tether can hold.
    pub fn create(&self, req: &api::CreateSandboxRequest) -> Result<()> {
        if req.sandbox_id.is_empty() {
            return Err(Error::InvalidArgument("CreateSandbox needs a sandbox id".into()));
        }
        let config = match req.options.as_ref() {
            Some(any) => PodConfig::decode(&any.value)?,
            None => PodConfig::default(),
        };
        if config.pid == NamespaceMode::Pod {
            return Err(Error::Unimplemented(
                "a sandbox whose containers share a PID namespace (shareProcessNamespace)",
            ));
        }
        if !req.netns_path.is_empty() && !Path::new(&req.netns_path).exists() {
            return Err(Error::InvalidArgument(format!("network namespace {}: no such file", req.netns_path)));
        }
        let mut guard = self.lock();
        if let Some(pod) = guard.as_ref() {
            return Err(Error::AlreadyExists(format!("sandbox {} (this shim serves it)", pod.id)));
        }
        *guard = Some(Pod {
            id: req.sandbox_id.clone(),
            bundle: PathBuf::from(&req.bundle_path),
            netns: req.netns_path.clone(),
            config,
            phase: Phase::Created,
            created_at: SystemTime::now(),
            exited_at: None,
        });
        Ok(())
    }

    /// StartSandbox: the loop's thread enters the pod's namespaces; the answer is the shim's
    /// pid, whose `/proc/<pid>/ns` the pod's containers join. Must run on the main thread.
    pub fn start(&self, id: &str) -> Result<(u32, SystemTime)> {
        self.with_pod(id, |pod| {
            if pod.phase != Phase::Created {
                return Err(Error::FailedPrecondition(format!("sandbox {id} was started already")));
            }
            enter_namespaces(&pod.config, &pod.netns)?;
            pod.phase = Phase::Running;
            pod.created_at = SystemTime::now();
            log::info!("sandbox {id} started (bundle {})", pod.bundle.display());
            Ok((std::process::id(), pod.created_at))
        })
    }

    /// StopSandbox: the sandbox is over; WaitSandbox returns. The namespaces stay until the
    /// shim ends (ShutdownSandbox), as a pause container's would stay until it is deleted.
    pub fn stop(&self, id: &str) -> Result<()> {
        let at = self.with_pod(id, |pod| {
            if pod.phase != Phase::Stopped {
                pod.phase = Phase::Stopped;
                pod.exited_at = Some(SystemTime::now());
            }
            Ok(pod.exited_at)
        })?;
        self.exited.send_replace(at);
        Ok(())
    }

    /// WaitSandbox: the instant the sandbox stopped, once it has.
    pub async fn wait(&self, id: &str) -> Result<SystemTime> {
        self.with_pod(id, |_| Ok(()))?;
        let mut exited = self.exited.subscribe();
        let at = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::io("waiting for the sandbox", std::io::Error::other("the service is gone")))?;
        Ok(at.unwrap_or_else(SystemTime::now))
    }

    /// SandboxStatus.
    pub fn status(&self, id: &str) -> Result<api::SandboxStatusResponse> {
        self.with_pod(id, |pod| {
            let state = if pod.phase == Phase::Running { STATE_READY } else { STATE_NOT_READY };
            Ok(api::SandboxStatusResponse {
                sandbox_id: pod.id.clone(),
                pid: std::process::id(),
                state: state.into(),
                created_at: MessageField::some(timestamp(pod.created_at)),
                exited_at: pod.exited_at.map(timestamp).into(),
                ..Default::default()
            })
        })
    }

    /// ShutdownSandbox: ends the shim, which releases the namespaces.
    pub fn shutdown(&self, id: &str) -> Result<()> {
        self.with_pod(id, |_| Ok(()))?;
        (self.on_shutdown)();
        Ok(())
    }
}

/// The OCI platform of this build (Go's architecture names, which containerd compares).
pub fn platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform { os: "linux".into(), architecture: architecture.into(), ..Default::default() }
}

/// Makes the calling thread, which must be the process's main thread, a member of the pod's
/// namespaces: `netns` (if the pod has a network of its own), a new IPC and UTS namespace
/// unless the pod uses the node's; then sets the pod's hostname and sysctls in them.
fn enter_namespaces(pod: &PodConfig, netns: &str) -> Result<()> {
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

/// Every call runs on the loop: they only touch this service's state, and StartSandbox must
/// run on the main thread, which is the loop's.
#[async_trait::async_trait]
impl Sandbox for SandboxService {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::CreateSandboxRequest,
    ) -> ttrpc::Result<api::CreateSandboxResponse> {
        logged("CreateSandbox", &req.sandbox_id, "", async { self.create(&req).map(|()| Default::default()) }).await
    }

    async fn start_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::StartSandboxRequest,
    ) -> ttrpc::Result<api::StartSandboxResponse> {
        logged("StartSandbox", &req.sandbox_id, "", async {
            let (pid, created_at) = self.start(&req.sandbox_id)?;
            Ok(api::StartSandboxResponse {
                pid,
                created_at: MessageField::some(timestamp(created_at)),
                ..Default::default()
            })
        })
        .await
    }

    async fn platform(&self, _: &TtrpcContext, req: api::PlatformRequest) -> ttrpc::Result<api::PlatformResponse> {
        logged("Platform", &req.sandbox_id, "", async {
            self.with_pod(&req.sandbox_id, |_| Ok(()))?;
            Ok(api::PlatformResponse { platform: MessageField::some(platform()), ..Default::default() })
        })
        .await
    }

    async fn stop_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::StopSandboxRequest,
    ) -> ttrpc::Result<api::StopSandboxResponse> {
        logged("StopSandbox", &req.sandbox_id, "", async { self.stop(&req.sandbox_id).map(|()| Default::default()) })
            .await
    }

    async fn wait_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::WaitSandboxRequest,
    ) -> ttrpc::Result<api::WaitSandboxResponse> {
        logged("WaitSandbox", &req.sandbox_id, "", async {
            let at = self.wait(&req.sandbox_id).await?;
            Ok(api::WaitSandboxResponse {
                exit_status: 0,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            })
        })
        .await
    }

    async fn sandbox_status(
        &self,
        _: &TtrpcContext,
        req: api::SandboxStatusRequest,
    ) -> ttrpc::Result<api::SandboxStatusResponse> {
        logged("SandboxStatus", &req.sandbox_id, "", async { self.status(&req.sandbox_id) }).await
    }

    async fn ping_sandbox(&self, _: &TtrpcContext, req: api::PingRequest) -> ttrpc::Result<api::PingResponse> {
        logged("PingSandbox", &req.sandbox_id, "", async {
            self.with_pod(&req.sandbox_id, |_| Ok(()))?;
            Ok(Default::default())
        })
        .await
    }

    async fn shutdown_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::ShutdownSandboxRequest,
    ) -> ttrpc::Result<api::ShutdownSandboxResponse> {
        logged("ShutdownSandbox", &req.sandbox_id, "", async {
            self.shutdown(&req.sandbox_id).map(|()| Default::default())
        })
        .await
    }

    async fn sandbox_metrics(
        &self,
        _: &TtrpcContext,
        req: api::SandboxMetricsRequest,
    ) -> ttrpc::Result<api::SandboxMetricsResponse> {
        logged("SandboxMetrics", &req.sandbox_id, "", async {
            self.with_pod(&req.sandbox_id, |_| Ok(()))?;
            Err(Error::Unimplemented("SandboxMetrics"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a field: key, then a varint or length-delimited bytes.
    fn field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    fn varint_field(number: u32, v: u8) -> Vec<u8> {
        vec![(number << 3) as u8, v]
    }

    /// A PodSandboxConfig as the kubelet sends it: metadata, hostname, log dir, linux with
    /// cgroup parent, namespaces and two sysctls.
    fn pod_config(network: u8, pid: u8, ipc: u8) -> Vec<u8> {
        let namespaces = [varint_field(1, network), varint_field(2, pid), varint_field(3, ipc)].concat();
        let security = field(1, &namespaces);
        let sysctl = |k: &str, v: &str| field(3, &[field(1, k.as_bytes()), field(2, v.as_bytes())].concat());
        let linux = [
            field(1, b"/kubepods/pod1"),
            field(2, &security),
            sysctl("net.ipv4.ip_unprivileged_port_start", "0"),
            sysctl("kernel.shm_rmid_forced", "1"),
        ]
        .concat();
        [field(1, &field(1, b"pod1")), field(2, b"pod1-host"), field(3, b"/var/log/pods/x"), field(8, &linux)].concat()
    }

    #[test]
    fn decodes_what_the_kubelet_sends() {
        let pod = PodConfig::decode(&pod_config(0, 1, 0)).unwrap();
        assert_eq!(pod.hostname, "pod1-host");
        assert_eq!(pod.cgroup_parent, "/kubepods/pod1");
        assert_eq!((pod.network, pod.pid, pod.ipc), (NamespaceMode::Pod, NamespaceMode::Container, NamespaceMode::Pod));
        assert_eq!(pod.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!(pod.sysctls["kernel.shm_rmid_forced"], "1");
        assert!(pod.own_ipc() && pod.own_uts());

        let host = PodConfig::decode(&pod_config(2, 2, 2)).unwrap();
        assert!(!host.own_ipc() && !host.own_uts(), "hostNetwork and hostIPC: the node's namespaces");
        assert_eq!(host.pid, NamespaceMode::Node);
    }

    #[test]
    fn malformed_configs_are_invalid_arguments() {
        for bytes in [&[0x12, 9, b'x'][..], &[0x80], &[0x0b], &[0x42, 2, 0x0b, 0]] {
            let err = PodConfig::decode(bytes).unwrap_err();
            assert_eq!(err.code(), ttrpc::Code::INVALID_ARGUMENT, "{bytes:?}: {err}");
        }
        assert_eq!(PodConfig::decode(&[]).unwrap(), PodConfig::default());
    }

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

    fn create_request(id: &str, config: Vec<u8>) -> api::CreateSandboxRequest {
        api::CreateSandboxRequest {
            sandbox_id: id.into(),
            bundle_path: "/run/b".into(),
            options: MessageField::some(tether_protos::protobuf::well_known_types::any::Any {
                type_url: "runtime.v1.PodSandboxConfig".into(),
                value: config,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn one_sandbox_per_shim_and_its_errors() {
        let service = SandboxService::new(|| {});
        assert!(!service.holds_shim());
        assert_eq!(service.status("s1").unwrap_err().code(), ttrpc::Code::NOT_FOUND);
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        assert!(service.holds_shim());
        let again = service.create(&create_request("s2", pod_config(2, 1, 2))).unwrap_err();
        assert_eq!(again.code(), ttrpc::Code::ALREADY_EXISTS);
        assert_eq!(service.stop("s2").unwrap_err().code(), ttrpc::Code::NOT_FOUND);
        let status = service.status("s1").unwrap();
        assert_eq!((status.state.as_str(), status.pid), (STATE_NOT_READY, std::process::id()));
    }

    #[test]
    fn shared_pid_namespaces_and_missing_netns_are_refused() {
        let service = SandboxService::new(|| {});
        let err = service.create(&create_request("s1", pod_config(2, 0, 2))).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::UNIMPLEMENTED, "{err}");
        let mut req = create_request("s1", pod_config(0, 1, 0));
        req.netns_path = "/nonexistent/netns".into();
        assert_eq!(service.create(&req).unwrap_err().code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(!service.holds_shim());
    }

    #[test]
    fn stop_ends_the_wait() {
        let service = Arc::new(SandboxService::new(|| {}));
        // hostNetwork and hostIPC: Start enters no namespace, so it runs in the test too
        // (off the main thread it must refuse, and does).
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        let waiter = {
            let service = service.clone();
            crate::rt::spawn(async move { service.wait("s1").await })
        };
        service.stop("s1").unwrap();
        let exited = crate::rt::handle().block_on(waiter).unwrap().unwrap();
        let status = service.status("s1").unwrap();
        assert_eq!(status.state, STATE_NOT_READY);
        assert_eq!(status.exited_at.unwrap(), timestamp(exited));
    }

    #[test]
    fn start_refuses_other_threads() {
        let service = SandboxService::new(|| {});
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        let err = std::thread::scope(|s| s.spawn(|| service.start("s1")).join().unwrap()).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION, "{err}");
    }

    #[test]
    fn platform_is_linux_with_gos_architecture_names() {
        let p = platform();
        assert_eq!(p.os, "linux");
        assert!(!p.architecture.is_empty() && p.architecture != "x86_64" && p.architecture != "aarch64");
    }
}
