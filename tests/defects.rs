//! Regressions for the worker defects of issue 12: each test fails on the code before its fix.
//!
//! Reload storms, reads that stopped at a full buffer, slow failures while PostgreSQL is
//! down or refuses the pooler, closed servers under max_db_connections, unknown messages,
//! ignore_startup_parameters, connect_query and server_check_query.

mod common;

use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::pg::tail;
use common::tools;
use common::tools::clean_pg_env;
use common::wire::{self, query, raw_login, read_answer, startup_packet};
use common::*;

const PW: &str = "defects-pw";

fn create_role(pg: &PgServer, role: &str) {
    pg.admin_sql(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{PW}'"
    ));
}

/// The YAML of a pooler with `auth_type: plain` for `role`, `settings` at the top level,
/// and `databases` (YAML lines under `databases:`).
fn config(settings: &str, databases: &str) -> String {
    let workers = if settings.contains("workers:") {
        ""
    } else {
        "workers: 1\n"
    };
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         {workers}\
         auth_type: plain\n\
         auth_file: @DIR@/userlist.txt\n\
         {settings}\n\
         databases:\n{databases}"
    )
}

/// `databases:` lines for `app` on 127.0.0.1:`port`, plus `extra` keys for it.
fn app_db(port: u16, extra: &str) -> String {
    let mut s = format!("  app:\n    host: 127.0.0.1\n    port: {port}\n    dbname: app\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("    {}\n", line.trim()));
    }
    s
}

fn start(role: &str, settings: &str, databases: &str) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", userlist_entry(role, PW)));
    setup.start(&config(settings, databases))
}

/// Logs `role` in to `db` over the raw protocol.
fn login(pooler: &Pooler, role: &str, db: &str) -> std::net::TcpStream {
    raw_login(
        pooler.port(),
        &startup_packet(&[("user", role), ("database", db)]),
        PW,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&pooler.log(), 30)))
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Item 1: a client of a database that a reload removed gets PgBouncer's error at once,
/// and no server is opened for the obsolete pool (before: ~430 logins a second).
#[test]
fn a_removed_database_fails_at_once_and_opens_no_servers() {
    let pg = shared_pg();
    let role = "defects_removed";
    create_role(pg, role);
    let other = "  other:\n    host: 127.0.0.1\n    port: 1\n";
    let pooler = start(
        role,
        "pool_mode: transaction\nquery_wait_timeout: 30",
        &format!("{}{other}", app_db(pg.port(), "")),
    );
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("select 1")).unwrap();
    assert_eq!(read_answer(&mut c).values, ["1"]);

    pooler.rewrite_config(&config(
        "pool_mode: transaction\nquery_wait_timeout: 30",
        other,
    ));
    pooler.reload();
    assert!(
        pooler.wait_for_log("configuration reloaded", secs(5)),
        "{}",
        pooler.log()
    );
    let start = Instant::now();
    c.write_all(&query("select 1")).unwrap();
    let a = read_answer(&mut c);
    let err = a.error.expect("an error for a removed database");
    assert_eq!(err.message(), "database removed");
    assert_eq!(err.code(), "08P01");
    assert!(start.elapsed() < secs(2), "took {:?}", start.elapsed());
    // Anything that kept launching would show within a second or two.
    thread::sleep(secs(2));
    let log = pooler.log();
    let opened = count(&log, "obsolete connection") + count(&log, "configuration changed");
    assert!(
        opened <= 1,
        "servers opened for a removed database:\n{}",
        tail(&log, 20)
    );
    assert_eq!(pg.count_backends(role), 0, "{}", tail(&log, 20));
}

/// Item 2: with `proxy_protocol: optional`, a startup packet longer than pkt_buf and no
/// PROXY header is answered (before: the read that filled the buffer was never resumed).
#[test]
fn a_long_startup_packet_without_proxy_header_is_answered() {
    let pg = shared_pg();
    let role = "defects_longstartup";
    create_role(pg, role);
    for mode in ["optional", "off"] {
        let pooler = start(
            role,
            &format!(
                "proxy_protocol: {mode}\nproxy_trusted: [127.0.0.1]\nclient_login_timeout: 30"
            ),
            &app_db(pg.port(), ""),
        );
        for len in [8_100, 8_500, 9_900] {
            let app = "a".repeat(len);
            let packet = startup_packet(&[
                ("user", role),
                ("database", "app"),
                ("application_name", &app),
            ]);
            let start = Instant::now();
            let mut c = raw_login(pooler.port(), &packet, PW)
                .unwrap_or_else(|e| panic!("{mode}/{len}: {e}\n{}", tail(&pooler.log(), 20)));
            assert!(
                start.elapsed() < secs(5),
                "{mode}/{len}: {:?}",
                start.elapsed()
            );
            c.write_all(&query("show application_name")).unwrap();
            // PostgreSQL keeps NAMEDATALEN - 1 bytes of it.
            assert_eq!(read_answer(&mut c).values[0].len(), 63, "{mode}/{len}");
        }
    }
}

