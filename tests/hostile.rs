//! Hostile clients: hundreds of malformed, oversized, truncated and slow openings (and bad messages after login) must each end in an ErrorResponse or a close, without crashing a worker, leaking descriptors or disturbing anyone else.
//!
//! Every test runs its own pooler (`--workers 2`, trust auth, transaction
//! pooling, `client_login_timeout: 1`, `max_packet_size: 65536`) inside a
//! [`Fixture`], which keeps two well-behaved clients running `SELECT 1` the
//! whole time (one persistent, one reconnecting so it visits both workers)
//! and, at the end, checks that they saw no error, that the worker pids are
//! the ones from the start, that nothing panicked, and that the workers'
//! descriptor counts came back to where they were.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::wire::{
    error_fields, message, read_message, startup_packet as startup, Message as Msg,
};
use common::*;
use postgres::SimpleQueryMessage;

const WORKERS: usize = 2;
/// `client_login_timeout` in the config, in seconds.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// `max_packet_size` in the config.
const MAX_PACKET: usize = 65536;
/// The janitor's period plus scheduling slack on a loaded 2-core machine:
/// how late a timeout may fire.
const TIMER_SLACK: Duration = Duration::from_millis(1200);
/// How long any hostile connection may stay open at most: the login
/// timeout, its slack, and more margin for a busy debug build.
const CLOSE_WITHIN: Duration = Duration::from_secs(6);
/// Descriptors a worker may hold above its starting count at the end
/// (a server connection or two opened for the well-behaved clients).
const FD_MARGIN: usize = 3;
/// Growth of a worker's peak RSS that counts as "did not buffer it".
const HWM_MARGIN_KB: u64 = 4 * 1024;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// A tiny deterministic RNG: reproducible cases without another crate
// ---------------------------------------------------------------------------

/// xorshift64*: plenty for picking test cases; the seed is in every message.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// The pooler and the well-behaved clients around every test
// ---------------------------------------------------------------------------

/// The pooler's config: `auth` is the auth_type (and its files), `extra`
/// more top-level lines.
fn config(auth: &str, extra: &str) -> String {
    let pg = shared_pg();
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         {auth}\n\
         pool_mode: transaction\n\
         default_pool_size: 10\n\
         max_client_conn: 2000\n\
         client_login_timeout: 1\n\
         max_packet_size: {MAX_PACKET}\n\
         query_wait_timeout: 30\n\
         server_idle_timeout: 1\n\
         {extra}\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
        port = pg.port()
    )
}

/// Trust for everyone (raw clients need no password exchange).
const TRUST: &str = "auth_type: trust";

/// Number of open descriptors of `pid`.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
fn status_kb(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Well-behaved clients running `SELECT 1` through the pooler until stopped:
/// one connection held the whole time, and one that reconnects every ten
/// queries (so over a test it lands on both workers).
struct Background {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Per thread: what it is waiting for and since when (the postgres
    /// crate has no client-side timeout, so a pooler that never answers
    /// shows up here instead of hanging the test).
    busy: Vec<Busy>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What a well-behaved client waits for, and since when.
type Busy = Arc<Mutex<Option<(Instant, String)>>>;

/// Marks `busy` with `what` while `f` runs.
fn busy_with<T>(busy: &Mutex<Option<(Instant, String)>>, what: &str, f: impl FnOnce() -> T) -> T {
    *busy.lock().unwrap() = Some((Instant::now(), what.to_string()));
    let r = f();
    *busy.lock().unwrap() = None;
    r
}

impl Background {
    fn start(pooler: &Pooler, user: &str, password: &str) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let config = pooler.client_config(user, password, APP_DB);
        let busy: Vec<_> = (0..2).map(|_| Arc::new(Mutex::new(None))).collect();
        let threads = [false, true]
            .into_iter()
            .zip(busy.iter().cloned())
            .map(|(reconnect, busy)| {
                let (stop, queries, errors, config) = (
                    stop.clone(),
                    queries.clone(),
                    errors.clone(),
                    config.clone(),
                );
                let who = if reconnect {
                    "the reconnecting client"
                } else {
                    "the persistent client"
                };
                thread::spawn(move || {
                    let fail = |what: String| errors.lock().unwrap().push(format!("{who}: {what}"));
                    'outer: while !stop.load(Ordering::Relaxed) {
                        let mut client = match busy_with(&busy, &format!("{who}: connect"), || {
                            config.connect(postgres::NoTls)
                        }) {
                            Ok(c) => c,
                            Err(e) => {
                                fail(format!("connect: {e:?}"));
                                thread::sleep(ms(100));
                                continue;
                            }
                        };
                        let mut n: i32 = 0;
                        while !stop.load(Ordering::Relaxed) && (!reconnect || n < 10) {
                            match busy_with(&busy, &format!("{who}: SELECT 1"), || {
                                client.simple_query("SELECT 1")
                            }) {
                                Ok(rows) => {
                                    let one = rows.iter().find_map(|m| match m {
                                        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                                        _ => None,
                                    });
                                    if one.as_deref() != Some("1") {
                                        fail(format!("SELECT 1 returned {one:?}"));
                                    }
                                    queries.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    fail(format!("SELECT 1: {e:?}"));
                                    continue 'outer;
                                }
                            }
                            // The persistent client also uses a named
                            // prepared statement, which the pooler re-prepares
                            // on whichever server it gets: hostile clients
                            // share those servers.
                            if !reconnect {
                                match busy_with(&busy, &format!("{who}: prepared SELECT"), || {
                                    client.query_one("SELECT $1::int4 + 1", &[&n])
                                }) {
                                    Ok(row) if row.get::<_, i32>(0) == n + 1 => {}
                                    Ok(row) => fail(format!(
                                        "SELECT {n} + 1 returned {:?}",
                                        row.get::<_, i32>(0)
                                    )),
                                    Err(e) => {
                                        fail(format!("prepared SELECT: {e:?}"));
                                        continue 'outer;
                                    }
                                }
                            }
                            n += 1;
                            thread::sleep(ms(5));
                        }
                    }
                })
            })
            .collect();
        Background {
            stop,
            queries,
            errors,
            busy,
            threads,
        }
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns how many queries they ran and their errors.
    /// A client still stuck after 10 s counts as an error (its thread is
    /// left behind rather than hanging the test).
    fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        wait_until(secs(10), || self.threads.iter().all(|t| t.is_finished()));
        let mut stuck = Vec::new();
        for (t, busy) in self.threads.drain(..).zip(&self.busy) {
            if t.is_finished() {
                t.join().expect("background client thread panicked");
            } else if let Some((since, what)) = busy.lock().unwrap().clone() {
                stuck.push(format!(
                    "no answer to {what} for {:.1?}: the pooler stalled a well-behaved client",
                    since.elapsed()
                ));
            }
        }
        let mut errors = std::mem::take(&mut *self.errors.lock().unwrap());
        errors.extend(stuck);
        (self.queries(), errors)
    }
}

/// A pooler with the well-behaved clients running, and what the workers
/// looked like before the hostile part began.
struct Fixture {
    pooler: Pooler,
    workers: Vec<i32>,
    background: Option<Background>,
    fds_before: Vec<usize>,
    hwm_before_kb: Vec<u64>,
    started: Instant,
}

impl Fixture {
    /// The trust-auth pooler most tests use.
    fn start() -> Fixture {
        Fixture::with(&config(TRUST, ""), &[], TRUST_USER, "")
    }

    /// A pooler on `yaml` (with `files` written into its dir first), the
    /// well-behaved clients logging in as `user`/`password`.
    fn with(yaml: &str, files: &[(&str, &str)], user: &str, password: &str) -> Fixture {
        let setup = PoolerSetup::new();
        for (name, contents) in files {
            setup.write_file(name, contents);
        }
        let pooler = setup.start_with_args(yaml, &["--workers", &WORKERS.to_string()]);
        let workers = pooler.wait_for_children(WORKERS, secs(10));
        let background = Background::start(&pooler, user, password);
        // Warm up: the well-behaved clients have logged in and the pool
        // has its servers before the descriptor counts are taken.
        assert!(
            wait_until(secs(10), || background.queries() >= 40),
            "the well-behaved clients did not get going\n--- log ---\n{}",
            pooler.log()
        );
        let fds_before = workers.iter().map(|&p| fd_count(p)).collect();
        let hwm_before_kb = workers.iter().map(|&p| status_kb(p, "VmHWM")).collect();
        Fixture {
            pooler,
            workers,
            background: Some(background),
            fds_before,
            hwm_before_kb,
            started: Instant::now(),
        }
    }

    fn port(&self) -> u16 {
        self.pooler.port()
    }

    /// Fails if either worker's peak RSS grew by more than `HWM_MARGIN_KB`.
    fn assert_peak_rss_small(&self, what: &str) {
        for (i, &pid) in self.workers.iter().enumerate() {
            let now = status_kb(pid, "VmHWM");
            assert!(
                now <= self.hwm_before_kb[i] + HWM_MARGIN_KB,
                "{what}: worker {pid}'s peak RSS went from {} kB to {now} kB: \
                 it buffered what it should have refused",
                self.hwm_before_kb[i]
            );
        }
    }

    /// The checks every hostile test ends with.
    fn finish(mut self) {
        let elapsed = self.started.elapsed();
        let background = self.background.take().expect("background clients");
        let before = background.queries();
        // Service continued during the whole test, not just before it.
        assert!(
            wait_until(secs(10), || background.queries() >= before + 20),
            "the well-behaved clients stalled\n--- log tail ---\n{}",
            common::pg::tail(&self.pooler.log(), 60)
        );
        let (queries, errors) = background.stop();
        let log = self.pooler.log();
        assert!(
            errors.is_empty(),
            "the well-behaved clients saw {} errors (of {queries} queries), first: {:?}\n\
             --- log tail ---\n{}",
            errors.len(),
            &errors[..errors.len().min(5)],
            common::pg::tail(&log, 80)
        );
        let now = self.pooler.children();
        assert_eq!(
            now,
            self.workers,
            "the worker processes changed (a worker crashed?)\n--- log tail ---\n{}",
            common::pg::tail(&log, 80)
        );
        for bad in ["panicked", "respawning", "not respawning"] {
            assert!(
                !log.contains(bad),
                "the log says `{bad}`:\n{}",
                log.lines()
                    .filter(|l| l.contains(bad))
                    .take(10)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Every hostile connection is closed by now; idle servers close
        // after server_idle_timeout (1 s), so the counts settle back.
        let mut counts = Vec::new();
        let settled = wait_until(secs(15), || {
            counts = self.workers.iter().map(|&p| fd_count(p)).collect();
            counts
                .iter()
                .zip(&self.fds_before)
                .all(|(now, before)| *now <= before + FD_MARGIN)
        });
        assert!(
            settled,
            "worker descriptors leaked: before {:?}, after {counts:?} (margin {FD_MARGIN}) \
             for workers {:?}",
            self.fds_before, self.workers
        );
        eprintln!(
            "[hostile] {}: {queries} background queries, 0 errors, fds {:?} -> {counts:?}, \
             hostile part {elapsed:.1?}",
            thread::current().name().unwrap_or("?"),
            self.fds_before
        );
    }
}

// ---------------------------------------------------------------------------
// Raw protocol
// ---------------------------------------------------------------------------

fn raw_connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the pooler");
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(secs(10))).unwrap();
    s
}

fn with_length(body: &[u8]) -> Vec<u8> {
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(body);
    pkt
}

fn good_startup() -> Vec<u8> {
    startup(&[("user", TRUST_USER), ("database", APP_DB)])
}

fn request(code: u32) -> Vec<u8> {
    with_length(&code.to_be_bytes())
}

fn cancel(pid: u32, key: u32) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&key.to_be_bytes());
    with_length(&body)
}

