//! End-to-end tests of the admin console and the Prometheus endpoint with several workers: access rules, grammar, every SHOW, PAUSE/RESUME/KILL/KILL_CLIENT/SET/RELOAD/SHUTDOWN/DISABLE/ENABLE/RECONNECT/WAIT_CLOSE across workers, metrics and log_stats.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::wire::{read_next, startup_packet, Message};
use common::*;
use postgres::SimpleQueryMessage;

/// In `admin_users`.
const ADMIN: &str = "con_admin";
const ADMIN_PW: &str = "adminpw";
/// In `stats_users`.
const STATS: &str = "con_stats";
const STATS_PW: &str = "statspw";
/// In the auth file, but no console role.
const NOBODY: &str = "con_nobody";
const NOBODY_PW: &str = "nobodypw";
/// Every pooler here runs this many workers.
const WORKERS: usize = 2;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// A config for the shared server: database `app`, the console users, cleartext
/// client auth (so the raw client below can log in), `stats_period: 1`.
/// `extra` holds more global lines, `dbs` more lines after `databases:` (and
/// possibly a `users:` section).
fn config(extra: &str, dbs: &str) -> String {
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: plain\n\
         auth_file: @DIR@/userlist.txt\n\
         admin_users: [{ADMIN}]\n\
         stats_users: [{STATS}]\n\
         stats_period: 1\n\
         query_wait_timeout: 20\n\
         {extra}\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: app }}\n\
         {dbs}",
        port = shared_pg().port()
    )
}

/// One more `databases:` entry on the shared server's `app` database.
fn db_entry(name: &str, fields: &str) -> String {
    format!(
        "  {name}: {{ host: 127.0.0.1, port: {}, dbname: app{fields} }}\n",
        shared_pg().port()
    )
}

/// The console users, `app`, and `roles` (password = role name).
fn userlist(roles: &[&str]) -> String {
    let mut text = String::new();
    for (user, pw) in [
        (ADMIN, ADMIN_PW),
        (STATS, STATS_PW),
        (NOBODY, NOBODY_PW),
        (APP_USER, APP_PASSWORD),
    ]
    .into_iter()
    .chain(roles.iter().map(|r| (*r, *r)))
    {
        text.push_str(&userlist_entry(user, pw));
        text.push('\n');
    }
    text
}

/// Starts a pooler with `--workers 2` and waits for both workers.
fn start(yaml: &str, roles: &[&str]) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist(roles));
    let pooler = setup.start_with_args(yaml, &["--workers", &WORKERS.to_string()]);
    pooler.wait_for_children(WORKERS, secs(5));
    pooler
}

/// A login role only one test uses (password = its name), so counts on the
/// shared server are not disturbed by tests running in parallel.
fn create_role(role: &str) {
    shared_pg().admin_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD {}",
        quote_literal(role)
    ));
}

/// Client backends of `role` on the shared server.
fn backends(role: &str) -> i64 {
    shared_pg().count_backends(role)
}

/// An admin console connection (postgres crate, simple protocol only).
fn admin(pooler: &Pooler) -> postgres::Client {
    pooler.connect(ADMIN, ADMIN_PW, "pgbouncer")
}

/// Supervisor lines saying a reload went through (workers log
/// `worker N: configuration reloaded`, which this does not count).
fn supervisor_reloads(log: &str) -> usize {
    log.lines()
        .filter(|l| l.ends_with("INFO configuration reloaded"))
        .count()
}

// ---------------------------------------------------------------------------
// Result tables
// ---------------------------------------------------------------------------

type Row = Vec<Option<String>>;

#[derive(Debug, Clone, Default)]
struct Table {
    cols: Vec<String>,
    rows: Vec<Row>,
}

impl Table {
    fn col(&self, name: &str) -> usize {
        self.cols
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.cols))
    }

    /// A cell as text (NULL reads as "").
    fn val<'a>(&self, row: &'a [Option<String>], name: &str) -> &'a str {
        row[self.col(name)].as_deref().unwrap_or("")
    }

    fn is_null(&self, row: &[Option<String>], name: &str) -> bool {
        row[self.col(name)].is_none()
    }

    fn num(&self, row: &[Option<String>], name: &str) -> i64 {
        let v = self.val(row, name);
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("column {name} = {v:?} is not an integer"))
    }

    /// Rows whose columns have these values.
    fn find(&self, pairs: &[(&str, &str)]) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| pairs.iter().all(|(k, v)| self.val(r, k) == *v))
            .collect()
    }

    /// The one row whose columns have these values.
    fn one(&self, pairs: &[(&str, &str)]) -> &Row {
        let found = self.find(pairs);
        assert_eq!(found.len(), 1, "rows matching {pairs:?} in {self:#?}");
        found[0]
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| self.val(r, name).to_string())
            .collect()
    }
}

/// Runs a console query with the postgres crate's simple protocol.
fn show(c: &mut postgres::Client, sql: &str) -> Table {
    let msgs = c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("console `{sql}` failed: {e:?}"));
    let mut t = Table::default();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                t.cols = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                t.rows
                    .push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    t
}

/// (SQLSTATE, message) of a console command that must fail.
fn console_fails(c: &mut postgres::Client, sql: &str) -> (String, String) {
    match c.simple_query(sql) {
        Ok(m) => panic!("console `{sql}` succeeded: {} messages", m.len()),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("`{sql}`: not a server error: {e:?}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

// ---------------------------------------------------------------------------
// Raw protocol client: knows its own port, sees tags, type OIDs and
// errors that arrive while idle
// ---------------------------------------------------------------------------

type Fields = HashMap<char, String>;

fn fields(body: &[u8]) -> Fields {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// (name, type OID) of each RowDescription field.
fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let n = be16(body, 0);
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = at + body[at..].iter().position(|&b| b == 0).expect("name end");
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        at = end + 1;
        let oid = be32(body, at + 6);
        out.push((name, oid));
        at += 18;
    }
    out
}

fn data_row(body: &[u8]) -> Row {
    let n = be16(body, 0);
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = be32(body, at) as i32;
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(
                String::from_utf8_lossy(&body[at..at + len]).into_owned(),
            ));
            at += len;
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// ReadyForQuery came.
    Ready,
    /// The pooler closed the connection.
    Closed,
    /// Nothing more within the read timeout.
    TimedOut,
}

#[derive(Debug)]
struct Reply {
    cols: Vec<(String, u32)>,
    rows: Vec<Row>,
    tags: Vec<String>,
    errors: Vec<Fields>,
    notices: Vec<Fields>,
    end: End,
}

impl Reply {
    fn ok(&self) -> bool {
        self.errors.is_empty() && self.end == End::Ready
    }

    fn table(&self) -> Table {
        Table {
            cols: self.cols.iter().map(|(n, _)| n.clone()).collect(),
            rows: self.rows.clone(),
        }
    }

    fn oids(&self) -> Vec<u32> {
        self.cols.iter().map(|(_, o)| *o).collect()
    }

    /// The first error's (severity, SQLSTATE, message).
    fn error(&self) -> (&str, &str, &str) {
        let e = self
            .errors
            .first()
            .unwrap_or_else(|| panic!("no error in {self:?}"));
        let f = |k: char| e.get(&k).map(String::as_str).unwrap_or("");
        (f('S'), f('C'), f('M'))
    }
}

struct Raw {
    s: TcpStream,
    /// This end's port: what SHOW CLIENTS calls the client's `port`.
    port: u16,
}

impl Raw {
    /// Logs in (trust or cleartext password).
    fn try_login(port: u16, user: &str, password: &str, db: &str) -> Result<Raw, Fields> {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the pooler");
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(secs(10))).expect("read timeout");
        let local = s.local_addr().expect("local address").port();
        let mut raw = Raw { s, port: local };
        raw.s
            .write_all(&startup_packet(&[("user", user), ("database", db)]))
            .expect("send startup");
        loop {
            let Message { tag, body } = read_next(&mut raw.s)
                .unwrap_or_else(|e| panic!("login as {user} to {db}: no reply: {e}"));
            match tag {
                b'R' => match body.get(..4) {
                    Some([0, 0, 0, 0]) => {}
                    Some([0, 0, 0, 3]) => {
                        let mut pw = password.as_bytes().to_vec();
                        pw.push(0);
                        raw.send(b'p', &pw);
                    }
                    other => panic!("unexpected authentication request {other:?}"),
                },
                b'E' => return Err(fields(&body)),
                b'Z' => return Ok(raw),
                _ => {}
            }
        }
    }

    fn login(port: u16, user: &str, password: &str, db: &str) -> Raw {
        Raw::try_login(port, user, password, db)
            .unwrap_or_else(|e| panic!("login as {user} to {db} failed: {e:?}"))
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        self.s.write_all(&m).expect("send to the pooler");
    }

    fn query(&mut self, sql: &str) -> Reply {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        self.send(b'Q', &b);
        self.reply()
    }

    /// Reads until ReadyForQuery, the connection's end, or the read timeout.
    fn reply(&mut self) -> Reply {
        let mut r = Reply {
            cols: Vec::new(),
            rows: Vec::new(),
            tags: Vec::new(),
            errors: Vec::new(),
            notices: Vec::new(),
            end: End::Closed,
        };
        loop {
            match read_next(&mut self.s) {
                Ok(Message { tag: b'T', body }) => r.cols = row_description(&body),
                Ok(Message { tag: b'D', body }) => r.rows.push(data_row(&body)),
                Ok(Message { tag: b'C', body }) => r.tags.push(
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
                ),
                Ok(Message { tag: b'E', body }) => r.errors.push(fields(&body)),
                Ok(Message { tag: b'N', body }) => r.notices.push(fields(&body)),
                Ok(Message { tag: b'Z', .. }) => {
                    r.end = End::Ready;
                    return r;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    r.end = End::TimedOut;
                    return r;
                }
                Err(_) => return r,
            }
        }
    }

    fn set_timeout(&self, d: Duration) {
        self.s.set_read_timeout(Some(d)).expect("read timeout");
    }

    /// The first column of the first row of `sql`; panics on any error.
    fn scalar(&mut self, sql: &str) -> String {
        let r = self.query(sql);
        assert!(r.ok(), "`{sql}` failed: {r:?}");
        r.rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .unwrap_or_default()
    }
}

/// A client connection and the worker that serves it.
struct Held {
    conn: Raw,
    port: u16,
    worker: usize,
}

/// The worker slot that logged this client's login (`... @127.0.0.1:PORT:
/// login attempt: ... worker=N`, or `console login worker=N`).
fn worker_of_port(pooler: &Pooler, port: u16) -> usize {
    let needle = format!("@127.0.0.1:{port}: ");
    let mut found = None;
    wait_until(secs(5), || {
        found = pooler
            .log()
            .lines()
            .filter(|l| {
                l.contains(&needle) && (l.contains("login attempt") || l.contains("console login"))
            })
            .filter_map(|l| l.rsplit("worker=").next()?.trim().parse::<usize>().ok())
            .next_back();
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no login line with worker= for client port {port}\n--- log ---\n{}",
            pooler.log()
        )
    })
}