/// Item 3: with PostgreSQL down, a query fails within server_connect_timeout with the
/// server's error, and at once while server_login_retry holds (before: a 25–45 s hang).
#[test]
fn postgres_down_fails_fast() {
    let pg = PgServer::start();
    let role = "defects_down";
    create_role(&pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction\nserver_connect_timeout: 2\nserver_login_retry: 5\nquery_wait_timeout: 60",
        &app_db(pg.port(), ""),
    );
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("select 1")).unwrap();
    assert_eq!(read_answer(&mut c).values, ["1"]);
    pg.stop();

    let start = Instant::now();
    c.write_all(&query("select 1")).unwrap();
    let a = read_answer(&mut c);
    let took = start.elapsed();
    let err = a
        .error
        .unwrap_or_else(|| panic!("no error\n{}", pooler.log()));
    assert!(took < secs(4), "error after {took:?}: {err:?}");
    assert!(
        err.message().contains("could not connect to server")
            || err.message().contains("server login has been failing"),
        "{err:?}"
    );

    // Inside server_login_retry: a new client's query fails at once, with PgBouncer's words.
    let start = Instant::now();
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("select 1")).unwrap();
    let err = read_answer(&mut c).error.expect("an error");
    assert!(start.elapsed() < secs(1), "{:?}", start.elapsed());
    assert!(
        err.message()
            .starts_with("server login has been failing, cached error: ")
            && err.message().ends_with("(server_login_retry)"),
        "{err:?}"
    );
    pg.start_again();
    let healed = wait_until(secs(10), || {
        let Ok(mut c) = raw_login(
            pooler.port(),
            &startup_packet(&[("user", role), ("database", "app")]),
            PW,
        ) else {
            return false;
        };
        c.write_all(&query("select 7")).is_ok() && read_answer(&mut c).values == ["7"]
    });
    assert!(healed, "{}", tail(&pooler.log(), 30));
}

