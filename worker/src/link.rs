//! A client and its server: assignment, parameter sync, the byte pump, and release.

use crate::buf::BufPool;
use crate::client::{CState, Client};
use crate::close::Close;
use crate::config::PoolMode;
use crate::params;
use crate::prepared::Registry;
use crate::relay::TxStatus;
use crate::relay::{self, FromClient, FromServer, Named, Scan, TxState};
use crate::server::Server;
use crate::stats::PoolStats;
use crate::stream::{self, Filled};
use crate::wire::{sqlstate, write};
use std::borrow::Cow;
use std::time::Instant;

/// Rounds of the pump per event before other connections get a turn.
const PUMP_ROUNDS: usize = 16;

/// Links client `ct` and server `st`, one of the pool the client waits in: both start a
/// fresh scan, and SETs for the client's parameters the server does not have yet go
/// first. `stats`: the pool's counters (the wait just ended, one more assignment).
pub(crate) fn pair(
    (ct, c): (usize, &mut Client),
    (st, s): (usize, &mut Server),
    stats: &mut PoolStats,
    bufs: &mut BufPool,
    now: Instant,
) {
    debug_assert_eq!(c.pool(), Some(s.pool), "a client gets a server of its pool");
    stats.server_assignments += 1;
    stats.wait_time_us += micros(now, c.since);
    let pool = s.pool;
    c.set_state(CState::Active { pool, server: st }, now);
    c.tx = TxState::new();
    c.scan = Scan::default();
    debug_assert_eq!(
        s.linked_client(),
        Some(ct),
        "the loop makes the server Active first"
    );
    s.used = true;
    s.scan = Scan::default();
    s.release_pending = false;
    let mut sql = String::new();
    // A replication server got the client's parameters in its startup packet.
    if s.replication.is_none() && params::sync_statements(&c.params, &s.params, &mut sql) {
        write::query(s.io.out(bufs), &sql);
        s.own += 1;
        params::apply_extras(&c.params, &mut s.params);
    }
}

/// What the pump works with besides the two connections.
pub(crate) struct Pump<'a> {
    pub bufs: &'a mut BufPool,
    /// The pool's counters.
    pub stats: &'a mut PoolStats,
    /// The worker's named statements (transaction pooling).
    pub stmts: &'a mut Registry,
    pub now: Instant,
    /// The pool's mode; session for a replication server.
    pub mode: PoolMode,
    pub max_packet: usize,
    /// max_prepared_statements: 0 passes statement names through.
    pub max_prepared: usize,
}

