//! The inner body and attachment parser behind `content::open` (PROTOCOL.md
//! §8): a crypto-0 message is built from the fuzz input (first byte: number
//! of attachments; the rest split at 0xff bytes into body and attachments);
//! whatever `open` accepts is rebuilt with `Content::plaintext` and must open
//! to the same content (parse → build → parse), and seal → open → verify as
//! crypto 1. The same bytes as a crypto-1 body never open or panic.
#![no_main]

use cmtp_proto::content::{Content, open};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::names::Address;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xff);
    let body = parts.next().unwrap_or_default().to_vec();
    let attachments: Vec<Vec<u8>> = parts.take(usize::from(first % 4)).map(<[u8]>::to_vec).collect();
    let from = Address::parse("alice@a.example").unwrap();
    let to = Address::parse("bob@b.example").unwrap();
    let msg = Message {
        version: 0,
        destination: to.clone(),
        source: Source::user(from.clone()),
        log: Vec::new(),
        body: body.clone(),
        attachments: attachments.clone(),
        trailer: [0; 64],
    };
    let bob = IdentityKey::from_seed(&[3; 32]);

    // As crypto 1 the same bytes are no sealed box for bob.
    let sealed = Message { version: 1, ..msg.clone() };
    assert!(open(&sealed, Some(&bob)).is_err());

    let Ok(opened) = open(&msg, None) else {
        return;
    };
    assert_eq!(opened.sender_signature, None);
    let content: Content = opened.content;
    assert_eq!(content.attachments.len(), attachments.len());
    let rebuilt = content
        .plaintext(&from, &to)
        .unwrap_or_else(|e| panic!("parsed content does not rebuild: {e}"));
    let again = open(&rebuilt, None).expect("rebuilt content does not parse");
    assert_eq!(again.content, content);
    // Only the parts after a NUL in an attachment's name field may be lost.
    assert!(rebuilt.body.len() <= body.len());

    // Crypto 1: seal to bob as alice, open, verify.
    let alice = IdentityKey::from_seed(&[2; 32]);
    let mut rng = StdRng::seed_from_u64(u64::from(first));
    let m1 = content
        .seal(&from, &alice, &to, &bob.public(), &mut rng)
        .expect("seal");
    let o1 = open(&m1, Some(&bob)).expect("open what was sealed");
    assert_eq!(o1.content, content);
    o1.verify_sender(&m1, &alice.public()).expect("sender signature");
});
