//! The `auth_hba_file` (pg_hba.conf syntax): parse it and pick the auth method for a connection.
//!
//! Syntax is PostgreSQL 16's: one record per line, `#` comments, blank lines,
//! fields split by spaces/tabs, `"..."` quoting (`""` is one `"`), comma lists,
//! and a trailing `\` continuing a record on the next line (even inside quotes
//! or a comment; an error names the record's first line). Tokenizing follows
//! PostgreSQL's `next_token` exactly, so a file PostgreSQL reads one way is not
//! read another way here; the only differences are errors: an unterminated
//! quote, an empty quoted name and a NUL byte are rejected.
//!
//! Supported, as in PgBouncer:
//! - record types `local`, `host`, `hostssl`, `hostnossl`;
//! - database: names, `all`, `sameuser`, `replication` (which alone matches a
//!   physical replication connection; a logical one matches by its database);
//! - user: names, `all`;
//! - address: `all`, CIDR (`10.0.0.0/8`, `2001:db8::/32`), or an address plus a
//!   separate netmask column, which must be contiguous. IPv4-mapped IPv6 clients
//!   match IPv4 rules (see [`Cidr::contains`]);
//! - methods `trust`, `reject`, `md5`, `scram-sha-256`, `password`, `peer`
//!   (local only), `cert` (hostssl only), and `ident` on `local`, which
//!   PostgreSQL treats as `peer`;
//! - `name=value` options after the method, kept; `endpoint=` (ours) narrows a line to
//!   connections a cloud load balancer says came through that private endpoint, the
//!   others are ignored.
//!
//! Rejected with an error naming the line and token, because silently skipping
//! what a rule meant could let a connection fall through to a laxer rule below:
//! `hostgssenc`/`hostnogssenc`, `include*` directives, `@file` references,
//! `+group` users, `samerole`/`samegroup`, `/regex` names (quoted or not, as in
//! PostgreSQL), `samehost`/`samenet`, host names, and every other method.
//! As in PostgreSQL, quoting a keyword (`"all"`) makes it a plain name, and the
//! record type and method are recognized quoted or not.
//!
//! The first record whose type, address, database and user all match wins; no
//! match means the connection is refused ([`Hba::lookup`] returns `None`).
//! A file with any bad line is rejected as a whole (PgBouncer skips bad lines,
//! which can drop a `reject`), so on reload the caller keeps the previous rules.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::iter::Peekable;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::Chars;

use crate::cidr::{Cidr, CidrError};

/// Largest hba file accepted; real ones are a few kilobytes.
pub const MAX_FILE_LEN: usize = 1024 * 1024;
/// Most physical lines accepted.
pub const MAX_LINES: usize = 65_536;
/// Longest record, after joining continuation lines (PostgreSQL allows 10 kB tokens).
pub const MAX_LINE_LEN: usize = 16 * 1024;
/// Longest token quoted back in an error message.
const MAX_ERROR_TOKEN_CHARS: usize = 64;

/// The record type: which connections a rule can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnType {
    /// `local`: Unix-domain socket connections.
    Local,
    /// `host`: TCP, with or without TLS.
    Host,
    /// `hostssl`: TCP with TLS only.
    HostSsl,
    /// `hostnossl`: TCP without TLS only.
    HostNoSsl,
}

impl ConnType {
    /// The keyword as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnType::Local => "local",
            ConnType::Host => "host",
            ConnType::HostSsl => "hostssl",
            ConnType::HostNoSsl => "hostnossl",
        }
    }
}

impl fmt::Display for ConnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authentication method a rule selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    /// Cleartext password (PgBouncer's `plain`).
    Password,
    /// Unix socket peer credentials; only on `local` rules.
    Peer,
    /// TLS client certificate; only on `hostssl` rules.
    Cert,
}

impl Method {
    /// The keyword as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Trust => "trust",
            Method::Reject => "reject",
            Method::Md5 => "md5",
            Method::ScramSha256 => "scram-sha-256",
            Method::Password => "password",
            Method::Peer => "peer",
            Method::Cert => "cert",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a rule's database list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbMatch {
    /// `all`.
    All,
    /// `sameuser`: the database named like the user.
    SameUser,
    /// `replication`: physical replication connections, and only those (PgBouncer 1.23+).
    Replication,
    /// A literal name, compared case-sensitively.
    Name(String),
}

/// One entry of a rule's user list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserMatch {
    /// `all`.
    All,
    /// A literal name, compared case-sensitively.
    Name(String),
}

/// A rule's client address (host rules only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    /// `all`: any IPv4 or IPv6 address.
    All,
    /// A network; a netmask column is stored as its prefix length.
    Net(Cidr),
}

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    line: usize,
    conn_type: ConnType,
    databases: Vec<DbMatch>,
    users: Vec<UserMatch>,
    address: Option<Address>,
    method: Method,
    options: Vec<(String, String)>,
}

impl Rule {
    /// The 1-based line the record starts on (for "matched hba line N" logs).
    pub fn line(&self) -> usize {
        self.line
    }

    pub fn conn_type(&self) -> ConnType {
        self.conn_type
    }

    /// Never empty.
    pub fn databases(&self) -> &[DbMatch] {
        &self.databases
    }

    /// Never empty.
    pub fn users(&self) -> &[UserMatch] {
        &self.users
    }

    /// `None` exactly for `local` rules.
    pub fn address(&self) -> Option<&Address> {
        self.address.as_ref()
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The `name=value` options after the method, in file order, unvalidated.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    /// Whether this rule applies to `conn`.
    pub fn matches(&self, conn: &HbaConn<'_>) -> bool {
        self.matches_kind(conn.kind)
            && self.databases.iter().any(|d| match d {
                _ if conn.physical_replication => *d == DbMatch::Replication,
                DbMatch::All => true,
                DbMatch::SameUser => conn.database == conn.user,
                DbMatch::Replication => false,
                DbMatch::Name(name) => name == conn.database,
            })
            && self.users.iter().any(|u| match u {
                UserMatch::All => true,
                UserMatch::Name(name) => name == conn.user,
            })
            && self
                .options
                .iter()
                .filter(|(name, _)| name == "endpoint")
                .all(|(_, want)| conn.endpoint == Some(want.as_str()))
    }

    fn matches_kind(&self, kind: HbaConnKind) -> bool {
        let (addr, tls) = match kind {
            HbaConnKind::Local => return self.conn_type == ConnType::Local,
            HbaConnKind::Host { addr, tls } => (addr, tls),
        };
        let type_ok = match self.conn_type {
            ConnType::Local => false,
            ConnType::Host => true,
            ConnType::HostSsl => tls,
            ConnType::HostNoSsl => !tls,
        };
        type_ok
            && match self.address {
                Some(Address::All) => true,
                Some(Address::Net(net)) => net.contains(addr),
                None => false,
            }
    }
}

/// Writes the rule back in pg_hba syntax; parsing the output gives the same rule.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.conn_type)?;
        for (i, db) in self.databases.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { "," })?;
            match db {
                DbMatch::All => f.write_str("all")?,
                DbMatch::SameUser => f.write_str("sameuser")?,
                DbMatch::Replication => f.write_str("replication")?,
                DbMatch::Name(name) => write_token(f, name)?,
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { "," })?;
            match user {
                UserMatch::All => f.write_str("all")?,
                UserMatch::Name(name) => write_token(f, name)?,
            }
        }
        match self.address {
            Some(Address::All) => f.write_str(" all")?,
            Some(Address::Net(net)) => write!(f, " {net}")?,
            None => {}
        }
        write!(f, " {}", self.method)?;
        for (name, value) in &self.options {
            f.write_str(" ")?;
            write_token(f, &format!("{name}={value}"))?;
        }
        Ok(())
    }
}

/// Writes `s` as one token, quoted whenever a bare word would read differently.
fn write_token(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    const KEYWORDS: &[&str] = &["all", "sameuser", "samerole", "samegroup", "replication"];
    let needs_quotes = s.is_empty()
        || KEYWORDS.contains(&s)
        || s.starts_with(['@', '+'])
        // A trailing backslash at the end of a line would continue the record.
        || s.ends_with('\\')
        || s.chars().any(|c| is_blank(c) || matches!(c, ',' | '#' | '"'));
    if !needs_quotes {
        return f.write_str(s);
    }
    f.write_str("\"")?;
    f.write_str(&s.replace('"', "\"\""))?;
    f.write_str("\"")
}

