//! Online binary upgrade: the running supervisor execs the new binary with its listening sockets, the new one takes over, the old one drains.
//!
//! `pgbouncers --upgrade` sends [`signal()`] (SIGRTMIN+1; SIGUSR1/SIGUSR2 keep PgBouncer's
//! PAUSE/RESUME, and SIGWINCH, nginx's other spare, arrives whenever a terminal is resized).
//! The old supervisor forks and execs the binary at the path the pooler was started from,
//! with every listening socket (each slot's SO_REUSEPORT sockets, the Unix socket, the
//! metrics socket) and its shared memory kept open across exec, their numbers in
//! [`ENV_FDS`], as nginx and systemd pass sockets. The two supervisors keep a SEQPACKET
//! socketpair, the link ([`ENV_LINK`]): the new one says `ready` once its workers run (or
//! `fail` and why), and cancel requests for the other generation's keys cross it.
//!
//! The sockets themselves never close: until the old generation exits, both hold them,
//! so a connection waiting in an accept queue is served by whichever generation accepts
//! first, never reset.

use crate::listen::Listeners;
use std::ffi::{CString, OsString};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The link's descriptor number in the new supervisor.
pub const ENV_LINK: &str = "PGBOUNCERS_UPGRADE_LINK";
/// The inherited descriptors: `t<slot>=<fd>,<fd>` per slot, `u=<fd>`, `m=<fd>`, `shm=<fd>`.
pub const ENV_FDS: &str = "PGBOUNCERS_LISTEN_FDS";
/// The new supervisor's generation number.
pub const ENV_GENERATION: &str = "PGBOUNCERS_GENERATION";

/// The signal that asks a running supervisor to upgrade: SIGRTMIN+1 (`kill -RTMIN+1`).
pub fn signal() -> i32 {
    libc::SIGRTMIN() + 1
}

/// Asks the supervisor `pid` to upgrade (what `pgbouncers --upgrade` does).
pub fn request(pid: i32) -> io::Result<()> {
    // A stale pid file may name an unrelated process by now, which SIGRTMIN+1 (default
    // action: terminate) would kill. The supervisor's short name is its binary's.
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let comm = comm.trim_end();
        if !comm.starts_with("pgbouncers") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("it is not a pgbouncers supervisor (it runs {comm:?}): a stale pid file?"),
            ));
        }
    }
    // A pgbouncers that predates online upgrades (or a worker) does not catch the
    // signal, and would die of it.
    if catches(pid, signal()) == Some(false) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "it does not handle the upgrade signal: a pgbouncers without online upgrade, or \
             not the supervisor; restart it instead (SIGTERM, then start the new binary)",
        ));
    }
    // SAFETY: kill only sends a signal.
    if unsafe { libc::kill(pid, signal()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether process `pid` has a handler for `sig` (SigCgt in /proc/PID/status); None when
/// that cannot be read.
fn catches(pid: i32, sig: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())?;
    let bit = u32::try_from(sig - 1).ok()?;
    Some(mask.checked_shr(bit).is_some_and(|m| m & 1 == 1))
}

/// Where a failed upgrade's reason is written for `pgbouncers --upgrade` to print: the
/// pid file's path with `.upgrade` added.
pub fn status_path(pidfile: &Path) -> PathBuf {
    let mut s = pidfile.as_os_str().to_owned();
    s.push(".upgrade");
    PathBuf::from(s)
}

/// What a new supervisor inherited from the one it replaces.
pub struct Inherited {
    /// Taken by the supervisor once it runs; until then failures are reported on it.
    pub link: Option<OwnedFd>,
    pub generation: u32,
    /// `tcp[slot]`: that slot's sockets, one per listen address.
    pub tcp: Vec<Vec<TcpListener>>,
    pub unix: Option<UnixListener>,
    pub metrics: Option<TcpListener>,
    pub shm: Option<OwnedFd>,
    /// The old supervisor's pid (our parent at exec).
    pub predecessor: i32,
}

/// Takes ownership of an inherited descriptor after checking that it is open and is
/// not one of the standard three; it becomes close-on-exec again.
fn take_fd(text: &str) -> Result<OwnedFd, String> {
    let fd: RawFd = text
        .parse()
        .map_err(|_| format!("{ENV_FDS}: bad descriptor {text:?}"))?;
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed one fails with EBADF.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("{ENV_FDS}: descriptor {fd} is not open"));
    }
    // SAFETY: as above, on a descriptor we were handed at exec and nothing else owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open and ours alone (the environment names it once).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening socket, or an error naming what it is instead.
