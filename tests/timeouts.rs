//! Every pooler timeout, with small values: the exact error a client sees, and when it sees it.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use postgres::SimpleQueryMessage;

/// Password of every role these tests create (one role per test, so counts
/// in pg_stat_activity never mix with parallel tests).
const PW: &str = "timeout-pw";

/// The janitor runs every 200 ms, and the machine is busy with parallel
/// tests: a timeout may fire this much after it expires.
const LATE: Duration = Duration::from_millis(600);
/// A timeout may look this much early, since the pooler's clock starts a
/// little after ours (accept, read) but its cached loop time can lag.
const EARLY: Duration = Duration::from_millis(50);

fn secs_f(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn create_role(role: &str) {
    shared_pg().admin_sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{PW}'"));
}

/// A one-worker pooler (pools are per worker) with `auth_type: plain`, an
/// auth file holding `role`'s password, `settings` (top-level YAML lines)
/// and database `app` on 127.0.0.1:`server_port`.
fn pooler_at(role: &str, settings: &str, server_port: u16) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", userlist_entry(role, PW)));
    setup.start(&format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         workers: 1\n\
         auth_type: plain\n\
         auth_file: @DIR@/userlist.txt\n\
         {settings}\n\
         databases:\n  \
           app:\n    \
             host: 127.0.0.1\n    \
             port: {server_port}\n    \
             dbname: app\n"
    ))
}

/// [`pooler_at`] the shared PostgreSQL.
fn pooler(role: &str, settings: &str) -> Pooler {
    pooler_at(role, settings, shared_pg().port())
}

fn connect(pooler: &Pooler, role: &str) -> postgres::Client {
    pooler.connect(role, PW, APP_DB)
}

fn assert_took(took: Duration, timeout: Duration, late: Duration, what: &str) {
    assert!(
        took + EARLY >= timeout && took <= timeout + late,
        "{what}: took {took:?}, expected {timeout:?} (+ at most {late:?})"
    );
}

/// SQLSTATE and message of a server/pooler error; panics on any other error.
fn db_error(e: &postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The first column of the first row of `sql`.
fn first_value(c: &mut postgres::Client, sql: &str) -> Result<String, postgres::Error> {
    let msgs = c.simple_query(sql)?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row")))
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    first_value(c, "SELECT pg_backend_pid()")
        .expect("SELECT pg_backend_pid()")
        .parse()
        .expect("pid")
}

fn backend_exists(admin: &mut postgres::Client, pid: i32) -> bool {
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .expect("query pg_stat_activity")
        .get(0);
    n > 0
}

fn backends_of(admin: &mut postgres::Client, role: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend'",
            &[&role],
        )
        .expect("query pg_stat_activity")
        .get(0)
}

fn assert_fatal(e: &wire::Fields, code: &str, message: &str) {
    assert_eq!(
        (e.severity(), e.code(), e.message()),
        ("FATAL", code, message),
        "{e:?}"
    );
}

#[test]
fn client_login_timeout_closes_a_half_sent_startup_packet() {
    let pooler = pooler("t_login_half", "client_login_timeout: 1");
    let start = Instant::now();
    let mut s = wire::connect(pooler.port());
    let packet = wire::startup_packet(&[("user", "t_login_half"), ("database", APP_DB)]);
    s.write_all(&packet[..packet.len() / 2]).unwrap();
    let err = wire::read_error(&mut s);
    let took = start.elapsed();
    assert_fatal(&err, "08P01", "client_login_timeout");
    wire::assert_closed(&mut s);
    assert_took(
        took,
        secs_f(1.0),
        Duration::from_millis(500),
        "client_login_timeout",
    );
    assert!(
        pooler.wait_for_log(
            "closing because: client_login_timeout",
            Duration::from_secs(2)
        ),
        "{}",
        pooler.log()
    );
}

