//! The table of top-level settings: SHOW CONFIG's rows, reload rules, and the tests' values.

use std::time::Duration;

use super::Config;

use Reload::{Reloadable, Restart};
use Show::{Flag, Hidden, List, Num, Opt, OptEmpty, Secs, Str, Text, Workers};

/// One top-level setting of [`Config`].
pub struct Setting {
    pub name: &'static str,
    /// How SHOW CONFIG prints it.
    pub show: Show,
    pub reload: Reload,
    /// The default, spelled in YAML.
    pub default: &'static str,
    /// A value other than the default, in YAML.
    pub example: &'static str,
}

/// Whether a reload applies a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Reloadable,
    /// Set up by the supervisor before forking: a reload warns and leaves it as it was.
    Restart,
}

/// How SHOW CONFIG prints a setting's value, and its default beside it (the same getter
/// applied to [`Config::default`] unless the variant says otherwise).
pub enum Show {
    /// Not a SHOW CONFIG row.
    Hidden,
    Num(fn(&Config) -> u64),
    /// Seconds, as `seconds` prints them.
    Secs(fn(&Config) -> Duration),
    /// `1` or `0`.
    Flag(fn(&Config) -> bool),
    /// The items joined with `,`.
    List(fn(&Config) -> &[String]),
    Str(fn(&Config) -> &str),
    Text(fn(&Config) -> String),
    /// NULL when unset.
    Opt(fn(&Config) -> &Option<String>),
    /// NULL when unset; the default is shown as an empty string.
    OptEmpty(fn(&Config) -> &Option<String>),
    /// `workers`: the resolved count, beside the default as spelled (`auto`).
    Workers,
}

