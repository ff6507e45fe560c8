//! The CMTP client library: connection, server discovery, key lookup and
//! pinning, send, login, and mailbox access.
//!
//! Modules:
//! - [`conn`]: one CMTP connection: banner, OHAI, signed replies, MAIL, FETCH.
//! - [`error`]: errors a person can act on.
//! - [`discovery`]: finding a domain's CMTP servers (static routes, SRV, MX,
//!   implicit MX) and its published key fingerprints through DNS.
//!
//! The high-level client, on which the `cmtp` command is a thin layer:
//! - [`home`]: the home directory (`~/.config/cmtp`): `config.toml`,
//!   `identity.key`, `known_domains`, `cache/`.
//! - [`trust`]: pinned server keys (trust on first use, rotation chains) and
//!   verified key statements.
//! - [`session`]: [`session::Client`] (register, password login, key login,
//!   password change) and [`session::Session`] (a connection to the own
//!   server that verifies whose key is whose).
//! - [`send`]: sealing one copy per recipient, submitting, checking receipts.
//! - [`mailbox`]: listing, fetching into the cache, decrypting, verifying,
//!   deleting, saving attachments safely.
//! - [`failure`]: the high-level [`Error`] and its [`failure::ErrorKind`].
//! - [`clock`]: wall-clock helpers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cmtp_client::Error> {
//! use cmtp_client::home::Home;
//! use cmtp_client::session::{Client, Options};
//! use cmtp_client::mailbox::Mailbox;
//! let client = Client::open(Home::at("/tmp/bob-home"), Options::default())?;
//! let mut session = client.session().await?; // KEYLOGIN with the stored key
//! let mut mailbox = Mailbox::open(client.home().cache_dir().join("messages"))?;
//! for m in mailbox.inbox(&mut session).await? {
//!     println!("{} {} {}", m.id, m.from(), m.verdict);
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod clock;
pub mod conn;
pub mod discovery;
pub mod error;
pub mod failure;
pub mod home;
pub mod mailbox;
pub mod send;
pub mod session;
pub mod trust;

pub use conn::Connection;
pub use error::ClientError;
pub use failure::Error;
