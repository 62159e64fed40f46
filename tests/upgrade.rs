//! Online binary upgrade (`pgbouncers --upgrade`): listener take-over under load, draining, the pid file, failed upgrades, cancels across generations and descriptor leaks.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::tools::{child_pids, process_alive, run_cmd, CmdOutput};
use common::*;
use postgres::{NoTls, SimpleQueryMessage};

const ADMIN: &str = "upg_admin";
const ADMIN_PW: &str = "upg_admin_pw";

/// A config for the shared server with a pid file (which `--upgrade` needs) and an
/// admin user for the console.
fn config(mode: &str, extra: &str) -> String {
    let pg = shared_pg();
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         auth_file: @DIR@/userlist.txt\n\
         pidfile: @DIR@/pgbouncers.pid\n\
         admin_users: {ADMIN}\n\
         pool_mode: {mode}\n\
         default_pool_size: 20\n\
         query_wait_timeout: 20\n\
         {extra}\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: app }}\n",
        port = pg.port(),
    )
}

fn binary() -> PathBuf {
    std::env::var_os("PGBOUNCERS_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgbouncers")))
}

/// Kills every generation at the end: the new supervisors stay in the first one's
/// process group, which `Pooler` no longer signals once its own child was reaped.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the test pooler's process group.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// Starts a pooler with `workers` workers from `bin` (its launch path, which an upgrade
/// execs again).
fn start_from(bin: Option<&Path>, yaml: &str, workers: usize) -> (Pooler, Group) {
    let mut setup = PoolerSetup::new();
    let users = format!(
        "{}\n{}\n",
        userlist_entry(APP_USER, APP_PASSWORD),
        userlist_entry(ADMIN, ADMIN_PW)
    );
    setup.write_file("userlist.txt", &users);
    if let Some(b) = bin {
        setup.binary(b);
    }
    let pooler = setup.start_with_args(yaml, &["--workers", &workers.to_string()]);
    pooler.wait_for_children(workers, secs(5));
    let group = Group(pooler.pid());
    (pooler, group)
}

fn start(yaml: &str, workers: usize) -> (Pooler, Group) {
    start_from(None, yaml, workers)
}

/// Runs `pgbouncers --upgrade -c CONFIG`.
fn upgrade(pooler: &Pooler) -> CmdOutput {
    let mut cmd = Command::new(binary());
    cmd.arg("--upgrade").arg("-c").arg(pooler.config_path());
    run_cmd(cmd, None, secs(100))
}

fn pidfile_pid(pooler: &Pooler) -> Option<i32> {
    std::fs::read_to_string(pooler.path("pgbouncers.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Upgrades and returns the new supervisor's pid (from the pid file).
fn upgrade_ok(pooler: &Pooler, workers: usize) -> i32 {
    let before = pidfile_pid(pooler);
    let out = upgrade(pooler);
    assert!(
        out.success(),
        "upgrade failed: {out}\n--- log ---\n{}",
        pooler.log()
    );
    let new = pidfile_pid(pooler).expect("a pid file after the upgrade");
    assert_ne!(
        Some(new),
        before,
        "the pid file still names the old supervisor"
    );
    assert!(out.stdout.contains(&format!("to pid {new}")), "{out}");
    let ok = wait_until(secs(5), || child_pids(new).len() == workers);
    assert!(
        ok,
        "new supervisor {new} has workers {:?}\n--- log ---\n{}",
        child_pids(new),
        pooler.log()
    );
    new
}

/// (column names, rows) of a console SHOW.
fn show(c: &mut postgres::Client, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    for m in c.simple_query(sql).expect(sql) {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_string()).collect()
            }
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => {}
        }
    }
    (cols, rows)
}

/// A `pg_sleep(20)` on `c`, canceled with `token` (a protocol CancelRequest), ends with
/// 57014 within 5 s.
fn assert_cancel_reaches(c: &mut postgres::Client, token: &postgres::CancelToken, pooler: &Pooler) {
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(scalar(c, "SELECT pg_sleep(20)"));
        });
        thread::sleep(ms(500));
        token.cancel_query(NoTls).expect("cancel");
        let r = rx
            .recv_timeout(secs(5))
            .unwrap_or_else(|_| panic!("not cancelled\n{}", pooler.log()));
        let e = r.expect_err("pg_sleep finished");
        assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    });
}

/// What a process's descriptors past stdio point at: `socket:[inode]`, `pipe:[inode]`,
/// `/memfd:name`, ... (stdio is the test harness's, the same for every generation).
fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) > Some(2))
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect()
}

/// Inodes of every listening socket on the machine (TCP and Unix).
fn listening_inodes() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" {
                out.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    for line in std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000: __SO_ACCEPTCON, a listening socket.
        if f.len() > 6 && f[3] == "00010000" {
            out.insert(format!("socket:[{}]", f[6]));
        }
    }
    out
}

