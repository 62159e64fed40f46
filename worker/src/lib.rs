//! Everything that runs inside one pgbouncers worker process: the event loop, pools and the admin console, over the protocol crate.

mod access;
pub mod admin;
pub mod auth;
mod auth_cache;
mod auth_query;
pub mod buf;
mod cancel;
mod channel;
mod client;
mod close;

pub mod config;
pub(crate) mod conn;
pub mod control;
mod dns;

mod init;
mod janitor;
mod link;
mod listeners;
pub mod logfile;
mod login;
pub mod logsafe;
mod pool;
mod prepared;
mod proxy;
mod server;
pub mod shm;
pub mod stats;
mod stream;
pub mod tls;
mod worker;

pub use cancel::key_generation_matches;
pub use init::{ListenSocket, PassedFd, WorkerInit};
pub use worker::run;

// The sans-IO protocol crate, under the paths these modules had when they lived here.
pub(crate) use pgbouncers_proto::intern;
pub use pgbouncers_proto::{params, proxy_header, relay, wire};
