//! The CRI plugin's part of the private containerd's config, and the tether configs its
//! runtime handlers name.
//!
//! Everything the plugin writes stays in the temp dir: its root and state are derived from
//! containerd's (`<root>/io.containerd.grpc.v1.cri`), the CNI dirs (which it would otherwise
//! create under /etc/cni) are the temp dir's, the stream server listens on 127.0.0.1 only.
//! Pods run with host networking, so no CNI plugin is needed and the host's network is never
//! changed. The runtime state dirs are short paths of this test's own under /run/tether:
//! libcontainer puts a unix socket in `<root>/<64-char container id>/`, which would overrun the
//! 108-byte socket path limit below a temp dir.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::containerd::remove_empty_cgroups;
use crate::daemon::Daemon;
use crate::env::{Executor, TetherConfig};

/// The runtime handler that runs pods on tether's runc executor.
pub const TETHER_HANDLER: &str = "tether";
/// The runtime handler that runs pods on tether's native executor.
pub const TETHER_NATIVE_HANDLER: &str = "tether-native";
/// containerd's Go shim, the reference behaviour.
pub const GO_RUNC_HANDLER: &str = "runc";
/// The handlers whose tether config is their options table (containerd 2.x sends it as
/// runtimeoptions' `config_body`), per executor.
pub const TETHER_INLINE_HANDLER: &str = "tether-inline";
pub const TETHER_NATIVE_INLINE_HANDLER: &str = "tether-native-inline";
/// The handler whose pods are tether's own sandboxes, without a pause container
/// (`sandboxer = "shim"`, containerd 2.x only). It has no options: containerd 2.1 fails the
/// Task API create of a sandboxed container whose handler has runtime options other than
/// runc's ("can't unmarshal type runtimeoptions.v1.Options"). Its executor is therefore the
/// node's default config's, which the containerd's environment names
/// ([`crate::Containerd::start_with_cri`]).
pub const TETHER_SANDBOX_HANDLER: &str = "tether-sandbox";

/// The pause image every pod's sandbox runs (imported by the harness, never pulled).
pub const SANDBOX_IMAGE: &str = "tether.test/pause:1";
/// The image of the test containers.
pub const BUSYBOX_IMAGE: &str = "tether.test/busybox:1";

/// The CRI plugin settings of one private containerd.
#[derive(Clone, Debug)]
pub struct CriPlugin {
    /// The temp dir containerd lives in.
    dir: PathBuf,
    /// The streaming server's port on 127.0.0.1.
    pub stream_port: u16,
    /// A name of this containerd's own (from its temp dir), for state dirs and cgroups.
    pub tag: String,
}

impl CriPlugin {
    /// Prepares the CRI plugin of the containerd in `dir`: the CNI dirs, the tether configs
    /// of the handlers, a free stream port.
    pub fn prepare(dir: &Path) -> CriPlugin {
        let suffix = dir
            .file_name()
            .map(|n| n.to_string_lossy().rsplit('.').next().unwrap_or("x").to_owned())
            .unwrap_or_default();
        let plugin = CriPlugin { dir: dir.to_path_buf(), stream_port: free_port(), tag: format!("cri-{suffix}") };
        for d in ["cni/bin", "cni/conf", "pods"] {
            fs::create_dir_all(dir.join(d)).expect("create CRI dirs");
        }
        for executor in [Executor::Runc, Executor::Native] {
            let root = plugin.runtime_root(executor);
            let config = TetherConfig {
                executor: Some(executor.name().into()),
                root: (executor == Executor::Runc).then(|| root.clone()),
                native_root: (executor == Executor::Native).then_some(root),
                ..Default::default()
            };
            config.write(&plugin.handler_config(executor));
        }
        plugin
    }

    /// Installs a CNI network whose one plugin, a shell script, only reports an address
    /// (10.88.0.2 on eth0) and changes nothing: containerd then makes a network namespace for
    /// each pod that is not on the host's network (mounted below the temp dir) and leaves it
    /// with a loopback device alone. The host's network is never touched.
    pub fn install_inert_cni(&self) {
        let plugin = self.dir.join("cni/bin/tether-inert");
        fs::write(
            &plugin,
            "#!/bin/sh\n\
             cat >/dev/null\n\
             case \"$CNI_COMMAND\" in\n\
             ADD) printf '{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"%s\"}],\"ips\":[{\"address\":\"10.88.0.2/16\",\"interface\":0}]}' \"$CNI_NETNS\" ;;\n\
             VERSION) printf '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}' ;;\n\
             esac\n",
        )
        .expect("write the inert CNI plugin");
        fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod the plugin");
        fs::write(
            self.dir.join("cni/conf/10-tether-inert.conflist"),
            r#"{"cniVersion":"1.0.0","name":"tether-inert","plugins":[{"type":"tether-inert"}]}"#,
        )
        .expect("write the CNI config");
    }

    /// The tether config a handler names (`ConfigPath`).
    pub fn handler_config(&self, executor: Executor) -> PathBuf {
        self.dir.join(format!("tether-{}.toml", executor.name()))
    }

    /// The runtime state dir of `executor`'s handler (removed, when empty, at teardown).
    pub fn runtime_root(&self, executor: Executor) -> PathBuf {
        Path::new("/run/tether").join(format!("{}-{}", self.tag, executor.name()))
    }

    /// Where pods keep their CRI logs (`<dir>/pods/<pod>/`).
    pub fn pod_log_dir(&self, pod: &str) -> PathBuf {
        self.dir.join("pods").join(pod)
    }

