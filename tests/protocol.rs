//! The pooler's front door as clients see it: startup packets byte by byte, the welcome, Terminate, cancel requests, max_client_conn and startup options.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::wire::startup_packet_version as startup_packet;
use common::wire::{error_fields, next_message, read_byte};
use common::*;
use postgres::error::SqlState;
use postgres::{NoTls, SimpleQueryMessage};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// How long a raw read may block before the test fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Raw protocol helpers
// ---------------------------------------------------------------------------

/// A config with trust auth (no password exchange for raw clients), a
/// session-mode database `app` and a transaction-mode one `apptx`, both on
/// the shared server's database `app`. `extra` is appended at the top level.
fn trust_config(extra: &str) -> String {
    let pg = shared_pg();
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         pool_mode: session\n\
         {extra}\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n  \
           apptx: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB}, pool_mode: transaction }}\n",
        port = pg.port()
    )
}

/// One worker keeps per-worker state (cancel keys, max_client_conn, the
/// worker pid) deterministic and the machine's two cores free.
fn start_trust_pooler(extra: &str) -> Pooler {
    PoolerSetup::new().start_with_args(&trust_config(extra), &["--workers", "1"])
}

fn raw_connect(pooler: &Pooler) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect to the pooler");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn with_length(body: Vec<u8>) -> Vec<u8> {
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

/// An 8-byte request such as SSLRequest or GSSENCRequest.
fn request_packet(code: u32) -> Vec<u8> {
    with_length(code.to_be_bytes().to_vec())
}

fn cancel_packet(pid: u32, key: u32) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&key.to_be_bytes());
    with_length(body)
}

fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write to the pooler");
}

/// The single byte answer to SSLRequest / GSSENCRequest.
fn read_single_byte_answer(s: &mut TcpStream) -> u8 {
    read_byte(s).expect("the pooler closed instead of answering the request")
}

/// NUL-terminated strings at the start of `buf`, and what follows.
fn cstr(buf: &[u8]) -> (String, &[u8]) {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .expect("unterminated string");
    (
        String::from_utf8_lossy(&buf[..nul]).into_owned(),
        &buf[nul + 1..],
    )
}

fn be_u32(buf: &[u8]) -> u32 {
    u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"))
}

/// Reads until the pooler closes: the messages it sent before, which must
/// end with an ErrorResponse; returns that error's fields. Panics if the
/// connection stays open.
fn expect_fatal_and_close(s: &mut TcpStream, what: &str) -> HashMap<char, String> {
    let mut seen = Vec::new();
    let mut error = None;
    while let Some(m) = next_message(s) {
        if m.tag == b'E' {
            error = Some(error_fields(&m.body));
        }
        seen.push(m.tag as char);
        if seen.len() > 50 {
            panic!("{what}: the pooler keeps talking: {seen:?}");
        }
    }
    let fields = error.unwrap_or_else(|| panic!("{what}: closed without an error ({seen:?})"));
    assert_eq!(
        seen.last(),
        Some(&'E'),
        "{what}: the error was not the last message: {seen:?}"
    );
    assert_eq!(
        fields.get(&'S').map(String::as_str),
        Some("FATAL"),
        "{what}: {fields:?}"
    );
    fields
}

/// Asserts the error's SQLSTATE and message.
fn assert_error(fields: &HashMap<char, String>, code: &str, message: &str, what: &str) {
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some(code),
        "{what}: {fields:?}"
    );
    assert_eq!(
        fields.get(&'M').map(String::as_str),
        Some(message),
        "{what}: {fields:?}"
    );
}

fn assert_error_prefix(fields: &HashMap<char, String>, code: &str, prefix: &str, what: &str) {
    assert_eq!(
        fields.get(&'C').map(String::as_str),
        Some(code),
        "{what}: {fields:?}"
    );
    let msg = fields.get(&'M').cloned().unwrap_or_default();
    assert!(
        msg.starts_with(prefix),
        "{what}: message {msg:?} does not start with {prefix:?}"
    );
}

