//! PROXY v1: the text line `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`, parsed strictly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Addresses, Command, Decoded, Endpoint, ProxyError, ProxyHeader, Tlvs, V1Syntax, V1_MAX_LEN,
    V1_SIGNATURE,
};

/// The longest IPv6 text form (with an embedded dotted quad); longer can only be junk.
const IPV6_TEXT_MAX: usize = 45;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// Decodes a buffer that starts with "PROXY".
///
/// Fields are checked as they arrive: a complete field (one followed by a space) is validated
/// fully and a partial last one for whether it can still become valid, so junk is rejected
/// without waiting for a CRLF that a broken sender may never send. A rejection never depends
/// on bytes that have not arrived yet: once a prefix is invalid, so is every extension.
pub(super) fn decode(buf: &[u8]) -> Result<Decoded, ProxyError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let (line, complete) = match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => (window.get(..end).unwrap_or_default(), true),
        None if buf.len() >= V1_MAX_LEN => return Err(ProxyError::V1TooLong),
        // A trailing CR may be the first half of the terminator.
        None => (window.strip_suffix(b"\r").unwrap_or(window), false),
    };
    let consumed = line.len() + 2;
    let need_more_or = |err: ProxyError| {
        if complete {
            Err(err)
        } else {
            Ok(Decoded::NeedMore)
        }
    };

    let Some(rest) = line.strip_prefix(V1_SIGNATURE) else {
        return Ok(Decoded::NotProxy); // unreachable: the caller checked the signature
    };
    let rest = match rest.split_first() {
        None => return need_more_or(ProxyError::V1Syntax(V1Syntax::MissingFields)),
        Some((b' ', rest)) => rest,
        Some(_) => return Err(ProxyError::V1Syntax(V1Syntax::Separator)),
    };

    let (proto, fields) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..)),
        None => (rest, None),
    };
    if proto == b"UNKNOWN" {
        // The spec says to ignore whatever follows UNKNOWN up to the CRLF.
        if !complete {
            return Ok(Decoded::NeedMore);
        }
        return Ok(Decoded::Header {
            header: Box::new(ProxyHeader {
                version: 1,
                command: Command::Proxy,
                addresses: Addresses::Unknown,
                tlvs: Tlvs::default(),
            }),
            consumed,
        });
    }
    let family = match proto {
        b"TCP4" => Family::V4,
        b"TCP6" => Family::V6,
        b"" if fields.is_some() => return Err(ProxyError::V1Syntax(V1Syntax::Separator)),
        b"" => return need_more_or(ProxyError::V1Syntax(V1Syntax::MissingFields)),
        p if fields.is_none()
            && !complete
            && [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                .iter()
                .any(|k| k.starts_with(p)) =>
        {
            return Ok(Decoded::NeedMore)
        }
        _ if line.contains(&b'\r') || line.contains(&b'\n') => {
            return Err(ProxyError::V1Syntax(V1Syntax::BareCrLf))
        }
        _ => return Err(ProxyError::V1BadProtocol),
    };
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return Err(ProxyError::V1Syntax(V1Syntax::BareCrLf));
    }
    let Some(fields) = fields else {
        return need_more_or(ProxyError::V1Syntax(V1Syntax::MissingFields));
    };

    // Fields are validated in wire order, so the first bad field is the one reported.
    let mut addrs = [None; 2];
    let mut ports = [None; 2];
    let mut parts = fields.split(|&b| b == b' ').enumerate().peekable();
    while let Some((i, part)) = parts.next() {
        let partial = !complete && parts.peek().is_none();
        if i >= 4 {
            return Err(ProxyError::V1Syntax(V1Syntax::TooManyFields));
        }
        let endpoint = if i % 2 == 0 {
            Endpoint::Source
        } else {
            Endpoint::Destination
        };
        if part.is_empty() {
            if partial {
                continue;
            }
            return Err(ProxyError::V1Syntax(V1Syntax::Separator));
        }
        match (i < 2, partial) {
            (true, false) => {
                if let Some(slot) = addrs.get_mut(i) {
                    *slot = Some(parse_addr(family, part, endpoint)?);
                }
            }
            (true, true) => check_addr_prefix(part, endpoint)?,
            (false, false) => {
                let port = parse_decimal(part, u16::MAX.into())
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or(ProxyError::V1BadPort(endpoint))?;
                if let Some(slot) = ports.get_mut(i - 2) {
                    *slot = Some(port);
                }
            }
            (false, true) => {
                if !is_decimal_prefix(part, u16::MAX.into()) {
                    return Err(ProxyError::V1BadPort(endpoint));
                }
            }
        }
    }
    if !complete {
        return Ok(Decoded::NeedMore);
    }
    match (addrs, ports) {
        ([Some(src_ip), Some(dst_ip)], [Some(sport), Some(dport)]) => Ok(Decoded::Header {
            header: Box::new(ProxyHeader {
                version: 1,
                command: Command::Proxy,
                addresses: Addresses::Inet {
                    src: SocketAddr::new(src_ip, sport),
                    dst: SocketAddr::new(dst_ip, dport),
                },
                tlvs: Tlvs::default(),
            }),
            consumed,
        }),
        _ => Err(ProxyError::V1Syntax(V1Syntax::MissingFields)),
    }
}

