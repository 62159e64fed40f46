//! End-to-end tests of the multi-process supervisor: worker titles and respawn, SO_REUSEPORT spread, signals (reload, shutdown, pause), cross-worker cancels, pooler-wide limits, daemon mode and the SysV script.

mod common;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::wire::error_fields;
use common::wire::{read_next, startup_packet, Message};
use common::*;
use postgres::{NoTls, SimpleQueryMessage};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// A config for the shared server: database `app` (plus `dbs`, extra lines
/// of the `databases:` mapping), pool mode `mode`, `extra` global lines.
/// Workers come from `--workers` unless `extra` sets them.
fn config(mode: &str, extra: &str, dbs: &str) -> String {
    let pg = shared_pg();
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         auth_file: @DIR@/userlist.txt\n\
         pool_mode: {mode}\n\
         query_wait_timeout: 20\n\
         {extra}\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: app }}\n\
         {dbs}",
        port = pg.port(),
    )
}

/// `app` with its plain password, plus `roles` (password = role name).
fn userlist(roles: &[&str]) -> String {
    let mut text = userlist_entry(APP_USER, APP_PASSWORD);
    text.push('\n');
    for role in roles {
        text.push_str(&userlist_entry(role, role));
        text.push('\n');
    }
    text
}

/// Starts a pooler with `--workers N` and waits for its N workers.
fn start(yaml: &str, roles: &[&str], workers: usize) -> (Pooler, Vec<i32>) {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist(roles));
    let n = workers.to_string();
    let pooler = setup.start_with_args(yaml, &["--workers", &n]);
    let pids = pooler.wait_for_children(workers, secs(5));
    (pooler, pids)
}

/// A login role only one test uses (password = its name), so counts in
/// pg_stat_activity are not disturbed by tests running in parallel.
fn create_role(role: &str) {
    shared_pg().admin_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD {}",
        quote_literal(role)
    ));
}

/// Client backends of `role` on the shared server (idle or not).
fn backends(admin: &mut postgres::Client, role: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend'",
            &[&role],
        )
        .expect("count backends")
        .get(0)
}

/// Backends running `pg_sleep` for `application_name` right now.
fn sleeping(admin: &mut postgres::Client, app: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
            &[&app],
        )
        .expect("count sleeping backends")
        .get(0)
}

/// The first column of the first row of `sql` (simple protocol, so it works
/// in every pool mode).
fn scalar(client: &mut postgres::Client, sql: &str) -> Result<String, postgres::Error> {
    let messages = client.simple_query(sql)?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap_or_default())
}

fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

// ---------------------------------------------------------------------------
// Process inspection
// ---------------------------------------------------------------------------

/// `/proc/PID/cmdline` up to the first NUL (the title a worker sets is
/// NUL-padded to the original argv length).
fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// The slot number in a worker's title `pgbouncers: worker N`. A worker
/// sets it just after the fork, so a brand-new one gets a moment.
fn worker_slot(pid: i32) -> usize {
    let mut title = String::new();
    let mut slot = None;
    wait_until(secs(2), || {
        title = cmdline(pid);
        slot = title
            .strip_prefix("pgbouncers: worker ")
            .and_then(|n| n.trim().parse().ok());
        slot.is_some()
    });
    slot.unwrap_or_else(|| panic!("pid {pid} has no worker title: {title:?}"))
}

/// Socket inodes of established IPv4/IPv6 TCP connections from local port
/// `local` to remote port `remote`.
fn tcp_inodes(local: u16, remote: u16) -> Vec<String> {
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9
                && f[3] == "01"
                && port_of(f[1]) == Some(local)
                && port_of(f[2]) == Some(remote)
            {
                inodes.push(f[9].to_string());
            }
        }
    }
    inodes
}

/// Which of `pids` holds an open socket with one of `inodes`.
fn socket_holder(pids: &[i32], inodes: &[String]) -> Option<i32> {
    let wanted: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .any(|link| wanted.contains(link.to_string_lossy().as_ref()))
    })
}

/// The worker serving a session-mode client: the one holding the server
/// connection whose local port PostgreSQL reports as `inet_client_port()`.
fn worker_of(client: &mut postgres::Client, pooler: &Pooler) -> i32 {
    let port: u16 = scalar(client, "SELECT inet_client_port()")
        .expect("inet_client_port")
        .parse()
        .expect("a port number");
    let inodes = tcp_inodes(port, shared_pg().port());
    assert!(!inodes.is_empty(), "no TCP socket with local port {port}");
    let workers = pooler.children();
    socket_holder(&workers, &inodes).unwrap_or_else(|| {
        panic!("no worker of {workers:?} holds the server connection from port {port}")
    })
}

/// The `[pid]` of a log line `<time> [<pid>] <LEVEL> <message>`.
fn log_pid(line: &str) -> Option<i32> {
    let start = line.find(" [")? + 2;
    let len = line[start..].find(']')?;
    line[start..start + len].parse().ok()
}

fn count_lines(log: &str, pred: impl Fn(&str) -> bool) -> usize {
    log.lines().filter(|l| pred(l)).count()
}

/// Supervisor lines that say a reload went through (workers log
/// `worker N: configuration reloaded`, which this does not count).
fn supervisor_reloads(log: &str) -> usize {
    count_lines(log, |l| l.ends_with("INFO configuration reloaded"))
}

fn wait_for_log_count(pooler: &Pooler, needle: &str, n: usize, timeout: Duration) {
    let ok = wait_until(timeout, || {
        count_lines(&pooler.log(), |l| l.contains(needle)) >= n
    });
    assert!(
        ok,
        "expected {n} log lines with `{needle}`\n--- log ---\n{}",
        pooler.log()
    );
}

