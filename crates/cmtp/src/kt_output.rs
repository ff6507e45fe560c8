//! What `cmtp key`, `cmtp key history` and `cmtp read` print about key
//! transparency (PROTOCOL.md §20), and the warnings of the self-check.

use cmtp_app::home::Home;
use cmtp_app::kt::{KeyRecord, SelfReport};
use cmtp_app::session::VerifiedKey;
use cmtp_proto::names::Address;
use serde_json::json;

use crate::Output;
use crate::output::{Printer, sanitize};

/// `cmtp key ADDRESS`: the key, and what its domain's directory says.
pub(crate) fn key(out: &Printer, address: &Address, k: &VerifiedKey, kt: Option<&KeyRecord>) {
    match out.format {
        Output::Json => {
            // One document: the key's fields and the directory's verdict.
            let mut doc = json!({
                "address": address.to_string(),
                "key": hex::encode(k.key.as_bytes()),
                "fingerprint": k.key.fingerprint_hex(),
                "statement": k.statement.as_ref().map(|s| hex::encode(s.to_bytes())),
                "signed_by": format!("server of {}", address.domain),
                "server_fingerprint": k.domain_key.fingerprint_hex(),
                "issued_at": k.statement.as_ref().map(|s| cmtp_client::clock::rfc3339(s.issued_at)),
                "expires_at": k.statement.as_ref().map(|s| cmtp_client::clock::rfc3339(s.expires_at)),
                "pin": k.pin.to_string(),
            });
            doc["key_directory"] = match kt.filter(|r| r.fingerprint == k.key.fingerprint_hex()) {
                Some(r) => serde_json::to_value(&r.transparency).expect("serialises"),
                None => json!(null),
            };
            out.json(&doc);
        }
        Output::Text => {
            out.key(address, k);
            outln!("directory:   {}", verdict(kt, &k.key.fingerprint_hex()));
        }
    }
}

fn verdict(kt: Option<&KeyRecord>, fingerprint: &str) -> String {
    match kt {
        Some(r) if r.fingerprint == fingerprint => r.transparency.to_string(),
        Some(_) => "not checked for this key".into(),
        None => {
            "not checked (the key came from a server without a key directory, or from the cache)"
                .into()
        }
    }
}

/// `cmtp read`: a line on the sender's key (text output only).
pub(crate) fn sender(out: &Printer, home: &Home, source: &str) {
    if out.format != Output::Text {
        return;
    }
    let Ok(address) = Address::parse(source) else {
        return;
    };
    let line = match cmtp_app::kt::describe(home, &address) {
        Some(r) => format!(
            "{} ({})",
            r.transparency,
            r.fingerprint.get(..16).unwrap_or("")
        ),
        None => "not checked in a key directory".into(),
    };
    outln!("Key:       {}", sanitize(&line));
}

/// `cmtp key history`.
pub(crate) fn history(out: &Printer, report: Option<&SelfReport>) {
    match out.format {
        Output::Json => out.json(&match report {
            Some(r) => json!({
                "address": r.address,
                "epoch": r.epoch,
                "witnesses": r.witnesses,
                "history": r.history,
                "warnings": r.alarms(),
            }),
            None => json!({ "key_directory": null }),
        }),
        Output::Text => {
            let Some(r) = report else {
                outln!("your server keeps no key directory");
                return;
            };
            match r.epoch {
                None => outln!(
                    "{}: your key is not in the key directory yet (it is published at the next epoch)",
                    r.address
                ),
                Some(e) => {
                    outln!(
                        "{}: key history proven at epoch {e}, witnessed by {} domain(s){}",
                        r.address,
                        r.witnesses.len(),
                        if r.witnesses.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", r.witnesses.join(", "))
                        }
                    );
                    outln!("  version  since epoch  key");
                    for h in &r.history {
                        outln!(
                            "  {:>7}  {:>11}  {}",
                            h.version,
                            h.epoch,
                            h.known_as
                                .as_deref()
                                .unwrap_or("NOT A KEY THIS DEVICE HOLDS")
                        );
                    }
                }
            }
            for a in r.alarms() {
                errln!("!!! {a}");
            }
        }
    }
}

/// Prints the self-check's warnings kept in the home (after every command).
pub(crate) fn alarms(home: &Home) {
    for a in cmtp_app::kt::alarms(home) {
        errln!("!!! {}", sanitize(&a));
    }
}
