//! The supervisor's end of a worker's control channel: what the socket cannot take now
//! waits in order and goes out when it becomes writable, so no message is ever dropped.

use pgbouncers_worker::control;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Most bytes queued for one worker. Only a worker that stopped reading (SIGSTOP, a hang)
/// gets near it; past it a message is refused rather than growing without bound.
pub(crate) const MAX_QUEUED_BYTES: usize = 64 << 20;

pub(crate) struct Channel {
    fd: OwnedFd,
    /// Messages the socket could not take yet, oldest first, each with the descriptor it
    /// carries (a reload's memfd, duplicated so the caller may close its own).
    queue: VecDeque<(Vec<u8>, Option<OwnedFd>)>,
    queued_bytes: usize,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends `msg` now if nothing is queued ahead of it and the socket has room; queues it
    /// otherwise. Errors: the peer is gone, or the queue is full.
    pub fn send(&mut self, msg: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        if self.queue.is_empty() {
            match control::send(self.raw(), msg, fd) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if self.queued_bytes + msg.len() > MAX_QUEUED_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("{} bytes already wait for this worker", self.queued_bytes),
            ));
        }
        let fd = match fd {
            // SAFETY: the caller's descriptor stays open for the duration of this call.
            Some(f) => {
                Some(unsafe { std::os::fd::BorrowedFd::borrow_raw(f) }.try_clone_to_owned()?)
            }
            None => None,
        };
        self.queued_bytes += msg.len();
        self.queue.push_back((msg.to_vec(), fd));
        Ok(())
    }

    /// Sends what is queued, as far as the socket allows (called when it is writable).
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some((msg, fd)) = self.queue.front() {
            let fd = fd.as_ref().map(|f| f.as_fd().as_raw_fd());
            match control::send(self.raw(), msg, fd) {
                Ok(()) => {
                    self.queued_bytes -= msg.len();
                    self.queue.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether everything sent has gone out.
    pub fn is_flushed(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages waiting for room.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbouncers_worker::control::{Command, Snapshot};

    #[test]
    fn a_full_channel_queues_in_order_and_drops_nothing() {
        let (ours, theirs) = control::pair().unwrap();
        let mut ch = Channel::new(ours);
        let chunk = vec![7u8; control::ROW_CHUNK];
        let mut sent = 0u32;
        // Far more than the socket buffer holds.
        while sent < 64 {
            let mut msg = Vec::new();
            Command::Rows {
                req: sent,
                slot: 1,
                chunk: chunk.clone(),
            }
            .encode(&mut msg);
            ch.send(&msg, None).unwrap();
            sent += 1;
        }
        assert!(ch.queued() > 0, "the socket took everything: not a test");
        // A reload's descriptor waits its turn too, and survives the caller closing its own.
        let snap = Snapshot {
            config_yaml: "listen_port: 1\n".into(),
            ..Default::default()
        };
        let memfd = control::snapshot_to_memfd(&snap).unwrap();
        let mut msg = Vec::new();
        Command::Reload.encode(&mut msg);
        ch.send(&msg, Some(memfd.as_raw_fd())).unwrap();
        drop(memfd);

        let mut buf = vec![0u8; control::MAX_MESSAGE];
        let mut next = 0u32;
        let mut reloaded = false;
        while !reloaded {
            ch.flush().unwrap();
            while let Some((n, fd)) = control::recv(theirs.as_raw_fd(), &mut buf).unwrap() {
                match Command::decode(&buf[..n]).unwrap() {
                    Command::Rows { req, chunk: c, .. } => {
                        assert_eq!(req, next, "out of order");
                        assert_eq!(c.len(), control::ROW_CHUNK);
                        next += 1;
                    }
                    Command::Reload => {
                        assert_eq!(next, sent, "the reload overtook rows");
                        assert_eq!(control::snapshot_from_fd(fd.unwrap()).unwrap(), snap);
                        reloaded = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(ch.queued(), 0);
        assert_eq!(ch.queued_bytes, 0);
    }

    #[test]
    fn a_worker_that_never_reads_hits_the_cap() {
        let (ours, _theirs) = control::pair().unwrap();
        let mut ch = Channel::new(ours);
        let msg = vec![0u8; control::ROW_CHUNK];
        let mut refused = None;
        for _ in 0..(MAX_QUEUED_BYTES / msg.len() + 64) {
            if let Err(e) = ch.send(&msg, None) {
                refused = Some(e);
                break;
            }
        }
        let e = refused.expect("the queue grew past its cap");
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        assert!(ch.queued_bytes <= MAX_QUEUED_BYTES);
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let (ours, theirs) = control::pair().unwrap();
        let mut ch = Channel::new(ours);
        drop(theirs);
        assert!(ch.send(b"\x04", None).is_err());
    }
}
