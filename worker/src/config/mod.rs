//! Configuration: types, YAML loading and validation.
//!
//! One YAML file with PgBouncer's setting names; `etc/pgbouncers.yaml` documents every key.
//! Loading is two steps: serde (types, unknown keys, via `serde_path_to_error` so every
//! error names its key path) and [`Config::validate`] (ranges and cross-field rules).

pub mod connstring;
mod database;
mod de;
mod error;
pub mod ini;
mod peer;
pub mod settings;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use connstring::ConnStrError;
pub use database::{
    Database, EntryError, ResolvedDb, UserSettings, DEFAULT_HOST, DEFAULT_PORT, FALLBACK_DB,
};
pub use error::{ConfigError, ErrorKind};
pub use peer::{Peer, DEFAULT_PEER_PORT, MAX_PEER_ID};
pub use pgbouncers_proto::cidr::{Cidr, CidrError};
pub use settings::restart_required_changes;
pub use types::{
    AuthType, LoadBalanceHosts, PoolMode, ProxyProtocol, Secret, TargetSessionAttrs, TlsMode,
    UnknownKeyword, Workers,
};

/// Database names that belong to the admin console and cannot be configured.
pub const ADMIN_DB_NAMES: &[&str] = &["pgbouncers", "pgbouncer"];

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// Largest config file read; anything bigger is a mistake (or an attack on memory).
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// The whole configuration. Field docs give only the unit and default;
/// `etc/pgbouncers.yaml` is the reference for what each setting does.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP listen addresses (`*` = all IPv4 and IPv6); empty = Unix socket only. Default `127.0.0.1`.
    #[serde(deserialize_with = "de::string_list")]
    pub listen_addr: Vec<String>,
    /// Default 6432.
    #[serde(deserialize_with = "de::int")]
    pub listen_port: u16,
    /// Directory for `.s.PGSQL.<port>`; `None` = no Unix socket.
    #[serde(deserialize_with = "de::opt_string")]
    pub unix_socket_dir: Option<String>,
    /// Permission bits of the Unix socket. Default 0o777.
    #[serde(deserialize_with = "de::octal_mode")]
    pub unix_socket_mode: u32,
    /// Default `auto`; see [`Config::worker_count`].
    pub workers: Workers,
    /// OS user to switch to after binding.
    #[serde(deserialize_with = "de::opt_string")]
    pub user: Option<String>,
    #[serde(deserialize_with = "de::opt_string")]
    pub pidfile: Option<String>,
    #[serde(deserialize_with = "de::opt_string")]
    pub logfile: Option<String>,
    /// Prometheus endpoint served by the supervisor.
    pub metrics_addr: Option<SocketAddr>,

    /// Default off.
    pub proxy_protocol: ProxyProtocol,
    /// Peers allowed to send a PROXY header.
    #[serde(deserialize_with = "de::cidr_list")]
    pub proxy_trusted: Vec<Cidr>,
    /// Default 5 s.
    #[serde(deserialize_with = "de::seconds")]
    pub proxy_header_timeout: Duration,
    /// TLS a trusted proxy terminated counts as TLS (PP2_TYPE_SSL). Default false.
    #[serde(deserialize_with = "de::flag")]
    pub proxy_tls_trusted: bool,
    /// Bytes. Default 4096.
    #[serde(deserialize_with = "de::int")]
    pub proxy_max_header: u32,

    /// Default session.
    pub pool_mode: PoolMode,
    /// Default 20.
    #[serde(deserialize_with = "de::int")]
    pub default_pool_size: u32,
    #[serde(deserialize_with = "de::int")]
    pub min_pool_size: u32,
    #[serde(deserialize_with = "de::int")]
    pub reserve_pool_size: u32,
    /// Default 5 s; 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub reserve_pool_timeout: Duration,
    /// Default 100.
    #[serde(deserialize_with = "de::int")]
    pub max_client_conn: u32,
    /// 0 = unlimited.
    #[serde(deserialize_with = "de::int")]
    pub max_db_connections: u32,
    /// 0 = unlimited.
    #[serde(deserialize_with = "de::int")]
    pub max_user_connections: u32,
    /// Clients of one database, all workers together; 0 = unlimited (PgBouncer 1.24+).
    #[serde(deserialize_with = "de::int")]
    pub max_db_client_connections: u32,
    /// Clients of one user, all workers together; 0 = unlimited (PgBouncer 1.24+).
    #[serde(deserialize_with = "de::int")]
    pub max_user_client_connections: u32,

    /// Default md5.
    pub auth_type: AuthType,
    #[serde(deserialize_with = "de::opt_string")]
    pub auth_file: Option<String>,
    #[serde(deserialize_with = "de::opt_string")]
    pub auth_hba_file: Option<String>,
    /// Role whose server connections run `auth_query` for users not in `auth_file`.
    #[serde(deserialize_with = "de::opt_string")]
    pub auth_user: Option<String>,
    /// Default [`DEFAULT_AUTH_QUERY`].
    pub auth_query: String,
    /// Database (a `databases` key) whose pool runs `auth_query`; unset = the client's.
    #[serde(deserialize_with = "de::opt_string")]
    pub auth_dbname: Option<String>,
    /// How long a worker reuses an `auth_query` answer (pgbouncers only). Default 5 s.
    #[serde(deserialize_with = "de::seconds")]
    pub auth_query_cache_ttl: Duration,
    #[serde(deserialize_with = "de::string_list")]
    pub admin_users: Vec<String>,
    #[serde(deserialize_with = "de::string_list")]
    pub stats_users: Vec<String>,

    /// Default `DISCARD ALL`; empty = none.
    pub server_reset_query: String,
    #[serde(deserialize_with = "de::flag")]
    pub server_reset_query_always: bool,
    /// Default `select 1`; empty = no check.
    pub server_check_query: String,
    /// Hand out the least recently used idle server instead of the most recently used.
    #[serde(deserialize_with = "de::flag")]
    pub server_round_robin: bool,
    /// Default 30 s; 0 = always check.
    #[serde(deserialize_with = "de::seconds")]
    pub server_check_delay: Duration,
    /// Default 600 s; 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub server_idle_timeout: Duration,
    /// Default 3600 s; 0 = use each server connection once.
    #[serde(deserialize_with = "de::seconds")]
    pub server_lifetime: Duration,
    /// Default 15 s; 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub server_connect_timeout: Duration,
    /// Default 15 s.
    #[serde(deserialize_with = "de::seconds")]
    pub server_login_retry: Duration,
    /// How long a resolved host name is used before it is looked up again. Default 15 s.
    #[serde(deserialize_with = "de::seconds")]
    pub dns_max_ttl: Duration,
    /// How long a failed lookup is remembered. Default 15 s.
    #[serde(deserialize_with = "de::seconds")]
    pub dns_nxdomain_ttl: Duration,
    /// Default 60 s; 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub client_login_timeout: Duration,
    /// 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub client_idle_timeout: Duration,
    /// 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub query_timeout: Duration,
    /// Default 120 s; 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub query_wait_timeout: Duration,
    /// After this long in the queue a client gets PgBouncer's notice that it waits;
    /// default 5 s, 0 = never.
    #[serde(deserialize_with = "de::seconds")]
    pub query_wait_notify: Duration,
    /// 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub idle_transaction_timeout: Duration,
    /// How long a client may stay in one transaction, from its first query (PgBouncer
    /// 1.25); 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub transaction_timeout: Duration,
    /// Default 30 s; 0 = no limit.
    #[serde(deserialize_with = "de::seconds")]
    pub shutdown_timeout: Duration,
    /// Default 10 s; 0 = disabled.
    #[serde(deserialize_with = "de::seconds")]
    pub cancel_wait_timeout: Duration,

    /// Bytes. Default 2147483647.
    #[serde(deserialize_with = "de::int")]
    pub max_packet_size: u32,
    /// Bytes. Default 8192.
    #[serde(deserialize_with = "de::int")]
    pub pkt_buf: u32,

    #[serde(deserialize_with = "de::flag")]
    pub application_name_add_host: bool,
    #[serde(deserialize_with = "de::flag")]
    pub log_connections: bool,
    #[serde(deserialize_with = "de::flag")]
    pub log_disconnections: bool,
    #[serde(deserialize_with = "de::flag")]
    pub log_pooler_errors: bool,
    #[serde(deserialize_with = "de::flag")]
    pub log_stats: bool,
    /// A notice sent to every client after its login; empty = none.
    pub login_notify_message: String,
    /// Default 60 s.
    #[serde(deserialize_with = "de::seconds")]
    pub stats_period: Duration,
    #[serde(deserialize_with = "de::int")]
    pub verbose: u8,

    #[serde(deserialize_with = "de::flag")]
    pub tcp_keepalive: bool,
    /// Whole seconds; 0 = OS default.
    #[serde(deserialize_with = "de::seconds")]
    pub tcp_keepidle: Duration,
    /// Whole seconds; 0 = OS default.
    #[serde(deserialize_with = "de::seconds")]
    pub tcp_keepintvl: Duration,
    /// 0 = OS default.
    #[serde(deserialize_with = "de::int")]
    pub tcp_keepcnt: u32,
    /// Seconds (PgBouncer: milliseconds); 0 = OS default.
    #[serde(deserialize_with = "de::seconds")]
    pub tcp_user_timeout: Duration,

    /// TLS from clients. Default disable.
    pub client_tls_sslmode: TlsMode,
    #[serde(deserialize_with = "de::opt_string")]
    pub client_tls_key_file: Option<String>,
    #[serde(deserialize_with = "de::opt_string")]
    pub client_tls_cert_file: Option<String>,
    /// CA for client certificates (verify-ca, verify-full).
    #[serde(deserialize_with = "de::opt_string")]
    pub client_tls_ca_file: Option<String>,
    /// Default `secure` (TLS 1.2 and 1.3).
    pub client_tls_protocols: String,
    /// Default `default`.
    pub client_tls_ciphers: String,
    /// TLS to PostgreSQL. Default prefer.
    pub server_tls_sslmode: TlsMode,
    #[serde(deserialize_with = "de::opt_string")]
    pub server_tls_key_file: Option<String>,
    #[serde(deserialize_with = "de::opt_string")]
    pub server_tls_cert_file: Option<String>,
    /// CA for server certificates (verify-ca, verify-full).
    #[serde(deserialize_with = "de::opt_string")]
    pub server_tls_ca_file: Option<String>,
    /// Default `secure`.
    pub server_tls_protocols: String,
    /// Default `default`.
    pub server_tls_ciphers: String,

    #[serde(deserialize_with = "de::string_list")]
    pub ignore_startup_parameters: Vec<String>,
    /// Startup parameters tracked besides the built-in ones (PgBouncer 1.20+); default
    /// `IntervalStyle`, which pgbouncers tracks anyway.
    #[serde(deserialize_with = "de::string_list")]
    pub track_extra_parameters: Vec<String>,
    /// Named statements the pooler keeps prepared per server in transaction/statement mode.
    #[serde(deserialize_with = "de::int")]
    pub max_prepared_statements: u32,

    /// This pooler's id among its peers (1..=16383), in every cancel key it hands out;
    /// 0 = no peering. Default 0.
    #[serde(deserialize_with = "de::int")]
    pub peer_id: u16,

    pub databases: BTreeMap<String, Database>,
    pub users: BTreeMap<String, UserSettings>,
    /// Pooler hosts by `peer_id`: a cancel request whose key names another peer is
    /// forwarded there, once.
    pub peers: BTreeMap<u16, Peer>,
}

