//! Client authentication against the auth file, server login with every PostgreSQL method, cached server login failures, and secrets kept out of the log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::pg::quote_literal;
use common::wire::{message, read_next, Message};
use common::*;
use postgres::error::SqlState;

/// AuthenticationRequest codes.
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;

/// A client name that exists neither in any auth file nor in PostgreSQL.
const NOBODY: &str = "nobody";

/// A config with `auth_type`, `@DIR@/userlist.txt` as auth_file (when
/// `with_auth_file`), `extra` top-level lines and `databases` (YAML lines,
/// indented by two).
fn config(auth_type: &str, with_auth_file: bool, extra: &str, databases: &str) -> String {
    let auth_file = if with_auth_file {
        "auth_file: @DIR@/userlist.txt\n"
    } else {
        ""
    };
    format!(
        "listen_addr: 127.0.0.1\n\
         listen_port: @PORT@\n\
         auth_type: {auth_type}\n\
         {auth_file}\
         {extra}\n\
         databases:\n{databases}"
    )
}

/// `  name: { host, port, dbname: app, <more> }` for the shared server.
fn db_line(name: &str, more: &str) -> String {
    let sep = if more.is_empty() { "" } else { ", " };
    format!(
        "  {name}: {{ host: 127.0.0.1, port: {}, dbname: {APP_DB}{sep}{more} }}\n",
        shared_pg().port()
    )
}

/// Starts one worker (so every login shares one log and one set of pools)
/// with the `userlist` lines as the auth file.
fn start(yaml: &str, userlist: &[String], args: &[&str]) -> Pooler {
    let setup = PoolerSetup::new();
    let mut text = userlist.join("\n");
    text.push('\n');
    setup.write_file("userlist.txt", &text);
    let mut all = vec!["--workers", "1"];
    all.extend_from_slice(args);
    setup.start_with_args(yaml, &all)
}

/// `md5` + md5(password || user), computed by PostgreSQL itself.
fn md5_secret(password: &str, user: &str) -> String {
    let out = shared_pg().admin_sql(&format!(
        "SELECT 'md5' || md5({} || {})",
        quote_literal(password),
        quote_literal(user)
    ));
    let secret = out.trim().to_string();
    assert!(
        secret.len() == 35 && secret.starts_with("md5"),
        "bad md5 secret {secret:?}"
    );
    secret
}

fn login_error(result: Result<postgres::Client, postgres::Error>, who: &str) -> postgres::Error {
    match result {
        Ok(_) => panic!("{who}: the login succeeded"),
        Err(e) => e,
    }
}

/// Asserts that the login failed with SQLSTATE `code` and exactly `message`.
fn assert_login_fails(
    result: Result<postgres::Client, postgres::Error>,
    code: &SqlState,
    message: &str,
    who: &str,
) {
    let e = login_error(result, who);
    assert_eq!(e.code(), Some(code), "{who}: {e:?}");
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some(message),
        "{who}: {e:?}"
    );
}

fn auth_failed_message(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

fn current_user(c: &mut postgres::Client) -> String {
    c.simple_query("SELECT current_user")
        .expect("SELECT current_user")
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    common::wire::startup_packet(&[("user", user), ("database", db)])
}

/// What the pooler answers first to a raw startup packet: `Ok(auth request
/// code)` or `Err(SQLSTATE)` of an ErrorResponse.
fn first_auth_request(pooler: &Pooler, user: &str, db: &str) -> Result<u32, String> {
    let mut s = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect");
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(&startup_packet(user, db)).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head)
        .unwrap_or_else(|e| panic!("{user}: no answer to the startup packet: {e}"));
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    assert!((4..65536).contains(&len), "bad length {len}");
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    match head[0] {
        b'R' => Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]])),
        b'E' => Err(error_code(&body).expect("SQLSTATE field")),
        other => panic!("{user}: unexpected first message {:?}", other as char),
    }
}

/// The `C` (SQLSTATE) field of an ErrorResponse body.
fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        if kind == b'C' {
            return Some(String::from_utf8_lossy(&tail[..nul]).into_owned());
        }
        rest = &tail[nul + 1..];
    }
    None
}

// ---------------------------------------------------------------------------
// Client authentication: auth_type × kind of auth_file secret
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Md5,
    Scram,
}

const KINDS: [Kind; 3] = [Kind::Plain, Kind::Md5, Kind::Scram];

/// `app`'s auth-file secret of this kind.
fn app_secret(kind: Kind) -> String {
    match kind {
        Kind::Plain => APP_PASSWORD.to_string(),
        Kind::Md5 => md5_secret(APP_PASSWORD, APP_USER),
        Kind::Scram => {
            let s = shared_pg().role_secret(APP_USER);
            assert!(s.starts_with("SCRAM-SHA-256$"), "{s}");
            s
        }
    }
}

