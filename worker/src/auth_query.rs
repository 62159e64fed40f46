//! auth_query lookups: the request as sent, the answer as read, and each worker's short cache.
//!
//! Sans-IO: the worker runs the request on a server of the `auth_user` pool and feeds the
//! answer's messages here. PgBouncer's rules where it has them (two columns, a NULL user
//! name is an error, a NULL password matches nothing); a third column, which PgBouncer
//! refuses, is read as `rolvaliduntil`.

use crate::auth::Secret;
use crate::config::{AuthSource, Config};
use crate::wire::write::message;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where passwords of users missing from `auth_file` are looked up for clients of
/// database `db`: the database's own `auth_user`/`auth_query`/`auth_dbname`, else the
/// global ones (PgBouncer's order). `None` when neither names an `auth_user`.
pub fn source(cfg: &Config, db: &str) -> Option<AuthSource> {
    let entry = cfg.database_entry(db)?;
    let user = entry.auth_user.as_ref().or(cfg.auth_user.as_ref())?;
    let query = entry.auth_query.as_ref().unwrap_or(&cfg.auth_query);
    let dbname = entry.auth_dbname.as_ref().or(cfg.auth_dbname.as_ref());
    Some(AuthSource {
        user: user.clone(),
        query: query.clone(),
        dbname: dbname.map_or_else(|| db.to_owned(), String::clone),
    })
}

/// What a lookup that worked found for one user.
#[derive(Clone)]
pub struct Found {
    /// `None`: no such user, or a NULL password; the login then fails as a wrong
    /// password does, after the same (mock) exchange.
    pub secret: Option<Secret>,
    /// `rolvaliduntil`, microseconds since the Unix epoch; `None` = no expiry.
    pub valid_until: Option<i64>,
}

impl Found {
    /// The secret, unless there is none or it expired by `now`.
    pub fn usable(&self, now: SystemTime) -> Option<&Secret> {
        let expired = self
            .valid_until
            .is_some_and(|until| unix_micros(now) >= until);
        self.secret.as_ref().filter(|_| !expired)
    }
}

fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_micros().min(i64::MAX as u128) as i64),
    }
}

/// Appends the extended-protocol messages that run `query` with `user` as its only text
/// parameter: Parse, Bind, Describe (portal), Execute, Sync. The name travels as a
/// parameter value, never inside the SQL.
pub fn write_request(out: &mut Vec<u8>, query: &str, user: &str) {
    message(out, b'P', |b| {
        b.push(0); // unnamed statement
        b.extend_from_slice(query.as_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_be_bytes()); // parameter types left to the server
    });
    message(out, b'B', |b| {
        b.extend_from_slice(&[0, 0]); // unnamed portal, unnamed statement
        b.extend_from_slice(&0u16.to_be_bytes()); // parameters in text
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&(user.len() as u32).to_be_bytes());
        b.extend_from_slice(user.as_bytes());
        b.extend_from_slice(&0u16.to_be_bytes()); // results in text
    });
    message(out, b'D', |b| b.extend_from_slice(b"P\0"));
    message(out, b'E', |b| {
        b.push(0);
        b.extend_from_slice(&0u32.to_be_bytes());
    });
    message(out, b'S', |_| {});
}

/// The answer to [`write_request`], read message by message up to its ReadyForQuery.
#[derive(Default)]
pub struct Answer {
    /// The first problem: a server error, or an answer of the wrong shape.
    problem: Option<String>,
    /// The first row's password and valid-until columns (`None` = SQL NULL).
    row: Option<(Option<String>, Option<String>)>,
}

impl Answer {
    /// One message of the answer (ReadyForQuery included, which ends it).
    pub fn on_message(&mut self, tag: u8, body: &[u8]) {
        let problem = match tag {
            b'T' => columns(body)
                .filter(|n| !(2..=3).contains(n))
                .map(|n| format!("expected 2 columns from auth_query, not {n}")),
            b'D' if self.row.is_none() => match data_row(body) {
                Ok(row) => {
                    self.row = Some(row);
                    None
                }
                Err(why) => Some(why),
            },
            b'n' => Some("auth_query returns no rows".to_owned()),
            b'E' => Some(format!(
                "error response from auth_query: {}",
                crate::wire::fields::ErrorFields::parse(body)
            )),
            // ParseComplete, BindComplete, further rows, CommandComplete, notices,
            // parameter reports, ReadyForQuery.
            _ => None,
        };
        if self.problem.is_none() {
            self.problem = problem;
        }
    }

