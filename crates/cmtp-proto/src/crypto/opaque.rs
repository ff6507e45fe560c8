//! OPAQUE (RFC 9807) password-authenticated registration and login, with
//! `opaque-ke` 4.0.1 behind a byte-oriented API (PROTOCOL.md §12.1).
//!
//! Cipher suite: OPRF over Ristretto255, 3DH over Ristretto255 with SHA-512,
//! Argon2id (v0x13) as key-stretching function with [`KsfParams`].
//!
//! Identifiers: client = `user@domain`, server = `domain`; credential
//! identifier (the server's OPRF key derivation input) = `user@domain`;
//! login context = [`CONTEXT`].
//!
//! Message sizes are fixed: see the `*_LEN` constants.
//!
//! ```text
//! client                                   server
//! ClientRegistration::start  --request-->  server_registration_response
//!         .finish            <--response--
//!   (record, export key)     --record--->  validate_record, store
//! ClientLogin::start         ----KE1---->  ServerLogin::start (record or None)
//!         .finish            <---KE2-----
//!   (KE3, session, export)   ----KE3---->  .finish -> session key
//! ```

use core::fmt;

use opaque_ke::errors::{InternalError, ProtocolError};
use opaque_ke::{
    ClientLoginFinishParameters, ClientRegistrationFinishParameters, CredentialFinalization,
    CredentialRequest, CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse,
    RegistrationUpload, ServerLoginParameters,
};
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// The CMTP OPAQUE cipher suite.
struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// The start of the OPAQUE login context (both sides); the connection's
/// channel binding follows (PROTOCOL.md §12.1): a login is bound to the TLS
/// connection it runs on and cannot be relayed onto another.
pub const CONTEXT: &[u8] = b"CMTP-v2 OPAQUE\0";

/// The OPAQUE login context of a connection with `channel_binding`.
pub fn login_context(channel_binding: &[u8; 32]) -> Vec<u8> {
    let mut c = CONTEXT.to_vec();
    c.extend_from_slice(channel_binding);
    c
}

/// Length of a registration request (client → server).
pub const REGISTRATION_REQUEST_LEN: usize = 32;
/// Length of a registration response (server → client).
pub const REGISTRATION_RESPONSE_LEN: usize = 64;
/// Length of a registration record (the upload the server stores).
pub const RECORD_LEN: usize = 192;
/// Length of KE1, the credential request (client → server).
pub const KE1_LEN: usize = 96;
/// Length of KE2, the credential response (server → client).
pub const KE2_LEN: usize = 320;
/// Length of KE3, the credential finalization (client → server).
pub const KE3_LEN: usize = 64;
/// Length of the export key (input of the xzibit key derivation).
pub const EXPORT_KEY_LEN: usize = 64;
/// Length of the session key.
pub const SESSION_KEY_LEN: usize = 64;
/// Length of a serialized [`ServerSetup`].
pub const SERVER_SETUP_LEN: usize = 128;

/// Argon2id cost parameters, sent to clients so that they stretch the
/// password as the record was made.
///
/// Encoded as three big-endian `u32`: `m_cost_kib || t_cost || p_cost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KsfParams {
    /// Memory, in KiB (Argon2 `m`).
    pub m_cost_kib: u32,
    /// Passes (Argon2 `t`).
    pub t_cost: u32,
    /// Lanes (Argon2 `p`).
    pub p_cost: u32,
}

