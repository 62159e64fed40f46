//! Peering across hosts: three poolers on 127.0.0.2-4 behind one round-robin HAProxy, where every cancel request reaches its query whichever host it lands on, and forwarded cancels are taken only from peers, once.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::haproxy::HaProxy;
use common::wire::{query, read_answer, startup_packet, Answer};
use common::*;
use postgres::NoTls;

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const CANCEL_REQUEST: u32 = 80_877_102;
/// The pid bit a peer sets on a cancel it forwards.
const FORWARDED: u32 = 1 << 31;
/// A query that only a cancel ends in time.
const SLEEP: &str = "SELECT pg_sleep(30)";

/// A pooler standing for one host: it listens on `ip` only, trusts PROXY headers from
/// 127.0.0.1 (HAProxy), and has peer id `id` among `peers` (id, ip, port).
fn start_host(setup: PoolerSetup, ip: &str, id: u16, peers: &[(u16, &str, u16)]) -> Pooler {
    start_host_with(setup, ip, id, peers, "")
}

/// [`start_host`] with more settings.
fn start_host_with(
    setup: PoolerSetup,
    ip: &str,
    id: u16,
    peers: &[(u16, &str, u16)],
    extra: &str,
) -> Pooler {
    let pg = shared_pg();
    let peers: String = peers
        .iter()
        .map(|(id, ip, port)| format!("  {id}: {{ host: {ip}, port: {port} }}\n"))
        .collect();
    setup.start_with_args(
        &format!(
            "listen_addr: {ip}\n\
             listen_port: @PORT@\n\
             auth_type: trust\n\
             pool_mode: transaction\n\
             verbose: 1\n\
             proxy_protocol: required\n\
             proxy_trusted: [127.0.0.1/32]\n\
             admin_users: [{TRUST_USER}]\n\
             peer_id: {id}\n\
             {extra}\
             peers:\n{peers}\
             databases:\n  \
               app: {{ host: 127.0.0.1, port: {port}, dbname: {APP_DB} }}\n",
            port = pg.port()
        ),
        &["--workers", "2"],
    )
}

/// Three peered hosts and an HAProxy that sends each new connection to the next of them.
struct Cluster {
    hosts: Vec<Pooler>,
    /// HAProxy's port on 127.0.0.1.
    port: u16,
    _haproxy: HaProxy,
}

impl Cluster {
    fn start() -> Cluster {
        let setups: Vec<PoolerSetup> = HOSTS.iter().map(|_| PoolerSetup::new()).collect();
        let peers: Vec<(u16, &str, u16)> = (setups.iter().zip(HOSTS))
            .enumerate()
            .map(|(i, (s, ip))| (i as u16 + 1, ip, s.port()))
            .collect();
        let hosts: Vec<Pooler> = (setups.into_iter().zip(HOSTS))
            .enumerate()
            .map(|(i, (s, ip))| start_host(s, ip, i as u16 + 1, &peers))
            .collect();
        let port = free_port();
        let servers: String = (hosts.iter().zip(HOSTS))
            .enumerate()
            .map(|(i, (h, ip))| format!("    server p{i} {ip}:{} send-proxy-v2\n", h.port()))
            .collect();
        let haproxy = HaProxy::start(
            &format!(
                "listen poolers\n    bind 127.0.0.1:{port}\n    balance roundrobin\n{servers}"
            ),
            &[port],
        );
        Cluster {
            hosts,
            port,
            _haproxy: haproxy,
        }
    }

    fn logs(&self) -> String {
        (self.hosts.iter().zip(HOSTS))
            .map(|(h, ip)| format!("--- {ip} ---\n{}", pg::tail(&h.log(), 30)))
            .collect()
    }
}

