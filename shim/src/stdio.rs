//! A process's standard streams, as the shim holds them.
//!
//! containerd names each stream by a URI: a FIFO path (the client reads or writes the other
//! end), `file:///path` (append to a file) or `binary:///path?k=v` (a logging program reads the
//! streams), or asks for a terminal (the runtime sends the pty master over a console socket).
//! The container never writes to a client's FIFO itself: it gets a pipe, and the shim copies,
//! so the container is unaffected by clients coming and going. The shim holds a read end of
//! every output FIFO, so a writer never gets EPIPE while the client is away.
//!
//! Every copy is a task on the shim's event loop ([`crate::rt`]), not a thread: the shim's
//! ends of the streams are non-blocking and registered with the loop's reactor, a copy moves
//! what is there (spliced between pipes, read and written otherwise) and, when a side would
//! block, awaits that side's readiness. A quiet stream costs a few epoll registrations, no
//! thread and (when spliced) no buffer. Nothing here blocks the loop: FIFOs are opened
//! read-write, which never waits for a peer, and a regular file, which epoll cannot watch,
//! is written directly (a write to the page cache).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{DirBuilderExt, OpenOptionsExt},
            net::UnixListener,
        },
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
};
use tether_runtime::Stdio;
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{oneshot, watch},
};

use crate::{
    error::{Error, Result},
    rt,
};

/// Where console sockets are created: short paths, because a unix socket path is limited to
/// 108 bytes and bundle paths are long.
const CONSOLE_DIR: &str = "/run/tether/console";
/// How long a `binary://` logger may take to signal that it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The buffer of a stream that cannot be spliced.
const COPY_BUF: usize = 64 * 1024;
/// The most one splice moves: a pipe's default capacity.
const SPLICE_LEN: usize = 64 * 1024;
/// How soon a lingering FIFO first checks whether its reader has caught up: a reader that is
/// there (a foreground `ctr run`) sees its EOF about this soon after the process's.
const LINGER_FIRST_CHECK: Duration = Duration::from_millis(20);
/// The longest pause between two such checks: the pause doubles up to this, so that output
/// nobody reads (a detached task's) wakes the loop about once a second, not fifty times.
const LINGER_MAX_PAUSE: Duration = Duration::from_secs(1);

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

/// The output copies of one process still running, so that an exit is reported only after
/// its output. Each copy holds a [`Running`] until its source reached EOF.
struct Drain {
    running: watch::Sender<usize>,
}

/// One output copy in progress; dropping it (the copy ended, or the loop went away) counts
/// the copy as done.
struct Running(Arc<Drain>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n -= 1);
    }
}

impl Drain {
    fn new() -> Arc<Drain> {
        Arc::new(Drain { running: watch::Sender::new(0) })
    }

    fn start(self: &Arc<Self>) -> Running {
        self.running.send_modify(|n| *n += 1);
        Running(self.clone())
    }