impl KsfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes. The
    /// production default and floor.
    pub const RECOMMENDED: KsfParams = KsfParams {
        m_cost_kib: 65536,
        t_cost: 3,
        p_cost: 4,
    };

    /// Very low costs for test suites only (256 KiB, 1 pass, 1 lane). Never
    /// use in production; a production floor refuses it.
    pub const INSECURE_TEST: KsfParams = KsfParams {
        m_cost_kib: 256,
        t_cost: 1,
        p_cost: 1,
    };

    /// Largest accepted memory cost: 256 MiB, in KiB. Together with
    /// [`MAX_WORK`](Self::MAX_WORK) this is the ceiling of what a login may
    /// cost, chosen so that a phone can afford it (PROTOCOL.md §12.1): a
    /// server, or someone impersonating one, cannot make a client spend
    /// gigabytes and minutes on a login. Registrations are held to the same
    /// ceiling, so every account can log in from a phone.
    pub const MAX_M_COST_KIB: u32 = 262_144;
    /// Largest accepted pass count.
    pub const MAX_T_COST: u32 = 16;
    /// Largest accepted lane count.
    pub const MAX_P_COST: u32 = 16;
    /// Largest accepted memory × passes, in KiB-passes (1 GiB·pass: about
    /// 5 times the default's 64 MiB × 3; on a 2020s phone roughly 2 s).
    pub const MAX_WORK: u64 = 1_048_576;
    /// Length of the encoding.
    pub const ENCODED_LEN: usize = 12;

    /// Checks the parameters against `floor` (each of `m`, `t`, `p` at least
    /// the floor's) and against the sane maxima and Argon2's own rules
    /// (`t >= 1`, `p >= 1`, `m >= 8 * p`).
    pub fn validate(&self, floor: &KsfParams) -> Result<(), CryptoError> {
        self.check_structure()?;
        if self.m_cost_kib < floor.m_cost_kib {
            return Err(CryptoError::KsfParams {
                reason: "memory cost below the floor",
            });
        }
        if self.t_cost < floor.t_cost {
            return Err(CryptoError::KsfParams {
                reason: "pass count below the floor",
            });
        }
        if self.p_cost < floor.p_cost {
            return Err(CryptoError::KsfParams {
                reason: "lane count below the floor",
            });
        }
        Ok(())
    }

    fn check_structure(&self) -> Result<(), CryptoError> {
        let err = |reason| Err(CryptoError::KsfParams { reason });
        if self.t_cost == 0 {
            return err("pass count is zero");
        }
        if self.p_cost == 0 {
            return err("lane count is zero");
        }
        if self.m_cost_kib > Self::MAX_M_COST_KIB {
            return err("memory cost above 256 MiB");
        }
        if self.t_cost > Self::MAX_T_COST {
            return err("pass count above 16");
        }
        if self.p_cost > Self::MAX_P_COST {
            return err("lane count above 16");
        }
        if u64::from(self.m_cost_kib) * u64::from(self.t_cost) > Self::MAX_WORK {
            return err("memory times passes above 1 GiB");
        }
        if u64::from(self.m_cost_kib) < 8 * u64::from(self.p_cost) {
            return err("memory cost below 8 KiB per lane");
        }
        Ok(())
    }

    /// The Argon2id (version 0x13) instance with these costs. Checks the
    /// structural rules of [`validate`](Self::validate) but not a floor.
    pub fn argon2(&self) -> Result<argon2::Argon2<'static>, CryptoError> {
        self.check_structure()?;
        let params =
            argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, None).map_err(|_| {
                CryptoError::KsfParams {
                    reason: "refused by argon2",
                }
            })?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    /// The 12-byte encoding.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..4].copy_from_slice(&self.m_cost_kib.to_be_bytes());
        out[4..8].copy_from_slice(&self.t_cost.to_be_bytes());
        out[8..12].copy_from_slice(&self.p_cost.to_be_bytes());
        out
    }

    /// Appends the 12-byte encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Decodes exactly 12 bytes. Does not validate: call
    /// [`validate`](Self::validate) with your floor.
    pub fn decode(bytes: &[u8]) -> Result<KsfParams, CryptoError> {
        let b: &[u8; Self::ENCODED_LEN] = bytes.try_into().map_err(|_| CryptoError::KsfParams {
            reason: "encoding is not 12 bytes",
        })?;
        let u = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(KsfParams {
            m_cost_kib: u(0),
            t_cost: u(4),
            p_cost: u(8),
        })
    }
}

impl Default for KsfParams {
    fn default() -> Self {
        KsfParams::RECOMMENDED
    }
}

/// The server's long-term OPAQUE secret (OPRF seed and 3DH key pair).
/// Generate once, store like the server key. Zeroized on drop; `Debug` is
/// redacted.
#[derive(Clone)]
pub struct ServerSetup(opaque_ke::ServerSetup<Suite>);

