//! PgBouncer's `auth_file` (userlist.txt): user names and their stored passwords or secrets.
//!
//! Format (PgBouncer's "Authentication file format"): one user per line,
//! `"username" "password" ...`, both fields in double quotes, `""` inside a
//! field standing for one `"`, anything after the second field ignored. Blank
//! lines and lines whose first non-blank character is `;` or `#` are comments.
//! Unlike PgBouncer, only blanks may separate the two fields, so a typo is
//! reported with its line number instead of being read as a strange password.
//! When a user appears twice the last line wins (as in PgBouncer), with a warning.
//!
//! The second field is classified as PostgreSQL's `get_password_type` does:
//! `md5` + 32 lowercase hex digits is an md5 hash, a well-formed
//! `SCRAM-SHA-256$…` is a SCRAM secret, anything else is a plaintext password.
//! Strings that look like a hash or secret but are not well-formed are therefore
//! plaintext passwords; each one is reported in [`Userlist::warnings`] because
//! that is almost always a copy-paste mistake.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use super::md5::{md5_password_hash, md5_verify_response, parse_md5_secret, MD5_SECRET_LEN};
use super::scram::ScramSecret;

/// Largest auth file accepted.
pub const MAX_FILE_LEN: usize = 16 * 1024 * 1024;
/// Longest line accepted (a SCRAM secret is about 140 bytes).
pub const MAX_LINE_LEN: usize = 8192;
/// Longest user name, after unquoting (PgBouncer's limit; PostgreSQL's is 63).
pub const MAX_USERNAME_LEN: usize = 128;
/// Longest password or secret, after unquoting (PgBouncer's limit).
pub const MAX_PASSWORD_LEN: usize = 2048;

/// What the auth file stores for one user.
///
/// `Debug` never shows the password, hash or keys.
#[derive(Clone)]
pub enum Secret {
    /// A plaintext password.
    Plain(String),
    /// The raw 16-byte `md5(password || username)`; the file holds `"md5" + hex` of it.
    Md5([u8; 16]),
    /// A SCRAM-SHA-256 secret.
    Scram(ScramSecret),
}

impl Secret {
    /// Classifies a stored password the way PostgreSQL does.
    pub fn classify(stored: &str) -> Secret {
        if let Some(hash) = parse_md5_secret(stored) {
            return Secret::Md5(hash);
        }
        match ScramSecret::parse(stored) {
            Ok(secret) => Secret::Scram(secret),
            Err(_) => Secret::Plain(stored.to_owned()),
        }
    }

    /// `"plain"`, `"md5"` or `"scram-sha-256"`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram-sha-256",
        }
    }

    /// The md5 hash an md5 challenge is computed from: derived from a plaintext password,
    /// or the stored hash itself. `None` for a SCRAM secret (md5 can't be done with one)
    /// and for an empty plaintext password (never accepted).
    pub fn md5_password_hash(&self, user: &str) -> Option<[u8; 16]> {
        match self {
            Secret::Plain(password) if password.is_empty() => None,
            Secret::Plain(password) => Some(md5_password_hash(user, password)),
            Secret::Md5(hash) => Some(*hash),
            Secret::Scram(_) => None,
        }
    }

    /// Server side of `auth_type=md5`: does `response` (the `PasswordMessage` payload
    /// without its NUL) answer the challenge `salt` for this user? Constant-time.
    pub fn verify_md5_response(&self, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
        match self.md5_password_hash(user) {
            Some(hash) => md5_verify_response(&hash, salt, response),
            None => false,
        }
    }

    /// Server side of `auth_type=plain`: is `password` (sent in cleartext) this user's?
    /// Empty passwords never match. Against a SCRAM secret this costs its PBKDF2 rounds.
    pub fn verify_cleartext(&self, user: &str, password: &str) -> bool {
        if password.is_empty() {
            return false;
        }
        match self {
            Secret::Plain(stored) => {
                !stored.is_empty() && bool::from(stored.as_bytes().ct_eq(password.as_bytes()))
            }
            Secret::Md5(hash) => md5_password_hash(user, password).ct_eq(hash).into(),
            Secret::Scram(secret) => secret.verify_password(password),
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        match (self, other) {
            (Secret::Plain(a), Secret::Plain(b)) => a.as_bytes().ct_eq(b.as_bytes()).into(),
            (Secret::Md5(a), Secret::Md5(b)) => a.ct_eq(b).into(),
            (Secret::Scram(a), Secret::Scram(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Scram(secret) => f.debug_tuple("Scram").field(secret).finish(),
        }
    }
}

/// Why one line of the auth file was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Longer than [`MAX_LINE_LEN`].
    TooLong,
    /// Not valid UTF-8.
    NotUtf8,
    /// The line does not start with `"`.
    ExpectedQuote,
    /// A field has no closing `"`.
    UnterminatedField,
    /// Something other than blanks between the two fields.
    ExpectedBlank,
    /// Only one field.
    MissingPassword,
    /// `""` as user name.
    EmptyUsername,
    /// Longer than [`MAX_USERNAME_LEN`].
    UsernameTooLong,
    /// Longer than [`MAX_PASSWORD_LEN`].
    PasswordTooLong,
    /// A NUL byte in a field (PostgreSQL strings can't hold one).
    NulByte,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineError::TooLong => "line too long",
            LineError::NotUtf8 => "line is not valid UTF-8",
            LineError::ExpectedQuote => "expected a double-quoted user name",
            LineError::UnterminatedField => "missing closing double quote",
            LineError::ExpectedBlank => "expected blanks between user name and password",
            LineError::MissingPassword => "missing password field",
            LineError::EmptyUsername => "empty user name",
            LineError::UsernameTooLong => "user name too long",
            LineError::PasswordTooLong => "password too long",
            LineError::NulByte => "NUL byte in a field",
        })
    }
}