/// How a client reached the pooler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaConnKind {
    /// Unix-domain socket.
    Local,
    /// TCP from `addr` (the real client address, after any PROXY header).
    Host { addr: IpAddr, tls: bool },
}

/// What a rule is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HbaConn<'a> {
    pub kind: HbaConnKind,
    pub database: &'a str,
    pub user: &'a str,
    /// The cloud private endpoint a trusted PROXY header named (`aws:vpce-...`,
    /// `azure:N`, `gcp:N`), which an `endpoint=` option must equal.
    pub endpoint: Option<&'a str>,
    /// A physical replication connection (`replication=true`): only `replication` rules
    /// match it, as in PgBouncer and PostgreSQL.
    pub physical_replication: bool,
}

/// The parsed file: its rules in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<Rule>,
}

impl Hba {
    /// Reads and parses the file at `path` (blocking; at most [`MAX_FILE_LEN`] bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<Hba, HbaError> {
        let path = path.as_ref();
        let io_error = |source| HbaError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let mut bytes = Vec::new();
        // One byte past the cap tells "exactly at the cap" from "over it".
        file.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        if bytes.len() > MAX_FILE_LEN {
            return Err(HbaError::TooLarge);
        }
        match std::str::from_utf8(&bytes) {
            Ok(text) => Hba::parse(text),
            Err(e) => {
                let before = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                Err(HbaError::Line {
                    line,
                    reason: HbaLineError::NotUtf8,
                })
            }
        }
    }

    /// Parses hba file text; the first bad record fails the whole file.
    pub fn parse(text: &str) -> Result<Hba, HbaError> {
        if text.len() > MAX_FILE_LEN {
            return Err(HbaError::TooLarge);
        }
        let mut rules = Vec::new();
        // (first line, text so far) of a record continued with a trailing backslash.
        let mut pending: Option<(usize, String)> = None;
        for (index, raw) in text.split_terminator('\n').enumerate() {
            let number = index.saturating_add(1);
            if number > MAX_LINES {
                return Err(HbaError::TooManyLines);
            }
            let raw = raw.trim_end_matches('\r');
            let (start, mut record) = pending.take().unwrap_or((number, String::new()));
            if record.len().saturating_add(raw.len()) > MAX_LINE_LEN {
                return Err(HbaError::Line {
                    line: start,
                    reason: HbaLineError::TooLong,
                });
            }
            match raw.strip_suffix('\\') {
                Some(head) => {
                    record.push_str(head);
                    pending = Some((start, record));
                }
                None => {
                    record.push_str(raw);
                    parse_record(start, &record, &mut rules)?;
                }
            }
        }
        // A backslash on the last line continues into nothing, as in PostgreSQL.
        if let Some((start, record)) = pending {
            parse_record(start, &record, &mut rules)?;
        }
        Ok(Hba { rules })
    }

    /// The first rule matching `conn`; `None` means refuse the connection
    /// (PostgreSQL's "no pg_hba.conf entry").
    pub fn lookup(&self, conn: &HbaConn<'_>) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.matches(conn))
    }

    /// All rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Why the hba file could not be loaded.
#[derive(Debug)]
pub enum HbaError {
    /// The file could not be read.
    Io { path: PathBuf, source: io::Error },
    /// Larger than [`MAX_FILE_LEN`].
    TooLarge,
    /// More than [`MAX_LINES`] lines.
    TooManyLines,
    /// The record starting on line `line` (1-based) is invalid.
    Line { line: usize, reason: HbaLineError },
}

impl HbaError {
    /// The 1-based line number, for line errors.
    pub fn line(&self) -> Option<usize> {
        match self {
            HbaError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// What was wrong with the line, for line errors.
    pub fn reason(&self) -> Option<&HbaLineError> {
        match self {
            HbaError::Line { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for HbaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HbaError::Io { path, source } => {
                write!(f, "cannot read hba file {}: {source}", path.display())
            }
            HbaError::TooLarge => write!(f, "hba file is larger than {MAX_FILE_LEN} bytes"),
            HbaError::TooManyLines => write!(f, "hba file has more than {MAX_LINES} lines"),
            HbaError::Line { line, reason } => write!(f, "hba file line {line}: {reason}"),
        }
    }
}

impl std::error::Error for HbaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HbaError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A column of a record, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaField {
    ConnType,
    Database,
    User,
    Address,
    Netmask,
    Method,
}

impl fmt::Display for HbaField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HbaField::ConnType => "connection type",
            HbaField::Database => "database",
            HbaField::User => "user",
            HbaField::Address => "address",
            HbaField::Netmask => "netmask",
            HbaField::Method => "authentication method",
        })
    }
}

/// Why one record was rejected. Tokens are quoted as written after unquoting,
/// cut to 64 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HbaLineError {
    /// Longer than [`MAX_LINE_LEN`] (continuation lines included).
    TooLong,
    /// Not valid UTF-8 (only from [`Hba::load`]).
    NotUtf8,
    /// A NUL character.
    NulByte,
    /// A `"` is not closed before the end of the record.
    UnterminatedQuote,
    /// The record ends before this field.
    Missing(HbaField),
    /// A comma list where one value is allowed; carries the second value.
    MultipleValues(HbaField, String),
    /// `""` as a database or user name.
    EmptyName(HbaField),
    /// Not a record type.
    InvalidConnType(String),
    /// `hostgssenc` or `hostnogssenc`.
    UnsupportedConnType(String),
    /// `include`, `include_if_exists` or `include_dir`.
    UnsupportedInclude(String),
    /// `samerole`/`samegroup` (database) or `samehost`/`samenet` (address).
    UnsupportedKeyword(HbaField, String),
    /// `+group` in the user field.
    UnsupportedGroup(String),
    /// `@file` in the database or user field.
    UnsupportedFileRef(HbaField, String),
    /// `/regex` in the database or user field.
    UnsupportedRegex(HbaField, String),
    /// Not an IP address (host names are not supported).
    NotAnAddress(String),
    /// `addr/prefix` with a bad address or prefix.
    InvalidCidr(String, CidrError),
    /// The netmask column is not an IP address.
    InvalidNetmask(String),
    /// IPv4 address with an IPv6 netmask or the other way round.
    NetmaskFamilyMismatch { address: String, netmask: String },
    /// The netmask's one bits are not all leading (e.g. `255.0.255.0`).
    NonContiguousNetmask(String),
    /// Not an authentication method.
    InvalidMethod(String),
    /// A PostgreSQL method the pooler does not implement (ldap, gss, ident on host, …).
    UnsupportedMethod(String),
    /// `peer` off `local`, or `cert` off `hostssl`.
    MethodNotAllowed { method: Method, conn_type: ConnType },
    /// An option that is not `name=value`.
    InvalidOption(String),
}

impl fmt::Display for HbaLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HbaLineError::TooLong => write!(f, "record longer than {MAX_LINE_LEN} bytes"),
            HbaLineError::NotUtf8 => f.write_str("not valid UTF-8"),
            HbaLineError::NulByte => f.write_str("NUL character in record"),
            HbaLineError::UnterminatedQuote => f.write_str("unterminated quoted string"),
            HbaLineError::Missing(field) => write!(f, "end of line before the {field} field"),
            HbaLineError::MultipleValues(field, token) => {
                write!(f, "multiple values for the {field} field ({token:?})")
            }
            HbaLineError::EmptyName(field) => write!(f, "empty {field} name \"\""),
            HbaLineError::InvalidConnType(token) => write!(
                f,
                "invalid connection type {token:?} (expected local, host, hostssl or hostnossl)"
            ),
            HbaLineError::UnsupportedConnType(token) => {
                write!(f, "connection type {token:?} is not supported")
            }
            HbaLineError::UnsupportedInclude(token) => {
                write!(f, "{token:?} directives are not supported")
            }
            HbaLineError::UnsupportedKeyword(field, token) => {
                write!(f, "{token:?} in the {field} field is not supported")
            }
            HbaLineError::UnsupportedGroup(token) => write!(
                f,
                "group membership {token:?} is not supported (quote it for a user named so)"
            ),
            HbaLineError::UnsupportedFileRef(field, token) => write!(
                f,
                "file reference {token:?} in the {field} field is not supported"
            ),
            HbaLineError::UnsupportedRegex(field, token) => write!(
                f,
                "regular expression {token:?} in the {field} field is not supported"
            ),
            HbaLineError::NotAnAddress(token) => write!(
                f,
                "{token:?} is not an IP address (host names are not supported; \
                 use all, an address with /prefix, or an address and a netmask)"
            ),
            HbaLineError::InvalidCidr(token, reason) => {
                write!(f, "invalid address range {token:?}: {reason}")
            }
            HbaLineError::InvalidNetmask(token) => {
                write!(
                    f,
                    "invalid netmask {token:?} (an address without /prefix needs a netmask column)"
                )
            }
            HbaLineError::NetmaskFamilyMismatch { address, netmask } => write!(
                f,
                "address {address:?} and netmask {netmask:?} are not the same IP version"
            ),
            HbaLineError::NonContiguousNetmask(token) => {
                write!(f, "netmask {token:?} is not contiguous")
            }
            HbaLineError::InvalidMethod(token) => {
                write!(f, "invalid authentication method {token:?}")
            }
            HbaLineError::UnsupportedMethod(token) => {
                write!(f, "authentication method {token:?} is not supported")
            }
            HbaLineError::MethodNotAllowed { method, conn_type } => {
                let only = match method {
                    Method::Cert => "hostssl",
                    _ => "local",
                };
                write!(
                    f,
                    "authentication method {method} is only allowed on {only} records, \
                     not {conn_type}"
                )
            }
            HbaLineError::InvalidOption(token) => {
                write!(
                    f,
                    "authentication option {token:?} is not in name=value form"
                )
            }
        }
    }
}

