//! Running a command and timing it exactly: from spawn to the kernel's exit notification
//! (a pidfd becoming readable), with a deadline. The harness's own runner polls for the exit
//! every 10 ms, which is fine for tests but would add up to 10 ms of noise to every sample.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub elapsed: Duration,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    command: String,
}

impl Finished {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Ok(self) if it exited 0, else an error naming the command, its status and its stderr.
    pub fn success(self) -> Result<Finished, String> {
        if self.ok() {
            return Ok(self);
        }
        let status = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        };
        Err(format!("`{}` failed ({status}): {}{}", self.command, self.stderr.trim(), self.stdout.trim()))
    }

    pub fn millis(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }
}

/// Runs `cmd` with `input` on stdin (then EOF; /dev/null without input) in a process group of
/// its own (a Ctrl-C at the terminal is the benchmark's to handle, not its children's), and
/// waits at most `timeout`, after which the group is killed.
pub fn run(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Finished, String> {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start `{command}`: {e}"))?;
    let pidfd = pidfd_open(child.id()).map_err(|e| format!("pidfd_open: {e}"));
    let readers = [collect(child.stdout.take()), collect(child.stderr.take())];
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small (runtime options): fits the pipe, so this cannot block on a child that does
        // not read. An EPIPE from a child that exited early shows in its status instead.
        let _ = stdin.write_all(data);
    }
    let exited = pidfd.and_then(|fd| wait_readable(&fd, started + timeout));
    let elapsed = started.elapsed();
    if !matches!(exited, Ok(true)) {
        kill_group(&mut child);
        let _ = child.wait();
        return Err(match exited {
            Err(e) => format!("`{command}`: {e}"),
            _ => format!("`{command}` did not finish within {timeout:?}: killed"),
        });
    }
    let status = child.wait().map_err(|e| format!("waiting for `{command}`: {e}"))?;
    // A daemon that inherited the pipes would keep them open: do not wait for it for long.
    let [stdout, stderr] = readers.map(|r| r.recv_timeout(Duration::from_secs(2)).unwrap_or_default());
    Ok(Finished { elapsed, status, stdout, stderr, command })
}

/// A thread that reads `pipe` to its end (output must not fill a pipe while we wait) and
/// sends what it read.
fn collect(pipe: Option<impl Read + Send + 'static>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `fd` is readable (true) or `deadline` passes (false); signals do not cut it
/// short.
pub fn wait_readable(fd: &impl AsRawFd, deadline: Instant) -> Result<bool, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        match n {
            1.. => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("poll: {e}"));
                }
            }
        }
    }
}

/// SIGKILL to the child's process group (it leads it) and to the child.
fn kill_group(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signals to a child we spawned and have not reaped, so its pid is still ours.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_a_command_and_keeps_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2"]);
        let f = run(cmd, Some(b"in"), Duration::from_secs(10)).unwrap();
        assert!(f.ok());
        assert_eq!((f.stdout.as_str(), f.stderr.as_str()), ("in", "err\n"));
        assert!(f.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn failures_and_deadlines_are_errors() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo nope >&2; exit 3"]);
        let err = run(cmd, None, Duration::from_secs(10)).unwrap().success().unwrap_err();
        assert!(err.contains("exit status 3") && err.contains("nope"), "{err}");
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let err = run(cmd, None, Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
    }
}