/// A complete address field: the protocol's family, else a mismatch or plain junk.
fn parse_addr(family: Family, text: &[u8], endpoint: Endpoint) -> Result<IpAddr, ProxyError> {
    let v4 = parse_ipv4(text);
    let v6 = parse_ipv6(text);
    match (family, v4, v6) {
        (Family::V4, Some(ip), _) => Ok(IpAddr::V4(ip)),
        (Family::V6, _, Some(ip)) => Ok(IpAddr::V6(ip)),
        (Family::V4, None, Some(_)) | (Family::V6, Some(_), None) => {
            Err(ProxyError::V1FamilyMismatch(endpoint))
        }
        _ => Err(ProxyError::V1BadAddress(endpoint)),
    }
}

/// Whether a partial address field can still become an address of either family. The
/// family is checked once the field is complete (a wrong one is a mismatch, not junk), and
/// both prefix checks only ever shrink as bytes arrive, so an early rejection is final.
fn check_addr_prefix(text: &[u8], endpoint: Endpoint) -> Result<(), ProxyError> {
    if is_ipv4_prefix(text) || is_ipv6_prefix(text) {
        Ok(())
    } else {
        Err(ProxyError::V1BadAddress(endpoint))
    }
}

/// Exactly four dot-separated decimals in 0..=255, no leading zeros (the spec forbids them
/// to avoid octal confusion).
fn parse_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in text.split(|&b| b == b'.') {
        let slot = octets.get_mut(n)?;
        *slot = u8::try_from(parse_decimal(part, 255)?).ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

fn is_ipv4_prefix(text: &[u8]) -> bool {
    let mut n = 0;
    for part in text.split(|&b| b == b'.') {
        n += 1;
        if n > 4 || !is_decimal_prefix(part, 255) {
            return false;
        }
    }
    // Every part but the last is followed by a dot, so it must already be complete.
    text.split(|&b| b == b'.')
        .rev()
        .skip(1)
        .all(|part| !part.is_empty())
}

/// Whether `text` can still grow into an IPv6 text form: colon-separated groups of at most
/// four hex digits, at most one `::`, and possibly a dotted quad at the end.
fn is_ipv6_prefix(text: &[u8]) -> bool {
    if text.len() > IPV6_TEXT_MAX || text.windows(2).filter(|w| w == b"::").count() > 1 {
        return false;
    }
    // Eight groups, or seven and a `::` at either end, split into at most nine pieces.
    let mut pieces = text.split(|&b| b == b':').peekable();
    let mut n = 0;
    while let Some(piece) = pieces.next() {
        n += 1;
        let last = pieces.peek().is_none();
        let ok = if last && piece.contains(&b'.') {
            is_ipv4_prefix(piece)
        } else {
            piece.len() <= 4 && piece.iter().all(u8::is_ascii_hexdigit)
        };
        if n > 9 || !ok {
            return false;
        }
    }
    true
}

/// RFC 4291 text forms, including `::` compression and an embedded dotted quad (HAProxy
/// writes v4-mapped addresses that way); no zone index.
fn parse_ipv6(text: &[u8]) -> Option<Ipv6Addr> {
    if text.len() > IPV6_TEXT_MAX {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A decimal in 0..=max: digits only, no sign, no leading zero.
fn parse_decimal(text: &[u8], max: u32) -> Option<u32> {
    if text.is_empty() || !is_decimal_prefix(text, max) {
        return None;
    }
    Some(decimal_value(text))
}

/// Whether `text` can still grow into a valid decimal in 0..=max.
fn is_decimal_prefix(text: &[u8], max: u32) -> bool {
    let max_digits = max.checked_ilog10().map_or(1, |d| d as usize + 1);
    text.len() <= max_digits
        && text.iter().all(u8::is_ascii_digit)
        && !(text.len() > 1 && text.first() == Some(&b'0'))
        && decimal_value(text) <= max
}

/// The value of at most a handful of ASCII digits (callers bound the length).
fn decimal_value(text: &[u8]) -> u32 {
    text.iter().fold(0u32, |acc, &d| {
        acc.saturating_mul(10)
            .saturating_add(u32::from(d.wrapping_sub(b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, Addresses, Decoded, Endpoint, ProxyError, V1Syntax};
    use super::{is_ipv6_prefix, parse_ipv6};
    use std::net::SocketAddr;

    const MAX: usize = 4096;

    fn ok(line: &str) -> (Addresses, usize) {
        match decode(line.as_bytes(), MAX) {
            Ok(Decoded::Header { header, consumed }) => {
                assert_eq!(header.version, 1);
                assert!(header.tlvs == Default::default());
                (header.addresses, consumed)
            }
            other => panic!("{line:?}: expected a header, got {other:?}"),
        }
    }

    fn err(line: &str) -> ProxyError {
        match decode(line.as_bytes(), MAX) {
            Err(e) => e,
            other => panic!("{line:?}: expected an error, got {other:?}"),
        }
    }

    fn inet(src: &str, dst: &str) -> Addresses {
        Addresses::Inet {
            src: src.parse::<SocketAddr>().unwrap(),
            dst: dst.parse::<SocketAddr>().unwrap(),
        }
    }

    #[test]
    fn tcp4() {
        let line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(
            ok(line),
            (inet("192.168.0.1:56324", "192.168.0.11:443"), line.len())
        );
        let line = "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n";
        assert_eq!(
            ok(line),
            (inet("0.0.0.0:0", "255.255.255.255:65535"), line.len())
        );
    }

    #[test]
    fn tcp6() {
        let line = "PROXY TCP6 2001:db8::1 ::1 1 5432\r\n";
        assert_eq!(
            ok(line),
            (inet("[2001:db8::1]:1", "[::1]:5432"), line.len())
        );
        let line = "PROXY TCP6 FFFF:ffff:FFFF:ffff:FFFF:ffff:FFFF:ffff :: 65535 0\r\n";
        assert_eq!(
            ok(line),
            (
                inet("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::]:0"),
                line.len()
            )
        );
        // HAProxy writes v4-mapped addresses with a dotted quad when the families differ.
        let line = "PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 4000 5432\r\n";
        assert_eq!(
            ok(line),
            (
                inet("[::ffff:10.0.0.1]:4000", "[2001:db8::2]:5432"),
                line.len()
            )
        );
    }

    #[test]
    fn unknown_short_and_long_forms() {
        assert_eq!(ok("PROXY UNKNOWN\r\n"), (Addresses::Unknown, 15));
        let long = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(long.len(), 107);
        assert_eq!(ok(long), (Addresses::Unknown, 107));
        // Whatever follows UNKNOWN is ignored, even junk and stray CRs.
        let junk = "PROXY UNKNOWN  \x01\rjunk  \r\n";
        assert_eq!(ok(junk), (Addresses::Unknown, junk.len()));
    }

    #[test]
    fn only_the_first_crlf_counts_and_trailing_bytes_stay() {
        let buf = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\0\0\0\x08\x04\xd2\x16\x2f";
        assert!(matches!(
            decode(buf, MAX),
            Ok(Decoded::Header { consumed: 32, .. })
        ));
    }

    #[test]
    fn too_long() {
        // 105 bytes without CRLF: the terminator may still come, and fit in 107.
        let mut line = String::from("PROXY UNKNOWN ");
        line.push_str(&"a".repeat(105 - line.len()));
        assert_eq!(decode(line.as_bytes(), MAX), Ok(Decoded::NeedMore));
        assert_eq!(
            decode(format!("{line}\r").as_bytes(), MAX),
            Ok(Decoded::NeedMore)
        );
        assert_eq!(ok(&format!("{line}\r\n")), (Addresses::Unknown, 107));
        // One byte more and the CRLF would end at 108.
        line.push('a');
        assert_eq!(decode(line.as_bytes(), MAX), Ok(Decoded::NeedMore));
        assert_eq!(err(&format!("{line}\r")), ProxyError::V1TooLong);
        assert_eq!(err(&format!("{line}\r\n")), ProxyError::V1TooLong);
        assert_eq!(err(&"PROXY UNKNOWN ".repeat(20)), ProxyError::V1TooLong);
    }

    #[test]
    fn separators() {
        let sep = ProxyError::V1Syntax(V1Syntax::Separator);
        for line in [
            "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
            "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(err(line), sep, "{line:?}");
        }
        assert_eq!(
            err("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
            ProxyError::V1Syntax(V1Syntax::TooManyFields)
        );
        assert_eq!(
            err("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
            ProxyError::V1Syntax(V1Syntax::TooManyFields)
        );
        // A tab is not a separator: it makes the field invalid.
        assert_eq!(
            err("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"),
            ProxyError::V1BadAddress(Endpoint::Source)
        );
    }

    #[test]
    fn missing_fields() {
        let missing = ProxyError::V1Syntax(V1Syntax::MissingFields);
        for line in [
            "PROXY\r\n",
            "PROXY TCP4\r\n",
            "PROXY TCP6 ::1\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        ] {
            assert_eq!(err(line), missing, "{line:?}");
        }
        assert_eq!(err("PROXY \r\n"), missing);
    }

    #[test]
    fn terminators() {
        let bare = ProxyError::V1Syntax(V1Syntax::BareCrLf);
        for line in [
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            "PROXY TCP4\n",
            "PROXY UNKNOWN\n",
        ] {
            assert_eq!(err(line), bare, "{line:?}");
        }
    }

    #[test]
    fn protocols() {
        for line in [
            "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP44 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY unknown\r\n",
        ] {
            assert_eq!(err(line), ProxyError::V1BadProtocol, "{line:?}");
        }
    }

    #[test]
    fn ipv4_strictness() {
        for (src, dst, endpoint) in [
            ("01.2.3.4", "5.6.7.8", Endpoint::Source),
            ("1.2.3.04", "5.6.7.8", Endpoint::Source),
            ("1.2.3.4", "5.6.7.00", Endpoint::Destination),
            ("256.1.1.1", "5.6.7.8", Endpoint::Source),
            ("1.2.3", "5.6.7.8", Endpoint::Source),
            ("1.2.3.4.5", "5.6.7.8", Endpoint::Source),
            ("1..3.4", "5.6.7.8", Endpoint::Source),
            ("1.2.3.4.", "5.6.7.8", Endpoint::Source),
            (".1.2.3", "5.6.7.8", Endpoint::Source),
            ("1.2.3.4", "5.6.7.-8", Endpoint::Destination),
            ("1.2.3.4", "5.6.7.+8", Endpoint::Destination),
            ("1.2.3.4", "0x5.6.7.8", Endpoint::Destination),
            ("1.2.3.4", "1000.6.7.8", Endpoint::Destination),
            ("1.2.3.4", "localhost", Endpoint::Destination),
        ] {
            let line = format!("PROXY TCP4 {src} {dst} 1 2\r\n");
            assert_eq!(err(&line), ProxyError::V1BadAddress(endpoint), "{line:?}");
        }
    }

    #[test]
    fn ipv6_strictness() {
        for (src, dst, endpoint) in [
            ("fe80::1%eth0", "::1", Endpoint::Source),
            ("1:2:3:4:5:6:7:8:9", "::1", Endpoint::Source),
            ("00001::", "::1", Endpoint::Source),
            ("1::2::3", "::1", Endpoint::Source),
            ("::1", "::g", Endpoint::Destination),
            ("::1", "[::1]", Endpoint::Destination),
            ("::1", ":::", Endpoint::Destination),
            ("::1", "::ffff:1.2.3.04", Endpoint::Destination),
        ] {
            let line = format!("PROXY TCP6 {src} {dst} 1 2\r\n");
            assert_eq!(err(&line), ProxyError::V1BadAddress(endpoint), "{line:?}");
        }
    }

    #[test]
    fn family_mismatch() {
        for (line, endpoint) in [
            ("PROXY TCP4 ::1 1.2.3.4 1 2\r\n", Endpoint::Source),
            (
                "PROXY TCP4 1.2.3.4 ::ffff:1.2.3.4 1 2\r\n",
                Endpoint::Destination,
            ),
            ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", Endpoint::Source),
            ("PROXY TCP6 ::1 10.0.0.1 1 2\r\n", Endpoint::Destination),
        ] {
            assert_eq!(
                err(line),
                ProxyError::V1FamilyMismatch(endpoint),
                "{line:?}"
            );
        }
    }

    #[test]
    fn ports() {
        for (sport, dport, endpoint) in [
            ("65536", "1", Endpoint::Source),
            ("1", "99999", Endpoint::Destination),
            ("100000", "1", Endpoint::Source),
            ("01", "1", Endpoint::Source),
            ("00", "1", Endpoint::Source),
            ("1", "0443", Endpoint::Destination),
            ("+1", "1", Endpoint::Source),
            ("-1", "1", Endpoint::Source),
            ("1a", "1", Endpoint::Source),
            ("1", "0x10", Endpoint::Destination),
            ("1", "4294967297", Endpoint::Destination),
        ] {
            let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 {sport} {dport}\r\n");
            assert_eq!(err(&line), ProxyError::V1BadPort(endpoint), "{line:?}");
        }
    }

    #[test]
    fn rejects_before_the_crlf_arrives() {
        for (prefix, expected) in [
            ("PROXYX", ProxyError::V1Syntax(V1Syntax::Separator)),
            ("PROXY TCP7", ProxyError::V1BadProtocol),
            ("PROXY X", ProxyError::V1BadProtocol),
            ("PROXY  ", ProxyError::V1Syntax(V1Syntax::Separator)),
            (
                "PROXY TCP4 1.2.3.4x",
                ProxyError::V1BadAddress(Endpoint::Source),
            ),
            (
                "PROXY TCP4 1.2.3.04",
                ProxyError::V1BadAddress(Endpoint::Source),
            ),
            (
                "PROXY TCP4 1.2.3.4.5",
                ProxyError::V1BadAddress(Endpoint::Source),
            ),
            (
                "PROXY TCP4 1.2.3.4 5..",
                ProxyError::V1BadAddress(Endpoint::Destination),
            ),
            (
                "PROXY TCP6 ::1 ::g",
                ProxyError::V1BadAddress(Endpoint::Destination),
            ),
            (
                "PROXY TCP4 ::1 ",
                ProxyError::V1FamilyMismatch(Endpoint::Source),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 012",
                ProxyError::V1BadPort(Endpoint::Source),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 65536",
                ProxyError::V1BadPort(Endpoint::Source),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
                ProxyError::V1Syntax(V1Syntax::TooManyFields),
            ),
            (
                "PROXY TCP4 1.2.3.4  ",
                ProxyError::V1Syntax(V1Syntax::Separator),
            ),
            (
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                ProxyError::V1Syntax(V1Syntax::BareCrLf),
            ),
        ] {
            assert_eq!(decode(prefix.as_bytes(), MAX), Err(expected), "{prefix:?}");
        }
        for prefix in [
            "PROXY",
            "PROXY ",
            "PROXY T",
            "PROXY UNKN",
            "PROXY UNKNOWN",
            "PROXY UNKNOWN ",
            "PROXY UNKNOWN \x01\x02",
            "PROXY TCP4",
            "PROXY TCP4 ",
            "PROXY TCP4 1.2.",
            "PROXY TCP6 ::ffff:1.2",
            "PROXY TCP4 1.2.3.4 5.6.7.8 0",
            "PROXY TCP4 1.2.3.4 5.6.7.8 6553",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        ] {
            assert_eq!(
                decode(prefix.as_bytes(), MAX),
                Ok(Decoded::NeedMore),
                "{prefix:?}"
            );
        }
    }

    /// Fuzzer finding: "PROXY TCP4 00" was rejected as a bad IPv4 prefix while longer
    /// inputs starting with it (which could still be IPv6, e.g. "00::1") were not, so a
    /// verdict changed as bytes arrived. Both families' prefixes are now accepted until the
    /// field is complete.
    #[test]
    fn regression_digit_prefix_of_an_ipv6_in_a_tcp4_line() {
        let crash = b"PROXY TCP4 0000000000000000000000000000000000C";
        assert_eq!(decode(&crash[..13], MAX), Ok(Decoded::NeedMore));
        assert_eq!(
            decode(crash, MAX),
            Err(ProxyError::V1BadAddress(Endpoint::Source))
        );
        for cut in 0..crash.len() {
            if decode(&crash[..cut], MAX).is_err() {
                assert!(decode(crash, MAX).is_err(), "cut {cut}");
            }
        }
        assert_eq!(
            err("PROXY TCP4 00::1 1.2.3.4 1 2\r\n"),
            ProxyError::V1FamilyMismatch(Endpoint::Source)
        );
        assert_eq!(
            err("PROXY TCP4 00 1.2.3.4 1 2\r\n"),
            ProxyError::V1BadAddress(Endpoint::Source)
        );
    }

    #[test]
    fn ipv6_prefixes() {
        for ok in [
            "",
            ":",
            "::",
            "::f",
            "1:2:3:4:5:6:7:",
            "::ffff:1.2.",
            "abcd",
            "1::2:3",
        ] {
            assert!(is_ipv6_prefix(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "12345",
            ":::",
            "1::2::",
            "g",
            "1:2:3:4:5:6:7:8:9:",
            "1.2:3",
            "::1.2.3.04",
        ] {
            assert!(!is_ipv6_prefix(bad.as_bytes()), "{bad:?}");
        }
        // Every valid address text, and every prefix of it, passes.
        for text in [
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:10.0.0.1",
        ] {
            assert!(parse_ipv6(text.as_bytes()).is_some(), "{text:?}");
            for cut in 0..=text.len() {
                assert!(is_ipv6_prefix(&text.as_bytes()[..cut]), "{text:?}[..{cut}]");
            }
        }
    }

    #[test]
    fn max_len_does_not_apply_to_v1() {
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert!(matches!(
            decode(line, 0),
            Ok(Decoded::Header { consumed: 32, .. })
        ));
    }
}
