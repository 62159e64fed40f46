//! What the supervisor (or a signal) asks of a worker: reload, pause, resume, disable,
//! reconnect, the waits of console commands, and shutdown.

use super::{Shutdown, Worker};
use crate::client::CState;
use crate::close::Close;
use crate::config::Config;
use crate::conn::Conn;
use crate::control::{Report, Snapshot, Until};
use crate::logsafe::Escaped;
use crate::pool::{Limits, PoolId, Pools, Target};
use crate::server::SState;
use crate::wire::sqlstate;
use slab::Slab;
use std::sync::Arc;

impl Worker {
    /// Applies a configuration the supervisor validated, without dropping any connection.
    pub(crate) fn reload(&mut self, snap: Snapshot) {
        crate::logfile::reopen();
        let cfg = match Config::from_yaml_str(&snap.config_yaml) {
            Ok(c) => c,
            Err(e) => {
                log::error!("worker {}: reload refused: {e}", self.slot);
                return;
            }
        };
        crate::logfile::follow(cfg.logfile.as_deref());
        self.auth.replace_userlist(snap.userlist.as_deref());
        self.hba = crate::worker::parse_hba(snap.hba.as_deref());
        // Certificates are re-read for new connections; sessions running keep theirs. The
        // supervisor loaded them before sending the reload, so failing here means the files
        // changed since: keep what works.
        match crate::tls::Tls::load(&cfg) {
            Ok(tls) => self.tls = tls,
            Err(e) => log::error!("worker {}: TLS kept as it was: {e}", self.slot),
        }
        if cfg.pkt_buf != self.cfg.pkt_buf {
            // Buffers of the old size are dropped as they come back.
            self.bufs = crate::buf::BufPool::new(cfg.pkt_buf as usize, 4096);
        }
        if cfg.verbose != self.cfg.verbose {
            log::set_max_level(match cfg.verbose {
                0 => log::LevelFilter::Info,
                1 => log::LevelFilter::Debug,
                _ => log::LevelFilter::Trace,
            });
        }
        self.cfg = Arc::new(cfg);
        self.warm_peer_names();
        for id in 0..self.pools.list.len() {
            self.refresh_pool(id);
        }
        log::info!("worker {}: configuration reloaded", self.slot);
    }

    /// Brings one pool in line with the current config: new limits apply at once; a
    /// changed or removed database retires the pool's servers as they come free.
    fn refresh_pool(&mut self, id: PoolId) {
        let p = self.pools.get(id);
        if p.obsolete {
            return;
        }
        let wanted = self.cfg.database(&p.db).and_then(|r| {
            let user = r.entry.user.clone().unwrap_or_else(|| p.user.clone());
            // A pool's servers log in as one user; a forced user change means a new pool.
            (r.entry.user.is_none() || user == p.user).then(|| {
                let target = Target::new(&r, user.clone());
                let limits = Limits::of(&self.cfg, &p.db, &user);
                (target, limits)
            })
        });
        match wanted {
            None => {
                log::info!(
                    "{}/{}: database removed by reload; retiring its pool",
                    Escaped(&p.db),
                    Escaped(&p.user)
                );
                self.pools.unindex(id);
                self.pools.get_mut(id).obsolete = true;
                self.retire_idle_servers(id);
                // Queued clients hear it now, not at query_wait_timeout.
                self.serve_waiting(id);
            }
            Some((target, limits)) => {
                let p = self.pools.get_mut(id);
                p.limits = limits;
                if p.target != target {
                    log::info!(
                        "{}/{}: database changed by reload; reconnecting",
                        Escaped(&p.db),
                        Escaped(&p.user)
                    );
                    p.hosts = vec![Default::default(); target.hosts.len()];
                    p.next_host = 0;
                    p.target = target;
                    p.welcome = None;
                    p.last_failure = None;
                    for (_, c) in self.conns.iter_mut() {
                        if let Conn::Server(s) = c {
                            if s.pool == id {
                                s.close_needed = true;
                                // Its host is not in the new list: its failures and role
                                // checks say nothing about the new hosts.
                                s.host = usize::MAX;
                            }
                        }
                    }
                    self.retire_idle_servers(id);
                }
                self.serve_waiting(id);
            }
        }
    }

    fn retire_idle_servers(&mut self, id: PoolId) {
        let idle = self.pools.get(id).idle.clone();
        for st in idle {
            self.remove_server(st, "configuration changed");
        }
    }

    /// PAUSE (`on`) or RESUME for one database or all. Paused pools queue new requests and
    /// let their servers go as transactions end.
    pub(crate) fn pause(&mut self, db: Option<&str>, on: bool) {
        self.holds.pause(db, on);
        for id in 0..self.pools.list.len() {
            let p = self.pools.get_mut(id);
            if db.is_some_and(|d| d != p.db) {
                continue;
            }
            let on = self.holds.is_paused(&p.db);
            p.paused = on;
            if on {
                self.retire_idle_servers(id);
            } else {
                while let Some(&st) = self.pools.get(id).idle.last() {
                    let Some(ct) = self.next_waiting(id) else {
                        break;
                    };
                    self.set_server_state(st, SState::Active { client: Some(ct) });
                    self.link(ct, st);
                }
                // auth_query lookups queued during the pause, then new servers.
                self.serve_lookups(id);
            }
        }
        log::info!(
            "worker {}: {} {}",
            self.slot,
            if on { "paused" } else { "resumed" },
            Escaped(db.unwrap_or("all databases"))
        );
    }

