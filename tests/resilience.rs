//! Resilience and operations: a stopped worker, an unwritable log, privileges dropped after
//! binding a privileged port, a transaction committing across a graceful shutdown, the
//! console's counters covering every worker's short connections, and a worker out of
//! descriptors.

mod common;

use common::tools::child_pids;
use common::wire::startup_packet;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// A transaction-mode config on the shared server with trust auth and a console user.
fn config(extra: &str) -> String {
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         admin_users: [{TRUST_USER}]\n\
         pool_mode: transaction\n\
         log_connections: true\n\
         {extra}\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: app, user: {TRUST_USER} }}\n",
        port = shared_pg().port()
    )
}

/// Rows of a console SHOW, as text.
fn show(pooler: &Pooler, what: &str) -> Vec<Vec<String>> {
    let mut c = pooler.connect(TRUST_USER, "", "pgbouncer");
    c.simple_query(&format!("SHOW {what}"))
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stopped_worker_does_not_disturb_the_others() {
    let yaml = config("").replace("pool_mode: transaction", "pool_mode: session");
    let pooler = PoolerSetup::new().start_with_args(&yaml, &["--workers", "3"]);
    let workers = pooler.wait_for_children(3, secs(5));
    // Sessions spread by the kernel over the workers.
    let sessions: Vec<postgres::Client> = (0..12)
        .map(|_| pooler.connect(TRUST_USER, "", "app"))
        .collect();
    // Which worker serves each session: the console lists sessions with their worker;
    // match by the backend pid each session reports and SHOW SERVERS' remote_pid.
    // A session-mode client gets its server at its first query.
    let sessions: Vec<(String, postgres::Client)> = sessions
        .into_iter()
        .map(|mut c| (scalar(&mut c, "SELECT pg_backend_pid()").unwrap(), c))
        .collect();
    let servers = show(&pooler, "SERVERS");
    let mut by_worker: Vec<(usize, postgres::Client)> = Vec::new();
    for (pid, c) in sessions {
        let w = servers
            .iter()
            .find(|r| r[16] == pid)
            .and_then(|r| r[21].parse().ok())
            .expect("every session's backend is listed");
        by_worker.push((w, c));
    }
    let slots: std::collections::BTreeSet<usize> = by_worker.iter().map(|(w, _)| *w).collect();
    assert!(
        slots.len() >= 2,
        "sessions all landed on one worker: {slots:?}"
    );
    let stopped = *slots.iter().next().unwrap();
    let stopped_pid = show(&pooler, "WORKERS")
        .into_iter()
        .find(|r| r[0] == stopped.to_string())
        .map(|r| r[1].parse::<i32>().unwrap())
        .unwrap();
    assert!(workers.contains(&stopped_pid));

    // SAFETY: signalling a child we started.
    unsafe { libc::kill(stopped_pid, libc::SIGSTOP) };
    let resume = Guard(stopped_pid);
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < secs(5) {
        for (w, c) in by_worker.iter_mut().filter(|(w, _)| *w != stopped) {
            let got = scalar(c, "SELECT 1")
                .unwrap_or_else(|e| panic!("worker {w}'s session failed: {e}"));
            assert_eq!(got, "1");
            answered += 1;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answered > 20,
        "the other workers answered only {answered} queries"
    );
    // The supervisor still acts on signals while a worker is stopped.
    pooler.reload();
    assert!(
        pooler.wait_for_log(
            &format!("[{}] INFO configuration reloaded", pooler.pid()),
            secs(3)
        ),
        "the supervisor did not reload while a worker was stopped:\n{}",
        pooler.log()
    );
    drop(resume);
    // Once resumed, the stopped worker's sessions answer again and nobody was respawned.
    for (_, c) in by_worker.iter_mut().filter(|(w, _)| *w == stopped) {
        assert_eq!(scalar(c, "SELECT 2").unwrap(), "2");
    }
    assert_eq!(pooler.children().len(), 3);
    assert!(!pooler.log().contains("respawning"), "{}", pooler.log());
}

/// Sends SIGCONT on drop, so a failed assertion never leaves a worker stopped.
struct Guard(i32);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn an_unwritable_log_does_not_stop_service() {
    // /dev/full fails every write with ENOSPC, as a full disk does.
    let pooler = PoolerSetup::new().start_with_args(
        &config("logfile: /dev/full\nlog_disconnections: true\nverbose: 1\n"),
        &["--workers", "2"],
    );
    // Both workers, not just the first to be forked.
    let before = pooler.wait_for_children(2, secs(10));
    for i in 0..50 {
        let mut c = pooler.connect(TRUST_USER, "", "app");
        assert_eq!(
            scalar(&mut c, &format!("SELECT {i}")).unwrap(),
            i.to_string()
        );
    }
    pooler.reload();
    thread::sleep(Duration::from_millis(300));
    let mut c = pooler.connect(TRUST_USER, "", "app");
    assert_eq!(scalar(&mut c, "SELECT 'still here'").unwrap(), "still here");
    assert_eq!(
        pooler.children(),
        before,
        "a worker died writing to a full log"
    );
}

fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A free port below 1024, which only root may bind.
fn privileged_port() -> u16 {
    (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("no free port below 1024")
}

#[test]
fn workers_drop_root_after_the_supervisor_binds_a_privileged_port() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test needs root, as CI and the development machines run"
    );
    let port = privileged_port();
    let yaml =
        config("user: nobody\n").replace("listen_port: @PORT@", &format!("listen_port: {port}"));
    let setup = PoolerSetup::new();
    let cfg = setup.write_file("privileged.yaml", &yaml);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgbouncers"))
        .args(["-c", cfg.to_str().unwrap(), "--workers", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let kill = ChildGuard(&mut child);
    assert!(
        wait_until(secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "nothing listens on privileged port {port}"
    );
    let sup = kill.0.id() as i32;
    // The supervisor listens before it forks: a connect can beat the workers.
    assert!(
        wait_until(secs(5), || child_pids(sup).len() == 2),
        "workers: {:?}",
        child_pids(sup)
    );
    let workers = child_pids(sup);
    assert_eq!(
        uid_of(sup),
        0,
        "the supervisor keeps root to bind on reload"
    );
    let nobody = nix_uid("nobody");
    for w in &workers {
        assert_eq!(uid_of(*w), nobody, "worker {w} still runs as root");
    }
    // Serving works as nobody: the supervisor bound the socket before the workers dropped root.
    let mut c = postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(TRUST_USER)
        .dbname("app")
        .connect(postgres::NoTls)
        .unwrap();
    assert_eq!(scalar(&mut c, "SELECT 7").unwrap(), "7");
}

fn nix_uid(name: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|u| u.parse().ok())
        .unwrap()
}

struct ChildGuard<'a>(&'a mut std::process::Child);

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // Its workers die with it (PR_SET_PDEATHSIG).
    }
}

