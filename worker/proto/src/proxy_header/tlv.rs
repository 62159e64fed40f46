//! PROXY v2 TLVs: keeps ALPN, authority, unique ID, SSL details and the cloud load balancers' endpoint ids, verifies CRC32C, skips the rest.

use super::ProxyError;

const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_SUBTYPE_SSL_SIG_ALG: u8 = 0x24;
const PP2_SUBTYPE_SSL_KEY_ALG: u8 = 0x25;
/// GCP Private Service Connect: the PSC connection id, 8 bytes big-endian.
const PP2_TYPE_GCP: u8 = 0xE0;
/// AWS Network Load Balancer: sub-type 0x01 carries the VPC endpoint id (ASCII).
const PP2_TYPE_AWS: u8 = 0xEA;
const PP2_SUBTYPE_AWS_VPCE_ID: u8 = 0x01;
/// Azure Private Link: sub-type 0x01 carries the private endpoint's link id, 4 bytes
/// little-endian.
const PP2_TYPE_AZURE: u8 = 0xEE;
const PP2_SUBTYPE_AZURE_LINKID: u8 = 0x01;

const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The spec caps the unique ID at 128 bytes.
const UNIQUE_ID_MAX: usize = 128;
/// `client` (1 byte) and `verify` (4 bytes) precede the SSL sub-TLVs.
const SSL_FIXED_LEN: usize = 5;

/// The TLVs we keep from a v2 header. Values are raw bytes as sent (the spec calls most of
/// them US-ASCII or UTF-8 strings; decode them lossily for logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// PP2_TYPE_ALPN: the negotiated application protocol.
    pub alpn: Option<Vec<u8>>,
    /// PP2_TYPE_AUTHORITY: the host name the client asked for (TLS SNI).
    pub authority: Option<Vec<u8>>,
    /// PP2_TYPE_UNIQUE_ID: the proxy's opaque connection id (at most 128 bytes).
    pub unique_id: Option<Vec<u8>>,
    /// PP2_TYPE_SSL: how the client reached the proxy over TLS.
    pub ssl: Option<SslInfo>,
    /// PP2_TYPE_CRC32C, when present; a header whose checksum does not match is rejected.
    pub crc32c: Option<u32>,
    /// The cloud private endpoint the connection came through, if a load balancer said.
    pub endpoint: Option<CloudEndpoint>,
}

/// Which private endpoint of which cloud a connection came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudEndpoint {
    /// AWS VPC endpoint id (`vpce-...`), as sent.
    AwsVpce(Vec<u8>),
    /// Azure Private Link id.
    AzureLink(u32),
    /// GCP Private Service Connect connection id.
    GcpPsc(u64),
}

impl std::fmt::Display for CloudEndpoint {
    /// `aws:vpce-0abc`, `azure:123`, `gcp:456`: how logs and SHOW CLIENTS name it, and
    /// what an hba `endpoint=` option matches.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloudEndpoint::AwsVpce(id) => {
                f.write_str("aws:")?;
                // Printable ASCII only: the id comes from the wire.
                for &b in id {
                    let c = if b.is_ascii_graphic() { b as char } else { '?' };
                    write!(f, "{c}")?;
                }
                Ok(())
            }
            CloudEndpoint::AzureLink(id) => write!(f, "azure:{id}"),
            CloudEndpoint::GcpPsc(id) => write!(f, "gcp:{id}"),
        }
    }
}

/// The PP2_TYPE_SSL TLV and its sub-TLVs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslInfo {
    /// Bit field of PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS.
    pub client: u8,
    /// Zero when the client presented a certificate and it was verified.
    pub verify: u32,
    pub version: Option<Vec<u8>>,
    pub cn: Option<Vec<u8>>,
    pub cipher: Option<Vec<u8>>,
    pub sig_alg: Option<Vec<u8>>,
    pub key_alg: Option<Vec<u8>>,
}

impl SslInfo {
    /// The client connected to the proxy over SSL/TLS.
    pub fn client_ssl(&self) -> bool {
        self.client & PP2_CLIENT_SSL != 0
    }

    /// The client presented a certificate on this connection.
    pub fn cert_in_connection(&self) -> bool {
        self.client & PP2_CLIENT_CERT_CONN != 0
    }

    /// The client presented a certificate at least once in this TLS session.
    pub fn cert_in_session(&self) -> bool {
        self.client & PP2_CLIENT_CERT_SESS != 0
    }

