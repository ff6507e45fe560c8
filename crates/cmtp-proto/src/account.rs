//! The client's side of registration, login and password change, as pure
//! functions over the protocol's payloads (PROTOCOL.md §11–§12). Both the
//! `cmtp` client and `cmtpd user add` (which registers locally) use these.

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::opaque::{ClientLogin, ClientRegistration, EXPORT_KEY_LEN, KsfParams};
use crate::crypto::xzibit::Xzibit;
use crate::crypto::{CryptoError, IdentityKey, PublicKey};
use crate::names::Address;
use crate::payload::{
    LoginChallenge, PayloadError, RegistrationBundle, RegistrationOffer, XzibitRelease,
};

/// Why a client-side step failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The password is wrong or the account unknown (indistinguishable by design).
    #[error("wrong password or unknown user")]
    WrongPassword,
    /// The server asks for Argon2id parameters weaker than the client accepts,
    /// or the client's own choice is below the server's floor.
    #[error("Argon2id parameters refused: {0}")]
    WeakKsf(CryptoError),
    /// The released xzibit is not signed by the server's key.
    #[error("the server's signature on the key package does not verify")]
    BadRelease(PayloadError),
    /// The key inside the xzibit is not the account's key.
    #[error("the key package holds a different key than the account's key statement")]
    KeyMismatch,
    /// Any other protocol failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A registration (or password change) in progress on the client.
#[derive(Debug)]
pub struct Registration {
    state: ClientRegistration,
}

impl Registration {
    /// Starts: returns the state and the request for REGISTER or PASSWORD.
    pub fn start(
        password: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Registration, [u8; 32]), AccountError> {
        let (state, request) = ClientRegistration::start(password, rng)?;
        Ok((Registration { state }, request))
    }

    /// Finishes with the server's offer: runs Argon2id with `ksf` (refused
    /// below the server's floor), seals `identity` into a new xzibit, and
    /// returns the signed bundle for REGFINISH.
    #[allow(clippy::too_many_arguments)] // each is a distinct input of the protocol step
    pub fn finish(
        self,
        password: &[u8],
        offer: &RegistrationOffer,
        address: &Address,
        identity: &IdentityKey,
        ksf: KsfParams,
        now: u64,
        channel_binding: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<RegistrationBundle, AccountError> {
        ksf.validate(&offer.floor).map_err(AccountError::WeakKsf)?;
        let addr = address.to_string();
        let (record, export_key) = self.state.finish(
            password,
            &offer.response,
            &addr,
            address.domain.as_str(),
            &ksf,
            rng,
        )?;
        let xzibit = Xzibit::seal(&export_key, &addr, identity, now, rng);
        Ok(RegistrationBundle::new(
            address,
            channel_binding,
            identity,
            record,
            ksf,
            xzibit.to_bytes(),
        ))
    }
}

/// A login in progress on the client.
#[derive(Debug)]
pub struct Login {
    state: ClientLogin,
}

/// What a successful login yields before the xzibit is opened.
pub struct LoginProof {
    /// KE3, for LOGINFINISH.
    pub ke3: [u8; 64],
    /// OPAQUE's export key: opens the xzibit.
    pub export_key: Zeroizing<[u8; EXPORT_KEY_LEN]>,
}

impl std::fmt::Debug for LoginProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginProof(..)")
    }
}

impl Login {
    /// Starts: returns the state and KE1 for LOGIN.
    pub fn start(
        password: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Login, [u8; 96]), AccountError> {
        let (state, ke1) = ClientLogin::start(password, rng)?;
        Ok((Login { state }, ke1))
    }

