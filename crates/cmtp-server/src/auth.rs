//! Registration, OPAQUE login and password change (PROTOCOL.md §12).

use std::time::Instant;

use cmtp_proto::account::verify_key_login;
use cmtp_proto::crypto::opaque::{
    KsfParams, ServerLogin, server_registration_response, validate_record,
};
use cmtp_proto::crypto::xzibit::Xzibit;
use cmtp_proto::names::Account;
use cmtp_proto::payload::{LoginChallenge, RegistrationBundle, RegistrationOffer, XzibitRelease};
use cmtp_proto::reply::Status;
use cmtp_store::{Credentials, NewUser, Store, StoreError};
use sha2::{Digest, Sha256};

use crate::session::{Session, Stop};

/// An exchange in progress on a connection.
#[derive(Default)]
pub(crate) enum Pending {
    /// Nothing.
    #[default]
    None,
    /// LOGIN answered, waiting for LOGINFINISH.
    Login {
        user: Account,
        login: Box<ServerLogin>,
        /// The account's xzibit; `None` for an unknown account.
        xzibit: Option<Vec<u8>>,
    },
    /// REGISTER answered, waiting for REGFINISH.
    Register {
        user: Account,
        invite: Option<[u8; 32]>,
    },
    /// PASSWORD answered, waiting for REGFINISH.
    Password { user: Account },
    /// RESET answered, waiting for REGFINISH (see `crate::reset`).
    Reset { user: Account, token: [u8; 32] },
}

/// The SHA-256 under which an invite token is stored.
pub(crate) fn invite_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

const AUTH_FAILED: &[u8] = b"wrong password or unknown user";

impl Session {
    fn keys(&self, user: &Account) -> [(String, u32); 2] {
        let a = &self.sh.cfg().accounts;
        [
            (format!("account:{user}"), a.login_failures_per_account),
            (
                crate::limiter::address_key(self.peer.ip()),
                a.login_failures_per_address,
            ),
        ]
    }

    async fn rate_limited(
        &mut self,
        wait: std::time::Duration,
        digest: [u8; 32],
    ) -> Result<(), Stop> {
        let secs = wait.as_secs().max(1);
        let text = format!("too many failed logins; try again in {secs} seconds");
        self.reply(Status::RateLimited, text.as_bytes(), digest)
            .await
    }

    fn forgive(&self, user: &Account) {
        for (k, _) in self.keys(user) {
            self.sh.login_failures.forgive(&k);
        }
    }

    pub(crate) async fn login(
        &mut self,
        user: Account,
        ke1: Vec<u8>,
        digest: [u8; 32],
    ) -> Result<(), Stop> {
        self.logged_in = None;
        self.pending = Pending::None;
        // The attempt counts as a failure from now until LOGINFINISH proves
        // the password: a client learns from KE2 whether its guess was right,
        // so one that never finishes must not guess for free. Checked and
        // counted under one lock, before anything is awaited.
        if let Err(wait) = self
            .sh
            .login_failures
            .try_begin(&self.keys(&user), Instant::now())
        {
            tracing::info!(peer = %self.peer, account = %user, "login rate-limited");
            metrics::counter!("cmtp_login_failures_total").increment(1);
            return self.rate_limited(wait, digest).await;
        }
        let record = match self.sh.store.user(user.as_str()).await {
            Ok(u) => u,
            Err(e) => {
                self.forgive(&user);
                return self.temp_failure(&e.to_string(), digest).await;
            }
        };
        let ksf = record
            .as_ref()
            .and_then(|u| KsfParams::decode(&u.credentials.ksf).ok())
            .unwrap_or_else(|| self.sh.ksf_floor());
        let address = self.address(&user).to_string();
        let started = ServerLogin::start(
            &self.sh.opaque,
            record
                .as_ref()
                .map(|u| u.credentials.opaque_record.as_slice()),
            &ke1,
            &address,
            self.sh.domain.as_str(),
            &mut rand_core::OsRng,
        );
        let (login, ke2) = match started {
            Ok(x) => x,
            Err(e) => {
                self.forgive(&user);
                return self
                    .reply(Status::BadArgument, format!("KE1: {e}").as_bytes(), digest)
                    .await;
            }
        };
        self.pending = Pending::Login {
            user,
            login: Box::new(login),
            xzibit: record.map(|u| u.credentials.xzibit),
        };
        let body = LoginChallenge {
            ksf,
            ke2: ke2.to_vec(),
        }
        .to_bytes();
        self.reply(Status::Success, &body, digest).await
    }

