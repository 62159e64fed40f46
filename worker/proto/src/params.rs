//! Session parameters: what each client expects, what each server has, and the SET that aligns them.
//!
//! The server reports some parameters (GUC_REPORT) by ParameterStatus. Of those, the ones a
//! client can change and expects to keep are `TRACKED`: they come from the pool's welcome or
//! the client's startup packet and follow every ParameterStatus while linked. Any other startup
//! parameter (extra_float_digits, search_path, `-c` options) is an extra: applied with SET when
//! the client gets a server, and RESET when a client without it gets that server later.

use crate::intern::intern;
use std::rc::Rc;

/// Reported parameters synced to every server a client uses, in the server's spelling.
pub const TRACKED: [&str; 6] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
];

/// Startup parameters that pick the pool or the protocol and are never SET.
const NOT_SETTABLE: [&str; 4] = ["user", "database", "replication", "options"];

/// The canonical spelling of a tracked name, or None for an extra: the built-in ones, then
/// those `track_extra_parameters` adds (see [`set_extra_tracked`]).
pub fn tracked_name(name: &str) -> Option<&'static str> {
    builtin_name(name).or_else(|| {
        EXTRA_TRACKED.with(|e| {
            e.borrow()
                .iter()
                .copied()
                .find(|t| t.eq_ignore_ascii_case(name))
        })
    })
}

/// The canonical spelling of a built-in tracked name.
fn builtin_name(name: &str) -> Option<&'static str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}

thread_local! {
    /// `track_extra_parameters` beyond the built-in list, as this thread last set them.
    static EXTRA_TRACKED: std::cell::RefCell<Vec<&'static str>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Every name ever tracked: a name listed again (after a reload) is not leaked twice.
    static KNOWN: std::cell::RefCell<Vec<&'static str>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Sets the parameters `track_extra_parameters` adds to the built-in ones (PgBouncer 1.20+).
/// A listed parameter that the server reports (GUC_REPORT, as `default_transaction_read_only`
/// is from PostgreSQL 14) is tracked like the built-in ones: a client's value follows every
/// ParameterStatus while it is linked, whether it came from the startup packet or a `SET`,
/// and is SET on the next server it gets. One the server does not report (`search_path`
/// before PostgreSQL 18) cannot be followed: only the value the client sent at startup is
/// SET on each server, as for any other startup parameter. Cheap when nothing changed;
/// names keep the spelling they were first given, and those that are not plain GUC names, or that
/// are built in, are skipped.
pub fn set_extra_tracked<S: AsRef<str>>(names: &[S]) {
    let unchanged = EXTRA_TRACKED.with(|e| {
        let e = e.borrow();
        let mut wanted = names
            .iter()
            .map(AsRef::as_ref)
            .filter(|n| is_settable_name(n) && builtin_name(n).is_none());
        e.iter()
            .all(|t| wanted.next().is_some_and(|w| w.eq_ignore_ascii_case(t)))
            && wanted.next().is_none()
    });
    if unchanged {
        return;
    }
    let mut list: Vec<&'static str> = Vec::new();
    for n in names.iter().map(AsRef::as_ref) {
        if !is_settable_name(n) || builtin_name(n).is_some() {
            continue;
        }
        let known = KNOWN.with(|k| {
            k.borrow()
                .iter()
                .copied()
                .find(|t| t.eq_ignore_ascii_case(n))
        });
        let name = known.unwrap_or_else(|| {
            let leaked: &'static str = Box::leak(n.to_owned().into_boxed_str());
            KNOWN.with(|k| k.borrow_mut().push(leaked));
            leaked
        });
        if !list.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            list.push(name);
        }
    }
    EXTRA_TRACKED.with(|e| *e.borrow_mut() = list);
}

/// Whether a startup parameter name may be applied with SET: a plain GUC name.
pub fn is_settable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !NOT_SETTABLE.iter().any(|n| n.eq_ignore_ascii_case(name))
        && name.len() < 64
}

/// A small name -> value list. GUC names are case-insensitive, so names are stored in one
/// spelling (the server's for tracked ones, lower case for the rest) and kept sorted:
/// two lists hold the same settings exactly when they are equal, which makes the check
/// at every server assignment one comparison in the common case.
///
/// Names and values are interned (see [`crate::intern`]): ten thousand idle clients with the same
/// client_encoding, DateStyle and TimeZone share one copy of each string instead of holding
/// a dozen small allocations apiece, and equal strings are the same pointer.
#[derive(Debug, Default, Clone)]
pub struct Params {
    list: Vec<(Rc<str>, Rc<str>)>,
}

