//! Reading message bodies the pooler must look into: error fields, C strings, auth requests.

/// The fields of an ErrorResponse or NoticeResponse that the pooler uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub detail: Option<String>,
}

impl ErrorFields {
    /// Parses the body of an `E` or `N` message; unknown and malformed fields are skipped.
    pub fn parse(mut body: &[u8]) -> ErrorFields {
        let mut f = ErrorFields::default();
        while let Some((&kind, rest)) = body.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, rest)) = cstr(rest) else {
                break;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => f.severity = Some(value),
                b'S' if f.severity.is_none() => f.severity = Some(value),
                b'C' => f.code = Some(value),
                b'M' => f.message = Some(value),
                b'D' => f.detail = Some(value),
                _ => {}
            }
            body = rest;
        }
        f
    }

    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("XX000")
    }

    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("unknown error")
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_deref().unwrap_or("ERROR"),
            self.code(),
            self.message()
        )
    }
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Splits a big-endian u32 off the front of `buf`.
pub fn u32_be(buf: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// A ParameterStatus body: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_error() {
        let f = ErrorFields::parse(b"SFATAL\0VFATAL\0C28P01\0Mno\0Dmore\0\0");
        assert_eq!(f.code(), "28P01");
        assert_eq!(f.message(), "no");
        assert_eq!(f.detail.as_deref(), Some("more"));
        assert_eq!(f.to_string(), "FATAL 28P01: no");
    }

    #[test]
    fn parameter_status_body() {
        assert_eq!(parameter_status(b"a\0b\0"), Some(("a", "b")));
        assert_eq!(parameter_status(b"a\0b"), None);
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ErrorFields::parse(&buf);
            let _ = parameter_status(&buf);
        }
    }
}
