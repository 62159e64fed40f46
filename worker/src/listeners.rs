//! The worker's listening sockets: registered with the poll, accepted from in batches,
//! and paused for a second when the process runs out of descriptors.

use crate::init::ListenSocket;
use crate::stream::Sock;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Every listening socket, with whether it may have connections waiting.
pub(crate) struct Listeners {
    list: Vec<(Listener, bool)>,
    /// Set when accepting failed for lack of descriptors: retry after this instant.
    paused_until: Option<Instant>,
}

/// What one accept found.
pub(crate) enum Accepted {
    /// A connection, and its peer (None on a Unix socket).
    Conn(Sock, Option<SocketAddr>),
    /// This listener has nothing more for now.
    Empty,
    /// Out of descriptors: every listener waits a second.
    Paused,
    /// A failure that concerned one connection only; try the next.
    Skipped,
}

impl Listeners {
    /// Registers the sockets the supervisor passed, as tokens `base`, `base + 1`, ...
    pub fn new(sockets: Vec<ListenSocket>, registry: &Registry, base: usize) -> io::Result<Self> {
        let mut list = Vec::new();
        for (i, l) in sockets.into_iter().enumerate() {
            let mut l = match l {
                ListenSocket::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    Listener::Tcp(TcpListener::from_std(l))
                }
                ListenSocket::Unix(l) => {
                    l.set_nonblocking(true)?;
                    Listener::Unix(UnixListener::from_std(l))
                }
            };
            let token = Token(base + i);
            match &mut l {
                Listener::Tcp(l) => registry.register(l, token, Interest::READABLE)?,
                Listener::Unix(l) => registry.register(l, token, Interest::READABLE)?,
            }
            list.push((l, true));
        }
        Ok(Listeners {
            list,
            paused_until: None,
        })
    }

    /// The poll said listener `i` has connections waiting.
    pub fn readable(&mut self, i: usize) {
        if let Some((_, ready)) = self.list.get_mut(i) {
            *ready = true;
        }
    }

    /// Whether some listener has connections to accept now.
    pub fn busy(&self) -> bool {
        self.paused_until.is_none() && self.list.iter().any(|(_, ready)| *ready)
    }

    /// Whether accepting may go on: false during a pause. A pause that is over makes
    /// every listener worth a try again.
    pub fn resume(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(until) if now < until => false,
            Some(_) => {
                self.paused_until = None;
                for l in &mut self.list {
                    l.1 = true;
                }
                true
            }
            None => true,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether listener `i` may have connections waiting.
    pub fn is_ready(&self, i: usize) -> bool {
        self.list.get(i).is_some_and(|(_, ready)| *ready)
    }

    /// Accepts one connection from listener `i`.
    pub fn accept(&mut self, i: usize, now: Instant) -> Accepted {
        let Some((l, ready)) = self.list.get_mut(i) else {
            return Accepted::Empty;
        };
        let accepted = match l {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Sock::Tcp(s), Some(a))),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Sock::Unix(s), None)),
        };
        match accepted {
            Ok((sock, peer)) => Accepted::Conn(sock, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *ready = false;
                Accepted::Empty
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Accepted::Skipped,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                log::warn!("accept failed: {e}; pausing accepts for 1s");
                self.paused_until = Some(now + Duration::from_secs(1));
                Accepted::Paused
            }
            // ECONNABORTED and friends concern one connection only.
            Err(e) => {
                log::debug!("accept: {e}");
                Accepted::Skipped
            }
        }
    }

    /// Stops listening (a shutdown, or an upgrade: the supervisor keeps the sockets).
    pub fn close(&mut self, registry: &Registry) {
        for (mut l, _) in self.list.drain(..) {
            let _ = match &mut l {
                Listener::Tcp(l) => registry.deregister(l),
                Listener::Unix(l) => registry.deregister(l),
            };
        }
    }
}
