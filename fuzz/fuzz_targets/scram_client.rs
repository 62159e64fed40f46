//! Fuzz target: the SCRAM client side (the pooler logging into PostgreSQL) never panics, sends proofs that check out, and accepts only the right server signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_fuzz::{b64, fields, hmac, scram_keys, sha256, unb64, xor};
use pgbouncers_worker::auth::scram::MAX_CLIENT_ITERATIONS;
use pgbouncers_worker::auth::{Nonce, ScramClient, ScramError};

const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
/// Password mode runs PBKDF2 with the server's count; keep runs fast.
const CHEAP_ITERATIONS: u32 = 64;

/// The keys the client should end up with.
enum Creds {
    Password(String),
    Keys([u8; 32], [u8; 32]),
}

fuzz_target!(|data: &[u8]| {
    // mode, credential (password, or base64 of ClientKey||ServerKey), client nonce,
    // server-first, server-final.
    let [mode, cred, nonce, first, last] = fields::<5>(data);
    let nonce = std::str::from_utf8(nonce)
        .ok()
        .and_then(|n| Nonce::new(n).ok())
        .unwrap_or_else(|| Nonce::new(RFC_CLIENT_NONCE).unwrap());
    let keys = || {
        let raw = std::str::from_utf8(cred)
            .ok()
            .and_then(unb64)
            .unwrap_or_default();
        match <[u8; 64]>::try_from(raw.as_slice()) {
            Ok(k) => Creds::Keys(k[..32].try_into().unwrap(), k[32..].try_into().unwrap()),
            Err(_) => Creds::Keys([1; 32], [2; 32]),
        }
    };
    let creds = if mode.first().is_some_and(|m| m & 1 == 1) {
        keys()
    } else {
        match iterations_asked(first) {
            Some(n) if n > CHEAP_ITERATIONS && n <= MAX_CLIENT_ITERATIONS => keys(),
            _ => Creds::Password(String::from_utf8_lossy(cred).into_owned()),
        }
    };
    let new_client = || match &creds {
        Creds::Password(p) => ScramClient::with_password(p, nonce.clone()),
        Creds::Keys(c, s) => ScramClient::with_keys(*c, *s, nonce.clone()),
    };
    let mut client = new_client();
    let client_first = client.client_first();
    assert_eq!(
        client_first,
        format!("n,,n=,r={}", nonce.as_str()).as_bytes()
    );
    let reply = match client.handle_server_first(first) {
        Ok(reply) => reply,
        Err(e) => {
            let _ = e.to_string();
            if let (ScramError::IterationsTooHigh(n), Creds::Password(_)) = (&e, &creds) {
                assert!(*n > MAX_CLIENT_ITERATIONS);
            }
            assert_eq!(client.handle_server_final(last), Err(e));
            return;
        }
    };
    assert_eq!(
        client.handle_server_first(first),
        Err(ScramError::OutOfOrder)
    );

    // Recompute the proof the client must have sent.
    let first = std::str::from_utf8(first).expect("accepted server-first is text");
    let mut attrs = first.split(',');
    let combined = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .expect("r= first");
    assert!(combined.starts_with(nonce.as_str()) && combined.len() > nonce.as_str().len());
    let salt = attrs
        .next()
        .and_then(|a| a.strip_prefix("s="))
        .and_then(unb64)
        .expect("s=");
    let iterations: u32 = attrs
        .next()
        .and_then(|a| a.strip_prefix("i="))
        .unwrap()
        .parse()
        .unwrap();
    let (client_key, server_key) = match &creds {
        // SASLprep leaves printable ASCII alone; other passwords are checked by the
        // round trip in the scram_server target.
        Creds::Password(p) if p.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            scram_keys(p.as_bytes(), &salt, iterations)
        }
        Creds::Password(_) => return,
        Creds::Keys(c, s) => (*c, *s),
    };
    let without_proof = format!("c=biws,r={combined}");
    let auth = format!("n=,r={},{first},{without_proof}", nonce.as_str());
    let proof = xor(&client_key, &hmac(&sha256(&client_key), auth.as_bytes()));
    let want = format!("{without_proof},p={}", b64(&proof));
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        want,
        "wrong client-final"
    );

    // The fuzzed server-final is accepted only if it carries the right signature.
    let signature = hmac(&server_key, auth.as_bytes());
    match client.handle_server_final(last) {
        Ok(()) => {
            let v = std::str::from_utf8(last)
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            assert_eq!(
                v,
                format!("v={}", b64(&signature)),
                "accepted a forged signature"
            );
        }
        Err(e) => {
            assert_eq!(client.handle_server_final(last), Err(e));
        }
    }
    // And the right one is always accepted.
    let mut client = new_client();
    client.handle_server_first(first.as_bytes()).unwrap();
    let right = format!("v={}", b64(&signature));
    assert_eq!(client.handle_server_final(right.as_bytes()), Ok(()));
    assert_eq!(
        client.handle_server_final(right.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
});

/// The iteration count the server asks for, when the third attribute is a plain number.
fn iterations_asked(first: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(first).ok()?;
    let i = text.split(',').nth(2)?.strip_prefix("i=")?;
    if i.is_empty() || i.len() > 10 || !i.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    i.parse().ok()
}
