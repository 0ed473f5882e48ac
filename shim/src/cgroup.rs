//! A container's cgroup: where it is (v1 per controller, or the v2 unified tree), its metrics
//! in containerd's message for that mode, and its OOM-kill counter.
//!
//! The cgroup is found from `/proc/<init pid>/cgroup` right after create, so that it is right
//! whatever `linux.cgroupsPath` or cgroup driver (cgroupfs, systemd) the runtime used.
//! Also: a head start on the kernel's wait that moving a process into a cgroup begins with
//! ([`start_migration_grace_period`]).

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
    fs, io,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use tether_protos::{
    cgroups::metrics as v1,
    cgroups_v2::metrics as v2,
    protobuf::{well_known_types::any::Any, MessageField},
};

use crate::{events::to_any, reaper::Reaper};

/// Where the unified (v2-only) hierarchy is mounted when the host runs cgroup v2.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";
/// Kernel clock ticks per second, the unit of `cpuacct.stat`.
const USER_HZ: u64 = 100;

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v1 (also the hybrid layout): a directory per controller.
    V1(HashMap<String, PathBuf>),
    /// cgroup v2: one directory.
    V2(PathBuf),
}

impl Cgroup {
    /// The cgroup of process `pid`, in the host's cgroup mode.
    pub fn of_pid(pid: i32) -> io::Result<Cgroup> {
        let proc = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        if Path::new(UNIFIED_ROOT).join("cgroup.controllers").exists() {
            let rel = parse_proc_cgroup(&proc)
                .remove("")
                .ok_or_else(|| io::Error::other(format!("process {pid} has no cgroup v2 entry")))?;
            return Ok(Cgroup::V2(join_abs(Path::new(UNIFIED_ROOT), &rel)));
        }
        let mounts = v1_mounts(&fs::read_to_string("/proc/self/mountinfo")?);
        let paths = parse_proc_cgroup(&proc)
            .into_iter()
            .flat_map(|(controllers, rel)| {
                let mounts = &mounts;
                controllers
                    .split(',')
                    .filter_map(move |c| mounts.get(c).map(|m| (c.to_string(), join_abs(m, &rel))))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Cgroup::V1(paths))
    }

    /// The cgroup at path `rel` of every hierarchy (`/kubepods/pod1`), in the host's cgroup
    /// mode: a cgroup no process of the shim's names, such as a pod's.
    pub fn at(rel: &str) -> io::Result<Cgroup> {
        if Path::new(UNIFIED_ROOT).join("cgroup.controllers").exists() {
            return Ok(Cgroup::V2(join_abs(Path::new(UNIFIED_ROOT), rel)));
        }
        let mounts = v1_mounts(&fs::read_to_string("/proc/self/mountinfo")?);
        Ok(Cgroup::V1(mounts.into_iter().map(|(controller, root)| (controller, join_abs(&root, rel))).collect()))
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroup::V1(paths) => paths.get(controller).map(PathBuf::as_path),
            Cgroup::V2(_) => None,
        }
    }

    /// containerd's metrics message for this cgroup: `io.containerd.cgroups.v1.Metrics` or
    /// `io.containerd.cgroups.v2.Metrics`, packed as containerd expects in StatsResponse.
    pub fn metrics(&self) -> Any {
        match self {
            Cgroup::V1(_) => to_any(&self.v1_metrics()),
            Cgroup::V2(dir) => to_any(&v2_metrics(dir)),
        }
    }

    /// How many processes the kernel OOM-killed in this cgroup so far.
    pub fn oom_kills(&self) -> Option<u64> {
        match self {
            Cgroup::V1(_) => read_kv(&self.v1_dir("memory")?.join("memory.oom_control")).get("oom_kill").copied(),
            Cgroup::V2(dir) => read_kv(&dir.join("memory.events")).get("oom_kill").copied(),
        }
    }

