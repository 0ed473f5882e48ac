//! `start` as each containerd generation runs it, on the built binary: containerd 1.6 (no
//! MAX_SHIM_VERSION, bare address), 1.7/2.0–2.2 (MAX_SHIM_VERSION=2, JSON) and 2.3+
//! (BootstrapParams on stdin, BootstrapResult on stdout, socket in the directory it names).
//! 2.x is not packaged here, so the binary is run the way those releases run it; each answer
//! is checked to name a socket where the shim really serves the task API, then the shim is
//! shut down.

use std::path::Path;
use std::process::Command;

use tether_protos::{
    api,
    bootstrap::{BootstrapParams, BootstrapResult},
    protobuf::{well_known_types::empty::Empty, Message},
};
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
        let connect: api::ConnectResponse = client
            .call("Connect", &api::ConnectRequest { id: "c1".into(), ..Default::default() })
            .expect("Connect");
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
        let connect: api::ConnectResponse = client
            .call("Connect", &api::ConnectRequest { id: "c1".into(), ..Default::default() })
            .expect("Connect");
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
