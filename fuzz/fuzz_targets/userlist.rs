//! Fuzz target: the auth_file parser never panics, keeps only sane user names, and what it read writes back to a file that reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::auth::userlist::{MAX_PASSWORD_LEN, MAX_USERNAME_LEN};
use pgbouncers_worker::auth::{md5_secret_string, Secret, Userlist};

fn quote(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

fn stored_text(secret: &Secret) -> String {
    match secret {
        Secret::Plain(p) => p.clone(),
        Secret::Md5(h) => md5_secret_string(h),
        Secret::Scram(s) => s.encode(),
    }
}

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|&b| b == b'\n').count();
    let list = match Userlist::parse_bytes(data) {
        Ok(list) => list,
        Err(e) => {
            let _ = e.to_string();
            if let Some(line) = e.line() {
                assert!(
                    line >= 1 && line <= lines,
                    "error on line {line} of {lines}"
                );
            }
            return;
        }
    };
    let mut names: Vec<&str> = list.usernames().collect();
    names.sort_unstable();
    assert_eq!(names.len(), list.len());
    assert_eq!(list.is_empty(), names.is_empty());
    let mut file = String::new();
    for name in &names {
        assert!(!name.is_empty(), "empty user name");
        assert!(name.len() <= MAX_USERNAME_LEN && !name.contains('\0'));
        let secret = list.get(name).expect("a listed user has a secret");
        let text = stored_text(secret);
        assert!(text.len() <= MAX_PASSWORD_LEN && !text.contains('\0'));
        let _ = format!("{secret:?}");
        file.push_str(&format!("{} {}\n", quote(name), quote(&text)));
    }
    for w in list.warnings() {
        assert!(w.line >= 1 && w.line <= lines);
        let _ = w.to_string();
    }
    // Writing the users back gives a file that reads the same.
    let again = Userlist::parse(&file).expect("our own rendering parses");
    assert_eq!(again.len(), list.len());
    for name in names {
        assert_eq!(again.get(name), list.get(name), "{name:?} changed");
    }
});
