//! One worker's mio event loop: accepting, dispatching events, and the connection table.

mod cancels;
mod clients;
mod commands;
mod console;
mod followups;
mod handover;
mod janitor;
mod links;
mod servers;

pub(crate) use crate::conn::{shown_id, Conn};
use crate::init::Lineage;
pub use crate::init::WorkerInit;

use crate::auth_cache::AuthCache;
use crate::buf::BufPool;
use crate::channel::{Channel, Received};
use crate::config::Config;
use crate::control::{self, Command, Report};
use crate::listeners::{Accepted, Listeners};
use crate::pool::{PoolId, Pools};
use crate::shm::Shm;
use crate::stats::WorkerStats;
use crate::stream::Sock;
use followups::Followup;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the janitor looks at every connection's timers.
pub const TICK: Duration = Duration::from_millis(200);
/// Connections accepted per listener event before other work gets a turn.
const ACCEPT_BATCH: usize = 64;
/// Tokens at the top of the range; slab keys start at 0 and never reach these.
const LISTENER_BASE: usize = usize::MAX - 1024;
const CONTROL: usize = usize::MAX;
const SIGNALS: usize = usize::MAX - 1;
/// The resolver thread's wake-ups.
const DNS: usize = usize::MAX - 2;

/// What handlers leave for later in the loop pass: the loop's three queues. Work for other
/// connections and pools waits here rather than running inside the handler that found it.
#[derive(Default)]
pub(crate) struct Later {
    /// Connections to drive again later in this pass (or the next): work left over after
    /// their fair share of a turn, a released client with bytes buffered, a server whose
    /// own query was just sent, a console client with queries queued.
    pub again: Vec<usize>,
    /// Pools whose servers came free while clients waited: they are matched at the end of
    /// the loop pass (links.rs `activate`), as PgBouncer's per-loop activation does.
    activations: Vec<PoolId>,
    /// What handlers left for other connections and pools, applied by `settle`
    /// (followups.rs) as each handler returns.
    followups: VecDeque<Followup>,
}

impl Later {
    /// Matches `pool`'s idle servers with its waiting clients at the end of this pass.
    pub fn activate(&mut self, pool: PoolId) {
        if !self.activations.contains(&pool) {
            self.activations.push(pool);
        }
    }

    /// Leaves `f` for `settle`, after the handler that queues it.
    pub fn follow(&mut self, f: Followup) {
        self.followups.push_back(f);
    }
}

/// A graceful shutdown in progress.
pub(crate) struct Shutdown {
    pub since: Instant,
    /// It waits for every client to leave (SIGTERM, PgBouncer's "super safe shutdown")
    /// rather than only for transactions to end (SIGINT).
    pub waits_for_clients: bool,
    /// Draining after an online upgrade: idle clients go to the new generation.
    pub hands_over: bool,
}

pub struct Worker {
    pub(crate) slot: usize,
    /// Its generation, and what it inherited at an online upgrade.
    pub(crate) lineage: Lineage,
    pub(crate) poll: Poll,
    pub(crate) conns: Slab<Conn>,
    listeners: Listeners,
    pub(crate) pools: Pools,
    pub(crate) bufs: BufPool,
    pub(crate) cfg: Arc<Config>,
    pub(crate) auth: AuthCache,
    /// auth_hba_file rules, for auth_type hba.
    pub(crate) hba: crate::auth::hba::Hba,
    /// Cancel keys handed to clients, and cancels forwarded to peers.
    pub(crate) cancels: crate::cancel::Cancels,
    pub(crate) next_id: u64,
    pub(crate) now: Instant,
    /// What handlers leave for later in the loop pass.
    pub(crate) later: Later,
    pub(crate) janitor_scratch: crate::janitor::Findings,
    /// The supervisor's control channel.
    control: Channel,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    pub(crate) shm: Arc<Shm>,
    pub(crate) stats: WorkerStats,
    /// Named statements clients prepared, for transaction pooling.
    pub(crate) stmts: crate::prepared::Registry,
    /// Console commands in flight, either way between this worker and the supervisor.
    pub(crate) console: console::Requests,
    /// What PAUSE and DISABLE hold, as the supervisor last told every worker.
    pub(crate) holds: control::Holds,
    /// Set once a graceful shutdown began.
    pub(crate) shutdown: Option<Shutdown>,
    /// Server host names, looked up on a thread so the loop never blocks on DNS.
    pub(crate) dns: crate::dns::Resolver,
    /// TLS configurations for both sides, rebuilt on reload.
    pub(crate) tls: crate::tls::Tls,
}

