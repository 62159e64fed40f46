//! Admin console commands that concern every worker: gathering rows from all of them (with a
//! deadline, so one stuck worker never holds the console), waiting for a condition in all of
//! them (PAUSE, WAIT_CLOSE), and acting for the whole pooler.

use crate::Supervisor;
use pgbouncers_worker::control::{decode_rows, AdminRequest, Command, Row, Until, What};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a gather waits for slow workers before answering without them.
const GATHER_DEADLINE: Duration = Duration::from_secs(1);

/// Who asked for a gather.
pub(crate) enum Asker {
    /// A worker's console client: rows are forwarded as they come.
    Worker { slot: usize, req: u32 },
    /// The metrics endpoint: rows are kept here.
    Metrics { conn: usize },
}

pub(crate) struct Gather {
    pub asker: Asker,
    pub waiting: BTreeSet<usize>,
    /// None for waits (PAUSE, WAIT_CLOSE): they last until every worker is done, as in
    /// PgBouncer, however long its transactions take.
    pub deadline: Option<Instant>,
    pub rows: Vec<(u8, Row)>,
}

#[derive(Default)]
pub(crate) struct Gathers {
    next: u32,
    pub(crate) open: HashMap<u32, Gather>,
}

impl Supervisor {
    /// A console command from worker `slot`.
    pub(crate) fn console_request(&mut self, slot: usize, req: u32, request: AdminRequest) {
        let done = |sup: &mut Supervisor, error: Option<String>| {
            sup.send(
                slot,
                &Command::AdminDone {
                    req,
                    error,
                    missing: Vec::new(),
                },
                None,
            );
        };
        match request {
            AdminRequest::Collect(what) => {
                self.start_gather(Asker::Worker { slot, req }, what);
            }
            AdminRequest::KillClient(id) => {
                let owner = (id & 0xff) as usize;
                let live = self.slots.get(owner).is_some_and(|s| s.pid.is_some());
                if !live {
                    return done(self, None);
                }
                let sreq = self.gathers.next;
                self.gathers.next = self.gathers.next.wrapping_add(1);
                self.gathers.open.insert(
                    sreq,
                    Gather {
                        asker: Asker::Worker { slot, req },
                        waiting: [owner].into(),
                        deadline: Some(Instant::now() + GATHER_DEADLINE),
                        rows: Vec::new(),
                    },
                );
                self.send(owner, &Command::KillClient { req: sreq, id }, None);
            }
            AdminRequest::Reload => {
                let r = self.reload_now();
                if let Err(e) = &r {
                    log::error!("RELOAD from the admin console failed, keeping the running configuration: {e}");
                }
                done(self, r.err());
            }
            AdminRequest::Pause(db) => {
                if self.holds.paused_all {
                    return done(self, Some("already suspended/paused".into()));
                }
                self.pause(db.as_deref(), true);
                // PAUSE answers once the paused pools have let every server go.
                self.start_wait(Asker::Worker { slot, req }, Until::Paused(db));
            }
            AdminRequest::Resume(db) => {
                self.pause(db.as_deref(), false);
                done(self, None);
            }
            AdminRequest::Disable(ref db) | AdminRequest::Enable(ref db) => {
                let on = matches!(request, AdminRequest::Disable(_));
                let db = db.clone();
                self.holds.disable(&db, on);
                self.broadcast(&Command::Disable { db, on });
                done(self, None);
            }
            AdminRequest::Reconnect(db) => {
                log::info!(
                    "RECONNECT {} from the admin console",
                    pgbouncers_worker::logsafe::Escaped(db.as_deref().unwrap_or("(all databases)"))
                );
                self.broadcast(&Command::Reconnect(db));
                done(self, None);
            }
            AdminRequest::WaitClose(db) => {
                self.start_wait(Asker::Worker { slot, req }, Until::Closed(db));
            }
            AdminRequest::Kill(db) => {
                log::info!(
                    "KILL {} from the admin console",
                    pgbouncers_worker::logsafe::Escaped(db.as_deref().unwrap_or("(all databases)"))
                );
                self.broadcast(&Command::Kill(db));
                done(self, None);
            }
            // As PgBouncer's plain SHUTDOWN (and SIGQUIT): exit at once, no answer. The
            // loop sees every worker gone and exits 0.
            AdminRequest::Shutdown => {
                log::info!("SHUTDOWN from the admin console: immediate shutdown");
                self.begin_stop();
                self.kill_all(nix::sys::signal::Signal::SIGKILL);
            }
            // As PgBouncer 1.23+: stop accepting, and exit once every server is released
            // (transactions end, sessions in session pooling) -- what SHUTDOWN does here.
            // PgBouncer answers SHUTDOWN before it waits; the answer goes down the worker's
            // channel ahead of the shutdown command, so the client reads it first.
            AdminRequest::ShutdownWait { clients: false } => {
                done(self, None);
                self.begin_stop();
            }
            // As SIGTERM: stop accepting, keep serving every client, exit once all left.
            AdminRequest::ShutdownWait { clients: true } => {
                done(self, None);
                self.begin_stop_as(Command::ShutdownWaitForClients);
            }
            AdminRequest::Set { key, value } => {
                let r = self.set_runtime(&key, &value);
                if let Err(e) = &r {
                    log::warn!(
                        "SET {} from the admin console failed: {}",
                        pgbouncers_worker::logsafe::Escaped(&key),
                        pgbouncers_worker::logsafe::Escaped(e)
                    );
                }
                done(self, r.err());
            }
        }
    }

