//! A process's standard streams, as the shim holds them.
//!
//! containerd names each stream by a URI: a FIFO path (the client reads or writes the other
//! end), `file:///path` (append to a file) or `binary:///path?k=v` (a logging program reads the
//! streams), or asks for a terminal (the runtime sends the pty master over a console socket).
//! The container never writes to a client's FIFO itself: it gets a pipe, and the shim copies,
//! so the container is unaffected by clients coming and going. The shim holds a read end of
//! every output FIFO, so a writer never gets EPIPE while the client is away.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{DirBuilderExt, OpenOptionsExt},
            net::UnixListener,
        },
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
};
use tether_runtime::Stdio;

use crate::error::{Error, Result};

/// Where console sockets are created: short paths, because a unix socket path is limited to
/// 108 bytes and bundle paths are long.
const CONSOLE_DIR: &str = "/run/tether/console";
/// How long a `binary://` logger may take to signal that it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The buffer of a stream that cannot be spliced.
const COPY_BUF: usize = 64 * 1024;
/// The most one splice moves: a pipe's default capacity.
const SPLICE_LEN: usize = 64 * 1024;
/// How often a lingering FIFO checks whether its reader has caught up.
const LINGER_POLL_MS: u16 = 20;

/// The stdio a client asked for in Create or Exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What one output URI means.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn parse_output(uri: &str) -> Result<Output> {
    if uri.is_empty() {
        return Ok(Output::Null);
    }
    // No path or argument can hold a NUL: refuse it here rather than fail later in open or exec.
    if uri.contains('\0') {
        return Err(Error::InvalidArgument(format!("stdio uri {uri:?} contains a NUL byte")));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Output::Fifo(uri.into()));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!("stdio uri {uri:?} needs an absolute path")));
    }
    match scheme {
        "fifo" => Ok(Output::Fifo(path.into())),
        "file" => Ok(Output::File(path.into())),
        "binary" => {
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(uri, k)?);
                if !v.is_empty() {
                    args.push(percent_decode(uri, v)?);
                }
            }
            Ok(Output::Binary { path: path.into(), args })
        }
        other => Err(Error::InvalidArgument(format!(
            "stdio uri {uri:?}: unsupported scheme {other:?} (fifo path, file://, binary://)"
        ))),
    }
}

/// Decodes one part of a `binary://` query (`%XX` escapes, `+` for a space), as Go's
/// `url.ParseQuery` does for containerd: a `%` without two hex digits after it is an error,
/// as is an escape that decodes to a NUL (no program argument can hold one).
fn percent_decode(uri: &str, s: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidArgument(format!("stdio uri {uri:?}: {why} in {s:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Work on bytes: a multi-byte character after the `%` is no hex digit, and
                // slicing the string there would split it.
                let hex = bytes.get(i + 1..i + 3).and_then(|h| Some((hex_digit(h[0])?, hex_digit(h[1])?)));
                let Some((hi, lo)) = hex else { return Err(bad("a % not followed by two hex digits")) };
                match hi << 4 | lo {
                    0 => return Err(bad("an escaped NUL")),
                    b => out.push(b),
                }
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The output copiers of one process: counts those still copying, so that an exit is reported
/// only after its output, and keeps each destination FIFO open after its copy until the
/// reader has taken everything or the process is deleted.
struct Drain {
    running: Mutex<usize>,
    done: Condvar,
    /// Readable (at EOF) once the process's [`ProcessIo`] is dropped.
    released: OwnedFd,
}

impl Drain {
    /// A drain, and the guard whose drop releases its lingering FIFOs.
    fn new() -> Result<(Arc<Drain>, OwnedFd)> {
        let (released, guard) = pipe()?;
        Ok((Arc::new(Drain { running: Mutex::new(0), done: Condvar::new(), released }), guard))
    }

    /// Runs `copy` on a thread of its own; once it returns its destination, the copy counts
    /// as done and the destination lingers (see [`linger`]).
    fn spawn(self: &Arc<Self>, name: &str, copy: impl FnOnce() -> File + Send + 'static) -> Result<()> {
        *self.running.lock().unwrap() += 1;
        let me = self.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let sink = copy();
                *me.running.lock().unwrap() -= 1;
                me.done.notify_all();
                linger(&sink, me.released.as_fd());
            })
            .map(drop)
            .map_err(|e| {
                *self.running.lock().unwrap() -= 1;
                Error::io("spawning a stdio thread", e)
            })
    }

    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut running = self.running.lock().unwrap();
        while *running > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            running = self.done.wait_timeout(running, deadline - now).unwrap().0;
        }
        true
    }
}

