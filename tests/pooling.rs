//! End-to-end tests of the three pool modes (session, transaction, statement) through the real binary and a real PostgreSQL.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::wire::Fields;
use common::*;
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::SimpleQueryMessage;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Pooler set-up
// ---------------------------------------------------------------------------

/// One pooler's config: one worker (pools are per worker, so sizes are
/// exact), database `app` on the shared server, `app`/`apppw` plus `roles`
/// (password = role name) in the auth file as plain passwords.
struct Cfg {
    auth: &'static str,
    mode: &'static str,
    /// Extra `key: value` items of the `app` database entry (flow mapping).
    db: String,
    /// Extra global lines.
    extra: String,
    roles: Vec<String>,
}

impl Cfg {
    fn new(mode: &'static str, db: &str) -> Cfg {
        Cfg {
            auth: "trust",
            mode,
            db: db.to_string(),
            extra: String::new(),
            roles: Vec::new(),
        }
    }

    fn auth(mut self, auth: &'static str) -> Cfg {
        self.auth = auth;
        self
    }

    fn extra(mut self, extra: &str) -> Cfg {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    fn role(mut self, role: &str) -> Cfg {
        self.roles.push(role.to_string());
        self
    }

    fn start(self) -> Pooler {
        let setup = PoolerSetup::new();
        let mut userlist = userlist_entry(APP_USER, APP_PASSWORD);
        userlist.push('\n');
        for role in &self.roles {
            userlist.push_str(&userlist_entry(role, role));
            userlist.push('\n');
        }
        setup.write_file("userlist.txt", &userlist);
        setup.start(&self.yaml())
    }

    /// The config file this builds (placeholders left for the pooler to fill).
    fn yaml(&self) -> String {
        let pg = shared_pg();
        let extra = if self.extra.contains("query_wait_timeout") {
            self.extra.clone()
        } else {
            // Failing fast beats hanging when a server is wrongly kept.
            format!("{}query_wait_timeout: 20\n", self.extra)
        };
        let db = if self.db.is_empty() {
            String::new()
        } else {
            format!(", {}", self.db)
        };
        format!(
            "listen_addr: 127.0.0.1\n\
             listen_port: @PORT@\n\
             workers: 1\n\
             auth_type: {}\n\
             auth_file: @DIR@/userlist.txt\n\
             pool_mode: {}\n\
             {extra}\
             databases:\n  \
               app: {{ host: 127.0.0.1, port: {}, dbname: app{db} }}\n",
            self.auth,
            self.mode,
            pg.port(),
        )
    }
}

/// Creates a login role only this test uses (password = its name), so
/// pg_stat_activity counts are not disturbed by parallel tests.
fn create_role(role: &str) {
    shared_pg().admin_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD {}",
        quote_literal(role)
    ));
}

/// Client backends of `role`, counted with a long-lived admin connection
/// (cheaper than a psql per sample).
fn backends(admin: &mut postgres::Client, role: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend'",
            &[&role],
        )
        .expect("count backends")
        .get(0)
}

fn connect_as(pooler: &Pooler, user: &str) -> postgres::Client {
    pooler.connect(user, "", APP_DB)
}

/// The single text value of a simple query returning one row.
fn simple_value(client: &mut postgres::Client, sql: &str) -> String {
    let msgs = client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1, "{sql}: expected one row, got {rows:?}");
    rows[0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

fn backend_pid(client: &mut postgres::Client) -> i32 {
    simple_value(client, "SELECT pg_backend_pid()")
        .parse()
        .expect("pid")
}

fn code(e: &postgres::Error) -> Option<&str> {
    e.code().map(SqlState::code)
}

/// Runs `sql` on another thread with its own client; the result (a pid
/// or an error) arrives on the returned channel.
fn query_in_thread(
    mut client: postgres::Client,
    sql: &'static str,
) -> (
    mpsc::Receiver<Result<String, String>>,
    thread::JoinHandle<postgres::Client>,
) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let result = client
            .simple_query(sql)
            .map_err(|e| format!("{e:?}"))
            .map(|msgs| {
                msgs.iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    })
                    .unwrap_or_default()
            });
        let _ = tx.send(result);
        client
    });
    (rx, handle)
}

/// A client running `SELECT $1::int4` with fresh numbers in a loop on its
/// own thread, checking every answer is its own, until stopped.
struct Hammer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, Vec<String>)>,
}

impl Hammer {
    /// Starts it and returns once its first query was answered, so it is contending for
    /// the server from the test's first step on (on a loaded machine its thread may
    /// otherwise start after a short test is over).
    fn start(pooler: &Pooler) -> Hammer {
        let mut client = connect_as(pooler, APP_USER);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let answered = Arc::new(AtomicU64::new(0));
        let progress = answered.clone();
        let handle = thread::spawn(move || {
            let mut done = 0u64;
            let mut bad = Vec::new();
            let mut n: i32 = 1_000_000;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                match client.query_typed("SELECT $1::int4, 'hammer'::text", &[(&n, Type::INT4)]) {
                    Ok(rows) if rows.len() == 1 && rows[0].get::<_, i32>(0) == n => {
                        done += 1;
                        progress.store(done, Ordering::SeqCst);
                    }
                    Ok(rows) => bad.push(format!("sent {n}, got {rows:?}")),
                    Err(e) => {
                        bad.push(format!("sent {n}: {e:?}"));
                        break;
                    }
                }
            }
            (done, bad)
        });
        let started = wait_until(Duration::from_secs(10), || {
            answered.load(Ordering::SeqCst) > 0 || handle.is_finished()
        });
        assert!(
            started,
            "the parallel client's first query got no answer in 10 s"
        );
        Hammer { stop, handle }
    }

    /// Stops it; returns (queries answered correctly, problems).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("hammer thread panicked")
    }

    /// Stops it and asserts it made progress with no wrong answer.
    fn check(self, pooler: &Pooler) {
        let (done, bad) = self.finish();
        assert!(
            bad.is_empty(),
            "the parallel client got wrong answers or errors: {bad:?}\n{}",
            pooler.log()
        );
        // One answer came before the test's steps: it must have got the server again.
        assert!(
            done > 1,
            "the parallel client never got a server during the test"
        );
    }
}

// ---------------------------------------------------------------------------
// Raw protocol client (for what the libraries hide)
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

