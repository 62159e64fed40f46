//! The Prometheus endpoint (`metrics_addr`): `GET /metrics` in the text format, served by
//! the supervisor's own loop. Counters come from shared memory; per-pool gauges are gathered
//! from every worker without blocking, so a scrape never holds up signal handling.

use crate::console::Asker;
use crate::Supervisor;
use mio::net::{TcpListener, TcpStream};
use pgbouncers_worker::control::{Row, What};
use pgbouncers_worker::shm::{Kind, Shm, WorkerSlot, DB_COUNTERS};
use pgbouncers_worker::stats::{CancelOutcome, TlsFailure};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

pub(crate) const LISTENER_TOKEN: usize = usize::MAX - 1;
/// Tokens of scrape connections start here (above the control channels').
pub(crate) const CONN_BASE: usize = 1 << 20;
const MAX_REQUEST: usize = 8192;
/// A connection gets this long to send its whole request: scrapers send it at once, so a
/// connection still idle after it is only holding a place.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Then this long, from the start, to take the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. When full, a new one replaces the oldest that has not sent
/// its request yet, so idle connections can never lock scrapes out.
const MAX_CONNS: usize = 64;

pub(crate) struct Scrape {
    sock: TcpStream,
    request: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    accepted: Instant,
    waiting: bool,
}

impl Scrape {
    /// Nothing asked yet: no complete request, no gather, no answer.
    fn idle(&self) -> bool {
        !self.waiting && self.out.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub listener: Option<TcpListener>,
    pub conns: slab::Slab<Scrape>,
    /// When the supervisor started: the uptime the endpoint reports.
    pub started: Option<Instant>,
}

impl Supervisor {
    pub(crate) fn metrics_listen(&mut self) -> std::io::Result<()> {
        let Some(addr) = self.cfg.metrics_addr else {
            return Ok(());
        };
        // At an upgrade, the old generation's socket when it is the same address.
        let inherited = self
            .inherited_metrics
            .take()
            .filter(|l| l.local_addr().ok() == Some(addr))
            .and_then(|l| {
                l.set_nonblocking(true)
                    .ok()
                    .map(|()| TcpListener::from_std(l))
            });
        let mut l = match inherited {
            Some(l) => l,
            None => TcpListener::bind(addr)
                .map_err(|e| std::io::Error::new(e.kind(), format!("metrics_addr {addr}: {e}")))?,
        };
        self.poll.registry().register(
            &mut l,
            mio::Token(LISTENER_TOKEN),
            mio::Interest::READABLE,
        )?;
        log::info!("metrics on http://{addr}/metrics");
        self.metrics.listener = Some(l);
        Ok(())
    }

    /// Follows a reloaded `metrics_addr`: the old endpoint closes and the new one opens.
    /// A new address that cannot be bound is logged and leaves no endpoint; the rest of
    /// the reload stands, as with any other setting the workers apply.
    pub(crate) fn metrics_rebind(&mut self, old: Option<std::net::SocketAddr>) {
        if self.cfg.metrics_addr == old {
            return;
        }
        if let Some(mut l) = self.metrics.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
            log::info!("metrics endpoint closed");
        }
        if let Err(e) = self.metrics_listen() {
            log::warn!("{e}: no metrics endpoint until it can be bound");
        }
    }

