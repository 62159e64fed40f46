//! The PROXY header at the start of a client connection: who may send one, reading it in
//! the connection's own buffer, and taking the real client address from it.
//!
//! A header is believed only from a `proxy_trusted` peer. With `required`, a trusted peer
//! must send one and anyone else is refused; with `optional`, trusted peers may send one
//! and everyone else connects directly, but a header from an untrusted peer is always
//! refused. Bad headers and timeouts close the connection without PostgreSQL bytes: the
//! peer is a proxy, not a PostgreSQL client.

use crate::client::{CState, Close, Peer, Step};
use crate::config::ProxyProtocol;
use crate::proxy_header::{self, CloudEndpoint, Decoded, Tlvs};
use crate::worker::{Conn, Worker};
use std::net::SocketAddr;

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

impl Worker {
    pub(crate) fn proxy_admission(&mut self, peer: Option<SocketAddr>) -> Admission {
        let Some(peer) = peer else {
            // Unix-socket clients are local: there is no proxy in between.
            return Admission::Direct;
        };
        let trusted = self.is_proxy_trusted(peer);
        let mode = self.cfg.proxy_protocol;
        match mode {
            ProxyProtocol::Off => Admission::Direct,
            // Peer poolers connect directly to forward cancel requests; the startup step
            // lets nothing else through (see `peer_only`).
            ProxyProtocol::Required if !trusted && self.is_peer(crate::client::Peer::Tcp(peer)) => {
                Admission::Direct
            }
            ProxyProtocol::Required if !trusted => Admission::Refuse,
            ProxyProtocol::Required | ProxyProtocol::Optional => Admission::Header { trusted },
        }
    }

    fn is_proxy_trusted(&self, peer: SocketAddr) -> bool {
        self.cfg.proxy_trusted.iter().any(|c| c.contains(peer.ip()))
    }

    /// Whether a client was let in without a PROXY header only because it is a peer
    /// pooler (proxy_protocol required): it may send a CancelRequest and nothing else.
    /// `via` is the socket's own peer address (None on a Unix socket).
    pub(crate) fn peer_only(&self, via: Option<SocketAddr>) -> bool {
        self.cfg.proxy_protocol == ProxyProtocol::Required
            && via.is_some_and(|a| !self.is_proxy_trusted(a))
    }

    /// Reads the header from the buffered bytes; the bytes after it stay for the
    /// startup packet.
    pub(crate) fn proxy_step(&mut self, ct: usize) -> Step {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return Step::Done;
        };
        let CState::Proxy { trusted } = c.state else {
            return Step::Done;
        };
        let required = self.cfg.proxy_protocol == ProxyProtocol::Required;
        match proxy_header::decode(c.io.rbuf.bytes(), self.cfg.proxy_max_header as usize) {
            Ok(Decoded::NeedMore) => Step::Wait,
            Ok(Decoded::NotProxy) if required => {
                self.proxy_reject(
                    ct,
                    Rejection::Missing,
                    "no PROXY header from a trusted peer".into(),
                );
                Step::Done
            }
            Ok(Decoded::NotProxy) => {
                c.state = CState::Startup;
                Step::Again
            }
            Ok(Decoded::Header { .. }) if !trusted => {
                self.proxy_reject(
                    ct,
                    Rejection::Untrusted,
                    "PROXY header from an untrusted peer (spoofing attempt?)".into(),
                );
                Step::Done
            }
            Ok(Decoded::Header { header, consumed }) => {
                c.io.rbuf.consume(consumed);
                if let Some(src) = header.source() {
                    c.peer = Peer::Tcp(src);
                }
                c.proxy = ProxyInfo::from_tlvs(header.tlvs, self.cfg.proxy_tls_trusted);
                c.state = CState::Startup;
                self.stats.proxy_accepted += 1;
                Step::Again
            }
            Err(e) => {
                self.proxy_reject(ct, Rejection::Invalid, format!("invalid PROXY header: {e}"));
                Step::Done
            }
        }
    }

    /// Refuses a connection at the PROXY stage: logged, counted, closed without a word.
    pub(crate) fn proxy_reject(&mut self, ct: usize, why: Rejection, detail: String) {
        if let Some(c) = self.client(ct) {
            let via = c.via.map(|a| a.to_string()).unwrap_or_default();
            log::warn!(
                "C-{} from {via}: PROXY header refused ({}): {detail}",
                c.id,
                why.as_str()
            );
        }
        self.stats.proxy_rejected[why as usize] += 1;
        self.close_client(ct, Close::Quiet("PROXY header refused"));
    }
}
