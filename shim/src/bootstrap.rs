//! Which containerd runs `start`, and the answer it expects on stdout.
//!
//! Facts (containerd's source):
//! - containerd 1.6 reads a bare address ("unix:///run/containerd/s/<hash>") and sets no
//!   `MAX_SHIM_VERSION`; its stdin is the runtime options `Any`, if any.
//! - 1.7 and 2.0–2.2 set `MAX_SHIM_VERSION=2` and parse the answer as JSON
//!   `{"version":N,"address":"...","protocol":"ttrpc"}` first, falling back to a bare address
//!   (core/runtime/v2/shim.go, parseStartResponse); 1.7 refuses a version above 2.
//! - 2.3+ (core/runtime/v2/command.go) writes a binary protobuf `BootstrapParams`
//!   (api/runtime/bootstrap/v1/bootstrap.proto) on stdin at `start` (only there: `delete` gets
//!   nothing), with the runtime options as one of its extensions, and parses the answer as a
//!   binary `BootstrapResult` first, then JSON, then a bare address. Its own Go shim
//!   (pkg/shim/shim.go) answers with the protobuf form, and (pkg/shim/compat.go) only takes the
//!   input as BootstrapParams when its instance id and namespace equal the `-id` and
//!   `-namespace` flags: legacy options can decode as BootstrapParams by accident.

use std::io::Read;

use tether_protos::{
    bootstrap::{BootstrapParams, BootstrapResult},
    protobuf::Message,
};

use crate::error::{Error, Result};

/// The environment variable containerd 1.7+ sets for the shim versions it understands.
pub const MAX_SHIM_VERSION_ENV: &str = "MAX_SHIM_VERSION";
/// containerd's log level for debug (trace is lower still).
const LOG_LEVEL_DEBUG: i32 = -4;
/// What tether serves: ttrpc, with the task API registered as both v2 and v3.
const PROTOCOL: &str = "ttrpc";
/// The task API version announced to 2.3+: v3, that release's current one.
const TASK_API_CURRENT: i32 = 3;
/// The version announced in JSON: 2, the highest containerd 1.7 accepts (2.0–2.2 then dial
/// `containerd.task.v2.Task`, which tether serves too).
const TASK_API_JSON: i32 = 2;
/// Bound on what is read from stdin (the Go shim reads at most 10 MiB too).
const STDIN_LIMIT: u64 = 10 << 20;

/// Who ran `start`, as far as it matters for the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// containerd 1.6: a bare address.
    Bare,
    /// containerd 1.7 and 2.0–2.2: JSON.
    Json,
    /// containerd 2.3+: the bootstrap protocol, with what it told us.
    Bootstrap(Box<BootstrapParams>),
}

impl Caller {
    /// Classifies the caller from `start`'s stdin and `MAX_SHIM_VERSION`; `id` and `namespace`
    /// are the command-line flags the params must agree with.
    pub fn detect(stdin: &[u8], max_shim_version: Option<&str>, id: &str, namespace: &str) -> Caller {
        if let Ok(params) = BootstrapParams::parse_from_bytes(stdin) {
            if !stdin.is_empty() && params.instance_id == id && params.namespace == namespace {
                return Caller::Bootstrap(Box::new(params));
            }
        }
        match max_shim_version {
            Some(v) if !v.trim().is_empty() => Caller::Json,
            _ => Caller::Bare,
        }
    }

    /// Classifies the caller of this process (stdin, environment).
    pub fn of_this_process(id: &str, namespace: &str) -> Caller {
        let stdin = read_stdin();
        let max = std::env::var(MAX_SHIM_VERSION_ENV).ok();
        Caller::detect(&stdin, max.as_deref(), id, namespace)
    }