fn refused(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

fn assert_all_gone(pids: &[i32], timeout: Duration, what: &str) {
    let ok = wait_until(timeout, || pids.iter().all(|&p| !process_alive(p)));
    assert!(
        ok,
        "{what}: still alive after {timeout:?}: {:?}",
        pids.iter()
            .copied()
            .filter(|&p| process_alive(p))
            .collect::<Vec<_>>()
    );
}

fn send_signal(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) on a pid this test started (a worker of its own
    // pooler, which cannot be reaped and reused while its supervisor lives).
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

// ---------------------------------------------------------------------------
// Raw protocol (for what a client library hides: an error while idle)
// ---------------------------------------------------------------------------

/// Logs in with a StartupMessage (trust auth) and reads up to ReadyForQuery.
fn raw_login(port: u16, user: &str, db: &str) -> TcpStream {
    raw_login_with_key(port, user, db).0
}

/// [`raw_login`], also returning BackendKeyData's process id and key.
fn raw_login_with_key(port: u16, user: &str, db: &str) -> (TcpStream, [u8; 8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(&startup_packet(&[("user", user), ("database", db)]))
        .expect("send startup");
    let mut key = None;
    loop {
        let Message { tag, body } = read_next(&mut s).expect("login reply");
        match tag {
            b'K' => key = body.get(..8).and_then(|k| k.try_into().ok()),
            b'Z' => return (s, key.expect("no BackendKeyData")),
            b'E' => panic!("login failed: {:?}", error_fields(&body)),
            b'R' => assert_eq!(body.get(..4), Some(&[0u8, 0, 0, 0][..]), "trust expected"),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Process titles
// ---------------------------------------------------------------------------

#[test]
fn workers_have_ps_titles_and_keep_their_comm() {
    let (pooler, pids) = start(&config("session", "", ""), &[], 3);
    let mut slots = Vec::new();
    for &pid in &pids {
        slots.push(worker_slot(pid));
        let title = cmdline(pid);
        assert!(
            title.starts_with("pgbouncers: worker "),
            "worker {pid} cmdline {title:?}"
        );
        assert_eq!(comm(pid), "pgbouncers", "worker {pid} comm");
    }
    slots.sort_unstable();
    assert_eq!(slots, vec![0, 1, 2], "titles of {pids:?}");
    // The supervisor keeps its own command line.
    let own = cmdline(pooler.pid());
    assert!(!own.contains("worker"), "supervisor cmdline {own:?}");
}

// ---------------------------------------------------------------------------
// 2. SO_REUSEPORT spreads clients over workers
// ---------------------------------------------------------------------------

#[test]
fn connections_spread_over_workers() {
    let (pooler, pids) = start(&config("session", "log_connections: true\n", ""), &[], 3);
    for i in 0..60 {
        let mut c = pooler.connect(APP_USER, "", APP_DB);
        assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1", "client {i}");
    }
    wait_for_log_count(&pooler, "login attempt", 60, secs(5));
    let log = pooler.log();
    let served: BTreeSet<i32> = log
        .lines()
        .filter(|l| l.contains("login attempt"))
        .filter_map(log_pid)
        .collect();
    assert!(
        served.len() >= 2,
        "all 60 logins were served by {served:?}\n{log}"
    );
    assert!(
        !served.contains(&pooler.pid()),
        "the supervisor served clients: {served:?}"
    );
    assert!(
        served.iter().all(|p| pids.contains(p)),
        "logins served by {served:?}, workers are {pids:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. Respawn
// ---------------------------------------------------------------------------

#[test]
fn killed_worker_is_respawned_and_other_workers_keep_serving() {
    let (pooler, pids) = start(&config("session", "", ""), &[], 3);
    let mut held: Vec<(i32, postgres::Client)> = (0..12)
        .map(|_| {
            let mut c = pooler.connect(APP_USER, "", APP_DB);
            (worker_of(&mut c, &pooler), c)
        })
        .collect();
    let victim = held[0].0;
    let slot = worker_slot(victim);
    let (doomed, others): (Vec<_>, Vec<_>) = held.drain(..).partition(|(w, _)| *w == victim);
    assert!(
        !others.is_empty(),
        "all 12 sessions landed on worker {victim}; cannot test the others"
    );

    // Queries on the other workers' sessions run throughout the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let runner = thread::spawn(move || {
        let mut others = others;
        let (mut ok, mut errors) = (0usize, Vec::new());
        while !stop2.load(Ordering::SeqCst) {
            for (w, c) in others.iter_mut() {
                match scalar(c, "SELECT 1") {
                    Ok(v) if v == "1" => ok += 1,
                    other => errors.push(format!("worker {w}: {other:?}")),
                }
            }
            thread::sleep(ms(20));
        }
        (ok, errors)
    });
    thread::sleep(ms(200));
    let killed_at = Instant::now();
    send_signal(victim, libc::SIGKILL);
    let mut now = Vec::new();
    let respawned = wait_until(secs(1), || {
        now = pooler.children();
        now.len() == 3 && !now.contains(&victim)
    });
    let took = killed_at.elapsed();
    assert!(
        respawned,
        "no replacement within 1 s: children {now:?} (was {pids:?})\n{}",
        pooler.log()
    );
    let new_pid = *now.iter().find(|p| !pids.contains(p)).expect("a new pid");
    assert_eq!(worker_slot(new_pid), slot, "replacement took another slot");
    thread::sleep(ms(300));
    stop.store(true, Ordering::SeqCst);
    let (ok, errors) = runner.join().unwrap();
    assert!(
        errors.is_empty(),
        "sessions on other workers failed: {errors:?}"
    );
    assert!(ok > 0, "no query ran on the other workers");

    for (_, mut c) in doomed {
        assert!(
            scalar(&mut c, "SELECT 1").is_err(),
            "a session of the killed worker still answers"
        );
    }
    let log = pooler.log();
    let died = format!("worker {slot} (pid {victim}) killed by SIGKILL; respawning in 0ns");
    assert!(log.contains(&died), "log lacks `{died}`:\n{log}");
    let started = format!("worker {slot} started (pid {new_pid})");
    assert!(log.contains(&started), "log lacks `{started}`:\n{log}");

    // The new worker serves its slot's socket, and new logins work everywhere.
    let mut on_new = false;
    for _ in 0..40 {
        let mut c = pooler.connect(APP_USER, "", APP_DB);
        if worker_of(&mut c, &pooler) == new_pid {
            on_new = true;
            break;
        }
    }
    assert!(
        on_new,
        "40 new sessions, none served by the respawned worker"
    );
    eprintln!("respawned after {took:?}");
}

// ---------------------------------------------------------------------------
// 4. Workers die with the supervisor
// ---------------------------------------------------------------------------

#[test]
fn workers_die_with_the_supervisor() {
    let (pooler, pids) = start(&config("session", "", ""), &[], 3);
    let _client = pooler.connect(APP_USER, "", APP_DB);
    send_signal(pooler.pid(), libc::SIGKILL);
    assert_all_gone(&pids, secs(2), "workers after the supervisor's SIGKILL");
    assert!(
        wait_until(secs(1), || refused(pooler.port())),
        "the port still accepts connections"
    );
}

// ---------------------------------------------------------------------------
// 5. Reload
// ---------------------------------------------------------------------------

fn reload_config(dbs: &str, extra: &str) -> String {
    config("session", extra, dbs).replace("auth_type: trust", "auth_type: md5")
}

#[test]
fn reload_applies_databases_and_users_without_dropping_sessions() {
    const NEW_USER: &str = "t_sup_newuser";
    create_role(NEW_USER);
    let pg = shared_pg();
    let app2 = format!(
        "  app2: {{ host: 127.0.0.1, port: {}, dbname: app }}\n",
        pg.port()
    );
    let (pooler, _) = start(&reload_config("", ""), &[], 2);
    let mut held = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    let backend = scalar(&mut held, "SELECT pg_backend_pid()").unwrap();

    // Before the reload neither the database nor the user exists.
    let err = pooler.try_connect(APP_USER, APP_PASSWORD, "app2").err();
    assert_eq!(
        err.as_ref().and_then(sqlstate),
        Some("08P01"),
        "app2 before reload: {err:?}"
    );
    let err = pooler.try_connect(NEW_USER, NEW_USER, APP_DB).err();
    assert_eq!(
        err.as_ref().and_then(sqlstate),
        Some("28P01"),
        "new user before reload: {err:?}"
    );

    pooler.write_file("userlist.txt", &userlist(&[NEW_USER]));
    pooler.rewrite_config(&reload_config(&app2, ""));
    pooler.reload();
    wait_for_log_count(&pooler, "worker 0: configuration reloaded", 1, secs(5));
    wait_for_log_count(&pooler, "worker 1: configuration reloaded", 1, secs(5));
    assert_eq!(supervisor_reloads(&pooler.log()), 1, "{}", pooler.log());

    assert_eq!(
        scalar(&mut held, "SELECT pg_backend_pid()").unwrap(),
        backend,
        "the held session changed server connection"
    );
    // Several logins, so both workers are likely to be asked.
    for _ in 0..6 {
        let mut c = pooler.connect(NEW_USER, NEW_USER, "app2");
        assert_eq!(
            scalar(&mut c, "SELECT current_user || '@' || current_database()").unwrap(),
            format!("{NEW_USER}@app")
        );
    }

    // An invalid file (which also drops app2) changes nothing.
    pooler.rewrite_config(&reload_config("", "bogus_sup_key: 1\n"));
    pooler.reload();
    wait_for_log_count(
        &pooler,
        "reload failed, keeping the running configuration",
        1,
        secs(5),
    );
    let log = pooler.log();
    let line = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_default();
    assert!(line.contains("bogus_sup_key"), "{line}");
    assert_eq!(supervisor_reloads(&log), 1, "{log}");
    for _ in 0..6 {
        let mut c = pooler.connect(NEW_USER, NEW_USER, "app2");
        assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    }
    assert_eq!(
        scalar(&mut held, "SELECT pg_backend_pid()").unwrap(),
        backend
    );

    // A valid file without the user: its password stops working for new logins.
    pooler.write_file("userlist.txt", &userlist(&[]));
    pooler.rewrite_config(&reload_config(&app2, ""));
    pooler.reload();
    wait_for_log_count(&pooler, "worker 1: configuration reloaded", 2, secs(5));
    wait_for_log_count(&pooler, "worker 0: configuration reloaded", 2, secs(5));
    for _ in 0..6 {
        let err = pooler.try_connect(NEW_USER, NEW_USER, "app2").err();
        assert_eq!(
            err.as_ref().and_then(sqlstate),
            Some("28P01"),
            "removed user after reload: {err:?}"
        );
    }
    assert_eq!(
        scalar(&mut held, "SELECT pg_backend_pid()").unwrap(),
        backend
    );
}

#[test]
fn reload_reports_that_listen_port_needs_a_restart() {
    let yaml = config("session", "", "");
    let (pooler, _) = start(&yaml, &[], 2);
    let other = free_port();
    pooler.rewrite_config(&yaml.replace("@PORT@", &other.to_string()));
    pooler.reload();
    assert!(
        pooler.wait_for_log(
            "listen_port changed: it takes effect only after a restart",
            secs(5)
        ),
        "{}",
        pooler.log()
    );
    wait_for_log_count(&pooler, "configuration reloaded", 1, secs(5));
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    assert!(refused(other), "the new port accepts before a restart");
}

// ---------------------------------------------------------------------------
// 6. pgbench across reloads
// ---------------------------------------------------------------------------

#[test]
fn pgbench_has_no_failures_across_reloads() {
    let pg = shared_pg();
    pg.admin_sql("CREATE DATABASE sup_bench OWNER app");
    run_pgbench(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        "sup_bench",
        &["-i", "-s", "1", "-q"],
    )
    .expect_success();
    let yaml = |pool_size: u32| {
        config(
            "transaction",
            "",
            &format!(
                "  sup_bench: {{ host: 127.0.0.1, port: {}, dbname: sup_bench, pool_size: {pool_size} }}\n",
                pg.port()
            ),
        )
    };
    let (pooler, _) = start(&yaml(5), &[], 2);
    let port = pooler.port();
    let bench = thread::spawn(move || {
        let mut cmd = pgbench_command(port, APP_USER, "");
        cmd.args(["-c", "8", "-T", "8", "-S", "-n", "sup_bench"]);
        run_cmd(cmd, None, secs(60))
    });
    for (i, size) in [2, 8, 3, 6].into_iter().enumerate() {
        thread::sleep(secs(1));
        pooler.rewrite_config(&yaml(size));
        pooler.reload();
        wait_for_log_count(&pooler, "INFO configuration reloaded", i + 1, secs(5));
    }
    let out = bench.join().unwrap();
    let stdout = out.expect_success();
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{out}\n--- pooler log ---\n{}",
        pooler.log()
    );
    let processed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(processed > 100, "{out}");
    let log = pooler.log();
    assert_eq!(supervisor_reloads(&log), 4, "{log}");
    for w in 0..2 {
        let needle = format!("worker {w}: configuration reloaded");
        assert_eq!(count_lines(&log, |l| l.contains(&needle)), 4, "{log}");
    }
}

// ---------------------------------------------------------------------------
// 7. `workers` changes on reload
// ---------------------------------------------------------------------------

#[test]
fn reload_starts_and_retires_workers() {
    let yaml = |n: usize| config("session", &format!("workers: {n}\n"), "");
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist(&[]));
    let pooler = setup.start(&yaml(1));
    let first = pooler.wait_for_children(1, secs(5));

    pooler.rewrite_config(&yaml(3));
    pooler.reload();
    let three = pooler.wait_for_children(3, secs(3));
    assert!(
        three.contains(&first[0]),
        "worker 0 was replaced: {three:?}"
    );
    assert!(pooler.wait_for_log("workers: 1 -> 3", secs(2)));
    let slots: BTreeSet<usize> = three.iter().map(|&p| worker_slot(p)).collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]));

    let mut held: Vec<(i32, postgres::Client)> = (0..9)
        .map(|_| {
            let mut c = pooler.connect(APP_USER, "", APP_DB);
            (worker_of(&mut c, &pooler), c)
        })
        .collect();
    let surplus: BTreeSet<i32> = held
        .iter()
        .map(|(w, _)| *w)
        .filter(|&w| w != first[0])
        .collect();
    assert!(
        !surplus.is_empty(),
        "all 9 sessions landed on worker 0: new workers serve nobody"
    );

    pooler.rewrite_config(&yaml(1));
    pooler.reload();
    assert!(
        pooler.wait_for_log("workers: 3 -> 1; retiring the surplus gracefully", secs(3)),
        "{}",
        pooler.log()
    );
    // Gracefully: sessions on the retiring workers go on, their workers stay.
    thread::sleep(ms(500));
    for (w, c) in held.iter_mut() {
        assert_eq!(
            scalar(c, "SELECT 1").ok().as_deref(),
            Some("1"),
            "session on worker {w} after the shrink"
        );
    }
    for &w in &surplus {
        assert!(process_alive(w), "retiring worker {w} left its sessions");
    }
    held.clear();
    let left = pooler.wait_for_children(1, secs(5));
    assert_eq!(left, first, "the remaining worker is not worker 0");
    // Logged once the supervisor has reaped the worker.
    for slot in [1, 2] {
        let needle = format!("worker slot {slot} retired");
        assert!(
            pooler.wait_for_log(&needle, secs(3)),
            "log lacks `{needle}`:\n{}",
            pooler.log()
        );
    }
    // Every new connection reaches the one worker left.
    for i in 0..10 {
        let mut c = pooler.connect(APP_USER, "", APP_DB);
        assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1", "client {i}");
        assert_eq!(worker_of(&mut c, &pooler), first[0]);
    }
    let log = pooler.log();
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "errors logged:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 8. Graceful shutdown
// ---------------------------------------------------------------------------

/// SIGINT, PgBouncer's safe shutdown: idle clients go at once, transactions
/// finish. (SIGTERM waits for clients: tests/pgbouncer_behaviour.rs.)
#[test]
fn sigint_in_transaction_mode_drains_and_exits_zero() {
    const APP: &str = "sup_term_busy";
    let (mut pooler, pids) = start(&config("transaction", "shutdown_timeout: 10\n", ""), &[], 2);
    let mut admin = shared_pg().admin_client();
    let mut idle = raw_login(pooler.port(), APP_USER, APP_DB);
    let mut busy = pooler
        .client_config(APP_USER, "", APP_DB)
        .application_name(APP)
        .connect(NoTls)
        .expect("busy client");
    let (tx, rx) = mpsc::channel();
    let busy_thread = thread::spawn(move || {
        let start = Instant::now();
        let result = scalar(&mut busy, "SELECT pg_sleep(2)");
        tx.send(start.elapsed()).unwrap();
        let after = scalar(&mut busy, "SELECT 1");
        (result, after)
    });
    assert!(
        wait_until(secs(5), || sleeping(&mut admin, APP) == 1),
        "the busy query did not start"
    );

    let term_at = Instant::now();
    pooler.signal(libc::SIGINT);
    assert!(
        wait_until(secs(1), || refused(pooler.port())),
        "new connections are still accepted 1 s after SIGINT"
    );

    let Message { tag, body } =
        read_next(&mut idle).expect("the idle client hears why it is closed");
    assert_eq!(tag, b'E', "idle client got {:?}", tag as char);
    let fields = error_fields(&body);
    assert_eq!(fields.get(&'S').map(String::as_str), Some("FATAL"));
    assert_eq!(fields.get(&'C').map(String::as_str), Some("57P01"));
    assert_eq!(
        fields.get(&'M').map(String::as_str),
        Some("pgbouncers is shutting down")
    );
    assert!(
        term_at.elapsed() < secs(1),
        "the idle client was closed after {:?}",
        term_at.elapsed()
    );
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");

    let took = rx.recv_timeout(secs(5)).expect("the busy query ended");
    let (result, after) = busy_thread.join().unwrap();
    assert_eq!(result.as_deref().ok(), Some(""), "busy query: {result:?}");
    assert!(took >= ms(1500), "pg_sleep(2) took only {took:?}");

    let status = pooler.wait_exit(secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "supervisor: {status:?}\n{}",
        pooler.log()
    );
    assert_all_gone(&pids, secs(1), "workers after the supervisor exited");
    assert!(pooler.log().contains("all workers stopped; exiting"));
    // The next transaction, sent right after the result (as a client running
    // back-to-back transactions does), must not get a server: the client is
    // closed once its transaction is over.
    assert!(
        after.is_err(),
        "the busy client ran another transaction during shutdown: {after:?}\n{}",
        pooler.log()
    );
}

#[test]
fn sigterm_in_session_mode_waits_for_the_client_to_leave() {
    let (mut pooler, pids) = start(&config("session", "shutdown_timeout: 30\n", ""), &[], 2);
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    let backend = scalar(&mut c, "SELECT pg_backend_pid()").unwrap();
    pooler.signal(libc::SIGTERM);
    assert!(wait_until(secs(1), || refused(pooler.port())));
    thread::sleep(secs(1));
    assert_eq!(
        scalar(&mut c, "SELECT pg_backend_pid()").ok(),
        Some(backend),
        "the session stopped working after SIGTERM"
    );
    assert!(pooler.is_running(), "exited while a session was open");
    let left_at = Instant::now();
    drop(c);
    let status = pooler.wait_exit(secs(3));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}\n{}",
        pooler.log()
    );
    assert!(left_at.elapsed() < secs(3));
    assert_all_gone(&pids, secs(1), "workers");
}

