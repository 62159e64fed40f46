//! The cost floor for scripts/bench.sh: a 1:1 epoll forwarder with no parsing and no pooling.
//!
//! `null_relay LISTEN_PORT UPSTREAM_ADDR` accepts on 127.0.0.1:LISTEN_PORT and gives every
//! client its own connection to UPSTREAM_ADDR (PostgreSQL), then moves bytes both ways as
//! they come: one read and one write per direction per burst, edge-triggered, on one
//! thread, like a pooler's pump with nothing to decide. Any pooler pays at least this per
//! transaction; bench.sh reports each pooler's CPU per transaction as a multiple of it.
//! Connecting upstream blocks the loop for a moment; the benchmark connects once per client.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX);
const BUF: usize = 16 * 1024;

/// One direction: bytes read from one socket and not yet written to the other.
struct Pipe {
    buf: Box<[u8; BUF]>,
    start: usize,
    end: usize,
}

struct Pair {
    sockets: [TcpStream; 2],
    /// pipes[0]: client -> server; pipes[1]: server -> client.
    pipes: [Pipe; 2],
}

impl Pair {
    /// Moves what can move in direction `d` (0: from sockets[0] to sockets[1]); false when
    /// the pair is done (EOF or error).
    fn pump(&mut self, d: usize) -> bool {
        let (from, to) = if d == 0 { (0, 1) } else { (1, 0) };
        // A short read drained the socket: epoll reports the next arrival, so no read is
        // spent on an empty socket (the same rule the pooler's Stream follows).
        let mut drained = false;
        loop {
            let pipe = &mut self.pipes[d];
            while pipe.start < pipe.end {
                match self.sockets[to].write(&pipe.buf[pipe.start..pipe.end]) {
                    Ok(0) => return false,
                    Ok(n) => pipe.start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            pipe.start = 0;
            pipe.end = 0;
            if drained {
                return true;
            }
            match self.sockets[from].read(&mut pipe.buf[..]) {
                Ok(0) => return false,
                Ok(n) => {
                    pipe.end = n;
                    drained = n < BUF;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: null_relay LISTEN_PORT UPSTREAM_ADDR");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("LISTEN_PORT");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM_ADDR");
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut pairs: HashMap<usize, Pair> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    server.set_nonblocking(true)?;
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let mut pair = Pair {
                        sockets: [client, TcpStream::from_std(server)],
                        pipes: std::array::from_fn(|_| Pipe {
                            buf: Box::new([0; BUF]),
                            start: 0,
                            end: 0,
                        }),
                    };
                    let id = next;
                    next += 2;
                    let both = Interest::READABLE | Interest::WRITABLE;
                    poll.registry()
                        .register(&mut pair.sockets[0], Token(id), both)?;
                    poll.registry()
                        .register(&mut pair.sockets[1], Token(id + 1), both)?;
                    pairs.insert(id, pair);
                }
                continue;
            }
            let (id, side) = (ev.token().0 & !1, ev.token().0 & 1);
            let Some(pair) = pairs.get_mut(&id) else {
                continue;
            };
            // A socket that turned readable feeds the direction leaving it; one that turned
            // writable drains the direction into it. No read is tried on a quiet socket.
            let mut alive = true;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                alive &= pair.pump(side);
            }
            if alive && (ev.is_writable() || ev.is_error()) {
                alive &= pair.pump(1 - side);
            }
            if !alive {
                if let Some(mut pair) = pairs.remove(&id) {
                    for s in &mut pair.sockets {
                        let _ = poll.registry().deregister(s);
                    }
                }
            }
        }
    }
}
