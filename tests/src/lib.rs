//! tether-tests: the harness for tether's integration tests.
//!
//! Every test starts its own containerd (Debian's package) from a generated config in a temp
//! dir (own root, state, sockets; CRI off unless a test uses [`cri::CriEnv`]), with the shim
//! under test on containerd's PATH, and drives it with `ctr` in a namespace of its own, on a
//! rootfs built from busybox-static (or, for CRI tests, through the CRI API on images made
//! from it).
//! Nothing outside the temp dir is touched, except the shim sockets that shims create under
//! /run/containerd/s and the runtime state of the runtime under test.
//!
//! The executor is a parameter: [`for_each_executor!`] runs a scenario with tether's runc
//! executor and with its native one. The runtime is a parameter too: `TETHER_TEST_RUNTIME=io.containerd.runc.v2` runs the same
//! scenarios against containerd's Go shim, the reference behaviour.

pub mod cgroup;
pub mod containerd;
pub mod cri;
pub mod ctr;
pub mod env;
pub mod oci_image;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod shim;

pub use containerd::Containerd;
pub use ctr::{Ctr, Event, Events, PsRow, TaskRow};
pub use env::{skip, Env, Executor, RunBuilder, TetherConfig};
pub use process::{wait_until, Output, Proc};
pub use runtime::Runtime;

use std::time::Duration;

/// Runs each scenario `fn NAME(executor: Executor)` once per tether executor, as the tests
/// `runc::NAME` and `native::NAME` (`cargo test native::` runs one executor's suite).
#[macro_export]
macro_rules! for_each_executor {
    ($($scenario:ident),+ $(,)?) => {
        mod runc {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::Executor::Runc)
            })+
        }
        mod native {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::Executor::Native)
            })+
        }
    };
}

/// Seconds, for readability in tests.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
