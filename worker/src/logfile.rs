//! The log file: opened at start and reopened on every reload, so logrotate's rename-then-SIGHUP works.

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

/// Opens `path` for appending and returns the writer to give the logger.
pub fn open(path: &str) -> io::Result<LogWriter> {
    let file = open_append(Path::new(path))?;
    *lock() = Some((PathBuf::from(path), file));
    Ok(LogWriter)
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

/// The logger's target. Each record reaches it as one write to an O_APPEND file, so
/// processes never interleave within a line. Write errors (a full disk) lose lines, never
/// service.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match lock().as_mut() {
            Some((_, file)) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
