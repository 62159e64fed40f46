//! The PROXY protocol end to end: HAProxy and hand-built v1/v2 headers in front of the pooler, spoofing, malformed and split headers, timeouts and reload.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::thread;
use std::time::{Duration, Instant};

use common::haproxy::HaProxy;
use common::pg::{quote_literal, tail};
use common::wire::{error_fields, next_message, read_byte};
use common::*;
use postgres::NoTls;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long a raw read may block before the test fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// The only `proxy_trusted` address: HAProxy and the raw "proxies" connect from it.
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// An ordinary client (and, in the spoofing tests, the spoofer).
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

// ---------------------------------------------------------------------------
// Pooler configs
// ---------------------------------------------------------------------------

/// A session-mode pooler config on the shared server with log_connections
/// and application_name_add_host on. `top` holds the proxy and auth settings;
/// databases `app` and `secret` both lead to the server's database `app`
/// (hba rules can tell them apart).
fn config(top: &str) -> String {
    let pg = shared_pg();
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         pool_mode: session\n\
         log_connections: true\n\
         application_name_add_host: true\n\
         {top}\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n  \
           secret: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
        port = pg.port()
    )
}

/// Trust auth with `proxy_protocol: mode` and 127.0.0.2 as the only trusted proxy.
fn trust_proxy_config(mode: &str, extra: &str) -> String {
    config(&format!(
        "auth_type: trust\n\
         proxy_protocol: {mode}\n\
         proxy_trusted: [127.0.0.2/32]\n\
         {extra}"
    ))
}

fn start(yaml: &str) -> Pooler {
    PoolerSetup::new().start_with_args(yaml, &["--workers", "1"])
}

/// A pooler with `auth_type: hba` and `hba` as its auth_hba_file.
fn start_hba(mode: &str, hba: &str) -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file("hba.conf", hba);
    setup.start_with_args(
        &config(&format!(
            "auth_type: hba\n\
             auth_hba_file: @DIR@/hba.conf\n\
             proxy_protocol: {mode}\n\
             proxy_trusted: [127.0.0.2/32]\n"
        )),
        &["--workers", "1"],
    )
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Waits until the pooler log has `needle`; panics with the log tail otherwise.
fn expect_log(pooler: &Pooler, needle: &str) {
    assert!(
        pooler.wait_for_log(needle, secs(5)),
        "the pooler log lacks {needle:?}\n--- log (tail) ---\n{}",
        tail(&pooler.log(), 60)
    );
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A TCP connection to 127.0.0.1:`port` whose local address is `src` (any
/// 127/8 address is local on Linux): std cannot bind before connecting.
fn connect_from(src: Ipv4Addr, port: u16) -> TcpStream {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket/bind/connect on an fd that the TcpStream owns from
    // the start (so it is closed on every path); the sockaddr_in values live
    // across the calls and `len` is their size.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr_in(src, 0);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
        let remote = sockaddr_in(CLIENT_IP, port);
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(
            rc,
            0,
            "connect from {src} to port {port}: {}",
            std::io::Error::last_os_error()
        );
        stream
    };
    prepare(stream)
}

fn prepare(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    // Each write its own segment: the split-header tests rely on it.
    s.set_nodelay(true).unwrap();
    s
}

/// A plain connection from 127.0.0.1 to `port`.
fn connect(port: u16) -> TcpStream {
    prepare(TcpStream::connect((CLIENT_IP, port)).expect("connect"))
}

fn local_port(s: &TcpStream) -> u16 {
    s.local_addr().expect("local_addr").port()
}

fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write to the pooler");
}

/// A write to a peer that may already have closed (then the write fails or
/// is answered with a reset; what the peer sent back is checked next).
fn send_lossy(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
}

// ---------------------------------------------------------------------------
// PostgreSQL messages
// ---------------------------------------------------------------------------

fn with_length(body: Vec<u8>) -> Vec<u8> {
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

/// A protocol 3.0 StartupMessage as trust_user to `db` with an application_name.
fn startup(db: &str, app: &str) -> Vec<u8> {
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for (k, v) in [
        ("user", TRUST_USER),
        ("database", db),
        ("application_name", app),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    with_length(body)
}

fn request_packet(code: u32) -> Vec<u8> {
    with_length(code.to_be_bytes().to_vec())
}

fn cancel_packet(pid: u32, key: u32) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&key.to_be_bytes());
    with_length(body)
}

fn terminate(s: &mut TcpStream) {
    send_lossy(s, &[b'X', 0, 0, 0, 4]);
}

fn be_u32(buf: &[u8]) -> u32 {
    u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"))
}