/// Every top-level key of [`Config`], in the struct's order (a test checks the list).
#[rustfmt::skip]
pub static SETTINGS: &[Setting] = &[
    set("listen_addr", List(|c| &c.listen_addr), Restart, "127.0.0.1", "'*'"),
    set("listen_port", Num(|c| c.listen_port.into()), Restart, "6432", "7000"),
    set("unix_socket_dir", Opt(|c| &c.unix_socket_dir), Restart, "~", "/tmp"),
    // The mode is applied when the socket file is created, at bind time.
    set("unix_socket_mode", Text(|c| format!("0{:o}", c.unix_socket_mode)), Restart,
        "0777", "0700"),
    set("workers", Workers, Reloadable, "auto", "3"),
    set("user", Opt(|c| &c.user), Restart, "~", "postgres"),
    set("pidfile", Opt(|c| &c.pidfile), Restart, "~", "/run/p.pid"),
    set("logfile", Opt(|c| &c.logfile), Reloadable, "~", "/var/log/p.log"),
    set("metrics_addr", Hidden, Reloadable, "~", "127.0.0.1:9127"),
    text("proxy_protocol", |c| c.proxy_protocol.as_str(), "off", "optional"),
    set("proxy_trusted", Text(|c| join(&c.proxy_trusted)), Reloadable, "[]", "10.0.0.0/8"),
    secs("proxy_header_timeout", |c| c.proxy_header_timeout, "5", "2.5"),
    flag("proxy_tls_trusted", |c| c.proxy_tls_trusted, "false", "true"),
    num("proxy_max_header", |c| c.proxy_max_header.into(), "4096", "1024"),
    text("pool_mode", |c| c.pool_mode.as_str(), "session", "transaction"),
    num("default_pool_size", |c| c.default_pool_size.into(), "20", "10"),
    num("min_pool_size", |c| c.min_pool_size.into(), "0", "2"),
    num("reserve_pool_size", |c| c.reserve_pool_size.into(), "0", "3"),
    secs("reserve_pool_timeout", |c| c.reserve_pool_timeout, "5", "0"),
    num("max_client_conn", |c| c.max_client_conn.into(), "100", "5000"),
    num("max_db_connections", |c| c.max_db_connections.into(), "0", "50"),
    num("max_user_connections", |c| c.max_user_connections.into(), "0", "50"),
    num("max_db_client_connections", |c| c.max_db_client_connections.into(), "0", "200"),
    num("max_user_client_connections", |c| c.max_user_client_connections.into(), "0", "100"),
    text("auth_type", |c| c.auth_type.as_str(), "md5", "scram-sha-256"),
    set("auth_file", Opt(|c| &c.auth_file), Reloadable, "~", "/etc/userlist.txt"),
    file("auth_hba_file", |c| &c.auth_hba_file, "/etc/hba.conf"),
    set("auth_user", Opt(|c| &c.auth_user), Reloadable, "~", "pgbouncer"),
    text("auth_query", |c| &c.auth_query,
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
        "SELECT * FROM pgbouncer.get_auth($1)"),
    set("auth_dbname", Opt(|c| &c.auth_dbname), Reloadable, "~", "postgres"),
    secs("auth_query_cache_ttl", |c| c.auth_query_cache_ttl, "5", "1"),
    list("admin_users", |c| &c.admin_users, "admin"),
    list("stats_users", |c| &c.stats_users, "[monitor, nagios]"),
    text("server_reset_query", |c| &c.server_reset_query, "DISCARD ALL", "''"),
    flag("server_reset_query_always", |c| c.server_reset_query_always, "false", "true"),
    text("server_check_query", |c| &c.server_check_query, "select 1", "''"),
    flag("server_round_robin", |c| c.server_round_robin, "false", "1"),
    secs("server_check_delay", |c| c.server_check_delay, "30", "0"),
    secs("server_idle_timeout", |c| c.server_idle_timeout, "600", "60"),
    secs("server_lifetime", |c| c.server_lifetime, "3600", "0"),
    secs("server_connect_timeout", |c| c.server_connect_timeout, "15", "3"),
    secs("server_login_retry", |c| c.server_login_retry, "15", "1"),
    secs("dns_max_ttl", |c| c.dns_max_ttl, "15", "60"),
    secs("dns_nxdomain_ttl", |c| c.dns_nxdomain_ttl, "15", "5"),
    secs("client_login_timeout", |c| c.client_login_timeout, "60", "0"),
    secs("client_idle_timeout", |c| c.client_idle_timeout, "0", "3600"),
    secs("query_timeout", |c| c.query_timeout, "0", "30"),
    secs("query_wait_timeout", |c| c.query_wait_timeout, "120", "0"),
    secs("query_wait_notify", |c| c.query_wait_notify, "5", "0"),
    secs("idle_transaction_timeout", |c| c.idle_transaction_timeout, "0", "10"),
    secs("transaction_timeout", |c| c.transaction_timeout, "0", "60"),
    secs("shutdown_timeout", |c| c.shutdown_timeout, "30", "0"),
    secs("cancel_wait_timeout", |c| c.cancel_wait_timeout, "10", "1"),
    num("max_packet_size", |c| c.max_packet_size.into(), "2147483647", "1048576"),
    num("pkt_buf", |c| c.pkt_buf.into(), "8192", "4096"),
    flag("application_name_add_host", |c| c.application_name_add_host, "false", "1"),
    flag("log_connections", |c| c.log_connections, "true", "0"),
    flag("log_disconnections", |c| c.log_disconnections, "true", "no"),
    flag("log_pooler_errors", |c| c.log_pooler_errors, "true", "off"),
    flag("log_stats", |c| c.log_stats, "true", "false"),
    text("login_notify_message", |c| &c.login_notify_message, "''", "'via the pooler'"),
    secs("stats_period", |c| c.stats_period, "60", "10"),
    num("verbose", |c| c.verbose.into(), "0", "2"),
    flag("tcp_keepalive", |c| c.tcp_keepalive, "true", "false"),
    set("tcp_keepidle", Hidden, Reloadable, "0", "60"),
    set("tcp_keepintvl", Hidden, Reloadable, "0", "10"),
    set("tcp_keepcnt", Hidden, Reloadable, "0", "5"),
    set("tcp_user_timeout", Hidden, Reloadable, "0", "0.5"),
    text("client_tls_sslmode", |c| c.client_tls_sslmode.as_str(), "disable", "require"),
    file("client_tls_key_file", |c| &c.client_tls_key_file, "/etc/server.key"),
    file("client_tls_cert_file", |c| &c.client_tls_cert_file, "/etc/server.crt"),
    file("client_tls_ca_file", |c| &c.client_tls_ca_file, "/etc/ca.crt"),
    text("client_tls_protocols", |c| &c.client_tls_protocols, "secure", "tlsv1.3"),
    text("client_tls_ciphers", |c| &c.client_tls_ciphers, "default", "TLS_AES_256_GCM_SHA384"),
    text("server_tls_sslmode", |c| c.server_tls_sslmode.as_str(), "prefer", "verify-full"),
    file("server_tls_key_file", |c| &c.server_tls_key_file, "/etc/pooler.key"),
    file("server_tls_cert_file", |c| &c.server_tls_cert_file, "/etc/pooler.crt"),
    file("server_tls_ca_file", |c| &c.server_tls_ca_file, "/etc/root.crt"),
    text("server_tls_protocols", |c| &c.server_tls_protocols, "secure", "tlsv1.2"),
    text("server_tls_ciphers", |c| &c.server_tls_ciphers, "default", "TLS_AES_128_GCM_SHA256"),
    list("ignore_startup_parameters", |c| &c.ignore_startup_parameters,
        "extra_float_digits, options"),
    set("track_extra_parameters", List(|c| &c.track_extra_parameters), Reloadable,
        "IntervalStyle", "[IntervalStyle, default_transaction_read_only]"),
    num("max_prepared_statements", |c| c.max_prepared_statements.into(), "200", "100"),
    // Cancel keys already handed out carry the old id: a reload cannot change it.
    set("peer_id", Num(|c| c.peer_id.into()), Restart, "0", "7"),
    set("databases", Hidden, Reloadable, "{}", "{app: {host: db1}}"),
    set("users", Hidden, Reloadable, "{}", "{u: {pool_mode: session}}"),
    set("peers", Hidden, Reloadable, "{}", "{1: {host: 10.0.0.1}}"),
];

