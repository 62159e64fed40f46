//! TLS on both sides with real certificates: psql and pgbench with sslmode=verify-full through the pooler, a PostgreSQL that takes hostssl only, refusals, and certificates rotated on reload.

mod common;

use common::pki::Pki;
use common::tls::{
    assert_refused, client_tls, hba_pooler, login_after, login_over, psql_tls, psql_tls_command,
    select_one, tls_connect, tls_connect_after, tls_direct, ADMIN, SSL_REQUEST,
};
use common::tools::{run_cmd, userlist_entry, wait_until};
use common::wire;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// trust_user may log in with or without TLS; everyone else needs TLS and a password.
const HBA: &str = "\
host all trust_user 127.0.0.1/32 trust
hostssl all all 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 reject
";

/// Who is in the poolers' auth files besides [`ADMIN`].
const USERS: &[(&str, &str)] = &[(APP_USER, APP_PASSWORD), (TRUST_USER, "")];

/// A pooler with client TLS in `mode`, the server certificate `cert` and `key`,
/// [`HBA`] (unless `extra` names an auth_type) and the settings `extra`.
fn tls_pooler(mode: &str, cert: &Path, key: &Path, extra: &str) -> Pooler {
    hba_pooler(
        USERS,
        HBA,
        &format!("{}{extra}", client_tls(mode, cert, key)),
        &[],
    )
}

/// [`tls_pooler`] with the shared PKI's server certificate.
fn server_cert_pooler(mode: &str, extra: &str) -> Pooler {
    let (cert, key) = Pki::shared().pair("server");
    tls_pooler(mode, &cert, &key, extra)
}

/// The shared PKI's CA certificate.
fn ca() -> PathBuf {
    Pki::shared().path("ca.crt")
}

/// Settings for auth_type cert with client certificates verified against `ca`.
fn cert_auth(ca: &Path) -> String {
    format!("client_tls_ca_file: {}\nauth_type: cert", ca.display())
}

/// psql with sslmode verify-full against `ca`, the client certificate
/// `cert` and `key`, and no password.
fn psql_with_cert(
    port: u16,
    user: &str,
    ca: &Path,
    (cert, key): (&Path, &Path),
    sql: &str,
) -> CmdOutput {
    let mut cmd = psql_tls_command(port, user, "", APP_DB, "verify-full", ca);
    cmd.env("PGSSLCERT", cert)
        .env("PGSSLKEY", key)
        .args(["-c", sql]);
    run_cmd(cmd, None, secs(20))
}