#[test]
fn client_login_timeout_closes_a_client_that_never_answers_the_password_request() {
    create_role("t_login_pw");
    let pooler = pooler("t_login_pw", "client_login_timeout: 1");
    // Logged in before the slow client: the login timer must not touch it.
    let mut early = connect(&pooler, "t_login_pw");
    let start = Instant::now();
    let mut s = wire::connect(pooler.port());
    s.write_all(&wire::startup_packet(&[
        ("user", "t_login_pw"),
        ("database", APP_DB),
    ]))
    .unwrap();
    let wire::Message { tag, body } = wire::next_message(&mut s).expect("password request");
    assert_eq!(
        (tag, body.as_slice()),
        (b'R', &[0, 0, 0, 3][..]),
        "expected AuthenticationCleartextPassword"
    );
    let err = wire::read_error(&mut s);
    let took = start.elapsed();
    assert_fatal(&err, "08P01", "client_login_timeout");
    wire::assert_closed(&mut s);
    assert_took(
        took,
        secs_f(1.0),
        Duration::from_millis(500),
        "client_login_timeout",
    );
    assert_eq!(
        first_value(&mut early, "SELECT 7").expect("a logged-in client outlives the login timeout"),
        "7"
    );
}

#[test]
fn client_idle_timeout_closes_an_idle_raw_client_with_a_fatal() {
    create_role("t_idle_raw");
    let pooler = pooler(
        "t_idle_raw",
        "pool_mode: transaction\nclient_idle_timeout: 1",
    );
    let mut s = wire::login(pooler.port(), "t_idle_raw", PW);
    let (rows, status) = wire::run_query(&mut s, "SELECT 1");
    assert_eq!((rows, status), (vec!["1".to_string()], b'I'));
    let idle_since = Instant::now();
    let err = wire::read_error(&mut s);
    let took = idle_since.elapsed();
    assert_fatal(&err, "08P01", "client_idle_timeout");
    wire::assert_closed(&mut s);
    assert_took(took, secs_f(1.0), LATE, "client_idle_timeout");
}

#[test]
fn client_idle_timeout_spares_busy_clients_and_closes_idle_ones() {
    create_role("t_idle_busy");
    let pooler = pooler(
        "t_idle_busy",
        "pool_mode: transaction\nclient_idle_timeout: 1",
    );
    let idle = AsyncClient::connect(&pooler, "t_idle_busy", PW, APP_DB);
    let mut busy = connect(&pooler, "t_idle_busy");
    idle.first_value("SELECT 1").unwrap();
    let idle_since = Instant::now();
    // 2.4 s of a query every 0.2 s: more than twice the timeout.
    for i in 0..12 {
        let v = first_value(&mut busy, &format!("SELECT {i}"))
            .unwrap_or_else(|e| panic!("busy client's query {i} failed: {e:?}"));
        assert_eq!(v, i.to_string());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(idle_since.elapsed() > secs_f(2.0));
    let err = idle
        .first_value("SELECT 1")
        .expect_err("the idle client's query worked after client_idle_timeout");
    // The FATAL came while the client was idle: depending on what the
    // library read first it is the query's error or just the end of the
    // connection (the raw test reads the message itself).
    let as_fatal = err.as_db_error().map(|db| (db.code().code(), db.message()));
    assert!(
        err.is_closed() || as_fatal == Some(("08P01", "client_idle_timeout")),
        "{err:?}"
    );
    assert_eq!(
        first_value(&mut busy, "SELECT 'still here'").unwrap(),
        "still here"
    );
    assert!(
        pooler
            .log()
            .contains("closing because: client_idle_timeout"),
        "{}",
        pooler.log()
    );
}

#[test]
fn query_wait_timeout_fails_a_query_queued_behind_a_busy_pool() {
    create_role("t_qwait");
    let pooler = pooler(
        "t_qwait",
        "pool_mode: transaction\ndefault_pool_size: 1\nquery_wait_timeout: 1",
    );
    let mut a = connect(&pooler, "t_qwait");
    let b = AsyncClient::connect(&pooler, "t_qwait", PW, APP_DB);
    let sleeper = thread::spawn(move || a.simple_query("SELECT pg_sleep(3)").map(|_| ()));
    let mut admin = shared_pg().admin_client();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 't_qwait' \
                     AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                    &[],
                )
                .unwrap()
                .get(0);
            n == 1
        }),
        "client A's sleep never started"
    );
    let start = Instant::now();
    let err = b
        .first_value("SELECT 1")
        .expect_err("client B was served although the only server was busy");
    let took = start.elapsed();
    assert_eq!(
        db_error(&err),
        ("08P01".to_string(), "query_wait_timeout".to_string())
    );
    assert_took(took, secs_f(1.0), LATE, "query_wait_timeout");
    sleeper
        .join()
        .unwrap()
        .expect("client A's query should finish normally");
}

