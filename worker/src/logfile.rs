//! The log file: opened at start, reopened on every reload (so logrotate's rename-then-SIGHUP
//! works) and switched when a reload names another one; stderr while there is none.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The path and the file it names. Each process (supervisor, worker) has its own and is
/// single-threaded, so the lock is never contended; it only makes the static sound.
static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<(PathBuf, File)>> {
    FILE.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `-q`: nothing goes to stderr; lines with no logfile to go to are dropped.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops logging to stderr for good (PgBouncer's `-q`); a logfile is still written.
pub fn quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Opens `path` for appending and returns the writer to give the logger.
pub fn open(path: &str) -> io::Result<LogWriter> {
    let file = open_append(Path::new(path))?;
    *lock() = Some((PathBuf::from(path), file));
    Ok(LogWriter)
}

/// Follows the `logfile` setting of a configuration just applied: another path is opened
/// and used from now on, none means stderr. A path that cannot be opened keeps the old
/// destination, with a warning in it.
pub fn follow(path: Option<&str>) {
    let want = path.filter(|p| !p.is_empty()).map(PathBuf::from);
    let current = lock().as_ref().map(|(p, _)| p.clone());
    if want == current {
        return;
    }
    let Some(want) = want else {
        log::info!("logfile unset: logging to stderr from now on");
        *lock() = None;
        return;
    };
    match open_append(&want) {
        Ok(file) => {
            log::info!("logging to {} from now on", want.display());
            *lock() = Some((want, file));
        }
        Err(e) => log::warn!(
            "cannot open logfile {}: {e}; logging stays here",
            want.display()
        ),
    }
}

/// Opens the log file's path again, so lines go to the new file once the old one was
/// renamed. If it cannot be opened, logging goes on into the old file.
pub fn reopen() {
    let failed = {
        let mut guard = lock();
        match guard.as_mut() {
            Some((path, file)) => match open_append(path) {
                Ok(new) => {
                    *file = new;
                    None
                }
                Err(e) => Some(format!("cannot reopen logfile {}: {e}", path.display())),
            },
            None => None,
        }
    };
    // Logged after the lock is released: the logger writes through it.
    if let Some(msg) = failed {
        log::warn!("{msg}");
    }
}

/// The logger's target. Each record reaches it as one write to an O_APPEND file (or
/// stderr), so processes never interleave within a line. Write errors (a full disk) lose
/// lines, never service.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match lock().as_mut() {
            Some((_, file)) => file.write(buf),
            None if QUIET.load(std::sync::atomic::Ordering::Relaxed) => Ok(buf.len()),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
