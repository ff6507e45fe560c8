//! Key statements, server key bundles, rotations and receipts (PROTOCOL.md
//! §9, §10.1): no panics in decoding or verifying; decode → encode → decode
//! is the identity.
#![no_main]

use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::statements::{
    KeyStatement, Receipt, ReceiptBody, Rotation, ServerKeyBundle, verify_trailer,
};
use cmtp_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = KeyStatement::decode(data) {
        let enc = s.to_bytes();
        assert_eq!(KeyStatement::decode(&enc).as_ref(), Ok(&s));
        assert!(enc.len() <= data.len());
        let _ = s.verify(&s.key, s.account.as_ref(), &s.domain, s.issued_at);
    }
    if let Ok(b) = ServerKeyBundle::decode(data) {
        let enc = b.to_bytes();
        assert_eq!(ServerKeyBundle::decode(&enc).as_ref(), Ok(&b));
        let _ = b.verify_self(&b.statement.domain, b.statement.issued_at);
        for r in &b.rotations {
            let _ = b.check_against_pin(&r.old_key, &b.statement.domain);
        }
    }
    let mut r = Reader::new(data);
    if let Ok(rot) = Rotation::read(&mut r) {
        let mut enc = Vec::new();
        rot.encode(&mut enc);
        let mut r2 = Reader::new(&enc);
        assert_eq!(Rotation::read(&mut r2).as_ref(), Ok(&rot));
        assert_eq!(r2.remaining(), 0);
        let _ = rot.verify();
    }
    if let Ok(rc) = Receipt::decode(data) {
        let enc = rc.to_bytes();
        assert_eq!(Receipt::decode(&enc).as_ref(), Ok(&rc));
        let key = IdentityKey::from_seed(&[6; 32]).public();
        let _ = rc.verify(&key, rc.hash());
        let _ = verify_trailer(&key, rc.hash(), &rc.signature);
    }
    if let Ok(body) = ReceiptBody::decode(data) {
        assert_eq!(ReceiptBody::decode(&body.to_bytes()).as_ref(), Ok(&body));
    }
});
