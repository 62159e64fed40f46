//! SHOW commands: PgBouncer's columns, from shared memory, the config, and rows every
//! worker sends.

use crate::buf::BufPool;
use crate::cancel::PeerCancels;
use crate::client::CState;
use crate::config::Config;
use crate::conn::Conn;
use crate::control::Holds;
use crate::control::{Row, What};
use crate::dns::Resolver;
use crate::init::PassedFd;
use crate::pool::Pools;
use crate::proxy::Peer;
use crate::server::SState;
use crate::shm::Shm;
use crate::shm::{Kind, DB_COUNTERS};
use crate::wire::write;
use slab::Slab;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

/// Column types as PgBouncer sends them (timestamps are text there too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    Int4,
    Int8,
    Numeric,
    Bytea,
}

impl Ty {
    fn oid(self) -> u32 {
        match self {
            Ty::Text => 25,
            Ty::Int4 => 23,
            Ty::Int8 => 20,
            Ty::Numeric => 1700,
            Ty::Bytea => 17,
        }
    }
}

pub struct Table {
    cols: Vec<(String, Ty)>,
    rows: Vec<Row>,
}

impl Table {
    pub fn new(cols: &[(&str, Ty)], rows: Vec<Row>) -> Table {
        Table {
            cols: cols.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
            rows,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let cols: Vec<(&str, u32)> = self
            .cols
            .iter()
            .map(|(n, t)| (n.as_str(), t.oid()))
            .collect();
        write::row_description(out, &cols);
        for r in &self.rows {
            write::data_row(out, r.iter().map(|v| v.as_deref()));
        }
        write::command_complete(out, "SHOW");
        write::ready_for_query(out, crate::relay::TxStatus::Idle);
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// Whether process `pid` still exists (signal 0 checks without sending anything).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// SHOW HELP's detail: PgBouncer 1.25's, with this pooler's commands (SHOW WORKERS,
/// KILL_CLIENT) and without what it refuses (SUSPEND).
const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
                    \tSHOW PEERS|PEER_POOLS\n\
                    \tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE|WORKERS\n\
                    \tSHOW DNS_HOSTS|DNS_ZONES\n\
                    \tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
                    \tSET key = arg\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\
                    \tDISABLE <db>\n\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL [<db>]\n\
                    \tKILL_CLIENT <client_id>\n\tSHUTDOWN\n\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
                    \tWAIT_CLOSE [<db>]";

/// `2024-01-01 12:00:00 UTC`, as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How the console answers a SHOW.
pub(crate) enum Answer {
    /// A table from this worker alone.
    Table(Table),
    /// SHOW HELP: the usage as a notice.
    Help,
    /// A table of rows from every worker, collected through the supervisor first.
    Collect(What),
    /// Not a SHOW this pooler knows.
    Unknown,
}

/// SHOW HELP's answer: the usage as a NOTICE, then an empty SHOW.
pub(crate) fn help(out: &mut Vec<u8>) {
    notice(out, "Console usage", HELP);
    write::command_complete(out, "SHOW");
    write::ready_for_query(out, crate::relay::TxStatus::Idle);
}

/// What the SHOW tables read of a worker. Borrowed, never mutable: a SHOW changes
/// nothing, and the tables can be built wherever the loop has the worker at hand.
pub(crate) struct View<'a> {
    pub slot: usize,
    pub now: Instant,
    pub cfg: &'a Config,
    pub shm: &'a Shm,
    /// The previous generation's shared memory while it drains after an online upgrade.
    pub predecessor: Option<&'a Shm>,
    pub conns: &'a Slab<Conn>,
    pub pools: &'a Pools,
    pub bufs: &'a BufPool,
    pub holds: &'a Holds,
    pub dns: &'a Resolver,
    pub peer_cancels: &'a PeerCancels,
    pub passed: &'a [PassedFd],
}

impl View<'_> {
    /// What the console answers to SHOW `what`.
    pub(crate) fn show(&self, what: &str) -> Answer {
        Answer::Table(match what {
            "help" => return Answer::Help,
            "version" => Table::new(
                &[("version", Ty::Text)],
                vec![vec![s(format!("pgbouncers {}", env!("CARGO_PKG_VERSION")))]],
            ),
            "config" => self.show_config(),
            "state" => self.show_state(),
            "stats" | "stats_totals" | "stats_averages" => self.show_stats(what),
            "totals" => self.show_totals(),
            "workers" => self.show_workers(),
            "pools" | "lists" | "databases" | "users" => return Answer::Collect(What::Pools),
            "peers" => self.show_peers(),
            "peer_pools" => self.show_peer_pools(),
            "fds" => self.show_fds(),
            // Each worker's slots and buffer free lists, and its resolver cache.
            "mem" => return Answer::Collect(What::Mem),
            "dns_hosts" => return Answer::Collect(What::DnsHosts),
            // Zones are checked only with dns_zone_check_period, which is refused.
            "dns_zones" => Table::new(
                &[
                    ("zonename", Ty::Text),
                    ("serial", Ty::Int8),
                    ("count", Ty::Int4),
                ],
                Vec::new(),
            ),
            "clients" => return Answer::Collect(What::Clients),
            "servers" => return Answer::Collect(What::Servers),
            "sockets" | "active_sockets" => return Answer::Collect(What::Sockets),
            _ => return Answer::Unknown,
        })
    }

    /// The answer to a SHOW whose rows came from every worker.
    pub(crate) fn collected(&self, what: &str, rows: Vec<(u8, Row)>) -> Table {
        match what {
            "pools" => self.show_pools(rows),
            "lists" => self.show_lists(rows),
            "databases" => self.show_databases(rows),
            "users" => self.show_users(rows),
            "sockets" => show_socket_buffers(rows, false),
            "active_sockets" => show_socket_buffers(rows, true),
            "mem" => show_mem(rows),
            "dns_hosts" => show_dns_hosts(rows),
            _ => show_sockets(rows),
        }
    }

    fn wall(&self, t: Instant) -> SystemTime {
        SystemTime::now() - self.now.saturating_duration_since(t)
    }

    pub(crate) fn show_config(&self) -> Table {
        Table::new(
            &[
                ("key", Ty::Text),
                ("value", Ty::Text),
                ("default", Ty::Text),
                ("changeable", Ty::Text),
            ],
            crate::config::settings::show_config_rows(self.cfg),
        )
    }

    pub(crate) fn show_state(&self) -> Table {
        let paused = !self.pools.list.is_empty() && self.pools.list.iter().all(|p| p.paused);
        let yn = |v: bool| s(if v { "yes" } else { "no" });
        Table::new(
            &[("key", Ty::Text), ("value", Ty::Text)],
            vec![
                vec![s("active"), yn(!paused)],
                vec![s("paused"), yn(paused)],
                vec![s("suspended"), yn(false)],
            ],
        )
    }

    /// Per-database totals over every worker, plus what workers that died had counted.
    pub(crate) fn db_totals(&self) -> BTreeMap<String, ([u64; DB_COUNTERS], [u64; DB_COUNTERS])> {
        let mut out = BTreeMap::new();
        for (kind, name, i) in self.shm.names() {
            if kind != Kind::Database {
                continue;
            }
            let mut t = self.shm.retired(i);
            for slot in 0..self.shm.workers_cap() {
                let d = self.shm.db_stats(slot, i);
                for (k, v) in d.values().iter().enumerate() {
                    t[k] += v;
                }
            }
            out.insert(name, (t, self.shm.averages(i)));
        }
        out
    }

    pub(crate) fn show_stats(&self, what: &str) -> Table {
        const NAMES: [&str; 8] = [
            "server_assignment_count",
            "xact_count",
            "query_count",
            "received",
            "sent",
            "xact_time",
            "query_time",
            "wait_time",
        ];
        // Index of each name in DbStats::values().
        const IDX: [usize; 8] = [7, 0, 1, 2, 3, 4, 5, 6];
        let mut totals = self.db_totals();
        // PgBouncer makes the console's pool at start-up, so its SHOW STATS always has a
        // `pgbouncer` row, even before any client used a database; exporters take no rows
        // for a failed scrape (prometheus-pgbouncer-exporter reports pgbouncer_up 0).
        // PgBouncer 1.25 counts each console query there as a transaction and a query;
        // console commands are not counted here, so the row's counters stay 0.
        totals.entry("pgbouncer".to_string()).or_default();
        let mut cols: Vec<(String, Ty)> = vec![("database".into(), Ty::Text)];
        // PgBouncer 1.24+'s client_login_count comes after the prepared-statement counters
        // (DbStats::values 8..12, in this order).
        let parse = [
            "client_parse_count",
            "server_parse_count",
            "bind_count",
            "client_login_count",
        ];
        let (with_totals, with_avgs) = match what {
            "stats_totals" => (true, false),
            "stats_averages" => (false, true),
            _ => (true, true),
        };
        let short = |n: &str| match n {
            "received" => "bytes_received".to_string(),
            "sent" => "bytes_sent".to_string(),
            n => n.to_string(),
        };
        if with_totals {
            for n in NAMES {
                cols.push((
                    if what == "stats" {
                        format!("total_{n}")
                    } else {
                        short(n)
                    },
                    Ty::Numeric,
                ));
            }
            for n in parse {
                cols.push((
                    if what == "stats" {
                        format!("total_{n}")
                    } else {
                        n.to_string()
                    },
                    Ty::Numeric,
                ));
            }
        }
        if with_avgs {
            for n in NAMES {
                let n = match n {
                    "received" if what == "stats" => "recv".to_string(),
                    n if what == "stats" => n.to_string(),
                    n => short(n),
                };
                cols.push((
                    if what == "stats" {
                        format!("avg_{n}")
                    } else {
                        n
                    },
                    Ty::Numeric,
                ));
            }
            for n in parse {
                cols.push((format!("avg_{n}"), Ty::Numeric));
            }
        }
        let rows = totals
            .into_iter()
            .map(|(db, (t, a))| {
                let mut r = vec![s(db)];
                if with_totals {
                    r.extend(IDX.iter().map(|&i| s(t[i])));
                    r.extend(t[8..].iter().map(s));
                }
                if with_avgs {
                    r.extend(IDX.iter().map(|&i| s(a[i])));
                    r.extend(a[8..].iter().map(s));
                }
                r
            })
            .collect();
        Table { cols, rows }
    }

    pub(crate) fn show_totals(&self) -> Table {
        let mut sum = [0u64; DB_COUNTERS];
        let mut avg = [0u64; DB_COUNTERS];
        for (t, a) in self.db_totals().values() {
            for k in 0..DB_COUNTERS {
                sum[k] += t[k];
                avg[k] += a[k];
            }
        }
        let names = [
            ("server_assignment_count", 7),
            ("xact_count", 0),
            ("query_count", 1),
            ("client_bytes", 2),
            ("server_bytes", 3),
            ("xact_time", 4),
            ("query_time", 5),
            ("wait_time", 6),
        ];
        // PgBouncer 1.24+'s rows after the eight above: the prepared-statement counters
        // and client logins (DbStats::values 8..12).
        let more = [
            ("ps_client_parse_count", 8),
            ("ps_server_parse_count", 9),
            ("ps_bind_count", 10),
            ("client_login_count", 11),
        ];
        let mut rows = Vec::new();
        for (prefix, vals) in [("total", &sum), ("avg", &avg)] {
            for (n, i) in names {
                rows.push(vec![s(format!("{prefix}_{n}")), s(vals[i])]);
            }
            for (n, i) in more {
                rows.push(vec![s(format!("{prefix}_{n}")), s(vals[i])]);
            }
        }
        Table::new(&[("name", Ty::Text), ("value", Ty::Numeric)], rows)
    }

    /// The `peers` section as configured; this pooler's own entry is listed too.
    pub(crate) fn show_peers(&self) -> Table {
        let rows = (self.cfg.peers.iter())
            .map(|(id, p)| {
                let size = p.pool_size.unwrap_or(self.cfg.default_pool_size);
                vec![s(id), s(&p.host), s(p.port), s(size)]
            })
            .collect();
        Table::new(
            &[
                ("peer_id", Ty::Int4),
                ("host", Ty::Text),
                ("port", Ty::Int4),
                ("pool_size", Ty::Int4),
            ],
            rows,
        )
    }

    /// One row per peer: the cancel requests this worker has forwarded there and waits on
    /// (sv_active_cancel). Over pool_size a cancel is dropped, not queued, so none wait.
    pub(crate) fn show_peer_pools(&self) -> Table {
        let rows = (self.cfg.peers.keys())
            .filter(|&&id| id != self.cfg.peer_id)
            .map(|&id| {
                let n = self.peer_cancels.in_flight(id);
                vec![s(id), s(0), s(0), s(n), s(0)]
            })
            .collect();
        Table::new(
            &[
                ("peer_id", Ty::Int4),
                ("cl_active_cancel_req", Ty::Int4),
                ("cl_waiting_cancel_req", Ty::Int4),
                ("sv_active_cancel", Ty::Int4),
                ("sv_login", Ty::Int4),
            ],
            rows,
        )
    }

    pub(crate) fn show_workers(&self) -> Table {
        let mut rows = Vec::new();
        // The previous generation first, while it drains after an online upgrade.
        for shm in self.predecessor.iter().chain(std::iter::once(&self.shm)) {
            let generation = shm.generation();
            for slot in 0..shm.workers_cap() {
                let w = shm.worker(slot);
                let state = w.state.load(Relaxed);
                if state == 0 {
                    continue;
                }
                let pid = w.pid.load(Relaxed);
                // A worker of the old generation that was killed never cleared its row.
                if !std::ptr::eq(*shm, self.shm) && !process_alive(pid) {
                    continue;
                }
                let started = SystemTime::UNIX_EPOCH + Duration::from_secs(w.started.load(Relaxed));
                rows.push(vec![
                    s(slot),
                    s(pid),
                    s(if state == 1 { "running" } else { "stopping" }),
                    s(timestamp(started)),
                    s(w.clients.load(Relaxed)),
                    s(w.servers.load(Relaxed)),
                    s(w.transactions.load(Relaxed)),
                    s(w.queries.load(Relaxed)),
                    s(w.accepts.load(Relaxed)),
                    s(w.bytes_received.load(Relaxed)),
                    s(w.bytes_sent.load(Relaxed)),
                    s(generation),
                ]);
            }
        }
        Table::new(
            &[
                ("worker", Ty::Int4),
                ("pid", Ty::Int4),
                ("state", Ty::Text),
                ("started", Ty::Text),
                ("clients", Ty::Int8),
                ("servers", Ty::Int8),
                ("transactions", Ty::Int8),
                ("queries", Ty::Int8),
                ("accepts", Ty::Int8),
                ("bytes_received", Ty::Int8),
                ("bytes_sent", Ty::Int8),
                ("generation", Ty::Int4),
            ],
            rows,
        )
    }

    /// SHOW FDS: what an online upgrade (`pgbouncers --upgrade`) passes to the new
    /// supervisor, in PgBouncer's columns. Client connections are not passed that way.
    pub(crate) fn show_fds(&self) -> Table {
        let rows = self
            .passed
            .iter()
            .map(|p| {
                vec![
                    s(p.fd),
                    s(p.task),
                    None,
                    None,
                    Some(p.addr.clone()),
                    s(p.port),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ]
            })
            .collect();
        Table::new(
            &[
                ("fd", Ty::Int4),
                ("task", Ty::Text),
                ("user", Ty::Text),
                ("database", Ty::Text),
                ("addr", Ty::Text),
                ("port", Ty::Int4),
                ("cancel", Ty::Int8),
                ("link", Ty::Int4),
                ("client_encoding", Ty::Text),
                ("std_strings", Ty::Text),
                ("datestyle", Ty::Text),
                ("timezone", Ty::Text),
                ("password", Ty::Text),
                ("scram_client_key", Ty::Bytea),
                ("scram_server_key", Ty::Bytea),
            ],
            rows,
        )
    }

    /// This worker's rows for a collection the console asked every worker for.
    pub(crate) fn collect(&self, what: What) -> Vec<Row> {
        match what {
            What::Pools => self.collect_pools(),
            What::Clients => self.collect_sockets(true, false),
            What::Servers => self.collect_sockets(false, false),
            What::Sockets => {
                let mut rows = self.collect_sockets(true, true);
                rows.extend(self.collect_sockets(false, true));
                rows
            }
            What::Mem => self.collect_mem(),
            What::DnsHosts => {
                let ttls = (self.cfg.dns_max_ttl, self.cfg.dns_nxdomain_ttl);
                let hosts = self.dns.hosts(self.now, ttls).into_iter();
                hosts.map(|(h, ttl, a)| vec![s(h), s(ttl), s(a)]).collect()
            }
        }
    }

    /// This worker's caches, as SHOW MEM rows without memtotal: name, size, used, free.
    /// PgBouncer lists its slab allocator's caches; here a connection is a slot of the
    /// worker's slab and holds pkt_buf-sized buffers only while it has bytes to keep.
    pub(crate) fn collect_mem(&self) -> Vec<Row> {
        let (mut reads, mut writes) = (0usize, 0usize);
        for (_, conn) in self.conns.iter() {
            let io = match conn {
                Conn::Client(c) => &c.io,
                Conn::Server(s) => &s.io,
                Conn::Cancel(_) => continue,
            };
            reads += usize::from(io.has_read_buffer());
            writes += usize::from(io.has_write_buffer());
        }
        let (free_reads, free_writes) = self.bufs.free();
        let buf = self.bufs.size();
        let slots = self.conns.len();
        [
            (
                "conn_cache",
                std::mem::size_of::<Conn>(),
                slots,
                self.conns.capacity() - slots,
            ),
            (
                "pool_cache",
                std::mem::size_of::<crate::pool::Pool>(),
                self.pools.list.len(),
                0,
            ),
            ("iobuf_cache", buf, reads, free_reads),
            ("outbuf_cache", buf, writes, free_writes),
        ]
        .into_iter()
        .map(|(name, size, used, free)| vec![s(name), s(size), s(used), s(free)])
        .collect()
    }

    /// Per pool: db, user, cl_active, cl_waiting, sv_active, sv_idle, sv_tested, sv_login,
    /// maxwait in µs, pool_mode, force user, login clients.
    pub(crate) fn collect_pools(&self) -> Vec<Row> {
        let mut counts: Vec<[u64; 3]> = vec![[0; 3]; self.pools.list.len()];
        let mut console = 0u64;
        let mut login = 0u64;
        for (_, c) in self.conns.iter() {
            let Conn::Client(c) = c else { continue };
            if c.admin.is_some() {
                console += 1;
                continue;
            }
            match c.state {
                CState::Waiting { pool: p } => {
                    counts[p][1] += 1;
                    let w = self.now.saturating_duration_since(c.since).as_micros() as u64;
                    counts[p][2] = counts[p][2].max(w);
                }
                CState::Active { pool: p, .. } | CState::Idle { pool: p } => counts[p][0] += 1,
                _ => login += 1,
            }
        }
        let mut rows: Vec<Row> = self
            .pools
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.obsolete || p.total() > 0)
            .map(|(i, p)| {
                vec![
                    s(&p.db),
                    s(&p.user),
                    s(counts[i][0]),
                    s(counts[i][1]),
                    s(p.active),
                    s(p.idle.len()),
                    s(p.resetting),
                    s(p.launching),
                    s(counts[i][2]),
                    s(p.limits.mode.as_str()),
                    s(u8::from(p.paused)),
                    s(p.canceling),
                ]
            })
            .collect();
        rows.push(vec![
            s("pgbouncer"),
            s("pgbouncer"),
            s(console),
            s(0),
            s(0),
            s(0),
            s(0),
            s(0),
            s(0),
            s("statement"),
            s(login),
            s(0),
        ]);
        rows
    }