#[test]
fn sigterm_in_session_mode_closes_sessions_after_shutdown_timeout() {
    let (mut pooler, pids) = start(&config("session", "shutdown_timeout: 2\n", ""), &[], 2);
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    // A query links the session to its server (a client that never sent one
    // holds nothing and is closed at once, like an idle one).
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    let term_at = Instant::now();
    pooler.signal(libc::SIGTERM);
    thread::sleep(ms(500));
    assert_eq!(
        scalar(&mut c, "SELECT 1").ok().as_deref(),
        Some("1"),
        "the session ended right after SIGTERM"
    );
    let closed = wait_until(secs(5), || scalar(&mut c, "SELECT 1").is_err());
    let took = term_at.elapsed();
    assert!(closed, "the session outlived shutdown_timeout by far");
    assert!(
        took >= ms(1500) && took < secs(4),
        "closed after {took:?}, shutdown_timeout is 2 s"
    );
    let status = pooler.wait_exit(secs(3));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert_all_gone(&pids, secs(1), "workers");
}

// ---------------------------------------------------------------------------
// 9. SIGQUIT
// ---------------------------------------------------------------------------

#[test]
fn sigquit_exits_at_once_with_live_connections() {
    const APP: &str = "sup_quit";
    let (mut pooler, pids) = start(&config("session", "shutdown_timeout: 30\n", ""), &[], 2);
    let mut admin = shared_pg().admin_client();
    let _idle: Vec<postgres::Client> = (0..4)
        .map(|_| pooler.connect(APP_USER, "", APP_DB))
        .collect();
    let mut busy = pooler
        .client_config(APP_USER, "", APP_DB)
        .application_name(APP)
        .connect(NoTls)
        .unwrap();
    let busy_thread = thread::spawn(move || scalar(&mut busy, "SELECT pg_sleep(10)"));
    assert!(wait_until(secs(5), || sleeping(&mut admin, APP) == 1));
    let start = Instant::now();
    pooler.signal(libc::SIGQUIT);
    let status = pooler.wait_exit(secs(1));
    assert!(
        status.is_some(),
        "still running 1 s after SIGQUIT\n{}",
        pooler.log()
    );
    assert_all_gone(&pids, secs(1), "workers after SIGQUIT");
    assert!(
        busy_thread.join().unwrap().is_err(),
        "the busy query survived"
    );
    eprintln!("SIGQUIT exit after {:?}: {status:?}", start.elapsed());
}

