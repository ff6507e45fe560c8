//! TLS 1.3 for CMTP/2 (PROTOCOL.md §4.1, §4.4): the rustls configurations of
//! both sides, the server's key as a raw public key, and the channel binding.
//!
//! Every CMTP/2 connection runs inside TLS 1.3 ([rustls], aws-lc-rs
//! provider). The server authenticates with its Ed25519 identity key — the
//! key it signs replies and statements with, the key clients and servers pin
//! — as an RFC 7250 raw public key; a client that does not offer raw public
//! keys (a standard TLS client) gets a self-issued X.509 certificate carrying
//! the same key, so it can pin the key by its SubjectPublicKeyInfo. There is
//! no certificate authority: a client checks the key against what it trusts
//! for the domain (its pin, the `_cmtpkey` record, rotation statements).
//!
//! Key exchange prefers the hybrid X25519MLKEM768 group, so that recorded
//! traffic cannot be decrypted later by a quantum computer; plain X25519 is
//! the fallback ([`KeyExchange`]).
//!
//! Logins bind to the channel through the TLS exporter (RFC 8446 §7.5):
//! [`channel_binding`] derives 32 bytes with label [`EXPORTER_LABEL`], the
//! same on both ends of one connection and different on every other.
//!
//! rustls is itself sans-IO; it reads the clock only where this crate's
//! verifier ignores it (certificate validity: a pinned key has no expiry).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::{AlwaysResolvesServerRawPublicKeys, NoServerSessionStorage};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, PeerIncompatible, SignatureScheme,
};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::{IdentityKey, PublicKey};
use crate::names::Domain;

pub use rustls::NamedGroup;

/// The ALPN protocol identifier of CMTP/2.
pub const ALPN: &[u8] = b"cmtp/2";

/// The TLS exporter label of the channel binding (RFC 8446 §7.5); the
/// context is empty.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-CMTP/2 channel binding";

/// Length of the channel binding.
pub const CHANNEL_BINDING_LEN: usize = 32;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the key's
/// 32 bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the
/// 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Which key-exchange groups to offer or accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyExchange {
    /// X25519MLKEM768 first, X25519 as the fallback (the default).
    #[default]
    HybridPostQuantum,
    /// X25519 only (for measurements; not for production).
    ClassicalOnly,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
    /// The self-issued certificate could not be made.
    #[error("self-issued certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// The SubjectPublicKeyInfo (DER) of an Ed25519 key: what a raw public key
/// certificate carries.
pub fn ed25519_spki(key: &PublicKey) -> Vec<u8> {
    let mut out = SPKI_PREFIX.to_vec();
    out.extend_from_slice(key.as_bytes());
    out
}

/// The Ed25519 key in a SubjectPublicKeyInfo, if it is one.
pub fn key_from_spki(spki: &[u8]) -> Option<PublicKey> {
    let key = spki.strip_prefix(&SPKI_PREFIX[..])?;
    PublicKey::from_slice(key).ok()
}

fn pkcs8(key: &IdentityKey) -> PrivatePkcs8KeyDer<'static> {
    let mut der = Zeroizing::new(PKCS8_PREFIX.to_vec());
    der.extend_from_slice(key.seed());
    PrivatePkcs8KeyDer::from(der.to_vec())
}

fn provider(kx: KeyExchange) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = match kx {
        KeyExchange::HybridPostQuantum => vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
        ],
        KeyExchange::ClassicalOnly => vec![aws_lc_rs::kx_group::X25519],
    };
    Arc::new(p)
}

/// The server's two TLS configurations: one for clients that offer raw
/// public keys, one with the self-issued certificate for those that do not.
#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    raw: Arc<rustls::ServerConfig>,
    x509: Arc<rustls::ServerConfig>,
}

impl ServerTlsConfig {
    /// Configurations that present `key` (the server's identity key) for
    /// `domain`.
    pub fn new(
        key: &IdentityKey,
        domain: &Domain,
        kx: KeyExchange,
    ) -> Result<ServerTlsConfig, TlsConfigError> {
        let provider = provider(kx);
        let signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(pkcs8(key)))?;
        let base = || {
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map(|b| b.with_no_client_auth())
        };
        let raw_key = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(ed25519_spki(&key.public()))],
            signing,
        ));
        let mut raw =
            base()?.with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(raw_key)));

        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8(key), &rcgen::PKCS_ED25519)?;
        let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, domain.as_str());
        let cert = params.self_signed(&key_pair)?;
        let mut x509 =
            base()?.with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(pkcs8(key)))?;
        for c in [&mut raw, &mut x509] {
            c.alpn_protocols = vec![ALPN.to_vec()];
            // Sessions are long-lived; resumption would carry the server's
            // authentication over from another connection: none.
            c.session_storage = Arc::new(NoServerSessionStorage {});
            c.send_tls13_tickets = 0;
        }
        Ok(ServerTlsConfig {
            raw: Arc::new(raw),
            x509: Arc::new(x509),
        })
    }

    /// The configuration for a client that offers `server_cert_types`
    /// (`None`: the extension is absent, i.e. X.509 only).
    pub fn for_client(
        &self,
        server_cert_types: Option<&[rustls::server::CertificateType]>,
    ) -> Arc<rustls::ServerConfig> {
        if server_cert_types
            .is_some_and(|t| t.contains(&rustls::server::CertificateType::RawPublicKey))
        {
            self.raw.clone()
        } else {
            self.x509.clone()
        }
    }
}

/// The client's TLS configuration: raw public keys only, the server's key
/// checked by the CMTP layer against its trust (pin, `_cmtpkey`, rotations).
#[derive(Debug, Clone)]
pub struct ClientTlsConfig(Arc<rustls::ClientConfig>);

