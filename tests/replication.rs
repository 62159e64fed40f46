//! Replication connections (`replication=true|database`): refused at the startup packet, tested with pg_receivewal and a logical subscription.

mod common;

use std::io::Write;
use std::process::Command;

use common::tools::clean_pg_env;
use common::wire::{assert_closed, connect, raw_login, read_error, startup_packet};
use common::*;

/// What the refusal says: PgBouncer's words before 1.23, then why and what to do.
const REFUSED: &str = "unsupported startup parameter: replication (pgbouncers does not pass \
                       replication connections; connect replication clients to PostgreSQL directly)";

/// One worker, session pooling (where PgBouncer 1.23+ serves replication), trust at the
/// pooler, `app` as an admin so SHOW CLIENTS can be read.
fn start() -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &format!("{}\n", userlist_entry(APP_USER, APP_PASSWORD)),
    );
    setup.start(&format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         workers: 1\n\
         auth_type: trust\n\
         auth_file: @DIR@/userlist.txt\n\
         admin_users: [{APP_USER}]\n\
         pool_mode: session\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {}, dbname: app }}\n",
        shared_pg().port()
    ))
}

/// The users of SHOW CLIENTS, the console's own connection left out.
fn app_clients(pooler: &Pooler) -> Vec<String> {
    let mut console = pooler.connect(APP_USER, "", "pgbouncer");
    query_rows(&mut console, "SHOW CLIENTS")
        .iter()
        .filter(|r| r.get("database") != Some("pgbouncer"))
        .map(|r| {
            format!(
                "{}@{}",
                r.get("user").unwrap_or(""),
                r.get("database").unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn replication_startups_are_refused_before_any_password_and_false_is_a_normal_login() {
    let pooler = start();
    for value in ["database", "true", "on", "yes", "1", "TRUE"] {
        let mut s = connect(pooler.port());
        s.write_all(&startup_packet(&[
            ("user", APP_USER),
            ("database", APP_DB),
            ("replication", value),
        ]))
        .unwrap();
        // The refusal comes instead of an authentication request.
        let e = read_error(&mut s);
        assert_eq!(e.code(), "0A000", "replication={value}: {:?}", e.0);
        assert_eq!(e.severity(), "FATAL", "replication={value}: {:?}", e.0);
        assert_eq!(e.message(), REFUSED, "replication={value}");
        assert_closed(&mut s);
    }
    // `replication=false` (libpq's default spelling is no parameter at all) is an
    // ordinary connection.
    for value in ["false", "off", "no", "0"] {
        let startup = startup_packet(&[
            ("user", APP_USER),
            ("database", APP_DB),
            ("replication", value),
        ]);
        let mut s = raw_login(pooler.port(), &startup, "")
            .unwrap_or_else(|e| panic!("replication={value}: {e}"));
        let (rows, status) = common::wire::run_query(&mut s, "SELECT 40 + 2");
        assert_eq!(
            (rows, status),
            (vec!["42".to_string()], b'I'),
            "replication={value}"
        );
    }
    assert!(
        pooler
            .log()
            .contains("unsupported startup parameter: replication"),
        "the refusal is logged:\n{}",
        pooler.log()
    );
}

/// `pg_receivewal` against `conninfo` until the WAL position PostgreSQL has now.
fn receivewal(conninfo: &str, dir: &std::path::Path) -> CmdOutput {
    let lsn = shared_pg().admin_sql("SELECT pg_current_wal_lsn()");
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
fn pg_receivewal_through_the_pooler_is_refused_clearly() {
    let pooler = start();
    let pg = shared_pg();
    let direct = pooler.path("wal-direct");
    let through = pooler.path("wal-pooler");
    std::fs::create_dir_all(&direct).unwrap();
    std::fs::create_dir_all(&through).unwrap();
    // The same command straight to PostgreSQL receives WAL, so the tool and the server
    // can do it: what fails below is the pooler's refusal.
    let out = receivewal(
        &format!(
            "host={} port={} user={SUPERUSER}",
            pg.socket_dir().display(),
            pg.port()
        ),
        &direct,
    );
    assert!(
        out.success(),
        "pg_receivewal straight to PostgreSQL:\n{out}"
    );
    assert!(
        !wal_files(&direct).is_empty(),
        "no WAL received directly:\n{out}"
    );

    let out = receivewal(
        &format!("host=127.0.0.1 port={} user={APP_USER}", pooler.port()),
        &through,
    );
    assert!(
        !out.success(),
        "pg_receivewal through the pooler succeeded:\n{out}"
    );
    assert!(out.stderr.contains(REFUSED), "{out}");
    assert!(
        wal_files(&through).is_empty(),
        "WAL came through the pooler"
    );

    // Ordinary clients go on, and no refused connection is left in SHOW CLIENTS.
    let mut c = pooler.connect(APP_USER, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    assert_eq!(app_clients(&pooler), vec![format!("{APP_USER}@{APP_DB}")]);
}

#[test]
fn logical_subscription_through_the_pooler_is_refused_clearly() {
    let pooler = start();
    let pg = shared_pg();
    // The subscriber is the shared server itself; the publisher it is pointed at is the
    // pooler. CREATE SUBSCRIPTION connects (replication=database) before anything else.
    let err = pg
        .try_admin_sql_in(
            APP_DB,
            &format!(
                "CREATE SUBSCRIPTION repl_refused_sub \
                 CONNECTION 'host=127.0.0.1 port={} user={APP_USER} dbname={APP_DB}' \
                 PUBLICATION repl_refused_pub",
                pooler.port()
            ),
        )
        .inspect(|_| {
            let _ = pg.try_admin_sql_in(APP_DB, "DROP SUBSCRIPTION repl_refused_sub");
        })
        .expect_err("CREATE SUBSCRIPTION through the pooler succeeded");
    assert!(err.contains("could not connect to the publisher"), "{err}");
    assert!(err.contains(REFUSED), "{err}");
    let count = pg.admin_sql_in(
        APP_DB,
        "SELECT count(*) FROM pg_subscription WHERE subname = 'repl_refused_sub'",
    );
    assert_eq!(count, "0");

    let mut c = pooler.connect(APP_USER, "", APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 2").unwrap(), "2");
    assert_eq!(app_clients(&pooler), vec![format!("{APP_USER}@{APP_DB}")]);
}