/// What the pooler said from the startup packet up to the first ReadyForQuery.
#[derive(Debug, Default)]
struct Login {
    tags: Vec<char>,
    negotiate: Option<Vec<u8>>,
    params: Vec<(String, String)>,
    backend_key: Option<(u32, u32)>,
    ready: Option<u8>,
}

impl Login {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the login answer of a trust login up to ReadyForQuery; panics on an
/// error, on EOF or on an authentication request other than AuthenticationOk.
fn read_login(s: &mut TcpStream) -> Login {
    let mut login = Login::default();
    loop {
        let m =
            next_message(s).unwrap_or_else(|| panic!("EOF during login after {:?}", login.tags));
        login.tags.push(m.tag as char);
        match m.tag {
            b'v' => login.negotiate = Some(m.body),
            b'R' => assert_eq!(be_u32(&m.body), 0, "expected AuthenticationOk"),
            b'S' => {
                let (k, rest) = cstr(&m.body);
                let (v, _) = cstr(rest);
                login.params.push((k, v));
            }
            b'K' => {
                assert_eq!(m.body.len(), 8, "BackendKeyData of protocol 3.0");
                login.backend_key = Some((be_u32(&m.body), be_u32(&m.body[4..])));
            }
            b'Z' => {
                login.ready = m.body.first().copied();
                return login;
            }
            b'E' => panic!("login failed: {:?}", error_fields(&m.body)),
            b'N' => {}
            other => panic!("unexpected message {:?} during login", other as char),
        }
    }
}

/// Rows of a simple query, as text; `Err` with the error's fields.
type QueryResult = Result<Vec<Vec<Option<String>>>, HashMap<char, String>>;

fn raw_query(s: &mut TcpStream, sql: &str) -> QueryResult {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let mut pkt = vec![b'Q'];
    pkt.extend_from_slice(&with_length(body));
    send(s, &pkt);
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let m = next_message(s).unwrap_or_else(|| panic!("EOF while running {sql:?}"));
        match m.tag {
            b'D' => {
                let n = u16::from_be_bytes([m.body[0], m.body[1]]) as usize;
                let mut rest = &m.body[2..];
                let mut row = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = be_u32(rest) as i32;
                    rest = &rest[4..];
                    if len < 0 {
                        row.push(None);
                    } else {
                        let len = len as usize;
                        row.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
                        rest = &rest[len..];
                    }
                }
                rows.push(row);
            }
            b'E' => error = Some(error_fields(&m.body)),
            b'Z' => return error.map_or(Ok(rows), Err),
            _ => {}
        }
    }
}

