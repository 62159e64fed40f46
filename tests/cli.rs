//! PgBouncer's command line on the real binary: -V, -q, -u, -R, the positional config file and --help.

mod common;

use common::tools::{run_cmd, wait_until};
use common::*;
use std::process::Command;

fn binary() -> std::path::PathBuf {
    std::env::var_os("PGBOUNCERS_TEST_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pgbouncers").into())
}

fn config() -> String {
    format!(
        "listen_addr: 127.0.0.1
listen_port: @PORT@
auth_type: trust
auth_file: @DIR@/userlist.txt
databases:
  {APP_DB}: {{host: 127.0.0.1, port: {pg}}}
",
        pg = shared_pg().port()
    )
}

fn setup() -> PoolerSetup {
    let setup = PoolerSetup::new();
    setup.write_file(
        "userlist.txt",
        &common::tools::userlist_entry(TRUST_USER, ""),
    );
    setup
}

#[test]
fn version_names_the_pgbouncer_it_follows() {
    for flag in ["-V", "--version"] {
        let mut cmd = Command::new(binary());
        cmd.arg(flag);
        let out = run_cmd(cmd, None, secs(10));
        let first = out
            .expect_success()
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            first,
            format!(
                "pgbouncers {} (PgBouncer 1.25 compatible)",
                env!("CARGO_PKG_VERSION")
            ),
            "{flag}"
        );
    }
    let mut cmd = Command::new(binary());
    cmd.arg("-h");
    let out = run_cmd(cmd, None, secs(10));
    let help = out.expect_success().to_string();
    for flag in [
        "--daemon",
        "--quiet",
        "--verbose",
        "--user",
        "--version",
        "--help",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn reboot_is_refused_with_a_pointer_to_what_works() {
    let setup = setup();
    let out = setup.run_to_exit(&config(), &["-R"], secs(10));
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("-R/--reboot"), "{out}");
    assert!(out.stderr.contains("online upgrade"), "{out}");
    assert!(
        out.stderr.contains("pgbouncers --upgrade -c CONFIG"),
        "{out}"
    );
}

#[test]
fn quiet_writes_nothing_to_stderr_while_serving() {
    let p = setup().start_with_args(&config(), &["-q"]);
    let mut c = p.connect(TRUST_USER, "", APP_DB);
    assert_eq!(scalar(&mut c, "select 1").unwrap(), "1");
    drop(c);
    // Without -q the same start logs "listening on" and the login; with it, nothing.
    std::thread::sleep(secs(1));
    assert_eq!(p.log(), "", "stderr with -q");
    let loud = setup().start(&config());
    assert!(loud.wait_for_log("listening on", secs(5)), "{}", loud.log());
}

#[test]
fn user_flag_runs_the_workers_as_that_user() {
    assert!(
        common::tools::is_root(),
        "this test needs root, as CI and the development machines run"
    );
    let p = setup().start_with_args(&config(), &["-u", "postgres", "--workers", "2"]);
    let workers = p.wait_for_children(2, secs(10));
    let uid_of = |pid: i32| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let postgres = nix_uid("postgres");
    assert!(
        wait_until(secs(5), || workers.iter().all(|&w| uid_of(w) == postgres)),
        "workers {workers:?} are not running as postgres ({postgres})"
    );
    // The supervisor keeps root: it binds and forks.
    assert_eq!(uid_of(p.pid()), 0);
    let mut c = p.connect(TRUST_USER, "", APP_DB);
    assert_eq!(scalar(&mut c, "select 1").unwrap(), "1");
}

/// The uid of an OS user, from /etc/passwd.
fn nix_uid(name: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no user {name}"))
}
