//! Named prepared statements under transaction pooling (max_prepared_statements): pooler-side names, sharing, LRU, pipelines, errors, and real drivers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::wire::Fields;
use common::*;
use postgres::types::{ToSql, Type};
use postgres::SimpleQueryMessage;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Fails at Execute, not at Bind: `random()` is volatile, so the planner cannot
/// fold the division by zero into a planning-time error.
const DIV_ZERO_SQL: &str = "SELECT 1 / (random() * 0)::int";

// ---------------------------------------------------------------------------
// Pooler set-up
// ---------------------------------------------------------------------------

/// One pooler: one worker (pools are per worker, so pool sizes are exact),
/// trust auth at the pooler (raw clients need no password exchange), the
/// server login as `app` with its plain password from the auth file.
struct Cfg {
    mode: &'static str,
    /// Extra `key: value` items of the `app` database entry (flow mapping).
    db: String,
    /// Extra global lines.
    extra: String,
}

impl Cfg {
    fn new(mode: &'static str, db: &str) -> Cfg {
        Cfg {
            mode,
            db: db.to_string(),
            extra: String::new(),
        }
    }

    fn tx(db: &str) -> Cfg {
        Cfg::new("transaction", db)
    }

    fn extra(mut self, extra: &str) -> Cfg {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    fn start(self) -> Pooler {
        let pg = shared_pg();
        let setup = PoolerSetup::new();
        setup.write_file(
            "userlist.txt",
            &format!("{}\n", userlist_entry(APP_USER, APP_PASSWORD)),
        );
        let db = if self.db.is_empty() {
            String::new()
        } else {
            format!(", {}", self.db)
        };
        // Failing fast beats hanging when a server is wrongly kept.
        let yaml = format!(
            "listen_addr: 127.0.0.1\n\
             listen_port: @PORT@\n\
             workers: 1\n\
             auth_type: trust\n\
             auth_file: @DIR@/userlist.txt\n\
             pool_mode: {}\n\
             query_wait_timeout: 20\n\
             {}\
             databases:\n  \
               app: {{ host: 127.0.0.1, port: {}, dbname: app{db} }}\n",
            self.mode,
            self.extra,
            pg.port(),
        );
        setup.start(&yaml)
    }
}

fn connect(pooler: &Pooler) -> postgres::Client {
    pooler.connect(APP_USER, "", APP_DB)
}

/// The rows (text columns) of a simple query.
fn simple_rows(c: &mut postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

fn simple_value(c: &mut postgres::Client, sql: &str) -> String {
    let rows = simple_rows(c, sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().expect("NULL")
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    simple_value(c, "SELECT pg_backend_pid()")
        .parse()
        .expect("pid")
}

/// What the server a query lands on has prepared.
#[derive(Debug)]
struct ServerStmts {
    pid: i32,
    /// (name, statement text), by name.
    stmts: Vec<(String, String)>,
}

impl ServerStmts {
    fn with_text(&self, text: &str) -> usize {
        self.stmts.iter().filter(|(_, s)| s == text).count()
    }

    /// Every name is the pooler's, none a client's.
    fn assert_pooler_names(&self, what: &str) {
        for (name, text) in &self.stmts {
            assert!(
                name.starts_with("PGBS_"),
                "{what}: the server holds {name:?} ({text:?}), not a pooler name: {self:?}"
            );
        }
    }
}

/// One simple query (so one server, even outside a transaction): the backend
/// pid and its pg_prepared_statements.
const STMTS_SQL: &str = "SELECT pg_backend_pid()::text, p.name, p.statement \
     FROM (SELECT 1) d LEFT JOIN pg_prepared_statements p ON true ORDER BY p.name";

fn to_server_stmts(rows: Vec<Vec<Option<String>>>) -> ServerStmts {
    let pid = rows
        .first()
        .and_then(|r| r[0].as_deref())
        .expect("a pid")
        .parse()
        .expect("pid");
    let stmts = rows
        .into_iter()
        .filter_map(|r| Some((r[1].clone()?, r[2].clone().unwrap_or_default())))
        .collect();
    ServerStmts { pid, stmts }
}

fn server_stmts(c: &mut postgres::Client) -> ServerStmts {
    to_server_stmts(simple_rows(c, STMTS_SQL))
}

fn pid_alive(admin: &mut postgres::Client, pid: i32) -> bool {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
        > 0
}

/// With pool_size 2 and no other client busy: two clients hold both servers
/// in open transactions; the one that is *not* on `avoid` commits, so the next
/// transaction of any other client lands on a server other than `avoid`.
/// Returns the holder still sitting on `avoid` (commit it when done).
fn occupy(pooler: &Pooler, avoid: i32) -> postgres::Client {
    let mut h1 = connect(pooler);
    let mut h2 = connect(pooler);
    h1.simple_query("BEGIN").unwrap();
    let p1 = backend_pid(&mut h1);
    h2.simple_query("BEGIN").unwrap();
    let p2 = backend_pid(&mut h2);
    assert_ne!(p1, p2, "two open transactions share a server");
    assert!(
        p1 == avoid || p2 == avoid,
        "server {avoid} is not one of the pool's two ({p1}, {p2})"
    );
    let (mut free, keep) = if p1 == avoid { (h2, h1) } else { (h1, h2) };
    free.simple_query("COMMIT").unwrap();
    keep
}

/// A small xorshift generator: varied values without another dependency.
struct Rng(u64);

impl Rng {
    fn seeded(k: u64) -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((t ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn int(&mut self) -> i32 {
        self.below(2_000_000) as i32 - 1_000_000
    }
}

// ---------------------------------------------------------------------------
// Raw protocol client (for exact message sequences)
// ---------------------------------------------------------------------------

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn parse_msg(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    msg(b'P', &b)
}

/// Bind with text parameters and text results.
fn bind_msg(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for v in params {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

fn describe_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}

fn close_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'C', &b)
}

fn execute_msg() -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}

fn sync_msg() -> Vec<u8> {
    msg(b'S', &[])
}

fn flush_msg() -> Vec<u8> {
    msg(b'H', &[])
}

/// Bind (unnamed portal) + Execute + Sync of statement `stmt`.
fn run_msgs(stmt: &str, params: &[&str]) -> Vec<u8> {
    [bind_msg("", stmt, params), execute_msg(), sync_msg()].concat()
}

/// Parse + Bind + Execute + Sync.
fn parse_run_msgs(stmt: &str, sql: &str, params: &[&str]) -> Vec<u8> {
    [parse_msg(stmt, sql, &[]), run_msgs(stmt, params)].concat()
}

/// The text columns of a DataRow body.
fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            cols.push(None);
        } else {
            let len = len as usize;
            cols.push(Some(
                String::from_utf8_lossy(&body[at..at + len]).into_owned(),
            ));
            at += len;
        }
    }
    cols
}

