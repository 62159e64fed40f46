//! Parser for PgBouncer/libpq-style connection strings: `host=db1 port=5432 password='a b'`.
//!
//! Pure: text in, `key=value` pairs out. Follows libpq's `conninfo_parse`: blanks around `=`
//! are skipped, a value is a run of non-blank characters or a single-quoted string, and a
//! backslash escapes the next character in either form. Unlike libpq, a key given twice is
//! an error rather than "last wins", and a quoted value must be followed by a blank or the end.

use std::fmt;

/// Longest connection string accepted; real ones are well under 1 KiB.
pub const MAX_LEN: usize = 64 * 1024;

/// Why a connection string did not parse. Never quotes values: they may hold a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnStrError {
    /// Longer than [`MAX_LEN`].
    TooLong,
    /// A key with characters outside `[A-Za-z0-9_]`, or an empty key.
    BadKey { at: usize },
    /// A key not followed by `=`.
    MissingEquals { key: String },
    /// A single-quoted value without its closing quote.
    UnterminatedQuote { key: String },
    /// A backslash as the very last character.
    TrailingBackslash { key: String },
    /// Something other than a blank right after a closing quote.
    JunkAfterQuote { key: String },
    /// The same key twice.
    Duplicate { key: String },
}

impl ConnStrError {
    /// The key the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConnStrError::TooLong | ConnStrError::BadKey { .. } => None,
            ConnStrError::MissingEquals { key }
            | ConnStrError::UnterminatedQuote { key }
            | ConnStrError::TrailingBackslash { key }
            | ConnStrError::JunkAfterQuote { key }
            | ConnStrError::Duplicate { key } => Some(key),
        }
    }
}

impl fmt::Display for ConnStrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnStrError::TooLong => write!(f, "connection string is longer than {MAX_LEN} bytes"),
            ConnStrError::BadKey { at } => write!(
                f,
                "connection string: expected a key of letters, digits and '_' at byte {at}"
            ),
            ConnStrError::MissingEquals { .. } => {
                f.write_str("connection string: missing '=' after the key")
            }
            ConnStrError::UnterminatedQuote { .. } => {
                f.write_str("connection string: the quoted value has no closing quote")
            }
            ConnStrError::TrailingBackslash { .. } => {
                f.write_str("connection string: the value ends with a lone backslash")
            }
            ConnStrError::JunkAfterQuote { .. } => {
                f.write_str("connection string: expected a blank after the closing quote")
            }
            ConnStrError::Duplicate { .. } => {
                f.write_str("connection string: the key is given twice")
            }
        }
    }
}

impl std::error::Error for ConnStrError {}

fn is_blank(b: u8) -> bool {
    b.is_ascii_whitespace()
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits a connection string into `(key, value)` pairs, in order.
pub fn parse(input: &str) -> Result<Vec<(String, String)>, ConnStrError> {
    if input.len() > MAX_LEN {
        return Err(ConnStrError::TooLong);
    }
    let bytes = input.as_bytes();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    loop {
        while bytes.get(i).is_some_and(|&b| is_blank(b)) {
            i += 1;
        }
        if i >= bytes.len() {
            return Ok(pairs);
        }
        let key_start = i;
        while bytes.get(i).is_some_and(|&b| is_key_byte(b)) {
            i += 1;
        }
        // Keys are ASCII, so these are char boundaries.
        let key = input.get(key_start..i).unwrap_or_default().to_owned();
        if key.is_empty() || bytes.get(i).is_some_and(|&b| !is_blank(b) && b != b'=') {
            return Err(ConnStrError::BadKey { at: i });
        }
        while bytes.get(i).is_some_and(|&b| is_blank(b)) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return Err(ConnStrError::MissingEquals { key });
        }
        i += 1;
        while bytes.get(i).is_some_and(|&b| is_blank(b)) {
            i += 1;
        }
        let (value, next) = if bytes.get(i) == Some(&b'\'') {
            read_quoted(input, i + 1, &key)?
        } else {
            read_bare(input, i, &key)?
        };
        i = next;
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(ConnStrError::Duplicate { key });
        }
        pairs.push((key, value));
    }
}

