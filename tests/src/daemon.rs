//! Which containerd generation a test runs against: the host's containerd 1.x (Debian 12's
//! 1.6) or containerd 2.x (Debian unstable's, fetched by `.ci/containerd2` into
//! `.deps/containerd2` of the checkout). Each comes with its own `ctr`, and 2.x with its own
//! Go shim, the reference behaviour on that generation.
//!
//! The two generations differ where the shim can see it: 1.x does not wait for a task's output
//! to close before it deletes the task, 2.x does; 2.x speaks task API v3 and bootstraps
//! shims with `MAX_SHIM_VERSION`; 2.x forgets a task that exited while it was down instead of
//! listing it stopped. Scenarios run on both ([`crate::for_each_executor!`],
//! [`crate::for_each_daemon!`]) and state a difference where one is on purpose.

use std::path::PathBuf;

use crate::runtime;

/// Where the 2.x binaries are: `containerd`, `ctr` and `containerd-shim-runc-v2` in one dir.
pub const CONTAINERD2_DIR_ENV: &str = "TETHER_TEST_CONTAINERD2_DIR";

/// A containerd generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// The host's containerd (`$TETHER_TEST_CONTAINERD`, else /usr/bin/containerd): 1.6 here.
    V1,
    /// containerd 2.x from `$TETHER_TEST_CONTAINERD2_DIR`, else `.deps/containerd2/usr/bin`.
    V2,
}

impl Daemon {
    /// Its name in test names and temp dirs: `containerd1`, `containerd2`.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::V1 => "containerd1",
            Daemon::V2 => "containerd2",
        }
    }

    pub fn is_v2(self) -> bool {
        self == Daemon::V2
    }

    /// The `containerd` binary.
    pub fn containerd(self) -> PathBuf {
        match self {
            Daemon::V1 => {
                if let Some(p) = std::env::var_os("TETHER_TEST_CONTAINERD").filter(|v| !v.is_empty()) {
                    return PathBuf::from(p);
                }
                let usr = PathBuf::from("/usr/bin/containerd");
                if runtime::is_executable(&usr) {
                    return usr;
                }
                runtime::which("containerd")
                    .unwrap_or_else(|| panic!("containerd not found: apt-get install containerd"))
            }
            Daemon::V2 => v2_binary("containerd"),
        }
    }

    /// The `ctr` of the same generation.
    pub fn ctr(self) -> PathBuf {
        match self {
            Daemon::V1 => {
                if let Some(p) = std::env::var_os("TETHER_TEST_CTR").filter(|v| !v.is_empty()) {
                    return PathBuf::from(p);
                }
                runtime::which("ctr").unwrap_or_else(|| panic!("ctr not found on PATH: apt-get install containerd"))
            }
            Daemon::V2 => v2_binary("ctr"),
        }
    }

    /// containerd's Go runc shim of the same generation, to put first on its PATH (1.x: the
    /// host's, found on the PATH anyway).
    pub fn go_shim(self) -> Option<PathBuf> {
        self.is_v2().then(|| v2_binary("containerd-shim-runc-v2"))
    }
}

/// `name` in the 2.x binaries' dir; panics with how to get them when it is missing.
fn v2_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os(CONTAINERD2_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.deps/containerd2/usr/bin")));
    let path = dir.join(name);
    assert!(
        runtime::is_executable(&path),
        "containerd 2.x's {name} is not at {}: run `.ci/containerd2` (fetches Debian unstable's containerd \
         into .deps/containerd2), point {CONTAINERD2_DIR_ENV} at a dir holding containerd, ctr and \
         containerd-shim-runc-v2, or run the containerd 1.x tests alone (`cargo test -p tether-tests containerd1::`)",
        path.display()
    );
    std::fs::canonicalize(&path).unwrap_or(path)
}
