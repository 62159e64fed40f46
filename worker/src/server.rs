//! Server connections: connecting, logging in to PostgreSQL, reset, and closing.

use crate::auth::{md5_salted_response, ScramClient, Secret};
use crate::buf::BufPool;
use crate::client::CState;
use crate::close::Close;
use crate::config::{Config, TargetSessionAttrs};
use crate::dns::Lookup;
use crate::params::{self, Params};
use crate::pool::{HostLeft, Pool, PoolId, Role, Welcome};
use crate::relay::{self, FromServer, Scan};
use crate::stats::{TlsFailure, WorkerStats};
use crate::stream::{Filled, Sock, Stream};
use crate::wire::fields::{self, ErrorFields};
use crate::wire::write;
use crate::wire::{frame, sqlstate};
use crate::worker::{Conn, Worker};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SState {
    Connecting,
    Login,
    Idle,
    /// Linked to a client (possibly still syncing its parameters).
    Active,
    /// Running one of the pooler's own queries (reset, connect or check) before going
    /// back to the pool; PgBouncer's "tested".
    Reset(OwnQuery),
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
    /// auth_query, for a client whose user is not in the auth file (`Server::lookup`).
    AuthQuery,
    /// The role check of a database with target_session_attrs: right after login
    /// (`after_login`), then again every server_check_delay.
    Role { after_login: bool },
}

