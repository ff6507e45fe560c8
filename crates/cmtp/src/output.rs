//! Printing results as text for people or JSON for scripts. Text from the
//! wire is stripped of control characters before it reaches a terminal.

use std::path::PathBuf;

use std::path::Path;

use cmtp_app::mailbox::{Verdict, sender, stored_verdict};
use cmtp_app::send::{Flushed, Outcome};
use cmtp_app::session::{AccountInfo, Client, VerifiedKey};
use cmtp_app::store::{Draft, OutboxEntry, StoredMessage};
use cmtp_client::clock::rfc3339;
use cmtp_proto::content::Attachment;
use cmtp_proto::names::Address;
use cmtp_proto::payload::mailbox::{SEEN, flag_names};
use serde_json::{Value, json};

use crate::Output;

/// Prints in the chosen format.
pub(crate) struct Printer {
    pub(crate) format: Output,
}

/// Removes control characters (terminal escapes) except newline and tab.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// One line: no control characters at all.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `1.5 MiB` and the like.
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn verdict_json(v: &Verdict) -> (Value, Value) {
    (json!(v.word()), json!(v.detail()))
}

fn signature_line(m: &StoredMessage, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Verified => format!("signed by {}, verified", sanitize(&sender(m))),
        Verdict::NotVerified(why) => format!("NOT VERIFIED: {}", one_line(why)),
        Verdict::Undecryptable(why) => format!("undecryptable: {}", one_line(why)),
    }
}

impl Printer {
    pub(crate) fn new(format: Output) -> Printer {
        Printer { format }
    }

