//! The error type shared by every backend.

/// Why a storage operation failed.
///
/// Backends map their native errors onto these variants so that the server
/// can decide what to do without knowing which database it talks to: a
/// [transient](StoreError::is_transient) error means "nothing was changed, try
/// again later" (answer the peer with a temporary failure, retry the relay),
/// any other error is a permanent refusal of this particular request.
///
/// Whatever the error, the database is left as it was before the failed
/// request: a request is all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The user (or the invite token) already exists. Permanent.
    #[error("already exists")]
    AlreadyExists,
    /// The invite token is unknown, for another account, expired, or already
    /// used. Permanent.
    #[error("invite invalid, expired or already used")]
    InviteInvalid,
    /// The reset token is unknown, for another account, expired, or already
    /// used. Permanent.
    #[error("reset token invalid, expired or already used")]
    ResetTokenInvalid,
    /// The operation names a local account that does not exist (for example a
    /// delivery racing the deletion of its recipient). Permanent.
    #[error("no such account")]
    UnknownAccount,
    /// The staged blob does not exist: never created, already referenced by a
    /// delivery or a queue entry, or purged after its grace period; or a blob
    /// vanished while it was being read. Permanent.
    #[error("blob not found (unknown, already used or purged)")]
    BlobNotFound,
    /// The request itself is malformed (a size that does not match the body,
    /// a chunk larger than [`MAX_CHUNK`](crate::MAX_CHUNK), a notice for the
    /// wrong account, ...): a bug in the caller. Permanent.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The database refused the change because it violates a constraint.
    /// Permanent.
    #[error("constraint violation: {0}")]
    Constraint(String),
    /// The database is damaged or is not a cmtpd database. Permanent.
    #[error("database corrupt: {0}")]
    Corrupt(String),
    /// The database was written by a newer cmtpd whose schema this version
    /// does not know. Permanent.
    #[error("database schema version {found} is newer than the supported version {supported}")]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// The newest version this build can use.
        supported: u32,
    },
    /// The disk (or the configured database size limit) is full. Nothing was
    /// written; the store keeps working once space returns. Transient.
    #[error("storage full: {0}")]
    Full(String),
    /// The database is locked by someone else for longer than the busy
    /// timeout. Transient.
    #[error("database busy: {0}")]
    Busy(String),
    /// An I/O error (reading or writing the database file). Transient.
    #[error("I/O error: {0}")]
    Io(String),
    /// The store cannot serve the request right now: connection pool
    /// exhausted, database connection lost, store shutting down. Transient.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure: a bug, not something a retry cures.
    /// Permanent.
    #[error("internal storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the same request may succeed later without any change (disk
    /// full, busy, I/O error, pool exhausted). Permanent errors (constraint
    /// or invariant violations, invalid input) return `false`.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Full(_)
                | StoreError::Busy(_)
                | StoreError::Io(_)
                | StoreError::Unavailable(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn transient_classification() {
        for e in [
            StoreError::Full("x".into()),
            StoreError::Busy("x".into()),
            StoreError::Io("x".into()),
            StoreError::Unavailable("x".into()),
        ] {
            assert!(e.is_transient(), "{e}");
        }
        for e in [
            StoreError::AlreadyExists,
            StoreError::InviteInvalid,
            StoreError::ResetTokenInvalid,
            StoreError::UnknownAccount,
            StoreError::BlobNotFound,
            StoreError::InvalidInput("x".into()),
            StoreError::Constraint("x".into()),
            StoreError::Corrupt("x".into()),
            StoreError::SchemaTooNew {
                found: 9,
                supported: 1,
            },
            StoreError::Internal("x".into()),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
