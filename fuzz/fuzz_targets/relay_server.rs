//! Fuzz target: judging a server's message stream is safe, keeps its bookkeeping consistent and does not depend on how reads split it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_fuzz::{check_server_model, chunk_sizes, drive_server, expect_from, ServerStart};
use pgbouncers_worker::relay::{TxState, TxStatus};

fuzz_target!(|data: &[u8]| {
    // flags, chunking seed, ReadyForQuery messages owed, queue length, queue, then the stream.
    let Some(([flags, seed, expected, queued], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let queued = usize::from(*queued % 17).min(rest.len());
    let (queue, input) = rest.split_at(queued);
    let start = ServerStart {
        own: u32::from(flags & 3),
        track: flags & 4 != 0,
        queue: if flags & 4 != 0 {
            queue.iter().map(|&b| expect_from(b)).collect()
        } else {
            Vec::new()
        },
        skipping: flags & 0x0c == 0x0c,
        tx: TxState {
            expected: u32::from(*expected % 8),
            unsynced: flags & 0x40 != 0,
            status: TxStatus::from_byte([b'I', b'T', b'E'][usize::from((flags >> 4) & 3) % 3]),
        },
    };
    let whole = drive_server(input, &[input.len()], &start);
    check_server_model(input, &start, &whole);
    let chunked = drive_server(input, &chunk_sizes(input.len(), *seed), &start);
    check_server_model(input, &start, &chunked);
    assert_eq!(
        whole, chunked,
        "the verdicts depend on how the bytes arrived"
    );
});