#[test]
fn an_open_transaction_commits_across_a_graceful_shutdown() {
    let pg = shared_pg();
    pg.admin_sql_in("app", "CREATE TABLE IF NOT EXISTS res_shutdown (n int)");
    pg.admin_sql_in("app", &format!("GRANT ALL ON res_shutdown TO {TRUST_USER}"));
    let mut pooler =
        PoolerSetup::new().start_with_args(&config("shutdown_timeout: 10\n"), &["--workers", "2"]);
    let mut c = pooler.connect(TRUST_USER, "", "app");
    c.batch_execute("BEGIN; INSERT INTO res_shutdown VALUES (4242);")
        .unwrap();
    // SIGINT: the transaction finishes, then the idle client is closed (SIGTERM
    // would wait for it to disconnect).
    pooler.signal(libc::SIGINT);
    thread::sleep(Duration::from_millis(500));
    // Still inside its transaction: it goes on and commits.
    c.batch_execute("INSERT INTO res_shutdown VALUES (4243); COMMIT;")
        .unwrap();
    let committed = pg.admin_sql_in(
        "app",
        "SELECT count(*) FROM res_shutdown WHERE n IN (4242, 4243)",
    );
    assert_eq!(committed, "2");
    let status = pooler
        .wait_exit(secs(10))
        .expect("the pooler exits once the transaction is over");
    assert_eq!(status.code(), Some(0), "{}", pooler.log());
}