    /// Processes the LOGIN reply; refuses Argon2id parameters below `floor`.
    pub fn finish(
        self,
        password: &[u8],
        challenge: &LoginChallenge,
        address: &Address,
        floor: &KsfParams,
        channel_binding: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<LoginProof, AccountError> {
        challenge
            .ksf
            .validate(floor)
            .map_err(AccountError::WeakKsf)?;
        let done = self
            .state
            .finish(
                password,
                &challenge.ke2,
                &address.to_string(),
                address.domain.as_str(),
                &challenge.ksf,
                channel_binding,
                rng,
            )
            .map_err(|e| match e {
                CryptoError::WrongPassword => AccountError::WrongPassword,
                other => AccountError::Crypto(other),
            })?;
        Ok(LoginProof {
            ke3: done.ke3,
            export_key: done.export_key,
        })
    }
}

/// Checks the server's signature on a released xzibit, opens it with the
/// export key, and checks the key inside against the account's key (from
/// its key statement) when given.
pub fn open_release(
    release: &XzibitRelease,
    server_key: &PublicKey,
    address: &Address,
    export_key: &[u8; EXPORT_KEY_LEN],
    expected: Option<&PublicKey>,
) -> Result<(IdentityKey, u64), AccountError> {
    let xzibit = release
        .verify(server_key, address)
        .map_err(AccountError::BadRelease)?;
    let (identity, created) = xzibit.open(export_key, &address.to_string())?;
    if expected.is_some_and(|k| *k != identity.public()) {
        return Err(AccountError::KeyMismatch);
    }
    Ok((identity, created))
}

/// The data a device signs to log in with its identity key (KEYLOGIN):
/// the connection's channel binding and the address.
fn key_login_data(channel_binding: &[u8; 32], address: &Address) -> Vec<u8> {
    let mut out = channel_binding.to_vec();
    crate::payload::put_address(&mut out, address);
    out
}

/// The KEYLOGIN signature of `identity` for this connection (its channel
/// binding, PROTOCOL.md §12.4).
pub fn key_login_signature(
    identity: &IdentityKey,
    channel_binding: &[u8; 32],
    address: &Address,
) -> [u8; 64] {
    identity.sign(
        crate::crypto::SignatureTag::KeyLogin,
        &[&key_login_data(channel_binding, address)],
    )
}

/// Checks a KEYLOGIN signature against the account's identity key.
pub fn verify_key_login(
    key: &PublicKey,
    channel_binding: &[u8; 32],
    address: &Address,
    signature: &[u8],
) -> Result<(), CryptoError> {
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| CryptoError::BadSignature)?;
    key.verify(
        crate::crypto::SignatureTag::KeyLogin,
        &[&key_login_data(channel_binding, address)],
        &sig,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::opaque::{ServerLogin, ServerSetup, server_registration_response};
    use rand::SeedableRng;

    /// The channel binding of the connection in these tests.
    const CB: [u8; 32] = [0xcb; 32];

    #[test]
    fn register_then_login_recovers_the_identity_key() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let setup = ServerSetup::generate(&mut rng);
        let server = IdentityKey::generate(&mut rng);
        let alice = Address::parse("alice@a.test").unwrap();
        let identity = IdentityKey::generate(&mut rng);
        let ksf = KsfParams::INSECURE_TEST;

        let (reg, request) = Registration::start(b"pw", &mut rng).unwrap();
        let response = server_registration_response(&setup, &request, "alice@a.test").unwrap();
        let offer = RegistrationOffer {
            response: response.to_vec(),
            floor: ksf,
        };
        let bundle = reg
            .finish(b"pw", &offer, &alice, &identity, ksf, 100, &CB, &mut rng)
            .unwrap();
        bundle.verify(&alice, &CB).unwrap();
        // The proof is bound to the connection it was made for.
        assert!(bundle.verify(&alice, &[0xcc; 32]).is_err());

        let (login, ke1) = Login::start(b"pw", &mut rng).unwrap();
        let (server_login, ke2) = ServerLogin::start(
            &setup,
            Some(&bundle.record),
            &ke1,
            "alice@a.test",
            "a.test",
            &CB,
            &mut rng,
        )
        .unwrap();
        let challenge = LoginChallenge {
            ksf,
            ke2: ke2.to_vec(),
        };
        let proof = login
            .finish(b"pw", &challenge, &alice, &ksf, &CB, &mut rng)
            .unwrap();
        server_login.finish(&proof.ke3).unwrap();
        let release = XzibitRelease::issue(&server, &alice, bundle.xzibit.clone());
        let (got, created) = open_release(
            &release,
            &server.public(),
            &alice,
            &proof.export_key,
            Some(&identity.public()),
        )
        .unwrap();
        assert_eq!(got.public(), identity.public());
        assert_eq!(created, 100);

        let (login, ke1) = Login::start(b"wrong", &mut rng).unwrap();
        let (_, ke2) = ServerLogin::start(
            &setup,
            Some(&bundle.record),
            &ke1,
            "alice@a.test",
            "a.test",
            &CB,
            &mut rng,
        )
        .unwrap();
        let challenge = LoginChallenge {
            ksf,
            ke2: ke2.to_vec(),
        };
        assert_eq!(
            login
                .finish(b"wrong", &challenge, &alice, &ksf, &CB, &mut rng)
                .unwrap_err(),
            AccountError::WrongPassword
        );

        // The right password on another connection (a login relayed by a
        // machine in the middle): the client refuses the server's KE2, and
        // a KE3 made there does not verify here.
        let (login, ke1) = Login::start(b"pw", &mut rng).unwrap();
        let (server_login, ke2) = ServerLogin::start(
            &setup,
            Some(&bundle.record),
            &ke1,
            "alice@a.test",
            "a.test",
            &[0xcc; 32],
            &mut rng,
        )
        .unwrap();
        let challenge = LoginChallenge {
            ksf,
            ke2: ke2.to_vec(),
        };
        assert_eq!(
            login
                .finish(b"pw", &challenge, &alice, &ksf, &CB, &mut rng)
                .unwrap_err(),
            AccountError::WrongPassword
        );
        assert!(server_login.finish(&[0; 64]).is_err());
    }

