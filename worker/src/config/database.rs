//! The `databases` and `users` sections: per-database and per-user entries, as YAML mappings
//! or PgBouncer connection strings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::connstring;
use super::de as cde;
use super::types::{LoadBalanceHosts, PoolMode, Secret, TargetSessionAttrs};

/// Server host used when a database entry names none: the usual PostgreSQL socket directory.
pub const DEFAULT_HOST: &str = "/var/run/postgresql";
/// Server port used when a database entry names none.
pub const DEFAULT_PORT: u16 = 5432;
/// The `databases` key that matches any database name not listed explicitly.
pub const FALLBACK_DB: &str = "*";

/// One entry of the `databases` section: where to connect and per-database pool settings.
///
/// `None` fields inherit: see [`super::Config::pool_size_for`] and friends.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, remote = "Self")]
pub struct Database {
    /// Server host name or address; a value starting with `/` is a Unix socket directory.
    /// A comma-separated list names several servers (PgBouncer 1.24+): see [`Database::hosts`].
    pub host: String,
    #[serde(deserialize_with = "cde::int")]
    pub port: u16,
    /// Server-side database name; defaults to the name the client asked for.
    #[serde(deserialize_with = "cde::opt_string")]
    pub dbname: Option<String>,
    /// Forced server user: every client of this database shares one pool as this user.
    #[serde(deserialize_with = "cde::opt_string")]
    pub user: Option<String>,
    /// Password for the server login; otherwise the user's `auth_file` entry is used.
    pub password: Option<Secret>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub pool_size: Option<u32>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub min_pool_size: Option<u32>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub reserve_pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub max_db_connections: Option<u32>,
    /// Clients of this database, all users and workers together (PgBouncer 1.24+).
    #[serde(deserialize_with = "cde::opt_int")]
    pub max_db_client_connections: Option<u32>,
    /// This database's query_wait_timeout, over the global one (PgBouncer 1.25).
    #[serde(deserialize_with = "cde::opt_seconds")]
    pub query_wait_timeout: Option<Duration>,
    /// Query run once on each new server connection, before any client uses it.
    #[serde(deserialize_with = "cde::opt_string")]
    pub connect_query: Option<String>,
    /// `application_name` sent in the server's startup packet.
    #[serde(deserialize_with = "cde::opt_string")]
    pub application_name: Option<String>,
    /// `client_encoding` asked of the server in its startup packet.
    #[serde(deserialize_with = "cde::opt_string")]
    pub client_encoding: Option<String>,
    /// `DateStyle` asked of the server in its startup packet.
    #[serde(deserialize_with = "cde::opt_string")]
    pub datestyle: Option<String>,
    /// `TimeZone` asked of the server in its startup packet.
    #[serde(deserialize_with = "cde::opt_string")]
    pub timezone: Option<String>,
    /// This database's `auth_user`, over the global one.
    #[serde(deserialize_with = "cde::opt_string")]
    pub auth_user: Option<String>,
    /// This database's `auth_query`, over the global one.
    #[serde(deserialize_with = "cde::opt_string")]
    pub auth_query: Option<String>,
    /// This database's `auth_dbname`, over the global one.
    #[serde(deserialize_with = "cde::opt_string")]
    pub auth_dbname: Option<String>,
    /// How a host list is used: round-robin (the default) or first host up.
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// Which kind of server (primary, standby...) new connections must reach; a
    /// pgbouncers extension, checked at login and again every server_check_delay.
    pub target_session_attrs: Option<TargetSessionAttrs>,
}

impl Default for Database {
    fn default() -> Database {
        Database {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            dbname: None,
            user: None,
            password: None,
            pool_size: None,
            min_pool_size: None,
            reserve_pool_size: None,
            pool_mode: None,
            max_db_connections: None,
            max_db_client_connections: None,
            query_wait_timeout: None,
            connect_query: None,
            application_name: None,
            client_encoding: None,
            datestyle: None,
            timezone: None,
            auth_user: None,
            auth_query: None,
            auth_dbname: None,
            load_balance_hosts: None,
            target_session_attrs: None,
        }
    }
}

impl Database {
    /// Whether `host` names a Unix socket directory rather than a TCP host (libpq's rule).
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The hosts of `host`: one, or the elements of a comma-separated list, in order.
    /// PgBouncer splits on commas only; blanks around them are dropped here too.
    pub fn hosts(&self) -> Vec<String> {
        self.host.split(',').map(|h| h.trim().to_owned()).collect()
    }

