//! Mail that arrived by SMTP (PROTOCOL.md §19.2), as the mail program
//! shows it.
//!
//! The own server seals such mail on arrival as a message from itself: the
//! text is an arrival record ([`cmtp_smtp::arrival::Arrival`]), the one
//! attachment (`message.eml`) the RFC 5322 message. [`view`] recognises it
//! — only from the server of the recipient's own domain, whose signature
//! the sync verified like a notice's — and parses the MIME message
//! (`mail-parser`) into what a person reads: the sender and recipients
//! from its header, the text, and its attachments. HTML is never rendered:
//! the text alternative is shown, or the HTML converted to plain text, and
//! a terminal never gets control characters from it (the printer removes
//! them). The mark is plain: "arrived by SMTP from <host>, DKIM pass for
//! <domain>; not end-to-end encrypted".

use cmtp_proto::content::Attachment;
use cmtp_smtp::arrival::{ATTACHMENT_NAME, Arrival};
use mail_parser::{MessageParser, MimeHeaders};

use crate::failure::{Error, Result};
use crate::store::StoredMessage;

/// The word that starts the server's `KEYNOTAVAILABLE` text for a domain
/// reachable by SMTP only (PROTOCOL.md §19.3).
pub const NOCMTP: &str = "NOCMTP";

/// The file in the home that lists the contacts that may get mail by SMTP,
/// one address per line.
pub const CONTACTS_FILE: &str = "smtp-allowed";

/// Whether a key lookup failed because the recipient's domain has no CMTP
/// service and takes mail by SMTP only.
pub fn smtp_only(e: &Error) -> bool {
    match e {
        Error::NotFound(text) => text.split_whitespace().any(|w| w == NOCMTP),
        _ => false,
    }
}

/// The error for a recipient reachable by SMTP only, without consent.
pub fn consent_needed(r: &cmtp_proto::names::Address) -> Error {
    Error::Refused(format!(
        "{r}: {} has no CMTP service; it takes mail by SMTP only, which is NOT end-to-end \
         encrypted. To send anyway: --allow-smtp, or `cmtp contact allow-smtp {r}`",
        r.domain
    ))
}

fn contacts_path(home: &std::path::Path) -> std::path::PathBuf {
    home.join(CONTACTS_FILE)
}

/// The contacts that may get mail by SMTP (lower case).
pub fn allowed_contacts(home: &std::path::Path) -> Result<Vec<String>> {
    let path = contacts_path(home);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.trim().to_ascii_lowercase())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::file(path, e)),
    }
}

/// Adds (`allow`) or removes a contact's consent to SMTP.
pub fn set_contact(
    home: &std::path::Path,
    address: &cmtp_proto::names::Address,
    allow: bool,
) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut list = allowed_contacts(home)?;
    let a = address.to_string();
    list.retain(|x| *x != a);
    if allow {
        list.push(a);
    }
    let path = contacts_path(home);
    let tmp = path.with_extension("partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::file(&tmp, e))?;
    let text: String = list.iter().map(|l| format!("{l}\n")).collect();
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))
}

/// The recipients of `to` and `cc` that may get mail by SMTP: all of them
/// with `--allow-smtp`, else those in the contact list.
pub fn consented(
    home: &std::path::Path,
    all: bool,
    to: &[String],
    cc: &[String],
) -> Result<Vec<String>> {
    let contacts = allowed_contacts(home)?;
    Ok(to
        .iter()
        .chain(cc)
        .map(|r| bare_address(r))
        .filter(|r| all || contacts.contains(r))
        .collect())
}

/// The address of a recipient as written (`Bob <bob@b.example>` or
/// `bob@b.example`), lowercased.
fn bare_address(r: &str) -> String {
    let r = r.trim();
    let inner = match (r.rfind('<'), r.ends_with('>')) {
        (Some(i), true) => &r[i + 1..r.len() - 1],
        _ => r,
    };
    inner.trim().to_ascii_lowercase()
}

/// Message-ID, In-Reply-To (the first) and References of an RFC 5322
/// message, from its header only; `None` when it does not parse.
pub fn thread_headers(eml: &[u8]) -> Option<(Option<String>, Option<String>, Vec<String>)> {
    let msg = MessageParser::default().parse_headers(eml)?;
    let list = |v: Option<&[std::borrow::Cow<'_, str>]>| -> Vec<String> {
        v.unwrap_or_default()
            .iter()
            .filter(|s| !s.is_empty() && s.len() <= 998)
            .map(|s| s.to_string())
            .collect()
    };
    let id = msg
        .message_id()
        .filter(|s| !s.is_empty() && s.len() <= 998)
        .map(str::to_owned);
    let parent = list(msg.in_reply_to().as_text_list()).into_iter().next();
    let refs = list(msg.references().as_text_list());
    Some((id, parent, refs))
}

/// Largest RFC 5322 message parsed for display (bigger ones are shown by
/// their arrival record, with the message as the attachment).
pub const MAX_PARSE: usize = 64 << 20;

