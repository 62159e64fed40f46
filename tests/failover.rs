//! Host lists, load_balance_hosts and target_session_attrs against a real primary and streaming standby, switchover included.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The primary listens on 127.0.0.1, its standby on 127.0.0.2, both on the same port:
/// a host list has one port for all its hosts, as in PgBouncer.
const PRIMARY: &str = "127.0.0.1";
const STANDBY: &str = "127.0.0.2";
/// A loopback address nothing listens on: connections to it are refused.
const DEAD: &str = "127.0.0.3";

/// A primary and its hot standby, for the tests that do not stop or promote anything.
fn shared_pair() -> &'static (PgServer, PgServer) {
    static PAIR: OnceLock<(PgServer, PgServer)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let primary = PgServer::start();
        let standby = PgServer::standby_of(&primary, STANDBY);
        (primary, standby)
    })
}

/// A pooler (one worker, trust auth, trust_user on the console) with `databases`
/// (YAML lines under `databases:`) and top-level `settings`.
fn pooler(settings: &str, databases: &str) -> Pooler {
    PoolerSetup::new().start(&format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         workers: 1\n\
         auth_type: trust\n\
         admin_users: [{TRUST_USER}]\n\
         {settings}\n\
         databases:\n{databases}"
    ))
}

fn connect(p: &Pooler, db: &str) -> postgres::Client {
    p.connect(TRUST_USER, "", db)
}

