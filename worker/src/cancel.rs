//! Cancel requests: find the client's server by the key we handed out, and pass the
//! request on to PostgreSQL over a new connection.
//!
//! PostgreSQL closes a cancel connection once it has signalled the backend. Until then the
//! server must not go to another client: a late cancel would hit that client's query. So
//! the cancel connection is kept until PostgreSQL closes it, and the server waits.

use crate::control::Report;
use crate::server::SState;
use crate::stream::Stream;
use crate::wire::write;
use crate::worker::{Conn, Worker};
use std::time::Instant;

pub(crate) struct CancelConn {
    io: Stream,
    packet: [u8; 16],
    sent: bool,
    pub started: Instant,
    /// The server being canceled: (token, id).
    server: (usize, u64),
}

impl Worker {
    /// A CancelRequest arrived on a new connection, which any worker may have accepted.
    /// The key's top byte is the slot of the worker that handed it out.
    pub(crate) fn cancel_request(&mut self, pid: u32, key: &[u8]) {
        let Ok(key) = <[u8; 4]>::try_from(key).map(u32::from_be_bytes) else {
            return;
        };
        let slot = (key >> 24) as usize;
        if slot == self.slot {
            self.cancel_local(pid, key);
        } else if slot < self.shm.workers_cap() {
            self.report(Report::Cancel { pid, key });
        }
    }

    /// Cancels the query of one of this worker's clients. Unknown keys are dropped
    /// silently, as PostgreSQL does.
    pub(crate) fn cancel_local(&mut self, pid: u32, key: u32) {
        let k = (pid as u64) << 32 | key as u64;
        let Some(&(ct, id)) = self.cancel_keys.get(&k) else {
            log::debug!("cancel request with an unknown key");
            return;
        };
        let Some(c) = self.client(ct).filter(|c| c.id == id) else {
            return;
        };
        let Some(st) = c.server else {
            log::debug!("{}: cancel request while no query runs", c.name());
            return;
        };
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let Some((spid, skey)) = s.backend_key else {
            return;
        };
        let mut sock = match s.addr.connect() {
            Ok(sock) => sock,
            Err(e) => {
                log::warn!("cannot connect to send a cancel request: {e}");
                return;
            }
        };
        let server = (st, s.id);
        let mut out = Vec::with_capacity(16);
        write::cancel_request(&mut out, spid, &skey.to_be_bytes());
        let mut packet = [0u8; 16];
        packet.copy_from_slice(&out);
        let t = self.conns.vacant_entry().key();
        if self.register(t, &mut sock).is_err() {
            return;
        }
        if let Some(Conn::Server(s)) = self.conns.get_mut(st) {
            s.cancels += 1;
        }
        self.conns.insert(Conn::Cancel(CancelConn {
            io: Stream::connecting(sock),
            packet,
            sent: false,
            started: self.now,
            server,
        }));
    }

    /// Sends the 16 bytes once connected, then waits for PostgreSQL to hang up.
    pub(crate) fn drive_cancel(&mut self, t: usize, ready: bool) {
        let Some(Conn::Cancel(x)) = self.conns.get_mut(t) else {
            return;
        };
        if !ready {
            return;
        }
        x.io.on_event(ready, ready, false);
        if !x.sent {
            if let Ok(Some(_)) | Err(_) = x.io.take_error() {
                return self.cancel_done(t);
            }
            if !x.io.is_connected() {
                return;
            }
            // A CancelRequest goes in plaintext even to a server spoken to over TLS:
            // PostgreSQL reads it before any authentication or hba line applies.
            match x.io.send(&x.packet) {
                // 16 bytes fit in any fresh socket buffer.
                Ok(16) => x.sent = true,
                Ok(_) => return,
                Err(_) => return self.cancel_done(t),
            }
        }
        if x.io.discard_until_eof() {
            self.cancel_done(t);
        }
    }

    /// A cancel connection is finished (or given up on): its server may be reused.
    pub(crate) fn cancel_done(&mut self, t: usize) {
        let Some(Conn::Cancel(x)) = self.conns.try_remove(t) else {
            return;
        };
        let (st, id) = x.server;
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        if s.id != id {
            return;
        }
        s.cancels = s.cancels.saturating_sub(1);
        if s.cancels == 0 && s.state == SState::Canceling {
            self.server_ready(st);
        }
    }
}
