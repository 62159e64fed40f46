//! TLS that ends at the load balancer: HAProxy terminates psql's TLS (verifying client certificates) and sends PROXY v2 with the SSL TLV; with proxy_tls_trusted the pooler counts that TLS, and the certificate's CN, as the client's.
//!
//! HAProxy's `bind … ssl` expects a TLS ClientHello at once, while the
//! installed libpq (before PostgreSQL 17's `sslnegotiation=direct`) first
//! sends an SSLRequest in cleartext. [`SslRequestShim`] stands in for a
//! direct-TLS client: it answers psql's SSLRequest with `S` and then relays
//! bytes untouched, so the TLS session (and the client certificate check)
//! is between psql and HAProxy. The pooler itself has no TLS settings at
//! all: whatever TLS it reports came from the PROXY header.
//!
//! HAProxy, psql and openssl are installed by `scripts/test.sh`
//! (`need_test_pkgs`); a missing one fails the test with a message saying
//! so, never skips it.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use common::haproxy::HaProxy;
use common::pg::tail;
use common::pki::Pki;
use common::tls::{assert_refused, hba_pooler, psql_tls_command, show_clients, ADMIN, SSL_REQUEST};
use common::tools::{run_cmd, wait_until};
use common::*;

/// HAProxy connects to the pooler from this address, the only trusted proxy.
const PROXY_IP: &str = "127.0.0.2";
/// HAProxy's unique id for a connection: this, `-`, the client address.
const UNIQUE_ID_PREFIX: &str = "hap";

/// app logs in by certificate, everyone else by password, and both only
/// with TLS; anything else is refused.
const HBA: &str = "\
hostssl all app 0.0.0.0/0 cert
hostssl all all 0.0.0.0/0 scram-sha-256
host all all 0.0.0.0/0 reject
";

/// The certificates HAProxy and psql use, made once per test binary.
struct Certs {
    ca: PathBuf,
    /// HAProxy's `crt`: the server certificate followed by its key.
    combined: PathBuf,
    /// A client certificate with CN `app`, signed by `ca`.
    app: (PathBuf, PathBuf),
    /// A client certificate with CN `localhost`, signed by `ca`.
    localhost: (PathBuf, PathBuf),
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let pki = Pki::shared();
        let app = pki.leaf_with_cn("ca", "app_client", APP_USER);
        let mut pem = std::fs::read_to_string(pki.path("server.crt")).expect("server.crt");
        pem.push_str(&std::fs::read_to_string(pki.path("server.key")).expect("server.key"));
        let combined = pki.path("combined.pem");
        std::fs::write(&combined, pem).expect("write combined.pem");
        Certs {
            ca: pki.path("ca.crt"),
            combined,
            app,
            localhost: (pki.path("server.crt"), pki.path("server.key")),
        }
    })
}

/// A pooler behind HAProxy (PROXY header required from 127.0.0.2) with
/// [`HBA`] and no TLS of its own.
fn pooler(tls_trusted: bool) -> Pooler {
    hba_pooler(
        &[(APP_USER, APP_PASSWORD), (MD5_USER, MD5_PASSWORD)],
        HBA,
        &format!(
            "log_connections: true
proxy_protocol: required
proxy_trusted: [{PROXY_IP}/32]
proxy_tls_trusted: {tls_trusted}"
        ),
        &["--workers", "1"],
    )
}

// ---------------------------------------------------------------------------
// HAProxy and the SSLRequest shim
// ---------------------------------------------------------------------------

/// Answers a client's SSLRequest with `S` itself, then relays every byte
/// between the client and `127.0.0.1:upstream` (HAProxy's TLS port).
/// Stops accepting when dropped.
struct SslRequestShim {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SslRequestShim {
    fn start(upstream: u16) -> SslRequestShim {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the shim");
        let port = listener.local_addr().expect("shim address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(client) = conn {
                    thread::spawn(move || relay(client, upstream));
                }
            }
        });
        SslRequestShim { port, stop }
    }
}