// ---------------------------------------------------------------------------
// 10. SIGUSR1 / SIGUSR2
// ---------------------------------------------------------------------------

#[test]
fn sigusr1_pauses_and_sigusr2_resumes_every_worker() {
    const ROLE: &str = "t_sup_pause";
    create_role(ROLE);
    let (pooler, pids) = start(&config("transaction", "", ""), &[ROLE], 2);
    let mut admin = shared_pg().admin_client();
    // Warm both workers' pools, so each holds idle servers and has logged in
    // to the server once (later logins need no server).
    let mut warm = Vec::new();
    let mut warmed = BTreeSet::new();
    while warm.len() < 40 && (warmed.len() < 2 || warm.len() < 4) {
        let mut c = pooler.connect(ROLE, ROLE, APP_DB);
        warmed.insert(worker_of(&mut c, &pooler));
        warm.push(c);
    }
    assert_eq!(warmed.len(), 2, "40 clients, all on one of {pids:?}");
    assert!(backends(&mut admin, ROLE) > 0);

    pooler.signal(libc::SIGUSR1);
    wait_for_log_count(&pooler, "worker 0: paused all databases", 1, secs(3));
    wait_for_log_count(&pooler, "worker 1: paused all databases", 1, secs(3));
    assert!(
        wait_until(secs(3), || backends(&mut admin, ROLE) == 0),
        "idle servers kept while paused: {}",
        backends(&mut admin, ROLE)
    );

    let (tx, rx) = mpsc::channel();
    let port = pooler.port();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let tx = tx.clone();
        let cfg = pooler.client_config(ROLE, ROLE, APP_DB);
        waiters.push(thread::spawn(move || {
            let result = cfg
                .connect(NoTls)
                .and_then(|mut c| scalar(&mut c, "SELECT 42"));
            let _ = tx.send(result);
        }));
    }
    // Clients logged in before the pause wait too.
    for mut c in warm.drain(..2) {
        let tx = tx.clone();
        waiters.push(thread::spawn(move || {
            let _ = tx.send(scalar(&mut c, "SELECT 42"));
        }));
    }
    match rx.recv_timeout(secs(1)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("a query completed while paused: {other:?} (port {port})"),
    }
    assert_eq!(
        backends(&mut admin, ROLE),
        0,
        "a server was opened while paused"
    );

    pooler.signal(libc::SIGUSR2);
    for i in 0..waiters.len() {
        let result = rx
            .recv_timeout(secs(5))
            .unwrap_or_else(|_| panic!("query {i} still waits after SIGUSR2"));
        assert_eq!(result.unwrap().as_str(), "42");
    }
    for w in waiters {
        w.join().unwrap();
    }
    assert!(pooler.log().contains("worker 1: resumed all databases"));
}