/// The pgbench summary line's number, e.g. "number of failed transactions: ".
fn pgbench_number(out: &str, prefix: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// A pgbench run of `SELECT 1` transactions against the pooler, in a thread.
fn pgbench(pooler: &Pooler, args: &[&str]) -> thread::JoinHandle<CmdOutput> {
    pgbench_as(pooler, "pgbench", args)
}

/// [`pgbench`] with its application_name (which the servers take on, too).
fn pgbench_as(pooler: &Pooler, app: &str, args: &[&str]) -> thread::JoinHandle<CmdOutput> {
    let script = pooler.write_file("select1.sql", "SELECT 1;\n");
    let mut cmd = pgbench_command(pooler.port(), APP_USER, APP_PASSWORD);
    cmd.env("PGAPPNAME", app);
    cmd.args(["-n", "-f"]).arg(script).args(args).arg(APP_DB);
    thread::spawn(move || run_cmd(cmd, None, secs(120)))
}

/// The run went through with no failed connection or transaction.
fn assert_clean(out: &CmdOutput, what: &str) -> u64 {
    assert!(out.success(), "{what}: pgbench failed: {out}");
    let processed = pgbench_number(&out.stdout, "number of transactions actually processed: ")
        .unwrap_or_else(|| panic!("{what}: no summary: {out}"));
    assert_eq!(
        pgbench_number(&out.stdout, "number of failed transactions: ").unwrap_or(0),
        0,
        "{what}: {out}"
    );
    for bad in ["aborted", "error", "failed", "could not"] {
        assert!(
            !out.stderr.to_lowercase().contains(bad),
            "{what}: pgbench reported {bad:?}: {out}"
        );
    }
    processed
}

/// `pgbench -C` (a connection per transaction) across an upgrade: not one connection is
/// refused or reset. The new generation's workers are the new supervisor's children,
/// the old generation exits, and the pid file names the new supervisor.
#[test]
fn upgrade_under_connect_load_refuses_no_connection() {
    let (mut pooler, _g) = start(&config("transaction", "shutdown_timeout: 10\n"), 2);
    let old = pooler.pid();
    assert_eq!(pidfile_pid(&pooler), Some(old));
    let bench = pgbench(&pooler, &["-C", "-c", "20", "-j", "4", "-T", "8"]);
    thread::sleep(secs(2));
    let started = Instant::now();
    let new = upgrade_ok(&pooler, 2);
    let took = started.elapsed();
    let status = pooler.wait_exit(secs(20));
    assert!(
        status.is_some(),
        "the old supervisor did not exit\n{}",
        pooler.log()
    );
    let overlap = started.elapsed();
    assert!(process_alive(new));
    assert_eq!(
        pidfile_pid(&pooler),
        Some(new),
        "the old exit removed the new pid file"
    );
    let out = bench.join().unwrap();
    let n = assert_clean(&out, "pgbench -C -c 20");
    eprintln!(
        "FIGURES pgbench -C -c 20 -T 8 across an upgrade: {n} connections+transactions, \
         0 refused, 0 failed; --upgrade returned in {took:?}, old generation gone after \
         {overlap:?}"
    );
    assert!(n > 100, "too little load to mean anything: {out}");
    let log = pooler.log();
    assert!(log.contains("upgrade complete: generation 1"), "{log}");
    // The new generation serves on.
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 7").unwrap(), "7");
}

/// A session client inside a transaction finishes it on its old worker while a new
/// client gets a new-generation worker; SHOW WORKERS lists both generations, SHOW FDS
/// what is passed on, and cancel requests reach clients of both generations.
#[test]
fn old_sessions_drain_while_the_new_generation_serves() {
    let (mut pooler, _g) = start(&config("session", "shutdown_timeout: 60\n"), 2);
    let old = pooler.pid();
    let old_workers: BTreeSet<i32> = pooler.children().into_iter().collect();
    let mut a = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    scalar(&mut a, "BEGIN").unwrap();
    let a_backend = scalar(&mut a, "SELECT pg_backend_pid()").unwrap();
    let a_cancel = a.cancel_token();

    let mut console = pooler.connect(ADMIN, ADMIN_PW, "pgbouncer");
    let (cols, fds) = show(&mut console, "SHOW FDS");
    assert_eq!(cols[..2], ["fd", "task"]);
    let tasks: Vec<&str> = fds.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        tasks.iter().filter(|t| **t == "listen").count(),
        2,
        "{fds:?}"
    );
    assert!(tasks.contains(&"shm"), "{fds:?}");
    // SUSPEND is refused with a pointer to the online upgrade.
    let e = console
        .simple_query("SUSPEND")
        .expect_err("SUSPEND succeeded");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("pgbouncers --upgrade"), "{e:?}");
    drop(console);

    let new = upgrade_ok(&pooler, 2);
    let new_workers: BTreeSet<i32> = child_pids(new).into_iter().collect();
    assert!(new_workers.is_disjoint(&old_workers));
    // The old generation stays for its session.
    thread::sleep(ms(500));
    assert!(
        pooler.is_running(),
        "the old supervisor left its session behind"
    );

    // A new client gets a new worker: its backend's client port is held by one.
    let mut b = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    let b_port = scalar(&mut b, "SELECT inet_client_port()").unwrap();
    let holder = holder_of_server_port(b_port.parse().unwrap(), &new_workers, &old_workers);
    assert_eq!(
        holder,
        Some(true),
        "the new client was not served by a new worker"
    );

    // Both generations in SHOW WORKERS.
    let mut console = pooler.connect(ADMIN, ADMIN_PW, "pgbouncer");
    let (cols, rows) = show(&mut console, "SHOW WORKERS");
    let gen = cols
        .iter()
        .position(|c| c == "generation")
        .expect("generation column");
    let pid = cols.iter().position(|c| c == "pid").unwrap();
    let state = cols.iter().position(|c| c == "state").unwrap();
    let by_gen = |g: &str| -> BTreeSet<i32> {
        rows.iter()
            .filter(|r| r[gen] == g)
            .map(|r| r[pid].parse().unwrap())
            .collect()
    };
    assert_eq!(by_gen("2"), new_workers, "{rows:?}");
    // Old workers with no client left have exited already; the one serving `a` remains.
    let old_listed = by_gen("1");
    assert!(
        !old_listed.is_empty() && old_listed.is_subset(&old_workers),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .filter(|r| r[gen] == "1")
            .all(|r| r[state] == "stopping"),
        "{rows:?}"
    );

    // Cancels: the old client's key reaches its old worker through the new generation
    // (the old one accepts nothing now), the new client's its new worker.
    let b_cancel = b.cancel_token();
    for (who, client, token) in [("old", &mut a, a_cancel), ("new", &mut b, b_cancel)] {
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| {
                let _ = tx.send(scalar(client, "SELECT pg_sleep(20)"));
            });
            thread::sleep(ms(500));
            token.cancel_query(NoTls).expect("cancel");
            let r = rx
                .recv_timeout(secs(5))
                .unwrap_or_else(|_| panic!("{who} client: not cancelled\n{}", pooler.log()));
            let e = r.expect_err("pg_sleep finished");
            assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{who}: {e:?}");
        });
    }
    // The old client's transaction (aborted by the cancel) ends on the same backend.
    scalar(&mut a, "ROLLBACK").unwrap();
    assert_eq!(
        scalar(&mut a, "SELECT pg_backend_pid()").unwrap(),
        a_backend
    );
    assert!(pooler.is_running());
    drop(a);
    let started = Instant::now();
    assert!(
        pooler.wait_exit(secs(10)).is_some(),
        "the old generation did not exit once its last client left\n{}",
        pooler.log()
    );
    eprintln!(
        "old generation exited {:?} after its last client",
        started.elapsed()
    );
    for w in &old_workers {
        assert!(
            wait_until(secs(2), || !process_alive(*w)),
            "old worker {w} lives on"
        );
    }
    assert_eq!(pidfile_pid(&pooler), Some(new));
    assert_eq!(scalar(&mut b, "SELECT 1").unwrap(), "1");
    let _ = old;
}

