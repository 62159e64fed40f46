//! Shared memory between the supervisor and its workers: global limits and per-worker stats.
//!
//! One `MAP_SHARED` region of a memfd, mapped before the first fork and inherited by every
//! worker. An online upgrade passes the memfd to the new supervisor, which maps it beside
//! its own to show the old generation's workers (and count its clients) during the overlap. Its layout is fixed-size and versioned, and
//! made only of `#[repr(C)]` types whose fields are all atomics (or padding never written):
//!
//! | part      | type                          | count                             | aligned to |
//! |-----------|-------------------------------|-----------------------------------|------------|
//! | header    | `Header`: magic, version, capacities, the global client count | 1 | 8 |
//! | workers   | [`WorkerSlot`]: identity and counters | `workers_cap`             | 128        |
//! | names     | `Name`: `d:<database>` / `u:<user>`, each with a global server count that enforces `max_db_connections` / `max_user_connections`, and a global client count that enforces `max_db_client_connections` / `max_user_client_connections` | `names_cap` | 128 |
//! | shares    | `AtomicU32`: one worker's share of every name's server count, then of every name's client count | `workers_cap` rows of `2 * names_cap` | a page per row |
//! | stats     | [`DbStats`]: one worker's per-database stats | `workers_cap` rows of `names_cap` | a page per row |
//!
//! `Plan` works out where each part lies, once, with checked arithmetic
//! (`std::alloc::Layout`); `Shm::region` is the one place that turns the mapping into
//! typed slices. Every index that comes from a caller is checked against those slices: an
//! index out of range is refused (`false`), ignored, or reads as zero, and never reaches
//! memory outside its part.
//!
//! Limits are taken with an atomic add that is rolled back when it overshoots, so workers
//! never lock. Every worker also records its own share of each global count; when a worker
//! dies, the supervisor subtracts its shares, so a crash never leaks capacity. Counters a
//! single worker writes are plain loads and stores, not read-modify-write instructions.

use std::alloc::Layout;
use std::ffi::c_void;
use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

const MAGIC: u64 = 0x7067_6273_5f73_686d; // "pgbs_shm"
/// 2: worker slots count TLS sessions and failures. 3: names count clients too.
/// 4: the header names the pooler generation (online upgrades). 5: per-database
/// counters of parses, binds and logins, and worker counters of cancel requests.
const VERSION: u32 = 5;
/// Longest name kept in the table: PostgreSQL's NAMEDATALEN - 1, plus the kind prefix.
pub const MAX_NAME: usize = 66;
/// Each worker's row of shares and of stats starts on its own page: no false sharing.
const PAGE: usize = 4096;

/// Start of the region. Written once by [`Shm::create`], before any fork, except the
/// global client count.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    workers_cap: AtomicU32,
    names_cap: AtomicU32,
    /// The pooler generation: 1 at a cold start, one more at each online upgrade.
    generation: AtomicU32,
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
    /// TLS sessions clients began.
    pub tls_handshakes: AtomicU64,
    /// TLS refusals and failures, indexed by `stats::TlsFailure`.
    pub tls_failures: [AtomicU64; 4],
    /// CancelRequests that arrived, by `stats::CancelOutcome`.
    pub cancels: [AtomicU64; 4],
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
    /// Named statements clients prepared (Parse), with max_prepared_statements on.
    pub client_parse_count: AtomicU64,
    /// Parses the pooler sent to servers for them (a statement new to that server).
    pub server_parse_count: AtomicU64,
    /// Binds of named statements.
    pub bind_count: AtomicU64,
    /// Clients that logged in.
    pub client_login_count: AtomicU64,
    /// Unused: keeps a row of stats a whole number of entries per page (128 bytes each).
    _reserved: [AtomicU64; 4],
}

/// The counters of [`DbStats::values`].
pub const DB_COUNTERS: usize = 12;

impl DbStats {
    fn counters(&self) -> [&AtomicU64; DB_COUNTERS] {
        [
            &self.xact_count,
            &self.query_count,
            &self.bytes_received,
            &self.bytes_sent,
            &self.xact_time_us,
            &self.query_time_us,
            &self.wait_time_us,
            &self.server_assignments,
            &self.client_parse_count,
            &self.server_parse_count,
            &self.bind_count,
            &self.client_login_count,
        ]
    }

    /// Every counter, in field order.
    pub fn values(&self) -> [u64; DB_COUNTERS] {
        self.counters().map(|c| c.load(Relaxed))
    }

