//! `start` as each containerd generation runs it, on the built binary: containerd 1.6 (no
//! MAX_SHIM_VERSION, bare address), 1.7/2.0–2.2 (MAX_SHIM_VERSION=2, JSON) and 2.3+
//! (BootstrapParams on stdin, BootstrapResult on stdout, socket in the directory it names).
//! The binary is run the way each of those releases runs it (the other suites run it under
//! real containerd 1.6 and 2.1 daemons; 2.3 is not packaged); each answer is checked to name
//! a socket where the shim really serves the task API, then the shim is shut down. `-info`,
//! containerd 2.x's introspection, is run as those releases run it too.

use std::path::Path;
use std::process::Command;

use tether_protos::{
    api,
    bootstrap::{BootstrapParams, BootstrapResult},
    protobuf::{
        well_known_types::{any::Any, empty::Empty},
        Message,
    },
    runtimeoptions, type_urls,
    types::introspection::RuntimeInfo,
};
use tether_tests::env::TetherConfig;
use tether_tests::runtime::tether_shim_binary;
use tether_tests::shim::ShimClient;
use tether_tests::{process, secs, wait_until};

/// A shim started by hand: shut down (it has no tasks, so it exits) even if the test fails.
struct Started {
    address: String,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(client) = ShimClient::connect(&self.address) {
            let _ = client.call::<Empty>("Shutdown", &api::ShutdownRequest { id: "c1".into(), ..Default::default() });
        }
    }
}

impl Started {
    fn socket(&self) -> &Path {
        Path::new(self.address.strip_prefix("unix://").expect("a unix:// address"))
    }

    /// The shim answers on its socket, then exits on Shutdown and removes the socket.
    fn check_serves_and_shut_down(self) {
        let client = ShimClient::connect(&self.address).unwrap_or_else(|e| panic!("dial {}: {e}", self.address));
        let connect: api::ConnectResponse =
            client.call("Connect", &api::ConnectRequest { id: "c1".into(), ..Default::default() }).expect("Connect");
        assert!(connect.shim_pid > 0, "{connect:?}");
        client
            .call::<Empty>("Shutdown", &api::ShutdownRequest { id: "c1".into(), ..Default::default() })
            .expect("Shutdown");
        let socket = self.socket().to_path_buf();
        assert!(
            wait_until(secs(10), || (!socket.exists()).then_some(())).is_some(),
            "the shim did not exit and remove {} after Shutdown",
            socket.display()
        );
    }
}

/// Runs `start` in a fresh bundle (namespace `ns`, id c1) with `stdin` and `env`; its stdout.
fn start(dir: &Path, ns: &str, stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Vec<u8> {
    let bundle = dir.join(ns);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let mut cmd = Command::new(tether_shim_binary());
    cmd.args(["-namespace", ns, "-id", "c1", "-address"])
        .arg(dir.join("containerd.sock"))
        .args(["-publish-binary", "/bin/true", "start"])
        .current_dir(&bundle)
        .env_remove("MAX_SHIM_VERSION")
        .env("TTRPC_ADDRESS", dir.join("containerd.sock.ttrpc"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = process::run(cmd, stdin, secs(30));
    out.expect_ok();
    let address = std::fs::read_to_string(bundle.join("address")).expect("start writes the bundle's address file");
    assert!(address.starts_with("unix://"), "{address}");
    out.stdout.into_bytes()
}

/// A namespace of this test run's own (the socket name hashes it).
fn namespace(what: &str) -> String {
    format!("bootstrap-{what}-{}", std::process::id())
}

#[test]
fn containerd_16_reads_a_bare_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = start(dir.path(), &namespace("bare"), None, &[]);
    let address = String::from_utf8(out).unwrap();
    assert!(address.starts_with("unix:///run/containerd/s/"), "{address:?}");
    Started { address }.check_serves_and_shut_down();
}

#[test]
fn containerd_17_to_22_read_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = start(dir.path(), &namespace("json"), None, &[("MAX_SHIM_VERSION", "2")]);
    let reply: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(reply["version"], 2, "{reply}");
    assert_eq!(reply["protocol"], "ttrpc", "{reply}");
    let address = reply["address"].as_str().expect("an address").to_owned();
    Started { address }.check_serves_and_shut_down();
}

#[test]
fn containerd_23_bootstrap_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace("proto");
    let socket_dir = dir.path().join("sockets");
    let params = BootstrapParams {
        instance_id: "c1".into(),
        namespace: ns.clone(),
        containerd_version: "2.3.0".into(),
        containerd_ttrpc_address: dir.path().join("containerd.sock.ttrpc").display().to_string(),
        containerd_grpc_address: dir.path().join("containerd.sock").display().to_string(),
        socket_dir: Some(socket_dir.display().to_string()),
        ..Default::default()
    };
    let out = start(dir.path(), &ns, Some(&params.write_to_bytes().unwrap()), &[("MAX_SHIM_VERSION", "2")]);
    let result = BootstrapResult::parse_from_bytes(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(result.version, 3, "{result:?}");
    assert_eq!(result.protocol, "ttrpc", "{result:?}");
    let started = Started { address: result.address.clone() };
    assert_eq!(started.socket().parent(), Some(socket_dir.as_path()), "the socket is in socket_dir: {result:?}");
    started.check_serves_and_shut_down();
}

/// Shutdown frees the address at once: a `start` for the same id right after it gets a shim
/// of its own, not the exiting one (`ctr run --rm c1` and then `ctr run c1` again).
#[test]
fn start_right_after_shutdown_gets_a_new_shim() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace("again");
    let shim_pid = |address: &str| {
        let client = ShimClient::connect(address).unwrap_or_else(|e| panic!("dial {address}: {e}"));
        let connect: api::ConnectResponse =
            client.call("Connect", &api::ConnectRequest { id: "c1".into(), ..Default::default() }).expect("Connect");
        (client, connect.shim_pid)
    };
    let first = String::from_utf8(start(dir.path(), &ns, None, &[])).unwrap();
    let (client, first_pid) = shim_pid(&first);
    client
        .call::<Empty>("Shutdown", &api::ShutdownRequest { id: "c1".into(), ..Default::default() })
        .expect("Shutdown");
    let second = String::from_utf8(start(dir.path(), &ns, None, &[])).unwrap();
    assert_eq!(second, first, "the address is derived from namespace and id");
    let started = Started { address: second };
    let (_, second_pid) = shim_pid(&started.address);
    assert_ne!(second_pid, first_pid, "the second start reused the shim that was shutting down");
    started.check_serves_and_shut_down();
}