    /// SHOW CLIENTS or SERVERS rows; with `buffers`, PgBouncer's seven buffer columns of
    /// SHOW SOCKETS follow: recv_pos, pkt_pos, pkt_remain, send_pos, send_remain,
    /// pkt_avail, send_avail (bytes read and not yet handled; bytes waiting to be sent).
    pub(crate) fn collect_sockets(&self, clients: bool, buffers: bool) -> Vec<Row> {
        let bufs = |io: &crate::stream::Stream| -> Vec<Option<String>> {
            let read = io.unread().len();
            let send = io.pending().len();
            vec![s(read), s(0), s(0), s(0), s(0), s(read), s(send)]
        };
        let mut rows = Vec::new();
        let local = |io: &crate::stream::Stream| -> (String, i64) {
            match io.local_addr() {
                Some(a) => (a.ip().to_string(), a.port() as i64),
                None if io.is_unix() => ("unix".into(), self.cfg.listen_port as i64),
                None => ("unix".into(), 0),
            }
        };
        let ptr =
            |kind: u64, id: u64| format!("0x{:x}", (kind << 60) | ((self.slot as u64) << 40) | id);
        for (_, conn) in self.conns.iter() {
            match conn {
                Conn::Client(c) if clients => {
                    // Clients still logging in: only SHOW SOCKETS lists them (cl_login).
                    let login = matches!(
                        c.state,
                        CState::Proxy { .. }
                            | CState::Startup
                            | CState::PeerCancel
                            | CState::Auth(_)
                            | CState::Lookup(_)
                    );
                    if login && !buffers {
                        continue;
                    }
                    let (addr, port) = match c.peer {
                        Peer::Tcp(a) => (a.ip().to_string(), a.port() as i64),
                        Peer::Unix => ("unix".into(), self.cfg.listen_port as i64),
                    };
                    let (laddr, lport) = local(&c.io);
                    let state = match c.state {
                        _ if login => "login",
                        CState::Waiting { .. } | CState::LoginWait { .. } => "waiting",
                        CState::Active { .. } => "active",
                        _ => "idle",
                    };
                    let wait = if matches!(
                        c.state,
                        CState::Waiting { .. } | CState::ConsoleWaiting { .. }
                    ) {
                        self.now.saturating_duration_since(c.since)
                    } else {
                        Duration::ZERO
                    };
                    let db = if c.admin.is_some() {
                        "pgbouncer".into()
                    } else {
                        c.db.to_string()
                    };
                    let link = c.linked_server().and_then(|st| match self.conns.get(st) {
                        Some(Conn::Server(s)) => Some(ptr(2, s.id)),
                        _ => None,
                    });
                    rows.push(vec![
                        s("C"),
                        s(&c.user),
                        s(db),
                        s(crate::client::Replication::shown(c.replication.as_deref())),
                        s(state),
                        s(addr),
                        s(port),
                        s(laddr),
                        s(lport),
                        s(timestamp(self.wall(c.connect_time))),
                        s(timestamp(self.wall(c.request_time))),
                        s(wait.as_secs()),
                        s(wait.subsec_micros()),
                        s(0),
                        s(ptr(1, c.id)),
                        s(link.unwrap_or_default()),
                        s(0),
                        s(c.tls_description()),
                        s(c.params.get("application_name").unwrap_or("")),
                        s(c.stmts.len()),
                        s(c.id),
                        s(self.slot),
                        s(c.proxy
                            .as_ref()
                            .and_then(|p| p.unique_id.clone())
                            .unwrap_or_default()),
                        s(c.proxy
                            .as_ref()
                            .and_then(|p| p.endpoint.as_ref())
                            .map(|e| e.to_string())
                            .unwrap_or_default()),
                    ]);
                    if buffers {
                        rows.last_mut().expect("pushed").extend(bufs(&c.io));
                    }
                }
                Conn::Server(sv) if !clients => {
                    let p = self.pools.get(sv.pool);
                    let (addr, port) = match &sv.addr {
                        crate::server::ServerAddr::Tcp(a) => (a.ip().to_string(), a.port() as i64),
                        crate::server::ServerAddr::Unix(_) => ("unix".into(), p.target.port as i64),
                    };
                    let (laddr, lport) = local(&sv.io);
                    let state = match sv.state {
                        SState::Active { .. } => "active",
                        SState::Idle => "idle",
                        SState::Reset(_) | SState::Lookup(_) => "tested",
                        SState::Canceling => "being_canceled",
                        SState::Connecting(_) | SState::Login(_) => "new",
                    };
                    let link = sv.linked_client().and_then(|ct| match self.conns.get(ct) {
                        Some(Conn::Client(c)) => Some(ptr(1, c.id)),
                        _ => None,
                    });
                    rows.push(vec![
                        s("S"),
                        s(&p.user),
                        s(&p.db),
                        s(crate::client::Replication::shown(
                            sv.replication.as_ref().map(|(r, _, _)| &**r),
                        )),
                        s(state),
                        s(addr),
                        s(port),
                        s(laddr),
                        s(lport),
                        s(timestamp(self.wall(sv.connect_time))),
                        s(timestamp(self.wall(sv.since))),
                        s(0),
                        s(0),
                        s(u8::from(sv.close_needed)),
                        s(ptr(2, sv.id)),
                        s(link.unwrap_or_default()),
                        s(sv.backend_key.map(|k| k.0).unwrap_or(0)),
                        s(sv.io.tls_description()),
                        s(sv.params.get("application_name").unwrap_or("")),
                        s(sv.stmts.len()),
                        s(sv.id),
                        s(self.slot),
                        s(""),
                        s(""),
                    ]);
                    if buffers {
                        rows.last_mut().expect("pushed").extend(bufs(&sv.io));
                    }
                }
                _ => {}
            }
        }
        rows
    }

