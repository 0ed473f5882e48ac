//! Facts about the machine and the run that belong next to the numbers.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DDTHH:MM:SSZ` for `secs` since the epoch (UTC).
pub fn iso8601(secs: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm), so that no date crate is needed.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

pub fn now() -> String {
    iso8601(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
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
    fs::metadata(p).map(|m| format!("{} ({:.1} MB)", p.display(), m.len() as f64 / 1e6)).unwrap_or_else(|_| p.display().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
