//! Existing monitoring works unchanged: the real prometheus-pgbouncer-exporter (PyPI 2.1.2,
//! which `scripts/test.sh` installs) scrapes pgbouncers' admin console as it scrapes
//! PgBouncer's, and exports every metric family it exports from PgBouncer 1.25.
//!
//! The exporter connects with psycopg2 to the `pgbouncer` console database on each scrape,
//! runs SHOW STATS, SHOW POOLS, SHOW DATABASES and SHOW CONFIG, and maps columns to metrics
//! (`collector.py`). A SHOW that returns no rows counts as a failed scrape: `pgbouncer_up 0`.
//! A missing exporter fails these tests; it is never a skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;

use common::pg::tail;
use common::tools::{clean_pg_env, search_path};
use common::*;

/// The exporter version the expected metric families come from.
const EXPORTER_VERSION: &str = "2.1.2";
/// In `stats_users`: what the exporter logs in as.
const STATS: &str = "exp_stats";
const STATS_PW: &str = "exp_statspw";
const WORKERS: usize = 2;

/// Every sample name the exporter derives from a PgBouncer 1.25 console, from collector.py's
/// column mappings (prometheus_client adds `_total` to counters), with the SHOW and the
/// column. Two mappings of collector.py are not here because PgBouncer 1.25 has no such
/// column either: SHOW STATS `total_requests` (PgBouncer < 1.8) and SHOW DATABASES
/// `reserve_pool` (now `reserve_pool_size`). The exporter run against PgBouncer 1.25.2
/// exports exactly this list.
const FAMILIES: [(&str, &str); 21] = [
    (
        "pgbouncer_stats_transactions_total",
        "SHOW STATS total_xact_count",
    ),
    (
        "pgbouncer_stats_queries_total",
        "SHOW STATS total_query_count",
    ),
    (
        "pgbouncer_stats_transactions_duration_microseconds_total",
        "SHOW STATS total_xact_time",
    ),
    (
        "pgbouncer_stats_waiting_duration_microseconds_total",
        "SHOW STATS total_wait_time",
    ),
    (
        "pgbouncer_stats_queries_duration_microseconds_total",
        "SHOW STATS total_query_time",
    ),
    (
        "pgbouncer_stats_received_bytes_total",
        "SHOW STATS total_received",
    ),
    ("pgbouncer_stats_sent_bytes_total", "SHOW STATS total_sent"),
    (
        "pgbouncer_pools_client_active_connections",
        "SHOW POOLS cl_active",
    ),
    (
        "pgbouncer_pools_client_waiting_connections",
        "SHOW POOLS cl_waiting",
    ),
    (
        "pgbouncer_pools_server_active_connections",
        "SHOW POOLS sv_active",
    ),
    (
        "pgbouncer_pools_server_idle_connections",
        "SHOW POOLS sv_idle",
    ),
    (
        "pgbouncer_pools_server_used_connections",
        "SHOW POOLS sv_used",
    ),
    (
        "pgbouncer_pools_server_testing_connections",
        "SHOW POOLS sv_tested",
    ),
    (
        "pgbouncer_pools_server_login_connections",
        "SHOW POOLS sv_login",
    ),
    (
        "pgbouncer_pools_client_maxwait_seconds",
        "SHOW POOLS maxwait + maxwait_us",
    ),
    (
        "pgbouncer_databases_database_pool_size",
        "SHOW DATABASES pool_size",
    ),
    (
        "pgbouncer_databases_database_current_connections",
        "SHOW DATABASES current_connections",
    ),
    (
        "pgbouncer_databases_database_max_connections",
        "SHOW DATABASES max_connections",
    ),
    (
        "pgbouncer_config_max_client_conn",
        "SHOW CONFIG max_client_conn",
    ),
    (
        "pgbouncer_config_max_user_connections",
        "SHOW CONFIG max_user_connections",
    ),
    ("pgbouncer_up", "every SHOW answered with rows"),
];

// ---------------------------------------------------------------------------
// The exporter
// ---------------------------------------------------------------------------