fn listening(fd: &OwnedFd) -> Result<(), String> {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || on == 0 {
        return Err(format!(
            "{ENV_FDS}: descriptor {} is not a listening socket",
            fd.as_raw_fd()
        ));
    }
    Ok(())
}

impl Inherited {
    /// Reads (and removes) what the old supervisor put in the environment: None on a
    /// cold start. Called first thing, before anything else opens a descriptor.
    pub fn from_env() -> Result<Option<Inherited>, String> {
        let Some(link) = std::env::var_os(ENV_LINK) else {
            return Ok(None);
        };
        let fds = std::env::var(ENV_FDS).unwrap_or_default();
        let generation = std::env::var(ENV_GENERATION).unwrap_or_default();
        for k in [ENV_LINK, ENV_FDS, ENV_GENERATION] {
            // SAFETY: called from the single-threaded start of main.
            unsafe { std::env::remove_var(k) };
        }
        let link = take_fd(&link.to_string_lossy())?;
        let mut inh = Inherited {
            link: Some(link),
            generation: 0,
            tcp: Vec::new(),
            unix: None,
            metrics: None,
            shm: None,
            predecessor: nix::unistd::getppid().as_raw(),
        };
        // From here on the link is ours: an error can be reported through it.
        let parsed = (|| {
            inh.generation = generation
                .parse()
                .map_err(|_| format!("{ENV_GENERATION}: bad generation {generation:?}"))?;
            for item in fds.split_whitespace() {
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| format!("{ENV_FDS}: bad item {item:?}"))?;
                match k {
                    "u" => {
                        let fd = take_fd(v)?;
                        listening(&fd)?;
                        inh.unix = Some(UnixListener::from(fd));
                    }
                    "m" => {
                        let fd = take_fd(v)?;
                        listening(&fd)?;
                        inh.metrics = Some(TcpListener::from(fd));
                    }
                    "shm" => inh.shm = Some(take_fd(v)?),
                    _ => {
                        let slot: usize = k
                            .strip_prefix('t')
                            .and_then(|n| n.parse().ok())
                            .ok_or_else(|| format!("{ENV_FDS}: bad item {item:?}"))?;
                        if slot != inh.tcp.len() {
                            return Err(format!("{ENV_FDS}: slot {slot} out of order"));
                        }
                        let mut socks = Vec::new();
                        for f in v.split(',').filter(|f| !f.is_empty()) {
                            let fd = take_fd(f)?;
                            listening(&fd)?;
                            socks.push(TcpListener::from(fd));
                        }
                        inh.tcp.push(socks);
                    }
                }
            }
            Ok(())
        })();
        match parsed {
            Ok(()) => Ok(Some(inh)),
            Err(e) => {
                inh.fail(&e);
                Err(e)
            }
        }
    }

    /// Tells the old supervisor that this one cannot take over, and why; it goes on serving.
    pub fn fail(&self, why: &str) {
        if let Some(link) = &self.link {
            let _ = send(link.as_raw_fd(), &format!("fail {why}"));
        }
    }

    /// The listeners this generation serves with: the inherited ones, which must match the
    /// configuration (addresses, port, Unix socket path), plus new sockets when `slots`
    /// grew. Fewer slots than before are refused: closing a socket would reset the
    /// connections in its accept queue.
    pub fn listeners(
        &mut self,
        cfg: &pgbouncers_worker::config::Config,
        slots: usize,
    ) -> Result<Listeners, String> {
        let addrs = crate::listen::addresses(cfg).map_err(|e| e.to_string())?;
        if slots < self.tcp.len() {
            return Err(format!(
                "workers would shrink from {} to {slots}: an upgrade keeps every listening \
                 socket; change workers with a reload (SIGHUP) after the upgrade",
                self.tcp.len()
            ));
        }
        let mut want: Vec<SocketAddr> = addrs.clone();
        want.sort();
        for (n, socks) in self.tcp.iter().enumerate() {
            let mut have = socks
                .iter()
                .map(|s| s.local_addr())
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            have.sort();
            if have != want {
                return Err(format!(
                    "listen_addr or listen_port changed (slot {n} listens on {have:?}, the \
                     configuration names {want:?}): an upgrade keeps the listening sockets; \
                     change them with a restart"
                ));
            }
        }
        let want_unix = match &cfg.unix_socket_dir {
            Some(dir) if !dir.is_empty() => {
                Some(PathBuf::from(dir).join(format!(".s.PGSQL.{}", cfg.listen_port)))
            }
            _ => None,
        };
        let have_unix = self.unix.as_ref().map(|l| {
            l.local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_default()
        });
        if want_unix != have_unix {
            return Err(format!(
                "unix_socket_dir changed ({have_unix:?} to {want_unix:?}): an upgrade keeps \
                 the listening sockets; change it with a restart"
            ));
        }
        let mut tcp = std::mem::take(&mut self.tcp);
        while tcp.len() < slots {
            tcp.push(crate::listen::bind_slot(&addrs).map_err(|e| e.to_string())?);
        }
        let unix = self.unix.take().zip(want_unix.clone());
        Ok(Listeners {
            tcp,
            unix,
            unix_path: want_unix,
        })
    }
}

