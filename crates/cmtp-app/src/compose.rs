//! Writing messages: the text a person edits — a header block (To, Cc,
//! Bcc, Subject), an empty line, then the text, as mutt and himalaya open
//! the editor ([`template`] writes it, [`parse`] reads it back) — and the
//! messages made from another: [`reply`] (and reply-all) with the quoted
//! text and the thread headers, [`forward`] with the attachments.

use cmtp_proto::content::Attachment;
use cmtp_proto::limits::MAX_REFERENCES;
use cmtp_proto::names::Address;

use crate::address::{parse_resolved, split_list};
use crate::failure::{Error, Result};
use crate::store::{Composed, StoredAttachment, StoredMessage};

/// The editor's text for `c`.
pub fn template(c: &Composed) -> String {
    let bcc = if c.bcc.is_empty() {
        String::new()
    } else {
        format!("Bcc: {}\n", c.bcc.join(", "))
    };
    format!(
        "To: {}\nCc: {}\n{bcc}Subject: {}\n\n{}",
        c.to.join(", "),
        c.cc.join(", "),
        c.subject,
        c.text
    )
}

/// A header value as a list: comma-separated entries; an entry of bare
/// addresses separated by spaces (`a@x b@y`) counts as several.
fn list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in split_list(v) {
        let words: Vec<&str> = piece.split_whitespace().collect();
        if !piece.contains('<') && words.len() > 1 && words.iter().all(|w| w.contains('@')) {
            out.extend(words.into_iter().map(str::to_owned));
        } else {
            out.push(piece);
        }
    }
    out
}

/// Reads an edited template back into `c` (attachments and the plaintext
/// choice stay as they were). Header lines are `Name: value` (To, Cc and
/// Subject, any case) up to the first empty line; anything else there is
/// refused, so that a mistyped header is not sent as text.
pub fn parse(edited: &str, c: &Composed) -> Result<Composed> {
    let mut out = Composed {
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: String::new(),
        text: String::new(),
        ..c.clone()
    };
    let mut rest = edited;
    loop {
        let (line, next) = match rest.split_once('\n') {
            Some((l, n)) => (l, Some(n)),
            None => (rest, None),
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            out.text = next.unwrap_or("").to_owned();
            return Ok(out);
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Error::Invalid(format!(
                "the header line {line:?} is not `Name: value`; leave an empty line between the headers and the text"
            ))
        })?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "to" => out.to.extend(list(value)),
            "cc" => out.cc.extend(list(value)),
            "bcc" => out.bcc.extend(list(value)),
            "subject" => out.subject = value.to_owned(),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown header {other:?} (To, Cc, Bcc and Subject are known)"
                )));
            }
        }
        match next {
            Some(n) => rest = n,
            None => return Ok(out),
        }
    }
}

/// The sender of a stored message as a mailbox string (`Name <addr>`), or
/// `None` for a server's notice.
pub fn sender_mailbox(m: &StoredMessage) -> Option<String> {
    if m.source.starts_with('@') {
        return None;
    }
    Some(match m.from_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => {
            let addr = Address::parse(&m.source).ok()?;
            cmtp_proto::content::Mailbox::new(name, addr).to_string()
        }
        None => m.source.clone(),
    })
}

/// `Re: subject`, unless it already starts with `Re:`.
pub fn reply_subject(subject: &str) -> String {
    if subject.trim_start().to_ascii_lowercase().starts_with("re:") {
        subject.to_owned()
    } else {
        format!("Re: {subject}")
    }
}

/// `Fwd: subject`.
pub fn forward_subject(subject: &str) -> String {
    let lower = subject.trim_start().to_ascii_lowercase();
    if lower.starts_with("fwd:") || lower.starts_with("fw:") {
        subject.to_owned()
    } else {
        format!("Fwd: {subject}")
    }
}

/// The references of a reply to `m`: its references and its own id, at
/// most 64 (the first and the last 63 kept), as RFC 5322 §3.6.4 does.
pub fn reply_references(m: &StoredMessage) -> Vec<String> {
    let mut refs = m.references.clone();
    if let Some(id) = m.message_id.clone().filter(|id| !id.is_empty()) {
        refs.push(id);
    }
    if refs.len() > MAX_REFERENCES {
        let keep_tail = MAX_REFERENCES - 1;
        let tail = refs.split_off(refs.len() - keep_tail);
        refs.truncate(1);
        refs.extend(tail);
    }
    refs
}

fn who(m: &StoredMessage) -> String {
    match (sender_mailbox(m), m.source.strip_prefix('@')) {
        (Some(s), _) => s,
        (None, Some(d)) => format!("the server of {d}"),
        (None, None) => m.source.clone(),
    }
}

