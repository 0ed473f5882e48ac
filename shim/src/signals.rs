//! Signals as readiness on the shim's loop: the handler only writes a byte to a pipe
//! (signal-hook's self-pipe), and a task awaits the pipe's read end.
//!
//! Not tokio's signal driver: that keeps a channel for every signal number the kernel has,
//! about 24 KiB of heap in every shim for the three signals it handles. Not a signalfd either:
//! it needs the signal blocked in every thread, which the shim's tests (threads of their own)
//! cannot promise.

use std::{io, os::fd::OwnedFd};

use nix::{fcntl::OFlag, unistd::pipe2};
use tokio::io::unix::AsyncFd;

use crate::rt;

/// One signal, caught for the rest of the process's life.
pub struct Signal {
    pipe: AsyncFd<OwnedFd>,
}

impl Signal {
    /// Catches `signal` from now on. Every arrival after this call ends a [`Signal::recv`]:
    /// the one under way or the next one. Arrivals while no `recv` runs are merged into one,
    /// as the kernel merges a pending signal.
    pub fn catch(signal: libc::c_int) -> io::Result<Signal> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        signal_hook::low_level::pipe::register(signal, write)?;
        Ok(Signal { pipe: rt::watch(read)? })
    }

    /// Waits for the next arrival (see [`Signal::catch`]).
    pub async fn recv(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.pipe.readable().await?;
            let mut bytes = [0u8; 64];
            let mut arrived = false;
            // Drain the pipe: every byte in it is an arrival this call answers.
            loop {
                match nix::unistd::read(ready.get_inner(), &mut bytes) {
                    Ok(n) if n > 0 => arrived = true,
                    Err(nix::errno::Errno::EINTR) => {}
                    Ok(_) | Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            ready.clear_ready();
            if arrived {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_arrival_ends_recv_and_arrivals_before_it_merge() {
        rt::handle().block_on(async {
            let mut usr2 = Signal::catch(libc::SIGUSR2).unwrap();
            // SAFETY: raising a signal that is now caught.
            unsafe { libc::raise(libc::SIGUSR2) };
            unsafe { libc::raise(libc::SIGUSR2) };
            tokio::time::timeout(Duration::from_secs(5), usr2.recv()).await.expect("the arrival").unwrap();
            let pending = tokio::time::timeout(Duration::from_millis(100), usr2.recv()).await;
            assert!(pending.is_err(), "two arrivals before one recv are one");
            unsafe { libc::raise(libc::SIGUSR2) };
            tokio::time::timeout(Duration::from_secs(5), usr2.recv()).await.expect("a later arrival").unwrap();
        });
    }
}
