//! Shared memory between the supervisor and its workers: global limits and per-worker stats.
//!
//! One `mmap(MAP_SHARED | MAP_ANONYMOUS)` region, made before the first fork and inherited
//! by every worker. Its layout is fixed-size and versioned:
//!
//! - a header with the global client count (for `max_client_conn`);
//! - a table of names (`d:<database>`, `u:<user>`), each with a global server count that
//!   enforces `max_db_connections` / `max_user_connections`;
//! - per worker slot: its identity and counters, its share of every global count, and its
//!   per-database stats.
//!
//! Limits are taken with an atomic add that is rolled back when it overshoots, so workers
//! never lock. Every worker also records its own share of each global count; when a worker
//! dies, the supervisor subtracts its shares, so a crash never leaks capacity. Counters a
//! single worker writes are plain loads and stores, not read-modify-write instructions.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

const MAGIC: u64 = 0x7067_6273_5f73_686d; // "pgbs_shm"
const VERSION: u32 = 1;
/// Longest name kept in the table: PostgreSQL's NAMEDATALEN - 1, plus the kind prefix.
pub const MAX_NAME: usize = 66;

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    workers_cap: u32,
    names_cap: u32,
    _pad: u32,
    clients: AtomicU32,
    _pad2: u32,
}

/// Identity and counters of one worker slot, written by that worker (and by the
/// supervisor while the slot has no live worker).
#[repr(C, align(128))]
pub struct WorkerSlot {
    pub pid: AtomicI32,
    /// 0 = empty, 1 = running, 2 = stopping.
    pub state: AtomicU32,
    pub generation: AtomicU64,
    /// Unix time the worker started, in seconds.
    pub started: AtomicU64,
    /// Clients connected to this worker now; also its share of the global count.
    pub clients: AtomicU64,
    pub servers: AtomicU64,
    pub accepts: AtomicU64,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub wait_us: AtomicU64,
    /// Unix time of the worker's last janitor pass: a worker that stops ticking is stuck.
    pub heartbeat: AtomicU64,
    pub proxy_accepted: AtomicU64,
    /// PROXY headers refused, by reason: untrusted, missing, invalid, timeout.
    pub proxy_rejected: [AtomicU64; 4],
    pub auth_failures: AtomicU64,
}

/// Per-database counters of one worker, in PgBouncer's SHOW STATS terms.
#[repr(C)]
#[derive(Default)]
pub struct DbStats {
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub query_time_us: AtomicU64,
    pub wait_time_us: AtomicU64,
    pub server_assignments: AtomicU64,
}

impl DbStats {
    /// All eight counters, in field order.
    pub fn values(&self) -> [u64; 8] {
        [
            self.xact_count.load(Relaxed),
            self.query_count.load(Relaxed),
            self.bytes_received.load(Relaxed),
            self.bytes_sent.load(Relaxed),
            self.xact_time_us.load(Relaxed),
            self.query_time_us.load(Relaxed),
            self.wait_time_us.load(Relaxed),
            self.server_assignments.load(Relaxed),
        ]
    }

    fn clear(&self) {
        for c in [
            &self.xact_count,
            &self.query_count,
            &self.bytes_received,
            &self.bytes_sent,
            &self.xact_time_us,
            &self.query_time_us,
            &self.wait_time_us,
            &self.server_assignments,
        ] {
            c.store(0, Relaxed);
        }
    }
}

#[repr(C)]
struct Name {
    /// 0 = free, 1 = being written, 2 = ready.
    state: AtomicU32,
    len: AtomicU32,
    bytes: [AtomicU8; MAX_NAME],
    /// Global count: servers for this database or user, all workers together.
    count: AtomicU32,
    /// Until when (Unix milliseconds) some worker has clients waiting because this
    /// name's limit is reached. Expires by itself, so a dead worker never leaves it set.
    starved_until: AtomicU64,
    /// Which workers (bit `slot % 64`) marked it: a worker's own mark must not make it
    /// close the servers its own waiting clients need.
    starved_by: AtomicU64,
    /// Database stats of workers that died (the supervisor adds them in), so totals never
    /// go back; and per-second averages over the last stats_period. Supervisor-written.
    retired: [AtomicU64; 8],
    averages: [AtomicU64; 8],
}