/// Whether the worker holding the TCP connection from local port `port` to PostgreSQL is
/// one of `new` (Some(true)) or of `old` (Some(false)).
fn holder_of_server_port(port: u16, new: &BTreeSet<i32>, old: &BTreeSet<i32>) -> Option<bool> {
    let pg = shared_pg().port();
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if f.len() > 9 && port_of(f[1]) == Some(port) && port_of(f[2]) == Some(pg) {
                inodes.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    let holds = |pid: &i32| fd_targets(*pid).iter().any(|t| inodes.contains(t));
    if new.iter().any(holds) {
        Some(true)
    } else if old.iter().any(holds) {
        Some(false)
    } else {
        None
    }
}

/// A broken config, a broken binary and a config the new supervisor refuses: the old
/// generation serves on, its pid file untouched, and `--upgrade` says why. Then the
/// binary at the launch path is replaced (as a package upgrade does) and the upgrade
/// runs that file, not the old one.
#[test]
fn failed_upgrades_leave_the_old_generation_serving() {
    let dir = common::tempdir::TestDir::new("upgrade-bin");
    let bin = dir.join("pgbouncers");
    std::fs::copy(binary(), &bin).unwrap();
    let yaml = config("transaction", "");
    let (mut pooler, _g) = start_from(Some(&bin), &yaml, 2);
    let old = pooler.pid();
    let workers = pooler.children();
    let serving = |pooler: &Pooler| {
        let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
        assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    };
    let assert_still_old = |pooler: &mut Pooler, what: &str| {
        assert!(pooler.is_running(), "{what}: the old supervisor exited");
        assert_eq!(pidfile_pid(pooler), Some(old), "{what}: pid file");
        assert_eq!(pooler.children(), workers, "{what}: workers changed");
        serving(pooler);
    };

    // 1. A config that does not parse: refused before the pooler is even asked.
    let good = std::fs::read_to_string(pooler.config_path()).unwrap();
    let broken = good.replace("pool_mode: transaction", "pool_mode: sometimes");
    assert_ne!(broken, good);
    std::fs::write(pooler.config_path(), broken).unwrap();
    let out = upgrade(&pooler);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("pool_mode"), "{out}");
    assert_still_old(&mut pooler, "broken config");

    // 2. A config the new supervisor cannot take over with (another port).
    let other = good.replace(
        &format!("listen_port: {}", pooler.port()),
        &format!("listen_port: {}", common::tools::free_port()),
    );
    std::fs::write(pooler.config_path(), other).unwrap();
    let out = upgrade(&pooler);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("listen_port changed"), "{out}");
    assert!(
        out.stderr.contains(&format!("pid {old} goes on serving")),
        "{out}"
    );
    assert_still_old(&mut pooler, "changed port");
    std::fs::write(pooler.config_path(), &good).unwrap();

    // 3. A binary that cannot start, then one that is not there at all.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = upgrade(&pooler);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("exited with code 3"), "{out}");
    assert_still_old(&mut pooler, "broken binary");
    std::fs::remove_file(&bin).unwrap();
    let out = upgrade(&pooler);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("cannot execute"), "{out}");
    assert_still_old(&mut pooler, "missing binary");
    let log = pooler.log();
    assert_eq!(log.matches("upgrade failed").count(), 3, "{log}");

    // 4. The package put a new binary at the launch path: that one starts.
    std::fs::copy(binary(), &bin).unwrap();
    let new = upgrade_ok(&pooler, 2);
    assert_eq!(
        std::fs::read_link(format!("/proc/{new}/exe")).unwrap(),
        std::fs::canonicalize(&bin).unwrap()
    );
    assert!(pooler.wait_exit(secs(10)).is_some());
    serving(&pooler);
}