/// A message header declaring `len` (the length field's value) with no body.
fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&len.to_be_bytes());
    m
}

/// What the pooler sent back, and whether it closed the connection.
#[derive(Debug)]
struct Reply {
    bytes: Vec<u8>,
    /// EOF or reset within the time allowed.
    closed: bool,
    /// From the start of the exchange to the close (or to giving up).
    elapsed: Duration,
}

/// Reads until the pooler closes, or until `within` since `start` passed.
fn read_to_close(s: &mut TcpStream, start: Instant, within: Duration) -> Reply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            break false;
        }
        s.set_read_timeout(Some(left.max(ms(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            // A reset after the pooler closed with our junk unread.
            Err(_) => break true,
        }
    };
    Reply {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// After a client sent something: reads whatever the pooler answers until
/// it has been quiet for 150 ms (so the messages are processed and their
/// answers relayed, not cut short by our EOF), then half-closes and reads
/// to the close. The bytes are everything received.
fn answer_then_close(s: &mut TcpStream, start: Instant) -> Reply {
    let mut bytes = Vec::new();
    loop {
        let r = read_to_close(s, Instant::now(), Duration::from_millis(150));
        let quiet = r.bytes.is_empty();
        bytes.extend(r.bytes);
        if r.closed {
            return Reply {
                bytes,
                closed: true,
                elapsed: start.elapsed(),
            };
        }
        if quiet || start.elapsed() > CLOSE_WITHIN {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut r = read_to_close(s, start, CLOSE_WITHIN * 2);
    bytes.extend(std::mem::take(&mut r.bytes));
    r.bytes = bytes;
    r
}

/// Connects, sends `opening` (write errors are fine: the pooler may close
/// while we write), optionally half-closes, and waits for the close.
fn exchange(port: u16, opening: &[u8], half_close: bool) -> Reply {
    let start = Instant::now();
    let mut s = raw_connect(port);
    let _ = s.write_all(opening);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    read_to_close(&mut s, start, CLOSE_WITHIN)
}

/// Splits a backend byte stream into messages after `n_answers` one-byte
/// SSL/GSS answers (each must be `N`); a truncated or bad frame is an error
/// (it would mean the pooler desynced its own output).
fn parse_backend(bytes: &[u8], n_answers: usize) -> Result<Vec<Msg>, String> {
    let mut rest = bytes;
    for _ in 0..n_answers {
        match rest.split_first() {
            Some((b'N', tail)) => rest = tail,
            // The pooler may close instead of answering the next request.
            None => return Ok(Vec::new()),
            Some((b, _)) => return Err(format!("expected the answer N, got {:?}", *b as char)),
        }
    }
    let mut msgs = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(format!("truncated message header {rest:?}"));
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(format!("message {:?} with length {len}", rest[0] as char));
        }
        let Some(body) = rest.get(5..1 + len) else {
            return Err(format!("truncated message {:?}", rest[0] as char));
        };
        msgs.push(Msg {
            tag: rest[0],
            body: body.to_vec(),
        });
        rest = &rest[1 + len..];
    }
    Ok(msgs)
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The connection was closed; whatever came back is well framed and, if
/// anything came, it ends with a FATAL ErrorResponse.
fn check_rejected(
    reply: &Reply,
    n_answers: usize,
) -> Result<Option<HashMap<char, String>>, String> {
    if !reply.closed {
        return Err(format!(
            "still open after {:?} (got {} bytes)",
            reply.elapsed,
            reply.bytes.len()
        ));
    }
    let msgs = parse_backend(&reply.bytes, n_answers)?;
    let Some(last) = msgs.last() else {
        return Ok(None);
    };
    if last.tag != b'E' {
        return Err(format!(
            "closed after {:?} without a final ErrorResponse",
            tags(&msgs)
        ));
    }
    let fields = error_fields(&last.body);
    if fields.get(&'S').map(String::as_str) != Some("FATAL") || !fields.contains_key(&'C') {
        return Err(format!("not a FATAL error with a code: {fields:?}"));
    }
    Ok(Some(fields))
}

/// Like [`check_rejected`] but an ErrorResponse is required, with one of
/// `codes` and a message containing `text`.
fn check_fatal(reply: &Reply, n_answers: usize, codes: &[&str], text: &str) -> Result<(), String> {
    let fields = check_rejected(reply, n_answers)?
        .ok_or_else(|| format!("closed after {:?} without an ErrorResponse", reply.elapsed))?;
    let code = fields.get(&'C').cloned().unwrap_or_default();
    let msg = fields.get(&'M').cloned().unwrap_or_default();
    if !codes.contains(&code.as_str()) || !msg.contains(text) {
        return Err(format!(
            "expected {codes:?} with `{text}`, got {code} `{msg}`"
        ));
    }
    Ok(())
}

/// Closed, and what came back is well framed (anything PostgreSQL may say).
fn check_closed(reply: &Reply) -> Result<Vec<Msg>, String> {
    if !reply.closed {
        return Err(format!("still open after {:?}", reply.elapsed));
    }
    parse_backend(&reply.bytes, 0)
}

/// Sends `opening` and reads up to the first ReadyForQuery (trust only).
fn login_with(port: u16, opening: &[u8]) -> Result<TcpStream, String> {
    let mut s = raw_connect(port);
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(opening)
        .map_err(|e| format!("sending the startup packet: {e}"))?;
    let mut got = Vec::new();
    loop {
        let m = read_message(&mut s)
            .map_err(|e| format!("login: reading a message: {e}"))?
            .ok_or_else(|| format!("login: closed after {:?}", tags(&got)))?;
        match m.tag {
            b'Z' => return Ok(s),
            b'E' => return Err(format!("login failed: {:?}", error_fields(&m.body))),
            _ => got.push(m),
        }
    }
}

/// Logs in to `app` with trust and reads up to the first ReadyForQuery.
fn login(port: u16) -> Result<TcpStream, String> {
    login_with(port, &good_startup())
}

/// How many SSL/GSS requests (8 bytes each) open `bytes`: the one-byte
/// answers the pooler owes before any message.
fn leading_requests(bytes: &[u8]) -> usize {
    bytes
        .chunks_exact(8)
        .take_while(|c| {
            let len = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let code = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST)
        })
        .count()
}

/// Runs `cases` closures on `threads` threads; returns every failure.
fn run_parallel<F>(threads: usize, cases: usize, case: F) -> Vec<String>
where
    F: Fn(usize) -> Result<(), String> + Sync,
{
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= cases {
                    break;
                }
                if let Err(e) = case(i) {
                    failures.lock().unwrap().push(format!("case {i}: {e}"));
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

fn assert_no_failures(what: &str, failures: &[String], pooler: &Pooler) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures, first ones:\n{}\n--- log tail ---\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n"),
        common::pg::tail(&pooler.log(), 40)
    );
}

// ---------------------------------------------------------------------------
// Hostile openings, one generator per kind
// ---------------------------------------------------------------------------

/// A random opening (seeded by `seed`) and whether to half-close after it.
fn random_opening(seed: u64) -> (Vec<u8>, bool) {
    let mut rng = Rng::new(seed);
    let half_close = rng.chance(50);
    let bytes = match rng.below(5) {
        // Pure noise, most of it with an absurd length.
        0 => {
            let n = rng.range(1, 600) as usize;
            rng.bytes(n)
        }
        // A plausible length and a random code: gets past the length check.
        1 => {
            let n = rng.range(0, 300) as usize;
            let mut body = rng.u32().to_be_bytes().to_vec();
            body.extend(rng.bytes(n));
            let mut pkt = with_length(&body);
            // Sometimes the declared length is off: short or long.
            if rng.chance(30) {
                let declared = rng.range(8, 400) as u32;
                pkt[..4].copy_from_slice(&declared.to_be_bytes());
            }
            pkt
        }
        // Protocol 3.0 with a random parameter area (NULs sprinkled in),
        // sometimes cut short so the pooler waits for the rest.
        2 => {
            let n = rng.range(0, 400) as usize;
            let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
            for _ in 0..n {
                body.push(if rng.chance(15) { 0 } else { rng.next() as u8 });
            }
            let mut pkt = with_length(&body);
            if rng.chance(25) {
                let keep = rng.range(1, pkt.len() as u64 - 1) as usize;
                pkt.truncate(keep);
            }
            pkt
        }
        // SSL or GSS requests (maybe several), then noise.
        3 => {
            let mut pkt = Vec::new();
            for _ in 0..rng.range(1, 3) {
                pkt.extend(request(*rng.pick(&[SSL_REQUEST, GSSENC_REQUEST])));
            }
            let n = rng.range(0, 300) as usize;
            pkt.extend(rng.bytes(n));
            pkt
        }
        // A special code with a wrong-sized or random body.
        _ => {
            let code = *rng.pick(&[
                SSL_REQUEST,
                GSSENC_REQUEST,
                CANCEL_REQUEST,
                PROTOCOL_3_0,
                0x0002_0000,
                0x0003_0001,
                0x0004_0000,
                80_877_105,
            ]);
            let n = rng.range(0, 40) as usize;
            let mut body = code.to_be_bytes().to_vec();
            body.extend(rng.bytes(n));
            with_length(&body)
        }
    };
    (bytes, half_close)
}

fn random_case(port: u16, seed: u64) -> Result<(), String> {
    let (opening, half_close) = random_opening(seed);
    let reply = exchange(port, &opening, half_close);
    check_rejected(&reply, leading_requests(&opening))
        .map(drop)
        .map_err(|e| {
            format!(
                "seed {seed} (half_close {half_close}, {} bytes): {e}",
                opening.len()
            )
        })
}

/// Random junk after a successful login, then a half-close: whatever
/// PostgreSQL makes of it, the connection ends and nothing crashes.
fn random_after_login_case(port: u16, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut s = login(port).map_err(|e| format!("seed {seed}: {e}"))?;
    let start = Instant::now();
    let mut junk = Vec::new();
    if rng.chance(50) {
        // A known tag with a random (mostly small) length and random body.
        let tag = *rng.pick(b"QPBEDCHSFdcfpXy\0");
        let n = rng.range(0, 200) as usize;
        let declared = if rng.chance(70) {
            (n + 4) as u32
        } else {
            rng.u32()
        };
        junk.extend(header(tag, declared));
        junk.extend(rng.bytes(n));
    } else {
        let n = rng.range(1, 300) as usize;
        junk.extend(rng.bytes(n));
    }
    let _ = s.write_all(&junk);
    let reply = answer_then_close(&mut s, start);
    check_closed(&reply)
        .map(drop)
        .map_err(|e| format!("after login, seed {seed} ({junk:?}): {e}"))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 320 seeded random openings (noise, plausible lengths with random codes,
/// 3.0 with random parameters, SSL/GSS then noise, special codes with bad
/// bodies), half of them half-closed, the rest left to client_login_timeout.
#[test]
fn random_openings_are_rejected_or_closed() {
    let fx = Fixture::start();
    let port = fx.port();
    let failures = run_parallel(16, 320, |i| random_case(port, 0x5EED_0000 + i as u64));
    assert_no_failures("random openings", &failures, &fx.pooler);
    fx.finish();
}

/// Random junk after a successful login, 120 seeds.
#[test]
fn random_junk_after_login_closes_cleanly() {
    let fx = Fixture::start();
    let port = fx.port();
    let failures = run_parallel(8, 120, |i| {
        random_after_login_case(port, 0xAF7E_0000 + i as u64)
    });
    assert_no_failures("junk after login", &failures, &fx.pooler);
    fx.finish();
}

/// Length fields of 0, 1..7, negative, 2^31-1, 10001 and 10 MB: FATAL
/// 08P01 "invalid length of startup packet" right away (no waiting for
/// the declared bytes), whether the rest of the 8 bytes comes or not.
#[test]
fn absurd_startup_lengths_are_refused_at_once() {
    let fx = Fixture::start();
    let port = fx.port();
    let lengths: Vec<u32> = [0u32, 1, 3, 4, 7, 10_001, 10_000_000, 0x7FFF_FFFF]
        .into_iter()
        .chain([0x8000_0000, 0x8000_0001, 0xFFFF_FFF0, 0xFFFF_FFFF])
        .collect();
    let mut failures = Vec::new();
    for &len in &lengths {
        for code in [PROTOCOL_3_0, SSL_REQUEST, CANCEL_REQUEST] {
            // With the code, and with the length alone (4 bytes).
            for full in [true, false] {
                let mut opening = len.to_be_bytes().to_vec();
                if full {
                    opening.extend(code.to_be_bytes());
                }
                let reply = exchange(port, &opening, false);
                let what = format!("length {len:#x} code {code} full {full}");
                if let Err(e) =
                    check_fatal(&reply, 0, &["08P01"], "invalid length of startup packet")
                {
                    failures.push(format!("{what}: {e}"));
                } else if reply.elapsed >= LOGIN_TIMEOUT {
                    failures.push(format!(
                        "{what}: refused only after {:?} (waited for the login timeout?)",
                        reply.elapsed
                    ));
                }
            }
        }
    }
    assert_no_failures("startup lengths", &failures, &fx.pooler);
    fx.finish();
}

/// 10 MB declared and 10 MB actually sent, as a startup packet and as a
/// message after login: the pooler refuses at the header and closes,
/// and its workers' peak RSS does not grow by anything like 10 MB.
#[test]
fn ten_megabytes_of_junk_are_not_buffered() {
    let fx = Fixture::start();
    let port = fx.port();
    const TEN_MB: usize = 10 << 20;
    let mut rng = Rng::new(10);
    let junk = rng.bytes(TEN_MB);

    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        // A declared startup length of 10 MB, then 10 MB.
        (
            "startup 10 MB",
            false,
            (TEN_MB as u32 + 4).to_be_bytes().to_vec(),
        ),
        // A 3.0 startup of exactly 10 MB.
        ("startup 3.0 10 MB", false, {
            let mut v = (TEN_MB as u32 + 8).to_be_bytes().to_vec();
            v.extend(PROTOCOL_3_0.to_be_bytes());
            v
        }),
        // After login: a Query declaring 10 MB (max_packet_size is 64 kB).
        (
            "Query 10 MB after login",
            true,
            header(b'Q', TEN_MB as u32 + 4),
        ),
        // After login: a CopyData declaring 10 MB.
        (
            "CopyData 10 MB after login",
            true,
            header(b'd', TEN_MB as u32 + 4),
        ),
    ];
    for (what, after_login, head) in cases {
        let start = Instant::now();
        let mut s = if after_login {
            login(port).unwrap_or_else(|e| panic!("{what}: {e}"))
        } else {
            raw_connect(port)
        };
        // Write on a thread: a pooler that stops reading without closing
        // must fail the test, not hang it.
        let mut writer = s.try_clone().unwrap();
        let payload = [head.as_slice(), junk.as_slice()].concat();
        let sender = thread::spawn(move || {
            let mut sent = 0usize;
            for chunk in payload.chunks(64 << 10) {
                match writer.write_all(chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            sent
        });
        let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
        let _ = s.shutdown(Shutdown::Both);
        let sent = sender.join().unwrap();
        let expect = if after_login {
            check_fatal(&reply, 0, &["08P01"], "exceeds max_packet_size")
        } else {
            check_fatal(&reply, 0, &["08P01"], "invalid length of startup packet")
        };
        if let Err(e) = expect {
            panic!(
                "{what}: {e} (sent {sent} bytes)\n--- log tail ---\n{}",
                common::pg::tail(&fx.pooler.log(), 30)
            );
        }
        eprintln!(
            "[hostile] {what}: closed after {:?}, {sent} of {} bytes written",
            reply.elapsed,
            TEN_MB + head.len()
        );
        fx.assert_peak_rss_small(what);
    }
    fx.finish();
}

/// Protocol codes nobody defined (2.0, 4.0, 1234.5681, 0, all ones, 3.x
/// with x huge but a 2-byte major != 3): FATAL and close.
#[test]
fn unknown_protocol_codes_are_refused() {
    let fx = Fixture::start();
    let port = fx.port();
    let mut rng = Rng::new(77);
    let mut codes = vec![
        0u32,
        1,
        0x0001_0000,
        0x0002_0000,
        0x0004_0000,
        0x0000_0003,
        80_877_105,
        80_877_101,
        0xFFFF_FFFF,
        0x04D2_0000,
    ];
    codes.extend((0..40).map(|_| rng.u32()).filter(|c| c >> 16 != 3));
    let failures = run_parallel(4, codes.len(), |i| {
        let code = codes[i];
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0trust_user\0database\0app\0\0");
        let reply = exchange(port, &with_length(&body), false);
        check_fatal(&reply, 0, &["0A000", "08P01"], "")
            .map_err(|e| format!("code {code:#010x}: {e}"))
    });
    assert_no_failures("unknown protocol codes", &failures, &fx.pooler);
    fx.finish();
}

/// Startup packets that are not NUL-terminated pairs ending in a NUL, that
/// lack a user, or that carry 10,000 parameters.
#[test]
fn malformed_startup_packets_are_refused() {
    let fx = Fixture::start();
    let port = fx.port();
    let v3 = PROTOCOL_3_0.to_be_bytes();
    let raw = |params: &[u8]| with_length(&[v3.as_slice(), params].concat());
    let mut cases: Vec<(String, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "no final NUL".into(),
            raw(b"user\0trust_user\0database\0app\0"),
            vec!["08P01"],
            "",
        ),
        (
            "value without its NUL".into(),
            raw(b"user\0trust_user"),
            vec!["08P01"],
            "",
        ),
        (
            "key without a value".into(),
            raw(b"user\0trust_user\0database\0"),
            vec!["08P01"],
            "",
        ),
        (
            "key without anything".into(),
            raw(b"user"),
            vec!["08P01"],
            "",
        ),
        (
            "only the final NUL".into(),
            raw(b"\0"),
            vec!["28000"],
            "no PostgreSQL user name specified",
        ),
        (
            "no parameters at all".into(),
            raw(b""),
            vec!["08P01", "28000"],
            "",
        ),
        (
            "no user".into(),
            startup(&[("database", APP_DB), ("application_name", "x")]),
            vec!["28000"],
            "no PostgreSQL user name specified",
        ),
        (
            "empty user".into(),
            startup(&[("user", ""), ("database", APP_DB)]),
            vec!["28000"],
            "",
        ),
        (
            "NUL inside where a terminator is due".into(),
            raw(b"user\0trust_user\0\0\0\0"),
            vec!["08P01", "28000"],
            "",
        ),
    ];
    // 10,000 parameters cannot fit in the 10,000-byte startup limit.
    let many: Vec<(String, String)> = (0..10_000).map(|i| (format!("p{i}"), "v".into())).collect();
    let many_refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut with_user = vec![("user", TRUST_USER), ("database", APP_DB)];
    with_user.extend(many_refs.iter().copied());
    cases.push((
        "10,000 parameters".into(),
        startup(&with_user),
        vec!["08P01"],
        "invalid length of startup packet",
    ));
    let failures = run_parallel(4, cases.len(), |i| {
        let (what, opening, codes, text) = &cases[i];
        let reply = exchange(port, opening, false);
        check_fatal(&reply, 0, codes, text).map_err(|e| format!("{what}: {e}"))
    });
    assert_no_failures("malformed startup packets", &failures, &fx.pooler);

    fx.finish();
}

/// SSLRequest (answered `N`) followed by junk: a TLS ClientHello, noise,
/// a second SSLRequest, a CancelRequest, a plausible-length garbage packet.
#[test]
fn ssl_request_then_junk() {
    let fx = Fixture::start();
    let port = fx.port();
    let ssl = request(SSL_REQUEST);
    let client_hello: Vec<u8> = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]
    .into_iter()
    .chain(Rng::new(3).bytes(500))
    .collect();
    let mut cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("ClientHello", [ssl.clone(), client_hello].concat(), false),
        ("zeros", [ssl.clone(), vec![0; 64]].concat(), false),
        ("0xff", [ssl.clone(), vec![0xff; 64]].concat(), false),
        (
            "another SSLRequest and noise",
            [ssl.clone(), ssl.clone(), vec![7; 9]].concat(),
            false,
        ),
        (
            "GSSENC then SSL then noise",
            [request(GSSENC_REQUEST), ssl.clone(), vec![1; 20]].concat(),
            false,
        ),
        (
            "a CancelRequest",
            [ssl.clone(), cancel(1, 2)].concat(),
            false,
        ),
        (
            "half a startup, then EOF",
            [ssl.clone(), good_startup()[..9].to_vec()].concat(),
            true,
        ),
        (
            "plausible garbage",
            [ssl.clone(), with_length(&[9u8; 40])].concat(),
            false,
        ),
    ];
    let mut rng = Rng::new(0x55);
    for _ in 0..40 {
        let n = rng.range(1, 200) as usize;
        cases.push((
            "noise",
            [ssl.clone(), rng.bytes(n)].concat(),
            rng.chance(50),
        ));
    }
    let failures = run_parallel(8, cases.len(), |i| {
        let (what, opening, half_close) = &cases[i];
        let reply = exchange(port, opening, *half_close);
        check_rejected(&reply, leading_requests(opening))
            .map(drop)
            .map_err(|e| format!("{what}: {e}"))
    });
    assert_no_failures("SSLRequest then junk", &failures, &fx.pooler);
    fx.finish();
}

/// 600 CancelRequests with random keys (plus wrong-sized ones): each is
/// closed without a reply, and none of them disturbs a running query.
#[test]
fn cancel_requests_with_random_keys() {
    let fx = Fixture::start();
    let port = fx.port();
    // A query that runs while the cancels arrive: a random key must not
    // cancel it (it gets the pooler's own key; a hit is 1 in 2^64).
    let mut sleeper = fx.pooler.connect(TRUST_USER, "", APP_DB);
    let sleep = thread::spawn(move || sleeper.simple_query("SELECT pg_sleep(3)").map(drop));
    let mut rng = Rng::new(0xCA9CE1);
    let mut cases: Vec<Vec<u8>> = (0..600).map(|_| cancel(rng.u32(), rng.u32())).collect();
    // Protocol 3.2-style long keys, and wrong sizes.
    for n in [0usize, 1, 3, 5, 8, 32, 256, 257, 300] {
        let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
        body.extend(rng.u32().to_be_bytes());
        body.extend(rng.bytes(n));
        cases.push(with_length(&body));
    }
    let failures = run_parallel(8, cases.len(), |i| {
        let reply = exchange(port, &cases[i], false);
        let r = check_rejected(&reply, 0)?;
        // A well-formed cancel gets no reply at all, and no waiting for
        // the login timeout either.
        let well_formed = cases[i].len() >= 16 && cases[i].len() <= 12 + 256;
        if well_formed && (r.is_some() || reply.elapsed >= LOGIN_TIMEOUT) {
            return Err(format!(
                "cancel of {} bytes: reply {r:?} after {:?}",
                cases[i].len(),
                reply.elapsed
            ));
        }
        Ok(())
    });
    let slept = sleep.join().unwrap();
    assert!(slept.is_ok(), "the running query was disturbed: {slept:?}");
    assert_no_failures("random cancel keys", &failures, &fx.pooler);
    fx.finish();
}

/// Half a startup packet (or an SSLRequest and nothing) and then silence:
/// closed by client_login_timeout (1 s), not earlier and not much later.
#[test]
fn half_a_packet_then_silence_hits_the_login_timeout() {
    let fx = Fixture::start();
    let port = fx.port();
    let full = good_startup();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing at all", Vec::new()),
        ("two bytes of the length", full[..2].to_vec()),
        ("the length only", full[..4].to_vec()),
        ("length and code", full[..8].to_vec()),
        ("all but the last byte", full[..full.len() - 1].to_vec()),
        ("an SSLRequest, then nothing", request(SSL_REQUEST)),
        (
            "a CancelRequest's first 12 bytes",
            cancel(1, 2)[..12].to_vec(),
        ),
    ];
    let failures = run_parallel(cases.len(), cases.len(), |i| {
        let (what, opening) = &cases[i];
        let reply = exchange(port, opening, false);
        let r = check_rejected(&reply, leading_requests(opening))
            .map_err(|e| format!("{what}: {e}"))?;
        if let Some(fields) = r {
            let msg = fields.get(&'M').cloned().unwrap_or_default();
            if !msg.contains("client_login_timeout") {
                return Err(format!("{what}: closed with {fields:?}"));
            }
        }
        if reply.elapsed < LOGIN_TIMEOUT - ms(100) || reply.elapsed > LOGIN_TIMEOUT + TIMER_SLACK {
            return Err(format!(
                "{what}: closed after {:?}, expected about {LOGIN_TIMEOUT:?}",
                reply.elapsed
            ));
        }
        Ok(())
    });
    assert_no_failures("half packets", &failures, &fx.pooler);
    fx.finish();
}

/// A slowloris: a valid startup packet trickled one byte per second (and
/// four per second): client_login_timeout counts from the connect, so the
/// pooler closes after about 1 s instead of extending the deadline per byte.
#[test]
fn slowloris_trickle_hits_the_login_timeout() {
    let fx = Fixture::start();
    let port = fx.port();
    let failures = run_parallel(4, 4, |i| {
        let interval = if i % 2 == 0 { ms(1000) } else { ms(250) };
        let start = Instant::now();
        let mut s = raw_connect(port);
        let packet = good_startup();
        let mut sent = 0;
        let mut received = Vec::new();
        let mut closed_at = None;
        for &b in &packet {
            if s.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            // Waits for the next byte's turn, noticing a close meanwhile.
            let r = read_to_close(&mut s, Instant::now(), interval);
            received.extend(r.bytes);
            if r.closed {
                closed_at = Some(start.elapsed());
                break;
            }
            if start.elapsed() > secs(8) {
                break;
            }
        }
        let reply = match closed_at {
            Some(elapsed) => Reply {
                bytes: received,
                closed: true,
                elapsed,
            },
            None => {
                let mut r = read_to_close(&mut s, start, CLOSE_WITHIN);
                received.extend(r.bytes);
                r.bytes = received;
                r
            }
        };
        let what = format!("one byte every {interval:?} ({sent} sent)");
        check_fatal(&reply, 0, &["08P01"], "client_login_timeout")
            .map_err(|e| format!("{what}: {e}"))?;
        if reply.elapsed > LOGIN_TIMEOUT + TIMER_SLACK {
            return Err(format!(
                "{what}: closed only after {:?}: the deadline moved with each byte",
                reply.elapsed
            ));
        }
        Ok(())
    });
    assert_no_failures("slowloris", &failures, &fx.pooler);
    fx.finish();
}

/// After login: a message over max_packet_size is FATAL 08P01 and the
/// connection closes, while one just under it is served; length fields
/// below 4 are FATAL too; an unknown message type reaches PostgreSQL, whose
/// error reaches the client, and the connection closes.
#[test]
fn bad_messages_after_login() {
    let fx = Fixture::start();
    let port = fx.port();

    // Just under the limit: a padded SELECT is served normally.
    let mut s = login(port).unwrap();
    let mut sql = b"SELECT 42".to_vec();
    sql.resize(MAX_PACKET - 5 - 1, b' ');
    sql.push(0);
    let q = message(b'Q', &sql);
    assert!(q.len() <= MAX_PACKET);
    s.write_all(&q).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    let mut got = Vec::new();
    let mut head = [0u8; 5];
    loop {
        s.read_exact(&mut head).expect("reply to a 64 kB query");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        got.push(head[0] as char);
        if head[0] == b'Z' {
            break;
        }
    }
    assert_eq!(
        got.iter().collect::<String>(),
        "TDCZ",
        "a query just under max_packet_size"
    );
    drop(s);

    struct Case {
        what: &'static str,
        bytes: Vec<u8>,
        codes: &'static [&'static str],
        text: &'static str,
    }
    // A closed connection without an ErrorResponse is fine too (PostgreSQL
    // itself only logs a bad length and hangs up).
    const OPTIONAL: &str = "\0optional";
    let over = (MAX_PACKET as u32) + 100;
    let mut cases = vec![
        Case {
            what: "Query over max_packet_size (header only)",
            bytes: header(b'Q', over),
            codes: &["08P01"],
            text: "exceeds max_packet_size",
        },
        Case {
            what: "Query over max_packet_size (with its body)",
            bytes: [header(b'Q', over), vec![b' '; over as usize - 4]].concat(),
            codes: &["08P01"],
            text: "exceeds max_packet_size",
        },
        Case {
            what: "Parse of 2 GB",
            bytes: header(b'P', 0x7FFF_FFFF),
            codes: &["08P01"],
            text: "exceeds max_packet_size",
        },
        Case {
            what: "negative length",
            bytes: header(b'Q', 0x8000_0000),
            codes: &["08P01"],
            text: "",
        },
        Case {
            what: "unknown type, 100 kB",
            bytes: header(b'y', over),
            codes: &["08P01"],
            text: "exceeds max_packet_size",
        },
    ];
    for len in 0..4u32 {
        for tag in [b'Q', b'S', b'X', b'P', b'y'] {
            cases.push(Case {
                what: "length below 4",
                bytes: [header(tag, len), vec![0; 8]].concat(),
                codes: &["08P01"],
                text: OPTIONAL,
            });
        }
    }
    // An unknown type with a sane length is refused by the pooler with PgBouncer's
    // words; PostgreSQL never sees it (it would end the server connection).
    for tag in [b'y', b'!', 0u8, 0xff, b'A', b'Z', b'p'] {
        cases.push(Case {
            what: "unknown message type",
            bytes: message(tag, b"abc"),
            codes: &["08P01"],
            text: "unknown pkt",
        });
    }
    let failures = run_parallel(6, cases.len(), |i| {
        let c = &cases[i];
        let mut s = login(port).map_err(|e| format!("{}: {e}", c.what))?;
        let start = Instant::now();
        let _ = s.write_all(&c.bytes);
        let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
        let checked = if c.text == OPTIONAL {
            check_rejected(&reply, 0).and_then(|f| match f {
                Some(f) if !c.codes.contains(&f.get(&'C').map_or("", String::as_str)) => {
                    Err(format!("unexpected error {f:?}"))
                }
                _ => Ok(()),
            })
        } else {
            check_fatal(&reply, 0, c.codes, c.text)
        };
        checked.map_err(|e| format!("{} ({:?}): {e}", c.what, &c.bytes[..c.bytes.len().min(9)]))
    });
    assert_no_failures("bad messages after login", &failures, &fx.pooler);
    fx.finish();
}

/// 200 hostile connections at once, of every kind above, twice over,
/// while the well-behaved clients keep querying.
#[test]
fn two_hundred_hostile_connections_at_once() {
    let fx = Fixture::start();
    let port = fx.port();
    let kinds = 8;
    let failures = run_parallel(200, 400, |i| {
        let seed = 0xBAD_0000 + i as u64;
        let mut rng = Rng::new(seed);
        match i % kinds {
            0 | 1 => random_case(port, seed),
            2 => random_after_login_case(port, seed),
            3 => {
                let reply = exchange(port, &cancel(rng.u32(), rng.u32()), false);
                check_rejected(&reply, 0).map(drop)
            }
            4 => {
                // Half a packet, then silence.
                let reply = exchange(port, &good_startup()[..5], false);
                check_rejected(&reply, 0).map(drop)
            }
            5 => {
                let mut s = login(port)?;
                let start = Instant::now();
                let _ = s.write_all(&header(b'Q', MAX_PACKET as u32 * 4));
                let _ = s.write_all(&rng.bytes(100_000));
                let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
                check_fatal(&reply, 0, &["08P01"], "exceeds max_packet_size")
            }
            6 => {
                let mut s = login(port)?;
                let start = Instant::now();
                let _ = s.write_all(&message(b'y', b"x"));
                let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
                check_fatal(&reply, 0, &["08P01", "08006"], "")
            }
            _ => {
                let opening = [request(SSL_REQUEST), rng.bytes(50)].concat();
                let reply = exchange(port, &opening, rng.chance(50));
                check_rejected(&reply, 1).map(drop)
            }
        }
        .map_err(|e| format!("kind {}: {e}", i % kinds))
    });
    assert_no_failures("200 at once", &failures, &fx.pooler);
    fx.finish();
}

// ---------------------------------------------------------------------------
// The extended protocol, mangled
// ---------------------------------------------------------------------------

fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn parse_msg(name: &[u8], query: &[u8], oids: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, name);
    put_cstr(&mut b, query);
    b.extend((oids.len() as u16).to_be_bytes());
    for o in oids {
        b.extend(o.to_be_bytes());
    }
    message(b'P', &b)
}