    /// Whether the cgroup still exists (it is removed with its container).
    pub fn exists(&self) -> bool {
        self.memory_dir().is_some_and(Path::is_dir)
    }

    /// Whether any process is left in the cgroup: false once it is empty or removed; true
    /// when that cannot be told (no memory controller).
    pub fn populated(&self) -> bool {
        match self {
            Cgroup::V1(_) => match self.memory_dir() {
                Some(dir) => fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()),
                None => true,
            },
            Cgroup::V2(dir) => read_kv(&dir.join("cgroup.events")).get("populated").is_some_and(|n| *n > 0),
        }
    }

    /// The directory holding the memory controller's files (`memory.oom_control` on v1,
    /// `memory.events` on v2), where OOM kills are counted and signalled.
    pub fn memory_dir(&self) -> Option<&Path> {
        match self {
            Cgroup::V1(_) => self.v1_dir("memory"),
            Cgroup::V2(dir) => Some(dir),
        }
    }

    fn v1_metrics(&self) -> v1::Metrics {
        let mut m = v1::Metrics::new();
        if let Some(dir) = self.v1_dir("memory") {
            m.memory = MessageField::some(v1_memory(dir));
            let oom = read_kv(&dir.join("memory.oom_control"));
            m.memory_oom_control = MessageField::some(v1::MemoryOomControl {
                oom_kill_disable: get(&oom, "oom_kill_disable"),
                under_oom: get(&oom, "under_oom"),
                oom_kill: get(&oom, "oom_kill"),
                ..Default::default()
            });
        }
        let mut cpu = v1::CPUStat::new();
        if let Some(dir) = self.v1_dir("cpuacct") {
            let stat = read_kv(&dir.join("cpuacct.stat"));
            cpu.usage = MessageField::some(v1::CPUUsage {
                total: read_u64(&dir.join("cpuacct.usage")).unwrap_or(0),
                kernel: get(&stat, "system") * (1_000_000_000 / USER_HZ),
                user: get(&stat, "user") * (1_000_000_000 / USER_HZ),
                per_cpu: read_string(&dir.join("cpuacct.usage_percpu"))
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect(),
                ..Default::default()
            });
        }
        if let Some(dir) = self.v1_dir("cpu") {
            let stat = read_kv(&dir.join("cpu.stat"));
            cpu.throttling = MessageField::some(v1::Throttle {
                periods: get(&stat, "nr_periods"),
                throttled_periods: get(&stat, "nr_throttled"),
                throttled_time: get(&stat, "throttled_time"),
                ..Default::default()
            });
        }
        m.cpu = MessageField::some(cpu);
        if let Some(dir) = self.v1_dir("pids") {
            m.pids = MessageField::some(v1::PidsStat {
                current: read_u64(&dir.join("pids.current")).unwrap_or(0),
                limit: read_u64(&dir.join("pids.max")).filter(|&l| l != u64::MAX).unwrap_or(0),
                ..Default::default()
            });
        }
        if let Some(dir) = self.v1_dir("blkio") {
            m.blkio = MessageField::some(v1_blkio(dir));
        }
        if let Some(dir) = self.v1_dir("hugetlb") {
            m.hugetlb = hugetlb_sizes(dir, "hugetlb.", ".usage_in_bytes")
                .into_iter()
                .map(|size| v1::HugetlbStat {
                    usage: read_u64(&dir.join(format!("hugetlb.{size}.usage_in_bytes"))).unwrap_or(0),
                    max: read_u64(&dir.join(format!("hugetlb.{size}.max_usage_in_bytes"))).unwrap_or(0),
                    failcnt: read_u64(&dir.join(format!("hugetlb.{size}.failcnt"))).unwrap_or(0),
                    pagesize: size,
                    ..Default::default()
                })
                .collect();
        }
        m
    }
}