/// `text` with each line quoted (`> `), after an attribution line.
pub fn quote(m: &StoredMessage) -> String {
    let mut out = format!(
        "On {}, {} wrote:\n",
        m.date.as_deref().unwrap_or("an unknown date"),
        who(m)
    );
    for line in m.body.as_deref().unwrap_or("").lines() {
        if line.is_empty() {
            out.push_str(">\n");
        } else {
            out.push_str("> ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A reply to `m` as `me` (reply-all when `all`): to the sender (or their
/// Reply-To); with `all`, also to the other To recipients, with the Cc
/// recipients as Cc, never to `me` and never to anyone the copy listed as
/// Bcc. A reply to one's own message goes to its recipients. The subject
/// gets `Re:`, the thread headers follow `m`, and `m`'s text is quoted
/// below an empty first paragraph.
pub fn reply(m: &StoredMessage, me: &Address, all: bool) -> Result<Composed> {
    if m.verdict.as_deref() == Some("undecryptable") || m.verdict.is_none() {
        return Err(Error::Invalid(format!(
            "message {} cannot be read, so it cannot be answered",
            m.uid
        )));
    }
    let is_me = |s: &str| {
        parse_resolved(&[s.to_owned()])
            .map(|l| l.iter().any(|x| x.address == *me))
            .unwrap_or(false)
    };
    let from_me = m.source == me.to_string();
    let original_to: Vec<String> = if m.to.is_empty() {
        m.destination.clone().into_iter().collect()
    } else {
        m.to.clone()
    };
    let mut to: Vec<String> = Vec::new();
    let mut cc: Vec<String> = Vec::new();
    if from_me {
        to.extend(original_to.iter().cloned());
        if all {
            cc.extend(m.cc.iter().cloned());
        }
    } else {
        match (&m.reply_to, sender_mailbox(m)) {
            (Some(r), _) => to.push(r.clone()),
            (None, Some(s)) => to.push(s),
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "message {} is a notice from a server; it cannot be answered",
                    m.uid
                )));
            }
        }
        if all {
            to.extend(original_to.iter().filter(|a| !is_me(a)).cloned());
            cc.extend(m.cc.iter().filter(|a| !is_me(a)).cloned());
        }
    }
    // Each address once, To first.
    let mut seen: Vec<Address> = Vec::new();
    let mut dedup = |list: Vec<String>| -> Vec<String> {
        list.into_iter()
            .filter(|s| match parse_resolved(std::slice::from_ref(s)) {
                Ok(l) if l.len() == 1 => {
                    let a = l[0].address.clone();
                    if seen.contains(&a) {
                        false
                    } else {
                        seen.push(a);
                        true
                    }
                }
                _ => false,
            })
            .collect()
    };
    let to = dedup(to);
    let cc = dedup(cc);
    Ok(Composed {
        to,
        cc,
        subject: reply_subject(m.subject.as_deref().unwrap_or("")),
        text: format!("\n{}", quote(m)),
        in_reply_to: m.message_id.clone().unwrap_or_default(),
        references: reply_references(m),
        answers: Some(m.uid),
        ..Composed::default()
    })
}

/// A forward of `m` with its attachments (byte for byte, with their media
/// types): the subject gets `Fwd:`, the text the forwarded message's
/// header and text below an empty first paragraph. No recipient yet.
pub fn forward(m: &StoredMessage, attachments: &[Attachment]) -> Result<Composed> {
    if m.verdict.as_deref() == Some("undecryptable") || m.verdict.is_none() {
        return Err(Error::Invalid(format!(
            "message {} cannot be read, so it cannot be forwarded",
            m.uid
        )));
    }
    let mut text = String::from("\n---------- Forwarded message ----------\n");
    text.push_str(&format!("From: {}\n", who(m)));
    if let Some(d) = &m.date {
        text.push_str(&format!("Date: {d}\n"));
    }
    text.push_str(&format!(
        "Subject: {}\n",
        m.subject.as_deref().unwrap_or("")
    ));
    let to: Vec<String> = if m.to.is_empty() {
        m.destination.clone().into_iter().collect()
    } else {
        m.to.clone()
    };
    if !to.is_empty() {
        text.push_str(&format!("To: {}\n", to.join(", ")));
    }
    if !m.cc.is_empty() {
        text.push_str(&format!("Cc: {}\n", m.cc.join(", ")));
    }
    text.push('\n');
    text.push_str(m.body.as_deref().unwrap_or(""));
    Ok(Composed {
        subject: forward_subject(m.subject.as_deref().unwrap_or("")),
        text,
        attachments: attachments
            .iter()
            .map(|a| StoredAttachment {
                name: a.name.clone(),
                media_type: a.media_type.clone(),
                data: a.data.clone(),
            })
            .collect(),
        ..Composed::default()
    })
}

