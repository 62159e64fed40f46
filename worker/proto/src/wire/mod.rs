//! PostgreSQL wire protocol: framing, the first packet, and message writers (no I/O).

pub mod fields;
pub mod frame;
pub mod startup;
pub mod write;

/// Protocol 3.0, the only major version PostgreSQL speaks.
pub const PROTOCOL_3_0: u32 = 196_608;
/// The newest minor version we accept without negotiation.
pub const NEWEST_MINOR: u16 = 0;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A ReadyForQuery's transaction status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: no transaction is open.
    #[default]
    Idle,
    /// `T`: inside a transaction block.
    InTransaction,
    /// `E`: inside a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status byte as PostgreSQL sends it. Anything but `I`, `T` and `E` is none of
    /// PostgreSQL's; it reads as a failed transaction, which keeps a pooled server from
    /// being released in a state nobody understands.
    pub fn from_byte(b: u8) -> TxStatus {
        match b {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InTransaction,
            _ => TxStatus::Failed,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// SQLSTATE codes the pooler itself reports.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const INTERNAL_ERROR: &str = "XX000";
}
