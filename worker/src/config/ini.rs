//! PgBouncer's `pgbouncer.ini`, read as PgBouncer reads it and turned into the equivalent YAML.
//
// Two steps. [`parse`] splits the text into `(section, key, value)` entries the way PgBouncer's
// config parser (libusual's cfparser) does: a line is a comment only when it *starts* with `;`
// or `#`, a value runs to the end of the line (trailing blanks dropped, nothing unquoted), a key
// is `[A-Za-z0-9_.*-]+` or a double-quoted name with `""` for `"`, and `%include FILE` reads
// another file in place, at most 10 levels deep. [`translate`] then maps every entry onto our
// YAML settings, converting units where PgBouncer's differ, and refuses whatever pgbouncers
// cannot honour with a message that names the setting, says why and gives the alternative.
// The YAML text is the canonical form: reloads, the console's SET and the workers all see it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::de::MAX_DURATION_SECS;

/// PgBouncer's include nesting limit (libusual's `MAX_INCLUDE`).
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// Most bytes read over a file and everything it includes (the YAML loader's own limit).
pub const MAX_TOTAL_SIZE: usize = super::MAX_FILE_SIZE as usize;

/// What went wrong, and where: `file:line: message` (line 0: the file as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IniError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for IniError {}

/// Reads an included file: `Ok((identity, text))`, where `identity` names the file whatever
/// the spelling of its path (the loader canonicalizes it), so include loops are caught.
pub type Reader<'a> = dyn FnMut(&Path) -> Result<(PathBuf, String), String> + 'a;

/// Whether a config file's text is PgBouncer's ini format rather than YAML: after blank and
/// comment lines it starts with a `[section]` line or `%include`. A YAML document cannot
/// start like that unless it is a flow sequence (`[a, b]`), which is no configuration anyway.
pub fn looks_like_ini(text: &str) -> bool {
    for line in text.lines() {
        let line = line.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\u{feff}');
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if starts_include(line) {
            return true;
        }
        let Some(rest) = line.strip_prefix('[') else {
            return false;
        };
        return rest
            .find(']')
            .is_some_and(|end| !rest[..end].contains([',', '[', '{', '"', '\'']));
    }
    false
}

fn starts_include(line: &str) -> bool {
    line.strip_prefix("%include")
        .is_some_and(|r| r.starts_with([' ', '\t']))
}

// ---------------------------------------------------------------------------------------
// Step 1: the ini syntax.

/// One `key = value` line, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub file: String,
    pub line: usize,
}

/// The sections PgBouncer knows; any other is an error, as in PgBouncer.
pub const SECTIONS: &[&str] = &["pgbouncer", "databases", "users", "peers"];

struct Parser<'r, 'a> {
    read: &'r mut Reader<'a>,
    section: Option<String>,
    entries: Vec<Entry>,
    /// Identities of the files being read, outermost first.
    stack: Vec<PathBuf>,
    total: usize,
    saw_main: bool,
}

/// Splits an ini file (and what it includes) into entries, in file order.
///
/// `text` is the file at `path` (`identity` as for [`Reader`]); relative `%include` paths are
/// handed to `read` as written: PgBouncer opens them relative to its working directory.
pub fn parse(
    path: &Path,
    identity: PathBuf,
    text: &str,
    read: &mut Reader<'_>,
) -> Result<Vec<Entry>, IniError> {
    let mut p = Parser {
        read,
        section: None,
        entries: Vec::new(),
        stack: Vec::new(),
        total: 0,
        saw_main: false,
    };
    p.file(path, identity, text)?;
    if !p.saw_main {
        return Err(IniError {
            file: path.display().to_string(),
            line: 0,
            message: "the [pgbouncer] section is missing (PgBouncer refuses such a file too)"
                .into(),
        });
    }
    Ok(p.entries)
}

impl Parser<'_, '_> {
    fn file(&mut self, path: &Path, identity: PathBuf, text: &str) -> Result<(), IniError> {
        let name = path.display().to_string();
        self.total += text.len();
        if self.total > MAX_TOTAL_SIZE {
            return Err(IniError {
                file: name,
                line: 0,
                message: format!(
                    "the configuration and its includes are larger than {MAX_TOTAL_SIZE} bytes"
                ),
            });
        }
        self.stack.push(identity);
        for (i, line) in text.lines().enumerate() {
            self.line(&name, i + 1, line)?;
        }
        self.stack.pop();
        Ok(())
    }

    fn line(&mut self, file: &str, n: usize, line: &str) -> Result<(), IniError> {
        let err = |message: String| IniError {
            file: file.to_owned(),
            line: n,
            message,
        };
        // PgBouncer skips any whitespace before a line's first character.
        let line = line.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\u{feff}');
        if line.is_empty() || line.starts_with(['#', ';']) {
            return Ok(());
        }
        if starts_include(line) {
            return self.include(file, n, line["%include".len()..].trim());
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(err(
                    "syntax error: a section name without its closing `]`".into()
                ));
            };
            let name = &rest[..end];
            if !SECTIONS.contains(&name) {
                return Err(err(format!(
                    "invalid section [{}]: PgBouncer's sections are [pgbouncer], [databases], \
                     [users] and [peers] (names are case-sensitive)",
                    super::de::truncate(name, 64)
                )));
            }
            self.saw_main |= name == "pgbouncer";
            self.section = Some(name.to_owned());
            // PgBouncer carries on reading right after the `]`, as if a new line began there.
            return self.line(file, n, &rest[end + 1..]);
        }
        let (key, rest) = split_key(line).map_err(err)?;
        let rest = rest.trim_start_matches([' ', '\t']);
        let Some(value) = rest.strip_prefix('=') else {
            return Err(err(format!(
                "syntax error: expected `=` after `{}` (a key is letters, digits and _ . - *, \
                 or a name in double quotes)",
                super::de::truncate(&key, 64)
            )));
        };
        if key.is_empty() {
            return Err(err(
                "syntax error: a line starts with `=`, there is no key".into()
            ));
        }
        let Some(section) = self.section.clone() else {
            return Err(err(format!(
                "`{}` comes before any [section]",
                super::de::truncate(&key, 64)
            )));
        };
        self.entries.push(Entry {
            section,
            key,
            value: value
                .trim_start_matches([' ', '\t'])
                .trim_end_matches(|c: char| c.is_ascii_whitespace())
                .to_owned(),
            file: file.to_owned(),
            line: n,
        });
        Ok(())
    }

    fn include(&mut self, file: &str, n: usize, target: &str) -> Result<(), IniError> {
        let err = |message: String| IniError {
            file: file.to_owned(),
            line: n,
            message,
        };
        if target.is_empty() {
            return Err(err("%include without a file name".into()));
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(err(format!(
                "%include nesting is deeper than {MAX_INCLUDE_DEPTH} levels"
            )));
        }
        let path = PathBuf::from(target);
        let (identity, text) =
            (self.read)(&path).map_err(|e| err(format!("%include {target}: {e}")))?;
        if self.stack.contains(&identity) {
            return Err(err(format!(
                "%include {target}: include loop, the file is already being read"
            )));
        }
        self.file(&path, identity, &text)
    }
}

/// Reads a key at the start of `line`; returns it and the rest of the line.
fn split_key(line: &str) -> Result<(String, &str), String> {
    if let Some(rest) = line.strip_prefix('"') {
        // SQL identifier quoting: `""` stands for one `"`.
        let mut key = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    key.push('"');
                    chars.next();
                    continue;
                }
                if key.is_empty() {
                    return Err("syntax error: an empty quoted name".into());
                }
                return Ok((key, &rest[i + 1..]));
            }
            key.push(c);
        }
        return Err("syntax error: a quoted name without its closing `\"`".into());
    }
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-*".contains(c)))
        .unwrap_or(line.len());
    Ok((line[..end].to_owned(), &line[end..]))
}

// ---------------------------------------------------------------------------------------
// Step 2: PgBouncer's settings onto ours.

/// How the docs table describes a PgBouncer setting (a test keeps docs/PGBOUNCER.md in step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Same name, same meaning.
    Honoured,
    /// Translated, but pgbouncers differs in a way the table explains.
    Different,
    /// Accepted whatever its value, and has no effect (the table says why that is harmless).
    Accepted,
    /// Refused at load, except for the value(s) that mean what pgbouncers does anyway.
    Refused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Honoured => "honoured",
            Status::Different => "different",
            Status::Accepted => "accepted",
            Status::Refused => "refused",
        }
    }
}