/// The login answer of a trust login up to ReadyForQuery: the BackendKeyData.
/// Panics on an error or EOF.
fn read_login(s: &mut TcpStream, what: &str) -> (u32, u32) {
    let mut key = None;
    loop {
        let m = next_message(s).unwrap_or_else(|| panic!("{what}: EOF during login"));
        match m.tag {
            b'R' => assert_eq!(be_u32(&m.body), 0, "{what}: expected AuthenticationOk"),
            b'K' => key = Some((be_u32(&m.body), be_u32(&m.body[4..]))),
            b'Z' => return key.unwrap_or_else(|| panic!("{what}: no BackendKeyData")),
            b'E' => panic!("{what}: login failed: {:?}", error_fields(&m.body)),
            b'S' | b'N' | b'v' => {}
            other => panic!(
                "{what}: unexpected message {:?} during login",
                other as char
            ),
        }
    }
}

fn send_query(s: &mut TcpStream, sql: &str) {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let mut pkt = vec![b'Q'];
    pkt.extend_from_slice(&with_length(body));
    send(s, &pkt);
}

/// The first value of the first row, or the error's fields; reads up to ReadyForQuery.
fn read_result(s: &mut TcpStream, what: &str) -> Result<String, HashMap<char, String>> {
    let mut value = None;
    let mut error = None;
    loop {
        let m = next_message(s).unwrap_or_else(|| panic!("{what}: EOF while running a query"));
        match m.tag {
            b'D' if value.is_none() => {
                let len = be_u32(&m.body[2..]) as usize;
                value = Some(String::from_utf8_lossy(&m.body[6..6 + len]).into_owned());
            }
            b'E' => error = Some(error_fields(&m.body)),
            b'Z' => {
                return match error {
                    Some(e) => Err(e),
                    None => Ok(value.unwrap_or_default()),
                }
            }
            _ => {}
        }
    }
}

fn raw_value(s: &mut TcpStream, sql: &str) -> String {
    send_query(s, sql);
    read_result(s, sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// Reads until the pooler closes; the last message must be a FATAL
/// ErrorResponse, whose fields are returned.
fn expect_fatal(s: &mut TcpStream, what: &str) -> HashMap<char, String> {
    let mut last = None;
    while let Some(m) = next_message(s) {
        last = Some(m);
    }
    let m = last.unwrap_or_else(|| panic!("{what}: closed without an error"));
    assert_eq!(
        m.tag, b'E',
        "{what}: the last message was {:?}",
        m.tag as char
    );
    let fields = error_fields(&m.body);
    assert_eq!(
        fields.get(&'S').map(String::as_str),
        Some("FATAL"),
        "{what}: {fields:?}"
    );
    fields
}

fn assert_error(fields: &HashMap<char, String>, code: &str, message: &str, what: &str) {
    assert_eq!(
        (
            fields.get(&'C').map(String::as_str),
            fields.get(&'M').map(String::as_str)
        ),
        (Some(code), Some(message)),
        "{what}: {fields:?}"
    );
}

/// Asserts the pooler closes the connection without sending a single byte;
/// returns how long that took from `since`.
fn expect_silent_close(s: &mut TcpStream, since: Instant, what: &str) -> Duration {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(n) => panic!(
                "{what}: the pooler sent {n} bytes instead of closing silently: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return since.elapsed()
            }
            Err(e) => panic!("{what}: the connection stayed open ({e})"),
        }
    }
}

// ---------------------------------------------------------------------------
// PROXY headers, built by hand
// ---------------------------------------------------------------------------

fn v1_tcp4(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {sport} {dport}\r\n").into_bytes()
}

fn v1_tcp6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    format!("PROXY TCP6 {src} ::1 {sport} 6432\r\n").into_bytes()
}

/// A v2 header: `ver_cmd` (0x21 PROXY, 0x20 LOCAL), `fam` (0x11 TCP/IPv4,
/// 0x21 TCP/IPv6), then `payload` (addresses and TLVs) with its length.
fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn v2_addrs4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut a = src.octets().to_vec();
    a.extend_from_slice(&dst.octets());
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&dport.to_be_bytes());
    a
}

fn v2_addrs6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut a = src.octets().to_vec();
    a.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&6432u16.to_be_bytes());
    a
}

fn v2_tcp4(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    v2(0x21, 0x11, &v2_addrs4(src, sport, CLIENT_IP, 6432))
}

/// CRC-32C (Castagnoli), bit by bit: the reference for the header's CRC TLV.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A v2 TCP/IPv4 header with a NOOP TLV and a PP2_TYPE_CRC32C TLV, its
/// checksum computed as a sender does (over the whole header with the CRC
/// value zeroed) and then xor-ed with `corrupt`.
fn v2_tcp4_with_crc(src: Ipv4Addr, sport: u16, corrupt: u32) -> Vec<u8> {
    let mut payload = v2_addrs4(src, sport, CLIENT_IP, 6432);
    payload.extend_from_slice(&[0x04, 0, 2, 0xAA, 0xBB]); // PP2_TYPE_NOOP
    payload.extend_from_slice(&[0x03, 0, 4, 0, 0, 0, 0]); // PP2_TYPE_CRC32C
    let mut h = v2(0x21, 0x11, &payload);
    let at = h.len() - 4;
    let crc = crc32c(&h) ^ corrupt;
    h[at..].copy_from_slice(&crc.to_be_bytes());
    h
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    v
}

