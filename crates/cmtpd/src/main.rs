//! cmtpd

fn main() {}
