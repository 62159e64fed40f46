//! Whole-decoder tests: signature detection, every split offset, properties, and differential checks against `ppp`.

use super::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const MAX: usize = 4096;
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A PostgreSQL StartupMessage (protocol 3.0, user=u): what follows the header on the wire.
const STARTUP: &[u8] = b"\0\0\0\x10\0\x03\0\0user\0u\0\0";

fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.extend([ver_cmd, fam]);
    h.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Valid headers of every version, family and command, with TLVs, SSL and CRC32C.
fn valid_headers() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        "PROXY TCP6 2001:db8::1 ::ffff:10.1.2.3 0 5432\r\n",
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        "PROXY UNKNOWN\r\n",
        "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();

    let mut inet = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x15, 0x38];
    out.push(v2(0x21, 0x11, &inet));
    inet.extend(tlv(0x01, b"postgresql"));
    inet.extend(tlv(0x04, &[0; 5]));
    inet.extend(tlv(0x02, b"db.example.com"));
    inet.extend(tlv(0x05, b"\x01unique"));
    let mut ssl = vec![0x07, 0, 0, 0, 0];
    ssl.extend(tlv(0x21, b"TLSv1.3"));
    ssl.extend(tlv(0x22, b"alice"));
    ssl.extend(tlv(0x23, b"TLS_AES_128_GCM_SHA256"));
    ssl.extend(tlv(0x24, b"RSA-SHA256"));
    ssl.extend(tlv(0x25, b"RSA2048"));
    inet.extend(tlv(0x20, &ssl));
    out.push(v2(0x21, 0x11, &inet));

    let mut inet6 = Ipv6Addr::LOCALHOST.octets().to_vec();
    inet6.extend("2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
    inet6.extend([0xC0, 0x00, 0x15, 0x38]);
    let crc_at = 16 + inet6.len() + 3;
    inet6.extend(tlv(0x03, &[0; 4]));
    inet6.extend(tlv(0xE1, b"custom"));
    let mut sealed = v2(0x21, 0x21, &inet6);
    let crc = crc32c::crc32c(&sealed);
    sealed[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    out.push(sealed);

    let mut unix = vec![0u8; 216];
    unix[..9].copy_from_slice(b"/run/a.sk");
    unix[108..117].copy_from_slice(b"/run/b.sk");
    out.push(v2(0x21, 0x31, &unix));
    out.push(v2(0x21, 0x00, &tlv(0x05, b"id")));
    out.push(v2(0x20, 0x00, &[]));
    out.push(v2(0x20, 0x11, &[0xAA; 12]));
    out
}

fn decoded(buf: &[u8]) -> (ProxyHeader, usize) {
    match decode(buf, MAX) {
        Ok(Decoded::Header { header, consumed }) => (*header, consumed),
        other => panic!("{:?}: expected a header, got {other:?}", buf),
    }
}

#[test]
fn detection() {
    assert_eq!(decode(b"", MAX), Ok(Decoded::NeedMore));
    for sig in [&b"PROXY"[..], V2_SIG] {
        for cut in 1..sig.len() {
            assert_eq!(decode(&sig[..cut], MAX), Ok(Decoded::NeedMore), "{cut}");
        }
    }
    for not_proxy in [
        STARTUP,
        &b"\0"[..],
        b"\0\0\0\x08\x04\xd2\x16\x2f", // SSLRequest
        b"\0\0\0\x08\x04\xd2\x16\x30", // GSSENCRequest
        b"\0\0\0\x10\x04\xd2\x16\x2e", // CancelRequest
        b"\x16\x03\x01\x02\x00\x01",   // a TLS ClientHello
        b"GET / HTTP/1.1\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PX",
        b"PROX\0",
        b"\r\n\r\n\0\r\nQUIT\r",
        b"\r\n\r\n\0\r\nQUIT", // still a prefix...
        b"\r\r",
        b"\n",
    ] {
        let expected = if not_proxy == b"\r\n\r\n\0\r\nQUIT" {
            Decoded::NeedMore // ...so undecided
        } else {
            Decoded::NotProxy
        };
        assert_eq!(decode(not_proxy, MAX), Ok(expected), "{not_proxy:?}");
    }
}

/// The committed fuzz seeds are what their names say (so fuzzing starts from real headers).
/// Inputs libFuzzer found and `scripts/fuzz.sh` merged in are named by their SHA-1: they
/// are any bytes at all, so only the named seeds are checked.
#[test]
fn fuzz_seed_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/proxy_header");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/proxy_header exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let found_by_fuzzer = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if name.starts_with('.') || found_by_fuzzer {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let verdict = decode(&bytes, MAX);
        if name.starts_with("not_proxy") {
            assert_eq!(verdict, Ok(Decoded::NotProxy), "{name}");
        } else {
            let Ok(Decoded::Header { header, .. }) = verdict else {
                panic!("{name}: {verdict:?}");
            };
            let version = if name.starts_with("v1") { 1 } else { 2 };
            assert_eq!(header.version, version, "{name}");
            assert_eq!(
                header.command == Command::Local,
                name.contains("local"),
                "{name}"
            );
            if name.contains("crc32c") {
                assert!(header.tlvs.crc32c.is_some(), "{name}");
            }
            if name.contains("ssl") {
                assert!(header.tlvs.ssl.is_some(), "{name}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} seeds");
}

/// The event loop's view: a header arriving in pieces followed by the startup packet.
#[test]
fn every_split_offset() {
    for header in valid_headers() {
        let mut buf = header.clone();
        buf.extend_from_slice(STARTUP);
        let (expected, consumed) = decoded(&buf);
        assert_eq!(consumed, header.len(), "{header:?}");
        for cut in 0..header.len() {
            assert_eq!(
                decode(&buf[..cut], MAX),
                Ok(Decoded::NeedMore),
                "{header:?} cut at {cut}"
            );
        }
        for cut in header.len()..=buf.len() {
            assert_eq!(
                decode(&buf[..cut], MAX),
                Ok(Decoded::Header {
                    header: Box::new(expected.clone()),
                    consumed
                }),
                "{header:?} cut at {cut}"
            );
        }
        assert_eq!(&buf[consumed..], STARTUP);
    }
}

#[test]
fn valid_headers_decode_to_what_they_say() {
    let h = valid_headers();
    let (first, _) = decoded(&h[0]);
    assert_eq!(first.source(), Some("192.168.0.1:56324".parse().unwrap()));
    let (tcp6, _) = decoded(&h[2]);
    assert_eq!(
        tcp6.destination(),
        Some("[::ffff:10.1.2.3]:5432".parse().unwrap())
    );
    for unknown in [&h[4], &h[5], &h[9], &h[10], &h[11], &h[12]] {
        assert_eq!(decoded(unknown).0.source(), None);
    }
    let (with_tlvs, _) = decoded(&h[7]);
    assert_eq!(
        with_tlvs.tlvs.unique_id.as_deref(),
        Some(&b"\x01unique"[..])
    );
    let ssl = with_tlvs.tlvs.ssl.unwrap();
    assert_eq!(ssl.cn.as_deref(), Some(&b"alice"[..]));
    assert!(ssl.client_ssl() && ssl.cert_verified());
    let (sealed, _) = decoded(&h[8]);
    assert!(sealed.tlvs.crc32c.is_some());
    assert_eq!(sealed.source(), Some("[::1]:49152".parse().unwrap()));
}

#[test]
fn errors_have_readable_messages() {
    let errors = [
        ProxyError::V1Syntax(V1Syntax::Separator),
        ProxyError::V1Syntax(V1Syntax::BareCrLf),
        ProxyError::V1Syntax(V1Syntax::MissingFields),
        ProxyError::V1Syntax(V1Syntax::TooManyFields),
        ProxyError::V1BadProtocol,
        ProxyError::V1BadAddress(Endpoint::Source),
        ProxyError::V1FamilyMismatch(Endpoint::Destination),
        ProxyError::V1BadPort(Endpoint::Destination),
        ProxyError::V1TooLong,
        ProxyError::V2BadVersion(3),
        ProxyError::V2BadCommand(2),
        ProxyError::V2BadFamily(4),
        ProxyError::V2BadTransport(3),
        ProxyError::V2Unsupported {
            family: 1,
            transport: 2,
        },
        ProxyError::V2TooLong {
            total: 5000,
            max: 4096,
        },
        ProxyError::V2ShortAddressBlock { len: 4, needed: 12 },
        ProxyError::TlvOverrun { kind: 1 },
        ProxyError::SslSubTlvOverrun { kind: 0x22 },
        ProxyError::TlvBadLength { kind: 3, len: 5 },
        ProxyError::DuplicateTlv { kind: 2 },
        ProxyError::CrcMismatch {
            received: 1,
            computed: 2,
        },
    ];
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for (e, m) in errors.iter().zip(&messages) {
        assert!(m.starts_with("PROXY v"), "{e:?}: {m}");
        assert!(m.len() < 100, "{e:?}: {m}");
    }
    let mut unique = messages.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), messages.len(), "two errors share a message");
    assert_eq!(
        ProxyError::V1BadPort(Endpoint::Destination).to_string(),
        "PROXY v1: invalid destination port"
    );
}

