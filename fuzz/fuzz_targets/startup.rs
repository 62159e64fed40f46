//! Fuzz target: the first-packet decoder never panics, consumes exactly the packet it reports, and its verdicts are final.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::params;
use pgbouncers_worker::wire::startup::{decode, FirstPacket};
use pgbouncers_worker::wire::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_LEN, SSL_REQUEST_CODE,
};

/// The packet's bytes as a client would send them.
fn encode(packet: &FirstPacket) -> Vec<u8> {
    let mut body = Vec::new();
    let code = match packet {
        FirstPacket::SslRequest => SSL_REQUEST_CODE,
        FirstPacket::GssEncRequest => GSSENC_REQUEST_CODE,
        FirstPacket::Cancel { pid, key } => {
            body.extend_from_slice(&pid.to_be_bytes());
            body.extend_from_slice(key);
            CANCEL_REQUEST_CODE
        }
        FirstPacket::Startup(s) => {
            for (k, v) in &s.params {
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            (u32::from(s.major) << 16) | u32::from(s.minor)
        }
    };
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    let verdict = decode(data);
    match &verdict {
        Ok(Some((packet, n))) => {
            let n = *n;
            assert!((8..=MAX_STARTUP_LEN).contains(&n) && n <= data.len());
            // Exactly the consumed bytes, no more and no less, make up the packet.
            assert_eq!(encode(packet), &data[..n], "re-encoding differs");
            assert_eq!(decode(&data[..n]), Ok(Some((packet.clone(), n))));
            for cut in [0, 3, 4, 7, 8, n / 2, n - 1] {
                assert_eq!(decode(&data[..cut.min(n - 1)]), Ok(None), "prefix {cut}");
            }
            match packet {
                FirstPacket::Startup(s) => {
                    assert_eq!(s.major, 3);
                    for (k, _) in &s.params {
                        assert!(!k.is_empty());
                    }
                    if let Some((k, v)) = s.params.first() {
                        assert_eq!(s.get(k), Some(v.as_str()));
                    }
                    // The pooler parses the options parameter next.
                    if let Some(options) = s.get("options") {
                        let _ = params::parse_options(options);
                    }
                }
                FirstPacket::Cancel { key, .. } => assert!((4..=256).contains(&key.len())),
                FirstPacket::SslRequest | FirstPacket::GssEncRequest => assert_eq!(n, 8),
            }
        }
        Ok(None) => {
            // Waiting is only for bytes that have not come yet.
            if data.len() >= 8 {
                let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                assert!(data.len() < len, "waits with all {len} bytes there");
            }
        }
        Err(e) => {
            let _ = e.to_string();
            // More bytes never rescue a bad packet.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0; 16]);
            assert_eq!(decode(&longer), verdict, "an error changed with more input");
        }
    }
});
