//! The first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.

use super::{CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_LEN, SSL_REQUEST_CODE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    Startup(Startup),
    SslRequest,
    GssEncRequest,
    /// A cancel key: 3.0 keys are 4 bytes; protocol 3.2 allows up to 256.
    Cancel {
        pid: u32,
        key: Vec<u8>,
    },
}

/// A decoded StartupMessage: version and the parameters in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupError {
    /// Length field below the 8 bytes every first packet has.
    TooShort(u32),
    /// Length beyond PostgreSQL's 10000-byte startup limit.
    TooLong(u32),
    /// A request code nobody defined.
    UnknownCode(u32),
    /// A major protocol version other than 3.
    UnsupportedVersion(u16, u16),
    /// A request with a fixed size that came with another.
    BadRequestLength(u32),
    /// Parameters not laid out as NUL-terminated pairs ending in a NUL.
    Malformed(&'static str),
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupError::TooShort(n) => write!(f, "invalid length of startup packet ({n})"),
            StartupError::TooLong(n) => write!(f, "invalid length of startup packet ({n})"),
            StartupError::UnknownCode(c) => write!(
                f,
                "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                c >> 16,
                c & 0xffff
            ),
            StartupError::UnsupportedVersion(ma, mi) => write!(
                f,
                "unsupported frontend protocol {ma}.{mi}: server supports 3.0 to 3.0"
            ),
            StartupError::BadRequestLength(n) => {
                write!(f, "invalid length of startup packet ({n})")
            }
            StartupError::Malformed(why) => write!(f, "invalid startup packet layout: {why}"),
        }
    }
}

/// Decodes the first packet at the start of `buf`: `Ok(None)` while bytes are missing,
/// else the packet and the number of bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(FirstPacket, usize)>, StartupError> {
    let Some(head) = buf.get(..8) else {
        // Judge the length as soon as it is there so a hostile length never makes us wait.
        if let Some(l) = buf.get(..4) {
            check_len(u32::from_be_bytes([l[0], l[1], l[2], l[3]]))?;
        }
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    check_len(len)?;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let fixed = |want: u32| {
        if len == want {
            Ok(())
        } else {
            Err(StartupError::BadRequestLength(len))
        }
    };
    match code {
        SSL_REQUEST_CODE => fixed(8)?,
        GSSENC_REQUEST_CODE => fixed(8)?,
        CANCEL_REQUEST_CODE => {
            if !(16..=12 + 256).contains(&len) {
                return Err(StartupError::BadRequestLength(len));
            }
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(if !(1..=3).contains(&major) {
                    StartupError::UnknownCode(code)
                } else {
                    StartupError::UnsupportedVersion(major, minor)
                });
            }
        }
    }
    let len = len as usize;
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let packet = match code {
        SSL_REQUEST_CODE => FirstPacket::SslRequest,
        GSSENC_REQUEST_CODE => FirstPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => FirstPacket::Cancel {
            pid: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            key: packet[12..].to_vec(),
        },
        _ => FirstPacket::Startup(Startup {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
            params: parse_params(&packet[8..])?,
        }),
    };
    Ok(Some((packet, len)))
}

fn check_len(len: u32) -> Result<(), StartupError> {
    if len < 8 {
        Err(StartupError::TooShort(len))
    } else if len as usize > MAX_STARTUP_LEN {
        Err(StartupError::TooLong(len))
    } else {
        Ok(())
    }
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        match body {
            [0] => return Ok(params),
            [] => return Err(StartupError::Malformed("missing terminator")),
            _ => {}
        }
        let (name, rest) = cstr(body)?;
        if name.is_empty() {
            return Err(StartupError::Malformed("empty parameter name"));
        }
        let (value, rest) = cstr(rest)?;
        params.push((name, value));
        body = rest;
    }
}

fn cstr(buf: &[u8]) -> Result<(String, &[u8]), StartupError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("unterminated string"))?;
    let s = std::str::from_utf8(&buf[..nul])
        .map_err(|_| StartupError::Malformed("parameter is not valid UTF-8"))?;
    Ok((s.to_owned(), &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn startup(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn startup_message_params() {
        let pkt = startup(196608, b"user\0bob\0database\0app\0\0");
        let (p, n) = decode(&pkt).unwrap().unwrap();
        assert_eq!(n, pkt.len());
        let FirstPacket::Startup(s) = p else { panic!() };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.get("user"), Some("bob"));
        assert_eq!(s.get("database"), Some("app"));
    }

    #[test]
    fn every_prefix_needs_more() {
        let pkt = startup(196608, b"user\0bob\0\0");
        for i in 0..pkt.len() {
            assert_eq!(decode(&pkt[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn newer_minor_is_accepted_for_negotiation() {
        let pkt = startup(196610, b"user\0bob\0_pq_.x\0y\0\0");
        let FirstPacket::Startup(s) = decode(&pkt).unwrap().unwrap().0 else {
            panic!()
        };
        assert_eq!(s.minor, 2);
    }

    #[test]
    fn requests() {
        assert_eq!(
            decode(&startup(80877103, b"")).unwrap().unwrap().0,
            FirstPacket::SslRequest
        );
        assert_eq!(
            decode(&startup(80877104, b"")).unwrap().unwrap().0,
            FirstPacket::GssEncRequest
        );
        let c = decode(&startup(80877102, &[0, 0, 0, 7, 1, 2, 3, 4]))
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(
            c,
            FirstPacket::Cancel {
                pid: 7,
                key: vec![1, 2, 3, 4]
            }
        );
    }

    #[test]
    fn bad_packets() {
        assert_eq!(decode(&[0, 0, 0, 0]), Err(StartupError::TooShort(0)));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(StartupError::TooLong(u32::MAX))
        );
        assert_eq!(
            decode(&[0, 0, 0x27, 0x11]),
            Err(StartupError::TooLong(10001))
        );
        assert_eq!(
            decode(&startup(80877103, b"xx")),
            Err(StartupError::BadRequestLength(10))
        );
        assert_eq!(
            decode(&startup(80877102, b"")),
            Err(StartupError::BadRequestLength(8))
        );
        assert_eq!(
            decode(&startup(0x0002_0000, b"\0")),
            Err(StartupError::UnsupportedVersion(2, 0))
        );
        assert_eq!(
            decode(&startup(1234, b"\0")),
            Err(StartupError::UnknownCode(1234))
        );
        assert!(matches!(
            decode(&startup(196608, b"user\0bob\0")),
            Err(StartupError::Malformed(_))
        ));
        assert!(matches!(
            decode(&startup(196608, b"user\0bob")),
            Err(StartupError::Malformed(_))
        ));
        assert!(matches!(
            decode(&startup(196608, b"\0x\0\0")),
            Err(StartupError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, n))) = decode(&buf) {
                prop_assert!(n <= buf.len() && n >= 8);
            }
        }

        #[test]
        fn params_round_trip(params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..10)) {
            let mut body = Vec::new();
            for (k, v) in &params {
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            let pkt = startup(196608, &body);
            let FirstPacket::Startup(s) = decode(&pkt).unwrap().unwrap().0 else { panic!() };
            prop_assert_eq!(s.params, params);
        }
    }
}
