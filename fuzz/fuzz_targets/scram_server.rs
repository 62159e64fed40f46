//! Fuzz target: the SCRAM server side never panics, only accepts proofs that check out independently, and always accepts our own client.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgbouncers_fuzz::{b64, fields, hmac, sha256, unb64, xor};
use pgbouncers_worker::auth::{Nonce, ScramClient, ScramError, ScramSecret, ScramServer};

const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const MOCK_KEY: [u8; 32] = [7; 32];

/// RFC 7677's example: user "user", password "pencil", 4096 iterations (derived once).
fn rfc_secret() -> &'static ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET.get_or_init(|| {
        let salt = unb64("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramSecret::from_password("pencil", &salt, 4096)
    })
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

fuzz_target!(|data: &[u8]| {
    let [mode, a, b, c, d] = fields::<5>(data);
    match mode.first().copied().unwrap_or(0) % 3 {
        0 => exchange(a, b, c, d, false),
        1 => exchange(a, b, c, d, true),
        _ => round_trip(a, b, c, d),
    }
});

/// Fields: secret, server nonce, client-first, client-final.
fn exchange(secret: &[u8], nonce: &[u8], first: &[u8], last: &[u8], mock: bool) {
    let secret = ScramSecret::parse(text(secret)).unwrap_or_else(|_| rfc_secret().clone());
    let nonce = Nonce::new(text(nonce)).unwrap_or_else(|_| Nonce::new(RFC_SERVER_NONCE).unwrap());
    let mut server = if mock {
        ScramServer::mock("user", &MOCK_KEY, nonce.clone())
    } else {
        ScramServer::new(&secret, nonce.clone())
    };
    assert_eq!(server.is_mock(), mock);
    let server_first = match server.handle_client_first(first) {
        Ok(reply) => reply,
        Err(e) => {
            // Errors are sticky.
            assert_eq!(server.handle_client_final(last).err(), Some(e.clone()));
            assert_eq!(server.handle_client_first(first), Err(e));
            return;
        }
    };
    let server_first = String::from_utf8(server_first).expect("server-first is text");
    check_server_first(
        &server_first,
        first,
        nonce.as_str(),
        (!mock).then_some(&secret),
    );
    // A step out of order fails the exchange for good.
    assert_eq!(
        server.handle_client_first(first),
        Err(ScramError::OutOfOrder)
    );
    assert_eq!(
        server.handle_client_final(last).err(),
        Some(ScramError::OutOfOrder)
    );
    let mut server = if mock {
        ScramServer::mock("user", &MOCK_KEY, nonce.clone())
    } else {
        ScramServer::new(&secret, nonce.clone())
    };
    server.handle_client_first(first).unwrap();
    match server.handle_client_final(last) {
        Ok(success) => {
            assert!(!mock, "a mock exchange succeeded");
            // Check the proof with our own arithmetic.
            let last = std::str::from_utf8(last).unwrap();
            let cut = last.rfind(",p=").expect("accepted without a proof");
            let proof: [u8; 32] = unb64(&last[cut + 3..]).unwrap().try_into().unwrap();
            let bare = std::str::from_utf8(&first[3..]).unwrap();
            let auth = format!("{bare},{server_first},{}", &last[..cut]);
            let client_key = xor(&proof, &hmac(&secret.stored_key, auth.as_bytes()));
            assert_eq!(
                sha256(&client_key),
                secret.stored_key,
                "accepted a wrong proof"
            );
            assert_eq!(success.client_key, client_key);
            let want = format!("v={}", b64(&hmac(&secret.server_key, auth.as_bytes())));
            assert_eq!(success.server_final, want.as_bytes());
            let gs2 = if first.starts_with(b"y,") {
                "eSws"
            } else {
                "biws"
            };
            let nonce_attr = server_first.split(',').next().unwrap();
            assert!(last.starts_with(&format!("c={gs2},{nonce_attr}")));
            assert_eq!(
                server.handle_client_final(last.as_bytes()).err(),
                Some(ScramError::OutOfOrder)
            );
        }
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(server.handle_client_final(last).err(), Some(e));
        }
    }
}

/// server-first is `r=<client nonce><our nonce>,s=<salt>,i=<count>`.
fn check_server_first(reply: &str, first: &[u8], ours: &str, secret: Option<&ScramSecret>) {
    let mut attrs = reply.split(',');
    let r = attrs.next().and_then(|a| a.strip_prefix("r=")).expect("r=");
    let s = attrs.next().and_then(|a| a.strip_prefix("s=")).expect("s=");
    let i = attrs.next().and_then(|a| a.strip_prefix("i=")).expect("i=");
    assert_eq!(attrs.next(), None);
    let theirs = r
        .strip_suffix(ours)
        .expect("our nonce ends the combined nonce");
    assert!(!theirs.is_empty());
    let first = std::str::from_utf8(first).unwrap();
    assert!(
        first.contains(&format!(",r={theirs}")),
        "the client nonce is not the client's"
    );
    match secret {
        Some(secret) => {
            assert_eq!(unb64(s).unwrap(), secret.salt);
            assert_eq!(i.parse::<u32>().unwrap(), secret.iterations);
        }
        None => {
            assert_eq!(unb64(s).unwrap().len(), 16);
            assert_eq!(i, "4096");
        }
    }
}

/// Fields: password, salt, client nonce, server nonce. Our client logs in with the password
/// and then with the recovered keys (pass-through); both must work.
fn round_trip(password: &[u8], salt: &[u8], client_nonce: &[u8], server_nonce: &[u8]) {
    let password = String::from_utf8_lossy(password);
    // Salts past MAX_SALT_LEN are refused by design.
    let salt = if salt.is_empty() {
        &b"salt"[..]
    } else {
        &salt[..salt.len().min(1024)]
    };
    let cn = Nonce::new(text(client_nonce)).unwrap_or_else(|_| Nonce::new("client").unwrap());
    let sn = Nonce::new(text(server_nonce)).unwrap_or_else(|_| Nonce::new("server").unwrap());
    // One iteration keeps this fast; the count only feeds PBKDF2.
    let secret = ScramSecret::from_password(&password, salt, 1);
    assert!(secret.verify_password(&password));
    assert_eq!(ScramSecret::parse(&secret.encode()).as_ref(), Ok(&secret));

    let mut server = ScramServer::new(&secret, sn.clone());
    let mut client = ScramClient::with_password(&password, cn.clone());
    let client_key = login(&mut client, &mut server).expect("our client with the right password");
    assert_eq!(sha256(&client_key), secret.stored_key);

    let mut server = ScramServer::new(&secret, sn);
    let mut client = ScramClient::with_keys(client_key, secret.server_key, cn);
    let again = login(&mut client, &mut server).expect("pass-through with recovered keys");
    assert_eq!(again, client_key);
}

fn login(client: &mut ScramClient, server: &mut ScramServer) -> Result<[u8; 32], ScramError> {
    let server_first = server.handle_client_first(&client.client_first())?;
    let client_final = client.handle_server_first(&server_first)?;
    let success = server.handle_client_final(&client_final)?;
    client.handle_server_final(&success.server_final)?;
    Ok(success.client_key)
}