/// libpq refuses a key file others can read.
fn owner_only(key: &Path) {
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[test]
fn psql_verify_full_through_the_pooler_and_hostssl_matches_tls_only() {
    let p = server_cert_pooler("prefer", "");
    let ca = ca();
    let out = psql_tls(p.port(), APP_USER, APP_DB, "verify-full", &ca, "select 42");
    assert_eq!(out.expect_success().trim(), "42", "{}", p.log());
    assert!(p.log().contains("tls=TLSv1.3/TLS_"), "{}", p.log());
    // The console shows the session's version and suite in the tls column.
    let out = psql_tls(
        p.port(),
        ADMIN,
        "pgbouncer",
        "verify-full",
        &ca,
        "SHOW CLIENTS",
    );
    let rows = out.expect_success().to_string();
    let tls: Vec<&str> = rows.lines().filter_map(|l| l.split('\t').nth(17)).collect();
    assert!(
        tls.iter()
            .any(|t| t.starts_with("TLSv1.3/TLS_AES_") || t.starts_with("TLSv1.3/TLS_CHACHA")),
        "{rows}"
    );
    // SCRAM-SHA-256-PLUS: libpq insists on channel binding and gets it.
    let mut cmd = psql_tls_command(p.port(), APP_USER, APP_PASSWORD, APP_DB, "verify-full", &ca);
    cmd.env("PGCHANNELBINDING", "require")
        .args(["-c", "select 'bound'"]);
    let out = run_cmd(cmd, None, secs(20));
    assert_eq!(out.expect_success().trim(), "bound", "{}", p.log());
    // Without TLS the hostssl line does not match, and the reject line does.
    let out = psql_tls(p.port(), APP_USER, APP_DB, "disable", &ca, "select 1");
    assert_refused(&out, "rejects connection", &p);
    // A CA that did not sign the pooler's certificate: libpq refuses the session.
    let other = Pki::shared().path("other.crt");
    let out = psql_tls(
        p.port(),
        APP_USER,
        APP_DB,
        "verify-full",
        &other,
        "select 1",
    );
    assert_refused(&out, "certificate verify failed", &p);
    // The pooler is unharmed.
    let out = psql_tls(p.port(), APP_USER, APP_DB, "verify-full", &ca, "select 7");
    assert_eq!(out.expect_success().trim(), "7");
}

#[test]
fn require_refuses_cleartext_pipelined_bytes_garbage_and_foreign_alpn() {
    let p = server_cert_pooler("require", "");
    let ca = ca();
    // A client that does not ask for TLS gets PgBouncer's answer.
    let out = psql_tls(p.port(), TRUST_USER, APP_DB, "disable", &ca, "select 1");
    assert_refused(&out, "SSL required", &p);
    // A startup packet sent along with the SSLRequest, before `S`: travelled in cleartext.
    let mut s = wire::connect(p.port());
    let mut bytes = SSL_REQUEST.to_vec();
    bytes.extend(wire::startup_packet(&[
        ("user", TRUST_USER),
        ("database", APP_DB),
    ]));
    s.write_all(&bytes).unwrap();
    let e = wire::read_error(&mut s);
    assert!(
        format!("{e:?}").contains("unencrypted data after SSL request"),
        "{e:?}"
    );
    // Garbage where the ClientHello belongs: the connection ends, nothing else happens.
    let mut s = wire::connect(p.port());
    s.write_all(&SSL_REQUEST).unwrap();
    assert_eq!(wire::read_byte(&mut s), Some(b'S'));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.len() < 64, "only an alert may come back: {rest:?}");
    // ALPN other than PostgreSQL's is refused, as PostgreSQL 17 does.
    let Err(e) = tls_connect(p.port(), &ca, &[b"h2"]) else {
        panic!("ALPN h2 must be refused");
    };
    assert!(
        e.contains("NoApplicationProtocol")
            || e.contains("no_application_protocol")
            || e.contains("ApplicationProtocol"),
        "{e}"
    );
    // A raw session offering `postgresql`, and one offering nothing, both work.
    for alpn in [&[b"postgresql".as_slice()][..], &[]] {
        let mut s = tls_connect(p.port(), &ca, alpn).unwrap();
        login_over(&mut s).unwrap();
        assert_eq!(select_one(&mut s), "1");
    }
    assert!(p.log().contains("TLS handshake failed"), "{}", p.log());
}

#[test]
fn pgbench_over_tls_with_a_login_per_transaction_has_no_failures() {
    let p = server_cert_pooler("require", "pool_mode: transaction");
    let script = p.write_file("select.sql", "select 1;\n");
    for connect_each in [false, true] {
        let mut cmd = common::tools::pgbench_command(p.port(), APP_USER, APP_PASSWORD);
        cmd.env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", ca())
            .args(["-n", "-c", "4", "-T", "3", "-f"])
            .arg(&script);
        if connect_each {
            cmd.arg("-C");
        }
        cmd.arg(APP_DB);
        let out = run_cmd(cmd, None, secs(60));
        let text = out.expect_success().to_string();
        let processed: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        assert!(processed > 50, "{text}");
        assert!(text.contains("number of failed transactions: 0 "), "{text}");
    }
}

#[test]
fn certificates_rotate_on_reload_while_a_session_keeps_working() {
    let pki = Pki::new();
    pki.ca("one");
    pki.ca("two");
    let (cert1, key1) = pki.leaf("one", "leaf1");
    let (cert2, key2) = pki.leaf("two", "leaf2");
    let (cert, key) = (pki.path("live.crt"), pki.path("live.key"));
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let p = tls_pooler("require", &cert, &key, "");
    let mut session = tls_connect(p.port(), &pki.path("one.crt"), &[]).unwrap();
    login_over(&mut session).unwrap();
    assert_eq!(select_one(&mut session), "1");

    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    p.reload();
    let rotated = wait_until(secs(10), || {
        tls_connect(p.port(), &pki.path("two.crt"), &[]).is_ok()
    });
    assert!(rotated, "{}", p.log());
    assert!(tls_connect(p.port(), &pki.path("one.crt"), &[]).is_err());
    // The session that began under the old certificate goes on.
    assert_eq!(select_one(&mut session), "1");

    // A certificate file that does not load refuses the reload; the running one stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    p.reload();
    assert!(p.wait_for_log("reload failed", secs(10)), "{}", p.log());
    let mut s = tls_connect(p.port(), &pki.path("two.crt"), &[]).unwrap();
    login_over(&mut s).unwrap();
    assert_eq!(select_one(&mut s), "1");
    assert_eq!(select_one(&mut session), "1");
}

