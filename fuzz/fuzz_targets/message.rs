//! `MessageReader` and `Message::decode` (PROTOCOL.md §7): no panics under
//! small limits; the reader sees the same events however the input is
//! chunked, never uses more than it was given and respects every announced
//! length; a decoded message re-encodes, decodes back, and its hash is
//! `Message::hash` (§7.2).
#![no_main]

use cmtp_proto::limits::MessageLimits;
use cmtp_proto::message::{Message, MessageError, MessageEvent, MessageReader};
use libfuzzer_sys::fuzz_target;

const LIMITS: MessageLimits = MessageLimits {
    max_message_size: 4096,
    max_attachments: 4,
    max_log: 512,
    max_hops: 30,
};

/// A normalised trace of the reader's events.
#[derive(Debug, PartialEq)]
enum Ev {
    Envelope(String),
    Log(Vec<u8>),
    Body(Vec<u8>),
    Attachment(u32, u64, Vec<u8>),
    End([u8; 64], [u8; 32]),
}

/// Reads `data` in chunks of `step`; the trace, bytes used, and the error if any.
fn read(data: &[u8], step: usize) -> (Vec<Ev>, usize, Option<MessageError>) {
    let mut r = MessageReader::new(LIMITS);
    let mut trace: Vec<Ev> = Vec::new();
    let mut buf = Vec::new();
    let mut used = 0usize;
    let mut lens = None;
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        while !r.is_done() {
            let (n, ev) = match r.next(&buf) {
                Ok(x) => x,
                Err(e) => return (trace, used, Some(e)),
            };
            assert!(n <= buf.len());
            let more = ev.is_some();
            match ev {
                None => {}
                Some(MessageEvent::Envelope(env)) => {
                    assert!(trace.is_empty(), "envelope not first");
                    lens = Some((env.log_len, env.body_len, env.attachment_count));
                    trace.push(Ev::Envelope(format!("{env:?} {:?}", env.parse())));
                }
                Some(MessageEvent::Log(b)) => match trace.last_mut() {
                    Some(Ev::Log(l)) => l.extend_from_slice(b),
                    _ => trace.push(Ev::Log(b.to_vec())),
                },
                Some(MessageEvent::Body(b)) => match trace.last_mut() {
                    Some(Ev::Body(l)) => l.extend_from_slice(b),
                    _ => trace.push(Ev::Body(b.to_vec())),
                },
                Some(MessageEvent::AttachmentStart { index, len }) => {
                    trace.push(Ev::Attachment(index, len, Vec::new()))
                }
                Some(MessageEvent::Attachment(b)) => match trace.last_mut() {
                    Some(Ev::Attachment(_, _, a)) => a.extend_from_slice(b),
                    _ => panic!("attachment bytes before its start"),
                },
                Some(MessageEvent::End { trailer, hash }) => trace.push(Ev::End(trailer, hash)),
            }
            buf.drain(..n);
            used += n;
            if !more {
                break;
            }
        }
    }
    assert_eq!(used as u64, r.consumed());
    if r.is_done() {
        // Every announced length was honoured.
        let (log_len, body_len, count) = lens.expect("done without an envelope");
        let log: usize = trace.iter().map(|e| if let Ev::Log(l) = e { l.len() } else { 0 }).sum();
        let body: usize = trace.iter().map(|e| if let Ev::Body(l) = e { l.len() } else { 0 }).sum();
        assert_eq!(log as u64, log_len);
        assert_eq!(body as u64, body_len);
        let atts: Vec<&Ev> = trace.iter().filter(|e| matches!(e, Ev::Attachment(..))).collect();
        assert_eq!(atts.len() as u64, u64::from(count));
        for (i, a) in atts.iter().enumerate() {
            let Ev::Attachment(index, len, bytes) = a else { unreachable!() };
            assert_eq!(*index as usize, i);
            assert_eq!(bytes.len() as u64, *len);
        }
        assert!(used as u64 <= LIMITS.max_message_size);
        assert!(matches!(trace.last(), Some(Ev::End(..))));
    }
    (trace, used, None)
}

fn reader_hash(trace: &[Ev]) -> Option<[u8; 32]> {
    match trace.last() {
        Some(Ev::End(_, h)) => Some(*h),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |b| usize::from(*b % 61) + 1);
    let whole = read(data, data.len().max(1));
    let split = read(data, step);
    // The same events and the same verdict. (After a refusal the count of
    // bytes used may differ: a reader fed in pieces has already taken the
    // first bytes of a fixed-size field, which is fine.)
    assert_eq!((&whole.0, &whole.2), (&split.0, &split.2), "chunks of {step} disagree");
    if whole.2.is_none() {
        assert_eq!(whole.1, split.1, "chunks of {step} use a different number of bytes");
    }
    let (trace, used, _) = whole;

    match Message::decode(data, LIMITS) {
        Ok(m) => {
            assert_eq!(used, data.len());
            let enc = m.to_bytes();
            assert_eq!(enc.len(), m.encoded_len());
            let back = Message::decode(&enc, LIMITS).expect("re-encoding refused");
            assert_eq!(back, m);
            // The reader's hash of the re-encoding is Message::hash.
            let (t2, used2, err2) = read(&enc, step);
            assert_eq!((used2, err2), (enc.len(), None));
            assert_eq!(reader_hash(&t2), Some(m.hash()));
            // The same holds for the input itself when its names were canonical.
            if enc == data {
                assert_eq!(reader_hash(&trace), Some(m.hash()));
            }
        }
        Err(_) => {}
    }
});
