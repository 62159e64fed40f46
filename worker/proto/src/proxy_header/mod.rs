//! PROXY protocol v1/v2 header decoder (sans-IO): bytes in; need-more, not-a-header, invalid (why) or a header plus the bytes it used.
//!
//! The event loop reads into the connection's own buffer and calls [`decode`] again with the
//! longer prefix after every read, so a header split over any number of segments works. Bytes
//! after the header (the PostgreSQL startup packet) are left alone: the caller drops `consumed`
//! bytes and hands the rest to the PostgreSQL parser. Spec: HAProxy's `doc/proxy-protocol.txt`.

mod tlv;
mod v1;
mod v2;

use std::fmt;
use std::net::SocketAddr;

pub use tlv::{CloudEndpoint, SslInfo, Tlvs};

/// The longest v1 line, CRLF included; the spec makes longer lines invalid.
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
pub const V2_FIXED_LEN: usize = 16;
/// The longest v2 header the wire format can express.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

const V1_SIGNATURE: &[u8] = b"PROXY";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What [`decode`] made of the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A prefix of a possibly valid header: read more and call again with the longer buffer.
    NeedMore,
    /// These bytes can never start a PROXY header (e.g. a PostgreSQL startup packet).
    NotProxy,
    /// A complete, valid header occupying `buf[..consumed]` (boxed: it is rare and large).
    Header {
        header: Box<ProxyHeader>,
        consumed: usize,
    },
}

/// A decoded PROXY header (v1 or v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 for the text format, 2 for the binary one.
    pub version: u8,
    /// v1 headers are always `Proxy`; with `Local`, the addresses are always `Unknown`.
    pub command: Command,
    pub addresses: Addresses,
    /// Always empty for v1 and for v2 LOCAL (whose whole block is skipped, as the spec says).
    pub tlvs: Tlvs,
}

impl ProxyHeader {
    /// The client's real address, when the header carries one; `None` means "use the peer address".
    pub fn source(&self) -> Option<SocketAddr> {
        match (self.command, &self.addresses) {
            (Command::Proxy, Addresses::Inet { src, .. }) => Some(*src),
            _ => None,
        }
    }

    /// The address the client originally connected to, when the header carries one.
    pub fn destination(&self) -> Option<SocketAddr> {
        match (self.command, &self.addresses) {
            (Command::Proxy, Addresses::Inet { dst, .. }) => Some(*dst),
            _ => None,
        }
    }
}

/// The v2 command (v1 has none and is reported as `Proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The proxy's own connection (health check): use the real endpoints.
    Local,
    /// A relayed connection: the header's addresses are the original ones.
    Proxy,
}

/// The original endpoints carried by the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    /// v1 UNKNOWN, v2 LOCAL or v2 AF_UNSPEC: the connection's real peer address applies.
    Unknown,
    /// TCP over IPv4 or IPv6.
    Inet { src: SocketAddr, dst: SocketAddr },
    /// AF_UNIX stream sockets (v2 only).
    Unix { src: UnixAddr, dst: UnixAddr },
}

/// A raw 108-byte AF_UNIX address as carried by v2 (boxed to keep [`Addresses`] small).
#[derive(Clone, PartialEq, Eq)]
pub struct UnixAddr(Box<[u8; 108]>);

impl UnixAddr {
    fn from_bytes(bytes: &[u8; 108]) -> Self {
        UnixAddr(Box::new(*bytes))
    }

    /// All 108 bytes as received.
    pub fn raw(&self) -> &[u8; 108] {
        &self.0
    }

    /// The path without its NUL padding; an abstract address keeps its leading NUL.
    pub fn path(&self) -> &[u8] {
        let raw: &[u8] = &self.0[..];
        let end = if raw.first() == Some(&0) {
            raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
        } else {
            raw.iter().position(|&b| b == 0).unwrap_or(raw.len())
        };
        raw.get(..end).unwrap_or_default()
    }
}

impl fmt::Debug for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnixAddr({:?})", String::from_utf8_lossy(self.path()))
    }
}

/// Which address or port of a v1 line was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Source,
    Destination,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Source => "source",
            Endpoint::Destination => "destination",
        })
    }
}

/// Why a v1 line does not have the exact shape `PROXY <proto> <src> <dst> <sport> <dport>\r\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1Syntax {
    /// A missing, doubled, leading or trailing space between fields.
    Separator,
    /// A CR or LF that is not part of the terminating CRLF.
    BareCrLf,
    /// The line ends before all fields were given.
    MissingFields,
    /// Something follows the destination port.
    TooManyFields,
}

