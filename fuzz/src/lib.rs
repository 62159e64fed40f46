//! Shared pieces of the fuzz targets: input splitting, chunked delivery, pooler-like relay drivers and SCRAM arithmetic.

use std::collections::VecDeque;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use pgbouncers_worker::relay::{
    self, Expect, FromClient, FromServer, Named, Scan, Tracking, TxState,
};
use pgbouncers_worker::wire::frame::{self, FrameError};
use sha2::{Digest, Sha256};

/// Separates the fields of multi-part inputs: no UTF-8 text holds this byte, so text
/// fields lose nothing by never containing it.
pub const SEP: u8 = 0xFF;

/// Splits `data` on [`SEP`] into exactly `N` fields; missing ones are empty and the last
/// one keeps any further separators.
pub fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&data[..0]; N];
    for (slot, part) in out.iter_mut().zip(data.splitn(N, |&b| b == SEP)) {
        *slot = part;
    }
    out
}

/// Chunk sizes adding up to `len`, as reads off a socket might deliver them: `seed` 0 is
/// everything at once, 1 is byte by byte, anything else a pseudo-random mix.
pub fn chunk_sizes(len: usize, seed: u8) -> Vec<usize> {
    // Always at least one read, even an empty one: the pump judges on every event.
    match seed {
        _ if len == 0 => return vec![0],
        0 => return vec![len],
        1 => return vec![1; len],
        _ => {}
    }
    let span = 1 + usize::from(seed % 37) * 3;
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % span).min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Where a run of bytes from one side went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// Passed through unchanged: `(start, len)` in the input stream.
    Forward(usize, usize),
    /// A whole message the pooler took over (rewrote or answered itself).
    Taken(usize, usize),
}

fn push_forward(segs: &mut Vec<Seg>, start: usize, len: usize) {
    if len == 0 {
        return;
    }
    if let Some(Seg::Forward(s, l)) = segs.last_mut() {
        if *s + *l == start {
            *l += len;
            return;
        }
    }
    segs.push(Seg::Forward(start, len));
}

/// Why a client run stopped, with the stream offset of the message concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEnd {
    /// Input ran out.
    Pending,
    Terminate(usize),
    NamedParse(usize),
    /// A message type no frontend sends after login.
    Unknown(usize),
    Bad(usize, FrameError),
}

/// Everything observable about feeding a client's bytes to `relay::from_client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRun {
    pub segs: Vec<Seg>,
    pub end: ClientEnd,
    pub tx: TxState,
    pub queue: Vec<Expect>,
}