impl Default for Config {
    /// PgBouncer's defaults (ours where PgBouncer has no such setting); equal to loading `{}`.
    fn default() -> Config {
        let secs = Duration::from_secs;
        Config {
            listen_addr: vec!["127.0.0.1".to_owned()],
            listen_port: 6432,
            unix_socket_dir: None,
            unix_socket_mode: 0o777,
            workers: Workers::Auto,
            user: None,
            pidfile: None,
            logfile: None,
            metrics_addr: None,
            proxy_protocol: ProxyProtocol::Off,
            proxy_trusted: Vec::new(),
            proxy_header_timeout: secs(5),
            proxy_tls_trusted: false,
            proxy_max_header: 4096,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: secs(5),
            max_client_conn: 100,
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_owned(),
            auth_dbname: None,
            auth_query_cache_ttl: secs(5),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            server_reset_query: "DISCARD ALL".to_owned(),
            server_reset_query_always: false,
            server_check_query: "select 1".to_owned(),
            server_round_robin: false,
            server_check_delay: secs(30),
            server_idle_timeout: secs(600),
            server_lifetime: secs(3600),
            server_connect_timeout: secs(15),
            server_login_retry: secs(15),
            dns_max_ttl: secs(15),
            dns_nxdomain_ttl: secs(15),
            client_login_timeout: secs(60),
            client_idle_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            query_wait_timeout: secs(120),
            query_wait_notify: secs(5),
            idle_transaction_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            shutdown_timeout: secs(30),
            cancel_wait_timeout: secs(10),
            max_packet_size: 2_147_483_647,
            pkt_buf: 8192,
            application_name_add_host: false,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            login_notify_message: String::new(),
            stats_period: secs(60),
            verbose: 0,
            tcp_keepalive: true,
            tcp_keepidle: Duration::ZERO,
            tcp_keepintvl: Duration::ZERO,
            tcp_keepcnt: 0,
            tcp_user_timeout: Duration::ZERO,
            client_tls_sslmode: TlsMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".to_owned(),
            client_tls_ciphers: "default".to_owned(),
            server_tls_sslmode: TlsMode::Prefer,
            server_tls_key_file: None,
            server_tls_cert_file: None,
            server_tls_ca_file: None,
            server_tls_protocols: "secure".to_owned(),
            server_tls_ciphers: "default".to_owned(),
            ignore_startup_parameters: Vec::new(),
            track_extra_parameters: vec!["IntervalStyle".to_owned()],
            max_prepared_statements: 200,
            peer_id: 0,
            databases: BTreeMap::new(),
            users: BTreeMap::new(),
            peers: BTreeMap::new(),
        }
    }
}

