//! The PROXY header at the start of a client connection: who may send one, reading it in
//! the connection's own buffer, and taking the real client address from it.
//!
//! A header is believed only from a `proxy_trusted` peer. With `required`, a trusted peer
//! must send one and anyone else is refused; with `optional`, trusted peers may send one
//! and everyone else connects directly, but a header from an untrusted peer is always
//! refused. Bad headers and timeouts close the connection without PostgreSQL bytes: the
//! peer is a proxy, not a PostgreSQL client.

use crate::config::{Config, ProxyProtocol};
use crate::proxy_header::{self, CloudEndpoint, Decoded, Tlvs};
use std::fmt;
use std::net::SocketAddr;

/// The peer's address: from the socket, or from a PROXY header when one was trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{}:{}", a.ip(), a.port()),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// What a trusted PROXY v2 header said besides the address. Boxed in the client, and only
/// there when the header carried any of it.
#[derive(Debug, Default)]
pub(crate) struct ProxyInfo {
    /// `TLSv1.3/TLS_AES_256_GCM_SHA384`: TLS between the client and the proxy, from the
    /// PP2_TYPE_SSL TLV, believed only with proxy_tls_trusted.
    pub tls: Option<String>,
    /// The client certificate's CN the proxy verified (proxy_tls_trusted only).
    pub tls_cn: Option<String>,
    /// PP2_TYPE_UNIQUE_ID, printable: one client traced from the proxy's log to ours.
    pub unique_id: Option<String>,
    /// The cloud private endpoint the client came through.
    pub endpoint: Option<CloudEndpoint>,
}

impl ProxyInfo {
    /// What of `tlvs` is kept; `None` when nothing is.
    fn from_tlvs(tlvs: Tlvs, tls_trusted: bool) -> Option<Box<ProxyInfo>> {
        let ssl = tlvs.ssl.filter(|s| tls_trusted && s.client_ssl());
        let info = ProxyInfo {
            tls: ssl.as_ref().map(|s| {
                let version = printable(s.version.as_deref().unwrap_or(b"TLS"));
                match &s.cipher {
                    Some(c) => format!("{version}/{}", printable(c)),
                    None => version,
                }
            }),
            // PP2_CLIENT_CERT_CONN or _SESS with verify 0: a certificate was presented
            // and the proxy verified it.
            tls_cn: ssl
                .as_ref()
                .filter(|s| (s.cert_in_connection() || s.cert_in_session()) && s.cert_verified())
                .and_then(|s| s.cn.as_deref())
                .map(printable),
            unique_id: tlvs.unique_id.as_deref().map(printable),
            endpoint: tlvs.endpoint,
        };
        let any = info.tls.is_some()
            || info.tls_cn.is_some()
            || info.unique_id.is_some()
            || info.endpoint.is_some();
        any.then(|| Box::new(info))
    }
}

/// Bytes from a header as text safe for logs and the console: printable ASCII kept,
/// anything else `?`, at most 128 characters.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(128)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// How a new connection starts, decided from its socket peer.
pub(crate) enum Admission {
    /// No PROXY header is expected: read the PostgreSQL startup packet.
    Direct,
    /// A peer pooler, let in without a PROXY header although one is required, to forward
    /// a cancel: its first packet may only be a CancelRequest.
    PeerCancel,
    /// Read a PROXY header first; `trusted` says whether it may be believed.
    Header { trusted: bool },
    /// Refused at once: `required` and the peer is not trusted.
    Refuse,
}

/// Why a PROXY header was refused, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Untrusted,
    Missing,
    Invalid,
    Timeout,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Untrusted => "untrusted",
            Rejection::Missing => "missing",
            Rejection::Invalid => "invalid",
            Rejection::Timeout => "timeout",
        }
    }
}

/// How a connection from `peer` (None: a Unix socket) starts. `is_peer` says whether
/// the address is a peer pooler's; it is asked only when that decides.
pub(crate) fn admission(
    cfg: &Config,
    peer: Option<SocketAddr>,
    is_peer: impl FnOnce(Peer) -> bool,
) -> Admission {
    let Some(peer) = peer else {
        // Unix-socket clients are local: there is no proxy in between.
        return Admission::Direct;
    };
    let trusted = is_trusted(cfg, peer);
    match cfg.proxy_protocol {
        ProxyProtocol::Off => Admission::Direct,
        // Peer poolers connect directly to forward cancel requests; the startup step
        // lets nothing else through (`CState::PeerCancel`).
        ProxyProtocol::Required if !trusted && is_peer(Peer::Tcp(peer)) => Admission::PeerCancel,
        ProxyProtocol::Required if !trusted => Admission::Refuse,
        ProxyProtocol::Required | ProxyProtocol::Optional => Admission::Header { trusted },
    }
}

fn is_trusted(cfg: &Config, peer: SocketAddr) -> bool {
    cfg.proxy_trusted.iter().any(|c| c.contains(peer.ip()))
}

/// What the first bytes of a connection admitted with [`Admission::Header`] say.
pub(crate) enum Read {
    /// A whole header is not there yet.
    Wait,
    /// No PROXY header, and none is required: the startup packet follows.
    NotProxy,
    /// A header from a trusted peer, `consumed` bytes long: the client is at `source`
    /// (None for a LOCAL header, a health check), and `info` is what else it said.
    Header {
        consumed: usize,
        source: Option<SocketAddr>,
        info: Option<Box<ProxyInfo>>,
    },
    /// Refused: the connection closes without a word.
    Refused(Rejection, String),
}

/// Reads a PROXY header from the start of `bytes`, believed only when `trusted`.
pub(crate) fn read(cfg: &Config, trusted: bool, bytes: &[u8]) -> Read {
    let required = cfg.proxy_protocol == ProxyProtocol::Required;
    match proxy_header::decode(bytes, cfg.proxy_max_header as usize) {
        Ok(Decoded::NeedMore) => Read::Wait,
        Ok(Decoded::NotProxy) if required => Read::Refused(
            Rejection::Missing,
            "no PROXY header from a trusted peer".into(),
        ),
        Ok(Decoded::NotProxy) => Read::NotProxy,
        Ok(Decoded::Header { .. }) if !trusted => Read::Refused(
            Rejection::Untrusted,
            "PROXY header from an untrusted peer (spoofing attempt?)".into(),
        ),
        Ok(Decoded::Header { header, consumed }) => Read::Header {
            consumed,
            source: header.source(),
            info: ProxyInfo::from_tlvs(header.tlvs, cfg.proxy_tls_trusted),
        },
        Err(e) => Read::Refused(Rejection::Invalid, format!("invalid PROXY header: {e}")),
    }
}
