//! Cleanup beyond `Drop`: an `atexit` hook for what statics own, a whole-binary timeout, and watchdogs that outlive a killed test binary.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, Once, TryLockError};
use std::thread;
use std::time::Duration;

type Hook = Box<dyn Fn() + Send>;

static INIT: Once = Once::new();
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Seconds a whole test binary may run before it is ended (its tests fail
/// and the `atexit` cleanup runs): a hung pooler must fail CI, not eat its
/// time budget. `PGBOUNCERS_TEST_TIMEOUT`, default 1200, 0 = never.
fn binary_timeout() -> Option<Duration> {
    let secs = std::env::var("PGBOUNCERS_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1200);
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Installs the `atexit` handler and starts the binary timeout (once).
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` with no captured state.
        let rc = unsafe { libc::atexit(run_at_exit) };
        assert_eq!(rc, 0, "atexit registration failed");
        if let Some(limit) = binary_timeout() {
            thread::spawn(move || {
                thread::sleep(limit);
                eprintln!(
                    "[harness] test binary still running after {}s \
                     (PGBOUNCERS_TEST_TIMEOUT): aborting it",
                    limit.as_secs()
                );
                // `exit` runs the atexit cleanup; libtest would report nothing
                // for the hung test, so this message is the clue.
                std::process::exit(101);
            });
        }
    });
}

/// Runs `hook` when the process exits normally (statics are never dropped).
pub fn at_exit(hook: impl Fn() + Send + 'static) {
    init();
    lock(&HOOKS).push(Box::new(hook));
}

/// Remembers a live pooler process group, to SIGKILL it at exit.
pub fn register_group(pgid: i32) {
    init();
    lock(&GROUPS).push(pgid);
}

pub fn unregister_group(pgid: i32) {
    lock(&GROUPS).retain(|&g| g != pgid);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// At exit another thread may still hold a lock (the binary timeout fires
/// mid-test): wait a little, then clean up what we can rather than hang.
fn lock_at_exit<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    for _ in 0..100 {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

extern "C" fn run_at_exit() {
    // A panic must not unwind into libc.
    let _ = std::panic::catch_unwind(|| {
        // Poolers first: they hold connections to the PostgreSQL stopped next.
        if let Some(groups) = lock_at_exit(&GROUPS) {
            for &pgid in groups.iter() {
                // SAFETY: plain kill(2); a group that is gone gives ESRCH.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
        let hooks = lock_at_exit(&HOOKS).map(|mut h| std::mem::take(&mut *h));
        for hook in hooks.into_iter().flatten() {
            hook();
        }
    });
}

/// Starts `sh -c script sh <our pid> args…` detached from our stdio and in
/// its own process group (Ctrl-C on the test runner must not reach it: that
/// is one of the moments it is for). The script gets our pid as `$1` and
/// should act once `kill -0 $1` fails. Kill and reap it when the resource is
/// cleaned up normally.
pub fn spawn_watchdog(script: &str, args: &[&OsStr]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start watchdog shell: {e}"))
}

/// Stops and reaps a watchdog started by [`spawn_watchdog`].
pub fn stop_watchdog(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
