//! Fuzz target: the startup `options` parser never panics and round-trips, and parameter lists stay sorted and findable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::params::{self, parse_options, Params};

/// Backslash-escapes what the parser splits on, as libpq users must.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c == '\\' || c.is_ascii_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(options) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(items) = parse_options(options) else {
        return;
    };
    let mut text = String::new();
    for (k, v) in &items {
        assert!(!k.contains('-') && !k.contains('='));
        text.push_str(&format!("-c {}={} ", escape(k), escape(v)));
    }
    assert_eq!(parse_options(&text).as_ref(), Ok(&items), "{text:?}");

    // The pooler keeps settable ones in a Params list.
    let mut list = Params::new();
    for (k, v) in &items {
        if params::is_settable_name(k) {
            list.set(k, v);
            assert_eq!(list.get(k), Some(v.as_str()));
            if let Some(canon) = params::tracked_name(k) {
                assert_eq!(list.get(canon), Some(v.as_str()));
            }
        }
    }
    let names: Vec<String> = list.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "unsorted or duplicate: {names:?}"
    );
    let mut sql = String::new();
    let changed = params::sync_statements(&list, &Params::new(), &mut sql);
    assert_eq!(changed, !list.is_empty());
    let mut server = Params::new();
    params::apply_extras(&list, &mut server);
    for (k, v) in list.iter() {
        if params::tracked_name(k).is_none() {
            assert_eq!(server.get(k), Some(v));
        }
    }
});