fn query_msg(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
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
fn bind_msg(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

fn describe_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}

fn execute_msg(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}

fn sync_msg() -> Vec<u8> {
    msg(b'S', &[])
}

fn flush_msg() -> Vec<u8> {
    msg(b'H', &[])
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

/// What one simple query (or one Sync's worth of extended messages) returned.
#[derive(Debug, Default)]
struct Outcome {
    rows: Vec<Vec<Option<String>>>,
    tags: Vec<String>,
    error: Option<Fields>,
    notices: Vec<Fields>,
    /// Message types in order, ParameterStatus and notices left out.
    kinds: Vec<u8>,
    status: u8,
}

impl Outcome {
    /// The first column of every row, which must be non-NULL.
    fn column(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| r[0].clone().expect("NULL"))
            .collect()
    }
}

/// A hand-driven protocol connection (auth: trust at the pooler).
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(port: u16, params: &[(&str, &str)]) -> Raw {
        Raw::try_connect(port, params)
            .unwrap_or_else(|e| panic!("raw login failed: {e:?}"))
            .0
    }

    /// Logs in; returns the connection and the ParameterStatus values.
    fn try_connect(
        port: u16,
        params: &[(&str, &str)],
    ) -> Result<(Raw, HashMap<String, String>), Fields> {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the pooler");
        stream.set_read_timeout(Some(secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut raw = Raw { stream };
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in params {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        raw.send(&packet);
        let mut status = HashMap::new();
        loop {
            let (tag, body) = raw.recv();
            match tag {
                b'R' => assert_eq!(body, [0, 0, 0, 0], "expected AuthenticationOk (trust)"),
                b'S' => {
                    let f: Vec<&[u8]> = body.split(|&b| b == 0).collect();
                    status.insert(
                        String::from_utf8_lossy(f[0]).into_owned(),
                        String::from_utf8_lossy(f[1]).into_owned(),
                    );
                }
                b'K' | b'N' => {}
                b'Z' => return Ok((raw, status)),
                b'E' => return Err(Fields::parse(&body)),
                other => panic!("unexpected message {:?} during login", other as char),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the pooler");
    }

    fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.stream
            .read_exact(&mut head)
            .expect("read a message header from the pooler");
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap());
        assert!(len >= 4, "bad length {len}");
        let mut body = vec![0u8; len as usize - 4];
        self.stream
            .read_exact(&mut body)
            .expect("read a message body from the pooler");
        (head[0], body)
    }

    /// Reads up to and including the next ReadyForQuery.
    fn until_ready(&mut self) -> Outcome {
        let mut out = Outcome::default();
        loop {
            let (tag, body) = self.recv();
            match tag {
                b'S' => continue,
                b'N' => {
                    out.notices.push(Fields::parse(&body));
                    continue;
                }
                b'D' => out.rows.push(data_row(&body)),
                b'C' => out
                    .tags
                    .push(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
                b'E' => out.error = Some(Fields::parse(&body)),
                b'Z' => {
                    out.status = body[0];
                    out.kinds.push(tag);
                    return out;
                }
                _ => {}
            }
            out.kinds.push(tag);
        }
    }

    /// Every message until the pooler closes the connection.
    fn until_eof(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        loop {
            let mut head = [0u8; 5];
            if self.stream.read_exact(&mut head).is_err() {
                return got;
            }
            let len = i32::from_be_bytes(head[1..5].try_into().unwrap());
            let mut body = vec![0u8; (len.max(4) - 4) as usize];
            if self.stream.read_exact(&mut body).is_err() {
                return got;
            }
            got.push((head[0], body));
        }
    }

    fn simple(&mut self, sql: &str) -> Outcome {
        self.send(&query_msg(sql));
        self.until_ready()
    }

    /// A simple query that must succeed with exactly one value.
    fn value(&mut self, sql: &str) -> String {
        let out = self.simple(sql);
        assert!(out.error.is_none(), "{sql}: {:?}", out.error);
        assert_eq!(out.rows.len(), 1, "{sql}: {out:?}");
        out.rows[0][0].clone().expect("NULL")
    }
}

// ---------------------------------------------------------------------------
// Session mode
// ---------------------------------------------------------------------------

#[test]
fn session_state_lasts_the_session_and_is_reset_after() {
    let pooler = Cfg::new("session", "pool_size: 1")
        .auth("scram-sha-256")
        .start();
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    let pid = backend_pid(&mut c);
    let default_work_mem = simple_value(&mut c, "SHOW work_mem");
    c.batch_execute("SET work_mem = '17MB'").unwrap();
    c.batch_execute("CREATE TEMP TABLE sess_tmp (x int)")
        .unwrap();
    c.batch_execute("INSERT INTO sess_tmp VALUES (1), (2)")
        .unwrap();
    // Named prepared statements, used across several transactions.
    let stmt = c
        .prepare("SELECT $1::int4 + count(*)::int4 FROM sess_tmp")
        .unwrap();
    for i in 0..5 {
        let v: i32 = c.query_one(&stmt, &[&i]).unwrap().get(0);
        assert_eq!(v, i + 2);
        assert_eq!(simple_value(&mut c, "SHOW work_mem"), "17MB");
    }
    let mut tx = c.transaction().unwrap();
    tx.execute("INSERT INTO sess_tmp VALUES (3)", &[]).unwrap();
    tx.commit().unwrap();
    // A second session waits: the first one holds the only server between
    // its transactions.
    let (tx, rx) = mpsc::channel();
    let config = pooler.client_config(APP_USER, APP_PASSWORD, APP_DB);
    let second = thread::spawn(move || {
        let result = config
            .connect(postgres::NoTls)
            .and_then(|mut c| c.simple_query("SELECT pg_backend_pid()"))
            .map_err(|e| format!("{e:?}"));
        let _ = tx.send(result.map(|_| ()));
    });
    assert!(
        rx.recv_timeout(ms(800)).is_err(),
        "another client got the server of a live session"
    );
    let v: i32 = c.query_one(&stmt, &[&0]).unwrap().get(0);
    assert_eq!(v, 3);
    assert_eq!(
        backend_pid(&mut c),
        pid,
        "a session moved to another server"
    );
    drop(c);
    rx.recv_timeout(secs(5))
        .expect("the waiting session did not get the server after the first left")
        .expect("the waiting session failed");
    second.join().unwrap();

    // pool_size 1: the next client gets the same backend, reset.
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    assert_eq!(backend_pid(&mut c), pid, "the server was not reused");
    assert_eq!(simple_value(&mut c, "SHOW work_mem"), default_work_mem);
    assert_eq!(
        simple_value(
            &mut c,
            "SELECT coalesce(to_regclass('pg_temp.sess_tmp')::text, 'none')"
        ),
        "none",
        "the temp table survived the reset"
    );
    assert_eq!(
        simple_value(&mut c, "SELECT count(*) FROM pg_prepared_statements"),
        "0"
    );
    // The new session's own state works as well.
    let stmt = c.prepare("SELECT 40 + $1::int4").unwrap();
    let v: i32 = c.query_one(&stmt, &[&2]).unwrap().get(0);
    assert_eq!(v, 42);
}

// ---------------------------------------------------------------------------
// Transaction mode: release at the end of each transaction
// ---------------------------------------------------------------------------

#[test]
fn transaction_two_clients_interleave_on_one_server() {
    let pooler = Cfg::new("transaction", "pool_size: 1")
        .extra("query_wait_timeout: 5")
        .start();
    let mut a = connect_as(&pooler, APP_USER);
    let mut b = connect_as(&pooler, APP_USER);
    let mut pids = BTreeSet::new();
    for i in 0..20 {
        // Session mode would make b wait for a forever (query_wait_timeout).
        assert_eq!(simple_value(&mut a, &format!("SELECT {i}")), i.to_string());
        assert_eq!(
            simple_value(&mut b, &format!("SELECT {}", i + 100)),
            (i + 100).to_string()
        );
        pids.insert(backend_pid(&mut a));
        pids.insert(backend_pid(&mut b));
    }
    assert_eq!(pids.len(), 1, "pool_size 1 but several backends: {pids:?}");
}

#[test]
fn transaction_open_transaction_keeps_its_server() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let mut admin = shared_pg().admin_client();
    let mut a = connect_as(&pooler, APP_USER);
    let b = connect_as(&pooler, APP_USER);
    a.batch_execute("BEGIN").unwrap();
    let pid = backend_pid(&mut a);
    let (rx, handle) = query_in_thread(b, "SELECT pg_backend_pid()");
    assert!(
        rx.recv_timeout(ms(800)).is_err(),
        "another client ran while a transaction was open on the only server"
    );
    let state: String = admin
        .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
        .get(0);
    assert_eq!(state, "idle in transaction");
    // Still inside the transaction: the same server.
    assert_eq!(backend_pid(&mut a), pid);
    a.batch_execute("COMMIT").unwrap();
    let got = rx
        .recv_timeout(secs(5))
        .expect("the waiting client did not get the server after COMMIT")
        .expect("the waiting client's query failed");
    assert_eq!(got, pid.to_string());
    let mut b = handle.join().unwrap();
    assert_eq!(backend_pid(&mut b), pid);
    assert_eq!(backend_pid(&mut a), pid);
}

#[test]
fn transaction_error_in_transaction_then_rollback() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let mut a = connect_as(&pooler, APP_USER);
    let b = connect_as(&pooler, APP_USER);
    let e = a
        .simple_query("BEGIN; SELECT 1/0;")
        .expect_err("division by zero");
    assert_eq!(code(&e), Some("22012"), "{e:?}");
    // The failed transaction (status E) keeps the server.
    let (rx, handle) = query_in_thread(b, "SELECT 'b ran'");
    assert!(
        rx.recv_timeout(ms(700)).is_err(),
        "another client got the server of a failed, open transaction"
    );
    let e = a.simple_query("SELECT 1").expect_err("aborted transaction");
    assert_eq!(code(&e), Some("25P02"), "{e:?}");
    a.batch_execute("ROLLBACK").unwrap();
    let got = rx
        .recv_timeout(secs(5))
        .expect("the waiting client did not get the server after ROLLBACK")
        .expect("the waiting client's query failed");
    assert_eq!(got, "b ran");
    handle.join().unwrap();
    assert_eq!(simple_value(&mut a, "SELECT 'reusable'"), "reusable");
    assert_eq!(
        simple_value(&mut a, "SELECT txid_current_if_assigned() IS NULL"),
        "t"
    );
}

#[test]
fn transaction_multi_statement_simple_queries() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let hammer = Hammer::start(&pooler);
    let mut c = connect_as(&pooler, APP_USER);
    c.batch_execute("CREATE TABLE tx_multi (x int)").unwrap();
    for round in 0..20 {
        let msgs = c
            .simple_query(&format!(
                "INSERT INTO tx_multi VALUES ({round}); SELECT {round} AS a; \
                 SELECT 'two', 2 UNION ALL SELECT 'three', 3; SELECT count(*) FROM tx_multi"
            ))
            .unwrap();
        let mut rows = Vec::new();
        let mut completes = 0;
        for m in &msgs {
            match m {
                SimpleQueryMessage::Row(r) => rows.push(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap().to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                SimpleQueryMessage::CommandComplete(_) => completes += 1,
                _ => {}
            }
        }
        assert_eq!(completes, 4, "{msgs:?}");
        assert_eq!(
            rows,
            [
                round.to_string(),
                "two,2".into(),
                "three,3".into(),
                (round + 1).to_string()
            ]
        );
    }
    // One message is one implicit transaction: a later error undoes the
    // earlier insert.
    let e = c
        .simple_query("INSERT INTO tx_multi VALUES (99); SELECT 1/0")
        .expect_err("division by zero");
    assert_eq!(code(&e), Some("22012"));
    assert_eq!(simple_value(&mut c, "SELECT count(*) FROM tx_multi"), "20");
    c.batch_execute("DROP TABLE tx_multi").unwrap();
    hammer.check(&pooler);
}

#[test]
fn transaction_notices_reach_the_client() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut config = pooler.client_config(APP_USER, "", APP_DB);
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut c = config.connect(postgres::NoTls).unwrap();
    let mut other = connect_as(&pooler, APP_USER);
    for i in 0..3 {
        c.batch_execute(&format!("DO $$ BEGIN RAISE NOTICE 'hi %', {i}; END $$"))
            .unwrap();
        simple_value(&mut other, "SELECT 1");
    }
    // Raw: the notice arrives before the CommandComplete of its statement.
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    let out = raw.simple("DO $$ BEGIN RAISE NOTICE 'raw hi'; END $$");
    assert!(out.error.is_none(), "{out:?}");
    assert_eq!(out.notices.len(), 1, "{out:?}");
    assert_eq!(out.notices[0].message(), "raw hi");
    assert_eq!(out.notices[0].code(), "00000");
    assert_eq!(*notices.lock().unwrap(), ["hi 0", "hi 1", "hi 2"]);
}

#[test]
fn transaction_extended_parameters_round_trip() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let mut a = connect_as(&pooler, APP_USER);
    let mut b = connect_as(&pooler, APP_USER);
    let bytes: Vec<u8> = (0..=255u8).collect();
    for i in 0..20usize {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let n = i as i32 * 1000 - 7;
        let big = i64::MAX - i as i64;
        let small = -(i as i16);
        let text = format!("héllo ✓ {i} 'quoted' \\ \"x\"");
        let none: Option<i32> = None;
        let rows = c
            .query_typed(
                "SELECT $1::int4, $2::int8, $3::int2, $4::text, $5::int4, $6::bytea, \
                 $4::text IS NULL, $5::int4 IS NULL",
                &[
                    (&n as &(dyn ToSql + Sync), Type::INT4),
                    (&big, Type::INT8),
                    (&small, Type::INT2),
                    (&text, Type::TEXT),
                    (&none, Type::INT4),
                    (&bytes, Type::BYTEA),
                ],
            )
            .unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.get::<_, i32>(0), n);
        assert_eq!(r.get::<_, i64>(1), big);
        assert_eq!(r.get::<_, i16>(2), small);
        assert_eq!(r.get::<_, String>(3), text);
        assert_eq!(r.get::<_, Option<i32>>(4), None);
        assert_eq!(r.get::<_, Vec<u8>>(5), bytes);
        assert!(!r.get::<_, bool>(6));
        assert!(r.get::<_, bool>(7));
    }
    // A server-side error in the extended protocol does not stick.
    let zero = 0i32;
    let e = a
        .query_typed("SELECT 1 / $1::int4", &[(&zero, Type::INT4)])
        .expect_err("division by zero");
    assert_eq!(code(&e), Some("22012"));
    let one = 1i32;
    let rows = b
        .query_typed("SELECT 1 / $1::int4", &[(&one, Type::INT4)])
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    let rows = a
        .query_typed("SELECT 1 / $1::int4", &[(&one, Type::INT4)])
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1);
}

