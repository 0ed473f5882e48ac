//! Protocol types for tether.
//!
//! tether's own messages (compiled from `proto/` at build time) plus re-exports of the
//! containerd task, event and option types the shim speaks, so that the other crates name one
//! source for every wire type.

#![allow(clippy::all)]

pub use containerd_shim_protos::{api, shim::oci as runc_options};
pub use containerd_shim_protos::{cgroups, cgroups_v2, events, protobuf, shim, topics, ttrpc, types};
/// containerd's sandbox API (`containerd.runtime.sandbox.v1.Sandbox`): its messages and async server stubs.
pub use containerd_shim_protos::{sandbox_api, sandbox_async};

/// containerd's `runtimeoptions.v1.Options`: the config path sent by
/// `ctr run --runtime-config-path` and by the CRI plugin's `ConfigPath`.
#[allow(non_upper_case_globals, non_camel_case_types, unused_imports, unused_mut)]
pub mod runtimeoptions {
    include!(concat!(env!("OUT_DIR"), "/runtimeoptions.rs"));
}

/// tether's debug service (`Dump`, `Events`): its messages ...
#[allow(non_upper_case_globals, non_camel_case_types, unused_imports, unused_mut)]
pub mod debug {
    include!(concat!(env!("OUT_DIR"), "/debug.rs"));
}

/// ... and its ttrpc client and server stubs.
#[allow(non_upper_case_globals, non_camel_case_types, unused_imports, unused_mut, dead_code)]
pub mod debug_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/debug_ttrpc.rs"));
}

/// containerd 2.3+'s shim bootstrap messages: `BootstrapParams` on a `start`'s stdin,
/// `BootstrapResult` on its stdout.
#[allow(non_upper_case_globals, non_camel_case_types, unused_imports, unused_mut)]
pub mod bootstrap {
    include!(concat!(env!("OUT_DIR"), "/bootstrap.rs"));
}

/// The type urls under which containerd wraps runtime options in an `Any`.
pub mod type_urls {
    /// containerd's generic runtime options (config path).
    pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
    /// containerd's runc shim options (BinaryName, Root, SystemdCgroup, ...).
    pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
    /// The OCI runtime spec's Process, carried by Exec requests as JSON.
    pub const OCI_PROCESS: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
    /// The OCI runtime spec's Features document (what `runc features` prints), as JSON: the
    /// `features` of a shim's RuntimeInfo (`-info`).
    pub const OCI_FEATURES: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
}