/// The single value of a one-row, one-column query.
fn raw_value(s: &mut TcpStream, sql: &str) -> String {
    let rows = raw_query(s, sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// A raw trust login as trust_user to `db`; returns the socket, ready for queries.
fn raw_login(pooler: &Pooler, db: &str, extra: &[(&str, &str)]) -> (TcpStream, Login) {
    let mut s = raw_connect(pooler);
    let mut params = vec![("user", TRUST_USER), ("database", db)];
    params.extend_from_slice(extra);
    send(&mut s, &startup_packet(3, 0, &params));
    let login = read_login(&mut s);
    (s, login)
}

fn terminate(s: &mut TcpStream) {
    send(s, &[b'X', 0, 0, 0, 4]);
}

/// A postgres-crate client as trust_user; `app` names it in pg_stat_activity.
fn client(pooler: &Pooler, db: &str, app: &str) -> postgres::Client {
    let mut config = pooler.client_config(TRUST_USER, "", db);
    config.application_name(app);
    config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to {db}: {e:?}\n{}", pooler.log()))
}

fn simple_value(c: &mut postgres::Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// A quick end-to-end check that the pooler still serves a new client.
fn assert_serves(pooler: &Pooler) {
    let (mut s, login) = raw_login(pooler, "app", &[]);
    assert_eq!(login.ready, Some(b'I'));
    assert_eq!(raw_value(&mut s, "SELECT 40 + 2"), "42");
    terminate(&mut s);
}

// ---------------------------------------------------------------------------
// SSL / GSS encryption requests and protocol version negotiation
// ---------------------------------------------------------------------------

#[test]
fn ssl_request_is_refused_then_startup_logs_in() {
    let pooler = start_trust_pooler("");
    let mut s = raw_connect(&pooler);
    send(&mut s, &request_packet(SSL_REQUEST));
    assert_eq!(read_single_byte_answer(&mut s), b'N');
    send(
        &mut s,
        &startup_packet(3, 0, &[("user", TRUST_USER), ("database", "app")]),
    );
    let login = read_login(&mut s);
    assert_eq!(login.ready, Some(b'I'));
    assert!(
        login.negotiate.is_none(),
        "3.0 needs no negotiation: {login:?}"
    );
    assert_eq!(raw_value(&mut s, "SELECT current_user"), TRUST_USER);
}

#[test]
fn gssenc_request_is_refused_then_startup_logs_in() {
    let pooler = start_trust_pooler("");
    let mut s = raw_connect(&pooler);
    send(&mut s, &request_packet(GSSENC_REQUEST));
    assert_eq!(read_single_byte_answer(&mut s), b'N');
    // libpq falls back to SSLRequest after a refused GSSENCRequest.
    send(&mut s, &request_packet(SSL_REQUEST));
    assert_eq!(read_single_byte_answer(&mut s), b'N');
    send(
        &mut s,
        &startup_packet(3, 0, &[("user", TRUST_USER), ("database", "app")]),
    );
    let login = read_login(&mut s);
    assert_eq!(login.ready, Some(b'I'));
    assert_eq!(raw_value(&mut s, "SELECT 1"), "1");
}

/// The NegotiateProtocolVersion body: newest version and unknown options.
fn parse_negotiate(body: &[u8]) -> (u32, Vec<String>) {
    let version = be_u32(body);
    let n = be_u32(&body[4..]) as usize;
    let mut rest = &body[8..];
    let mut names = Vec::new();
    for _ in 0..n {
        let (name, tail) = cstr(rest);
        names.push(name);
        rest = tail;
    }
    assert!(
        rest.is_empty(),
        "trailing bytes in NegotiateProtocolVersion"
    );
    (version, names)
}

#[test]
fn protocol_3_2_startup_gets_negotiate_protocol_version() {
    let pooler = start_trust_pooler("");
    let mut s = raw_connect(&pooler);
    send(
        &mut s,
        &startup_packet(3, 2, &[("user", TRUST_USER), ("database", "app")]),
    );
    let login = read_login(&mut s);
    let body = login
        .negotiate
        .clone()
        .unwrap_or_else(|| panic!("no NegotiateProtocolVersion: {login:?}"));
    assert_eq!(parse_negotiate(&body), (3 << 16, vec![]));
    assert_eq!(login.tags.first(), Some(&'v'), "{:?}", login.tags);
    assert_eq!(login.tags.get(1), Some(&'R'), "{:?}", login.tags);
    assert_eq!(login.ready, Some(b'I'));
    // Having agreed on 3.0, the key is the 4-byte one.
    assert!(login.backend_key.is_some());
    assert_eq!(raw_value(&mut s, "SELECT 2"), "2");
}

#[test]
fn pq_options_get_negotiate_protocol_version() {
    let pooler = start_trust_pooler("");
    let mut s = raw_connect(&pooler);
    send(
        &mut s,
        &startup_packet(
            3,
            0,
            &[
                ("user", TRUST_USER),
                ("_pq_.foo", "bar"),
                ("database", "app"),
            ],
        ),
    );
    let login = read_login(&mut s);
    let body = login
        .negotiate
        .clone()
        .unwrap_or_else(|| panic!("no NegotiateProtocolVersion: {login:?}"));
    assert_eq!(
        parse_negotiate(&body),
        (3 << 16, vec!["_pq_.foo".to_string()])
    );
    assert_eq!(login.tags.first(), Some(&'v'), "{:?}", login.tags);
    assert_eq!(login.ready, Some(b'I'));
    assert_eq!(raw_value(&mut s, "SELECT 3"), "3");

    // Both at once: 3.2 and two options, named in the order sent.
    let mut s = raw_connect(&pooler);
    send(
        &mut s,
        &startup_packet(
            3,
            2,
            &[
                ("user", TRUST_USER),
                ("database", "app"),
                ("_pq_.a", "1"),
                ("_pq_.b", "2"),
            ],
        ),
    );
    let login = read_login(&mut s);
    let (version, names) = parse_negotiate(login.negotiate.as_deref().expect("negotiate"));
    assert_eq!(version, 3 << 16);
    assert_eq!(names, ["_pq_.a", "_pq_.b"]);
    assert_eq!(login.ready, Some(b'I'));
}

#[test]
fn unsupported_protocol_versions_are_refused() {
    let pooler = start_trust_pooler("");
    for (major, minor) in [(2u16, 0u16), (4, 0), (1, 0), (0x7a3c, 0x19e5)] {
        let what = format!("protocol {major}.{minor}");
        let mut s = raw_connect(&pooler);
        send(
            &mut s,
            &startup_packet(major, minor, &[("user", TRUST_USER), ("database", "app")]),
        );
        let fields = expect_fatal_and_close(&mut s, &what);
        assert_error_prefix(
            &fields,
            "0A000",
            &format!("unsupported frontend protocol {major}.{minor}"),
            &what,
        );
    }
    assert_serves(&pooler);
}

// ---------------------------------------------------------------------------
// Malformed startup packets
// ---------------------------------------------------------------------------

#[test]
fn bad_startup_lengths_are_refused() {
    let pooler = start_trust_pooler("");
    for len in [0u32, 4, 7, 10_001, 0x7fff_ffff, 0xffff_ffff] {
        let what = format!("length {len}");
        let mut s = raw_connect(&pooler);
        let mut pkt = len.to_be_bytes().to_vec();
        pkt.extend_from_slice(&(3u32 << 16).to_be_bytes());
        // Only as many bytes as the length claims (never more than the header).
        pkt.truncate((len as usize).clamp(4, 8));
        send(&mut s, &pkt);
        let fields = expect_fatal_and_close(&mut s, &what);
        assert_error_prefix(&fields, "08P01", "invalid length of startup packet", &what);
    }
    assert_serves(&pooler);
}

#[test]
fn startup_with_too_many_parameters_is_refused_by_length() {
    let pooler = start_trust_pooler("");
    let mut params = vec![("user", TRUST_USER), ("database", "app")];
    params.extend(std::iter::repeat_n(("p", ""), 10_000));
    let pkt = startup_packet(3, 0, &params);
    assert!(pkt.len() > 10_000);
    let mut s = raw_connect(&pooler);
    send(&mut s, &pkt);
    let fields = expect_fatal_and_close(&mut s, "10000 parameters");
    assert_error(
        &fields,
        "08P01",
        &format!("invalid length of startup packet ({})", pkt.len()),
        "10000 parameters",
    );
    assert_serves(&pooler);
}

#[test]
fn startup_without_terminator_is_refused() {
    let pooler = start_trust_pooler("");
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0trust_user\0database\0app\0");
    let mut s = raw_connect(&pooler);
    send(&mut s, &with_length(body));
    let fields = expect_fatal_and_close(&mut s, "no terminator");
    assert_error_prefix(
        &fields,
        "08P01",
        "invalid startup packet layout",
        "no terminator",
    );
    assert_serves(&pooler);
}

#[test]
fn startup_without_user_is_refused() {
    let pooler = start_trust_pooler("");
    for params in [
        vec![("database", "app")],
        vec![("user", ""), ("database", "app")],
    ] {
        let mut s = raw_connect(&pooler);
        send(&mut s, &startup_packet(3, 0, &params));
        let what = format!("{params:?}");
        let fields = expect_fatal_and_close(&mut s, &what);
        assert_error(
            &fields,
            "28000",
            "no PostgreSQL user name specified in startup packet",
            &what,
        );
    }
    assert_serves(&pooler);
}

#[test]
fn unknown_database_is_refused() {
    let pooler = start_trust_pooler("");
    let mut s = raw_connect(&pooler);
    send(
        &mut s,
        &startup_packet(3, 0, &[("user", TRUST_USER), ("database", "nosuchdb")]),
    );
    let fields = expect_fatal_and_close(&mut s, "nosuchdb");
    // PgBouncer's SQLSTATE, told after authentication (here trust).
    assert_error(&fields, "08P01", "no such database: nosuchdb", "nosuchdb");

    // The same through a real client library.
    let err = pooler
        .try_connect(TRUST_USER, "", "nosuchdb")
        .map(|_| ())
        .expect_err("login to an unknown database succeeded");
    assert_eq!(err.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{err:?}");
    assert_serves(&pooler);
}

/// Replication connections themselves are tests/replication.rs's.
#[test]
fn replication_false_is_an_ordinary_connection() {
    let pooler = start_trust_pooler("");
    let (mut s, login) = raw_login(&pooler, "app", &[("replication", "false")]);
    assert_eq!(login.ready, Some(b'I'));
    assert_eq!(raw_value(&mut s, "SELECT 1"), "1");
}

// ---------------------------------------------------------------------------
// The welcome
// ---------------------------------------------------------------------------

#[test]
fn welcome_reports_parameters_key_and_ready_for_query() {
    let pooler = start_trust_pooler("");
    // A first client fills the pool's welcome with the server's defaults.
    let (mut s, login) = raw_login(&pooler, "app", &[]);
    for name in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
        "application_name",
    ] {
        assert!(
            login.param(name).is_some(),
            "no ParameterStatus {name}: {login:?}"
        );
    }
    let version = login.param("server_version").unwrap();
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "server_version {version:?}"
    );
    assert_eq!(login.param("client_encoding"), Some("UTF8"));
    assert_eq!(login.param("integer_datetimes"), Some("on"));
    assert_eq!(login.param("standard_conforming_strings"), Some("on"));
    assert_eq!(login.param("TimeZone"), Some("UTC"), "the server's default");
    let (pid, key) = login.backend_key.expect("BackendKeyData");
    assert_eq!(login.ready, Some(b'I'));
    // Order: AuthenticationOk first, ParameterStatus..., BackendKeyData, then ReadyForQuery last.
    assert_eq!(login.tags.first(), Some(&'R'), "{:?}", login.tags);
    let k = login.tags.iter().position(|&t| t == 'K').unwrap();
    assert_eq!(k, login.tags.len() - 2, "{:?}", login.tags);
    assert!(
        login.tags[1..k].iter().all(|&t| t == 'S'),
        "{:?}",
        login.tags
    );

    // A second client's own TimeZone and application_name come back to it,
    // although it shares the pool (and the server) with the first.
    terminate(&mut s);
    let (mut s2, login2) = raw_login(
        &pooler,
        "app",
        &[
            ("TimeZone", "Europe/Helsinki"),
            ("application_name", "proto_welcome"),
        ],
    );
    assert_eq!(
        login2.param("TimeZone"),
        Some("Europe/Helsinki"),
        "{login2:?}"
    );
    assert_eq!(
        login2.param("application_name"),
        Some("proto_welcome"),
        "{login2:?}"
    );
    assert_eq!(login2.ready, Some(b'I'));
    let (pid2, key2) = login2.backend_key.expect("BackendKeyData");
    assert_ne!(
        (pid, key),
        (pid2, key2),
        "two clients got the same cancel key"
    );
    assert_eq!(raw_value(&mut s2, "SHOW TimeZone"), "Europe/Helsinki");
    assert_eq!(raw_value(&mut s2, "SHOW application_name"), "proto_welcome");
}

// ---------------------------------------------------------------------------
// Connection ends
// ---------------------------------------------------------------------------

#[test]
fn terminate_closes_the_connection_and_the_pool_keeps_working() {
    let pooler = start_trust_pooler("");
    let (mut s, _) = raw_login(&pooler, "app", &[]);
    assert_eq!(raw_value(&mut s, "SELECT 1"), "1");
    terminate(&mut s);
    // The pooler says nothing more and closes.
    assert!(next_message(&mut s).is_none(), "the connection stayed open");
    // Its server went back to the pool and serves the next client.
    assert_serves(&pooler);
    assert_serves(&pooler);
    let log = pooler.log();
    assert!(!log.contains("panicked"), "the pooler panicked:\n{log}");
}

#[test]
fn half_a_startup_packet_then_close_leaves_the_worker_serving() {
    let pooler = start_trust_pooler("");
    let workers = pooler.wait_for_children(1, secs(5));
    let pkt = startup_packet(3, 0, &[("user", TRUST_USER), ("database", "app")]);
    for cut in [2, 6, pkt.len() / 2, pkt.len() - 1] {
        let mut s = raw_connect(&pooler);
        send(&mut s, &pkt[..cut]);
        drop(s);
    }
    // A client in the middle of its own startup meanwhile is unaffected.
    let mut slow = raw_connect(&pooler);
    send(&mut slow, &pkt[..pkt.len() / 2]);
    assert_serves(&pooler);
    send(&mut slow, &pkt[pkt.len() / 2..]);
    let login = read_login(&mut slow);
    assert_eq!(login.ready, Some(b'I'));
    assert_eq!(
        pooler.children(),
        workers,
        "the worker was replaced\n{}",
        pooler.log()
    );
}

// ---------------------------------------------------------------------------
// Cancel requests
// ---------------------------------------------------------------------------

#[test]
fn cancel_request_with_unknown_key_is_ignored() {
    let pooler = start_trust_pooler("");
    let workers = pooler.wait_for_children(1, secs(5));
    let app = "proto_cancel_unknown";
    let mut victim = client(&pooler, "app", app);
    let sleeper = thread::spawn(move || {
        let r = victim.simple_query("SELECT pg_sleep(1.5)");
        (r.map(|_| ()), victim)
    });
    let pg = shared_pg();
    assert!(
        wait_until(secs(5), || running_sleeps(pg, app) == 1),
        "the query did not start"
    );
    let mut rng = Rng::new();
    for _ in 0..5 {
        let mut s = raw_connect(&pooler);
        send(&mut s, &cancel_packet(rng.next(), rng.next()));
        // A cancel connection gets no answer; it is closed.
        assert!(
            next_message(&mut s).is_none(),
            "a cancel request got an answer"
        );
    }
    let (result, mut victim) = sleeper.join().unwrap();
    result.expect("an unknown cancel key cancelled someone's query");
    assert_eq!(simple_value(&mut victim, "SELECT 7"), "7");
    assert_serves(&pooler);
    assert_eq!(pooler.children(), workers);
}

/// Backends of application `app` now running pg_sleep.
fn running_sleeps(pg: &PgServer, app: &str) -> i64 {
    pg.admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = {} \
         AND state = 'active' AND query LIKE '%pg_sleep%'",
        quote_literal(app)
    ))
    .trim()
    .parse()
    .unwrap()
}

