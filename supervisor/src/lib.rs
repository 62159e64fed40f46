//! Supervisor: binds the listeners, forks and respawns workers, and turns signals into actions.
//!
//! It stays single-threaded and serves no clients. Signal handlers only queue the signal
//! (signal-hook); one flat loop acts on signals, worker exits and control messages.

mod averages;
mod channel;
mod children;
mod console;
pub mod daemon;
mod listen;
mod metrics;
mod reload;
pub mod title;
pub mod upgrade;

use children::Slot;
use nix::sys::signal::Signal;
use pgbouncers_worker::config::Config;
use pgbouncers_worker::control::{self, Command, Report};
use pgbouncers_worker::shm::Shm;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code a worker uses for "do not respawn me": its configuration cannot work.
pub const EXIT_NO_RESPAWN: i32 = 3;
/// Shared-memory capacity for worker slots: `workers` may grow to this on reload.
const WORKERS_CAP: usize = 256;
/// Shared-memory capacity for database and user names with global limits and stats.
const NAMES_CAP: usize = 4096;
const SIGNALS_TOKEN: usize = usize::MAX;
/// The link to the other generation during an online upgrade.
const LINK_TOKEN: usize = usize::MAX - 2;
/// How long a new supervisor has to take over before the upgrade counts as failed.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Options {
    pub config_path: PathBuf,
    pub workers: Option<usize>,
    /// `-u USER`: the workers' OS user, over the file's `user`.
    pub user: Option<String>,
    /// The binary an online upgrade starts: the path the pooler was launched with (after
    /// a package upgrade it names the new file; /proc/self/exe would name the old one).
    pub exe: PathBuf,
    /// The arguments an online upgrade starts it with (no `-d`: we are detached already).
    pub args: Vec<std::ffi::OsString>,
    /// The pid file, which a new generation takes over.
    pub pidfile: Option<PathBuf>,
    /// What the old supervisor handed over, when this start is an online upgrade.
    pub inherited: Option<upgrade::Inherited>,
}

struct Supervisor {
    opts: Options,
    cfg: Arc<Config>,
    /// The auth file's text as last validated, handed to workers.
    userlist: Option<String>,
    /// The hba file's text as last validated.
    hba: Option<String>,
    /// The configuration text running now (the file's, plus console SETs).
    config_text: String,
    gathers: console::Gathers,
    /// PAUSE and DISABLE in force, handed to every worker started later.
    holds: pgbouncers_worker::control::Holds,
    metrics: metrics::Metrics,
    averages: averages::Averages,
    listeners: listen::Listeners,
    slots: Vec<Slot>,
    /// How many slots should run; slots past it are retiring.
    want: usize,
    mock_key: [u8; 32],
    shm: Arc<Shm>,
    poll: Poller,
    /// The signal pipe; a worker closes its copy (and makes its own).
    signals: Option<Signals>,
    /// Signals taken from the pipe, acted on one by one (reused, so no allocation).
    pending: Vec<i32>,
    /// Where control messages are encoded before they go out (reused).
    scratch: Vec<u8>,
    stopping: Option<Instant>,
    /// Our own pid: a worker whose parent is someone else was orphaned at birth.
    pid: nix::unistd::Pid,
    /// 1 at a cold start, one more at each online upgrade.
    generation: u32,
    /// The shared memory's memfd, passed to the next generation at an upgrade.
    shm_fd: Option<std::os::fd::OwnedFd>,
    /// The previous generation's shared memory while it drains (SHOW WORKERS).
    predecessor: Option<Arc<Shm>>,
    /// The link to the other generation: the successor we start, or the predecessor.
    link: Option<upgrade::Link>,
    /// A successor took over: we accept nothing and drain.
    handed_over: bool,
    /// The pid file a new generation writes once it has taken over.
    pidfile: Option<daemon::PidFile>,
    /// Cancel keys of clients the old generation handed over -> the slot that took each.
    adopted: std::collections::HashMap<u64, usize>,
    /// The metrics socket inherited at an upgrade, used if `metrics_addr` still names it.
    inherited_metrics: Option<std::net::TcpListener>,
}

/// The supervisor's poll. A forked worker closes it at once (it makes its own), so it is
/// an Option that is only ever empty in a child; the supervisor itself always has one.
struct Poller(Option<mio::Poll>);

impl Poller {
    fn registry(&self) -> &mio::Registry {
        self.0
            .as_ref()
            .expect("the supervisor's poll is used after the fork")
            .registry()
    }

    fn poll(&mut self, events: &mut mio::Events, timeout: Option<Duration>) -> std::io::Result<()> {
        self.0
            .as_mut()
            .expect("the supervisor's poll is used after the fork")
            .poll(events, timeout)
    }
}