/// `pgbouncer-exporter`: `$PGBOUNCER_EXPORTER`, the venv `scripts/lib.sh` `need_exporter`
/// makes, then `$PATH`. Panics if there is none, or if it is not version 2.1.2.
fn exporter_bin() -> PathBuf {
    let venv = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("pgbouncers-test/exporter-venv/bin/pgbouncer-exporter"));
    let bin = std::env::var_os("PGBOUNCER_EXPORTER")
        .map(PathBuf::from)
        .or_else(|| venv.clone().filter(|p| p.is_file()))
        .or_else(|| search_path("pgbouncer-exporter"))
        .unwrap_or_else(|| {
            panic!(
                "prometheus-pgbouncer-exporter not found (looked at $PGBOUNCER_EXPORTER, {}, \
                 and pgbouncer-exporter on PATH): install it with scripts/test.sh \
                 (need_exporter in scripts/lib.sh)",
                venv.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.cache/pgbouncers-test/exporter-venv".into())
            )
        });
    assert!(bin.is_file(), "{} is not a file", bin.display());
    // The interpreter its script runs with knows the installed version.
    let script = std::fs::read_to_string(&bin).unwrap_or_default();
    let python = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('prometheus-pgbouncer-exporter'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (from {}): {e}", bin.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version,
        EXPORTER_VERSION,
        "{} is prometheus-pgbouncer-exporter {version:?} ({}); these tests expect \
         {EXPORTER_VERSION}: install it with scripts/test.sh",
        bin.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    bin
}

/// The exporter in its own process group, killed when dropped (or by a watchdog when the
/// test binary dies); its log is printed if the test is panicking.
struct Exporter {
    child: Child,
    watchdog: Child,
    dir: TestDir,
    port: u16,
}

impl Exporter {
    /// Starts the exporter on a free port, pointed at the console of the pooler on
    /// `pooler_port`, and waits until it listens.
    fn start(pooler_port: u16) -> Exporter {
        let bin = exporter_bin();
        let dir = TestDir::new("exporter");
        let port = free_port();
        let config = dir.write_file(
            "exporter.yml",
            &format!(
                "exporter_host: 127.0.0.1\n\
                 exporter_port: {port}\n\
                 pgbouncers:\n  \
                   - dsn: postgresql://{STATS}:{STATS_PW}@127.0.0.1:{pooler_port}/pgbouncer\n    \
                     connect_timeout: 5\n"
            ),
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("exporter.log"))
            .expect("exporter log");
        let log2 = log.try_clone().expect("dup exporter log");
        let mut cmd = Command::new(&bin);
        // Its log goes to stderr (the default `--log-file stdout` means a stream handler).
        cmd.arg("--config")
            .arg(&config)
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        clean_pg_env(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let pid = child.id() as i32;
        common::cleanup::register_group(pid);
        let watchdog = common::cleanup::spawn_watchdog(
            common::pooler::WATCHDOG,
            &[OsStr::new(&pid.to_string())],
        );
        let mut exporter = Exporter {
            child,
            watchdog,
            dir,
            port,
        };
        // Python and its imports take a moment; /proc/net/tcp, so no probe reaches it.
        let ready = wait_until(secs(30), || {
            exporter.exited() || common::haproxy::listening(port)
        });
        assert!(
            ready && !exporter.exited(),
            "the exporter did not listen on {port}\n--- exporter log ---\n{}",
            exporter.log()
        );
        exporter
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn log(&self) -> String {
        self.dir.read_file("exporter.log")
    }

    /// One scrape of its HTTP endpoint: each one logs in to the console afresh.
    fn scrape(&self) -> Metrics {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the exporter");
        s.set_read_timeout(Some(secs(30))).expect("read timeout");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send the request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read the answer");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
        assert!(
            head.lines().next().is_some_and(|l| l.contains(" 200 ")),
            "{head}"
        );
        Metrics::parse(body)
    }

    /// Lines of its log that report a failure.
    fn errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                ["\"ERROR\"", "\"CRITICAL\"", "Traceback"]
                    .iter()
                    .any(|bad| l.contains(bad))
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        common::cleanup::stop_watchdog(&mut self.watchdog);
        common::cleanup::unregister_group(self.child.id() as i32);
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("[exporter] log:\n{}", self.log());
        }
    }
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape's samples.
#[derive(Debug)]
struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

impl Metrics {
    fn parse(body: &str) -> Metrics {
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"));
        let samples = scrape
            .samples
            .into_iter()
            .map(|s| Sample {
                value: match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    other => panic!("{}: unexpected {other:?}", s.metric),
                },
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                name: s.metric,
            })
            .collect();
        Metrics {
            samples,
            text: body.to_string(),
        }
    }

