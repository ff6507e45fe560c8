//! The hex vectors of `testdata/vectors/` (PROTOCOL.md: "Every structure below
//! has a hex test vector").
//!
//! The vectors come from `testdata/vectors/generate.py`, an independent Python
//! implementation of PROTOCOL.md; none of them is computed by this crate. Each
//! test below rebuilds the structures of one file with the Rust API from the
//! inputs given in the file's comments, checks that the encoding equals the
//! vector byte for byte, decodes the vector back to the same structure and
//! verifies every signature. Each test ends with [`Vectors::finish`], which
//! fails if a vector of its file was not used, and
//! [`every_vector_file_is_checked`] fails on a `.hex` file without a test.
//!
//! Structures checked only in the decode direction, because the Rust API
//! (rightly) has no way to make them deterministically: sealed boxes (the
//! ephemeral key comes from the RNG), hence the sealed bodies and attachments
//! of crypto-1 messages; these are opened instead. Input the protocol refuses
//! or normalises (upper-case names, unknown words, SMTP lines, a foreign SMTP
//! greeting) is naturally decode-only too.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use cmtp_proto::banner::{Banner, busy_line, decode_banner, ready_line, smtp_refusal};
use cmtp_proto::command::{Command, CommandError, decode_command, request_digest};
use cmtp_proto::content::{Attachment, Content, ContentVersion, Mailbox, open};
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::crypto::safety::safety_number;
use cmtp_proto::crypto::sealed;
use cmtp_proto::crypto::xzibit::Xzibit;
use cmtp_proto::crypto::{IdentityKey, SignatureTag};
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::message::{Message, MessageEvent, MessageReader, Source};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::mailbox::{
    self, Change, ChangeSet, FlagsResult, Folder, ListingPage, Summary,
};
use cmtp_proto::payload::{
    DeliveryFailure, FailureReason, Greeting, ListingEntry, LoginChallenge, RegistrationBundle,
    RegistrationOffer, XzibitRelease, decode_listing, encode_listing,
};
use cmtp_proto::reply::{
    REPLY_VERSION, Reply, ReplyBinding, ReplyDecoder, ReplyEvent, ReplyHeader, Status, body_hash,
    decode_reply,
};
use cmtp_proto::statements::{
    KeyStatement, Receipt, ReceiptBody, Rotation, ServerKeyBundle, sign_trailer, verify_trailer,
};
use cmtp_proto::wire::Reader;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};

/// The vector files and the test that checks each (`dns.hex` is checked by
/// `crates/cmtp-client/tests/discovery.rs`, where the TXT parser lives).
const FILES: [&str; 9] = [
    "banner.hex",
    "commands.hex",
    "content.hex",
    "dns.hex",
    "kt.hex",
    "message.hex",
    "payload.hex",
    "replies.hex",
    "statements.hex",
];

fn dir() -> String {
    format!("{}/../../testdata/vectors", env!("CARGO_MANIFEST_DIR"))
}

/// One vector file: `# comments`, blank lines, `name: hex` lines.
struct Vectors {
    file: &'static str,
    map: BTreeMap<String, Vec<u8>>,
    used: RefCell<BTreeSet<String>>,
}

impl Vectors {
    fn load(file: &'static str) -> Vectors {
        let path = format!("{}/{file}", dir());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hex) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{file}:{}: not `name: hex`", i + 1));
            let bytes =
                hex::decode(hex.trim()).unwrap_or_else(|e| panic!("{file}:{}: {name}: {e}", i + 1));
            assert!(
                map.insert(name.trim().to_owned(), bytes).is_none(),
                "{file}: duplicate vector {name}"
            );
        }
        assert!(!map.is_empty(), "{file}: no vectors");
        Vectors {
            file,
            map,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// A vector of this file, marked as checked.
    fn get(&self, name: &str) -> Vec<u8> {
        self.used.borrow_mut().insert(name.to_owned());
        self.peek(name)
    }

    /// A vector used as an input (another file checks it).
    fn peek(&self, name: &str) -> Vec<u8> {
        self.map
            .get(name)
            .unwrap_or_else(|| panic!("{}: no vector {name}", self.file))
            .clone()
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Fails if a vector of the file was never used.
    fn finish(self) {
        let used = self.used.borrow();
        let unused: Vec<&String> = self.map.keys().filter(|k| !used.contains(*k)).collect();
        assert!(
            unused.is_empty(),
            "{}: vectors not checked: {unused:?}",
            self.file
        );
    }
}

// ------------------------------------------------------------------ inputs

const T0: u64 = 1_795_658_400; // 2026-11-26T02:00:00Z
const T0_TEXT: &str = "2026-11-26T02:00:00Z";
const DAY: u64 = 86_400;

fn key(seed: u8) -> IdentityKey {
    IdentityKey::from_seed(&[seed; 32])
}
fn server_a() -> IdentityKey {
    key(0x01)
}
fn alice() -> IdentityKey {
    key(0x02)
}
fn bob() -> IdentityKey {
    key(0x03)
}
fn server_a_old1() -> IdentityKey {
    key(0x04)
}
fn server_a_old2() -> IdentityKey {
    key(0x05)
}
fn server_b() -> IdentityKey {
    key(0x06)
}
fn acc(s: &str) -> Account {
    Account::parse(s).unwrap()
}
fn dom(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}
fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}
fn nonce() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}
fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}
fn rng() -> StdRng {
    StdRng::seed_from_u64(0x00c0_ffee)
}
fn a32(b: &[u8]) -> [u8; 32] {
    b.try_into().expect("32 bytes")
}

/// Decodes one command occupying all of `bytes`.
fn one_command(bytes: &[u8]) -> Command {
    let (cmd, used) = decode_command(bytes)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a complete command");
    assert_eq!(used, bytes.len(), "consumed");
    cmd
}

#[test]
fn every_vector_file_is_checked() {
    let mut found: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".hex"))
        .collect();
    found.sort();
    assert_eq!(
        found, FILES,
        "a vector file without a test, or a missing file"
    );
}

// ---------------------------------------------------------------- commands