#[test]
fn console_counts_every_workers_short_connections() {
    let pooler =
        PoolerSetup::new().start_with_args(&config("stats_period: 1\n"), &["--workers", "2"]);
    let accepts_before: u64 = show(&pooler, "WORKERS")
        .iter()
        .map(|r| r[8].parse::<u64>().unwrap())
        .sum();
    for i in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", pooler.port())).unwrap();
        // A trust login and one query on the raw protocol, then Terminate.
        let mut pkt = startup_packet(&[("user", TRUST_USER), ("database", "app")]);
        let q = format!("SELECT {i}\0");
        pkt.push(b'Q');
        pkt.extend_from_slice(&((q.len() + 4) as u32).to_be_bytes());
        pkt.extend_from_slice(q.as_bytes());
        s.write_all(&pkt).unwrap();
        // Read until the query's ReadyForQuery (the second one).
        let mut seen = 0;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while seen < 2 {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed early");
            buf.extend_from_slice(&chunk[..n]);
            seen = buf
                .windows(6)
                .filter(|w| w[0] == b'Z' && w[1..5] == [0, 0, 0, 5])
                .count();
        }
        s.write_all(&[b'X', 0, 0, 0, 4]).unwrap();
    }
    // Counters reach shared memory on each worker's next tick (200 ms).
    let accepts_of = |rows: &[Vec<String>]| {
        rows.iter()
            .map(|r| r[8].parse::<u64>().unwrap())
            .sum::<u64>()
    };
    wait_until(secs(3), || {
        accepts_of(&show(&pooler, "WORKERS")) - accepts_before >= 200
    });
    let workers = show(&pooler, "WORKERS");
    assert_eq!(workers.len(), 2);
    let accepts = accepts_of(&workers);
    assert!(
        accepts - accepts_before >= 200,
        "accepts went from {accepts_before} to {accepts}: {workers:?}\n{}",
        pooler.log()
    );
    assert!(
        workers.iter().all(|r| r[8].parse::<u64>().unwrap() > 0),
        "a worker accepted nothing: {workers:?}"
    );
    // SHOW STATS covers both workers.
    assert!(wait_until(secs(3), || {
        show(&pooler, "STATS")
            .iter()
            .find(|r| r[0] == "app")
            .is_some_and(|r| r[2].parse::<u64>().unwrap() >= 200)
    }));
}

#[test]
fn metrics_parse_as_prometheus_text_with_every_series() {
    let mport = free_port();
    let pooler = PoolerSetup::new().start_with_args(
        &config(&format!("metrics_addr: 127.0.0.1:{mport}\n")),
        &["--workers", "2"],
    );
    let mut held: Vec<postgres::Client> = (0..4)
        .map(|_| pooler.connect(TRUST_USER, "", "app"))
        .collect();
    for c in &mut held {
        scalar(c, "SELECT 1").unwrap();
    }
    // Counters reach shared memory at the next tick.
    thread::sleep(Duration::from_millis(400));
    let mut s = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the body parses as Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("pgbouncers_up", &[]), Some(1.0));
    for w in ["0", "1"] {
        assert!(
            value("pgbouncers_worker_clients", &[("worker", w)]).is_some(),
            "worker {w}"
        );
    }
    let total_clients: f64 = ["0", "1"]
        .iter()
        .map(|w| value("pgbouncers_worker_clients", &[("worker", w)]).unwrap())
        .sum();
    assert_eq!(total_clients, 4.0, "held clients over both workers");
    assert_eq!(
        value(
            "pgbouncers_pool_client_active_connections",
            &[("database", "app"), ("user", TRUST_USER)]
        ),
        Some(4.0)
    );
    assert!(value("pgbouncers_database_queries_total", &[("database", "app")]).unwrap() >= 4.0);
    assert!(value(
        "pgbouncers_proxy_headers_rejected_total",
        &[("reason", "untrusted")]
    )
    .is_some());
    // Counters are typed as counters and end in _total; docs exist for every family.
    for s in &scrape.samples {
        assert!(s.metric.starts_with("pgbouncers_"), "{}", s.metric);
        if let prometheus_parse::Value::Counter(_) = s.value {
            assert!(
                s.metric.ends_with("_total"),
                "counter {} without _total",
                s.metric
            );
        }
        assert!(
            scrape.docs.contains_key(&s.metric),
            "no HELP for {}",
            s.metric
        );
    }
}

