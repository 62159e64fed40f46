//! What a handler leaves for other connections and pools: queued by `close_client`,
//! `remove_server` and a retired pool's queues, and applied by the loop in one place once
//! the handler returns.

use super::Worker;
use crate::client::CState;
use crate::close::Close;
use crate::config::PoolMode;
use crate::pool::PoolId;

/// One thing a close leaves to do to another connection or to a pool. A connection is
/// named by its slot and its id: the slot may be free, or hold a newer connection, by
/// the time the loop gets here.
pub(crate) enum Followup {
    /// A client left the server it was linked to (unlinked already, so nothing takes it
    /// meanwhile): the server is reset, made ready, or closed.
    ServerLeft {
        st: usize,
        id: u64,
        clean: bool,
        mode: PoolMode,
    },
    /// A replication client whose own server went away before they were linked is told
    /// why and closed. (A linked client is closed with its server at once.)
    CloseClient { ct: usize, id: u64, why: Close },
    /// A client's auth_query lookup ran on a server that closed before answering; `why`
    /// is what the log says.
    LookupLost { ct: usize, id: u64, why: String },
    /// A server left the pool: its waiting clients may get a server now.
    ServeWaiting(PoolId),
    /// A client taken off a retired pool's queue (or a replication client queued during a
    /// pause) asks for a server again.
    RequestServer { ct: usize, id: u64 },
    /// A client taken off a retired pool's auth_query queue starts its login over.
    BeginAuth { ct: usize, id: u64 },
}

impl Worker {
    /// Applies the queued follow-ups, and those they queue in turn, in order. Each close
    /// only queues what it leaves, so no close runs inside another. Called after every
    /// handler, and nearly always with nothing queued: only that test is inlined.
    #[inline]
    pub(crate) fn settle(&mut self) {
        if !self.later.followups.is_empty() {
            self.apply_followups();
        }
    }

    #[inline(never)]
    fn apply_followups(&mut self) {
        while let Some(f) = self.later.followups.pop_front() {
            match f {
                Followup::ServerLeft {
                    st,
                    id,
                    clean,
                    mode,
                } => {
                    if self.server(st).is_some_and(|s| s.id == id) {
                        self.client_left_server(st, clean, mode);
                    }
                }
                Followup::CloseClient { ct, id, why } => {
                    if self.client(ct).is_some_and(|c| c.id == id) {
                        self.close_client(ct, why);
                    }
                }
                Followup::LookupLost { ct, id, why } => self.lookup_answered(ct, id, Err(why)),
                Followup::ServeWaiting(pool) => self.serve_waiting(pool),
                Followup::RequestServer { ct, id } => {
                    if self.client(ct).is_some_and(|c| c.id == id) {
                        self.request_server(ct);
                    }
                }
                Followup::BeginAuth { ct, id } => {
                    if self
                        .client(ct)
                        .is_some_and(|c| c.id == id && matches!(c.state, CState::Startup))
                    {
                        self.begin_auth(ct);
                    }
                }
            }
        }
    }
}
