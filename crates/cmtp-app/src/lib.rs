//! The user's mail program behind the `cmtp` command: the home directory,
//! accounts and sessions, the local store, sync, the outbox with
//! exactly-once sending, Sent copies and drafts. Only `cmtp` uses this
//! crate; the wire client it builds on (`cmtp-client`) is shared with the
//! server.
//!
//! Modules:
//! - [`home`]: the home directory (`~/.config/cmtp`): `config.toml`,
//!   `identity.key`, `known_domains`, `mail.db`, `cache/`.
//! - [`trust`]: pinned server keys (trust on first use, rotation chains) and
//!   verified key statements.
//! - [`session`]: [`session::Client`] (register, password login, key login,
//!   password change) and [`session::Session`] (a connection to the own
//!   server that verifies whose key is whose, and the mailbox commands).
//! - [`store`]: the local store (SQLite, mode 0600): messages with their
//!   verdicts, the sync position, the outbox, the drafts.
//! - [`sync`]: incremental sync (LISTPAGE once, then CHANGES; FETCH each
//!   message once; flags pushed).
//! - [`send`]: the outbox: seal once, send the same bytes until accepted,
//!   the Sent copy.
//! - [`compose`]: the editor's header template; replies, reply-all and
//!   forwards made from a stored message.
//! - [`address`]: recipients as people write them (`Name <addr>`, comma
//!   lists, aliases).
//! - [`contacts`]: contacts, their keys as first seen, key changes, safety
//!   numbers.
//! - [`search`]: full-text search (FTS5) over the local store.
//! - [`export`]: the local store as RFC 5322 messages in an mbox file or a
//!   Maildir.
//! - [`mailbox`]: opening and judging messages once, saving attachments
//!   safely.
//! - [`failure`]: the application's [`Error`] and its [`failure::ErrorKind`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), cmtp_app::Error> {
//! use cmtp_app::home::Home;
//! use cmtp_app::session::{Client, Options};
//! use cmtp_app::store::LocalStore;
//! let client = Client::open(Home::at("/tmp/bob-home"), Options::default())?;
//! let address = client.address()?;
//! let mut store = LocalStore::open(&client.home().store_path(), &address.to_string())?;
//! let mut session = client.session().await?; // KEYLOGIN with the stored key
//! cmtp_app::sync::sync(&mut session, &mut store, |_| {}).await?;
//! for m in store.list("Inbox", 0, 50)? {
//!     println!("{} {} {:?}", m.uid, m.source, m.subject);
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod address;
pub mod compose;
pub mod contacts;
pub mod export;
pub mod failure;
pub mod home;
pub mod kt;
pub mod mailbox;
pub mod search;
pub mod send;
pub mod session;
pub mod smtp;
pub mod store;
pub mod sync;
pub mod trust;

pub use failure::Error;