/// The invariants every decode must keep, whatever the input.
fn check_invariants(buf: &[u8], max_len: usize) -> Result<(), TestCaseError> {
    let full = decode(buf, max_len);
    if let Ok(Decoded::Header { header, consumed }) = &full {
        prop_assert!(*consumed <= buf.len());
        prop_assert!(*consumed >= 15);
        if header.version == 1 {
            prop_assert!(*consumed <= V1_MAX_LEN);
        } else {
            prop_assert!(*consumed <= max_len.min(V2_MAX_LEN));
        }
        // The header alone decodes the same, and nothing shorter is complete.
        prop_assert_eq!(&decode(&buf[..*consumed], max_len), &full);
        for cut in 0..*consumed {
            prop_assert_eq!(decode(&buf[..cut], max_len), Ok(Decoded::NeedMore));
        }
    }
    // Verdicts are final: more bytes never rescue an invalid or non-PROXY prefix.
    for cut in 0..buf.len() {
        match decode(&buf[..cut], max_len) {
            Err(_) => prop_assert!(full.is_err(), "prefix {cut} failed, full gave {full:?}"),
            Ok(Decoded::NotProxy) => prop_assert_eq!(&full, &Ok(Decoded::NotProxy)),
            _ => {}
        }
    }
    Ok(())
}