// ---------------------------------------------------------------------------
// 11. Cancel requests across workers
// ---------------------------------------------------------------------------

/// Each server connection serves one client only. PostgreSQL acts on a
/// cancel request asynchronously (it signals the backend and its process
/// group), and a cancel has been seen to hit the next query run on the same
/// backend even with no pooler in between; fresh backends keep each round's
/// cancel to its own query.
const CANCEL_SETTINGS: &str = "server_lifetime: 0\n";

#[test]
fn cancel_requests_reach_the_owning_worker() {
    const APP: &str = "sup_cancel";
    let (pooler, _) = start(&config("session", CANCEL_SETTINGS, ""), &[], 3);
    let mut admin = shared_pg().admin_client();
    for round in 0..15 {
        let mut c = pooler
            .client_config(APP_USER, "", APP_DB)
            .application_name(APP)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let token = c.cancel_token();
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || {
            let _ = tx.send(scalar(&mut c, "SELECT pg_sleep(10)"));
        });
        assert!(
            wait_until(secs(5), || sleeping(&mut admin, APP) == 1),
            "round {round}: the query did not start; its result: {:?}",
            rx.try_recv()
        );
        token
            .cancel_query(NoTls)
            .unwrap_or_else(|e| panic!("round {round}: cancel: {e}"));
        let result = rx
            .recv_timeout(secs(3))
            .unwrap_or_else(|_| panic!("round {round}: not cancelled within 3 s"));
        let err = result.expect_err("pg_sleep(10) finished");
        assert_eq!(sqlstate(&err), Some("57014"), "round {round}: {err:?}");
        t.join().unwrap();
        assert!(wait_until(secs(2), || sleeping(&mut admin, APP) == 0));
    }
}