    /// The names of every `pgbouncer_*` sample (the exporter's own Python and process
    /// metrics are left out).
    fn pgbouncer_names(&self) -> BTreeSet<&str> {
        self.samples
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| n.starts_with("pgbouncer_"))
            .collect()
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

const MAX_CLIENT_CONN: u32 = 321;
const MAX_USER_CONNECTIONS: u32 = 7;
const POOL_SIZE: u32 = 5;
const MAX_DB_CONNECTIONS: u32 = 9;

/// A pooler with two workers, SCRAM for clients, the exporter's user in `stats_users`,
/// and database `app` on the shared server.
fn start_pooler() -> Pooler {
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &format!(
            "{}\n{}\n",
            userlist_entry(STATS, STATS_PW),
            userlist_entry(APP_USER, APP_PASSWORD)
        ),
    );
    let yaml = format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: scram-sha-256\n\
         auth_file: @DIR@/userlist.txt\n\
         stats_users: [{STATS}]\n\
         pool_mode: transaction\n\
         max_client_conn: {MAX_CLIENT_CONN}\n\
         max_user_connections: {MAX_USER_CONNECTIONS}\n\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB}, pool_size: {POOL_SIZE}, \
                   max_db_connections: {MAX_DB_CONNECTIONS} }}\n",
        port = shared_pg().port()
    );
    let pooler = setup.start_with_args(&yaml, &["--workers", &WORKERS.to_string()]);
    pooler.wait_for_children(WORKERS, secs(5));
    pooler
}

