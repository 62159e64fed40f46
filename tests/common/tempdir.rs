//! A uniquely named temp directory that is removed when dropped (unless `PGBOUNCERS_TEST_KEEP=1`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Owns a directory under the temp base; `Drop` (or [`TestDir::remove`]) deletes it.
pub struct TestDir {
    path: PathBuf,
    removed: AtomicBool,
}

/// Where temp dirs go. As root the PostgreSQL data lives in here and is run as
/// the `postgres` user, which must be able to traverse every parent: `$TMPDIR`
/// may point somewhere private (e.g. under /root), /tmp is always 1777.
pub fn temp_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGBOUNCERS_TEST_TMPDIR") {
        return PathBuf::from(dir);
    }
    if super::tools::is_root() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

pub fn keep_dirs() -> bool {
    std::env::var_os("PGBOUNCERS_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

impl TestDir {
    /// Creates `<temp base>/pgbouncers-<prefix>-<pid>-<n>-<nanos>`.
    pub fn new(prefix: &str) -> TestDir {
        let base = temp_base();
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = base.join(format!(
                "pgbouncers-{prefix}-{}-{n}-{nanos:x}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => {
                    return TestDir {
                        path,
                        removed: AtomicBool::new(false),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", path.display()),
            }
        }
        panic!("cannot find a free temp dir name under {}", base.display());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the dir (creating parent dirs) and
    /// returns the absolute path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Reads a file inside the dir, lossily as UTF-8; empty if it doesn't exist.
    pub fn read_file(&self, name: &str) -> String {
        fs::read(self.path.join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Removes the dir now (idempotent). Kept if `PGBOUNCERS_TEST_KEEP` is set.
    pub fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        if keep_dirs() {
            eprintln!("[harness] keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        self.remove();
    }
}