    /// DISABLE (`on`) or ENABLE: new clients of `db` are refused; those connected stay.
    pub(crate) fn disable(&mut self, db: &str, on: bool) {
        self.holds.disable(db, on);
        log::info!(
            "worker {}: {} {}",
            self.slot,
            if on { "disabled" } else { "enabled" },
            Escaped(db)
        );
    }

    /// RECONNECT: every server of `db` (all databases when None) is closed when it is
    /// next released, idle ones now; new ones are opened as clients need them.
    pub(crate) fn reconnect(&mut self, db: Option<&str>) {
        let mut ids = Vec::new();
        for id in 0..self.pools.list.len() {
            if db.is_none_or(|d| d == self.pools.get(id).db) {
                ids.push(id);
            }
        }
        for (_, c) in self.conns.iter_mut() {
            if let Conn::Server(s) = c {
                if ids.contains(&s.pool) {
                    s.close_needed = true;
                }
            }
        }
        for id in ids {
            self.retire_idle_servers(id);
        }
        log::info!(
            "worker {}: reconnecting servers of {}",
            self.slot,
            Escaped(db.unwrap_or("all databases"))
        );
    }

    /// A console command waits for `until` in every worker; this one answers when it holds.
    pub(crate) fn wait_for(&mut self, req: u32, until: Until) {
        self.console.waits.push((req, until));
        self.check_waits();
    }

    /// Answers the waits whose condition holds now. Called from the loop while any wait.
    pub(crate) fn check_waits(&mut self) {
        let mut i = 0;
        while i < self.console.waits.len() {
            if holds_now(&self.conns, &self.pools, &self.console.waits[i].1) {
                let (req, _) = self.console.waits.swap_remove(i);
                self.report(Report::Rows {
                    req,
                    chunk: Vec::new(),
                    last: true,
                });
            } else {
                i += 1;
            }
        }
    }

    /// Starts a graceful shutdown: no new clients. When `wait_for_clients` (SIGTERM, as
    /// PgBouncer 1.23+), every client keeps being served until it leaves; otherwise
    /// (SIGINT) idle ones go now, the rest when their transaction (session, in session
    /// pooling) ends. Either way shutdown_timeout, when not 0, bounds the wait.
    pub(crate) fn begin_shutdown(&mut self, wait_for_clients: bool) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(Shutdown {
            since: self.now,
            waits_for_clients: wait_for_clients,
            hands_over: false,
        });
        self.close_listeners();
        self.shm
            .worker(self.slot)
            .state
            .store(2, std::sync::atomic::Ordering::Relaxed);
        self.shutdown_step();
    }

    /// One step of a shutdown in progress: closes who may go now; true once nobody is left.
    pub(crate) fn shutdown_step(&mut self) -> bool {
        let Some(Shutdown {
            since,
            waits_for_clients,
            ..
        }) = self.shutdown
        else {
            return false;
        };
        let timeout = self.cfg.shutdown_timeout;
        let overdue = !timeout.is_zero() && self.now.duration_since(since) >= timeout;
        let any_client = self.conns.iter().any(|(_, c)| matches!(c, Conn::Client(_)));
        if waits_for_clients && !overdue && any_client {
            // Clients go on as before, with their servers, until the last one leaves.
            return false;
        }
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for (t, c) in self.conns.iter() {
            match c {
                Conn::Client(c) => {
                    let idle = match c.state {
                        CState::Proxy { .. }
                        | CState::Startup
                        | CState::PeerCancel
                        | CState::Auth(_)
                        | CState::Lookup(_)
                        | CState::LoginWait { .. }
                        | CState::Idle { .. }
                        | CState::Console
                        // A console client waiting on the supervisor (e.g. its SHUTDOWN).
                        | CState::ConsoleWaiting { .. } => true,
                        // Queued for a server: its request is served first.
                        // Linked: mid-transaction, or (transaction pooling) about to be
                        // released with its last answer still being written; it becomes Idle
                        // once released. Sessions last until the client leaves.
                        CState::Waiting { .. } | CState::Active { .. } => false,
                    };
                    if idle || overdue {
                        clients.push(t);
                    }
                }
                Conn::Server(s) if matches!(s.state, SState::Idle) || overdue => servers.push(t),
                _ => {}
            }
        }
        for t in clients {
            self.close_client(
                t,
                Close::Fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "pgbouncers is shutting down".into(),
                ),
            );
        }
        for t in servers {
            self.remove_server(t, "shutting down");
        }
        let any_client = self.conns.iter().any(|(_, c)| matches!(c, Conn::Client(_)));
        if any_client {
            return false;
        }
        let servers: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c, Conn::Server(_)))
            .map(|(t, _)| t)
            .collect();
        for t in servers {
            self.remove_server(t, "shutting down");
        }
        true
    }
}

fn holds_now(conns: &Slab<Conn>, pools: &Pools, until: &Until) -> bool {
    let of = |db: &Option<String>, pool: &str| db.as_deref().is_none_or(|d| d == pool);
    match until {
        // Pools resumed meanwhile no longer hold the PAUSE up.
        Until::Paused(db) => pools
            .list
            .iter()
            .filter(|p| of(db, &p.db))
            .all(|p| !p.paused || p.total() == 0),
        Until::Closed(db) => !conns.iter().any(|(_, c)| {
            matches!(c, Conn::Server(s) if {
                let p = pools.get(s.pool);
                of(db, &p.db) && (s.close_needed || p.obsolete)
            })
        }),
    }
}