impl Worker {
    pub fn new(init: WorkerInit) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let listeners = Listeners::new(init.listeners, poll.registry(), LISTENER_BASE)?;
        if let Some(fd) = &init.control {
            poll.registry().register(
                &mut SourceFd(&fd.as_raw_fd()),
                Token(CONTROL),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        use signal_hook::consts::SIGTERM;
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGTERM])?;
        poll.registry()
            .register(&mut signals, Token(SIGNALS), Interest::READABLE)?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), Token(DNS))?);
        let dns = crate::dns::Resolver::start(waker)?;
        let cfg = init.config;
        let auth = AuthCache::from_text(init.userlist.as_deref(), init.mock_key);
        let tls = crate::tls::Tls::load(&cfg).unwrap_or_else(|e| {
            // The supervisor checked these files; they changed since. Run without TLS:
            // clients that require it are refused, none is served in cleartext by mistake.
            log::error!("worker {}: TLS unavailable: {e}", init.slot);
            crate::tls::Tls::default()
        });
        let now = Instant::now();
        let mut w = Worker {
            slot: init.slot,
            lineage: Lineage {
                generation: init.generation,
                predecessor: init.predecessor,
                passed: init.passed,
            },
            poll,
            conns: Slab::with_capacity(1024),
            listeners,
            pools: Pools::default(),
            bufs: BufPool::new(cfg.pkt_buf as usize, 4096),
            cfg,
            auth,
            hba: parse_hba(init.hba.as_deref()),
            cancels: Default::default(),
            next_id: 1,
            now,
            later: Later::default(),
            janitor_scratch: Default::default(),
            control: Channel::new(init.control),
            signals: Some(signals),
            shm: init.shm,
            stats: WorkerStats::default(),
            stmts: Default::default(),
            console: Default::default(),
            holds: init.holds,
            shutdown: None,
            dns,
            tls,
        };
        w.stats.started(&w.shm, w.slot);
        w.warm_peer_names();
        Ok(w)
    }

    /// Runs the event loop until a shutdown completes.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let busy = !self.later.again.is_empty()
                || !self.later.activations.is_empty()
                || self.listeners.busy();
            let timeout = if busy {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.now = Instant::now();
            // Every handler below is followed by `settle`: what its closes left for other
            // connections is done before the next handler looks at them.
            for ev in events.iter() {
                self.on_event(ev);
                self.settle();
            }
            // Those queued while these are driven wait for the next pass. Drained in place:
            // taking the Vec would free and allocate it again at every pass.
            let queued = self.later.again.len();
            for i in 0..queued {
                let t = self.later.again[i];
                self.drive(t);
                self.settle();
            }
            self.later.again.drain(..queued);
            if !self.later.activations.is_empty() {
                self.activate();
                self.settle();
            }
            self.accept_all();
            self.settle();
            if self.shutdown.as_ref().is_some_and(|s| s.hands_over) {
                self.hand_over_idle();
                self.settle();
            }
            if !self.console.waits.is_empty() {
                self.check_waits();
                self.settle();
            }
            if self.now >= next_tick {
                self.janitor();
                self.settle();
                self.stats.flush(&self.shm, self.slot, &self.pools.totals());
                next_tick = self.now + TICK;
                if self.shutdown_step() {
                    log::info!("worker {}: shutdown complete", self.slot);
                    return Ok(());
                }
                self.settle();
            }
        }
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let t = ev.token().0;
        if t == CONTROL {
            return self.control_io();
        }
        if t == DNS {
            if self.dns.collect(self.now) {
                // Pools that waited for a lookup can launch now (or fail their clients).
                for pool in 0..self.pools.list.len() {
                    self.serve_waiting(pool);
                }
            }
            return;
        }
        if t == SIGNALS {
            let got_term = self
                .signals
                .as_mut()
                .is_some_and(|s| s.pending().next().is_some());
            if got_term {
                if self.shutdown.is_some() {
                    // As PgBouncer: a second SIGTERM ends a shutdown in progress at once.
                    log::info!(
                        "worker {}: got SIGTERM while shutting down, fast exit",
                        self.slot
                    );
                    std::process::exit(0);
                }
                log::info!(
                    "worker {}: got SIGTERM, shutting down, waiting for all clients to disconnect",
                    self.slot
                );
                self.begin_shutdown(true);
            }
            return;
        }
        if t >= LISTENER_BASE {
            return self.listeners.readable(t - LISTENER_BASE);
        }
        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
        let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
        match self.conns.get_mut(t) {
            Some(Conn::Client(c)) => {
                c.io.on_event(readable, writable, ev.is_read_closed() || ev.is_error())
            }
            Some(Conn::Server(s)) => {
                s.io.on_event(readable, writable, ev.is_read_closed() || ev.is_error())
            }
            Some(Conn::Cancel(_)) => return self.drive_cancel(t, writable || readable),
            None => return,
        }
        self.drive(t);
    }

    /// Acts on a connection with whatever its socket allows now.
    pub(crate) fn drive(&mut self, t: usize) {
        match self.conns.get(t) {
            Some(Conn::Client(_)) => self.drive_client(t),
            Some(Conn::Server(_)) => self.drive_server(t),
            _ => {}
        }
    }

    /// Flushes queued reports and runs every command the supervisor sent.
    fn control_io(&mut self) {
        self.control.flush(self.slot);
        let mut buf = [0u8; control::MAX_MESSAGE];
        loop {
            match self.control.recv(&mut buf) {
                Received::Command(cmd, fd) => {
                    self.on_command(cmd, fd);
                    self.settle();
                }
                Received::Bad(e) => log::warn!("worker {}: bad control message: {e}", self.slot),
                Received::Empty => return,
                Received::Closed(fd, e) => {
                    // The supervisor is gone; PR_SET_PDEATHSIG ends us too, but be sure.
                    log::warn!("worker {}: control channel closed: {e}", self.slot);
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&fd.as_raw_fd()));
                    self.begin_shutdown(false);
                    return;
                }
            }
        }
    }

    pub(crate) fn has_control(&self) -> bool {
        self.control.is_open()
    }

    /// The control socket, for a message that carries a descriptor.
    pub(crate) fn control_raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.control.raw_fd()
    }

    /// Sends a report to the supervisor, queueing it if the channel is full.
    pub(crate) fn report(&mut self, r: Report) {
        self.control.report(&r, self.slot);
    }

    fn on_command(&mut self, cmd: Command, mut fd: Option<OwnedFd>) {
        if self.handover_command(&cmd, &mut fd) {
            return;
        }
        match cmd {
            Command::Reload => match fd.map(control::snapshot_from_fd) {
                Some(Ok(snap)) => self.reload(snap),
                Some(Err(e)) => {
                    log::error!("worker {}: cannot read reload snapshot: {e}", self.slot)
                }
                None => log::error!("worker {}: reload without a snapshot", self.slot),
            },
            Command::Pause(db) => self.pause(db.as_deref(), true),
            Command::Resume(db) => self.pause(db.as_deref(), false),
            Command::Shutdown => self.begin_shutdown(false),
            Command::ShutdownWaitForClients => self.begin_shutdown(true),
            Command::Cancel { pid, key } => self.cancel_local(pid, key),
            Command::Collect { req, what } => self.console_collect(req, what),
            Command::Rows { req, slot, chunk } => self.console_rows(req, slot, &chunk),
            Command::AdminDone {
                req,
                error,
                missing,
            } => self.console_finished(req, error, missing),
            Command::Kill(db) => self.kill_db(db.as_deref()),
            Command::Disable { db, on } => self.disable(&db, on),
            Command::Reconnect(db) => self.reconnect(db.as_deref()),
            Command::Wait { req, until } => self.wait_for(req, until),
            Command::KillClient { req, id } => {
                let rows = if self.kill_client(id) {
                    vec![vec![Some("killed".to_string())]]
                } else {
                    Vec::new()
                };
                self.send_rows(req, &rows);
            }
            Command::UpgradeDrain | Command::Adopt { .. } => {}
        }
    }

    /// Stops accepting: the supervisor keeps the sockets for a successor.
    pub(crate) fn close_listeners(&mut self) {
        self.listeners.close(self.poll.registry());
    }

    /// Accepts from every listener with connections waiting, a batch from each.
    fn accept_all(&mut self) {
        if !self.listeners.resume(self.now) {
            return;
        }
        for i in 0..self.listeners.len() {
            if !self.listeners.is_ready(i) {
                continue;
            }
            for _ in 0..ACCEPT_BATCH {
                match self.listeners.accept(i, self.now) {
                    Accepted::Conn(sock, peer) => {
                        self.stats.accepts += 1;
                        self.add_client(sock, peer);
                    }
                    Accepted::Empty => break,
                    Accepted::Paused => return,
                    Accepted::Skipped => {}
                }
            }
        }
    }

    pub(crate) fn register(&mut self, token: usize, sock: &mut Sock) -> io::Result<()> {
        self.poll.registry().register(
            sock.source(),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// The id of a new server (clients take theirs from the same sequence).
    pub(crate) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        shown_id(self.slot, id)
    }
}

/// The hba rules from text the supervisor validated; none at all refuses everyone.
pub(crate) fn parse_hba(text: Option<&str>) -> crate::auth::hba::Hba {
    match text.map(crate::auth::hba::Hba::parse) {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            log::error!("hba file does not parse: {e}");
            Default::default()
        }
        None => Default::default(),
    }
}

/// Runs a worker until it has shut down.
pub fn run(init: WorkerInit) -> io::Result<()> {
    let mut w = Worker::new(init)?;
    w.run()
}
