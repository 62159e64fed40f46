//! A throwaway PostgreSQL server in a temp dir, with the test roles, stopped and deleted when dropped.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::cleanup;
use super::tempdir::TestDir;
use super::tools::{self, clean_pg_env, free_port, is_root, pg_tool, run_cmd, CmdOutput};
use super::{
    APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, PLAIN_PASSWORD, PLAIN_USER, SUPERUSER,
    SUPERUSER_PASSWORD, TRUST_USER,
};

/// Present while the dir is owned by a live `PgServer`: the watchdog leaves a
/// dir without it alone.
const ALIVE_MARKER: &str = ".harness-alive";
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(90);

/// If the test binary dies without cleaning up, stop the postmaster (SIGQUIT
/// = immediate shutdown; it removes its pid file when done) and delete the dir.
pub const WATCHDOG: &str = r#"
owner=$1 dir=$2 data=$3
while kill -0 "$owner" 2>/dev/null; do
    [ -e "$dir/.harness-alive" ] || exit 0
    sleep 1
done
[ -e "$dir/.harness-alive" ] || exit 0
if [ -f "$data/postmaster.pid" ]; then
    pm=$(head -n 1 "$data/postmaster.pid")
    kill -QUIT "$pm" 2>/dev/null
    i=0
    while [ -f "$data/postmaster.pid" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -f "$data/postmaster.pid" ] && kill -KILL "$pm" 2>/dev/null
fi
case "${PGBOUNCERS_TEST_KEEP:-0}" in 0|'') rm -rf "$dir" ;; esac
"#;

/// A PostgreSQL server on 127.0.0.1:[`port`](Self::port) and on a Unix socket
/// in [`socket_dir`](Self::socket_dir).
///
/// Roles (all LOGIN; see the constants in `common`): `app`/`apppw` (SCRAM,
/// owns database `app`), `trust_user` (no password, trust), `plain_user`/
/// `plainpw` (cleartext `password` method), `md5_user`/`md5pw` (md5 secret,
/// md5 method), and `postgres`/`postgrespw` (superuser; trust on the Unix
/// socket, SCRAM over TCP). Any other role gets scram-sha-256 over TCP.
///
/// `Drop` stops it (immediate mode) and removes the dir.
pub struct PgServer {
    dir: TestDir,
    data: PathBuf,
    log: PathBuf,
    port: AtomicU16,
    /// The TCP address it listens on: 127.0.0.1, or another loopback address for a
    /// standby that shares the primary's port (a host list has one port for all hosts).
    listen: &'static str,
    cleaned: AtomicBool,
    watchdog: Mutex<Option<Child>>,
}

/// The one server of this test binary, started on first use and stopped when
/// the process exits (via `atexit`: statics are never dropped; and via the
/// watchdog if the process is killed).
///
/// Tests run in parallel threads and share it, so they must not stop or
/// restart it (use a private [`PgServer::start`] for that) and should use
/// their own role or table names when they count or change things.
pub fn shared_pg() -> &'static PgServer {
    static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let result = SHARED.get_or_init(|| match std::panic::catch_unwind(PgServer::start) {
        Ok(pg) => {
            cleanup::at_exit(|| {
                if let Some(Ok(pg)) = SHARED.get() {
                    pg.cleanup();
                }
            });
            Ok(pg)
        }
        // Remember the failure: every test should fail with the reason,
        // not retry a slow doomed start-up one by one.
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())),
    });
    match result {
        Ok(pg) => pg,
        Err(msg) => panic!("the shared PostgreSQL failed to start: {msg}"),
    }
}