/// Item 13: when PostgreSQL refuses the pooler's login, clients waiting for a server get
/// the server's error at once (before: a wait until query_wait_timeout).
#[test]
fn a_refused_server_login_reaches_waiting_clients() {
    let pg = shared_pg();
    let role = "defects_nologin";
    create_role(pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction\nserver_login_retry: 1\nquery_wait_timeout: 60",
        &app_db(pg.port(), ""),
    );
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("select 1")).unwrap();
    assert_eq!(read_answer(&mut c).values, ["1"]);
    pg.admin_sql(&format!(
        "ALTER ROLE {role} NOLOGIN; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    assert!(wait_until(secs(5), || pg.count_backends(role) == 0));
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    c.write_all(&query("select 1")).unwrap();
    let err = read_answer(&mut c).error.expect("the server's error");
    pg.admin_sql(&format!("ALTER ROLE {role} LOGIN"));
    assert!(start.elapsed() < secs(3), "{:?}", start.elapsed());
    assert!(
        err.message().contains("is not permitted to log in"),
        "{err:?}\n{}",
        tail(&pooler.log(), 20)
    );
}

/// Item 15: under max_db_connections, servers no other worker waits for stay pooled
/// (before: every release closed its server, so each transaction paid a login).
#[test]
fn max_db_connections_keeps_servers_nobody_else_needs() {
    let pg = shared_pg();
    let role = "defects_maxdb";
    create_role(pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction\ndefault_pool_size: 5\nmax_db_connections: 2\nquery_wait_timeout: 30",
        &app_db(pg.port(), ""),
    );
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let port = pooler.port();
            thread::spawn(move || {
                let mut c = raw_login(
                    port,
                    &startup_packet(&[("user", role), ("database", "app")]),
                    PW,
                )
                .unwrap();
                for i in 0..50 {
                    c.write_all(&query(&format!("select {i}"))).unwrap();
                    let a = read_answer(&mut c);
                    assert_eq!(a.values, [i.to_string()], "{:?}", a.error);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = pooler.log();
    assert_eq!(
        count(&log, "released for pause or for another worker"),
        0,
        "{}",
        tail(&log, 20)
    );
    assert!(pg.count_backends(role) <= 2);
    assert!(pg.count_backends(role) >= 1, "the pool ended empty");
}

/// Also: an unknown message type after login gets PgBouncer's "unknown pkt" from the
/// pooler, and the server it would have killed stays pooled.
#[test]
fn unknown_message_types_are_refused_by_the_pooler() {
    let pg = shared_pg();
    let role = "defects_unknown";
    create_role(pg, role);
    let pooler = start(role, "pool_mode: session", &app_db(pg.port(), ""));
    for tag in [b'y', b'!', 0u8, 0xff, b'A', b'Z', b'p'] {
        let mut c = login(&pooler, role, "app");
        c.write_all(&query("select pg_backend_pid()")).unwrap();
        let pid = read_answer(&mut c).values[0].clone();
        c.write_all(&wire::message(tag, b"abc")).unwrap();
        let a = read_answer(&mut c);
        let err = a.error.expect("an error");
        assert_eq!(
            (err.code(), err.message()),
            ("08P01", "unknown pkt"),
            "{tag}"
        );
        assert!(!a.ready);
        // Session pooling: the client's server was clean, so it serves the next client.
        let mut c = login(&pooler, role, "app");
        c.write_all(&query("select pg_backend_pid()")).unwrap();
        assert_eq!(
            read_answer(&mut c).values,
            std::slice::from_ref(&pid),
            "tag {tag}"
        );
    }
    assert!(!pg.log().contains("invalid frontend message type"));
}

/// Item 14: a parameter in ignore_startup_parameters never reaches PostgreSQL, whether it
/// came as a startup parameter or inside `options`.
#[test]
fn ignored_startup_parameters_never_reach_postgres() {
    let pg = shared_pg();
    let role = "defects_ignore";
    create_role(pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction\nignore_startup_parameters: [extra_float_digits, search_path]",
        &app_db(pg.port(), ""),
    );
    for packet in [
        startup_packet(&[
            ("user", role),
            ("database", "app"),
            ("extra_float_digits", "3"),
        ]),
        startup_packet(&[
            ("user", role),
            ("database", "app"),
            ("options", "-c extra_float_digits=3 -c search_path=nowhere"),
        ]),
    ] {
        let mut c = raw_login(pooler.port(), &packet, PW).unwrap();
        c.write_all(&query("show extra_float_digits")).unwrap();
        assert_eq!(read_answer(&mut c).values, ["1"]);
        c.write_all(&query("show search_path")).unwrap();
        assert_eq!(read_answer(&mut c).values, ["\"$user\", public"]);
    }
}

/// Item 12: connect_query runs once on every new server before a client gets it.
#[test]
fn connect_query_runs_on_each_new_server() {
    let pg = shared_pg();
    let role = "defects_connectq";
    create_role(pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction",
        &app_db(pg.port(), "connect_query: 'set enable_seqscan = off'"),
    );
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("show enable_seqscan")).unwrap();
    assert_eq!(
        read_answer(&mut c).values,
        ["off"],
        "{}",
        tail(&pooler.log(), 10)
    );

    // A connect_query that fails is a failed login: the client hears it, and
    // server_login_retry spaces out the attempts instead of a reconnect loop.
    let pooler = start(
        role,
        "pool_mode: transaction\nserver_login_retry: 5",
        &app_db(pg.port(), "connect_query: 'selec 1'"),
    );
    let start = Instant::now();
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("select 1")).unwrap();
    let err = read_answer(&mut c)
        .error
        .expect("the connect_query's error");
    assert!(err.message().contains("connect_query failed"), "{err:?}");
    assert!(start.elapsed() < secs(3));
    thread::sleep(secs(2));
    let log = pooler.log();
    assert_eq!(count(&log, "server login failed"), 1, "{}", tail(&log, 20));
}

/// Item 12: server_check_query reaches PostgreSQL before an idle server is reused after
/// server_check_delay (not within it), and a server that fails it is replaced.
#[test]
fn server_check_query_runs_before_reuse() {
    let pg = shared_pg();
    let role = "defects_check";
    create_role(pg, role);
    pg.admin_sql(&format!("ALTER ROLE {role} SET log_statement = 'all'"));
    let marker = "defects_check_marker";
    let settings = format!(
        "pool_mode: transaction\nserver_check_delay: 1\nserver_check_query: \"select '{marker}'\""
    );
    let pooler = start(role, &settings, &app_db(pg.port(), ""));
    let checks = || count(&pg.log(), marker);
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("select pg_backend_pid()")).unwrap();
    let pid = read_answer(&mut c).values[0].clone();
    c.write_all(&query("select pg_backend_pid()")).unwrap();
    assert_eq!(read_answer(&mut c).values, std::slice::from_ref(&pid));
    assert_eq!(checks(), 0, "a check inside server_check_delay");
    thread::sleep(Duration::from_millis(1500));
    c.write_all(&query("select pg_backend_pid()")).unwrap();
    assert_eq!(read_answer(&mut c).values, std::slice::from_ref(&pid));
    assert!(
        wait_until(secs(2), || checks() == 1),
        "{}",
        tail(&pg.log(), 10)
    );

    // A failing check closes the server instead of handing it out.
    pooler.rewrite_config(&config(
        "pool_mode: transaction\nserver_check_delay: 0\nserver_check_query: 'select 1/0'",
        &app_db(pg.port(), ""),
    ));
    pooler.reload();
    assert!(pooler.wait_for_log("configuration reloaded", secs(5)));
    c.write_all(&query("select pg_backend_pid()")).unwrap();
    let a = read_answer(&mut c);
    assert!(a.error.is_none(), "{:?}", a.error);
    assert_ne!(
        a.values,
        [pid],
        "a server that failed its check was handed out"
    );
    assert!(
        pooler.wait_for_log("server_check_query failed", secs(2)),
        "{}",
        tail(&pooler.log(), 20)
    );
}

/// Item 11: psycopg `execute(q, prepare=True)` with a 16 KiB query under transaction
/// pooling gets its answer (before: the pooler stopped reading at a full buffer, 20/20).
#[test]
fn psycopg_prepare_true_with_a_16k_query() {
    let pg = shared_pg();
    let role = "defects_bigparse";
    create_role(pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction\ndefault_pool_size: 2\nquery_timeout: 30",
        &app_db(pg.port(), ""),
    );
    let script = r#"
import sys, psycopg
port, user, pw = sys.argv[1], sys.argv[2], sys.argv[3]
conn = psycopg.connect(host="127.0.0.1", port=port, user=user, password=pw, dbname="app",
                       autocommit=True, connect_timeout=10)
for size in (9 * 1024, 16 * 1024, 64 * 1024):
    pad = "x" * size
    q = "select %s::int + 1 /* " + pad + " */"
    for i in range(5):
        row = conn.execute(q, [i], prepare=True).fetchone()
        assert row == (i + 1,), row
# psycopg's own auto-prepare after 5 runs, with a long query
q = "select %s::int * 2 /* " + "y" * 20000 + " */"
for i in range(10):
    assert conn.execute(q, [i]).fetchone() == (2 * i,)
print("OK")
"#;
    let mut cmd = Command::new(find_tool("python3"));
    clean_pg_env(&mut cmd);
    cmd.args(["-c", script, &pooler.port().to_string(), role, PW]);
    let out = run_cmd(cmd, None, secs(60));
    assert!(
        out.success() && out.stdout.contains("OK"),
        "{out}\n{}",
        tail(&pooler.log(), 20)
    );
}

/// Item 11: a named statement whose Parse (or whose name) is longer than pkt_buf,
/// over the raw protocol, in transaction and statement pooling.
#[test]
fn named_parse_longer_than_the_buffer_is_answered() {
    let pg = shared_pg();
    let role = "defects_rawparse";
    create_role(pg, role);
    for mode in ["transaction", "statement"] {
        let pooler = start(
            role,
            &format!("pool_mode: {mode}\npkt_buf: 4096"),
            &app_db(pg.port(), ""),
        );
        let mut c = login(&pooler, role, "app");
        // Parse messages whose whole length (header included) lands on every byte
        // around one and two buffers, then names longer than the buffer.
        let fixed = 5 + 10 + 1 + "select 5 /*  */".len() + 1 + 2;
        let mut cases: Vec<(usize, usize)> = (4_096 - 8..=4_096 + 8)
            .chain(8_192 - 8..=8_192 + 8)
            .map(|total| (10, total - fixed))
            .collect();
        cases.extend([(10, 12_000), (5_000, 10), (4_096, 10)]);
        for (name_len, pad) in cases {
            let name = "n".repeat(name_len);
            let sql = format!("select 5 /* {} */", "p".repeat(pad));
            let mut parse = Vec::new();
            parse.extend_from_slice(name.as_bytes());
            parse.push(0);
            parse.extend_from_slice(sql.as_bytes());
            parse.extend_from_slice(&[0, 0, 0]);
            let mut bind = vec![0u8];
            bind.extend_from_slice(name.as_bytes());
            bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
            let mut bytes = wire::message(b'P', &parse);
            bytes.extend(wire::message(b'B', &bind));
            bytes.extend(wire::message(b'E', &[0, 0, 0, 0, 0]));
            bytes.extend(wire::message(b'S', &[]));
            c.write_all(&bytes).unwrap();
            let a = read_answer(&mut c);
            assert!(
                a.ready,
                "{mode} {name_len}/{pad}: no answer\n{}",
                tail(&pooler.log(), 20)
            );
            assert_eq!(a.values, ["5"], "{mode} {name_len}/{pad}: {:?}", a.error);
            // Close it again so the next round prepares anew.
            let mut close = vec![b'S'];
            close.extend_from_slice(name.as_bytes());
            close.push(0);
            let mut bytes = wire::message(b'C', &close);
            bytes.extend(wire::message(b'S', &[]));
            c.write_all(&bytes).unwrap();
            assert!(read_answer(&mut c).ready);
        }
    }
}

/// Item 9: server host names are looked up off the event loop. Behind a name server that
/// never answers (a black hole on loopback, seen only by the pooler through its own mount
/// namespace), a lookup that takes seconds must not stall the worker's other clients;
/// `localhost` resolves and serves.
#[test]
fn a_slow_name_server_does_not_stall_the_worker() {
    assert!(
        tools::is_root(),
        "this test needs root (unshare -m and a name server on port 53)"
    );
    let pg = shared_pg();
    let role = "defects_dns";
    create_role(pg, role);
    // Receives queries and never answers: each lookup takes the resolver's full timeout.
    let black_hole = std::net::UdpSocket::bind("127.0.0.99:53").expect("bind 127.0.0.99:53");
    let setup = PoolerSetup::new();
    let resolv = setup.write_file(
        "resolv.conf",
        "nameserver 127.0.0.99\noptions timeout:3 attempts:1\n",
    );
    let real = std::env::var_os("PGBOUNCERS_TEST_BINARY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pgbouncers").into());
    let wrapper = setup.write_file(
        "pgbouncers-in-namespace",
        &format!(
            "#!/bin/sh\nexec unshare -m sh -c 'mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"' {} {} \"$@\"\n",
            resolv.display(),
            real.display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    setup.write_file("userlist.txt", &format!("{}\n", userlist_entry(role, PW)));
    let port = pg.port();
    let databases = format!(
        "{}  slow:\n    host: slow-host.example\n    port: {port}\n    dbname: app\n  \
         local:\n    host: localhost\n    port: {port}\n    dbname: app\n",
        app_db(port, "")
    );
    let mut setup = setup;
    setup.binary(&wrapper);
    let pooler = setup.start(&config(
        "pool_mode: transaction\nclient_login_timeout: 5",
        &databases,
    ));

    let mut fast = login(&pooler, role, "app");
    fast.write_all(&query("select 1")).unwrap();
    assert_eq!(read_answer(&mut fast).values, ["1"]);

    let slow_port = pooler.port();
    let slow = thread::spawn(move || {
        let start = Instant::now();
        let r = raw_login(
            slow_port,
            &startup_packet(&[("user", role), ("database", "slow")]),
            PW,
        );
        (start.elapsed(), r.err())
    });
    thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    let until = Instant::now() + secs(2);
    while Instant::now() < until {
        let t = Instant::now();
        fast.write_all(&query("select 2")).unwrap();
        assert_eq!(read_answer(&mut fast).values, ["2"]);
        worst = worst.max(t.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        worst < Duration::from_millis(500),
        "a query waited {worst:?} while a lookup was slow\n{}",
        tail(&pooler.log(), 20)
    );
    // The pool never logged in, so its client waits for the name to resolve, as
    // PgBouncer's does, until client_login_timeout; the log says why.
    let (took, err) = slow.join().unwrap();
    let err = err.expect("a login to a host that does not resolve fails");
    assert!(err.contains("client_login_timeout (server down)"), "{err}");
    assert!(took < secs(7), "{took:?}");
    assert!(
        pooler.log().contains(
            "server login failed: FATAL 08006: could not connect to server slow-host.example"
        ),
        "{}",
        tail(&pooler.log(), 20)
    );

    let mut local = login(&pooler, role, "local");
    local.write_all(&query("select 3")).unwrap();
    assert_eq!(read_answer(&mut local).values, ["3"]);
    drop(black_hole);
}

/// Item 2, every hand-over: the PROXY header (or none) → SSLRequest (or none) → startup
/// packet, sent in one write whose total length straddles each multiple of pkt_buf, so
/// some step ends a read that filled the buffer exactly. Every login must complete.
#[test]
fn login_hand_overs_at_every_buffer_boundary() {
    use std::io::Read;
    let pg = shared_pg();
    let role = "defects_handover";
    create_role(pg, role);
    let proxy_v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 6432\r\n".to_vec();
    let ssl = [0, 0, 0, 8, 4, 210, 22, 47].to_vec();
    for (mode, pkt_buf) in [("optional", 4096), ("off", 4096), ("required", 8192)] {
        let pooler = start(
            role,
            &format!(
                "proxy_protocol: {mode}\nproxy_trusted: [127.0.0.1]\npkt_buf: {pkt_buf}\nclient_login_timeout: 30"
            ),
            &app_db(pg.port(), ""),
        );
        let headers: &[Vec<u8>] = if mode == "off" {
            &[Vec::new()]
        } else if mode == "required" {
            std::slice::from_ref(&proxy_v1)
        } else {
            &[Vec::new(), proxy_v1.clone()]
        };
        for header in headers {
            for with_ssl in [false, true] {
                let mut prefix = header.clone();
                if with_ssl {
                    prefix.extend_from_slice(&ssl);
                }
                let base = startup_packet(&[
                    ("user", role),
                    ("database", "app"),
                    ("application_name", ""),
                ])
                .len();
                let mut targets: Vec<usize> = (pkt_buf - 6..=pkt_buf + 6).collect();
                targets.extend(2 * pkt_buf - 3..=2 * pkt_buf + 3);
                targets.push(10_000 + prefix.len());
                // PostgreSQL's (and our) limit for a startup packet is 10000 bytes.
                targets.retain(|t| t - prefix.len() <= 10_000);
                for total in targets {
                    let app = "x".repeat(total - prefix.len() - base);
                    let mut bytes = prefix.clone();
                    bytes.extend(startup_packet(&[
                        ("user", role),
                        ("database", "app"),
                        ("application_name", &app),
                    ]));
                    let what = format!(
                        "{mode} pkt_buf {pkt_buf} header {} ssl {with_ssl} total {}",
                        !header.is_empty(),
                        bytes.len()
                    );
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", pooler.port())).unwrap();
                    s.set_read_timeout(Some(secs(5))).unwrap();
                    s.write_all(&bytes).unwrap();
                    if with_ssl {
                        let mut n = [0u8; 1];
                        s.read_exact(&mut n)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(&n, b"N", "{what}");
                    }
                    let m = wire::read_message(&mut s)
                        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", tail(&pooler.log(), 10)))
                        .unwrap_or_else(|| panic!("{what}: closed"));
                    assert_eq!(m.tag, b'R', "{what}: {:?}", wire::Fields::parse(&m.body));
                    let mut pw = PW.as_bytes().to_vec();
                    pw.push(0);
                    s.write_all(&wire::message(b'p', &pw)).unwrap();
                    let a = read_answer(&mut s);
                    assert!(a.ready && a.error.is_none(), "{what}: {:?}", a.error);
                }
            }
        }
    }
}

/// Item 12, the settings test's findings: a database's application_name reaches the
/// server, and a client's own still wins.
#[test]
fn a_database_application_name_reaches_the_server() {
    let pg = shared_pg();
    let role = "defects_appname";
    create_role(pg, role);
    let pooler = start(
        role,
        "pool_mode: transaction",
        &app_db(pg.port(), "application_name: from-config"),
    );
    let mut c = login(&pooler, role, "app");
    c.write_all(&query("show application_name")).unwrap();
    assert_eq!(read_answer(&mut c).values, ["from-config"]);
    let mut mine = raw_login(
        pooler.port(),
        &startup_packet(&[
            ("user", role),
            ("database", "app"),
            ("application_name", "mine"),
        ]),
        PW,
    )
    .unwrap();
    mine.write_all(&query("show application_name")).unwrap();
    assert_eq!(read_answer(&mut mine).values, ["mine"]);
}