/// Connects from the trusted proxy address, sends `header` + a StartupMessage
/// in one write and reads the login; returns the socket ready for queries and
/// its local port.
fn proxied_login(pooler: &Pooler, header: &[u8], app: &str) -> (TcpStream, u16) {
    let mut s = connect_from(PROXY_IP, pooler.port());
    let port = local_port(&s);
    send(&mut s, &concat(header, &startup("app", app)));
    read_login(&mut s, app);
    (s, port)
}

fn app_name(s: &mut TcpStream) -> String {
    raw_value(s, "SHOW application_name")
}

/// Waits for the log line of a login to `db` from `client` (`ip:port`)
/// through `via`: `None` when the socket peer itself was the client (no
/// `via=`), `"ip:port"`, or `"ip:"` for any port of that proxy address.
fn expect_login_line(pooler: &Pooler, db: &str, client: &str, via: Option<&str>) {
    let head = format!("{db}/{TRUST_USER}@{client}: login attempt: db={db} user={TRUST_USER}");
    let matches = |line: &str| {
        let Some(rest) = line.find(&head).map(|i| &line[i + head.len()..]) else {
            return false;
        };
        let rest = match via {
            None => rest,
            Some(via) => match rest.strip_prefix(&format!(" via={via}")) {
                Some(r) if via.ends_with(':') => r.trim_start_matches(|c: char| c.is_ascii_digit()),
                Some(r) => r,
                None => return false,
            },
        };
        rest.starts_with(" worker=")
    };
    assert!(
        wait_until(secs(5), || pooler.log().lines().any(matches)),
        "the pooler log lacks `{head}` with via={via:?}\n--- log (tail) ---\n{}",
        tail(&pooler.log(), 60)
    );
}

// ---------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------

/// HAProxy with two TCP listeners in front of a pooler: `v1_port` adds
/// `send-proxy`, `v2_port` `send-proxy-v2`; both connect to the pooler from
/// 127.0.0.2. HAProxy is killed when this is dropped.
struct TwoListeners {
    v1_port: u16,
    v2_port: u16,
    _hap: HaProxy,
}

impl TwoListeners {
    fn start(backend_port: u16) -> TwoListeners {
        let (v1_port, v2_port) = (free_port(), free_port());
        let hap = HaProxy::start(
            &format!(
                "listen pp_v1\n    bind 127.0.0.1:{v1_port}\n    \
                 server s1 127.0.0.1:{backend_port} send-proxy source {PROXY_IP}\n\
                 listen pp_v2\n    bind 127.0.0.1:{v2_port}\n    \
                 server s1 127.0.0.1:{backend_port} send-proxy-v2 source {PROXY_IP}\n"
            ),
            &[v1_port, v2_port],
        );
        TwoListeners {
            v1_port,
            v2_port,
            _hap: hap,
        }
    }
}

// ---------------------------------------------------------------------------
// 1. HAProxy in front
// ---------------------------------------------------------------------------

#[test]
fn haproxy_send_proxy_v1_and_v2_pass_the_real_client_address() {
    let pooler = start(&trust_proxy_config("required", ""));
    let hap = TwoListeners::start(pooler.port());
    for (label, port) in [("v1", hap.v1_port), ("v2", hap.v2_port)] {
        let app = format!("hap_{label}");
        let mut s = connect(port);
        let client_port = local_port(&s);
        send(&mut s, &startup("app", &app));
        read_login(&mut s, &app);
        assert_eq!(
            app_name(&mut s),
            format!("{app} - 127.0.0.1:{client_port}"),
            "{label}: the server should see the client's own address and port"
        );
        assert_eq!(raw_value(&mut s, "SELECT 6 * 7"), "42", "{label}");
        expect_login_line(
            &pooler,
            "app",
            &format!("127.0.0.1:{client_port}"),
            Some("127.0.0.2:"),
        );
        terminate(&mut s);
    }
    // A real client library through HAProxy.
    let mut c = postgres::Config::new()
        .host("127.0.0.1")
        .port(hap.v2_port)
        .user(TRUST_USER)
        .dbname("app")
        .application_name("hap_crate")
        .connect_timeout(secs(10))
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("postgres crate through haproxy: {e:?}\n{}", pooler.log()));
    let row = c.query_one("SHOW application_name", &[]).unwrap();
    let name: String = row.get(0);
    assert!(
        name.starts_with("hap_crate - 127.0.0.1:") && !name.ends_with(&format!(":{}", hap.v2_port)),
        "{name}"
    );
    // The same client going around HAProxy is not trusted: required refuses it.
    let mut s = connect(pooler.port());
    let at = Instant::now();
    send_lossy(&mut s, &startup("app", "hap_direct"));
    expect_silent_close(&mut s, at, "direct connection in required mode");
}

