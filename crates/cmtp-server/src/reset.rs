//! RESET (PROTOCOL.md §12.6): an account's new password and new identity
//! key, authorised by a one-time token from the administrator (`cmtpd user
//! reset NAME`) instead of the old password.
//!
//! The exchange is REGISTER's: `RESET account token request` is answered
//! with the OPAQUE registration response once the token is found valid;
//! `REGFINISH bundle` carries the new record, the new xzibit and the new
//! identity key with its proof of possession. The token is consumed in the
//! transaction that replaces them ([`cmtp_store::Store::reset_user`]), so
//! it works once. Mail sealed to the old key stays readable only where the
//! old key still is (a device that kept it): the server never had it.

use cmtp_proto::crypto::opaque::validate_record;
use cmtp_proto::crypto::xzibit::Xzibit;
use cmtp_proto::names::Account;
use cmtp_proto::payload::RegistrationBundle;
use cmtp_proto::reply::Status;
use cmtp_store::{Credentials, Store, StoreError};

use crate::auth::{Exchange, invite_hash};
use crate::session::Session;

impl Session {
    /// `RESET user token request`.
    pub(crate) async fn reset(&mut self, user: Account, token: String, request: Vec<u8>, now: u64) {
        if token.is_empty() {
            return self.conn.reply(
                Status::Failure,
                b"RESET needs the token your administrator made with `cmtpd user reset`",
            );
        }
        let h = invite_hash(&token);
        match self.sh.store.reset_valid(user.as_str(), h, now).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(peer = %self.peer, account = %user, "reset refused: invalid token");
                return self.conn.reply(
                    Status::Failure,
                    b"the reset token is invalid, expired, used, or for another account",
                );
            }
            Err(e) => return self.temp_failure(&e),
        }
        let exchange = Exchange::Reset {
            user: user.clone(),
            token: h,
        };
        self.offer(exchange, &user, &request);
    }

    /// `REGFINISH` after `RESET`.
    pub(crate) async fn reset_finish(
        &mut self,
        user: Account,
        token: [u8; 32],
        bundle: Vec<u8>,
        now: u64,
    ) {
        let b = match self.check_bundle(&user, &bundle) {
            Ok(b) => b,
            Err(why) => return self.conn.reply(Status::BadArgument, why.as_bytes()),
        };
        let credentials = Credentials {
            opaque_record: b.record.clone(),
            ksf: b.ksf.to_bytes(),
            xzibit: b.xzibit.clone(),
        };
        let stored = self
            .sh
            .store
            .reset_user(
                user.as_str(),
                token,
                b.identity.to_bytes(),
                credentials,
                now,
            )
            .await;
        match stored {
            Ok(()) => {}
            Err(StoreError::ResetTokenInvalid) => {
                return self
                    .conn
                    .reply(Status::Failure, b"the reset token is no longer valid");
            }
            Err(e) if e.is_transient() => return self.temp_failure(&e),
            Err(e) => {
                let text = crate::session::internal_error(self.peer, &e);
                return self.conn.reply(Status::Failure, text.as_bytes());
            }
        }
        // The old key must not be served from memory any more.
        self.sh.forget_cached_accounts();
        tracing::info!(
            peer = %self.peer,
            account = %user,
            key = %b.identity.fingerprint_hex(),
            "password and identity key replaced with a reset token"
        );
        match self.sh.local_statement(&user, now).await {
            Ok(Some(statement)) => self.conn.reply(Status::Success, &statement),
            Ok(None) => self.conn.reply(Status::Failure, b"the account vanished"),
            Err(e) => self.temp_failure(&e),
        }
    }

    /// Decodes a registration bundle for `user` and checks it as REGFINISH
    /// does for every exchange (PROTOCOL.md §12.2): a valid OPAQUE record,
    /// Argon2id costs at least the server's floor, the proof of possession
    /// of the identity key, a well-formed xzibit.
    pub(crate) fn check_bundle(
        &self,
        user: &Account,
        bundle: &[u8],
    ) -> Result<RegistrationBundle, String> {
        let address = self.address(user);
        let b = RegistrationBundle::decode(bundle).map_err(|e| e.to_string())?;
        validate_record(&b.record).map_err(|e| format!("record: {e}"))?;
        b.ksf
            .validate(&self.sh.ksf_floor())
            .map_err(|e| format!("Argon2id parameters weaker than this server accepts: {e}"))?;
        let binding = self
            .conn
            .channel_binding()
            .ok_or_else(|| "no TLS channel".to_owned())?;
        b.verify(&address, binding)
            .map_err(|e| format!("proof of possession: {e}"))?;
        Xzibit::decode(&b.xzibit).map_err(|e| format!("xzibit: {e}"))?;
        Ok(b)
    }
}
