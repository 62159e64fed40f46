//! Everything that runs inside one pgbouncers worker process: codecs, auth, pools and the event loop.

pub mod auth;
pub mod config;
pub mod proxy_header;
