//! Every limit of the protocol (PROTOCOL.md §15 "Limits").
//!
//! Constants are fixed by the protocol; [`MessageLimits`] holds the limits a
//! server may configure, with their defaults.

/// Longest command word in bytes (NUL excluded).
pub const MAX_WORD: usize = 16;
/// Longest string argument or string field in bytes (NUL excluded).
pub const MAX_FIELD: usize = 255;
/// Longest account name in bytes.
pub const MAX_ACCOUNT: usize = 64;
/// Longest domain name in bytes (trailing dot removed).
pub const MAX_DOMAIN: usize = 253;
/// Longest domain label in bytes.
pub const MAX_LABEL: usize = 63;
/// Longest invite token in bytes.
pub const MAX_INVITE: usize = 128;
/// Longest binary payload (blob) a command may carry.
pub const MAX_COMMAND_BLOB: usize = 8192;
/// Longest status word of a reply in bytes (NUL excluded).
pub const MAX_STATUS: usize = 16;
/// Longest banner line, CR LF included.
pub const MAX_BANNER: usize = 512;
/// Longest xzibit (encoded) in bytes.
pub const MAX_XZIBIT: usize = 4096 + 32;
/// Size of the domain-signature trailer of a message.
pub const TRAILER_LEN: usize = 64;
/// Size of the fixed message header (version, attachment count, log length, body length).
pub const MESSAGE_HEADER_LEN: usize = 24;
/// Size of the file-name field at the start of an attachment's plaintext.
pub const ATTACHMENT_NAME_LEN: usize = 255;
/// Most carbon-copy addresses in a body's internal header (and, in content
/// version 2, most To and most Bcc recipients, each list on its own).
pub const MAX_CC: usize = 100;
/// Most message ids in the References list of content version 2.
pub const MAX_REFERENCES: usize = 64;
/// Most entries in a mailbox listing reply.
pub const MAX_LISTING: usize = 100_000;
/// Default TCP port.
pub const DEFAULT_PORT: u16 = 9001;

/// Limits on messages that a server configures; clients learn them from OHAI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest message in bytes: header, names, body, attachments with their
    /// length fields, trailer — everything but the log, which has `max_log`.
    pub max_message_size: u64,
    /// Most attachments in one message.
    pub max_attachments: u32,
    /// Longest log in bytes.
    pub max_log: u64,
    /// Most log lines (hops) a message may carry when it arrives.
    pub max_hops: u32,
}

impl MessageLimits {
    /// Default maximum message size: 64 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 * 1024 * 1024;
    /// Default maximum attachment count.
    pub const DEFAULT_MAX_ATTACHMENTS: u32 = 64;
    /// Default maximum log length: 64 KiB.
    pub const DEFAULT_MAX_LOG: u64 = 64 * 1024;
    /// Default hop limit.
    pub const DEFAULT_MAX_HOPS: u32 = 30;
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits {
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            max_attachments: Self::DEFAULT_MAX_ATTACHMENTS,
            max_log: Self::DEFAULT_MAX_LOG,
            max_hops: Self::DEFAULT_MAX_HOPS,
        }
    }
}
