//! Errors an executor reports to the shim.

use std::{io, path::PathBuf};

/// Why an executor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime does not know the container (never created, or already deleted).
    #[error("container {0} does not exist in the runtime")]
    NotFound(String),
    /// The container exists but has no process left to act on (its init has exited).
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The runtime binary could not be started at all.
    #[error("cannot run OCI runtime {binary:?}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A helper program the operation needs is not installed (e.g. criu for checkpoints).
    #[error("{tool} is not installed or not executable ({path:?}); it is needed to {purpose}")]
    MissingTool { tool: &'static str, path: PathBuf, purpose: &'static str },
    /// The container's process cannot be started: its executable is missing or not
    /// executable (a fault of the request, not of the runtime).
    #[error("{binary} {op} failed: {message}")]
    BadProcess { binary: String, op: &'static str, message: String },
    /// The container's spec cannot be run as it is (a bad mount, an invalid setting): a
    /// fault of the request, not of the runtime.
    #[error("{binary} {op} failed: {message}")]
    BadSpec { binary: String, op: &'static str, message: String },
    /// The executor cannot do this at all.
    #[error("the {executor} executor cannot {op} containers")]
    Unsupported { executor: &'static str, op: &'static str },
    /// The runtime ran and reported a failure; `message` is its own words (from its log).
    #[error("{binary} {op} failed: {message}")]
    Runtime { binary: String, op: &'static str, message: String },
    /// The runtime's output could not be understood.
    #[error("cannot parse {binary} {op} output: {message}")]
    Output { binary: String, op: &'static str, message: String },
    /// A file the executor needs (pid file, process spec, log) could not be used.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// Result of an executor operation.
pub type Result<T> = std::result::Result<T, Error>;