/// Opens connections until every worker serves at least `per_worker` of
/// them (SO_REUSEPORT picks the worker by a hash of the addresses).
fn spread(pooler: &Pooler, per_worker: usize, mut open: impl FnMut() -> Raw) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    for _ in 0..80 {
        let conn = open();
        let port = conn.port;
        let worker = worker_of_port(pooler, port);
        held.push(Held { conn, port, worker });
        if (0..WORKERS).all(|w| held.iter().filter(|h| h.worker == w).count() >= per_worker) {
            return held;
        }
    }
    let dist: Vec<usize> = held.iter().map(|h| h.worker).collect();
    panic!("80 connections did not reach {per_worker} per worker: workers {dist:?}");
}

/// Keeps exactly `n` connections per worker, closing the rest.
fn exactly(held: Vec<Held>, n: usize) -> Vec<Held> {
    let mut count = [0usize; WORKERS];
    held.into_iter()
        .filter(|h| {
            count[h.worker] += 1;
            count[h.worker] <= n
        })
        .collect()
}

/// Sends `sql` on a thread; the result comes back with how long it took.
fn query_on_thread(mut h: Held, sql: &str) -> thread::JoinHandle<(Held, Reply, Duration)> {
    let sql = sql.to_string();
    thread::spawn(move || {
        let t0 = Instant::now();
        let r = h.conn.query(&sql);
        (h, r, t0.elapsed())
    })
}

// ---------------------------------------------------------------------------
// Column lists (admin-spec §4)
// ---------------------------------------------------------------------------

const POOLS_COLS: [&str; 17] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
];

/// PgBouncer 1.25.2's SHOW STATS columns, in its order.
const STATS_COLS: [&str; 25] = [
    "database",
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_client_parse_count",
    "total_server_parse_count",
    "total_bind_count",
    "total_client_login_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
    "avg_client_login_count",
];

const STATS_TOTALS_COLS: [&str; 13] = [
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

const STATS_AVERAGES_COLS: [&str; 13] = [
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
    "avg_client_login_count",
];

/// PgBouncer 1.25.2's SHOW TOTALS rows, in its order.
const TOTALS_ROWS: [&str; 24] = [
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_client_bytes",
    "total_server_bytes",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_ps_client_parse_count",
    "total_ps_server_parse_count",
    "total_ps_bind_count",
    "total_client_login_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_client_bytes",
    "avg_server_bytes",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_ps_client_parse_count",
    "avg_ps_server_parse_count",
    "avg_ps_bind_count",
    "avg_client_login_count",
];

/// PgBouncer's 21 socket columns, plus `worker`, `proxy_id` and `endpoint`.
const SOCKET_COLS: [&str; 24] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
    "worker",
    "proxy_id",
    "endpoint",
];

const DATABASES_COLS: [&str; 17] = [
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "server_lifetime",
    "pool_mode",
    "load_balance_hosts",
    "max_connections",
    "current_connections",
    "max_client_connections",
    "current_client_connections",
    "paused",
    "disabled",
];

const USERS_COLS: [&str; 8] = [
    "name",
    "pool_size",
    "reserve_pool_size",
    "pool_mode",
    "max_user_connections",
    "current_connections",
    "max_user_client_connections",
    "current_client_connections",
];

const LISTS_ROWS: [&str; 14] = [
    "databases",
    "users",
    "peers",
    "pools",
    "peer_pools",
    "free_clients",
    "used_clients",
    "login_clients",
    "free_servers",
    "used_servers",
    "dns_names",
    "dns_zones",
    "dns_queries",
    "dns_pending",
];

const WORKERS_COLS: [&str; 12] = [
    "worker",
    "pid",
    "state",
    "started",
    "clients",
    "servers",
    "transactions",
    "queries",
    "accepts",
    "bytes_received",
    "bytes_sent",
    "generation",
];

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;
const BYTEA: u32 = 17;

/// PgBouncer's type letters (admin-spec §1.1): s and T are text, i int4,
/// q int8, N numeric.
fn oids(letters: &str) -> Vec<u32> {
    letters
        .chars()
        .map(|c| match c {
            's' | 'T' => TEXT,
            'i' => INT4,
            'q' => INT8,
            'N' => NUMERIC,
            other => panic!("type letter {other}"),
        })
        .collect()
}

fn strs(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

// ---------------------------------------------------------------------------
// 1. Who may use the console, and how
// ---------------------------------------------------------------------------

#[test]
fn console_access_rules_and_extended_protocol_refused() {
    let pooler = start(&config("", ""), &[]);

    // Admins may SHOW and RELOAD, under both names of the console.
    for db in ["pgbouncer", "pgbouncers"] {
        let mut c = pooler.connect(ADMIN, ADMIN_PW, db);
        let pools = show(&mut c, "SHOW POOLS");
        assert_eq!(pools.cols, strs(&POOLS_COLS), "SHOW POOLS on {db}");
        c.simple_query("RELOAD")
            .unwrap_or_else(|e| panic!("admin RELOAD on {db}: {e:?}"));
    }
    assert!(
        wait_until(secs(3), || supervisor_reloads(&pooler.log()) >= 2),
        "two RELOADs from the console did not reload\n{}",
        pooler.log()
    );

    // Stats users may SHOW, nothing else, and keep their connection.
    let mut st = pooler.connect(STATS, STATS_PW, "pgbouncer");
    for q in ["SHOW POOLS", "SHOW CLIENTS", "SHOW STATS", "SHOW CONFIG"] {
        let t = show(&mut st, q);
        assert!(!t.cols.is_empty(), "stats user `{q}` gave no columns");
    }
    let reloads = supervisor_reloads(&pooler.log());
    for q in [
        "RELOAD",
        "PAUSE",
        "RESUME",
        "SET query_timeout = 7",
        "KILL app",
        "KILL_CLIENT 1",
        "SHUTDOWN",
    ] {
        let (code, msg) = console_fails(&mut st, q);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("08P01", "admin access needed"),
            "stats user `{q}`"
        );
    }
    // None of them took effect.
    let config = show(&mut st, "SHOW CONFIG");
    assert_eq!(
        config.val(config.one(&[("key", "query_timeout")]), "value"),
        "0",
        "a stats user's SET changed query_timeout"
    );
    let state = show(&mut st, "SHOW STATE");
    assert_eq!(state.val(state.one(&[("key", "paused")]), "value"), "no");
    assert_eq!(supervisor_reloads(&pooler.log()), reloads);
    assert!(
        process_alive(pooler.pid()) && TcpStream::connect(("127.0.0.1", pooler.port())).is_ok(),
        "a stats user's SHUTDOWN stopped the pooler"
    );

    // Anyone else: FATAL "not allowed", decided before any password.
    for pw in [NOBODY_PW, "wrong"] {
        let e = Raw::try_login(pooler.port(), NOBODY, pw, "pgbouncer")
            .err()
            .expect("a user without a console role logged in");
        assert_eq!(e.get(&'S').map(String::as_str), Some("FATAL"), "{e:?}");
        assert_eq!(e.get(&'C').map(String::as_str), Some("08P01"), "{e:?}");
        assert_eq!(
            e.get(&'M').map(String::as_str),
            Some("not allowed"),
            "{e:?}"
        );
    }
    let e = pooler
        .try_connect(NOBODY, NOBODY_PW, "pgbouncers")
        .err()
        .expect("a user without a console role logged in");
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some("not allowed"),
        "{e:?}"
    );

    // A wrong password for an admin is an ordinary authentication failure.
    let e = pooler
        .try_connect(ADMIN, "wrong", "pgbouncer")
        .err()
        .expect("admin logged in with a wrong password");
    assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{e:?}");

    // The extended protocol is refused. On the wire: ERROR + ReadyForQuery,
    // then FATAL "bad packet", then EOF.
    let mut raw = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    let mut parse = b"\0SHOW POOLS\0".to_vec();
    parse.extend_from_slice(&0u16.to_be_bytes());
    raw.send(b'P', &parse);
    raw.send(b'S', &[]);
    let first = raw.reply();
    assert_eq!(first.end, End::Ready, "{first:?}");
    assert_eq!(
        first.error(),
        (
            "ERROR",
            "08P01",
            "extended query protocol not supported by admin console"
        )
    );
    let second = raw.reply();
    assert_eq!(second.end, End::Closed, "{second:?}");
    assert_eq!(second.error(), ("FATAL", "08P01", "bad packet"));

    // The same through tokio-postgres, whose `query` uses the extended
    // protocol. (The sync crate would report the FATAL that follows instead:
    // its connection error wins over the query's own.)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let c = pooler
            .connect_async(ADMIN, ADMIN_PW, "pgbouncer")
            .await
            .expect("console login with tokio-postgres");
        let msgs = c.simple_query("SHOW VERSION").await.expect("simple query");
        assert!(!msgs.is_empty());
        let e = c
            .query("SHOW POOLS", &[])
            .await
            .expect_err("extended protocol on the console");
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
        assert_eq!(db.code().code(), "08P01");
        assert_eq!(
            db.message(),
            "extended query protocol not supported by admin console"
        );
        let closed = async {
            while c.simple_query("SHOW VERSION").await.is_ok() {
                tokio::time::sleep(ms(20)).await;
            }
        };
        tokio::time::timeout(secs(2), closed)
            .await
            .expect("the console stayed usable after an extended-protocol message");
    });

    // psql speaks the simple protocol and works.
    let out = pooler.psql(ADMIN, ADMIN_PW, "pgbouncer", "SHOW VERSION;");
    assert!(out.success(), "{out}");
    assert!(!out.stdout.trim().is_empty(), "{out}");
}

// ---------------------------------------------------------------------------
// 2. Grammar
// ---------------------------------------------------------------------------

