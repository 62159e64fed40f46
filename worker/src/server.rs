//! Server connections: connecting, logging in to PostgreSQL, reset, and closing.

use crate::auth::{md5_salted_response, ScramClient, Secret};
use crate::buf::BufPool;
use crate::config::{Config, TargetSessionAttrs};
use crate::params::{self, Params};
use crate::pool::{Pool, PoolId, Role};
use crate::relay::{self, FromServer, Scan};
use crate::stats::{TlsFailure, WorkerStats};
use crate::stream::{Filled, Sock, Stream};
use crate::wire::fields::{self, ErrorFields};
use crate::wire::write;
use crate::wire::{frame, sqlstate};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where a server is, with what is valid only there.
pub(crate) enum SState {
    /// The connect (TCP or Unix) is under way; the login waits for it.
    Connecting(Box<Login>),
    /// Logging in to PostgreSQL: TLS, authentication, the parameters reported so far.
    Login(Box<Login>),
    Idle,
    /// Linked to `client` (possibly still syncing its parameters). `None` once the client
    /// let go (release, or the client closed) and the server is on its way back to the
    /// pool or out: nothing may reach that client through it any more.
    Active {
        client: Option<usize>,
    },
    /// Running one of the pooler's own queries (reset, connect or check) before going
    /// back to the pool; PgBouncer's "tested".
    Reset(OwnQuery),
    /// Running a client's auth_query (`OwnQuery::AuthQuery`): for whom, and the answer so
    /// far. Counted and shown as `Reset`.
    Lookup(Box<ServerLookup>),
    /// Released while a cancel request for its last client is still on its way: reusing
    /// it now could cancel the next client's query instead.
    Canceling,
}

/// Which of the pooler's own queries a server in `SState::Reset` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnQuery {
    /// server_reset_query, after a client (session pooling, or server_reset_query_always).
    Reset,
    /// The database's connect_query, once after login.
    Connect,
    /// server_check_query, before reuse after server_check_delay idle.
    Check,
    /// auth_query, for a client whose user is not in the auth file (`SState::Lookup`).
    AuthQuery,
    /// The role check of a database with target_session_attrs: right after login
    /// (`after_login`), then again every server_check_delay.
    Role { after_login: bool },
}

/// Asks for what target_session_attrs needs in one round trip: whether the server is a
/// standby, and whether a new session's transactions are read-only (libpq's two checks).
pub(crate) const ROLE_QUERY: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
                          pg_catalog.current_setting('transaction_read_only')";

