//! Relay decisions between a client and its server: which bytes pass through untouched,
//! and where the pooler must step in (no I/O; the event loop acts on the answers).
//!
//! Bytes are judged once, as they arrive: `ready` counts bytes at the front of the source
//! buffer cleared to go out as they are, `remaining` the part of the current message not yet
//! in the buffer. Only the headers (and a few small bodies) are looked at; bodies stream.

use crate::wire::frame::{self, FrameError};
pub use crate::wire::TxStatus;

/// Where a client's conversation with its server stands (transaction bookkeeping).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TxState {
    /// ReadyForQuery messages the server still owes: one per Query, Sync and FunctionCall.
    pub expected: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// Status of the last ReadyForQuery.
    pub status: TxStatus,
}

impl TxState {
    pub fn new() -> TxState {
        TxState {
            expected: 0,
            unsynced: false,
            status: TxStatus::Idle,
        }
    }

    /// Nothing is in flight and no transaction is open: the server may be released.
    pub fn is_idle(&self) -> bool {
        self.expected == 0 && !self.unsynced && self.status == TxStatus::Idle
    }

    /// The client is waiting for an answer.
    pub fn in_request(&self) -> bool {
        self.expected > 0 || self.unsynced
    }
}

/// Scan position over one direction's buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub ready: usize,
    pub remaining: usize,
}

impl Scan {
    /// The message being streamed has been fully judged.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// `n` bytes of ready output were written and consumed from the buffer.
    pub fn sent(&mut self, n: usize) {
        debug_assert!(n <= self.ready);
        self.ready -= n;
    }

    /// Clears as much of the current message as the buffer holds.
    pub fn stream(&mut self, avail: usize) {
        let take = self.remaining.min(avail - self.ready);
        self.ready += take;
        self.remaining -= take;
    }

    /// Clears a whole message of `total` bytes that starts at `ready`.
    pub fn pass(&mut self, total: usize, avail: usize) {
        self.remaining = total;
        self.stream(avail);
    }
}

/// How named prepared statements from a client are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// Session pooling: statements stay on the client's one server; pass them through.
    Pass,
    /// Transaction pooling with the pooler managing statements (max_prepared_statements).
    Rewrite,
    /// Transaction pooling without that: refuse them.
    Refuse,
}

/// What the server will answer to a client message, in order. Kept only when statements
/// are rewritten, so the pooler knows where its own answers go and which to hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    /// A simple Query or FunctionCall: everything up to its ReadyForQuery.
    Query,
    /// The pooler answers itself: ParseComplete for a statement the server already has
    /// (the client's Parse number `n`, as in `Prepare`), CloseComplete for a statement the
    /// pooler keeps.
    MadeParse(u64),
    MadeClose,
    /// A client's Parse the pooler rewrote to prepare statement `id` on this server; `n`
    /// numbers the client's Parses, so a Parse the server skipped (after an error) can be
    /// undone in the client's names too.
    Prepare {
        id: u64,
        n: u64,
    },
    /// Answers to messages the pooler added (preparing or evicting statement `id` on this
    /// server): hidden.
    HiddenParse(u64),
    HiddenClose(u64),
}

impl Expect {
    /// Whether server message `tag` ends the answer to this entry.
    fn ends_with(self, tag: u8) -> bool {
        match self {
            Expect::Parse | Expect::Prepare { .. } | Expect::HiddenParse(_) => tag == b'1',
            Expect::Bind => tag == b'2',
            Expect::DescribeStatement | Expect::DescribePortal => matches!(tag, b'T' | b'n'),
            Expect::Execute => matches!(tag, b'C' | b'I' | b's'),
            Expect::Close | Expect::HiddenClose(_) => tag == b'3',
            Expect::Sync | Expect::Query => tag == b'Z',
            Expect::MadeParse(_) | Expect::MadeClose => false,
        }
    }

    pub fn is_made(self) -> bool {
        matches!(self, Expect::MadeParse(_) | Expect::MadeClose)
    }
}