fn v1_alphabet() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop::sample::select(&b" .:0123456789abcdefABCDEF TCP46UNKOW\r\n\x00%"[..]),
        0..120,
    )
}

fn arb_v2_fixed() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(&[0x20u8, 0x21, 0x22, 0x11, 0x31][..]),
        prop::sample::select(&[0x00u8, 0x01, 0x11, 0x12, 0x21, 0x31, 0x41, 0x13][..]),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(ver_cmd, fam, body)| v2(ver_cmd, fam, &body))
}

// ---- differential tests against ppp -------------------------------------------------

use ppp::v2::{self as pv2, WriteToHeader as _};

#[derive(Debug, Clone)]
struct SslSpec {
    client: u8,
    verify: u32,
    subs: Vec<(u8, Vec<u8>)>,
}

impl SslSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut v = vec![self.client];
        v.extend(self.verify.to_be_bytes());
        for (kind, value) in &self.subs {
            v.extend(tlv(*kind, value));
        }
        v
    }

    fn sub(&self, kind: u8) -> Option<Vec<u8>> {
        self.subs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
    }
}

fn arb_ssl() -> impl Strategy<Value = SslSpec> {
    let sub =
        |kind: u8| option::of(vec(any::<u8>(), 0..24)).prop_map(move |v| v.map(|v| (kind, v)));
    (
        any::<u8>(),
        any::<u32>(),
        (sub(0x21), sub(0x22), sub(0x23), sub(0x24), sub(0x25)),
        vec((0x26u8..=0xFF, vec(any::<u8>(), 0..8)), 0..3),
    )
        .prop_flat_map(|(client, verify, (a, b, c, d, e), noise)| {
            let mut subs: Vec<_> = [a, b, c, d, e].into_iter().flatten().collect();
            subs.extend(noise);
            Just(subs).prop_shuffle().prop_map(move |subs| SslSpec {
                client,
                verify,
                subs,
            })
        })
}

#[derive(Debug, Clone)]
struct TlvSpec {
    alpn: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
    unique_id: Option<Vec<u8>>,
    ssl: Option<SslSpec>,
    crc: bool,
    /// NOOP, NETNS, custom and future types: all skipped.
    others: Vec<(u8, Vec<u8>)>,
}