/// One token after unquoting.
#[derive(Debug)]
struct Token {
    text: String,
    /// Whether the token began with a quote: PostgreSQL's test for whether
    /// a keyword, `@file` or `+group` is meant literally.
    quoted: bool,
}

impl Token {
    fn is_keyword(&self, keyword: &str) -> bool {
        !self.quoted && self.text == keyword
    }
}

/// PostgreSQL's `pg_isblank`.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r')
}

/// A token for an error message: bounded so a hostile file can't bloat logs.
fn shown(token: &str) -> String {
    let mut chars = token.chars();
    let mut out: String = chars.by_ref().take(MAX_ERROR_TOKEN_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Splits a record into fields, each a non-empty comma list of tokens.
fn tokenize(record: &str) -> Result<Vec<Vec<Token>>, HbaLineError> {
    let mut chars = record.chars().peekable();
    let mut fields = Vec::new();
    loop {
        let mut field = Vec::new();
        while let Some((token, comma_follows)) = next_token(&mut chars)? {
            field.push(token);
            if !comma_follows {
                break;
            }
        }
        if field.is_empty() {
            return Ok(fields);
        }
        fields.push(field);
    }
}

/// PostgreSQL's `next_token`: `None` at end of line or comment; otherwise the
/// token and whether an unquoted comma ends it (so the field goes on).
fn next_token(chars: &mut Peekable<Chars<'_>>) -> Result<Option<(Token, bool)>, HbaLineError> {
    // Leading commas are skipped too, which is how "a, b" is one field.
    while chars.next_if(|&c| is_blank(c) || c == ',').is_some() {}
    let mut text = String::new();
    let mut in_quote = false;
    let mut was_quote = false;
    let mut saw_quote = false;
    let mut quoted = false;
    let mut comma_follows = false;
    while let Some(&c) = chars.peek() {
        if !in_quote {
            if is_blank(c) {
                break;
            }
            if c == '#' {
                chars.by_ref().for_each(drop);
                break;
            }
            if c == ',' {
                comma_follows = true;
                break;
            }
        }
        chars.next();
        if c != '"' || was_quote {
            text.push(c);
        }
        // Inside quotes, `""` stands for one `"`: the first closes the quote,
        // the second is kept and reopens it.
        was_quote = in_quote && c == '"';
        if c == '"' {
            in_quote = !in_quote;
            saw_quote = true;
            if text.is_empty() {
                quoted = true;
            }
        }
    }
    if in_quote {
        return Err(HbaLineError::UnterminatedQuote);
    }
    if !saw_quote && text.is_empty() {
        return Ok(None);
    }
    // PgBouncer's tokenizer makes the comma a token of its own, so blanks may
    // stand before it too: "alice , bob" and "alice ,bob" are one list, where
    // PostgreSQL would end the field at "alice". Accepting more than
    // PostgreSQL here changes no line PostgreSQL accepts: there a comma cannot
    // start a field's first token.
    if !comma_follows {
        while chars.next_if(|&c| is_blank(c)).is_some() {}
        comma_follows = chars.next_if_eq(&',').is_some();
    }
    Ok(Some((Token { text, quoted }, comma_follows)))
}

/// Parses one record (first physical line `line`) and appends its rule, if any.
fn parse_record(line: usize, record: &str, rules: &mut Vec<Rule>) -> Result<(), HbaError> {
    let error = |reason| HbaError::Line { line, reason };
    if record.contains('\0') {
        return Err(error(HbaLineError::NulByte));
    }
    let fields = tokenize(record).map_err(error)?;
    if fields.is_empty() {
        return Ok(());
    }
    parse_fields(line, fields)
        .map(|rule| rules.push(rule))
        .map_err(error)
}

fn parse_fields(line: usize, fields: Vec<Vec<Token>>) -> Result<Rule, HbaLineError> {
    let mut fields = fields.into_iter();
    let conn_type = match single(fields.next(), HbaField::ConnType)?.text.as_str() {
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        other @ ("hostgssenc" | "hostnogssenc") => {
            return Err(HbaLineError::UnsupportedConnType(shown(other)))
        }
        other @ ("include" | "include_if_exists" | "include_dir") => {
            return Err(HbaLineError::UnsupportedInclude(shown(other)))
        }
        other => return Err(HbaLineError::InvalidConnType(shown(other))),
    };

    let databases = fields
        .next()
        .ok_or(HbaLineError::Missing(HbaField::Database))?
        .into_iter()
        .map(parse_database)
        .collect::<Result<Vec<_>, _>>()?;
    let users = fields
        .next()
        .ok_or(HbaLineError::Missing(HbaField::User))?
        .into_iter()
        .map(parse_user)
        .collect::<Result<Vec<_>, _>>()?;

    let address = match conn_type {
        ConnType::Local => None,
        _ => Some(parse_address(&mut fields)?),
    };

    let method_token = single(fields.next(), HbaField::Method)?;
    let method = match method_token.text.as_str() {
        "trust" => Method::Trust,
        "reject" => Method::Reject,
        "md5" => Method::Md5,
        "scram-sha-256" => Method::ScramSha256,
        "password" => Method::Password,
        "peer" => Method::Peer,
        "cert" => Method::Cert,
        // PostgreSQL turns ident on local sockets into peer.
        "ident" if conn_type == ConnType::Local => Method::Peer,
        other @ ("ident" | "gss" | "sspi" | "pam" | "bsd" | "ldap" | "radius") => {
            return Err(HbaLineError::UnsupportedMethod(shown(other)))
        }
        other => return Err(HbaLineError::InvalidMethod(shown(other))),
    };
    let allowed = match method {
        Method::Peer => conn_type == ConnType::Local,
        Method::Cert => conn_type == ConnType::HostSsl,
        _ => true,
    };
    if !allowed {
        return Err(HbaLineError::MethodNotAllowed { method, conn_type });
    }

    let mut options = Vec::new();
    for token in fields.flatten() {
        match token.text.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                options.push((name.to_owned(), value.to_owned()))
            }
            _ => return Err(HbaLineError::InvalidOption(shown(&token.text))),
        }
    }

    Ok(Rule {
        line,
        conn_type,
        databases,
        users,
        address,
        method,
        options,
    })
}

/// The one token of a field that takes no list.
fn single(field: Option<Vec<Token>>, which: HbaField) -> Result<Token, HbaLineError> {
    let mut tokens = field.ok_or(HbaLineError::Missing(which))?.into_iter();
    let first = tokens.next().ok_or(HbaLineError::Missing(which))?;
    match tokens.next() {
        Some(second) => Err(HbaLineError::MultipleValues(which, shown(&second.text))),
        None => Ok(first),
    }
}

/// Rejects name forms PostgreSQL gives a meaning the pooler can't honour.
fn check_name(token: &Token, field: HbaField) -> Result<(), HbaLineError> {
    // PostgreSQL compiles a regex for every token starting with '/', quoted or not.
    if token.text.starts_with('/') {
        return Err(HbaLineError::UnsupportedRegex(field, shown(&token.text)));
    }
    if !token.quoted && token.text.len() > 1 && token.text.starts_with('@') {
        return Err(HbaLineError::UnsupportedFileRef(field, shown(&token.text)));
    }
    if token.text.is_empty() {
        return Err(HbaLineError::EmptyName(field));
    }
    Ok(())
}

