//! tether's configuration: a TOML file named by the runtime options containerd sends with
//! Create, or containerd's runc options, resolved into the settings of one container. Without
//! either, the node's default file (`/etc/tether/config.toml`, or `$TETHER_CONFIG`) applies.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tether_protos::{protobuf::well_known_types::any::Any, protobuf::Message, runc_options, runtimeoptions};
use tether_runtime::{
    runc::{RuncConfig, RuncExecutor},
    ChildWaiter, DirectWaiter, Executor,
};

pub use self::native::Helper;
use crate::error::{Error, Result};

/// Where runtime state lives when the config does not say (`<this>/<namespace>`).
pub const DEFAULT_ROOT: &str = "/run/tether";

/// The node's default config file, read when a Create carries no runtime options.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/tether/config.toml";

/// The environment variable that names another default config file (empty: none at all).
/// The shim inherits containerd's environment, so it is set where containerd runs.
pub const CONFIG_ENV: &str = "TETHER_CONFIG";

/// The default config file this process would read: `$TETHER_CONFIG` when it is set (`None`
/// when it is set but empty), else [`DEFAULT_CONFIG_FILE`].
pub fn default_config_path() -> Option<PathBuf> {
    match std::env::var_os(CONFIG_ENV) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)),
    }
}

/// The TOML file's contents. Unknown keys are an error, so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Which executor runs containers: `runc` (an OCI runtime binary) or `native`
    /// (libcontainer inside the shim).
    #[serde(default)]
    pub executor: ExecutorKind,
    /// Settings of the runc-CLI executor.
    #[serde(default)]
    pub runc: RuncSection,
    /// Settings of the native executor.
    #[serde(default)]
    pub native: NativeSection,
    /// The shim's log level from this container's creation on (`-debug` sets debug at start).
    pub log_level: Option<LogLevel>,
    /// From this container's creation on, how long (ms) the shim waits without a call before
    /// it unmaps the code it ran and frees unused heap; 0 never does (default 10000).
    pub idle_trim_ms: Option<u64>,
}

/// How much the shim logs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for it.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The executors tether knows.
#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Fork a runc-compatible binary per operation.
    #[default]
    Runc,
    /// youki's libcontainer, run by the shim itself (cargo feature `native`).
    Native,
}

/// `[runc]` in the config file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuncSection {
    /// The runtime binary: a path, or a name looked up on PATH (default `runc`).
    pub binary: Option<String>,
    /// The runtime's state directory (default `/run/tether/<namespace>`).
    pub root: Option<PathBuf>,
    /// Use systemd to manage cgroups.
    #[serde(default)]
    pub systemd_cgroup: bool,
    /// The CRIU binary for checkpoint/restore: a path or a name on PATH (default `criu`).
    pub criu: Option<PathBuf>,
}

/// `[native]` in the config file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NativeSection {
    /// libcontainer's state directory (default `/run/tether/<namespace>`).
    pub root: Option<PathBuf>,
    /// Use systemd to manage cgroups.
    #[serde(default)]
    pub systemd_cgroup: bool,
}

/// The resolved settings of one container's executor. Persisted in the bundle so that the
/// `delete` subcommand, run by containerd after the shim died, drives the same runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    pub executor: ExecutorKind,
    pub binary: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    #[serde(default)]
    pub criu: Option<PathBuf>,
    /// The log level the config file asked for.
    #[serde(default)]
    pub log_level: Option<LogLevel>,
    /// The idle time before a trim the config file asked for, in ms (0: never).
    #[serde(default)]
    pub idle_trim_ms: Option<u64>,
}

impl Settings {
    /// The defaults for `namespace`: runc on PATH, state under `/run/tether/<namespace>`.
    pub fn defaults(namespace: &str) -> Self {
        Settings {
            executor: ExecutorKind::Runc,
            binary: "runc".into(),
            root: Path::new(DEFAULT_ROOT).join(namespace),
            systemd_cgroup: false,
            criu: None,
            log_level: None,
            idle_trim_ms: None,
        }
    }

    /// Resolves the runtime options of a Create request (absent, containerd's runtimeoptions
    /// naming a config file, or containerd's runc options). Without options, with runc options
    /// that set nothing tether reads, or with runtimeoptions that name no config, the node's
    /// default file applies ([`default_config_path`]) when it exists.
    pub fn from_options(namespace: &str, options: Option<&Any>) -> Result<Self> {
        Settings::resolve(namespace, options, default_config_path().as_deref())
    }