impl OwnQuery {
    fn what(self) -> &'static str {
        match self {
            OwnQuery::Reset => "server_reset_query",
            OwnQuery::Connect => "connect_query",
            OwnQuery::Check => "server_check_query",
            OwnQuery::AuthQuery => "auth_query",
            OwnQuery::Role { .. } => "target_session_attrs check",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{}:{}", a.ip(), a.port()),
            ServerAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl ServerAddr {
    pub fn connect(&self) -> std::io::Result<Sock> {
        Ok(match self {
            ServerAddr::Tcp(a) => {
                let s = mio::net::TcpStream::connect(*a)?;
                let _ = s.set_nodelay(true);
                Sock::Tcp(s)
            }
            ServerAddr::Unix(p) => Sock::Unix(mio::net::UnixStream::connect(p)?),
        })
    }
}

/// What the pooler logs in to PostgreSQL with.
pub(crate) enum Creds {
    None,
    Password(String),
    Md5([u8; 16]),
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

/// A server login in progress.
pub(crate) struct Login {
    /// SSLRequest sent; the server's one-byte answer decides whether TLS starts.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    creds: Creds,
    scram: Option<ScramClient>,
    params: Vec<(String, String)>,
    /// The server asked for a password this worker does not have (yet: a SCRAM login
    /// of the user brings its key). That is no verdict of PostgreSQL's, so it is not
    /// cached to refuse the logins that could bring the key.
    missing_creds: bool,
}

/// An auth_query in flight on a server: the client waiting (token, id), the cache key, and
/// the answer so far.
pub(crate) struct ServerLookup {
    pub client: (usize, u64),
    pub key: crate::auth_query::Key,
    pub answer: crate::auth_query::Answer,
}

pub(crate) struct Server {
    pub id: u64,
    pub io: Stream,
    pub state: SState,
    pub pool: PoolId,
    /// Tracked parameters as reported, and extras as the pooler set them.
    pub params: Params,
    pub backend_key: Option<(u32, u32)>,
    pub scan: Scan,
    /// ReadyForQuery messages still owed for the pooler's own queries.
    pub own: u32,
    pub own_error: Option<ErrorFields>,
    /// The client's last ReadyForQuery is judged; release once it is written.
    pub release_pending: bool,
    pub connect_time: Instant,
    pub since: Instant,
    pub addr: ServerAddr,
    /// Index of its host in the pool's host list; usize::MAX once a reload changed the
    /// list (the server is closed as soon as it is free).
    pub host: usize,
    /// When its role was last checked (target_session_attrs), or its login.
    pub checked_at: Instant,
    /// What the role query's row said, until its ReadyForQuery.
    role_seen: Option<Role>,
    /// The login's parameters, the pool's welcome if it has none once the server proves
    /// of the right kind (clients wait for a welcome, and so for such a server).
    login_params: Option<Vec<(String, String)>>,
    /// A reload changed the database: close instead of reusing.
    pub close_needed: bool,
    /// Has served a client (for server_lifetime 0: use each connection once).
    pub used: bool,
    /// Statements prepared here under pooler names.
    pub stmts: crate::prepared::ServerStmts,
    /// Cancel requests sent for this server and not yet finished by PostgreSQL.
    pub cancels: u32,
    /// Shared-memory places this server holds (database, user), given back when it closes.
    holds: (Option<usize>, Option<usize>),
    /// A replication client's own server: its startup, and the client (slot, id). Never
    /// pooled: it is linked at login and closed when the client leaves.
    pub replication: Option<(std::rc::Rc<crate::client::Replication>, usize, u64)>,
}

/// How a server's login ended, or that it has not yet.
pub(crate) enum LoginEnd {
    /// Waiting for PostgreSQL.
    Wait,
    /// ReadyForQuery: logged in.
    LoggedIn,
    /// The login failed; `tls` when TLS could not be set up with the server (no TLS where
    /// it is required, a certificate refused).
    Failed { err: ErrorFields, tls: bool },
}

/// How one of the pooler's own queries ended, or that it has not yet.
pub(crate) enum OwnEnd {
    /// Waiting for the rest of the answer.
    Wait,
    /// Close the server, for this reason.
    Remove(String),
    /// connect_query, or the role check right after login, failed: every new server
    /// would fail it too, so it counts as a login failure.
    LoginFailed(ErrorFields),
    /// The auth_query's answer is whole (`SState::Lookup`).
    LookupDone,
    /// The role check answered.
    RoleKnown { role: Role, after_login: bool },
    /// Answered: the server is free.
    Ready,
}

pub(crate) fn server_creds(pool: &Pool, auth: &crate::auth_cache::AuthCache) -> Creds {
    let t = &pool.target;
    if let Some(pw) = &t.password {
        return Creds::Password(pw.clone());
    }
    // The auth file's secret, else one auth_query found (never for a listed user).
    let secret = auth.secret(&t.user).or(pool.auth_secret.as_ref());
    match secret {
        Some(Secret::Plain(p)) => Creds::Password(p.clone()),
        Some(Secret::Md5(h)) => Creds::Md5(*h),
        Some(Secret::Scram(s)) => match auth.client_key(&t.user, &s.server_key) {
            Some(client_key) => Creds::Keys {
                client_key,
                server_key: s.server_key,
            },
            None => Creds::None,
        },
        None => Creds::None,
    }
}

pub(crate) fn give_back(shm: &crate::shm::Shm, slot: usize, holds: (Option<usize>, Option<usize>)) {
    for i in [holds.0, holds.1].into_iter().flatten() {
        shm.release(slot, i);
    }
}

/// Server `st` of pool `p` leaves `state`: out of the count or list that state keeps. With
/// [`enter`], the one place a pool's server counts change, for a state change
/// (`Worker::set_server_state`) and a close (`Worker::remove_server`) alike.
pub(crate) fn leave(p: &mut Pool, st: usize, state: &SState) {
    match state {
        SState::Connecting(_) | SState::Login(_) => p.launching -= 1,
        SState::Idle => {
            if let Some(i) = p.idle.iter().rposition(|&t| t == st) {
                p.idle.remove(i);
            }
        }
        SState::Active { .. } => p.active -= 1,
        SState::Reset(_) | SState::Lookup(_) => p.resetting -= 1,
        SState::Canceling => p.canceling -= 1,
    }
}

/// Server `st` of pool `p` enters `state`.
pub(crate) fn enter(p: &mut Pool, st: usize, state: &SState, round_robin: bool) {
    match state {
        SState::Connecting(_) | SState::Login(_) => p.launching += 1,
        // `idle` is handed out from its end: round-robin puts a server at the front.
        SState::Idle if round_robin => p.idle.insert(0, st),
        SState::Idle => p.idle.push(st),
        SState::Active { .. } => p.active += 1,
        SState::Reset(_) | SState::Lookup(_) => p.resetting += 1,
        SState::Canceling => p.canceling += 1,
    }
}

impl Server {
    /// Whether an idle server must pass server_check_query (or, for a database with
    /// target_session_attrs, its role check) before a client gets it.
    pub fn needs_check(&self, pool: &Pool, cfg: &Config, now: Instant) -> bool {
        let delay = cfg.server_check_delay;
        self.role_check_due(pool, now, delay)
            || (!cfg.server_check_query.trim().is_empty()
                && now.duration_since(self.since) >= delay)
    }

    /// The server's answer to SSLRequest: `S` starts TLS, `N` goes on in cleartext when
    /// server_tls_sslmode allows it. Ok(false) while the byte has not come.
    fn tls_answer(&mut self, pool: &Pool, tls_required: bool) -> Result<bool, ErrorFields> {
        let proto = |m: &str| error_fields(sqlstate::PROTOCOL_VIOLATION, m.to_string());
        let Some(&answer) = self.io.unread().first() else {
            return Ok(false);
        };
        let Some(config) = self.login_mut().and_then(|l| l.tls.take()) else {
            return Err(proto("login state lost"));
        };
        match answer {
            b'S' => {
                // Anything after `S` came in cleartext and could have been injected by
                // whoever sits on the path (CVE-2021-23222); libpq refuses it too.
                if self.io.unread().len() > 1 {
                    return Err(proto("server sent unencrypted data after SSL response"));
                }
                self.io.consume(1);
                let Some(host) = pool.target.hosts.get(self.host) else {
                    return Err(error_fields(
                        sqlstate::CONNECTION_FAILURE,
                        "the database's host list changed by reload".into(),
                    ));
                };
                let name = crate::tls::server_name(host)
                    .map_err(|e| error_fields(sqlstate::CONNECTION_FAILURE, e))?;
                self.io.start_tls_connect(config, name).map_err(|e| {
                    let msg = format!("could not start TLS with server: {e}");
                    error_fields(sqlstate::CONNECTION_FAILURE, msg)
                })?;
            }
            b'N' => {
                self.io.consume(1);
                if tls_required {
                    return Err(error_fields(
                        sqlstate::CONNECTION_FAILURE,
                        "server does not support SSL, but SSL was required".into(),
                    ));
                }
            }
            _ => return Err(proto("server answered SSLRequest with neither S nor N")),
        }
        Ok(true)
    }

    /// Handles one login message; Ok(true) once ReadyForQuery ends the login.
    fn login_message(
        &mut self,
        user: &str,
        bufs: &mut BufPool,
        tag: u8,
        body: &[u8],
    ) -> Result<bool, ErrorFields> {
        let proto = |m: &str| error_fields(sqlstate::PROTOCOL_VIOLATION, m.to_string());
        let (SState::Connecting(login) | SState::Login(login)) = &mut self.state else {
            return Err(proto("login state lost"));
        };
        let out = self.io.out(bufs);
        match tag {
            b'R' => {
                let (code, rest) =
                    fields::u32_be(body).ok_or_else(|| proto("short authentication request"))?;
                match code {
                    0 => {}
                    3 => match &login.creds {
                        Creds::Password(p) => write::password_message(out, p.as_bytes()),
                        _ => {
                            login.missing_creds = true;
                            return Err(no_password(user, "cleartext"));
                        }
                    },
                    5 => {
                        let salt: [u8; 4] = rest
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| proto("short md5 salt"))?;
                        let hash = match &login.creds {
                            Creds::Password(p) => crate::auth::md5_password_hash(user, p),
                            Creds::Md5(h) => *h,
                            _ => {
                                login.missing_creds = true;
                                return Err(no_password(user, "md5"));
                            }
                        };
                        write::password_message(out, md5_salted_response(&hash, salt).as_bytes());
                    }
                    10 => {
                        let offers_scram = rest.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offers_scram {
                            return Err(proto("server offers no supported SASL mechanism"));
                        }
                        let nonce =
                            crate::auth::random_nonce().map_err(|e| proto(&e.to_string()))?;
                        let client = match &login.creds {
                            Creds::Password(p) => ScramClient::with_password(p, nonce),
                            Creds::Keys {
                                client_key,
                                server_key,
                            } => ScramClient::with_keys(*client_key, *server_key, nonce),
                            _ => {
                                login.missing_creds = true;
                                return Err(no_password(user, "SCRAM"));
                            }
                        };
                        write::sasl_initial_response(out, "SCRAM-SHA-256", &client.client_first());
                        login.scram = Some(client);
                    }
                    11 => {
                        let scram = login
                            .scram
                            .as_mut()
                            .ok_or_else(|| proto("unexpected SASL continue"))?;
                        let reply = scram
                            .handle_server_first(rest)
                            .map_err(|e| scram_error(user, e))?;
                        write::sasl_response(out, &reply);
                    }
                    12 => {
                        let scram = login
                            .scram
                            .as_mut()
                            .ok_or_else(|| proto("unexpected SASL final"))?;
                        scram
                            .handle_server_final(rest)
                            .map_err(|e| scram_error(user, e))?;
                    }
                    other => {
                        return Err(error_fields(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!("server requested unsupported authentication method {other}"),
                        ))
                    }
                }
            }
            b'S' => {
                if let Some((k, v)) = fields::parameter_status(body) {
                    login.params.push((k.to_string(), v.to_string()));
                }
            }
            b'K' => {
                if let (Some((pid, rest)), true) = (fields::u32_be(body), body.len() == 8) {
                    let (key, _) = fields::u32_be(rest).unwrap_or((0, rest));
                    self.backend_key = Some((pid, key));
                }
            }
            b'E' => return Err(ErrorFields::parse(body)),
            b'N' | b'v' => {}
            b'Z' => return Ok(true),
            other => {
                return Err(proto(&format!(
                    "unexpected message type {} during login",
                    other as char
                )))
            }
        }
        Ok(false)
    }

    /// The connect finished: ask for TLS (over TCP only, as libpq and PgBouncer do, and
    /// when server TLS is on), or send the startup packet.
    pub(crate) fn connected(
        &mut self,
        pool: &Pool,
        bufs: &mut BufPool,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) {
        // Connecting and Login both count as launching: the login moves over, and no
        // pool count changes.
        self.state = match std::mem::replace(&mut self.state, SState::Canceling) {
            SState::Connecting(login) => SState::Login(login),
            other => other,
        };
        if let (Some(config), ServerAddr::Tcp(_), SState::Login(login)) =
            (tls, &self.addr, &mut self.state)
        {
            login.tls = Some(config.clone());
            write::ssl_request(self.io.out(bufs));
        } else {
            self.send_startup(pool, bufs);
        }
    }

    /// Queues the startup packet: the first thing the server reads, or the first inside TLS.
    fn send_startup(&mut self, pool: &Pool, bufs: &mut BufPool) {
        let mut startup = vec![
            ("user", pool.target.user.as_str()),
            ("database", pool.target.dbname.as_str()),
        ];
        // The database's application_name; a client's own is SET on top of it.
        if let Some(app) = &pool.target.application_name {
            startup.push(("application_name", app.as_str()));
        }
        // The database's client_encoding, DateStyle and TimeZone: what its clients get
        // unless they ask for their own (then SET on top, as for every parameter).
        startup.extend(
            pool.target
                .startup_params
                .iter()
                .map(|(k, v)| (*k, v.as_str())),
        );
        // A replication server takes the client's parameters in its startup packet:
        // physical replication connections refuse SET.
        if let Some((r, _, _)) = &self.replication {
            // The client's application_name, when it sent one, instead of the database's.
            startup.retain(|(k, _)| r.params.iter().all(|(n, _)| n != k));
            startup.push(("replication", r.kind));
            startup.extend(r.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        write::startup_message(self.io.out(bufs), &startup);
    }

    /// Reads and answers the server's login messages until the socket has nothing more
    /// or the login ends.
    pub(crate) fn login_io(
        &mut self,
        pool: &Pool,
        bufs: &mut BufPool,
        stats: &mut WorkerStats,
        tls_required: bool,
    ) -> LoginEnd {
        let failed = |msg: String| LoginEnd::Failed {
            err: error_fields(sqlstate::CONNECTION_FAILURE, msg),
            tls: false,
        };
        loop {
            if let Err(e) = self.io.flush_own(bufs) {
                return failed(format!("server connection failed during login: {e}"));
            }
            let got = match self.io.fill(bufs) {
                Ok(g) => g,
                Err(e) => {
                    if self.io.tls_handshaking() {
                        stats.tls_failures[TlsFailure::ServerHandshake as usize] += 1;
                    }
                    return failed(format!("server connection failed during login: {e}"));
                }
            };
            if matches!(&self.state, SState::Login(l) if l.tls.is_some()) {
                match self.tls_answer(pool, tls_required) {
                    Ok(true) => {
                        // SSLRequest answered (and TLS started if agreed): now the startup.
                        self.send_startup(pool, bufs);
                        continue;
                    }
                    Ok(false) if got == Filled::Eof => {
                        return failed("server closed the connection during SSL negotiation".into())
                    }
                    Ok(false) if self.io.may_read() => continue,
                    Ok(false) => return LoginEnd::Wait,
                    Err(err) => return LoginEnd::Failed { err, tls: true },
                }
            }
            loop {
                let (tag, body) = match frame::message(self.io.unread(), relay::MAX_INSPECTED) {
                    Ok(Some((h, body))) => (h.tag, body.to_vec()),
                    Ok(None) => {
                        if let Ok(Some(h)) = frame::header(self.io.unread(), relay::MAX_INSPECTED) {
                            self.io.make_room(h.total, bufs);
                        }
                        break;
                    }
                    Err(e) => {
                        return LoginEnd::Failed {
                            err: error_fields(
                                sqlstate::PROTOCOL_VIOLATION,
                                format!("server sent {e}"),
                            ),
                            tls: false,
                        };
                    }
                };
                self.io.consume(body.len() + 5);
                match self.login_message(&pool.target.user, bufs, tag, &body) {
                    Ok(true) => return LoginEnd::LoggedIn,
                    Ok(false) => {}
                    Err(err) => return LoginEnd::Failed { err, tls: false },
                }
            }
            if got == Filled::Eof {
                return failed("server closed the connection during login".into());
            }
            if got == Filled::Nothing
                && (self.io.nothing_to_send() || !self.io.is_writable())
                && !self.io.may_read()
            {
                return LoginEnd::Wait;
            }
        }
    }

    /// Reads the answer to one of the pooler's own queries (`what`) until the socket has
    /// nothing more or the answer ends.
    pub(crate) fn own_query_io(&mut self, what: OwnQuery, bufs: &mut BufPool) -> OwnEnd {
        loop {
            if self.io.flush_own(bufs).is_err() {
                let why = format!("server connection failed during {}", what.what());
                return OwnEnd::Remove(why);
            }
            let got = self.io.fill(bufs);
            let mut progress = matches!(got, Ok(Filled::Bytes(_)));
            if !matches!(got, Ok(Filled::Bytes(_) | Filled::Nothing)) {
                let why = format!("server closed the connection during {}", what.what());
                return OwnEnd::Remove(why);
            }
            let mut tx = crate::relay::TxState::new();
            loop {
                match relay::from_server(self.io.unread(), &mut self.scan, &mut tx, self.own, None)
                {
                    FromServer::Own { tag, body } => {
                        let len = body.len() + 5;
                        if tag == b'D' && matches!(what, OwnQuery::Role { .. }) {
                            self.role_seen = role_from_row(body);
                        }
                        let done = match &mut self.state {
                            SState::Lookup(l) => {
                                // Errors are the lookup's to judge; the server stays usable.
                                l.answer.on_message(tag, body);
                                let mut error = None;
                                own_answer(
                                    tag,
                                    body,
                                    &mut self.own,
                                    &mut error,
                                    &mut self.params,
                                    None,
                                )
                            }
                            _ => own_answer(
                                tag,
                                body,
                                &mut self.own,
                                &mut self.own_error,
                                &mut self.params,
                                None,
                            ),
                        };
                        self.io.consume(len);
                        progress = true;
                        if done {
                            return self.own_query_done(what);
                        }
                    }
                    FromServer::NeedMore => {
                        if let Some(total) =
                            relay::wants_whole(self.io.unread(), &self.scan, self.own)
                        {
                            self.io.make_room(total, bufs);
                        }
                        break;
                    }
                    _ => return OwnEnd::Remove(format!("unexpected data during {}", what.what())),
                }
            }
            // Room made for a long answer: read on, no event will say there is more.
            progress |= self.io.may_read();
            if !progress {
                return OwnEnd::Wait;
            }
        }
    }

    /// The last ReadyForQuery owed for one of the pooler's own queries came.
    fn own_query_done(&mut self, what: OwnQuery) -> OwnEnd {
        if what == OwnQuery::AuthQuery {
            return OwnEnd::LookupDone;
        }
        if let Some(mut e) = self.own_error.take() {
            if what == OwnQuery::Connect {
                // Every new server would fail it again: a login failure, so
                // server_login_retry spaces the attempts out.
                e.message = Some(format!("connect_query failed: {}", e.message()));
                return OwnEnd::LoginFailed(e);
            }
            if what == (OwnQuery::Role { after_login: true }) {
                // As connect_query: every new server would fail it.
                e.message = Some(format!(
                    "target_session_attrs check failed: {}",
                    e.message()
                ));
                return OwnEnd::LoginFailed(e);
            }
            return OwnEnd::Remove(format!("{} failed: {e}", what.what()));
        }
        self.scan = Scan::default();
        if let OwnQuery::Role { after_login } = what {
            return match self.role_seen.take() {
                Some(role) => OwnEnd::RoleKnown { role, after_login },
                None => OwnEnd::Remove("target_session_attrs check returned no row".into()),
            };
        }
        OwnEnd::Ready
    }

    /// An idle server should say nothing: notices are dropped and parameter reports kept;
    /// anything else, or a hang-up, is the reason to close it.
    pub(crate) fn idle_io(&mut self, bufs: &mut BufPool) -> Result<(), String> {
        loop {
            match self.io.fill(bufs) {
                Ok(Filled::Bytes(_) | Filled::Nothing) => {}
                Ok(Filled::Eof) | Err(_) => return Err("server closed the connection".into()),
            }
            self.idle_messages(bufs)?;
            if !self.io.may_read() {
                break;
            }
        }
        self.io.release_buffers(bufs);
        Ok(())
    }

    /// Handles the whole messages an idle server sent.
    fn idle_messages(&mut self, bufs: &mut BufPool) -> Result<(), String> {
        loop {
            match frame::message(self.io.unread(), relay::MAX_INSPECTED) {
                Ok(Some((h, body))) => {
                    match h.tag {
                        b'N' | b'A' => {}
                        b'S' => {
                            if let Some((k, v)) = fields::parameter_status(body) {
                                if let Some(name) = params::tracked_name(k) {
                                    self.params.set(name, v);
                                }
                            }
                        }
                        b'E' => {
                            let e = ErrorFields::parse(body);
                            return Err(format!("server error while idle: {e}"));
                        }
                        _ => return Err("idle server got unexpected data".into()),
                    }
                    self.io.consume(h.total);
                }
                Ok(None) => {
                    // A long notice: make room so the next read can complete it.
                    if let Ok(Some(h)) = frame::header(self.io.unread(), relay::MAX_INSPECTED) {
                        self.io.make_room(h.total, bufs);
                    }
                    return Ok(());
                }
                Err(_) => return Err("idle server sent a bad message".into()),
            }
        }
    }

    /// The client this server serves, while it serves one.
    #[inline]
    pub(crate) fn linked_client(&self) -> Option<usize> {
        match self.state {
            SState::Active { client } => client,
            _ => None,
        }
    }

    /// The linked client let go: the server stays Active (and counted so) until the loop
    /// moves it on, but serves nobody.
    pub(crate) fn unlink(&mut self) {
        if let SState::Active { client } = &mut self.state {
            *client = None;
        }
    }

    /// The server holds `holds` (its shared-memory places, given back when it closes).
    pub(crate) fn holding(mut self, holds: (Option<usize>, Option<usize>)) -> Server {
        self.holds = holds;
        self
    }

    /// The login in progress, while the server is connecting or logging in.
    fn login_mut(&mut self) -> Option<&mut Login> {
        match &mut self.state {
            SState::Connecting(l) | SState::Login(l) => Some(l),
            _ => None,
        }
    }

    /// The shared-memory places this server holds (database, user).
    pub(crate) fn holds(&self) -> (Option<usize>, Option<usize>) {
        self.holds
    }

    /// The login ended with ReadyForQuery: keep what PostgreSQL reported. Returns the role
    /// it reported, when it reported one (PostgreSQL 14+).
    pub(crate) fn logged_in(&mut self, now: Instant) -> Option<Role> {
        self.checked_at = now;
        let params = self
            .login_mut()
            .map(|l| std::mem::take(&mut l.params))
            .unwrap_or_default();
        for (k, v) in &params {
            if let Some(name) = params::tracked_name(k) {
                self.params.set(name, v);
            }
        }
        log::debug!("S-{}: login ok", self.id);
        let role = role_from_params(&params);
        if self.replication.is_none() {
            self.login_params = Some(params);
        }
        role
    }

    /// The login's parameters, for the pool's welcome (once, when the server proves of
    /// the right kind).
    pub(crate) fn take_login_params(&mut self) -> Vec<(String, String)> {
        self.login_params.take().unwrap_or_default()
    }

    /// The server asked for a password this worker does not have yet.
    pub(crate) fn missing_creds(&self) -> bool {
        matches!(&self.state, SState::Connecting(l) | SState::Login(l) if l.missing_creds)
    }

    /// A connection to `addr` (host `host` of the pool's list) whose connect is under way,
    /// to log in with `creds`.
    pub fn connecting(
        id: u64,
        io: Stream,
        pool: PoolId,
        (addr, host): (ServerAddr, usize),
        creds: Creds,
        now: Instant,
    ) -> Server {
        let login = Login {
            tls: None,
            creds,
            scram: None,
            params: Vec::new(),
            missing_creds: false,
        };
        Server {
            id,
            io,
            state: SState::Connecting(Box::new(login)),
            pool,
            params: Params::new(),
            backend_key: None,
            scan: Scan::default(),
            own: 0,
            own_error: None,
            release_pending: false,
            connect_time: now,
            since: now,
            addr,
            host,
            checked_at: now,
            role_seen: None,
            login_params: None,
            close_needed: false,
            used: false,
            stmts: Default::default(),
            cancels: 0,
            holds: (None, None),
            replication: None,
        }
    }

    /// Whether a server of a database with target_session_attrs was last checked
    /// server_check_delay ago (always, when that is 0).
    pub fn role_check_due(
        &self,
        pool: &crate::pool::Pool,
        now: Instant,
        delay: std::time::Duration,
    ) -> bool {
        pool.target.attrs != TargetSessionAttrs::Any && now.duration_since(self.checked_at) >= delay
    }

    /// server_lifetime: connected longer than the limit, or used once when it is 0.
    pub fn lifetime_over(&self, lifetime: std::time::Duration, now: Instant) -> bool {
        if lifetime.is_zero() {
            self.used
        } else {
            now.duration_since(self.connect_time) >= lifetime
        }
    }

    pub fn name(&self, pools: &crate::pool::Pools) -> String {
        let p = pools.get(self.pool);
        let (db, user) = (
            crate::logsafe::Escaped(&p.db),
            crate::logsafe::Escaped(&p.user),
        );
        format!("S-{}: {db}/{user}@{}", self.id, self.addr)
    }
}

/// One answer to the pooler's own queries (parameter sync, reset): errors are kept,
/// reported parameters recorded (for the linked client too), ReadyForQuery counted.
/// Returns true once the last owed ReadyForQuery has come.
pub(crate) fn own_answer(
    tag: u8,
    body: &[u8],
    s_own: &mut u32,
    s_error: &mut Option<ErrorFields>,
    s_params: &mut Params,
    client: Option<&mut Params>,
) -> bool {
    match tag {
        b'E' => *s_error = Some(ErrorFields::parse(body)),
        b'S' => {
            if let Some((k, v)) = fields::parameter_status(body) {
                if let Some(name) = params::tracked_name(k) {
                    s_params.set(name, v);
                    if let Some(c) = client {
                        c.set(name, v);
                    }
                }
            }
        }
        b'Z' => {
            *s_own -= 1;
            return *s_own == 0;
        }
        _ => {}
    }
    false
}

/// Whether a login failure says something about the host rather than the database or
/// the user: no connection, PostgreSQL starting up or shutting down, or full. Another
/// host of the list may do.
pub(crate) fn about_host(err: &ErrorFields) -> bool {
    crate::pool::LoginFailure::says_not_up(err) || err.code().starts_with("53")
}

/// The role PostgreSQL 14+ reports at login (`in_hot_standby`, `default_transaction_read_only`),
/// when it reports both.
fn role_from_params(params: &[(String, String)]) -> Option<Role> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v == "on")
    };
    let in_recovery = get("in_hot_standby")?;
    let default_read_only = get("default_transaction_read_only")?;
    Some(Role {
        in_recovery,
        read_only: in_recovery || default_read_only,
    })
}

/// The role from the row of [`ROLE_QUERY`]: `t`/`f`, then `on`/`off`.
fn role_from_row(body: &[u8]) -> Option<Role> {
    let mut rest = body.get(2..)?;
    let mut col = || -> Option<&[u8]> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let v = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(v)
    };
    let in_recovery = col()? == b"t";
    let read_only = col()? == b"on";
    Some(Role {
        in_recovery,
        read_only,
    })
}

