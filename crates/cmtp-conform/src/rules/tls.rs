//! §4.1, §4.4 The protected connection: after the banner, TLS 1.3 and
//! nothing else; the server's Ed25519 key as a raw public key (RFC 7250),
//! the key of its greeting, or in a self-issued certificate for a client
//! that offers no raw public keys; the hybrid post-quantum group.

use std::time::Instant;

use cmtp_proto::banner::Banner;
use cmtp_proto::crypto::PublicKey;

use super::{Ctx, random_bytes};
use crate::probe::{Check, Probe, READY_BANNER, fail, read_banner};
use crate::tls::{Client, FirstRecord, certificate_spki, first_record, tls12_client_hello};
use crate::transport::{ReadOutcome, Transport};

/// The hybrid post-quantum group a CMTP/2 client offers first.
const HYBRID: &str = "X25519MLKEM768";

/// Checks that `key` (shown in TLS) is the greeting's and the target's.
fn same_key(cx: &Ctx<'_>, p: &mut Probe, shown: PublicKey, how: &str) -> Check {
    let g = p.ohai()?;
    if shown != g.key {
        return Err(fail(
            format!(
                "{how}: the key of the greeting on the same connection ({})",
                g.key.fingerprint_hex()
            ),
            format!("key {}", shown.fingerprint_hex()),
        ));
    }
    if shown != cx.key() {
        return Err(fail(
            format!(
                "{how}: the server key of every other connection ({})",
                cx.key().fingerprint_hex()
            ),
            format!("key {}", shown.fingerprint_hex()),
        ));
    }
    Ok(())
}

pub(super) fn tls13_handshake(cx: &mut Ctx<'_>) -> Check {
    // The probe has read the banner in clear, run the handshake and checked
    // ALPN; OHAI inside TLS shows the connection carries CMTP.
    let (p, _) = cx.greeted()?;
    if p.tls.version != "TLSv1_3" {
        return Err(fail("TLS 1.3", p.tls.version.clone()));
    }
    Ok(())
}

pub(super) fn hello_before_banner(cx: &mut Ctx<'_>) -> Check {
    let mut p = Probe::open_as(
        cx.addr,
        Some(cx.key()),
        cx.cfg.reply_timeout,
        Client::Cmtp,
        true,
    )?;
    p.ohai()?;
    Ok(())
}

pub(super) fn raw_public_key(cx: &mut Ctx<'_>) -> Check {
    let mut p = cx.probe()?;
    let Some(cert) = p.tls.peer_cert.clone() else {
        return Err(fail(
            "the server's key in the handshake",
            "no certificate entry",
        ));
    };
    let Some(key) = p.tls.raw_key() else {
        return Err(fail(
            "an Ed25519 SubjectPublicKeyInfo as the raw public key (RFC 7250, RFC 8410)",
            format!("{} bytes: {}", cert.len(), crate::probe::hex_head(&cert)),
        ));
    };
    same_key(cx, &mut p, key, "the raw public key")?;
    Ok(())
}

pub(super) fn certificate_fallback(cx: &mut Ctx<'_>) -> Check {
    let mut p = Probe::open_as(
        cx.addr,
        Some(cx.key()),
        cx.cfg.reply_timeout,
        Client::X509,
        false,
    )?;
    let Some(cert) = p.tls.peer_cert.clone() else {
        return Err(fail("a certificate", "no certificate entry"));
    };
    // The client's verifier already refused anything that is not an X.509
    // certificate whose key made the handshake's signature.
    let spki = certificate_spki(&cert)
        .ok_or_else(|| fail("an X.509 certificate", "bytes that do not parse"))?;
    let Some(key) = cmtp_proto::tls::key_from_spki(&spki) else {
        return Err(fail(
            "a certificate whose SubjectPublicKeyInfo is an Ed25519 key (RFC 8410)",
            format!("the SubjectPublicKeyInfo {}", crate::probe::hex_head(&spki)),
        ));
    };
    same_key(cx, &mut p, key, "the certificate's key")?;
    cx.note(format!("a certificate of {} bytes", cert.len()));
    Ok(())
}

pub(super) fn key_exchange(cx: &mut Ctx<'_>) -> Check {
    let p = cx.probe()?;
    let group = p.tls.group.clone();
    match group.as_str() {
        HYBRID => cx.note(format!("negotiated {group}")),
        "X25519" => cx.note(format!(
            "negotiated X25519, not {HYBRID}: traffic recorded now could be decrypted by a future quantum computer"
        )),
        other => {
            return Err(fail(
                format!("one of the groups offered ({HYBRID}, X25519)"),
                other.to_owned(),
            ));
        }
    }
    Ok(())
}

pub(super) fn tls13_only(cx: &mut Ctx<'_>) -> Check {
    let timeout = cx.cfg.reply_timeout;
    let mut t = Transport::connect(cx.addr, timeout)
        .map_err(|e| fail("a TCP connection", e.to_string()))?;
    let mut buf = Vec::new();
    let b = read_banner(&mut t, &mut buf, timeout)?;
    if !matches!(b.banner, Banner::Ready { .. }) {
        return Err(fail(READY_BANNER, format!("{:?}", b.line)));
    }
    let random: [u8; 32] = random_bytes(32).try_into().expect("32 bytes");
    t.write_all(&tls12_client_hello(random))
        .map_err(|e| fail("the target to read a ClientHello", e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let first = loop {
        if let Some(r) = first_record(&buf) {
            break Some(r);
        }
        match t.read_until(&mut buf, deadline) {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => break None,
            ReadOutcome::Timeout => {
                return Err(fail(
                    "a protocol_version alert and a close for a ClientHello offering only TLS 1.2",
                    format!(
                        "nothing within {}s ({} bytes)",
                        timeout.as_secs_f32(),
                        buf.len()
                    ),
                ));
            }
        }
    };
    match first {
        Some(FirstRecord::Alert { level, description }) => {
            if description != 70 {
                cx.note(format!(
                    "the alert is {description} (level {level}), not protocol_version (70)"
                ));
            }
            Ok(())
        }
        None => {
            cx.note("the connection closed without an alert");
            Ok(())
        }
        Some(FirstRecord::ServerHello { version, selected }) => Err(fail(
            "a protocol_version alert: CMTP/2 is TLS 1.3 only",
            format!(
                "a ServerHello for {}",
                match selected {
                    Some(v) => format!("version {v:#06x} (supported_versions)"),
                    None if version == 0x0303 => "TLS 1.2".to_owned(),
                    None => format!("version {version:#06x}"),
                }
            ),
        )),
        Some(FirstRecord::Other { content_type }) => Err(fail(
            "a protocol_version alert for a ClientHello offering only TLS 1.2",
            format!("a TLS record of type {content_type}"),
        )),
    }
}