fn arb_tlvs() -> impl Strategy<Value = TlvSpec> {
    (
        option::of(vec(any::<u8>(), 0..32)),
        option::of(vec(any::<u8>(), 0..64)),
        option::of(vec(any::<u8>(), 0..=128)),
        option::of(arb_ssl()),
        any::<bool>(),
        vec(
            (
                prop_oneof![Just(0x04u8), Just(0x30), 0x06u8..0x20, 0xE0u8..=0xFF],
                vec(any::<u8>(), 0..16),
            ),
            0..4,
        ),
    )
        .prop_map(|(alpn, authority, unique_id, ssl, crc, others)| TlvSpec {
            alpn,
            authority,
            unique_id,
            ssl,
            crc,
            others,
        })
}

impl TlvSpec {
    /// The TLVs in a shuffled order, the CRC32C placeholder first so its offset is known.
    fn list(&self, order: &[usize]) -> Vec<(u8, Vec<u8>)> {
        let mut list: Vec<(u8, Vec<u8>)> = Vec::new();
        list.extend(self.alpn.clone().map(|v| (0x01, v)));
        list.extend(self.authority.clone().map(|v| (0x02, v)));
        list.extend(self.unique_id.clone().map(|v| (0x05, v)));
        list.extend(self.ssl.as_ref().map(|s| (0x20, s.bytes())));
        list.extend(self.others.iter().cloned());
        let mut shuffled: Vec<_> = order.iter().filter_map(|&i| list.get(i).cloned()).collect();
        // `order` is a permutation of 0..8; keep anything it missed.
        for (i, item) in list.iter().enumerate() {
            if !order.contains(&i) {
                shuffled.push(item.clone());
            }
        }
        if self.crc {
            shuffled.insert(0, (0x03, vec![0; 4]));
        }
        shuffled
    }

    fn check(&self, tlvs: &Tlvs) -> Result<(), TestCaseError> {
        prop_assert_eq!(&tlvs.alpn, &self.alpn);
        prop_assert_eq!(&tlvs.authority, &self.authority);
        prop_assert_eq!(&tlvs.unique_id, &self.unique_id);
        prop_assert_eq!(tlvs.crc32c.is_some(), self.crc);
        match (&tlvs.ssl, &self.ssl) {
            (None, None) => {}
            (Some(got), Some(want)) => {
                prop_assert_eq!(got.client, want.client);
                prop_assert_eq!(got.verify, want.verify);
                prop_assert_eq!(&got.version, &want.sub(0x21));
                prop_assert_eq!(&got.cn, &want.sub(0x22));
                prop_assert_eq!(&got.cipher, &want.sub(0x23));
                prop_assert_eq!(&got.sig_alg, &want.sub(0x24));
                prop_assert_eq!(&got.key_alg, &want.sub(0x25));
            }
            (got, want) => prop_assert!(false, "ssl: got {:?}, want {:?}", got, want),
        }
        Ok(())
    }
}

fn arb_v2_addresses() -> impl Strategy<Value = pv2::Addresses> {
    prop_oneof![
        Just(pv2::Addresses::Unspecified),
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| pv2::IPv4::new(
                Ipv4Addr::from(s),
                Ipv4Addr::from(d),
                sp,
                dp
            )
            .into()),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| pv2::IPv6::new(
                Ipv6Addr::from(s),
                Ipv6Addr::from(d),
                sp,
                dp
            )
            .into()),
        (vec(any::<u8>(), 108), vec(any::<u8>(), 108)).prop_map(|(s, d)| {
            pv2::Addresses::Unix(pv2::Unix::new(s.try_into().unwrap(), d.try_into().unwrap()))
        }),
    ]
}

/// Our view of ppp's v2 addresses.
fn from_ppp_v2(a: &pv2::Addresses) -> Addresses {
    match a {
        pv2::Addresses::Unspecified => Addresses::Unknown,
        pv2::Addresses::IPv4(a) => Addresses::Inet {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        pv2::Addresses::IPv6(a) => Addresses::Inet {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        pv2::Addresses::Unix(a) => Addresses::Unix {
            src: UnixAddr::from_bytes(&a.source),
            dst: UnixAddr::from_bytes(&a.destination),
        },
    }
}

fn arb_v1_addresses() -> impl Strategy<Value = ppp::v1::Addresses> {
    prop_oneof![
        Just(ppp::v1::Addresses::Unknown),
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| ppp::v1::Addresses::new_tcp4(s, d, sp, dp)),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| ppp::v1::Addresses::new_tcp6(s, d, sp, dp)),
        // Compressed forms and v4-mapped addresses are common in real lines.
        (any::<u16>(), any::<[u8; 4]>(), any::<u16>(), any::<u16>()).prop_map(|(g, v4, sp, dp)| {
            ppp::v1::Addresses::new_tcp6(
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, g),
                Ipv4Addr::from(v4).to_ipv6_mapped(),
                sp,
                dp,
            )
        }),
    ]
}