    /// What the lookup found; `Err` (with why) when it failed, which is never cached.
    pub fn finish(self) -> Result<Found, String> {
        if let Some(p) = self.problem {
            return Err(p);
        }
        let Some((password, valid_until)) = self.row else {
            return Ok(Found {
                secret: None,
                valid_until: None,
            });
        };
        let valid_until = match valid_until {
            None => None,
            Some(text) => parse_valid_until(&text)?,
        };
        Ok(Found {
            // PostgreSQL's own rule for what a stored password is (md5, SCRAM or plain).
            secret: password
                .filter(|p| !p.is_empty())
                .map(|p| Secret::classify(&p)),
            valid_until,
        })
    }
}

fn columns(body: &[u8]) -> Option<u16> {
    body.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

/// A DataRow's password and valid-until columns; the user name must not be NULL.
fn data_row(body: &[u8]) -> Result<(Option<String>, Option<String>), String> {
    let bad = || "bad DataRow from auth_query".to_owned();
    let n = columns(body).ok_or_else(bad)?;
    if !(2..=3).contains(&n) {
        return Err(format!("expected 2 columns from auth_query, not {n}"));
    }
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(3);
    for _ in 0..n {
        let len = rest
            .first_chunk::<4>()
            .map(|b| i32::from_be_bytes(*b))
            .ok_or_else(bad)?;
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = len as usize;
        let v = rest.get(..len).ok_or_else(bad)?;
        values.push(Some(String::from_utf8_lossy(v).into_owned()));
        rest = &rest[len..];
    }
    if values[0].is_none() {
        return Err("auth_query response contained null user name".to_owned());
    }
    let valid_until = values.get(2).cloned().flatten();
    Ok((values[1].take(), valid_until))
}

/// `rolvaliduntil` as PostgreSQL prints a timestamp with DateStyle ISO (`2030-01-02
/// 03:04:05.678+01`, `T` also taken, no zone read as UTC, a date alone as its midnight),
/// or `infinity` / `-infinity`. `None` = no expiry.
pub fn parse_valid_until(text: &str) -> Result<Option<i64>, String> {
    let t = text.trim();
    match t {
        "infinity" => return Ok(None),
        "-infinity" => return Ok(Some(i64::MIN)),
        _ => {}
    }
    // The value is not quoted: a query with its columns in another order could put a
    // secret there.
    parse_iso(t).map(Some).ok_or_else(|| {
        "cannot read the third auth_query column as a valid-until time (PostgreSQL's ISO \
         format, or infinity)"
            .to_owned()
    })
}

fn parse_iso(t: &str) -> Option<i64> {
    let (t, bc) = match t.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (t, false),
    };
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, time) = match t.find([' ', 'T']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut d = date.splitn(3, '-');
    let year = num(d.next()?)?;
    let month = num(d.next()?)?;
    let day = num(d.next()?)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    let mut micros = days_from_civil(year, month, day) * 86_400_000_000;
    if let Some(time) = time {
        // The zone starts at the first sign after the clock.
        let (clock, zone) = match time.find(['+', '-']) {
            Some(i) => (&time[..i], Some(&time[i..])),
            None => (time.strip_suffix('Z').unwrap_or(time), None),
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (clock, None),
        };
        let mut parts = hms.split(':');
        let h = num(parts.next()?)?;
        let m = num(parts.next()?)?;
        let s = num(parts.next()?)?;
        if parts.next().is_some() || h > 24 || m > 59 || s > 60 {
            return None;
        }
        micros += ((h * 60 + m) * 60 + s) * 1_000_000;
        if let Some(f) = frac {
            num(f)?;
            let digits: String = f.chars().chain("000000".chars()).take(6).collect();
            micros += num(&digits)?;
        }
        if let Some(z) = zone {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let mut zp = z[1..].split(':');
            let zh = num(zp.next()?)?;
            let zm = zp.next().map(num).unwrap_or(Some(0))?;
            let zs = zp.next().map(num).unwrap_or(Some(0))?;
            if zp.next().is_some() || zh > 15 || zm > 59 || zs > 59 {
                return None;
            }
            // Local time = UTC + offset.
            micros -= sign * ((zh * 60 + zm) * 60 + zs) * 1_000_000;
        }
    }
    Some(micros)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Cache key: the lookup (auth database, auth_user and query) and the user looked up.
pub type Key = (String, String);

/// The key for `user` looked up through `source`.
pub fn key(source: &AuthSource, user: &str) -> Key {
    (
        format!("{}\0{}\0{}", source.dbname, source.user, source.query),
        user.to_owned(),
    )
}

/// Answers of lookups that worked, each kept for `auth_query_cache_ttl` in one worker.
#[derive(Default)]
pub struct Cache {
    map: HashMap<Key, (Instant, Found)>,
}

/// Entries beyond which stale ones are swept at the next insert.
const SWEEP_ABOVE: usize = 1024;
/// Most entries kept: a flood of made-up names (each one a lookup anyway) cannot grow the
/// cache without bound; beyond this new answers are used once and not kept.
const MAX_ENTRIES: usize = 65_536;

impl Cache {
    /// A fresh answer for `key`, if one was stored less than `ttl` ago.
    pub fn get(&self, key: &Key, now: Instant, ttl: Duration) -> Option<&Found> {
        self.map
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < ttl)
            .map(|(_, f)| f)
    }

    pub fn put(&mut self, key: Key, now: Instant, ttl: Duration, found: Found) {
        if ttl.is_zero() {
            return;
        }
        if self.map.len() >= SWEEP_ABOVE {
            self.map
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        }
        if self.map.len() < MAX_ENTRIES || self.map.contains_key(&key) {
            self.map.insert(key, (now, found));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    fn answer(msgs: &[(u8, Vec<u8>)]) -> Result<Found, String> {
        let mut a = Answer::default();
        for (tag, body) in msgs {
            a.on_message(*tag, body);
        }
        a.finish()
    }

    #[test]
    fn iso_timestamps_as_postgresql_prints_them() {
        let day = 86_400_000_000i64;
        assert_eq!(parse_valid_until("1970-01-01 00:00:00+00"), Ok(Some(0)));
        assert_eq!(parse_valid_until("1970-01-02"), Ok(Some(day)));
        assert_eq!(parse_valid_until("1970-01-01 01:00:00+01"), Ok(Some(0)));
        assert_eq!(
            parse_valid_until("1970-01-01 00:00:00-05:30"),
            Ok(Some(19_800_000_000))
        );
        assert_eq!(
            parse_valid_until("1970-01-01T00:00:01.5Z"),
            Ok(Some(1_500_000))
        );
        assert_eq!(parse_valid_until("1970-01-01 00:00:00.000001"), Ok(Some(1)));
        assert_eq!(
            parse_valid_until("2000-03-01 00:00:00+00"),
            Ok(Some(11_017 * day))
        );
        assert_eq!(parse_valid_until("1969-12-31 00:00:00+00"), Ok(Some(-day)));
        assert_eq!(parse_valid_until("infinity"), Ok(None));
        assert_eq!(parse_valid_until("-infinity"), Ok(Some(i64::MIN)));
        assert!(
            parse_valid_until("0044-03-15 00:00:00+00 BC")
                .unwrap()
                .unwrap()
                < 0
        );
        for bad in [
            "",
            "tomorrow",
            "Tue Jan 02 03:04:05 2024 PST",
            "2024-13-01",
            "2024-01-01 25:00:00",
            "2024-01-01 10:00",
            "2024-01-01 10:00:00+ab",
            "01/02/2024",
        ] {
            assert!(parse_valid_until(bad).is_err(), "{bad:?}");
        }
        // What could not be read is not repeated (it could be a secret, misplaced).
        let e = parse_valid_until("md5hiddenhiddenhidden").unwrap_err();
        assert!(!e.contains("hidden"), "{e}");
    }

    #[test]
    fn expiry_is_judged_at_use() {
        let f = Found {
            secret: Some(Secret::classify("pw")),
            valid_until: Some(1_000_000),
        };
        assert!(f.usable(UNIX_EPOCH).is_some());
        assert!(f.usable(UNIX_EPOCH + Duration::from_secs(1)).is_none());
        let forever = Found {
            valid_until: None,
            ..f.clone()
        };
        assert!(forever.usable(SystemTime::now()).is_some());
    }

    #[test]
    fn answers_are_read_as_pgbouncer_reads_them() {
        let two = (2u16.to_be_bytes().to_vec(), 3u16.to_be_bytes().to_vec());
        let found = answer(&[
            (b'1', vec![]),
            (b'2', vec![]),
            (b'T', two.0.clone()),
            (
                b'D',
                row(&[Some("u"), Some("md5f0c0a5d7c8d3b4f5e6a7b8c9d0e1f2a3")]),
            ),
            (b'C', b"SELECT 1\0".to_vec()),
            (b'Z', b"I".to_vec()),
        ])
        .expect("md5");
        assert!(matches!(found.secret, Some(Secret::Md5(_))));
        let scram = crate::auth::ScramSecret::from_password("pw", b"salt", 4096).encode();
        let found = answer(&[
            (b'T', two.1.clone()),
            (b'D', row(&[Some("u"), Some(&scram), None])),
        ])
        .expect("scram");
        assert!(matches!(found.secret, Some(Secret::Scram(_))));
        assert_eq!(found.valid_until, None);
        // No row and a NULL password both mean: nothing will match.
        assert!(answer(&[(b'T', two.0.clone())])
            .expect("no row")
            .secret
            .is_none());
        let null = answer(&[(b'D', row(&[Some("u"), None]))]).expect("null password");
        assert!(null.secret.is_none());
        // A valid-until column is read; an unreadable one fails the lookup.
        let until = answer(&[(
            b'D',
            row(&[Some("u"), Some("pw"), Some("1970-01-01 00:00:01+00")]),
        )])
        .expect("valid until");
        assert_eq!(until.valid_until, Some(1_000_000));
        assert!(answer(&[(b'D', row(&[Some("u"), Some("pw"), Some("soon")]))]).is_err());
        // Failures: a server error, the wrong shape, a NULL user name.
        let e = answer(&[(
            b'E',
            b"SERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0".to_vec(),
        )])
        .err()
        .expect("error");
        assert!(e.contains("relation \"nope\" does not exist"), "{e}");
        let e = answer(&[(b'T', 1u16.to_be_bytes().to_vec())])
            .err()
            .expect("one column");
        assert_eq!(e, "expected 2 columns from auth_query, not 1");
        assert!(answer(&[(b'D', row(&[None, Some("pw")]))]).is_err());
        assert!(answer(&[(b'n', vec![])]).is_err());
        assert!(answer(&[(b'D', vec![0, 2, 0, 0])]).is_err());
    }

    #[test]
    fn the_request_carries_the_name_as_a_parameter() {
        let mut out = Vec::new();
        write_request(&mut out, "SELECT $1", "o'brien");
        let mut tags = Vec::new();
        let mut rest = &out[..];
        while let Some((tag, len)) = rest.first().zip(rest.get(1..5)) {
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            tags.push(*tag);
            rest = &rest[1 + len..];
        }
        assert_eq!(tags, b"PBDES");
        // The query text is sent as written; the name only inside Bind.
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("o'brien").count(), 1);
        assert!(text.contains("SELECT $1\0"));
    }

    #[test]
    fn a_database_s_own_auth_settings_win_over_the_global_ones() {
        let c = Config::from_yaml_str(
            "auth_user: lookup\nauth_dbname: authdb\nauth_file: /x\ndatabases:\n  app: {}\n  \
             own: {auth_user: mine, auth_query: 'SELECT 1, 2', auth_dbname: app}\n",
        )
        .expect("config");
        let app = source(&c, "app").expect("global");
        assert_eq!(
            (app.user.as_str(), app.dbname.as_str()),
            ("lookup", "authdb")
        );
        assert_eq!(app.query, crate::config::DEFAULT_AUTH_QUERY);
        let own = source(&c, "own").expect("own");
        assert_eq!(
            (own.user.as_str(), own.dbname.as_str(), own.query.as_str()),
            ("mine", "app", "SELECT 1, 2")
        );
        assert_ne!(key(&app, "u"), key(&own, "u"));
        assert_eq!(source(&c, "nosuchdb"), None);
        assert_eq!(source(&c, "pgbouncer"), None);
        let none = Config::from_yaml_str("auth_file: /x\ndatabases:\n  app: {}\n").expect("config");
        assert_eq!(source(&none, "app"), None);
        // Without auth_dbname, the client's own database runs the query.
        let own_db =
            Config::from_yaml_str("auth_user: l\ndatabases:\n  '*': {}\n").expect("config");
        assert_eq!(source(&own_db, "any").expect("via *").dbname, "any");
    }

    #[test]
    fn the_cache_keeps_answers_for_the_ttl_only() {
        let mut c = Cache::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(5);
        let k: Key = ("src".into(), "u".into());
        let f = Found {
            secret: None,
            valid_until: None,
        };
        c.put(k.clone(), now, ttl, f.clone());
        assert!(c.get(&k, now + Duration::from_secs(4), ttl).is_some());
        assert!(c.get(&k, now + ttl, ttl).is_none());
        let other: Key = ("other".into(), "u".into());
        assert!(c.get(&other, now, ttl).is_none());
        let mut off = Cache::default();
        off.put(k.clone(), now, Duration::ZERO, f);
        assert!(off.get(&k, now, Duration::from_secs(5)).is_none());
    }
}
