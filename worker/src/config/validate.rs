//! Rules a parsed config must satisfy: ranges and combinations of settings, each naming its key.

use std::time::Duration;

use super::database::{Database, UserSettings};
use super::de::{truncate, MAX_MODE};
use super::{AuthType, Config, ConfigError, ProxyProtocol, Workers, ADMIN_DB_NAMES};

/// Largest pool size: PostgreSQL's own ceiling on `max_connections` (MAX_BACKENDS).
pub const MAX_POOL_SIZE: u32 = 262_143;
/// Smallest `proxy_max_header`: a v2 header with AF_UNIX addresses (16 + 216 bytes), so every
/// header without TLVs fits (a v1 line is at most 107 bytes).
pub const MIN_PROXY_HEADER: u32 = 232;
/// Largest `proxy_max_header`: the biggest v2 header there can be (16 + 65535 bytes).
pub const MAX_PROXY_HEADER: u32 = 16 + 65_535;
/// `max_packet_size` bounds: every startup packet must fit; PostgreSQL lengths are Int32.
pub const MIN_PACKET_SIZE: u32 = 4096;
pub const MAX_PACKET_SIZE: u32 = i32::MAX as u32;
/// `pkt_buf` bounds, in bytes.
pub const MIN_PKT_BUF: u32 = 4096;
pub const MAX_PKT_BUF: u32 = 1024 * 1024;
/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32767 s and TCP_KEEPCNT at 127.
pub const MAX_TCP_KEEP_SECS: u64 = 32_767;
pub const MAX_TCP_KEEPCNT: u32 = 127;
/// TCP_USER_TIMEOUT is an int of milliseconds.
pub const MAX_TCP_USER_TIMEOUT_MS: u128 = i32::MAX as u128;
/// Highest `verbose` level that means anything.
pub const MAX_VERBOSE: u8 = 3;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_UNIX_PATH: usize = 107;

type Check = Result<(), ConfigError>;

fn ensure(ok: bool, key: &str, message: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, message()))
    }
}

fn in_range(key: &str, value: u32, min: u32, max: u32) -> Check {
    ensure((min..=max).contains(&value), key, || {
        format!("must be from {min} to {max}, got {value}")
    })
}

/// Strings that go into C APIs or the wire protocol as NUL-terminated strings.
fn no_nul(key: &str, value: &str) -> Check {
    ensure(!value.contains('\0'), key, || {
        "must not contain a NUL character".to_owned()
    })
}

fn no_nul_opt(key: &str, value: Option<&str>) -> Check {
    value.map_or(Ok(()), |v| no_nul(key, v))
}

fn list(key: &str, items: &[String]) -> Check {
    for (i, item) in items.iter().enumerate() {
        let key = format!("{key}[{i}]");
        ensure(!item.trim().is_empty(), &key, || {
            "must not be empty".to_owned()
        })?;
        no_nul(&key, item)?;
    }
    Ok(())
}

fn positive(key: &str, d: Duration) -> Check {
    ensure(!d.is_zero(), key, || "must be greater than 0".to_owned())
}

fn whole_seconds(key: &str, d: Duration, max: u64) -> Check {
    ensure(d.subsec_nanos() == 0, key, || {
        "must be a whole number of seconds".to_owned()
    })?;
    ensure(d.as_secs() <= max, key, || {
        format!("must be at most {max} seconds")
    })
}

pub(super) fn validate(c: &Config) -> Check {
    // Single values first, rules that combine settings last.
    listeners(c)?;
    proxy(c)?;
    pools(c)?;
    server_and_client(c)?;
    network(c)?;
    for (name, db) in &c.databases {
        database(name, db)?;
    }
    for (name, user) in &c.users {
        user_settings(name, user)?;
    }
    peers(c)?;
    auth(c)
}

