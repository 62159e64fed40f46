//! Small value types of the configuration: pool, auth and PROXY modes, the worker count, secrets.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

/// A keyword that is not one of a setting's allowed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKeyword {
    pub value: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownKeyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown value `{}`, expected one of: {}",
            super::de::truncate(&self.value, 64),
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownKeyword {}

/// Defines a keyword enum with `as_str`, `Display`, case-insensitive `FromStr` and
/// a [`Keyword`] impl from one list, so the YAML, connection-string and admin spellings agree.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The canonical spelling, as written in the config file.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownKeyword;
            fn from_str(s: &str) -> Result<Self, UnknownKeyword> {
                $( if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); } )+
                Err(UnknownKeyword { value: s.to_owned(), expected: Self::NAMES })
            }
        }

        impl Keyword for $name {
            const NAMES: &'static [&'static str] = $name::NAMES;
        }
    };
}

/// `Deserialize` for keyword enums whose YAML form is always a string.
macro_rules! keyword_deserialize {
    ($($name:ident),*) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(KeywordVisitor::<$name>(std::marker::PhantomData))
            }
        }
    )*};
}

/// What [`KeywordVisitor`] needs to know about a keyword enum.
trait Keyword: FromStr<Err = UnknownKeyword> {
    const NAMES: &'static [&'static str];
}

struct KeywordVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Keyword> Visitor<'de> for KeywordVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "one of: {}", T::NAMES.join(", "))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

keyword_enum! {
    /// When a server connection goes back to the pool.
    pub enum PoolMode {
        /// When the client disconnects.
        Session => "session",
        /// When the transaction ends (ReadyForQuery `I`).
        Transaction => "transaction",
        /// After every statement; multi-statement transactions are refused.
        Statement => "statement",
    }
}

keyword_enum! {
    /// How clients authenticate to the pooler.
    pub enum AuthType {
        /// No password; the user name is taken on trust.
        Trust => "trust",
        /// Cleartext password checked against `auth_file`.
        Plain => "plain",
        /// MD5 challenge (SCRAM is used instead when `auth_file` holds a SCRAM secret).
        Md5 => "md5",
        /// SCRAM-SHA-256.
        ScramSha256 => "scram-sha-256",
        /// Method chosen per connection by `auth_hba_file`.
        Hba => "hba",
        /// The TLS client certificate's common name is the user name (client_tls_sslmode
        /// verify-ca or verify-full).
        Cert => "cert",
    }
}

keyword_enum! {
    /// Whether clients connect through a proxy that sends a HAProxy PROXY header.
    ///
    /// Its `Deserialize` is written by hand so that YAML 1.1's `off`, which a YAML library
    /// may hand over as boolean `false`, also means [`ProxyProtocol::Off`].
    pub enum ProxyProtocol {
        /// No header is expected; one that arrives is a protocol error.
        Off => "off",
        /// A header is read when a trusted peer sends one.
        Optional => "optional",
        /// Every TCP connection from a trusted peer must start with a header.
        Required => "required",
    }
}

keyword_enum! {
    /// How much TLS one side of the pooler asks for: PgBouncer's client_tls_sslmode and
    /// server_tls_sslmode, which share libpq's sslmode words.
    pub enum TlsMode {
        /// No TLS: SSLRequest is answered `N` (clients), or never sent (servers).
        Disable => "disable",
        /// TLS when the other side asks for it (clients); like `prefer` for servers.
        Allow => "allow",
        /// TLS when the other side offers it; the certificate is not checked.
        Prefer => "prefer",
        /// TLS or nothing; the certificate is not checked.
        Require => "require",
        /// TLS, with a certificate signed by the configured CA.
        VerifyCa => "verify-ca",
        /// As verify-ca; for servers the certificate must also name the host.
        VerifyFull => "verify-full",
    }
}

impl TlsMode {
    /// TLS is offered or used at all.
    pub fn enabled(self) -> bool {
        self != TlsMode::Disable
    }

    /// A connection without TLS is refused.
    pub fn required(self) -> bool {
        matches!(
            self,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull
        )
    }

    /// The peer's certificate is checked against the CA file.
    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

keyword_enum! {
    /// How a database whose `host` is a list picks the host of each new server (PgBouncer 1.24+).
    #[derive(Default)]
    pub enum LoadBalanceHosts {
        /// Each new connection goes to the next host of the list.
        #[default]
        RoundRobin => "round-robin",
        /// Each new connection goes to the first host of the list that is not marked down.
        Disable => "disable",
    }
}

keyword_enum! {
    /// Which kind of PostgreSQL server a database's connections must reach (libpq's
    /// `target_session_attrs`; a pgbouncers extension, PgBouncer has no such setting).
    #[derive(Default)]
    pub enum TargetSessionAttrs {
        /// Any server that lets the pooler log in.
        #[default]
        Any => "any",
        /// A server whose sessions can write (`transaction_read_only` off).
        ReadWrite => "read-write",
        /// A server whose sessions cannot write (a standby, or default_transaction_read_only).
        ReadOnly => "read-only",
        /// A server not in recovery.
        Primary => "primary",
        /// A server in recovery (a hot standby).
        Standby => "standby",
        /// A standby when one is up, else any server.
        PreferStandby => "prefer-standby",
    }
}

keyword_deserialize!(
    PoolMode,
    AuthType,
    TlsMode,
    LoadBalanceHosts,
    TargetSessionAttrs
);

impl<'de> Deserialize<'de> for ProxyProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ProxyProtocol, D::Error> {
        d.deserialize_any(ProxyProtocolVisitor)
    }
}