    pub(crate) fn metrics_accept(&mut self) {
        loop {
            let Some(l) = &self.metrics.listener else {
                return;
            };
            let (mut sock, _) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("metrics accept: {e}");
                    return;
                }
            };
            if self.metrics.conns.len() >= MAX_CONNS {
                let oldest_idle = self
                    .metrics
                    .conns
                    .iter()
                    .filter(|(_, c)| c.idle())
                    .min_by_key(|(_, c)| c.accepted)
                    .map(|(k, _)| k);
                match oldest_idle {
                    Some(k) => self.metrics_close(k),
                    // Every place serves a scrape that asked already: this connection is
                    // closed at once, and places free up within SCRAPE_TIMEOUT.
                    None => continue,
                }
            }
            let entry = self.metrics.conns.vacant_entry();
            let token = mio::Token(CONN_BASE + entry.key());
            if self
                .poll
                .registry()
                .register(
                    &mut sock,
                    token,
                    mio::Interest::READABLE | mio::Interest::WRITABLE,
                )
                .is_ok()
            {
                entry.insert(Scrape {
                    sock,
                    request: Vec::new(),
                    out: Vec::new(),
                    sent: 0,
                    accepted: Instant::now(),
                    waiting: false,
                });
            }
        }
    }

    /// Reads the request, starts a gather, writes the answer: whatever the socket allows.
    pub(crate) fn metrics_io(&mut self, token: usize) {
        let id = token - CONN_BASE;
        let Some(c) = self.metrics.conns.get_mut(id) else {
            return;
        };
        if c.out.is_empty() && !c.waiting {
            let mut buf = [0u8; 2048];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => return self.metrics_close(id),
                    Ok(n) => c.request.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return self.metrics_close(id),
                }
                if c.request.len() > MAX_REQUEST {
                    return self.metrics_close(id);
                }
            }
            if !c.request.windows(4).any(|w| w == b"\r\n\r\n") && !c.request.ends_with(b"\n\n") {
                return;
            }
            let line = c.request.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                c.waiting = true;
                self.start_gather(Asker::Metrics { conn: id }, What::Pools);
                return;
            }
            c.out = response("404 Not Found", "not found; try /metrics\n");
        }
        self.metrics_flush(id);
    }

    fn metrics_flush(&mut self, id: usize) {
        let Some(c) = self.metrics.conns.get_mut(id) else {
            return;
        };
        while c.sent < c.out.len() {
            match c.sock.write(&c.out[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        if c.sent >= c.out.len() && !c.out.is_empty() {
            self.metrics_close(id);
        }
    }

    fn metrics_close(&mut self, id: usize) {
        if let Some(mut c) = self.metrics.conns.try_remove(id) {
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
    }

    /// Drops connections that sent no request in time, and answers nobody reads.
    pub(crate) fn metrics_timeouts(&mut self) {
        let now = Instant::now();
        let late = |c: &Scrape| {
            let age = now.saturating_duration_since(c.accepted);
            (c.idle() && age >= REQUEST_TIMEOUT) || (!c.waiting && age >= SCRAPE_TIMEOUT)
        };
        while let Some(id) = self
            .metrics
            .conns
            .iter()
            .find(|(_, c)| late(c))
            .map(|(k, _)| k)
        {
            self.metrics_close(id);
        }
    }

    /// Every worker answered (or some were too slow): render and send.
    pub(crate) fn metrics_gathered(&mut self, id: usize, rows: Vec<(u8, Row)>, missing: Vec<u8>) {
        let uptime = self.metrics.started.map_or(0, |s| s.elapsed().as_secs());
        let body = render(&self.shm, uptime, &rows, &missing);
        let Some(c) = self.metrics.conns.get_mut(id) else {
            return;
        };
        c.waiting = false;
        c.out = response("200 OK", &body);
        self.metrics_flush(id);
    }
}

/// The /metrics body: counters from shared memory, per-pool gauges from the rows every
/// worker sent, `missing` the workers that did not answer.
fn render(shm: &Shm, uptime: u64, pools: &[(u8, Row)], missing: &[u8]) -> String {
    let mut m = Out::default();
    for (name, help, v) in [
        ("pgbouncers_up", "1 while the pooler runs.", 1),
        (
            "pgbouncers_uptime_seconds",
            "Seconds since the pooler started.",
            uptime,
        ),
        (
            "pgbouncers_clients",
            "Client connections, all workers.",
            u64::from(shm.clients()),
        ),
        (
            "pgbouncers_scrape_missing_workers",
            "Workers that did not answer this scrape in time.",
            missing.len() as u64,
        ),
    ] {
        m.family(name, GAUGE, help);
        m.sample(name, &[], v);
    }

    let live: Vec<usize> = (0..shm.workers_cap())
        .filter(|&s| shm.worker(s).state.load(Relaxed) != 0)
        .collect();
    for f in &PER_WORKER {
        m.family(f.name, f.kind, f.help);
        for &s in &live {
            m.sample(
                f.name,
                &[("worker", &s.to_string())],
                (f.get)(shm.worker(s)),
            );
        }
    }
    for (f, reasons) in &SUMMED {
        m.family(f.name, f.kind, f.help);
        let sum = |k: usize| -> u64 {
            live.iter()
                .map(|&s| (f.get)(shm.worker(s))[k].load(Relaxed))
                .sum()
        };
        if reasons.is_empty() {
            m.sample(f.name, &[], sum(0));
        }
        for (k, reason) in reasons.iter().enumerate() {
            m.sample(f.name, &[("reason", reason)], sum(k));
        }
    }

    // Per database, from the shared totals (retired workers included).
    let totals: Vec<(String, DbTotals)> = shm
        .names()
        .into_iter()
        .filter(|(k, _, _)| *k == Kind::Database)
        .map(|(_, name, i)| {
            let mut stats = shm.retired(i);
            for s in 0..shm.workers_cap() {
                for (k, v) in shm.db_stats(s, i).values().into_iter().enumerate() {
                    stats[k] += v;
                }
            }
            let servers = shm.count(i);
            (name, DbTotals { stats, servers })
        })
        .collect();
    for f in &PER_DATABASE {
        m.family(f.name, f.kind, f.help);
        for (db, t) in &totals {
            m.sample_f(f.name, &[("database", db)], (f.get)(t));
        }
    }

    // Per pool, from the rows every worker sent.
    let mut merged: std::collections::BTreeMap<(String, String), [u64; 7]> = Default::default();
    for (_, r) in pools_rows(pools) {
        let p = merged.entry((r.0, r.1)).or_default();
        for (acc, v) in p.iter_mut().zip(r.2).take(6) {
            *acc += v;
        }
        p[6] = p[6].max(r.2[6]);
    }
    for f in &PER_POOL {
        m.family(f.name, f.kind, f.help);
        for ((db, user), v) in &merged {
            m.sample_f(f.name, &[("database", db), ("user", user)], (f.get)(v));
        }
    }
    m.0
}

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

/// A metric family: its name, type and help, and how to read one sample.
struct Family<G> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    get: G,
}

const fn family<G>(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    get: G,
) -> Family<G> {
    Family {
        name,
        kind,
        help,
        get,
    }
}

type SlotValue = fn(&WorkerSlot) -> u64;

/// One sample per live worker, labelled `worker`.
#[rustfmt::skip]
static PER_WORKER: [Family<SlotValue>; 8] = [
    family("pgbouncers_worker_clients", GAUGE, "Client connections of a worker.",
        |w| w.clients.load(Relaxed)),
    family("pgbouncers_worker_servers", GAUGE, "Server connections of a worker.",
        |w| w.servers.load(Relaxed)),
    family("pgbouncers_worker_accepts_total", COUNTER, "Connections a worker accepted.",
        |w| w.accepts.load(Relaxed)),
    family("pgbouncers_worker_transactions_total", COUNTER, "Transactions a worker pooled.",
        |w| w.transactions.load(Relaxed)),
    family("pgbouncers_worker_queries_total", COUNTER, "Queries a worker pooled.",
        |w| w.queries.load(Relaxed)),
    family("pgbouncers_worker_received_bytes_total", COUNTER,
        "Bytes a worker received from clients.", |w| w.bytes_received.load(Relaxed)),
    family("pgbouncers_worker_sent_bytes_total", COUNTER, "Bytes a worker sent to clients.",
        |w| w.bytes_sent.load(Relaxed)),
    family("pgbouncers_worker_auth_failures_total", COUNTER, "Failed client logins at a worker.",
        |w| w.auth_failures.load(Relaxed)),
];

/// A worker's counter, or its array of counters by reason.
type SlotCounters = fn(&WorkerSlot) -> &[AtomicU64];

/// Counters summed over the live workers: one sample, or one per reason (labelled `reason`,
/// indexing the worker's array).
#[rustfmt::skip]
static SUMMED: [(Family<SlotCounters>, &[&str]); 5] = [
    (family("pgbouncers_proxy_headers_accepted_total", COUNTER, "PROXY headers accepted.",
        |w| std::slice::from_ref(&w.proxy_accepted)), &[]),
    (family("pgbouncers_proxy_headers_rejected_total", COUNTER,
        "PROXY headers or connections refused, by reason.", |w| &w.proxy_rejected),
        &["untrusted", "missing", "invalid", "timeout"]),
    (family("pgbouncers_tls_handshakes_total", COUNTER,
        "TLS sessions clients began (SSLRequest answered S, or direct TLS).",
        |w| std::slice::from_ref(&w.tls_handshakes)), &[]),
    (family("pgbouncers_tls_failures_total", COUNTER, "TLS failures and refusals, by reason.",
        |w| &w.tls_failures), &TlsFailure::NAMES),
    (family("pgbouncers_cancel_requests_total", COUNTER,
        "CancelRequests that arrived, by what became of them (reason: handled, forwarded to a peer, refused, dropped).",
        |w| &w.cancels), &CancelOutcome::NAMES),
];

/// A database's counters over every worker, dead ones included, in `DbStats::values`
/// order, and its server connections now.
struct DbTotals {
    stats: [u64; DB_COUNTERS],
    servers: u32,
}

type DbValue = fn(&DbTotals) -> f64;

/// One sample per database, labelled `database`.
#[rustfmt::skip]
static PER_DATABASE: [Family<DbValue>; 13] = [
    family("pgbouncers_database_transactions_total", COUNTER, "Transactions pooled.",
        |t| t.stats[0] as f64),
    family("pgbouncers_database_queries_total", COUNTER, "Queries pooled.",
        |t| t.stats[1] as f64),
    family("pgbouncers_database_received_bytes_total", COUNTER, "Bytes received from clients.",
        |t| t.stats[2] as f64),
    family("pgbouncers_database_sent_bytes_total", COUNTER, "Bytes sent to clients.",
        |t| t.stats[3] as f64),
    family("pgbouncers_database_transaction_seconds_total", COUNTER, "Time spent in transactions.",
        |t| t.stats[4] as f64 * 1e-6),
    family("pgbouncers_database_query_seconds_total", COUNTER, "Time spent in queries.",
        |t| t.stats[5] as f64 * 1e-6),
    family("pgbouncers_database_wait_seconds_total", COUNTER, "Time clients waited for a server.",
        |t| t.stats[6] as f64 * 1e-6),
    family("pgbouncers_database_server_assignments_total", COUNTER,
        "Times a server was given to a client.", |t| t.stats[7] as f64),
    family("pgbouncers_database_client_parses_total", COUNTER,
        "Named statements clients prepared (max_prepared_statements).", |t| t.stats[8] as f64),
    family("pgbouncers_database_server_parses_total", COUNTER,
        "Parses the pooler sent to servers for clients' named statements.",
        |t| t.stats[9] as f64),
    family("pgbouncers_database_binds_total", COUNTER, "Binds of named statements.",
        |t| t.stats[10] as f64),
    family("pgbouncers_database_client_logins_total", COUNTER, "Clients that logged in.",
        |t| t.stats[11] as f64),
    family("pgbouncers_database_server_connections", GAUGE,
        "Server connections to a database, all workers.", |t| f64::from(t.servers)),
];

/// From a pool's seven values (see [`pools_rows`]), summed over the workers (the wait: the
/// longest).
type PoolValue = fn(&[u64; 7]) -> f64;

/// One sample per pool, labelled `database` and `user`.
#[rustfmt::skip]
static PER_POOL: [Family<PoolValue>; 7] = [
    family("pgbouncers_pool_client_active_connections", GAUGE,
        "Clients logged in and not waiting.", |p| p[0] as f64),
    family("pgbouncers_pool_client_waiting_connections", GAUGE, "Clients waiting for a server.",
        |p| p[1] as f64),
    family("pgbouncers_pool_server_active_connections", GAUGE, "Servers linked to a client.",
        |p| p[2] as f64),
    family("pgbouncers_pool_server_idle_connections", GAUGE, "Idle servers.",
        |p| p[3] as f64),
    family("pgbouncers_pool_server_used_connections", GAUGE, "Servers running the reset query.",
        |p| p[4] as f64),
    family("pgbouncers_pool_server_login_connections", GAUGE, "Servers connecting or logging in.",
        |p| p[5] as f64),
    family("pgbouncers_pool_maxwait_seconds", GAUGE, "Wait of the oldest waiting client.",
        |p| p[6] as f64 * 1e-6),
];

/// (database, user, [cl_active, cl_waiting, sv_active, sv_idle, sv_tested, sv_login, maxwait_us])
fn pools_rows(rows: &[(u8, Row)]) -> impl Iterator<Item = (u8, (String, String, [u64; 7]))> + '_ {
    rows.iter().filter(|(_, r)| r.len() >= 9).map(|(s, r)| {
        let n = |i: usize| r[i].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0u64);
        (
            *s,
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                [n(2), n(3), n(4), n(5), n(6), n(7), n(8)],
            ),
        )
    })
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[derive(Default)]
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {v}");
    }

    fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut o = Out::default();
        o.sample("m", &[("database", "a\"b\\c\nd")], 3);
        assert_eq!(o.0, "m{database=\"a\\\"b\\\\c\\nd\"} 3\n");
    }

    /// Two live workers (0 and 2), one empty slot with stale counters (1), one that died
    /// (3, its database counters retired), two databases and a user, pools from two
    /// workers with one pool on both.
    fn fixed_state() -> (Shm, Vec<(u8, Row)>) {
        let shm = Shm::create(4, 16).unwrap();
        let app = shm.name_index(Kind::Database, "app").unwrap();
        let odd = shm.name_index(Kind::Database, "we\"ird").unwrap();
        shm.name_index(Kind::User, "u").unwrap();
        for slot in 0..4 {
            let w = shm.worker(slot);
            let n = |k: u64| (slot as u64 + 1) * 100 + k;
            w.state.store(u32::from(slot % 2 == 0), Relaxed);
            for (k, c) in [
                &w.servers,
                &w.accepts,
                &w.transactions,
                &w.queries,
                &w.bytes_received,
                &w.bytes_sent,
                &w.auth_failures,
                &w.proxy_accepted,
                &w.tls_handshakes,
            ]
            .into_iter()
            .enumerate()
            {
                c.store(n(k as u64), Relaxed);
            }
            for (k, c) in w.proxy_rejected.iter().enumerate() {
                c.store(n(10 + k as u64), Relaxed);
            }
            for (k, c) in w.tls_failures.iter().enumerate() {
                c.store(n(20 + k as u64), Relaxed);
            }
            for (k, c) in w.cancels.iter().enumerate() {
                c.store(n(30 + k as u64), Relaxed);
            }
            for (db, base) in [(app, 1_000u64), (odd, 5_000)] {
                let d = shm.db_stats(slot, db);
                for (k, c) in [
                    &d.xact_count,
                    &d.query_count,
                    &d.bytes_received,
                    &d.bytes_sent,
                    &d.xact_time_us,
                    &d.query_time_us,
                    &d.wait_time_us,
                    &d.server_assignments,
                    &d.client_parse_count,
                    &d.server_parse_count,
                    &d.bind_count,
                    &d.client_login_count,
                ]
                .into_iter()
                .enumerate()
                {
                    c.store(base * (slot as u64 + 1) + k as u64 * 250_001, Relaxed);
                }
            }
        }
        shm.reclaim(3);
        assert!(shm.acquire_client(0, 0) && shm.acquire_client(2, 0));
        assert!(shm.acquire(0, app, 0) && shm.acquire(2, app, 0) && shm.acquire(2, odd, 0));
        let row = |cells: &[&str]| -> Row { cells.iter().map(|c| Some(c.to_string())).collect() };
        let pools = vec![
            (
                0,
                row(&[
                    "app",
                    "u",
                    "1",
                    "2",
                    "3",
                    "4",
                    "5",
                    "6",
                    "1500000",
                    "transaction",
                ]),
            ),
            (
                2,
                row(&[
                    "app",
                    "u",
                    "10",
                    "0",
                    "1",
                    "0",
                    "0",
                    "0",
                    "250",
                    "transaction",
                ]),
            ),
            (
                2,
                row(&["we\"ird", "u", "x", "1", "1", "1", "1", "1", "0", "session"]),
            ),
            (2, row(&["short", "u", "1"])),
        ];
        (shm, pools)
    }

    /// The body for [`fixed_state`], as the hand-written families before the tables
    /// printed it.
    const FIXED_BODY: &str = r#"# HELP pgbouncers_up 1 while the pooler runs.
