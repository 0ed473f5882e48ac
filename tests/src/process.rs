//! Child processes with deadlines: every command the harness runs is bounded in time, and a
//! command that overruns is killed (its whole process group, by pid) instead of hanging a test.

use std::fmt;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a finished command did.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line, for messages.
    pub args: Vec<String>,
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, if it was killed by one.
    pub signal: Option<i32>,
    /// It overran its deadline and was killed.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Exited normally with status 0.
    pub fn ok(&self) -> bool {
        !self.timed_out && self.code == Some(0)
    }

    /// Panics (with the command, status and output) unless it succeeded.
    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        if !self.ok() {
            panic!("command failed:\n{self}");
        }
        self
    }

    /// Panics unless it ran to completion and failed (non-zero status).
    #[track_caller]
    pub fn expect_failure(&self) -> &Self {
        if self.timed_out || self.ok() {
            panic!("command was expected to fail:\n{self}");
        }
        self
    }

    /// Panics unless it exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        if self.timed_out || self.code != Some(code) {
            panic!("command was expected to exit with status {code}:\n{self}");
        }
        self
    }

    /// Panics unless stderr contains `needle` (case-insensitive).
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Self {
        if !self.stderr.to_lowercase().contains(&needle.to_lowercase()) {
            panic!("stderr was expected to contain {needle:?}:\n{self}");
        }
        self
    }

    /// stdout with carriage returns removed (terminal output), split in lines.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.replace('\r', "").lines().map(str::to_owned).collect()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  command: {}", self.args.join(" "))?;
        if self.timed_out {
            writeln!(f, "  status:  TIMED OUT (killed)")?;
        } else if let Some(sig) = self.signal {
            writeln!(f, "  status:  killed by signal {sig}")?;
        } else {
            writeln!(f, "  status:  exit {:?}", self.code)?;
        }
        writeln!(f, "  stdout:  {}", clip(&self.stdout, 4000))?;
        write!(f, "  stderr:  {}", clip(&self.stderr, 4000))
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.trim_end().to_owned();
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[... {cut} bytes cut ...]{}", s[cut..].trim_end())
}

/// A running child. Its stdout and stderr are collected by threads; it runs in its own process
/// group so that a deadline can kill everything it started. Dropping it kills it.
pub struct Proc {
    child: Option<Child>,
    args: Vec<String>,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    result: Option<Output>,
}

impl Proc {
    /// Starts `cmd`. With `piped_stdin` the caller can write to and close its stdin; otherwise
    /// stdin is /dev/null.
    pub fn spawn(mut cmd: Command, piped_stdin: bool) -> Proc {
        use std::os::unix::process::CommandExt;
        let args: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        cmd.stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", args.join(" ")));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Proc { stdin: child.stdin.take(), child: Some(child), args, stdout, stderr, readers, result: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Writes to the child's stdin (errors such as EPIPE are ignored: the child may be gone).
    pub fn write_stdin(&mut self, data: &[u8]) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(data);
            let _ = stdin.flush();
        }
    }

    /// Closes the child's stdin (EOF for the reader).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stdout contains `needle`; false at the deadline or if the child ended first.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_so_far().contains(needle) {
                return true;
            }
            if self.has_exited() || Instant::now() >= deadline {
                // One last look: the readers may have collected more meanwhile.
                thread::sleep(Duration::from_millis(50));
                return self.stdout_so_far().contains(needle);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// True once the child has exited (without reaping more than once).
    pub fn has_exited(&mut self) -> bool {
        if self.result.is_some() {
            return true;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                self.record(status, false);
                true
            }
            Some(Ok(None)) => false,
            _ => true,
        }
    }

    /// Waits for the child to exit, at most `timeout`; past it the child's process group is
    /// killed and the output is marked `timed_out`.
    pub fn finish(mut self, timeout: Duration) -> Output {
        self.finish_mut(timeout)
    }

    fn finish_mut(&mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_exited() {
                break;
            }
            if Instant::now() >= deadline {
                self.kill_group();
                let status = self.child.as_mut().unwrap().wait().expect("wait");
                self.record(status, true);
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.stdin.take();
        // The pipes close when the child and anything that inherited them are gone. Something
        // that inherited them (a daemonized grandchild) must not hang the test: bounded join.
        let join_deadline = Instant::now() + Duration::from_secs(5);
        for reader in self.readers.drain(..) {
            while !reader.is_finished() && Instant::now() < join_deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        let mut out = self.result.clone().expect("exit recorded");
        out.stdout = self.stdout_so_far();
        out.stderr = self.stderr_so_far();
        self.result = Some(out.clone());
        out
    }

    fn record(&mut self, status: std::process::ExitStatus, timed_out: bool) {
        use std::os::unix::process::ExitStatusExt;
        self.result = Some(Output {
            args: self.args.clone(),
            code: status.code(),
            signal: status.signal(),
            timed_out,
            stdout: String::new(),
            stderr: String::new(),
        });
    }

    /// SIGKILL to the child's process group (the child is its leader), then to the child.
    pub fn kill_group(&mut self) {
        if self.result.is_some() {
            return;
        }
        if let Some(child) = self.child.as_ref() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: plain syscalls on a pid (and its group) that this process spawned and has
            // not reaped yet, so the pid cannot have been recycled.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Sends `signal` to the child itself (not its group).
    pub fn signal(&mut self, signal: i32) {
        if self.has_exited() {
            return;
        }
        if let Some(child) = self.child.as_ref() {
            // SAFETY: see kill_group.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.result.is_none() && self.child.is_some() {
            self.kill_group();
            if let Some(child) = self.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// Runs `cmd` to completion with `input` on stdin (then EOF), bounded by `timeout`.
pub fn run(cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let mut proc = Proc::spawn(cmd, input.is_some());
    if let Some(data) = input {
        // Write from a thread: a child that does not read must not block us past the deadline.
        let mut stdin = proc.stdin.take();
        let data = data.to_vec();
        thread::spawn(move || {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(&data);
            }
        });
    }
    proc.finish(timeout)
}

/// Runs `argv` on a pseudo-terminal of `cols`×`rows` (util-linux `script`), bounded by
/// `timeout`.
pub fn run_on_tty(argv: &[String], cols: u16, rows: u16, timeout: Duration) -> Output {
    let line = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    let script_cmd = format!("stty cols {cols} rows {rows}; exec {line}");
    let mut cmd = Command::new("script");
    // -q quiet, -e return the child's status, -c the command, /dev/null no typescript.
    cmd.args(["-q", "-e", "-c", &script_cmd, "/dev/null"]);
    // stdin stays open (a pipe nobody writes to) until the command is done: an EOF on
    // script's stdin would be typed into the terminal as ^D.
    Proc::spawn(cmd, true).finish(timeout)
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}
