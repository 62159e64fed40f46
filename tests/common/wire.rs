//! Raw protocol bytes for tests that talk to the pooler without a client library.
//!
//! Three ways to read a backend message, all on one reader: [`read_message`] (`Ok(None)`
//! once the connection ended before the message), [`read_next`] (an end is an
//! `UnexpectedEof` error, so a timeout is told apart by its error kind) and [`next_message`]
//! (`None` at the end, a panic on anything else, a timeout included).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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

/// One backend message: its type byte and body.
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// A frontend message with its type byte and length.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Longest backend message the readers accept, length field included. A longer (or a
/// shorter than 4) length means the pooler's output is out of step, a bug that fails the test.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// A NUL-terminated string.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One byte; None when the connection ended (EOF or reset).
fn first_byte(s: &mut impl Read) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

/// One byte (the answer to an SSLRequest, say), or None when the pooler closed the
/// connection (EOF or reset). A read timeout or another error fails the test.
pub fn read_byte(s: &mut impl Read) -> Option<u8> {
    first_byte(s).unwrap_or_else(|e| panic!("reading from the pooler: {e} (timed out?)"))
}

/// Reads one backend message; None when the connection ended (EOF, or a reset: the pooler
/// may close with our bytes unread) before its first byte. A message cut short, a timeout
/// or another error of the socket is Err; a length outside 4..=[`MAX_MESSAGE_LEN`] panics.
pub fn read_message(s: &mut impl Read) -> io::Result<Option<Message>> {
    let Some(tag) = first_byte(s)? else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    assert!(
        (4..=MAX_MESSAGE_LEN).contains(&len),
        "backend message {:?} with length {len}",
        tag as char
    );
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok(Some(Message { tag, body }))
}

/// [`read_message`], with the connection's end as an `UnexpectedEof` error: a caller tells a
/// timeout (`WouldBlock` / `TimedOut`) from a closed connection by the error's kind.
pub fn read_next(s: &mut impl Read) -> io::Result<Message> {
    read_message(s)?.ok_or_else(|| {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            "the connection ended before a message",
        )
    })
}

/// [`read_message`] for tests where only the end may stop the messages: None when the
/// connection ended before the message; any error (a timeout included) fails the test.
pub fn next_message(s: &mut impl Read) -> Option<Message> {
    read_message(s).unwrap_or_else(|e| panic!("reading a backend message: {e}"))
}

/// What a simple query got back, up to its ReadyForQuery or the connection's end.
#[derive(Debug, Default)]
pub struct Answer {
    /// The first column of every DataRow, as text.
    pub values: Vec<String>,
    pub error: Option<Fields>,
    /// ReadyForQuery came (else the connection ended).
    pub ready: bool,
}

/// Reads backend messages up to ReadyForQuery, EOF or an error of the socket.
pub fn read_answer(s: &mut impl Read) -> Answer {
    let mut a = Answer::default();
    loop {
        match read_message(s) {
            Ok(Some(m)) => match m.tag {
                b'D' => {
                    let cols = u16::from_be_bytes([m.body[0], m.body[1]]);
                    if cols > 0 {
                        let len = i32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]);
                        let v = if len < 0 {
                            String::new()
                        } else {
                            String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned()
                        };
                        a.values.push(v);
                    }
                }
                b'E' => a.error = Some(Fields::parse(&m.body)),
                b'Z' => {
                    a.ready = true;
                    return a;
                }
                _ => {}
            },
            Ok(None) | Err(_) => return a,
        }
    }
}

/// Sends `startup` and reads to the first ReadyForQuery, answering a cleartext password
/// request with `password`. Err with what went wrong.
pub fn raw_login(port: u16, startup: &[u8], password: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(startup).map_err(|e| e.to_string())?;
    loop {
        let m = read_message(&mut s)
            .map_err(|e| format!("login: {e}"))?
            .ok_or("login: closed")?;
        match m.tag {
            b'R' if m.body[..4] == [0, 0, 0, 3] => {
                let mut pw = password.as_bytes().to_vec();
                pw.push(0);
                s.write_all(&message(b'p', &pw))
                    .map_err(|e| e.to_string())?;
            }
            b'Z' => return Ok(s),
            b'E' => return Err(format!("login failed: {:?}", Fields::parse(&m.body).0)),
            _ => {}
        }
    }
}

/// A connection to the pooler on 127.0.0.1:`port`, with a 10 s read timeout and Nagle off.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the pooler");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until an ErrorResponse, whose fields it returns; only notices may come first, and
/// the connection must not end before it.
pub fn read_error(s: &mut impl Read) -> Fields {
    loop {
        match next_message(s) {
            Some(Message { tag: b'E', body }) => return Fields::parse(&body),
            Some(Message { tag: b'N', .. }) => {}
            Some(Message { tag, body }) => {
                panic!("expected an ErrorResponse, got '{}' {body:?}", tag as char)
            }
            None => panic!("connection closed without an ErrorResponse"),
        }
    }
}

/// The connection ends with no further message.
pub fn assert_closed(s: &mut impl Read) {
    if let Some(Message { tag, body }) = next_message(s) {
        panic!(
            "expected the connection closed, got '{}' {body:?}",
            tag as char
        );
    }
}

/// Logs in as `user` to [`crate::common::APP_DB`], answering a cleartext password request
/// with `password`; returns after the first ReadyForQuery. Anything but the messages of a
/// login fails the test.
pub fn login(port: u16, user: &str, password: &str) -> TcpStream {
    let mut s = connect(port);
    s.write_all(&startup_packet(&[
        ("user", user),
        ("database", super::APP_DB),
    ]))
    .unwrap();
    loop {
        let Some(Message { tag, body }) = next_message(&mut s) else {
            panic!("closed during login")
        };
        match tag {
            b'R' if body.get(..4) == Some(&[0, 0, 0, 3][..]) => {
                s.write_all(&message(b'p', &cstr(password))).unwrap();
            }
            b'R' if body.get(..4) == Some(&[0, 0, 0, 0][..]) => {}
            b'S' | b'K' | b'N' => {}
            b'Z' => return s,
            b'E' => panic!("login failed: {:?}", Fields::parse(&body)),
            _ => panic!("unexpected '{}' during login", tag as char),
        }
    }
}

/// Runs a simple query: the first column of each row ("NULL" for a null), and the
/// transaction status of the ReadyForQuery. An error or the connection's end fails the test.
pub fn run_query(s: &mut TcpStream, sql: &str) -> (Vec<String>, u8) {
    s.write_all(&query(sql)).unwrap();
    let mut rows = Vec::new();
    loop {
        match next_message(s) {
            Some(Message { tag: b'D', body }) => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                let value = if len < 0 {
                    "NULL".to_string()
                } else {
                    String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                };
                rows.push(value);
            }
            Some(Message { tag: b'Z', body }) => return (rows, body[0]),
            Some(Message { tag: b'E', body }) => panic!("{sql}: {:?}", Fields::parse(&body)),
            Some(_) => {}
            None => panic!("{sql}: connection closed"),
        }
    }
}

/// A fake PostgreSQL's first read: the startup packet's body after the length. An
/// SSLRequest before it (the pooler's default server_tls_sslmode, prefer, sends one) is
/// answered `N`, as a server without TLS does.
pub fn accept_startup(s: &mut (impl Read + Write)) -> io::Result<Vec<u8>> {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        s.read_exact(&mut body)?;
        if body == [4, 210, 22, 47] {
            s.write_all(b"N")?;
            continue;
        }
        return Ok(body);
    }
}