/// Sends one text message on the link; WouldBlock and all errors are the caller's.
pub fn send(fd: RawFd, msg: &str) -> io::Result<()> {
    pgbouncers_worker::control::send(fd, msg.as_bytes(), None)
}

/// The prefix of a handed-over client's message on the link (the rest is binary).
const HANDOVER: &[u8] = b"handover ";

/// A message on the link.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// The new supervisor (this pid) runs its workers and has written the pid file.
    Ready(i32),
    /// The new supervisor cannot start, for this reason.
    Fail(String),
    /// A cancel request for the receiver's generation.
    Cancel { pid: u32, key: u32 },
    /// An idle client (`HandedClient` encoded) for the new generation; its socket comes
    /// with the message.
    HandOver(Vec<u8>),
}

impl Message {
    pub fn parse(b: &[u8]) -> Option<Message> {
        if let Some(state) = b.strip_prefix(HANDOVER) {
            return Some(Message::HandOver(state.to_vec()));
        }
        let s = std::str::from_utf8(b).ok()?;
        let (verb, rest) = s.split_once(' ').unwrap_or((s, ""));
        match verb {
            "ready" => rest.parse().ok().map(Message::Ready),
            "fail" => Some(Message::Fail(rest.to_string())),
            "cancel" => {
                let (p, k) = rest.split_once(' ')?;
                Some(Message::Cancel {
                    pid: p.parse().ok()?,
                    key: k.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

/// The link to the other generation.
pub(crate) struct Link {
    /// With a queue: handed-over clients' sockets must not be lost to a full buffer.
    pub chan: crate::channel::Channel,
    pub role: Role,
    pub since: Instant,
}

pub(crate) enum Role {
    /// We started this new supervisor; `ready` once it took over.
    Successor { pid: nix::unistd::Pid, ready: bool },
    /// We are the new supervisor; this is the old one, draining.
    Predecessor { pid: i32 },
}

/// Everything the fork needs, made before it. After the fork little runs: fcntl, execve,
/// and on failure a send and _exit, never the supervisor's destructors (they would
/// remove the Unix socket file and the pid file that the old generation still uses).
pub(crate) struct Exec {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// Descriptors to keep across exec.
    pub keep: Vec<RawFd>,
    pub link: RawFd,
    pub fail_msg: Vec<u8>,
}

impl Exec {
    pub fn new(
        exe: &Path,
        args: &[OsString],
        fds: String,
        link: RawFd,
        generation: u32,
        keep: Vec<RawFd>,
    ) -> io::Result<Exec> {
        let c = |b: &[u8]| {
            CString::new(b)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
        };
        let path = c(exe.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if [ENV_LINK, ENV_FDS, ENV_GENERATION]
                .iter()
                .any(|n| k.as_bytes() == n.as_bytes())
            {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(c(&kv)?);
        }
        envp.push(c(format!("{ENV_LINK}={link}").as_bytes())?);
        envp.push(c(format!("{ENV_FDS}={fds}").as_bytes())?);
        envp.push(c(format!("{ENV_GENERATION}={generation}").as_bytes())?);
        let fail_msg = format!("fail cannot execute {}: ", exe.display()).into_bytes();
        Ok(Exec {
            path,
            argv,
            envp,
            keep,
            link,
            fail_msg,
        })
    }

    /// In the forked child: keeps the descriptors open across exec and execs the new
    /// binary. Never returns; on failure the reason goes over the link.
    pub fn exec(&self) -> ! {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: fcntl, execve, send and _exit on descriptors and strings prepared before
        // the fork; the vectors above outlive the execve call.
        unsafe {
            for &fd in self.keep.iter().chain(std::iter::once(&self.link)) {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            // The new supervisor must not die with us: it outlives this generation.
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let err = io::Error::last_os_error().to_string();
            let mut msg = self.fail_msg.clone();
            msg.extend_from_slice(err.as_bytes());
            libc::send(
                self.link,
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            libc::_exit(127)
        }
    }
}

impl crate::Supervisor {
    /// The upgrade signal: start the binary the pooler was launched from as the next
    /// generation, handing it the listening sockets. Refused while shutting down, while
    /// another upgrade runs, or while the previous generation still drains.
    pub(crate) fn start_upgrade(&mut self) {
        if let Err(e) = self.try_start_upgrade() {
            log::error!("upgrade refused: {e}; this generation goes on serving");
            self.upgrade_status(&format!("refused: {e}"));
        }
    }

    fn try_start_upgrade(&mut self) -> Result<(), String> {
        if self.stopping.is_some() {
            return Err("the pooler is shutting down".into());
        }
        match &self.link {
            Some(Link {
                role: Role::Successor { pid, .. },
                ..
            }) => {
                return Err(format!(
                    "an upgrade (new supervisor pid {pid}) is in progress"
                ))
            }
            Some(Link {
                role: Role::Predecessor { pid },
                ..
            }) => {
                return Err(format!(
                    "the previous generation (pid {pid}) is still draining; upgrade again \
                     once it has exited"
                ))
            }
            None => {}
        }
        let (ours, theirs) = pgbouncers_worker::control::pair().map_err(|e| e.to_string())?;
        let mut fds = String::new();
        let mut keep = Vec::new();
        for (n, socks) in self.listeners.tcp.iter().enumerate() {
            let list: Vec<String> = socks.iter().map(|s| s.as_raw_fd().to_string()).collect();
            keep.extend(socks.iter().map(|s| s.as_raw_fd()));
            fds.push_str(&format!("t{n}={} ", list.join(",")));
        }
        if let Some((l, _)) = &self.listeners.unix {
            keep.push(l.as_raw_fd());
            fds.push_str(&format!("u={} ", l.as_raw_fd()));
        }
        if let Some(l) = &self.metrics.listener {
            keep.push(l.as_raw_fd());
            fds.push_str(&format!("m={} ", l.as_raw_fd()));
        }
        if let Some(fd) = &self.shm_fd {
            keep.push(fd.as_raw_fd());
            fds.push_str(&format!("shm={}", fd.as_raw_fd()));
        }
        let exec = Exec::new(
            &self.opts.exe,
            &self.opts.args,
            fds,
            theirs.as_raw_fd(),
            self.generation + 1,
            keep,
        )
        .map_err(|e| e.to_string())?;
        self.poll
            .registry()
            .register(
                &mut mio::unix::SourceFd(&ours.as_raw_fd()),
                mio::Token(crate::LINK_TOKEN),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        // SAFETY: the supervisor is single-threaded; the child only runs `Exec::exec`.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => exec.exec(),
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop(theirs);
                log::info!(
                    "upgrade: starting {} as generation {} (pid {child})",
                    self.opts.exe.display(),
                    self.generation + 1
                );
                self.link = Some(Link {
                    chan: crate::channel::Channel::new(ours),
                    role: Role::Successor {
                        pid: child,
                        ready: false,
                    },
                    since: Instant::now(),
                });
                Ok(())
            }
            Err(e) => {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut mio::unix::SourceFd(&ours.as_raw_fd()));
                Err(format!("fork: {e}"))
            }
        }
    }

    /// The new supervisor, with its workers forked: takes the pid file over and tells the
    /// old one, which then stops accepting and drains.
    pub(crate) fn take_over(&mut self) -> io::Result<()> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let fd = link.chan.raw();
        self.poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(crate::LINK_TOKEN),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        if let Some(path) = &self.opts.pidfile {
            match crate::daemon::PidFile::take_over(path) {
                Ok(p) => self.pidfile = Some(p),
                Err(e) => {
                    let why = e.to_string();
                    let _ = send(fd, &format!("fail {why}"));
                    return Err(e);
                }
            }
        }
        send(fd, &format!("ready {}", std::process::id()))?;
        log::info!(
            "upgrade: generation {} took over (pid {}); the previous generation drains",
            self.generation,
            std::process::id()
        );
        Ok(())
    }

    /// Messages from the other generation.
    pub(crate) fn link_io(&mut self) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.chan.flush() {
                log::debug!("upgrade link: {e}");
            }
        }
        let mut buf = vec![0u8; pgbouncers_worker::control::MAX_MESSAGE];
        loop {
            let Some(fd) = self.link.as_ref().map(|l| l.chan.raw()) else {
                return;
            };
            match pgbouncers_worker::control::recv(fd, &mut buf) {
                Ok(Some((n, fd))) => match Message::parse(&buf[..n]) {
                    Some(Message::HandOver(state)) => self.adopt_handed(state, fd),
                    Some(Message::Ready(pid)) => self.handed_over_to(pid),
                    Some(Message::Fail(why)) => self.upgrade_failed(&why),
                    Some(Message::Cancel { pid, key }) => {
                        // Only keys of our own generation: a key of neither is dropped,
                        // never sent back, so nothing goes round in circles.
                        if pgbouncers_worker::key_generation_matches(key, self.generation) {
                            self.route_cancel(pid, key);
                        }
                    }
                    None => log::warn!("upgrade: bad message on the link"),
                },
                Ok(None) => return,
                Err(_) => return self.link_closed(),
            }
        }
    }

    /// The other end of the link closed: the previous generation exited (the upgrade is
    /// complete), or the successor died (its exit status comes with SIGCHLD).
    fn link_closed(&mut self) {
        if let Some(Link {
            role: Role::Successor { ready: false, .. },
            ..
        }) = &self.link
        {
            // The successor died before taking over: keep the link until SIGCHLD says
            // how it ended (`successor_exited`), which also reports the failure.
            return;
        }
        let Some(link) = self.link.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&link.chan.raw()));
        match link.role {
            Role::Predecessor { pid } => {
                log::info!(
                    "upgrade complete: generation {} (pid {pid}) exited after {:.1}s of overlap",
                    self.generation - 1,
                    link.since.elapsed().as_secs_f64()
                );
                // Whatever it held no longer counts (it may have died without cleaning
                // up); workers forked from now on need not map it.
                if let Some(old) = self.predecessor.take() {
                    old.retire();
                }
            }
            Role::Successor { pid, .. } => {
                log::warn!("upgrade: the new supervisor (pid {pid}) closed the link");
            }
        }
    }

    /// The successor took over: stop accepting (our workers close their copies of the
    /// sockets, which stay open in the new generation) and drain as SIGTERM does, every
    /// client served until it leaves (up to shutdown_timeout), except that idle clients
    /// go to the new generation as soon as they are between transactions. (SIGINT's way
    /// would close clients that are logging in or idle: they would see an error.)
    fn handed_over_to(&mut self, new: i32) {
        let Some(Link {
            role: Role::Successor { ready, .. },
            since,
            ..
        }) = self.link.as_mut()
        else {
            return;
        };
        *ready = true;
        log::info!(
            "upgrade: generation {} (pid {new}) took over after {:.1}s; generation {} stops \
             accepting and drains (shutdown_timeout {}s)",
            self.generation + 1,
            since.elapsed().as_secs_f64(),
            self.generation,
            self.cfg.shutdown_timeout.as_secs()
        );
        *since = Instant::now();
        // systemd (Type=notify) follows the new main process; NotifyAccess=main accepts
        // this from us, the main process until now.
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::MainPid(new as u32),
                sd_notify::NotifyState::Ready,
            ],
        );
        self.handed_over = true;
        // The Unix socket file is the new generation's now: we must not remove it.
        self.listeners.unix_path = None;
        if let Some(mut l) = self.metrics.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.begin_stop_as(pgbouncers_worker::control::Command::UpgradeDrain);
    }

