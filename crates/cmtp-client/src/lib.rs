//! The CMTP wire client: one connection, server discovery, errors.
//!
//! This is what both ends that *dial* a CMTP server share: `cmtpd` uses it
//! to relay mail to other domains and to fetch their keys, and the user's
//! application (`cmtp-app`, behind the `cmtp` command) uses it to talk to
//! the user's own server. It holds no user state: no home directory, no
//! keys, no mailbox (PROTOCOL.md §4, §5, §14).
//!
//! Modules:
//! - [`conn`]: one CMTP connection: banner, OHAI, signed replies, MAIL,
//!   APPEND, FETCH.
//! - [`error`]: errors a person can act on.
//! - [`discovery`]: finding a domain's CMTP servers (static routes, SRV, MX,
//!   implicit MX) and its published key fingerprints through DNS.
//! - [`clock`]: wall-clock helpers (the protocol crate never reads the clock).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cmtp_client::ClientError> {
//! use std::time::Duration;
//! use cmtp_client::Connection;
//! let mut conn = Connection::connect("127.0.0.1:9001".parse().unwrap(), Duration::from_secs(5)).await?;
//! let greeting = conn.ohai().await?;
//! println!("{} offers up to {} bytes per message", greeting.domain, greeting.max_message_size);
//! conn.close().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod clock;
pub mod conn;
pub mod discovery;
pub mod error;

pub use conn::Connection;
pub use error::ClientError;