/// A pool's client timeouts, resolved by [`Config::timeouts_for`]; zero disables one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub query: Duration,
    pub query_wait: Duration,
    pub idle_transaction: Duration,
    pub transaction: Duration,
    pub client_idle: Duration,
}

impl Config {
    /// Parses and validates a config from YAML text. An empty document gives [`Config::default`].
    pub fn from_yaml_str(yaml: &str) -> Result<Config, ConfigError> {
        let config = Config::parse_yaml(yaml)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates the whole text of a config *file*: [`Config::from_yaml_str`],
    /// and the file must let someone log in (a database, or a console user). An empty file,
    /// one cut short before `databases:` (a deployment caught half-written) or YAML that is
    /// not a mapping of settings is refused, so a reload never swaps a working config for
    /// one under which every login fails.
    pub fn from_file_text(yaml: &str) -> Result<Config, ConfigError> {
        let config = Config::from_yaml_str(yaml).map_err(|e| {
            if e.kind() == ErrorKind::BadValue && e.key().is_none() {
                // A scalar or a list at the top: serde's "expected struct Config" helps nobody.
                ConfigError::not_a_mapping(e.location())
            } else {
                e
            }
        })?;
        validate::serves_someone(&config)?;
        Ok(config)
    }

    /// Reads, parses and validates a config file ([`Config::from_file_text`]); errors name
    /// the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::read_file(path).map(|(_, config)| config)
    }

