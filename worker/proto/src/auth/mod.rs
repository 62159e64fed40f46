//! Client and server authentication: userlist, md5, SCRAM-SHA-256, hba.
//!
//! - [`userlist`]: the PgBouncer-format `auth_file` and the [`Secret`] kinds it stores.
//! - [`md5`]: PostgreSQL's md5 hashes and salted challenge responses.
//! - [`scram`]: SCRAM-SHA-256 secrets, the server side for clients and the client
//!   side for logging into PostgreSQL (including SCRAM pass-through).
//! - [`hba`]: PostgreSQL-format `auth_hba_file` rules and their matching.
//!
//! All of it is sans-IO except [`Userlist::load`] and [`hba::Hba::load`], which read
//! their files. Salts, nonces and mock keys are drawn by the caller. Secrets never appear
//! in `Debug` output.

pub mod hba;
pub mod md5;
pub mod scram;
pub mod userlist;

pub use self::md5::{
    md5_hex, md5_password_hash, md5_salted_response, md5_secret_string, md5_verify_response,
    parse_md5_secret,
};
pub use self::scram::{
    InvalidScramSecret, Nonce, ScramClient, ScramCredentials, ScramError, ScramSecret, ScramServer,
    ScramServerSuccess,
};
pub use self::userlist::{
    LineError, Secret, Userlist, UserlistError, UserlistWarning, WarningKind,
};