    /// Builds an entry from a PgBouncer connection string.
    ///
    /// Errors name the key at fault (when known) and never quote a value.
    pub fn from_connstring(s: &str) -> Result<Database, EntryError> {
        let pairs = connstring::parse(s).map_err(EntryError::syntax)?;
        let mut db = Database::default();
        for (key, value) in pairs {
            let bad = |message: String| EntryError::value(&key, message);
            match key.as_str() {
                "host" => db.host = value,
                "port" => db.port = parse_num(&value).map_err(bad)?,
                "dbname" => db.dbname = non_empty(value),
                "user" => db.user = non_empty(value),
                "password" => db.password = Some(Secret::new(value)),
                "pool_size" => db.pool_size = Some(parse_num(&value).map_err(bad)?),
                "min_pool_size" => db.min_pool_size = Some(parse_num(&value).map_err(bad)?),
                "reserve_pool_size" => db.reserve_pool_size = Some(parse_num(&value).map_err(bad)?),
                "pool_mode" => db.pool_mode = Some(parse_keyword(&value).map_err(bad)?),
                "max_db_connections" => {
                    db.max_db_connections = Some(parse_num(&value).map_err(bad)?)
                }
                "max_db_client_connections" => {
                    db.max_db_client_connections = Some(parse_num(&value).map_err(bad)?)
                }
                "query_wait_timeout" => {
                    db.query_wait_timeout = Some(parse_secs(&value).map_err(bad)?)
                }
                "connect_query" => db.connect_query = non_empty(value),
                "application_name" => db.application_name = non_empty(value),
                "client_encoding" => db.client_encoding = non_empty(value),
                "datestyle" => db.datestyle = non_empty(value),
                "timezone" => db.timezone = non_empty(value),
                "auth_user" => db.auth_user = non_empty(value),
                "auth_query" => db.auth_query = non_empty(value),
                "auth_dbname" => db.auth_dbname = non_empty(value),
                "load_balance_hosts" => {
                    db.load_balance_hosts = Some(parse_keyword(&value).map_err(bad)?)
                }
                "target_session_attrs" => {
                    db.target_session_attrs = Some(parse_keyword(&value).map_err(bad)?)
                }
                _ => return Err(EntryError::unknown(&key, DATABASE_FIELDS)),
            }
        }
        Ok(db)
    }
}

/// Keys of a database entry, for error messages (a test checks them against the struct).
pub(super) const DATABASE_FIELDS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "pool_mode",
    "max_db_connections",
    "max_db_client_connections",
    "query_wait_timeout",
    "connect_query",
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "auth_user",
    "auth_query",
    "auth_dbname",
    "load_balance_hosts",
    "target_session_attrs",
];

/// One entry of the `users` section: per-user pool settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, remote = "Self")]
pub struct UserSettings {
    pub pool_mode: Option<PoolMode>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub pool_size: Option<u32>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub reserve_pool_size: Option<u32>,
    #[serde(deserialize_with = "cde::opt_int")]
    pub max_user_connections: Option<u32>,
    /// Clients of this user, all databases and workers together (PgBouncer 1.24+).
    #[serde(deserialize_with = "cde::opt_int")]
    pub max_user_client_connections: Option<u32>,
    /// This user's timeouts, over the global ones (PgBouncer 1.25): see
    /// [`super::Config::timeouts_for`].
    #[serde(deserialize_with = "cde::opt_seconds")]
    pub query_timeout: Option<Duration>,
    #[serde(deserialize_with = "cde::opt_seconds")]
    pub query_wait_timeout: Option<Duration>,
    #[serde(deserialize_with = "cde::opt_seconds")]
    pub idle_transaction_timeout: Option<Duration>,
    #[serde(deserialize_with = "cde::opt_seconds")]
    pub transaction_timeout: Option<Duration>,
    #[serde(deserialize_with = "cde::opt_seconds")]
    pub client_idle_timeout: Option<Duration>,
}

/// Keys of a user entry, for error messages (a test checks them against the struct).
pub(super) const USER_FIELDS: &[&str] = &[
    "pool_mode",
    "pool_size",
    "reserve_pool_size",
    "max_user_connections",
    "max_user_client_connections",
    "query_timeout",
    "query_wait_timeout",
    "idle_transaction_timeout",
    "transaction_timeout",
    "client_idle_timeout",
];