    /// PAUSE (`on`) or RESUME, from the console or a signal, for every worker now and later.
    pub(crate) fn pause(&mut self, db: Option<&str>, on: bool) {
        self.holds.pause(db, on);
        let db = db.map(str::to_string);
        self.broadcast(&if on {
            Command::Pause(db)
        } else {
            Command::Resume(db)
        });
    }

    /// Asks every live worker for its rows.
    pub(crate) fn start_gather(&mut self, asker: Asker, what: What) -> u32 {
        let deadline = Some(Instant::now() + GATHER_DEADLINE);
        self.ask_all(asker, deadline, |req| Command::Collect { req, what })
    }

    /// Asks every live worker to answer once `until` holds there; no deadline.
    fn start_wait(&mut self, asker: Asker, until: Until) -> u32 {
        self.ask_all(asker, None, |req| Command::Wait {
            req,
            until: until.clone(),
        })
    }

    fn ask_all(
        &mut self,
        asker: Asker,
        deadline: Option<Instant>,
        cmd: impl Fn(u32) -> Command,
    ) -> u32 {
        let sreq = self.gathers.next;
        self.gathers.next = self.gathers.next.wrapping_add(1);
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&n| self.slots[n].pid.is_some() && self.slots[n].ctl.is_some())
            .collect();
        self.gathers.open.insert(
            sreq,
            Gather {
                asker,
                waiting: live.iter().copied().collect(),
                deadline,
                rows: Vec::new(),
            },
        );
        for n in live {
            self.send(n, &cmd(sreq), None);
        }
        self.finish_gathers(false);
        sreq
    }

    /// A worker died: waits no longer wait for it (gathers report it missing at their deadline).
    pub(crate) fn gathers_forget(&mut self, slot: usize) {
        for g in self.gathers.open.values_mut() {
            if g.deadline.is_none() {
                g.waiting.remove(&slot);
            }
        }
        self.finish_gathers(false);
    }

    /// Rows from worker `slot` for gather `sreq`.
    pub(crate) fn gather_rows(&mut self, slot: usize, sreq: u32, chunk: Vec<u8>, last: bool) {
        let Some(g) = self.gathers.open.get_mut(&sreq) else {
            return;
        };
        match &g.asker {
            Asker::Worker { slot: to, req } => {
                let (to, req) = (*to, *req);
                self.send(
                    to,
                    &Command::Rows {
                        req,
                        slot: slot as u8,
                        chunk,
                    },
                    None,
                );
            }
            Asker::Metrics { .. } => {
                if let Ok(rows) = decode_rows(&chunk) {
                    g.rows.extend(rows.into_iter().map(|r| (slot as u8, r)));
                }
            }
        }
        if last {
            if let Some(g) = self.gathers.open.get_mut(&sreq) {
                g.waiting.remove(&slot);
            }
        }
        self.finish_gathers(false);
    }

    /// Ends gathers everyone answered, and (when `overdue` checks are due) those past
    /// their deadline, naming the workers that did not answer.
    pub(crate) fn finish_gathers(&mut self, check_deadlines: bool) {
        let now = Instant::now();
        let ready: Vec<u32> = self
            .gathers
            .open
            .iter()
            .filter(|(_, g)| {
                g.waiting.is_empty() || (check_deadlines && g.deadline.is_some_and(|d| now >= d))
            })
            .map(|(k, _)| *k)
            .collect();
        for sreq in ready {
            let Some(g) = self.gathers.open.remove(&sreq) else {
                continue;
            };
            let missing: Vec<u8> = g.waiting.iter().map(|&n| n as u8).collect();
            if !missing.is_empty() {
                log::warn!("workers {missing:?} did not answer an admin request in time");
            }
            match g.asker {
                Asker::Worker { slot, req } => {
                    self.send(
                        slot,
                        &Command::AdminDone {
                            req,
                            error: None,
                            missing,
                        },
                        None,
                    );
                }
                Asker::Metrics { conn } => self.metrics_gathered(conn, g.rows, missing),
            }
        }
    }

    /// SET key = value from the console: the running config with one setting changed,
    /// validated and applied like a reload (the file is untouched; RELOAD reverts it).
    fn set_runtime(&mut self, key: &str, value: &str) -> Result<(), String> {
        let text = set_key(&self.config_text, key, value)?;
        let cfg =
            pgbouncers_worker::config::Config::from_file_text(&text).map_err(|e| e.to_string())?;
        if let Some(k) =
            pgbouncers_worker::config::restart_required_changes(&self.cfg, &cfg).first()
        {
            return Err(format!("{k} can only change with a restart"));
        }
        self.apply(text, cfg, self.userlist.clone(), self.hba.clone())?;
        log::info!(
            "SET {} = {} applied from the admin console",
            pgbouncers_worker::logsafe::Escaped(key),
            pgbouncers_worker::logsafe::Escaped(value)
        );
        Ok(())
    }
}

