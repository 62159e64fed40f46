//! The `peers` section: other pooler hosts that cancel requests are forwarded to (PgBouncer's `[peers]`).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::connstring;
use super::database::{parse_num, EntryError};
use super::de as cde;

/// The largest `peer_id`, as in PgBouncer: it takes 14 bits of the cancel key's pid.
pub const MAX_PEER_ID: u16 = 16383;

/// The port of a peer whose entry names none (PgBouncer's default listen port).
pub const DEFAULT_PEER_PORT: u16 = 6432;

/// One entry of `peers`: where the pooler with that `peer_id` takes cancel requests.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, remote = "Self")]
pub struct Peer {
    /// An IP address, a host name, or (starting with `/`) the peer's Unix socket directory.
    pub host: String,
    #[serde(deserialize_with = "cde::int")]
    pub port: u16,
    /// Cancel requests in flight to this peer at once, per worker; `None` = default_pool_size.
    #[serde(deserialize_with = "cde::opt_int")]
    pub pool_size: Option<u32>,
}

/// Keys of a peer entry, for error messages (a test checks them against the struct).
pub(super) const PEER_FIELDS: &[&str] = &["host", "port", "pool_size"];

impl Default for Peer {
    fn default() -> Peer {
        Peer {
            host: String::new(),
            port: DEFAULT_PEER_PORT,
            pool_size: None,
        }
    }
}

impl Peer {
    /// Whether `host` names a Unix socket directory rather than a TCP host.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Builds an entry from a PgBouncer connection string (`host=10.0.0.2 port=6432`).
    pub fn from_connstring(s: &str) -> Result<Peer, EntryError> {
        let pairs = connstring::parse(s).map_err(EntryError::syntax)?;
        let mut peer = Peer::default();
        for (key, value) in pairs {
            let bad = |message: String| EntryError::value(&key, message);
            match key.as_str() {
                "host" => peer.host = value,
                "port" => peer.port = parse_num(&value).map_err(bad)?,
                "pool_size" => peer.pool_size = Some(parse_num(&value).map_err(bad)?),
                _ => return Err(EntryError::unknown(&key, PEER_FIELDS)),
            }
        }
        Ok(peer)
    }
}

super::database::entry_deserialize!(Peer, "a mapping of peer settings or a `host=...` string");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_or_a_mapping() {
        let p = Peer::from_connstring("host=10.0.0.2 port=7000 pool_size=5").unwrap();
        assert_eq!(
            p,
            Peer {
                host: "10.0.0.2".into(),
                port: 7000,
                pool_size: Some(5)
            }
        );
        assert_eq!(Peer::from_connstring("host=/tmp/p1").unwrap().port, 6432);
        let e = Peer::from_connstring("host=h dbname=x").unwrap_err();
        assert!(e.unknown_key, "{e}");
        assert!(Peer::from_connstring("port=x").is_err());
    }
}
