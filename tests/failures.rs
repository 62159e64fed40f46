//! Failure handling: servers killed or restarted, clients vanishing, garbage from clients, workers crashing.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use postgres::SimpleQueryMessage;

/// Password of every role these tests create (one role per test, so counts
/// in pg_stat_activity never mix with parallel tests).
const PW: &str = "failure-pw";

fn create_role(role: &str) {
    shared_pg().admin_sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{PW}'"));
}

/// A pooler with `auth_type: plain`, an auth file holding `user`/`password`,
/// `settings` (top-level YAML lines; one worker unless they say otherwise)
/// and database `app` on 127.0.0.1:`server_port`.
fn pooler_at(user: &str, password: &str, settings: &str, server_port: u16) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &format!("{}\n", userlist_entry(user, password)),
    );
    let workers = if settings.contains("workers:") {
        ""
    } else {
        "workers: 1\n"
    };
    setup.start(&format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         {workers}\
         auth_type: plain\n\
         auth_file: @DIR@/userlist.txt\n\
         {settings}\n\
         databases:\n  \
           app:\n    \
             host: 127.0.0.1\n    \
             port: {server_port}\n    \
             dbname: app\n"
    ))
}

/// [`pooler_at`] the shared PostgreSQL, for a role made with [`create_role`].
fn pooler(role: &str, settings: &str) -> Pooler {
    pooler_at(role, PW, settings, shared_pg().port())
}

fn connect(pooler: &Pooler, role: &str) -> postgres::Client {
    pooler.connect(role, PW, APP_DB)
}

/// The first column of the first row of `sql`.
fn first_value(c: &mut postgres::Client, sql: &str) -> Result<String, postgres::Error> {
    let msgs = c.simple_query(sql)?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row")))
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    first_value(c, "SELECT pg_backend_pid()")
        .expect("SELECT pg_backend_pid()")
        .parse()
        .expect("pid")
}

fn backend_exists(admin: &mut postgres::Client, pid: i32) -> bool {
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .expect("query pg_stat_activity")
        .get(0);
    n > 0
}

/// The pid of `role`'s backend running a query that starts with `prefix`.
fn wait_for_active_query(admin: &mut postgres::Client, role: &str, prefix: &str) -> i32 {
    let mut pid = None;
    let pattern = format!("{prefix}%");
    let found = wait_until(secs(5), || {
        pid = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE usename = $1 \
                 AND state = 'active' AND query LIKE $2",
                &[&role, &pattern],
            )
            .expect("query pg_stat_activity")
            .map(|r| r.get(0));
        pid.is_some()
    });
    assert!(found, "{role}'s `{prefix}…` never started");
    pid.unwrap()
}

fn terminate(pid: i32) {
    assert_eq!(
        shared_pg().admin_sql(&format!("SELECT pg_terminate_backend({pid})")),
        "t"
    );
}

/// True once some log line contains all of `needles`.
fn log_has_line(pooler: &Pooler, needles: &[&str]) -> bool {
    pooler
        .log()
        .lines()
        .any(|l| needles.iter().all(|n| l.contains(n)))
}

#[test]
fn server_killed_mid_query_fails_the_client_promptly_and_the_pool_heals() {
    create_role("t_f_kill");
    let pooler = pooler("t_f_kill", "pool_mode: transaction\ndefault_pool_size: 1");
    let c = AsyncClient::connect(&pooler, "t_f_kill", PW, APP_DB);
    let (tx, rx) = mpsc::channel();
    let sleeper = thread::spawn(move || {
        let result = c.first_value("SELECT pg_sleep(10)::text");
        tx.send(result).unwrap();
    });
    let mut admin = shared_pg().admin_client();
    let pid = wait_for_active_query(&mut admin, "t_f_kill", "SELECT pg_sleep(10)");
    let killed_at = Instant::now();
    terminate(pid);
    let result = rx
        .recv_timeout(secs(3))
        .expect("the client hung after its server was terminated");
    let took = killed_at.elapsed();
    sleeper.join().unwrap();
    let err = result.expect_err("pg_sleep(10) succeeded on a terminated backend");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    let seen = (db.code().code(), db.message());
    assert!(
        matches!(
            seen,
            (
                "57P01",
                "terminating connection due to administrator command"
            ) | ("08006", "server conn crashed?")
        ),
        "unexpected error {seen:?}"
    );
    assert!(took < secs(3), "error came after {took:?}");

    // The same pool (size 1) serves the next client on a new backend.
    let mut next = connect(&pooler, "t_f_kill");
    let new_pid = backend_pid(&mut next);
    assert_ne!(new_pid, pid);
    assert_eq!(backend_pid(&mut next), new_pid);
    assert_eq!(first_value(&mut next, "SELECT 'healed'").unwrap(), "healed");
}