    #[test]
    fn a_key_login_is_bound_to_the_connection_and_the_address() {
        let id = IdentityKey::from_seed(&[4; 32]);
        let alice = Address::parse("alice@a.test").unwrap();
        let sig = key_login_signature(&id, &[1; 32], &alice);
        verify_key_login(&id.public(), &[1; 32], &alice, &sig).unwrap();
        assert!(verify_key_login(&id.public(), &[2; 32], &alice, &sig).is_err());
        assert!(
            verify_key_login(
                &id.public(),
                &[1; 32],
                &Address::parse("bob@a.test").unwrap(),
                &sig
            )
            .is_err()
        );
        assert!(verify_key_login(&id.public(), &[1; 32], &alice, &sig[..63]).is_err());
    }

    #[test]
    fn weak_parameters_are_refused_on_both_sides() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let setup = ServerSetup::generate(&mut rng);
        let (reg, request) = Registration::start(b"pw", &mut rng).unwrap();
        let response = server_registration_response(&setup, &request, "alice@a.test").unwrap();
        let offer = RegistrationOffer {
            response: response.to_vec(),
            floor: KsfParams::RECOMMENDED,
        };
        let e = reg
            .finish(
                b"pw",
                &offer,
                &Address::parse("alice@a.test").unwrap(),
                &IdentityKey::generate(&mut rng),
                KsfParams::INSECURE_TEST,
                0,
                &CB,
                &mut rng,
            )
            .unwrap_err();
        assert!(matches!(e, AccountError::WeakKsf(_)));
    }

    /// A hostile (or impersonated) server asking for 4 GiB and 64 passes
    /// is refused before the client stretches anything: the ceiling is what
    /// a phone can afford (PROTOCOL.md §12.1).
    #[test]
    fn a_login_challenge_above_the_phone_ceiling_is_refused_at_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let setup = ServerSetup::generate(&mut rng);
        let (login, ke1) = Login::start(b"pw", &mut rng).unwrap();
        let (_, ke2) =
            ServerLogin::start(&setup, None, &ke1, "alice@a.test", "a.test", &CB, &mut rng)
                .unwrap();
        let challenge = LoginChallenge {
            ksf: KsfParams {
                m_cost_kib: 4_194_304,
                t_cost: 64,
                p_cost: 4,
            },
            ke2: ke2.to_vec(),
        };
        let t = std::time::Instant::now();
        let Err(e) = login.finish(
            b"pw",
            &challenge,
            &Address::parse("alice@a.test").unwrap(),
            &KsfParams::INSECURE_TEST,
            &CB,
            &mut rng,
        ) else {
            panic!("a challenge above the ceiling was accepted");
        };
        assert!(matches!(e, AccountError::WeakKsf(_)), "{e:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
