//! Config-level tests: defaults, every error naming its key, precedence, the example file.

use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;

use super::database::{DATABASE_FIELDS, USER_FIELDS};
use super::peer::PEER_FIELDS;
use super::settings::{Reload, SETTINGS};
use super::*;

const EXAMPLE: &str = include_str!("../../../etc/pgbouncers.yaml");

fn parse(yaml: &str) -> Config {
    Config::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{yaml:?}: {e}"))
}

fn parse_err(yaml: &str) -> ConfigError {
    match Config::from_yaml_str(yaml) {
        Ok(c) => panic!("{yaml:?} was accepted: {c:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// Defaults.

#[test]
fn empty_documents_give_the_defaults() {
    for yaml in ["", "\n", "{}", "# only a comment\n", "---\n", "~"] {
        assert_eq!(parse(yaml), Config::default(), "{yaml:?}");
    }
    Config::default().validate().unwrap();
}

#[test]
fn a_file_that_serves_nobody_is_refused() {
    // What a deployment can leave behind: nothing, or a file cut before `databases:`.
    for yaml in [
        "",
        "\n",
        "{}",
        "# only a comment\n",
        "---\n",
        "~",
        "listen_port: 6432\nauth_type: trust\n",
    ] {
        let e = Config::from_file_text(yaml).unwrap_err();
        assert_eq!(e.key(), Some("databases"), "{yaml:?}: {e}");
        assert!(e.message().contains("nobody could log in"), "{yaml:?}: {e}");
    }
    // YAML that is not a mapping of settings.
    for yaml in [
        "listen_port\n",
        "- listen_port: 6432\n",
        "42\n",
        "true\n",
        "[a, b]\n",
    ] {
        let e = Config::from_file_text(yaml).unwrap_err();
        assert!(
            e.message().contains("must be a mapping of settings"),
            "{yaml:?}: {e}"
        );
    }
    // A database, or a console user alone, is enough.
    for yaml in [
        "auth_type: trust\ndatabases:\n  app: {}\n",
        "auth_type: trust\nadmin_users: admin\n",
        "auth_type: trust\nstats_users: [monitor]\n",
    ] {
        Config::from_file_text(yaml).unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
    }
    // The file-level rule sits on top of the ordinary ones, whose errors stay as they were.
    let e = Config::from_file_text("bogus: 1\n").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    let e = Config::from_file_text("listen_port: x\n").unwrap_err();
    assert_eq!(e.key(), Some("listen_port"));

    let dir = std::env::temp_dir().join(format!("pgbouncers-config-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let e = Config::load(&empty).unwrap_err();
    assert_eq!(e.file(), Some(empty.as_path()));
    assert!(e.to_string().contains("nobody could log in"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn settings_table_lists_every_key_in_order() {
    let table: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    assert_eq!(
        table,
        Config::keys(),
        "settings::SETTINGS against the struct"
    );
}

#[test]
fn every_key_has_its_default() {
    for s in SETTINGS {
        let yaml = format!("{}: {}", s.name, s.default);
        assert_eq!(
            Config::parse_yaml(&yaml).unwrap(),
            Config::default(),
            "{yaml}"
        );
    }
}

#[test]
fn every_key_is_read() {
    for s in SETTINGS {
        let yaml = format!("{}: {}", s.name, s.example);
        let c = Config::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        assert_ne!(c, Config::default(), "{yaml} changed nothing");
    }
}

#[test]
fn a_changed_restart_only_setting_is_reported() {
    let old = Config::default();
    for s in SETTINGS {
        let new = Config::parse_yaml(&format!("{}: {}", s.name, s.example)).unwrap();
        let want: &[&str] = if s.reload == Reload::Restart {
            &[s.name]
        } else {
            &[]
        };
        assert_eq!(restart_required_changes(&old, &new), want, "{}", s.name);
    }
}

#[test]
fn default_values_are_pgbouncers() {
    let c = Config::default();
    assert_eq!(c.listen_addr, ["127.0.0.1"]);
    assert_eq!(c.listen_port, 6432);
    assert_eq!(c.unix_socket_mode, 0o777);
    assert_eq!(c.pool_mode, PoolMode::Session);
    assert_eq!(c.auth_type, AuthType::Md5);
    assert_eq!(c.proxy_protocol, ProxyProtocol::Off);
    assert_eq!(c.proxy_header_timeout, Duration::from_secs(5));
    assert_eq!(c.query_wait_timeout, Duration::from_secs(120));
    assert_eq!(c.server_lifetime, Duration::from_secs(3600));
    assert_eq!(c.max_packet_size, 2_147_483_647);
    assert_eq!(c.server_reset_query, "DISCARD ALL");
    assert_eq!(c.server_check_query, "select 1");
    assert!(
        c.log_connections
            && c.log_disconnections
            && c.log_pooler_errors
            && c.log_stats
            && c.tcp_keepalive
    );
    assert!(c.databases.is_empty() && c.users.is_empty());
}

// ---------------------------------------------------------------------------------------
// Errors name their key.

#[test]
fn errors_name_their_key() {
    use ErrorKind::*;
    let cases: &[(&str, ErrorKind, Option<&str>, &str)] = &[
        // Unknown keys.
        ("listen_prot: 1", UnknownKey, Some("listen_prot"), "unknown key `listen_prot`, did you mean `listen_port`?"),
        ("databases:\n  app:\n    hots: x\n", UnknownKey, Some("databases.app.hots"), "hots"),
        ("users:\n  bob:\n    pool_sise: 3\n", UnknownKey, Some("users.bob.pool_sise"), "pool_sise"),
        ("databases:\n  app: host=x hots=y\n", UnknownKey, Some("databases.app.hots"), "unknown key `hots`"),
        ("users:\n  bob: pool_mode=session x=1\n", UnknownKey, Some("users.bob.x"), "unknown key `x`"),
        // Bad enums.
        ("pool_mode: sessions", BadValue, Some("pool_mode"), "sessions"),
        ("auth_type: pam", BadValue, Some("auth_type"), "scram-sha-256"),
        ("proxy_protocol: on", BadValue, Some("proxy_protocol"), "optional"),
        ("proxy_protocol: maybe", BadValue, Some("proxy_protocol"), "maybe"),
        ("databases:\n  app:\n    pool_mode: batch\n", BadValue, Some("databases.app.pool_mode"), "batch"),
        ("databases:\n  app: pool_mode=batch\n", BadValue, Some("databases.app.pool_mode"), "batch"),
        ("workers: many", BadValue, Some("workers"), "auto"),
        ("workers: 0", BadValue, Some("workers"), "1 to 256"),
        ("workers: 257", BadValue, Some("workers"), "1 to 256"),
        // Bad types.
        ("databases:\n  app:\n    pool_size: x\n", BadValue, Some("databases.app.pool_size"), "expected an integer"),
        ("listen_port: [1]", BadValue, Some("listen_port"), "integer"),
        ("listen_port: 70000", BadValue, Some("listen_port"), "from 0 to 65535"),
        ("max_client_conn: -5", BadValue, Some("max_client_conn"), "-5"),
        ("log_stats: 2", BadValue, Some("log_stats"), "boolean"),
        ("log_stats: maybe", BadValue, Some("log_stats"), "boolean"),
        ("databases: [a, b]", BadValue, Some("databases"), ""),
        ("databases:\n  app: [1]\n", BadValue, Some("databases.app"), "connection string"),
        ("databases:\n  app: port=abc\n", BadValue, Some("databases.app.port"), "expected an integer"),
        ("databases:\n  app: \"host='x\"\n", BadValue, Some("databases.app.host"), "closing quote"),
        ("databases:\n  app: port=1 port=2\n", BadValue, Some("databases.app.port"), "twice"),
        ("unix_socket_mode: 0800", BadValue, Some("unix_socket_mode"), "octal"),
        ("unix_socket_mode: 01777", BadValue, Some("unix_socket_mode"), "octal"),
        ("metrics_addr: nope", BadValue, Some("metrics_addr"), ""),
        ("proxy_trusted: [10.0.0.0/8, 10.0.0.0/33]", BadValue, Some("proxy_trusted[1]"), "at most 32"),
        ("proxy_trusted: 10.0.0.0/8, bogus", BadValue, Some("proxy_trusted"), "`bogus`"),
        // Durations.
        ("query_timeout: -1", BadValue, Some("query_timeout"), "-1"),
        ("query_timeout: -0.5", BadValue, Some("query_timeout"), "seconds"),
        ("query_timeout: '5'", BadValue, Some("query_timeout"), "seconds"),
        ("query_timeout: .nan", BadValue, Some("query_timeout"), ""),
        ("query_timeout: .inf", BadValue, Some("query_timeout"), ""),
        ("query_timeout: 1e300", BadValue, Some("query_timeout"), "seconds"),
        // Validation.
        ("databases:\n  app:\n    pool_size: 0\n", Invalid, Some("databases.app.pool_size"), "from 1 to 262143"),
        ("databases:\n  app: pool_size=300000\n", Invalid, Some("databases.app.pool_size"), "262143"),
        ("users:\n  bob:\n    pool_size: 0\n", Invalid, Some("users.bob.pool_size"), "from 1"),
        ("default_pool_size: 0", Invalid, Some("default_pool_size"), "from 1"),
        ("reserve_pool_size: 300000", Invalid, Some("reserve_pool_size"), "262143"),
        ("listen_port: 0", Invalid, Some("listen_port"), "from 1"),
        ("listen_addr: ''", Invalid, Some("listen_addr"), "no listener"),
        ("listen_addr: ['a b']", Invalid, Some("listen_addr[0]"), "one address"),
        ("unix_socket_dir: tmp", Invalid, Some("unix_socket_dir"), "absolute"),
        ("unix_socket_dir: /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Invalid, Some("unix_socket_dir"), "longer than 107"),
        ("proxy_protocol: required", Invalid, Some("proxy_trusted"), "required"),
        ("proxy_header_timeout: 0", Invalid, Some("proxy_header_timeout"), "greater than 0"),
        ("proxy_max_header: 100", Invalid, Some("proxy_max_header"), "from 232 to 65551"),
        ("proxy_max_header: 65552", Invalid, Some("proxy_max_header"), "from 232 to 65551"),
        ("pkt_buf: 1024", Invalid, Some("pkt_buf"), "4096"),
        ("max_packet_size: 100", Invalid, Some("max_packet_size"), "4096"),
        ("max_packet_size: 2147483648", Invalid, Some("max_packet_size"), "2147483647"),
        ("max_client_conn: 0", Invalid, Some("max_client_conn"), "from 1"),
        ("stats_period: 0", Invalid, Some("stats_period"), "greater than 0"),
        ("verbose: 4", Invalid, Some("verbose"), "from 0 to 3"),
        ("tcp_keepidle: 1.5", Invalid, Some("tcp_keepidle"), "whole"),
        ("tcp_keepintvl: 40000", Invalid, Some("tcp_keepintvl"), "32767"),
        ("tcp_keepcnt: 128", Invalid, Some("tcp_keepcnt"), "127"),
        ("tcp_user_timeout: 3000000", Invalid, Some("tcp_user_timeout"), "at most"),
        ("auth_type: hba", Invalid, Some("auth_hba_file"), "hba"),
        ("databases:\n  app: {}\n", Invalid, Some("auth_file"), "md5"),
        ("auth_type: scram-sha-256\nadmin_users: admin", Invalid, Some("auth_file"), "scram-sha-256"),
        ("auth_type: trust\nadmin_users: [admin, '']", Invalid, Some("admin_users[1]"), "empty"),
        ("auth_type: trust\ndatabases:\n  pgbouncer: {}\n", Invalid, Some("databases.pgbouncer"), "admin console"),
        ("auth_type: trust\ndatabases:\n  pgbouncers: {}\n", Invalid, Some("databases.pgbouncers"), "admin console"),
        ("auth_type: trust\ndatabases:\n  app: host=a,,b\n", Invalid, Some("databases.app.host"), "empty element"),
        ("auth_type: trust\ndatabases:\n  app: host=a,@b\n", Invalid, Some("databases.app.host"), "abstract"),
        ("auth_type: trust\ndatabases:\n  app: target_session_attrs=primary-ish\n", BadValue, Some("databases.app.target_session_attrs"), "read-write"),
        ("auth_type: trust\ndatabases:\n  app:\n    host: ''\n", Invalid, Some("databases.app.host"), "empty"),
        ("auth_type: trust\ndatabases:\n  app: port=0\n", Invalid, Some("databases.app.port"), "from 1"),
        ("auth_type: trust\ndatabases:\n  app:\n    password: \"a\\0b\"\n", Invalid, Some("databases.app.password"), "NUL"),
        ("server_reset_query: \"DISCARD\\0ALL\"", Invalid, Some("server_reset_query"), "NUL"),
    ];
    for (yaml, kind, key, fragment) in cases {
        let e = parse_err(yaml);
        assert_eq!(e.kind(), *kind, "{yaml:?}: {e}");
        assert_eq!(e.key(), *key, "{yaml:?}: {e}");
        assert!(
            e.message().contains(fragment),
            "{yaml:?}: message {:?} lacks {fragment:?}",
            e.message()
        );
        if let Some(key) = key {
            assert!(
                e.to_string().starts_with(&format!("{key}: ")),
                "{yaml:?}: {e}"
            );
        }
        // Serde-level errors carry a position; validation errors are about parsed values.
        assert_eq!(e.location().is_some(), *kind != Invalid, "{yaml:?}: {e}");
    }
}

#[test]
fn error_display_has_the_line() {
    let e = parse_err("listen_port: 6432\ndatabases:\n  app:\n    pool_size: x\n");
    assert_eq!(e.location().map(|(line, _)| line), Some(4), "{e}");
    let text = e.to_string();
    assert!(text.starts_with("databases.app.pool_size: invalid type: string \"x\", expected an integer from 0 to 4294967295"), "{text}");
    assert!(text.contains("(line 4, column "), "{text}");
}

#[test]
fn syntax_and_duplicate_key_errors() {
    let e = parse_err("listen_port: 1\nlisten_port: 2\n");
    assert_eq!(e.message(), "the key `listen_port` is given twice", "{e}");
    let e = parse_err("listen_port: 1\nlisten_addr: 'unterminated\n");
    assert_eq!(e.kind(), ErrorKind::Syntax, "{e}");
    let e = parse_err("listen_port: 1\nlisten_addr: [a, b\n");
    assert_eq!(e.kind(), ErrorKind::Syntax, "{e}");
    let e = parse_err("listen_port: 1\n---\nlisten_port: 2\n");
    assert_eq!(e.kind(), ErrorKind::Syntax, "{e}");
    let e = parse_err("[1, 2]");
    assert_eq!(e.key(), None, "{e}");
}

#[test]
fn connstring_errors_never_show_the_password() {
    let e = parse_err("databases:\n  app: \"password='s3cret\"\n");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = parse_err("databases:\n  app: password=s3cret bogus=1\n");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("pgbouncers-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "listen_port: 6432\nbogus_key: 1\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.file(), Some(path.as_path()));
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: bogus_key: ", path.display())),
        "{e}"
    );

    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "listen_port: 7432\nauth_type: trust\nadmin_users: admin\n",
    )
    .unwrap();
    assert_eq!(Config::load(&good).unwrap().listen_port, 7432);

    let missing = dir.join("missing.yaml");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read", missing.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Value syntaxes.

#[test]
fn proxy_protocol_spellings() {
    let cases: &[(&str, ProxyProtocol)] = &[
        ("off", ProxyProtocol::Off),
        ("Off", ProxyProtocol::Off),
        ("OFF", ProxyProtocol::Off),
        ("'off'", ProxyProtocol::Off),
        ("no", ProxyProtocol::Off),
        ("false", ProxyProtocol::Off),
        ("optional", ProxyProtocol::Optional),
        ("required", ProxyProtocol::Required),
        ("\"required\"", ProxyProtocol::Required),
    ];
    for (value, want) in cases {
        let c = Config::parse_yaml(&format!("proxy_protocol: {value}")).unwrap();
        assert_eq!(c.proxy_protocol, *want, "{value}");
    }
    for value in ["on", "yes", "true", "1", "[]"] {
        assert!(
            Config::parse_yaml(&format!("proxy_protocol: {value}")).is_err(),
            "{value}"
        );
    }
}

#[test]
fn lists_accept_commas_sequences_and_null() {
    let c = parse("auth_type: trust\nlisten_addr: 127.0.0.1, ::1\nadmin_users: [a, b]\nstats_users: 'c,d , e'\nignore_startup_parameters: ~");
    assert_eq!(c.listen_addr, ["127.0.0.1", "::1"]);
    assert_eq!(c.admin_users, ["a", "b"]);
    assert_eq!(c.stats_users, ["c", "d", "e"]);
    assert!(c.ignore_startup_parameters.is_empty());
    let c = parse("listen_addr: '*'");
    assert_eq!(c.listen_addr, ["*"]);
    let c = parse("listen_addr: ['0.0.0.0', '::']");
    assert_eq!(c.listen_addr, ["0.0.0.0", "::"]);
    // Unix socket only.
    let c = parse("listen_addr: []\nunix_socket_dir: /tmp");
    assert!(c.listen_addr.is_empty());
    let c = parse("proxy_protocol: optional\nproxy_trusted: 10.0.0.0/8, ::1\n");
    assert_eq!(c.proxy_trusted.len(), 2);
    assert!(c.proxy_trusted[0].contains("10.2.3.4".parse::<IpAddr>().unwrap()));
    assert!(c.proxy_trusted[1].contains("::1".parse::<IpAddr>().unwrap()));
    let c = parse("proxy_trusted: ['192.168.0.0/16', 2001:db8::/32]\n");
    assert_eq!(c.proxy_trusted[1].to_string(), "2001:db8::/32");
}

#[test]
fn durations_in_seconds() {
    let c = parse("query_timeout: 0.25\nclient_idle_timeout: 90\nserver_lifetime: 0\n");
    assert_eq!(c.query_timeout, Duration::from_millis(250));
    assert_eq!(c.client_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.server_lifetime, Duration::ZERO);
}

#[test]
fn octal_socket_modes() {
    for (value, want) in [
        ("0777", 0o777),
        ("0660", 0o660),
        ("'0660'", 0o660),
        ("0o600", 0o600),
        ("755", 0o755),
        ("0", 0),
    ] {
        assert_eq!(
            parse(&format!("unix_socket_mode: {value}")).unix_socket_mode,
            want,
            "{value}"
        );
    }
}

#[test]
fn metrics_addresses() {
    assert_eq!(
        parse("metrics_addr: 127.0.0.1:9127").metrics_addr,
        Some("127.0.0.1:9127".parse().unwrap())
    );
    assert_eq!(
        parse("metrics_addr: '[::1]:9127'").metrics_addr,
        Some("[::1]:9127".parse().unwrap())
    );
    assert_eq!(
        parse_err("metrics_addr: 127.0.0.1:0").key(),
        Some("metrics_addr")
    );
}

#[test]
fn worker_count_resolves() {
    assert_eq!(parse("workers: 3").worker_count(), 3);
    assert_eq!(parse("workers: '4'").worker_count(), 4);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(parse("workers: auto").worker_count(), cpus.min(256));
}

// ---------------------------------------------------------------------------------------
// Databases and users.

#[test]
fn database_mapping_and_connstring_agree() {
    let c = parse(
        "auth_type: trust\n\
         databases:\n  \
           a:\n    host: 127.0.0.1\n    port: 6000\n    dbname: app\n    user: x\n    password: y\n    pool_size: 10\n    pool_mode: transaction\n    connect_query: SELECT 1\n  \
           b: \"host=127.0.0.1 port=6000 dbname=app user=x password=y pool_size=10 pool_mode=transaction connect_query='SELECT 1'\"\n",
    );
    assert_eq!(c.databases["a"], c.databases["b"]);
    let a = &c.databases["a"];
    assert_eq!(a.host, "127.0.0.1");
    assert_eq!(a.port, 6000);
    assert_eq!(a.password.as_ref().map(Secret::expose), Some("y"));
    assert_eq!(a.pool_mode, Some(PoolMode::Transaction));
    assert_eq!(a.connect_query.as_deref(), Some("SELECT 1"));
}

#[test]
fn database_defaults_and_empty_entries() {
    let c = parse("auth_type: trust\ndatabases:\n  a:\n  b: ''\n  c: {}\n");
    for name in ["a", "b", "c"] {
        let db = &c.databases[name];
        assert_eq!(*db, Database::default(), "{name}");
        assert_eq!(db.host, "/var/run/postgresql");
        assert!(db.is_unix_socket());
        assert_eq!(db.port, 5432);
    }
}

#[test]
fn connstring_quoting_in_yaml() {
    let c = parse(
        "auth_type: trust\ndatabases:\n  app: \"password='it\\\\'s a secret' application_name=my\\\\ app\"\n",
    );
    let db = &c.databases["app"];
    assert_eq!(
        db.password.as_ref().map(Secret::expose),
        Some("it's a secret")
    );
    assert_eq!(db.application_name.as_deref(), Some("my app"));
}

#[test]
fn users_as_mapping_or_string() {
    let c = parse("users:\n  a:\n    pool_mode: session\n    max_user_connections: 5\n  b: pool_mode=session max_user_connections=5\n  c:\n");
    assert_eq!(c.users["a"], c.users["b"]);
    assert_eq!(c.users["a"].pool_mode, Some(PoolMode::Session));
    assert_eq!(c.users["c"], UserSettings::default());
}

#[test]
fn fallback_database() {
    let c = parse(
        "auth_type: trust\ndatabases:\n  app:\n    host: db1\n    dbname: real_app\n  \"*\":\n    host: db2\n    port: 5433\n",
    );
    let app = c.database("app").unwrap();
    assert_eq!(
        (
            app.dbname.as_str(),
            app.entry.host.as_str(),
            app.from_fallback
        ),
        ("real_app", "db1", false)
    );
    let other = c.database("other").unwrap();
    assert_eq!(other.name, "other");
    assert_eq!(
        other.dbname, "other",
        "dbname defaults to the requested name"
    );
    assert_eq!(
        (
            other.entry.host.as_str(),
            other.entry.port,
            other.from_fallback
        ),
        ("db2", 5433, true)
    );
    assert!(
        c.database("pgbouncer").is_none(),
        "the console is never a fallback database"
    );
    assert!(c.database("pgbouncers").is_none());

    let c = parse("auth_type: trust\ndatabases:\n  app: host=db1\n");
    assert_eq!(c.database("app").unwrap().dbname, "app");
    assert!(c.database("other").is_none(), "no fallback configured");
}

/// PgBouncer 1.25's order: a user's timeout over the global one (0 keeps the global,
/// except query_wait_timeout), and for query_wait_timeout the database's in between.
#[test]
fn timeouts_per_user_and_per_database() {
    let c = parse(
        "auth_type: trust\n\
         query_timeout: 10\nquery_wait_timeout: 120\nclient_idle_timeout: 5\n\
         databases:\n  \
           a: host=h query_wait_timeout=7\n  \
           b: host=h\n\
         users:\n  \
           u: query_timeout=3 query_wait_timeout=0 transaction_timeout=9 client_idle_timeout=0\n",
    );
    let s = Duration::from_secs;
    let t = c.timeouts_for("a", "u");
    assert_eq!(
        (
            t.query,
            t.query_wait,
            t.transaction,
            t.client_idle,
            t.idle_transaction
        ),
        (s(3), s(0), s(9), s(5), s(0))
    );
    let t = c.timeouts_for("a", "v");
    assert_eq!((t.query, t.query_wait, t.transaction), (s(10), s(7), s(0)));
    assert_eq!(c.timeouts_for("b", "v").query_wait, s(120));
    assert_eq!(c.timeouts_for("b", "v"), c.global_timeouts());
}

#[test]
fn effective_settings_precedence() {
    let c = parse(
        "auth_type: trust\n\
         pool_mode: statement\ndefault_pool_size: 20\nmin_pool_size: 3\nreserve_pool_size: 1\n\
         max_db_connections: 100\nmax_user_connections: 50\n\
         databases:\n  \
           sized: pool_size=7 min_pool_size=9 reserve_pool_size=4 pool_mode=transaction max_db_connections=30\n  \
           plain: host=db\n  \
           '*': pool_size=11\n\
         users:\n  \
           u: pool_mode=session pool_size=5 reserve_pool_size=2 max_user_connections=8\n  \
           v: max_user_connections=0\n",
    );
    // pool_mode: user, then database, then global.
    assert_eq!(c.pool_mode_for("sized", "u"), PoolMode::Session);
    assert_eq!(c.pool_mode_for("sized", "nobody"), PoolMode::Transaction);
    assert_eq!(c.pool_mode_for("plain", "nobody"), PoolMode::Statement);
    // pool_size: user, then database, then global (PgBouncer 1.23 and later).
    assert_eq!(c.pool_size_for("sized", "u"), 5, "the user's wins");
    assert_eq!(c.pool_size_for("sized", "nobody"), 7);
    assert_eq!(c.pool_size_for("plain", "u"), 5);
    assert_eq!(c.pool_size_for("plain", "nobody"), 20);
    assert_eq!(
        c.pool_size_for("via_fallback", "nobody"),
        11,
        "the * entry counts as the database's"
    );
    assert_eq!(c.pool_size_for("via_fallback", "u"), 5);
    // min_pool_size: database, then global; capped at the pool size (the user's here).
    assert_eq!(c.min_pool_size_for("sized", "u"), 5);
    assert_eq!(c.min_pool_size_for("sized", "nobody"), 7);
    assert_eq!(c.min_pool_size_for("plain", "nobody"), 3);
    // reserve_pool_size: user, then database, then global.
    assert_eq!(c.reserve_pool_size_for("sized", "u"), 2, "the user's wins");
    assert_eq!(c.reserve_pool_size_for("sized", "nobody"), 4);
    assert_eq!(c.reserve_pool_size_for("plain", "u"), 2);
    assert_eq!(c.reserve_pool_size_for("plain", "nobody"), 1);
    // Connection limits.
    assert_eq!(c.max_db_connections_for("sized"), 30);
    assert_eq!(c.max_db_connections_for("plain"), 100);
    assert_eq!(c.max_user_connections_for("u"), 8);
    assert_eq!(
        c.max_user_connections_for("v"),
        0,
        "an explicit 0 (unlimited) wins"
    );
    assert_eq!(c.max_user_connections_for("nobody"), 50);
}

#[test]
fn debug_never_shows_passwords() {
    let c = parse(
        "auth_type: trust\ndatabases:\n  a:\n    password: s3cret-one\n  b: password=s3cret-two\n",
    );
    let text = format!("{c:?} {:?} {:?}", c.databases["a"], c.database("b"));
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("<redacted>"));
}

#[test]
fn entry_field_lists_match_the_structs() {
    assert_eq!(struct_fields(|p| Database::deserialize(p)), DATABASE_FIELDS);
    assert_eq!(struct_fields(|p| UserSettings::deserialize(p)), USER_FIELDS);
    assert_eq!(struct_fields(|p| Peer::deserialize(p)), PEER_FIELDS);
    // Every field can also be set through a connection string.
    for field in DATABASE_FIELDS {
        let value = match *field {
            "pool_mode" => "session",
            "load_balance_hosts" => "disable",
            "target_session_attrs" => "read-write",
            "port"
            | "pool_size"
            | "min_pool_size"
            | "reserve_pool_size"
            | "max_db_connections"
            | "max_db_client_connections"
            | "query_wait_timeout" => "3",
            _ => "x",
        };
        let db = Database::from_connstring(&format!("{field}={value}")).unwrap();
        assert_ne!(
            db,
            Database::default(),
            "{field} is ignored in connection strings"
        );
    }
    for field in USER_FIELDS {
        let value = if *field == "pool_mode" {
            "session"
        } else {
            "3"
        };
        let user = UserSettings::from_connstring(&format!("{field}={value}")).unwrap();
        assert_ne!(user, UserSettings::default(), "{field}");
    }
}

#[test]
fn restart_required() {
    let old = Config::default();
    assert!(restart_required_changes(&old, &old.clone()).is_empty());
    let mut new = old.clone();
    new.default_pool_size = 50;
    new.databases.insert("x".into(), Database::default());
    assert!(
        restart_required_changes(&old, &new).is_empty(),
        "pool settings reload"
    );
    new.listen_port = 7000;
    new.unix_socket_dir = Some("/tmp".into());
    new.user = Some("pgb".into());
    new.pidfile = Some("/run/p.pid".into());
    new.listen_addr = vec!["*".into()];
    new.unix_socket_mode = 0o700;
    assert_eq!(
        restart_required_changes(&old, &new),
        [
            "listen_addr",
            "listen_port",
            "unix_socket_dir",
            "unix_socket_mode",
            "user",
            "pidfile"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// The example file is the reference: it parses, and documents every key with its default.

/// `## name` headers and the comment block under each, up to the first non-comment line.
fn example_sections() -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in EXAMPLE.lines() {
        if let Some(name) = line.strip_prefix("## ") {
            sections.extend(current.take());
            current = Some((name.trim().to_owned(), Vec::new()));
        } else if let (Some((_, body)), true) = (current.as_mut(), line.starts_with('#')) {
            body.push(line.trim_start_matches('#').trim().to_owned());
        } else {
            sections.extend(current.take());
        }
    }
    sections.extend(current);
    sections
}

/// The YAML value of a `Default:` line: the text before any " (" note, with PgBouncer's
/// words for "nothing" turned into YAML.
fn documented_default(body: &[String]) -> Option<Vec<String>> {
    let text = body.iter().find_map(|l| l.strip_prefix("Default:"))?.trim();
    let value = text.split(" (").next().unwrap_or(text).trim();
    Some(match value {
        "not set" => vec!["~".to_owned()],
        "empty" => vec!["[]".to_owned(), "{}".to_owned()],
        v => vec![v.to_owned()],
    })
}

#[test]
fn example_file_parses_and_validates() {
    let c = Config::from_yaml_str(EXAMPLE).unwrap_or_else(|e| panic!("etc/pgbouncers.yaml: {e}"));
    assert!(!c.databases.is_empty(), "the example shows databases");
}

#[test]
fn example_file_documents_every_key_and_its_default() {
    let sections = example_sections();
    let mut documented: BTreeSet<String> = BTreeSet::new();
    for (name, body) in &sections {
        assert!(
            documented.insert(name.clone()),
            "## {name} is documented twice"
        );
        assert!(
            body.len() >= 2,
            "## {name} needs a description and a Default: line"
        );
        let defaults =
            documented_default(body).unwrap_or_else(|| panic!("## {name} has no `Default:` line"));
        // Check the documented default against the code's.
        let (yaml, baseline) = if let Some(field) = name.strip_prefix("databases.NAME.") {
            (
                format!("databases: {{x: {{{field}: VALUE}}}}"),
                "databases: {x: {}}",
            )
        } else if let Some(field) = name.strip_prefix("users.NAME.") {
            (
                format!("users: {{x: {{{field}: VALUE}}}}"),
                "users: {x: {}}",
            )
        } else if let Some(field) = name.strip_prefix("peers.ID.") {
            (
                format!("peers: {{1: {{{field}: VALUE}}}}"),
                "peers: {1: {}}",
            )
        } else {
            (format!("{name}: VALUE"), "{}")
        };
        let want = Config::parse_yaml(baseline).unwrap();
        let matches = defaults
            .iter()
            .any(|d| Config::parse_yaml(&yaml.replace("VALUE", d)).is_ok_and(|c| c == want));
        assert!(
            matches,
            "## {name}: the documented default {defaults:?} is not the real one"
        );
    }
    let mut expected: BTreeSet<String> = Config::keys().iter().map(|k| k.to_string()).collect();
    expected.extend(
        DATABASE_FIELDS
            .iter()
            .map(|f| format!("databases.NAME.{f}")),
    );
    expected.extend(USER_FIELDS.iter().map(|f| format!("users.NAME.{f}")));
    expected.extend(PEER_FIELDS.iter().map(|f| format!("peers.ID.{f}")));
    let missing: Vec<_> = expected.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "not documented in etc/pgbouncers.yaml: {missing:?}"
    );
    assert!(stale.is_empty(), "documented but unknown: {stale:?}");
}

#[test]
fn example_file_shows_every_top_level_key() {
    // Each key appears as a setting line, live (`key:`) or commented out (`#key:`).
    for key in Config::keys() {
        let shown = EXAMPLE.lines().any(|l| {
            let l = l.strip_prefix('#').unwrap_or(l);
            l.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        });
        assert!(
            shown,
            "etc/pgbouncers.yaml has no `{key}:` or `#{key}:` line"
        );
    }
}

proptest! {
    #[test]
    fn from_yaml_never_panics(s in "\\PC{0,200}") {
        let _ = Config::from_yaml_str(&s);
    }

    #[test]
    fn from_yaml_never_panics_on_config_like_text(
        key in prop::sample::select(Config::keys()),
        value in "[a-z0-9 ,.:/*'\\-\\[\\]{}=]{0,40}",
    ) {
        let _ = Config::from_yaml_str(&format!("{key}: {value}\n"));
        let _ = Config::from_yaml_str(&format!("databases:\n  app: {value}\n"));
    }

    #[test]
    fn database_connstring_never_panics(s in "\\PC{0,200}") {
        let _ = Database::from_connstring(&s);
        let _ = UserSettings::from_connstring(&s);
    }
}

/// Every setting is read by the code that acts on it, outside the config module and SHOW
/// CONFIG: a key that is accepted, documented and then ignored fails here (issue 12 found
/// connect_query, server_check_query and the tcp_* keys that way). The evidence is a
/// field access `.key` or a resolver `key_for(`; the structural keys name their reader.
#[test]
fn every_setting_is_read_by_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    let mut dirs = vec![
        root.join("worker/src"),
        root.join("supervisor/src"),
        root.join("src"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("config") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("show.rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let used = |needle: &str| {
        text.match_indices(needle).any(|(at, _)| {
            let next = text[at + needle.len()..].chars().next();
            !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    let structural = [
        ("databases", ".database("),
        ("users", "_for(&"),
        ("default_pool_size", ".pool_size_for("),
        // Read through Config::global_timeouts, which a unit test checks.
        ("query_timeout", ".global_timeouts("),
        ("query_wait_timeout", ".global_timeouts("),
        ("idle_transaction_timeout", ".global_timeouts("),
        ("transaction_timeout", ".global_timeouts("),
        ("client_idle_timeout", ".global_timeouts("),
    ];
    let mut unused = Vec::new();
    for key in Config::keys() {
        let found = match structural.iter().find(|(k, _)| k == key) {
            Some((_, reader)) => text.contains(reader),
            None => used(&format!(".{key}")) || text.contains(&format!("{key}_for(")),
        };
        if !found {
            unused.push(*key);
        }
    }
    assert!(unused.is_empty(), "settings no code reads: {unused:?}");
    // The same for the keys of a database entry.
    let mut unused = Vec::new();
    for key in super::database::DATABASE_FIELDS {
        let reader = match *key {
            "pool_size" | "min_pool_size" | "reserve_pool_size" | "pool_mode" => {
                format!("{key}_for(")
            }
            "max_db_connections" | "max_db_client_connections" => format!("{key}_for("),
            "query_wait_timeout" => "Limits::of(".to_string(),
            // The resolved entry carries the name, "*" entries included.
            "dbname" => ".dbname".to_string(),
            _ => format!("entry.{key}"),
        };
        if !text.contains(&reader) {
            unused.push(*key);
        }
    }
    assert!(unused.is_empty(), "database keys no code reads: {unused:?}");
}

#[test]
fn auth_type_cert_needs_verified_client_certificates() {
    let e = Config::from_yaml_str("auth_type: cert\nclient_tls_sslmode: require").unwrap_err();
    assert!(e.to_string().contains("verify-ca or verify-full"), "{e}");
    Config::from_yaml_str("auth_type: cert\nclient_tls_sslmode: verify-ca").unwrap();
}
