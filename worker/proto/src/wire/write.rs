//! Message writers: free functions that append one message to a caller's buffer.
//!
//! Each writer reserves the length field, appends the body and patches the length
//! afterwards, so no message is built in a temporary.

/// Starts a message with a type byte; returns the offset to hand to `finish`.
fn begin(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a message whose body `body` writes; its length is patched afterwards. For
/// messages with no writer of their own here (a Parse or Bind the pooler builds).
pub fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let at = begin(out, tag);
    body(out);
    finish(out, at);
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    // A NUL inside would end the string early and shift every later field.
    out.extend(s.iter().map(|&b| if b == 0 { b'?' } else { b }));
    out.push(0);
}

// ---- backend messages (pooler -> client) ----

pub fn auth_ok(out: &mut Vec<u8>) {
    auth(out, 0, &[]);
}

pub fn auth_cleartext(out: &mut Vec<u8>) {
    auth(out, 3, &[]);
}

pub fn auth_md5(out: &mut Vec<u8>, salt: [u8; 4]) {
    auth(out, 5, &salt);
}

pub fn auth_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    let at = begin(out, b'R');
    out.extend_from_slice(&10u32.to_be_bytes());
    for m in mechanisms {
        cstr(out, m.as_bytes());
    }
    out.push(0);
    finish(out, at);
}

pub fn auth_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    auth(out, 11, data);
}

pub fn auth_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    auth(out, 12, data);
}

fn auth(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    let at = begin(out, b'R');
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    let at = begin(out, b'S');
    cstr(out, name.as_bytes());
    cstr(out, value.as_bytes());
    finish(out, at);
}

pub fn backend_key_data(out: &mut Vec<u8>, pid: u32, key: u32) {
    let at = begin(out, b'K');
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
    finish(out, at);
}

pub fn ready_for_query(out: &mut Vec<u8>, status: super::TxStatus) {
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, status.as_byte()]);
}

/// NegotiateProtocolVersion: the newest minor we support and the options we did not know.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, minor: u16, unknown: &[&str]) {
    let at = begin(out, b'v');
    out.extend_from_slice(&(3u32 << 16 | minor as u32).to_be_bytes());
    out.extend_from_slice(&(unknown.len() as u32).to_be_bytes());
    for o in unknown {
        cstr(out, o.as_bytes());
    }
    finish(out, at);
}

/// Severity of a pooler-made ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Notice => "NOTICE",
        }
    }
}

/// ErrorResponse (or NoticeResponse for `Severity::Notice`) with S, V, C and M fields.
pub fn error_response(out: &mut Vec<u8>, severity: Severity, code: &str, message: &str) {
    let tag = if severity == Severity::Notice {
        b'N'
    } else {
        b'E'
    };
    let at = begin(out, tag);
    for f in [b'S', b'V'] {
        out.push(f);
        cstr(out, severity.as_str().as_bytes());
    }
    out.push(b'C');
    cstr(out, code.as_bytes());
    out.push(b'M');
    cstr(out, message.as_bytes());
    out.push(0);
    finish(out, at);
}

pub fn row_description(out: &mut Vec<u8>, columns: &[(&str, u32)]) {
    let at = begin(out, b'T');
    out.extend_from_slice(&(columns.len() as u16).to_be_bytes());
    for (name, oid) in columns {
        cstr(out, name.as_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // table oid
        out.extend_from_slice(&0u16.to_be_bytes()); // column number
        out.extend_from_slice(&oid.to_be_bytes());
        let size: i16 = match oid {
            20 => 8,
            23 => 4,
            16 => 1,
            _ => -1,
        };
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        out.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    finish(out, at);
}

/// DataRow: `None` is SQL NULL.
pub fn data_row<'a>(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = Option<&'a str>>) {
    let at = begin(out, b'D');
    out.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for v in values {
        match v {
            Some(s) => {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    finish(out, at);
}

pub fn command_complete(out: &mut Vec<u8>, tag: &str) {
    let at = begin(out, b'C');
    cstr(out, tag.as_bytes());
    finish(out, at);
}

pub fn empty_query_response(out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'I', 0, 0, 0, 4]);
}

// ---- frontend messages (pooler -> server) ----

pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&super::PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        cstr(out, k.as_bytes());
        cstr(out, v.as_bytes());
    }
    out.push(0);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// SSLRequest: the 8 bytes that ask a server for TLS before the startup packet.
pub fn ssl_request(out: &mut Vec<u8>) {
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&super::SSL_REQUEST_CODE.to_be_bytes());
}

pub fn cancel_request(out: &mut Vec<u8>, pid: u32, key: &[u8]) {
    out.extend_from_slice(&((12 + key.len()) as u32).to_be_bytes());
    out.extend_from_slice(&super::CANCEL_REQUEST_CODE.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(key);
}

pub fn password_message(out: &mut Vec<u8>, password: &[u8]) {
    let at = begin(out, b'p');
    cstr(out, password);
    finish(out, at);
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    let at = begin(out, b'p');
    cstr(out, mechanism.as_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    let at = begin(out, b'p');
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn query(out: &mut Vec<u8>, sql: &str) {
    let at = begin(out, b'Q');
    cstr(out, sql.as_bytes());
    finish(out, at);
}

pub fn terminate(out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fields::ErrorFields;
    use crate::wire::frame;

    #[test]
    fn lengths_are_patched() {
        let mut out = Vec::new();
        parameter_status(&mut out, "TimeZone", "UTC");
        let (h, body) = frame::message(&out, 1000).unwrap().unwrap();
        assert_eq!(h.tag, b'S');
        assert_eq!(h.total, out.len());
        assert_eq!(body, b"TimeZone\0UTC\0");
    }

    #[test]
    fn error_response_fields() {
        let mut out = Vec::new();
        error_response(&mut out, Severity::Fatal, "28P01", "bad\0password");
        let (h, body) = frame::message(&out, 1000).unwrap().unwrap();
        assert_eq!(h.tag, b'E');
        let f = ErrorFields::parse(body);
        assert_eq!(f.severity.as_deref(), Some("FATAL"));
        assert_eq!(f.code.as_deref(), Some("28P01"));
        assert_eq!(f.message.as_deref(), Some("bad?password"));
    }

    #[test]
    fn startup_round_trips() {
        let mut out = Vec::new();
        startup_message(&mut out, &[("user", "u"), ("database", "d")]);
        let (pkt, n) = crate::wire::startup::decode(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        let crate::wire::startup::FirstPacket::Startup(s) = pkt else {
            panic!()
        };
        assert_eq!(s.get("database"), Some("d"));
    }

    #[test]
    fn cancel_round_trips() {
        let mut out = Vec::new();
        cancel_request(&mut out, 42, &[9, 9, 9, 9]);
        let (pkt, _) = crate::wire::startup::decode(&out).unwrap().unwrap();
        assert_eq!(
            pkt,
            crate::wire::startup::FirstPacket::Cancel {
                pid: 42,
                key: vec![9; 4]
            }
        );
    }
}
