//! PROXY v2: the binary header — signature, version/command, family/transport, length, address block, TLVs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    tlv, Addresses, Command, Decoded, ProxyError, ProxyHeader, Tlvs, UnixAddr, V2_FIXED_LEN,
};

const FAMILY_UNSPEC: u8 = 0x0;
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
const FAMILY_UNIX: u8 = 0x3;
const TRANSPORT_UNSPEC: u8 = 0x0;
const TRANSPORT_STREAM: u8 = 0x1;
const TRANSPORT_DGRAM: u8 = 0x2;

const INET_BLOCK: usize = 4 + 4 + 2 + 2;
const INET6_BLOCK: usize = 16 + 16 + 2 + 2;
const UNIX_BLOCK: usize = 108 + 108;

/// Decodes a buffer that starts with the 12-byte v2 signature.
///
/// Each fixed field is checked as soon as its byte is there, and the length against
/// `max_len` and the family's address block before waiting for the rest, so a bad or
/// oversized header never makes the caller buffer more.
pub(super) fn decode(buf: &[u8], max_len: usize) -> Result<Decoded, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Decoded::NeedMore);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2BadVersion(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        other => return Err(ProxyError::V2BadCommand(other)),
    };

    let Some(&fam) = buf.get(13) else {
        return Ok(Decoded::NeedMore);
    };
    let (family, transport) = (fam >> 4, fam & 0x0F);
    if family > FAMILY_UNIX {
        return Err(ProxyError::V2BadFamily(family));
    }
    if transport > TRANSPORT_DGRAM {
        return Err(ProxyError::V2BadTransport(transport));
    }
    // LOCAL ignores the family (the spec says so); PROXY must describe a TCP-like stream,
    // as we are a TCP service. AF_UNSPEC may come with an unspecified transport.
    let address_block = match (command, family, transport) {
        (Command::Local, _, _) => 0,
        (Command::Proxy, FAMILY_UNSPEC, TRANSPORT_UNSPEC | TRANSPORT_STREAM) => 0,
        (Command::Proxy, FAMILY_INET, TRANSPORT_STREAM) => INET_BLOCK,
        (Command::Proxy, FAMILY_INET6, TRANSPORT_STREAM) => INET6_BLOCK,
        (Command::Proxy, FAMILY_UNIX, TRANSPORT_STREAM) => UNIX_BLOCK,
        _ => return Err(ProxyError::V2Unsupported { family, transport }),
    };

    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(Decoded::NeedMore);
    };
    let len = u16::from_be_bytes([hi, lo]);
    let total = V2_FIXED_LEN + usize::from(len);
    if total > max_len {
        return Err(ProxyError::V2TooLong {
            total,
            max: max_len,
        });
    }
    if usize::from(len) < address_block {
        return Err(ProxyError::V2ShortAddressBlock {
            len,
            needed: address_block,
        });
    }
    let Some(header) = buf.get(..total) else {
        return Ok(Decoded::NeedMore);
    };

    if command == Command::Local || family == FAMILY_UNSPEC {
        // The whole block is skipped: a LOCAL connection is the proxy itself, and with
        // AF_UNSPEC the spec says to ignore the address information, whose layout (and
        // so where TLVs would start) is unknown.
        return Ok(Decoded::Header {
            header: Box::new(ProxyHeader {
                version: 2,
                command,
                addresses: Addresses::Unknown,
                tlvs: Tlvs::default(),
            }),
            consumed: total,
        });
    }
    let block = header.get(V2_FIXED_LEN..).unwrap_or_default();
    let addresses = match family {
        FAMILY_INET => inet(block),
        FAMILY_INET6 => inet6(block),
        FAMILY_UNIX => unix(block),
        _ => None,
    }
    .unwrap_or(Addresses::Unknown);
    let tlvs = tlv::parse(header, V2_FIXED_LEN + address_block)?;
    Ok(Decoded::Header {
        header: Box::new(ProxyHeader {
            version: 2,
            command,
            addresses,
            tlvs,
        }),
        consumed: total,
    })
}