#[test]
fn query_timeout_fails_the_query_and_closes_its_backend() {
    create_role("t_qtimeout");
    // PostgreSQL only notices a vanished client during pg_sleep with this.
    shared_pg().admin_sql("ALTER ROLE t_qtimeout SET client_connection_check_interval = '100ms'");
    let pooler = pooler(
        "t_qtimeout",
        "pool_mode: transaction\ndefault_pool_size: 1\nquery_timeout: 1",
    );
    let c = AsyncClient::connect(&pooler, "t_qtimeout", PW, APP_DB);
    c.first_value("SELECT pg_sleep(0.5)::text")
        .expect("a query shorter than query_timeout must work");
    let pid: i32 = c
        .first_value("SELECT pg_backend_pid()")
        .unwrap()
        .parse()
        .unwrap();
    let start = Instant::now();
    let err = c
        .first_value("SELECT pg_sleep(5)::text")
        .expect_err("pg_sleep(5) outlived query_timeout 1");
    let took = start.elapsed();
    assert_eq!(
        db_error(&err),
        ("08P01".to_string(), "query_timeout".to_string())
    );
    assert_took(took, secs_f(1.0), LATE, "query_timeout");
    let mut admin = shared_pg().admin_client();
    assert!(
        wait_until(Duration::from_secs(2), || !backend_exists(&mut admin, pid)),
        "backend {pid} still exists: the pooler kept the server connection"
    );
    let mut next = connect(&pooler, "t_qtimeout");
    let new_pid = backend_pid(&mut next);
    assert_ne!(new_pid, pid, "the timed-out backend was reused");
}

#[test]
fn idle_transaction_timeout_closes_the_client_and_its_server() {
    create_role("t_idletx");
    shared_pg().admin_sql_in(
        APP_DB,
        "CREATE TABLE t_idletx_rows (x int); GRANT ALL ON t_idletx_rows TO t_idletx;",
    );
    let pooler = pooler(
        "t_idletx",
        "pool_mode: transaction\ndefault_pool_size: 1\nidle_transaction_timeout: 1",
    );
    let mut s = wire::login(pooler.port(), "t_idletx", PW);
    let (rows, status) = wire::run_query(
        &mut s,
        "BEGIN; INSERT INTO t_idletx_rows VALUES (1); SELECT pg_backend_pid()",
    );
    assert_eq!(status, b'T', "expected to be in a transaction block");
    let pid: i32 = rows[0].parse().unwrap();
    let idle_since = Instant::now();
    let err = wire::read_error(&mut s);
    let took = idle_since.elapsed();
    assert_fatal(&err, "08P01", "idle transaction timeout");
    wire::assert_closed(&mut s);
    assert_took(took, secs_f(1.0), LATE, "idle_transaction_timeout");

    let mut admin = shared_pg().admin_client();
    assert!(
        wait_until(Duration::from_secs(2), || !backend_exists(&mut admin, pid)),
        "backend {pid}, idle in a transaction, was kept"
    );
    let mut next = wire::login(pooler.port(), "t_idletx", PW);
    let (rows, status) = wire::run_query(&mut next, "SELECT count(*) FROM t_idletx_rows");
    assert_eq!(
        (rows, status),
        (vec!["0".to_string()], b'I'),
        "the next client saw the abandoned transaction"
    );
}

