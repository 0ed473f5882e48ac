//! Giving memory back while the shim has nothing to do.
//!
//! A shim spends almost all its life waiting: its container runs for days, and containerd calls
//! it a few times. Yet every page of code and constants it ran once (creating the container,
//! parsing its spec, starting the runtime) stays mapped, and counts in its RSS. After a quiet
//! spell with no task call in flight, the shim drops the clean pages of its own executable
//! (and of any library), hands free heap back to the kernel, and drops the pages of its
//! loop's stack that only its deepest calls used.
//!
//! What this frees: the shim's page-table entries, and it leaves the pages themselves as
//! ordinary unmapped page cache, shared with every other tether shim and the first thing the
//! kernel reclaims under pressure. What it costs: the next call faults the code it needs back
//! in from the page cache (minor faults, no I/O while the pages are cached).
//!
//! Only mappings that are private, not writable, backed by a file, and hold no page of their
//! own (no copy-on-write page, resident or swapped) are dropped, so nothing is lost: the
//! kernel reads exactly the same bytes back from the file. A relocated RELRO segment, or code
//! a debugger patched, keeps its mapping.

use std::{
    pin::pin,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::rt;

/// How long the shim waits after its last call before it trims, unless a config says.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(10);

/// The shim's idle tracker: task calls mark themselves busy; a task on the loop trims once the
/// shim has been quiet for the configured time, and again after each later busy spell. Once
/// trimmed, it sleeps without a timer until the next call: an idle shim is never woken.
pub struct Idle {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    /// Calls now running (a blocked Wait does not count: it is how containerd idles).
    in_flight: u32,
    /// When the last call finished (or the tracker started).
    quiet_since: Option<Instant>,
    /// Whether the shim trimmed since its last call.
    trimmed: bool,
    /// How long a quiet spell lasts before the trim; `None` never trims.
    after: Option<Duration>,
}

/// What the trim task does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Sleep until something changes.
    Wait,
    /// Sleep until this instant, then look again.
    Until(Instant),
    /// Trim now.
    Trim,
}

impl State {
    fn next(&self, now: Instant) -> Next {
        let (Some(after), Some(since)) = (self.after, self.quiet_since) else {
            return Next::Wait;
        };
        if self.in_flight > 0 || self.trimmed {
            return Next::Wait;
        }
        let due = since + after;
        if now >= due {
            Next::Trim
        } else {
            Next::Until(due)
        }
    }
}

/// Marks the shim busy until dropped.
pub struct Busy<'a>(&'a Idle);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        s.quiet_since = Some(Instant::now());
        s.trimmed = false;
        drop(s);
        self.0.changed.notify_one();
    }
}

/// The tracker of this shim process.
pub static SHIM: Idle = Idle::new();

impl Idle {
    const fn new() -> Idle {
        Idle {
            state: Mutex::new(State { in_flight: 0, quiet_since: None, trimmed: false, after: Some(DEFAULT_AFTER) }),
            changed: Notify::const_new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the task that trims `self` when quiet; the quiet spell starts now.
    pub fn start(&'static self) {
        self.lock().quiet_since = Some(Instant::now());
        rt::spawn(self.run(trim));
    }

    /// Marks one call running until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.lock().in_flight += 1;
        Busy(self)
    }

    /// Sets the quiet time before a trim (zero: never trim).
    pub fn set_after(&self, after: Duration) {
        self.lock().after = (!after.is_zero()).then_some(after);
        self.changed.notify_one();
    }

    async fn run(&self, trim: impl Fn()) {
        loop {
            // A change after this point leaves a permit: the wait below cannot miss it.
            let changed = pin!(self.changed.notified());
            let next = self.lock().next(Instant::now());
            match next {
                Next::Wait => changed.await,
                Next::Until(due) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(due.into()) => {}
                    }
                }
                Next::Trim => {
                    self.lock().trimmed = true;
                    trim();
                }
            }
        }
    }
}

