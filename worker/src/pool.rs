//! Pools of server connections, one per (database, server user): sizes, queues and welcome.

use crate::wire::fields::ErrorFields;
use crate::wire::sqlstate;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub type PoolId = usize;

pub use crate::config::PoolMode;
use crate::config::{LoadBalanceHosts, ResolvedDb, TargetSessionAttrs};

/// Where and as whom a pool's servers log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host names, IP addresses, or directories holding PostgreSQL's Unix socket: the
    /// configured `host`, split at its commas.
    pub hosts: Vec<String>,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// The database entry's password, which wins over the auth file.
    pub password: Option<String>,
    /// The database entry's application_name, sent in the server's startup packet.
    pub application_name: Option<String>,
    /// The database entry's client_encoding, DateStyle and TimeZone, also sent in the
    /// startup packet (PgBouncer's "ask specific ... from server").
    pub startup_params: Vec<(&'static str, String)>,
    pub load_balance: LoadBalanceHosts,
    /// The kind of server (primary, standby...) the pool's servers must be on.
    pub attrs: TargetSessionAttrs,
}

impl Target {
    /// The target of a resolved database entry, logging in as `user`.
    pub fn new(resolved: &ResolvedDb, user: String) -> Target {
        let entry = &resolved.entry;
        Target {
            hosts: entry.hosts(),
            port: entry.port,
            dbname: resolved.dbname.clone(),
            // A forced user's password is that user's: not for auth_user's pool there.
            password: match &entry.user {
                Some(forced) if *forced != user => None,
                _ => entry.password.as_ref().map(|p| p.expose().to_string()),
            },
            user,
            application_name: entry.application_name.clone(),
            startup_params: [
                ("client_encoding", &entry.client_encoding),
                ("DateStyle", &entry.datestyle),
                ("TimeZone", &entry.timezone),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect(),
            load_balance: entry.load_balance_hosts.unwrap_or_default(),
            attrs: entry.target_session_attrs.unwrap_or_default(),
        }
    }
}

/// What a server's role check found: PostgreSQL's recovery state and session default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// `pg_is_in_recovery()`: a standby.
    pub in_recovery: bool,
    /// `transaction_read_only` of a new session: a standby, or default_transaction_read_only.
    pub read_only: bool,
}

impl Role {
    /// Whether a server of this role is what `attrs` asks for. prefer-standby asks for
    /// a standby; [`Pool::pick_host`] falls back to a primary when no standby is up.
    pub fn fits(self, attrs: TargetSessionAttrs) -> bool {
        match attrs {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::ReadWrite => !self.read_only,
            TargetSessionAttrs::ReadOnly => self.read_only,
            TargetSessionAttrs::Primary => !self.in_recovery,
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => self.in_recovery,
        }
    }

    /// How the role is described in logs and errors.
    pub fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby",
            (false, true) => "a read-only primary",
            (false, false) => "a read-write primary",
        }
    }
}

/// What a pool knows of one host of its list.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    /// Connecting or logging in failed for a reason of the host's: skipped until then
    /// (server_login_retry later).
    pub down_until: Option<Instant>,
    /// Its role check found the wrong kind of server: skipped until then, except by
    /// prefer-standby's fallback to a primary.
    pub misfit_until: Option<Instant>,
}

impl HostState {
    fn down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|t| now < t)
    }

    fn misfit(&self, now: Instant) -> bool {
        self.misfit_until.is_some_and(|t| now < t)
    }
}

/// What a pool's first server login reported: what new clients are told at login.
#[derive(Debug, Clone, Default)]
pub struct Welcome {
    pub params: Vec<(String, String)>,
}

/// Limits of one pool, resolved from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub mode: PoolMode,
    pub size: usize,
    pub min: usize,
    pub reserve: usize,
    /// Its clients' timeouts: per user and per database over the global ones.
    pub timeouts: crate::config::Timeouts,
}

