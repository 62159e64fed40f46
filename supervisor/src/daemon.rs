//! Becoming a daemon, the pid file, and dropping root in workers.

use std::io;
use std::path::{Path, PathBuf};

/// Detaches from the terminal: fork, setsid, fork again, stdio to /dev/null. Only the
/// grandchild returns; the caller then writes the pid file.
pub fn daemonize() -> io::Result<()> {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: called before any thread exists, from the single-threaded main.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().map_err(io::Error::from)?;
    // SAFETY: as above; the session leader forks once more so it can never get a terminal.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors; /dev/null stays open for the call.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
    // The working directory stays: relative paths in the config keep their meaning.
    Ok(())
}

/// A pid file that removes itself when the supervisor exits normally.
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes our pid, refusing when the file names a live process.
    pub fn create(path: &Path) -> io::Result<PidFile> {
        if let Ok(old) = std::fs::read_to_string(path) {
            if let Ok(pid) = old.trim().parse::<i32>() {
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
                if alive && pid != std::process::id() as i32 {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("pid file {} names running process {pid}", path.display()),
                    ));
                }
            }
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| io::Error::new(e.kind(), format!("pid file {}: {e}", path.display())))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl PidFile {
    /// Writes our pid over the old generation's at an online upgrade: the file names
    /// whoever serves now.
    pub fn take_over(path: &Path) -> io::Result<PidFile> {
        // Written whole and renamed, so a reader never sees it empty or half-written.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| io::Error::new(e.kind(), format!("pid file {}: {e}", path.display())))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    /// Removes the file only while it names us: after an upgrade it names the new
    /// supervisor, which the old one's exit must not undo.
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Switches a worker to the configured OS user, when running as root.
pub fn drop_privileges(user: Option<&str>) -> Result<(), String> {
    let Some(name) = user.filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let u = nix::unistd::User::from_name(name)
        .map_err(|e| format!("user {name}: {e}"))?
        .ok_or_else(|| format!("user {name} does not exist"))?;
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad user name {name}"))?;
    nix::unistd::initgroups(&cname, u.gid).map_err(|e| format!("initgroups({name}): {e}"))?;
    nix::unistd::setgid(u.gid).map_err(|e| format!("setgid({name}): {e}"))?;
    nix::unistd::setuid(u.uid).map_err(|e| format!("setuid({name}): {e}"))?;
    Ok(())
}
