//! The Prometheus endpoint (`metrics_addr`): `GET /metrics` in the text format, served by
//! the supervisor's own loop. Counters come from shared memory; per-pool gauges are gathered
//! from every worker without blocking, so a scrape never holds up signal handling.

use crate::console::Asker;
use crate::Supervisor;
use mio::net::{TcpListener, TcpStream};
use pgbouncers_worker::control::{Row, What};
use pgbouncers_worker::shm::Kind;
use std::fmt::Write as _;
use std::io::{Read, Write};
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
        let mut l = TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("metrics_addr {addr}: {e}")))?;
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
        let body = self.render(&rows, &missing);
        let Some(c) = self.metrics.conns.get_mut(id) else {
            return;
        };
        c.waiting = false;
        c.out = response("200 OK", &body);
        self.metrics_flush(id);
    }

    fn render(&self, pools: &[(u8, Row)], missing: &[u8]) -> String {
        let mut m = Out::default();
        let shm = &self.shm;
        m.family("pgbouncers_up", "gauge", "1 while the pooler runs.");
        m.sample("pgbouncers_up", &[], 1);
        let uptime = self
            .metrics
            .started
            .map(|s| s.elapsed().as_secs())
            .unwrap_or(0);
        m.family(
            "pgbouncers_uptime_seconds",
            "gauge",
            "Seconds since the pooler started.",
        );
        m.sample("pgbouncers_uptime_seconds", &[], uptime);
        m.family(
            "pgbouncers_clients",
            "gauge",
            "Client connections, all workers.",
        );
        m.sample("pgbouncers_clients", &[], shm.clients() as u64);
        m.family(
            "pgbouncers_scrape_missing_workers",
            "gauge",
            "Workers that did not answer this scrape in time.",
        );
        m.sample(
            "pgbouncers_scrape_missing_workers",
            &[],
            missing.len() as u64,
        );

        let per_worker: [WorkerMetric; 8] = [
            (
                "pgbouncers_worker_clients",
                "gauge",
                "Client connections of a worker.",
                |w| w.clients.load(Relaxed),
            ),
            (
                "pgbouncers_worker_servers",
                "gauge",
                "Server connections of a worker.",
                |w| w.servers.load(Relaxed),
            ),
            (
                "pgbouncers_worker_accepts_total",
                "counter",
                "Connections a worker accepted.",
                |w| w.accepts.load(Relaxed),
            ),
            (
                "pgbouncers_worker_transactions_total",
                "counter",
                "Transactions a worker pooled.",
                |w| w.transactions.load(Relaxed),
            ),
            (
                "pgbouncers_worker_queries_total",
                "counter",
                "Queries a worker pooled.",
                |w| w.queries.load(Relaxed),
            ),
            (
                "pgbouncers_worker_received_bytes_total",
                "counter",
                "Bytes a worker received from clients.",
                |w| w.bytes_received.load(Relaxed),
            ),
            (
                "pgbouncers_worker_sent_bytes_total",
                "counter",
                "Bytes a worker sent to clients.",
                |w| w.bytes_sent.load(Relaxed),
            ),
            (
                "pgbouncers_worker_auth_failures_total",
                "counter",
                "Failed client logins at a worker.",
                |w| w.auth_failures.load(Relaxed),
            ),
        ];
        let live: Vec<usize> = (0..shm.workers_cap())
            .filter(|&s| shm.worker(s).state.load(Relaxed) != 0)
            .collect();
        for (name, kind, help, get) in per_worker {
            m.family(name, kind, help);
            for &s in &live {
                m.sample(name, &[("worker", &s.to_string())], get(shm.worker(s)));
            }
        }
        m.family(
            "pgbouncers_proxy_headers_accepted_total",
            "counter",
            "PROXY headers accepted.",
        );
        let accepted: u64 = live
            .iter()
            .map(|&s| shm.worker(s).proxy_accepted.load(Relaxed))
            .sum();
        m.sample("pgbouncers_proxy_headers_accepted_total", &[], accepted);
        m.family(
            "pgbouncers_proxy_headers_rejected_total",
            "counter",
            "PROXY headers or connections refused, by reason.",
        );
        for (k, reason) in ["untrusted", "missing", "invalid", "timeout"]
            .iter()
            .enumerate()
        {
            let v: u64 = live
                .iter()
                .map(|&s| shm.worker(s).proxy_rejected[k].load(Relaxed))
                .sum();
            m.sample(
                "pgbouncers_proxy_headers_rejected_total",
                &[("reason", reason)],
                v,
            );
        }

        m.family(
            "pgbouncers_tls_handshakes_total",
            "counter",
            "TLS sessions clients began (SSLRequest answered S, or direct TLS).",
        );
        let begun: u64 = live
            .iter()
            .map(|&s| shm.worker(s).tls_handshakes.load(Relaxed))
            .sum();
        m.sample("pgbouncers_tls_handshakes_total", &[], begun);
        m.family(
            "pgbouncers_tls_failures_total",
            "counter",
            "TLS failures and refusals, by reason.",
        );
        for (k, reason) in pgbouncers_worker::stats::TlsFailure::NAMES
            .iter()
            .enumerate()
        {
            let v: u64 = live
                .iter()
                .map(|&s| shm.worker(s).tls_failures[k].load(Relaxed))
                .sum();
            m.sample("pgbouncers_tls_failures_total", &[("reason", reason)], v);
        }

        // Per database, from the shared totals (retired workers included).
        let dbs: Vec<(String, usize)> = shm
            .names()
            .into_iter()
            .filter(|(k, _, _)| *k == Kind::Database)
            .map(|(_, n, i)| (n, i))
            .collect();
        let per_db: [(&str, &str, usize, f64); 8] = [
            (
                "pgbouncers_database_transactions_total",
                "Transactions pooled.",
                0,
                1.0,
            ),
            (
                "pgbouncers_database_queries_total",
                "Queries pooled.",
                1,
                1.0,
            ),
            (
                "pgbouncers_database_received_bytes_total",
                "Bytes received from clients.",
                2,
                1.0,
            ),
            (
                "pgbouncers_database_sent_bytes_total",
                "Bytes sent to clients.",
                3,
                1.0,
            ),
            (
                "pgbouncers_database_transaction_seconds_total",
                "Time spent in transactions.",
                4,
                1e-6,
            ),
            (
                "pgbouncers_database_query_seconds_total",
                "Time spent in queries.",
                5,
                1e-6,
            ),
            (
                "pgbouncers_database_wait_seconds_total",
                "Time clients waited for a server.",
                6,
                1e-6,
            ),
            (
                "pgbouncers_database_server_assignments_total",
                "Times a server was given to a client.",
                7,
                1.0,
            ),
        ];
        let totals: Vec<(String, [u64; 8], u32)> = dbs
            .iter()
            .map(|(name, i)| {
                let mut t = shm.retired(*i);
                for s in 0..shm.workers_cap() {
                    for (k, v) in shm.db_stats(s, *i).values().into_iter().enumerate() {
                        t[k] += v;
                    }
                }
                (name.clone(), t, shm.count(*i))
            })
            .collect();
        for (name, help, k, scale) in per_db {
            m.family(name, "counter", help);
            for (db, t, _) in &totals {
                m.sample_f(name, &[("database", db)], t[k] as f64 * scale);
            }
        }
        m.family(
            "pgbouncers_database_server_connections",
            "gauge",
            "Server connections to a database, all workers.",
        );
        for (db, _, count) in &totals {
            m.sample(
                "pgbouncers_database_server_connections",
                &[("database", db)],
                *count as u64,
            );
        }

        // Per pool, from the rows every worker sent.
        let mut merged: std::collections::BTreeMap<(String, String), [u64; 7]> = Default::default();
        for (_, r) in pools_rows(pools) {
            let key = (r.0, r.1);
            let p = merged.entry(key).or_default();
            for (acc, v) in p.iter_mut().zip(r.2).take(6) {
                *acc += v;
            }
            p[6] = p[6].max(r.2[6]);
        }
        let gauges: [(&str, &str, usize, f64); 7] = [
            (
                "pgbouncers_pool_client_active_connections",
                "Clients logged in and not waiting.",
                0,
                1.0,
            ),
            (
                "pgbouncers_pool_client_waiting_connections",
                "Clients waiting for a server.",
                1,
                1.0,
            ),
            (
                "pgbouncers_pool_server_active_connections",
                "Servers linked to a client.",
                2,
                1.0,
            ),
            (
                "pgbouncers_pool_server_idle_connections",
                "Idle servers.",
                3,
                1.0,
            ),
            (
                "pgbouncers_pool_server_used_connections",
                "Servers running the reset query.",
                4,
                1.0,
            ),
            (
                "pgbouncers_pool_server_login_connections",
                "Servers connecting or logging in.",
                5,
                1.0,
            ),
            (
                "pgbouncers_pool_maxwait_seconds",
                "Wait of the oldest waiting client.",
                6,
                1e-6,
            ),
        ];
        for (name, help, k, scale) in gauges {
            m.family(name, "gauge", help);
            for ((db, user), v) in &merged {
                m.sample_f(
                    name,
                    &[("database", db), ("user", user)],
                    v[k] as f64 * scale,
                );
            }
        }
        m.0
    }
}

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

/// Name, type, help, and how to read it from a worker's slot.
type WorkerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&pgbouncers_worker::shm::WorkerSlot) -> u64,
);

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
}