#[test]
fn commands_hex() {
    let v = Vectors::load("commands.hex");
    let payload = Vectors::load("payload.hex");
    let cases: Vec<(&str, Command)> = vec![
        ("ohai", Command::Ohai),
        ("mail", Command::Mail),
        (
            "keyrequest",
            Command::KeyRequest {
                user: Some(acc("alice")),
                domain: Some(dom("example.org")),
            },
        ),
        (
            "keyrequest_user_only",
            Command::KeyRequest {
                user: Some(acc("alice")),
                domain: None,
            },
        ),
        (
            "keyrequest_empty",
            Command::KeyRequest {
                user: None,
                domain: None,
            },
        ),
        ("noop", Command::Noop),
        (
            "login",
            Command::Login {
                user: acc("alice"),
                ke1: vec![0x11; 96],
            },
        ),
        ("help", Command::Help),
        ("obai", Command::Obai),
        (
            "keylogin",
            Command::KeyLogin {
                user: acc("alice"),
                signature: {
                    // §12.4: the signature over the channel binding 00..1f
                    // and the address.
                    let nonce = channel_binding();
                    let alice = Address::parse("alice@a.example").unwrap();
                    let sig = cmtp_proto::account::key_login_signature(&key(0x02), &nonce, &alice);
                    let mut data = nonce.to_vec();
                    data.extend_from_slice(b"alice@a.example\0");
                    assert_eq!(data, v.get("keylogin_signed_data"));
                    cmtp_proto::account::verify_key_login(
                        &key(0x02).public(),
                        &nonce,
                        &alice,
                        &sig,
                    )
                    .unwrap();
                    sig.to_vec()
                },
            },
        ),
        (
            "loginfinish",
            Command::LoginFinish {
                ke3: vec![0x22; 64],
            },
        ),
        (
            "register",
            Command::Register {
                user: acc("alice"),
                invite: "inv-Tok_42".into(),
                request: vec![0x33; 32],
            },
        ),
        (
            "register_open",
            Command::Register {
                user: acc("bob"),
                invite: String::new(),
                request: vec![0x33; 32],
            },
        ),
        (
            "reset",
            Command::Reset {
                user: acc("alice"),
                token: "rst-Tok_42".into(),
                request: vec![0x66; 32],
            },
        ),
        (
            "regfinish",
            Command::RegFinish {
                bundle: payload.peek("registration_bundle"),
            },
        ),
        (
            "password",
            Command::Password {
                request: vec![0x55; 32],
            },
        ),
        ("list", Command::List),
        ("fetch", Command::Fetch { id: 42 }),
        ("fetch_zero", Command::Fetch { id: 0 }),
        ("delete", Command::Delete { id: u64::MAX }),
        (
            "listpage",
            Command::ListPage {
                before: 0,
                limit: 500,
            },
        ),
        (
            "listpage_before",
            Command::ListPage {
                before: 9501,
                limit: 1000,
            },
        ),
        (
            "changes",
            Command::Changes {
                since: 10_000,
                limit: 1000,
            },
        ),
        (
            "flags",
            Command::Flags {
                set: mailbox::SEEN,
                clear: mailbox::DELETED,
                ids: vec![1, 7],
            },
        ),
        (
            "move",
            Command::Move {
                folder: Folder::parse("Archive").unwrap(),
                ids: vec![3, 4],
            },
        ),
        (
            "append",
            Command::Append {
                folder: Folder::sent(),
                flags: mailbox::SEEN,
            },
        ),
        (
            "keyproof",
            Command::KeyProof {
                user: acc("bob"),
                domain: Some(dom("b.example")),
            },
        ),
        ("kthead", Command::KtHead { epoch: None }),
        ("kthead_epoch", Command::KtHead { epoch: Some(12) }),
        ("ktaudit", Command::KtAudit { from: 3, to: 19 }),
        (
            "ktwitness",
            Command::KtWitness {
                domain: dom("a.example"),
            },
        ),
        (
            "ktevidence",
            Command::KtEvidence {
                domain: dom("a.example"),
            },
        ),
        ("kthistory", Command::KtHistory),
    ];
    let mut words = BTreeSet::new();
    for (name, cmd) in &cases {
        let bytes = v.get(name);
        assert_eq!(cmd.to_bytes(), bytes, "encode {name}");
        assert_eq!(&one_command(&bytes), cmd, "decode {name}");
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_command(&bytes[..cut]).unwrap(),
                None,
                "{name} cut {cut}"
            );
        }
        words.insert(cmd.word());
    }
    // every word of the table in §4.2
    assert_eq!(
        words,
        BTreeSet::from([
            "OHAI",
            "MAIL",
            "KEYREQUEST",
            "NOOP",
            "LOGIN",
            "HELP",
            "OBAI",
            "LOGINFINISH",
            "KEYLOGIN",
            "REGISTER",
            "RESET",
            "REGFINISH",
            "PASSWORD",
            "LIST",
            "FETCH",
            "DELETE",
            "LISTPAGE",
            "CHANGES",
            "FLAGS",
            "MOVE",
            "APPEND",
            "KEYPROOF",
            "KTHEAD",
            "KTAUDIT",
            "KTWITNESS",
            "KTEVIDENCE",
            "KTHISTORY"
        ])
    );
    // The example printed in §4.2.
    assert_eq!(
        v.get("keyrequest"),
        hex::decode("4b45595245515545535400616c696365006578616d706c652e6f726700").unwrap()
    );

    // Names are folded and lose one trailing dot; the canonical form goes on the wire.
    let cmd = one_command(&v.get("keyrequest_uppercase"));
    assert_eq!(cmd.to_bytes(), v.get("keyrequest"));

    // Pipelining.
    let stream = v.get("pipeline");
    let mut pos = 0;
    let mut got = Vec::new();
    while let Some((c, n)) = decode_command(&stream[pos..]).unwrap() {
        got.push(c);
        pos += n;
    }
    assert_eq!(pos, stream.len());
    assert_eq!(
        got,
        [
            Command::Ohai,
            Command::KeyRequest {
                user: Some(acc("bob")),
                domain: Some(dom("b.example"))
            },
            Command::Noop,
            Command::Obai
        ]
    );

    // Refusals: the error and whether the framing survives (§4.2).
    let err = |name: &str| decode_command(&v.get(name)).unwrap_err();
    let e = err("bad_unknown_word");
    assert_eq!(e.kind, CommandError::UnknownCommand("FROB".into()));
    assert_eq!(e.resume_at, Some(5));
    assert_eq!(one_command(&v.get("bad_unknown_word")[5..]), Command::Noop);
    let e = err("bad_word_too_long");
    assert_eq!((e.kind, e.resume_at), (CommandError::WordTooLong, None));
    let e = err("bad_argument_too_long");
    assert_eq!(
        (e.kind, e.resume_at),
        (CommandError::ArgumentTooLong { index: 0 }, None)
    );
    let e = err("bad_argument_name");
    assert!(matches!(e.kind, CommandError::BadArgument { index: 0, .. }));
    assert_eq!(e.resume_at, Some(28));
    let e = err("bad_blob_too_large");
    assert!(matches!(
        e.kind,
        CommandError::BlobTooLarge { len: 8193, .. }
    ));
    assert_eq!(e.resume_at, None);
    let e = err("bad_blob_wrong_size");
    assert_eq!(
        e.kind,
        CommandError::BlobWrongSize {
            len: 63,
            min: 64,
            max: 64
        }
    );
    assert_eq!(e.resume_at, Some(79));
    let e = err("bad_flags_both");
    assert!(matches!(e.kind, CommandError::BadArgument { index: 1, .. }));
    assert_eq!(e.resume_at, Some(v.get("bad_flags_both").len()));
    let e = err("bad_listpage_limit");
    assert!(matches!(e.kind, CommandError::BadArgument { index: 1, .. }));
    let e = err("bad_fetch_leading_zero");
    assert!(matches!(e.kind, CommandError::BadArgument { index: 0, .. }));
    let e = err("bad_ktaudit_span");
    assert!(matches!(e.kind, CommandError::BadArgument { index: 1, .. }));
    assert_eq!(
        one_command(&v.get("bad_ktaudit_span")[e.resume_at.unwrap()..]),
        Command::Noop
    );
    let e = err("smtp_ehlo");
    assert_eq!(
        (e.kind, e.resume_at),
        (CommandError::SmtpVerb("EHLO"), None)
    );
    v.finish();
}

