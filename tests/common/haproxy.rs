//! HAProxy in the foreground with a test's config, in its own process group, killed when dropped or when the test binary dies.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;

use super::tempdir::TestDir;
use super::tools::{find_tool, wait_until};
use super::{cleanup, pooler, secs};

/// What every config starts with: TCP mode and timeouts that a slow test
/// machine does not hit.
const GLOBAL_AND_DEFAULTS: &str = "\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
";

/// A running HAProxy. Killed (by its own pid) when dropped; its log is
/// printed then if the test is panicking.
pub struct HaProxy {
    child: Child,
    /// Kills HAProxy's process group if this test binary is killed.
    watchdog: Child,
    dir: TestDir,
}

impl HaProxy {
    /// Starts `haproxy -db` with [`GLOBAL_AND_DEFAULTS`] followed by
    /// `sections` (`listen`/`frontend`/`backend` blocks) and waits until
    /// something listens on every one of `ports`. Relative paths in
    /// `sections` are relative to [`HaProxy::dir`]. Panics, with HAProxy's
    /// log, if it exits or does not listen within 10 s, or if `haproxy` is
    /// not installed.
    pub fn start(sections: &str, ports: &[u16]) -> HaProxy {
        let dir = TestDir::new("haproxy");
        let cfg = dir.write_file("haproxy.cfg", &format!("{GLOBAL_AND_DEFAULTS}{sections}"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("haproxy.log"))
            .expect("haproxy log");
        let log2 = log.try_clone().expect("dup haproxy log");
        let child = Command::new(find_tool("haproxy"))
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .expect("start haproxy");
        // Its own process group (pgid = its pid): the harness's exit hook and
        // watchdog kill exactly that group if the test binary ends abruptly.
        let pid = child.id() as i32;
        cleanup::register_group(pid);
        let watchdog = cleanup::spawn_watchdog(pooler::WATCHDOG, &[OsStr::new(&pid.to_string())]);
        let mut hap = HaProxy {
            child,
            watchdog,
            dir,
        };
        // Readiness from /proc/net/tcp, not by connecting: a probe would be
        // proxied to the backend and show up in its log.
        let ready = wait_until(secs(10), || {
            let exited = matches!(hap.child.try_wait(), Ok(Some(_)));
            exited || ports.iter().all(|&p| listening(p))
        });
        let exited = matches!(hap.child.try_wait(), Ok(Some(_)));
        assert!(
            ready && !exited,
            "haproxy did not start listening on {ports:?}\n--- haproxy.cfg ---\n{}\n--- haproxy log ---\n{}",
            hap.dir.read_file("haproxy.cfg"),
            hap.log()
        );
        hap
    }

    /// What HAProxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.dir.read_file("haproxy.log")
    }

    /// Its working directory (haproxy.cfg, haproxy.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        cleanup::stop_watchdog(&mut self.watchdog);
        cleanup::unregister_group(self.child.id() as i32);
        // Our own child, by pid (Child::kill): other haproxies on this machine are not ours.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("[haproxy] log:\n{}", self.log());
        }
    }
}

/// True if a socket is listening on TCP port `port` (IPv4) in our network namespace.
pub fn listening(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let suffix = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&suffix) && f[3] == "0A"
    })
}
