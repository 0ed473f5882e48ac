//! Figure 0, node memory: what a node pays for each pod's shim. RSS leaves out what a node
//! pays all the same: kernel memory (each thread's stack and task structures, page tables,
//! sockets, epoll and pidfd objects) and the page cache a shim faults its code back in from
//! once tether's idle trim has dropped it from the page tables. The kernel charges all of it
//! to the memory cgroup of the process that allocated it, so this figure reads a cgroup:
//!
//! - The bench makes a memory cgroup of its own (see `cgroups`) with two children:
//!   `containerd`, into which it moves its private containerd, and `shims`.
//! - Shims are forked by containerd, and neither containerd 1.6 nor the shims offer a
//!   setting that places every shim in a cgroup of our choosing (the Go shim's `ShimCgroup`
//!   option is its own, and moves it only after its start). So for this figure each target's
//!   shim binary is wrapped: in the harness's `bin/`, first on containerd's PATH, its name
//!   (a symlink the harness made, or a new file shadowing the host's Go shim further down
//!   the PATH) becomes a two-line script that writes its own pid into the shims'
//!   `cgroup.procs` and then `exec`s the real shim: the shim's `start`, the serving shim it
//!   forks, and every
//!   runtime process that one forks are charged to `shims` from their first page on, while
//!   containerd's own growth (its per-task state, its shim connections) lands in
//!   `containerd`, shown separately and not counted in the pod's cost. The symlinks come
//!   back when the figure ends (a shadow becomes a symlink to what it shadowed). Moving
//!   each shim after it started would leave its start-up charges behind in containerd's
//!   cgroup (v1 does not move charges with a process). containerd remembers where it found
//!   a runtime's shim the first time it starts one, so this figure runs before every other
//!   that starts shims through it.
//! - Per target: M = N/2 sleeping pods, then N. After each step, a kubelet-like poller
//!   calls metrics for every container every 10 s (`ctr task metrics`: containerd calls the
//!   shim's Stats) for `--node-settle` seconds, then both cgroups are read. The cost per pod
//!   is the growth from M to N pods over N − M: what the marginal pod costs, without what
//!   the first one pays once (the shim binary's page cache, containerd's first shim).
//! - Then the poller stops, and over `--idle-window` seconds without calls every shim's
//!   context switches (all threads) are counted: each wake-up of a thread ends in one.
//!   Threads per shim are read just before.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tether_tests::Env;

use crate::alternate::{alternate, series, Collected};
use crate::cgroups::{Cgroup, Charge, Version};
use crate::containers::{self, ctr, start_sleepers};
use crate::interrupt;
use crate::memory::shims_of;
use crate::options::Options;
use crate::procfs;
use crate::results::{Figure, Unit};
use crate::targets::Target;

/// How often kubelet asks for every container's stats (its housekeeping interval).
pub const POLL_EVERY: Duration = Duration::from_secs(10);

/// What one target's pods cost in one round.
struct Reading {
    /// Shims' cgroup growth from M to N pods, per pod (KiB).
    per_pod_kib: f64,
    /// Its kernel part, where the kernel says (KiB).
    kernel_kib: Option<f64>,
    /// containerd's cgroup growth over the same pods, per pod (KiB).
    containerd_kib: f64,
    /// The shims' cgroup at M and at N pods (MiB), for the notes.
    at: [f64; 2],
    threads_per_shim: f64,
    wakeups_per_minute: f64,
    /// The threads that woke in the idle window, summed by name over the shims, most first.
    woken: Vec<(String, u64)>,
    polled: Polled,
}

