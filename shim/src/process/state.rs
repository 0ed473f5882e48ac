//! The life of one process (a container's init, or an exec) and the one table of what each
//! state allows: every operation asks [`Status::on`] before it acts.
//!
//! ```text
//!   Created ──start──▶ Running ◀──resume── Paused
//!      │                  │  └────pause────▶  │
//!      └──exit/delete──▶ Stopped ◀───exit─────┘ ──delete──▶ (gone)
//! ```
//!
//! The table follows containerd's Go shim (its `process` package, one type per state), with
//! one difference on purpose: Kill of an exec that was never started is refused
//! (FailedPrecondition) rather than passed to a process that does not exist yet.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use tether_protos::{api, debug};

use crate::{
    error::{Error, Result},
    pidfd::Handle,
    reaper::Exit,
    stdio::{ProcessIo, StdioSpec},
};

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// What a request (or the kernel) asks of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Start it (the init's Start, or an exec's).
    Start,
    /// Add an exec process to the container (asked of the init).
    AddExec,
    /// Start one of the container's exec processes (asked of the init).
    StartExec,
    /// Freeze the container (asked of the init).
    Pause,
    /// Thaw the container (asked of the init).
    Resume,
    /// Signal it.
    Kill,
    /// Change the container's resources (asked of the init).
    Update,
    /// Checkpoint the container with CRIU (asked of the init).
    Checkpoint,
    /// Forget it (for the init: remove the container).
    Delete,
    /// It has exited.
    Exit,
}

/// Which process of a container: the two follow different rows of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    Exec,
}

impl Status {
    /// What `op` does to a `kind` process in this state: the state it is in afterwards (the
    /// same one for operations that do not move it), or why it is refused: NotFound for a
    /// signal to a process that has finished (containerd reads that as "already exited"),
    /// FailedPrecondition otherwise.
    pub fn on(self, op: Op, kind: Kind) -> Result<Status> {
        use Kind::*;
        use Op::*;
        use Status::*;
        let next = match (kind, op, self) {
            (_, Start, Created) => Running,
            (Init, AddExec, Created | Running) => self,
            (Init, StartExec, Running) => self,
            (Init, Pause, Running) => Paused,
            (Init, Resume, Paused) => Running,
            (_, Kill, Stopped) => return Err(Error::NotFound(format!("the {} has already finished", kind.noun()))),
            (Init, Kill, _) | (Exec, Kill, Running | Paused) => self,
            (Init, Update, Created | Running | Paused) => self,
            (Init, Checkpoint, Running | Paused) => self,
            (_, Delete, Created | Stopped) => self,
            (_, Exit, Created | Running | Paused) => Stopped,
            (Exec, AddExec | StartExec | Pause | Resume | Update | Checkpoint, _) => {
                return Err(Error::FailedPrecondition(format!("{op:?} is not an operation of an exec process")))
            }
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot {} a {} {}",
                    op.verb(),
                    self.name(),
                    kind.noun()
                )))
            }
        };
        Ok(next)
    }

    pub(super) fn api(self) -> api::Status {
        match self {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }

    /// Running or paused: it has a process that has not exited.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::AddExec => "exec in",
            Op::StartExec => "start an exec in",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Kill => "signal",
            Op::Update => "update",
            Op::Checkpoint => "checkpoint",
            Op::Delete => "delete",
            Op::Exit => "record the exit of",
        }
    }
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Init => "container",
            Kind::Exec => "exec process",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// The exit code; death by signal N is 128 + N.
    pub code: u32,
    pub at: SystemTime,
}

/// One process: a container's init (empty exec id) or an exec.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub status: Status,
    pub exited: Option<Exited>,
    pub stdio: StdioSpec,
    pub(super) io: Option<Arc<ProcessIo>>,
    /// How the process is signalled and checked on, once its pid is known.
    pub(super) handle: Option<Arc<Handle>>,
    /// An exec's OCI process spec (JSON), kept until it is started.
    pub(super) spec: Vec<u8>,
    /// A Start is running the runtime for it: an exit that comes meanwhile waits in
    /// `early_exit` until the Start has published its event.
    pub(super) starting: bool,
    /// An exit that came while the process was starting (see `starting`).
    pub(super) early_exit: Option<Exit>,
}