fn cancel_running_query(db: &str, app: &str) {
    let pooler = start_trust_pooler("");
    let pg = shared_pg();
    let mut c = client(&pooler, db, app);
    let token = c.cancel_token();
    let sleeper = thread::spawn(move || {
        let r = c.simple_query("SELECT pg_sleep(10)");
        (r.map(|_| ()), Instant::now(), c)
    });
    assert!(
        wait_until(secs(5), || running_sleeps(pg, app) == 1),
        "{db}: the query did not start\n{}",
        pooler.log()
    );
    let sent = Instant::now();
    token.cancel_query(NoTls).expect("send the cancel request");
    let (result, done, mut c) = sleeper.join().unwrap();
    let err = result.expect_err("the query was not cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{db}: {err:?}");
    let took = done.duration_since(sent);
    assert!(took < secs(2), "{db}: cancelling took {took:?}");
    // Only the query ended: the session carries on.
    assert_eq!(simple_value(&mut c, "SELECT 'still here'"), "still here");
}

#[test]
fn cancel_request_cancels_the_query_in_session_mode() {
    cancel_running_query("app", "proto_cancel_session");
}

#[test]
fn cancel_request_cancels_the_query_in_transaction_mode() {
    cancel_running_query("apptx", "proto_cancel_tx");
}