/// Runs `SLEEP` on a new connection through HAProxy, cancels it with the protocol's
/// CancelRequest over another new connection (so, round-robin, usually another host),
/// and returns how long the query took to fail with 57014.
fn cancel_through_haproxy(c: &Cluster, round: usize) -> Duration {
    let mut client = postgres::Config::new()
        .host("127.0.0.1")
        .port(c.port)
        .user(TRUST_USER)
        .dbname("app")
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("round {round}: connect through haproxy: {e}\n{}", c.logs()));
    let token = client.cancel_token();
    let started = Instant::now();
    let query = thread::spawn(move || client.simple_query(SLEEP).map(|_| ()));
    thread::sleep(Duration::from_millis(300));
    token
        .cancel_query(NoTls)
        .unwrap_or_else(|e| panic!("round {round}: send the cancel: {e}"));
    let result = query.join().expect("query thread");
    let took = started.elapsed();
    let e = result.expect_err("the sleep must be canceled, not finish");
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("57014"),
        "round {round}: {e}\n{}",
        c.logs()
    );
    took
}

#[test]
fn a_cancel_reaches_its_query_whichever_host_it_lands_on() {
    let c = Cluster::start();
    // Two connections a round on three hosts: the cancel lands on the other hosts in
    // turn. Every third round a spare connection shifts the rotation by one, so cancels
    // that land on the query's own host are covered too.
    let mut worst = Duration::ZERO;
    for round in 0..9 {
        if round % 3 == 2 {
            drop(TcpStream::connect(("127.0.0.1", c.port)).expect("spare connection"));
        }
        worst = worst.max(cancel_through_haproxy(&c, round));
    }
    assert!(
        worst < Duration::from_secs(10),
        "slowest cancel took {worst:?}"
    );
    eprintln!("9 protocol cancels through HAProxy: the slowest canceled query ran {worst:?} (cancel sent at 300 ms)");
    // At least one host forwarded a cancel to a peer, and each was taken by its owner.
    let logs: String = c.hosts.iter().map(|h| h.log()).collect();
    assert!(
        logs.contains("cancel request forwarded to peer"),
        "no cancel was forwarded:\n{}",
        c.logs()
    );
    assert!(!logs.contains("check the peers sections"), "{}", c.logs());

    // psql's ^C sends the same CancelRequest through the same HAProxy.
    for round in 0..3 {
        let mut psql = psql_command(c.port, TRUST_USER, "", "app")
            .args(["-c", SLEEP])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start psql");
        thread::sleep(Duration::from_millis(1000));
        // SIGINT is psql's ^C: it sends a CancelRequest and keeps the session.
        unsafe { libc::kill(psql.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while psql.try_wait().expect("psql status").is_none() {
            assert!(
                Instant::now() < deadline,
                "psql round {round}: not canceled in 10 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
        let mut err = String::new();
        psql.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            err.contains("canceling statement due to user request"),
            "psql round {round}: {err}\n{}",
            c.logs()
        );
    }

    // SHOW PEERS lists the peers section, this host's own entry included.
    let mut admin = connect_as("10.9.9.9", HOSTS[1], c.hosts[1].port());
    login_to(&mut admin, "pgbouncer");
    admin.write_all(&query("SHOW PEERS")).unwrap();
    let peers = read_answer(&mut admin);
    assert_eq!(peers.values, ["1", "2", "3"], "{peers:?}");
}

// ---------------------------------------------------------------------------------------
// Raw connections, for the forwarded-cancel rules.

/// A TCP connection to `ip:port` from 127.0.0.1 that starts with a PROXY v1 header
/// naming `from` as the client (the pooler trusts 127.0.0.1's headers).
fn connect_as(from: &str, ip: &str, port: u16) -> TcpStream {
    let mut s = TcpStream::connect((ip, port)).expect("connect to the pooler");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = format!("PROXY TCP4 {from} {ip} 40000 {port}\r\n");
    s.write_all(header.as_bytes()).unwrap();
    s
}

/// Logs in as the trust user to `app` and returns the BackendKeyData (pid, secret).
fn login(s: &mut TcpStream) -> (u32, u32) {
    login_to(s, "app").expect("no BackendKeyData")
}

/// Logs in as the trust user to `db`; the BackendKeyData (pid, secret) if one came.
fn login_to(s: &mut TcpStream, db: &str) -> Option<(u32, u32)> {
    s.write_all(&startup_packet(&[("user", TRUST_USER), ("database", db)]))
        .unwrap();
    let mut key = None;
    loop {
        let m = common::wire::next_message(s).expect("login: the pooler hung up");
        match m.tag {
            b'K' => {
                let b = &m.body;
                key = Some((
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                ))
            }
            b'Z' => return key,
            b'E' => panic!("login failed: {:?}", common::wire::error_fields(&m.body)),
            _ => {}
        }
    }
}

fn cancel_packet(pid: u32, secret: u32) -> Vec<u8> {
    let mut p = 16u32.to_be_bytes().to_vec();
    p.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    p.extend_from_slice(&pid.to_be_bytes());
    p.extend_from_slice(&secret.to_be_bytes());
    p
}

/// Sends a CancelRequest as `from` and waits until the pooler hangs up on it.
fn send_cancel(from: &str, ip: &str, port: u16, pid: u32, secret: u32) {
    let mut s = connect_as(from, ip, port);
    s.write_all(&cancel_packet(pid, secret)).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

/// The sleep's answer, or None when nothing came within `wait`.
fn answer_within(s: &mut TcpStream, wait: Duration) -> Option<Answer> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut tag = [0u8; 1];
    match s.peek(&mut tag) {
        Ok(0) => panic!("the pooler hung up during the query"),
        Ok(_) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Some(read_answer(s))
        }
        Err(_) => None,
    }
}

#[test]
fn forwarded_cancels_are_taken_only_from_peers_and_never_forwarded_twice() {
    // Host A (peer 1 on .2) knows B as peer 2 on .3. B is misconfigured: it calls itself
    // peer 3, and its table sends peer 2's keys back to A. A loop would ping-pong.
    let (sa, sb) = (PoolerSetup::new(), PoolerSetup::new());
    let (pa, pb) = (sa.port(), sb.port());
    let (ma, mb) = (free_port(), free_port());
    let a = start_host_with(
        sa,
        HOSTS[0],
        1,
        &[(1, HOSTS[0], pa), (2, HOSTS[1], pb)],
        &format!("metrics_addr: {}:{ma}\n", HOSTS[0]),
    );
    let b = start_host_with(
        sb,
        HOSTS[1],
        3,
        &[(1, HOSTS[0], pa), (2, HOSTS[0], pa)],
        &format!("metrics_addr: {}:{mb}\n", HOSTS[1]),
    );
    let logs = || format!("--- A ---\n{}\n--- B ---\n{}", a.log(), b.log());

    let mut client = connect_as("10.9.9.9", HOSTS[0], pa);
    let (pid, secret) = login(&mut client);
    assert_eq!(pid >> 16, 1, "the pid names peer 1: {pid:#x}");
    client.write_all(&query(SLEEP)).unwrap();
    thread::sleep(Duration::from_millis(300));

    // A forwarded cancel from an address that is no peer's is ignored...
    send_cancel("10.9.9.9", HOSTS[0], pa, pid | FORWARDED, secret);
    assert!(
        answer_within(&mut client, Duration::from_millis(1500)).is_none(),
        "a forwarded cancel from a non-peer canceled the query\n{}",
        logs()
    );
    // ...and taken when the PROXY header says it comes from a peer's address.
    send_cancel(HOSTS[1], HOSTS[0], pa, pid | FORWARDED, secret);
    let answer = answer_within(&mut client, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a peer's forwarded cancel was not taken\n{}", logs()));
    let code = answer.error.as_ref().map(|f| f.code().to_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{answer:?}");

    // A key of peer 2 sent to A goes to B once; B sees it is not its own and drops it.
    send_cancel("10.9.9.9", HOSTS[0], pa, 2 << 16 | 7, secret);
    let dropped = wait_until(Duration::from_secs(10), || {
        b.log().contains("check the peers sections")
    });
    assert!(dropped, "B did not refuse the forwarded cancel\n{}", logs());
    thread::sleep(Duration::from_millis(500));
    let (la, lb) = (a.log(), b.log());
    assert_eq!(
        la.matches("cancel request forwarded to peer 2").count(),
        1,
        "A forwarded once\n{}",
        logs()
    );
    assert_eq!(
        lb.matches("cancel request forwarded to peer").count(),
        0,
        "{}",
        logs()
    );
    assert_eq!(
        lb.matches("check the peers sections").count(),
        1,
        "{}",
        logs()
    );
}
