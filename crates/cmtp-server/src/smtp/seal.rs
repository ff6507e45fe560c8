//! Sealing a message that arrived by SMTP (PROTOCOL.md §19.2): one crypto
//! system 1 copy per recipient mailbox, from this server (the empty
//! account of its domain, signed by the server key as notices are), whose
//! text is the arrival record and whose one attachment is the RFC 5322
//! message. The plaintext lives only in memory; what the store receives is
//! the sealed copy.

use std::net::IpAddr;

use cmtp_proto::content::{Attachment, Content};
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::limits::MAX_FIELD;
use cmtp_proto::message::Source;
use cmtp_proto::names::{Account, Address};
use cmtp_smtp::arrival::{ATTACHMENT_NAME, Arrival};
use cmtp_store::{MAX_CHUNK, MessageBody, NewDelivery, Store};
use zeroize::Zeroize;

use crate::staging::BlobSink;
use crate::state::{Shared, rfc3339};

/// `Received:` and `Authentication-Results:` fields this server puts on
/// top of the message (RFC 5321 §4.4, RFC 8601).
pub(crate) fn trace_fields(
    hostname: &str,
    helo: &str,
    ip: IpAddr,
    tls: Option<&str>,
    auth_results: &str,
    at: u64,
) -> String {
    let with = match tls {
        Some(v) => format!("ESMTPS ({v})"),
        None => "ESMTP".to_owned(),
    };
    let helo: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {hostname} (cmtpd) with {with};\r\n\t{}\r\n{auth_results}",
        rfc5322_date(at)
    )
}

/// The subject of an RFC 5322 message, decoded, cut to the inner body's
/// 255 bytes.
fn subject_of(eml: &[u8]) -> String {
    let subject = mail_parser::MessageParser::default()
        .parse_headers(eml)
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_default();
    let mut s: String = subject.chars().filter(|c| *c != '\0').collect();
    if s.len() > MAX_FIELD {
        let mut cut = MAX_FIELD;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// One recipient mailbox of a message: what its copy is sealed for.
pub(crate) struct CopyFor {
    /// The arrival record (its `Rcpt-To` is this recipient's).
    pub(crate) arrival: Arrival,
    /// The local name it was addressed to (an account or an alias).
    pub(crate) name: Account,
    /// The account whose mailbox it goes to.
    pub(crate) account: Account,
    /// That account's identity key.
    pub(crate) key: PublicKey,
}

/// A sealed copy, ready to be stored: nothing in it is plaintext.
pub(crate) struct Sealed {
    pub(crate) account: Account,
    pub(crate) hash: [u8; 32],
    pub(crate) version: u32,
    pub(crate) bytes: Vec<u8>,
}

/// Seals `eml` once for each of `copies` (CPU only; the caller runs it on
/// the blocking pool) and wipes `eml` and every plaintext made from it,
/// whatever the outcome.
pub(crate) fn seal_copies(
    sh: &Shared,
    eml: Vec<u8>,
    copies: &[CopyFor],
    received_at: u64,
    ip: IpAddr,
    helo: &str,
) -> anyhow::Result<Vec<Sealed>> {
    let mut content = Content {
        subject: subject_of(&eml),
        date: rfc3339(received_at),
        attachments: vec![Attachment {
            name: ATTACHMENT_NAME.into(),
            // Content version 1 (PROTOCOL.md §19.2), which carries no media
            // type: the name says what it is.
            media_type: String::new(),
            data: eml,
        }],
        ..Content::default()
    };
    let helo: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let source = Source::server(sh.domain.clone());
    let mut out = Vec::with_capacity(copies.len());
    let mut outcome = Ok(());
    for c in copies {
        content.text = c.arrival.encode();
        let to = Address::new(c.name.clone(), sh.domain.clone());
        let sealed = content.seal_as(source.clone(), &sh.key, &to, &c.key, &mut rand_core::OsRng);
        content.text.zeroize();
        let mut msg = match sealed {
            Ok(m) => m,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        // The trailer stays zero: the message never leaves the domain (§7.3).
        let hash = msg.hash();
        msg.log = format!(
            "{} {} accepted by SMTP from {helo} [{ip}] for {to}\n",
            rfc3339(received_at),
            sh.domain
        )
        .into_bytes();
        out.push(Sealed {
            account: c.account.clone(),
            hash,
            version: msg.version,
            bytes: msg.to_bytes(),
        });
    }
    content.subject.zeroize();
    for a in &mut content.attachments {
        a.data.zeroize();
    }
    outcome?;
    Ok(out)
}

/// Stores a sealed copy durably (staged in chunks when it is large); done
/// when its transaction is committed.
pub(crate) async fn deliver(
    sh: &Shared,
    copy: Sealed,
    received_at: u64,
    ip: IpAddr,
) -> anyhow::Result<()> {
    let Sealed {
        account,
        hash,
        version,
        bytes,
    } = copy;
    let size = bytes.len() as u64;
    let body = if bytes.len() <= MAX_CHUNK {
        MessageBody::Inline(bytes.into())
    } else {
        // Large: staged in chunks within a reservation of its own (these are
        // sealed bytes; the plaintext never reaches the store).
        let reservation = sh
            .admit_mail(ip, &sh.domain, true, size)
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        let mut sink = BlobSink::new(sh, reservation);
        for chunk in bytes.chunks(crate::staging::STORE_CHUNK) {
            sink.push(chunk).await?;
        }
        sink.finish().await?.0
    };
    let delivered = sh
        .store
        .deliver(NewDelivery {
            account: account.as_str().to_owned(),
            hash,
            source: Source::server(sh.domain.clone()).to_string(),
            received_at,
            version,
            attachment_count: 1,
            size,
            body,
        })
        .await?;
    tracing::debug!(account = %account, hash = %hex::encode(hash), id = delivered.id, "SMTP message sealed and stored");
    Ok(())
}

/// An RFC 5322 date-time in UTC: `Tue, 01 Dec 2026 10:00:00 +0000`.
pub(crate) fn rfc5322_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_796_126_400),
            "Tue, 01 Dec 2026 12:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn the_subject_is_decoded_and_bounded() {
        let eml = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nbody\r\n";
        assert_eq!(subject_of(eml), "Grüße");
        let long = format!("Subject: {}\r\n\r\n", "ä".repeat(300));
        assert!(subject_of(long.as_bytes()).len() <= 255);
        assert_eq!(subject_of(b"\r\nno headers"), "");
    }
}
