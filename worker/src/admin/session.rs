//! One console client's conversation: its greeting, its queries read and checked, and the
//! answers written; what needs the worker's connections or the supervisor goes back to the
//! loop as an `Asks`.

use super::parse::{self, Cmd, ParseError};
use super::role::{is_console, Role};
use super::{console_db_arg, set_refused, show, FAKE_PARAMS, MAX_QUERY};
use crate::buf::BufPool;
use crate::client::{CState, Client};
use crate::close::Close;
use crate::config::Config;
use crate::control::AdminRequest;
use crate::logsafe::Escaped;
use crate::relay::TxStatus;
use crate::wire::write::{self, Severity};
use crate::wire::{frame, sqlstate};
use std::time::Instant;

/// What a console client's next message leaves for the loop.
pub(crate) enum Asks {
    /// No whole message is buffered yet; `read_on`: the socket may hold more that no
    /// event will announce (the buffer was full), so read again next turn.
    Wait { read_on: bool },
    /// Answered here: flush, and read the next one.
    Answered,
    /// SHOW `what` (the query as typed, for the error): the worker's view answers it.
    Show { what: String, query: String },
    /// The supervisor runs it; the client waits for the answer.
    Forward(Cmd, AdminRequest),
    /// Close the client.
    Close(Close),
}

/// A console client lent with what writing to it needs, for one step.
pub(crate) struct Session<'a> {
    pub c: &'a mut Client,
    pub bufs: &'a mut BufPool,
    pub cfg: &'a Config,
}

