//! TLS with real clients: psycopg, asyncpg, pgJDBC and node-postgres with sslmode=verify-full through a pooler that requires TLS, and psql through HAProxy's send-proxy-v2 (PROXY header, then SSLRequest, then TLS).
//!
//! The certificates come from a throwaway CA ([`common::pki::Pki`]); the
//! pooler's certificate is for DNS:localhost and IP:127.0.0.1 and every
//! client connects to 127.0.0.1 and verifies chain and host name. That the
//! sessions really were TLS is checked on the pooler's side: its
//! `login attempt: … tls=TLSv1.3/…` log lines and the `tls` column of
//! SHOW CLIENTS. The drivers are installed by `scripts/test.sh`
//! (`need_client_drivers`), HAProxy by `need_test_pkgs`; a missing one fails
//! the test with a message saying so, never skips it.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::drivers::{clients_dir, Driver};
use common::haproxy::HaProxy;
use common::pg::tail;
use common::pki::Pki;
use common::tools::{clean_pg_env, psql_command, run_cmd, userlist_entry};
use common::wire::{self, Message};
use common::*;

/// Concurrent connections each driver program opens (besides its setup and
/// teardown connections); more than the 2 × 2 servers in transaction mode.
const DRIVER_CLIENTS: usize = 3;
/// Upper bound for one driver program run.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);
/// What the pooler logs for a TLS 1.3 session: `tls=TLSv1.3/<suite>`.
const TLS13: &str = " tls=TLSv1.3/";

fn certificate() -> (String, String) {
    let pki = Pki::shared();
    (
        pki.path("server.crt").display().to_string(),
        pki.path("server.key").display().to_string(),
    )
}

// ---------------------------------------------------------------------------
// 1. The drivers with sslmode=verify-full
// ---------------------------------------------------------------------------

/// A transaction-mode pooler (2 workers, pool_size 2) with SCRAM client auth
/// (pass-through: the auth file holds the role's SCRAM secret) that requires
/// TLS from its clients.
fn driver_pooler() -> Pooler {
    let pg = shared_pg();
    let (cert, key) = certificate();
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", pg.userlist_line(APP_USER)));
    setup.start_with_args(
        &format!(
            "listen_addr: 127.0.0.1
listen_port: @PORT@
auth_type: scram-sha-256
auth_file: @DIR@/userlist.txt
pool_mode: transaction
query_wait_timeout: 60
log_connections: true
client_tls_sslmode: require
client_tls_cert_file: {cert}
client_tls_key_file: {key}
databases:
  {APP_DB}: {{host: 127.0.0.1, port: {port}, dbname: {APP_DB}, pool_size: 2}}
",
            port = pg.port()
        ),
        &["--workers", "2"],
    )
}

/// Runs `driver`'s program with `--tls-ca=<the test CA>` against a pooler
/// that requires TLS; it must end with `OK <driver>`, and every login the
/// pooler saw must have been a TLS 1.3 session.
fn driver_over_tls(driver: Driver) {
    let pooler = driver_pooler();
    let ca = Pki::shared().path("ca.crt");
    let mut cmd = driver.command();
    clean_pg_env(&mut cmd);
    cmd.arg(LOCALHOST)
        .arg(pooler.port().to_string())
        .args([APP_USER, APP_PASSWORD, APP_DB, "tls"])
        .arg(DRIVER_CLIENTS.to_string())
        .arg(format!("--tls-ca={}", ca.display()))
        .current_dir(clients_dir());
    let out = run_cmd(cmd, None, PROGRAM_TIMEOUT);
    let ok_line = format!("OK {}", driver.name());
    let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    assert!(
        out.success() && last == Some(ok_line.as_str()),
        "{} over TLS failed (want exit 0 and `{ok_line}` last):\n{out}\n--- pooler log (tail) ---\n{}",
        driver.name(),
        tail(&pooler.log(), 60)
    );
    let log = pooler.log();
    assert!(!log.contains("panicked"), "{}", tail(&log, 60));
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("login attempt: db={APP_DB} user={APP_USER}")))
        .collect();
    // The concurrent clients plus at least the program's setup and teardown.
    assert!(
        logins.len() >= DRIVER_CLIENTS + 2,
        "{} logins logged, want at least {}\n{}",
        logins.len(),
        DRIVER_CLIENTS + 2,
        tail(&log, 60)
    );
    let cleartext: Vec<&&str> = logins.iter().filter(|l| !l.contains(TLS13)).collect();
    assert!(
        cleartext.is_empty(),
        "{} logins without `{TLS13}`: {cleartext:?}",
        driver.name()
    );
}

#[test]
fn psycopg_verify_full_through_a_pooler_requiring_tls() {
    driver_over_tls(Driver::Psycopg);
}