#[test]
fn idle_server_killed_in_the_pool_is_replaced() {
    create_role("t_f_idlekill");
    let pooler = pooler(
        "t_f_idlekill",
        "pool_mode: transaction\ndefault_pool_size: 1",
    );
    let mut c = connect(&pooler, "t_f_idlekill");
    let pid = backend_pid(&mut c);
    terminate(pid);
    let mut admin = shared_pg().admin_client();
    assert!(
        wait_until(secs(3), || !backend_exists(&mut admin, pid)),
        "backend {pid} survived pg_terminate_backend"
    );
    // Let the pooler see the dead connection's EOF before the next query,
    // so the test is about noticing it rather than a race with it.
    assert!(
        wait_until(secs(3), || log_has_line(
            &pooler,
            &["S-", "/t_f_idlekill@", "closing because"]
        )),
        "the pooler did not notice its idle server died\n{}",
        pooler.log()
    );
    let new_pid = backend_pid(&mut c);
    assert_ne!(new_pid, pid);
    let mut other = connect(&pooler, "t_f_idlekill");
    assert_eq!(first_value(&mut other, "SELECT 2").unwrap(), "2");
}

fn pgbench_processed(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn postgres_restart_under_load_is_survived() {
    let pg = PgServer::start();
    run_pgbench(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        APP_DB,
        &["-i", "-s", "1", "-q"],
    )
    .expect_success();
    let pooler = pooler_at(
        APP_USER,
        APP_PASSWORD,
        "pool_mode: transaction\ndefault_pool_size: 20\nserver_login_retry: 1",
        pg.port(),
    );
    let workers = pooler.wait_for_children(1, secs(5));
    let mut bench = pgbench_command(pooler.port(), APP_USER, APP_PASSWORD);
    bench.args(["-n", "-S", "-c", "10", "-T", "8", APP_DB]);
    let bench = thread::spawn(move || run_cmd(bench, None, secs(30)));
    // Let the load get going through the pooler first.
    let mut admin = pg.admin_client();
    assert!(
        wait_until(secs(5), || {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
                    &[],
                )
                .unwrap()
                .get(0);
            n >= 5
        }),
        "pgbench never got going\n{}",
        pooler.log()
    );
    thread::sleep(secs(2));
    drop(admin);
    pg.restart();
    let out = bench.join().unwrap();
    assert!(!out.timed_out(), "pgbench hung:\n{out}");
    // Clients cut off by the restart abort; that's expected. But the
    // run before it must have worked.
    assert!(
        pgbench_processed(&out.stdout) > 0,
        "no transactions went through:\n{out}"
    );

    let start = Instant::now();
    let mut last_error = String::new();
    let healed = wait_until(secs(5), || {
        match pooler.try_connect(APP_USER, APP_PASSWORD, APP_DB) {
            Ok(mut c) => match first_value(&mut c, "SELECT 42") {
                Ok(v) => v == "42",
                Err(e) => {
                    last_error = format!("{e:?}");
                    false
                }
            },
            Err(e) => {
                last_error = format!("{e:?}");
                false
            }
        }
    });
    assert!(
        healed,
        "no query worked within 5 s of the restart (last error: {last_error})\n{}",
        pooler.log()
    );
    assert!(start.elapsed() < secs(6));
    assert_eq!(pooler.children(), workers, "a worker died");
}