#[tokio::test]
async fn transaction_pipelined_queries_get_their_own_results() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let a = pooler.connect_async(APP_USER, "", APP_DB).await.unwrap();
    let b = pooler.connect_async(APP_USER, "", APP_DB).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The second client pipelines too, in small bursts, as long as the first runs.
    let other = tokio::spawn(async move {
        let mut done = 0u64;
        let mut bad = Vec::new();
        let mut base = -1_000_000i32;
        while !flag.load(Ordering::SeqCst) {
            let b = &b;
            let burst = (0..10).map(|k| {
                let n = base - k;
                async move {
                    let rows = b
                        .query_typed("SELECT $1::int4, 'b'::text", &[(&n, Type::INT4)])
                        .await;
                    (n, rows)
                }
            });
            for (n, rows) in futures_util::future::join_all(burst).await {
                match rows {
                    Ok(rows) if rows.len() == 1 && rows[0].get::<_, i32>(0) == n => done += 1,
                    other => bad.push(format!("b sent {n}, got {other:?}")),
                }
            }
            base -= 10;
            tokio::task::yield_now().await;
        }
        (done, bad)
    });
    let work = async {
        let mut mismatches = Vec::new();
        let mut answered = 0;
        for round in 0..5 {
            let a = &a;
            // join_all polls every future at once: tokio-postgres writes all
            // 100 Parse/Bind/Execute/Sync groups before reading any answer.
            let queries = (0..100).map(|k| {
                let n = round * 100 + k;
                async move {
                    let rows = a
                        .query_typed(
                            "SELECT $1::int4, repeat('a', $1::int4 % 50)",
                            &[(&n, Type::INT4)],
                        )
                        .await;
                    (n, rows)
                }
            });
            for (n, rows) in futures_util::future::join_all(queries).await {
                match rows {
                    Ok(rows)
                        if rows.len() == 1
                            && rows[0].get::<_, i32>(0) == n
                            && rows[0].get::<_, String>(1).len() == (n % 50) as usize =>
                    {
                        answered += 1
                    }
                    other => mismatches.push(format!("a sent {n}, got {other:?}")),
                }
            }
        }
        (answered, mismatches)
    };
    let (answered, mismatches) = tokio::time::timeout(secs(60), work)
        .await
        .expect("pipelined queries hung");
    stop.store(true, Ordering::SeqCst);
    let (b_done, b_bad) = tokio::time::timeout(secs(30), other)
        .await
        .expect("the second client hung")
        .unwrap();
    assert!(
        mismatches.is_empty() && b_bad.is_empty(),
        "wrong results: {mismatches:?} {b_bad:?}\n{}",
        pooler.log()
    );
    assert_eq!(answered, 500);
    assert!(b_done > 0, "the second client never ran");
}

