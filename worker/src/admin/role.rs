//! Who may use the admin console, and which database names mean it.

use crate::config::{Config, ADMIN_DB_NAMES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// In admin_users: every command.
    Admin,
    /// In stats_users: SHOW only.
    Stats,
}

/// Whether a database name means the console (`pgbouncer`, or `pgbouncers`).
pub fn is_console(db: &str) -> bool {
    ADMIN_DB_NAMES.contains(&db)
}

/// The role a user has on the console, if any.
pub(crate) fn console_role(cfg: &Config, user: &str) -> Option<Role> {
    if cfg.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if cfg.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    }
}
