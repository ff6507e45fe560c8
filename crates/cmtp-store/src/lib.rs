//! cmtp-store
