//! The loop's side of the janitor: acting on what janitor::scan found at each tick, and
//! keeping every pool at its configured sizes.

use super::Worker;
use crate::client::CState;
use crate::close::Close;
use crate::conn::Conn;
use crate::janitor::{scan, Action};
use crate::logsafe::Escaped;
use crate::server::SState;
use crate::wire::fields::ErrorFields;
use crate::wire::sqlstate;

impl Worker {
    /// Looks at every connection's timers, then at every pool's needs.
    pub(crate) fn janitor(&mut self) {
        let mut found = std::mem::take(&mut self.janitor_scratch);
        scan(
            &self.conns,
            &self.pools,
            &self.cfg,
            &self.shm,
            self.slot,
            self.now,
            &mut found,
        );
        for a in found.actions.drain(..) {
            match a {
                Action::ProxyTimeout(t) => self.proxy_reject(
                    t,
                    crate::proxy::Rejection::Timeout,
                    "no complete PROXY header within proxy_header_timeout".into(),
                ),
                Action::Client(t, why) => self.close_client(
                    t,
                    Close::Fatal(sqlstate::PROTOCOL_VIOLATION, why.to_string()),
                ),
                Action::Server(t, why) => self.remove_server(t, why),
                Action::ServerLogin(t) => {
                    let err = ErrorFields {
                        severity: Some("FATAL".into()),
                        code: Some(sqlstate::CONNECTION_FAILURE.into()),
                        message: Some("server_connect_timeout".into()),
                        detail: None,
                    };
                    self.server_login_failed(t, err);
                }
                Action::Cancel(t) => self.cancel_done(t),
                Action::NotifyQueued(t) => self.notify_queued(t),
                // Only if an earlier action did not give it to a client meanwhile.
                Action::RoleCheck(t) => {
                    if self
                        .server(t)
                        .is_some_and(|s| matches!(s.state, SState::Idle))
                    {
                        self.start_check(t)
                    }
                }
            }
        }
        for &(t, id) in &found.lookups_over {
            if self.server(t).is_some_and(|s| s.id == id) {
                self.remove_server(t, "auth_query took longer than client_login_timeout");
            }
        }
        self.make_forced_pools();
        // make_forced_pools may have added pools: they have no replication server yet.
        for pool in 0..self.pools.list.len() {
            let replicating = found.replicating.get(pool).copied().unwrap_or(0);
            self.pool_maintenance(pool, found.reserve_wanted.contains(&pool), replicating);
        }
        self.janitor_scratch = found;
    }

    /// Makes the pool of every configured database with a forced user and a
    /// min_pool_size, so that it is filled without waiting for a client, as PgBouncer's
    /// janitor does (1.21+). Per-user pools still start at their first login: their
    /// users are not known before.
    fn make_forced_pools(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let wanted: Vec<(String, String)> = self
            .cfg
            .databases
            .iter()
            .filter(|(name, _)| name.as_str() != crate::config::FALLBACK_DB)
            .filter_map(|(name, db)| Some((name.clone(), db.user.clone()?)))
            .filter(|(name, user)| self.cfg.min_pool_size_for(name, user) > 0)
            .filter(|(name, user)| self.pools.find(name, user).is_none())
            .collect();
        for (name, user) in wanted {
            if let Err(e) = self.pools.for_client(
                crate::pool::Setting(&self.cfg, &self.holds, &self.shm),
                &name,
                &user,
            ) {
                log::debug!("{}: no pool for min_pool_size: {e}", Escaped(&name));
            }
        }
    }

    /// Keeps min_pool_size servers, retries for waiting clients, opens the reserve.
    /// `replicating`: the pool's replication servers, left out of its size.
    fn pool_maintenance(&mut self, pool: usize, use_reserve: bool, replicating: usize) {
        if self.pools.get(pool).waiting.is_empty() {
            let slot = self.slot;
            self.pools.get_mut(pool).no_longer_starved(&self.shm, slot);
        }
        let p = self.pools.get(pool);
        if p.paused {
            return;
        }
        if p.obsolete {
            // Serve whoever still waits in a pool a reload removed; nothing more.
            return self.serve_waiting(pool);
        }
        // A pool with a forced user is filled from the start, as in PgBouncer 1.21+; a
        // per-user pool that never logged in has no welcome: only clients' logins start it.
        if (p.welcome.is_some() || p.forced) && self.shutdown.is_none() {
            let mut need = p.limits.min.saturating_sub(p.total());
            while need > 0
                && self
                    .pools
                    .get(pool)
                    .may_launch(false, self.now, self.cfg.server_login_retry)
            {
                if !self.launch_server(pool) {
                    break;
                }
                need -= 1;
            }
        }
        // A pool size lowered by a reload: idle servers over the pool and reserve sizes
        // close now, least recently used first, as PgBouncer's check_pool_size does;
        // busy ones follow as they come free.
        let p = self.pools.get(pool);
        let pooled = p.connected().saturating_sub(replicating);
        let mut many = pooled.saturating_sub(p.limits.size + p.limits.reserve);
        while many > 0 {
            let Some(&st) = self.pools.get(pool).idle.first() else {
                break;
            };
            self.remove_server(st, "too many servers in the pool");
            many -= 1;
        }
        // What the loop keeps true, made good once a tick should a path have missed it:
        // nobody waits while a server of the pool is idle, or with none coming.
        let p = self.pools.get(pool);
        let conns = &self.conns;
        let live = p.waiting.iter().any(|&(ct, id)| {
            matches!(conns.get(ct), Some(Conn::Client(c)) if c.id == id && matches!(c.state, CState::Waiting { .. }))
        });
        if live && !p.idle.is_empty() {
            // Not when this tick freed the server itself: its hand-over is due next pass.
            // (A client waiting for another server's check gets this idle one now.)
            if !self.later.activations.contains(&pool) {
                log::info!(
                    "{}/{}: clients waiting while a server is idle: handing it over",
                    Escaped(&p.db),
                    Escaped(&p.user)
                );
                self.later.activate(pool);
            }
        } else if live && p.total() == 0 {
            self.serve_waiting(pool);
        }
        // Lookups left waiting with an idle server (after a check, say) get it now.
        self.serve_lookups(pool);
        // Clients kept through a failed login (a pool whose PostgreSQL is not up yet):
        // the next try, once server_login_retry has passed.
        let p = self.pools.get(pool);
        let kept = !p.login_waiting.is_empty() || !p.lookups.is_empty();
        if kept
            && p.launching == 0
            && p.last_failure.is_some()
            && p.may_launch(false, self.now, self.cfg.server_login_retry)
        {
            self.serve_waiting(pool);
        }
        let p = self.pools.get(pool);
        if use_reserve
            && p.waiting.len() > p.launching
            && p.may_launch(true, self.now, self.cfg.server_login_retry)
        {
            log::info!(
                "{}/{}: taking a connection from the reserve pool",
                crate::logsafe::Escaped(&p.db),
                crate::logsafe::Escaped(&p.user)
            );
            self.launch_server(pool);
        }
    }
}