impl ServerSetup {
    /// Generates a new setup.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> ServerSetup {
        ServerSetup(opaque_ke::ServerSetup::new(rng))
    }

    /// The [`SERVER_SETUP_LEN`]-byte serialization. Secret.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize().to_vec())
    }

    /// Restores a setup from [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerSetup, CryptoError> {
        if bytes.len() != SERVER_SETUP_LEN {
            return Err(CryptoError::OpaqueMalformed {
                what: "server setup",
            });
        }
        opaque_ke::ServerSetup::<Suite>::deserialize(bytes)
            .map(ServerSetup)
            .map_err(|_| CryptoError::OpaqueMalformed {
                what: "server setup",
            })
    }
}

impl fmt::Debug for ServerSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSetup(<redacted>)")
    }
}

fn identifiers<'a>(address: &'a str, domain: &'a str) -> Identifiers<'a> {
    Identifiers {
        client: Some(address.as_bytes()),
        server: Some(domain.as_bytes()),
    }
}

/// Maps an opaque-ke error; `invalid_login` is what `InvalidLoginError` means
/// on this side.
fn map_err(e: ProtocolError, what: &'static str, invalid_login: CryptoError) -> CryptoError {
    match e {
        ProtocolError::InvalidLoginError => invalid_login,
        ProtocolError::SerializationError | ProtocolError::SizeError { .. } => {
            CryptoError::OpaqueMalformed { what }
        }
        ProtocolError::ReflectedValueError => CryptoError::Opaque {
            what: "server reflected the OPRF value",
        },
        ProtocolError::LibraryError(InternalError::KsfError) => CryptoError::Opaque {
            what: "Argon2 failed",
        },
        ProtocolError::LibraryError(InternalError::HashToScalar) => CryptoError::Opaque {
            what: "input too long",
        },
        _ => CryptoError::Opaque {
            what: "internal OPAQUE error",
        },
    }
}

fn check_len(bytes: &[u8], len: usize, what: &'static str) -> Result<(), CryptoError> {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(CryptoError::OpaqueMalformed { what })
    }
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes
        .try_into()
        .expect("message size is fixed by the cipher suite")
}

/// Client state between the registration request and the record.
/// Zeroized on drop; `Debug` is redacted.
pub struct ClientRegistration(opaque_ke::ClientRegistration<Suite>);

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientRegistration(<redacted>)")
    }
}

impl ClientRegistration {
    /// Blinds `password`; returns the state and the
    /// [`REGISTRATION_REQUEST_LEN`]-byte request for the server.
    pub fn start(
        password: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(ClientRegistration, [u8; REGISTRATION_REQUEST_LEN]), CryptoError> {
        let r = opaque_ke::ClientRegistration::<Suite>::start(rng, password).map_err(|e| {
            map_err(
                e,
                "registration request",
                CryptoError::Opaque {
                    what: "unexpected login error",
                },
            )
        })?;
        Ok((
            ClientRegistration(r.state),
            to_array(&r.message.serialize()),
        ))
    }

    /// Finishes registration with the server's response: stretches the
    /// password with Argon2id (`ksf`), returns the [`RECORD_LEN`]-byte record
    /// to upload and the export key (for [`super::xzibit`]).
    ///
    /// `ksf` is checked structurally only; check it against your floor with
    /// [`KsfParams::validate`] first.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        password: &[u8],
        response: &[u8],
        address: &str,
        domain: &str,
        ksf: &KsfParams,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Vec<u8>, Zeroizing<[u8; EXPORT_KEY_LEN]>), CryptoError> {
        let what = "registration response";
        check_len(response, REGISTRATION_RESPONSE_LEN, what)?;
        let response = RegistrationResponse::<Suite>::deserialize(response)
            .map_err(|_| CryptoError::OpaqueMalformed { what })?;
        let argon2 = ksf.argon2()?;
        let mut r = self
            .0
            .finish(
                rng,
                password,
                response,
                ClientRegistrationFinishParameters::new(
                    identifiers(address, domain),
                    Some(&argon2),
                ),
            )
            .map_err(|e| {
                map_err(
                    e,
                    what,
                    CryptoError::Opaque {
                        what: "unexpected login error",
                    },
                )
            })?;
        let export_key = Zeroizing::new(to_array(&r.export_key));
        r.export_key.zeroize();
        Ok((r.message.serialize().to_vec(), export_key))
    }
}