/// The YAML text with top-level `key` set to `value` (replacing any earlier setting).
pub(crate) fn set_key(text: &str, key: &str, value: &str) -> Result<String, String> {
    let known = pgbouncers_worker::config::Config::keys();
    if !known.contains(&key) || matches!(key, "databases" | "users") {
        return Err(format!("unknown setting {key}"));
    }
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let top_level =
            !line.starts_with([' ', '\t']) && !line.starts_with('-') && !line.trim().is_empty();
        if top_level {
            skipping = line
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    // A plain word stays a YAML scalar; anything else becomes a quoted string.
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
    let value = if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    };
    out.push_str(&format!("{key}: {value}\n"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_replaces_scalars_and_blocks() {
        let text = "listen_port: 6432\nadmin_users:\n  - a\n  - b\nquery_timeout: 5 # c\ndatabases:\n  x: {}\n";
        let out = set_key(text, "admin_users", "z").unwrap();
        assert!(!out.contains("- a"), "{out}");
        assert!(out.contains("databases:\n  x: {}"), "{out}");
        assert!(out.ends_with("admin_users: z\n"), "{out}");
        let out = set_key(text, "query_timeout", "1.5").unwrap();
        assert!(!out.contains("query_timeout: 5"));
        assert!(out.ends_with("query_timeout: 1.5\n"));
        let out = set_key(text, "server_reset_query", "it's").unwrap();
        assert!(out.ends_with("server_reset_query: 'it''s'\n"));
        assert!(set_key(text, "nonsense", "1").is_err());
        assert!(set_key(text, "databases", "1").is_err());
    }
}
