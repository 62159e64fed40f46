//! Fuzz target: the PROXY header decoder never panics and its verdicts are consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::proxy_header::{decode, Decoded, ProxyHeader, V1_MAX_LEN, V2_MAX_LEN};

/// A few caps: below the fixed v2 part, around the address blocks, the default, the maximum.
const MAX_LENS: [usize; 5] = [0, 28, 232, 4096, V2_MAX_LEN];

fuzz_target!(|data: &[u8]| {
    for max_len in MAX_LENS {
        let verdict = decode(data, max_len);
        if let Ok(Decoded::Header { header, consumed }) = &verdict {
            check_header(data, max_len, header, *consumed);
        }
        // Verdicts are final: a prefix that is invalid or not a PROXY header stays so.
        // Checking a handful of prefixes keeps each run fast.
        for cut in [
            1,
            5,
            12,
            13,
            14,
            16,
            data.len() / 2,
            data.len().saturating_sub(1),
        ] {
            if cut >= data.len() {
                continue;
            }
            match decode(&data[..cut], max_len) {
                Err(_) => assert!(
                    verdict.is_err(),
                    "prefix {cut} failed, whole gave {verdict:?}"
                ),
                Ok(Decoded::NotProxy) => assert_eq!(verdict, Ok(Decoded::NotProxy)),
                _ => {}
            }
        }
    }
});

fn check_header(data: &[u8], max_len: usize, header: &ProxyHeader, consumed: usize) {
    assert!(consumed <= data.len());
    match header.version {
        1 => assert!(consumed <= V1_MAX_LEN),
        2 => assert!(consumed <= max_len.min(V2_MAX_LEN) && consumed >= 16),
        v => panic!("version {v}"),
    }
    // The header alone decodes to the same header: trailing bytes never influence it.
    match decode(&data[..consumed], max_len) {
        Ok(Decoded::Header {
            header: again,
            consumed: c,
        }) => {
            assert_eq!(c, consumed);
            assert_eq!(*again, *header);
        }
        other => panic!("re-decoding the consumed prefix gave {other:?}"),
    }
    // One byte less is never a complete header.
    assert_eq!(
        decode(&data[..consumed - 1], max_len),
        Ok(Decoded::NeedMore)
    );
    if header.source().is_some() {
        assert!(header.destination().is_some());
    }
}
