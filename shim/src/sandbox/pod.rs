//! What of the CRI's `PodSandboxConfig` (CreateSandbox's options) the shim acts on, read
//! straight from the protobuf wire: tether has no CRI types of its own.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

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
    /// The pod's DNS settings (the kubelet's cluster DNS); `None`: the node's resolv.conf.
    pub dns: Option<DnsConfig>,
}

/// The CRI's `DNSConfig`: what the pod's `/etc/resolv.conf` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    /// `DNSConfig` on the wire: 1 servers, 2 searches, 3 options.
    fn decode(bytes: &[u8]) -> Result<DnsConfig> {
        let mut dns = DnsConfig::default();
        for field in wire::fields(bytes)? {
            match field {
                (1, wire::Value::Bytes(b)) => dns.servers.push(wire::string(b)?),
                (2, wire::Value::Bytes(b)) => dns.searches.push(wire::string(b)?),
                (3, wire::Value::Bytes(b)) => dns.options.push(wire::string(b)?),
                _ => {}
            }
        }
        Ok(dns)
    }

    /// The resolv.conf the CRI writes for these settings: search, nameservers, options.
    pub fn resolv_conf(&self) -> String {
        let mut text = String::new();
        if !self.searches.is_empty() {
            text += &format!("search {}\n", self.searches.join(" "));
        }
        for server in &self.servers {
            text += &format!("nameserver {server}\n");
        }
        if !self.options.is_empty() {
            text += &format!("options {}\n", self.options.join(" "));
        }
        text
    }
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
                (4, wire::Value::Bytes(dns)) => pod.dns = Some(DnsConfig::decode(dns)?),
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

/// The fields of one protobuf message, read with rust-protobuf's wire reader; nested messages
/// are left encoded.
mod wire {
    use tether_protos::protobuf::{rt::WireType, CodedInputStream};

    use crate::error::{Error, Result};

    /// One field's value: a varint, or the bytes of a length-delimited field.
    #[derive(Debug, PartialEq)]
    pub enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        /// A fixed 32 or 64 bit value (none of the fields tether reads).
        Fixed,
    }

    fn bad(what: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!("malformed PodSandboxConfig: {what}"))
    }

    /// Every (field number, value) of the message `bytes`, in wire order. Groups, which no
    /// CRI message has, are refused.
    pub fn fields(bytes: &[u8]) -> Result<Vec<(u32, Value<'_>)>> {
        let mut input = CodedInputStream::from_bytes(bytes);
        let mut out = Vec::new();
        while let Some(key) = input.read_raw_tag_or_eof().map_err(bad)? {
            let value = match WireType::new(key & 7) {
                Some(WireType::Varint) => Value::Varint(input.read_raw_varint64().map_err(bad)?),
                Some(WireType::LengthDelimited) => {
                    let n = input.read_raw_varint32().map_err(bad)?;
                    // The bytes are sliced out of `bytes` itself: the reader is at their start.
                    let at = usize::try_from(input.pos()).map_err(bad)?;
                    input.skip_raw_bytes(n).map_err(bad)?;
                    Value::Bytes(&bytes[at..at + n as usize])
                }
                Some(w @ (WireType::Fixed32 | WireType::Fixed64)) => {
                    input.skip_field(w).map(|()| Value::Fixed).map_err(bad)?
                }
                _ => return Err(bad(format!("wire type {}", key & 7))),
            };
            out.push((key >> 3, value));
        }
        Ok(out)
    }

    pub fn string(bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string that is not UTF-8"))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Encodes a field: key, then a varint or length-delimited bytes.
    pub(crate) fn field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    fn varint_field(number: u32, v: u8) -> Vec<u8> {
        vec![(number << 3) as u8, v]
    }

    /// A PodSandboxConfig as the kubelet sends it: metadata, hostname, log dir, linux with
    /// cgroup parent, namespaces and two sysctls.
    pub(crate) fn pod_config(network: u8, pid: u8, ipc: u8) -> Vec<u8> {
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
        let dns = [
            field(1, b"10.96.0.10"),
            field(2, b"ns1.svc.cluster.local"),
            field(2, b"cluster.local"),
            field(3, b"ndots:5"),
        ]
        .concat();
        [
            field(1, &field(1, b"pod1")),
            field(2, b"pod1-host"),
            field(3, b"/var/log/pods/x"),
            field(4, &dns),
            field(8, &linux),
        ]
        .concat()
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
        assert_eq!(
            pod.dns.unwrap().resolv_conf(),
            "search ns1.svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );

        let host = PodConfig::decode(&pod_config(2, 2, 2)).unwrap();
        assert!(!host.own_ipc() && !host.own_uts(), "hostNetwork and hostIPC: the node's namespaces");
        assert_eq!(host.pid, NamespaceMode::Node);
    }

    #[test]
    fn malformed_configs_are_invalid_arguments() {
        for bytes in [&[0x12, 9, b'x'][..], &[0x80], &[0x0b], &[0x42, 2, 0x0b, 0]] {
            let err = PodConfig::decode(bytes).unwrap_err();
            assert_eq!(err.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT, "{bytes:?}: {err}");
        }
        assert_eq!(PodConfig::decode(&[]).unwrap(), PodConfig::default());
    }
}