    fn clear(&self) {
        for c in self.counters() {
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
    /// Global count: clients of this database or user, all workers together.
    clients: AtomicU32,
    /// Until when (Unix milliseconds) some worker has clients waiting because this
    /// name's limit is reached. Expires by itself, so a dead worker never leaves it set.
    starved_until: AtomicU64,
    /// Which workers (bit `slot % 64`) marked it: a worker's own mark must not make it
    /// close the servers its own waiting clients need.
    starved_by: AtomicU64,
    /// Database stats of workers that died (the supervisor adds them in), so totals never
    /// go back; and per-second averages over the last stats_period. Supervisor-written.
    retired: [AtomicU64; DB_COUNTERS],
    averages: [AtomicU64; DB_COUNTERS],
}

/// A worker's bit in `Name::starved_by`; slots past 64 share bits, which at worst lets a
/// server go that could have stayed.
fn slot_bit(slot: usize) -> u64 {
    1u64 << (slot % 64)
}

// A row of shares or stats is a whole number of entries, so the rows lie end to end in one
// slice; and the mapping's page alignment covers every part's alignment.
const _: () = assert!(PAGE.is_multiple_of(std::mem::size_of::<AtomicU32>()));
const _: () = assert!(PAGE.is_multiple_of(std::mem::size_of::<DbStats>()));
const _: () = assert!(std::mem::align_of::<Header>() <= PAGE);
const _: () = assert!(std::mem::align_of::<WorkerSlot>() <= PAGE);
const _: () = assert!(std::mem::align_of::<Name>() <= PAGE);

/// Where each part of the region lies, in bytes from its start, for given capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    workers_cap: usize,
    names_cap: usize,
    workers: usize,
    names: usize,
    shares: usize,
    /// Entries from the start of one worker's row of shares to the next (whole pages).
    share_stride: usize,
    stats: usize,
    /// Entries from the start of one worker's row of stats to the next (whole pages).
    stat_stride: usize,
    /// Bytes in the whole region.
    len: usize,
}

impl Plan {
    /// None when the capacities are too large to lay out.
    fn new(workers_cap: usize, names_cap: usize) -> Option<Plan> {
        // Rows of one worker's entries, each padded to whole pages, one per worker.
        fn rows<T>(cols: usize, rows: usize) -> Option<(Layout, usize)> {
            let row = Layout::array::<T>(cols)
                .ok()?
                .align_to(PAGE)
                .ok()?
                .pad_to_align();
            let all = Layout::from_size_align(row.size().checked_mul(rows)?, PAGE).ok()?;
            Some((all, row.size() / std::mem::size_of::<T>()))
        }
        let region = Layout::new::<Header>();
        let (region, workers) = region
            .extend(Layout::array::<WorkerSlot>(workers_cap).ok()?)
            .ok()?;
        let names_layout = Layout::array::<Name>(names_cap).ok()?.align_to(128).ok()?;
        let (region, names) = region.extend(names_layout).ok()?;
        // Server shares, then client shares: two entries per name.
        let (share_rows, share_stride) = rows::<AtomicU32>(names_cap.checked_mul(2)?, workers_cap)?;
        let (region, shares) = region.extend(share_rows).ok()?;
        let (stat_rows, stat_stride) = rows::<DbStats>(names_cap, workers_cap)?;
        let (region, stats) = region.extend(stat_rows).ok()?;
        Some(Plan {
            workers_cap,
            names_cap,
            workers,
            names,
            shares,
            share_stride,
            stats,
            stat_stride,
            len: region.size(),
        })
    }
}

/// The mapping itself: unmapped when dropped.
struct Mapping {
    base: NonNull<c_void>,
    len: usize,
}

// SAFETY: a mapping is plain memory, not tied to the thread that made it; whatever is read
// or written through it is atomic (see `Shm::region`), so sharing it between threads is as
// sound as sharing it between the processes that inherit it.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: through `&Shm`, the only way in, the mapping is reached only as
// shared references to atomics.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base and len are exactly what mmap returned and asked for, and
        // no reference into the mapping outlives it: every one borrows the Shm that owns it.
        // Nothing useful is left to do if munmap fails.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

/// The whole region, typed. Slices of the variable-capacity parts, with the lengths the
/// `Plan` gave them; share and stat rows lie end to end, `*_stride` entries apart.
struct Region<'a> {
    header: &'a Header,
    workers: &'a [WorkerSlot],
    names: &'a [Name],
    shares: &'a [AtomicU32],
    stats: &'a [DbStats],
}

/// The mapped region. Cheap to share: every accessor takes `&self`.
pub struct Shm {
    map: Mapping,
    plan: Plan,
}

/// Which global count a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Database,
    User,
}

impl Shm {
    /// Maps a new zeroed region for up to `workers_cap` workers and `names_cap` names.
    pub fn create(workers_cap: usize, names_cap: usize) -> io::Result<Shm> {
        Shm::create_shared(workers_cap, names_cap, 1).map(|(shm, _)| shm)
    }