const fn set(name: S, show: Show, reload: Reload, default: S, example: S) -> Setting {
    Setting {
        name,
        show,
        reload,
        default,
        example,
    }
}

// Shorthands for reloadable settings.

type S = &'static str;

const fn num(n: S, f: fn(&Config) -> u64, default: S, example: S) -> Setting {
    set(n, Num(f), Reloadable, default, example)
}

const fn secs(n: S, f: fn(&Config) -> Duration, default: S, example: S) -> Setting {
    set(n, Secs(f), Reloadable, default, example)
}

const fn flag(n: S, f: fn(&Config) -> bool, default: S, example: S) -> Setting {
    set(n, Flag(f), Reloadable, default, example)
}

const fn text(n: S, f: fn(&Config) -> &str, default: S, example: S) -> Setting {
    set(n, Str(f), Reloadable, default, example)
}

/// A list, empty by default.
const fn list(n: S, f: fn(&Config) -> &[String], example: S) -> Setting {
    set(n, List(f), Reloadable, "[]", example)
}

/// An optional file, unset by default (and its default shown as an empty string).
const fn file(n: S, f: fn(&Config) -> &Option<String>, example: S) -> Setting {
    set(n, OptEmpty(f), Reloadable, "~", example)
}

fn join(items: &[impl ToString]) -> String {
    let items: Vec<String> = items.iter().map(|x| x.to_string()).collect();
    items.join(",")
}

