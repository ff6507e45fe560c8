//! End-to-end tests of the `cmtp` client: the real `cmtp` binary against real
//! `cmtpd` processes on loopback (and a real SMTP server, aiosmtpd).
//!
//! Every test starts its own servers on free ports with a lowered Argon2id
//! floor (256 KiB, 1 pass, 1 lane) so that logins are fast; the client gets
//! the same floor through `CMTP_MIN_KSF` or `[security.min_ksf]`.
//!
//! `cmtpd` must be built first (`cargo build -p cmtpd`); it is found next to
//! this test's executable (`target/debug/cmtpd`).

mod auth;
mod cli;
mod content;
mod dns;
mod kt;
mod mail;
mod postfix;
mod reset;
mod setup;
mod smtp;
mod store;
mod support;
