//! Crypto system 1 primitives (PROTOCOL.md §Crypto).