impl Setting {
    /// The SHOW CONFIG value of `c` and the default (`d` is [`Config::default`]); `None`
    /// when the setting is not shown.
    fn shown(&self, c: &Config, d: &Config) -> Option<(Option<String>, Option<String>)> {
        let both = |f: &dyn Fn(&Config) -> String| Some((Some(f(c)), Some(f(d))));
        match &self.show {
            Hidden => None,
            Num(f) => both(&|x| f(x).to_string()),
            Secs(f) => both(&|x| seconds(f(x))),
            Flag(f) => both(&|x| if f(x) { "1" } else { "0" }.to_owned()),
            List(f) => both(&|x| f(x).join(",")),
            Str(f) => both(&|x| f(x).to_owned()),
            Text(f) => both(&|x| f(x)),
            Opt(f) => Some((f(c).clone(), f(d).clone())),
            OptEmpty(f) => Some((f(c).clone(), Some(String::new()))),
            Workers => Some((
                Some(c.workers.resolve().to_string()),
                Some(d.workers.to_string()),
            )),
        }
    }

    /// Whether the setting differs between two configs, compared as the typed value.
    /// Hidden settings have no getter here and never differ.
    fn differs(&self, a: &Config, b: &Config) -> bool {
        match &self.show {
            Hidden => false,
            Num(f) => f(a) != f(b),
            Secs(f) => f(a) != f(b),
            Flag(f) => f(a) != f(b),
            List(f) => f(a) != f(b),
            Str(f) => f(a) != f(b),
            Text(f) => f(a) != f(b),
            Opt(f) | OptEmpty(f) => f(a) != f(b),
            Workers => a.workers != b.workers,
        }
    }
}

/// SHOW CONFIG's rows for `c`: key, value, default, changeable (`yes`/`no`), sorted by key.
pub fn show_config_rows(c: &Config) -> Vec<Vec<Option<String>>> {
    let d = Config::default();
    let mut rows: Vec<Vec<Option<String>>> = SETTINGS
        .iter()
        .filter_map(|s| {
            let (value, default) = s.shown(c, &d)?;
            let changeable = if s.reload == Restart { "no" } else { "yes" };
            Some(vec![
                Some(s.name.to_owned()),
                value,
                default,
                Some(changeable.to_owned()),
            ])
        })
        .collect();
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
    rows
}

/// The settings that a reload cannot apply and that differ between `old` and `new`.
pub fn restart_required_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    SETTINGS
        .iter()
        .filter(|s| s.reload == Restart && s.differs(old, new))
        .map(|s| s.name)
        .collect()
}

