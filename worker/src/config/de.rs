//! Serde helpers for the config's value syntaxes: seconds, bounded integers, 0/1 booleans, comma lists, octal modes.
//!
//! Every helper asks the deserializer for the most general form (`deserialize_any`) where
//! several YAML spellings are legal, so the same field accepts what PgBouncer's ini file
//! accepted (`log_stats: 1`, `admin_users: a, b`) as well as the YAML-native form.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;

use pgbouncers_proto::cidr::Cidr;
pub use pgbouncers_proto::text::truncate;

/// Largest duration accepted anywhere (100 years): keeps `Instant + d` far from overflow.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 24 * 3600;

/// The key inside a connection string that an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubkeyError {
    pub key: String,
    /// The key itself is unknown (rather than its value bad).
    pub unknown: bool,
}

thread_local! {
    /// The connection-string key behind the last deserialization error.
    ///
    /// A connection string is one YAML scalar, so `serde_path_to_error` can only point at
    /// `databases.<name>`; the entry parser leaves the inner key here and the loader
    /// appends it. Deserialization stops at the first error, so the last one set is it.
    static ERROR_SUBKEY: RefCell<Option<SubkeyError>> = const { RefCell::new(None) };
}

/// Records the connection-string key that the error about to be returned is about.
pub(super) fn set_error_subkey(sub: SubkeyError) {
    ERROR_SUBKEY.with(|k| *k.borrow_mut() = Some(sub));
}

/// Takes (and clears) the key recorded by [`set_error_subkey`].
pub(super) fn take_error_subkey() -> Option<SubkeyError> {
    ERROR_SUBKEY.with(|k| k.borrow_mut().take())
}

// ---------------------------------------------------------------------------------------
// Durations in seconds.

/// Deserializes a non-negative, finite number of seconds (integer or float) into a `Duration`.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(SecondsVisitor)
}

struct SecondsVisitor;

impl SecondsVisitor {
    fn whole<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        if v > MAX_DURATION_SECS {
            return Err(E::invalid_value(Unexpected::Unsigned(v), &self));
        }
        Ok(Duration::from_secs(v))
    }
}

impl<'de> Visitor<'de> for SecondsVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a number of seconds from 0 to {MAX_DURATION_SECS}")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        self.whole(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        match u64::try_from(v) {
            Ok(v) => self.whole(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        // `is_finite` rules out NaN, so the comparisons below are total.
        if !v.is_finite() || v < 0.0 || v > MAX_DURATION_SECS as f64 {
            return Err(E::invalid_value(Unexpected::Float(v), &self));
        }
        Duration::try_from_secs_f64(v).map_err(|_| E::invalid_value(Unexpected::Float(v), &self))
    }
}

/// [`seconds`] for an optional field: null or absent means "not set".
pub fn opt_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Secs(#[serde(deserialize_with = "seconds")] Duration);
    Ok(Option::<Secs>::deserialize(d)?.map(|s| s.0))
}

// ---------------------------------------------------------------------------------------
// Bounded integers.

/// Integer types a config field can have; the bounds are only used for the error message.
pub trait ConfigInt: Sized + Copy {
    const MIN: i128;
    const MAX: i128;
    fn from_i128(v: i128) -> Option<Self>;
}

macro_rules! config_int {
    ($($t:ty),*) => {$(
        impl ConfigInt for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
            fn from_i128(v: i128) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
config_int!(u8, u16, u32, u64);

/// Deserializes an integer, naming its range when the value does not fit.
///
/// Saphyr's own integer errors say only "invalid u32"; this says what would be accepted.
/// Integral floats are accepted because saphyr infers `0777`-style spellings as floats.
pub fn int<'de, D: Deserializer<'de>, T: ConfigInt>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(IntVisitor(PhantomData))
}

/// [`int`] for an optional field: null or absent means "not set".
pub fn opt_int<'de, D: Deserializer<'de>, T: ConfigInt>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(OptVisitor(PhantomData::<T>))
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: ConfigInt> IntVisitor<T> {
    fn fit<E: de::Error>(&self, v: i128, unexp: Unexpected<'_>) -> Result<T, E> {
        T::from_i128(v).ok_or_else(|| E::invalid_value(unexp, self))
    }
}

impl<'de, T: ConfigInt> Visitor<'de> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from {} to {}", T::MIN, T::MAX)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.fit(i128::from(v), Unexpected::Unsigned(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.fit(i128::from(v), Unexpected::Signed(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Bounded check first so the cast below is exact.
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e30 {
            self.fit(v as i128, Unexpected::Float(v))
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

struct OptVisitor<T>(PhantomData<T>);

impl<'de, T: ConfigInt> Visitor<'de> for OptVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        IntVisitor::<T>(PhantomData).expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        int(d).map(Some)
    }
}

// ---------------------------------------------------------------------------------------
// Booleans.

/// Deserializes a boolean; also accepts PgBouncer's `0`/`1` and the usual words as strings.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(FlagVisitor)
}

