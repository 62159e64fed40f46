//! Client connections: the opening packet, authentication, login and closing.

use crate::access::Method;
use crate::auth::{ScramServer, Secret};
use crate::close::Close;
use crate::intern::intern;
use crate::logsafe::Escaped;
use crate::params::{self, Params};
use crate::pool::PoolId;
use crate::proxy::{Peer, Read, Rejection};
use crate::relay::{Scan, TxState};
use crate::stats::TlsFailure;
use crate::stream::{Filled, Sock, Stream};
use crate::wire::startup::{self, FirstPacket, Startup};
use crate::wire::write::{self, Severity};
use crate::wire::{frame, sqlstate, NEWEST_MINOR};
use crate::worker::{Conn, Worker};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Longest message accepted while logging in (passwords and SASL messages).
const MAX_AUTH_MESSAGE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CState {
    /// Reading a PROXY header; believed only when `trusted`.
    Proxy { trusted: bool },
    /// Reading the startup packet (or an SSL/GSS/cancel request before it).
    Startup,
    /// Exchanging password or SASL messages.
    Auth,
    /// Waiting for auth_query to find the user's password (client.lookup says where).
    Lookup,
    /// Authenticated; waiting for the pool's first server login to greet the client.
    LoginWait,
    /// Logged in, no request in flight, no server.
    Idle,
    /// Has sent a request and waits in its pool's queue for a server.
    Waiting,
    /// Linked to a server.
    Active,
}

/// The authentication exchange in progress.
pub(crate) enum AuthStep {
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Scram {
        server: Box<ScramServer>,
        started: bool,
    },
}

pub(crate) struct Client {
    pub id: u64,
    pub io: Stream,
    pub state: CState,
    /// The client's address: the socket peer, or the source of a trusted PROXY header.
    pub peer: Peer,
    /// The socket peer itself (the proxy, when a PROXY header was believed).
    pub via: Option<SocketAddr>,
    /// Interned: thousands of clients of one pool share the strings.
    pub user: Rc<str>,
    pub db: Rc<str>,
    pub pool: Option<PoolId>,
    pub server: Option<usize>,
    pub params: Params,
    pub tx: TxState,
    pub scan: Scan,
    /// Cancel key handed out at login: pid << 32 | secret.
    pub cancel_key: u64,
    pub connect_time: Instant,
    /// When the current state began, or the last ReadyForQuery while linked.
    pub since: Instant,
    /// When the request in flight was sent.
    pub request_time: Instant,
    /// When the transaction in flight began.
    pub xact_start: Instant,
    /// This wait in the queue was told (query_wait_notify).
    pub wait_notified: bool,
    pub auth: Option<AuthStep>,
    /// Holds a place in the pooler-wide client count (max_client_conn).
    pub counted: bool,
    /// Name-table indexes of the database's and the user's client counts this client holds
    /// a place in (max_db_client_connections, max_user_client_connections).
    pub counted_db: Option<usize>,
    pub counted_user: Option<usize>,
    /// The client's named statements, under transaction pooling.
    pub stmts: crate::prepared::ClientStmts,
    /// A replication connection's startup (its server is its own).
    pub replication: Option<std::rc::Rc<Replication>>,
    /// What the server still owes this client, when statements are rewritten.
    pub queue: std::collections::VecDeque<crate::relay::Expect>,
    /// Entries an error made the server skip, waiting to be undone (scratch).
    pub dropped: Vec<crate::relay::Expect>,
    /// The server skips this client's messages until its next Sync (after an error).
    pub skipping: bool,
    /// Logged in to the admin console, with this role.
    pub admin: Option<crate::admin::Role>,
    /// What a trusted PROXY v2 header said besides the address.
    pub proxy: Option<Box<crate::proxy::ProxyInfo>>,
    /// The user's password as auth_query found it; `None` while the auth file is used.
    pub found: Option<Box<crate::auth_query::Found>>,
    /// In `CState::Lookup`: the lookup waited for or running.
    pub lookup: Option<Box<Lookup>>,
}

/// A client's auth_query lookup: queued in `pool`, then running on `server`.
pub(crate) struct Lookup {
    pub pool: PoolId,
    pub server: Option<usize>,
    pub key: crate::auth_query::Key,
    pub query: String,
}

