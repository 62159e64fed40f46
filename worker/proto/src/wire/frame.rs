//! Message framing after the first packet: one type byte, then an int32 length that counts itself.

/// A message header as found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole message length on the wire: the type byte, the length field and the body.
    pub total: usize,
}

impl Header {
    pub fn body_len(&self) -> usize {
        self.total - 5
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 4, which no valid message has.
    BadLength(u8, u32),
    /// The message is longer than the caller's limit.
    TooLong(u8, usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength(tag, len) => {
                write!(
                    f,
                    "invalid length {len} for message type '{}'",
                    printable(*tag)
                )
            }
            FrameError::TooLong(tag, len) => write!(
                f,
                "message type '{}' of {len} bytes exceeds max_packet_size",
                printable(*tag)
            ),
        }
    }
}

fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

/// Reads the header at the start of `buf`: `Ok(None)` until five bytes are there.
/// Never trusts the length beyond `max_total`.
pub fn header(buf: &[u8], max_total: usize) -> Result<Option<Header>, FrameError> {
    let Some(h) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(h[0], len));
    }
    let total = len as usize + 1;
    if total > max_total {
        return Err(FrameError::TooLong(h[0], total));
    }
    Ok(Some(Header { tag: h[0], total }))
}

/// A whole message at the start of `buf`, when all of it has arrived.
pub fn message(buf: &[u8], max_total: usize) -> Result<Option<(Header, &[u8])>, FrameError> {
    match header(buf, max_total)? {
        Some(h) if buf.len() >= h.total => Ok(Some((h, &buf[5..h.total]))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn needs_five_bytes() {
        assert_eq!(header(b"Z\0\0\0", 100), Ok(None));
        assert_eq!(
            header(b"Z\0\0\0\x05I", 100),
            Ok(Some(Header {
                tag: b'Z',
                total: 6
            }))
        );
    }

    #[test]
    fn rejects_short_and_long_lengths() {
        assert_eq!(
            header(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength(b'Q', 3))
        );
        assert_eq!(
            header(b"Q\x7f\xff\xff\xff", 1 << 20),
            Err(FrameError::TooLong(b'Q', 0x8000_0000))
        );
    }

    #[test]
    fn whole_message_waits_for_body() {
        assert_eq!(message(b"Z\0\0\0\x05", 100), Ok(None));
        let (h, body) = message(b"Z\0\0\0\x05Irest", 100).unwrap().unwrap();
        assert_eq!((h.tag, h.total, body), (b'Z', 6, &b"I"[..]));
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..1000) {
            if let Ok(Some((h, body))) = message(&buf, max) {
                prop_assert!(h.total <= buf.len() && h.total <= max);
                prop_assert_eq!(body.len(), h.body_len());
            }
        }
    }
}
