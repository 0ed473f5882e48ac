//! Which containerd runtime the scenarios drive, and where its shim binary is.

use std::path::{Path, PathBuf};

/// tether's runtime type.
pub const TETHER: &str = "io.containerd.tether.v2";
/// containerd's own Go shim, the reference behaviour.
pub const GO_RUNC: &str = "io.containerd.runc.v2";
/// Selects the runtime under test (default: tether).
pub const RUNTIME_ENV: &str = "TETHER_TEST_RUNTIME";
/// A tether TOML config passed (`--runtime-config-path`) to every `ctr run` that does not set
/// its own, e.g. to run the whole suite with another executor.
pub const RUNTIME_CONFIG_ENV: &str = "TETHER_TEST_RUNTIME_CONFIG";
/// Overrides where the shim binary is taken from.
pub const SHIM_BINARY_ENV: &str = "TETHER_SHIM_BINARY";
/// The shim binary's file name.
pub const SHIM_BINARY: &str = "containerd-shim-tether-v2";

/// A containerd runtime type, e.g. `io.containerd.tether.v2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
}

impl Runtime {
    pub fn new(name: impl Into<String>) -> Runtime {
        Runtime { name: name.into() }
    }

    /// `$TETHER_TEST_RUNTIME`, else tether.
    pub fn from_env() -> Runtime {
        match std::env::var(RUNTIME_ENV) {
            Ok(v) if !v.trim().is_empty() => Runtime::new(v.trim()),
            _ => Runtime::new(TETHER),
        }
    }

    pub fn tether() -> Runtime {
        Runtime::new(TETHER)
    }

    pub fn is_tether(&self) -> bool {
        self.name == TETHER
    }

    /// containerd's Go runc shim (the reference).
    pub fn is_go_runc(&self) -> bool {
        self.name == GO_RUNC
    }

    /// The binary containerd looks for on its PATH: `io.containerd.NAME.v2` →
    /// `containerd-shim-NAME-v2`.
    pub fn shim_binary_name(&self) -> String {
        let parts: Vec<&str> = self.name.split('.').collect();
        match parts.as_slice() {
            ["io", "containerd", name, version] => format!("containerd-shim-{name}-{version}"),
            _ => panic!("runtime {:?} is not of the form io.containerd.NAME.VERSION", self.name),
        }
    }

    /// The tether config from `$TETHER_TEST_RUNTIME_CONFIG`, if any (tether only).
    pub fn default_config(&self) -> Option<PathBuf> {
        if !self.is_tether() {
            return None;
        }
        std::env::var_os(RUNTIME_CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
    }
}

/// The cargo target profile dir (`target/debug`) this executable was built into: test
/// executables live in `<profile>/deps/`, binaries in `<profile>/`. Honours wherever
/// CARGO_TARGET_DIR put them, since it starts from the running executable.
pub fn target_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?.to_path_buf();
    }
    Some(dir)
}

/// The built `containerd-shim-tether-v2`: `$TETHER_SHIM_BINARY`, else next to this executable
/// in the cargo target dir. Panics with instructions when it has not been built.
pub fn tether_shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(SHIM_BINARY_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(is_executable(&p), "{SHIM_BINARY_ENV}={} is not an executable file", p.display());
        return absolute(&p);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = target_profile_dir() {
        candidates.push(dir.join(SHIM_BINARY));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(&dir).join("debug").join(SHIM_BINARY));
        candidates.push(PathBuf::from(&dir).join("release").join(SHIM_BINARY));
    }
    for c in &candidates {
        if is_executable(c) {
            return absolute(c);
        }
    }
    panic!(
        "the tether shim binary {SHIM_BINARY} was not found (looked at: {}).\n\
         Build it first: `cargo build --workspace` (then `cargo test --workspace`),\n\
         or point {SHIM_BINARY_ENV} at it, or run the suite against containerd's Go shim with \
         {RUNTIME_ENV}={GO_RUNC}.",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    );
}

/// The built `tether-ctl`, beside the shim binary.
pub fn tether_ctl_binary() -> PathBuf {
    let ctl = tether_shim_binary().with_file_name("tether-ctl");
    assert!(is_executable(&ctl), "{} is not built: `cargo build --workspace`", ctl.display());
    ctl
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A regular file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Looks `name` up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

/// The host's runc.
fn host_runc() -> PathBuf {
    which("runc")
        .or_else(|| Some(PathBuf::from("/usr/sbin/runc")))
        .filter(|p| p.exists())
        .expect("runc not found: apt-get install runc")
}

/// Writes an executable script `dir/name`.
fn write_script(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A runc under another name: a wrapper that records each invocation, then runs the real runc.
pub fn recording_runc(dir: &Path, name: &str, record: &Path) -> PathBuf {
    let text = format!("#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n", record.display(), host_runc().display());
    write_script(dir, name, &text)
}

/// A slow runc: a wrapper that sleeps `seconds` before each call of the subcommand `op`
/// (`exec`, ...), then runs the real runc.
pub fn slow_runc(dir: &Path, name: &str, op: &str, seconds: u32) -> PathBuf {
    let text = format!(
        "#!/bin/sh\nfor arg; do [ \"$arg\" = '{op}' ] && sleep {seconds} && break; done\nexec '{}' \"$@\"\n",
        host_runc().display()
    );
    write_script(dir, name, &text)
}

/// A runc whose containers are not the shim's children: `create` runs under a subreaper of
/// its own that stays behind when the call returns, so the container's init is that
/// process's child, which reaps it. The shim never sees the init's exit status (a perl
/// script: perl is part of every Debian system).
pub fn adopting_runc(dir: &Path, name: &str) -> PathBuf {
    // prctl's syscall number (perl has no prctl of its own).
    let prctl = match std::env::consts::ARCH {
        "x86_64" => 157,
        "aarch64" => 167,
        other => panic!("adopting_runc: no prctl syscall number for {other}"),
    };
    let text = format!(
        r#"#!/usr/bin/perl
use strict;
my $runc = '{runc}';
exec($runc, @ARGV) or die "exec $runc: $!" unless grep {{ $_ eq 'create' }} @ARGV;
pipe(my $status_r, my $status_w) or die "pipe: $!";
my $keeper = fork() // die "fork: $!";
if ($keeper == 0) {{
    close($status_r);
    # PR_SET_CHILD_SUBREAPER: the container's init comes to us when runc exits.
    syscall({prctl}, 36, 1, 0, 0, 0) == 0 or die "prctl: $!";
    my $create = fork() // die "fork: $!";
    if ($create == 0) {{ exec($runc, @ARGV) or die "exec $runc: $!"; }}
    # Let go of the container's stdio, so that it ends when the container does.
    open(STDIN, '<', '/dev/null'); open(STDOUT, '>', '/dev/null'); open(STDERR, '>', '/dev/null');
    waitpid($create, 0);
    my $code = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
    syswrite($status_w, "$code
");
    close($status_w);
    1 while wait() != -1;
    exit 0;
}}
close($status_w);
my $code = <$status_r>;
exit(defined $code ? $code : 1);
"#,
        runc = host_runc().display()
    );
    write_script(dir, name, &text)
}