// ----------------------------------------------------------- transparency

#[test]
fn kt_hex() {
    use cmtp_proto::kt::{
        AuditAnswer, Cosignature, EpochHead, KeyHistory, Misbehaviour, MisbehaviourKind, ProvenKey,
        SignedHead, WitnessVerdict, WitnessedHead, key_value,
    };
    let v = Vectors::load("kt.hex");
    let head = |epoch, root: u8, previous: [u8; 32], time| EpochHead {
        domain: dom("a.example"),
        epoch,
        root: [root; 32],
        vrf_key: [0x20; 32],
        previous,
        time,
    };
    let h0 = head(0, 0x10, [0; 32], T0);
    assert_eq!(h0.to_bytes(), v.get("head_0"));
    assert_eq!(h0.hash().to_vec(), v.get("head_0_hash"));
    let signed = |name: &str, h: EpochHead| {
        let s = SignedHead::sign(&server_a(), h);
        assert_eq!(s.to_bytes(), v.get(name), "encode {name}");
        let back = SignedHead::decode(&v.get(name)).unwrap();
        assert_eq!(back, s, "decode {name}");
        back.verify_for(&server_a().public(), &dom("a.example"))
            .unwrap();
        s
    };
    let s0 = signed("signed_head_0", h0.clone());
    let h1 = head(1, 0x11, h0.hash(), T0 + 300);
    let s1 = signed("signed_head_1", h1.clone());
    let s1b = signed("signed_head_1_fork", head(1, 0x99, h0.hash(), T0 + 300));
    let s2 = signed("signed_head_2_broken", head(2, 0x12, [0x55; 32], T0 + 600));
    assert_eq!(s1.head.previous, s0.head.hash());

    let c = Cosignature::issue(&server_b(), dom("b.example"), &h1, T0 + 310);
    assert_eq!(c.to_bytes(), v.get("cosignature_b"));
    let back = Cosignature::decode(&v.get("cosignature_b")).unwrap();
    back.verify(&h1).unwrap();
    assert!(back.verify(&s1b.head).is_err());
    let w = WitnessedHead {
        head: s1.clone(),
        cosignatures: vec![c.clone()],
    };
    assert_eq!(w.to_bytes(), v.get("witnessed_head_1"));
    assert_eq!(
        WitnessedHead::decode(&v.get("witnessed_head_1")).unwrap(),
        w
    );
    assert_eq!(
        w.witnesses(|_, k| *k == server_b().public()),
        vec![dom("b.example")]
    );

    for (name, kind, a, b) in [
        ("misbehaviour_fork", MisbehaviourKind::Fork, &s1, &s1b),
        (
            "misbehaviour_broken_chain",
            MisbehaviourKind::BrokenChain,
            &s1,
            &s2,
        ),
    ] {
        let m = Misbehaviour::between(a, b).unwrap();
        assert_eq!(m.kind, kind);
        assert_eq!(m.to_bytes(), v.get(name), "encode {name}");
        let back = Misbehaviour::decode(&v.get(name)).unwrap();
        back.verify(&server_a().public()).unwrap();
        assert!(back.verify(&server_b().public()).is_err());
    }
    let fork = Misbehaviour::between(&s1, &s1b).unwrap();
    for (name, verdict) in [
        ("verdict_cosigned", WitnessVerdict::Cosigned(c)),
        ("verdict_misbehaved", WitnessVerdict::Misbehaved(fork)),
    ] {
        assert_eq!(verdict.to_bytes(), v.get(name), "encode {name}");
        assert_eq!(WitnessVerdict::decode(&v.get(name)).unwrap(), verdict);
    }

    let bob_a = addr("bob@a.example");
    assert_eq!(
        key_value(&bob_a, &bob().public()).to_vec(),
        v.get("key_value_bob")
    );
    let st = KeyStatement::issue(
        &server_a(),
        Some(acc("bob")),
        dom("a.example"),
        bob().public(),
        T0,
        T0 + 30 * DAY,
    )
    .to_bytes();
    for (name, p) in [
        (
            "proven_key_no_proof",
            ProvenKey {
                statement: st.clone(),
                proof: None,
            },
        ),
        (
            "proven_key",
            ProvenKey {
                statement: st.clone(),
                proof: Some((w.clone(), b"akd lookup proof (opaque)".to_vec())),
            },
        ),
    ] {
        assert_eq!(p.to_bytes(), v.get(name), "encode {name}");
        assert_eq!(ProvenKey::decode(&v.get(name)).unwrap(), p, "decode {name}");
    }
    let a = AuditAnswer {
        heads: vec![s1.clone()],
        proof: b"append-only proof".to_vec(),
    };
    assert_eq!(a.to_bytes(), v.get("audit_answer"));
    assert_eq!(AuditAnswer::decode(&v.get("audit_answer")).unwrap(), a);
    let kh = KeyHistory {
        head: w,
        proof: b"history proof".to_vec(),
    };
    assert_eq!(kh.to_bytes(), v.get("key_history"));
    assert_eq!(KeyHistory::decode(&v.get("key_history")).unwrap(), kh);
    v.finish();
}

