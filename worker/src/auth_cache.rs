//! The worker's view of the auth file, with SCRAM keys derived once per user.

use crate::auth::{ScramSecret, Secret, Userlist};
use crate::config::Config;
use std::collections::HashMap;

pub struct AuthCache {
    userlist: Userlist,
    /// SCRAM secrets derived from plaintext passwords with a random salt, so a login
    /// costs a few HMACs instead of PBKDF2.
    derived: HashMap<String, ScramSecret>,
    /// ClientKeys recovered from clients' SCRAM logins, for pass-through to PostgreSQL.
    client_keys: HashMap<String, [u8; 32]>,
    /// Salt and keys of mock exchanges for unknown users; the same in every worker.
    pub mock_key: [u8; 32],
}

impl AuthCache {
    pub fn new(userlist: Userlist, mock_key: [u8; 32]) -> AuthCache {
        AuthCache {
            userlist,
            derived: HashMap::new(),
            client_keys: HashMap::new(),
            mock_key,
        }
    }

    /// Loads the configured auth file; a missing setting means nobody is listed.
    pub fn load(cfg: &Config, mock_key: [u8; 32]) -> AuthCache {
        let userlist = match cfg.auth_file.as_deref() {
            Some(path) => Userlist::load(path).unwrap_or_else(|e| {
                log::error!("cannot load auth_file {path}: {e}");
                Userlist::default()
            }),
            None => Userlist::default(),
        };
        AuthCache::new(userlist, mock_key)
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
                if !self.derived.contains_key(user) {
                    let s = ScramSecret::generate_for_password(p).ok()?;
                    self.derived.insert(user.to_string(), s);
                }
                self.derived.get(user)
            }
            Secret::Md5(_) => None,
        }
    }

    pub fn remember_client_key(&mut self, user: &str, key: [u8; 32]) {
        if self.client_keys.get(user) != Some(&key) {
            self.client_keys.insert(user.to_string(), key);
        }
    }

    pub fn client_key(&self, user: &str) -> Option<[u8; 32]> {
        self.client_keys.get(user).copied()
    }
}