/// How a value is read (PgBouncer's reading) and written as YAML (ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Any text, written as a YAML string (empty = not set, as in PgBouncer).
    Text,
    /// A comma-separated list: our YAML takes the same string.
    List,
    /// A C `strtol(.., 0)` integer (so `0x10` and `010` are 16 and 8), 0 to the maximum.
    Int(u64),
    /// An integer where 0 is off and anything else on (PgBouncer's booleans).
    Flag,
    /// Seconds with fractions (PgBouncer's `CF_TIME_USEC`).
    Secs,
    /// Whole seconds read as an integer.
    IntSecs,
    /// Milliseconds (`tcp_user_timeout`): ours is seconds.
    Millis,
    /// `session`, `transaction` or `statement`, any case.
    PoolMode,
    AuthType,
    /// A file mode read as a C integer (so `0777` is octal and `777` decimal).
    Mode,
    ServerCheckQuery,
    UnixSocketDir,
    TrackExtra,
    /// client_tls_sslmode and server_tls_sslmode: libpq's sslmode words.
    TlsMode,
}

/// What happens to one PgBouncer setting.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Translated to our setting of the same name.
    Same(Kind),
    /// Accepted and dropped: no effect here (the reason goes into a notice).
    NoEffect(&'static str),
    /// Accepted only when the value means what pgbouncers does; otherwise refused with why.
    OnlyIf(Neutral, &'static str),
}

/// The values of an [`Rule::OnlyIf`] setting that are accepted.
#[derive(Clone, Copy, Debug)]
enum Neutral {
    /// The integer 0 (PgBouncer's "off").
    Zero,
    /// The empty string (not set).
    Empty,
    /// An integer equal to this.
    Number(i64),
}

/// Every `[pgbouncer]` setting of PgBouncer 1.25, alphabetical (PgBouncer's own order), with
/// its rule and the status docs/PGBOUNCER.md gives it.
const SETTINGS: &[(&str, Rule, Status)] = {
    use Kind::*;
    use Neutral::*;
    use Rule::*;
    use Status::*;
    const U32: u64 = u32::MAX as u64;
    &[
        ("admin_users", Same(List), Honoured),
        ("application_name_add_host", Same(Flag), Honoured),
        ("auth_dbname", Same(Text), Honoured),
        ("auth_file", Same(Text), Honoured),
        ("auth_hba_file", Same(Text), Honoured),
        ("auth_ident_file", OnlyIf(Empty, "ident maps are not supported: write the user names in auth_hba_file itself, without map="), Refused),
        ("auth_ldap_options", NoEffect("it is only used with auth_type = ldap, which pgbouncers refuses"), Accepted),
        ("auth_pam_confdir", NoEffect("it is only used with auth_type = pam, which pgbouncers refuses"), Accepted),
        ("auth_query", Same(Text), Different),
        ("auth_type", Same(AuthType), Different),
        ("auth_user", Same(Text), Different),
        ("autodb_idle_timeout", NoEffect("pools of databases reached through `*` are kept; their idle server connections still close after server_idle_timeout"), Accepted),
        ("cancel_wait_timeout", Same(Secs), Honoured),
        ("client_idle_timeout", Same(Secs), Honoured),
        ("client_login_timeout", Same(Secs), Honoured),
        ("client_tls13_ciphers", NoEffect("rustls offers only strong TLS 1.3 suites; client_tls_ciphers can name them"), Accepted),
        ("client_tls_ca_file", Same(Text), Honoured),
        ("client_tls_cert_file", Same(Text), Honoured),
        ("client_tls_ciphers", Same(Text), Honoured),
        ("client_tls_dheparams", NoEffect("rustls has no finite-field Diffie-Hellman: key exchange is X25519 or a NIST curve"), Accepted),
        ("client_tls_ecdhcurve", NoEffect("rustls chooses among X25519, P-256 and P-384"), Accepted),
        ("client_tls_key_file", Same(Text), Honoured),
        ("client_tls_protocols", Same(Text), Honoured),
        ("client_tls_sslmode", Same(TlsMode), Honoured),
        ("conffile", OnlyIf(Empty, "pgbouncers always reloads the file named on its command line: start it with -c pointing at the file you want"), Refused),
        ("default_pool_size", Same(Int(U32)), Different),
        ("disable_pqexec", OnlyIf(Zero, "refusing the simple query protocol is not supported: revoke what must not run in PostgreSQL instead"), Refused),
        ("dns_max_ttl", Same(Secs), Honoured),
        ("dns_nxdomain_ttl", Same(Secs), Honoured),
        ("dns_zone_check_period", OnlyIf(Zero, "DNS zone serial checks are not supported: dns_max_ttl bounds how long a resolved address is used"), Refused),
        ("idle_transaction_timeout", Same(Secs), Honoured),
        ("ignore_startup_parameters", Same(List), Honoured),
        ("job_name", NoEffect("it names a Windows service; pgbouncers runs on Linux"), Accepted),
        ("listen_addr", Same(List), Honoured),
        ("listen_backlog", NoEffect("the listen backlog is 4096 (the kernel caps it at net.core.somaxconn)"), Accepted),
        ("listen_port", Same(Int(u16::MAX as u64)), Honoured),
        ("log_connections", Same(Flag), Honoured),
        ("log_disconnections", Same(Flag), Honoured),
        ("log_pooler_errors", Same(Flag), Honoured),
        ("log_stats", Same(Flag), Honoured),
        ("logfile", Same(Text), Different),
        ("login_notify_message", Same(Text), Honoured),
        ("max_client_conn", Same(Int(U32)), Honoured),
        ("max_db_client_connections", Same(Int(U32)), Honoured),
        ("max_db_connections", Same(Int(U32)), Honoured),
        ("max_packet_size", Same(Int(U32)), Honoured),
        ("max_prepared_statements", Same(Int(U32)), Different),
        ("max_user_client_connections", Same(Int(U32)), Honoured),
        ("max_user_connections", Same(Int(U32)), Honoured),
        ("min_pool_size", Same(Int(U32)), Different),
        ("peer_id", Same(Int(super::MAX_PEER_ID as u64)), Honoured),
        ("pidfile", Same(Text), Honoured),
        ("pkt_buf", Same(Int(U32)), Different),
        ("pool_idle_timeout", NoEffect("pools are kept; their idle server connections still close after server_idle_timeout"), Accepted),
        ("pool_mode", Same(PoolMode), Honoured),
        ("query_timeout", Same(Secs), Honoured),
        ("query_wait_notify", Same(Secs), Honoured),
        ("query_wait_timeout", Same(Secs), Honoured),
        ("reserve_pool_size", Same(Int(U32)), Different),
        ("reserve_pool_timeout", Same(Secs), Honoured),
        ("resolv_conf", OnlyIf(Empty, "a private resolv.conf is not supported: names are resolved with the system resolver (/etc/resolv.conf)"), Refused),
        ("sbuf_loopcnt", NoEffect("each worker already moves data of many connections per loop turn"), Accepted),
        ("scram_iterations", OnlyIf(Number(4096), "the SCRAM iteration count of secrets made from plain-text passwords is fixed at 4096"), Refused),
        ("server_check_delay", Same(Secs), Honoured),
        ("server_check_query", Same(ServerCheckQuery), Different),
        ("server_connect_timeout", Same(Secs), Honoured),
        ("server_fast_close", OnlyIf(Zero, "closing session-mode servers early after RECONNECT or a reload is not supported: they close when their client leaves"), Refused),
        ("server_idle_timeout", Same(Secs), Honoured),
        ("server_lifetime", Same(Secs), Honoured),
        ("server_login_retry", Same(Secs), Different),
        ("server_reset_query", Same(Text), Honoured),
        ("server_reset_query_always", Same(Flag), Honoured),
        ("server_round_robin", Same(Flag), Honoured),
        ("server_tls13_ciphers", NoEffect("rustls offers only strong TLS 1.3 suites; server_tls_ciphers can name them"), Accepted),
        ("server_tls_ca_file", Same(Text), Honoured),
        ("server_tls_cert_file", Same(Text), Honoured),
        ("server_tls_ciphers", Same(Text), Honoured),
        ("server_tls_key_file", Same(Text), Honoured),
        ("server_tls_protocols", Same(Text), Honoured),
        ("server_tls_sslmode", Same(TlsMode), Honoured),
        ("service_name", NoEffect("it names a Windows service; pgbouncers runs on Linux"), Accepted),
        ("so_reuseport", NoEffect("it is not needed: the workers already share the port with SO_REUSEPORT"), Accepted),
        ("stats_period", Same(IntSecs), Honoured),
        ("stats_users", Same(List), Honoured),
        ("suspend_timeout", NoEffect("SUSPEND and online restart (-R) are refused, so there is nothing to time out"), Accepted),
        ("syslog", OnlyIf(Zero, "syslog is not supported: log to stderr (journald keeps it under systemd) or to logfile"), Refused),
        ("syslog_facility", NoEffect("it is only used with syslog = 1, which pgbouncers refuses"), Accepted),
        ("syslog_ident", NoEffect("it is only used with syslog = 1, which pgbouncers refuses"), Accepted),
        ("tcp_defer_accept", NoEffect("not needed: a worker reads a new connection as soon as it has data, and client_login_timeout bounds the wait"), Accepted),
        ("tcp_keepalive", Same(Flag), Honoured),
        ("tcp_keepcnt", Same(Int(U32)), Honoured),
        ("tcp_keepidle", Same(IntSecs), Honoured),
        ("tcp_keepintvl", Same(IntSecs), Honoured),
        ("tcp_socket_buffer", NoEffect("the kernel's automatic socket buffer sizing is used"), Accepted),
        ("tcp_user_timeout", Same(Millis), Different),
        ("track_extra_parameters", Same(TrackExtra), Honoured),
        ("transaction_timeout", Same(Secs), Honoured),
        ("unix_socket_dir", Same(UnixSocketDir), Honoured),
        ("unix_socket_group", OnlyIf(Empty, "setting the socket's group is not supported: run pgbouncers with that group (systemd Group=) and set unix_socket_mode"), Refused),
        ("unix_socket_mode", Same(Mode), Honoured),
        ("user", Same(Text), Honoured),
        ("verbose", Same(Int(u8::MAX as u64)), Honoured),
    ]
};

/// The `[pgbouncer]` settings pgbouncers knows from PgBouncer, with their docs status.
pub fn pgbouncer_settings() -> impl Iterator<Item = (&'static str, Status)> {
    SETTINGS.iter().map(|(name, _, status)| (*name, *status))
}

/// pgbouncers' own settings (not PgBouncer's), which may also be written in `[pgbouncer]`.
const OWN_SETTINGS: &[&str] = &[
    "workers",
    "metrics_addr",
    "proxy_protocol",
    "proxy_trusted",
    "proxy_header_timeout",
    "proxy_max_header",
    "shutdown_timeout",
    "auth_query_cache_ttl",
];

/// PgBouncer's connection-string keys in `[databases]`, what becomes of each, and why.
/// `None`: translated to the database setting of the same name (`reserve_pool`: the
/// deprecated spelling of `reserve_pool_size`).
const DATABASE_KEYS: &[(&str, Option<&str>)] = &[
    ("dbname", None),
    ("host", None),
    ("port", None),
    ("user", None),
    ("password", None),
    ("pool_size", None),
    ("min_pool_size", None),
    ("reserve_pool_size", None),
    ("reserve_pool", None),
    ("max_db_connections", None),
    ("pool_mode", None),
    ("connect_query", None),
    ("application_name", None),
    ("auth_user", None),
    ("auth_query", None),
    ("auth_dbname", None),
    ("client_encoding", None),
    ("datestyle", None),
    ("timezone", None),
    ("max_db_client_connections", None),
    ("query_wait_timeout", None),
    ("load_balance_hosts", None),
    // pgbouncers' own key (PgBouncer refuses it): which kind of server the database needs.
    ("target_session_attrs", None),
    (
        "server_lifetime",
        Some("a per-database server_lifetime is not supported: set server_lifetime in [pgbouncer]"),
    ),
];

/// PgBouncer's `[users]` keys, as [`DATABASE_KEYS`].
const USER_KEYS: &[(&str, Option<&str>)] = &[
    ("pool_mode", None),
    ("pool_size", None),
    ("reserve_pool_size", None),
    ("max_user_connections", None),
    ("max_user_client_connections", None),
    ("query_timeout", None),
    ("query_wait_timeout", None),
    ("idle_transaction_timeout", None),
    ("transaction_timeout", None),
    ("client_idle_timeout", None),
];

/// `[databases]` connection-string keys with their docs status.
pub fn database_keys() -> impl Iterator<Item = (&'static str, Status)> {
    keys_status(DATABASE_KEYS)
}

/// `[users]` keys with their docs status.
pub fn user_keys() -> impl Iterator<Item = (&'static str, Status)> {
    keys_status(USER_KEYS).map(|(k, status)| match k {
        // Read for the pool's user, where PgBouncer takes the client's login user (they
        // differ under a forced user).
        "query_wait_timeout" | "client_idle_timeout" => (k, Status::Different),
        _ => (k, status),
    })
}

fn keys_status(
    keys: &'static [(&'static str, Option<&'static str>)],
) -> impl Iterator<Item = (&'static str, Status)> {
    keys.iter().map(|(k, why)| {
        let status = match (k, why) {
            (_, Some(_)) => Status::Refused,
            // Deprecated spelling, pool sizes that are per worker here, host lists that
            // skip hosts that are down, and pgbouncers' own target_session_attrs.
            (
                &("reserve_pool"
                | "pool_size"
                | "min_pool_size"
                | "reserve_pool_size"
                | "host"
                | "load_balance_hosts"
                | "target_session_attrs"),
                None,
            ) => Status::Different,
            (_, None) => Status::Honoured,
        };
        (*k, status)
    })
}

/// The result of a conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted {
    /// The equivalent YAML configuration.
    pub yaml: String,
    /// Settings accepted without effect, and other things worth a log line.
    pub notices: Vec<String>,
}