    /// The client's certificate was presented and verified.
    pub fn cert_verified(&self) -> bool {
        self.verify == 0
    }
}

/// One TLV: its type, its value, and where the value starts within the parsed slice.
struct Tlv<'a> {
    kind: u8,
    value: &'a [u8],
    value_offset: usize,
}

/// Walks the TLVs of `bytes`; `overrun` builds the error for one that does not fit.
fn walk<'a>(
    bytes: &'a [u8],
    overrun: fn(u8) -> ProxyError,
) -> impl Iterator<Item = Result<Tlv<'a>, ProxyError>> + 'a {
    let mut offset = 0usize;
    std::iter::from_fn(move || {
        let rest = bytes.get(offset..).filter(|r| !r.is_empty())?;
        let (&kind, rest) = rest.split_first()?;
        let tlv = match rest {
            [hi, lo, value @ ..] => {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                value.get(..len).map(|value| Tlv {
                    kind,
                    value,
                    value_offset: offset + 3,
                })
            }
            _ => None,
        };
        match tlv {
            Some(tlv) => {
                offset = tlv.value_offset + tlv.value.len();
                Some(Ok(tlv))
            }
            None => {
                offset = bytes.len(); // stop after reporting
                Some(Err(overrun(kind)))
            }
        }
    })
}

/// Stores a value in a slot that must still be empty.
fn keep<T>(slot: &mut Option<T>, value: T, kind: u8) -> Result<(), ProxyError> {
    if slot.is_some() {
        return Err(ProxyError::DuplicateTlv { kind });
    }
    *slot = Some(value);
    Ok(())
}

fn tlv_len(value: &[u8]) -> u16 {
    u16::try_from(value.len()).unwrap_or(u16::MAX)
}

/// Parses the TLVs in `header[start..]` (`header` is the whole v2 header, which the CRC32C
/// covers) and verifies the checksum if one is present.
pub(super) fn parse(header: &[u8], start: usize) -> Result<Tlvs, ProxyError> {
    let mut tlvs = Tlvs::default();
    let mut crc_at = None;
    let area = header.get(start..).unwrap_or_default();
    for tlv in walk(area, |kind| ProxyError::TlvOverrun { kind }) {
        let Tlv {
            kind,
            value,
            value_offset,
        } = tlv?;
        match kind {
            PP2_TYPE_ALPN => keep(&mut tlvs.alpn, value.to_vec(), kind)?,
            PP2_TYPE_AUTHORITY => keep(&mut tlvs.authority, value.to_vec(), kind)?,
            PP2_TYPE_UNIQUE_ID => {
                if value.len() > UNIQUE_ID_MAX {
                    return Err(ProxyError::TlvBadLength {
                        kind,
                        len: tlv_len(value),
                    });
                }
                keep(&mut tlvs.unique_id, value.to_vec(), kind)?;
            }
            PP2_TYPE_CRC32C => {
                let received: [u8; 4] = value.try_into().map_err(|_| ProxyError::TlvBadLength {
                    kind,
                    len: tlv_len(value),
                })?;
                keep(&mut tlvs.crc32c, u32::from_be_bytes(received), kind)?;
                crc_at = Some(start + value_offset);
            }
            PP2_TYPE_SSL => keep(&mut tlvs.ssl, parse_ssl(value)?, kind)?,
            // Vendor TLVs: read when well formed, else skipped. A malformed or second one
            // is the load balancer's business and no reason to refuse the connection.
            PP2_TYPE_AWS | PP2_TYPE_AZURE | PP2_TYPE_GCP if tlvs.endpoint.is_none() => {
                tlvs.endpoint = cloud_endpoint(kind, value);
            }
            // NOOP, NETNS, the custom/experimental ranges and anything newer: skipped.
            _ => {}
        }
    }
    if let (Some(received), Some(at)) = (tlvs.crc32c, crc_at) {
        let computed = crc32c_zeroed(header, at);
        if computed != received {
            return Err(ProxyError::CrcMismatch { received, computed });
        }
    }
    Ok(tlvs)
}

