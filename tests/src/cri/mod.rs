//! The Kubernetes path: a private containerd with its CRI plugin on, images made by the
//! harness, and a CRI client, so that a test drives tether exactly as the kubelet does, one
//! runtime handler per executor.
//!
//! [`CriEnv::for_case`] starts the containerd (`Containerd::start_with_cri`), builds an
//! OCI archive with a pause image (the sandbox image: sleeps until SIGTERM) and a busybox
//! image from busybox-static, imports it into the `k8s.io` namespace and waits until the CRI
//! plugin lists both. Pause-based pods use the host's network (no CNI); pods of tether's own
//! sandboxes ([`Sandboxer::Shim`]) get a network namespace from an inert CNI plugin (see
//! [`CriEnv::network`]). Every pod has a cgroup parent of this containerd's own; their CRI logs
//! go below the temp dir. Dropping it stops and removes every pod through the CRI, then tears
//! the containerd down.

pub mod client;
pub mod config;
pub mod stream;

use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;

use crate::containerd::{cgroup_mount_points, mounted_below, Containerd, LogLevel};
use crate::env::{skip, Executor, CONTAINER_PATH};
use crate::process::wait_until;
use crate::runtime::Runtime;
use crate::{oci_image, rootfs};
use crate::{Case, Sandboxer};

pub use client::CriClient;
pub use config::{CriPlugin, BUSYBOX_IMAGE, SANDBOX_IMAGE};
pub use stream::{Stream, StreamOutput};

