//! Facts about the machine and the run that belong next to the numbers.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

/// The run's start, in UTC (the shim's own log time format).
pub fn now() -> String {
    tether_shim::logger::rfc3339(SystemTime::now())
}

/// The first line of `program args` (its version), or what went wrong.
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned(),
        Err(e) => format!("({program}: {e})"),
    }
}

/// The 1, 5 and 15 minute load averages: how busy the machine was (others' builds show here).
pub fn load() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

fn memory_total() -> String {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(|v| v.trim().to_owned()).unwrap_or_default()
}

/// cgroup v2 has one unified hierarchy (cgroup2fs at /sys/fs/cgroup); v1 and hybrid mount a
/// tmpfs there.
fn cgroup_mode() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1 (or hybrid)"
    }
}

fn file_size(p: &Path) -> String {
    fs::metadata(p)
        .map(|m| format!("{} ({:.1} MB)", p.display(), m.len() as f64 / 1e6))
        .unwrap_or_else(|_| p.display().to_string())
}

/// What the report shows about the machine; `shims` are the shim binaries compared.
pub fn describe(shims: &[(String, std::path::PathBuf)]) -> Vec<(String, String)> {
    let mut v = vec![
        ("kernel".to_owned(), fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()),
        ("cpu".to_owned(), cpu_model()),
        ("cpus".to_owned(), std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_default()),
        ("memory".to_owned(), memory_total()),
        ("cgroups".to_owned(), cgroup_mode().to_owned()),
        ("containerd".to_owned(), first_line("containerd", &["--version"])),
        ("runc".to_owned(), first_line("runc", &["--version"])),
        ("load at start".to_owned(), load()),
    ];
    for (name, path) in shims {
        v.push((format!("shim {name}"), file_size(path)));
    }
    v
}