/// Feeds `input` in chunks of `sizes` to `from_client` the way the pooler's pump does:
/// ready bytes are written out (dropped from the buffer), messages the pooler rewrites
/// are taken whole, and the scan resumes. Checks the scanner's promises on every call.
pub fn drive_client(input: &[u8], sizes: &[usize], named: Named, max_packet: usize) -> ClientRun {
    let mut buf: Vec<u8> = Vec::new();
    // Stream offset of buf[0].
    let mut base = 0usize;
    let mut fed = 0usize;
    let mut scan = Scan::default();
    let mut tx = TxState::new();
    let mut queue = VecDeque::new();
    let mut segs = Vec::new();
    let mut calls = 0usize;
    for &size in sizes {
        buf.extend_from_slice(&input[fed..fed + size]);
        fed += size;
        loop {
            // Each call either moves bytes out, takes a message, ends the run or waits for
            // input, so a few calls per input byte is a generous bound.
            calls += 1;
            assert!(
                calls <= 4 * input.len() + 16,
                "from_client makes no progress"
            );
            let before = scan;
            let q = (named == Named::Rewrite).then_some(&mut queue);
            let verdict = relay::from_client(&buf, &mut scan, &mut tx, named, max_packet, q);
            assert!(
                scan.ready <= buf.len(),
                "ready {} > buffered {}",
                scan.ready,
                buf.len()
            );
            assert!(scan.ready >= before.ready, "ready went backwards");
            if scan.remaining > 0 {
                assert_eq!(verdict, FromClient::NeedMore, "streaming but {verdict:?}");
                assert_eq!(
                    scan.ready,
                    buf.len(),
                    "streaming stopped short of the buffer"
                );
            }
            let flush =
                |buf: &mut Vec<u8>, scan: &mut Scan, base: &mut usize, segs: &mut Vec<Seg>| {
                    let n = scan.ready;
                    push_forward(segs, *base, n);
                    buf.drain(..n);
                    *base += n;
                    scan.sent(n);
                };
            match verdict {
                FromClient::NeedMore => {
                    if scan.remaining == 0 {
                        // Only an incomplete message may be left unjudged.
                        let rest = &buf[scan.ready..];
                        let judged = frame::header(rest, max_packet);
                        match judged {
                            Ok(None) => assert!(rest.len() < 5),
                            Ok(Some(h)) => assert!(
                                rest.len() < h.total,
                                "NeedMore with a whole {:?} message buffered",
                                h.tag as char
                            ),
                            Err(e) => panic!("NeedMore before a bad header: {e:?}"),
                        }
                    }
                    flush(&mut buf, &mut scan, &mut base, &mut segs);
                    break;
                }
                _ if scan.ready > 0 => {
                    // The pump writes what is ready first; the same message is judged again.
                    flush(&mut buf, &mut scan, &mut base, &mut segs);
                }
                FromClient::Terminate => {
                    assert_eq!(buf.first(), Some(&b'X'));
                    return ClientRun::finish(segs, ClientEnd::Terminate(base), tx, queue);
                }
                FromClient::NamedParse => {
                    assert_eq!(named, Named::Refuse);
                    assert_eq!(buf.first(), Some(&b'P'));
                    return ClientRun::finish(segs, ClientEnd::NamedParse(base), tx, queue);
                }
                FromClient::Rewrite => {
                    assert_eq!(named, Named::Rewrite);
                    let h = frame::header(&buf, max_packet)
                        .expect("Rewrite of a message with a bad header")
                        .expect("Rewrite without a header");
                    assert!(b"PBDCQ".contains(&h.tag), "Rewrite of {:?}", h.tag as char);
                    if buf.len() < h.total {
                        break;
                    }
                    buf.drain(..h.total);
                    segs.push(Seg::Taken(base, h.total));
                    base += h.total;
                    // As the pooler does after rewriting.
                    tx.unsynced = h.tag != b'Q';
                }
                FromClient::Unknown(tag) => {
                    assert_eq!(buf.first(), Some(&tag));
                    assert!(!relay::known_after_login(tag));
                    return ClientRun::finish(segs, ClientEnd::Unknown(base), tx, queue);
                }
                FromClient::Bad(e) => {
                    assert_eq!(frame::header(&buf, max_packet), Err(e));
                    return ClientRun::finish(segs, ClientEnd::Bad(base, e), tx, queue);
                }
            }
        }
    }
    ClientRun::finish(segs, ClientEnd::Pending, tx, queue)
}

impl ClientRun {
    fn finish(segs: Vec<Seg>, end: ClientEnd, tx: TxState, queue: VecDeque<Expect>) -> ClientRun {
        ClientRun {
            segs,
            end,
            tx,
            queue: queue.into_iter().collect(),
        }
    }
}

/// Longest statement/portal name region the scanner looks into (relay's `MAX_NAMES`).
pub const MAX_NAMES: usize = 1024;

/// Recomputes from the input alone what a client run must have concluded, and checks the
/// run against it: the segments tile the input from 0 along message boundaries, no
/// message the mode forbids went through, and the transaction state and expected answers
/// are what the forwarded messages imply.
pub fn check_client_model(input: &[u8], run: &ClientRun, named: Named, max_packet: usize) {
    let mut tx = TxState::new();
    let mut queue = Vec::new();
    let mut pos = 0usize;
    let mut last_partial = false;
    for seg in &run.segs {
        let (start, len, taken) = match *seg {
            Seg::Forward(s, l) => (s, l, false),
            Seg::Taken(s, l) => (s, l, true),
        };
        assert!(!last_partial, "bytes after a partly forwarded message");
        assert_eq!(start, pos, "segments leave a gap or overlap");
        let end = start + len;
        assert!(end <= input.len());
        while pos < end {
            let h = frame::header(&input[pos..], max_packet)
                .expect("a forwarded message has a bad header")
                .expect("a forwarded message lacks its header");
            let body = &input[pos + 5..input.len().min(pos + h.total)];
            if taken {
                assert_eq!(pos + h.total, end, "a taken segment is not one message");
                tx.unsynced = h.tag != b'Q';
            } else {
                let whole = pos + h.total <= end;
                check_forwarded(h.tag, body, h.total, whole, named);
                let expect = match h.tag {
                    b'Q' | b'F' => Some(Expect::Query),
                    b'S' => Some(Expect::Sync),
                    b'P' | b'B' | b'D' | b'C' => Some(relay::plain_expect(h.tag, body)),
                    b'E' => Some(Expect::Execute),
                    _ => None,
                };
                match h.tag {
                    b'Q' | b'F' | b'S' => {
                        tx.expected += 1;
                        tx.unsynced = false;
                    }
                    b'P' | b'B' | b'D' | b'C' | b'E' => tx.unsynced = true,
                    // PostgreSQL answers a Flush with a body with an error, then skips to
                    // the next Sync: the server stays busy until that Sync. Judged on the
                    // header, like every message, even when the body has not all arrived.
                    b'H' if h.total != 5 => tx.unsynced = true,
                    _ => {}
                }
                queue.extend(expect);
                if !whole {
                    last_partial = true;
                }
            }
            pos += h.total;
        }
    }
    if last_partial {
        assert_eq!(run.end, ClientEnd::Pending, "a run ended inside a message");
        let covered = match run.segs.last() {
            Some(Seg::Forward(s, l) | Seg::Taken(s, l)) => s + l,
            None => 0,
        };
        assert_eq!(
            covered,
            input.len(),
            "streaming stopped before the input's end"
        );
    }
    assert_eq!(
        run.tx, tx,
        "transaction state differs from the forwarded messages"
    );
    if named == Named::Rewrite {
        assert_eq!(
            run.queue, queue,
            "expected answers differ from the forwarded messages"
        );
    } else {
        assert!(run.queue.is_empty());
    }
    match run.end {
        ClientEnd::Terminate(at)
        | ClientEnd::NamedParse(at)
        | ClientEnd::Unknown(at)
        | ClientEnd::Bad(at, _) => {
            assert_eq!(at, pos, "the run ended away from the next message");
        }
        ClientEnd::Pending => {}
    }
}