/// Reads an ini config (and its includes) and returns the equivalent YAML.
pub fn convert(
    path: &Path,
    identity: PathBuf,
    text: &str,
    read: &mut Reader<'_>,
) -> Result<Converted, IniError> {
    translate(&parse(path, identity, text, read)?)
}

/// A value with where it came from, last one wins (as in PgBouncer).
type Placed<'e> = BTreeMap<String, &'e Entry>;

/// Maps parsed entries onto our YAML.
pub fn translate(entries: &[Entry]) -> Result<Converted, IniError> {
    let mut main: Placed<'_> = BTreeMap::new();
    let mut dbs: Placed<'_> = BTreeMap::new();
    let mut users: Placed<'_> = BTreeMap::new();
    let mut peers: Placed<'_> = BTreeMap::new();
    for e in entries {
        let map = match e.section.as_str() {
            "pgbouncer" => &mut main,
            "databases" => &mut dbs,
            "users" => &mut users,
            _ => &mut peers,
        };
        // Keys are case-sensitive in PgBouncer; the last of a repeated key wins.
        map.insert(e.key.clone(), e);
    }

    let mut out = Yaml::default();
    let mut notices = Vec::new();
    for (key, e) in &main {
        let rule = SETTINGS.iter().find(|(name, _, _)| name == key);
        match rule {
            Some((name, rule, _)) => setting(&mut out, &mut notices, name, *rule, e)?,
            None if OWN_SETTINGS.contains(&key.as_str()) => {
                out.line(key, own_value(&e.value));
            }
            None => {
                let known: Vec<&str> = SETTINGS
                    .iter()
                    .map(|(n, _, _)| *n)
                    .chain(OWN_SETTINGS.iter().copied())
                    .collect();
                return Err(at(
                    e,
                    format!(
                        "[pgbouncer] {} (PgBouncer refuses unknown settings too)",
                        super::error::unknown_key_message(key, &known)
                    ),
                ));
            }
        }
    }
    // PgBouncer's defaults where they differ from ours and mean something: no TCP listener
    // unless listen_addr is set, and a Unix socket in /tmp unless unix_socket_dir says otherwise.
    if !main.contains_key("listen_addr") {
        out.line("listen_addr", "''".into());
    }
    let socket_dir = match main.get("unix_socket_dir") {
        Some(e) => e.value.clone(),
        None => {
            out.line("unix_socket_dir", "/tmp".into());
            "/tmp".to_owned()
        }
    };

    if !dbs.is_empty() {
        out.text.push_str("databases:\n");
        for (name, e) in &dbs {
            database(&mut out, &mut notices, name, e, &socket_dir)?;
        }
    }
    if !users.is_empty() {
        out.text.push_str("users:\n");
        for (name, e) in &users {
            user(&mut out, name, e)?;
        }
    }
    if !peers.is_empty() {
        out.text.push_str("peers:\n");
        for (id, e) in &peers {
            peer(&mut out, id, e)?;
        }
    }
    let mut yaml = String::from(
        "# Converted from PgBouncer's ini format by pgbouncers (pgbouncers --convert FILE).\n",
    );
    for n in &notices {
        yaml.push_str(&format!("# note: {}\n", n.replace('\n', " ")));
    }
    yaml.push_str(&out.text);
    Ok(Converted { yaml, notices })
}