/// `SHIM -info` with `stdin` (containerd writes the handler's options, or nothing), with no
/// node default config in the way: its exit status, stdout and stderr.
fn info(stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(tether_shim_binary())
        .arg("-info")
        .env("TETHER_CONFIG", "")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the shim with -info");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The RuntimeInfo `-info` printed, checked for what every answer carries; and its features.
fn decoded(out: &std::process::Output) -> (RuntimeInfo, serde_json::Value) {
    assert!(out.status.success(), "-info failed: {}", String::from_utf8_lossy(&out.stderr));
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout));
    assert_eq!(info.name, "io.containerd.tether.v2", "{info:?}");
    assert!(!info.version.version.is_empty(), "{info:?}");
    assert_eq!(info.features.type_url, type_urls::OCI_FEATURES, "{info:?}");
    let features = serde_json::from_slice(&info.features.value).unwrap_or_else(|e| panic!("features: {e}: {info:?}"));
    (info, features)
}

/// Runtime options naming the config file `path`.
fn config_path_options(path: &Path) -> Any {
    let opts = runtimeoptions::Options { config_path: path.display().to_string(), ..Default::default() };
    Any { type_url: type_urls::RUNTIME_OPTIONS.into(), value: opts.write_to_bytes().unwrap(), ..Default::default() }
}

/// No options: runc's executor, whose features are what `runc features` prints.
#[test]
fn info_without_options_reports_runcs_features() {
    let (info, features) = decoded(&info(b""));
    assert!(info.options.is_none(), "{info:?}");
    let runc = Command::new("runc").arg("features").output().expect("runc features");
    assert!(runc.status.success(), "{runc:?}");
    let expected: serde_json::Value = serde_json::from_slice(&runc.stdout).unwrap();
    assert_eq!(features, expected);
}

/// Options naming a config with `executor = "native"`: libcontainer's own document, and the
/// options echoed back.
#[test]
fn info_with_a_native_config_reports_libcontainers_features() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        TetherConfig { executor: Some("native".into()), ..Default::default() }.write(&dir.path().join("native.toml"));
    let options = config_path_options(&config);
    let (info, features) = decoded(&info(&options.write_to_bytes().unwrap()));
    assert_eq!(info.options.as_ref(), Some(&options));
    assert_eq!(features["ociVersionMin"], "1.0.0", "{features}");
    assert!(features["linux"]["namespaces"].as_array().is_some_and(|n| n.contains(&"user".into())), "{features}");
    assert_eq!(features["linux"]["mountExtensions"]["idmap"]["enabled"], false, "{features}");
    let runc: serde_json::Value =
        serde_json::from_slice(&Command::new("runc").arg("features").output().unwrap().stdout).unwrap();
    assert_ne!(features, runc, "the native executor reports its own features, not runc's");
}

/// Options tether cannot use: a message on stderr, a failed exit, nothing on stdout.
#[test]
fn info_with_bad_options_fails_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = info(&config_path_options(&dir.path().join("missing.toml")).write_to_bytes().unwrap());
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"), "{out:?}");
    let out = info(b"\x0a\xff");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a protobuf Any"), "{out:?}");
}