    /// A worker of ours handed an idle client over: on to the new supervisor.
    pub(crate) fn hand_over(&mut self, state: &[u8], fd: Option<OwnedFd>) {
        let Some(fd) = fd else {
            return;
        };
        let Some(link) = self.link.as_mut() else {
            log::warn!("upgrade: a handed-over client has nowhere to go; closing it");
            return;
        };
        let mut msg = Vec::with_capacity(HANDOVER.len() + state.len());
        msg.extend_from_slice(HANDOVER);
        msg.extend_from_slice(state);
        if let Err(e) = link.chan.send(&msg, Some(fd.as_raw_fd())) {
            log::warn!("upgrade: cannot pass a client on: {e}");
        }
    }

    /// A client the old generation handed over: to our worker in the slot its cancel key
    /// names (so cancels find it by slot), or any live one.
    fn adopt_handed(&mut self, state: Vec<u8>, fd: Option<OwnedFd>) {
        let Some(fd) = fd else {
            return;
        };
        let key = match pgbouncers_worker::control::HandedClient::decode(&state) {
            Ok(h) => h.cancel_key,
            Err(e) => {
                log::warn!("upgrade: bad handed-over client: {}", e.0);
                return;
            }
        };
        let want = ((key as u32) >> 24) as usize;
        let live = |n: usize| {
            self.slots
                .get(n)
                .is_some_and(|s| s.pid.is_some() && s.ctl.is_some())
        };
        let Some(n) = std::iter::once(want)
            .chain(0..self.slots.len())
            .find(|&n| live(n))
        else {
            log::warn!("upgrade: no worker to adopt a client; closing it");
            return;
        };
        if key != 0 {
            self.adopted.insert(key, n);
        }
        self.send(
            n,
            &pgbouncers_worker::control::Command::Adopt { state },
            Some(fd.as_raw_fd()),
        );
    }

