//! Named prepared statements under transaction pooling (`max_prepared_statements`).
//!
//! A client's statement names mean nothing to the server it happens to get, so the pooler
//! keeps them: each distinct statement (its Parse body: query text and parameter types)
//! gets a worker-wide name `PGBS_<id>`, prepared on a server the first time a client that
//! uses it runs there, and kept there (least recently used ones are closed past the limit)
//! so later clients with the same query reuse it. Parse of a statement the server already
//! has and Close of a client's statement are answered by the pooler itself; the relay's
//! queue of expected answers puts those answers in their place in the stream.

use crate::buf::{BufPool, InBuf, OutBuf};
use crate::close::Close;
use crate::relay::{bind_names, Expect};
use crate::relay::{Scan, TxState};
use crate::stats::PoolStats;
use crate::wire::fields::cstr;
use crate::wire::write::message;
use crate::wire::{frame, sqlstate};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

/// One distinct statement.
pub(crate) struct Stmt {
    pub id: u64,
    /// The Parse body after the statement name: query text, parameter count and types.
    pub body: Box<[u8]>,
}

/// Every statement some client of this worker prepared, found by its Parse body.
#[derive(Default)]
pub(crate) struct Registry {
    by_body: HashMap<Box<[u8]>, Weak<Stmt>>,
    next_id: u64,
    pruned_at: usize,
}

impl Registry {
    pub(crate) fn get_or_add(&mut self, body: &[u8]) -> Rc<Stmt> {
        if let Some(s) = self.by_body.get(body).and_then(Weak::upgrade) {
            return s;
        }
        self.next_id += 1;
        let s = Rc::new(Stmt {
            id: self.next_id,
            body: body.into(),
        });
        self.by_body.insert(body.into(), Rc::downgrade(&s));
        if self.by_body.len() > 2 * self.pruned_at.max(64) {
            self.by_body.retain(|_, w| w.strong_count() > 0);
            self.pruned_at = self.by_body.len();
        }
        s
    }
}

/// A client's statement names, each with the number of the Parse that made it.
#[derive(Default)]
pub(crate) struct ClientStmts {
    by_name: HashMap<Box<str>, (Rc<Stmt>, u64)>,
    parses: u64,
}

impl ClientStmts {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    fn get(&self, name: &str) -> Option<&Rc<Stmt>> {
        self.by_name.get(name).map(|(s, _)| s)
    }

    /// Adds a name for a Parse being sent; its number, for `Expect::Prepare`/`MadeParse`.
    fn add(&mut self, name: Box<str>, stmt: Rc<Stmt>) -> u64 {
        self.parses += 1;
        self.by_name.insert(name, (stmt, self.parses));
        self.parses
    }

    /// Each name with its statement's text (for an online upgrade's handover).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        (self.by_name.iter()).map(|(name, (s, _))| (&**name, &*s.body))
    }

    /// A name that comes with a client handed over from the previous generation.
    pub fn adopt(&mut self, name: Box<str>, stmt: Rc<Stmt>) {
        self.add(name, stmt);
    }

    /// A Parse the server skipped (after an error) or failed made no statement: its name is
    /// free again, as in PostgreSQL.
    pub fn undo(&mut self, e: Expect) {
        if let Expect::Prepare { n, .. } | Expect::MadeParse(n) = e {
            self.by_name.retain(|_, (_, made_by)| *made_by != n);
        }
    }
}

/// Statements a server has prepared under pooler names: id -> last use.
#[derive(Default)]
pub(crate) struct ServerStmts {
    have: HashMap<u64, u64>,
    clock: u64,
}

impl ServerStmts {
    fn touch(&mut self, id: u64) -> bool {
        self.clock += 1;
        match self.have.get_mut(&id) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.have.len()
    }

    /// Undoes what a message the server skipped (after an error) was assumed to do.
    pub fn undo(&mut self, e: Expect) {
        match e {
            Expect::Prepare { id, .. } | Expect::HiddenParse(id) => {
                self.have.remove(&id);
            }
            Expect::HiddenClose(id) => {
                self.clock += 1;
                self.have.insert(id, self.clock);
            }
            _ => {}
        }
    }

    /// DISCARD ALL (or a new connection) leaves none.
    pub fn clear(&mut self) {
        self.have.clear();
    }
}

