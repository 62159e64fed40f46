//! Throughput of the PROXY header decoder: headers per second for v1 and v2 shapes HAProxy sends.
//!
//! `cargo bench -p pgbouncers-worker --bench proxy_header` (a plain `main`, no harness, so it
//! runs on the stable toolchain). Each case decodes the whole header from one buffer, which is
//! what happens when HAProxy's header arrives in one segment, and also byte by byte as the worst
//! case of a header split over many reads.

use pgbouncers_worker::proxy_header::{decode, Decoded};
use std::hint::black_box;
use std::time::Instant;

const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2(fam: u8, addrs: &[u8], tlvs: &[(u8, &[u8])], crc: bool) -> Vec<u8> {
    let mut body = addrs.to_vec();
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let crc_at = body.len() + 3;
    if crc {
        body.extend_from_slice(&[0x04, 0, 4, 0, 0, 0, 0]);
    }
    let mut h = SIG.to_vec();
    h.push(0x21);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    if crc {
        let sum = crc32c::crc32c(&h);
        let at = 16 + crc_at;
        h[at..at + 4].copy_from_slice(&sum.to_be_bytes());
    }
    h
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut a4 = Vec::new();
    a4.extend_from_slice(&[203, 0, 113, 7, 192, 0, 2, 1]);
    a4.extend_from_slice(&4242u16.to_be_bytes());
    a4.extend_from_slice(&5432u16.to_be_bytes());
    let mut a6 = Vec::new();
    a6.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    a6.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    a6.extend_from_slice(&4242u16.to_be_bytes());
    a6.extend_from_slice(&5432u16.to_be_bytes());
    vec![
        (
            "v1 TCP4",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 5432\r\n".to_vec(),
        ),
        (
            "v1 TCP6",
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 5432\r\n".to_vec(),
        ),
        ("v2 TCP4", v2(0x11, &a4, &[], false)),
        (
            "v2 TCP6 + ALPN, AUTHORITY, UNIQUE_ID, CRC32C",
            v2(
                0x21,
                &a6,
                &[
                    (0x01, b"postgresql"),
                    (0x02, b"db.example.com"),
                    (0x05, b"4f1c2a9e-5b7d-4e0a-9c3f-1d2e3f4a5b6c"),
                ],
                true,
            ),
        ),
    ]
}

fn main() {
    const N: u32 = 2_000_000;
    println!(
        "{:<46} {:>6} {:>12} {:>9} {:>14}",
        "header", "bytes", "headers/s", "ns/hdr", "split: ns/hdr"
    );
    for (name, h) in cases() {
        match decode(&h, 4096) {
            Ok(Decoded::Header { consumed, .. }) if consumed == h.len() => {}
            other => panic!("{name}: the decoder did not accept the benchmark header: {other:?}"),
        }
        let t = Instant::now();
        for _ in 0..N {
            black_box(decode(black_box(&h), black_box(4096)).ok());
        }
        let whole = t.elapsed().as_nanos() as f64 / f64::from(N);
        // Byte by byte: every prefix is decoded again as the event loop would after each read.
        let rounds = N / 20;
        let t = Instant::now();
        for _ in 0..rounds {
            for end in 1..=h.len() {
                black_box(decode(black_box(&h[..end]), black_box(4096)).ok());
            }
        }
        let split = t.elapsed().as_nanos() as f64 / f64::from(rounds);
        println!(
            "{name:<46} {:>6} {:>12.0} {whole:>9.1} {split:>14.1}",
            h.len(),
            1e9 / whole
        );
    }
}
