//! Supervisor defects from issue 12, each with the test that guards it: descriptors a worker
//! inherits, configs with nothing to serve, control messages lost on a full channel, idle
//! metrics connections, and auth files with no size limit.

mod common;

use common::wire::{error_fields, startup_packet};
use common::*;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A transaction-mode config on the shared server: trust auth, `TRUST_USER` may use the
/// console, `extra` global lines.
fn config(extra: &str) -> String {
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: trust\n\
         admin_users: [{TRUST_USER}]\n\
         pool_mode: transaction\n\
         {extra}\
         databases:\n  \
           app: {{ host: 127.0.0.1, port: {port}, dbname: app, user: {TRUST_USER} }}\n",
        port = shared_pg().port()
    )
}

/// How many times `needle` is in the log.
fn log_count(pooler: &Pooler, needle: &str) -> usize {
    pooler.log().matches(needle).count()
}

/// Sends SIGHUP and waits for the supervisor's verdict: Ok(()) when the reload was applied,
/// Err(the log line) when it was refused.
fn reload(pooler: &Pooler) -> Result<(), String> {
    let (ok, failed) = (
        log_count(pooler, "INFO configuration reloaded"),
        log_count(pooler, "reload failed"),
    );
    pooler.reload();
    let mut verdict = None;
    wait_until(secs(5), || {
        let log = pooler.log();
        if log.matches("INFO configuration reloaded").count() > ok {
            verdict = Some(Ok(()));
        } else if log.matches("reload failed").count() > failed {
            let line = log.lines().rfind(|l| l.contains("reload failed"));
            verdict = Some(Err(line.unwrap_or_default().to_string()));
        }
        verdict.is_some()
    });
    verdict.unwrap_or_else(|| panic!("no verdict on the reload\n{}", pooler.log()))
}

// ---------------------------------------------------------------------------------------
// The metrics endpoint, with timeouts everywhere: a socket nobody serves must not hang a test.

/// The answer to `GET /metrics` on 127.0.0.1:`port` within `limit`, or why there was none.
fn scrape(port: u16, limit: Duration) -> Result<String, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    if resp.starts_with("HTTP/1.1 200") {
        Ok(resp)
    } else {
        Err(format!("answer: {resp:?}"))
    }
}

fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), secs(1)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

// ---------------------------------------------------------------------------------------
// Item 5: a worker holds only its own descriptors.

/// Socket inodes in this network namespace: TCP ones with (local port, listening), Unix ones.
fn socket_table() -> (BTreeMap<String, (u16, bool)>, Vec<String>) {
    let mut tcp = BTreeMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let port = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0);
                tcp.insert(f[9].to_string(), (port, f[3] == "0A"));
            }
        }
    }
    let unix = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6).map(str::to_string))
        .collect();
    (tcp, unix)
}

/// Descriptors this test process leaves open across exec (no O_CLOEXEC), as (number, target):
/// whoever started the tests may have passed some down, and the pooler inherits them from us.
fn inherited() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let fd = e.file_name().to_string_lossy().into_owned();
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|t| {
                let f = t
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))?
                    .trim()
                    .to_string();
                u32::from_str_radix(&f, 8).ok()
            });
        let link = std::fs::read_link(e.path()).map(|l| l.to_string_lossy().into_owned());
        if let (Some(flags), Ok(link)) = (flags, link) {
            if flags & libc::O_CLOEXEC as u32 == 0 && fd.parse::<i32>().is_ok_and(|n| n > 2) {
                out.push((fd, link));
            }
        }
    }
    out
}