/// `'text'` as an SQL string literal (standard_conforming_strings is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"name"` as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// uid and gid of the `postgres` OS user, which runs the server when we are root.
fn postgres_ids() -> (u32, u32) {
    // Looked up once: getpwnam's result lives in a static buffer, so
    // parallel tests must not call it concurrently.
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    let ids = IDS.get_or_init(|| {
        let name = std::ffi::CString::new("postgres").expect("no NUL");
        // SAFETY: getpwnam with a valid C string, called once (OnceLock);
        // the two integers are copied out before anything else runs.
        unsafe {
            let pw = libc::getpwnam(name.as_ptr());
            (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
        }
    });
    ids.unwrap_or_else(|| {
        panic!(
            "running as root, but there is no `postgres` OS user to run PostgreSQL as \
             (install the postgresql package with scripts/test.sh)"
        )
    })
}

impl PgServer {
    /// initdb + configure + start + create the test roles and database.
    /// Panics (with the server log) if anything fails.
    pub fn start() -> PgServer {
        let pg = PgServer::new_dir(super::LOCALHOST);
        pg.initdb();
        pg.start_on_free_port();
        pg.create_roles();
        pg
    }

    /// A streaming standby of `primary` made with pg_basebackup (`-R` writes
    /// primary_conninfo and standby.signal), listening on `listen` (another loopback
    /// address, say 127.0.0.2) with the primary's port, and its own Unix socket dir.
    /// Returns once it accepts connections (as a hot standby).
    pub fn standby_of(primary: &PgServer, listen: &'static str) -> PgServer {
        let pg = PgServer::new_dir(listen);
        let out = pg.run_server_tool(
            "pg_basebackup",
            &[
                "-D".as_ref(),
                pg.data.as_os_str(),
                "-h".as_ref(),
                primary.socket_dir().as_os_str(),
                "-p".as_ref(),
                primary.port().to_string().as_ref(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        assert!(
            out.success(),
            "pg_basebackup failed:\n{out}\n{}",
            primary.log()
        );
        pg.port.store(primary.port(), Ordering::SeqCst);
        // The primary's harness.conf came along: listen elsewhere, socket here.
        pg.write_settings(primary.port());
        let out = pg.pg_ctl("start", &[]);
        assert!(
            out.success(),
            "standby failed to start:\n{out}\n{}",
            pg.log()
        );
        let ready = tools::wait_until(Duration::from_secs(30), || {
            pg.try_admin_sql("SELECT pg_is_in_recovery()")
                .is_ok_and(|o| o.trim() == "t")
        });
        assert!(ready, "standby not in hot standby:\n{}", pg.log());
        pg
    }

    /// Promotes a standby (pg_ctl promote waits until it accepts writes).
    pub fn promote(&self) {
        let out = self.pg_ctl("promote", &[]);
        assert!(
            out.success(),
            "pg_ctl promote failed:\n{out}\n{}",
            self.log()
        );
    }

    /// An empty server dir, with its watchdog, listening on `listen` once started.
    fn new_dir(listen: &'static str) -> PgServer {
        cleanup::init();
        let dir = TestDir::new("pg");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
        }
        // 0755: the server's user must create files here, and anyone may
        // reach the Unix socket in it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.path().display()));
        dir.write_file(ALIVE_MARKER, "");
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        let watchdog =
            cleanup::spawn_watchdog(WATCHDOG, &[dir.path().as_os_str(), data.as_os_str()]);
        PgServer {
            dir,
            data,
            log,
            port: AtomicU16::new(0),
            listen,
            cleaned: AtomicBool::new(false),
            watchdog: Mutex::new(Some(watchdog)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// The TCP host to connect to: 127.0.0.1, except for a standby made elsewhere.
    pub fn host(&self) -> &'static str {
        self.listen
    }

    /// Directory holding the `.s.PGSQL.<port>` Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log so far (`log_connections` and `log_disconnections` are on).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A command running PostgreSQL program `tool`, as the `postgres` OS user
    /// when we are root (initdb and postgres refuse to run as root).
    fn server_command(&self, tool: &str) -> Command {
        let program = pg_tool(tool);
        let mut cmd = if is_root() {
            postgres_ids();
            // setpriv only switches credentials; runuser also opens a PAM
            // session, so it is the fallback.
            let mut c = if let Some(setpriv) = tools::search_path("setpriv") {
                let mut c = Command::new(setpriv);
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ]);
                c
            } else {
                let mut c = Command::new(tools::find_tool("runuser"));
                c.args(["-u", "postgres", "--"]);
                c
            };
            c.arg(program);
            c
        } else {
            Command::new(program)
        };
        clean_pg_env(&mut cmd);
        // The test's cwd may not be reachable by the postgres user.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn run_server_tool(&self, tool: &str, args: &[&OsStr]) -> CmdOutput {
        let mut cmd = self.server_command(tool);
        cmd.args(args);
        run_cmd(cmd, None, PG_CTL_TIMEOUT)
    }

    fn initdb(&self) {
        let out = self.run_server_tool(
            "initdb",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "--auth-local=trust".as_ref(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        assert!(out.success(), "initdb failed:\n{out}");
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\ninclude 'harness.conf'\n");
        fs::write(&conf, text).expect("write postgresql.conf");
        let hba = format!(
            "local all all trust\n\
             local replication all trust\n\
             host all {TRUST_USER} 127.0.0.1/32 trust\n\
             host all {PLAIN_USER} 127.0.0.1/32 password\n\
             host all {MD5_USER} 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n"
        );
        fs::write(self.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn write_settings(&self, port: u16) {
        let settings = format!(
            "listen_addresses = '{}'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             password_encryption = 'scram-sha-256'\n\
             log_min_messages = warning\n\
             log_connections = on\n\
             log_disconnections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             lc_messages = 'C'\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n",
            self.listen,
            self.dir.path().display()
        );
        let path = self.data.join("harness.conf");
        fs::write(&path, settings).expect("write harness.conf");
        if is_root() {
            let (uid, gid) = postgres_ids();
            let _ = std::os::unix::fs::chown(&path, Some(uid), Some(gid));
        }
    }

    fn pg_ctl(&self, action: &str, extra: &[&str]) -> CmdOutput {
        let mut args: Vec<&OsStr> = vec![
            "-D".as_ref(),
            self.data.as_os_str(),
            "-l".as_ref(),
            self.log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
        ];
        args.extend(extra.iter().map(|s| OsStr::new(*s)));
        args.push(action.as_ref());
        self.run_server_tool("pg_ctl", &args)
    }

    /// Picks a free port and starts; another process may grab the port
    /// between our probe and the server's bind, so a bind failure retries.
    fn start_on_free_port(&self) {
        for attempt in 1..=5 {
            let port = free_port();
            self.port.store(port, Ordering::SeqCst);
            self.write_settings(port);
            let out = self.pg_ctl("start", &[]);
            if out.success() {
                return;
            }
            let log = self.log();
            let port_taken =
                log.contains("could not bind") || log.contains("could not create any TCP/IP");
            if !port_taken || attempt == 5 {
                panic!("PostgreSQL failed to start:\n{out}\n--- server log ---\n{log}");
            }
        }
    }

    fn create_roles(&self) {
        self.admin_sql(&format!(
            "ALTER ROLE {SUPERUSER} PASSWORD {};
             CREATE ROLE {APP_USER} LOGIN PASSWORD {};
             CREATE ROLE {TRUST_USER} LOGIN;
             CREATE ROLE {PLAIN_USER} LOGIN PASSWORD {};
             SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN PASSWORD {};
             RESET password_encryption;
             CREATE DATABASE {APP_DB} OWNER {APP_USER};
             GRANT CONNECT ON DATABASE {APP_DB} TO PUBLIC;",
            quote_literal(SUPERUSER_PASSWORD),
            quote_literal(APP_PASSWORD),
            quote_literal(PLAIN_PASSWORD),
            quote_literal(MD5_PASSWORD),
        ));
        // Since PostgreSQL 15 only the owner may create in `public`; tests
        // create tables as any role.
        self.admin_sql_in(APP_DB, "GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;");
    }

    /// Runs `sql` as the superuser over the Unix socket in database
    /// `postgres`; returns the output (tab-separated columns, one row per
    /// line, no trailing newline). Panics on any error.
    pub fn admin_sql(&self, sql: &str) -> String {
        self.admin_sql_in("postgres", sql)
    }

    /// [`admin_sql`](Self::admin_sql) in database `db`.
    pub fn admin_sql_in(&self, db: &str, sql: &str) -> String {
        self.try_admin_sql_in(db, sql)
            .unwrap_or_else(|e| panic!("admin SQL failed: {e}\nSQL: {sql}"))
    }

    /// [`admin_sql`](Self::admin_sql) returning psql's stderr as the error.
    pub fn try_admin_sql(&self, sql: &str) -> Result<String, String> {
        self.try_admin_sql_in("postgres", sql)
    }

    pub fn try_admin_sql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(pg_tool("psql"));
        clean_pg_env(&mut cmd);
        cmd.args(["-XAtqw", "-v", "ON_ERROR_STOP=1", "-F", "\t", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", SUPERUSER, "-d", db, "-f", "-"]);
        // Statements go on stdin, so each is sent on its own (CREATE
        // DATABASE refuses to run in the implicit transaction of `-c`).
        let out = run_cmd(cmd, Some(sql), tools::DEFAULT_CMD_TIMEOUT);
        if out.success() {
            Ok(out.stdout.trim_end_matches('\n').to_string())
        } else {
            Err(out.to_string())
        }
    }

    /// A client connected as the superuser over the Unix socket.
    pub fn admin_client(&self) -> postgres::Client {
        postgres::Config::new()
            .host_path(self.socket_dir())
            .port(self.port())
            .user(SUPERUSER)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("admin connection over the Unix socket failed: {e}"))
    }

    /// Connects straight to the server over TCP (bypassing any pooler).
    pub fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<postgres::Client, postgres::Error> {
        let mut config = postgres::Config::new();
        config
            .host(self.host())
            .port(self.port())
            .user(user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        if !password.is_empty() {
            config.password(password);
        }
        config.connect(postgres::NoTls)
    }

    /// [`try_connect`](Self::try_connect) that panics on failure.
    pub fn connect(&self, user: &str, password: &str, db: &str) -> postgres::Client {
        self.try_connect(user, password, db)
            .unwrap_or_else(|e| panic!("direct connection as {user} to {db} failed: {e:?}"))
    }

    /// Client backends currently connected as `user`. An `admin_sql` call
    /// counts itself when `user` is `postgres`.
    pub fn count_backends(&self, user: &str) -> i64 {
        let out = self.admin_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = {} AND backend_type = 'client backend'",
            quote_literal(user)
        ));
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("count_backends: bad output {out:?}: {e}"))
    }

    /// The stored secret of `role` (`SCRAM-SHA-256$…` or `md5…`), as an
    /// auth file would hold it. Panics if the role has no password.
    pub fn role_secret(&self, role: &str) -> String {
        let secret = self.admin_sql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = {}",
            quote_literal(role)
        ));
        assert!(!secret.is_empty(), "role {role} has no stored password");
        secret
    }

    /// `"role" "<stored secret>"`: one auth-file line for `role`.
    pub fn userlist_line(&self, role: &str) -> String {
        tools::userlist_entry(role, &self.role_secret(role))
    }

    /// Turns TLS on with this certificate and key (PEM files), and puts `hba_lines` before
    /// the harness's own pg_hba.conf lines (say, `hostssl`-only rules for one role). A
    /// reload applies both; sessions already open are not touched.
    pub fn enable_ssl(&self, cert: &Path, key: &Path, hba_lines: &str) {
        let place = |from: &Path, name: &str, mode: u32| {
            let to = self.data.join(name);
            fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            fs::set_permissions(&to, fs::Permissions::from_mode(mode)).expect("chmod");
            if is_root() {
                let (uid, gid) = postgres_ids();
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            }
        };
        place(cert, "server.crt", 0o644);
        place(key, "server.key", 0o600);
        let hba = self.data.join("pg_hba.conf");
        let old = fs::read_to_string(&hba).expect("read pg_hba.conf");
        fs::write(&hba, format!("{hba_lines}\n{old}")).expect("write pg_hba.conf");
        self.admin_sql("ALTER SYSTEM SET ssl = on");
        self.admin_sql("SELECT pg_reload_conf()");
        let on = tools::wait_until(std::time::Duration::from_secs(10), || {
            self.admin_sql("SHOW ssl").trim() == "on"
        });
        assert!(on, "ssl did not come on:\n{}", self.log());
    }

    /// Fast shutdown then start again, same port and data.
    pub fn restart(&self) {
        let out = self.pg_ctl("restart", &["-m", "fast"]);
        assert!(
            out.success(),
            "pg_ctl restart failed:\n{out}\n{}",
            self.log()
        );
    }

    /// Fast shutdown (clients are disconnected).
    pub fn stop(&self) {
        let out = self.pg_ctl("stop", &["-m", "fast"]);
        assert!(out.success(), "pg_ctl stop failed:\n{out}\n{}", self.log());
    }

    /// Starts again after [`stop`](Self::stop), same port and data.
    pub fn start_again(&self) {
        let out = self.pg_ctl("start", &[]);
        assert!(out.success(), "pg_ctl start failed:\n{out}\n{}", self.log());
    }

    /// Whether a postmaster is running (its pid file exists).
    pub fn is_running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }

    /// Stops the server (immediate mode) and deletes the dir. Idempotent;
    /// `Drop` and the shared server's exit hook call it.
    pub fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            cleanup::stop_watchdog(&mut w);
        }
        if self.is_running() {
            let mut cmd = self.server_command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
            let out = run_cmd(cmd, None, Duration::from_secs(20));
            if !out.success() {
                self.kill_postmaster();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "[harness] PostgreSQL log ({}), last lines:\n{}",
                self.log.display(),
                tail(&self.log(), 40)
            );
        }
        let _ = fs::remove_file(self.dir.join(ALIVE_MARKER));
        self.dir.remove();
    }

    /// Last resort when pg_ctl could not stop it.
    fn kill_postmaster(&self) {
        let pid_file = fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        if let Some(pid) = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) on the pid the postmaster recorded.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            tools::wait_until(Duration::from_secs(5), || !tools::process_alive(pid));
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.cleanup();
    }
}
