//! The process table: forking workers into slots, reaping them, respawning with backoff.

use crate::channel::Channel;
use crate::{title, Supervisor, EXIT_NO_RESPAWN};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use pgbouncers_worker::control;
use pgbouncers_worker::{ListenSocket, PassedFd, WorkerInit};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Control channel tokens in the supervisor's poll: one per slot.
pub(crate) const CONTROL_BASE: usize = 1000;

/// One worker slot in the process table.
pub(crate) struct Slot {
    pub pid: Option<Pid>,
    pub started: Instant,
    /// Consecutive quick deaths, for the respawn backoff.
    pub crashes: u32,
    pub respawn_at: Option<Instant>,
    /// The supervisor's end of this slot's control channel, with what waits to go out.
    pub ctl: Option<Channel>,
    /// Asked to stop because `workers` shrank: not respawned.
    pub retiring: bool,
}

impl Slot {
    pub fn new() -> Slot {
        let now = Instant::now();
        Slot {
            pid: None,
            started: now,
            crashes: 0,
            respawn_at: Some(now),
            ctl: None,
            retiring: false,
        }
    }
}

impl Supervisor {
    /// Collects exited workers, gives back what they held, and schedules their respawn.
    pub(crate) fn reap(&mut self) {
        loop {
            let (pid, how, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    (pid, format!("exited with code {code}"), Some(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("killed by {sig}"), None),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some(n) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
                self.successor_exited(pid, &how);
                continue;
            };
            // Whatever the dead worker held in shared memory is free again.
            self.shm.reclaim(n);
            // Console commands waiting on it wait on the others only; its successor
            // starts with no connections, so it has nothing to wait for.
            self.gathers_forget(n);
            let slot = &mut self.slots[n];
            slot.pid = None;
            if let Some(ctl) = slot.ctl.take() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut mio::unix::SourceFd(&ctl.raw()));
            }
            if self.stopping.is_some() || slot.retiring {
                log::info!("worker {n} (pid {pid}) {how}");
                continue;
            }
            if code == Some(EXIT_NO_RESPAWN) {
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

    /// Starts every slot whose respawn time has come.
    pub(crate) fn respawn_due(&mut self) {
        let now = Instant::now();
        for n in 0..self.slots.len() {
            let s = &self.slots[n];
            if s.pid.is_some() || s.retiring || s.respawn_at.is_none_or(|t| t > now) {
                continue;
            }
            match self.spawn(n) {
                Ok(pid) => {
                    let s = &mut self.slots[n];
                    s.pid = Some(pid);
                    s.started = now;
                    s.respawn_at = None;
                    log::info!("worker {n} started (pid {pid})");
                }
                Err(e) => {
                    log::error!("cannot start worker {n}: {e}");
                    self.slots[n].respawn_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    /// Drops the slots at the end that finished retiring, with their sockets.
    pub(crate) fn retire_done(&mut self) {
        while self.slots.len() > self.want {
            let last = self.slots.len() - 1;
            if !self.slots[last].retiring || self.slots[last].pid.is_some() {
                break;
            }
            self.slots.pop();
            self.listeners.tcp.truncate(self.slots.len());
            log::info!("worker slot {last} retired");
        }
    }

    /// Forks a worker for slot `n`; the child never returns from here.
    fn spawn(&mut self, n: usize) -> std::io::Result<Pid> {
        let (ours, theirs) = control::pair()?;
        // Writable too: messages queued while the channel was full go out when it drains.
        self.poll.registry().register(
            &mut mio::unix::SourceFd(&ours.as_raw_fd()),
            mio::Token(CONTROL_BASE + n),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                drop(theirs);
                self.slots[n].ctl = Some(Channel::new(ours));
                Ok(child)
            }
            Ok(ForkResult::Child) => {
                drop(ours);
                // What an upgrade would pass on (SHOW FDS), listed before those close.
                let passed = self.passed_fds();
                self.close_supervisor_fds();
                // The child never returns into the supervisor's loop, even on a panic:
                // it would run a second supervisor (and remove the pid file on exit).
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.worker_main(n, theirs, passed)
                }))
                .unwrap_or(1);
                std::process::exit(code);
            }
            Err(e) => {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut mio::unix::SourceFd(&ours.as_raw_fd()));
                Err(e.into())
            }
        }
    }

    /// In a child just forked: closes every descriptor that belongs to the supervisor, so a
    /// worker holds only its own. There is no exec, so close-on-exec does nothing here.
    /// A metrics socket left open in a worker would keep an old `metrics_addr` accepting
    /// (and never answering) after a reload moves it, and make moving back fail.
    fn close_supervisor_fds(&mut self) {
        // Dropping the signal pipe also unregisters the supervisor's handlers; the worker
        // sets its own dispositions next.
        self.signals = None;
        self.poll.0 = None;
        self.metrics.listener = None;
        self.metrics.conns.clear();
        for s in &mut self.slots {
            s.ctl = None;
        }
        // The other generation's link and our shared memory's descriptor (the mapping
        // stays) belong to the supervisor.
        self.link = None;
        self.shm_fd = None;
        self.pidfile = None;
        // The other slots' listeners go once this one's are cloned, in worker_main.
    }

    /// The child side of a fork: becomes worker `n` and runs its loop.
    fn worker_main(&mut self, n: usize, ctl: OwnedFd, passed: Vec<PassedFd>) -> i32 {
        // Changing credentials clears the parent-death signal, so drop root first.
        let user = self.opts.user.as_deref().or(self.cfg.user.as_deref());
        if let Err(e) = crate::daemon::drop_privileges(user) {
            log::error!("worker {n}: {e}");
            return EXIT_NO_RESPAWN;
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's own attributes.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        // The supervisor may have died between fork and prctl.
        if nix::unistd::getppid() != self.pid {
            return 1;
        }
        use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2};
        for sig in [SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2] {
            // SAFETY: setting a disposition to default or ignore is always sound.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Signals meant for the pooler come through the supervisor: a terminal's Ctrl-C
        // or a stray HUP to the process group must not end a worker on its own. The
        // upgrade signal too: ignored, it also shows `--upgrade` (SigCgt) that a worker's
        // pid is not the supervisor's.
        for sig in [SIGINT, SIGHUP, SIGUSR1, SIGUSR2, crate::upgrade::signal()] {
            // SAFETY: as above.
            unsafe {
                libc::signal(sig, libc::SIG_IGN);
            }
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
        // Every other socket belongs to someone else.
        self.listeners.tcp.clear();
        self.listeners.unix = None;
        self.listeners.unix_path = None;
        let init = WorkerInit {
            slot: n,
            config: self.cfg.clone(),
            userlist: self.userlist.clone(),
            hba: self.hba.clone(),
            listeners,
            mock_key: self.mock_key,
            control: Some(ctl),
            shm: self.shm.clone(),
            holds: self.holds.clone(),
            generation: self.generation,
            predecessor: self.predecessor.clone(),
            passed: Arc::new(passed),
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

impl Supervisor {
    /// What an upgrade would pass to the next generation now (SHOW FDS).
    fn passed_fds(&self) -> Vec<PassedFd> {
        let mut out = Vec::new();
        for (n, socks) in self.listeners.tcp.iter().enumerate() {
            for l in socks {
                let addr = l.local_addr().ok();
                out.push(PassedFd {
                    fd: l.as_raw_fd(),
                    task: "listen",
                    slot: Some(n),
                    addr: addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                    port: addr.map_or(0, |a| a.port()),
                });
            }
        }
        if let Some((l, path)) = &self.listeners.unix {
            out.push(PassedFd {
                fd: l.as_raw_fd(),
                task: "unix",
                slot: None,
                addr: path.display().to_string(),
                port: self.cfg.listen_port,
            });
        }
        if let Some(l) = &self.metrics.listener {
            let addr = l.local_addr().ok();
            out.push(PassedFd {
                fd: l.as_raw_fd(),
                task: "metrics",
                slot: None,
                addr: addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                port: addr.map_or(0, |a| a.port()),
            });
        }
        if let Some(fd) = &self.shm_fd {
            out.push(PassedFd {
                fd: fd.as_raw_fd(),
                task: "shm",
                slot: None,
                addr: String::new(),
                port: 0,
            });
        }
        out
    }
}