/// `number of transactions actually processed: N` from pgbench's summary.
fn pgbench_processed(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn pgbench_through_haproxy_send_proxy_v2_has_no_failures() {
    let pg = shared_pg();
    pg.admin_sql(&format!("CREATE DATABASE proxy_bench OWNER {APP_USER}"));
    run_pgbench(
        pg.port(),
        APP_USER,
        APP_PASSWORD,
        "proxy_bench",
        &["-i", "-s", "1", "-q"],
    )
    .expect_success();
    pg.admin_sql_in(
        "proxy_bench",
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {TRUST_USER}"),
    );
    let yaml = trust_proxy_config("required", "")
        .replace("pool_mode: session", "pool_mode: transaction")
        + &format!(
            "  proxy_bench: {{ host: 127.0.0.1, port: {}, dbname: proxy_bench, pool_size: 4 }}\n",
            pg.port()
        );
    let pooler = PoolerSetup::new().start_with_args(&yaml, &["--workers", "2"]);
    let hap = TwoListeners::start(pooler.port());
    // Long-lived connections, then one connection (so one PROXY header) per transaction.
    for (label, extra) in [("steady", None), ("reconnecting", Some("-C"))] {
        let mut cmd = pgbench_command(hap.v2_port, TRUST_USER, "");
        cmd.args(["-n", "-S", "-c", "8", "-j", "2", "-T", "3"]);
        cmd.args(extra);
        cmd.arg("proxy_bench");
        let out = run_cmd(cmd, None, secs(60));
        let stdout = out.expect_success();
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "{label}: {out}\n--- pooler log (tail) ---\n{}",
            tail(&pooler.log(), 40)
        );
        let processed = pgbench_processed(stdout);
        assert!(
            processed > 100,
            "{label}: only {processed} transactions\n{out}"
        );
    }
    // Every login came through HAProxy with a header the pooler believed.
    let log = pooler.log();
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("login attempt: db=proxy_bench"))
        .collect();
    assert!(logins.len() > 100, "{} logins logged", logins.len());
    let direct: Vec<&&str> = logins
        .iter()
        .filter(|l| {
            !(l.contains("proxy_bench/trust_user@127.0.0.1:") && l.contains(" via=127.0.0.2:"))
        })
        .collect();
    assert!(
        direct.is_empty(),
        "logins not from the client behind HAProxy: {direct:?}"
    );
    assert!(!log.contains("PROXY header refused"), "{}", tail(&log, 40));
}

#[test]
fn hba_sees_the_client_behind_haproxy_not_the_proxy() {
    let pooler = start_hba(
        "optional",
        "host all all 127.0.0.1/32 trust\n\
         host all all 0.0.0.0/0 reject\n",
    );
    let hap = TwoListeners::start(pooler.port());
    for (label, port) in [("v1", hap.v1_port), ("v2", hap.v2_port)] {
        let app = format!("hap_hba_{label}");
        let mut s = connect(port);
        send(&mut s, &startup("app", &app));
        read_login(&mut s, &app);
        assert_eq!(raw_value(&mut s, "SELECT current_user"), TRUST_USER);
        terminate(&mut s);
    }
    // The proxy's own address is rejected: a direct connection from it (no
    // header, allowed in optional mode) is matched on 127.0.0.2.
    let mut s = connect_from(PROXY_IP, pooler.port());
    send(&mut s, &startup("app", "hap_hba_direct"));
    let fields = expect_fatal(&mut s, "direct connection from the proxy address");
    assert_error(
        &fields,
        "28000",
        &format!(
            "pg_hba.conf rejects connection for host \"127.0.0.2\", user \"{TRUST_USER}\", \
             database \"app\", no encryption"
        ),
        "direct connection from the proxy address",
    );
}

// ---------------------------------------------------------------------------
// 2. Spoofing
// ---------------------------------------------------------------------------

