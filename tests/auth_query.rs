//! auth_user / auth_query / auth_dbname against a real PostgreSQL: users that exist only there log in through the pooler (SCRAM and md5), password changes, dropped and expired roles, a SECURITY DEFINER lookup, failed lookups, and the pgbouncer.ini form.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::pg::quote_literal;
use common::tools::userlist_entry;
use common::*;
use postgres::error::SqlState;

/// The shared server, with md5 server logins allowed for this file's md5 roles (the
/// harness's pg_hba.conf asks every other TCP role for SCRAM).
fn pg() -> &'static common::pg::PgServer {
    static HBA: OnceLock<()> = OnceLock::new();
    let pg = shared_pg();
    HBA.get_or_init(|| {
        let hba = pg.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let lines: String = MD5_ROLES
            .iter()
            .map(|r| format!("host all {r} 127.0.0.1/32 md5\n"))
            .collect();
        std::fs::write(&hba, format!("{lines}{old}")).expect("write pg_hba.conf");
        pg.admin_sql("SELECT pg_reload_conf()");
        // The reload is asynchronous: wait until an md5 login of a probe role works.
        pg.admin_sql(
            "SET password_encryption = 'md5'; CREATE ROLE aq_md5_probe LOGIN PASSWORD 'probe'",
        );
        let ok = tools::wait_until(secs(10), || {
            pg.try_connect("aq_md5_probe", "probe", "postgres").is_ok()
        });
        assert!(ok, "pg_hba.conf reload did not take:\n{}", pg.log());
    });
    pg
}

const MD5_ROLES: &[&str] = &["aq_md5_probe", "aq_md5", "aq_md5_ini"];

/// Creates (or re-creates) a login role with a SCRAM or md5 password.
fn create_role(name: &str, password: &str, md5: bool, extra: &str) {
    let enc = if md5 { "md5" } else { "scram-sha-256" };
    pg().admin_sql(&format!(
        "DROP ROLE IF EXISTS {name}; SET password_encryption = '{enc}';
         CREATE ROLE {name} LOGIN PASSWORD {} {extra}",
        quote_literal(password)
    ));
    let stored = pg().role_secret(name);
    let want = if md5 { "md5" } else { "SCRAM-SHA-256$" };
    assert!(stored.starts_with(want), "{name}: {stored}");
}

/// The config: `auth_type`, `@DIR@/userlist.txt`, `extra` top-level YAML, `databases`.
fn config(auth_type: &str, extra: &str, databases: &str) -> String {
    format!(
        "listen_addr: 127.0.0.1\nlisten_port: @PORT@\nauth_type: {auth_type}\n\
         auth_file: @DIR@/userlist.txt\nadmin_users: [aq_admin]\n{extra}\ndatabases:\n{databases}"
    )
}

/// One worker, the `userlist` lines as auth_file, and [`config`].
fn start(auth_type: &str, extra: &str, databases: &str, userlist: &[String]) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", userlist.join("\n")));
    setup.start_with_args(&config(auth_type, extra, databases), &["--workers", "1"])
}

/// `  name: { host, port, dbname, <more> }` for the shared server.
fn db(name: &str, dbname: &str, more: &str) -> String {
    let sep = if more.is_empty() { "" } else { ", " };
    format!(
        "  {name}: {{ host: 127.0.0.1, port: {}, dbname: {dbname}{sep}{more} }}\n",
        pg().port()
    )
}

/// The superuser as auth_user, its password in plain text (a SCRAM secret alone could
/// not log the pooler in before a client did).
fn superuser_line() -> String {
    userlist_entry(SUPERUSER, SUPERUSER_PASSWORD)
}

fn admin_line() -> String {
    userlist_entry("aq_admin", "adminpw")
}

fn current_user(c: &mut postgres::Client) -> String {
    scalar(c, "SELECT current_user").expect("SELECT current_user")
}

