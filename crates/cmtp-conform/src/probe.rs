//! A connection to the target as the rules use it (PROTOCOL.md §4.1, §4.4,
//! §5).
//!
//! [`Probe`] reads the banner in clear, runs the TLS 1.3 handshake (as a
//! CMTP/2 client unless a rule plays another), sends well-formed commands (encoded by
//! cmtp-proto) or hand-built bytes, and reads replies. Every reply is
//! checked as it arrives: its framing (§5.1) and its signature (§5.3) under
//! the server key, bound to the connection nonce, the reply's position and
//! the digest of the request it answers. Replies read before the nonce is
//! known (a command before OHAI) are checked as soon as OHAI gives it.
//! Whatever goes wrong becomes a [`Stop`] that says what was expected and
//! what came.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cmtp_proto::banner::{Banner, decode_banner};
use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::crypto::{PublicKey, SignatureTag};
use cmtp_proto::payload::{DeliveryFailure, Greeting};
use cmtp_proto::reply::{Reply, ReplyBinding, Status, body_hash, decode_reply};

use crate::tls::Client;
use crate::transport::{ReadOutcome, TlsInfo, Transport};

/// What the banner of a server ready for commands looks like (§4.1).
pub(crate) const READY_BANNER: &str =
    "the banner `554 <domain> CMTP/2 <software> ready; TLS 1.3 follows; ...` (§4.1)";

/// A hint for the usual handshake failures.
fn alert_name_hint(e: &str) -> &'static str {
    if e.contains("NoApplicationProtocol") {
        " (the server does not speak ALPN cmtp/2)"
    } else if e.contains("UnsupportedCertificate") || e.contains("certificate type") {
        " (the server does not present its key as a raw public key, RFC 7250)"
    } else {
        ""
    }
}

/// Largest reply body accepted unless a rule says otherwise.
pub(crate) const MAX_BODY: u64 = 1 << 20;

/// Why a rule stopped before passing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The target broke the rule.
    Fail {
        /// What the specification asks for.
        expected: String,
        /// What the target did.
        got: String,
    },
    /// The rule cannot be checked from here.
    NotTestable(String),
}

/// A failure: `expected` is what the specification asks for, `got` what came.
pub(crate) fn fail(expected: impl Into<String>, got: impl Into<String>) -> Stop {
    Stop::Fail {
        expected: expected.into(),
        got: got.into(),
    }
}

/// The outcome of one check inside a rule.
pub(crate) type Check<T = ()> = Result<T, Stop>;

/// A short human description of a reply: status and text (or body size).
pub(crate) fn describe(r: &Reply) -> String {
    let printable = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .filter(|s| !s.chars().any(|c| c.is_control() && c != '\n'))
            .map(|s| s.replace('\n', " "))
    };
    let body = if r.body.is_empty() {
        "(empty body)".to_owned()
    } else if r.status == Status::DeliveryFailure {
        match DeliveryFailure::decode(&r.body) {
            Ok(f) => format!("{} {:?}", f.word, clip(&f.text)),
            Err(_) => format!("<{} bytes, not reason NUL text>", r.body.len()),
        }
    } else {
        match printable(&r.body) {
            Some(s) => format!("{:?}", clip(&s)),
            None => format!("<{} bytes>", r.body.len()),
        }
    };
    format!("{} {body}", r.status)
}

fn clip(s: &str) -> String {
    if s.chars().count() > 160 {
        let c: String = s.chars().take(160).collect();
        format!("{c}…")
    } else {
        s.to_owned()
    }
}

/// Reply read before the connection nonce was known.
struct Unverified {
    seq: u64,
    request: [u8; 32],
    reply: Reply,
}

/// One connection to the target.
pub(crate) struct Probe {
    t: Transport,
    buf: Vec<u8>,
    /// The banner line, without CR LF.
    pub(crate) banner: String,
    /// The domain the banner names.
    pub(crate) banner_domain: String,
    /// What the TLS handshake established.
    pub(crate) tls: TlsInfo,
    key: Option<PublicKey>,
    nonce: Option<[u8; 32]>,
    seq: u64,
    pending: Vec<Unverified>,
    /// How long a reply may take.
    pub(crate) timeout: Duration,
    /// Whether reply signatures are checked (off only for the first
    /// connection, which learns the key: the rules check them).
    pub(crate) check_signatures: bool,
}