/// `peer_id` and `peers`: ids that fit the cancel key, and somewhere to send each cancel.
fn peers(c: &Config) -> Check {
    in_range("peer_id", c.peer_id.into(), 0, super::MAX_PEER_ID.into())?;
    for (&id, peer) in &c.peers {
        let here = format!("peers.{id}");
        ensure((1..=super::MAX_PEER_ID).contains(&id), &here, || {
            format!("a peer id must be from 1 to {}", super::MAX_PEER_ID)
        })?;
        ensure(!peer.host.is_empty(), &format!("{here}.host"), || {
            "must not be empty: where does this peer take cancel requests?".to_owned()
        })?;
        no_nul(&format!("{here}.host"), &peer.host)?;
        if let Some(n) = peer.pool_size {
            in_range(&format!("{here}.pool_size"), n, 1, MAX_POOL_SIZE)?;
        }
    }
    // peer_id 0 with peers listed is PgBouncer's "peering disabled", not an error.
    Ok(())
}

/// A config file must let someone log in: with no database and no console user every login
/// fails with "no such database". That is what an empty file, or one cut short before
/// `databases:`, parses to.
pub(super) fn serves_someone(c: &Config) -> Check {
    ensure(
        !c.databases.is_empty() || !c.admin_users.is_empty() || !c.stats_users.is_empty(),
        "databases",
        || {
            "no databases and no admin_users or stats_users: nobody could log in \
             (is the file empty or cut short?)"
                .to_owned()
        },
    )
}

fn listeners(c: &Config) -> Check {
    for (i, addr) in c.listen_addr.iter().enumerate() {
        let key = format!("listen_addr[{i}]");
        ensure(!addr.is_empty(), &key, || "must not be empty".to_owned())?;
        ensure(
            !addr.contains(|ch: char| ch == ',' || ch.is_whitespace() || ch == '\0'),
            &key,
            || {
                format!(
                    "`{}` is not one address: list addresses separately",
                    truncate(addr, 64)
                )
            },
        )?;
        ensure(addr.len() <= 255, &key, || {
            "is longer than 255 bytes".to_owned()
        })?;
    }
    ensure(
        !c.listen_addr.is_empty() || c.unix_socket_dir.is_some(),
        "listen_addr",
        || "no listener: set listen_addr, unix_socket_dir or both".to_owned(),
    )?;
    ensure(c.listen_port != 0, "listen_port", || {
        "must be from 1 to 65535, got 0".to_owned()
    })?;
    if let Some(dir) = &c.unix_socket_dir {
        no_nul("unix_socket_dir", dir)?;
        ensure(dir.starts_with('/'), "unix_socket_dir", || {
            "must be an absolute path".to_owned()
        })?;
        let socket = format!("{}/.s.PGSQL.{}", dir.trim_end_matches('/'), c.listen_port);
        ensure(socket.len() <= MAX_UNIX_PATH, "unix_socket_dir", || {
            format!("the socket path {socket} is longer than {MAX_UNIX_PATH} bytes")
        })?;
    }
    ensure(c.unix_socket_mode <= MAX_MODE, "unix_socket_mode", || {
        format!("must be from 0 to 0777, got 0{:o}", c.unix_socket_mode)
    })?;
    if let Workers::Count(n) = c.workers {
        ensure((1..=Workers::MAX).contains(&n), "workers", || {
            format!("must be `auto` or from 1 to {}, got {n}", Workers::MAX)
        })?;
    }
    no_nul_opt("user", c.user.as_deref())?;
    no_nul_opt("pidfile", c.pidfile.as_deref())?;
    no_nul_opt("logfile", c.logfile.as_deref())?;
    if let Some(addr) = c.metrics_addr {
        ensure(addr.port() != 0, "metrics_addr", || {
            "needs a port other than 0".to_owned()
        })?;
    }
    Ok(())
}

fn proxy(c: &Config) -> Check {
    ensure(
        c.proxy_protocol == ProxyProtocol::Off || !c.proxy_trusted.is_empty(),
        "proxy_trusted",
        || {
            format!(
            "must list the proxies' networks when proxy_protocol is {} (0.0.0.0/0 and ::/0 trust everyone)",
            c.proxy_protocol
        )
        },
    )?;
    positive("proxy_header_timeout", c.proxy_header_timeout)?;
    in_range(
        "proxy_max_header",
        c.proxy_max_header,
        MIN_PROXY_HEADER,
        MAX_PROXY_HEADER,
    )
}