/// How a pump run ended: what the loop must do next.
pub(crate) enum PumpEnd {
    /// Neither side can move: wait for the sockets.
    Idle,
    /// Out of rounds with work left: come back after other connections had a turn.
    Again,
    /// The transaction is over and its last byte is out: the server goes back.
    Release,
    /// The client goes, with this verdict.
    CloseClient(Close),
    /// The server connection is broken or misbehaved.
    RemoveServer(Cow<'static, str>),
}

/// Moves bytes both ways between a linked client and server until neither can move or
/// one of them must go. Touches nothing but the two connections and `ctx`.
pub(crate) fn pump(c: &mut Client, s: &mut Server, ctx: &mut Pump<'_>) -> PumpEnd {
    let (mode, max_packet) = (ctx.mode, ctx.max_packet);
    // max_prepared_statements: 0 passes statement names through in every mode, as in
    // PgBouncer (a client's statement then lives on whichever server it was sent to).
    let named = if mode != PoolMode::Session && ctx.max_prepared > 0 {
        Named::Rewrite
    } else {
        Named::Pass
    };
    // After a named message was rewritten, the next round only scans on: what follows
    // it (Execute, Sync) then leaves in the same write as its rewritten head.
    let mut scan_only = false;
    for _ in 0..PUMP_ROUNDS {
        let mut progress = false;

        // Towards the server: the pooler's own query first, then the client's bytes.
        // Once the server is about to be released, the client's next request waits
        // for whichever server it gets next.
        if std::mem::take(&mut scan_only) {
            // The rewritten head waits in the server's buffer: the next round writes it.
            progress = true;
        } else {
            let ready = if s.own == 0 && !s.release_pending {
                c.scan.ready
            } else {
                0
            };
            match stream::flush_then_forward(&mut c.io, &mut s.io, ready, ctx.bufs) {
                Ok(n) => {
                    c.scan.sent(n);
                    ctx.stats.bytes_received += n as u64;
                    progress |= n > 0;
                }
                Err(_) => return PumpEnd::RemoveServer("server connection broken".into()),
            }
            match c.io.fill(ctx.bufs) {
                Ok(Filled::Bytes(_)) => progress = true,
                Ok(Filled::Nothing) => {}
                Ok(Filled::Eof) => {
                    let unread = c.io.unread().get(c.scan.ready..).unwrap_or_default();
                    let why = crate::client::eof_reason(unread);
                    return PumpEnd::CloseClient(Close::Quiet(why));
                }
                Err(e) => return PumpEnd::CloseClient(Close::Quiet(crate::client::io_reason(&e))),
            }
        }
        if c.scan.ready < c.io.unread().len() && !s.release_pending {
            let was_idle = !c.tx.in_request();
            let before = c.scan.ready;
            let queue = (named == Named::Rewrite).then_some(&mut c.queue);
            let verdict = relay::from_client(
                c.io.unread(),
                &mut c.scan,
                &mut c.tx,
                named,
                max_packet,
                queue,
            );
            if was_idle && c.tx.in_request() {
                c.request_time = ctx.now;
                if c.tx.status == TxStatus::Idle {
                    c.xact_start = ctx.now;
                }
            }
            progress |= c.scan.ready > before;
            match verdict {
                FromClient::NeedMore => {}
                FromClient::Terminate if c.scan.ready == 0 => {
                    return PumpEnd::CloseClient(Close::Quiet("client close request"));
                }
                FromClient::Rewrite if c.scan.ready == 0 => {
                    match crate::prepared::rewrite_named(
                        crate::prepared::Link {
                            rbuf: c.io.input_mut(),
                            scan: &mut c.scan,
                            tx: &mut c.tx,
                            queue: &mut c.queue,
                            stmts: &mut c.stmts,
                            wbuf: s.io.output_mut(),
                            server_stmts: &mut s.stmts,
                        },
                        ctx.stmts,
                        ctx.bufs,
                        Some(&mut *ctx.stats),
                        max_packet,
                        ctx.max_prepared,
                    ) {
                        Ok(true) => {
                            scan_only = true;
                            continue;
                        }
                        Ok(false) => {}
                        Err(why) => return PumpEnd::CloseClient(why),
                    }
                }
                FromClient::Unknown(tag) if c.scan.ready == 0 => {
                    log::warn!("C-{}: unknown pkt from client: {tag}/{tag:#x}", c.id);
                    let why = Close::Fatal(sqlstate::PROTOCOL_VIOLATION, "unknown pkt".into());
                    return PumpEnd::CloseClient(why);
                }
                FromClient::Terminate
                | FromClient::NamedParse
                | FromClient::Rewrite
                | FromClient::Unknown(_) => {}
                FromClient::Bad(e) => {
                    return PumpEnd::CloseClient(Close::Fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ));
                }
            }
        }

        // Towards the client: the pooler's own messages first, then the server's bytes.
        match stream::flush_then_forward(&mut s.io, &mut c.io, s.scan.ready, ctx.bufs) {
            Ok(n) => {
                s.scan.sent(n);
                ctx.stats.bytes_sent += n as u64;
                progress |= n > 0;
            }
            Err(e) => return PumpEnd::CloseClient(Close::Quiet(crate::client::io_reason(&e))),
        }
        if s.release_pending {
            if s.scan.ready == 0 {
                return PumpEnd::Release;
            }
            if !progress {
                // The answer's tail waits for the client to read: its socket's next
                // writable event comes back here. Asking to be pumped again at once
                // would spin the loop for as long as the client is slow.
                return PumpEnd::Idle;
            }
            continue;
        }
        match s.io.fill(ctx.bufs) {
            Ok(Filled::Bytes(_)) => progress = true,
            Ok(Filled::Nothing) => {}
            Ok(Filled::Eof) | Err(_) => {
                return PumpEnd::RemoveServer("server conn crashed?".into())
            }
        }
        let before = s.scan.ready;
        loop {
            let track = (named == Named::Rewrite).then_some(relay::Tracking {
                queue: &mut c.queue,
                dropped: &mut c.dropped,
                skipping: &mut c.skipping,
            });
            let verdict = relay::from_server(s.io.unread(), &mut s.scan, &mut c.tx, s.own, track);
            for e in c.dropped.drain(..) {
                s.stmts.undo(e);
                c.stmts.undo(e);
            }
            match verdict {
                FromServer::Made => {
                    if s.scan.ready > 0 {
                        // Everything the server said before it goes out first.
                        break;
                    }
                    if let Some(e) = c.queue.pop_front() {
                        crate::prepared::made_answer(c.io.out(ctx.bufs), e);
                        progress = true;
                    }
                }
                FromServer::Hidden(len) => {
                    s.io.consume(len);
                    progress = true;
                }
                FromServer::NeedMore => {
                    if let Some(total) = relay::wants_whole(s.io.unread(), &s.scan, s.own) {
                        s.io.make_room(total, ctx.bufs);
                    }
                    break;
                }
                FromServer::ReadyForQuery => {
                    c.since = ctx.now;
                    let st = &mut *ctx.stats;
                    st.query_count += 1;
                    st.query_time_us += micros(ctx.now, c.request_time);
                    c.request_time = ctx.now;
                    if c.tx.status == TxStatus::Idle {
                        st.xact_count += 1;
                        st.xact_time_us += micros(ctx.now, c.xact_start);
                    }
                    if mode == PoolMode::Session {
                        continue;
                    }
                    if c.tx.is_idle() && c.scan.at_boundary() && c.queue.is_empty() {
                        s.release_pending = true;
                        progress = true;
                        break;
                    }
                    // PgBouncer's rule: any ReadyForQuery inside a transaction, even
                    // one in the middle of a pipeline, closes the client, with its
                    // words and SQLSTATE (08P01).
                    if mode == PoolMode::Statement && c.tx.status != TxStatus::Idle {
                        let msg = "transaction blocks not allowed in statement pooling mode";
                        // The server's answer opens a transaction the client may not
                        // have: drop it, tell the client why, and let the server go.
                        s.io.consume(s.scan.ready);
                        s.scan = Scan::default();
                        s.close_needed = true;
                        return PumpEnd::CloseClient(Close::Fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            msg.into(),
                        ));
                    }
                }
                FromServer::Parameter(k, v) => {
                    if let Some(name) = params::tracked_name(k) {
                        s.params.set(name, v);
                        c.params.set(name, v);
                    } else if c.params.get(k).is_some() {
                        s.params.set(k, v);
                        c.params.set(k, v);
                    }
                }
                FromServer::Own { tag, body } => {
                    let len = body.len() + 5;
                    let done = crate::server::own_answer(
                        tag,
                        body,
                        &mut s.own,
                        &mut s.own_error,
                        &mut s.params,
                        Some(&mut c.params),
                    );
                    s.io.consume(len);
                    progress = true;
                    if done {
                        if let Some(e) = s.own_error.take() {
                            // The client's settings can't be applied: tell it, keep the server.
                            let e_text = e.to_string();
                            log::warn!(
                                "C-{}: cannot apply session parameters: {}",
                                c.id,
                                crate::logsafe::Escaped(&e_text)
                            );
                            return PumpEnd::CloseClient(Close::Relay(e));
                        }
                    }
                }
                FromServer::Bad(e) => {
                    return PumpEnd::RemoveServer(format!("server sent {e}").into());
                }
            }
        }
        progress |= s.scan.ready > before;
        // A read that filled a buffer, followed by `make_room` for a message that must
        // be whole (a long named Parse, a long ReadyForQuery-bearing message), leaves
        // bytes that no event will announce: go round again to read them.
        progress |= c.io.may_read() || s.io.may_read();
        if !progress {
            c.io.release_buffers(ctx.bufs);
            s.io.release_buffers(ctx.bufs);
            return PumpEnd::Idle;
        }
    }
    // Out of rounds with work left: come back after other connections had a turn.
    PumpEnd::Again
}