fn parse_database(token: Token) -> Result<DbMatch, HbaLineError> {
    if token.is_keyword("all") {
        return Ok(DbMatch::All);
    }
    if token.is_keyword("sameuser") {
        return Ok(DbMatch::SameUser);
    }
    if token.is_keyword("replication") {
        return Ok(DbMatch::Replication);
    }
    if token.is_keyword("samerole") || token.is_keyword("samegroup") {
        return Err(HbaLineError::UnsupportedKeyword(
            HbaField::Database,
            token.text,
        ));
    }
    check_name(&token, HbaField::Database)?;
    Ok(DbMatch::Name(token.text))
}

fn parse_user(token: Token) -> Result<UserMatch, HbaLineError> {
    if token.is_keyword("all") {
        return Ok(UserMatch::All);
    }
    if !token.quoted && token.text.starts_with('+') {
        return Err(HbaLineError::UnsupportedGroup(shown(&token.text)));
    }
    check_name(&token, HbaField::User)?;
    Ok(UserMatch::Name(token.text))
}

/// Reads the address field, and the netmask field after a bare address.
fn parse_address(fields: &mut impl Iterator<Item = Vec<Token>>) -> Result<Address, HbaLineError> {
    let token = single(fields.next(), HbaField::Address)?;
    if token.is_keyword("all") {
        return Ok(Address::All);
    }
    if token.is_keyword("samehost") || token.is_keyword("samenet") {
        return Err(HbaLineError::UnsupportedKeyword(
            HbaField::Address,
            token.text,
        ));
    }
    let text = token.text.as_str();
    if text.contains('/') {
        return text
            .parse::<Cidr>()
            .map(Address::Net)
            .map_err(|e| HbaLineError::InvalidCidr(shown(text), e));
    }
    let addr: IpAddr = text
        .parse()
        .map_err(|_| HbaLineError::NotAnAddress(shown(text)))?;
    let mask_token = single(fields.next(), HbaField::Netmask)?;
    let mask: IpAddr = mask_token
        .text
        .parse()
        .map_err(|_| HbaLineError::InvalidNetmask(shown(&mask_token.text)))?;
    let prefix = match (addr, mask) {
        (IpAddr::V4(_), IpAddr::V4(m)) => contiguous_prefix(u128::from(u32::from(m)) << 96),
        (IpAddr::V6(_), IpAddr::V6(m)) => contiguous_prefix(u128::from(m)),
        _ => {
            return Err(HbaLineError::NetmaskFamilyMismatch {
                address: shown(text),
                netmask: shown(&mask_token.text),
            })
        }
    }
    .ok_or_else(|| HbaLineError::NonContiguousNetmask(shown(&mask_token.text)))?;
    // Host bits set in the address are ignored, as PostgreSQL's masked compare does.
    Cidr::new(addr, prefix)
        .map(Address::Net)
        .map_err(|e| HbaLineError::InvalidCidr(shown(text), e))
}

