//! cmtp-testkit
