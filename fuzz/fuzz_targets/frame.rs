//! Fuzz target: message framing never panics, never trusts a length past the limit, and splits a stream into exactly its messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::relay;
use pgbouncers_worker::wire::fields::{parameter_status, ErrorFields};
use pgbouncers_worker::wire::frame::{header, message, FrameError};

const MAXES: [usize; 8] = [0, 4, 5, 6, 64, 8192, 1 << 30, usize::MAX];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut buf)) = data.split_first() else {
        return;
    };
    let max = MAXES[usize::from(pick) % MAXES.len()];
    // Walk the stream message by message, as both relay directions do.
    loop {
        let h = header(buf, max);
        let m = message(buf, max);
        match h {
            Ok(None) => {
                assert!(buf.len() < 5);
                assert_eq!(m, Ok(None));
                return;
            }
            Err(e) => {
                let _ = e.to_string();
                let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                match e {
                    FrameError::BadLength(tag, len) => {
                        assert!(tag == buf[0] && len == declared && len < 4)
                    }
                    FrameError::TooLong(tag, total) => {
                        assert!(tag == buf[0] && total == declared as usize + 1 && total > max)
                    }
                }
                assert_eq!(m, Err(e));
                return;
            }
            Ok(Some(h)) => {
                let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                assert_eq!(h.tag, buf[0]);
                assert_eq!(h.total, declared + 1);
                assert!(h.total >= 5 && h.total <= max);
                assert_eq!(h.body_len(), h.total - 5);
                match m {
                    Ok(None) => {
                        assert!(buf.len() < h.total);
                        return;
                    }
                    Ok(Some((h2, body))) => {
                        assert_eq!(h2, h);
                        assert_eq!(body, &buf[5..h.total]);
                        look_inside(h.tag, body);
                        buf = &buf[h.total..];
                    }
                    Err(e) => panic!("message failed ({e:?}) where header passed"),
                }
            }
        }
    }
});

/// What the pooler reads inside some messages.
fn look_inside(tag: u8, body: &[u8]) {
    match tag {
        b'E' | b'N' => {
            let _ = ErrorFields::parse(body).to_string();
        }
        b'S' => {
            let _ = parameter_status(body);
        }
        b'B' => {
            let _ = relay::bind_names(body);
        }
        b'Q' => {
            let _ = relay::forgets_all(body);
        }
        _ => {}
    }
}