    /// SHOW POOLS: one row per (database, user) over every worker.
    pub(crate) fn show_pools(&self, rows: Vec<(u8, Row)>) -> Table {
        let pools = merge_pools(rows);
        let rows = pools
            .into_iter()
            .map(|((db, user), p)| {
                // As PgBouncer: only a database with a host list has a load_balance_hosts.
                let balance = self.cfg.database(&db).and_then(|r| {
                    r.entry.host.contains(',').then(|| {
                        let b = r.entry.load_balance_hosts.unwrap_or_default();
                        b.as_str().to_string()
                    })
                });
                vec![
                    s(db),
                    s(user),
                    s(p.cl_active),
                    s(p.cl_waiting),
                    s(0),
                    s(0),
                    s(p.sv_active),
                    s(0),
                    s(p.sv_being_canceled),
                    s(p.sv_idle),
                    s(0),
                    s(p.sv_tested),
                    s(p.sv_login),
                    s(p.maxwait_us / 1_000_000),
                    s(p.maxwait_us % 1_000_000),
                    s(p.mode),
                    balance,
                ]
            })
            .collect();
        let int = |n: &'static str| (n, Ty::Int4);
        Table::new(
            &[
                ("database", Ty::Text),
                ("user", Ty::Text),
                int("cl_active"),
                int("cl_waiting"),
                int("cl_active_cancel_req"),
                int("cl_waiting_cancel_req"),
                int("sv_active"),
                int("sv_active_cancel"),
                int("sv_being_canceled"),
                int("sv_idle"),
                int("sv_used"),
                int("sv_tested"),
                int("sv_login"),
                int("maxwait"),
                int("maxwait_us"),
                ("pool_mode", Ty::Text),
                ("load_balance_hosts", Ty::Text),
            ],
            rows,
        )
    }

