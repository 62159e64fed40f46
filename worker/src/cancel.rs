//! Cancel requests: find the client's server by the key we handed out, and pass the
//! request on to PostgreSQL over a new connection, or to the peer pooler that handed the
//! key out.
//!
//! PostgreSQL closes a cancel connection once it has signalled the backend. Until then the
//! server must not go to another client: a late cancel would hit that client's query. So
//! the cancel connection is kept until PostgreSQL closes it, and the server waits.
//!
//! With peering (`peer_id`), a key's pid carries the id of the pooler that handed it out
//! (bits 16..30), so behind a load balancer a cancel that lands on the wrong host is sent
//! on to the right one. A forwarded cancel has the pid's top bit set: the receiving peer
//! takes it only from a configured peer's address and never forwards it again, so a
//! wrong `peers` table costs one hop at most, never a loop.

use crate::control::Report;
use crate::proxy::Peer as From;
use crate::server::{SState, ServerAddr};
use crate::stats::CancelOutcome;
use crate::stream::{Sock, Stream};
use crate::wire::write;
use crate::worker::{Conn, Worker};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The pid bit that marks a cancel request one peer forwarded to another.
const FORWARDED: u32 = 1 << 31;

pub(crate) struct CancelConn {
    io: Stream,
    packet: [u8; 16],
    sent: bool,
    pub started: Instant,
    target: Target,
}

/// Where a cancel connection goes.
enum Target {
    /// PostgreSQL, to cancel the query of this server: (token, id).
    Server(usize, u64),
    /// The peer pooler with this id, which handed the key out.
    Peer(u16),
}

/// Cancel requests this worker has forwarded to peers and not yet seen answered, by peer id.
#[derive(Default)]
pub(crate) struct PeerCancels {
    in_flight: BTreeMap<u16, u32>,
}

impl PeerCancels {
    /// Forwarded cancels waiting on `peer`'s answer now (SHOW PEER_POOLS).
    pub(crate) fn in_flight(&self, peer: u16) -> u32 {
        self.in_flight.get(&peer).copied().unwrap_or(0)
    }
}

/// The peer id a key's pid names, when peering is on (`own` is this pooler's peer_id).
fn key_owner(pid: u32, own: u16) -> Option<u16> {
    (own != 0).then_some((pid >> 16) as u16 & crate::config::MAX_PEER_ID)
}

/// The secret's bit that holds the parity of the pooler generation that handed the key
/// out. During an online upgrade two generations run, each with a worker in slot k: the
/// bit tells which one a key belongs to, so a cancel reaching the other generation is
/// passed across (through both supervisors) instead of being looked up in the wrong slot.
pub(crate) const GENERATION_BIT: u32 = 1 << 23;

/// Whether a key's secret was handed out by a generation of this parity.
pub fn key_generation_matches(key: u32, generation: u32) -> bool {
    (key & GENERATION_BIT != 0) == (generation & 1 == 1)
}

/// A fresh cancel key (pid, secret): the secret's top byte names the worker, so any worker
/// of this pooler can route a cancel here, its bit 23 the generation's parity, and with
/// peering the pid names this pooler, so any peer can. None when the kernel has no
/// randomness to give.
pub(crate) fn new_key(slot: usize, peer_id: u16, generation: u32) -> Option<(u32, u32)> {
    let (pid, secret) = new_key_from(slot, peer_id, |b| getrandom::fill(b).is_ok())?;
    let secret = if generation & 1 == 1 {
        secret | GENERATION_BIT
    } else {
        secret & !GENERATION_BIT
    };
    Some((pid, secret))
}

/// [`new_key`] with its randomness passed in, so failing closed can be tested.
fn new_key_from(
    slot: usize,
    peer_id: u16,
    fill: impl FnOnce(&mut [u8]) -> bool,
) -> Option<(u32, u32)> {
    let mut b = [0u8; 8];
    if !fill(&mut b) {
        return None;
    }
    let [p0, p1, p2, p3, s0, s1, s2, s3] = b;
    let random = u32::from_be_bytes([p0, p1, p2, p3]);
    // The pid stays positive: drivers read it as a signed int4.
    let pid = if peer_id == 0 {
        (random & 0x7fff_ffff).max(1)
    } else {
        u32::from(peer_id & crate::config::MAX_PEER_ID) << 16 | (random & 0xffff)
    };
    let secret = (slot as u32 & 0xff) << 24 | (u32::from_be_bytes([s0, s1, s2, s3]) & 0x00ff_ffff);
    Some((pid, secret))
}