/// Reads a quoted value starting just after the opening quote; returns it and the index
/// just after the closing quote.
fn read_quoted(input: &str, start: usize, key: &str) -> Result<(String, usize), ConnStrError> {
    let mut value = String::new();
    let mut chars = input.get(start..).unwrap_or_default().char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => {
                    return Err(ConnStrError::TrailingBackslash {
                        key: key.to_owned(),
                    })
                }
            },
            '\'' => {
                let next = start + off + 1;
                if input.as_bytes().get(next).is_some_and(|&b| !is_blank(b)) {
                    return Err(ConnStrError::JunkAfterQuote {
                        key: key.to_owned(),
                    });
                }
                return Ok((value, next));
            }
            c => value.push(c),
        }
    }
    Err(ConnStrError::UnterminatedQuote {
        key: key.to_owned(),
    })
}

/// Reads an unquoted value up to the next blank; returns it and the index after it.
fn read_bare(input: &str, start: usize, key: &str) -> Result<(String, usize), ConnStrError> {
    let mut value = String::new();
    let rest = input.get(start..).unwrap_or_default();
    let mut chars = rest.char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => {
                    return Err(ConnStrError::TrailingBackslash {
                        key: key.to_owned(),
                    })
                }
            },
            c if c.is_ascii_whitespace() => return Ok((value, start + off)),
            c => value.push(c),
        }
    }
    Ok((value, input.len()))
}

/// Quotes a value so that [`parse`] reads it back unchanged.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("   ", &[]),
            ("host=127.0.0.1", &[("host", "127.0.0.1")]),
            (
                "host=127.0.0.1 port=5432 dbname=app",
                &[("host", "127.0.0.1"), ("port", "5432"), ("dbname", "app")],
            ),
            ("  host = db1\tport=1  ", &[("host", "db1"), ("port", "1")]),
            ("password='a b c'", &[("password", "a b c")]),
            (r"password='it\'s'", &[("password", "it's")]),
            (r"password='back\\slash'", &[("password", r"back\slash")]),
            (r"password=it\'s", &[("password", "it's")]),
            (r"password=a\ b", &[("password", "a b")]),
            ("password=''", &[("password", "")]),
            ("password='' user=u", &[("password", ""), ("user", "u")]),
            ("password=a=b", &[("password", "a=b")]),
            ("connect_query='SELECT 1'", &[("connect_query", "SELECT 1")]),
            ("dbname=café", &[("dbname", "café")]),
            ("password='naïve'", &[("password", "naïve")]),
            // libpq's rule: blanks after '=' are skipped, so the next word is the value.
            ("host= port=5", &[("host", "port=5")]),
            ("host=", &[("host", "")]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(pairs(want)), "{input:?}");
        }
    }

    #[test]
    fn errors() {
        let k = |s: &str| s.to_string();
        let cases: &[(&str, ConnStrError)] = &[
            ("host", ConnStrError::MissingEquals { key: k("host") }),
            (
                "host 127.0.0.1",
                ConnStrError::MissingEquals { key: k("host") },
            ),
            ("=1", ConnStrError::BadKey { at: 0 }),
            ("ho-st=1", ConnStrError::BadKey { at: 2 }),
            ("port=1 =2", ConnStrError::BadKey { at: 7 }),
            (
                "password='abc",
                ConnStrError::UnterminatedQuote { key: k("password") },
            ),
            (
                r"password='abc\'",
                ConnStrError::UnterminatedQuote { key: k("password") },
            ),
            (
                "password=abc\\",
                ConnStrError::TrailingBackslash { key: k("password") },
            ),
            (
                "password='abc\\",
                ConnStrError::TrailingBackslash { key: k("password") },
            ),
            (
                "password='a'b",
                ConnStrError::JunkAfterQuote { key: k("password") },
            ),
            ("port=1 port=2", ConnStrError::Duplicate { key: k("port") }),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).as_ref(), Err(want), "{input:?}");
        }
        assert_eq!(parse(&"a".repeat(MAX_LEN + 1)), Err(ConnStrError::TooLong));
    }

    #[test]
    fn errors_never_quote_values() {
        let err = parse("password='s3cret").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_connstring_alphabet(s in "[a-z_= '\\\\\t]{0,80}") {
            let _ = parse(&s);
        }

        #[test]
        fn quoted_values_round_trip(
            entries in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,10}", "\\PC{0,30}", 0..6)
        ) {
            let text = entries
                .iter()
                .map(|(k, v)| format!("{k}={}", quote(v)))
                .collect::<Vec<_>>()
                .join(" ");
            let want: Vec<(String, String)> = entries.into_iter().collect();
            prop_assert_eq!(parse(&text), Ok(want));
        }
    }
}
