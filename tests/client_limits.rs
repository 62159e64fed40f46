//! PgBouncer 1.24+'s client limits: max_db_client_connections and
//! max_user_client_connections, global and per database / per user, enforced
//! across all workers, with PgBouncer's words and SQLSTATE.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::wire::{error_fields, message, next_message, startup_packet};
use common::*;
use postgres::error::SqlState;

const READ_TIMEOUT: Duration = Duration::from_secs(10);
const DB_FULL: &str = "client connections exceeded (max_db_client_connections)";
const USER_FULL: &str = "client connections exceeded (max_user_client_connections)";

/// Trust auth; `app` (session) and `apptx` (transaction) on the shared server's database,
/// `app_extra` and `apptx_extra` appended to their entries; two workers.
fn start(top: &str, app_extra: &str, apptx_extra: &str, users: &str) -> Pooler {
    let port = shared_pg().port();
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         pool_mode: session\n\
         {top}\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB}{app_extra} }}\n  \
           apptx: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB}, pool_mode: transaction{apptx_extra} }}\n\
         {users}\n"
    );
    PoolerSetup::new().start_with_args(&yaml, &["--workers", "2"])
}

/// A logged-in raw client and the worker slot that serves it (the top byte of its cancel
/// secret).
struct Raw {
    s: TcpStream,
    slot: u32,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.s.write_all(&message(b'X', &[]));
    }
}

/// Logs in as `user` to `db`: the client, or the FATAL error's fields.
fn login(pooler: &Pooler, user: &str, db: &str) -> Result<Raw, HashMap<char, String>> {
    let mut s = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(&startup_packet(&[("user", user), ("database", db)]))
        .unwrap();
    let mut slot = None;
    while let Some(m) = next_message(&mut s) {
        match m.tag {
            b'K' => {
                let secret = u32::from_be_bytes(m.body[4..8].try_into().unwrap());
                slot = Some(secret >> 24);
            }
            b'Z' => {
                let slot = slot.expect("ReadyForQuery without BackendKeyData");
                return Ok(Raw { s, slot });
            }
            b'E' => {
                let f = error_fields(&m.body);
                // The pooler hangs up after its FATAL.
                assert!(
                    next_message(&mut s).is_none(),
                    "more after the error: {f:?}"
                );
                return Err(f);
            }
            _ => {}
        }
    }
    panic!(
        "{user}@{db}: the pooler closed without an error\n{}",
        pooler.log()
    );
}

fn must_login(pooler: &Pooler, user: &str, db: &str) -> Raw {
    login(pooler, user, db).unwrap_or_else(|f| panic!("{user}@{db} refused: {f:?}"))
}

fn assert_refused(pooler: &Pooler, user: &str, db: &str, text: &str) {
    let f = match login(pooler, user, db) {
        Ok(c) => panic!("{user}@{db} got in (worker {}), expected {text:?}", c.slot),
        Err(f) => f,
    };
    let get = |k: char| f.get(&k).map(String::as_str);
    assert_eq!(
        (get('S'), get('C'), get('M')),
        (Some("FATAL"), Some("08P01"), Some(text)),
        "{f:?}"
    );
}

/// Two clients of `db` served by different workers, so that a limit of 2 can only hold
/// if it is counted across workers. Clients landing on the first one's worker are sent
/// away until one lands on the other.
fn one_per_worker(pooler: &Pooler, db: &str) -> [Raw; 2] {
    let first = must_login(pooler, TRUST_USER, db);
    for _ in 0..200 {
        // The previous try's place is given back when its Terminate is read: wait for it.
        let mut next = None;
        assert!(
            wait_until(secs(5), || {
                next = login(pooler, TRUST_USER, db).ok();
                next.is_some()
            }),
            "no second client got in\n{}",
            pooler.log()
        );
        let next = next.unwrap();
        if next.slot != first.slot {
            return [first, next];
        }
    }
    panic!("200 clients in a row landed on worker {}", first.slot);
}

