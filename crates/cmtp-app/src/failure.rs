//! The errors of the application ([`crate::session`], [`crate::send`],
//! [`crate::sync`], [`crate::home`], [`crate::trust`], [`crate::store`]), each one something
//! a person can act on, sorted by [`ErrorKind`] so that a command-line front
//! end can map them to exit codes.

use std::path::PathBuf;

use cmtp_proto::reply::Status;
use thiserror::Error;

use cmtp_client::ClientError;
use cmtp_client::discovery::DiscoveryError;

/// The broad class of an [`Error`](enum@Error): what the person should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not set up yet, or asked for something that cannot be done as asked.
    Usage,
    /// Authentication failed: wrong password or unknown user, a device key
    /// the server no longer accepts, too many failed attempts.
    Auth,
    /// The server could not be reached or failed temporarily: try again.
    Unavailable,
    /// A key changed, or a signature, statement or decryption did not verify.
    Verification,
    /// No such message or user.
    NotFound,
    /// The message is larger than the server accepts.
    TooBig,
    /// Anything else.
    Other,
}

/// What went wrong in a high-level client operation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing is configured in the home directory yet.
    #[error("{0}")]
    NotConfigured(String),
    /// The password is wrong or the account does not exist (the server makes
    /// the two indistinguishable on purpose).
    #[error("wrong password or unknown user ({address})")]
    WrongPassword {
        /// The address that tried to log in.
        address: String,
    },
    /// The server no longer accepts this device's identity key.
    #[error(
        "the server did not accept this device's key for {address}; log in again with `cmtp login {address}`"
    )]
    DeviceKeyRefused {
        /// The address.
        address: String,
    },
    /// Too many failed attempts for the account or from this address.
    #[error(
        "too many failed attempts, wait {wait_minutes} minutes and try again (the server said: {text})"
    )]
    RateLimited {
        /// How long to wait, as far as the client can tell.
        wait_minutes: u64,
        /// The server's explanation.
        text: String,
    },
    /// DNS could not find the server.
    #[error("cannot find the CMTP server of {domain}: {error}")]
    Discovery {
        /// The domain looked up.
        domain: String,
        /// Why.
        error: DiscoveryError,
    },
    /// Talking to the server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A domain's server key changed without a rotation statement signed by
    /// the pinned key.
    #[error(
        "the key of {domain} changed without a rotation statement (pinned {pinned}, now {got}); refusing it. If the administrator of {domain} confirms the new key, remove the line for {domain} from {known_domains}"
    )]
    KeyChanged {
        /// The domain.
        domain: String,
        /// Fingerprint pinned.
        pinned: String,
        /// Fingerprint presented.
        got: String,
        /// The file holding the pins.
        known_domains: PathBuf,
    },
    /// A key, statement, receipt, signature or sealed part did not verify.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The message could not be decrypted (tampered, or not sealed to this key).
    #[error("cannot decrypt message {id}: {detail}")]
    Undecryptable {
        /// The mailbox id.
        id: u64,
        /// What failed.
        detail: String,
    },
    /// No such message or user.
    #[error("{0}")]
    NotFound(String),
    /// The server refused the request for good.
    #[error("the server refused: {0}")]
    Refused(String),
    /// The server asked for something this client will not do.
    #[error("{0}")]
    Policy(String),
    /// A local file could not be read or written.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A configuration or home-directory file is malformed.
    #[error("{}: {detail}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Invalid input from the caller.
    #[error("{0}")]
    Invalid(String),
    /// A message is larger than the own server accepts (its greeting says
    /// how large a message may be); nothing of it was sent.
    #[error("{}", too_big_text(*size, *max, detail))]
    TooBig {
        /// Its size in bytes as it would be sent (0: unknown).
        size: u64,
        /// The server's limit.
        max: u64,
        /// More from the server, if it refused.
        detail: String,
    },
}