    pub(crate) fn json(&self, v: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("JSON serialises")
        );
    }

    pub(crate) fn account(&self, what: &str, client: &Client, a: &AccountInfo) {
        match self.format {
            Output::Json => self.json(&json!({
                "address": a.address.to_string(),
                "fingerprint": a.statement.key.fingerprint_hex(),
                "server_fingerprint": a.server_key.fingerprint_hex(),
                "server_pin": a.pin.to_string(),
                "home": client.home().root(),
            })),
            Output::Text => {
                println!("{what} {}", a.address);
                println!(
                    "  your key fingerprint: {}",
                    a.statement.key.fingerprint_hex()
                );
                println!(
                    "  server key of {}:  {} ({})",
                    a.address.domain,
                    a.server_key.fingerprint_hex(),
                    a.pin
                );
                println!(
                    "  identity key saved in {} (never share it)",
                    client.home().identity_path().display()
                );
            }
        }
    }

    pub(crate) fn key(&self, address: &Address, k: &VerifiedKey) {
        let (issued, expires) = k
            .statement
            .as_ref()
            .map(|s| (s.issued_at, s.expires_at))
            .unwrap_or((0, 0));
        match self.format {
            Output::Json => self.json(&json!({
                "address": address.to_string(),
                "key": hex::encode(k.key.as_bytes()),
                "fingerprint": k.key.fingerprint_hex(),
                "statement": k.statement.as_ref().map(|s| hex::encode(s.to_bytes())),
                "signed_by": format!("server of {}", address.domain),
                "server_fingerprint": k.domain_key.fingerprint_hex(),
                "issued_at": rfc3339(issued),
                "expires_at": rfc3339(expires),
                "pin": k.pin.to_string(),
            })),
            Output::Text => {
                println!("address:     {address}");
                println!("key:         {}", hex::encode(k.key.as_bytes()));
                println!("fingerprint: {}", k.key.fingerprint_hex());
                println!(
                    "signed by:   the server of {} (key fingerprint {})",
                    address.domain,
                    k.domain_key.fingerprint_hex()
                );
                println!("valid:       {} to {}", rfc3339(issued), rfc3339(expires));
                println!("pin:         {}: {}", address.domain, k.pin);
            }
        }
    }

    pub(crate) fn sent(&self, o: &Outcome) {
        match self.format {
            Output::Json => self.json(&json!({
                "outbox_id": o.outbox_id,
                "delivered": o.delivered.iter().map(|d| json!({
                    "to": d.recipient,
                    "hash": hex::encode(d.hash),
                    "size": d.size,
                    "accepted_by": d.receipt.domain.to_string(),
                    "accepted_at": rfc3339(d.receipt.accepted_at),
                    "by_smtp": d.by_smtp,
                    "end_to_end": !d.by_smtp,
                })).collect::<Vec<_>>(),
                "failed": o.failed.iter().map(|(a, e)| json!({
                    "to": a,
                    "error": e.to_string(),
                })).collect::<Vec<_>>(),
                "sent_copy_filed": o.sent_copy_filed,
                "kept_as_draft": o.kept_as_draft,
            })),
            Output::Text => {
                for d in o.delivered.iter().filter(|d| d.by_smtp) {
                    eprintln!(
                        "note: {} has no CMTP service: your server sends that copy by SMTP, NOT end-to-end encrypted",
                        d.recipient
                    );
                }
                for d in &o.delivered {
                    println!(
                        "sent to {}{} ({}): signed receipt from {} at {}, hash {}",
                        d.recipient,
                        if d.by_smtp { " by SMTP" } else { "" },
                        human_size(d.size),
                        d.receipt.domain,
                        rfc3339(d.receipt.accepted_at),
                        hex::encode(&d.hash[..8])
                    );
                }
                for (a, e) in &o.failed {
                    eprintln!("NOT sent to {a}: {e}");
                }
            }
        }
    }

    fn message_json(m: &StoredMessage) -> Value {
        let verdict = stored_verdict(m);
        let (status, detail) = verdict_json(&verdict);
        json!({
            "id": m.uid,
            "from": sender(m),
            "subject": m.subject,
            "date": m.date,
            "received_at": rfc3339(m.received_at),
            "size": m.size,
            "attachments": m.attachment_count,
            "hash": hex::encode(m.hash),
            "status": status,
            "detail": detail,
            "verified": verdict == Verdict::Verified,
            "folder": m.folder,
            "flags": flag_names(m.flags),
            "seen": m.flags & SEEN != 0,
            "smtp": cmtp_app::smtp::listing(m).map(|(from, mark)| json!({"from": from, "mark": mark})),
        })
    }

    /// A message that arrived by SMTP (PROTOCOL.md §19.2): the header of
    /// the RFC 5322 message, the mark, the text (never HTML), attachments.
    pub(crate) fn smtp_message(
        &self,
        m: &StoredMessage,
        v: &cmtp_app::smtp::SmtpMail,
        saved: &[PathBuf],
    ) {
        match self.format {
            Output::Json => self.json(&json!({
                "id": m.uid,
                "from": v.from,
                "to": v.to,
                "cc": v.cc,
                "subject": v.subject,
                "date": v.date,
                "received_at": rfc3339(m.received_at),
                "size": m.size,
                "status": "smtp",
                "end_to_end": false,
                "mark": v.summary,
                "smtp": {
                    "peer": v.arrival.helo,
                    "ip": v.arrival.ip,
                    "mail_from": v.arrival.mail_from,
                    "tls": v.arrival.tls,
                    "spf": v.arrival.spf.result,
                    "dkim": v.arrival.dkim.iter().map(|d| json!({"result": d.result, "domain": d.domain})).collect::<Vec<_>>(),
                    "dmarc": v.arrival.dmarc.result,
                    "arc": v.arrival.arc.result,
                    "message_id": v.message_id,
                    "in_reply_to": v.in_reply_to,
                },
                "folder": m.folder,
                "flags": flag_names(m.flags),
                "text": v.text,
                "text_from_html": v.from_html,
                "attachments": v.attachments.iter().enumerate().map(|(i, a)| json!({
                    "name": a.name,
                    "size": a.data.len(),
                    "saved_to": saved.get(i),
                })).collect::<Vec<_>>(),
            })),
            Output::Text => {
                println!("From:      {}", one_line(&v.from));
                println!("To:        {}", one_line(&v.to.join(", ")));
                if !v.cc.is_empty() {
                    println!("Cc:        {}", one_line(&v.cc.join(", ")));
                }
                println!(
                    "Date:      {}",
                    one_line(v.date.as_deref().unwrap_or(&rfc3339(m.received_at)))
                );
                println!("Subject:   {}", one_line(&v.subject));
                for (i, a) in v.attachments.iter().enumerate() {
                    println!(
                        "Attachment: {} ({}){}",
                        one_line(&a.name),
                        human_size(a.data.len() as u64),
                        saved
                            .get(i)
                            .map(|p| format!(" saved to {}", p.display()))
                            .unwrap_or_default()
                    );
                }
                println!("Security:  {}", one_line(&v.summary));
                if v.from_html {
                    println!("           (HTML message shown as text)");
                }
                println!();
                print!("{}", sanitize(&v.text));
                if !v.text.ends_with('\n') {
                    println!();
                }
            }
        }
    }

    pub(crate) fn inbox(&self, messages: &[StoredMessage], total: u64, unread: u64) {
        match self.format {
            Output::Json => {
                let list: Vec<Value> = messages.iter().map(Self::message_json).collect();
                self.json(&Value::Array(list));
            }
            Output::Text => {
                if messages.is_empty() {
                    println!("no messages");
                    return;
                }
                let rows: Vec<[String; 6]> = messages
                    .iter()
                    .map(|m| {
                        let verdict = stored_verdict(m);
                        let (subject, date) = match (&m.subject, &m.date) {
                            (Some(s), Some(d)) => (one_line(s), one_line(d)),
                            _ => ("-".into(), rfc3339(m.received_at)),
                        };
                        let mark = if m.flags & SEEN == 0 { "*" } else { " " };
                        // Mail that arrived by SMTP is marked as such (§19.2).
                        let (from, signature) = cmtp_app::smtp::listing(m)
                            .unwrap_or_else(|| (sender(m), verdict.to_string()));
                        [
                            format!("{mark}{}", m.uid),
                            truncate(&one_line(&from), 32),
                            truncate(&subject, 40),
                            date,
                            human_size(m.size),
                            truncate(&one_line(&signature), 60),
                        ]
                    })
                    .collect();
                let head = ["ID", "FROM", "SUBJECT", "DATE", "SIZE", "SIGNATURE"];
                let mut w = head.map(|h| h.chars().count());
                for r in &rows {
                    for (i, c) in r.iter().enumerate() {
                        w[i] = w[i].max(c.chars().count());
                    }
                }
                let line = |r: [&str; 6]| {
                    format!(
                        "{:>w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {}",
                        r[0],
                        r[1],
                        r[2],
                        r[3],
                        r[4],
                        r[5],
                        w0 = w[0],
                        w1 = w[1],
                        w2 = w[2],
                        w3 = w[3],
                        w4 = w[4]
                    )
                };
                println!("{}", line(head));
                for r in &rows {
                    println!("{}", line(r.each_ref().map(|s| s.as_str())));
                }
                println!(
                    "{} of {total} messages, {unread} unread (* = unread)",
                    messages.len()
                );
            }
        }
    }

    pub(crate) fn thread(&self, messages: &[StoredMessage]) {
        match self.format {
            Output::Json => {
                let list: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        let mut v = Self::message_json(m);
                        v["text"] = json!(m.body);
                        v
                    })
                    .collect();
                self.json(&Value::Array(list));
            }
            Output::Text => {
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        println!("{}", "-".repeat(60));
                    }
                    let verdict = stored_verdict(m);
                    println!(
                        "[{}] {} — {} — {}",
                        m.uid,
                        one_line(&sender(m)),
                        one_line(m.date.as_deref().unwrap_or("")),
                        one_line(m.subject.as_deref().unwrap_or("-"))
                    );
                    println!("Signature: {}", signature_line(m, &verdict));
                    if !matches!(verdict, Verdict::Undecryptable(_)) {
                        println!();
                        let body = m.body.as_deref().unwrap_or("");
                        print!("{}", sanitize(body));
                        if !body.ends_with('\n') {
                            println!();
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn message(
        &self,
        m: &StoredMessage,
        verdict: &Verdict,
        attachments: &[Attachment],
        saved: &[PathBuf],
    ) {
        let to = m.destination.clone().unwrap_or_default();
        let text = m.body.clone().unwrap_or_default();
        let subject = m.subject.clone().unwrap_or_default();
        let date = m.date.clone().unwrap_or_default();
        match self.format {
            Output::Json => {
                let (status, detail) = verdict_json(verdict);
                self.json(&json!({
                    "id": m.uid,
                    "from": sender(m),
                    "to": to,
                    "cc": m.cc,
                    "reply_to": m.reply_to,
                    "subject": subject,
                    "date": date,
                    "received_at": rfc3339(m.received_at),
                    "size": m.size,
                    "status": status,
                    "detail": detail,
                    "verified": *verdict == Verdict::Verified,
                    "folder": m.folder,
                    "flags": flag_names(m.flags),
                    "text": text,
                    "attachments": attachments.iter().enumerate().map(|(i, a)| json!({
                        "name": a.name,
                        "size": a.data.len(),
                        "saved_to": saved.get(i),
                    })).collect::<Vec<_>>(),
                }));
            }
            Output::Text => {
                println!("From:      {}", one_line(&sender(m)));
                println!("To:        {}", one_line(&to));
                if !m.cc.is_empty() {
                    println!("Cc:        {}", one_line(&m.cc.join(", ")));
                }
                if let Some(r) = &m.reply_to {
                    println!("Reply-To:  {}", one_line(r));
                }
                println!("Date:      {}", one_line(&date));
                println!("Subject:   {}", one_line(&subject));
                if m.folder != "Inbox" {
                    println!("Folder:    {}", one_line(&m.folder));
                }
                for (i, a) in attachments.iter().enumerate() {
                    println!(
                        "Attachment: {} ({}){}",
                        one_line(&a.name),
                        human_size(a.data.len() as u64),
                        saved
                            .get(i)
                            .map(|p| format!(" saved to {}", p.display()))
                            .unwrap_or_default()
                    );
                }
                println!("Signature: {}", signature_line(m, verdict));
                println!();
                print!("{}", sanitize(&text));
                if !text.ends_with('\n') {
                    println!();
                }
            }
        }
    }

    fn entry_json(e: &OutboxEntry) -> Value {
        json!({
            "id": e.id,
            "created_at": rfc3339(e.created_at),
            "to": e.draft.to,
            "cc": e.draft.cc,
            "subject": e.draft.subject,
            "text": e.draft.text,
            "attachments": e.draft.attachments.iter().map(|a| json!({"name": a.name, "size": a.data.len()})).collect::<Vec<_>>(),
            "sealed": e.sealed,
            "attempts": e.attempts,
            "next_attempt_at": rfc3339(e.next_attempt_at),
            "last_error": e.last_error,
        })
    }

    pub(crate) fn outbox(&self, entries: &[OutboxEntry], path: &Path) {
        match self.format {
            Output::Json => self.json(&Value::Array(
                entries.iter().map(Self::entry_json).collect(),
            )),
            Output::Text => {
                if entries.is_empty() {
                    println!("the outbox is empty");
                    return;
                }
                for e in entries {
                    println!(
                        "{}  to {}  {:?}  {} attempt(s){}{}",
                        e.id,
                        one_line(&e.draft.to.join(", ")),
                        one_line(&e.draft.subject),
                        e.attempts,
                        if e.sealed { ", sealed" } else { "" },
                        e.last_error
                            .as_deref()
                            .map(|x| format!("; last error: {}", one_line(x)))
                            .unwrap_or_default()
                    );
                }
                println!(
                    "{} message(s) in {}; `cmtp outbox flush` sends them",
                    entries.len(),
                    path.display()
                );
            }
        }
    }

    pub(crate) fn flushed(&self, f: &Flushed, path: &Path) {
        match self.format {
            Output::Json => self.json(&json!({
                "sent": f.sent.iter().map(|o| json!({
                    "outbox_id": o.outbox_id,
                    "delivered": o.delivered.iter().map(|d| json!({
                        "to": d.recipient,
                        "hash": hex::encode(d.hash),
                    })).collect::<Vec<_>>(),
                    "failed": o.failed.iter().map(|(a, e)| json!({"to": a, "error": e.to_string()})).collect::<Vec<_>>(),
                    "kept_as_draft": o.kept_as_draft,
                })).collect::<Vec<_>>(),
                "kept": f.kept.iter().map(|(id, e)| json!({"id": id, "error": e.to_string()})).collect::<Vec<_>>(),
                "too_big": f.too_big.iter().map(|(id, d, e)| json!({"id": id, "draft": d, "error": e.to_string()})).collect::<Vec<_>>(),
            })),
            Output::Text => {
                for o in &f.sent {
                    self.sent(o);
                }
                for (id, e) in &f.kept {
                    eprintln!(
                        "outbox entry {id} stays in {}: {e}",
                        path.display()
                    );
                }
                for (id, d, e) in &f.too_big {
                    eprintln!("outbox entry {id} moved to draft {d}: {e}");
                }
                if f.sent.is_empty() && f.kept.is_empty() && f.too_big.is_empty() {
                    println!("the outbox is empty");
                }
            }
        }
    }

    pub(crate) fn drafts(&self, drafts: &[Draft]) {
        match self.format {
            Output::Json => self.json(&Value::Array(
                drafts
                    .iter()
                    .map(|d| {
                        json!({
                            "id": d.id,
                            "updated_at": rfc3339(d.updated_at),
                            "to": d.draft.to,
                            "cc": d.draft.cc,
                            "subject": d.draft.subject,
                            "text": d.draft.text,
                            "attachments": d.draft.attachments.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
                            "note": d.note,
                        })
                    })
                    .collect(),
            )),
            Output::Text => {
                if drafts.is_empty() {
                    println!("no drafts");
                }
                for d in drafts {
                    println!(
                        "{}  to {}  {:?}  {}{}",
                        d.id,
                        one_line(&d.draft.to.join(", ")),
                        one_line(&d.draft.subject),
                        rfc3339(d.updated_at),
                        d.note
                            .as_deref()
                            .map(|n| format!("  ({})", one_line(n)))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }

    pub(crate) fn draft_saved(&self, id: u64) {
        match self.format {
            Output::Json => self.json(&json!({ "draft": id })),
            Output::Text => println!(
                "saved draft {id}; `cmtp draft edit {id}` resumes it, `cmtp draft send {id}` sends it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_control_characters() {
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(sanitize("a\u{1b}[31mb\nc"), "a[31mb\nc");
        assert_eq!(one_line("a\nb"), "a b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
