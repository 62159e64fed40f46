//! Fuzz target: a connection's opening bytes (PROXY header, SSLRequest/GSSENCRequest, a direct-TLS ClientHello, the startup packet) decode to the same events however the reads split them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_fuzz::chunk_sizes;
use pgbouncers_worker::proxy_header::{self, Decoded};
use pgbouncers_worker::wire::startup::{self, FirstPacket};

/// What the client state machine learns, in order, until TLS or the startup packet ends
/// the cleartext part (after that the bytes are rustls's, or authentication's).
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Header { consumed: usize },
    NotProxy,
    /// SSLRequest or GSSENCRequest answered; GSSENC goes on in cleartext.
    Request(&'static str),
    /// A ClientHello where a length belongs: direct TLS.
    ClientHello,
    Startup { params: usize },
    Cancel,
    /// The connection is refused; nothing further is read.
    Refused,
}

#[derive(Clone, Copy)]
enum Stage {
    Proxy,
    Packet,
    Done,
}

/// Feeds `data` in reads of `sizes`, deciding after each read as the client code does:
/// whole units only, the rest waits in the buffer.
fn run(data: &[u8], sizes: &[usize], expect_header: bool, tls: bool) -> Vec<Event> {
    let mut events = Vec::new();
    let mut stage = if expect_header { Stage::Proxy } else { Stage::Packet };
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    for &n in sizes {
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            match stage {
                Stage::Done => return events,
                Stage::Proxy => match proxy_header::decode(&buf, 4096) {
                    Ok(Decoded::NeedMore) => break,
                    Ok(Decoded::NotProxy) => {
                        events.push(Event::NotProxy);
                        stage = Stage::Packet;
                    }
                    Ok(Decoded::Header { consumed, .. }) => {
                        assert!(consumed <= buf.len());
                        events.push(Event::Header { consumed });
                        buf.drain(..consumed);
                        stage = Stage::Packet;
                    }
                    Err(_) => {
                        events.push(Event::Refused);
                        stage = Stage::Done;
                    }
                },
                Stage::Packet => {
                    if tls && buf.first() == Some(&0x16) {
                        events.push(Event::ClientHello);
                        stage = Stage::Done;
                        continue;
                    }
                    match startup::decode(&buf) {
                        Ok(None) => break,
                        Ok(Some((packet, consumed))) => {
                            assert!(consumed > 0 && consumed <= buf.len());
                            buf.drain(..consumed);
                            match packet {
                                FirstPacket::SslRequest if tls => {
                                    events.push(Event::Request("ssl"));
                                    // TLS starts: what follows is rustls's.
                                    stage = Stage::Done;
                                }
                                FirstPacket::SslRequest => events.push(Event::Request("ssl-no")),
                                FirstPacket::GssEncRequest => events.push(Event::Request("gss")),
                                FirstPacket::Cancel { .. } => {
                                    events.push(Event::Cancel);
                                    stage = Stage::Done;
                                }
                                FirstPacket::Startup(s) => {
                                    events.push(Event::Startup {
                                        params: s.params.len(),
                                    });
                                    stage = Stage::Done;
                                }
                            }
                        }
                        Err(_) => {
                            events.push(Event::Refused);
                            stage = Stage::Done;
                        }
                    }
                }
            }
        }
    }
    events
}

fuzz_target!(|input: (u8, u8, &[u8])| {
    let (flags, seed, data) = input;
    let (expect_header, tls) = (flags & 1 != 0, flags & 2 != 0);
    let whole = run(data, &chunk_sizes(data.len(), 0), expect_header, tls);
    let split = run(data, &chunk_sizes(data.len(), seed), expect_header, tls);
    // A read boundary never changes what the bytes mean: a header, request or packet
    // split across reads decodes as it does in one.
    assert_eq!(whole, split, "reads {:?}", chunk_sizes(data.len(), seed));
    // The cleartext part ends at most once, and nothing follows its end.
    let ends = whole
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Refused
                    | Event::ClientHello
                    | Event::Startup { .. }
                    | Event::Cancel
                    | Event::Request("ssl")
            )
        })
        .count();
    assert!(ends <= 1, "{whole:?}");
    if let Some(i) = whole.iter().position(|e| {
        matches!(
            e,
            Event::Refused | Event::ClientHello | Event::Startup { .. } | Event::Cancel
        )
    }) {
        assert_eq!(i + 1, whole.len(), "{whole:?}");
    }
});
