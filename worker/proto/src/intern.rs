//! Interned strings: one shared copy per distinct name or value a worker holds.
//!
//! Idle clients are mostly the same few strings (user, database, client_encoding, DateStyle,
//! TimeZone...); sharing them is most of what keeps an idle client small, and lets lists of
//! interned strings compare by pointer.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

/// The strings of this thread (a worker has one thread).
struct Interner {
    set: HashSet<Rc<str>>,
    /// Live strings after the last sweep.
    swept_to: usize,
}

thread_local! {
    static STRINGS: RefCell<Interner> = RefCell::new(Interner {
        set: HashSet::new(),
        swept_to: 0,
    });
}

/// The shared copy of `s`. Strings nobody holds any more are dropped once the set has
/// doubled since the last sweep, so clients with unique application_names cannot grow it
/// without bound and the sweeps cost O(1) per string interned.
pub fn intern(s: &str) -> Rc<str> {
    STRINGS.with(|cell| {
        let mut i = cell.borrow_mut();
        if let Some(r) = i.set.get(s) {
            return Rc::clone(r);
        }
        if i.set.len() >= 2 * i.swept_to.max(512) {
            i.set.retain(|r| Rc::strong_count(r) > 1);
            i.swept_to = i.set.len();
        }
        let r: Rc<str> = Rc::from(s);
        i.set.insert(Rc::clone(&r));
        r
    })
}

/// How many strings are interned on this thread (for tests).
#[cfg(test)]
pub(crate) fn interned() -> usize {
    STRINGS.with(|cell| cell.borrow().set.len())
}