#[test]
fn required_mode_closes_untrusted_peers_without_a_byte() {
    let pooler = start(&trust_proxy_config("required", "proxy_header_timeout: 5"));
    let workers = pooler.wait_for_children(1, secs(5));

    // An untrusted peer that sends nothing is closed at once, not after a timeout.
    let mut s = connect(pooler.port());
    let port = local_port(&s);
    let took = expect_silent_close(&mut s, Instant::now(), "untrusted, silent");
    assert!(took < secs(2), "closing an untrusted peer took {took:?}");
    expect_log(
        &pooler,
        &format!(
            "connection from untrusted peer 127.0.0.1:{port} refused: \
             proxy_protocol is required (spoofing attempt?)"
        ),
    );

    // A header does not help an untrusted peer.
    let mut s = connect(pooler.port());
    let at = Instant::now();
    send_lossy(
        &mut s,
        &concat(&v1_tcp4(PROXY_IP, 1111, 6432), &startup("app", "spoof")),
    );
    expect_silent_close(&mut s, at, "untrusted, with a header");

    // A trusted peer without a header is refused too.
    let mut s = connect_from(PROXY_IP, pooler.port());
    let at = Instant::now();
    send_lossy(&mut s, &startup("app", "no_header"));
    expect_silent_close(&mut s, at, "trusted, no header");
    expect_log(&pooler, "PROXY header refused (missing)");

    // The one way in: a trusted peer with a header.
    let (mut s, _) = proxied_login(
        &pooler,
        &v1_tcp4(Ipv4Addr::new(198, 51, 100, 3), 3333, 6432),
        "req_ok",
    );
    assert_eq!(app_name(&mut s), "req_ok - 198.51.100.3:3333");
    assert_eq!(pooler.children(), workers);
}

#[test]
fn optional_mode_refuses_headers_from_untrusted_peers() {
    let pooler = start_hba(
        "optional",
        "host secret all 203.0.113.7/32 trust\n\
         host app all 127.0.0.1/32 trust\n\
         host all all 0.0.0.0/0 reject\n",
    );
    let spoofed = v1_tcp4_text("203.0.113.7", "127.0.0.1", 1234, 5432);

    // Untrusted and without a header: an ordinary direct client.
    let mut s = connect(pooler.port());
    let port = local_port(&s);
    send(&mut s, &startup("app", "opt_direct"));
    read_login(&mut s, "opt_direct");
    assert_eq!(app_name(&mut s), format!("opt_direct - 127.0.0.1:{port}"));
    expect_login_line(&pooler, "app", &format!("127.0.0.1:{port}"), None);
    terminate(&mut s);

    // The same client may not reach `secret` directly…
    let mut s = connect(pooler.port());
    send(&mut s, &startup("secret", "opt_direct_secret"));
    let fields = expect_fatal(&mut s, "direct to secret");
    assert_error(
        &fields,
        "28000",
        &format!(
            "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{TRUST_USER}\", \
             database \"secret\", no encryption"
        ),
        "direct to secret",
    );

    // …nor by claiming to be 203.0.113.7: closed without a byte, logged.
    for db in ["secret", "app"] {
        let mut s = connect(pooler.port());
        let at = Instant::now();
        send_lossy(&mut s, &concat(&spoofed, &startup(db, "spoofer")));
        let took = expect_silent_close(&mut s, at, "spoofed header");
        assert!(took < secs(2), "refusing a spoofed header took {took:?}");
    }
    assert!(
        wait_until(secs(5), || count(
            &pooler.log(),
            "PROXY header refused (untrusted)"
        ) == 2),
        "expected two `(untrusted)` refusals\n{}",
        pooler.log()
    );
    assert!(
        !pooler.log().contains("@203.0.113.7"),
        "the spoofed address got as far as a login:\n{}",
        pooler.log()
    );

    // The very same header from the trusted proxy is believed.
    let mut s = connect_from(PROXY_IP, pooler.port());
    send(&mut s, &concat(&spoofed, &startup("secret", "opt_trusted")));
    read_login(&mut s, "opt_trusted");
    assert_eq!(app_name(&mut s), "opt_trusted - 203.0.113.7:1234");
    expect_login_line(&pooler, "secret", "203.0.113.7:1234", Some("127.0.0.2:"));
}

fn v1_tcp4_text(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\n").into_bytes()
}

// ---------------------------------------------------------------------------
// 3. Hand-built headers from a trusted peer
// ---------------------------------------------------------------------------

#[test]
fn raw_v1_and_v2_headers_set_the_client_address() {
    let pooler = start(&trust_proxy_config("required", ""));
    let v6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "raw_v1_tcp4",
            v1_tcp4(Ipv4Addr::new(198, 51, 100, 9), 4242, 6432),
            Some("198.51.100.9:4242"),
        ),
        (
            "raw_v1_tcp6",
            v1_tcp6("2001:db8::5".parse().unwrap(), 4244),
            Some("2001:db8::5:4244"),
        ),
        (
            "raw_v2_tcp4",
            v2_tcp4(Ipv4Addr::new(203, 0, 113, 44), 5000),
            Some("203.0.113.44:5000"),
        ),
        (
            "raw_v2_tcp6",
            v2(0x21, 0x21, &v2_addrs6(v6, 4243)),
            Some("2001:db8::7:4243"),
        ),
        (
            "raw_v2_crc",
            v2_tcp4_with_crc(Ipv4Addr::new(192, 0, 2, 77), 7777, 0),
            Some("192.0.2.77:7777"),
        ),
        // LOCAL with an address block, which must be ignored.
        (
            "raw_v2_local",
            v2(
                0x20,
                0x11,
                &v2_addrs4(Ipv4Addr::new(10, 9, 8, 7), 999, CLIENT_IP, 6432),
            ),
            None,
        ),
        ("raw_v1_unknown", b"PROXY UNKNOWN\r\n".to_vec(), None),
    ];
    for (app, header, source) in cases {
        let (mut s, proxy_port) = proxied_login(&pooler, &header, app);
        let proxy = format!("127.0.0.2:{proxy_port}");
        let client = source.map_or(proxy.clone(), str::to_string);
        assert_eq!(
            app_name(&mut s),
            format!("{app} - {client}"),
            "{app}: the server's application_name"
        );
        // A header without addresses (LOCAL, UNKNOWN) leaves no `via`.
        let via = source.is_some().then_some(proxy.as_str());
        expect_login_line(&pooler, "app", &client, via);
        terminate(&mut s);
    }
}