/// What `pid` has open, one description per descriptor, when it is anything but a worker's
/// own: stdio (/dev/null and the harness's log file), one listening socket on the pooler's
/// port per listen address, its control socket, its signal pipe (a Unix socket pair), its
/// epoll and its resolver thread's waker (an eventfd); descriptors the test process itself
/// passed down are not the supervisor's and are let be. Err lists every descriptor.
fn foreign_descriptors(pid: i32, pooler: &Pooler) -> Result<(), String> {
    let (tcp, unix) = socket_table();
    let ours = inherited();
    let mut all = Vec::new();
    let (mut epolls, mut listeners, mut unix_sockets, mut foreign) = (0, 0, 0, Vec::new());
    let mut wakers = 0;
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())?;
    for e in entries.flatten() {
        let fd = e.file_name().to_string_lossy().into_owned();
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue; // closed since the listing
        };
        let link = link.to_string_lossy().into_owned();
        all.push(format!("{fd} -> {link}"));
        if ours.iter().any(|(f, l)| *f == fd && *l == link) {
            continue;
        }
        let inode = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'));
        match inode {
            Some(i) if tcp.get(i) == Some(&(pooler.port(), true)) => listeners += 1,
            Some(i) if unix.iter().any(|u| u == i) => unix_sockets += 1,
            Some(i) => foreign.push(format!("{fd}: socket {i} {:?}", tcp.get(i))),
            None if link == "anon_inode:[eventpoll]" => epolls += 1,
            None if link == "anon_inode:[eventfd]" => wakers += 1,
            None if link == "/dev/null" && fd == "0" => {}
            None if Some(link.as_str()) == pooler.log_path().to_str()
                && ["1", "2"].contains(&fd.as_str()) => {}
            None => foreign.push(format!("{fd}: {link}")),
        }
    }
    all.sort();
    if epolls == 1 && wakers <= 1 && listeners == 1 && unix_sockets == 3 && foreign.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "worker {pid}: {epolls} epolls (want 1), {wakers} eventfds (want at most 1), \
             {listeners} listeners (want 1), {unix_sockets} Unix sockets (want 3: control \
             and signal pipe), foreign {foreign:?}\n\
             all: {all:#?}"
        ))
    }
}

#[test]
fn a_worker_holds_only_its_own_descriptors() {
    let mport = free_port();
    let pooler = PoolerSetup::new().start_with_args(
        &config(&format!("metrics_addr: 127.0.0.1:{mport}\n")),
        &["--workers", "2"],
    );
    let first = pooler.wait_for_children(2, secs(5));
    // The supervisor has passed a reload's memfd and holds a scrape connection when the
    // next worker is forked: neither may reach it.
    reload(&pooler).expect("reload");
    scrape(mport, secs(3)).expect("scrape");
    let _idle_scrape = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on a worker of this test's own pooler.
    unsafe { libc::kill(first[0], libc::SIGKILL) };
    let mut now = Vec::new();
    assert!(
        wait_until(secs(5), || {
            now = pooler.children();
            now.len() == 2 && !now.contains(&first[0])
        }),
        "no respawn: {now:?}"
    );
    for pid in now {
        let mut last = Ok(());
        let clean = wait_until(secs(3), || {
            last = foreign_descriptors(pid, &pooler);
            last.is_ok()
        });
        assert!(clean, "{}", last.unwrap_err());
    }
}

#[test]
fn metrics_addr_moves_away_and_back_on_reload() {
    let (a, b) = (free_port(), free_port());
    let pooler = PoolerSetup::new().start_with_args(
        &config(&format!("metrics_addr: 127.0.0.1:{a}\n")),
        &["--workers", "2"],
    );
    pooler.wait_for_children(2, secs(5));
    scrape(a, secs(3)).expect("metrics on the first port");

    pooler.rewrite_config(&config(&format!("metrics_addr: 127.0.0.1:{b}\n")));
    reload(&pooler).expect("reload to the second port");
    scrape(b, secs(3)).expect("metrics on the second port");
    // Nothing may listen on the old port any more: not the supervisor, not a worker.
    assert!(
        wait_until(secs(2), || refused(a)),
        "the old metrics port still accepts connections"
    );

    pooler.rewrite_config(&config(&format!("metrics_addr: 127.0.0.1:{a}\n")));
    reload(&pooler).expect("reload back to the first port");
    let back = scrape(a, secs(3));
    assert!(
        back.is_ok(),
        "no metrics back on the first port: {back:?}\n{}",
        pooler.log()
    );
    assert!(wait_until(secs(2), || refused(b)));
    assert!(
        !pooler.log().contains("Address already in use"),
        "{}",
        pooler.log()
    );
}

// ---------------------------------------------------------------------------------------
// Item 6: a config that serves nobody is refused, at start, by --check and on reload.

/// Texts a deployment can leave behind: empty, comments only, cut before `databases:`, and
/// YAML that is not a mapping.
fn unusable_configs() -> Vec<(&'static str, String)> {
    // Cut before the console users and the databases: whatever is left parses.
    let full = config("");
    let cut = full[..full.find("admin_users:").unwrap()].to_string();
    vec![
        ("empty", String::new()),
        ("comments only", "# nothing yet\n".into()),
        ("document marker only", "---\n".into()),
        ("cut short", cut),
        ("a scalar", "listen_port\n".into()),
        ("a list", "- listen_port: 6432\n".into()),
    ]
}