/// transaction_timeout (PgBouncer 1.25) counts from a transaction's first query, however
/// busy the client keeps it, and spares a client whose statements each commit.
#[test]
fn transaction_timeout_ends_a_long_transaction_however_busy() {
    create_role("t_txto");
    let pooler = pooler(
        "t_txto",
        "pool_mode: transaction\ntransaction_timeout: 2\nidle_transaction_timeout: 30",
    );
    let mut calm = wire::login(pooler.port(), "t_txto", PW);
    let mut s = wire::login(pooler.port(), "t_txto", PW);
    let (_, status) = wire::run_query(&mut s, "BEGIN; SELECT 1");
    assert_eq!(status, b'T', "expected to be in a transaction block");
    let began = Instant::now();
    let (err, took) = loop {
        let (rows, status) = wire::run_query(&mut calm, "SELECT 2");
        assert_eq!((rows, status), (vec!["2".to_string()], b'I'));
        thread::sleep(Duration::from_millis(200));
        s.write_all(&wire::query("SELECT 1")).unwrap();
        let a = wire::read_answer(&mut s);
        if let Some(err) = a.error {
            break (err, began.elapsed());
        }
        assert_eq!(a.values, ["1"]);
        assert!(began.elapsed() < secs_f(4.0), "no transaction timeout");
    };
    assert_fatal(&err, "08P01", "transaction timeout");
    wire::assert_closed(&mut s);
    // Within one janitor tick and one 200 ms step of the limit.
    assert_took(took, secs_f(2.0), LATE, "transaction_timeout");
    // The autocommit client, busy for as long, is still served.
    let (rows, _) = wire::run_query(&mut calm, "SELECT 3");
    assert_eq!(rows, ["3"]);
}

/// PgBouncer 1.25's per-user timeouts: a `users` entry's query_timeout wins over the
/// global one for that user's pool, and another user keeps the global one.
#[test]
fn a_users_query_timeout_wins_over_the_global_one() {
    create_role("t_uqt");
    create_role("t_uqt_other");
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &format!(
            "{}\n{}\n",
            userlist_entry("t_uqt", PW),
            userlist_entry("t_uqt_other", PW)
        ),
    );
    let pooler = setup.start(&format!(
        "listen_addr: 127.0.0.1\nlisten_port: @PORT@\nworkers: 1\nauth_type: plain\n\
         auth_file: @DIR@/userlist.txt\nquery_timeout: 30\n\
         users:\n  t_uqt: {{ query_timeout: 1 }}\n\
         databases:\n  app: {{ host: 127.0.0.1, port: {}, dbname: app }}\n",
        shared_pg().port()
    ));
    let c = AsyncClient::connect(&pooler, "t_uqt", PW, APP_DB);
    let start = Instant::now();
    let err = c
        .first_value("SELECT pg_sleep(5)::text")
        .expect_err("pg_sleep(5) outlived the user's query_timeout 1");
    assert_eq!(
        db_error(&err),
        ("08P01".to_string(), "query_timeout".to_string())
    );
    assert_took(
        start.elapsed(),
        secs_f(1.0),
        LATE,
        "users.t_uqt.query_timeout",
    );
    let other = AsyncClient::connect(&pooler, "t_uqt_other", PW, APP_DB);
    assert_eq!(
        other.first_value("SELECT pg_sleep(1.5)::text").unwrap(),
        "",
        "another user has the global query_timeout"
    );
}