/// A small xorshift generator: random cancel keys without another crate.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(seed | 1)
    }

    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

// ---------------------------------------------------------------------------
// max_client_conn
// ---------------------------------------------------------------------------

#[test]
fn max_client_conn_refuses_extra_clients() {
    let pooler = start_trust_pooler("max_client_conn: 3");
    let mut clients: Vec<postgres::Client> = (0..3)
        .map(|i| client(&pooler, "app", &format!("proto_maxconn_{i}")))
        .collect();
    for c in &mut clients {
        assert_eq!(simple_value(c, "SELECT 1"), "1");
    }
    let err = pooler
        .try_connect(TRUST_USER, "", "app")
        .map(|_| ())
        .expect_err("a 4th client got in with max_client_conn 3");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("no more connections allowed (max_client_conn)")
    );
    // Raw: the same FATAL, then the pooler hangs up.
    let mut s = raw_connect(&pooler);
    send(
        &mut s,
        &startup_packet(3, 0, &[("user", TRUST_USER), ("database", "app")]),
    );
    let fields = expect_fatal_and_close(&mut s, "4th raw client");
    assert_error(
        &fields,
        "53300",
        "no more connections allowed (max_client_conn)",
        "4th raw client",
    );

    // One leaves: its place is free again (refused clients did not keep any).
    drop(clients.pop());
    let mut newcomer = None;
    assert!(
        wait_until(secs(5), || {
            newcomer = pooler.try_connect(TRUST_USER, "", "app").ok();
            newcomer.is_some()
        }),
        "no login succeeded after a client left\n{}",
        pooler.log()
    );
    let mut newcomer = newcomer.unwrap();
    assert_eq!(simple_value(&mut newcomer, "SELECT 5"), "5");
    // Full again.
    let err = pooler
        .try_connect(TRUST_USER, "", "app")
        .map(|_| ())
        .expect_err("a 4th client got in");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
}