/// The answer to `GET /metrics` on 127.0.0.1:`port`, or None when nothing answers.
fn metrics_response(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    Some(resp)
}

/// The status line of `GET /metrics` on 127.0.0.1:`port`, or None when nothing answers.
fn metrics_status(port: u16) -> Option<String> {
    metrics_response(port)?.lines().next().map(str::to_string)
}

#[test]
fn metrics_addr_follows_a_reload() {
    let (first, second) = (free_port(), free_port());
    let pooler = PoolerSetup::new().start_with_args(&config(""), &["--workers", "2"]);
    assert_eq!(metrics_status(first), None);
    // Uptime must count from the pooler's start, not from the endpoint's.
    thread::sleep(Duration::from_millis(1500));
    for port in [first, second] {
        pooler.rewrite_config(&config(&format!("metrics_addr: 127.0.0.1:{port}\n")));
        pooler.reload();
        assert!(
            wait_until(secs(3), || metrics_status(port)
                .is_some_and(|l| l.starts_with("HTTP/1.1 200"))),
            "no metrics on {port} after the reload\n{}",
            pooler.log()
        );
    }
    assert_eq!(
        metrics_status(first),
        None,
        "the old endpoint is still open"
    );
    let body = metrics_response(second).unwrap();
    let uptime: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("pgbouncers_uptime_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("an uptime sample");
    assert!(uptime >= 1, "{body}");
    pooler.rewrite_config(&config(""));
    pooler.reload();
    assert!(
        wait_until(secs(3), || metrics_status(second).is_none()),
        "{}",
        pooler.log()
    );
    // The clients never noticed.
    let mut c = pooler.connect(TRUST_USER, "", "app");
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
}

#[test]
fn the_log_file_is_reopened_on_reload_after_rotation() {
    let pooler = PoolerSetup::new()
        .start_with_args(&config("logfile: @DIR@/pooler.log\n"), &["--workers", "2"]);
    let (log, rotated) = (pooler.path("pooler.log"), pooler.path("pooler.log.1"));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let _first = pooler.connect(TRUST_USER, "", "app");
    assert!(wait_until(secs(3), || read(&log).contains("login attempt")));
    // logrotate's way: rename, then SIGHUP.
    std::fs::rename(&log, &rotated).unwrap();
    pooler.reload();
    // The supervisor's and both workers' lines about this reload are in the new file.
    assert!(
        wait_until(secs(3), || {
            let text = read(&log);
            text.contains("INFO configuration reloaded")
                && (0..2).all(|w| text.contains(&format!("worker {w}: configuration reloaded")))
        }),
        "new file:\n{}\nrotated file:\n{}",
        read(&log),
        read(&rotated)
    );
    let _second = pooler.connect(TRUST_USER, "", "app");
    assert!(wait_until(secs(3), || read(&log).contains("login attempt")));
    let old = read(&rotated);
    assert!(old.contains("login attempt"), "{old}");
    assert!(!old.contains("configuration reloaded"), "{old}");
}

#[test]
fn a_reload_that_names_another_log_file_moves_the_log_there_and_back_to_stderr() {
    let pooler = PoolerSetup::new()
        .start_with_args(&config("logfile: @DIR@/first.log\n"), &["--workers", "2"]);
    let (first, second) = (pooler.path("first.log"), pooler.path("second.log"));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let reloaded_everywhere = |text: &str| {
        text.contains("INFO configuration reloaded")
            && (0..2).all(|w| text.contains(&format!("worker {w}: configuration reloaded")))
    };
    let _a = pooler.connect(TRUST_USER, "", "app");
    assert!(wait_until(secs(3), || read(&first).contains("login attempt")));

    pooler.rewrite_config(&config("logfile: @DIR@/second.log\n"));
    pooler.reload();
    // Every process follows: the supervisor's and both workers' reload lines land in the
    // new file, and so do later connections.
    assert!(
        wait_until(secs(3), || reloaded_everywhere(&read(&second))),
        "second.log:\n{}\nfirst.log:\n{}",
        read(&second),
        read(&first)
    );
    let before = read(&first).matches("login attempt").count();
    let _b = pooler.connect(TRUST_USER, "", "app");
    assert!(wait_until(secs(3), || read(&second).contains("login attempt")));
    assert_eq!(read(&first).matches("login attempt").count(), before);
    assert!(read(&first).contains("logging to"), "{}", read(&first));

    // Without a logfile the log goes back to stderr.
    pooler.rewrite_config(&config(""));
    pooler.reload();
    assert!(
        wait_until(secs(3), || reloaded_everywhere(&pooler.log())),
        "stderr:\n{}",
        pooler.log()
    );
    let in_second = read(&second).matches("login attempt").count();
    let _c = pooler.connect(TRUST_USER, "", "app");
    assert!(wait_until(secs(3), || pooler
        .log()
        .contains("login attempt")));
    assert_eq!(read(&second).matches("login attempt").count(), in_second);
}

/// The lowest descriptor number process `pid` does not hold: the one its next socket gets.
fn lowest_free_fd(pid: i32) -> u64 {
    let held: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the worker's descriptors are listed")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !held.contains(n)).unwrap()
}

/// Sets process `pid`'s soft RLIMIT_NOFILE, keeping its hard limit.
fn set_nofile(pid: i32, soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` and writes `old`, two rlimits that live for the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    assert_eq!(rc, 0, "reading the worker's RLIMIT_NOFILE");
    lim.rlim_cur = soft;
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "setting the worker's RLIMIT_NOFILE to {soft}");
}

/// Out of descriptors, a worker stops accepting for a second instead of spinning on a
/// listener it cannot serve; its clients go on meanwhile, and it takes the connections that
/// queued once it has descriptors again.
#[test]
fn out_of_descriptors_pauses_accepting_and_then_takes_the_queue() {
    let pooler = PoolerSetup::new().start_with_args(&config(""), &["--workers", "1"]);
    let worker = pooler.wait_for_children(1, secs(5))[0];
    let mut before = pooler.connect(TRUST_USER, "", "app");
    assert_eq!(scalar(&mut before, "SELECT 1").unwrap(), "1");
    // Its next descriptor is over the limit: every accept fails with EMFILE.
    set_nofile(worker, lowest_free_fd(worker));
    // Its login reads with a 10 s timeout: a worker that never resumed fails the test.
    let port = pooler.port();
    let queued = thread::spawn(move || {
        let startup = startup_packet(&[("user", TRUST_USER), ("database", "app")]);
        let mut s = common::wire::raw_login(port, &startup, "")?;
        Ok::<_, String>(common::wire::run_query(&mut s, "SELECT 3").0)
    });
    assert!(
        pooler.wait_for_log("pausing accepts for 1s", secs(5)),
        "no pause in the log:\n{}",
        pooler.log()
    );
    // A client it already has is served as before.
    assert_eq!(scalar(&mut before, "SELECT 2").unwrap(), "2");
    assert!(
        !queued.is_finished(),
        "a client got in with no descriptor to spare"
    );
    set_nofile(worker, 1024);
    assert_eq!(queued.join().unwrap(), Ok(vec!["3".to_string()]));
    let mut after = pooler.connect(TRUST_USER, "", "app");
    assert_eq!(scalar(&mut after, "SELECT 4").unwrap(), "4");
}