fn check_forwarded(tag: u8, body: &[u8], total: usize, whole: bool, named: Named) {
    assert_ne!(tag, b'X', "a Terminate was forwarded");
    assert!(
        relay::known_after_login(tag),
        "unknown message type {tag:#x} was forwarded"
    );
    match (named, tag) {
        (Named::Refuse, b'P') => {
            assert!(body.first().is_none_or(|&b| b == 0), "a named Parse passed")
        }
        (Named::Rewrite, b'P') => {
            assert!(body.first().is_none_or(|&b| b == 0), "a named Parse passed")
        }
        (Named::Rewrite, b'B') => {
            // Names that end within the part the scanner looks at must be empty.
            // (Longer names are judged unnamed once MAX_NAMES bytes are in, by design.)
            if let Some((_, stmt)) = relay::bind_names(&body[..body.len().min(MAX_NAMES)]) {
                assert!(stmt.is_empty(), "a Bind to a named statement passed");
            }
        }
        (Named::Rewrite, b'D' | b'C') => {
            if let [b'S', n, ..] = body {
                assert_eq!(*n, 0, "a {} of a named statement passed", tag as char);
            }
        }
        (Named::Rewrite, b'Q') if whole && total <= 5 + 64 => {
            assert!(!relay::forgets_all(body), "DEALLOCATE/DISCARD ALL passed");
        }
        _ => {}
    }
}

/// One thing the pooler learns from a server, with the stream offset it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Ready {
        at: usize,
        status: pgbouncers_worker::relay::TxStatus,
    },
    Parameter {
        at: usize,
        name: String,
        value: String,
    },
    Own {
        at: usize,
        tag: u8,
        len: usize,
    },
    Hidden {
        at: usize,
        len: usize,
    },
    Made {
        at: usize,
        expect: Expect,
    },
    Dropped(Expect),
    Bad {
        at: usize,
        error: FrameError,
    },
}

/// Everything observable about feeding a server's bytes to `relay::from_server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRun {
    pub segs: Vec<Seg>,
    pub events: Vec<ServerEvent>,
    pub tx: TxState,
    pub own: u32,
    pub queue: Vec<Expect>,
    pub skipping: bool,
}

/// The state a server link starts a run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStart {
    pub own: u32,
    pub track: bool,
    pub queue: Vec<Expect>,
    pub skipping: bool,
    pub tx: TxState,
}