/// (addr, port) of each server of database `db`, from SHOW SERVERS.
fn servers_of(p: &Pooler, db: &str) -> Vec<(String, String)> {
    let mut console = connect(p, "pgbouncer");
    query_rows(&mut console, "SHOW SERVERS")
        .iter()
        .filter(|r| r.get("database") == Some(db))
        .map(|r| {
            (
                r.get("addr").unwrap_or("").to_string(),
                r.get("port").unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The distinct addresses of `db`'s servers, sorted.
fn addrs_of(p: &Pooler, db: &str) -> Vec<String> {
    let mut a: Vec<String> = servers_of(p, db).into_iter().map(|(a, _)| a).collect();
    a.sort();
    a.dedup();
    a
}

fn in_recovery(c: &mut postgres::Client) -> String {
    scalar(c, "SELECT pg_is_in_recovery()").expect("pg_is_in_recovery")
}

#[test]
fn round_robin_spreads_servers_and_disable_uses_the_first_host() {
    let (primary, _standby) = shared_pair();
    let port = primary.port();
    let p = pooler(
        "pool_mode: session",
        &format!(
            "  rr:\n    host: \"{PRIMARY},{STANDBY}\"\n    port: {port}\n    dbname: {APP_DB}\n  \
               first: \"host={PRIMARY},{STANDBY} port={port} dbname={APP_DB} load_balance_hosts=disable\"\n"
        ),
    );
    // Session pooling: each client holds its own server.
    let mut rr: Vec<_> = (0..4).map(|_| connect(&p, "rr")).collect();
    let mut first: Vec<_> = (0..3).map(|_| connect(&p, "first")).collect();
    let rr_recovery: Vec<String> = rr.iter_mut().map(in_recovery).collect();
    assert!(
        rr_recovery.contains(&"t".into()) && rr_recovery.contains(&"f".into()),
        "round-robin reached one host only: {rr_recovery:?}"
    );
    for c in &mut first {
        assert_eq!(in_recovery(c), "f", "disable left the first host");
    }
    assert_eq!(addrs_of(&p, "rr"), [PRIMARY, STANDBY], "SHOW SERVERS");
    assert_eq!(addrs_of(&p, "first"), [PRIMARY], "SHOW SERVERS");
    for (_, port_col) in servers_of(&p, "rr") {
        assert_eq!(port_col, port.to_string());
    }
    // SHOW DATABASES shows the list as written, and the mode of a list.
    let mut console = connect(&p, "pgbouncer");
    let dbs = query_rows(&mut console, "SHOW DATABASES");
    let row = |name: &str| {
        dbs.iter()
            .find(|r| r.get("name") == Some(name))
            .unwrap_or_else(|| panic!("no {name} in SHOW DATABASES"))
    };
    assert_eq!(row("rr").get("host"), Some("127.0.0.1,127.0.0.2"));
    assert_eq!(row("rr").get("load_balance_hosts"), Some("round-robin"));
    assert_eq!(row("first").get("load_balance_hosts"), Some("disable"));
    let pools = query_rows(&mut console, "SHOW POOLS");
    let balance = |db: &str| {
        pools
            .iter()
            .find(|r| r.get("database") == Some(db))
            .and_then(|r| r.get("load_balance_hosts").map(str::to_string))
    };
    assert_eq!(balance("rr").as_deref(), Some("round-robin"), "SHOW POOLS");
    assert_eq!(balance("first").as_deref(), Some("disable"), "SHOW POOLS");
    drop(rr);
}

#[test]
fn a_dead_host_is_skipped_and_retried_after_server_login_retry() {
    let (primary, _standby) = shared_pair();
    let port = primary.port();
    let p = pooler(
        "pool_mode: session\nserver_login_retry: 2",
        &format!(
            "  app:\n    host: \"{DEAD},{PRIMARY}\"\n    port: {port}\n    dbname: {APP_DB}\n"
        ),
    );
    let skipped = |p: &Pooler| {
        p.log()
            .matches(&format!("host {DEAD} skipped for server_login_retry"))
            .count()
    };
    // Every login succeeds, though the first host of the list refuses connections.
    let mut clients: Vec<_> = (0..3).map(|_| connect(&p, "app")).collect();
    for c in &mut clients {
        assert_eq!(scalar(c, "SELECT 1").unwrap(), "1");
    }
    assert_eq!(addrs_of(&p, "app"), [PRIMARY]);
    assert_eq!(skipped(&p), 1, "tried again inside server_login_retry");
    // A new client in session pooling gets a new server at its first query.
    let new_server = |clients: &mut Vec<postgres::Client>| {
        let mut c = connect(&p, "app");
        assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
        clients.push(c);
    };
    // Within server_login_retry the dead host is not tried again.
    new_server(&mut clients);
    assert_eq!(skipped(&p), 1, "tried again inside server_login_retry");
    // After it, the next new server tries it again (and skips it again).
    thread::sleep(Duration::from_millis(2200));
    new_server(&mut clients);
    assert!(
        wait_until(secs(5), || skipped(&p) == 2),
        "not retried after server_login_retry:\n{}",
        p.log()
    );
    assert_eq!(addrs_of(&p, "app"), [PRIMARY]);
}

#[test]
fn target_session_attrs_picks_the_right_kind_of_server() {
    let (primary, _standby) = shared_pair();
    let port = primary.port();
    let entry = |name: &str, hosts: &str, attrs: &str| {
        format!(
            "  {name}:\n    host: \"{hosts}\"\n    port: {port}\n    dbname: {APP_DB}\n    \
             target_session_attrs: {attrs}\n"
        )
    };
    let both = format!("{PRIMARY},{STANDBY}");
    let backwards = format!("{STANDBY},{PRIMARY}");
    let dbs = [
        entry("rw", &backwards, "read-write"),
        entry("rw_first", &backwards, "read-write") + "    load_balance_hosts: disable\n",
        entry("ro", &both, "read-only"),
        entry("ps", &both, "prefer-standby"),
        entry("ps_alone", PRIMARY, "prefer-standby"),
        entry("st", &both, "standby"),
        entry("pr", &backwards, "primary"),
        entry("none", STANDBY, "read-write"),
    ]
    .concat();
    let p = pooler("pool_mode: session", &dbs);
    for (db, want) in [
        ("rw", "f"),
        ("rw_first", "f"),
        ("ro", "t"),
        ("ps", "t"),
        ("ps_alone", "f"),
        ("st", "t"),
        ("pr", "f"),
    ] {
        // Several servers each, so round-robin meets both hosts.
        let mut clients: Vec<_> = (0..3).map(|_| connect(&p, db)).collect();
        for c in &mut clients {
            assert_eq!(in_recovery(c), want, "database {db}");
        }
        let host = if want == "t" { STANDBY } else { PRIMARY };
        assert_eq!(addrs_of(&p, db), [host], "SHOW SERVERS for {db}");
    }
    // No host of the right kind: a login is told at once, not left waiting.
    let started = Instant::now();
    let e = p
        .try_connect(TRUST_USER, "", "none")
        .err()
        .expect("a login to a read-write database with only a standby succeeded");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("is a standby, not what target_session_attrs=read-write asks for"),
        "{e:?}"
    );
    assert!(
        started.elapsed() < secs(5),
        "told after {:?}",
        started.elapsed()
    );
    assert!(servers_of(&p, "none").is_empty());
}

/// What the writers saw: when each write succeeded, and the attempts that failed.
#[derive(Default)]
struct Writes {
    ok: Mutex<Vec<Instant>>,
    failed: AtomicU64,
    last_error: Mutex<Option<(Instant, String)>>,
}

impl Writes {
    /// The longest time without a successful write (by any writer) after `from`: the
    /// outage clients saw, as (last success before it, first success after it).
    fn longest_gap(&self, from: Instant) -> (Instant, Instant) {
        let mut ok = self.ok.lock().unwrap().clone();
        ok.sort();
        let before = ok.iter().rposition(|&t| t <= from).unwrap_or(0);
        ok[before..]
            .windows(2)
            .map(|w| (w[0], w[1]))
            .max_by_key(|(a, b)| b.duration_since(*a))
            .expect("writes around the switchover")
    }
}

/// One writer: an INSERT every 20 ms through the pooler, reconnecting after an error.
fn writer(port: u16, w: Arc<Writes>, stop: Arc<AtomicBool>) {
    let mut client: Option<postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let result = (|| -> Result<(), postgres::Error> {
            if client.is_none() {
                let mut cfg = postgres::Config::new();
                cfg.host(LOCALHOST)
                    .port(port)
                    .user(TRUST_USER)
                    .dbname("rw")
                    .connect_timeout(secs(5));
                client = Some(cfg.connect(postgres::NoTls)?);
            }
            let c = client.as_mut().expect("connected");
            c.simple_query("INSERT INTO failover_writes VALUES (now())")?;
            Ok(())
        })();
        match result {
            Ok(()) => w.ok.lock().unwrap().push(Instant::now()),
            Err(e) => {
                w.failed.fetch_add(1, Ordering::SeqCst);
                *w.last_error.lock().unwrap() = Some((Instant::now(), e.to_string()));
                client = None;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a switchover did to the writers.
struct Figures {
    /// How long `pg_ctl stop` and `pg_ctl promote` took.
    stop: f64,
    promote: f64,
    /// The longest time without a successful write, and when writes succeeded again
    /// (from the start of the stop, and from the end of the promotion).
    outage: f64,
    recovery: f64,
    after_promotion: f64,
    failed: u64,
    ok: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "primary stop took {:.2} s, promote {:.2} s; longest time without a successful \
             write {:.2} s; writes succeeded again {:.2} s after the stop began ({:.2} s after \
             the promotion ended); {} failed write attempts by 4 writers (an INSERT each \
             20 ms), {} succeeded",
            self.stop,
            self.promote,
            self.outage,
            self.recovery,
            self.after_promotion,
            self.failed,
            self.ok
        )
    }
}

/// Creates the table the writers write to, on the primary (the standby follows).
fn create_writes_table(primary: &PgServer) {
    primary.admin_sql_in(
        APP_DB,
        "CREATE TABLE failover_writes (at timestamptz); \
         GRANT ALL ON failover_writes TO PUBLIC;",
    );
}

/// Four writers on database `rw` of the pooler on `port`; after 3 s the primary is
/// stopped (fast) and the standby promoted, then `after_promote` runs (a reload, for a
/// pooler that needs one). Waits up to `limit` after the promotion for writes to succeed
/// again, then 2 s more; the error says what the writers last saw.
fn switchover_under_writes(
    port: u16,
    primary: &PgServer,
    standby: &PgServer,
    limit: Duration,
    after_promote: impl FnOnce(),
) -> Result<Figures, String> {
    let writes = Arc::new(Writes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (w, s) = (writes.clone(), stop.clone());
            thread::spawn(move || writer(port, w, s))
        })
        .collect();
    thread::sleep(Duration::from_secs(3));
    let ok_before = writes.ok.lock().unwrap().len();
    let stopped = Instant::now();
    primary.stop();
    let promote_started = Instant::now();
    standby.promote();
    let promoted = Instant::now();
    after_promote();
    let recovered = wait_until(limit, || {
        writes
            .ok
            .lock()
            .unwrap()
            .last()
            .is_some_and(|&t| t > promoted)
    });
    if recovered {
        thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    if ok_before < 20 {
        return Err(format!("writers did not get going: {ok_before} writes"));
    }
    if !recovered {
        let last = writes.last_error.lock().unwrap().clone();
        return Err(format!(
            "writes did not succeed again within {limit:?} of the promotion; last error: {last:?}"
        ));
    }
    let (from, to) = writes.longest_gap(stopped);
    let ok = writes.ok.lock().unwrap().len();
    Ok(Figures {
        stop: promote_started.duration_since(stopped).as_secs_f64(),
        promote: promoted.duration_since(promote_started).as_secs_f64(),
        outage: to.duration_since(from).as_secs_f64(),
        recovery: to.saturating_duration_since(stopped).as_secs_f64(),
        after_promotion: to.saturating_duration_since(promoted).as_secs_f64(),
        failed: writes.failed.load(Ordering::SeqCst),
        ok,
    })
}

/// The pgbouncers of the switchover tests: `rw` (read-write) and `ro` (read-only) on
/// both hosts, transaction pooling.
fn switchover_pooler(port: u16, check_delay: u64, login_retry: u64) -> Pooler {
    pooler(
        &format!(
            "pool_mode: transaction\nserver_check_delay: {check_delay}\n\
             server_login_retry: {login_retry}\nquery_wait_timeout: 10"
        ),
        &format!(
            "  rw:\n    host: \"{PRIMARY},{STANDBY}\"\n    port: {port}\n    dbname: {APP_DB}\n    \
                 target_session_attrs: read-write\n  \
               ro:\n    host: \"{PRIMARY},{STANDBY}\"\n    port: {port}\n    dbname: {APP_DB}\n    \
                 target_session_attrs: read-only\n"
        ),
    )
}

#[test]
fn switchover_under_load_follows_the_new_primary_without_a_reload() {
    let primary = PgServer::start();
    let standby = PgServer::standby_of(&primary, STANDBY);
    create_writes_table(&primary);
    let (check_delay, login_retry) = (2, 1);
    let p = switchover_pooler(primary.port(), check_delay, login_retry);
    // A read-only server, idle in its pool, on the standby.
    {
        let mut c = connect(&p, "ro");
        assert_eq!(in_recovery(&mut c), "t");
    }
    assert_eq!(addrs_of(&p, "ro"), [STANDBY]);
    // A client in a transaction on the old primary when it stops.
    let mut in_tx = connect(&p, "rw");
    in_tx.simple_query("BEGIN").unwrap();
    in_tx
        .simple_query("INSERT INTO failover_writes VALUES (now())")
        .unwrap();
    // pgbench alongside, as more load; pgbench gives up on a client whose connection
    // breaks, so its figures say little about recovery: the writers measure that.
    let bench = {
        let port = p.port();
        thread::spawn(move || {
            let mut cmd = pgbench_command(port, TRUST_USER, "");
            let dir = TestDir::new("bench");
            let file = dir.write_file(
                "insert.sql",
                "INSERT INTO failover_writes VALUES (now());\n",
            );
            cmd.args(["-n", "-c", "4", "-T", "10", "-f"])
                .arg(&file)
                .arg("rw");
            run_cmd(cmd, None, secs(60))
        })
    };
    let limit = secs(check_delay + login_retry + 10);
    let figures = switchover_under_writes(p.port(), &primary, &standby, limit, || {})
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    eprintln!("pgbouncers, switchover with no reload: {figures}");
    let bench = bench.join().unwrap();
    eprintln!(
        "pgbench alongside:\n{}\n{}",
        tail(&bench.stdout, 6),
        tail(&bench.stderr, 5)
    );
    // Writes came back once the promotion was done, within server_check_delay (and the
    // server_login_retry a standby host is skipped for) and a margin.
    let switch = figures.stop + figures.promote;
    assert!(
        figures.recovery < switch + (check_delay + login_retry) as f64 + 2.0,
        "writes came back {:.2} s after the stop began (switch {switch:.2} s)",
        figures.recovery
    );
    // The client that was in a transaction on the old primary got an error, not a hang.
    let (tx_send, tx_recv) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let r = in_tx.simple_query("INSERT INTO failover_writes VALUES (now())");
        let _ = tx_send.send(r.map(|_| ()).map_err(|e| match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => e.to_string(),
        }));
    });
    let e = tx_recv
        .recv_timeout(secs(10))
        .expect("the client in a transaction hangs")
        .expect_err("a write in a transaction on the stopped primary succeeded");
    eprintln!("the client in a transaction on the old primary got: {e}");
    // The writes went to the new primary: the only server left.
    assert_eq!(
        addrs_of(&p, "rw"),
        [STANDBY],
        "SHOW SERVERS after the switchover"
    );
    // The read-only pool's server on the promoted host was closed by its role check
    // (server_check_delay), though nobody used it: no read-only host is left.
    assert!(
        wait_until(secs(check_delay + 3), || servers_of(&p, "ro").is_empty()),
        "read-only servers left on the new primary: {:?}",
        servers_of(&p, "ro")
    );
}

/// PgBouncer 1.25 running `ini` (the listen port is in it), as the `postgres` OS user
/// when we are root (PgBouncer refuses to run as root); killed when dropped.
struct PgBouncer {
    child: std::process::Child,
    dir: TestDir,
}

impl PgBouncer {
    fn start(bin: &std::path::Path, ini: &str, listen_port: u16) -> PgBouncer {
        use std::os::unix::fs::PermissionsExt;
        let dir = TestDir::new("pgbouncer");
        // The postgres OS user writes its log here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let ini_path = dir.write_file("pgbouncer.ini", ini);
        dir.write_file(
            "userlist.txt",
            &format!("{}\n", userlist_entry(TRUST_USER, "")),
        );
        let mut cmd = if common::tools::is_root() {
            let mut c = std::process::Command::new(common::tools::find_tool("setpriv"));
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        cmd.arg(&ini_path).current_dir(dir.path());
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = cmd.spawn().expect("start PgBouncer");
        let up = wait_until(secs(10), || {
            std::net::TcpStream::connect((LOCALHOST, listen_port)).is_ok()
        });
        let pb = PgBouncer { child, dir };
        assert!(up, "PgBouncer did not listen:\n{}", pb.log());
        pb
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// Rewrites the ini and sends SIGHUP (RELOAD).
    fn reload(&self, ini: &str) {
        self.dir.write_file("pgbouncer.ini", ini);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same switchover through PgBouncer 1.25, which has no target_session_attrs: its
/// database points at the primary, and is changed by hand to the new primary with a
/// RELOAD right after the promotion (a lower bound: a real operator or script is slower),
/// next to pgbouncers with the same writers. Both must recover within the limit; the
/// figures are printed (`-- --nocapture`). PgBouncer is Debian's (scripts/test.sh installs
/// it), or `PGBOUNCER_BIN=/path/to/pgbouncer` (the 1.25 of ../shared/bench/build-pgbouncer.sh).
#[test]
fn switchover_figures_against_pgbouncer_with_a_reload() {
    let bin = std::env::var("PGBOUNCER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| find_tool("pgbouncer"));
    let (check_delay, login_retry) = (2, 1);
    let limit = secs(check_delay + login_retry + 10);

    let primary = PgServer::start();
    let standby = PgServer::standby_of(&primary, STANDBY);
    create_writes_table(&primary);
    let p = switchover_pooler(primary.port(), check_delay, login_retry);
    let ours = switchover_under_writes(p.port(), &primary, &standby, limit, || {})
        .unwrap_or_else(|e| panic!("pgbouncers: {e}\n{}", p.log()));
    drop(p);
    drop((standby, primary));

    let primary = PgServer::start();
    let standby = PgServer::standby_of(&primary, STANDBY);
    create_writes_table(&primary);
    let listen_port = free_port();
    let ini = |host: &str| {
        format!(
            "[databases]\n\
             rw = host={host} port={} dbname={APP_DB}\n\
             [pgbouncer]\n\
             listen_addr = {LOCALHOST}\n\
             listen_port = {listen_port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = userlist.txt\n\
             pool_mode = transaction\n\
             server_login_retry = {login_retry}\n\
             server_check_delay = {check_delay}\n\
             query_wait_timeout = 10\n\
             logfile = pgbouncer.log\n",
            primary.port()
        )
    };
    let pb = PgBouncer::start(&bin, &ini(PRIMARY), listen_port);
    let theirs = switchover_under_writes(listen_port, &primary, &standby, limit, || {
        pb.reload(&ini(STANDBY))
    })
    .unwrap_or_else(|e| panic!("PgBouncer: {e}\n{}", pb.log()));
    eprintln!("pgbouncers, target_session_attrs=read-write, no reload: {ours}");
    let version = std::process::Command::new(&bin)
        .arg("-V")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    eprintln!("{version}, host changed and RELOAD at once after the promotion: {theirs}");
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A primary that turns read-only without a restart (default_transaction_read_only and a
/// reload): its servers leave the read-write pool at their next role check (idle ones
/// from the janitor, busy ones as they come back), a client waiting for a server is told
/// at query_wait_timeout (no hang), and once the primary is writable again the pool comes
/// back by itself.
#[test]
fn a_primary_turned_read_only_is_left_and_found_again() {
    let primary = PgServer::start();
    create_writes_table(&primary);
    let p = pooler(
        "pool_mode: transaction\nserver_check_delay: 1\nserver_login_retry: 1\n\
         query_wait_timeout: 3",
        &format!(
            "  rw:\n    host: \"{PRIMARY}\"\n    port: {}\n    dbname: {APP_DB}\n    \
             target_session_attrs: read-write\n",
            primary.port()
        ),
    );
    let insert = "INSERT INTO failover_writes VALUES (now())";
    let mut a = connect(&p, "rw");
    let mut b = connect(&p, "rw");
    a.simple_query(insert).unwrap();
    // b holds its server in a transaction while the primary turns read-only.
    b.simple_query("BEGIN").unwrap();
    primary.admin_sql("ALTER SYSTEM SET default_transaction_read_only = on");
    primary.admin_sql("SELECT pg_reload_conf()");
    // The transaction began read-write, and ends so: a role check never takes a server
    // from a client in a transaction (a write in a later, read-only transaction on that
    // server would fail in PostgreSQL).
    b.simple_query(insert).unwrap();
    b.simple_query("COMMIT").unwrap();
    assert!(
        wait_until(secs(5), || servers_of(&p, "rw").is_empty()),
        "servers left on a read-only primary: {:?}",
        servers_of(&p, "rw")
    );
    let started = Instant::now();
    let e = a
        .simple_query(insert)
        .expect_err("a write through a read-write pool with no read-write host succeeded");
    let waited = started.elapsed();
    assert!(waited < secs(6), "the client waited {waited:?}");
    eprintln!("with no read-write host, after {waited:?}: {e:?}");
    assert!(
        p.log()
            .contains("is a read-only primary, not what target_session_attrs=read-write"),
        "{}",
        p.log()
    );
    // Writable again: a new client's write succeeds, with no reload of the pooler.
    primary.admin_sql("ALTER SYSTEM RESET default_transaction_read_only");
    primary.admin_sql("SELECT pg_reload_conf()");
    let back = wait_until(secs(5), || {
        p.try_connect(TRUST_USER, "", "rw")
            .is_ok_and(|mut c| c.simple_query(insert).is_ok())
    });
    assert!(back, "the pool did not come back:\n{}", p.log());
}
