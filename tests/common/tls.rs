//! TLS test helpers: a raw rustls client after an SSLRequest (or direct), logins over it, psql with an sslmode, and poolers with hba and TLS settings.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use super::pg::tail;
use super::tools::{psql_command, run_cmd, userlist_entry};
use super::wire::{self, Message};
use super::{
    secs, shared_pg, CmdOutput, Pooler, PoolerSetup, APP_DB, APP_PASSWORD, LOCALHOST, TRUST_USER,
};

/// libpq's SSLRequest: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// The console user of [`hba_pooler`]; logs in with [`APP_PASSWORD`].
pub const ADMIN: &str = "admin";

/// A raw TLS session over TCP.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A raw TLS session to the pooler: SSLRequest, `S`, then rustls with `alpn` offered.
pub fn tls_connect(port: u16, ca: &Path, alpn: &[&[u8]]) -> Result<TlsStream, String> {
    tls_connect_after(port, &[], ca, alpn)
}

/// [`tls_connect`] with `prefix` (a PROXY header) sent first, in cleartext.
pub fn tls_connect_after(
    port: u16,
    prefix: &[u8],
    ca: &Path,
    alpn: &[&[u8]],
) -> Result<TlsStream, String> {
    let mut tcp = tcp_connect(port)?;
    ssl_request(&mut tcp, prefix)?;
    tls_over(tcp, ca, alpn)
}

/// PostgreSQL 17's direct TLS: a ClientHello as the very first bytes, no SSLRequest.
pub fn tls_direct(port: u16, ca: &Path, alpn: &[&[u8]]) -> Result<TlsStream, String> {
    tls_over(tcp_connect(port)?, ca, alpn)
}

/// A TCP connection to 127.0.0.1:`port` with a 10 s read timeout.
pub fn tcp_connect(port: u16) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect((LOCALHOST, port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(secs(10))).unwrap();
    Ok(tcp)
}

/// Sends `prefix` and an SSLRequest in one write; Ok when the answer is `S`.
pub fn ssl_request(tcp: &mut TcpStream, prefix: &[u8]) -> Result<(), String> {
    let mut opening = prefix.to_vec();
    opening.extend(SSL_REQUEST);
    tcp.write_all(&opening).unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).map_err(|e| e.to_string())?;
    if answer[0] != b'S' {
        return Err(format!("SSLRequest answered {:?}", answer[0] as char));
    }
    Ok(())
}

/// A TLS handshake over `tcp` verifying the certificate against `ca` for `localhost`.
pub fn tls_over(tcp: TcpStream, ca: &Path, alpn: &[&[u8]]) -> Result<TlsStream, String> {
    tls_over_for(tcp, ca, alpn, "localhost")
}

/// [`tls_over`] verifying the certificate for `server` (a host name or an IP address).
pub fn tls_over_for(
    mut tcp: TcpStream,
    ca: &Path,
    alpn: &[&[u8]],
    server: &str,
) -> Result<TlsStream, String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Logs in as trust_user over an open session and returns it at ReadyForQuery.
pub fn login_over<S: Read + Write>(s: &mut S) -> Result<(), String> {
    login_after(s, &[], &[("user", TRUST_USER), ("database", APP_DB)])
}

/// Sends `prefix` (a PROXY header, or nothing) and a startup packet with
/// `params` in one write; Ok at ReadyForQuery, the error's fields otherwise.
pub fn login_after<S: Read + Write>(
    s: &mut S,
    prefix: &[u8],
    params: &[(&str, &str)],
) -> Result<(), String> {
    let mut bytes = prefix.to_vec();
    bytes.extend(wire::startup_packet(params));
    s.write_all(&bytes).map_err(|e| e.to_string())?;
    loop {
        match wire::read_message(s).map_err(|e| e.to_string())? {
            Some(Message { tag: b'Z', .. }) => return Ok(()),
            Some(Message { tag: b'E', body }) => {
                return Err(format!("{:?}", wire::error_fields(&body)))
            }
            Some(_) => {}
            None => return Err("closed during login".into()),
        }
    }
}