#[test]
fn console_grammar_is_pgbouncers() {
    let pooler = start(&config("", ""), &[]);
    let mut c = admin(&pooler);
    for q in [
        "show pools",
        "SHOW POOLS;",
        "  Show Pools ; ",
        "\tSHOW\nPOOLS\r\n",
        "select pools",
    ] {
        let t = show(&mut c, q);
        assert_eq!(t.cols, strs(&POOLS_COLS), "`{q}`");
        assert!(
            !t.find(&[("database", "pgbouncer")]).is_empty(),
            "`{q}`: no pgbouncer row"
        );
    }
    // PgBouncer quotes the whole query, as sent, in the error.
    let mut wrong = Vec::new();
    for q in [
        "SHOW POOLS; SHOW STATS",
        "SHOW POOLS;;",
        "SHOW POOLS x",
        "SHOW NOPE",
        "SELECT 1",
        "SHOW",
        "NOPE",
        "-- SHOW POOLS",
    ] {
        let (code, msg) = console_fails(&mut c, q);
        let want = format!("invalid command '{q}', use SHOW HELP;");
        if (code.as_str(), msg.as_str()) != ("08P01", want.as_str()) {
            wrong.push(format!("`{q}`: got {code} {msg:?}, want 08P01 {want:?}"));
        }
        // The connection stays usable.
        let v = show(&mut c, "SHOW VERSION");
        assert_eq!(v.rows.len(), 1, "SHOW VERSION after `{q}`");
    }
    assert!(wrong.is_empty(), "wrong errors:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// 3. SHOW CLIENTS / SHOW SERVERS gather every worker
// ---------------------------------------------------------------------------

#[test]
fn show_clients_and_servers_cover_every_worker() {
    let role = "adm_cli3";
    create_role(role);
    let pooler = start(&config("", ""), &[role]);
    let mut held = spread(&pooler, 2, || Raw::login(pooler.port(), role, role, APP_DB));
    // Session pooling: each client keeps its backend.
    let mut pid_of: BTreeMap<u16, String> = BTreeMap::new();
    for h in &mut held {
        pid_of.insert(h.port, h.conn.scalar("SELECT pg_backend_pid()"));
    }
    let mut console = admin(&pooler);
    let clients = show(&mut console, "SHOW CLIENTS");
    assert_eq!(clients.cols, strs(&SOCKET_COLS));
    for h in &held {
        let port = h.port.to_string();
        let row = clients.one(&[("port", &port), ("addr", "127.0.0.1")]);
        assert_eq!(clients.val(row, "type"), "C");
        assert_eq!(clients.val(row, "user"), role);
        assert_eq!(clients.val(row, "database"), APP_DB);
        assert_eq!(clients.val(row, "state"), "active", "{row:?}");
        assert_eq!(clients.val(row, "local_addr"), "127.0.0.1");
        assert_eq!(clients.num(row, "local_port"), i64::from(pooler.port()));
        assert_eq!(
            clients.num(row, "worker"),
            h.worker as i64,
            "client on port {port} is served by worker {}: {row:?}",
            h.worker
        );
    }
    let workers: BTreeSet<String> = clients
        .find(&[("user", role)])
        .iter()
        .map(|r| clients.val(r, "worker").to_string())
        .collect();
    assert_eq!(workers, ["0", "1"].map(String::from).into());
    let ids = clients.values("id");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "client ids repeat: {ids:?}");
    let me = clients.one(&[("database", "pgbouncer"), ("user", ADMIN)]);
    assert_eq!(clients.val(me, "state"), "idle");

    let servers = show(&mut console, "SHOW SERVERS");
    assert_eq!(servers.cols, strs(&SOCKET_COLS));
    let mine = servers.find(&[("user", role)]);
    assert_eq!(mine.len(), held.len(), "{servers:#?}");
    let shown: BTreeSet<String> = mine
        .iter()
        .map(|r| servers.val(r, "remote_pid").to_string())
        .collect();
    let real: BTreeSet<String> = pid_of.values().cloned().collect();
    assert_eq!(shown, real, "remote_pid vs pg_backend_pid()");
    for r in &mine {
        assert_eq!(servers.val(r, "type"), "S");
        assert_eq!(servers.val(r, "database"), APP_DB);
        assert_eq!(servers.val(r, "state"), "active");
        assert_eq!(servers.val(r, "addr"), "127.0.0.1");
        assert_eq!(servers.num(r, "port"), i64::from(shared_pg().port()));
    }
    let sworkers: BTreeSet<String> = mine
        .iter()
        .map(|r| servers.val(r, "worker").to_string())
        .collect();
    assert_eq!(sworkers, ["0", "1"].map(String::from).into());
    // Each client links to the server holding its backend, and back.
    for h in &held {
        let crow = clients.one(&[("port", &h.port.to_string()), ("addr", "127.0.0.1")]);
        let srow = servers.one(&[("remote_pid", &pid_of[&h.port])]);
        assert_eq!(clients.val(crow, "link"), servers.val(srow, "ptr"));
        assert_eq!(servers.val(srow, "link"), clients.val(crow, "ptr"));
        assert_eq!(servers.val(srow, "worker"), clients.val(crow, "worker"));
    }
}

// ---------------------------------------------------------------------------
// 4. SHOW POOLS adds up every worker
// ---------------------------------------------------------------------------

#[test]
fn show_pools_aggregates_workers_and_counts_waiting_clients() {
    let held_role = "adm_pool4a";
    let wait_role = "adm_pool4b";
    create_role(held_role);
    create_role(wait_role);
    let dbs = db_entry("tiny", ", pool_size: 1, pool_mode: transaction");
    let pooler = start(&config("", &dbs), &[held_role, wait_role]);
    let mut console = admin(&pooler);

    // Session mode: every held session has a server.
    let mut held = spread(&pooler, 2, || {
        Raw::login(pooler.port(), held_role, held_role, APP_DB)
    });
    for h in &mut held {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    let n = held.len() as i64;
    let pools = show(&mut console, "SHOW POOLS");
    assert_eq!(pools.cols, strs(&POOLS_COLS));
    let row = pools.one(&[("database", APP_DB), ("user", held_role)]);
    assert_eq!(pools.num(row, "cl_active"), n, "{row:?}");
    assert_eq!(pools.num(row, "cl_waiting"), 0, "{row:?}");
    assert_eq!(pools.num(row, "sv_active"), n, "{row:?}");
    assert_eq!(pools.val(row, "pool_mode"), "session");
    let console_row = pools.one(&[("database", "pgbouncer"), ("user", "pgbouncer")]);
    assert!(pools.num(console_row, "cl_active") >= 1, "{console_row:?}");
    assert_eq!(pools.val(console_row, "pool_mode"), "statement");

    // pool_size 1 per worker, two clients per worker running pg_sleep: one
    // runs and one waits on each worker.
    let waiters = exactly(
        spread(&pooler, 2, || {
            Raw::login(pooler.port(), wait_role, wait_role, "tiny")
        }),
        2,
    );
    let threads: Vec<_> = waiters
        .into_iter()
        .map(|h| query_on_thread(h, "SELECT pg_sleep(2)"))
        .collect();
    let mut last = Table::default();
    let seen = wait_until(ms(1700), || {
        last = show(&mut console, "SHOW POOLS");
        last.find(&[("database", "tiny"), ("user", wait_role)])
            .first()
            .is_some_and(|r| {
                last.num(r, "cl_waiting") == 2
                    && last.num(r, "cl_active") == 2
                    && last.num(r, "sv_active") == 2
            })
    });
    assert!(
        seen,
        "tiny/{wait_role}: want 2 active, 2 waiting, 2 servers: {last:#?}"
    );
    let row = last.one(&[("database", "tiny"), ("user", wait_role)]);
    assert_eq!(last.val(row, "pool_mode"), "transaction");
    for t in threads {
        let (h, r, _) = t.join().expect("client thread");
        assert!(r.ok(), "client on worker {}: {r:?}", h.worker);
    }
}

// ---------------------------------------------------------------------------
// 5. SHOW STATS & co.
// ---------------------------------------------------------------------------

#[test]
fn show_stats_counts_traffic_of_every_worker() {
    let role = "adm_stat5";
    create_role(role);
    let pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let script = pooler.write_file("select1.sql", "SELECT 1;\n");
    let script = script.to_str().expect("utf-8 path").to_string();
    let out = run_pgbench(
        pooler.port(),
        role,
        role,
        APP_DB,
        &["-n", "-f", &script, "-t", "25", "-c", "4"],
    );
    assert!(out.success(), "{out}");
    let mut held = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    for h in &mut held {
        for _ in 0..10 {
            assert_eq!(h.conn.scalar("SELECT 1"), "1");
        }
    }
    let expected = 100 + 10 * held.len() as i64;

    let mut console = admin(&pooler);
    let mut stats = Table::default();
    let counted = wait_until(secs(3), || {
        stats = show(&mut console, "SHOW STATS");
        stats
            .find(&[("database", APP_DB)])
            .first()
            .is_some_and(|r| stats.num(r, "total_xact_count") >= expected)
    });
    assert!(counted, "want total_xact_count >= {expected}: {stats:#?}");
    assert_eq!(stats.cols, strs(&STATS_COLS));
    let row = stats.one(&[("database", APP_DB)]);
    assert!(stats.num(row, "total_query_count") >= expected, "{row:?}");
    assert!(
        stats.num(row, "total_server_assignment_count") >= expected,
        "transaction pooling assigns a server per transaction: {row:?}"
    );
    for col in [
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
    ] {
        assert!(stats.num(row, col) > 0, "{col}: {row:?}");
    }
    assert!(
        stats.num(row, "total_sent") > stats.num(row, "total_received"),
        "results are bigger than the queries: {row:?}"
    );

    let totals = show(&mut console, "SHOW STATS_TOTALS");
    assert_eq!(totals.cols, strs(&STATS_TOTALS_COLS));
    let trow = totals.one(&[("database", APP_DB)]);
    assert!(totals.num(trow, "xact_count") >= expected, "{trow:?}");
    assert!(totals.num(trow, "bytes_received") > 0, "{trow:?}");
    let avgs = show(&mut console, "SHOW STATS_AVERAGES");
    assert_eq!(avgs.cols, strs(&STATS_AVERAGES_COLS));
    avgs.one(&[("database", APP_DB)]);
    let all = show(&mut console, "SHOW TOTALS");
    assert_eq!(all.cols, strs(&["name", "value"]));
    assert_eq!(all.values("name"), strs(&TOTALS_ROWS));
    let xacts = all.one(&[("name", "total_xact_count")]);
    assert!(all.num(xacts, "value") >= expected, "{all:#?}");
    for name in [
        "total_query_count",
        "total_server_assignment_count",
        "avg_xact_count",
    ] {
        all.one(&[("name", name)]);
    }

    // Both workers did part of the work.
    let workers = show(&mut console, "SHOW WORKERS");
    for w in 0..WORKERS {
        let r = workers.one(&[("worker", &w.to_string())]);
        assert!(workers.num(r, "transactions") >= 10, "{workers:#?}");
    }

    // Averages, every stats_period (1 s), while load runs.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut c = pooler.connect(role, role, APP_DB);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                c.simple_query("SELECT 1").expect("load query");
            }
        })
    };
    let mut last = Table::default();
    let averaged = wait_until(secs(4), || {
        last = show(&mut console, "SHOW STATS");
        last.find(&[("database", APP_DB)]).first().is_some_and(|r| {
            last.num(r, "avg_xact_count") > 0 && last.num(r, "avg_query_count") > 0
        })
    });
    let per_avgs = show(&mut console, "SHOW STATS_AVERAGES");
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    assert!(averaged, "no averages after 4 s of load: {last:#?}");
    let arow = per_avgs.one(&[("database", APP_DB)]);
    assert!(per_avgs.num(arow, "xact_count") > 0, "{per_avgs:#?}");
}

// ---------------------------------------------------------------------------
// 6. The other SHOW commands, and the wire types
// ---------------------------------------------------------------------------