    /// Maps a new zeroed region in a memfd, for pooler generation `generation`, and returns
    /// the memfd too (close-on-exec), which an online upgrade hands to the next generation.
    pub fn create_shared(
        workers_cap: usize,
        names_cap: usize,
        generation: u32,
    ) -> io::Result<(Shm, OwnedFd)> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "shared memory too large");
        let plan = Plan::new(workers_cap, names_cap).ok_or_else(too_big)?;
        let workers_cap32 = u32::try_from(workers_cap).map_err(|_| too_big())?;
        let names_cap32 = u32::try_from(names_cap).map_err(|_| too_big())?;
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"pgbouncers-shm".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::File::from(fd.try_clone()?).set_len(plan.len as u64)?;
        let shm = Shm::map(&fd, plan)?;
        let h = shm.region().header;
        h.magic.store(MAGIC, Relaxed);
        h.version.store(VERSION, Relaxed);
        h.workers_cap.store(workers_cap32, Relaxed);
        h.names_cap.store(names_cap32, Relaxed);
        h.generation.store(generation, Relaxed);
        Ok((shm, fd))
    }

    /// Maps the region of another generation's memfd (online upgrade). Refused unless it
    /// is a region of this very layout: same magic, version and a size its capacities fit.
    pub fn open(fd: &OwnedFd) -> io::Result<Shm> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let len = std::fs::File::from(fd.try_clone()?).metadata()?.len() as usize;
        if len < std::mem::size_of::<Header>() {
            return Err(bad("shared memory too small"));
        }
        // Read the header alone first: the capacities decide the plan.
        let head = Shm::map(
            fd,
            Plan::new(0, 0).ok_or_else(|| bad("shared memory layout"))?,
        )?;
        let h = head.header();
        if h.magic.load(Relaxed) != MAGIC || h.version.load(Relaxed) != VERSION {
            return Err(bad("shared memory of another layout version"));
        }
        let plan = Plan::new(
            h.workers_cap.load(Relaxed) as usize,
            h.names_cap.load(Relaxed) as usize,
        )
        .ok_or_else(|| bad("shared memory capacities"))?;
        if plan.len > len {
            return Err(bad("shared memory shorter than its capacities"));
        }
        drop(head);
        Shm::map(fd, plan)
    }

    /// Maps `plan.len` bytes of `fd`, shared.
    fn map(fd: &OwnedFd, plan: Plan) -> io::Result<Shm> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "shared memory too large");
        // The header alone makes the region at least one byte long.
        let len = NonZeroUsize::new(plan.len).ok_or_else(too_big)?;
        // SAFETY: a new mapping at an address the kernel picks overlaps nothing this
        // process uses, so it cannot invalidate any existing memory; the file is at least
        // `len` bytes long (set by the creator, checked by `open`).
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        let shm = Shm {
            map: Mapping {
                base,
                len: plan.len,
            },
            plan,
        };
        // Mappings start on a page boundary, which `region` relies on; checked, not assumed.
        if base.as_ptr().align_offset(PAGE) != 0 {
            return Err(io::Error::other(
                "shared memory mapping is not page-aligned",
            ));
        }
        Ok(shm)
    }

    /// The pooler generation whose region this is.
    pub fn generation(&self) -> u32 {
        self.header().generation.load(Relaxed)
    }

    /// Marks the whole region's generation as gone (online upgrade: its supervisor
    /// exited): no worker rows, no clients. Whatever it held cannot count against the
    /// next generation's limits any more, even if it died without cleaning up.
    pub fn retire(&self) {
        for w in self.region().workers {
            w.state.store(0, Relaxed);
            w.clients.store(0, Relaxed);
        }
        self.header().clients.store(0, Release);
    }

    /// The region, typed. The one place that reads the mapping through a raw pointer.
    fn region(&self) -> Region<'_> {
        let p = &self.plan;
        let base = self.map.base.as_ptr().cast::<u8>();
        // SAFETY:
        // - In bounds: `Plan::new` laid every part out inside `p.len` bytes, which is the
        //   length mapped, so each offset plus its slice's bytes stays within the mapping
        //   (the share and stat slices cover `workers_cap` whole rows, padding included).
        // - Aligned: the mapping starts on a page boundary (checked in `create`), every
        //   type's alignment divides a page (asserted above), and `Layout::extend` put each
        //   part at a multiple of its type's alignment.
        // - Initialised and valid: the mapping came zeroed, and every field of every type
        //   here is an atomic or padding, for which all bytes are valid values.
        // - Shared mutation: only through atomics (interior mutability); no `&mut` into the
        //   mapping is ever made, in this process or in another that maps it.
        // - Lifetime: the slices borrow `self`, which owns the mapping until Drop.
        unsafe {
            Region {
                header: &*base.cast::<Header>(),
                workers: std::slice::from_raw_parts(
                    base.add(p.workers).cast::<WorkerSlot>(),
                    p.workers_cap,
                ),
                names: std::slice::from_raw_parts(base.add(p.names).cast::<Name>(), p.names_cap),
                shares: std::slice::from_raw_parts(
                    base.add(p.shares).cast::<AtomicU32>(),
                    p.workers_cap * p.share_stride,
                ),
                stats: std::slice::from_raw_parts(
                    base.add(p.stats).cast::<DbStats>(),
                    p.workers_cap * p.stat_stride,
                ),
            }
        }
    }

    pub fn workers_cap(&self) -> usize {
        self.plan.workers_cap
    }

    fn header(&self) -> &Header {
        self.region().header
    }

    pub fn is_valid(&self) -> bool {
        let h = self.header();
        h.magic.load(Relaxed) == MAGIC
            && h.version.load(Relaxed) == VERSION
            && h.workers_cap.load(Relaxed) as usize == self.plan.workers_cap
            && h.names_cap.load(Relaxed) as usize == self.plan.names_cap
    }

    /// Worker slot `slot`, or None past the capacity.
    pub fn get_worker(&self, slot: usize) -> Option<&WorkerSlot> {
        self.region().workers.get(slot)
    }

    /// Worker slot `slot`.
    ///
    /// # Panics
    /// When `slot >= workers_cap()`, as it always has; [`Shm::get_worker`] does not.
    pub fn worker(&self, slot: usize) -> &WorkerSlot {
        match self.get_worker(slot) {
            Some(w) => w,
            None => panic!(
                "worker slot {slot} out of range ({})",
                self.plan.workers_cap
            ),
        }
    }

    fn name(&self, i: usize) -> Option<&Name> {
        self.region().names.get(i)
    }

    /// Entry `i` of worker `slot`'s row in a per-worker part, None if either is out of range.
    fn row_entry<'a, T>(
        &self,
        flat: &'a [T],
        stride: usize,
        slot: usize,
        i: usize,
    ) -> Option<&'a T> {
        if slot >= self.plan.workers_cap || i >= self.plan.names_cap {
            return None;
        }
        flat.get(slot * stride + i)
    }

    fn share(&self, slot: usize, i: usize) -> Option<&AtomicU32> {
        self.row_entry(self.region().shares, self.plan.share_stride, slot, i)
    }

    /// Worker `slot`'s share of the client count at `i`: the second half of its row.
    fn client_share(&self, slot: usize, i: usize) -> Option<&AtomicU32> {
        if slot >= self.plan.workers_cap || i >= self.plan.names_cap {
            return None;
        }
        self.region()
            .shares
            .get(slot * self.plan.share_stride + self.plan.names_cap + i)
    }

    /// A worker's stats for the database at name index `i`, or None if either is out of
    /// range.
    pub fn get_db_stats(&self, slot: usize, i: usize) -> Option<&DbStats> {
        self.row_entry(self.region().stats, self.plan.stat_stride, slot, i)
    }

    /// A worker's stats for the database at name index `i`.
    ///
    /// # Panics
    /// When either index is out of range, as it always has; [`Shm::get_db_stats`] does not.
    pub fn db_stats(&self, slot: usize, i: usize) -> &DbStats {
        match self.get_db_stats(slot, i) {
            Some(d) => d,
            None => panic!("db stats ({slot}, {i}) out of range"),
        }
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
        let names = self.region().names;
        for probe in 0..names.len() {
            let i = (h as usize).wrapping_add(probe) % names.len();
            let e = &names[i];
            let mut st = e.state.load(Acquire);
            if st == 0 && e.state.compare_exchange(0, 1, AcqRel, Acquire).is_ok() {
                for (slot, &b) in e.bytes.iter().zip(key) {
                    slot.store(b, Relaxed);
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
                && e.bytes.iter().zip(key).all(|(s, &b)| s.load(Relaxed) == b)
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

    /// What dead workers counted for the database at `i` (zeros past the table).
    pub fn retired(&self, i: usize) -> [u64; DB_COUNTERS] {
        self.name(i).map_or([0; DB_COUNTERS], |e| {
            std::array::from_fn(|k| e.retired[k].load(Relaxed))
        })
    }

    /// Per-second averages over the last stats_period for the database at `i` (zeros past
    /// the table).
    pub fn averages(&self, i: usize) -> [u64; DB_COUNTERS] {
        self.name(i).map_or([0; DB_COUNTERS], |e| {
            std::array::from_fn(|k| e.averages[k].load(Relaxed))
        })
    }

    /// Ignored past the table.
    pub fn set_averages(&self, i: usize, avg: [u64; DB_COUNTERS]) {
        if let Some(e) = self.name(i) {
            for (a, v) in e.averages.iter().zip(avg) {
                a.store(v, Relaxed);
            }
        }
    }

    /// Every name in the table with its index, for reports.
    pub fn names(&self) -> Vec<(Kind, String, usize)> {
        let mut out = Vec::new();
        for (i, e) in self.region().names.iter().enumerate() {
            if e.state.load(Acquire) != 2 {
                continue;
            }
            // Another process wrote the length: never trust it past the array.
            let len = (e.len.load(Relaxed) as usize).min(MAX_NAME);
            let bytes: Vec<u8> = e.bytes[..len].iter().map(|b| b.load(Relaxed)).collect();
            let kind = if bytes.starts_with(b"d:") {
                Kind::Database
            } else {
                Kind::User
            };
            let name = bytes.get(2..).unwrap_or_default();
            out.push((kind, String::from_utf8_lossy(name).into_owned(), i));
        }
        out
    }

    /// Takes one unit of the global count at `i` unless that would pass `limit` (0 = none).
    /// False, taking nothing, when `slot` or `i` is out of range: a unit whose share could
    /// not be recorded could never be reclaimed.
    pub fn acquire(&self, slot: usize, i: usize, limit: u32) -> bool {
        let (Some(e), Some(s)) = (self.name(i), self.share(slot, i)) else {
            return false;
        };
        take(&e.count, s, limit)
    }

    /// Takes one place in the client count at `i` (a database's or a user's) unless that
    /// would pass `limit` (0 = none): `max_db_client_connections` and
    /// `max_user_client_connections`, enforced like the server counts. False, taking
    /// nothing, when `slot` or `i` is out of range.
    pub fn acquire_name_client(&self, slot: usize, i: usize, limit: u32) -> bool {
        let (Some(e), Some(s)) = (self.name(i), self.client_share(slot, i)) else {
            return false;
        };
        take(&e.clients, s, limit)
    }

    /// Gives back a client place `slot` holds at `i`; nothing when it holds none or either
    /// index is out of range.
    pub fn release_name_client(&self, slot: usize, i: usize) {
        let (Some(e), Some(s)) = (self.name(i), self.client_share(slot, i)) else {
            return;
        };
        give(&e.clients, s);
    }

    /// The global client count at `i` (0 past the table).
    pub fn name_clients(&self, i: usize) -> u32 {
        self.name(i).map_or(0, |e| e.clients.load(Acquire))
    }

    /// Gives back a unit `slot` holds at `i`; nothing when it holds none or either index
    /// is out of range.
    pub fn release(&self, slot: usize, i: usize) {
        let (Some(e), Some(s)) = (self.name(i), self.share(slot, i)) else {
            return;
        };
        give(&e.count, s);
    }

    /// A worker could not get a server because this name's limit is reached. Ignored
    /// when `slot` or `i` is out of range.
    pub fn mark_starved(&self, slot: usize, i: usize, until_ms: u64) {
        if slot >= self.plan.workers_cap {
            return;
        }
        if let Some(n) = self.name(i) {
            n.starved_by.fetch_or(slot_bit(slot), AcqRel);
            n.starved_until.fetch_max(until_ms, AcqRel);
        }
    }

    /// Worker `slot` no longer waits for this name's capacity. Ignored when `slot` or `i`
    /// is out of range.
    pub fn clear_starved(&self, slot: usize, i: usize) {
        if slot >= self.plan.workers_cap {
            return;
        }
        if let Some(n) = self.name(i) {
            n.starved_by.fetch_and(!slot_bit(slot), AcqRel);
        }
    }

    /// Whether a worker other than `slot` is waiting for this name's capacity (never, for
    /// an `i` past the table).
    pub fn is_starved_elsewhere(&self, slot: usize, i: usize, now_ms: u64) -> bool {
        self.name(i).is_some_and(|n| {
            n.starved_until.load(Acquire) > now_ms
                && n.starved_by.load(Acquire) & !slot_bit(slot) != 0
        })
    }

    /// The global count at `i` (0 past the table).
    pub fn count(&self, i: usize) -> u32 {
        self.name(i).map_or(0, |e| e.count.load(Acquire))
    }

    /// Takes a client place unless the pooler already has `limit`. False, taking nothing,
    /// when `slot` is out of range.
    pub fn acquire_client(&self, slot: usize, limit: u32) -> bool {
        let Some(w) = self.get_worker(slot) else {
            return false;
        };
        let c = &self.header().clients;
        let before = c.fetch_add(1, AcqRel);
        if limit != 0 && before >= limit {
            c.fetch_sub(1, AcqRel);
            return false;
        }
        w.clients.store(w.clients.load(Relaxed) + 1, Relaxed);
        true
    }

    /// Gives back a client place `slot` holds; nothing when it holds none or `slot` is out
    /// of range.
    pub fn release_client(&self, slot: usize) {
        let Some(w) = self.get_worker(slot) else {
            return;
        };
        let mine = w.clients.load(Relaxed);
        if mine == 0 {
            return;
        }
        w.clients.store(mine - 1, Relaxed);
        self.header().clients.fetch_sub(1, AcqRel);
    }

    pub fn clients(&self) -> u32 {
        self.header().clients.load(Acquire)
    }

    /// After a worker died: gives back everything it held, so no capacity leaks.
    /// Called by the supervisor only, while the slot has no live process. Ignored when
    /// `slot` is out of range.
    pub fn reclaim(&self, slot: usize) {
        let Some(w) = self.get_worker(slot) else {
            return;
        };
        let names = self.region().names;
        for (i, e) in names.iter().enumerate() {
            if let Some(s) = self.share(slot, i) {
                let held = s.swap(0, AcqRel);
                if held > 0 {
                    e.count.fetch_sub(held, AcqRel);
                }
            }
            if let Some(s) = self.client_share(slot, i) {
                let held = s.swap(0, AcqRel);
                if held > 0 {
                    e.clients.fetch_sub(held, AcqRel);
                }
            }
        }
        let held = w.clients.swap(0, AcqRel) as u32;
        if held > 0 {
            self.header().clients.fetch_sub(held, AcqRel);
        }
        w.servers.store(0, Release);
        w.pid.store(0, Release);
        w.state.store(0, Release);
        // Its database counters move to the retired totals, so totals never go back.
        for (_, _, i) in self.names() {
            if let (Some(d), Some(e)) = (self.get_db_stats(slot, i), names.get(i)) {
                for (r, v) in e.retired.iter().zip(d.values()) {
                    r.fetch_add(v, AcqRel);
                }
                d.clear();
            }
        }
    }
}

/// Takes one unit of the global count `c` unless that would pass `limit` (0 = none),
/// recording it in the worker's share `s`. Lock-free: an add rolled back on overshoot.
fn take(c: &AtomicU32, s: &AtomicU32, limit: u32) -> bool {
    let before = c.fetch_add(1, AcqRel);
    if limit != 0 && before >= limit {
        c.fetch_sub(1, AcqRel);
        return false;
    }
    s.store(s.load(Relaxed) + 1, Relaxed);
    true
}

/// Gives back one unit of `c` that the worker's share `s` holds; nothing when it holds none.
fn give(c: &AtomicU32, s: &AtomicU32) {
    let mine = s.load(Relaxed);
    if mine == 0 {
        return;
    }
    s.store(mine - 1, Relaxed);
    c.fetch_sub(1, AcqRel);
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
    fn a_successor_maps_the_same_region_through_the_memfd() {
        let (old, fd) = Shm::create_shared(4, 8, 7).unwrap();
        old.worker(2).pid.store(4242, Relaxed);
        let seen = Shm::open(&fd).unwrap();
        assert!(seen.is_valid());
        assert_eq!(seen.generation(), 7);
        assert_eq!(seen.workers_cap(), 4);
        assert_eq!(seen.worker(2).pid.load(Relaxed), 4242);
        // Writes go both ways: it is one region.
        seen.worker(1).state.store(2, Relaxed);
        assert_eq!(old.worker(1).state.load(Relaxed), 2);
        // Anything else is refused, never mapped past its end.
        let (_, small) = Shm::create_shared(1, 1, 1).unwrap();
        std::fs::File::from(small.try_clone().unwrap())
            .set_len(8)
            .unwrap();
        assert!(Shm::open(&small).is_err());
    }
    use std::sync::Arc;

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
    fn client_counts_per_name_hold_roll_back_and_are_reclaimed() {
        let shm = Shm::create(3, 8).unwrap();
        let db = shm.name_index(Kind::Database, "app").unwrap();
        let user = shm.name_index(Kind::User, "bob").unwrap();
        assert!(shm.acquire_name_client(0, db, 2));
        assert!(shm.acquire_name_client(1, db, 2));
        assert!(!shm.acquire_name_client(2, db, 2));
        assert_eq!(shm.name_clients(db), 2);
        // The server count of the same name is separate.
        assert_eq!(shm.count(db), 0);
        assert!(shm.acquire(2, db, 1));
        assert!(shm.acquire_name_client(2, user, 1));
        assert!(!shm.acquire_name_client(0, user, 1));
        // A worker dies: its client places come back, not more.
        shm.reclaim(1);
        assert_eq!(shm.name_clients(db), 1);
        assert_eq!(shm.count(db), 1);
        shm.release_name_client(1, db);
        assert_eq!(shm.name_clients(db), 1);
        shm.release_name_client(0, db);
        shm.release_name_client(2, user);
        assert_eq!((shm.name_clients(db), shm.name_clients(user)), (0, 0));
        // 0 = unlimited; out of range takes nothing.
        for _ in 0..5 {
            assert!(shm.acquire_name_client(0, db, 0));
        }
        assert!(!shm.acquire_name_client(3, db, 0));
        assert!(!shm.acquire_name_client(0, 8, 0));
        assert_eq!(shm.name_clients(8), 0);
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
        // SAFETY: the child only touches the mapping (atomics, no locks or allocation) and
        // leaves with _exit, so no state another test thread held at the fork matters.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = shm.acquire(1, i, 5);
            // SAFETY: _exit ends the child at once, running no destructors or atexit hooks.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: pid is our child and status a live, writable c_int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0);
        assert_eq!(shm.count(i), 1);
        assert_eq!(shm.name_index(Kind::Database, "x"), Some(i));
    }

    /// The offsets the hand-written arithmetic of the first version gave: the layout is
    /// byte for byte the same, so VERSION stays 1.
    fn layout_offsets(w: usize, n: usize) -> [usize; 5] {
        let align = |x: usize, to: usize| x.div_ceil(to) * to;
        let workers = align(std::mem::size_of::<Header>(), 128);
        let names = align(workers + w * std::mem::size_of::<WorkerSlot>(), 128);
        let shares = align(names + n * std::mem::size_of::<Name>(), 4096);
        // Version 3: two shares per name, servers then clients.
        let stats = shares + w * align(n * 2 * 4, 4096);
        let len = stats + w * align(n * std::mem::size_of::<DbStats>(), 4096);
        [workers, names, shares, stats, len]
    }

    #[test]
    fn plan_is_aligned_disjoint_and_matches_the_layout() {
        for (w, n) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (1, 1),
            (2, 8),
            (4, 64),
            (64, 1024),
            (7, 1500),
        ] {
            let p = Plan::new(w, n).unwrap();
            assert_eq!(
                [p.workers, p.names, p.shares, p.stats, p.len],
                layout_offsets(w, n),
                "{w} workers, {n} names"
            );
            assert_eq!(p.workers % std::mem::align_of::<WorkerSlot>(), 0);
            assert_eq!(p.names % 128, 0);
            assert_eq!(p.shares % PAGE, 0);
            assert_eq!(p.stats % PAGE, 0);
            assert!(p.share_stride >= 2 * n && (p.share_stride * 4).is_multiple_of(PAGE));
            let stat_row = p.stat_stride * std::mem::size_of::<DbStats>();
            assert!(p.stat_stride >= n && stat_row.is_multiple_of(PAGE));
            assert!(std::mem::size_of::<Header>() <= p.workers);
            assert!(p.workers + w * std::mem::size_of::<WorkerSlot>() <= p.names);
            assert!(p.names + n * std::mem::size_of::<Name>() <= p.shares);
            assert!(p.shares + w * p.share_stride * 4 <= p.stats);
            assert_eq!(p.stats + w * stat_row, p.len);
        }
    }

    #[test]
    fn absurd_capacities_are_refused_before_mapping() {
        assert_eq!(Plan::new(usize::MAX, 1), None);
        assert_eq!(Plan::new(1, usize::MAX), None);
        let err = Shm::create(usize::MAX / 2, 8).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Lays out (a terabyte of address space), but the header holds capacities as u32.
        let err = Shm::create(1 << 33, 0).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// Every counter in the region, in order.
    fn snapshot(shm: &Shm) -> Vec<u64> {
        let r = shm.region();
        let mut v = vec![r.header.clients.load(Relaxed) as u64];
        for w in r.workers {
            v.extend([w.pid.load(Relaxed) as u64, w.state.load(Relaxed) as u64]);
            v.extend([w.clients.load(Relaxed), w.servers.load(Relaxed)]);
        }
        for e in r.names {
            v.extend([
                e.count.load(Relaxed) as u64,
                e.clients.load(Relaxed) as u64,
                e.starved_by.load(Relaxed),
            ]);
            v.push(e.starved_until.load(Relaxed));
            v.extend(e.retired.iter().chain(&e.averages).map(|a| a.load(Relaxed)));
        }
        v.extend(r.shares.iter().map(|s| s.load(Relaxed) as u64));
        v.extend(r.stats.iter().flat_map(|d| d.values()));
        v
    }

    #[test]
    fn out_of_range_indexes_are_refused_and_write_nothing() {
        let shm = Shm::create(2, 4).unwrap();
        let db = shm.name_index(Kind::Database, "app").unwrap();
        assert!(shm.acquire(0, db, 0));
        assert!(shm.acquire_client(1, 0));
        let before = snapshot(&shm);
        for slot in [2, 3, 64, usize::MAX / 2, usize::MAX] {
            assert!(shm.get_worker(slot).is_none());
            assert!(shm.get_db_stats(slot, db).is_none());
            assert!(!shm.acquire(slot, db, 0));
            shm.release(slot, db);
            assert!(!shm.acquire_client(slot, 0));
            shm.release_client(slot);
            shm.mark_starved(slot, db, u64::MAX);
            shm.clear_starved(slot, db);
            shm.reclaim(slot);
        }
        for i in [4, 5, 1024, usize::MAX / 2, usize::MAX] {
            assert!(shm.get_db_stats(0, i).is_none());
            assert!(!shm.acquire(0, i, 0));
            shm.release(0, i);
            shm.mark_starved(0, i, u64::MAX);
            shm.clear_starved(0, i);
            assert!(!shm.is_starved_elsewhere(0, i, 0));
            assert_eq!(shm.count(i), 0);
            assert_eq!(shm.retired(i), [0; DB_COUNTERS]);
            assert_eq!(shm.averages(i), [0; DB_COUNTERS]);
            shm.set_averages(i, [7; DB_COUNTERS]);
        }
        assert_eq!(snapshot(&shm), before);
        assert_eq!(shm.count(db), 1);
        assert_eq!(shm.clients(), 1);
    }

    #[test]
    #[should_panic(expected = "worker slot 2 out of range")]
    fn worker_past_capacity_panics_rather_than_reading_elsewhere() {
        Shm::create(2, 4).unwrap().worker(2);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn db_stats_past_the_table_panics_rather_than_reading_elsewhere() {
        Shm::create(2, 4).unwrap().db_stats(0, 4);
    }

    #[test]
    fn worker_rows_are_disjoint() {
        // 1500 names: each worker's share and stat rows span more than one page.
        let shm = Shm::create(3, 1500).unwrap();
        for i in 0..1500 {
            assert!(shm.acquire(1, i, 0));
            bump(&shm.db_stats(1, i).query_count, 1);
        }
        shm.worker(1).clients.store(9, Relaxed);
        for slot in [0, 2] {
            assert_eq!(shm.worker(slot).clients.load(Relaxed), 0);
            for i in 0..1500 {
                assert_eq!(shm.share(slot, i).unwrap().load(Relaxed), 0);
                assert_eq!(shm.db_stats(slot, i).values(), [0; DB_COUNTERS]);
            }
        }
        assert!((0..1500).all(|i| shm.count(i) == 1));
        // Every row's padding is left alone too: nothing but slot 1's entries changed.
        let r = shm.region();
        let written = |s: &AtomicU32| s.load(Relaxed) != 0;
        assert_eq!(r.shares.iter().filter(|s| written(s)).count(), 1500);
        shm.reclaim(1);
        assert!((0..1500).all(|i| shm.count(i) == 0));
    }

    #[test]
    fn two_handles_on_one_region_see_the_same_counters() {
        let shm = Arc::new(Shm::create(2, 8).unwrap());
        let db = shm.name_index(Kind::Database, "app").unwrap();
        // Two typed views of one mapping are the same memory.
        let (a, b) = (shm.region(), shm.region());
        assert!(std::ptr::eq(a.header, b.header));
        assert!(std::ptr::eq(&a.workers[1], shm.worker(1)));
        let other = Arc::clone(&shm);
        std::thread::spawn(move || {
            assert!(other.acquire(1, db, 0));
            assert!(other.acquire_client(1, 0));
            bump(&other.db_stats(1, db).xact_count, 3);
            other.mark_starved(1, db, u64::MAX);
        })
        .join()
        .unwrap();
        assert_eq!(shm.count(db), 1);
        assert_eq!(shm.clients(), 1);
        assert_eq!(shm.worker(1).clients.load(Relaxed), 1);
        assert_eq!(shm.db_stats(1, db).xact_count.load(Relaxed), 3);
        assert!(shm.is_starved_elsewhere(0, db, 0));
        assert!(!shm.is_starved_elsewhere(1, db, 0));
        shm.reclaim(1);
        assert_eq!(shm.retired(db)[0], 3);
        assert_eq!((shm.count(db), shm.clients()), (0, 0));
    }

    #[test]
    fn a_scribbled_name_length_is_clamped() {
        let shm = Shm::create(1, 4).unwrap();
        let i = shm.name_index(Kind::Database, "app").unwrap();
        let e = shm.name(i).unwrap();
        e.len.store(u32::MAX, Relaxed);
        assert_eq!(shm.names()[0].0, Kind::Database);
        assert_eq!(shm.names()[0].1.len(), MAX_NAME - 2);
        e.len.store(1, Relaxed);
        assert_eq!(shm.names()[0].1, "");
        e.len.store(5, Relaxed);
        assert_eq!(shm.names()[0].1, "app");
    }
}
