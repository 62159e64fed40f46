//! Online upgrade, worker side: the old generation hands idle clients (socket and state) to the new one, which adopts them.
//!
//! A client between transactions under transaction or statement pooling, with no server,
//! nothing buffered either way, no TLS session (rustls state cannot move between
//! processes) and no auth_query password (the new worker's pool would not know it), is
//! all socket plus a little state: user and database, tracked parameters, named prepared
//! statements, its real (PROXY) address and PROXY v2 extras, and its cancel key. The socket goes with
//! SCM_RIGHTS, worker -> supervisor -> link -> new supervisor -> new worker; the client
//! sees nothing. Bytes it sent meanwhile wait in the socket's kernel buffer, which moves
//! with it. Server connections stay: each generation has its own (see ARCHITECTURE.md).

use super::Worker;
use crate::client::{CState, Client};
use crate::close::Close;
use crate::config::PoolMode;
use crate::conn::Conn;
use crate::control::{self, Command, HandedClient, HandedProxy, Report};
use crate::intern::intern;
use crate::params::Params;
use crate::proxy::Peer;
use crate::stream::{Sock, Stream};
use crate::wire::sqlstate;
use std::os::fd::OwnedFd;
use std::time::Duration;

impl Worker {
    /// `Command::UpgradeDrain`: stop accepting, serve who stays until they leave (at most
    /// shutdown_timeout), and hand every client over as soon as it is idle.
    pub(crate) fn begin_upgrade_drain(&mut self) {
        self.begin_shutdown(true);
        if let Some(s) = &mut self.shutdown {
            s.hands_over = true;
        }
        self.hand_over_idle();
    }