/// An SMTP message as a person reads it.
#[derive(Debug, Clone)]
pub struct SmtpMail {
    /// What the own server recorded when the message arrived.
    pub arrival: Arrival,
    /// The one line that marks it (`arrived by SMTP from ...; not
    /// end-to-end encrypted`).
    pub summary: String,
    /// The `From:` field (`Name <address>`), or the envelope sender.
    pub from: String,
    /// The `To:` addresses.
    pub to: Vec<String>,
    /// The `Cc:` addresses.
    pub cc: Vec<String>,
    /// The subject.
    pub subject: String,
    /// The `Date:` field (RFC 3339), if any.
    pub date: Option<String>,
    /// The `Message-ID:`.
    pub message_id: Option<String>,
    /// The `In-Reply-To:` ids.
    pub in_reply_to: Vec<String>,
    /// The text: the text/plain part, or the HTML part converted to text.
    pub text: String,
    /// Whether the text was converted from HTML.
    pub from_html: bool,
    /// The MIME attachments.
    pub attachments: Vec<Attachment>,
}

/// Whether `m` is mail the own server took by SMTP: a message from the
/// server of the recipient's own domain whose text is an arrival record.
pub fn is_smtp(m: &StoredMessage) -> bool {
    arrival(m).is_some()
}

/// The arrival record of `m`, if it is mail that arrived by SMTP.
pub fn arrival(m: &StoredMessage) -> Option<Arrival> {
    let server_domain = m.source.strip_prefix('@')?;
    let own = m.destination.as_deref()?.rsplit_once('@')?.1;
    if server_domain != own || m.verdict.as_deref() != Some("verified") {
        return None;
    }
    Arrival::parse(m.body.as_deref()?).ok()
}

/// The sender and the mark for a listing (`inbox`): the envelope sender,
/// and the short mark, its warning first (`not end-to-end encrypted: SMTP
/// from ...`) so that a narrow column keeps it.
pub fn listing(m: &StoredMessage) -> Option<(String, String)> {
    let a = arrival(m)?;
    let from = if a.mail_from.is_empty() {
        "<> (a bounce)".to_owned()
    } else {
        a.mail_from.clone()
    };
    Some((format!("{from} (SMTP)"), a.short()))
}