/// Two upgrades in a row, the second refused while the first generation still drains;
/// afterwards no generation holds a descriptor of an older one, and the supervisor and
/// workers hold as many descriptors as the first generation did.
#[test]
fn two_upgrades_in_a_row_leak_no_descriptor() {
    let extra = "shutdown_timeout: 60\nunix_socket_dir: @DIR@\n";
    let (mut pooler, _g) = start(&config("session", extra), 2);
    let unix = |pooler: &Pooler| {
        postgres::Config::new()
            .host_path(pooler.dir())
            .port(pooler.port())
            .user(APP_USER)
            .dbname(APP_DB)
            .password(APP_PASSWORD)
            .connect_timeout(secs(10))
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("over the Unix socket: {e}\n{}", pooler.log()))
    };
    let socket_file = pooler.path(&format!(".s.PGSQL.{}", pooler.port()));
    assert!(socket_file.exists());
    // A client over the Unix socket stays with generation 1 (session pooling).
    let mut u = unix(&pooler);
    scalar(&mut u, "SELECT 1").unwrap();
    let gen1 = pooler.pid();
    let listening = listening_inodes();
    let mut gen1_fds: BTreeSet<String> = BTreeSet::new();
    let mut gen1_pids = vec![gen1];
    gen1_pids.extend(pooler.children());
    for p in &gen1_pids {
        gen1_fds.extend(fd_targets(*p));
    }
    let sup_fds = fd_targets(gen1).len();
    // A session keeps generation 1 alive: a second upgrade must wait for it.
    let mut a = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    scalar(&mut a, "SELECT 1").unwrap();
    let gen2 = upgrade_ok(&pooler, 2);
    let out = upgrade(&pooler);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("still draining"), "{out}");
    assert_eq!(pidfile_pid(&pooler), Some(gen2));
    let mut u2 = unix(&pooler);
    assert_eq!(scalar(&mut u2, "SELECT 2").unwrap(), "2");
    drop(u2);
    drop(u);
    drop(a);
    assert!(pooler.wait_exit(secs(10)).is_some(), "{}", pooler.log());
    assert!(
        wait_until(secs(5), || pooler
            .log()
            .contains("upgrade complete: generation 1")),
        "{}",
        pooler.log()
    );
    let gen3 = upgrade_ok(&pooler, 2);
    assert!(
        wait_until(secs(10), || !process_alive(gen2)),
        "generation 2 did not exit\n{}",
        pooler.log()
    );
    assert!(
        wait_until(secs(5), || pooler
            .log()
            .contains("upgrade complete: generation 2")),
        "{}",
        pooler.log()
    );
    let gen3_workers = child_pids(gen3);
    assert_eq!(gen3_workers.len(), 2);
    // Only the listening sockets are shared with generation 1.
    let mut gen3_fds = BTreeSet::new();
    for p in std::iter::once(gen3).chain(gen3_workers.iter().copied()) {
        gen3_fds.extend(fd_targets(p));
    }
    // Descriptors the test harness passed down (cargo's jobserver pipe) are not ours.
    let harness: BTreeSet<String> = fd_targets(std::process::id() as i32).into_iter().collect();
    let shared: Vec<&String> = gen3_fds
        .intersection(&gen1_fds)
        .filter(|t| !harness.contains(*t))
        // Sockets and pipes have unique names; epoll and the like do not.
        .filter(|t| (t.starts_with("socket:") || t.starts_with("pipe:")) && !listening.contains(*t))
        .collect();
    assert!(
        shared.is_empty(),
        "generation 3 holds generation 1's {shared:?}"
    );
    let memfds = fd_targets(gen3)
        .iter()
        .filter(|t| t.contains("pgbouncers-shm"))
        .count();
    assert_eq!(memfds, 1, "{:?}", fd_targets(gen3));
    assert_eq!(
        fd_targets(gen3).len(),
        sup_fds,
        "generation 3's supervisor holds {:?}, generation 1's held {sup_fds}: {}",
        fd_targets(gen3),
        String::from_utf8_lossy(
            &Command::new("ls")
                .arg("-l")
                .arg(format!("/proc/{gen3}/fd"))
                .output()
                .unwrap()
                .stdout
        )
    );
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
    // The old generations' exits left the Unix socket file to the new one.
    assert!(socket_file.exists(), "the Unix socket file is gone");
    let mut u3 = unix(&pooler);
    assert_eq!(scalar(&mut u3, "SELECT 3").unwrap(), "3");
}

