//! A client's login as a state machine over its own buffers: the PROXY header, the first
//! packet, TLS, and the password or SASL exchange. Each step says what the loop does next.
//!
//! Nothing here touches another connection, a pool or the connection table: what needs
//! them (a cancel request, an auth_query lookup, the pool that greets the client) comes back
//! as a [`Next`] for the loop (worker/clients.rs) to carry out.

use crate::access::{Asker, Method};
use crate::admin::role::{console_role, is_console};
use crate::auth::hba::Hba;
use crate::auth::{ScramServer, Secret};
use crate::auth_cache::AuthCache;
use crate::buf::BufPool;
use crate::client::{io_reason, AuthStep, CState, Client, Replication};
use crate::close::Close;
use crate::config::{AuthSource, Config};
use crate::intern::intern;
use crate::logsafe::Escaped;
use crate::params::{self, Params};
use crate::proxy::{Peer, Read, Rejection};
use crate::shm::{Kind, Shm};
use crate::stats::{TlsFailure, WorkerStats};
use crate::tls::Accept;
use crate::wire::startup::{self, FirstPacket, Startup};
use crate::wire::write;
use crate::wire::{fields, frame, sqlstate, NEWEST_MINOR};
use std::time::Instant;

/// Longest message accepted while logging in (passwords and SASL messages).
const MAX_AUTH_MESSAGE: usize = 8192;

/// What a login step needs besides the client, lent by the worker for one step.
pub(crate) struct Ctx<'a> {
    pub cfg: &'a Config,
    pub bufs: &'a mut BufPool,
    pub stats: &'a mut WorkerStats,
    /// The auth file's secrets; a SCRAM login leaves its ClientKey here.
    pub auth: &'a mut AuthCache,
    pub hba: &'a Hba,
    /// Client TLS, when client_tls_sslmode is not disable.
    pub tls: Option<&'a Accept>,
    pub shm: &'a Shm,
    /// The previous generation's counts while it drains after an online upgrade.
    pub predecessor: Option<&'a Shm>,
    pub slot: usize,
    pub now: Instant,
}

/// What the loop does after a login step.
pub(crate) enum Next {
    /// Something was handled: step again.
    Again,
    /// A whole message is not there yet.
    Wait,
    /// Close the client, telling it why when the reason says so.
    Close(Close),
    /// The first packet was a CancelRequest: route it, then close the connection.
    Cancel { pid: u32, key: Vec<u8> },
    /// The user is not in the auth file: look its password up with auth_query.
    Lookup(AuthSource),
    /// The client proved who it is: find its pool and greet it. The client's state is
    /// still its login's: the loop moves it on (`client_authenticated`).
    Authenticated,
    /// The client is past its login (or waits for the loop): nothing to step here.
    Elsewhere,
}

impl Client {
    /// Handles one buffered login message if a whole one is there.
    pub(crate) fn login_step(&mut self, cx: &mut Ctx) -> Next {
        match self.state {
            CState::Proxy { trusted } => {
                match crate::proxy::read(cx.cfg, trusted, self.io.unread()) {
                    Read::Wait => Next::Wait,
                    Read::NotProxy => {
                        self.set_state(CState::Startup, cx.now);
                        Next::Again
                    }
                    Read::Header {
                        consumed,
                        source,
                        info,
                    } => {
                        self.io.consume(consumed);
                        if let Some(src) = source {
                            self.peer = Peer::Tcp(src);
                        }
                        self.proxy = info;
                        self.set_state(CState::Startup, cx.now);
                        cx.stats.proxy_accepted += 1;
                        Next::Again
                    }
                    Read::Refused(why, detail) => {
                        Next::Close(self.proxy_refused(cx.stats, why, detail))
                    }
                }
            }
            CState::Startup => self.first_packet(cx, false),
            CState::PeerCancel => self.first_packet(cx, true),
            CState::Auth(_) => {
                let (tag, body) = match frame::message(self.io.unread(), MAX_AUTH_MESSAGE) {
                    Ok(Some((h, body))) => (h.tag, body.to_vec()),
                    Ok(None) => {
                        if let Ok(Some(h)) = frame::header(self.io.unread(), MAX_AUTH_MESSAGE) {
                            self.io.make_room(h.total, cx.bufs);
                        }
                        return Next::Wait;
                    }
                    Err(_) => {
                        let msg = "invalid authentication message length".to_string();
                        return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
                    }
                };
                self.io.consume(body.len() + 5);
                if tag != b'p' {
                    let msg = format!(
                        "expected password response, got message type {}",
                        tag as char
                    );
                    return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
                }
                self.on_auth_message(cx, &body)
            }
            _ => Next::Elsewhere,
        }
    }

