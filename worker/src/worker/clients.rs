//! The loop's side of a client: accepting it, reading its socket, and carrying out what
//! its login steps (login.rs) decide: a cancel, an auth_query lookup, the pool's greeting,
//! the close.

use super::followups::Followup;
use super::{Conn, Worker};
use crate::client::{eof_reason, io_reason, CState, Client, Lookup};
use crate::close::Close;
use crate::login::{self, Next};
use crate::logsafe::Escaped;
use crate::params;
use crate::proxy::{Peer, Rejection};
use crate::stats::TlsFailure;
use crate::stream::{Filled, Sock, Stream};
use crate::wire::sqlstate;
use crate::wire::write::{self, Severity};
use std::net::SocketAddr;

impl Worker {
    pub(crate) fn add_client(&mut self, mut sock: Sock, peer: Option<SocketAddr>) {
        if let Sock::Tcp(s) = &sock {
            let _ = s.set_nodelay(true);
            crate::stream::tune_tcp(s, &self.cfg);
        }
        let (cfg, dns, now) = (&self.cfg, &mut self.dns, self.now);
        let is_peer = |p| crate::cancel::is_peer(cfg, dns, now, p);
        let state = match crate::proxy::admission(cfg, peer, is_peer) {
            crate::proxy::Admission::Direct => CState::Startup,
            crate::proxy::Admission::PeerCancel => CState::PeerCancel,
            crate::proxy::Admission::Header { trusted } => CState::Proxy { trusted },
            crate::proxy::Admission::Refuse => {
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                log::warn!("connection from untrusted peer {peer} refused: proxy_protocol is required (spoofing attempt?)");
                self.stats.proxy_rejected[crate::proxy::Rejection::Untrusted as usize] += 1;
                sock.shutdown();
                return;
            }
        };
        let token = self.conns.vacant_entry().key();
        if let Err(e) = self.register(token, &mut sock) {
            log::warn!("cannot register client socket: {e}");
            return;
        }
        let id = self.new_id();
        let io = Stream::accepted(sock);
        let client = Client::new(id, io, state, peer, self.now);
        self.conns.insert(Conn::Client(Box::new(client)));
    }

    pub(crate) fn client(&mut self, ct: usize) -> Option<&mut Client> {
        match self.conns.get_mut(ct) {
            Some(Conn::Client(c)) => Some(c),
            _ => None,
        }
    }

    /// Acts on whatever a client's socket allows now.
    pub(crate) fn drive_client(&mut self, ct: usize) {
        let Some(c) = self.client(ct) else { return };
        match c.state {
            CState::Proxy { .. }
            | CState::Startup
            | CState::PeerCancel
            | CState::Auth(_)
            | CState::Lookup(_)
            | CState::LoginWait { .. } => self.login_io(ct),
            CState::Idle { .. }
            | CState::Waiting { .. }
            | CState::Console
            | CState::ConsoleWaiting { .. } => self.unlinked_io(ct),
            CState::Active { server, .. } => self.pump(ct, server),
        }
    }

