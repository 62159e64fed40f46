//! Process titles: `ps` shows `pgbouncers: worker 2` while `pgrep -x pgbouncers` still matches.
//!
//! The command line shown by `ps` is the argv area of the process's memory; /proc/self/stat
//! tells where it is, and a worker overwrites it in place (as PostgreSQL's ps_status.c does).
//! The short process name (comm) stays `pgbouncers`.

/// Replaces the command line `ps` shows; silently does nothing where it can't.
pub fn set(title: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised name; arg_start and arg_end are fields 48 and 49.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (fields.get(45), fields.get(46)) else {
        return;
    };
    let (Ok(start), Ok(end)) = (start.parse::<usize>(), end.parse::<usize>()) else {
        return;
    };
    if start == 0 || end <= start {
        return;
    }
    let len = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [arg_start, arg_end) is this process's argv string area, mapped and writable
    // for the life of the process. Nothing in Rust borrows it: std copied argv at startup.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
}
