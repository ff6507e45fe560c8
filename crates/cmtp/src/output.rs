//! Printing results as text for people or JSON for scripts. Text from the
//! wire is stripped of control characters before it reaches a terminal.

use std::path::PathBuf;

use std::path::Path;

use cmtp_app::contacts::{Contact, KeyChange};
use cmtp_app::export::ExportReport;
use cmtp_app::mailbox::{Verdict, sender, stored_verdict};
use cmtp_app::send::{Flushed, Outcome};
use cmtp_app::session::{AccountInfo, Client, VerifiedKey};
use cmtp_app::store::{Draft, OutboxEntry, StoredMessage, ThreadSummary};
use cmtp_client::clock::rfc3339;
use cmtp_proto::content::Attachment;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::crypto::safety::grouped;
use cmtp_proto::names::Address;
use cmtp_proto::payload::mailbox::{SEEN, flag_names};
use serde_json::{Value, json};

use crate::Output;

/// Writes to stdout; a closed pipe ends the program quietly with exit 0
/// (the reader has what it wanted, as with `git log | head`); any other
/// write error ends it with exit 1.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        stdout_failed(&e);
    }
}

/// Flushes stdout (at the end of the program), with the same rules.
pub(crate) fn flush_stdout() {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().flush() {
        stdout_failed(&e);
    }
}

fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    write_stderr(format_args!("cmtp: error: writing to stdout: {e}\n"));
    std::process::exit(1);
}

/// Writes to stderr, ignoring errors (nobody is there to tell).
pub(crate) fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

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

/// The sender with their display name: `Alice <alice@a.example>`.
fn display_sender(m: &StoredMessage) -> String {
    match m.from_name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) if !m.source.starts_with('@') => format!("{n} <{}>", m.source),
        _ => sender(m),
    }
}