/// An upgrade while a worker is being respawned (killed twice, so its respawn backs
/// off), under connect load: connections that reach the empty slot's socket wait in its
/// queue until a worker of either generation accepts them; none is refused, and the new
/// generation has all its workers.
#[test]
fn upgrade_while_a_worker_is_respawned() {
    let (mut pooler, _g) = start(&config("transaction", "shutdown_timeout: 10\n"), 3);
    // Worker 0's pid, from the last "worker 0 started (pid N)" line.
    let slot0 = |pooler: &Pooler| -> i32 {
        let log = pooler.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("worker 0 started (pid "))
            .unwrap();
        line.rsplit("(pid ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap()
    };
    let victim = slot0(&pooler);
    // SAFETY: kill(2) on one of the test pooler's workers.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(wait_until(secs(2), || slot0(&pooler) != victim));
    let victim = slot0(&pooler);
    // SAFETY: as above.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(
        wait_until(secs(2), || pooler.log().contains("respawning in 400ms")),
        "{}",
        pooler.log()
    );
    let bench = pgbench(&pooler, &["-C", "-c", "8", "-j", "2", "-T", "5"]);
    let new = upgrade_ok(&pooler, 3);
    assert!(pooler.wait_exit(secs(20)).is_some(), "{}", pooler.log());
    assert_eq!(child_pids(new).len(), 3);
    let out = bench.join().unwrap();
    assert_clean(
        &out,
        "pgbench -C during an upgrade with a worker respawning",
    );
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    assert_eq!(scalar(&mut c, "SELECT 1").unwrap(), "1");
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `pgbench -c 20 -T 10` in transaction (and statement) pooling across an upgrade with a shutdown_timeout
/// far shorter than the run: every client moves to the new generation between two of
/// its transactions, so not one transaction fails and not one client logs in twice.
#[test]
fn transaction_clients_move_to_the_new_generation_unnoticed() {
    // The issue's `pgbench -c 20 -T 30` in transaction pooling; the prepared and statement
    // runs take 10 s, still well past shutdown_timeout after the upgrade, to keep the
    // suite short. UPGRADE_BENCH_SECONDS sets all three.
    let forced: Option<u64> = std::env::var("UPGRADE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok());
    for (pooling, mode, default_secs) in [
        ("transaction", "simple", 30),
        ("transaction", "prepared", 10),
        ("statement", "simple", 10),
    ] {
        let run = forced.unwrap_or(default_secs).max(8).to_string();
        let extra = "shutdown_timeout: 3\nmax_prepared_statements: 100\n";
        let (mut pooler, _g) = start(&config(pooling, extra), 2);
        let app = format!("upg_{pooling}_{mode}_{}", std::process::id());
        let bench = pgbench_as(
            &pooler,
            &app,
            &["-M", mode, "-c", "20", "-j", "4", "-T", &run],
        );
        thread::sleep(secs(4));
        // Backend side: the servers of this run (they take the clients' application_name).
        let mut pg = shared_pg().admin_client();
        let backends = |pg: &mut postgres::Client, since: Option<&str>| -> i64 {
            let sql = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' {}",
                since.map_or(String::new(), |t| format!("AND backend_start > '{t}'"))
            );
            pg.query_one(sql.as_str(), &[]).unwrap().get(0)
        };
        let before = backends(&mut pg, None);
        let t0: String = pg.query_one("SELECT now()::text", &[]).unwrap().get(0);
        let started = Instant::now();
        let new = upgrade_ok(&pooler, 2);
        let status = pooler.wait_exit(secs(10));
        let overlap = started.elapsed();
        thread::sleep(secs(1));
        let opened = backends(&mut pg, Some(&t0));
        let now_open = backends(&mut pg, None);
        // Two workers with default_pool_size 20 each, in either generation.
        assert!(
            before <= 40 && opened <= 40,
            "{before} then {opened} new backends"
        );
        // The new generation serves the same 20 clients, connected before the upgrade.
        thread::sleep(secs(1));
        let mut console = pooler.connect(ADMIN, ADMIN_PW, "pgbouncer");
        let (cols, rows) = show(&mut console, "SHOW CLIENTS");
        let col = |n: &str| cols.iter().position(|c| c == n).unwrap();
        let mine = rows
            .iter()
            .find(|r| r[col("user")] == ADMIN)
            .map(|r| r[col("connect_time")].clone())
            .expect("the console client");
        let apps: Vec<&Vec<String>> = rows.iter().filter(|r| r[col("user")] == APP_USER).collect();
        assert_eq!(apps.len(), 20, "{mode}: {rows:?}");
        assert!(
            apps.iter().all(|r| r[col("connect_time")] < mine),
            "{mode}: a client connected after the upgrade: {rows:?}"
        );
        drop(console);
        assert!(
            status.is_some(),
            "{mode}: the old generation did not exit\n{}",
            pooler.log()
        );
        let out = bench.join().unwrap();
        let n = assert_clean(&out, &format!("pgbench -M {mode} -c 20 -T {run}"));
        let log = pooler.log();
        // pgbench logs in once more before its clients start (a check connection).
        let logins = log.matches("login attempt: db=app user=app").count();
        let after = log
            .split_once("upgrade: starting")
            .map_or("", |(_, rest)| rest)
            .matches("login attempt: db=app user=app")
            .count();
        let handed = log.matches("handed over to the new generation").count();
        eprintln!(
            "FIGURES pgbench -M {mode} -c 20 -T {run} ({pooling} pooling, shutdown_timeout 3) \
             across an upgrade: {n} transactions, 0 failed, {logins} logins in all for 20 \
             clients, {after} after the upgrade began, {handed} clients handed over; old \
             generation gone after {overlap:?}; backends: {before} before, {opened} opened \
             by the new generation, {now_open} open after"
        );
        assert_eq!(after, 0, "{mode}: a client logged in again\n{log}");
        assert!(logins <= 21, "{mode}: {logins} logins\n{log}");
        assert_eq!(
            handed, 20,
            "{mode}: not every client was handed over\n{log}"
        );
        assert!(
            overlap < secs(3),
            "{mode}: the old generation waited for shutdown_timeout: {overlap:?}"
        );
        assert!(process_alive(new));
    }
}