/// `pgbouncer_up` is 1 and neither the exporter nor the pooler logged a failure.
fn assert_clean_scrape(m: &Metrics, exporter: &Exporter, pooler: &Pooler) {
    assert_eq!(
        m.get("pgbouncer_up", &[]),
        Some(1.0),
        "the exporter reports a failed scrape\n--- metrics ---\n{}\n--- exporter log ---\n{}",
        m.text,
        exporter.log()
    );
    let errors = exporter.errors();
    assert!(errors.is_empty(), "the exporter logged: {errors:#?}");
    let log = pooler.log();
    assert!(
        !log.contains("invalid command"),
        "the console refused an exporter command:\n{}",
        tail(&log, 40)
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Before any client used a database, PgBouncer's SHOW STATS already lists its console
/// database; with no row there the exporter would report pgbouncer_up 0.
#[test]
fn a_fresh_pooler_scrapes_as_up() {
    let pooler = start_pooler();
    let exporter = Exporter::start(pooler.port());
    let m = exporter.scrape();
    assert_clean_scrape(&m, &exporter, &pooler);

    // The console database's rows, as PgBouncer 1.25 has them.
    for name in [
        "pgbouncer_stats_transactions_total",
        "pgbouncer_stats_queries_total",
        "pgbouncer_stats_received_bytes_total",
    ] {
        assert_eq!(m.value(name, &[("database", "pgbouncer")]), 0.0, "{name}");
    }
    let console = [("database", "pgbouncer"), ("user", "pgbouncer")];
    assert!(
        m.value("pgbouncer_pools_client_active_connections", &console) >= 1.0,
        "the exporter's own console connection is an active client\n{}",
        m.text
    );
    let console_db = [("database", "pgbouncer"), ("backend_database", "pgbouncer")];
    assert_eq!(
        m.value("pgbouncer_databases_database_pool_size", &console_db),
        2.0
    );
    let app_db = [("database", "app"), ("backend_database", APP_DB)];
    assert_eq!(
        m.value("pgbouncer_databases_database_pool_size", &app_db),
        f64::from(POOL_SIZE)
    );
    // Every family PgBouncer 1.25 gives it, already.
    let names = m.pgbouncer_names();
    let missing: Vec<_> = FAMILIES
        .iter()
        .filter(|(n, _)| !names.contains(n))
        .collect();
    assert!(missing.is_empty(), "missing: {missing:#?}\n{}", m.text);
}

/// Every metric the exporter maps from PgBouncer 1.25's console comes out, with the
/// configured values, and the counters follow real traffic.
#[test]
fn every_mapped_family_is_exported_and_counters_move() {
    let pooler = start_pooler();
    let exporter = Exporter::start(pooler.port());
    let before = exporter.scrape();
    assert_clean_scrape(&before, &exporter, &pooler);
    let app = [("database", APP_DB)];
    let queries_before = before
        .get("pgbouncer_stats_queries_total", &app)
        .unwrap_or(0.0);

    // Traffic: queries and an explicit transaction, on a client kept open.
    const QUERIES: usize = 20;
    let mut client = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    for i in 0..QUERIES {
        assert_eq!(
            scalar(&mut client, &format!("SELECT {i}")).unwrap(),
            i.to_string()
        );
    }
    client
        .batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
        .expect("a transaction through the pooler");

    // Counters reach shared memory at the workers' next tick.
    let mut m = exporter.scrape();
    let moved = wait_until(secs(10), || {
        m = exporter.scrape();
        m.get("pgbouncer_stats_queries_total", &app)
            .is_some_and(|q| q >= queries_before + QUERIES as f64)
    });
    assert!(
        moved,
        "pgbouncer_stats_queries_total{{database=\"app\"}} did not reach {} \
         (was {queries_before})\n{}",
        queries_before + QUERIES as f64,
        m.text
    );
    assert_clean_scrape(&m, &exporter, &pooler);
    assert!(
        m.value("pgbouncer_stats_transactions_total", &app) >= (QUERIES + 1) as f64,
        "{}",
        m.text
    );
    for name in [
        "pgbouncer_stats_received_bytes_total",
        "pgbouncer_stats_sent_bytes_total",
        "pgbouncer_stats_queries_duration_microseconds_total",
        "pgbouncer_stats_transactions_duration_microseconds_total",
    ] {
        assert!(m.value(name, &app) > 0.0, "{name}\n{}", m.text);
    }
    let pool = [("database", APP_DB), ("user", APP_USER)];
    assert!(
        m.value("pgbouncer_pools_client_active_connections", &pool) >= 1.0,
        "the open client\n{}",
        m.text
    );
    assert!(
        m.value("pgbouncer_pools_server_idle_connections", &pool) >= 1.0,
        "its server went back to the pool after each transaction\n{}",
        m.text
    );
    let app_db = [("database", "app"), ("backend_database", APP_DB)];
    assert_eq!(
        m.value("pgbouncer_databases_database_pool_size", &app_db),
        f64::from(POOL_SIZE)
    );
    assert_eq!(
        m.value("pgbouncer_databases_database_max_connections", &app_db),
        f64::from(MAX_DB_CONNECTIONS)
    );
    assert!(
        m.value("pgbouncer_databases_database_current_connections", &app_db) >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value("pgbouncer_config_max_client_conn", &[]),
        f64::from(MAX_CLIENT_CONN)
    );
    assert_eq!(
        m.value("pgbouncer_config_max_user_connections", &[]),
        f64::from(MAX_USER_CONNECTIONS)
    );

    // Exactly the families the exporter gives for PgBouncer 1.25.
    let names = m.pgbouncer_names();
    let want: BTreeSet<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
    let missing: Vec<_> = FAMILIES
        .iter()
        .filter(|(n, _)| !names.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "families missing (name, from): {missing:#?}\n{}",
        m.text
    );
    let extra: Vec<_> = names.difference(&want).collect();
    assert!(
        extra.is_empty(),
        "families PgBouncer 1.25 does not give the exporter: {extra:?}\n{}",
        m.text
    );
    drop(client);
}

// ---------------------------------------------------------------------------
// The Go exporter (prometheus-community/pgbouncer_exporter)
// ---------------------------------------------------------------------------

/// A console query's column names and rows as text.
fn console_table(c: &mut postgres::Client, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    for m in c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}")) {
        match m {
            postgres::SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_string()).collect()
            }
            postgres::SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => {}
        }
    }
    (cols, rows)
}