impl Drop for SslRequestShim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One client of the shim: its first 8 bytes, if an SSLRequest, are answered
/// with `S` and not passed on; then both directions are copied until EOF.
fn relay(mut client: TcpStream, upstream: u16) {
    let _ = client.set_read_timeout(Some(secs(10)));
    let mut first = [0u8; 8];
    if client.read_exact(&mut first).is_err() {
        return;
    }
    let _ = client.set_read_timeout(None);
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let sent = if first == SSL_REQUEST {
        client.write_all(b"S")
    } else {
        server.write_all(&first)
    };
    if sent.is_err() {
        return;
    }
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// HAProxy in front of a pooler: `tls_in` terminates TLS (verifying a client
/// certificate if one is presented) and sends PROXY v2 with the SSL TLV, the
/// CN, the cipher and a unique id; `plain_in` is plain TCP with PROXY v2.
/// psql reaches `tls_in` through [`SslRequestShim`] on `tls_port`.
struct TlsProxy {
    tls_port: u16,
    plain_port: u16,
    _shim: SslRequestShim,
    hap: HaProxy,
}

impl TlsProxy {
    fn start(backend: u16) -> TlsProxy {
        let certs = certs();
        let (hap_tls_port, plain_port) = (free_port(), free_port());
        let hap = HaProxy::start(
            &format!(
                "listen tls_in
    bind 127.0.0.1:{hap_tls_port} ssl crt {combined} ca-file {ca} verify optional
    unique-id-format {UNIQUE_ID_PREFIX}-%ci
    server s1 127.0.0.1:{backend} send-proxy-v2 send-proxy-v2-ssl send-proxy-v2-ssl-cn \
proxy-v2-options ssl-cipher,unique-id source {PROXY_IP}
listen plain_in
    bind 127.0.0.1:{plain_port}
    server s1 127.0.0.1:{backend} send-proxy-v2 source {PROXY_IP}
",
                combined = certs.combined.display(),
                ca = certs.ca.display(),
            ),
            &[hap_tls_port, plain_port],
        );
        let shim = SslRequestShim::start(hap_tls_port);
        TlsProxy {
            tls_port: shim.port,
            plain_port,
            _shim: shim,
            hap,
        }
    }
}

// ---------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------

/// psql to 127.0.0.1:`port` with sslmode verify-full against the test CA,
/// the client certificate `cert` (or none) and `password` (or none): no
/// password file, no certificate from the home directory.
fn psql(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    cert: Option<&(PathBuf, PathBuf)>,
) -> Command {
    let certs = certs();
    let dir = certs.ca.parent().expect("pki dir");
    let (crt, key) = match cert {
        Some((crt, key)) => (crt.clone(), key.clone()),
        None => (dir.join("none.crt"), dir.join("none.key")),
    };
    let mut cmd = psql_tls_command(port, user, password, db, "verify-full", &certs.ca);
    cmd.env("PGSSLCERT", crt)
        .env("PGSSLKEY", key)
        .env("PGPASSFILE", dir.join("no.pgpass"));
    cmd
}

/// Runs `cmd` (a [`psql`]) with `-c sql`.
fn run(mut cmd: Command, sql: &str) -> CmdOutput {
    cmd.args(["-c", sql]);
    run_cmd(cmd, None, secs(20))
}

/// A pooler (see [`pooler`]) and HAProxy in front of it.
struct Setup {
    proxy: TlsProxy,
    pooler: Pooler,
}

impl Setup {
    fn start(tls_trusted: bool) -> Setup {
        let pooler = pooler(tls_trusted);
        let proxy = TlsProxy::start(pooler.port());
        Setup { proxy, pooler }
    }

    /// psql as `user` on the app database through HAProxy's TLS listener.
    fn psql(&self, user: &str, password: &str, cert: Option<&(PathBuf, PathBuf)>) -> Command {
        psql(self.proxy.tls_port, user, password, APP_DB, cert)
    }

    /// Runs `sql` through [`Setup::psql`].
    fn run(
        &self,
        user: &str,
        password: &str,
        cert: Option<&(PathBuf, PathBuf)>,
        sql: &str,
    ) -> CmdOutput {
        run(self.psql(user, password, cert), sql)
    }

    /// Asserts psql printed `want`; the message carries both logs.
    fn assert_printed(&self, out: &CmdOutput, want: &str) {
        assert_eq!(
            out.stdout.trim(),
            want,
            "{out}\n--- pooler log (tail) ---\n{}\n--- haproxy log ---\n{}",
            tail(&self.pooler.log(), 40),
            self.proxy.hap.log()
        );
    }

    /// The pooler's `tls=` for `user`'s login, which must be TLS 1.3.
    fn login_tls13(&self, user: &str) -> String {
        let log = self.pooler.log();
        let tls = login_tls(&log, user)
            .unwrap_or_else(|| panic!("no login line with tls= for {user}:\n{}", tail(&log, 40)));
        expect_tls13(&tls, "the login line");
        tls
    }

    /// SHOW CLIENTS through HAProxy's TLS listener as rows of (column name → value).
    fn show_clients(&self) -> Vec<HashMap<String, String>> {
        show_clients(
            psql(self.proxy.tls_port, ADMIN, APP_PASSWORD, "pgbouncer", None),
            &["user", "database", "addr", "tls", "proxy_id", "endpoint"],
        )
    }
}

/// A psql session left running in the background; killed (by pid) when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `tls=` value of the pooler's `login attempt` line for `user` through
/// the proxy, if there is one.
fn login_tls(log: &str, user: &str) -> Option<String> {
    let line = log.lines().find(|l| {
        l.contains(&format!(
            "login attempt: db={APP_DB} user={user} via={PROXY_IP}:"
        ))
    })?;
    let tls = line.split(" tls=").nth(1)?;
    Some(tls.split(' ').next().unwrap_or_default().to_string())
}

/// The pooler's refusal of `user` by the `host … reject` line: a client at
/// 127.0.0.1 (the PROXY header's address, not HAProxy's) without TLS, or
/// whose TLS did not count.
fn rejected(user: &str) -> String {
    format!(
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{user}\", \
         database \"{APP_DB}\", no encryption"
    )
}

fn expect_tls13(tls: &str, what: &str) {
    assert!(
        tls.starts_with("TLSv1.3/TLS_") && tls.len() > "TLSv1.3/TLS_".len(),
        "{what}: want TLSv1.3/<suite>, got {tls:?}"
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn with_proxy_tls_trusted_a_client_certificate_haproxy_verified_logs_in_by_its_cn() {
    let certs = certs();
    let t = Setup::start(true);

    // No password anywhere: the hba cert line takes the user from the CN
    // HAProxy put in the TLV.
    let out = t.run(APP_USER, "", Some(&certs.app), "select current_user");
    t.assert_printed(&out, APP_USER);
    let tls = t.login_tls13(APP_USER);
    let log = t.pooler.log();
    assert!(
        log.contains(&format!(" proxy_id={UNIQUE_ID_PREFIX}-127.0.0.1 ")),
        "the login line lacks HAProxy's unique id:\n{}",
        tail(&log, 40)
    );

    // The same login held open while the console (a password login, through
    // HAProxy too) looks at SHOW CLIENTS.
    let mut cmd = t.psql(APP_USER, "", Some(&certs.app));
    cmd.args(["-c", "select pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _held = Background(cmd.spawn().expect("start psql"));
    let mut rows = Vec::new();
    let found = wait_until(secs(15), || {
        rows = t.show_clients();
        rows.iter()
            .any(|r| r["user"] == APP_USER && r["database"] == APP_DB)
    });
    assert!(found, "app's held session is not in SHOW CLIENTS: {rows:?}");
    let app = rows
        .iter()
        .find(|r| r["user"] == APP_USER && r["database"] == APP_DB)
        .unwrap();
    assert_eq!(app["addr"], LOCALHOST, "the real client address: {app:?}");
    expect_tls13(&app["tls"], "SHOW CLIENTS tls for app");
    assert_eq!(
        app["tls"], tls,
        "SHOW CLIENTS and the log disagree: {app:?}"
    );
    assert_eq!(
        app["proxy_id"],
        format!("{UNIQUE_ID_PREFIX}-127.0.0.1"),
        "{app:?}"
    );
    assert_eq!(app["endpoint"], "", "{app:?}");
    let console = rows
        .iter()
        .find(|r| r["user"] == ADMIN && r["database"] == "pgbouncer")
        .unwrap_or_else(|| panic!("no console session in SHOW CLIENTS: {rows:?}"));
    assert_eq!(console["addr"], LOCALHOST, "{console:?}");
    expect_tls13(&console["tls"], "SHOW CLIENTS tls for the console");
    assert!(
        rows.iter().all(|r| r["addr"] != PROXY_IP),
        "HAProxy's own address in SHOW CLIENTS: {rows:?}"
    );
}

#[test]
fn with_proxy_tls_trusted_app_needs_a_certificate_with_its_own_cn() {
    let certs = certs();
    let t = Setup::start(true);
    // TLS but no client certificate: the TLV has no verified CN, and a
    // password does not help on a cert line.
    let out = t.run(APP_USER, APP_PASSWORD, None, "select 1");
    assert_refused(&out, "certificate authentication failed", &t.pooler);
    // A certificate HAProxy verified, but its CN is `localhost`, not app.
    let out = t.run(APP_USER, APP_PASSWORD, Some(&certs.localhost), "select 1");
    assert_refused(&out, "certificate authentication failed", &t.pooler);
    // The right certificate still logs in (so the refusals above were about the certificate).
    let out = t.run(APP_USER, "", Some(&certs.app), "select 7");
    t.assert_printed(&out, "7");
}

#[test]
fn with_proxy_tls_trusted_a_password_login_over_haproxy_tls_matches_hostssl() {
    let t = Setup::start(true);
    let out = t.run(MD5_USER, MD5_PASSWORD, None, "select current_user");
    t.assert_printed(&out, MD5_USER);
    t.login_tls13(MD5_USER);
    // The wrong password is still refused.
    let out = t.run(MD5_USER, "wrong", None, "select 1");
    assert_refused(&out, "password authentication failed", &t.pooler);
    // The same login through HAProxy's plain TCP listener: a PROXY header
    // without the SSL TLV is no TLS, so only the reject line matches.
    let mut cmd = psql(t.proxy.plain_port, MD5_USER, MD5_PASSWORD, APP_DB, None);
    cmd.env("PGSSLMODE", "disable");
    let out = run(cmd, "select 1");
    assert_refused(&out, &rejected(MD5_USER), &t.pooler);
}

#[test]
fn without_proxy_tls_trusted_tls_haproxy_terminated_does_not_count() {
    let certs = certs();
    let t = Setup::start(false);
    // The password login of the test above: no hostssl line matches.
    let out = t.run(MD5_USER, MD5_PASSWORD, None, "select 1");
    assert_refused(&out, &rejected(MD5_USER), &t.pooler);
    // Nor does the certificate login.
    let out = t.run(APP_USER, "", Some(&certs.app), "select 1");
    assert_refused(&out, &rejected(APP_USER), &t.pooler);
    // Both were refused by the pooler, which had read HAProxy's header,
    // and none was logged as TLS.
    let log = t.pooler.log();
    for user in [MD5_USER, APP_USER] {
        assert!(log.contains(&rejected(user)), "{}", tail(&log, 40));
    }
    assert!(!log.contains(" tls="), "{}", tail(&log, 40));
}