// ---------------------------------------------------------------------------
// 4. Headers split over many writes
// ---------------------------------------------------------------------------

#[test]
fn headers_split_over_many_writes_are_reassembled() {
    let pooler = start(&trust_proxy_config("required", ""));
    let workers = pooler.wait_for_children(1, secs(5));

    // v2 header and startup packet one byte per write.
    let header = v2_tcp4(Ipv4Addr::new(198, 51, 100, 50), 5050);
    let mut s = connect_from(PROXY_IP, pooler.port());
    for b in concat(&header, &startup("app", "split_v2")) {
        send(&mut s, &[b]);
        thread::sleep(ms(2));
    }
    read_login(&mut s, "split_v2");
    assert_eq!(app_name(&mut s), "split_v2 - 198.51.100.50:5050");
    terminate(&mut s);

    // v1 in two writes, split at various places, the last one past the
    // header (inside the startup packet).
    let header = v1_tcp4(Ipv4Addr::new(198, 51, 100, 51), 5151, 6432);
    let len = header.len();
    for cut in [1, 5, 6, 11, 24, len - 2, len - 1, len, len + 3] {
        let app = format!("split_v1_{cut}");
        let bytes = concat(&header, &startup("app", &app));
        let mut s = connect_from(PROXY_IP, pooler.port());
        send(&mut s, &bytes[..cut]);
        thread::sleep(ms(20));
        send(&mut s, &bytes[cut..]);
        read_login(&mut s, &app);
        assert_eq!(
            app_name(&mut s),
            format!("{app} - 198.51.100.51:5151"),
            "cut at {cut}"
        );
        terminate(&mut s);
    }

    // v2 cut right after the signature and after the fixed part.
    let header = v2(
        0x21,
        0x21,
        &v2_addrs6("2001:db8::51".parse().unwrap(), 5252),
    );
    for cut in [12, 16] {
        let app = format!("split_v2_{cut}");
        let bytes = concat(&header, &startup("app", &app));
        let mut s = connect_from(PROXY_IP, pooler.port());
        send(&mut s, &bytes[..cut]);
        thread::sleep(ms(20));
        send(&mut s, &bytes[cut..]);
        read_login(&mut s, &app);
        assert_eq!(app_name(&mut s), format!("{app} - 2001:db8::51:5252"));
        terminate(&mut s);
    }
    assert_eq!(pooler.children(), workers);
    assert_eq!(count(&pooler.log(), "PROXY header refused"), 0);
}

// ---------------------------------------------------------------------------
// 5. Header before SSLRequest, GSSENCRequest and CancelRequest
// ---------------------------------------------------------------------------

#[test]
fn header_may_precede_ssl_and_gssenc_requests() {
    let pooler = start(&trust_proxy_config("required", ""));
    for (label, code) in [("ssl", SSL_REQUEST), ("gss", GSSENC_REQUEST)] {
        let app = format!("pre_{label}");
        let mut s = connect_from(PROXY_IP, pooler.port());
        send(
            &mut s,
            &concat(
                &v1_tcp4(Ipv4Addr::new(198, 51, 100, 60), 6060, 6432),
                &request_packet(code),
            ),
        );
        assert_eq!(read_byte(&mut s), Some(b'N'), "{label}: the answer");
        send(&mut s, &startup("app", &app));
        read_login(&mut s, &app);
        assert_eq!(app_name(&mut s), format!("{app} - 198.51.100.60:6060"));
        terminate(&mut s);
    }
}