#[test]
fn show_catalog_commands_match_the_spec() {
    let users = "users:\n  adm_u6: { pool_mode: transaction, pool_size: 3 }\n";
    let dbs = format!(
        "  small: {{ host: 127.0.0.1, port: {}, dbname: app, pool_size: 7, pool_mode: session }}\n{users}",
        shared_pg().port()
    );
    let pooler = start(&config("max_client_conn: 123\n", &dbs), &[]);
    let mut c = admin(&pooler);

    let dbs = show(&mut c, "SHOW DATABASES");
    assert_eq!(dbs.cols, strs(&DATABASES_COLS));
    assert_eq!(dbs.values("name"), ["app", "pgbouncer", "small"]);
    let small = dbs.one(&[("name", "small")]);
    assert_eq!(dbs.val(small, "host"), "127.0.0.1");
    assert_eq!(dbs.num(small, "port"), i64::from(shared_pg().port()));
    assert_eq!(dbs.val(small, "database"), "app");
    assert_eq!(dbs.num(small, "pool_size"), 7);
    assert_eq!(dbs.val(small, "pool_mode"), "session");
    assert!(dbs.is_null(small, "force_user"));
    let app = dbs.one(&[("name", "app")]);
    assert_eq!(dbs.num(app, "pool_size"), 20, "default_pool_size");
    assert!(dbs.is_null(app, "pool_mode"), "inherited pool_mode is NULL");
    let pgb = dbs.one(&[("name", "pgbouncer")]);
    assert_eq!(dbs.num(pgb, "port"), i64::from(pooler.port()));
    assert_eq!(dbs.val(pgb, "pool_mode"), "statement");
    assert!(dbs.num(pgb, "current_client_connections") >= 1);
    // The rest of PgBouncer 1.25's row for its console database.
    assert!(dbs.is_null(pgb, "host"), "{pgb:?}");
    assert_eq!(dbs.val(pgb, "database"), "pgbouncer");
    assert_eq!(dbs.val(pgb, "force_user"), "pgbouncer");
    assert_eq!(dbs.num(pgb, "pool_size"), 2);
    assert_eq!(dbs.num(pgb, "reserve_pool_size"), 0);
    assert_eq!(dbs.num(pgb, "max_connections"), 0);
    assert_eq!(dbs.num(pgb, "current_connections"), 0);

    // No client has used a database yet: the console's own database is there all the
    // same, as in PgBouncer (an exporter takes a SHOW STATS without rows for a failed
    // scrape). Its counters are 0.
    for q in ["SHOW STATS", "SHOW STATS_TOTALS", "SHOW STATS_AVERAGES"] {
        let t = show(&mut c, q);
        assert_eq!(t.values("database"), ["pgbouncer"], "{q}: {t:#?}");
        for col in &t.cols[1..] {
            assert_eq!(t.num(&t.rows[0], col), 0, "{q} {col}: {t:#?}");
        }
    }
    let pools = show(&mut c, "SHOW POOLS");
    assert_eq!(pools.values("database"), ["pgbouncer"], "{pools:#?}");
    let console_pool = pools.one(&[("database", "pgbouncer"), ("user", "pgbouncer")]);
    assert!(
        pools.num(console_pool, "cl_active") >= 1,
        "{console_pool:?}"
    );
    assert_eq!(pools.val(console_pool, "pool_mode"), "statement");

    let users = show(&mut c, "SHOW USERS");
    assert_eq!(users.cols, strs(&USERS_COLS));
    let u = users.one(&[("name", "adm_u6")]);
    assert_eq!(users.val(u, "pool_size"), format!("{:>9}", 3));
    assert_eq!(users.val(u, "pool_mode"), "transaction");

    let lists = show(&mut c, "SHOW LISTS");
    assert_eq!(lists.cols, strs(&["list", "items"]));
    assert_eq!(lists.values("list"), strs(&LISTS_ROWS));
    assert_eq!(lists.num(lists.one(&[("list", "databases")]), "items"), 3);
    assert!(lists.num(lists.one(&[("list", "used_clients")]), "items") >= 1);

    let config = show(&mut c, "SHOW CONFIG");
    assert_eq!(
        config.cols,
        strs(&["key", "value", "default", "changeable"])
    );
    let keys = config.values("key");
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "SHOW CONFIG keys are sorted and unique");
    let mcc = config.one(&[("key", "max_client_conn")]);
    assert_eq!(config.val(mcc, "value"), "123");
    assert_eq!(config.val(mcc, "default"), "100");
    assert_eq!(config.val(mcc, "changeable"), "yes");
    let lp = config.one(&[("key", "listen_port")]);
    assert_eq!(config.val(lp, "value"), pooler.port().to_string());
    assert_eq!(config.val(lp, "changeable"), "no");
    assert_eq!(
        config.val(config.one(&[("key", "stats_period")]), "value"),
        "1"
    );

    let version = show(&mut c, "SHOW VERSION");
    assert_eq!(version.cols, strs(&["version"]));
    assert_eq!(version.rows.len(), 1);
    assert!(
        version.val(&version.rows[0], "version").contains('.'),
        "{version:?}"
    );

    let state = show(&mut c, "SHOW STATE");
    assert_eq!(state.cols, strs(&["key", "value"]));
    assert_eq!(
        state.rows,
        [["active", "yes"], ["paused", "no"], ["suspended", "no"]]
            .map(|r| r.map(|v| Some(v.to_string())).to_vec())
            .to_vec()
    );

    let workers = show(&mut c, "SHOW WORKERS");
    assert_eq!(workers.cols, strs(&WORKERS_COLS));
    assert_eq!(workers.values("worker"), ["0", "1"]);
    assert!(workers.values("state").iter().all(|s| s == "running"));
    let mut pids: Vec<i32> = workers
        .rows
        .iter()
        .map(|r| workers.num(r, "pid") as i32)
        .collect();
    pids.sort_unstable();
    assert_eq!(pids, pooler.children(), "SHOW WORKERS pids");
    for started in workers.values("started") {
        assert!(
            started.len() >= 19 && started.as_bytes()[4] == b'-',
            "started {started:?}"
        );
    }

    // SHOW HELP is a NOTICE (psql prints it on stderr).
    let out = pooler.psql(ADMIN, ADMIN_PW, "pgbouncer", "SHOW HELP;");
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("NOTICE:  Console usage"), "{out}");
    assert!(out.stderr.contains("SHOW HELP|CONFIG"), "{out}");
    assert!(out.stderr.contains("KILL_CLIENT"), "{out}");

    // Column types on the wire.
    let mut raw = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    for (q, want) in [
        ("SHOW STATS", oids(&format!("s{}", "N".repeat(24)))),
        ("SHOW STATS_TOTALS", oids(&format!("s{}", "N".repeat(12)))),
        ("SHOW STATS_AVERAGES", oids(&format!("s{}", "N".repeat(12)))),
        ("SHOW TOTALS", oids("sN")),
        ("SHOW POOLS", oids("ssiiiiiiiiiiiiiss")),
        ("SHOW CLIENTS", oids("ssssssisiTTiiississiiiss")),
        ("SHOW SERVERS", oids("ssssssisiTTiiississiiiss")),
        ("SHOW DATABASES", oids("ssissiiiissiiiiii")),
        ("SHOW USERS", oids("ssssiiii")),
        ("SHOW LISTS", oids("si")),
        ("SHOW CONFIG", oids("ssss")),
        ("SHOW WORKERS", oids("iissqqqqqqqi")),
    ] {
        let r = raw.query(q);
        assert!(r.ok(), "{q}: {r:?}");
        assert_eq!(r.oids(), want, "{q} type OIDs");
        assert_eq!(r.tags, ["SHOW"], "{q} command tag");
    }
    let help = raw.query("SHOW HELP");
    assert!(help.ok(), "{help:?}");
    assert!(help.cols.is_empty(), "SHOW HELP sends no RowDescription");
    let n = &help.notices[0];
    assert_eq!(n.get(&'M').map(String::as_str), Some("Console usage"));
    assert!(
        n.get(&'D').is_some_and(|d| d.contains("\tSHOW HELP|")),
        "{n:?}"
    );
}

/// PgBouncer 1.25.2's SHOW SOCKETS / ACTIVE_SOCKETS columns (its 21 socket columns, then
/// the buffer columns), read from PgBouncer 1.25.2 itself.
const SOCKETS_COLS: [&str; 28] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
    "recv_pos",
    "pkt_pos",
    "pkt_remain",
    "send_pos",
    "send_remain",
    "pkt_avail",
    "send_avail",
];

#[test]
fn every_show_of_pgbouncer_1_25_answers_with_its_columns() {
    let role = "adm_sock6";
    create_role(role);
    let pooler = start(&config("", ""), &[role]);
    let mut held = Raw::login(pooler.port(), role, role, APP_DB);
    assert_eq!(held.scalar("SELECT 1"), "1");
    let mut raw = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    // Columns and types as PgBouncer 1.25.2 sends them (no peering and no zone checks:
    // those tables are empty; this config names no host to resolve).
    for (q, cols, types, empty) in [
        (
            "SHOW PEERS",
            &["peer_id", "host", "port", "pool_size"][..],
            "isii",
            true,
        ),
        (
            "SHOW PEER_POOLS",
            &[
                "peer_id",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active_cancel",
                "sv_login",
            ][..],
            "iiiii",
            true,
        ),
        (
            "SHOW FDS",
            &[
                "fd",
                "task",
                "user",
                "database",
                "addr",
                "port",
                "cancel",
                "link",
                "client_encoding",
                "std_strings",
                "datestyle",
                "timezone",
                "password",
                "scram_client_key",
                "scram_server_key",
            ][..],
            "issssiqisssss",
            // The listening sockets an online upgrade passes on.
            false,
        ),
        (
            "SHOW MEM",
            &["name", "size", "used", "free", "memtotal"][..],
            "siiii",
            false,
        ),
        (
            "SHOW DNS_HOSTS",
            &["hostname", "ttl", "addrs"][..],
            "sqs",
            true,
        ),
        (
            "SHOW DNS_ZONES",
            &["zonename", "serial", "count"][..],
            "sqi",
            true,
        ),
        ("SHOW STATE", &["key", "value"][..], "ss", false),
        (
            "SHOW SOCKETS",
            &SOCKETS_COLS[..],
            "ssssssisiTTiiississii iiiiiii",
            false,
        ),
        (
            "SHOW ACTIVE_SOCKETS",
            &SOCKETS_COLS[..],
            "ssssssisiTTiiississii iiiiiii",
            true,
        ),
    ] {
        let r = raw.query(q);
        assert!(r.ok(), "{q}: {r:?}");
        assert_eq!(r.table().cols, strs(cols), "{q} columns");
        let mut want = oids(&types.replace(' ', ""));
        if q == "SHOW FDS" {
            // scram_client_key, scram_server_key
            want.extend([BYTEA, BYTEA]);
        }
        assert_eq!(r.oids(), want, "{q} type OIDs");
        assert_eq!(r.tags, ["SHOW"], "{q} command tag");
        assert_eq!(r.rows.is_empty(), empty, "{q}: {r:?}");
    }

    // SHOW SOCKETS: every client and server, with PgBouncer's list names as states.
    let sockets = raw.query("SHOW SOCKETS").table();
    let me = sockets.one(&[("type", "C"), ("user", ADMIN)]);
    assert_eq!(sockets.val(me, "database"), "pgbouncer");
    assert_eq!(sockets.val(me, "state"), "cl_active");
    let client = sockets.one(&[("type", "C"), ("user", role)]);
    assert_eq!(sockets.val(client, "database"), APP_DB);
    assert_eq!(sockets.val(client, "state"), "cl_active");
    assert_eq!(sockets.num(client, "port"), i64::from(held.port));
    let server = sockets.one(&[("type", "S"), ("user", role)]);
    assert_eq!(sockets.val(server, "state"), "sv_active", "session pooling");
    assert_eq!(sockets.val(server, "link"), sockets.val(client, "ptr"));
    assert!(sockets.num(server, "remote_pid") > 0, "{server:?}");
    for r in &sockets.rows {
        for col in &SOCKETS_COLS[21..] {
            assert_eq!(sockets.num(r, col), 0, "idle buffers: {col} {r:?}");
        }
    }

    // A connection still logging in is a cl_login socket (not a SHOW CLIENTS row); once
    // bytes of its startup packet wait in its buffer, it is an active socket too.
    let mut login = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect");
    let port = login
        .local_addr()
        .expect("local address")
        .port()
        .to_string();
    let listed = wait_until(secs(2), || {
        let t = raw.query("SHOW SOCKETS").table();
        t.find(&[("port", &port), ("state", "cl_login")]).len() == 1
    });
    assert!(listed, "{:#?}", raw.query("SHOW SOCKETS").table());
    let clients = raw.query("SHOW CLIENTS").table();
    assert!(clients.find(&[("port", &port)]).is_empty(), "{clients:#?}");
    // Four bytes of the startup packet's length, promising more.
    login.write_all(&64u32.to_be_bytes()).expect("write");
    let buffered = wait_until(secs(2), || {
        let t = raw.query("SHOW ACTIVE_SOCKETS").table();
        t.find(&[("port", &port)])
            .first()
            .is_some_and(|r| t.num(r, "recv_pos") == 4 && t.num(r, "pkt_avail") == 4)
    });
    assert!(buffered, "{:#?}", raw.query("SHOW ACTIVE_SOCKETS").table());

    // SHOW HELP lists them, as PgBouncer 1.25's does.
    let help = raw.query("SHOW HELP");
    let detail = help.notices[0].get(&'D').cloned().unwrap_or_default();
    for line in [
        "\tSHOW PEERS|PEER_POOLS\n",
        "SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE",
        "\tSHOW DNS_HOSTS|DNS_ZONES\n",
    ] {
        assert!(detail.contains(line), "{line:?} in {detail:?}");
    }
}