    pub(crate) fn show_lists(&self, rows: Vec<(u8, Row)>) -> Table {
        let login: u64 = rows
            .iter()
            .filter(|(_, r)| r[0].as_deref() == Some("pgbouncer"))
            .map(|(_, r)| num(&r[10]))
            .sum();
        let pools = merge_pools(rows);
        let used_clients: u64 = pools
            .values()
            .map(|p| p.cl_active + p.cl_waiting)
            .sum::<u64>()
            + login;
        let used_servers: u64 = pools
            .values()
            .map(|p| p.sv_active + p.sv_idle + p.sv_tested + p.sv_login)
            .sum();
        let users: std::collections::BTreeSet<&str> = self
            .cfg
            .users
            .keys()
            .map(String::as_str)
            .chain(pools.keys().map(|(_, u)| u.as_str()))
            .collect();
        let items = [
            ("databases", self.cfg.databases.len() as u64 + 1),
            ("users", users.len() as u64),
            ("peers", 0),
            ("pools", pools.len() as u64),
            ("peer_pools", 0),
            ("free_clients", 0),
            ("used_clients", used_clients),
            ("login_clients", login),
            ("free_servers", 0),
            ("used_servers", used_servers),
            ("dns_names", 0),
            ("dns_zones", 0),
            ("dns_queries", 0),
            ("dns_pending", 0),
        ];
        Table::new(
            &[("list", Ty::Text), ("items", Ty::Int4)],
            items.into_iter().map(|(k, v)| vec![s(k), s(v)]).collect(),
        )
    }

