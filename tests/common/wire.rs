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

/// Reads one backend message; None at a clean EOF before its first byte.
pub fn read_message(s: &mut impl std::io::Read) -> std::io::Result<Option<Message>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < 5 {
        match s.read(&mut head[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len < 4 {
        return Err(std::io::Error::other(format!("backend length {len} < 4")));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok(Some(Message { tag: head[0], body }))
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
pub fn read_answer(s: &mut impl std::io::Read) -> Answer {
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
pub fn raw_login(port: u16, startup: &[u8], password: &str) -> Result<std::net::TcpStream, String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
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
