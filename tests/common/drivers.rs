//! The real client drivers' programs in `tests/clients/` (psycopg 3, asyncpg, pgJDBC, node-postgres) as commands.
//!
//! Each program takes `HOST PORT USER PASSWORD DB TAG NCLIENTS`, optionally
//! `--tls-ca=FILE` (sslmode=verify-full against FILE), and ends with
//! `OK <driver>` on success. The drivers are installed by `scripts/test.sh`
//! (`need_client_drivers`); a missing one fails the test with a message
//! saying so, never skips it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::pg::tail;
use super::tools::{clean_pg_env, find_tool, run_cmd, CmdOutput};
use super::{Pooler, APP_DB, APP_PASSWORD, APP_USER, LOCALHOST};

/// Upper bound for one program run (a hung pooler fails instead of hanging).
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Driver {
    Psycopg,
    Asyncpg,
    Jdbc,
    Node,
}

impl Driver {
    /// The name in the program's `OK <name>` line.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::Jdbc => "jdbc",
            Driver::Node => "node-postgres",
        }
    }

    /// The command running this driver's program, without its arguments.
    pub fn command(self) -> Command {
        let dir = clients_dir();
        match self {
            Driver::Psycopg | Driver::Asyncpg => {
                let script = match self {
                    Driver::Psycopg => "psycopg_client.py",
                    _ => "asyncpg_client.py",
                };
                let mut cmd = Command::new(find_tool("python3"));
                cmd.arg("-u").arg(dir.join(script));
                cmd
            }
            Driver::Jdbc => {
                let mut cmd = Command::new(find_tool("java"));
                // Source-file mode: compiled in memory, nothing left behind.
                cmd.arg("-cp")
                    .arg(pgjdbc_jar())
                    .arg(dir.join("JdbcClient.java"));
                cmd
            }
            Driver::Node => {
                let node_dir = dir.join("node");
                assert!(
                    node_dir.join("node_modules/pg/package.json").is_file(),
                    "node-postgres is not installed in {}: run scripts/test.sh \
                     (or `npm ci` there)",
                    node_dir.display()
                );
                let mut cmd = Command::new(find_tool("node"));
                cmd.arg(node_dir.join("client.js"));
                cmd
            }
        }
    }
}

/// Runs `driver`'s program against `pooler` as [`APP_USER`] on [`APP_DB`]
/// with `tag`, `clients` connections and `extra` arguments; panics with its
/// output and the pooler log unless it exits 0 with `OK <driver>` last and
/// the pooler did not panic. Returns what it printed.
pub fn run_program(
    driver: Driver,
    pooler: &Pooler,
    tag: &str,
    clients: usize,
    extra: &[&str],
) -> CmdOutput {
    let mut cmd = driver.command();
    clean_pg_env(&mut cmd);
    cmd.arg(LOCALHOST)
        .arg(pooler.port().to_string())
        .args([APP_USER, APP_PASSWORD, APP_DB, tag])
        .arg(clients.to_string())
        .args(extra)
        .current_dir(clients_dir());
    let start = Instant::now();
    let out = run_cmd(cmd, None, PROGRAM_TIMEOUT);
    eprintln!("[{}] {tag}: {:.1?}", driver.name(), start.elapsed());
    let ok_line = format!("OK {}", driver.name());
    let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    assert!(
        out.success() && last == Some(ok_line.as_str()),
        "{} client ({tag}) failed (want exit 0 and `{ok_line}` last):\n{out}\n--- pooler log (tail) ---\n{}",
        driver.name(),
        tail(&pooler.log(), 60)
    );
    let log = pooler.log();
    assert!(
        !log.contains("panicked"),
        "the pooler panicked:\n{}",
        tail(&log, 60)
    );
    out
}

/// `tests/clients`, where the programs live (and run).
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The pgJDBC jar: `$PGJDBC_JAR`, Debian's libpostgresql-jdbc-java, or the
/// newest one Maven put under ~/.m2.
pub fn pgjdbc_jar() -> PathBuf {
    if let Some(jar) = std::env::var_os("PGJDBC_JAR") {
        let jar = PathBuf::from(jar);
        assert!(jar.is_file(), "$PGJDBC_JAR={} is no file", jar.display());
        return jar;
    }
    let debian = PathBuf::from("/usr/share/java/postgresql.jar");
    if debian.is_file() {
        return debian;
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let m2 = Path::new(&home).join(".m2/repository/org/postgresql/postgresql");
    let mut jars: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(&m2)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.to_owned();
            let jar = e.path().join(format!("postgresql-{version}.jar"));
            let key = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|p| p.parse().ok())
                .collect();
            jar.is_file().then_some((key, jar))
        })
        .collect();
    jars.sort();
    jars.pop().map(|(_, jar)| jar).unwrap_or_else(|| {
        panic!(
            "pgJDBC jar not found ($PGJDBC_JAR, {}, {}): install it with scripts/test.sh \
             (Debian package libpostgresql-jdbc-java)",
            debian.display(),
            m2.display()
        )
    })
}