    pub(crate) fn show_databases(&self, rows: Vec<(u8, Row)>) -> Table {
        let pools = merge_pools(rows);
        let mut clients: BTreeMap<&str, u64> = BTreeMap::new();
        let mut paused: BTreeMap<&str, bool> = BTreeMap::new();
        for ((db, _), p) in &pools {
            *clients.entry(db).or_default() += p.cl_active + p.cl_waiting;
            *paused.entry(db).or_default() |= p.paused;
        }
        let cfg = &self.cfg;
        let mut out = Vec::new();
        let mut names: Vec<&str> = cfg.databases.keys().map(String::as_str).collect();
        names.push("pgbouncer");
        names.sort();
        for name in names {
            if name == "pgbouncer" {
                out.push(vec![
                    s("pgbouncer"),
                    None,
                    s(cfg.listen_port),
                    s("pgbouncer"),
                    s("pgbouncer"),
                    s(2),
                    s(0),
                    s(0),
                    s(cfg.server_lifetime.as_secs()),
                    s("statement"),
                    None,
                    s(0),
                    s(0),
                    s(0),
                    s(clients.get("pgbouncer").copied().unwrap_or(0)),
                    s(0),
                    s(0),
                ]);
                continue;
            }
            let Some(db) = cfg.databases.get(name) else {
                continue;
            };
            let current = self
                .shm
                .name_index_existing(Kind::Database, name)
                .map(|i| self.shm.count(i))
                .unwrap_or(0);
            out.push(vec![
                s(name),
                s(&db.host),
                s(db.port),
                s(db.dbname.clone().unwrap_or_else(|| name.to_string())),
                db.user.clone(),
                s(db.pool_size.unwrap_or(cfg.default_pool_size)),
                s(db.min_pool_size.unwrap_or(cfg.min_pool_size)),
                s(db.reserve_pool_size.unwrap_or(cfg.reserve_pool_size)),
                s(cfg.server_lifetime.as_secs()),
                db.pool_mode.map(|m| m.as_str().to_string()),
                // As PgBouncer: only a host list has a load_balance_hosts.
                db.host.contains(',').then(|| {
                    db.load_balance_hosts
                        .unwrap_or_default()
                        .as_str()
                        .to_string()
                }),
                s(cfg.max_db_connections_for(name)),
                s(current),
                s(cfg.max_db_client_connections_for(name)),
                s(clients.get(name).copied().unwrap_or(0)),
                s(u8::from(paused.get(name).copied().unwrap_or(false))),
                s(u8::from(self.holds.is_disabled(name))),
            ]);
        }
        let int = |n: &'static str| (n, Ty::Int4);
        Table::new(
            &[
                ("name", Ty::Text),
                ("host", Ty::Text),
                int("port"),
                ("database", Ty::Text),
                ("force_user", Ty::Text),
                int("pool_size"),
                int("min_pool_size"),
                int("reserve_pool_size"),
                int("server_lifetime"),
                ("pool_mode", Ty::Text),
                ("load_balance_hosts", Ty::Text),
                int("max_connections"),
                int("current_connections"),
                int("max_client_connections"),
                int("current_client_connections"),
                int("paused"),
                int("disabled"),
            ],
            out,
        )
    }