    /// Reads and answers login traffic until the socket has nothing more.
    fn login_io(&mut self, ct: usize) {
        loop {
            let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
                return;
            };
            if let Err(e) = c.io.flush_own(&mut self.bufs) {
                return self.close_client(ct, Close::Quiet(io_reason(&e)));
            }
            if matches!(c.state, CState::LoginWait { .. } | CState::Lookup(_)) {
                // Bytes sent before the greeting (or the password request) wait in the
                // buffer; only EOF matters.
                match c.io.fill(&mut self.bufs) {
                    Ok(Filled::Eof) | Err(_) => {
                        return self.close_client(ct, Close::Quiet("client close request"))
                    }
                    _ => return,
                }
            }
            let got = match c.io.fill(&mut self.bufs) {
                Ok(f) => f,
                Err(e) => {
                    if c.io.tls_handshaking() {
                        // rustls's reason names a protocol step, never the peer's bytes.
                        log::info!("{}: TLS handshake failed: {e}", c.name());
                        self.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
                    }
                    return self.close_client(ct, Close::Quiet(io_reason(&e)));
                }
            };
            if got == Filled::Eof {
                // A client may send its last bytes with its FIN: libpq and the postgres
                // crate shut down their side right after a CancelRequest, and behind a
                // PROXY header the two arrive in one read. Use what is buffered first.
                // Then the client is gone: whatever state the bytes led to (a login
                // waiting for a server, say), it is closed, unless a step closed it.
                let id = self.client(ct).map(|c| c.id);
                while self.login_step(ct) == Step::Again {}
                match self.client(ct) {
                    // A Terminate after a login that just ended is a clean goodbye.
                    Some(c) if Some(c.id) == id => {
                        let why = eof_reason(c.io.unread());
                        self.close_client(ct, Close::Quiet(why));
                    }
                    _ => {}
                }
                return;
            }
            match self.login_step(ct) {
                Step::Again => continue,
                Step::Wait => {
                    // A read that filled the buffer leaves the socket readable: a step
                    // that only made room (a startup packet past the PROXY header's
                    // read, say) must read again, or edge triggering never says so.
                    if got == Filled::Nothing && !c_may_read(&self.conns, ct) {
                        // Nothing new arrived and nothing buffered could be used.
                        if let Some(Conn::Client(c)) = self.conns.get_mut(ct) {
                            c.io.release_buffers(&mut self.bufs);
                        }
                        return;
                    }
                }
                Step::Done => return,
            }
        }
    }

    /// Runs one login step of client `ct` and carries out what it decided.
    fn login_step(&mut self, ct: usize) -> Step {
        self.step_login(ct, |c, cx| c.login_step(cx))
    }

    /// Sends the first authentication request (again, after an auth_query lookup).
    pub(crate) fn begin_auth(&mut self, ct: usize) {
        self.step_login(ct, |c, cx| c.begin_auth(cx));
    }

    /// Runs `step` on client `ct` and carries out its answer.
    fn step_login(
        &mut self,
        ct: usize,
        step: impl FnOnce(&mut Client, &mut login::Ctx) -> Next,
    ) -> Step {
        let Some(mut next) = self.lend_login(ct, step) else {
            return Step::Done;
        };
        loop {
            return match next {
                Next::Again => Step::Again,
                Next::Wait => Step::Wait,
                Next::Elsewhere => Step::Done,
                Next::Close(why) => {
                    self.close_client(ct, why);
                    Step::Done
                }
                Next::Cancel { pid, key } => {
                    self.cancel_request(ct, pid, &key);
                    self.close_client(ct, Close::Quiet("cancel request"));
                    Step::Done
                }
                Next::Lookup(source) => {
                    if self.start_lookup(ct, source) {
                        // The cache knew the user: the login goes on at once.
                        match self.lend_login(ct, |c, cx| c.begin_auth(cx)) {
                            Some(n) => next = n,
                            None => return Step::Done,
                        }
                        continue;
                    }
                    Step::Again
                }
                Next::Authenticated => {
                    self.client_authenticated(ct);
                    Step::Again
                }
            };
        }
    }

    /// Lends client `ct` what a login step needs and runs `step`; None when it is gone.
    fn lend_login(
        &mut self,
        ct: usize,
        step: impl FnOnce(&mut Client, &mut login::Ctx) -> Next,
    ) -> Option<Next> {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return None;
        };
        let mut cx = login::Ctx {
            cfg: &self.cfg,
            bufs: &mut self.bufs,
            stats: &mut self.stats,
            auth: &mut self.auth,
            hba: &self.hba,
            tls: self.tls.accept.as_ref(),
            shm: &self.shm,
            predecessor: self.lineage.predecessor.as_deref(),
            slot: self.slot,
            now: self.now,
        };
        Some(step(c, &mut cx))
    }

    /// Refuses a connection at the PROXY stage: logged, counted, closed without a word.
    pub(crate) fn proxy_reject(&mut self, ct: usize, why: Rejection, detail: String) {
        if let Some(Conn::Client(c)) = self.conns.get(ct) {
            let close = c.proxy_refused(&mut self.stats, why, detail);
            self.close_client(ct, close);
        }
    }

    /// A user missing from the auth file: true when a fresh cached auth_query answer is
    /// there; else the client is queued for a server of the auth pool to run the query
    /// (server.rs), or closed.
    fn start_lookup(&mut self, ct: usize, source: crate::config::AuthSource) -> bool {
        let Some(c) = self.client(ct) else {
            return false;
        };
        let key = crate::auth_query::key(&source, &c.user);
        let ttl = self.cfg.auth_query_cache_ttl;
        if let Some(found) = self.auth.lookups.get(&key, self.now, ttl) {
            let found = Box::new(found.clone());
            if let Some(c) = self.client(ct) {
                c.found = Some(found);
            }
            return true;
        }
        // PgBouncer's checks of the authentication database, and its words.
        let dbname = source.dbname.as_str();
        if self.cfg.database(dbname).is_none() {
            if let Some(c) = self.client(ct) {
                log::error!(
                    "{}: authentication database \"{}\" is not configured.",
                    c.name(),
                    Escaped(dbname)
                );
            }
            let msg = "bouncer config error".to_string();
            self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            return false;
        }
        if self.holds.is_disabled(dbname) {
            let msg = format!("authentication database \"{dbname}\" is disabled");
            self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            return false;
        }
        let pool = match self.pools.for_auth(
            crate::pool::Setting(&self.cfg, &self.holds, &self.shm),
            dbname,
            &source.user,
        ) {
            Ok(p) => p,
            Err(msg) => {
                self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
                return false;
            }
        };
        let retry = self.cfg.server_login_retry;
        if let Some(msg) = self.pools.get(pool).fast_fail(self.now, retry) {
            self.close_client(ct, Close::Fatal(sqlstate::CANNOT_CONNECT_NOW, msg));
            return false;
        }
        let now = self.now;
        let Some(c) = self.client(ct) else {
            return false;
        };
        let lookup = Lookup {
            pool,
            server: None,
            key,
            query: source.query,
        };
        c.set_state(CState::Lookup(Box::new(lookup)), now);
        let id = c.id;
        self.pools.get_mut(pool).lookups.push_back((ct, id));
        self.serve_lookups(pool);
        false
    }

    /// The client proved who it is: find its pool and greet it once the pool can.
    fn client_authenticated(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if c.admin.is_some() {
            let mut session = crate::admin::session::Session {
                c,
                bufs: &mut self.bufs,
                cfg: &self.cfg,
            };
            return session.welcome(self.now, self.slot);
        }
        let (db, user) = (c.db.to_string(), c.user.to_string());
        let found = c.found.as_ref().and_then(|f| f.secret.clone());
        // A DISABLEd database, likewise only after the password and in PgBouncer's words.
        if self.holds.is_disabled(&db) {
            let msg = format!("database \"{db}\" is disabled");
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        // An unknown database is told only now, after the password, as PgBouncer does:
        // before it, a client that cannot log in would learn which databases exist. Its
        // words and SQLSTATE (08P01) are PgBouncer's, with no AuthenticationOk first.
        let pool = match self.pools.for_client(
            crate::pool::Setting(&self.cfg, &self.holds, &self.shm),
            &db,
            &user,
        ) {
            Ok(p) => p,
            Err(msg) => {
                return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg))
            }
        };
        if let Some(secret) = found {
            // The server login of this user's own pool uses what PostgreSQL gave (md5, or
            // the SCRAM secret with the ClientKey this login recovered); refreshed at
            // every lookup, so a changed password reaches new server logins too.
            let p = self.pools.get_mut(pool);
            if p.user == user && !p.forced {
                p.auth_secret = Some(secret);
            }
        }
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        write::auth_ok(c.io.out(&mut self.bufs));
        if self.cfg.log_connections {
            let via = match (c.via, c.peer) {
                (Some(v), Peer::Tcp(p)) if v != p => format!(" via={v}"),
                _ => String::new(),
            };
            let mut tls = if c.is_tls() {
                format!(" tls={}", c.tls_description())
            } else {
                String::new()
            };
            if let Some(p) = &c.proxy {
                if let Some(id) = &p.unique_id {
                    tls.push_str(&format!(" proxy_id={id}"));
                }
                if let Some(e) = &p.endpoint {
                    tls.push_str(&format!(" endpoint={e}"));
                }
            }
            log::info!(
                "{}: login attempt: db={} user={}{via}{tls} worker={}",
                c.name(),
                Escaped(&db),
                Escaped(&user),
                self.slot
            );
        }
        let p = self.pools.get_mut(pool);
        if p.welcome.is_some() {
            return self.finish_login(ct, pool);
        }
        if let Some(msg) = p.fast_fail(self.now, self.cfg.server_login_retry) {
            return self.close_client(ct, Close::Fatal(sqlstate::CANNOT_CONNECT_NOW, msg));
        }
        c.set_state(CState::LoginWait { pool }, self.now);
        let id = c.id;
        p.login_waiting.push((ct, id));
        self.serve_waiting(pool);
    }

    /// Sends the welcome of `pool`: parameters, cancel key and the first ReadyForQuery.
    pub(crate) fn finish_login(&mut self, ct: usize, pool: crate::pool::PoolId) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let Some(welcome) = self.pools.get(pool).welcome.as_ref() else {
            return;
        };
        let Some((pid, secret)) =
            crate::cancel::new_key(self.slot, self.cfg.peer_id, self.lineage.generation)
        else {
            // A guessable key would let anyone cancel this client's queries: refuse the
            // login instead, as when any other secret cannot be made.
            log::error!("{}: no randomness for a cancel key", c.name());
            let msg = "could not generate a random cancel key".to_string();
            return self.close_client(ct, Close::Fatal(sqlstate::INTERNAL_ERROR, msg));
        };
        let out = c.io.out(&mut self.bufs);
        for (k, v) in &welcome.params {
            let v = match params::tracked_name(k) {
                Some(name) => match c.params.get(name) {
                    Some(mine) => mine.to_string(),
                    None => {
                        c.params.set(name, v);
                        v.clone()
                    }
                },
                None => v.clone(),
            };
            write::parameter_status(out, k, &v);
        }
        write::backend_key_data(out, pid, secret);
        if !self.cfg.login_notify_message.is_empty() {
            let notice = &self.cfg.login_notify_message;
            write::error_response(out, write::Severity::Notice, "00000", notice);
        }
        write::ready_for_query(out, crate::relay::TxStatus::Idle);
        self.pools.get_mut(pool).stats.client_login_count += 1;
        let key = (pid as u64) << 32 | secret as u64;
        c.cancel_key = key;
        c.set_state(CState::Idle { pool }, self.now);
        let id = c.id;
        self.cancels.hand_out(key, ct, id);
        // Its first request may have come with its password: read later in this pass.
        self.later.again.push(ct);
    }

    /// Tells a client queued for query_wait_notify that it waits, in PgBouncer's words.
    pub(crate) fn notify_queued(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        c.wait_notified = true;
        let text = "No server connection available in postgres backend, client being queued";
        let out = c.io.out(&mut self.bufs);
        write::error_response(out, Severity::Notice, "00000", text);
        self.later.again.push(ct);
    }

    /// A logged-in client without a server: watch for EOF, Terminate, or a request.
    fn unlinked_io(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if let Err(e) = c.io.flush_own(&mut self.bufs) {
            return self.close_client(ct, Close::Quiet(io_reason(&e)));
        }
        loop {
            match c.io.fill(&mut self.bufs) {
                Ok(Filled::Eof) => {
                    let why = eof_reason(c.io.unread());
                    return self.close_client(ct, Close::Quiet(why));
                }
                Err(e) => return self.close_client(ct, Close::Quiet(io_reason(&e))),
                Ok(Filled::Bytes(_)) => continue,
                Ok(Filled::Nothing) => break,
            }
        }
        if c.io.unread().is_empty() {
            c.io.release_buffers(&mut self.bufs);
            return;
        }
        match c.state {
            CState::Idle { .. } => {}
            CState::Console => return self.console_input(ct),
            // Waiting for a server or for the supervisor: the request stays buffered.
            _ => return,
        }
        if c.io.unread()[0] == b'X' {
            return self.close_client(ct, Close::Quiet("client close request"));
        }
        self.request_server(ct);
    }

    /// Closes a client, telling it why when there is something to tell. Its linked server
    /// is unlinked now; whether it is reset, made ready or closed is a follow-up
    /// (followups.rs).
    pub(crate) fn close_client(&mut self, ct: usize, why: Close) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let reason: &str = match &why {
            Close::Quiet(r) => r,
            Close::Fatal(_, m) => m,
            Close::Relay(e) => e.message(),
        };
        let told = !matches!(why, Close::Quiet(_));
        if self.cfg.log_disconnections || (told && self.cfg.log_pooler_errors) {
            let age = self.now.duration_since(c.connect_time).as_secs();
            // The reason can quote the client (a database or parameter name) or a server.
            log::info!(
                "{}: closing because: {} (age={age}s) worker={}",
                c.name(),
                Escaped(reason),
                self.slot
            );
        }
        // Its server, if the link holds on both sides: remove_server unlinks the server
        // before it closes the client, so that server is neither waited for nor handed
        // back.
        let server = c.linked_server().filter(|&st| {
            matches!(self.conns.get(st), Some(Conn::Server(s)) if s.linked_client() == Some(ct))
        });
        // An error can only be told at a message boundary of what the client receives.
        let at_boundary = match server.and_then(|st| self.conns.get(st)) {
            Some(Conn::Server(s)) => s.scan.ready == 0 && s.scan.at_boundary(),
            _ => true,
        };
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if at_boundary {
            let (code, msg) = match &why {
                Close::Quiet(_) => ("", ""),
                Close::Fatal(code, msg) => (*code, msg.as_str()),
                Close::Relay(e) => (e.code(), e.message()),
            };
            if !code.is_empty() {
                write::error_response(c.io.out(&mut self.bufs), Severity::Fatal, code, msg);
            }
        }
        let _ = c.io.flush_own(&mut self.bufs);
        let clean = c.tx.is_idle() && c.scan.ready == 0 && c.scan.at_boundary();
        let key = c.cancel_key;
        let id = c.id;
        // The state's data goes with it: a closed client is in no state.
        let state = std::mem::replace(&mut c.state, CState::Startup);
        c.give_back_places(&self.shm, self.slot);
        self.cancels.forget(key, id);
        if let (Some(st), CState::Active { pool, .. }) = (server, &state) {
            let pool = *pool;
            // Unlinked now, so nothing this pass sees it as this client's; what becomes of
            // it is the loop's follow-up.
            let mode = self.pools.get(pool).limits.mode;
            if let Some(s) = self.server(st) {
                s.unlink();
                let id = s.id;
                self.later.follow(Followup::ServerLeft {
                    st,
                    id,
                    clean,
                    mode,
                });
            }
        }
        // A lookup still queued leaves the queue; one already running finishes on its
        // server, whose answer is cached for the next try.
        match state {
            CState::Lookup(l) if l.server.is_none() => {
                let queue = &mut self.pools.get_mut(l.pool).lookups;
                queue.retain(|(t, i)| (*t, *i) != (ct, id));
            }
            CState::LoginWait { pool } => {
                self.pools
                    .get_mut(pool)
                    .login_waiting
                    .retain(|(t, i)| (*t, *i) != (ct, id));
            }
            // A console command in flight: its answer has no one to go to.
            CState::ConsoleWaiting { req } => self.console_forget(req),
            _ => {}
        }
        if let Some(Conn::Client(mut c)) = self.conns.try_remove(ct) {
            c.io.shutdown();
            c.io.drop_buffers(&mut self.bufs);
        }
    }
}

/// Whether client `ct` still has bytes to read that no event will announce.
fn c_may_read(conns: &slab::Slab<Conn>, ct: usize) -> bool {
    matches!(conns.get(ct), Some(Conn::Client(c)) if c.io.may_read())
}

/// How far the login loop got with one step.
#[derive(PartialEq, Eq)]
enum Step {
    /// Something was handled; look again.
    Again,
    /// A whole message is not there yet.
    Wait,
    /// The client is gone or waits on something else.
    Done,
}