fn at(e: &Entry, message: String) -> IniError {
    IniError {
        file: e.file.clone(),
        line: e.line,
        message,
    }
}

#[derive(Default)]
struct Yaml {
    text: String,
}

impl Yaml {
    fn line(&mut self, key: &str, value: String) {
        self.text.push_str(&format!("{key}: {value}\n"));
    }
}

fn setting(
    out: &mut Yaml,
    notices: &mut Vec<String>,
    name: &str,
    rule: Rule,
    e: &Entry,
) -> Result<(), IniError> {
    let v = e.value.as_str();
    let bad = |why: String| at(e, format!("{name} = {}: {why}", shown(v)));
    match rule {
        Rule::NoEffect(why) => {
            notices.push(format!("{name} is accepted and has no effect: {why}"));
            Ok(())
        }
        Rule::OnlyIf(neutral, why) => {
            let ok = match neutral {
                Neutral::Zero => c_long(v) == Some(0),
                Neutral::Empty => v.is_empty(),
                Neutral::Number(n) => c_long(v) == Some(n),
            };
            if ok {
                Ok(())
            } else {
                Err(at(e, format!("{name} = {} is refused: {why}", shown(v))))
            }
        }
        Rule::Same(kind) => {
            let yaml = value(kind, v).map_err(bad)?;
            if let Some(yaml) = yaml {
                out.line(name, yaml);
            }
            Ok(())
        }
    }
}

/// Our YAML for one translated value; `None` when our default already means PgBouncer's.
fn value(kind: Kind, v: &str) -> Result<Option<String>, String> {
    Ok(Some(match kind {
        Kind::Text | Kind::List => yaml_str(v),
        Kind::Int(max) => int(v, max)?.to_string(),
        Kind::Flag => (c_long(v).ok_or("expected an integer: 0 is off, 1 is on")? != 0).to_string(),
        Kind::Secs => secs(time(v)?)?,
        Kind::IntSecs => secs(int(v, u32::MAX as u64)? as f64)?,
        Kind::Millis => secs(int(v, u32::MAX as u64)? as f64 / 1000.0)?,
        Kind::PoolMode => {
            let mode: super::PoolMode = v
                .parse()
                .map_err(|e: super::UnknownKeyword| e.to_string())?;
            mode.as_str().to_owned()
        }
        Kind::AuthType => auth_type(v)?.to_owned(),
        Kind::TlsMode => {
            let mode: super::TlsMode = v
                .parse()
                .map_err(|e: super::UnknownKeyword| e.to_string())?;
            mode.as_str().to_owned()
        }
        Kind::Mode => {
            let mode = c_long(v)
                .filter(|m| *m >= 0)
                .ok_or("expected a file mode such as 0777")?;
            if mode > 0o777 {
                return Err(format!(
                    "PgBouncer reads this as the number {mode} (octal {mode:o}): only permission \
                     bits (at most 0777) are supported; write the mode with a leading 0, e.g. 0{}",
                    v.trim_start_matches('0')
                ));
            }
            yaml_str(&format!("0o{mode:o}"))
        }
        Kind::ServerCheckQuery => {
            if v == "<empty>" {
                // PgBouncer 1.25's default: an empty query. `select 1` checks the same thing.
                return Ok(None);
            }
            yaml_str(v)
        }
        Kind::UnixSocketDir => {
            if v.starts_with('@') {
                return Err(
                    "abstract-namespace sockets are not supported: give a directory".into(),
                );
            }
            yaml_str(v)
        }
        Kind::TrackExtra => {
            for p in super::de::split_list(v) {
                if !crate::params::is_settable_name(p) {
                    return Err(format!(
                        "`{}` is not a parameter name",
                        super::de::truncate(p, 64)
                    ));
                }
            }
            yaml_str(v)
        }
    }))
}

fn auth_type(v: &str) -> Result<&'static str, String> {
    let lower = v.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "trust" => "trust",
        "plain" => "plain",
        "md5" => "md5",
        "scram-sha-256" => "scram-sha-256",
        "hba" => "hba",
        "any" => {
            return Err(
                "auth_type any is not supported: use trust, and force the server user \
                        per database with user= in [databases]"
                    .into(),
            )
        }
        "cert" => "cert",
        "pam" | "ldap" => {
            return Err(format!(
                "auth_type {lower} is not supported: use scram-sha-256 with passwords in auth_file"
            ))
        }
        _ => {
            return Err(
                "expected one of: trust, plain, md5, scram-sha-256, hba (PgBouncer also has any, \
                 cert, ldap and pam, which pgbouncers refuses)"
                    .into(),
            )
        }
    })
}

/// A value of one of our own settings: a number stays a number, anything else is a string.
fn own_value(v: &str) -> String {
    let number = !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && v.parse::<f64>().is_ok();
    if number {
        v.to_owned()
    } else {
        yaml_str(v)
    }
}

/// C's `strtol(v, &end, 0)` with the whole string consumed: `0x` hex, leading `0` octal.
fn c_long(v: &str) -> Option<i64> {
    let (neg, digits) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    let (radix, digits) = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, hex)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = i64::from_str_radix(digits, radix).ok()?;
    Some(if neg { -n } else { n })
}

fn int(v: &str, max: u64) -> Result<u64, String> {
    let n = c_long(v).ok_or_else(|| format!("expected an integer from 0 to {max}"))?;
    u64::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("expected an integer from 0 to {max}"))
}

/// PgBouncer's seconds: a non-negative decimal number, fractions allowed.
fn time(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| "expected a number of seconds such as 30 or 0.5".to_owned())
}

fn secs(s: f64) -> Result<String, String> {
    if s > MAX_DURATION_SECS as f64 {
        return Err(format!("at most {MAX_DURATION_SECS} seconds"));
    }
    Ok(if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    })
}

/// A value as an error message shows it: short, and never a control character.
fn shown(v: &str) -> String {
    let v = super::de::truncate(v, 64);
    if v.is_empty() {
        "''".into()
    } else {
        v
    }
}

