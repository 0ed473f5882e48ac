//! What is compared: containerd's Go shim and tether with each of its executors, all served by
//! one private containerd, each told what to do the way containerd tells it.

use std::path::PathBuf;

use tether_protos::{
    protobuf::{well_known_types::any::Any, Message},
    runc_options, runtimeoptions, type_urls,
};
use tether_tests::{env::RunBuilder, runtime, Env, Runtime, TetherConfig};

use crate::results::{GO, TETHER_NATIVE, TETHER_RUNC};

/// The Go shim's binary name.
const GO_SHIM: &str = "containerd-shim-runc-v2";

pub struct Target {
    /// The series name in the report (`go`, `tether-runc`, `tether-native`).
    pub name: &'static str,
    pub runtime: Runtime,
    /// tether's TOML config selecting the executor (None for the Go shim).
    pub config: Option<PathBuf>,
}

impl Target {
    /// The targets named on the command line (`go`, `runc`, `native`), Go first: it is the
    /// base of every ratio. tether gets an explicit config for both executors, so that both
    /// read one the same way.
    pub fn selected(env: &Env, names: &[String]) -> Vec<Target> {
        std::fs::create_dir_all(env.work()).expect("creating the work dir");
        let tether = |name: &'static str, executor: &str| {
            let config = TetherConfig { executor: Some(executor.into()), ..Default::default() };
            let path = config.write(&env.work().join(format!("{executor}.toml")));
            Target { name, runtime: Runtime::tether(), config: Some(path) }
        };
        let mut targets = Vec::new();
        for n in names {
            targets.push(match n.as_str() {
                "go" => Target { name: GO, runtime: Runtime::new(runtime::GO_RUNC), config: None },
                "runc" => tether(TETHER_RUNC, "runc"),
                "native" => tether(TETHER_NATIVE, "native"),
                other => panic!("unknown target {other}"),
            });
        }
        targets
    }

    pub fn is_go(&self) -> bool {
        self.runtime.is_go_runc()
    }

    /// `ctr run` of container `id` on this target.
    pub fn run<'a>(&self, env: &'a Env, id: &str) -> RunBuilder<'a> {
        let run = env.run(id).runtime(&self.runtime);
        match &self.config {
            Some(path) => run.config_path(path),
            None => run,
        }
    }

    /// The shim binary containerd would start for this target.
    pub fn shim_binary(&self) -> PathBuf {
        if self.is_go() {
            runtime::which(GO_SHIM).unwrap_or_else(|| PathBuf::from("/usr/bin").join(GO_SHIM))
        } else {
            runtime::tether_shim_binary()
        }
    }

    /// The runtime options containerd hands this target's shim (on `start`'s stdin and in
    /// Create): for the Go shim runc's options with the harness's runc root (what `ctr run
    /// --runc-root` sends, keeping runc's state out of /run/containerd), for tether its
    /// config path (what `ctr run --runtime-config-path` sends).
    pub fn options(&self, env: &Env) -> Any {
        let (type_url, value) = match &self.config {
            None => {
                let o = runc_options::Options { root: env.go_runc_root().display().to_string(), ..Default::default() };
                (type_urls::RUNC_OPTIONS, o.write_to_bytes())
            }
            Some(path) => {
                let o = runtimeoptions::Options { config_path: path.display().to_string(), ..Default::default() };
                (type_urls::RUNTIME_OPTIONS, o.write_to_bytes())
            }
        };
        Any { type_url: type_url.into(), value: value.expect("runtime options encode"), ..Default::default() }
    }
}
