//! The domain's DKIM key (RFC 6376) for mail that leaves by SMTP: made by
//! `cmtpd init` (RSA 2048, the algorithm every verifier knows), kept as
//! PKCS#8 PEM with mode 0600 beside the server key, published as a TXT
//! record at `<selector>._domainkey.<domain>`.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rcgen::PublicKeyData as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The headers outbound signatures cover.
pub const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
];

/// Makes a new DKIM key at `path` (mode 0600) unless one is there; the
/// DNS record's value either way.
pub fn ensure_key(path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        let kp =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .context("generating the DKIM key")?;
        let der = zeroize::Zeroizing::new(kp.serialize_der());
        let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*der));
        let mut pem = zeroize::Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        write_private(path, pem.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    record_value(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read_pkcs8(path: &Path) -> anyhow::Result<PrivatePkcs8KeyDer<'static>> {
    PrivatePkcs8KeyDer::from_pem_file(path)
        .with_context(|| format!("reading the DKIM key {}", path.display()))
}

/// The TXT record's value for the key at `path`:
/// `v=DKIM1; k=rsa; p=<base64 of the SubjectPublicKeyInfo>`.
pub fn record_value(path: &Path) -> anyhow::Result<String> {
    let der = read_pkcs8(path)?;
    let kp = rcgen::KeyPair::try_from(&der).context("the DKIM key is not a usable key")?;
    let spki = kp.subject_public_key_info();
    Ok(format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(spki)
    ))
}

/// A loaded signing key.
pub struct DkimKey {
    signer: DkimSigner<RsaKey<Sha256>, Done>,
    domain: String,
    selector: String,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Loads the key at `path` to sign for `domain` with `selector`.
    pub fn load(path: &Path, domain: &str, selector: &str) -> anyhow::Result<DkimKey> {
        let der = read_pkcs8(path)?;
        let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der)).map_err(|e| {
            anyhow::anyhow!("the DKIM key {} is not an RSA key: {e}", path.display())
        })?;
        let signer = DkimSigner::from_key(key)
            .domain(domain.to_owned())
            .selector(selector.to_owned())
            .headers(SIGNED_HEADERS);
        Ok(DkimKey {
            signer,
            domain: domain.to_owned(),
            selector: selector.to_owned(),
        })
    }

    /// The `DKIM-Signature:` field for `message` (CR LF ended), to put on
    /// top of it.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<String> {
        let signature = self
            .signer
            .sign(message)
            .map_err(|e| anyhow::anyhow!("DKIM signing failed: {e}"))?;
        Ok(signature.to_header())
    }
}

/// A TXT record value as DNS zone text: quoted strings of at most 255
/// bytes each (RFC 1035 §3.3.14), which resolvers join.
fn txt_strings(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The DNS records that make cmtpd the domain's mail server for SMTP too:
/// MX, SPF, DKIM and DMARC (README "Running cmtpd as your domain's mail
/// server"). `mx_host` is the name of this machine in the MX record.
pub fn mail_dns_records(domain: &str, mx_host: &str, selector: &str, dkim_value: &str) -> String {
    format!(
        "; Mail by SMTP for {domain}: cmtpd as the domain's MX (docs/PROTOCOL.md §19)\n\
         {domain}. 3600 IN MX 10 {mx_host}.\n\
         {domain}. 3600 IN TXT \"v=spf1 mx -all\"\n\
         {selector}._domainkey.{domain}. 3600 IN TXT {dkim}\n\
         _dmarc.{domain}. 3600 IN TXT \"v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:postmaster@{domain}\"\n\
         ; and an A/AAAA record for {mx_host}; [smtp] listen = [\"0.0.0.0:25\", \"[::]:25\"] in cmtpd.toml\n",
        dkim = txt_strings(dkim_value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_and_its_record_verifies_a_signature_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dkim.key");
        let record = ensure_key(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(record.starts_with("v=DKIM1; k=rsa; p=MII"), "{record}");
        // The second call keeps the key.
        assert_eq!(ensure_key(&path).unwrap(), record);
        let key = DkimKey::load(&path, "a.test", "cmtp").unwrap();
        let sig = key
            .sign(b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nhello\r\n")
            .unwrap();
        assert!(
            sig.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=cmtp; d=a.test;"),
            "{sig}"
        );
        let zone = mail_dns_records("a.test", "mx.a.test", "cmtp", &record);
        assert!(zone.contains("cmtp._domainkey.a.test. 3600 IN TXT \"v=DKIM1; k=rsa; p="));
        assert!(zone.lines().all(|l| l.split('"').all(|s| s.len() <= 255)));
    }
}
