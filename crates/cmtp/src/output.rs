//! Printing results as text for people or JSON for scripts. Text from the
//! wire is stripped of control characters before it reaches a terminal.

use std::path::PathBuf;

use cmtp_client::clock::rfc3339;
use cmtp_client::mailbox::{Inspected, Verdict};
use cmtp_client::send::Outcome;
use cmtp_client::session::{AccountInfo, Client, VerifiedKey};
use cmtp_proto::content::Content;
use cmtp_proto::names::Address;
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

fn signature_line(m: &Inspected) -> String {
    match &m.verdict {
        Verdict::Verified => format!("signed by {}, verified", sanitize(&m.from())),
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
                "delivered": o.delivered.iter().map(|d| json!({
                    "to": d.recipient.to_string(),
                    "hash": hex::encode(d.hash),
                    "size": d.size,
                    "accepted_by": d.receipt.domain.to_string(),
                    "accepted_at": rfc3339(d.receipt.accepted_at),
                })).collect::<Vec<_>>(),
                "failed": o.failed.iter().map(|(a, e)| json!({
                    "to": a.to_string(),
                    "error": e.to_string(),
                })).collect::<Vec<_>>(),
            })),
            Output::Text => {
                for d in &o.delivered {
                    println!(
                        "sent to {} ({}): signed receipt from {} at {}, hash {}",
                        d.recipient,
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

    pub(crate) fn inbox(&self, messages: &[Inspected]) {
        match self.format {
            Output::Json => {
                let list: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        let (status, detail) = verdict_json(&m.verdict);
                        json!({
                            "id": m.id,
                            "from": m.from(),
                            "subject": m.content.as_ref().map(|c| c.subject.clone()),
                            "date": m.content.as_ref().map(|c| c.date.clone()),
                            "received_at": rfc3339(m.received_at),
                            "size": m.size,
                            "attachments": m.message.as_ref().map(|x| x.attachments.len()),
                            "hash": m.message.as_ref().map(|x| hex::encode(x.hash())),
                            "status": status,
                            "detail": detail,
                            "verified": m.verdict == Verdict::Verified,
                        })
                    })
                    .collect();
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
                        let (subject, date) = match &m.content {
                            Some(c) => (one_line(&c.subject), one_line(&c.date)),
                            None => ("-".into(), rfc3339(m.received_at)),
                        };
                        [
                            m.id.to_string(),
                            truncate(&one_line(&m.from()), 32),
                            truncate(&subject, 40),
                            date,
                            human_size(m.size),
                            truncate(&m.verdict.to_string(), 60),
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
            }
        }
    }

    pub(crate) fn message(&self, m: &Inspected, c: &Content, saved: &[PathBuf]) {
        let to = m
            .message
            .as_ref()
            .map(|x| x.destination.to_string())
            .unwrap_or_default();
        match self.format {
            Output::Json => {
                let (status, detail) = verdict_json(&m.verdict);
                self.json(&json!({
                    "id": m.id,
                    "from": m.from(),
                    "to": to,
                    "cc": c.cc.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "reply_to": c.reply_to.as_ref().map(|a| a.to_string()),
                    "subject": c.subject,
                    "date": c.date,
                    "received_at": rfc3339(m.received_at),
                    "size": m.size,
                    "status": status,
                    "detail": detail,
                    "verified": m.verdict == Verdict::Verified,
                    "text": c.text,
                    "attachments": c.attachments.iter().enumerate().map(|(i, a)| json!({
                        "name": a.name,
                        "size": a.data.len(),
                        "saved_to": saved.get(i),
                    })).collect::<Vec<_>>(),
                }));
            }
            Output::Text => {
                println!("From:      {}", one_line(&m.from()));
                println!("To:        {to}");
                if !c.cc.is_empty() {
                    let cc: Vec<String> = c.cc.iter().map(|a| a.to_string()).collect();
                    println!("Cc:        {}", cc.join(", "));
                }
                if let Some(r) = &c.reply_to {
                    println!("Reply-To:  {r}");
                }
                println!("Date:      {}", one_line(&c.date));
                println!("Subject:   {}", one_line(&c.subject));
                for (i, a) in c.attachments.iter().enumerate() {
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
                println!("Signature: {}", signature_line(m));
                println!();
                print!("{}", sanitize(&c.text));
                if !c.text.ends_with('\n') {
                    println!();
                }
            }
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