fn bind_msg(portal: &[u8], stmt: &[u8], params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, portal);
    put_cstr(&mut b, stmt);
    b.extend(0u16.to_be_bytes());
    b.extend((params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend((v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
    }
    b.extend(0u16.to_be_bytes());
    message(b'B', &b)
}

fn named_msg(tag: u8, kind: u8, name: &[u8]) -> Vec<u8> {
    let mut b = vec![kind];
    put_cstr(&mut b, name);
    message(tag, &b)
}

fn execute_msg(portal: &[u8], max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, portal);
    b.extend(max_rows.to_be_bytes());
    message(b'E', &b)
}

/// A well-formed message made wrong in one of several ways, its frame kept
/// consistent (so it is the body the pooler must not trust).
fn mangle(rng: &mut Rng, msg: Vec<u8>) -> Vec<u8> {
    let tag = msg[0];
    let mut body = msg[5..].to_vec();
    match rng.below(6) {
        // Cut short.
        0 => {
            let keep = rng.below(body.len() as u64 + 1) as usize;
            body.truncate(keep);
        }
        // A few bytes flipped.
        1 => {
            for _ in 0..rng.range(1, 4) {
                if !body.is_empty() {
                    let i = rng.below(body.len() as u64) as usize;
                    body[i] = rng.next() as u8;
                }
            }
        }
        // No NUL anywhere.
        2 => body.retain(|&b| b != 0),
        // Junk after it.
        3 => {
            let n = rng.range(1, 64) as usize;
            body.extend(rng.bytes(n));
        }
        // Counts and lengths at their extremes.
        4 => {
            for _ in 0..rng.range(1, 3) {
                if body.len() >= 2 {
                    let i = rng.below(body.len() as u64 - 1) as usize;
                    let v: [u8; 2] = *rng.pick(&[[0xff, 0xff], [0x7f, 0xff], [0x80, 0x00]]);
                    body[i..i + 2].copy_from_slice(&v);
                }
            }
        }
        // The frame itself lies about the length (short by a little).
        _ => {
            let mut m = message(tag, &body);
            let cut = rng.range(1, 3).min(body.len() as u64) as u32;
            let len = (body.len() as u32 + 4) - cut;
            m[1..5].copy_from_slice(&len.to_be_bytes());
            return m;
        }
    }
    message(tag, &body)
}

/// A random sequence of extended-protocol messages (Parse, Bind, Describe,
/// Close, Execute, Flush, Sync, Query; named statements included), some
/// of them mangled, then a half-close.
fn extended_case(port: u16, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let long_name = vec![b'n'; 300];
    let names: [&[u8]; 6] = [b"", b"s1", b"s2", b"PGBS_1", b"PGBS_0", &long_name];
    let queries: [&[u8]; 7] = [
        b"SELECT 1",
        b"SELECT $1::int4",
        b"SELECT $1::text, $2::int8",
        b"SELEC broken",
        b"",
        b"BEGIN",
        b"COMMIT",
    ];
    let mut s = login(port).map_err(|e| format!("seed {seed}: {e}"))?;
    let mut out = Vec::new();
    for _ in 0..rng.range(1, 8) {
        let name = *rng.pick(&names);
        let msg = match rng.below(8) {
            0 | 1 => {
                let oid_sets: [&[u32]; 4] = [&[], &[23], &[25, 20], &[0; 3]];
                let oids = *rng.pick(&oid_sets);
                let query = *rng.pick(&queries);
                parse_msg(name, query, oids)
            }
            2 => {
                let param_sets: [&[Option<&[u8]>]; 4] =
                    [&[], &[Some(b"42")], &[Some(b"x"), None], &[None; 5]];
                let params = *rng.pick(&param_sets);
                let portal = *rng.pick(&names);
                bind_msg(portal, name, params)
            }
            3 => named_msg(b'D', *rng.pick(b"SPX"), name),
            4 => named_msg(b'C', *rng.pick(b"SPX"), name),
            5 => {
                let portal = *rng.pick(&names);
                execute_msg(portal, *rng.pick(&[0, 1, -1, i32::MAX]))
            }
            6 => message(*rng.pick(b"SH"), b""),
            _ => message(b'Q', b"SELECT 1\0"),
        };
        out.extend(if rng.chance(35) {
            mangle(&mut rng, msg)
        } else {
            msg
        });
    }
    if rng.chance(70) {
        out.extend(message(b'S', b""));
    }
    let start = Instant::now();
    let _ = s.write_all(&out);
    let reply = answer_then_close(&mut s, start);
    check_closed(&reply)
        .map(drop)
        .map_err(|e| format!("extended, seed {seed}: {e}"))
}

/// 300 seeded sequences of extended-protocol messages, valid and mangled
/// (bodies cut short, bytes flipped, NULs missing, counts at 0xffff, frames
/// that lie), named statements included: each connection ends cleanly, and
/// the persistent well-behaved client's own prepared statement keeps
/// working on the servers they share.
#[test]
fn mangled_extended_protocol_after_login() {
    let fx = Fixture::start();
    let port = fx.port();
    let failures = run_parallel(8, 300, |i| extended_case(port, 0xE7E0_0000 + i as u64));
    assert_no_failures("mangled extended protocol", &failures, &fx.pooler);
    fx.finish();
}

// ---------------------------------------------------------------------------
// Authentication exchanges, mangled
// ---------------------------------------------------------------------------

fn sasl_initial(mechanism: &[u8], declared: i32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, mechanism);
    b.extend(declared.to_be_bytes());
    b.extend_from_slice(data);
    message(b'p', &b)
}

