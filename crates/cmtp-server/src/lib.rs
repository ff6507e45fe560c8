//! `cmtp-server`: the cmtpd daemon as a library.
//!
//! [`Server::start`] binds the configured addresses and serves CMTP on each
//! connection with a [`session`] driver around the sans-IO `cmtp-proto` core:
//! the banner, the seven seed commands and the extensions (registration,
//! login, mailbox), signed replies, limits and timeouts. Accepted mail goes
//! into the `cmtp-store` backend (SQLite by default) before SUCCESS is sent;
//! mail for other domains goes into the relay queue, which [`relay`] delivers
//! through DNS discovery ([`remote`]). [`admin`] holds what the `cmtpd`
//! subcommands do (init, users, invites, queue). What a stranger can make
//! the server store, hold open, dial or compute is budgeted before it is
//! spent (PROTOCOL.md §15): [`limiter`] (peers, connection slots, logins,
//! rates), [`budget`] and [`disk`] (bytes being received, free space),
//! [`decoy`] (what unknown accounts are answered). [`kt`] keeps the domain's
//! key directory (akd), publishes its epochs, asks witnesses to cosign its
//! heads and witnesses other domains (PROTOCOL.md §20).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cfg = cmtp_server::config::Config::new("a.example", std::path::Path::new("/var/lib/cmtpd"));
//! let server = cmtp_server::Server::start(cfg).await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
mod auth;
pub mod budget;
pub mod config;
mod config_template;
pub mod decoy;
pub mod disk;
pub mod fair;
mod help;
pub mod housekeeping;
pub mod keyfile;
pub mod kt;
pub mod limiter;
mod mail;
mod mailbox;
mod maintenance;
pub mod quota;
pub mod relay;
pub mod reload;
pub mod remote;
mod reset;
mod server;
mod session;
pub mod smtp;
mod staging;
pub mod state;

pub use server::Server;
