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

pub use containerd::Containerd;
pub use ctr::{Ctr, Event, Events, PsRow, TaskRow};
pub use daemon::Daemon;
pub use env::{skip, Env, Executor, RunBuilder, TetherConfig};
pub use process::{wait_until, Output, Proc};
pub use runtime::Runtime;

use std::time::Duration;

/// One run of a behaviour scenario: which containerd drives tether, and which executor
/// tether runs the containers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub daemon: Daemon,
    pub executor: Executor,
}

/// Runs each scenario `fn NAME(case: Case)` once per containerd generation and tether
/// executor, as the tests `containerd1::runc::NAME`, `containerd1::native::NAME`,
/// `containerd2::runc::NAME` and `containerd2::native::NAME` (`cargo test containerd2::` runs
/// one daemon's suites, `cargo test native::` one executor's).
#[macro_export]
macro_rules! for_each_executor {
    ($($scenario:ident),+ $(,)?) => {
        $crate::for_each_executor!(@daemon containerd1, V1, $($scenario),+);
        $crate::for_each_executor!(@daemon containerd2, V2, $($scenario),+);
    };
    (@daemon $module:ident, $daemon:ident, $($scenario:ident),+) => {
        mod $module {
            mod runc {
                $(#[test]
                fn $scenario() {
                    super::super::$scenario($crate::Case { daemon: $crate::Daemon::$daemon, executor: $crate::Executor::Runc })
                })+
            }
            mod native {
                $(#[test]
                fn $scenario() {
                    super::super::$scenario($crate::Case { daemon: $crate::Daemon::$daemon, executor: $crate::Executor::Native })
                })+
            }
        }
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
