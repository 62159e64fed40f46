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

use crate::proxy::Peer as From;
use crate::server::ServerAddr;
use crate::stream::{Sock, Stream};
use crate::wire::write;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The pid bit that marks a cancel request one peer forwarded to another.
pub(crate) const FORWARDED: u32 = 1 << 31;

pub(crate) struct CancelConn {
    io: Stream,
    packet: [u8; 16],
    sent: bool,
    pub started: Instant,
    target: Target,
}

impl CancelConn {
    /// A connection under way to `target`, to send it the CancelRequest for (pid, key);
    /// `forwarded` marks one a peer pooler sends on to the peer that owns the key.
    pub(crate) fn new(
        sock: Sock,
        target: Target,
        pid: u32,
        key: u32,
        forwarded: bool,
        now: Instant,
    ) -> CancelConn {
        let pid = if forwarded { pid | FORWARDED } else { pid };
        let mut out = Vec::with_capacity(16);
        write::cancel_request(&mut out, pid, &key.to_be_bytes());
        let mut packet = [0u8; 16];
        packet.copy_from_slice(&out);
        CancelConn {
            io: Stream::connecting(sock),
            packet,
            sent: false,
            started: now,
            target,
        }
    }

    /// Where it goes.
    pub(crate) fn target(&self) -> Target {
        self.target
    }

    /// Sends the 16 bytes once connected, then waits for PostgreSQL to hang up. True when
    /// the connection is finished: answered, refused or broken.
    pub(crate) fn drive(&mut self) -> bool {
        self.io.on_event(true, true, false);
        if !self.sent {
            if let Ok(Some(_)) | Err(_) = self.io.take_error() {
                return true;
            }
            if !self.io.is_connected() {
                return false;
            }
            // A CancelRequest goes in plaintext even to a server spoken to over TLS:
            // PostgreSQL reads it before any authentication or hba line applies.
            match self.io.send(&self.packet) {
                // 16 bytes fit in any fresh socket buffer.
                Ok(16) => self.sent = true,
                Ok(_) => return false,
                Err(_) => return true,
            }
        }
        self.io.discard_until_eof()
    }
}

/// Where a cancel connection goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// PostgreSQL, to cancel the query of this server: (token, id).
    Server(usize, u64),
    /// The peer pooler with this id, which handed the key out.
    Peer(u16),
}

/// What routing a cancel needs to know: the keys this worker handed out, and the cancels
/// it forwarded to peers.
#[derive(Default)]
pub(crate) struct Cancels {
    /// Key (pid << 32 | secret) -> the client it was handed to: (slab key, client id).
    keys: HashMap<u64, (usize, u64)>,
    /// Cancel requests forwarded to peer poolers and not yet answered.
    pub peers: PeerCancels,
}

impl Cancels {
    /// `key` was handed to client `id` in slot `ct`, at its login or its adoption.
    pub(crate) fn hand_out(&mut self, key: u64, ct: usize, id: u64) {
        self.keys.insert(key, (ct, id));
    }

    /// Client `id` is leaving: its key cancels nothing any more. A key another client
    /// holds now is left alone.
    pub(crate) fn forget(&mut self, key: u64, id: u64) {
        if self.keys.get(&key).is_some_and(|&(_, i)| i == id) {
            self.keys.remove(&key);
        }
    }

    /// The client `key` was handed to, while it is here.
    pub(crate) fn owner(&self, key: u64) -> Option<(usize, u64)> {
        self.keys.get(&key).copied()
    }
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

    /// A cancel went to `peer`.
    pub(crate) fn sent(&mut self, peer: u16) {
        *self.in_flight.entry(peer).or_default() += 1;
    }

