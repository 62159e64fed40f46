//! Which authentication a connection gets: from `auth_type`, or per connection from the
//! hba file matched against the real client address (after any PROXY header).

use crate::auth::hba::{Hba, HbaConn, HbaConnKind, Method as HbaMethod};
use crate::close::Close;
use crate::config::{AuthType, Config};
use crate::proxy::Peer;
use crate::stream::Stream;
use crate::wire::sqlstate;

/// The exchange a client goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// No password. `listed`: the user must still be in the auth file (PgBouncer's trust).
    Trust {
        listed: bool,
    },
    Cleartext,
    Md5,
    Scram,
    /// The verified TLS client certificate's common name must be the user name.
    Cert,
}

/// What the choice of method knows of a connection.
pub(crate) struct Asker<'a> {
    /// The real client address (after any trusted PROXY header).
    pub peer: Peer,
    /// TLS protects the client's bytes (its own session or a trusted proxy's).
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
    /// The cloud private endpoint a trusted PROXY header named.
    pub endpoint: Option<String>,
    pub physical_replication: bool,
    /// The socket, for the Unix peer's uid (hba `peer`), asked only then.
    pub io: &'a Stream,
    /// `C-<id>: db/user@addr` for the log.
    pub name: &'a dyn std::fmt::Display,
}

/// The method for this client, or why it is refused before any exchange.
pub(crate) fn method(cfg: &Config, hba: &Hba, c: &Asker<'_>) -> Result<Method, Close> {
    Ok(match cfg.auth_type {
        AuthType::Trust => Method::Trust {
            listed: cfg.auth_file.is_some(),
        },
        AuthType::Plain => Method::Cleartext,
        AuthType::Md5 => Method::Md5,
        AuthType::ScramSha256 => Method::Scram,
        AuthType::Hba => return hba_method(hba, c),
        AuthType::Cert => Method::Cert,
    })
}

fn hba_method(hba: &Hba, c: &Asker<'_>) -> Result<Method, Close> {
    let (kind, host) = match c.peer {
        Peer::Tcp(a) => (
            HbaConnKind::Host {
                addr: a.ip(),
                tls: c.tls,
            },
            format!("host \"{}\"", a.ip()),
        ),
        Peer::Unix => (HbaConnKind::Local, "local connection".to_string()),
    };
    let conn = HbaConn {
        kind,
        database: c.database,
        user: c.user,
        endpoint: c.endpoint.as_deref(),
        physical_replication: c.physical_replication,
    };
    // PostgreSQL's words for how the connection is protected.
    let encryption = if c.tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let who = format!(
        "{host}, user \"{}\", database \"{}\", {encryption}",
        c.user, c.database
    );
    let Some(rule) = hba.lookup(&conn) else {
        return Err(Close::Fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("no pg_hba.conf entry for {who}"),
        ));
    };
    log::debug!(
        "{}: hba line {} matched: {}",
        c.name,
        rule.line(),
        rule.method()
    );
    Ok(match rule.method() {
        HbaMethod::Trust => Method::Trust { listed: false },
        HbaMethod::Password => Method::Cleartext,
        HbaMethod::Md5 => Method::Md5,
        HbaMethod::ScramSha256 => Method::Scram,
        HbaMethod::Reject => {
            return Err(Close::Fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("pg_hba.conf rejects connection for {who}"),
            ))
        }
        HbaMethod::Peer => {
            let os_user = c.io.peer_uid().and_then(user_name);
            if os_user.as_deref() != Some(c.user) {
                return Err(Close::Fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!("Peer authentication failed for user \"{}\"", c.user),
                ));
            }
            Method::Trust { listed: false }
        }
        // hostssl-only in the parser; rustls checked the chain when client_tls_sslmode
        // is verify-ca or up, and below that no certificate is asked for, so none is
        // there and the login fails.
        HbaMethod::Cert => Method::Cert,
    })
}

/// The OS user name of a uid (the peer of a Unix socket, for hba `peer`).
fn user_name(uid: u32) -> Option<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.name)
}