// ---------------------------------------------------------------------------
// Real clients and startup options
// ---------------------------------------------------------------------------

#[test]
fn psql_runs_queries_through_the_pooler() {
    let pooler = start_trust_pooler("");
    for db in ["app", "apptx"] {
        let out = pooler.psql(
            TRUST_USER,
            "",
            db,
            "SELECT 1;\nSHOW TimeZone;\nSET TimeZone = 'Asia/Tokyo';\nSHOW TimeZone;\n",
        );
        assert_eq!(out.expect_success(), "1\nUTC\nAsia/Tokyo\n", "{db}: {out}");
    }
}

#[test]
fn startup_options_are_applied() {
    let pooler = start_trust_pooler("");
    for db in ["app", "apptx"] {
        let mut config = pooler.client_config(TRUST_USER, "", db);
        config
            .application_name("proto_options")
            .options("-c statement_timeout=1234");
        let mut c = config
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("{db}: {e:?}\n{}", pooler.log()));
        assert_eq!(
            simple_value(&mut c, "SHOW statement_timeout"),
            "1234ms",
            "{db}"
        );
        // Still there on the next statement (a new server assignment in transaction mode).
        assert_eq!(
            simple_value(&mut c, "SHOW statement_timeout"),
            "1234ms",
            "{db}"
        );
        // A client without the option shares the servers but not the setting.
        let mut plain = client(&pooler, db, "proto_options_none");
        assert_eq!(
            simple_value(&mut plain, "SHOW statement_timeout"),
            "0",
            "{db}"
        );
    }
}