/// The figures of `--only node-memory`: memory per pod, its kernel part, containerd's own
/// growth, threads per shim, wake-ups of an idle shim.
pub fn figures(env: &Env, targets: &[Target], opts: &Options) -> Vec<Figure> {
    let bin = env.containerd.dir().join("bin");
    let mut shims: Vec<(PathBuf, PathBuf)> = Vec::new();
    for t in targets {
        let link = bin.join(t.runtime.shim_binary_name());
        if !shims.iter().any(|(l, _)| *l == link) {
            shims.push((link, t.shim_binary()));
        }
    }
    let name = format!("tether-bench-{}", std::process::id());
    let cgroups = match NodeCgroups::set_up(&name, env.containerd.dir(), &shims) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot set up the cgroups of node memory, skipping it: {e}");
            return Vec::new();
        }
    };
    let (m, n) = (opts.pods / 2, opts.pods);
    let collected = alternate(
        "node memory",
        targets,
        |t| t.name.to_string(),
        0,
        opts.memory_rounds,
        |t, round| measure(env, &cgroups, t, round, opts),
    );
    drop(cgroups);
    let settle = opts.node_settle_secs;
    let mut memory = Figure::new(
        "node_memory",
        format!("node memory per pod: shims' cgroup, pods {m}→{n}, metrics every {}s", POLL_EVERY.as_secs()),
        Unit::KiB,
        series(&collected, |r| r.per_pod_kib),
    );
    memory.notes.push(format!(
        "{} of the cgroup holding the shims (wrapped to join it at exec), read after {settle} s of `ctr task metrics` \
         for every container every {} s, at {m} and at {n} sleeping pods; (usage at {n} − usage at {m}) / {}; \
         containerd is in a cgroup of its own (next rows)",
        usage_source(),
        POLL_EVERY.as_secs(),
        n - m
    ));
    for c in &collected {
        if let Some(r) = c.values.first() {
            memory.notes.push(format!(
                "{}: shims' cgroup {:.2} MiB at {m} pods, {:.2} MiB at {n}; {}",
                c.name,
                r.at[0],
                r.at[1],
                r.polled.describe("metrics calls")
            ));
        }
    }
    let kernel = Figure::new(
        "node_memory_kernel",
        format!("node memory per pod: of which kernel ({})", kernel_source()),
        Unit::KiB,
        series(&kernel_only(&collected), |v| *v),
    );
    let containerd = Figure::new(
        "node_memory_containerd",
        "containerd's own growth per pod (not in the rows above)",
        Unit::KiB,
        series(&collected, |r| r.containerd_kib),
    );
    let threads = Figure::new(
        "threads_per_shim",
        format!("threads per shim (/proc/PID/status, {n} pods)"),
        Unit::Count,
        series(&collected, |r| r.threads_per_shim),
    );
    let mut wakeups = Figure::new(
        "idle_wakeups",
        format!("wake-ups per idle minute, per shim ({} s without calls)", opts.idle_window_secs),
        Unit::PerMinute,
        series(&collected, |r| r.wakeups_per_minute),
    );
    wakeups.notes.push(format!(
        "voluntary + nonvoluntary context switches of all of a shim's threads (/proc/PID/task/*/status) over {} s \
         after the metrics polling stopped, averaged over the {n} shims, scaled to a minute",
        opts.idle_window_secs
    ));
    for c in &collected {
        if let Some(r) = c.values.first() {
            let names: Vec<String> = r.woken.iter().take(6).map(|(name, n)| format!("{name} {n}")).collect();
            let names = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            wakeups.notes.push(format!("{}: threads that woke, by name, over all shims: {names}", c.name));
        }
    }
    vec![memory, kernel, containerd, threads, wakeups]
}

/// The kernel parts, for the targets whose every reading has one.
fn kernel_only(collected: &[Collected<Reading>]) -> Vec<Collected<f64>> {
    collected
        .iter()
        .map(|c| Collected {
            name: c.name.clone(),
            values: c.values.iter().filter_map(|r| r.kernel_kib).collect(),
            failures: c.failures,
        })
        .collect()
}

fn usage_source() -> &'static str {
    match Version::of_host() {
        Version::V1 => "memory.usage_in_bytes (v1: kernel memory included)",
        Version::V2 => "memory.current",
    }
}

fn kernel_source() -> &'static str {
    match Version::of_host() {
        Version::V1 => "memory.kmem.usage_in_bytes",
        Version::V2 => "memory.stat kernel",
    }
}