/// Asserts the login failed with SQLSTATE `code` and exactly `message`.
fn refused(result: Result<postgres::Client, postgres::Error>, code: &SqlState, message: &str) {
    let e = match result {
        Ok(_) => panic!("the login succeeded; expected {message:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Some(code), "{e:?}");
    assert_eq!(e.as_db_error().map(|d| d.message()), Some(message), "{e:?}");
}

fn wrong_password(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// Every row of a console command, as text.
fn console_rows(pooler: &Pooler, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut admin = pooler.connect("aq_admin", "adminpw", "pgbouncer");
    query_rows(&mut admin, sql)
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
        .collect()
}

#[test]
fn scram_and_md5_users_of_postgresql_log_in_and_strangers_cannot_tell_they_are_strangers() {
    create_role("aq_scram", "scrampw", false, "");
    create_role("aq_md5", "md5pw", true, "");
    // auth_type md5: md5 secrets get md5, SCRAM secrets get SCRAM (PostgreSQL's rule).
    let pooler = start(
        "md5",
        "auth_user: postgres",
        &db("app", APP_DB, ""),
        &[superuser_line(), admin_line()],
    );
    // Two clients at once: the second server login needs the credentials the pool kept
    // from the lookup (SCRAM pass-through with the recovered ClientKey; the md5 secret).
    for (user, pw) in [("aq_scram", "scrampw"), ("aq_md5", "md5pw")] {
        let mut one = pooler.connect(user, pw, "app");
        let mut two = pooler.connect(user, pw, "app");
        assert_eq!(current_user(&mut one), user);
        assert_eq!(current_user(&mut two), user);
        let pids = [&mut one, &mut two].map(|c| scalar(c, "SELECT pg_backend_pid()").unwrap());
        assert_ne!(
            pids[0], pids[1],
            "{user}: one server for two session clients"
        );
    }
    // A wrong password and a user PostgreSQL does not have: the same words and SQLSTATE.
    for user in ["aq_scram", "aq_md5", "aq_nobody"] {
        refused(
            pooler.try_connect(user, "wrong", "app"),
            &SqlState::INVALID_PASSWORD,
            &wrong_password(user),
        );
    }
    // The looked-up users' pools are listed like any other.
    let users: Vec<_> = console_rows(&pooler, "SHOW USERS")
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    for user in ["aq_scram", "aq_md5"] {
        assert!(users.iter().any(|u| u == user), "SHOW USERS: {users:?}");
    }
    let pools = console_rows(&pooler, "SHOW POOLS");
    assert!(
        pools
            .iter()
            .any(|r| r[0].as_deref() == Some("app") && r[1].as_deref() == Some("aq_scram")),
        "SHOW POOLS: {pools:?}"
    );
    // The secrets looked up never reach the log.
    let log = pooler.log();
    for role in ["aq_scram", "aq_md5"] {
        let secret = pg().role_secret(role);
        assert!(!log.contains(&secret), "{role}'s secret is in the log");
    }
    assert!(!log.contains("scrampw") && !log.contains("md5pw"));
}

#[test]
fn a_changed_password_counts_after_the_ttl_and_a_dropped_role_is_refused() {
    create_role("aq_change", "before", false, "");
    let ttl = Duration::from_secs(1);
    let pooler = start(
        "scram-sha-256",
        "auth_user: postgres\nauth_query_cache_ttl: 1",
        &db("app", APP_DB, ""),
        &[superuser_line()],
    );
    let mut c = pooler.connect("aq_change", "before", "app");
    assert_eq!(current_user(&mut c), "aq_change");
    drop(c);

    pg().admin_sql("ALTER ROLE aq_change PASSWORD 'after'");
    std::thread::sleep(ttl + Duration::from_millis(300));
    let mut c = pooler.connect("aq_change", "after", "app");
    // A new server login of the same pool uses the new secret too.
    let mut other = pooler.connect("aq_change", "after", "app");
    assert_eq!(current_user(&mut c), "aq_change");
    assert_eq!(current_user(&mut other), "aq_change");
    refused(
        pooler.try_connect("aq_change", "before", "app"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_change"),
    );
    drop((c, other));

    pg().admin_sql("DROP ROLE aq_change");
    std::thread::sleep(ttl + Duration::from_millis(300));
    refused(
        pooler.try_connect("aq_change", "after", "app"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_change"),
    );
    assert_no_server_login(&pooler, "app", "aq_change");
}

#[test]
fn a_past_rolvaliduntil_in_a_third_column_is_refused() {
    create_role(
        "aq_expired",
        "pw",
        false,
        "VALID UNTIL '2001-02-03 04:05:06+00'",
    );
    create_role("aq_later", "pw", false, "VALID UNTIL '2999-01-01'");
    create_role("aq_forever", "pw", false, "VALID UNTIL 'infinity'");
    let pooler = start(
        "scram-sha-256",
        "auth_user: postgres\n\
         auth_query: SELECT rolname, rolpassword, rolvaliduntil FROM pg_authid WHERE rolname=$1",
        &db("app", APP_DB, ""),
        &[superuser_line()],
    );
    refused(
        pooler.try_connect("aq_expired", "pw", "app"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_expired"),
    );
    for user in ["aq_later", "aq_forever"] {
        let mut c = pooler.connect(user, "pw", "app");
        assert_eq!(current_user(&mut c), user);
    }
    // PostgreSQL would refuse the expired role too: the pooler must have refused it
    // itself, without a server login.
    assert_no_server_login(&pooler, "app", "aq_expired");
}

/// The pooler never tried a server login as `user` in `db` (that failed).
fn assert_no_server_login(pooler: &Pooler, db: &str, user: &str) {
    let needle = format!("{db}/{user}: server login failed");
    let log = pooler.log();
    assert!(!log.contains(&needle), "{needle}:\n{log}");
}

#[test]
fn a_security_definer_function_in_the_auth_dbname_is_the_lookup() {
    create_role("aq_lookup", "lookuppw", false, "");
    create_role("aq_func", "funcpw", false, "");
    // The function lives in `app` only; clients log in to `other` (database postgres).
    pg().admin_sql_in(
        APP_DB,
        "CREATE SCHEMA IF NOT EXISTS aq;
         CREATE OR REPLACE FUNCTION aq.get_auth(p_usename text)
           RETURNS TABLE(usename name, passwd text)
           LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
           AS $$ SELECT usename, passwd FROM pg_shadow WHERE usename = p_usename $$;
         REVOKE ALL ON FUNCTION aq.get_auth(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA aq TO aq_lookup;
         GRANT EXECUTE ON FUNCTION aq.get_auth(text) TO aq_lookup;",
    );
    // auth_user, auth_query and auth_dbname per database; nothing global.
    let dbs = format!(
        "{}{}",
        db("authdb", APP_DB, ""),
        db(
            "other",
            "postgres",
            "auth_user: aq_lookup, auth_dbname: authdb, \
             auth_query: 'SELECT * FROM aq.get_auth($1)'"
        )
    );
    let pooler = start(
        "scram-sha-256",
        "",
        &dbs,
        &[userlist_entry("aq_lookup", "lookuppw"), admin_line()],
    );
    let mut c = pooler.connect("aq_func", "funcpw", "other");
    assert_eq!(current_user(&mut c), "aq_func");
    assert_eq!(
        scalar(&mut c, "SELECT current_database()").unwrap(),
        "postgres"
    );
    refused(
        pooler.try_connect("aq_func", "wrong", "other"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_func"),
    );
    // The lookup ran as aq_lookup in authdb: its pool is there.
    let pools = console_rows(&pooler, "SHOW POOLS");
    assert!(
        pools
            .iter()
            .any(|r| r[0].as_deref() == Some("authdb") && r[1].as_deref() == Some("aq_lookup")),
        "SHOW POOLS: {pools:?}"
    );
    // `authdb` has no auth_user of its own: there aq_func is just unknown.
    refused(
        pooler.try_connect("aq_func", "funcpw", "authdb"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_func"),
    );
}

#[test]
fn a_failed_lookup_is_told_and_never_cached() {
    create_role("aq_late", "latepw", false, "");
    pg().admin_sql("DROP FUNCTION IF EXISTS public.aq_missing(text)");
    // A long TTL: only "not cached" explains a login right after the fix.
    let pooler = start(
        "scram-sha-256",
        "auth_user: postgres\nauth_query_cache_ttl: 600\n\
         auth_query: SELECT * FROM public.aq_missing($1)",
        &db("app", "postgres", ""),
        &[superuser_line()],
    );
    refused(
        pooler.try_connect("aq_late", "latepw", "app"),
        &SqlState::PROTOCOL_VIOLATION,
        "server conn crashed?",
    );
    assert!(
        pooler.wait_for_log("auth_query failed: error response from auth_query", secs(5)),
        "{}",
        pooler.log()
    );
    pg().admin_sql(
        "CREATE FUNCTION public.aq_missing(p text) RETURNS TABLE(u name, p text)
           LANGUAGE sql AS $$ SELECT usename, passwd FROM pg_shadow WHERE usename = p $$",
    );
    let mut c = pooler.connect("aq_late", "latepw", "app");
    assert_eq!(current_user(&mut c), "aq_late");
}

#[test]
fn auth_user_s_refused_login_fails_the_lookup_and_is_not_cached() {
    create_role("aq_auth2", "real", false, "SUPERUSER");
    create_role("aq_late2", "latepw", false, "");
    // auth_file says "stale", PostgreSQL says "real"; server_login_retry 0 so the only
    // thing that could refuse the next login is a cached lookup.
    let pooler = start(
        "scram-sha-256",
        "auth_user: aq_auth2\nauth_query_cache_ttl: 600\nserver_login_retry: 0",
        &db("app", APP_DB, ""),
        &[userlist_entry("aq_auth2", "stale")],
    );
    refused(
        pooler.try_connect("aq_late2", "latepw", "app"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_auth2"),
    );
    pg().admin_sql("ALTER ROLE aq_auth2 PASSWORD 'stale'");
    let mut c = pooler.connect("aq_late2", "latepw", "app");
    assert_eq!(current_user(&mut c), "aq_late2");
}

#[test]
fn the_pgbouncer_ini_form_looks_users_up() {
    create_role("aq_md5_ini", "inipw", true, "");
    create_role("aq_scram_ini", "inipw", false, "");
    let mut setup = PoolerSetup::new();
    setup.config_file("pgbouncer.ini");
    setup.write_file("userlist.txt", &format!("{}\n", superuser_line()));
    let ini = format!(
        "[databases]
authdb = host=127.0.0.1 port={port} dbname=postgres
app = host=127.0.0.1 port={port} dbname={APP_DB} auth_user={SUPERUSER} auth_dbname=authdb

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = md5
auth_file = @DIR@/userlist.txt
auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1
auth_query_cache_ttl = 2
",
        port = pg().port()
    );
    let pooler = setup.start_with_args(&ini, &["--workers", "1"]);
    for user in ["aq_md5_ini", "aq_scram_ini"] {
        let mut c = pooler.connect(user, "inipw", "app");
        assert_eq!(current_user(&mut c), user);
        refused(
            pooler.try_connect(user, "wrong", "app"),
            &SqlState::INVALID_PASSWORD,
            &wrong_password(user),
        );
    }
}

#[test]
fn a_slow_lookup_blocks_nobody_and_ends_at_client_login_timeout() {
    let pooler = start(
        "scram-sha-256",
        "auth_user: postgres\nclient_login_timeout: 1\n\
         auth_query: SELECT $1::name, NULL::text FROM pg_sleep(4)",
        &db("app", "postgres", ""),
        &[superuser_line()],
    );
    let port = pooler.port();
    let slow = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let result = postgres::Config::new()
            .host(LOCALHOST)
            .port(port)
            .user("aq_slow")
            .password("pw")
            .dbname("app")
            .connect(postgres::NoTls);
        (started.elapsed(), result.err())
    });
    // While that lookup runs, a user of the auth file logs in and queries at once: the
    // worker's loop is not waiting for the lookup.
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let mut c = pooler.connect(SUPERUSER, SUPERUSER_PASSWORD, "app");
    assert_eq!(current_user(&mut c), SUPERUSER);
    assert!(started.elapsed() < secs(2), "{:?}", started.elapsed());
    let (took, err) = slow.join().expect("slow client");
    let err = err.expect("the slow lookup's login succeeded");
    assert_eq!(err.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{err:?}");
    assert_eq!(
        err.as_db_error().map(|d| d.message()),
        Some("client_login_timeout")
    );
    assert!(
        took < secs(4),
        "client_login_timeout did not bound the lookup: {took:?}"
    );
    // The server still running it is closed too, so the pool gets its place back.
    assert!(
        pooler.wait_for_log("auth_query took longer than client_login_timeout", secs(5)),
        "{}",
        pooler.log()
    );
}

#[test]
fn many_lookups_at_once_share_one_server_of_auth_user_s_pool() {
    create_role("aq_many", "manypw", false, "");
    // auth_user's pool has one server; nothing cached, so every login queues a lookup.
    let pooler = start(
        "scram-sha-256",
        "auth_user: postgres\nauth_query_cache_ttl: 0\n\
         users:\n  postgres: {pool_size: 1}",
        &db("app", APP_DB, ""),
        &[superuser_line(), admin_line()],
    );
    let port = pooler.port();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = postgres::Config::new()
                    .host(LOCALHOST)
                    .port(port)
                    .user("aq_many")
                    .password("manypw")
                    .dbname("app")
                    .connect_timeout(secs(10))
                    .connect(postgres::NoTls)
                    .expect("login through a queued lookup");
                scalar(&mut c, "SELECT current_user").expect("query")
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client thread"), "aq_many");
    }
    let pools = console_rows(&pooler, "SHOW POOLS");
    let auth_pool = pools
        .iter()
        .find(|r| r[0].as_deref() == Some("app") && r[1].as_deref() == Some(SUPERUSER))
        .unwrap_or_else(|| panic!("no auth pool in SHOW POOLS: {pools:?}"));
    // sv_active through sv_login: one server at most in all.
    let servers: u64 = auth_pool[6..13]
        .iter()
        .map(|v| v.as_deref().unwrap_or("0").parse::<u64>().unwrap_or(0))
        .sum();
    assert!(servers <= 1, "auth pool servers: {auth_pool:?}");
}

#[test]
fn a_reload_changes_who_is_looked_up_at_once() {
    create_role("aq_reload", "reloadpw", false, "");
    let ttl = "auth_query_cache_ttl: 600";
    let pooler = start(
        "scram-sha-256",
        &format!("auth_user: postgres\n{ttl}"),
        &db("app", APP_DB, ""),
        &[superuser_line(), admin_line()],
    );
    let reload = |yaml: String| {
        pooler.rewrite_config(&yaml);
        let mut admin = pooler.connect("aq_admin", "adminpw", "pgbouncer");
        admin.simple_query("RELOAD").expect("RELOAD");
    };
    drop(pooler.connect("aq_reload", "reloadpw", "app"));
    // No auth_user any more: the cached answer is not used, the user is unknown.
    reload(config("scram-sha-256", ttl, &db("app", APP_DB, "")));
    refused(
        pooler.try_connect("aq_reload", "reloadpw", "app"),
        &SqlState::INVALID_PASSWORD,
        &wrong_password("aq_reload"),
    );
    // The database's own auth_user brings the lookup back.
    reload(config(
        "scram-sha-256",
        ttl,
        &db("app", APP_DB, "auth_user: postgres"),
    ));
    let mut c = pooler.connect("aq_reload", "reloadpw", "app");
    assert_eq!(current_user(&mut c), "aq_reload");
}