/// Why judging client bytes stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum FromClient {
    /// Everything buffered is judged; `ready` bytes may go.
    NeedMore,
    /// A Terminate at `ready`: the client is leaving.
    Terminate,
    /// A Parse of a named statement at `ready`, refused (`Named::Refuse`).
    NamedParse,
    /// A message at `ready` that the pooler rewrites (`Named::Rewrite`).
    Rewrite,
    /// A message at `ready` whose type no frontend sends after login: refused in the
    /// pooler (PostgreSQL would end the server connection over it).
    Unknown(u8),
    /// A message too long or with a bad length.
    Bad(FrameError),
}

/// Whether a frontend may send this message type after login (PgBouncer's list: the
/// simple and extended query messages, function calls, COPY data and Terminate).
pub fn known_after_login(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'F' | b'S' | b'H' | b'P' | b'B' | b'D' | b'C' | b'E' | b'd' | b'c' | b'f' | b'X'
    )
}

/// Longest statement/portal name prefix the pooler looks into.
const MAX_NAMES: usize = 1024;

/// The two names at the start of a Bind body (portal, statement), when they are there.
pub fn bind_names(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (portal, rest) = crate::wire::fields::cstr(body)?;
    let (stmt, _) = crate::wire::fields::cstr(rest)?;
    Some((portal, stmt))
}

/// Judges bytes from a linked client; `queue` records what each message will get back
/// when statements are rewritten.
pub fn from_client(
    buf: &[u8],
    scan: &mut Scan,
    tx: &mut TxState,
    named: Named,
    max_packet: usize,
    mut queue: Option<&mut std::collections::VecDeque<Expect>>,
) -> FromClient {
    loop {
        scan.stream(buf.len());
        if scan.remaining > 0 {
            return FromClient::NeedMore;
        }
        let rest = &buf[scan.ready..];
        let h = match frame::header(rest, max_packet) {
            Ok(Some(h)) => h,
            Ok(None) => return FromClient::NeedMore,
            Err(e) => return FromClient::Bad(e),
        };
        // Where names decide, wait until they are in: they come first in the body.
        let names_end = h.total.min(5 + MAX_NAMES);
        let body = &rest[5.min(rest.len())..rest.len().min(h.total)];
        let named_here = |want: usize| -> Option<bool> {
            match h.tag {
                b'P' => body.first().map(|&b| b != 0),
                b'B' => bind_names(body).map(|(_, s)| !s.is_empty()),
                b'D' | b'C' => match body {
                    [b'S', n, ..] => Some(*n != 0),
                    [_, _, ..] => Some(false),
                    _ => None,
                },
                _ => Some(false),
            }
            .or_else(|| (rest.len() >= want).then_some(false))
        };
        if !known_after_login(h.tag) {
            return FromClient::Unknown(h.tag);
        }
        let expect = match h.tag {
            b'X' => return FromClient::Terminate,
            b'Q' if named == Named::Rewrite && h.total <= 5 + MAX_FORGET_ALL => {
                // DEALLOCATE ALL / DISCARD ALL drop the server's statements too.
                if rest.len() < h.total {
                    return FromClient::NeedMore;
                }
                if forgets_all(&rest[5..h.total]) {
                    return FromClient::Rewrite;
                }
                tx.expected += 1;
                tx.unsynced = false;
                Some(Expect::Query)
            }
            b'Q' | b'F' => {
                tx.expected += 1;
                tx.unsynced = false;
                Some(Expect::Query)
            }
            b'S' => {
                tx.expected += 1;
                tx.unsynced = false;
                Some(Expect::Sync)
            }
            b'P' | b'B' | b'D' | b'C' if named != Named::Pass => {
                let Some(is_named) = named_here(names_end) else {
                    return FromClient::NeedMore;
                };
                if is_named && named == Named::Rewrite {
                    return FromClient::Rewrite;
                }
                if is_named && h.tag == b'P' {
                    return FromClient::NamedParse;
                }
                tx.unsynced = true;
                Some(plain_expect(h.tag, body))
            }
            b'P' | b'B' | b'D' | b'C' => {
                tx.unsynced = true;
                Some(plain_expect(h.tag, body))
            }
            b'E' => {
                tx.unsynced = true;
                Some(Expect::Execute)
            }
            // A Flush has no body; PostgreSQL answers one with a body with an error and then
            // ignores everything up to a Sync, so the server is not free until that Sync.
            b'H' if h.total != 5 => {
                tx.unsynced = true;
                None
            }
            _ => None,
        };
        if let (Some(q), Some(e)) = (queue.as_deref_mut(), expect) {
            q.push_back(e);
        }
        scan.pass(h.total, buf.len());
    }
}

