//! `decode_reply` and the streaming `ReplyDecoder` (PROTOCOL.md §5.1): no
//! panics; both agree on every input however it is chunked; a decoded reply
//! re-encodes to the same bytes and decodes back.
#![no_main]

use cmtp_proto::reply::{Reply, ReplyDecoder, ReplyError, ReplyEvent, ReplyHeader, decode_reply};
use libfuzzer_sys::fuzz_target;

/// The body limit cmtp's client uses for every command but FETCH.
const MAX_BODY: u64 = 1 << 20;

/// What the streaming decoder makes of `data` fed in chunks of `step`.
fn stream(data: &[u8], step: usize) -> (Result<Option<(Reply, usize)>, ReplyError>, Option<ReplyHeader>) {
    let mut dec = ReplyDecoder::new(MAX_BODY);
    let mut buf = Vec::new();
    let mut used = 0;
    let (mut header, mut body) = (None, Vec::new());
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let (n, ev) = match dec.next(&buf) {
                Ok(x) => x,
                Err(e) => return (Err(e), header),
            };
            assert!(n <= buf.len());
            let done = match ev {
                None => {
                    assert_eq!(n, 0, "bytes used without an event");
                    true
                }
                Some(ReplyEvent::Header(h)) => {
                    header = Some(h);
                    false
                }
                Some(ReplyEvent::Body(c)) => {
                    assert!(!c.is_empty(), "empty body chunk");
                    body.extend_from_slice(c);
                    false
                }
                Some(ReplyEvent::End(signature)) => {
                    let h: &ReplyHeader = header.as_ref().expect("end before header");
                    assert_eq!(h.body_len, body.len() as u64);
                    let reply = Reply {
                        version: h.version,
                        status: h.status.clone(),
                        body: std::mem::take(&mut body),
                        signature,
                    };
                    return (Ok(Some((reply, used + n))), header);
                }
            };
            used += n;
            buf.drain(..n);
            if done {
                break;
            }
        }
    }
    (Ok(None), header)
}

fuzz_target!(|data: &[u8]| {
    let whole = decode_reply(data, MAX_BODY);
    if let Ok(Some((_, n))) = &whole {
        assert!(*n <= data.len());
    }
    let step = data.first().map_or(1, |b| usize::from(*b % 32) + 1);
    for s in [step, data.len().max(1)] {
        let (streamed, header) = stream(data, s);
        assert_eq!(streamed, whole, "streaming in chunks of {s} disagrees");
        if let Ok(Some((r, _))) = &whole {
            assert_eq!(header.as_ref(), Some(&r.header()));
        }
    }
    match ReplyHeader::decode(data) {
        Ok(Some((h, n))) => {
            let mut enc = Vec::new();
            h.encode(&mut enc);
            assert_eq!(ReplyHeader::decode(&enc), Ok(Some((h, n))));
            assert_eq!(enc[..], data[..n]);
        }
        Ok(None) => assert!(matches!(whole, Ok(None))),
        Err(e) => assert_eq!(whole, Err(e)),
    }
    if let Ok(Some((r, n))) = whole {
        let mut enc = Vec::new();
        r.encode(&mut enc);
        assert_eq!(enc[..], data[..n], "re-encoding differs");
        assert_eq!(decode_reply(&enc, MAX_BODY), Ok(Some((r, n))));
    }
});