    /// `peer` is done with a cancel (answered, refused, or given up on).
    pub(crate) fn answered(&mut self, peer: u16) {
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
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

/// This worker's place, for routing a cancel key.
#[derive(Clone, Copy)]
pub(crate) struct Here {
    /// This pooler's peer_id (0: no peering).
    pub peer_id: u16,
    pub generation: u32,
    pub slot: usize,
    /// How many worker slots this pooler has.
    pub workers: usize,
}

/// Where a cancel request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Not taken: forwarded by what is not a peer, or forwarded to the wrong pooler.
    Refused,
    /// On to the peer pooler with this id, which handed the key out.
    Peer(u16),
    /// To one of this worker's own clients.
    Local,
    /// Through the supervisor: another worker's key, or the other generation's during an
    /// online upgrade.
    Supervisor,
    /// A worker slot this pooler does not have: dropped, as PostgreSQL drops unknown keys.
    Nowhere,
}

/// Where a CancelRequest for (`pid`, `key`) from `from` goes, and its pid without the
/// forwarded mark. `forwarded_by_peer`: the request carries the mark and `from` is a
/// configured peer; `held`: this worker handed out that key (a client handed over from
/// the other generation keeps its key). Nothing here reads a socket or the worker.
pub(crate) fn route(
    pid: u32,
    key: u32,
    from: From,
    forwarded_by_peer: bool,
    here: Here,
    held: impl FnOnce(u32, u32) -> bool,
) -> (Route, u32) {
    let forwarded = pid & FORWARDED != 0;
    let pid = pid & !FORWARDED;
    if forwarded && !forwarded_by_peer {
        log::debug!("forwarded cancel request from {from}, which is not a peer: ignored");
        return (Route::Refused, pid);
    }
    if let Some(owner) = key_owner(pid, here.peer_id) {
        if owner != here.peer_id {
            if forwarded {
                // Sent here by a peer that believed the key was ours: its peers table and
                // ours disagree. Forwarding again could go round in a circle.
                log::warn!(
                    "cancel request forwarded from {from} names peer {owner}, not this \
                     pooler ({}): check the peers sections",
                    here.peer_id
                );
                return (Route::Refused, pid);
            }
            return (Route::Peer(owner), pid);
        }
    }
    if !key_generation_matches(key, here.generation) {
        // The other generation's key, during an online upgrade: the supervisors pass it
        // across. A client handed over from it may be ours by now: look first.
        let route = if held(pid, key) {
            Route::Local
        } else {
            Route::Supervisor
        };
        return (route, pid);
    }
    let slot = (key >> 24) as usize;
    let route = if slot == here.slot {
        Route::Local
    } else if slot < here.workers {
        Route::Supervisor
    } else {
        Route::Nowhere
    };
    (route, pid)
}

/// Whether a connection's (PROXY-given) address is one of the configured peers'; a peer
/// named by host name is looked up (never blocking: an answer not cached yet is a no).
pub(crate) fn is_peer(
    cfg: &crate::config::Config,
    dns: &mut crate::dns::Resolver,
    now: Instant,
    from: From,
) -> bool {
    let ttls = (cfg.dns_max_ttl, cfg.dns_nxdomain_ttl);
    cfg.peers.values().any(|p| match from {
        From::Unix => p.is_unix_socket(),
        From::Tcp(a) => {
            let ip = canonical(a.ip());
            match p.host.parse::<IpAddr>() {
                Ok(peer) => canonical(peer) == ip,
                Err(_) if p.is_unix_socket() => false,
                Err(_) => dns.resolves_to((&p.host, p.port), ip, now, ttls),
            }
        }
    })
}

/// Connects to a peer from this pooler's own entry in `peers` when that is an address
/// of this host, so the peer recognises it; from the kernel's choice otherwise.
pub(crate) fn connect_from_own_address(
    cfg: &crate::config::Config,
    addr: &ServerAddr,
) -> std::io::Result<Sock> {
    let ServerAddr::Tcp(to) = addr else {
        return addr.connect();
    };
    let own = cfg.peers.get(&cfg.peer_id);
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

    /// Worker 1 of 4, generation 1, peer 3 (or no peering).
    fn here(peer_id: u16) -> Here {
        Here {
            peer_id,
            generation: 1,
            slot: 1,
            workers: 4,
        }
    }

    fn key(slot: u32, generation: u32) -> u32 {
        let k = slot << 24 | 0x1234;
        if generation & 1 == 1 {
            k | GENERATION_BIT
        } else {
            k
        }
    }

    fn peer_pid(owner: u16) -> u32 {
        u32::from(owner) << 16 | 0x42
    }

    const FROM: From = From::Tcp(SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        5,
    ));

    #[test]
    fn a_key_goes_to_the_worker_that_handed_it_out() {
        let never = |_: u32, _: u32| panic!("only the other generation's keys are looked up");
        let r = |k| route(7, k, FROM, false, here(0), never).0;
        assert_eq!(r(key(1, 1)), Route::Local);
        assert_eq!(r(key(0, 1)), Route::Supervisor);
        assert_eq!(r(key(3, 1)), Route::Supervisor);
        // A slot this pooler does not have: dropped, not passed on.
        assert_eq!(r(key(4, 1)), Route::Nowhere);
        assert_eq!(r(key(200, 1)), Route::Nowhere);
    }

    #[test]
    fn the_other_generations_key_crosses_unless_its_client_moved_here() {
        let k = key(1, 2);
        let (r, _) = route(7, k, FROM, false, here(0), |_, _| false);
        assert_eq!(r, Route::Supervisor);
        let (r, _) = route(7, k, FROM, false, here(0), |pid, key| (pid, key) == (7, k));
        assert_eq!(r, Route::Local);
    }

    #[test]
    fn with_peering_another_poolers_key_goes_to_it_once() {
        let k = key(1, 1);
        assert_eq!(
            route(peer_pid(5), k, FROM, false, here(3), |_, _| false),
            (Route::Peer(5), peer_pid(5))
        );
        assert_eq!(
            route(peer_pid(3), k, FROM, false, here(3), |_, _| false).0,
            Route::Local
        );
        // Forwarded to us by a peer, but naming a third pooler: the tables disagree, and a
        // second hop could circle.
        let forwarded = peer_pid(5) | FORWARDED;
        assert_eq!(
            route(forwarded, k, FROM, true, here(3), |_, _| false),
            (Route::Refused, peer_pid(5))
        );
        // Forwarded and ours: taken, with the mark removed.
        let forwarded = peer_pid(3) | FORWARDED;
        assert_eq!(
            route(forwarded, k, FROM, true, here(3), |_, _| false),
            (Route::Local, peer_pid(3))
        );
    }

    #[test]
    fn a_forwarded_request_is_taken_only_from_a_peer() {
        let forwarded = peer_pid(3) | FORWARDED;
        let (r, _) = route(forwarded, key(1, 1), FROM, false, here(3), |_, _| false);
        assert_eq!(r, Route::Refused);
    }
}