fn addr_list(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    let Some(a) = a else {
        return Vec::new();
    };
    a.iter()
        .map(|x| match (&x.name, &x.address) {
            (Some(n), Some(ad)) => format!("{n} <{ad}>"),
            (None, Some(ad)) => ad.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// `m` as SMTP mail, given its attachments (the one CMTP attachment holds
/// the RFC 5322 message); `None` if it is not SMTP mail.
pub fn view(m: &StoredMessage, attachments: &[Attachment]) -> Option<SmtpMail> {
    let arrival = arrival(m)?;
    let summary = arrival.summary();
    let eml = attachments
        .iter()
        .find(|a| a.name == ATTACHMENT_NAME)
        .map(|a| a.data.as_slice())
        .unwrap_or_default();
    let mut mail = SmtpMail {
        from: arrival.mail_from.clone(),
        to: vec![arrival.rcpt_to.clone()],
        cc: Vec::new(),
        subject: m.subject.clone().unwrap_or_default(),
        date: None,
        message_id: None,
        in_reply_to: Vec::new(),
        text: String::new(),
        from_html: false,
        attachments: Vec::new(),
        summary,
        arrival,
    };
    if eml.len() > MAX_PARSE {
        mail.text = format!(
            "(a message of {} bytes; saved whole as {ATTACHMENT_NAME})",
            eml.len()
        );
        mail.attachments = attachments.to_vec();
        return Some(mail);
    }
    let Some(msg) = MessageParser::default().parse(eml) else {
        mail.text = String::from_utf8_lossy(eml).into_owned();
        return Some(mail);
    };
    if let Some(from) = addr_list(msg.from()).into_iter().next() {
        mail.from = from;
    }
    let to = addr_list(msg.to());
    if !to.is_empty() {
        mail.to = to;
    }
    mail.cc = addr_list(msg.cc());
    if let Some(s) = msg.subject() {
        mail.subject = s.to_owned();
    }
    mail.date = msg.date().map(|d| d.to_rfc3339());
    mail.message_id = msg.message_id().map(str::to_owned);
    mail.in_reply_to = match msg.in_reply_to().as_text_list() {
        Some(list) => list.iter().map(|s| s.to_string()).collect(),
        None => msg
            .in_reply_to()
            .as_text()
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
    };
    // The text/plain alternative if there is one; otherwise mail-parser
    // converts the HTML part to text. HTML itself is never shown.
    let has_plain = msg
        .text_body
        .first()
        .and_then(|&i| msg.parts.get(i as usize))
        .is_some_and(|p| p.is_content_type("text", "plain"));
    mail.from_html = !has_plain && !msg.html_body.is_empty();
    mail.text = msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
    for (i, part) in msg.attachments().enumerate() {
        let name = part
            .attachment_name()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("attachment-{}", i + 1));
        let media_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_owned(),
            })
            .unwrap_or_default()
            .to_ascii_lowercase();
        mail.attachments.push(Attachment {
            name,
            media_type,
            data: part.contents().to_vec(),
        });
    }
    Some(mail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(body: &str) -> StoredMessage {
        StoredMessage {
            uid: 1,
            hash: [0; 32],
            flags: 0,
            folder: "Inbox".into(),
            size: 0,
            received_at: 0,
            source: "@b.test".into(),
            destination: Some("bob@b.test".into()),
            verdict: Some("verified".into()),
            verdict_detail: None,
            subject: Some("Report".into()),
            date: None,
            reply_to: None,
            cc: Vec::new(),
            body: Some(body.into()),
            attachment_names: vec![ATTACHMENT_NAME.into()],
            attachment_count: 1,
            content_version: Some(2),
            from_name: None,
            to: Vec::new(),
            bcc: Vec::new(),
            message_id: None,
            in_reply_to: None,
            references: Vec::new(),
            thread_id: None,
            date_ts: None,
        }
    }

    fn record() -> String {
        Arrival {
            helo: "mail.pf.test".into(),
            ip: "127.0.0.1".into(),
            mail_from: "carol@pf.test".into(),
            rcpt_to: "bob@b.test".into(),
            tls: Some("TLSv1.3".into()),
            dkim: vec![cmtp_smtp::arrival::Verdict::new("pass", Some("pf.test"))],
            ..Arrival::default()
        }
        .encode()
    }

    const EML: &str = "From: Carol <carol@pf.test>\r\nTo: bob@b.test\r\nSubject: Report\r\n\
        Message-ID: <r1@pf.test>\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
        --b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n\
        --b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob, plain.\r\n\
        --b2\r\nContent-Type: text/html\r\n\r\n<p>Hello <script>alert(1)</script>Bob</p>\r\n--b2--\r\n\
        --b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n";

    #[test]
    fn smtp_mail_is_parsed_into_text_and_attachments_with_the_plain_alternative() {
        let m = stored(&record());
        let eml = Attachment {
            name: ATTACHMENT_NAME.into(),
            media_type: "message/rfc822".into(),
            data: EML.as_bytes().to_vec(),
        };
        let v = view(&m, &[eml]).expect("SMTP mail");
        assert_eq!(v.from, "Carol <carol@pf.test>");
        assert_eq!(v.text.trim(), "Hello Bob, plain.");
        assert!(!v.from_html);
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(v.attachments[0].name, "r.pdf");
        assert_eq!(v.attachments[0].data, b"%PDF-1.4\n");
        assert_eq!(v.attachments[0].media_type, "application/pdf");
        assert_eq!(v.message_id.as_deref(), Some("r1@pf.test"));
        // What the local store threads SMTP mail by.
        let (id, parent, refs) = thread_headers(EML.as_bytes()).unwrap();
        assert_eq!(id.as_deref(), Some("r1@pf.test"));
        assert_eq!((parent, refs.len()), (None, 0));
        let reply = "Message-ID: <r2@pf.test>\r\nIn-Reply-To: <a1@b.test>\r\nReferences: <a0@b.test> <a1@b.test>\r\n\r\nhi\r\n";
        let (id, parent, refs) = thread_headers(reply.as_bytes()).unwrap();
        assert_eq!(id.as_deref(), Some("r2@pf.test"));
        assert_eq!(parent.as_deref(), Some("a1@b.test"));
        assert_eq!(refs, ["a0@b.test", "a1@b.test"]);
        assert_eq!(
            v.summary,
            "arrived by SMTP from mail.pf.test [127.0.0.1], DKIM pass for pf.test; not end-to-end encrypted"
        );
    }

    #[test]
    fn html_only_mail_is_shown_as_text_without_markup() {
        let m = stored(&record());
        let eml = "From: x@pf.test\r\nSubject: h\r\nContent-Type: text/html\r\n\r\n<html><body><p>Hi <b>Bob</b></p><script>evil()</script></body></html>\r\n";
        let v = view(
            &m,
            &[Attachment {
                name: ATTACHMENT_NAME.into(),
                media_type: "message/rfc822".into(),
                data: eml.as_bytes().to_vec(),
            }],
        )
        .unwrap();
        assert!(v.from_html);
        assert!(v.text.contains("Hi Bob"), "{:?}", v.text);
        assert!(!v.text.contains('<'), "{:?}", v.text);
        assert!(
            !v.text.contains("evil"),
            "script content is not text: {:?}",
            v.text
        );
    }

    #[test]
    fn only_the_own_servers_verified_records_count() {
        assert!(is_smtp(&stored(&record())));
        let mut foreign = stored(&record());
        foreign.source = "@evil.test".into();
        assert!(!is_smtp(&foreign));
        let mut unverified = stored(&record());
        unverified.verdict = Some("not-verified".into());
        assert!(!is_smtp(&unverified));
        assert!(!is_smtp(&stored("Reason: EXPIRED\n")));
        let (from, mark) = listing(&stored(&record())).unwrap();
        assert_eq!(from, "carol@pf.test (SMTP)");
        assert!(mark.starts_with("not end-to-end encrypted: SMTP from mail.pf.test"));
    }
}
