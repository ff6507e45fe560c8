//! The connection rules of CMTP as sans-IO state machines, one per side
//! (PROTOCOL.md §4–§7, §12–§13), in the manner of quinn-proto and rustls:
//! bytes in, events and bytes out, time passed in, no I/O.
//!
//! - [`server::ServerConnection`]: what a server must do on a connection.
//! - [`client::ClientConnection`]: what a client must check on one.
//!
//! The async drivers (cmtp-server's session, cmtp-client's `Connection`)
//! only move bytes between a socket and these, and run the application's
//! part (storage, keys) when an event asks for it.

pub mod client;
pub mod server;

#[cfg(test)]
mod tests;
