//! The arrival record of a message that came by SMTP (PROTOCOL.md §19.2).
//!
//! When cmtpd accepts a message by SMTP it seals it at once to the
//! recipient's key (crypto system 1) as a message from its own server: the
//! inner text is this record, and the one attachment, `message.eml`, is the
//! RFC 5322 message as it arrived (with the server's `Received:` and
//! `Authentication-Results:` fields on top). The record says what the
//! server knew that the message itself does not: who connected, the
//! envelope, whether the session was encrypted, and the verdicts of SPF,
//! DKIM, DMARC and ARC. A client recognises the record by its first line
//! and shows the message as "arrived by SMTP ... not end-to-end encrypted".
//!
//! ```text
//! CMTP-SMTP-Arrival: 1
//! Peer: mail.a.example [192.0.2.1]
//! Mail-From: <alice@a.example>
//! Rcpt-To: <bob@b.example>
//! TLS: TLSv1.3
//! SPF: pass a.example
//! DKIM: pass a.example
//! DMARC: pass a.example
//! ARC: none
//! Received-At: 2026-12-01T10:00:00Z
//! ```
//!
//! Each verdict is `<result> [<domain>]`; `DKIM` may appear once per
//! signature. Unknown fields are ignored by readers; values are single
//! lines of at most [`MAX_VALUE`] bytes.

use std::fmt::Write as _;

use thiserror::Error;

/// The first line of every arrival record.
pub const MAGIC: &str = "CMTP-SMTP-Arrival: 1";

/// The name of the attachment that holds the RFC 5322 message.
pub const ATTACHMENT_NAME: &str = "message.eml";

/// Longest value of a field; longer ones are cut.
pub const MAX_VALUE: usize = 512;

/// Most DKIM verdicts kept.
pub const MAX_DKIM: usize = 16;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ArrivalError {
    /// The text does not start with [`MAGIC`].
    #[error("not an SMTP arrival record")]
    NotArrival,
    /// A line is not `Field: value`.
    #[error("malformed line in the arrival record: {0:?}")]
    Malformed(String),
}

/// One authentication verdict (SPF, DKIM, DMARC or ARC).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`,
    /// `permerror`, `policy` (as in RFC 8601).
    pub result: String,
    /// The domain the verdict is about (the DKIM `d=`, the SPF domain, the
    /// DMARC `From:` domain), if any.
    pub domain: Option<String>,
}

impl Verdict {
    /// A verdict.
    pub fn new(result: &str, domain: Option<&str>) -> Verdict {
        Verdict {
            result: result.to_owned(),
            domain: domain.filter(|d| !d.is_empty()).map(str::to_owned),
        }
    }

    /// `none`.
    pub fn none() -> Verdict {
        Verdict::new("none", None)
    }

    /// Whether it is `pass`.
    pub fn is_pass(&self) -> bool {
        self.result == "pass"
    }

    fn encode(&self) -> String {
        match &self.domain {
            Some(d) => format!("{} {d}", self.result),
            None => self.result.clone(),
        }
    }

    fn parse(v: &str) -> Verdict {
        let mut it = v.split_whitespace();
        let result = it.next().unwrap_or("none").to_ascii_lowercase();
        Verdict {
            result,
            domain: it.next().map(str::to_owned),
        }
    }
}

/// What the receiving server knew about a message that came by SMTP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arrival {
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// The client's IP address.
    pub ip: String,
    /// The envelope sender (empty: the null sender `<>`).
    pub mail_from: String,
    /// The envelope recipient this copy was sealed for.
    pub rcpt_to: String,
    /// The TLS version of the session, or `None` if it was not encrypted.
    pub tls: Option<String>,
    /// SPF (RFC 7208) for the envelope sender's domain.
    pub spf: Verdict,
    /// DKIM (RFC 6376), one verdict per signature (none: unsigned).
    pub dkim: Vec<Verdict>,
    /// DMARC (RFC 7489) for the `From:` domain.
    pub dmarc: Verdict,
    /// ARC (RFC 8617) chain validation.
    pub arc: Verdict,
    /// When the message was accepted (RFC 3339 UTC).
    pub received_at: String,
}