    /// The cgroup parent of this containerd's pods (`/<tag>`, cgroupfs).
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.tag)
    }

    /// Removes what outlives the pods once containerd has stopped: the empty cgroup parent,
    /// the runtime state dirs when empty.
    pub fn remove_leftovers(&self) {
        remove_empty_cgroups(&self.tag);
        for executor in [Executor::Runc, Executor::Native] {
            let _ = fs::remove_dir(self.runtime_root(executor));
        }
    }

    /// The CRI plugins' sections of `daemon`'s config: 1.x's one plugin (config version 2),
    /// or 2.x's runtime, images and API plugins (version 3).
    pub fn toml(&self, daemon: Daemon) -> String {
        let d = self.dir.display();
        let port = self.stream_port;
        let api = r#"plugins."io.containerd.grpc.v1.cri""#;
        // 2.x: the runtime settings are a plugin of their own, images and streams others.
        let (runtime, preamble, containerd_keys, epilogue) = if daemon.is_v2() {
            let images = r#"plugins."io.containerd.cri.v1.images""#;
            (
                r#"plugins."io.containerd.cri.v1.runtime""#.to_string(),
                format!("  enable_cdi = false\n  cdi_spec_dirs = [\"{d}/cdi\"]\n"),
                String::new(),
                format!(
                    "[{images}]\n  snapshotter = \"overlayfs\"\n  [{images}.pinned_images]\n    sandbox = \"{SANDBOX_IMAGE}\"\n\
                     [{api}]\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"{port}\"\n"
                ),
            )
        } else {
            (
                api.to_string(),
                format!(
                    "  sandbox_image = \"{SANDBOX_IMAGE}\"\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"{port}\"\n"
                ),
                "    snapshotter = \"overlayfs\"\n".to_string(),
                String::new(),
            )
        };
        let runtimes = format!("{runtime}.containerd.runtimes");
        let tether = |name: &str, executor: Executor| {
            format!(
                r#"
    [{runtimes}.{name}]
      runtime_type = "io.containerd.tether.v2"
      [{runtimes}.{name}.options]
        ConfigPath = "{}"
"#,
                self.handler_config(executor).display()
            )
        };
        // 2.x passes a handler's options table as tether's config (runtimeoptions' config_body)
        // when it names no ConfigPath: the same settings as the handler's file, inline. 1.x
        // passes a path alone: no such handlers there.
        let inline = |name: &str, executor: Executor| {
            if !daemon.is_v2() {
                return String::new();
            }
            let section = executor.name();
            format!(
                r#"
    [{runtimes}.{name}]
      runtime_type = "io.containerd.tether.v2"
      [{runtimes}.{name}.options]
        executor = "{section}"
        [{runtimes}.{name}.options.{section}]
          root = "{}"
"#,
                self.runtime_root(executor).display()
            )
        };
        // 2.x: tether's Sandbox API instead of a pause container.
        let tether_sandbox = if daemon.is_v2() {
            format!(
                r#"
    [{runtimes}.{TETHER_SANDBOX_HANDLER}]
      runtime_type = "io.containerd.tether.v2"
      sandboxer = "shim"
"#
            )
        } else {
            String::new()
        };
        format!(
            r#"
[{runtime}]
{preamble}{netns}  # root cannot lower oom_score_adj here (no CAP_SYS_RESOURCE); the plugin would try.
  restrict_oom_score_adj = true
  # Loading an AppArmor profile would change the host.
  disable_apparmor = true
  enable_selinux = false
  [{runtime}.containerd]
    default_runtime_name = "{GO_RUNC_HANDLER}"
{containerd_keys}{tether_runc}{tether_native}{tether_inline}{tether_native_inline}{tether_sandbox}
    [{runtimes}.{GO_RUNC_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [{runtimes}.{GO_RUNC_HANDLER}.options]
        Root = "{d}/runc-root"
  [{runtime}.cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
{cni_keys}{epilogue}"#,
            // A pod's network namespace is mounted below the temp dir, not /var/run/netns.
            // 2.x: the pod's loopback is brought up by containerd itself, not by CNI's
            // `loopback` plugin (which the inert network of `install_inert_cni` lacks).
            cni_keys = if daemon.is_v2() { "    use_internal_loopback = true\n" } else { "" },
            netns = if daemon.is_v2() { "  netns_mounts_under_state_dir = true\n" } else { "" },
            tether_runc = tether(TETHER_HANDLER, Executor::Runc),
            tether_native = tether(TETHER_NATIVE_HANDLER, Executor::Native),
            tether_inline = inline(TETHER_INLINE_HANDLER, Executor::Runc),
            tether_native_inline = inline(TETHER_NATIVE_INLINE_HANDLER, Executor::Native),
        )
    }
}

/// A TCP port on 127.0.0.1 that is free right now (the kernel's pick).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The handler that runs a scenario on `executor`, or on containerd's Go shim when that is
/// the runtime under test.
pub fn handler_for(executor: Executor, go_runc: bool) -> &'static str {
    match (executor, go_runc) {
        (_, true) => GO_RUNC_HANDLER,
        (Executor::Runc, false) => TETHER_HANDLER,
        (Executor::Native, false) => TETHER_NATIVE_HANDLER,
    }
}

/// The handler of tether's `executor` whose config is its options table.
pub fn inline_handler_for(executor: Executor) -> &'static str {
    match executor {
        Executor::Runc => TETHER_INLINE_HANDLER,
        Executor::Native => TETHER_NATIVE_INLINE_HANDLER,
    }
}