fn too_big_text(size: u64, max: u64, detail: &str) -> String {
    let mut t = if size > 0 {
        format!("the message is too big: {size} bytes, and the server accepts at most {max} bytes")
    } else {
        format!("the message is too big: the server accepts at most {max} bytes")
    };
    if !detail.is_empty() {
        t.push_str(&format!(" ({detail})"));
    }
    t
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotConfigured(_) | Error::Invalid(_) => ErrorKind::Usage,
            Error::WrongPassword { .. }
            | Error::DeviceKeyRefused { .. }
            | Error::RateLimited { .. } => ErrorKind::Auth,
            Error::Discovery { error, .. } => {
                if error.is_transient() {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::NotFound
                }
            }
            Error::Client(e) => client_kind(e),
            Error::KeyChanged { .. } | Error::Verification(_) | Error::Undecryptable { .. } => {
                ErrorKind::Verification
            }
            Error::Policy(_) => ErrorKind::Verification,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::TooBig { .. } => ErrorKind::TooBig,
            Error::Refused(_) | Error::File { .. } | Error::BadFile { .. } => ErrorKind::Other,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// An I/O error on `path`.
    pub fn file(path: impl Into<PathBuf>, error: std::io::Error) -> Error {
        Error::File {
            path: path.into(),
            error,
        }
    }

    /// The error for a reply that is neither SUCCESS nor expected, with the
    /// statuses a person can act on sorted out.
    pub fn from_reply(reply: &cmtp_proto::reply::Reply, what: &str) -> Error {
        match reply.status {
            Status::RateLimited => Error::RateLimited {
                wait_minutes: wait_minutes(&reply.text()),
                text: reply.text(),
            },
            Status::KeyNotAvailable => Error::NotFound(format!("{what}: {}", reply.text())),
            Status::KeyUnverified => Error::Verification(format!("{what}: {}", reply.text())),
            _ => {
                let e = ClientError::from_reply(reply);
                if e.is_transient() {
                    Error::Client(e)
                } else {
                    Error::Refused(format!("{what}: {e}"))
                }
            }
        }
    }
}

fn client_kind(e: &ClientError) -> ErrorKind {
    match e {
        ClientError::BadSignature(_) | ClientError::KeyMismatch { .. } => ErrorKind::Verification,
        ClientError::Refused { status, .. } => match status {
            Status::AuthFailed | Status::AuthRequired | Status::RateLimited => ErrorKind::Auth,
            Status::KeyNotAvailable => ErrorKind::NotFound,
            Status::KeyUnverified => ErrorKind::Verification,
            s if s.is_transient() => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        },
        ClientError::SmtpServer { .. } | ClientError::NotCmtp { .. } => ErrorKind::Unavailable,
        e if e.is_transient() => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// The login rate-limit window of cmtpd's default configuration, minutes.
pub const DEFAULT_RATE_LIMIT_MINUTES: u64 = 15;

/// How many minutes a RATELIMITED text asks to wait: the first number
/// followed by "minute"/"second" in it, else cmtpd's default window.
pub fn wait_minutes(text: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    for pair in words.windows(2) {
        if let Ok(n) = pair[0].parse::<u64>() {
            let unit = pair[1].to_ascii_lowercase();
            if unit.starts_with("min") {
                return n.max(1);
            }
            if unit.starts_with("sec") || unit == "s" {
                return n.div_ceil(60).max(1);
            }
        }
    }
    DEFAULT_RATE_LIMIT_MINUTES
}

/// Shorthand for results of this crate's high-level operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_read_from_the_text_or_defaults() {
        assert_eq!(
            wait_minutes("too many failed logins; wait and try again"),
            15
        );
        assert_eq!(wait_minutes("retry in 5 minutes"), 5);
        assert_eq!(wait_minutes("retry in 90 seconds"), 2);
    }

    #[test]
    fn kinds_map_as_documented() {
        assert_eq!(
            Error::WrongPassword {
                address: "a@b.c".into()
            }
            .kind(),
            ErrorKind::Auth
        );
        assert_eq!(
            Error::Client(ClientError::SmtpServer { line: "220".into() }).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            Error::Client(ClientError::Unreachable {
                addr: "x".into(),
                error: "refused".into()
            })
            .kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(Error::NotFound("x".into()).kind(), ErrorKind::NotFound);
    }
}
