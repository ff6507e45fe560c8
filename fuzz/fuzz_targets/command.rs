//! `decode_command` (PROTOCOL.md §4.2): no panics; every decoded command
//! re-encodes to bytes that decode to the same command and are consumed
//! exactly; a stream decodes the same whether it arrives whole or in two
//! pieces (split point from the first byte).
#![no_main]

use cmtp_proto::command::{Command, CommandError, decode_command};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Outcome {
    Command(Command),
    Refused(CommandError, bool),
}

/// Feeds `pieces` one after the other to a connection-like loop: decode,
/// drop what was used, skip refused commands whose framing survived, stop at
/// a refusal that loses the framing.
fn run(pieces: &[&[u8]]) -> Vec<Outcome> {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode_command(&buf) {
                Ok(None) => break,
                Ok(Some((cmd, used))) => {
                    assert!(used > 0 && used <= buf.len(), "used {used} of {}", buf.len());
                    check_round_trip(&cmd, &buf[..used]);
                    out.push(Outcome::Command(cmd));
                    buf.drain(..used);
                }
                Err(e) => match e.resume_at {
                    Some(n) => {
                        assert!(n > 0 && n <= buf.len(), "resume at {n} of {}", buf.len());
                        out.push(Outcome::Refused(e.kind, true));
                        buf.drain(..n);
                    }
                    None => {
                        out.push(Outcome::Refused(e.kind, false));
                        return out;
                    }
                },
            }
        }
    }
    out
}

fn check_round_trip(cmd: &Command, frame: &[u8]) {
    let enc = cmd.to_bytes();
    let (back, used) = decode_command(&enc)
        .unwrap_or_else(|e| panic!("re-encoding of {cmd:?} refused: {e}"))
        .unwrap_or_else(|| panic!("re-encoding of {cmd:?} incomplete"));
    assert_eq!(&back, cmd);
    assert_eq!(used, enc.len(), "re-encoding not consumed exactly");
    // Every proper prefix of an encoding needs more bytes.
    for cut in [0, enc.len() / 2, enc.len() - 1] {
        assert_eq!(decode_command(&enc[..cut]), Ok(None), "{cmd:?} cut at {cut}");
    }
    // Only names are normalised: equal bytes unless the frame had a
    // non-canonical name (upper case, trailing dot).
    if enc != frame {
        assert!(
            matches!(
                cmd,
                Command::KeyRequest { .. } | Command::Login { .. } | Command::Register { .. }
            ),
            "{cmd:?}: {frame:?} re-encodes as {enc:?}"
        );
        assert!(enc.len() <= frame.len());
    }
}

fuzz_target!(|data: &[u8]| {
    // One command from the front of the buffer, and its two-piece view.
    let whole = decode_command(data);
    if !data.is_empty() {
        let split = usize::from(data[0]) % (data.len() + 1);
        match decode_command(&data[..split]) {
            Ok(None) => {}
            prefix => assert_eq!(prefix, whole, "prefix of {split} bytes disagrees"),
        }
        // The whole stream, whole and in two pieces.
        let a = run(&[data]);
        let b = run(&[&data[..split], &data[split..]]);
        assert_eq!(a, b, "split at {split}");
    }
});