struct ProxyProtocolVisitor;

impl<'de> Visitor<'de> for ProxyProtocolVisitor {
    type Value = ProxyProtocol;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "one of: {}", ProxyProtocol::NAMES.join(", "))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ProxyProtocol, E> {
        if v {
            // `on`/`yes`/`true` does not say whether the header is optional or required.
            Err(E::invalid_value(Unexpected::Bool(true), &self))
        } else {
            Ok(ProxyProtocol::Off)
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ProxyProtocol, E> {
        v.parse()
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

/// How many worker processes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Workers {
    /// One per CPU the process may run on.
    #[default]
    Auto,
    /// A fixed number, 1 to [`Workers::MAX`].
    Count(u16),
}

impl Workers {
    /// Upper bound on worker processes (shared-memory slots are sized for it).
    pub const MAX: u16 = 256;

    /// The number of workers to run: `auto` resolves to the CPUs available to this process.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => usize::from(n),
            Workers::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(usize::from(Workers::MAX)),
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Workers, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        match s.parse::<u16>() {
            Ok(n) if (1..=Workers::MAX).contains(&n) => Ok(Workers::Count(n)),
            _ => Err(format!(
                "`{}` is not `auto` or a number from 1 to {}",
                super::de::truncate(s, 32),
                Workers::MAX
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Workers, D::Error> {
        d.deserialize_any(WorkersVisitor)
    }
}

struct WorkersVisitor;

impl<'de> Visitor<'de> for WorkersVisitor {
    type Value = Workers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`auto` or a number from 1 to {}", Workers::MAX)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
        match u16::try_from(v) {
            Ok(n) if (1..=Workers::MAX).contains(&n) => Ok(Workers::Count(n)),
            _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
        v.parse()
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

/// A password from the config file: compared and cloned like a string, never printed.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The password itself; call only where it is sent or hashed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{
        BoolDeserializer, Error as ValueError, StrDeserializer, U64Deserializer,
    };
    use serde::de::IntoDeserializer;

    #[test]
    fn keywords_round_trip_and_ignore_case() {
        for name in PoolMode::NAMES {
            let m: PoolMode = name.parse().unwrap();
            assert_eq!(m.as_str(), *name);
            assert_eq!(name.to_uppercase().parse::<PoolMode>().unwrap(), m);
        }
        for name in AuthType::NAMES {
            assert_eq!(name.parse::<AuthType>().unwrap().to_string(), *name);
        }
        let err = "pam".parse::<AuthType>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown value `pam`, expected one of: trust, plain, md5, scram-sha-256, hba, cert"
        );
    }

    #[test]
    fn proxy_protocol_off_as_string_or_false() {
        let d: StrDeserializer<ValueError> = "off".into_deserializer();
        assert_eq!(ProxyProtocol::deserialize(d).unwrap(), ProxyProtocol::Off);
        let d: BoolDeserializer<ValueError> = false.into_deserializer();
        assert_eq!(ProxyProtocol::deserialize(d).unwrap(), ProxyProtocol::Off);
        let d: BoolDeserializer<ValueError> = true.into_deserializer();
        assert!(ProxyProtocol::deserialize(d).is_err());
        let d: StrDeserializer<ValueError> = "Required".into_deserializer();
        assert_eq!(
            ProxyProtocol::deserialize(d).unwrap(),
            ProxyProtocol::Required
        );
        let d: StrDeserializer<ValueError> = "sometimes".into_deserializer();
        assert!(ProxyProtocol::deserialize(d).is_err());
    }

    #[test]
    fn workers_parse_and_resolve() {
        assert_eq!("auto".parse::<Workers>().unwrap(), Workers::Auto);
        assert_eq!("4".parse::<Workers>().unwrap(), Workers::Count(4));
        for bad in ["0", "257", "-1", "", "many"] {
            assert!(bad.parse::<Workers>().is_err(), "{bad}");
        }
        let d: U64Deserializer<ValueError> = 256u64.into_deserializer();
        assert_eq!(Workers::deserialize(d).unwrap(), Workers::Count(256));
        let d: U64Deserializer<ValueError> = 0u64.into_deserializer();
        assert!(Workers::deserialize(d).is_err());
        assert_eq!(Workers::Count(3).resolve(), 3);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Workers::Auto.resolve(), cpus.min(256));
        assert_eq!(Workers::Auto.to_string(), "auto");
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
