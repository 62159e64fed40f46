//! Authentication as the worker uses it: the protocol crate's auth, plus the random draws it takes as input.

pub use pgbouncers_proto::auth::*;

use pgbouncers_proto::auth::scram::{DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, KEY_LEN, RAW_NONCE_LEN};

/// A fresh SCRAM nonce: 18 random bytes, base64-encoded, like PostgreSQL's.
pub fn random_nonce() -> Result<Nonce, ScramError> {
    let mut raw = [0u8; RAW_NONCE_LEN];
    getrandom::fill(&mut raw).map_err(|_| ScramError::RandomUnavailable)?;
    Ok(Nonce::from_random(&raw))
}

/// A fresh random salt for an `AuthenticationMD5Password` challenge.
pub fn md5_random_salt() -> Result<[u8; 4], getrandom::Error> {
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt)?;
    Ok(salt)
}

/// [`ScramSecret::from_password`] with a fresh random 16-byte salt and 4096 iterations.
pub fn generate_scram_secret(password: &str) -> Result<ScramSecret, ScramError> {
    let mut salt = [0u8; DEFAULT_SALT_LEN];
    getrandom::fill(&mut salt).map_err(|_| ScramError::RandomUnavailable)?;
    Ok(ScramSecret::from_password(
        password,
        &salt,
        DEFAULT_ITERATIONS,
    ))
}

/// A fresh key for [`ScramServer::mock`].
pub fn random_mock_key() -> Result<[u8; KEY_LEN], ScramError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|_| ScramError::RandomUnavailable)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_salts_differ() {
        // Four random bytes colliding three times in a row means the RNG is broken.
        let a = md5_random_salt().expect("rng");
        let b = md5_random_salt().expect("rng");
        let c = md5_random_salt().expect("rng");
        assert!(a != b || b != c);
    }

    #[test]
    fn generated_secrets_use_fresh_salts() {
        let a = generate_scram_secret("pw").expect("rng");
        let b = generate_scram_secret("pw").expect("rng");
        assert_ne!(a.salt, b.salt);
        assert_ne!(a, b);
        assert!(a.verify_password("pw") && b.verify_password("pw"));
    }

    #[test]
    fn random_nonces_are_24_printable_chars_and_differ() {
        let a = random_nonce().expect("rng");
        let b = random_nonce().expect("rng");
        assert_eq!(a.as_str().len(), 24);
        assert!(Nonce::new(a.as_str()).is_ok(), "{a:?} is a valid nonce");
        assert_ne!(a, b);
    }

    #[test]
    fn random_mock_keys_differ() {
        assert_ne!(
            random_mock_key().expect("rng"),
            random_mock_key().expect("rng")
        );
    }
}