/// A console socket the runtime connects to, to hand over the pty master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn new() -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(CONSOLE_DIR)
            .map_err(|e| Error::io(format!("creating {CONSOLE_DIR}"), e))?;
        let path =
            Path::new(CONSOLE_DIR).join(format!("{}-{}.sock", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding console socket {}", path.display()), e))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// The socket's path, for the runtime's `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the pty master the runtime sent. Call after the runtime call returned: by then
    /// the runtime has connected and sent it.
    fn receive(&self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true).map_err(|e| Error::io("console socket", e))?;
        let (conn, _) =
            self.listener.accept().map_err(|e| Error::io("the runtime did not connect to the console socket", e))?;
        conn.set_nonblocking(false).map_err(|e| Error::io("console socket", e))?;
        let mut buf = [0u8; 4096];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| Error::io("receiving the pty master", e.into()))?;
        for c in msg.cmsgs().map_err(|e| Error::io("receiving the pty master", e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd in our table for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(Error::io("the runtime sent no pty master", io::ErrorKind::InvalidData.into()))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Bytes the shim has copied on each of a process's streams (a pty's output counts as stdout;
/// `file://` and `binary://` streams are not copied by the shim and stay 0).
#[derive(Debug, Default)]
pub struct Copied {
    pub stdin: Arc<AtomicU64>,
    pub stdout: Arc<AtomicU64>,
    pub stderr: Arc<AtomicU64>,
}

/// The inodes of the pipes a process writes its output into (0: the stream is no pipe), by
/// which the debug dump finds who else still holds them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutputPipes {
    pub stdout: u64,
    pub stderr: u64,
}

/// The shim's side of a process's stdio: copy threads, the stdin closer and the pty master.
pub struct ProcessIo {
    spec: StdioSpec,
    drain: Arc<Drain>,
    /// Dropped with the process: lets go of the output FIFOs its copiers still hold.
    _release: OwnedFd,
    /// What the copiers have moved so far.
    pub copied: Copied,
    /// The output pipes the process was given.
    pub pipes: OutputPipes,
    /// Dropping this wakes the stdin copier, which then closes the process's stdin.
    stdin_cancel: Mutex<Option<OwnedFd>>,
    stdin_cancel_rx: Option<OwnedFd>,
    /// The stdin pipe's write end until the console (for terminals) or the copier takes it.
    stdin_sink: Option<File>,
    console: Option<File>,
}

/// What [`ProcessIo::prepare`] gives back: the shim side, the streams for the runtime, and a
/// console socket when a terminal was asked for.
pub type Prepared = (ProcessIo, Stdio, Option<ConsoleSocket>);

impl ProcessIo {
    /// Opens what the client asked for and returns the runtime's streams. Nothing is copied
    /// until [`ProcessIo::start`], after the runtime created the process.
    pub fn prepare(spec: &StdioSpec, id: &str, namespace: &str) -> Result<Prepared> {
        let (drain, release) = Drain::new()?;
        let mut io = ProcessIo {
            spec: spec.clone(),
            drain,
            _release: release,
            copied: Copied::default(),
            pipes: OutputPipes::default(),
            stdin_cancel: Mutex::new(None),
            stdin_cancel_rx: None,
            stdin_sink: None,
            console: None,
        };
        let mut stdio = Stdio::default();
        if !spec.stdin.is_empty() {
            let (cancel_rx, cancel_tx) = pipe()?;
            *io.stdin_cancel.lock().unwrap() = Some(cancel_tx);
            io.stdin_cancel_rx = Some(cancel_rx);
            if !spec.terminal {
                let (r, w) = pipe()?;
                stdio.stdin = Some(r);
                io.stdin_sink = Some(File::from(w));
            }
        }
        if spec.terminal {
            return Ok((io, stdio, Some(ConsoleSocket::new()?)));
        }
        let stdout = parse_output(&spec.stdout)?;
        let stderr = parse_output(&spec.stderr)?;
        if let (Output::Binary { path, args }, true) = (&stdout, spec.stdout == spec.stderr) {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            io.pipes = OutputPipes { stdout: pipe_inode(&out_r)?, stderr: pipe_inode(&err_r)? };
            start_logger(path, args, id, namespace, out_r, err_r)?;
            stdio.stdout = Some(out_w);
            stdio.stderr = Some(err_w);
            return Ok((io, stdio, None));
        }
        stdio.stdout = io.output(&stdout, "stdout", id, namespace)?;
        stdio.stderr = io.output(&stderr, "stderr", id, namespace)?;
        Ok((io, stdio, None))
    }

    /// The runtime-side fd for one output stream, starting its copier where one is needed.
    fn output(&mut self, out: &Output, name: &str, id: &str, ns: &str) -> Result<Option<OwnedFd>> {
        match out {
            Output::Null => Ok(None),
            // The file itself is the process's stream: nothing to copy.
            Output::File(_) => Ok(open_sink(out, name)?.map(OwnedFd::from)),
            Output::Fifo(_) => {
                let sink = open_sink(out, name)?.expect("a fifo has a sink");
                let (r, w) = pipe()?;
                self.record_pipe(name, &r)?;
                let count = if name == "stdout" { self.copied.stdout.clone() } else { self.copied.stderr.clone() };
                self.drain.spawn(name, move || copy_output(Relay::splicing(), File::from(r), sink, &count))?;
                Ok(Some(w))
            }
            Output::Binary { path, args } => {
                let (r, w) = pipe()?;
                self.record_pipe(name, &r)?;
                let (unused_r, _unused_w) = pipe()?;
                let (out_r, err_r) = if name == "stdout" { (r, unused_r) } else { (unused_r, r) };
                start_logger(path, args, id, ns, out_r, err_r)?;
                Ok(Some(w))
            }
        }
    }

    /// Notes the inode of the pipe behind the output stream `name`.
    fn record_pipe(&mut self, name: &str, read_end: &OwnedFd) -> Result<()> {
        let inode = pipe_inode(read_end)?;
        if name == "stdout" {
            self.pipes.stdout = inode;
        } else {
            self.pipes.stderr = inode;
        }
        Ok(())
    }

    /// Starts copying after the runtime created the process; for terminals, takes the pty
    /// master from `console`.
    pub fn start(&mut self, console: Option<ConsoleSocket>) -> Result<()> {
        if let Some(sock) = console {
            let master = File::from(sock.receive()?);
            if let Some(out) = open_sink(&parse_output(&self.spec.stdout)?, "stdout")? {
                let reader = master.try_clone().map_err(|e| Error::io("dup pty master", e))?;
                let count = self.copied.stdout.clone();
                self.drain.spawn("pty-out", move || copy_output(Relay::copying(), reader, out, &count))?;
            }
            self.stdin_sink = Some(master.try_clone().map_err(|e| Error::io("dup pty master", e))?);
            self.console = Some(master);
        }
        if let (Some(sink), Some(cancel)) = (self.stdin_sink.take(), self.stdin_cancel_rx.take()) {
            // Read-write: the shim is then a writer of the FIFO itself, so a client that closes
            // its writer (a detach) leaves no EOF behind, and its next open for writing (a
            // reattach) finds a reader. Only CloseIO ends the process's stdin.
            let fifo = open_fifo(Path::new(&self.spec.stdin), libc::O_RDWR | libc::O_NONBLOCK, "stdin")?;
            // stdin is not drained before an exit is reported: it is input, not output.
            let count = self.copied.stdin.clone();
            thread::Builder::new()
                .name("stdin".into())
                .spawn(move || copy_stdin(fifo, sink, cancel, &count))
                .map_err(|e| Error::io("spawning the stdin thread", e))?;
        }
        Ok(())
    }

    /// Closes the process's stdin (CloseIO): the copier stops and the process reads EOF.
    pub fn close_stdin(&self) {
        self.stdin_cancel.lock().unwrap().take();
    }

    /// Resizes the terminal (ResizePty).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(console) = &self.console else {
            return Err(Error::FailedPrecondition("the process has no terminal".into()));
        };
        let ws = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer on a pty master fd we own.
        if unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(Error::io("resizing the pty", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits until all output the process wrote has been copied (its streams reached EOF), at
    /// most `timeout`: a background child that keeps a stream open must not hold up the exit.
    pub fn wait_output(&self, timeout: Duration) -> bool {
        self.drain.wait(timeout)
    }
}

/// Opens where copied output goes: a FIFO read-write (so that the shim holds a read end and
/// never blocks waiting for a reader), a file for appending; `None` for nothing or a logger.
fn open_sink(out: &Output, name: &str) -> Result<Option<File>> {
    match out {
        Output::Fifo(path) => open_fifo(path, libc::O_RDWR, name).map(Some),
        Output::File(path) => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| {
                    Error::InvalidArgument(format!("cannot create {name} log dir {}: {e}", dir.display()))
                })?;
            }
            OpenOptions::new()
                .append(true)
                .create(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map(Some)
                .map_err(|e| Error::InvalidArgument(format!("cannot open {name} log {}: {e}", path.display())))
        }
        Output::Null | Output::Binary { .. } => Ok(None),
    }
}

/// The inode of the pipe `fd` is an end of: both ends, in any process, show it as
/// `pipe:[INODE]` under /proc/PID/fd.
fn pipe_inode(fd: &OwnedFd) -> Result<u64> {
    nix::sys::stat::fstat(fd).map(|st| st.st_ino).map_err(|e| Error::io("fstat of a pipe", e.into()))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("creating a pipe", e.into()))?;
    Ok((r, w))
}

