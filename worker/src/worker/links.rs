//! The loop's side of linking: a client's request finds a server (an idle one, a new one,
//! or a place in the queue), the pair pumps (link.rs), and the server goes back.

use super::followups::Followup;
use super::servers::needs_check;
use super::Worker;
use crate::client::CState;
use crate::close::Close;
use crate::config::PoolMode;
use crate::conn::Conn;
use crate::link::{database_removed, pair, pump, Pump, PumpEnd};
use crate::pool::{PoolId, Serve};
use crate::server::SState;
use crate::wire::sqlstate;

impl Worker {
    /// A logged-in client has a request: give it a server now or queue it.
    pub(crate) fn request_server(&mut self, ct: usize) {
        if self.shutdown.as_ref().is_some_and(|s| !s.waits_for_clients) {
            // During a shutdown (SIGINT) no new transaction starts; the last one has
            // finished. SIGTERM's shutdown serves clients until they leave.
            let msg = "pgbouncers is shutting down".to_string();
            return self.close_client(ct, Close::Fatal(sqlstate::ADMIN_SHUTDOWN, msg));
        }
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        // Idle with a request, or (a replication client queued during a pause) Waiting.
        let Some(mut pool) = c.pool() else { return };
        if self.pools.get(pool).obsolete {
            // A reload removed the database, or changed its forced user: move to the pool
            // the config now names, or tell the client, but never launch a server for a
            // pool that would only close it again.
            match self.move_to_current_pool(ct) {
                Some(p) => pool = p,
                None => return self.close_client(ct, database_removed()),
            }
        }
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        c.set_state(CState::Waiting { pool }, self.now);
        c.wait_notified = false;
        let id = c.id;
        if c.replication.is_some() {
            // A server of its own, linked when it has logged in (PgBouncer 1.23+); while
            // the pool is paused it waits in the queue, which serve_waiting hands back.
            if self.pools.get(pool).paused {
                self.pools.get_mut(pool).waiting.push_back((ct, id));
                return;
            }
            if !self.launch_replication_server(pool, ct) {
                let msg = "no server connection available for the replication client".into();
                self.close_client(ct, Close::Fatal(sqlstate::CANNOT_CONNECT_NOW, msg));
            }
            return;
        }
        let (p, cfg, now) = (self.pools.get(pool), &self.cfg, self.now);
        let check = match p.idle.last() {
            Some(&st) => needs_check(&self.conns, st, p, cfg, now),
            None => false,
        };
        let serve = p.serve(now, cfg.server_login_retry, check);
        match serve {
            Serve::Link(st) => {
                self.set_server_state(st, SState::Active { client: Some(ct) });
                self.link(ct, st);
            }
            Serve::Check(st) => {
                self.pools.get_mut(pool).waiting.push_back((ct, id));
                self.start_check(st);
            }
            Serve::Behind => {
                self.pools.get_mut(pool).waiting.push_back((ct, id));
                self.later.activate(pool);
            }
            Serve::Queue => {
                self.pools.get_mut(pool).waiting.push_back((ct, id));
                self.serve_waiting(pool);
            }
            Serve::Refuse(msg) => {
                self.close_client(ct, Close::Fatal(sqlstate::CANNOT_CONNECT_NOW, msg));
            }
        }
    }

    /// The end of a loop pass: servers that came free during it go to the clients waiting
    /// in their pools, oldest first. Done once per pass, like PgBouncer's per-loop
    /// activation, so that a pass writes the answers it read to their clients back to back
    /// and only then sends the queued queries on: fewer, fuller wake-ups on both sides.
    pub(crate) fn activate(&mut self) {
        // Transactions that end during this (their clients' next requests) queue again.
        while !self.later.activations.is_empty() {
            self.activate_pools();
        }
    }

    fn activate_pools(&mut self) {
        for pool in std::mem::take(&mut self.later.activations) {
            while let Some(&st) = self.pools.get(pool).idle.last() {
                let Some(ct) = self.next_waiting(pool) else {
                    break;
                };
                if needs_check(&self.conns, st, self.pools.get(pool), &self.cfg, self.now) {
                    // The client waits for this server to pass server_check_query.
                    let id = self.client(ct).map_or(0, |c| c.id);
                    self.pools.get_mut(pool).waiting.push_front((ct, id));
                    self.start_check(st);
                    continue;
                }
                self.set_server_state(st, SState::Active { client: Some(ct) });
                self.link(ct, st);
            }
        }
    }

