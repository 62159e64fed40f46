//! Load and leaks: thousands of concurrent clients on 20 server connections, connect/disconnect cycles that must not grow the workers' descriptors or memory, and the one-minute soak (`scripts/soak.sh 60`).
//!
//! The tests here take the machine's two cores for themselves, so they run
//! one at a time (a file-wide lock), and each stays within about a minute in
//! a debug build. Sizes can be raised for a longer local run:
//! `PGBOUNCERS_LOAD_CLIENTS` (default 10,000), `PGBOUNCERS_LOAD_CYCLES`
//! (default 100,000, capped by a 40 s budget), `PGBOUNCERS_SOAK_SECS`
//! (default 60).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::wire::startup_packet;
use common::*;
use futures_util::stream::{self, StreamExt};
use tokio_postgres::SimpleQueryMessage;

/// One test at a time: each wants both cores, and timing bounds (login
/// rates, the soak's throughput) mean nothing when they compete.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (the
/// pooler, started afterwards, inherits it); returns the new soft limit.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            0,
            "getrlimit"
        );
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "setrlimit({}): {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
        lim.rlim_cur
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
fn status_kb(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// Thousands of clients, twenty servers
// ---------------------------------------------------------------------------

/// Samples pg_stat_activity every 20 ms for `role`'s backends and keeps the
/// largest count seen, until dropped.
struct BackendSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    samples: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BackendSampler {
    fn start(role: &str) -> BackendSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let mut admin = shared_pg().admin_client();
        let role = role.to_string();
        let thread = {
            let (stop, max, samples) = (stop.clone(), max.clone(), samples.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = admin
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE usename = $1 AND backend_type = 'client backend'",
                            &[&role],
                        )
                        .expect("count backends")
                        .get(0);
                    max.fetch_max(n, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        BackendSampler {
            stop,
            max,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns (largest count, number of samples).
    fn finish(mut self) -> (i64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("sampler thread panicked");
        }
        (
            self.max.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

impl Drop for BackendSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `n` clients connect (all of them, before anyone queries), then all run
/// five `SELECT 1` each at once through 2 workers limited to 20 server
/// connections in total (max_user_connections), then all disconnect. Every
/// connection and query succeeds, and PostgreSQL never sees more than 20
/// backends of the role.
#[test]
fn ten_thousand_clients_share_twenty_servers() {
    let _serial = serial();
    const ROLE: &str = "t_load_many";
    const SERVERS: i64 = 20;
    let wanted = env_usize("PGBOUNCERS_LOAD_CLIENTS", 10_000);
    let nofile = raise_nofile() as usize;
    // The test holds n sockets, and so does the pooler (it inherits the
    // limit), split over its workers: scale down on a machine whose hard
    // limit is lower, but not below what still means something.
    let n = wanted.min(nofile.saturating_sub(200));
    if n < wanted {
        eprintln!("[load] RLIMIT_NOFILE is {nofile}: {n} clients instead of {wanted}");
    }
    assert!(
        n >= 2_000,
        "RLIMIT_NOFILE is {nofile}: too low for even 2,000 clients (raise the hard limit)"
    );
    let pg = shared_pg();
    pg.admin_sql(&format!(
        "CREATE ROLE {ROLE} LOGIN PASSWORD {}",
        quote_literal(ROLE)
    ));
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist_entry(ROLE, ROLE));
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         auth_file: @DIR@/userlist.txt\n\
         pool_mode: transaction\n\
         max_client_conn: {max_clients}\n\
         default_pool_size: {SERVERS}\n\
         max_user_connections: {SERVERS}\n\
         query_wait_timeout: 120\n\
         client_login_timeout: 120\n\
         log_connections: false\n\
         log_disconnections: false\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
        max_clients = n + 100,
        port = pg.port()
    );
    let pooler = setup.start_with_args(&yaml, &["--workers", "2"]);
    pooler.wait_for_children(2, secs(10));
    let sampler = BackendSampler::start(ROLE);
    let config = pooler.tokio_config(ROLE, "", APP_DB);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let (connected, connect_errors, connect_time, query_errors, rows) = rt.block_on(async {
        // Connect everyone first, a few hundred logins in flight at a time
        // (the listen backlog is finite; SYN retries would only slow it).
        let results: Vec<_> = stream::iter(0..n)
            .map(|_| {
                let config = config.clone();
                async move {
                    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Ok::<_, tokio_postgres::Error>(client)
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let connect_time = started.elapsed();
        let mut clients = Vec::new();
        let mut connect_errors = Vec::new();
        for r in results {
            match r {
                Ok(c) => clients.push(c),
                Err(e) => connect_errors.push(format!("{e:?}")),
            }
        }
        // Now every client queries at once.
        let outcomes = futures_util::future::join_all(clients.iter().map(|c| async move {
            let mut ones = 0u32;
            for _ in 0..5 {
                let msgs = c.simple_query("SELECT 1").await?;
                ones += msgs
                    .iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("1")))
                    .count() as u32;
            }
            Ok::<u32, tokio_postgres::Error>(ones)
        }))
        .await;
        let mut query_errors = Vec::new();
        let mut rows = 0u64;
        for o in outcomes {
            match o {
                Ok(k) => rows += u64::from(k),
                Err(e) => query_errors.push(format!("{e:?}")),
            }
        }
        let connected = clients.len();
        drop(clients);
        (connected, connect_errors, connect_time, query_errors, rows)
    });
    let total = started.elapsed();
    let (max_backends, samples) = sampler.finish();
    eprintln!(
        "[load] {n} clients: connected in {connect_time:.1?}, all done in {total:.1?}; \
         at most {max_backends} backends in {samples} samples"
    );
    assert!(
        connect_errors.is_empty(),
        "{} of {n} clients could not connect, first: {:?}\n--- log tail ---\n{}",
        connect_errors.len(),
        &connect_errors[..connect_errors.len().min(3)],
        common::pg::tail(&pooler.log(), 40)
    );
    assert!(
        query_errors.is_empty(),
        "{} of {connected} clients had a failing query, first: {:?}\n--- log tail ---\n{}",
        query_errors.len(),
        &query_errors[..query_errors.len().min(3)],
        common::pg::tail(&pooler.log(), 40)
    );
    assert_eq!(rows, 5 * n as u64, "every SELECT 1 returns one row `1`");
    assert!(
        samples >= 5,
        "pg_stat_activity was sampled only {samples} times"
    );
    assert!(
        max_backends <= SERVERS,
        "PostgreSQL saw {max_backends} backends of {ROLE}, the limit is {SERVERS}"
    );
    // Sanity: the load was spread over several servers, not serialised on one.
    assert!(
        max_backends >= 2,
        "only {max_backends} backend(s) served {n} clients"
    );
}

// ---------------------------------------------------------------------------
// Connect/disconnect cycles
// ---------------------------------------------------------------------------

/// One raw trust login (StartupMessage, read up to ReadyForQuery), then
/// Terminate, then wait for the pooler to close. Returns an error message
/// on anything unexpected.
fn cycle(port: u16, startup: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(secs(10))).ok();
    s.write_all(startup).map_err(|e| format!("startup: {e}"))?;
    let mut head = [0u8; 5];
    loop {
        s.read_exact(&mut head)
            .map_err(|e| format!("reading the greeting: {e}"))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..1 << 16).contains(&len) {
            return Err(format!("message {:?} of length {len}", head[0] as char));
        }
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body)
            .map_err(|e| format!("reading a greeting body: {e}"))?;
        match head[0] {
            b'Z' => break,
            b'E' => return Err(format!("login failed: {}", String::from_utf8_lossy(&body))),
            _ => {}
        }
    }
    s.write_all(&[b'X', 0, 0, 0, 4])
        .map_err(|e| format!("Terminate: {e}"))?;
    // The pooler closes first: its socket takes the TIME_WAIT, not our
    // ephemeral port.
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} bytes after Terminate")),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("waiting for the close after Terminate: {e}")),
    }
}