impl Limits {
    /// What the config gives the pool of `db` whose servers log in as `user`.
    pub fn of(cfg: &crate::config::Config, db: &str, user: &str) -> Limits {
        Limits {
            mode: cfg.pool_mode_for(db, user),
            size: cfg.pool_size_for(db, user) as usize,
            min: cfg.min_pool_size_for(db, user) as usize,
            reserve: cfg.reserve_pool_size_for(db, user) as usize,
            timeouts: cfg.timeouts_for(db, user),
        }
    }
}

pub struct Pool {
    /// The database name clients ask for.
    pub db: String,
    /// The user servers log in as (the client's, or the database's forced user).
    pub user: String,
    /// The database entry forces `user`: the pool needs no client to know its login,
    /// so it is made at start and kept at min_pool_size from then on, as in PgBouncer.
    pub forced: bool,
    pub target: Target,
    /// One entry per host of `target.hosts`.
    pub hosts: Vec<HostState>,
    /// The host round-robin starts its search at next.
    pub next_host: usize,
    pub limits: Limits,
    /// Idle servers, most recently used last (reused first, so the rest can time out).
    pub idle: Vec<usize>,
    /// Clients waiting for a server: (token, client id); stale entries are skipped.
    pub waiting: VecDeque<(usize, u64)>,
    /// Clients waiting for the welcome of a first server login.
    pub login_waiting: Vec<(usize, u64)>,
    /// Clients waiting for a server to run their auth_query (this is auth_user's pool).
    pub lookups: VecDeque<(usize, u64)>,
    /// The password auth_query last found for `user`, for server logins when the auth
    /// file has none: what PgBouncer keeps in its per-database user.
    pub auth_secret: Option<crate::auth::Secret>,
    pub active: usize,
    /// Servers connecting or logging in.
    pub launching: usize,
    /// Servers running the reset query.
    pub resetting: usize,
    /// Released servers waiting for a cancel request to finish.
    pub canceling: usize,
    pub welcome: Option<Welcome>,
    /// The last server login failure, for server_login_retry.
    pub last_failure: Option<LoginFailure>,
    /// Why the last role check refused a server (target_session_attrs), for clients
    /// that cannot be greeted while no host is of the right kind.
    pub misfit_error: Option<ErrorFields>,
    pub paused: bool,
    /// A reload removed or changed the database: serve who is here, then go.
    pub obsolete: bool,
    pub stats: crate::stats::PoolStats,
    /// Shared-memory indexes of the database and server user, for global limits and stats.
    pub db_idx: Option<usize>,
    pub user_idx: Option<usize>,
    /// This worker is waiting for another to free a server (counted in shared memory).
    pub starved: bool,
}

impl Pool {
    pub fn new(db: String, user: String, target: Target, limits: Limits) -> Pool {
        Pool {
            db,
            user,
            forced: false,
            hosts: vec![HostState::default(); target.hosts.len()],
            next_host: 0,
            target,
            limits,
            idle: Vec::new(),
            waiting: VecDeque::new(),
            login_waiting: Vec::new(),
            lookups: VecDeque::new(),
            auth_secret: None,
            active: 0,
            launching: 0,
            resetting: 0,
            canceling: 0,
            welcome: None,
            last_failure: None,
            misfit_error: None,
            paused: false,
            obsolete: false,
            stats: Default::default(),
            db_idx: None,
            user_idx: None,
            starved: false,
        }
    }

    /// Every server this pool holds, whatever its state.
    pub fn total(&self) -> usize {
        self.idle.len() + self.active + self.launching + self.resetting + self.canceling
    }

    /// Servers that finished logging in, whatever they are doing now.
    pub fn connected(&self) -> usize {
        self.total() - self.launching
    }

    /// The error to give a client at once instead of a wait: the last server login failed
    /// inside server_login_retry, nothing is logged in, and no retry is under way, so
    /// nothing could serve it before the window ends. PgBouncer's fast fail.
    /// A pool that never logged in fails nobody fast while PostgreSQL is merely not up:
    /// see [`Pool::waits_out`].
    pub fn fast_fail(&self, now: Instant, login_retry: std::time::Duration) -> Option<String> {
        let LoginFailure { at, err, not_up } = self.last_failure.as_ref()?;
        if self.waits_out(*not_up) {
            return None;
        }
        let failing = now.duration_since(*at) < login_retry;
        (failing && self.connected() == 0 && self.launching == 0).then(|| {
            format!(
                "server login has been failing, cached error: {} (server_login_retry)",
                err.message()
            )
        })
    }