/// The Go `pgbouncer_exporter` (prometheus-community, collector.go) reads columns by name
/// from SHOW DATABASES, STATS_TOTALS and POOLS, and rows of SHOW LISTS and CONFIG; a
/// missing column is silently not exported, so this checks each one it maps is there
/// and numeric where it makes a gauge or counter. Two names it maps are gone from
/// PgBouncer 1.25 too and so are not expected: `reserve_pool` (now `reserve_pool_size`)
/// and `requests` (gone since 1.8).
#[test]
fn the_go_exporter_finds_every_column_it_reads() {
    let pooler = start_pooler();
    // Traffic first, so every table has a row of the app database.
    let mut app = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    app.simple_query("SELECT 1").unwrap();
    let mut c = pooler.connect(STATS, STATS_PW, "pgbouncer");
    let tables: [(&str, &[&str], &[&str]); 3] = [
        (
            "SHOW DATABASES",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_mode",
            ],
            &[
                "pool_size",
                "max_connections",
                "current_connections",
                "paused",
                "disabled",
            ],
        ),
        (
            "SHOW STATS_TOTALS",
            &["database"],
            &[
                "query_count",
                "query_time",
                "bytes_received",
                "bytes_sent",
                "wait_time",
                "xact_count",
                "xact_time",
                "client_parse_count",
                "server_parse_count",
                "bind_count",
            ],
        ),
        (
            "SHOW POOLS",
            &["database", "user"],
            &[
                "cl_active",
                "cl_active_cancel_req",
                "cl_waiting",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
            ],
        ),
    ];
    for (sql, labels, numbers) in tables {
        let (cols, rows) = console_table(&mut c, sql);
        for name in labels.iter().chain(numbers) {
            assert!(
                cols.iter().any(|c| c == name),
                "{sql}: no column {name}: {cols:?}"
            );
        }
        assert!(!rows.is_empty(), "{sql}: no rows");
        for row in &rows {
            for name in numbers {
                let i = cols.iter().position(|c| c == name).unwrap();
                assert!(
                    row[i].parse::<f64>().is_ok(),
                    "{sql}: {name} = {:?} is not a number",
                    row[i]
                );
            }
        }
    }
    // SHOW LISTS: two columns, a row per list it maps, each a number.
    let (cols, rows) = console_table(&mut c, "SHOW LISTS");
    assert_eq!(cols.len(), 2, "{cols:?}");
    for list in [
        "databases",
        "users",
        "pools",
        "free_clients",
        "used_clients",
        "login_clients",
        "free_servers",
        "used_servers",
        "dns_names",
        "dns_zones",
        "dns_queries",
    ] {
        let row = rows.iter().find(|r| r[0] == list);
        let row = row.unwrap_or_else(|| panic!("SHOW LISTS has no {list}: {rows:?}"));
        assert!(row[1].parse::<f64>().is_ok(), "{row:?}");
    }
    // SHOW CONFIG: 3 or 4 columns; the two settings it exports are numbers.
    let (cols, rows) = console_table(&mut c, "SHOW CONFIG");
    assert!(cols.len() == 3 || cols.len() == 4, "{cols:?}");
    for key in ["max_client_conn", "max_user_connections"] {
        let row = rows.iter().find(|r| r[0] == key).expect(key);
        assert!(row[1].parse::<f64>().is_ok(), "{row:?}");
    }
    let (_, rows) = console_table(&mut c, "SHOW VERSION");
    assert_eq!(rows.len(), 1, "{rows:?}");
}
