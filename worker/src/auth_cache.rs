//! The worker's view of the auth file, with SCRAM keys derived once per user.

use crate::auth::{ScramSecret, Secret, Userlist};
use std::collections::HashMap;

pub struct AuthCache {
    userlist: Userlist,
    /// SCRAM secrets derived from plaintext passwords, so a login costs a few HMACs
    /// instead of PBKDF2. The salt is [`crate::auth::scram::user_salt`], not random: every
    /// worker shows a user the same salt, the one an unknown user's mock exchange would
    /// show, so counting salts over many logins tells nothing. Kept with the password they
    /// came from, so a reload that changes the password is noticed at the next login.
    derived: HashMap<String, (String, ScramSecret)>,
    /// ClientKeys recovered from clients' SCRAM logins, for pass-through to PostgreSQL,
    /// with the ServerKey of the secret they were checked against.
    client_keys: HashMap<String, ([u8; 32], [u8; 32])>,
    /// Salt and keys of mock exchanges for unknown users, and the salt of secrets derived
    /// from plaintext passwords; made once by the supervisor, the same in every worker.
    pub mock_key: [u8; 32],
    /// Recent auth_query answers for users missing from the auth file.
    pub lookups: crate::auth_query::Cache,
}

impl AuthCache {
    /// Builds the cache from the auth file's text (None: no auth file, nobody listed).
    pub fn from_text(text: Option<&str>, mock_key: [u8; 32]) -> AuthCache {
        let mut cache = AuthCache {
            userlist: Userlist::default(),
            derived: HashMap::new(),
            client_keys: HashMap::new(),
            mock_key,
            lookups: Default::default(),
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
                    let s = ScramSecret::for_user_password(user, p, &self.mock_key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{user_salt, DEFAULT_ITERATIONS};
    use crate::auth::{Nonce, ScramClient, ScramServer};

    /// The `s=` and `i=` of the server-first-message `server` answers a client with.
    fn offered(server: &mut ScramServer) -> (String, String) {
        let first = server
            .handle_client_first(b"n,,n=,r=clientnonce")
            .expect("server-first");
        let text = String::from_utf8(first).expect("utf-8");
        let attr = |name: &str| {
            text.split(',')
                .find_map(|a| a.strip_prefix(name))
                .expect("attribute")
                .to_string()
        };
        (attr("s="), attr("i="))
    }

    fn nonce() -> Nonce {
        Nonce::new("servernonce").expect("nonce")
    }

    #[test]
    fn a_plaintext_user_gets_one_salt_in_every_worker_the_one_a_stranger_would_get() {
        let key = [7u8; 32];
        let text = "\"known\" \"pw\"\n\"md5user\" \"md5b4e3cd7c4e1e5a3d3f1cfc0f4e0c1d2a\"\n";
        // Two workers: same key from the supervisor, separate caches.
        let mut one = AuthCache::from_text(Some(text), key);
        let mut two = AuthCache::from_text(Some(text), key);
        let a = one.scram_secret("known").expect("derived").clone();
        let b = two.scram_secret("known").expect("derived").clone();
        assert_eq!(a, b, "two workers derived different secrets");
        assert_eq!(a.salt, user_salt("known", &key));
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);

        // Listed with a password, unknown, or an md5 hash (mock exchange): the same shape,
        // and the known user's salt is exactly what the mock shows for that name.
        let known = offered(&mut ScramServer::new(&a, nonce()));
        let stranger = offered(&mut ScramServer::mock("known", &key, nonce()));
        assert_eq!(known, stranger);
        assert!(one.scram_secret("md5user").is_none());
        let md5 = offered(&mut ScramServer::mock("md5user", &key, nonce()));
        let nobody = offered(&mut ScramServer::mock("nobody", &key, nonce()));
        assert_eq!(md5.0.len(), known.0.len());
        assert_eq!(nobody.0.len(), known.0.len());
        assert_eq!((&md5.1, &nobody.1), (&known.1, &known.1));

        // The derived secret still logs the right password in.
        let mut server = ScramServer::new(&a, nonce());
        let mut client = ScramClient::with_password("pw", Nonce::new("cli").expect("nonce"));
        let first = server.handle_client_first(&client.client_first()).unwrap();
        let last = client.handle_server_first(&first).unwrap();
        assert!(server.handle_client_final(&last).is_ok());
    }

    #[test]
    fn another_key_gives_other_salts() {
        let text = "\"known\" \"pw\"\n";
        let a = AuthCache::from_text(Some(text), [1; 32])
            .scram_secret("known")
            .cloned();
        let b = AuthCache::from_text(Some(text), [2; 32])
            .scram_secret("known")
            .cloned();
        assert_ne!(a.expect("a").salt, b.expect("b").salt);
    }
}