    /// The successor cannot start: we keep serving and say why.
    fn upgrade_failed(&mut self, why: &str) {
        log::error!(
            "upgrade failed: {why}; generation {} goes on serving",
            self.generation
        );
        self.upgrade_status(&format!("failed: {why}"));
        if let Some(link) = self.link.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut mio::unix::SourceFd(&link.chan.raw()));
            if let Role::Successor { pid, ready: false } = link.role {
                // It said it cannot start; make sure it does not linger half-started.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
    }

    /// A child that is not a worker exited: the successor, before it took over?
    pub(crate) fn successor_exited(&mut self, pid: nix::unistd::Pid, how: &str) {
        if let Some(Link {
            role:
                Role::Successor {
                    pid: p,
                    ready: false,
                },
            ..
        }) = &self.link
        {
            if *p == pid {
                self.upgrade_failed(&format!("the new supervisor (pid {pid}) {how}"));
            }
        }
    }

    /// A successor that never says ready is killed and the upgrade fails.
    pub(crate) fn upgrade_timeout(&mut self) {
        if let Some(Link {
            role: Role::Successor { pid, ready: false },
            since,
            ..
        }) = &self.link
        {
            if since.elapsed() > crate::UPGRADE_TIMEOUT {
                let pid = *pid;
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                self.upgrade_failed(&format!(
                    "the new supervisor (pid {pid}) did not take over within {}s",
                    crate::UPGRADE_TIMEOUT.as_secs()
                ));
            }
        }
    }

    /// Writes why an upgrade did not happen where `pgbouncers --upgrade` looks for it.
    fn upgrade_status(&self, text: &str) {
        if let Some(path) = &self.opts.pidfile {
            let _ = std::fs::write(status_path(path), format!("{text}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_messages_parse() {
        assert_eq!(Message::parse(b"ready 42"), Some(Message::Ready(42)));
        assert_eq!(
            Message::parse(b"fail listen_port changed"),
            Some(Message::Fail("listen_port changed".into()))
        );
        assert_eq!(
            Message::parse(b"cancel 7 4294967295"),
            Some(Message::Cancel {
                pid: 7,
                key: u32::MAX
            })
        );
        for bad in [&b"ready"[..], b"cancel 1", b"cancel x 2", b"hello", b"\xff"] {
            assert_eq!(Message::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_status_file_sits_beside_the_pid_file() {
        assert_eq!(
            status_path(Path::new("/run/pgbouncers/pgbouncers.pid")),
            Path::new("/run/pgbouncers/pgbouncers.pid.upgrade")
        );
    }
}