fn v1_memory(dir: &Path) -> v1::MemoryStat {
    let s = read_kv(&dir.join("memory.stat"));
    let entry = |prefix: &str| {
        let f = |name: &str| read_u64(&dir.join(format!("{prefix}.{name}"))).unwrap_or(0);
        MessageField::some(v1::MemoryEntry {
            limit: f("limit_in_bytes"),
            usage: f("usage_in_bytes"),
            max: f("max_usage_in_bytes"),
            failcnt: f("failcnt"),
            ..Default::default()
        })
    };
    v1::MemoryStat {
        cache: get(&s, "cache"),
        rss: get(&s, "rss"),
        rss_huge: get(&s, "rss_huge"),
        mapped_file: get(&s, "mapped_file"),
        dirty: get(&s, "dirty"),
        writeback: get(&s, "writeback"),
        pg_pg_in: get(&s, "pgpgin"),
        pg_pg_out: get(&s, "pgpgout"),
        pg_fault: get(&s, "pgfault"),
        pg_maj_fault: get(&s, "pgmajfault"),
        inactive_anon: get(&s, "inactive_anon"),
        active_anon: get(&s, "active_anon"),
        inactive_file: get(&s, "inactive_file"),
        active_file: get(&s, "active_file"),
        unevictable: get(&s, "unevictable"),
        hierarchical_memory_limit: get(&s, "hierarchical_memory_limit"),
        hierarchical_swap_limit: get(&s, "hierarchical_memsw_limit"),
        total_cache: get(&s, "total_cache"),
        total_rss: get(&s, "total_rss"),
        total_rss_huge: get(&s, "total_rss_huge"),
        total_mapped_file: get(&s, "total_mapped_file"),
        total_dirty: get(&s, "total_dirty"),
        total_writeback: get(&s, "total_writeback"),
        total_pg_pg_in: get(&s, "total_pgpgin"),
        total_pg_pg_out: get(&s, "total_pgpgout"),
        total_pg_fault: get(&s, "total_pgfault"),
        total_pg_maj_fault: get(&s, "total_pgmajfault"),
        total_inactive_anon: get(&s, "total_inactive_anon"),
        total_active_anon: get(&s, "total_active_anon"),
        total_inactive_file: get(&s, "total_inactive_file"),
        total_active_file: get(&s, "total_active_file"),
        total_unevictable: get(&s, "total_unevictable"),
        usage: entry("memory"),
        swap: entry("memory.memsw"),
        kernel: entry("memory.kmem"),
        kernel_tcp: entry("memory.kmem.tcp"),
        ..Default::default()
    }
}

/// blkio's recursive stats; the throttle files where the (CFQ/BFQ) policy files are absent
/// or empty, as on most modern kernels.
fn v1_blkio(dir: &Path) -> v1::BlkIOStat {
    let entries = |name: &str| {
        let primary = parse_blkio(&read_string(&dir.join(format!("blkio.{name}"))));
        if primary.is_empty() {
            parse_blkio(&read_string(&dir.join(format!("blkio.throttle.{name}"))))
        } else {
            primary
        }
    };
    v1::BlkIOStat {
        io_service_bytes_recursive: entries("io_service_bytes_recursive"),
        io_serviced_recursive: entries("io_serviced_recursive"),
        io_queued_recursive: entries("io_queued_recursive"),
        io_service_time_recursive: entries("io_service_time_recursive"),
        io_wait_time_recursive: entries("io_wait_time_recursive"),
        io_merged_recursive: entries("io_merged_recursive"),
        io_time_recursive: entries("time_recursive"),
        sectors_recursive: entries("sectors_recursive"),
        ..Default::default()
    }
}