/// A YAML scalar that reads back as exactly `s`.
pub fn yaml_str(s: &str) -> String {
    let plain_quotable = s
        .chars()
        .all(|c| c == '\t' || c == ' ' || !(c.is_control() || c.is_whitespace()));
    if plain_quotable {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' ' => out.push(' '),
            c if c.is_control() || c.is_whitespace() => {
                out.push_str(&format!("\\U{:08x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------
// [databases] and [users]: PgBouncer's connection strings.

/// Splits a connection string as PgBouncer does (not as libpq does, so not with
/// [`super::connstring`]): a key runs to `=` or a space, a value is a run of non-spaces or
/// single-quoted with `''` for `'` (a backslash is an ordinary character), an empty value is
/// an error, and a repeated key takes the last value.
pub fn split_connstr(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut rest = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    while !rest.is_empty() {
        let key_end = rest.find(['=', ' ']).unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after = rest[key_end..].trim_start_matches(|c: char| c.is_ascii_whitespace());
        let Some(after) = after.strip_prefix('=') else {
            return Err(format!(
                "syntax error in connection string: expected `=` after `{}`",
                super::de::truncate(key, 64)
            ));
        };
        if key.is_empty() {
            return Err("syntax error in connection string: `=` without a key".into());
        }
        let after = after.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let (value, next) = if let Some(q) = after.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if q[i + 1..].starts_with('\'') {
                        value.push('\'');
                        chars.next();
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
                value.push(c);
            }
            let Some(end) = end else {
                return Err(format!("{key}: the quoted value has no closing quote"));
            };
            let next = &q[end..];
            if !(next.is_empty() || next.starts_with(|c: char| c.is_ascii_whitespace())) {
                return Err(format!("{key}: expected a space after the closing quote"));
            }
            (value, next)
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        if value.is_empty() {
            return Err(format!(
                "{key}: an empty value (PgBouncer refuses it too; leave the key out)"
            ));
        }
        pairs.retain(|(k, _)| k != key);
        pairs.push((key.to_owned(), value));
        rest = next.trim_start_matches(|c: char| c.is_ascii_whitespace());
    }
    Ok(pairs)
}

fn database(
    out: &mut Yaml,
    notices: &mut Vec<String>,
    name: &str,
    e: &Entry,
    socket_dir: &str,
) -> Result<(), IniError> {
    let what = format!("[databases] {}", super::de::truncate(name, 64));
    let bad = |m: String| at(e, format!("{what}: {m}"));
    let pairs = split_connstr(&e.value).map_err(bad)?;
    let mut fields: Vec<(&str, String)> = Vec::new();
    for (key, value) in &pairs {
        let Some((_, why)) = DATABASE_KEYS.iter().find(|(k, _)| k == key) else {
            return Err(bad(format!(
                "unknown connection parameter `{}` (PgBouncer refuses it too)",
                super::de::truncate(key, 64)
            )));
        };
        if let Some(why) = why {
            return Err(bad(format!("{key} is refused: {why}")));
        }
        if key == "reserve_pool" {
            notices.push(format!(
                "{what}: reserve_pool is PgBouncer's deprecated spelling of reserve_pool_size, \
                 read as that"
            ));
        }
        let field = if key == "reserve_pool" {
            "reserve_pool_size"
        } else {
            key.as_str()
        };
        let yaml = match field {
            "host" => {
                if value.split(',').any(|h| h.trim().starts_with('@')) {
                    return Err(bad(
                        "abstract-namespace sockets are not supported: give a directory".into(),
                    ));
                }
                yaml_str(value)
            }
            "port" => int(value, u16::MAX as u64)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("port {}: expected 1 to 65535", shown(value))))?
                .to_string(),
            "pool_size"
            | "min_pool_size"
            | "reserve_pool_size"
            | "max_db_connections"
            | "max_db_client_connections"
            | "query_wait_timeout" => {
                decimal(value).map_err(|m| bad(format!("{key} {}: {m}", shown(value))))?
            }
            "pool_mode" => value
                .parse::<super::PoolMode>()
                .map_err(|e| bad(format!("pool_mode: {e}")))?
                .as_str()
                .to_owned(),
            "load_balance_hosts" => value
                .parse::<super::LoadBalanceHosts>()
                .map_err(|e| bad(format!("load_balance_hosts: {e}")))?
                .as_str()
                .to_owned(),
            "target_session_attrs" => value
                .parse::<super::TargetSessionAttrs>()
                .map_err(|e| bad(format!("target_session_attrs: {e}")))?
                .as_str()
                .to_owned(),
            _ => yaml_str(value),
        };
        fields.retain(|(k, _)| *k != field);
        fields.push((field, yaml));
    }
    if !fields.iter().any(|(k, _)| *k == "host") {
        // PgBouncer connects through its own unix_socket_dir when a database names no host.
        if socket_dir.is_empty() {
            return Err(bad(
                "no host, and unix_socket_dir is empty: PgBouncer would have no \
                            socket directory to connect through; add host="
                    .into(),
            ));
        }
        fields.insert(0, ("host", yaml_str(socket_dir)));
    }
    out.text.push_str(&format!("  {}:\n", yaml_str(name)));
    for (k, v) in fields {
        out.text.push_str(&format!("    {k}: {v}\n"));
    }
    Ok(())
}

fn user(out: &mut Yaml, name: &str, e: &Entry) -> Result<(), IniError> {
    let what = format!("[users] {}", super::de::truncate(name, 64));
    let bad = |m: String| at(e, format!("{what}: {m}"));
    let pairs = split_connstr(&e.value).map_err(bad)?;
    out.text.push_str(&format!("  {}:", yaml_str(name)));
    if pairs.is_empty() {
        out.text.push_str(" {}\n");
        return Ok(());
    }
    out.text.push('\n');
    for (key, value) in &pairs {
        let Some((_, why)) = USER_KEYS.iter().find(|(k, _)| k == key) else {
            return Err(bad(format!(
                "unknown user parameter `{}` (PgBouncer refuses it too)",
                super::de::truncate(key, 64)
            )));
        };
        if let Some(why) = why {
            if c_long(value) == Some(0) {
                continue;
            }
            return Err(bad(format!("{key} is refused: {why}")));
        }
        let yaml = if key == "pool_mode" {
            value
                .parse::<super::PoolMode>()
                .map_err(|e| bad(format!("pool_mode: {e}")))?
                .as_str()
                .to_owned()
        } else {
            decimal(value).map_err(|m| bad(format!("{key} {}: {m}", shown(value))))?
        };
        out.text.push_str(&format!("    {key}: {yaml}\n"));
    }
    Ok(())
}

/// A `[peers]` line, `1 = host=10.0.0.2 port=6432`: the key is the peer's id.
fn peer(out: &mut Yaml, id: &str, e: &Entry) -> Result<(), IniError> {
    let what = format!("[peers] {}", super::de::truncate(id, 64));
    let bad = |m: String| at(e, format!("{what}: {m}"));
    let id = decimal(id)
        .ok()
        .and_then(|n| n.parse::<u16>().ok())
        .filter(|n| (1..=super::MAX_PEER_ID).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "a peer id must be from 1 to {}",
                super::MAX_PEER_ID
            ))
        })?;
    let pairs = split_connstr(&e.value).map_err(bad)?;
    out.text.push_str(&format!("  {id}:\n"));
    for (key, value) in &pairs {
        let yaml = match key.as_str() {
            "host" => yaml_str(value),
            "port" | "pool_size" => {
                decimal(value).map_err(|m| bad(format!("{key} {}: {m}", shown(value))))?
            }
            _ => {
                return Err(bad(format!(
                    "unknown peer parameter `{}` (PgBouncer refuses it too)",
                    super::de::truncate(key, 64)
                )))
            }
        };
        out.text.push_str(&format!("    {key}: {yaml}\n"));
    }
    if !pairs.iter().any(|(k, _)| k == "host") {
        return Err(bad("host= is missing".into()));
    }
    Ok(())
}

/// A connection-string number: PgBouncer reads it with `atoi`, which would take `10x` as 10
/// and `x` as 0; only plain digits are accepted here, so such a typo is an error.
fn decimal(v: &str) -> Result<String, String> {
    if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = v.parse::<u32>() {
            return Ok(n.to_string());
        }
    }
    Err(format!("expected an integer from 0 to {}", u32::MAX))
}

