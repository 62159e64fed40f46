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

use std::io::Write;
use std::path::Path;

use common::drivers::{run_program, Driver};
use common::haproxy::HaProxy;
use common::pg::tail;
use common::pki::Pki;
use common::tls::{
    assert_printed, assert_refused, client_tls, hba_pooler, login_after, psql_tls,
    psql_tls_command, show_clients, ssl_request, tcp_connect, tls_over_for, TlsStream, ADMIN,
};
use common::wire;
use common::*;

/// Concurrent connections each driver program opens (besides its setup and
/// teardown connections); more than the 2 × 2 servers in transaction mode.
const DRIVER_CLIENTS: usize = 3;
/// What the pooler logs for a TLS 1.3 session: `tls=TLSv1.3/<suite>`.
const TLS13: &str = " tls=TLSv1.3/";

/// The settings for client TLS in `mode` with the shared PKI's server certificate.
fn client_tls_settings(mode: &str) -> String {
    let (cert, key) = Pki::shared().pair("server");
    client_tls(mode, &cert, &key)
}

// ---------------------------------------------------------------------------
// 1. The drivers with sslmode=verify-full
// ---------------------------------------------------------------------------

/// A transaction-mode pooler (2 workers, pool_size 2) with SCRAM client auth
/// (pass-through: the auth file holds the role's SCRAM secret) that requires
/// TLS from its clients.
fn driver_pooler() -> Pooler {
    let pg = shared_pg();
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
{tls}databases:
  {APP_DB}: {{host: 127.0.0.1, port: {port}, dbname: {APP_DB}, pool_size: 2}}
",
            tls = client_tls_settings("require"),
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
    let tls_ca = format!("--tls-ca={}", ca.display());
    run_program(driver, &pooler, "tls", DRIVER_CLIENTS, &[&tls_ca]);
    let log = pooler.log();
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

/// One `#[test]` per driver, each [`driver_over_tls`].
macro_rules! driver_tests {
    ($($name:ident: $driver:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                driver_over_tls(Driver::$driver);
            }
        )*
    };
}

driver_tests! {
    psycopg_verify_full_through_a_pooler_requiring_tls: Psycopg,
    asyncpg_verify_full_through_a_pooler_requiring_tls: Asyncpg,
    jdbc_verify_full_through_a_pooler_requiring_tls: Jdbc,
    node_postgres_verify_full_through_a_pooler_requiring_tls: Node,
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
    hba_pooler(
        &[(APP_USER, APP_PASSWORD), (TRUST_USER, "")],
        PROXY_HBA,
        &format!(
            "log_connections: true\nproxy_protocol: required\nproxy_trusted: [{PROXY_IP}/32]\n{}",
            client_tls_settings("require")
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

/// A raw session through `port`: SSLRequest, `S`, TLS verified against `ca`
/// for 127.0.0.1, then trust_user's login. Returns it at ReadyForQuery with
/// its TCP local port.
fn raw_tls_login(port: u16, ca: &Path) -> (TlsStream, u16) {
    let mut tcp = tcp_connect(port).unwrap();
    let local_port = tcp.local_addr().unwrap().port();
    ssl_request(&mut tcp, &[]).unwrap_or_else(|e| panic!("SSLRequest answer: {e}"));
    let mut s = tls_over_for(tcp, ca, &[], LOCALHOST)
        .unwrap_or_else(|e| panic!("TLS handshake through port {port}: {e}"));
    login_after(
        &mut s,
        &[],
        &[
            ("user", TRUST_USER),
            ("database", APP_DB),
            ("application_name", "raw_tls"),
        ],
    )
    .unwrap_or_else(|e| panic!("login refused: {e}"));
    (s, local_port)
}

#[test]
fn psql_verify_full_through_haproxy_send_proxy_v2_keeps_the_client_address_and_tls() {
    let ca = Pki::shared().path("ca.crt");
    let pooler = proxy_pooler();
    let hap = SendProxyV2::start(pooler.port());

    // psql through HAProxy: the hostssl 127.0.0.1 line matched, so the pooler
    // read the PROXY header and then the TLS session that followed it.
    let out = psql_tls(hap.port, APP_USER, APP_DB, "verify-full", &ca, "select 42");
    assert_printed(&out, "42", &pooler);
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
    let admin = psql_tls_command(
        hap.port,
        ADMIN,
        APP_PASSWORD,
        "pgbouncer",
        "verify-full",
        &ca,
    );
    let rows = show_clients(admin, &["addr", "tls"]);
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
    assert_refused(&out, "certificate verify failed", &pooler);
    // No TLS: after HAProxy's header the pooler answers the cleartext startup.
    let out = psql_tls(hap.port, APP_USER, APP_DB, "disable", &ca, "select 1");
    assert_refused(&out, "SSL required", &pooler);
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
    assert_printed(&out, "7", &pooler);
}