/// PgBouncer's behaviour for a pooler started before PostgreSQL: a pool that never logged
/// in keeps its clients waiting (one that arrives after a failed try too, where a pool
/// that has logged in fails it fast), tries again every server_login_retry, and serves
/// them once PostgreSQL is up.
#[test]
fn postgres_unreachable_at_start_keeps_logins_waiting_until_it_comes_up() {
    let pg = PgServer::start();
    pg.stop();
    let pooler = pooler_at(
        APP_USER,
        APP_PASSWORD,
        "server_connect_timeout: 2\nserver_login_retry: 1\nclient_login_timeout: 30",
        pg.port(),
    );
    let login = || {
        let start = Instant::now();
        let answer = pooler
            .try_connect(APP_USER, APP_PASSWORD, APP_DB)
            .and_then(|mut c| first_value(&mut c, "SELECT 1"));
        (answer, start.elapsed())
    };
    let failed_tries = || pooler.log().matches("server login failed").count();
    thread::scope(|s| {
        let first = s.spawn(login);
        assert!(
            wait_until(secs(3), || failed_tries() >= 1),
            "{}",
            pooler.log()
        );
        let second = s.spawn(login);
        // Both wait through another try or two instead of hearing the error.
        assert!(
            wait_until(secs(5), || failed_tries() >= 3),
            "{}",
            pooler.log()
        );
        assert!(!first.is_finished() && !second.is_finished());
        let up = Instant::now();
        pg.start_again();
        for (i, client) in [first, second].into_iter().enumerate() {
            let (answer, waited) = client.join().unwrap();
            assert_eq!(
                answer.as_deref().map_err(|e| e.to_string()),
                Ok("1"),
                "client {i}\n{}",
                pooler.log()
            );
            assert!(
                waited > up.elapsed(),
                "client {i} did not wait for PostgreSQL"
            );
        }
        // Served within server_login_retry of PostgreSQL being ready (plus its start).
        assert!(
            up.elapsed() < secs(5),
            "served {:?} after the start",
            up.elapsed()
        );
    });
}

#[test]
fn client_gone_mid_transaction_leaves_nothing_behind() {
    create_role("t_f_txkill");
    shared_pg().admin_sql_in(
        APP_DB,
        "CREATE TABLE t_f_txkill_rows (x int); GRANT ALL ON t_f_txkill_rows TO t_f_txkill;",
    );
    let pooler = pooler("t_f_txkill", "pool_mode: transaction\ndefault_pool_size: 1");
    let rows = |pooler: &Pooler| {
        let mut s = wire::login(pooler.port(), "t_f_txkill", PW);
        let (rows, status) = wire::run_query(&mut s, "SELECT x FROM t_f_txkill_rows ORDER BY x");
        assert_eq!(
            status, b'I',
            "a new client found its server in a transaction"
        );
        rows
    };

    // A library client dropped inside a transaction (sends Terminate).
    let mut c = connect(&pooler, "t_f_txkill");
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("INSERT INTO t_f_txkill_rows VALUES (1)")
        .unwrap();
    drop(c);
    assert_eq!(
        rows(&pooler),
        Vec::<String>::new(),
        "the insert was committed"
    );

    // A client that vanishes without a Terminate.
    let mut s = wire::login(pooler.port(), "t_f_txkill", PW);
    let (_, status) = wire::run_query(&mut s, "BEGIN; INSERT INTO t_f_txkill_rows VALUES (2)");
    assert_eq!(status, b'T');
    s.shutdown(Shutdown::Both).unwrap();
    drop(s);
    assert_eq!(
        rows(&pooler),
        Vec::<String>::new(),
        "the insert was committed"
    );

    // The pool's server takes full transactions again.
    let mut c = connect(&pooler, "t_f_txkill");
    c.batch_execute("BEGIN; INSERT INTO t_f_txkill_rows VALUES (3); COMMIT")
        .unwrap();
    assert_eq!(rows(&pooler), vec!["3".to_string()]);
}