    /// The params of a 2.3+ caller.
    pub fn params(&self) -> Option<&BootstrapParams> {
        match self {
            Caller::Bootstrap(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the caller asked for debug logs (2.3+ says so in the params; older ones with
    /// the `-debug` flag, which the caller of this checks).
    pub fn wants_debug(&self) -> bool {
        self.params().is_some_and(|p| p.log_level <= LOG_LEVEL_DEBUG)
    }

    /// The bytes to print for a shim serving at `address`.
    pub fn reply(&self, address: &str) -> Result<Vec<u8>> {
        match self {
            Caller::Bare => Ok(address.as_bytes().to_vec()),
            Caller::Json => serde_json::to_vec(&serde_json::json!({
                "version": TASK_API_JSON,
                "address": address,
                "protocol": PROTOCOL,
            }))
            .map_err(|e| Error::encoding("the start reply", e)),
            Caller::Bootstrap(_) => BootstrapResult {
                version: TASK_API_CURRENT,
                address: address.to_string(),
                protocol: PROTOCOL.to_string(),
                ..Default::default()
            }
            .write_to_bytes()
            .map_err(|e| Error::encoding("the BootstrapResult", e)),
        }
    }
}

/// All of stdin, unless it is a terminal (someone running `start` by hand: containerd always
/// gives a pipe or /dev/null, and reading a terminal would wait for them).
fn read_stdin() -> Vec<u8> {
    // SAFETY: isatty on fd 0 has no preconditions.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
        return Vec::new();
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(STDIN_LIMIT).read_to_end(&mut input) {
        log::warn!("reading start's stdin: {e}");
    }
    input
}

#[cfg(test)]
mod tests {
    use tether_protos::{
        bootstrap::Extension,
        protobuf::{well_known_types::any::Any, MessageField},
        runtimeoptions, type_urls,
    };

    use super::*;

    const SOCKET: &str = "unix:///run/containerd/s/0123abcd";

    /// What containerd 2.3 writes: ids, addresses, the runtime options as an extension.
    fn params_from_containerd(id: &str, ns: &str, log_level: i32) -> Vec<u8> {
        let options = runtimeoptions::Options { config_path: "/etc/tether/config.toml".into(), ..Default::default() };
        let any = Any {
            type_url: type_urls::RUNTIME_OPTIONS.into(),
            value: options.write_to_bytes().unwrap(),
            ..Default::default()
        };
        BootstrapParams {
            instance_id: id.into(),
            namespace: ns.into(),
            log_level,
            containerd_version: "2.3.0".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            containerd_binary: "/usr/bin/containerd".into(),
            extensions: vec![Extension { value: MessageField::some(any), ..Default::default() }],
            socket_dir: Some("/run/k/s".into()),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    #[test]
    fn containerd_16_gets_a_bare_address() {
        // 1.6: runtime options (an Any) or nothing on stdin, no MAX_SHIM_VERSION.
        let options =
            Any { type_url: type_urls::RUNTIME_OPTIONS.into(), value: vec![0x12, 1, b'x'], ..Default::default() };
        for stdin in [Vec::new(), options.write_to_bytes().unwrap()] {
            let caller = Caller::detect(&stdin, None, "c1", "default");
            assert_eq!(caller, Caller::Bare);
            assert_eq!(caller.reply(SOCKET).unwrap(), SOCKET.as_bytes());
        }
    }

    #[test]
    fn containerd_17_to_22_get_json() {
        let caller = Caller::detect(b"", Some("2"), "c1", "default");
        assert_eq!(caller, Caller::Json);
        let reply: serde_json::Value = serde_json::from_slice(&caller.reply(SOCKET).unwrap()).unwrap();
        assert_eq!(reply, serde_json::json!({"version": 2, "address": SOCKET, "protocol": "ttrpc"}));
    }

    #[test]
    fn containerd_23_params_are_decoded() {
        let stdin = params_from_containerd("c1", "k8s.io", LOG_LEVEL_DEBUG);
        let caller = Caller::detect(&stdin, Some("2"), "c1", "k8s.io");
        let params = caller.params().expect("recognised as BootstrapParams");
        assert_eq!(params.containerd_ttrpc_address, "/run/containerd/containerd.sock.ttrpc");
        assert_eq!(params.containerd_grpc_address, "/run/containerd/containerd.sock");
        assert_eq!(params.containerd_binary, "/usr/bin/containerd");
        assert_eq!(params.socket_dir.as_deref(), Some("/run/k/s"));
        let ext = params.extensions[0].value.as_ref().unwrap();
        assert_eq!(ext.type_url, type_urls::RUNTIME_OPTIONS);
        let options = runtimeoptions::Options::parse_from_bytes(&ext.value).unwrap();
        assert_eq!(options.config_path, "/etc/tether/config.toml");
        assert!(caller.wants_debug());
        assert!(!Caller::detect(&params_from_containerd("c1", "k8s.io", 0), None, "c1", "k8s.io").wants_debug());
    }

    #[test]
    fn containerd_23_gets_a_bootstrap_result() {
        let caller = Caller::detect(&params_from_containerd("c1", "ns", 0), Some("2"), "c1", "ns");
        let reply = caller.reply(SOCKET).unwrap();
        let result = BootstrapResult::parse_from_bytes(&reply).unwrap();
        assert_eq!((result.version, result.address.as_str(), result.protocol.as_str()), (3, SOCKET, "ttrpc"));
        // The bytes containerd decodes, field by field: 1 = version (varint 3),
        // 2 = address, 3 = protocol (length-delimited strings).
        let mut expected = vec![0x08, 3, 0x12, SOCKET.len() as u8];
        expected.extend_from_slice(SOCKET.as_bytes());
        expected.extend_from_slice(&[0x1a, 5]);
        expected.extend_from_slice(b"ttrpc");
        assert_eq!(reply, expected);
    }

    #[test]
    fn params_for_another_task_are_not_trusted() {
        // Legacy stdin that happens to decode, or params naming someone else: fall back.
        let stdin = params_from_containerd("other", "ns", 0);
        assert_eq!(Caller::detect(&stdin, None, "c1", "ns"), Caller::Bare);
        assert_eq!(Caller::detect(&stdin, Some("2"), "c1", "other-ns"), Caller::Json);
        assert_eq!(Caller::detect(b"\xff\xff", None, "c1", "ns"), Caller::Bare);
    }

    #[test]
    fn params_encode_as_containerd_reads_them() {
        // Field numbers on the wire: 1 instance_id, 2 namespace, 3 log_level (varint,
        // negative as 10 bytes), 9 socket_dir.
        let bytes = BootstrapParams {
            instance_id: "a".into(),
            namespace: "b".into(),
            log_level: -4,
            socket_dir: Some("d".into()),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        let mut expected = vec![0x0a, 1, b'a', 0x12, 1, b'b', 0x18];
        expected.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        expected.extend_from_slice(&[0x4a, 1, b'd']);
        assert_eq!(bytes, expected);
    }
}