/// Retries a login that must succeed once a place freed by a client that left is given back.
fn login_after_leave(pooler: &Pooler, user: &str, db: &str) -> Raw {
    let mut c = None;
    assert!(
        wait_until(secs(5), || {
            c = login(pooler, user, db).ok();
            c.is_some()
        }),
        "no login to {db} after a client left\n{}",
        pooler.log()
    );
    c.unwrap()
}

#[test]
fn max_db_client_connections_holds_across_workers_and_per_database() {
    let pooler = start(
        "max_db_client_connections: 2",
        "",
        ", max_db_client_connections: 3",
        "",
    );
    // Global limit 2 for app, its two clients on different workers.
    let [a, b] = one_per_worker(&pooler, "app");
    assert_ne!(a.slot, b.slot);
    assert_refused(&pooler, TRUST_USER, "app", DB_FULL);
    // A real driver sees the same error.
    let err = pooler
        .try_connect(TRUST_USER, "", "app")
        .map(|_| ())
        .expect_err("a 3rd client of app got in");
    assert_eq!(err.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{err:?}");
    assert_eq!(err.as_db_error().map(|e| e.message()), Some(DB_FULL));
    // apptx has its own limit, 3, and its own count.
    let tx: Vec<Raw> = (0..3)
        .map(|_| must_login(&pooler, TRUST_USER, "apptx"))
        .collect();
    assert_refused(&pooler, TRUST_USER, "apptx", DB_FULL);
    // One app client leaves: its place is free again, the refused ones kept none.
    drop(a);
    let c = login_after_leave(&pooler, TRUST_USER, "app");
    assert_refused(&pooler, TRUST_USER, "app", DB_FULL);
    drop((b, c, tx));
}

#[test]
fn max_user_client_connections_holds_across_databases_and_per_user() {
    // The global limit (1) is overridden for trust_user (3); its clients of every database
    // count together.
    let pooler = start(
        "max_user_client_connections: 1",
        "",
        "",
        "users:\n  trust_user: { max_user_client_connections: 3 }",
    );
    let [a, b] = one_per_worker(&pooler, "app");
    let c = must_login(&pooler, TRUST_USER, "apptx");
    assert_refused(&pooler, TRUST_USER, "apptx", USER_FULL);
    assert_refused(&pooler, TRUST_USER, "app", USER_FULL);
    drop(c);
    let d = login_after_leave(&pooler, TRUST_USER, "apptx");
    assert_refused(&pooler, TRUST_USER, "app", USER_FULL);
    drop((a, b, d));
}

#[test]
fn a_client_that_leaves_any_way_gives_its_place_back() {
    let pooler = start("max_db_client_connections: 1", "", "", "");
    // Leaves by closing the socket without Terminate.
    let a = must_login(&pooler, TRUST_USER, "app");
    assert_refused(&pooler, TRUST_USER, "app", DB_FULL);
    let Raw { s, .. } = &a;
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(a);
    // Leaves with Terminate.
    let b = login_after_leave(&pooler, TRUST_USER, "app");
    drop(b);
    let c = login_after_leave(&pooler, TRUST_USER, "app");
    drop(c);
    // 0 means no limit: a reload lifts it for the next logins.
    pooler.rewrite_config(
        &std::fs::read_to_string(pooler.config_path())
            .unwrap()
            .replace(
                "max_db_client_connections: 1",
                "max_db_client_connections: 0",
            ),
    );
    pooler.reload();
    let mut held = Vec::new();
    assert!(
        wait_until(secs(10), || {
            match login(&pooler, TRUST_USER, "app") {
                Ok(c) => held.push(c),
                Err(_) => held.clear(),
            }
            held.len() >= 4
        }),
        "the reload did not lift the limit\n{}",
        pooler.log()
    );
}

// ---------------------------------------------------------------------------
// track_extra_parameters
// ---------------------------------------------------------------------------

fn show(c: &mut postgres::Client, name: &str) -> String {
    scalar(c, &format!("SHOW {name}")).unwrap()
}

/// One server for `apptx` (transaction pooling), so that every client gets the one another
/// client changed. `default_transaction_read_only` is reported by PostgreSQL 14+
/// (GUC_REPORT) and settable by anyone; `search_path` is not reported before 18.
fn start_tracking(track: &str) -> Pooler {
    start(track, "", ", pool_size: 1", "")
}

#[test]
fn track_extra_parameters_follows_a_reported_parameter_set_by_the_client() {
    let pooler =
        start_tracking("track_extra_parameters: [IntervalStyle, default_transaction_read_only]");
    let mut a = pooler.connect(TRUST_USER, "", "apptx");
    let mut b = pooler.connect(TRUST_USER, "", "apptx");
    assert_eq!(show(&mut a, "default_transaction_read_only"), "off");
    a.batch_execute("SET default_transaction_read_only = on")
        .unwrap();
    assert_eq!(show(&mut a, "default_transaction_read_only"), "on");
    // The same server, given to b: a's setting does not leak to it...
    assert_eq!(show(&mut b, "default_transaction_read_only"), "off");
    b.batch_execute("CREATE TEMP TABLE t_writable (x int)")
        .unwrap();
    // ...and comes back for a.
    assert_eq!(show(&mut a, "default_transaction_read_only"), "on");
    let err = a
        .batch_execute("CREATE TEMP TABLE t_readonly (x int)")
        .expect_err("a read-only transaction wrote");
    assert_eq!(
        err.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err:?}"
    );
    // Sent at startup, it is tracked from there.
    let mut c = pooler
        .client_config(TRUST_USER, "", "apptx")
        .options("-c default_transaction_read_only=on")
        .connect(postgres::NoTls)
        .unwrap();
    assert_eq!(show(&mut b, "default_transaction_read_only"), "off");
    assert_eq!(show(&mut c, "default_transaction_read_only"), "on");
    c.batch_execute("SET default_transaction_read_only = off")
        .unwrap();
    assert_eq!(show(&mut a, "default_transaction_read_only"), "on");
    assert_eq!(show(&mut c, "default_transaction_read_only"), "off");
}

