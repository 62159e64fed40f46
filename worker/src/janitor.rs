//! Periodic maintenance: every timeout, pool minimums, and retries after failed logins.

use crate::client::CState;
use crate::config::Config;
use crate::config::PoolMode;
use crate::conn::Conn;
use crate::pool::{PoolId, Pools};
use crate::relay::TxStatus;
use crate::server::SState;
use crate::shm::Shm;
use slab::Slab;
use std::time::{Duration, Instant};

fn expired(since: Instant, limit: Duration, now: Instant) -> bool {
    !limit.is_zero() && now.duration_since(since) >= limit
}

pub(crate) enum Action {
    ProxyTimeout(usize),
    Client(usize, &'static str),
    Server(usize, &'static str),
    ServerLogin(usize),
    /// An idle server's target_session_attrs check is due.
    RoleCheck(usize),
    Cancel(usize),
    /// A queued client is told it waits (query_wait_notify).
    NotifyQueued(usize),
}

/// What one janitor pass found. Kept between passes so that its lists are reused.
#[derive(Default)]
pub(crate) struct Findings {
    /// What to do, in the order found.
    pub(crate) actions: Vec<Action>,
    /// Pools with a client queued past reserve_pool_timeout.
    pub(crate) reserve_wanted: Vec<PoolId>,
    /// Replication servers per pool: they count in their pool but are no pooled servers.
    pub(crate) replicating: Vec<usize>,
    /// Servers whose auth_query outlasted client_login_timeout: closed after `actions`,
    /// so that their clients, due in the same pass, hear client_login_timeout first and
    /// not the lookup's failure (which would depend on who sits first in the table).
    /// (token, server id): the token may hold another connection by then.
    pub(crate) lookups_over: Vec<(usize, u64)>,
}

/// Looks at every connection's timers and says what is due; changes nothing, so what it
/// finds does not depend on the order it acts in.
pub(crate) fn scan(
    conns: &Slab<Conn>,
    pools: &Pools,
    cfg: &Config,
    shm: &Shm,
    slot: usize,
    now: Instant,
    out: &mut Findings,
) {
    out.actions.clear();
    out.reserve_wanted.clear();
    out.replicating.clear();
    out.replicating.resize(pools.list.len(), 0);
    out.lookups_over.clear();
    let global = cfg.global_timeouts();
    for (t, conn) in conns.iter() {
        match conn {
            Conn::Client(c) => {
                let limits = c.pool().map(|p| &pools.get(p).limits);
                let mode = limits.map(|l| l.mode);
                let tmo = limits.map_or(global, |l| l.timeouts);
                match c.state {
                    CState::Proxy { .. } => {
                        if expired(c.connect_time, cfg.proxy_header_timeout, now) {
                            out.actions.push(Action::ProxyTimeout(t));
                        }
                    }
                    CState::Startup | CState::PeerCancel | CState::Auth(_) => {
                        if expired(c.connect_time, cfg.client_login_timeout, now) {
                            out.actions.push(Action::Client(t, "client_login_timeout"));
                        }
                    }
                    // Waiting for the pool's first server: PgBouncer's words for a
                    // login that PostgreSQL's absence held up, and its queue limit.
                    CState::LoginWait { .. } => {
                        if expired(c.connect_time, cfg.client_login_timeout, now) {
                            out.actions
                                .push(Action::Client(t, "client_login_timeout (server down)"));
                        } else if expired(c.since, tmo.query_wait, now) {
                            out.actions.push(Action::Client(t, "query_wait_timeout"));
                        }
                    }
                    // Waiting for auth_query: a login, and a wait for a server too.
                    CState::Lookup(_) => {
                        if expired(c.connect_time, cfg.client_login_timeout, now) {
                            out.actions.push(Action::Client(t, "client_login_timeout"));
                        } else if expired(c.since, tmo.query_wait, now) {
                            out.actions.push(Action::Client(t, "query_wait_timeout"));
                        }
                    }
                    CState::Idle { .. } | CState::Console => {
                        if expired(c.since, tmo.client_idle, now) {
                            out.actions.push(Action::Client(t, "client_idle_timeout"));
                        }
                    }
                    // A console command waiting for the supervisor: as a query's wait.
                    CState::ConsoleWaiting { .. } => {
                        if expired(c.since, tmo.query_wait, now) {
                            out.actions.push(Action::Client(t, "query_wait_timeout"));
                        }
                    }
                    CState::Waiting { pool: p } => {
                        if expired(c.since, tmo.query_wait, now) {
                            out.actions.push(Action::Client(t, "query_wait_timeout"));
                        } else {
                            if !c.wait_notified && expired(c.since, cfg.query_wait_notify, now) {
                                out.actions.push(Action::NotifyQueued(t));
                            }
                            if expired(c.since, cfg.reserve_pool_timeout, now)
                                || cfg.reserve_pool_timeout.is_zero()
                            {
                                out.reserve_wanted.push(p);
                            }
                        }
                    }
                    CState::Active { .. } => {
                        // PgBouncer's order: query, idle transaction, transaction.
                        let in_tx = c.tx.in_request() || c.tx.status != TxStatus::Idle;
                        if c.tx.in_request() && expired(c.request_time, tmo.query, now) {
                            out.actions.push(Action::Client(t, "query_timeout"));
                        } else if !c.tx.in_request()
                            && c.tx.status != TxStatus::Idle
                            && expired(c.since, tmo.idle_transaction, now)
                        {
                            out.actions
                                .push(Action::Client(t, "idle transaction timeout"));
                        } else if in_tx && expired(c.xact_start, tmo.transaction, now) {
                            out.actions.push(Action::Client(t, "transaction timeout"));
                        } else if !in_tx
                            && mode == Some(PoolMode::Session)
                            && expired(c.since, tmo.client_idle, now)
                        {
                            out.actions.push(Action::Client(t, "client_idle_timeout"));
                        }
                    }
                }
            }
            Conn::Server(s) => {
                if s.replication.is_some() {
                    if let Some(n) = out.replicating.get_mut(s.pool) {
                        *n += 1;
                    }
                }
                match s.state {
                    SState::Connecting(_) | SState::Login(_) => {
                        if expired(s.connect_time, cfg.server_connect_timeout, now) {
                            out.actions.push(Action::ServerLogin(t));
                        }
                    }
                    SState::Idle => {
                        let p = pools.get(s.pool);
                        if s.close_needed || p.obsolete {
                            out.actions.push(Action::Server(t, "obsolete connection"));
                        } else if p.waiting.is_empty() && p.others_starved(shm, slot) {
                            out.actions
                                .push(Action::Server(t, "released for another worker"));
                        } else if s.lifetime_over(cfg.server_lifetime, now) {
                            out.actions.push(Action::Server(t, "server lifetime over"));
                        } else if expired(s.since, cfg.server_idle_timeout, now)
                            && p.total() > p.limits.min
                        {
                            out.actions.push(Action::Server(t, "server idle timeout"));
                        } else if !cfg.server_check_delay.is_zero()
                            && s.role_check_due(p, now, cfg.server_check_delay)
                        {
                            // Found out now, not when a client needs the server: after a
                            // promotion the pool moves before its clients come.
                            out.actions.push(Action::RoleCheck(t));
                        }
                    }
                    // An auth_query that outlasts any login it could serve: its client
                    // has been told by now; the lookup fails and is not cached.
                    SState::Lookup(_) if expired(s.since, cfg.client_login_timeout, now) => {
                        out.lookups_over.push((t, s.id));
                    }
                    SState::Active { .. }
                    | SState::Reset(_)
                    | SState::Lookup(_)
                    | SState::Canceling => {}
                }
            }
            Conn::Cancel(x) => {
                if expired(
                    x.started,
                    cfg.cancel_wait_timeout.max(Duration::from_secs(1)),
                    now,
                ) {
                    out.actions.push(Action::Cancel(t));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, Lookup};
    use crate::config::{LoadBalanceHosts, TargetSessionAttrs};
    use crate::pool::{Limits, Pool, Target};
    use crate::server::{Creds, Server, ServerAddr, ServerLookup};
    use crate::stream::memory::End;
    use crate::stream::{Sock, Stream};

    fn pools() -> Pools {
        let target = Target {
            hosts: vec!["localhost".into()],
            port: 5432,
            dbname: "app".into(),
            user: "auth".into(),
            password: None,
            application_name: None,
            startup_params: Vec::new(),
            load_balance: LoadBalanceHosts::Disable,
            attrs: TargetSessionAttrs::Any,
        };
        let limits = Limits {
            mode: PoolMode::Transaction,
            size: 10,
            min: 0,
            reserve: 0,
            timeouts: Default::default(),
        };
        let mut pools = Pools::default();
        pools.add(Pool::new("app".into(), "auth".into(), target, limits));
        pools
    }

    #[test]
    fn an_overdue_lookup_server_is_closed_after_its_client_wherever_it_sits() {
        // The server running the lookup sits before its client in the table (a slot an
        // earlier connection freed): the client must still be told client_login_timeout,
        // not the lookup's failure, so the server is not among the ordered actions.
        let t0 = Instant::now();
        let mut conns = Slab::new();
        let addr = (ServerAddr::Unix("memory".into()), 0);
        let io = Stream::connecting(Sock::Memory(End::new().0));
        let mut s = Server::connecting(7, io, 0, addr, Creds::None, t0);
        s.state = SState::Lookup(Box::new(ServerLookup {
            client: (1, 8),
            key: ("app".into(), "slow".into()),
            answer: Default::default(),
        }));
        let st = conns.insert(Conn::Server(Box::new(s)));
        let lookup = Lookup {
            pool: 0,
            server: Some(st),
            key: ("app".into(), "slow".into()),
            query: String::new(),
        };
        let state = CState::Lookup(Box::new(lookup));
        let io = Stream::accepted(Sock::Memory(End::new().0));
        let ct = conns.insert(Conn::Client(Box::new(Client::new(8, io, state, None, t0))));
        assert!(st < ct);
        let cfg = Config {
            client_login_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        let shm = Shm::create(1, 16).expect("shared memory");
        let mut found = Findings::default();
        let later = t0 + Duration::from_secs(2);
        scan(&conns, &pools(), &cfg, &shm, 0, later, &mut found);
        assert!(matches!(
            found.actions[..],
            [Action::Client(t, "client_login_timeout")] if t == ct
        ));
        assert_eq!(found.lookups_over, [(st, 7)]);
        // Not due yet: neither is found.
        scan(&conns, &pools(), &cfg, &shm, 0, t0, &mut found);
        assert!(found.actions.is_empty() && found.lookups_over.is_empty());
    }
}