/// Feeds `input` in chunks of `sizes` to `from_server` the way the pump does: ready bytes
/// go to the client, swallowed and hidden messages are consumed, the pooler's own answers
/// are made when due. Checks the scanner's promises on every call.
pub fn drive_server(input: &[u8], sizes: &[usize], start: &ServerStart) -> ServerRun {
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0usize;
    let mut fed = 0usize;
    let mut scan = Scan::default();
    let mut tx = start.tx.clone();
    let mut own = start.own;
    let mut queue: VecDeque<Expect> = start.queue.iter().copied().collect();
    let mut skipping = start.skipping;
    let mut dropped = Vec::new();
    let mut segs = Vec::new();
    let mut events = Vec::new();
    let mut calls = 0usize;
    let flush = |buf: &mut Vec<u8>, scan: &mut Scan, base: &mut usize, segs: &mut Vec<Seg>| {
        let n = scan.ready;
        push_forward(segs, *base, n);
        buf.drain(..n);
        *base += n;
        scan.sent(n);
    };
    'input: for &size in sizes {
        buf.extend_from_slice(&input[fed..fed + size]);
        fed += size;
        loop {
            calls += 1;
            assert!(
                calls <= 4 * input.len() + 4 * start.queue.len() + 16,
                "from_server makes no progress"
            );
            let before = scan;
            let track = start.track.then_some(Tracking {
                queue: &mut queue,
                dropped: &mut dropped,
                skipping: &mut skipping,
            });
            let verdict = relay::from_server(&buf, &mut scan, &mut tx, own, track);
            assert!(
                scan.ready <= buf.len(),
                "ready {} > buffered {}",
                scan.ready,
                buf.len()
            );
            assert!(scan.ready >= before.ready, "ready went backwards");
            if !start.track {
                assert!(dropped.is_empty());
            }
            events.extend(dropped.drain(..).map(ServerEvent::Dropped));
            if scan.remaining > 0 {
                // A ReadyForQuery longer than PostgreSQL's 6 bytes is judged by its status
                // byte and streams like any other message.
                if verdict != FromServer::ReadyForQuery {
                    assert_eq!(verdict, FromServer::NeedMore, "streaming but {verdict:?}");
                }
                assert_eq!(
                    scan.ready,
                    buf.len(),
                    "streaming stopped short of the buffer"
                );
            }
            match verdict {
                FromServer::NeedMore => {
                    if scan.ready == 0 && scan.remaining == 0 {
                        // Only an incomplete message may be left unjudged.
                        match frame::header(&buf, usize::MAX) {
                            Ok(None) => assert!(buf.len() < 5),
                            Ok(Some(h)) => assert!(
                                buf.len() < h.total,
                                "NeedMore with a whole {:?} message at the front",
                                h.tag as char
                            ),
                            Err(e) => panic!("NeedMore before a bad header: {e:?}"),
                        }
                        if let Some(total) = relay::wants_whole(&buf, &scan, own) {
                            assert!(total <= relay::MAX_INSPECTED);
                            assert!(buf.len() < total, "wants a whole message it has");
                        }
                    }
                    if scan.ready > 0 {
                        flush(&mut buf, &mut scan, &mut base, &mut segs);
                        continue;
                    }
                    continue 'input;
                }
                FromServer::ReadyForQuery => {
                    assert_eq!(own, 0, "a ReadyForQuery passed while swallowing");
                    assert!(scan.ready >= 6);
                    events.push(ServerEvent::Ready {
                        // Where the message ends, however much of it has arrived.
                        at: base + scan.ready + scan.remaining,
                        status: tx.status,
                    });
                }
                FromServer::Parameter(name, value) => {
                    assert_eq!(own, 0);
                    events.push(ServerEvent::Parameter {
                        at: base + scan.ready,
                        name: name.to_owned(),
                        value: value.to_owned(),
                    });
                }
                FromServer::Own { tag, body } => {
                    assert!(own > 0, "swallowed with nothing of ours in flight");
                    assert_eq!(scan.ready, 0);
                    let len = body.len() + 5;
                    assert!(len <= buf.len() && len <= relay::MAX_INSPECTED);
                    assert_eq!(buf[0], tag);
                    assert_eq!(&buf[5..len], body);
                    events.push(ServerEvent::Own { at: base, tag, len });
                    segs.push(Seg::Taken(base, len));
                    buf.drain(..len);
                    base += len;
                    if tag == b'Z' {
                        own -= 1;
                    }
                }
                FromServer::Hidden(len) => {
                    assert!(start.track);
                    assert_eq!(scan.ready, 0);
                    let h = frame::header(&buf, usize::MAX).unwrap().unwrap();
                    assert_eq!(h.total, len);
                    assert!(len <= buf.len());
                    events.push(ServerEvent::Hidden { at: base, len });
                    segs.push(Seg::Taken(base, len));
                    buf.drain(..len);
                    base += len;
                }
                FromServer::Made => {
                    assert!(start.track && own == 0 && !skipping);
                    let head = queue.front().copied().expect("Made with an empty queue");
                    assert!(head.is_made(), "Made for {head:?}");
                    if scan.ready > 0 {
                        flush(&mut buf, &mut scan, &mut base, &mut segs);
                        continue;
                    }
                    queue.pop_front();
                    events.push(ServerEvent::Made {
                        at: base,
                        expect: head,
                    });
                }
                FromServer::Bad(error) => {
                    events.push(ServerEvent::Bad {
                        at: base + scan.ready,
                        error,
                    });
                    flush(&mut buf, &mut scan, &mut base, &mut segs);
                    break 'input;
                }
            }
        }
    }
    ServerRun {
        segs,
        events,
        tx,
        own,
        queue: queue.into_iter().collect(),
        skipping,
    }
}