/// PgBouncer's words for a client of a database a reload took away.
pub(crate) fn database_removed() -> Close {
    Close::Fatal(sqlstate::PROTOCOL_VIOLATION, "database removed".into())
}

fn micros(now: std::time::Instant, since: std::time::Instant) -> u64 {
    now.saturating_duration_since(since).as_micros() as u64
}

/// The pump's own code driven over in-memory pipes: no socket, no PostgreSQL, every split
/// of the bytes a test cares to try (rustls tests its connections the same way).
#[cfg(test)]
mod pump_tests {
    use super::*;
    use crate::server::SState;
    use crate::stream::memory::{End, Shared};
    use crate::stream::Sock;
    use crate::stream::Stream;
    use crate::wire::write::message;

    /// A linked client and server, each on in-memory pipes, and what the pump borrows.
    struct Pair {
        c: Box<Client>,
        s: Box<Server>,
        /// client → pooler, pooler → client, server → pooler, pooler → server.
        c_in: Shared,
        c_out: Shared,
        s_in: Shared,
        s_out: Shared,
        bufs: BufPool,
        stats: PoolStats,
        stmts: Registry,
        mode: PoolMode,
    }

    fn client() -> (Box<Client>, Shared, Shared) {
        let (end, i, o) = End::new();
        let now = Instant::now();
        let c = Client::new(
            1,
            Stream::accepted(Sock::Memory(end)),
            // Logged in to pool 0 and waiting for a server: `pair` links it.
            CState::Waiting { pool: 0 },
            None,
            now,
        );
        (Box::new(c), i, o)
    }