    /// How this pool serves a request of one of its clients now (links.rs
    /// `request_server` carries it out). `check`: the newest idle server, if any, must pass
    /// server_check_query before it is used. Always inlined: it runs once per transaction,
    /// and out of line the call and its returned enum cost about 50 instructions of the
    /// transaction's 4,600 (callgrind); `#[inline]` alone left it out.
    #[inline(always)]
    pub fn serve(&self, now: Instant, login_retry: Duration, check: bool) -> Serve {
        if self.paused {
            return Serve::Queue;
        }
        if !self.idle.is_empty() && !self.waiting.is_empty() {
            return Serve::Behind;
        }
        if let Some(&st) = self.idle.last() {
            return match check {
                true => Serve::Check(st),
                false => Serve::Link(st),
            };
        }
        match self.fast_fail(now, login_retry) {
            Some(msg) => Serve::Refuse(msg),
            None => Serve::Queue,
        }
    }

    /// Whether clients waiting for this pool's first server keep waiting through a
    /// failure: the pool never logged in and PostgreSQL is not up (yet) (`not_up`, see
    /// [`LoginFailure::not_up`]). PgBouncer keeps such
    /// clients until client_login_timeout or query_wait_timeout and serves them when
    /// PostgreSQL comes up, which is what a pooler started before its database needs.
    /// Once a pool has logged in, the same failure is told at once (see `fast_fail`).
    pub fn waits_out(&self, not_up: bool) -> bool {
        self.welcome.is_none() && not_up
    }

    /// Whether a new server may be started now: below the pool size (or the reserve when
    /// `use_reserve`), and not inside server_login_retry after a failure.
    pub fn may_launch(
        &self,
        use_reserve: bool,
        now: Instant,
        login_retry: std::time::Duration,
    ) -> bool {
        let cap = self.limits.size + if use_reserve { self.limits.reserve } else { 0 };
        if self.total() >= cap {
            return false;
        }
        match &self.last_failure {
            Some(f) => now.duration_since(f.at) >= login_retry,
            None => true,
        }
    }
}

impl Pool {
    /// The host of the list a new server should go to: the next one (round-robin) or the
    /// first one (disable) that is neither down nor known to be the wrong kind; for
    /// prefer-standby a primary when no other host is left. None when every host is
    /// skipped: the pool then waits out server_login_retry like a single failing host.
    pub fn pick_host(&mut self, now: Instant) -> Option<usize> {
        let n = self.hosts.len();
        let start = match self.target.load_balance {
            LoadBalanceHosts::RoundRobin => self.next_host % n.max(1),
            LoadBalanceHosts::Disable => 0,
        };
        let order = (0..n).map(|i| (start + i) % n);
        let found = order
            .clone()
            .find(|&h| !self.hosts[h].down(now) && !self.hosts[h].misfit(now))
            .or_else(|| {
                (self.target.attrs == TargetSessionAttrs::PreferStandby)
                    .then(|| order.clone().find(|&h| !self.hosts[h].down(now)))
                    .flatten()
            })?;
        if self.target.load_balance == LoadBalanceHosts::RoundRobin {
            self.next_host = found + 1;
        }
        Some(found)
    }

    /// Whether a host other than `host` may be of the kind wanted: not down, not known
    /// to be the wrong kind.
    pub fn other_host_up(&self, host: usize, now: Instant) -> bool {
        self.hosts
            .iter()
            .enumerate()
            .any(|(i, h)| i != host && !h.down(now) && !h.misfit(now))
    }

    /// Whether a host other than `host` is not down, whatever its kind: while one is, the
    /// pool waits for it to become the right kind (a standby being promoted) instead of
    /// failing.
    pub fn other_host_alive(&self, host: usize, now: Instant) -> bool {
        self.hosts
            .iter()
            .enumerate()
            .any(|(i, h)| i != host && !h.down(now))
    }