/// The worker that accepted the TCP connection from our local port `peer`.
fn worker_of_peer(pooler: &Pooler, peer: u16) -> Option<i32> {
    let mut holder = None;
    wait_until(secs(2), || {
        let inodes = tcp_inodes(pooler.port(), peer);
        holder = socket_holder(&pooler.children(), &inodes);
        holder.is_some()
    });
    holder
}

/// Deterministic version of the test above: the cancel request is sent only
/// on a connection that a worker other than the owner accepted.
#[test]
fn cancel_accepted_by_another_worker_is_forwarded() {
    const APP: &str = "sup_cancel_raw";
    let (pooler, _) = start(&config("session", CANCEL_SETTINGS, ""), &[], 3);
    let mut admin = shared_pg().admin_client();
    for round in 0..3 {
        let (mut client, key) = raw_login_with_key(pooler.port(), APP_USER, APP_DB);
        let local = client.local_addr().unwrap().port();
        let owner = worker_of_peer(&pooler, local).expect("the client's worker");
        let secret = u32::from_be_bytes([key[4], key[5], key[6], key[7]]);
        assert_eq!(
            (secret >> 24) as usize,
            worker_slot(owner),
            "round {round}: the key's top byte is not the owner's slot"
        );
        let sql = format!("SET application_name = '{APP}'; SELECT pg_sleep(10)\0");
        let mut q = vec![b'Q'];
        q.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
        q.extend_from_slice(sql.as_bytes());
        client.write_all(&q).unwrap();
        assert!(
            wait_until(secs(5), || sleeping(&mut admin, APP) == 1),
            "round {round}: the query did not start"
        );
        // Connections the owner accepts are closed unused: only a foreign
        // worker may get the request.
        let mut cancel = None;
        for _ in 0..50 {
            let s = TcpStream::connect(("127.0.0.1", pooler.port())).unwrap();
            let port = s.local_addr().unwrap().port();
            match worker_of_peer(&pooler, port) {
                Some(w) if w != owner => {
                    cancel = Some(s);
                    break;
                }
                _ => drop(s),
            }
        }
        let mut cancel = cancel.expect("50 connections, all accepted by the owner");
        let mut req = 16u32.to_be_bytes().to_vec();
        req.extend_from_slice(&80877102u32.to_be_bytes());
        req.extend_from_slice(&key);
        client.set_read_timeout(Some(secs(3))).unwrap();
        let sent_at = Instant::now();
        cancel.write_all(&req).unwrap();
        let mut saw = None;
        loop {
            let Message { tag, body } = read_next(&mut client)
                .unwrap_or_else(|e| panic!("round {round}: no reply after the cancel: {e}"));
            match tag {
                b'E' => saw = error_fields(&body).get(&'C').cloned(),
                b'Z' => break,
                _ => {}
            }
        }
        assert_eq!(saw.as_deref(), Some("57014"), "round {round}");
        assert!(
            sent_at.elapsed() < secs(3),
            "round {round}: {:?}",
            sent_at.elapsed()
        );
        assert!(wait_until(secs(2), || sleeping(&mut admin, APP) == 0));
    }
}

