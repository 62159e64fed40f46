//! The loop's side of the admin console: reading a console client's queries, running its
//! commands against this worker's pools and connections, and sending the answers.

use super::Worker;
use crate::admin::parse::{self, Cmd};
use crate::admin::session::{Asks, Session};
use crate::admin::show;
use crate::client::CState;
use crate::close::Close;
use crate::conn::Conn;
use crate::control::{decode_rows, AdminRequest, Report, Row, What};
use crate::wire::sqlstate;
use std::collections::HashMap;

/// A console command waiting for the supervisor (and maybe every worker).
pub(crate) struct Pending {
    client: (usize, u64),
    cmd: Cmd,
    rows: Vec<(u8, Row)>,
}

/// Console commands in flight: this worker's clients' requests to the supervisor, and the
/// supervisor's waits on this worker (WAIT_CLOSE, PAUSE).
#[derive(Default)]
pub(crate) struct Requests {
    next: u32,
    /// This worker's clients' commands, by request number.
    pending: HashMap<u32, Pending>,
    /// Requests that wait on this worker: (request, condition); answered when it holds.
    pub waits: Vec<(u32, crate::control::Until)>,
}

impl Worker {
    /// The worker as the SHOW tables read it.
    pub(crate) fn view(&self) -> show::View<'_> {
        show::View {
            slot: self.slot,
            now: self.now,
            cfg: &self.cfg,
            shm: &self.shm,
            predecessor: self.lineage.predecessor.as_deref(),
            conns: &self.conns,
            pools: &self.pools,
            bufs: &self.bufs,
            holds: &self.holds,
            dns: &self.dns,
            peer_cancels: &self.cancels.peers,
            passed: &self.lineage.passed,
        }
    }

    /// Lends console client `ct` with what answering it needs.
    pub(crate) fn session(&mut self, ct: usize) -> Option<Session<'_>> {
        match self.conns.get_mut(ct) {
            Some(Conn::Client(c)) => Some(Session {
                c,
                bufs: &mut self.bufs,
                cfg: &self.cfg,
            }),
            _ => None,
        }
    }

    /// Reads console queries one message at a time, until one waits for the supervisor
    /// or no whole message is left.
    pub(crate) fn console_input(&mut self, ct: usize) {
        loop {
            let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
                return;
            };
            if !matches!(c.state, CState::Console) {
                return;
            }
            let mut session = Session {
                c,
                bufs: &mut self.bufs,
                cfg: &self.cfg,
            };
            match session.next(&self.hba) {
                Asks::Wait { read_on } => {
                    // The buffer may have been full with more on the socket: edge-triggered
                    // readiness will not say so again, so read on next turn.
                    if read_on {
                        self.later.again.push(ct);
                    }
                    return;
                }
                Asks::Answered => {}
                Asks::Show { what, query } => self.console_show(ct, &what, &query),
                Asks::Forward(cmd, request) => self.console_forward(ct, cmd, request),
                Asks::Close(why) => return self.close_client(ct, why),
            }
            let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
                return;
            };
            if c.io.flush_own(&mut self.bufs).is_err() {
                return self.close_client(ct, Close::Quiet("client connection broken"));
            }
        }
    }

    /// Sends a console command on to the supervisor; the client waits for its answer.
    fn console_forward(&mut self, ct: usize, cmd: Cmd, request: AdminRequest) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let req = self.console.next;
        self.console.next = self.console.next.wrapping_add(1);
        c.set_state(CState::ConsoleWaiting { req }, self.now);
        let client = (ct, c.id);
        self.console.pending.insert(
            req,
            Pending {
                client,
                cmd,
                rows: Vec::new(),
            },
        );
        if self.has_control() {
            self.report(Report::Admin { req, request });
        } else {
            // A worker run without a supervisor (tests): only its own rows exist.
            if let AdminRequest::Collect(what) = request {
                let rows = self.view().collect(what);
                if let Some(p) = self.console.pending.get_mut(&req) {
                    p.rows = rows.into_iter().map(|r| (self.slot as u8, r)).collect();
                }
            }
            self.console_finished(req, None, Vec::new());
        }
    }

    /// Rows from one worker for a request of ours.
    pub(crate) fn console_rows(&mut self, req: u32, slot: u8, chunk: &[u8]) {
        let Some(p) = self.console.pending.get_mut(&req) else {
            return;
        };
        match decode_rows(chunk) {
            Ok(rows) => p.rows.extend(rows.into_iter().map(|r| (slot, r))),
            Err(e) => log::warn!("worker {}: bad rows from worker {slot}: {}", self.slot, e.0),
        }
    }

    /// The supervisor finished a request: answer the client.
    pub(crate) fn console_finished(&mut self, req: u32, error: Option<String>, missing: Vec<u8>) {
        let Some(p) = self.console.pending.remove(&req) else {
            return;
        };
        let (ct, id) = p.client;
        if self.client(ct).is_none_or(|c| c.id != id) {
            return;
        }
        let rows = p.rows.len();
        let table = match (&p.cmd, &error) {
            (Cmd::Show(what), None) => Some(self.view().collected(what, p.rows)),
            _ => None,
        };
        let now = self.now;
        let Some(mut session) = self.session(ct) else {
            return;
        };
        session.c.set_state(CState::Console, now);
        session.finished(p.cmd, error, &missing, rows, table);
        // Flushed, and queries that arrived while this one waited read, later in this
        // pass, as any idle client's.
        self.later.again.push(ct);
    }

    /// The client of pending request `req` left: forget the request.
    pub(crate) fn console_forget(&mut self, req: u32) {
        self.console.pending.remove(&req);
    }

    /// The supervisor asks for this worker's rows.
    pub(crate) fn console_collect(&mut self, req: u32, what: What) {
        let rows = self.view().collect(what);
        self.send_rows(req, &rows);
    }

    /// Sends rows to the supervisor in chunks that fit a control message.
    pub(crate) fn send_rows(&mut self, req: u32, rows: &[Row]) {
        let mut chunk = Vec::new();
        for row in rows {
            let mut one = Vec::new();
            crate::control::encode_rows(std::slice::from_ref(row), &mut one);
            if !chunk.is_empty() && chunk.len() + one.len() > crate::control::ROW_CHUNK {
                self.report(Report::Rows {
                    req,
                    chunk: std::mem::take(&mut chunk),
                    last: false,
                });
            }
            chunk.extend_from_slice(&one);
        }
        self.report(Report::Rows {
            req,
            chunk,
            last: true,
        });
    }

    /// KILL: closes every client and server of a database (of all when None).
    pub(crate) fn kill_db(&mut self, db: Option<&str>) {
        let pools: Vec<usize> = (0..self.pools.list.len())
            .filter(|&p| db.is_none_or(|d| self.pools.get(p).db == d))
            .collect();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for (t, c) in self.conns.iter() {
            match c {
                Conn::Client(c) if c.pool().is_some_and(|p| pools.contains(&p)) => clients.push(t),
                Conn::Server(s) if pools.contains(&s.pool) => servers.push(t),
                _ => {}
            }
        }
        for t in clients {
            self.close_client(
                t,
                Close::Fatal(sqlstate::ADMIN_SHUTDOWN, "database killed by admin".into()),
            );
        }
        for t in servers {
            self.remove_server(t, "killed by admin");
        }
    }

    /// KILL_CLIENT: true when the client was here.
    pub(crate) fn kill_client(&mut self, id: u32) -> bool {
        let found = self.conns.iter().find_map(|(t, c)| match c {
            Conn::Client(c) if c.id == u64::from(id) => Some(t),
            _ => None,
        });
        match found {
            Some(t) => {
                self.close_client(
                    t,
                    Close::Fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "admin forced disconnect".into(),
                    ),
                );
                true
            }
            None => false,
        }
    }

    /// SHOW <what>: answered here, or after collecting rows from every worker.
    pub(crate) fn console_show(&mut self, ct: usize, what: &str, query: &str) {
        if matches!(what, "stats" | "stats_totals" | "stats_averages" | "totals") {
            // This worker's own counters as of now; the others' are at most one loop tick
            // (200 ms) old: each publishes its counters to shared memory on every tick.
            self.stats.flush(&self.shm, self.slot, &self.pools.totals());
        }
        let answer = self.view().show(what);
        match answer {
            show::Answer::Collect(w) => {
                let cmd = parse::Cmd::Show(what.to_string());
                self.console_forward(ct, cmd, crate::control::AdminRequest::Collect(w));
            }
            show::Answer::Table(table) => {
                if let Some(mut s) = self.session(ct) {
                    s.table(&table);
                }
            }
            show::Answer::Help => {
                if let Some(mut s) = self.session(ct) {
                    s.help();
                }
            }
            show::Answer::Unknown => {
                if let Some(mut s) = self.session(ct) {
                    s.error(&format!("invalid command '{query}', use SHOW HELP;"));
                }
            }
        }
    }
}