/// PostgreSQL with TLS on and a role that may log in over hostssl only.
fn tls_postgres() -> &'static PgServer {
    static DONE: OnceLock<()> = OnceLock::new();
    let pg = shared_pg();
    DONE.get_or_init(|| {
        let (cert, key) = Pki::shared().pair("server");
        pg.admin_sql("CREATE ROLE tls_user LOGIN PASSWORD 'tlspw'");
        pg.admin_sql(&format!("GRANT ALL ON DATABASE {APP_DB} TO tls_user"));
        pg.enable_ssl(
            &cert,
            &key,
            "hostssl all tls_user 127.0.0.1/32 scram-sha-256\nhost all tls_user 127.0.0.1/32 reject",
        );
    });
    pg
}

fn server_tls_pooler(mode: &str, ca: &Path) -> Pooler {
    let pg = tls_postgres();
    let setup = PoolerSetup::new();
    // trust still wants the user listed, as in PgBouncer.
    setup.write_file(
        "userlist.txt",
        &format!(
            "{}\n{}\n",
            userlist_entry(ADMIN, ""),
            userlist_entry("anyone", "")
        ),
    );
    setup.start(&format!(
        "listen_addr: 127.0.0.1
listen_port: @PORT@
auth_type: trust
auth_file: @DIR@/userlist.txt
admin_users: [{ADMIN}]
server_tls_sslmode: {mode}
server_tls_ca_file: {ca}
databases:
  tlsdb: {{host: 127.0.0.1, port: {port}, dbname: {APP_DB}, user: tls_user, password: tlspw}}
",
        ca = ca.display(),
        port = pg.port(),
    ))
}