/// The containerd namespace of everything the CRI plugin does.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The pod namespace (Kubernetes') of the test pods.
const POD_NAMESPACE: &str = "tether-test";
/// How long the CRI plugin may take to see imported images.
const IMAGE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause entrypoint: sleep until SIGTERM, then exit 0 (PID 1 only gets signals it
/// handles; `wait` returns as soon as the trap fires).
const PAUSE: &str = "trap 'exit 0' TERM INT; sleep 2147483647 & wait";

/// A pod made by [`CriEnv::run_pod`].
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

pub struct CriEnv {
    pub runtime: Runtime,
    pub executor: Executor,
    /// Who holds this test's pods' namespaces: a pause container, or the pod's shim.
    pub sandboxer: Sandboxer,
    /// The runtime handler this test's pods run with.
    pub handler: &'static str,
    pub client: CriClient,
    /// Dropped last: removes tasks and containers, stops containerd, deletes the temp dir.
    pub containerd: Containerd,
}

impl CriEnv {
    /// A containerd of `case.daemon` with the CRI plugin, images imported, whose pods run on
    /// tether's `case.executor` (or on containerd's Go shim when that is the runtime under test),
    /// in pods of `case.sandboxer`. `None`, after saying why, for a case that cannot run: a
    /// tether executor or sandboxer when the runtime under test is not tether, tether's
    /// sandboxes on containerd 1.x or with the native executor.
    pub fn for_case(test: &str, case: Case) -> Option<CriEnv> {
        CriEnv::for_case_at(test, case, LogLevel::Debug)
    }

    /// [`CriEnv::for_case`] with containerd and its shims logging at `level` (the bench
    /// measures at containerd's default, info, as nodes run it).
    pub fn for_case_at(test: &str, case: Case, level: LogLevel) -> Option<CriEnv> {
        let Case { daemon, executor, sandboxer } = case;
        let runtime = Runtime::from_env();
        if let Some(why) = unsupported(case, &runtime) {
            skip(test, &why);
            return None;
        }
        let containerd = Containerd::start_with_cri(&runtime, daemon, executor, level);
        let work = containerd.dir().join("images");
        let archive = work.join("images.tar");
        let images = [
            oci_image::Image::new(SANDBOX_IMAGE).entrypoint(&["/bin/sh", "-c", PAUSE]).env(&[CONTAINER_PATH]),
            oci_image::Image::new(BUSYBOX_IMAGE).cmd(&["sh"]).env(&[CONTAINER_PATH]),
        ];
        oci_image::write_archive(&rootfs::build(&work.join("rootfs")), &images, &archive);
        oci_image::import(&containerd.ctr(K8S_NAMESPACE), &archive);
        let client = CriClient::connect(&containerd.address());
        let handler = match sandboxer {
            Sandboxer::Podsandbox => config::handler_for(executor, runtime.is_go_runc()),
            // Its executor is the containerd's default, `executor` (see the handler).
            Sandboxer::Shim => config::TETHER_SANDBOX_HANDLER,
        };
        let env = CriEnv { handler, runtime, executor, sandboxer, client, containerd };
        if sandboxer == Sandboxer::Shim {
            env.plugin().install_inert_cni();
            // The plugin loads a CNI config a moment after it appears.
            wait_until(IMAGE_SYNC_TIMEOUT, || env.client.network_ready().ok().filter(|ready| *ready))
                .unwrap_or_else(|| panic!("the CRI plugin never loaded the inert CNI config"));
        }
        // The plugin learns of imported images from containerd's events.
        for image in [SANDBOX_IMAGE, BUSYBOX_IMAGE] {
            wait_until(IMAGE_SYNC_TIMEOUT, || env.client.image_status(image).ok().flatten())
                .unwrap_or_else(|| panic!("the CRI plugin never listed the imported image {image}"));
        }
        Some(env)
    }

    /// The CRI plugin's settings.
    pub fn plugin(&self) -> &CriPlugin {
        self.containerd.cri().expect("the CRI plugin is on")
    }

    /// A pod named `name` on [`CriEnv::network`], in this containerd's cgroup parent, its logs
    /// in the temp dir.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let log_directory = self.plugin().pod_log_dir(name);
        std::fs::create_dir_all(&log_directory).expect("create the pod's log dir");
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: POD_NAMESPACE.into(),
                attempt: 0,
            }),
            log_directory: log_directory.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.plugin().cgroup_parent(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(self.namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox of pod `name` with this test's handler.
    pub fn run_pod(&self, name: &str) -> Pod {
        self.run_pod_with_pid(name, cri::NamespaceMode::Container)
    }

    /// RunPodSandbox of pod `name` whose PID namespace is `pid`: `Container` (one per
    /// container, the kubelet's default), `Pod` (shareProcessNamespace) or `Node` (hostPID).
    /// Its containers must ask for the same ([`with_pid_namespace`]).
    pub fn run_pod_with_pid(&self, name: &str, pid: cri::NamespaceMode) -> Pod {
        let mut config = self.pod_config(name);
        set_pid(
            config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()),
            pid,
        );
        let id = self
            .client
            .run_pod_sandbox(config.clone(), self.handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name} ({}): {e}", self.handler));
        Pod { id, config }
    }

    /// A busybox container `name` (attempt `attempt`) running `sh -c script`, its log at
    /// `<pod log dir>/<name>_<attempt>.log`.
    pub fn container_config(&self, name: &str, attempt: u32, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt }),
            image: Some(client::image_spec(BUSYBOX_IMAGE)),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}_{attempt}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(self.namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer + StartContainer; the container id.
    pub fn start_container(&self, pod: &Pod, config: cri::ContainerConfig) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let id = self
            .client
            .create_container(&pod.id, config, &pod.config)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
        self.client.start_container(&id).unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        id
    }

    /// The CRI log file of a container of `pod`.
    pub fn log_path(&self, pod: &Pod, config: &cri::ContainerConfig) -> PathBuf {
        PathBuf::from(&pod.config.log_directory).join(&config.log_path)
    }

    /// ContainerStatus of `id` (panics on errors).
    pub fn container_status(&self, id: &str) -> cri::ContainerStatus {
        self.client
            .container_status(id)
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .status
            .unwrap_or_else(|| panic!("ContainerStatus {id} without a status"))
    }

    /// Waits until container `id` is in `state`; its status.
    #[track_caller]
    pub fn wait_container_state(
        &self,
        id: &str,
        state: cri::ContainerState,
        timeout: Duration,
    ) -> cri::ContainerStatus {
        wait_until(timeout, || Some(self.container_status(id)).filter(|s| s.state == state as i32))
            .unwrap_or_else(|| panic!("container {id} never reached {state:?}: {:?}", self.container_status(id)))
    }

    /// Waits until container `id` runs its command: RUNNING, and its init has exec'd the
    /// `sh -c` of [`CriEnv::container_config`] (StartContainer can return while the runtime's
    /// init process is still on its way to exec). Its status.
    #[track_caller]
    pub fn wait_running(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let status = self.wait_container_state(id, cri::ContainerState::ContainerRunning, timeout);
        let pid = self.container_pid(id);
        let cmdline = || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        wait_until(timeout, || cmdline().starts_with(b"sh\0-c\0").then_some(())).unwrap_or_else(|| {
            panic!("container {id} (pid {pid}) never ran its command: {:?}", String::from_utf8_lossy(&cmdline()))
        });
        status
    }

    /// The host pid of container `id`'s init (from ContainerStatus' verbose info).
    pub fn container_pid(&self, id: &str) -> u32 {
        let resp = self.client.container_status(id).unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
        info_pid(&resp.info).unwrap_or_else(|| panic!("no pid in ContainerStatus info of {id}: {:?}", resp.info))
    }

    /// The executor of every container the shim of container `id` serves, as its debug dump
    /// (`tether-ctl --json dump`) names them, in its order.
    pub fn shim_executors(&self, id: &str) -> Vec<String> {
        let bundle = self.containerd.bundle(K8S_NAMESPACE, id);
        let mut ctl = std::process::Command::new(crate::runtime::tether_ctl_binary());
        ctl.arg("--bundle").arg(&bundle).args(["--json", "dump"]);
        let out = crate::process::run(ctl, None, Duration::from_secs(30));
        let dump: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
        let containers = dump["containers"].as_array().unwrap_or_else(|| panic!("no containers in {dump}"));
        containers.iter().map(|c| c["executor"].as_str().unwrap_or_default().to_string()).collect()
    }

    /// PodSandboxStatus of `pod` (panics on errors).
    pub fn sandbox_status(&self, pod: &Pod) -> cri::PodSandboxStatus {
        self.client
            .pod_sandbox_status(&pod.id)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {}: {e}", pod.id))
            .status
            .unwrap_or_else(|| panic!("PodSandboxStatus {} without a status", pod.id))
    }

    /// The host pid of pod `pod`'s sandbox (pause) process, and the sandbox's verbose info.
    pub fn sandbox_info(&self, pod: &str) -> (u32, serde_json::Value) {
        let resp = self.client.pod_sandbox_status(pod).unwrap_or_else(|e| panic!("PodSandboxStatus {pod}: {e}"));
        let pid =
            info_pid(&resp.info).unwrap_or_else(|| panic!("no pid in PodSandboxStatus info of {pod}: {:?}", resp.info));
        (pid, parse_info(&resp.info))
    }

    /// The network of this test's pods and containers: the host's for pause-based pods;
    /// a network namespace of the pod's own (from the inert CNI plugin) for tether's sandboxes,
    /// because containerd 2.1 crashes on a hostNetwork pod of a shim sandboxer
    /// (containerd#12983, fixed by containerd#13131).
    pub fn network(&self) -> cri::NamespaceMode {
        match self.sandboxer {
            Sandboxer::Podsandbox => cri::NamespaceMode::Node,
            Sandboxer::Shim => cri::NamespaceMode::Pod,
        }
    }

    /// The pod's network ([`CriEnv::network`]), a pid namespace per container (the kubelet's
    /// default), the pod's IPC.
    fn namespaces(&self) -> cri::NamespaceOption {
        cri::NamespaceOption {
            network: self.network() as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }
    }

    /// The shim serving `pod`: the one started for the pod's id (its sandbox, pause or not).
    pub fn shim_of(&self, pod: &Pod) -> u32 {
        let named = |argv: &[String]| argv.windows(2).any(|w| w[0] == "-id" && w[1] == pod.id);
        let shims = self.containerd.shim_processes();
        shims
            .iter()
            .find(|(_, argv)| named(argv))
            .map(|(pid, _)| *pid)
            .unwrap_or_else(|| panic!("no shim serves pod {}: {shims:?}", pod.id))
    }

    /// Pids of the shims serving this containerd.
    pub fn shim_pids(&self) -> Vec<u32> {
        self.containerd.shim_processes().into_iter().map(|(pid, _)| pid).collect()
    }

    /// Stops and removes every pod (best effort, for teardown).
    fn remove_pods(&self) {
        for pod in self.client.list_pod_sandboxes().unwrap_or_default() {
            let _ = self.client.stop_pod_sandbox(&pod.id);
            let _ = self.client.remove_pod_sandbox(&pod.id);
        }
    }

    /// What the pods left behind once they are removed: shims still serving this containerd,
    /// mounts below its dir, cgroups below its pods' cgroup parent, runtime state of tether's
    /// handlers. Waits up to 10 s for it to go (shims exit after their last task).
    pub fn leftovers(&self) -> Vec<String> {
        let now = || {
            let plugin = self.plugin();
            let mut left: Vec<String> = self
                .containerd
                .shim_processes()
                .into_iter()
                .map(|(pid, argv)| format!("shim {pid}: {}", argv.join(" ")))
                .collect();
            left.extend(mounted_below(self.containerd.dir()).into_iter().map(|m| format!("mount {}", m.display())));
            for hierarchy in cgroup_mount_points() {
                let parent = hierarchy.join(plugin.cgroup_parent().trim_start_matches('/'));
                let children = std::fs::read_dir(&parent).into_iter().flatten().flatten();
                left.extend(children.filter(|c| c.path().is_dir()).map(|c| format!("cgroup {}", c.path().display())));
            }
            for executor in [Executor::Runc, Executor::Native] {
                let entries = std::fs::read_dir(plugin.runtime_root(executor)).into_iter().flatten().flatten();
                left.extend(entries.map(|e| format!("runtime state {}", e.path().display())));
            }
            left
        };
        wait_until(Duration::from_secs(10), || Some(now()).filter(Vec::is_empty)).unwrap_or_else(now)
    }
}