#[test]
fn clients_leaving_the_queue_do_not_break_the_pool() {
    create_role("t_f_queue");
    let pooler = pooler("t_f_queue", "pool_mode: transaction\ndefault_pool_size: 1");
    let workers = pooler.wait_for_children(1, secs(5));
    let mut a = connect(&pooler, "t_f_queue");
    let mut waiters: Vec<TcpStream> = (0..3)
        .map(|_| wire::login(pooler.port(), "t_f_queue", PW))
        .collect();
    let sleeper = thread::spawn(move || first_value(&mut a, "SELECT pg_sleep(2)::text"));
    let mut admin = shared_pg().admin_client();
    wait_for_active_query(&mut admin, "t_f_queue", "SELECT pg_sleep(2)");
    for w in &mut waiters {
        w.write_all(&wire::message(b'Q', &wire::cstr("SELECT 1")))
            .unwrap();
    }
    // Nothing observable says they are queued; give the pooler a moment to
    // read their queries before they vanish.
    thread::sleep(Duration::from_millis(300));
    for w in waiters {
        w.shutdown(Shutdown::Both).unwrap();
    }
    let mut c = connect(&pooler, "t_f_queue");
    assert_eq!(first_value(&mut c, "SELECT 'served'").unwrap(), "served");
    sleeper
        .join()
        .unwrap()
        .expect("the long query should finish normally");
    assert_eq!(first_value(&mut c, "SELECT 'again'").unwrap(), "again");
    assert_eq!(pooler.children(), workers, "a worker died");
}

/// Sends `header` (a message type and a bad length) from a logged-in raw
/// client; expects FATAL 08P01 with a message containing `expected`.
fn garbage_is_refused(pooler: &Pooler, role: &str, header: &[u8], expected: &str) {
    let mut s = wire::login(pooler.port(), role, PW);
    let (rows, _) = wire::run_query(&mut s, "SELECT 1");
    assert_eq!(rows, vec!["1".to_string()]);
    s.write_all(header).unwrap();
    let err = wire::read_error(&mut s);
    assert_eq!((err.severity(), err.code()), ("FATAL", "08P01"), "{err:?}");
    assert!(err.message().contains(expected), "{err:?}");
    wire::assert_closed(&mut s);
}

#[test]
fn garbage_after_login_is_refused_without_harm() {
    create_role("t_f_garbage");
    for mode in ["transaction", "session"] {
        let pooler = pooler("t_f_garbage", &format!("pool_mode: {mode}"));
        let workers = pooler.wait_for_children(1, secs(5));
        assert_eq!(workers.len(), 1);
        let mut bystander = connect(&pooler, "t_f_garbage");
        garbage_is_refused(
            &pooler,
            "t_f_garbage",
            &[b'Q', 0x7f, 0xff, 0xff, 0xff],
            "max_packet_size",
        );
        garbage_is_refused(
            &pooler,
            "t_f_garbage",
            &[b'Q', 0, 0, 0, 2],
            "invalid length 2 for message type 'Q'",
        );
        garbage_is_refused(
            &pooler,
            "t_f_garbage",
            &[b'P', 0, 0, 0, 0],
            "invalid length 0",
        );
        assert_eq!(
            first_value(&mut bystander, "SELECT 'unaffected'").unwrap(),
            "unaffected",
            "{mode}"
        );
        let mut fresh = connect(&pooler, "t_f_garbage");
        assert_eq!(first_value(&mut fresh, "SELECT 3").unwrap(), "3");
        assert_eq!(pooler.children(), workers, "{mode}: a worker died");
    }
}

