//! Finding and running external tools (PostgreSQL binaries, psql, pgbench, haproxy), free ports, polling.
//!
//! A missing tool is a test failure, never a skip: `scripts/test.sh` installs
//! everything the tests need.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Default limit for one psql/pgbench/helper command, so a hung pooler fails
/// the test instead of hanging the suite.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(120);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding initdb, pg_ctl, postgres, psql and pgbench.
///
/// Looked up once: `$PG_BINDIR`, then `pg_config --bindir`, then the newest
/// `/usr/lib/postgresql/*/bin`, then `initdb` on `$PATH`. Panics if none has
/// `initdb`.
pub fn pg_bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        let has_initdb = |dir: &Path| dir.join("initdb").is_file();
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            let dir = PathBuf::from(dir);
            assert!(
                has_initdb(&dir),
                "$PG_BINDIR={} has no initdb",
                dir.display()
            );
            return dir;
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_initdb(&dir) {
                return dir;
            }
        }
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                has_initdb(&bin).then_some((version, bin))
            })
            .collect();
        versioned.sort();
        if let Some((_, dir)) = versioned.pop() {
            return dir;
        }
        if let Some(initdb) = search_path("initdb") {
            if let Ok(real) = initdb.canonicalize() {
                if let Some(dir) = real.parent() {
                    return dir.to_path_buf();
                }
            }
        }
        panic!(
            "PostgreSQL server binaries (initdb) not found: install them with scripts/test.sh \
             (Debian packages postgresql, postgresql-client) or set PG_BINDIR"
        );
    })
}

/// A PostgreSQL program from [`pg_bindir`]; panics if it is missing.
pub fn pg_tool(name: &str) -> PathBuf {
    let path = pg_bindir().join(name);
    assert!(
        path.is_file(),
        "{} not found (install it with scripts/test.sh)",
        path.display()
    );
    path
}

/// `name` on `$PATH` or in the sbin dirs, if it is there.
pub fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Any other tool (haproxy, pgbouncer, python3, …) on `$PATH` or in the sbin
/// dirs (a non-root `$PATH` often lacks them); panics if missing.
pub fn find_tool(name: &str) -> PathBuf {
    search_path(name).unwrap_or_else(|| {
        panic!(
            "required tool `{name}` not found on PATH or in sbin (install it with scripts/test.sh)"
        )
    })
}

/// A TCP port on 127.0.0.1 that the OS considered free a moment ago.
///
/// The OS picks it (bind to port 0) so it never collides with a fixed port;
/// a process-wide set makes sure two callers in one test binary never get the
/// same one. Whoever uses it binds it a moment later: there is a small race
/// with other processes, which the start-up checks turn into a clear failure.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("could not find a free port");
}

/// Polls `cond` every 20 ms until it returns true (-> true) or `timeout`
/// passes (-> false). `cond` is always called at least once, and once more
/// after the deadline so a slow last poll still counts.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True if `pid` exists and is not a zombie (a zombie no longer runs; it only
/// waits for a parent, possibly a PID 1 that never reaps).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z') | Some('X') | None),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line: after the last `)`, since the
/// command name may itself contain spaces and parentheses.
fn stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Pids whose parent is `ppid` (live processes only).
pub fn child_pids(ppid: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let mut fields = stat[close + 1..].split_whitespace();
            let state = fields.next();
            let parent = fields.next().and_then(|p| p.parse::<i32>().ok());
            parent == Some(ppid) && !matches!(state, Some("Z") | Some("X"))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// What a finished (or timed-out) command printed.
#[derive(Debug)]
pub struct CmdOutput {
    /// `None` if it was killed because it ran past its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// Program and arguments, for messages.
    pub command: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Exit code; `None` if killed by a signal or timed out.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics with the whole output unless the command succeeded; returns stdout.
    pub fn expect_success(&self) -> &str {
        assert!(self.success(), "command failed:\n{self}");
        &self.stdout
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => writeln!(f, "$ {}\n[{s}]", self.command)?,
            None => writeln!(f, "$ {}\n[killed: timed out]", self.command)?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes every `PG*` variable (a developer's PGHOST, PGSSLMODE, PGSERVICE,
/// … would silently redirect or change the tools) and sets a connect timeout.
pub fn clean_pg_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
}

/// Runs `cmd` to completion with `stdin` fed in, capturing stdout/stderr.
/// Past `timeout` its whole process group is killed and `status` is `None`.
/// Panics only if the program cannot be started at all.
pub fn run_cmd(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> CmdOutput {
    let command = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Own group: a timeout kills helpers it spawned, and Ctrl-C meant for
    // the test runner is not what ends it.
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    // Reading and writing on threads: a child blocked on a full pipe would
    // otherwise never exit.
    let writer = child.stdin.take().map(|mut pipe| {
        let input = stdin.unwrap_or_default().to_owned();
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        })
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                // SAFETY: plain kill(2) on the group we created; the child is
                // not reaped yet, so its pid (= pgid) cannot have been reused.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    CmdOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        command,
    }
}

/// A `psql` command connecting over TCP to 127.0.0.1:`port`, unaligned,
/// tuples only, quiet, no psqlrc, stopping at the first error, never
/// prompting for a password. `password` empty = no `PGPASSWORD`.
pub fn psql_command(port: u16, user: &str, password: &str, db: &str) -> Command {
    let mut cmd = Command::new(pg_tool("psql"));
    clean_pg_env(&mut cmd);
    if !password.is_empty() {
        cmd.env("PGPASSWORD", password);
    }
    cmd.args([
        "-XAtqw",
        "-v",
        "ON_ERROR_STOP=1",
        "-F",
        "\t",
        "-h",
        "127.0.0.1",
    ])
    .arg("-p")
    .arg(port.to_string())
    .args(["-U", user, "-d", db]);
    cmd
}

/// Runs `sql` (one or more `;`-separated statements, fed on stdin so each is
/// sent on its own) through psql on 127.0.0.1:`port`. Columns are separated
/// by tabs, rows by newlines.
pub fn run_psql(port: u16, user: &str, password: &str, db: &str, sql: &str) -> CmdOutput {
    let mut cmd = psql_command(port, user, password, db);
    cmd.args(["-f", "-"]);
    run_cmd(cmd, Some(sql), DEFAULT_CMD_TIMEOUT)
}

/// A `pgbench` command against 127.0.0.1:`port`: add its options, then the
/// database name last, and run it with [`run_cmd`] for a custom timeout.
pub fn pgbench_command(port: u16, user: &str, password: &str) -> Command {
    let mut cmd = Command::new(pg_tool("pgbench"));
    clean_pg_env(&mut cmd);
    if !password.is_empty() {
        cmd.env("PGPASSWORD", password);
    }
    cmd.args(["-h", "127.0.0.1"])
        .arg("-p")
        .arg(port.to_string())
        .args(["-U", user]);
    cmd
}

/// Runs `pgbench <args> <db>` against 127.0.0.1:`port` with the default timeout.
pub fn run_pgbench<S: AsRef<OsStr>>(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    args: &[S],
) -> CmdOutput {
    let mut cmd = pgbench_command(port, user, password);
    cmd.args(args).arg(db);
    run_cmd(cmd, None, DEFAULT_CMD_TIMEOUT)
}

/// One line of a PgBouncer-format auth file: `"user" "secret"`, with `"`
/// doubled inside either field. No trailing newline.
pub fn userlist_entry(user: &str, secret: &str) -> String {
    format!(
        "\"{}\" \"{}\"",
        user.replace('"', "\"\""),
        secret.replace('"', "\"\"")
    )
}