/// A handed-over client keeps its session: tracked parameters, named prepared
/// statements, and its cancel key, which reaches it in the new generation.
#[test]
fn a_handed_over_client_keeps_its_parameters_statements_and_cancel_key() {
    let extra = "shutdown_timeout: 30\nmax_prepared_statements: 100\nserver_lifetime: 0\n";
    let (mut pooler, _g) = start(&config("transaction", extra), 2);
    let mut c = pooler
        .client_config(APP_USER, APP_PASSWORD, APP_DB)
        .application_name("before_upgrade")
        .connect(NoTls)
        .unwrap();
    let stmt = c.prepare("SELECT $1::int4 + 1").unwrap();
    scalar(&mut c, "SET DateStyle = 'SQL, DMY'").unwrap();
    let token = c.cancel_token();
    let _new = upgrade_ok(&pooler, 2);
    // Idle, so handed over at once: the old generation has nobody left.
    assert!(
        pooler.wait_exit(secs(10)).is_some(),
        "the old generation kept the idle client\n{}",
        pooler.log()
    );
    assert!(pooler.log().contains("handed over to the new generation"));
    let row = c.query_one(&stmt, &[&41i32]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(
        scalar(&mut c, "SELECT current_setting('application_name')").unwrap(),
        "before_upgrade"
    );
    assert_eq!(scalar(&mut c, "SHOW DateStyle").unwrap(), "SQL, DMY");
    assert_cancel_reaches(&mut c, &token, &pooler);
    assert_eq!(scalar(&mut c, "SELECT 5").unwrap(), "5");
}

/// max_client_conn holds for both generations together while the old one drains, and
/// the old generation's places come back once it has exited.
#[test]
fn max_client_conn_counts_both_generations_during_the_overlap() {
    let extra = "shutdown_timeout: 30\nmax_client_conn: 3\n";
    let (mut pooler, _g) = start(&config("session", extra), 2);
    let mut old: Vec<postgres::Client> = (0..2)
        .map(|_| pooler.connect(APP_USER, APP_PASSWORD, APP_DB))
        .collect();
    for c in &mut old {
        scalar(c, "BEGIN").unwrap();
    }
    upgrade_ok(&pooler, 2);
    let mut b1 = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    assert_eq!(scalar(&mut b1, "SELECT 1").unwrap(), "1");
    let refused = pooler
        .try_connect(APP_USER, APP_PASSWORD, APP_DB)
        .err()
        .expect("a fourth client got in while the old generation holds two");
    let db = refused.as_db_error().map(|e| e.message().to_string());
    assert_eq!(
        db.as_deref(),
        Some("no more connections allowed (max_client_conn)"),
        "{refused:?}"
    );
    for mut c in old.drain(..) {
        scalar(&mut c, "COMMIT").unwrap();
    }
    assert!(pooler.wait_exit(secs(10)).is_some(), "{}", pooler.log());
    let more: Vec<postgres::Client> = (0..2)
        .map(|_| pooler.connect(APP_USER, APP_PASSWORD, APP_DB))
        .collect();
    assert_eq!(more.len(), 2);
}

/// Two upgrades in a row under transaction-pooling load: the clients move twice (the
/// third generation has the first one's key parity), no transaction fails and nobody
/// logs in again; cancels still reach a client that moved twice.
#[test]
fn two_upgrades_in_a_row_under_load() {
    let extra = "shutdown_timeout: 3\n";
    let (mut pooler, _g) = start(&config("transaction", extra), 2);
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, APP_DB);
    let token = c.cancel_token();
    let bench = pgbench(&pooler, &["-c", "20", "-j", "4", "-T", "14"]);
    thread::sleep(secs(3));
    let t1 = Instant::now();
    let gen2 = upgrade_ok(&pooler, 2);
    assert!(pooler.wait_exit(secs(10)).is_some(), "{}", pooler.log());
    assert!(
        wait_until(secs(5), || pooler
            .log()
            .contains("upgrade complete: generation 1")),
        "{}",
        pooler.log()
    );
    let overlap1 = t1.elapsed();
    thread::sleep(secs(2));
    let t2 = Instant::now();
    let gen3 = upgrade_ok(&pooler, 2);
    assert!(
        wait_until(secs(10), || !process_alive(gen2)),
        "generation 2 did not exit\n{}",
        pooler.log()
    );
    let overlap2 = t2.elapsed();
    let out = bench.join().unwrap();
    let n = assert_clean(&out, "pgbench -c 20 across two upgrades");
    let log = pooler.log();
    let after = log
        .split_once("upgrade: starting")
        .map_or("", |(_, rest)| rest)
        .matches("login attempt: db=app user=app")
        .count();
    let handed = log.matches("handed over to the new generation").count();
    eprintln!(
        "FIGURES pgbench -c 20 -T 14 across two upgrades: {n} transactions, 0 failed, \
         {after} logins after the first upgrade began, {handed} handovers; overlaps \
         {overlap1:?} and {overlap2:?}"
    );
    assert_eq!(after, 0, "{log}");
    // 20 pgbench clients and `c`, twice.
    assert_eq!(handed, 42, "{log}");
    assert!(process_alive(gen3));
    assert_cancel_reaches(&mut c, &token, &pooler);
}