    /// [`Settings::from_options`] with the default file given: options that name a config
    /// (a path or its body) or runc options win over `default_file`; a missing `default_file`
    /// leaves the built-in defaults, one that cannot be read or parsed is a Config error
    /// naming it.
    pub fn resolve(namespace: &str, options: Option<&Any>, default_file: Option<&Path>) -> Result<Self> {
        let mut settings = Settings::defaults(namespace);
        let Some(any) = options.filter(|a| !a.type_url.is_empty()) else {
            settings.apply_default_file(default_file)?;
            return Ok(settings);
        };
        let url = any.type_url.as_str();
        if url.ends_with("runtimeoptions.v1.Options") {
            let opts = runtimeoptions::Options::parse_from_bytes(&any.value)
                .map_err(|e| Error::InvalidArgument(format!("bad runtime options: {e}")))?;
            if !opts.config_body.is_empty() {
                settings.apply_file(&parse_config("<config body>", &opts.config_body)?);
            } else if !opts.config_path.is_empty() {
                let text = std::fs::read_to_string(&opts.config_path)
                    .map_err(|e| Error::Config { path: opts.config_path.clone(), message: e.to_string() })?;
                settings.apply_file(&parse_config(&opts.config_path, &text)?);
            } else {
                settings.apply_default_file(default_file)?;
            }
        } else if url.ends_with("containerd.runc.v1.Options") {
            let mut opts = runc_options::Options::parse_from_bytes(&any.value)
                .map_err(|e| Error::InvalidArgument(format!("bad runc options: {e}")))?;
            // Runc options that set nothing of the runtime are none. containerd 2.x sends such
            // options for every task of a sandbox (`sandboxer = "shim"`) whose handler has no
            // options: only where the sandbox's task API is, which the shim serving it knows.
            opts.task_api_address.clear();
            opts.task_api_version = 0;
            if opts == runc_options::Options::default() {
                settings.apply_default_file(default_file)?;
                return Ok(settings);
            }
            if !opts.binary_name.is_empty() {
                settings.binary = opts.binary_name.into();
            }
            if !opts.root.is_empty() {
                settings.root = Path::new(&opts.root).join(namespace);
            }
            settings.systemd_cgroup = opts.systemd_cgroup;
        } else {
            return Err(Error::InvalidArgument(format!(
                "unsupported runtime options type {url:?}: tether takes runtimeoptions.v1.Options (a config path) or containerd.runc.v1.Options"
            )));
        }
        Ok(settings)
    }

    fn apply_default_file(&mut self, path: Option<&Path>) -> Result<()> {
        let Some(path) = path else { return Ok(()) };
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => self.apply_file(&parse_config(&name, &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Config { path: name, message: e.to_string() }),
        }
        Ok(())
    }

    fn apply_file(&mut self, file: &ConfigFile) {
        self.executor = file.executor;
        self.log_level = file.log_level;
        self.idle_trim_ms = file.idle_trim_ms;
        match file.executor {
            ExecutorKind::Runc => {
                if let Some(binary) = &file.runc.binary {
                    self.binary = binary.into();
                }
                if let Some(root) = &file.runc.root {
                    self.root = root.clone();
                }
                self.systemd_cgroup = file.runc.systemd_cgroup;
                if let Some(criu) = &file.runc.criu {
                    self.criu = Some(criu.clone());
                }
            }
            ExecutorKind::Native => {
                if let Some(root) = &file.native.root {
                    self.root = root.clone();
                }
                self.systemd_cgroup = file.native.systemd_cgroup;
            }
        }
    }

    /// The executor these settings name, for the serving shim: runc's children are waited
    /// for through `waiter` (the shim's reaper); the native executor forks through `helper`.
    pub fn executor(&self, waiter: Arc<dyn ChildWaiter>, helper: &Arc<Helper>) -> Result<Arc<dyn Executor>> {
        match self.executor {
            ExecutorKind::Runc => Ok(Arc::new(RuncExecutor::new(self.runc(), waiter))),
            ExecutorKind::Native => native::serving(self, helper),
        }
    }

    /// The executor these settings name, for a single-threaded process without a reaper
    /// (the `delete` subcommand).
    pub fn standalone_executor(&self) -> Result<Arc<dyn Executor>> {
        match self.executor {
            ExecutorKind::Runc => Ok(Arc::new(RuncExecutor::new(self.runc(), Arc::new(DirectWaiter)))),
            ExecutorKind::Native => native::standalone(self),
        }
    }

