//! What the shim and the native helper say to each other, and how it travels.
//!
//! Every message is one datagram on a `SOCK_SEQPACKET` unix socket, so it arrives whole or
//! not at all, and file descriptors ride along as `SCM_RIGHTS`. A request carries, in this
//! order, the socket its reply goes to and the container process's stdin, stdout and stderr.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::CheckpointOpts;

/// The largest request or reply (paths and options; never process output).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The descriptors a request carries: reply socket, stdin, stdout, stderr.
pub const REQUEST_FDS: usize = 4;

/// One operation on one container, carried out by a helper worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// libcontainer's state directory (`<root>/<id>` holds the container's state).
    pub root: PathBuf,
    /// Let systemd manage the container's cgroups.
    pub systemd_cgroup: bool,
    pub op: Op,
}

/// The operations that fork (the container's processes or hooks) and so run in a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    Create { bundle: PathBuf, pid_file: PathBuf, console_socket: Option<PathBuf>, no_pivot_root: bool },
    Exec { process_spec: PathBuf, pid_file: PathBuf, console_socket: Option<PathBuf> },
    Start,
    Delete { force: bool },
    Checkpoint(CheckpointOpts),
}

impl Op {
    /// The operation's name in errors, as the runc CLI would call it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Exec { .. } => "exec",
            Op::Start => "start",
            Op::Delete { .. } => "delete",
            Op::Checkpoint(_) => "checkpoint",
        }
    }
}

/// Why an operation failed, in the classes the shim maps to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The container has no state in the root.
    NotFound,
    /// The container's init has exited: nothing to signal.
    NotRunning,
    /// The container's program cannot be run (missing, not executable).
    BadProcess,
    /// The bundle's spec is invalid.
    BadSpec,
    /// Anything else libcontainer reported.
    Runtime,
}

/// A worker's answer: the pid the operation produced (0 when none), or why it failed.
pub type Reply = Result<i32, (Failure, String)>;

/// Sends `bytes` and `fds` as one datagram.
pub fn send(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match socket::sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

/// Receives one datagram and the descriptors that came with it; `None` when the peer has
/// closed its end.
pub fn recv(sock: RawFd) -> nix::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; REQUEST_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match socket::recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other?,
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let len = msg.bytes;
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(len);
        return Ok(Some((buf, fds)));
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets, close-on-exec.
pub fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(socket::AddressFamily::Unix, socket::SockType::SeqPacket, None, socket::SockFlag::SOCK_CLOEXEC)
}

/// Sends a worker's reply.
pub fn send_reply(sock: &OwnedFd, reply: &Reply) -> nix::Result<()> {
    let bytes = serde_json::to_vec(reply).expect("replies serialise");
    send(sock.as_raw_fd(), &bytes, &[])
}
