//! The control channel's codec: typed messages between the supervisor and a worker, one per record (no I/O).
//!
//! The sockets they travel on, and the memfd a reload's [`Snapshot`] is sealed in, are the
//! worker crate's `control` module.

/// Largest message either side sends; row chunks stay below it.
pub const MAX_MESSAGE: usize = 65536;
/// Rows travel in chunks of about this many bytes.
pub const ROW_CHUNK: usize = 60000;

/// What the admin console collects from every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Pools,
    Clients,
    Servers,
    /// Clients and servers with their buffer columns (SHOW SOCKETS, ACTIVE_SOCKETS).
    Sockets,
    /// Each worker's connection slots and buffer free lists (SHOW MEM).
    Mem,
    /// Each worker's resolver cache (SHOW DNS_HOSTS).
    DnsHosts,
}

/// An admin console request a worker passes to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    Collect(What),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Kill(Option<String>),
    KillClient(u32),
    Shutdown,
    /// SHUTDOWN WAIT_FOR_SERVERS (false) or WAIT_FOR_CLIENTS (true).
    ShutdownWait {
        clients: bool,
    },
    Set {
        key: String,
        value: String,
    },
    Disable(String),
    Enable(String),
    Reconnect(Option<String>),
    WaitClose(Option<String>),
}

/// A condition a worker reports once it holds, for console commands that wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// PAUSE: the paused pools of this database (all when None) hold no server.
    Paused(Option<String>),
    /// WAIT_CLOSE: no server of this database (all when None) is waiting to be closed.
    Closed(Option<String>),
}

/// What PAUSE and DISABLE hold, per database or for all: the supervisor keeps the
/// pooler's copy and hands it to every worker it starts, so a respawned worker obeys too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    pub paused_all: bool,
    pub paused: std::collections::BTreeSet<String>,
    pub disabled: std::collections::BTreeSet<String>,
}

impl Holds {
    /// PAUSE (`on`) or RESUME; as in PgBouncer, a global RESUME leaves databases paused
    /// by name paused.
    pub fn pause(&mut self, db: Option<&str>, on: bool) {
        match (db, on) {
            (None, _) => self.paused_all = on,
            (Some(d), true) => {
                self.paused.insert(d.to_string());
            }
            (Some(d), false) => {
                self.paused.remove(d);
            }
        }
    }

    pub fn is_paused(&self, db: &str) -> bool {
        self.paused_all || self.paused.contains(db)
    }

    pub fn disable(&mut self, db: &str, on: bool) {
        if on {
            self.disabled.insert(db.to_string());
        } else {
            self.disabled.remove(db);
        }
    }

    pub fn is_disabled(&self, db: &str) -> bool {
        self.disabled.contains(db)
    }
}

/// Supervisor to worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Apply the snapshot in the attached file descriptor.
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    /// Stop accepting, let transactions (sessions in session mode) finish, then exit.
    Shutdown,
    /// Stop accepting, keep serving every client (servers are still handed out) until
    /// all of them have left, then exit: PgBouncer's SIGTERM, its "super safe shutdown".
    ShutdownWaitForClients,
    /// A CancelRequest another worker received for one of this worker's clients.
    Cancel {
        pid: u32,
        key: u32,
    },
    /// Send this worker's rows for `what`, tagged `req`.
    Collect {
        req: u32,
        what: What,
    },
    /// Rows from worker `slot` for this worker's admin request `req`.
    Rows {
        req: u32,
        slot: u8,
        chunk: Vec<u8>,
    },
    /// The end of admin request `req`: an error, and the workers that did not answer.
    AdminDone {
        req: u32,
        error: Option<String>,
        missing: Vec<u8>,
    },
    /// Close every client and server of a database (all databases when None).
    Kill(Option<String>),
    /// Close the client with this admin id, if it is ours; answer with one row if it was.
    KillClient {
        req: u32,
        id: u32,
    },
    /// DISABLE (`on`) or ENABLE: refuse or allow new clients of a database.
    Disable {
        db: String,
        on: bool,
    },
    /// Close the servers of a database (all when None) as they are released.
    Reconnect(Option<String>),
    /// Answer request `req` with an empty last chunk of rows once `until` holds.
    Wait {
        req: u32,
        until: Until,
    },
    /// An online upgrade's new generation took over: stop accepting, hand idle clients
    /// over (`Report::HandOver`), serve the rest until they leave, then exit.
    UpgradeDrain,
    /// A client handed over by the previous generation: its state, with its socket
    /// attached.
    Adopt {
        state: Vec<u8>,
    },
}

