//! Real client drivers (psycopg 3, asyncpg, pgJDBC, node-postgres) run against the pooler in transaction and session mode with their default prepared-statement behaviour.
//!
//! Each driver has a small program in `tests/clients/` that logs in with
//! SCRAM, opens several connections at once, uses the driver's own startup
//! parameters and prepared statements, checks every result and ends with
//! `OK <driver>`. Here we start a pooler (2 workers, `pool_size: 2`), run the
//! program as a subprocess and check what it printed: besides `OK`, the
//! number of distinct backends it saw (transaction pooling must share at most
//! 2 × 2 servers among more clients) and the names of the server-side
//! prepared statements it found (the pooler's `PGBS_…` in transaction mode,
//! the driver's own in session mode). A few deterministic psycopg scenarios
//! (`psycopg_regressions.py`, one server shared by every client) pin down the
//! prepared-statement bookkeeping those programs once tripped over.
//!
//! The drivers are installed by `scripts/test.sh` (`need_client_drivers`); a
//! missing one fails the test with a message saying so, never skips it.

mod common;

use std::process::Command;

use common::drivers::{clients_dir, run_program, Driver, PROGRAM_TIMEOUT};
use common::pg::tail;
use common::tools::clean_pg_env;
use common::*;

/// Worker processes of the pooler; pools are per worker.
const WORKERS: usize = 2;
/// `pool_size` of the database entry.
const POOL_SIZE: usize = 2;
/// Concurrent connections in transaction mode: more than the servers.
const TX_CLIENTS: usize = 6;
/// Concurrent connections in session mode: each holds a server, and 2 fit
/// even if both land on the same worker.
const SESSION_CLIENTS: usize = 2;

/// A pooler with SCRAM client auth (the auth file holds the app role's SCRAM
/// secret, so the server login is SCRAM pass-through), `WORKERS` workers and
/// `pool_size: POOL_SIZE` in `mode`.
fn start_pooler(mode: &str) -> Pooler {
    start_pooler_with(mode, WORKERS, POOL_SIZE)
}

fn start_pooler_with(mode: &str, workers: usize, pool_size: usize) -> Pooler {
    let pg = shared_pg();
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", pg.userlist_line(APP_USER)));
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: scram-sha-256\n\
         auth_file: @DIR@/userlist.txt\n\
         pool_mode: {mode}\n\
         query_wait_timeout: 60\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {}, dbname: {APP_DB}, pool_size: {pool_size} }}\n",
        pg.port()
    );
    setup.start_with_args(&yaml, &["--workers", &workers.to_string()])
}

/// What a successful program run reported.
struct Report {
    backends: usize,
    prepared_names: Vec<String>,
}