impl Client {
    /// A client just accepted from `peer` (None: a Unix socket), in `state`.
    pub fn new(
        id: u64,
        io: Stream,
        state: CState,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Client {
        Client {
            id,
            io,
            state,
            peer: peer.map(Peer::Tcp).unwrap_or(Peer::Unix),
            via: peer,
            user: "".into(),
            db: "".into(),
            pool: None,
            server: None,
            params: Params::new(),
            tx: TxState::new(),
            scan: Scan::default(),
            cancel_key: 0,
            connect_time: now,
            since: now,
            request_time: now,
            xact_start: now,
            wait_notified: false,
            auth: None,
            counted: false,
            counted_db: None,
            counted_user: None,
            stmts: Default::default(),
            replication: None,
            queue: Default::default(),
            dropped: Vec::new(),
            skipping: false,
            admin: None,
            proxy: None,
            found: None,
            lookup: None,
        }
    }

    /// TLS protects the client's bytes: its own session with the pooler, or (with
    /// proxy_tls_trusted) the one a trusted proxy terminated.
    pub fn is_tls(&self) -> bool {
        self.io.is_tls() || self.proxy.as_ref().is_some_and(|p| p.tls.is_some())
    }

    /// The `tls` column: this session's version and suite, or the proxy's.
    pub fn tls_description(&self) -> String {
        match &self.proxy {
            Some(p) if !self.io.is_tls() => p.tls.clone().unwrap_or_default(),
            _ => self.io.tls_description(),
        }
    }

    /// The verified client certificate's common name: from this session, or from a
    /// trusted proxy that verified it.
    pub fn certificate_cn(&self) -> Option<String> {
        match self.io.peer_certificate() {
            Some(der) => crate::tls::common_name(der),
            None => self.proxy.as_ref()?.tls_cn.clone(),
        }
    }
    /// The password a client is checked against: the auth file's, or what auth_query
    /// found (nothing once its rolvaliduntil has passed).
    fn login_secret(&self, auth: &crate::auth_cache::AuthCache) -> Option<Secret> {
        match &self.found {
            Some(f) => f.usable(std::time::SystemTime::now()).cloned(),
            None => auth.secret(&self.user).cloned(),
        }
    }

    /// Takes the client's places in its database's and its user's client counts, all
    /// workers together (max_db_client_connections, max_user_client_connections; PgBouncer
    /// 1.24+). Where PgBouncer checks them: at the startup packet, after max_client_conn,
    /// before any password, the database first; its words, SQLSTATE 08P01 as its
    /// disconnect_client sends. The console is not counted. Only configured databases and
    /// users the pooler knows get a place in the shared name table, so made-up names cannot
    /// fill it; a name that does not fit in the table is not limited (as for servers).
    fn take_name_places(
        &mut self,
        cfg: &crate::config::Config,
        auth: &crate::auth_cache::AuthCache,
        shm: &crate::shm::Shm,
        slot: usize,
    ) -> Option<&'static str> {
        if self.admin.is_some() {
            return None;
        }
        if cfg.database_entry(&self.db).is_some() {
            if let Some(i) = shm.name_index(crate::shm::Kind::Database, &self.db) {
                let limit = cfg.max_db_client_connections_for(&self.db);
                if !shm.acquire_name_client(slot, i, limit) {
                    return Some("client connections exceeded (max_db_client_connections)");
                }
                self.counted_db = Some(i);
            }
        }
        if cfg.users.contains_key(&*self.user) || auth.secret(&self.user).is_some() {
            if let Some(i) = shm.name_index(crate::shm::Kind::User, &self.user) {
                let limit = cfg.max_user_client_connections_for(&self.user);
                if !shm.acquire_name_client(slot, i, limit) {
                    return Some("client connections exceeded (max_user_client_connections)");
                }
                self.counted_user = Some(i);
            }
        }
        None
    }

    /// `C-<id>: db/user@addr:port`, PgBouncer's way of naming a client in logs.
    pub fn name(&self) -> ClientName<'_> {
        ClientName(self)
    }
}

/// A place in the pooler-wide client count (max_client_conn). While an online
/// upgrade's previous generation drains, its clients count too: the limit holds for
/// both generations together.
fn acquire_client_place(
    max: u32,
    shm: &crate::shm::Shm,
    predecessor: Option<&crate::shm::Shm>,
    slot: usize,
) -> bool {
    let room = match predecessor {
        Some(old) if max != 0 => max.saturating_sub(old.clients()),
        _ => max,
    };
    (max == 0 || room > 0) && shm.acquire_client(slot, room)
}

pub(crate) struct ClientName<'a>(&'a Client);

impl fmt::Display for ClientName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let db = if c.db.is_empty() { "(nodb)" } else { &c.db };
        let user = if c.user.is_empty() {
            "(nouser)"
        } else {
            &c.user
        };
        // Both names come from the startup packet, before any authentication.
        let (db, user) = (Escaped(db), Escaped(user));
        write!(f, "C-{}: {db}/{user}@{}", c.id, c.peer)
    }
}

/// A replication client's startup (`replication=true|database`, PgBouncer 1.23+): it gets
/// a server of its own, logged in with these parameters, never pooled.
pub(crate) struct Replication {
    /// What the server's startup packet says: `database` (logical) or `yes` (physical).
    pub kind: &'static str,
    /// The client's other startup parameters, `options` included, as it sent them:
    /// physical replication connections take no SET, so they go in the server's startup.
    pub params: Vec<(String, String)>,
}