/// The prefix length of a left-aligned mask, or `None` if its ones are not all leading.
fn contiguous_prefix(mask: u128) -> Option<u8> {
    let ones = mask.leading_ones();
    // All bits after the leading ones must be zero.
    let rest = mask.checked_shl(ones).unwrap_or(0);
    if rest != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn net(s: &str) -> Address {
        Address::Net(s.parse().unwrap())
    }

    fn name(s: &str) -> DbMatch {
        DbMatch::Name(s.to_owned())
    }

    fn user(s: &str) -> UserMatch {
        UserMatch::Name(s.to_owned())
    }

    fn rule(
        line: usize,
        conn_type: ConnType,
        databases: Vec<DbMatch>,
        users: Vec<UserMatch>,
        address: Option<Address>,
        method: Method,
    ) -> Rule {
        Rule {
            line,
            conn_type,
            databases,
            users,
            address,
            method,
            options: Vec::new(),
        }
    }

    fn only_rule(text: &str) -> Rule {
        let hba = Hba::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(hba.len(), 1, "{text:?}");
        hba.rules()[0].clone()
    }

    #[test]
    fn parses_every_form() {
        use ConnType::*;
        use DbMatch::{All as DbAll, Replication, SameUser};
        use Method::*;
        use UserMatch::All as UserAll;
        let v4 = || Some(net("10.0.0.0/8"));
        #[rustfmt::skip]
        let cases: Vec<(&str, Rule)> = vec![
            ("local all all trust", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            ("local all postgres peer", rule(1, Local, vec![DbAll], vec![user("postgres")], None, Peer)),
            // PostgreSQL turns ident on local sockets into peer.
            ("local all all ident", rule(1, Local, vec![DbAll], vec![UserAll], None, Peer)),
            ("host all all 10.0.0.0/8 md5", rule(1, Host, vec![DbAll], vec![UserAll], v4(), Md5)),
            ("host all all ::1/128 scram-sha-256", rule(1, Host, vec![DbAll], vec![UserAll], Some(net("::1/128")), ScramSha256)),
            ("hostnossl all all 2001:db8::/32 password", rule(1, HostNoSsl, vec![DbAll], vec![UserAll], Some(net("2001:db8::/32")), Password)),
            ("hostssl all all all cert", rule(1, HostSsl, vec![DbAll], vec![UserAll], Some(Address::All), Cert)),
            ("host all all 10.0.0.0 255.0.0.0 reject", rule(1, Host, vec![DbAll], vec![UserAll], v4(), Reject)),
            ("host all all 192.168.1.7 255.255.255.255 trust", rule(1, Host, vec![DbAll], vec![UserAll], Some(net("192.168.1.7/32")), Trust)),
            ("host all all 0.0.0.0 0.0.0.0 trust", rule(1, Host, vec![DbAll], vec![UserAll], Some(net("0.0.0.0/0")), Trust)),
            ("host all all 2001:db8:: ffff:ffff:: trust", rule(1, Host, vec![DbAll], vec![UserAll], Some(net("2001:db8::/32")), Trust)),
            ("host all all ::ffff:10.0.0.0 ffff:ffff:ffff:ffff:ffff:ffff:ff00:0 trust", rule(1, Host, vec![DbAll], vec![UserAll], v4(), Trust)),
            // Host bits are ignored, as in PostgreSQL's masked compare.
            ("host all all 10.1.2.3/8 trust", rule(1, Host, vec![DbAll], vec![UserAll], v4(), Trust)),
            ("host all all ::ffff:10.0.0.0/104 trust", rule(1, Host, vec![DbAll], vec![UserAll], v4(), Trust)),
            ("host db1,db2 alice,bob 10.0.0.0/8 md5", rule(1, Host, vec![name("db1"), name("db2")], vec![user("alice"), user("bob")], v4(), Md5)),
            // PostgreSQL skips blanks after a comma, so this is still one list.
            ("local db1, db2,  db3 all trust", rule(1, Local, vec![name("db1"), name("db2"), name("db3")], vec![UserAll], None, Trust)),
            // PgBouncer's tokenizer also allows blanks before a comma.
            ("host all alice , bob 10.0.0.0/8 md5", rule(1, Host, vec![DbAll], vec![user("alice"), user("bob")], v4(), Md5)),
            ("host db1 ,db2\t,\tdb3 alice ,\"bob\" 10.0.0.0/8 md5", rule(1, Host, vec![name("db1"), name("db2"), name("db3")], vec![user("alice"), user("bob")], v4(), Md5)),
            ("local all alice , bob trust # comment", rule(1, Local, vec![DbAll], vec![user("alice"), user("bob")], None, Trust)),
            ("local \"all\" \"all\" trust", rule(1, Local, vec![name("all")], vec![user("all")], None, Trust)),
            ("local all,\"all\" all,\"all\" trust", rule(1, Local, vec![DbAll, name("all")], vec![UserAll, user("all")], None, Trust)),
            // Database keywords are plain names in the user field.
            ("local sameuser,\"sameuser\" replication trust", rule(1, Local, vec![SameUser, name("sameuser")], vec![user("replication")], None, Trust)),
            ("local replication,\"replication\" all trust", rule(1, Local, vec![Replication, name("replication")], vec![UserAll], None, Trust)),
            ("local \"my db\",\"a,b\",\"x#y\" \"say \"\"hi\"\"\" trust", rule(1, Local, vec![name("my db"), name("a,b"), name("x#y")], vec![user("say \"hi\"")], None, Trust)),
            // Quoting applies mid-token too.
            ("local my\" \"db all trust", rule(1, Local, vec![name("my db")], vec![UserAll], None, Trust)),
            // '+' is special only in the user field; a lone '@' is a name.
            ("local \"+group\",\"@file\",@,+x all trust", rule(1, Local, vec![name("+group"), name("@file"), name("@"), name("+x")], vec![UserAll], None, Trust)),
            ("local all \"+admins\",\"@users\",@ trust", rule(1, Local, vec![DbAll], vec![user("+admins"), user("@users"), user("@")], None, Trust)),
            ("local all all trust # host all all all reject", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            ("local all all trust#comment", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            ("\t local\tall \t all   trust \r", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            // Record type and method are recognized quoted, as in PostgreSQL.
            ("\"local\" all all \"trust\"", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            ("\n# comment\n\n   \n\t# another\nlocal all all trust\n\n", rule(6, Local, vec![DbAll], vec![UserAll], None, Trust)),
            ("host all all \\\n  10.0.0.0/8 \\\n  md5", rule(1, Host, vec![DbAll], vec![UserAll], v4(), Md5)),
            // Continuation inside quotes joins the text.
            ("# x\nlocal \"long\\\nname\" all trust", rule(2, Local, vec![name("longname")], vec![UserAll], None, Trust)),
            // A continued comment swallows the next line.
            ("# comment \\\nhost all all all reject\nlocal all all trust", rule(3, Local, vec![DbAll], vec![UserAll], None, Trust)),
            // An empty line ends a continuation.
            ("local all all trust \\\n\n# c", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            // A backslash on the last line continues into nothing.
            ("local all all trust\\", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
            ("local all all trust\r\n", rule(1, Local, vec![DbAll], vec![UserAll], None, Trust)),
        ];
        for (text, want) in cases {
            assert_eq!(only_rule(text), want, "{text:?}");
        }
    }

    #[test]
    fn endpoint_option_narrows_a_line_to_one_private_endpoint() {
        let hba =
            Hba::parse("host all all all trust endpoint=aws:vpce-1\nhost all all all reject\n")
                .unwrap();
        let mut conn = host_conn("10.0.0.1".parse().unwrap(), false, "d", "u");
        assert_eq!(hba.lookup(&conn).unwrap().line(), 2);
        conn.endpoint = Some("aws:vpce-2");
        assert_eq!(hba.lookup(&conn).unwrap().line(), 2);
        conn.endpoint = Some("aws:vpce-1");
        assert_eq!(hba.lookup(&conn).unwrap().line(), 1);
    }

    #[test]
    fn keeps_options() {
        let r = only_rule("hostssl all all all cert map=omicron clientcert=verify-full x=");
        assert_eq!(
            r.options(),
            &[
                ("map".to_owned(), "omicron".to_owned()),
                ("clientcert".to_owned(), "verify-full".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        let r = only_rule("local all all peer map=\"a b\",k=v=w");
        assert_eq!(
            r.options(),
            &[
                ("map".to_owned(), "a b".to_owned()),
                ("k".to_owned(), "v=w".to_owned()),
            ]
        );
    }

    #[test]
    fn line_numbers_count_continuations_and_blanks() {
        let text = "# header\n\
                    local all all \\\n  peer\n\
                    \n\
                    host all all \\\n\\\n10.0.0.0/8 md5\n\
                    hostssl all all all cert\n";
        let lines: Vec<usize> = Hba::parse(text)
            .unwrap()
            .rules()
            .iter()
            .map(Rule::line)
            .collect();
        assert_eq!(lines, vec![2, 5, 8]);
    }

    #[test]
    fn empty_files() {
        for text in [
            "",
            "\n",
            "# only a comment\n",
            "  \t\r\n\n",
            "\\",
            "\\\n\\\n",
        ] {
            let hba = Hba::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(hba.is_empty(), "{text:?}");
            let conn = HbaConn {
                kind: HbaConnKind::Local,
                database: "d",
                user: "u",
                endpoint: None,
                physical_replication: false,
            };
            assert!(hba.lookup(&conn).is_none());
        }
    }

    #[test]
    fn errors_name_line_and_token() {
        use HbaField as F;
        use HbaLineError as E;
        let s = |t: &str| t.to_owned();
        let long = format!("local all all trust {}", "x".repeat(MAX_LINE_LEN));
        let long_continued = format!(
            "local all all trust\nlocal \\\n{}\\\n{} all trust",
            "a".repeat(MAX_LINE_LEN / 2),
            "b".repeat(MAX_LINE_LEN / 2)
        );
        #[rustfmt::skip]
        let cases: Vec<(&str, usize, HbaLineError)> = vec![
            ("hots all all all trust", 1, E::InvalidConnType(s("hots"))),
            ("Local all all trust", 1, E::InvalidConnType(s("Local"))),
            ("local,host all all trust", 1, E::MultipleValues(F::ConnType, s("host"))),
            ("hostgssenc all all all trust", 1, E::UnsupportedConnType(s("hostgssenc"))),
            ("hostnogssenc all all all trust", 1, E::UnsupportedConnType(s("hostnogssenc"))),
            ("include other.conf", 1, E::UnsupportedInclude(s("include"))),
            ("include_if_exists x", 1, E::UnsupportedInclude(s("include_if_exists"))),
            ("include_dir conf.d", 1, E::UnsupportedInclude(s("include_dir"))),
            ("local", 1, E::Missing(F::Database)),
            ("local all", 1, E::Missing(F::User)),
            ("local all all", 1, E::Missing(F::Method)),
            ("local all all # trust", 1, E::Missing(F::Method)),
            ("host all all", 1, E::Missing(F::Address)),
            ("host all all 10.0.0.0/8", 1, E::Missing(F::Method)),
            ("host all all 10.0.0.0", 1, E::Missing(F::Netmask)),
            ("host all all 10.0.0.0 trust", 1, E::InvalidNetmask(s("trust"))),
            ("host all all 10.0.0.0/8,::1/128 trust", 1, E::MultipleValues(F::Address, s("::1/128"))),
            ("host all all 10.0.0.0 255.0.0.0,255.0.0.0 trust", 1, E::MultipleValues(F::Netmask, s("255.0.0.0"))),
            ("local all all trust,md5", 1, E::MultipleValues(F::Method, s("md5"))),
            ("local all all \"trust", 1, E::UnterminatedQuote),
            ("local \"all all trust", 1, E::UnterminatedQuote),
            ("local \"a\"\" all trust", 1, E::UnterminatedQuote),
            ("local \"\" all trust", 1, E::EmptyName(F::Database)),
            ("local all \"\" trust", 1, E::EmptyName(F::User)),
            ("local samerole all trust", 1, E::UnsupportedKeyword(F::Database, s("samerole"))),
            ("local db,samegroup all trust", 1, E::UnsupportedKeyword(F::Database, s("samegroup"))),
            ("local all +admins trust", 1, E::UnsupportedGroup(s("+admins"))),
            ("local all bob,+ trust", 1, E::UnsupportedGroup(s("+"))),
            ("local all +\"admins\" trust", 1, E::UnsupportedGroup(s("+admins"))),
            ("local @dbs all trust", 1, E::UnsupportedFileRef(F::Database, s("@dbs"))),
            ("local all @users trust", 1, E::UnsupportedFileRef(F::User, s("@users"))),
            ("local all @\"my users\" trust", 1, E::UnsupportedFileRef(F::User, s("@my users"))),
            ("local /^db all trust", 1, E::UnsupportedRegex(F::Database, s("/^db"))),
            ("local all \"/^u.*$\" trust", 1, E::UnsupportedRegex(F::User, s("/^u.*$"))),
            ("host all all samehost trust", 1, E::UnsupportedKeyword(F::Address, s("samehost"))),
            ("host all all samenet trust", 1, E::UnsupportedKeyword(F::Address, s("samenet"))),
            ("host all all db.example.com trust", 1, E::NotAnAddress(s("db.example.com"))),
            ("host all all .example.com trust", 1, E::NotAnAddress(s(".example.com"))),
            ("host all all \"all\" trust", 1, E::NotAnAddress(s("all"))),
            ("host all all 10.0.0 255.0.0.0 trust", 1, E::NotAnAddress(s("10.0.0"))),
            ("host all all fe80::1%eth0 ffff:: trust", 1, E::NotAnAddress(s("fe80::1%eth0"))),
            ("host all all 10.0.0.0/33 trust", 1, E::InvalidCidr(s("10.0.0.0/33"), CidrError::PrefixTooLong { max: 32 })),
            ("host all all ::/129 trust", 1, E::InvalidCidr(s("::/129"), CidrError::PrefixTooLong { max: 128 })),
            ("host all all 10.0.0.0/x trust", 1, E::InvalidCidr(s("10.0.0.0/x"), CidrError::BadPrefix)),
            ("host all all 10.0.0.0/ trust", 1, E::InvalidCidr(s("10.0.0.0/"), CidrError::BadPrefix)),
            ("host all all example.com/24 trust", 1, E::InvalidCidr(s("example.com/24"), CidrError::BadAddress)),
            ("host all all 10.0.0.0 255.0.255.0 trust", 1, E::NonContiguousNetmask(s("255.0.255.0"))),
            ("host all all 10.0.0.0 0.0.0.255 trust", 1, E::NonContiguousNetmask(s("0.0.0.255"))),
            ("host all all ::1 ffff::ffff trust", 1, E::NonContiguousNetmask(s("ffff::ffff"))),
            ("host all all 10.0.0.0 ffff:: trust", 1, E::NetmaskFamilyMismatch { address: s("10.0.0.0"), netmask: s("ffff::") }),
            ("host all all ::1 255.0.0.0 trust", 1, E::NetmaskFamilyMismatch { address: s("::1"), netmask: s("255.0.0.0") }),
            ("host all all 10.0.0.0 24 trust", 1, E::InvalidNetmask(s("24"))),
            ("local all all md6", 1, E::InvalidMethod(s("md6"))),
            ("local all all Trust", 1, E::InvalidMethod(s("Trust"))),
            ("local all all plain", 1, E::InvalidMethod(s("plain"))),
            ("local all all ldap ldapserver=x", 1, E::UnsupportedMethod(s("ldap"))),
            ("host all all all gss", 1, E::UnsupportedMethod(s("gss"))),
            ("host all all all pam", 1, E::UnsupportedMethod(s("pam"))),
            ("host all all all radius", 1, E::UnsupportedMethod(s("radius"))),
            ("host all all all ident", 1, E::UnsupportedMethod(s("ident"))),
            ("host all all all peer", 1, E::MethodNotAllowed { method: Method::Peer, conn_type: ConnType::Host }),
            ("hostssl all all all peer", 1, E::MethodNotAllowed { method: Method::Peer, conn_type: ConnType::HostSsl }),
            ("host all all all cert", 1, E::MethodNotAllowed { method: Method::Cert, conn_type: ConnType::Host }),
            ("hostnossl all all all cert", 1, E::MethodNotAllowed { method: Method::Cert, conn_type: ConnType::HostNoSsl }),
            ("local all all cert", 1, E::MethodNotAllowed { method: Method::Cert, conn_type: ConnType::Local }),
            ("local all all trust extra", 1, E::InvalidOption(s("extra"))),
            ("local all all trust =v", 1, E::InvalidOption(s("=v"))),
            ("local all all trust a=b,c", 1, E::InvalidOption(s("c"))),
            ("local all all trust\0", 1, E::NulByte),
            (&long, 1, E::TooLong),
            (&long_continued, 2, E::TooLong),
            // Errors carry the record's first line: after comments, across continuations.
            ("# c\n\nlocal all all trust\nhost all all 10.0.0.0/8 nope\n", 4, E::InvalidMethod(s("nope"))),
            ("local all all trust\nhost all all \\\n  10.0.0.0/8 \\\n  nope", 2, E::InvalidMethod(s("nope"))),
            ("local all all trust\r\nbogus\r\n", 2, E::InvalidConnType(s("bogus"))),
            // The first bad record fails the file, whatever follows.
            ("local all all trust\nlocal all +g trust\nlocal x y z w\n", 2, E::UnsupportedGroup(s("+g"))),
        ];
        for (text, line, reason) in cases {
            let err = Hba::parse(text).expect_err(text);
            assert_eq!(err.line(), Some(line), "{text:?}: {err}");
            assert_eq!(err.reason(), Some(&reason), "{text:?}: {err}");
            let prefix = format!("hba file line {line}: ");
            assert!(err.to_string().starts_with(&prefix), "{err}");
        }
    }

    #[test]
    fn error_tokens_are_truncated() {
        let host = "h".repeat(500);
        let err = Hba::parse(&format!("host all all {host} trust")).unwrap_err();
        let Some(HbaLineError::NotAnAddress(shown)) = err.reason() else {
            panic!("{err}");
        };
        assert_eq!(shown.chars().count(), MAX_ERROR_TOKEN_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn size_limits() {
        // MAX_LINES comment lines of 16 bytes fill the file exactly.
        let at_cap = "###############\n".repeat(MAX_LINES);
        assert_eq!(at_cap.len(), MAX_FILE_LEN);
        assert!(Hba::parse(&at_cap).unwrap().is_empty());
        let over = format!("{at_cap}#");
        assert!(matches!(Hba::parse(&over), Err(HbaError::TooLarge)));

        let lines = "\n".repeat(MAX_LINES);
        assert!(Hba::parse(&lines).unwrap().is_empty());
        let too_many = "\n".repeat(MAX_LINES + 1);
        assert!(matches!(Hba::parse(&too_many), Err(HbaError::TooManyLines)));
        // The last line without a newline counts too.
        let too_many = format!("{}x", "\n".repeat(MAX_LINES));
        assert!(matches!(Hba::parse(&too_many), Err(HbaError::TooManyLines)));

        let record = format!("local {} all trust", "d".repeat(MAX_LINE_LEN - 16));
        assert_eq!(record.len(), MAX_LINE_LEN);
        assert_eq!(Hba::parse(&record).unwrap().len(), 1);
        let record = format!("local {} all trust", "d".repeat(MAX_LINE_LEN - 15));
        let err = Hba::parse(&record).unwrap_err();
        assert_eq!(err.reason(), Some(&HbaLineError::TooLong));
    }

    #[test]
    fn load_reads_files_and_reports_bad_utf8() {
        let dir = std::env::temp_dir().join(format!("pgbouncers-hba-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.conf");
        std::fs::write(&good, "local all all peer\nhost all all 10.0.0.0/8 md5\n").unwrap();
        assert_eq!(Hba::load(&good).unwrap().len(), 2);

        let bad = dir.join("bad.conf");
        std::fs::write(&bad, b"local all all peer\n# caf\xe9\n").unwrap();
        let err = Hba::load(&bad).unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.reason(), Some(&HbaLineError::NotUtf8));

        let big = dir.join("big.conf");
        std::fs::write(&big, vec![b'#'; MAX_FILE_LEN + 1]).unwrap();
        assert!(matches!(Hba::load(&big), Err(HbaError::TooLarge)));

        let missing = dir.join("missing.conf");
        let err = Hba::load(&missing).unwrap_err();
        assert!(matches!(&err, HbaError::Io { path, .. } if path == &missing));
        assert!(err.to_string().contains("missing.conf"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn local(database: &'static str, user: &'static str) -> HbaConn<'static> {
        HbaConn {
            kind: HbaConnKind::Local,
            database,
            user,
            endpoint: None,
            physical_replication: false,
        }
    }

    fn physical(conn: HbaConn<'static>) -> HbaConn<'static> {
        HbaConn {
            physical_replication: true,
            ..conn
        }
    }

    fn tcp(addr: &str, tls: bool, database: &'static str, user: &'static str) -> HbaConn<'static> {
        HbaConn {
            kind: HbaConnKind::Host {
                addr: addr.parse().unwrap(),
                tls,
            },
            database,
            user,
            endpoint: None,
            physical_replication: false,
        }
    }

    const MATCH_FILE: &str = "\
# TYPE    DATABASE     USER         ADDRESS                  METHOD
local     all          postgres                              peer
local     replication  all                                   trust
local     all          all                                   md5
host      db1,db2      alice,bob    10.0.0.0/8               scram-sha-256
host      \"all\"        carol        10.0.0.0/8               trust
host      all          \"all\"        10.0.0.0/8               password
hostssl   all          all          ::1/128                  cert
hostnossl all          dave         192.168.0.0 255.255.0.0  password
hostssl   all          dave         192.168.0.0 255.255.0.0  md5
host      sameuser     all          2001:db8::/32            trust
host      replication  all          all                      trust
host      all          erin         ::ffff:172.16.0.0/108    md5
host      all          all          0.0.0.0/0                reject
host      all          all          ::/0                     scram-sha-256
";

    #[test]
    fn matching_first_rule_wins() {
        use Method::*;
        let hba = Hba::parse(MATCH_FILE).unwrap();
        #[rustfmt::skip]
        let cases: Vec<(HbaConn<'static>, Option<(usize, Method)>)> = vec![
            // local: first match wins; replication never matches.
            (local("app", "postgres"), Some((2, Peer))),
            (local("replication", "x"), Some((4, Md5))),
            (local("app", "x"), Some((4, Md5))),
            // lists
            (tcp("10.1.2.3", false, "db1", "alice"), Some((5, ScramSha256))),
            (tcp("10.1.2.3", true, "db2", "bob"), Some((5, ScramSha256))),
            (tcp("10.1.2.3", false, "db3", "bob"), Some((14, Reject))),
            (tcp("10.1.2.3", false, "db1", "carol"), Some((14, Reject))),
            // a quoted "all" is a literal name
            (tcp("10.1.2.3", false, "all", "carol"), Some((6, Trust))),
            (tcp("10.1.2.3", false, "app", "all"), Some((7, Password))),
            (tcp("10.1.2.3", false, "app", "alice"), Some((14, Reject))),
            // IPv4-mapped clients are IPv4 clients
            (tcp("::ffff:10.1.2.3", false, "db1", "alice"), Some((5, ScramSha256))),
            (tcp("::ffff:11.1.2.3", false, "db1", "alice"), Some((14, Reject))),
            // a mapped network in the file is an IPv4 network
            (tcp("172.16.5.5", false, "app", "erin"), Some((13, Md5))),
            (tcp("::ffff:172.31.255.255", false, "app", "erin"), Some((13, Md5))),
            (tcp("172.32.0.1", false, "app", "erin"), Some((14, Reject))),
            // IPv6, hostssl; IPv6 clients skip IPv4 rules
            (tcp("::1", true, "app", "x"), Some((8, Cert))),
            (tcp("::1", false, "app", "x"), Some((15, ScramSha256))),
            (tcp("::2", true, "app", "x"), Some((15, ScramSha256))),
            // netmask column, with ssl / nossl
            (tcp("192.168.4.4", false, "app", "dave"), Some((9, Password))),
            (tcp("192.168.4.4", true, "app", "dave"), Some((10, Md5))),
            (tcp("192.169.4.4", true, "app", "dave"), Some((14, Reject))),
            // sameuser
            (tcp("2001:db8::5", false, "frank", "frank"), Some((11, Trust))),
            (tcp("2001:db8::5", false, "frank", "frankie"), Some((15, ScramSha256))),
            // ...nor over TCP for an ordinary connection to a database so named
            (tcp("203.0.113.9", false, "replication", "x"), Some((14, Reject))),
            // a physical replication connection matches `replication` lines only
            (physical(local("app", "x")), Some((3, Trust))),
            (physical(tcp("10.1.2.3", false, "db1", "alice")), Some((12, Trust))),
            (physical(local("app", "postgres")), Some((3, Trust))),
            (physical(tcp("::1", true, "app", "x")), Some((12, Trust))),
            // names are case-sensitive
            (tcp("10.1.2.3", false, "DB1", "alice"), Some((14, Reject))),
            (tcp("10.1.2.3", false, "db1", "Alice"), Some((14, Reject))),
        ];
        for (conn, want) in cases {
            let got = hba.lookup(&conn).map(|r| (r.line(), r.method()));
            assert_eq!(got, want, "{conn:?}");
        }
    }

    #[test]
    fn no_match_is_none() {
        let hba = Hba::parse("host all all 10.0.0.0/8 trust\nlocal db all trust\n").unwrap();
        assert!(hba.lookup(&tcp("11.0.0.1", false, "db", "u")).is_none());
        assert!(hba.lookup(&tcp("::1", false, "db", "u")).is_none());
        assert!(hba.lookup(&local("other", "u")).is_none());
        assert_eq!(hba.lookup(&local("db", "u")).map(Rule::line), Some(2));
        // A host rule never matches a local connection and vice versa.
        let all = Hba::parse("host all all all trust").unwrap();
        assert!(all.lookup(&local("db", "u")).is_none());
        assert!(all.lookup(&tcp("::1", true, "db", "u")).is_some());
        assert!(all.lookup(&tcp("1.2.3.4", false, "db", "u")).is_some());
    }

    #[test]
    fn ssl_types_match_tls_state() {
        for (conn_type, plain, tls) in [
            ("host", true, true),
            ("hostssl", false, true),
            ("hostnossl", true, false),
        ] {
            let hba = Hba::parse(&format!("{conn_type} all all 10.0.0.0 255.0.0.0 md5")).unwrap();
            assert_eq!(
                hba.lookup(&tcp("10.9.9.9", false, "d", "u")).is_some(),
                plain,
                "{conn_type}"
            );
            assert_eq!(
                hba.lookup(&tcp("10.9.9.9", true, "d", "u")).is_some(),
                tls,
                "{conn_type}"
            );
        }
    }

    #[test]
    fn contiguous_prefix_lengths() {
        assert_eq!(contiguous_prefix(0), Some(0));
        assert_eq!(contiguous_prefix(u128::MAX), Some(128));
        assert_eq!(contiguous_prefix(u128::MAX << 1), Some(127));
        assert_eq!(contiguous_prefix(1), None);
        assert_eq!(contiguous_prefix(u128::MAX ^ (1 << 64)), None);
        for prefix in 0..=128u32 {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            assert_eq!(contiguous_prefix(mask), Some(prefix as u8));
        }
    }

    #[test]
    fn display_quotes_what_needs_it() {
        let text = "host \"all\",a\" \"b,all,sameuser,\"@x\",+y,\"q\"\"q\" \"all\",\"x\\\"  \
                    10.0.0.1/8\tmd5 k=\"v w\"";
        let r = only_rule(text);
        assert_eq!(
            r.databases(),
            &[
                name("all"),
                name("a b"),
                DbMatch::All,
                DbMatch::SameUser,
                name("@x"),
                name("+y"),
                name("q\"q"),
            ]
        );
        assert_eq!(r.users(), &[user("all"), user("x\\")]);
        let shown = r.to_string();
        let want = concat!(
            "host \"all\",\"a b\",all,sameuser,\"@x\",\"+y\",\"q\"\"q\" ",
            "\"all\",\"x\\\" 10.0.0.0/8 md5 \"k=v w\""
        );
        assert_eq!(shown, want);
        assert_eq!(only_rule(&shown), r);
    }

    /// Names a generated rule may use: never empty, never starting with '/'
    /// (rejected as a regex), no NUL or newline (not representable).
    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "db|user|x",
            "[a-z_][a-z0-9_]{0,6}",
            Just("all".to_owned()),
            Just("sameuser".to_owned()),
            Just("replication".to_owned()),
            "[^\\x00\\n/][^\\x00\\n]{0,6}",
        ]
    }

    fn rule_strategy() -> impl Strategy<Value = Rule> {
        let db = prop_oneof![
            Just(DbMatch::All),
            Just(DbMatch::SameUser),
            Just(DbMatch::Replication),
            name_strategy().prop_map(DbMatch::Name),
        ];
        let user = prop_oneof![
            Just(UserMatch::All),
            name_strategy().prop_map(UserMatch::Name)
        ];
        let address = prop_oneof![
            Just(Address::All),
            prop::sample::select(vec!["10.0.0.0/8", "0.0.0.0/0", "::/0", "::1/128"]).prop_map(net),
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Address::Net(
                Cidr::new(IpAddr::V4(Ipv4Addr::from(a)), p).unwrap()
            )),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| Address::Net(
                Cidr::new(IpAddr::V6(Ipv6Addr::from(a)), p).unwrap()
            )),
        ];
        let conn_type = prop_oneof![
            Just(ConnType::Local),
            Just(ConnType::Host),
            Just(ConnType::HostSsl),
            Just(ConnType::HostNoSsl),
        ];
        let method = prop_oneof![
            Just(Method::Trust),
            Just(Method::Reject),
            Just(Method::Md5),
            Just(Method::ScramSha256),
            Just(Method::Password),
            Just(Method::Peer),
            Just(Method::Cert),
        ];
        let option = ("[a-z][a-z_]{0,5}", "[^\\x00\\n]{0,6}");
        (
            1usize..1000,
            conn_type,
            prop::collection::vec(db, 1..4),
            prop::collection::vec(user, 1..4),
            address,
            method,
            prop::collection::vec(option, 0..3),
        )
            .prop_filter("method allowed on type", |(_, t, _, _, _, m, _)| match m {
                Method::Peer => *t == ConnType::Local,
                Method::Cert => *t == ConnType::HostSsl,
                _ => true,
            })
            .prop_map(
                |(line, conn_type, databases, users, address, method, options)| Rule {
                    line,
                    conn_type,
                    databases,
                    users,
                    address: (conn_type != ConnType::Local).then_some(address),
                    method,
                    options,
                },
            )
    }

    /// Pieces of the grammar, valid and not, for token soup.
    fn piece() -> impl Strategy<Value = String> {
        let fixed: Vec<&'static str> = vec![
            "local",
            "host",
            "hostssl",
            "hostnossl",
            "hostgssenc",
            "include",
            "all",
            "\"all\"",
            "sameuser",
            "samerole",
            "replication",
            "samehost",
            "samenet",
            "db",
            "user",
            "+grp",
            "@file",
            "/re",
            "\"",
            "\"\"",
            ",",
            "#",
            "\\",
            "\\\n",
            "\n",
            "\r\n",
            " ",
            "\t",
            "10.0.0.0/8",
            "10.0.0.0",
            "255.0.0.0",
            "255.0.255.0",
            "::1/128",
            "::ffff:10.0.0.0/104",
            "2001:db8::",
            "ffff::",
            "1.2.3.4/33",
            "trust",
            "reject",
            "md5",
            "scram-sha-256",
            "password",
            "peer",
            "cert",
            "ident",
            "ldap",
            "map=x",
            "=",
            "a=b",
            "\0",
            "é",
            "\u{2028}",
        ];
        prop_oneof![
            8 => prop::sample::select(fixed).prop_map(str::to_owned),
            2 => "\\PC{0,4}",
            1 => rule_strategy().prop_map(|r| format!("{r}\n")),
        ]
    }

    /// Grammar pieces joined by random separators.
    fn pieces() -> impl Strategy<Value = String> {
        let separator = prop::sample::select(vec!["", " ", "\t", ",", "\n"]);
        prop::collection::vec((piece(), separator), 0..12).prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(p, sep)| [p, sep.to_owned()])
                .collect()
        })
    }

    /// Files of valid records, records with one token swapped for a grammar
    /// piece, record types followed by pieces, and bare pieces: enough valid
    /// lines that many files parse and get matched against.
    fn soup() -> impl Strategy<Value = String> {
        let mutated =
            (rule_strategy(), any::<prop::sample::Index>(), pieces()).prop_map(|(r, at, piece)| {
                let shown = r.to_string();
                let mut words: Vec<&str> = shown.split(' ').collect();
                let i = at.index(words.len());
                words[i] = &piece;
                words.join(" ")
            });
        let conn_type = prop::sample::select(vec!["local", "host", "hostssl", "hostnossl"]);
        let line = prop_oneof![
            12 => rule_strategy().prop_map(|r| r.to_string()),
            3 => mutated,
            2 => (conn_type, pieces()).prop_map(|(t, rest)| format!("{t} {rest}")),
            1 => pieces(),
        ];
        prop::collection::vec(line, 0..6).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|l| [l, "\n".to_owned()])
                .collect()
        })
    }

    fn conn_strategy() -> impl Strategy<Value = (Option<(IpAddr, bool)>, String, String)> {
        let addr = prop_oneof![
            prop::sample::select(vec!["10.0.0.1", "::1", "::ffff:10.0.0.1", "192.168.0.1"])
                .prop_map(|a| a.parse::<IpAddr>().unwrap()),
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        ];
        (
            prop::option::of((addr, any::<bool>())),
            prop_oneof!["db|user|all|x", "\\PC{0,3}"],
            prop_oneof!["db|user|all|x", "\\PC{0,3}"],
        )
    }

    /// The matching rules as the brief states them, written independently of
    /// [`Rule::matches`], over the public accessors.
    fn reference_match(r: &Rule, conn: &HbaConn<'_>) -> bool {
        let place_ok = match (r.conn_type(), conn.kind, r.address()) {
            (ConnType::Local, HbaConnKind::Local, None) => true,
            (ConnType::Host, HbaConnKind::Host { addr, .. }, Some(a))
            | (ConnType::HostSsl, HbaConnKind::Host { addr, tls: true }, Some(a))
            | (ConnType::HostNoSsl, HbaConnKind::Host { addr, tls: false }, Some(a)) => match a {
                Address::All => true,
                Address::Net(n) => n.contains(addr),
            },
            _ => false,
        };
        let db_ok = r.databases().iter().any(|d| {
            *d == DbMatch::All
                || *d == DbMatch::Name(conn.database.to_owned())
                || (*d == DbMatch::SameUser && conn.database == conn.user)
        });
        let user_ok = r
            .users()
            .iter()
            .any(|u| *u == UserMatch::All || *u == UserMatch::Name(conn.user.to_owned()));
        let endpoint_ok = r
            .options()
            .iter()
            .all(|(k, v)| k != "endpoint" || conn.endpoint == Some(v.as_str()));
        place_ok && db_ok && user_ok && endpoint_ok
    }

    fn host_conn<'a>(addr: IpAddr, tls: bool, database: &'a str, user: &'a str) -> HbaConn<'a> {
        HbaConn {
            kind: HbaConnKind::Host { addr, tls },
            database,
            user,
            endpoint: None,
            physical_replication: false,
        }
    }

    proptest! {
        // Few random files both parse and match a random connection; run many.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn parse_never_panics_on_token_soup(text in soup(), conn in conn_strategy()) {
            let physical_lines = text.split_terminator('\n').count();
            match Hba::parse(&text) {
                Ok(hba) => {
                    let mut last = 0;
                    for r in hba.rules() {
                        // Lines ascend and lie within the file.
                        prop_assert!(r.line() > last && r.line() <= physical_lines);
                        last = r.line();
                        prop_assert!(!r.databases().is_empty() && !r.users().is_empty());
                        prop_assert_eq!(r.address().is_none(), r.conn_type() == ConnType::Local);
                        // Display is a faithful encoder for whatever parses.
                        let again = only_rule(&r.to_string());
                        prop_assert_eq!(&Rule { line: r.line(), ..again }, r);
                    }
                    let (kind, database, user) = conn;
                    let conn = match kind {
                        Some((addr, tls)) => host_conn(addr, tls, &database, &user),
                        None => HbaConn {
                            kind: HbaConnKind::Local,
                            database: &database,
                            user: &user,
                            endpoint: None,
                            physical_replication: false,
                        },
                    };
                    let want = hba.rules().iter().find(|r| reference_match(r, &conn));
                    prop_assert_eq!(hba.lookup(&conn), want);
                }
                Err(e) => {
                    if let Some(line) = e.line() {
                        prop_assert!(line >= 1 && line <= physical_lines.max(1));
                    }
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_text(text in "\\PC{0,200}") {
            let _ = Hba::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_any_chars(text in "(?s).{0,200}") {
            let _ = Hba::parse(&text);
        }

        #[test]
        fn display_round_trips(r in rule_strategy()) {
            let text = r.to_string();
            let again = only_rule(&text);
            prop_assert_eq!(Rule { line: r.line, ..again }, r);
        }

        #[test]
        fn rules_keep_their_place(
            rules in prop::collection::vec(rule_strategy(), 1..6),
            blanks in prop::collection::vec(0usize..3, 6),
        ) {
            let mut text = String::new();
            let mut want_lines = Vec::new();
            let mut line = 1;
            for (r, b) in rules.iter().zip(blanks) {
                for _ in 0..b {
                    text.push_str("# filler\n");
                    line += 1;
                }
                want_lines.push(line);
                text.push_str(&format!("{r}\n"));
                line += 1;
            }
            let hba = Hba::parse(&text).unwrap();
            let got: Vec<usize> = hba.rules().iter().map(Rule::line).collect();
            prop_assert_eq!(got, want_lines);
        }

        #[test]
        fn netmask_column_equals_cidr(
            a in any::<u32>(),
            prefix in 0u8..=32,
            probe in any::<u32>(),
        ) {
            let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
            let addr = Ipv4Addr::from(a);
            let with_mask = Hba::parse(&format!("host all all {addr} {mask} trust")).unwrap();
            let with_cidr = Hba::parse(&format!("host all all {addr}/{prefix} trust")).unwrap();
            prop_assert_eq!(with_mask.rules()[0].address(), with_cidr.rules()[0].address());
            // Same network bits as the rule's address <=> matched.
            let probe = Ipv4Addr::from(probe);
            let shift = 32 - u32::from(prefix);
            let inside = u32::from(probe).checked_shr(shift) == a.checked_shr(shift);
            let conn = host_conn(IpAddr::V4(probe), false, "d", "u");
            prop_assert_eq!(with_mask.lookup(&conn).is_some(), inside);
        }
    }
}
