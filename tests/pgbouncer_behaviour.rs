//! Behaviours checked point by point against PgBouncer 1.25 (issue 15): the
//! shutdown signals and when min_pool_size is filled.

mod common;

use std::io;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Creates a login role only this test uses (password = its name), so
/// pg_stat_activity counts are not disturbed by parallel tests.
fn create_role(role: &str) {
    shared_pg().admin_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD {}",
        quote_literal(role)
    ));
}

fn backends(role: &str) -> i64 {
    shared_pg().count_backends(role)
}

/// One worker, trust for clients, `role` in the auth file (password = its
/// name) for the server logins; database `app` with `db` extra items.
fn start(role: &str, mode: &str, db: &str, extra: &str) -> Pooler {
    let pg = shared_pg();
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", userlist_entry(role, role)));
    let db = if db.is_empty() {
        String::new()
    } else {
        format!(", {db}")
    };
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         workers: 1\n\
         auth_type: trust\n\
         auth_file: @DIR@/userlist.txt\n\
         pool_mode: {mode}\n\
         {extra}\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {}, dbname: app{db} }}\n",
        pg.port(),
    );
    setup.start(&yaml)
}

fn refused(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

// ---------------------------------------------------------------------------
// SIGTERM and SIGINT (PgBouncer 1.23+)
// ---------------------------------------------------------------------------

/// SIGTERM is PgBouncer's "super safe shutdown": no new connections, but
/// every client, idle ones included, is served until it leaves; in
/// transaction pooling it still gets a server for each transaction.
#[test]
fn sigterm_waits_for_idle_clients_and_still_serves_them() {
    const ROLE: &str = "pb_sigterm";
    create_role(ROLE);
    let mut pooler = start(ROLE, "transaction", "", "shutdown_timeout: 30\n");
    let mut c = pooler.connect(ROLE, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    pooler.signal(libc::SIGTERM);
    assert!(
        wait_until(secs(2), || refused(pooler.port())),
        "new connections are still accepted after SIGTERM"
    );
    thread::sleep(ms(700));
    assert!(pooler.is_running(), "exited with a client still connected");
    for i in 0..3 {
        let got = scalar(&mut c, &format!("SELECT {i}"));
        assert_eq!(
            got.as_deref().ok(),
            Some(i.to_string().as_str()),
            "the idle client cannot run a query after SIGTERM: {got:?}\n{}",
            pooler.log()
        );
    }
    assert!(pooler.is_running(), "exited with a client still connected");
    let left_at = Instant::now();
    drop(c);
    let status = pooler.wait_exit(secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}\n{}",
        pooler.log()
    );
    assert!(left_at.elapsed() < secs(5));
}

/// SIGINT keeps the old safe shutdown: an idle client is closed at once
/// and the pooler exits without waiting for it to leave.
#[test]
fn sigint_closes_idle_clients_and_exits() {
    const ROLE: &str = "pb_sigint";
    create_role(ROLE);
    let mut pooler = start(ROLE, "transaction", "", "shutdown_timeout: 30\n");
    let mut c = pooler.connect(ROLE, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    pooler.signal(libc::SIGINT);
    assert!(wait_until(secs(2), || refused(pooler.port())));
    let status = pooler.wait_exit(secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGINT waited for an idle client: {status:?}\n{}",
        pooler.log()
    );
    assert!(scalar(&mut c, "SELECT 2").is_err());
}

/// A second SIGTERM during the shutdown is a fast exit, as in PgBouncer.
#[test]
fn second_sigterm_exits_at_once() {
    const ROLE: &str = "pb_sigterm2";
    create_role(ROLE);
    let mut pooler = start(ROLE, "session", "", "shutdown_timeout: 60\n");
    let mut c = pooler.connect(ROLE, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    pooler.signal(libc::SIGTERM);
    assert!(wait_until(secs(2), || refused(pooler.port())));
    assert!(pooler.is_running());
    pooler.signal(libc::SIGTERM);
    let status = pooler.wait_exit(secs(3));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}\n{}",
        pooler.log()
    );
    assert!(wait_until(secs(3), || scalar(&mut c, "SELECT 1").is_err()));
}

// ---------------------------------------------------------------------------
// min_pool_size (PgBouncer 1.21+)
// ---------------------------------------------------------------------------

/// A database with a forced user has its pool from the start: its
/// min_pool_size servers are opened before any client logs in.
#[test]
fn min_pool_size_of_a_forced_user_pool_is_filled_without_a_client() {
    const ROLE: &str = "pb_min_forced";
    create_role(ROLE);
    let pooler = start(
        ROLE,
        "transaction",
        &format!("user: {ROLE}, pool_size: 5, min_pool_size: 2"),
        "",
    );
    let mut n = 0;
    assert!(
        wait_until(secs(5), || {
            n = backends(ROLE);
            n >= 2
        }),
        "only {n} backends of the forced user 5 s after start, no client yet\n{}",
        pooler.log()
    );
    thread::sleep(ms(600));
    assert_eq!(backends(ROLE), 2, "more than min_pool_size");
    let mut c = pooler.connect(ROLE, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT current_user").unwrap(), ROLE);
}

/// Without a forced user the pool's user is only known at a login, so
/// nothing is opened before one (as in PgBouncer).
#[test]
fn min_pool_size_of_a_per_user_pool_waits_for_a_login() {
    const ROLE: &str = "pb_min_peruser";
    create_role(ROLE);
    let pooler = start(ROLE, "transaction", "pool_size: 5, min_pool_size: 2", "");
    thread::sleep(secs(1));
    assert_eq!(backends(ROLE), 0, "servers before any login");
    let mut c = pooler.connect(ROLE, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    let mut n = 0;
    assert!(
        wait_until(secs(5), || {
            n = backends(ROLE);
            n >= 2
        }),
        "only {n} backends after the login"
    );
}
