//! `crypto`: the hardware limits of what a server and a client compute, on
//! one core: Ed25519 sign and verify (every reply — a receipt among them —
//! and every trailer is a signature), sealed boxes (what a client does per
//! recipient), SHA-256 (the server hashes every message and every reply
//! body).

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Args;
use cmtp_proto::crypto::{IdentityKey, SignatureTag, sealed};
use rand_core::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::report::Run;

/// Parameters of `crypto`.
#[derive(Args, Debug, Clone)]
pub(crate) struct CryptoArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) secs: f64,
    /// Instead of the rates: compute the per-message floor this many times,
    /// untimed — the SHA-256 of a message of `--floor-bytes` and one Ed25519
    /// signature of a reply — for counting instructions under callgrind
    /// (`bench/mail-callgrind.sh`).
    #[arg(long, value_name = "N")]
    pub(crate) floor: Option<u64>,
    /// The message size (on the wire) of `--floor`.
    #[arg(long, value_name = "BYTES", default_value_t = 4426)]
    pub(crate) floor_bytes: usize,
}

impl CryptoArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        match self.floor {
            Some(n) => json!({ "floor": n, "floor_bytes": self.floor_bytes, "threads": 1 }),
            None => json!({ "secs": self.secs, "threads": 1 }),
        }
    }
}

/// Runs `f` repeatedly for about `secs`; returns operations per second.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    // Warm up, and size the batches so that the clock is read rarely.
    let t = Instant::now();
    let mut batch = 0u64;
    while t.elapsed() < Duration::from_millis(50) {
        f();
        batch += 1;
    }
    let batch = (batch / 10).max(1);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for _ in 0..batch {
            f();
        }
        n += batch;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// `--floor N`: what a server cannot avoid per accepted message, N times.
fn floor(n: u64, bytes: usize) -> Run {
    let mut run = Run::default();
    let rng = &mut rand_core::OsRng;
    let key = IdentityKey::generate(rng);
    let mut message = vec![0u8; bytes];
    rng.fill_bytes(&mut message);
    let mut data = vec![0u8; 124];
    for i in 0..n {
        message[..8].copy_from_slice(&i.to_be_bytes());
        let hash = Sha256::digest(black_box(&message));
        // The reply's signed data binds the body's hash (PROTOCOL.md §5.3).
        data[92..124].copy_from_slice(&hash);
        black_box(key.sign(SignatureTag::Reply, &[black_box(&data)]));
    }
    run.add("floor_iterations", n as f64, "");
    run.add("floor_message_bytes", bytes as f64, "B");
    run
}

/// One run of `crypto`.
pub(crate) fn run(args: &CryptoArgs) -> anyhow::Result<Run> {
    if let Some(n) = args.floor {
        return Ok(floor(n, args.floor_bytes));
    }
    let secs = args.secs.max(0.01);
    let mut run = Run::default();
    let rng = &mut rand_core::OsRng;
    let key = IdentityKey::generate(rng);
    let public = key.public();
    // A reply's signed data: nonce, seq, request digest, header, body hash.
    let mut data = vec![0u8; 124];
    rng.fill_bytes(&mut data);
    let sig = key.sign(SignatureTag::Reply, &[&data]);
    run.add(
        "ed25519_sign_per_s",
        rate(secs, || {
            black_box(key.sign(SignatureTag::Reply, &[black_box(&data)]));
        }),
        "op/s",
    );
    run.add(
        "ed25519_verify_per_s",
        rate(secs, || {
            black_box(public.verify(SignatureTag::Reply, &[black_box(&data)], &sig)).ok();
        }),
        "op/s",
    );
    for (label, size) in [("4k", 4096usize), ("1m", 1 << 20)] {
        let mut plain = vec![0u8; size];
        rng.fill_bytes(&mut plain);
        let seals = rate(secs, || {
            black_box(sealed::seal(
                &public,
                black_box(&plain),
                &mut rand_core::OsRng,
            ))
            .ok();
        });
        run.add(&format!("seal_{label}_per_s"), seals, "op/s");
        run.add(
            &format!("seal_{label}_mib_per_s"),
            seals * size as f64 / (1 << 20) as f64,
            "MiB/s",
        );
        let boxed = sealed::seal(&public, &plain, rng)?;
        let opens = rate(secs, || {
            black_box(sealed::open(&key, black_box(&boxed))).ok();
        });
        run.add(
            &format!("open_{label}_mib_per_s"),
            opens * size as f64 / (1 << 20) as f64,
            "MiB/s",
        );
    }
    let mut buf = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut buf);
    let hashes = rate(secs, || {
        black_box(Sha256::digest(black_box(&buf)));
    });
    run.add("sha256_mib_per_s", hashes, "MiB/s");
    Ok(run)
}