    /// Whether another worker waits for capacity this pool's servers hold. This worker's
    /// own waiting clients get its servers first, so its own mark never counts.
    pub fn others_starved(&self, shm: &crate::shm::Shm, slot: usize) -> bool {
        let now = crate::shm::unix_ms();
        [self.db_idx, self.user_idx]
            .into_iter()
            .flatten()
            .any(|i| shm.is_starved_elsewhere(slot, i, now))
    }

    /// Takes this pool's places under max_db_connections and max_user_connections, which
    /// hold for the whole pooler. On refusal the pool is marked starved so other workers
    /// hand back idle servers.
    pub fn take_global_places(
        &mut self,
        cfg: &crate::config::Config,
        shm: &crate::shm::Shm,
        slot: usize,
    ) -> Option<(Option<usize>, Option<usize>)> {
        let (db_idx, user_idx) = (self.db_idx, self.user_idx);
        let db_limit = cfg.max_db_connections_for(&self.db);
        let user_limit = cfg.max_user_connections_for(&self.user);
        let got_db = db_idx.is_none_or(|i| shm.acquire(slot, i, db_limit));
        let got_user = got_db && user_idx.is_none_or(|i| shm.acquire(slot, i, user_limit));
        if got_db && got_user {
            self.no_longer_starved(shm, slot);
            return Some((db_idx, user_idx));
        }
        if got_db {
            if let Some(i) = db_idx {
                shm.release(slot, i);
            }
        }
        let until = crate::shm::unix_ms() + 1000;
        let blocked = if got_db { user_idx } else { db_idx };
        if let Some(i) = blocked {
            shm.mark_starved(slot, i, until);
        }
        if !self.starved {
            log::info!(
                "{}/{}: max_db_connections or max_user_connections reached; clients wait",
                crate::logsafe::Escaped(&self.db),
                crate::logsafe::Escaped(&self.user)
            );
            self.starved = true;
        }
        None
    }

    /// This pool got its server, or has nobody waiting: withdraw its starved mark.
    pub fn no_longer_starved(&mut self, shm: &crate::shm::Shm, slot: usize) {
        if self.starved {
            self.starved = false;
            for i in [self.db_idx, self.user_idx].into_iter().flatten() {
                shm.clear_starved(slot, i);
            }
        }
    }

    /// A host of the pool failed for a reason of its own (no connection, PostgreSQL
    /// starting or stopping): it is skipped for server_login_retry. Says what is left.
    pub fn host_failed(
        &mut self,
        host: usize,
        err: &ErrorFields,
        now: Instant,
        retry: Duration,
    ) -> HostLeft {
        let Some(state) = self.hosts.get_mut(host) else {
            // A server of the host list before a reload: nothing to learn.
            return HostLeft::Usable;
        };
        state.down_until = Some(now + retry);
        let left = if self.other_host_usable(host, now) {
            HostLeft::Usable
        } else if self.other_host_alive(host, now) {
            HostLeft::WrongKind
        } else {
            HostLeft::None
        };
        if left != HostLeft::None {
            log::warn!(
                "{}/{}: host {} skipped for server_login_retry: {}",
                crate::logsafe::Escaped(&self.db),
                crate::logsafe::Escaped(&self.user),
                crate::logsafe::Escaped(&self.target.hosts[host]),
                crate::logsafe::Escaped(&err.to_string())
            );
        }
        left
    }

    /// Whether a host other than `host` could serve a new server now: as
    /// [`Pool::other_host_up`], but prefer-standby also takes a primary.
    pub fn other_host_usable(&self, host: usize, now: Instant) -> bool {
        let any_kind = self.target.attrs == TargetSessionAttrs::PreferStandby;
        self.hosts
            .iter()
            .enumerate()
            .any(|(i, h)| i != host && !h.down(now) && (any_kind || !h.misfit(now)))
    }
}