/// Seconds as SHOW CONFIG prints durations (%g-like: no trailing zeros).
fn seconds(d: Duration) -> String {
    let v = d.as_secs_f64();
    if v.fract() == 0.0 {
        format!("{}", v as u64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHOW CONFIG for every setting at its example value, as the hand-written rows before
    /// this table printed it: key|value|default|changeable, NULL for a null.
    const EXAMPLE_ROWS: &str = "\
admin_users|admin||yes
application_name_add_host|1|0|yes
auth_dbname|postgres|NULL|yes
auth_file|/etc/userlist.txt|NULL|yes
auth_hba_file|/etc/hba.conf||yes
auth_query|SELECT * FROM pgbouncer.get_auth($1)|SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin|yes
auth_query_cache_ttl|1|5|yes
auth_type|scram-sha-256|md5|yes
auth_user|pgbouncer|NULL|yes
cancel_wait_timeout|1|10|yes
client_idle_timeout|3600|0|yes
client_login_timeout|0|60|yes
client_tls_ca_file|/etc/ca.crt||yes
client_tls_cert_file|/etc/server.crt||yes
client_tls_ciphers|TLS_AES_256_GCM_SHA384|default|yes
client_tls_key_file|/etc/server.key||yes
client_tls_protocols|tlsv1.3|secure|yes
client_tls_sslmode|require|disable|yes
default_pool_size|10|20|yes
dns_max_ttl|60|15|yes
dns_nxdomain_ttl|5|15|yes
idle_transaction_timeout|10|0|yes
ignore_startup_parameters|extra_float_digits,options||yes
listen_addr|*|127.0.0.1|no
listen_port|7000|6432|no
log_connections|0|1|yes
log_disconnections|0|1|yes
log_pooler_errors|0|1|yes
log_stats|0|1|yes
logfile|/var/log/p.log|NULL|yes
login_notify_message|via the pooler||yes
max_client_conn|5000|100|yes
max_db_client_connections|200|0|yes
max_db_connections|50|0|yes
max_packet_size|1048576|2147483647|yes
max_prepared_statements|100|200|yes
max_user_client_connections|100|0|yes
max_user_connections|50|0|yes
min_pool_size|2|0|yes
peer_id|7|0|no
pidfile|/run/p.pid|NULL|no
pkt_buf|4096|8192|yes
pool_mode|transaction|session|yes
proxy_header_timeout|2.5|5|yes
proxy_max_header|1024|4096|yes
proxy_protocol|optional|off|yes
proxy_tls_trusted|1|0|yes
proxy_trusted|10.0.0.0/8||yes
query_timeout|30|0|yes
query_wait_notify|0|5|yes
query_wait_timeout|0|120|yes
reserve_pool_size|3|0|yes
reserve_pool_timeout|0|5|yes
server_check_delay|0|30|yes
server_check_query||select 1|yes
server_connect_timeout|3|15|yes
server_idle_timeout|60|600|yes
server_lifetime|0|3600|yes
server_login_retry|1|15|yes
server_reset_query||DISCARD ALL|yes
server_reset_query_always|1|0|yes
server_round_robin|1|0|yes
server_tls_ca_file|/etc/root.crt||yes
server_tls_cert_file|/etc/pooler.crt||yes
server_tls_ciphers|TLS_AES_128_GCM_SHA256|default|yes
server_tls_key_file|/etc/pooler.key||yes
server_tls_protocols|tlsv1.2|secure|yes
server_tls_sslmode|verify-full|prefer|yes
shutdown_timeout|0|30|yes
stats_period|10|60|yes
stats_users|monitor,nagios||yes
tcp_keepalive|0|1|yes
track_extra_parameters|IntervalStyle,default_transaction_read_only|IntervalStyle|yes
transaction_timeout|60|0|yes
unix_socket_dir|/tmp|NULL|no
unix_socket_mode|0700|0777|no
user|postgres|NULL|no
verbose|2|0|yes
workers|3|auto|yes
";

    #[test]
    fn show_config_rows_are_pgbouncers() {
        let yaml: String = SETTINGS
            .iter()
            .map(|s| format!("{}: {}\n", s.name, s.example))
            .collect();
        let c = Config::parse_yaml(&yaml).unwrap();
        let null = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".to_owned());
        let text: String = show_config_rows(&c)
            .iter()
            .map(|r| format!("{}\n", r.iter().map(null).collect::<Vec<_>>().join("|")))
            .collect();
        assert_eq!(text, EXAMPLE_ROWS);
        // Unset options are NULL, beside NULL or an empty default.
        let rows = show_config_rows(&Config::default());
        let row = |k: &str| {
            rows.iter()
                .find(|r| r[0].as_deref() == Some(k))
                .unwrap()
                .clone()
        };
        assert_eq!(row("auth_file")[1..3], [None, None]);
        assert_eq!(row("auth_hba_file")[1..3], [None, Some(String::new())]);
    }

    #[test]
    fn restart_only_settings_are_compared() {
        for s in SETTINGS.iter().filter(|s| s.reload == Restart) {
            assert!(
                !matches!(s.show, Hidden),
                "{}: no getter to compare",
                s.name
            );
        }
    }

    #[test]
    fn durations_print_as_plain_seconds() {
        assert_eq!(seconds(Duration::from_secs(3600)), "3600");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5");
    }
}