    /// True once no copy runs; false if some still did after `timeout`.
    async fn closed(&self, timeout: Duration) -> bool {
        let mut running = self.running.subscribe();
        // The sender lives in `self`: `wait_for` fails only by timing out.
        let closed = matches!(tokio::time::timeout(timeout, running.wait_for(|n| *n == 0)).await, Ok(Ok(_)));
        closed
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

/// The shim's side of a process's stdio: its copies (tasks on the loop), the stdin closer
/// and the pty master. Dropping it (the process is deleted) lets go of the output FIFOs its
/// copies still hold and ends its stdin copy.
pub struct ProcessIo {
    spec: StdioSpec,
    drain: Arc<Drain>,
    /// Dropped with the process: the copies' lingering FIFOs are let go then (see [`linger`]).
    release: watch::Sender<()>,
    /// What the copies have moved so far.
    pub copied: Copied,
    /// The output pipes the process was given.
    pub pipes: OutputPipes,
    /// Dropping this (CloseIO, or the process's deletion) ends the stdin copy, which then
    /// closes the process's stdin.
    stdin_cancel: Mutex<Option<oneshot::Sender<()>>>,
    stdin_cancel_rx: Option<oneshot::Receiver<()>>,
    /// The stdin pipe's write end until the console (for terminals) or the copy takes it.
    stdin_sink: Option<File>,
    console: Option<File>,
}

/// What [`ProcessIo::prepare`] gives back: the shim side, the streams for the runtime, and a
/// console socket when a terminal was asked for.
pub type Prepared = (ProcessIo, Stdio, Option<ConsoleSocket>);

impl ProcessIo {
    /// Opens what the client asked for and returns the runtime's streams. Nothing is copied
    /// until [`ProcessIo::start`], after the runtime created the process. Never waits for a
    /// FIFO's peer (output FIFOs are opened read-write); a `binary://` logger is given up to
    /// [`LOGGER_READY_TIMEOUT`] to say it is ready, awaited on the loop.
    pub async fn prepare(spec: &StdioSpec, id: &str, namespace: &str) -> Result<Prepared> {
        let mut io = ProcessIo {
            spec: spec.clone(),
            drain: Drain::new(),
            release: watch::Sender::new(()),
            copied: Copied::default(),
            pipes: OutputPipes::default(),
            stdin_cancel: Mutex::new(None),
            stdin_cancel_rx: None,
            stdin_sink: None,
            console: None,
        };
        let mut stdio = Stdio::default();
        if !spec.stdin.is_empty() {
            let (cancel_tx, cancel_rx) = oneshot::channel();
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
            start_logger(path, args, id, namespace, out_r, err_r).await?;
            stdio.stdout = Some(out_w);
            stdio.stderr = Some(err_w);
            return Ok((io, stdio, None));
        }
        stdio.stdout = io.output(&stdout, "stdout", id, namespace).await?;
        stdio.stderr = io.output(&stderr, "stderr", id, namespace).await?;
        Ok((io, stdio, None))
    }

    /// The runtime-side fd for one output stream, starting its copy where one is needed.
    async fn output(&mut self, out: &Output, name: &str, id: &str, ns: &str) -> Result<Option<OwnedFd>> {
        match out {
            Output::Null => Ok(None),
            // The file itself is the process's stream: nothing to copy.
            Output::File(_) => Ok(open_sink(out, name)?.map(OwnedFd::from)),
            Output::Fifo(_) => {
                let sink = open_sink(out, name)?.expect("a fifo has a sink");
                let (r, w) = pipe()?;
                self.record_pipe(name, &r)?;
                let count = if name == "stdout" { self.copied.stdout.clone() } else { self.copied.stderr.clone() };
                self.spawn_output_copy(Relay::splicing(), File::from(r), sink, count)?;
                Ok(Some(w))
            }
            Output::Binary { path, args } => {
                let (r, w) = pipe()?;
                self.record_pipe(name, &r)?;
                let (unused_r, _unused_w) = pipe()?;
                let (out_r, err_r) = if name == "stdout" { (r, unused_r) } else { (unused_r, r) };
                start_logger(path, args, id, ns, out_r, err_r).await?;
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

    /// Starts one output copy from `from` (the process's side) to `to` on the loop: counted in
    /// the drain until `from` reaches EOF, then lingering (see [`linger`]).
    fn spawn_output_copy(&self, relay: Relay, from: File, to: File, count: Arc<AtomicU64>) -> Result<()> {
        let (from, to) = registered(from, to).map_err(|e| Error::io("registering an output copy", e))?;
        let running = self.drain.start();
        let released = self.release.subscribe();
        rt::spawn(async move {
            copy_output(relay, &from, &to, &count).await;
            // The process's side is done: only what is in the destination still matters.
            drop((from, running));
            linger(&to, released).await;
        });
        Ok(())
    }

    /// Starts copying after the runtime created the process; for terminals, takes the pty
    /// master from `console`. Does not wait: the copies are tasks on the loop, started from
    /// any thread.
    pub fn start(&mut self, console: Option<ConsoleSocket>) -> Result<()> {
        if let Some(sock) = console {
            let master = File::from(sock.receive()?);
            if let Some(out) = open_sink(&parse_output(&self.spec.stdout)?, "stdout")? {
                let reader = master.try_clone().map_err(|e| Error::io("dup pty master", e))?;
                self.spawn_output_copy(Relay::copying(), reader, out, self.copied.stdout.clone())?;
            }
            self.stdin_sink = Some(master.try_clone().map_err(|e| Error::io("dup pty master", e))?);
            self.console = Some(master);
        }
        if let (Some(sink), Some(cancel)) = (self.stdin_sink.take(), self.stdin_cancel_rx.take()) {
            // Read-write: the shim is then a writer of the FIFO itself, so a client that closes
            // its writer (a detach) leaves no EOF behind, and its next open for writing (a
            // reattach) finds a reader. Only CloseIO ends the process's stdin.
            let fifo = open_fifo(Path::new(&self.spec.stdin), libc::O_RDWR, "stdin")?;
            let (fifo, sink) = registered(fifo, sink).map_err(|e| Error::io("registering the stdin copy", e))?;
            // stdin is not drained before an exit is reported: it is input, not output.
            let count = self.copied.stdin.clone();
            rt::spawn(async move { copy_stdin(fifo, sink, cancel, &count).await });
        }
        Ok(())
    }

    /// Closes the process's stdin (CloseIO): the copy hands over what the client wrote before,
    /// then stops, and the process reads EOF. Until then the process's stdin stays open across
    /// clients closing and reopening the FIFO.
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

    /// Waits, without blocking the loop, until all output the process wrote has been copied
    /// (its streams reached EOF), at most `timeout`: a background child that keeps a stream
    /// open must not hold up the exit. True if all output was copied.
    pub async fn output_closed(&self, timeout: Duration) -> bool {
        self.drain.closed(timeout).await
    }
}

/// Opens where copied output goes: a FIFO read-write (so that the shim holds a read end and
/// never blocks waiting for a reader, nor makes the process's writes fail without one), a file for appending; `None` for nothing or a logger.
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

/// One side of a copy as the loop sees it: a descriptor it waits on (a pipe, a FIFO, a pty
/// master), or a regular file, which epoll cannot watch and which is always ready.
enum End {
    Polled(AsyncFd<File>),
    Plain(File),
}

impl End {
    fn file(&self) -> &File {
        match self {
            End::Polled(fd) => fd.get_ref(),
            End::Plain(file) => file,
        }
    }

    /// Writes from `buf` once `self` has room; the number of bytes written.
    async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            End::Polled(fd) => fd.async_io(Interest::WRITABLE, |f| retry(|| (&*f).write(buf))).await,
            End::Plain(file) => retry(|| (&*file).write(buf)),
        }
    }
}

/// Registers both sides of a copy with the loop's reactor, made non-blocking. Works from any
/// thread: the registration is made in the loop's context and the copy then runs on it.
fn registered(from: File, to: File) -> io::Result<(AsyncFd<File>, End)> {
    let _loop = rt::handle().enter();
    let to = match register(to) {
        Ok(fd) => End::Polled(fd),
        // epoll refuses regular files (EPERM): they are always ready anyway.
        Err(e) if e.1.raw_os_error() == Some(libc::EPERM) => End::Plain(e.0),
        Err(e) => return Err(e.1),
    };
    Ok((register(from).map_err(|e| e.1)?, to))
}

/// Makes `file` non-blocking and registers it with the reactor of the current context; on
/// failure, gives it back with the error. Each stream is an open file description of the
/// shim's alone (its end of a pipe, its open of a FIFO, the pty master), so the process's
/// blocking ends are unaffected.
fn register(file: File) -> std::result::Result<AsyncFd<File>, (File, io::Error)> {
    if let Err(e) = tether_runtime::set_nonblocking(file.as_fd()) {
        return Err((file, e));
    }
    // SAFETY: a `File` owns its descriptor, which stays open and the same until it is dropped
    // with the `AsyncFd`.
    unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts())
}

/// Runs `op` again while a signal interrupts it.
fn retry<R>(mut op: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// How many bytes wait to be read in the pipe or FIFO `file` (0 for anything else).
fn unread(file: &File) -> usize {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int to a valid pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FIONREAD, &mut unread) } < 0 {
        return 0;
    }
    unread.max(0) as usize
}

/// Holds the FIFO `sink` open until its reader has taken all that is in it, or `released`
/// says the process was deleted. The last close of a FIFO discards its contents, and a client
/// may open its read end late (containerd's fifo package opens it in the background), so
/// closing as soon as the copy ends could lose the output of a short process. A reader's
/// progress raises no event the shim could wait on, so this checks, ever less often.
async fn linger(sink: &End, mut released: watch::Receiver<()>) {
    // A file keeps what was written to it.
    let End::Polled(fifo) = sink else { return };
    let mut pause = LINGER_FIRST_CHECK;
    while unread(fifo.get_ref()) > 0 {
        tokio::select! {
            // Only ever an error: the sender is dropped with the process, never used.
            _ = released.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(LINGER_MAX_PAUSE);
    }
}

/// Copies a process's output stream to its destination through `relay` until EOF. A pty
/// reports EIO once the last slave closes: that is its EOF. A destination that fails ends the
/// copy (logged); the source is then dropped, and the process gets EPIPE as it would writing
/// there itself.
async fn copy_output(mut relay: Relay, from: &AsyncFd<File>, to: &End, count: &AtomicU64) {
    loop {
        match relay.pass(from, to).await {
            Ok(0) => return,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(Stop::Read(e)) => {
                if e.raw_os_error() != Some(libc::EIO) {
                    log::warn!("reading output: {e}");
                }
                return;
            }
            Err(Stop::Write(e)) => {
                log::warn!("copying output: {e}");
                return;
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

/// Moves bytes from a source to a destination descriptor, both non-blocking, waiting on the
/// loop for whichever side is not ready. Between two pipes (a process's stream and a client's
/// FIFO) it splices: the kernel moves the pages, and the shim holds no buffer, so a quiet
/// stream costs no memory. Otherwise (a pty master, a regular file) it reads and writes
/// through a buffer made on first use.
///
/// [`Relay::pass`] may be cancelled at any await (CloseIO does): what it had read and not yet
/// written stays in the relay, and the next pass writes it first.
struct Relay {
    splice: bool,
    buf: Vec<u8>,
    /// `buf[start..end]` was read and is not written yet.
    start: usize,
    end: usize,
}

impl Relay {
    /// A relay that splices while both sides are pipes, and copies from the first EINVAL on.
    fn splicing() -> Relay {
        Relay { splice: true, buf: Vec::new(), start: 0, end: 0 }
    }

    /// A relay that copies: from a pty master, splice does not hand over what is there as a
    /// read does (an attached terminal hung).
    fn copying() -> Relay {
        Relay { splice: false, ..Relay::splicing() }
    }

    /// Whether bytes read from the source wait to be written.
    fn holds(&self) -> bool {
        self.start < self.end
    }

    /// Moves what `from` has into `to`, waiting for either as needed, and returns how many
    /// bytes reached `to`; `Ok(0)` at EOF.
    async fn pass(&mut self, from: &AsyncFd<File>, to: &End) -> std::result::Result<usize, Stop> {
        // A copy that always finds both sides ready would never yield: let the loop's other
        // tasks in now and then.
        tokio::task::consume_budget().await;
        if self.holds() {
            return self.flush(to).await;
        }
        if self.splice {
            match self.splice(from, to).await? {
                Some(n) => return Ok(n),
                None => self.splice = false,
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUF];
        }
        let buf = &mut self.buf;
        let n = from.async_io(Interest::READABLE, |f| retry(|| (&*f).read(buf))).await.map_err(Stop::Read)?;
        (self.start, self.end) = (0, n);
        self.flush(to).await
    }

    /// Writes out what the relay holds.
    async fn flush(&mut self, to: &End) -> std::result::Result<usize, Stop> {
        let mut written = 0;
        while self.holds() {
            let n = to.write(&self.buf[self.start..self.end]).await.map_err(Stop::Write)?;
            if n == 0 {
                return Err(Stop::Write(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
            written += n;
        }
        Ok(written)
    }

    /// One splice once both sides are ready: `Some(bytes)`, `Some(0)` at EOF, or `None` where
    /// the kernel cannot splice these two.
    async fn splice(&mut self, from: &AsyncFd<File>, to: &End) -> std::result::Result<Option<usize>, Stop> {
        loop {
            let mut readable = from.readable().await.map_err(Stop::Read)?;
            let mut writable = match to {
                End::Polled(fd) => Some(fd.writable().await.map_err(Stop::Write)?),
                End::Plain(_) => None,
            };
            // SAFETY: splice between two descriptors we hold; pipes take no offsets.
            let n = unsafe {
                libc::splice(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.file().as_raw_fd(),
                    std::ptr::null_mut(),
                    SPLICE_LEN,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINVAL) => return Ok(None),
                Some(libc::EINTR) => {}
                // Either side may be the one not ready: ask the kernel which, and wait for
                // that one (the reactor ignores a clear that raced with a new event).
                Some(libc::EAGAIN) => {
                    let (has_data, has_room) = ready_now(from.get_ref(), to.file());
                    if !has_data {
                        readable.clear_ready();
                    }
                    if let (false, Some(w)) = (has_room, writable.as_mut()) {
                        w.clear_ready();
                    }
                    if has_data && has_room {
                        drop((readable, writable));
                        tokio::task::yield_now().await;
                    }
                }
                _ => return Err(Stop::Write(e)),
            }
        }
    }
}

/// Whether `from` has something to read (or its writers are gone) and `to` has room, now.
fn ready_now(from: &File, to: &File) -> (bool, bool) {
    let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN), PollFd::new(to.as_fd(), PollFlags::POLLOUT)];
    if poll(&mut fds, PollTimeout::ZERO).is_err() {
        return (true, true);
    }
    let any = |fd: &PollFd, of: PollFlags| fd.revents().is_some_and(|r| r.intersects(of));
    (
        any(&fds[0], PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR),
        any(&fds[1], PollFlags::POLLOUT | PollFlags::POLLERR),
    )
}

/// Copies the client's stdin FIFO to the process until CloseIO (`cancel` fires or its sender
/// is dropped): clients may come and go in between, as the shim holds the FIFO open for
/// writing too (see [`ProcessIo::start`]). Dropping `sink` at the end gives the process EOF.
async fn copy_stdin(fifo: AsyncFd<File>, sink: End, mut cancel: oneshot::Receiver<()>, count: &AtomicU64) {
    let mut relay = Relay::splicing();
    loop {
        tokio::select! {
            biased;
            _ = &mut cancel => break,
            passed = relay.pass(&fifo, &sink) => match passed {
                Ok(n @ 1..) => {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                // The process closed its stdin or exited (EPIPE): nothing more to hand over.
                _ => return,
            },
        }
    }
    // CloseIO comes after the client wrote its last byte: what is still in the FIFO (or in
    // the relay) belongs to the process, so hand it over before closing.
    while relay.holds() || unread(fifo.get_ref()) > 0 {
        match relay.pass(&fifo, &sink).await {
            Ok(n @ 1..) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            _ => return,
        }
    }
}

/// Starts a `binary://` logger: its fd 3 and 4 read the process's stdout and stderr, and it
/// closes fd 5 once it is ready (containerd's logging-binary protocol), which the loop awaits.
async fn start_logger(path: &Path, args: &[String], id: &str, ns: &str, out: OwnedFd, err: OwnedFd) -> Result<()> {
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
    tether_runtime::spawn(&mut cmd).map_err(|e| Error::io(format!("starting logging binary {}", path.display()), e))?;
    drop((cmd, passed, ready_w, out, err));
    // The logger closes (or writes to) its fd 5 once ready: await that, bounded.
    let ready = rt::watch(ready_r).map_err(|e| Error::io("watching the logging binary's ready pipe", e))?;
    match tokio::time::timeout(LOGGER_READY_TIMEOUT, ready.readable()).await {
        Err(_) => Err(Error::io(
            format!("logging binary {} did not signal ready", path.display()),
            io::ErrorKind::TimedOut.into(),
        )),
        // An error of the registration is left to the logger's output to show.
        Ok(_) => {
            // Readable: this read finds the byte or the end at once.
            let _ = File::from(ready.into_inner()).read(&mut [0u8; 1]);
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
        let (mut io, stdio, console) = rt::handle().block_on(ProcessIo::prepare(&spec, "c", "ns")).unwrap();
        assert!(console.is_none());
        io.start(None).unwrap();
        let mut w = File::from(stdio.stdout.unwrap());
        w.write_all(b"hello").unwrap();
        drop(w);
        assert!(rt::handle().block_on(io.output_closed(Duration::from_secs(5))));
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    /// A process writes more than the FIFOs hold while nobody reads: the copy waits (on the
    /// loop, not in a thread), the process's writes wait too, and a reader that comes late
    /// gets every byte, in order, then EOF.
    #[test]
    fn output_waits_for_a_late_reader_and_loses_nothing() {
        let (_dir, fifo, io, mut w) = started_on_a_fifo(false);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn({
            let data = data.clone();
            move || w.write_all(&data).unwrap()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!rt::handle().block_on(io.output_closed(Duration::from_millis(50))), "the copy waits for a reader");
        // The shim holds a write end: this open does not wait.
        let mut reader = open_fifo(&fifo, libc::O_RDONLY, "test").unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == data, "all {} bytes in order (got {})", data.len(), got.len());
        assert!(rt::handle().block_on(io.output_closed(Duration::from_secs(5))));
        assert_eq!(io.copied.stdout.load(Ordering::Relaxed), data.len() as u64);
    }

    /// Output nobody read is kept only while the process is: deleting it lets go of the FIFO.
    #[test]
    fn unread_output_is_let_go_with_the_process() {
        let (_dir, fifo, io, mut w) = started_on_a_fifo(false);
        w.write_all(b"unread").unwrap();
        drop(w);
        assert!(rt::handle().block_on(io.output_closed(Duration::from_secs(5))));
        let reader = open_fifo(&fifo, libc::O_RDONLY | libc::O_NONBLOCK, "test").unwrap();
        // No writer left would show as POLLHUP on the read end.
        let writers_gone = || {
            let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap();
            fds[0].revents().unwrap().contains(PollFlags::POLLHUP)
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!writers_gone(), "the shim holds the FIFO after the copy ended");
        assert_eq!(unread(&reader), 6, "with the output in it");
        drop(io);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !writers_gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(writers_gone(), "the shim let go of the FIFO with the process");
    }

    /// CloseIO right after the client's last write: what is still in the FIFO reaches the
    /// process before its EOF.
    #[test]
    fn close_stdin_hands_over_what_the_client_wrote() {
        let (_dir, fifo, io, mut proc_stdin) = started_on_a_fifo(true);
        let mut client = OpenOptions::new().write(true).open(&fifo).unwrap();
        client.write_all(&[7u8; 100_000]).unwrap();
        drop(client);
        io.close_stdin();
        let mut got = Vec::new();
        proc_stdin.read_to_end(&mut got).unwrap();
        assert!(got.len() == 100_000 && got.iter().all(|&b| b == 7), "got {} bytes", got.len());
        assert_eq!(io.copied.stdin.load(Ordering::Relaxed), 100_000);
    }

    /// A started process's stdio whose stdin (else stdout) is a client FIFO: (its dir, the
    /// FIFO, the shim's side, the process's end of that stream).
    fn started_on_a_fifo(stdin: bool) -> (tempfile::TempDir, PathBuf, ProcessIo, File) {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo).unwrap();
        let path = fifo.display().to_string();
        let spec = if stdin {
            StdioSpec { stdin: path, ..Default::default() }
        } else {
            StdioSpec { stdout: path, ..Default::default() }
        };
        let (mut io, stdio, _) = rt::handle().block_on(ProcessIo::prepare(&spec, "c", "ns")).unwrap();
        io.start(None).unwrap();
        let end = if stdin { stdio.stdin } else { stdio.stdout };
        (dir, fifo, io, File::from(end.unwrap()))
    }

    #[test]
    fn close_stdin_gives_the_process_eof() {
        let (_dir, fifo, io, mut proc_stdin) = started_on_a_fifo(true);
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
        let (_dir, fifo, io, mut proc_stdin) = started_on_a_fifo(true);
        let mut got = [0u8; 4];
        // Non-blocking opens: without a reader, the reattach fails (ENXIO) instead of hanging.
        let attach = || OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
        let mut client = attach().unwrap();
        client.write_all(b"one\n").unwrap();
        drop(client);
        proc_stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one\n");
        // Give the copy time to see the detach, as it would the end of the stream.
        std::thread::sleep(Duration::from_millis(100));
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
