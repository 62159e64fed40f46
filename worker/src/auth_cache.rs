//! The worker's view of the auth file, with SCRAM keys derived once per user.

use crate::auth::{ScramSecret, Secret, Userlist};
use std::collections::HashMap;

pub struct AuthCache {
    userlist: Userlist,
    /// SCRAM secrets derived from plaintext passwords with a random salt, so a login
    /// costs a few HMACs instead of PBKDF2. Kept with the password they came from, so a
    /// reload that changes the password is noticed at the next login.
    derived: HashMap<String, (String, ScramSecret)>,
    /// ClientKeys recovered from clients' SCRAM logins, for pass-through to PostgreSQL,
    /// with the ServerKey of the secret they were checked against.
    client_keys: HashMap<String, ([u8; 32], [u8; 32])>,
    /// Salt and keys of mock exchanges for unknown users; the same in every worker.
    pub mock_key: [u8; 32],
}

impl AuthCache {
    /// Builds the cache from the auth file's text (None: no auth file, nobody listed).
    pub fn from_text(text: Option<&str>, mock_key: [u8; 32]) -> AuthCache {
        let mut cache = AuthCache {
            userlist: Userlist::default(),
            derived: HashMap::new(),
            client_keys: HashMap::new(),
            mock_key,
        };
        cache.replace_userlist(text);
        cache
    }

    /// Swaps in a reloaded auth file; derived keys follow at the next login.
    pub fn replace_userlist(&mut self, text: Option<&str>) {
        self.userlist = match text.map(Userlist::parse) {
            Some(Ok(u)) => u,
            Some(Err(e)) => {
                // The supervisor validated this text; a failure here is a bug, not input.
                log::error!("auth file does not parse: {e}");
                Userlist::default()
            }
            None => Userlist::default(),
        };
    }

    pub fn secret(&self, user: &str) -> Option<&Secret> {
        self.userlist.get(user)
    }

    /// The SCRAM secret to verify a client with: stored, or derived once from a password.
    pub fn scram_secret(&mut self, user: &str) -> Option<&ScramSecret> {
        match self.userlist.get(user)? {
            Secret::Scram(s) => Some(s),
            Secret::Plain(p) if p.is_empty() => None,
            Secret::Plain(p) => {
                let fresh = self.derived.get(user).is_some_and(|(pw, _)| pw == p);
                if !fresh {
                    let s = ScramSecret::generate_for_password(p).ok()?;
                    self.derived.insert(user.to_string(), (p.clone(), s));
                }
                self.derived.get(user).map(|(_, s)| s)
            }
            Secret::Md5(_) => None,
        }
    }

    pub fn remember_client_key(&mut self, user: &str, server_key: [u8; 32], client_key: [u8; 32]) {
        if self.client_keys.get(user) != Some(&(server_key, client_key)) {
            self.client_keys
                .insert(user.to_string(), (server_key, client_key));
        }
    }

    /// The recovered ClientKey for a user, if it belongs to the secret now in the file.
    pub fn client_key(&self, user: &str, server_key: &[u8; 32]) -> Option<[u8; 32]> {
        self.client_keys
            .get(user)
            .filter(|(sk, _)| sk == server_key)
            .map(|(_, ck)| *ck)
    }
}
