//! End-to-end tests of PgBouncer's pgbouncer.ini: the real binary serves, reloads, SETs and converts from one, and refuses what it cannot honour by name.

mod common;

use std::process::Command;

use common::tools::{run_cmd, userlist_entry};
use common::*;
use postgres::SimpleQueryMessage;

const INI: &str = "pgbouncer.ini";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";

/// A pgbouncer.ini as an operator has it: comments, a quoted database name, a `[users]`
/// line, an `%include`, and settings pgbouncers takes without effect. `pool_size` is the
/// database's.
fn ini(pool_size: u32, extra: &str) -> String {
    format!(
        ";; PgBouncer configuration file
[databases]
\"app db\" = host=127.0.0.1 port={pg_port} dbname=app pool_size={pool_size}

[users]
app = pool_mode=transaction

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = md5
auth_file = @DIR@/userlist.txt
admin_users = {ADMIN}
so_reuseport = 1
tcp_user_timeout = 1500
{extra}%include @DIR@/timeouts.ini
",
        pg_port = shared_pg().port(),
    )
}

/// `(column, value)` pairs of each row a console command returns.
fn show(c: &mut postgres::Client, sql: &str) -> Vec<Vec<(String, Option<String>)>> {
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    for m in c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("`{sql}`: {e:?}"))
    {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| (cols[i].clone(), r.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => {}
        }
    }
    rows
}

/// The `column` of the row whose `key_col` is `key`.
fn cell(
    rows: &[Vec<(String, Option<String>)>],
    key_col: &str,
    key: &str,
    column: &str,
) -> Option<String> {
    let get = |row: &Vec<(String, Option<String>)>, col: &str| {
        row.iter()
            .find(|(c, _)| c == col)
            .and_then(|(_, v)| v.clone())
    };
    rows.iter()
        .find(|row| get(row, key_col).as_deref() == Some(key))
        .and_then(|row| get(row, column))
}

fn database_pool_size(console: &mut postgres::Client) -> Option<String> {
    cell(
        &show(console, "SHOW DATABASES"),
        "name",
        "app db",
        "pool_size",
    )
}

fn convert(path: &std::path::Path) -> common::tools::CmdOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbouncers"));
    cmd.arg("--convert").arg(path);
    run_cmd(cmd, None, secs(30))
}

#[test]
fn an_ini_file_serves_reloads_sets_and_converts() {
    let mut setup = PoolerSetup::new();
    setup.config_file(INI);
    setup.write_file(
        "userlist.txt",
        &format!(
            "{}\n{}\n",
            userlist_entry(APP_USER, APP_PASSWORD),
            userlist_entry(ADMIN, ADMIN_PASSWORD)
        ),
    );
    // Included files are opened as written: here an absolute path.
    setup.write_file("timeouts.ini", "; included\nquery_wait_timeout = 20\n");
    let pooler = setup.start_with_args(&ini(3, ""), &["--workers", "1"]);

    // A login through the database [databases] defines, under its quoted name.
    let mut client = pooler.connect(APP_USER, APP_PASSWORD, "app db");
    assert_eq!(
        scalar(&mut client, "SELECT current_database()").unwrap(),
        "app"
    );

    let mut console = pooler.connect(ADMIN, ADMIN_PASSWORD, "pgbouncer");
    // [users] app = pool_mode=transaction.
    let pools = show(&mut console, "SHOW POOLS");
    assert_eq!(
        cell(&pools, "database", "app db", "pool_mode").as_deref(),
        Some("transaction"),
        "{pools:?}"
    );
    assert_eq!(database_pool_size(&mut console).as_deref(), Some("3"));
    // The included file applied.
    let config = show(&mut console, "SHOW CONFIG");
    assert_eq!(
        cell(&config, "key", "query_wait_timeout", "value").as_deref(),
        Some("20")
    );

    // A reload of a file with a setting pgbouncers cannot honour keeps the running one.
    pooler.rewrite_config(&ini(5, "syslog = 1\n"));
    pooler.reload();
    assert!(
        pooler.wait_for_log("syslog = 1 is refused", secs(10)),
        "{}",
        pooler.log()
    );
    assert_eq!(database_pool_size(&mut console).as_deref(), Some("3"));

    // An edited ini file reaches the workers on SIGHUP.
    pooler.rewrite_config(&ini(5, ""));
    pooler.reload();
    assert!(
        wait_until(secs(10), || database_pool_size(&mut console).as_deref()
            == Some("5")),
        "pool_size after the reload: {:?}\n{}",
        database_pool_size(&mut console),
        pooler.log()
    );
    assert_eq!(scalar(&mut client, "SELECT 1").unwrap(), "1");

    // The console's SET edits the converted YAML of an ini-started pooler.
    console.simple_query("SET default_pool_size = 9").unwrap();
    let config = show(&mut console, "SHOW CONFIG");
    assert_eq!(
        cell(&config, "key", "default_pool_size", "value").as_deref(),
        Some("9")
    );
    assert_eq!(database_pool_size(&mut console).as_deref(), Some("5"));
    drop(console);
    drop(client);

    // --convert prints YAML that starts the same pooler.
    let out = convert(pooler.config_path());
    let yaml = out.expect_success().to_owned();
    assert!(yaml.contains("# note: so_reuseport is accepted"), "{yaml}");
    // Units: tcp_user_timeout is milliseconds in the ini file, seconds in YAML.
    assert!(yaml.contains("\ntcp_user_timeout: 1.5\n"), "{yaml}");
    let second = PoolerSetup::new();
    let yaml = yaml.replace(
        &format!("listen_port: {}\n", pooler.port()),
        "listen_port: @PORT@\n",
    );
    assert!(yaml.contains("listen_port: @PORT@"), "{yaml}");
    let converted = second.start_with_args(&yaml, &["--workers", "1"]);
    let mut client = converted.connect(APP_USER, APP_PASSWORD, "app db");
    assert_eq!(
        scalar(&mut client, "SELECT current_database()").unwrap(),
        "app"
    );
    let mut console = converted.connect(ADMIN, ADMIN_PASSWORD, "pgbouncer");
    assert_eq!(database_pool_size(&mut console).as_deref(), Some("5"));
}

#[test]
fn an_unsupported_setting_is_refused_by_name() {
    let mut setup = PoolerSetup::new();
    setup.config_file(INI);
    setup.write_file("userlist.txt", &userlist_entry(APP_USER, APP_PASSWORD));
    setup.write_file("timeouts.ini", "");
    let text = ini(3, "syslog = 1\n");
    let out = setup.run_to_exit(&text, &[], secs(30));
    assert_eq!(out.code(), Some(1), "{out}");
    let path = setup.path(INI);
    // The file and line, the setting, why, and what to do instead.
    let want = format!(
        "{}:17: syslog = 1 is refused: syslog is not supported",
        path.display()
    );
    assert!(out.stderr.contains(&want), "{out}");
    assert!(out.stderr.contains("log to stderr"), "{out}");

    // --convert and --check refuse it the same way.
    let out = convert(&path);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&want) && out.stdout.is_empty(), "{out}");
    let out = setup.run_to_exit(&text, &["--check"], secs(30));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&want), "{out}");

    // An unsupported connection-string key names the database and the key.
    let text = ini(3, "").replace("pool_size=3", "pool_size=3 server_lifetime=60");
    let out = setup.run_to_exit(&text, &["--check"], secs(30));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr
            .contains("[databases] app db: server_lifetime is refused"),
        "{out}"
    );
    let out = setup.run_to_exit(&ini(3, ""), &["--check"], secs(30));
    assert!(out.success(), "{out}");
}