/// Parses the textual spellings of a boolean, case-insensitively.
pub fn parse_flag(s: &str) -> Option<bool> {
    const TRUE: &[&str] = &["1", "true", "yes", "on"];
    const FALSE: &[&str] = &["0", "false", "no", "off"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(s)) {
        Some(true)
    } else if FALSE.iter().any(|t| t.eq_ignore_ascii_case(s)) {
        Some(false)
    } else {
        None
    }
}

struct FlagVisitor;

impl<'de> Visitor<'de> for FlagVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean (true/false, yes/no, on/off or 1/0)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        parse_flag(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
    }
}

// ---------------------------------------------------------------------------------------
// Lists: a YAML sequence or PgBouncer's comma-separated string.

/// Splits a PgBouncer-style comma list, trimming blanks and dropping empty items.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|item| !item.is_empty())
}

/// Deserializes a list of strings from a sequence, a comma-separated string, or null (empty).
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor::<String>(PhantomData))
}

/// Deserializes a list of networks from a sequence, a comma-separated string, or null (empty).
pub fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    d.deserialize_any(ListVisitor::<Cidr>(PhantomData))
}

/// An element of a comma list: how to parse one item of the string form.
pub trait ListItem: Sized + for<'de> Deserialize<'de> {
    const WHAT: &'static str;
    fn parse_item(s: &str) -> Result<Self, String>;
}

impl ListItem for String {
    const WHAT: &'static str = "a list of names (YAML sequence or comma-separated string)";
    fn parse_item(s: &str) -> Result<Self, String> {
        Ok(s.to_owned())
    }
}

impl ListItem for Cidr {
    const WHAT: &'static str =
        "a list of networks such as 10.0.0.0/8 or ::1 (YAML sequence or comma-separated string)";
    fn parse_item(s: &str) -> Result<Self, String> {
        s.parse::<Cidr>()
            .map_err(|e| format!("`{}`: {e}", truncate(s, 64)))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: ListItem> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::WHAT)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
        split_list(v)
            .map(|item| T::parse_item(item).map_err(E::custom))
            .collect()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            out.push(item);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Unix file modes.

/// Deserializes a file mode whose digits are octal, as in PgBouncer (`0777`, `777`, `0o777`).
///
/// Asks for the scalar's text rather than a number: YAML 1.2 reads `0777` as decimal 777,
/// and only the text tells `0o777` apart from `511`.
pub fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_str(OctalVisitor)
}

/// Largest accepted mode: permission bits only (no setuid/setgid/sticky on a socket).
pub const MAX_MODE: u32 = 0o777;

/// Parses an octal mode string; the digits are octal with or without a `0`/`0o` prefix.
pub fn parse_octal_mode(s: &str) -> Option<u32> {
    let digits = s
        .strip_prefix("0o")
        .or_else(|| s.strip_prefix("0O"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 11 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= MAX_MODE)
}

struct OctalVisitor;

impl<'de> Visitor<'de> for OctalVisitor {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an octal file mode from 0 to 0777, such as 0660")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        parse_octal_mode(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
    }

    // Non-YAML deserializers may hand over a number: read its decimal digits as octal,
    // as PgBouncer does with `unix_socket_mode = 777`.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        parse_octal_mode(&v.to_string())
            .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
    }
}

// ---------------------------------------------------------------------------------------
// Optional strings.

