//! Replication connections (`replication=true|database`, PgBouncer 1.23+) through the pooler: each gets a server of its own; tested with pg_receivewal and a logical subscription.

mod common;

use std::io::Write;
use std::process::Command;

use common::pg::tail;
use common::tools::clean_pg_env;
use common::wire::{connect, read_error, read_message, startup_packet};
use common::*;

/// A PostgreSQL with `wal_level = logical`, `app` a REPLICATION role, and a pg_hba.conf line
/// for replication over TCP.
fn publisher() -> PgServer {
    let pg = PgServer::start();
    pg.admin_sql("ALTER SYSTEM SET wal_level = logical");
    pg.admin_sql(&format!("ALTER ROLE {APP_USER} REPLICATION"));
    let hba = pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host replication {APP_USER} 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    pg.restart();
    assert_eq!(pg.admin_sql("SHOW wal_level"), "logical");
    pg
}

/// One worker, transaction pooling (replication servers are never pooled whatever the
/// mode), trust at the pooler, `app` an admin so SHOW CLIENTS/SERVERS can be read. libpq
/// sends `database=replication` for physical replication whatever the connection string
/// says, so that name needs an entry (or `*`), as with PgBouncer.
fn start(pg: &PgServer) -> Pooler {
    start_with(pg, "auth_type: trust\n", "")
}

/// [`start`] with other authentication settings and an `hba.conf`.
fn start_with(pg: &PgServer, auth: &str, hba: &str) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file("hba.conf", hba);
    setup.write_file(
        "userlist.txt",
        &format!("{}\n", userlist_entry(APP_USER, APP_PASSWORD)),
    );
    setup.start(&format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         workers: 1\n\
         {auth}\
         auth_file: @DIR@/userlist.txt\n\
         admin_users: [{APP_USER}]\n\
         pool_mode: transaction\n\
         query_wait_timeout: 20\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: app, pool_size: 4 }}\n  \
           replication: {{ host: 127.0.0.1, port: {port}, dbname: app }}\n",
        port = pg.port()
    ))
}

/// (replication, state) of SHOW CLIENTS or SERVERS rows, the console's left out.
fn show(pooler: &Pooler, what: &str) -> Vec<(String, String)> {
    let mut console = pooler.connect(APP_USER, "", "pgbouncer");
    query_rows(&mut console, &format!("SHOW {what}"))
        .iter()
        .filter(|r| r.get("database") != Some("pgbouncer"))
        .map(|r| {
            (
                r.get("replication").unwrap_or("").to_string(),
                r.get("state").unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Backends of `app` on `pg` by backend_type (walsender or client backend).
fn backends(pg: &PgServer, kind: &str) -> i64 {
    pg.admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}' \
         AND backend_type = '{kind}'"
    ))
    .parse()
    .unwrap()
}

/// Reads to the next ReadyForQuery: the first column of the DataRows.
fn until_ready(s: &mut std::net::TcpStream) -> Vec<String> {
    let mut rows = Vec::new();
    loop {
        let m = read_message(s).unwrap().expect("closed");
        match m.tag {
            b'D' => {
                let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap());
                rows.push(String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned());
            }
            b'E' => panic!("error: {:?}", common::wire::Fields::parse(&m.body).0),
            b'Z' => return rows,
            _ => {}
        }
    }
}

