//! Test support for cmtp.
//!
//! - [`dns`]: an in-process authoritative DNS server ([`dns::TestDns`]) whose
//!   records can be changed while it runs, a SERVFAIL/REFUSED mode, and a
//!   [`dns::Blackhole`] that never answers (for resolver timeouts).
//! - [`postgres`]: throwaway PostgreSQL clusters ([`postgres::PgCluster`]) and
//!   the skip-or-fail policy for PostgreSQL suites ([`postgres::pg_or_skip`]).
//! - [`tmpfs`]: a small tmpfs for full-disk tests ([`tmpfs::Tmpfs`]).
//! - [`tools`]: outside software the interop tests need ([`tools::need`]).
//!
//! Every server started here binds to the loopback interface only.

#![forbid(unsafe_code)]

pub mod dns;
pub mod postgres;
pub mod tmpfs;
pub mod tools;