    pub(crate) fn show_users(&self, rows: Vec<(u8, Row)>) -> Table {
        let pools = merge_pools(rows);
        let mut clients: BTreeMap<String, u64> = BTreeMap::new();
        for ((_, user), p) in &pools {
            *clients.entry(user.clone()).or_default() += p.cl_active + p.cl_waiting;
        }
        let mut names: std::collections::BTreeSet<String> =
            self.cfg.users.keys().cloned().collect();
        names.extend(clients.keys().cloned());
        let out = names
            .into_iter()
            .map(|name| {
                let u = self.cfg.users.get(&name);
                let padded = |v: Option<u32>| s(v.map(|n| format!("{n:9}")).unwrap_or_default());
                let current = self
                    .shm
                    .name_index_existing(Kind::User, &name)
                    .map(|i| self.shm.count(i))
                    .unwrap_or(0);
                vec![
                    s(&name),
                    padded(u.and_then(|u| u.pool_size)),
                    padded(u.and_then(|u| u.reserve_pool_size)),
                    u.and_then(|u| u.pool_mode).map(|m| m.as_str().to_string()),
                    s(self.cfg.max_user_connections_for(&name)),
                    s(current),
                    s(self.cfg.max_user_client_connections_for(&name)),
                    s(clients.get(&name).copied().unwrap_or(0)),
                ]
            })
            .collect();
        let int = |n: &'static str| (n, Ty::Int4);
        Table::new(
            &[
                ("name", Ty::Text),
                ("pool_size", Ty::Text),
                ("reserve_pool_size", Ty::Text),
                ("pool_mode", Ty::Text),
                int("max_user_connections"),
                int("current_connections"),
                int("max_user_client_connections"),
                int("current_client_connections"),
            ],
            out,
        )
    }
}

