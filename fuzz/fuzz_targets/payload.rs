//! Reply bodies and extension payloads (PROTOCOL.md §6.1, §10.2, §11, §12,
//! §13): no panics; every decoder's result re-encodes and decodes back.
#![no_main]

use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::xzibit::Xzibit;
use cmtp_proto::names::Address;
use cmtp_proto::payload::{
    DeliveryFailure, Greeting, LoginChallenge, RegistrationBundle, RegistrationOffer,
    XzibitRelease, decode_listing, encode_listing,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Greeting::parse(data) {
        let text = g.to_text();
        assert_eq!(Greeting::parse(text.as_bytes()).as_ref(), Ok(&g), "{text:?}");
    }
    if let Ok(f) = DeliveryFailure::decode(data) {
        let enc = f.to_bytes();
        assert_eq!(DeliveryFailure::decode(&enc).as_ref(), Ok(&f));
    }
    if let Ok(c) = LoginChallenge::decode(data) {
        assert_eq!(c.to_bytes(), data);
        assert_eq!(LoginChallenge::decode(&c.to_bytes()).as_ref(), Ok(&c));
    }
    if let Ok(rel) = XzibitRelease::decode(data) {
        assert_eq!(rel.to_bytes(), data);
        assert_eq!(XzibitRelease::decode(&rel.to_bytes()).as_ref(), Ok(&rel));
        let server = IdentityKey::from_seed(&[1; 32]).public();
        let alice = Address::parse("alice@a.example").unwrap();
        let _ = rel.verify(&server, &alice);
    }
    if let Ok(x) = Xzibit::decode(data) {
        assert_eq!(x.to_bytes(), data);
        let _ = x.open(&[0x77; 64], "alice@a.example");
    }
    if let Ok(o) = RegistrationOffer::decode(data) {
        assert_eq!(o.to_bytes(), data);
        assert_eq!(RegistrationOffer::decode(&o.to_bytes()).as_ref(), Ok(&o));
    }
    if let Ok(b) = RegistrationBundle::decode(data) {
        assert_eq!(b.to_bytes(), data);
        assert!(RegistrationBundle::decode(&b.to_bytes()).as_ref() == Ok(&b));
        let _ = b.verify(&Address::parse("alice@a.example").unwrap());
    }
    if let Ok(entries) = decode_listing(data) {
        let enc = encode_listing(&entries);
        assert_eq!(decode_listing(&enc).as_ref(), Ok(&entries));
    }
});