/// One round of one target: M pods, then N, each read after the polling; then the idle
/// window. The pods are removed whatever happens.
fn measure(env: &Env, cgroups: &NodeCgroups, target: &Target, round: usize, opts: &Options) -> Result<Reading, String> {
    let (m, n) = (opts.pods / 2, opts.pods);
    let ids: Vec<String> = (0..n).map(|k| format!("node-{}-{round}-{k}", target.name)).collect();
    let polling = Polling::default();
    let settle = Duration::from_secs(opts.node_settle_secs);
    let reading = std::thread::scope(|scope| {
        scope.spawn(|| polling.run(|ids| ctr_metrics(env, ids)));
        let outcome = (|| {
            let mut at = [Charge::default(); 2];
            let mut containerd_at = [Charge::default(); 2];
            for (step, range) in [(0, 0..m), (1, m..n)] {
                start_sleepers(env, target, &ids[range.clone()], opts.in_flight, None)?;
                polling.watch(&ids[..range.end]);
                if !pause(settle) {
                    return Err("interrupted".to_string());
                }
                at[step] = cgroups.shims.charge()?;
                containerd_at[step] = cgroups.containerd.charge()?;
            }
            let shims = shims_of(env, &ids)?;
            let strays: Vec<u32> = shims.iter().filter(|p| !cgroups.shims.procs().contains(p)).copied().collect();
            if !strays.is_empty() {
                return Err(format!("shims {strays:?} are not in {}", cgroups.shims.path.display()));
            }
            let threads = per_shim(&shims, procfs::threads)?;
            polling.quiet();
            let before = switches(&shims)?;
            let window = Duration::from_secs(opts.idle_window_secs);
            if !pause(window) {
                return Err("interrupted".to_string());
            }
            let after = switches(&shims)?;
            let woken = woken_by_name(&before, &after);
            let (before, after) = (total(&before) / shims.len() as f64, total(&after) / shims.len() as f64);
            let pods = (n - m) as f64;
            let grown = |a: u64, b: u64| (b as f64 - a as f64) / 1024.0 / pods;
            let woke = (after - before) / window.as_secs_f64() * 60.0;
            Ok(Reading {
                per_pod_kib: grown(at[0].total, at[1].total),
                kernel_kib: at[0].kernel.zip(at[1].kernel).map(|(a, b)| grown(a, b)),
                containerd_kib: grown(containerd_at[0].total, containerd_at[1].total),
                at: at.map(|c| c.total as f64 / (1024.0 * 1024.0)),
                threads_per_shim: threads,
                wakeups_per_minute: woke,
                woken,
                polled: Polled::default(),
            })
        })();
        polling.stop.store(true, Ordering::Relaxed);
        outcome
    });
    containers::remove(env, &ids, opts.in_flight);
    let mut reading = reading?;
    reading.polled = polling.polled();
    Ok(reading)
}

/// `read(pid)` averaged over `shims`; an error if one is gone.
fn per_shim(shims: &BTreeSet<u32>, read: impl Fn(u32) -> Option<u64>) -> Result<f64, String> {
    let mut sum = 0;
    for &pid in shims {
        sum += read(pid).ok_or_else(|| format!("shim {pid} is gone"))?;
    }
    Ok(sum as f64 / shims.len().max(1) as f64)
}

/// Every thread of every shim, with its context switches; an error if a shim is gone.
fn switches(shims: &BTreeSet<u32>) -> Result<Vec<procfs::ThreadSwitches>, String> {
    let mut all = Vec::new();
    for &pid in shims {
        all.extend(procfs::thread_switches(pid).ok_or_else(|| format!("shim {pid} is gone"))?);
    }
    Ok(all)
}

fn total(threads: &[procfs::ThreadSwitches]) -> f64 {
    threads.iter().map(|t| t.switches).sum::<u64>() as f64
}

/// How often the threads of each name switched between two readings (threads that came
/// and went in between are not seen), most first, without the names that did not.
fn woken_by_name(before: &[procfs::ThreadSwitches], after: &[procfs::ThreadSwitches]) -> Vec<(String, u64)> {
    let mut by_name: Vec<(String, u64)> = Vec::new();
    for t in after {
        let was = before.iter().find(|b| b.tid == t.tid).map_or(0, |b| b.switches);
        let woke = t.switches.saturating_sub(was);
        match by_name.iter_mut().find(|(n, _)| *n == t.name) {
            Some((_, sum)) => *sum += woke,
            None => by_name.push((t.name.clone(), woke)),
        }
    }
    by_name.retain(|(_, n)| *n > 0);
    by_name.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by_name
}

/// Sleeps `d` in short steps; false if the user interrupted meanwhile.
pub fn pause(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if interrupt::requested() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
    !interrupt::requested()
}