/// SHOW DNS_HOSTS lists the host names the workers resolved, with their addresses and the
/// seconds until the next lookup; SHOW MEM sums every worker's connection slots and
/// buffers.
#[test]
fn show_dns_hosts_and_mem_report_every_workers_caches() {
    let role = "adm_dnsmem";
    create_role(role);
    let dbs = format!(
        "  byname: {{ host: localhost, port: {}, dbname: app }}\n",
        shared_pg().port()
    );
    let pooler = start(&config("dns_max_ttl: 30\n", &dbs), &[role]);
    let mut admin = admin(&pooler);
    assert!(query_rows(&mut admin, "SHOW DNS_HOSTS").is_empty());
    let mut c = pooler.connect(role, role, "byname");
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");

    let hosts = query_rows(&mut admin, "SHOW DNS_HOSTS");
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let h = &hosts[0];
    assert_eq!(h.get("hostname"), Some("localhost"));
    let ttl: u64 = h.get("ttl").unwrap().parse().unwrap();
    assert!((1..=30).contains(&ttl), "ttl {ttl}");
    let port = shared_pg().port();
    let addrs = h.get("addrs").unwrap();
    assert!(
        addrs
            .split(',')
            .any(|a| a == format!("127.0.0.1:{port}") || a == format!("[::1]:{port}")),
        "{addrs}"
    );

    // A client mid-query: its slot and its server's are used.
    let mut busy = Raw::login(pooler.port(), role, role, "byname");
    busy.send(b'Q', b"SELECT pg_sleep(2)\0");
    thread::sleep(Duration::from_millis(300));
    let mem = query_rows(&mut admin, "SHOW MEM");
    let names: Vec<&str> = mem.iter().filter_map(|r| r.get("name")).collect();
    assert_eq!(
        names,
        ["conn_cache", "pool_cache", "iobuf_cache", "outbuf_cache"]
    );
    let n = |row: usize, col: &str| -> u64 { mem[row].get(col).unwrap().parse().unwrap() };
    for row in 0..mem.len() {
        assert_eq!(
            n(row, "memtotal"),
            n(row, "size") * (n(row, "used") + n(row, "free"))
        );
    }
    // Two clients, their two servers and this console, at least.
    assert!(n(0, "used") >= 5, "{:?}", mem[0]);
    assert!(n(1, "used") >= 1, "{:?}", mem[1]);
    assert_eq!(n(2, "size"), 8192, "pkt_buf");
    drop(busy);
}

// ---------------------------------------------------------------------------
// 7. PAUSE / RESUME reach every worker
// ---------------------------------------------------------------------------

#[test]
fn pause_and_resume_reach_every_worker() {
    let role = "adm_pause7";
    let fresh = "adm_pause7b";
    create_role(role);
    create_role(fresh);
    let pooler = start(&config("pool_mode: transaction\n", ""), &[role, fresh]);
    // Both workers have the pool (and its cached welcome) before the pause.
    let mut warm = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    for h in &mut warm {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    let mut console = admin(&pooler);
    let (code, msg) = console_fails(&mut console, "PAUSE nosuchdb");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "no such database: nosuchdb")
    );
    console.simple_query("PAUSE").expect("PAUSE");
    let state = show(&mut console, "SHOW STATE");
    assert_eq!(state.val(state.one(&[("key", "paused")]), "value"), "yes");
    assert_eq!(state.val(state.one(&[("key", "active")]), "value"), "no");

    // New clients on each worker log in, but their queries wait; so does a
    // user whose pool did not exist before the PAUSE.
    let newcomers = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    let (tx, rx) = mpsc::channel::<(String, bool, Duration)>();
    let mut expected = 0;
    for h in newcomers {
        expected += 1;
        let tx = tx.clone();
        thread::spawn(move || {
            let mut h = h;
            let t0 = Instant::now();
            let r = h.conn.query("SELECT 1");
            let who = format!("new client on worker {}: {r:?}", h.worker);
            let _ = tx.send((who, r.ok(), t0.elapsed()));
        });
    }
    {
        expected += 1;
        let tx = tx.clone();
        let port = pooler.port();
        thread::spawn(move || {
            let t0 = Instant::now();
            let r = Raw::try_login(port, fresh, fresh, APP_DB).map(|mut c| c.query("SELECT 1"));
            let ok = matches!(&r, Ok(r) if r.ok());
            let _ = tx.send((format!("new user: {r:?}"), ok, t0.elapsed()));
        });
    }
    drop(tx);
    // Nothing may complete while paused: waiting out the second is the test.
    thread::sleep(secs(1));
    let early: Vec<_> = rx.try_iter().collect();
    console.simple_query("RESUME").expect("RESUME");
    assert!(early.is_empty(), "completed during PAUSE: {early:#?}");
    let mut done = Vec::new();
    while done.len() < expected {
        match rx.recv_timeout(secs(5)) {
            Ok(x) => done.push(x),
            Err(_) => break,
        }
    }
    assert_eq!(
        done.len(),
        expected,
        "after RESUME only these completed: {done:#?}"
    );
    for (who, ok, _) in &done {
        assert!(ok, "{who}");
    }
    let state = show(&mut console, "SHOW STATE");
    assert_eq!(state.val(state.one(&[("key", "paused")]), "value"), "no");
}

// ---------------------------------------------------------------------------
// 8. KILL and KILL_CLIENT across workers
// ---------------------------------------------------------------------------

#[test]
fn kill_and_kill_client_reach_every_worker() {
    let role = "adm_kill8";
    create_role(role);
    let pooler = start(&config("", &db_entry("other", "")), &[role]);
    let mut victims = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    let mut others = spread(&pooler, 1, || {
        Raw::login(pooler.port(), role, role, "other")
    });
    for h in victims.iter_mut().chain(others.iter_mut()) {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    assert_eq!(backends(role), (victims.len() + others.len()) as i64);
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    let console_worker = worker_of_port(&pooler, console.port);

    let r = console.query("KILL nosuchdb");
    assert_eq!(r.error(), ("ERROR", "08P01", "no such database: nosuchdb"));
    let r = console.query("KILL app");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.tags, ["KILL"]);
    for h in &mut victims {
        h.conn.set_timeout(secs(3));
        let r = h.conn.reply();
        assert_eq!(
            r.end,
            End::Closed,
            "app client on worker {}: {r:?}",
            h.worker
        );
        assert_eq!(
            r.error().0,
            "FATAL",
            "app client on worker {}: {r:?}",
            h.worker
        );
    }
    for h in &mut others {
        assert_eq!(
            h.conn.scalar("SELECT 2"),
            "2",
            "other client on worker {}",
            h.worker
        );
    }
    let mut servers = Table::default();
    let gone = wait_until(secs(3), || {
        servers = console.query("SHOW SERVERS").table();
        servers
            .find(&[("user", role), ("database", APP_DB)])
            .is_empty()
    });
    assert!(gone, "app servers left after KILL app: {servers:#?}");
    assert_eq!(
        servers.find(&[("user", role), ("database", "other")]).len(),
        others.len()
    );
    assert!(
        wait_until(secs(3), || backends(role) == others.len() as i64),
        "backends of {role}: {}",
        backends(role)
    );

    // KILL_CLIENT, for a client of the worker the console is not on.
    let clients = console.query("SHOW CLIENTS").table();
    let pick = others
        .iter()
        .position(|h| h.worker != console_worker)
        .expect("a client on the other worker");
    let victim = others.remove(pick);
    let row = clients.one(&[("port", &victim.port.to_string()), ("addr", "127.0.0.1")]);
    let id = clients.val(row, "id").to_string();
    let r = console.query(&format!("KILL_CLIENT {id}"));
    assert!(r.ok(), "KILL_CLIENT {id}: {r:?}");
    assert_eq!(r.tags, ["KILL_CLIENT"]);
    let mut victim = victim;
    victim.conn.set_timeout(secs(3));
    let r = victim.conn.reply();
    assert_eq!(r.error(), ("FATAL", "08P01", "admin forced disconnect"));
    assert_eq!(r.end, End::Closed);
    // The log names the client by the same id as SHOW CLIENTS and KILL_CLIENT.
    let logged = format!(
        "C-{id}: other/{role}@127.0.0.1:{}: closing because: admin forced disconnect",
        victim.port
    );
    assert!(
        pooler.wait_for_log(&logged, secs(3)),
        "{logged:?} not in the log:\n{}",
        pooler.log()
    );
    for h in &mut others {
        assert_eq!(
            h.conn.scalar("SELECT 3"),
            "3",
            "client on worker {}",
            h.worker
        );
    }
    let after = console.query("SHOW CLIENTS").table();
    assert!(
        after.find(&[("id", &id)]).is_empty(),
        "killed client still listed: {after:#?}"
    );

    let missing = ((0x7f_ffffu32) << 8) | (1 - console_worker) as u32;
    for q in [
        format!("KILL_CLIENT {missing}"),
        "KILL_CLIENT 201".to_string(),
    ] {
        let r = console.query(&q);
        assert_eq!(r.error(), ("ERROR", "08P01", "client not found"), "{q}");
        assert_eq!(r.end, End::Ready);
    }
    let r = console.query("KILL_CLIENT abc");
    assert_eq!(
        r.error(),
        ("ERROR", "08P01", "invalid client pointer supplied")
    );
}