    /// [`Config::load`], also returning the file's text (what a reload hands the workers).
    /// At most [`MAX_FILE_SIZE`] bytes are read.
    /// PgBouncer's ini format is recognised by content ([`ini::looks_like_ini`]) or a `.ini`
    /// name, and converted: the text returned is then the equivalent YAML.
    pub fn read_file(path: &Path) -> Result<(String, Config), ConfigError> {
        let text = read_capped(path)?;
        let is_ini = ini::looks_like_ini(&text) || path.extension().is_some_and(|x| x == "ini");
        if !is_ini {
            let config = Config::from_file_text(&text).map_err(|e| e.with_file(path))?;
            return Ok((text, config));
        }
        // `%include` paths are opened as written, relative to the working directory as in
        // PgBouncer; canonical paths tell include loops apart from repeated spellings.
        let identity = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let mut read = |p: &Path| {
            let text = read_capped(p).map_err(|e| e.message().to_owned())?;
            Ok((identity(p), text))
        };
        let converted =
            ini::convert(path, identity(path), &text, &mut read).map_err(|e| match e.line {
                0 => ConfigError::invalid(e.file, e.message),
                line => ConfigError::invalid(format!("{}:{line}", e.file), e.message),
            })?;
        for notice in &converted.notices {
            log::info!("{}: {notice}", path.display());
        }
        let config =
            Config::from_file_text(&converted.yaml).map_err(|e| ini::converted_error(path, e))?;
        Ok((converted.yaml, config))
    }