fn sasl_first(data: &[u8]) -> Vec<u8> {
    sasl_initial(b"SCRAM-SHA-256", data.len() as i32, data)
}

/// Starts a login as `user` and reads the first Authentication request;
/// returns the stream and that request's code.
fn start_auth(port: u16, user: &str) -> Result<(TcpStream, u32, Vec<u8>), String> {
    let mut s = raw_connect(port);
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(&startup(&[("user", user), ("database", APP_DB)]))
        .map_err(|e| format!("startup: {e}"))?;
    let m = read_message(&mut s)
        .map_err(|e| format!("reading the auth request: {e}"))?
        .ok_or("closed before the auth request")?;
    if m.tag != b'R' || m.body.len() < 4 {
        return Err(format!("expected an auth request, got {:?}", m.tag as char));
    }
    let code = u32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
    Ok((s, code, m.body[4..].to_vec()))
}

/// Sends `bytes` during authentication and expects a FATAL (or a plain
/// close), never a login.
fn auth_junk(port: u16, user: &str, want_code: u32, bytes: &[u8]) -> Result<(), String> {
    let (mut s, code, _) = start_auth(port, user)?;
    if code != want_code {
        return Err(format!("auth request {code}, expected {want_code}"));
    }
    let start = Instant::now();
    let _ = s.write_all(bytes);
    let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
    let msgs = parse_backend(&reply.bytes, 0)?;
    if msgs
        .iter()
        .any(|m| m.tag == b'Z' || (m.tag == b'R' && m.body.starts_with(&[0, 0, 0, 0])))
    {
        return Err(format!("logged in: {}", tags(&msgs)));
    }
    check_rejected(&reply, 0).map(drop)
}