/// What the target sent first.
pub(crate) struct BannerLine {
    /// The line, without its line end.
    pub(crate) line: String,
    /// The raw bytes, line end included.
    pub(crate) raw: Vec<u8>,
    /// What it says.
    pub(crate) banner: Banner,
}

/// Reads the first line from `t` (§4.1); leftover bytes stay in `buf`.
pub(crate) fn read_banner(
    t: &mut Transport,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Check<BannerLine> {
    let deadline = Instant::now() + timeout;
    loop {
        match decode_banner(buf) {
            Ok(Some((banner, n))) => {
                let raw: Vec<u8> = buf.drain(..n).collect();
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                return Ok(BannerLine { line, raw, banner });
            }
            Ok(None) => {}
            Err(()) => {
                return Err(fail(
                    "a banner line of at most 512 bytes ending in CR LF (§4.1)",
                    format!("{} bytes without a line end", buf.len()),
                ));
            }
        }
        match t.read_until(buf, deadline) {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => {
                return Err(fail(
                    "a banner line (§4.1)",
                    format!("the connection closed after {} bytes", buf.len()),
                ));
            }
            ReadOutcome::Timeout => {
                return Err(fail(
                    "a banner line (§4.1)",
                    format!("nothing within {}s", timeout.as_secs_f32()),
                ));
            }
        }
    }
}

impl Probe {
    /// Connects as a CMTP/2 client: reads the banner, which must be the
    /// ready form, and runs the TLS handshake (§4.1, §4.4).
    pub(crate) fn open(
        addr: SocketAddr,
        key: Option<PublicKey>,
        timeout: Duration,
    ) -> Check<Probe> {
        Probe::open_as(addr, key, timeout, Client::Cmtp, false)
    }

    /// As [`open`](Self::open), playing `client`; with `hello_first`, the
    /// ClientHello goes out at once, before the banner is read (as cmtp's
    /// client does).
    pub(crate) fn open_as(
        addr: SocketAddr,
        key: Option<PublicKey>,
        timeout: Duration,
        client: Client,
        hello_first: bool,
    ) -> Check<Probe> {
        let mut t = Transport::connect(addr, timeout).map_err(|e| {
            fail(
                "a TCP connection to the target",
                format!("cannot connect to {addr}: {e}"),
            )
        })?;
        let mut conn = client
            .connect()
            .map_err(|e| fail("a TLS client configuration", e))?;
        if hello_first {
            let hello = crate::transport::pending_output(&mut conn);
            t.write_all(&hello).map_err(|e| {
                fail(
                    "the target to read a ClientHello sent at once",
                    format!("writing failed: {e}"),
                )
            })?;
        }
        let mut buf = Vec::new();
        let b = read_banner(&mut t, &mut buf, timeout)?;
        let domain = match b.banner {
            Banner::Ready { domain } => domain,
            Banner::OldProtocol { .. } => {
                return Err(fail(
                    READY_BANNER,
                    format!(
                        "a CMTP/1 banner (the first, unencrypted version): {:?}",
                        b.line
                    ),
                ));
            }
            _ => return Err(fail(READY_BANNER, format!("{:?}", b.line))),
        };
        let tls = t
            .handshake(conn, &buf, Instant::now() + timeout)
            .map_err(|e| {
                fail(
                    "a TLS 1.3 handshake after the banner (§4.1, §4.4)",
                    format!("{e}{}", alert_name_hint(&e)),
                )
            })?;
        if tls.alpn.as_deref() != Some(cmtp_proto::tls::ALPN) {
            return Err(fail(
                "the TLS handshake agreeing on ALPN `cmtp/2` (§4.4)",
                match &tls.alpn {
                    None => "no ALPN protocol".to_owned(),
                    Some(p) => format!("ALPN {:?}", String::from_utf8_lossy(p)),
                },
            ));
        }
        Ok(Probe {
            t,
            buf: Vec::new(),
            banner: b.line,
            banner_domain: domain,
            tls,
            key,
            nonce: None,
            seq: 0,
            pending: Vec::new(),
            timeout,
            check_signatures: true,
        })
    }

    /// This connection's channel binding (the TLS exporter, §12).
    pub(crate) fn channel_binding(&self) -> [u8; 32] {
        self.tls.channel_binding
    }

    /// The number of replies read so far (the `seq` of the next one).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Sends bytes as they are.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Check {
        self.t.write_all(bytes).map_err(|e| {
            fail(
                "the target to read what the checker sends",
                format!("writing failed: {e}"),
            )
        })
    }

    /// Sends bytes and ignores a failure (the target may already have closed).
    pub(crate) fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.t.write_all(bytes);
    }

    /// Sends a command and reads its reply.
    pub(crate) fn cmd(&mut self, c: &Command) -> Check<Reply> {
        self.raw_cmd(&c.to_bytes(), c.word())
    }

    /// Sends hand-built command bytes and reads the reply, which answers
    /// exactly these bytes.
    pub(crate) fn raw_cmd(&mut self, bytes: &[u8], what: &str) -> Check<Reply> {
        self.send(bytes)?;
        self.reply(request_digest(bytes), what)
    }

    /// Sends a command and expects `status`.
    pub(crate) fn expect_cmd(&mut self, c: &Command, status: Status, why: &str) -> Check<Reply> {
        let r = self.cmd(c)?;
        expect_status(&r, &status, why)?;
        Ok(r)
    }

    /// OHAI: learns the nonce, checks the greeting's key against the
    /// expected key (or adopts it), and checks earlier replies.
    pub(crate) fn ohai(&mut self) -> Check<Greeting> {
        let r = self.cmd(&Command::Ohai)?;
        expect_status(&r, &Status::Success, "OHAI is answered SUCCESS (§6.1)")?;
        let g = Greeting::parse(&r.body).map_err(|e| {
            fail(
                "an OHAI body of `key: value` lines with domain, key, nonce and limits (§6.1)",
                format!("{e}"),
            )
        })?;
        match self.key {
            Some(k) if k != g.key => {
                return Err(fail(
                    format!(
                        "the server key {} in the greeting (the key of the first connection or --key)",
                        k.fingerprint_hex()
                    ),
                    format!("fingerprint {}", g.key.fingerprint_hex()),
                ));
            }
            Some(_) => {}
            None => self.key = Some(g.key),
        }
        match self.nonce {
            Some(n) if n != g.nonce => {
                return Err(fail(
                    "the same connection nonce from every OHAI on one connection (§5.3)",
                    format!("{} after {}", hex::encode(g.nonce), hex::encode(n)),
                ));
            }
            _ => self.nonce = Some(g.nonce),
        }
        for u in std::mem::take(&mut self.pending) {
            self.verify(u.seq, u.request, &u.reply)?;
        }
        Ok(g)
    }

    /// Reads the next reply, which answers the request with `request`
    /// digest, and checks its signature.
    pub(crate) fn reply(&mut self, request: [u8; 32], what: &str) -> Check<Reply> {
        self.reply_max(request, what, MAX_BODY)
    }

    /// As [`reply`](Self::reply) with a body limit.
    pub(crate) fn reply_max(&mut self, request: [u8; 32], what: &str, max: u64) -> Check<Reply> {
        let r = self.read_reply(what, max)?;
        let seq = self.seq;
        self.seq += 1;
        if self.nonce.is_some() {
            self.verify(seq, request, &r)?;
        } else {
            self.pending.push(Unverified {
                seq,
                request,
                reply: r.clone(),
            });
        }
        Ok(r)
    }

    fn read_reply(&mut self, what: &str, max: u64) -> Check<Reply> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match decode_reply(&self.buf, max) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(fail(
                        format!("a well-formed reply to {what} (§5.1)"),
                        format!("{e} (first bytes {})", hex_head(&self.buf)),
                    ));
                }
            }
            match self.t.read_until(&mut self.buf, deadline) {
                ReadOutcome::Data => {}
                ReadOutcome::Closed if self.buf.is_empty() => {
                    return Err(fail(
                        format!("a reply to {what}"),
                        format!(
                            "the connection closed without a reply ({})",
                            self.t.closed_why()
                        ),
                    ));
                }
                ReadOutcome::Closed => {
                    return Err(fail(
                        format!("a complete reply to {what}"),
                        format!(
                            "the connection closed after {} bytes of a reply ({}; {})",
                            self.buf.len(),
                            hex_head(&self.buf),
                            self.t.closed_why()
                        ),
                    ));
                }
                ReadOutcome::Timeout => {
                    return Err(fail(
                        format!("a reply to {what}"),
                        format!(
                            "no complete reply within {}s ({} bytes arrived)",
                            self.timeout.as_secs_f32(),
                            self.buf.len()
                        ),
                    ));
                }
            }
        }
    }

    /// Checks a reply's signature (§5.3); on failure, says which binding
    /// the signature does verify under, if any of the usual mistakes.
    fn verify(&self, seq: u64, request: [u8; 32], r: &Reply) -> Check {
        let (Some(key), Some(nonce), true) = (self.key, self.nonce, self.check_signatures) else {
            return Ok(());
        };
        let signed = |nonce: [u8; 32], seq: u64, request: [u8; 32]| {
            let data = ReplyBinding {
                nonce,
                seq,
                request,
            }
            .signed_data(&r.header(), &body_hash(&r.body));
            key.verify(SignatureTag::Reply, &[&data], &r.signature)
                .is_ok()
        };
        if r.version != 1 {
            return Err(fail(
                "reply version 1 (§5.1)",
                format!("version {}", r.version),
            ));
        }
        if signed(nonce, seq, request) {
            return Ok(());
        }
        let mail = request_digest(b"MAIL\0");
        let mut candidates: Vec<(String, [u8; 32], u64, [u8; 32])> = vec![
            ("request = 32 zero bytes".into(), nonce, seq, [0; 32]),
            ("request = H(\"MAIL\\0\")".into(), nonce, seq, mail),
            ("nonce = 32 zero bytes".into(), [0; 32], seq, request),
        ];
        if seq > 0 {
            candidates.push((format!("seq = {}", seq - 1), nonce, seq - 1, request));
        }
        candidates.push((format!("seq = {}", seq + 1), nonce, seq + 1, request));
        let hint = candidates
            .into_iter()
            .find(|(_, n, s, q)| signed(*n, *s, *q))
            .map(|(why, ..)| format!("; it verifies with {why} instead"))
            .unwrap_or_default();
        Err(fail(
            format!(
                "reply #{seq} ({}) signed by the server key over nonce, seq {seq} and the request digest {} (§5.3)",
                r.status,
                if request == [0; 32] {
                    "(32 zero bytes)".to_owned()
                } else {
                    hex::encode(&request[..8]) + "…"
                }
            ),
            format!("the signature does not verify{hint}"),
        ))
    }

    /// Expects the target to close the connection within `within`, sending
    /// nothing more.
    pub(crate) fn expect_closed(&mut self, within: Duration, after: &str) -> Check {
        let deadline = Instant::now() + within;
        loop {
            match self.t.read_until(&mut self.buf, deadline) {
                ReadOutcome::Data => {}
                ReadOutcome::Closed => break,
                ReadOutcome::Timeout => {
                    return Err(fail(
                        format!("the connection closed after {after}"),
                        format!(
                            "still open {}s later{}",
                            within.as_secs_f32(),
                            if self.buf.is_empty() {
                                String::new()
                            } else {
                                format!(" ({} more bytes arrived)", self.buf.len())
                            }
                        ),
                    ));
                }
            }
        }
        if !self.buf.is_empty() {
            let extra = match decode_reply(&self.buf, MAX_BODY) {
                Ok(Some((r, _))) => format!("another reply: {}", describe(&r)),
                _ => format!("{} more bytes ({})", self.buf.len(), hex_head(&self.buf)),
            };
            return Err(fail(
                format!("nothing more before the close after {after}"),
                extra,
            ));
        }
        Ok(())
    }

    /// Expects the connection to be usable: NOOP is answered SUCCESS.
    pub(crate) fn expect_usable(&mut self, after: &str) -> Check {
        let r = self.cmd(&Command::Noop).map_err(|e| match e {
            Stop::Fail { got, .. } => fail(
                format!("the connection to stay usable after {after} (NOOP answered)"),
                got,
            ),
            other => other,
        })?;
        expect_status(
            &r,
            &Status::Success,
            &format!("the connection stays usable after {after}: NOOP is answered SUCCESS"),
        )
    }
}

/// The first bytes of `b` in hex, for messages.
pub(crate) fn hex_head(b: &[u8]) -> String {
    let n = b.len().min(24);
    let mut s = hex::encode(&b[..n]);
    if b.len() > n {
        s.push('…');
    }
    s
}

/// Expects `r` to carry `status`; `why` says what the specification asks.
pub(crate) fn expect_status(r: &Reply, status: &Status, why: &str) -> Check {
    if &r.status == status {
        Ok(())
    } else {
        Err(fail(why, describe(r)))
    }
}

/// Expects a DELIVERYFAILURE with `reason` (§10.2).
pub(crate) fn expect_delivery_failure(r: &Reply, reason: &str, why: &str) -> Check {
    let ok = r.status == Status::DeliveryFailure
        && DeliveryFailure::decode(&r.body).is_ok_and(|f| f.word == reason);
    if ok {
        Ok(())
    } else {
        Err(fail(why, describe(r)))
    }
}
