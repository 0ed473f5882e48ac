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
//! container in them) does: they are held by no mount, so nothing of them is left when the
//! shim is killed. The shim has no other thread, and needs none of the host's namespaces: it
//! only speaks over unix sockets named by path, which work from any network namespace. The
//! runtime binaries it starts from then on start in the pod's namespaces; each container
//! joins or creates what its spec names, and one the spec leaves out is one the pod shares
//! with the node, as the shim does.
//!
//! A pod whose containers share one PID namespace (`shareProcessNamespace`) gets a PID 1 of
//! tether's own (`init`), whose pid StartSandbox answers instead. The pod's files (`files`)
//! include its one mount, the pod's shm, which ShutdownSandbox and the `delete` subcommand
//! unmount.
//!
//! | module | what |
//! | --- | --- |
//! | `pod` | what of the CRI's PodSandboxConfig the shim acts on |
//! | `namespaces` | the pod's namespaces, hostname and sysctls, entered at StartSandbox |
//! | `files` | the pod's hostname, hosts, resolv.conf and shm, bound into its containers |
//! | `init` | the PID 1 of a pod whose containers share a PID namespace |
//! | `tasks` | the pod's containers: StopSandbox stops what is left |
//! | `metrics` | SandboxMetrics: the pod cgroup's metrics |

pub mod files;
pub mod init;
mod metrics;
mod namespaces;
mod pod;
mod tasks;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tether_protos::{
    protobuf::MessageField,
    sandbox_api as api,
    sandbox_async::{create_sandbox, Sandbox},
    ttrpc::{self, r#async::TtrpcContext},
    types::platform::Platform,
};
use tokio::sync::watch;

pub use self::pod::{NamespaceMode, PodConfig};
pub use self::tasks::PodTasks;
use crate::{
    error::{Error, Result},
    events::timestamp,
    service::logged,
};

/// The state names containerd's own pod sandboxes report (CRI's sandbox store), which the CRI
/// plugin shows for a sandbox of any controller.
const STATE_READY: &str = "SANDBOX_READY";
const STATE_NOT_READY: &str = "SANDBOX_NOTREADY";

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
    /// The pod's init, for a pod whose containers share a PID namespace: its pid and handle.
    init: Option<(u32, crate::pidfd::Handle)>,
}

impl Pod {
    /// The pid whose `/proc/<pid>/ns` holds the pod's namespaces: the init's if it has one,
    /// else the shim's, whose main thread entered them.
    fn pid(&self) -> u32 {
        self.init.as_ref().map_or_else(std::process::id, |(pid, _)| *pid)
    }

    /// Kills the pod's init, and with it whatever still runs in the pod's PID namespace.
    fn kill_init(&self) {
        if let Some((pid, handle)) = &self.init {
            if let Err(e) = handle.signal(libc::SIGKILL) {
                log::debug!("killing the pod's init {pid}: {e}");
            }
        }
    }
}

/// The sandbox service of one shim. A shim serves at most one sandbox (containerd starts a
/// shim per sandbox, named by the sandbox id).
pub struct SandboxService {
    pod: Mutex<Option<Pod>>,
    /// The pod's containers (the shim's process table).
    tasks: Arc<dyn PodTasks>,
    /// The exit (at StopSandbox) that WaitSandbox returns.
    exited: watch::Sender<Option<SystemTime>>,
    /// Ends the shim (ShutdownSandbox), once the reply is on its way.
    on_shutdown: Box<dyn Fn() + Send + Sync>,
}

