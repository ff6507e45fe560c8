//! A nameserver on 127.0.0.1 that answers NXDOMAIN to every question, so
//! that the `relay` servers (routed by static routes) never ask a real
//! resolver: their only lookup is the optional `_cmtpkey` TXT record.

use std::net::{SocketAddr, UdpSocket};

/// Starts the responder on a thread; returns its address. The thread lives
/// as long as the process.
pub(crate) fn start_nxdomain() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::Builder::new()
        .name("bench-dns".into())
        .spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = nxdomain(&buf[..n]) {
                    let _ = socket.send_to(&answer, peer);
                }
            }
        })?;
    Ok(addr)
}

/// The NXDOMAIN answer to a query: its header with QR, RA and RCODE 3 set,
/// and its first question; no records.
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // End of the first question: its name (labels; no compression in
    // queries), then type and class.
    let mut pos = 12;
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        pos += len;
    }
    let end = pos + 4;
    if end > query.len() {
        return None;
    }
    let mut out = query[..end].to_vec();
    out[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
    out[3] = 0x80 | 3; // RA, NXDOMAIN
    out[4..6].copy_from_slice(&[0, 1]); // one question
    out[6..12].copy_from_slice(&[0; 6]); // no answer, authority or additional records
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_nxdomain_with_the_question() {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend_from_slice(b"\x08_cmtpkey\x01a\x04test\x00\x00\x10\x00\x01");
        q.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]); // EDNS OPT
        let a = nxdomain(&q).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[2], 0x81);
        assert_eq!(a[3] & 0x0f, 3);
        assert_eq!(&a[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(a.len(), 12 + 17 + 4);
        assert!(nxdomain(&a).is_none(), "answers are not answered");
    }
}