fn open_fifo(path: &Path, flags: i32, name: &str) -> Result<File> {
    OpenOptions::new()
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot open {name} {}: {e}", path.display())))
}

/// Holds the FIFO `sink` open until its reader has taken all that is in it, or `released`
/// says the process was deleted. The last close of a FIFO discards its contents, and a client
/// may open its read end late (containerd's fifo package opens it in the background), so
/// closing as soon as the copy ends could lose the output of a short process.
fn linger(sink: &File, released: BorrowedFd) {
    loop {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int to a valid pointer.
        if unsafe { libc::ioctl(sink.as_raw_fd(), libc::FIONREAD, &mut unread) } < 0 || unread == 0 {
            return;
        }
        let mut fds = [PollFd::new(released, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(LINGER_POLL_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// Copies a process's output stream to its destination through `relay` until EOF, and
/// returns the destination. A pty reports EIO once the last slave closes: that is its EOF.
fn copy_output(mut relay: Relay, from: File, mut to: File, count: &AtomicU64) -> File {
    loop {
        match relay.pass(&from, &mut to) {
            Ok(0) => return to,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(Stop::Read(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(Stop::Read(_)) => return to,
            Err(Stop::Write(e)) => {
                log::warn!("copying output: {e}");
                return to;
            }
        }
    }
}

/// Why [`Relay::pass`] moved nothing.
enum Stop {
    /// Reading the source failed (for a pty master, EIO is its end of file).
    Read(io::Error),
    /// Writing the destination failed.
    Write(io::Error),
}

/// Moves bytes from a source to a destination descriptor. Between two pipes (a process's
/// stream and a client's FIFO) it splices: the kernel moves the pages, and the shim holds no
/// buffer, so a quiet stream costs no memory. Otherwise (a pty master, a non-blocking FIFO)
/// it reads and writes through a buffer made on first use.
struct Relay {
    splice: bool,
    buf: Vec<u8>,
}

impl Relay {
    /// A relay between two blocking pipes.
    fn splicing() -> Relay {
        Relay { splice: true, buf: Vec::new() }
    }

    /// A relay that copies: from a pty master (splice does not hand over what is there as a
    /// read does: an attached terminal hung), and from a non-blocking FIFO, where splice
    /// would not block on a full destination either (the kernel makes a pipe-to-pipe splice
    /// non-blocking on both sides when either is).
    fn copying() -> Relay {
        Relay { splice: false, buf: Vec::new() }
    }

    /// Moves what `from` has (waiting for it as a read would) into `to`; `Ok(0)` at EOF.
    fn pass(&mut self, from: &File, to: &mut File) -> std::result::Result<usize, Stop> {
        if self.splice {
            // SAFETY: splice between two descriptors we hold; pipes take no offsets.
            let n = unsafe {
                libc::splice(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    SPLICE_LEN,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINVAL) => self.splice = false,
                Some(libc::EINTR) => return Err(Stop::Read(e)),
                _ => return Err(Stop::Write(e)),
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUF];
        }
        let n = (&*from).read(&mut self.buf).map_err(Stop::Read)?;
        to.write_all(&self.buf[..n]).map_err(Stop::Write)?;
        Ok(n)
    }
}

/// Copies the client's stdin FIFO to the process until CloseIO: clients may come and go in
/// between, as the shim holds the FIFO open for writing too (see [`ProcessIo::start`]). The
/// FIFO is opened non-blocking, so waiting for input is a poll that CloseIO (closing
/// `cancel`'s other end) can interrupt.
fn copy_stdin(fifo: File, mut sink: File, cancel: OwnedFd, count: &AtomicU64) {
    let mut relay = Relay::copying();
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN), PollFd::new(cancel.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            // CloseIO comes after the client wrote its last byte: what is still in the FIFO
            // belongs to the process, so hand it over before closing.
            while let Ok(n @ 1..) = relay.pass(&fifo, &mut sink) {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            return;
        }
        match relay.pass(&fifo, &mut sink) {
            Ok(0) => return,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(Stop::Read(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

/// Starts a `binary://` logger: its fd 3 and 4 read the process's stdout and stderr, and it
/// closes fd 5 once it is ready (containerd's logging-binary protocol).
fn start_logger(path: &Path, args: &[String], id: &str, ns: &str, out: OwnedFd, err: OwnedFd) -> Result<()> {
    let (ready_r, ready_w) = pipe()?;
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", ns)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let passed = crate::sys::pass_fds(&mut cmd, &[&out, &err, &ready_w])
        .map_err(|e| Error::io("passing fds to the logging binary", e))?;
    cmd.spawn().map_err(|e| Error::io(format!("starting logging binary {}", path.display()), e))?;
    drop((cmd, passed, ready_w, out, err));
    // The logger closes (or writes to) its fd 5 once ready: wait for that, bounded.
    let mut ready = File::from(ready_r);
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    let ms = LOGGER_READY_TIMEOUT.as_millis().min(u16::MAX as u128) as u16;
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(Error::io(
            format!("logging binary {} did not signal ready", path.display()),
            io::ErrorKind::TimedOut.into(),
        )),
        _ => {
            let _ = ready.read(&mut [0u8; 1]);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn mkfifo(path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[test]
    fn output_uris_parse() {
        assert_eq!(parse_output("").unwrap(), Output::Null);
        assert_eq!(parse_output("/run/x/stdout").unwrap(), Output::Fifo("/run/x/stdout".into()));
        assert_eq!(parse_output("file:///var/log/c.log").unwrap(), Output::File("/var/log/c.log".into()));
        assert_eq!(
            parse_output("binary:///usr/bin/logger?tag=my%20app&debug").unwrap(),
            Output::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "my app".into(), "debug".into()]
            }
        );
        assert!(parse_output("http://x/y").is_err());
        assert!(parse_output("file://relative").is_err());
    }

    #[test]
    fn fifo_output_is_copied_and_drained() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        mkfifo(&fifo).unwrap();
        let spec = StdioSpec { stdout: fifo.display().to_string(), ..Default::default() };
        let mut reader = open_fifo(&fifo, libc::O_RDONLY | libc::O_NONBLOCK, "test").unwrap();
        let (mut io, stdio, console) = ProcessIo::prepare(&spec, "c", "ns").unwrap();
        assert!(console.is_none());
        io.start(None).unwrap();
        let mut w = File::from(stdio.stdout.unwrap());
        w.write_all(b"hello").unwrap();
        drop(w);
        assert!(io.wait_output(Duration::from_secs(5)));
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    /// A started process's stdio whose stdin is a client FIFO: (its dir, the FIFO, the
    /// shim's side, the process's stdin).
    fn stdin_from_a_fifo() -> (tempfile::TempDir, PathBuf, ProcessIo, File) {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        mkfifo(&fifo).unwrap();
        let spec = StdioSpec { stdin: fifo.display().to_string(), ..Default::default() };
        let (mut io, stdio, _) = ProcessIo::prepare(&spec, "c", "ns").unwrap();
        io.start(None).unwrap();
        (dir, fifo, io, File::from(stdio.stdin.unwrap()))
    }

    #[test]
    fn close_stdin_gives_the_process_eof() {
        let (_dir, fifo, io, mut proc_stdin) = stdin_from_a_fifo();
        let mut client = OpenOptions::new().write(true).open(&fifo).unwrap();
        client.write_all(b"abc").unwrap();
        let mut got = [0u8; 3];
        proc_stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        io.close_stdin();
        let mut rest = Vec::new();
        proc_stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn stdin_survives_a_detach_until_close_io() {
        let (_dir, fifo, io, mut proc_stdin) = stdin_from_a_fifo();
        let mut got = [0u8; 4];
        // Non-blocking opens: without a reader, the reattach fails (ENXIO) instead of hanging.
        let attach = || OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
        let mut client = attach().unwrap();
        client.write_all(b"one\n").unwrap();
        drop(client);
        proc_stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one\n");
        // Give the copier time to see the detach, as it would the end of the stream.
        thread::sleep(Duration::from_millis(100));
        let mut client = attach().expect("the FIFO still has its reader after a detach");
        client.write_all(b"two\n").unwrap();
        drop(client);
        proc_stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two\n");
        io.close_stdin();
        let mut rest = Vec::new();
        proc_stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "CloseIO ends stdin");
    }

    #[test]
    fn bad_percent_escapes_are_invalid_arguments() {
        for uri in [
            "binary:///usr/bin/logger?tag=%\u{e9}",
            "binary:///usr/bin/logger?tag=%4\u{e9}x",
            "binary:///usr/bin/logger?%",
            "binary:///usr/bin/logger?a=%zz",
            "binary:///usr/bin/logger?a=%00",
            "binary:///usr/bin/log\0ger",
        ] {
            let e = parse_output(uri).unwrap_err();
            assert_eq!(e.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT, "{uri}");
        }
        assert_eq!(
            parse_output("binary:///l?tag=caf%C3%A9+%41").unwrap(),
            Output::Binary { path: "/l".into(), args: vec!["tag".into(), "caf\u{e9} A".into()] }
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// No stdio URI panics the shim: each is a meaning or an InvalidArgument.
        #[test]
        fn any_output_uri_parses_or_is_refused(
            uri in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                "(binary|file|fifo|x)://[/a-z%+=&?\\PC]{0,24}",
            ]
        ) {
            if let Err(e) = parse_output(&uri) {
                proptest::prop_assert_eq!(e.code(), tether_protos::ttrpc::Code::INVALID_ARGUMENT);
            }
        }
    }
}
