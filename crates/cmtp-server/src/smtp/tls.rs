//! STARTTLS for inbound SMTP (RFC 3207): rustls with the aws-lc-rs
//! provider, TLS 1.2 and 1.3 (the SMTP world still has TLS 1.2 clients),
//! an X.509 certificate: `[smtp] tls_cert`/`tls_key`, or one issued by the
//! server itself for its host name at each start. Sending servers do not
//! authenticate an MX's certificate unless DANE or MTA-STS say so, so a
//! self-issued one still encrypts; a certificate from a CA (or a DANE TLSA
//! record) lets senders authenticate the server.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::SmtpConfig;

/// The certificate and key to present: from the files of `cfg`, or a
/// self-issued ECDSA P-256 certificate for `hostname`.
pub(crate) fn certificate(
    cfg: &SmtpConfig,
    hostname: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", cert.display()))?;
            anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            Ok((chain, key))
        }
        _ => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, hostname);
            let cert = params.self_signed(&kp)?;
            Ok((
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der())),
            ))
        }
    }
}

/// The TLS acceptor of the SMTP listener.
pub(crate) fn acceptor(
    cfg: &SmtpConfig,
    hostname: &str,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (chain, key) = certificate(cfg, hostname)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the STARTTLS certificate and key do not fit together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
