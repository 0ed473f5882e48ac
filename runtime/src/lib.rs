//! The executor seam of tether.
//!
//! The shim never runs an OCI runtime itself: every operation on a container goes through an
//! [`Executor`]. Two implementations exist: [`runc::RuncExecutor`] forks a runc-compatible binary
//! (runc, crun, youki) per operation, and the native executor (a later cargo feature) runs youki's
//! libcontainer in-process.
//!
//! The shim is a child subreaper that reaps every exit with `waitpid(-1)`, so an executor must
//! never wait for its own children: it asks the shim's [`ChildWaiter`] instead.

pub mod error;
pub mod executor;
pub mod runc;
pub mod waiter;

pub use error::{Error, Result};
pub use executor::{CheckpointOpts, ContainerState, CreateOpts, CriuOpts, ExecOpts, Executor, RestoreOpts, Stdio};
pub use waiter::{ChildWaiter, DirectWaiter};
