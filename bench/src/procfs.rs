//! What /proc says about a process: its memory, its threads, how often they ran, and its
//! children.

use std::fs;

/// Resident memory of a process, from /proc/PID/smaps_rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set: every page mapped and present, shared ones counted in full.
    pub rss_kib: u64,
    /// Proportional set: shared pages divided among the processes that map them, so that
    /// the PSS of N processes adds up to what they really cost together.
    pub pss_kib: u64,
    /// The anonymous part of the resident set: heap, stacks, written data. What the process
    /// holds of its own, as opposed to its binary's pages, which the page cache shares.
    pub anon_kib: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
            anon_kib: self.anon_kib + o.anon_kib,
        }
    }
}

/// Parses the `Rss:`, `Pss:` and `Anonymous:` lines of smaps_rollup.
pub fn parse_smaps_rollup(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some(Memory { rss_kib: field("Rss:")?, pss_kib: field("Pss:")?, anon_kib: field("Anonymous:")? })
}

/// The memory of `pid`, None if it is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    parse_smaps_rollup(&fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// A `Name:   value` line of a /proc status file, as a number.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
}

/// The number of threads of `pid` (`Threads:` of /proc/PID/status), None if it is gone.
pub fn threads(pid: u32) -> Option<u64> {
    status_field(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "Threads")
}

/// One thread's context switches, with its name (`comm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSwitches {
    pub tid: u32,
    pub name: String,
    pub switches: u64,
}

/// How many times each thread of `pid` was switched out (voluntary: it waited; and
/// nonvoluntary: preempted), from /proc/PID/task/*/status: every wake-up of a thread ends in
/// one (the process's own status counts its main thread only). A thread that ended is not
/// listed; None if the process is gone.
pub fn thread_switches(pid: u32) -> Option<Vec<ThreadSwitches>> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        let Ok(status) = fs::read_to_string(task.path().join("status")) else { continue };
        let switches = status_field(&status, "voluntary_ctxt_switches").unwrap_or(0)
            + status_field(&status, "nonvoluntary_ctxt_switches").unwrap_or(0);
        let name = status.lines().find_map(|l| l.strip_prefix("Name:")).unwrap_or("").trim().to_owned();
        out.push(ThreadSwitches { tid, name, switches });
    }
    Some(out)
}

/// argv of `pid` (empty if it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// Every process whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| tether_tests::env::parent_pid(*p) == Some(pid))
        .collect()
}

/// A shim's own helper processes that belong in its memory figure: tether's native helper
/// (`containerd-shim-tether-v2 native-helper`), which the native executor forks its workers
/// from. Container processes are children of the shim too, and are left out.
pub fn helpers(shim: u32) -> Vec<u32> {
    children(shim).into_iter().filter(|c| cmdline(*c).iter().any(|a| a == "native-helper")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_pss_and_anonymous() {
        let text = "55d0c0000000-7ffc00000000 ---p 00000000 00:00 0   [rollup]\nRss:                2048 kB\nPss:                 900 kB\nPss_Anon:            512 kB\nAnonymous:           600 kB\n";
        assert_eq!(parse_smaps_rollup(text), Some(Memory { rss_kib: 2048, pss_kib: 900, anon_kib: 600 }));
        assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None);
    }

    #[test]
    fn our_own_process_is_visible() {
        let me = std::process::id();
        assert!(memory(me).is_some_and(|m| m.rss_kib > 0 && m.pss_kib > 0));
        assert!(!cmdline(me).is_empty());
        assert!(threads(me).is_some_and(|n| n >= 1));
        assert!(thread_switches(me).is_some_and(|t| t.iter().map(|t| t.switches).sum::<u64>() > 0));
    }

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tx\nThreads:\t3\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n";
        assert_eq!(status_field(status, "Threads"), Some(3));
        assert_eq!(status_field(status, "voluntary_ctxt_switches"), Some(10));
        assert_eq!(status_field(status, "nonvoluntary_ctxt_switches"), Some(2));
        assert_eq!(status_field(status, "Missing"), None);
    }
}