/// Junk common to every method: wrong message types, bad lengths, noise.
fn generic_auth_junk(rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("a Query".into(), message(b'Q', b"SELECT 1\0")),
        ("a Terminate".into(), message(b'X', b"")),
        ("length 0".into(), header(b'p', 0)),
        ("length 3".into(), header(b'p', 3)),
        ("length 2^31-1".into(), header(b'p', 0x7fff_ffff)),
        ("negative length".into(), header(b'p', 0x8000_0000)),
        (
            "100 kB password".into(),
            message(b'p', &vec![b'a'; 100_000]),
        ),
        ("empty p".into(), message(b'p', b"")),
        ("a second startup packet".into(), good_startup()),
    ];
    for i in 0..40 {
        let n = rng.range(0, 300) as usize;
        let body = rng.bytes(n);
        cases.push((format!("random p #{i}"), message(b'p', &body)));
    }
    for i in 0..10 {
        let n = rng.range(1, 100) as usize;
        cases.push((format!("noise #{i}"), rng.bytes(n)));
    }
    cases
}

/// SCRAM: mangled SASLInitialResponse messages, then mangled
/// client-final messages after a correct client-first; each ends in a
/// FATAL or a close, never a login (a zero proof is 28P01 precisely).
#[test]
fn mangled_scram_exchanges() {
    let auth = "auth_type: scram-sha-256\nauth_file: @DIR@/userlist.txt";
    let userlist = userlist_entry(APP_USER, APP_PASSWORD);
    let fx = Fixture::with(
        &config(auth, ""),
        &[("userlist.txt", &userlist)],
        APP_USER,
        APP_PASSWORD,
    );
    let port = fx.port();
    const SASL: u32 = 10;
    let mut rng = Rng::new(0x5C8A);
    let mut cases = generic_auth_junk(&mut rng);
    let firsts: Vec<(&str, Vec<u8>)> = vec![
        ("mechanism unterminated", message(b'p', b"SCRAM-SHA-256")),
        ("unknown mechanism", sasl_first_with(b"FOO", b"n,,n=,r=abc")),
        (
            "PLUS mechanism",
            sasl_first_with(b"SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=,r=abc"),
        ),
        ("declared -1", sasl_initial(b"SCRAM-SHA-256", -1, b"")),
        (
            "declared 2^31-1",
            sasl_initial(b"SCRAM-SHA-256", i32::MAX, b"n,,n=,r=abc"),
        ),
        (
            "declared one too many",
            sasl_initial(b"SCRAM-SHA-256", 12, b"n,,n=,r=abc"),
        ),
        (
            "declared too few",
            sasl_initial(b"SCRAM-SHA-256", 3, b"n,,n=,r=abc"),
        ),
        (
            "declared -5",
            sasl_initial(b"SCRAM-SHA-256", -5, b"n,,n=,r=abc"),
        ),
        ("empty", sasl_first(b"")),
        ("empty nonce", sasl_first(b"n,,n=,r=")),
        ("no nonce", sasl_first(b"n,,n=")),
        (
            "channel binding asked",
            sasl_first(b"p=tls-server-end-point,,n=,r=abc"),
        ),
        ("bad gs2 flag", sasl_first(b"x,,n=,r=abc")),
        ("authzid", sasl_first(b"n,a=postgres,n=,r=abc")),
        ("mandatory extension", sasl_first(b"n,,m=ext,n=,r=abc")),
        ("commas only", sasl_first(b",,,,,")),
        ("gs2 header only", sasl_first(b"n,,")),
        ("NUL in the nonce", sasl_first(b"n,,n=,r=ab\0cd")),
        ("non-UTF-8", sasl_first(b"n,,n=\xff\xfe,r=\xc3\x28")),
        (
            "huge nonce",
            sasl_first(&[b"n,,n=,r=".as_slice(), &[b'a'; 9000]].concat()),
        ),
        (
            "trailing junk attributes",
            sasl_first(b"n,,n=,r=abc,x=1,y=2,,"),
        ),
    ];
    for (what, bytes) in firsts {
        cases.push((format!("client-first: {what}"), bytes));
    }
    let failures = run_parallel(8, cases.len(), |i| {
        let (what, bytes) = &cases[i];
        auth_junk(port, APP_USER, SASL, bytes).map_err(|e| format!("{what}: {e}"))
    });
    assert_no_failures("SASLInitialResponse junk", &failures, &fx.pooler);

    // A correct client-first, then a bad client-final.
    let finals: Vec<(&str, FinalBody)> = vec![
        ("empty proof", |r| format!("c=biws,r={r},p=").into_bytes()),
        ("proof not base64", |r| {
            format!("c=biws,r={r},p=!!!***").into_bytes()
        }),
        ("short proof", |r| {
            format!("c=biws,r={r},p=AAAAAAAAAAA=").into_bytes()
        }),
        ("no proof", |r| format!("c=biws,r={r}").into_bytes()),
        ("wrong nonce", |_| {
            format!("c=biws,r=nope,p={}", "A".repeat(43) + "=").into_bytes()
        }),
        ("channel binding mismatch", |r| {
            format!("c=eSws,r={r},p={}", "A".repeat(43) + "=").into_bytes()
        }),
        ("attributes reordered", |r| {
            format!("r={r},c=biws,p={}", "A".repeat(43) + "=").into_bytes()
        }),
        ("random bytes", |_| Rng::new(9).bytes(120)),
        ("empty", |_| Vec::new()),
        ("100 kB", |r| {
            format!("c=biws,r={r},p={}", "A".repeat(100_000)).into_bytes()
        }),
    ];
    let mut cases: Vec<(String, MakeFinal, &str)> = finals
        .into_iter()
        .map(|(w, f)| {
            (
                w.to_string(),
                Box::new(move |r: &str| message(b'p', &f(r))) as MakeFinal,
                "",
            )
        })
        .collect();
    cases.push((
        "a second SASLInitialResponse".into(),
        Box::new(|_: &str| sasl_first(b"n,,n=,r=again")),
        "",
    ));
    // Well-formed but wrong: exactly an authentication failure.
    cases.push((
        "zero proof".into(),
        Box::new(|r: &str| {
            let proof = format!("{}=", "A".repeat(43));
            message(b'p', format!("c=biws,r={r},p={proof}").as_bytes())
        }),
        "28P01",
    ));
    let failures = run_parallel(6, cases.len(), |i| {
        let (what, make, code) = &cases[i];
        let (mut s, c, _) = start_auth(port, APP_USER)?;
        if c != SASL {
            return Err(format!("{what}: auth request {c}"));
        }
        s.write_all(&sasl_first(b"n,,n=,r=clientnonce123"))
            .map_err(|e| e.to_string())?;
        let m = read_message(&mut s)
            .map_err(|e| format!("reading the server-first-message: {e}"))?
            .ok_or("closed after client-first")?;
        let server_first =
            String::from_utf8_lossy(m.body.get(4..).unwrap_or_default()).into_owned();
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or_else(|| format!("{what}: no nonce in {server_first:?}"))?
            .to_string();
        let start = Instant::now();
        let _ = s.write_all(&make(&nonce));
        let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
        let result = if code.is_empty() {
            check_rejected(&reply, 0).map(drop)
        } else {
            check_fatal(&reply, 0, &[code], "password authentication failed")
        };
        result.map_err(|e| format!("client-final: {what}: {e}"))
    });
    assert_no_failures("client-final junk", &failures, &fx.pooler);
    fx.finish();
}