impl Drop for CriEnv {
    /// Removes every pod, then fails the test (unless it failed already) if anything of them
    /// is left.
    fn drop(&mut self) {
        if !self.containerd.is_running() {
            return;
        }
        self.remove_pods();
        if !std::thread::panicking() {
            let left = self.leftovers();
            assert!(left.is_empty(), "the removed pods left behind:\n  {}", left.join("\n  "));
        }
    }
}

/// `config` with the PID namespace `pid` (see [`CriEnv::run_pod_with_pid`]).
pub fn with_pid_namespace(mut config: cri::ContainerConfig, pid: cri::NamespaceMode) -> cri::ContainerConfig {
    set_pid(
        config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()),
        pid,
    );
    config
}

fn set_pid(options: Option<&mut cri::NamespaceOption>, pid: cri::NamespaceMode) {
    options.expect("the harness' configs name their namespaces").pid = pid as i32;
}

/// Why `case` cannot run with `runtime` under test, if it cannot.
fn unsupported(case: Case, runtime: &Runtime) -> Option<String> {
    if case.executor != Executor::Runc && !runtime.is_tether() {
        return Some(format!("the {} executor is tether's (runtime is {})", case.executor.name(), runtime.name));
    }
    if case.sandboxer == Sandboxer::Podsandbox {
        return None;
    }
    if !runtime.is_tether() {
        return Some(format!("the shim sandboxer's Sandbox API is tether's (runtime is {})", runtime.name));
    }
    (!case.daemon.is_v2()).then(|| "sandboxer = \"shim\" is containerd 2.x's".into())
}

/// containerd puts its verbose details in `info["info"]`, a JSON document.
fn parse_info(info: &std::collections::HashMap<String, String>) -> serde_json::Value {
    info.get("info").and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
}

fn info_pid(info: &std::collections::HashMap<String, String>) -> Option<u32> {
    parse_info(info)["pid"].as_u64().map(|p| p as u32).filter(|p| *p > 0)
}