/// Runs `driver`'s program against `pooler` with `clients` connections and
/// `extra` arguments ([`run_program`]) and reads its report.
fn run_driver(
    driver: Driver,
    pooler: &Pooler,
    tag: &str,
    clients: usize,
    extra: &[&str],
) -> Report {
    let out = run_program(driver, pooler, tag, clients, extra);
    let field = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` line in the output:\n{out}"))
            .trim()
            .to_owned()
    };
    let backends = field("backends=")
        .parse()
        .unwrap_or_else(|e| panic!("bad backends= line: {e}\n{out}"));
    let prepared_names = field("prepared_names=")
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    Report {
        backends,
        prepared_names,
    }
}

/// Transaction mode: more clients than servers, at most `WORKERS ×
/// POOL_SIZE` backends seen, and the named statements the drivers created
/// live on the servers under the pooler's names.
fn transaction_mode(driver: Driver, tag: &str, extra: &[&str]) {
    let pooler = start_pooler("transaction");
    let report = run_driver(driver, &pooler, tag, TX_CLIENTS, extra);
    assert!(
        (1..=WORKERS * POOL_SIZE).contains(&report.backends),
        "{} clients used {} backends; transaction pooling allows at most {}",
        TX_CLIENTS,
        report.backends,
        WORKERS * POOL_SIZE
    );
    assert!(
        !report.prepared_names.is_empty()
            && report.prepared_names.iter().all(|n| n.starts_with("PGBS_")),
        "in transaction mode the servers should hold the pooler's PGBS_ statements, found {:?}",
        report.prepared_names
    );
}

/// Session mode: each client keeps its own backend, and its statements go
/// to the server under the driver's own names.
fn session_mode(driver: Driver, tag: &str) {
    let pooler = start_pooler("session");
    let report = run_driver(driver, &pooler, tag, SESSION_CLIENTS, &[]);
    assert_eq!(
        report.backends, SESSION_CLIENTS,
        "in session mode each client keeps one backend"
    );
    assert!(
        !report.prepared_names.is_empty()
            && report
                .prepared_names
                .iter()
                .all(|n| !n.starts_with("PGBS_")),
        "in session mode the driver's own statement names reach the server, found {:?}",
        report.prepared_names
    );
}

#[test]
fn psycopg_transaction_mode() {
    transaction_mode(Driver::Psycopg, "tx", &[]);
}

#[test]
fn psycopg_session_mode() {
    session_mode(Driver::Psycopg, "sess");
}

#[test]
fn asyncpg_transaction_mode() {
    transaction_mode(Driver::Asyncpg, "tx", &[]);
}

#[test]
fn asyncpg_session_mode() {
    session_mode(Driver::Asyncpg, "sess");
}

#[test]
fn jdbc_transaction_mode() {
    transaction_mode(Driver::Jdbc, "tx", &[]);
}

#[test]
fn jdbc_session_mode() {
    session_mode(Driver::Jdbc, "sess");
}

#[test]
fn node_postgres_transaction_mode() {
    transaction_mode(Driver::Node, "tx", &[]);
}

#[test]
fn node_postgres_session_mode() {
    session_mode(Driver::Node, "sess");
}

// ---------------------------------------------------------------------------
// Deterministic psycopg scenarios (tests/clients/psycopg_regressions.py): one
// worker with one server, so every client of the scenario shares it.
// ---------------------------------------------------------------------------

fn psycopg_regression(case: &str) {
    let pooler = start_pooler_with("transaction", 1, 1);
    let mut cmd = Command::new(find_tool("python3"));
    cmd.arg("-u")
        .arg(clients_dir().join("psycopg_regressions.py"));
    clean_pg_env(&mut cmd);
    cmd.arg(LOCALHOST)
        .arg(pooler.port().to_string())
        .args([APP_USER, APP_PASSWORD, APP_DB, case])
        .current_dir(clients_dir());
    let out = run_cmd(cmd, None, PROGRAM_TIMEOUT);
    let ok_line = format!("OK psycopg-regressions {case}");
    assert!(
        out.success() && out.stdout.lines().any(|l| l == ok_line),
        "psycopg scenario {case} failed (want exit 0 and `{ok_line}`):\n{out}\n--- pooler log (tail) ---\n{}",
        tail(&pooler.log(), 30)
    );
}

/// psycopg's `rollback()` sends `DEALLOCATE ALL` when it has prepared
/// statements; another client's statement on the same server must still run.
#[test]
fn psycopg_rollback_deallocate_all_keeps_other_statements() {
    psycopg_regression("rollback_deallocate_all");
}

/// A named Parse the server rejects must not count as prepared there.
#[test]
fn psycopg_failed_parse_is_not_remembered() {
    psycopg_regression("failed_parse");
}

/// A named Parse in an aborted transaction fails (25P02) and must not count
/// as prepared; after the rollback the same Parse must work.
#[test]
fn psycopg_parse_in_aborted_transaction_is_not_remembered() {
    psycopg_regression("aborted_parse");
}

/// A named Parse the server skipped (an earlier query of the same pipeline
/// failed) must not count as prepared.
#[test]
fn psycopg_parse_skipped_in_failed_pipeline_is_not_remembered() {
    psycopg_regression("pipeline_skipped_parse");
}
