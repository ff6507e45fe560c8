//! Sans-IO SMTP for cmtpd's gateway (PROTOCOL.md §19).
//!
//! cmtpd can be a domain's whole mail server: CMTP between CMTP users, and
//! standard SMTP with everyone else. This crate holds the parts of SMTP that
//! are rules rather than I/O, in the manner of `cmtp-proto`: no sockets, no
//! async runtime, no clock reads (`now` is passed in).
//!
//! | module | what |
//! |---|---|
//! | [`server`] | the receiving side of an SMTP connection (RFC 5321): framing, the command state machine, ESMTP (SIZE, PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS), DATA with dot-unstuffing and the refusal of bare CR and bare LF |
//! | [`address`] | reverse and forward paths: `<local@domain>`, the null path, source routes, the limits of RFC 5321 §4.5.3.1 |
//! | [`reply`] | SMTP replies with enhanced status codes |
//! | [`arrival`] | the arrival record: what the receiving server knew about a message that came by SMTP (peer, envelope, TLS, SPF/DKIM/DMARC/ARC), sealed with it to the recipient |
//!
//! The tokio shell that runs [`server::SmtpServer`] on a socket, seals what
//! arrives and delivers outbound mail is `cmtp-server`'s `smtp` module.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use cmtp_smtp::server::{Event, ServerConfig, SmtpServer};
//! let now = Instant::now();
//! let mut smtp = SmtpServer::new(ServerConfig::new("mx.example.org"), now);
//! assert!(smtp.take_output().starts_with(b"220 mx.example.org ESMTP"));
//! smtp.receive(b"EHLO client.example\r\nMAIL FROM:<a@client.example> SIZE=100\r\n", now);
//! // EHLO is answered by the machine; MAIL asks the application.
//! assert!(matches!(smtp.poll_event(), Some(Event::Hello { .. })));
//! let Some(Event::MailFrom { size, .. }) = smtp.poll_event() else { panic!() };
//! assert_eq!(size, Some(100));
//! smtp.accept();
//! let out = String::from_utf8(smtp.take_output()).unwrap();
//! assert!(out.contains("250-PIPELINING\r\n") && out.ends_with("250 2.1.0 Ok\r\n"));
//! # let _ = Duration::ZERO;
//! ```
#![forbid(unsafe_code)]

pub mod address;
pub mod arrival;
pub mod reply;
pub mod server;