/// Interning is exact (one allocation per distinct live string on this thread), so two
/// lists are equal exactly when their entries are the same pointers.
impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.list.len() == other.list.len()
            && self
                .list
                .iter()
                .zip(&other.list)
                .all(|(a, b)| Rc::ptr_eq(&a.0, &b.0) && Rc::ptr_eq(&a.1, &b.1))
    }
}

impl Eq for Params {}

fn spelling(name: &str) -> std::borrow::Cow<'_, str> {
    match builtin_name(name) {
        Some(t) => t.into(),
        None if name.bytes().any(|b| b.is_ascii_uppercase()) => name.to_ascii_lowercase().into(),
        None => name.into(),
    }
}

fn order(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.list.binary_search_by(|(k, _)| order(k, name))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).ok().map(|i| &*self.list[i].1)
    }

    /// Sets a value; returns whether anything changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        match self.find(name) {
            Ok(i) if *self.list[i].1 == *value => false,
            Ok(i) => {
                self.list[i].1 = intern(value);
                true
            }
            Err(i) => {
                self.list
                    .insert(i, (intern(&spelling(name)), intern(value)));
                true
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.list.remove(i);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Keeps only tracked parameters: what a server has after DISCARD ALL.
    pub fn retain_tracked(&mut self) {
        // Only the built-in ones: a track_extra_parameters name the server does not report
        // would otherwise be believed still set.
        self.list.retain(|(k, _)| builtin_name(k).is_some());
    }
}

/// Parses the `options` startup parameter: `-c name=value` and `--name=value` items,
/// with backslash escaping spaces as libpq does.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "\"-c\" without a setting in options".to_string())?
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_string()
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_string()
        } else {
            return Err(format!("unsupported item in options: {w}"));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("option \"{setting}\" has no value"))?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

/// The statements that make a server with `server` parameters look like `client` expects,
/// appended to `sql`; returns whether any were needed.
pub fn sync_statements(client: &Params, server: &Params, sql: &mut String) -> bool {
    if client == server {
        return false;
    }
    let start = sql.len();
    for (k, v) in client.iter() {
        if server.get(k) != Some(v) {
            sql.push_str("SET ");
            sql.push_str(k);
            sql.push_str(" TO ");
            push_literal(sql, v);
            sql.push(';');
        }
    }
    // Parameters tracked through track_extra_parameters are extras here: one the server
    // does not report must be RESET when a client without it gets the server.
    for (k, _) in server.iter() {
        if builtin_name(k).is_none() && client.get(k).is_none() {
            sql.push_str("RESET ");
            sql.push_str(k);
            sql.push(';');
        }
    }
    sql.len() > start
}

/// Applies to `server` what `sync_statements` asked for: extras it SET and RESET.
/// Tracked values arrive by ParameterStatus; extras are not reported, so record them here.
pub fn apply_extras(client: &Params, server: &mut Params) {
    server
        .list
        .retain(|(k, _)| builtin_name(k).is_some() || client.get(k).is_some());
    for (k, v) in client.iter() {
        if builtin_name(k).is_none() {
            server.set(k, v);
        }
    }
}

