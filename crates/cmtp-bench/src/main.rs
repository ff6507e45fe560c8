//! cmtp-bench

fn main() {}
