//! The real client drivers' programs in `tests/clients/` (psycopg 3, asyncpg, pgJDBC, node-postgres) as commands.
//!
//! Each program takes `HOST PORT USER PASSWORD DB TAG NCLIENTS`, optionally
//! `--tls-ca=FILE` (sslmode=verify-full against FILE), and ends with
//! `OK <driver>` on success. The drivers are installed by `scripts/test.sh`
//! (`need_client_drivers`); a missing one fails the test with a message
//! saying so, never skips it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tools::find_tool;

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