/// A string literal that means the same whatever standard_conforming_strings is.
fn push_literal(sql: &mut String, v: &str) {
    sql.push_str("E'");
    for c in v.chars() {
        match c {
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::new();
        for (k, v) in pairs {
            p.set(k, v);
        }
        p
    }

    #[test]
    fn clients_share_one_copy_of_each_string() {
        let a = params(&[("client_encoding", "UTF8"), ("TimeZone", "UTC")]);
        let b = params(&[("timezone", "UTC"), ("CLIENT_ENCODING", "UTF8")]);
        for ((ka, va), (kb, vb)) in a.list.iter().zip(&b.list) {
            assert!(Rc::ptr_eq(ka, kb) && Rc::ptr_eq(va, vb));
        }
        assert_eq!(a, b);
        let c = params(&[
            ("client_encoding", "UTF8"),
            ("TimeZone", "UTC "),
            ("x", "1"),
        ]);
        assert_ne!(a, c);
        let d = params(&[("client_encoding", "UTF8"), ("TimeZone", "UTC ")]);
        assert_ne!(a, d);
    }

    #[test]
    fn unique_values_do_not_grow_the_interner_without_bound() {
        for round in 0..20 {
            let mut held = Params::new();
            for n in 0..1000 {
                let mut p = Params::new();
                p.set("application_name", &format!("app-{round}-{n}"));
                if n == 0 {
                    held = p;
                }
            }
            assert_eq!(
                held.get("application_name"),
                Some(format!("app-{round}-0").as_str())
            );
        }
        let n = crate::intern::interned();
        assert!(n <= 2048, "{n} strings interned");
    }

    #[test]
    fn equal_params_need_nothing() {
        let c = params(&[("TimeZone", "UTC"), ("extra_float_digits", "3")]);
        let s = params(&[("timezone", "UTC"), ("extra_float_digits", "3")]);
        let mut sql = String::new();
        assert!(!sync_statements(&c, &s, &mut sql));
        assert_eq!(sql, "");
    }

    #[test]
    fn differences_set_and_extras_reset() {
        let c = params(&[("TimeZone", "Europe/Paris"), ("application_name", "it's")]);
        let s = params(&[
            ("TimeZone", "UTC"),
            ("application_name", "it's"),
            ("search_path", "x"),
        ]);
        let mut sql = String::new();
        assert!(sync_statements(&c, &s, &mut sql));
        assert_eq!(sql, "SET TimeZone TO E'Europe/Paris';RESET search_path;");
    }

    #[test]
    fn track_extra_parameters_adds_reported_names_and_keeps_them_extras_for_reset() {
        assert_eq!(tracked_name("default_transaction_read_only"), None);
        set_extra_tracked(&["Default_Transaction_Read_Only", "IntervalStyle", "bad name"]);
        assert_eq!(
            tracked_name("DEFAULT_TRANSACTION_READ_ONLY"),
            Some("Default_Transaction_Read_Only")
        );
        // Built-in names stay built in; names that are not GUC names are skipped.
        assert_eq!(tracked_name("intervalstyle"), Some("IntervalStyle"));
        assert_eq!(tracked_name("bad name"), None);
        // Listed again, the same leaked name is reused.
        let before = tracked_name("default_transaction_read_only").unwrap();
        set_extra_tracked(&["search_path".to_string()]);
        set_extra_tracked(&["default_transaction_read_only".to_string()]);
        assert!(std::ptr::eq(
            before,
            tracked_name("default_transaction_read_only").unwrap()
        ));
        assert_eq!(tracked_name("search_path"), None);
        // A server that has it but a client without it gets a RESET, as for any extra
        // (the server may not report it), and DISCARD ALL forgets it.
        let server = params(&[("default_transaction_read_only", "on")]);
        let mut sql = String::new();
        assert!(sync_statements(&Params::new(), &server, &mut sql));
        assert_eq!(sql, "RESET default_transaction_read_only;");
        let mut s = server.clone();
        s.retain_tracked();
        assert!(s.is_empty());
        set_extra_tracked::<&str>(&[]);
        assert_eq!(tracked_name("default_transaction_read_only"), None);
    }

    #[test]
    fn spelling_and_order_make_equal_sets_equal() {
        let a = params(&[
            ("timezone", "UTC"),
            ("Extra_Float_Digits", "3"),
            ("DateStyle", "ISO"),
        ]);
        let b = params(&[
            ("extra_float_digits", "3"),
            ("datestyle", "ISO"),
            ("TimeZone", "UTC"),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.get("TIMEZONE"), Some("UTC"));
        let names: Vec<&str> = a.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["DateStyle", "extra_float_digits", "TimeZone"]);
        let mut c = b.clone();
        c.remove("EXTRA_float_digits");
        assert_ne!(a, c);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        let mut sql = String::new();
        push_literal(&mut sql, r"a'b\c");
        assert_eq!(sql, r"E'a''b\\c'");
    }

    #[test]
    fn apply_extras_tracks_set_and_reset() {
        let c = params(&[("TimeZone", "UTC"), ("extra_float_digits", "3")]);
        let mut s = params(&[("TimeZone", "UTC"), ("search_path", "x")]);
        apply_extras(&c, &mut s);
        assert_eq!(s.get("extra_float_digits"), Some("3"));
        assert_eq!(s.get("search_path"), None);
        assert_eq!(s.get("TimeZone"), Some("UTC"));
    }

    #[test]
    fn options_parse() {
        assert_eq!(
            parse_options(r"-c statement_timeout=5s --search-path=a\ b -cwork_mem=4MB").unwrap(),
            vec![
                ("statement_timeout".into(), "5s".into()),
                ("search_path".into(), "a b".into()),
                ("work_mem".into(), "4MB".into()),
            ]
        );
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c foo").is_err());
    }

    #[test]
    fn settable_names() {
        assert!(is_settable_name("extra_float_digits"));
        assert!(is_settable_name("myapp.tenant"));
        assert!(!is_settable_name("user"));
        assert!(!is_settable_name("a;drop"));
        assert!(!is_settable_name("1abc"));
        assert_eq!(tracked_name("datestyle"), Some("DateStyle"));
    }
}
