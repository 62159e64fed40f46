//! Fuzz target: the admin console grammar never panics, respects its length limits, and what it parses writes back to a command that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::admin::parse::{parse, Cmd};

fn dq(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn word(w: &str, arg: &Option<String>) -> String {
    match arg {
        Some(a) => format!("{w} {}", dq(a)),
        None => w.to_owned(),
    }
}

/// The command in the console's syntax, every argument quoted.
fn render(cmd: &Cmd) -> String {
    match cmd {
        Cmd::Show(what) => format!("SHOW {}", dq(what)),
        Cmd::Set { key, value } => format!("SET {} = {};", dq(key), sq(value)),
        Cmd::Reload => "RELOAD".into(),
        Cmd::Pause(a) => word("PAUSE", a),
        Cmd::Resume(a) => word("resume", a),
        Cmd::Kill(a) => word("Kill", a),
        Cmd::KillClient(a) => format!("KILL_CLIENT {}", dq(a)),
        Cmd::Shutdown => "SHUTDOWN".into(),
        Cmd::Suspend => "suspend ;".into(),
        Cmd::Disable(a) => format!("DISABLE {}", dq(a)),
        Cmd::Enable(a) => format!("ENABLE {}", dq(a)),
        Cmd::Reconnect(a) => word("RECONNECT", a),
        Cmd::WaitClose(a) => word("WAIT_CLOSE", a),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cmd) = parse(query) else {
        return;
    };
    match &cmd {
        Cmd::Set { key, value } => assert!(!key.is_empty() && key.len() < 64 && value.len() < 256),
        Cmd::Show(what) => {
            assert!(what.len() < 64);
            assert_eq!(*what, what.to_ascii_lowercase());
        }
        Cmd::Pause(Some(a)) | Cmd::Resume(Some(a)) | Cmd::Kill(Some(a)) => assert!(a.len() < 64),
        Cmd::KillClient(a) | Cmd::Disable(a) | Cmd::Enable(a) => assert!(a.len() < 64),
        Cmd::Reconnect(Some(a)) | Cmd::WaitClose(Some(a)) => assert!(a.len() < 64),
        _ => {}
    }
    let text = render(&cmd);
    assert_eq!(parse(&text), Ok(cmd.clone()), "{text:?}");
    assert_eq!(
        parse(&format!(" \n\t{query}")),
        Ok(cmd),
        "leading blanks matter"
    );
});
