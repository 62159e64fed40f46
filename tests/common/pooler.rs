//! Runs the real `pgbouncers` binary on a test config and kills its whole process group when dropped.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::cleanup;
use super::pg::tail;
use super::tempdir::TestDir;
use super::tools::{self, free_port, run_cmd, CmdOutput};

/// Config file name inside the pooler's dir.
pub const CONFIG_FILE: &str = "pgbouncers.yaml";
/// The binary's stdout + stderr.
pub const LOG_FILE: &str = "pooler.log";
/// How long SIGTERM gets before SIGKILL when a `Pooler` is dropped.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// If the test binary dies, SIGKILL the pooler's process group.
pub const WATCHDOG: &str = r#"
owner=$1 pgid=$2
while kill -0 "$owner" 2>/dev/null; do
    kill -0 -"$pgid" 2>/dev/null || exit 0
    sleep 1
done
kill -KILL -"$pgid" 2>/dev/null
"#;

/// Everything before the pooler starts: its temp dir, a free port, env.
///
/// A config may use two placeholders, replaced on start:
/// `@PORT@` (this setup's free port) and `@DIR@` (its temp dir, no trailing
/// slash), e.g. `listen_port: @PORT@` and `auth_file: @DIR@/userlist.txt`.
pub struct PoolerSetup {
    dir: TestDir,
    port: u16,
    binary: PathBuf,
    env: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    config_name: String,
}