/// Why the auth file could not be loaded. Never contains a password.
#[derive(Debug)]
pub enum UserlistError {
    /// The file could not be read.
    Io { path: PathBuf, source: io::Error },
    /// Larger than [`MAX_FILE_LEN`].
    TooLarge,
    /// Line `line` (1-based) is invalid.
    Line { line: usize, reason: LineError },
}

impl UserlistError {
    /// The 1-based line number, for line errors.
    pub fn line(&self) -> Option<usize> {
        match self {
            UserlistError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }
}

impl fmt::Display for UserlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserlistError::Io { path, source } => {
                write!(f, "cannot read auth file {}: {source}", path.display())
            }
            UserlistError::TooLarge => {
                write!(f, "auth file is larger than {MAX_FILE_LEN} bytes")
            }
            UserlistError::Line { line, reason } => write!(f, "auth file line {line}: {reason}"),
        }
    }
}

impl std::error::Error for UserlistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UserlistError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Something accepted but probably not what the operator meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// The user was already listed on an earlier line; this line wins.
    DuplicateUser(String),
    /// Starts with `SCRAM-SHA-256$` but is not a valid secret (reason given), so it is
    /// taken as a plaintext password, as PostgreSQL would.
    MalformedScramSecret(&'static str),
    /// Looks like an md5 hash but is not `md5` + 32 lowercase hex digits, so it is
    /// taken as a plaintext password, as PostgreSQL would.
    MalformedMd5Secret,
}

/// A [`WarningKind`] and its 1-based line. Never contains a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserlistWarning {
    pub line: usize,
    pub kind: WarningKind,
}

impl fmt::Display for UserlistWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "auth file line {}: ", self.line)?;
        match &self.kind {
            WarningKind::DuplicateUser(user) => {
                write!(
                    f,
                    "user {user:?} listed again; this line replaces the earlier one"
                )
            }
            WarningKind::MalformedScramSecret(reason) => write!(
                f,
                "password starts with SCRAM-SHA-256$ but is not a valid secret ({reason}); \
                 using it as a plaintext password"
            ),
            WarningKind::MalformedMd5Secret => f.write_str(
                "password looks like an md5 hash but is not md5 + 32 lowercase hex digits; \
                 using it as a plaintext password",
            ),
        }
    }
}

/// The parsed auth file: user name to [`Secret`].
#[derive(Clone, Debug, Default)]
pub struct Userlist {
    users: HashMap<String, Secret>,
    warnings: Vec<UserlistWarning>,
}