/// A database's client_encoding, datestyle and timezone (PgBouncer's "ask specific ...
/// from server") are what a client gets when it asks for none; a client's own values win,
/// and in transaction pooling each client keeps its own on the one shared server.
#[test]
fn database_startup_parameters_are_the_default_and_clients_keep_their_own() {
    let pooler = Cfg::new(
        "transaction",
        "pool_size: 1, client_encoding: LATIN1, datestyle: 'SQL, DMY', timezone: Asia/Tokyo",
    )
    .start();
    let (mut plain, status) =
        Raw::try_connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)])
            .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        status.get("client_encoding").map(String::as_str),
        Some("LATIN1")
    );
    assert_eq!(
        status.get("DateStyle").map(String::as_str),
        Some("SQL, DMY")
    );
    assert_eq!(
        status.get("TimeZone").map(String::as_str),
        Some("Asia/Tokyo")
    );
    let mut own = Raw::connect(
        pooler.port(),
        &[
            ("user", APP_USER),
            ("database", APP_DB),
            ("client_encoding", "UTF8"),
            ("TimeZone", "UTC"),
        ],
    );
    for _ in 0..3 {
        assert_eq!(own.value("SHOW client_encoding"), "UTF8");
        assert_eq!(own.value("SHOW TimeZone"), "UTC");
        assert_eq!(own.value("SHOW DateStyle"), "SQL, DMY");
        assert_eq!(plain.value("SHOW client_encoding"), "LATIN1");
        assert_eq!(plain.value("SHOW TimeZone"), "Asia/Tokyo");
    }
}

#[test]
fn transaction_raw_pipeline_of_three_syncs() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let hammer = Hammer::start(&pooler);
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    for round in 0..30 {
        let mut batch = Vec::new();
        for k in 1..=3 {
            batch.extend(parse_msg("", "SELECT $1::int4 * 2, $2::text", &[]));
            let n = (round * 10 + k).to_string();
            let tag = format!("r{round}k{k}");
            batch.extend(bind_msg("", "", &[Some(&n), Some(&tag)]));
            batch.extend(execute_msg(""));
            batch.extend(sync_msg());
        }
        raw.send(&batch);
        for k in 1..=3 {
            let out = raw.until_ready();
            assert!(out.error.is_none(), "round {round} #{k}: {out:?}");
            assert_eq!(out.kinds, b"12DCZ", "round {round} #{k}: {out:?}");
            assert_eq!(out.status, b'I');
            assert_eq!(
                out.rows,
                [vec![
                    Some(((round * 10 + k) * 2).to_string()),
                    Some(format!("r{round}k{k}"))
                ]],
                "round {round} #{k}"
            );
        }
    }
    // Nothing left over.
    assert_eq!(raw.value("SELECT 'end'"), "end");
    hammer.check(&pooler);
}

#[test]
fn transaction_extended_without_sync_keeps_the_server_across_flush() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    let raw_pid = raw.value("SELECT pg_backend_pid()");
    let other = connect_as(&pooler, APP_USER);

    let mut first = parse_msg("", "SELECT $1::int4 + 1, pg_backend_pid()", &[]);
    first.extend(describe_msg(b'S', ""));
    first.extend(flush_msg());
    raw.send(&first);
    let (tag, _) = raw.recv();
    assert_eq!(tag, b'1', "ParseComplete");
    let (tag, body) = raw.recv();
    assert_eq!(tag, b't', "ParameterDescription");
    assert_eq!(&body[..2], &1i16.to_be_bytes(), "one parameter");
    let (tag, _) = raw.recv();
    assert_eq!(tag, b'T', "RowDescription");

    // Between the Flush and the Sync the server is still ours.
    let (rx, handle) = query_in_thread(other, "SELECT pg_backend_pid()");
    assert!(
        rx.recv_timeout(ms(700)).is_err(),
        "another client ran on the server between Flush and Sync"
    );
    let mut rest = bind_msg("", "", &[Some("41")]);
    rest.extend(execute_msg(""));
    rest.extend(sync_msg());
    raw.send(&rest);
    let out = raw.until_ready();
    assert!(out.error.is_none(), "{out:?}\n{}", pooler.log());
    assert_eq!(out.kinds, b"2DCZ");
    assert_eq!(
        out.rows,
        [vec![Some("42".to_string()), Some(raw_pid.clone())]]
    );
    let got = rx
        .recv_timeout(secs(5))
        .expect("the other client did not run after the Sync")
        .expect("the other client's query failed");
    assert_eq!(got, raw_pid);
    handle.join().unwrap();
}

/// 100 000 rows, ~11 MB: `id \t payload` where the server can recompute the payload.
fn copy_data() -> String {
    let mut s = String::with_capacity(12 << 20);
    for i in 1..=100_000u32 {
        let letter = (b'a' + (i % 26) as u8) as char;
        s.push_str(&format!("{i}\t{i}-{}\n", letter.to_string().repeat(100)));
    }
    s
}

