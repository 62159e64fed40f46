//! Relay decisions between a client and its server: which bytes pass through untouched,
//! and where the pooler must step in (no I/O; the event loop acts on the answers).
//!
//! Bytes are judged once, as they arrive: `ready` counts bytes at the front of the source
//! buffer cleared to go out as they are, `remaining` the part of the current message not yet
//! in the buffer. Only the headers (and a few small bodies) are looked at; bodies stream.

use crate::wire::frame::{self, FrameError};

/// Where a client's conversation with its server stands (transaction bookkeeping).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TxState {
    /// ReadyForQuery messages the server still owes: one per Query, Sync and FunctionCall.
    pub expected: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// Status of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
}

impl TxState {
    pub fn new() -> TxState {
        TxState {
            expected: 0,
            unsynced: false,
            status: b'I',
        }
    }

    /// Nothing is in flight and no transaction is open: the server may be released.
    pub fn is_idle(&self) -> bool {
        self.expected == 0 && !self.unsynced && self.status == b'I'
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
    fn stream(&mut self, avail: usize) {
        let take = self.remaining.min(avail - self.ready);
        self.ready += take;
        self.remaining -= take;
    }

    fn pass(&mut self, total: usize, avail: usize) {
        self.remaining = total;
        self.stream(avail);
    }
}

/// Why judging client bytes stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum FromClient {
    /// Everything buffered is judged; `ready` bytes may go.
    NeedMore,
    /// A Terminate at `ready`: the client is leaving.
    Terminate,
    /// A Parse of a named statement at `ready`, refused outside session pooling.
    NamedParse,
    /// A message too long or with a bad length.
    Bad(FrameError),
}

/// Judges bytes from a linked client. `named_ok`: session pooling keeps statements on one
/// server, so named Parse passes there.
pub fn from_client(
    buf: &[u8],
    scan: &mut Scan,
    tx: &mut TxState,
    named_ok: bool,
    max_packet: usize,
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
        match h.tag {
            b'X' => return FromClient::Terminate,
            b'Q' | b'F' => {
                tx.expected += 1;
                tx.unsynced = false;
            }
            b'S' => {
                tx.expected += 1;
                tx.unsynced = false;
            }
            b'P' => {
                if !named_ok {
                    match rest.get(5) {
                        None if h.total > 5 => return FromClient::NeedMore,
                        Some(&name) if name != 0 => return FromClient::NamedParse,
                        _ => {}
                    }
                }
                tx.unsynced = true;
            }
            b'B' | b'E' | b'D' | b'C' => tx.unsynced = true,
            _ => {}
        }
        scan.pass(h.total, buf.len());
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
    Bad(FrameError),
}

/// Longest message whose body the pooler reads whole (ParameterStatus, ReadyForQuery and
/// the answers to its own queries); longer ones are a protocol error from the server.
pub const MAX_INSPECTED: usize = 1 << 20;

/// Judges bytes from a server. `own` counts ReadyForQuery messages that answer the pooler's
/// own queries: everything up to and including them is swallowed.
pub fn from_server<'a>(
    buf: &'a [u8],
    scan: &mut Scan,
    tx: &mut TxState,
    own: u32,
) -> FromServer<'a> {
    loop {
        scan.stream(buf.len());
        if scan.remaining > 0 {
            return FromServer::NeedMore;
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
        match h.tag {
            b'Z' => {
                let Some(&status) = rest.get(5) else {
                    return FromServer::NeedMore;
                };
                tx.expected = tx.expected.saturating_sub(1);
                tx.status = status;
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
            from_client(&buf, &mut scan, &mut tx, false, 1 << 20),
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
        from_client(&buf, &mut scan, &mut tx, false, 1 << 20);
        assert_eq!(tx.expected, 3);
        assert!(!tx.unsynced);

        let z = msg(b'Z', b"I");
        let mut s = Scan::default();
        for left in [2, 1, 0] {
            assert_eq!(
                from_server(&z, &mut s, &mut tx, 0),
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
        from_client(&buf, &mut scan, &mut tx, false, 1 << 20);
        assert!(tx.unsynced);
        assert!(!tx.is_idle());
    }

    #[test]
    fn named_parse_is_refused_unless_allowed() {
        let buf = cat(&[msg(b'S', b""), msg(b'P', b"s1\0select 1\0\0\0")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, false, 1 << 20),
            FromClient::NamedParse
        );
        assert_eq!(scan.ready, 5, "the Sync before it still goes");
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, true, 1 << 20),
            FromClient::NeedMore
        );
        assert_eq!(scan.ready, buf.len());
    }

    #[test]
    fn terminate_stops_the_scan() {
        let buf = cat(&[msg(b'Q', b"x\0"), msg(b'X', b"")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&buf, &mut scan, &mut tx, false, 1 << 20),
            FromClient::Terminate
        );
        assert_eq!(scan.ready, 7);
    }

    #[test]
    fn long_messages_stream_in_pieces() {
        let big = msg(b'd', &[7u8; 1000]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_client(&big[..100], &mut scan, &mut tx, false, 1 << 20),
            FromClient::NeedMore
        );
        assert_eq!((scan.ready, scan.remaining), (100, 905));
        scan.sent(100);
        // The next read brings the rest of the message (the buffer now starts at offset 100).
        assert_eq!(
            from_client(&big[100..], &mut scan, &mut tx, false, 1 << 20),
            FromClient::NeedMore
        );
        assert_eq!((scan.ready, scan.remaining), (905, 0));
    }

    #[test]
    fn oversized_client_message_is_refused() {
        let buf = msg(b'Q', &[b'a'; 100]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert!(matches!(
            from_client(&buf, &mut scan, &mut tx, false, 50),
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
            from_server(&buf, &mut scan, &mut tx, 0),
            FromServer::ReadyForQuery
        );
        assert_eq!(tx.status, b'E');
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
            from_server(&buf[..5], &mut scan, &mut tx, 0),
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
            from_server(&buf, &mut scan, &mut tx, 0),
            FromServer::Parameter("TimeZone", "UTC")
        );
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 0),
            FromServer::NeedMore
        );
        assert_eq!(scan.ready, buf.len());
    }

    #[test]
    fn own_answers_are_swallowed_after_ready_bytes_flush() {
        let buf = cat(&[msg(b'C', b"SET\0"), msg(b'Z', b"I")]);
        let (mut scan, mut tx) = (Scan::default(), TxState::new());
        assert_eq!(
            from_server(&buf, &mut scan, &mut tx, 1),
            FromServer::Own {
                tag: b'C',
                body: b"SET\0"
            }
        );
        assert_eq!(scan.ready, 0);
    }

    proptest::proptest! {
        #[test]
        fn scans_never_panic_or_overrun(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let (mut scan, mut tx) = (Scan::default(), TxState::new());
            let _ = from_client(&buf, &mut scan, &mut tx, false, 1 << 20);
            proptest::prop_assert!(scan.ready <= buf.len());
            let mut scan = Scan::default();
            let _ = from_server(&buf, &mut scan, &mut tx, 0);
            proptest::prop_assert!(scan.ready <= buf.len());
            let _ = wants_whole(&buf, &scan, 1);
        }
    }
}