/// The first request a client gets under `auth_type`, for `app` holding a
/// `kind` secret, as PostgreSQL would send it.
fn expected_request(auth_type: &str, kind: Kind) -> u32 {
    match (auth_type, kind) {
        ("trust", _) => AUTH_OK,
        ("plain", _) => AUTH_CLEARTEXT,
        ("md5", Kind::Scram) => AUTH_SASL,
        ("md5", _) => AUTH_MD5,
        ("scram-sha-256", _) => AUTH_SASL,
        _ => unreachable!(),
    }
}

/// Whether the right password gets in (PostgreSQL: a SCRAM exchange cannot
/// be checked against an md5 hash).
fn right_password_works(auth_type: &str, kind: Kind) -> bool {
    !(auth_type == "scram-sha-256" && kind == Kind::Md5)
}

/// For each secret kind: a pooler whose auth file holds `app`'s secret of
/// that kind; the server login is a forced trust_user so only client
/// authentication is under test.
fn check_client_auth(auth_type: &str) {
    for kind in KINDS {
        let who = format!("auth_type {auth_type}, {kind:?} secret");
        let yaml = config(auth_type, true, "", &db_line("app", "user: trust_user"));
        let pooler = start(&yaml, &[userlist_entry(APP_USER, &app_secret(kind))], &[]);

        // The method offered, for a known and an unknown user: the same
        // except where the known user's secret decides.
        let offered = first_auth_request(&pooler, APP_USER, "app");
        assert_eq!(offered, Ok(expected_request(auth_type, kind)), "{who}");
        let unknown = first_auth_request(&pooler, NOBODY, "app");
        match auth_type {
            "trust" => assert_eq!(unknown, Err("28P01".into()), "{who}"),
            "md5" => assert_eq!(unknown, Ok(AUTH_MD5), "{who}"),
            _ => assert_eq!(unknown, Ok(expected_request(auth_type, kind)), "{who}"),
        }

        let right = pooler.try_connect(APP_USER, APP_PASSWORD, "app");
        if right_password_works(auth_type, kind) {
            let mut c = right.unwrap_or_else(|e| panic!("{who}: {e:?}\n{}", pooler.log()));
            assert_eq!(current_user(&mut c), TRUST_USER, "{who}");
        } else {
            assert_login_fails(
                right,
                &SqlState::INVALID_PASSWORD,
                &auth_failed_message(APP_USER),
                &who,
            );
        }

        let wrong = pooler.try_connect(APP_USER, "not-the-password", "app");
        if auth_type == "trust" {
            // trust asks for nothing, so any password (or none) works.
            let mut c = wrong.unwrap_or_else(|e| panic!("{who}: {e:?}"));
            assert_eq!(current_user(&mut c), TRUST_USER, "{who}");
            let mut c = pooler.connect(APP_USER, "", "app");
            assert_eq!(current_user(&mut c), TRUST_USER, "{who}");
        } else {
            assert_login_fails(
                wrong,
                &SqlState::INVALID_PASSWORD,
                &auth_failed_message(APP_USER),
                &format!("{who}, wrong password"),
            );
        }

        // An unknown user: the very same failure, nothing telling it apart.
        assert_login_fails(
            pooler.try_connect(NOBODY, APP_PASSWORD, "app"),
            &SqlState::INVALID_PASSWORD,
            &auth_failed_message(NOBODY),
            &format!("{who}, unknown user"),
        );
    }
}

#[test]
fn client_auth_trust() {
    check_client_auth("trust");
}

#[test]
fn client_auth_plain() {
    check_client_auth("plain");
}

#[test]
fn client_auth_md5() {
    check_client_auth("md5");
}

#[test]
fn client_auth_scram_sha_256() {
    check_client_auth("scram-sha-256");
}

// ---------------------------------------------------------------------------
// libpq
// ---------------------------------------------------------------------------