/// Server side of registration: evaluates the client's blinded password with
/// the OPRF key derived for `address`; returns the
/// [`REGISTRATION_RESPONSE_LEN`]-byte response.
pub fn server_registration_response(
    setup: &ServerSetup,
    request: &[u8],
    address: &str,
) -> Result<[u8; REGISTRATION_RESPONSE_LEN], CryptoError> {
    let what = "registration request";
    check_len(request, REGISTRATION_REQUEST_LEN, what)?;
    let request = RegistrationRequest::<Suite>::deserialize(request)
        .map_err(|_| CryptoError::OpaqueMalformed { what })?;
    let r = opaque_ke::ServerRegistration::<Suite>::start(&setup.0, request, address.as_bytes())
        .map_err(|e| {
            map_err(
                e,
                what,
                CryptoError::Opaque {
                    what: "unexpected login error",
                },
            )
        })?;
    Ok(to_array(&r.message.serialize()))
}

/// Checks that `record` is a well-formed [`RECORD_LEN`]-byte registration
/// record (valid client public key) before the server stores it.
pub fn validate_record(record: &[u8]) -> Result<(), CryptoError> {
    parse_record(record).map(|_| ())
}

fn parse_record(record: &[u8]) -> Result<opaque_ke::ServerRegistration<Suite>, CryptoError> {
    let what = "registration record";
    check_len(record, RECORD_LEN, what)?;
    let upload = RegistrationUpload::<Suite>::deserialize(record)
        .map_err(|_| CryptoError::OpaqueMalformed { what })?;
    Ok(opaque_ke::ServerRegistration::finish(upload))
}

/// Client state between KE1 and KE2. Zeroized on drop; `Debug` is redacted.
pub struct ClientLogin(opaque_ke::ClientLogin<Suite>);

impl fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientLogin(<redacted>)")
    }
}

/// What a successful client login yields.
pub struct LoginFinish {
    /// KE3, to send to the server.
    pub ke3: [u8; KE3_LEN],
    /// The session key, equal to the server's.
    pub session_key: Zeroizing<[u8; SESSION_KEY_LEN]>,
    /// The export key, equal to the one from registration (opens the xzibit).
    pub export_key: Zeroizing<[u8; EXPORT_KEY_LEN]>,
}

impl fmt::Debug for LoginFinish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginFinish")
            .field("ke3", &hex::encode(self.ke3))
            .field("session_key", &"<redacted>")
            .field("export_key", &"<redacted>")
            .finish()
    }
}

impl ClientLogin {
    /// Blinds `password`; returns the state and KE1 ([`KE1_LEN`] bytes).
    pub fn start(
        password: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(ClientLogin, [u8; KE1_LEN]), CryptoError> {
        let r = opaque_ke::ClientLogin::<Suite>::start(rng, password)
            .map_err(|e| map_err(e, "KE1", CryptoError::WrongPassword))?;
        Ok((ClientLogin(r.state), to_array(&r.message.serialize())))
    }

    /// Processes KE2: stretches the password with Argon2id (`ksf`, which
    /// must be the parameters the record was made with), authenticates the
    /// server and returns KE3 with the session and export keys.
    ///
    /// A wrong password, or an unknown user (the server answered with a fake
    /// record), gives [`CryptoError::WrongPassword`]. `ksf` is checked
    /// structurally only; check it against your floor first.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        password: &[u8],
        ke2: &[u8],
        address: &str,
        domain: &str,
        ksf: &KsfParams,
        channel_binding: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<LoginFinish, CryptoError> {
        let what = "KE2";
        check_len(ke2, KE2_LEN, what)?;
        let ke2 = CredentialResponse::<Suite>::deserialize(ke2)
            .map_err(|_| CryptoError::OpaqueMalformed { what })?;
        let argon2 = ksf.argon2()?;
        let mut r = self
            .0
            .finish(
                rng,
                password,
                ke2,
                ClientLoginFinishParameters::new(
                    Some(&login_context(channel_binding)),
                    identifiers(address, domain),
                    Some(&argon2),
                ),
            )
            .map_err(|e| map_err(e, what, CryptoError::WrongPassword))?;
        let fin = LoginFinish {
            ke3: to_array(&r.message.serialize()),
            session_key: Zeroizing::new(to_array(&r.session_key)),
            export_key: Zeroizing::new(to_array(&r.export_key)),
        };
        r.session_key.zeroize();
        r.export_key.zeroize();
        Ok(fin)
    }
}

/// Server state between KE2 and KE3. Zeroized on drop; `Debug` is redacted.
pub struct ServerLogin {
    state: opaque_ke::ServerLogin<Suite>,
    address: String,
    domain: String,
    context: Vec<u8>,
}

impl fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerLogin")
            .field("address", &self.address)
            .field("state", &"<redacted>")
            .finish()
    }
}

