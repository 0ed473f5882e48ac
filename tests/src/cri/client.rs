//! A blocking client of containerd's CRI gRPC API (runtime.v1, the version the kubelet
//! speaks; containerd 1.6 also serves v1alpha2), on containerd's unix socket, with k8s-cri's
//! tonic stubs. Each call is bounded in time; the tests are synchronous, so the client owns a
//! single-threaded tokio runtime and blocks on it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Response, Status};

/// How long one call may take (StopContainer adds its grace period).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to the CRI API on containerd's gRPC socket.
    pub fn connect(socket: &Path) -> CriClient {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let path: PathBuf = socket.to_path_buf();
        // The URI is a placeholder: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://[::]:50051");
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }));
        let channel = runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, connect).await })
            .unwrap_or_else(|_| panic!("connecting to the CRI on {} timed out", socket.display()))
            .unwrap_or_else(|e| panic!("connecting to the CRI on {}: {e}", socket.display()));
        CriClient { runtime, channel }
    }

    /// Runs one call of the RuntimeService, bounded by the call timeout.
    pub fn runtime_call<T, F>(&self, call: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T, Status>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        self.block(call(RuntimeServiceClient::new(self.channel.clone())))
    }

    /// Runs one call of the ImageService, bounded by the call timeout.
    pub fn image_call<T, F>(&self, call: impl FnOnce(ImageServiceClient<Channel>) -> F) -> Result<T, Status>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        self.block(call(ImageServiceClient::new(self.channel.clone())))
    }

    fn block<T>(&self, call: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, Status> {
        self.runtime.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(result) => result.map(Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}"))),
            }
        })
    }

    // ---- the calls the tests make -------------------------------------------------------

    pub fn version(&self) -> Result<cri::VersionResponse, Status> {
        self.runtime_call(|mut c| async move { c.version(cri::VersionRequest::default()).await })
    }

    pub fn image_status(&self, image: &str) -> Result<Option<cri::Image>, Status> {
        let req = cri::ImageStatusRequest { image: Some(image_spec(image)), verbose: false };
        self.image_call(|mut c| async move { c.image_status(req).await }).map(|r| r.image)
    }

    /// Whether the CRI plugin reports its pod network ready (a CNI config loaded).
    pub fn network_ready(&self) -> Result<bool, Status> {
        let status = self.runtime_call(|mut c| async move { c.status(cri::StatusRequest::default()).await })?;
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        Ok(conditions.iter().any(|c| c.r#type == "NetworkReady" && c.status))
    }

    /// RunPodSandbox on `handler`; the sandbox id.
    pub fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let req = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: handler.into() };
        self.runtime_call(|mut c| async move { c.run_pod_sandbox(req).await }).map(|r| r.pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.runtime_call(|mut c| async move { c.stop_pod_sandbox(req).await }).map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.runtime_call(|mut c| async move { c.remove_pod_sandbox(req).await }).map(drop)
    }

    /// PodSandboxStatus, verbose (its `info` carries the sandbox's pid and runtime).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatusResponse, Status> {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
        self.runtime_call(|mut c| async move { c.pod_sandbox_status(req).await })
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<cri::PodSandbox>, Status> {
        let req = cri::ListPodSandboxRequest::default();
        self.runtime_call(|mut c| async move { c.list_pod_sandbox(req).await }).map(|r| r.items)
    }

    /// CreateContainer in pod `pod` (created from `pod_config`); the container id.
    pub fn create_container(
        &self,
        pod: &str,
        config: cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        self.runtime_call(|mut c| async move { c.create_container(req).await }).map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let req = cri::StartContainerRequest { container_id: id.into() };
        self.runtime_call(|mut c| async move { c.start_container(req).await }).map(drop)
    }

    /// StopContainer with a grace period of `grace` seconds (SIGTERM, then SIGKILL).
    pub fn stop_container(&self, id: &str, grace: i64) -> Result<(), Status> {
        let req = cri::StopContainerRequest { container_id: id.into(), timeout: grace };
        self.runtime_call(|mut c| async move { c.stop_container(req).await }).map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), Status> {
        let req = cri::RemoveContainerRequest { container_id: id.into() };
        self.runtime_call(|mut c| async move { c.remove_container(req).await }).map(drop)
    }

    /// ContainerStatus, verbose (its `info` carries the init's pid).
    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatusResponse, Status> {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: true };
        self.runtime_call(|mut c| async move { c.container_status(req).await })
    }

    /// The containers of pod `pod`.
    pub fn list_containers(&self, pod: &str) -> Result<Vec<cri::Container>, Status> {
        let filter = cri::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() };
        let req = cri::ListContainersRequest { filter: Some(filter) };
        self.runtime_call(|mut c| async move { c.list_containers(req).await }).map(|r| r.containers)
    }

    /// ExecSync of `cmd` with a timeout of `timeout` seconds (0: none).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, Status> {
        let req = cri::ExecSyncRequest { container_id: id.into(), cmd: strings(cmd), timeout };
        self.runtime_call(|mut c| async move { c.exec_sync(req).await })
    }

    /// Exec: the streaming server's URL for `cmd` (stdout and stderr, no stdin, no tty).
    pub fn exec_url(&self, id: &str, cmd: &[&str]) -> Result<String, Status> {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: strings(cmd),
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        self.runtime_call(|mut c| async move { c.exec(req).await }).map(|r| r.url)
    }

    /// Attach: the streaming server's URL for the container's stdio.
    pub fn attach_url(&self, id: &str, stdin: bool) -> Result<String, Status> {
        let req = cri::AttachRequest { container_id: id.into(), stdin, stdout: true, stderr: true, tty: false };
        self.runtime_call(|mut c| async move { c.attach(req).await }).map(|r| r.url)
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, Status> {
        let req = cri::ContainerStatsRequest { container_id: id.into() };
        self.runtime_call(|mut c| async move { c.container_stats(req).await }).map(|r| r.stats.unwrap_or_default())
    }

    /// ListContainerStats and ListPodSandboxStats of every pod: what a kubelet asks every
    /// housekeeping interval. The number of containers and of pods they reported.
    pub fn list_all_stats(&self) -> Result<(usize, usize), Status> {
        let containers = self
            .runtime_call(
                |mut c| async move { c.list_container_stats(cri::ListContainerStatsRequest::default()).await },
            )?
            .stats
            .len();
        let pods = self
            .runtime_call(
                |mut c| async move { c.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default()).await },
            )?
            .stats
            .len();
        Ok((containers, pods))
    }

    pub fn update_container_resources(&self, id: &str, linux: cri::LinuxContainerResources) -> Result<(), Status> {
        let req =
            cri::UpdateContainerResourcesRequest { container_id: id.into(), linux: Some(linux), ..Default::default() };
        self.runtime_call(|mut c| async move { c.update_container_resources(req).await }).map(drop)
    }

    pub fn reopen_container_log(&self, id: &str) -> Result<(), Status> {
        let req = cri::ReopenContainerLogRequest { container_id: id.into() };
        self.runtime_call(|mut c| async move { c.reopen_container_log(req).await }).map(drop)
    }
}

/// An image reference as the CRI takes it.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
