//! Fuzz target: judging a client's message stream is safe, matches a model of the stream and does not depend on how reads split it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_fuzz::{check_client_model, chunk_sizes, drive_client};
use pgbouncers_worker::relay::Named;

/// max_packet_size values: the default-ish, small ones that bite on real messages, tiny.
const MAX_PACKETS: [usize; 4] = [1 << 20, 2048, 64, 9];

fuzz_target!(|data: &[u8]| {
    let Some(([mode, seed], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let named = [Named::Pass, Named::Refuse, Named::Rewrite][usize::from(*mode % 3)];
    let max_packet = MAX_PACKETS[usize::from(*mode / 3) % MAX_PACKETS.len()];
    let whole = drive_client(input, &[input.len()], named, max_packet);
    check_client_model(input, &whole, named, max_packet);
    let chunked = drive_client(input, &chunk_sizes(input.len(), *seed), named, max_packet);
    check_client_model(input, &chunked, named, max_packet);
    assert_eq!(
        whole, chunked,
        "the verdicts depend on how the bytes arrived"
    );
});