#[derive(Default)]
struct PoolSum {
    cl_active: u64,
    cl_waiting: u64,
    sv_active: u64,
    sv_idle: u64,
    sv_tested: u64,
    sv_login: u64,
    maxwait_us: u64,
    mode: String,
    paused: bool,
    sv_being_canceled: u64,
}

/// One cell of a row a worker sent; a short row reads as empty cells.
fn cell(r: &Row, i: usize) -> Option<String> {
    r.get(i).cloned().flatten()
}

/// SHOW MEM: each cache summed over the workers; memtotal is what its slots take.
fn show_mem(rows: Vec<(u8, Row)>) -> Table {
    let mut caches: Vec<(Option<String>, u64, u64, u64)> = Vec::new();
    for (_, r) in rows {
        let (name, size) = (cell(&r, 0), num(&cell(&r, 1)));
        let (used, free) = (num(&cell(&r, 2)), num(&cell(&r, 3)));
        match caches.iter_mut().find(|c| c.0 == name) {
            Some(c) => (c.2, c.3) = (c.2 + used, c.3 + free),
            None => caches.push((name, size, used, free)),
        }
    }
    let rows = caches
        .into_iter()
        .map(|(name, size, used, free)| {
            vec![name, s(size), s(used), s(free), s(size * (used + free))]
        })
        .collect();
    Table::new(
        &[
            ("name", Ty::Text),
            ("size", Ty::Int4),
            ("used", Ty::Int4),
            ("free", Ty::Int4),
            ("memtotal", Ty::Int4),
        ],
        rows,
    )
}

/// SHOW DNS_HOSTS: per host name, the freshest answer a worker holds (each worker
/// resolves for itself).
fn show_dns_hosts(rows: Vec<(u8, Row)>) -> Table {
    let mut hosts: Vec<Row> = Vec::new();
    for (_, r) in rows {
        let r = vec![cell(&r, 0), cell(&r, 1), cell(&r, 2)];
        match hosts.iter_mut().find(|h| h[0] == r[0]) {
            Some(h) if num(&h[1]) >= num(&r[1]) => {}
            Some(h) => *h = r,
            None => hosts.push(r),
        }
    }
    hosts.sort();
    Table::new(
        &[
            ("hostname", Ty::Text),
            ("ttl", Ty::Int8),
            ("addrs", Ty::Text),
        ],
        hosts,
    )
}

fn num(v: &Option<String>) -> u64 {
    v.as_deref().and_then(|x| x.parse().ok()).unwrap_or(0)
}

/// Adds up every worker's rows for the same (database, user).
fn merge_pools(rows: Vec<(u8, Row)>) -> BTreeMap<(String, String), PoolSum> {
    let mut out: BTreeMap<(String, String), PoolSum> = BTreeMap::new();
    for (_, r) in rows {
        if r.len() < 11 {
            continue;
        }
        let key = (
            r[0].clone().unwrap_or_default(),
            r[1].clone().unwrap_or_default(),
        );
        let p = out.entry(key).or_default();
        p.cl_active += num(&r[2]);
        p.cl_waiting += num(&r[3]);
        p.sv_active += num(&r[4]);
        p.sv_idle += num(&r[5]);
        p.sv_tested += num(&r[6]);
        p.sv_login += num(&r[7]);
        p.maxwait_us = p.maxwait_us.max(num(&r[8]));
        p.mode = r[9].clone().unwrap_or_default();
        p.paused |= num(&r[10]) != 0 && r[0].as_deref() != Some("pgbouncer");
        p.sv_being_canceled += r.get(11).map(num).unwrap_or(0);
    }
    out
}

/// SHOW CLIENTS / SHOW SERVERS: PgBouncer's 21 columns plus the worker, the PROXY unique
/// id and the cloud endpoint.
fn show_sockets(rows: Vec<(u8, Row)>) -> Table {
    let int = |n: &'static str| (n, Ty::Int4);
    Table::new(
        &[
            ("type", Ty::Text),
            ("user", Ty::Text),
            ("database", Ty::Text),
            ("replication", Ty::Text),
            ("state", Ty::Text),
            ("addr", Ty::Text),
            int("port"),
            ("local_addr", Ty::Text),
            int("local_port"),
            ("connect_time", Ty::Text),
            ("request_time", Ty::Text),
            int("wait"),
            int("wait_us"),
            int("close_needed"),
            ("ptr", Ty::Text),
            ("link", Ty::Text),
            int("remote_pid"),
            ("tls", Ty::Text),
            ("application_name", Ty::Text),
            int("prepared_statements"),
            int("id"),
            int("worker"),
            // From a trusted PROXY v2 header: HAProxy's unique id, a cloud endpoint.
            ("proxy_id", Ty::Text),
            ("endpoint", Ty::Text),
        ],
        rows.into_iter().map(|(_, r)| r).collect(),
    )
}