fn put_name(out: &mut Vec<u8>, id: u64) {
    use std::io::Write;
    let _ = write!(out, "PGBS_{id:x}");
    out.push(0);
}

/// What to do with the message at the front of the client's buffer.
enum Plan {
    /// More bytes are needed first (this many in all).
    Wait(usize),
    /// Not a named-statement message after all: it passes unchanged.
    Pass(Expect),
    Parse {
        client_name: Box<str>,
        body: Vec<u8>,
    },
    Bind {
        stmt: Rc<Stmt>,
        portal: Vec<u8>,
        prefix: usize,
    },
    Describe(Rc<Stmt>),
    Close(Box<str>),
    /// DEALLOCATE ALL / DISCARD ALL: the client's names and the server's statements go.
    ForgetAll,
}

/// The parts of a linked client and its server that a named-statement rewrite touches.
pub(crate) struct Link<'a> {
    /// The client's unread bytes, its relay state and its statements.
    pub rbuf: &'a mut InBuf,
    pub scan: &'a mut Scan,
    pub tx: &'a mut TxState,
    pub queue: &'a mut VecDeque<Expect>,
    pub stmts: &'a mut ClientStmts,
    /// What goes to the server, and the statements it has.
    pub wbuf: &'a mut OutBuf,
    pub server_stmts: &'a mut ServerStmts,
}

pub(crate) fn rewrite_named(
    l: Link<'_>,
    reg: &mut Registry,
    bufs: &mut BufPool,
    stats: Option<&mut PoolStats>,
    max_packet: usize,
    limit: usize,
) -> Result<bool, Close> {
    debug_assert_eq!(l.scan.ready, 0);
    let bytes = l.rbuf.bytes();
    let avail = bytes.len();
    let h = match frame::header(bytes, max_packet) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(false),
        Err(e) => return Err(Close::Fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
    };
    let body = &bytes[5..bytes.len().min(h.total)];
    let whole = bytes.len() >= h.total;
    let bad = || Close::Fatal(sqlstate::PROTOCOL_VIOLATION, "malformed message".into());
    let name_of = |n: &[u8]| -> Box<str> { String::from_utf8_lossy(n).into() };
    // PgBouncer's answers (prepare.c): it closes the client rather than sending an error
    // the rest of a pipeline would have to be skipped after.
    let in_use = || {
        Close::Fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "prepared statement name is already in use".into(),
        )
    };
    let unknown = || {
        Close::Fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "prepared statement did not exist".into(),
        )
    };
    let plan = match h.tag {
        b'P' if !whole => Plan::Wait(h.total),
        b'P' => {
            let (name, rest) = cstr(body).ok_or_else(bad)?;
            let client_name = name_of(name);
            if l.stmts.get(&client_name).is_some() {
                return Err(in_use());
            }
            Plan::Parse {
                client_name,
                body: rest.to_vec(),
            }
        }
        b'B' => match bind_names(body) {
            None if whole => return Err(bad()),
            None => Plan::Wait(h.total.min(5 + 1024).max(bytes.len() + 1)),
            Some((portal, name)) => match l.stmts.get(&name_of(name)) {
                None => return Err(unknown()),
                Some(stmt) => Plan::Bind {
                    stmt: stmt.clone(),
                    portal: portal.to_vec(),
                    prefix: 5 + portal.len() + 1 + name.len() + 1,
                },
            },
        },
        b'D' | b'C' if !whole => Plan::Wait(h.total),
        b'D' => {
            let (name, _) = body.get(1..).and_then(cstr).ok_or_else(bad)?;
            match l.stmts.get(&name_of(name)) {
                None => return Err(unknown()),
                Some(stmt) => Plan::Describe(stmt.clone()),
            }
        }
        b'C' => {
            let (name, _) = body.get(1..).and_then(cstr).ok_or_else(bad)?;
            Plan::Close(name_of(name))
        }
        b'Q' if !whole => Plan::Wait(h.total),
        b'Q' => Plan::ForgetAll,
        _ => Plan::Pass(Expect::Close),
    };
    l.tx.unsynced = h.tag != b'Q';
    // SHOW STATS' prepared-statement counters, as PgBouncer 1.21+ counts them.
    let mut counted = PoolStats::default();
    match plan {
        Plan::Wait(total) => {
            l.rbuf.make_room(total, bufs);
            return Ok(false);
        }
        Plan::Pass(expect) => {
            l.queue.push_back(expect);
            l.scan.pass(h.total, avail);
        }
        Plan::Parse { client_name, body } => {
            let stmt = reg.get_or_add(&body);
            l.rbuf.consume(h.total);
            counted.client_parse_count += 1;
            let n = l.stmts.add(client_name, stmt.clone());
            if l.server_stmts.touch(stmt.id) {
                l.queue.push_back(Expect::MadeParse(n));
            } else {
                let out = l.wbuf.vec(bufs);
                prepare(out, l.server_stmts, l.queue, &stmt, limit, Some(n));
                counted.server_parse_count += 1;
            }
        }
        Plan::Bind {
            stmt,
            portal,
            prefix,
        } => {
            let out = l.wbuf.vec(bufs);
            if !l.server_stmts.touch(stmt.id) {
                prepare(out, l.server_stmts, l.queue, &stmt, limit, None);
                counted.server_parse_count += 1;
            }
            counted.bind_count += 1;
            // Header and names here; the parameters stream from the client's buffer.
            let rest = h.total - prefix;
            out.push(b'B');
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&portal);
            out.push(0);
            put_name(out, stmt.id);
            let len = (out.len() - at + rest) as u32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            l.rbuf.consume(prefix);
            l.scan.remaining = rest;
            l.scan.stream(l.rbuf.len());
            l.queue.push_back(Expect::Bind);
        }
        Plan::Describe(stmt) => {
            l.rbuf.consume(h.total);
            let out = l.wbuf.vec(bufs);
            if !l.server_stmts.touch(stmt.id) {
                prepare(out, l.server_stmts, l.queue, &stmt, limit, None);
                counted.server_parse_count += 1;
            }
            message(out, b'D', |o| {
                o.push(b'S');
                put_name(o, stmt.id);
            });
            l.queue.push_back(Expect::DescribeStatement);
        }
        Plan::ForgetAll => {
            l.stmts.by_name.clear();
            l.server_stmts.clear();
            l.tx.expected += 1;
            l.queue.push_back(Expect::Query);
            l.scan.pass(h.total, avail);
        }
        Plan::Close(name) => {
            // The server keeps the statement for others; the client only forgets it.
            l.rbuf.consume(h.total);
            l.stmts.by_name.remove(&name);
            l.queue.push_back(Expect::MadeClose);
        }
    }
    if let Some(st) = stats {
        st.client_parse_count += counted.client_parse_count;
        st.server_parse_count += counted.server_parse_count;
        st.bind_count += counted.bind_count;
    }
    Ok(true)
}