impl Userlist {
    /// Reads and parses the file at `path` (blocking; at most [`MAX_FILE_LEN`] bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<Userlist, UserlistError> {
        let path = path.as_ref();
        let io_error = |source| UserlistError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let mut bytes = Vec::new();
        // Read one byte past the cap to tell "exactly at the cap" from "over it".
        file.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        Userlist::parse_bytes(&bytes)
    }

    /// Parses auth file text.
    pub fn parse(text: &str) -> Result<Userlist, UserlistError> {
        Userlist::parse_bytes(text.as_bytes())
    }

    /// Parses auth file bytes; a line that is not UTF-8 is an error.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Userlist, UserlistError> {
        if bytes.len() > MAX_FILE_LEN {
            return Err(UserlistError::TooLarge);
        }
        let mut list = Userlist::default();
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = index.saturating_add(1);
            let error = |reason| UserlistError::Line { line, reason };
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.len() > MAX_LINE_LEN {
                return Err(error(LineError::TooLong));
            }
            let text = std::str::from_utf8(raw).map_err(|_| error(LineError::NotUtf8))?;
            let text = text.trim_start_matches(is_blank);
            if text.is_empty() || text.starts_with(';') || text.starts_with('#') {
                continue;
            }
            let (user, password) = parse_line(text).map_err(error)?;
            list.insert(line, user, &password);
        }
        Ok(list)
    }

    fn insert(&mut self, line: usize, user: String, password: &str) {
        let secret = Secret::classify(password);
        if let Secret::Plain(_) = secret {
            if let Err(error) = ScramSecret::parse(password) {
                if password.starts_with("SCRAM-SHA-256$") {
                    self.warn(line, WarningKind::MalformedScramSecret(error.0));
                }
            }
            let md5_like = password.len() == MD5_SECRET_LEN
                && password
                    .get(..3)
                    .is_some_and(|p| p.eq_ignore_ascii_case("md5"))
                && password.bytes().skip(3).all(|b| b.is_ascii_hexdigit());
            if md5_like {
                self.warn(line, WarningKind::MalformedMd5Secret);
            }
        }
        if self.users.contains_key(&user) {
            self.warn(line, WarningKind::DuplicateUser(user.clone()));
        }
        self.users.insert(user, secret);
    }

    fn warn(&mut self, line: usize, kind: WarningKind) {
        self.warnings.push(UserlistWarning { line, kind });
    }

    /// The stored secret of `user` (user names are case-sensitive).
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// All user names, in no particular order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Accepted lines that are probably mistakes, in file order; worth logging at load.
    pub fn warnings(&self) -> &[UserlistWarning] {
        &self.warnings
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `"user" "password" ignored…` (leading blanks already removed).
fn parse_line(line: &str) -> Result<(String, String), LineError> {
    let (user, rest) = read_quoted(line)?;
    let after_blanks = rest.trim_start_matches(is_blank);
    if after_blanks.is_empty() {
        return Err(LineError::MissingPassword);
    }
    if after_blanks.len() == rest.len() {
        return Err(LineError::ExpectedBlank);
    }
    let (password, _ignored) = read_quoted(after_blanks)?;
    if user.is_empty() {
        return Err(LineError::EmptyUsername);
    }
    if user.len() > MAX_USERNAME_LEN {
        return Err(LineError::UsernameTooLong);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(LineError::PasswordTooLong);
    }
    if user.contains('\0') || password.contains('\0') {
        return Err(LineError::NulByte);
    }
    Ok((user, password))
}

/// Reads one `"…"` field with `""` escapes; returns it unquoted and the text after it.
fn read_quoted(text: &str) -> Result<(String, &str), LineError> {
    let mut rest = text.strip_prefix('"').ok_or(LineError::ExpectedQuote)?;
    let mut field = String::new();
    loop {
        let (chunk, after) = rest.split_once('"').ok_or(LineError::UnterminatedField)?;
        field.push_str(chunk);
        match after.strip_prefix('"') {
            Some(escaped_rest) => {
                field.push('"');
                rest = escaped_rest;
            }
            None => return Ok((field, after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::md5::{md5_salted_response, md5_secret_string};
    use proptest::prelude::*;

    fn scram_text(password: &str) -> String {
        ScramSecret::from_password(password, b"0123456789abcdef", 2).encode()
    }

    fn line_error(text: &str) -> (usize, LineError) {
        match Userlist::parse(text) {
            Err(UserlistError::Line { line, reason }) => (line, reason),
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    /// Quotes a field the way the format wants.
    fn quote(field: &str) -> String {
        format!("\"{}\"", field.replace('"', "\"\""))
    }

    #[test]
    fn parses_fields_quotes_comments_and_secret_kinds() {
        let scram = scram_text("pw");
        let text = format!(
            "; PgBouncer-style comment\n\
             # hash comment\n\
             \n\
             \x20 \t\n\
             \"alice\" \"plain pw\"\n\
             \x20\t\"bob\"\t\"md53175bce1d3201d16594cebf9d7eb3f9d\" trailing \"junk\" ignored\n\
             \"carol\"   \"{scram}\"\r\n\
             \"quo\"\"te\" \"pa\"\"ss\"\"\"\n\
             \"empty\" \"\"\n\
             \"ünï\" \"\u{00e9}\"\n\
             \"semi;colon\" \"#notacomment\""
        );
        let list = Userlist::parse(&text).expect("valid");
        assert_eq!(list.len(), 7);
        assert_eq!(list.get("alice"), Some(&Secret::Plain("plain pw".into())));
        assert_eq!(
            list.get("bob"),
            Some(&Secret::Md5(md5_password_hash("postgres", "postgres")))
        );
        assert_eq!(
            list.get("carol"),
            Some(&Secret::Scram(ScramSecret::parse(&scram).expect("scram")))
        );
        assert_eq!(list.get("quo\"te"), Some(&Secret::Plain("pa\"ss\"".into())));
        assert_eq!(list.get("empty"), Some(&Secret::Plain(String::new())));
        assert_eq!(list.get("ünï"), Some(&Secret::Plain("é".into())));
        assert_eq!(
            list.get("semi;colon"),
            Some(&Secret::Plain("#notacomment".into()))
        );
        assert_eq!(list.get("Alice"), None, "user names are case-sensitive");
        assert!(list.warnings().is_empty(), "{:?}", list.warnings());
        let mut names: Vec<&str> = list.usernames().collect();
        names.sort_unstable();
        assert_eq!(names.first(), Some(&"alice"));
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_lists() {
        for text in ["", "\n\n", "; nothing\n# here\n", "   \r\n"] {
            let list = Userlist::parse(text).expect("valid");
            assert!(list.is_empty());
        }
    }

    #[test]
    fn classification_follows_postgresql() {
        let scram = scram_text("pw");
        let cases: Vec<(String, &str)> = vec![
            ("md53175bce1d3201d16594cebf9d7eb3f9d".into(), "md5"),
            ("md53175BCE1D3201D16594CEBF9D7EB3F9D".into(), "plain"),
            ("md53175bce1d3201d16594cebf9d7eb3f9".into(), "plain"),
            ("md5".into(), "plain"),
            (scram.clone(), "scram-sha-256"),
            (scram.replace("$2:", "$0:"), "plain"),
            ("SCRAM-SHA-256$".into(), "plain"),
            ("hunter2".into(), "plain"),
            (String::new(), "plain"),
        ];
        for (stored, kind) in cases {
            assert_eq!(Secret::classify(&stored).kind(), kind, "{stored:?}");
        }
    }

    #[test]
    fn line_errors_carry_line_numbers_and_reasons() {
        let long_user = "u".repeat(MAX_USERNAME_LEN + 1);
        let long_password = "p".repeat(MAX_PASSWORD_LEN + 1);
        let long_line = format!("\"u\" \"p\" {}", "x".repeat(MAX_LINE_LEN));
        let cases: Vec<(String, usize, LineError)> = vec![
            ("alice \"pw\"".into(), 1, LineError::ExpectedQuote),
            ("\n; ok\n'alice' 'pw'".into(), 3, LineError::ExpectedQuote),
            (
                "\"alice\" \"pw\"\n\"bob \"pw\"".into(),
                2,
                LineError::ExpectedBlank,
            ),
            ("\"alice pw".into(), 1, LineError::UnterminatedField),
            ("\"alice\" \"pw".into(), 1, LineError::UnterminatedField),
            // `""` is an escaped quote, so this is one field, `alice"pw`.
            ("\"alice\"\"pw\"".into(), 1, LineError::MissingPassword),
            ("\"alice\"x\"pw\"".into(), 1, LineError::ExpectedBlank),
            ("\"alice\",\"pw\"".into(), 1, LineError::ExpectedBlank),
            ("\"alice\"".into(), 1, LineError::MissingPassword),
            ("\"alice\"   \t".into(), 1, LineError::MissingPassword),
            ("\"alice\" pw".into(), 1, LineError::ExpectedQuote),
            ("\"\" \"pw\"".into(), 1, LineError::EmptyUsername),
            (
                format!("\"{long_user}\" \"pw\""),
                1,
                LineError::UsernameTooLong,
            ),
            (
                format!("\"u\" \"{long_password}\""),
                1,
                LineError::PasswordTooLong,
            ),
            ("\"u\0\" \"pw\"".into(), 1, LineError::NulByte),
            ("\"u\" \"p\0w\"".into(), 1, LineError::NulByte),
            (format!("\n\n{long_line}"), 3, LineError::TooLong),
        ];
        for (text, line, reason) in cases {
            assert_eq!(line_error(&text), (line, reason), "{text:?}");
        }
        // Limits themselves are accepted.
        let at_limit = format!(
            "\"{}\" \"{}\"",
            "u".repeat(MAX_USERNAME_LEN),
            "p".repeat(MAX_PASSWORD_LEN)
        );
        assert_eq!(Userlist::parse(&at_limit).expect("at limit").len(), 1);
    }

    #[test]
    fn non_utf8_line_is_reported() {
        let err = Userlist::parse_bytes(b"\"a\" \"b\"\n\"\xff\" \"b\"\n").expect_err("invalid");
        assert_eq!(err.line(), Some(2));
        assert!(matches!(
            err,
            UserlistError::Line {
                reason: LineError::NotUtf8,
                ..
            }
        ));
    }

    #[test]
    fn oversized_input_is_rejected() {
        let big = vec![b'\n'; MAX_FILE_LEN + 1];
        assert!(matches!(
            Userlist::parse_bytes(&big),
            Err(UserlistError::TooLarge)
        ));
        let at_cap = vec![b'\n'; MAX_FILE_LEN];
        assert!(Userlist::parse_bytes(&at_cap).expect("at cap").is_empty());
    }

    #[test]
    fn duplicates_and_lookalike_secrets_are_warned_about() {
        let bad_scram = scram_text("pw").replace("$2:", "$x:");
        let text = format!(
            "\"a\" \"one\"\n\
             \"a\" \"two\"\n\
             \"b\" \"{bad_scram}\"\n\
             \"c\" \"MD53175bce1d3201d16594cebf9d7eb3f9d\""
        );
        let list = Userlist::parse(&text).expect("valid");
        assert_eq!(list.get("a"), Some(&Secret::Plain("two".into())));
        assert_eq!(list.get("b").map(Secret::kind), Some("plain"));
        assert_eq!(
            list.warnings(),
            &[
                UserlistWarning {
                    line: 2,
                    kind: WarningKind::DuplicateUser("a".into())
                },
                UserlistWarning {
                    line: 3,
                    kind: WarningKind::MalformedScramSecret(
                        "iteration count is not a positive integer"
                    )
                },
                UserlistWarning {
                    line: 4,
                    kind: WarningKind::MalformedMd5Secret
                },
            ]
        );
        for warning in list.warnings() {
            let text = warning.to_string();
            assert!(text.starts_with("auth file line "), "{text}");
            assert!(!text.contains(&bad_scram), "{text}");
        }
    }

    #[test]
    fn load_reads_files_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("pgbouncers-userlist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("userlist.txt");
        std::fs::write(
            &path,
            "\"alice\" \"pw\"\n\"bob\" \"md53175bce1d3201d16594cebf9d7eb3f9d\"\n",
        )
        .expect("write");
        let list = Userlist::load(&path).expect("loads");
        assert_eq!(list.len(), 2);
        assert_eq!(list.get("alice"), Some(&Secret::Plain("pw".into())));

        let missing = dir.join("missing.txt");
        let err = Userlist::load(&missing).expect_err("missing file");
        assert!(matches!(err, UserlistError::Io { .. }));
        assert_eq!(err.line(), None);
        assert!(err.to_string().contains("missing.txt"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn debug_output_is_redacted() {
        let scram = ScramSecret::from_password("pw", b"0123456789abcdef", 2);
        let text = format!(
            "\"alice\" \"hunter2-plain\"\n\
             \"bob\" \"md53175bce1d3201d16594cebf9d7eb3f9d\"\n\
             \"carol\" \"{}\"",
            scram.encode()
        );
        let list = Userlist::parse(&text).expect("valid");
        let shown = format!("{list:?} {:?}", list.get("alice"));
        assert!(shown.contains("Plain(<redacted>)"), "{shown}");
        assert!(shown.contains("Md5(<redacted>)"), "{shown}");
        assert!(shown.contains("Scram(ScramSecret"), "{shown}");
        assert!(shown.contains("alice"), "user names may show: {shown}");
        for hidden in [
            "hunter2-plain".to_owned(),
            "3175bce1d3201d16594cebf9d7eb3f9d".to_owned(),
            format!("{:?}", md5_password_hash("postgres", "postgres")),
            base64_of(&scram.stored_key),
            base64_of(&scram.server_key),
            format!("{:?}", scram.stored_key),
        ] {
            assert!(!shown.contains(&hidden), "{hidden} leaked in {shown}");
        }
        let err = line_error("\"alice\" \"secret-in-broken-line");
        assert!(!format!("{err:?}").contains("secret"));
    }

    fn base64_of(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn md5_login_against_each_secret_kind() {
        let salt = [1, 2, 3, 4];
        let good = md5_salted_response(&md5_password_hash("postgres", "postgres"), salt);
        let plain = Secret::Plain("postgres".into());
        let md5 = Secret::Md5(md5_password_hash("postgres", "postgres"));
        let scram = Secret::Scram(ScramSecret::from_password("postgres", b"salt", 2));
        assert!(plain.verify_md5_response("postgres", salt, good.as_bytes()));
        assert!(md5.verify_md5_response("postgres", salt, good.as_bytes()));
        assert!(!scram.verify_md5_response("postgres", salt, good.as_bytes()));
        // The user name salts the hash: another user with the same password fails.
        assert!(!plain.verify_md5_response("other", salt, good.as_bytes()));
        assert!(!md5.verify_md5_response("postgres", [0; 4], good.as_bytes()));
        // An empty stored password never verifies, even with the matching response.
        let empty = Secret::Plain(String::new());
        let empty_response = md5_salted_response(&md5_password_hash("postgres", ""), salt);
        assert!(!empty.verify_md5_response("postgres", salt, empty_response.as_bytes()));
        assert_eq!(
            md5.md5_password_hash("postgres")
                .map(|h| md5_secret_string(&h)),
            Some("md53175bce1d3201d16594cebf9d7eb3f9d".to_owned())
        );
    }

    #[test]
    fn cleartext_login_against_each_secret_kind() {
        let plain = Secret::Plain("postgres".into());
        let md5 = Secret::Md5(md5_password_hash("postgres", "postgres"));
        let scram = Secret::Scram(ScramSecret::from_password("postgres", b"salt", 2));
        for secret in [&plain, &md5, &scram] {
            assert!(
                secret.verify_cleartext("postgres", "postgres"),
                "{secret:?}"
            );
            assert!(
                !secret.verify_cleartext("postgres", "postgreS"),
                "{secret:?}"
            );
            assert!(!secret.verify_cleartext("postgres", ""), "{secret:?}");
        }
        assert!(!md5.verify_cleartext("other", "postgres"));
        assert!(!Secret::Plain(String::new()).verify_cleartext("u", ""));
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Userlist::parse_bytes(&bytes);
        }

        #[test]
        fn parse_never_panics_on_quote_soup(text in "[\"a; \t#\r\n]{0,64}") {
            let _ = Userlist::parse(&text);
        }

        #[test]
        fn quoted_entries_round_trip(
            entries in proptest::collection::vec(("[^\0\r\n]{1,20}", "[^\0\r\n]{0,40}"), 0..8),
            blanks in "[ \t]{1,3}",
        ) {
            let text: String = entries
                .iter()
                .map(|(user, password)| format!("{}{blanks}{}\n", quote(user), quote(password)))
                .collect();
            let list = Userlist::parse(&text).expect("quoted entries parse");
            // Last one wins for duplicates.
            let mut expected = HashMap::new();
            for (user, password) in &entries {
                expected.insert(user.clone(), Secret::classify(password));
            }
            prop_assert_eq!(list.len(), expected.len());
            for (user, secret) in &expected {
                prop_assert_eq!(list.get(user), Some(secret));
            }
        }
    }
}