    /// The next client still waiting in a pool's queue.
    pub(crate) fn next_waiting(&mut self, pool: PoolId) -> Option<usize> {
        let p = self.pools.get_mut(pool);
        if p.paused {
            return None;
        }
        let mut own = Vec::new();
        let mut next = None;
        while let Some((ct, id)) = p.waiting.pop_front() {
            if let Some(Conn::Client(c)) = self.conns.get(ct) {
                if c.id == id && matches!(c.state, CState::Waiting { .. }) {
                    if c.replication.is_some() {
                        // Never given a pooled server: serve_waiting starts its own.
                        own.push((ct, id));
                        continue;
                    }
                    next = Some(ct);
                    break;
                }
            }
        }
        for w in own.into_iter().rev() {
            p.waiting.push_front(w);
        }
        next
    }

    /// Starts servers for waiting clients (and for clients waiting for their greeting)
    /// when the pool has room.
    pub(crate) fn serve_waiting(&mut self, pool: PoolId) {
        let p = self.pools.get(pool);
        if p.obsolete {
            // Its servers close as they come free: whoever still waits moves on now.
            return self.requeue_obsolete(pool);
        }
        if p.paused {
            return;
        }
        // Replication clients queued during a pause: each starts a server of its own.
        let conns = &self.conns;
        let mut own = Vec::new();
        self.pools.get_mut(pool).waiting.retain(|&(ct, id)| {
            let repl = matches!(conns.get(ct), Some(Conn::Client(c))
                if c.id == id && c.replication.is_some());
            if repl {
                own.push(ct);
            }
            !repl
        });
        for ct in own {
            if let Some(id) = self.client(ct).map(|c| c.id) {
                self.later.follow(Followup::RequestServer { ct, id });
            }
        }
        let p = self.pools.get(pool);
        let greeting = usize::from(p.welcome.is_none() && !p.login_waiting.is_empty());
        // Servers running a check or reset come back to the queue: count them as coming,
        // and idle ones (freed this loop pass, not yet handed over) as there.
        let want = (p.waiting.len() + p.lookups.len() + greeting)
            .saturating_sub(p.launching + p.resetting + p.idle.len());
        for _ in 0..want {
            let p = self.pools.get(pool);
            if !p.may_launch(false, self.now, self.cfg.server_login_retry)
                || !self.launch_server(pool)
            {
                break;
            }
        }
    }

    /// Clients queued in a pool a reload retired: they ask again, which finds the pool
    /// the config names now (a forced user changed) or tells them the database is gone.
    fn requeue_obsolete(&mut self, pool: PoolId) {
        let p = self.pools.get_mut(pool);
        if p.waiting.is_empty() && p.login_waiting.is_empty() && p.lookups.is_empty() {
            return;
        }
        let waiting: Vec<(usize, u64)> = p.waiting.drain(..).collect();
        let greeting = std::mem::take(&mut p.login_waiting);
        let lookups: Vec<(usize, u64)> = p.lookups.drain(..).collect();
        let now = self.now;
        for (ct, id) in lookups {
            // Not started yet: ask again, through the pool the config names now.
            let Some(c) = self
                .client(ct)
                .filter(|c| c.id == id && matches!(c.state, CState::Lookup(_)))
            else {
                continue;
            };
            c.set_state(CState::Startup, now);
            self.later.follow(Followup::BeginAuth { ct, id });
        }
        for (ct, id) in waiting {
            if let Some(c) = self.client(ct).filter(|c| c.id == id) {
                c.set_state(CState::Idle { pool }, now);
                self.later.follow(Followup::RequestServer { ct, id });
            }
        }
        for (ct, id) in greeting {
            if self.client(ct).is_none_or(|c| c.id != id) {
                continue;
            }
            match self.move_to_current_pool(ct) {
                Some(p) => {
                    if self.pools.get(p).welcome.is_some() {
                        self.finish_login(ct, p);
                    } else {
                        self.pools.get_mut(p).login_waiting.push((ct, id));
                        self.later.follow(Followup::ServeWaiting(p));
                    }
                }
                None => self.close_client(ct, database_removed()),
            }
        }
    }

