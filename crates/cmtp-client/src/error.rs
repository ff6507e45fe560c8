//! Errors of the client library, each one something a person can act on.

pub use cmtp_proto::connection::client::PeerMisbehaved;
use cmtp_proto::payload::DeliveryFailure;
use cmtp_proto::reply::{Reply, Status};
use thiserror::Error;

/// What went wrong talking to a CMTP server.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot reach {addr}: {error}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        error: String,
    },
    /// The peer is an SMTP server.
    #[error("this is an SMTP server, not CMTP (it said: {line})")]
    SmtpServer {
        /// Its greeting.
        line: String,
    },
    /// The peer is not a CMTP server.
    #[error("this is not a CMTP server (it said: {line})")]
    NotCmtp {
        /// What it sent.
        line: String,
    },
    /// The server refused the connection for now.
    #[error("the server for {domain} is busy: {text}")]
    Busy {
        /// Its domain.
        domain: String,
        /// Its explanation.
        text: String,
    },
    /// No answer in time.
    #[error("timed out {0}")]
    Timeout(String),
    /// The server closed the connection.
    #[error("the server closed the connection {0}")]
    Closed(String),
    /// A socket error.
    #[error("network error: {0}")]
    Io(String),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(PeerMisbehaved),
    /// A reply's signature did not verify.
    #[error("the {0} is not signed by the server's key: the connection may be tampered with")]
    BadSignature(String),
    /// The server's key is not the pinned one.
    #[error(
        "the server key of {domain} changed (pinned {expected}, now {got}) without a rotation statement signed by the old key; refusing"
    )]
    KeyMismatch {
        /// The domain.
        domain: String,
        /// Fingerprint pinned.
        expected: String,
        /// Fingerprint seen.
        got: String,
    },
    /// The server answered with a failure.
    #[error("{status}: {text}")]
    Refused {
        /// The status word.
        status: Status,
        /// Its explanation.
        text: String,
    },
}

impl ClientError {
    /// The error for a reply that is not SUCCESS.
    pub fn from_reply(reply: &Reply) -> ClientError {
        let text = if reply.status == Status::DeliveryFailure {
            DeliveryFailure::decode(&reply.body)
                .map(|f| format!("{}: {}", f.word, f.text))
                .unwrap_or_else(|_| reply.text())
        } else {
            reply.text()
        };
        ClientError::Refused {
            status: reply.status.clone(),
            text,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Busy { .. }
            | ClientError::Timeout(_)
            | ClientError::Closed(_)
            | ClientError::Io(_) => true,
            ClientError::Refused { status, .. } => status.is_transient(),
            _ => false,
        }
    }

    /// Whether trying again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
}