#[test]
fn transaction_copy_in_and_out_of_ten_megabytes() {
    let pg = shared_pg();
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    pg.admin_sql_in(
        APP_DB,
        "CREATE TABLE copy_big (id int PRIMARY KEY, payload text NOT NULL);
         GRANT ALL ON copy_big TO PUBLIC;",
    );
    let data = copy_data();
    assert!(data.len() > 10_000_000);
    let file = pooler.write_file("copy_big.tsv", &data);
    let hammer = Hammer::start(&pooler);
    let out = pooler.psql(
        APP_USER,
        "",
        APP_DB,
        &format!(
            "\\copy copy_big FROM {}\n",
            quote_literal(file.to_str().unwrap())
        ),
    );
    out.expect_success();
    let check = pg.admin_sql_in(
        APP_DB,
        "SELECT count(*), (SELECT count(*) FROM copy_big t JOIN generate_series(1, 100000) g \
           ON t.id = g AND t.payload = g || '-' || repeat(chr(97 + g % 26), 100)) \
         FROM copy_big",
    );
    assert_eq!(
        check, "100000\t100000",
        "COPY IN did not load the data intact"
    );

    let out = pooler.psql(
        APP_USER,
        "",
        APP_DB,
        "COPY (SELECT id, payload FROM copy_big ORDER BY id) TO STDOUT;",
    );
    let copied = out.expect_success();
    assert_eq!(copied.len(), data.len(), "COPY OUT size");
    assert!(copied == data, "COPY OUT data differs");
    hammer.check(&pooler);
}

#[test]
fn transaction_failed_copy_in_leaves_the_pool_usable() {
    let pg = shared_pg();
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    pg.admin_sql_in(
        APP_DB,
        "CREATE TABLE copy_bad (id int PRIMARY KEY, payload text NOT NULL);
         GRANT ALL ON copy_bad TO PUBLIC;",
    );
    let mut data = copy_data();
    // A bad row in the middle, after several MB went through.
    let at = data.find("\n60000\t").unwrap() + 1;
    data.insert_str(at, "not-a-number\toops\n");
    let file = pooler.write_file("copy_bad.tsv", &data);
    let mut c = connect_as(&pooler, APP_USER);
    let pid = backend_pid(&mut c);
    let out = pooler.psql(
        APP_USER,
        "",
        APP_DB,
        &format!(
            "\\copy copy_bad FROM {}\n",
            quote_literal(file.to_str().unwrap())
        ),
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("invalid input syntax for type integer"),
        "{out}"
    );
    // The one server is back, idle, and works for everyone.
    assert_eq!(simple_value(&mut c, "SELECT count(*) FROM copy_bad"), "0");
    assert_eq!(backend_pid(&mut c), pid);
    let out = pooler.psql(APP_USER, "", APP_DB, "SELECT 'after', pg_backend_pid();");
    assert_eq!(out.expect_success(), format!("after\t{pid}\n"));
    let state = pg.admin_sql(&format!(
        "SELECT state FROM pg_stat_activity WHERE pid = {pid}"
    ));
    assert_eq!(state, "idle");
}

#[test]
fn transaction_large_results_and_large_queries() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let hammer = Hammer::start(&pooler);
    let mut c = connect_as(&pooler, APP_USER);
    // ~50 MB of rows, streamed.
    let width = 1000i32;
    let count = 50_000i32;
    let mut rows = c
        .query_typed_raw(
            "SELECT g, repeat(chr(97 + g % 26), $1::int4) FROM generate_series(1, $2::int4) g",
            [(width, Type::INT4), (count, Type::INT4)],
        )
        .unwrap();
    let mut seen = 0i32;
    let mut bytes = 0usize;
    use postgres::fallible_iterator::FallibleIterator;
    while let Some(row) = rows.next().unwrap() {
        seen += 1;
        let g: i32 = row.get(0);
        let s: &str = row.get(1);
        assert_eq!(g, seen, "rows out of order");
        let letter = (b'a' + (g % 26) as u8) as char;
        assert!(
            s.len() == width as usize && s.chars().all(|ch| ch == letter),
            "row {g} corrupted"
        );
        bytes += s.len();
    }
    drop(rows);
    assert_eq!(seen, count);
    assert_eq!(bytes, 50_000_000);

    // The same through the simple protocol.
    let msgs = c
        .simple_query("SELECT repeat('x', 1000) FROM generate_series(1, 50000)")
        .unwrap();
    let n = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0).map(str::len) == Some(1000)))
        .count();
    assert_eq!(n, 50_000);

    // A ~1 MB query text, and a ~1 MB parameter.
    let literal: String = (0..1_000_000u32)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let sql = format!("SELECT length('{literal}'), md5('{literal}') = md5($1::text)");
    let text = literal.clone();
    let rows = c.query_typed(&sql, &[(&text, Type::TEXT)]).unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1_000_000);
    assert!(rows[0].get::<_, bool>(1));
    let simple = format!("SELECT length('{literal}')");
    assert_eq!(simple_value(&mut c, &simple), "1000000");
    hammer.check(&pooler);
}

#[test]
fn transaction_session_parameters_follow_each_client() {
    let pooler = Cfg::new("transaction", "pool_size: 1").start();
    let mut config = pooler.client_config(APP_USER, "", APP_DB);
    config
        .options("-c TimeZone=Asia/Tokyo")
        .application_name("a");
    let mut a = config.connect(postgres::NoTls).unwrap();
    let (mut b, status) = Raw::try_connect(
        pooler.port(),
        &[
            ("user", APP_USER),
            ("database", APP_DB),
            ("TimeZone", "America/New_York"),
            ("application_name", "b"),
            ("extra_float_digits", "3"),
        ],
    )
    .unwrap();
    assert_eq!(
        status.get("TimeZone").map(String::as_str),
        Some("America/New_York"),
        "b's login ParameterStatus: {status:?}"
    );
    assert_eq!(
        status.get("application_name").map(String::as_str),
        Some("b")
    );
    let pid = backend_pid(&mut a);
    assert_eq!(b.value("SELECT pg_backend_pid()"), pid.to_string());
    let default_efd = shared_pg().admin_sql("SHOW extra_float_digits");
    assert_ne!(default_efd, "3");
    for _ in 0..15 {
        assert_eq!(simple_value(&mut a, "SHOW TimeZone"), "Asia/Tokyo");
        assert_eq!(b.value("SHOW TimeZone"), "America/New_York");
        assert_eq!(simple_value(&mut a, "SHOW application_name"), "a");
        assert_eq!(b.value("SHOW application_name"), "b");
        assert_eq!(b.value("SHOW extra_float_digits"), "3");
        assert_eq!(simple_value(&mut a, "SHOW extra_float_digits"), default_efd);
        let rows = a
            .query_typed("SELECT current_setting('TimeZone')", &[])
            .unwrap();
        assert_eq!(rows[0].get::<_, String>(0), "Asia/Tokyo");
    }
    // A SET outside a transaction becomes the client's own value.
    a.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let out = b.simple("SET application_name = 'b2'");
    assert!(out.error.is_none(), "{out:?}");
    for _ in 0..10 {
        assert_eq!(b.value("SHOW TimeZone"), "America/New_York");
        assert_eq!(simple_value(&mut a, "SHOW TimeZone"), "UTC");
        assert_eq!(b.value("SHOW application_name"), "b2");
        assert_eq!(simple_value(&mut a, "SHOW application_name"), "a");
    }
    assert_eq!(backend_pid(&mut a), pid, "pool_size 1 but another backend");
}

