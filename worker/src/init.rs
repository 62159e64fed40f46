//! What the supervisor gives a worker to start with: the config, the listening sockets,
//! the control socket, shared memory and the descriptors an online upgrade passes on.

use crate::config::Config;
use crate::control;
use crate::shm::Shm;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Where a worker stands among the pooler's generations (online upgrades).
pub(crate) struct Lineage {
    /// 1 at a cold start, one more at each online upgrade: its parity is in every cancel
    /// key this worker hands out.
    pub generation: u32,
    /// The previous generation's shared memory while it drains: its client counts hold
    /// against max_client_conn, and SHOW WORKERS lists its workers.
    pub predecessor: Option<Arc<Shm>>,
    /// The descriptors an online upgrade passes to the next generation (SHOW FDS).
    pub passed: Arc<Vec<PassedFd>>,
}

/// A listening socket handed over by the supervisor.
pub enum ListenSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

pub struct WorkerInit {
    /// This worker's slot number (0-based), encoded in cancel keys.
    pub slot: usize,
    pub config: Arc<Config>,
    /// The auth file's content as the supervisor read and checked it.
    pub userlist: Option<String>,
    /// The hba file's content, likewise.
    pub hba: Option<String>,
    pub listeners: Vec<ListenSocket>,
    /// Key for mock SCRAM exchanges; the same in every worker so salts never vary.
    pub mock_key: [u8; 32],
    /// This worker's end of its control socketpair.
    pub control: Option<OwnedFd>,
    pub shm: Arc<Shm>,
    /// PAUSE and DISABLE in force when this worker starts.
    pub holds: control::Holds,
    /// The pooler generation (1 at a cold start, one more at each online upgrade): its
    /// parity is in every cancel key this worker hands out.
    pub generation: u32,
    /// The previous generation's shared memory while it drains after an online upgrade:
    /// SHOW WORKERS lists its workers too.
    pub predecessor: Option<Arc<Shm>>,
    /// The descriptors an online upgrade passes to the next generation (SHOW FDS).
    pub passed: Arc<Vec<PassedFd>>,
}

/// A descriptor the supervisor passes to its successor at an online upgrade.
#[derive(Debug, Clone)]
pub struct PassedFd {
    /// Its number in the supervisor (and, after exec, in the successor).
    pub fd: i32,
    /// `listen` (a slot's TCP socket), `unix` (the Unix socket) or `shm`.
    pub task: &'static str,
    /// The worker slot a TCP socket belongs to.
    pub slot: Option<usize>,
    pub addr: String,
    pub port: u16,
}
