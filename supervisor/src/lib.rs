//! Supervisor: binds the listeners, forks and respawns workers, and turns signals into actions.

mod listen;
pub mod title;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use pgbouncers_worker::config::Config;
use pgbouncers_worker::{ListenSocket, WorkerInit};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code a worker uses for "do not respawn me": its configuration cannot work.
pub const EXIT_NO_RESPAWN: i32 = 3;

pub struct Options {
    pub config_path: PathBuf,
    pub workers: Option<usize>,
}

/// One worker slot in the process table.
struct Slot {
    pid: Option<Pid>,
    started: Instant,
    /// Consecutive quick deaths, for the respawn backoff.
    crashes: u32,
    respawn_at: Option<Instant>,
}

struct Supervisor {
    cfg: Arc<Config>,
    listeners: listen::Listeners,
    slots: Vec<Slot>,
    mock_key: [u8; 32],
    stopping: Option<Instant>,
}

/// Runs the pooler: returns the process exit code.
pub fn run(opts: Options, cfg: Config) -> i32 {
    let workers = opts.workers.unwrap_or_else(|| cfg.worker_count()).max(1);
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
    let mut sup = Supervisor {
        cfg: Arc::new(cfg),
        listeners,
        slots: Vec::new(),
        mock_key,
        stopping: None,
    };
    for addr in listen::addresses(&sup.cfg).unwrap_or_default() {
        log::info!("listening on {addr}");
    }
    if let Some((_, p)) = &sup.listeners.unix {
        log::info!("listening on {}", p.display());
    }
    match sup.main_loop(workers) {
        Ok(code) => code,
        Err(e) => {
            log::error!("supervisor failed: {e}");
            sup.kill_all(Signal::SIGKILL);
            1
        }
    }
}

impl Supervisor {
    fn main_loop(&mut self, workers: usize) -> std::io::Result<i32> {
        let mut poll = mio::Poll::new()?;
        let mut signals =
            Signals::new([SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2])?;
        poll.registry()
            .register(&mut signals, mio::Token(0), mio::Interest::READABLE)?;
        let now = Instant::now();
        for _ in 0..workers {
            self.slots.push(Slot {
                pid: None,
                started: now,
                crashes: 0,
                respawn_at: Some(now),
            });
        }
        let mut events = mio::Events::with_capacity(16);
        loop {
            self.respawn_due();
            if let Some(since) = self.stopping {
                if self.slots.iter().all(|s| s.pid.is_none()) {
                    log::info!("all workers stopped; exiting");
                    return Ok(0);
                }
                if since.elapsed() > self.cfg.shutdown_timeout + Duration::from_secs(5) {
                    log::warn!("workers did not stop in time; killing them");
                    self.kill_all(Signal::SIGKILL);
                }
            }
            if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for sig in signals.pending() {
                match sig {
                    SIGCHLD => self.reap(),
                    SIGTERM | SIGINT => self.stop(Signal::SIGTERM),
                    SIGQUIT => {
                        log::info!("got SIGQUIT, immediate shutdown");
                        self.kill_all(Signal::SIGKILL);
                        return Ok(0);
                    }
                    SIGHUP => log::info!("got SIGHUP: reload is not implemented yet"),
                    _ => {}
                }
            }
            self.reap();
        }
    }

    fn stop(&mut self, sig: Signal) {
        if self.stopping.is_none() {
            log::info!("shutting down");
            self.stopping = Some(Instant::now());
        }
        self.kill_all(sig);
    }

    fn kill_all(&mut self, sig: Signal) {
        for s in &self.slots {
            if let Some(pid) = s.pid {
                let _ = kill(pid, sig);
            }
        }
    }

    /// Collects exited workers and schedules their respawn.
    fn reap(&mut self) {
        loop {
            let (pid, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exited with code {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("killed by {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let no_respawn = how == format!("exited with code {EXIT_NO_RESPAWN}");
            let Some((n, slot)) = self
                .slots
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.pid == Some(pid))
            else {
                continue;
            };
            slot.pid = None;
            if self.stopping.is_some() {
                log::info!("worker {n} (pid {pid}) {how}");
                continue;
            }
            if no_respawn {
                log::error!("worker {n} (pid {pid}) {how}: not respawning");
                continue;
            }
            // Quick deaths in a row back off exponentially, up to 30 s.
            if slot.started.elapsed() < Duration::from_secs(10) {
                slot.crashes += 1;
            } else {
                slot.crashes = 0;
            }
            let delay = if slot.crashes <= 1 {
                Duration::ZERO
            } else {
                Duration::from_millis(100 << slot.crashes.min(9)).min(Duration::from_secs(30))
            };
            log::warn!("worker {n} (pid {pid}) {how}; respawning in {delay:?}");
            slot.respawn_at = Some(Instant::now() + delay);
        }
    }

    fn respawn_due(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = Instant::now();
        for n in 0..self.slots.len() {
            let due = self.slots[n].respawn_at.is_some_and(|t| t <= now);
            if due && self.slots[n].pid.is_none() {
                match self.spawn(n) {
                    Ok(pid) => {
                        let s = &mut self.slots[n];
                        s.pid = Some(pid);
                        s.started = now;
                        s.respawn_at = None;
                        log::info!("worker {n} started (pid {pid})");
                    }
                    Err(e) => {
                        log::error!("cannot fork worker {n}: {e}");
                        self.slots[n].respawn_at = Some(now + Duration::from_secs(1));
                    }
                }
            }
        }
    }

    /// Forks a worker for slot `n`; the child never returns from here.
    fn spawn(&mut self, n: usize) -> nix::Result<Pid> {
        // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => Ok(child),
            ForkResult::Child => {
                let code = self.worker_main(n);
                std::process::exit(code);
            }
        }
    }

    fn worker_main(&mut self, n: usize) -> i32 {
        // SAFETY: prctl with PR_SET_PDEATHSIG only changes this process's own attributes.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        if nix::unistd::getppid() == Pid::from_raw(1) {
            return 1;
        }
        // The supervisor's signal handlers are inherited: put back the defaults.
        for sig in [SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2] {
            // SAFETY: resetting a disposition to its default is always sound.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Ctrl-C reaches the whole process group; the supervisor decides for workers.
        unsafe {
            libc::signal(SIGINT, libc::SIG_IGN);
        }
        title::set(&format!("pgbouncers: worker {n}"));
        let mut listeners = Vec::new();
        for l in &self.listeners.tcp[n] {
            match l.try_clone() {
                Ok(l) => listeners.push(ListenSocket::Tcp(l)),
                Err(e) => {
                    log::error!("worker {n}: {e}");
                    return 1;
                }
            }
        }
        if let Some((l, _)) = &self.listeners.unix {
            if let Ok(l) = l.try_clone() {
                listeners.push(ListenSocket::Unix(l));
            }
        }
        // The other slots' sockets belong to other workers.
        for (i, socks) in self.listeners.tcp.iter_mut().enumerate() {
            if i != n {
                socks.clear();
            }
        }
        let init = WorkerInit {
            slot: n,
            config: self.cfg.clone(),
            listeners,
            mock_key: self.mock_key,
        };
        match pgbouncers_worker::run(init) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("worker {n}: {e}");
                1
            }
        }
    }
}
