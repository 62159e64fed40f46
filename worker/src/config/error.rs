//! `ConfigError`: what went wrong in a config file, with the file, the key path and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::MessageFormatter;

/// What kind of problem a [`ConfigError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not well-formed YAML (or is several documents).
    Syntax,
    /// A key the pooler does not know (often a typo).
    UnknownKey,
    /// A value of the wrong type or out of the type's range.
    BadValue,
    /// Values that parse but break a rule: a range, or a combination of settings.
    Invalid,
}

/// An error in a config file. `Display` gives `file: key.path: message (line L, column C)`,
/// leaving out the parts that are unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    kind: ErrorKind,
    file: Option<PathBuf>,
    key: Option<String>,
    message: String,
    location: Option<(u64, u64)>,
}

impl ConfigError {
    /// A rule broken by a parsed value; `key` is its full path, e.g. `databases.app.pool_size`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            kind: ErrorKind::Invalid,
            file: None,
            key: Some(sanitize(&key.into())),
            message: sanitize(&message.into()),
            location: None,
        }
    }

    pub(super) fn io(file: &Path, err: &std::io::Error) -> ConfigError {
        ConfigError {
            kind: ErrorKind::Io,
            file: Some(file.to_owned()),
            key: None,
            message: format!("cannot read the config file: {err}"),
            location: None,
        }
    }

    pub(super) fn too_big(file: &Path, max: u64) -> ConfigError {
        ConfigError {
            kind: ErrorKind::Io,
            file: Some(file.to_owned()),
            key: None,
            message: format!("the config file is larger than {max} bytes"),
            location: None,
        }
    }

    /// The document is YAML but not a mapping of settings (a scalar, a list).
    pub(super) fn not_a_mapping(location: Option<(u64, u64)>) -> ConfigError {
        ConfigError {
            kind: ErrorKind::BadValue,
            file: None,
            key: None,
            message: "the configuration must be a mapping of settings (`key: value` lines)"
                .to_owned(),
            location,
        }
    }

    /// Builds an error from saphyr's, with the key path `serde_path_to_error` recorded
    /// (`None` when the error came before any key, e.g. a syntax error at the top).
    pub(super) fn from_yaml(
        err: &serde_saphyr::Error,
        path: Option<String>,
        subkey: Option<super::de::SubkeyError>,
    ) -> ConfigError {
        let err = err.without_snippet();
        let kind = match err {
            serde_saphyr::Error::SerdeUnknownField { .. } => ErrorKind::UnknownKey,
            serde_saphyr::Error::ExternalMessage { .. }
            | serde_saphyr::Error::Eof { .. }
            | serde_saphyr::Error::MultipleDocuments { .. }
            | serde_saphyr::Error::InvalidUtf8Input => ErrorKind::Syntax,
            // Connection strings report their unknown keys through a custom message.
            _ if subkey.as_ref().is_some_and(|s| s.unknown) => ErrorKind::UnknownKey,
            _ => ErrorKind::BadValue,
        };
        let key = path
            .map(|p| sanitize(&clean_path(&p)))
            .filter(|p| !p.is_empty());
        let key = match (key, subkey) {
            (Some(k), Some(sub)) => Some(format!("{k}.{}", sanitize(&sub.key))),
            (k, _) => k,
        };
        let message = match err {
            // Serde lists every field; with ~60 top-level keys a suggestion reads better.
            serde_saphyr::Error::SerdeUnknownField {
                field, expected, ..
            } => unknown_key_message(field, expected),
            // Saphyr's wording suggests a library option; ours is a rule.
            serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
                format!("the key `{}` is given twice", super::de::truncate(key, 64))
            }
            _ => serde_saphyr::DefaultMessageFormatter
                .format_message(err)
                .into_owned(),
        };
        ConfigError {
            kind,
            file: None,
            key,
            message: sanitize(&message),
            location: err.location().map(|l| (l.line(), l.column())),
        }
    }

    pub(super) fn with_file(mut self, file: &Path) -> ConfigError {
        self.file = Some(file.to_owned());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file the error is in, when the config was loaded from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The full key path (`databases.app.pool_size`, `proxy_trusted[1]`), when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The problem itself, without file, key or location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 1-based line and column in the file, when known.
    pub fn location(&self) -> Option<(u64, u64)> {
        self.location
    }
}

/// "unknown key `x`", with the closest known key when one is near, else the short list.
pub(super) fn unknown_key_message(field: &str, expected: &[&str]) -> String {
    let field = super::de::truncate(field, 64);
    let mut message = format!("unknown key `{field}`");
    let closest = expected
        .iter()
        .map(|k| (edit_distance(&field, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len() / 3).max(1));
    if let Some((_, k)) = closest {
        message.push_str(&format!(", did you mean `{k}`?"));
    } else if expected.len() <= 12 {
        message.push_str(&format!(", expected one of: {}", expected.join(", ")));
    }
    message
}

/// Levenshtein distance over chars; inputs are short (keys, truncated to 64 chars).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev_diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (prev_diag + cost).min(row[j] + 1).min(row[j + 1] + 1);
            prev_diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Drops the segments `serde_path_to_error` writes for keys it could not capture
/// (`?`) and its root marker (`.`), so `databases.app.?` names `databases.app`.
fn clean_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    let mut p = path;
    while let Some(rest) = p.strip_suffix(".?") {
        p = rest;
    }
    if p == "?" {
        String::new()
    } else {
        p.to_owned()
    }
}

/// Escapes control characters: messages echo parts of the file and end up in logs.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_joins_the_known_parts() {
        let e = ConfigError::invalid("databases.app.pool_size", "must be at least 1");
        assert_eq!(e.to_string(), "databases.app.pool_size: must be at least 1");
        let e = e.with_file(Path::new("/etc/pgbouncers.yaml"));
        assert_eq!(
            e.to_string(),
            "/etc/pgbouncers.yaml: databases.app.pool_size: must be at least 1"
        );
        let mut e = ConfigError::io(
            Path::new("/x.yaml"),
            &std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(
            e.to_string()
                .starts_with("/x.yaml: cannot read the config file: "),
            "{e}"
        );
        e.location = Some((3, 7));
        assert!(e.to_string().ends_with(" (line 3, column 7)"), "{e}");
    }

    #[test]
    fn unknown_keys_get_suggestions() {
        assert_eq!(edit_distance("listen_prot", "listen_port"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        let keys = &["listen_addr", "listen_port", "pool_mode"];
        assert_eq!(
            unknown_key_message("listen_prot", keys),
            "unknown key `listen_prot`, did you mean `listen_port`?"
        );
        assert_eq!(
            unknown_key_message("zzz", keys),
            "unknown key `zzz`, expected one of: listen_addr, listen_port, pool_mode"
        );
        let many: Vec<&str> = (0..20).map(|_| "abcdefgh").collect();
        assert_eq!(unknown_key_message("zzz", &many), "unknown key `zzz`");
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("."), "");
        assert_eq!(clean_path("?"), "");
        assert_eq!(clean_path("databases.app.?"), "databases.app");
        assert_eq!(clean_path("proxy_trusted[1]"), "proxy_trusted[1]");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
    }
}