#[test]
fn a_config_that_serves_nobody_is_refused_by_check_and_at_start() {
    let setup = PoolerSetup::new();
    for (what, text) in unusable_configs() {
        let out = setup.run_to_exit(&text, &["--check"], secs(10));
        assert_eq!(out.code(), Some(1), "{what}: {out}");
        assert!(!out.stderr.trim().is_empty(), "{what}: no message: {out}");
        let out = setup.run_to_exit(&text, &[], secs(10));
        assert_eq!(out.code(), Some(1), "{what}: started: {out}");
    }
    let out = setup.run_to_exit("", &["--check"], secs(10));
    assert!(
        out.stderr.contains("no databases") && out.stderr.contains("admin_users"),
        "{out}"
    );
    // Console users alone are enough: databases can come with a reload.
    let console_only =
        format!("listen_port: @PORT@\nauth_type: trust\nadmin_users: [{TRUST_USER}]\n");
    let out = setup.run_to_exit(&console_only, &["--check"], secs(10));
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn a_reload_of_a_config_that_serves_nobody_keeps_the_running_one() {
    let pooler =
        PoolerSetup::new().start_with_args(&config("query_wait_timeout: 5\n"), &["--workers", "2"]);
    pooler.wait_for_children(2, secs(5));
    let mut held = pooler.connect(TRUST_USER, "", "app");
    assert_eq!(scalar(&mut held, "SELECT 1").unwrap(), "1");
    for (what, text) in unusable_configs() {
        pooler.rewrite_config(&text);
        let verdict = reload(&pooler);
        assert!(verdict.is_err(), "{what} was applied\n{}", pooler.log());
        // Both the client that stayed and a new one are served as before.
        assert_eq!(scalar(&mut held, "SELECT 2").unwrap(), "2", "{what}");
        let mut fresh = pooler.connect(TRUST_USER, "", "app");
        assert_eq!(scalar(&mut fresh, "SELECT 3").unwrap(), "3", "{what}");
    }
    let log = pooler.log();
    assert!(
        log.contains("no databases"),
        "no clear message for an empty file:\n{log}"
    );
    // A good file is applied again afterwards.
    pooler.rewrite_config(&config(""));
    reload(&pooler).expect("a good config reloads");
}

// ---------------------------------------------------------------------------------------
// Item 10: control messages wait for room in a full channel instead of being dropped.

/// Logs in with a raw StartupMessage (trust) and reads up to ReadyForQuery.
fn raw_login(port: u16, params: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(&startup_packet(params)).expect("send startup");
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).expect("login reply");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).expect("login reply body");
        match head[0] {
            b'Z' => return s,
            b'E' => panic!("login failed: {:?}", error_fields(&body)),
            _ => {}
        }
    }
}

#[test]
fn show_clients_returns_every_row_when_the_rows_exceed_the_socket_buffers() {
    // The control channel is a SOCK_SEQPACKET pair: wmem_default (usually 208 KiB) of
    // unread data, or max_dgram_qlen (usually 10) records, fills it. 800 clients with a
    // 2000-byte application_name make more than 1.6 MB of rows, about 28 chunks of 60 KB,
    // half of them relayed from the other worker through the supervisor.
    const CLIENTS: usize = 800;
    let pooler = PoolerSetup::new().start_with_args(
        // A console answer that never comes ends at query_wait_timeout.
        &config("max_client_conn: 2000\nquery_wait_timeout: 15\n"),
        &["--workers", "2"],
    );
    pooler.wait_for_children(2, secs(5));
    let name = format!("wide-{}", "x".repeat(2000));
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            raw_login(
                pooler.port(),
                &[
                    ("user", TRUST_USER),
                    ("database", "app"),
                    ("application_name", &name),
                ],
            )
        })
        .collect();
    let mut console = pooler.connect(TRUST_USER, "", "pgbouncer");
    for round in 0..3 {
        let started = Instant::now();
        let rows = query_rows(&mut console, "SHOW CLIENTS");
        let app_col = rows
            .first()
            .and_then(|r| {
                r.columns()
                    .iter()
                    .position(|c| c.name() == "application_name")
            })
            .expect("an application_name column");
        let wide = rows
            .iter()
            .filter(|r| r.get(app_col) == Some(name.as_str()))
            .count();
        assert_eq!(
            wide,
            CLIENTS,
            "round {round}: {} rows in all after {:?}\n{}",
            rows.len(),
            started.elapsed(),
            pooler.log()
        );
    }
    drop(clients);
}

// ---------------------------------------------------------------------------------------
// Also: idle connections to the metrics endpoint never stop a scrape.