#[test]
fn transaction_set_parameter_follows_the_client_to_new_servers() {
    // A short server_lifetime retires each backend once it sits idle, so
    // every transaction below lands on a fresh server that only the
    // pooler's SET can align with the client.
    let pooler = Cfg::new("transaction", "pool_size: 1")
        .extra("server_lifetime: 0.3")
        .start();
    let mut admin = shared_pg().admin_client();
    let mut config = pooler.client_config(APP_USER, "", APP_DB);
    config.application_name("mover");
    let mut c = config.connect(postgres::NoTls).unwrap();
    let mut config = pooler.client_config(APP_USER, "", APP_DB);
    config.options("-c TimeZone=Europe/Paris");
    let mut other = config.connect(postgres::NoTls).unwrap();
    c.batch_execute("SET TimeZone = 'Pacific/Auckland'")
        .unwrap();
    let mut pids = BTreeSet::new();
    for round in 0..4 {
        let msgs = c
            .simple_query(
                "SELECT pg_backend_pid(), current_setting('TimeZone'), \
                 current_setting('application_name')",
            )
            .unwrap();
        let row = msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..3)
                        .map(|i| r.get(i).unwrap().to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .unwrap();
        assert_eq!(row[1], "Pacific/Auckland", "round {round}");
        assert_eq!(row[2], "mover", "round {round}");
        assert_eq!(simple_value(&mut other, "SHOW TimeZone"), "Europe/Paris");
        let pid: i32 = row[0].parse().unwrap();
        pids.insert(pid);
        // Wait for that backend to be retired before the next round.
        assert!(
            wait_until(secs(5), || {
                admin
                    .query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                    .unwrap()
                    .is_empty()
            }),
            "backend {pid} outlived server_lifetime\n{}",
            pooler.log()
        );
    }
    assert_eq!(pids.len(), 4, "expected a new server each round: {pids:?}");
}

#[test]
fn transaction_server_lifetime_zero_uses_each_server_once() {
    // etc/pgbouncers.yaml (as PgBouncer): "0 means each server connection
    // is used only once".
    let pooler = Cfg::new("transaction", "pool_size: 1")
        .extra("server_lifetime: 0")
        .start();
    let mut c = connect_as(&pooler, APP_USER);
    let pids: BTreeSet<i32> = (0..3).map(|_| backend_pid(&mut c)).collect();
    assert_eq!(
        pids.len(),
        3,
        "server_lifetime 0 reused a server: {pids:?}\n{}",
        pooler.log()
    );
}

/// The SQLSTATE a tokio-postgres call got. tokio-postgres delivers a FATAL
/// error that arrives together with the close; the blocking `postgres`
/// wrapper polls the connection first and may report only "connection
/// closed" then.
fn tokio_code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(tokio_postgres::error::SqlState::code)
}

#[tokio::test]
async fn transaction_named_prepared_statements_pass_through_with_max_prepared_statements_0() {
    // As PgBouncer: 0 turns the pooler's statement handling off, and names go to whichever
    // server the client has (here the pool's only one).
    let pooler = Cfg::new("transaction", "pool_size: 1")
        .extra("max_prepared_statements: 0")
        .start();
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    let mut m = parse_msg("stmt1", "SELECT 1", &[]);
    m.extend(describe_msg(b'S', "stmt1"));
    m.extend(sync_msg());
    raw.send(&m);
    let got = raw.until_ready();
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(
        got.kinds, b"1tTZ",
        "ParseComplete, the descriptions, ReadyForQuery"
    );
    drop(raw);

    let c = pooler.connect_async(APP_USER, "", APP_DB).await.unwrap();
    let stmt = c.prepare("SELECT 'named'::text").await.unwrap();
    let rows = c.query(&stmt, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "named");
}

#[test]
fn transaction_pool_size_bounds_server_connections() {
    const ROLE: &str = "t_pool_bounds";
    create_role(ROLE);
    let pooler = Cfg::new("transaction", "pool_size: 5")
        .role(ROLE)
        .extra("max_client_conn: 100")
        .start();
    let mut admin = shared_pg().admin_client();
    let clients: Vec<postgres::Client> = (0..30).map(|_| connect_as(&pooler, ROLE)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(31));
    let start = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                for _ in 0..3 {
                    let msgs = c.simple_query("SELECT pg_sleep(0.2), 'ok'")?;
                    assert!(msgs.iter().any(
                        |m| matches!(m, SimpleQueryMessage::Row(r) if r.get(1) == Some("ok"))
                    ));
                }
                Ok::<(), postgres::Error>(())
            })
        })
        .collect();
    barrier.wait();
    let flag = done.clone();
    let sampler = thread::spawn(move || {
        let mut max = 0;
        let mut samples = 0;
        while !flag.load(Ordering::SeqCst) {
            max = max.max(backends(&mut admin, ROLE));
            samples += 1;
            thread::sleep(ms(25));
        }
        (max, samples)
    });
    let mut failures = Vec::new();
    for w in workers {
        if let Err(e) = w.join().unwrap() {
            failures.push(format!("{e:?}"));
        }
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::SeqCst);
    let (max, samples) = sampler.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", pooler.log());
    assert!(samples > 10, "too few samples ({samples})");
    assert!(max <= 5, "saw {max} backends with pool_size 5");
    assert!(max >= 2, "saw only {max} backends: no concurrency");
    // 90 sleeps of 0.2 s on at most 5 servers take at least 3.6 s.
    assert!(elapsed >= ms(3400), "too fast for 5 servers: {elapsed:?}");
}

#[test]
fn transaction_reserve_pool_opens_one_extra_server_after_the_timeout() {
    const ROLE: &str = "t_reserve";
    create_role(ROLE);
    let pooler = Cfg::new("transaction", "pool_size: 1, reserve_pool_size: 1")
        .role(ROLE)
        .extra("reserve_pool_timeout: 0.5")
        .start();
    let mut admin = shared_pg().admin_client();
    let clients: Vec<postgres::Client> = (0..3).map(|_| connect_as(&pooler, ROLE)).collect();
    assert!(backends(&mut admin, ROLE) <= 1);
    let barrier = Arc::new(Barrier::new(4));
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                c.simple_query("SELECT pg_sleep(2)").map(|_| ())
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut first_two = None;
    let mut max = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        let n = backends(&mut admin, ROLE);
        if n >= 2 && first_two.is_none() {
            first_two = Some(start.elapsed());
        }
        max = max.max(n);
        thread::sleep(ms(25));
    }
    let elapsed = start.elapsed();
    for w in workers {
        w.join().unwrap().expect("pg_sleep through the pooler");
    }
    let first_two = first_two.expect("the reserve server never appeared");
    // Not before reserve_pool_timeout (0.5 s); the upper bound only says "soon after it",
    // with room for the 200 ms janitor tick on a loaded 2-core machine (1.6 s was seen
    // with the whole suite running).
    assert!(
        first_two >= ms(400) && first_two <= ms(3000),
        "the reserve server appeared after {first_two:?}, expected ~0.5 s"
    );
    assert_eq!(max, 2, "pool 1 + reserve 1");
    // The third client had to wait for one of the first two.
    assert!(
        elapsed >= ms(3500) && elapsed < secs(8),
        "three 2 s sleeps on two servers took {elapsed:?}"
    );
}