/// Worker to supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A CancelRequest for a key this worker did not hand out: route it by slot.
    Cancel { pid: u32, key: u32 },
    /// An admin console command that concerns every worker.
    Admin { req: u32, request: AdminRequest },
    /// Rows answering `Command::Collect`; `last` ends this worker's answer.
    Rows {
        req: u32,
        chunk: Vec<u8>,
        last: bool,
    },
    /// An idle client for the next generation: its state, with its socket attached.
    HandOver { state: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl What {
    fn code(self) -> u8 {
        match self {
            What::Pools => 1,
            What::Clients => 2,
            What::Servers => 3,
            What::Sockets => 4,
            What::Mem => 5,
            What::DnsHosts => 6,
        }
    }

    fn from_code(c: u8) -> Result<What, DecodeError> {
        Ok(match c {
            1 => What::Pools,
            2 => What::Clients,
            3 => What::Servers,
            4 => What::Sockets,
            5 => What::Mem,
            6 => What::DnsHosts,
            _ => return Err(DecodeError("unknown collection")),
        })
    }
}

impl AdminRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AdminRequest::Collect(w) => out.extend_from_slice(&[1, w.code()]),
            AdminRequest::Reload => out.push(2),
            AdminRequest::Pause(db) => {
                out.push(3);
                put_opt_str(out, db.as_deref());
            }
            AdminRequest::Resume(db) => {
                out.push(4);
                put_opt_str(out, db.as_deref());
            }
            AdminRequest::Kill(db) => {
                out.push(5);
                put_opt_str(out, db.as_deref());
            }
            AdminRequest::KillClient(id) => {
                out.push(6);
                out.extend_from_slice(&id.to_be_bytes());
            }
            AdminRequest::Shutdown => out.push(7),
            AdminRequest::Set { key, value } => {
                out.push(8);
                put_opt_str(out, Some(key));
                put_opt_str(out, Some(value));
            }
            AdminRequest::Disable(db) => {
                out.push(9);
                put_opt_str(out, Some(db));
            }
            AdminRequest::Enable(db) => {
                out.push(10);
                put_opt_str(out, Some(db));
            }
            AdminRequest::Reconnect(db) => {
                out.push(11);
                put_opt_str(out, db.as_deref());
            }
            AdminRequest::WaitClose(db) => {
                out.push(12);
                put_opt_str(out, db.as_deref());
            }
            AdminRequest::ShutdownWait { clients } => {
                out.extend_from_slice(&[13, u8::from(*clients)])
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<AdminRequest, DecodeError> {
        Ok(match r.take(1)?[0] {
            1 => AdminRequest::Collect(What::from_code(r.take(1)?[0])?),
            2 => AdminRequest::Reload,
            3 => AdminRequest::Pause(r.opt_str()?),
            4 => AdminRequest::Resume(r.opt_str()?),
            5 => AdminRequest::Kill(r.opt_str()?),
            6 => AdminRequest::KillClient(r.u32()?),
            7 => AdminRequest::Shutdown,
            8 => AdminRequest::Set {
                key: r.opt_str()?.ok_or(DecodeError("no key"))?,
                value: r.opt_str()?.ok_or(DecodeError("no value"))?,
            },
            9 => AdminRequest::Disable(r.opt_str()?.ok_or(DecodeError("no database"))?),
            10 => AdminRequest::Enable(r.opt_str()?.ok_or(DecodeError("no database"))?),
            11 => AdminRequest::Reconnect(r.opt_str()?),
            12 => AdminRequest::WaitClose(r.opt_str()?),
            13 => AdminRequest::ShutdownWait {
                clients: r.take(1)?[0] != 0,
            },
            _ => return Err(DecodeError("unknown admin request")),
        })
    }
}

impl Command {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Command::Reload => out.push(1),
            Command::Pause(db) => {
                out.push(2);
                put_opt_str(out, db.as_deref());
            }
            Command::Resume(db) => {
                out.push(3);
                put_opt_str(out, db.as_deref());
            }
            Command::Shutdown => out.push(4),
            Command::ShutdownWaitForClients => out.push(14),
            Command::Cancel { pid, key } => {
                out.push(5);
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&key.to_be_bytes());
            }
            Command::Collect { req, what } => {
                out.push(6);
                out.extend_from_slice(&req.to_be_bytes());
                out.push(what.code());
            }
            Command::Rows { req, slot, chunk } => {
                out.push(7);
                out.extend_from_slice(&req.to_be_bytes());
                out.push(*slot);
                put_long_bytes(out, chunk);
            }
            Command::AdminDone {
                req,
                error,
                missing,
            } => {
                out.push(8);
                out.extend_from_slice(&req.to_be_bytes());
                put_long_str(out, error.as_deref());
                put_long_bytes(out, missing);
            }
            Command::Kill(db) => {
                out.push(9);
                put_opt_str(out, db.as_deref());
            }
            Command::KillClient { req, id } => {
                out.push(10);
                out.extend_from_slice(&req.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            Command::Disable { db, on } => {
                out.push(11);
                out.push(u8::from(*on));
                put_opt_str(out, Some(db));
            }
            Command::Reconnect(db) => {
                out.push(12);
                put_opt_str(out, db.as_deref());
            }
            Command::Wait { req, until } => {
                out.push(13);
                out.extend_from_slice(&req.to_be_bytes());
                let (code, db) = match until {
                    Until::Paused(db) => (1, db),
                    Until::Closed(db) => (2, db),
                };
                out.push(code);
                put_opt_str(out, db.as_deref());
            }
            Command::UpgradeDrain => out.push(16),
            Command::Adopt { state } => {
                out.push(17);
                put_long_bytes(out, state);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Command, DecodeError> {
        let (&tag, rest) = buf.split_first().ok_or(DecodeError("empty message"))?;
        let mut r = Reader(rest);
        let cmd = match tag {
            1 => Command::Reload,
            2 => Command::Pause(r.opt_str()?),
            3 => Command::Resume(r.opt_str()?),
            4 => Command::Shutdown,
            14 => Command::ShutdownWaitForClients,
            5 => Command::Cancel {
                pid: r.u32()?,
                key: r.u32()?,
            },
            6 => Command::Collect {
                req: r.u32()?,
                what: What::from_code(r.take(1)?[0])?,
            },
            7 => Command::Rows {
                req: r.u32()?,
                slot: r.take(1)?[0],
                chunk: r.long_bytes()?.ok_or(DecodeError("no rows"))?,
            },
            8 => Command::AdminDone {
                req: r.u32()?,
                error: r.long_str()?,
                missing: r.long_bytes()?.unwrap_or_default(),
            },
            9 => Command::Kill(r.opt_str()?),
            10 => Command::KillClient {
                req: r.u32()?,
                id: r.u32()?,
            },
            11 => Command::Disable {
                on: match r.take(1)?[0] {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError("bad flag")),
                },
                db: r.opt_str()?.ok_or(DecodeError("no database"))?,
            },
            12 => Command::Reconnect(r.opt_str()?),
            13 => Command::Wait {
                req: r.u32()?,
                until: match r.take(1)?[0] {
                    1 => Until::Paused(r.opt_str()?),
                    2 => Until::Closed(r.opt_str()?),
                    _ => return Err(DecodeError("unknown condition")),
                },
            },
            16 => Command::UpgradeDrain,
            17 => Command::Adopt {
                state: r.long_bytes()?.ok_or(DecodeError("no client state"))?,
            },
            _ => return Err(DecodeError("unknown command")),
        };
        r.end()?;
        Ok(cmd)
    }
}

impl Report {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Report::Cancel { pid, key } => {
                out.push(1);
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&key.to_be_bytes());
            }
            Report::Admin { req, request } => {
                out.push(2);
                out.extend_from_slice(&req.to_be_bytes());
                request.encode(out);
            }
            Report::Rows { req, chunk, last } => {
                out.push(3);
                out.extend_from_slice(&req.to_be_bytes());
                out.push(u8::from(*last));
                put_long_bytes(out, chunk);
            }
            Report::HandOver { state } => {
                out.push(4);
                put_long_bytes(out, state);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Report, DecodeError> {
        let (&tag, rest) = buf.split_first().ok_or(DecodeError("empty message"))?;
        let mut r = Reader(rest);
        let rep = match tag {
            1 => Report::Cancel {
                pid: r.u32()?,
                key: r.u32()?,
            },
            2 => Report::Admin {
                req: r.u32()?,
                request: AdminRequest::decode(&mut r)?,
            },
            3 => Report::Rows {
                req: r.u32()?,
                last: r.take(1)?[0] != 0,
                chunk: r.long_bytes()?.ok_or(DecodeError("no rows"))?,
            },
            4 => Report::HandOver {
                state: r.long_bytes()?.ok_or(DecodeError("no client state"))?,
            },
            _ => return Err(DecodeError("unknown report")),
        };
        r.end()?;
        Ok(rep)
    }
}

/// A row of text values (None is SQL NULL), as SHOW commands produce them.
pub type Row = Vec<Option<String>>;

/// Appends rows to a chunk.
pub fn encode_rows(rows: &[Row], out: &mut Vec<u8>) {
    for row in rows {
        out.extend_from_slice(&(row.len() as u16).to_be_bytes());
        for v in row {
            put_long_str(out, v.as_deref());
        }
    }
}

pub fn decode_rows(buf: &[u8]) -> Result<Vec<Row>, DecodeError> {
    let mut r = Reader(buf);
    let mut rows = Vec::new();
    while !r.0.is_empty() {
        let b = r.take(2)?;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        let mut row = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            row.push(r.long_str()?);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// What a reload hands every worker: the validated config and the files it names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub config_yaml: String,
    pub userlist: Option<String>,
    pub hba: Option<String>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_long_str(&mut out, Some(&self.config_yaml));
        put_long_str(&mut out, self.userlist.as_deref());
        put_long_str(&mut out, self.hba.as_deref());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Snapshot, DecodeError> {
        let mut r = Reader(buf);
        let config_yaml = r.long_str()?.ok_or(DecodeError("no config"))?;
        let userlist = r.long_str()?;
        let hba = r.long_str()?;
        r.end()?;
        Ok(Snapshot {
            config_yaml,
            userlist,
            hba,
        })
    }
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            let s = &s.as_bytes()[..s.len().min(255)];
            out.push(1);
            out.push(s.len() as u8);
            out.extend_from_slice(s);
        }
    }
}

fn put_long_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        Some(s) => put_long_bytes(out, s.as_bytes()),
    }
}