impl Replication {
    /// SHOW CLIENTS/SERVERS' `replication` column, in PgBouncer's words.
    pub fn shown(r: Option<&Replication>) -> &'static str {
        match r.map(|r| r.kind) {
            None => "none",
            Some("database") => "logical",
            Some(_) => "physical",
        }
    }
}

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
            crate::proxy::Admission::Header { trusted } => CState::Proxy { trusted },
            crate::proxy::Admission::Refuse => {
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                log::warn!("connection from untrusted peer {peer} refused: proxy_protocol is required (spoofing attempt?)");
                self.stats.proxy_rejected[crate::proxy::Rejection::Untrusted as usize] += 1;
                sock.shutdown();
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if let Err(e) = self.poll.registry().register(
            sock.source(),
            mio::Token(token),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        ) {
            log::warn!("cannot register client socket: {e}");
            return;
        }
        let id = crate::worker::shown_id(self.slot, self.next_id);
        self.next_id += 1;
        let io = Stream::accepted(sock);
        let client = Client::new(id, io, state, peer, self.now);
        entry.insert(Conn::Client(Box::new(client)));
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
            | CState::Auth
            | CState::Lookup
            | CState::LoginWait => self.login_io(ct),
            CState::Idle | CState::Waiting => self.unlinked_io(ct),
            CState::Active => {
                if let Some(st) = c.server {
                    self.pump(ct, st);
                }
            }
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
            if matches!(c.state, CState::LoginWait | CState::Lookup) {
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
                if id.is_some() && self.client(ct).map(|c| c.id) == id {
                    self.close_client(ct, Close::Quiet("client unexpected eof"));
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

    /// Refuses a connection at the PROXY stage: logged, counted, closed without a word.
    pub(crate) fn proxy_reject(&mut self, ct: usize, why: Rejection, detail: String) {
        if let Some(c) = self.client(ct) {
            let via = c.via.map(|a| a.to_string()).unwrap_or_default();
            log::warn!(
                "C-{} from {via}: PROXY header refused ({}): {detail}",
                c.id,
                why.as_str()
            );
        }
        self.stats.proxy_rejected[why as usize] += 1;
        self.close_client(ct, Close::Quiet("PROXY header refused"));
    }

    /// Handles one buffered login message if a whole one is there.
    fn login_step(&mut self, ct: usize) -> Step {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return Step::Done;
        };
        match c.state {
            CState::Proxy { trusted } => {
                match crate::proxy::read(&self.cfg, trusted, c.io.unread()) {
                    Read::Wait => Step::Wait,
                    Read::NotProxy => {
                        c.state = CState::Startup;
                        Step::Again
                    }
                    Read::Header {
                        consumed,
                        source,
                        info,
                    } => {
                        c.io.consume(consumed);
                        if let Some(src) = source {
                            c.peer = Peer::Tcp(src);
                        }
                        c.proxy = info;
                        c.state = CState::Startup;
                        self.stats.proxy_accepted += 1;
                        Step::Again
                    }
                    Read::Refused(why, detail) => {
                        self.proxy_reject(ct, why, detail);
                        Step::Done
                    }
                }
            }
            CState::Startup => {
                // A TLS handshake record where a length belongs: direct TLS. No startup
                // packet starts so (its length would be over 350 MB).
                if !c.io.is_tls() && c.io.unread().first() == Some(&0x16) {
                    if let Some(accept) = self.tls.accept.clone().filter(|_| !c.io.is_unix()) {
                        return self.direct_tls(ct, &accept);
                    }
                }
                let (packet, n) = match startup::decode(c.io.unread()) {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        // The decoder has checked the length (<= 10000): make room for it.
                        if let Some(l) = c.io.unread().first_chunk::<4>() {
                            let total = u32::from_be_bytes(*l) as usize;
                            c.io.make_room(total, &mut self.bufs);
                        }
                        return Step::Wait;
                    }
                    Err(e) => {
                        let code = match e {
                            startup::StartupError::UnsupportedVersion(..)
                            | startup::StartupError::UnknownCode(_) => {
                                sqlstate::FEATURE_NOT_SUPPORTED
                            }
                            _ => sqlstate::PROTOCOL_VIOLATION,
                        };
                        self.close_client(ct, Close::Fatal(code, e.to_string()));
                        return Step::Done;
                    }
                };
                c.io.consume(n);
                let (via, peer) = (c.via, c.peer);
                if !matches!(packet, FirstPacket::Cancel { .. })
                    && crate::proxy::peer_only(&self.cfg, via)
                {
                    log::warn!(
                        "{peer}: a peer pooler without a PROXY header may only send cancel \
                         requests: refused (proxy_protocol is required)"
                    );
                    self.stats.proxy_rejected[crate::proxy::Rejection::Untrusted as usize] += 1;
                    self.close_client(ct, Close::Quiet("peer sent no cancel request"));
                    return Step::Done;
                }
                match packet {
                    FirstPacket::SslRequest => self.ssl_request(ct),
                    FirstPacket::GssEncRequest => {
                        if let Some(Conn::Client(c)) = self.conns.get_mut(ct) {
                            c.io.out(&mut self.bufs).push(b'N');
                        }
                        Step::Again
                    }
                    FirstPacket::Cancel { pid, key } => {
                        self.cancel_request(ct, pid, &key);
                        self.close_client(ct, Close::Quiet("cancel request"));
                        Step::Done
                    }
                    FirstPacket::Startup(s) => {
                        self.on_startup(ct, s);
                        Step::Again
                    }
                }
            }
            CState::Auth => {
                let (tag, body) = match frame::message(c.io.unread(), MAX_AUTH_MESSAGE) {
                    Ok(Some((h, body))) => (h.tag, body.to_vec()),
                    Ok(None) => {
                        if let Ok(Some(h)) = frame::header(c.io.unread(), MAX_AUTH_MESSAGE) {
                            c.io.make_room(h.total, &mut self.bufs);
                        }
                        return Step::Wait;
                    }
                    Err(_) => {
                        let msg = "invalid authentication message length".to_string();
                        self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
                        return Step::Done;
                    }
                };
                c.io.consume(body.len() + 5);
                if tag != b'p' {
                    self.close_client(
                        ct,
                        Close::Fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            format!(
                                "expected password response, got message type {}",
                                tag as char
                            ),
                        ),
                    );
                    return Step::Done;
                }
                self.on_auth_message(ct, &body);
                Step::Again
            }
            _ => Step::Done,
        }
    }

    /// SSLRequest: `S` and a TLS session when client TLS is on, `N` otherwise.
    fn ssl_request(&mut self, ct: usize) -> Step {
        let accept = self.tls.accept.clone();
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return Step::Done;
        };
        if c.io.is_tls() {
            let msg = "SSLRequest inside a TLS session".to_string();
            self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            return Step::Done;
        }
        let Some(accept) = accept.filter(|_| !c.io.is_unix()) else {
            c.io.out(&mut self.bufs).push(b'N');
            return Step::Again;
        };
        // Bytes that followed the SSLRequest before `S` was sent travelled in cleartext:
        // taking them as part of the session would let whoever sits on the path inject a
        // startup packet (PostgreSQL's CVE-2021-23222 class). PostgreSQL refuses them too.
        if !c.io.unread().is_empty() {
            self.stats.tls_failures[TlsFailure::Unencrypted as usize] += 1;
            let msg = "received unencrypted data after SSL request".to_string();
            self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            return Step::Done;
        }
        // `S` goes out in cleartext, after anything queued before it (the `N` to a
        // GSSENCRequest), and the session starts right behind it.
        let sent = match c.io.flush_own(&mut self.bufs) {
            Ok(true) => c.io.send(b"S"),
            Ok(false) => Ok(0),
            Err(e) => Err(e),
        };
        let started = match sent {
            Ok(1) => c.io.start_tls_accept(&accept),
            Ok(_) => Err(std::io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            self.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
            self.close_client(ct, Close::Quiet(io_reason(&e)));
            return Step::Done;
        }
        self.stats.tls_handshakes += 1;
        Step::Again
    }

    /// Starts a direct TLS session with the ClientHello already buffered.
    fn direct_tls(&mut self, ct: usize, accept: &crate::tls::Accept) -> Step {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return Step::Done;
        };
        if let Err(e) = c.io.start_tls_direct(accept) {
            log::info!("{}: TLS handshake failed: {e}", c.name());
            self.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
            self.close_client(ct, Close::Quiet(io_reason(&e)));
            return Step::Done;
        }
        self.stats.tls_handshakes += 1;
        Step::Again
    }

    /// Checks the startup packet, picks the database and starts authentication.
    fn on_startup(&mut self, ct: usize, s: Startup) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if c.io.tls_alpn_missing() {
            self.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
            let msg = "received direct SSL connection request without ALPN protocol negotiation extension";
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg.into()));
        }
        // PgBouncer's rule: from require up, TCP clients must have come through TLS.
        if self.cfg.client_tls_sslmode.required() && !c.io.is_tls() && !c.io.is_unix() {
            self.stats.tls_failures[TlsFailure::Required as usize] += 1;
            let msg = "SSL required".to_string();
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        let unknown: Vec<&str> = s
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        if s.minor > NEWEST_MINOR || !unknown.is_empty() {
            write::negotiate_protocol_version(c.io.out(&mut self.bufs), NEWEST_MINOR, &unknown);
        }
        let Some(user) = s.get("user").filter(|u| !u.is_empty()) else {
            return self.close_client(
                ct,
                Close::Fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    "no PostgreSQL user name specified in startup packet".into(),
                ),
            );
        };
        c.user = intern(user);
        c.db = intern(s.get("database").filter(|d| !d.is_empty()).unwrap_or(user));
        // Replication connections (physical `replication=true`, logical
        // `replication=database`), as PgBouncer 1.23+ takes them: each gets a server of its
        // own with the client's startup parameters (link.rs, server.rs).
        let replication = match s.get("replication").map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "off" | "no") => None,
            Some("database") => Some("database"),
            Some("true" | "1" | "on" | "yes") => Some("yes"),
            Some(_) => {
                let msg = "invalid value for parameter \"replication\"".to_string();
                return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            }
        };
        if replication.is_some() && crate::admin::is_console(&c.db) {
            let msg = "replication connections to the admin console are not supported";
            return self.close_client(
                ct,
                Close::Fatal(sqlstate::FEATURE_NOT_SUPPORTED, msg.into()),
            );
        }
        c.replication = replication.map(|kind| {
            std::rc::Rc::new(Replication {
                kind,
                params: s
                    .params
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "user" | "database" | "replication")
                            && !k.starts_with("_pq_.")
                    })
                    .cloned()
                    .collect(),
            })
        });
        // track_extra_parameters, as of the config now (a no-op when it has not changed).
        params::set_extra_tracked(&self.cfg.track_extra_parameters);
        let mut params = Params::new();
        let cfg = self.cfg.clone();
        // Listed names are dropped wherever they come: as parameters, or as `-c name=value`
        // inside `options` (where libpq's PGOPTIONS puts them).
        let ignored = |k: &str| {
            cfg.ignore_startup_parameters
                .iter()
                .any(|i| i.eq_ignore_ascii_case(k))
        };
        for (k, v) in &s.params {
            if matches!(k.as_str(), "user" | "database" | "replication") || k.starts_with("_pq_.") {
                continue;
            }
            if ignored(k) {
                continue;
            }
            // A replication client's options go to its own server as they are (PgBouncer
            // takes any there: CREATE SUBSCRIPTION sends extra_float_digits in them).
            if k == "options" && replication.is_some() {
                continue;
            }
            if k == "options" {
                match params::parse_options(v) {
                    Ok(opts) => {
                        for (k, v) in opts {
                            if ignored(&k) {
                                continue;
                            }
                            if !params::is_settable_name(&k) {
                                return self.close_client(
                                    ct,
                                    Close::Fatal(
                                        sqlstate::PROTOCOL_VIOLATION,
                                        format!("unsupported startup parameter in options: {k}"),
                                    ),
                                );
                            }
                            params.set(params::tracked_name(&k).unwrap_or(&k), &v);
                        }
                    }
                    Err(e) => {
                        return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e))
                    }
                }
                continue;
            }
            if let Some(name) = params::tracked_name(k) {
                params.set(name, v);
            } else if params::is_settable_name(k) {
                params.set(k, v);
            } else {
                return self.close_client(
                    ct,
                    Close::Fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("unsupported startup parameter: {k}"),
                    ),
                );
            }
        }
        if self.cfg.application_name_add_host {
            if let Peer::Tcp(a) = c.peer {
                let app = params.get("application_name").unwrap_or("").to_string();
                let app = if app.is_empty() {
                    format!("{}:{}", a.ip(), a.port())
                } else {
                    format!("{app} - {}:{}", a.ip(), a.port())
                };
                params.set("application_name", &app);
            }
        }
        c.params = params;
        c.state = CState::Auth;
        let db = c.db.clone();
        if crate::admin::is_console(&db) {
            // PgBouncer refuses users without a console role before any password.
            let user = c.user.clone();
            let role = crate::admin::console_role(&self.cfg, &user);
            let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
                return;
            };
            c.admin = role;
            if role.is_none() {
                return self.close_client(
                    ct,
                    Close::Fatal(sqlstate::PROTOCOL_VIOLATION, "not allowed".into()),
                );
            }
        }
        let (max, pred) = (self.cfg.max_client_conn, self.predecessor.as_deref());
        if !acquire_client_place(max, &self.shm, pred, self.slot) {
            return self.close_client(
                ct,
                Close::Fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "no more connections allowed (max_client_conn)".into(),
                ),
            );
        }
        if let Some(c) = self.client(ct) {
            c.counted = true;
        }
        let why = match self.conns.get_mut(ct) {
            Some(Conn::Client(c)) => {
                c.take_name_places(&self.cfg, &self.auth, &self.shm, self.slot)
            }
            _ => None,
        };
        if let Some(why) = why {
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, why.into()));
        }
        self.begin_auth(ct);
    }

    /// Sends the first authentication request for the configured method.
    pub(crate) fn begin_auth(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let user = c.user.to_string();
        let db = c.db.clone();
        let looked_up = c.found.is_some();
        let binding: Option<Vec<u8>> = c.io.tls_binding().map(<[u8]>::to_vec);
        let asker = crate::access::Asker {
            peer: c.peer,
            tls: c.is_tls(),
            database: &c.db,
            user: &c.user,
            endpoint: c
                .proxy
                .as_ref()
                .and_then(|p| p.endpoint.as_ref())
                .map(|e| e.to_string()),
            physical_replication: c.replication.as_ref().is_some_and(|r| r.kind == "yes"),
            io: &c.io,
            name: &c.name(),
        };
        let method = match crate::access::method(&self.cfg, &self.hba, &asker) {
            Ok(m) => m,
            Err(why) => return self.close_client(ct, why),
        };
        // PgBouncer: a user missing from the auth file is looked up with auth_query when
        // the database has an auth_user; the client waits without a password request.
        let needs_secret = !matches!(method, Method::Cert | Method::Trust { listed: false });
        if needs_secret && !looked_up && self.auth.secret(&user).is_none() {
            if let Some(source) = crate::auth_query::source(&self.cfg, &db) {
                return self.start_lookup(ct, source);
            }
        }
        let secret = match self.conns.get(ct) {
            Some(Conn::Client(c)) => c.login_secret(&self.auth),
            _ => None,
        };
        let scram_stored = matches!(secret, Some(Secret::Scram(_)));
        let step = match method {
            Method::Trust { listed } => {
                // PgBouncer: with auth_type trust the user must still be in the auth file
                // (or found by auth_query).
                if listed && secret.is_none() {
                    return self.auth_failed(ct);
                }
                return self.client_authenticated(ct);
            }
            Method::Cert => {
                // PostgreSQL's rule: the certificate's CN is the user, compared exactly.
                let Some(c) = self.client(ct) else { return };
                let cn = c.certificate_cn();
                if cn.as_deref() == Some(user.as_str()) {
                    return self.client_authenticated(ct);
                }
                let msg = format!("certificate authentication failed for user \"{user}\"");
                log::info!("{}: {}", c.name(), Escaped(&msg));
                self.stats.auth_failures += 1;
                return self.close_client(ct, Close::Fatal(sqlstate::INVALID_AUTHORIZATION, msg));
            }
            Method::Cleartext => AuthStep::Cleartext,
            // As in PostgreSQL, md5 with a SCRAM secret stored means a SCRAM exchange.
            Method::Md5 if !scram_stored => match crate::auth::md5_random_salt() {
                Ok(salt) => AuthStep::Md5 { salt },
                Err(_) => return self.auth_failed(ct),
            },
            Method::Md5 | Method::Scram => {
                let nonce = match crate::auth::random_nonce() {
                    Ok(n) => n,
                    Err(_) => return self.auth_failed(ct),
                };
                let scram = match (looked_up, &secret) {
                    (false, _) => self.auth.scram_secret(&user).cloned(),
                    (true, Some(Secret::Scram(s))) => Some(s.clone()),
                    // A plaintext password in PostgreSQL (a custom auth_query): derived
                    // with the user's fixed salt, as for plaintext in the auth file.
                    (true, Some(Secret::Plain(p))) if !p.is_empty() => Some(
                        crate::auth::ScramSecret::for_user_password(&user, p, &self.auth.mock_key),
                    ),
                    (true, _) => None,
                };
                let server = match &scram {
                    Some(secret) => ScramServer::new(secret, nonce),
                    // Unknown users and md5-only secrets get an exchange that always fails.
                    None => ScramServer::mock(&user, &self.auth.mock_key, nonce),
                };
                // Over TLS, SCRAM-SHA-256-PLUS binds the exchange to this session, so a
                // man in the middle holding another certificate cannot relay it. Offered to
                // known and unknown users alike.
                let server = match &binding {
                    Some(binding) => server.with_channel_binding(binding),
                    None => server,
                };
                AuthStep::Scram {
                    server: Box::new(server),
                    started: false,
                }
            }
        };
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let out = c.io.out(&mut self.bufs);
        match &step {
            AuthStep::Cleartext => write::auth_cleartext(out),
            AuthStep::Md5 { salt } => write::auth_md5(out, *salt),
            // PostgreSQL's order: PLUS first, which libpq takes unless channel_binding=disable.
            AuthStep::Scram { .. } if binding.is_some() => {
                write::auth_sasl(out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
            }
            AuthStep::Scram { .. } => write::auth_sasl(out, &["SCRAM-SHA-256"]),
        }
        c.auth = Some(step);
    }

    /// A user missing from the auth file: use a fresh cached auth_query answer, or queue
    /// the client for a server of the auth pool to run the query (server.rs).
    fn start_lookup(&mut self, ct: usize, source: crate::config::AuthSource) {
        let Some(c) = self.client(ct) else { return };
        let key = crate::auth_query::key(&source, &c.user);
        let ttl = self.cfg.auth_query_cache_ttl;
        if let Some(found) = self.auth.lookups.get(&key, self.now, ttl) {
            let found = Box::new(found.clone());
            if let Some(c) = self.client(ct) {
                c.found = Some(found);
            }
            return self.begin_auth(ct);
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
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        if self.holds.is_disabled(dbname) {
            let msg = format!("authentication database \"{dbname}\" is disabled");
            return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        let pool = match self.pools.for_auth(
            crate::pool::Setting(&self.cfg, &self.holds, &self.shm),
            dbname,
            &source.user,
        ) {
            Ok(p) => p,
            Err(msg) => {
                return self.close_client(ct, Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg))
            }
        };
        let retry = self.cfg.server_login_retry;
        if let Some(msg) = self.pools.get(pool).fast_fail(self.now, retry) {
            return self.close_client(ct, Close::Fatal(sqlstate::CANNOT_CONNECT_NOW, msg));
        }
        let now = self.now;
        let Some(c) = self.client(ct) else { return };
        c.state = CState::Lookup;
        c.since = now;
        c.lookup = Some(Box::new(Lookup {
            pool,
            server: None,
            key,
            query: source.query,
        }));
        let id = c.id;
        self.pools.get_mut(pool).lookups.push_back((ct, id));
        self.serve_lookups(pool);
    }

    /// One PasswordMessage / SASLInitialResponse / SASLResponse from the client.
    fn on_auth_message(&mut self, ct: usize, body: &[u8]) {
        let secret = match self.conns.get(ct) {
            Some(Conn::Client(c)) => c.login_secret(&self.auth),
            _ => None,
        };
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let user = c.user.to_string();
        let Some(step) = c.auth.as_mut() else {
            return self.close_client(
                ct,
                Close::Fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "unexpected password message".into(),
                ),
            );
        };
        let ok = match step {
            AuthStep::Cleartext => {
                // PostgreSQL: exactly one NUL-terminated string.
                let Some(pw) = body.strip_suffix(&[0]).filter(|p| !p.contains(&0)) else {
                    return self.close_client(
                        ct,
                        Close::Fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            "invalid password packet size".into(),
                        ),
                    );
                };
                let pw = String::from_utf8_lossy(pw);
                match &secret {
                    // Checked the way PostgreSQL checks a password against a SCRAM secret;
                    // the ClientKey it yields is what a SCRAM login would have left, so the
                    // pooler's own server login can pass through as it does after one. Without
                    // it a cleartext login of a SCRAM user could only fail at PostgreSQL,
                    // and that failure would be cached for every client of the pool.
                    Some(Secret::Scram(s)) => match s.client_key_for_password(&pw) {
                        Some(client_key) if !pw.is_empty() => {
                            let server_key = s.server_key;
                            self.auth.remember_client_key(&user, server_key, client_key);
                            true
                        }
                        _ => false,
                    },
                    Some(s) => s.verify_cleartext(&user, &pw),
                    None => false,
                }
            }
            AuthStep::Md5 { salt } => {
                let resp = body.strip_suffix(&[0]).unwrap_or(body);
                secret
                    .as_ref()
                    .is_some_and(|s| s.verify_md5_response(&user, *salt, resp))
            }
            AuthStep::Scram { server, started } if !*started => {
                let Some((mech, rest)) = crate::wire::fields::cstr(body) else {
                    return self.close_client(
                        ct,
                        Close::Fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            "malformed SASLInitialResponse".into(),
                        ),
                    );
                };
                let plus = mech == b"SCRAM-SHA-256-PLUS" && c.io.tls_binding().is_some();
                if mech != b"SCRAM-SHA-256" && !plus {
                    return self.close_client(
                        ct,
                        Close::Fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            "client selected an invalid SASL authentication mechanism".into(),
                        ),
                    );
                }
                let data = match crate::wire::fields::u32_be(rest) {
                    Some((len, data)) if len as usize == data.len() => data,
                    _ => {
                        return self.close_client(
                            ct,
                            Close::Fatal(
                                sqlstate::PROTOCOL_VIOLATION,
                                "malformed SASLInitialResponse".into(),
                            ),
                        )
                    }
                };
                match server.handle_client_first_as(plus, data) {
                    Ok(reply) => {
                        *started = true;
                        write::auth_sasl_continue(c.io.out(&mut self.bufs), &reply);
                        return;
                    }
                    Err(e) => {
                        log::debug!("{}: SCRAM client-first rejected: {e}", c.name());
                        return self.close_client(
                            ct,
                            Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
                        );
                    }
                }
            }
            AuthStep::Scram { server, .. } => match server.handle_client_final(body) {
                Ok(success) => {
                    write::auth_sasl_final(c.io.out(&mut self.bufs), &success.server_final);
                    if let Some(Secret::Scram(s)) = &secret {
                        let server_key = s.server_key;
                        self.auth
                            .remember_client_key(&user, server_key, success.client_key);
                    }
                    true
                }
                Err(e) => {
                    log::debug!("SCRAM exchange failed for {}: {e}", Escaped(&user));
                    false
                }
            },
        };
        if ok {
            if let Some(c) = self.client(ct) {
                c.auth = None;
            }
            self.client_authenticated(ct);
        } else {
            self.auth_failed(ct);
        }
    }

    fn auth_failed(&mut self, ct: usize) {
        self.stats.auth_failures += 1;
        let Some(c) = self.client(ct) else { return };
        let msg = format!("password authentication failed for user \"{}\"", c.user);
        log::info!("{}: {}", c.name(), Escaped(&msg));
        self.close_client(ct, Close::Fatal(sqlstate::INVALID_PASSWORD, msg));
    }

    /// The client proved who it is: find its pool and greet it once the pool can.
    fn client_authenticated(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if c.admin.is_some() {
            return self.console_welcome(ct);
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
        c.pool = Some(pool);
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
            return self.finish_login(ct);
        }
        if let Some(msg) = p.fast_fail(self.now, self.cfg.server_login_retry) {
            return self.close_client(ct, Close::Fatal(sqlstate::CANNOT_CONNECT_NOW, msg));
        }
        c.state = CState::LoginWait;
        c.since = self.now;
        let id = c.id;
        p.login_waiting.push((ct, id));
        self.serve_waiting(pool);
    }

    /// Sends the welcome: parameters, cancel key and the first ReadyForQuery.
    pub(crate) fn finish_login(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let Some(pool) = c.pool else { return };
        let Some(welcome) = self.pools.get(pool).welcome.as_ref() else {
            return;
        };
        let Some((pid, secret)) =
            crate::cancel::new_key(self.slot, self.cfg.peer_id, self.generation)
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
        c.state = CState::Idle;
        c.since = self.now;
        let id = c.id;
        self.cancel_keys.insert(key, (ct, id));
        self.drive_client(ct);
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
        self.drive_client(ct);
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
        if c.state != CState::Idle {
            return;
        }
        if c.admin.is_some() {
            return self.console_input(ct);
        }
        if c.io.unread()[0] == b'X' {
            return self.close_client(ct, Close::Quiet("client close request"));
        }
        self.request_server(ct);
    }

    /// Closes a client, telling it why when there is something to tell.
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
        // An error can only be told at a message boundary of what the client receives.
        let at_boundary = match c.server {
            Some(st) => match self.conns.get(st) {
                Some(Conn::Server(s)) => s.scan.ready == 0 && s.scan.at_boundary(),
                _ => true,
            },
            None => true,
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
        let server = c.server.take();
        let key = c.cancel_key;
        let pool = c.pool;
        let id = c.id;
        let state = c.state;
        let lookup = c.lookup.take();
        if c.counted {
            self.shm.release_client(self.slot);
        }
        for i in [c.counted_db.take(), c.counted_user.take()]
            .into_iter()
            .flatten()
        {
            self.shm.release_name_client(self.slot, i);
        }
        if c.admin.is_some() {
            self.console_forget(ct, id);
        }
        if key != 0 && self.cancel_keys.get(&key).map(|e| e.1) == Some(id) {
            self.cancel_keys.remove(&key);
        }
        if let (Some(st), Some(pool)) = (server, pool) {
            let mode = self.pools.get(pool).limits.mode;
            self.client_left_server(st, clean, mode);
        }
        // A lookup still queued leaves the queue; one already running finishes on its
        // server, whose answer is cached for the next try.
        if let Some(l) = lookup.filter(|l| l.server.is_none()) {
            self.pools
                .get_mut(l.pool)
                .lookups
                .retain(|(t, i)| (*t, *i) != (ct, id));
        }
        if let (Some(pool), CState::LoginWait) = (pool, state) {
            self.pools
                .get_mut(pool)
                .login_waiting
                .retain(|(t, i)| (*t, *i) != (ct, id));
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

#[derive(PartialEq, Eq)]
pub(crate) enum Step {
    /// Something was handled; look again.
    Again,
    /// A whole message is not there yet.
    Wait,
    /// The client is gone or waits on something else.
    Done,
}

/// Why a client that hung up is closed: psql and libpq send Terminate and their FIN
/// together, so a read can bring both; PgBouncer's words for each.
pub(crate) fn eof_reason(unread: &[u8]) -> &'static str {
    if unread.first() == Some(&b'X') {
        "client close request"
    } else {
        "client unexpected eof"
    }
}

pub(crate) fn io_reason(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "client connection reset",
        std::io::ErrorKind::BrokenPipe => "client connection broken",
        // rustls refused what came: a failed handshake or a bad record.
        std::io::ErrorKind::InvalidData => "client TLS error",
        _ => "client socket error",
    }
}