#[test]
fn min_pool_size_opens_servers_after_first_login() {
    const ROLE: &str = "t_min_pool";
    create_role(ROLE);
    let pooler = Cfg::new("transaction", "pool_size: 5, min_pool_size: 3")
        .role(ROLE)
        .start();
    let mut admin = shared_pg().admin_client();
    let mut c = connect_as(&pooler, ROLE);
    assert_eq!(simple_value(&mut c, "SELECT 1"), "1");
    let mut n = 0;
    assert!(
        wait_until(ms(2500), || {
            n = backends(&mut admin, ROLE);
            n >= 3
        }),
        "only {n} backends 2.5 s after the first login\n{}",
        pooler.log()
    );
    thread::sleep(ms(600));
    assert_eq!(
        backends(&mut admin, ROLE),
        3,
        "more than min_pool_size for one client"
    );
    assert_eq!(simple_value(&mut c, "SELECT 2"), "2");
}

#[test]
fn transaction_pgbench_through_the_pooler() {
    let pg = shared_pg();
    pg.admin_sql("CREATE DATABASE pool_bench OWNER app");
    run_pgbench(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        "pool_bench",
        &["-i", "-s", "1", "-q"],
    )
    .expect_success();
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &format!("{}\n", userlist_entry(APP_USER, APP_PASSWORD)),
    );
    let pooler = setup.start(&format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         workers: 1\n\
         auth_type: scram-sha-256\n\
         auth_file: @DIR@/userlist.txt\n\
         pool_mode: transaction\n\
         max_client_conn: 200\n\
         databases:\n  \
           pool_bench: {{ host: 127.0.0.1, port: {}, pool_size: 10 }}\n",
        pg.port()
    ));
    let runs: [&[&str]; 3] = [
        &["-S", "-c", "50", "-j", "2", "-T", "5"],
        &["-S", "-M", "extended", "-c", "20", "-j", "2", "-T", "5"],
        &["-c", "10", "-j", "2", "-T", "5"],
    ];
    for args in runs {
        let out = run_pgbench(pooler.port(), APP_USER, APP_PASSWORD, "pool_bench", args);
        let stdout = out.expect_success();
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "pgbench {args:?} had failures:\n{out}"
        );
        let processed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no transaction count:\n{out}"));
        assert!(
            processed > 50,
            "pgbench {args:?} did almost nothing:\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------
// Statement mode
// ---------------------------------------------------------------------------

#[test]
fn statement_mode_single_statements_work() {
    let pooler = Cfg::new("statement", "pool_size: 1").start();
    let mut a = connect_as(&pooler, APP_USER);
    let mut b = connect_as(&pooler, APP_USER);
    for i in 0..10 {
        assert_eq!(simple_value(&mut a, &format!("SELECT {i}")), i.to_string());
        let rows = b
            .query_typed("SELECT $1::int4 * 3", &[(&i, Type::INT4)])
            .unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), i * 3);
    }
    // Several statements in one simple Query run in one implicit transaction.
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    let out = raw.simple("SELECT 1; SELECT 2");
    assert!(out.error.is_none(), "{out:?}");
    assert_eq!(out.column(), ["1", "2"]);
    assert_eq!(out.tags, ["SELECT 1", "SELECT 1"]);
    assert_eq!(out.status, b'I');
    assert_eq!(raw.value("SELECT 'again'"), "again");
    assert_eq!(
        simple_value(&mut a, "SELECT 'a still works'"),
        "a still works"
    );
}

#[tokio::test]
async fn statement_mode_refuses_transaction_blocks() {
    let pooler = Cfg::new("statement", "pool_size: 1").start();
    // Raw first, to see exactly what reaches the client.
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    assert_eq!(raw.value("SELECT 1"), "1");
    raw.send(&query_msg("BEGIN"));
    let got = raw.until_eof();
    let kinds: String = got.iter().map(|(t, _)| *t as char).collect();
    let error = got
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, body)| Fields::parse(body))
        .unwrap_or_else(|| {
            panic!(
                "no ErrorResponse before the close; got messages {kinds:?}\n{}",
                pooler.log()
            )
        });
    // PgBouncer's words and SQLSTATE (08P01, which PostgREST, for one, looks for), then
    // the close.
    assert_eq!(error.code(), "08P01", "{error:?}");
    assert_eq!(
        error.message(),
        "transaction blocks not allowed in statement pooling mode"
    );
    assert_eq!(error.severity(), "FATAL");

    // A whole transaction block sent at once is refused too: PgBouncer closes at the
    // first ReadyForQuery inside a transaction, not only at one that ends the pipeline.
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    let mut pipeline = query_msg("BEGIN");
    pipeline.extend(query_msg("SELECT 1"));
    pipeline.extend(query_msg("COMMIT"));
    raw.send(&pipeline);
    let got = raw.until_eof();
    let kinds: String = got.iter().map(|(t, _)| *t as char).collect();
    let error = got
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, body)| Fields::parse(body))
        .unwrap_or_else(|| panic!("pipelined BEGIN: no ErrorResponse; got {kinds:?}"));
    assert_eq!(
        (error.severity(), error.code(), error.message()),
        (
            "FATAL",
            "08P01",
            "transaction blocks not allowed in statement pooling mode"
        ),
        "pipelined BEGIN, got {kinds:?}"
    );
    assert!(
        !got.iter().any(|(t, body)| *t == b'Z' && body[..] == [b'I']),
        "the pipelined transaction block ran to its end: {kinds:?}"
    );

    let c = pooler.connect_async(APP_USER, "", APP_DB).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let e = c
        .simple_query("BEGIN")
        .await
        .expect_err("BEGIN in statement mode");
    assert_eq!(tokio_code(&e), Some("08P01"), "{e:?}");
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some("transaction blocks not allowed in statement pooling mode")
    );
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "client not closed"
    );
    // The only server is not left inside that transaction.
    let c = pooler.connect_async(APP_USER, "", APP_DB).await.unwrap();
    // Simple protocol: in the extended protocol statement_timestamp() is the Execute's
    // arrival, later than the transaction start even outside a transaction block.
    let rows = c
        .simple_query("SELECT txid_current_if_assigned() IS NULL AND now() = statement_timestamp()")
        .await
        .unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(
        value.as_deref(),
        Some("t"),
        "the server is still in a transaction"
    );
    let mut raw = Raw::connect(pooler.port(), &[("user", APP_USER), ("database", APP_DB)]);
    let out = raw.simple("SELECT 42");
    assert_eq!(out.status, b'I', "{out:?}");
    assert_eq!(out.column(), ["42"]);
}

// ---------------------------------------------------------------------------
// Per-user pool mode
// ---------------------------------------------------------------------------