fn clean(v: &str) -> String {
    let mut s: String = v
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Arrival {
    /// The record as text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "Peer: {} [{}]", clean(&self.helo), clean(&self.ip));
        let _ = writeln!(s, "Mail-From: <{}>", clean(&self.mail_from));
        let _ = writeln!(s, "Rcpt-To: <{}>", clean(&self.rcpt_to));
        let _ = writeln!(s, "TLS: {}", clean(self.tls.as_deref().unwrap_or("none")));
        let _ = writeln!(s, "SPF: {}", clean(&self.spf.encode()));
        if self.dkim.is_empty() {
            let _ = writeln!(s, "DKIM: none");
        }
        for d in self.dkim.iter().take(MAX_DKIM) {
            let _ = writeln!(s, "DKIM: {}", clean(&d.encode()));
        }
        let _ = writeln!(s, "DMARC: {}", clean(&self.dmarc.encode()));
        let _ = writeln!(s, "ARC: {}", clean(&self.arc.encode()));
        let _ = writeln!(s, "Received-At: {}", clean(&self.received_at));
        s
    }

    /// Reads a record (the inner text of a message from the own server).
    pub fn parse(text: &str) -> Result<Arrival, ArrivalError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim_end) != Some(MAGIC) {
            return Err(ArrivalError::NotArrival);
        }
        let mut a = Arrival::default();
        for line in lines {
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(": ")
                .ok_or_else(|| ArrivalError::Malformed(line.chars().take(80).collect()))?;
            let v = clean(v.trim());
            match k {
                "Peer" => {
                    let (helo, ip) = match v.rsplit_once(" [") {
                        Some((h, ip)) => (h.to_owned(), ip.trim_end_matches(']').to_owned()),
                        None => (v.clone(), String::new()),
                    };
                    a.helo = helo;
                    a.ip = ip;
                }
                "Mail-From" => a.mail_from = unbracket(&v),
                "Rcpt-To" => a.rcpt_to = unbracket(&v),
                "TLS" => a.tls = (v != "none").then_some(v),
                "SPF" => a.spf = Verdict::parse(&v),
                "DKIM" => {
                    let d = Verdict::parse(&v);
                    if d.result != "none" && a.dkim.len() < MAX_DKIM {
                        a.dkim.push(d);
                    }
                }
                "DMARC" => a.dmarc = Verdict::parse(&v),
                "ARC" => a.arc = Verdict::parse(&v),
                "Received-At" => a.received_at = v,
                _ => {}
            }
        }
        Ok(a)
    }

    /// The line a client shows above the message, e.g. `arrived by SMTP
    /// from mail.a.example [192.0.2.1], DKIM pass for a.example; not
    /// end-to-end encrypted`.
    pub fn summary(&self) -> String {
        format!(
            "arrived by SMTP {}; not end-to-end encrypted",
            self.details()
        )
    }

    /// The mark for a one-line listing, the warning first so that it
    /// survives truncation: `not end-to-end encrypted: SMTP from
    /// mail.a.example [192.0.2.1], DKIM pass for a.example`.
    pub fn short(&self) -> String {
        format!("not end-to-end encrypted: SMTP {}", self.details())
    }

    /// Where the message came from and what its checks found: `from
    /// mail.a.example [192.0.2.1], DKIM pass for a.example`, with the DMARC
    /// result unless `none`, and `unencrypted connection` without TLS.
    pub fn details(&self) -> String {
        let mut s = format!("from {} [{}]", self.helo, self.ip);
        let passes: Vec<&str> = self
            .dkim
            .iter()
            .filter(|d| d.is_pass())
            .filter_map(|d| d.domain.as_deref())
            .collect();
        if passes.is_empty() {
            match self.dkim.first() {
                Some(d) => {
                    let _ = write!(s, ", DKIM {}", d.result);
                    if let Some(dom) = &d.domain {
                        let _ = write!(s, " for {dom}");
                    }
                }
                None => s.push_str(", no DKIM signature"),
            }
        } else {
            let _ = write!(s, ", DKIM pass for {}", passes.join(", "));
        }
        if self.dmarc.result != "none" {
            let _ = write!(s, ", DMARC {}", self.dmarc.result);
        }
        if self.tls.is_none() {
            s.push_str(", unencrypted connection");
        }
        s
    }
}

fn unbracket(v: &str) -> String {
    v.trim_start_matches('<').trim_end_matches('>').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Arrival {
        Arrival {
            helo: "mail.a.example".into(),
            ip: "192.0.2.1".into(),
            mail_from: "alice@a.example".into(),
            rcpt_to: "bob@b.example".into(),
            tls: Some("TLSv1.3".into()),
            spf: Verdict::new("pass", Some("a.example")),
            dkim: vec![Verdict::new("pass", Some("a.example"))],
            dmarc: Verdict::new("pass", Some("a.example")),
            arc: Verdict::none(),
            received_at: "2026-12-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let a = sample();
        let text = a.encode();
        assert!(text.starts_with("CMTP-SMTP-Arrival: 1\nPeer: mail.a.example [192.0.2.1]\n"));
        assert_eq!(Arrival::parse(&text).unwrap(), a);
    }

    #[test]
    fn the_summary_names_the_host_and_the_dkim_domain() {
        assert_eq!(
            sample().summary(),
            "arrived by SMTP from mail.a.example [192.0.2.1], DKIM pass for a.example, DMARC pass; not end-to-end encrypted"
        );
        assert_eq!(
            sample().short(),
            "not end-to-end encrypted: SMTP from mail.a.example [192.0.2.1], DKIM pass for a.example, DMARC pass"
        );
        let mut a = sample();
        a.dkim.clear();
        a.dmarc = Verdict::none();
        a.tls = None;
        assert_eq!(
            a.summary(),
            "arrived by SMTP from mail.a.example [192.0.2.1], no DKIM signature, unencrypted connection; not end-to-end encrypted"
        );
    }

    #[test]
    fn values_cannot_add_fields() {
        let mut a = sample();
        a.helo = "evil\nDKIM: pass bank.example".into();
        let back = Arrival::parse(&a.encode()).unwrap();
        assert_eq!(back.dkim.len(), 1);
        assert_eq!(back.helo, "evil DKIM: pass bank.example");
    }

    #[test]
    fn other_text_is_not_a_record() {
        assert_eq!(
            Arrival::parse("Reason: EXPIRED\n"),
            Err(ArrivalError::NotArrival)
        );
    }
}