/// A table: columns padded to their widest cell (the first right-aligned).
fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut w = head.map(|h| h.chars().count());
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 {
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            } else if i == N - 1 {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            }
            if i + 1 < N {
                out.push_str("  ");
            }
        }
        out.trim_end().to_owned()
    };
    outln!("{}", line(head.to_vec()));
    for r in rows {
        outln!("{}", line(r.iter().map(String::as_str).collect()));
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
        outln!(
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
                outln!("{what} {}", a.address);
                outln!(
                    "  your key fingerprint: {}",
                    a.statement.key.fingerprint_hex()
                );
                outln!(
                    "  server key of {}:  {} ({})",
                    a.address.domain,
                    a.server_key.fingerprint_hex(),
                    a.pin
                );
                outln!(
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
                outln!("address:     {address}");
                outln!("key:         {}", hex::encode(k.key.as_bytes()));
                outln!("fingerprint: {}", k.key.fingerprint_hex());
                outln!(
                    "signed by:   the server of {} (key fingerprint {})",
                    address.domain,
                    k.domain_key.fingerprint_hex()
                );
                outln!("valid:       {} to {}", rfc3339(issued), rfc3339(expires));
                outln!("pin:         {}: {}", address.domain, k.pin);
            }
        }
    }

    pub(crate) fn sent(&self, o: &Outcome) {
        if self.format == Output::Json {
            for c in &o.key_changes {
                errln!("!!! WARNING: {c}");
            }
        }
        match self.format {
            Output::Json => self.json(&json!({
                "outbox_id": o.outbox_id,
                "delivered": o.delivered.iter().map(|d| json!({
                    "to": d.recipient,
                    "hash": hex::encode(d.hash),
                    "size": d.size,
                    "accepted_by": d.receipt.domain().to_string(),
                    "accepted_at": rfc3339(d.receipt.accepted_at()),
                    "by_smtp": d.by_smtp,
                    "end_to_end": !d.by_smtp,
                })).collect::<Vec<_>>(),
                "failed": o.failed.iter().map(|(a, e)| json!({
                    "to": a,
                    "error": e.to_string(),
                })).collect::<Vec<_>>(),
                "sent_copy_filed": o.sent_copy_filed,
                "kept_as_draft": o.kept_as_draft,
                "key_changes": o.key_changes.iter().map(|c| json!({
                    "address": c.address,
                    "old_fingerprint": c.old.fingerprint_hex(),
                    "new_fingerprint": c.new.fingerprint_hex(),
                    "was_verified": c.was_verified,
                })).collect::<Vec<_>>(),
            })),
            Output::Text => {
                for d in o.delivered.iter().filter(|d| d.by_smtp) {
                    errln!(
                        "note: {} has no CMTP service: your server sends that copy by SMTP, NOT end-to-end encrypted",
                        d.recipient
                    );
                }
                for d in &o.delivered {
                    outln!(
                        "sent to {}{} ({}): signed receipt from {} at {}, hash {}",
                        d.recipient,
                        if d.by_smtp { " by SMTP" } else { "" },
                        human_size(d.size),
                        d.receipt.domain(),
                        rfc3339(d.receipt.accepted_at()),
                        hex::encode(&d.hash[..8])
                    );
                }
                for (a, e) in &o.failed {
                    errln!("NOT sent to {a}: {e}");
                }
                for c in &o.key_changes {
                    errln!("!!! WARNING: {c}");
                }
            }
        }
    }

    fn message_json(m: &StoredMessage) -> Value {
        let verdict = stored_verdict(m);
        let (status, detail) = verdict_json(&verdict);
        let mut v = json!({
            "id": m.uid,
            "from": sender(m),
            "from_name": m.from_name,
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
        });
        with_content_fields(&mut v, m);
        v
    }

    /// Loud warnings about contacts whose key changed (stderr, text and
    /// JSON alike: scripts see them too).
    pub(crate) fn key_change_warnings(&self, changed: &[Contact]) {
        for c in changed {
            let was = c
                .previous_key
                .map(|k| k.fingerprint_hex()[..16].to_owned())
                .unwrap_or_else(|| "?".into());
            let now = c
                .key
                .map(|k| k.fingerprint_hex()[..16].to_owned())
                .unwrap_or_else(|| "?".into());
            errln!(
                "!!! WARNING: the key of {} CHANGED on {} (was {was}…, now {now}…).",
                one_line(&c.address),
                rfc3339(c.key_changed_at.unwrap_or(0))
            );
            errln!(
                "!!! They may have a new device or a reset password, or someone may be in between. \
                 Compare safety numbers with them again: cmtp verify {}",
                one_line(&c.address)
            );
        }
    }

    pub(crate) fn threads(&self, threads: &[ThreadSummary], total: u64, unread: u64) {
        if threads.is_empty() {
            outln!("no messages");
            return;
        }
        let rows: Vec<[String; 6]> = threads
            .iter()
            .map(|t| {
                let m = &t.newest;
                let verdict = stored_verdict(m);
                let (subject, date) = match (&m.subject, &m.date) {
                    (Some(s), Some(d)) => (one_line(s), one_line(d)),
                    _ => ("-".into(), rfc3339(m.received_at)),
                };
                let mark = if t.unread > 0 { "*" } else { " " };
                // Mail that arrived by SMTP is marked as such (§19.2).
                let (from, signature) = cmtp_app::smtp::listing(m)
                    .unwrap_or_else(|| (display_sender(m), verdict.to_string()));
                let n = if t.count > 1 {
                    format!(" [{}]", t.count)
                } else {
                    String::new()
                };
                [
                    format!("{mark}{}", m.uid),
                    truncate(&one_line(&from), 32),
                    truncate(&format!("{subject}{n}"), 46),
                    date,
                    if t.unread > 0 && t.count > 1 {
                        format!("{} unread", t.unread)
                    } else {
                        String::new()
                    },
                    truncate(&one_line(&signature), 60),
                ]
            })
            .collect();
        let head = ["ID", "FROM", "SUBJECT [MESSAGES]", "DATE", "", "SIGNATURE"];
        table(&head, &rows);
        outln!(
            "{} threads of {total} messages, {unread} unread (* = unread; `cmtp thread ID` shows one)",
            threads.len()
        );
    }

    pub(crate) fn search(&self, found: &[StoredMessage]) {
        match self.format {
            Output::Json => self.json(&Value::Array(
                found.iter().map(Self::message_json).collect(),
            )),
            Output::Text => {
                if found.is_empty() {
                    outln!("nothing found");
                    return;
                }
                let rows: Vec<[String; 6]> = found
                    .iter()
                    .map(|m| {
                        [
                            format!("{}{}", if m.flags & SEEN == 0 { "*" } else { " " }, m.uid),
                            truncate(&one_line(&display_sender(m)), 32),
                            truncate(&one_line(m.subject.as_deref().unwrap_or("-")), 40),
                            one_line(m.date.as_deref().unwrap_or("")),
                            one_line(&m.folder),
                            truncate(&stored_verdict(m).to_string(), 40),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "FROM", "SUBJECT", "DATE", "FOLDER", "SIGNATURE"],
                    &rows,
                );
                outln!("{} found", found.len());
            }
        }
    }

    pub(crate) fn folders(&self, folders: &[(String, u64, u64)]) {
        match self.format {
            Output::Json => self.json(&Value::Array(
                folders
                    .iter()
                    .map(|(f, n, u)| json!({ "folder": f, "messages": n, "unread": u }))
                    .collect(),
            )),
            Output::Text => {
                for (f, n, u) in folders {
                    outln!("{:<12} {n:>7} messages {u:>6} unread", one_line(f));
                }
            }
        }
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
                outln!("From:      {}", one_line(&v.from));
                outln!("To:        {}", one_line(&v.to.join(", ")));
                if !v.cc.is_empty() {
                    outln!("Cc:        {}", one_line(&v.cc.join(", ")));
                }
                outln!(
                    "Date:      {}",
                    one_line(v.date.as_deref().unwrap_or(&rfc3339(m.received_at)))
                );
                outln!("Subject:   {}", one_line(&v.subject));
                for (i, a) in v.attachments.iter().enumerate() {
                    outln!(
                        "Attachment: {} ({}){}",
                        one_line(&a.name),
                        human_size(a.data.len() as u64),
                        saved
                            .get(i)
                            .map(|p| format!(" saved to {}", p.display()))
                            .unwrap_or_default()
                    );
                }
                outln!("Security:  {}", one_line(&v.summary));
                if v.from_html {
                    outln!("           (HTML message shown as text)");
                }
                outln!();
                out!("{}", sanitize(&v.text));
                if !v.text.ends_with('\n') {
                    outln!();
                }
            }
        }
    }

    pub(crate) fn exported(&self, r: &ExportReport, target: &Path) {
        match self.format {
            Output::Json => self.json(&json!({
                "exported": r.messages,
                "undecryptable_skipped": r.undecryptable,
                "folders": r.folders,
                "to": target,
            })),
            Output::Text => {
                outln!(
                    "exported {} messages ({}) to {}",
                    r.messages,
                    r.folders.join(", "),
                    target.display()
                );
                if r.undecryptable > 0 {
                    errln!(
                        "cmtp: {} messages could not be decrypted and were left out",
                        r.undecryptable
                    );
                }
            }
        }
    }

    pub(crate) fn contacts(&self, contacts: &[Contact], me: &Address, my_key: &PublicKey) {
        match self.format {
            Output::Json => self.json(&Value::Array(
                contacts
                    .iter()
                    .map(|c| {
                        json!({
                            "address": c.address,
                            "name": c.name,
                            "alias": c.alias,
                            "fingerprint": c.key.map(|k| k.fingerprint_hex()),
                            "first_seen": rfc3339(c.first_seen),
                            "verified": c.verified,
                            "key_changed": c.key_changed(),
                            "key_changed_at": c.key_changed_at.map(rfc3339),
                            "previous_fingerprint": c.previous_key.map(|k| k.fingerprint_hex()),
                            "safety_number": c.safety_number(me, my_key),
                        })
                    })
                    .collect(),
            )),
            Output::Text => {
                if contacts.is_empty() {
                    outln!("no contacts yet: everyone you write to or hear from becomes one");
                    return;
                }
                let rows: Vec<[String; 5]> = contacts
                    .iter()
                    .map(|c| {
                        [
                            one_line(&c.address),
                            truncate(&one_line(&c.name), 28),
                            c.alias.clone().unwrap_or_default(),
                            c.key
                                .map(|k| k.fingerprint_hex()[..16].to_owned())
                                .unwrap_or_else(|| "-".into()),
                            if c.key_changed() {
                                "KEY CHANGED!".into()
                            } else if c.verified {
                                "verified".into()
                            } else {
                                "not verified".into()
                            },
                        ]
                    })
                    .collect();
                table(&["ADDRESS", "NAME", "ALIAS", "KEY", "STATUS"], &rows);
                self.key_change_warnings(
                    &contacts
                        .iter()
                        .filter(|c| c.key_changed())
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
        }
    }

    pub(crate) fn safety_number(&self, c: &Contact, number: &str, change: Option<&KeyChange>) {
        match self.format {
            Output::Json => self.json(&json!({
                "address": c.address,
                "fingerprint": c.key.map(|k| k.fingerprint_hex()),
                "safety_number": number,
                "verified_before": c.verified,
                "key_changed": c.key_changed(),
                "previous_fingerprint": c.previous_key.map(|k| k.fingerprint_hex()),
            })),
            Output::Text => {
                outln!("Safety number of you and {}:", one_line(&c.address));
                outln!();
                for line in grouped(number).lines() {
                    outln!("    {line}");
                }
                outln!();
                outln!(
                    "Their key: {}",
                    c.key.map(|k| k.fingerprint_hex()).unwrap_or_default()
                );
                outln!(
                    "Compare these 60 digits with {} in person or on a call you trust.",
                    one_line(&c.address)
                );
            }
        }
        if let Some(ch) = change {
            errln!("!!! WARNING: {ch}");
        } else if c.key_changed() {
            self.key_change_warnings(std::slice::from_ref(c));
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
                    outln!("no messages");
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
                outln!("{}", line(head));
                for r in &rows {
                    outln!("{}", line(r.each_ref().map(|s| s.as_str())));
                }
                outln!(
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
                        v["to"] = json!(m.destination);
                        v
                    })
                    .collect();
                self.json(&Value::Array(list));
            }
            Output::Text => {
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        outln!("{}", "-".repeat(60));
                    }
                    let verdict = stored_verdict(m);
                    outln!(
                        "[{}] {} — {} — {}",
                        m.uid,
                        one_line(&sender(m)),
                        one_line(m.date.as_deref().unwrap_or("")),
                        one_line(m.subject.as_deref().unwrap_or("-"))
                    );
                    for (what, list) in [("To", &m.to), ("Cc", &m.cc), ("Bcc", &m.bcc)] {
                        if !list.is_empty() {
                            outln!("{what}: {}", one_line(&list.join(", ")));
                        }
                    }
                    outln!("Signature: {}", signature_line(m, &verdict));
                    if !matches!(verdict, Verdict::Undecryptable(_)) {
                        outln!();
                        let body = m.body.as_deref().unwrap_or("");
                        out!("{}", sanitize(body));
                        if !body.ends_with('\n') {
                            outln!();
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
                let mut v = json!({
                    "id": m.uid,
                    "from": sender(m),
                    "from_name": m.from_name,
                    "to": to,
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
                        "media_type": a.media_type,
                        "size": a.data.len(),
                        "saved_to": saved.get(i),
                    })).collect::<Vec<_>>(),
                });
                with_content_fields(&mut v, m);
                self.json(&v);
            }
            Output::Text => {
                outln!("From:      {}", one_line(&display_sender(m)));
                if m.to.is_empty() {
                    outln!("To:        {}", one_line(&to));
                } else {
                    outln!("To:        {}", one_line(&m.to.join(", ")));
                }
                if !m.cc.is_empty() {
                    outln!("Cc:        {}", one_line(&m.cc.join(", ")));
                }
                if !m.bcc.is_empty() {
                    outln!("Bcc:       {}", one_line(&m.bcc.join(", ")));
                }
                if let Some(r) = &m.reply_to {
                    outln!("Reply-To:  {}", one_line(r));
                }
                outln!("Date:      {}", one_line(&date));
                outln!("Subject:   {}", one_line(&subject));
                if m.folder != "Inbox" {
                    outln!("Folder:    {}", one_line(&m.folder));
                }
                for (i, a) in attachments.iter().enumerate() {
                    outln!(
                        "Attachment: {} ({}, {}){}",
                        one_line(&a.name),
                        if a.media_type.is_empty() {
                            "?".to_owned()
                        } else {
                            one_line(&a.media_type)
                        },
                        human_size(a.data.len() as u64),
                        saved
                            .get(i)
                            .map(|p| format!(" saved to {}", p.display()))
                            .unwrap_or_default()
                    );
                }
                outln!("Signature: {}", signature_line(m, verdict));
                outln!();
                out!("{}", sanitize(&text));
                if !text.ends_with('\n') {
                    outln!();
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
                    outln!("the outbox is empty");
                    return;
                }
                for e in entries {
                    outln!(
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
                outln!(
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
                    errln!(
                        "outbox entry {id} stays in {}: {e}",
                        path.display()
                    );
                }
                for (id, d, e) in &f.too_big {
                    errln!("outbox entry {id} moved to draft {d}: {e}");
                }
                if f.sent.is_empty() && f.kept.is_empty() && f.too_big.is_empty() {
                    outln!("the outbox is empty");
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
                    outln!("no drafts");
                }
                for d in drafts {
                    outln!(
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
            Output::Text => outln!(
                "saved draft {id}; `cmtp draft edit {id}` resumes it, `cmtp draft send {id}` sends it"
            ),
        }
    }
}

/// The fields of content version 2 (PROTOCOL.md §8.1) that every JSON form
/// of a stored message carries: its lists, ids and thread.
fn with_content_fields(v: &mut Value, m: &StoredMessage) {
    if let Value::Object(o) = v {
        o.extend([
            ("to_list".to_owned(), json!(m.to)),
            ("cc".to_owned(), json!(m.cc)),
            ("bcc".to_owned(), json!(m.bcc)),
            ("message_id".to_owned(), json!(m.message_id)),
            ("in_reply_to".to_owned(), json!(m.in_reply_to)),
            ("references".to_owned(), json!(m.references)),
            ("thread_id".to_owned(), json!(m.thread_id)),
            ("content_version".to_owned(), json!(m.content_version)),
        ]);
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