impl Default for PoolerSetup {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolerSetup {
    pub fn new() -> PoolerSetup {
        cleanup::init();
        PoolerSetup {
            dir: TestDir::new("pooler"),
            port: free_port(),
            // PGBOUNCERS_TEST_BINARY runs the tests against another build, e.g. the commit
            // before a fix, to see that its regression test fails there.
            binary: std::env::var_os("PGBOUNCERS_TEST_BINARY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgbouncers"))),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(10),
            config_name: CONFIG_FILE.to_owned(),
        }
    }

    /// The port `@PORT@` stands for.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir `@DIR@` stands for.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file (userlist, hba, …) into the dir; returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        self.dir.write_file(name, contents)
    }

    /// Sets an environment variable for the binary (e.g. `RUST_LOG`).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs another program instead of `pgbouncers` (the harness's own tests
    /// use a stand-in).
    pub fn binary(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.binary = path.into();
        self
    }

    /// How long to wait for the listen port (default 10 s).
    pub fn ready_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.ready_timeout = timeout;
        self
    }

    /// The config file's name in the dir (default [`CONFIG_FILE`]), e.g. `pgbouncer.ini`
    /// to start from PgBouncer's format.
    pub fn config_file(&mut self, name: &str) -> &mut Self {
        self.config_name = name.to_owned();
        self
    }

    /// `yaml` with `@PORT@` and `@DIR@` replaced.
    pub fn expand(&self, yaml: &str) -> String {
        expand(yaml, self.port, self.dir.path())
    }

    fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(config)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `pgbouncers -c <dir>/pgbouncers.yaml` and waits until its port
    /// accepts TCP connections. Panics with the log on failure.
    pub fn start(self, yaml: &str) -> Pooler {
        self.start_with_args(yaml, &[])
    }

    /// [`start`](Self::start) with extra arguments after `-c FILE`
    /// (e.g. `["--workers", "2", "-v"]`).
    pub fn start_with_args(self, yaml: &str, args: &[&str]) -> Pooler {
        self.try_start(yaml, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start_with_args`](Self::start_with_args) but returns the
    /// failure (exit status / timeout, with the log) instead of panicking.
    pub fn try_start(self, yaml: &str, args: &[&str]) -> Result<Pooler, String> {
        let yaml = self.expand(yaml);
        let port = listen_port(&yaml, self.port);
        let host = listen_ip(&yaml);
        let config = self.dir.write_file(&self.config_name, &yaml);
        let log_path = self.dir.join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        // One open file description for both: lines interleave in order.
        let log2 = log.try_clone().expect("dup log file");
        let mut cmd = self.command(&config, args);
        cmd.stdout(log)
            .stderr(log2)
            // Its own group: the supervisor forks workers, and Drop signals
            // them all at once with kill(-pgid).
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.binary.display());
        });
        let pid = child.id() as i32;
        cleanup::register_group(pid);
        let watchdog = cleanup::spawn_watchdog(WATCHDOG, &[OsStr::new(&pid.to_string())]);
        let mut pooler = Pooler {
            dir: self.dir,
            port,
            pid,
            child: Some(child),
            status: None,
            config,
            log_path,
            watchdog: Some(watchdog),
        };
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(status) = pooler.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before listening on port {port}\n--- log ---\n{}",
                    self.binary.display(),
                    pooler.log()
                ));
            }
            if accepts(host, port) {
                return Ok(pooler);
            }
            if Instant::now() >= deadline {
                let log = pooler.log();
                pooler.shutdown();
                return Err(format!(
                    "{} did not listen on port {port} within {:?}\n--- log ---\n{log}",
                    self.binary.display(),
                    self.ready_timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the binary with the config until it exits by itself (e.g.
    /// `--check`, or a config it must reject), killing it after `timeout`
    /// (then `status` is `None`).
    pub fn run_to_exit(&self, yaml: &str, args: &[&str], timeout: Duration) -> CmdOutput {
        let config = self.dir.write_file(&self.config_name, &self.expand(yaml));
        run_cmd(self.command(&config, args), None, timeout)
    }
}

fn expand(yaml: &str, port: u16, dir: &Path) -> String {
    yaml.replace("@PORT@", &port.to_string())
        .replace("@DIR@", &dir.to_string_lossy())
}

/// The port to wait on: the `listen_port:` (YAML) or `listen_port =` (ini) line of the
/// (expanded) config, else the setup's port.
fn listen_port(yaml: &str, default: u16) -> u16 {
    yaml.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("listen_port")?.trim_start();
            rest.strip_prefix(':').or_else(|| rest.strip_prefix('='))
        })
        .filter_map(|v| v.split('#').next()?.trim().parse::<u16>().ok())
        .next_back()
        .unwrap_or(default)
}

/// The address in a `listen_addr: 127.0.0.3` line, when it is one IPv4 address (a test
/// standing for another host listens on 127.0.0.x); None: try the loopback defaults.
fn listen_ip(yaml: &str) -> Option<std::net::Ipv4Addr> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("listen_addr:"))
        .filter_map(|v| v.split('#').next()?.trim().trim_matches('\'').parse().ok())
        .next_back()
}

fn accepts(host: Option<std::net::Ipv4Addr>, port: u16) -> bool {
    let timeout = Duration::from_millis(250);
    if let Some(ip) = host {
        return TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout).is_ok();
    }
    ["127.0.0.1", "[::1]"].iter().any(|host| {
        let addr: SocketAddr = format!("{host}:{port}").parse().expect("socket address");
        TcpStream::connect_timeout(&addr, timeout).is_ok()
    })
}

/// `'value'` for a libpq-style connection string.
fn conn_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A running pooler (supervisor pid = process group id). `Drop` sends
/// SIGTERM to the group, waits up to 3 s, then SIGKILLs the group, reaps the
/// supervisor and removes the dir; if the test is panicking it prints the
/// end of the log first.
pub struct Pooler {
    dir: TestDir,
    port: u16,
    pid: i32,
    /// `None` once reaped.
    child: Option<Child>,
    status: Option<ExitStatus>,
    config: PathBuf,
    log_path: PathBuf,
    watchdog: Option<Child>,
}

impl Pooler {
    /// `PoolerSetup::new().start(yaml)`: for configs that only need `@PORT@` / `@DIR@`.
    pub fn start(yaml: &str) -> Pooler {
        PoolerSetup::new().start(yaml)
    }

    pub fn start_with_args(yaml: &str, args: &[&str]) -> Pooler {
        PoolerSetup::new().start_with_args(yaml, args)
    }

    /// The port it was waited on (clients connect to 127.0.0.1 there).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The supervisor's pid, which is also the process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file into the dir (e.g. a new userlist before a reload).
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        self.dir.write_file(name, contents)
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file (placeholders expanded with this pooler's
    /// port and dir); follow with [`reload`](Self::reload).
    pub fn rewrite_config(&self, yaml: &str) {
        let text = expand(yaml, self.port, self.dir.path());
        fs::write(&self.config, text).expect("rewrite config");
    }

    /// Everything the binary printed so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        tools::wait_until(timeout, || self.log().contains(needle))
    }

    /// Sends `sig` to the supervisor only (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2). While the child is unreaped its pid cannot
        // be reused.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    /// Sends `sig` to the supervisor and all its workers.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child's group.
        unsafe { libc::kill(-self.pid, sig) };
    }

    /// SIGHUP: reload config and auth files.
    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Live child processes of the supervisor (its workers), sorted.
    pub fn children(&self) -> Vec<i32> {
        tools::child_pids(self.pid)
    }

    /// Waits until the supervisor has exactly `n` live children and returns
    /// them; panics with the log otherwise.
    pub fn wait_for_children(&self, n: usize, timeout: Duration) -> Vec<i32> {
        let mut last = Vec::new();
        let ok = tools::wait_until(timeout, || {
            last = self.children();
            last.len() == n
        });
        assert!(
            ok,
            "expected {n} worker processes, have {last:?}\n--- log ---\n{}",
            self.log()
        );
        last
    }

    /// The exit status if the supervisor has exited, reaping it.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.status = Some(status);
                self.child = None;
                cleanup::unregister_group(self.pid);
            }
        }
        self.status
    }

    /// True while the supervisor has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the supervisor to exit by itself (after a
    /// signal or SHUTDOWN); `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tools::wait_until(timeout, || self.try_wait().is_some());
        self.status
    }

    /// What `Drop` does, callable early: SIGTERM the group, up to 3 s grace,
    /// SIGKILL the group, reap. Returns the supervisor's exit status.
    pub fn shutdown(&mut self) -> Option<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            if !exited_unreaped(self.pid) {
                // SAFETY: kill(2) on the group of our unreaped child.
                unsafe { libc::kill(-self.pid, libc::SIGTERM) };
                tools::wait_until(TERM_GRACE, || exited_unreaped(self.pid));
            }
            // Until the leader is reaped its pid (the group id) stays ours,
            // so this cannot hit an unrelated group; it catches workers that
            // outlived the supervisor.
            // SAFETY: as above.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            self.status = child.wait().ok();
        }
        cleanup::unregister_group(self.pid);
        if let Some(mut w) = self.watchdog.take() {
            cleanup::stop_watchdog(&mut w);
        }
        self.status
    }

    /// A libpq-style connection string for 127.0.0.1:port (for
    /// `tokio_postgres::connect` or anything else that takes one).
    /// Empty `password` = none.
    pub fn connstr(&self, user: &str, password: &str, db: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={} dbname={} connect_timeout=10",
            self.port,
            conn_value(user),
            conn_value(db)
        );
        if !password.is_empty() {
            s.push_str(&format!(" password={}", conn_value(password)));
        }
        s
    }

    /// A `postgres::Config` for 127.0.0.1:port (10 s connect timeout),
    /// for tests that need to set more (application_name, options, …).
    pub fn client_config(&self, user: &str, password: &str, db: &str) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host(super::LOCALHOST)
            .port(self.port)
            .user(user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        if !password.is_empty() {
            config.password(password);
        }
        config
    }

    /// The same settings as [`client_config`](Self::client_config), for tokio-postgres.
    pub fn tokio_config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(super::LOCALHOST)
            .port(self.port)
            .user(user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        if !password.is_empty() {
            config.password(password);
        }
        config
    }

    /// Connects with tokio-postgres and spawns the connection task on the
    /// current tokio runtime (call it inside `#[tokio::test]`).
    pub async fn connect_async(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self
            .tokio_config(user, password, db)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<postgres::Client, postgres::Error> {
        self.client_config(user, password, db)
            .connect(postgres::NoTls)
    }

    /// Connects through the pooler; panics with the error and the log tail.
    pub fn connect(&self, user: &str, password: &str, db: &str) -> postgres::Client {
        self.try_connect(user, password, db).unwrap_or_else(|e| {
            panic!(
                "connecting as {user} to {db} through the pooler failed: {e:?}\n--- pooler log (tail) ---\n{}",
                tail(&self.log(), 60)
            )
        })
    }

    /// `run_psql` against this pooler.
    pub fn psql(&self, user: &str, password: &str, db: &str, sql: &str) -> CmdOutput {
        tools::run_psql(self.port, user, password, db, sql)
    }
}

/// True if child `pid` has exited, without reaping it (WNOWAIT), so its pid
/// and group id stay reserved while we signal the group.
fn exited_unreaped(pid: i32) -> bool {
    // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid; with
    // WNOHANG si_pid stays 0 when the child has not changed state.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc < 0 (ECHILD): nothing left to wait for.
        rc < 0 || info.si_pid() != 0
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        self.shutdown();
        if std::thread::panicking() {
            eprintln!(
                "[harness] pooler log ({}), last lines:\n{}",
                self.log_path.display(),
                tail(&self.log(), 80)
            );
        }
    }
}