impl ServerLogin {
    /// Answers KE1 for `address` with KE2 ([`KE2_LEN`] bytes).
    ///
    /// With `record = None` (unknown user) the answer is a fake one built
    /// from a random record: same size and shape, and the client's login
    /// then fails with [`CryptoError::WrongPassword`] as for a wrong
    /// password. A stored record that does not parse is an error.
    pub fn start(
        setup: &ServerSetup,
        record: Option<&[u8]>,
        ke1: &[u8],
        address: &str,
        domain: &str,
        channel_binding: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(ServerLogin, [u8; KE2_LEN]), CryptoError> {
        let what = "KE1";
        check_len(ke1, KE1_LEN, what)?;
        let ke1 = CredentialRequest::<Suite>::deserialize(ke1)
            .map_err(|_| CryptoError::OpaqueMalformed { what })?;
        let record = record.map(parse_record).transpose()?;
        let context = login_context(channel_binding);
        let r = opaque_ke::ServerLogin::start(
            rng,
            &setup.0,
            record,
            ke1,
            address.as_bytes(),
            ServerLoginParameters {
                context: Some(&context),
                identifiers: identifiers(address, domain),
            },
        )
        .map_err(|e| map_err(e, what, CryptoError::LoginFailed))?;
        Ok((
            ServerLogin {
                state: r.state,
                address: address.to_owned(),
                domain: domain.to_owned(),
                context,
            },
            to_array(&r.message.serialize()),
        ))
    }

    /// Checks KE3; on success returns the session key (equal to the
    /// client's). A client that did not know the password gets
    /// [`CryptoError::LoginFailed`].
    pub fn finish(self, ke3: &[u8]) -> Result<Zeroizing<[u8; SESSION_KEY_LEN]>, CryptoError> {
        let what = "KE3";
        check_len(ke3, KE3_LEN, what)?;
        let ke3 = CredentialFinalization::<Suite>::deserialize(ke3)
            .map_err(|_| CryptoError::OpaqueMalformed { what })?;
        let mut r = self
            .state
            .finish(
                ke3,
                ServerLoginParameters {
                    context: Some(&self.context),
                    identifiers: identifiers(&self.address, &self.domain),
                },
            )
            .map_err(|e| map_err(e, what, CryptoError::LoginFailed))?;
        let key = Zeroizing::new(to_array(&r.session_key));
        r.session_key.zeroize();
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const KSF: KsfParams = KsfParams::INSECURE_TEST;
    /// The channel binding of the connection in these tests.
    const CB: [u8; 32] = [0xcb; 32];
    const ADDR: &str = "alice@example.org";
    const DOMAIN: &str = "example.org";

    fn register(setup: &ServerSetup, pw: &[u8], rng: &mut StdRng) -> (Vec<u8>, [u8; 64]) {
        let (state, req) = ClientRegistration::start(pw, rng).unwrap();
        assert_eq!(req.len(), REGISTRATION_REQUEST_LEN);
        let resp = server_registration_response(setup, &req, ADDR).unwrap();
        assert_eq!(resp.len(), REGISTRATION_RESPONSE_LEN);
        let (record, ek) = state.finish(pw, &resp, ADDR, DOMAIN, &KSF, rng).unwrap();
        assert_eq!(record.len(), RECORD_LEN);
        validate_record(&record).unwrap();
        (record, *ek)
    }

    #[test]
    fn registration_and_login_round_trip() {
        let mut rng = StdRng::seed_from_u64(31);
        let setup = ServerSetup::generate(&mut rng);
        let setup = ServerSetup::from_bytes(&setup.to_bytes()).unwrap();
        assert_eq!(setup.to_bytes().len(), SERVER_SETUP_LEN);
        let (record, reg_ek) = register(&setup, b"correct horse", &mut rng);

        let (client, ke1) = ClientLogin::start(b"correct horse", &mut rng).unwrap();
        assert_eq!(ke1.len(), KE1_LEN);
        let (server, ke2) =
            ServerLogin::start(&setup, Some(&record), &ke1, ADDR, DOMAIN, &CB, &mut rng).unwrap();
        assert_eq!(ke2.len(), KE2_LEN);
        let fin = client
            .finish(b"correct horse", &ke2, ADDR, DOMAIN, &KSF, &CB, &mut rng)
            .unwrap();
        assert_eq!(fin.ke3.len(), KE3_LEN);
        assert_eq!(*fin.export_key, reg_ek);
        let sk = server.finish(&fin.ke3).unwrap();
        assert_eq!(*sk, *fin.session_key);
        assert_eq!(sk.len(), SESSION_KEY_LEN);
        let dbg = format!("{fin:?} {setup:?}");
        assert!(!dbg.contains(&hex::encode(&fin.session_key[..])));
        assert!(!dbg.contains(&hex::encode(reg_ek)));
    }

    #[test]
    fn wrong_password_is_refused() {
        let mut rng = StdRng::seed_from_u64(32);
        let setup = ServerSetup::generate(&mut rng);
        let (record, _) = register(&setup, b"right", &mut rng);
        let (client, ke1) = ClientLogin::start(b"wrong", &mut rng).unwrap();
        let (server, ke2) =
            ServerLogin::start(&setup, Some(&record), &ke1, ADDR, DOMAIN, &CB, &mut rng).unwrap();
        assert_eq!(
            client
                .finish(b"wrong", &ke2, ADDR, DOMAIN, &KSF, &CB, &mut rng)
                .unwrap_err(),
            CryptoError::WrongPassword
        );
        // a client that forges a KE3 fails at the server
        assert_eq!(
            server.finish(&[0u8; KE3_LEN]).unwrap_err(),
            CryptoError::LoginFailed
        );
    }

    #[test]
    fn mismatched_identifiers_or_ksf_fail() {
        let mut rng = StdRng::seed_from_u64(33);
        let setup = ServerSetup::generate(&mut rng);
        let (record, _) = register(&setup, b"pw", &mut rng);
        // client believes another domain (server identifier): envelope fails
        let (client, ke1) = ClientLogin::start(b"pw", &mut rng).unwrap();
        let (_s, ke2) =
            ServerLogin::start(&setup, Some(&record), &ke1, ADDR, DOMAIN, &CB, &mut rng).unwrap();
        assert!(
            client
                .finish(b"pw", &ke2, ADDR, "evil.example", &KSF, &CB, &mut rng)
                .is_err()
        );
        // other Argon2 costs than at registration: like a wrong password
        let (client, ke1) = ClientLogin::start(b"pw", &mut rng).unwrap();
        let (_s, ke2) =
            ServerLogin::start(&setup, Some(&record), &ke1, ADDR, DOMAIN, &CB, &mut rng).unwrap();
        let other = KsfParams {
            m_cost_kib: 512,
            ..KSF
        };
        assert_eq!(
            client
                .finish(b"pw", &ke2, ADDR, DOMAIN, &other, &CB, &mut rng)
                .unwrap_err(),
            CryptoError::WrongPassword
        );
    }

    #[test]
    fn unknown_user_gets_same_shape_and_fails_at_finish() {
        let mut rng = StdRng::seed_from_u64(34);
        let setup = ServerSetup::generate(&mut rng);
        let (client, ke1) = ClientLogin::start(b"pw", &mut rng).unwrap();
        let (server, ke2) = ServerLogin::start(
            &setup,
            None,
            &ke1,
            "nobody@example.org",
            DOMAIN,
            &CB,
            &mut rng,
        )
        .unwrap();
        assert_eq!(ke2.len(), KE2_LEN);
        assert_eq!(
            client
                .finish(
                    b"pw",
                    &ke2,
                    "nobody@example.org",
                    DOMAIN,
                    &KSF,
                    &CB,
                    &mut rng
                )
                .unwrap_err(),
            CryptoError::WrongPassword
        );
        assert_eq!(
            server.finish(&[7u8; KE3_LEN]).unwrap_err(),
            CryptoError::LoginFailed
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut rng = StdRng::seed_from_u64(35);
        let setup = ServerSetup::generate(&mut rng);
        assert!(matches!(
            server_registration_response(&setup, &[0u8; 31], ADDR),
            Err(CryptoError::OpaqueMalformed { .. })
        ));
        // the all-ones string is not a Ristretto255 encoding
        assert!(matches!(
            server_registration_response(&setup, &[0xffu8; 32], ADDR),
            Err(CryptoError::OpaqueMalformed { .. })
        ));
        assert!(validate_record(&[0u8; 191]).is_err());
        assert!(validate_record(&[0xffu8; 192]).is_err());
        assert!(ServerLogin::start(&setup, None, &[0u8; 95], ADDR, DOMAIN, &CB, &mut rng).is_err());
        assert!(ServerSetup::from_bytes(&[0u8; 127]).is_err());
        let (client, _) = ClientLogin::start(b"pw", &mut rng).unwrap();
        assert!(matches!(
            client.finish(b"pw", &[0u8; 319], ADDR, DOMAIN, &KSF, &CB, &mut rng),
            Err(CryptoError::OpaqueMalformed { .. })
        ));
    }

    #[test]
    fn ksf_params_validate_encode_and_build() {
        let r = KsfParams::RECOMMENDED;
        assert_eq!(
            (r.m_cost_kib, r.t_cost, r.p_cost),
            (65536, 3, 4),
            "RFC 9106 second recommendation"
        );
        assert_eq!(KsfParams::default(), r);
        r.validate(&r).unwrap();
        let a = r.argon2().unwrap();
        assert_eq!(a.params().m_cost(), 65536);
        assert_eq!(a.params().t_cost(), 3);
        assert_eq!(a.params().p_cost(), 4);

        let enc = r.to_bytes();
        assert_eq!(enc, [0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4]);
        let mut v = Vec::new();
        r.encode(&mut v);
        assert_eq!(v, enc);
        assert_eq!(KsfParams::decode(&enc).unwrap(), r);
        assert!(KsfParams::decode(&enc[..11]).is_err());
        assert!(KsfParams::decode(&[0u8; 13]).is_err());

        // below the floor
        assert!(KSF.validate(&r).is_err());
        KSF.validate(&KSF).unwrap();
        for bad in [
            KsfParams {
                m_cost_kib: 65535,
                ..r
            },
            KsfParams { t_cost: 2, ..r },
            KsfParams { p_cost: 3, ..r },
        ] {
            assert!(bad.validate(&r).is_err(), "{bad:?}");
        }
        // above the maxima, inconsistent
        let floor = KsfParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        };
        for bad in [
            // What a hostile server asked for before the ceiling: 4 GiB, 64 passes.
            KsfParams {
                m_cost_kib: 4_194_304,
                t_cost: 64,
                p_cost: 64,
            },
            KsfParams {
                m_cost_kib: 262_145,
                t_cost: 1,
                ..r
            },
            KsfParams { t_cost: 17, ..r },
            KsfParams {
                p_cost: 17,
                m_cost_kib: 1 << 17,
                t_cost: 1,
            },
            // Each within its own limit, too much together.
            KsfParams {
                m_cost_kib: 262_144,
                t_cost: 5,
                p_cost: 4,
            },
            KsfParams { t_cost: 0, ..r },
            KsfParams { p_cost: 0, ..r },
            KsfParams {
                m_cost_kib: 31,
                t_cost: 1,
                p_cost: 4,
            },
        ] {
            assert!(bad.validate(&floor).is_err(), "{bad:?}");
            assert!(bad.argon2().is_err(), "{bad:?}");
        }
        // The ceiling itself is accepted.
        for good in [
            KsfParams {
                m_cost_kib: 262_144,
                t_cost: 4,
                p_cost: 16,
            },
            KsfParams {
                m_cost_kib: 65_536,
                t_cost: 16,
                p_cost: 4,
            },
        ] {
            good.validate(&floor).unwrap();
        }
    }
}
