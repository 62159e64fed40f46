//! Integration-test harness: a throwaway PostgreSQL, the real `pgbouncers` binary, and client tools, all cleaned up even when a test fails.
//!
//! Each test binary does `mod common;` and uses only part of this, hence the
//! `dead_code` / `unused_imports` allowance below.
//!
//! Cleanup works in three layers, because a test binary can end in three ways:
//! - a test panics: the guards' `Drop` (unwinding) stops what they own;
//! - the binary exits (`std::process::exit`, which libtest calls when a test
//!   failed, or the binary timeout in [`cleanup`]): an `atexit` handler stops
//!   the shared PostgreSQL and kills every pooler still registered, since
//!   statics are never dropped;
//! - the binary is killed (SIGKILL, Ctrl-C): a small `sh` watchdog per
//!   resource notices its owner is gone and stops the PostgreSQL / kills the
//!   pooler's process group, then removes the temp dir.
//!
//! Set `PGBOUNCERS_TEST_KEEP=1` to keep temp dirs (logs, configs) for debugging.

#![allow(dead_code, unused_imports)]

pub mod async_client;
pub mod cleanup;
pub mod drivers;
pub mod haproxy;
pub mod pg;
pub mod pki;
pub mod pooler;
pub mod tempdir;
pub mod tls;
pub mod tools;
pub mod wire;

pub use async_client::AsyncClient;
pub use pg::{shared_pg, PgServer};
pub use pooler::{Pooler, PoolerSetup};
pub use tempdir::TestDir;
pub use tools::{
    find_tool, free_port, pg_bindir, pg_tool, pgbench_command, process_alive, psql_command,
    run_cmd, run_pgbench, run_psql, userlist_entry, wait_until, CmdOutput,
};

/// Role with a SCRAM-SHA-256 secret; owns [`APP_DB`]. pg_hba: scram-sha-256.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "apppw";
/// Database owned by [`APP_USER`]; everyone may connect and create in `public`.
pub const APP_DB: &str = "app";
/// Role without a password. pg_hba: trust over TCP.
///
/// PostgreSQL reserves role names starting with `pg_`, so the roles are not
/// called `pg_trust` / `pg_plain` / `pg_md5`.
pub const TRUST_USER: &str = "trust_user";
/// Role with a SCRAM secret, but pg_hba asks for a cleartext `password`.
pub const PLAIN_USER: &str = "plain_user";
pub const PLAIN_PASSWORD: &str = "plainpw";
/// Role whose secret is stored as `md5…`. pg_hba: md5.
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5pw";
/// The bootstrap superuser. Trust on the Unix socket; over TCP it needs this
/// password (scram-sha-256).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgrespw";
/// Address PostgreSQL and (by convention) the pooler listen on in tests.
pub const LOCALHOST: &str = "127.0.0.1";

/// `n` seconds, for the many timeouts tests spell out.
pub fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// The rows `sql` returns over `c` with the simple protocol (a SHOW, say); panics on error.
pub fn query_rows(c: &mut postgres::Client, sql: &str) -> Vec<postgres::SimpleQueryRow> {
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The first column of the first row `sql` returns, or "" when there is none.
pub fn scalar(c: &mut postgres::Client, sql: &str) -> Result<String, postgres::Error> {
    for m in c.simple_query(sql)? {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("").to_string());
        }
    }
    Ok(String::new())
}