/// Checks a server run against what the input alone implies: segments tile the input,
/// the queue only ever lost entries at its front, and each ReadyForQuery settled one
/// expected answer.
pub fn check_server_model(input: &[u8], start: &ServerStart, run: &ServerRun) {
    let mut pos = 0;
    for seg in &run.segs {
        let (s, l) = match *seg {
            Seg::Forward(s, l) | Seg::Taken(s, l) => (s, l),
        };
        assert_eq!(s, pos, "segments leave a gap or overlap");
        pos = s + l;
    }
    assert!(pos <= input.len());
    let kept = run.queue.len();
    assert!(kept <= start.queue.len());
    assert_eq!(
        run.queue[..],
        start.queue[start.queue.len() - kept..],
        "the queue lost entries other than at its front"
    );
    let readies = run
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Ready { .. }))
        .count();
    let owed = start.tx.expected.saturating_sub(readies as u32);
    assert_eq!(run.tx.expected, owed);
    let own_readies = run
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Own { tag: b'Z', .. }))
        .count();
    assert_eq!(run.own as usize + own_readies, start.own as usize);
    let popped = start.queue.len() - kept;
    let made = run
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Made { .. }))
        .count();
    let dropped = run
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Dropped(_)))
        .count();
    assert!(made + dropped <= popped);
}

/// Turns a byte into a queue entry.
pub fn expect_from(b: u8) -> Expect {
    match b % 13 {
        0 => Expect::Parse,
        1 => Expect::Bind,
        2 => Expect::DescribeStatement,
        3 => Expect::DescribePortal,
        4 => Expect::Execute,
        5 => Expect::Close,
        6 => Expect::Sync,
        7 => Expect::Query,
        8 => Expect::MadeParse,
        9 => Expect::MadeClose,
        10 => Expect::Prepare(u64::from(b)),
        11 => Expect::HiddenParse(u64::from(b)),
        _ => Expect::HiddenClose(u64::from(b)),
    }
}

pub type HmacSha256 = Hmac<Sha256>;

pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

pub fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// `(ClientKey, ServerKey)` for a password, as RFC 5802 derives them.
pub fn scram_keys(password: &[u8], salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations);
    (hmac(&salted, b"Client Key"), hmac(&salted, b"Server Key"))
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

    #[test]
    fn fields_split_and_pad() {
        let [a, b, c] = fields::<3>(b"x\xffy\xffz\xffw");
        assert_eq!((a, b, c), (&b"x"[..], &b"y"[..], &b"z\xffw"[..]));
        let [a, b] = fields::<2>(b"only");
        assert_eq!((a, b), (&b"only"[..], &b""[..]));
    }

    #[test]
    fn chunks_cover_the_input() {
        for seed in 0..=255u8 {
            assert_eq!(chunk_sizes(100, seed).iter().sum::<usize>(), 100);
            assert!(chunk_sizes(100, seed).iter().all(|&n| n > 0));
            assert_eq!(chunk_sizes(0, seed), [0]);
        }
    }

    #[test]
    fn client_pipeline_passes_and_counts() {
        let input = [
            msg(b'P', b"\0select 1\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
            msg(b'Q', b"DISCARD ALL\0"),
            msg(b'X', b""),
        ]
        .concat();
        for named in [Named::Pass, Named::Refuse, Named::Rewrite] {
            for seed in [0, 1, 7, 200] {
                let run = drive_client(&input, &chunk_sizes(input.len(), seed), named, 1 << 20);
                check_client_model(&input, &run, named, 1 << 20);
                assert!(matches!(run.end, ClientEnd::Terminate(_)), "{run:?}");
            }
        }
    }

    #[test]
    fn server_answers_pass() {
        let input = [
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'S', b"TimeZone\0UTC\0"),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        let start = ServerStart {
            own: 0,
            track: true,
            queue: vec![Expect::Parse, Expect::Bind, Expect::Execute, Expect::Sync],
            skipping: false,
            tx: TxState {
                expected: 1,
                ..TxState::new()
            },
        };
        let whole = drive_server(&input, &[input.len()], &start);
        check_server_model(&input, &start, &whole);
        assert!(whole.queue.is_empty());
        assert_eq!(whole.tx.expected, 0);
    }
}