/// Why a header is invalid. Running out of bytes is never an error: that is [`Decoded::NeedMore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// v1: the line is not made of single-space-separated fields ending in CRLF.
    V1Syntax(V1Syntax),
    /// v1: the protocol is not TCP4, TCP6 or UNKNOWN.
    V1BadProtocol,
    /// v1: the address is not a strict dotted quad (TCP4) or an IPv6 address (TCP6).
    V1BadAddress(Endpoint),
    /// v1: an IPv6 address in a TCP4 line or an IPv4 address in a TCP6 line.
    V1FamilyMismatch(Endpoint),
    /// v1: the port is not a decimal in 0..=65535 without leading zeros.
    V1BadPort(Endpoint),
    /// v1: no CRLF within the first 107 bytes.
    V1TooLong,
    /// v2: the version nibble is not 2.
    V2BadVersion(u8),
    /// v2: the command nibble is neither LOCAL (0) nor PROXY (1).
    V2BadCommand(u8),
    /// v2: the address family nibble is not one the spec defines (0..=3).
    V2BadFamily(u8),
    /// v2: the transport nibble is not one the spec defines (0..=2).
    V2BadTransport(u8),
    /// v2 PROXY: a defined family/transport pair this TCP service does not take (e.g. DGRAM).
    V2Unsupported { family: u8, transport: u8 },
    /// v2: the whole header (16 + length) exceeds the configured maximum.
    V2TooLong { total: usize, max: usize },
    /// v2 PROXY: the length does not cover the family's address block.
    V2ShortAddressBlock { len: u16, needed: usize },
    /// v2: a TLV (or its 3-byte head) runs past the end of the header.
    TlvOverrun { kind: u8 },
    /// v2: an SSL sub-TLV runs past the end of the SSL TLV.
    SslSubTlvOverrun { kind: u8 },
    /// v2: a TLV whose type fixes or bounds its length has another (CRC32C, SSL, UNIQUE_ID).
    TlvBadLength { kind: u8, len: u16 },
    /// v2: a TLV we keep appears twice, so which one holds would be ambiguous.
    DuplicateTlv { kind: u8 },
    /// v2: the PP2_TYPE_CRC32C checksum does not match the header.
    CrcMismatch { received: u32, computed: u32 },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::V1Syntax(V1Syntax::Separator) => {
                f.write_str("PROXY v1: fields must be separated by exactly one space")
            }
            ProxyError::V1Syntax(V1Syntax::BareCrLf) => {
                f.write_str("PROXY v1: stray CR or LF, the line must end with CRLF")
            }
            ProxyError::V1Syntax(V1Syntax::MissingFields) => {
                f.write_str("PROXY v1: line ends before all fields")
            }
            ProxyError::V1Syntax(V1Syntax::TooManyFields) => {
                f.write_str("PROXY v1: extra data after the destination port")
            }
            ProxyError::V1BadProtocol => {
                f.write_str("PROXY v1: protocol must be TCP4, TCP6 or UNKNOWN")
            }
            ProxyError::V1BadAddress(e) => write!(f, "PROXY v1: invalid {e} address"),
            ProxyError::V1FamilyMismatch(e) => {
                write!(f, "PROXY v1: {e} address family does not match the protocol")
            }
            ProxyError::V1BadPort(e) => write!(f, "PROXY v1: invalid {e} port"),
            ProxyError::V1TooLong => f.write_str("PROXY v1: no CRLF within 107 bytes"),
            ProxyError::V2BadVersion(v) => write!(f, "PROXY v2: unsupported version {v}"),
            ProxyError::V2BadCommand(c) => write!(f, "PROXY v2: invalid command {c:#x}"),
            ProxyError::V2BadFamily(fam) => write!(f, "PROXY v2: invalid address family {fam:#x}"),
            ProxyError::V2BadTransport(t) => write!(f, "PROXY v2: invalid transport {t:#x}"),
            ProxyError::V2Unsupported { family, transport } => write!(
                f,
                "PROXY v2: family {family:#x} with transport {transport:#x} is not accepted"
            ),
            ProxyError::V2TooLong { total, max } => {
                write!(f, "PROXY v2: header of {total} bytes exceeds the {max}-byte limit")
            }
            ProxyError::V2ShortAddressBlock { len, needed } => write!(
                f,
                "PROXY v2: length {len} is shorter than the {needed}-byte address block"
            ),
            ProxyError::TlvOverrun { kind } => {
                write!(f, "PROXY v2: TLV {kind:#04x} runs past the end of the header")
            }
            ProxyError::SslSubTlvOverrun { kind } => {
                write!(f, "PROXY v2: SSL sub-TLV {kind:#04x} runs past the SSL TLV")
            }
            ProxyError::TlvBadLength { kind, len } => {
                write!(f, "PROXY v2: TLV {kind:#04x} has invalid length {len}")
            }
            ProxyError::DuplicateTlv { kind } => write!(f, "PROXY v2: duplicate TLV {kind:#04x}"),
            ProxyError::CrcMismatch { received, computed } => write!(
                f,
                "PROXY v2: CRC32C mismatch (header says {received:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Decodes the PROXY header at the start of `buf`.
///
/// `max_len` caps the total size of a v2 header (16 + its length field); a larger one is
/// rejected as soon as its length field is seen, before waiting for its bytes. v1 lines are
/// capped at [`V1_MAX_LEN`] by the spec, whatever `max_len` says. Validation is as early as
/// possible: a bad byte is reported without waiting for the rest of the header.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Decoded, ProxyError> {
    if buf.starts_with(V2_SIGNATURE) {
        v2::decode(buf, max_len)
    } else if buf.starts_with(V1_SIGNATURE) {
        v1::decode(buf)
    } else if V2_SIGNATURE.starts_with(buf) || V1_SIGNATURE.starts_with(buf) {
        // Too short to tell (this includes the empty buffer).
        Ok(Decoded::NeedMore)
    } else {
        Ok(Decoded::NotProxy)
    }
}

#[cfg(test)]
mod tests;