fn from_ppp_v1(a: &ppp::v1::Addresses) -> Addresses {
    match a {
        ppp::v1::Addresses::Unknown => Addresses::Unknown,
        ppp::v1::Addresses::Tcp4(a) => Addresses::Inet {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        ppp::v1::Addresses::Tcp6(a) => Addresses::Inet {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
    }
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(buf in vec(any::<u8>(), 0..400), max in 0usize..5000) {
        check_invariants(&buf, max)?;
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn never_panics_after_a_v1_signature(tail in v1_alphabet()) {
        let mut buf = b"PROXY ".to_vec();
        buf.extend(tail);
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn never_panics_after_a_v1_protocol(
        proto in prop::sample::select(&["TCP4 ", "TCP6 ", "UNKNOWN", "UNKNOWN "][..]),
        tail in v1_alphabet(),
    ) {
        let mut buf = format!("PROXY {proto}").into_bytes();
        buf.extend(tail);
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn v1_address_fields_are_judged_consistently(
        proto in prop::sample::select(&["TCP4", "TCP6"][..]),
        fields in vec(prop::sample::select(&b"0019aAfF:. "[..]), 0..64),
        end in prop::sample::select(vec!["", "\r", "\r\n"]),
    ) {
        let mut buf = format!("PROXY {proto} ").into_bytes();
        buf.extend(fields);
        buf.extend(end.as_bytes());
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn never_panics_after_a_v2_signature(tail in vec(any::<u8>(), 0..400), max in 0usize..700) {
        let mut buf = V2_SIG.to_vec();
        buf.extend(tail);
        check_invariants(&buf, max)?;
    }

    #[test]
    fn never_panics_on_v2_bodies(buf in arb_v2_fixed(), max in 16usize..400) {
        check_invariants(&buf, max)?;
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn mutated_valid_headers_keep_the_invariants(
        which in 0usize..15,
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        tail in vec(any::<u8>(), 0..8),
    ) {
        let headers = valid_headers();
        let mut buf = headers[which % headers.len()].clone();
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        buf.extend(tail);
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn v1_matches_ppp(addresses in arb_v1_addresses(), tail in vec(any::<u8>(), 0..16)) {
        let line = addresses.to_string();
        let theirs = ppp::v1::Header::try_from(line.as_str()).expect("ppp parses its own line");
        let mut buf = line.clone().into_bytes();
        buf.extend(&tail);
        let Ok(Decoded::Header { header, consumed }) = decode(&buf, MAX) else {
            return Err(TestCaseError::fail(format!("{line:?}: {:?}", decode(&buf, MAX))));
        };
        prop_assert_eq!(consumed, line.len());
        prop_assert_eq!(&header.addresses, &from_ppp_v1(&addresses));
        prop_assert_eq!(&header.addresses, &from_ppp_v1(&theirs.addresses));
        prop_assert_eq!(header.version, 1);
        check_invariants(&buf, MAX)?;
    }

    #[test]
    fn v2_matches_ppp(
        addresses in arb_v2_addresses(),
        tlvs in arb_tlvs(),
        order in Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
        tail in vec(any::<u8>(), 0..16),
    ) {
        let list = tlvs.list(&order);
        let mut builder = pv2::Builder::with_addresses(
            pv2::Version::Two | pv2::Command::Proxy,
            pv2::Protocol::Stream,
            addresses,
        );
        for (kind, value) in &list {
            builder = builder.write_tlv(*kind, value).unwrap();
        }
        let mut bytes = builder.build().unwrap();
        if tlvs.crc {
            let at = 16 + addresses.to_bytes().unwrap().len() + 3;
            let crc = crc32c::crc32c(&bytes);
            bytes[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        }
        let theirs = pv2::Header::try_from(bytes.as_slice()).expect("ppp parses its own header");

        let mut buf = bytes.clone();
        buf.extend(&tail);
        let Ok(Decoded::Header { header, consumed }) = decode(&buf, V2_MAX_LEN) else {
            return Err(TestCaseError::fail(format!("{:?}", decode(&buf, V2_MAX_LEN))));
        };
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(consumed, theirs.len());
        prop_assert_eq!(header.command, Command::Proxy);
        prop_assert_eq!(&header.addresses, &from_ppp_v2(&addresses));
        prop_assert_eq!(&header.addresses, &from_ppp_v2(&theirs.addresses));
        if addresses == pv2::Addresses::Unspecified {
            // AF_UNSPEC: the whole block is ignored, TLVs included (ppp agrees, below).
            prop_assert_eq!(&header.tlvs, &Tlvs::default());
            prop_assert_eq!(theirs.tlvs().count(), 0);
        } else {
            tlvs.check(&header.tlvs)?;
        }
        // And ppp's own TLV walk agrees on every value we keep.
        for t in theirs.tlvs() {
            let t = t.expect("ppp walks its own TLVs");
            let ours = match t.kind {
                0x01 => header.tlvs.alpn.clone(),
                0x02 => header.tlvs.authority.clone(),
                0x05 => header.tlvs.unique_id.clone(),
                0x03 => header.tlvs.crc32c.map(|c| c.to_be_bytes().to_vec()),
                0x20 => tlvs.ssl.as_ref().map(SslSpec::bytes),
                _ => continue,
            };
            prop_assert_eq!(ours.as_deref(), Some(t.value.as_ref()));
        }
        check_invariants(&buf, V2_MAX_LEN)?;
    }

    #[test]
    fn v2_local_matches_ppp(addresses in arb_v2_addresses(), junk in vec(any::<u8>(), 0..64)) {
        let bytes = pv2::Builder::with_addresses(
            pv2::Version::Two | pv2::Command::Local,
            pv2::Protocol::Stream,
            addresses,
        )
        .write_payload(junk.as_slice())
        .unwrap()
        .build()
        .unwrap();
        let theirs = pv2::Header::try_from(bytes.as_slice()).expect("ppp parses LOCAL");
        let (header, consumed) = decoded(&bytes);
        prop_assert_eq!(consumed, theirs.len());
        prop_assert_eq!(header.command, Command::Local);
        prop_assert_eq!(header.source(), None);
        prop_assert_eq!(header.addresses, Addresses::Unknown);
    }
}

#[test]
fn cloud_load_balancers_name_their_private_endpoints() {
    let addrs = [10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x15, 0x38];
    let decode_with = |tlvs: &[u8]| {
        let mut body = addrs.to_vec();
        body.extend_from_slice(tlvs);
        match decode(&v2(0x21, 0x11, &body), MAX) {
            Ok(Decoded::Header { header, .. }) => Ok(header.tlvs.endpoint),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    };
    let aws = tlv(0xEA, b"\x01vpce-0123456789abcdef0");
    assert_eq!(
        decode_with(&aws).unwrap().unwrap().to_string(),
        "aws:vpce-0123456789abcdef0"
    );
    let azure = tlv(0xEE, &[0x01, 0x2a, 0x00, 0x00, 0x01]);
    assert_eq!(
        decode_with(&azure).unwrap(),
        Some(CloudEndpoint::AzureLink(0x0100_002a))
    );
    let gcp = tlv(0xE0, &1234567890123u64.to_be_bytes());
    assert_eq!(
        decode_with(&gcp).unwrap().unwrap().to_string(),
        "gcp:1234567890123"
    );
    // Other sub-types and malformed values are skipped, not refused: they are the load
    // balancer's business. With two, the first counts.
    assert_eq!(decode_with(&tlv(0xEA, b"\x02other")).unwrap(), None);
    assert_eq!(decode_with(&tlv(0xEE, &[0x01, 0x2a])).unwrap(), None);
    assert_eq!(decode_with(&tlv(0xE0, &[1, 2, 3])).unwrap(), None);
    assert_eq!(
        decode_with(&[aws.clone(), gcp.clone()].concat())
            .unwrap()
            .unwrap()
            .to_string(),
        "aws:vpce-0123456789abcdef0"
    );
    // Control characters in an AWS id never reach a log as such.
    let odd = tlv(0xEA, b"\x01vpce-\n\x1b[31m");
    assert_eq!(
        decode_with(&odd).unwrap().unwrap().to_string(),
        "aws:vpce-??[31m"
    );
}