#[test]
fn server_tls_verify_full_reaches_a_hostssl_only_postgres() {
    let p = server_tls_pooler("verify-full", &ca());
    let mut c = p.connect("anyone", "", "tlsdb");
    let ssl = scalar(
        &mut c,
        "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .unwrap();
    assert_eq!(ssl, "true");
    let mut admin = p.connect(ADMIN, "", "pgbouncer");
    let tls: Vec<String> = query_rows(&mut admin, "SHOW SERVERS")
        .iter()
        .filter_map(|r| r.get("tls").map(str::to_string))
        .collect();
    assert!(tls.iter().any(|t| t.starts_with("TLSv1.3/")), "{tls:?}");
}

#[test]
fn server_tls_refuses_a_certificate_from_another_ca_and_cleartext() {
    let p = server_tls_pooler("verify-full", &Pki::shared().path("other.crt"));
    let e = p
        .try_connect("anyone", "", "tlsdb")
        .err()
        .expect("a certificate from an unknown CA must fail the login");
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // Without TLS, PostgreSQL's hostssl-only rule refuses the pooler's login.
    let p = server_tls_pooler("disable", &ca());
    let e = p
        .try_connect("anyone", "", "tlsdb")
        .err()
        .expect("cleartext must be refused by the hostssl-only role");
    assert!(format!("{e:?}").contains("tls_user"), "{e:?}");
}

/// `GET /metrics` from the pooler's endpoint: the value of one sample line.
fn metric(port: u16, line_start: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[test]
fn direct_tls_needs_postgresql_alpn_and_metrics_count_sessions_and_refusals() {
    let mport = common::tools::free_port();
    let p = server_cert_pooler("require", &format!("metrics_addr: 127.0.0.1:{mport}"));
    let ca = ca();
    // A ClientHello first, agreeing on `postgresql`: served.
    let mut s = tls_direct(p.port(), &ca, &[b"postgresql"]).unwrap();
    login_over(&mut s).unwrap();
    assert_eq!(select_one(&mut s), "1");
    // Direct TLS without ALPN: a TLS connection meant for something else. Refused.
    let mut s = tls_direct(p.port(), &ca, &[]).unwrap();
    let e = login_over(&mut s).unwrap_err();
    assert!(e.contains("without ALPN"), "{e}");
    // One refusal of cleartext, then the counters.
    let out = psql_tls(p.port(), TRUST_USER, APP_DB, "disable", &ca, "select 1");
    assert!(out.stderr.contains("SSL required"), "{out}");
    let counted = wait_until(secs(10), || {
        metric(mport, "pgbouncers_tls_handshakes_total ").is_some_and(|n| n >= 2)
            && metric(mport, "pgbouncers_tls_failures_total{reason=\"required\"} ") == Some(1)
            && metric(
                mport,
                "pgbouncers_tls_failures_total{reason=\"client_handshake\"} ",
            ) == Some(1)
    });
    assert!(counted, "{}", p.log());
}

#[test]
fn auth_type_cert_takes_the_user_from_a_verified_client_certificate() {
    let (app_cert, app_key) = Pki::shared().leaf_with_cn("ca", "app-client", APP_USER);
    owner_only(&app_key);
    let ca = ca();
    let p = server_cert_pooler("verify-full", &cert_auth(&ca));
    let app = (app_cert.as_path(), app_key.as_path());
    // The certificate's CN is the user: in, with no password asked.
    let out = psql_with_cert(p.port(), APP_USER, &ca, app, "select 5");
    assert_eq!(out.expect_success().trim(), "5");
    // The same certificate for another user: PostgreSQL's refusal.
    let out = psql_with_cert(p.port(), TRUST_USER, &ca, app, "select 1");
    assert_refused(
        &out,
        "certificate authentication failed for user \"trust_user\"",
        &p,
    );
    // No certificate at all: verify-full asks for one and the handshake fails.
    let out = psql_tls(p.port(), APP_USER, APP_DB, "verify-full", &ca, "select 1");
    assert!(!out.success(), "{out}");
    assert!(p.log().contains("TLS handshake failed"), "{}", p.log());
}

/// One TLV of a PROXY v2 header.
fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend((value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A PROXY v2 header from 10.1.2.3:40000 as a TLS-terminating HAProxy sends it with
/// `send-proxy-v2-ssl-cn`: the SSL TLV (client flags, verify result, version, CN,
/// cipher), a unique id and an AWS endpoint id.
fn proxy_v2_with_ssl(verify: u32, cn: &str) -> Vec<u8> {
    let mut ssl = vec![0x07]; // PP2_CLIENT_SSL | CERT_CONN | CERT_SESS
    ssl.extend(verify.to_be_bytes());
    ssl.extend(tlv(0x21, b"TLSv1.3"));
    ssl.extend(tlv(0x22, cn.as_bytes()));
    ssl.extend(tlv(0x23, b"TLS_AES_256_GCM_SHA384"));
    let mut body = vec![10, 1, 2, 3, 127, 0, 0, 1];
    body.extend(40000u16.to_be_bytes());
    body.extend(6432u16.to_be_bytes());
    body.extend(tlv(0x20, &ssl));
    body.extend(tlv(0x05, b"hap-1a2b-\x1b[0m"));
    body.extend(tlv(0xEA, b"\x01vpce-0abc123"));
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11]);
    h.extend((body.len() as u16).to_be_bytes());
    h.extend(body);
    h
}

fn proxy_tls_pooler(tls_trusted: bool) -> Pooler {
    hba_pooler(
        USERS,
        "host all admin 127.0.0.1/32 trust\n\
         host all trust_user 0.0.0.0/0 trust endpoint=aws:vpce-0abc123\n\
         hostssl all app 0.0.0.0/0 cert\n\
         host all all 0.0.0.0/0 reject\n",
        &format!(
            "proxy_protocol: optional
proxy_trusted: [127.0.0.1/32]
proxy_tls_trusted: {tls_trusted}"
        ),
        &[],
    )
}

/// Sends a PROXY header and a startup packet for `user`; the login's outcome.
fn login_behind_header(port: u16, header: &[u8], user: &str) -> Result<TcpStream, String> {
    let mut s = wire::connect(port);
    login_after(&mut s, header, &[("user", user), ("database", APP_DB)])?;
    Ok(s)
}

#[test]
fn tls_a_trusted_proxy_terminated_counts_with_proxy_tls_trusted() {
    let p = proxy_tls_pooler(true);
    // Verified certificate for app: hostssl matches, cert takes the TLV's CN.
    let mut s = login_behind_header(p.port(), &proxy_v2_with_ssl(0, APP_USER), APP_USER)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    assert_eq!(select_one(&mut s), "1");
    assert!(
        p.log().contains(
            "tls=TLSv1.3/TLS_AES_256_GCM_SHA384 proxy_id=hap-1a2b-?[0m endpoint=aws:vpce-0abc123"
        ),
        "{}",
        p.log()
    );
    // SHOW CLIENTS: the real address, the proxy's TLS, the unique id and the endpoint.
    let mut admin = p.connect(ADMIN, "", "pgbouncer");
    let rows = query_rows(&mut admin, "SHOW CLIENTS");
    let app = rows
        .iter()
        .find(|r| r.get("user") == Some(APP_USER))
        .expect("app's row");
    assert_eq!(app.get("addr"), Some("10.1.2.3"));
    assert_eq!(app.get("tls"), Some("TLSv1.3/TLS_AES_256_GCM_SHA384"));
    assert_eq!(app.get("proxy_id"), Some("hap-1a2b-?[0m"));
    assert_eq!(app.get("endpoint"), Some("aws:vpce-0abc123"));
    // The proxy says the certificate did not verify: no login by its CN.
    let e = login_behind_header(p.port(), &proxy_v2_with_ssl(1, APP_USER), APP_USER).unwrap_err();
    assert!(e.contains("certificate authentication failed"), "{e}");
    // hba's endpoint= option: trust_user only through that AWS endpoint.
    let mut s = login_behind_header(p.port(), &proxy_v2_with_ssl(0, "x"), TRUST_USER)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(select_one(&mut s), "1");
    let mut plain = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    plain.extend([10, 1, 2, 3, 127, 0, 0, 1, 0x9c, 0x40, 0x19, 0x20]);
    let e = login_behind_header(p.port(), &plain, TRUST_USER).unwrap_err();
    assert!(e.contains("rejects connection"), "{e}");
    // A CN for someone else does not log in as app.
    let e = login_behind_header(p.port(), &proxy_v2_with_ssl(0, "mallory"), APP_USER).unwrap_err();
    assert!(e.contains("certificate authentication failed"), "{e}");
}

#[test]
fn tls_a_proxy_terminated_does_not_count_without_proxy_tls_trusted() {
    let p = proxy_tls_pooler(false);
    let e = login_behind_header(p.port(), &proxy_v2_with_ssl(0, APP_USER), APP_USER).unwrap_err();
    assert!(e.contains("rejects connection"), "{e}");
    assert!(!p.log().contains("tls=TLS"), "{}", p.log());
}

#[test]
fn expired_certificates_are_refused_on_both_sides() {
    let pki = Pki::shared();
    let ca = ca();
    let (old_cert, old_key) = pki.leaf_days("ca", "expired", "localhost", "0");
    let (old_app, old_app_key) = pki.leaf_days("ca", "expired-app", APP_USER, "0");
    owner_only(&old_app_key);
    // Valid for the second they were made in.
    std::thread::sleep(secs(2));
    // Expiry is the certificate's only defect, as openssl itself says.
    let mut check = Command::new("openssl");
    check.arg("verify").arg("-CAfile").arg(&ca).arg(&old_cert);
    let out = run_cmd(check, None, secs(10));
    assert!(
        out.stdout.contains("certificate has expired")
            || out.stderr.contains("certificate has expired"),
        "{out}"
    );
    // The pooler's own certificate expired: libpq's verify-full refuses it (libpq says
    // only "certificate verify failed").
    let p = tls_pooler("require", &old_cert, &old_key, "");
    let out = psql_tls(p.port(), APP_USER, APP_DB, "verify-full", &ca, "select 1");
    assert_refused(&out, "certificate verify failed", &p);
    // A client certificate that expired: rustls refuses it during the handshake.
    let p = server_cert_pooler("verify-full", &cert_auth(&ca));
    let old = (old_app.as_path(), old_app_key.as_path());
    let out = psql_with_cert(p.port(), APP_USER, &ca, old, "select 1");
    assert!(!out.success(), "{out}");
    assert!(
        p.wait_for_log("TLS handshake failed", secs(5)) && p.log().contains("certificate expired"),
        "{}",
        p.log()
    );
}

#[test]
fn tls_follows_a_proxy_header_with_proxy_protocol_optional_and_required() {
    let ca = ca();
    // PROXY v1, then SSLRequest, then TLS: the order HAProxy sends. The source port
    // 40001 is the header's, not the socket's.
    let header = b"PROXY TCP4 127.0.0.1 127.0.0.1 40001 6432\r\n";
    for mode in ["optional", "required"] {
        let p = server_cert_pooler(
            "require",
            &format!("proxy_protocol: {mode}\nproxy_trusted: [127.0.0.1/32]"),
        );
        let mut s = tls_connect_after(p.port(), header, &ca, &[]).unwrap();
        login_over(&mut s).unwrap();
        assert_eq!(select_one(&mut s), "1");
        assert!(
            p.log().contains("@127.0.0.1:40001") && p.log().contains("tls=TLSv1.3/"),
            "{mode}: {}",
            p.log()
        );
        // With optional, a trusted peer may also come without a header.
        let direct = tls_connect(p.port(), &ca, &[]);
        assert_eq!(direct.is_ok(), mode == "optional", "{mode}");
    }
}
