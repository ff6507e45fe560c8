//! Registration, OPAQUE login and password change (PROTOCOL.md §12).

use std::time::Instant;

use cmtp_proto::account::verify_key_login;
use cmtp_proto::crypto::opaque::{KsfParams, ServerLogin, server_registration_response};
use cmtp_proto::names::Account;
use cmtp_proto::payload::{LoginChallenge, RegistrationOffer, XzibitRelease};
use cmtp_proto::reply::Status;
use cmtp_store::{Credentials, NewUser, Store, StoreError};
use sha2::{Digest, Sha256};

use cmtp_proto::connection::server::ExchangeKind;

use crate::fair::Turn;
use crate::session::Session;

/// What the server keeps between the two halves of an exchange (the
/// connection keeps which kind is in progress).
pub(crate) enum Exchange {
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

/// Counts a failed login in `cmtp_login_failures_total{reason}`: `password`
/// (LOGINFINISH refused: a wrong password or an unknown account), `key` (a
/// KEYLOGIN signature refused), `ratelimited` (LOGIN or KEYLOGIN refused
/// for too many failures).
fn count_failure(reason: &'static str) {
    metrics::counter!("cmtp_login_failures_total", "reason" => reason).increment(1);
}

impl Session {
    /// The rate-limit keys of a password login: the account together with
    /// the peer (so that nobody can lock another person out: only the
    /// guesser's own network is refused), and the peer alone
    /// (PROTOCOL.md §12.3).
    fn keys(&self, user: &Account) -> [(String, u32); 2] {
        let a = &self.sh.cfg().accounts;
        let peer = self.sh.peer_key(self.peer.ip());
        [
            (
                format!("account:{user} peer:{peer}"),
                a.login_failures_per_account,
            ),
            (format!("peer:{peer}"), a.login_failures_per_address),
        ]
    }

    fn rate_limited(&mut self, wait: std::time::Duration) {
        let secs = wait.as_secs().max(1);
        let text = format!("too many failed logins; try again in {secs} seconds");
        self.conn.reply(Status::RateLimited, text.as_bytes())
    }

    fn forgive(&self, user: &Account) {
        for (k, _) in self.keys(user) {
            self.sh.login_failures.forgive(&k);
        }
    }

    /// Waits for this session's turn in the pool of strangers' logins
    /// (`crate::fair`): a peer whose logins have been failing comes after
    /// every other, so LOGIN spam cannot delay the owner's login.
    async fn login_turn(&self) -> crate::fair::FairPermit {
        let peer = self.sh.peer_key(self.peer.ip());
        let failing = self
            .sh
            .login_failures
            .is_limited(&format!("peer:{peer}"), 1, Instant::now());
        let turn = if failing { Turn::Last } else { Turn::Normal };
        self.sh.stranger_logins.acquire(peer, turn).await
    }

    pub(crate) async fn login(&mut self, user: Account, ke1: Vec<u8>) {
        let _turn = self.login_turn().await;
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
            count_failure("ratelimited");
            return self.rate_limited(wait);
        }
        let record = match self.sh.store.user(user.as_str()).await {
            Ok(u) => u,
            Err(e) => {
                self.forgive(&user);
                return self.temp_failure(&e);
            }
        };
        // An unknown account is answered with parameters drawn from those
        // the accounts use, the same every time for the same name.
        let ksf = record
            .as_ref()
            .and_then(|u| KsfParams::decode(&u.credentials.ksf).ok())
            .unwrap_or_else(|| self.sh.decoys.for_unknown(&user));
        let address = self.address(&user).to_string();
        let Some(&binding) = self.conn.channel_binding() else {
            return self.conn.reply(Status::Failure, b"no TLS channel");
        };
        let started = ServerLogin::start(
            &self.sh.opaque,
            record
                .as_ref()
                .map(|u| u.credentials.opaque_record.as_slice()),
            &ke1,
            &address,
            self.sh.domain.as_str(),
            &binding,
            &mut rand_core::OsRng,
        );
        let (login, ke2) = match started {
            Ok(x) => x,
            Err(e) => {
                self.forgive(&user);
                return self
                    .conn
                    .reply(Status::BadArgument, format!("KE1: {e}").as_bytes());
            }
        };
        self.conn.begin_exchange(
            ExchangeKind::Login,
            Exchange::Login {
                user,
                login: Box::new(login),
                xzibit: record.map(|u| u.credentials.xzibit),
            },
        );
        let body = LoginChallenge {
            ksf,
            ke2: ke2.to_vec(),
        }
        .to_bytes();
        self.conn.reply(Status::Success, &body)
    }

    pub(crate) async fn login_finish(&mut self, ke3: Vec<u8>, exchange: Exchange) {
        let Exchange::Login {
            user,
            login,
            xzibit,
        } = exchange
        else {
            // The connection hands LOGINFINISH only the state of a LOGIN.
            return self.conn.reply(Status::Failure, b"no LOGIN in progress");
        };
        match (login.finish(&ke3), xzibit) {
            (Ok(_session_key), Some(xzibit)) => {
                let release = XzibitRelease::issue(&self.sh.key, &self.address(&user), xzibit);
                tracing::info!(peer = %self.peer, account = %user, "logged in");
                metrics::counter!("cmtp_logins_total").increment(1);
                self.forgive(&user);
                self.conn.logged_in_as(user);
                self.conn.reply(Status::Success, &release.to_bytes())
            }
            _ => {
                // Counted against the limits when the LOGIN started.
                tracing::info!(peer = %self.peer, account = %user, "login failed");
                count_failure("password");
                self.conn.reply(Status::AuthFailed, AUTH_FAILED)
            }
        }
    }