/// A client-final body from the server's combined nonce.
type FinalBody = fn(&str) -> Vec<u8>;
/// A whole client-final message from the server's combined nonce.
type MakeFinal = Box<dyn Fn(&str) -> Vec<u8> + Sync>;

fn sasl_first_with(mechanism: &[u8], data: &[u8]) -> Vec<u8> {
    sasl_initial(mechanism, data.len() as i32, data)
}

/// md5 and cleartext password exchanges fed junk: FATAL or close, never a
/// login.
#[test]
fn mangled_password_messages() {
    for (auth_type, code) in [("md5", 5u32), ("plain", 3)] {
        let auth = format!("auth_type: {auth_type}\nauth_file: @DIR@/userlist.txt");
        let userlist = userlist_entry(APP_USER, APP_PASSWORD);
        let fx = Fixture::with(
            &config(&auth, ""),
            &[("userlist.txt", &userlist)],
            APP_USER,
            APP_PASSWORD,
        );
        let port = fx.port();
        let mut rng = Rng::new(u64::from(code));
        let mut cases = generic_auth_junk(&mut rng);
        for (what, body) in [
            ("wrong password", b"nope\0".to_vec()),
            ("password then junk", b"apppw\0junk".to_vec()),
            ("NUL first", b"\0apppw\0".to_vec()),
            ("md5 prefix only", b"md5\0".to_vec()),
            (
                "md5 and 32 x",
                [b"md5".as_slice(), &[b'x'; 32], b"\0"].concat(),
            ),
            (
                "md5 and 64 hex",
                [b"md5".as_slice(), &[b'a'; 64], b"\0"].concat(),
            ),
            ("non-UTF-8", b"\xff\xfe\xfd\0".to_vec()),
        ] {
            cases.push((what.to_string(), message(b'p', &body)));
        }
        let failures = run_parallel(8, cases.len(), |i| {
            let (what, bytes) = &cases[i];
            auth_junk(port, APP_USER, code, bytes).map_err(|e| format!("{auth_type}: {what}: {e}"))
        });
        assert_no_failures(auth_type, &failures, &fx.pooler);
        fx.finish();
    }
}

// ---------------------------------------------------------------------------
// The admin console and PROXY headers
// ---------------------------------------------------------------------------