/// Lines `MAJ:MIN [Op] VALUE`; the `Total` line is not a device.
fn parse_blkio(text: &str) -> Vec<v1::BlkIOEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (*dev, *op, *value),
                [dev, value] if dev.contains(':') => (*dev, "", *value),
                _ => return None,
            };
            let (major, minor) = dev.split_once(':')?;
            Some(v1::BlkIOEntry {
                op: op.to_string(),
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

fn v2_metrics(dir: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    m.pids = MessageField::some(v2::PidsStat {
        current: read_u64(&dir.join("pids.current")).unwrap_or(0),
        limit: read_u64(&dir.join("pids.max")).filter(|&l| l != u64::MAX).unwrap_or(0),
        ..Default::default()
    });
    let cpu = read_kv(&dir.join("cpu.stat"));
    m.cpu = MessageField::some(v2::CPUStat {
        usage_usec: get(&cpu, "usage_usec"),
        user_usec: get(&cpu, "user_usec"),
        system_usec: get(&cpu, "system_usec"),
        nr_periods: get(&cpu, "nr_periods"),
        nr_throttled: get(&cpu, "nr_throttled"),
        throttled_usec: get(&cpu, "throttled_usec"),
        nr_bursts: get(&cpu, "nr_bursts"),
        burst_usec: get(&cpu, "burst_usec"),
        ..Default::default()
    });
    let s = read_kv(&dir.join("memory.stat"));
    m.memory = MessageField::some(v2::MemoryStat {
        anon: get(&s, "anon"),
        file: get(&s, "file"),
        kernel_stack: get(&s, "kernel_stack"),
        slab: get(&s, "slab"),
        sock: get(&s, "sock"),
        shmem: get(&s, "shmem"),
        file_mapped: get(&s, "file_mapped"),
        file_dirty: get(&s, "file_dirty"),
        file_writeback: get(&s, "file_writeback"),
        anon_thp: get(&s, "anon_thp"),
        inactive_anon: get(&s, "inactive_anon"),
        active_anon: get(&s, "active_anon"),
        inactive_file: get(&s, "inactive_file"),
        active_file: get(&s, "active_file"),
        unevictable: get(&s, "unevictable"),
        slab_reclaimable: get(&s, "slab_reclaimable"),
        slab_unreclaimable: get(&s, "slab_unreclaimable"),
        pgfault: get(&s, "pgfault"),
        pgmajfault: get(&s, "pgmajfault"),
        workingset_refault: get(&s, "workingset_refault"),
        workingset_activate: get(&s, "workingset_activate"),
        workingset_nodereclaim: get(&s, "workingset_nodereclaim"),
        pgrefill: get(&s, "pgrefill"),
        pgscan: get(&s, "pgscan"),
        pgsteal: get(&s, "pgsteal"),
        pgactivate: get(&s, "pgactivate"),
        pgdeactivate: get(&s, "pgdeactivate"),
        pglazyfree: get(&s, "pglazyfree"),
        pglazyfreed: get(&s, "pglazyfreed"),
        thp_fault_alloc: get(&s, "thp_fault_alloc"),
        thp_collapse_alloc: get(&s, "thp_collapse_alloc"),
        usage: read_u64(&dir.join("memory.current")).unwrap_or(0),
        usage_limit: read_u64(&dir.join("memory.max")).unwrap_or(u64::MAX),
        swap_usage: read_u64(&dir.join("memory.swap.current")).unwrap_or(0),
        swap_limit: read_u64(&dir.join("memory.swap.max")).unwrap_or(u64::MAX),
        max_usage: read_u64(&dir.join("memory.peak")).unwrap_or(0),
        swap_max_usage: read_u64(&dir.join("memory.swap.peak")).unwrap_or(0),
        ..Default::default()
    });
    let ev = read_kv(&dir.join("memory.events"));
    m.memory_events = MessageField::some(v2::MemoryEvents {
        low: get(&ev, "low"),
        high: get(&ev, "high"),
        max: get(&ev, "max"),
        oom: get(&ev, "oom"),
        oom_kill: get(&ev, "oom_kill"),
        oom_group_kill: get(&ev, "oom_group_kill"),
        ..Default::default()
    });
    m.io = MessageField::some(v2::IOStat {
        usage: parse_io_stat(&read_string(&dir.join("io.stat"))),
        ..Default::default()
    });
    m.hugetlb = hugetlb_sizes(dir, "hugetlb.", ".current")
        .into_iter()
        .map(|size| v2::HugeTlbStat {
            current: read_u64(&dir.join(format!("hugetlb.{size}.current"))).unwrap_or(0),
            max: read_u64(&dir.join(format!("hugetlb.{size}.max"))).unwrap_or(0),
            failcnt: read_kv(&dir.join(format!("hugetlb.{size}.events"))).get("max").copied().unwrap_or(0),
            pagesize: size,
            ..Default::default()
        })
        .collect();
    m
}

/// `io.stat` lines: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...`.
fn parse_io_stat(text: &str) -> Vec<v2::IOEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (major, minor) = f.next()?.split_once(':')?;
            let kv: HashMap<&str, u64> =
                f.filter_map(|p| p.split_once('=').and_then(|(k, v)| Some((k, v.parse().ok()?)))).collect();
            let g = |k: &str| kv.get(k).copied().unwrap_or(0);
            Some(v2::IOEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                rbytes: g("rbytes"),
                wbytes: g("wbytes"),
                rios: g("rios"),
                wios: g("wios"),
                ..Default::default()
            })
        })
        .collect()
}

