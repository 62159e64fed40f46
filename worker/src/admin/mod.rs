//! The admin console: the virtual database `pgbouncers` (alias `pgbouncer`). Counters come
//! from shared memory; lists are gathered from every worker through the supervisor, so every
//! answer covers the whole pooler.

pub use pgbouncers_proto::console as parse;
pub(crate) mod role;
pub(crate) mod session;
pub(crate) mod show;

use crate::config::Config;
use role::is_console;

/// Longest console query accepted.
pub(crate) const MAX_QUERY: usize = 64 * 1024;

/// PgBouncer's fake settings, answered so that drivers connecting to the console work.
pub(crate) const FAKE_PARAMS: [(&str, &str); 6] = [
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
    ("extra_float_digits", "2"),
];

/// Why a SET must be refused here rather than applied. The supervisor reads the auth and
/// hba files at start and on RELOAD only, so a SET of their paths would show in SHOW
/// CONFIG and never be loaded; and `auth_type hba` with no hba rules loaded would refuse
/// every login, the console's own included, until a SIGHUP.
pub(crate) fn set_refused(hba: &crate::auth::hba::Hba, key: &str, value: &str) -> Option<String> {
    let key = key.to_ascii_lowercase();
    match key.as_str() {
        "auth_file" | "auth_hba_file" => Some(format!(
            "{key} cannot be changed with SET: edit it in the configuration file and RELOAD"
        )),
        "auth_type" if value.trim().eq_ignore_ascii_case("hba") && hba.is_empty() => Some(
            "auth_type hba needs the rules of an auth_hba_file and none are loaded: \
                 set auth_hba_file in the configuration file and RELOAD"
                .into(),
        ),
        _ => None,
    }
}

/// A database named in a console command: PgBouncer's errors for the console itself
/// and for names the configuration does not have.
pub(crate) fn console_db_arg(cfg: &Config, db: &str, verb: &str) -> Result<(), String> {
    if is_console(db) {
        return Err(format!("cannot {verb} admin db: {db}"));
    }
    if cfg.database_entry(db).is_none() {
        return Err(format!("no such database: {db}"));
    }
    Ok(())
}
