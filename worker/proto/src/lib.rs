//! The pgbouncers protocol crate: wire codecs, PROXY headers, relay decisions, session parameters, auth, the control-channel codec and the console parser; sans-IO by construction, as it depends on nothing that can touch a socket.
//!
//! Every function here takes bytes (or text) and returns a decision; the worker's event loop
//! does the reads and writes. The exceptions are `Userlist::load` and `Hba::load`, which read
//! their file with `std::fs`. Randomness and time are passed in by the caller.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cidr;
pub mod console;
pub mod control;
pub mod intern;
pub mod params;
pub mod proxy_header;
pub mod relay;
pub mod text;
pub mod wire;