/// query_wait_notify (PgBouncer's default 5 s): a client queued that long gets PgBouncer's
/// notice once, and its query still runs when a server comes free.
#[test]
fn query_wait_notify_tells_a_queued_client_once() {
    create_role("t_qwn");
    let pooler = pooler(
        "t_qwn",
        "pool_mode: transaction\ndefault_pool_size: 1\nquery_wait_notify: 1",
    );
    let mut holder = wire::login(pooler.port(), "t_qwn", PW);
    let (_, status) = wire::run_query(&mut holder, "BEGIN; SELECT 1");
    assert_eq!(status, b'T');
    let mut queued = wire::login(pooler.port(), "t_qwn", PW);
    let asked = Instant::now();
    queued.write_all(&wire::query("SELECT 42")).unwrap();
    let m = wire::read_next(&mut queued).unwrap();
    let took = asked.elapsed();
    assert_eq!(m.tag, b'N', "{m:?}");
    let f = wire::error_fields(&m.body);
    assert_eq!(
        (f[&'S'].as_str(), f[&'C'].as_str(), f[&'M'].as_str()),
        (
            "NOTICE",
            "00000",
            "No server connection available in postgres backend, client being queued"
        )
    );
    assert_took(took, secs_f(1.0), LATE, "query_wait_notify");
    // Still queued a second later: no second notice.
    thread::sleep(Duration::from_millis(1500));
    let (_, status) = wire::run_query(&mut holder, "COMMIT");
    assert_eq!(status, b'I');
    let mut tags = Vec::new();
    let mut values = Vec::new();
    loop {
        let m = wire::read_next(&mut queued).unwrap();
        tags.push(m.tag);
        if m.tag == b'D' {
            values.push(String::from_utf8_lossy(&m.body[6..]).into_owned());
        }
        if m.tag == b'Z' {
            break;
        }
    }
    assert!(!tags.contains(&b'N'), "a second notice: {tags:?}");
    assert_eq!(values, ["42"]);
}

#[test]
fn server_idle_timeout_closes_an_unused_backend() {
    create_role("t_srvidle");
    let pooler = pooler(
        "t_srvidle",
        "pool_mode: session\nserver_idle_timeout: 1\nmin_pool_size: 0",
    );
    let mut admin = shared_pg().admin_client();
    let mut c = connect(&pooler, "t_srvidle");
    first_value(&mut c, "SELECT 1").unwrap();
    drop(c);
    let left = Instant::now();
    assert_eq!(
        backends_of(&mut admin, "t_srvidle"),
        1,
        "the server connection should stay pooled after its client left"
    );
    assert!(
        wait_until(Duration::from_secs(4), || backends_of(
            &mut admin,
            "t_srvidle"
        ) == 0),
        "the idle backend was never closed\n{}",
        pooler.log()
    );
    let took = left.elapsed();
    // Within timeout + 1 s; the lower bound allows for the reset query.
    assert!(
        took >= secs_f(0.9) && took <= secs_f(2.0),
        "backend closed after {took:?}, expected about 1 s"
    );
    assert!(
        pooler
            .log()
            .contains("closing because: server idle timeout"),
        "{}",
        pooler.log()
    );
}

#[test]
fn server_lifetime_replaces_an_old_backend() {
    create_role("t_lifetime");
    let pooler = pooler(
        "t_lifetime",
        "pool_mode: transaction\ndefault_pool_size: 1\nserver_lifetime: 1",
    );
    let mut c = connect(&pooler, "t_lifetime");
    let first = backend_pid(&mut c);
    assert_eq!(
        backend_pid(&mut c),
        first,
        "a young server connection should be reused"
    );
    // The scenario itself: two transactions more than server_lifetime apart.
    thread::sleep(secs_f(1.5));
    let second = backend_pid(&mut c);
    assert_ne!(second, first, "backend outlived server_lifetime");
    let mut admin = shared_pg().admin_client();
    assert!(
        wait_until(Duration::from_secs(2), || !backend_exists(
            &mut admin, first
        )),
        "the old backend {first} is still connected"
    );
}

/// Logs in through a pooler whose PostgreSQL never comes up; the error and how long it took.
fn login_to_absent_server(pooler: &Pooler, role: &str) -> ((String, String), Duration) {
    let start = Instant::now();
    match pooler.try_connect(role, PW, APP_DB) {
        Ok(_) => panic!("logged in without a server\n{}", pooler.log()),
        Err(e) => (db_error(&e), start.elapsed()),
    }
}

