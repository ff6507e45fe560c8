//! `crypto`: the hardware limits of what a server and a client compute, on
//! one core: Ed25519 sign and verify (every reply, receipt and trailer is a
//! signature), sealed boxes (what a client does per recipient), SHA-256
//! (the server hashes every message and every reply body).

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
}

impl CryptoArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({ "secs": self.secs, "threads": 1 })
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

/// One run of `crypto`.
pub(crate) fn run(args: &CryptoArgs) -> anyhow::Result<Run> {
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
