//! Minimal reproductions of the bugs the fuzz targets (fuzz/) found, one test per root cause.
//!
//! Each test states the behaviour a fix must give (the first four were fixed in 6215e59).

use std::collections::VecDeque;

use pgbouncers_worker::admin::parse::{parse, ParseError};
use pgbouncers_worker::relay::{
    from_server, Expect, FromServer, Scan, Tracking, TxState, TxStatus,
};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// fuzz target admin_parse: `parse_set` slices `r[..2]` to look for `TO`, which panics when
/// the text after the key starts with a multi-byte character. Any admin user can send it.
#[test]
fn admin_set_with_a_multibyte_character_after_the_key_is_refused_not_a_panic() {
    assert_eq!(parse("SET x €"), Err(ParseError::Invalid));
    assert_eq!(parse("set verR 'Ғx'"), Err(ParseError::Invalid));
}

/// fuzz target relay_server: with statements tracked, `from_server` pops the queue entry
/// a ReadyForQuery answers *before* checking that its status byte has arrived. When the
/// read ends inside the 6-byte message, the call returns NeedMore and the next call pops
/// again for the same message, so one ReadyForQuery consumes two entries (or more: every
/// call before the status byte arrives pops one).
#[test]
fn ready_for_query_split_by_reads_answers_one_queue_entry() {
    let z = msg(b'Z', b"I");
    let mut queue: VecDeque<Expect> = [Expect::Sync, Expect::Sync].into();
    let (mut dropped, mut skipping) = (Vec::new(), false);
    let mut tx = TxState {
        expected: 2,
        ..TxState::new()
    };
    let mut scan = Scan::default();
    // The first read brings the header, the second the status byte.
    for (avail, want) in [(5, FromServer::NeedMore), (6, FromServer::ReadyForQuery)] {
        let track = Tracking {
            queue: &mut queue,
            dropped: &mut dropped,
            skipping: &mut skipping,
        };
        assert_eq!(
            from_server(&z[..avail], &mut scan, &mut tx, 0, Some(track)),
            want
        );
    }
    assert_eq!(tx.expected, 1);
    assert_eq!(
        queue,
        [Expect::Sync],
        "one ReadyForQuery must settle exactly one Sync"
    );
    assert!(dropped.is_empty());
}

/// Same root cause, other branch: entries skipped after an error are drained up to the
/// Sync when the ReadyForQuery's header is seen, and the next call (status byte arrived)
/// pops the following Sync as well.
#[test]
fn ready_for_query_after_skipped_entries_split_by_reads_keeps_the_next_sync() {
    let z = msg(b'Z', b"I");
    let mut queue: VecDeque<Expect> = [Expect::Execute, Expect::Sync, Expect::Sync].into();
    let (mut dropped, mut skipping) = (Vec::new(), true);
    let mut tx = TxState {
        expected: 2,
        ..TxState::new()
    };
    let mut scan = Scan::default();
    for avail in [5, 6] {
        let track = Tracking {
            queue: &mut queue,
            dropped: &mut dropped,
            skipping: &mut skipping,
        };
        from_server(&z[..avail], &mut scan, &mut tx, 0, Some(track));
    }
    assert_eq!(dropped, [Expect::Execute]);
    assert_eq!(queue, [Expect::Sync], "the second Sync is still owed");
}

/// fuzz target relay_server: a ReadyForQuery whose length field is 4 (no status byte) is
/// accepted, and its "status" is read from the first byte of the *next* message, outside
/// the message. PostgreSQL's ReadyForQuery always has length 5; anything else should be a
/// protocol error (or at least never read past the message).
#[test]
fn ready_for_query_without_a_status_byte_does_not_read_the_next_message() {
    let buf = [b"Z\0\0\0\x04".to_vec(), msg(b'C', b"SELECT 1\0")].concat();
    let mut tx = TxState {
        expected: 1,
        ..TxState::new()
    };
    let mut scan = Scan::default();
    let verdict = from_server(&buf, &mut scan, &mut tx, 0, None);
    // The status starts Idle; a 'C' read from the next message would make it Failed.
    assert!(
        matches!(verdict, FromServer::Bad(_)) || tx.status == TxStatus::Idle,
        "status taken from the next message: {verdict:?}, status {:?}",
        tx.status
    );
}

/// fuzz target relay_server, in the fix for the two above: the BadLength for a
/// ReadyForQuery of the wrong length is built with `h.total as u32 - 1`. The largest length
/// field, 0xFFFF_FFFF, makes `total` 2^32, which is 0 as u32, and the subtraction
/// overflows: a panic wherever overflow checks are on (debug builds, tests, the fuzz
/// build); release builds wrap to the right value by luck.
#[test]
fn ready_for_query_with_the_largest_length_is_bad_not_an_overflow() {
    let buf = b"Z\xff\xff\xff\xff";
    let (mut scan, mut tx) = (Scan::default(), TxState::new());
    let verdict = from_server(buf, &mut scan, &mut tx, 0, None);
    assert!(matches!(verdict, FromServer::Bad(_)), "{verdict:?}");
}
