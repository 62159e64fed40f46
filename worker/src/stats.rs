//! Counters: kept as plain numbers on the hot path, published to shared memory each tick.

use crate::shm::{bump, Shm};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

/// Per-pool counters in PgBouncer's SHOW STATS terms.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolStats {
    pub xact_count: u64,
    pub query_count: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    pub wait_time_us: u64,
    pub server_assignments: u64,
    /// Named statements clients prepared.
    pub client_parse_count: u64,
    /// Parses sent to servers for clients' named statements.
    pub server_parse_count: u64,
    /// Binds of named statements.
    pub bind_count: u64,
    /// Clients that logged in.
    pub client_login_count: u64,
}

impl PoolStats {
    pub fn add(&mut self, o: &PoolStats) {
        self.client_parse_count += o.client_parse_count;
        self.server_parse_count += o.server_parse_count;
        self.bind_count += o.bind_count;
        self.client_login_count += o.client_login_count;
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.xact_time_us += o.xact_time_us;
        self.query_time_us += o.query_time_us;
        self.wait_time_us += o.wait_time_us;
        self.server_assignments += o.server_assignments;
    }
}

/// Worker-wide counters that are not per pool.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub accepts: u64,
    pub proxy_accepted: u64,
    /// Indexed by `proxy::Rejection`.
    pub proxy_rejected: [u64; 4],
    pub auth_failures: u64,
    /// TLS sessions clients began.
    pub tls_handshakes: u64,
    /// Indexed by [`TlsFailure`].
    pub tls_failures: [u64; 4],
    /// CancelRequests that arrived here, indexed by [`CancelOutcome`].
    pub cancels: [u64; 4],
}

/// What became of a CancelRequest that arrived: the `result` label of
/// `pgbouncers_cancel_requests_total`.
#[derive(Clone, Copy, Debug)]
pub enum CancelOutcome {
    /// Its key names this pooler: passed to the worker that handed it out.
    Handled = 0,
    /// Its key names a peer: sent on to it.
    Forwarded = 1,
    /// Marked as forwarded but not from a peer, or naming another peer: not acted on.
    Refused = 2,
    /// Its peer is unknown, unresolved, unreachable or at pool_size: lost.
    Dropped = 3,
}

impl CancelOutcome {
    pub const NAMES: [&'static str; 4] = ["handled", "forwarded", "refused", "dropped"];
}

/// Why a TLS session failed or was refused: the `reason` label of
/// `pgbouncers_tls_failures_total`.
#[derive(Clone, Copy, Debug)]
pub enum TlsFailure {
    /// A client's handshake or record failed (rustls said why in the log).
    ClientHandshake = 0,
    /// A TCP client came without TLS where client_tls_sslmode requires it.
    Required = 1,
    /// A client sent bytes after its SSLRequest before the answer.
    Unencrypted = 2,
    /// The handshake with PostgreSQL failed.
    ServerHandshake = 3,
}

impl TlsFailure {
    pub const NAMES: [&'static str; 4] = [
        "client_handshake",
        "required",
        "unencrypted",
        "server_handshake",
    ];
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every pool's counters added up (`Pools::totals`), for [`WorkerStats::flush`].
#[derive(Default)]
pub struct Totals {
    pub all: PoolStats,
    pub by_db: HashMap<usize, PoolStats>,
    /// Server connections open.
    pub servers: u64,
}

impl WorkerStats {
    /// Marks the slot as running under this process.
    pub fn started(&self, shm: &Shm, slot: usize) {
        let w = shm.worker(slot);
        w.pid.store(std::process::id() as i32, Relaxed);
        w.state.store(1, Relaxed);
        w.started.store(unix_now(), Relaxed);
        bump(&w.generation, 1);
        w.heartbeat.store(unix_now(), Relaxed);
    }

    /// Publishes every counter. Totals are stored, not added, so a flush is idempotent.
    pub fn flush(&self, shm: &Shm, slot: usize, pools: &Totals) {
        let w = shm.worker(slot);
        let (total, servers) = (&pools.all, pools.servers);
        w.accepts.store(self.accepts, Relaxed);
        w.transactions.store(total.xact_count, Relaxed);
        w.queries.store(total.query_count, Relaxed);
        w.bytes_received.store(total.bytes_received, Relaxed);
        w.bytes_sent.store(total.bytes_sent, Relaxed);
        w.wait_us.store(total.wait_time_us, Relaxed);
        w.servers.store(servers, Relaxed);
        w.heartbeat.store(unix_now(), Relaxed);
        w.proxy_accepted.store(self.proxy_accepted, Relaxed);
        for (k, v) in self.proxy_rejected.iter().enumerate() {
            w.proxy_rejected[k].store(*v, Relaxed);
        }
        w.auth_failures.store(self.auth_failures, Relaxed);
        w.tls_handshakes.store(self.tls_handshakes, Relaxed);
        for (k, v) in self.tls_failures.iter().enumerate() {
            w.tls_failures[k].store(*v, Relaxed);
        }
        for (k, v) in self.cancels.iter().enumerate() {
            w.cancels[k].store(*v, Relaxed);
        }
        for (&i, s) in &pools.by_db {
            let d = shm.db_stats(slot, i);
            d.xact_count.store(s.xact_count, Relaxed);
            d.query_count.store(s.query_count, Relaxed);
            d.bytes_received.store(s.bytes_received, Relaxed);
            d.bytes_sent.store(s.bytes_sent, Relaxed);
            d.xact_time_us.store(s.xact_time_us, Relaxed);
            d.query_time_us.store(s.query_time_us, Relaxed);
            d.client_parse_count.store(s.client_parse_count, Relaxed);
            d.server_parse_count.store(s.server_parse_count, Relaxed);
            d.bind_count.store(s.bind_count, Relaxed);
            d.client_login_count.store(s.client_login_count, Relaxed);
            d.wait_time_us.store(s.wait_time_us, Relaxed);
            d.server_assignments.store(s.server_assignments, Relaxed);
        }
    }
}