    pub(crate) async fn login_finish(
        &mut self,
        ke3: Vec<u8>,
        digest: [u8; 32],
    ) -> Result<(), Stop> {
        let Pending::Login {
            user,
            login,
            xzibit,
        } = std::mem::take(&mut self.pending)
        else {
            return self
                .reply(
                    Status::Failure,
                    b"no LOGIN in progress on this connection",
                    digest,
                )
                .await;
        };
        match (login.finish(&ke3), xzibit) {
            (Ok(_session_key), Some(xzibit)) => {
                let release = XzibitRelease::issue(&self.sh.key, &self.address(&user), xzibit);
                tracing::info!(peer = %self.peer, account = %user, "logged in");
                metrics::counter!("cmtp_logins_total").increment(1);
                self.forgive(&user);
                self.logged_in = Some(user);
                self.reply(Status::Success, &release.to_bytes(), digest)
                    .await
            }
            _ => {
                // Already counted when the LOGIN started.
                tracing::info!(peer = %self.peer, account = %user, "login failed");
                self.reply(Status::AuthFailed, AUTH_FAILED, digest).await
            }
        }
    }

    pub(crate) async fn key_login(
        &mut self,
        user: Account,
        signature: Vec<u8>,
        digest: [u8; 32],
    ) -> Result<(), Stop> {
        self.logged_in = None;
        self.pending = Pending::None;
        // A signature by the identity key cannot be guessed, so KEYLOGIN is
        // limited per peer address only: failed password logins against the
        // account (which anyone can cause) never lock its devices out.
        let address_key = crate::limiter::address_key(self.peer.ip());
        let limit = self.sh.cfg().accounts.login_failures_per_address;
        if let Some(wait) = self
            .sh
            .login_failures
            .retry_after(&address_key, limit, Instant::now())
        {
            return self.rate_limited(wait, digest).await;
        }
        let record = match self.sh.store.user(user.as_str()).await {
            Ok(u) => u,
            Err(e) => return self.temp_failure(&e.to_string(), digest).await,
        };
        let address = self.address(&user);
        let ok = record.is_some_and(|u| {
            cmtp_proto::crypto::PublicKey::from_bytes(&u.identity_pk)
                .and_then(|k| verify_key_login(&k, &self.nonce, &address, &signature))
                .is_ok()
        });
        if ok {
            tracing::info!(peer = %self.peer, account = %user, "logged in with identity key");
            metrics::counter!("cmtp_logins_total").increment(1);
            self.logged_in = Some(user);
            self.reply(Status::Success, b"", digest).await
        } else {
            tracing::info!(peer = %self.peer, account = %user, "key login failed");
            metrics::counter!("cmtp_login_failures_total").increment(1);
            self.sh.login_failures.record(&address_key, Instant::now());
            self.reply(Status::AuthFailed, AUTH_FAILED, digest).await
        }
    }

    pub(crate) async fn register(
        &mut self,
        user: Account,
        invite: String,
        request: Vec<u8>,
        digest: [u8; 32],
        now: u64,
    ) -> Result<(), Stop> {
        self.pending = Pending::None;
        let invite = if invite.is_empty() {
            if !self.sh.cfg().accounts.open_registration {
                return self
                    .reply(
                        Status::Failure,
                        b"registration needs an invite token from the administrator",
                        digest,
                    )
                    .await;
            }
            None
        } else {
            let h = invite_hash(&invite);
            match self.sh.store.invite_valid(user.as_str(), h, now).await {
                Ok(true) => Some(h),
                Ok(false) => {
                    return self
                        .reply(
                            Status::Failure,
                            b"the invite token is invalid, expired, used, or for another account",
                            digest,
                        )
                        .await;
                }
                Err(e) => return self.temp_failure(&e.to_string(), digest).await,
            }
        };
        match self.sh.store.user(user.as_str()).await {
            Ok(Some(_)) => {
                let text = format!("the account {user} already exists");
                return self.reply(Status::Failure, text.as_bytes(), digest).await;
            }
            Ok(None) => {}
            Err(e) => return self.temp_failure(&e.to_string(), digest).await,
        }
        self.offer(
            Pending::Register {
                user: user.clone(),
                invite,
            },
            &user,
            &request,
            digest,
        )
        .await
    }