    /// Hands over every client that can go now. Called on each turn of the loop while
    /// draining for an upgrade, so a busy client goes between two of its transactions.
    pub(crate) fn hand_over_idle(&mut self) {
        if !self.shutdown.as_ref().is_some_and(|s| s.hands_over) || !self.has_control() {
            return;
        }
        let ready: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c, Conn::Client(c) if can_hand_over(c, &self.pools)))
            .map(|(t, _)| t)
            .collect();
        for ct in ready {
            if !self.hand_over(ct) {
                // The channel is full: the rest wait for a later turn.
                break;
            }
        }
    }

    /// Sends client `ct` to the supervisor and forgets it; false when the channel cannot
    /// take it now (the client stays, untouched).
    fn hand_over(&mut self, ct: usize) -> bool {
        let Some(ctl) = self.control_raw_fd() else {
            return false;
        };
        let Some(Conn::Client(c)) = self.conns.get(ct) else {
            return true;
        };
        let scram_keys = match self.auth.secret(&c.user) {
            Some(crate::auth::Secret::Scram(s)) => self
                .auth
                .client_key(&c.user, &s.server_key)
                .map(|ck| (s.server_key, ck)),
            _ => None,
        };
        let state = HandedClient {
            user: c.user.to_string(),
            db: c.db.to_string(),
            peer: match c.peer {
                Peer::Tcp(a) => Some(a),
                Peer::Unix => None,
            },
            via: c.via,
            unix: matches!(c.io.sock(), Sock::Unix(_)),
            params: c
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cancel_key: c.cancel_key,
            stmts: c
                .stmts
                .iter()
                .map(|(name, body)| (name.to_string(), body.to_vec()))
                .collect(),
            age_ms: self.now.duration_since(c.connect_time).as_millis() as u64,
            scram_keys,
            proxy: c.proxy.as_ref().map(|p| HandedProxy {
                tls: p.tls.clone(),
                tls_cn: p.tls_cn.clone(),
                unique_id: p.unique_id.clone(),
                endpoint: p.endpoint.clone(),
            }),
        };
        let mut body = Vec::new();
        state.encode(&mut body);
        let mut msg = Vec::with_capacity(body.len() + 8);
        Report::HandOver { state: body }.encode(&mut msg);
        // The link adds a prefix on the way: keep well inside one record.
        if msg.len() + 64 > control::MAX_MESSAGE {
            // Thousands of prepared statements: it drains here instead.
            return true;
        }
        if control::send(ctl, &msg, Some(c.io.sock().raw_fd())).is_err() {
            return false;
        }
        // The socket is in flight now: no goodbye, no shutdown, just let go of it.
        self.forget_client(ct);
        true
    }

    /// Drops a handed-over client: its places in the counts and its cancel key go, its
    /// socket is deregistered and closed here (the copy in flight keeps it open).
    fn forget_client(&mut self, ct: usize) {
        let Some(Conn::Client(mut c)) = self.conns.try_remove(ct) else {
            return;
        };
        if self.cfg.log_disconnections {
            log::info!(
                "{}: handed over to the new generation (age={}s) worker={}",
                c.name(),
                self.now.duration_since(c.connect_time).as_secs(),
                self.slot
            );
        }
        let _ = self.poll.registry().deregister(c.io.sock_mut().source());
        c.give_back_places(&self.shm, self.slot);
        self.cancels.forget(c.cancel_key, c.id);
        c.io.drop_buffers(&mut self.bufs);
    }

    /// `Command::Adopt`: a client of the previous generation, with its socket.
    pub(crate) fn adopt(&mut self, state: &[u8], fd: Option<OwnedFd>) {
        let Some(fd) = fd else {
            log::error!(
                "worker {}: a handed-over client came without its socket",
                self.slot
            );
            return;
        };
        let h = match HandedClient::decode(state) {
            Ok(h) => h,
            Err(e) => {
                log::error!("worker {}: bad handed-over client: {}", self.slot, e.0);
                return;
            }
        };
        let sock = if h.unix {
            let s = std::os::unix::net::UnixStream::from(fd);
            if s.set_nonblocking(true).is_err() {
                return;
            }
            Sock::Unix(mio::net::UnixStream::from_std(s))
        } else {
            let s = std::net::TcpStream::from(fd);
            if s.set_nonblocking(true).is_err() {
                return;
            }
            Sock::Tcp(mio::net::TcpStream::from_std(s))
        };
        let mut sock = sock;
        // Registered under the slab key the client gets below: nothing is inserted between.
        let ct = self.conns.vacant_entry().key();
        if let Err(e) = self.register(ct, &mut sock) {
            log::warn!("cannot register a handed-over client: {e}");
            return;
        }
        let id = self.new_id();
        let mut params = Params::new();
        for (k, v) in &h.params {
            params.set(k, v);
        }
        let connected = self
            .now
            .checked_sub(Duration::from_millis(h.age_ms))
            .unwrap_or(self.now);
        let pool = self.pools.for_client(
            crate::pool::Setting(&self.cfg, &self.holds, &self.shm),
            &h.db,
            &h.user,
        );
        // A client whose database the new configuration lacks is closed below, once it is
        // in the table and counted like the others.
        let state = match pool {
            Ok(pool) => CState::Idle { pool },
            Err(_) => CState::Startup,
        };
        let mut client = Client::new(id, Stream::accepted(sock), state, h.via, self.now);
        client.peer = h.peer.map(Peer::Tcp).unwrap_or(Peer::Unix);
        client.user = intern(&h.user);
        client.db = intern(&h.db);
        client.params = params;
        client.cancel_key = h.cancel_key;
        client.connect_time = connected;
        client.proxy = h.proxy.clone().map(|p| {
            Box::new(crate::proxy::ProxyInfo {
                tls: p.tls,
                tls_cn: p.tls_cn,
                unique_id: p.unique_id,
                endpoint: p.endpoint,
            })
        });
        for (name, body) in &h.stmts {
            let stmt = self.stmts.get_or_add(body);
            client.stmts.adopt(name.as_str().into(), stmt);
        }
        let inserted = self.conns.insert(Conn::Client(Box::new(client)));
        debug_assert_eq!(inserted, ct);
        // It was counted in the old generation, which has let go of it: its place moves
        // here whatever the limits say now (refusing it would be a disconnect).
        if self.shm.acquire_client(self.slot, 0) {
            if let Some(c) = self.client(ct) {
                c.counted = true;
            }
        }
        self.count_adopted(ct);
        if let Some((server_key, client_key)) = h.scram_keys {
            self.auth
                .remember_client_key(&h.user, server_key, client_key);
        }
        if h.cancel_key != 0 {
            self.cancels.hand_out(h.cancel_key, ct, id);
        }
        if let Err(msg) = pool {
            // The new configuration has no such database: as at a login.
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        if let Some(c) = self.client(ct) {
            log::debug!("{}: adopted from the previous generation", c.name());
        }
        self.drive_client(ct);
    }

    /// The database's and user's client counts, as at login but without a limit.
    fn count_adopted(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if self.cfg.database_entry(&c.db).is_some() {
            if let Some(i) = self.shm.name_index(crate::shm::Kind::Database, &c.db) {
                if self.shm.acquire_name_client(self.slot, i, 0) {
                    c.counted_db = Some(i);
                }
            }
        }
        if self.cfg.users.contains_key(&*c.user) || self.auth.secret(&c.user).is_some() {
            if let Some(i) = self.shm.name_index(crate::shm::Kind::User, &c.user) {
                if self.shm.acquire_name_client(self.slot, i, 0) {
                    c.counted_user = Some(i);
                }
            }
        }
    }

    /// Whether a command is one this module handles; handles it if so.
    pub(crate) fn handover_command(&mut self, cmd: &Command, fd: &mut Option<OwnedFd>) -> bool {
        match cmd {
            Command::UpgradeDrain => self.begin_upgrade_drain(),
            Command::Adopt { state } => self.adopt(state, fd.take()),
            _ => return false,
        }
        true
    }
}

/// Whether client `c` can move to the next generation now: transaction or statement
/// pooling, between transactions, with nothing buffered either way and no state that
/// cannot travel (TLS, auth_query's answer, the console, replication).
fn can_hand_over(c: &Client, pools: &crate::pool::Pools) -> bool {
    let CState::Idle { pool } = c.state else {
        return false;
    };
    matches!(
        pools.get(pool).limits.mode,
        PoolMode::Transaction | PoolMode::Statement
    )
        // A replication client's startup (replication=...) is not handed over: it
        // stays and drains with the old generation, as session clients do.
        && c.replication.is_none()
        && c.found.is_none()
        && !c.io.is_tls()
        && c.tx.is_idle()
        && c.scan.ready == 0
        && c.scan.at_boundary()
        && c.queue.is_empty()
        && !c.skipping
        && c.io.unread().is_empty()
        && c.io.nothing_to_send()
}