#[test]
fn server_connect_timeout_gives_up_on_a_silent_server() {
    // Accepts TCP (the kernel completes the handshake) but never speaks.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let pooler = pooler_at(
        "t_silent",
        "server_connect_timeout: 1\nclient_login_timeout: 3",
        port,
    );
    thread::scope(|s| {
        let login = s.spawn(|| login_to_absent_server(&pooler, "t_silent"));
        // The pooler connects, waits server_connect_timeout for a word, then hangs up.
        let (mut server, _) = silent.accept().unwrap();
        let accepted = Instant::now();
        server.set_read_timeout(Some(secs_f(5.0))).unwrap();
        let mut buf = [0u8; 512];
        let mut got = 0;
        let closed = loop {
            match std::io::Read::read(&mut server, &mut buf) {
                Ok(0) => break accepted.elapsed(),
                Ok(n) => got += n,
                Err(e) => panic!("the pooler never hung up: {e}\n{}", pooler.log()),
            }
        };
        assert!(got > 0, "no startup packet");
        assert_took(closed, secs_f(1.0), LATE, "server_connect_timeout");
        assert!(
            wait_until(secs_f(2.0), || pooler.log().contains(
                "server login failed: FATAL 08006: server_connect_timeout"
            )),
            "{}",
            pooler.log()
        );
        // The pool never logged in, so its client waits for PostgreSQL, as PgBouncer's
        // does, until client_login_timeout.
        let ((code, message), took) = login.join().unwrap();
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("08P01", "client_login_timeout (server down)")
        );
        assert_took(took, secs_f(3.0), LATE, "client_login_timeout");
    });
}

/// A pool that never logged in keeps its clients while PostgreSQL's port is closed, tries
/// again every server_login_retry, and lets them go at client_login_timeout with
/// PgBouncer's words; a client arriving after a failed try waits too.
#[test]
fn a_cold_pool_retries_a_closed_port_until_client_login_timeout() {
    let port = free_port();
    let pooler = pooler_at(
        "t_closed",
        "server_login_retry: 1\nclient_login_timeout: 4",
        port,
    );
    let failures = || pooler.log().matches("server login failed").count();
    thread::scope(|s| {
        let first = s.spawn(|| login_to_absent_server(&pooler, "t_closed"));
        assert!(
            wait_until(secs_f(2.0), || failures() >= 1),
            "{}",
            pooler.log()
        );
        let second = s.spawn(|| login_to_absent_server(&pooler, "t_closed"));
        for (i, login) in [first, second].into_iter().enumerate() {
            let ((code, message), took) = login.join().unwrap();
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("08P01", "client_login_timeout (server down)"),
                "client {i}"
            );
            assert!(took >= secs_f(2.5), "client {i} gave up after {took:?}");
        }
    });
    // One try at the first login, then one per server_login_retry: 4 or 5 in 4 s, not
    // a reconnect loop and not a single try.
    let tries = failures();
    assert!((3..=6).contains(&tries), "{tries} tries\n{}", pooler.log());
    assert!(
        pooler
            .log()
            .contains("could not connect to server 127.0.0.1"),
        "{}",
        pooler.log()
    );
}

/// query_wait_timeout also bounds a login waiting for the pool's first server, when it
/// is the shorter of the two.
#[test]
fn query_wait_timeout_bounds_a_login_waiting_for_postgres() {
    let port = free_port();
    let pooler = pooler_at(
        "t_closed_qwt",
        "server_login_retry: 1\nquery_wait_timeout: 2\nclient_login_timeout: 30",
        port,
    );
    let ((code, message), took) = login_to_absent_server(&pooler, "t_closed_qwt");
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("08P01", "query_wait_timeout")
    );
    assert_took(took, secs_f(2.0), LATE, "query_wait_timeout");
}