/// The private endpoint a cloud load balancer's TLV names, if it is well formed.
fn cloud_endpoint(kind: u8, value: &[u8]) -> Option<CloudEndpoint> {
    match (kind, value) {
        (PP2_TYPE_AWS, [PP2_SUBTYPE_AWS_VPCE_ID, id @ ..]) if !id.is_empty() => {
            Some(CloudEndpoint::AwsVpce(id.to_vec()))
        }
        (PP2_TYPE_AZURE, [PP2_SUBTYPE_AZURE_LINKID, a, b, c, d]) => {
            Some(CloudEndpoint::AzureLink(u32::from_le_bytes([
                *a, *b, *c, *d,
            ])))
        }
        (PP2_TYPE_GCP, id) => id
            .try_into()
            .ok()
            .map(|id| CloudEndpoint::GcpPsc(u64::from_be_bytes(id))),
        _ => None,
    }
}

/// CRC32C of `header` with the four bytes at `at` taken as zero, without copying the header.
fn crc32c_zeroed(header: &[u8], at: usize) -> u32 {
    let (before, rest) = header.split_at(at.min(header.len()));
    let after = rest.get(4..).unwrap_or_default();
    let crc = crc32c::crc32c(before);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, after)
}

fn parse_ssl(value: &[u8]) -> Result<SslInfo, ProxyError> {
    let Some(([client, v0, v1, v2, v3], subs)) = value.split_first_chunk::<SSL_FIXED_LEN>() else {
        return Err(ProxyError::TlvBadLength {
            kind: PP2_TYPE_SSL,
            len: tlv_len(value),
        });
    };
    let mut ssl = SslInfo {
        client: *client,
        verify: u32::from_be_bytes([*v0, *v1, *v2, *v3]),
        ..SslInfo::default()
    };
    for sub in walk(subs, |kind| ProxyError::SslSubTlvOverrun { kind }) {
        let Tlv { kind, value, .. } = sub?;
        let slot = match kind {
            PP2_SUBTYPE_SSL_VERSION => &mut ssl.version,
            PP2_SUBTYPE_SSL_CN => &mut ssl.cn,
            PP2_SUBTYPE_SSL_CIPHER => &mut ssl.cipher,
            PP2_SUBTYPE_SSL_SIG_ALG => &mut ssl.sig_alg,
            PP2_SUBTYPE_SSL_KEY_ALG => &mut ssl.key_alg,
            _ => continue,
        };
        keep(slot, value.to_vec(), kind)?;
    }
    Ok(ssl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// A fake header: 16 bytes of prefix (the CRC covers them) and then the TLV area.
    fn with_prefix(area: &[u8]) -> Vec<u8> {
        let mut h = b"0123456789abcdef".to_vec();
        h.extend_from_slice(area);
        h
    }

    fn parse_area(area: &[u8]) -> Result<Tlvs, ProxyError> {
        parse(&with_prefix(area), 16)
    }

    fn ssl_value(client: u8, verify: u32, subs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut v = vec![client];
        v.extend_from_slice(&verify.to_be_bytes());
        for (kind, value) in subs {
            v.extend(tlv(*kind, value));
        }
        v
    }

    /// Sets the CRC32C TLV of a header the way a sender does: zero it, checksum the whole
    /// header with a fresh CRC computation, write it back.
    fn seal(header: &mut [u8], value_at: usize) {
        header[value_at..value_at + 4].fill(0);
        let crc = crc32c::crc32c(header);
        header[value_at..value_at + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // RFC 3720 B.4 check value for "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            crc32c_zeroed(b"ab\x01\x02\x03\x04cd", 2),
            crc32c::crc32c(b"ab\0\0\0\0cd")
        );
    }

    #[test]
    fn empty_area() {
        assert_eq!(parse_area(&[]), Ok(Tlvs::default()));
    }

    #[test]
    fn keeps_known_tlvs_and_skips_others() {
        let mut area = Vec::new();
        area.extend(tlv(0x04, &[0; 7])); // NOOP
        area.extend(tlv(PP2_TYPE_ALPN, b"postgresql"));
        area.extend(tlv(0x30, b"netns0")); // NETNS: not kept
        area.extend(tlv(PP2_TYPE_AUTHORITY, b"db.example.com"));
        area.extend(tlv(0xE5, &[1, 2, 3])); // custom range
        area.extend(tlv(PP2_TYPE_UNIQUE_ID, &[0xAB; UNIQUE_ID_MAX]));
        area.extend(tlv(0x04, &[])); // empty NOOP, and a second one
        area.extend(tlv(0xFF, &[]));
        let tlvs = parse_area(&area).unwrap();
        assert_eq!(tlvs.alpn.as_deref(), Some(&b"postgresql"[..]));
        assert_eq!(tlvs.authority.as_deref(), Some(&b"db.example.com"[..]));
        assert_eq!(tlvs.unique_id, Some(vec![0xAB; UNIQUE_ID_MAX]));
        assert_eq!(tlvs.ssl, None);
        assert_eq!(tlvs.crc32c, None);
    }

    #[test]
    fn ssl_with_all_sub_tlvs() {
        let value = ssl_value(
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
            0,
            &[
                (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
                (PP2_SUBTYPE_SSL_CN, b"client.example.com"),
                (PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384"),
                (0x99, b"unknown sub-TLV, skipped"),
                (PP2_SUBTYPE_SSL_SIG_ALG, b"RSA-SHA256"),
                (PP2_SUBTYPE_SSL_KEY_ALG, b"RSA2048"),
            ],
        );
        let ssl = parse_area(&tlv(PP2_TYPE_SSL, &value)).unwrap().ssl.unwrap();
        assert!(ssl.client_ssl() && ssl.cert_in_connection() && ssl.cert_in_session());
        assert!(ssl.cert_verified());
        assert_eq!(ssl.version.as_deref(), Some(&b"TLSv1.3"[..]));
        assert_eq!(ssl.cn.as_deref(), Some(&b"client.example.com"[..]));
        assert_eq!(ssl.cipher.as_deref(), Some(&b"TLS_AES_256_GCM_SHA384"[..]));
        assert_eq!(ssl.sig_alg.as_deref(), Some(&b"RSA-SHA256"[..]));
        assert_eq!(ssl.key_alg.as_deref(), Some(&b"RSA2048"[..]));
    }

    #[test]
    fn ssl_without_certificate() {
        let value = ssl_value(PP2_CLIENT_SSL, 1, &[(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.2")]);
        let ssl = parse_area(&tlv(PP2_TYPE_SSL, &value)).unwrap().ssl.unwrap();
        assert!(ssl.client_ssl() && !ssl.cert_in_connection() && !ssl.cert_in_session());
        assert!(!ssl.cert_verified());
        assert_eq!(ssl.verify, 1);
        assert_eq!(ssl.cn, None);
        // Only the fixed part is fine too.
        let bare = parse_area(&tlv(PP2_TYPE_SSL, &[0, 0, 0, 0, 7]))
            .unwrap()
            .ssl
            .unwrap();
        assert_eq!((bare.client, bare.verify, bare.version), (0, 7, None));
    }

    #[test]
    fn ssl_too_short() {
        for len in 0..SSL_FIXED_LEN {
            assert_eq!(
                parse_area(&tlv(PP2_TYPE_SSL, &vec![1; len])),
                Err(ProxyError::TlvBadLength {
                    kind: PP2_TYPE_SSL,
                    len: len as u16
                })
            );
        }
    }

    #[test]
    fn ssl_sub_tlv_overrun() {
        // A sub-TLV declaring 10 bytes with 3 left inside the SSL TLV, although the outer
        // header has plenty of bytes after it.
        let mut value = ssl_value(PP2_CLIENT_SSL, 0, &[]);
        value.extend([PP2_SUBTYPE_SSL_CN, 0, 10, b'a', b'b', b'c']);
        let mut area = tlv(PP2_TYPE_SSL, &value);
        area.extend(tlv(0x04, &[0; 20]));
        assert_eq!(
            parse_area(&area),
            Err(ProxyError::SslSubTlvOverrun {
                kind: PP2_SUBTYPE_SSL_CN
            })
        );
        // A truncated sub-TLV head (1 and 2 bytes).
        for tail in [&[0x21u8][..], &[0x21, 0]] {
            let mut value = ssl_value(PP2_CLIENT_SSL, 0, &[]);
            value.extend_from_slice(tail);
            assert_eq!(
                parse_area(&tlv(PP2_TYPE_SSL, &value)),
                Err(ProxyError::SslSubTlvOverrun { kind: 0x21 })
            );
        }
    }

    #[test]
    fn tlv_overrun() {
        let mut area = tlv(PP2_TYPE_ALPN, b"pg");
        area.extend([PP2_TYPE_AUTHORITY, 0, 5, b'a', b'b']);
        assert_eq!(
            parse_area(&area),
            Err(ProxyError::TlvOverrun {
                kind: PP2_TYPE_AUTHORITY
            })
        );
        assert_eq!(
            parse_area(&[0xEE, 0xFF, 0xFF]),
            Err(ProxyError::TlvOverrun { kind: 0xEE })
        );
        // One or two stray bytes cannot hold a TLV head.
        assert_eq!(
            parse_area(&[0x04]),
            Err(ProxyError::TlvOverrun { kind: 0x04 })
        );
        assert_eq!(
            parse_area(&[0x01, 0x00]),
            Err(ProxyError::TlvOverrun { kind: 0x01 })
        );
    }

    #[test]
    fn duplicates_of_kept_types_are_rejected() {
        for kind in [
            PP2_TYPE_ALPN,
            PP2_TYPE_AUTHORITY,
            PP2_TYPE_UNIQUE_ID,
            PP2_TYPE_SSL,
        ] {
            let value: &[u8] = if kind == PP2_TYPE_SSL {
                &[0, 0, 0, 0, 0]
            } else {
                b"x"
            };
            let mut area = tlv(kind, value);
            area.extend(tlv(kind, value));
            assert_eq!(
                parse_area(&area),
                Err(ProxyError::DuplicateTlv { kind }),
                "{kind:#x}"
            );
        }
        let value = ssl_value(
            0,
            0,
            &[(PP2_SUBTYPE_SSL_CN, b"a"), (PP2_SUBTYPE_SSL_CN, b"b")],
        );
        assert_eq!(
            parse_area(&tlv(PP2_TYPE_SSL, &value)),
            Err(ProxyError::DuplicateTlv {
                kind: PP2_SUBTYPE_SSL_CN
            })
        );
    }

    #[test]
    fn unique_id_over_128_bytes() {
        assert_eq!(
            parse_area(&tlv(PP2_TYPE_UNIQUE_ID, &[0; UNIQUE_ID_MAX + 1])),
            Err(ProxyError::TlvBadLength {
                kind: PP2_TYPE_UNIQUE_ID,
                len: 129
            })
        );
    }

    #[test]
    fn crc32c_good() {
        let mut area = tlv(PP2_TYPE_ALPN, b"h2");
        let at = 16 + area.len() + 3;
        area.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        area.extend(tlv(PP2_TYPE_AUTHORITY, b"after the checksum"));
        let mut header = with_prefix(&area);
        seal(&mut header, at);
        let expected = u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        let tlvs = parse(&header, 16).unwrap();
        assert_eq!(tlvs.crc32c, Some(expected));
        assert_eq!(tlvs.authority.as_deref(), Some(&b"after the checksum"[..]));
    }

    #[test]
    fn crc32c_mismatch() {
        let mut area = tlv(PP2_TYPE_CRC32C, &[0; 4]);
        area.extend(tlv(PP2_TYPE_ALPN, b"h2"));
        let mut header = with_prefix(&area);
        seal(&mut header, 19);
        let good = u32::from_be_bytes(header[19..23].try_into().unwrap());
        // Any flipped bit outside the checksum field, or in it, must be caught.
        for i in (0..header.len()).filter(|i| !(19..23).contains(i) || *i == 20) {
            let mut bad = header.clone();
            bad[i] ^= 0x10;
            match parse(&bad, 16) {
                Err(ProxyError::CrcMismatch { received, computed }) => {
                    assert_ne!(received, computed);
                    if i != 20 {
                        assert_eq!(received, good);
                    }
                }
                // Flipping a TLV length byte can make the walk fail first.
                Err(ProxyError::TlvOverrun { .. }) => assert!(i >= 16),
                // Flipping the CRC32C type byte leaves a header without a checksum.
                Ok(tlvs) if i == 16 => assert_eq!(tlvs.crc32c, None),
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn crc32c_bad_length_and_duplicate() {
        for len in [0usize, 3, 5, 8] {
            assert_eq!(
                parse_area(&tlv(PP2_TYPE_CRC32C, &vec![0; len])),
                Err(ProxyError::TlvBadLength {
                    kind: PP2_TYPE_CRC32C,
                    len: len as u16
                })
            );
        }
        let mut area = tlv(PP2_TYPE_CRC32C, &[0; 4]);
        area.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        assert_eq!(
            parse_area(&area),
            Err(ProxyError::DuplicateTlv {
                kind: PP2_TYPE_CRC32C
            })
        );
    }
}