impl SandboxService {
    /// A service with no sandbox yet, whose containers are `tasks`; `on_shutdown` ends the
    /// shim.
    pub fn new(tasks: Arc<dyn PodTasks>, on_shutdown: impl Fn() + Send + Sync + 'static) -> Self {
        SandboxService {
            pod: Mutex::new(None),
            tasks,
            exited: watch::channel(None).0,
            on_shutdown: Box::new(on_shutdown),
        }
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
            init: None,
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
            namespaces::enter(&pod.config, &pod.netns)?;
            files::make(&pod.bundle, &pod.config)?;
            if pod.config.pid == NamespaceMode::Pod {
                pod.init = Some(init::start()?);
            }
            pod.phase = Phase::Running;
            pod.created_at = SystemTime::now();
            log::info!("sandbox {id} started (bundle {}, pid {})", pod.bundle.display(), pod.pid());
            Ok((pod.pid(), pod.created_at))
        })
    }

    /// StopSandbox: kills the containers still running and waits at most `within` for their
    /// exits; then the sandbox is over and WaitSandbox returns. The namespaces stay until the
    /// shim ends (ShutdownSandbox), as a pause container's would stay until it is deleted.
    pub async fn stop(&self, id: &str, within: Duration) -> Result<()> {
        self.with_pod(id, |_| Ok(()))?;
        tasks::stop_all(&self.tasks, within).await?;
        let at = self.with_pod(id, |pod| {
            pod.kill_init();
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
                pid: pod.pid(),
                state: state.into(),
                created_at: MessageField::some(timestamp(pod.created_at)),
                exited_at: pod.exited_at.map(timestamp).into(),
                ..Default::default()
            })
        })
    }

    /// ShutdownSandbox: unmounts the pod's shm and ends the shim, which releases the
    /// namespaces.
    pub fn shutdown(&self, id: &str) -> Result<()> {
        self.with_pod(id, |pod| {
            pod.kill_init();
            files::release(&pod.bundle);
            Ok(())
        })?;
        (self.on_shutdown)();
        Ok(())
    }

    /// Binds the pod's files into the spec of a container about to be created in bundle
    /// `container_bundle`, if it is a container of the running sandbox (see `files`).
    pub fn prepare_container(&self, container_bundle: &Path) -> Result<()> {
        let pod = self.lock().as_ref().filter(|p| p.phase == Phase::Running).map(|p| (p.id.clone(), p.bundle.clone()));
        match pod {
            Some((id, bundle)) => files::bind_into(container_bundle, &id, &bundle),
            None => Ok(()),
        }
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

/// Every call runs on the loop: StartSandbox must run on the main thread, which is the loop's;
/// the others touch this service's state or read cgroup files, as the task API's Stats does.
/// StopSandbox's kills alone run the runtime, awaited like every runtime call (`tasks`).
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
        let within = match req.timeout_secs {
            0 => tasks::DEFAULT_STOP_TIMEOUT,
            secs => Duration::from_secs(secs.into()),
        };
        logged("StopSandbox", &req.sandbox_id, "", async {
            self.stop(&req.sandbox_id, within).await.map(|()| Default::default())
        })
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
            let cgroup_parent = self.with_pod(&req.sandbox_id, |pod| Ok(pod.config.cgroup_parent.clone()))?;
            metrics::of_pod(&req.sandbox_id, &cgroup_parent)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::pod::tests::pod_config;
    use super::*;

    /// Containers that exit when killed, unless told to hang.
    #[derive(Default)]
    struct FakeTasks {
        live: Mutex<Vec<String>>,
        killed: Mutex<Vec<String>>,
        hang: bool,
        exits: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl PodTasks for FakeTasks {
        fn live(&self) -> Vec<String> {
            self.live.lock().unwrap().clone()
        }

        async fn kill(&self, id: &str) -> Result<()> {
            self.killed.lock().unwrap().push(id.to_string());
            if !self.hang {
                self.live.lock().unwrap().retain(|c| c != id);
                self.exits.notify_waiters();
            }
            Ok(())
        }

        async fn exited(&self, id: &str) -> Result<()> {
            loop {
                let exit = self.exits.notified();
                if !self.live().iter().any(|c| c == id) {
                    return Ok(());
                }
                exit.await;
            }
        }
    }

    fn service_over(tasks: FakeTasks) -> (Arc<FakeTasks>, SandboxService) {
        let tasks = Arc::new(tasks);
        (tasks.clone(), SandboxService::new(tasks, || {}))
    }

    fn service() -> SandboxService {
        service_over(FakeTasks::default()).1
    }

    fn stop(service: &SandboxService, id: &str, within: Duration) -> Result<()> {
        crate::rt::handle().block_on(service.stop(id, within))
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
        let service = service();
        assert!(!service.holds_shim());
        assert_eq!(service.status("s1").unwrap_err().code(), ttrpc::Code::NOT_FOUND);
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        assert!(service.holds_shim());
        let again = service.create(&create_request("s2", pod_config(2, 1, 2))).unwrap_err();
        assert_eq!(again.code(), ttrpc::Code::ALREADY_EXISTS);
        assert_eq!(stop(&service, "s2", Duration::ZERO).unwrap_err().code(), ttrpc::Code::NOT_FOUND);
        let status = service.status("s1").unwrap();
        assert_eq!((status.state.as_str(), status.pid), (STATE_NOT_READY, std::process::id()));
    }

    #[test]
    fn a_missing_netns_is_refused() {
        let service = service();
        let mut req = create_request("s1", pod_config(0, 1, 0));
        req.netns_path = "/nonexistent/netns".into();
        assert_eq!(service.create(&req).unwrap_err().code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(!service.holds_shim());
    }

    #[test]
    fn stop_ends_the_wait() {
        let service = Arc::new(service());
        // hostNetwork and hostIPC: Start enters no namespace, so it runs in the test too
        // (off the main thread it must refuse, and does).
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        let waiter = {
            let service = service.clone();
            crate::rt::spawn(async move { service.wait("s1").await })
        };
        stop(&service, "s1", Duration::ZERO).unwrap();
        let exited = crate::rt::handle().block_on(waiter).unwrap().unwrap();
        let status = service.status("s1").unwrap();
        assert_eq!(status.state, STATE_NOT_READY);
        assert_eq!(status.exited_at.unwrap(), timestamp(exited));
    }

    #[test]
    fn stop_kills_what_is_left_and_waits_for_its_exits() {
        let live = vec!["c1".to_string(), "c2".to_string()];
        let (tasks, service) = service_over(FakeTasks { live: Mutex::new(live.clone()), ..Default::default() });
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        stop(&service, "s1", Duration::from_secs(5)).unwrap();
        assert_eq!(*tasks.killed.lock().unwrap(), live);
        assert!(tasks.live().is_empty());
        assert_eq!(service.status("s1").unwrap().state, STATE_NOT_READY);
    }

    #[test]
    fn stop_fails_when_a_container_outlives_the_timeout() {
        let hanging = FakeTasks { live: Mutex::new(vec!["c1".into()]), hang: true, ..Default::default() };
        let (tasks, service) = service_over(hanging);
        service.create(&create_request("s1", pod_config(2, 1, 2))).unwrap();
        let err = stop(&service, "s1", Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{err}");
        assert_eq!(*tasks.killed.lock().unwrap(), ["c1"]);
        let status = service.status("s1").unwrap();
        assert!(status.exited_at.is_none(), "not stopped while a container runs: {status:?}");
    }

    #[test]
    fn start_refuses_other_threads() {
        let service = service();
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
