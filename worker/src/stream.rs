//! A socket with its buffers and cached readiness: the only code that reads or writes sockets.
//!
//! Sockets are registered once, edge-triggered, for both directions. `readable` and
//! `writable` remember the last event until a call sees WouldBlock, so no interest is ever
//! re-registered and no read is attempted on a socket known to be empty.

use crate::buf::{BufPool, InBuf, OutBuf};
use std::io::{self, Read, Write};
use std::net::Shutdown;

pub enum Sock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Sock {
    pub fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Unix(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Sock::Tcp(s) => s.take_error(),
            Sock::Unix(s) => s.take_error(),
        }
    }

    /// Whether a non-blocking connect has finished.
    pub fn is_connected(&self) -> bool {
        match self {
            Sock::Tcp(s) => s.peer_addr().is_ok(),
            Sock::Unix(s) => s.peer_addr().is_ok(),
        }
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

/// Applies the tcp_* settings to a client or server socket: keepalive with its idle
/// time, interval and probe count, and TCP_USER_TIMEOUT. A value of 0 keeps the OS
/// default. Failures are ignored: a socket without them still works, as in PgBouncer.
pub fn tune_tcp(s: &mio::net::TcpStream, cfg: &crate::config::Config) {
    let sock = socket2::SockRef::from(s);
    if cfg.tcp_keepalive {
        let mut ka = socket2::TcpKeepalive::new();
        if !cfg.tcp_keepidle.is_zero() {
            ka = ka.with_time(cfg.tcp_keepidle);
        }
        if !cfg.tcp_keepintvl.is_zero() {
            ka = ka.with_interval(cfg.tcp_keepintvl);
        }
        if cfg.tcp_keepcnt != 0 {
            ka = ka.with_retries(cfg.tcp_keepcnt);
        }
        let _ = sock.set_tcp_keepalive(&ka);
    }
    if !cfg.tcp_user_timeout.is_zero() {
        let _ = sock.set_tcp_user_timeout(Some(cfg.tcp_user_timeout));
    }
}

/// What one read attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// Bytes were added to the buffer.
    Bytes(usize),
    /// Nothing to read now (or no room); try again after an event or after draining.
    Nothing,
    /// The peer closed its side.
    Eof,
}

pub struct Stream {
    pub sock: Sock,
    pub rbuf: InBuf,
    pub wbuf: OutBuf,
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN was reported. It may have come with the last bytes, and edge
    /// triggering will not report it again, so reads continue until they see it.
    pub read_closed: bool,
}

impl Stream {
    pub fn new(sock: Sock) -> Stream {
        Stream {
            sock,
            rbuf: InBuf::new(),
            wbuf: OutBuf::new(),
            readable: true,
            writable: true,
            read_closed: false,
        }
    }

    /// Reads once into the input buffer if the socket may have data and there is room.
    pub fn fill(&mut self, pool: &mut BufPool) -> io::Result<Filled> {
        if !self.readable || !self.rbuf.can_read() {
            return Ok(Filled::Nothing);
        }
        loop {
            let spare = self.rbuf.spare(pool);
            let room = spare.len();
            match self.sock.read(spare) {
                Ok(0) => {
                    self.readable = false;
                    return Ok(Filled::Eof);
                }
                Ok(n) => {
                    self.rbuf.commit(n);
                    // A short read drained the socket; epoll reports the next arrival.
                    if n < room && !self.read_closed {
                        self.readable = false;
                    }
                    return Ok(Filled::Bytes(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    self.rbuf.release(pool);
                    return Ok(Filled::Nothing);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a read could still add bytes: the socket has not been seen empty and the
    /// buffer has room. Edge triggering reports nothing more until a read sees WouldBlock,
    /// so a caller that stops while this holds (say, after a read that filled the buffer
    /// exactly, then `make_room`) must read again or nobody ever will.
    pub fn may_read(&self) -> bool {
        self.readable && self.rbuf.can_read()
    }

    /// Writes as much of `bytes` as the socket takes; 0 when it would block.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<usize> {
        send_on(&mut self.sock, &mut self.writable, bytes)
    }

    /// Writes the pooler's own pending output; true once all of it is out.
    pub fn flush_own(&mut self, pool: &mut BufPool) -> io::Result<bool> {
        if self.wbuf.is_empty() {
            return Ok(true);
        }
        let pending = self.wbuf.pending();
        let want = pending.len();
        let n = {
            let Stream { sock, writable, .. } = self;
            send_on(sock, writable, pending)?
        };
        self.wbuf.advance(n);
        if n == want {
            self.wbuf.release(pool);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Frees both buffers' storage when they hold nothing.
    pub fn release_buffers(&mut self, pool: &mut BufPool) {
        self.rbuf.release(pool);
        self.wbuf.release(pool);
    }

    pub fn drop_buffers(&mut self, pool: &mut BufPool) {
        self.rbuf.clear(pool);
        self.wbuf.clear(pool);
    }
}

fn send_on(sock: &mut Sock, writable: &mut bool, bytes: &[u8]) -> io::Result<usize> {
    if !*writable {
        return Ok(0);
    }
    let mut done = 0;
    while done < bytes.len() {
        match sock.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *writable = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes `src`'s first `n` buffered bytes to `dst`, consuming what was written.
pub fn forward(src: &mut Stream, dst: &mut Stream, n: usize) -> io::Result<usize> {
    let bytes = &src.rbuf.bytes()[..n];
    let done = send_on(&mut dst.sock, &mut dst.writable, bytes)?;
    src.rbuf.consume(done);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tcp_settings_reach_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let s = mio::net::TcpStream::from_std(s);
        let cfg = crate::config::Config::from_yaml_str(
            "tcp_keepidle: 77\ntcp_keepintvl: 11\ntcp_keepcnt: 5\ntcp_user_timeout: 2.5",
        )
        .unwrap();
        tune_tcp(&s, &cfg);
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(77));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(11)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 5);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
        // tcp_keepalive off: no keepalive at all.
        let s2 = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let s2 = mio::net::TcpStream::from_std(s2);
        let off = crate::config::Config::from_yaml_str("tcp_keepalive: false").unwrap();
        tune_tcp(&s2, &off);
        assert!(!socket2::SockRef::from(&s2).keepalive().unwrap());
    }
}