# TYPE pgbouncers_up gauge
pgbouncers_up 1
# HELP pgbouncers_uptime_seconds Seconds since the pooler started.
# TYPE pgbouncers_uptime_seconds gauge
pgbouncers_uptime_seconds 42
# HELP pgbouncers_clients Client connections, all workers.
# TYPE pgbouncers_clients gauge
pgbouncers_clients 2
# HELP pgbouncers_scrape_missing_workers Workers that did not answer this scrape in time.
# TYPE pgbouncers_scrape_missing_workers gauge
pgbouncers_scrape_missing_workers 1
# HELP pgbouncers_worker_clients Client connections of a worker.
# TYPE pgbouncers_worker_clients gauge
pgbouncers_worker_clients{worker="0"} 1
pgbouncers_worker_clients{worker="2"} 1
# HELP pgbouncers_worker_servers Server connections of a worker.
# TYPE pgbouncers_worker_servers gauge
pgbouncers_worker_servers{worker="0"} 100
pgbouncers_worker_servers{worker="2"} 300
# HELP pgbouncers_worker_accepts_total Connections a worker accepted.
# TYPE pgbouncers_worker_accepts_total counter
pgbouncers_worker_accepts_total{worker="0"} 101
pgbouncers_worker_accepts_total{worker="2"} 301
# HELP pgbouncers_worker_transactions_total Transactions a worker pooled.
# TYPE pgbouncers_worker_transactions_total counter
pgbouncers_worker_transactions_total{worker="0"} 102
pgbouncers_worker_transactions_total{worker="2"} 302
# HELP pgbouncers_worker_queries_total Queries a worker pooled.
# TYPE pgbouncers_worker_queries_total counter
pgbouncers_worker_queries_total{worker="0"} 103
pgbouncers_worker_queries_total{worker="2"} 303
# HELP pgbouncers_worker_received_bytes_total Bytes a worker received from clients.
# TYPE pgbouncers_worker_received_bytes_total counter
pgbouncers_worker_received_bytes_total{worker="0"} 104
pgbouncers_worker_received_bytes_total{worker="2"} 304
# HELP pgbouncers_worker_sent_bytes_total Bytes a worker sent to clients.
# TYPE pgbouncers_worker_sent_bytes_total counter
pgbouncers_worker_sent_bytes_total{worker="0"} 105
pgbouncers_worker_sent_bytes_total{worker="2"} 305
# HELP pgbouncers_worker_auth_failures_total Failed client logins at a worker.
# TYPE pgbouncers_worker_auth_failures_total counter
pgbouncers_worker_auth_failures_total{worker="0"} 106
pgbouncers_worker_auth_failures_total{worker="2"} 306
# HELP pgbouncers_proxy_headers_accepted_total PROXY headers accepted.
# TYPE pgbouncers_proxy_headers_accepted_total counter
pgbouncers_proxy_headers_accepted_total 414
# HELP pgbouncers_proxy_headers_rejected_total PROXY headers or connections refused, by reason.
# TYPE pgbouncers_proxy_headers_rejected_total counter
pgbouncers_proxy_headers_rejected_total{reason="untrusted"} 420
pgbouncers_proxy_headers_rejected_total{reason="missing"} 422
pgbouncers_proxy_headers_rejected_total{reason="invalid"} 424
pgbouncers_proxy_headers_rejected_total{reason="timeout"} 426
# HELP pgbouncers_tls_handshakes_total TLS sessions clients began (SSLRequest answered S, or direct TLS).
# TYPE pgbouncers_tls_handshakes_total counter
pgbouncers_tls_handshakes_total 416
# HELP pgbouncers_tls_failures_total TLS failures and refusals, by reason.
# TYPE pgbouncers_tls_failures_total counter
pgbouncers_tls_failures_total{reason="client_handshake"} 440
pgbouncers_tls_failures_total{reason="required"} 442
pgbouncers_tls_failures_total{reason="unencrypted"} 444
pgbouncers_tls_failures_total{reason="server_handshake"} 446
# HELP pgbouncers_cancel_requests_total CancelRequests that arrived, by what became of them (reason: handled, forwarded to a peer, refused, dropped).
# TYPE pgbouncers_cancel_requests_total counter
pgbouncers_cancel_requests_total{reason="handled"} 460
pgbouncers_cancel_requests_total{reason="forwarded"} 462
pgbouncers_cancel_requests_total{reason="refused"} 464
pgbouncers_cancel_requests_total{reason="dropped"} 466
# HELP pgbouncers_database_transactions_total Transactions pooled.
# TYPE pgbouncers_database_transactions_total counter
pgbouncers_database_transactions_total{database="we\"ird"} 50000
pgbouncers_database_transactions_total{database="app"} 10000
# HELP pgbouncers_database_queries_total Queries pooled.
# TYPE pgbouncers_database_queries_total counter
pgbouncers_database_queries_total{database="we\"ird"} 1050004
pgbouncers_database_queries_total{database="app"} 1010004
# HELP pgbouncers_database_received_bytes_total Bytes received from clients.
# TYPE pgbouncers_database_received_bytes_total counter
pgbouncers_database_received_bytes_total{database="we\"ird"} 2050008
pgbouncers_database_received_bytes_total{database="app"} 2010008
# HELP pgbouncers_database_sent_bytes_total Bytes sent to clients.
# TYPE pgbouncers_database_sent_bytes_total counter
pgbouncers_database_sent_bytes_total{database="we\"ird"} 3050012
pgbouncers_database_sent_bytes_total{database="app"} 3010012
# HELP pgbouncers_database_transaction_seconds_total Time spent in transactions.
# TYPE pgbouncers_database_transaction_seconds_total counter
pgbouncers_database_transaction_seconds_total{database="we\"ird"} 4.050015999999999
pgbouncers_database_transaction_seconds_total{database="app"} 4.010016
# HELP pgbouncers_database_query_seconds_total Time spent in queries.
# TYPE pgbouncers_database_query_seconds_total counter
pgbouncers_database_query_seconds_total{database="we\"ird"} 5.05002
pgbouncers_database_query_seconds_total{database="app"} 5.01002
# HELP pgbouncers_database_wait_seconds_total Time clients waited for a server.
# TYPE pgbouncers_database_wait_seconds_total counter
pgbouncers_database_wait_seconds_total{database="we\"ird"} 6.050024
pgbouncers_database_wait_seconds_total{database="app"} 6.010024
# HELP pgbouncers_database_server_assignments_total Times a server was given to a client.
# TYPE pgbouncers_database_server_assignments_total counter
pgbouncers_database_server_assignments_total{database="we\"ird"} 7050028
pgbouncers_database_server_assignments_total{database="app"} 7010028
# HELP pgbouncers_database_client_parses_total Named statements clients prepared (max_prepared_statements).
# TYPE pgbouncers_database_client_parses_total counter
pgbouncers_database_client_parses_total{database="we\"ird"} 8050032
pgbouncers_database_client_parses_total{database="app"} 8010032
# HELP pgbouncers_database_server_parses_total Parses the pooler sent to servers for clients' named statements.
# TYPE pgbouncers_database_server_parses_total counter
pgbouncers_database_server_parses_total{database="we\"ird"} 9050036
pgbouncers_database_server_parses_total{database="app"} 9010036
# HELP pgbouncers_database_binds_total Binds of named statements.
# TYPE pgbouncers_database_binds_total counter
pgbouncers_database_binds_total{database="we\"ird"} 10050040
pgbouncers_database_binds_total{database="app"} 10010040
# HELP pgbouncers_database_client_logins_total Clients that logged in.
# TYPE pgbouncers_database_client_logins_total counter
pgbouncers_database_client_logins_total{database="we\"ird"} 11050044
pgbouncers_database_client_logins_total{database="app"} 11010044
# HELP pgbouncers_database_server_connections Server connections to a database, all workers.
# TYPE pgbouncers_database_server_connections gauge
pgbouncers_database_server_connections{database="we\"ird"} 1
pgbouncers_database_server_connections{database="app"} 2
# HELP pgbouncers_pool_client_active_connections Clients logged in and not waiting.
# TYPE pgbouncers_pool_client_active_connections gauge
pgbouncers_pool_client_active_connections{database="app",user="u"} 11
pgbouncers_pool_client_active_connections{database="we\"ird",user="u"} 0
# HELP pgbouncers_pool_client_waiting_connections Clients waiting for a server.
# TYPE pgbouncers_pool_client_waiting_connections gauge
pgbouncers_pool_client_waiting_connections{database="app",user="u"} 2
pgbouncers_pool_client_waiting_connections{database="we\"ird",user="u"} 1
# HELP pgbouncers_pool_server_active_connections Servers linked to a client.
# TYPE pgbouncers_pool_server_active_connections gauge
pgbouncers_pool_server_active_connections{database="app",user="u"} 4
pgbouncers_pool_server_active_connections{database="we\"ird",user="u"} 1
# HELP pgbouncers_pool_server_idle_connections Idle servers.
# TYPE pgbouncers_pool_server_idle_connections gauge
pgbouncers_pool_server_idle_connections{database="app",user="u"} 4
pgbouncers_pool_server_idle_connections{database="we\"ird",user="u"} 1
# HELP pgbouncers_pool_server_used_connections Servers running the reset query.
# TYPE pgbouncers_pool_server_used_connections gauge
pgbouncers_pool_server_used_connections{database="app",user="u"} 5
pgbouncers_pool_server_used_connections{database="we\"ird",user="u"} 1
# HELP pgbouncers_pool_server_login_connections Servers connecting or logging in.
# TYPE pgbouncers_pool_server_login_connections gauge
pgbouncers_pool_server_login_connections{database="app",user="u"} 6
pgbouncers_pool_server_login_connections{database="we\"ird",user="u"} 1
# HELP pgbouncers_pool_maxwait_seconds Wait of the oldest waiting client.
# TYPE pgbouncers_pool_maxwait_seconds gauge
pgbouncers_pool_maxwait_seconds{database="app",user="u"} 1.5
pgbouncers_pool_maxwait_seconds{database="we\"ird",user="u"} 0
"#;

    #[test]
    fn body_for_a_fixed_state() {
        let (shm, pools) = fixed_state();
        assert_eq!(render(&shm, 42, &pools, &[1]), FIXED_BODY);
    }
}