#[test]
fn header_may_precede_a_cancel_request() {
    let pooler = start(&trust_proxy_config("required", ""));
    let pg = shared_pg();
    let app = "pre_cancel";
    let mut victim = connect_from(PROXY_IP, pooler.port());
    send(
        &mut victim,
        &concat(
            &v1_tcp4(Ipv4Addr::new(198, 51, 100, 70), 7070, 6432),
            &startup("app", app),
        ),
    );
    let (pid, key) = read_login(&mut victim, app);
    send_query(&mut victim, "SELECT pg_sleep(5)");
    let running = || {
        pg.admin_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE {} \
             AND state = 'active' AND query LIKE '%pg_sleep%'",
            quote_literal(&format!("{app} - %"))
        ))
        .trim()
        .parse::<i64>()
        .unwrap()
            == 1
    };
    assert!(
        wait_until(secs(5), running),
        "the query did not start\n{}",
        pooler.log()
    );

    let sent = Instant::now();
    let mut c = connect_from(PROXY_IP, pooler.port());
    send(
        &mut c,
        &concat(
            &v1_tcp4(Ipv4Addr::new(198, 51, 100, 71), 7171, 6432),
            &cancel_packet(pid, key),
        ),
    );
    // A cancel connection is closed without an answer.
    expect_silent_close(&mut c, sent, "cancel connection");
    let err =
        read_result(&mut victim, "the cancelled query").expect_err("the query was not cancelled");
    let took = sent.elapsed();
    assert_eq!(
        err.get(&'C').map(String::as_str),
        Some("57014"),
        "expected query_canceled: {err:?}"
    );
    assert!(took < secs(3), "cancelling took {took:?}");
    assert_eq!(raw_value(&mut victim, "SELECT 'still here'"), "still here");
}

// ---------------------------------------------------------------------------
// 6. Malformed headers
// ---------------------------------------------------------------------------

#[test]
fn malformed_headers_are_closed_silently_and_disturb_nobody() {
    let pooler = start(&trust_proxy_config(
        "required",
        "proxy_header_timeout: 5\nproxy_max_header: 512",
    ));
    let workers = pooler.wait_for_children(1, secs(5));
    // A session open all along must not notice anything.
    let (mut bystander, _) = proxied_login(
        &pooler,
        &v1_tcp4(Ipv4Addr::new(198, 51, 100, 80), 8080, 6432),
        "bystander",
    );

    let src = Ipv4Addr::new(198, 51, 100, 81);
    let mut bad_version = v2_tcp4(src, 1);
    bad_version[12] = 0x31;
    let mut tlv_overrun = v2_addrs4(src, 1, CLIENT_IP, 6432);
    tlv_overrun.extend_from_slice(&[0x02, 0, 10, b'x']); // AUTHORITY of 10 bytes, 1 present
    let mut too_long = V2_SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11]);
    too_long.extend_from_slice(&1000u16.to_be_bytes()); // and nothing after it
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "double space",
            v1_tcp4_text("198.51.100.81 ", "127.0.0.1", 1234, 5432),
            true,
            "exactly one space",
        ),
        (
            "TCP4 with an IPv6 address",
            v1_tcp4_text("2001:db8::1", "127.0.0.1", 1234, 5432),
            true,
            "family does not match",
        ),
        (
            "port 70000",
            b"PROXY TCP4 198.51.100.81 127.0.0.1 70000 5432\r\n".to_vec(),
            true,
            "invalid source port",
        ),
        (
            "port with a leading zero",
            b"PROXY TCP4 198.51.100.81 127.0.0.1 1234 05432\r\n".to_vec(),
            true,
            "invalid destination port",
        ),
        (
            "address with a leading zero",
            b"PROXY TCP4 198.051.100.81 127.0.0.1 1234 5432\r\n".to_vec(),
            true,
            "invalid source address",
        ),
        (
            "unknown protocol",
            b"PROXY UDP4 198.51.100.81 127.0.0.1 1234 5432\r\n".to_vec(),
            true,
            "protocol must be",
        ),
        ("v2 version 3", bad_version, true, "unsupported version 3"),
        (
            "v2 wrong CRC32C",
            v2_tcp4_with_crc(src, 1, 0x0000_0100),
            true,
            "CRC32C mismatch",
        ),
        (
            "v2 TLV overrun",
            v2(0x21, 0x11, &tlv_overrun),
            true,
            "runs past the end of the header",
        ),
        (
            "v2 longer than proxy_max_header",
            too_long,
            false,
            "exceeds the 512-byte limit",
        ),
    ];
    for (what, header, with_startup, _) in &cases {
        let mut s = connect_from(PROXY_IP, pooler.port());
        let at = Instant::now();
        let bytes = if *with_startup {
            concat(header, &startup("app", "malformed"))
        } else {
            header.clone()
        };
        send_lossy(&mut s, &bytes);
        let took = expect_silent_close(&mut s, at, what);
        // Well before proxy_header_timeout: refused on sight, not timed out.
        assert!(took < secs(2), "{what}: closing took {took:?}");
    }
    assert!(
        wait_until(secs(5), || count(
            &pooler.log(),
            "PROXY header refused (invalid)"
        ) == cases.len()),
        "expected {} `(invalid)` refusals\n{}",
        cases.len(),
        pooler.log()
    );
    let log = pooler.log();
    for (what, _, _, reason) in &cases {
        assert!(
            log.contains(reason),
            "{what}: the log does not give the reason {reason:?}\n{log}"
        );
    }
    assert_eq!(count(&log, "(timeout)"), 0, "{log}");
    assert_eq!(pooler.children(), workers, "a worker was replaced");
    assert_eq!(raw_value(&mut bystander, "SELECT 'unharmed'"), "unharmed");
    let (mut s, _) = proxied_login(
        &pooler,
        &v2_tcp4(Ipv4Addr::new(198, 51, 100, 82), 8282),
        "after_malformed",
    );
    assert_eq!(app_name(&mut s), "after_malformed - 198.51.100.82:8282");
}

