//! Checks the test harness itself: the throwaway PostgreSQL, its roles and auth methods, the tool runners, the pooler runner (with a stand-in binary) and every cleanup path.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use postgres::error::SqlState;

/// Waits for the server log to show that `user` logged in with `method`
/// (PostgreSQL 14+ logs the method with log_connections).
fn assert_auth_method(pg: &PgServer, user: &str, method: &str) {
    let needle = format!("identity=\"{user}\" method={method}");
    assert!(
        wait_until(secs(5), || pg.log().contains(&needle)),
        "server log lacks `{needle}`:\n{}",
        pg.log()
    );
}

fn current_user(client: &mut postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .expect("select current_user")
        .get(0)
}

fn expect_auth_failure(result: Result<postgres::Client, postgres::Error>, who: &str) {
    match result {
        Ok(_) => panic!("{who}: login with a wrong password succeeded"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{who}: unexpected error {e:?}"
        ),
    }
}

#[test]
fn app_logs_in_with_scram() {
    let pg = shared_pg();
    let mut c = pg.connect(APP_USER, APP_PASSWORD, APP_DB);
    assert_eq!(current_user(&mut c), APP_USER);
    let db: String = c
        .query_one("SELECT current_database()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(db, APP_DB);
    assert_auth_method(pg, APP_USER, "scram-sha-256");
    assert!(
        pg.role_secret(APP_USER).starts_with("SCRAM-SHA-256$"),
        "app's secret should be SCRAM"
    );
}

#[test]
fn md5_user_logs_in_with_md5() {
    let pg = shared_pg();
    let secret = pg.role_secret(MD5_USER);
    assert!(
        secret.starts_with("md5") && secret.len() == 35,
        "md5_user's secret should be stored as md5, got {secret}"
    );
    let mut c = pg.connect(MD5_USER, MD5_PASSWORD, APP_DB);
    assert_eq!(current_user(&mut c), MD5_USER);
    assert_auth_method(pg, MD5_USER, "md5");
}

#[test]
fn plain_user_logs_in_with_cleartext_password() {
    let pg = shared_pg();
    let mut c = pg.connect(PLAIN_USER, PLAIN_PASSWORD, APP_DB);
    assert_eq!(current_user(&mut c), PLAIN_USER);
    assert_auth_method(pg, PLAIN_USER, "password");
}

#[test]
fn trust_user_needs_no_password() {
    let pg = shared_pg();
    let mut c = pg.connect(TRUST_USER, "", APP_DB);
    assert_eq!(current_user(&mut c), TRUST_USER);
    // Trust ignores whatever password is offered.
    let mut c = pg.connect(TRUST_USER, "anything", "postgres");
    assert_eq!(current_user(&mut c), TRUST_USER);
}

#[test]
fn superuser_needs_scram_over_tcp() {
    let pg = shared_pg();
    let mut c = pg.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres");
    assert_eq!(current_user(&mut c), SUPERUSER);
    expect_auth_failure(
        pg.try_connect(SUPERUSER, "wrong", "postgres"),
        "postgres over TCP",
    );
}

#[test]
fn wrong_passwords_are_rejected() {
    let pg = shared_pg();
    expect_auth_failure(pg.try_connect(APP_USER, "nope", APP_DB), "app");
    expect_auth_failure(pg.try_connect(MD5_USER, "nope", APP_DB), "md5_user");
    expect_auth_failure(pg.try_connect(PLAIN_USER, "nope", APP_DB), "plain_user");
    expect_auth_failure(pg.try_connect("no_such_role", "x", APP_DB), "unknown role");
}

#[test]
fn admin_sql_returns_tab_separated_rows() {
    let pg = shared_pg();
    assert_eq!(
        pg.admin_sql("SELECT 1, 'a b'; SELECT 2 UNION ALL SELECT 3 ORDER BY 1"),
        "1\ta b\n2\n3"
    );
    assert_eq!(pg.admin_sql("SELECT current_user"), SUPERUSER);
    assert_eq!(pg.admin_sql_in(APP_DB, "SELECT current_database()"), APP_DB);
    let err = pg.try_admin_sql("SELECT * FROM no_such_table").unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");
    // Statements run one by one: CREATE DATABASE works after another statement.
    pg.admin_sql("SELECT 1; CREATE DATABASE smoke_admin_db; DROP DATABASE smoke_admin_db;");
}

#[test]
fn admin_client_uses_the_unix_socket() {
    let pg = shared_pg();
    assert!(
        pg.socket_dir()
            .join(format!(".s.PGSQL.{}", pg.port()))
            .exists(),
        "no socket in {}",
        pg.socket_dir().display()
    );
    let mut c = pg.admin_client();
    assert_eq!(current_user(&mut c), SUPERUSER);
    let port: String = c.query_one("SHOW port", &[]).unwrap().get(0);
    assert_eq!(port, pg.port().to_string());
    // An empty client address means a Unix-socket connection.
    let addr: Option<String> = c
        .query_one("SELECT inet_client_addr()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(addr, None);
}

#[test]
fn count_backends_follows_connections() {
    let pg = shared_pg();
    pg.admin_sql("CREATE ROLE smoke_counter LOGIN PASSWORD 'cpw'");
    assert_eq!(pg.count_backends("smoke_counter"), 0);
    let clients: Vec<_> = (0..3)
        .map(|_| pg.connect("smoke_counter", "cpw", APP_DB))
        .collect();
    assert_eq!(pg.count_backends("smoke_counter"), 3);
    drop(clients);
    assert!(
        wait_until(secs(10), || pg.count_backends("smoke_counter") == 0),
        "backends did not go away"
    );
}

#[test]
fn userlist_lines_quote_and_hold_the_stored_secret() {
    let pg = shared_pg();
    let line = pg.userlist_line(APP_USER);
    assert!(line.starts_with("\"app\" \"SCRAM-SHA-256$4096:"), "{line}");
    assert!(line.ends_with('"'));
    assert_eq!(userlist_entry("a\"b", "p\"w"), "\"a\"\"b\" \"p\"\"w\"");
}

#[test]
fn run_psql_reports_output_and_failures() {
    let pg = shared_pg();
    let out = run_psql(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        APP_DB,
        "SELECT current_user, 1 + 1;",
    );
    assert_eq!(out.expect_success(), "app\t2\n");
    let out = run_psql(pg.port(), APP_USER, "wrong", APP_DB, "SELECT 1");
    assert!(!out.success(), "{out}");
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out}"
    );
    let out = run_psql(pg.port(), APP_USER, APP_PASSWORD, APP_DB, "SELECT 1/0;");
    assert_eq!(out.code(), Some(3), "ON_ERROR_STOP should give 3: {out}");
    assert!(out.stderr.contains("division by zero"), "{out}");
}

