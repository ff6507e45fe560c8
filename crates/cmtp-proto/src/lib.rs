//! Sans-IO core of the Cipher Mail Transport Protocol (CMTP).
//!
//! This crate holds everything both ends of a CMTP connection must agree on,
//! and nothing else: no sockets, no async runtime, no clock reads (callers pass
//! `now` in), randomness only from a caller's RNG. The normative description is
//! `docs/PROTOCOL.md`; each module names the section it implements.
//!
//! | module | what |
//! |---|---|
//! | [`wire`] | integers, NUL-terminated strings, the bounded reader |
//! | [`limits`] | every limit of the protocol |
//! | [`names`] | [`names::Account`], [`names::Domain`], [`names::Address`] |
//! | [`banner`] | the connection banner, SMTP detection and refusals |
//! | [`command`] | command framing, incremental decoder, encoder |
//! | [`reply`] | reply framing, streaming decoder, the signed binding |
//! | [`connection`] | the rules of a connection: [`connection::server::ServerConnection`], [`connection::client::ClientConnection`] |
//! | [`message`] | the message format and its streaming reader |
//! | [`crypto`] | keys, signatures, sealed boxes, xzibit, OPAQUE |
//! | [`content`] | inner body, attachments, sender signature, crypto systems 0 and 1 |
//! | [`statements`] | key statements, rotations, receipts, trailers |
//! | [`kt`] | key transparency: epoch heads, cosignatures, proofs of misbehaviour, the chain rules |
//! | [`payload`] | reply bodies and extension payloads |
//! | [`account`] | the client's side of registration and login |
//!
//! ```
//! use cmtp_proto::command::{decode_command, Command};
//! let mut input = b"OHAI\0KEYREQUEST\0alice\0\0".to_vec();
//! let mut seen = Vec::new();
//! while let Some((cmd, used)) = decode_command(&input).unwrap() {
//!     seen.push(cmd.word());
//!     input.drain(..used);
//! }
//! assert_eq!(seen, ["OHAI", "KEYREQUEST"]);
//! ```
#![forbid(unsafe_code)]

pub mod account;
pub mod banner;
pub mod command;
pub mod connection;
pub mod content;
pub mod crypto;
pub mod kt;
pub mod limits;
pub mod message;
pub mod names;
pub mod payload;
pub mod reply;
pub mod statements;
pub mod tls;
pub mod wire;
