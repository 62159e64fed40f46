//! Fuzz target: stored-secret parsers (SCRAM, md5, their classification) never panic and round-trip exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::auth::scram::{MAX_SALT_LEN, MAX_SECRET_LEN};
use pgbouncers_worker::auth::{md5_secret_string, parse_md5_secret, ScramSecret, Secret};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ScramSecret::parse(text) {
        Ok(secret) => {
            assert!(text.len() <= MAX_SECRET_LEN);
            assert!(secret.iterations >= 1);
            assert!(!secret.salt.is_empty() && secret.salt.len() <= MAX_SALT_LEN);
            let again = secret.encode();
            assert_eq!(ScramSecret::parse(&again).as_ref(), Ok(&secret));
            // Base64 is read canonically, so only leading zeros of the count can differ.
            let count = &text["SCRAM-SHA-256$".len()..text.find(':').unwrap()];
            if !count.starts_with('0') {
                assert_eq!(again, text, "a different text parses to the same secret");
            }
            let keys = &again[again.rfind('$').unwrap() + 1..];
            assert!(
                !format!("{secret:?}").contains(keys),
                "Debug shows the keys"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Some(hash) = parse_md5_secret(text) {
        assert_eq!(md5_secret_string(&hash), text);
    }
    let secret = Secret::classify(text);
    match &secret {
        Secret::Plain(p) => {
            assert_eq!(p, text);
            assert!(parse_md5_secret(text).is_none() && ScramSecret::parse(text).is_err());
        }
        Secret::Md5(h) => assert_eq!(md5_secret_string(h), text),
        Secret::Scram(s) => assert_eq!(ScramSecret::parse(text).as_ref(), Ok(s)),
    }
    let shown = format!("{secret:?}");
    match secret {
        Secret::Plain(_) => assert_eq!(shown, "Plain(<redacted>)"),
        Secret::Md5(_) => assert_eq!(shown, "Md5(<redacted>)"),
        Secret::Scram(_) => assert!(!shown.contains(&text[text.rfind('$').unwrap() + 1..])),
    }
});