fn pools(c: &Config) -> Check {
    in_range("default_pool_size", c.default_pool_size, 1, MAX_POOL_SIZE)?;
    in_range("min_pool_size", c.min_pool_size, 0, MAX_POOL_SIZE)?;
    in_range("reserve_pool_size", c.reserve_pool_size, 0, MAX_POOL_SIZE)?;
    in_range("max_client_conn", c.max_client_conn, 1, u32::MAX)
}

fn auth(c: &Config) -> Check {
    no_nul_opt("auth_file", c.auth_file.as_deref())?;
    no_nul_opt("auth_hba_file", c.auth_hba_file.as_deref())?;
    no_nul_opt("auth_user", c.auth_user.as_deref())?;
    no_nul_opt("auth_dbname", c.auth_dbname.as_deref())?;
    no_nul("auth_query", &c.auth_query)?;
    // The query is only sent where some auth_user is set; an empty one would find nobody.
    let looks_up = c.auth_user.is_some() || c.databases.values().any(|d| d.auth_user.is_some());
    ensure(
        !looks_up || !c.auth_query.trim().is_empty(),
        "auth_query",
        || "must not be empty when auth_user is set".to_owned(),
    )?;
    if let Some(name) = &c.auth_dbname {
        ensure(
            !ADMIN_DB_NAMES.contains(&name.as_str()),
            "auth_dbname",
            || format!("`{name}` is the admin console, which cannot run auth_query"),
        )?;
    }
    // With no databases and no console users nobody can log in, so the default config
    // (md5, no auth_file) stays valid as a value; a config *file* like that is refused by
    // `serves_someone` instead, with a message about the file rather than auth_file.
    let anyone_can_log_in =
        !c.databases.is_empty() || !c.admin_users.is_empty() || !c.stats_users.is_empty();
    match c.auth_type {
        AuthType::Plain | AuthType::Md5 | AuthType::ScramSha256 if anyone_can_log_in => {
            // With auth_user, users missing from the file are looked up in PostgreSQL; the
            // file then only holds auth_user's own password, if it needs one (PgBouncer).
            ensure(c.auth_file.is_some() || looks_up, "auth_file", || {
                format!(
                    "is required when auth_type is {} (or set auth_user)",
                    c.auth_type
                )
            })?;
        }
        AuthType::Plain | AuthType::Md5 | AuthType::ScramSha256 => {}
        AuthType::Hba => {
            ensure(c.auth_hba_file.is_some(), "auth_hba_file", || {
                "is required when auth_type is hba".to_owned()
            })?;
        }
        AuthType::Trust => {}
        // Only verify-ca and up ask clients for a certificate and check it; or a trusted
        // proxy did, and says so.
        AuthType::Cert => ensure(
            c.client_tls_sslmode.verifies() || c.proxy_tls_trusted,
            "auth_type",
            || {
                "cert needs client_tls_sslmode verify-ca or verify-full (or proxy_tls_trusted)"
                    .to_owned()
            },
        )?,
    }
    list("admin_users", &c.admin_users)?;
    list("stats_users", &c.stats_users)
}

fn server_and_client(c: &Config) -> Check {
    no_nul("server_reset_query", &c.server_reset_query)?;
    no_nul("server_check_query", &c.server_check_query)?;
    in_range(
        "max_packet_size",
        c.max_packet_size,
        MIN_PACKET_SIZE,
        MAX_PACKET_SIZE,
    )?;
    in_range("pkt_buf", c.pkt_buf, MIN_PKT_BUF, MAX_PKT_BUF)?;
    positive("stats_period", c.stats_period)?;
    ensure(c.verbose <= MAX_VERBOSE, "verbose", || {
        format!("must be from 0 to {MAX_VERBOSE}, got {}", c.verbose)
    })?;
    list("ignore_startup_parameters", &c.ignore_startup_parameters)?;
    list("track_extra_parameters", &c.track_extra_parameters)?;
    for p in &c.track_extra_parameters {
        ensure(
            crate::params::is_settable_name(p),
            "track_extra_parameters",
            || format!("`{}` is not a parameter name", truncate(p, 64)),
        )?;
    }
    Ok(())
}