impl Worker {
    /// A CancelRequest arrived on client connection `ct`, which any worker of any peer
    /// may have accepted. The key's top byte is the slot of the worker that handed it
    /// out; with peering its pid names the pooler.
    pub(crate) fn cancel_request(&mut self, ct: usize, pid: u32, key: &[u8]) {
        let Ok(key) = <[u8; 4]>::try_from(key).map(u32::from_be_bytes) else {
            return;
        };
        let Some(from) = self.client(ct).map(|c| c.peer) else {
            return;
        };
        let forwarded = pid & FORWARDED != 0;
        let pid = pid & !FORWARDED;
        if forwarded && !self.is_peer(from) {
            log::debug!("forwarded cancel request from {from}, which is not a peer: ignored");
            return self.count_cancel(CancelOutcome::Refused);
        }
        if let Some(owner) = key_owner(pid, self.cfg.peer_id) {
            if owner != self.cfg.peer_id {
                if forwarded {
                    // Sent here by a peer that believed the key was ours: its peers table
                    // and ours disagree. Forwarding again could go round in a circle.
                    log::warn!(
                        "cancel request forwarded from {from} names peer {owner}, not this \
                         pooler ({}): check the peers sections",
                        self.cfg.peer_id
                    );
                    return self.count_cancel(CancelOutcome::Refused);
                }
                let outcome = match self.forward_cancel(owner, pid, key) {
                    true => CancelOutcome::Forwarded,
                    false => CancelOutcome::Dropped,
                };
                return self.count_cancel(outcome);
            }
        }
        self.count_cancel(CancelOutcome::Handled);
        if !key_generation_matches(key, self.generation) {
            // The other generation's key, during an online upgrade: the supervisors pass
            // it across. A client handed over from it may be ours by now: look first.
            if self
                .cancel_keys
                .contains_key(&(u64::from(pid) << 32 | u64::from(key)))
            {
                return self.cancel_local(pid, key);
            }
            return self.report(Report::Cancel { pid, key });
        }
        let slot = (key >> 24) as usize;
        if slot == self.slot {
            self.cancel_local(pid, key);
        } else if slot < self.shm.workers_cap() {
            self.report(Report::Cancel { pid, key });
        }
    }

    fn count_cancel(&mut self, outcome: CancelOutcome) {
        self.stats.cancels[outcome as usize] += 1;
    }

    /// Whether a connection's (PROXY-given) address is one of the configured peers'.
    pub(crate) fn is_peer(&mut self, from: From) -> bool {
        let (now, ttls) = (self.now, (self.cfg.dns_max_ttl, self.cfg.dns_nxdomain_ttl));
        let cfg = self.cfg.clone();
        cfg.peers.values().any(|p| match from {
            From::Unix => p.is_unix_socket(),
            From::Tcp(a) => {
                let ip = canonical(a.ip());
                match p.host.parse::<IpAddr>() {
                    Ok(peer) => canonical(peer) == ip,
                    Err(_) if p.is_unix_socket() => false,
                    Err(_) => self.dns.resolves_to((&p.host, p.port), ip, now, ttls),
                }
            }
        })
    }

    /// Looks up the peers' host names ahead of need, so the first forwarded cancel from
    /// one is recognised and the first one forwarded to one is not dropped.
    pub(crate) fn warm_peer_names(&mut self) {
        let (now, ttls) = (self.now, (self.cfg.dns_max_ttl, self.cfg.dns_nxdomain_ttl));
        for p in self.cfg.peers.values() {
            if !p.is_unix_socket() && p.host.parse::<IpAddr>().is_err() {
                self.dns.lookup(&p.host, p.port, now, ttls.0, ttls.1);
            }
        }
    }