impl Session<'_> {
    /// Greets an authenticated console user the way PgBouncer's console does.
    pub fn welcome(&mut self, now: Instant, slot: usize) {
        let out = self.c.io.out(self.bufs);
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
        write::ready_for_query(out, TxStatus::Idle);
        self.c.set_state(CState::Console, now);
        if self.cfg.log_connections {
            log::info!("{}: console login worker={slot}", self.c.name());
        }
    }

    /// Reads the next console message, if a whole one is buffered, and answers what can
    /// be answered without the worker. `hba`: the loaded rules, which some SETs need.
    pub fn next(&mut self, hba: &crate::auth::hba::Hba) -> Asks {
        let (tag, body) = match frame::message(self.c.io.unread(), MAX_QUERY) {
            Ok(Some((h, body))) => (h.tag, body.to_vec()),
            Ok(None) => {
                if let Ok(Some(h)) = frame::header(self.c.io.unread(), MAX_QUERY) {
                    self.c.io.make_room(h.total, self.bufs);
                }
                return Asks::Wait {
                    read_on: self.c.io.is_readable(),
                };
            }
            Err(e) => {
                return Asks::Close(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
            }
        };
        self.c.io.consume(body.len() + 5);
        let msg = match tag {
            b'Q' => {
                let text = body.strip_suffix(&[0]).unwrap_or(&body);
                return self.query(&String::from_utf8_lossy(text), hba);
            }
            b'X' => return Asks::Close(Close::Quiet("client close request")),
            b'P' | b'B' | b'E' => {
                "extended query protocol not supported by admin console".to_string()
            }
            other => format!("unsupported packet type for admin console: {other}"),
        };
        self.error(&msg);
        Asks::Close(Close::Fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "bad packet".into(),
        ))
    }

    /// One simple-protocol query: parsed, checked against the role and the config, and
    /// answered here when it can be.
    fn query(&mut self, text: &str, hba: &crate::auth::hba::Hba) -> Asks {
        let role = self.c.admin.unwrap_or(Role::Stats);
        let cmd = match parse::parse(text) {
            Ok(cmd) => cmd,
            Err(ParseError::Invalid) => {
                return self.refuse(&format!("invalid command '{text}', use SHOW HELP;"))
            }
            Err(ParseError::BadArguments) => return self.refuse("bad arguments"),
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
                    self.table(&table);
                    return Asks::Answered;
                }
            }
            Cmd::Set { key, .. }
                if FAKE_PARAMS.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) =>
            {
                let out = self.c.io.out(self.bufs);
                write::error_response(out, Severity::Notice, "00000", "SET ignored");
                self.done("SET");
                return Asks::Answered;
            }
            _ => {}
        }
        if role == Role::Stats && !matches!(cmd, Cmd::Show(_)) {
            return self.refuse("admin access needed");
        }
        let request = match &cmd {
            Cmd::Show(what) => {
                return Asks::Show {
                    what: what.clone(),
                    query: text.to_string(),
                }
            }
            Cmd::Reload => AdminRequest::Reload,
            Cmd::Pause(db) | Cmd::Resume(db) | Cmd::Kill(db) => {
                let verb = match cmd {
                    Cmd::Pause(_) => "pause",
                    Cmd::Resume(_) => "resume",
                    _ => "kill",
                };
                if let Some(d) = db {
                    if is_console(d) {
                        return self.refuse(&format!("cannot {verb} admin db: {d}"));
                    }
                    if self.cfg.database_entry(d).is_none() {
                        return self.refuse(&format!("no such database: {d}"));
                    }
                }
                match &cmd {
                    Cmd::Pause(d) => AdminRequest::Pause(d.clone()),
                    Cmd::Resume(d) => AdminRequest::Resume(d.clone()),
                    _ => AdminRequest::Kill(db.clone()),
                }
            }
            Cmd::KillClient(id) => match id.parse::<u32>() {
                Ok(n) => AdminRequest::KillClient(n),
                Err(_) => return self.refuse("invalid client pointer supplied"),
            },
            Cmd::Shutdown => {
                log::info!("SHUTDOWN from the admin console");
                AdminRequest::Shutdown
            }
            Cmd::ShutdownWaitForServers | Cmd::ShutdownWaitForClients => {
                let clients = matches!(cmd, Cmd::ShutdownWaitForClients);
                let mode = if clients {
                    "WAIT_FOR_CLIENTS"
                } else {
                    "WAIT_FOR_SERVERS"
                };
                log::info!("SHUTDOWN {mode} from the admin console");
                AdminRequest::ShutdownWait { clients }
            }
            Cmd::Set { key, value } => {
                if let Some(why) = set_refused(hba, key, value) {
                    return self.refuse(&format!("SET failed: {why}"));
                }
                AdminRequest::Set {
                    key: key.clone(),
                    value: value.clone(),
                }
            }
            Cmd::Disable(db) | Cmd::Enable(db) => {
                let on = matches!(cmd, Cmd::Disable(_));
                let verb = if on { "disable" } else { "enable" };
                if db.is_empty() {
                    return self.refuse("a database is required");
                }
                if let Err(msg) = console_db_arg(self.cfg, db, verb) {
                    return self.refuse(&msg);
                }
                log::info!(
                    "{} '{}' from the admin console",
                    verb.to_ascii_uppercase(),
                    Escaped(db)
                );
                if on {
                    AdminRequest::Disable(db.clone())
                } else {
                    AdminRequest::Enable(db.clone())
                }
            }
            Cmd::Reconnect(db) | Cmd::WaitClose(db) => {
                let reconnect = matches!(cmd, Cmd::Reconnect(_));
                if let Some(d) = db {
                    let verb = if reconnect { "reconnect" } else { "wait in" };
                    if let Err(msg) = console_db_arg(self.cfg, d, verb) {
                        return self.refuse(&msg);
                    }
                }
                if reconnect {
                    AdminRequest::Reconnect(db.clone())
                } else {
                    AdminRequest::WaitClose(db.clone())
                }
            }
            Cmd::Suspend => {
                return self.refuse(
                    "SUSPEND is not supported by pgbouncers: for an online upgrade run \
                     `pgbouncers --upgrade -c CONFIG`, which hands the listening sockets and \
                     idle clients to the new binary without refusing a connection; PAUSE and \
                     RESUME stop and restart traffic",
                )
            }
        };
        Asks::Forward(cmd, request)
    }

    /// The answer to a command the supervisor ran: `error` from it, `missing` the workers
    /// that did not answer in time, `table` a SHOW's rows from every worker.
    pub fn finished(
        &mut self,
        cmd: Cmd,
        error: Option<String>,
        missing: &[u8],
        rows: usize,
        table: Option<show::Table>,
    ) {
        for slot in missing {
            let msg = format!("worker {slot} did not answer in time; its rows are missing");
            let out = self.c.io.out(self.bufs);
            write::error_response(out, Severity::Notice, "01000", &msg);
        }
        match (cmd, error) {
            (Cmd::Reload, Some(_)) => {
                self.error_code("F0000", "RELOAD failed, see logs for additional details")
            }
            (Cmd::Set { .. }, Some(e)) => self.error(&format!("SET failed: {e}")),
            (_, Some(e)) => self.error(&e),
            (Cmd::Show(_), None) => {
                if let Some(table) = table {
                    self.table(&table);
                }
            }
            (Cmd::KillClient(_), None) if rows == 0 => self.error("client not found"),
            (Cmd::Set { key, value }, None) => self.done(&format!("SET {key}={value}")),
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
                self.done(tag)
            }
        }
    }

    /// An ERROR that leaves the console usable, as PgBouncer's console errors do.
    pub fn error(&mut self, msg: &str) {
        self.error_code(sqlstate::PROTOCOL_VIOLATION, msg);
    }

    fn error_code(&mut self, code: &str, msg: &str) {
        if self.cfg.log_pooler_errors {
            // The message can quote the query (an invalid command, a database name).
            log::info!("{}: console error: {}", self.c.name(), Escaped(msg));
        }
        let out = self.c.io.out(self.bufs);
        write::error_response(out, Severity::Error, code, msg);
        write::ready_for_query(out, TxStatus::Idle);
    }

    /// `error`, as the query's whole answer.
    fn refuse(&mut self, msg: &str) -> Asks {
        self.error(msg);
        Asks::Answered
    }

    /// A command tag and ReadyForQuery.
    fn done(&mut self, tag: &str) {
        let out = self.c.io.out(self.bufs);
        write::command_complete(out, tag);
        write::ready_for_query(out, TxStatus::Idle);
    }

    /// A SHOW's rows, tag and ReadyForQuery.
    pub fn table(&mut self, table: &show::Table) {
        table.write(self.c.io.out(self.bufs));
    }

    /// SHOW HELP's notices, tag and ReadyForQuery.
    pub fn help(&mut self) {
        show::help(self.c.io.out(self.bufs));
    }
}

