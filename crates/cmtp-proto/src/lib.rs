//! Sans-IO core of the Cipher Mail Transport Protocol (CMTP).
//!
//! This crate holds everything both ends of a CMTP connection must agree on,
//! and nothing else: no sockets, no async runtime, no clock reads (callers pass
//! `now` in). The normative description is `docs/PROTOCOL.md`; each module
//! names the section it implements.
#![forbid(unsafe_code)]

pub mod crypto;
