//! Admin console commands: parsing a simple Query's text the way PgBouncer does.
//!
//! One command word and at most one argument, an optional `;`, case-insensitive words;
//! `SET key = value` with a bare word or a single-quoted string. Anything else is refused
//! whole with PgBouncer's "invalid command" error.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Show(String),
    Set {
        key: String,
        value: String,
    },
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Kill(Option<String>),
    KillClient(String),
    Shutdown,
    /// `SHUTDOWN WAIT_FOR_SERVERS`: stop accepting, exit once every server is released.
    ShutdownWaitForServers,
    /// `SHUTDOWN WAIT_FOR_CLIENTS`: stop accepting, exit once every client has left.
    ShutdownWaitForClients,
    Suspend,
    Disable(String),
    Enable(String),
    Reconnect(Option<String>),
    WaitClose(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// PgBouncer: `invalid command '<query>', use SHOW HELP;`
    Invalid,
    /// PgBouncer: `bad arguments`
    BadArguments,
}

/// Splits off one token: a bare word (`[0-9a-z_]`, any case), a double-quoted word
/// (`""` is a quote), or a single-quoted string (`''` is a quote, only when `strings`).
fn token(s: &str, strings: bool) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    match chars.next()? {
        (_, q @ ('"' | '\'')) if q == '"' || strings => {
            let mut out = String::new();
            let b = s.as_bytes();
            let mut i = 1;
            while i < b.len() {
                if b[i] == q as u8 {
                    if b.get(i + 1) == Some(&(q as u8)) {
                        out.push(q);
                        i += 2;
                        continue;
                    }
                    return Some((out, &s[i + 1..]));
                }
                let ch = s[i..].chars().next()?;
                out.push(ch);
                i += ch.len_utf8();
            }
            None
        }
        (_, c) if c.is_ascii_alphanumeric() || c == '_' => {
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            Some((s[..end].to_string(), &s[end..]))
        }
        _ => None,
    }
}

fn ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\n', '\r'])
}

/// Whatever follows the last token: optional whitespace, one `;`, whitespace.
fn at_end(s: &str) -> bool {
    let s = ws(s);
    let s = s.strip_prefix(';').unwrap_or(s);
    ws(s).is_empty()
}

pub fn parse(query: &str) -> Result<Cmd, ParseError> {
    let s = ws(query);
    let (word, rest) = token(s, false).ok_or(ParseError::Invalid)?;
    let word = word.to_ascii_lowercase();
    if word == "set" {
        return parse_set(rest);
    }
    if word.len() >= 16 {
        return Err(ParseError::BadArguments);
    }
    let rest_ws = ws(rest);
    let (arg, rest) = if rest_ws.len() < rest.len() {
        match token(rest_ws, false) {
            Some((a, r)) => (Some(a), r),
            None => (None, rest_ws),
        }
    } else {
        (None, rest)
    };
    if !at_end(rest) {
        return Err(ParseError::Invalid);
    }
    if arg.as_ref().is_some_and(|a| a.len() >= 64) {
        return Err(ParseError::BadArguments);
    }
    let need = |a: Option<String>| a.ok_or(ParseError::Invalid);
    Ok(match word.as_str() {
        "show" | "select" => Cmd::Show(need(arg)?.to_ascii_lowercase()),
        "reload" if arg.is_none() => Cmd::Reload,
        "pause" => Cmd::Pause(arg),
        "resume" => Cmd::Resume(arg),
        "kill" => Cmd::Kill(arg),
        "kill_client" => Cmd::KillClient(arg.unwrap_or_default()),
        "shutdown" => match arg.map(|a| a.to_ascii_lowercase()).as_deref() {
            None => Cmd::Shutdown,
            Some("wait_for_servers") => Cmd::ShutdownWaitForServers,
            Some("wait_for_clients") => Cmd::ShutdownWaitForClients,
            Some(_) => return Err(ParseError::Invalid),
        },
        "suspend" if arg.is_none() => Cmd::Suspend,
        "disable" => Cmd::Disable(arg.unwrap_or_default()),
        "enable" => Cmd::Enable(arg.unwrap_or_default()),
        "reconnect" => Cmd::Reconnect(arg),
        "wait_close" => Cmd::WaitClose(arg),
        _ => return Err(ParseError::Invalid),
    })
}

fn parse_set(rest: &str) -> Result<Cmd, ParseError> {
    let r = ws(rest);
    if r.len() == rest.len() {
        return Err(ParseError::Invalid);
    }
    let (key, r) = token(r, false).ok_or(ParseError::Invalid)?;
    let r = ws(r);
    let r = if let Some(r) = r.strip_prefix('=') {
        r
    } else if r.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("to")) {
        &r[2..]
    } else {
        return Err(ParseError::Invalid);
    };
    let (value, r) = token(ws(r), true).ok_or(ParseError::Invalid)?;
    if !at_end(r) {
        return Err(ParseError::Invalid);
    }
    if key.is_empty() || key.len() >= 64 || value.len() >= 256 {
        return Err(ParseError::BadArguments);
    }
    Ok(Cmd::Set { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_pgbouncer() {
        let ok = [
            ("SHOW POOLS", Cmd::Show("pools".into())),
            ("  show pools ;\n", Cmd::Show("pools".into())),
            ("select stats;", Cmd::Show("stats".into())),
            ("RELOAD", Cmd::Reload),
            ("pause", Cmd::Pause(None)),
            ("PAUSE app", Cmd::Pause(Some("app".into()))),
            ("resume \"My Db\"", Cmd::Resume(Some("My Db".into()))),
            ("KILL app;", Cmd::Kill(Some("app".into()))),
            ("kill_client 42", Cmd::KillClient("42".into())),
            ("SHUTDOWN", Cmd::Shutdown),
            ("SHUTDOWN WAIT_FOR_SERVERS", Cmd::ShutdownWaitForServers),
            ("shutdown wait_for_clients;", Cmd::ShutdownWaitForClients),
            (
                "set log_connections = 0",
                Cmd::Set {
                    key: "log_connections".into(),
                    value: "0".into(),
                },
            ),
            (
                "SET query_timeout TO '1.5';",
                Cmd::Set {
                    key: "query_timeout".into(),
                    value: "1.5".into(),
                },
            ),
            (
                "set server_reset_query = 'it''s'",
                Cmd::Set {
                    key: "server_reset_query".into(),
                    value: "it's".into(),
                },
            ),
        ];
        for (q, want) in ok {
            assert_eq!(parse(q), Ok(want), "{q}");
        }
    }

    #[test]
    fn everything_else_is_refused_whole() {
        for q in [
            "",
            ";",
            "SHOW",
            "SHOW POOLS;;",
            "SHOW POOLS; SHOW STATS",
            "SHOW POOLS x",
            "SELECT 1+1",
            "-- comment",
            "RELOAD now",
            "SHUTDOWN x",
            "SHUTDOWN WAIT_FOR_CLIENTS x",
            "frobnicate",
            "SET x",
            "SET x = 0.5",
            "SET = 1",
            "show 'pools'",
        ] {
            assert_eq!(parse(q), Err(ParseError::Invalid), "{q:?}");
        }
        assert_eq!(
            parse(&format!("pause {}", "a".repeat(70))),
            Err(ParseError::BadArguments)
        );
        assert_eq!(
            parse(&format!("{} x", "a".repeat(20))),
            Err(ParseError::BadArguments)
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(q in "\\PC{0,80}") {
            let _ = parse(&q);
        }
    }
}