    /// The executor's Features document (the OCI runtime spec's features.md) as JSON: what
    /// `<binary> features` prints for the runc executor, libcontainer's for the native one.
    /// `None` when the runtime binary has no `features` subcommand, as containerd's runc shim
    /// then reports none either. Runs the binary and waits for it: not for the serving shim.
    pub fn features(&self) -> Result<Option<Vec<u8>>> {
        match self.executor {
            ExecutorKind::Runc => match tether_runtime::runc::features(&self.binary) {
                Ok(json) => Ok(Some(json.to_string().into_bytes())),
                Err(e @ tether_runtime::Error::Runtime { .. }) => {
                    log::warn!("{e}: no features to report");
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            },
            ExecutorKind::Native => native::features().map(Some),
        }
    }

    /// The runc-CLI executor's configuration.
    pub fn runc(&self) -> RuncConfig {
        RuncConfig {
            binary: self.binary.clone(),
            root: self.root.clone(),
            systemd_cgroup: self.systemd_cgroup,
            criu: self.criu.clone(),
        }
    }
}

/// The native executor's side of [`Settings`], present in builds with the cargo feature
/// `native`.
#[cfg(feature = "native")]
mod native {
    use std::sync::Arc;

    pub use tether_runtime::native::helper::Helper;
    use tether_runtime::{
        native::{NativeConfig, NativeExecutor},
        Executor,
    };

    use super::Settings;
    use crate::error::Result;

    /// The helper of the serving shim: a fresh copy of the running binary, started when a
    /// native container is first created.
    pub fn helper() -> Helper {
        Helper::new("/proc/self/exe")
    }

    fn config(settings: &Settings) -> NativeConfig {
        NativeConfig { root: settings.root.clone(), systemd_cgroup: settings.systemd_cgroup }
    }

    pub fn serving(settings: &Settings, helper: &Arc<Helper>) -> Result<Arc<dyn Executor>> {
        Ok(Arc::new(NativeExecutor::new(config(settings), helper.clone())))
    }

    pub fn standalone(settings: &Settings) -> Result<Arc<dyn Executor>> {
        Ok(Arc::new(NativeExecutor::single_threaded(config(settings))))
    }

    pub fn features() -> Result<Vec<u8>> {
        let features = tether_runtime::native::features::features();
        Ok(serde_json::to_vec(&features).expect("a document of strings, lists and flags always serializes"))
    }
}

/// A build without the cargo feature `native`: `executor = "native"` is refused.
#[cfg(not(feature = "native"))]
mod native {
    use std::sync::Arc;

    use tether_runtime::Executor;

    use super::Settings;
    use crate::error::{Error, Result};

    /// Nothing to start in a build without the native executor.
    pub struct Helper;

    pub fn helper() -> Helper {
        Helper
    }

    fn unavailable() -> Error {
        Error::InvalidArgument(
            "executor = \"native\": this tether was built without the native executor (cargo feature `native`); use executor = \"runc\"".into(),
        )
    }

    pub fn serving(_: &Settings, _: &Arc<Helper>) -> Result<Arc<dyn Executor>> {
        Err(unavailable())
    }

    pub fn standalone(_: &Settings) -> Result<Arc<dyn Executor>> {
        Err(unavailable())
    }