/// SHOW SOCKETS / ACTIVE_SOCKETS: PgBouncer 1.25's 21 socket columns (states named by
/// PgBouncer's lists: cl_active, cl_login, sv_idle, ...) and its 7 buffer columns. ACTIVE_SOCKETS
/// keeps, as PgBouncer does, the sockets with bytes in their buffers.
fn show_socket_buffers(rows: Vec<(u8, Row)>, active_only: bool) -> Table {
    let int = |n: &'static str| (n, Ty::Int4);
    let rows = rows
        .into_iter()
        .filter_map(|(_, r)| {
            if r.len() < 31 {
                return None;
            }
            if active_only && num(&r[29]) == 0 && num(&r[30]) == 0 {
                return None;
            }
            let mut out: Row = r[..21].to_vec();
            let client = r[0].as_deref() == Some("C");
            let state = match (client, r[4].as_deref().unwrap_or("")) {
                (true, "waiting") => "cl_waiting",
                (true, "login") => "cl_login",
                (true, _) => "cl_active",
                (false, "active") => "sv_active",
                (false, "idle") => "sv_idle",
                (false, "tested") => "sv_tested",
                (false, "being_canceled") => "sv_being_canceled",
                (false, _) => "sv_login",
            };
            out[4] = s(state);
            out.extend_from_slice(&r[24..31]);
            Some(out)
        })
        .collect();
    Table::new(
        &[
            ("type", Ty::Text),
            ("user", Ty::Text),
            ("database", Ty::Text),
            ("replication", Ty::Text),
            ("state", Ty::Text),
            ("addr", Ty::Text),
            int("port"),
            ("local_addr", Ty::Text),
            int("local_port"),
            ("connect_time", Ty::Text),
            ("request_time", Ty::Text),
            int("wait"),
            int("wait_us"),
            int("close_needed"),
            ("ptr", Ty::Text),
            ("link", Ty::Text),
            int("remote_pid"),
            ("tls", Ty::Text),
            ("application_name", Ty::Text),
            int("prepared_statements"),
            int("id"),
            int("recv_pos"),
            int("pkt_pos"),
            int("pkt_remain"),
            int("send_pos"),
            int("send_remain"),
            int("pkt_avail"),
            int("send_avail"),
        ],
        rows,
    )
}

/// A NoticeResponse with a message and a detail, as SHOW HELP sends it.
fn notice(out: &mut Vec<u8>, message: &str, detail: &str) {
    crate::wire::write::message(out, b'N', |out| {
        for (f, v) in [
            (b'S', "NOTICE"),
            (b'C', "00000"),
            (b'M', message),
            (b'D', detail),
        ] {
            out.push(f);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out.push(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every SHOW of PgBouncer 1.25.2's SHOW HELP is in ours, and the console table of
    /// docs/PGBOUNCER.md names only commands SHOW HELP lists.
    #[test]
    fn help_has_every_show_of_pgbouncer_and_the_docs_table_only_real_commands() {
        const PGBOUNCER_1_25: [&str; 22] = [
            "HELP",
            "CONFIG",
            "DATABASES",
            "POOLS",
            "CLIENTS",
            "SERVERS",
            "USERS",
            "VERSION",
            "PEERS",
            "PEER_POOLS",
            "FDS",
            "SOCKETS",
            "ACTIVE_SOCKETS",
            "LISTS",
            "MEM",
            "STATE",
            "DNS_HOSTS",
            "DNS_ZONES",
            "STATS",
            "STATS_TOTALS",
            "STATS_AVERAGES",
            "TOTALS",
        ];
        let shows: std::collections::BTreeSet<&str> = HELP
            .lines()
            .filter_map(|l| l.trim().strip_prefix("SHOW "))
            .flat_map(|l| l.split('|'))
            .collect();
        for name in PGBOUNCER_1_25 {
            assert!(shows.contains(name), "SHOW {name} is not in SHOW HELP");
        }
        // `SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS` is two commands.
        let mut lines: Vec<String> = Vec::new();
        for l in HELP.lines().map(str::trim) {
            match l.rsplit_once(' ') {
                Some((cmd, alts)) if alts.contains('|') && !cmd.contains('|') => {
                    lines.extend(alts.split('|').map(|a| format!("{cmd} {a}")))
                }
                _ => lines.push(l.to_string()),
            }
        }
        let doc = include_str!("../../../docs/PGBOUNCER.md");
        let at = doc.find("## Admin console").expect("console section");
        let rows: Vec<&str> = doc[at..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .filter(|l| l.starts_with("| `"))
            .collect();
        assert!(!rows.is_empty());
        for row in rows {
            let mut cells = row.split('|').skip(1);
            let (names, status) = (cells.next().unwrap(), cells.next().unwrap().trim());
            for name in names.split(',').map(|n| n.trim().trim_matches('`')) {
                match name.strip_prefix("SHOW ") {
                    Some(n) => assert!(shows.contains(n), "{row}"),
                    None if shows.contains(name) => {}
                    None => assert_eq!(
                        lines.iter().any(|l| l == name),
                        status != "refused",
                        "{name}: in SHOW HELP exactly when not refused: {row}"
                    ),
                }
            }
        }
    }

    #[test]
    fn timestamps_print_like_pgbouncer() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timestamp(t), "2023-11-14 22:13:20 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn ids_carry_the_slot() {
        use crate::conn::shown_id;
        assert_eq!(shown_id(3, 5) & 0xff, 3);
        assert_ne!(shown_id(3, 5), shown_id(4, 5));
        assert!(shown_id(255, u64::MAX) <= i32::MAX as u64);
    }

    #[test]
    fn pools_merge_across_workers() {
        let row = |db: &str, a: u64, w: u64| -> Row {
            [
                db,
                "u",
                &a.to_string(),
                "1",
                "2",
                "3",
                "0",
                "0",
                &w.to_string(),
                "transaction",
                "0",
            ]
            .iter()
            .map(|x| Some(x.to_string()))
            .collect()
        };
        let m = merge_pools(vec![
            (0, row("d", 1, 5)),
            (1, row("d", 2, 9)),
            (1, row("e", 1, 0)),
        ]);
        let d = &m[&("d".to_string(), "u".to_string())];
        assert_eq!(
            (d.cl_active, d.cl_waiting, d.sv_idle, d.maxwait_us),
            (3, 2, 6, 9)
        );
        assert_eq!(m.len(), 2);
    }
}
