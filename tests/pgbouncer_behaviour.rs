//! Behaviours checked point by point against PgBouncer 1.25 (issue 15).

mod common;

use std::thread;
use std::time::Duration;

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
