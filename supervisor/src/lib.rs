//! Supervisor: binds the listeners, forks and respawns workers, and turns signals into actions.
//!
//! It stays single-threaded and serves no clients. Signal handlers only queue the signal
//! (signal-hook); one flat loop acts on signals, worker exits and control messages.

mod averages;
mod children;
mod console;
pub mod daemon;
mod listen;
mod metrics;
mod reload;
pub mod title;

use children::Slot;
use nix::sys::signal::Signal;
use pgbouncers_worker::config::Config;
use pgbouncers_worker::control::{self, Command, Report};
use pgbouncers_worker::shm::Shm;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code a worker uses for "do not respawn me": its configuration cannot work.
pub const EXIT_NO_RESPAWN: i32 = 3;
/// Shared-memory capacity for worker slots: `workers` may grow to this on reload.
const WORKERS_CAP: usize = 256;
/// Shared-memory capacity for database and user names with global limits and stats.
const NAMES_CAP: usize = 4096;
const SIGNALS_TOKEN: usize = usize::MAX;

pub struct Options {
    pub config_path: PathBuf,
    pub workers: Option<usize>,
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
    poll: mio::Poll,
    stopping: Option<Instant>,
    /// Our own pid: a worker whose parent is someone else was orphaned at birth.
    pid: nix::unistd::Pid,
}

/// Reads the auth file a config names; its text goes to every worker.
pub fn read_userlist(cfg: &Config) -> Result<Option<String>, String> {
    let Some(path) = cfg.auth_file.as_deref() else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("auth_file {path}: {e}"))?;
    pgbouncers_worker::auth::Userlist::parse(&text)
        .map_err(|e| format!("auth_file {path}: {e}"))?;
    Ok(Some(text))
}

/// Reads the hba file a config names (for `auth_type: hba`); its text goes to every worker.
pub fn read_hba(cfg: &Config) -> Result<Option<String>, String> {
    let Some(path) = cfg.auth_hba_file.as_deref() else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("auth_hba_file {path}: {e}"))?;
    pgbouncers_worker::auth::hba::Hba::parse(&text)
        .map_err(|e| format!("auth_hba_file {path}: {e}"))?;
    Ok(Some(text))
}

/// Runs the pooler: returns the process exit code.
pub fn run(opts: Options, cfg: Config) -> i32 {
    // The text the console's SET edits; the file was just parsed, so it reads again.
    let config_text = std::fs::read_to_string(&opts.config_path).unwrap_or_default();
    let (userlist, hba) = match read_userlist(&cfg).and_then(|u| Ok((u, read_hba(&cfg)?))) {
        Ok(x) => x,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    let workers = opts
        .workers
        .unwrap_or_else(|| cfg.worker_count())
        .clamp(1, WORKERS_CAP);
    let listeners = match listen::bind(&cfg, workers) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    let mut mock_key = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut mock_key) {
        log::error!("no random numbers: {e}");
        return 1;
    }
    let shm = match Shm::create(WORKERS_CAP, NAMES_CAP) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::error!("cannot map shared memory: {e}");
            return 1;
        }
    };
    let poll = match mio::Poll::new() {
        Ok(p) => p,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    for addr in listen::addresses(&cfg).unwrap_or_default() {
        log::info!("listening on {addr}");
    }
    if let Some((_, p)) = &listeners.unix {
        log::info!("listening on {}", p.display());
    }
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
        poll,
        stopping: None,
        pid: nix::unistd::getpid(),
    };
    let code = match sup.main_loop() {
        Ok(code) => code,
        Err(e) => {
            log::error!("supervisor failed: {e}");
            sup.kill_all(Signal::SIGKILL);
            1
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    code
}

impl Supervisor {
    fn main_loop(&mut self) -> std::io::Result<i32> {
        let mut signals =
            Signals::new([SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2])?;
        self.poll.registry().register(
            &mut signals,
            mio::Token(SIGNALS_TOKEN),
            mio::Interest::READABLE,
        )?;
        self.metrics_listen()?;
        for _ in 0..self.want {
            self.slots.push(Slot::new());
        }
        self.respawn_due();
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
                    metrics::LISTENER_TOKEN => self.metrics_accept(),
                    t if t >= metrics::CONN_BASE => self.metrics_io(t),
                    t => self.control_io(t),
                }
            }
            for sig in signals.pending() {
                match sig {
                    SIGCHLD => {}
                    SIGTERM | SIGINT => self.begin_stop(),
                    SIGQUIT => {
                        log::info!("got SIGQUIT, immediate shutdown");
                        self.kill_all(Signal::SIGKILL);
                        self.reap();
                        return Ok(0);
                    }
                    SIGHUP => self.reload(),
                    SIGUSR1 => self.pause(None, true),
                    SIGUSR2 => self.pause(None, false),
                    _ => {}
                }
            }
            self.reap();
            self.retire_done();
            self.finish_gathers(true);
            self.metrics_timeouts();
            self.averages_tick();
            if let Some(since) = self.stopping {
                if self.slots.iter().all(|s| s.pid.is_none()) {
                    log::info!("all workers stopped; exiting");
                    return Ok(0);
                }
                let limit = self.cfg.shutdown_timeout;
                if !limit.is_zero() && since.elapsed() > limit + Duration::from_secs(5) {
                    log::warn!("workers did not stop in time; killing them");
                    self.kill_all(Signal::SIGKILL);
                }
            } else {
                self.respawn_due();
            }
        }
    }

    /// SIGTERM/SIGINT: every worker drains and exits; so do we, once they are gone.
    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        log::info!("shutting down");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.stopping = Some(Instant::now());
        self.broadcast(&Command::Shutdown);
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

    fn send(&mut self, n: usize, cmd: &Command, fd: Option<std::os::fd::RawFd>) {
        let slot = &self.slots[n];
        let (Some(pid), Some(ctl)) = (slot.pid, slot.ctl.as_ref()) else {
            return;
        };
        let mut msg = Vec::with_capacity(32);
        cmd.encode(&mut msg);
        if let Err(e) = control::send(ctl.as_raw_fd(), &msg, fd) {
            log::warn!("worker {n} (pid {pid}): control channel: {e}");
            // The signal a worker understands without the channel.
            if matches!(cmd, Command::Shutdown) {
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            }
        }
    }

    /// Messages from a worker: route forwarded cancel requests to their owner.
    fn control_io(&mut self, token: usize) {
        let Some(n) = token.checked_sub(children::CONTROL_BASE) else {
            return;
        };
        let Some(fd) = self
            .slots
            .get(n)
            .and_then(|s| s.ctl.as_ref())
            .map(|f| f.as_raw_fd())
        else {
            return;
        };
        let mut buf = [0u8; control::MAX_MESSAGE];
        loop {
            match control::recv(fd, &mut buf) {
                Ok(Some((len, _))) => match Report::decode(&buf[..len]) {
                    Ok(Report::Cancel { pid, key }) => {
                        let owner = (key >> 24) as usize;
                        if owner < self.slots.len() {
                            self.send(owner, &Command::Cancel { pid, key }, None);
                        }
                    }
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
                            .deregister(&mut mio::unix::SourceFd(&ctl.as_raw_fd()));
                    }
                    return;
                }
            }
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
