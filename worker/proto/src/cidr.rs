//! IP networks in CIDR notation (`10.0.0.0/8`, `::1`), as used by `proxy_trusted` and hba files.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// An IPv4 or IPv6 network: an address with its host bits cleared, and a prefix length.
///
/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) are stored as their IPv4 equivalent,
/// and [`Cidr::contains`] maps addresses the same way, so a dual-stack socket's
/// `::ffff:a.b.c.d` peers match IPv4 rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    BadAddress,
    /// The part after `/` is not a decimal number.
    BadPrefix,
    /// The prefix is longer than the address (32 for IPv4, 128 for IPv6).
    PrefixTooLong { max: u8 },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::BadAddress => f.write_str("not an IPv4 or IPv6 address"),
            CidrError::BadPrefix => f.write_str("the prefix length after '/' is not a number"),
            CidrError::PrefixTooLong { max } => {
                write!(f, "the prefix length must be at most {max}")
            }
        }
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Builds a network from an address and prefix length, clearing the host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        match addr {
            IpAddr::V4(v4) => {
                if prefix > 32 {
                    return Err(CidrError::PrefixTooLong { max: 32 });
                }
                let bits = u32::from(v4) & mask32(prefix);
                Ok(Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(bits)),
                    prefix,
                })
            }
            IpAddr::V6(v6) => {
                if prefix > 128 {
                    return Err(CidrError::PrefixTooLong { max: 128 });
                }
                if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                    return Cidr::new(IpAddr::V4(v4), prefix - 96);
                }
                let bits = u128::from(v6) & mask128(prefix);
                Ok(Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(bits)),
                    prefix,
                })
            }
        }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network; `::ffff:a.b.c.d` is treated as `a.b.c.d`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    // checked_shl: a shift by 32 would overflow; prefix 0 means "no bits".
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr` or `addr/prefix`; a bare address is a single host (/32 or /128).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                // u8::from_str accepts a leading '+'; a prefix is plain digits only.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadPrefix);
                }
                let n: u16 = p.parse().map_err(|_| CidrError::BadPrefix)?;
                if n > u16::from(max) {
                    return Err(CidrError::PrefixTooLong { max });
                }
                n as u8
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        d.deserialize_str(CidrVisitor)
    }
}

struct CidrVisitor;

impl<'de> Visitor<'de> for CidrVisitor {
    type Value = Cidr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a network such as 10.0.0.0/8, 2001:db8::/32 or a single address")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
        v.trim().parse().map_err(|e: CidrError| {
            E::custom(format!(
                "invalid network `{}`: {e}",
                crate::text::truncate(v, 64)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        let cases: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1", "::1/128"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("::ffff:10.1.0.0/112", "10.1.0.0/16"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("::ffff:0:0/95", "::fffe:0:0/95"),
        ];
        for (input, want) in cases {
            let c: Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.to_string(), *want, "{input}");
            // Display output parses back to the same network.
            assert_eq!(want.parse::<Cidr>().unwrap(), c);
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, CidrError)] = &[
            ("10.0.0.0/33", CidrError::PrefixTooLong { max: 32 }),
            ("::/129", CidrError::PrefixTooLong { max: 128 }),
            ("10.0.0.0/999", CidrError::PrefixTooLong { max: 32 }),
            ("10.0.0.0/", CidrError::BadPrefix),
            ("10.0.0.0/+8", CidrError::BadPrefix),
            ("10.0.0.0/-1", CidrError::BadPrefix),
            ("10.0.0.0/8/8", CidrError::BadPrefix),
            ("10.0.0.0/1000", CidrError::BadPrefix),
            ("10.0.0.0/ 8", CidrError::BadPrefix),
            ("10.0.0/8", CidrError::BadAddress),
            ("", CidrError::BadAddress),
            ("example.com", CidrError::BadAddress),
            ("fe80::1%eth0", CidrError::BadAddress),
            ("[::1]", CidrError::BadAddress),
            (" 10.0.0.0/8", CidrError::BadAddress),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Cidr>(), Err(want.clone()), "{input}");
        }
    }

    #[test]
    fn contains() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.9.9.9", true),
            ("10.0.0.0/8", "::ffff:11.9.9.9", false),
            ("10.0.0.0/8", "::a00:1", false), // IPv4-compatible (deprecated), not mapped
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "203.0.113.7", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "::1", true),
            ("::/0", "10.0.0.1", false),
            ("::/0", "::ffff:10.0.0.1", false), // mapped peers are IPv4 peers
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::1", "::1", true),
            ("::ffff:192.168.0.0/120", "192.168.0.77", true),
            ("192.168.1.0/24", "192.168.0.255", false),
        ];
        for (net, addr, want) in cases {
            let c: Cidr = net.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), *want, "{net} contains {addr}");
        }
    }

    #[test]
    fn new_rejects_long_prefixes() {
        assert!(Cidr::new(ip("1.2.3.4"), 33).is_err());
        assert!(Cidr::new(ip("::"), 129).is_err());
        assert_eq!(
            Cidr::new(ip("1.2.3.4"), 0).unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Cidr>();
        }

        #[test]
        fn v4_network_contains_its_own_addresses(a in any::<u32>(), prefix in 0u8..=32, host in any::<u32>()) {
            let net = Cidr::new(IpAddr::V4(Ipv4Addr::from(a)), prefix).unwrap();
            // Same network bits as `a`, arbitrary host bits.
            let inside = (a & mask32(prefix)) | (host & !mask32(prefix));
            prop_assert!(net.contains(IpAddr::V4(Ipv4Addr::from(inside))));
            prop_assert!(net.contains(IpAddr::V6(Ipv4Addr::from(inside).to_ipv6_mapped())));
            prop_assert_eq!(net.to_string().parse::<Cidr>().unwrap(), net);
        }

        #[test]
        fn v6_network_contains_its_own_addresses(a in any::<u128>(), prefix in 0u8..=128, host in any::<u128>()) {
            let net = Cidr::new(IpAddr::V6(Ipv6Addr::from(a)), prefix).unwrap();
            let inside = (a & mask128(prefix)) | (host & !mask128(prefix));
            // A mapped address is an IPv4 peer, outside every IPv6 network by design.
            prop_assume!(prefix >= 96 || Ipv6Addr::from(inside).to_ipv4_mapped().is_none());
            prop_assert!(net.contains(IpAddr::V6(Ipv6Addr::from(inside))));
            prop_assert_eq!(net.to_string().parse::<Cidr>().unwrap(), net);
        }
    }
}