/// The admin console fed junk after login: oversized and unterminated
/// queries, bad lengths, extended-protocol messages, noise. Each ends in an
/// error or a close (after the half-close), and the console still works.
#[test]
fn admin_console_junk() {
    let fx = Fixture::with(&config(TRUST, "admin_users: [admin]"), &[], TRUST_USER, "");
    let port = fx.port();
    let console = startup(&[("user", "admin"), ("database", "pgbouncer")]);
    let mut rng = Rng::new(0xAD);
    let mut cases: Vec<Vec<u8>> = vec![
        header(b'Q', 100_000),
        header(b'Q', 0x7fff_ffff),
        header(b'Q', 2),
        message(b'Q', b"SHOW CLIENTS"),
        message(b'Q', b"SHOW\0CLIENTS\0"),
        message(b'Q', b"SHOW \xff\xfe\0"),
        message(b'Q', b"SHOW nosuchthing\0"),
        message(b'Q', b"SHOW CLIENTS; SHOW CLIENTS; SHOW\0"),
        message(b'Q', b"KILL_CLIENT 999999999999999999999\0"),
        message(b'Q', b"RESUME \"\0"),
        message(b'Q', b"SET\0"),
        message(b'Q', b"SET max_client_conn = \0"),
        message(b'Q', b"\0"),
        parse_msg(b"s", b"SHOW CLIENTS", &[]),
        message(b'S', b""),
        message(b'y', b"abc"),
        message(b'd', b"copy data"),
    ];
    for _ in 0..60 {
        let n = rng.range(0, 200) as usize;
        let mut body = rng.bytes(n);
        if rng.chance(50) {
            body.push(0);
            cases.push(message(b'Q', &body));
        } else {
            cases.push(body);
        }
    }
    let failures = run_parallel(6, cases.len(), |i| {
        let mut s = login_with(port, &console)?;
        let start = Instant::now();
        let _ = s.write_all(&cases[i]);
        let _ = s.shutdown(Shutdown::Write);
        let reply = read_to_close(&mut s, start, CLOSE_WITHIN);
        check_closed(&reply).map(drop).map_err(|e| {
            format!(
                "console case {i} ({:?}): {e}",
                &cases[i][..cases[i].len().min(12)]
            )
        })
    });
    assert_no_failures("console junk", &failures, &fx.pooler);
    // The console still answers.
    let mut s = login_with(port, &console).expect("console login after the junk");
    s.write_all(&message(b'Q', b"SHOW VERSION\0")).unwrap();
    let mut got = String::new();
    while let Some(m) = read_message(&mut s).unwrap() {
        got.push(m.tag as char);
        if m.tag == b'Z' {
            break;
        }
    }
    assert!(
        got.ends_with('Z') && got.contains('D'),
        "SHOW VERSION: {got}"
    );
    fx.finish();
}

const PROXY_V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Random PROXY headers (v2 with random version/command, family, length
/// and TLVs; v1 lines with junk), some followed by a valid startup packet,
/// on a pooler with `proxy_protocol: optional` trusting 127.0.0.1.
#[test]
fn random_proxy_headers() {
    let extra = "proxy_protocol: optional\nproxy_trusted: [127.0.0.1]\nproxy_header_timeout: 1";
    let fx = Fixture::with(&config(TRUST, extra), &[], TRUST_USER, "");
    let port = fx.port();
    let failures = run_parallel(16, 240, |i| {
        let seed = 0x9801_0000 + i as u64;
        let mut rng = Rng::new(seed);
        let mut opening = Vec::new();
        if rng.chance(60) {
            opening.extend_from_slice(PROXY_V2_SIG);
            let any = rng.next() as u8;
            opening.push(*rng.pick(&[0x21, 0x20, 0x22, 0x11, any]));
            let any = rng.next() as u8;
            opening.push(*rng.pick(&[0x11, 0x12, 0x21, 0x22, 0x31, 0x00, any]));
            let any = rng.range(0, 400) as u16;
            let n = *rng.pick(&[0u16, 12, 36, 216, any, 0xffff]);
            opening.extend(n.to_be_bytes());
            let actual = if rng.chance(80) {
                n.min(600) as usize
            } else {
                rng.range(0, 50) as usize
            };
            let mut body = rng.bytes(actual);
            // Sometimes a plausible address block, then TLVs with random lengths.
            if actual > 12 && rng.chance(50) {
                body[..12].copy_from_slice(&[127, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90, 0x18, 0xeb]);
                let mut i = 12;
                while i + 3 <= body.len() {
                    body[i] = *rng.pick(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30, 0xee]);
                    let l = rng.range(0, 40) as u16;
                    body[i + 1..i + 3].copy_from_slice(&l.to_be_bytes());
                    i += 3 + l as usize;
                }
            }
            opening.extend(body);
        } else {
            let line = rng.pick(&[
                "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n",
                "PROXY TCP6 ::1 ::2 1 2\r\n",
                "PROXY UNKNOWN\r\n",
                "PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
                "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
                "PROXY TCP4 1.2.3.4\r\n",
                "PROXY \r\n",
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            ]);
            let mut l = line.as_bytes().to_vec();
            if rng.chance(30) {
                let n = rng.range(1, 120) as usize;
                l = l[..l.len().saturating_sub(2)].to_vec();
                l.extend(rng.bytes(n));
            }
            opening.extend(l);
        }
        // After a valid header, a valid startup logs in and the session
        // stays open: those connections half-close so they end.
        let with_startup = rng.chance(50);
        if with_startup {
            opening.extend(good_startup());
        }
        let half_close = rng.chance(60) || with_startup;
        let reply = exchange(port, &opening, half_close);
        check_closed(&reply)
            .map(drop)
            .map_err(|e| format!("seed {seed} (half_close {half_close}): {e}"))
    });
    assert_no_failures("random PROXY headers", &failures, &fx.pooler);
    fx.finish();
}

// ---------------------------------------------------------------------------
// Long but valid input: refusing hostile sizes must not refuse legal ones
// ---------------------------------------------------------------------------

/// Reads messages until ReadyForQuery or an ErrorResponse; returns their
/// tags and the error's fields, or an error string on a close or timeout.
fn read_until_ready(s: &mut TcpStream) -> Result<(String, Option<HashMap<char, String>>), String> {
    let mut got = String::new();
    loop {
        match read_message(s) {
            Ok(Some(m)) => {
                got.push(m.tag as char);
                match m.tag {
                    b'Z' => return Ok((got, None)),
                    b'E' => return Ok((got, Some(error_fields(&m.body)))),
                    _ => {}
                }
            }
            Ok(None) => return Err(format!("closed after {got:?}")),
            Err(e) => return Err(format!("{e} after {got:?}")),
        }
    }
}