    impl Pair {
        fn new(mode: PoolMode) -> Pair {
            let (mut c, c_in, c_out) = client();
            let (end, s_in, s_out) = End::new();
            let addr = crate::server::ServerAddr::Unix("memory".into());
            let io = Stream::connecting(Sock::Memory(end));
            let mut s = Box::new(Server::connecting(
                2,
                io,
                0,
                (addr, 0),
                crate::server::Creds::None,
                Instant::now(),
            ));
            // Logged in (the login is not what these tests are about), then linked.
            s.state = SState::Active { client: Some(0) };
            let (mut bufs, mut stats) = (BufPool::new(4096, 16), PoolStats::default());
            pair(
                (0, &mut c),
                (1, &mut s),
                &mut stats,
                &mut bufs,
                Instant::now(),
            );
            Pair {
                c,
                s,
                c_in,
                c_out,
                s_in,
                s_out,
                bufs,
                stats,
                stmts: Registry::default(),
                mode,
            }
        }

        /// One pump call after an event that reported both sockets ready both ways.
        fn pump(&mut self) -> PumpEnd {
            // As epoll reports them: readable, writable, and the peer's FIN if it came.
            let (c_eof, s_eof) = (self.c_in.borrow().closed, self.s_in.borrow().closed);
            self.c.io.on_event(true, true, c_eof);
            self.s.io.on_event(true, true, s_eof);
            let mut ctx = Pump {
                bufs: &mut self.bufs,
                stats: &mut self.stats,
                stmts: &mut self.stmts,
                now: Instant::now(),
                mode: self.mode,
                max_packet: 1 << 20,
                max_prepared: 100,
            };
            pump(&mut self.c, &mut self.s, &mut ctx)
        }

        /// Pumps until the pump stops asking to come back: a few rounds of 16 at most
        /// for these small exchanges, so many more means the pump spins.
        fn settle(&mut self) -> PumpEnd {
            for _ in 0..100 {
                match self.pump() {
                    PumpEnd::Again => continue,
                    end => return end,
                }
            }
            panic!("the pump keeps asking to come back with nothing to do");
        }

        fn client_sends(&self, bytes: &[u8]) {
            self.c_in.borrow_mut().bytes.extend(bytes);
        }

        fn server_sends(&self, bytes: &[u8]) {
            self.s_in.borrow_mut().bytes.extend(bytes);
        }

        /// The client's bytes arriving `step` at a time, each piece pumped as it comes;
        /// the server is never released meanwhile.
        fn client_sends_in_pieces(&mut self, bytes: &[u8], step: usize) {
            for piece in bytes.chunks(step) {
                self.client_sends(piece);
                assert!(!is_release(&self.settle()));
            }
        }