/// Longest query text checked for DEALLOCATE ALL / DISCARD ALL.
const MAX_FORGET_ALL: usize = 64;

/// Whether a simple query's text (NUL-terminated) is DEALLOCATE [PREPARE] ALL or DISCARD ALL.
/// Runs on every short simple query, so it allocates nothing and usually stops at byte one.
pub fn forgets_all(body: &[u8]) -> bool {
    let text = body.strip_suffix(&[0]).unwrap_or(body);
    let mut words = text
        .split(|b| b.is_ascii_whitespace() || *b == b';')
        .filter(|w| !w.is_empty());
    let is =
        |w: Option<&[u8]>, want: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(want.as_bytes()));
    let first = words.next();
    let matched = if is(first, "discard") {
        is(words.next(), "all")
    } else if is(first, "deallocate") {
        match words.next() {
            w if is(w, "all") => true,
            w if is(w, "prepare") => is(words.next(), "all"),
            _ => false,
        }
    } else {
        false
    };
    // Anything after the ALL (another statement) is not ours to judge.
    matched && words.next().is_none() && text.iter().filter(|&&b| b == b';').count() <= 1
}

/// What a message that passes unchanged will get back.
pub fn plain_expect(tag: u8, body: &[u8]) -> Expect {
    match (tag, body.first()) {
        (b'P', _) => Expect::Parse,
        (b'B', _) => Expect::Bind,
        (b'D', Some(b'S')) => Expect::DescribeStatement,
        (b'D', _) => Expect::DescribePortal,
        _ => Expect::Close,
    }
}

/// Why judging server bytes stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum FromServer<'a> {
    /// Everything buffered is judged; `ready` bytes may go.
    NeedMore,
    /// `ready` now ends with a ReadyForQuery whose status is recorded in the TxState.
    ReadyForQuery,
    /// A ParameterStatus (already counted in `ready` unless the pooler is swallowing).
    Parameter(&'a str, &'a str),
    /// Swallowed: a whole message the pooler asked for (sync or reset), at the front,
    /// to be consumed by the caller. `ready` is 0 whenever this is returned.
    Own {
        tag: u8,
        body: &'a [u8],
    },
    /// The answer to a message the pooler added, `len` bytes at the front, to be
    /// consumed. `ready` is 0 whenever this is returned.
    Hidden(usize),
    /// The pooler's own answer is due at the head of the queue: write it once `ready`
    /// bytes are out, then judge on.
    Made,
    Bad(FrameError),
}

/// Longest message whose body the pooler reads whole (ParameterStatus, ReadyForQuery and
/// the answers to its own queries); longer ones are a protocol error from the server.
pub const MAX_INSPECTED: usize = 1 << 20;

/// The answers a client is owed, and where entries go that an error made the server skip
/// (so the pooler can undo what it assumed those messages did).
pub struct Tracking<'a> {
    pub queue: &'a mut std::collections::VecDeque<Expect>,
    pub dropped: &'a mut Vec<Expect>,
    /// The server had an error and ignores everything up to the next Sync, including
    /// messages the client has not sent yet.
    pub skipping: &'a mut bool,
}