/// What is left of a pool's host list once a host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostLeft {
    /// Another host may take a new server now.
    Usable,
    /// Other hosts are up but of the wrong kind for target_session_attrs.
    WrongKind,
    /// Every host is down: the pool's login fails.
    None,
}

/// All pools of a worker, found by (database, server user).
#[derive(Default)]
pub struct Pools {
    pub list: Vec<Pool>,
    index: HashMap<(String, String), PoolId>,
}

impl Pools {
    pub fn find(&self, db: &str, user: &str) -> Option<PoolId> {
        self.index.get(&(db.to_string(), user.to_string())).copied()
    }

    pub fn add(&mut self, pool: Pool) -> PoolId {
        let id = self.list.len();
        self.index.insert((pool.db.clone(), pool.user.clone()), id);
        self.list.push(pool);
        id
    }

    /// Forgets the index entry so later logins build a fresh pool for the same key.
    pub fn unindex(&mut self, id: PoolId) {
        let p = &self.list[id];
        let key = (p.db.clone(), p.user.clone());
        if self.index.get(&key) == Some(&id) {
            self.index.remove(&key);
        }
    }

    pub fn get(&self, id: PoolId) -> &Pool {
        &self.list[id]
    }

    pub fn get_mut(&mut self, id: PoolId) -> &mut Pool {
        &mut self.list[id]
    }
}

/// What a new pool is made from: the config, PAUSE and DISABLE in force, and the
/// shared-memory name table its global limits and counters are kept under.
#[derive(Clone, Copy)]
pub struct Setting<'a>(
    pub &'a crate::config::Config,
    pub &'a crate::control::Holds,
    pub &'a crate::shm::Shm,
);

impl Pools {
    /// The pool for a client's database and user, made on first use from the config.
    pub fn for_client(&mut self, at: Setting<'_>, db: &str, user: &str) -> Result<PoolId, String> {
        let resolved =
            at.0.database(db)
                .ok_or_else(|| format!("no such database: {db}"))?;
        let server_user = resolved
            .entry
            .user
            .clone()
            .unwrap_or_else(|| user.to_string());
        self.with_user(at, db, server_user, resolved)
    }

    /// The pool of `auth_user` in database `db`, whatever user the database forces, as
    /// PgBouncer's auth pool: auth_query runs on its servers.
    pub fn for_auth(
        &mut self,
        at: Setting<'_>,
        db: &str,
        auth_user: &str,
    ) -> Result<PoolId, String> {
        let resolved =
            at.0.database(db)
                .ok_or_else(|| format!("no such database: {db}"))?;
        self.with_user(at, db, auth_user.to_string(), resolved)
    }

    fn with_user(
        &mut self,
        at: Setting<'_>,
        db: &str,
        server_user: String,
        resolved: crate::config::ResolvedDb,
    ) -> Result<PoolId, String> {
        if let Some(id) = self.find(db, &server_user) {
            return Ok(id);
        }
        let limits = Limits::of(at.0, db, &server_user);
        let target = Target::new(&resolved, server_user.clone());
        let mut pool = Pool::new(db.to_string(), server_user, target, limits);
        pool.forced = resolved.entry.user.as_ref() == Some(&pool.user);
        pool.paused = at.1.is_paused(db);
        pool.db_idx = at.2.name_index(crate::shm::Kind::Database, db);
        pool.user_idx = at.2.name_index(crate::shm::Kind::User, &pool.user);
        Ok(self.add(pool))
    }

    /// Every pool's counters added up, in total and per database, and the servers open.
    pub fn totals(&self) -> crate::stats::Totals {
        let mut t = crate::stats::Totals::default();
        for p in &self.list {
            t.all.add(&p.stats);
            t.servers += p.total() as u64;
            if let Some(i) = p.db_idx {
                t.by_db.entry(i).or_default().add(&p.stats);
            }
        }
        t
    }
}

