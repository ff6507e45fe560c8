//! Recomputes the hex vectors of `testdata/crypto/` (generated with libsodium,
//! see each file's header) with this module's code and compares exactly.

use std::collections::HashMap;

use super::opaque::KsfParams;
use super::sealed;
use super::xzibit::{self, Xzibit};
use super::{IdentityKey, PublicKey, SignatureTag};

type Record = HashMap<String, Vec<u8>>;

/// Parses a vector file: `#` comments, records separated by blank lines,
/// lines `name: hex` (`name:` alone for an empty value).
fn read(name: &str) -> Vec<Record> {
    let path = format!(
        "{}/../../testdata/crypto/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut cur = Record::new();
    for line in text.lines().chain(std::iter::once("")) {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}: bad line {line:?}"));
        let v = hex::decode(v.trim()).unwrap_or_else(|e| panic!("{name}: {k}: {e}"));
        assert!(
            cur.insert(k.trim().to_owned(), v).is_none(),
            "{name}: duplicate {k}"
        );
    }
    assert!(!out.is_empty(), "{name}: no records");
    out
}

fn a32(v: &[u8]) -> [u8; 32] {
    v.try_into().expect("32 bytes")
}

#[test]
fn signature_vectors() {
    let recs = read("signature.hex");
    assert_eq!(recs.len(), SignatureTag::ALL.len());
    for r in recs {
        let tag = SignatureTag::ALL
            .into_iter()
            .find(|t| t.as_bytes() == &r["tag"][..])
            .expect("tag is one of SignatureTag");
        let id = IdentityKey::from_seed(&a32(&r["seed"]));
        assert_eq!(id.public().to_bytes()[..], r["public_key"][..]);
        let sig = id.sign(tag, &[&r["data"]]);
        assert_eq!(sig[..], r["signature"][..]);
        let pk = PublicKey::from_slice(&r["public_key"]).unwrap();
        pk.verify(tag, &[&r["data"]], &sig).unwrap();
    }
}

#[test]
fn x25519_conversion_vectors() {
    for r in read("x25519-conversion.hex") {
        let id = IdentityKey::from_seed(&a32(&r["seed"]));
        assert_eq!(id.public().to_bytes()[..], r["ed25519_public"][..]);
        let pk = PublicKey::from_slice(&r["ed25519_public"]).unwrap();
        assert_eq!(pk.to_x25519()[..], r["x25519_public"][..]);
        assert_eq!(id.to_x25519_secret()[..], r["x25519_secret"][..]);
    }
}

#[test]
fn kdf_vectors() {
    for r in read("kdf.hex") {
        assert_eq!(&r["info"][..], xzibit::KDF_INFO);
        let ek: [u8; 64] = r["export_key"][..].try_into().unwrap();
        assert_eq!(xzibit::xzibit_key(&ek)[..], r["xzibit_key"][..]);
    }
}

#[test]
fn xzibit_vectors() {
    for r in read("xzibit.hex") {
        let ek: [u8; 64] = r["export_key"][..].try_into().unwrap();
        let address = std::str::from_utf8(&r["address"]).unwrap();
        let id = IdentityKey::from_seed(&a32(&r["seed"]));
        let created_at = u64::from_be_bytes(r["created_at"][..].try_into().unwrap());
        let nonce: [u8; 24] = r["nonce"][..].try_into().unwrap();
        let x = Xzibit::seal_with_nonce(&ek, address, &id, created_at, &nonce);
        assert_eq!(x.to_bytes(), r["xzibit"]);
        let (back, ts) = Xzibit::decode(&r["xzibit"])
            .unwrap()
            .open(&ek, address)
            .unwrap();
        assert_eq!((back.public(), ts), (id.public(), created_at));
    }
}

#[test]
fn sealed_box_vectors() {
    for r in read("sealed-box.hex") {
        let id = IdentityKey::from_seed(&a32(&r["recipient_seed"]));
        let pt = sealed::open(&id, &r["sealed"]).unwrap();
        assert_eq!(pt[..], r["plaintext"][..]);
    }
}

#[test]
fn ksf_params_vectors() {
    let recs = read("ksf-params.hex");
    for r in &recs {
        let p = KsfParams::decode(&r["encoded"]).unwrap();
        let be = |k: &str| u32::from_be_bytes(r[k][..].try_into().unwrap());
        assert_eq!(
            (p.m_cost_kib, p.t_cost, p.p_cost),
            (be("m_cost_kib"), be("t_cost"), be("p_cost"))
        );
        assert_eq!(p.to_bytes()[..], r["encoded"][..]);
    }
    assert_eq!(
        KsfParams::decode(&recs[0]["encoded"]).unwrap(),
        KsfParams::RECOMMENDED
    );
}