fn put_long_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// An idle client's state as an online upgrade hands it to the next generation (its
/// socket travels beside it, with SCM_RIGHTS). Only clients between transactions, with
/// nothing buffered, are handed over, so this is all there is to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandedClient {
    pub user: String,
    pub db: String,
    /// The client's address (from a trusted PROXY header when there was one); None for a
    /// Unix socket client.
    pub peer: Option<std::net::SocketAddr>,
    /// The socket's own peer (the proxy's address when a PROXY header was believed).
    pub via: Option<std::net::SocketAddr>,
    /// The socket is a Unix socket.
    pub unix: bool,
    /// The tracked session parameters (client_encoding, DateStyle, application_name, ...).
    pub params: Vec<(String, String)>,
    /// The cancel key handed out at login: pid << 32 | secret.
    pub cancel_key: u64,
    /// Named prepared statements: the client's name and the Parse body after it.
    pub stmts: Vec<(String, Vec<u8>)>,
    /// How long ago the client connected, in milliseconds.
    pub age_ms: u64,
    /// The SCRAM keys (ServerKey, ClientKey) its login recovered, for pass-through
    /// logins to PostgreSQL.
    pub scram_keys: Option<([u8; 32], [u8; 32])>,
    /// What a trusted PROXY v2 header said besides the address.
    pub proxy: Option<HandedProxy>,
}

