//! The TLS clients the checker plays (PROTOCOL.md §4.1, §4.4).
//!
//! - [`Client::Cmtp`]: what a CMTP/2 client offers, from cmtp-proto
//!   ([`cmtp_proto::tls::ClientTlsConfig`]): TLS 1.3 only, raw public keys
//!   only (RFC 7250), ALPN `cmtp/2`, X25519MLKEM768 then X25519. Every rule
//!   runs on it unless it says otherwise.
//! - [`Client::X509`]: a standard TLS 1.3 client that does not offer raw
//!   public keys; it takes any certificate whose TLS 1.3 signature verifies
//!   and reports the certificate, so that a rule can compare its
//!   SubjectPublicKeyInfo with the server's key.
//! - [`tls12_client_hello`]: a hand-made ClientHello that offers TLS 1.2
//!   only, which a CMTP/2 server must refuse.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Which TLS client a probe plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// A CMTP/2 client (raw public keys only).
    Cmtp,
    /// A standard TLS 1.3 client offering no raw public keys.
    X509,
}

impl Client {
    /// A new rustls connection of this kind.
    pub(crate) fn connect(self) -> Result<rustls::Connection, String> {
        match self {
            Client::Cmtp => cmtp_proto::tls::ClientTlsConfig::default_shared()
                .connect()
                .map(rustls::Connection::Client)
                .map_err(|e| e.to_string()),
            Client::X509 => {
                let name = ServerName::try_from("cmtp.invalid").expect("a valid name");
                rustls::ClientConnection::new(x509_config(), name)
                    .map(rustls::Connection::Client)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// A TLS 1.3 client without raw public keys, ALPN `cmtp/2`, the provider's
/// default groups.
fn x509_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::LazyLock<Arc<rustls::ClientConfig>> =
        std::sync::LazyLock::new(|| {
            let provider = Arc::new(aws_lc_rs::default_provider());
            let algs = provider.signature_verification_algorithms;
            let mut c = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3 is supported by the aws-lc-rs provider")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { algs }))
                .with_no_client_auth();
            c.alpn_protocols = vec![cmtp_proto::tls::ALPN.to_vec()];
            c.enable_sni = false;
            c.resumption = rustls::client::Resumption::disabled();
            Arc::new(c)
        });
    CONFIG.clone()
}

/// Accepts any certificate that parses, and checks the TLS 1.3 signature
/// with the key in it: the rule judges the key afterwards.
#[derive(Debug)]
struct AnyCertificate {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match certificate_spki(end_entity.as_ref()) {
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The SubjectPublicKeyInfo (DER) of an X.509 certificate, if it parses.
pub(crate) fn certificate_spki(der: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(cert.subject_public_key_info().as_ref().to_vec())
}

/// A ClientHello record that offers TLS 1.2 and nothing newer (no
/// `supported_versions` extension), with the usual ECDHE suites, X25519 and
/// P-256, Ed25519 and ECDSA signatures, and ALPN `cmtp/2`. A TLS 1.3-only
/// server answers it with a `protocol_version` alert.
pub(crate) fn tls12_client_hello(random: [u8; 32]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut body = vec![0x03, 0x03]; // client_version TLS 1.2
    body.extend_from_slice(&random);
    body.push(0); // no session id
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut exts = Vec::new();
    ext(&mut exts, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // groups: x25519, secp256r1
    ext(&mut exts, 0x000b, &[1, 0]); // point formats: uncompressed
    // signature algorithms: ed25519, ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext(
        &mut exts,
        0x000d,
        &[0, 8, 0x08, 0x07, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    let alpn = cmtp_proto::tls::ALPN;
    let mut list = vec![alpn.len() as u8];
    list.extend_from_slice(alpn);
    let mut alpn_ext = (list.len() as u16).to_be_bytes().to_vec();
    alpn_ext.extend_from_slice(&list);
    ext(&mut exts, 0x0010, &alpn_ext); // ALPN
    ext(&mut exts, 0x0017, &[]); // extended master secret
    ext(&mut exts, 0xff01, &[0]); // renegotiation info
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);

    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// What came back first after a ClientHello, from its record header on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstRecord {
    /// An alert: level and description (70 is `protocol_version`).
    Alert {
        /// 1 warning, 2 fatal.
        level: u8,
        /// The alert description.
        description: u8,
    },
    /// A ServerHello with this `server_version` (and, if present, the
    /// `supported_versions` extension's choice).
    ServerHello {
        /// The legacy version field.
        version: u16,
        /// The version the `supported_versions` extension selected.
        selected: Option<u16>,
    },
    /// Some other record.
    Other {
        /// Its content type.
        content_type: u8,
    },
}

/// Decodes the first TLS record of `buf`; `None` = need more bytes.
pub(crate) fn first_record(buf: &[u8]) -> Option<FirstRecord> {
    if buf.len() < 5 {
        return None;
    }
    let content_type = buf[0];
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    let rec = buf.get(5..5 + len)?;
    Some(match content_type {
        0x15 if rec.len() >= 2 => FirstRecord::Alert {
            level: rec[0],
            description: rec[1],
        },
        0x16 if rec.first() == Some(&2) && rec.len() >= 6 => {
            let version = u16::from_be_bytes([rec[4], rec[5]]);
            FirstRecord::ServerHello {
                version,
                selected: server_hello_selected(&rec[4..]),
            }
        }
        t => FirstRecord::Other { content_type: t },
    })
}

/// The `supported_versions` choice in a ServerHello body.
fn server_hello_selected(b: &[u8]) -> Option<u16> {
    // version[2] random[32] session_id<1> suite[2] compression[1] extensions<2>
    let sid = *b.get(34)? as usize;
    let mut at = 35 + sid + 3;
    let total = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
    at += 2;
    let end = (at + total).min(b.len());
    while at + 4 <= end {
        let kind = u16::from_be_bytes([b[at], b[at + 1]]);
        let len = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
        if kind == 0x002b && len == 2 && at + 6 <= end {
            return Some(u16::from_be_bytes([b[at + 4], b[at + 5]]));
        }
        at += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls12_hello_is_refused_by_a_tls13_only_rustls_server() {
        let key = cmtp_proto::crypto::IdentityKey::from_seed(&[3; 32]);
        let domain = cmtp_proto::names::Domain::parse("a.test").unwrap();
        let configs = cmtp_proto::tls::ServerTlsConfig::new(
            &key,
            &domain,
            cmtp_proto::tls::KeyExchange::default(),
        )
        .unwrap();
        let mut acceptor = rustls::server::Acceptor::default();
        let hello = tls12_client_hello([7; 32]);
        acceptor.read_tls(&mut hello.as_slice()).unwrap();
        // The hello parses: it is a well-formed ClientHello ...
        let accepted = acceptor.accept().unwrap().expect("a complete ClientHello");
        let config = configs.for_client(accepted.client_hello().server_cert_types());
        // ... that a TLS 1.3-only configuration refuses with an alert.
        let Err((_, mut alert)) = accepted.into_connection(config) else {
            panic!("a TLS 1.2-only hello was accepted");
        };
        let mut out = Vec::new();
        alert.write(&mut out).unwrap();
        assert_eq!(
            first_record(&out),
            Some(FirstRecord::Alert {
                level: 2,
                description: 70
            })
        );
    }

    #[test]
    fn the_self_issued_certificate_carries_the_server_key() {
        let key = cmtp_proto::crypto::IdentityKey::from_seed(&[4; 32]);
        let cert = certificate_of_handshake(&key);
        let spki = certificate_spki(&cert).unwrap();
        assert_eq!(cmtp_proto::tls::key_from_spki(&spki), Some(key.public()));
        assert_eq!(certificate_spki(b"not a certificate"), None);
    }

    /// The certificate a cmtp-proto server gives an X.509 client, taken
    /// from a handshake in memory.
    fn certificate_of_handshake(key: &cmtp_proto::crypto::IdentityKey) -> Vec<u8> {
        let domain = cmtp_proto::names::Domain::parse("a.test").unwrap();
        let configs = cmtp_proto::tls::ServerTlsConfig::new(
            key,
            &domain,
            cmtp_proto::tls::KeyExchange::default(),
        )
        .unwrap();
        let mut client = Client::X509.connect().unwrap();
        let mut server = rustls::ServerConnection::new(configs.for_client(None)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking());
        client.peer_certificates().unwrap()[0].as_ref().to_vec()
    }
}