        /// The server's answer arriving `step` at a time; the pump's last ending.
        fn server_sends_in_pieces(&mut self, bytes: &[u8], step: usize) -> PumpEnd {
            let mut end = PumpEnd::Idle;
            for piece in bytes.chunks(step) {
                self.server_sends(piece);
                end = self.settle();
            }
            end
        }

        fn at_server(&self) -> Vec<u8> {
            self.s_out.borrow_mut().bytes.drain(..).collect()
        }

        fn at_client(&self) -> Vec<u8> {
            self.c_out.borrow_mut().bytes.drain(..).collect()
        }

        /// A new client linked to the same server, as `Worker::link` does it. The one
        /// before is returned: still connected, as if it had gone on elsewhere.
        fn next_client(&mut self) -> Box<Client> {
            let (mut c, i, o) = client();
            self.c_in = i;
            self.c_out = o;
            pair(
                (0, &mut c),
                (1, &mut self.s),
                &mut self.stats,
                &mut self.bufs,
                Instant::now(),
            );
            std::mem::replace(&mut self.c, c)
        }
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write::query(&mut out, sql);
        out
    }

    /// RowDescription, DataRow, CommandComplete and ReadyForQuery with `status`.
    fn answer(row: &str, status: TxStatus) -> Vec<u8> {
        let mut out = Vec::new();
        write::row_description(&mut out, &[("x", 25)]);
        write::data_row(&mut out, [Some(row)].into_iter());
        write::command_complete(&mut out, "SELECT 1");
        write::ready_for_query(&mut out, status);
        out
    }

    fn tags(mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while bytes.len() >= 5 {
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            out.push(bytes[0]);
            bytes = &bytes[1 + len..];
        }
        assert!(bytes.is_empty(), "a message was cut short");
        out
    }

    fn is_release(end: &PumpEnd) -> bool {
        matches!(end, PumpEnd::Release)
    }

    #[test]
    fn a_query_and_its_answer_pass_unchanged_however_the_bytes_arrive() {
        let q = query("select 1");
        let a = answer("1", TxStatus::Idle);
        for step in [1, 2, 3, 5, 7, 13, a.len()] {
            let mut p = Pair::new(PoolMode::Transaction);
            p.client_sends_in_pieces(&q, step);
            assert_eq!(p.at_server(), q, "step {step}");
            let mut seen = Vec::new();
            for (i, piece) in a.chunks(step).enumerate() {
                p.server_sends(piece);
                let end = p.settle();
                seen.extend(p.at_client());
                let last = (i + 1) * step >= a.len();
                // The server goes back with the answer's last byte, never before it.
                assert_eq!(is_release(&end), last, "step {step}, piece {i}");
            }
            assert_eq!(seen, a, "step {step}");
            assert_eq!(p.c.tx.status, TxStatus::Idle);
            assert_eq!((p.stats.query_count, p.stats.xact_count), (1, 1));
        }
    }

    /// A pair whose client sent BEGIN and whose server answered it, not yet pumped back.
    fn begun(mode: PoolMode) -> Pair {
        let mut p = Pair::new(mode);
        p.client_sends(&query("begin"));
        p.settle();
        p.server_sends(&answer("1", TxStatus::InTransaction));
        p
    }

    #[test]
    fn a_transaction_keeps_its_server_until_it_ends() {
        let mut p = begun(PoolMode::Transaction);
        assert!(matches!(p.settle(), PumpEnd::Idle));
        assert_eq!(tags(&p.at_client()), b"TDCZ");
        p.client_sends(&query("commit"));
        p.settle();
        assert_eq!(p.at_server(), [query("begin"), query("commit")].concat());
        p.server_sends(&answer("1", TxStatus::Idle));
        assert!(is_release(&p.settle()));
        assert_eq!((p.stats.query_count, p.stats.xact_count), (2, 1));
    }

