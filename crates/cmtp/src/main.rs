//! cmtp

fn main() {}