// ---------------------------------------------------------------------------
// 9. SET reaches every worker; RELOAD reverts it
// ---------------------------------------------------------------------------

#[test]
fn set_changes_every_worker_until_reload() {
    let role = "adm_set9";
    create_role(role);
    let pooler = start(&config("", ""), &[role]);
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    let r = console.query("SET query_timeout = 1");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.tags, ["SET query_timeout=1"]);
    let config = console.query("SHOW CONFIG").table();
    assert_eq!(
        config.val(config.one(&[("key", "query_timeout")]), "value"),
        "1"
    );

    let held = exactly(
        spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB)),
        1,
    );
    let threads: Vec<_> = held
        .into_iter()
        .map(|h| query_on_thread(h, "SELECT pg_sleep(3)"))
        .collect();
    for t in threads {
        let (h, r, took) = t.join().expect("client thread");
        assert_eq!(
            r.error(),
            ("FATAL", "08P01", "query_timeout"),
            "worker {}",
            h.worker
        );
        assert!(
            took >= ms(900) && took < ms(2500),
            "worker {}: query_timeout after {took:?}",
            h.worker
        );
    }

    for q in ["SET listen_port = 1", "SET nonsense = 1"] {
        let r = console.query(q);
        let (sev, code, msg) = r.error();
        assert_eq!((sev, code), ("ERROR", "08P01"), "{q}: {r:?}");
        assert!(msg.starts_with("SET failed"), "{q}: {msg}");
        assert_eq!(r.end, End::Ready);
    }
    let config = console.query("SHOW CONFIG").table();
    assert_eq!(
        config.val(config.one(&[("key", "listen_port")]), "value"),
        pooler.port().to_string()
    );

    // RELOAD goes back to the file, which has no query_timeout.
    let r = console.query("RELOAD");
    assert!(r.ok(), "{r:?}");
    let config = console.query("SHOW CONFIG").table();
    assert_eq!(
        config.val(config.one(&[("key", "query_timeout")]), "value"),
        "0"
    );
    let held = exactly(
        spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB)),
        1,
    );
    let threads: Vec<_> = held
        .into_iter()
        .map(|h| query_on_thread(h, "SELECT pg_sleep(1.5)"))
        .collect();
    for t in threads {
        let (h, r, _) = t.join().expect("client thread");
        assert!(r.ok(), "worker {} after RELOAD: {r:?}", h.worker);
    }
}

// ---------------------------------------------------------------------------
// 10. RELOAD of a broken file
// ---------------------------------------------------------------------------

#[test]
fn reload_of_an_invalid_file_fails_and_keeps_serving() {
    let role = "adm_rel10";
    create_role(role);
    let yaml = config("max_client_conn: 77\n", "");
    let pooler = start(&yaml, &[role]);
    let mut console = admin(&pooler);
    pooler.rewrite_config(&format!("{yaml}max_client_conn: [oops\n"));
    let (code, msg) = console_fails(&mut console, "RELOAD");
    assert_eq!(code, "F0000");
    assert_eq!(msg, "RELOAD failed, see logs for additional details");
    // Still serving, on every worker, with the old settings.
    let mut held = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    for h in &mut held {
        assert_eq!(h.conn.scalar("SELECT 1"), "1", "worker {}", h.worker);
    }
    let config = show(&mut console, "SHOW CONFIG");
    assert_eq!(
        config.val(config.one(&[("key", "max_client_conn")]), "value"),
        "77"
    );
    // A fixed file reloads.
    pooler.rewrite_config(&config_with(
        &yaml,
        "max_client_conn: 77",
        "max_client_conn: 78",
    ));
    console
        .simple_query("RELOAD")
        .expect("RELOAD of a valid file");
    let config = show(&mut console, "SHOW CONFIG");
    assert_eq!(
        config.val(config.one(&[("key", "max_client_conn")]), "value"),
        "78"
    );
    // "see logs": the log says why the first RELOAD failed (file and error).
    // Checked last, so the checks above run even when this fails.
    let path = format!("{}: ", pooler.config_path().display());
    assert!(
        wait_until(secs(2), || pooler.log().contains(&path)),
        "the log does not say why RELOAD failed (no `{path}...`)\n{}",
        pooler.log()
    );
}

fn config_with(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "{from} not in the config");
    yaml.replace(from, to)
}

// ---------------------------------------------------------------------------
// 11. SHUTDOWN
// ---------------------------------------------------------------------------

#[test]
fn shutdown_from_the_console_stops_the_whole_pooler() {
    let role = "adm_shut11";
    create_role(role);
    let mut pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let workers = pooler.children();
    let mut idle = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    for h in &mut idle {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    // As PgBouncer's plain SHUTDOWN: at once, an open transaction does not hold it up.
    let mut busy = Raw::login(pooler.port(), role, role, APP_DB);
    assert!(busy.query("BEGIN").ok());
    assert_eq!(busy.scalar("SELECT 1"), "1");
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    let t0 = Instant::now();
    console.set_timeout(secs(5));
    console.send(b'Q', b"SHUTDOWN\0");
    let status = pooler.wait_exit(secs(5));
    let took = t0.elapsed();
    let alive: Vec<i32> = workers
        .iter()
        .copied()
        .filter(|&p| process_alive(p))
        .collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "supervisor exit {status:?} after {took:?}; workers still alive: {alive:?}\n{}",
        pooler.log()
    );
    assert!(
        wait_until(secs(1), || workers.iter().all(|&p| !process_alive(p))),
        "workers {workers:?} outlived the supervisor"
    );
    let r = console.reply();
    assert_ne!(r.end, End::TimedOut, "console connection left open: {r:?}");
    busy.set_timeout(secs(2));
    let r = busy.reply();
    assert_eq!(r.end, End::Closed, "client in a transaction: {r:?}");
    for h in &mut idle {
        h.conn.set_timeout(secs(2));
        let r = h.conn.reply();
        assert_eq!(
            r.end,
            End::Closed,
            "idle client on worker {}: {r:?}",
            h.worker
        );
    }
}

#[test]
fn shutdown_wait_for_servers_lets_transactions_end_then_exits() {
    let role = "adm_shutw11";
    create_role(role);
    let mut pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let mut busy = Raw::login(pooler.port(), role, role, APP_DB);
    assert!(busy.query("BEGIN").ok());
    assert_eq!(busy.scalar("SELECT 1"), "1");

    // Anything else after SHUTDOWN is refused whole, as PgBouncer 1.25 refuses it.
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    let r = console.query("SHUTDOWN foo");
    assert_eq!(
        r.error().2,
        "invalid command 'SHUTDOWN foo', use SHOW HELP;",
        "{r:?}"
    );
    let help = console.query("SHOW HELP");
    let detail = help.notices[0].get(&'D').cloned().unwrap_or_default();
    assert!(
        detail.contains("\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"),
        "{detail:?}"
    );
    assert!(pooler.wait_exit(ms(300)).is_none(), "{}", pooler.log());

    console.set_timeout(secs(5));
    console.send(b'Q', b"shutdown wait_for_servers;\0");
    // The open transaction holds its server: the pooler waits for it...
    assert!(
        pooler.wait_exit(ms(1500)).is_none(),
        "exited with a transaction open:\n{}",
        pooler.log()
    );
    // ...and takes no new client meanwhile.
    assert!(
        TcpStream::connect(("127.0.0.1", pooler.port())).is_err(),
        "the listening socket is still open during SHUTDOWN WAIT_FOR_SERVERS"
    );
    // PgBouncer answers the command before it waits.
    let r = console.reply();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.tags, ["SHUTDOWN"], "{r:?}");
    busy.set_timeout(secs(5));
    let _ = busy.query("COMMIT");
    let status = pooler.wait_exit(secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "supervisor exit {status:?} after the transaction ended\n{}",
        pooler.log()
    );
    assert!(
        pooler.log().contains("SHUTDOWN WAIT_FOR_SERVERS"),
        "{}",
        pooler.log()
    );
}

#[test]
fn shutdown_wait_for_clients_serves_them_until_every_one_left() {
    let role = "adm_shutc11";
    create_role(role);
    let mut pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let mut idle = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    for h in &mut idle {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    console.set_timeout(secs(5));
    let r = console.query("SHUTDOWN WAIT_FOR_CLIENTS");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.tags, ["SHUTDOWN"], "{r:?}");
    drop(console);
    // Idle clients stay, and still get servers for new transactions...
    assert!(
        pooler.wait_exit(ms(1500)).is_none(),
        "exited with clients connected:\n{}",
        pooler.log()
    );
    for h in &mut idle {
        h.conn.set_timeout(secs(5));
        assert_eq!(h.conn.scalar("SELECT 2"), "2", "worker {}", h.worker);
    }
    // ...no new client comes in...
    assert!(
        TcpStream::connect(("127.0.0.1", pooler.port())).is_err(),
        "the listening socket is still open during SHUTDOWN WAIT_FOR_CLIENTS"
    );
    // ...and the pooler exits once the last one left.
    for h in &mut idle {
        h.conn.send(b'X', b"");
    }
    drop(idle);
    let status = pooler.wait_exit(secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "supervisor exit {status:?} after the clients left\n{}",
        pooler.log()
    );
    assert!(
        pooler.log().contains("SHUTDOWN WAIT_FOR_CLIENTS"),
        "{}",
        pooler.log()
    );
}

// ---------------------------------------------------------------------------
// 12. Prometheus endpoint
// ---------------------------------------------------------------------------

struct Scrape {
    status: u16,
    body: String,
    took: Duration,
}

