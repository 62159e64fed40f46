//! SCRAM-SHA-256 as PostgreSQL speaks it (RFC 5802/7677): stored secrets, the server side facing clients and the client side logging into PostgreSQL.
//!
//! Everything here is sans-IO: the caller moves the SASL payloads
//! (`SASLInitialResponse`, `SASLResponse`, `AuthenticationSASLContinue`,
//! `AuthenticationSASLFinal` bodies) in and out as byte slices.
//!
//! Differences from the generic RFC that follow PostgreSQL:
//! - the `n=` user name in client-first-message is ignored (the startup packet names the user);
//! - channel binding is `tls-server-end-point` only (SCRAM-SHA-256-PLUS), when the caller
//!   hands the server exchange the binding data of its TLS session; without it `p=` is refused;
//! - passwords go through SASLprep, and a password SASLprep rejects is used as raw bytes.
//!
//! A successful server exchange also yields the client's `ClientKey`
//! (`ClientProof XOR HMAC(StoredKey, AuthMessage)`), which lets the pooler log
//! into PostgreSQL with [`ScramClient::with_keys`] without knowing the password
//! (SCRAM pass-through), provided the server stores the same secret.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of SHA-256 output, and so of every SCRAM key, signature and proof.
pub const KEY_LEN: usize = 32;
/// Iteration count for secrets this crate generates (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length for secrets this crate generates (PostgreSQL's default).
pub const DEFAULT_SALT_LEN: usize = 16;
/// Highest iteration count [`ScramClient`] agrees to compute with a password: a hostile
/// or misconfigured server must not be able to make a worker burn seconds of CPU.
pub const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;
/// Longest SCRAM message either side accepts. Real ones are well under 300 bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Longest nonce accepted from a peer (ours are 24 characters).
pub const MAX_NONCE_LEN: usize = 512;
/// Longest salt accepted, decoded, from a stored secret or a server.
pub const MAX_SALT_LEN: usize = 1024;
/// Longest stored secret [`ScramSecret::parse`] accepts.
pub const MAX_SECRET_LEN: usize = 2048;

/// Random bytes in a nonce we generate (PostgreSQL uses 18 too); base64 makes 24 characters.
pub const RAW_NONCE_LEN: usize = 18;
/// Keep a server's `e=` text short: it ends up in logs.
const MAX_SERVER_ERROR_LEN: usize = 128;
/// Length of base64 for a 32-byte value (with padding).
const KEY_B64_LEN: usize = 44;

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM exchange failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The peer's message does not follow the SCRAM grammar; the reason says where.
    Malformed(&'static str),
    /// The peer asked for a SCRAM feature PostgreSQL does not support either
    /// (authorization identity, mandatory extensions).
    Unsupported(&'static str),
    /// The client asked for channel binding (`p=`), which needs TLS.
    ChannelBindingUnsupported,
    /// The client-final `c=` does not echo the GS2 header of client-first (and the
    /// channel binding data, with `p=`).
    ChannelBindingMismatch,
    /// The client chose a mechanism and a GS2 flag that disagree, or said `y` (binding
    /// supported but believed unavailable) to a server that offered it: a downgrade.
    ChannelBindingNegotiation(&'static str),
    /// The nonce in the reply is not the one this exchange agreed on.
    NonceMismatch,
    /// Wrong password (or unknown user / a secret that can't do SCRAM, via the mock server).
    AuthenticationFailed,
    /// The server's signature is wrong: it does not know our secret.
    ServerSignatureMismatch,
    /// The server ended the exchange with `e=<text>` (text sanitised and shortened).
    ServerError(String),
    /// The server asked for more PBKDF2 iterations than [`MAX_CLIENT_ITERATIONS`].
    IterationsTooHigh(u32),
    /// A method was called in the wrong step of the exchange.
    OutOfOrder,
    /// The operating system's random number generator failed.
    RandomUnavailable,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(reason) => write!(f, "malformed SCRAM message: {reason}"),
            ScramError::Unsupported(what) => write!(f, "unsupported SCRAM feature: {what}"),
            ScramError::ChannelBindingUnsupported => {
                f.write_str("SCRAM channel binding is not supported without TLS")
            }
            ScramError::ChannelBindingMismatch => {
                f.write_str("unexpected SCRAM channel-binding attribute in client-final-message")
            }
            ScramError::ChannelBindingNegotiation(why) => {
                write!(f, "SCRAM channel binding negotiation error: {why}")
            }
            ScramError::NonceMismatch => f.write_str("SCRAM nonce mismatch"),
            ScramError::AuthenticationFailed => f.write_str("SCRAM authentication failed"),
            ScramError::ServerSignatureMismatch => {
                f.write_str("SCRAM server signature does not match")
            }
            ScramError::ServerError(text) => write!(f, "SCRAM server error: {text}"),
            ScramError::IterationsTooHigh(n) => write!(
                f,
                "SCRAM iteration count {n} exceeds the limit of {MAX_CLIENT_ITERATIONS}"
            ),
            ScramError::OutOfOrder => f.write_str("SCRAM message out of order"),
            ScramError::RandomUnavailable => f.write_str("random number generator failed"),
        }
    }
}

impl std::error::Error for ScramError {}

/// Why a stored `SCRAM-SHA-256$…` secret did not parse. Never contains secret material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidScramSecret(pub &'static str);

impl fmt::Display for InvalidScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SCRAM secret: {}", self.0)
    }
}

impl std::error::Error for InvalidScramSecret {}

// ---------------------------------------------------------------------------
// Primitives

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// SASLprep the way PostgreSQL (and libpq) do: if SASLprep refuses the password
/// (prohibited or unassigned characters), hash the raw bytes instead.
fn prepare_password(password: &str) -> Cow<'_, [u8]> {
    match stringprep::saslprep(password) {
        Ok(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
        Ok(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
        Err(_) => Cow::Borrowed(password.as_bytes()),
    }
}

/// `SaltedPassword := Hi(Normalize(password), salt, i)`.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(
        &prepare_password(password),
        salt,
        iterations.max(1),
    )
}

/// Salted passwords this thread derived for server logins, by (password, salt, iterations).
/// PostgreSQL keeps one salt per role until its password changes, so a pool that opens its
/// twentieth connection, or reconnects after a PostgreSQL restart, pays PBKDF2 once rather
/// than once per connection. Bounded: a server inventing salts cannot grow it.
type SaltedKey = (String, Vec<u8>, u32);

thread_local! {
    static SALTED: std::cell::RefCell<std::collections::HashMap<SaltedKey, [u8; KEY_LEN]>> =
        Default::default();
}

const MAX_SALTED: usize = 64;

#[cfg(test)]
thread_local! {
    static DERIVATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn salted_password_cached(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let key = (password.to_owned(), salt.to_vec(), iterations);
    if let Some(found) = SALTED.with(|c| c.borrow().get(&key).copied()) {
        return found;
    }
    #[cfg(test)]
    DERIVATIONS.with(|d| d.set(d.get() + 1));
    let salted = salted_password(password, salt, iterations);
    SALTED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= MAX_SALTED {
            c.clear();
        }
        c.insert(key, salted);
    });
    salted
}

/// `(ClientKey, ServerKey)` from a salted password.
fn keys_from_salted(salted: &[u8; KEY_LEN]) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    (
        hmac(salted, &[b"Client Key"]),
        hmac(salted, &[b"Server Key"]),
    )
}

/// Decodes standard padded base64 of at most `max` decoded bytes, without
/// allocating for oversized input.
fn decode_b64(text: &str, max: usize) -> Option<Vec<u8>> {
    if text.len() > max.div_ceil(3).saturating_mul(4) {
        return None;
    }
    B64.decode(text).ok().filter(|v| v.len() <= max)
}

fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != KEY_B64_LEN {
        return None;
    }
    B64.decode(text).ok()?.try_into().ok()
}

/// A positive decimal `u32` with no sign, spaces or other decoration.
fn parse_positive_u32(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&n| n > 0)
}

