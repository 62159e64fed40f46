//! The connection table's entries (a client, a server, an outgoing cancel) and the ids the
//! logs and SHOW give them.

use crate::client::Client;
use crate::server::Server;

/// Everything in the connection table.
pub(crate) enum Conn {
    Client(Box<Client>),
    Server(Box<Server>),
    /// An outgoing CancelRequest on its way to a PostgreSQL server.
    Cancel(crate::cancel::CancelConn),
}

/// A client's or server's id from its worker's sequence number `n`: what logs (`C-<id>`,
/// `S-<id>`), SHOW CLIENTS/SERVERS and KILL_CLIENT all use, one sequence for clients and
/// servers as in PgBouncer. Unique across workers without a shared counter (the low byte
/// is the slot), so not sequential as PgBouncer's; 31 bits, as the column is int4.
pub(crate) fn shown_id(slot: usize, n: u64) -> u64 {
    ((n & 0x7f_ffff) << 8) | (slot as u64 & 0xff)
}
