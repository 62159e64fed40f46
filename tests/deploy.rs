//! The reference deployment of docs/DEPLOY.md, as scripts/cluster.sh starts it: HAProxy, three peered pooler hosts, a primary and a pg_basebackup standby; pgbench through it before and after a switchover.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The cluster script with this test's ports and directory; `down` when dropped.
struct Cluster {
    dir: TestDir,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = TestDir::new("cluster");
        let env = vec![
            ("CL_DIR", dir.path().join("c").display().to_string()),
            ("CL_PORT", free_port().to_string()),
            ("CL_POOLER_PORT", free_port().to_string()),
            ("CL_PG_PORT", free_port().to_string()),
            ("CL_METRICS_PORT", free_port().to_string()),
            ("CL_BIN", env!("CARGO_BIN_EXE_pgbouncers").to_string()),
        ];
        Cluster { dir, env }
    }

    fn var(&self, key: &str) -> &str {
        &self.env.iter().find(|(k, _)| *k == key).unwrap().1
    }

    /// Runs `scripts/cluster.sh args...`; panics with its output (and the pooler logs) when it fails.
    fn run(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
        let mut cmd = Command::new(script);
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = run_cmd(cmd, None, secs(300));
        assert!(
            out.success(),
            "cluster.sh {args:?}: {out}\n{}",
            self.pooler_logs()
        );
        format!("{}{}", out.stdout, out.stderr)
    }

    fn pooler_logs(&self) -> String {
        let dir = PathBuf::from(self.var("CL_DIR"));
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(dir.join(format!("pooler-{i}.log")))
                    .unwrap_or_default();
                format!("--- pooler {i} ---\n{}\n", pg::tail(&log, 30))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
        let mut cmd = Command::new(script);
        cmd.arg("down").envs(self.env.iter().map(|(k, v)| (k, v)));
        let _ = run_cmd(cmd, None, secs(60));
        let _ = &self.dir;
    }
}

/// GET /metrics over plain HTTP/1.0; the whole response.
fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The numbers pgbench printed for each run: (transactions processed, failed).
fn pgbench_runs(out: &str) -> Vec<(u64, u64)> {
    let num = |l: &str| -> u64 {
        let v = l.split(':').nth(1).unwrap_or("").trim();
        v.split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(0)
    };
    let processed: Vec<u64> = (out.lines())
        .filter(|l| l.contains("number of transactions actually processed"))
        .map(|l| num(l.split('/').next().unwrap_or(l)))
        .collect();
    let failed: Vec<u64> = (out.lines())
        .filter(|l| l.contains("number of failed transactions"))
        .map(num)
        .collect();
    processed.into_iter().zip(failed).collect()
}

#[test]
fn the_reference_deployment_serves_pgbench_before_and_after_a_switchover() {
    let c = Cluster::new();
    let up = c.run(&["up"]);
    eprintln!("{up}");
    let runs = pgbench_runs(&up);
    assert_eq!(runs.len(), 2, "a write run and a read run:\n{up}");
    for (processed, failed) in &runs {
        assert!(*processed > 0 && *failed == 0, "{runs:?}\n{up}");
    }
    assert!(!up.contains("aborted"), "{up}");

    // Every pooler host serves metrics, and peers are configured on each.
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let addr = format!("{ip}:{}", c.var("CL_METRICS_PORT"));
        let body = http_get(&addr);
        assert!(body.contains("\npgbouncers_up 1"), "{addr}: {body}");
    }

    let switch = c.run(&["switchover"]);
    eprintln!("{switch}");
    assert!(
        switch.contains("in recovery: false"),
        "writes must reach the promoted standby:\n{switch}"
    );
    let after = c.run(&["bench", "3"]);
    eprintln!("{after}");
    let runs = pgbench_runs(&after);
    assert_eq!(runs.len(), 2, "{after}");
    for (processed, failed) in &runs {
        assert!(*processed > 0 && *failed == 0, "{runs:?}\n{after}");
    }
}