/// Messages answering some requests, ParameterStatus and notices left out.
#[derive(Debug, Default)]
struct Reply {
    msgs: Vec<(u8, Vec<u8>)>,
}

impl Reply {
    /// Message types, space separated: `"1 2 D C Z"`.
    fn tags(&self) -> String {
        self.msgs
            .iter()
            .map(|(t, _)| (*t as char).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// First column of every DataRow, in order.
    fn values(&self) -> Vec<String> {
        self.msgs
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| data_row(b)[0].clone().unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    fn errors(&self) -> Vec<Fields> {
        self.msgs
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| Fields::parse(b))
            .collect()
    }

    /// Status bytes of the ReadyForQuery messages.
    fn statuses(&self) -> String {
        self.msgs
            .iter()
            .filter(|(t, _)| *t == b'Z')
            .map(|(_, b)| b[0] as char)
            .collect()
    }
}

/// A hand-driven protocol connection (trust at the pooler / PostgreSQL).
struct Raw {
    stream: TcpStream,
}

impl Raw {
    /// Logs in as `app` through the pooler.
    fn pooled(pooler: &Pooler) -> Raw {
        Raw::connect(pooler.port(), APP_USER)
    }

    /// Logs in straight to PostgreSQL as the trust role: what PostgreSQL
    /// itself answers to the same bytes.
    fn direct() -> Raw {
        Raw::connect(shared_pg().port(), TRUST_USER)
    }

    fn connect(port: u16, user: &str) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut raw = Raw { stream };
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", APP_DB)] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        raw.send(&packet);
        loop {
            let (tag, body) = raw.recv();
            match tag {
                b'R' => assert_eq!(body, [0, 0, 0, 0], "expected AuthenticationOk (trust)"),
                b'S' | b'K' | b'N' => {}
                b'Z' => return raw,
                b'E' => panic!("login failed: {:?}", Fields::parse(&body)),
                other => panic!("unexpected message {:?} during login", other as char),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn recv(&mut self) -> (u8, Vec<u8>) {
        self.try_recv()
            .unwrap_or_else(|e| panic!("reading a message: {e} (timed out or closed?)"))
    }

    fn try_recv(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap());
        assert!(len >= 4, "bad length {len}");
        let mut body = vec![0u8; len as usize - 4];
        self.stream.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    /// The next message that is not a ParameterStatus or notice.
    fn next(&mut self) -> (u8, Vec<u8>) {
        loop {
            let m = self.recv();
            if !matches!(m.0, b'S' | b'N') {
                return m;
            }
        }
    }

    /// Exactly `n` messages (ParameterStatus and notices skipped).
    fn take(&mut self, n: usize) -> Reply {
        Reply {
            msgs: (0..n).map(|_| self.next()).collect(),
        }
    }

    /// Everything up to and including the `n`th ReadyForQuery.
    fn until_ready_n(&mut self, n: usize) -> Reply {
        let mut reply = Reply::default();
        let mut seen = 0;
        while seen < n {
            let m = self.next();
            seen += usize::from(m.0 == b'Z');
            reply.msgs.push(m);
        }
        reply
    }

    /// Sends `bytes` holding `syncs` Sync/Query messages; their replies.
    fn exchange(&mut self, bytes: &[u8], syncs: usize) -> Reply {
        self.send(bytes);
        self.until_ready_n(syncs)
    }

    fn simple(&mut self, sql: &str) -> Reply {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        self.exchange(&msg(b'Q', &b), 1)
    }

    /// A simple query that must succeed with exactly one value.
    fn value(&mut self, sql: &str) -> String {
        let r = self.simple(sql);
        assert!(r.errors().is_empty(), "{sql}: {:?}", r.errors());
        let v = r.values();
        assert_eq!(v.len(), 1, "{sql}: {r:?}");
        v[0].clone()
    }

    fn server_stmts(&mut self) -> ServerStmts {
        let r = self.simple(STMTS_SQL);
        assert!(r.errors().is_empty(), "{:?}", r.errors());
        to_server_stmts(
            r.msgs
                .iter()
                .filter(|(t, _)| *t == b'D')
                .map(|(_, b)| data_row(b))
                .collect(),
        )
    }

    /// Every message until the peer closes.
    fn until_eof(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        while let Ok(m) = self.try_recv() {
            got.push(m);
        }
        got
    }
}

/// The same bytes, straight to PostgreSQL: the reference answer.
fn direct_tags(setup: &[(&[u8], usize)], bytes: &[u8], syncs: usize) -> String {
    let mut raw = Raw::direct();
    for (b, n) in setup {
        raw.exchange(b, *n);
    }
    raw.exchange(bytes, syncs).tags()
}

// ---------------------------------------------------------------------------
// 1. Many tokio-postgres clients, two servers
// ---------------------------------------------------------------------------

/// A query parameter as tokio-postgres takes it.
type Param = dyn ToSql + Sync;

async fn tokio_client_work(
    k: u64,
    c: &tokio_postgres::Client,
) -> Result<(u32, Vec<String>), tokio_postgres::Error> {
    let mut rng = Rng::seeded(k);
    let mut bad = Vec::new();
    let mut done = 0;
    let add = c.prepare("SELECT $1::int + $2::int").await?;
    let cat = c.prepare("SELECT $1::text || 'x'").await?;
    let row = c.prepare("SELECT v FROM prep_t1 WHERE id = $1").await?;
    for i in 0..100 {
        let (a, b) = (rng.int(), rng.int());
        let s = format!("c{k}-{i}-{}", rng.next());
        let id = 1 + rng.below(1000) as i32;
        // Three requests in flight at once on one connection (pipelined).
        let p1: [&Param; 2] = [&a, &b];
        let p2: [&Param; 1] = [&s];
        let p3: [&Param; 1] = [&id];
        let (r1, r2, r3) = tokio::join!(
            c.query_one(&add, &p1),
            c.query_one(&cat, &p2),
            c.query_one(&row, &p3),
        );
        let (r1, r2, r3): (i32, String, String) = (r1?.get(0), r2?.get(0), r3?.get(0));
        if r1 != a + b {
            bad.push(format!("client {k} #{i}: {a} + {b} = {r1}?"));
        }
        if r2 != format!("{s}x") {
            bad.push(format!("client {k} #{i}: {s:?} || 'x' = {r2:?}?"));
        }
        if r3 != format!("v{id}") {
            bad.push(format!("client {k} #{i}: row {id} = {r3:?}?"));
        }
        done += 3;
        if i % 10 == 0 {
            // A fresh statement name each time (s<N>), closed when dropped.
            let rows = c.query("SELECT $1::int * 3", &[&(a / 4)]).await?;
            let got: i32 = rows[0].get(0);
            if got != a / 4 * 3 {
                bad.push(format!("client {k} #{i}: {} * 3 = {got}?", a / 4));
            }
            done += 1;
        }
    }
    Ok((done, bad))
}

#[tokio::test]
async fn tokio_six_clients_share_prepared_statements_over_two_servers() {
    let pg = shared_pg();
    pg.admin_sql_in(
        APP_DB,
        "DROP TABLE IF EXISTS prep_t1;
         CREATE TABLE prep_t1 (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO prep_t1 SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         GRANT SELECT ON prep_t1 TO PUBLIC;",
    );
    let pooler = Cfg::tx("pool_size: 2").start();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(pooler.connect_async(APP_USER, "", APP_DB).await.unwrap());
    }
    let results = futures_util::future::join_all(
        clients
            .iter()
            .enumerate()
            .map(|(k, c)| tokio_client_work(k as u64, c)),
    )
    .await;
    for (k, r) in results.into_iter().enumerate() {
        let (done, bad) = r.unwrap_or_else(|e| {
            panic!(
                "client {k} failed: {e:?}\n--- pooler log ---\n{}",
                pooler.log()
            )
        });
        assert!(bad.is_empty(), "client {k} got wrong answers: {bad:?}");
        assert_eq!(done, 310, "client {k}");
    }
    // Whatever server each client lands on holds only pooler names.
    let mut pids = std::collections::BTreeSet::new();
    for c in &clients {
        let msgs = c.simple_query(STMTS_SQL).await.unwrap();
        let rows = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..3).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect();
        let s = to_server_stmts(rows);
        s.assert_pooler_names("after the run");
        assert!(
            s.with_text("SELECT $1::int + $2::int") <= 1,
            "the same statement twice on one server: {s:?}"
        );
        pids.insert(s.pid);
    }
    assert!(pids.len() <= 2, "more servers than pool_size: {pids:?}");
}

// ---------------------------------------------------------------------------
// 2. A statement follows its client to another server
// ---------------------------------------------------------------------------

#[test]
fn statement_is_prepared_again_on_the_clients_next_server() {
    const SQL: &str = "SELECT $1::int * 7, 'moved'::text";
    let pooler = Cfg::tx("pool_size: 2").start();
    let mut a = connect(&pooler);
    let stmt = a.prepare(SQL).unwrap();

    a.simple_query("BEGIN").unwrap();
    let row = a.query_one(&stmt, &[&6i32]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let first = server_stmts(&mut a);
    a.simple_query("COMMIT").unwrap();
    first.assert_pooler_names("first server");
    assert_eq!(first.with_text(SQL), 1, "{first:?}");

    // Both servers busy, then the one A used stays busy: A must move.
    let mut keep = occupy(&pooler, first.pid);
    a.simple_query("BEGIN").unwrap();
    let row = a.query_one(&stmt, &[&9i32]).unwrap_or_else(|e| {
        panic!(
            "executing on the new server: {e:?}\n--- log ---\n{}",
            pooler.log()
        )
    });
    assert_eq!(row.get::<_, i32>(0), 63);
    assert_eq!(row.get::<_, String>(1), "moved");
    let second = server_stmts(&mut a);
    a.simple_query("COMMIT").unwrap();
    keep.simple_query("COMMIT").unwrap();
    assert_ne!(second.pid, first.pid, "A did not move to the other server");
    second.assert_pooler_names("second server");
    assert_eq!(
        second.with_text(SQL),
        1,
        "the pooler did not prepare it on the new server: {second:?}"
    );
    // And back again: still fine.
    for n in 0..10i32 {
        let row = a.query_one(&stmt, &[&n]).unwrap();
        assert_eq!(row.get::<_, i32>(0), n * 7);
    }
}

#[test]
fn statement_survives_server_replacement_by_server_lifetime() {
    const SQL: &str = "SELECT $1::text || '-lifetime'";
    let pooler = Cfg::tx("pool_size: 1")
        .extra("server_lifetime: 0.3")
        .start();
    let mut admin = shared_pg().admin_client();
    let mut a = connect(&pooler);
    let stmt = a.prepare(SQL).unwrap();
    a.simple_query("BEGIN").unwrap();
    assert_eq!(
        a.query_one(&stmt, &[&"one"]).unwrap().get::<_, String>(0),
        "one-lifetime"
    );
    let first = server_stmts(&mut a);
    a.simple_query("COMMIT").unwrap();
    assert_eq!(first.with_text(SQL), 1, "{first:?}");

    assert!(
        wait_until(secs(5), || !pid_alive(&mut admin, first.pid)),
        "server {} was not closed after server_lifetime\n{}",
        first.pid,
        pooler.log()
    );
    a.simple_query("BEGIN").unwrap();
    let got = a
        .query_one(&stmt, &[&"two"])
        .unwrap_or_else(|e| panic!("after the server was replaced: {e:?}\n{}", pooler.log()));
    assert_eq!(got.get::<_, String>(0), "two-lifetime");
    let second = server_stmts(&mut a);
    a.simple_query("COMMIT").unwrap();
    assert_ne!(second.pid, first.pid);
    second.assert_pooler_names("replacement server");
    assert_eq!(second.with_text(SQL), 1, "{second:?}");
}

// ---------------------------------------------------------------------------
// 3. Clients share one server-side statement per distinct Parse
// ---------------------------------------------------------------------------

#[test]
fn clients_with_the_same_query_share_one_server_statement() {
    const SQL: &str = "SELECT $1::int + 1000 AS shared";
    let pooler = Cfg::tx("pool_size: 1").start();
    let mut c1 = connect(&pooler);
    let mut c2 = connect(&pooler);
    let s1 = c1.prepare(SQL).unwrap();
    let s2 = c2.prepare(SQL).unwrap();
    assert_eq!(c1.query_one(&s1, &[&1i32]).unwrap().get::<_, i32>(0), 1001);
    assert_eq!(c2.query_one(&s2, &[&2i32]).unwrap().get::<_, i32>(0), 1002);
    // The same client preparing it again under a second name: still one.
    let s1b = c1.prepare(SQL).unwrap();
    assert_eq!(c1.query_one(&s1b, &[&3i32]).unwrap().get::<_, i32>(0), 1003);
    let s = server_stmts(&mut c1);
    s.assert_pooler_names("shared");
    assert_eq!(s.with_text(SQL), 1, "expected one server statement: {s:?}");

    // Declared parameter types make it a different statement.
    let mut c3 = connect(&pooler);
    let s3 = c3.prepare_typed(SQL, &[Type::INT4]).unwrap();
    assert_eq!(c3.query_one(&s3, &[&4i32]).unwrap().get::<_, i32>(0), 1004);
    let s = server_stmts(&mut c2);
    assert_eq!(
        s.with_text(SQL),
        2,
        "typed and untyped Parse are distinct: {s:?}"
    );
    assert_eq!(s.pid, server_stmts(&mut c3).pid, "pool_size 1: one server");
}

/// SHOW STATS and SHOW TOTALS count what PgBouncer 1.24+ counts: each client Parse of a
/// named statement, each Parse sent to a server for one, each Bind of one, each login.
#[test]
fn show_stats_counts_parses_binds_and_logins() {
    const SQL: &str = "SELECT $1::int + 2000 AS counted";
    let pooler = Cfg::tx("pool_size: 1")
        .extra(&format!("admin_users: [{APP_USER}]"))
        .start();
    let mut c1 = connect(&pooler);
    let mut c2 = connect(&pooler);
    // Two client Parses of one text: one server Parse (pool_size 1: one server).
    let s1 = c1.prepare(SQL).unwrap();
    let s2 = c2.prepare(SQL).unwrap();
    for i in 0..3 {
        c1.query_one(&s1, &[&i]).unwrap();
    }
    c2.query_one(&s2, &[&7i32]).unwrap();
    let mut admin = pooler.connect(APP_USER, "", "pgbouncer");
    let want = [
        ("total_client_parse_count", "2"),
        ("total_server_parse_count", "1"),
        ("total_bind_count", "4"),
        // c1, c2 and the console login are not in app's row: two.
        ("total_client_login_count", "2"),
    ];
    let mut last = Vec::new();
    let counted = wait_until(Duration::from_secs(10), || {
        let rows = admin.simple_query("SHOW STATS").unwrap();
        last = rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) if r.get("database") == Some("app") => Some(
                    want.iter()
                        .map(|(col, _)| (*col, r.get(*col).unwrap_or("").to_string()))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .next()
            .unwrap_or_default();
        want.iter()
            .all(|(col, v)| last.iter().any(|(c, x)| c == col && x == v))
    });
    assert!(counted, "SHOW STATS app row: {last:?}, want {want:?}");
    let totals = simple_rows(&mut admin, "SHOW TOTALS");
    let total = |name: &str| {
        (totals.iter())
            .find(|r| r[0].as_deref() == Some(name))
            .and_then(|r| r[1].clone())
    };
    assert_eq!(
        total("total_ps_bind_count").as_deref(),
        Some("4"),
        "{totals:?}"
    );
    assert_eq!(total("total_ps_client_parse_count").as_deref(), Some("2"));
}

// ---------------------------------------------------------------------------
// 4. At most max_prepared_statements per server
// ---------------------------------------------------------------------------

#[test]
fn server_keeps_at_most_max_prepared_statements() {
    let pooler = Cfg::tx("pool_size: 1")
        .extra("max_prepared_statements: 2")
        .start();
    let mut c = connect(&pooler);
    let mut rng = Rng::seeded(4);
    let stmts: Vec<_> = (1..=5)
        .map(|k| c.prepare(&format!("SELECT $1::int + {k} AS lru")).unwrap())
        .collect();
    let s = server_stmts(&mut c);
    assert!(s.stmts.len() <= 2, "after preparing five: {s:?}");
    let mut max_seen = s.stmts.len();
    for round in 0..3 {
        for (k, stmt) in stmts.iter().enumerate() {
            let x = rng.int();
            let got: i32 = c
                .query_one(stmt, &[&x])
                .unwrap_or_else(|e| panic!("round {round} stmt {k}: {e:?}\n{}", pooler.log()))
                .get(0);
            assert_eq!(got, x + k as i32 + 1, "round {round} stmt {k}");
            let s = server_stmts(&mut c);
            s.assert_pooler_names("lru");
            assert!(
                s.stmts.len() <= 2,
                "round {round} stmt {k}: more than 2 kept: {s:?}"
            );
            let text = format!("SELECT $1::int + {} AS lru", k + 1);
            assert_eq!(
                s.with_text(&text),
                1,
                "the statement just run is not on the server: {s:?}"
            );
            max_seen = max_seen.max(s.stmts.len());
        }
    }
    assert_eq!(max_seen, 2, "the server should fill up to the limit");
}

// ---------------------------------------------------------------------------
// 5. Exact answers to a raw pipeline; Close
// ---------------------------------------------------------------------------

#[test]
fn raw_pipeline_gets_exact_answers_when_the_pooler_answers_parse() {
    const A: &str = "SELECT $1::int";
    const B: &str = "SELECT $1::int * 10";
    let pooler = Cfg::tx("pool_size: 1").start();
    let mut c1 = Raw::pooled(&pooler);
    let r = c1.exchange(&[parse_msg("a", A, &[]), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "1 Z", "{r:?}");

    // "a" is on the only server already: the pooler answers its Parse itself.
    let mut c2 = Raw::pooled(&pooler);
    let pipeline = [
        parse_run_msgs("a", A, &["7"]),
        parse_run_msgs("b", B, &["8"]),
    ]
    .concat();
    let r = c2.exchange(&pipeline, 2);
    assert_eq!(r.tags(), "1 2 D C Z 1 2 D C Z", "{r:?}\n{}", pooler.log());
    assert_eq!(r.values(), ["7", "80"]);
    assert_eq!(r.statuses(), "II");
    assert_eq!(
        direct_tags(&[], &pipeline, 2),
        r.tags(),
        "PostgreSQL itself"
    );
    let s = c2.server_stmts();
    s.assert_pooler_names("pipeline");
    assert_eq!((s.with_text(A), s.with_text(B)), (1, 1), "{s:?}");

    // Close is answered by the pooler; the server keeps the statement for the other
    // client.
    let r = c2.exchange(&[close_msg(b'S', "a"), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "3 Z", "{r:?}");
    let r = c1.exchange(&run_msgs("a", &["5"]), 1);
    assert_eq!(r.tags(), "2 D C Z", "{r:?}");
    assert_eq!(r.values(), ["5"]);
    // c2's "b" is untouched by closing "a".
    let r = c2.exchange(&run_msgs("b", &["3"]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("2 D C Z", vec!["30".into()])
    );
    // Closing a name never prepared: CloseComplete, as PostgreSQL answers.
    let r = c2.exchange(&[close_msg(b'S', "never"), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "3 Z", "{r:?}");
    // Re-preparing a closed name works.
    let r = c2.exchange(&parse_run_msgs("a", A, &["11"]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["11".into()])
    );
    // A Bind after Close: the client's name is gone. PostgreSQL would answer 26000;
    // PgBouncer (and so pgbouncers) closes the client.
    let r = c2.exchange(&[close_msg(b'S', "a"), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "3 Z", "{r:?}");
    c2.send(&run_msgs("a", &["1"]));
    assert_disconnected(&mut c2, "prepared statement did not exist");
}

// ---------------------------------------------------------------------------
// 6. Errors
// ---------------------------------------------------------------------------

#[test]
fn error_mid_pipeline_keeps_answers_in_order() {
    let pooler = Cfg::tx("pool_size: 1").start();
    let pipeline = [
        parse_run_msgs("x", DIV_ZERO_SQL, &[]),
        parse_run_msgs("y", "SELECT 2", &[]),
    ]
    .concat();
    let expected = "1 2 E Z 1 2 D C Z";
    assert_eq!(
        direct_tags(&[], &pipeline, 2),
        expected,
        "PostgreSQL itself"
    );
    for who in [
        "first client (server Parse)",
        "second client (pooler Parse)",
    ] {
        let mut c = Raw::pooled(&pooler);
        let r = c.exchange(&pipeline, 2);
        assert_eq!(r.tags(), expected, "{who}: {r:?}\n{}", pooler.log());
        assert_eq!(r.errors()[0].code(), "22012", "{who}");
        assert_eq!(r.values(), ["2"], "{who}");
        // Both names work afterwards.
        let r = c.exchange(&[run_msgs("x", &[]), run_msgs("y", &[])].concat(), 2);
        assert_eq!(r.tags(), "2 E Z 2 D C Z", "{who}: {r:?}");
        assert_eq!(c.value("SELECT 'usable'"), "usable");
    }
    // The pooler's own ParseComplete for a Parse that PostgreSQL would skip
    // (after the error, before the Sync) must not be sent.
    // ("z" is a new name for a statement the server has: the pooler would answer it.)
    let skipped = [
        bind_msg("", "x", &[]),
        execute_msg(),
        parse_run_msgs("z", "SELECT 2", &[]),
    ]
    .concat();
    let setup = [(&pipeline[..], 2)];
    assert_eq!(
        direct_tags(&setup, &skipped, 1),
        "2 E Z",
        "PostgreSQL itself"
    );
    let mut c = Raw::pooled(&pooler);
    c.exchange(&pipeline, 2);
    let r = c.exchange(&skipped, 1);
    assert_eq!(r.tags(), "2 E Z", "{r:?}\n{}", pooler.log());
    assert_eq!(c.value("SELECT 'usable'"), "usable");
    // PostgreSQL made no "z", so the name is free (not "already in use").
    let r = c.exchange(&parse_run_msgs("z", "SELECT 2", &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["2".into()]),
        "{r:?}"
    );
}

/// A client (pool_size 2) prepares a query on a table; the table is dropped;
/// the client runs the statement in a transaction on the *other* server, so
/// the pooler's hidden Parse fails there. Returns the pooler, the client (idle
/// after ROLLBACK), the holder of the first server (in a transaction) and the
/// pid of the second server.
fn hidden_parse_failure(table: &str) -> (Pooler, Raw, postgres::Client, i32) {
    let pg = shared_pg();
    pg.admin_sql_in(
        APP_DB,
        &format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (n int); INSERT INTO {table} VALUES (1), (2);
             GRANT ALL ON {table} TO PUBLIC;"
        ),
    );
    let sql = format!("SELECT count(*) FROM {table}");
    let pooler = Cfg::tx("pool_size: 2").start();
    let mut a = Raw::pooled(&pooler);
    assert_eq!(a.simple("BEGIN").statuses(), "T");
    let r = a.exchange(&parse_run_msgs("q", &sql, &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["2".into()])
    );
    let first: i32 = a.value("SELECT pg_backend_pid()").parse().unwrap();
    assert_eq!(a.simple("COMMIT").statuses(), "I");

    pg.admin_sql_in(APP_DB, &format!("DROP TABLE {table}"));
    let keep = occupy(&pooler, first);
    assert_eq!(a.simple("BEGIN").statuses(), "T");
    let second: i32 = a.value("SELECT pg_backend_pid()").parse().unwrap();
    assert_ne!(second, first, "A should be on the other server");
    let r = a.exchange(&run_msgs("q", &[]), 1);
    assert_eq!(r.tags(), "E Z", "{r:?}\n{}", pooler.log());
    assert_eq!(r.errors()[0].code(), "42P01", "{:?}", r.errors());
    assert_eq!(r.statuses(), "E", "inside the failed transaction");
    assert_eq!(a.simple("ROLLBACK").statuses(), "I");
    (pooler, a, keep, second)
}

#[test]
fn failed_hidden_parse_on_a_new_server_is_an_error_and_the_client_goes_on() {
    let (pooler, mut a, mut keep, _) = hidden_parse_failure("prep_drop6");
    assert_eq!(a.value("SELECT 'still usable'"), "still usable");
    let r = a.exchange(&parse_run_msgs("other", "SELECT $1::int", &["3"]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["3".into()]),
        "{r:?}\n{}",
        pooler.log()
    );
    keep.simple_query("COMMIT").unwrap();
    // The other clients were not disturbed.
    assert_eq!(simple_value(&mut keep, "SELECT 'holder ok'"), "holder ok");
}

#[test]
fn failed_hidden_parse_is_not_remembered_on_that_server() {
    let (pooler, mut a, mut keep, second) = hidden_parse_failure("prep_drop6b");
    // Once the table is back, the statement must work on that server too.
    shared_pg().admin_sql_in(
        APP_DB,
        "CREATE TABLE prep_drop6b (n int); INSERT INTO prep_drop6b VALUES (7);
         GRANT ALL ON prep_drop6b TO PUBLIC;",
    );
    assert_eq!(a.simple("BEGIN").statuses(), "T");
    let third: i32 = a.value("SELECT pg_backend_pid()").parse().unwrap();
    assert_eq!(third, second, "the holder still sits on the first server");
    let r = a.exchange(&run_msgs("q", &[]), 1);
    assert_eq!(a.simple("COMMIT").statuses(), "I");
    keep.simple_query("COMMIT").unwrap();
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("2 D C Z", vec!["1".into()]),
        "after the failed hidden Parse: {:?}\n{}",
        r.errors(),
        pooler.log()
    );
}

#[test]
fn failed_parse_is_not_remembered_as_prepared() {
    let pg = shared_pg();
    pg.admin_sql_in(APP_DB, "DROP TABLE IF EXISTS prep_later6");
    const SQL: &str = "SELECT n FROM prep_later6";
    let pooler = Cfg::tx("pool_size: 1").start();
    let mut c1 = Raw::pooled(&pooler);
    let r = c1.exchange(&[parse_msg("s", SQL, &[]), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "E Z", "{r:?}");
    assert_eq!(r.errors()[0].code(), "42P01");

    pg.admin_sql_in(
        APP_DB,
        "CREATE TABLE prep_later6 (n int); INSERT INTO prep_later6 VALUES (6);
         GRANT ALL ON prep_later6 TO PUBLIC;",
    );
    // Another client, same text, same (only) server.
    let mut c2 = Raw::pooled(&pooler);
    let r = c2.exchange(&parse_run_msgs("s2", SQL, &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["6".into()]),
        "{:?}\n{}",
        r.errors(),
        pooler.log()
    );
    // The first client retrying its own Parse.
    let r = c1.exchange(&parse_run_msgs("s", SQL, &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["6".into()]),
        "{:?}",
        r.errors()
    );
}

#[test]
fn parse_skipped_after_an_error_is_not_remembered_as_prepared() {
    // Parse "y" comes after the failing Execute and before the Sync:
    // PostgreSQL skips it, so "y" does not exist afterwards.
    const Y: &str = "SELECT 'y6'::text";
    let pooler = Cfg::tx("pool_size: 1").start();
    let first = [
        parse_run_msgs("x", DIV_ZERO_SQL, &[])[..]
            .strip_suffix(&sync_msg()[..])
            .unwrap()
            .to_vec(),
        parse_run_msgs("y", Y, &[]),
    ]
    .concat();
    let retry = parse_run_msgs("y", Y, &[]);
    let mut direct = Raw::direct();
    let d1 = direct.exchange(&first, 1);
    let d2 = direct.exchange(&retry, 1);
    assert_eq!(
        (d1.tags().as_str(), d2.tags().as_str()),
        ("1 2 E Z", "1 2 D C Z"),
        "PostgreSQL itself"
    );

    let mut c = Raw::pooled(&pooler);
    let r = c.exchange(&first, 1);
    assert_eq!(r.tags(), "1 2 E Z", "{r:?}");
    let r = c.exchange(&retry, 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["y6".into()]),
        "re-Parse after the skipped one: {:?}\n{}",
        r.errors(),
        pooler.log()
    );
}

#[test]
fn hidden_parse_and_close_skipped_after_an_error_leave_statements_usable() {
    // With room for one statement per server, binding "y" after a failing
    // Execute makes the pooler close "x" and re-prepare "y" (hidden) where
    // PostgreSQL skips both. "y" must still work afterwards, as it does
    // straight on PostgreSQL.
    const Y: &str = "SELECT 'y7'::text";
    let pooler = Cfg::tx("pool_size: 1")
        .extra("max_prepared_statements: 1")
        .start();
    let prep_y = [parse_msg("y", Y, &[]), sync_msg()].concat();
    let failing = [
        parse_msg("x", DIV_ZERO_SQL, &[]),
        bind_msg("", "x", &[]),
        execute_msg(),
        bind_msg("", "y", &[]),
        execute_msg(),
        sync_msg(),
    ]
    .concat();
    let then = run_msgs("y", &[]);
    let mut direct = Raw::direct();
    direct.exchange(&prep_y, 1);
    let d1 = direct.exchange(&failing, 1).tags();
    let d2 = direct.exchange(&then, 1).tags();
    assert_eq!((d1.as_str(), d2.as_str()), ("1 2 E Z", "2 D C Z"));

    let mut c = Raw::pooled(&pooler);
    assert_eq!(c.exchange(&prep_y, 1).tags(), "1 Z");
    let r = c.exchange(&failing, 1);
    assert_eq!(r.tags(), "1 2 E Z", "{r:?}");
    let r = c.exchange(&then, 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("2 D C Z", vec!["y7".into()]),
        "{:?}\n{}",
        r.errors(),
        pooler.log()
    );
    // And "x" again, on a server where PostgreSQL may still hold it.
    let r = c.exchange(&run_msgs("x", &[]), 1);
    assert_eq!(r.tags(), "2 E Z", "{r:?}");
    assert_eq!(r.errors()[0].code(), "22012", "{:?}", r.errors());
}

#[test]
fn eviction_skipped_after_an_error_does_not_break_the_evicted_statement() {
    // Room for one statement per server: Parse "y" after a failing Execute
    // makes the pooler close "x" to make room, but PostgreSQL skips that
    // Close (and the Parse), so "x" is still there. Using "x" again must not
    // trip over the leftover ("prepared statement ... already exists").
    let pooler = Cfg::tx("pool_size: 1")
        .extra("max_prepared_statements: 1")
        .start();
    let prep_x = [parse_msg("x", DIV_ZERO_SQL, &[]), sync_msg()].concat();
    let failing = [
        bind_msg("", "x", &[]),
        execute_msg(),
        parse_msg("y", "SELECT 'y8'::text", &[]),
        sync_msg(),
    ]
    .concat();
    let then = run_msgs("x", &[]);
    let mut direct = Raw::direct();
    direct.exchange(&prep_x, 1);
    let d1 = direct.exchange(&failing, 1).tags();
    let d2 = direct.exchange(&then, 1);
    assert_eq!((d1.as_str(), d2.tags().as_str()), ("2 E Z", "2 E Z"));
    assert_eq!(d2.errors()[0].code(), "22012");

    let mut c = Raw::pooled(&pooler);
    assert_eq!(c.exchange(&prep_x, 1).tags(), "1 Z");
    let r = c.exchange(&failing, 1);
    assert_eq!(r.tags(), "2 E Z", "{r:?}");
    let r = c.exchange(&then, 1);
    assert_eq!(
        (r.tags().as_str(), r.errors()[0].code()),
        ("2 E Z", "22012"),
        "{:?}\n{}",
        r.errors(),
        pooler.log()
    );
}

// ---------------------------------------------------------------------------
// 7. Parse/Describe/Flush (asyncpg's pattern), with contention
// ---------------------------------------------------------------------------

#[test]
fn parse_describe_flush_then_bind_execute_sync_with_contention() {
    const SQL: &str = "SELECT $1::int + 1 AS flushed";
    let pooler = Cfg::tx("pool_size: 1").start();
    let mut other = connect(&pooler);
    let other_pid = backend_pid(&mut other);

    for round in ["server Parse", "pooler Parse"] {
        let mut c = Raw::pooled(&pooler);
        c.stream.set_read_timeout(Some(secs(5))).unwrap();
        let name = format!("ap_{}", round.len());
        c.send(
            &[
                parse_msg(&name, SQL, &[]),
                describe_msg(b'S', &name),
                flush_msg(),
            ]
            .concat(),
        );
        let r = c.take(3);
        assert_eq!(r.tags(), "1 t T", "{round}: {r:?}\n{}", pooler.log());
        assert_eq!(&r.msgs[1].1[..2], &1i16.to_be_bytes(), "one parameter");

        // The server stays with c until its Sync.
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            let v = simple_value(&mut other, "SELECT pg_backend_pid()");
            let _ = tx.send(v);
            other
        });
        assert!(
            rx.recv_timeout(ms(400)).is_err(),
            "{round}: another client ran between Flush and Sync"
        );
        let r = c.exchange(&run_msgs(&name, &["41"]), 1);
        assert_eq!(
            (r.tags().as_str(), r.values()),
            ("2 D C Z", vec!["42".into()]),
            "{round}: {r:?}"
        );
        let got = rx
            .recv_timeout(secs(5))
            .expect("the other client did not run after the Sync");
        assert_eq!(got, other_pid.to_string());
        other = handle.join().unwrap();
    }

    // A Parse the pooler answers, then only a Flush: the answer must not
    // wait for a Sync. Same for Close.
    let mut c = Raw::pooled(&pooler);
    c.stream.set_read_timeout(Some(secs(5))).unwrap();
    c.send(&[parse_msg("p3", SQL, &[]), flush_msg()].concat());
    let (tag, _) = c.try_recv().unwrap_or_else(|e| {
        panic!(
            "no ParseComplete after Parse + Flush: {e}\n{}",
            pooler.log()
        )
    });
    assert_eq!(tag as char, '1');
    c.send(&[close_msg(b'S', "p3"), flush_msg()].concat());
    let (tag, _) = c.try_recv().unwrap_or_else(|e| {
        panic!(
            "no CloseComplete after Close + Flush: {e}\n{}",
            pooler.log()
        )
    });
    assert_eq!(tag as char, '3');
    let r = c.exchange(&sync_msg(), 1);
    assert_eq!(r.tags(), "Z");
    assert_eq!(c.value("SELECT 'after flushes'"), "after flushes");
}

// ---------------------------------------------------------------------------
// 8. max_prepared_statements: 0, names in use or unknown, a lower limit on reload, session mode
// ---------------------------------------------------------------------------

#[test]
fn zero_max_prepared_statements_passes_names_through_as_pgbouncer_does() {
    let pooler = Cfg::tx("pool_size: 1")
        .extra("max_prepared_statements: 0")
        .start();
    let mut c = Raw::pooled(&pooler);
    let r = c.exchange(
        &[parse_msg("my_tx_stmt", "SELECT 9", &[]), sync_msg()].concat(),
        1,
    );
    assert_eq!(r.tags(), "1 Z", "{:?}", r.errors());
    // The server holds the client's own name: nothing was rewritten.
    let s = c.server_stmts();
    let names: Vec<&str> = s.stmts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["my_tx_stmt"], "{s:?}");
    // One server in the pool, so the statement is still there for the next transaction.
    let r = c.exchange(&run_msgs("my_tx_stmt", &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("2 D C Z", vec!["9".into()])
    );
    let r = c.exchange(&[close_msg(b'S', "my_tx_stmt"), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "3 Z");
    assert!(
        c.server_stmts().stmts.is_empty(),
        "Close reached the server"
    );
}

/// One FATAL ErrorResponse and the end of the connection: PgBouncer's answer.
fn assert_disconnected(c: &mut Raw, message: &str) {
    let got = c.until_eof();
    let tags: String = got.iter().map(|(t, _)| *t as char).collect();
    assert_eq!(tags, "E", "one FATAL, then the close: {got:?}");
    let e = Fields::parse(&got[0].1);
    assert_eq!(
        (e.severity(), e.code(), e.message()),
        ("FATAL", "08P01", message)
    );
}

#[test]
fn parse_of_a_name_in_use_closes_the_client_and_a_closed_or_failed_name_is_free() {
    let pooler = Cfg::tx("pool_size: 1").start();
    let mut c = Raw::pooled(&pooler);
    // Closed: the name is free again.
    let r = c.exchange(
        &[parse_msg("again", "SELECT 1", &[]), sync_msg()].concat(),
        1,
    );
    assert_eq!(r.tags(), "1 Z");
    let r = c.exchange(&[close_msg(b'S', "again"), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "3 Z");
    let r = c.exchange(&parse_run_msgs("again", "SELECT 2", &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["2".into()])
    );
    // Failed: PostgreSQL made no statement, so the name is free too.
    let r = c.exchange(&[parse_msg("bad", "SELEC 3", &[]), sync_msg()].concat(), 1);
    assert_eq!(r.tags(), "E Z", "{r:?}");
    let r = c.exchange(&parse_run_msgs("bad", "SELECT 3", &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["3".into()]),
        "{:?}",
        r.errors()
    );
    // In use: PgBouncer closes the client (PostgreSQL would answer 42P05 and go on).
    c.send(&[parse_msg("again", "SELECT 4", &[]), sync_msg()].concat());
    assert_disconnected(&mut c, "prepared statement name is already in use");
    // The server and other clients go on.
    let mut other = Raw::pooled(&pooler);
    let r = other.exchange(&parse_run_msgs("again", "SELECT 5", &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 D C Z", vec!["5".into()])
    );
}

#[test]
fn describe_or_bind_of_an_unknown_statement_closes_the_client() {
    let pooler = Cfg::tx("pool_size: 1").start();
    let mut c = Raw::pooled(&pooler);
    c.send(&[describe_msg(b'S', "never_parsed"), sync_msg()].concat());
    assert_disconnected(&mut c, "prepared statement did not exist");
    let mut c = Raw::pooled(&pooler);
    c.send(&run_msgs("never_parsed", &[]));
    assert_disconnected(&mut c, "prepared statement did not exist");
    // A portal's Describe has no statement name to look up: it passes.
    let mut c = Raw::pooled(&pooler);
    let r = c.exchange(
        &[
            parse_msg("", "SELECT 6", &[]),
            bind_msg("", "", &[]),
            describe_msg(b'P', ""),
            execute_msg(),
            sync_msg(),
        ]
        .concat(),
        1,
    );
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("1 2 T D C Z", vec!["6".into()])
    );
}

#[test]
fn lowering_max_prepared_statements_on_reload_shrinks_a_server_at_its_next_parse() {
    let pooler = Cfg::tx("pool_size: 1")
        .extra("max_prepared_statements: 5")
        .start();
    let mut c = connect(&pooler);
    let stmts: Vec<_> = (1..=5)
        .map(|k| {
            c.prepare(&format!("SELECT $1::int + {k} AS shrink"))
                .unwrap()
        })
        .collect();
    assert_eq!(server_stmts(&mut c).stmts.len(), 5);

    let yaml = std::fs::read_to_string(pooler.config_path()).unwrap();
    assert!(yaml.contains("max_prepared_statements: 5"), "{yaml}");
    std::fs::write(
        pooler.config_path(),
        yaml.replace("max_prepared_statements: 5", "max_prepared_statements: 2"),
    )
    .unwrap();
    let reloads = |p: &Pooler| p.log().matches("configuration reloaded").count();
    let before = reloads(&pooler);
    pooler.reload();
    assert!(
        wait_until(secs(10), || reloads(&pooler) > before),
        "no reload:\n{}",
        pooler.log()
    );
    // The next statement prepared on that server brings it down to the new limit.
    let sixth = c.prepare("SELECT $1::int + 6 AS shrink").unwrap();
    let s = server_stmts(&mut c);
    s.assert_pooler_names("after the reload");
    assert_eq!(s.stmts.len(), 2, "{s:?}");
    assert_eq!(s.with_text("SELECT $1::int + 6 AS shrink"), 1, "{s:?}");
    // Every statement still runs (re-prepared where it was closed), within the limit.
    for (k, stmt) in stmts.iter().chain([&sixth]).enumerate() {
        let got: i32 = c.query_one(stmt, &[&10]).unwrap().get(0);
        assert_eq!(got, 10 + k as i32 + 1);
        assert!(server_stmts(&mut c).stmts.len() <= 2);
    }
}

#[test]
fn session_mode_passes_statement_names_through() {
    let pooler = Cfg::new("session", "pool_size: 1").start();
    let mut c = Raw::pooled(&pooler);
    let r = c.exchange(
        &[parse_msg("my_session_stmt", "SELECT 8", &[]), sync_msg()].concat(),
        1,
    );
    assert_eq!(r.tags(), "1 Z");
    let s = c.server_stmts();
    let names: Vec<&str> = s.stmts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["my_session_stmt"], "{s:?}");
    let r = c.exchange(&run_msgs("my_session_stmt", &[]), 1);
    assert_eq!(
        (r.tags().as_str(), r.values()),
        ("2 D C Z", vec!["8".into()])
    );
    let r = c.exchange(
        &[close_msg(b'S', "my_session_stmt"), sync_msg()].concat(),
        1,
    );
    assert_eq!(r.tags(), "3 Z");
    assert!(
        c.server_stmts().stmts.is_empty(),
        "Close reached the server"
    );
}

// ---------------------------------------------------------------------------
// 9. server_reset_query_always clears statements; the pooler re-prepares
// ---------------------------------------------------------------------------

#[test]
fn statements_survive_reset_query_always_in_transaction_mode() {
    const SQL: &str = "SELECT $1::int - 1 AS reset";
    let pooler = Cfg::tx("pool_size: 1")
        .extra("server_reset_query_always: true")
        .start();
    let mut c1 = connect(&pooler);
    let mut c2 = connect(&pooler);
    let s1 = c1.prepare(SQL).unwrap();
    let s2 = c2.prepare(SQL).unwrap();
    for n in 0..5i32 {
        let got: i32 = c1
            .query_one(&s1, &[&n])
            .unwrap_or_else(|e| panic!("c1 #{n}: {e:?}\n{}", pooler.log()))
            .get(0);
        assert_eq!(got, n - 1);
        let got: i32 = c2
            .query_one(&s2, &[&(n * 100)])
            .unwrap_or_else(|e| panic!("c2 #{n}: {e:?}\n{}", pooler.log()))
            .get(0);
        assert_eq!(got, n * 100 - 1);
    }
    // Each transaction starts on a reset server and gets its statement back.
    c1.simple_query("BEGIN").unwrap();
    let before = server_stmts(&mut c1);
    assert!(
        before.stmts.is_empty(),
        "DISCARD ALL did not run: {before:?}"
    );
    assert_eq!(c1.query_one(&s1, &[&10i32]).unwrap().get::<_, i32>(0), 9);
    let after = server_stmts(&mut c1);
    c1.simple_query("COMMIT").unwrap();
    after.assert_pooler_names("after reset");
    assert_eq!(after.with_text(SQL), 1, "{after:?}");
}

// ---------------------------------------------------------------------------
// 10. Real Python drivers
// ---------------------------------------------------------------------------

/// psycopg 3 and asyncpg importable, installing them once if needed.
fn python_drivers() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let check = || {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", "import psycopg, asyncpg"]);
            run_cmd(cmd, None, secs(60))
        };
        if check().success() {
            return Ok(());
        }
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip", "install", "-q", "psycopg[binary]", "asyncpg"]);
        let out = run_cmd(cmd, None, secs(300));
        if !out.success() {
            return Err(format!("pip install failed:\n{out}"));
        }
        let out = check();
        if out.success() {
            Ok(())
        } else {
            Err(format!("still not importable after pip install:\n{out}"))
        }
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

fn run_python(pooler: &Pooler, name: &str, script: &str) {
    python_drivers();
    let path = pooler.write_file(name, script);
    let mut cmd = Command::new("python3");
    cmd.arg(&path).arg(pooler.port().to_string());
    let out = run_cmd(cmd, None, secs(90));
    assert!(
        out.success() && out.stdout.lines().any(|l| l.trim() == "OK"),
        "{name} failed:\n{out}\n--- pooler log (tail) ---\n{}",
        common::pg::tail(&pooler.log(), 40)
    );
}

const PSYCOPG_SCRIPT: &str = r#"
import sys, threading
import psycopg

port = int(sys.argv[1])
errors = []

def work(k):
    try:
        autocommit = k % 2 == 0
        with psycopg.connect(host="127.0.0.1", port=port, user="app", dbname="app",
                             autocommit=autocommit) as conn:
            assert conn.prepare_threshold == 5, conn.prepare_threshold
            for i in range(50):
                a = k * 1000 + i
                t = f"t{k}-{i}"
                row = conn.execute("SELECT %s::int * 2, %s::text || '!'", (a, t)).fetchone()
                if row != (a * 2, t + "!"):
                    errors.append(f"client {k} #{i}: {row!r}")
                if not autocommit and i % 10 == 9:
                    conn.commit()
            if not autocommit:
                # Same transaction, same server: what it has prepared.
                names = [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements")]
                if not names or any(not n.startswith("PGBS_") for n in names):
                    errors.append(f"client {k}: server statements {names!r}")
                conn.commit()
    except Exception as e:
        errors.append(f"client {k}: {e!r}")

threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("OK")
"#;

#[test]
fn psycopg_with_default_prepare_threshold() {
    let pooler = Cfg::tx("pool_size: 2").start();
    run_python(&pooler, "psycopg_prepared.py", PSYCOPG_SCRIPT);
}

const ASYNCPG_SCRIPT: &str = r#"
import asyncio, sys
import asyncpg

async def work(port, k):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="app", database="app")
    try:
        add = await conn.prepare("SELECT $1::int + $2::int")
        for i in range(30):
            a, b = k * 100 + i, i * 7
            v = await add.fetchval(a, b)
            assert v == a + b, (k, i, v)
            r = await conn.fetchrow("SELECT $1::text || '-' || $2::int", f"k{k}", i)
            assert r[0] == f"k{k}-{i}", (k, i, r)
            async with conn.transaction():
                v = await conn.fetchval("SELECT $1::int * 3", i)
                assert v == i * 3, (k, i, v)
                rows = await conn.fetch("SELECT generate_series(1, $1::int)", i % 5 + 1)
                assert [x[0] for x in rows] == list(range(1, i % 5 + 2)), (k, i, rows)
                names = [x[0] for x in await conn.fetch("SELECT name FROM pg_prepared_statements")]
                assert names and all(n.startswith("PGBS_") for n in names), names
    finally:
        await conn.close()

async def main():
    port = int(sys.argv[1])
    await asyncio.wait_for(asyncio.gather(*(work(port, k) for k in range(10))), 60)
    print("OK")

asyncio.run(main())
"#;

#[test]
fn asyncpg_with_default_statement_cache() {
    let pooler = Cfg::tx("pool_size: 2").start();
    run_python(&pooler, "asyncpg_prepared.py", ASYNCPG_SCRIPT);
}