/// The page sizes for which `dir` has `<prefix><size><suffix>` files (e.g. `2MB`).
fn hugetlb_sizes(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut sizes: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort();
    sizes
}

/// `/proc/<pid>/cgroup` as controllers → path (`""` is the v2 entry).
fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// Whether a [`start_migration_grace_period`] move is being made.
static UNDER_WAY: AtomicBool = AtomicBool::new(false);

/// The name of the child [`start_migration_grace_period`] forks.
pub const MOVER_NAME: &CStr = c"cgroup-move";

/// Starts the RCU grace period that the runtime's move of a new process into its cgroup is
/// about to wait for, so that the wait overlaps with the runtime's start-up instead of
/// following it.
///
/// Writing `cgroup.procs` takes the kernel's global `cgroup_threadgroup_rwsem` for writing,
/// and when no move happened in the last few milliseconds that first waits for a grace
/// period (10–20 ms on the machines tether is measured on); moves that follow closely find it
/// passed. So when a move is near (the shim starts serving, a Create or an exec begins), a
/// child forked for the purpose moves itself into the cgroup it is already in, the shim's (a
/// no-op; "0" names the writer), and the runtime's own move a few milliseconds later waits
/// for the rest of that grace period only (native Create: median 21.6 → 14.3 ms). A child,
/// not a thread: the shim's one thread must not wait out the grace period, and a child's exit
/// comes to `reaper` like every other. One such move at a time is enough; if the move cannot
/// be made, only the head start is lost.
pub fn start_migration_grace_period(reaper: &Reaper) {
    if UNDER_WAY.swap(true, Ordering::AcqRel) {
        return;
    }
    let procs = own_cgroup_procs().and_then(|p| CString::new(p.into_os_string().into_vec()).map_err(io::Error::other));
    let procs = match procs {
        Ok(p) => p,
        Err(e) => {
            log::debug!("no cgroup to move into: {e}");
            UNDER_WAY.store(false, Ordering::Release);
            return;
        }
    };
    let spawned = Instant::now();
    // SAFETY: the child makes only async-signal-safe system calls (prctl, open, write, _exit)
    // on memory prepared before the fork, so it is sound even where other threads exist (tests).
    match unsafe { libc::fork() } {
        0 => unsafe {
            // For the few milliseconds it lives it has the shim's command line; its name
            // (`ps -o comm`, /proc/PID/comm) tells it from a shim.
            libc::prctl(libc::PR_SET_NAME, MOVER_NAME.as_ptr());
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            libc::_exit(0)
        },
        -1 => {
            log::debug!("forking the cgroup move: {}", io::Error::last_os_error());
            UNDER_WAY.store(false, Ordering::Release);
        }
        pid => reaper.watch(pid, spawned, |_| UNDER_WAY.store(false, Ordering::Release)),
    }
}

