//! The worker's end of the supervisor's control channel: reports queued until the socket
//! takes them, and commands read one at a time.

use crate::control::{self, Command, Report};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The channel, and the reports it could not take yet.
pub(crate) struct Channel {
    fd: Option<OwnedFd>,
    out: VecDeque<Vec<u8>>,
}

/// What one read from the channel found.
pub(crate) enum Received {
    Command(Command, Option<OwnedFd>),
    /// Nothing more to read now.
    Empty,
    /// A message that does not decode; the channel goes on.
    Bad(&'static str),
    /// The supervisor is gone: the channel is closed, and its descriptor is handed over
    /// to be deregistered.
    Closed(OwnedFd, io::Error),
}

impl Channel {
    pub fn new(fd: Option<OwnedFd>) -> Channel {
        Channel {
            fd,
            out: VecDeque::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// The socket, for a message that carries a descriptor.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Queues a report and sends what the socket takes now. Reading is left to the
    /// loop, so a report made while handling a command never runs another command.
    pub fn report(&mut self, r: &Report, slot: usize) {
        let mut msg = Vec::with_capacity(16);
        r.encode(&mut msg);
        self.out.push_back(msg);
        self.flush(slot);
    }

    /// Sends queued reports until the socket is full.
    pub fn flush(&mut self, slot: usize) {
        let Some(fd) = self.raw_fd() else { return };
        while let Some(msg) = self.out.front() {
            match control::send(fd, msg, None) {
                Ok(()) => {
                    self.out.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("worker {slot}: control channel: {e}");
                    self.out.clear();
                    break;
                }
            }
        }
    }

    /// Reads the next command, if one is there.
    pub fn recv(&mut self, buf: &mut [u8; control::MAX_MESSAGE]) -> Received {
        let Some(fd) = self.raw_fd() else {
            return Received::Empty;
        };
        match control::recv(fd, buf) {
            Ok(Some((n, passed))) => match Command::decode(&buf[..n]) {
                Ok(cmd) => Received::Command(cmd, passed),
                Err(e) => Received::Bad(e.0),
            },
            Ok(None) => Received::Empty,
            Err(e) => match self.fd.take() {
                Some(owned) => Received::Closed(owned, e),
                None => Received::Empty,
            },
        }
    }
}
