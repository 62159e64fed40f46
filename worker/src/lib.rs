//! Everything that runs inside one pgbouncers worker process: codecs, auth, pools and the event loop.

mod access;
pub mod admin;
pub mod auth;
mod auth_cache;
pub mod buf;
mod cancel;
mod client;
pub(crate) mod commands;
pub mod config;
pub mod control;
mod dns;
mod intern;
mod janitor;
mod link;
pub mod logfile;
pub mod logsafe;
pub mod params;
mod pool;
mod prepared;
mod proxy;
pub mod proxy_header;
pub mod relay;
mod server;
pub mod shm;
mod stats;
mod stream;
pub mod wire;
mod worker;

pub use worker::{run, ListenSocket, WorkerInit};