/// Judges bytes from a server. `own` counts ReadyForQuery messages that answer the pooler's
/// own queries: everything up to and including them is swallowed. `track` (when statements
/// are rewritten) is matched against each answer.
pub fn from_server<'a>(
    buf: &'a [u8],
    scan: &mut Scan,
    tx: &mut TxState,
    own: u32,
    mut track: Option<Tracking<'_>>,
) -> FromServer<'a> {
    loop {
        scan.stream(buf.len());
        if scan.remaining > 0 {
            return FromServer::NeedMore;
        }
        if own == 0
            && track
                .as_ref()
                .is_some_and(|t| !*t.skipping && t.queue.front().is_some_and(|e| e.is_made()))
        {
            return FromServer::Made;
        }
        let rest = &buf[scan.ready..];
        let h = match frame::header(rest, usize::MAX) {
            Ok(Some(h)) => h,
            Ok(None) => return FromServer::NeedMore,
            Err(e) => return FromServer::Bad(e),
        };
        if own > 0 {
            if scan.ready > 0 {
                // Let the caller flush what is ready before swallowing starts.
                return FromServer::NeedMore;
            }
            if h.total > MAX_INSPECTED {
                return FromServer::Bad(FrameError::TooLong(h.tag, h.total));
            }
            return match rest.get(5..h.total) {
                Some(body) => FromServer::Own { tag: h.tag, body },
                None => FromServer::NeedMore,
            };
        }
        if h.tag == b'Z' {
            // Judge a ReadyForQuery only whole, so it settles its queue entry exactly once,
            // and only with PostgreSQL's length: its status byte is inside the message.
            if h.total != 6 {
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
                return FromServer::Bad(FrameError::BadLength(b'Z', len));
            }
            if rest.len() < 6 {
                return FromServer::NeedMore;
            }
        }
        if let Some(t) = track.as_mut() {
            let q = &mut *t.queue;
            match q.front().copied() {
                Some(head) if head.ends_with(h.tag) => {
                    if h.tag == b'Z' {
                        *t.skipping = false;
                    }
                    if matches!(head, Expect::HiddenParse(_) | Expect::HiddenClose(_)) {
                        if scan.ready > 0 {
                            return FromServer::NeedMore;
                        }
                        if rest.len() < h.total {
                            return FromServer::NeedMore;
                        }
                        q.pop_front();
                        return FromServer::Hidden(h.total);
                    }
                    q.pop_front();
                }
                Some(head) if h.tag == b'E' && head != Expect::Query && head != Expect::Sync => {
                    // The server skips every message up to the next Sync after an error;
                    // their answers, ours included, never come, and what they would have
                    // done did not happen. Messages still to come before that Sync too.
                    t.dropped.extend(q.pop_front());
                    while q.front().is_some_and(|e| *e != Expect::Sync) {
                        t.dropped.extend(q.pop_front());
                    }
                    *t.skipping = true;
                }
                Some(head) if h.tag == b'Z' && head != Expect::Sync && head != Expect::Query => {
                    // Entries before the Sync this answers were skipped after an error.
                    while q.front().is_some_and(|e| *e != Expect::Sync) {
                        t.dropped.extend(q.pop_front());
                    }
                    q.pop_front();
                    *t.skipping = false;
                }
                _ => {}
            }
        }
        match h.tag {
            b'Z' => {
                let Some(&status) = rest.get(5) else {
                    return FromServer::NeedMore;
                };
                tx.expected = tx.expected.saturating_sub(1);
                tx.status = TxStatus::from_byte(status);
                scan.pass(h.total, buf.len());
                return FromServer::ReadyForQuery;
            }
            b'S' if h.total <= MAX_INSPECTED => {
                let Some(body) = rest.get(5..h.total) else {
                    return FromServer::NeedMore;
                };
                scan.pass(h.total, buf.len());
                if let Some((k, v)) = crate::wire::fields::parameter_status(body) {
                    return FromServer::Parameter(k, v);
                }
            }
            _ => scan.pass(h.total, buf.len()),
        }
    }
}