// ---------------------------------------------------------------------------
// 7. proxy_header_timeout
// ---------------------------------------------------------------------------

#[test]
fn incomplete_header_is_closed_after_proxy_header_timeout() {
    let pooler = start(&trust_proxy_config("required", "proxy_header_timeout: 1"));
    let workers = pooler.wait_for_children(1, secs(5));
    let full_v2 = v2_tcp4(Ipv4Addr::new(198, 51, 100, 90), 9090);
    let halves: [(&str, &[u8]); 2] = [("v1", b"PROXY TCP4 198.51."), ("v2", &full_v2[..20])];
    let start = Instant::now();
    let mut waiting: Vec<(&str, TcpStream)> = halves
        .iter()
        .map(|(what, half)| {
            let mut s = connect_from(PROXY_IP, pooler.port());
            send(&mut s, half);
            (*what, s)
        })
        .collect();
    // Meanwhile others are served normally.
    let (mut s, _) = proxied_login(
        &pooler,
        &v1_tcp4(Ipv4Addr::new(198, 51, 100, 91), 9191, 6432),
        "during_timeout",
    );
    assert_eq!(app_name(&mut s), "during_timeout - 198.51.100.91:9191");
    for (what, s) in waiting.iter_mut() {
        let took = expect_silent_close(s, start, what);
        assert!(
            took >= ms(900) && took < ms(2500),
            "{what}: closed after {took:?}, expected about 1 s"
        );
    }
    assert!(
        wait_until(secs(5), || count(
            &pooler.log(),
            "PROXY header refused (timeout)"
        ) == 2),
        "expected two `(timeout)` refusals\n{}",
        pooler.log()
    );
    assert_eq!(raw_value(&mut s, "SELECT 1"), "1");
    assert_eq!(pooler.children(), workers);
}

// ---------------------------------------------------------------------------
// 8. Reload
// ---------------------------------------------------------------------------

/// Whether a direct client from 127.0.0.1 still gets an answer to its startup
/// packet (`true`) or is closed without one.
fn direct_login_answered(pooler: &Pooler) -> bool {
    let mut s = connect(pooler.port());
    send_lossy(&mut s, &startup("app", "reload_probe"));
    let answered = read_byte(&mut s).is_some();
    terminate(&mut s);
    answered
}

#[test]
fn reload_switches_proxy_protocol_from_off_to_required() {
    let off = config("auth_type: trust\nproxy_protocol: off");
    let pooler = start(&off);
    let workers = pooler.wait_for_children(1, secs(5));

    // off: a header is no PostgreSQL packet.
    let mut s = connect_from(PROXY_IP, pooler.port());
    send_lossy(
        &mut s,
        &concat(
            &v1_tcp4(Ipv4Addr::new(198, 51, 100, 100), 1000, 6432),
            &startup("app", "off_header"),
        ),
    );
    let fields = expect_fatal(&mut s, "a header with proxy_protocol off");
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some("08P01"),
        "{fields:?}"
    );
    assert!(
        fields
            .get(&'M')
            .is_some_and(|m| m.starts_with("invalid length of startup packet")),
        "{fields:?}"
    );
    // A session opened before the reload, directly from 127.0.0.1.
    let mut old = pooler
        .client_config(TRUST_USER, "", "app")
        .application_name("reload_old")
        .connect(NoTls)
        .expect("direct client with proxy_protocol off");
    assert!(direct_login_answered(&pooler));

    pooler.rewrite_config(&trust_proxy_config("required", ""));
    pooler.reload();
    assert!(
        wait_until(secs(10), || !direct_login_answered(&pooler)),
        "after the reload a direct client from 127.0.0.1 is still served\n{}",
        pooler.log()
    );
    expect_log(&pooler, "connection from untrusted peer 127.0.0.1:");
    let (mut s, _) = proxied_login(
        &pooler,
        &v1_tcp4(Ipv4Addr::new(198, 51, 100, 101), 1010, 6432),
        "reload_new",
    );
    assert_eq!(app_name(&mut s), "reload_new - 198.51.100.101:1010");
    let row = old
        .query_one("SELECT 'old session'::text", &[])
        .expect("the session opened before the reload");
    assert_eq!(row.get::<_, String>(0), "old session");
    assert_eq!(
        pooler.children(),
        workers,
        "reload should not restart workers"
    );
}