/// A PROXY v2 header's extras, as a handed-over client keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandedProxy {
    pub tls: Option<String>,
    pub tls_cn: Option<String>,
    pub unique_id: Option<String>,
    pub endpoint: Option<crate::proxy_header::CloudEndpoint>,
}

fn put_addr(out: &mut Vec<u8>, a: Option<std::net::SocketAddr>) {
    put_long_str(out, a.map(|a| a.to_string()).as_deref());
}

impl HandedClient {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_long_bytes(out, self.user.as_bytes());
        put_long_bytes(out, self.db.as_bytes());
        put_addr(out, self.peer);
        put_addr(out, self.via);
        out.push(u8::from(self.unix));
        out.extend_from_slice(&(self.params.len() as u32).to_be_bytes());
        for (k, v) in &self.params {
            put_long_bytes(out, k.as_bytes());
            put_long_bytes(out, v.as_bytes());
        }
        out.extend_from_slice(&self.cancel_key.to_be_bytes());
        out.extend_from_slice(&(self.stmts.len() as u32).to_be_bytes());
        for (name, body) in &self.stmts {
            put_long_bytes(out, name.as_bytes());
            put_long_bytes(out, body);
        }
        out.extend_from_slice(&self.age_ms.to_be_bytes());
        match &self.scram_keys {
            None => out.push(0),
            Some((server, client)) => {
                out.push(1);
                out.extend_from_slice(server);
                out.extend_from_slice(client);
            }
        }
        match &self.proxy {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                put_long_str(out, p.tls.as_deref());
                put_long_str(out, p.tls_cn.as_deref());
                put_long_str(out, p.unique_id.as_deref());
                use crate::proxy_header::CloudEndpoint as E;
                match &p.endpoint {
                    None => out.push(0),
                    Some(E::AwsVpce(id)) => {
                        out.push(1);
                        put_long_bytes(out, id);
                    }
                    Some(E::AzureLink(id)) => {
                        out.push(2);
                        out.extend_from_slice(&id.to_be_bytes());
                    }
                    Some(E::GcpPsc(id)) => {
                        out.push(3);
                        out.extend_from_slice(&id.to_be_bytes());
                    }
                }
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<HandedClient, DecodeError> {
        let mut r = Reader(buf);
        let s = |r: &mut Reader| r.long_str()?.ok_or(DecodeError("no string"));
        let addr = |r: &mut Reader| -> Result<Option<std::net::SocketAddr>, DecodeError> {
            match r.long_str()? {
                None => Ok(None),
                Some(a) => a.parse().map(Some).map_err(|_| DecodeError("bad address")),
            }
        };
        let u64 = |r: &mut Reader| -> Result<u64, DecodeError> {
            Ok(u64::from(r.u32()?) << 32 | u64::from(r.u32()?))
        };
        let mut c = HandedClient {
            user: s(&mut r)?,
            db: s(&mut r)?,
            peer: addr(&mut r)?,
            via: addr(&mut r)?,
            unix: r.take(1)?[0] != 0,
            ..Default::default()
        };
        let n = r.u32()?;
        for _ in 0..n {
            let k = s(&mut r)?;
            c.params.push((k, s(&mut r)?));
        }
        c.cancel_key = u64(&mut r)?;
        let n = r.u32()?;
        for _ in 0..n {
            let name = s(&mut r)?;
            let body = r.long_bytes()?.ok_or(DecodeError("no statement"))?;
            c.stmts.push((name, body));
        }
        c.age_ms = u64(&mut r)?;
        c.scram_keys = match r.take(1)?[0] {
            0 => None,
            1 => {
                let mut server = [0u8; 32];
                server.copy_from_slice(r.take(32)?);
                let mut client = [0u8; 32];
                client.copy_from_slice(r.take(32)?);
                Some((server, client))
            }
            _ => return Err(DecodeError("bad option tag")),
        };
        c.proxy = match r.take(1)?[0] {
            0 => None,
            1 => {
                use crate::proxy_header::CloudEndpoint as E;
                let mut p = HandedProxy {
                    tls: r.long_str()?,
                    tls_cn: r.long_str()?,
                    unique_id: r.long_str()?,
                    endpoint: None,
                };
                p.endpoint = match r.take(1)?[0] {
                    0 => None,
                    1 => Some(E::AwsVpce(
                        r.long_bytes()?.ok_or(DecodeError("no endpoint"))?,
                    )),
                    2 => Some(E::AzureLink(r.u32()?)),
                    3 => Some(E::GcpPsc(u64(&mut r)?)),
                    _ => return Err(DecodeError("bad endpoint")),
                };
                Some(p)
            }
            _ => return Err(DecodeError("bad option tag")),
        };
        r.end()?;
        Ok(c)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => {
                let n = self.take(1)?[0] as usize;
                let s = self.take(n)?;
                Ok(Some(
                    String::from_utf8(s.to_vec()).map_err(|_| DecodeError("bad string"))?,
                ))
            }
            _ => Err(DecodeError("bad option tag")),
        }
    }

