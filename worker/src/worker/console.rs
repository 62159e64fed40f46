//! The loop's side of the admin console: reading a console client's queries, running its
//! commands against this worker's pools and connections, and sending the answers.

use super::Worker;
use crate::admin::parse::{self, Cmd};
use crate::admin::role::{is_console, Role};
use crate::admin::{console_db_arg, set_refused, show, FAKE_PARAMS, MAX_QUERY};
use crate::client::CState;
use crate::close::Close;
use crate::conn::Conn;
use crate::control::{decode_rows, AdminRequest, Report, Row, What};
use crate::logsafe::Escaped;
use crate::wire::write::{self, Severity};
use crate::wire::{frame, sqlstate};
use std::collections::HashMap;

/// A console command waiting for the supervisor (and maybe every worker).
pub(crate) struct Pending {
    client: (usize, u64),
    cmd: Cmd,
    rows: Vec<(u8, Row)>,
}

/// Console requests in flight, by request number.
#[derive(Default)]
pub(crate) struct Requests {
    next: u32,
    pending: HashMap<u32, Pending>,
}

impl Worker {
    /// The worker as the SHOW tables read it.
    pub(crate) fn view(&self) -> show::View<'_> {
        show::View {
            slot: self.slot,
            now: self.now,
            cfg: &self.cfg,
            shm: &self.shm,
            predecessor: self.predecessor.as_deref(),
            conns: &self.conns,
            pools: &self.pools,
            bufs: &self.bufs,
            holds: &self.holds,
            dns: &self.dns,
            peer_cancels: &self.peer_cancels,
            passed: &self.passed,
        }
    }

    /// Greets an authenticated console user the way PgBouncer's console does.
    pub(crate) fn console_welcome(&mut self, ct: usize) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let out = c.io.out(&mut self.bufs);
        write::auth_ok(out);
        let version = format!("{}/bouncer", env!("CARGO_PKG_VERSION"));
        for (k, v) in [
            ("server_version", version.as_str()),
            ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "GMT"),
            ("standard_conforming_strings", "on"),
            ("is_superuser", "on"),
        ] {
            write::parameter_status(out, k, v);
        }
        write::backend_key_data(out, 0, 0);
        write::ready_for_query(out, crate::relay::TxStatus::Idle);
        c.set_state(CState::Console, self.now);
        if self.cfg.log_connections {
            log::info!("{}: console login worker={}", c.name(), self.slot);
        }
    }

    /// Reads console queries one message at a time.
    pub(crate) fn console_input(&mut self, ct: usize) {
        loop {
            let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
                return;
            };
            if !matches!(c.state, CState::Console) {
                return;
            }
            let (tag, body) = match frame::message(c.io.unread(), MAX_QUERY) {
                Ok(Some((h, body))) => (h.tag, body.to_vec()),
                Ok(None) => {
                    if let Ok(Some(h)) = frame::header(c.io.unread(), MAX_QUERY) {
                        c.io.make_room(h.total, &mut self.bufs);
                    }
                    // The buffer may have been full with more on the socket: edge-triggered
                    // readiness will not say so again, so read on next turn.
                    if c.io.is_readable() {
                        self.again.push(ct);
                    }
                    return;
                }
                Err(e) => {
                    return self.close_client(
                        ct,
                        Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
                    )
                }
            };
            c.io.consume(body.len() + 5);
            match tag {
                b'Q' => {
                    let text = body.strip_suffix(&[0]).unwrap_or(&body);
                    let text = String::from_utf8_lossy(text).into_owned();
                    self.console_query(ct, &text);
                }
                b'X' => return self.close_client(ct, Close::Quiet("client close request")),
                b'P' | b'B' | b'E' => {
                    self.console_error(
                        ct,
                        "extended query protocol not supported by admin console",
                    );
                    return self.close_client(
                        ct,
                        Close::Fatal(sqlstate::PROTOCOL_VIOLATION, "bad packet".into()),
                    );
                }
                other => {
                    let msg = format!("unsupported packet type for admin console: {other}");
                    self.console_error(ct, &msg);
                    return self.close_client(
                        ct,
                        Close::Fatal(sqlstate::PROTOCOL_VIOLATION, "bad packet".into()),
                    );
                }
            }
            self.flush_console(ct);
        }
    }

    fn flush_console(&mut self, ct: usize) {
        if let Some(Conn::Client(c)) = self.conns.get_mut(ct) {
            if c.io.flush_own(&mut self.bufs).is_err() {
                self.close_client(ct, Close::Quiet("client connection broken"));
            }
        }
    }

    /// An ERROR that leaves the console usable, as PgBouncer's console errors do.
    fn console_error(&mut self, ct: usize, msg: &str) {
        self.console_error_code(ct, sqlstate::PROTOCOL_VIOLATION, msg);
    }

    fn console_error_code(&mut self, ct: usize, code: &str, msg: &str) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if self.cfg.log_pooler_errors {
            // The message can quote the query (an invalid command, a database name).
            log::info!("{}: console error: {}", c.name(), Escaped(msg));
        }
        let out = c.io.out(&mut self.bufs);
        write::error_response(out, Severity::Error, code, msg);
        write::ready_for_query(out, crate::relay::TxStatus::Idle);
    }

    /// A command tag and ReadyForQuery.
    fn console_done(&mut self, ct: usize, tag: &str) {
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        let out = c.io.out(&mut self.bufs);
        write::command_complete(out, tag);
        write::ready_for_query(out, crate::relay::TxStatus::Idle);
    }

    fn console_query(&mut self, ct: usize, text: &str) {
        let Some(Conn::Client(c)) = self.conns.get(ct) else {
            return;
        };
        let role = c.admin.unwrap_or(Role::Stats);
        let cmd = match parse::parse(text) {
            Ok(cmd) => cmd,
            Err(parse::ParseError::Invalid) => {
                let msg = format!("invalid command '{text}', use SHOW HELP;");
                return self.console_error(ct, &msg);
            }
            Err(parse::ParseError::BadArguments) => return self.console_error(ct, "bad arguments"),
        };
        // Settings drivers ask for get canned answers, for everyone.
        match &cmd {
            Cmd::Show(name) => {
                if let Some((k, v)) = FAKE_PARAMS
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                {
                    let table =
                        show::Table::new(&[(k, show::Ty::Text)], vec![vec![Some(v.to_string())]]);
                    return self.console_table(ct, &table);
                }
            }
            Cmd::Set { key, .. }
                if FAKE_PARAMS.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) =>
            {
                let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
                    return;
                };
                let out = c.io.out(&mut self.bufs);
                write::error_response(out, Severity::Notice, "00000", "SET ignored");
                return self.console_done(ct, "SET");
            }
            _ => {}
        }
        if role == Role::Stats && !matches!(cmd, Cmd::Show(_)) {
            return self.console_error(ct, "admin access needed");
        }
        match cmd {
            Cmd::Show(what) => self.console_show(ct, &what, text),
            Cmd::Reload => self.console_forward(ct, cmd.clone(), AdminRequest::Reload),
            Cmd::Pause(ref db) | Cmd::Resume(ref db) | Cmd::Kill(ref db) => {
                let verb = match cmd {
                    Cmd::Pause(_) => "pause",
                    Cmd::Resume(_) => "resume",
                    _ => "kill",
                };
                if let Some(d) = db {
                    if is_console(d) {
                        return self.console_error(ct, &format!("cannot {verb} admin db: {d}"));
                    }
                    if self.cfg.database_entry(d).is_none() {
                        return self.console_error(ct, &format!("no such database: {d}"));
                    }
                }
                let req = match &cmd {
                    Cmd::Pause(d) => AdminRequest::Pause(d.clone()),
                    Cmd::Resume(d) => AdminRequest::Resume(d.clone()),
                    _ => AdminRequest::Kill(db.clone()),
                };
                self.console_forward(ct, cmd.clone(), req)
            }
            Cmd::KillClient(ref id) => match id.parse::<u32>() {
                Ok(n) => self.console_forward(ct, cmd.clone(), AdminRequest::KillClient(n)),
                Err(_) => self.console_error(ct, "invalid client pointer supplied"),
            },
            Cmd::Shutdown => {
                log::info!("SHUTDOWN from the admin console");
                self.console_forward(ct, cmd.clone(), AdminRequest::Shutdown)
            }
            Cmd::ShutdownWaitForServers | Cmd::ShutdownWaitForClients => {
                let clients = matches!(cmd, Cmd::ShutdownWaitForClients);
                let mode = if clients {
                    "WAIT_FOR_CLIENTS"
                } else {
                    "WAIT_FOR_SERVERS"
                };
                log::info!("SHUTDOWN {mode} from the admin console");
                self.console_forward(ct, cmd.clone(), AdminRequest::ShutdownWait { clients })
            }
            Cmd::Set { ref key, ref value } => {
                if let Some(why) = set_refused(&self.hba, key, value) {
                    return self.console_error(ct, &format!("SET failed: {why}"));
                }
                let req = AdminRequest::Set {
                    key: key.clone(),
                    value: value.clone(),
                };
                self.console_forward(ct, cmd.clone(), req)
            }
            Cmd::Disable(ref db) | Cmd::Enable(ref db) => {
                let on = matches!(cmd, Cmd::Disable(_));
                let verb = if on { "disable" } else { "enable" };
                if db.is_empty() {
                    return self.console_error(ct, "a database is required");
                }
                if let Err(msg) = console_db_arg(&self.cfg, db, verb) {
                    return self.console_error(ct, &msg);
                }
                log::info!(
                    "{} '{}' from the admin console",
                    verb.to_ascii_uppercase(),
                    Escaped(db)
                );
                let req = if on {
                    AdminRequest::Disable(db.clone())
                } else {
                    AdminRequest::Enable(db.clone())
                };
                self.console_forward(ct, cmd.clone(), req)
            }
            Cmd::Reconnect(ref db) | Cmd::WaitClose(ref db) => {
                let reconnect = matches!(cmd, Cmd::Reconnect(_));
                if let Some(d) = db {
                    let verb = if reconnect { "reconnect" } else { "wait in" };
                    if let Err(msg) = console_db_arg(&self.cfg, d, verb) {
                        return self.console_error(ct, &msg);
                    }
                }
                let req = if reconnect {
                    AdminRequest::Reconnect(db.clone())
                } else {
                    AdminRequest::WaitClose(db.clone())
                };
                self.console_forward(ct, cmd.clone(), req)
            }
            Cmd::Suspend => self.console_error(
                ct,
                "SUSPEND is not supported by pgbouncers: for an online upgrade run `pgbouncers \
                 --upgrade -c CONFIG`, which hands the listening sockets and idle clients to \
                 the new binary without refusing a connection; PAUSE and RESUME stop and \
                 restart traffic",
            ),
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
        let Some(Conn::Client(c)) = self.conns.get_mut(ct) else {
            return;
        };
        if c.id != id {
            return;
        }
        c.set_state(CState::Console, self.now);
        for slot in &missing {
            let msg = format!("worker {slot} did not answer in time; its rows are missing");
            write::error_response(c.io.out(&mut self.bufs), Severity::Notice, "01000", &msg);
        }
        match (p.cmd, error) {
            (Cmd::Reload, Some(_)) => self.console_error_code(
                ct,
                "F0000",
                "RELOAD failed, see logs for additional details",
            ),
            (Cmd::Set { .. }, Some(e)) => self.console_error(ct, &format!("SET failed: {e}")),
            (_, Some(e)) => self.console_error(ct, &e),
            (Cmd::Show(what), None) => self.console_show_rows(ct, &what, p.rows),
            (Cmd::KillClient(_), None) if p.rows.is_empty() => {
                self.console_error(ct, "client not found")
            }
            (Cmd::Set { key, value }, None) => self.console_done(ct, &format!("SET {key}={value}")),
            (cmd, None) => {
                let tag = match cmd {
                    Cmd::Reload => "RELOAD",
                    Cmd::Pause(_) => "PAUSE",
                    Cmd::Resume(_) => "RESUME",
                    Cmd::Kill(_) => "KILL",
                    Cmd::KillClient(_) => "KILL_CLIENT",
                    Cmd::Disable(_) => "DISABLE",
                    Cmd::Enable(_) => "ENABLE",
                    Cmd::Reconnect(_) => "RECONNECT",
                    Cmd::WaitClose(_) => "WAIT_CLOSE",
                    _ => "SHUTDOWN",
                };
                self.console_done(ct, tag)
            }
        }
        self.flush_console(ct);
        // Queries that arrived while this one waited: read later in this pass, as any
        // idle client's.
        self.again.push(ct);
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

    pub(crate) fn console_table(&mut self, ct: usize, table: &show::Table) {
        if let Some(Conn::Client(c)) = self.conns.get_mut(ct) {
            table.write(c.io.out(&mut self.bufs));
        }
    }

    /// SHOW <what>: answered here, or after collecting rows from every worker.
    pub(crate) fn console_show(&mut self, ct: usize, what: &str, query: &str) {
        if matches!(what, "stats" | "stats_totals" | "stats_averages" | "totals") {
            // This worker's own counters as of now; the others' are at most one loop tick
            // (200 ms) old: each publishes its counters to shared memory on every tick.
            self.stats.flush(&self.shm, self.slot, &self.pools.totals());
        }
        match self.view().show(what) {
            show::Answer::Table(table) => self.console_table(ct, &table),
            show::Answer::Help => {
                if let Some(Conn::Client(c)) = self.conns.get_mut(ct) {
                    show::help(c.io.out(&mut self.bufs));
                }
            }
            show::Answer::Collect(w) => {
                let cmd = parse::Cmd::Show(what.to_string());
                self.console_forward(ct, cmd, crate::control::AdminRequest::Collect(w));
            }
            show::Answer::Unknown => {
                let msg = format!("invalid command '{query}', use SHOW HELP;");
                self.console_error(ct, &msg);
            }
        }
    }

    /// The answer to a SHOW whose rows came from every worker.
    pub(crate) fn console_show_rows(&mut self, ct: usize, what: &str, rows: Vec<(u8, Row)>) {
        let table = self.view().collected(what, rows);
        self.console_table(ct, &table);
    }
}