/// A media type for a file name, from its extension (what the sender's
/// system would say for the common kinds); `application/octet-stream`
/// otherwise.
pub fn guess_media_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "ics" => "text/calendar",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "xml" => "application/xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "odt" => "application/vnd.oasis.opendocument.text",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "eml" => "message/rfc822",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(uid: u64, source: &str) -> StoredMessage {
        StoredMessage {
            uid,
            hash: [0; 32],
            flags: 0,
            folder: "Inbox".into(),
            size: 1,
            received_at: 1,
            source: source.into(),
            destination: Some("bob@b.test".into()),
            verdict: Some("verified".into()),
            verdict_detail: None,
            subject: Some("Plans".into()),
            date: Some("2026-11-26T02:00:00Z".into()),
            reply_to: None,
            cc: vec!["Carol <carol@c.test>".into(), "bob@b.test".into()],
            body: Some("line one\n\nline two\n".into()),
            attachment_names: vec![],
            attachment_count: 0,
            content_version: Some(2),
            from_name: Some("Alice".into()),
            to: vec!["Bob <bob@b.test>".into(), "dan@d.test".into()],
            bcc: vec!["bob@b.test".into()],
            message_id: Some("m2@a.test".into()),
            in_reply_to: Some("m1@b.test".into()),
            references: vec!["m1@b.test".into()],
            thread_id: Some("id:m1@b.test".into()),
            date_ts: Some(1),
        }
    }

    #[test]
    fn replies_go_to_the_right_people_and_thread() {
        let bob = Address::parse("bob@b.test").unwrap();
        let m = stored(7, "alice@a.test");
        let r = reply(&m, &bob, false).unwrap();
        assert_eq!(r.to, ["Alice <alice@a.test>"]);
        assert!(r.cc.is_empty());
        assert_eq!(r.subject, "Re: Plans");
        assert_eq!(r.in_reply_to, "m2@a.test");
        assert_eq!(r.references, ["m1@b.test", "m2@a.test"]);
        assert_eq!(r.answers, Some(7));
        assert!(
            r.text
                .contains("Alice <alice@a.test> wrote:\n> line one\n>\n> line two\n")
        );
        let all = reply(&m, &bob, true).unwrap();
        assert_eq!(all.to, ["Alice <alice@a.test>", "dan@d.test"]);
        assert_eq!(all.cc, ["Carol <carol@c.test>"]);
        assert_eq!(reply_subject("RE: x"), "RE: x");
        // One's own message: to its recipients.
        let mine = reply(&stored(8, "bob@b.test"), &bob, true).unwrap();
        assert_eq!(mine.to, ["Bob <bob@b.test>", "dan@d.test"]);
        // Long threads keep the first and the last 63 references.
        let mut long = stored(9, "alice@a.test");
        long.references = (0..80).map(|n| format!("r{n}@x")).collect();
        let refs = reply_references(&long);
        assert_eq!(refs.len(), MAX_REFERENCES);
        assert_eq!(refs[0], "r0@x");
        assert_eq!(refs.last().unwrap(), "m2@a.test");
        // Notices and unreadable mail are not answered.
        assert!(reply(&stored(3, "@a.test"), &bob, false).is_err());
        let mut bad = stored(4, "alice@a.test");
        bad.verdict = Some("undecryptable".into());
        assert!(reply(&bad, &bob, false).is_err());
    }

    #[test]
    fn forwards_keep_the_attachments_and_say_what_they_forward() {
        let m = stored(7, "alice@a.test");
        let f = forward(
            &m,
            &[Attachment::new("a.pdf", "application/pdf", vec![0, 255, 7])],
        )
        .unwrap();
        assert_eq!(f.subject, "Fwd: Plans");
        assert!(f.to.is_empty());
        assert!(f.text.contains("From: Alice <alice@a.test>\n"));
        assert!(f.text.ends_with("line one\n\nline two\n"));
        assert_eq!(f.attachments[0].data, [0, 255, 7]);
        assert_eq!(f.attachments[0].media_type, "application/pdf");
        assert_eq!(guess_media_type("X.PDF"), "application/pdf");
        assert_eq!(guess_media_type("noext"), "application/octet-stream");
    }

    #[test]
    fn a_template_reads_back() {
        let c = Composed {
            to: vec!["bob@b.test".into(), "carol@c.test".into()],
            cc: vec![],
            subject: "Grüße".into(),
            text: "Hallo\n\nzweiter Absatz\n".into(),
            ..Composed::default()
        };
        assert_eq!(parse(&template(&c), &c).unwrap(), c);
        let edited = "to: bob@b.test,  dave@d.test\nCC: eve@e.test\nSubject:  Hi  \n\nText\n";
        let p = parse(edited, &Composed::default()).unwrap();
        assert_eq!(p.to, ["bob@b.test", "dave@d.test"]);
        assert_eq!(p.cc, ["eve@e.test"]);
        assert_eq!(p.subject, "Hi");
        assert_eq!(p.text, "Text\n");
        let p = parse(
            "To: Bob <bob@b.test>, \"Smith, Dan\" <dan@d.test> x@y.test\nBcc: e@e.test\n\nt",
            &Composed::default(),
        )
        .unwrap();
        assert_eq!(
            p.to,
            ["Bob <bob@b.test>", "\"Smith, Dan\" <dan@d.test> x@y.test"]
        );
        assert_eq!(p.bcc, ["e@e.test"]);
        let p = parse("To: a@x.test b@y.test\n\nt", &Composed::default()).unwrap();
        assert_eq!(p.to, ["a@x.test", "b@y.test"]);
        assert!(parse("From: x@y.z\n\ntext", &Composed::default()).is_err());
        assert!(parse("just text\n", &Composed::default()).is_err());
    }
}
