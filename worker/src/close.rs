//! Why a client connection is closed, and what it is told: the verdict every part of the
//! worker returns, and the one place that carries it out applies.

/// Why a client is closed, and what it is told.
pub(crate) enum Close {
    /// Closed without a message (the client left, or it is beyond talking to).
    Quiet(&'static str),
    /// A FATAL ErrorResponse, then the close.
    Fatal(&'static str, String),
    /// An error from a server, passed on as it came.
    Relay(crate::wire::fields::ErrorFields),
}
