//! The loop's side of servers: launching them, and acting on how their logins, own
//! queries and idle reads end (server.rs): into the pool, to a client, or closed.

use super::followups::Followup;
use super::Worker;
use crate::client::CState;
use crate::close::Close;
use crate::config::{Config, TargetSessionAttrs};
use crate::conn::Conn;
use crate::dns::Lookup;
use crate::pool::{HostLeft, Pool, PoolId, Role, Welcome};
use crate::relay::Scan;
use crate::server::{
    about_host, enter, error_fields, give_back, leave, server_creds, LoginEnd, OwnEnd, OwnQuery,
    SState, Server, ServerAddr, ServerLookup, ROLE_QUERY,
};
use crate::stream::{Sock, Stream};
use crate::wire::fields::ErrorFields;
use crate::wire::sqlstate;
use crate::wire::write;
use std::path::PathBuf;
use std::time::Instant;

/// Whether idle server `st` of `pool` must pass server_check_query (or, for a database
/// with target_session_attrs, its role check) before a client gets it.
pub(crate) fn needs_check(
    conns: &slab::Slab<Conn>,
    st: usize,
    pool: &Pool,
    cfg: &Config,
    now: Instant,
) -> bool {
    matches!(conns.get(st), Some(Conn::Server(s)) if s.needs_check(pool, cfg, now))
}

impl Worker {
    pub(crate) fn server(&mut self, st: usize) -> Option<&mut Server> {
        match self.conns.get_mut(st) {
            Some(Conn::Server(s)) => Some(s),
            _ => None,
        }
    }

    /// Starts one new server connection for a pool; false when a global limit says no or
    /// no host can be tried now. A host whose connection fails at once is marked down and
    /// the next one is tried.
    pub(crate) fn launch_server(&mut self, pool: PoolId) -> bool {
        self.launch_server_for(pool, None)
    }

    /// Starts a server of its own for a replication client, as PgBouncer 1.23+ does.
    pub(crate) fn launch_replication_server(&mut self, pool: PoolId, ct: usize) -> bool {
        let Some(c) = self.client(ct) else {
            return false;
        };
        let Some(r) = c.replication.clone() else {
            return false;
        };
        let id = c.id;
        self.launch_server_for(pool, Some((r, ct, id)))
    }

    fn launch_server_for(
        &mut self,
        pool: PoolId,
        replication: Option<(std::rc::Rc<crate::client::Replication>, usize, u64)>,
    ) -> bool {
        let Some(holds) = self
            .pools
            .get_mut(pool)
            .take_global_places(&self.cfg, &self.shm, self.slot)
        else {
            return false;
        };
        let (host, addr, mut sock) = loop {
            let now = self.now;
            let Some(host) = self.pools.get_mut(pool).pick_host(now) else {
                give_back(&self.shm, self.slot, holds);
                self.no_host_left(pool);
                return false;
            };
            let target = &self.pools.get(pool).target;
            let (name, port) = (target.hosts[host].clone(), target.port);
            let addr = if name.starts_with('/') {
                Ok(ServerAddr::Unix(
                    PathBuf::from(&name).join(format!(".s.PGSQL.{port}")),
                ))
            } else {
                let (max_ttl, nx_ttl) = (self.cfg.dns_max_ttl, self.cfg.dns_nxdomain_ttl);
                match self.dns.lookup(&name, port, self.now, max_ttl, nx_ttl) {
                    Lookup::Ready(a) => Ok(ServerAddr::Tcp(a)),
                    // The resolver thread wakes the loop, which serves this pool again.
                    Lookup::Pending => {
                        give_back(&self.shm, self.slot, holds);
                        return false;
                    }
                    Lookup::Failed(e) => Err(std::io::Error::other(e)),
                }
            };
            match addr.and_then(|a| a.connect().map(|s| (a, s))) {
                Ok((addr, sock)) => break (host, addr, sock),
                Err(e) => {
                    let msg = format!("could not connect to server {name}:{port}: {e}");
                    let err = error_fields(sqlstate::CONNECTION_FAILURE, msg);
                    match self.pools.get_mut(pool).host_failed(
                        host,
                        &err,
                        self.now,
                        self.cfg.server_login_retry,
                    ) {
                        HostLeft::Usable => continue,
                        HostLeft::WrongKind => {
                            give_back(&self.shm, self.slot, holds);
                            self.no_host_fits(pool);
                            return false;
                        }
                        HostLeft::None => {
                            give_back(&self.shm, self.slot, holds);
                            self.pool_login_failed(pool, err, true, true, 0);
                            return false;
                        }
                    }
                }
            }
        };
        if let Sock::Tcp(s) = &sock {
            crate::stream::tune_tcp(s, &self.cfg);
        }
        let entry_key = self.conns.vacant_entry().key();
        if let Err(e) = self.register(entry_key, &mut sock) {
            give_back(&self.shm, self.slot, holds);
            log::warn!("cannot register server socket: {e}");
            return false;
        }
        let creds = server_creds(self.pools.get(pool), &self.auth);
        let io = Stream::connecting(sock);
        let id = self.new_id();
        log::debug!("S-{id}: new connection to {addr}");
        let mut server =
            Server::connecting(id, io, pool, (addr, host), creds, self.now).holding(holds);
        server.replication = replication;
        enter(self.pools.get_mut(pool), entry_key, &server.state, false);
        let st = self.conns.insert(Conn::Server(Box::new(server)));
        debug_assert_eq!(st, entry_key);
        true
    }

