//! Fuzz target: the hba parser never panics, its rules write back to a file that parses the same, and lookup returns the first matching rule.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::auth::hba::{
    Address, ConnType, DbMatch, Hba, HbaConn, HbaConnKind, Rule, UserMatch,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let hba = match Hba::parse(text) {
        Ok(hba) => hba,
        Err(e) => {
            let _ = e.to_string();
            if let Some(line) = e.line() {
                assert!(line >= 1 && line <= text.split('\n').count());
            }
            return;
        }
    };
    assert_eq!(hba.len(), hba.rules().len());
    let mut last_line = 0;
    let mut file = String::new();
    for rule in hba.rules() {
        assert!(rule.line() > last_line, "rules out of file order");
        assert!(!rule.databases().is_empty() && !rule.users().is_empty());
        assert_eq!(
            rule.address().is_none(),
            rule.conn_type() == ConnType::Local
        );
        let _ = rule.method().to_string();
        // Each rule back on its own line, at the line it came from.
        while last_line + 1 < rule.line() {
            file.push('\n');
            last_line += 1;
        }
        file.push_str(&rule.to_string());
        file.push('\n');
        last_line = rule.line();
    }
    let again = Hba::parse(&file).unwrap_or_else(|e| panic!("our rendering fails: {e}\n{file}"));
    assert_eq!(again, hba, "rendering changed the rules:\n{file}");

    for rule in hba.rules() {
        for tls in [false, true] {
            if let Some(names) = matching_names(rule) {
                // A rule narrowed by `endpoint=` matches connections from that endpoint.
                let endpoint = rule
                    .options()
                    .iter()
                    .find(|(k, _)| k == "endpoint")
                    .map(|(_, v)| v.as_str());
                let conn = HbaConn {
                    kind: matching_kind(rule, tls),
                    database: &names.0,
                    user: &names.1,
                    endpoint,
                    physical_replication: false,
                };
                assert!(rule.matches(&conn), "{rule} does not match {conn:?}");
                let found = hba.lookup(&conn).expect("a matching rule exists");
                assert!(found.line() <= rule.line());
                check_lookup(&hba, &conn);
            }
        }
    }
    for addr in [
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
    ] {
        let conn = HbaConn {
            kind: HbaConnKind::Host { addr, tls: false },
            database: "app",
            user: "app",
            endpoint: None,
            physical_replication: false,
        };
        check_lookup(&hba, &conn);
    }
});

/// lookup is the first rule that matches.
fn check_lookup(hba: &Hba, conn: &HbaConn<'_>) {
    let first = hba.rules().iter().find(|r| r.matches(conn));
    assert_eq!(hba.lookup(conn), first);
}

/// A database and user that the rule's lists accept, if any can.
fn matching_names(rule: &Rule) -> Option<(String, String)> {
    let user = match rule.users().first()? {
        UserMatch::All => "someone".to_owned(),
        UserMatch::Name(n) => n.clone(),
    };
    let db = rule.databases().iter().find_map(|d| match d {
        DbMatch::All => Some("somedb".to_owned()),
        DbMatch::SameUser => Some(user.clone()),
        DbMatch::Replication => None,
        DbMatch::Name(n) => Some(n.clone()),
    })?;
    Some((db, user))
}

fn matching_kind(rule: &Rule, tls: bool) -> HbaConnKind {
    let addr = match rule.address() {
        None => return HbaConnKind::Local,
        Some(Address::All) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        Some(Address::Net(net)) => net.addr(),
    };
    let tls = match rule.conn_type() {
        ConnType::HostSsl => true,
        ConnType::HostNoSsl => false,
        _ => tls,
    };
    HbaConnKind::Host { addr, tls }
}