    pub(crate) async fn password(
        &mut self,
        request: Vec<u8>,
        digest: [u8; 32],
    ) -> Result<(), Stop> {
        let Some(user) = self.logged_in.clone() else {
            return self
                .reply(
                    Status::AuthRequired,
                    b"PASSWORD needs a logged-in session",
                    digest,
                )
                .await;
        };
        self.offer(
            Pending::Password { user: user.clone() },
            &user,
            &request,
            digest,
        )
        .await
    }

    pub(crate) async fn offer(
        &mut self,
        pending: Pending,
        user: &Account,
        request: &[u8],
        digest: [u8; 32],
    ) -> Result<(), Stop> {
        let address = self.address(user).to_string();
        match server_registration_response(&self.sh.opaque, request, &address) {
            Ok(response) => {
                self.pending = pending;
                let body = RegistrationOffer {
                    response: response.to_vec(),
                    floor: self.sh.ksf_floor(),
                }
                .to_bytes();
                self.reply(Status::Success, &body, digest).await
            }
            Err(e) => {
                self.reply(
                    Status::BadArgument,
                    format!("registration request: {e}").as_bytes(),
                    digest,
                )
                .await
            }
        }
    }

    pub(crate) async fn reg_finish(
        &mut self,
        bundle: Vec<u8>,
        digest: [u8; 32],
        now: u64,
    ) -> Result<(), Stop> {
        let (user, invite, change) = match std::mem::take(&mut self.pending) {
            Pending::Register { user, invite } => (user, invite, false),
            Pending::Password { user } => (user, None, true),
            Pending::Reset { user, token } => {
                return self.reset_finish(user, token, bundle, digest, now).await;
            }
            other => {
                self.pending = other;
                return self
                    .reply(
                        Status::Failure,
                        b"no REGISTER, PASSWORD or RESET in progress on this connection",
                        digest,
                    )
                    .await;
            }
        };
        let address = self.address(&user);
        let checked = RegistrationBundle::decode(&bundle)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                validate_record(&b.record).map_err(|e| format!("record: {e}"))?;
                b.ksf.validate(&self.sh.ksf_floor()).map_err(|e| {
                    format!("Argon2id parameters weaker than this server accepts: {e}")
                })?;
                b.verify(&address)
                    .map_err(|e| format!("proof of possession: {e}"))?;
                Xzibit::decode(&b.xzibit).map_err(|e| format!("xzibit: {e}"))?;
                Ok(b)
            });
        let b = match checked {
            Ok(b) => b,
            Err(why) => {
                return self
                    .reply(Status::BadArgument, why.as_bytes(), digest)
                    .await;
            }
        };
        let credentials = Credentials {
            opaque_record: b.record.clone(),
            ksf: b.ksf.to_bytes(),
            xzibit: b.xzibit.clone(),
        };
        let stored = if change {
            match self.sh.store.user(user.as_str()).await {
                Ok(Some(u)) if u.identity_pk == b.identity.to_bytes() => self
                    .sh
                    .store
                    .update_credentials(user.as_str(), credentials, now)
                    .await
                    .map(|_| ()),
                Ok(Some(_)) => {
                    return self
                        .reply(
                            Status::BadArgument,
                            b"a password change must keep the identity key",
                            digest,
                        )
                        .await;
                }
                Ok(None) => Err(StoreError::UnknownAccount),
                Err(e) => Err(e),
            }
        } else {
            let new = NewUser {
                account: user.as_str().to_owned(),
                identity_pk: b.identity.to_bytes(),
                credentials,
            };
            self.sh.store.create_user(new, invite, now).await
        };
        match stored {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => {
                let text = format!("the account {user} already exists");
                return self.reply(Status::Failure, text.as_bytes(), digest).await;
            }
            Err(StoreError::InviteInvalid) => {
                return self
                    .reply(
                        Status::Failure,
                        b"the invite token is no longer valid",
                        digest,
                    )
                    .await;
            }
            Err(e) if e.is_transient() => return self.temp_failure(&e.to_string(), digest).await,
            Err(e) => {
                return self
                    .reply(Status::Failure, e.to_string().as_bytes(), digest)
                    .await;
            }
        }
        tracing::info!(peer = %self.peer, account = %user, change, "credentials stored");
        match self.sh.local_statement(&user, now).await {
            Ok(Some(statement)) => self.reply(Status::Success, &statement, digest).await,
            Ok(None) => {
                self.reply(Status::Failure, b"the account vanished", digest)
                    .await
            }
            Err(e) => self.temp_failure(&e.to_string(), digest).await,
        }
    }
}