#[test]
fn physical_replication_client_gets_a_server_of_its_own_closed_when_it_leaves() {
    let pg = publisher();
    let pooler = start(&pg);
    let system_id = pg.admin_sql("SELECT system_identifier FROM pg_control_system()");
    let mut s = connect(pooler.port());
    s.write_all(&startup_packet(&[
        ("user", APP_USER),
        ("database", APP_DB),
        ("replication", "true"),
    ]))
    .unwrap();
    until_ready(&mut s);
    // A replication command, which only a walsender answers.
    s.write_all(&common::wire::query("IDENTIFY_SYSTEM"))
        .unwrap();
    assert_eq!(until_ready(&mut s), vec![system_id]);
    assert_eq!(backends(&pg, "walsender"), 1);
    assert_eq!(
        show(&pooler, "CLIENTS"),
        vec![("physical".into(), "active".into())]
    );
    // The server that fetched the pool's greeting is idle in the pool; the walsender is
    // the client's.
    let mut servers = show(&pooler, "SERVERS");
    servers.sort();
    assert_eq!(
        servers,
        vec![
            ("none".into(), "idle".into()),
            ("physical".into(), "active".into())
        ]
    );

    // Ordinary clients meanwhile: never given the walsender, and it is never theirs.
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    for _ in 0..3 {
        assert_eq!(
            scalar(
                &mut c,
                "SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            .unwrap(),
            "client backend"
        );
    }
    s.write_all(&common::wire::query("IDENTIFY_SYSTEM"))
        .unwrap();
    assert_eq!(until_ready(&mut s).len(), 1);

    // The client leaves: its server goes too, not into the pool.
    s.write_all(&common::wire::message(b'X', &[])).unwrap();
    drop(s);
    assert!(
        wait_until(secs(10), || backends(&pg, "walsender") == 0),
        "the walsender outlived its client:\n{}",
        pooler.log()
    );
    let servers = show(&pooler, "SERVERS");
    assert!(servers.iter().all(|(r, _)| r == "none"), "{servers:?}");
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
}

/// `pg_receivewal` against `conninfo` until the WAL position `pg` has now.
fn receivewal(pg: &PgServer, conninfo: &str, dir: &std::path::Path) -> CmdOutput {
    let lsn = pg.admin_sql("SELECT pg_current_wal_lsn()");
    let mut cmd = Command::new(pg_tool("pg_receivewal"));
    clean_pg_env(&mut cmd);
    cmd.args(["--no-loop", "--no-password", "--no-sync"])
        .arg(format!("--endpos={lsn}"))
        .arg("-D")
        .arg(dir)
        .arg("-d")
        .arg(conninfo);
    run_cmd(cmd, None, secs(60))
}

/// WAL segments (whole or partial) in `dir`.
fn wal_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() >= 24 && n[..24].bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pg_receivewal_through_the_pooler_receives_wal() {
    let pg = publisher();
    let pooler = start(&pg);
    pg.admin_sql_in(
        APP_DB,
        "CREATE TABLE wal_made (n int); INSERT INTO wal_made SELECT generate_series(1, 1000); GRANT SELECT ON wal_made TO app",
    );
    let dir = pooler.path("wal");
    std::fs::create_dir_all(&dir).unwrap();
    let out = receivewal(
        &pg,
        &format!(
            "host=127.0.0.1 port={} user={APP_USER} dbname={APP_DB}",
            pooler.port()
        ),
        &dir,
    );
    assert!(
        out.success(),
        "pg_receivewal through the pooler:\n{out}\n{}",
        pooler.log()
    );
    assert!(!wal_files(&dir).is_empty(), "no WAL received:\n{out}");
    assert!(
        wait_until(secs(10), || backends(&pg, "walsender") == 0),
        "the walsender outlived pg_receivewal"
    );
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM wal_made").unwrap(),
        "1000"
    );
}