#[test]
fn a_parameter_the_server_does_not_report_is_applied_from_the_startup_packet() {
    // search_path is not GUC_REPORT before PostgreSQL 18: listing it keeps what the client
    // sent at startup on every server it gets, and off the servers of others.
    let pooler = start_tracking("track_extra_parameters: search_path");
    let mut a = pooler
        .client_config(TRUST_USER, "", "apptx")
        .options("-c search_path=a_schema")
        .connect(postgres::NoTls)
        .unwrap();
    let mut b = pooler.connect(TRUST_USER, "", "apptx");
    let default = show(&mut b, "search_path");
    assert_ne!(default, "a_schema");
    assert_eq!(show(&mut a, "search_path"), "a_schema");
    assert_eq!(show(&mut b, "search_path"), default);
    assert_eq!(show(&mut a, "search_path"), "a_schema");
}

#[test]
fn show_databases_and_users_report_the_client_limits() {
    let pooler = start(
        "max_db_client_connections: 2\nmax_user_client_connections: 5\nadmin_users: [admin]",
        "",
        ", max_db_client_connections: 3",
        "users:\n  trust_user: { max_user_client_connections: 4 }",
    );
    let _held = must_login(&pooler, TRUST_USER, "app");
    let mut console = pooler.connect("admin", "", "pgbouncer");
    let dbs = query_rows(&mut console, "SHOW DATABASES");
    let db = |name: &str, col: &str| {
        dbs.iter()
            .find(|r| r.get("name") == Some(name))
            .and_then(|r| r.get(col))
            .unwrap_or_else(|| panic!("no {col} for {name}"))
            .to_string()
    };
    assert_eq!(db("app", "max_client_connections"), "2");
    assert_eq!(db("apptx", "max_client_connections"), "3");
    assert_eq!(db("app", "current_client_connections"), "1");
    let users = query_rows(&mut console, "SHOW USERS");
    let user = |name: &str| {
        users
            .iter()
            .find(|r| r.get("name") == Some(name))
            .and_then(|r| r.get("max_user_client_connections"))
            .unwrap_or_else(|| panic!("no row for {name}"))
            .to_string()
    };
    assert_eq!(user(TRUST_USER), "4");
}