/// PgBouncer 1.23 and later: a user's `pool_size` wins over the database's; a user
/// without one gets the database's.
#[test]
fn user_pool_size_overrides_the_database() {
    const ROLE: &str = "t_user_pool_size";
    create_role(ROLE);
    let pooler = Cfg::new("session", "pool_size: 1")
        .role(ROLE)
        .extra(&format!(
            "query_wait_timeout: 5
users:
  {ROLE}: {{ pool_size: 3 }}"
        ))
        .start();
    // Three sessions of the user at once: three backends, not the database's one.
    let mut held: Vec<postgres::Client> = (0..3).map(|_| connect_as(&pooler, ROLE)).collect();
    let pids: BTreeSet<i32> = held.iter_mut().map(backend_pid).collect();
    assert_eq!(pids.len(), 3, "{pids:?}\n{}", pooler.log());
    // And no more: a fourth waits for one of them.
    let (rx, handle) = query_in_thread(connect_as(&pooler, ROLE), "SELECT pg_backend_pid()");
    assert!(
        rx.recv_timeout(ms(700)).is_err(),
        "a fourth session got a server past the user's pool_size"
    );
    drop(held.pop());
    let pid = rx
        .recv_timeout(secs(5))
        .expect("the fourth session did not get the freed server")
        .expect("the fourth session's query failed");
    assert!(pids.contains(&pid.parse().unwrap()), "{pid} {pids:?}");
    handle.join().unwrap();

    // A user without a pool_size of its own gets the database's: one.
    let mut first = connect_as(&pooler, APP_USER);
    backend_pid(&mut first);
    let (rx, handle) = query_in_thread(connect_as(&pooler, APP_USER), "SELECT pg_backend_pid()");
    assert!(
        rx.recv_timeout(ms(700)).is_err(),
        "a second session of app got a server past the database's pool_size"
    );
    drop(first);
    rx.recv_timeout(secs(5))
        .expect("the second session of app did not get the server")
        .expect("the second session's query failed");
    handle.join().unwrap();
}

#[test]
fn user_pool_mode_overrides_the_database() {
    const ROLE: &str = "t_session_user";
    create_role(ROLE);
    let pooler = Cfg::new("transaction", "pool_size: 1, pool_mode: transaction")
        .role(ROLE)
        .extra(&format!("users:\n  {ROLE}: {{ pool_mode: session }}"))
        .start();
    let mut s = connect_as(&pooler, ROLE);
    let pid = backend_pid(&mut s);
    s.batch_execute("CREATE TEMP TABLE user_tmp (x int)")
        .unwrap();
    for i in 0..5 {
        s.batch_execute(&format!("INSERT INTO user_tmp VALUES ({i})"))
            .unwrap();
        assert_eq!(
            simple_value(&mut s, "SELECT count(*) FROM user_tmp"),
            (i + 1).to_string()
        );
    }
    // Session mode for this user: a second session waits for the first.
    let other = connect_as(&pooler, ROLE);
    let (rx, handle) = query_in_thread(
        other,
        "SELECT coalesce(to_regclass('pg_temp.user_tmp')::text, 'none') || ' ' || pg_backend_pid()",
    );
    assert!(
        rx.recv_timeout(ms(700)).is_err(),
        "a session-mode user's second session got the only server"
    );
    // Meanwhile the database's own mode (transaction) holds for app.
    let mut a = connect_as(&pooler, APP_USER);
    let mut b = connect_as(&pooler, APP_USER);
    for _ in 0..3 {
        assert_eq!(simple_value(&mut a, "SELECT 'a'"), "a");
        assert_eq!(simple_value(&mut b, "SELECT 'b'"), "b");
    }
    drop(s);
    let got = rx
        .recv_timeout(secs(5))
        .expect("the second session did not get the server")
        .expect("second session query failed");
    assert_eq!(
        got,
        format!("none {pid}"),
        "temp table leaked or other server"
    );
    handle.join().unwrap();
}

/// server_round_robin hands out the server released first, so one client's transactions
/// go round every server of the pool; by default the one released last goes next (LIFO).
#[test]
fn server_round_robin_spreads_transactions_over_the_servers() {
    for (round_robin, want_distinct) in [(false, 1), (true, 2)] {
        let pooler = Cfg::new("transaction", "pool_size: 2")
            .extra(&format!("server_round_robin: {round_robin}"))
            .start();
        // Two transactions at once: the pool opens both servers.
        let mut a = connect_as(&pooler, APP_USER);
        let mut b = connect_as(&pooler, APP_USER);
        simple_value(&mut a, "BEGIN; SELECT 1");
        simple_value(&mut b, "BEGIN; SELECT 1");
        simple_value(&mut a, "COMMIT; SELECT 1");
        simple_value(&mut b, "COMMIT; SELECT 1");
        let pids: Vec<i32> = (0..4).map(|_| backend_pid(&mut a)).collect();
        let distinct: std::collections::BTreeSet<i32> = pids.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            want_distinct,
            "round robin {round_robin}: {pids:?}"
        );
        if round_robin {
            assert!(pids.windows(2).all(|w| w[0] != w[1]), "{pids:?}");
        }
    }
}

/// What a maintenance script that resizes a pool relies on: a RELOAD that raises the pool
/// size serves the clients already queued, with no reconnect, and one that lowers it
/// closes the servers over it as they come free ("too many servers in the pool").
#[test]
fn reload_with_a_changed_pool_size_serves_the_queue_and_closes_the_extra_servers() {
    let role = "pool_resize";
    create_role(role);
    let sized = |n: u32| Cfg::new("transaction", &format!("pool_size: {n}")).role(role);
    let pooler = sized(1).start();
    let mut admin = shared_pg().admin_client();
    let mut holder = pooler.connect(role, role, APP_DB);
    simple_value(&mut holder, "BEGIN; SELECT 1");
    let port = pooler.port();
    let queued = thread::spawn(move || {
        let mut c = postgres::Config::new()
            .host(LOCALHOST)
            .port(port)
            .user(role)
            .password(role)
            .dbname(APP_DB)
            .connect(postgres::NoTls)
            .unwrap();
        let start = Instant::now();
        let v = simple_value(&mut c, "SELECT 7");
        (v, start.elapsed(), c)
    });
    thread::sleep(Duration::from_millis(500));
    assert!(!queued.is_finished(), "not queued behind the one server");
    pooler.rewrite_config(&sized(2).yaml());
    pooler.reload();
    let (v, waited, mut queued) = queued.join().unwrap();
    assert_eq!(v, "7");
    assert!(
        waited < Duration::from_secs(5),
        "served {waited:?} after it asked"
    );
    assert_eq!(backends(&mut admin, role), 2);
    simple_value(&mut holder, "COMMIT; SELECT 1");

    pooler.rewrite_config(&sized(1).yaml());
    pooler.reload();
    assert!(
        wait_until(Duration::from_secs(5), || backends(&mut admin, role) == 1),
        "{} servers after the pool size went down to 1\n{}",
        backends(&mut admin, role),
        pooler.log()
    );
    assert!(pooler.log().contains("too many servers in the pool"));
    // Both clients are still served, in turn, by the one server left.
    assert_eq!(simple_value(&mut holder, "SELECT 1"), "1");
    assert_eq!(simple_value(&mut queued, "SELECT 2"), "2");
    assert_eq!(backends(&mut admin, role), 1);
}
