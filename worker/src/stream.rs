//! A socket with its TLS session, buffers and cached readiness: the only code that reads or writes sockets.
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
    /// Tests only: an in-memory pipe, so the pump's own code runs with no socket.
    #[cfg(test)]
    Memory(memory::End),
}

impl Sock {
    /// The descriptor, for passing the socket to another process (online upgrade).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
            #[cfg(test)]
            Sock::Memory(_) => -1,
        }
    }

    pub fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Unix(s) => s,
            #[cfg(test)]
            Sock::Memory(_) => unreachable!("an in-memory pipe is never registered"),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
            #[cfg(test)]
            Sock::Memory(m) => m.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
            #[cfg(test)]
            Sock::Memory(m) => m.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write_vectored(bufs),
            Sock::Unix(s) => s.write_vectored(bufs),
            #[cfg(test)]
            Sock::Memory(m) => m.write_vectored(bufs),
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Sock::Tcp(s) => s.take_error(),
            Sock::Unix(s) => s.take_error(),
            #[cfg(test)]
            Sock::Memory(_) => Ok(None),
        }
    }

    /// Whether a non-blocking connect has finished.
    pub fn is_connected(&self) -> bool {
        match self {
            Sock::Tcp(s) => s.peer_addr().is_ok(),
            Sock::Unix(s) => s.peer_addr().is_ok(),
            #[cfg(test)]
            Sock::Memory(_) => true,
        }
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
            #[cfg(test)]
            Sock::Memory(m) => {
                m.shutdown();
                Ok(())
            }
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

/// One socket, its optional TLS session, its buffers and its cached readiness.
///
/// The buffers hold plaintext: with TLS, bytes pass through rustls's sans-IO session on
/// their way between the socket and the buffers, so the code above sees the same stream
/// either way.
pub struct Stream {
    sock: Sock,
    tls: Option<Box<rustls::Connection>>,
    /// The session's tls-server-end-point data, for SCRAM-SHA-256-PLUS.
    tls_binding: Option<std::sync::Arc<[u8]>>,
    /// Direct TLS: PostgreSQL's ALPN must have been agreed.
    alpn_required: bool,
    /// Plaintext rustls decrypted that did not fit in the buffer yet. No event announces
    /// it, so it counts as something left to read.
    tls_pending: bool,
    rbuf: InBuf,
    wbuf: OutBuf,
    readable: bool,
    writable: bool,
    /// The peer's FIN was reported. It may have come with the last bytes, and edge
    /// triggering will not report it again, so reads continue until they see it.
    read_closed: bool,
}

impl Stream {
    /// The socket, for deregistering it before it is handed to another process.
    pub fn sock_mut(&mut self) -> &mut Sock {
        &mut self.sock
    }

    pub fn sock(&self) -> &Sock {
        &self.sock
    }

    /// A socket just accepted: writable, and readable once epoll says so.
    pub fn accepted(sock: Sock) -> Stream {
        Stream::with_readiness(sock, false, true)
    }

    /// A socket whose non-blocking connect is under way: nothing until epoll reports.
    pub fn connecting(sock: Sock) -> Stream {
        Stream::with_readiness(sock, false, false)
    }

    fn with_readiness(sock: Sock, readable: bool, writable: bool) -> Stream {
        Stream {
            sock,
            tls: None,
            tls_binding: None,
            alpn_required: false,
            tls_pending: false,
            rbuf: InBuf::new(),
            wbuf: OutBuf::new(),
            readable,
            writable,
            read_closed: false,
        }
    }

    /// Records what an edge-triggered event reported. Output rustls still holds from an
    /// earlier write goes out now: the code driving the connection may have nothing to say.
    #[inline]
    pub fn on_event(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.readable |= readable;
        self.writable |= writable;
        self.read_closed |= read_closed;
        if writable && self.tls.is_some() {
            // An error here shows again on the next read or write.
            let _ = self.flush_tls();
        }
    }

    /// The bytes read and not yet consumed.
    #[inline]
    pub fn unread(&self) -> &[u8] {
        self.rbuf.bytes()
    }

    /// Drops the first `n` unread bytes (handled or forwarded).
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.rbuf.consume(n);
    }

    /// Makes the read buffer able to hold a message of `total` bytes whole.
    pub fn make_room(&mut self, total: usize, pool: &mut BufPool) {
        self.rbuf.make_room(total, pool);
    }

    /// The pooler's own output (answers, queries it makes), written before anything
    /// forwarded; takes a buffer from the pool when it has none.
    #[inline]
    pub fn out(&mut self, pool: &mut BufPool) -> &mut Vec<u8> {
        self.wbuf.vec(pool)
    }

    /// The pooler's own output not yet written.
    pub fn pending(&self) -> &[u8] {
        self.wbuf.pending()
    }

    pub fn nothing_to_send(&self) -> bool {
        self.wbuf.is_empty()
    }

    /// Whether the stream holds a buffer from the pool (SHOW MEM, SHOW SOCKETS).
    pub fn has_read_buffer(&self) -> bool {
        self.rbuf.has_storage()
    }

    pub fn has_write_buffer(&self) -> bool {
        self.wbuf.has_storage()
    }

    /// The read buffer, for code that rewrites a message in place while the other end's
    /// output buffer is borrowed too (`prepared::rewrite_named`).
    pub fn input_mut(&mut self) -> &mut InBuf {
        &mut self.rbuf
    }

    /// The output buffer, likewise.
    pub fn output_mut(&mut self) -> &mut OutBuf {
        &mut self.wbuf
    }

    pub fn is_readable(&self) -> bool {
        self.readable
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn is_unix(&self) -> bool {
        matches!(self.sock, Sock::Unix(_))
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.take_error()
    }

    /// Whether a non-blocking connect has finished.
    pub fn is_connected(&self) -> bool {
        self.sock.is_connected()
    }

    /// The local address of a TCP socket.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.sock {
            Sock::Tcp(s) => s.local_addr().ok(),
            _ => None,
        }
    }

    /// The connected process's uid, for hba `peer` over a Unix socket.
    pub fn peer_uid(&self) -> Option<u32> {
        match &self.sock {
            Sock::Unix(s) => {
                use std::os::fd::AsFd;
                nix::sys::socket::getsockopt(&s.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
                    .ok()
                    .map(|c| c.uid())
            }
            _ => None,
        }
    }

    /// Sends close_notify when TLS is on, then shuts the socket down both ways.
    pub fn shutdown(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = self.flush_tls();
        }
        self.sock.shutdown();
    }

    /// Starts TLS as the server side, after `S` answered an SSLRequest (or on a ClientHello
    /// for direct TLS). Only what arrives from now on belongs to the session, so bytes a
    /// client sent after its SSLRequest without waiting for `S` are refused by the caller.
    pub fn start_tls_accept(&mut self, accept: &crate::tls::Accept) -> io::Result<()> {
        let conn =
            rustls::ServerConnection::new(accept.config.clone()).map_err(io::Error::other)?;
        self.tls = Some(Box::new(conn.into()));
        self.tls_binding = accept.endpoint.clone();
        Ok(())
    }

    /// Direct TLS (PostgreSQL 17's `sslnegotiation=direct`): the ClientHello came first
    /// and sits in the input buffer. It goes to rustls, and the session must agree on
    /// PostgreSQL's ALPN, which [`Stream::tls_alpn_missing`] checks once it is up.
    pub fn start_tls_direct(&mut self, accept: &crate::tls::Accept) -> io::Result<()> {
        let mut conn =
            rustls::ServerConnection::new(accept.config.clone()).map_err(io::Error::other)?;
        while !self.rbuf.is_empty() {
            let n = conn.read_tls(&mut self.rbuf.bytes())?;
            self.rbuf.consume(n);
            conn.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        self.tls = Some(Box::new(conn.into()));
        self.tls_binding = accept.endpoint.clone();
        self.alpn_required = true;
        self.flush_tls()?;
        Ok(())
    }

    /// A direct TLS session that did not agree on ALPN `postgresql`: PostgreSQL refuses
    /// it, so that a TLS connection meant for another protocol is never taken as ours.
    pub fn tls_alpn_missing(&self) -> bool {
        self.alpn_required
            && self
                .tls
                .as_ref()
                .is_some_and(|t| t.alpn_protocol() != Some(crate::tls::ALPN))
    }

    /// The client's certificate (leaf, DER), which rustls verified against the CA when
    /// client_tls_sslmode asked for one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let certs = self.tls.as_ref()?.peer_certificates()?;
        certs.first().map(|c| c.as_ref())
    }

    /// The tls-server-end-point data of this session, when SCRAM-SHA-256-PLUS can bind to it.
    pub fn tls_binding(&self) -> Option<&[u8]> {
        self.tls_binding.as_deref()
    }

    /// Starts TLS as the client side, after PostgreSQL answered `S`.
    pub fn start_tls_connect(
        &mut self,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        self.tls = Some(Box::new(conn.into()));
        // The ClientHello goes out now.
        self.flush_tls()?;
        Ok(())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the TLS handshake is still running.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// `TLSv1.3/TLS_AES_256_GCM_SHA384`, or empty without TLS (the `tls` column).
    pub fn tls_description(&self) -> String {
        match &self.tls {
            Some(t) => crate::tls::describe(t),
            None => String::new(),
        }
    }

    /// Reads once into the input buffer if the socket may have data and there is room.
    // The plaintext paths of fill, send and flush_own stay small enough to inline into
    // the pump; the TLS paths live out of line (callgrind: inlining lost here cost ~500
    // instructions per transaction).
    #[inline(always)]
    pub fn fill(&mut self, pool: &mut BufPool) -> io::Result<Filled> {
        // Two of three calls find a socket known to be empty: answer those inline.
        if self.tls.is_none() && (!self.readable || !self.rbuf.can_read()) {
            return Ok(Filled::Nothing);
        }
        self.fill_slow(pool)
    }

    #[inline(never)]
    fn fill_slow(&mut self, pool: &mut BufPool) -> io::Result<Filled> {
        if self.tls.is_some() {
            return self.fill_tls(pool);
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

    /// [`Stream::fill`] through TLS: plaintext rustls already holds first, then records
    /// from the socket until some plaintext comes out or the socket is empty.
    #[inline(never)]
    fn fill_tls(&mut self, pool: &mut BufPool) -> io::Result<Filled> {
        loop {
            if !self.rbuf.can_read() {
                return Ok(Filled::Nothing);
            }
            let Some(tls) = self.tls.as_mut() else {
                return Ok(Filled::Nothing);
            };
            let spare = self.rbuf.spare(pool);
            let room = spare.len();
            match tls.reader().read(spare) {
                // close_notify: a clean end.
                Ok(0) => {
                    self.readable = false;
                    self.tls_pending = false;
                    return Ok(Filled::Eof);
                }
                Ok(n) => {
                    self.rbuf.commit(n);
                    self.tls_pending = n == room;
                    return Ok(Filled::Bytes(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tls_pending = false,
                // The socket ended without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.readable = false;
                    return Ok(Filled::Eof);
                }
                Err(e) => return Err(e),
            }
            if !self.readable {
                self.rbuf.release(pool);
                return Ok(Filled::Nothing);
            }
            let mut rd = SockIo {
                sock: &mut self.sock,
                short: false,
            };
            match tls.read_tls(&mut rd) {
                Ok(0) => {
                    self.readable = false;
                    self.rbuf.release(pool);
                    return Ok(Filled::Eof);
                }
                Ok(_) => {
                    if rd.short && !self.read_closed {
                        self.readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    self.rbuf.release(pool);
                    return Ok(Filled::Nothing);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // rustls queued an alert saying why; send it before giving up.
                let _ = self.flush_tls();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages, a key update or an alert may be waiting to go out.
            self.flush_tls()?;
        }
    }

    /// Whether a read could still add bytes: the socket has not been seen empty (or rustls
    /// holds plaintext) and the buffer has room. Edge triggering reports nothing more until
    /// a read sees WouldBlock, so a caller that stops while this holds (say, after a read
    /// that filled the buffer exactly, then `make_room`) must read again or nobody ever will.
    pub fn may_read(&self) -> bool {
        (self.readable || self.tls_pending) && self.rbuf.can_read()
    }

    /// Writes as much of `bytes` as the socket takes; 0 when it would block. With TLS,
    /// what rustls accepted counts as written, and its buffer limit is the back-pressure.
    #[inline]
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => send_on(&mut self.sock, &mut self.writable, bytes),
            Some(tls) => send_tls(tls, &mut self.sock, &mut self.writable, bytes),
        }
    }

    /// Writes the records rustls holds; true once none is left.
    #[inline]
    fn flush_tls(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            None => Ok(true),
            Some(tls) => flush_tls(tls, &mut self.sock, &mut self.writable),
        }
    }

    /// Writes the pooler's own pending output; true once all of it is out.
    #[inline(always)]
    pub fn flush_own(&mut self, pool: &mut BufPool) -> io::Result<bool> {
        // The pump calls this for both sides on every turn, nearly always with nothing to
        // send: that answer must cost a compare, not a call with a large frame.
        if self.wbuf.is_empty() && self.tls.is_none() {
            return Ok(true);
        }
        self.flush_own_slow(pool)
    }

    #[inline(never)]
    fn flush_own_slow(&mut self, pool: &mut BufPool) -> io::Result<bool> {
        if self.wbuf.is_empty() {
            return self.flush_tls();
        }
        let pending = self.wbuf.pending();
        let want = pending.len();
        let n = match &mut self.tls {
            None => send_on(&mut self.sock, &mut self.writable, pending)?,
            Some(tls) => send_tls(tls, &mut self.sock, &mut self.writable, pending)?,
        };
        self.wbuf.advance(n);
        if n < want {
            return Ok(false);
        }
        self.wbuf.release(pool);
        // With TLS, the last records may still wait for the socket.
        self.flush_tls()
    }

    /// Frees both buffers' storage when they hold nothing.
    #[inline]
    pub fn release_buffers(&mut self, pool: &mut BufPool) {
        self.rbuf.release(pool);
        self.wbuf.release(pool);
    }

    pub fn drop_buffers(&mut self, pool: &mut BufPool) {
        self.rbuf.clear(pool);
        self.wbuf.clear(pool);
    }

    /// Reads and discards whatever arrived; true once the peer has closed (or failed).
    /// For connections whose answer is only their closing, such as a cancel request's.
    pub fn discard_until_eof(&mut self) -> bool {
        let mut scratch = [0u8; 64];
        loop {
            match self.sock.read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// The socket as rustls's `read_tls`/`write_tls` see it, noting a short read: like a
/// short plain read, it means the socket is drained.
struct SockIo<'a> {
    sock: &'a mut Sock,
    short: bool,
}

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.sock {
            Sock::Tcp(s) => s.write_vectored(bufs),
            Sock::Unix(s) => s.write_vectored(bufs),
            #[cfg(test)]
            Sock::Memory(m) => m.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands `bytes` to rustls as long as its records reach the socket.
#[inline(never)]
fn send_tls(
    tls: &mut rustls::Connection,
    sock: &mut Sock,
    writable: &mut bool,
    bytes: &[u8],
) -> io::Result<usize> {
    let mut done = 0;
    // Records still waiting for the socket go first, so the limit rustls keeps on its
    // buffer is reached only when the socket is full.
    while flush_tls(tls, sock, writable)? && done < bytes.len() {
        match tls.writer().write(&bytes[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

#[inline(never)]
fn flush_tls(
    tls: &mut rustls::Connection,
    sock: &mut Sock,
    writable: &mut bool,
) -> io::Result<bool> {
    while tls.wants_write() {
        if !*writable {
            return Ok(false);
        }
        match tls.write_tls(&mut SockIo { sock, short: false }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *writable = false;
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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
#[inline]
pub fn forward(src: &mut Stream, dst: &mut Stream, n: usize) -> io::Result<usize> {
    let done = dst.send(&src.rbuf.bytes()[..n])?;
    src.rbuf.consume(done);
    Ok(done)
}

/// Writes `dst`'s own pending output, then `src`'s first `n` buffered bytes once none of
/// it is left; returns how many of `src`'s bytes went. On a plain socket with both to send
/// it is one writev: a rewritten message head (a Bind under the pooler's statement name,
/// parameter-sync SETs) and the client's bytes after it reach the peer as one segment, so
/// PostgreSQL wakes once for them, not twice.
#[inline(always)]
pub fn flush_then_forward(
    src: &mut Stream,
    dst: &mut Stream,
    n: usize,
    pool: &mut BufPool,
) -> io::Result<usize> {
    // The pump calls this for both sides on every round, nearly always with no own bytes
    // and a plain socket: that case must cost a compare, not a call with a large frame.
    if dst.wbuf.is_empty() && dst.tls.is_none() {
        return if n == 0 { Ok(0) } else { forward(src, dst, n) };
    }
    own_then_forward(src, dst, n, pool)
}

#[inline(never)]
fn own_then_forward(
    src: &mut Stream,
    dst: &mut Stream,
    n: usize,
    pool: &mut BufPool,
) -> io::Result<usize> {
    if n == 0 || dst.wbuf.is_empty() || dst.tls.is_some() {
        if !dst.flush_own(pool)? || n == 0 {
            return Ok(0);
        }
        return forward(src, dst, n);
    }
    if !dst.writable {
        return Ok(0);
    }
    let own = dst.wbuf.pending();
    let mine = own.len();
    let theirs = &src.rbuf.bytes()[..n];
    let k = loop {
        match dst
            .sock
            .write_vectored(&[io::IoSlice::new(own), io::IoSlice::new(theirs)])
        {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => break k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dst.writable = false;
                return Ok(0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    dst.wbuf.advance(k.min(mine));
    let sent = k.saturating_sub(mine);
    src.rbuf.consume(sent);
    if k == mine + n {
        dst.wbuf.release(pool);
        return Ok(n);
    }
    // A short write: go on the usual way, which stops where the socket would block.
    if !dst.flush_own(pool)? {
        return Ok(sent);
    }
    Ok(sent + forward(src, dst, n - sent)?)
}

/// Tests only: a pair of in-memory pipes standing in for a socket, so the pump's own code
/// runs against byte queues a test fills and reads, as rustls tests its connections.
#[cfg(test)]
pub mod memory {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::io;
    use std::rc::Rc;

    /// One direction of a connection.
    #[derive(Default)]
    pub struct Pipe {
        pub bytes: VecDeque<u8>,
        /// The writer is gone: reads see EOF once the bytes are read.
        pub closed: bool,
        /// The most bytes one write call takes (0: no limit): a short write, as a socket
        /// may make. Reads take what is there: a short read means drained, as the
        /// edge-triggered loop assumes.
        pub chunk: usize,
        /// The most bytes the pipe holds before writes would block (0: no limit).
        pub room: usize,
    }

    pub type Shared = Rc<RefCell<Pipe>>;

    impl Pipe {
        /// Takes what was written as whole protocol messages, (tag, body) each; a partial
        /// message fails the test.
        pub fn take_messages(&mut self) -> Vec<(u8, Vec<u8>)> {
            let bytes: Vec<u8> = self.bytes.drain(..).collect();
            let mut rest = &bytes[..];
            let mut out = Vec::new();
            while let Ok(Some((h, body))) = crate::wire::frame::message(rest, usize::MAX) {
                out.push((h.tag, body.to_vec()));
                rest = &rest[h.total..];
            }
            assert!(rest.is_empty(), "a partial message was sent: {rest:?}");
            out
        }
    }

    /// The pooler's end of a connection: what it reads and what it writes.
    pub struct End {
        pub incoming: Shared,
        pub outgoing: Shared,
    }

    impl End {
        /// An end and, for the test, its two pipes (incoming, outgoing).
        pub fn new() -> (End, Shared, Shared) {
            let (i, o) = (Shared::default(), Shared::default());
            let end = End {
                incoming: i.clone(),
                outgoing: o.clone(),
            };
            (end, i, o)
        }

        pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut p = self.incoming.borrow_mut();
            if p.bytes.is_empty() {
                return if p.closed {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(p.bytes.len());
            for (b, v) in buf.iter_mut().zip(p.bytes.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }

        pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[io::IoSlice::new(buf)])
        }

        pub fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let mut p = self.outgoing.borrow_mut();
            let mut limit = if p.chunk == 0 { usize::MAX } else { p.chunk };
            if p.room != 0 {
                limit = limit.min(p.room.saturating_sub(p.bytes.len()));
            }
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if limit == 0 && total > 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(limit - n);
                p.bytes.extend(&b[..take]);
                n += take;
            }
            Ok(n)
        }

        pub fn shutdown(&self) {
            self.outgoing.borrow_mut().closed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connected pair: the pooler's side as a Stream (readable and writable, as after
    /// its first events) and the peer as a plain blocking socket.
    fn pair() -> (Stream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mine, _) = listener.accept().unwrap();
        mine.set_nonblocking(true).unwrap();
        let mut s = Stream::accepted(Sock::Tcp(mio::net::TcpStream::from_std(mine)));
        s.on_event(true, true, false);
        (s, peer)
    }

    fn read_exactly(peer: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        peer.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn own_bytes_then_forwarded_ones_leave_in_order() {
        let mut pool = BufPool::new(4096, 4);
        let (mut client, mut client_peer) = pair();
        let (mut server, mut server_peer) = pair();
        client_peer.write_all(b"ExecSyncAndMore").unwrap();
        while client.rbuf.len() < 15 {
            client.fill(&mut pool).unwrap();
        }
        server.wbuf.vec(&mut pool).extend_from_slice(b"BindHead|");
        // Only the first 8 client bytes are ready to go: the rest stays buffered.
        let n = flush_then_forward(&mut client, &mut server, 8, &mut pool).unwrap();
        assert_eq!(n, 8);
        assert!(server.wbuf.is_empty());
        assert!(
            !server.wbuf.has_storage(),
            "the write buffer goes back to the pool"
        );
        assert_eq!(client.rbuf.bytes(), b"AndMore");
        assert_eq!(read_exactly(&mut server_peer, 17), b"BindHead|ExecSync");
        // Nothing of the client's ready: the own bytes still go.
        server.wbuf.vec(&mut pool).extend_from_slice(b"SET");
        assert_eq!(
            flush_then_forward(&mut client, &mut server, 0, &mut pool).unwrap(),
            0
        );
        assert_eq!(read_exactly(&mut server_peer, 3), b"SET");
        // No own bytes: a plain forward.
        assert_eq!(
            flush_then_forward(&mut client, &mut server, 3, &mut pool).unwrap(),
            3
        );
        assert_eq!(read_exactly(&mut server_peer, 3), b"And");
        assert_eq!(client.rbuf.bytes(), b"More");
    }

    #[test]
    fn a_socket_known_full_takes_nothing_and_keeps_both_buffers() {
        let mut pool = BufPool::new(4096, 4);
        let (mut client, mut client_peer) = pair();
        let (mut server, _server_peer) = pair();
        client_peer.write_all(b"Query").unwrap();
        while client.rbuf.len() < 5 {
            client.fill(&mut pool).unwrap();
        }
        server.wbuf.vec(&mut pool).extend_from_slice(b"own");
        server.writable = false;
        assert_eq!(
            flush_then_forward(&mut client, &mut server, 5, &mut pool).unwrap(),
            0
        );
        assert_eq!(server.wbuf.pending(), b"own");
        assert_eq!(client.rbuf.bytes(), b"Query");
    }

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
