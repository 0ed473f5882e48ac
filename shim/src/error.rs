//! tether's error type and its one mapping to ttrpc status codes.

use tether_protos::ttrpc::{self, Code};

/// Why a task API call failed. Every variant maps to one ttrpc code in [`From<Error>`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named container or exec process is not known to this shim.
    #[error("{0}: not found")]
    NotFound(String),
    /// A container or exec with this id exists already.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The process is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A bounded wait ran out (what was waited for is named).
    #[error("{0}")]
    Timeout(String),
    /// The shim does not implement this call.
    #[error("{0} is not implemented by tether")]
    Unimplemented(&'static str),
    /// The configuration named by the runtime options is wrong.
    #[error("tether config {path}: {message}")]
    Config { path: String, message: String },
    /// CRIU failed to checkpoint or restore; its log was kept at `log`.
    #[error("{message} (criu log: {})", log.display())]
    Criu { message: String, log: std::path::PathBuf },
    /// The executor (OCI runtime) failed.
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    /// A local resource (fifo, mount, file) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// Encoding `what` (a reply or message of the shim's own) failed.
    pub fn encoding(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::io(format!("encoding {what}"), std::io::Error::other(source))
    }

    /// The ttrpc status code containerd should see for this error.
    pub fn code(&self) -> Code {
        match self {
            // containerd takes NotFound from Kill as "the process has already finished".
            Error::NotFound(_)
            | Error::Runtime(tether_runtime::Error::NotFound(_) | tether_runtime::Error::NotRunning(_)) => {
                Code::NOT_FOUND
            }
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::Timeout(_) => Code::DEADLINE_EXCEEDED,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_)
            | Error::Config { .. }
            | Error::Runtime(tether_runtime::Error::BadProcess { .. } | tether_runtime::Error::BadSpec { .. }) => {
                Code::INVALID_ARGUMENT
            }
            Error::Unimplemented(_) | Error::Runtime(tether_runtime::Error::Unsupported { .. }) => Code::UNIMPLEMENTED,
            Error::Runtime(tether_runtime::Error::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Code::FAILED_PRECONDITION
            }
            Error::Runtime(tether_runtime::Error::MissingTool { .. }) => Code::FAILED_PRECONDITION,
            Error::Runtime(_) | Error::Io { .. } | Error::Criu { .. } => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result of a shim operation.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: Error) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_follow_containerd_errdefs() {
        assert_eq!(code_of(Error::NotFound("c1".into())), Code::NOT_FOUND);
        assert_eq!(code_of(Error::AlreadyExists("c1".into())), Code::ALREADY_EXISTS);
        assert_eq!(code_of(Error::FailedPrecondition("x".into())), Code::FAILED_PRECONDITION);
        assert_eq!(code_of(Error::Unimplemented("Stats")), Code::UNIMPLEMENTED);
        assert_eq!(code_of(Error::Timeout("c1 did not exit".into())), Code::DEADLINE_EXCEEDED);
        assert_eq!(code_of(Error::Runtime(tether_runtime::Error::NotFound("c".into()))), Code::NOT_FOUND);
        assert_eq!(code_of(Error::Runtime(tether_runtime::Error::NotRunning("c".into()))), Code::NOT_FOUND);
    }
}