#[test]
fn logical_subscription_replicates_rows_through_the_pooler() {
    let pg = publisher();
    let pooler = start(&pg);
    let sub = shared_pg();
    const TABLE: &str = "repl_through_pooler";
    pg.admin_sql_in(
        APP_DB,
        &format!(
            "CREATE TABLE {TABLE} (id int PRIMARY KEY, v text);
             INSERT INTO {TABLE} SELECT n, 'before ' || n FROM generate_series(1, 50) n;
             GRANT SELECT ON {TABLE} TO {APP_USER};
             CREATE PUBLICATION repl_pub FOR TABLE {TABLE};"
        ),
    );
    sub.admin_sql_in(
        APP_DB,
        &format!(
            "DROP SUBSCRIPTION IF EXISTS repl_sub; DROP TABLE IF EXISTS {TABLE};
             CREATE TABLE {TABLE} (id int PRIMARY KEY, v text);"
        ),
    );
    sub.admin_sql_in(
        APP_DB,
        &format!(
            "CREATE SUBSCRIPTION repl_sub \
             CONNECTION 'host=127.0.0.1 port={} user={APP_USER} dbname={APP_DB}' \
             PUBLICATION repl_pub",
            pooler.port()
        ),
    );
    let count = || sub.admin_sql_in(APP_DB, &format!("SELECT count(*) FROM {TABLE}"));
    assert!(
        wait_until(secs(30), || count() == "50"),
        "initial copy: {} rows\n{}\n{}",
        count(),
        pooler.log(),
        tail(&sub.log(), 30)
    );
    // Streamed changes, while ordinary clients use the pool.
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    pg.admin_sql_in(
        APP_DB,
        &format!("INSERT INTO {TABLE} SELECT n, 'after ' || n FROM generate_series(51, 80) n"),
    );
    assert_eq!(
        scalar(&mut c, &format!("SELECT count(*) FROM {TABLE}")).unwrap(),
        "80"
    );
    assert!(
        wait_until(secs(30), || count() == "80"),
        "streamed: {} rows\n{}",
        count(),
        pooler.log()
    );
    let servers = show(&pooler, "SERVERS");
    assert!(
        servers.contains(&("logical".into(), "active".into())),
        "{servers:?}"
    );
    let clients = show(&pooler, "CLIENTS");
    assert!(
        clients.contains(&("logical".into(), "active".into())),
        "{clients:?}"
    );
    // DROP SUBSCRIPTION drops the slot through the pooler too.
    sub.admin_sql_in(
        APP_DB,
        &format!("DROP SUBSCRIPTION repl_sub; DROP TABLE {TABLE}"),
    );
    assert_eq!(
        pg.admin_sql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert!(
        wait_until(secs(10), || backends(&pg, "walsender") == 0),
        "walsenders outlived the subscription"
    );
}

#[test]
fn bad_replication_values_and_the_console_are_refused() {
    let pg = shared_pg();
    let pooler = start(pg);
    let mut s = connect(pooler.port());
    s.write_all(&startup_packet(&[
        ("user", APP_USER),
        ("database", APP_DB),
        ("replication", "sometimes"),
    ]))
    .unwrap();
    let e = read_error(&mut s);
    assert_eq!(
        (e.code(), e.message()),
        ("08P01", "invalid value for parameter \"replication\"")
    );
    let mut s = connect(pooler.port());
    s.write_all(&startup_packet(&[
        ("user", APP_USER),
        ("database", "pgbouncer"),
        ("replication", "database"),
    ]))
    .unwrap();
    let e = read_error(&mut s);
    assert_eq!(e.code(), "0A000", "{:?}", e.0);
}

/// Raw login with `replication` (None: an ordinary one): Ok after ReadyForQuery, or the
/// error's message.
fn try_login(pooler: &Pooler, replication: Option<&str>) -> Result<std::net::TcpStream, String> {
    let mut params = vec![("user", APP_USER), ("database", APP_DB)];
    params.extend(replication.map(|r| ("replication", r)));
    common::wire::raw_login(pooler.port(), &startup_packet(&params), "")
}

#[test]
fn hba_replication_lines_match_physical_replication_only() {
    let pg = publisher();
    let pooler = start_with(
        &pg,
        "auth_type: hba\nauth_hba_file: @DIR@/hba.conf\n",
        &format!(
            "host replication {APP_USER} 127.0.0.1/32 trust\n\
             host all {APP_USER} 127.0.0.1/32 reject\n"
        ),
    );
    // Physical: the `replication` line.
    let mut s = try_login(&pooler, Some("true")).expect("physical replication login");
    s.write_all(&common::wire::query("IDENTIFY_SYSTEM"))
        .unwrap();
    assert_eq!(until_ready(&mut s).len(), 1);
    // Ordinary and logical connections match by database name: the `all` line.
    for replication in [None, Some("database")] {
        let e = try_login(&pooler, replication).expect_err("rejected by the all line");
        assert!(e.contains("28000"), "{replication:?}: {e}");
    }
}

#[test]
fn a_replication_client_waits_through_pause_and_goes_on_at_resume() {
    let pg = publisher();
    let pooler = start(&pg);
    // The pool's greeting first, so the replication client only waits for its server.
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    let mut console = pooler.connect(APP_USER, "", "pgbouncer");
    console.simple_query("PAUSE app").unwrap();
    let mut s = try_login(&pooler, Some("database")).expect("logical replication login");
    s.write_all(&common::wire::query("IDENTIFY_SYSTEM"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        backends(&pg, "walsender"),
        0,
        "a server started during PAUSE"
    );
    console.simple_query("RESUME app").unwrap();
    // IDENTIFY_SYSTEM on a logical connection names the database too.
    assert_eq!(until_ready(&mut s).len(), 1);
    assert_eq!(backends(&pg, "walsender"), 1);
    assert_eq!(scalar(&mut c, "SELECT 2").unwrap(), "2");
}