impl ClientTlsConfig {
    /// A configuration offering the groups of `kx`.
    pub fn new(kx: KeyExchange) -> ClientTlsConfig {
        let provider = provider(kx);
        let algs = provider.signature_verification_algorithms;
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by the aws-lc-rs provider")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RawKeyVerifier { algs }))
            .with_no_client_auth();
        c.alpn_protocols = vec![ALPN.to_vec()];
        // The server serves one domain; no name is sent in the clear.
        c.enable_sni = false;
        c.resumption = rustls::client::Resumption::disabled();
        ClientTlsConfig(Arc::new(c))
    }

    /// A new rustls client connection (for tools and tests that drive TLS
    /// themselves; [`crate::connection::client::ClientConnection`] is the
    /// protocol's client).
    pub fn connect(&self) -> Result<rustls::ClientConnection, TlsError> {
        let name = ServerName::try_from("cmtp.invalid").expect("a valid name");
        rustls::ClientConnection::new(self.0.clone(), name)
    }

    /// The shared default (hybrid post-quantum key exchange).
    pub fn default_shared() -> ClientTlsConfig {
        static DEFAULT: std::sync::LazyLock<ClientTlsConfig> =
            std::sync::LazyLock::new(|| ClientTlsConfig::new(KeyExchange::default()));
        DEFAULT.clone()
    }
}

/// Accepts any Ed25519 raw public key whose TLS 1.3 signature verifies; the
/// key itself is judged by the CMTP layer after the handshake, before any
/// command is sent (it may be a rotated key, accepted along a chain from the
/// pin that only the connection itself can fetch).
#[derive(Debug)]
struct RawKeyVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RawKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match key_from_spki(end_entity.as_ref()) {
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => Err(TlsError::InvalidCertificate(CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.algs,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The channel binding of an established TLS connection (either side).
pub fn channel_binding(
    conn: &rustls::ConnectionCommon<impl rustls::SideData>,
) -> Result<[u8; CHANNEL_BINDING_LEN], TlsError> {
    conn.export_keying_material([0u8; CHANNEL_BINDING_LEN], EXPORTER_LABEL, None)
}

/// Feeds TLS records to `tls`: the plaintext they held, and whether the
/// peer closed (`Ok(true)`) or broke TLS (`Err`, the alert in `wire`).
pub(crate) fn decrypt<S: rustls::SideData>(
    tls: &mut rustls::ConnectionCommon<S>,
    mut rd: &[u8],
    wire: &mut Vec<u8>,
) -> (Vec<u8>, Result<bool, String>) {
    use std::io::BufRead;
    let mut plain = Vec::new();
    // At least one pass even without new bytes: records that arrived with
    // the ClientHello are already buffered in the connection (§4.4).
    loop {
        if !rd.is_empty() && tls.read_tls(&mut rd).is_err() {
            return (plain, Err("a TLS record is too large".into()));
        }
        let io = match tls.process_new_packets() {
            Ok(io) => io,
            Err(e) => {
                let _ = tls.write_tls(wire);
                return (plain, Err(e.to_string()));
            }
        };
        // Copied out chunk by chunk (`BufRead`): no zero-filled buffer to
        // read into first.
        let mut n = io.plaintext_bytes_to_read();
        plain.reserve(n);
        let mut reader = tls.reader();
        while n > 0 {
            let took = match reader.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let chunk = &chunk[..chunk.len().min(n)];
                    plain.extend_from_slice(chunk);
                    chunk.len()
                }
                _ => return (plain, Err("TLS plaintext lost".into())),
            };
            reader.consume(took);
            n -= took;
        }
        if io.peer_has_closed() {
            return (plain, Ok(true));
        }
        if rd.is_empty() {
            return (plain, Ok(false));
        }
    }
}

/// Hands `plain` to TLS and TLS's records to `wire`.
pub(crate) fn encrypt<S: rustls::SideData>(
    tls: &mut rustls::ConnectionCommon<S>,
    plain: &mut Vec<u8>,
    wire: &mut Vec<u8>,
) {
    use std::io::Write;
    if !plain.is_empty() && !tls.is_handshaking() {
        // The buffer limit is lifted by the callers: this never writes short.
        let _ = tls.writer().write_all(plain);
        *plain = Vec::new();
    }
    while tls.wants_write() {
        if tls.write_tls(wire).is_err() {
            break;
        }
    }
}

/// The name of a negotiated key-exchange group, for logs and tests.
pub fn group_name(group: rustls::NamedGroup) -> String {
    format!("{group:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ed25519_key_round_trips_through_its_spki() {
        let key = IdentityKey::from_seed(&[5; 32]).public();
        let spki = ed25519_spki(&key);
        assert_eq!(spki.len(), 44);
        assert_eq!(key_from_spki(&spki), Some(key));
        assert_eq!(key_from_spki(&spki[1..]), None);
    }

    #[test]
    fn the_pkcs8_form_is_what_aws_lc_rs_loads() {
        let key = IdentityKey::from_seed(&[5; 32]);
        let signing = aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(pkcs8(&key)))
            .unwrap();
        let spki = signing.public_key().unwrap();
        assert_eq!(spki.as_ref(), ed25519_spki(&key.public()).as_slice());
    }

    #[test]
    fn both_server_configurations_are_built() {
        let key = IdentityKey::from_seed(&[5; 32]);
        let c = ServerTlsConfig::new(
            &key,
            &Domain::parse("a.test").unwrap(),
            KeyExchange::default(),
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &c.for_client(Some(&[rustls::server::CertificateType::RawPublicKey])),
            &c.raw
        ));
        assert!(Arc::ptr_eq(&c.for_client(None), &c.x509));
    }
}