#[test]
fn run_cmd_kills_on_timeout() {
    let start = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo started; sleep 30"]);
    let out = run_cmd(cmd, None, Duration::from_millis(500));
    assert!(out.timed_out(), "{out}");
    assert!(!out.success());
    assert_eq!(out.stdout, "started\n");
    assert!(start.elapsed() < secs(10), "took {:?}", start.elapsed());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "cat; echo err >&2; exit 4"]);
    let out = run_cmd(cmd, Some("fed\n"), secs(10));
    assert_eq!(out.code(), Some(4));
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("fed\n", "err\n")
    );
}

#[test]
fn pgbench_runs_against_the_server() {
    let pg = shared_pg();
    pg.admin_sql("CREATE DATABASE smoke_bench OWNER app");
    let init = run_pgbench(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        "smoke_bench",
        &["-i", "-s", "1", "-q"],
    );
    init.expect_success();
    let run = run_pgbench(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        "smoke_bench",
        &["-c", "2", "-t", "10", "-S", "-n"],
    );
    let out = run.expect_success();
    assert!(
        out.contains("number of transactions actually processed: 20/20"),
        "{run}"
    );
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "{ports:?}");
    for port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port}: {e}"));
    }
}

#[test]
fn wait_until_polls_until_true_or_timeout() {
    let mut calls = 0;
    assert!(wait_until(secs(5), || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);
    let start = Instant::now();
    assert!(!wait_until(Duration::from_millis(200), || false));
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[test]
fn test_dir_writes_files_and_removes_itself() {
    let dir = TestDir::new("smoke");
    let path = dir.write_file("sub/file.txt", "hello");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello");
    assert_eq!(dir.read_file("sub/file.txt"), "hello");
    let root = dir.path().to_path_buf();
    drop(dir);
    if std::env::var_os("PGBOUNCERS_TEST_KEEP").is_none() {
        assert!(!root.exists());
    }
}

fn postmaster_pid(data: &Path) -> i32 {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid in postmaster.pid")
}

#[test]
fn private_server_stops_restarts_and_cleans_up() {
    let pg = PgServer::start();
    let port = pg.port();
    assert_ne!(port, shared_pg().port());
    let mut c = pg.connect(APP_USER, APP_PASSWORD, APP_DB);
    c.batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        .unwrap();

    pg.restart();
    assert!(
        c.simple_query("SELECT 1").is_err(),
        "old connection survived a restart"
    );
    let mut c = pg.connect(APP_USER, APP_PASSWORD, APP_DB);
    let x: i32 = c.query_one("SELECT x FROM kept", &[]).unwrap().get(0);
    assert_eq!(x, 7);
    assert_eq!(pg.port(), port);

    pg.stop();
    assert!(!pg.is_running());
    assert!(pg.try_connect(APP_USER, APP_PASSWORD, APP_DB).is_err());
    pg.start_again();
    assert!(pg.is_running());
    pg.connect(APP_USER, APP_PASSWORD, APP_DB);

    let dir = pg.socket_dir().to_path_buf();
    let pid = postmaster_pid(pg.data_dir());
    assert!(process_alive(pid));
    drop(pg);
    assert!(
        wait_until(secs(5), || !process_alive(pid)),
        "postmaster survived Drop"
    );
    if std::env::var_os("PGBOUNCERS_TEST_KEEP").is_none() {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
}

/// Runs `script` like the harness does, but on behalf of `owner` instead of
/// this process, so the test can make the owner die.
fn run_watchdog_for(owner: u32, script: &str, args: &[&str]) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(owner.to_string())
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn watchdog")
}

#[test]
fn server_watchdog_stops_the_server_when_its_owner_dies() {
    let pg = PgServer::start();
    let pid = postmaster_pid(pg.data_dir());
    let mut owner = Command::new("sleep").arg("30").spawn().unwrap();
    let dir = pg.socket_dir().to_str().unwrap().to_string();
    let data = pg.data_dir().to_str().unwrap().to_string();
    let mut watchdog = run_watchdog_for(owner.id(), common::pg::WATCHDOG, &[&dir, &data]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(process_alive(pid), "watchdog acted while its owner lived");
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert!(
        wait_until(secs(15), || !process_alive(pid)),
        "postmaster still running"
    );
    assert!(watchdog.wait().unwrap().success());
    if std::env::var_os("PGBOUNCERS_TEST_KEEP").is_none() {
        assert!(!Path::new(&dir).exists(), "dir not removed");
    }
}

/// A stand-in for `pgbouncers`: reads `listen_port` from `-c FILE`, listens,
/// forks two "workers", logs signals. `STUB_MODE` changes its behaviour.
const STUB: &str = r#"#!/usr/bin/env python3
import os, signal, socket, sys, time
args = sys.argv[1:]
cfg = args[args.index("-c") + 1]
port = None
with open(cfg) as f:
    for line in f:
        line = line.strip()
        if line.startswith("listen_port:"):
            port = int(line.split(":", 1)[1])
mode = os.environ.get("STUB_MODE", "serve")
print("stub starting pid=%d mode=%s args=%s" % (os.getpid(), mode, " ".join(args)), flush=True)
if mode == "exit":
    print("stub: bad config", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, lambda *_: print("stub got SIGHUP in %d" % os.getpid(), flush=True))
if mode != "no_listen":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    print("stub listening on %d" % port, flush=True)
for _ in range(2):
    if os.fork() == 0:
        break
while True:
    time.sleep(1)
"#;

fn stub_setup(mode: &str) -> PoolerSetup {
    find_tool("python3");
    let mut setup = PoolerSetup::new();
    let script = setup.write_file("stub.py", STUB);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    setup.binary(script).env("STUB_MODE", mode);
    setup
}

const STUB_CONFIG: &str =
    "listen_addr: 127.0.0.1\nlisten_port: @PORT@\nauth_file: @DIR@/userlist.txt\n";

fn assert_all_dead(pids: &[i32]) {
    assert!(
        wait_until(secs(5), || pids.iter().all(|&p| !process_alive(p))),
        "still alive: {:?}",
        pids.iter()
            .filter(|&&p| process_alive(p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn pooler_runner_starts_signals_and_kills_the_group() {
    let setup = stub_setup("serve");
    let port = setup.port();
    let dir = setup.dir().to_path_buf();
    setup.write_file("userlist.txt", "\"app\" \"apppw\"\n");
    let pooler = setup.start_with_args(STUB_CONFIG, &["--workers", "2", "-v"]);
    assert_eq!(pooler.port(), port);
    assert_eq!(pooler.dir(), dir);
    let config = std::fs::read_to_string(pooler.config_path()).unwrap();
    assert!(
        config.contains(&format!("listen_port: {port}\n")),
        "{config}"
    );
    assert!(
        config.contains(&format!("auth_file: {}/userlist.txt", dir.display())),
        "{config}"
    );
    let workers = pooler.wait_for_children(2, secs(5));
    let log = pooler.log();
    assert!(log.contains(&format!("stub listening on {port}")), "{log}");
    assert!(log.contains("--workers 2 -v"), "{log}");
    assert!(
        log.contains(&format!("-c {}", pooler.config_path().display())),
        "{log}"
    );

    pooler.reload();
    let hup = format!("stub got SIGHUP in {}", pooler.pid());
    assert!(pooler.wait_for_log(&hup, secs(5)), "{}", pooler.log());

    let parsed: postgres::Config = pooler.connstr("u'x", "p w\\", "d b").parse().unwrap();
    assert_eq!(parsed.get_user(), Some("u'x"));
    assert_eq!(parsed.get_password(), Some("p w\\".as_bytes()));
    assert_eq!(parsed.get_dbname(), Some("d b"));
    assert_eq!(parsed.get_ports(), &[port]);

    let supervisor = pooler.pid();
    drop(pooler);
    let mut all = workers.clone();
    all.push(supervisor);
    assert_all_dead(&all);
    if std::env::var_os("PGBOUNCERS_TEST_KEEP").is_none() {
        assert!(!dir.exists());
    }
}

#[test]
fn pooler_runner_escalates_to_sigkill() {
    let pooler = stub_setup("ignore_term").start(STUB_CONFIG);
    let mut all = pooler.wait_for_children(2, secs(5));
    all.push(pooler.pid());
    let start = Instant::now();
    drop(pooler);
    let took = start.elapsed();
    assert!(
        took >= secs(3),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < secs(8), "shutdown took {took:?}");
    assert_all_dead(&all);
}

#[test]
fn pooler_runner_reports_early_exit_with_the_log() {
    let err = match stub_setup("exit").try_start(STUB_CONFIG, &[]) {
        Ok(_) => panic!("a stub that exits was reported as started"),
        Err(e) => e,
    };
    assert!(err.contains("exited"), "{err}");
    assert!(err.contains("stub: bad config"), "{err}");
}

fn stub_pid(log: &str) -> i32 {
    log.split("stub starting pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no stub pid in {log}"))
}

#[test]
fn pooler_runner_times_out_and_kills_a_silent_binary() {
    let mut setup = stub_setup("no_listen");
    setup.ready_timeout(secs(1));
    let start = Instant::now();
    let err = match setup.try_start(STUB_CONFIG, &[]) {
        Ok(_) => panic!("a stub that never listens was reported as started"),
        Err(e) => e,
    };
    assert!(start.elapsed() < secs(8), "took {:?}", start.elapsed());
    assert!(err.contains("did not listen"), "{err}");
    assert_all_dead(&[stub_pid(&err)]);
}

#[test]
fn pooler_runner_runs_to_exit() {
    let setup = stub_setup("exit");
    let out = setup.run_to_exit(STUB_CONFIG, &["--check"], secs(10));
    assert_eq!(out.code(), Some(3), "{out}");
    assert!(out.stderr.contains("stub: bad config"), "{out}");
    assert!(out.stdout.contains("--check"), "{out}");

    let setup = stub_setup("serve");
    let out = setup.run_to_exit(STUB_CONFIG, &[], secs(2));
    assert!(out.timed_out(), "{out}");
    assert_all_dead(&[stub_pid(&out.stdout)]);
}

#[test]
fn pooler_watchdog_kills_the_group_when_its_owner_dies() {
    let mut pooler = stub_setup("serve").start(STUB_CONFIG);
    let mut all = pooler.wait_for_children(2, secs(5));
    all.push(pooler.pid());
    let mut owner = Command::new("sleep").arg("30").spawn().unwrap();
    let pgid = pooler.pid().to_string();
    let mut watchdog = run_watchdog_for(owner.id(), common::pooler::WATCHDOG, &[&pgid]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pooler.is_running(), "watchdog acted while its owner lived");
    owner.kill().unwrap();
    owner.wait().unwrap();
    assert_all_dead(&all);
    watchdog.wait().unwrap();
    assert!(pooler.wait_exit(secs(5)).is_some());
}

/// The shared server is up and its recorded postmaster runs. Also the
/// child-process half of the exit tests below: with `HARNESS_PROBE_FILE`
/// set it records where the server lives, then exits normally or, with
/// `HARNESS_PROBE_MODE=hang`, waits to be killed.
#[test]
fn shared_server_reports_its_postmaster() {
    let pg = shared_pg();
    assert!(pg.is_running());
    let pid = postmaster_pid(pg.data_dir());
    assert!(process_alive(pid), "postmaster {pid} is not running");
    let Some(file) = std::env::var_os("HARNESS_PROBE_FILE") else {
        return;
    };
    let tmp = PathBuf::from(&file).with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n{pid}\n", pg.socket_dir().display())).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    if std::env::var("HARNESS_PROBE_MODE").as_deref() == Ok("hang") {
        std::thread::sleep(secs(120));
    }
}

/// Starts `shared_server_reports_its_postmaster` in a child test process; returns it with the shared
/// server's dir and postmaster pid once they are known.
fn start_probe(mode: &str) -> (std::process::Child, PathBuf, i32) {
    let scratch = TestDir::new("probe");
    let file = scratch.join("probe.txt");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "shared_server_reports_its_postmaster"])
        .env("HARNESS_PROBE_FILE", &file)
        .env("HARNESS_PROBE_MODE", mode)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    assert!(
        wait_until(secs(90), || {
            text = std::fs::read_to_string(&file).unwrap_or_default();
            !text.is_empty()
        }),
        "probe did not report its server"
    );
    let mut lines = text.lines();
    let dir = PathBuf::from(lines.next().unwrap());
    let pid = lines.next().unwrap().parse().unwrap();
    // In "exit" mode the probe may already have exited and cleaned up by now.
    if mode == "hang" {
        assert!(process_alive(pid));
    }
    (child, dir, pid)
}

#[test]
fn shared_server_is_cleaned_up_at_normal_exit() {
    let (mut child, dir, pid) = start_probe("exit");
    let status = child.wait().unwrap();
    assert!(status.success(), "probe failed: {status}");
    // The atexit hook ran before the process was gone: nothing to wait for.
    assert!(!process_alive(pid), "postmaster outlived its test binary");
    if std::env::var_os("PGBOUNCERS_TEST_KEEP").is_none() {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
}

#[test]
fn shared_server_is_cleaned_up_when_the_binary_is_killed() {
    let (mut child, dir, pid) = start_probe("hang");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(secs(20), || !process_alive(pid)),
        "postmaster outlived its killed test binary"
    );
    if std::env::var_os("PGBOUNCERS_TEST_KEEP").is_none() {
        assert!(wait_until(secs(10), || !dir.exists()), "dir not removed");
    }
}