    /// A refused PROXY header: logged and counted; the client is closed without a word.
    pub(crate) fn proxy_refused(
        &self,
        stats: &mut WorkerStats,
        why: Rejection,
        detail: String,
    ) -> Close {
        let via = self.via.map(|a| a.to_string()).unwrap_or_default();
        log::warn!(
            "C-{} from {via}: PROXY header refused ({}): {detail}",
            self.id,
            why.as_str()
        );
        stats.proxy_rejected[why as usize] += 1;
        Close::Quiet("PROXY header refused")
    }

    /// The connection's first packet: a startup packet, or a request before one.
    /// `cancel_only`: a peer pooler's connection (`CState::PeerCancel`).
    fn first_packet(&mut self, cx: &mut Ctx, cancel_only: bool) -> Next {
        // A TLS handshake record where a length belongs: direct TLS. No startup packet
        // starts so (its length would be over 350 MB).
        if !self.io.is_tls() && self.io.unread().first() == Some(&0x16) {
            if let Some(accept) = cx.tls.filter(|_| !self.io.is_unix()) {
                return self.direct_tls(cx, accept);
            }
        }
        let (packet, n) = match startup::decode(self.io.unread()) {
            Ok(Some(p)) => p,
            Ok(None) => {
                // The decoder has checked the length (<= 10000): make room for it.
                if let Some(l) = self.io.unread().first_chunk::<4>() {
                    let total = u32::from_be_bytes(*l) as usize;
                    self.io.make_room(total, cx.bufs);
                }
                return Next::Wait;
            }
            Err(e) => {
                let code = match e {
                    startup::StartupError::UnsupportedVersion(..)
                    | startup::StartupError::UnknownCode(_) => sqlstate::FEATURE_NOT_SUPPORTED,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                return Next::Close(Close::Fatal(code, e.to_string()));
            }
        };
        self.io.consume(n);
        if cancel_only && !matches!(packet, FirstPacket::Cancel { .. }) {
            log::warn!(
                "{}: a peer pooler without a PROXY header may only send cancel requests: \
                 refused (proxy_protocol is required)",
                self.peer
            );
            cx.stats.proxy_rejected[Rejection::Untrusted as usize] += 1;
            return Next::Close(Close::Quiet("peer sent no cancel request"));
        }
        match packet {
            FirstPacket::SslRequest => self.ssl_request(cx),
            FirstPacket::GssEncRequest => {
                self.io.out(cx.bufs).push(b'N');
                Next::Again
            }
            FirstPacket::Cancel { pid, key } => Next::Cancel { pid, key },
            FirstPacket::Startup(s) => self.on_startup(cx, s),
        }
    }

    /// SSLRequest: `S` and a TLS session when client TLS is on, `N` otherwise.
    fn ssl_request(&mut self, cx: &mut Ctx) -> Next {
        if self.io.is_tls() {
            let msg = "SSLRequest inside a TLS session".to_string();
            return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        let Some(accept) = cx.tls.filter(|_| !self.io.is_unix()) else {
            self.io.out(cx.bufs).push(b'N');
            return Next::Again;
        };
        // Bytes that followed the SSLRequest before `S` was sent travelled in cleartext:
        // taking them as part of the session would let whoever sits on the path inject a
        // startup packet (PostgreSQL's CVE-2021-23222 class). PostgreSQL refuses them too.
        if !self.io.unread().is_empty() {
            cx.stats.tls_failures[TlsFailure::Unencrypted as usize] += 1;
            let msg = "received unencrypted data after SSL request".to_string();
            return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        // `S` goes out in cleartext, after anything queued before it (the `N` to a
        // GSSENCRequest), and the session starts right behind it.
        let sent = match self.io.flush_own(cx.bufs) {
            Ok(true) => self.io.send(b"S"),
            Ok(false) => Ok(0),
            Err(e) => Err(e),
        };
        let started = match sent {
            Ok(1) => self.io.start_tls_accept(accept),
            Ok(_) => Err(std::io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            cx.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
            return Next::Close(Close::Quiet(io_reason(&e)));
        }
        cx.stats.tls_handshakes += 1;
        Next::Again
    }

    /// Starts a direct TLS session with the ClientHello already buffered.
    fn direct_tls(&mut self, cx: &mut Ctx, accept: &Accept) -> Next {
        if let Err(e) = self.io.start_tls_direct(accept) {
            log::info!("{}: TLS handshake failed: {e}", self.name());
            cx.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
            return Next::Close(Close::Quiet(io_reason(&e)));
        }
        cx.stats.tls_handshakes += 1;
        Next::Again
    }

    /// Checks the startup packet, picks the database and starts authentication.
    fn on_startup(&mut self, cx: &mut Ctx, s: Startup) -> Next {
        if self.io.tls_alpn_missing() {
            cx.stats.tls_failures[TlsFailure::ClientHandshake as usize] += 1;
            let msg = "received direct SSL connection request without ALPN protocol negotiation extension";
            return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg.into()));
        }
        // PgBouncer's rule: from require up, TCP clients must have come through TLS.
        if cx.cfg.client_tls_sslmode.required() && !self.io.is_tls() && !self.io.is_unix() {
            cx.stats.tls_failures[TlsFailure::Required as usize] += 1;
            let msg = "SSL required".to_string();
            return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        }
        let unknown: Vec<&str> = s
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        if s.minor > NEWEST_MINOR || !unknown.is_empty() {
            write::negotiate_protocol_version(self.io.out(cx.bufs), NEWEST_MINOR, &unknown);
        }
        let Some(user) = s.get("user").filter(|u| !u.is_empty()) else {
            return Next::Close(Close::Fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet".into(),
            ));
        };
        self.user = intern(user);
        self.db = intern(s.get("database").filter(|d| !d.is_empty()).unwrap_or(user));
        // Replication connections (physical `replication=true`, logical
        // `replication=database`), as PgBouncer 1.23+ takes them: each gets a server of its
        // own with the client's startup parameters (link.rs, server.rs).
        let replication = match s.get("replication").map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "off" | "no") => None,
            Some("database") => Some("database"),
            Some("true" | "1" | "on" | "yes") => Some("yes"),
            Some(_) => {
                let msg = "invalid value for parameter \"replication\"".to_string();
                return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            }
        };
        if replication.is_some() && is_console(&self.db) {
            let msg = "replication connections to the admin console are not supported";
            return Next::Close(Close::Fatal(sqlstate::FEATURE_NOT_SUPPORTED, msg.into()));
        }
        self.replication = replication.map(|kind| {
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
        params::set_extra_tracked(&cx.cfg.track_extra_parameters);
        let mut params = Params::new();
        let cfg = cx.cfg;
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
                                let msg = format!("unsupported startup parameter in options: {k}");
                                return Next::Close(Close::Fatal(
                                    sqlstate::PROTOCOL_VIOLATION,
                                    msg,
                                ));
                            }
                            params.set(params::tracked_name(&k).unwrap_or(&k), &v);
                        }
                    }
                    Err(e) => return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e)),
                }
                continue;
            }
            if let Some(name) = params::tracked_name(k) {
                params.set(name, v);
            } else if params::is_settable_name(k) {
                params.set(k, v);
            } else {
                let msg = format!("unsupported startup parameter: {k}");
                return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            }
        }
        if cfg.application_name_add_host {
            if let Peer::Tcp(a) = self.peer {
                let app = params.get("application_name").unwrap_or("").to_string();
                let app = if app.is_empty() {
                    format!("{}:{}", a.ip(), a.port())
                } else {
                    format!("{app} - {}:{}", a.ip(), a.port())
                };
                params.set("application_name", &app);
            }
        }
        self.params = params;
        if is_console(&self.db) {
            // PgBouncer refuses users without a console role before any password.
            self.admin = console_role(cfg, &self.user);
            if self.admin.is_none() {
                let msg = "not allowed".to_string();
                return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
            }
        }
        if !acquire_client_place(cfg.max_client_conn, cx.shm, cx.predecessor, cx.slot) {
            return Next::Close(Close::Fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "no more connections allowed (max_client_conn)".into(),
            ));
        }
        self.counted = true;
        if let Some(why) = self.take_name_places(cfg, cx.auth, cx.shm, cx.slot) {
            return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, why.into()));
        }
        self.begin_auth(cx)
    }

    /// Sends the first authentication request for the configured method.
    pub(crate) fn begin_auth(&mut self, cx: &mut Ctx) -> Next {
        let user = self.user.to_string();
        let looked_up = self.found.is_some();
        let binding: Option<Vec<u8>> = self.io.tls_binding().map(<[u8]>::to_vec);
        let asker = Asker {
            peer: self.peer,
            tls: self.is_tls(),
            database: &self.db,
            user: &self.user,
            endpoint: self
                .proxy
                .as_ref()
                .and_then(|p| p.endpoint.as_ref())
                .map(|e| e.to_string()),
            physical_replication: self.replication.as_ref().is_some_and(|r| r.kind == "yes"),
            io: &self.io,
            name: &self.name(),
        };
        let method = match crate::access::method(cx.cfg, cx.hba, &asker) {
            Ok(m) => m,
            Err(why) => return Next::Close(why),
        };
        // PgBouncer: a user missing from the auth file is looked up with auth_query when
        // the database has an auth_user; the client waits without a password request.
        let needs_secret = !matches!(method, Method::Cert | Method::Trust { listed: false });
        if needs_secret && !looked_up && cx.auth.secret(&user).is_none() {
            if let Some(source) = crate::auth_query::source(cx.cfg, &self.db) {
                return Next::Lookup(source);
            }
        }
        let secret = self.login_secret(cx.auth);
        let scram_stored = matches!(secret, Some(Secret::Scram(_)));
        let step = match method {
            Method::Trust { listed } => {
                // PgBouncer: with auth_type trust the user must still be in the auth file
                // (or found by auth_query).
                if listed && secret.is_none() {
                    return self.auth_failed(cx);
                }
                return Next::Authenticated;
            }
            Method::Cert => {
                // PostgreSQL's rule: the certificate's CN is the user, compared exactly.
                if self.certificate_cn().as_deref() == Some(user.as_str()) {
                    return Next::Authenticated;
                }
                let msg = format!("certificate authentication failed for user \"{user}\"");
                log::info!("{}: {}", self.name(), Escaped(&msg));
                cx.stats.auth_failures += 1;
                return Next::Close(Close::Fatal(sqlstate::INVALID_AUTHORIZATION, msg));
            }
            Method::Cleartext => AuthStep::Cleartext,
            // As in PostgreSQL, md5 with a SCRAM secret stored means a SCRAM exchange.
            Method::Md5 if !scram_stored => match crate::auth::md5_random_salt() {
                Ok(salt) => AuthStep::Md5 { salt },
                Err(_) => return self.auth_failed(cx),
            },
            Method::Md5 | Method::Scram => {
                let nonce = match crate::auth::random_nonce() {
                    Ok(n) => n,
                    Err(_) => return self.auth_failed(cx),
                };
                let scram = match (looked_up, &secret) {
                    (false, _) => cx.auth.scram_secret(&user).cloned(),
                    (true, Some(Secret::Scram(s))) => Some(s.clone()),
                    // A plaintext password in PostgreSQL (a custom auth_query): derived
                    // with the user's fixed salt, as for plaintext in the auth file.
                    (true, Some(Secret::Plain(p))) if !p.is_empty() => Some(
                        crate::auth::ScramSecret::for_user_password(&user, p, &cx.auth.mock_key),
                    ),
                    (true, _) => None,
                };
                let server = match &scram {
                    Some(secret) => ScramServer::new(secret, nonce),
                    // Unknown users and md5-only secrets get an exchange that always fails.
                    None => ScramServer::mock(&user, &cx.auth.mock_key, nonce),
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
        let out = self.io.out(cx.bufs);
        match &step {
            AuthStep::Cleartext => write::auth_cleartext(out),
            AuthStep::Md5 { salt } => write::auth_md5(out, *salt),
            // PostgreSQL's order: PLUS first, which libpq takes unless channel_binding=disable.
            AuthStep::Scram { .. } if binding.is_some() => {
                write::auth_sasl(out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
            }
            AuthStep::Scram { .. } => write::auth_sasl(out, &["SCRAM-SHA-256"]),
        }
        self.set_state(CState::Auth(step), cx.now);
        Next::Again
    }

    /// One PasswordMessage / SASLInitialResponse / SASLResponse from the client.
    fn on_auth_message(&mut self, cx: &mut Ctx, body: &[u8]) -> Next {
        let secret = self.login_secret(cx.auth);
        let user = self.user.to_string();
        let CState::Auth(step) = &mut self.state else {
            let msg = "unexpected password message".to_string();
            return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
        };
        let ok = match step {
            AuthStep::Cleartext => {
                // PostgreSQL: exactly one NUL-terminated string.
                let Some(pw) = body.strip_suffix(&[0]).filter(|p| !p.contains(&0)) else {
                    let msg = "invalid password packet size".to_string();
                    return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg));
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
                            cx.auth.remember_client_key(&user, s.server_key, client_key);
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
                let malformed = || {
                    let msg = "malformed SASLInitialResponse".to_string();
                    Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg))
                };
                let Some((mech, rest)) = fields::cstr(body) else {
                    return malformed();
                };
                let plus = mech == b"SCRAM-SHA-256-PLUS" && self.io.tls_binding().is_some();
                if mech != b"SCRAM-SHA-256" && !plus {
                    let msg = "client selected an invalid SASL authentication mechanism";
                    return Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, msg.into()));
                }
                let data = match fields::u32_be(rest) {
                    Some((len, data)) if len as usize == data.len() => data,
                    _ => return malformed(),
                };
                return match server.handle_client_first_as(plus, data) {
                    Ok(reply) => {
                        *started = true;
                        write::auth_sasl_continue(self.io.out(cx.bufs), &reply);
                        Next::Again
                    }
                    Err(e) => {
                        log::debug!("{}: SCRAM client-first rejected: {e}", self.name());
                        Next::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
                    }
                };
            }
            AuthStep::Scram { server, .. } => match server.handle_client_final(body) {
                Ok(success) => {
                    write::auth_sasl_final(self.io.out(cx.bufs), &success.server_final);
                    if let Some(Secret::Scram(s)) = &secret {
                        cx.auth
                            .remember_client_key(&user, s.server_key, success.client_key);
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
            Next::Authenticated
        } else {
            self.auth_failed(cx)
        }
    }

    /// A wrong password (or none to check against), in PostgreSQL's words for both, so a
    /// client cannot tell a user that does not exist.
    fn auth_failed(&self, cx: &mut Ctx) -> Next {
        cx.stats.auth_failures += 1;
        let msg = format!("password authentication failed for user \"{}\"", self.user);
        log::info!("{}: {}", self.name(), Escaped(&msg));
        Next::Close(Close::Fatal(sqlstate::INVALID_PASSWORD, msg))
    }

    /// The password a client is checked against: the auth file's, or what auth_query
    /// found (nothing once its rolvaliduntil has passed).
    fn login_secret(&self, auth: &AuthCache) -> Option<Secret> {
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
        cfg: &Config,
        auth: &AuthCache,
        shm: &Shm,
        slot: usize,
    ) -> Option<&'static str> {
        if self.admin.is_some() {
            return None;
        }
        if cfg.database_entry(&self.db).is_some() {
            if let Some(i) = shm.name_index(Kind::Database, &self.db) {
                let limit = cfg.max_db_client_connections_for(&self.db);
                if !shm.acquire_name_client(slot, i, limit) {
                    return Some("client connections exceeded (max_db_client_connections)");
                }
                self.counted_db = Some(i);
            }
        }
        if cfg.users.contains_key(&*self.user) || auth.secret(&self.user).is_some() {
            if let Some(i) = shm.name_index(Kind::User, &self.user) {
                let limit = cfg.max_user_client_connections_for(&self.user);
                if !shm.acquire_name_client(slot, i, limit) {
                    return Some("client connections exceeded (max_user_client_connections)");
                }
                self.counted_user = Some(i);
            }
        }
        None
    }
}