// ----------------------------------------------------------------- replies

/// Builds, signs, encodes and decodes one reply; returns it.
fn check_reply(
    v: &Vectors,
    name: &str,
    seq: u64,
    request: [u8; 32],
    status: Status,
    body: Vec<u8>,
) -> Reply {
    let server = server_a();
    let binding = ReplyBinding {
        nonce: nonce(),
        seq,
        request,
    };
    let header = ReplyHeader {
        version: REPLY_VERSION,
        status: status.clone(),
        body_len: body.len() as u64,
    };
    let signed = binding.signed_data(&header, &body_hash(&body));
    let signature = server.sign(SignatureTag::Reply, &[&signed]);
    let reply = Reply {
        version: REPLY_VERSION,
        status,
        body,
        signature,
    };
    let bytes = v.get(name);
    let mut enc = Vec::new();
    reply.encode(&mut enc);
    assert_eq!(enc, bytes, "encode {name}");
    let (back, used) = decode_reply(&bytes, 1 << 20).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back, reply, "decode {name}");
    // the streaming decoder, one byte at a time
    let mut dec = ReplyDecoder::new(1 << 20);
    let (mut head, mut streamed, mut sig) = (None, Vec::new(), None);
    let mut buf = Vec::new();
    for &b in &bytes {
        buf.push(b);
        loop {
            let (n, ev) = dec.next(&buf).unwrap();
            let more = match ev {
                None => false,
                Some(ReplyEvent::Header(h)) => {
                    head = Some(h);
                    true
                }
                Some(ReplyEvent::Body(c)) => {
                    streamed.extend_from_slice(c);
                    true
                }
                Some(ReplyEvent::End(s)) => {
                    sig = Some(s);
                    true
                }
            };
            buf.drain(..n);
            if !more {
                break;
            }
        }
    }
    assert!(buf.is_empty());
    assert_eq!(head.unwrap(), reply.header());
    assert_eq!(streamed, reply.body);
    assert_eq!(sig.unwrap(), reply.signature);
    // the signature of the vector verifies, bound to nonce, seq and request
    let data = binding.signed_data(&back.header(), &body_hash(&back.body));
    server
        .public()
        .verify(SignatureTag::Reply, &[&data], &back.signature)
        .unwrap();
    let replayed = ReplyBinding {
        seq: seq + 1,
        ..binding
    };
    assert!(
        server
            .public()
            .verify(
                SignatureTag::Reply,
                &[&replayed.signed_data(&back.header(), &body_hash(&back.body))],
                &back.signature
            )
            .is_err()
    );
    if let Some(expected) = v.map.get(&format!("{name}_signed_data")) {
        v.get(&format!("{name}_signed_data"));
        assert_eq!(&data, expected, "{name}_signed_data");
    }
    reply
}

#[test]
fn replies_hex() {
    let v = Vectors::load("replies.hex");
    let commands = Vectors::load("commands.hex");
    let payload = Vectors::load("payload.hex");
    let statements = Vectors::load("statements.hex");
    let message = Vectors::load("message.hex");

    for word in [
        "SUCCESS",
        "FAILURE",
        "KEYNOTAVAILABLE",
        "DELIVERYFAILURE",
        "TEMPFAILURE",
        "BADCOMMAND",
        "BADARGUMENT",
        "TOOLONG",
        "BADMESSAGE",
        "TOOBIG",
        "AUTHREQUIRED",
        "AUTHFAILED",
        "RATELIMITED",
        "TIMEOUT",
        "TOOMANYERRORS",
    ] {
        let name = format!("header_{}", word.to_lowercase());
        let status = Status::from_word(word).unwrap();
        assert!(!matches!(status, Status::Other(_)), "{word} is known");
        assert_eq!(status.word(), word);
        let header = ReplyHeader {
            version: 1,
            status,
            body_len: 0,
        };
        let mut enc = Vec::new();
        header.encode(&mut enc);
        let bytes = v.get(&name);
        assert_eq!(enc, bytes, "{name}");
        assert_eq!(
            ReplyHeader::decode(&bytes).unwrap(),
            Some((header, bytes.len()))
        );
    }

    let ohai = request_digest(&commands.peek("ohai"));
    let noop = request_digest(&commands.peek("noop"));
    let mail = request_digest(&commands.peek("mail"));
    assert_eq!(mail, sha256(b"MAIL\0"));

    let r = check_reply(
        &v,
        "reply_ohai",
        0,
        ohai,
        Status::Success,
        payload.peek("greeting_text"),
    );
    assert_eq!(Greeting::parse(&r.body).unwrap().nonce, nonce());
    check_reply(&v, "reply_noop", 1, noop, Status::Success, Vec::new());
    let r = check_reply(
        &v,
        "reply_mail_receipt",
        2,
        mail,
        Status::Success,
        statements.peek("receipt_statement"),
    );
    // The signed SUCCESS reply to MAIL is the receipt (§10.1).
    let receipt = Receipt::from_reply(&r.body, nonce(), 2, r.signature).unwrap();
    let hash = a32(&message.peek("message_v1_hash"));
    receipt.verify(&server_a().public(), &hash).unwrap();
    assert!(receipt.verify(&server_b().public(), &hash).is_err());
    let r = check_reply(
        &v,
        "reply_deliveryfailure",
        3,
        mail,
        Status::DeliveryFailure,
        DeliveryFailure::new(FailureReason::NoSuchUser, "no such user: bob@b.example").to_bytes(),
    );
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::NoSuchUser)
    );
    let r = check_reply(
        &v,
        "reply_toolong",
        4,
        [0; 32],
        Status::TooLong,
        b"command word longer than 16 bytes".to_vec(),
    );
    assert!(r.status.closes_connection());
    let r = check_reply(
        &v,
        "reply_unknown_status",
        5,
        noop,
        Status::from_word("NEWSTATUS").unwrap(),
        b"a status word from a newer server".to_vec(),
    );
    assert_eq!(r.status, Status::Other("NEWSTATUS".into()));
    v.finish();
}

// ------------------------------------------------------------------ banner