    /// Serde step only: types and unknown keys, no cross-field rules.
    fn parse_yaml(yaml: &str) -> Result<Config, ConfigError> {
        let mut options = serde_saphyr::Options::default();
        // We render our own one-line message; the snippet form spans several lines.
        options.with_snippet = false;
        // Let `.inf`/`.nan` reach our visitors, whose errors say what is expected instead.
        options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
        let mut path = None;
        de::take_error_subkey();
        let result = serde_saphyr::with_deserializer_from_str_with_options(yaml, options, |d| {
            // `Option`: a document with no content (empty, comments only, `---`) is null.
            serde_path_to_error::deserialize::<_, Option<Config>>(d).map_err(|e| {
                path = Some(e.path().to_string());
                e.into_inner()
            })
        });
        let subkey = de::take_error_subkey();
        match result {
            Ok(config) => Ok(config.unwrap_or_default()),
            Err(e) => Err(ConfigError::from_yaml(&e, path, subkey)),
        }
    }

    /// Checks ranges and cross-field rules; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The number of worker processes: `auto` resolves to the CPUs available (at most 256).
    pub fn worker_count(&self) -> usize {
        self.workers.resolve()
    }

    /// The configured entry for a database name: the exact key, else the `*` fallback.
    ///
    /// The admin console's names never resolve, even through `*`.
    pub fn database_entry(&self, name: &str) -> Option<&Database> {
        if ADMIN_DB_NAMES.contains(&name) {
            return None;
        }
        self.databases
            .get(name)
            .or_else(|| self.databases.get(FALLBACK_DB))
    }

    /// Where to connect for a requested database name: the `*` fallback and the `dbname`
    /// default (the requested name) applied. `None` when nothing matches.
    pub fn database(&self, name: &str) -> Option<ResolvedDb> {
        if ADMIN_DB_NAMES.contains(&name) {
            return None;
        }
        let (entry, from_fallback) = match self.databases.get(name) {
            Some(db) if name != FALLBACK_DB => (db, false),
            _ => (self.databases.get(FALLBACK_DB)?, true),
        };
        Some(ResolvedDb {
            name: name.to_owned(),
            dbname: entry.dbname.clone().unwrap_or_else(|| name.to_owned()),
            from_fallback,
            entry: entry.clone(),
        })
    }

    // Effective per-pool settings. `db` is the name the client asked for; `user` is the
    // pool's user (the database's forced `user` if it has one, else the login name).

    /// Pool mode: the user's, else the database's, else the global `pool_mode`.
    pub fn pool_mode_for(&self, db: &str, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or_else(|| self.database_entry(db).and_then(|d| d.pool_mode))
            .unwrap_or(self.pool_mode)
    }

    /// The timeouts of a pool's clients, as PgBouncer 1.25 resolves them: a `[users]`
    /// value over the global one (a 0 there leaves the global one, as PgBouncer reads
    /// it), and for query_wait_timeout a user's, else the database's, else the global one.
    pub fn timeouts_for(&self, db: &str, user: &str) -> Timeouts {
        let global = self.global_timeouts();
        let u = self.users.get(user);
        let over = |global: Duration, field: fn(&UserSettings) -> Option<Duration>| {
            u.and_then(field).filter(|d| !d.is_zero()).unwrap_or(global)
        };
        Timeouts {
            query: over(global.query, |u| u.query_timeout),
            idle_transaction: over(global.idle_transaction, |u| u.idle_transaction_timeout),
            transaction: over(global.transaction, |u| u.transaction_timeout),
            client_idle: over(global.client_idle, |u| u.client_idle_timeout),
            query_wait: u
                .and_then(|u| u.query_wait_timeout)
                .or_else(|| self.database_entry(db).and_then(|d| d.query_wait_timeout))
                .unwrap_or(global.query_wait),
        }
    }