/// Reads a text file of at most `max` bytes. A bigger one (or an endless one: a FIFO, a
/// device) is refused after `max + 1` bytes instead of filling the supervisor's memory.
fn read_capped(path: &Path, max: usize) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > max {
        return Err(format!("the file is larger than {max} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())
}

/// Reads the auth file a config names; its text goes to every worker. Its size limit is
/// the config file's (16 MiB).
pub fn read_userlist(cfg: &Config) -> Result<Option<String>, String> {
    let Some(path) = cfg.auth_file.as_deref() else {
        return Ok(None);
    };
    let text = read_capped(
        Path::new(path),
        pgbouncers_worker::auth::userlist::MAX_FILE_LEN,
    )
    .map_err(|e| format!("auth_file {path}: {e}"))?;
    pgbouncers_worker::auth::Userlist::parse(&text)
        .map_err(|e| format!("auth_file {path}: {e}"))?;
    Ok(Some(text))
}

/// Reads the hba file a config names (for `auth_type: hba`); its text goes to every worker.
/// Its size limit is the hba parser's (1 MiB).
pub fn read_hba(cfg: &Config) -> Result<Option<String>, String> {
    let Some(path) = cfg.auth_hba_file.as_deref() else {
        return Ok(None);
    };
    let text = read_capped(Path::new(path), pgbouncers_worker::auth::hba::MAX_FILE_LEN)
        .map_err(|e| format!("auth_hba_file {path}: {e}"))?;
    pgbouncers_worker::auth::hba::Hba::parse(&text)
        .map_err(|e| format!("auth_hba_file {path}: {e}"))?;
    Ok(Some(text))
}

/// Loads the certificates and keys the TLS settings name, so that a bad file refuses the
/// start or the reload instead of surfacing in a worker.
pub fn check_tls(cfg: &Config) -> Result<(), String> {
    pgbouncers_worker::tls::Tls::load(cfg).map(|_| ())
}

/// Runs the pooler: returns the process exit code.
pub fn run(mut opts: Options, cfg: Config) -> i32 {
    let mut inherited = opts.inherited.take();
    let code = run_inner(opts, cfg, &mut inherited);
    if code != 0 {
        if let Some(inh) = &inherited {
            // The reason is in our log too; the old generation logs it and serves on.
            inh.fail(&format!(
                "the new supervisor exited with code {code}; see its log"
            ));
        }
    }
    code
}

fn run_inner(opts: Options, cfg: Config, inherited: &mut Option<upgrade::Inherited>) -> i32 {
    let fail = |inherited: &Option<upgrade::Inherited>, e: &str| {
        log::error!("{e}");
        if let Some(inh) = inherited {
            inh.fail(e);
        }
        1
    };
    // The text the console's SET edits; the file was just parsed, so it reads again. An ini
    // file's text is its YAML conversion, which SET edits like any YAML.
    let config_text = Config::read_file(&opts.config_path)
        .map(|(text, _)| text)
        .unwrap_or_default();
    let files = check_tls(&cfg).and_then(|()| read_userlist(&cfg));
    let (userlist, hba) = match files.and_then(|u| Ok((u, read_hba(&cfg)?))) {
        Ok(x) => x,
        Err(e) => return fail(inherited, &e),
    };
    let workers = opts
        .workers
        .unwrap_or_else(|| cfg.worker_count())
        .clamp(1, WORKERS_CAP);
    let listeners = match inherited.as_mut() {
        Some(inh) => inh.listeners(&cfg, workers),
        None => listen::bind(&cfg, workers).map_err(|e| e.to_string()),
    };
    let listeners = match listeners {
        Ok(l) => l,
        Err(e) => return fail(inherited, &e),
    };
    let mut mock_key = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut mock_key) {
        log::error!("no random numbers: {e}");
        return 1;
    }
    let generation = inherited.as_ref().map_or(1, |i| i.generation);
    let (shm, shm_fd) = match Shm::create_shared(WORKERS_CAP, NAMES_CAP, generation) {
        Ok((s, fd)) => (Arc::new(s), fd),
        Err(e) => return fail(inherited, &format!("cannot map shared memory: {e}")),
    };
    // The old generation's region, mapped; its descriptor closes here (the mapping stays).
    let predecessor = inherited
        .as_mut()
        .and_then(|i| i.shm.take())
        .and_then(|fd| match Shm::open(&fd) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                log::warn!("upgrade: the old generation's shared memory: {e}");
                None
            }
        });
    let poll = match mio::Poll::new() {
        Ok(p) => p,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    let verb = if inherited.is_some() {
        "took over listening on"
    } else {
        "listening on"
    };
    for addr in listen::addresses(&cfg).unwrap_or_default() {
        log::info!("{verb} {addr}");
    }
    if let Some((_, p)) = &listeners.unix {
        log::info!("{verb} {}", p.display());
    }
    let (link, inherited_metrics) = match inherited.as_mut() {
        Some(i) => match i.link.take() {
            Some(fd) => (
                Some(upgrade::Link {
                    chan: channel::Channel::new(fd),
                    role: upgrade::Role::Predecessor { pid: i.predecessor },
                    since: Instant::now(),
                }),
                i.metrics.take(),
            ),
            None => return fail(inherited, "the upgrade link is gone"),
        },
        None => (None, None),
    };
    let mut sup = Supervisor {
        opts,
        cfg: Arc::new(cfg),
        userlist,
        hba,
        config_text,
        gathers: Default::default(),
        holds: Default::default(),
        metrics: metrics::Metrics {
            started: Some(Instant::now()),
            ..Default::default()
        },
        averages: Default::default(),
        listeners,
        slots: Vec::new(),
        want: workers,
        mock_key,
        shm,
        poll: Poller(Some(poll)),
        signals: None,
        pending: Vec::with_capacity(8),
        scratch: Vec::with_capacity(256),
        stopping: None,
        pid: nix::unistd::getpid(),
        generation,
        shm_fd: Some(shm_fd),
        predecessor,
        link,
        handed_over: false,
        pidfile: None,
        adopted: Default::default(),
        inherited_metrics,
    };
    let code = match sup.main_loop() {
        Ok(code) => code,
        Err(e) => {
            log::error!("supervisor failed: {e}");
            sup.kill_all(Signal::SIGKILL);
            1
        }
    };
    if !sup.handed_over {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
    code
}

impl Supervisor {
    fn main_loop(&mut self) -> std::io::Result<i32> {
        let signals = self.signals.insert(Signals::new([
            SIGCHLD,
            SIGHUP,
            SIGINT,
            SIGTERM,
            SIGQUIT,
            SIGUSR1,
            SIGUSR2,
            upgrade::signal(),
        ])?);
        self.poll.registry().register(
            signals,
            mio::Token(SIGNALS_TOKEN),
            mio::Interest::READABLE,
        )?;
        self.metrics_listen()?;
        for _ in 0..self.want {
            self.slots.push(Slot::new());
        }
        self.respawn_due();
        if self.link.is_some() {
            self.take_over()?;
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut events = mio::Events::with_capacity(64);
        loop {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(200)))
            {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for ev in events.iter() {
                match ev.token().0 {
                    SIGNALS_TOKEN => {}
                    LINK_TOKEN => self.link_io(),
                    metrics::LISTENER_TOKEN => self.metrics_accept(),
                    t if t >= metrics::CONN_BASE => self.metrics_io(t),
                    t => self.control_io(t),
                }
            }
            self.pending.clear();
            if let Some(signals) = self.signals.as_mut() {
                self.pending.extend(signals.pending());
            }
            for i in 0..self.pending.len() {
                match self.pending[i] {
                    SIGCHLD => {}
                    SIGTERM | SIGINT if self.stopping.is_some() => {
                        // As PgBouncer 1.23+: a second SIGTERM or SIGINT is a fast exit.
                        let name = if self.pending[i] == SIGTERM {
                            "SIGTERM"
                        } else {
                            "SIGINT"
                        };
                        log::info!("got {name} while shutting down, fast exit");
                        self.kill_all(Signal::SIGKILL);
                        self.reap();
                        return Ok(0);
                    }
                    SIGTERM => {
                        log::info!(
                            "got SIGTERM, shutting down, waiting for all clients to disconnect"
                        );
                        self.begin_stop_as(Command::ShutdownWaitForClients);
                    }
                    SIGINT => {
                        log::info!("got SIGINT, shutting down, waiting for transactions to end");
                        self.begin_stop_as(Command::Shutdown);
                    }
                    SIGQUIT => {
                        log::info!("got SIGQUIT, immediate shutdown");
                        self.kill_all(Signal::SIGKILL);
                        self.reap();
                        return Ok(0);
                    }
                    SIGHUP => self.reload(),
                    SIGUSR1 => self.pause(None, true),
                    SIGUSR2 => self.pause(None, false),
                    s if s == upgrade::signal() => self.start_upgrade(),
                    _ => {}
                }
            }
            self.reap();
            self.upgrade_timeout();
            self.retire_done();
            self.finish_gathers(true);
            self.metrics_timeouts();
            self.averages_tick();
            if let Some(since) = self.stopping {
                // Clients handed over last must reach the new generation first.
                let link_busy = self
                    .link
                    .as_mut()
                    .is_some_and(|l| l.chan.flush().is_ok() && !l.chan.is_flushed());
                let limit = self.cfg.shutdown_timeout;
                let overdue = !limit.is_zero() && since.elapsed() > limit + Duration::from_secs(5);
                if self.slots.iter().all(|s| s.pid.is_none()) && (!link_busy || overdue) {
                    log::info!("all workers stopped; exiting");
                    return Ok(0);
                }
                if overdue {
                    log::warn!("workers did not stop in time; killing them");
                    self.kill_all(Signal::SIGKILL);
                }
            } else {
                self.respawn_due();
            }
        }
    }

    /// SHUTDOWN WAIT_FOR_SERVERS on the console: as SIGINT.
    fn begin_stop(&mut self) {
        self.begin_stop_as(Command::Shutdown);
    }

    /// SIGINT (`Command::Shutdown`: transactions end, idle clients go) or SIGTERM
    /// (`Command::ShutdownWaitForClients`: clients stay until they leave): every worker
    /// drains and exits; so do we, once they are gone.
    fn begin_stop_as(&mut self, how: Command) {
        if self.stopping.is_some() {
            return;
        }
        log::info!("shutting down");
        if !self.handed_over {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        }
        self.stopping = Some(Instant::now());
        self.broadcast(&how);
        // Our copies of the sockets would keep them open: new connections must be refused.
        self.listeners.tcp.iter_mut().for_each(Vec::clear);
        self.listeners.unix = None;
    }

    /// Sends a command to every live worker; a worker whose channel fails gets a signal.
    fn broadcast(&mut self, cmd: &Command) {
        for n in 0..self.slots.len() {
            self.send(n, cmd, None);
        }
    }

    /// Sends a command to worker `n`, or queues it until its channel has room: a full
    /// channel (a big SHOW CLIENTS relayed to the asking worker) must not lose messages.
    fn send(&mut self, n: usize, cmd: &Command, fd: Option<std::os::fd::RawFd>) {
        let slot = &mut self.slots[n];
        let (Some(pid), Some(ctl)) = (slot.pid, slot.ctl.as_mut()) else {
            return;
        };
        self.scratch.clear();
        cmd.encode(&mut self.scratch);
        if let Err(e) = ctl.send(&self.scratch, fd) {
            log::warn!("worker {n} (pid {pid}): control channel: {e}");
            // The signal a worker understands without the channel.
            if matches!(
                cmd,
                Command::Shutdown | Command::ShutdownWaitForClients | Command::UpgradeDrain
            ) {
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            }
        }
    }

    /// Worker `n`'s channel is ready: send what waits for it, then act on its messages
    /// (forwarded cancel requests go to their owner, console requests are served).
    fn control_io(&mut self, token: usize) {
        let Some(n) = token.checked_sub(children::CONTROL_BASE) else {
            return;
        };
        let Some(ctl) = self.slots.get_mut(n).and_then(|s| s.ctl.as_mut()) else {
            return;
        };
        if let Err(e) = ctl.flush() {
            // The worker is gone; reading below finds out and SIGCHLD brings the details.
            log::debug!("worker {n}: control channel: {e}");
        }
        let fd = ctl.raw();
        let mut buf = [0u8; control::MAX_MESSAGE];
        loop {
            match control::recv(fd, &mut buf) {
                Ok(Some((len, fd))) => match Report::decode(&buf[..len]) {
                    Ok(Report::HandOver { state }) => self.hand_over(&state, fd),
                    Ok(Report::Cancel { pid, key }) => self.route_cancel(pid, key),
                    Ok(Report::Admin { req, request }) => self.console_request(n, req, request),
                    Ok(Report::Rows { req, chunk, last }) => self.gather_rows(n, req, chunk, last),
                    Err(e) => log::warn!("worker {n}: bad control message: {}", e.0),
                },
                Ok(None) => return,
                Err(_) => {
                    // The worker is gone; SIGCHLD brings the details.
                    if let Some(ctl) = self.slots[n].ctl.take() {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut mio::unix::SourceFd(&ctl.raw()));
                    }
                    return;
                }
            }
        }
    }

    /// A cancel request a worker could not serve: to the worker whose slot the key names,
    /// or, for the other generation's key during an upgrade, across the link.
    fn route_cancel(&mut self, pid: u32, key: u32) {
        // A client the old generation handed over keeps its key; we know where it went.
        let full = u64::from(pid) << 32 | u64::from(key);
        if let Some(&n) = self.adopted.get(&full) {
            return self.send(n, &Command::Cancel { pid, key }, None);
        }
        if !pgbouncers_worker::key_generation_matches(key, self.generation) {
            if let Some(link) = self.link.as_mut() {
                let _ = link
                    .chan
                    .send(format!("cancel {pid} {key}").as_bytes(), None);
            }
            return;
        }
        let owner = (key >> 24) as usize;
        if owner < self.slots.len() {
            self.send(owner, &Command::Cancel { pid, key }, None);
        }
    }

    fn kill_all(&mut self, sig: Signal) {
        for s in &self.slots {
            if let Some(pid) = s.pid {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
    }
}
