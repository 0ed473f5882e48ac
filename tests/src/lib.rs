//! tether-tests: the harness for tether's integration tests.
//!
//! Every test starts its own containerd (Debian 12's 1.6, or 2.x: see [`daemon`]) from a generated config in a temp
//! dir (own root, state, sockets; CRI off unless a test uses [`cri::CriEnv`]), with the shim
//! under test on containerd's PATH, and drives it with `ctr` in a namespace of its own, on a
//! rootfs built from busybox-static (or, for CRI tests, through the CRI API on images made
//! from it).
//! Nothing outside the temp dir is touched, except the shim sockets that shims create under
//! /run/containerd/s and the runtime state of the runtime under test.
//!
//! The containerd generation and the executor are parameters: [`for_each_executor!`] runs a
//! scenario on containerd 1.x and 2.x, each with tether's runc executor and with its native
//! one. The runtime is a parameter too: `TETHER_TEST_RUNTIME=io.containerd.runc.v2` runs the same
//! scenarios against containerd's Go shim, the reference behaviour.

pub mod cgroup;
pub mod containerd;
pub mod cri;
pub mod ctr;
pub mod daemon;
pub mod env;
pub mod mounts;
pub mod oci_image;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod shim;

pub use containerd::{Containerd, LogLevel};
pub use ctr::{Ctr, Event, Events, PsRow, TaskRow};
pub use daemon::Daemon;
pub use env::{skip, Env, Executor, RunBuilder, TetherConfig};
pub use process::{wait_until, Output, Proc};
pub use runtime::Runtime;

use std::time::Duration;

/// One run of a behaviour scenario: which containerd drives tether, which executor tether
/// runs the containers with, and (for CRI scenarios) who holds a pod's namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub daemon: Daemon,
    pub executor: Executor,
    pub sandboxer: Sandboxer,
}

/// Who makes a CRI pod: the CRI handler's `sandboxer` (containerd 2.x's name for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandboxer {
    /// containerd's own (`podsandbox`): a pause container holds the pod's namespaces.
    Podsandbox,
    /// tether's Sandbox API (`shim`, containerd 2.x): the pod's shim holds them, no pause.
    Shim,
}

/// Runs each scenario `fn NAME(case: Case)` once per containerd generation and tether
/// executor, as the tests `containerd1::runc::NAME`, `containerd1::native::NAME`,
/// `containerd2::runc::NAME` and `containerd2::native::NAME` (`cargo test containerd2::` runs
/// one daemon's suites, `cargo test native::` one executor's).
#[macro_export]
macro_rules! for_each_executor {
    ($($scenario:ident),+ $(,)?) => {
        mod containerd1 {
            $crate::for_each_executor!(@case runc, V1, Runc, Podsandbox, $($scenario),+);
            $crate::for_each_executor!(@case native, V1, Native, Podsandbox, $($scenario),+);
        }
        mod containerd2 {
            $crate::for_each_executor!(@case runc, V2, Runc, Podsandbox, $($scenario),+);
            $crate::for_each_executor!(@case native, V2, Native, Podsandbox, $($scenario),+);
        }
    };
    (@case $module:ident, $daemon:ident, $executor:ident, $sandboxer:ident, $($scenario:ident),+) => {
        mod $module {
            $(#[test]
            fn $scenario() {
                super::super::$scenario($crate::Case {
                    daemon: $crate::Daemon::$daemon,
                    executor: $crate::Executor::$executor,
                    sandboxer: $crate::Sandboxer::$sandboxer,
                })
            })+
        }
    };
}

/// Runs each CRI scenario `fn NAME(case: Case)` on pods of tether's own sandboxes (containerd
/// 2.x, [`Sandboxer::Shim`]), per executor: the tests `containerd2_sandbox::runc::NAME` and
/// `containerd2_sandbox::native::NAME`.
#[macro_export]
macro_rules! for_each_sandbox_case {
    ($($scenario:ident),+ $(,)?) => {
        mod containerd2_sandbox {
            $crate::for_each_executor!(@case runc, V2, Runc, Shim, $($scenario),+);
            $crate::for_each_executor!(@case native, V2, Native, Shim, $($scenario),+);
        }
    };
}

/// Runs each CRI scenario on every case: pause-based pods ([`for_each_executor!`]) and tether's
/// own sandboxes ([`for_each_sandbox_case!`]).
#[macro_export]
macro_rules! for_each_cri_case {
    ($($scenario:ident),+ $(,)?) => {
        $crate::for_each_executor!($($scenario),+);
        $crate::for_each_sandbox_case!($($scenario),+);
    };
}

/// Runs each scenario `fn NAME(daemon: Daemon)` once per containerd generation, as the tests
/// `containerd1::NAME` and `containerd2::NAME`.
#[macro_export]
macro_rules! for_each_daemon {
    ($($scenario:ident),+ $(,)?) => {
        mod containerd1 {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::Daemon::V1)
            })+
        }
        mod containerd2 {
            $(#[test]
            fn $scenario() {
                super::$scenario($crate::Daemon::V2)
            })+
        }
    };
}

/// Seconds, for readability in tests.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
