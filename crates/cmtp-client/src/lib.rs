//! cmtp-client