#[test]
fn asyncpg_verify_full_through_a_pooler_requiring_tls() {
    driver_over_tls(Driver::Asyncpg);
}

#[test]
fn jdbc_verify_full_through_a_pooler_requiring_tls() {
    driver_over_tls(Driver::Jdbc);
}

#[test]
fn node_postgres_verify_full_through_a_pooler_requiring_tls() {
    driver_over_tls(Driver::Node);
}

// ---------------------------------------------------------------------------
// 2. HAProxy (send-proxy-v2) in front: PROXY header, SSLRequest, TLS
// ---------------------------------------------------------------------------

/// HAProxy connects to the pooler from this address, the only trusted proxy:
/// the clients themselves are on 127.0.0.1, so an address in SHOW CLIENTS
/// tells which one the pooler believed.
const PROXY_IP: &str = "127.0.0.2";

/// Password logins need TLS and must come from 127.0.0.1, the address in the
/// PROXY header (HAProxy itself is on 127.0.0.2); trust_user (for the raw
/// sessions) needs TLS too.
const PROXY_HBA: &str = "\
hostssl all trust_user 127.0.0.1/32 trust
hostssl all all 127.0.0.1/32 scram-sha-256
host all all 0.0.0.0/0 reject
";

/// A pooler that requires both a PROXY header from 127.0.0.2 and TLS.
fn proxy_pooler() -> Pooler {
    let (cert, key) = certificate();
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &format!(
            "{}\n{}\n{}\n",
            userlist_entry(APP_USER, APP_PASSWORD),
            userlist_entry(TRUST_USER, ""),
            userlist_entry("admin", APP_PASSWORD)
        ),
    );
    setup.write_file("hba.conf", PROXY_HBA);
    setup.start_with_args(
        &format!(
            "listen_addr: 127.0.0.1
listen_port: @PORT@
auth_type: hba
auth_file: @DIR@/userlist.txt
auth_hba_file: @DIR@/hba.conf
admin_users: [admin]
log_connections: true
proxy_protocol: required
proxy_trusted: [{PROXY_IP}/32]
client_tls_sslmode: require
client_tls_cert_file: {cert}
client_tls_key_file: {key}
databases:
  {APP_DB}: {{host: 127.0.0.1, port: {port}}}
",
            port = shared_pg().port()
        ),
        &["--workers", "1"],
    )
}

/// HAProxy with one TCP listener, `port`, that forwards to the pooler with
/// `send-proxy-v2` from 127.0.0.2. HAProxy is killed when this is dropped.
struct SendProxyV2 {
    port: u16,
    _hap: HaProxy,
}

impl SendProxyV2 {
    fn start(backend_port: u16) -> SendProxyV2 {
        let port = free_port();
        let hap = HaProxy::start(
            &format!(
                "listen pp_v2\n    bind 127.0.0.1:{port}\n    \
                 server s1 127.0.0.1:{backend_port} send-proxy-v2 source {PROXY_IP}\n"
            ),
            &[port],
        );
        SendProxyV2 { port, _hap: hap }
    }
}

/// psql to 127.0.0.1:`port` with this sslmode and root certificate.
fn psql_tls(port: u16, user: &str, db: &str, sslmode: &str, root: &Path, sql: &str) -> CmdOutput {
    let mut cmd = psql_command(port, user, APP_PASSWORD, db);
    cmd.env("PGSSLMODE", sslmode)
        .env("PGSSLROOTCERT", root)
        .env("PGGSSENCMODE", "disable")
        .args(["-c", sql]);
    run_cmd(cmd, None, secs(20))
}

/// SHOW CLIENTS through psql as rows of (column name → value).
fn show_clients(port: u16, ca: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut cmd = psql_command(port, "admin", APP_PASSWORD, "pgbouncer");
    cmd.env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", ca)
        .env("PGGSSENCMODE", "disable")
        // A header line (psql_command asks for tuples only), no footer.
        .args(["-P", "tuples_only=off", "-P", "footer=off"])
        .args(["-c", "SHOW CLIENTS"]);
    let out = run_cmd(cmd, None, secs(20));
    let text = out.expect_success();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    assert!(header.contains(&"addr") && header.contains(&"tls"), "{out}");
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split('\t'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A raw session through `port`: SSLRequest, `S`, TLS verified against `ca`
/// for 127.0.0.1, then trust_user's login. Returns it at ReadyForQuery with
/// its TCP local port.
fn raw_tls_login(
    port: u16,
    ca: &Path,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    u16,
) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local_port = tcp.local_addr().unwrap().port();
    tcp.set_read_timeout(Some(secs(10))).unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    assert_eq!(wire::read_byte(&mut tcp), Some(b'S'), "SSLRequest answer");
    let mut roots = rustls::RootCertStore::empty();
    let pem = fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(LOCALHOST).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .unwrap_or_else(|e| panic!("TLS handshake through port {port}: {e}"));
    }
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&wire::startup_packet(&[
        ("user", TRUST_USER),
        ("database", APP_DB),
        ("application_name", "raw_tls"),
    ]))
    .unwrap();
    loop {
        match wire::read_message(&mut s).unwrap() {
            Some(Message { tag: b'Z', .. }) => return (s, local_port),
            Some(Message { tag: b'E', body }) => {
                panic!("login refused: {:?}", wire::error_fields(&body))
            }
            Some(_) => {}
            None => panic!("closed during login"),
        }
    }
}