#[test]
fn killed_worker_is_respawned() {
    create_role("t_f_respawn");
    let pooler = pooler("t_f_respawn", "workers: 2");
    let workers = pooler.wait_for_children(2, secs(5));
    let victim = workers[0];
    // SAFETY: plain kill(2) on a worker of the pooler this test started.
    let rc = unsafe { libc::kill(victim, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {victim}");
    let killed_at = Instant::now();
    let mut now = Vec::new();
    let respawned = wait_until(secs(1), || {
        now = pooler.children();
        now.len() == 2 && !now.contains(&victim)
    });
    assert!(
        respawned,
        "no new worker within 1 s: {now:?} (killed {victim})\n{}",
        pooler.log()
    );
    assert!(killed_at.elapsed() < Duration::from_millis(1500));
    assert!(
        now.contains(&workers[1]),
        "the other worker changed: {now:?}"
    );
    let newcomer = *now.iter().find(|p| !workers.contains(p)).unwrap();
    // Enough connections that both workers (SO_REUSEPORT) serve some.
    for i in 0..8 {
        let mut c = connect(&pooler, "t_f_respawn");
        assert_eq!(
            first_value(&mut c, &format!("SELECT {i}")).unwrap(),
            i.to_string()
        );
    }
    let victim_pid = format!("(pid {victim})");
    let newcomer_pid = format!("(pid {newcomer})");
    assert!(
        log_has_line(&pooler, &[&victim_pid, "respawn"]),
        "the supervisor log does not mention the respawn of {victim}\n{}",
        pooler.log()
    );
    assert!(
        log_has_line(&pooler, &[&newcomer_pid, "started"]),
        "the supervisor log does not mention the new worker {newcomer}\n{}",
        pooler.log()
    );
}

/// A stand-in PostgreSQL for one pooler connection: it logs the pooler in
/// with AuthenticationOk, answers SETs, and answers any other query the way
/// a terminated backend does: a FATAL, then the end of the connection.
/// TCP_CORK holds the FATAL back until `close`, so the bytes and the FIN
/// arrive in one segment — as they often do when PostgreSQL exits under load.
fn dying_server(listener: std::net::TcpListener) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the pooler never connected");
        s.set_read_timeout(Some(secs(20))).unwrap();
        wire::accept_startup(&mut s).unwrap();
        let mut hello = wire::message(b'R', &0u32.to_be_bytes());
        hello.extend(wire::message(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        hello.extend(wire::message(b'Z', b"I"));
        s.write_all(&hello).unwrap();
        loop {
            let mut head = [0u8; 5];
            if s.read_exact(&mut head).is_err() {
                return;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            s.read_exact(&mut body).unwrap();
            if head[0] != b'Q' {
                continue;
            }
            if body.to_ascii_uppercase().starts_with(b"SET") {
                let mut ok = wire::message(b'C', &wire::cstr("SET"));
                ok.extend(wire::message(b'Z', b"I"));
                s.write_all(&ok).unwrap();
                continue;
            }
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on our own open socket with a c_int option.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::IPPROTO_TCP,
                    libc::TCP_CORK,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "TCP_CORK");
            let mut fatal = b"SFATAL\0C57P01\0".to_vec();
            fatal.extend(wire::cstr(
                "terminating connection due to administrator command",
            ));
            fatal.push(0);
            s.write_all(&wire::message(b'E', &fatal)).unwrap();
            return; // dropping `s` sends the corked FATAL together with the FIN
        }
    })
}

#[test]
fn server_fatal_and_eof_in_one_segment_closes_the_client() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = dying_server(listener);
    let pooler = pooler_at(
        "t_f_cork",
        PW,
        "pool_mode: transaction\ndefault_pool_size: 1",
        port,
    );
    let mut s = wire::login(pooler.port(), "t_f_cork", PW);
    s.set_read_timeout(Some(secs(3))).unwrap();
    s.write_all(&wire::message(b'Q', &wire::cstr("SELECT 1")))
        .unwrap();
    // The FATAL is relayed (or the pooler's own 08006 replaces it)...
    let err = wire::read_error(&mut s);
    assert_eq!(err.severity(), "FATAL", "{err:?}");
    assert!(["57P01", "08006"].contains(&err.code()), "{err:?}");
    // ...and then the client is closed, not left waiting for a
    // ReadyForQuery from a server that is gone.
    let mut tag = [0u8; 1];
    let start = Instant::now();
    let end = loop {
        match s.read(&mut tag) {
            Ok(0) => break Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break Ok(()),
            Ok(_) => {
                // A second error (the pooler's own) may follow the relayed one.
                let mut len = [0u8; 4];
                s.read_exact(&mut len).unwrap();
                let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                s.read_exact(&mut body).unwrap();
                assert_eq!(tag[0], b'E', "unexpected message after the FATAL");
            }
            Err(e) => break Err(e),
        }
    };
    server.join().unwrap();
    assert!(
        end.is_ok(),
        "the client was left open {:?} after its server sent FATAL and closed ({:?}); \
         the pooler never read the server's EOF\n{}",
        start.elapsed(),
        end,
        pooler.log()
    );
}