fn network(c: &Config) -> Check {
    whole_seconds("tcp_keepidle", c.tcp_keepidle, MAX_TCP_KEEP_SECS)?;
    whole_seconds("tcp_keepintvl", c.tcp_keepintvl, MAX_TCP_KEEP_SECS)?;
    in_range("tcp_keepcnt", c.tcp_keepcnt, 0, MAX_TCP_KEEPCNT)?;
    ensure(
        c.tcp_user_timeout.as_millis() <= MAX_TCP_USER_TIMEOUT_MS,
        "tcp_user_timeout",
        || format!("must be at most {} seconds", MAX_TCP_USER_TIMEOUT_MS / 1000),
    )
}

fn database(name: &str, db: &Database) -> Check {
    let key = |field: &str| format!("databases.{name}.{field}");
    let here = format!("databases.{name}");
    ensure(!name.is_empty(), &here, || {
        "a database name must not be empty".to_owned()
    })?;
    no_nul(&here, name)?;
    ensure(!ADMIN_DB_NAMES.contains(&name), &here, || {
        format!("`{name}` is reserved for the admin console")
    })?;
    ensure(!db.host.is_empty(), &key("host"), || {
        "must not be empty".to_owned()
    })?;
    for h in db.hosts() {
        ensure(!h.is_empty(), &key("host"), || {
            "an empty element in the host list".to_owned()
        })?;
        ensure(
            !h.contains(|ch: char| ch.is_whitespace() || ch == '\0'),
            &key("host"),
            || "each host must be one host name, address or socket directory".to_owned(),
        )?;
        ensure(!h.starts_with('@'), &key("host"), || {
            "abstract-namespace sockets are not supported: give a directory".to_owned()
        })?;
    }
    ensure(db.port != 0, &key("port"), || {
        "must be from 1 to 65535, got 0".to_owned()
    })?;
    no_nul_opt(&key("dbname"), db.dbname.as_deref())?;
    no_nul_opt(&key("user"), db.user.as_deref())?;
    no_nul_opt(&key("password"), db.password.as_ref().map(|p| p.expose()))?;
    no_nul_opt(&key("connect_query"), db.connect_query.as_deref())?;
    no_nul_opt(&key("application_name"), db.application_name.as_deref())?;
    no_nul_opt(&key("client_encoding"), db.client_encoding.as_deref())?;
    no_nul_opt(&key("datestyle"), db.datestyle.as_deref())?;
    no_nul_opt(&key("timezone"), db.timezone.as_deref())?;
    no_nul_opt(&key("auth_user"), db.auth_user.as_deref())?;
    no_nul_opt(&key("auth_query"), db.auth_query.as_deref())?;
    no_nul_opt(&key("auth_dbname"), db.auth_dbname.as_deref())?;
    if let Some(a) = &db.auth_dbname {
        ensure(
            !ADMIN_DB_NAMES.contains(&a.as_str()),
            &key("auth_dbname"),
            || format!("`{a}` is the admin console, which cannot run auth_query"),
        )?;
    }
    if let Some(n) = db.pool_size {
        in_range(&key("pool_size"), n, 1, MAX_POOL_SIZE)?;
    }
    if let Some(n) = db.min_pool_size {
        in_range(&key("min_pool_size"), n, 0, MAX_POOL_SIZE)?;
    }
    if let Some(n) = db.reserve_pool_size {
        in_range(&key("reserve_pool_size"), n, 0, MAX_POOL_SIZE)?;
    }
    Ok(())
}

fn user_settings(name: &str, user: &UserSettings) -> Check {
    let key = |field: &str| format!("users.{name}.{field}");
    let here = format!("users.{name}");
    ensure(!name.is_empty(), &here, || {
        "a user name must not be empty".to_owned()
    })?;
    no_nul(&here, name)?;
    if let Some(n) = user.pool_size {
        in_range(&key("pool_size"), n, 1, MAX_POOL_SIZE)?;
    }
    if let Some(n) = user.reserve_pool_size {
        in_range(&key("reserve_pool_size"), n, 0, MAX_POOL_SIZE)?;
    }
    Ok(())
}