/// Whether a whole message must be in the buffer before `from_server` can judge it.
pub fn wants_whole(buf: &[u8], scan: &Scan, own: u32) -> Option<usize> {
    if scan.remaining > 0 {
        return None;
    }
    let h = frame::header(&buf[scan.ready..], usize::MAX).ok()??;
    let whole = own > 0 || matches!(h.tag, b'Z' | b'S');
    (whole && h.total <= MAX_INSPECTED).then_some(h.total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn simple_query_counts_one_ready_for_query() {
        let buf = msg(b'Q', b"select 1\0");
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None),
            FromClient::NeedMore
        );
        assert_eq!(scan.ready, buf.len());
        assert_eq!(tx.expected, 1);
        assert!(tx.in_request());
    }

    #[test]
    fn pipeline_counts_every_sync() {
        let one = cat(&[
            msg(b'P', b"\0select 1\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]);
        let buf = cat(&[one.clone(), one.clone(), one]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None);
        assert_eq!(tx.expected, 3);
        assert!(!tx.unsynced);

        let z = msg(b'Z', b"I");
        let mut s = Scan::default();
        for left in [2, 1, 0] {
            assert_eq!(
                from_server(&z, &mut s, &mut tx, 0, None),
                FromServer::ReadyForQuery
            );
            assert_eq!(tx.expected, left);
            assert_eq!(tx.is_idle(), left == 0);
            s = Scan::default();
        }
    }

    #[test]
    fn extended_without_sync_holds_the_server() {
        let buf = cat(&[
            msg(b'P', b"\0select 1\0\0\0"),
            msg(b'D', b"S\0"),
            msg(b'H', b""),
        ]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None);
        assert!(tx.unsynced);
        assert!(!tx.is_idle());
    }

    #[test]
    fn flush_with_a_body_holds_the_server_until_sync_even_when_partial() {
        // A Sync, then a Flush whose declared body has not all arrived.
        let mut buf = cat(&[msg(b'S', b"")]);
        buf.extend_from_slice(&[b'H', 0, 0, 0xf8, 0x04, b'X', 0, 0, 0, 4]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None);
        assert!(tx.unsynced, "{tx:?}");
        assert_eq!(tx.expected, 1);
        // A plain Flush changes nothing.
        let buf = cat(&[msg(b'S', b""), msg(b'H', b"")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None);
        assert!(!tx.unsynced);
    }

    #[test]
    fn named_parse_is_refused_unless_allowed() {
        let buf = cat(&[msg(b'S', b""), msg(b'P', b"s1\0select 1\0\0\0")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None),
            FromClient::NamedParse
        );
        assert_eq!(scan.ready, 5, "the Sync before it still goes");
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, Named::Pass, 1 << 20, None),
            FromClient::NeedMore
        );
        assert_eq!(scan.ready, buf.len());
    }

    #[test]
    fn terminate_stops_the_scan() {
        let buf = cat(&[msg(b'Q', b"x\0"), msg(b'X', b"")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None),
            FromClient::Terminate
        );
        assert_eq!(scan.ready, 7);
    }

    #[test]
    fn long_messages_stream_in_pieces() {
        let big = msg(b'd', &[7u8; 1000]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(
                &big[..100],
                &mut scan,
                &mut tx,
                Named::Refuse,
                1 << 20,
                None
            ),
            FromClient::NeedMore
        );
        assert_eq!((scan.ready, scan.remaining), (100, 905));
        scan.sent(100);
        // The next read brings the rest of the message (the buffer now starts at offset 100).
        assert_eq!(
            from_client(
                &big[100..],
                &mut scan,
                &mut tx,
                Named::Refuse,
                1 << 20,
                None
            ),
            FromClient::NeedMore
        );
        assert_eq!((scan.ready, scan.remaining), (905, 0));
    }

    #[test]
    fn oversized_client_message_is_refused() {
        let buf = msg(b'Q', &[b'a'; 100]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert!(matches!(
            from_client(&buf, &mut scan, &mut tx, Named::Refuse, 50, None),
            FromClient::Bad(_)
        ));
    }

    #[test]
    fn errors_inside_transactions_keep_status() {
        let mut tx = TxState {
            expected: 1,
            ..TxState::new()
        };
        let buf = cat(&[msg(b'E', b"SERROR\0\0"), msg(b'Z', b"E")]);
        let mut scan = Scan::default();
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 0, None),
            FromServer::ReadyForQuery
        );
        assert_eq!(tx.status, TxStatus::Failed);
        assert!(!tx.is_idle());
    }

    #[test]
    fn ready_for_query_waits_for_status_byte() {
        let buf = msg(b'Z', b"T");
        let mut tx = TxState {
            expected: 1,
            ..TxState::new()
        };
        let mut scan = Scan::default();
        assert_eq!(
            from_server(&buf[..5], &mut scan, &mut tx, 0, None),
            FromServer::NeedMore
        );
        assert_eq!(tx.expected, 1);
        assert_eq!(wants_whole(&buf[..5], &scan, 0), Some(6));
    }

    #[test]
    fn parameter_status_is_reported_and_passed() {
        let buf = cat(&[msg(b'S', b"TimeZone\0UTC\0"), msg(b'C', b"SET\0")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 0, None),
            FromServer::Parameter("TimeZone", "UTC")
        );
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 0, None),
            FromServer::NeedMore
        );
        assert_eq!(scan.ready, buf.len());
    }

    #[test]
    fn own_answers_are_swallowed_after_ready_bytes_flush() {
        let buf = cat(&[msg(b'C', b"SET\0"), msg(b'Z', b"I")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 1, None),
            FromServer::Own {
                tag: b'C',
                body: b"SET\0"
            }
        );
        assert_eq!(scan.ready, 0);
    }

    fn drain(q: &VecDeque<Expect>) -> Vec<Expect> {
        q.iter().copied().collect()
    }

    #[test]
    fn rewrite_mode_stops_at_named_messages_and_queues_the_rest() {
        let buf = cat(&[
            msg(b'P', b"\0select 1\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'D', b"P\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
            msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
        ]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        let mut q = VecDeque::new();
        let v = from_client(
            &buf,
            &mut scan,
            &mut tx,
            Named::Rewrite,
            1 << 20,
            Some(&mut q),
        );
        assert_eq!(v, FromClient::Rewrite);
        assert_eq!(
            drain(&q),
            [
                Expect::Parse,
                Expect::Bind,
                Expect::DescribePortal,
                Expect::Execute,
                Expect::Sync
            ]
        );
        assert_eq!(&buf[scan.ready..scan.ready + 1], b"B");
        // The same bytes in session pooling pass through.
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        let v = from_client(&buf, &mut scan, &mut tx, Named::Pass, 1 << 20, None);
        assert_eq!((v, scan.ready), (FromClient::NeedMore, buf.len()));
    }

    #[test]
    fn messages_sent_after_an_error_before_sync_are_skipped_too() {
        // The error empties the queue; the client then sends more of the same pipeline
        // (a pooler-made ParseComplete among it) and finally its Sync.
        let mut q: VecDeque<Expect> = [Expect::Bind, Expect::Execute].into();
        let (mut dropped, mut skipping) = (Vec::new(), false);
        let err = msg(b'E', b"SERROR\0\0");
        let (mut scan, mut tx) = (
            Scan::default(),
            TxState {
                expected: 0,
                ..TxState::new()
            },
        );
        let track = Tracking {
            queue: &mut q,
            dropped: &mut dropped,
            skipping: &mut skipping,
        };
        assert_eq!(
            from_server(&err, &mut scan, &mut tx, 0, Some(track)),
            FromServer::NeedMore
        );
        assert!(skipping && q.is_empty());
        q.extend([
            Expect::MadeParse(2),
            Expect::Bind,
            Expect::Execute,
            Expect::Sync,
            Expect::Query,
        ]);
        tx.expected = 2;
        // No ParseComplete is made while the server skips; its ReadyForQuery ends the skip.
        let z = msg(b'Z', b"I");
        let mut scan = Scan::default();
        let track = Tracking {
            queue: &mut q,
            dropped: &mut dropped,
            skipping: &mut skipping,
        };
        assert_eq!(
            from_server(&z, &mut scan, &mut tx, 0, Some(track)),
            FromServer::ReadyForQuery
        );
        assert!(!skipping);
        assert_eq!(drain(&q), [Expect::Query]);
        assert_eq!(tx.expected, 1);
    }

    #[test]
    fn deallocate_all_is_recognised() {
        for q in [
            "DEALLOCATE ALL\0",
            " deallocate  prepare all ;\0",
            "discard all\0",
        ] {
            assert!(forgets_all(q.as_bytes()), "{q}");
        }
        for q in [
            "DEALLOCATE x\0",
            "DISCARD PLANS\0",
            "select 1\0",
            "deallocate all; select 1\0",
        ] {
            assert!(!forgets_all(q.as_bytes()), "{q}");
        }
        let buf = msg(b'Q', b"DEALLOCATE ALL\0");
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        let v = from_client(&buf, &mut scan, &mut tx, Named::Rewrite, 1 << 20, None);
        assert_eq!((v, tx.expected), (FromClient::Rewrite, 0));
    }

    #[test]
    fn bind_waits_for_its_names() {
        let full = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        let v = from_client(
            &full[..7],
            &mut scan,
            &mut tx,
            Named::Rewrite,
            1 << 20,
            None,
        );
        assert_eq!((v, scan.ready), (FromClient::NeedMore, 0));
    }

    #[test]
    fn answers_are_matched_and_made_ones_come_in_order() {
        let mut q: VecDeque<Expect> = [
            Expect::Execute,
            Expect::MadeParse(2),
            Expect::HiddenParse(1),
            Expect::Bind,
            Expect::Sync,
        ]
        .into();
        let buf = cat(&[
            msg(b'D', b"\0\0"),
            msg(b'C', b"SELECT 1\0"),
            msg(b'1', b""),
            msg(b'2', b""),
        ]);
        let (mut scan, mut tx) = (
            Scan::default(),
            TxState {
                expected: 1,
                ..TxState::new()
            },
        );
        // The Execute's rows and completion pass; then our ParseComplete is due.
        assert_eq!(
            from_server(
                &buf,
                &mut scan,
                &mut tx,
                0,
                Some(Tracking {
                    queue: &mut q,
                    dropped: &mut Vec::new(),
                    skipping: &mut false,
                })
            ),
            FromServer::Made
        );
        assert_eq!(scan.ready, 7 + 14);
        q.pop_front();
        // The hidden ParseComplete waits until the ready bytes are out...
        assert_eq!(
            from_server(
                &buf,
                &mut scan,
                &mut tx,
                0,
                Some(Tracking {
                    queue: &mut q,
                    dropped: &mut Vec::new(),
                    skipping: &mut false,
                })
            ),
            FromServer::NeedMore
        );
        let rest = &buf[scan.ready..];
        let mut scan = Scan::default();
        assert_eq!(
            from_server(
                rest,
                &mut scan,
                &mut tx,
                0,
                Some(Tracking {
                    queue: &mut q,
                    dropped: &mut Vec::new(),
                    skipping: &mut false,
                })
            ),
            FromServer::Hidden(5)
        );
        let rest = &rest[5..];
        assert_eq!(
            from_server(
                rest,
                &mut scan,
                &mut tx,
                0,
                Some(Tracking {
                    queue: &mut q,
                    dropped: &mut Vec::new(),
                    skipping: &mut false,
                })
            ),
            FromServer::NeedMore
        );
        assert_eq!(scan.ready, 5);
        assert_eq!(drain(&q), [Expect::Sync]);
    }

    #[test]
    fn an_error_skips_answers_until_sync() {
        let mut q: VecDeque<Expect> = [
            Expect::Prepare { id: 1, n: 1 },
            Expect::HiddenClose(2),
            Expect::MadeParse(2),
            Expect::Execute,
            Expect::Sync,
        ]
        .into();
        let mut dropped = Vec::new();
        let buf = cat(&[msg(b'E', b"SERROR\0\0"), msg(b'Z', b"I")]);
        let (mut scan, mut tx) = (
            Scan::default(),
            TxState {
                expected: 1,
                ..TxState::new()
            },
        );
        let track = Tracking {
            queue: &mut q,
            dropped: &mut dropped,
            skipping: &mut false,
        };
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 0, Some(track)),
            FromServer::ReadyForQuery
        );
        assert!(q.is_empty());
        assert!(tx.is_idle());
        // What the failed Parse and the skipped messages assumed is left for the caller to undo.
        assert_eq!(
            dropped,
            [
                Expect::Prepare { id: 1, n: 1 },
                Expect::HiddenClose(2),
                Expect::MadeParse(2),
                Expect::Execute
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn scans_never_panic_or_overrun(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let (mut scan, mut tx) = (Scan::default(), TxState::new());
            let _ = from_client(&buf, &mut scan, &mut tx, Named::Refuse, 1 << 20, None);
            proptest::prop_assert!(scan.ready <= buf.len());
            let mut scan = Scan::default();
            let _ = from_server(&buf, &mut scan, &mut tx, 0, None);
            proptest::prop_assert!(scan.ready <= buf.len());
            let _ = wants_whole(&buf, &scan, 1);
            let mut q = VecDeque::new();
            let (mut scan, mut tx) = (Scan::default(), TxState::new());
            let _ = from_client(&buf, &mut scan, &mut tx, Named::Rewrite, 1 << 20, Some(&mut q));
            proptest::prop_assert!(scan.ready <= buf.len());
            let mut scan = Scan::default();
            let _ = from_server(&buf, &mut scan, &mut tx, 0, Some(Tracking { queue: &mut q, dropped: &mut Vec::new(), skipping: &mut false }));
            proptest::prop_assert!(scan.ready <= buf.len());
        }
    }
}