// ---------------------------------------------------------------------------
// 12–13. Pooler-wide limits in shared memory
// ---------------------------------------------------------------------------

#[test]
fn max_db_connections_holds_across_workers() {
    const ROLE: &str = "t_sup_maxdb";
    create_role(ROLE);
    let pg = shared_pg();
    let yaml = config(
        "transaction",
        "default_pool_size: 10\nquery_wait_timeout: 60\n",
        &format!(
            "  maxdb: {{ host: 127.0.0.1, port: {}, dbname: app, max_db_connections: 6 }}\n",
            pg.port()
        ),
    )
    .replace("query_wait_timeout: 20\n", "");
    let (pooler, _) = start(&yaml, &[ROLE], 3);

    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    // A server the pooler closed gives its place back at once, but its backend stays in
    // pg_stat_activity until the process has exited, a few milliseconds later, while
    // another worker may already have connected the next one. So a count must hold for two
    // samples in a row to count: a real seventh server stays for a whole pg_sleep(0.25).
    let sampler = thread::spawn(move || {
        let mut admin = shared_pg().admin_client();
        let (mut max, mut prev) = (0, 0);
        while !done2.load(Ordering::SeqCst) {
            let n = backends(&mut admin, ROLE);
            max = max.max(n.min(prev));
            prev = n;
            thread::sleep(ms(10));
        }
        max.max(backends(&mut admin, ROLE).min(prev))
    });
    let start_at = Instant::now();
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let cfg = pooler.client_config(ROLE, ROLE, "maxdb");
            thread::spawn(move || -> Result<(), String> {
                let mut c = cfg.connect(NoTls).map_err(|e| format!("{i}: {e}"))?;
                for _ in 0..2 {
                    scalar(&mut c, "SELECT pg_sleep(0.25)").map_err(|e| format!("{i}: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    let took = start_at.elapsed();
    done.store(true, Ordering::SeqCst);
    let max = sampler.join().unwrap();
    assert!(
        errors.is_empty(),
        "failed clients: {errors:?}\n{}",
        pooler.log()
    );
    assert!(
        max <= 6,
        "{max} server connections, max_db_connections is 6"
    );
    assert!(max > 1, "only {max} server connection at a time");
    // 15 s of sleeping over at most 6 connections: at least 2.5 s.
    assert!(
        took >= ms(2400),
        "30 clients done in {took:?}: limit not held"
    );
    assert!(took < secs(30), "took {took:?}");
}

#[test]
fn max_client_conn_counts_all_workers() {
    let (pooler, _) = start(&config("session", "max_client_conn: 4\n", ""), &[], 3);
    let mut held = Vec::new();
    for i in 0..4 {
        let mut client = None;
        // The harness's readiness probes may hold a slot for a moment.
        let ok = wait_until(secs(3), || {
            client = pooler.try_connect(APP_USER, "", APP_DB).ok();
            client.is_some()
        });
        assert!(ok, "login {i} of 4 failed\n{}", pooler.log());
        held.push(client.unwrap());
    }
    for i in 0..8 {
        match pooler.try_connect(APP_USER, "", APP_DB) {
            Ok(_) => panic!("login {} beyond max_client_conn succeeded", i + 5),
            Err(e) => {
                assert_eq!(sqlstate(&e), Some("53300"), "{e:?}");
                let db = e.as_db_error().expect("a server error");
                assert_eq!(
                    db.message(),
                    "no more connections allowed (max_client_conn)"
                );
            }
        }
    }
    for c in held.iter_mut() {
        assert_eq!(scalar(c, "SELECT 1").unwrap(), "1");
    }
    held.pop();
    assert!(
        wait_until(secs(3), || pooler.try_connect(APP_USER, "", APP_DB).is_ok()),
        "a freed slot is not given back"
    );
}

// ---------------------------------------------------------------------------
// 14. SysV init script with --daemon
// ---------------------------------------------------------------------------

/// The daemon's state as seen by its reaper thread.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reaped {
    No,
    Yes,
    /// Not our child (the subreaper setting did not take): no reaping.
    NotOurs,
}

/// Kills the daemonized supervisor when dropped unless it has exited.
///
/// The test process is made a child subreaper, so the detached daemon
/// becomes our child: a thread reaps it as soon as it exits, otherwise its
/// zombie would answer `kill -0` and the script's `stop` would wait for
/// whatever init reaps it. The reap happens under the lock the guard takes
/// before killing, so the guard never signals a reused pid.
struct DaemonGuard {
    pid: i32,
    state: Arc<Mutex<Reaped>>,
}

impl DaemonGuard {
    fn watch(pid: i32) -> DaemonGuard {
        let state = Arc::new(Mutex::new(Reaped::No));
        let shared = state.clone();
        thread::spawn(move || {
            // SAFETY: zeroed siginfo_t is a valid out-parameter; WNOWAIT
            // leaves the child unreaped, so its pid stays reserved.
            let rc = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
            if rc == 0 {
                // SAFETY: reaps our own exited child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                *st = Reaped::Yes;
            } else {
                *st = Reaped::NotOurs;
            }
        });
        DaemonGuard { pid, state }
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let kill = match *st {
            Reaped::No => true,
            Reaped::NotOurs => process_alive(self.pid),
            Reaped::Yes => false,
        };
        if kill {
            // SAFETY: kill(2) on the daemon this test started; see the type doc.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

fn init_script(action: &str, env: &[(&str, &Path)], dir: &Path) -> CmdOutput {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/init.d/pgbouncers");
    let mut cmd = Command::new("sh");
    cmd.arg(&script).arg(action).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("STOP_TIMEOUT", "15");
    run_cmd(cmd, None, secs(30))
}

#[test]
fn sysv_script_starts_reloads_and_stops_the_daemon() {
    // SAFETY: prctl on our own process; see DaemonGuard.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist(&[]));
    let yaml = config("session", "logfile: @DIR@/daemon.log\n", "")
        .replace("auth_type: trust\n", "auth_type: trust\nworkers: 2\n");
    let config_path = setup.write_file("daemon.yaml", &setup.expand(&yaml));
    let pidfile = setup.path("run/pgbouncers.pid");
    let logfile = setup.path("daemon.log");
    let binary = Path::new(env!("CARGO_BIN_EXE_pgbouncers"));
    let env = [
        ("DAEMON", binary),
        ("CONFIG", config_path.as_path()),
        ("PIDFILE", pidfile.as_path()),
    ];
    let log = || std::fs::read_to_string(&logfile).unwrap_or_default();

    let out = init_script("start", &env, setup.dir());
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid file after start:\n{out}\n{}", log()));
    let guard = DaemonGuard::watch(pid);
    assert_eq!(out.code(), Some(0), "start:\n{out}\n{}", log());
    assert!(
        out.stdout
            .contains(&format!("pgbouncers started (pid {pid})")),
        "{out}"
    );
    assert!(process_alive(pid), "daemon {pid} is not running");
    // SAFETY: getsid on our own process and on the daemon's pid.
    let (ours, theirs) = unsafe { (libc::getsid(0), libc::getsid(pid)) };
    assert_ne!(ours, theirs, "the daemon did not detach (same session)");
    let mut psql = None;
    let up = wait_until(secs(5), || {
        let out = run_psql(setup.port(), APP_USER, "", APP_DB, "SELECT 40 + 2");
        let ok = out.success();
        psql = Some(out);
        ok
    });
    assert!(up, "psql through the daemon: {}\n{}", psql.unwrap(), log());
    assert_eq!(psql.unwrap().stdout, "42\n");
    assert!(log().contains("worker 1 started"), "{}", log());

    let out = init_script("status", &env, setup.dir());
    assert_eq!(out.code(), Some(0), "status:\n{out}");
    assert!(
        out.stdout.contains(&format!("running (pid {pid})")),
        "{out}"
    );

    let out = init_script("reload", &env, setup.dir());
    assert_eq!(out.code(), Some(0), "reload:\n{out}");
    assert!(
        wait_until(secs(5), || log().contains("INFO configuration reloaded")),
        "the daemon did not reload:\n{}",
        log()
    );

    // upgrade: the binary at DAEMON takes over; the pid file names it, the old exits.
    let out = init_script("upgrade", &env, setup.dir());
    assert_eq!(out.code(), Some(0), "upgrade:\n{out}\n{}", log());
    let old = pid;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .expect("a pid file after the upgrade");
    assert_ne!(pid, old, "{out}");
    assert!(
        wait_until(secs(10), || !process_alive(old)),
        "the old daemon {old} did not exit:\n{}",
        log()
    );
    // Only now is the new supervisor our child (re-parented to us, the subreaper).
    let guard2 = DaemonGuard::watch(pid);
    assert!(
        pidfile.exists(),
        "the old daemon's exit removed the pid file"
    );
    let out = run_psql(setup.port(), APP_USER, "", APP_DB, "SELECT 40 + 2");
    assert_eq!(out.stdout, "42\n", "{out}");

    let out = init_script("stop", &env, setup.dir());
    assert_eq!(out.code(), Some(0), "stop:\n{out}\n{}", log());
    assert!(!out.stdout.contains("did not stop"), "{out}");
    assert!(!process_alive(pid), "daemon {pid} still running after stop");
    assert!(!pidfile.exists(), "pid file left behind");
    assert!(log().contains("all workers stopped; exiting"), "{}", log());

    let out = init_script("status", &env, setup.dir());
    assert_eq!(out.code(), Some(3), "status after stop:\n{out}");
    drop(guard2);
    drop(guard);
}

// ---------------------------------------------------------------------------
// 15. --check
// ---------------------------------------------------------------------------

#[test]
fn check_validates_without_starting() {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist(&[]));
    let good = config("session", "", "");
    let out = setup.run_to_exit(&good, &["--check"], secs(10));
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("is valid"), "{out}");
    assert!(refused(setup.port()), "--check listened");

    let out = setup.run_to_exit(
        &config("session", "bogus_check_key: 3\n", ""),
        &["--check"],
        secs(10),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("bogus_check_key"), "{out}");

    let nested = good.replace("dbname: app }", "dbname: app, pool_sise: 3 }");
    assert_ne!(nested, good);
    let out = setup.run_to_exit(&nested, &["--check"], secs(10));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("pool_sise"), "{out}");
}