/// Runs cycles on `threads` threads until `count` are done or `budget`
/// passes; returns (cycles done, failures).
fn run_cycles(port: u16, threads: usize, count: u64, budget: Duration) -> (u64, Vec<String>) {
    let pkt = startup_packet(&[("user", TRUST_USER), ("database", APP_DB)]);
    let done = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let deadline = Instant::now() + budget;
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while Instant::now() < deadline && done.fetch_add(1, Ordering::Relaxed) < count {
                    if let Err(e) = cycle(port, &pkt) {
                        let mut f = failures.lock().unwrap();
                        if f.len() < 20 {
                            f.push(e);
                        }
                    }
                }
            });
        }
    });
    // fetch_add overshoots by one per thread at the end.
    let done = done.load(Ordering::Relaxed).min(count);
    (done, failures.into_inner().unwrap())
}

/// Connect/disconnect cycles (raw trust login + Terminate on several
/// threads: 100,000, or as many as fit in 40 s): after a warm-up, the
/// workers' open descriptors come back to the same count and their
/// resident memory stays within a small bound.
#[test]
fn connect_disconnect_cycles_leak_nothing() {
    let _serial = serial();
    const WARMUP: u64 = 2_000;
    /// RSS growth allowed after the warm-up: allocator noise, not one byte
    /// per connection (20,000 connections leaking even 100 bytes each would
    /// be 2 MB).
    const RSS_MARGIN_KB: u64 = 1536;
    let count = env_usize("PGBOUNCERS_LOAD_CYCLES", 100_000) as u64;
    let pg = shared_pg();
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         pool_mode: transaction\n\
         max_client_conn: 1000\n\
         log_connections: false\n\
         log_disconnections: false\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
        port = pg.port()
    );
    let pooler = Pooler::start_with_args(&yaml, &["--workers", "2"]);
    let workers = pooler.wait_for_children(2, secs(10));
    let port = pooler.port();

    let (warm, failures) = run_cycles(port, 4, WARMUP, secs(30));
    assert!(failures.is_empty(), "warm-up failures: {failures:?}");
    assert_eq!(warm, WARMUP, "the warm-up did not finish in 30 s");
    let settle = |pids: &[i32]| -> Vec<usize> {
        // Closed sockets leave the table within a moment.
        thread::sleep(Duration::from_millis(300));
        pids.iter().map(|&p| fd_count(p)).collect()
    };
    let fds_before = settle(&workers);
    let rss_before: Vec<u64> = workers.iter().map(|&p| status_kb(p, "VmRSS")).collect();

    let started = Instant::now();
    let (done, failures) = run_cycles(port, 4, count, secs(40));
    let took = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} cycles failed, first: {failures:?}\n--- log tail ---\n{}",
        failures.len(),
        common::pg::tail(&pooler.log(), 30)
    );
    assert!(
        done >= 5_000,
        "only {done} cycles in {took:?}: too few to judge leaks"
    );
    assert_eq!(pooler.children(), workers, "the workers changed");

    let mut fds_after = Vec::new();
    let settled = wait_until(secs(10), || {
        fds_after = workers.iter().map(|&p| fd_count(p)).collect();
        fds_after
            .iter()
            .zip(&fds_before)
            .all(|(after, before)| after <= before)
    });
    let rss_after: Vec<u64> = workers.iter().map(|&p| status_kb(p, "VmRSS")).collect();
    eprintln!(
        "[load] {done} connect/disconnect cycles in {took:.1?} ({:.0}/s); \
         fds {fds_before:?} -> {fds_after:?}; VmRSS kB {rss_before:?} -> {rss_after:?}",
        done as f64 / took.as_secs_f64()
    );
    assert!(
        settled,
        "worker descriptors grew: {fds_before:?} -> {fds_after:?} after {done} cycles"
    );
    for (i, &pid) in workers.iter().enumerate() {
        assert!(
            rss_after[i] <= rss_before[i] + RSS_MARGIN_KB,
            "worker {pid}'s VmRSS grew from {} kB to {} kB over {done} cycles",
            rss_before[i],
            rss_after[i]
        );
    }
}

// ---------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------

/// `scripts/soak.sh 60` against this build: pgbench through 3 workers while
/// the config is reloaded every 10 s and a worker is SIGKILLed at 30 s; it
/// exits 0 only with no unexplained failure, the supervisor alive and 3
/// workers at the end.
#[test]
fn one_minute_soak() {
    let _serial = serial();
    let seconds = env_usize("PGBOUNCERS_SOAK_SECS", 60);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script)
        .arg(seconds.to_string())
        .env("PGBOUNCERS_BIN", env!("CARGO_BIN_EXE_pgbouncers"))
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let out = run_cmd(cmd, None, secs(seconds as u64 + 120));
    eprintln!(
        "[load] soak.sh {seconds} took {:.1?}:\n{}",
        started.elapsed(),
        out.stdout
    );
    assert!(out.success(), "soak.sh {seconds} failed:\n{out}");
    // The script itself fails a run of 40 s or more without a kill.
    assert!(
        out.stdout.contains("RESULT: OK"),
        "unexpected summary:\n{out}"
    );
}