    fn long_bytes(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?.to_vec()))
    }

    fn long_str(&mut self) -> Result<Option<String>, DecodeError> {
        match self.long_bytes()? {
            None => Ok(None),
            Some(b) => Ok(Some(
                String::from_utf8(b).map_err(|_| DecodeError("bad string"))?,
            )),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::Reload,
            Command::Pause(None),
            Command::Pause(Some("app".into())),
            Command::Resume(Some("x".into())),
            Command::Shutdown,
            Command::ShutdownWaitForClients,
            Command::Cancel { pid: 7, key: 9 },
            Command::Collect {
                req: 3,
                what: What::Clients,
            },
            Command::Rows {
                req: 3,
                slot: 2,
                chunk: vec![1, 2, 3],
            },
            Command::AdminDone {
                req: 3,
                error: Some("x".into()),
                missing: vec![1],
            },
            Command::AdminDone {
                req: 4,
                error: None,
                missing: vec![],
            },
            Command::Kill(None),
            Command::KillClient { req: 1, id: 99 },
            Command::Disable {
                db: "app".into(),
                on: true,
            },
            Command::Disable {
                db: "app".into(),
                on: false,
            },
            Command::Reconnect(None),
            Command::Reconnect(Some("app".into())),
            Command::Wait {
                req: 5,
                until: Until::Paused(None),
            },
            Command::Wait {
                req: 6,
                until: Until::Closed(Some("app".into())),
            },
            Command::UpgradeDrain,
            Command::Adopt {
                state: vec![1, 2, 3],
            },
        ] {
            let mut b = Vec::new();
            c.encode(&mut b);
            assert_eq!(Command::decode(&b), Ok(c));
        }
        let handed = HandedClient {
            user: "app".into(),
            db: "db".into(),
            peer: Some("10.1.2.3:5555".parse().unwrap()),
            via: Some("[::1]:6000".parse().unwrap()),
            unix: false,
            params: vec![("application_name".into(), "x y".into())],
            cancel_key: u64::MAX - 5,
            stmts: vec![("s1".into(), b"SELECT 1\0\0\0".to_vec())],
            age_ms: 1234,
            scram_keys: Some(([1; 32], [2; 32])),
            proxy: Some(HandedProxy {
                tls: Some("TLSv1.3".into()),
                tls_cn: None,
                unique_id: Some("abc".into()),
                endpoint: Some(crate::proxy_header::CloudEndpoint::AwsVpce(
                    b"vpce-1".to_vec(),
                )),
            }),
        };
        let mut b = Vec::new();
        handed.encode(&mut b);
        assert_eq!(HandedClient::decode(&b), Ok(handed));
        for cut in 0..b.len() {
            assert!(HandedClient::decode(&b[..cut]).is_err(), "{cut}");
        }
        let unix = HandedClient {
            unix: true,
            ..Default::default()
        };
        let mut b = Vec::new();
        unix.encode(&mut b);
        assert_eq!(HandedClient::decode(&b), Ok(unix));
        for r in [
            Report::HandOver {
                state: vec![9; 300],
            },
            Report::Cancel { pid: 1, key: 2 },
            Report::Admin {
                req: 1,
                request: AdminRequest::Collect(What::Pools),
            },
            Report::Admin {
                req: 11,
                request: AdminRequest::Collect(What::Mem),
            },
            Report::Admin {
                req: 12,
                request: AdminRequest::Collect(What::DnsHosts),
            },
            Report::Admin {
                req: 2,
                request: AdminRequest::Set {
                    key: "a".into(),
                    value: "b".into(),
                },
            },
            Report::Admin {
                req: 3,
                request: AdminRequest::Kill(Some("db".into())),
            },
            Report::Admin {
                req: 4,
                request: AdminRequest::KillClient(7),
            },
            Report::Admin {
                req: 6,
                request: AdminRequest::Disable("db".into()),
            },
            Report::Admin {
                req: 7,
                request: AdminRequest::Enable("db".into()),
            },
            Report::Admin {
                req: 8,
                request: AdminRequest::Reconnect(None),
            },
            Report::Admin {
                req: 9,
                request: AdminRequest::WaitClose(Some("db".into())),
            },
            Report::Admin {
                req: 10,
                request: AdminRequest::ShutdownWait { clients: true },
            },
            Report::Admin {
                req: 11,
                request: AdminRequest::ShutdownWait { clients: false },
            },
            Report::Rows {
                req: 5,
                chunk: vec![9],
                last: true,
            },
        ] {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Report::decode(&b), Ok(r));
        }
        let rows = vec![vec![Some("a".to_string()), None], vec![Some(String::new())]];
        let mut b = Vec::new();
        encode_rows(&rows, &mut b);
        assert_eq!(decode_rows(&b), Ok(rows));
        assert!(Command::decode(&[9]).is_err());
        assert!(Command::decode(&[5, 0, 0]).is_err());
        assert!(Command::decode(&[4, 0]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = Command::decode(&buf);
            let _ = Report::decode(&buf);
            let _ = Snapshot::decode(&buf);
            let _ = decode_rows(&buf);
        }
    }
}