    #[test]
    fn a_slow_reader_gets_every_byte_before_the_server_goes_back() {
        let mut p = Pair::new(PoolMode::Transaction);
        p.c_out.borrow_mut().room = 100;
        p.client_sends(&query("select repeat('x', 5000)"));
        p.settle();
        let a = answer(&"x".repeat(5000), TxStatus::Idle);
        p.server_sends(&a);
        let mut seen = Vec::new();
        let mut end = p.settle();
        while !is_release(&end) {
            // Nothing moves until the client reads: the pump must say so, not spin.
            assert!(matches!(end, PumpEnd::Idle));
            let got = p.at_client();
            assert!(
                !got.is_empty(),
                "stalled at {} of {} bytes",
                seen.len(),
                a.len()
            );
            seen.extend(got);
            end = p.settle();
        }
        seen.extend(p.at_client());
        assert_eq!(seen, a);
    }

    #[test]
    fn statement_pooling_refuses_a_transaction_block_with_pgbouncers_words() {
        let mut p = begun(PoolMode::Statement);
        match p.settle() {
            PumpEnd::CloseClient(Close::Fatal(code, msg)) => {
                assert_eq!(code, sqlstate::PROTOCOL_VIOLATION);
                assert_eq!(
                    msg,
                    "transaction blocks not allowed in statement pooling mode"
                );
            }
            _ => panic!("the client should be closed"),
        }
        // The server's answer opened a transaction: it is not reused.
        assert!(p.s.close_needed);
        assert!(p.at_client().is_empty());
    }

    /// Parse of `name` for `sql`, Bind of it, Execute and Sync: a driver's prepared query.
    fn prepared(name: &str, sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        message(&mut out, b'P', |o| {
            o.extend_from_slice(name.as_bytes());
            o.push(0);
            o.extend_from_slice(sql.as_bytes());
            o.extend_from_slice(&[0, 0, 0]);
        });
        message(&mut out, b'B', |o| {
            o.push(0);
            o.extend_from_slice(name.as_bytes());
            o.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        });
        message(&mut out, b'E', |o| o.extend_from_slice(&[0, 0, 0, 0, 0]));
        message(&mut out, b'S', |_| {});
        out
    }

    /// ParseComplete (unless the pooler makes it), BindComplete, a row, the end.
    fn prepared_answer(parse: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if parse {
            message(&mut out, b'1', |_| {});
        }
        message(&mut out, b'2', |_| {});
        write::data_row(&mut out, [Some("1")].into_iter());
        write::command_complete(&mut out, "SELECT 1");
        write::ready_for_query(&mut out, TxStatus::Idle);
        out
    }

    #[test]
    fn a_named_statement_is_prepared_once_per_server_and_answered_in_its_place() {
        for step in [1, 4, 9, 1000] {
            let mut p = Pair::new(PoolMode::Transaction);
            p.client_sends_in_pieces(&prepared("s1", "select 1"), step);
            let sent = p.at_server();
            assert_eq!(tags(&sent), b"PBES", "step {step}");
            // The server knows the statement under the pooler's name, not the client's.
            let text = String::from_utf8_lossy(&sent).into_owned();
            assert!(text.contains("PGBS_") && !text.contains("s1"), "{text:?}");
            let end = p.server_sends_in_pieces(&prepared_answer(true), step);
            assert!(is_release(&end), "step {step}");
            assert_eq!(p.at_client(), prepared_answer(true));

            // Another client with the same query, under another name, on the same server:
            // no second Parse goes out, and the pooler's ParseComplete comes first.
            // (The first client stays connected: its statement lives on in the registry.)
            let _first = p.next_client();
            p.client_sends_in_pieces(&prepared("other", "select 1"), step);
            assert_eq!(tags(&p.at_server()), b"BES", "step {step}");
            let end = p.server_sends_in_pieces(&prepared_answer(false), step);
            assert!(is_release(&end), "step {step}");
            assert_eq!(p.at_client(), prepared_answer(true), "step {step}");
            assert_eq!(
                (p.stats.client_parse_count, p.stats.server_parse_count),
                (2, 1)
            );
        }
    }

    #[test]
    fn a_client_that_hangs_up_mid_message_is_closed_quietly() {
        let mut p = Pair::new(PoolMode::Transaction);
        let q = query("select 1");
        p.client_sends(&q[..4]);
        p.c_in.borrow_mut().closed = true;
        match p.settle() {
            PumpEnd::CloseClient(Close::Quiet(_)) => {}
            _ => panic!("the client should be closed"),
        }
        assert!(p.at_server().is_empty());
    }
}
