//! A client connection: its state, what it said at login, and how it is named in logs.

use crate::auth::ScramServer;
use crate::logsafe::Escaped;
use crate::params::Params;
use crate::pool::PoolId;
use crate::proxy::Peer;
use crate::relay::{Scan, TxState};
use crate::stream::Stream;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Where a client is, with what is valid only there.
pub(crate) enum CState {
    /// Reading a PROXY header; believed only when `trusted`.
    Proxy { trusted: bool },
    /// Reading the startup packet (or an SSL/GSS/cancel request before it), and on until
    /// the authentication request goes out (after an auth_query lookup, again).
    Startup,
    /// A peer pooler let in without a PROXY header (proxy_protocol required): reading its
    /// first packet, which may only be a CancelRequest. Decided at accept, as every
    /// admission is: a reload does not change how a connection already accepted starts.
    PeerCancel,
    /// Exchanging password or SASL messages: the exchange in progress.
    Auth(AuthStep),
    /// Waiting for auth_query to find the user's password: queued, or running.
    Lookup(Box<Lookup>),
    /// Authenticated; waiting for `pool`'s first server login to greet the client.
    LoginWait { pool: PoolId },
    /// Logged in to `pool`, no request in flight, no server.
    Idle { pool: PoolId },
    /// Has sent a request and waits in `pool`'s queue for a server.
    Waiting { pool: PoolId },
    /// Linked to `server`, one of `pool`'s.
    Active { pool: PoolId, server: usize },
    /// Logged in to the admin console, no command in flight.
    Console,
    /// An admin console command waits for the supervisor's answer to request `req`.
    ConsoleWaiting { req: u32 },
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
    pub admin: Option<crate::admin::role::Role>,
    /// What a trusted PROXY v2 header said besides the address.
    pub proxy: Option<Box<crate::proxy::ProxyInfo>>,
    /// The user's password as auth_query found it; `None` while the auth file is used.
    pub found: Option<Box<crate::auth_query::Found>>,
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
            params: Params::new(),
            tx: TxState::new(),
            scan: Scan::default(),
            cancel_key: 0,
            connect_time: now,
            since: now,
            request_time: now,
            xact_start: now,
            wait_notified: false,
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
        }
    }

    /// Moves the client to `new`. Every change of state goes through here, and each starts
    /// the clock its timeouts count from (`since`): client_idle_timeout in Idle,
    /// query_wait_timeout in Waiting and the logins' waits, idle_transaction_timeout in
    /// Active.
    #[inline]
    pub fn set_state(&mut self, new: CState, now: Instant) {
        self.state = new;
        self.since = now;
    }

    /// The server this client is linked to, while it is.
    pub fn linked_server(&self) -> Option<usize> {
        match self.state {
            CState::Active { server, .. } => Some(server),
            _ => None,
        }
    }

    /// The pool the client logged in to, once it has one (never for the console).
    pub fn pool(&self) -> Option<PoolId> {
        match self.state {
            CState::LoginWait { pool }
            | CState::Idle { pool }
            | CState::Waiting { pool }
            | CState::Active { pool, .. } => Some(pool),
            _ => None,
        }
    }

    /// The same state in pool `new`: a reload retired the old one. The state's clock goes
    /// on, as the client's wait does.
    pub fn move_to_pool(&mut self, new: PoolId) {
        match &mut self.state {
            CState::LoginWait { pool }
            | CState::Idle { pool }
            | CState::Waiting { pool }
            | CState::Active { pool, .. } => *pool = new,
            _ => {}
        }
    }

    /// Gives back the client's places in the pooler-wide, database and user client counts
    /// (max_client_conn, max_db_client_connections, max_user_client_connections).
    pub fn give_back_places(&mut self, shm: &crate::shm::Shm, slot: usize) {
        if std::mem::take(&mut self.counted) {
            shm.release_client(slot);
        }
        for i in [self.counted_db.take(), self.counted_user.take()]
            .into_iter()
            .flatten()
        {
            shm.release_name_client(slot, i);
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

    /// `C-<id>: db/user@addr:port`, PgBouncer's way of naming a client in logs.
    pub fn name(&self) -> ClientName<'_> {
        ClientName(self)
    }
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