    /// No host can take a new server now. When every host is down the pool fails as one
    /// failing host does: server_login_retry spaces the attempts and clients are told.
    /// When some host is up but of the wrong kind, see [`Worker::no_host_fits`].
    fn no_host_left(&mut self, pool: PoolId) {
        let now = self.now;
        let p = self.pools.get(pool);
        if p.other_host_alive(usize::MAX, now) {
            return self.no_host_fits(pool);
        }
        let msg = "no host of the database's host list is up".to_string();
        self.pool_login_failed(
            pool,
            error_fields(sqlstate::CONNECTION_FAILURE, msg),
            true,
            true,
            0,
        );
    }

    /// Hosts are up, but none is of the kind target_session_attrs asks for (a switchover
    /// between the old primary's stop and the standby's promotion): that is no login
    /// failure, so clients waiting for a server keep waiting (query_wait_timeout bounds
    /// it) while each host is checked again after server_login_retry; only clients whose
    /// login needs a first server's greeting are told now.
    fn no_host_fits(&mut self, pool: PoolId) {
        let p = self.pools.get_mut(pool);
        if p.welcome.is_some() || p.login_waiting.is_empty() {
            return;
        }
        let err = p.misfit_error.clone().unwrap_or_else(|| {
            error_fields(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "no host of the database's host list fits target_session_attrs={}",
                    p.target.attrs
                ),
            )
        });
        for (ct, id) in std::mem::take(&mut p.login_waiting) {
            if self.client(ct).is_some_and(|c| c.id == id) {
                self.close_client(ct, Close::Relay(err.clone()));
            }
        }
    }

    pub(crate) fn drive_server(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        match &s.state {
            SState::Connecting(_) => {
                if !s.io.is_writable() {
                    return;
                }
                if let Ok(Some(e)) | Err(e) = s.io.take_error() {
                    let msg = format!("could not connect to server {}: {e}", s.addr);
                    return self
                        .server_login_failed(st, error_fields(sqlstate::CONNECTION_FAILURE, msg));
                }
                if !s.io.is_connected() {
                    return;
                }
                let tls = self.tls.connect.as_ref();
                s.connected(self.pools.get(s.pool), &mut self.bufs, tls);
                self.server_login_io(st);
            }
            SState::Login(_) => self.server_login_io(st),
            SState::Idle => self.idle_server_io(st),
            &SState::Active { client: Some(ct) } => self.pump(ct, st),
            SState::Active { client: None } => {}
            &SState::Reset(what) => self.reset_io(st, what),
            SState::Lookup(_) => self.reset_io(st, OwnQuery::AuthQuery),
            // Quiet until its cancel is done; anything it says now is for nobody.
            SState::Canceling => self.idle_server_io(st),
        }
    }

    /// Reads and answers the server's login messages; acts on how the login ends.
    fn server_login_io(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let required = self.cfg.server_tls_sslmode.required();
        match s.login_io(
            self.pools.get(s.pool),
            &mut self.bufs,
            &mut self.stats,
            required,
        ) {
            LoginEnd::Wait => {}
            LoginEnd::LoggedIn => self.server_logged_in(st),
            LoginEnd::Failed { err, tls } => self.login_failed(st, err, tls),
        }
    }

    /// Login succeeded: remember the welcome, check the role target_session_attrs asks
    /// for, then serve.
    fn server_logged_in(&mut self, st: usize) {
        let now = self.now;
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let pool = s.pool;
        let role = s.logged_in(now);
        if let Some((_, ct, id)) = &s.replication {
            let (ct, id) = (*ct, *id);
            // Its client's own: linked now, without the pool's checks or welcome.
            return self.link_replication(st, ct, id);
        }
        let p = self.pools.get(pool);
        if p.target.attrs == TargetSessionAttrs::Any {
            return self.server_usable(st);
        }
        match role {
            // PostgreSQL 14+ reports both at login: no query needed (libpq's shortcut).
            Some(role) => self.role_known(st, role, true),
            None => self.run_own_query(st, OwnQuery::Role { after_login: true }, ROLE_QUERY),
        }
    }

    /// A replication server logged in: link it to its client, still waiting for it, or
    /// close it when the client has gone.
    fn link_replication(&mut self, st: usize, ct: usize, id: u64) {
        let waiting = self
            .client(ct)
            .is_some_and(|c| c.id == id && matches!(c.state, CState::Waiting { .. }));
        if !waiting {
            return self.remove_server(st, "replication client was closed");
        }
        self.set_server_state(st, SState::Active { client: Some(ct) });
        self.link(ct, st);
    }

    /// A new server logged in and is of the kind the pool wants: the pool is not failing
    /// any more; greet clients waiting for it, run connect_query, serve.
    fn server_usable(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let (pool, host) = (s.pool, s.host);
        let params = s.take_login_params();
        let p = self.pools.get_mut(pool);
        if p.welcome.is_none() {
            p.welcome = Some(Welcome { params });
        }
        p.last_failure = None;
        if let Some(h) = p.hosts.get_mut(host) {
            h.down_until = None;
        }
        let waiting = std::mem::take(&mut p.login_waiting);
        let connect_query = self
            .cfg
            .database(&p.db)
            .and_then(|r| r.entry.connect_query.clone());
        match connect_query {
            // PgBouncer runs it once per new server, before any client sees the server.
            Some(q) => self.run_own_query(st, OwnQuery::Connect, &q),
            None => self.server_ready(st),
        }
        for (ct, id) in waiting {
            if self.client(ct).is_some_and(|c| c.id == id) {
                self.finish_login(ct, pool);
            }
        }
    }

    /// The role check of a server ended: keep it when it fits target_session_attrs (or is
    /// prefer-standby's fallback primary), else close it and skip its host for
    /// server_login_retry, so new servers go to a host of the right kind.
    fn role_known(&mut self, st: usize, role: Role, after_login: bool) {
        let now = self.now;
        let retry = self.cfg.server_login_retry;
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        s.checked_at = now;
        let (pool, host) = (s.pool, s.host);
        let addr = s.addr.to_string();
        let p = self.pools.get_mut(pool);
        let attrs = p.target.attrs;
        let other = p.other_host_up(host, now);
        let fits = role.fits(attrs);
        // prefer-standby takes a primary when no host is left that may be a standby.
        if fits || (attrs == TargetSessionAttrs::PreferStandby && !other) {
            if let Some(h) = p.hosts.get_mut(host).filter(|_| fits) {
                h.misfit_until = None;
            }
            return if after_login {
                self.server_usable(st)
            } else {
                self.server_ready(st)
            };
        }
        if let Some(h) = p.hosts.get_mut(host) {
            h.misfit_until = Some(now + retry);
        }
        let why = format!(
            "server {addr} is {}, not what target_session_attrs={attrs} asks for",
            role.describe()
        );
        p.misfit_error = Some(error_fields(sqlstate::CONNECTION_FAILURE, why.clone()));
        // Removing it serves the waiting clients again, from another host if one may fit.
        self.remove_server(st, &why);
        if after_login && !other {
            self.no_host_fits(pool);
        }
    }

    pub(crate) fn server_login_failed(&mut self, st: usize, err: ErrorFields) {
        self.login_failed(st, err, false)
    }

    /// A server login failed; `tls_refused` when TLS could not be set up with it (no TLS
    /// where it is required, a certificate refused): a configuration to fix, not a
    /// PostgreSQL to wait for, although it is reported as 08006 too.
    fn login_failed(&mut self, st: usize, err: ErrorFields, tls_refused: bool) {
        let Some(s) = self.server(st) else { return };
        if let Some((_, ct, id)) = &s.replication {
            // As PgBouncer: a replication login fails for reasons of its own (no
            // REPLICATION role, no replication line in pg_hba.conf), so only its client
            // hears it; the pool is not marked failing.
            let (ct, id) = (*ct, *id);
            let why = format!("login failed: {}", err.message());
            if self.client(ct).is_some_and(|c| c.id == id) {
                self.close_client(ct, Close::Relay(err));
            }
            return self.remove_server(st, &why);
        }
        let (pool, host) = (s.pool, s.host);
        let remember = !s.missing_creds();
        let tls_refused = tls_refused || s.io.tls_handshaking();
        let not_up = !tls_refused && crate::pool::LoginFailure::says_not_up(&err);
        // A server whose connect_query failed counts as logged in: it serves nobody.
        let counted = usize::from(matches!(s.state, SState::Reset(_) | SState::Lookup(_)));
        if about_host(&err) {
            let why = format!("login failed: {}", err.message());
            match self.pools.get_mut(pool).host_failed(
                host,
                &err,
                self.now,
                self.cfg.server_login_retry,
            ) {
                // Another host is tried at once (removing the server serves the queue
                // again); the pool is not failing while a host is left.
                HostLeft::Usable => return self.remove_server(st, &why),
                HostLeft::WrongKind => {
                    self.remove_server(st, &why);
                    return self.no_host_fits(pool);
                }
                HostLeft::None => {}
            }
        }
        // Record the failure first: removing the server looks for waiting clients, and
        // must not start a new login inside server_login_retry.
        self.pool_login_failed(pool, err.clone(), not_up, remember, counted);
        self.remove_server(st, &format!("login failed: {}", err.message()));
    }

    /// A server login failed: clients waiting for their greeting get the server's error,
    /// and so do clients waiting for a server when no logged-in server could serve them
    /// (PostgreSQL down, the role refused): they hear it now, not at query_wait_timeout.
    /// A pool that never logged in keeps its clients while PostgreSQL is not up
    /// ([`crate::pool::Pool::waits_out`]), as PgBouncer does.
    /// `not_up` says PostgreSQL was not there rather than refusing.
    /// `remember` keeps the error for server_login_retry; a failure that says nothing
    /// of PostgreSQL (this worker lacks the password yet) only goes to who waits now.
    /// `failing` is how many of the pool's logged-in servers are the one that failed.
    pub(crate) fn pool_login_failed(
        &mut self,
        pool: PoolId,
        err: ErrorFields,
        not_up: bool,
        remember: bool,
        failing: usize,
    ) {
        let p = self.pools.get_mut(pool);
        let (db, user, why) = (
            crate::logsafe::Escaped(&p.db),
            crate::logsafe::Escaped(&p.user),
            err.to_string(),
        );
        log::warn!(
            "{db}/{user}: server login failed: {}",
            crate::logsafe::Escaped(&why)
        );
        if remember {
            p.last_failure = Some(crate::pool::LoginFailure {
                at: self.now,
                err: err.clone(),
                not_up,
            });
        }
        if p.waits_out(not_up) {
            // PostgreSQL is not up yet and the pool never logged in: its clients wait,
            // and the janitor tries again every server_login_retry.
            return;
        }
        let mut queued = std::mem::take(&mut p.login_waiting);
        if p.connected() <= failing {
            queued.extend(p.waiting.drain(..));
            // Clients waiting for auth_query on this (auth_user's) pool: a failed lookup,
            // never cached, told in the server's words as PgBouncer does.
            queued.extend(p.lookups.drain(..));
        }
        for (ct, id) in queued {
            if self.client(ct).is_some_and(|c| c.id == id) {
                self.close_client(ct, Close::Relay(err.clone()));
            }
        }
    }

    /// A server is free: give it to the next waiting client or put it in the idle list.
    pub(crate) fn server_ready(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let pool = s.pool;
        let lifetime = self.cfg.server_lifetime;
        if s.replication.is_some() {
            // Never pooled: its client is gone.
            return self.remove_server(st, "replication client was closed");
        }
        if s.close_needed || self.pools.get(pool).obsolete {
            return self.remove_server(st, "obsolete connection");
        }
        if s.lifetime_over(lifetime, self.now) {
            return self.remove_server(st, "server lifetime over");
        }
        if s.cancels > 0 {
            // Back to the pool once PostgreSQL has finished the cancel (cancel_finished).
            return self.set_server_state(st, SState::Canceling);
        }
        if !s.io.unread().is_empty() {
            return self.remove_server(st, "server sent data while idle");
        }
        if !self.cfg.server_check_delay.is_zero()
            && s.role_check_due(
                self.pools.get(s.pool),
                self.now,
                self.cfg.server_check_delay,
            )
        {
            // A busy server is never idle for long: its role is checked as it comes back.
            return self.start_check(st);
        }
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        s.io.release_buffers(&mut self.bufs);
        // Lookups first: a login waits on them, and each is one short query.
        if let Some(ct) = self.next_lookup(pool) {
            return self.run_lookup(st, ct);
        }
        let p = self.pools.get(pool);
        if p.paused || (p.waiting.is_empty() && p.others_starved(&self.shm, self.slot)) {
            // PAUSE lets servers go; a starved worker elsewhere needs this one's place.
            return self.remove_server(st, "released for pause or for another worker");
        }
        self.set_server_state(st, SState::Idle);
        if !self.pools.get(pool).waiting.is_empty() {
            // A waiting client gets it at the end of this loop pass: the answers read in
            // this pass reach their clients back to back before new queries go out.
            self.later.activate(pool);
        }
    }

    /// Moves a server between states, keeping its pool's counts and idle list right.
    pub(crate) fn set_server_state(&mut self, st: usize, new: SState) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let old = std::mem::replace(&mut s.state, new);
        s.since = self.now;
        let p = self.pools.get_mut(s.pool);
        leave(p, st, &old);
        enter(p, st, &s.state, self.cfg.server_round_robin);
    }

    /// Idle servers should say nothing: one that did is closed.
    fn idle_server_io(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        if let Err(why) = s.idle_io(&mut self.bufs) {
            self.remove_server(st, &why);
        }
    }

    /// Runs server_reset_query; the server goes back to the pool when it answers.
    pub(crate) fn start_reset(&mut self, st: usize) {
        let cfg = self.cfg.clone();
        if cfg.server_reset_query.trim().is_empty() {
            return self.server_ready(st);
        }
        if let Some(s) = self.server(st) {
            // DISCARD ALL forgets what was SET and prepared; tracked values come back as
            // ParameterStatus.
            s.params.retain_tracked();
            s.stmts.clear();
        }
        self.run_own_query(st, OwnQuery::Reset, &cfg.server_reset_query);
    }

    /// Sends one of the pooler's own queries; the server goes back to the pool (and to
    /// the next waiting client) once it has answered, or is closed if it failed.
    pub(crate) fn run_own_query(&mut self, st: usize, what: OwnQuery, query: &str) {
        self.set_server_state(st, SState::Reset(what));
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        write::query(s.io.out(&mut self.bufs), query);
        s.own += 1;
        s.scan = Scan::default();
        // Sent and read later in this pass (drive_server): reading here would run what the
        // answer decides inside whoever asked for the query.
        self.later.again.push(st);
    }

    /// Runs server_check_query on an idle server; a waiting client gets it afterwards.
    /// For a database with target_session_attrs the role check runs instead: it proves
    /// the connection alive too, and a server on a host whose role changed (a promotion,
    /// a demotion) is closed.
    pub(crate) fn start_check(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get(st) else {
            return;
        };
        if self.pools.get(s.pool).target.attrs != TargetSessionAttrs::Any {
            return self.run_own_query(st, OwnQuery::Role { after_login: false }, ROLE_QUERY);
        }
        let cfg = self.cfg.clone();
        self.run_own_query(st, OwnQuery::Check, &cfg.server_check_query);
    }

    /// Reads the answer to one of the pooler's own queries; acts on how it ends.
    fn reset_io(&mut self, st: usize, what: OwnQuery) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        match s.own_query_io(what, &mut self.bufs) {
            OwnEnd::Wait => {}
            OwnEnd::Remove(why) => self.remove_server(st, &why),
            OwnEnd::LoginFailed(e) => self.server_login_failed(st, e),
            OwnEnd::LookupDone => self.lookup_done(st),
            OwnEnd::RoleKnown { role, after_login } => self.role_known(st, role, after_login),
            OwnEnd::Ready => self.server_ready(st),
        }
    }

    /// Closes a server connection and forgets it, and its linked client with it. What that
    /// leaves for others (a replication client to tell, an auth_query lookup to fail,
    /// waiting clients to serve) is queued for the loop's follow-ups (followups.rs).
    pub(crate) fn remove_server(&mut self, st: usize, reason: &str) {
        let Some(Conn::Server(s)) = self.conns.get(st) else {
            return;
        };
        log::info!(
            "{}: closing because: {}",
            s.name(&self.pools),
            crate::logsafe::Escaped(reason)
        );
        let client = s.linked_client();
        let pool = s.pool;
        if let (None, Some((_, ct, id))) = (client, &s.replication) {
            // A replication client waits for this server alone: it is told now.
            let (ct, id) = (*ct, *id);
            if self
                .client(ct)
                .is_some_and(|c| c.id == id && c.linked_server().is_none())
            {
                let msg = format!("replication server connection failed: {reason}");
                let why = Close::Fatal(sqlstate::CONNECTION_FAILURE, msg);
                self.later.follow(Followup::CloseClient { ct, id, why });
            }
        }
        if let Some(ct) = client {
            // The linked client goes with it, now: a client linked to a server that is
            // gone must never be pumped. Unlinked first, so the client's close does not
            // hand this server back (it queues nothing).
            if let Some(Conn::Server(s)) = self.conns.get_mut(st) {
                s.unlink();
            }
            let why = Close::Fatal(sqlstate::CONNECTION_FAILURE, "server conn crashed?".into());
            self.close_client(ct, why);
        }
        let Some(Conn::Server(s)) = self.conns.get(st) else {
            return;
        };
        leave(self.pools.get_mut(pool), st, &s.state);
        let mut lookup = None;
        if let Some(Conn::Server(mut s)) = self.conns.try_remove(st) {
            if let SState::Lookup(l) = &s.state {
                lookup = Some(l.client);
            }
            give_back(&self.shm, self.slot, s.holds());
            if !matches!(s.state, SState::Connecting(_)) {
                let mut bye = Vec::with_capacity(5);
                write::terminate(&mut bye);
                let _ = s.io.send(&bye);
            }
            s.io.shutdown();
            s.io.drop_buffers(&mut self.bufs);
        }
        if let Some((ct, id)) = lookup {
            let why = format!("server connection lost: {reason}");
            self.later.follow(Followup::LookupLost { ct, id, why });
        }
        self.later.follow(Followup::ServeWaiting(pool));
    }

    /// Gives idle servers of auth_user's pool to clients waiting for auth_query, and
    /// starts servers for the rest.
    pub(crate) fn serve_lookups(&mut self, pool: PoolId) {
        loop {
            let p = self.pools.get(pool);
            if p.paused || p.obsolete || p.lookups.is_empty() {
                break;
            }
            let Some(&st) = p.idle.last() else { break };
            if needs_check(&self.conns, st, p, &self.cfg, self.now) {
                // Checked first; server_ready then serves the lookups.
                self.start_check(st);
                continue;
            }
            let Some(ct) = self.next_lookup(pool) else {
                break;
            };
            self.run_lookup(st, ct);
        }
        self.serve_waiting(pool);
    }

    /// The next client still waiting for a server to run its auth_query.
    fn next_lookup(&mut self, pool: PoolId) -> Option<usize> {
        let p = self.pools.get_mut(pool);
        if p.paused {
            return None;
        }
        while let Some((ct, id)) = p.lookups.pop_front() {
            if let Some(Conn::Client(c)) = self.conns.get(ct) {
                let queued = matches!(&c.state, CState::Lookup(l) if l.server.is_none());
                if c.id == id && queued {
                    return Some(ct);
                }
            }
        }
        None
    }

    /// Sends a client's auth_query on a free server: the user name as `$1` of the
    /// extended protocol. The answer comes back through `reset_io`.
    fn run_lookup(&mut self, st: usize, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let CState::Lookup(l) = &mut c.state else {
            return;
        };
        l.server = Some(st);
        let lookup = Box::new(ServerLookup {
            client: (ct, c.id),
            key: l.key.clone(),
            answer: Default::default(),
        });
        let query = std::mem::take(&mut l.query);
        let user = c.user.clone();
        self.set_server_state(st, SState::Lookup(lookup));
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        crate::auth_query::write_request(s.io.out(&mut self.bufs), &query, &user);
        s.own += 1;
        s.scan = Scan::default();
        // Sent and read later in this pass, as run_own_query's.
        self.later.again.push(st);
    }

    /// The auth_query's ReadyForQuery came: cache what it found (a failure never), give
    /// the server back, and go on with the client's login.
    fn lookup_done(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        s.scan = Scan::default();
        // Taken out of the state, which server_ready replaces.
        let SState::Lookup(l) = &mut s.state else {
            return self.server_ready(st);
        };
        let (client, key) = (l.client, std::mem::take(&mut l.key));
        let result = std::mem::take(&mut l.answer).finish();
        if let Ok(found) = &result {
            let ttl = self.cfg.auth_query_cache_ttl;
            self.auth.lookups.put(key, self.now, ttl, found.clone());
        }
        self.server_ready(st);
        self.lookup_answered(client.0, client.1, result);
    }

    /// Ends a client's wait for auth_query: its login goes on with what was found, or it
    /// is closed when the lookup failed (PgBouncer's words to a client whose login server
    /// went away; the log says why).
    pub(crate) fn lookup_answered(
        &mut self,
        ct: usize,
        id: u64,
        result: Result<crate::auth_query::Found, String>,
    ) {
        let now = self.now;
        let waiting = self
            .client(ct)
            .filter(|c| c.id == id && matches!(c.state, CState::Lookup(_)));
        let Some(c) = waiting else {
            if let Err(why) = result {
                log::warn!("auth_query failed: {}", crate::logsafe::Escaped(&why));
            }
            return;
        };
        c.set_state(CState::Startup, now);
        match result {
            Ok(found) => {
                c.found = Some(Box::new(found));
                self.begin_auth(ct);
                self.later.again.push(ct);
            }
            Err(why) => {
                log::warn!(
                    "{}: auth_query failed: {}",
                    c.name(),
                    crate::logsafe::Escaped(&why)
                );
                let msg = "server conn crashed?".to_string();
                self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            }
        }
    }
}