    /// Sends a cancel request on to the peer that handed its key out, marked as forwarded.
    /// False when it cannot be sent: the peer is unknown, at pool_size or unreachable.
    fn forward_cancel(&mut self, owner: u16, pid: u32, key: u32) -> bool {
        let Some(peer) = self.cfg.peers.get(&owner).cloned() else {
            log::debug!("cancel request for peer {owner}, which is not in peers: ignored");
            return false;
        };
        let limit = peer.pool_size.unwrap_or(self.cfg.default_pool_size);
        if self.peer_cancels.in_flight(owner) >= limit {
            log::warn!(
                "peer {owner}: {limit} cancel requests already in flight (pool_size): one dropped"
            );
            return false;
        }
        let addr = if peer.is_unix_socket() {
            ServerAddr::Unix(format!("{}/.s.PGSQL.{}", peer.host, peer.port).into())
        } else {
            let (now, max, nx) = (self.now, self.cfg.dns_max_ttl, self.cfg.dns_nxdomain_ttl);
            match self.dns.lookup(&peer.host, peer.port, now, max, nx) {
                crate::dns::Lookup::Ready(a) => ServerAddr::Tcp(a),
                other => {
                    log::warn!("peer {owner}: host name not resolved ({other:?}): cancel dropped");
                    return false;
                }
            }
        };
        let mut sock = match self.connect_from_own_address(&addr) {
            Ok(sock) => sock,
            Err(e) => {
                log::warn!("peer {owner}: cannot connect to {addr} to forward a cancel: {e}");
                return false;
            }
        };
        log::debug!("cancel request forwarded to peer {owner} at {addr}");
        let mut out = Vec::with_capacity(16);
        write::cancel_request(&mut out, pid | FORWARDED, &key.to_be_bytes());
        let mut packet = [0u8; 16];
        packet.copy_from_slice(&out);
        let t = self.conns.vacant_entry().key();
        if self.register(t, &mut sock).is_err() {
            return false;
        }
        *self.peer_cancels.in_flight.entry(owner).or_default() += 1;
        self.conns.insert(Conn::Cancel(CancelConn {
            io: Stream::connecting(sock),
            packet,
            sent: false,
            started: self.now,
            target: Target::Peer(owner),
        }));
        true
    }

    /// Connects to a peer from this pooler's own entry in `peers` when that is an address
    /// of this host, so the peer recognises it; from the kernel's choice otherwise.
    fn connect_from_own_address(&self, addr: &ServerAddr) -> std::io::Result<Sock> {
        let ServerAddr::Tcp(to) = addr else {
            return addr.connect();
        };
        let own = self.cfg.peers.get(&self.cfg.peer_id);
        let Some(ip) = own.and_then(|p| p.host.parse::<IpAddr>().ok()) else {
            return addr.connect();
        };
        if ip.is_unspecified() || ip.is_ipv4() != to.is_ipv4() {
            return addr.connect();
        }
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(*to),
            socket2::Type::STREAM.nonblocking(),
            None,
        )?;
        if sock.bind(&SocketAddr::new(ip, 0).into()).is_err() {
            // Not an address of this host (a load balancer's, say): let the kernel choose.
            return addr.connect();
        }
        match sock.connect(&(*to).into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let s = mio::net::TcpStream::from_std(sock.into());
        let _ = s.set_nodelay(true);
        Ok(Sock::Tcp(s))
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
        let target = Target::Server(st, s.id);
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
            target,
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
        let (st, id) = match x.target {
            Target::Server(st, id) => (st, id),
            Target::Peer(peer) => {
                if let Some(n) = self.peer_cancels.in_flight.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
                return;
            }
        };
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

/// A v4-mapped IPv6 address as the IPv4 address it is, so both spellings of a peer match.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_generation_and_slot() {
        for generation in 1..=4u32 {
            for slot in [0usize, 1, 200, 255] {
                for _ in 0..32 {
                    let (_, secret) = new_key(slot, 0, generation).unwrap();
                    assert_eq!((secret >> 24) as usize, slot);
                    assert!(key_generation_matches(secret, generation));
                    assert!(!key_generation_matches(secret, generation + 1));
                }
            }
        }
    }

    #[test]
    fn keys_fail_closed_without_randomness() {
        assert_eq!(new_key_from(3, 0, |_| false), None);
        let (pid, secret) = new_key_from(3, 0, |b| {
            b.fill(0xab);
            true
        })
        .unwrap();
        assert_eq!(pid, 0x2bab_abab);
        assert_eq!(secret, 0x03ab_abab, "the top byte names the worker");
        // A zero pid would read as "no key": never handed out.
        assert_eq!(
            new_key_from(0, 0, |b| {
                b.fill(0);
                true
            }),
            Some((1, 0))
        );
    }

    #[test]
    fn with_peering_the_pid_names_the_pooler() {
        for peer in [1, 2, 77, MAX] {
            for fill in [0x00, 0x5a, 0xff] {
                let (pid, secret) = new_key_from(9, peer, |b| {
                    b.fill(fill);
                    true
                })
                .unwrap();
                assert_eq!(key_owner(pid, 5), Some(peer), "{peer} {fill:#x}");
                assert_eq!(pid & FORWARDED, 0, "handed-out pids are positive");
                assert!(pid > 0);
                assert_eq!(secret >> 24, 9);
                // The forwarded mark does not change whose key it is.
                assert_eq!(key_owner(pid | FORWARDED, 5), Some(peer));
            }
        }
        assert_eq!(key_owner(0x0003_1234, 0), None, "no peering, no owner");
    }

    const MAX: u16 = crate::config::MAX_PEER_ID;

    #[test]
    fn mapped_addresses_match_their_ipv4_spelling() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