/// The kubelet-like poller: a round of stats calls for the watched containers every
/// [`POLL_EVERY`], the first round as soon as the set of containers grows.
#[derive(Default)]
pub struct Polling {
    ids: Mutex<Vec<String>>,
    /// Set when new containers are watched: poll now.
    kick: AtomicBool,
    /// While set, nothing is polled (the idle window).
    quiet: AtomicBool,
    /// Set while a round of calls is under way.
    busy: AtomicBool,
    pub stop: AtomicBool,
    calls: AtomicUsize,
    failures: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

/// What a [`Polling`] did, for the notes.
#[derive(Debug, Default)]
pub struct Polled {
    calls: usize,
    failures: usize,
    first_error: Option<String>,
}

impl Polled {
    /// `8 stats calls`, or `8 stats calls, 2 failed (first: ...)`, where `calls` is what
    /// one call is.
    pub fn describe(&self, calls: &str) -> String {
        match (&self.first_error, self.failures) {
            (Some(e), f) if f > 0 => format!("{} {calls}, {f} failed (first: {e})", self.calls),
            _ => format!("{} {calls}", self.calls),
        }
    }
}

/// `ctr task metrics` (containerd calls the shim's Stats) for each of `ids`.
fn ctr_metrics(env: &Env, ids: &[String]) -> Vec<Result<(), String>> {
    ids.iter().map(|id| ctr(env, &["task", "metrics", id.as_str()].map(String::from)).map(drop)).collect()
}

impl Polling {
    /// Polls until stopped: `round(ids)` makes one round's calls, returning each's outcome.
    pub fn run(&self, round: impl Fn(&[String]) -> Vec<Result<(), String>>) {
        let mut next = Instant::now() + POLL_EVERY;
        while !self.stop.load(Ordering::Relaxed) && !interrupt::requested() {
            let due = Instant::now() >= next || self.kick.swap(false, Ordering::SeqCst);
            // Busy first, then quiet read (and the reverse in `quiet`): one of the two sides
            // sees the other's store, so no round starts unseen after `quiet` returned.
            self.busy.store(true, Ordering::SeqCst);
            if due && !self.quiet.load(Ordering::SeqCst) {
                next = Instant::now() + POLL_EVERY;
                let ids = self.ids.lock().unwrap().clone();
                for outcome in round(&ids) {
                    self.calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = outcome {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        self.first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
            self.busy.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it did so far.
    pub fn polled(&self) -> Polled {
        Polled {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            first_error: self.first_error.lock().unwrap().clone(),
        }
    }

    /// Polls `ids` from now on, starting at once.
    pub fn watch(&self, ids: &[String]) {
        *self.ids.lock().unwrap() = ids.to_vec();
        self.kick.store(true, Ordering::SeqCst);
    }

    /// Stops polling, and returns once no call is under way.
    fn quiet(&self) {
        self.quiet.store(true, Ordering::SeqCst);
        while self.busy.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The figure's cgroups and the wrapped shims. Dropping it puts the shim symlinks back, then
/// removes the cgroups (moving containerd, and any shim still exiting, back to the bench's
/// own cgroup, where containerd came from: the bench started it).
pub struct NodeCgroups {
    wrappers: Vec<ShimWrapper>,
    pub shims: Cgroup,
    pub containerd: Cgroup,
    _top: Cgroup,
}

impl NodeCgroups {
    /// Cgroups below a new top group `name`: the bench's containerd whose temp dir is
    /// `containerd_dir` moves into `containerd`; each `(name, shim)` of `shims`, a shim's name
    /// in that containerd's `bin/` and the binary it runs, is wrapped to join `shims`.
    pub fn set_up(name: &str, containerd_dir: &Path, shims: &[(PathBuf, PathBuf)]) -> Result<NodeCgroups, String> {
        let top = Cgroup::create(name)?;
        let shims_group = top.child("shims")?;
        let containerd = top.child("containerd")?;
        let mut set = NodeCgroups { wrappers: Vec::new(), shims: shims_group, containerd, _top: top };
        set.containerd.join(containerd_pid(containerd_dir)?)?;
        for (link, shim) in shims {
            set.wrappers.push(ShimWrapper::install(link, shim, &set.shims.procs_file())?);
        }
        Ok(set)
    }
}

impl Drop for NodeCgroups {
    fn drop(&mut self) {
        for w in self.wrappers.drain(..) {
            if let Err(e) = w.restore() {
                eprintln!("  {e}");
            }
        }
    }
}

/// The private containerd in `dir`: the bench's child started with the harness's config there.
fn containerd_pid(dir: &Path) -> Result<u32, String> {
    let config = dir.join("config.toml").display().to_string();
    procfs::children(std::process::id())
        .into_iter()
        .find(|p| procfs::cmdline(*p).contains(&config))
        .ok_or_else(|| format!("no child of the bench runs containerd with {config}"))
}

/// A shim's name on containerd's PATH, now a script that joins a cgroup and then execs the
/// shim: the one the name's symlink pointed to, or else `shim`.
struct ShimWrapper {
    link: PathBuf,
    /// What the name runs once the figure is done: what the symlink pointed to, or else the
    /// shim the wrapper shadowed (containerd keeps the path where it first found a shim, so
    /// the name must go on naming one).
    then: PathBuf,
}

impl ShimWrapper {
    fn install(link: &Path, shim: &Path, procs: &Path) -> Result<ShimWrapper, String> {
        let was = match fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => {
                Some(fs::read_link(link).map_err(|e| format!("{}: {e}", link.display()))?)
            }
            Ok(_) => return Err(format!("{} is not a symlink: not wrapping it", link.display())),
            Err(_) => None,
        };
        let then = was.unwrap_or_else(|| shim.to_path_buf());
        let script = wrapper_script(procs, &then);
        let tmp = link.with_extension("tether-bench");
        fs::write(&tmp, script).map_err(|e| format!("{}: {e}", tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", tmp.display()))?;
        // A rename: containerd never finds the name missing.
        fs::rename(&tmp, link).map_err(|e| format!("{}: {e}", link.display()))?;
        Ok(ShimWrapper { link: link.to_path_buf(), then })
    }

    fn restore(self) -> Result<(), String> {
        let tmp = self.link.with_extension("tether-bench");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&self.then, &tmp)
            .and_then(|()| fs::rename(&tmp, &self.link))
            .map_err(|e| format!("restoring the shim symlink {}: {e}", self.link.display()))
    }
}

/// The wrapper: `$$` is the shell's pid, which `exec` hands to the shim. If the cgroup
/// cannot be joined the shim does not start (and the figure fails) rather than being
/// measured in the wrong place.
fn wrapper_script(procs: &Path, shim: &Path) -> String {
    format!(
        "#!/bin/sh\n# tether-bench node memory: the shim, and all it forks, in the shims' cgroup\n\
         echo $$ > {} || exit 1\nexec {} \"$@\"\n",
        quote(procs),
        quote(shim)
    )
}

/// `p` in single quotes for sh.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakeups_are_summed_by_thread_name() {
        let t = |tid, name: &str, switches| procfs::ThreadSwitches { tid, name: name.into(), switches };
        let before = [t(1, "shim", 10), t(2, "ttrpc", 5), t(3, "ttrpc", 7), t(4, "exits", 3)];
        let after = [t(1, "shim", 10), t(2, "ttrpc", 8), t(3, "ttrpc", 8), t(4, "exits", 9), t(5, "new", 2)];
        assert_eq!(woken_by_name(&before, &after), [("exits".to_string(), 6), ("ttrpc".into(), 4), ("new".into(), 2)]);
    }

    #[test]
    fn the_wrapper_joins_then_execs() {
        let s = wrapper_script(Path::new("/sys/fs/cgroup/memory/b/shims/cgroup.procs"), Path::new("/x/it's/shim"));
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(s.contains("echo $$ > '/sys/fs/cgroup/memory/b/shims/cgroup.procs' || exit 1\n"), "{s}");
        assert!(s.ends_with("exec '/x/it'\\''s/shim' \"$@\"\n"), "{s}");
    }

    #[test]
    fn the_wrapper_runs_the_shim_with_its_arguments() {
        let dir = std::env::temp_dir().join(format!("tether-bench-wrap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (procs, shim, link) = (dir.join("procs"), dir.join("real"), dir.join("containerd-shim-x-v2"));
        fs::write(&shim, "#!/bin/sh\necho \"ran $# $2\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&shim, &link).unwrap();
        let w = ShimWrapper::install(&link, Path::new("/not/this"), &procs).unwrap();
        let out = std::process::Command::new(&link).args(["-id", "a b"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran 2 a b\n");
        let pid: u32 = fs::read_to_string(&procs).unwrap().trim().parse().unwrap();
        assert!(pid > 0);
        w.restore().unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), shim);
        // No file of that name: the wrapper shadows `shim`, and then the name stays, naming
        // `shim` (containerd would go on running the path where it found the wrapper).
        let shadow = dir.join("containerd-shim-y-v2");
        let w = ShimWrapper::install(&shadow, &shim, &procs).unwrap();
        let out = std::process::Command::new(&shadow).arg("z").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran 1 \n");
        w.restore().unwrap();
        assert_eq!(fs::read_link(&shadow).unwrap(), shim);
        fs::remove_dir_all(&dir).unwrap();
    }
}