fn http_get(addr: SocketAddr, path: &str) -> Scrape {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to metrics_addr");
    s.set_read_timeout(Some(secs(10))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Scrape {
        status,
        body: body.to_string(),
        took: t0.elapsed(),
    }
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{k="v",...} value`; panics on anything else.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest
                .find("=\"")
                .unwrap_or_else(|| panic!("label without =\": {line}"));
            let key = &rest[..eq];
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "label name {key:?}: {line}"
            );
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &rest[close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let v = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"));
    let value = v
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("value {v:?} is not a number: {line}"));
    Sample {
        name,
        labels,
        value,
    }
}

/// Checks the text exposition format 0.0.4 and returns the samples.
fn check_exposition(body: &str) -> Vec<Sample> {
    assert!(body.ends_with('\n'), "body does not end with a newline");
    let valid_name = |n: &str| {
        n.strip_prefix("pgbouncers_")
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    };
    let mut help: BTreeSet<String> = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in body.lines() {
        assert!(!line.is_empty(), "empty line in the exposition");
        let family = if let Some(r) = line.strip_prefix("# HELP ") {
            let name = r.split(' ').next().unwrap_or("");
            assert!(valid_name(name), "HELP for {name:?}");
            assert!(help.insert(name.to_string()), "second HELP for {name}");
            assert!(!types.contains_key(name), "HELP after TYPE for {name}");
            name.to_string()
        } else if let Some(r) = line.strip_prefix("# TYPE ") {
            let (name, kind) = r.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(help.contains(name), "TYPE before HELP for {name}");
            assert!(matches!(kind, "counter" | "gauge"), "type {kind} of {name}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE for {name}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} lacks _total");
            }
            name.to_string()
        } else {
            assert!(!line.starts_with('#'), "stray comment {line:?}");
            let s = parse_sample(line);
            assert!(valid_name(&s.name), "sample name {:?}", s.name);
            assert!(
                types.contains_key(&s.name),
                "sample before its HELP/TYPE: {line}"
            );
            let name = s.name.clone();
            samples.push(s);
            name
        };
        if current.as_deref() != Some(family.as_str()) {
            assert!(
                !finished.contains(&family),
                "lines of {family} are not grouped together"
            );
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            current = Some(family);
        }
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// SIGSTOPs a process, and SIGCONTs it when dropped (even on a failed assert).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        // SAFETY: plain kill(2) on a worker of this test's own pooler.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn metrics_endpoint_covers_every_worker() {
    let role = "adm_met12";
    create_role(role);
    let mport = free_port();
    let extra = format!("metrics_addr: 127.0.0.1:{mport}\n");
    let pooler = start(&config(&extra, ""), &[role]);
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().expect("address");

    let script = pooler.write_file("select1.sql", "SELECT 1;\n");
    let script = script.to_str().expect("utf-8 path").to_string();
    let out = run_pgbench(
        pooler.port(),
        APP_USER,
        APP_PASSWORD,
        APP_DB,
        &["-n", "-f", &script, "-t", "20", "-c", "4"],
    );
    assert!(out.success(), "{out}");
    let mut held = spread(&pooler, 2, || Raw::login(pooler.port(), role, role, APP_DB));
    for h in &mut held {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    let n = held.len() as f64;
    let pool = [("database", APP_DB), ("user", role)];

    let mut body = String::new();
    let ok = wait_until(secs(3), || {
        let s = http_get(maddr, "/metrics");
        body = s.body;
        let m = check_exposition(&body);
        s.status == 200
            && value(&m, "pgbouncers_pool_client_active_connections", &pool) == Some(n)
            && value(&m, "pgbouncers_pool_server_active_connections", &pool) == Some(n)
            && value(
                &m,
                "pgbouncers_database_transactions_total",
                &[("database", APP_DB)],
            )
            .is_some_and(|v| v >= 80.0)
    });
    assert!(
        ok,
        "held {n} sessions, ran 80 pgbench transactions:\n{body}"
    );
    let m = check_exposition(&body);
    assert_eq!(value(&m, "pgbouncers_up", &[]), Some(1.0));
    assert!(value(&m, "pgbouncers_uptime_seconds", &[]).is_some());
    assert!(value(&m, "pgbouncers_clients", &[]).is_some_and(|v| v >= n));
    assert_eq!(
        value(&m, "pgbouncers_pool_client_waiting_connections", &pool),
        Some(0.0)
    );
    assert!(
        value(
            &m,
            "pgbouncers_database_server_connections",
            &[("database", APP_DB)]
        )
        .is_some_and(|v| v >= n),
        "{body}"
    );
    for name in [
        "pgbouncers_database_queries_total",
        "pgbouncers_database_received_bytes_total",
        "pgbouncers_database_sent_bytes_total",
        "pgbouncers_database_server_assignments_total",
    ] {
        assert!(
            value(&m, name, &[("database", APP_DB)]).is_some_and(|v| v > 0.0),
            "{name}\n{body}"
        );
    }
    for name in [
        "pgbouncers_worker_clients",
        "pgbouncers_worker_servers",
        "pgbouncers_worker_accepts_total",
        "pgbouncers_worker_transactions_total",
        "pgbouncers_worker_queries_total",
        "pgbouncers_worker_received_bytes_total",
        "pgbouncers_worker_sent_bytes_total",
        "pgbouncers_worker_auth_failures_total",
    ] {
        let workers: BTreeSet<&str> = m
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get("worker").map(String::as_str))
            .collect();
        assert_eq!(workers, BTreeSet::from(["0", "1"]), "{name}\n{body}");
    }
    // Both workers hold some of the sessions.
    for w in ["0", "1"] {
        assert!(
            value(&m, "pgbouncers_worker_clients", &[("worker", w)]).is_some_and(|v| v >= 2.0),
            "worker {w}\n{body}"
        );
    }
    assert!(value(&m, "pgbouncers_proxy_headers_accepted_total", &[]).is_some());
    for reason in ["untrusted", "missing", "invalid", "timeout"] {
        assert!(
            value(
                &m,
                "pgbouncers_proxy_headers_rejected_total",
                &[("reason", reason)]
            )
            .is_some(),
            "reason {reason}\n{body}"
        );
    }
    assert_eq!(
        value(&m, "pgbouncers_scrape_missing_workers", &[]),
        Some(0.0)
    );

    // A failed login is counted.
    let failures = sum(&m, "pgbouncers_worker_auth_failures_total");
    let e = Raw::try_login(pooler.port(), role, "wrong", APP_DB)
        .err()
        .expect("wrong password accepted");
    assert_eq!(e.get(&'C').map(String::as_str), Some("28P01"));
    let mut now = failures;
    let counted = wait_until(secs(2), || {
        now = sum(
            &check_exposition(&http_get(maddr, "/metrics").body),
            "pgbouncers_worker_auth_failures_total",
        );
        now == failures + 1.0
    });
    assert!(counted, "auth failures {failures} -> {now}");

    let other = http_get(maddr, "/other");
    assert_eq!(other.status, 404);

    // A stopped worker: the scrape still answers, naming it missing, and the
    // supervisor still handles SIGHUP meanwhile.
    let workers = pooler.children();
    let stopped = Stopped::new(workers[0]);
    let s = http_get(maddr, "/metrics");
    assert_eq!(s.status, 200);
    assert!(
        s.took < ms(2500),
        "scrape with a stopped worker took {:?}",
        s.took
    );
    let m = check_exposition(&s.body);
    assert_eq!(
        value(&m, "pgbouncers_scrape_missing_workers", &[]),
        Some(1.0),
        "{}",
        s.body
    );
    let reloads = supervisor_reloads(&pooler.log());
    pooler.reload();
    let reloaded = wait_until(secs(3), || supervisor_reloads(&pooler.log()) > reloads);
    drop(stopped);
    assert!(
        reloaded,
        "no SIGHUP reload while a worker was stopped\n{}",
        pooler.log()
    );
    let mut last = String::new();
    let back = wait_until(secs(3), || {
        last = http_get(maddr, "/metrics").body;
        value(
            &check_exposition(&last),
            "pgbouncers_scrape_missing_workers",
            &[],
        ) == Some(0.0)
    });
    assert!(back, "after SIGCONT:\n{last}");
}

#[test]
fn metrics_count_refused_proxy_connections() {
    let mport = free_port();
    let extra = format!(
        "metrics_addr: 127.0.0.1:{mport}\n\
         proxy_protocol: required\n\
         proxy_trusted: [10.0.0.0/8]\n"
    );
    let pooler = start(&config(&extra, ""), &[]);
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().expect("address");
    let untrusted = |body: &str| {
        value(
            &check_exposition(body),
            "pgbouncers_proxy_headers_rejected_total",
            &[("reason", "untrusted")],
        )
        .unwrap_or_else(|| panic!("no untrusted counter:\n{body}"))
    };
    // The harness's readiness probe was one refused connection already;
    // let the counters settle on it.
    let mut base = 0.0;
    wait_until(secs(1), || {
        base = untrusted(&http_get(maddr, "/metrics").body);
        base >= 1.0
    });
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect");
        s.set_read_timeout(Some(secs(3))).expect("timeout");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "a refused peer got {buf:?}");
    }
    let mut now = base;
    let counted = wait_until(secs(2), || {
        now = untrusted(&http_get(maddr, "/metrics").body);
        now == base + 2.0
    });
    assert!(
        counted,
        "untrusted refusals {base} -> {now}\n{}",
        pooler.log()
    );
    let body = http_get(maddr, "/metrics").body;
    assert_eq!(
        value(
            &check_exposition(&body),
            "pgbouncers_proxy_headers_accepted_total",
            &[]
        ),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------
// 13. log_stats and login lines
// ---------------------------------------------------------------------------

#[test]
fn log_stats_lines_every_stats_period() {
    let role = "adm_log13";
    create_role(role);
    let pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let mut held = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    // Load until a stats line shows it (the line covers a whole period).
    let busy = |l: &&str| l.contains("[app] stats: ") && !l.contains("[app] stats: 0 xacts/s");
    let deadline = Instant::now() + secs(5);
    while Instant::now() < deadline && !pooler.log().lines().any(|l| busy(&l)) {
        for h in &mut held {
            assert_eq!(h.conn.scalar("SELECT 1"), "1");
        }
    }
    let log = pooler.log();
    let line = log
        .lines()
        .find(busy)
        .unwrap_or_else(|| panic!("no busy `[app] stats:` line in 5 s\n{log}"));
    assert!(
        line.contains("xacts/s") && line.contains("queries/s"),
        "{line}"
    );
    // Login lines name the real client address and the worker.
    for h in &held {
        let needle = format!("@127.0.0.1:{}: login attempt", h.port);
        let login = log
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no `{needle}` line\n{log}"));
        assert!(login.ends_with(&format!("worker={}", h.worker)), "{login}");
    }

    // With log_stats off there are none.
    let quiet = start(
        &config("pool_mode: transaction\nlog_stats: false\n", ""),
        &[role],
    );
    let mut c = Raw::login(quiet.port(), role, role, APP_DB);
    let t0 = Instant::now();
    while t0.elapsed() < ms(2200) {
        assert_eq!(c.scalar("SELECT 1"), "1");
        thread::sleep(ms(20));
    }
    assert!(
        !quiet.log().contains("] stats: "),
        "log_stats: false still logs stats\n{}",
        quiet.log()
    );
}

// ---------------------------------------------------------------------------
// 14. PAUSE waits for every worker; DISABLE/ENABLE; RECONNECT and WAIT_CLOSE
// ---------------------------------------------------------------------------

/// Runs a console command on a thread; its result comes back with how long it took.
fn console_on_thread(pooler: &Pooler, sql: &str) -> mpsc::Receiver<(Result<(), String>, Duration)> {
    let mut console = admin(pooler);
    let sql = sql.to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let t0 = Instant::now();
        let r = console
            .simple_query(&sql)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"));
        let _ = tx.send((r, t0.elapsed()));
    });
    rx
}

/// One client per worker, each inside a transaction that holds a server.
fn one_open_transaction_per_worker(pooler: &Pooler, role: &str) -> Vec<Held> {
    let mut held = exactly(
        spread(pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB)),
        1,
    );
    for h in &mut held {
        assert!(h.conn.query("BEGIN").ok());
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }
    held
}

#[test]
fn pause_answers_only_when_every_worker_let_its_servers_go() {
    let role = "adm_pause14";
    create_role(role);
    let pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let mut held = one_open_transaction_per_worker(&pooler, role);
    assert_eq!(backends(role), WORKERS as i64);

    let pause = console_on_thread(&pooler, "PAUSE");
    // Both transactions are open: PAUSE must still be waiting a second later.
    assert!(
        pause.recv_timeout(secs(1)).is_err(),
        "PAUSE answered while transactions were open"
    );
    // One worker's transaction ends; the other still holds PAUSE up.
    assert!(held[0].conn.query("COMMIT").ok());
    assert!(
        pause.recv_timeout(secs(1)).is_err(),
        "PAUSE answered while worker {} still had a transaction open",
        held[1].worker
    );
    assert!(held[1].conn.query("COMMIT").ok());
    let (r, took) = pause.recv_timeout(secs(5)).expect("PAUSE never answered");
    assert_eq!(r, Ok(()), "PAUSE failed");
    // The thread's clock starts once its console login is done, a little after the two
    // one-second waits above began: allow for that, no more.
    assert!(
        took >= Duration::from_millis(1800),
        "PAUSE took only {took:?}"
    );
    // Answered means done: the servers are closed (PostgreSQL's backends exit just after).
    assert!(
        wait_until(secs(3), || backends(role) == 0),
        "servers still open after PAUSE: {}",
        backends(role)
    );

    let mut console = admin(&pooler);
    let (code, msg) = console_fails(&mut console, "PAUSE");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "already suspended/paused")
    );
    console.simple_query("RESUME").expect("RESUME");
    for h in &mut held {
        assert_eq!(h.conn.scalar("SELECT 2"), "2");
    }
    // With nothing to wait for, PAUSE of one database answers at once.
    let t0 = Instant::now();
    console.simple_query("PAUSE app").expect("PAUSE app");
    assert!(
        t0.elapsed() < secs(1),
        "idle PAUSE app took {:?}",
        t0.elapsed()
    );
    console.simple_query("RESUME app").expect("RESUME app");
    assert_eq!(held[0].conn.scalar("SELECT 3"), "3");
}

#[test]
fn disable_refuses_new_clients_in_every_worker_even_after_a_respawn() {
    let role = "adm_disable14";
    create_role(role);
    let pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let mut held = exactly(
        spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB)),
        1,
    );
    let mut console = admin(&pooler);
    for (sql, want) in [
        ("DISABLE", "a database is required"),
        ("DISABLE nosuchdb", "no such database: nosuchdb"),
        ("DISABLE pgbouncer", "cannot disable admin db: pgbouncer"),
        ("ENABLE pgbouncer", "cannot enable admin db: pgbouncer"),
        ("RECONNECT nosuchdb", "no such database: nosuchdb"),
        ("WAIT_CLOSE pgbouncer", "cannot wait in admin db: pgbouncer"),
    ] {
        let (code, msg) = console_fails(&mut console, sql);
        assert_eq!((code.as_str(), msg.as_str()), ("08P01", want), "{sql}");
    }
    console.simple_query("DISABLE app").expect("DISABLE app");
    let dbs = show(&mut console, "SHOW DATABASES");
    assert_eq!(dbs.num(dbs.one(&[("name", "app")]), "disabled"), 1);

    let refused = |port: u16| {
        let e = Raw::try_login(port, role, role, APP_DB)
            .err()
            .expect("a login to a disabled database went through");
        (e.get(&'C').cloned(), e.get(&'M').cloned())
    };
    // PgBouncer 1.25's words and code, and only after the password: before it, a client
    // that cannot log in learns nothing of the database.
    let want = (
        Some("08P01".to_string()),
        Some("database \"app\" is disabled".to_string()),
    );
    let e = Raw::try_login(pooler.port(), role, "not-the-password", APP_DB)
        .err()
        .expect("a wrong password logged in");
    assert_eq!(e.get(&'C').map(String::as_str), Some("28P01"), "{e:?}");
    // Twenty logins: SO_REUSEPORT sends some to each worker.
    for _ in 0..20 {
        assert_eq!(refused(pooler.port()), want);
    }
    // Clients already in stay served.
    for h in &mut held {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
    }

    // A worker started after the DISABLE obeys it too.
    let workers = show(&mut console, "SHOW WORKERS");
    let victim: i32 = workers
        .val(workers.one(&[("worker", "0")]), "pid")
        .parse()
        .expect("worker pid");
    // SAFETY: kill(2) on a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let respawned = wait_until(secs(10), || {
        pooler.log().matches("worker 0 started (pid").count() >= 2
    });
    assert!(respawned, "worker 0 was not respawned\n{}", pooler.log());
    pooler.wait_for_children(WORKERS, secs(5));
    for _ in 0..20 {
        assert_eq!(refused(pooler.port()), want);
    }

    // The console connection may have been on the killed worker.
    let mut console = admin(&pooler);
    console.simple_query("ENABLE app").expect("ENABLE app");
    let dbs = show(&mut console, "SHOW DATABASES");
    assert_eq!(dbs.num(dbs.one(&[("name", "app")]), "disabled"), 0);
    let fresh = spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB));
    assert!(fresh.len() >= WORKERS);
}

#[test]
fn reconnect_replaces_servers_as_they_are_released_and_wait_close_waits_for_it() {
    let role = "adm_reconnect14";
    create_role(role);
    let pooler = start(&config("pool_mode: transaction\n", ""), &[role]);
    let mut held = exactly(
        spread(&pooler, 1, || Raw::login(pooler.port(), role, role, APP_DB)),
        1,
    );
    let mut old = BTreeSet::new();
    for h in &mut held {
        assert!(h.conn.query("BEGIN").ok());
        old.insert(h.conn.scalar("SELECT pg_backend_pid()"));
    }
    assert_eq!(old.len(), WORKERS);

    let mut console = admin(&pooler);
    // RECONNECT itself does not wait.
    let t0 = Instant::now();
    console
        .simple_query("RECONNECT app")
        .expect("RECONNECT app");
    assert!(t0.elapsed() < secs(1), "RECONNECT took {:?}", t0.elapsed());
    let servers = show(&mut console, "SHOW SERVERS");
    let marked = servers
        .find(&[("user", role)])
        .iter()
        .filter(|r| servers.num(r, "close_needed") == 1)
        .count();
    assert_eq!(marked, WORKERS, "close_needed after RECONNECT");

    let wait = console_on_thread(&pooler, "WAIT_CLOSE app");
    assert!(
        wait.recv_timeout(secs(1)).is_err(),
        "WAIT_CLOSE answered while marked servers were still in use"
    );
    // The open transactions run on undisturbed.
    for h in &mut held {
        assert_eq!(h.conn.scalar("SELECT 1"), "1");
        assert!(h.conn.query("COMMIT").ok());
    }
    let (r, _) = wait
        .recv_timeout(secs(5))
        .expect("WAIT_CLOSE never answered");
    assert_eq!(r, Ok(()), "WAIT_CLOSE failed");
    // The old servers are gone from PostgreSQL; the next transactions get new ones.
    let alive = || -> BTreeSet<String> {
        shared_pg()
            .admin_sql(&format!(
                "SELECT pid FROM pg_stat_activity WHERE usename = {}",
                quote_literal(role)
            ))
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert!(
        wait_until(secs(3), || alive().is_disjoint(&old)),
        "old servers {old:?} still in {:?}",
        alive()
    );
    for h in &mut held {
        let pid = h.conn.scalar("SELECT pg_backend_pid()");
        assert!(!old.contains(&pid), "server {pid} reused after RECONNECT");
    }
    // Nothing left to close: WAIT_CLOSE for all databases answers at once.
    let t0 = Instant::now();
    console.simple_query("WAIT_CLOSE").expect("WAIT_CLOSE");
    assert!(
        t0.elapsed() < secs(1),
        "idle WAIT_CLOSE took {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// SET cannot change the auth files, nor lock everyone out with hba (issue 12, item 7)
// ---------------------------------------------------------------------------

/// A SET the console must refuse: ERROR 08P01 "SET failed: …" naming `must_say`, the
/// console still usable, and SHOW CONFIG's `key` still `before`.
fn assert_set_refused(console: &mut Raw, key: &str, value: &str, must_say: &[&str]) {
    let name = key.to_ascii_lowercase();
    let before = console.query("SHOW CONFIG").table();
    let before = before
        .val(before.one(&[("key", &name)]), "value")
        .to_string();
    let q = format!("SET {key} = '{value}'");
    let r = console.query(&q);
    let (sev, code, msg) = r.error();
    assert_eq!((sev, code), ("ERROR", "08P01"), "{q}: {r:?}");
    assert!(msg.starts_with("SET failed"), "{q}: {msg}");
    for word in must_say {
        assert!(msg.contains(word), "{q}: {msg:?} does not say {word:?}");
    }
    assert_eq!(r.end, End::Ready, "{q}");
    let after = console.query("SHOW CONFIG").table();
    assert_eq!(
        after.val(after.one(&[("key", &name)]), "value"),
        before,
        "{q}"
    );
}

/// A fresh console login and a fresh `app` login both work, in every worker.
fn logins_still_work(pooler: &Pooler, why: &str) {
    for _ in 0..2 * WORKERS {
        if let Err(e) = Raw::try_login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer") {
            panic!("{why}: console login refused: {e:?}\n{}", pooler.log());
        }
        if let Err(e) = Raw::try_login(pooler.port(), APP_USER, APP_PASSWORD, APP_DB) {
            panic!("{why}: app login refused: {e:?}\n{}", pooler.log());
        }
    }
}

#[test]
fn set_of_auth_files_is_refused_and_auth_type_hba_needs_rules() {
    // No hba file configured: its path and the auth file's cannot be SET (the supervisor
    // reads them only on RELOAD), and auth_type hba needs one.
    let pooler = start(&config("", ""), &[]);
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    let hba = pooler.write_file("hba.conf", "host all all 0.0.0.0/0 reject\n");
    let hba = hba.to_str().expect("utf-8 path");
    let edit = ["configuration file", "RELOAD"];
    assert_set_refused(&mut console, "auth_hba_file", hba, &edit);
    let other = pooler.write_file("other_userlist.txt", "\"x\" \"y\"\n");
    let other = other.to_str().expect("utf-8 path");
    assert_set_refused(&mut console, "auth_file", other, &edit);
    assert_set_refused(&mut console, "AUTH_FILE", other, &edit);
    assert_set_refused(&mut console, "auth_type", "hba", &["auth_hba_file"]);
    logins_still_work(&pooler, "after the refused SETs");
    drop(console);

    // An hba file configured but empty: auth_type hba would refuse every login, the
    // console's included, until a SIGHUP.
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist(&[]));
    setup.write_file("hba.conf", "# nothing yet\n");
    let pooler = setup.start_with_args(
        &config("auth_hba_file: @DIR@/hba.conf\n", ""),
        &["--workers", &WORKERS.to_string()],
    );
    pooler.wait_for_children(WORKERS, secs(5));
    let mut console = Raw::login(pooler.port(), ADMIN, ADMIN_PW, "pgbouncer");
    assert_set_refused(
        &mut console,
        "auth_type",
        "hba",
        &["auth_hba_file", "RELOAD"],
    );
    logins_still_work(&pooler, "after SET auth_type = hba was refused");

    // With rules loaded by RELOAD, the same SET is accepted and the rules apply.
    pooler.write_file("hba.conf", "host all all 127.0.0.1/32 password\n");
    let r = console.query("RELOAD");
    assert!(r.ok(), "{r:?}");
    let r = console.query("SET auth_type = hba");
    assert!(r.ok(), "{r:?}");
    logins_still_work(&pooler, "under auth_type hba");
}
