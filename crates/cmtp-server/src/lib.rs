//! cmtp-server