/// Prepares `stmt` on a server, closing its least recently used statements first while it
/// holds `limit` or more: after a reload lowered max_prepared_statements, the next Parse on
/// a server shrinks its cache to the new limit, as in PgBouncer. `client_parse`: the
/// number of the client's Parse this answers (None: the client did not ask for it).
fn prepare(
    out: &mut Vec<u8>,
    have: &mut ServerStmts,
    queue: &mut std::collections::VecDeque<Expect>,
    stmt: &Stmt,
    limit: usize,
    client_parse: Option<u64>,
) {
    while have.have.len() >= limit.max(1) {
        let Some((&victim, _)) = have.have.iter().min_by_key(|(_, &t)| t) else {
            break;
        };
        have.have.remove(&victim);
        message(out, b'C', |o| {
            o.push(b'S');
            put_name(o, victim);
        });
        queue.push_back(Expect::HiddenClose(victim));
    }
    message(out, b'P', |o| {
        put_name(o, stmt.id);
        o.extend_from_slice(&stmt.body);
    });
    queue.push_back(match client_parse {
        None => Expect::HiddenParse(stmt.id),
        Some(n) => Expect::Prepare { id: stmt.id, n },
    });
    have.clock += 1;
    have.have.insert(stmt.id, have.clock);
}

/// The pooler's own answer to an elided Parse or Close.
pub(crate) fn made_answer(out: &mut Vec<u8>, e: Expect) {
    let tag = if matches!(e, Expect::MadeParse(_)) {
        b'1'
    } else {
        b'3'
    };
    out.extend_from_slice(&[tag, 0, 0, 0, 4]);
}