/// A worker's bit in `Name::starved_by`; slots past 64 share bits, which at worst lets a
/// server go that could have stayed.
fn slot_bit(slot: usize) -> u64 {
    1u64 << (slot % 64)
}

/// The mapped region. Cheap to share: every accessor takes `&self`.
pub struct Shm {
    base: *mut u8,
    len: usize,
    workers_cap: usize,
    names_cap: usize,
    off_workers: usize,
    off_names: usize,
    off_shares: usize,
    off_stats: usize,
}

// SAFETY: every field reached through the pointer is an atomic; the region lives as long
// as the Shm (unmapped only in Drop).
unsafe impl Send for Shm {}
unsafe impl Sync for Shm {}

/// Which global count a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Database,
    User,
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Shm {
    /// Maps a new zeroed region for up to `workers_cap` workers and `names_cap` names.
    pub fn create(workers_cap: usize, names_cap: usize) -> io::Result<Shm> {
        let off_workers = align(std::mem::size_of::<Header>(), 128);
        let off_names = align(
            off_workers + workers_cap * std::mem::size_of::<WorkerSlot>(),
            128,
        );
        let off_shares = align(off_names + names_cap * std::mem::size_of::<Name>(), 4096);
        // Each worker's shares and stats start on their own page: no false sharing.
        let shares_per_worker = align(names_cap * 4, 4096);
        let off_stats = off_shares + workers_cap * shares_per_worker;
        let stats_per_worker = align(names_cap * std::mem::size_of::<DbStats>(), 4096);
        let len = off_stats + workers_cap * stats_per_worker;
        // SAFETY: an anonymous shared mapping has no preconditions; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let shm = Shm {
            base: base as *mut u8,
            len,
            workers_cap,
            names_cap,
            off_workers,
            off_names,
            off_shares,
            off_stats,
        };
        // SAFETY: the header is at offset 0 of a fresh, zeroed, writable mapping.
        unsafe {
            let h = shm.base as *mut Header;
            (*h).magic = MAGIC;
            (*h).version = VERSION;
            (*h).workers_cap = workers_cap as u32;
            (*h).names_cap = names_cap as u32;
        }
        Ok(shm)
    }

    pub fn workers_cap(&self) -> usize {
        self.workers_cap
    }

    fn header(&self) -> &Header {
        // SAFETY: offset 0 holds the header for the mapping's whole life.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn is_valid(&self) -> bool {
        let h = self.header();
        h.magic == MAGIC && h.version == VERSION
    }

    pub fn worker(&self, slot: usize) -> &WorkerSlot {
        assert!(slot < self.workers_cap);
        // SAFETY: slot is in bounds; the slots array lies inside the mapping.
        unsafe { &*(self.base.add(self.off_workers) as *const WorkerSlot).add(slot) }
    }

    fn name(&self, i: usize) -> &Name {
        debug_assert!(i < self.names_cap);
        // SAFETY: i < names_cap; the names array lies inside the mapping.
        unsafe { &*(self.base.add(self.off_names) as *const Name).add(i) }
    }

    fn share(&self, slot: usize, i: usize) -> &AtomicU32 {
        debug_assert!(slot < self.workers_cap && i < self.names_cap);
        let per = align(self.names_cap * 4, 4096);
        // SAFETY: both indexes are in bounds of the shares area.
        unsafe { &*(self.base.add(self.off_shares + slot * per) as *const AtomicU32).add(i) }
    }

    /// A worker's stats for the database at name index `i`.
    pub fn db_stats(&self, slot: usize, i: usize) -> &DbStats {
        assert!(slot < self.workers_cap && i < self.names_cap);
        let per = align(self.names_cap * std::mem::size_of::<DbStats>(), 4096);
        // SAFETY: both indexes are in bounds of the stats area.
        unsafe { &*(self.base.add(self.off_stats + slot * per) as *const DbStats).add(i) }
    }

    /// The table index of a database or user name, adding it on first use. None when the
    /// name is too long or the table is full (the limit is then not enforced for it).
    pub fn name_index(&self, kind: Kind, name: &str) -> Option<usize> {
        let mut key = [0u8; MAX_NAME];
        let prefix: &[u8] = match kind {
            Kind::Database => b"d:",
            Kind::User => b"u:",
        };
        let len = prefix.len() + name.len();
        if len > MAX_NAME {
            return None;
        }
        key[..2].copy_from_slice(prefix);
        key[2..len].copy_from_slice(name.as_bytes());
        let key = &key[..len];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        for probe in 0..self.names_cap {
            let i = (h as usize + probe) % self.names_cap;
            let e = self.name(i);
            let mut st = e.state.load(Acquire);
            if st == 0 && e.state.compare_exchange(0, 1, AcqRel, Acquire).is_ok() {
                for (j, &b) in key.iter().enumerate() {
                    e.bytes[j].store(b, Relaxed);
                }
                e.len.store(len as u32, Relaxed);
                e.state.store(2, Release);
                return Some(i);
            }
            // Another process is writing this entry: it finishes within a few stores.
            while st != 2 {
                std::hint::spin_loop();
                st = e.state.load(Acquire);
            }
            if e.len.load(Relaxed) as usize == len
                && key
                    .iter()
                    .enumerate()
                    .all(|(j, &b)| e.bytes[j].load(Relaxed) == b)
            {
                return Some(i);
            }
        }
        None
    }

    /// The table index of a name already in the table.
    pub fn name_index_existing(&self, kind: Kind, name: &str) -> Option<usize> {
        self.names()
            .into_iter()
            .find(|(k, n, _)| *k == kind && n == name)
            .map(|(_, _, i)| i)
    }

    /// What dead workers counted for the database at `i`.
    pub fn retired(&self, i: usize) -> [u64; 8] {
        let e = self.name(i);
        std::array::from_fn(|k| e.retired[k].load(Relaxed))
    }

    /// Per-second averages over the last stats_period for the database at `i`.
    pub fn averages(&self, i: usize) -> [u64; 8] {
        let e = self.name(i);
        std::array::from_fn(|k| e.averages[k].load(Relaxed))
    }

    pub fn set_averages(&self, i: usize, avg: [u64; 8]) {
        let e = self.name(i);
        for (k, v) in avg.into_iter().enumerate() {
            e.averages[k].store(v, Relaxed);
        }
    }

    /// Every name in the table with its index, for reports.
    pub fn names(&self) -> Vec<(Kind, String, usize)> {
        let mut out = Vec::new();
        for i in 0..self.names_cap {
            let e = self.name(i);
            if e.state.load(Acquire) != 2 {
                continue;
            }
            let len = e.len.load(Relaxed) as usize;
            let bytes: Vec<u8> = (0..len).map(|j| e.bytes[j].load(Relaxed)).collect();
            let kind = if bytes.starts_with(b"d:") {
                Kind::Database
            } else {
                Kind::User
            };
            out.push((kind, String::from_utf8_lossy(&bytes[2..]).into_owned(), i));
        }
        out
    }

    /// Takes one unit of the global count at `i` unless that would pass `limit` (0 = none).
    pub fn acquire(&self, slot: usize, i: usize, limit: u32) -> bool {
        let c = &self.name(i).count;
        let before = c.fetch_add(1, AcqRel);
        if limit != 0 && before >= limit {
            c.fetch_sub(1, AcqRel);
            return false;
        }
        let s = self.share(slot, i);
        s.store(s.load(Relaxed) + 1, Relaxed);
        true
    }

    pub fn release(&self, slot: usize, i: usize) {
        let s = self.share(slot, i);
        let mine = s.load(Relaxed);
        if mine == 0 {
            return;
        }
        s.store(mine - 1, Relaxed);
        self.name(i).count.fetch_sub(1, AcqRel);
    }

    /// A worker could not get a server because this name's limit is reached.
    pub fn mark_starved(&self, slot: usize, i: usize, until_ms: u64) {
        let n = self.name(i);
        n.starved_by.fetch_or(slot_bit(slot), AcqRel);
        n.starved_until.fetch_max(until_ms, AcqRel);
    }

    /// Worker `slot` no longer waits for this name's capacity.
    pub fn clear_starved(&self, slot: usize, i: usize) {
        self.name(i).starved_by.fetch_and(!slot_bit(slot), AcqRel);
    }

    /// Whether a worker other than `slot` is waiting for this name's capacity.
    pub fn is_starved_elsewhere(&self, slot: usize, i: usize, now_ms: u64) -> bool {
        let n = self.name(i);
        n.starved_until.load(Acquire) > now_ms && n.starved_by.load(Acquire) & !slot_bit(slot) != 0
    }

    /// The global count at `i`.
    pub fn count(&self, i: usize) -> u32 {
        self.name(i).count.load(Acquire)
    }

    /// Takes a client place unless the pooler already has `limit`.
    pub fn acquire_client(&self, slot: usize, limit: u32) -> bool {
        let c = &self.header().clients;
        let before = c.fetch_add(1, AcqRel);
        if limit != 0 && before >= limit {
            c.fetch_sub(1, AcqRel);
            return false;
        }
        let w = &self.worker(slot).clients;
        w.store(w.load(Relaxed) + 1, Relaxed);
        true
    }

    pub fn release_client(&self, slot: usize) {
        let w = &self.worker(slot).clients;
        let mine = w.load(Relaxed);
        if mine == 0 {
            return;
        }
        w.store(mine - 1, Relaxed);
        self.header().clients.fetch_sub(1, AcqRel);
    }

    pub fn clients(&self) -> u32 {
        self.header().clients.load(Acquire)
    }

    /// After a worker died: gives back everything it held, so no capacity leaks.
    /// Called by the supervisor only, while the slot has no live process.
    pub fn reclaim(&self, slot: usize) {
        for i in 0..self.names_cap {
            let s = self.share(slot, i);
            let held = s.swap(0, AcqRel);
            if held > 0 {
                self.name(i).count.fetch_sub(held, AcqRel);
            }
        }
        let w = self.worker(slot);
        let held = w.clients.swap(0, AcqRel) as u32;
        if held > 0 {
            self.header().clients.fetch_sub(held, AcqRel);
        }
        w.servers.store(0, Release);
        w.pid.store(0, Release);
        w.state.store(0, Release);
        // Its database counters move to the retired totals, so totals never go back.
        for (_, _, i) in self.names() {
            let d = self.db_stats(slot, i);
            let e = self.name(i);
            for (k, v) in d.values().into_iter().enumerate() {
                e.retired[k].fetch_add(v, AcqRel);
            }
            d.clear();
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// Milliseconds since the Unix epoch, the clock shared-memory deadlines use.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Adds to a counter only this process writes: no locked instruction needed.
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_roll_back() {
        let shm = Shm::create(4, 64).unwrap();
        assert!(shm.is_valid());
        let db = shm.name_index(Kind::Database, "app").unwrap();
        assert_eq!(shm.name_index(Kind::Database, "app"), Some(db));
        assert_ne!(shm.name_index(Kind::User, "app"), Some(db));
        assert!(shm.acquire(0, db, 2));
        assert!(shm.acquire(1, db, 2));
        assert!(!shm.acquire(2, db, 2));
        assert_eq!(shm.count(db), 2);
        shm.release(1, db);
        assert!(shm.acquire(2, db, 2));
        // Worker 0 dies holding one: the supervisor gives it back.
        shm.reclaim(0);
        assert_eq!(shm.count(db), 1);
        assert!(shm.acquire(3, db, 2));
        // Releasing what a slot doesn't hold never goes below zero.
        shm.release(0, db);
        assert_eq!(shm.count(db), 2);
    }

    #[test]
    fn clients_are_global() {
        let shm = Shm::create(2, 8).unwrap();
        assert!(shm.acquire_client(0, 3));
        assert!(shm.acquire_client(1, 3));
        assert!(shm.acquire_client(1, 3));
        assert!(!shm.acquire_client(0, 3));
        shm.reclaim(1);
        assert_eq!(shm.clients(), 1);
        shm.release_client(0);
        assert_eq!(shm.clients(), 0);
    }

    #[test]
    fn names_fill_up_and_long_names_are_refused() {
        let shm = Shm::create(1, 4).unwrap();
        for n in 0..4 {
            assert!(shm.name_index(Kind::User, &format!("u{n}")).is_some());
        }
        assert_eq!(shm.name_index(Kind::User, "u9"), None);
        assert_eq!(shm.name_index(Kind::User, &"x".repeat(70)), None);
        let names = shm.names();
        assert_eq!(names.len(), 4);
        assert!(names.iter().any(|(k, n, _)| *k == Kind::User && n == "u2"));
    }

    #[test]
    fn shared_across_fork() {
        let shm = Shm::create(2, 8).unwrap();
        let i = shm.name_index(Kind::Database, "x").unwrap();
        // SAFETY: the child only touches the mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = shm.acquire(1, i, 5);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(shm.count(i), 1);
        assert_eq!(shm.name_index(Kind::Database, "x"), Some(i));
    }
}
