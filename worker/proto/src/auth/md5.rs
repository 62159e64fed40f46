//! PostgreSQL's md5 password scheme: stored hashes, salted challenge responses and their verification.
//!
//! A stored md5 secret is `"md5" + hex(md5(password || username))`. During an
//! `AuthenticationMD5Password` exchange the server sends a random 4-byte salt and
//! the client answers `"md5" + hex(md5(hex(md5(password || username)) || salt))`.
//! Whoever holds the stored hash can therefore answer the challenge without the
//! password, which is what lets the pooler log into PostgreSQL with an md5 secret
//! from the auth file.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Length of a stored md5 secret: `"md5"` plus 32 hex digits.
pub const MD5_SECRET_LEN: usize = 35;

/// `md5(password || user)`, the hash PostgreSQL stores (before hex encoding and the `md5` prefix).
pub fn md5_password_hash(user: &str, password: &str) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(password.as_bytes());
    hasher.update(user.as_bytes());
    hasher.finalize().into()
}

/// Lowercase hex of a 16-byte digest (PostgreSQL only ever writes lowercase).
pub fn md5_hex(digest: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// The stored form of a hash: `"md5" + hex`, as written in an auth file or `pg_authid`.
pub fn md5_secret_string(password_hash: &[u8; 16]) -> String {
    let mut out = String::with_capacity(MD5_SECRET_LEN);
    out.push_str("md5");
    out.push_str(&md5_hex(password_hash));
    out
}

/// Parses a stored md5 secret the way PostgreSQL's `get_password_type` recognises one:
/// exactly `"md5"` followed by 32 *lowercase* hex digits. Anything else is `None`.
pub fn parse_md5_secret(secret: &str) -> Option<[u8; 16]> {
    let hex = secret.strip_prefix("md5")?.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [hi, lo] => (lower_hex_value(*hi)?, lower_hex_value(*lo)?),
            _ => return None,
        };
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

fn lower_hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The client's answer to an md5 challenge: `"md5" + hex(md5(hex(password_hash) || salt))`.
///
/// Takes the raw hash (as in [`crate::auth::Secret::Md5`]) rather than its hex text; the
/// hex is what gets hashed, as in PostgreSQL.
pub fn md5_salted_response(password_hash: &[u8; 16], salt: [u8; 4]) -> String {
    let mut hasher = Md5::new();
    hasher.update(md5_hex(password_hash).as_bytes());
    hasher.update(salt);
    let digest: [u8; 16] = hasher.finalize().into();
    md5_secret_string(&digest)
}

/// Server side: does the client's `PasswordMessage` payload (without its NUL terminator)
/// answer the challenge `salt` for the stored `password_hash`? Compared in constant time.
pub fn md5_verify_response(password_hash: &[u8; 16], salt: [u8; 4], response: &[u8]) -> bool {
    let expected = md5_salted_response(password_hash, salt);
    // Length is public (always 35 for a well-formed answer); only the content must not leak.
    expected.as_bytes().ct_eq(response).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn password_hash_matches_postgresql_known_values() {
        // Values PostgreSQL stores for these roles (also in PgBouncer's docs for admin/1234).
        assert_eq!(
            md5_secret_string(&md5_password_hash("postgres", "postgres")),
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        );
        assert_eq!(
            md5_secret_string(&md5_password_hash("admin", "1234")),
            "md545f2603610af569b6155c45067268c6b"
        );
    }

    #[test]
    fn password_hash_matches_postgres_protocol_crate() {
        for (user, password) in [("postgres", "postgres"), ("u", ""), ("ÿser", "pä ss")] {
            assert_eq!(
                md5_secret_string(&md5_password_hash(user, password)),
                postgres_protocol::password::md5(password.as_bytes(), user)
            );
        }
    }

    #[test]
    fn salted_response_is_md5_of_hex_then_salt() {
        let hash = md5_password_hash("postgres", "postgres");
        let salt = [0x01, 0x02, 0x03, 0x04];
        // Compute the expected value independently from the definition.
        let mut inner = Md5::new();
        inner.update(b"3175bce1d3201d16594cebf9d7eb3f9d");
        inner.update([1u8, 2, 3, 4]);
        let digest: [u8; 16] = inner.finalize().into();
        let expected = format!(
            "md5{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        assert_eq!(md5_salted_response(&hash, salt), expected);
        assert_eq!(md5_salted_response(&hash, salt).len(), MD5_SECRET_LEN);
    }

    #[test]
    fn verify_accepts_right_and_rejects_wrong_answers() {
        let hash = md5_password_hash("alice", "secret");
        let salt = [9, 8, 7, 6];
        let good = md5_salted_response(&hash, salt);
        assert!(md5_verify_response(&hash, salt, good.as_bytes()));
        // Wrong salt, wrong password, truncated, empty, trailing NUL.
        assert!(!md5_verify_response(&hash, [9, 8, 7, 5], good.as_bytes()));
        let wrong = md5_password_hash("alice", "Secret");
        assert!(!md5_verify_response(&wrong, salt, good.as_bytes()));
        assert!(!md5_verify_response(&hash, salt, &good.as_bytes()[..34]));
        assert!(!md5_verify_response(&hash, salt, b""));
        let mut with_nul = good.clone().into_bytes();
        with_nul.push(0);
        assert!(!md5_verify_response(&hash, salt, &with_nul));
    }

    #[test]
    fn parse_secret_follows_postgresql_rules() {
        let hash = md5_password_hash("postgres", "postgres");
        assert_eq!(
            parse_md5_secret("md53175bce1d3201d16594cebf9d7eb3f9d"),
            Some(hash)
        );
        // Uppercase hex, wrong length, wrong prefix, non-hex: not an md5 secret.
        assert_eq!(
            parse_md5_secret("md53175BCE1D3201D16594CEBF9D7EB3F9D"),
            None
        );
        assert_eq!(parse_md5_secret("md53175bce1d3201d16594cebf9d7eb3f9"), None);
        assert_eq!(
            parse_md5_secret("md53175bce1d3201d16594cebf9d7eb3f9d0"),
            None
        );
        assert_eq!(
            parse_md5_secret("MD53175bce1d3201d16594cebf9d7eb3f9d"),
            None
        );
        assert_eq!(
            parse_md5_secret("md53175bce1d3201d16594cebf9d7eb3f9g"),
            None
        );
        assert_eq!(parse_md5_secret("md5"), None);
        assert_eq!(parse_md5_secret(""), None);
    }

    proptest! {
        #[test]
        fn parse_secret_never_panics_and_round_trips(s in ".{0,64}", hash in any::<[u8; 16]>()) {
            let _ = parse_md5_secret(&s);
            prop_assert_eq!(parse_md5_secret(&md5_secret_string(&hash)), Some(hash));
        }

        #[test]
        fn verify_never_panics(response in proptest::collection::vec(any::<u8>(), 0..64), salt in any::<[u8; 4]>()) {
            let hash = md5_password_hash("u", "p");
            let expected = md5_salted_response(&hash, salt);
            prop_assert_eq!(md5_verify_response(&hash, salt, &response), response == expected.as_bytes());
        }
    }
}