#[test]
fn psql_verify_full_through_haproxy_send_proxy_v2_keeps_the_client_address_and_tls() {
    let ca = Pki::shared().path("ca.crt");
    let pooler = proxy_pooler();
    let hap = SendProxyV2::start(pooler.port());

    // psql through HAProxy: the hostssl 127.0.0.1 line matched, so the pooler
    // read the PROXY header and then the TLS session that followed it.
    let out = psql_tls(hap.port, APP_USER, APP_DB, "verify-full", &ca, "select 42");
    assert_eq!(
        out.stdout.trim(),
        "42",
        "{out}\n--- pooler log (tail) ---\n{}",
        tail(&pooler.log(), 40)
    );
    let log = pooler.log();
    let login = log.lines().find(|l| {
        l.contains(&format!("{APP_DB}/{APP_USER}@127.0.0.1:"))
            && l.contains(&format!(
                "login attempt: db={APP_DB} user={APP_USER} via={PROXY_IP}:"
            ))
    });
    assert!(
        login.is_some_and(|l| l.contains(TLS13)),
        "no TLS login from 127.0.0.1 via {PROXY_IP}:\n{}",
        tail(&log, 40)
    );

    // A raw session through HAProxy, whose client port we know, stays open
    // while psql (through HAProxy as well) looks at SHOW CLIENTS.
    let (mut raw, raw_port) = raw_tls_login(hap.port, &ca);
    let rows = show_clients(hap.port, &ca);
    let raw_row = rows
        .iter()
        .find(|r| r["application_name"] == "raw_tls")
        .unwrap_or_else(|| panic!("the raw session is not in SHOW CLIENTS: {rows:?}"));
    assert_eq!(raw_row["addr"], LOCALHOST, "{raw_row:?}");
    assert_eq!(
        raw_row["port"],
        raw_port.to_string(),
        "SHOW CLIENTS should show the client's own port from the PROXY header, not HAProxy's: {raw_row:?}"
    );
    assert!(raw_row["tls"].starts_with("TLSv1.3/"), "{raw_row:?}");
    // psql's own console session came the same way.
    let console = rows
        .iter()
        .find(|r| r["database"] == "pgbouncer")
        .unwrap_or_else(|| panic!("no console session in SHOW CLIENTS: {rows:?}"));
    assert_eq!(console["addr"], LOCALHOST, "{console:?}");
    assert!(console["tls"].starts_with("TLSv1.3/"), "{console:?}");
    assert!(
        rows.iter()
            .all(|r| r["addr"] != PROXY_IP && !r["tls"].is_empty()),
        "{rows:?}"
    );
    // The raw session still works after all that.
    raw.write_all(&wire::query("select 6 * 7")).unwrap();
    let a = wire::read_answer(&mut raw);
    assert!(a.ready && a.error.is_none(), "{a:?}");
    assert_eq!(a.values, ["42"]);
}

#[test]
fn through_haproxy_a_wrong_ca_and_cleartext_are_refused() {
    let pki = Pki::shared();
    let ca = pki.path("ca.crt");
    let pooler = proxy_pooler();
    let hap = SendProxyV2::start(pooler.port());
    // A CA that did not sign the pooler's certificate: libpq refuses it.
    let out = psql_tls(
        hap.port,
        APP_USER,
        APP_DB,
        "verify-full",
        &pki.path("other.crt"),
        "select 1",
    );
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("certificate verify failed"), "{out}");
    // No TLS: after HAProxy's header the pooler answers the cleartext startup.
    let out = psql_tls(hap.port, APP_USER, APP_DB, "disable", &ca, "select 1");
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("SSL required"), "{out}");
    // Around HAProxy there is no PROXY header: refused even with good TLS settings.
    let out = psql_tls(
        pooler.port(),
        APP_USER,
        APP_DB,
        "verify-full",
        &ca,
        "select 1",
    );
    assert!(!out.success(), "{out}");
    // The right CA through HAProxy still works.
    let out = psql_tls(hap.port, APP_USER, APP_DB, "verify-full", &ca, "select 7");
    assert_eq!(
        out.stdout.trim(),
        "7",
        "{out}\n--- pooler log (tail) ---\n{}",
        tail(&pooler.log(), 40)
    );
}