/// A console session driven over in-memory pipes: no socket, no loop, no supervisor.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hba::Hba;
    use crate::stream::memory::{End, Shared};
    use crate::stream::{Sock, Stream};
    use crate::wire::fields::ErrorFields;

    struct Console {
        c: Client,
        c_in: Shared,
        c_out: Shared,
        cfg: Config,
        bufs: BufPool,
        hba: Hba,
    }

    impl Console {
        /// A console user with `role`, logged in.
        fn new(role: Role) -> Console {
            let (end, c_in, c_out) = End::new();
            let io = Stream::accepted(Sock::Memory(end));
            let mut c = Client::new(1, io, CState::Console, None, Instant::now());
            c.admin = Some(role);
            Console {
                c,
                c_in,
                c_out,
                cfg: Config::default(),
                bufs: BufPool::new(4096, 16),
                hba: Hba::default(),
            }
        }

        fn session(&mut self) -> Session<'_> {
            Session {
                c: &mut self.c,
                bufs: &mut self.bufs,
                cfg: &self.cfg,
            }
        }

        /// Delivers `bytes` and reads the next message, as the loop does.
        fn send(&mut self, bytes: &[u8]) -> Asks {
            self.c_in.borrow_mut().bytes.extend(bytes);
            self.c.io.on_event(true, true, false);
            self.c.io.fill(&mut self.bufs).expect("read");
            let asks = Session {
                c: &mut self.c,
                bufs: &mut self.bufs,
                cfg: &self.cfg,
            }
            .next(&self.hba);
            self.c.io.flush_own(&mut self.bufs).expect("write");
            asks
        }

        /// What the console sent the client so far, as (tag, body) messages.
        fn sent(&mut self) -> Vec<(u8, Vec<u8>)> {
            self.c.io.flush_own(&mut self.bufs).expect("write");
            self.c_out.borrow_mut().take_messages()
        }

        /// The sent messages' tags, and the ERROR or NOTICE among them, if one.
        fn told(&mut self) -> (String, Option<ErrorFields>) {
            let sent = self.sent();
            let tags = sent.iter().map(|(t, _)| *t as char).collect();
            let error = sent
                .iter()
                .find(|(t, _)| matches!(t, b'E' | b'N'))
                .map(|(_, body)| ErrorFields::parse(body));
            (tags, error)
        }
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write::query(&mut out, sql);
        out
    }

    #[test]
    fn a_query_cut_at_every_byte_waits_for_the_rest() {
        let bytes = query("RELOAD;");
        for cut in 1..bytes.len() {
            let mut con = Console::new(Role::Admin);
            assert!(
                matches!(con.send(&bytes[..cut]), Asks::Wait { .. }),
                "cut at {cut}"
            );
            assert!(con.sent().is_empty(), "cut at {cut}: nothing said yet");
            match con.send(&bytes[cut..]) {
                Asks::Forward(Cmd::Reload, AdminRequest::Reload) => {}
                _ => panic!("cut at {cut}: RELOAD goes to the supervisor"),
            }
        }
    }

    #[test]
    fn a_stats_user_may_only_show() {
        let mut con = Console::new(Role::Stats);
        assert!(matches!(con.send(&query("RELOAD")), Asks::Answered));
        let (tags, error) = con.told();
        assert_eq!(tags, "EZ");
        let error = error.expect("an error");
        assert_eq!(
            (error.code(), error.message()),
            ("08P01", "admin access needed")
        );
        match con.send(&query("show POOLS")) {
            Asks::Show { what, query } => {
                assert_eq!((what.as_str(), query.as_str()), ("pools", "show POOLS"));
            }
            _ => panic!("SHOW goes to the worker's view"),
        }
        assert!(con.sent().is_empty());
    }

    #[test]
    fn unknown_commands_and_databases_are_told_in_pgbouncers_words() {
        let mut con = Console::new(Role::Admin);
        for (sql, words) in [
            ("FROB", "invalid command 'FROB', use SHOW HELP;"),
            ("PAUSE pgbouncer", "cannot pause admin db: pgbouncer"),
            ("KILL nosuchdb", "no such database: nosuchdb"),
            ("KILL_CLIENT abc", "invalid client pointer supplied"),
            ("DISABLE nosuchdb", "no such database: nosuchdb"),
        ] {
            assert!(matches!(con.send(&query(sql)), Asks::Answered), "{sql}");
            let (tags, error) = con.told();
            assert_eq!(tags, "EZ", "{sql}");
            assert_eq!(error.expect("an error").message(), words, "{sql}");
        }
    }

    #[test]
    fn drivers_settings_get_canned_answers() {
        let mut con = Console::new(Role::Stats);
        assert!(matches!(
            con.send(&query("SET client_encoding = 'UTF8'")),
            Asks::Answered
        ));
        let (tags, notice) = con.told();
        assert_eq!(tags, "NCZ");
        assert_eq!(notice.expect("a notice").message(), "SET ignored");
        assert!(matches!(con.send(&query("SHOW timezone")), Asks::Answered));
        let sent = con.sent();
        let tags: String = sent.iter().map(|(t, _)| *t as char).collect();
        assert_eq!(tags, "TDCZ");
        assert!(sent[1].1.ends_with(b"GMT"), "{:?}", sent[1].1);
    }

    #[test]
    fn the_extended_protocol_is_refused_and_the_client_closed() {
        let mut con = Console::new(Role::Admin);
        let mut parse = Vec::new();
        write::message(&mut parse, b'P', |b| {
            b.extend_from_slice(b"\0SHOW POOLS\0\0\0")
        });
        match con.send(&parse) {
            Asks::Close(Close::Fatal(code, msg)) => {
                assert_eq!(
                    (code, msg.as_str()),
                    (sqlstate::PROTOCOL_VIOLATION, "bad packet")
                );
            }
            _ => panic!("a Parse closes the console client"),
        }
        let (_, error) = con.told();
        assert_eq!(
            error.expect("an error").message(),
            "extended query protocol not supported by admin console"
        );
    }

    #[test]
    fn a_forwarded_command_is_answered_in_pgbouncers_words() {
        let mut con = Console::new(Role::Admin);
        con.session()
            .finished(Cmd::KillClient("7".into()), None, &[], 0, None);
        let (tags, error) = con.told();
        assert_eq!(tags, "EZ");
        assert_eq!(error.expect("an error").message(), "client not found");
        let err = Some("bad config".to_string());
        con.session().finished(Cmd::Reload, err, &[3], 0, None);
        let sent = con.sent();
        let tags: String = sent.iter().map(|(t, _)| *t as char).collect();
        assert_eq!(tags, "NEZ");
        let notice = ErrorFields::parse(&sent[0].1);
        assert_eq!(
            notice.message(),
            "worker 3 did not answer in time; its rows are missing"
        );
        let error = ErrorFields::parse(&sent[1].1);
        assert_eq!(
            (error.code(), error.message()),
            ("F0000", "RELOAD failed, see logs for additional details")
        );
        con.session().finished(Cmd::Pause(None), None, &[], 0, None);
        let sent = con.sent();
        assert_eq!(sent[0], (b'C', b"PAUSE\0".to_vec()));
    }
}