pub(crate) fn error_fields(code: &str, message: String) -> ErrorFields {
    ErrorFields {
        severity: Some("FATAL".into()),
        code: Some(code.into()),
        message: Some(message),
        detail: None,
    }
}

fn no_password(user: &str, method: &str) -> ErrorFields {
    error_fields(
        sqlstate::INVALID_PASSWORD,
        format!("server asked for {method} authentication but the pooler has no password for user \"{user}\""),
    )
}

fn scram_error(user: &str, e: crate::auth::ScramError) -> ErrorFields {
    error_fields(
        sqlstate::INVALID_PASSWORD,
        format!("SCRAM authentication with the server failed for user \"{user}\": {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[&[u8]]) -> Vec<u8> {
        let mut body = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        body
    }

    #[test]
    fn the_role_comes_from_the_row_or_the_login_parameters() {
        let standby = Role {
            in_recovery: true,
            read_only: true,
        };
        assert_eq!(role_from_row(&row(&[b"t", b"on"])), Some(standby));
        assert_eq!(
            role_from_row(&row(&[b"f", b"off"])),
            Some(Role {
                in_recovery: false,
                read_only: false
            })
        );
        assert_eq!(role_from_row(&row(&[b"f"])), None, "a column missing");
        assert_eq!(role_from_row(&[0, 2, 0xff, 0xff, 0xff, 0xff]), None, "NULL");
        let p = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // PostgreSQL 13 and older report no in_hot_standby: the query decides.
        assert_eq!(
            role_from_params(&p(&[("default_transaction_read_only", "off")])),
            None
        );
        assert_eq!(
            role_from_params(&p(&[
                ("in_hot_standby", "off"),
                ("default_transaction_read_only", "on")
            ])),
            Some(Role {
                in_recovery: false,
                read_only: true
            })
        );
        assert_eq!(
            role_from_params(&p(&[
                ("default_transaction_read_only", "off"),
                ("in_hot_standby", "on")
            ])),
            Some(standby)
        );
    }

    #[test]
    fn host_failures_are_told_from_other_login_failures() {
        let e = |code: &str| error_fields(code, "x".into());
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(about_host(&e(code)), "{code}");
        }
        for code in ["28P01", "3D000", "28000", "42601"] {
            assert!(!about_host(&e(code)), "{code}");
        }
    }
}