// The address readers below get a block whose length was checked against the family, so
// `None` cannot happen; it keeps them free of indexing that could panic.

fn inet(block: &[u8]) -> Option<Addresses> {
    let (src, rest) = block.split_first_chunk::<4>()?;
    let (dst, rest) = rest.split_first_chunk::<4>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, _) = rest.split_first_chunk::<2>()?;
    Some(Addresses::Inet {
        src: SocketAddr::new(Ipv4Addr::from(*src).into(), u16::from_be_bytes(*sport)),
        dst: SocketAddr::new(Ipv4Addr::from(*dst).into(), u16::from_be_bytes(*dport)),
    })
}

fn inet6(block: &[u8]) -> Option<Addresses> {
    let (src, rest) = block.split_first_chunk::<16>()?;
    let (dst, rest) = rest.split_first_chunk::<16>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, _) = rest.split_first_chunk::<2>()?;
    Some(Addresses::Inet {
        src: SocketAddr::new(Ipv6Addr::from(*src).into(), u16::from_be_bytes(*sport)),
        dst: SocketAddr::new(Ipv6Addr::from(*dst).into(), u16::from_be_bytes(*dport)),
    })
}

fn unix(block: &[u8]) -> Option<Addresses> {
    let (src, rest) = block.split_first_chunk::<108>()?;
    let (dst, _) = rest.split_first_chunk::<108>()?;
    Some(Addresses::Unix {
        src: UnixAddr::from_bytes(src),
        dst: UnixAddr::from_bytes(dst),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, Addresses, Command, Decoded, ProxyError, V2_MAX_LEN};
    use super::*;

    const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    const MAX: usize = 4096;

    /// Signature, the two type bytes, the length of `body`, then `body`.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = SIG.to_vec();
        h.extend([ver_cmd, fam]);
        h.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn header(buf: &[u8]) -> (super::super::ProxyHeader, usize) {
        match decode(buf, MAX) {
            Ok(Decoded::Header { header, consumed }) => {
                assert_eq!(header.version, 2);
                (*header, consumed)
            }
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn inet4_body() -> Vec<u8> {
        vec![10, 0, 0, 1, 192, 168, 1, 2, 0x1F, 0x90, 0x15, 0x38]
    }

    #[test]
    fn proxy_tcp4() {
        let buf = v2(0x21, 0x11, &inet4_body());
        let (h, consumed) = header(&buf);
        assert_eq!(consumed, 28);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source(), Some("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(h.destination(), Some("192.168.1.2:5432".parse().unwrap()));
        assert_eq!(h.tlvs, Tlvs::default());
    }

    #[test]
    fn proxy_tcp6() {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "fe80::1:2".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend(dst.octets());
        body.extend([0xFF, 0xFF, 0, 0]);
        let (h, consumed) = header(&v2(0x21, 0x21, &body));
        assert_eq!(consumed, 52);
        assert_eq!(
            h.addresses,
            Addresses::Inet {
                src: "[2001:db8::7]:65535".parse().unwrap(),
                dst: "[fe80::1:2]:0".parse().unwrap(),
            }
        );
    }

    #[test]
    fn proxy_unix() {
        let mut body = vec![0u8; UNIX_BLOCK];
        body[..12].copy_from_slice(b"/tmp/src.sck");
        body[108] = 0; // abstract destination
        body[109..113].copy_from_slice(b"dest");
        let (h, consumed) = header(&v2(0x21, 0x31, &body));
        assert_eq!(consumed, 16 + UNIX_BLOCK);
        let Addresses::Unix { src, dst } = &h.addresses else {
            panic!("{:?}", h.addresses)
        };
        assert_eq!(src.path(), b"/tmp/src.sck");
        assert_eq!(dst.path(), b"\0dest");
        assert_eq!(&src.raw()[..], &body[..108]);
        assert_eq!(h.source(), None);
    }

    #[test]
    fn proxy_unspec_skips_its_block() {
        for fam in [0x00, 0x01] {
            for body in [&[][..], &[0x01, 0, 2, b'h', b'2'], &[0xEE; 7]] {
                let buf = v2(0x21, fam, body);
                let (h, consumed) = header(&buf);
                assert_eq!(consumed, buf.len());
                assert_eq!(h.command, Command::Proxy);
                assert_eq!(h.addresses, Addresses::Unknown);
                assert_eq!(h.source(), None);
                assert_eq!(h.tlvs, Tlvs::default());
            }
        }
    }

    #[test]
    fn local_skips_its_block() {
        let (h, consumed) = header(&v2(0x20, 0x00, &[]));
        assert_eq!((h.command, consumed), (Command::Local, 16));
        assert_eq!(h.addresses, Addresses::Unknown);
        // len > 0 is honoured: the bytes are skipped, whatever the family says, even junk
        // that would not parse as TLVs, and the data after the header is left alone.
        for fam in [0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x01, 0x02] {
            let mut buf = v2(0x20, fam, &[0xEE; 40]);
            let len = buf.len();
            buf.extend(b"\0\0\0\x08\x04\xd2\x16\x2f");
            let (h, consumed) = header(&buf);
            assert_eq!(consumed, len, "fam {fam:#x}");
            assert_eq!(h.source(), None);
            assert_eq!(h.tlvs, Tlvs::default());
        }
    }

    #[test]
    fn bad_version() {
        for ver_cmd in [0x01, 0x11, 0x31, 0xF1] {
            let buf = v2(ver_cmd, 0x11, &inet4_body());
            assert_eq!(
                decode(&buf, MAX),
                Err(ProxyError::V2BadVersion(ver_cmd >> 4))
            );
            // Decided as soon as the 13th byte is there.
            assert_eq!(
                decode(&buf[..13], MAX),
                Err(ProxyError::V2BadVersion(ver_cmd >> 4))
            );
        }
    }

    #[test]
    fn bad_command() {
        for cmd in 2..=0xF {
            let buf = v2(0x20 | cmd, 0x11, &inet4_body());
            assert_eq!(decode(&buf, MAX), Err(ProxyError::V2BadCommand(cmd)));
            assert_eq!(decode(&buf[..13], MAX), Err(ProxyError::V2BadCommand(cmd)));
        }
    }

    #[test]
    fn bad_family_and_transport() {
        for cmd in [0x20, 0x21] {
            for fam in 4..=0xF {
                let buf = v2(cmd, (fam << 4) | 1, &[0; 216]);
                assert_eq!(decode(&buf, MAX), Err(ProxyError::V2BadFamily(fam)));
                assert_eq!(decode(&buf[..14], MAX), Err(ProxyError::V2BadFamily(fam)));
            }
            for transport in 3..=0xF {
                let buf = v2(cmd, 0x10 | transport, &[0; 216]);
                assert_eq!(
                    decode(&buf[..14], MAX),
                    Err(ProxyError::V2BadTransport(transport))
                );
            }
        }
    }

    #[test]
    fn proxy_rejects_datagram_and_unspecified_transport_with_an_address() {
        for fam in [0x02, 0x12, 0x22, 0x32, 0x10, 0x20, 0x30] {
            let buf = v2(0x21, fam, &[0; 216]);
            let expected = ProxyError::V2Unsupported {
                family: fam >> 4,
                transport: fam & 0xF,
            };
            assert_eq!(decode(&buf, MAX), Err(expected.clone()));
            assert_eq!(decode(&buf[..14], MAX), Err(expected));
        }
    }

    #[test]
    fn length_must_cover_the_address_block() {
        for (fam, needed) in [(0x11, INET_BLOCK), (0x21, INET6_BLOCK), (0x31, UNIX_BLOCK)] {
            for short in [0, needed - 1] {
                let buf = v2(0x21, fam, &vec![0; short]);
                let expected = ProxyError::V2ShortAddressBlock {
                    len: short as u16,
                    needed,
                };
                assert_eq!(decode(&buf, MAX), Err(expected.clone()));
                assert_eq!(decode(&buf[..16], MAX), Err(expected));
            }
            let buf = v2(0x21, fam, &vec![0; needed]);
            assert_eq!(header(&buf).1, 16 + needed);
        }
    }

    #[test]
    fn too_long_is_rejected_before_the_bytes_arrive() {
        let mut buf = SIG.to_vec();
        buf.extend([0x21, 0x11]);
        buf.extend(5000u16.to_be_bytes());
        assert_eq!(
            decode(&buf, MAX),
            Err(ProxyError::V2TooLong {
                total: 5016,
                max: MAX
            })
        );
        // The cap is on the whole header: exactly max_len is fine.
        let body = vec![0x04; 100]; // not valid TLVs, but never parsed: it's too long
        let full = v2(0x21, 0x00, &body);
        assert!(matches!(
            decode(&full, 115),
            Err(ProxyError::V2TooLong {
                total: 116,
                max: 115
            })
        ));
        let mut noop = inet4_body();
        noop.extend([0x04, 0, 97]);
        noop.extend([0; 97]);
        let ok = v2(0x21, 0x11, &noop);
        assert_eq!(ok.len(), 128);
        assert!(matches!(
            decode(&ok, 128),
            Ok(Decoded::Header { consumed: 128, .. })
        ));
        // LOCAL is capped too.
        assert!(matches!(
            decode(&v2(0x20, 0, &[0; 200]), 200),
            Err(ProxyError::V2TooLong { .. })
        ));
        // The largest header the format allows.
        let huge = v2(0x21, 0x00, &{
            let mut b = vec![0xE0, 0xFF, 0xFC];
            b.resize(65535, 0);
            b
        });
        assert_eq!(huge.len(), V2_MAX_LEN);
        assert!(matches!(
            decode(&huge, V2_MAX_LEN),
            Ok(Decoded::Header {
                consumed: V2_MAX_LEN,
                ..
            })
        ));
    }

    #[test]
    fn waits_for_the_declared_length() {
        let mut body = inet4_body();
        body.extend([0x02, 0, 3, b'a', b'b', b'c']);
        let buf = v2(0x21, 0x11, &body);
        for cut in 12..buf.len() {
            assert_eq!(decode(&buf[..cut], MAX), Ok(Decoded::NeedMore), "cut {cut}");
        }
        let (h, consumed) = header(&buf);
        assert_eq!(consumed, buf.len());
        assert_eq!(h.tlvs.authority.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn tlv_errors_surface() {
        let mut body = inet4_body();
        body.extend([0x01, 0, 9, b'x']);
        assert_eq!(
            decode(&v2(0x21, 0x11, &body), MAX),
            Err(ProxyError::TlvOverrun { kind: 0x01 })
        );
        // A TLV cannot borrow bytes from after the header.
        let mut buf = v2(0x21, 0x11, &body);
        buf.extend([0; 64]);
        assert_eq!(
            decode(&buf, MAX),
            Err(ProxyError::TlvOverrun { kind: 0x01 })
        );
    }

    #[test]
    fn crc32c_covers_the_fixed_part_and_addresses() {
        let mut body = inet4_body();
        body.extend([0x03, 0, 4, 0, 0, 0, 0]);
        let mut buf = v2(0x21, 0x11, &body);
        let crc = crc32c::crc32c(&buf);
        buf[31..35].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(header(&buf).0.tlvs.crc32c, Some(crc));
        // A spoofed source address with the old checksum is caught.
        let mut spoofed = buf.clone();
        spoofed[16] = 11;
        assert!(matches!(
            decode(&spoofed, MAX),
            Err(ProxyError::CrcMismatch { received, .. }) if received == crc
        ));
    }
}