/// What a pool does with a request of one of its clients (`Pool::serve`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Serve {
    /// Link the client to this idle server now.
    Link(usize),
    /// Queue the client for this idle server, which runs server_check_query first.
    Check(usize),
    /// Queue the client behind those already waiting: servers that came free during this
    /// loop pass go to them first, at its end.
    Behind,
    /// Queue the client; servers start if the pool has room (none while it is paused).
    Queue,
    /// Refuse the client at once: the pool's server logins are failing (fast fail).
    Refuse(String),
}

/// A failed server login, kept for server_login_retry.
#[derive(Clone, Debug)]
pub struct LoginFailure {
    pub at: Instant,
    pub err: ErrorFields,
    /// PostgreSQL was not there rather than refusing: see [`LoginFailure::says_not_up`].
    pub not_up: bool,
}

impl LoginFailure {
    /// Whether a failure's SQLSTATE says PostgreSQL is not there: no connection or no
    /// answer in time (class 08, as the pooler reports a refused or timed-out connect),
    /// or a server starting up or shutting down (57P01-57P03). A refused role or
    /// password is an answer, and is told at once; so is a failed TLS handshake, which
    /// the caller knows apart (it is reported as 08006 too, but waiting will not fix it).
    pub fn says_not_up(err: &ErrorFields) -> bool {
        let code = err.code();
        code.starts_with("08")
            || matches!(
                code,
                sqlstate::ADMIN_SHUTDOWN | "57P02" | sqlstate::CANNOT_CONNECT_NOW
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(hosts: &[&str], balance: LoadBalanceHosts, attrs: TargetSessionAttrs) -> Pool {
        let target = Target {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            port: 5432,
            dbname: "app".into(),
            user: "u".into(),
            password: None,
            application_name: None,
            startup_params: Vec::new(),
            load_balance: balance,
            attrs,
        };
        let limits = Limits {
            mode: PoolMode::Session,
            size: 10,
            min: 0,
            reserve: 0,
            timeouts: Default::default(),
        };
        Pool::new("app".into(), "u".into(), target, limits)
    }

    const RETRY: Duration = Duration::from_secs(15);

    #[test]
    fn a_request_is_linked_checked_queued_or_refused_as_the_pool_stands() {
        let now = Instant::now();
        let mut p = pool(&["h"], LoadBalanceHosts::Disable, TargetSessionAttrs::Any);
        // Nothing idle, nothing failing: wait while a server starts.
        assert_eq!(p.serve(now, RETRY, false), Serve::Queue);
        // The newest idle server goes first, checked when it sat long enough.
        p.idle = vec![3, 4];
        assert_eq!(p.serve(now, RETRY, false), Serve::Link(4));
        assert_eq!(p.serve(now, RETRY, true), Serve::Check(4));
        // Servers freed this pass go to the clients queued before this one.
        p.waiting.push_back((9, 1));
        assert_eq!(p.serve(now, RETRY, false), Serve::Behind);
        // PAUSE holds every request in the queue, idle servers or not.
        p.paused = true;
        assert_eq!(p.serve(now, RETRY, false), Serve::Queue);
        // A login that failed inside server_login_retry, with nothing up: PgBouncer's
        // fast fail, once the pool had logged in before.
        p.paused = false;
        p.idle.clear();
        p.waiting.clear();
        p.welcome = Some(Welcome { params: Vec::new() });
        p.last_failure = Some(LoginFailure {
            at: now,
            err: ErrorFields {
                message: Some("password authentication failed".into()),
                ..Default::default()
            },
            not_up: false,
        });
        match p.serve(now, RETRY, false) {
            Serve::Refuse(msg) => assert_eq!(
                msg,
                "server login has been failing, cached error: password authentication \
                 failed (server_login_retry)"
            ),
            other => panic!("not refused: {other:?}"),
        }
        // Past the window, the request waits for a new login instead.
        assert_eq!(p.serve(now + RETRY, RETRY, false), Serve::Queue);
    }

    #[test]
    fn a_failed_host_is_skipped_and_says_what_is_left() {
        let now = Instant::now();
        let err = ErrorFields::default();
        let mut p = pool(
            &["a", "b"],
            LoadBalanceHosts::RoundRobin,
            Default::default(),
        );
        assert_eq!(p.host_failed(0, &err, now, RETRY), HostLeft::Usable);
        assert_eq!(p.hosts[0].down_until, Some(now + RETRY));
        // The other host is up but of the wrong kind: the pool waits for it.
        p.hosts[1].misfit_until = Some(now + RETRY);
        assert_eq!(p.host_failed(0, &err, now, RETRY), HostLeft::WrongKind);
        assert_eq!(p.host_failed(1, &err, now, RETRY), HostLeft::None);
        // A host index from before a reload changed the list teaches nothing.
        assert_eq!(p.host_failed(7, &err, now, RETRY), HostLeft::Usable);
        assert_eq!(
            p.pick_host(now + RETRY),
            Some(0),
            "back after server_login_retry"
        );
    }

    #[test]
    fn round_robin_skips_hosts_that_are_down_until_their_retry() {
        let now = Instant::now();
        let mut p = pool(
            &["a", "b", "c"],
            LoadBalanceHosts::RoundRobin,
            Default::default(),
        );
        let picks: Vec<_> = (0..4).map(|_| p.pick_host(now).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        p.hosts[1].down_until = Some(now + RETRY);
        let picks: Vec<_> = (0..3).map(|_| p.pick_host(now).unwrap()).collect();
        assert_eq!(picks, [2, 0, 2]);
        assert!(p.other_host_up(1, now));
        assert_eq!(p.pick_host(now + RETRY), Some(0));
        assert_eq!(p.pick_host(now + RETRY), Some(1));
        p.hosts[0].down_until = Some(now + RETRY);
        p.hosts[2].down_until = Some(now + RETRY);
        assert!(!p.other_host_up(1, now));
        assert_eq!(p.pick_host(now), None, "every host down");
    }

    #[test]
    fn disable_takes_the_first_host_up() {
        let now = Instant::now();
        let mut p = pool(&["a", "b"], LoadBalanceHosts::Disable, Default::default());
        assert_eq!(p.pick_host(now), Some(0));
        assert_eq!(p.pick_host(now), Some(0));
        p.hosts[0].down_until = Some(now + RETRY);
        assert_eq!(p.pick_host(now), Some(1));
        assert_eq!(
            p.pick_host(now + RETRY),
            Some(0),
            "back to the first once it is due"
        );
    }

    #[test]
    fn roles_fit_target_session_attrs_and_prefer_standby_falls_back() {
        use TargetSessionAttrs::*;
        let primary = Role {
            in_recovery: false,
            read_only: false,
        };
        let standby = Role {
            in_recovery: true,
            read_only: true,
        };
        let ro_primary = Role {
            in_recovery: false,
            read_only: true,
        };
        for (attrs, p, s, rp) in [
            (Any, true, true, true),
            (ReadWrite, true, false, false),
            (ReadOnly, false, true, true),
            (Primary, true, false, true),
            (Standby, false, true, false),
            (PreferStandby, false, true, false),
        ] {
            assert_eq!(primary.fits(attrs), p, "{attrs}");
            assert_eq!(standby.fits(attrs), s, "{attrs}");
            assert_eq!(ro_primary.fits(attrs), rp, "{attrs}");
        }
        let now = Instant::now();
        let mut p = pool(
            &["primary", "standby"],
            LoadBalanceHosts::Disable,
            PreferStandby,
        );
        p.hosts[0].misfit_until = Some(now + RETRY);
        assert_eq!(p.pick_host(now), Some(1), "a standby first");
        p.hosts[1].down_until = Some(now + RETRY);
        assert_eq!(
            p.pick_host(now),
            Some(0),
            "the primary when no standby is up"
        );
        assert!(p.other_host_usable(1, now) && !p.other_host_up(1, now));
        let mut rw = pool(
            &["primary", "standby"],
            LoadBalanceHosts::Disable,
            ReadWrite,
        );
        rw.hosts[0].misfit_until = Some(now + RETRY);
        rw.hosts[1].down_until = Some(now + RETRY);
        assert_eq!(rw.pick_host(now), None, "read-write takes no misfit");
    }
}