/// Startup packets PostgreSQL accepts (it allows up to 10,000 bytes) but
/// longer than the pooler's 8 kB I/O buffer (pkt_buf): a long
/// application_name, and 1,300 short options. Each is answered at once
/// (a login, or for the options at worst an error), not left hanging until
/// client_login_timeout.
#[test]
fn long_valid_startup_packets_are_answered() {
    let fx = Fixture::start();
    let port = fx.port();
    let mut failures = Vec::new();
    for len in [8_000usize, 8_300, 9_000, 9_990] {
        let base = startup(&[
            ("user", TRUST_USER),
            ("database", APP_DB),
            ("application_name", ""),
        ])
        .len();
        let name = "a".repeat(len - base);
        let opening = startup(&[
            ("user", TRUST_USER),
            ("database", APP_DB),
            ("application_name", &name),
        ]);
        assert_eq!(opening.len(), len);
        let start = Instant::now();
        let mut s = raw_connect(port);
        s.set_read_timeout(Some(secs(5))).unwrap();
        s.write_all(&opening).unwrap();
        match read_until_ready(&mut s) {
            Ok((tags, None)) => {
                s.write_all(&message(b'Q', b"SELECT 1\0")).unwrap();
                match read_until_ready(&mut s) {
                    Ok((t, None)) if t.contains('D') => {}
                    other => failures.push(format!("{len} bytes: SELECT 1 after login: {other:?}")),
                }
                eprintln!(
                    "[hostile] startup of {len} bytes: {tags} in {:?}",
                    start.elapsed()
                );
            }
            Ok((tags, Some(err))) => failures.push(format!(
                "{len} bytes: refused after {:?} ({tags}): {err:?}",
                start.elapsed()
            )),
            Err(e) => failures.push(format!("{len} bytes: {e} after {:?}", start.elapsed())),
        }
    }
    // 1,300 distinct unknown options fill about 9.3 kB: accepted or
    // refused, but answered before the login timeout would end it.
    let opts: Vec<(String, String)> = (0..1300).map(|i| (format!("x{i}"), "1".into())).collect();
    let mut params = vec![("user", TRUST_USER), ("database", APP_DB)];
    params.extend(opts.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let opening = startup(&params);
    assert!(
        (8_193..=10_000).contains(&opening.len()),
        "{} bytes",
        opening.len()
    );
    let start = Instant::now();
    let mut s = raw_connect(port);
    s.set_read_timeout(Some(secs(5))).unwrap();
    s.write_all(&opening).unwrap();
    let answer = read_until_ready(&mut s);
    let elapsed = start.elapsed();
    let timed_out = matches!(&answer, Ok((_, Some(f))) if f.get(&'M').is_some_and(|m| m.contains("client_login_timeout")));
    if answer.is_err() || timed_out || elapsed >= LOGIN_TIMEOUT {
        failures.push(format!(
            "1,300 options ({} bytes): {answer:?} after {elapsed:?}",
            opening.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "long but valid startup packets were not answered:\n{}\n--- log tail ---\n{}",
        failures.join("\n"),
        common::pg::tail(&fx.pooler.log(), 20)
    );
    fx.finish();
}

/// Admin console queries longer than the 8 kB I/O buffer (the console
/// takes up to 64 kB): answered, and a half-close after one ends the
/// connection.
#[test]
fn long_console_queries_are_answered() {
    let fx = Fixture::with(&config(TRUST, "admin_users: [admin]"), &[], TRUST_USER, "");
    let port = fx.port();
    let console = startup(&[("user", "admin"), ("database", "pgbouncer")]);
    let mut failures = Vec::new();
    for pad in [100usize, 8_000, 9_000, 20_000, 60_000] {
        let query = [b"SHOW VERSION".as_slice(), &vec![b' '; pad], b"\0"].concat();
        // A client that half-closes after its query is closed at the EOF without an answer,
        // as PgBouncer does; only whole connections are checked here.
        for half_close in [false] {
            let what = format!("SHOW VERSION + {pad} spaces (half-close {half_close})");
            let mut s = match login_with(port, &console) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{what}: console login: {e}"));
                    continue;
                }
            };
            s.set_read_timeout(Some(secs(3))).unwrap();
            s.write_all(&message(b'Q', &query)).unwrap();
            if half_close {
                let _ = s.shutdown(Shutdown::Write);
                let reply = read_to_close(&mut s, Instant::now(), secs(3));
                match check_closed(&reply) {
                    Ok(msgs) if tags(&msgs).contains('D') => {}
                    Ok(msgs) => failures.push(format!("{what}: closed with {}", tags(&msgs))),
                    Err(e) => failures.push(format!("{what}: {e}")),
                }
            } else {
                match read_until_ready(&mut s) {
                    Ok((t, None)) if t.contains('D') => {}
                    other => failures.push(format!("{what}: {other:?}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "long console queries:\n{}",
        failures.join("\n")
    );
    fx.finish();
}

/// A cleartext password message must be one NUL-terminated string, as in
/// PostgreSQL ("invalid password packet size", 08P01): the right password
/// without its terminator is refused, and so is one followed by junk.
#[test]
fn password_message_without_terminator_is_refused() {
    let auth = "auth_type: plain\nauth_file: @DIR@/userlist.txt";
    let userlist = userlist_entry(APP_USER, APP_PASSWORD);
    let fx = Fixture::with(
        &config(auth, ""),
        &[("userlist.txt", &userlist)],
        APP_USER,
        APP_PASSWORD,
    );
    let port = fx.port();
    let mut failures = Vec::new();
    // The control: the well-formed message logs in.
    let (mut s, code, _) = start_auth(port, APP_USER).unwrap();
    assert_eq!(code, 3, "cleartext password request");
    s.write_all(&message(b'p', format!("{APP_PASSWORD}\0").as_bytes()))
        .unwrap();
    let (tags, err) = read_until_ready(&mut s).expect("login with the right password");
    assert!(err.is_none() && tags.ends_with('Z'), "{tags} {err:?}");
    for (what, body) in [
        ("no terminator", APP_PASSWORD.as_bytes().to_vec()),
        (
            "junk after the terminator",
            format!("{APP_PASSWORD}\0junk").into_bytes(),
        ),
    ] {
        if let Err(e) = auth_junk(port, APP_USER, 3, &message(b'p', &body)) {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    fx.finish();
}

// ---------------------------------------------------------------------------
// A client leaving half a message on a pooled server
// ---------------------------------------------------------------------------

/// Runs `sql` on a raw, logged-in connection; returns the first column of
/// the first row, or why not (a 3 s read timeout catches a server that never
/// answers).
fn raw_query(s: &mut TcpStream, sql: &str) -> Result<String, String> {
    s.set_read_timeout(Some(secs(3))).unwrap();
    s.write_all(&message(b'Q', format!("{sql}\0").as_bytes()))
        .map_err(|e| format!("sending {sql}: {e}"))?;
    let mut value = None;
    let mut got = String::new();
    loop {
        let m = read_message(s)
            .map_err(|e| format!("{sql}: {e} (got {got:?})"))?
            .ok_or_else(|| format!("{sql}: closed (got {got:?})"))?;
        got.push(m.tag as char);
        match m.tag {
            b'D' if value.is_none() => {
                let len = m
                    .body
                    .get(2..6)
                    .map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]]));
                value = match len {
                    Some(n) if n >= 0 => m
                        .body
                        .get(6..6 + n as usize)
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                    _ => None,
                };
            }
            b'E' => return Err(format!("{sql}: error {:?}", error_fields(&m.body))),
            b'Z' => return value.ok_or_else(|| format!("{sql}: no row (got {got:?})")),
            _ => {}
        }
    }
}

/// A client that sends the start of a message (its header promising more
/// bytes than follow) and then disconnects must not leave that half
/// message on a server that goes back to the pool: with a pool of one
/// server, the next client's queries would complete the stranger's message
/// and never get their own answer. Each way of leaving (close, half-close,
/// reset) is followed by another client's queries, which must be answered.
#[test]
fn half_a_message_then_disconnect_does_not_poison_the_server() {
    let pg = shared_pg();
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         pool_mode: transaction\n\
         default_pool_size: 1\n\
         query_wait_timeout: 5\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
        port = pg.port()
    );
    let pooler = PoolerSetup::new().start_with_args(&yaml, &["--workers", "1"]);
    let workers = pooler.wait_for_children(1, secs(10));
    let port = pooler.port();
    let mut victim = login(port).expect("victim login");
    assert_eq!(raw_query(&mut victim, "SELECT 1").as_deref(), Ok("1"));

    let partial_query = [header(b'Q', 100), b"SELECT 1".to_vec()].concat();
    let partial_parse = [header(b'P', 60), b"\0SELECT".to_vec()].concat();
    let whole_then_partial = [
        message(b'Q', b"SELECT 1\0"),
        header(b'Q', 50),
        b"SEL".to_vec(),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("partial Query, close", partial_query.clone(), "close"),
        (
            "partial Query, half-close",
            partial_query.clone(),
            "half-close",
        ),
        ("partial Query, reset", partial_query, "reset"),
        ("partial Parse, close", partial_parse, "close"),
        (
            "whole Query then a partial one, close",
            whole_then_partial,
            "close",
        ),
        (
            "COPY FROM STDIN, then half a CopyData, close",
            [
                message(
                    b'Q',
                    b"CREATE TEMP TABLE IF NOT EXISTS h_copy(a int); COPY h_copy FROM STDIN\0",
                ),
                header(b'd', 100),
                b"1\n2\n".to_vec(),
            ]
            .concat(),
            "close",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, bytes, how)) in cases.iter().enumerate() {
        let mut attacker = login(port).expect("attacker login");
        attacker.write_all(bytes).unwrap();
        // Long enough for the pooler to hand the bytes to the server.
        thread::sleep(ms(300));
        match *how {
            "half-close" => {
                let _ = attacker.shutdown(Shutdown::Write);
                let r = read_to_close(&mut attacker, Instant::now(), secs(3));
                if !r.closed {
                    failures.push(format!(
                        "{what}: the pooler did not close after the half-close"
                    ));
                }
            }
            "reset" => {
                // SO_LINGER 0: close sends a RST.
                let fd = std::os::unix::io::AsRawFd::as_raw_fd(&attacker);
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on our own open socket with a valid struct.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const libc::linger as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                drop(attacker);
            }
            _ => drop(attacker),
        }
        thread::sleep(ms(200));
        // The victim, on the pool's only server, and a newcomer.
        let n = 10 + i;
        match raw_query(&mut victim, &format!("SELECT {n}")) {
            Ok(v) if v == n.to_string() => {}
            other => {
                failures.push(format!("{what}: the next client's SELECT {n}: {other:?}"));
                // The victim's connection is out of step now; start afresh.
                victim = match login(port) {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push(format!("{what}: a new login: {e}"));
                        break;
                    }
                };
            }
        }
    }
    let log = pooler.log();
    assert_eq!(pooler.children(), workers, "the worker changed");
    assert!(
        failures.is_empty(),
        "half messages left on pooled servers:\n{}\n--- log tail ---\n{}",
        failures.join("\n"),
        common::pg::tail(&log, 30)
    );
}

/// A client whose extended-protocol message fails on the server without a
/// Sync after it leaves that server skipping everything until a Sync
/// (PostgreSQL's ignore_till_sync). When such a client disconnects, the
/// server must be synced or closed, never handed to the next client, whose
/// simple Query PostgreSQL would silently ignore. Covers a Flush with junk
/// in its body (random junk after login found this), and Execute, Bind,
/// Describe and Parse errors followed by a Flush.
#[test]
fn extended_error_without_sync_then_disconnect_does_not_poison_the_server() {
    let pg = shared_pg();
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         pool_mode: transaction\n\
         default_pool_size: 1\n\
         query_wait_timeout: 5\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
        port = pg.port()
    );
    let pooler = PoolerSetup::new().start_with_args(&yaml, &["--workers", "1"]);
    let workers = pooler.wait_for_children(1, secs(10));
    let port = pooler.port();
    let mut victim = login(port).expect("victim login");
    assert_eq!(raw_query(&mut victim, "SELECT 1").as_deref(), Ok("1"));
    let flush = message(b'H', b"");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Flush with a junk body", message(b'H', b"junk")),
        (
            "Execute of a missing portal, Flush",
            [execute_msg(b"nope", 0), flush.clone()].concat(),
        ),
        (
            "Bind to a missing unnamed statement, Flush",
            [bind_msg(b"", b"", &[]), flush.clone()].concat(),
        ),
        (
            "Describe of a missing portal, Flush",
            [named_msg(b'D', b'P', b"nope"), flush.clone()].concat(),
        ),
        (
            "Parse of bad SQL, Flush",
            [parse_msg(b"", b"SELEC broken", &[]), flush.clone()].concat(),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut client = login(port).expect("client login");
        client.write_all(bytes).unwrap();
        // The error comes back (Flush asks for it) before the client leaves.
        client.set_read_timeout(Some(secs(3))).unwrap();
        match read_message(&mut client) {
            Ok(Some(m)) if m.tag == b'E' => {}
            other => failures.push(format!(
                "{what}: expected the server's error, got {other:?}"
            )),
        }
        drop(client);
        thread::sleep(ms(200));
        let n = 20 + i;
        match raw_query(&mut victim, &format!("SELECT {n}")) {
            Ok(v) if v == n.to_string() => {}
            other => {
                failures.push(format!(
                    "{what}, then disconnect: the next client's SELECT {n}: {other:?}"
                ));
                victim = match login(port) {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push(format!("{what}: a new login: {e}"));
                        break;
                    }
                };
            }
        }
    }
    assert_eq!(pooler.children(), workers, "the worker changed");
    assert!(
        failures.is_empty(),
        "servers left skipping until Sync went back to the pool:\n{}\n--- log tail ---\n{}",
        failures.join("\n"),
        common::pg::tail(&pooler.log(), 30)
    );
}