#[test]
fn extra_float_digits_startup_parameter_is_applied() {
    let pooler = start_trust_pooler("");
    for db in ["app", "apptx"] {
        let (mut s, login) = raw_login(&pooler, db, &[("extra_float_digits", "3")]);
        assert_eq!(login.ready, Some(b'I'));
        assert_eq!(raw_value(&mut s, "SHOW extra_float_digits"), "3", "{db}");
        assert_eq!(raw_value(&mut s, "SHOW extra_float_digits"), "3", "{db}");
        let (mut other, _) = raw_login(&pooler, db, &[("extra_float_digits", "-2")]);
        assert_eq!(
            raw_value(&mut other, "SHOW extra_float_digits"),
            "-2",
            "{db}"
        );
        assert_eq!(raw_value(&mut s, "SHOW extra_float_digits"), "3", "{db}");
        terminate(&mut other);
        terminate(&mut s);
    }
}

/// Holds back what is written to `s` until it is shut down or 200 ms pass (TCP_CORK).
fn cork(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_CORK: {}", std::io::Error::last_os_error());
}

/// psql and libpq send Terminate and their FIN together, so one read brings both: the log
/// says PgBouncer's "client close request" for it, and "client unexpected eof" only for a
/// client that hung up without a word.
#[test]
fn terminate_sent_with_fin_is_logged_as_a_close_request() {
    let pooler = start_trust_pooler("");
    for db in ["app", "apptx"] {
        for terminate in [true, false] {
            let mut s = raw_connect(&pooler);
            send(
                &mut s,
                &startup_packet(3, 0, &[("user", TRUST_USER), ("database", db)]),
            );
            read_login(&mut s);
            assert_eq!(
                raw_query(&mut s, "select 1"),
                Ok(vec![vec![Some("1".into())]])
            );
            let port = format!(":{}:", s.local_addr().unwrap().port());
            // Corked, the Terminate leaves with the FIN in one segment, as it often does
            // from psql: the pooler's one read brings both.
            cork(&s);
            if terminate {
                send(&mut s, &[b'X', 0, 0, 0, 4]);
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let want = if terminate {
                "closing because: client close request"
            } else {
                "closing because: client unexpected eof"
            };
            assert!(
                wait_until(Duration::from_secs(5), || pooler
                    .log()
                    .lines()
                    .any(|l| l.contains(&port) && l.contains(want))),
                "{db}, Terminate {terminate}: no \"{want}\"\n{}",
                common::pg::tail(&pooler.log(), 20)
            );
        }
    }
}

/// login_notify_message: every client gets it as a notice right after its login.
#[test]
fn login_notify_message_greets_every_client() {
    let pooler = start_trust_pooler("login_notify_message: 'you are on pgbouncers'");
    let out = pooler.psql(TRUST_USER, "", "app", "SELECT 1");
    assert!(out.success(), "{out}");
    assert!(
        out.stderr.contains("NOTICE:  you are on pgbouncers"),
        "{out}"
    );
}