/// Asks for what target_session_attrs needs in one round trip: whether the server is a
/// standby, and whether a new session's transactions are read-only (libpq's two checks).
const ROLE_QUERY: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
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
enum Creds {
    None,
    Password(String),
    Md5([u8; 16]),
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

struct Login {
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
    pub client: Option<usize>,
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
    login: Option<Box<Login>>,
    /// The auth_query running here, and for whom.
    pub lookup: Option<Box<ServerLookup>>,
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
    /// The auth_query's answer is whole (`Server::lookup`).
    LookupDone,
    /// The role check answered.
    RoleKnown { role: Role, after_login: bool },
    /// Answered: the server is free.
    Ready,
}

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

fn server_creds(pool: &Pool, auth: &crate::auth_cache::AuthCache) -> Creds {
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

fn give_back(shm: &crate::shm::Shm, slot: usize, holds: (Option<usize>, Option<usize>)) {
    for i in [holds.0, holds.1].into_iter().flatten() {
        shm.release(slot, i);
    }
}

/// Server `st` of pool `p` leaves `state`: out of the count or list that state keeps. With
/// [`enter`], the one place a pool's server counts change, for a state change
/// (`Worker::set_server_state`) and a close (`Worker::remove_server`) alike.
fn leave(p: &mut Pool, st: usize, state: SState) {
    match state {
        SState::Connecting | SState::Login => p.launching -= 1,
        SState::Idle => {
            if let Some(i) = p.idle.iter().rposition(|&t| t == st) {
                p.idle.remove(i);
            }
        }
        SState::Active => p.active -= 1,
        SState::Reset(_) => p.resetting -= 1,
        SState::Canceling => p.canceling -= 1,
    }
}

/// Server `st` of pool `p` enters `state`.
fn enter(p: &mut Pool, st: usize, state: SState, round_robin: bool) {
    match state {
        SState::Connecting | SState::Login => p.launching += 1,
        // `idle` is handed out from its end: round-robin puts a server at the front.
        SState::Idle if round_robin => p.idle.insert(0, st),
        SState::Idle => p.idle.push(st),
        SState::Active => p.active += 1,
        SState::Reset(_) => p.resetting += 1,
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
        let Some(config) = self.login.as_mut().and_then(|l| l.tls.take()) else {
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
        let Some(login) = self.login.as_mut() else {
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
    fn connected(
        &mut self,
        pool: &Pool,
        bufs: &mut BufPool,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) {
        if let (Some(config), ServerAddr::Tcp(_), Some(login)) =
            (tls, &self.addr, self.login.as_mut())
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
    fn login_io(
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
            if self.login.as_ref().is_some_and(|l| l.tls.is_some()) {
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
    fn own_query_io(&mut self, what: OwnQuery, bufs: &mut BufPool) -> OwnEnd {
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
                        let done = match self.lookup.as_mut() {
                            Some(l) => {
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
                            None => own_answer(
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
    fn idle_io(&mut self, bufs: &mut BufPool) -> Result<(), String> {
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

    /// A connection to `addr` (host `host` of the pool's list) whose connect is under way.
    pub fn connecting(
        id: u64,
        io: Stream,
        pool: PoolId,
        addr: ServerAddr,
        host: usize,
        now: Instant,
    ) -> Server {
        Server {
            id,
            io,
            state: SState::Connecting,
            pool,
            client: None,
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
            login: None,
            lookup: None,
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

    pub fn name(&self, w: &Worker) -> String {
        let p = w.pools.get(self.pool);
        let (db, user) = (
            crate::logsafe::Escaped(&p.db),
            crate::logsafe::Escaped(&p.user),
        );
        format!("S-{}: {db}/{user}@{}", self.id, self.addr)
    }
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
        let mut server = Server::connecting(id, io, pool, addr, host, self.now);
        server.login = Some(Box::new(Login {
            tls: None,
            creds,
            scram: None,
            params: Vec::new(),
            missing_creds: false,
        }));
        server.holds = holds;
        server.replication = replication;
        let st = self.conns.insert(Conn::Server(Box::new(server)));
        enter(self.pools.get_mut(pool), st, SState::Connecting, false);
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
        match s.state {
            SState::Connecting => {
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
                s.state = SState::Login;
                let tls = self.tls.connect.as_ref();
                s.connected(self.pools.get(s.pool), &mut self.bufs, tls);
                self.server_login_io(st);
            }
            SState::Login => self.server_login_io(st),
            SState::Idle => self.idle_server_io(st),
            SState::Active => {
                if let Some(ct) = s.client {
                    self.pump(ct, st);
                }
            }
            SState::Reset(what) => self.reset_io(st, what),
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
        let login = s.login.take();
        let pool = s.pool;
        s.checked_at = now;
        let params = login.map(|l| l.params).unwrap_or_default();
        for (k, v) in &params {
            if let Some(name) = params::tracked_name(k) {
                s.params.set(name, v);
            }
        }
        log::debug!("S-{}: login ok", s.id);
        let role = role_from_params(&params);
        if let Some((_, ct, id)) = &s.replication {
            let (ct, id) = (*ct, *id);
            // Its client's own: linked now, without the pool's checks or welcome.
            return self.link_replication(st, ct, id);
        }
        s.login_params = Some(params);
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
            .is_some_and(|c| c.id == id && c.state == CState::Waiting && c.server.is_none());
        if !waiting {
            return self.remove_server(st, "replication client was closed");
        }
        self.set_server_state(st, SState::Active);
        self.link(ct, st);
    }

    /// A new server logged in and is of the kind the pool wants: the pool is not failing
    /// any more; greet clients waiting for it, run connect_query, serve.
    fn server_usable(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        let (pool, host) = (s.pool, s.host);
        let params = s.login_params.take().unwrap_or_default();
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
                self.finish_login(ct);
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
        let remember = !s.login.as_ref().is_some_and(|l| l.missing_creds);
        let tls_refused = tls_refused || s.io.tls_handshaking();
        let not_up = !tls_refused && crate::pool::LoginFailure::says_not_up(&err);
        // A server whose connect_query failed counts as logged in: it serves nobody.
        let counted = usize::from(matches!(s.state, SState::Reset(_)));
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
            self.defer_activation(pool);
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
        leave(p, st, old);
        enter(p, st, new, self.cfg.server_round_robin);
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
        self.reset_io(st, what);
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

    /// Closes a server connection and forgets it; a linked client is told and closed.
    pub(crate) fn remove_server(&mut self, st: usize, reason: &str) {
        let lookup = match self.conns.get_mut(st) {
            Some(Conn::Server(s)) => s.lookup.take(),
            _ => return,
        };
        let Some(Conn::Server(s)) = self.conns.get(st) else {
            return;
        };
        log::info!(
            "{}: closing because: {}",
            s.name(self),
            crate::logsafe::Escaped(reason)
        );
        let client = s.client;
        let pool = s.pool;
        if let (None, Some((_, ct, id))) = (client, &s.replication) {
            // A replication client waits for this server alone: it is told now.
            let (ct, id) = (*ct, *id);
            if self
                .client(ct)
                .is_some_and(|c| c.id == id && c.server.is_none())
            {
                let msg = format!("replication server connection failed: {reason}");
                self.close_client(ct, Close::Fatal(sqlstate::CONNECTION_FAILURE, msg));
            }
        }
        if let Some(ct) = client {
            if let Some(c) = self.client(ct) {
                c.server = None;
            }
            self.close_client(
                ct,
                Close::Fatal(sqlstate::CONNECTION_FAILURE, "server conn crashed?".into()),
            );
        }
        let Some(Conn::Server(s)) = self.conns.get(st) else {
            return;
        };
        leave(self.pools.get_mut(pool), st, s.state);
        if let Some(Conn::Server(mut s)) = self.conns.try_remove(st) {
            give_back(&self.shm, self.slot, s.holds);
            if s.state != SState::Connecting {
                let mut bye = Vec::with_capacity(5);
                write::terminate(&mut bye);
                let _ = s.io.send(&bye);
            }
            s.io.shutdown();
            s.io.drop_buffers(&mut self.bufs);
        }
        if let Some(l) = lookup {
            let (ct, id) = l.client;
            self.lookup_answered(ct, id, Err(format!("server connection lost: {reason}")));
        }
        self.serve_waiting(pool);
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
            if crate::server::needs_check(&self.conns, st, p, &self.cfg, self.now) {
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
                let queued = c.lookup.as_ref().is_some_and(|l| l.server.is_none());
                if c.id == id && c.state == CState::Lookup && queued {
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
        let Some(l) = c.lookup.as_mut() else { return };
        l.server = Some(st);
        let lookup = Box::new(ServerLookup {
            client: (ct, c.id),
            key: l.key.clone(),
            answer: Default::default(),
        });
        let query = std::mem::take(&mut l.query);
        let user = c.user.clone();
        self.set_server_state(st, SState::Reset(OwnQuery::AuthQuery));
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        crate::auth_query::write_request(s.io.out(&mut self.bufs), &query, &user);
        s.own += 1;
        s.scan = Scan::default();
        s.lookup = Some(lookup);
        self.reset_io(st, OwnQuery::AuthQuery);
    }

    /// The auth_query's ReadyForQuery came: cache what it found (a failure never), give
    /// the server back, and go on with the client's login.
    fn lookup_done(&mut self, st: usize) {
        let Some(Conn::Server(s)) = self.conns.get_mut(st) else {
            return;
        };
        s.scan = Scan::default();
        let Some(l) = s.lookup.take() else {
            return self.server_ready(st);
        };
        let ServerLookup {
            client,
            key,
            answer,
        } = *l;
        let result = answer.finish();
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
            .filter(|c| c.id == id && c.state == CState::Lookup);
        let Some(c) = waiting else {
            if let Err(why) = result {
                log::warn!("auth_query failed: {}", crate::logsafe::Escaped(&why));
            }
            return;
        };
        c.lookup = None;
        match result {
            Ok(found) => {
                c.found = Some(Box::new(found));
                c.state = CState::Auth;
                c.since = now;
                self.begin_auth(ct);
                self.drive_client(ct);
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
fn about_host(err: &ErrorFields) -> bool {
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

fn error_fields(code: &str, message: String) -> ErrorFields {
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