/// Under systemd (Type=notify, NotifyAccess=main) the old supervisor, still the main
/// process, announces the new one: MAINPID=<new pid> then READY=1.
#[test]
fn systemd_is_told_the_new_main_pid() {
    use std::os::unix::net::UnixDatagram;
    let dir = common::tempdir::TestDir::new("upgrade-notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(ms(200))).unwrap();
    let mut setup = PoolerSetup::new();
    let users = format!("{}\n", userlist_entry(APP_USER, APP_PASSWORD));
    setup.write_file("userlist.txt", &users);
    setup.env("NOTIFY_SOCKET", &path);
    let pooler = setup.start_with_args(&config("transaction", ""), &["--workers", "1"]);
    let _g = Group(pooler.pid());
    let old = pooler.pid();
    let mut got: Vec<String> = Vec::new();
    let read_all = |got: &mut Vec<String>| {
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    read_all(&mut got);
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    got.clear();
    let new = upgrade_ok(&pooler, 1);
    assert!(
        wait_until(secs(5), || {
            read_all(&mut got);
            got.iter().any(|m| m.contains(&format!("MAINPID={new}")))
        }),
        "{got:?}\n{}",
        pooler.log()
    );
    let announce = got.iter().find(|m| m.contains("MAINPID=")).unwrap();
    assert!(announce.contains("READY=1"), "{announce:?}");
    // The old one does not say STOPPING=1: systemd would think the service stops.
    let _ = old;
    thread::sleep(secs(1));
    read_all(&mut got);
    assert!(!got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
}

/// A client behind a PROXY header keeps its real address when it is handed over.
#[test]
fn a_handed_over_client_keeps_its_proxy_address() {
    use common::wire::{query, read_answer, startup_packet};
    use std::io::Write;
    let extra = "shutdown_timeout: 30\nproxy_protocol: optional\nproxy_trusted: [127.0.0.1/32]\n";
    let (mut pooler, _g) = start(&config("transaction", extra), 1);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pooler.port())).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    let mut hello = b"PROXY TCP4 203.0.113.7 127.0.0.1 40123 5432\r\n".to_vec();
    hello.extend(startup_packet(&[("user", APP_USER), ("database", APP_DB)]));
    s.write_all(&hello).unwrap();
    assert!(read_answer(&mut s).ready, "login through a PROXY header");
    let addr_of_client = |pooler: &Pooler| {
        let mut console = pooler.connect(ADMIN, ADMIN_PW, "pgbouncer");
        let (cols, rows) = show(&mut console, "SHOW CLIENTS");
        let col = |n: &str| cols.iter().position(|c| c == n).unwrap();
        rows.iter()
            .find(|r| r[col("user")] == APP_USER)
            .map(|r| (r[col("addr")].clone(), r[col("port")].clone()))
    };
    let want = Some(("203.0.113.7".to_string(), "40123".to_string()));
    assert_eq!(addr_of_client(&pooler), want);
    upgrade_ok(&pooler, 1);
    assert!(
        pooler.wait_exit(secs(10)).is_some(),
        "the old generation kept the idle client\n{}",
        pooler.log()
    );
    assert_eq!(addr_of_client(&pooler), want, "in the new generation");
    s.write_all(&query("SELECT 6 * 7")).unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.values, ["42"], "{:?}", a.error);
}