/// Deserializes an optional string where null, absent and `""` all mean "not set",
/// as an empty value does in PgBouncer's ini file.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{
        BoolDeserializer, Error as ValueError, F64Deserializer, I64Deserializer, StrDeserializer,
        U64Deserializer,
    };
    use serde::de::IntoDeserializer;

    #[test]
    fn seconds_accepts_integers_and_floats() {
        let d: U64Deserializer<ValueError> = 5u64.into_deserializer();
        assert_eq!(seconds(d).unwrap(), Duration::from_secs(5));
        let d: F64Deserializer<ValueError> = 0.25f64.into_deserializer();
        assert_eq!(seconds(d).unwrap(), Duration::from_millis(250));
        let d: I64Deserializer<ValueError> = 7i64.into_deserializer();
        assert_eq!(seconds(d).unwrap(), Duration::from_secs(7));
    }

    #[test]
    fn seconds_rejects_negative_non_finite_and_huge() {
        let cases: &[f64] = &[
            -1.0,
            -0.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
        ];
        for &v in cases {
            let d: F64Deserializer<ValueError> = v.into_deserializer();
            assert!(seconds(d).is_err(), "{v} accepted");
        }
        let d: I64Deserializer<ValueError> = (-3i64).into_deserializer();
        assert!(seconds(d).is_err());
        let d: U64Deserializer<ValueError> = (MAX_DURATION_SECS + 1).into_deserializer();
        assert!(seconds(d).is_err());
        let d: StrDeserializer<ValueError> = "5".into_deserializer();
        assert!(
            seconds(d).is_err(),
            "quoted numbers are strings, not durations"
        );
    }

    #[test]
    fn int_checks_range_and_names_it() {
        let d: U64Deserializer<ValueError> = 70000u64.into_deserializer();
        let err = int::<_, u16>(d).unwrap_err().to_string();
        assert!(err.contains("from 0 to 65535"), "{err}");
        let d: I64Deserializer<ValueError> = (-1i64).into_deserializer();
        assert!(int::<_, u32>(d).is_err());
        let d: F64Deserializer<ValueError> = 12.0f64.into_deserializer();
        assert_eq!(int::<_, u32>(d).unwrap(), 12);
        let d: F64Deserializer<ValueError> = 12.5f64.into_deserializer();
        assert!(int::<_, u32>(d).is_err());
        let d: F64Deserializer<ValueError> = f64::NAN.into_deserializer();
        assert!(int::<_, u64>(d).is_err());
    }

    #[test]
    fn flag_accepts_pgbouncer_spellings() {
        for (s, want) in [
            ("1", true),
            ("On", true),
            ("yes", true),
            ("0", false),
            ("off", false),
            ("FALSE", false),
        ] {
            let d: StrDeserializer<ValueError> = s.into_deserializer();
            assert_eq!(flag(d).unwrap(), want, "{s}");
        }
        let d: StrDeserializer<ValueError> = "maybe".into_deserializer();
        assert!(flag(d).is_err());
        let d: U64Deserializer<ValueError> = 2u64.into_deserializer();
        assert!(flag(d).is_err());
        let d: BoolDeserializer<ValueError> = true.into_deserializer();
        assert!(flag(d).unwrap());
    }

    #[test]
    fn octal_modes() {
        let cases: &[(&str, Option<u32>)] = &[
            ("0777", Some(0o777)),
            ("777", Some(0o777)),
            ("0o660", Some(0o660)),
            ("0O600", Some(0o600)),
            ("0", Some(0)),
            ("0800", None),
            ("1777", None),
            ("", None),
            ("0o", None),
            ("-1", None),
            ("77777777777777777777", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_octal_mode(s), *want, "{s}");
        }
        let d: U64Deserializer<ValueError> = 660u64.into_deserializer();
        assert_eq!(octal_mode(d).unwrap(), 0o660);
        let d: U64Deserializer<ValueError> = 800u64.into_deserializer();
        assert!(octal_mode(d).is_err(), "8 is not an octal digit");
    }

    #[test]
    fn comma_lists() {
        assert_eq!(
            split_list(" a, b ,,c ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(split_list("").count(), 0);
    }
}