/// A place in the pooler-wide client count (max_client_conn). While an online
/// upgrade's previous generation drains, its clients count too: the limit holds for
/// both generations together.
fn acquire_client_place(max: u32, shm: &Shm, predecessor: Option<&Shm>, slot: usize) -> bool {
    let room = match predecessor {
        Some(old) if max != 0 => max.saturating_sub(old.clients()),
        _ => max,
    };
    (max == 0 || room > 0) && shm.acquire_client(slot, room)
}

/// The login steps driven over in-memory pipes: no socket, no loop, every split of the
/// bytes a test cares to try.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthType;
    use crate::stream::memory::{End, Shared};
    use crate::stream::{Sock, Stream};
    use std::time::Instant;

    /// A client on in-memory pipes and everything a login step borrows.
    struct Login {
        c: Client,
        c_in: Shared,
        c_out: Shared,
        cfg: Config,
        bufs: BufPool,
        stats: WorkerStats,
        auth: AuthCache,
        hba: Hba,
        shm: Shm,
    }

    impl Login {
        /// md5 authentication; the auth file knows alice (password `secret`).
        fn new() -> Login {
            let (end, c_in, c_out) = End::new();
            let io = Stream::accepted(Sock::Memory(end));
            let c = Client::new(1, io, CState::Startup, None, Instant::now());
            let cfg = Config {
                auth_type: AuthType::Md5,
                ..Config::default()
            };
            Login {
                c,
                c_in,
                c_out,
                cfg,
                bufs: BufPool::new(4096, 16),
                stats: WorkerStats::default(),
                auth: AuthCache::from_text(Some("\"alice\" \"secret\"\n"), [7; 32]),
                hba: Hba::default(),
                shm: Shm::create(1, 16).expect("shared memory"),
            }
        }

        /// Delivers `bytes` and runs login steps as the loop does, until one is not
        /// `Again`; returns that one.
        fn send(&mut self, bytes: &[u8]) -> Next {
            self.c_in.borrow_mut().bytes.extend(bytes);
            let mut cx = Ctx {
                cfg: &self.cfg,
                bufs: &mut self.bufs,
                stats: &mut self.stats,
                auth: &mut self.auth,
                hba: &self.hba,
                tls: None,
                shm: &self.shm,
                predecessor: None,
                slot: 0,
                now: Instant::now(),
            };
            // As epoll reports it: readable and writable.
            self.c.io.on_event(true, true, false);
            self.c.io.fill(cx.bufs).expect("read");
            loop {
                let next = self.c.login_step(&mut cx);
                self.c.io.flush_own(cx.bufs).expect("write");
                if !matches!(next, Next::Again) {
                    return next;
                }
            }
        }

        /// What the pooler sent the client so far, as (tag, body) messages.
        fn sent(&self) -> Vec<(u8, Vec<u8>)> {
            self.c_out.borrow_mut().take_messages()
        }
    }

    fn startup(user: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write::startup_message(&mut out, &[("user", user), ("database", "app")]);
        out
    }

    /// The salt of the AuthenticationMD5Password the client was sent.
    fn md5_request(l: &Login) -> [u8; 4] {
        let sent = l.sent();
        assert_eq!(sent.len(), 1, "one message: {sent:?}");
        let (tag, body) = &sent[0];
        assert_eq!((*tag, &body[..4]), (b'R', &5u32.to_be_bytes()[..]));
        body[4..8].try_into().unwrap()
    }

    fn password(user: &str, pw: &str, salt: [u8; 4]) -> Vec<u8> {
        let hash = crate::auth::md5_password_hash(user, pw);
        let resp = crate::auth::md5_salted_response(&hash, salt);
        let mut out = Vec::new();
        write::password_message(&mut out, resp.as_bytes());
        out
    }

    fn fatal(next: Next) -> (&'static str, String) {
        match next {
            Next::Close(Close::Fatal(code, msg)) => (code, msg),
            _ => panic!("expected a FATAL close"),
        }
    }

    #[test]
    fn a_startup_packet_split_anywhere_gets_one_password_request() {
        let packet = startup("alice");
        for cut in 0..=packet.len() {
            let mut l = Login::new();
            let first = l.send(&packet[..cut]);
            if cut < packet.len() {
                assert!(
                    matches!(first, Next::Wait),
                    "cut at {cut}: waits for the rest"
                );
                assert!(l.sent().is_empty(), "cut at {cut}: nothing said yet");
            }
            assert!(matches!(l.send(&packet[cut..]), Next::Wait), "cut at {cut}");
            md5_request(&l);
            assert!(matches!(l.c.state, CState::Auth(AuthStep::Md5 { .. })));
            assert_eq!((&*l.c.user, &*l.c.db), ("alice", "app"));
        }
    }

    #[test]
    fn the_right_md5_password_authenticates() {
        let mut l = Login::new();
        l.send(&startup("alice"));
        let salt = md5_request(&l);
        assert!(matches!(
            l.send(&password("alice", "secret", salt)),
            Next::Authenticated
        ));
        // Nothing more from the login: the loop finds the pool and greets the client.
        assert!(l.sent().is_empty());
        assert_eq!(l.stats.auth_failures, 0);
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_are_told_alike() {
        // The same request and the same words: a client cannot learn who exists.
        let refused = |user: &str, pw: &str| {
            let mut l = Login::new();
            l.send(&startup(user));
            let salt = md5_request(&l);
            let (code, msg) = fatal(l.send(&password(user, pw, salt)));
            assert_eq!(l.stats.auth_failures, 1, "{user}");
            (code, msg)
        };
        let words = |user: &str| format!("password authentication failed for user \"{user}\"");
        assert_eq!(refused("alice", "guess"), ("28P01", words("alice")));
        assert_eq!(refused("mallory", "secret"), ("28P01", words("mallory")));
    }

    #[test]
    fn encryption_requests_without_tls_are_answered_n_and_the_login_goes_on() {
        let mut l = Login::new();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]); // GSSENCRequest
        write::ssl_request(&mut bytes);
        bytes.extend(startup("alice"));
        assert!(matches!(l.send(&bytes), Next::Wait));
        let out: Vec<u8> = l.c_out.borrow().bytes.iter().take(2).copied().collect();
        assert_eq!(out, b"NN");
        l.c_out.borrow_mut().bytes.drain(..2);
        md5_request(&l);
    }

    #[test]
    fn a_cancel_request_goes_to_the_loop_and_anything_else_first_is_refused() {
        let mut l = Login::new();
        let mut bytes = Vec::new();
        write::cancel_request(&mut bytes, 42, &7u32.to_be_bytes());
        match l.send(&bytes) {
            Next::Cancel { pid, key } => assert_eq!((pid, key), (42, 7u32.to_be_bytes().to_vec())),
            _ => panic!("a cancel request is the loop's to route"),
        }
        let mut l = Login::new();
        l.send(&startup("alice"));
        md5_request(&l);
        let mut query = Vec::new();
        write::query(&mut query, "SELECT 1");
        let (code, msg) = fatal(l.send(&query));
        assert_eq!(code, "08P01");
        assert_eq!(msg, "expected password response, got message type Q");
    }

    #[test]
    fn a_peer_pooler_let_in_without_a_proxy_header_may_only_cancel() {
        // Decided at accept (`CState::PeerCancel`), whatever the config says by the time
        // the first packet comes: a reload in between changes nothing for this connection.
        let mut l = Login::new();
        l.c.state = CState::PeerCancel;
        assert!(matches!(
            l.send(&startup("alice")),
            Next::Close(Close::Quiet("peer sent no cancel request"))
        ));
        assert!(l.sent().is_empty(), "refused without a word");
        assert_eq!(l.stats.proxy_rejected[Rejection::Untrusted as usize], 1);
        let mut l = Login::new();
        l.c.state = CState::PeerCancel;
        let mut bytes = Vec::new();
        write::cancel_request(&mut bytes, 42, &7u32.to_be_bytes());
        assert!(matches!(l.send(&bytes), Next::Cancel { pid: 42, .. }));
        // A client that connected directly goes on to its login.
        let mut l = Login::new();
        assert!(matches!(l.send(&startup("alice")), Next::Wait));
        md5_request(&l);
    }
}