    pub fn features() -> Result<Vec<u8>> {
        Err(unavailable())
    }
}

/// The helper the serving shim hands to [`Settings::executor`].
pub fn native_helper() -> Arc<Helper> {
    Arc::new(native::helper())
}

/// Parses a config file's text; errors name the file and (through toml's message) the key.
pub fn parse_config(path: &str, text: &str) -> Result<ConfigFile> {
    toml::from_str(text)
        .map_err(|e| Error::Config { path: path.to_string(), message: e.to_string().trim().replace('\n', " ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(url: &str, msg: &dyn tether_protos::protobuf::MessageDyn) -> Any {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = msg.write_to_bytes_dyn().unwrap();
        a
    }

    #[test]
    fn no_options_give_defaults() {
        let s = Settings::resolve("k8s.io", None, None).unwrap();
        assert_eq!(s, Settings::defaults("k8s.io"));
        assert_eq!(s.root, Path::new("/run/tether/k8s.io"));
        assert_eq!(s.binary, Path::new("runc"));
    }

    /// A node default file in a temp dir, and runtime options naming another config.
    fn default_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_default_file_applies_without_options() {
        let (_dir, path) = default_file("executor = \"native\"\n[native]\nroot = \"/run/n\"\n");
        let s = Settings::resolve("ns", None, Some(&path)).unwrap();
        assert_eq!(s.executor, ExecutorKind::Native);
        assert_eq!(s.root, Path::new("/run/n"));
        // runtimeoptions that name no config (CRI without ConfigPath) leave it in force too.
        let empty = any("runtimeoptions.v1.Options", &runtimeoptions::Options::new());
        assert_eq!(Settings::resolve("ns", Some(&empty), Some(&path)).unwrap().executor, ExecutorKind::Native);
    }

    #[test]
    fn a_missing_default_file_means_built_in_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::resolve("ns", None, Some(&dir.path().join("absent.toml"))).unwrap();
        assert_eq!(s, Settings::defaults("ns"));
    }

    #[test]
    fn a_broken_default_file_is_an_error_naming_it() {
        let (_dir, path) = default_file("executor = \"nativ\"\n");
        let err = Settings::resolve("ns", None, Some(&path)).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        // A directory where the file should be cannot be read: also its error, not defaults.
        let err = Settings::resolve("ns", None, path.parent()).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }

    #[test]
    fn options_naming_a_config_win_over_the_default_file() {
        let (_dir, default) = default_file("executor = \"native\"\nlog_level = \"trace\"\n");
        let (_dir2, own) = default_file("[runc]\nbinary = \"/opt/crun\"\n");
        let path_opts = runtimeoptions::Options { config_path: own.display().to_string(), ..Default::default() };
        let s = Settings::resolve("ns", Some(&any("runtimeoptions.v1.Options", &path_opts)), Some(&default)).unwrap();
        assert_eq!((s.executor, s.binary.as_path(), s.log_level), (ExecutorKind::Runc, Path::new("/opt/crun"), None));
        let body_opts = runtimeoptions::Options { config_body: "log_level = \"warn\"\n".into(), ..Default::default() };
        let s = Settings::resolve("ns", Some(&any("runtimeoptions.v1.Options", &body_opts)), Some(&default)).unwrap();
        assert_eq!((s.executor, s.log_level), (ExecutorKind::Runc, Some(LogLevel::Warn)));
        let runc = runc_options::Options { binary_name: "/usr/local/bin/runc".into(), ..Default::default() };
        let s = Settings::resolve("ns", Some(&any("containerd.runc.v1.Options", &runc)), Some(&default)).unwrap();
        assert_eq!(
            (s.executor, s.binary.as_path(), s.log_level),
            (ExecutorKind::Runc, Path::new("/usr/local/bin/runc"), None)
        );
        // Runc options that set nothing of the runtime are none: what containerd 2.1 sends for
        // a sandboxed task of a handler without options (the sandbox's task API endpoint).
        let sandboxed = runc_options::Options {
            task_api_address: "ttrpc+unix:///run/containerd/s/x".into(),
            task_api_version: 2,
            ..Default::default()
        };
        let s = Settings::resolve("ns", Some(&any("containerd.runc.v1.Options", &sandboxed)), Some(&default)).unwrap();
        assert_eq!((s.executor, s.log_level), (ExecutorKind::Native, Some(LogLevel::Trace)));
    }

    #[test]
    fn the_environment_names_the_default_file() {
        // The only test that sets TETHER_CONFIG; the values it sets give every other caller
        // of `from_options` the built-in defaults, as an unset variable does on this machine.
        std::env::set_var(CONFIG_ENV, "/nonexistent/tether.toml");
        assert_eq!(default_config_path(), Some(PathBuf::from("/nonexistent/tether.toml")));
        std::env::set_var(CONFIG_ENV, "");
        assert_eq!(default_config_path(), None, "an empty value means no default file");
        std::env::remove_var(CONFIG_ENV);
        assert_eq!(default_config_path(), Some(PathBuf::from(DEFAULT_CONFIG_FILE)));
    }

    #[test]
    fn config_file_is_read_from_runtime_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        std::fs::write(
            &path,
            "executor = \"runc\"\n[runc]\nbinary = \"/opt/bin/my-runc\"\nroot = \"/run/x\"\nsystemd_cgroup = true\n",
        )
        .unwrap();
        let mut opts = runtimeoptions::Options::new();
        opts.config_path = path.display().to_string();
        let s = Settings::from_options("default", Some(&any("runtimeoptions.v1.Options", &opts))).unwrap();
        assert_eq!(s.binary, Path::new("/opt/bin/my-runc"));
        assert_eq!(s.root, Path::new("/run/x"));
        assert!(s.systemd_cgroup);
    }

    #[test]
    fn bad_config_names_file_and_key() {
        let err = parse_config("/etc/tether/config.toml", "[runc]\nsystemd_cgroup = \"yes\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/tether/config.toml"), "{msg}");
        assert!(msg.contains("systemd_cgroup"), "{msg}");
        let err = parse_config("f.toml", "[runc]\nbinery = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("binery"), "{err}");
        assert_eq!(err.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn runc_options_are_honoured() {
        let mut opts = runc_options::Options::new();
        opts.binary_name = "/usr/local/bin/runc".into();
        opts.root = "/run/myroot".into();
        let s = Settings::from_options("ns", Some(&any("containerd.runc.v1.Options", &opts))).unwrap();
        assert_eq!(s.binary, Path::new("/usr/local/bin/runc"));
        assert_eq!(s.root, Path::new("/run/myroot/ns"));
    }

    fn from_file(text: &str) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        std::fs::write(&path, text).unwrap();
        let mut opts = runtimeoptions::Options::new();
        opts.config_path = path.display().to_string();
        Settings::from_options("ns", Some(&any("runtimeoptions.v1.Options", &opts)))
    }

    #[test]
    fn native_section_is_the_native_executors() {
        let s = from_file("executor = \"native\"\n[runc]\nroot = \"/run/for-runc\"\n[native]\nroot = \"/run/n\"\n")
            .unwrap();
        assert_eq!(s.executor, ExecutorKind::Native);
        assert_eq!(s.root, Path::new("/run/n"), "[runc] root is runc's alone");
        let s = from_file("executor = \"native\"\nlog_level = \"debug\"\n").unwrap();
        assert_eq!(s.root, Path::new("/run/tether/ns"));
        assert_eq!(s.log_level.map(LogLevel::filter), Some(log::LevelFilter::Debug));
        let err = from_file("[native]\nbinary = \"runc\"\n").unwrap_err();
        assert!(err.to_string().contains("binary"), "{err}");
    }

    #[cfg(feature = "native")]
    #[test]
    fn native_executor_is_built_in() {
        let s = from_file("executor = \"native\"\n").unwrap();
        assert_eq!(s.standalone_executor().unwrap().name(), "libcontainer");
    }

    #[cfg(not(feature = "native"))]
    #[test]
    fn a_build_without_the_native_executor_refuses_it() {
        let s = from_file("executor = \"native\"\n").unwrap();
        let err = s.standalone_executor().err().expect("no native executor in this build");
        assert_eq!(err.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT);
        assert!(err.to_string().contains("cargo feature `native`"), "{err}");
        let err = s.executor(Arc::new(DirectWaiter), &native_helper()).err().expect("refused for the serving shim too");
        assert!(err.to_string().contains("built without the native executor"), "{err}");
    }

    #[test]
    fn unknown_options_type_is_invalid() {
        let opts = runtimeoptions::Options::new();
        let err = Settings::from_options("ns", Some(&any("example.Other", &opts))).unwrap_err();
        assert_eq!(err.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// No runtime options panic the shim: any bytes under either type, and any config
        /// text in them, give settings or a typed error.
        #[test]
        fn any_runtime_options_resolve_or_are_refused(
            type_url in "(|x|runtimeoptions.v1.Options|containerd.runc.v1.Options)",
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            body in r#"((executor|log_level|idle_trim_ms|binary|root|criu|systemd_cgroup) = ("[a-z/.]{0,8}"|-?[0-9]{1,21}|true|\[\])\n|\[(runc|native)\]\n){0,6}"#,
        ) {
            let mut with_body = runtimeoptions::Options::new();
            with_body.config_body = body;
            let encoded = with_body.write_to_bytes().unwrap();
            for value in [raw, encoded] {
                let any = Any { type_url: type_url.clone(), value, ..Default::default() };
                if let Err(e) = Settings::resolve("ns", Some(&any), None) {
                    let code = e.code();
                    proptest::prop_assert!(code == tether_protos::ttrpc::Code::INVALID_ARGUMENT, "{e}: {code:?}");
                }
            }
        }
    }
}