/// An error in the YAML converted from an ini file. Its line numbers are the YAML's, which
/// the operator never wrote, so they become a pointer to `pgbouncers --convert`.
pub fn converted_error(path: &Path, e: super::ConfigError) -> super::ConfigError {
    match e.location() {
        None => e.with_file(path),
        Some((line, _)) => super::ConfigError::invalid(
            e.key().unwrap_or("configuration"),
            format!(
                "{} (line {line} of the YAML that `pgbouncers --convert {}` prints)",
                e.message(),
                path.display()
            ),
        )
        .with_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PoolMode};
    use std::collections::HashMap;
    use std::time::Duration;

    /// Files by name for `%include`; the identity is the name itself.
    fn reader(files: &[(&str, &str)]) -> impl FnMut(&Path) -> Result<(PathBuf, String), String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(n, t)| (PathBuf::from(n), t.to_string()))
            .collect();
        move |p: &Path| {
            files
                .get(p)
                .map(|t| (p.to_owned(), t.clone()))
                .ok_or_else(|| "no such file".to_owned())
        }
    }

    fn entries(text: &str, files: &[(&str, &str)]) -> Result<Vec<Entry>, IniError> {
        let mut read = reader(files);
        parse(Path::new("main.ini"), "main.ini".into(), text, &mut read)
    }

    fn kv(text: &str) -> Vec<(String, String, String)> {
        entries(text, &[])
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .into_iter()
            .map(|e| (e.section, e.key, e.value))
            .collect()
    }

    fn triple(s: &str, k: &str, v: &str) -> (String, String, String) {
        (s.into(), k.into(), v.into())
    }

    fn convert_text(text: &str, files: &[(&str, &str)]) -> Result<Converted, IniError> {
        let mut read = reader(files);
        convert(Path::new("main.ini"), "main.ini".into(), text, &mut read)
    }

    /// Converts and loads; `auth_type = trust` is added so that no auth_file is needed.
    fn load(text: &str) -> Config {
        let text = text.replacen("[pgbouncer]\n", "[pgbouncer]\nauth_type = trust\n", 1);
        let c = convert_text(&text, &[]).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        Config::from_file_text(&c.yaml).unwrap_or_else(|e| panic!("{}\n{e}", c.yaml))
    }

    fn refused(text: &str) -> IniError {
        match convert_text(text, &[]) {
            Ok(c) => panic!("{text:?} was accepted:\n{}", c.yaml),
            Err(e) => e,
        }
    }

    const DB: &str = "[databases]\napp = host=127.0.0.1\n";

    #[test]
    fn auth_user_auth_query_and_auth_dbname_are_translated_global_and_per_database() {
        let c = load(
            "[pgbouncer]\nauth_user = lookup\nauth_query = SELECT * FROM pgbouncer.get_auth($1)\n\
             auth_dbname = authdb\nauth_query_cache_ttl = 2\n[databases]\n\
             app = host=127.0.0.1\nauthdb = host=127.0.0.1 dbname=postgres\n\
             other = host=127.0.0.1 auth_user=other_lookup auth_dbname=app \
             auth_query='SELECT usename, passwd FROM pg_shadow WHERE usename=$1'\n",
        );
        assert_eq!(c.auth_user.as_deref(), Some("lookup"));
        assert_eq!(c.auth_query, "SELECT * FROM pgbouncer.get_auth($1)");
        assert_eq!(c.auth_dbname.as_deref(), Some("authdb"));
        assert_eq!(c.auth_query_cache_ttl, std::time::Duration::from_secs(2));
        let other = &c.databases["other"];
        assert_eq!(other.auth_user.as_deref(), Some("other_lookup"));
        assert_eq!(other.auth_dbname.as_deref(), Some("app"));
        assert_eq!(
            other.auth_query.as_deref(),
            Some("SELECT usename, passwd FROM pg_shadow WHERE usename=$1")
        );
        assert_eq!(c.databases["app"].auth_user, None);
        // Without any auth_user nothing is looked up; the default query is PgBouncer's.
        let plain = load(&format!("[pgbouncer]\n{DB}"));
        assert_eq!(plain.auth_user, None);
        assert_eq!(plain.auth_query, super::super::DEFAULT_AUTH_QUERY);
        // And an auth_user alone needs no auth_file (its password may not be needed).
        let text = "[pgbouncer]\nauth_type = scram-sha-256\nauth_user = lookup\n[databases]\napp = host=h\n";
        let conv = convert_text(text, &[]).expect("converts");
        Config::from_file_text(&conv.yaml).expect("auth_user without auth_file");
    }

    #[test]
    fn the_format_is_told_by_content() {
        for ini in [
            "[pgbouncer]\n",
            "; comment\n# comment\n\n  [databases]\n",
            "%include /etc/pgbouncer/common.ini\n",
            "\u{feff}[pgbouncer] ; trailing\n",
        ] {
            assert!(looks_like_ini(ini), "{ini:?}");
        }
        for yaml in [
            "",
            "# only a comment\n",
            "listen_port: 6432\n",
            "databases:\n  app: {}\n",
            "[a, b]\n",
            "- x\n",
            "%includes: 1\n",
        ] {
            assert!(!looks_like_ini(yaml), "{yaml:?}");
        }
    }

    #[test]
    fn lines_are_read_as_pgbouncer_reads_them() {
        let text = "\
; a comment
# another
   [pgbouncer]
listen_port=6433
  server_reset_query = DISCARD ALL ; not a comment   \r
auth_file = /etc/pgbouncer/userlist.txt
empty =
[databases]
\"my db\" = host=h
\"say \"\"hi\"\"\" = host=h
a-b.c_d = host=h
* = host=h
[users]  ; after the bracket
bob = pool_mode=session
";
        assert_eq!(
            kv(text),
            [
                triple("pgbouncer", "listen_port", "6433"),
                triple(
                    "pgbouncer",
                    "server_reset_query",
                    "DISCARD ALL ; not a comment"
                ),
                triple("pgbouncer", "auth_file", "/etc/pgbouncer/userlist.txt"),
                triple("pgbouncer", "empty", ""),
                triple("databases", "my db", "host=h"),
                triple("databases", "say \"hi\"", "host=h"),
                triple("databases", "a-b.c_d", "host=h"),
                triple("databases", "*", "host=h"),
                triple("users", "bob", "pool_mode=session"),
            ]
        );
        // PgBouncer reads on right after a section's `]`.
        assert_eq!(
            kv("[pgbouncer] listen_port = 1\n"),
            [triple("pgbouncer", "listen_port", "1")]
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let cases: &[(&str, usize, &str)] = &[
            ("[pgbouncer]\nlisten_port 6432\n", 2, "expected `=`"),
            ("[pgbouncer]\n\n= 5\n", 3, "no key"),
            ("[pgbouncer\n", 1, "closing `]`"),
            (
                "[pgbouncer]\n[PgBouncer]\n",
                2,
                "invalid section [PgBouncer]",
            ),
            ("listen_port = 1\n[pgbouncer]\n", 1, "before any [section]"),
            ("[pgbouncer]\n\"db = x\n", 2, "closing `\"`"),
            (
                "[pgbouncer]\nlisten-port! = 1\n",
                2,
                "expected `=` after `listen-port`",
            ),
            (
                "[pgbouncer]\n%include\tmissing.ini\n",
                2,
                "%include missing.ini: no such file",
            ),
        ];
        for (text, line, needle) in cases {
            let e = entries(text, &[]).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.line),
                ("main.ini", *line),
                "{text:?}: {e}"
            );
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("main.ini:{line}: ")),
                "{e}"
            );
        }
        let e = entries("[databases]\n", &[]).unwrap_err();
        assert!(e.message.contains("[pgbouncer] section is missing"), "{e}");
    }

    #[test]
    fn includes_are_read_in_place() {
        let text = "[pgbouncer]\nlisten_port = 1\n%include conf.d/dbs.ini\nlisten_port = 3\n";
        let files = [
            (
                "conf.d/dbs.ini",
                "[databases]\na = host=x\n%include  pool.ini  \n",
            ),
            // No section of its own: it continues the includer's current one.
            ("pool.ini", "b = host=y\n"),
        ];
        let got = entries(text, &files).unwrap();
        let seen: Vec<_> = got
            .iter()
            .map(|e| (e.section.as_str(), e.key.as_str(), e.file.as_str(), e.line))
            .collect();
        assert_eq!(
            seen,
            [
                ("pgbouncer", "listen_port", "main.ini", 2),
                ("databases", "a", "conf.d/dbs.ini", 2),
                ("databases", "b", "pool.ini", 1),
                // The section opened in the include is still the current one.
                ("databases", "listen_port", "main.ini", 4),
            ]
        );
    }

    #[test]
    fn include_loops_and_depth_are_refused() {
        let e = entries(
            "[pgbouncer]\n%include a.ini\n",
            &[
                ("a.ini", "%include b.ini\n"),
                ("b.ini", "\n%include a.ini\n"),
            ],
        )
        .unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("b.ini", 2), "{e}");
        assert!(e.message.contains("include loop"), "{e}");
        let e = entries("[pgbouncer]\n%include main.ini\n", &[("main.ini", "")]).unwrap_err();
        assert!(e.message.contains("include loop"), "{e}");

        // A chain of distinct files: 10 levels are fine, 11 are not (PgBouncer's limit).
        let names: Vec<String> = (0..12).map(|i| format!("f{i}.ini")).collect();
        let bodies: Vec<String> = (0..12)
            .map(|i| format!("%include f{}.ini\n", i + 1))
            .collect();
        let mut files: Vec<(&str, &str)> = names
            .iter()
            .map(|n| n.as_str())
            .zip(bodies.iter().map(|b| b.as_str()))
            .collect();
        files[10].1 = "";
        assert!(entries("[pgbouncer]\n%include f1.ini\n", &files).is_ok());
        files[10].1 = "%include f11.ini\n";
        files[11].1 = "";
        let e = entries("[pgbouncer]\n%include f1.ini\n", &files).unwrap_err();
        assert!(e.message.contains("deeper than 10"), "{e}");
    }

    #[test]
    fn settings_are_translated_with_their_units() {
        let c = load(
            "[pgbouncer]
listen_addr = 127.0.0.1, ::1
listen_port = 6433
unix_socket_dir =
unix_socket_mode = 0660
pool_mode = Transaction
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
admin_users = admin, ops
max_client_conn = 0x100
default_pool_size = 010
server_lifetime = 1800.5
stats_period = 30
tcp_user_timeout = 1500
tcp_keepidle = 60
log_connections = 0
log_stats = 2
server_check_query = <empty>
server_reset_query =
so_reuseport = 1
syslog = 0
workers = 2
proxy_protocol = optional
proxy_trusted = 10.0.0.0/8
[databases]
app = host=127.0.0.1 port=5433 dbname=real pool_size=5 reserve_pool=2 pool_mode=session user=u password='it''s a\\pass'
* = host=10.0.0.9
[users]
bob = pool_mode=statement pool_size=3 max_user_connections=4
",
        );
        assert_eq!(c.listen_addr, ["127.0.0.1", "::1"]);
        assert_eq!(c.listen_port, 6433);
        assert_eq!(c.unix_socket_dir, None);
        assert_eq!(c.unix_socket_mode, 0o660);
        assert_eq!(c.pool_mode, PoolMode::Transaction);
        assert_eq!(c.admin_users, ["admin", "ops"]);
        assert_eq!(c.max_client_conn, 256);
        assert_eq!(c.default_pool_size, 8, "010 is octal to strtol");
        assert_eq!(c.server_lifetime, Duration::from_millis(1_800_500));
        assert_eq!(c.stats_period, Duration::from_secs(30));
        assert_eq!(
            c.tcp_user_timeout,
            Duration::from_millis(1500),
            "milliseconds in PgBouncer"
        );
        assert_eq!(c.tcp_keepidle, Duration::from_secs(60));
        assert!(!c.log_connections);
        assert!(c.log_stats, "any non-zero integer is on");
        assert_eq!(c.server_check_query, "select 1");
        assert_eq!(c.server_reset_query, "");
        assert_eq!(c.worker_count(), 2);
        let app = c.database("app").unwrap();
        assert_eq!(app.dbname, "real");
        assert_eq!(
            (app.entry.host.as_str(), app.entry.port),
            ("127.0.0.1", 5433)
        );
        assert_eq!(app.entry.pool_size, Some(5));
        assert_eq!(app.entry.reserve_pool_size, Some(2));
        assert_eq!(app.entry.user.as_deref(), Some("u"));
        // PgBouncer's quoting: '' is a quote and a backslash is just a backslash.
        assert_eq!(
            app.entry.password.as_ref().unwrap().expose(),
            "it's a\\pass"
        );
        let odd = c.database("other").unwrap();
        assert!(odd.from_fallback);
        assert_eq!(odd.entry.host, "10.0.0.9");
        let bob = &c.users["bob"];
        assert_eq!(bob.pool_mode, Some(PoolMode::Statement));
        assert_eq!(
            (bob.pool_size, bob.max_user_connections),
            (Some(3), Some(4))
        );
    }

    #[test]
    fn pgbouncer_defaults_that_differ_from_ours_are_written_out() {
        // No listen_addr: PgBouncer listens on its Unix socket only, in /tmp by default, and a
        // database without host= connects through that socket directory.
        let c = load("[pgbouncer]\n[databases]\n\"my db\" =\nx = dbname=y\n");
        assert!(c.listen_addr.is_empty());
        assert_eq!(c.unix_socket_dir.as_deref(), Some("/tmp"));
        let db = c.database("my db").unwrap();
        assert_eq!(
            (db.entry.host.as_str(), db.dbname.as_str()),
            ("/tmp", "my db")
        );
        let c = load("[pgbouncer]\nunix_socket_dir = /run/pg\nlisten_addr = *\n[databases]\nx =\n");
        assert_eq!(c.listen_addr, ["*"]);
        assert_eq!(c.database("x").unwrap().entry.host, "/run/pg");
        let e = refused("[pgbouncer]\nunix_socket_dir =\nlisten_addr = *\n[databases]\nx =\n");
        assert!(e.message.contains("add host="), "{e}");
    }

    #[test]
    fn unsupported_settings_are_refused_by_name_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            (
                "syslog = 1",
                "syslog = 1 is refused: syslog is not supported",
            ),
            (
                "unix_socket_group = postgres",
                "unix_socket_group = postgres is refused",
            ),
            ("server_fast_close = 1", "server_fast_close = 1 is refused"),
            (
                "auth_type = pam",
                "auth_type = pam: auth_type pam is not supported",
            ),
            ("auth_type = any", "auth_type any is not supported"),
            ("server_tls_sslmode = sometimes", "server_tls_sslmode"),
            (
                "track_extra_parameters = search-path",
                "`search-path` is not a parameter name",
            ),
            ("unix_socket_mode = 777", "octal 1411"),
            ("unix_socket_dir = @pgb", "abstract-namespace"),
            (
                "tcp_user_timeout = -1",
                "tcp_user_timeout = -1: expected an integer",
            ),
            (
                "server_lifetime = soon",
                "server_lifetime = soon: expected a number of seconds",
            ),
            ("log_stats = yes", "log_stats = yes: expected an integer"),
            (
                "listen_port = 70000",
                "listen_port = 70000: expected an integer from 0 to 65535",
            ),
            (
                "listen_prot = 1",
                "unknown key `listen_prot`, did you mean `listen_port`?",
            ),
        ];
        for (line, needle) in cases {
            let text = format!("[pgbouncer]\n{line}\n{DB}");
            let e = refused(&text);
            assert_eq!(e.line, 2, "{line}: {e}");
            assert!(e.message.contains(needle), "{line}: {e}");
        }
        // The values that mean what pgbouncers does anyway are accepted.
        for line in [
            "peer_id = 0",
            "client_tls_sslmode = disable",
            "auth_user =",
            "syslog = 0",
            "max_db_client_connections = 0",
            "query_wait_notify = 0",
            "scram_iterations = 4096",
            "server_tls_sslmode = prefer",
            "track_extra_parameters = IntervalStyle, application_name",
            "track_extra_parameters = search_path, default_transaction_read_only",
        ] {
            load(&format!("[pgbouncer]\n{line}\n{DB}"));
        }
        let c = load(&format!(
            "[pgbouncer]\ntrack_extra_parameters = search_path, default_transaction_read_only\n{DB}"
        ));
        assert_eq!(
            c.track_extra_parameters,
            ["search_path", "default_transaction_read_only"]
        );
        assert_eq!(
            load(&format!("[pgbouncer]\n{DB}")).track_extra_parameters,
            ["IntervalStyle"]
        );
        load(&format!("[pgbouncer]\n[peers]\n{DB}"));
    }

    #[test]
    fn peers_become_the_peers_section() {
        let c = load(&format!(
            "[pgbouncer]\npeer_id = 2\n[peers]\n1 = host=10.0.0.1\n\
             2 = host=/tmp/pgb2 port=7000 pool_size=4\n{DB}"
        ));
        assert_eq!(c.peer_id, 2);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[&1].host, "10.0.0.1");
        assert_eq!(c.peers[&1].port, 6432);
        assert_eq!(c.peers[&2].port, 7000);
        assert_eq!(c.peers[&2].pool_size, Some(4));
        for (line, needle) in [
            ("0 = host=h", "a peer id must be from 1 to 16383"),
            ("16384 = host=h", "a peer id must be from 1 to 16383"),
            ("x = host=h", "a peer id must be from 1 to 16383"),
            ("1 = port=5", "host= is missing"),
            ("1 = host=h dbname=x", "unknown peer parameter `dbname`"),
        ] {
            let e = refused(&format!("[pgbouncer]\npeer_id = 1\n[peers]\n{line}\n{DB}"));
            assert!(e.message.contains(needle), "{line}: {e}");
        }
        let e = refused(&format!("[pgbouncer]\npeer_id = 16384\n{DB}"));
        assert!(e.message.contains("peer_id"), "{e}");
    }

    #[test]
    fn settings_without_effect_are_accepted_with_a_notice() {
        let c = convert_text(
            &format!(
                "[pgbouncer]\nso_reuseport = 1\ntcp_defer_accept = 45\nlisten_backlog = 100\n{DB}"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.notices.len(), 3, "{:?}", c.notices);
        let want = "so_reuseport is accepted and has no effect: it is not needed: the workers \
                    already share the port";
        assert!(
            c.notices.iter().any(|n| n.starts_with(want)),
            "{:?}",
            c.notices
        );
        assert!(c.yaml.contains("# note: so_reuseport"), "{}", c.yaml);
        Config::from_file_text(&format!("{}auth_type: trust\n", c.yaml)).unwrap();
    }

    #[test]
    fn the_deprecated_reserve_pool_is_read_with_a_notice() {
        let c = convert_text(
            "[pgbouncer]\n[databases]\napp = host=h reserve_pool=4\n",
            &[],
        )
        .unwrap();
        assert!(c.yaml.contains("    reserve_pool_size: 4\n"), "{}", c.yaml);
        assert!(
            c.notices
                .iter()
                .any(|n| n.contains("reserve_pool is PgBouncer's deprecated")),
            "{:?}",
            c.notices
        );
    }

    #[test]
    fn connection_strings_follow_pgbouncer() {
        let pairs = |s: &str| split_connstr(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let p = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(pairs(""), p(&[]));
        assert_eq!(
            pairs("  host = h  port=1 "),
            p(&[("host", "h"), ("port", "1")])
        );
        assert_eq!(pairs("password='a b''c'"), p(&[("password", "a b'c")]));
        assert_eq!(pairs(r"password=a\b"), p(&[("password", r"a\b")]));
        assert_eq!(
            pairs("port=1 port=2"),
            p(&[("port", "2")]),
            "the last one wins"
        );
        for bad in [
            "host",
            "=x",
            "host=",
            "password=''",
            "password='abc",
            "password='a'b",
        ] {
            assert!(split_connstr(bad).is_err(), "{bad:?}");
        }
        let cases: &[(&str, &str)] = &[
            (
                "app = host=a,b load_balance_hosts=random",
                "load_balance_hosts: ",
            ),
            ("app = host=a,@b", "abstract-namespace"),
            (
                "app = host=h sslmode=require",
                "unknown connection parameter `sslmode`",
            ),
            ("app = host=h port=0", "port 0: expected 1 to 65535"),
            (
                "app = host=h pool_size=10x",
                "pool_size 10x: expected an integer",
            ),
            (
                "app = host=h pool_mode=fast",
                "pool_mode: unknown value `fast`",
            ),
            ("app = host=h password=", "password: an empty value"),
        ];
        for (line, needle) in cases {
            let e = refused(&format!("[pgbouncer]\n[databases]\n{line}\n"));
            assert_eq!(e.line, 3, "{line}: {e}");
            assert!(e.message.contains(needle), "{line}: {e}");
        }
        // The startup parameters PgBouncer asks of the server are read as they are.
        let c = load("[pgbouncer]\n[databases]\napp = host=h client_encoding=LATIN1 datestyle='SQL, DMY' timezone=UTC\n");
        let app = &c.databases["app"];
        assert_eq!(app.client_encoding.as_deref(), Some("LATIN1"));
        assert_eq!(app.datestyle.as_deref(), Some("SQL, DMY"));
        assert_eq!(app.timezone.as_deref(), Some("UTC"));
        let e = refused("[pgbouncer]\n[databases]\nx = host=h\n[users]\nbob = timeout=3\n");
        assert!(
            e.message.contains("unknown user parameter `timeout`"),
            "{e}"
        );
        load("[pgbouncer]\n[databases]\nx = host=h max_db_client_connections=0\n[users]\nbob = max_user_client_connections=0\n");
        // PgBouncer 1.24+'s client limits, global, per database and per user.
        let c = load(
            "[pgbouncer]\nmax_db_client_connections = 10\nmax_user_client_connections = 7\n\
             [databases]\nx = host=h max_db_client_connections=5\ny = host=h\n\
             [users]\nbob = max_user_client_connections=3\n",
        );
        assert_eq!(
            (
                c.max_db_client_connections_for("x"),
                c.max_db_client_connections_for("y"),
                c.max_user_client_connections_for("bob"),
                c.max_user_client_connections_for("eve"),
            ),
            (5, 10, 3, 7)
        );
        // PgBouncer 1.25's per-database query_wait_timeout and per-user timeouts.
        let c = load(
            "[pgbouncer]\nquery_timeout = 10\n[databases]\nx = host=h query_wait_timeout=7\n\
             [users]\nbob = query_timeout=3 transaction_timeout=9 query_wait_timeout=0\n",
        );
        let (bob, eve) = (c.timeouts_for("x", "bob"), c.timeouts_for("x", "eve"));
        let secs = std::time::Duration::from_secs;
        assert_eq!(
            (bob.query, bob.transaction, bob.query_wait),
            (secs(3), secs(9), secs(0))
        );
        assert_eq!(
            (eve.query, eve.transaction, eve.query_wait),
            (secs(10), secs(0), secs(7))
        );
        // Host lists (PgBouncer 1.24+) and pgbouncers' target_session_attrs.
        let c = load(
            "[pgbouncer]\n[databases]\n\
             x = host=10.0.0.1,10.0.0.2 port=6000 load_balance_hosts=disable \
             target_session_attrs=read-write\ny = host=h\n",
        );
        let x = &c.databases["x"];
        assert_eq!(x.hosts(), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(x.port, 6000);
        assert_eq!(
            x.load_balance_hosts,
            Some(super::super::LoadBalanceHosts::Disable)
        );
        assert_eq!(
            x.target_session_attrs,
            Some(super::super::TargetSessionAttrs::ReadWrite)
        );
        assert_eq!(c.databases["y"].load_balance_hosts, None);
        let e = refused("[pgbouncer]\n[databases]\nx = host=h max_db_client_connections=5x\n");
        assert!(e.message.contains("max_db_client_connections 5x"), "{e}");
    }

    #[test]
    fn the_yaml_quotes_anything() {
        for s in [
            "",
            "plain",
            "it's",
            "a: b # c",
            "*",
            "- x",
            "\"q\" \\",
            "tab\there",
            "bell\u{7}",
            "nl\nx",
            "é\u{2028}",
        ] {
            let yaml = format!(
                "server_reset_query: {}\nadmin_users: [a]\nauth_type: trust\n",
                yaml_str(s)
            );
            let c = Config::from_file_text(&yaml).unwrap_or_else(|e| panic!("{s:?}: {yaml}: {e}"));
            assert_eq!(c.server_reset_query, s, "{yaml}");
        }
    }

    #[test]
    fn every_pgbouncer_setting_is_listed_once_and_alphabetically() {
        let names: Vec<&str> = pgbouncer_settings().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        // A translated setting is one of ours; our own extra settings are not PgBouncer's.
        let ours = Config::keys();
        for (name, rule, _) in SETTINGS {
            if let Rule::Same(kind) = rule {
                if !matches!(kind, Kind::ServerCheckQuery | Kind::TrackExtra) {
                    assert!(ours.contains(name), "{name}");
                }
            }
        }
        for name in OWN_SETTINGS {
            assert!(ours.contains(name) && !names.contains(name), "{name}");
        }
    }

    /// Rows `| `name` | status | ... |` of the table under `heading` in docs/PGBOUNCER.md.
    fn doc_rows(heading: &str) -> Vec<(String, String)> {
        let doc = include_str!("../../../docs/PGBOUNCER.md");
        let start = doc
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?} in the doc"));
        let mut rows = Vec::new();
        let mut in_table = false;
        for line in doc[start..].lines().skip(1) {
            if line.starts_with("## ") {
                break;
            }
            let Some(row) = line.strip_prefix("| `") else {
                if in_table && !line.starts_with('|') {
                    break;
                }
                continue;
            };
            in_table = true;
            let mut cells = row.split('|');
            let name = cells
                .next()
                .unwrap()
                .trim()
                .trim_end_matches('`')
                .to_owned();
            let status = cells.next().unwrap_or("").trim().to_owned();
            rows.push((name, status));
        }
        rows
    }

    #[test]
    fn the_docs_table_matches_the_code() {
        let check = |heading: &str, code: Vec<(&str, Status)>| {
            let doc = doc_rows(heading);
            let want: Vec<(String, String)> = code
                .iter()
                .map(|(n, s)| (n.to_string(), s.as_str().to_owned()))
                .collect();
            let mut doc_sorted = doc.clone();
            doc_sorted.sort();
            let mut want_sorted = want.clone();
            want_sorted.sort();
            assert_eq!(doc_sorted, want_sorted, "docs/PGBOUNCER.md, {heading}");
        };
        check("## [pgbouncer] settings", pgbouncer_settings().collect());
        check(
            "## [databases] connection-string keys",
            database_keys().collect(),
        );
        check("## [users] keys", user_keys().collect());
    }
}