#[test]
fn idle_metrics_connections_never_stop_a_scrape() {
    let mport = free_port();
    let pooler = PoolerSetup::new().start_with_args(
        &config(&format!("metrics_addr: 127.0.0.1:{mport}\n")),
        &["--workers", "2"],
    );
    pooler.wait_for_children(2, secs(5));
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", mport)).expect("connect"))
        .collect();
    // Half a request is idle too.
    let mut partial: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", mport)).expect("connect"))
        .collect();
    for s in &mut partial {
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for attempt in 0..3 {
        let started = Instant::now();
        let r = scrape(mport, secs(2));
        assert!(
            r.is_ok(),
            "scrape {attempt} failed after {:?}: {r:?}",
            started.elapsed()
        );
    }
    // Idle connections are closed within a few seconds.
    let mut s = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.set_read_timeout(Some(secs(8))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf);
    assert!(
        matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
        "an idle connection was not closed"
    );
    assert!(
        started.elapsed() < secs(6),
        "closed after {:?}",
        started.elapsed()
    );
    drop((idle, partial));
}

// ---------------------------------------------------------------------------------------
// Also: auth files are read no further than their size limit.

/// Runs `--check` with `auth_file` (or `auth_hba_file`, per `key`) a FIFO that a thread fills
/// with up to 256 MiB of valid lines. Returns the output, the bytes the thread wrote, and
/// whether the reader closed the FIFO before the end.
fn check_with_endless_file(key: &str, line: &str) -> (CmdOutput, u64, bool) {
    let setup = PoolerSetup::new();
    let fifo = setup.path("endless.txt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    setup.write_file("users.txt", &userlist_entry(TRUST_USER, "pw"));
    setup.write_file("hba.conf", "host all all 127.0.0.1/32 trust\n");
    let yaml = config("auth_file: @DIR@/users.txt\nauth_hba_file: @DIR@/hba.conf\n")
        .replace("auth_type: trust", "auth_type: hba")
        .replace(
            &format!("{key}: @DIR@/users.txt"),
            &format!("{key}: @DIR@/endless.txt"),
        )
        .replace(
            &format!("{key}: @DIR@/hba.conf"),
            &format!("{key}: @DIR@/endless.txt"),
        );
    assert!(yaml.contains("endless.txt"));
    let chunk = line.repeat(65536 / line.len());
    let path = fifo.clone();
    let writer = std::thread::spawn(move || {
        // Blocks until the pooler opens the FIFO to read it.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut written = 0u64;
        while written < 256 << 20 {
            match f.write(chunk.as_bytes()) {
                Ok(n) => written += n as u64,
                Err(_) => return (written, true),
            }
        }
        (written, false)
    });
    let out = setup.run_to_exit(&yaml, &["--check"], secs(30));
    // If the pooler never opened the FIFO, open it here so the writer can finish.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _unblock = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    }
    let (written, cut) = writer.join().unwrap();
    (out, written, cut)
}

#[test]
fn auth_files_are_read_no_further_than_their_size_limit() {
    // The userlist's limit is the config file's, 16 MiB; the hba file's is 1 MiB.
    for (key, line, limit) in [
        ("auth_file", "\"someone\" \"secret\"\n", 16u64 << 20),
        (
            "auth_hba_file",
            "host all all 127.0.0.1/32 trust\n",
            1 << 20,
        ),
    ] {
        let (out, written, cut) = check_with_endless_file(key, line);
        assert_eq!(out.code(), Some(1), "{key}: {out}");
        assert!(
            out.stderr.contains("endless.txt") && out.stderr.contains("larger than"),
            "{key}: {out}"
        );
        // What the reader took, plus what the pipe holds (at most 1 MiB) and one write.
        assert!(
            cut && written <= limit + (2 << 20),
            "{key}: the pooler read {written} bytes of an endless file (cut: {cut})"
        );
    }
}

#[test]
fn a_reload_with_an_auth_file_over_the_limit_keeps_the_running_one() {
    // 16 MiB, the config file's limit, plus a line; the lines themselves are valid.
    let line = userlist_entry("someone", "secret") + "\n";
    let big = line.repeat((16 << 20) / line.len() + 2);
    let setup = PoolerSetup::new();
    setup.write_file("users.txt", &userlist_entry(TRUST_USER, "pw"));
    let yaml = config("auth_file: @DIR@/users.txt\n").replace("auth_type: trust", "auth_type: md5");
    let pooler = setup.start_with_args(&yaml, &["--workers", "2"]);
    pooler.wait_for_children(2, secs(5));
    pooler.connect(TRUST_USER, "pw", "app");
    pooler.write_file("users.txt", &big);
    let verdict = reload(&pooler);
    assert!(
        verdict.as_ref().is_err_and(|l| l.contains("larger than")),
        "{verdict:?}"
    );
    pooler.connect(TRUST_USER, "pw", "app");
}