#[test]
fn psql_logs_in_with_scram_and_md5() {
    let pg = shared_pg();
    let yaml = config("md5", true, "", &db_line("app", ""));
    let pooler = start(
        &yaml,
        &[
            pg.userlist_line(APP_USER),
            userlist_entry(MD5_USER, &md5_secret(MD5_PASSWORD, MD5_USER)),
        ],
        &[],
    );
    // md5 auth_type: the SCRAM secret gets SCRAM, the md5 hash gets md5.
    assert_eq!(first_auth_request(&pooler, APP_USER, "app"), Ok(AUTH_SASL));
    assert_eq!(first_auth_request(&pooler, MD5_USER, "app"), Ok(AUTH_MD5));
    for (user, password) in [(APP_USER, APP_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
        let out = pooler.psql(user, password, "app", "SELECT current_user, 6 * 7;");
        assert_eq!(out.expect_success(), format!("{user}\t42\n"), "{out}");
        let out = pooler.psql(user, "wrong-password", "app", "SELECT 1;");
        assert!(!out.success(), "{user} got in with a wrong password: {out}");
        assert!(
            out.stderr.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{out}"
        );
    }
}

// ---------------------------------------------------------------------------
// Server login methods
// ---------------------------------------------------------------------------

#[test]
fn server_login_trust_needs_no_password() {
    let yaml = config("trust", false, "", &db_line("app", ""));
    let pooler = start(&yaml, &[], &[]);
    let mut c = pooler.connect(TRUST_USER, "", "app");
    assert_eq!(current_user(&mut c), TRUST_USER);
}

#[test]
fn server_login_with_plain_auth_file_entries() {
    let yaml = config("md5", true, "", &db_line("app", ""));
    let pooler = start(
        &yaml,
        &[
            userlist_entry(PLAIN_USER, PLAIN_PASSWORD),
            userlist_entry(MD5_USER, MD5_PASSWORD),
            userlist_entry(APP_USER, APP_PASSWORD),
        ],
        &[],
    );
    // pg_hba: plain_user cleartext, md5_user md5, app SCRAM.
    for (user, password) in [
        (PLAIN_USER, PLAIN_PASSWORD),
        (MD5_USER, MD5_PASSWORD),
        (APP_USER, APP_PASSWORD),
    ] {
        let mut c = pooler.connect(user, password, "app");
        assert_eq!(current_user(&mut c), user);
    }
}

#[test]
fn server_login_with_the_database_password_and_a_forced_user() {
    let dbs = [
        db_line(
            "as_plain",
            &format!("user: {PLAIN_USER}, password: {PLAIN_PASSWORD}"),
        ),
        db_line(
            "as_md5",
            &format!("user: {MD5_USER}, password: {MD5_PASSWORD}"),
        ),
        db_line(
            "as_app",
            &format!("user: {APP_USER}, password: {APP_PASSWORD}"),
        ),
    ]
    .concat();
    let yaml = config("md5", true, "", &dbs);
    // The client is not a PostgreSQL role at all, and the auth file knows no
    // server user: the password can only come from the database entry.
    let pooler = start(&yaml, &[userlist_entry("client_a", "clientpw")], &[]);
    for (db, user) in [
        ("as_plain", PLAIN_USER),
        ("as_md5", MD5_USER),
        ("as_app", APP_USER),
    ] {
        let mut c = pooler.connect("client_a", "clientpw", db);
        assert_eq!(current_user(&mut c), user, "{db}");
    }
}

#[test]
fn server_login_md5_with_an_md5_hash_entry() {
    let hash = md5_secret(MD5_PASSWORD, MD5_USER);
    assert_eq!(
        hash,
        shared_pg().role_secret(MD5_USER),
        "PostgreSQL stores md5(password || user)"
    );
    let yaml = config("md5", true, "", &db_line("app", ""));
    let pooler = start(&yaml, &[userlist_entry(MD5_USER, &hash)], &[]);
    // Two clients at once in session mode: two server logins from the hash.
    let mut a = pooler.connect(MD5_USER, MD5_PASSWORD, "app");
    let mut b = pooler.connect(MD5_USER, MD5_PASSWORD, "app");
    assert_eq!(current_user(&mut a), MD5_USER);
    assert_eq!(current_user(&mut b), MD5_USER);
}

#[test]
fn server_login_scram_pass_through() {
    let pg = shared_pg();
    let yaml = config("scram-sha-256", true, "", &db_line("app", ""));
    // The auth file holds only the SCRAM secret: the server login can only
    // use the keys the client proved in its own SCRAM exchange.
    let pooler = start(&yaml, &[pg.userlist_line(APP_USER)], &[]);
    let mut first = pooler.connect(APP_USER, APP_PASSWORD, "app");
    assert_eq!(current_user(&mut first), APP_USER);
    // A second client at the same time needs a second server login.
    let mut second = pooler.connect(APP_USER, APP_PASSWORD, "app");
    assert_eq!(current_user(&mut second), APP_USER);
    let pids: Vec<String> = [&mut first, &mut second]
        .into_iter()
        .map(|c| {
            c.simple_query("SELECT pg_backend_pid()")
                .unwrap()
                .iter()
                .find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    assert_ne!(
        pids[0], pids[1],
        "both clients on one server in session mode"
    );
}

// ---------------------------------------------------------------------------
// Failing server login
// ---------------------------------------------------------------------------

#[test]
fn failing_server_login_is_relayed_then_cached_for_server_login_retry() {
    let dbs = db_line(
        "badpw",
        &format!("user: {APP_USER}, password: wrong-server-pw"),
    );
    let yaml = config("trust", false, "server_login_retry: 2", &dbs);
    let pooler = start(&yaml, &[], &[]);
    let server_error = auth_failed_message(APP_USER);

    // The first client gets PostgreSQL's own error.
    assert_login_fails(
        pooler.try_connect(TRUST_USER, "", "badpw"),
        &SqlState::INVALID_PASSWORD,
        &server_error,
        "first login",
    );
    let failed_at = Instant::now();
    assert!(
        pooler.wait_for_log("server login failed", secs(5)),
        "the pooler did not log the server login failure:\n{}",
        pooler.log()
    );

    // Right after: the cached error, without another server login.
    let cached =
        format!("server login has been failing, cached error: {server_error} (server_login_retry)");
    assert_login_fails(
        pooler.try_connect(TRUST_USER, "", "badpw"),
        &SqlState::CANNOT_CONNECT_NOW,
        &cached,
        "second login",
    );

    // Once server_login_retry has passed, a new server login is tried and
    // its real error comes back.
    let mut last = None;
    let recovered = wait_until(secs(6), || {
        let e = login_error(pooler.try_connect(TRUST_USER, "", "badpw"), "retry");
        let done = e.code() != Some(&SqlState::CANNOT_CONNECT_NOW);
        last = Some(e);
        done
    });
    let waited = failed_at.elapsed();
    let last = last.unwrap();
    assert!(
        recovered,
        "still the cached error after {waited:?}: {last:?}"
    );
    assert!(
        waited >= Duration::from_millis(1800),
        "the cached error ended after only {waited:?}"
    );
    assert_eq!(last.code(), Some(&SqlState::INVALID_PASSWORD), "{last:?}");
    assert_eq!(
        last.as_db_error().map(|d| d.message()),
        Some(server_error.as_str())
    );
    // And that fresh failure is cached again.
    assert_login_fails(
        pooler.try_connect(TRUST_USER, "", "badpw"),
        &SqlState::CANNOT_CONNECT_NOW,
        &cached,
        "after the retry",
    );
}

// ---------------------------------------------------------------------------
// Secrets in the log
// ---------------------------------------------------------------------------

/// The parts of `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
/// that must stay secret.
fn scram_parts(secret: &str) -> Vec<String> {
    let rest = secret
        .strip_prefix("SCRAM-SHA-256$")
        .expect("a SCRAM secret");
    let (iter_salt, keys) = rest.split_once('$').expect("$ before the keys");
    let (_, salt) = iter_salt.split_once(':').expect("iterations:salt");
    let (stored, server) = keys.split_once(':').expect("StoredKey:ServerKey");
    vec![salt.into(), stored.into(), server.into()]
}

#[test]
fn secrets_never_reach_the_log() {
    let pg = shared_pg();
    let app_scram = pg.role_secret(APP_USER);
    let md5_hash = md5_secret(MD5_PASSWORD, MD5_USER);
    let wrong = ["wrong-secret-one", "wrong-secret-two"];
    let mut needles: Vec<String> = vec![
        APP_PASSWORD.into(),
        PLAIN_PASSWORD.into(),
        MD5_PASSWORD.into(),
        "clientpw".into(),
        md5_hash[3..].into(),
        md5_secret(APP_PASSWORD, APP_USER)[3..].into(),
        md5_secret(PLAIN_PASSWORD, PLAIN_USER)[3..].into(),
    ];
    needles.extend(scram_parts(&app_scram));
    needles.extend(wrong.iter().map(|w| w.to_string()));

    let dbs = [
        db_line("app", ""),
        db_line(
            "forced_app",
            &format!("user: {APP_USER}, password: {APP_PASSWORD}"),
        ),
    ]
    .concat();
    // Each pooler: its auth_type, its auth file, and who logs in where.
    let md5_file = vec![
        userlist_entry(APP_USER, &app_scram),
        userlist_entry(PLAIN_USER, PLAIN_PASSWORD),
        userlist_entry(MD5_USER, &md5_hash),
        userlist_entry("client_a", "clientpw"),
    ];
    let plain_file = vec![
        userlist_entry(APP_USER, APP_PASSWORD),
        userlist_entry(PLAIN_USER, PLAIN_PASSWORD),
        userlist_entry(MD5_USER, MD5_PASSWORD),
        userlist_entry("client_a", "clientpw"),
    ];
    let logins: &[(&str, &str, &str)] = &[
        (APP_USER, APP_PASSWORD, "app"),
        (PLAIN_USER, PLAIN_PASSWORD, "app"),
        (MD5_USER, MD5_PASSWORD, "app"),
        ("client_a", "clientpw", "forced_app"),
    ];
    for (auth_type, file) in [
        ("md5", &md5_file),
        ("plain", &plain_file),
        ("scram-sha-256", &plain_file),
    ] {
        let pooler = start(&config(auth_type, true, "", &dbs), file, &["-v"]);
        // Two rounds, the first still connected during the second, so each
        // round needs its own server logins.
        let mut open = Vec::new();
        for _round in 0..2 {
            for &(user, password, db) in logins {
                let mut c = pooler
                    .try_connect(user, password, db)
                    .unwrap_or_else(|e| panic!("{auth_type}: {user}@{db}: {e:?}"));
                assert!(!current_user(&mut c).is_empty());
                open.push(c);
            }
        }
        drop(open);
        for (user, w) in [(APP_USER, wrong[0]), (PLAIN_USER, wrong[1])] {
            login_error(pooler.try_connect(user, w, "app"), auth_type);
        }
        let log = pooler.log();
        assert!(
            log.contains(" DEBUG "),
            "{auth_type}: -v did not turn on debug logging:\n{log}"
        );
        assert!(
            log.contains("login"),
            "{auth_type}: no logins logged:\n{log}"
        );
        for needle in &needles {
            assert!(
                !log.contains(needle.as_str()),
                "{auth_type}: the log contains the secret {needle:?}:\n{log}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// SCRAM salts do not tell who exists (issue 12, item 4)
// ---------------------------------------------------------------------------

/// What one SCRAM login shows before any password: the server-first-message's
/// salt (base64) and iteration count, and the client port (to find its worker).
struct Offer {
    salt: String,
    iterations: String,
    port: u16,
}

/// Starts a SCRAM exchange as `user`, reads the server-first-message, and hangs up.
fn scram_offer(pooler: &Pooler, user: &str) -> Offer {
    let mut s = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect");
    s.set_read_timeout(Some(secs(10))).unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(&startup_packet(user, "app")).unwrap();
    let Message { tag, body } = read_next(&mut s).expect("the first auth request");
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &AUTH_SASL.to_be_bytes()[..]),
        "{user}: not a SASL request"
    );
    let client_first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut init = b"SCRAM-SHA-256\0".to_vec();
    init.extend_from_slice(&(client_first.len() as u32).to_be_bytes());
    init.extend_from_slice(client_first);
    s.write_all(&message(b'p', &init)).unwrap();
    let Message { tag, body } = read_next(&mut s).expect("server-first-message");
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11u32.to_be_bytes()[..]),
        "{user}"
    );
    let text = String::from_utf8(body[4..].to_vec()).expect("utf-8 server-first");
    let attr = |name: &str| {
        text.split(',')
            .find_map(|a| a.strip_prefix(name))
            .unwrap_or_else(|| panic!("{user}: no {name} in {text:?}"))
            .to_string()
    };
    Offer {
        salt: attr("s="),
        iterations: attr("i="),
        port,
    }
}

/// Bytes that standard padded base64 `b64` decodes to.
fn b64_len(b64: &str) -> usize {
    b64.len() / 4 * 3 - b64.bytes().rev().take_while(|&b| b == b'=').count()
}

/// The worker that logged the close of the client on local port `port`.
fn worker_of(log: &str, port: u16) -> Option<String> {
    let needle = format!("@127.0.0.1:{port}: closing because");
    log.lines()
        .filter(|l| l.contains(&needle))
        .find_map(|l| l.rsplit("worker=").next().map(|w| w.trim().to_string()))
}

#[test]
fn scram_salt_is_one_per_user_in_every_worker_known_or_not() {
    const LOGINS: usize = 40;
    let yaml = config("scram-sha-256", true, "", &db_line("app", ""));
    let setup = PoolerSetup::new();
    let users = [
        // A plaintext password: the pooler derives the SCRAM secret, and so the salt.
        userlist_entry(APP_USER, APP_PASSWORD),
        // An md5 hash under scram-sha-256: a mock exchange, as for an unknown user.
        userlist_entry(MD5_USER, &md5_secret(MD5_PASSWORD, MD5_USER)),
    ];
    setup.write_file("userlist.txt", &format!("{}\n", users.join("\n")));
    let pooler = setup.start_with_args(&yaml, &["--workers", "2"]);
    pooler.wait_for_children(2, secs(5));

    let mut offers: Vec<(&str, Offer)> = Vec::new();
    for _ in 0..LOGINS {
        for user in [APP_USER, MD5_USER, NOBODY] {
            offers.push((user, scram_offer(&pooler, user)));
        }
    }
    // Every login landed somewhere, and the kernel spread them over both workers.
    let mut log = String::new();
    let all_logged = wait_until(secs(10), || {
        log = pooler.log();
        offers
            .iter()
            .all(|(_, o)| worker_of(&log, o.port).is_some())
    });
    assert!(all_logged, "not every close was logged:\n{log}");
    for user in [APP_USER, MD5_USER, NOBODY] {
        let mine = offers.iter().filter(|(u, _)| *u == user);
        let workers: std::collections::BTreeSet<String> = mine
            .clone()
            .filter_map(|(_, o)| worker_of(&log, o.port))
            .collect();
        assert_eq!(
            workers.len(),
            2,
            "{user}: all logins in worker(s) {workers:?}"
        );
        let salts: std::collections::BTreeSet<&str> =
            mine.clone().map(|(_, o)| o.salt.as_str()).collect();
        let counts: std::collections::BTreeSet<&str> =
            mine.map(|(_, o)| o.iterations.as_str()).collect();
        assert_eq!(
            salts.len(),
            1,
            "{user}: {} salts over {LOGINS} logins",
            salts.len()
        );
        assert_eq!(counts.len(), 1, "{user}: iteration counts {counts:?}");
    }
    // Known or not, the offer has the same shape: salt length and iteration count.
    let first = |user: &str| &offers.iter().find(|(u, _)| *u == user).unwrap().1;
    let (known, md5, unknown) = (first(APP_USER), first(MD5_USER), first(NOBODY));
    for other in [md5, unknown] {
        assert_eq!(b64_len(&other.salt), b64_len(&known.salt));
        assert_eq!(other.salt.len(), known.salt.len());
        assert_eq!(other.iterations, known.iterations);
    }
    assert_eq!(b64_len(&known.salt), 16);
    assert_eq!(known.iterations, "4096");
    assert_ne!(known.salt, unknown.salt, "every user has a salt of its own");

    // A reload keeps every salt (the key is made once, at start).
    pooler.reload();
    assert!(pooler.wait_for_log("configuration reloaded", secs(5)));
    for (user, before) in [(APP_USER, known), (MD5_USER, md5), (NOBODY, unknown)] {
        assert_eq!(
            scram_offer(&pooler, user).salt,
            before.salt,
            "{user} after reload"
        );
    }
    // And the derived secret still logs the right password in.
    let mut c = pooler.connect(APP_USER, APP_PASSWORD, "app");
    assert_eq!(current_user(&mut c), APP_USER);
}

// ---------------------------------------------------------------------------
// Cleartext logins of SCRAM users (issue 12: plain with a SCRAM secret)
// ---------------------------------------------------------------------------

#[test]
fn cleartext_login_of_a_scram_user_works_and_caches_no_failure() {
    let pg = shared_pg();
    // auth_type plain, the auth file holding PostgreSQL's own SCRAM secret: the pooler
    // checks the password against the secret, and the ClientKey that check yields logs
    // it in to PostgreSQL (no SCRAM login came first to leave one).
    let yaml = config("plain", true, "", &db_line("app", ""));
    let pooler = start(&yaml, &[pg.userlist_line(APP_USER)], &[]);
    assert_eq!(
        first_auth_request(&pooler, APP_USER, "app"),
        Ok(AUTH_CLEARTEXT)
    );
    assert_login_fails(
        pooler.try_connect(APP_USER, "not-the-password", "app"),
        &SqlState::INVALID_PASSWORD,
        &auth_failed_message(APP_USER),
        "plain, wrong password",
    );
    let mut first = pooler
        .try_connect(APP_USER, APP_PASSWORD, "app")
        .unwrap_or_else(|e| panic!("plain, right password: {e:?}\n{}", pooler.log()));
    // At once, a second client needs a second server login.
    let mut second = pooler.connect(APP_USER, APP_PASSWORD, "app");
    assert_eq!(current_user(&mut first), APP_USER);
    assert_eq!(current_user(&mut second), APP_USER);
    drop((first, second));

    // hba: a cleartext login over the Unix socket and SCRAM over TCP, same pool. The
    // cleartext one, first, must neither fail nor leave a cached failure for the other.
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", pg.userlist_line(APP_USER)));
    setup.write_file(
        "hba.conf",
        "local all all password\nhost all all 127.0.0.1/32 scram-sha-256\n",
    );
    let extra = "auth_hba_file: @DIR@/hba.conf\nunix_socket_dir: @DIR@\n";
    let pooler = setup.start_with_args(
        &config("hba", true, extra, &db_line("app", "")),
        &["--workers", "1"],
    );
    let unix = |password: &str| {
        let mut c = postgres::Config::new();
        c.host_path(pooler.dir())
            .port(pooler.port())
            .user(APP_USER)
            .dbname("app")
            .password(password)
            .connect_timeout(secs(10));
        c.connect(postgres::NoTls)
    };
    assert_login_fails(
        unix("not-the-password"),
        &SqlState::INVALID_PASSWORD,
        &auth_failed_message(APP_USER),
        "hba password, wrong password",
    );
    let mut cleartext =
        unix(APP_PASSWORD).unwrap_or_else(|e| panic!("hba password: {e:?}\n{}", pooler.log()));
    let mut scram = pooler
        .try_connect(APP_USER, APP_PASSWORD, "app")
        .unwrap_or_else(|e| panic!("hba scram after cleartext: {e:?}\n{}", pooler.log()));
    assert_eq!(current_user(&mut cleartext), APP_USER);
    assert_eq!(current_user(&mut scram), APP_USER);
    assert!(
        !pooler.log().contains("server login failed"),
        "{}",
        pooler.log()
    );
}

/// A trust login of a user whose auth-file entry is a SCRAM secret cannot log the pooler
/// in to PostgreSQL until a SCRAM login brings the user's key. That failure is the
/// pooler's, not PostgreSQL's: it must not be cached to refuse the SCRAM login that would
/// fix it, and afterwards trust logins work.
#[test]
fn a_trust_login_without_a_key_caches_no_failure() {
    let pg = shared_pg();
    let setup = PoolerSetup::new();
    setup.write_file("userlist.txt", &format!("{}\n", pg.userlist_line(APP_USER)));
    setup.write_file(
        "hba.conf",
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    );
    let extra = "auth_hba_file: @DIR@/hba.conf\nunix_socket_dir: @DIR@\nserver_login_retry: 30\n";
    let pooler = setup.start_with_args(
        &config("hba", true, extra, &db_line("app", "")),
        &["--workers", "1"],
    );
    let unix = || {
        let mut c = postgres::Config::new();
        c.host_path(pooler.dir())
            .port(pooler.port())
            .user(APP_USER)
            .dbname("app")
            .connect_timeout(secs(10));
        c.connect(postgres::NoTls)
    };
    let Err(err) = unix() else {
        panic!("no key yet: the server login cannot succeed")
    };
    assert!(
        format!("{err:?}").contains("no password"),
        "{err:?}\n{}",
        pooler.log()
    );
    let mut scram = pooler
        .try_connect(APP_USER, APP_PASSWORD, "app")
        .unwrap_or_else(|e| panic!("SCRAM after a keyless trust login: {e:?}\n{}", pooler.log()));
    assert_eq!(current_user(&mut scram), APP_USER);
    let mut trust = unix().unwrap_or_else(|e| panic!("trust with the key known: {e:?}"));
    assert_eq!(current_user(&mut trust), APP_USER);
}

// ---------------------------------------------------------------------------
// Log injection (issue 12, item 8)
// ---------------------------------------------------------------------------

/// Sends a startup packet with `params`, answers a cleartext request with
/// `password`, and reads until the pooler closes (or greets) the connection.
fn raw_attempt(pooler: &Pooler, params: &[(&str, &str)], password: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", pooler.port())).expect("connect");
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(&common::wire::startup_packet(params)).unwrap();
    while let Ok(Message { tag, body }) = read_next(&mut s) {
        match tag {
            b'R' if body[..4] == AUTH_CLEARTEXT.to_be_bytes() => {
                let mut pw = password.as_bytes().to_vec();
                pw.push(0);
                s.write_all(&message(b'p', &pw)).unwrap();
            }
            b'E' | b'Z' => return,
            _ => {}
        }
    }
}

#[test]
fn client_supplied_text_cannot_forge_log_lines() {
    let yaml = config("plain", true, "admin_users: [app]\n", &db_line("app", ""));
    let pooler = start(&yaml, &[userlist_entry(APP_USER, APP_PASSWORD)], &["-v"]);
    // Before any authentication: names in the startup packet.
    raw_attempt(
        &pooler,
        &[("user", "evil\nFAKE LINE 1"), ("database", "x\ry\\z")],
        "",
    );
    raw_attempt(
        &pooler,
        &[("user", "evil\nFAKE LINE 2"), ("database", "app")],
        "wrong",
    );
    raw_attempt(
        &pooler,
        &[
            ("user", APP_USER),
            ("database", "app"),
            ("FAKE\nLINE 3", "v"),
        ],
        "",
    );
    // The console quotes queries and database names in its errors.
    let mut console = pooler.connect(APP_USER, APP_PASSWORD, "pgbouncer");
    assert!(console.simple_query("FOO\nFAKE LINE 4").is_err());
    assert!(console.simple_query("DISABLE \"x\nFAKE LINE 5\"").is_err());
    drop(console);

    let escaped = [
        r"evil\nFAKE LINE 1",
        r"x\ry\\z",
        r"evil\nFAKE LINE 2",
        r"FAKE\nLINE 3",
        r"FOO\nFAKE LINE 4",
        r"x\nFAKE LINE 5",
    ];
    let mut log = String::new();
    let all = wait_until(secs(5), || {
        log = pooler.log();
        escaped.iter().all(|e| log.contains(e))
    });
    let missing: Vec<&&str> = escaped.iter().filter(|e| !log.contains(**e)).collect();
    assert!(all, "escaped forms {missing:?} not in the log:\n{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("FAKE") && !line.starts_with("LINE"),
            "a forged log line: {line:?}\n{log}"
        );
    }
    assert!(
        !log.contains('\r'),
        "a raw carriage return in the log:\n{log:?}"
    );
}

// ---------------------------------------------------------------------------
// Unknown databases after authentication (issue 15, item 1)
// ---------------------------------------------------------------------------

/// PgBouncer checks the password before it says "no such database", so a client that
/// cannot log in learns nothing about which databases exist: the method offered and a
/// failed login are the same for an unknown database as for a known one, for a known
/// and an unknown user alike. Only a client that authenticates hears the database is
/// unknown, with PgBouncer's words and SQLSTATE (08P01), and no AuthenticationOk first.
#[test]
fn unknown_database_is_told_only_after_authentication() {
    const NO_DB: &str = "nosuchdb";
    let no_db_message = format!("no such database: {NO_DB}");
    for auth_type in ["trust", "plain", "md5", "scram-sha-256"] {
        let yaml = config(auth_type, true, "", &db_line("app", "user: trust_user"));
        let pooler = start(&yaml, &[userlist_entry(APP_USER, APP_PASSWORD)], &[]);
        // Under trust a known user is authenticated at once, so hears it straight away.
        let users: &[&str] = if auth_type == "trust" {
            &[NOBODY]
        } else {
            &[APP_USER, NOBODY]
        };
        for &user in users {
            assert_eq!(
                first_auth_request(&pooler, user, NO_DB),
                first_auth_request(&pooler, user, "app"),
                "{auth_type}, {user}: the first answer tells the databases apart"
            );
        }
        if auth_type != "trust" {
            for db in ["app", NO_DB] {
                assert_login_fails(
                    pooler.try_connect(APP_USER, "not-the-password", db),
                    &SqlState::INVALID_PASSWORD,
                    &auth_failed_message(APP_USER),
                    &format!("{auth_type}, wrong password to {db}"),
                );
            }
        }
        for db in ["app", NO_DB] {
            assert_login_fails(
                pooler.try_connect(NOBODY, APP_PASSWORD, db),
                &SqlState::INVALID_PASSWORD,
                &auth_failed_message(NOBODY),
                &format!("{auth_type}, unknown user to {db}"),
            );
        }
        assert_login_fails(
            pooler.try_connect(APP_USER, APP_PASSWORD, NO_DB),
            &SqlState::PROTOCOL_VIOLATION,
            &no_db_message,
            &format!("{auth_type}, right password to {NO_DB}"),
        );
        let mut c = pooler.connect(APP_USER, APP_PASSWORD, "app");
        assert_eq!(current_user(&mut c), TRUST_USER, "{auth_type}");
    }

    // On the wire (cleartext, to read it simply): the password request, then the error
    // and the close; no AuthenticationOk for a login that cannot go on.
    let yaml = config("plain", true, "", &db_line("app", ""));
    let pooler = start(&yaml, &[userlist_entry(APP_USER, APP_PASSWORD)], &[]);
    let mut s = common::wire::connect(pooler.port());
    s.write_all(&startup_packet(APP_USER, NO_DB)).unwrap();
    let Message { tag, body } = read_next(&mut s).expect("the password request");
    assert_eq!((tag, &body[..4]), (b'R', &AUTH_CLEARTEXT.to_be_bytes()[..]));
    s.write_all(&message(b'p', &common::wire::cstr(APP_PASSWORD)))
        .unwrap();
    let fields = common::wire::read_error(&mut s);
    assert_eq!(
        (fields.severity(), fields.code(), fields.message()),
        ("FATAL", "08P01", no_db_message.as_str()),
        "{:?}",
        fields.0
    );
    common::wire::assert_closed(&mut s);
}
