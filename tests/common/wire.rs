//! Raw protocol bytes for tests that talk to the pooler without a client library.

use std::collections::HashMap;

/// A protocol 3.0 StartupMessage with these parameters, length included.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    startup_packet_version(3, 0, params)
}

/// A StartupMessage for protocol `major.minor` with these parameters (in order), length included.
pub fn startup_packet_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (u32::from(major) << 16 | u32::from(minor))
        .to_be_bytes()
        .to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// The fields of an ErrorResponse or NoticeResponse body, by type letter. A field without
/// its terminator is a protocol error of the pooler's and fails the test.
pub fn error_fields(body: &[u8]) -> HashMap<char, String> {
    let mut fields = HashMap::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let nul = tail
            .iter()
            .position(|&b| b == 0)
            .expect("an error field without its terminator");
        fields.insert(
            kind as char,
            String::from_utf8_lossy(&tail[..nul]).into_owned(),
        );
        rest = &tail[nul + 1..];
    }
    fields
}

/// An ErrorResponse's fields, with accessors for the ones tests check.
#[derive(Debug, Clone)]
pub struct Fields(pub HashMap<char, String>);

impl Fields {
    pub fn parse(body: &[u8]) -> Fields {
        Fields(error_fields(body))
    }

    fn get(&self, kind: char) -> &str {
        self.0.get(&kind).map(String::as_str).unwrap_or("")
    }

    pub fn code(&self) -> &str {
        self.get('C')
    }

    pub fn message(&self) -> &str {
        self.get('M')
    }

    pub fn severity(&self) -> &str {
        self.get('S')
    }
}