impl UserSettings {
    /// Builds an entry from a PgBouncer-style `key=value` string (`pool_mode=session`).
    pub fn from_connstring(s: &str) -> Result<UserSettings, EntryError> {
        let pairs = connstring::parse(s).map_err(EntryError::syntax)?;
        let mut user = UserSettings::default();
        for (key, value) in pairs {
            let bad = |message: String| EntryError::value(&key, message);
            match key.as_str() {
                "pool_mode" => user.pool_mode = Some(parse_keyword(&value).map_err(bad)?),
                "pool_size" => user.pool_size = Some(parse_num(&value).map_err(bad)?),
                "reserve_pool_size" => {
                    user.reserve_pool_size = Some(parse_num(&value).map_err(bad)?)
                }
                "max_user_connections" => {
                    user.max_user_connections = Some(parse_num(&value).map_err(bad)?)
                }
                "max_user_client_connections" => {
                    user.max_user_client_connections = Some(parse_num(&value).map_err(bad)?)
                }
                "query_timeout" => user.query_timeout = Some(parse_secs(&value).map_err(bad)?),
                "query_wait_timeout" => {
                    user.query_wait_timeout = Some(parse_secs(&value).map_err(bad)?)
                }
                "idle_transaction_timeout" => {
                    user.idle_transaction_timeout = Some(parse_secs(&value).map_err(bad)?)
                }
                "transaction_timeout" => {
                    user.transaction_timeout = Some(parse_secs(&value).map_err(bad)?)
                }
                "client_idle_timeout" => {
                    user.client_idle_timeout = Some(parse_secs(&value).map_err(bad)?)
                }
                _ => return Err(EntryError::unknown(&key, USER_FIELDS)),
            }
        }
        Ok(user)
    }
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

/// Why a connection-string entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryError {
    /// The key at fault, when the error is about one key.
    pub key: Option<String>,
    /// The key is not a setting of this section.
    pub unknown_key: bool,
    /// The problem; never quotes a password.
    pub message: String,
}

impl EntryError {
    pub(super) fn syntax(e: connstring::ConnStrError) -> EntryError {
        EntryError {
            key: e.key().map(str::to_owned),
            unknown_key: false,
            message: e.to_string(),
        }
    }

    pub(super) fn value(key: &str, message: String) -> EntryError {
        EntryError {
            key: Some(key.to_owned()),
            unknown_key: false,
            message,
        }
    }

    pub(super) fn unknown(key: &str, expected: &[&str]) -> EntryError {
        EntryError {
            key: Some(key.to_owned()),
            unknown_key: true,
            message: super::error::unknown_key_message(key, expected),
        }
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for EntryError {}

/// Whole seconds, as PgBouncer reads a per-database or per-user timeout.
fn parse_secs(value: &str) -> Result<Duration, String> {
    parse_num::<u32>(value).map(|s| Duration::from_secs(s.into()))
}

pub(super) fn parse_num<T: FromStr + cde::ConfigInt>(value: &str) -> Result<T, String> {
    // Digits only: `FromStr` would also take a leading '+'.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = value.parse() {
            return Ok(n);
        }
    }
    Err(format!(
        "invalid value `{}`, expected an integer from {} to {}",
        cde::truncate(value, 32),
        T::MIN,
        T::MAX
    ))
}

fn parse_keyword<T: FromStr>(value: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    value.parse().map_err(|e: T::Err| e.to_string())
}

/// Deserializes an entry given as a mapping, a connection string, or null (all defaults).
macro_rules! entry_deserialize {
    ($ty:ident, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct EntryVisitor;

                impl<'de> Visitor<'de> for EntryVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }

                    fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }

                    fn visit_none<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::from_connstring(v).map_err(|e| {
                            if let Some(key) = e.key {
                                cde::set_error_subkey(cde::SubkeyError {
                                    key,
                                    unknown: e.unknown_key,
                                });
                            }
                            E::custom(e.message)
                        })
                    }

                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        // The derived (remote = "Self") impl: struct fields, deny_unknown_fields.
                        $ty::deserialize(de::value::MapAccessDeserializer::new(map))
                    }
                }

                d.deserialize_any(EntryVisitor)
            }
        }
    };
}

pub(super) use entry_deserialize;

entry_deserialize!(
    Database,
    "a mapping of database settings or a connection string"
);
entry_deserialize!(
    UserSettings,
    "a mapping of user settings or a `pool_mode=...` string"
);

/// A database entry resolved for one requested name: the `*` fallback and `dbname` applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDb {
    /// The name the client asked for (the pool's database name).
    pub name: String,
    /// The database name to send to the server.
    pub dbname: String,
    /// Whether the entry came from the `*` fallback.
    pub from_fallback: bool,
    /// The entry itself (host, port, forced user, pool overrides...).
    pub entry: Database,
}