impl Process {
    pub(super) fn new(exec_id: &str, stdio: StdioSpec) -> Self {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: Status::Created,
            exited: None,
            stdio,
            io: None,
            handle: None,
            spec: Vec::new(),
            starting: false,
            early_exit: None,
        }
    }

    pub(super) fn kind(&self) -> Kind {
        if self.exec_id.is_empty() {
            Kind::Init
        } else {
            Kind::Exec
        }
    }

    /// Whether `op` is allowed now (see [`Status::on`]), without moving.
    pub(super) fn check(&self, op: Op) -> Result<()> {
        self.status.on(op, self.kind()).map(drop).map_err(|e| self.named(e))
    }

    /// Applies `op`: moves to the state the table gives, or refuses.
    pub(super) fn apply(&mut self, op: Op) -> Result<()> {
        self.status = self.status.on(op, self.kind()).map_err(|e| self.named(e))?;
        Ok(())
    }

    /// `e` with the process named (an exec by its id).
    fn named(&self, e: Error) -> Error {
        match (self.kind(), e) {
            (Kind::Init, e) => e,
            (Kind::Exec, Error::FailedPrecondition(m)) => {
                Error::FailedPrecondition(format!("exec {}: {m}", self.exec_id))
            }
            (Kind::Exec, Error::NotFound(m)) => Error::NotFound(format!("exec {}: {m}", self.exec_id)),
            (_, e) => e,
        }
    }

    pub(super) fn name(&self) -> String {
        match self.kind() {
            Kind::Init => "the container's init process".into(),
            Kind::Exec => format!("exec process {}", self.exec_id),
        }
    }

    pub(super) fn is_live(&self) -> bool {
        self.status.is_live()
    }

    pub(super) fn exit_fields(&self) -> (u32, SystemTime) {
        self.exited.map(|e| (e.code, e.at)).unwrap_or((0, SystemTime::UNIX_EPOCH))
    }

    /// The process as the debug service shows it.
    pub(super) fn dump(&self) -> debug::Process {
        let (code, at) = self.exit_fields();
        let count = |c: Option<&Arc<AtomicU64>>| c.map_or(0, |c| c.load(Ordering::Relaxed));
        let copied = self.io.as_ref().map(|io| &io.copied);
        let pipes = self.io.as_ref().map(|io| io.pipes).unwrap_or_default();
        debug::Process {
            exec_id: self.exec_id.clone(),
            pid: self.pid,
            status: self.status.name().into(),
            exited: self.exited.is_some(),
            exit_status: code,
            exited_at_unix_nanos: if self.exited.is_some() { unix_nanos(at) } else { 0 },
            stdio: Some(debug::Stdio {
                stdin: self.stdio.stdin.clone(),
                stdout: self.stdio.stdout.clone(),
                stderr: self.stdio.stderr.clone(),
                terminal: self.stdio.terminal,
                stdin_bytes: count(copied.map(|c| &c.stdin)),
                stdout_bytes: count(copied.map(|c| &c.stdout)),
                stderr_bytes: count(copied.map(|c| &c.stderr)),
                stdout_pipe: pipes.stdout,
                stderr_pipe: pipes.stderr,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use tether_protos::ttrpc::Code;

    use super::{Kind::*, Op::*, Status::*, *};

    const STATES: [Status; 4] = [Created, Running, Paused, Stopped];
    const OPS: [Op; 10] = [Start, AddExec, StartExec, Pause, Resume, Kill, Update, Checkpoint, Delete, Exit];

    /// The whole table for one kind: what each op gives in each state, as the Go shim's
    /// state types answer it (`Err(code)` for a refusal).
    fn expected(kind: Kind, op: Op, state: Status) -> std::result::Result<Status, Code> {
        let refused = Err(Code::FAILED_PRECONDITION);
        match (kind, op) {
            (_, Start) => {
                if state == Created {
                    Ok(Running)
                } else {
                    refused
                }
            }
            (Init, AddExec) => {
                if matches!(state, Created | Running) {
                    Ok(state)
                } else {
                    refused
                }
            }
            (Init, StartExec) => {
                if state == Running {
                    Ok(state)
                } else {
                    refused
                }
            }
            (Init, Pause) => {
                if state == Running {
                    Ok(Paused)
                } else {
                    refused
                }
            }
            (Init, Resume) => {
                if state == Paused {
                    Ok(Running)
                } else {
                    refused
                }
            }
            (_, Kill) if state == Stopped => Err(Code::NOT_FOUND),
            (Init, Kill) => Ok(state),
            (Exec, Kill) => {
                if state == Created {
                    refused
                } else {
                    Ok(state)
                }
            }
            (Init, Update) => {
                if state == Stopped {
                    refused
                } else {
                    Ok(state)
                }
            }
            (Init, Checkpoint) => {
                if state.is_live() {
                    Ok(state)
                } else {
                    refused
                }
            }
            (_, Delete) => {
                if matches!(state, Created | Stopped) {
                    Ok(state)
                } else {
                    refused
                }
            }
            (_, Exit) => {
                if state == Stopped {
                    refused
                } else {
                    Ok(Stopped)
                }
            }
            (Exec, AddExec | StartExec | Pause | Resume | Update | Checkpoint) => refused,
        }
    }

    #[test]
    fn every_state_answers_every_operation() {
        for kind in [Init, Exec] {
            for op in OPS {
                for state in STATES {
                    let got = state.on(op, kind).map_err(|e| e.code());
                    assert_eq!(got, expected(kind, op, state), "{kind:?} {op:?} in {state:?}");
                }
            }
        }
    }

    #[test]
    fn a_refusal_names_the_operation_and_the_state() {
        let err = Paused.on(AddExec, Init).unwrap_err();
        assert_eq!(err.to_string(), "cannot exec in a paused container");
        let mut p = Process::new("e1", StdioSpec::default());
        let err = p.apply(Kill).unwrap_err();
        assert_eq!(err.code(), Code::FAILED_PRECONDITION);
        assert!(err.to_string().starts_with("exec e1: "), "{err}");
    }

    #[test]
    fn a_process_moves_only_as_the_table_says() {
        let mut p = Process::new("", StdioSpec::default());
        assert!(p.apply(Pause).is_err());
        assert_eq!(p.status, Created);
        p.apply(Start).unwrap();
        p.apply(Pause).unwrap();
        p.apply(Resume).unwrap();
        p.apply(Exit).unwrap();
        assert_eq!(p.status, Stopped);
        assert_eq!(p.apply(Start).unwrap_err().code(), Code::FAILED_PRECONDITION);
        assert_eq!(p.apply(Kill).unwrap_err().code(), Code::NOT_FOUND);
        p.apply(Delete).unwrap();
    }
}
