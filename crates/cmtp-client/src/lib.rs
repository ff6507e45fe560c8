//! The CMTP client library: connection, server discovery, key lookup and
//! pinning, send, login, and mailbox access.
//!
//! Modules:
//! - [`conn`]: one CMTP connection: banner, OHAI, signed replies, MAIL, FETCH.
//! - [`error`]: errors a person can act on.
//! - [`discovery`]: finding a domain's CMTP servers (static routes, SRV, MX,
//!   implicit MX) and its published key fingerprints through DNS.

#![forbid(unsafe_code)]

pub mod conn;
pub mod discovery;
pub mod error;

pub use conn::Connection;
pub use error::ClientError;
