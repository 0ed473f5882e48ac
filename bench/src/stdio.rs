//! Figure 5, stdio throughput: a container writes `--stdio-mib` MiB to stdout (busybox dd,
//! 1 MiB blocks); the shim copies it from the container's pipe to the stdout FIFO, which the
//! benchmark reads the way ctr would. The ceiling is the same dd writing into one plain pipe
//! on the host, read by the same code: what the machine can move through a pipe at all. A
//! second reference adds one copying hop (a thread with a read/write loop between two pipes),
//! which is the best any shim that copies in user space can do.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_tests::{rootfs, Env};

use crate::alternate::{alternate, series};
use crate::launch::{mkfifo, Launch};
use crate::options::Options;
use crate::results::{Figure, Unit, RAW_PIPE};

/// The series of the one-hop reference: a plain copying thread between two pipes.
pub const RELAY: &str = "pipe + relay";
use crate::targets::Target;
use crate::timed::wait_readable;

/// How long one transfer may take at most.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// The reader's buffer: several pipe-fuls, so a read takes whatever is there.
const READ_BUFFER: usize = 256 * 1024;

/// A finished transfer: byte count and the times of the first and the last read.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub first: Instant,
    pub last: Instant,
}

impl Transfer {
    /// Throughput in MB/s (10^6 bytes), from the first read to the last (the container's
    /// start-up is not part of it).
    pub fn mb_per_s(&self) -> f64 {
        let secs = self.last.duration_since(self.first).as_secs_f64().max(1e-9);
        self.bytes as f64 / secs / 1e6
    }
}

/// Reads `src` until `expected` bytes came (then stops: a FIFO held open read-write never
/// ends), or fails at end-of-file or `deadline`. Reads first and polls only when nothing is
/// there, so a busy stream costs one syscall per read.
pub fn drain(src: OwnedFd, expected: u64, deadline: Instant) -> Result<Transfer, String> {
    set_nonblocking(&src)?;
    let mut src = File::from(src);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    let mut first = None;
    while total < expected {
        match src.read(&mut buf) {
            Ok(0) => return Err(format!("end of stream after {total} of {expected} bytes")),
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !wait_readable(&src, deadline)? {
                    return Err(format!("only {total} of {expected} bytes before the deadline"));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let last = Instant::now();
    Ok(Transfer { bytes: total, first: first.unwrap_or(last), last })
}

fn set_nonblocking(fd: &impl AsRawFd) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor we own.
    let ok = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    ok.then_some(()).ok_or_else(|| format!("fcntl: {}", std::io::Error::last_os_error()))
}

/// `dd` of `mib` MiB of zeros to stdout.
fn dd_args(mib: usize) -> [String; 4] {
    ["dd".into(), "if=/dev/zero".into(), "bs=1M".into(), format!("count={mib}")]
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Copies `from` to `to` until end-of-file with a plain read/write loop and a 64 KiB buffer:
/// what a shim's copy does, with nothing else around it.
fn relay(from: OwnedFd, to: OwnedFd) {
    let (mut from, mut to) = (File::from(from), File::from(to));
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
            return;
        }
    }
}

/// The references, on the host: dd → one pipe → [`drain`] (the ceiling), or with `relayed`
/// dd → pipe → [`relay`] thread → pipe → [`drain`] (the best a copying shim can do).
pub fn host_pipe(mib: usize, relayed: bool) -> Result<Transfer, String> {
    let (mut read, write) = pipe()?;
    let mut relay_thread = None;
    if relayed {
        let (read2, write2) = pipe()?;
        let first = std::mem::replace(&mut read, read2);
        relay_thread = Some(std::thread::spawn(move || relay(first, write2)));
    }
    let mut child = Command::new(rootfs::host_busybox())
        .args(dd_args(mib))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("busybox dd: {e}"))?;
    let transfer = drain(read, mib as u64 * 1024 * 1024, Instant::now() + TRANSFER_TIMEOUT);
    if transfer.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    if let Some(t) = relay_thread {
        let _ = t.join();
    }
    transfer
}

/// A container's stdout through `target`'s shim into a FIFO.
fn through_shim(env: &Env, target: &Target, spec: &Value, round: usize, mib: usize) -> Result<Transfer, String> {
    let script = format!("{} 2>/dev/null", dd_args(mib).join(" "));
    let mut launch =
        Launch::prepare(env, target, spec, &format!("io-{}-{round}", target.name), &["sh", "-c", &script])?;
    // Read-write, as a reader that is there before the shim opens it (ctr opens its FIFOs
    // before Create too) and that never sees a spurious end-of-file. stderr stays empty (dd's
    // goes to /dev/null) but is held the same way.
    let open_fifo = |name: &str| {
        let path = launch.bundle.join(name);
        mkfifo(&path)?;
        let file = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path);
        file.map(|f| (path.display().to_string(), f)).map_err(|e| format!("{}: {e}", path.display()))
    };
    let (stdout, reader) = open_fifo("stdout")?;
    let (stderr, _stderr_reader) = open_fifo("stderr")?;
    launch.start_shim()?;
    launch.create(&stdout, &stderr)?;
    let expected = mib as u64 * 1024 * 1024;
    let reading = std::thread::spawn(move || drain(reader.into(), expected, Instant::now() + TRANSFER_TIMEOUT));
    let ran = launch.start().and_then(|()| launch.wait());
    let transfer = reading.join().map_err(|_| "the reader panicked".to_string())?;
    ran?;
    launch.delete()?;
    launch.shutdown()?;
    launch.finish()?;
    transfer
}

enum Subject<'a> {
    RawPipe,
    Relay,
    Target(&'a Target),
}

pub fn figure(env: &Env, targets: &[Target], spec: &Value, opts: &Options) -> Figure {
    let mut subjects: Vec<Subject> = targets.iter().map(Subject::Target).collect();
    subjects.extend([Subject::RawPipe, Subject::Relay]);
    let name = |s: &Subject| match s {
        Subject::RawPipe => RAW_PIPE.to_string(),
        Subject::Relay => RELAY.to_string(),
        Subject::Target(t) => t.name.to_string(),
    };
    let collected = alternate("stdio", &subjects, name, 0, opts.stdio_rounds, |s, round| match s {
        Subject::RawPipe => host_pipe(opts.stdio_mib, false),
        Subject::Relay => host_pipe(opts.stdio_mib, true),
        Subject::Target(t) => through_shim(env, t, spec, round, opts.stdio_mib),
    });
    let mut f = Figure::new(
        "stdio",
        format!("stdio: {} MiB container stdout → shim → FIFO", opts.stdio_mib),
        Unit::MBps,
        series(&collected, Transfer::mb_per_s),
    );
    f.notes.push(format!(
        "busybox dd bs=1M in the container; the bench reads the stdout FIFO ({} KiB reads) as ctr would, from its first byte to its last; \
         `{RAW_PIPE}` is the same dd on the host into one pipe, read by the same code; `{RELAY}` puts a thread copying \
         with read/write and 64 KiB between two pipes (one hop, like a shim's copy)",
        READ_BUFFER / 1024
    ));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_a_pipe_and_times_it() {
        for relayed in [false, true] {
            let t = host_pipe(4, relayed).unwrap();
            assert_eq!(t.bytes, 4 * 1024 * 1024);
            assert!(t.mb_per_s() > 0.0);
        }
    }

    #[test]
    fn a_short_stream_is_an_error() {
        let (read, write) = pipe().unwrap();
        std::io::Write::write_all(&mut File::from(write), b"abc").unwrap();
        let err = drain(read, 10, Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("after 3 of 10"), "{err}");
    }
}
