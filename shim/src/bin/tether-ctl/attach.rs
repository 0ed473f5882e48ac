//! Attaching this terminal (or these pipes) to a container process the way `ctr` does: FIFOs
//! the shim copies to and from, our stdin and stdout copied through them, signals forwarded as
//! Kill, the window size as ResizePty, and the exit status from Wait.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{stat::Mode, termios},
};
use signal_hook::{consts::*, iterator::Signals};
use tether_protos::api;

use crate::shim::{ctx, describe, no_timeout, Shim};

use crate::{CtlError, Result};

/// The signals a user means for the container, not for this tool.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// The FIFOs of one process, in a temp dir of their own.
pub struct Fifos {
    dir: PathBuf,
    pub stdin: PathBuf,
    pub stdout: PathBuf,
    /// None for a terminal, whose output is all on stdout.
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    /// Makes the FIFOs (mode 0600) for a process with or without a terminal.
    pub fn new(terminal: bool) -> Result<Fifos> {
        let dir = std::env::temp_dir().join(format!("tether-ctl-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&dir).map_err(|e| CtlError::io(format!("creating {}", dir.display()), e))?;
        let make = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                .map_err(|e| CtlError::io(format!("mkfifo {}", path.display()), e.into()))?;
            Ok(path)
        };
        let stdin = make("stdin")?;
        let stdout = make("stdout")?;
        let stderr = if terminal { None } else { Some(make("stderr")?) };
        Ok(Fifos { dir, stdin, stdout, stderr })
    }

    /// The paths as the task API carries them.
    pub fn uris(&self) -> (String, String, String) {
        let s = |p: &Path| p.display().to_string();
        (s(&self.stdin), s(&self.stdout), self.stderr.as_deref().map(s).unwrap_or_default())
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos().into())
}

/// Opens a FIFO read-write: never blocks on the other side, never sees EOF while we hold it.
fn open_fifo(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| CtlError::io(format!("opening {}", path.display()), e))
}

/// The copying between our stdio and a process's FIFOs, until [`Copiers::finish`].
pub struct Copiers {
    done: Arc<AtomicBool>,
    outputs: Vec<JoinHandle<()>>,
}

impl Copiers {
    /// Starts copying the process's stdout and stderr to ours (before it starts, so that no
    /// byte waits for us).
    pub fn start(fifos: &Fifos) -> Result<Copiers> {
        let done = Arc::new(AtomicBool::new(false));
        let mut outputs = Vec::new();
        let out = open_fifo(&fifos.stdout)?;
        let d = done.clone();
        outputs.push(thread::spawn(move || copy_out(out, io::stdout(), &d)));
        if let Some(path) = &fifos.stderr {
            let err = open_fifo(path)?;
            let d = done.clone();
            outputs.push(thread::spawn(move || copy_out(err, io::stderr(), &d)));
        }
        Ok(Copiers { done, outputs })
    }

    /// Starts copying our stdin to the started process; at our EOF, CloseIO closes its stdin.
    /// The FIFO stays open until the shim has taken what is still in it: the last close of a
    /// FIFO discards its contents.
    pub fn feed_stdin(fifos: &Fifos, shim: Arc<Shim>, id: &str, exec_id: &str) -> Result<()> {
        let stdin = open_fifo(&fifos.stdin)?;
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        // Not joined: a terminal's stdin never ends, and the process may exit first.
        thread::spawn(move || {
            copy_in(&stdin);
            let req = api::CloseIORequest { id, exec_id, stdin: true, ..Default::default() };
            let _ = shim.task.close_io(ctx(), &req);
            drop(stdin);
        });
        Ok(())
    }

    /// Copies what the process wrote before it exited (the shim puts all of it in the FIFOs
    /// before it reports the exit), then stops.
    pub fn finish(self) {
        self.done.store(true, Ordering::SeqCst);
        for t in self.outputs {
            let _ = t.join();
        }
    }
}

fn copy_out(mut from: File, mut to: impl Write, done: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0);
        if ready == 0 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn copy_in(mut to: &File) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Our terminal in raw mode while a container's terminal is attached; restored on drop.
pub struct RawTerminal {
    saved: Option<termios::Termios>,
}

impl RawTerminal {
    /// Raw mode on stdin when it is a terminal; nothing otherwise.
    pub fn enter() -> RawTerminal {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        }
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

/// Sends our window size to the process's terminal (when we have one).
pub fn resize(shim: &Shim, id: &str, exec_id: &str) {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer.
    if unsafe { libc::ioctl(io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } < 0 || ws.ws_col == 0 {
        return;
    }
    let req = api::ResizePtyRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        width: ws.ws_col.into(),
        height: ws.ws_row.into(),
        ..Default::default()
    };
    if let Err(e) = shim.task.resize_pty(ctx(), &req) {
        eprintln!("tether-ctl: resizing the terminal: {}", describe(e));
    }
}

/// Forwards our signals to the process (and window changes to its terminal) from now on.
pub fn forward_signals(shim: Arc<Shim>, id: &str, exec_id: &str, terminal: bool) -> Result<()> {
    let mut wanted = FORWARDED.to_vec();
    if terminal {
        wanted.push(SIGWINCH);
    }
    let mut signals = Signals::new(&wanted).map_err(|e| CtlError::io("installing signal handlers", e))?;
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGWINCH {
                resize(&shim, &id, &exec_id);
                continue;
            }
            let req =
                api::KillRequest { id: id.clone(), exec_id: exec_id.clone(), signal: sig as u32, ..Default::default() };
            if let Err(e) = shim.task.kill(ctx(), &req) {
                eprintln!("tether-ctl: forwarding signal {sig}: {}", describe(e));
            }
        }
    });
    Ok(())
}

/// Waits for the process to exit and returns its status.
pub fn wait(shim: &Shim, id: &str, exec_id: &str) -> Result<u32> {
    let req = api::WaitRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
    shim.task.wait(no_timeout(), &req).map(|r| r.exit_status).map_err(|e| CtlError::call("wait", e))
}
