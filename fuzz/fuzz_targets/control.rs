//! Fuzz target: the supervisor<->worker channel decoders never panic and round-trip through their encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::control::{decode_rows, encode_rows, Command, Report, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, msg)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => {
            if let Ok(cmd) = Command::decode(msg) {
                let mut out = Vec::new();
                cmd.encode(&mut out);
                assert_eq!(Command::decode(&out).as_ref(), Ok(&cmd));
                // Only AdminDone has two spellings: no `missing` list and an empty one.
                if !matches!(cmd, Command::AdminDone { .. }) {
                    assert_eq!(out, msg, "{cmd:?} has another encoding");
                }
            }
        }
        1 => {
            if let Ok(report) = Report::decode(msg) {
                let mut out = Vec::new();
                report.encode(&mut out);
                assert_eq!(Report::decode(&out).as_ref(), Ok(&report));
                if !matches!(report, Report::Rows { .. }) {
                    assert_eq!(out, msg, "{report:?} has another encoding");
                }
            }
        }
        2 => {
            if let Ok(snap) = Snapshot::decode(msg) {
                assert_eq!(snap.encode(), msg);
            }
        }
        _ => {
            if let Ok(rows) = decode_rows(msg) {
                let mut out = Vec::new();
                encode_rows(&rows, &mut out);
                assert_eq!(out, msg);
            }
        }
    }
});