/// Drops the clean file-backed pages of this process from its page tables
/// (`madvise(MADV_DONTNEED)`: the mappings stay), returns free heap to the kernel, and drops
/// the calling thread's stack pages below its frame. Logs what it dropped at debug level.
pub fn trim() {
    let started = Instant::now();
    let mut dropped_kib = 0;
    match std::fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => {
            for m in clean_file_mappings(&smaps) {
                // SAFETY: the range is a whole mapping of this process whose resident pages all
                // come from its file unchanged (see clean_file_mappings): dropping them only
                // makes the next access read the same bytes back.
                if unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) } == 0 {
                    dropped_kib += m.rss_kib;
                }
            }
        }
        Err(e) => log::warn!("idle: reading /proc/self/smaps: {e}"),
    }
    // SAFETY: malloc_trim only releases free memory of malloc's own arenas.
    unsafe { libc::malloc_trim(0) };
    log::debug!("idle: dropped {dropped_kib} KiB of code and constants in {:?}", started.elapsed());
    drop_stack_below_here();
}

/// Drops the pages of the calling thread's stack that lie more than a page below this
/// function's frame. Deeper calls used them once (creating a container takes the deepest
/// frames a shim ever has) and no frame uses them now; they stay resident, anonymous and
/// charged to the node, until the thread ends, which for the loop's thread is never. A later
/// call that goes as deep gets zeroed pages back, as a stack that grows does. Called last, so
/// that nothing after it refaults what it dropped.
#[inline(never)]
fn drop_stack_below_here() {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    let Some((start, end)) = unused_stack(&maps, sp, page_size()) else { return };
    // SAFETY: the range lies in this thread's stack mapping, more than a page below the frame
    // of this function: below the stack pointer of every live frame (and its red zone), so no
    // live data is there; the madvise call itself uses far less than the page kept as margin.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

/// In `maps` (the text of /proc/PID/maps), the range of the mapping holding `sp` that lies
/// below the page under `sp`'s own page: what a thread whose stack pointer is `sp` does not use.
fn unused_stack(maps: &str, sp: usize, page: usize) -> Option<(usize, usize)> {
    maps.lines().find_map(|line| {
        let (start, end) = address_range(line)?;
        let below = (sp & !(page - 1)).checked_sub(page)?;
        (start <= sp && sp < end && start < below).then_some((start, below))
    })
}

/// The `start-end` addresses a line of /proc/PID/maps, or a mapping's header line in
/// /proc/PID/smaps, begins with; `None` for any other line.
fn address_range(line: &str) -> Option<(usize, usize)> {
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
}

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// One mapping [`trim`] may drop.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// A mapping of /proc/PID/smaps while its fields are read.
struct Candidate {
    mapping: Mapping,
    /// Private, read-only, file-backed, and not locked, PFN or I/O.
    eligible: bool,
    /// Pages of its own: anonymous (copied on write), huge or swapped.
    anonymous_kib: u64,
}

impl Candidate {
    /// `start-end perms offset dev inode [path]`, or `None` if `line` is not a mapping header.
    fn from_header(line: &str) -> Option<Candidate> {
        let (start, end) = address_range(line)?;
        let mut words = line.split_whitespace().skip(1);
        let perms = words.next()?.as_bytes();
        let inode = words.nth(2)?;
        let eligible = perms.len() == 4 && perms[1] == b'-' && perms[3] == b'p' && inode != "0";
        Some(Candidate { mapping: Mapping { start, end, rss_kib: 0 }, eligible, anonymous_kib: 0 })
    }

    fn droppable(self) -> Option<Mapping> {
        (self.eligible && self.anonymous_kib == 0 && self.mapping.rss_kib > 0).then_some(self.mapping)
    }
}

/// The mappings of `smaps` (the text of /proc/PID/smaps) that are private, read-only,
/// file-backed, not locked, resident, and hold no page of their own, resident or swapped.
fn clean_file_mappings(smaps: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<Candidate> = None;
    for line in smaps.lines() {
        let Some((field, value)) = line.split_once(':').filter(|(f, _)| !f.contains(' ')) else {
            found.extend(current.take().and_then(Candidate::droppable));
            current = Candidate::from_header(line);
            continue;
        };
        let Some(c) = current.as_mut() else { continue };
        let kib = || value.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match field {
            "Rss" => c.mapping.rss_kib = kib(),
            "Anonymous" | "AnonHugePages" | "Swap" => c.anonymous_kib += kib(),
            // Locked, PFN and I/O mappings refuse MADV_DONTNEED or must not lose pages.
            "VmFlags" if value.split_whitespace().any(|f| matches!(f, "lo" | "pf" | "io")) => c.eligible = false,
            _ => {}
        }
    }
    found.extend(current.and_then(Candidate::droppable));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00401000 r--p 00000000 fe:01 1234 /usr/bin/shim
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw sd
00401000-00800000 r-xp 00001000 fe:01 1234 /usr/bin/shim
Size:               4092 kB
Rss:                2950 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me dw sd
00800000-00900000 r--p 00400000 fe:01 1234 /usr/bin/shim
Rss:                 120 kB
Anonymous:             8 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw ac sd
00900000-00910000 rw-p 00500000 fe:01 1234 /usr/bin/shim
Rss:                  64 kB
Anonymous:            60 kB
VmFlags: rd wr mr mw me dw ac sd
00910000-00920000 r--p 00510000 fe:01 1234 /usr/bin/shim
Rss:                  16 kB
Anonymous:             0 kB
Swap:                  4 kB
VmFlags: rd mr mw me sd
01000000-01100000 rw-p 00000000 00:00 0 [heap]
Rss:                 100 kB
Anonymous:           100 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000010000 r--p 00000000 fe:01 99 /usr/lib/locale/C.utf8/LC_CTYPE
Rss:                  12 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd lo
7f0000010000-7f0000020000 r--s 00000000 fe:01 98 /memfd:shared
Rss:                  12 kB
Anonymous:             0 kB
VmFlags: rd sh mr mw me ms sd
7f0000020000-7f0000030000 r--p 00000000 fe:01 97 /usr/lib/libfoo.so
Rss:                   0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0 [vvar]
Rss:                   0 kB
VmFlags: rd mr pf io de dd sd
7ffff7fc5000-7ffff7fc7000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me de sd
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_dropped() {
        let found = clean_file_mappings(SMAPS);
        assert_eq!(
            found,
            [
                Mapping { start: 0x400000, end: 0x401000, rss_kib: 4 },
                Mapping { start: 0x401000, end: 0x800000, rss_kib: 2950 },
            ],
            "kept out: a RELRO segment with copied pages, writable data, one with swapped \
             pages, the heap, a locked and a shared mapping, an unmapped library, vvar, vdso"
        );
    }

    #[test]
    fn the_last_mapping_counts_and_junk_is_ignored() {
        let smaps = "garbage line\n00400000-00401000 r-xp 00000000 fe:01 7 /bin/x\nRss: 4 kB\nAnonymous: 0 kB";
        assert_eq!(clean_file_mappings(smaps), [Mapping { start: 0x400000, end: 0x401000, rss_kib: 4 }]);
        assert!(clean_file_mappings("").is_empty());
    }

    fn state(in_flight: u32, quiet: Option<Instant>, trimmed: bool, after: Option<Duration>) -> State {
        State { in_flight, quiet_since: quiet, trimmed, after }
    }

    #[test]
    fn trims_once_per_quiet_spell_and_never_while_busy() {
        let t0 = Instant::now();
        let after = Some(Duration::from_secs(10));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(state(0, Some(t0), false, after).next(t0), Next::Until(t0 + Duration::from_secs(10)));
        assert_eq!(state(0, Some(t0), false, after).next(later), Next::Trim);
        assert_eq!(state(0, Some(t0), true, after).next(later), Next::Wait, "already trimmed");
        assert_eq!(state(1, Some(t0), false, after).next(later), Next::Wait, "a call is running");
        assert_eq!(state(0, Some(t0), false, None).next(later), Next::Wait, "trimming is off");
        assert_eq!(state(0, None, false, after).next(later), Next::Wait, "not started");
    }

    #[test]
    fn the_task_trims_after_each_quiet_spell_and_then_sleeps() {
        use std::sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        };
        let idle: &'static Idle = Box::leak(Box::new(Idle::new()));
        idle.set_after(Duration::from_millis(100));
        idle.lock().quiet_since = Some(Instant::now());
        let trims = Arc::new(AtomicU32::new(0));
        let counted = trims.clone();
        rt::spawn(idle.run(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(trims.load(Ordering::SeqCst), 1, "one trim after the first quiet spell");
        drop(idle.busy());
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(trims.load(Ordering::SeqCst), 2, "and one after a call");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(trims.load(Ordering::SeqCst), 2, "no more without calls");
    }

    #[test]
    fn a_call_ends_the_trimmed_state_and_restarts_the_quiet_spell() {
        let idle = Idle::new();
        idle.lock().trimmed = true;
        let before = Instant::now();
        drop(idle.busy());
        let s = idle.lock();
        assert_eq!((s.in_flight, s.trimmed), (0, false));
        assert!(s.quiet_since.is_some_and(|t| t >= before));
    }

    #[test]
    fn trimming_this_process_keeps_it_working() {
        // The test binary's own code and constants are dropped while it runs; it goes on.
        let rss_file = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find_map(|l| l.strip_prefix("RssFile:")).unwrap().to_string();
            line.split_whitespace().next().unwrap().parse::<u64>().unwrap()
        };
        let before = rss_file();
        trim();
        let after = rss_file();
        assert!(after < before, "RssFile {before} kB before the trim, {after} kB after");
        let text: String = (0..1000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        assert_eq!(text.len(), 1000);
    }

    #[test]
    fn the_unused_stack_is_what_lies_a_page_below_the_frame() {
        let maps = "7ffd0000-7ffe0000 rw-p 00000000 00:00 0 [stack]\n00400000-00401000 r-xp 0 08:01 1 /bin/x\n";
        assert_eq!(unused_stack(maps, 0x7ffd8123, 0x1000), Some((0x7ffd0000, 0x7ffd7000)));
        assert_eq!(unused_stack(maps, 0x7ffd1010, 0x1000), None, "nothing below the margin");
        assert_eq!(unused_stack(maps, 0x1000, 0x1000), None, "not in any mapping");
    }

    #[test]
    fn the_pages_a_deep_call_left_on_the_stack_are_dropped() {
        /// Touches about `kib` KiB of stack below the caller's frame.
        #[inline(never)]
        fn deep(kib: usize) -> u8 {
            let mut frame = [0u8; 1024];
            std::hint::black_box(&mut frame);
            if kib == 0 {
                return frame[7];
            }
            deep(kib - 1).wrapping_add(frame[kib % 1024])
        }
        /// Resident KiB of the mapping that holds this thread's stack.
        fn stack_rss() -> u64 {
            let here = 0u8;
            let sp = std::hint::black_box(&here) as *const u8 as usize;
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            for line in smaps.lines() {
                if let Some((start, end)) = address_range(line) {
                    inside = start <= sp && sp < end;
                    continue;
                }
                if let Some(kib) = line.strip_prefix("Rss:").filter(|_| inside) {
                    return kib.trim().trim_end_matches(" kB").parse().unwrap();
                }
            }
            panic!("no mapping holds the stack");
        }
        let thread = std::thread::Builder::new().stack_size(4 << 20).spawn(|| {
            std::hint::black_box(deep(1024));
            let before = stack_rss();
            drop_stack_below_here();
            (before, stack_rss())
        });
        let (before, after) = thread.unwrap().join().unwrap();
        assert!(before >= 1024, "the deep call left {before} KiB resident");
        assert!(after + 900 < before, "{before} KiB of stack resident before, {after} KiB after");
    }
}
