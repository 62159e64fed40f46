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

#[test]
fn switchover_under_load_follows_the_new_primary_without_a_reload() {
    let primary = PgServer::start();
    let standby = PgServer::standby_of(&primary, STANDBY);
    let port = primary.port();
    primary.admin_sql_in(
        APP_DB,
        "CREATE TABLE failover_writes (at timestamptz); \
         GRANT ALL ON failover_writes TO PUBLIC;",
    );
    let (check_delay, login_retry) = (2, 1);
    let p = pooler(
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
    );
    // A read-only server, idle in its pool, on the standby.
    {
        let mut c = connect(&p, "ro");
        assert_eq!(in_recovery(&mut c), "t");
    }
    assert_eq!(addrs_of(&p, "ro"), [STANDBY]);

    let writes = Arc::new(Writes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pooler_port = p.port();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (w, s) = (writes.clone(), stop.clone());
            thread::spawn(move || writer(pooler_port, w, s))
        })
        .collect();
    // pgbench alongside, as more load; pgbench gives up on a client whose connection
    // breaks, so its figures say little about recovery: the writers measure that.
    let bench = {
        let port = p.port();
        thread::spawn(move || {
            let mut cmd = pgbench_command(port, TRUST_USER, "");
            let script = "INSERT INTO failover_writes VALUES (now());\n";
            let dir = TestDir::new("bench");
            let file = dir.write_file("insert.sql", script);
            cmd.args(["-n", "-c", "4", "-T", "10", "-f"])
                .arg(&file)
                .arg("rw");
            run_cmd(cmd, None, secs(60))
        })
    };
    thread::sleep(Duration::from_secs(3));
    let ok_before = writes.ok.lock().unwrap().len();
    assert!(ok_before > 20, "writers did not get going: {ok_before}");

    // A client in a transaction on the old primary.
    let mut in_tx = connect(&p, "rw");
    in_tx.simple_query("BEGIN").unwrap();
    in_tx
        .simple_query("INSERT INTO failover_writes VALUES (now())")
        .unwrap();

    // Switchover: stop the primary, then promote the standby.
    let stopped = Instant::now();
    primary.stop();
    let promote_started = Instant::now();
    standby.promote();
    let promoted = Instant::now();

    // The client in a transaction gets an error, not a hang.
    let (tx_send, tx_recv) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let r = in_tx.simple_query("INSERT INTO failover_writes VALUES (now())");
        let _ = tx_send.send(r.map(|_| ()).map_err(|e| match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => e.to_string(),
        }));
    });
    let in_tx_result = tx_recv
        .recv_timeout(secs(10))
        .expect("the client in a transaction hangs");
    let e = in_tx_result.expect_err("a write in a transaction on the stopped primary succeeded");
    eprintln!("client in a transaction on the old primary got: {e}");

    // Writes succeed again: some succeed after the promotion.
    let deadline = promoted + secs(check_delay + login_retry + 10);
    let recovered = wait_until(deadline.saturating_duration_since(Instant::now()), || {
        writes
            .ok
            .lock()
            .unwrap()
            .last()
            .is_some_and(|&t| t > promoted)
    });
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let bench = bench.join().unwrap();
    let last_error = writes.last_error.lock().unwrap().clone();
    assert!(
        recovered,
        "writes did not succeed again within server_check_delay + server_login_retry + 10 s; \
         last error: {last_error:?}\n{}",
        p.log()
    );
    let (outage_from, outage_to) = writes.longest_gap(stopped);
    let outage = outage_to.duration_since(outage_from).as_secs_f64();
    let recovery = outage_to.saturating_duration_since(stopped).as_secs_f64();
    let failed = writes.failed.load(Ordering::SeqCst);
    eprintln!(
        "switchover: primary stop took {:.2} s, promote took {:.2} s; longest time without a \
         successful write {outage:.2} s; writes succeeded again {recovery:.2} s after the stop \
         began ({:.2} s after the promotion ended); {failed} failed write attempts by 4 \
         writers (20 ms apart), {} succeeded",
        promote_started.duration_since(stopped).as_secs_f64(),
        promoted.duration_since(promote_started).as_secs_f64(),
        outage_to.saturating_duration_since(promoted).as_secs_f64(),
        writes.ok.lock().unwrap().len(),
    );
    eprintln!("pgbench alongside:\n{}", tail(&bench.stdout, 12));
    eprintln!("{}", tail(&bench.stderr, 6));
    let switch = promoted.duration_since(stopped).as_secs_f64();
    assert!(
        recovery < switch + (check_delay + login_retry) as f64 + 2.0,
        "writes came back {recovery:.2} s after the stop began (switch {switch:.2} s)"
    );
    // The writes after the switchover went to the new primary: the only server left.
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

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