/// RFC 5802 `printable`: 0x21..=0x7E except `,`.
fn is_valid_nonce(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NONCE_LEN
        && text
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

// ---------------------------------------------------------------------------
// Stored secret

/// A `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` secret (RFC 5803 format,
/// as in `pg_authid.rolpassword` and PgBouncer auth files).
///
/// Equality is constant-time; `Debug` prints only the iteration count.
#[derive(Clone)]
pub struct ScramSecret {
    /// PBKDF2 iteration count, at least 1.
    pub iterations: u32,
    /// Raw (decoded) salt.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl ScramSecret {
    /// Parses PostgreSQL's stored format. The salt must be non-empty base64 of at most
    /// [`MAX_SALT_LEN`] bytes, the keys exactly 32 bytes each, the count a positive integer.
    pub fn parse(text: &str) -> Result<ScramSecret, InvalidScramSecret> {
        if text.len() > MAX_SECRET_LEN {
            return Err(InvalidScramSecret("too long"));
        }
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(InvalidScramSecret("does not start with SCRAM-SHA-256$"))?;
        let (iterations, rest) = rest
            .split_once(':')
            .ok_or(InvalidScramSecret("missing ':' after the iteration count"))?;
        let (salt, keys) = rest
            .split_once('$')
            .ok_or(InvalidScramSecret("missing '$' after the salt"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(InvalidScramSecret(
            "missing ':' between StoredKey and ServerKey",
        ))?;
        let iterations = parse_positive_u32(iterations).ok_or(InvalidScramSecret(
            "iteration count is not a positive integer",
        ))?;
        let salt = decode_b64(salt, MAX_SALT_LEN)
            .filter(|s| !s.is_empty())
            .ok_or(InvalidScramSecret("salt is not valid base64"))?;
        let stored_key = decode_key(stored_key)
            .ok_or(InvalidScramSecret("StoredKey is not 32 bytes of base64"))?;
        let server_key = decode_key(server_key)
            .ok_or(InvalidScramSecret("ServerKey is not 32 bytes of base64"))?;
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives the secret for `password` (SASLprep'd as PostgreSQL does) with the given
    /// salt and iteration count. Costs `iterations` PBKDF2 rounds; an iteration count of
    /// 0 is treated as 1 (and stored as 1).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations = iterations.max(1);
        let salted = salted_password(password, salt, iterations);
        let (client_key, server_key) = keys_from_salted(&salted);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// The secret for a plaintext auth-file password, with the salt [`user_salt`] gives
    /// `username` and 4096 iterations: exactly the salt and count a [`ScramServer::mock`]
    /// exchange shows for the same name, so a server-first-message never tells a listed
    /// user from an unknown one, and it is the same in every worker and every login.
    /// Costs PBKDF2: run it once per user and password, and cache the result.
    pub fn for_user_password(
        username: &str,
        password: &str,
        salt_key: &[u8; KEY_LEN],
    ) -> ScramSecret {
        ScramSecret::from_password(password, &user_salt(username, salt_key), DEFAULT_ITERATIONS)
    }

    /// The `ClientKey` that `password` yields under this secret, if the password is right
    /// (both keys compared in constant time). A cleartext login checked this way gives the
    /// pooler what a SCRAM login would have given it: the key for a SCRAM pass-through login
    /// to PostgreSQL. Costs `self.iterations` PBKDF2 rounds.
    pub fn client_key_for_password(&self, password: &str) -> Option<[u8; KEY_LEN]> {
        let salted = salted_password(password, &self.salt, self.iterations);
        let (client_key, server_key) = keys_from_salted(&salted);
        let stored = sha256(&client_key).ct_eq(&self.stored_key);
        let server = server_key.ct_eq(&self.server_key);
        bool::from(stored & server).then_some(client_key)
    }

    /// Does `password` produce this secret? For cleartext logins (`auth_type=plain`)
    /// against a SCRAM secret. Costs `self.iterations` PBKDF2 rounds.
    pub fn verify_password(&self, password: &str) -> bool {
        self.client_key_for_password(password).is_some()
    }

    /// PostgreSQL's text form. It contains the keys: never log it.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl PartialEq for ScramSecret {
    fn eq(&self, other: &ScramSecret) -> bool {
        let same_params = self.iterations == other.iterations && self.salt == other.salt;
        let keys =
            self.stored_key.ct_eq(&other.stored_key) & self.server_key.ct_eq(&other.server_key);
        same_params & bool::from(keys)
    }
}

impl Eq for ScramSecret {}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &format_args!("<redacted>"))
            .field("stored_key", &format_args!("<redacted>"))
            .field("server_key", &format_args!("<redacted>"))
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Nonces

/// A SCRAM nonce: 1..=512 printable ASCII characters, no comma.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nonce(String);

impl Nonce {
    /// 18 random bytes the caller drew, base64-encoded (24 characters), like PostgreSQL's.
    pub fn from_random(raw: &[u8; RAW_NONCE_LEN]) -> Nonce {
        Nonce(B64.encode(raw))
    }

    /// A caller-chosen nonce, for deterministic tests.
    pub fn new(text: &str) -> Result<Nonce, ScramError> {
        if is_valid_nonce(text) {
            Ok(Nonce(text.to_owned()))
        } else {
            Err(ScramError::Malformed(
                "nonce must be 1 to 512 printable ASCII characters without ','",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// Message parsing

/// The GS2 header of a client without channel binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gs2Flag {
    /// `n,,`: the client does not support channel binding.
    No,
    /// `y,,`: the client supports it but thinks the server does not.
    Yes,
    /// `p=tls-server-end-point,,`: SCRAM-SHA-256-PLUS, bound to the TLS session.
    Plus,
}

/// The GS2 header of a SCRAM-SHA-256-PLUS client, the only binding type PostgreSQL has.
const PLUS_HEADER: &str = "p=tls-server-end-point,,";

impl Gs2Flag {
    /// The `c=` value client-final must carry: base64 of the GS2 header, followed by the
    /// channel binding data with `p=`.
    fn channel_binding_b64(self, binding: Option<&[u8]>) -> String {
        match self {
            Gs2Flag::No => "biws".into(),
            Gs2Flag::Yes => "eSws".into(),
            Gs2Flag::Plus => {
                let mut input = PLUS_HEADER.as_bytes().to_vec();
                input.extend_from_slice(binding.unwrap_or_default());
                B64.encode(input)
            }
        }
    }
}

/// One `x=value` attribute and its byte offset in the message.
#[derive(Debug)]
struct Attr<'a> {
    name: u8,
    value: &'a str,
    start: usize,
}

/// Reads the comma-separated attributes of a SCRAM message in order.
struct Attrs<'a> {
    rest: Option<&'a str>,
    offset: usize,
}

impl<'a> Attrs<'a> {
    fn new(msg: &'a str) -> Attrs<'a> {
        Attrs {
            rest: Some(msg),
            offset: 0,
        }
    }

    fn next_attr(&mut self) -> Result<Option<Attr<'a>>, ScramError> {
        let Some(rest) = self.rest else {
            return Ok(None);
        };
        let (part, tail) = match rest.split_once(',') {
            Some((part, tail)) => (part, Some(tail)),
            None => (rest, None),
        };
        let start = self.offset;
        // Messages are capped at MAX_MESSAGE_LEN, so this cannot overflow.
        self.offset = start.saturating_add(part.len()).saturating_add(1);
        self.rest = tail;
        match part.as_bytes() {
            [name, b'=', ..] if name.is_ascii_alphabetic() => Ok(Some(Attr {
                name: *name,
                value: part.get(2..).unwrap_or(""),
                start,
            })),
            _ => Err(ScramError::Malformed(
                "expected an attribute of the form x=value",
            )),
        }
    }

    fn expect(&mut self, name: u8, missing: &'static str) -> Result<&'a str, ScramError> {
        match self.next_attr()? {
            Some(attr) if attr.name == name => Ok(attr.value),
            _ => Err(ScramError::Malformed(missing)),
        }
    }

    /// Skips optional extensions up to the end, checking only their shape.
    fn skip_extensions(&mut self) -> Result<(), ScramError> {
        while self.next_attr()?.is_some() {}
        Ok(())
    }
}

fn message_str(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("message is not valid UTF-8"))
}

/// `gs2-header client-first-message-bare`.
#[derive(Debug)]
struct ClientFirst<'a> {
    flag: Gs2Flag,
    /// `client-first-message-bare`, part of the AuthMessage.
    bare: &'a str,
    nonce: &'a str,
}

fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let msg = message_str(msg)?;
    let (flag, rest) = if let Some(rest) = msg.strip_prefix("n,") {
        (Gs2Flag::No, rest)
    } else if let Some(rest) = msg.strip_prefix("y,") {
        (Gs2Flag::Yes, rest)
    } else if let Some(rest) = msg.strip_prefix("p=") {
        match rest.split_once(',') {
            Some(("tls-server-end-point", rest)) => (Gs2Flag::Plus, rest),
            Some(_) => return Err(ScramError::Unsupported("channel binding type")),
            None => return Err(ScramError::Malformed("invalid GS2 header")),
        }
    } else {
        return Err(ScramError::Malformed("invalid GS2 channel-binding flag"));
    };
    let bare = if let Some(bare) = rest.strip_prefix(',') {
        bare
    } else if rest.starts_with("a=") {
        return Err(ScramError::Unsupported("authorization identity"));
    } else {
        return Err(ScramError::Malformed("invalid GS2 header"));
    };
    let mut attrs = Attrs::new(bare);
    match attrs.next_attr()? {
        Some(Attr { name: b'm', .. }) => {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        // PostgreSQL takes the user from the startup packet and ignores this one.
        Some(Attr { name: b'n', .. }) => {}
        _ => {
            return Err(ScramError::Malformed(
                "client-first-message lacks the user name attribute",
            ))
        }
    }
    let nonce = attrs.expect(b'r', "client-first-message lacks the nonce")?;
    if !is_valid_nonce(nonce) {
        return Err(ScramError::Malformed(
            "client nonce is empty, too long or not printable",
        ));
    }
    attrs.skip_extensions()?;
    Ok(ClientFirst { flag, bare, nonce })
}

/// `channel-binding "," nonce ["," extensions] "," proof`.
#[derive(Debug)]
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: [u8; KEY_LEN],
    /// `client-final-message-without-proof`, part of the AuthMessage.
    without_proof: &'a str,
}

fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let text = message_str(msg)?;
    let mut attrs = Attrs::new(text);
    let channel_binding = attrs.expect(b'c', "client-final-message lacks channel binding")?;
    let nonce = attrs.expect(b'r', "client-final-message lacks the nonce")?;
    loop {
        match attrs.next_attr()? {
            None => {
                return Err(ScramError::Malformed(
                    "client-final-message lacks the proof",
                ))
            }
            Some(Attr {
                name: b'p',
                value,
                start,
            }) => {
                if attrs.rest.is_some() {
                    return Err(ScramError::Malformed(
                        "garbage at the end of client-final-message",
                    ));
                }
                let proof = decode_key(value)
                    .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
                // `start` points just past the comma that precedes `p=`.
                let without_proof = text
                    .get(..start.saturating_sub(1))
                    .ok_or(ScramError::Malformed("misplaced proof"))?;
                return Ok(ClientFinal {
                    channel_binding,
                    nonce,
                    proof,
                    without_proof,
                });
            }
            Some(_) => {} // extension
        }
    }
}

/// `[reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]`.
#[derive(Debug)]
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

fn parse_server_first(msg: &[u8]) -> Result<ServerFirst<'_>, ScramError> {
    let text = message_str(msg)?;
    let mut attrs = Attrs::new(text);
    let nonce = match attrs.next_attr()? {
        Some(Attr { name: b'm', .. }) => {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        Some(Attr {
            name: b'r', value, ..
        }) => value,
        _ => {
            return Err(ScramError::Malformed(
                "server-first-message lacks the nonce",
            ))
        }
    };
    if !is_valid_nonce(nonce) {
        return Err(ScramError::Malformed(
            "server nonce is empty, too long or not printable",
        ));
    }
    let salt = attrs.expect(b's', "server-first-message lacks the salt")?;
    let salt = decode_b64(salt, MAX_SALT_LEN)
        .filter(|s| !s.is_empty())
        .ok_or(ScramError::Malformed("salt is not valid base64"))?;
    let iterations = attrs.expect(b'i', "server-first-message lacks the iteration count")?;
    let iterations = parse_positive_u32(iterations).ok_or(ScramError::Malformed(
        "iteration count is not a positive integer",
    ))?;
    attrs.skip_extensions()?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// `(server-error / verifier) ["," extensions]`.
#[derive(Debug, PartialEq, Eq)]
enum ServerFinal {
    Verifier([u8; KEY_LEN]),
    Error(String),
}

fn parse_server_final(msg: &[u8]) -> Result<ServerFinal, ScramError> {
    let text = message_str(msg)?;
    let mut attrs = Attrs::new(text);
    let result = match attrs.next_attr()? {
        Some(Attr {
            name: b'e', value, ..
        }) => {
            // Only this text of the server's reaches logs; keep it short and printable.
            let clean: String = value
                .chars()
                .take(MAX_SERVER_ERROR_LEN)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            return Ok(ServerFinal::Error(clean));
        }
        Some(Attr {
            name: b'v', value, ..
        }) => ServerFinal::Verifier(decode_key(value).ok_or(ScramError::Malformed(
            "server signature is not 32 bytes of base64",
        ))?),
        _ => {
            return Err(ScramError::Malformed(
                "server-final-message has neither a verifier nor an error",
            ))
        }
    };
    attrs.skip_extensions()?;
    Ok(result)
}

// ---------------------------------------------------------------------------
// Server side

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        flag: Gs2Flag,
        client_first_bare: String,
        server_first: String,
        /// Client nonce followed by ours.
        nonce: String,
    },
    Done,
    Failed(ScramError),
}

/// What a successful server exchange yields.
pub struct ScramServerSuccess {
    /// `v=<ServerSignature>`, the `AuthenticationSASLFinal` payload.
    pub server_final: Vec<u8>,
    /// The client's `ClientKey`, for a SCRAM pass-through login to PostgreSQL
    /// ([`ScramClient::with_keys`]). As good as a password: never log it.
    pub client_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramServerSuccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServerSuccess")
            .field("server_final", &String::from_utf8_lossy(&self.server_final))
            .field("client_key", &format_args!("<redacted>"))
            .finish()
    }
}

/// The server side of one SCRAM-SHA-256 exchange with a client.
///
/// Call [`handle_client_first`](Self::handle_client_first) with the
/// `SASLInitialResponse` data, send the result in `AuthenticationSASLContinue`, then
/// [`handle_client_final`](Self::handle_client_final) with the `SASLResponse` data and
/// send `server_final` in `AuthenticationSASLFinal`. Errors are sticky: after one,
/// every call returns it again.
pub struct ScramServer {
    iterations: u32,
    salt_b64: String,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// A mock exchange: runs every step and computation, then always fails.
    doomed: bool,
    /// tls-server-end-point data of the TLS session, when SCRAM-SHA-256-PLUS was offered.
    binding: Option<Vec<u8>>,
    server_nonce: Nonce,
    state: ServerState,
}

impl ScramServer {
    /// An exchange that verifies the client against `secret`.
    pub fn new(secret: &ScramSecret, server_nonce: Nonce) -> ScramServer {
        ScramServer {
            iterations: secret.iterations,
            salt_b64: B64.encode(&secret.salt),
            stored_key: secret.stored_key,
            server_key: secret.server_key,
            doomed: false,
            binding: None,
            server_nonce,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// An exchange for a user that does not exist or whose secret can't do SCRAM (an md5
    /// hash). It looks like a real one, with a salt and keys derived from `username` and
    /// `mock_key` (so the same user always gets the same salt, and it can't be told apart
    /// from a real 16-byte, 4096-iteration secret), and always ends in
    /// [`ScramError::AuthenticationFailed`], so nobody learns whether the user exists.
    ///
    /// `mock_key` must be secret and random (the caller draws it), and
    /// the same in every worker and across reloads, or salts would change between attempts.
    pub fn mock(username: &str, mock_key: &[u8; KEY_LEN], server_nonce: Nonce) -> ScramServer {
        let (salt, client_key, server_key) = mock_material(username, mock_key);
        ScramServer {
            iterations: DEFAULT_ITERATIONS,
            salt_b64: B64.encode(salt),
            stored_key: sha256(&client_key),
            server_key,
            doomed: true,
            binding: None,
            server_nonce,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Binds the exchange to a TLS session: SCRAM-SHA-256-PLUS was offered, with this
    /// tls-server-end-point data (RFC 5929).
    pub fn with_channel_binding(mut self, binding: &[u8]) -> ScramServer {
        self.binding = Some(binding.to_vec());
        self
    }

    /// Whether this is a [`ScramServer::mock`] exchange.
    pub fn is_mock(&self) -> bool {
        self.doomed
    }

    fn fail(&mut self, error: ScramError) -> ScramError {
        self.state = ServerState::Failed(error.clone());
        error
    }

    fn out_of_order(&mut self) -> ScramError {
        match &self.state {
            ServerState::Failed(error) => error.clone(),
            _ => self.fail(ScramError::OutOfOrder),
        }
    }

    /// Takes client-first-message (the `SASLInitialResponse` data) of a client that chose
    /// SCRAM-SHA-256, returns server-first-message.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        self.handle_client_first_as(false, msg)
    }

    /// [`ScramServer::handle_client_first`] for the mechanism the client chose: `plus` for
    /// SCRAM-SHA-256-PLUS. The GS2 flag must agree with it, as PostgreSQL checks.
    pub fn handle_client_first_as(
        &mut self,
        plus: bool,
        msg: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(self.out_of_order());
        }
        let first = match parse_client_first(msg) {
            Ok(first) => first,
            Err(error) => return Err(self.fail(error)),
        };
        let agreed = match (first.flag, plus) {
            (Gs2Flag::Plus, _) if self.binding.is_none() => {
                Err(ScramError::ChannelBindingUnsupported)
            }
            (Gs2Flag::Plus, true) => Ok(()),
            (Gs2Flag::Plus, false) => Err(ScramError::ChannelBindingNegotiation(
                "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
            )),
            (_, true) => Err(ScramError::ChannelBindingNegotiation(
                "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
            )),
            // RFC 5802: `y` to a server that offers binding means someone removed the offer.
            (Gs2Flag::Yes, false) if self.binding.is_some() => {
                Err(ScramError::ChannelBindingNegotiation(
                    "the client supports SCRAM channel binding but thinks the server does not, and this server does",
                ))
            }
            _ => Ok(()),
        };
        if let Err(error) = agreed {
            return Err(self.fail(error));
        }
        let nonce = format!("{}{}", first.nonce, self.server_nonce.as_str());
        let server_first = format!("r={nonce},s={},i={}", self.salt_b64, self.iterations);
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal {
            flag: first.flag,
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Takes client-final-message (the `SASLResponse` data). On success returns the
    /// server-final-message and the client's recovered `ClientKey`.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<ScramServerSuccess, ScramError> {
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        let ServerState::AwaitingClientFinal {
            flag,
            client_first_bare,
            server_first,
            nonce,
        } = state
        else {
            self.state = state;
            return Err(self.out_of_order());
        };
        match self.verify_client_final(msg, flag, &client_first_bare, &server_first, &nonce) {
            Ok(success) => Ok(success),
            Err(error) => Err(self.fail(error)),
        }
    }

    fn verify_client_final(
        &self,
        msg: &[u8],
        flag: Gs2Flag,
        client_first_bare: &str,
        server_first: &str,
        nonce: &str,
    ) -> Result<ScramServerSuccess, ScramError> {
        let last = parse_client_final(msg)?;
        if last.channel_binding != flag.channel_binding_b64(self.binding.as_deref()) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if !ct_eq(last.nonce.as_bytes(), nonce.as_bytes()) {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = [client_first_bare, server_first, last.without_proof].join(",");
        let client_signature = hmac(&self.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&last.proof, &client_signature);
        let proof_ok: bool = sha256(&client_key).ct_eq(&self.stored_key).into();
        if !proof_ok || self.doomed {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = hmac(&self.server_key, &[auth_message.as_bytes()]);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(B64.encode(server_signature).as_bytes());
        Ok(ScramServerSuccess {
            server_final,
            client_key,
        })
    }
}

/// The salt the pooler shows `username` whenever it has no stored salt of its own: for a
/// plaintext auth-file password ([`ScramSecret::for_user_password`]) and for a mock exchange
/// (unknown users, md5 hashes). An HMAC of the name under a key the supervisor makes once at
/// start, so it is stable across logins, workers and reloads, unguessable without the key,
/// and made the same way whether or not the user exists.
pub fn user_salt(username: &str, key: &[u8; KEY_LEN]) -> [u8; DEFAULT_SALT_LEN] {
    let full = hmac(key, &[b"pgbouncers mock salt\0", username.as_bytes()]);
    let mut salt = [0u8; DEFAULT_SALT_LEN];
    for (s, f) in salt.iter_mut().zip(full) {
        *s = f;
    }
    salt
}

/// Salt, ClientKey and ServerKey of a mock exchange: stable per user, unguessable
/// without `mock_key`.
fn mock_material(
    username: &str,
    mock_key: &[u8; KEY_LEN],
) -> ([u8; DEFAULT_SALT_LEN], [u8; KEY_LEN], [u8; KEY_LEN]) {
    let salt = user_salt(username, mock_key);
    let salted = hmac(mock_key, &[b"pgbouncers mock key\0", username.as_bytes()]);
    let (client_key, server_key) = keys_from_salted(&salted);
    (salt, client_key, server_key)
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.state {
            ServerState::AwaitingClientFirst => "awaiting client-first",
            ServerState::AwaitingClientFinal { .. } => "awaiting client-final",
            ServerState::Done => "done",
            ServerState::Failed(_) => "failed",
        };
        f.debug_struct("ScramServer")
            .field("mock", &self.doomed)
            .field("iterations", &self.iterations)
            .field("step", &step)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Client side

/// What the pooler proves its identity with when logging into PostgreSQL.
#[derive(Clone)]
pub enum ScramCredentials {
    /// A plaintext password: SaltedPassword is derived with the server's salt and count.
    Password(String),
    /// Pass-through: keys recovered from the client's own SCRAM exchange
    /// ([`ScramServerSuccess::client_key`]) and the auth file's secret (`server_key`).
    Keys {
        client_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    },
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredentials::Password(_) => f.write_str("Password(<redacted>)"),
            ScramCredentials::Keys { .. } => f.write_str("Keys(<redacted>)"),
        }
    }
}

enum ClientState {
    AwaitingServerFirst,
    AwaitingServerFinal {
        auth_message: String,
        server_key: [u8; KEY_LEN],
    },
    Done,
    Failed(ScramError),
}

/// The client side of one SCRAM-SHA-256 exchange, for the pooler logging into PostgreSQL.
///
/// Send [`client_first`](Self::client_first) in `SASLInitialResponse` (mechanism
/// `SCRAM-SHA-256`), pass the `AuthenticationSASLContinue` data to
/// [`handle_server_first`](Self::handle_server_first) and send its result in
/// `SASLResponse`, then pass the `AuthenticationSASLFinal` data to
/// [`handle_server_final`](Self::handle_server_final). Errors are sticky.
pub struct ScramClient {
    credentials: ScramCredentials,
    nonce: Nonce,
    /// Always empty in production (PostgreSQL ignores it); the RFC test vector names a user.
    username: String,
    state: ClientState,
}

impl ScramClient {
    pub fn new(credentials: ScramCredentials, nonce: Nonce) -> ScramClient {
        ScramClient {
            credentials,
            nonce,
            username: String::new(),
            state: ClientState::AwaitingServerFirst,
        }
    }

    /// Log in with a plaintext password.
    pub fn with_password(password: &str, nonce: Nonce) -> ScramClient {
        ScramClient::new(ScramCredentials::Password(password.to_owned()), nonce)
    }

    /// SCRAM pass-through: log in with a `ClientKey` recovered from the client's exchange
    /// and the `ServerKey` of the secret both the pooler and PostgreSQL store. Works only
    /// if PostgreSQL's secret for the user is the same (same salt and iterations).
    pub fn with_keys(
        client_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
        nonce: Nonce,
    ) -> ScramClient {
        ScramClient::new(
            ScramCredentials::Keys {
                client_key,
                server_key,
            },
            nonce,
        )
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.username, self.nonce.as_str())
    }

    /// client-first-message: `n,,n=,r=<nonce>`. The same bytes on every call.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    fn fail(&mut self, error: ScramError) -> ScramError {
        self.state = ClientState::Failed(error.clone());
        error
    }

    fn out_of_order(&mut self) -> ScramError {
        match &self.state {
            ClientState::Failed(error) => error.clone(),
            _ => self.fail(ScramError::OutOfOrder),
        }
    }

    /// Takes server-first-message, returns client-final-message (with the proof).
    /// With a password this runs PBKDF2 with the server's count, capped at
    /// [`MAX_CLIENT_ITERATIONS`].
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::AwaitingServerFirst) {
            return Err(self.out_of_order());
        }
        match self.answer_server_first(msg) {
            Ok((reply, auth_message, server_key)) => {
                self.state = ClientState::AwaitingServerFinal {
                    auth_message,
                    server_key,
                };
                Ok(reply)
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    fn answer_server_first(
        &self,
        msg: &[u8],
    ) -> Result<(Vec<u8>, String, [u8; KEY_LEN]), ScramError> {
        let first = parse_server_first(msg)?;
        let ours = self.nonce.as_str();
        if first.nonce.len() <= ours.len() || !first.nonce.starts_with(ours) {
            return Err(ScramError::NonceMismatch);
        }
        let (client_key, server_key) = match &self.credentials {
            ScramCredentials::Password(password) => {
                if first.iterations > MAX_CLIENT_ITERATIONS {
                    return Err(ScramError::IterationsTooHigh(first.iterations));
                }
                keys_from_salted(&salted_password_cached(
                    password,
                    &first.salt,
                    first.iterations,
                ))
            }
            ScramCredentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let without_proof = format!(
            "c={},r={}",
            Gs2Flag::No.channel_binding_b64(None),
            first.nonce
        );
        // parse_server_first succeeded, so msg is UTF-8.
        let server_first = message_str(msg)?;
        let auth_message = [
            self.client_first_bare().as_str(),
            server_first,
            without_proof.as_str(),
        ]
        .join(",");
        let client_signature = hmac(&sha256(&client_key), &[auth_message.as_bytes()]);
        let proof = xor(&client_key, &client_signature);
        let reply = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok((reply, auth_message, server_key))
    }

    /// Takes server-final-message and checks the server's signature. `e=` from the server
    /// comes back as [`ScramError::ServerError`].
    pub fn handle_server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        let ClientState::AwaitingServerFinal {
            auth_message,
            server_key,
        } = state
        else {
            self.state = state;
            return Err(self.out_of_order());
        };
        let verdict = match parse_server_final(msg) {
            Ok(ServerFinal::Error(text)) => Err(ScramError::ServerError(text)),
            Ok(ServerFinal::Verifier(signature)) => {
                let expected = hmac(&server_key, &[auth_message.as_bytes()]);
                if ct_eq(&expected, &signature) {
                    Ok(())
                } else {
                    Err(ScramError::ServerSignatureMismatch)
                }
            }
            Err(error) => Err(error),
        };
        verdict.map_err(|error| self.fail(error))
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.state {
            ClientState::AwaitingServerFirst => "awaiting server-first",
            ClientState::AwaitingServerFinal { .. } => "awaiting server-final",
            ClientState::Done => "done",
            ClientState::Failed(_) => "failed",
        };
        f.debug_struct("ScramClient")
            .field("credentials", &self.credentials)
            .field("step", &step)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use proptest::prelude::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn nonce(text: &str) -> Nonce {
        Nonce::new(text).expect("valid test nonce")
    }

    fn rfc_secret() -> ScramSecret {
        let salt = B64.decode(RFC_SALT).expect("RFC salt");
        ScramSecret::from_password("pencil", &salt, 4096)
    }

    /// Cheap secrets for tests that run many exchanges (PBKDF2 is slow in debug builds).
    /// A secret shaped like a generated one (16-byte salt, 4096 iterations), with a fixed salt.
    fn generated_secret(password: &str) -> ScramSecret {
        ScramSecret::from_password(password, &[0x5a; DEFAULT_SALT_LEN], DEFAULT_ITERATIONS)
    }

    /// A nonce as [`Nonce::from_random`] makes one, from fixed bytes.
    fn drawn_nonce(byte: u8) -> Nonce {
        Nonce::from_random(&[byte; RAW_NONCE_LEN])
    }

    fn cheap_secret(password: &str) -> ScramSecret {
        ScramSecret::from_password(password, b"0123456789abcdef", 2)
    }

    /// Runs a postgres-protocol client against `server`; returns the server's outcome and
    /// whether the client accepted the server's signature.
    fn pg_client_exchange(
        server: &mut ScramServer,
        password: &str,
        binding: ChannelBinding,
    ) -> (Result<ScramServerSuccess, ScramError>, bool) {
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let server_first = server
            .handle_client_first(client.message())
            .expect("server accepts postgres-protocol's client-first");
        client
            .update(&server_first)
            .expect("postgres-protocol accepts our server-first");
        let outcome = server.handle_client_final(client.message());
        let client_happy = match &outcome {
            Ok(success) => client.finish(&success.server_final).is_ok(),
            Err(_) => false,
        };
        (outcome, client_happy)
    }

    /// Runs our client against our server.
    fn our_exchange(
        client: &mut ScramClient,
        server: &mut ScramServer,
    ) -> Result<ScramServerSuccess, ScramError> {
        let server_first = server.handle_client_first(&client.client_first())?;
        let client_final = client.handle_server_first(&server_first)?;
        let success = server.handle_client_final(&client_final)?;
        client.handle_server_final(&success.server_final)?;
        Ok(success)
    }

    // --- RFC 7677 vector -------------------------------------------------------------

    #[test]
    fn rfc7677_server_side() {
        let secret = rfc_secret();
        let mut server = ScramServer::new(&secret, nonce(RFC_SERVER_NONCE));
        let server_first = server
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes())
            .expect("client-first");
        assert_eq!(server_first, RFC_SERVER_FIRST.as_bytes());
        let success = server
            .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
            .expect("RFC proof verifies");
        assert_eq!(success.server_final, RFC_SERVER_FINAL.as_bytes());
        // The recovered ClientKey is HMAC(SaltedPassword, "Client Key"), computed here
        // straight from the crates rather than through our helpers.
        let salt = B64.decode(RFC_SALT).expect("salt");
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(b"pencil", &salt, 4096);
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&salted).expect("key");
        mac.update(b"Client Key");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(success.client_key, expected);
    }

    #[test]
    fn rfc7677_client_side() {
        let mut client = ScramClient::with_password("pencil", nonce(RFC_CLIENT_NONCE));
        client.username = "user".to_owned();
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let client_final = client
            .handle_server_first(RFC_SERVER_FIRST.as_bytes())
            .expect("server-first");
        assert_eq!(client_final, RFC_CLIENT_FINAL.as_bytes());
        client
            .handle_server_final(RFC_SERVER_FINAL.as_bytes())
            .expect("RFC server signature verifies");
    }

    #[test]
    fn rfc7677_client_rejects_wrong_server_signature() {
        let mut client = ScramClient::with_password("pencil", nonce(RFC_CLIENT_NONCE));
        client.username = "user".to_owned();
        client
            .handle_server_first(RFC_SERVER_FIRST.as_bytes())
            .expect("server-first");
        let forged = format!("v={}", B64.encode([7u8; 32]));
        assert_eq!(
            client.handle_server_final(forged.as_bytes()),
            Err(ScramError::ServerSignatureMismatch)
        );
        // Sticky: the real signature no longer helps.
        assert_eq!(
            client.handle_server_final(RFC_SERVER_FINAL.as_bytes()),
            Err(ScramError::ServerSignatureMismatch)
        );
    }

    #[test]
    fn rfc7677_server_rejects_wrong_password() {
        let salt = B64.decode(RFC_SALT).expect("salt");
        let secret = ScramSecret::from_password("pencil2", &salt, 4096);
        let mut server = ScramServer::new(&secret, nonce(RFC_SERVER_NONCE));
        server
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes())
            .expect("client-first");
        assert_eq!(
            server
                .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
                .map(|_| ()),
            Err(ScramError::AuthenticationFailed)
        );
    }

    // --- Interop with postgres-protocol ----------------------------------------------

    #[test]
    fn postgres_protocol_client_logs_in_and_keys_pass_through() {
        let secret = generated_secret("s3cret pässword");
        for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            let mut server = ScramServer::new(&secret, drawn_nonce(1));
            let (outcome, client_happy) =
                pg_client_exchange(&mut server, "s3cret pässword", binding);
            let success = outcome.expect("right password succeeds");
            assert!(
                client_happy,
                "postgres-protocol verifies our server signature"
            );
            assert_eq!(sha256(&success.client_key), secret.stored_key);

            // Pass-through: the recovered ClientKey logs into a second server holding
            // the same secret, without the password.
            let mut upstream = ScramServer::new(&secret, drawn_nonce(2));
            let mut client =
                ScramClient::with_keys(success.client_key, secret.server_key, drawn_nonce(3));
            let upstream_success =
                our_exchange(&mut client, &mut upstream).expect("pass-through login");
            assert_eq!(upstream_success.client_key, success.client_key);
        }
    }

    #[test]
    fn postgres_protocol_client_with_wrong_password_fails() {
        let secret = generated_secret("right");
        let mut server = ScramServer::new(&secret, drawn_nonce(4));
        let (outcome, client_happy) =
            pg_client_exchange(&mut server, "wrong", ChannelBinding::unsupported());
        assert_eq!(outcome.map(|_| ()), Err(ScramError::AuthenticationFailed));
        assert!(!client_happy);
    }

    #[test]
    fn a_password_login_derives_once_per_salt() {
        let derived = || DERIVATIONS.with(|d| d.get());
        let secret = cheap_secret("cache me");
        let before = derived();
        for i in 0..3 {
            let mut server = ScramServer::new(&secret, nonce(&format!("srv{i}")));
            let mut client = ScramClient::with_password("cache me", nonce(&format!("cli{i}")));
            our_exchange(&mut client, &mut server).expect("login");
        }
        assert_eq!(
            derived() - before,
            1,
            "one PBKDF2 for three logins with one salt"
        );
        // Another salt (the password changed in PostgreSQL) derives again, and the right keys.
        let other = ScramSecret::from_password("cache me", b"another salt....", 2);
        let mut server = ScramServer::new(&other, nonce("srv9"));
        let mut client = ScramClient::with_password("cache me", nonce("cli9"));
        our_exchange(&mut client, &mut server).expect("login with the new salt");
        assert_eq!(derived() - before, 2);
        // A wrong password is not served from the cache.
        let mut server = ScramServer::new(&secret, nonce("srv8"));
        let mut client = ScramClient::with_password("wrong", nonce("cli8"));
        assert!(our_exchange(&mut client, &mut server).is_err());
    }

    #[test]
    fn pass_through_with_wrong_server_key_is_caught_by_client() {
        let secret = cheap_secret("pw");
        let other = cheap_secret("other");
        let mut first = ScramServer::new(&secret, nonce("srv1"));
        let mut client = ScramClient::with_password("pw", nonce("cli1"));
        let success = our_exchange(&mut client, &mut first).expect("login");
        // Right ClientKey, wrong ServerKey: the server accepts us but we reject it.
        let mut upstream = ScramServer::new(&secret, nonce("srv2"));
        let mut client = ScramClient::with_keys(success.client_key, other.server_key, nonce("c2"));
        assert_eq!(
            our_exchange(&mut client, &mut upstream).map(|_| ()),
            Err(ScramError::ServerSignatureMismatch)
        );
    }

    #[test]
    fn secret_from_postgres_protocol_parses_verifies_and_round_trips() {
        for password in ["pencil", "pä ss", "I\u{00AD}X", "bell\u{0007}", ""] {
            let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
            let secret = ScramSecret::parse(&text).expect("postgres-protocol secret parses");
            assert_eq!(secret.encode(), text);
            assert_eq!(secret.iterations, DEFAULT_ITERATIONS);
            assert_eq!(secret.salt.len(), DEFAULT_SALT_LEN);
            assert!(secret.verify_password(password));
            assert!(!secret.verify_password("not it"));
            assert_eq!(
                ScramSecret::from_password(password, &secret.salt, secret.iterations),
                secret
            );
        }
    }

    #[test]
    fn our_server_accepts_postgres_protocol_client_against_its_secret() {
        let text = postgres_protocol::password::scram_sha_256(b"hunter2");
        let secret = ScramSecret::parse(&text).expect("parses");
        let mut server = ScramServer::new(&secret, drawn_nonce(5));
        let (outcome, client_happy) =
            pg_client_exchange(&mut server, "hunter2", ChannelBinding::unsupported());
        assert!(outcome.is_ok() && client_happy);
    }

    #[test]
    fn saslprep_is_applied_and_falls_back_to_raw_bytes() {
        let salt = b"salty";
        // U+00AD SOFT HYPHEN maps to nothing; U+2000 EN QUAD maps to a space.
        assert_eq!(
            ScramSecret::from_password("I\u{00AD}X", salt, 2),
            ScramSecret::from_password("IX", salt, 2)
        );
        assert_eq!(
            ScramSecret::from_password("a\u{2000}b", salt, 2),
            ScramSecret::from_password("a b", salt, 2)
        );
        // U+0007 is prohibited: SASLprep fails and the raw bytes are used.
        let raw = ScramSecret::from_password("bell\u{0007}", salt, 2);
        assert_eq!(raw, ScramSecret::from_password("bell\u{0007}", salt, 2));
        assert_ne!(raw, ScramSecret::from_password("bell", salt, 2));
    }

    // --- Our client against our server -----------------------------------------------

    #[test]
    fn our_client_and_server_agree() {
        let secret = generated_secret("correct horse");
        let mut server = ScramServer::new(&secret, drawn_nonce(6));
        let mut client = ScramClient::with_password("correct horse", drawn_nonce(7));
        let success = our_exchange(&mut client, &mut server).expect("login");
        assert_eq!(sha256(&success.client_key), secret.stored_key);

        let mut server = ScramServer::new(&secret, drawn_nonce(8));
        let mut client = ScramClient::with_password("battery staple", drawn_nonce(9));
        assert_eq!(
            our_exchange(&mut client, &mut server).map(|_| ()),
            Err(ScramError::AuthenticationFailed)
        );
    }

    // Fresh salts and nonces from real randomness: tested with the worker's draws
    // (pgbouncers_worker::auth).

    #[test]
    fn drawn_nonces_are_24_printable_chars_and_differ_by_their_bytes() {
        let a = drawn_nonce(10);
        let b = drawn_nonce(11);
        assert_eq!(a.as_str().len(), 24);
        assert!(is_valid_nonce(a.as_str()));
        assert_ne!(a, b);
    }

    // --- Mock server -----------------------------------------------------------------

    #[test]
    fn mock_server_runs_the_exchange_and_always_fails() {
        let key = [0x42; KEY_LEN];
        let mut server = ScramServer::mock("ghost", &key, nonce("srv"));
        assert!(server.is_mock());
        let mut client = ScramClient::with_password("anything", nonce("cli"));
        let server_first = server
            .handle_client_first(&client.client_first())
            .expect("mock answers client-first");
        let first = parse_server_first(&server_first).expect("well-formed server-first");
        assert_eq!(first.salt.len(), DEFAULT_SALT_LEN);
        assert_eq!(first.iterations, DEFAULT_ITERATIONS);
        let client_final = client
            .handle_server_first(&server_first)
            .expect("client-final");
        assert_eq!(
            server.handle_client_final(&client_final).map(|_| ()),
            Err(ScramError::AuthenticationFailed)
        );

        // Even a client holding the mock's own keys (a proof that verifies) is refused.
        let (salt, client_key, server_key) = mock_material("ghost", &key);
        let mut server = ScramServer::mock("ghost", &key, nonce("srv"));
        let mut insider = ScramClient::with_keys(client_key, server_key, nonce("cli"));
        assert_eq!(
            our_exchange(&mut insider, &mut server).map(|_| ()),
            Err(ScramError::AuthenticationFailed)
        );
        // The same keys log into a real server holding them, so the refusal above is the
        // mock's doing, not a bad proof.
        let real = ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        };
        let mut server = ScramServer::new(&real, nonce("srv"));
        let mut insider = ScramClient::with_keys(client_key, server_key, nonce("cli"));
        assert!(our_exchange(&mut insider, &mut server).is_ok());
    }

    /// A SCRAM-SHA-256-PLUS client by hand (the crate's client never binds): client-first
    /// with `header`, client-final binding `sent_binding`, for the mechanism `plus`.
    fn bound_exchange(
        server: &mut ScramServer,
        secret: &ScramSecret,
        header: &str,
        plus: bool,
        sent_binding: &[u8],
    ) -> Result<ScramServerSuccess, ScramError> {
        let client_key = secret.client_key_for_password("pw").expect("key");
        let bare = "n=,r=cli";
        let first = server.handle_client_first_as(plus, format!("{header}{bare}").as_bytes())?;
        let server_first = String::from_utf8(first).unwrap();
        let nonce = parse_server_first(server_first.as_bytes())
            .unwrap()
            .nonce
            .to_owned();
        let mut cb = header.as_bytes().to_vec();
        if header.starts_with("p=") {
            cb.extend_from_slice(sent_binding);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(cb));
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac(&secret.stored_key, &[auth_message.as_bytes()]);
        let proof = xor(&client_key, &signature);
        let last = format!("{without_proof},p={}", B64.encode(proof));
        server.handle_client_final(last.as_bytes())
    }

    #[test]
    fn channel_binding_is_checked_and_negotiated_as_postgresql_does() {
        let secret = ScramSecret::from_password("pw", b"0123456789abcdef", 4096);
        let binding = [7u8; 32];
        let plus = "p=tls-server-end-point,,";
        let bound = || ScramServer::new(&secret, nonce("srv")).with_channel_binding(&binding);
        // The session's own binding data: accepted.
        assert!(bound_exchange(&mut bound(), &secret, plus, true, &binding).is_ok());
        // Another session's (a relayed exchange): refused, though the password is right.
        assert_eq!(
            bound_exchange(&mut bound(), &secret, plus, true, &[8u8; 32]).err(),
            Some(ScramError::ChannelBindingMismatch)
        );
        // Mechanism and flag must agree.
        assert!(matches!(
            bound_exchange(&mut bound(), &secret, plus, false, &binding).err(),
            Some(ScramError::ChannelBindingNegotiation(_))
        ));
        assert!(matches!(
            bound_exchange(&mut bound(), &secret, "n,,", true, &binding).err(),
            Some(ScramError::ChannelBindingNegotiation(_))
        ));
        // `y` to a server that offered PLUS: someone removed the offer on the way.
        assert!(matches!(
            bound_exchange(&mut bound(), &secret, "y,,", false, &binding).err(),
            Some(ScramError::ChannelBindingNegotiation(_))
        ));
        // Plain SCRAM still works on a TLS session, and `y` without an offer is fine.
        assert!(bound_exchange(&mut bound(), &secret, "n,,", false, &binding).is_ok());
        let mut unbound = ScramServer::new(&secret, nonce("srv"));
        assert!(bound_exchange(&mut unbound, &secret, "y,,", false, &binding).is_ok());
        // Without TLS there is nothing to bind to.
        let mut unbound = ScramServer::new(&secret, nonce("srv"));
        assert_eq!(
            bound_exchange(&mut unbound, &secret, plus, true, &binding).err(),
            Some(ScramError::ChannelBindingUnsupported)
        );
        // Only tls-server-end-point exists.
        assert!(matches!(
            bound().handle_client_first_as(true, b"p=tls-unique,,n=,r=cli"),
            Err(ScramError::Unsupported(_))
        ));
    }

    #[test]
    fn mock_salt_is_stable_per_user_and_key() {
        let salt_of = |user: &str, key: &[u8; 32]| {
            let mut server = ScramServer::mock(user, key, nonce("s"));
            let reply = server
                .handle_client_first(b"n,,n=,r=c")
                .expect("client-first");
            parse_server_first(&reply).expect("server-first").salt
        };
        let key = [1u8; 32];
        assert_eq!(salt_of("ghost", &key), salt_of("ghost", &key));
        assert_ne!(salt_of("ghost", &key), salt_of("phantom", &key));
        assert_ne!(salt_of("ghost", &key), salt_of("ghost", &[2u8; 32]));
    }

    #[test]
    fn mock_server_reports_protocol_errors_like_a_real_one() {
        let real = cheap_secret("pw");
        let key = [3u8; 32];
        for mut server in [
            ScramServer::new(&real, nonce("srv")),
            ScramServer::mock("ghost", &key, nonce("srv")),
        ] {
            server
                .handle_client_first(b"n,,n=,r=cli")
                .expect("client-first");
            let bad_nonce = format!("c=biws,r=cliXXX,p={}", B64.encode([0u8; 32]));
            assert_eq!(
                server.handle_client_final(bad_nonce.as_bytes()).map(|_| ()),
                Err(ScramError::NonceMismatch)
            );
        }
    }

    // --- Server-side protocol checks -------------------------------------------------

    fn server_after_first(client_first: &str) -> ScramServer {
        let mut server = ScramServer::new(&cheap_secret("pw"), nonce("SRV"));
        server
            .handle_client_first(client_first.as_bytes())
            .expect("client-first accepted");
        server
    }

    #[test]
    fn server_rejects_bad_client_first_messages() {
        let cases: &[(&[u8], ScramError)] = &[
            (
                b"p=tls-server-end-point,,n=,r=abc",
                ScramError::ChannelBindingUnsupported,
            ),
            (
                b"n,a=admin,n=,r=abc",
                ScramError::Unsupported("authorization identity"),
            ),
            (
                b"n,,m=ext,n=,r=abc",
                ScramError::Unsupported("mandatory extension"),
            ),
            (
                b"x,,n=,r=abc",
                ScramError::Malformed("invalid GS2 channel-binding flag"),
            ),
            (b"n,x,n=,r=abc", ScramError::Malformed("invalid GS2 header")),
            (
                b"",
                ScramError::Malformed("invalid GS2 channel-binding flag"),
            ),
            (
                b"n,,r=abc",
                ScramError::Malformed("client-first-message lacks the user name attribute"),
            ),
            (
                b"n,,n=",
                ScramError::Malformed("client-first-message lacks the nonce"),
            ),
            (
                b"n,,n=,s=abc",
                ScramError::Malformed("client-first-message lacks the nonce"),
            ),
            (
                b"n,,n=,r=",
                ScramError::Malformed("client nonce is empty, too long or not printable"),
            ),
            (
                b"n,,n=,r=a b",
                ScramError::Malformed("client nonce is empty, too long or not printable"),
            ),
            (
                b"n,,n=,r=abc,",
                ScramError::Malformed("expected an attribute of the form x=value"),
            ),
            (
                b"n,,n=,r=abc,junk",
                ScramError::Malformed("expected an attribute of the form x=value"),
            ),
            (
                b"n,,n=\xff,r=abc",
                ScramError::Malformed("message is not valid UTF-8"),
            ),
        ];
        for (msg, expected) in cases {
            let mut server = ScramServer::new(&cheap_secret("pw"), nonce("SRV"));
            assert_eq!(
                server.handle_client_first(msg).as_ref(),
                Err(expected),
                "message {:?}",
                String::from_utf8_lossy(msg)
            );
        }
        let long = format!("n,,n=,r={}", "a".repeat(MAX_MESSAGE_LEN));
        let mut server = ScramServer::new(&cheap_secret("pw"), nonce("SRV"));
        assert_eq!(
            server.handle_client_first(long.as_bytes()),
            Err(ScramError::Malformed("message too long"))
        );
    }

    #[test]
    fn server_accepts_user_names_and_extensions_it_ignores() {
        let mut server = ScramServer::new(&cheap_secret("pw"), nonce("SRV"));
        let reply = server
            .handle_client_first(b"y,,n=someone=2Celse,r=abc,x=ext")
            .expect("accepted");
        assert!(reply.starts_with(b"r=abcSRV,s="));
    }

    #[test]
    fn server_rejects_bad_client_final_messages() {
        let proof = B64.encode([0u8; 32]);
        let cases: Vec<(&str, String, ScramError)> = vec![
            (
                "n,,n=,r=cli",
                format!("c=eSws,r=cliSRV,p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                "y,,n=,r=cli",
                format!("c=biws,r=cliSRV,p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                "n,,n=,r=cli",
                format!("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=cliSRV,p={proof}"),
                ScramError::ChannelBindingMismatch,
            ),
            (
                "n,,n=,r=cli",
                format!("c=biws,r=cliSRV2,p={proof}"),
                ScramError::NonceMismatch,
            ),
            (
                "n,,n=,r=cli",
                format!("c=biws,r=cli,p={proof}"),
                ScramError::NonceMismatch,
            ),
            (
                "n,,n=,r=cli",
                "c=biws,r=cliSRV".to_owned(),
                ScramError::Malformed("client-final-message lacks the proof"),
            ),
            (
                "n,,n=,r=cli",
                "c=biws,r=cliSRV,p=AAAA".to_owned(),
                ScramError::Malformed("proof is not 32 bytes of base64"),
            ),
            (
                "n,,n=,r=cli",
                format!("c=biws,r=cliSRV,p={proof},x=1"),
                ScramError::Malformed("garbage at the end of client-final-message"),
            ),
            (
                "n,,n=,r=cli",
                format!("r=cliSRV,c=biws,p={proof}"),
                ScramError::Malformed("client-final-message lacks channel binding"),
            ),
            (
                "n,,n=,r=cli",
                format!("c=biws,p={proof}"),
                ScramError::Malformed("client-final-message lacks the nonce"),
            ),
            (
                "n,,n=,r=cli",
                format!("c=biws,r=cliSRV,p={proof}"),
                ScramError::AuthenticationFailed,
            ),
            (
                "n,,n=,r=cli",
                format!("c=biws,r=cliSRV,x=ext,p={proof}"),
                ScramError::AuthenticationFailed,
            ),
        ];
        for (first, last, expected) in cases {
            let mut server = server_after_first(first);
            assert_eq!(
                server.handle_client_final(last.as_bytes()).map(|_| ()),
                Err(expected.clone()),
                "client-final {last:?}"
            );
            // Errors are sticky.
            assert_eq!(
                server.handle_client_final(last.as_bytes()).map(|_| ()),
                Err(expected)
            );
        }
    }

    #[test]
    fn server_calls_out_of_order_fail() {
        let mut server = ScramServer::new(&cheap_secret("pw"), nonce("SRV"));
        assert_eq!(
            server.handle_client_final(b"c=biws,r=x,p=y").map(|_| ()),
            Err(ScramError::OutOfOrder)
        );
        assert_eq!(
            server.handle_client_first(b"n,,n=,r=abc"),
            Err(ScramError::OutOfOrder)
        );

        let mut server = server_after_first("n,,n=,r=abc");
        assert_eq!(
            server.handle_client_first(b"n,,n=,r=abc"),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn server_after_success_refuses_more_messages() {
        let secret = cheap_secret("pw");
        let mut server = ScramServer::new(&secret, nonce("SRV"));
        let mut client = ScramClient::with_password("pw", nonce("cli"));
        let server_first = server
            .handle_client_first(&client.client_first())
            .expect("first");
        let client_final = client.handle_server_first(&server_first).expect("final");
        server.handle_client_final(&client_final).expect("success");
        assert_eq!(
            server.handle_client_final(&client_final).map(|_| ()),
            Err(ScramError::OutOfOrder)
        );
    }

    // --- Client-side protocol checks -------------------------------------------------

    #[test]
    fn client_first_message_shape() {
        let client = ScramClient::with_password("pw", nonce("abc"));
        assert_eq!(client.client_first(), b"n,,n=,r=abc");
        assert_eq!(client.client_first(), client.client_first());
    }

    #[test]
    fn client_rejects_bad_server_first_messages() {
        let salt = B64.encode(b"salt");
        let cases: Vec<(String, ScramError)> = vec![
            (
                format!("r=cliSRV,s={salt},i={}", MAX_CLIENT_ITERATIONS + 1),
                ScramError::IterationsTooHigh(MAX_CLIENT_ITERATIONS + 1),
            ),
            (format!("r=cli,s={salt},i=4096"), ScramError::NonceMismatch),
            (
                format!("r=xliSRV,s={salt},i=4096"),
                ScramError::NonceMismatch,
            ),
            (
                format!("m=x,r=cliSRV,s={salt},i=4096"),
                ScramError::Unsupported("mandatory extension"),
            ),
            (
                format!("r=cliSRV,s={salt},i=0"),
                ScramError::Malformed("iteration count is not a positive integer"),
            ),
            (
                format!("r=cliSRV,s={salt},i=-1"),
                ScramError::Malformed("iteration count is not a positive integer"),
            ),
            (
                format!("r=cliSRV,s={salt},i=+5"),
                ScramError::Malformed("iteration count is not a positive integer"),
            ),
            (
                format!("r=cliSRV,s={salt},i=99999999999"),
                ScramError::Malformed("iteration count is not a positive integer"),
            ),
            (
                "r=cliSRV,s=!!!,i=4096".to_owned(),
                ScramError::Malformed("salt is not valid base64"),
            ),
            (
                "r=cliSRV,s=,i=4096".to_owned(),
                ScramError::Malformed("salt is not valid base64"),
            ),
            (
                format!("r=cliSRV,i=4096,s={salt}"),
                ScramError::Malformed("server-first-message lacks the salt"),
            ),
            (
                format!("r=cliSRV,s={salt}"),
                ScramError::Malformed("server-first-message lacks the iteration count"),
            ),
            (
                format!("s={salt},i=4096"),
                ScramError::Malformed("server-first-message lacks the nonce"),
            ),
            (
                format!("r=cli SRV,s={salt},i=4096"),
                ScramError::Malformed("server nonce is empty, too long or not printable"),
            ),
        ];
        for (msg, expected) in cases {
            let mut client = ScramClient::with_password("pw", nonce("cli"));
            assert_eq!(
                client.handle_server_first(msg.as_bytes()),
                Err(expected.clone()),
                "server-first {msg:?}"
            );
            assert_eq!(client.handle_server_first(msg.as_bytes()), Err(expected));
        }
    }

    #[test]
    fn client_with_keys_skips_the_iteration_cap_and_accepts_extensions() {
        let salt = B64.encode(b"salt");
        let msg = format!("r=cliSRV,s={salt},i={},x=ext", u32::MAX);
        let mut client = ScramClient::with_keys([1; 32], [2; 32], nonce("cli"));
        let reply = client
            .handle_server_first(msg.as_bytes())
            .expect("no PBKDF2 needed");
        assert!(reply.starts_with(b"c=biws,r=cliSRV,p="));
    }

    #[test]
    fn client_reports_server_errors_and_bad_final_messages() {
        let cases: &[(&[u8], ScramError)] = &[
            (
                b"e=invalid-proof",
                ScramError::ServerError("invalid-proof".to_owned()),
            ),
            (
                b"e=bad\x01 thing",
                ScramError::ServerError("bad??thing".to_owned()),
            ),
            (
                b"v=AAAA",
                ScramError::Malformed("server signature is not 32 bytes of base64"),
            ),
            (
                b"x=1",
                ScramError::Malformed("server-final-message has neither a verifier nor an error"),
            ),
            (
                b"",
                ScramError::Malformed("expected an attribute of the form x=value"),
            ),
        ];
        for (msg, expected) in cases {
            let secret = cheap_secret("pw");
            let mut server = ScramServer::new(&secret, nonce("SRV"));
            let mut client = ScramClient::with_password("pw", nonce("cli"));
            let server_first = server
                .handle_client_first(&client.client_first())
                .expect("first");
            client.handle_server_first(&server_first).expect("final");
            assert_eq!(client.handle_server_final(msg).as_ref(), Err(expected));
        }
        let long_error = format!("e={}", "x".repeat(1000));
        let Ok(ServerFinal::Error(text)) = parse_server_final(long_error.as_bytes()) else {
            panic!("e= parses as an error");
        };
        assert_eq!(text.len(), MAX_SERVER_ERROR_LEN);
    }

    #[test]
    fn client_calls_out_of_order_fail() {
        let mut client = ScramClient::with_password("pw", nonce("cli"));
        assert_eq!(
            client.handle_server_final(RFC_SERVER_FINAL.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        assert_eq!(
            client.handle_server_first(b"r=cliSRV,s=c2FsdA==,i=1"),
            Err(ScramError::OutOfOrder)
        );
    }

    // --- Stored secrets --------------------------------------------------------------

    #[test]
    fn secret_parse_table() {
        let key = B64.encode([5u8; 32]);
        let salt = B64.encode(b"0123456789abcdef");
        let ok = format!("SCRAM-SHA-256$4096:{salt}${key}:{key}");
        let parsed = ScramSecret::parse(&ok).expect("valid");
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt, b"0123456789abcdef");
        assert_eq!(parsed.stored_key, [5u8; 32]);
        assert_eq!(parsed.encode(), ok);

        let short_key = B64.encode([5u8; 31]);
        let cases: Vec<(String, &str)> = vec![
            (
                format!("SCRAM-SHA-1$4096:{salt}${key}:{key}"),
                "does not start with SCRAM-SHA-256$",
            ),
            (
                format!("scram-sha-256$4096:{salt}${key}:{key}"),
                "does not start with SCRAM-SHA-256$",
            ),
            (
                "SCRAM-SHA-256$4096".to_owned(),
                "missing ':' after the iteration count",
            ),
            (
                format!("SCRAM-SHA-256$4096{salt}${key}:{key}"),
                "missing '$' after the salt",
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}{key}:{key}"),
                "missing '$' after the salt",
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}{key}"),
                "missing ':' between StoredKey and ServerKey",
            ),
            (
                format!("SCRAM-SHA-256$0:{salt}${key}:{key}"),
                "iteration count is not a positive integer",
            ),
            (
                format!("SCRAM-SHA-256$-1:{salt}${key}:{key}"),
                "iteration count is not a positive integer",
            ),
            (
                format!("SCRAM-SHA-256$ 4096:{salt}${key}:{key}"),
                "iteration count is not a positive integer",
            ),
            (
                format!("SCRAM-SHA-256$:{salt}${key}:{key}"),
                "iteration count is not a positive integer",
            ),
            (
                format!("SCRAM-SHA-256$4096:${key}:{key}"),
                "salt is not valid base64",
            ),
            (
                format!("SCRAM-SHA-256$4096:not*b64${key}:{key}"),
                "salt is not valid base64",
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${short_key}:{key}"),
                "StoredKey is not 32 bytes of base64",
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}:{short_key}"),
                "ServerKey is not 32 bytes of base64",
            ),
            (
                format!("SCRAM-SHA-256$4096:{salt}${key}:{key}:{key}"),
                "ServerKey is not 32 bytes of base64",
            ),
            (
                format!(
                    "SCRAM-SHA-256$4096:{}${key}:{key}",
                    "A".repeat(MAX_SECRET_LEN)
                ),
                "too long",
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(
                ScramSecret::parse(&text),
                Err(InvalidScramSecret(reason)),
                "secret {text:?}"
            );
        }
    }

    #[test]
    fn a_cleartext_password_yields_the_client_key_a_scram_login_would() {
        let secret = cheap_secret("hunter2");
        let key = secret
            .client_key_for_password("hunter2")
            .expect("right password");
        assert_eq!(sha256(&key), secret.stored_key);
        assert!(secret.client_key_for_password("hunter3").is_none());
        // The same key a SCRAM exchange with that password recovers.
        let mut server = ScramServer::new(&secret, nonce("SRV"));
        let mut client = ScramClient::with_password("hunter2", nonce("cli"));
        let success = our_exchange(&mut client, &mut server).expect("login");
        assert_eq!(success.client_key, key);
    }

    #[test]
    fn user_salt_is_the_mock_salt_and_for_user_password_uses_it() {
        let key = [3u8; KEY_LEN];
        let (mock_salt, _, _) = mock_material("ann", &key);
        assert_eq!(user_salt("ann", &key), mock_salt);
        assert_ne!(user_salt("bob", &key), mock_salt);
        let secret = ScramSecret::for_user_password("ann", "pw", &key);
        assert_eq!(secret.salt, mock_salt);
        assert_eq!(secret.iterations, DEFAULT_ITERATIONS);
        assert!(secret.verify_password("pw"));
    }

    #[test]
    fn from_password_with_zero_iterations_uses_one() {
        let zero = ScramSecret::from_password("pw", b"salt", 0);
        assert_eq!(zero.iterations, 1);
        assert_eq!(zero, ScramSecret::from_password("pw", b"salt", 1));
        assert!(ScramSecret::parse(&zero.encode()).is_ok());
    }

    #[test]
    fn debug_output_never_shows_keys_or_passwords() {
        let secret = cheap_secret("hunter2");
        let stored = B64.encode(secret.stored_key);
        let server = B64.encode(secret.server_key);
        let text = format!("{secret:?}");
        assert!(text.contains("iterations: 2"), "{text}");
        for hidden in [&stored, &server, &B64.encode(&secret.salt)] {
            assert!(!text.contains(hidden.as_str()), "{text}");
        }

        let client = ScramClient::with_password("hunter2", nonce("cli"));
        assert!(!format!("{client:?}").contains("hunter2"));
        let keys = ScramCredentials::Keys {
            client_key: [0xab; 32],
            server_key: [0xcd; 32],
        };
        let text = format!("{keys:?}");
        assert!(
            !text.contains("171") && !text.contains("ab") && !text.contains("205"),
            "{text}"
        );

        let mut scram_server = ScramServer::new(&secret, nonce("SRV"));
        let mut client = ScramClient::with_password("hunter2", nonce("cli"));
        let success = our_exchange(&mut client, &mut scram_server).expect("login");
        let text = format!("{success:?} {scram_server:?} {client:?}");
        assert!(!text.contains(&B64.encode(success.client_key)), "{text}");
        assert!(
            !text.contains(&format!("{:?}", success.client_key)),
            "{text}"
        );
        assert!(!text.contains(&stored) && !text.contains(&server), "{text}");
    }

    // --- Properties --------------------------------------------------------------------

    /// Attribute soup that reaches past the first checks of every parser.
    fn scram_like() -> impl Strategy<Value = Vec<u8>> {
        let attr = prop_oneof![
            Just("n".to_owned()),
            Just("y".to_owned()),
            Just("p=tls".to_owned()),
            Just(String::new()),
            "[a-z]=[!-~]{0,12}",
            "[rscipvenm]=[A-Za-z0-9+/=]{0,48}",
            Just(format!("p={}", B64.encode([9u8; 32]))),
            Just(format!("v={}", B64.encode([9u8; 32]))),
            Just("c=biws".to_owned()),
            Just("i=4096".to_owned()),
            ".{0,8}",
        ];
        proptest::collection::vec(attr, 0..8).prop_map(|parts| parts.join(",").into_bytes())
    }

    fn any_message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), scram_like()]
    }

    proptest! {
        #[test]
        fn parsers_never_panic(msg in any_message()) {
            let _ = parse_client_first(&msg);
            let _ = parse_client_final(&msg);
            let _ = parse_server_first(&msg);
            let _ = parse_server_final(&msg);
            if let Ok(text) = std::str::from_utf8(&msg) {
                let _ = ScramSecret::parse(text);
                let _ = Nonce::new(text);
            }
        }

        #[test]
        fn state_machines_never_panic(first in any_message(), last in any_message()) {
            let secret = cheap_secret("pw");
            let mut server = ScramServer::new(&secret, nonce("SRV"));
            let _ = server.handle_client_first(&first);
            let _ = server.handle_client_final(&last);

            // Drive the client with a server-first that matches its nonce half the time.
            let mut client = ScramClient::with_keys([1; 32], [2; 32], nonce("cli"));
            let mut server_first = b"r=cli".to_vec();
            server_first.extend_from_slice(&first);
            let _ = client.handle_server_first(&server_first);
            let _ = client.handle_server_first(&first);
            let _ = client.handle_server_final(&last);
        }

        #[test]
        fn client_final_parser_splits_off_the_proof(
            nonce_text in "[!-+--~]{1,40}",
            ext in proptest::option::of("x=[a-z]{0,5}"),
            proof in any::<[u8; 32]>(),
        ) {
            let without = match &ext {
                Some(ext) => format!("c=biws,r={nonce_text},{ext}"),
                None => format!("c=biws,r={nonce_text}"),
            };
            let msg = format!("{without},p={}", B64.encode(proof));
            let parsed = parse_client_final(msg.as_bytes()).expect("valid");
            prop_assert_eq!(parsed.without_proof, without.as_str());
            prop_assert_eq!(parsed.nonce, nonce_text.as_str());
            prop_assert_eq!(parsed.proof, proof);
        }

        #[test]
        fn secret_encoding_round_trips(
            iterations in 1u32..,
            salt in proptest::collection::vec(any::<u8>(), 1..64),
            stored_key in any::<[u8; 32]>(),
            server_key in any::<[u8; 32]>(),
        ) {
            let secret = ScramSecret { iterations, salt, stored_key, server_key };
            prop_assert_eq!(ScramSecret::parse(&secret.encode()), Ok(secret));
        }

        #[test]
        fn exchange_succeeds_exactly_with_the_right_password(
            password in ".{0,20}",
            guess in proptest::option::of(".{0,20}"),
            client_nonce in "[!-+--~]{1,30}",
            server_nonce in "[!-+--~]{1,30}",
            iterations in 1u32..4,
        ) {
            let secret = ScramSecret::from_password(&password, b"salt", iterations);
            let mut server = ScramServer::new(&secret, nonce(&server_nonce));
            // Half the time the right password, half the time (almost surely) a wrong one.
            let guess = guess.unwrap_or_else(|| password.clone());
            let mut client = ScramClient::with_password(&guess, nonce(&client_nonce));
            let outcome = our_exchange(&mut client, &mut server);
            let same = prepare_password(&password) == prepare_password(&guess);
            prop_assert_eq!(outcome.is_ok(), same);
            if let Ok(success) = outcome {
                prop_assert_eq!(sha256(&success.client_key), secret.stored_key);
            }
        }
    }
}