/// `select 1` over a logged-in session: its value.
pub fn select_one<S: Read + Write>(s: &mut S) -> String {
    s.write_all(&wire::query("select 1")).unwrap();
    let a = wire::read_answer(s);
    assert!(a.ready && a.error.is_none(), "{a:?}");
    a.values.join(",")
}

/// psql to 127.0.0.1:`port` with this sslmode and root certificate, no GSS encryption.
pub fn psql_tls_command(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sslmode: &str,
    root: &Path,
) -> Command {
    let mut cmd = psql_command(port, user, password, db);
    cmd.env("PGSSLMODE", sslmode)
        .env("PGSSLROOTCERT", root)
        .env("PGGSSENCMODE", "disable");
    cmd
}

/// Runs `sql` through [`psql_tls_command`] with [`APP_PASSWORD`].
pub fn psql_tls(
    port: u16,
    user: &str,
    db: &str,
    sslmode: &str,
    root: &Path,
    sql: &str,
) -> CmdOutput {
    let mut cmd = psql_tls_command(port, user, APP_PASSWORD, db, sslmode, root);
    cmd.args(["-c", sql]);
    run_cmd(cmd, None, secs(20))
}

/// Asserts psql failed and said `why`; the message carries `pooler`'s log tail.
pub fn assert_refused(out: &CmdOutput, why: &str, pooler: &Pooler) {
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(why),
        "want {why:?}:\n{out}\n--- pooler log (tail) ---\n{}",
        tail(&pooler.log(), 40)
    );
}

/// Asserts psql printed `want` (trimmed); the message carries `pooler`'s log tail.
pub fn assert_printed(out: &CmdOutput, want: &str, pooler: &Pooler) {
    assert_eq!(
        out.stdout.trim(),
        want,
        "{out}\n--- pooler log (tail) ---\n{}",
        tail(&pooler.log(), 40)
    );
}

/// The settings for client TLS in `mode` with this certificate and key.
pub fn client_tls(mode: &str, cert: &Path, key: &Path) -> String {
    format!(
        "client_tls_sslmode: {mode}\nclient_tls_cert_file: {}\nclient_tls_key_file: {}\n",
        cert.display(),
        key.display()
    )
}

/// A pooler on 127.0.0.1 for the shared PostgreSQL's app database with
/// `users` (name, password) and [`ADMIN`] in its auth file, `hba` as its hba
/// file, `auth_type: hba` unless `settings` names another auth_type, and the
/// YAML lines `settings`; `args` go on its command line.
pub fn hba_pooler(users: &[(&str, &str)], hba: &str, settings: &str, args: &[&str]) -> Pooler {
    let setup = PoolerSetup::new();
    let mut userlist = String::new();
    for (user, password) in users.iter().chain([&(ADMIN, APP_PASSWORD)]) {
        userlist.push_str(&userlist_entry(user, password));
        userlist.push('\n');
    }
    setup.write_file("userlist.txt", &userlist);
    setup.write_file("hba.conf", hba);
    let auth = if settings.contains("auth_type:") {
        ""
    } else {
        "auth_type: hba"
    };
    setup.start_with_args(
        &format!(
            "listen_addr: 127.0.0.1
listen_port: @PORT@
{auth}
auth_file: @DIR@/userlist.txt
auth_hba_file: @DIR@/hba.conf
admin_users: [{ADMIN}]
{settings}
databases:
  {APP_DB}: {{host: 127.0.0.1, port: {pg}}}
",
            pg = shared_pg().port(),
        ),
        args,
    )
}

/// SHOW CLIENTS through `psql` (a [`psql_tls_command`] for the console, no
/// `-c`) as rows of (column name → value); asserts the header has `columns`.
pub fn show_clients(mut psql: Command, columns: &[&str]) -> Vec<HashMap<String, String>> {
    // A header line (psql_command asks for tuples only), no footer.
    psql.args(["-P", "tuples_only=off", "-P", "footer=off"])
        .args(["-c", "SHOW CLIENTS"]);
    let out = run_cmd(psql, None, secs(20));
    let text = out.expect_success();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    for column in columns {
        assert!(header.contains(column), "no `{column}` column:\n{out}");
    }
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