/// The `cgroup.procs` of the cgroup this process is in (in any one hierarchy).
fn own_cgroup_procs() -> io::Result<PathBuf> {
    let dir = match Cgroup::of_pid(std::process::id() as i32)? {
        Cgroup::V2(dir) => dir,
        Cgroup::V1(dirs) => dirs.into_values().next().ok_or_else(|| io::Error::other("in no cgroup v1 hierarchy"))?,
    };
    Ok(dir.join("cgroup.procs"))
}

/// v1 controller → mountpoint, from `/proc/self/mountinfo`.
fn v1_mounts(mountinfo: &str) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split_whitespace();
        if post.next() != Some("cgroup") {
            continue;
        }
        let (Some(_source), Some(super_opts)) = (post.next(), post.next()) else { continue };
        let Some(mountpoint) = pre.split_whitespace().nth(4) else { continue };
        for opt in super_opts.split(',') {
            let name = opt.strip_prefix("name=").map(|n| format!("name={n}")).unwrap_or_else(|| opt.to_string());
            if !matches!(opt, "rw" | "ro") && !opt.starts_with("release_agent") && opt != "clone_children" {
                out.entry(name).or_insert_with(|| PathBuf::from(mountpoint));
            }
        }
    }
    out
}

fn join_abs(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

fn read_string(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A file holding one number; `max` reads as `u64::MAX`.
fn read_u64(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    if t == "max" {
        return Some(u64::MAX);
    }
    t.parse().ok()
}

/// A file of `key value` lines.
fn read_kv(path: &Path) -> HashMap<String, u64> {
    read_string(path)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn get(map: &HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protos::protobuf::Message;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn v2_files_parse_into_v2_metrics() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "memory.current", "1048576\n");
        write(p, "memory.max", "max\n");
        write(p, "memory.peak", "2097152\n");
        write(p, "memory.stat", "anon 4096\nfile 8192\nkernel_stack 16384\npgfault 12\npgmajfault 1\n");
        write(p, "memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n");
        write(
            p,
            "cpu.stat",
            "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 900\n",
        );
        write(
            p,
            "io.stat",
            "8:0 rbytes=1024 wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=2 rios=3 wios=4\n",
        );
        write(p, "pids.current", "7\n");
        write(p, "pids.max", "max\n");
        write(p, "hugetlb.2MB.current", "0\n");
        write(p, "hugetlb.2MB.max", "max\n");
        write(p, "hugetlb.2MB.events", "max 5\n");

        let any = Cgroup::V2(p.to_path_buf()).metrics();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage, 1048576);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.max_usage, 2097152);
        assert_eq!(m.memory.anon, 4096);
        assert_eq!(m.memory.kernel_stack, 16384);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.memory_events.max, 3);
        assert_eq!(m.cpu.usage_usec, 5000);
        assert_eq!(m.cpu.nr_throttled, 4);
        assert_eq!(m.io.usage.len(), 2);
        assert_eq!((m.io.usage[0].major, m.io.usage[0].minor, m.io.usage[0].wbytes), (8, 0, 2048));
        assert_eq!(m.pids.current, 7);
        assert_eq!(m.pids.limit, 0, "max means no limit");
        assert_eq!(m.hugetlb.len(), 1);
        assert_eq!(m.hugetlb[0].pagesize, "2MB");
        assert_eq!(m.hugetlb[0].failcnt, 5);
        assert_eq!(Cgroup::V2(p.to_path_buf()).oom_kills(), Some(1));
    }

    #[test]
    fn v1_files_parse_into_v1_metrics() {
        let d = tempfile::tempdir().unwrap();
        let mut paths = HashMap::new();
        for c in ["memory", "cpu", "cpuacct", "pids", "blkio"] {
            let dir = d.path().join(c);
            fs::create_dir(&dir).unwrap();
            paths.insert(c.to_string(), dir);
        }
        let mem = &paths["memory"];
        write(mem, "memory.stat", "cache 100\nrss 200\ntotal_rss 250\npgfault 9\nhierarchical_memory_limit 33554432\n");
        write(mem, "memory.usage_in_bytes", "300\n");
        write(mem, "memory.limit_in_bytes", "33554432\n");
        write(mem, "memory.max_usage_in_bytes", "400\n");
        write(mem, "memory.failcnt", "2\n");
        write(mem, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        write(&paths["cpuacct"], "cpuacct.usage", "123456789\n");
        write(&paths["cpuacct"], "cpuacct.usage_percpu", "100 200 \n");
        write(&paths["cpuacct"], "cpuacct.stat", "user 5\nsystem 7\n");
        write(&paths["cpu"], "cpu.stat", "nr_periods 4\nnr_throttled 1\nthrottled_time 999\n");
        write(&paths["pids"], "pids.current", "3\n");
        write(&paths["pids"], "pids.max", "64\n");
        write(&paths["blkio"], "blkio.io_service_bytes_recursive", "");
        write(
            &paths["blkio"],
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\nTotal 12288\n",
        );

        let cg = Cgroup::V1(paths);
        let any = cg.metrics();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.cache, 100);
        assert_eq!(m.memory.total_rss, 250);
        assert_eq!(m.memory.usage.usage, 300);
        assert_eq!(m.memory.usage.limit, 33554432);
        assert_eq!(m.memory.usage.max, 400);
        assert_eq!(m.memory.usage.failcnt, 2);
        assert_eq!(m.memory_oom_control.oom_kill, 3);
        assert_eq!(m.cpu.usage.total, 123456789);
        assert_eq!(m.cpu.usage.per_cpu, vec![100, 200]);
        assert_eq!(m.cpu.usage.user, 50_000_000);
        assert_eq!(m.cpu.usage.kernel, 70_000_000);
        assert_eq!(m.cpu.throttling.throttled_time, 999);
        assert_eq!((m.pids.current, m.pids.limit), (3, 64));
        let bytes = &m.blkio.io_service_bytes_recursive;
        assert_eq!(bytes.len(), 2, "Total is not a device");
        assert_eq!((bytes[1].op.as_str(), bytes[1].value), ("Write", 8192));
        assert_eq!(cg.oom_kills(), Some(3));
    }

    #[test]
    fn the_head_start_leaves_the_shim_where_it_was() {
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        let procs = own_cgroup_procs().unwrap();
        assert!(procs.exists(), "{}", procs.display());
        start_migration_grace_period(&crate::reaper::tests::shared());
        // The move is done once the flag is down again.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while UNDER_WAY.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!UNDER_WAY.load(Ordering::Acquire), "the move did not finish");
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }

    #[test]
    fn proc_cgroup_and_mountinfo_resolve_v1_paths() {
        let proc = "4:memory:/default/c1\n2:cpu,cpuacct:/default/c1\n0::/default/c1\n";
        let parsed = parse_proc_cgroup(proc);
        assert_eq!(parsed["memory"], "/default/c1");
        assert_eq!(parsed["cpu,cpuacct"], "/default/c1");
        assert_eq!(parsed[""], "/default/c1");
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n\
                         31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:12 - cgroup cgroup rw,cpu,cpuacct\n\
                         32 25 0:28 / /sys/fs/cgroup/unified rw shared:13 - cgroup2 cgroup2 rw\n";
        let m = v1_mounts(mountinfo);
        assert_eq!(m["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m["cpuacct"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(!m.contains_key("rw"));
    }
}