/// `--upgrade` needs a pid file that names a running pooler, and says so.
#[test]
fn upgrade_without_a_running_pooler_says_why() {
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &userlist_entry(APP_USER, APP_PASSWORD));
    let no_pidfile = config("transaction", "").replace("pidfile: @DIR@/pgbouncers.pid\n", "");
    let out = setup.run_to_exit(&no_pidfile, &["--upgrade"], secs(10));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("set pidfile or --pidfile"), "{out}");
    let out = setup.run_to_exit(&config("transaction", ""), &["--upgrade"], secs(10));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("names no process"), "{out}");
    // A stale pid file (a pid that is not running): refused, nothing is signalled.
    setup.write_file("pgbouncers.pid", "999999999\n");
    let out = setup.run_to_exit(&config("transaction", ""), &["--upgrade"], secs(10));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("cannot signal pid 999999999"), "{out}");
    // A pid file that names some other live process: it is left alone.
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    setup.write_file("pgbouncers.pid", &format!("{}\n", other.id()));
    let out = setup.run_to_exit(&config("transaction", ""), &["--upgrade"], secs(10));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("not a pgbouncers supervisor"), "{out}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was signalled"
    );
    let _ = other.kill();
    let _ = other.wait();
}

/// A pid file that names a process which does not catch the upgrade signal (here a
/// worker; likewise a pgbouncers from before online upgrades) is refused: the signal
/// would kill it.
#[test]
fn upgrade_refuses_a_process_that_would_die_of_the_signal() {
    let (mut pooler, _g) = start(&config("transaction", ""), 1);
    let worker = pooler.children()[0];
    std::fs::write(pooler.path("pgbouncers.pid"), format!("{worker}\n")).unwrap();
    let out = upgrade(&pooler);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("does not handle the upgrade signal"),
        "{out}"
    );
    thread::sleep(ms(300));
    assert!(process_alive(worker), "the worker was signalled");
    assert!(pooler.is_running());
    assert_eq!(pooler.children(), [worker]);
}