    /// The `[pgbouncer]` timeouts, for clients of no pool yet.
    pub fn global_timeouts(&self) -> Timeouts {
        Timeouts {
            query: self.query_timeout,
            query_wait: self.query_wait_timeout,
            idle_transaction: self.idle_transaction_timeout,
            transaction: self.transaction_timeout,
            client_idle: self.client_idle_timeout,
        }
    }

    /// Pool size: the user's, else the database's, else `default_pool_size` (PgBouncer's
    /// order since 1.23, `pool_pool_size`).
    pub fn pool_size_for(&self, db: &str, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.pool_size)
            .or_else(|| self.database_entry(db).and_then(|d| d.pool_size))
            .unwrap_or(self.default_pool_size)
    }

    /// Minimum pool size: the database's, else the global one; capped at the pool size.
    pub fn min_pool_size_for(&self, db: &str, user: &str) -> u32 {
        self.database_entry(db)
            .and_then(|d| d.min_pool_size)
            .unwrap_or(self.min_pool_size)
            .min(self.pool_size_for(db, user))
    }

    /// Reserve pool size: the user's, else the database's, else the global one (PgBouncer's
    /// order, `pool_res_pool_size`).
    pub fn reserve_pool_size_for(&self, db: &str, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.reserve_pool_size)
            .or_else(|| self.database_entry(db).and_then(|d| d.reserve_pool_size))
            .unwrap_or(self.reserve_pool_size)
    }

    /// Server connections allowed to one database (all users): its own limit, else the
    /// global one. 0 = unlimited.
    pub fn max_db_connections_for(&self, db: &str) -> u32 {
        self.database_entry(db)
            .and_then(|d| d.max_db_connections)
            .unwrap_or(self.max_db_connections)
    }

    /// Server connections allowed to one user (all databases): its own limit, else the
    /// global one. 0 = unlimited.
    pub fn max_user_connections_for(&self, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.max_user_connections)
    }

    /// Clients allowed to one database (all users, all workers): its own limit, else the
    /// global one. 0 = unlimited.
    pub fn max_db_client_connections_for(&self, db: &str) -> u32 {
        self.database_entry(db)
            .and_then(|d| d.max_db_client_connections)
            .unwrap_or(self.max_db_client_connections)
    }

    /// Clients allowed to one user (all databases, all workers): its own limit, else the
    /// global one. 0 = unlimited.
    pub fn max_user_client_connections_for(&self, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.max_user_client_connections)
            .unwrap_or(self.max_user_client_connections)
    }

    /// The top-level keys this struct accepts, straight from its `Deserialize` impl.
    pub fn keys() -> &'static [&'static str] {
        struct_fields(|probe| Config::deserialize(probe))
    }
}

/// The `auth_query` lookup that applies to one database (the worker's `auth_query::source`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthSource {
    /// The role the query runs as (`auth_user`).
    pub user: String,
    pub query: String,
    /// The database (a `databases` key, or the client's) whose pool runs the query.
    pub dbname: String,
}

/// A file's text, at most [`MAX_FILE_SIZE`] bytes of it.
fn read_capped(path: &Path) -> Result<String, ConfigError> {
    let file = std::fs::File::open(path).map_err(|e| ConfigError::io(path, &e))?;
    let mut text = String::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError::io(path, &e))?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(ConfigError::too_big(path, MAX_FILE_SIZE));
    }
    Ok(text)
}

/// The field names a derived `Deserialize` impl asks for: `deserialize` is handed a
/// deserializer that records the `fields` argument of `deserialize_struct` and then stops.
fn struct_fields<R>(
    deserialize: impl FnOnce(FieldProbe<'_>) -> Result<R, ProbeStop>,
) -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = deserialize(FieldProbe(&mut fields));
    fields
}

struct FieldProbe<'a>(&'a mut &'static [&'static str]);

#[derive(Debug)]
struct ProbeStop;

impl std::fmt::Display for ProbeStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field-name probe")
    }
}

impl std::error::Error for ProbeStop {}

impl serde::de::Error for ProbeStop {
    fn custom<M: std::fmt::Display>(_: M) -> ProbeStop {
        ProbeStop
    }
}

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = ProbeStop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeStop> {
        Err(ProbeStop)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ProbeStop> {
        *self.0 = fields;
        Err(ProbeStop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}