    pub(crate) async fn key_login(&mut self, user: Account, signature: Vec<u8>) {
        let _turn = self.login_turn().await;
        // A signature by the identity key cannot be guessed, so KEYLOGIN is
        // limited per peer address only: failed password logins against the
        // account (which anyone can cause) never lock its devices out.
        let address_key = format!("peer:{}", self.sh.peer_key(self.peer.ip()));
        let limit = self.sh.cfg().accounts.login_failures_per_address;
        if let Some(wait) = self
            .sh
            .login_failures
            .retry_after(&address_key, limit, Instant::now())
        {
            count_failure("ratelimited");
            return self.rate_limited(wait);
        }
        let record = match self.sh.store.user(user.as_str()).await {
            Ok(u) => u,
            Err(e) => return self.temp_failure(&e),
        };
        let address = self.address(&user);
        let ok = record.is_some_and(|u| {
            cmtp_proto::crypto::PublicKey::from_bytes(&u.identity_pk)
                .and_then(|k| {
                    let binding = self
                        .conn
                        .channel_binding()
                        .ok_or(cmtp_proto::crypto::CryptoError::BadSignature)?;
                    verify_key_login(&k, binding, &address, &signature)
                })
                .is_ok()
        });
        if ok {
            tracing::info!(peer = %self.peer, account = %user, "logged in with identity key");
            metrics::counter!("cmtp_logins_total").increment(1);
            self.conn.logged_in_as(user);
            self.conn.reply(Status::Success, b"")
        } else {
            tracing::info!(peer = %self.peer, account = %user, "key login failed");
            count_failure("key");
            self.sh.login_failures.record(&address_key, Instant::now());
            self.conn.reply(Status::AuthFailed, AUTH_FAILED)
        }
    }

    pub(crate) async fn register(
        &mut self,
        user: Account,
        invite: String,
        request: Vec<u8>,
        now: u64,
    ) {
        let invite = if invite.is_empty() {
            if !self.sh.cfg().accounts.open_registration {
                return self.conn.reply(
                    Status::Failure,
                    b"registration needs an invite token from the administrator",
                );
            }
            None
        } else {
            let h = invite_hash(&invite);
            match self.sh.store.invite_valid(user.as_str(), h, now).await {
                Ok(true) => Some(h),
                Ok(false) => {
                    return self.conn.reply(
                        Status::Failure,
                        b"the invite token is invalid, expired, used, or for another account",
                    );
                }
                Err(e) => return self.temp_failure(&e),
            }
        };
        match self.sh.store.user(user.as_str()).await {
            Ok(Some(_)) => {
                let text = format!("the account {user} already exists");
                return self.conn.reply(Status::Failure, text.as_bytes());
            }
            Ok(None) => {}
            Err(e) => return self.temp_failure(&e),
        }
        let exchange = Exchange::Register {
            user: user.clone(),
            invite,
        };
        self.offer(exchange, &user, &request);
    }

    pub(crate) async fn password(&mut self, request: Vec<u8>) {
        // The connection lets PASSWORD through only when logged in.
        let Some(user) = self.conn.logged_in().cloned() else {
            return self
                .conn
                .reply(Status::AuthRequired, b"PASSWORD needs a logged-in session");
        };
        self.offer(Exchange::Password { user: user.clone() }, &user, &request);
    }

    pub(crate) fn offer(&mut self, exchange: Exchange, user: &Account, request: &[u8]) {
        let address = self.address(user).to_string();
        match server_registration_response(&self.sh.opaque, request, &address) {
            Ok(response) => {
                self.conn
                    .begin_exchange(ExchangeKind::Registration, exchange);
                let body = RegistrationOffer {
                    response: response.to_vec(),
                    floor: self.sh.ksf_floor(),
                }
                .to_bytes();
                self.conn.reply(Status::Success, &body)
            }
            Err(e) => self.conn.reply(
                Status::BadArgument,
                format!("registration request: {e}").as_bytes(),
            ),
        }
    }

    pub(crate) async fn reg_finish(&mut self, bundle: Vec<u8>, exchange: Exchange, now: u64) {
        let (user, invite, change) = match exchange {
            Exchange::Register { user, invite } => (user, invite, false),
            Exchange::Password { user } => (user, None, true),
            Exchange::Reset { user, token } => {
                return self.reset_finish(user, token, bundle, now).await;
            }
            Exchange::Login { .. } => {
                // The connection hands REGFINISH only a registration's state.
                return self
                    .conn
                    .reply(Status::Failure, b"no REGISTER or PASSWORD in progress");
            }
        };
        let b = match self.check_bundle(&user, &bundle) {
            Ok(b) => b,
            Err(why) => return self.conn.reply(Status::BadArgument, why.as_bytes()),
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
                    return self.conn.reply(
                        Status::BadArgument,
                        b"a password change must keep the identity key",
                    );
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
                return self.conn.reply(Status::Failure, text.as_bytes());
            }
            Err(StoreError::InviteInvalid) => {
                return self
                    .conn
                    .reply(Status::Failure, b"the invite token is no longer valid");
            }
            Err(e) if e.is_transient() => return self.temp_failure(&e),
            Err(e) => {
                let text = crate::session::internal_error(self.peer, &e);
                return self.conn.reply(Status::Failure, text.as_bytes());
            }
        }
        tracing::info!(peer = %self.peer, account = %user, change, "credentials stored");
        // Unknown accounts are answered like the accounts now stored.
        if let Err(e) = self.sh.decoys.refresh(&self.sh.store).await {
            tracing::warn!(error = %e, "cannot read the parameters accounts use");
        }
        match self.sh.local_statement(&user, now).await {
            Ok(Some(statement)) => self.conn.reply(Status::Success, &statement),
            Ok(None) => self.conn.reply(Status::Failure, b"the account vanished"),
            Err(e) => self.temp_failure(&e),
        }
    }
}