#[test]
fn banner_hex() {
    let v = Vectors::load("banner.hex");
    let d = dom("a.example");
    let decode = |bytes: &[u8]| {
        let (b, n) = decode_banner(bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        b
    };

    let ready = v.get("ready");
    assert_eq!(ready_line(&d, "cmtpd 0.1.0").as_bytes(), ready);
    assert_eq!(
        decode(&ready),
        Banner::Ready {
            domain: "a.example".into()
        }
    );
    let busy = v.get("busy");
    assert_eq!(busy_line(&d, "too many connections").as_bytes(), busy);
    assert_eq!(
        decode(&busy),
        Banner::Busy {
            domain: "a.example".into(),
            text: "too many connections".into()
        }
    );
    let refusal = v.get("smtp_refusal");
    assert_eq!(smtp_refusal(&d, "EHLO").as_bytes(), refusal);
    assert!(matches!(decode(&refusal), Banner::Smtp { .. }));
    let quit = v.get("smtp_refusal_quit");
    assert_eq!(smtp_refusal(&d, "QUIT").as_bytes(), quit);
    let clear = v.get("clear_refusal");
    assert_eq!(cmtp_proto::banner::clear_refusal(&d).as_bytes(), clear);
    assert_eq!(
        decode(&v.get("cmtp1_ready")),
        Banner::OldProtocol {
            domain: "a.example".into()
        }
    );
    assert_eq!(
        decode(&v.get("smtp_greeting")),
        Banner::Smtp {
            line: "220 mx.example ESMTP Postfix".into()
        }
    );
    v.finish();
}

/// The channel binding (TLS exporter value) of the connection the login
/// vectors are made for: bytes 00..1f.
fn channel_binding() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

// ----------------------------------------------------------------- content

fn report_content() -> Content {
    Content {
        reply_to: Some(addr("alice+replies@a.example")),
        subject: "Quarterly report".into(),
        date: T0_TEXT.into(),
        cc: vec![
            Mailbox::bare(addr("carol@c.example")),
            Mailbox::bare(addr("dave@d.example")),
        ],
        text: "Hi Bob,\nthe report is attached.\n-- Alice\n".into(),
        attachments: vec![
            Attachment {
                name: "report.pdf".into(),
                data: b"%PDF-1.7 not really a pdf\n".to_vec(),
                ..Attachment::default()
            },
            Attachment {
                name: format!("{}.txt", "n".repeat(251)),
                data: b"hello\n".to_vec(),
                ..Attachment::default()
            },
        ],
        ..Content::default()
    }
}

/// The version 2 reply of content.hex, as sealed to bob (no Bcc) and to
/// dave (a Bcc recipient).
fn reply_v2_content() -> Content {
    Content {
        version: ContentVersion::V2,
        from_name: "Alice Example".into(),
        subject: "Re: Quarterly report".into(),
        date: T0_TEXT.into(),
        message_id: "5f1c0ffee0dd@a.example".into(),
        in_reply_to: "q3-report-1@b.example".into(),
        references: vec!["q3-report-1@b.example".into()],
        to: vec![Mailbox::new("Bob", addr("bob@b.example"))],
        cc: vec![Mailbox::new("Carol \"C\" Example", addr("carol@c.example"))],
        bcc: vec![Mailbox::bare(addr("dave@d.example"))],
        text: "Thanks, Bob.\n".into(),
        attachments: vec![Attachment::new(
            "report.pdf",
            "application/pdf",
            b"%PDF-1.7 not really a pdf\n".to_vec(),
        )],
        ..Content::default()
    }
}

fn notice_content() -> Content {
    let text = format!(
        "Reason: NODESTINATION\nDestination: carol@c.example\nOriginal-Hash: {}\nAttempts: 1\nDetail: c.example publishes a null MX\n",
        "0123456789abcdef".repeat(4)
    );
    Content {
        reply_to: None,
        subject: "Undeliverable: carol@c.example".into(),
        date: T0_TEXT.into(),
        text,
        ..Content::default()
    }
}

#[test]
fn content_hex() {
    let v = Vectors::load("content.hex");
    let (alice_a, bob_b) = (addr("alice@a.example"), addr("bob@b.example"));
    let content = report_content();

    // §8.1, §8.2: the plaintexts.
    let inner = v.get("inner_body");
    assert_eq!(content.inner_body().unwrap(), inner);
    let plain = content.plaintext(&alice_a, &bob_b).unwrap();
    assert_eq!(plain.body, inner);
    assert_eq!(
        plain.attachments,
        [v.get("attachment_1"), v.get("attachment_2")]
    );

    // §8.3: the sender signature. Sealing is randomised, so seal with any RNG,
    // open, and compare the signature the Rust code put inside.
    let sealed_msg = content
        .seal(&alice_a, &alice(), &bob_b, &bob().public(), &mut rng())
        .unwrap();
    let opened = open(&sealed_msg, Some(&bob())).unwrap();
    assert_eq!(opened.content, content);
    let sig = v.get("sender_signature");
    assert_eq!(opened.sender_signature.unwrap()[..], sig[..]);
    opened
        .verify_sender(&sealed_msg, &alice().public())
        .unwrap();
    alice()
        .public()
        .verify(
            SignatureTag::SenderSignature,
            &[&v.get("sender_signed_data")],
            &sig.clone().try_into().unwrap(),
        )
        .unwrap();
    let signed_inner = v.get("inner_body_signed");
    assert_eq!(signed_inner, [inner.clone(), sig.clone()].concat());

    // §8.4: libsodium-made sealed boxes open to the plaintexts.
    let open_box =
        |name: &str, key: &IdentityKey| sealed::open(key, &v.get(name)).unwrap().to_vec();
    assert_eq!(open_box("sealed_body", &bob()), signed_inner);
    assert_eq!(
        open_box("sealed_attachment_1", &bob()),
        v.get("attachment_1")
    );
    assert_eq!(
        open_box("sealed_attachment_2", &bob()),
        v.get("attachment_2")
    );
    assert!(sealed::open(&alice(), &v.get("sealed_body")).is_err());

    // The whole crypto-1 message built from those boxes opens and verifies.
    let msg = Message {
        body: v.get("sealed_body"),
        attachments: vec![v.get("sealed_attachment_1"), v.get("sealed_attachment_2")],
        ..sealed_msg
    };
    let opened = open(&msg, Some(&bob())).unwrap();
    assert_eq!(opened.content, content);
    assert_eq!(opened.sender_signature.unwrap()[..], sig[..]);
    opened.verify_sender(&msg, &alice().public()).unwrap();

    // §8.1 content version 2: bob's copy and dave's (a Bcc recipient).
    let reply = reply_v2_content();
    let dave_d = addr("dave@d.example");
    let bob_copy = reply.for_recipient(&bob_b);
    let dave_copy = reply.for_recipient(&dave_d);
    assert_eq!(bob_copy.inner_body().unwrap(), v.get("inner_body_v2"));
    assert_eq!(dave_copy.inner_body().unwrap(), v.get("inner_body_v2_bcc"));
    let m2 = bob_copy
        .seal(&alice_a, &alice(), &bob_b, &bob().public(), &mut rng())
        .unwrap();
    let o2 = open(&m2, Some(&bob())).unwrap();
    assert_eq!(
        o2.sender_signature.unwrap()[..],
        v.get("sender_signature_v2")[..]
    );
    let md = dave_copy
        .seal(&alice_a, &alice(), &dave_d, &bob().public(), &mut rng())
        .unwrap();
    let od = open(&md, Some(&bob())).unwrap();
    assert_eq!(
        od.sender_signature.unwrap()[..],
        v.get("sender_signature_v2_bcc")[..]
    );
    // The libsodium-made box opens to bob's copy and verifies.
    let m2 = Message {
        body: v.get("sealed_body_v2"),
        ..m2
    };
    let o2 = open(&m2, Some(&bob())).unwrap();
    assert_eq!(o2.content, bob_copy);
    assert!(o2.content.bcc.is_empty());
    o2.verify_sender(&m2, &alice().public()).unwrap();

    // §10.3: a delivery failure notice, signed by the server as sender.
    let notice = notice_content();
    let ninner = v.get("notice_inner_body");
    assert_eq!(notice.inner_body().unwrap(), ninner);
    let from = Source::server(dom("a.example"));
    let nmsg = notice
        .seal_as(from, &server_a(), &alice_a, &alice().public(), &mut rng())
        .unwrap();
    let nopened = open(&nmsg, Some(&alice())).unwrap();
    let nsig = v.get("notice_sender_signature");
    assert_eq!(nopened.sender_signature.unwrap()[..], nsig[..]);
    assert_eq!(
        open_box("notice_sealed_body", &alice()),
        [ninner, nsig].concat()
    );
    let nmsg = Message {
        body: v.get("notice_sealed_body"),
        ..nmsg
    };
    let nopened = open(&nmsg, Some(&alice())).unwrap();
    assert_eq!(nopened.content, notice);
    nopened.verify_sender(&nmsg, &server_a().public()).unwrap();
    v.finish();
}

// ---------------------------------------------------------------- messages

/// Encodes, decodes, streams and hashes one message against its vectors.
fn check_message(v: &Vectors, name: &str, m: &Message, hash: &[u8; 32]) {
    let bytes = v.get(name);
    assert_eq!(m.to_bytes(), bytes, "encode {name}");
    assert_eq!(m.encoded_len(), bytes.len());
    assert_eq!(&m.hash(), hash, "hash of {name}");
    let back = Message::decode(&bytes, MessageLimits::default()).unwrap();
    assert_eq!(&back, m, "decode {name}");
    // §7.2: the hash covers the encoding without log_length, log and trailer.
    let head = 24
        + [
            m.destination.account.as_str(),
            m.destination.domain.as_str(),
            m.source.account.as_ref().map_or("", |a| a.as_str()),
            m.source.domain.as_str(),
        ]
        .iter()
        .map(|s| s.len() + 1)
        .sum::<usize>();
    let hashed = [
        &bytes[..8],
        &bytes[16..head],
        &bytes[head + m.log.len()..bytes.len() - 64],
    ]
    .concat();
    assert_eq!(&sha256(&hashed), hash, "hash input of {name}");
    // The streaming reader, in chunks of several sizes, gives the same.
    for step in [1, 7, 64, bytes.len()] {
        let mut r = MessageReader::new(MessageLimits::default());
        let mut buf = Vec::new();
        let mut end = None;
        let mut used = 0;
        for chunk in bytes.chunks(step) {
            buf.extend_from_slice(chunk);
            while !r.is_done() {
                let (n, ev) = r.next(&buf).unwrap();
                let more = match ev {
                    Some(MessageEvent::End { trailer, hash }) => {
                        end = Some((trailer, hash));
                        true
                    }
                    Some(_) => true,
                    None => false,
                };
                buf.drain(..n);
                used += n;
                if !more {
                    break;
                }
            }
        }
        assert_eq!(used, bytes.len());
        assert_eq!(end, Some((m.trailer, *hash)), "{name} in chunks of {step}");
    }
}

#[test]
fn message_hex() {
    let v = Vectors::load("message.hex");
    let content = Vectors::load("content.hex");
    let (alice_a, bob_b) = (addr("alice@a.example"), addr("bob@b.example"));
    let log1 = format!("{T0_TEXT} a.example accepted from 192.0.2.7 for bob@b.example\n");
    let log2 = "2026-11-26T02:00:05Z b.example accepted from 192.0.2.10 for bob@b.example\n";

    // Version 0, built by Content::plaintext, then logged and signed.
    let mut m0 = report_content().plaintext(&alice_a, &bob_b).unwrap();
    let h0 = m0.hash();
    assert_eq!(h0[..], v.get("message_v0_hash")[..]);
    assert_eq!(sha256(&v.get("message_v0_hash_input")), h0);
    m0.log = log1.clone().into_bytes();
    m0.trailer = sign_trailer(&server_a(), &h0);
    check_message(&v, "message_v0", &m0, &h0);
    verify_trailer(&server_a().public(), &h0, &m0.trailer).unwrap();
    assert_eq!(open(&m0, None).unwrap().content, report_content());

    // Version 1 as submitted (no log, zero trailer) and as stored by b.example.
    let mut m1 = Message {
        version: 1,
        destination: bob_b.clone(),
        source: Source::user(alice_a.clone()),
        log: Vec::new(),
        body: content.peek("sealed_body"),
        attachments: vec![
            content.peek("sealed_attachment_1"),
            content.peek("sealed_attachment_2"),
        ],
        trailer: [0; 64],
    };
    let h1 = a32(&v.get("message_v1_hash"));
    check_message(&v, "message_v1_submitted", &m1, &h1);
    let trailer = sign_trailer(&server_a(), &h1);
    assert_eq!(trailer[..], v.get("message_v1_trailer")[..]);
    m1.log = format!("{log1}{log2}").into_bytes();
    m1.trailer = trailer;
    check_message(&v, "message_v1", &m1, &h1);
    verify_trailer(&server_a().public(), &h1, &m1.trailer).unwrap();
    assert!(verify_trailer(&server_b().public(), &h1, &m1.trailer).is_err());
    let opened = open(&m1, Some(&bob())).unwrap();
    assert_eq!(opened.content, report_content());
    opened.verify_sender(&m1, &alice().public()).unwrap();

    // The server's notice: empty source account.
    let hn = a32(&v.get("message_notice_hash"));
    let notice = Message {
        version: 1,
        destination: alice_a.clone(),
        source: Source::server(dom("a.example")),
        log: Vec::new(),
        body: content.peek("notice_sealed_body"),
        attachments: Vec::new(),
        trailer: sign_trailer(&server_a(), &hn),
    };
    check_message(&v, "message_notice", &notice, &hn);
    let opened = open(&notice, Some(&alice())).unwrap();
    assert_eq!(opened.content, notice_content());
    opened.verify_sender(&notice, &server_a().public()).unwrap();
    v.finish();
}

// -------------------------------------------------------------- statements

#[test]
fn statements_hex() {
    let v = Vectors::load("statements.hex");
    let message = Vectors::load("message.hex");
    let (a, b) = (dom("a.example"), dom("b.example"));
    let exp = T0 + 30 * DAY;

    let check = |name: &str, s: &KeyStatement, signer: &IdentityKey| {
        let bytes = v.get(name);
        assert_eq!(s.to_bytes(), bytes, "encode {name}");
        let back = KeyStatement::decode(&bytes).unwrap();
        assert_eq!(&back, s, "decode {name}");
        back.verify(&signer.public(), s.account.as_ref(), &s.domain, T0)
            .unwrap();
        back.verify(&signer.public(), s.account.as_ref(), &s.domain, exp - 1)
            .unwrap();
        assert!(
            back.verify(&signer.public(), s.account.as_ref(), &s.domain, exp)
                .is_err()
        );
    };
    let alice_st = KeyStatement::issue(
        &server_a(),
        Some(acc("alice")),
        a.clone(),
        alice().public(),
        T0,
        exp,
    );
    check("key_statement_alice", &alice_st, &server_a());
    let bob_st = KeyStatement::issue(
        &server_b(),
        Some(acc("bob")),
        b.clone(),
        bob().public(),
        T0,
        exp,
    );
    check("key_statement_bob", &bob_st, &server_b());
    let own = KeyStatement::issue(&server_a(), None, a.clone(), server_a().public(), T0, exp);
    check("key_statement_server", &own, &server_a());

    let rot = |name: &str, r: &Rotation| {
        let bytes = v.get(name);
        let mut enc = Vec::new();
        r.encode(&mut enc);
        assert_eq!(enc, bytes, "encode {name}");
        let mut rd = Reader::new(&bytes);
        let back = Rotation::read(&mut rd).unwrap();
        rd.finish("rotation").unwrap();
        assert_eq!(&back, r, "decode {name}");
        back.verify().unwrap();
    };
    let r1 = Rotation::issue(
        &server_a_old1(),
        server_a_old2().public(),
        a.clone(),
        T0 - 400 * DAY,
    );
    rot("rotation_1", &r1);
    let r2 = Rotation::issue(
        &server_a_old2(),
        server_a().public(),
        a.clone(),
        T0 - 30 * DAY,
    );
    rot("rotation_2", &r2);

    let bundle = ServerKeyBundle {
        statement: own,
        rotations: vec![r1, r2],
    };
    let bytes = v.get("server_key_bundle");
    assert_eq!(bundle.to_bytes(), bytes);
    let back = ServerKeyBundle::decode(&bytes).unwrap();
    assert_eq!(back, bundle);
    assert_eq!(back.verify_self(&a, T0).unwrap(), server_a().public());
    for pinned in [server_a_old1(), server_a_old2(), server_a()] {
        back.check_against_pin(&pinned.public(), &a).unwrap();
    }
    assert!(back.check_against_pin(&server_b().public(), &a).is_err());

    let bundle_b = ServerKeyBundle {
        statement: KeyStatement::issue(&server_b(), None, b.clone(), server_b().public(), T0, exp),
        rotations: Vec::new(),
    };
    let bytes = v.get("server_key_bundle_no_rotations");
    assert_eq!(bundle_b.to_bytes(), bytes);
    let back = ServerKeyBundle::decode(&bytes).unwrap();
    assert_eq!(back, bundle_b);
    assert_eq!(back.verify_self(&b, T0).unwrap(), server_b().public());

    let hash = a32(&message.peek("message_v1_hash"));
    let statement = ReceiptBody {
        hash,
        accepted_at: T0 + 5,
        domain: b.clone(),
    };
    assert_eq!(statement.to_bytes(), v.get("receipt_statement"));
    let receipt = Receipt::issue(&server_b(), statement, nonce(), 7);
    let bytes = v.get("receipt");
    assert_eq!(receipt.to_bytes(), bytes);
    let back = Receipt::decode(&bytes).unwrap();
    assert_eq!(back, receipt);
    back.verify(&server_b().public(), &hash).unwrap();
    assert!(back.verify(&server_a().public(), &hash).is_err());

    // §9.6 safety numbers: the same from either side.
    let number = String::from_utf8(v.get("safety_number")).unwrap();
    let (al, bo) = (addr("alice@a.example"), addr("bob@b.example"));
    let (ka, kb) = (alice().public(), bob().public());
    assert_eq!(safety_number((&al, &ka), (&bo, &kb)), number);
    assert_eq!(safety_number((&bo, &kb), (&al, &ka)), number);
    v.finish();
}

// ----------------------------------------------------------------- payload

#[test]
fn payload_hex() {
    let v = Vectors::load("payload.hex");
    let message = Vectors::load("message.hex");
    let alice_a = addr("alice@a.example");

    let g = Greeting {
        domain: dom("a.example"),
        software: "cmtpd 0.1.0".into(),
        extensions: ["REGISTER", "LOGIN-OPAQUE", "MAILBOX", "RELAY"]
            .map(String::from)
            .to_vec(),
        key: server_a().public(),
        nonce: nonce(),
        max_message_size: 67_108_864,
        max_attachments: 64,
    };
    let bytes = v.get("greeting_text");
    assert_eq!(g.to_text().as_bytes(), bytes);
    assert_eq!(Greeting::parse(&bytes).unwrap(), g);

    for reason in FailureReason::ALL {
        let name = format!("delivery_failure_{}", reason.word().to_lowercase());
        let text = match reason {
            FailureReason::NoSuchUser => "no such user: bob@b.example".to_owned(),
            r => format!("reason {}", r.word().to_lowercase()),
        };
        let f = DeliveryFailure::new(reason, text);
        let bytes = v.get(&name);
        assert_eq!(f.to_bytes(), bytes, "encode {name}");
        assert_eq!(DeliveryFailure::decode(&bytes).unwrap(), f, "decode {name}");
    }

    let lc = LoginChallenge {
        ksf: KsfParams::RECOMMENDED,
        ke2: vec![0x66; 320],
    };
    let bytes = v.get("login_challenge");
    assert_eq!(lc.to_bytes(), bytes);
    assert_eq!(LoginChallenge::decode(&bytes).unwrap(), lc);

    let export_key = [0x77; 64];
    let x = Xzibit::seal_with_nonce(&export_key, "alice@a.example", &alice(), T0, &[0x88; 24]);
    let xbytes = v.get("xzibit");
    assert_eq!(x.to_bytes(), xbytes);
    assert_eq!(Xzibit::decode(&xbytes).unwrap(), x);
    let (k, created) = x.open(&export_key, "alice@a.example").unwrap();
    assert_eq!((k.public(), created), (alice().public(), T0));

    let rel = XzibitRelease::issue(&server_a(), &alice_a, xbytes.clone());
    let bytes = v.get("xzibit_release");
    assert_eq!(rel.to_bytes(), bytes);
    let back = XzibitRelease::decode(&bytes).unwrap();
    assert_eq!(back, rel);
    assert_eq!(back.verify(&server_a().public(), &alice_a).unwrap(), x);
    assert!(
        back.verify(&server_a().public(), &addr("bob@a.example"))
            .is_err()
    );

    let offer = RegistrationOffer {
        response: vec![0x99; 64],
        floor: KsfParams::RECOMMENDED,
    };
    let bytes = v.get("registration_offer");
    assert_eq!(offer.to_bytes(), bytes);
    assert_eq!(RegistrationOffer::decode(&bytes).unwrap(), offer);

    let bundle = RegistrationBundle::new(
        &alice_a,
        &channel_binding(),
        &alice(),
        vec![0xab; 192],
        KsfParams::RECOMMENDED,
        xbytes,
    );
    let bytes = v.get("registration_bundle");
    assert_eq!(bundle.to_bytes(), bytes);
    let back = RegistrationBundle::decode(&bytes).unwrap();
    assert_eq!(back, bundle, "decode registration_bundle");
    back.verify(&alice_a, &channel_binding()).unwrap();
    assert!(
        back.verify(&addr("bob@a.example"), &channel_binding())
            .is_err()
    );
    assert!(
        back.verify(&alice_a, &[0; 32]).is_err(),
        "bound to its connection"
    );
    assert_eq!(
        cmtp_proto::crypto::opaque::login_context(&channel_binding()),
        v.get("opaque_login_context")
    );

    let entries = vec![
        ListingEntry {
            id: 1,
            size: message.peek("message_v1").len() as u64,
            received_at: T0 + 5,
            hash: a32(&message.peek("message_v1_hash")),
            version: 1,
            attachment_count: 2,
            source_account: Some(acc("alice")),
            source_domain: dom("a.example"),
        },
        ListingEntry {
            id: 7,
            size: message.peek("message_notice").len() as u64,
            received_at: T0 + 60,
            hash: a32(&message.peek("message_notice_hash")),
            version: 1,
            attachment_count: 0,
            source_account: None,
            source_domain: dom("a.example"),
        },
    ];
    let bytes = v.get("listing");
    assert_eq!(encode_listing(&entries), bytes);
    assert_eq!(decode_listing(&bytes).unwrap(), entries);
    let bytes = v.get("listing_empty");
    assert_eq!(encode_listing(&[]), bytes);
    assert_eq!(decode_listing(&bytes).unwrap(), []);

    // §13.2–§13.4: mailbox synchronisation.
    let notice = Summary {
        uid: 2,
        modseq: 5,
        flags: 0,
        folder: Folder::inbox(),
        size: message.peek("message_notice").len() as u64,
        received_at: T0 + 60,
        hash: a32(&message.peek("message_notice_hash")),
        version: 1,
        attachment_count: 0,
        source_account: None,
        source_domain: dom("a.example"),
    };
    let first = Summary {
        uid: 1,
        modseq: 4,
        flags: mailbox::SEEN | mailbox::FLAGGED,
        folder: Folder::inbox(),
        size: message.peek("message_v1").len() as u64,
        received_at: T0 + 5,
        hash: a32(&message.peek("message_v1_hash")),
        version: 1,
        attachment_count: 2,
        source_account: Some(acc("alice")),
        source_domain: dom("a.example"),
    };
    let page = ListingPage {
        epoch: 3,
        modseq: 6,
        entries: vec![notice, first.clone()],
    };
    let bytes = v.get("listing_page");
    assert_eq!(page.to_bytes(), bytes);
    assert_eq!(ListingPage::decode(&bytes).unwrap(), page);
    let sent = Summary {
        modseq: 7,
        flags: mailbox::SEEN,
        folder: Folder::sent(),
        ..first
    };
    let set = ChangeSet {
        epoch: 3,
        modseq: 9,
        more: true,
        changes: vec![Change::Message(sent), Change::Removed { uid: 2, modseq: 8 }],
    };
    let bytes = v.get("change_set");
    assert_eq!(set.to_bytes(), bytes);
    assert_eq!(ChangeSet::decode(&bytes).unwrap(), set);
    assert_eq!(set.seen_up_to(), 8);
    let empty = ChangeSet {
        epoch: 3,
        modseq: 9,
        more: false,
        changes: vec![],
    };
    let bytes = v.get("change_set_empty");
    assert_eq!(empty.to_bytes(), bytes);
    assert_eq!(ChangeSet::decode(&bytes).unwrap(), empty);
    let r = FlagsResult {
        modseq: 10,
        changed: 2,
    };
    let bytes = v.get("flags_result");
    assert_eq!(r.to_bytes(), bytes);
    assert_eq!(FlagsResult::decode(&bytes).unwrap(), r);
    v.finish();
}

/// The consumption check itself: a file with a vector no test asks for fails.
#[test]
fn an_unchecked_vector_is_noticed() {
    let v = Vectors::load("banner.hex");
    let names = v.names();
    for n in &names[1..] {
        v.get(n);
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.finish()));
    assert!(r.is_err(), "{} unused but not reported", names[0]);
}
