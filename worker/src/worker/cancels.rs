//! The loop's side of cancel requests: carrying out where cancel::route sends one (a
//! server of this worker, another worker, a peer pooler) and driving the outgoing ones.

use super::Worker;
use crate::cancel::{
    connect_from_own_address, is_peer, route, CancelConn, Here, Route, Target, FORWARDED,
};
use crate::conn::Conn;
use crate::control::Report;
use crate::server::{SState, ServerAddr};
use crate::stats::CancelOutcome;
use std::net::IpAddr;

impl Worker {
    /// A CancelRequest arrived on client connection `ct`, which any worker of any peer
    /// may have accepted: sent where [`route`] says.
    pub(crate) fn cancel_request(&mut self, ct: usize, pid: u32, key: &[u8]) {
        let Ok(key) = <[u8; 4]>::try_from(key).map(u32::from_be_bytes) else {
            return;
        };
        let Some(from) = self.client(ct).map(|c| c.peer) else {
            return;
        };
        let here = Here {
            peer_id: self.cfg.peer_id,
            generation: self.lineage.generation,
            slot: self.slot,
            workers: self.shm.workers_cap(),
        };
        let cancels = &self.cancels;
        let held = |pid: u32, key: u32| {
            cancels
                .owner(u64::from(pid) << 32 | u64::from(key))
                .is_some()
        };
        let forwarded_by_peer = pid & FORWARDED != 0 && {
            // Asked only for a forwarded request: it may look a peer's name up.
            let cfg = self.cfg.clone();
            is_peer(&cfg, &mut self.dns, self.now, from)
        };
        let (route, pid) = route(pid, key, from, forwarded_by_peer, here, held);
        let outcome = match route {
            Route::Refused => CancelOutcome::Refused,
            Route::Peer(owner) => match self.forward_cancel(owner, pid, key) {
                true => CancelOutcome::Forwarded,
                false => CancelOutcome::Dropped,
            },
            Route::Local => {
                self.cancel_local(pid, key);
                CancelOutcome::Handled
            }
            Route::Supervisor => {
                self.report(Report::Cancel { pid, key });
                CancelOutcome::Handled
            }
            Route::Nowhere => CancelOutcome::Handled,
        };
        self.stats.cancels[outcome as usize] += 1;
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
        if self.cancels.peers.in_flight(owner) >= limit {
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
        let mut sock = match connect_from_own_address(&self.cfg, &addr) {
            Ok(sock) => sock,
            Err(e) => {
                log::warn!("peer {owner}: cannot connect to {addr} to forward a cancel: {e}");
                return false;
            }
        };
        log::debug!("cancel request forwarded to peer {owner} at {addr}");
        let t = self.conns.vacant_entry().key();
        if self.register(t, &mut sock).is_err() {
            return false;
        }
        self.cancels.peers.sent(owner);
        let x = CancelConn::new(sock, Target::Peer(owner), pid, key, true, self.now);
        self.conns.insert(Conn::Cancel(x));
        true
    }

    /// Cancels the query of one of this worker's clients. Unknown keys are dropped
    /// silently, as PostgreSQL does.
    pub(crate) fn cancel_local(&mut self, pid: u32, key: u32) {
        let k = (pid as u64) << 32 | key as u64;
        let Some((ct, id)) = self.cancels.owner(k) else {
            log::debug!("cancel request with an unknown key");
            return;
        };
        let Some(c) = self.client(ct).filter(|c| c.id == id) else {
            return;
        };
        let Some(st) = c.linked_server() else {
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
        let t = self.conns.vacant_entry().key();
        if self.register(t, &mut sock).is_err() {
            return;
        }
        if let Some(Conn::Server(s)) = self.conns.get_mut(st) {
            s.cancels += 1;
        }
        let x = CancelConn::new(sock, target, spid, skey, false, self.now);
        self.conns.insert(Conn::Cancel(x));
    }

    /// A cancel connection's socket is ready: done with it once [`CancelConn::drive`] says so.
    pub(crate) fn drive_cancel(&mut self, t: usize, ready: bool) {
        let Some(Conn::Cancel(x)) = self.conns.get_mut(t) else {
            return;
        };
        if ready && x.drive() {
            self.cancel_done(t);
        }
    }

    /// A cancel connection is finished (or given up on): its server may be reused.
    pub(crate) fn cancel_done(&mut self, t: usize) {
        let Some(Conn::Cancel(x)) = self.conns.try_remove(t) else {
            return;
        };
        let (st, id) = match x.target() {
            Target::Server(st, id) => (st, id),
            Target::Peer(peer) => return self.cancels.peers.answered(peer),
        };
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        if s.id != id {
            return;
        }
        s.cancels = s.cancels.saturating_sub(1);
        if s.cancels == 0 && matches!(s.state, SState::Canceling) {
            self.server_ready(st);
        }
    }
}