    /// Moves client `ct` to the pool the config names now for its database and user (a
    /// reload retired the one it had); None when there is none, or only a retired one.
    fn move_to_current_pool(&mut self, ct: usize) -> Option<PoolId> {
        let c = self.client(ct)?;
        let (db, user) = (c.db.clone(), c.user.clone());
        let setting = crate::pool::Setting(&self.cfg, &self.holds, &self.shm);
        let p = self.pools.for_client(setting, &db, &user).ok()?;
        if self.pools.get(p).obsolete {
            return None;
        }
        self.client(ct)?.move_to_pool(p);
        Some(p)
    }

    /// Links a client to a server; states are already Waiting and Active.
    pub(crate) fn link(&mut self, ct: usize, st: usize) {
        let Some((Conn::Client(c), Conn::Server(s))) = self.conns.get2_mut(ct, st) else {
            return;
        };
        let stats = &mut self.pools.get_mut(s.pool).stats;
        pair((ct, c), (st, s), stats, &mut self.bufs, self.now);
        self.pump(ct, st);
    }

    /// Moves bytes both ways between a linked client and server until neither can move,
    /// then does what the pump's end asks for.
    pub(crate) fn pump(&mut self, ct: usize, st: usize) {
        let Some((Conn::Client(c), Conn::Server(s))) = self.conns.get2_mut(ct, st) else {
            return;
        };
        let CState::Active { pool, .. } = c.state else {
            return;
        };
        let p = self.pools.get_mut(pool);
        // A replication server is its client's alone: as in session pooling.
        let mode = if s.replication.is_some() {
            PoolMode::Session
        } else {
            p.limits.mode
        };
        let mut ctx = Pump {
            bufs: &mut self.bufs,
            stats: &mut p.stats,
            stmts: &mut self.stmts,
            now: self.now,
            mode,
            max_packet: self.cfg.max_packet_size as usize,
            max_prepared: self.cfg.max_prepared_statements as usize,
        };
        match pump(c, s, &mut ctx) {
            PumpEnd::Idle => {}
            PumpEnd::Again => self.later.again.push(ct),
            PumpEnd::Release => self.release(ct, st),
            PumpEnd::CloseClient(why) => self.close_client(ct, why),
            PumpEnd::RemoveServer(why) => self.remove_server(st, &why),
        }
    }

    /// The client's transaction is over: the server goes back to the pool.
    fn release(&mut self, ct: usize, st: usize) {
        let Some((Conn::Client(c), Conn::Server(s))) = self.conns.get2_mut(ct, st) else {
            return;
        };
        let CState::Active { pool, .. } = c.state else {
            return;
        };
        c.set_state(CState::Idle { pool }, self.now);
        // A request that arrived meanwhile asks for a server again, later in this pass:
        // driving the client from here would re-enter the pump that released it. With
        // nothing buffered and nothing left to read, its next event does that, and its
        // buffers go back to the pool now.
        let more = !c.io.unread().is_empty() || c.io.may_read();
        if !more {
            c.io.release_buffers(&mut self.bufs);
        }
        s.unlink();
        s.release_pending = false;
        if self.cfg.server_reset_query_always {
            self.start_reset(st);
        } else {
            self.server_ready(st);
        }
        if more {
            self.later.again.push(ct);
        }
    }

    /// A linked client is going away: keep its server if it is clean, else close it.
    pub(crate) fn client_left_server(&mut self, st: usize, clean: bool, mode: PoolMode) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        s.unlink();
        if s.replication.is_some() {
            return self.remove_server(st, "replication client disconnected");
        }
        let clean = clean
            && s.own == 0
            && s.scan.ready == 0
            && s.scan.at_boundary()
            && s.io.unread().is_empty();
        if !clean {
            return self.remove_server(st, "client disconnect while server was not ready");
        }
        s.release_pending = false;
        if mode == PoolMode::Session || self.cfg.server_reset_query_always {
            self.start_reset(st);
        } else {
            self.server_ready(st);
        }
    }
}
