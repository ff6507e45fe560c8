//! The byte transport under a probe connection (PROTOCOL.md §4.1, §4.4).
//!
//! Every rule talks to the target through [`Transport`]: connect, read the
//! banner in clear, then run TLS 1.3 (rustls) and move the protocol's bytes
//! inside it; close. A rule that must speak in clear after the banner (an
//! SMTP line, a CMTP/1 command) or send hand-made TLS records simply does
//! not start TLS. The checker's own served domain uses the same type on the
//! accepting side, with [`rustls::server::Acceptor`].
//!
//! Reads wait until a deadline, so that a rule can tell "nothing came" from
//! "the peer closed" (TCP end, TLS close_notify, or a TLS alert).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use cmtp_proto::crypto::PublicKey;
use cmtp_proto::tls::{CHANNEL_BINDING_LEN, EXPORTER_LABEL, ServerTlsConfig};

/// What a read until a deadline gave.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// Bytes arrived (appended to the caller's buffer).
    Data,
    /// The peer closed its side, reset the connection or broke TLS
    /// ([`Transport::closed_why`] says which).
    Closed,
    /// Nothing arrived before the deadline.
    Timeout,
}

/// What the TLS handshake established.
#[derive(Debug, Clone)]
pub(crate) struct TlsInfo {
    /// The negotiated protocol version (`TLSv1_3`).
    pub(crate) version: String,
    /// The negotiated key-exchange group.
    pub(crate) group: String,
    /// The ALPN protocol agreed on, if any.
    pub(crate) alpn: Option<Vec<u8>>,
    /// The first certificate entry the peer showed (a raw public key's
    /// SubjectPublicKeyInfo, or an X.509 certificate), if any.
    pub(crate) peer_cert: Option<Vec<u8>>,
    /// The TLS exporter value logins bind to (PROTOCOL.md §12).
    pub(crate) channel_binding: [u8; CHANNEL_BINDING_LEN],
}

impl TlsInfo {
    /// The Ed25519 key of a raw public key entry, if it is one.
    pub(crate) fn raw_key(&self) -> Option<PublicKey> {
        self.peer_cert
            .as_deref()
            .and_then(cmtp_proto::tls::key_from_spki)
    }
}

/// One connection to the target (or, for the served domain, from a peer).
pub(crate) struct Transport {
    stream: TcpStream,
    /// TLS, once started; until then bytes move in clear.
    tls: Option<rustls::Connection>,
    /// Why the connection counts as closed, when it is.
    closed_why: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.stream.peer_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Resolves `target` (`host:port`) to its first address.
pub(crate) fn resolve(target: &str) -> io::Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{target} has no address")))
}

impl Transport {
    /// Connects within `timeout` (in clear: the banner comes first).
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Transport> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        Transport::accepted(stream, timeout)
    }

    /// Wraps an accepted stream (the checker's own served domain).
    pub(crate) fn accepted(stream: TcpStream, timeout: Duration) -> io::Result<Transport> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Transport {
            stream,
            tls: None,
            closed_why: None,
        })
    }

    /// Why the connection closed, if a read said so: "the peer closed the
    /// connection", a TLS alert, a reset.
    pub(crate) fn closed_why(&self) -> &str {
        self.closed_why
            .as_deref()
            .unwrap_or("the peer closed the connection")
    }

    /// Writes all of `bytes`: in clear before TLS, encrypted after.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes)?,
            Some(tls) => {
                // The buffer limit is lifted: this never writes short.
                tls.writer().write_all(bytes)?;
                flush_tls(tls, &mut self.stream)?;
            }
        }
        self.stream.flush()
    }

    /// Reads what is available into `buf` (plaintext once TLS runs),
    /// waiting until `deadline` at most.
    pub(crate) fn read_until(&mut self, buf: &mut Vec<u8>, deadline: Instant) -> ReadOutcome {
        if self.closed_why.is_some() {
            return ReadOutcome::Closed;
        }
        loop {
            if let Some(tls) = &mut self.tls {
                match take_plaintext(tls, buf) {
                    Ok(Plain::Data) => return ReadOutcome::Data,
                    Ok(Plain::Closed) => {
                        return self.closed("the peer closed TLS (close_notify)");
                    }
                    Ok(Plain::Nothing) => {}
                    Err(e) => return self.closed(&format!("TLS: {e}")),
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = match self.read_raw(&mut chunk, deadline) {
                Ok(Some(n)) => n,
                Ok(None) => return ReadOutcome::Timeout,
                Err(why) => return self.closed(&why),
            };
            match &mut self.tls {
                None => {
                    buf.extend_from_slice(&chunk[..n]);
                    return ReadOutcome::Data;
                }
                Some(tls) => {
                    if let Err(why) = feed(tls, &chunk[..n], &mut self.stream) {
                        return self.closed(&why);
                    }
                }
            }
        }
    }

    fn closed(&mut self, why: &str) -> ReadOutcome {
        self.closed_why.get_or_insert_with(|| why.to_owned());
        ReadOutcome::Closed
    }

    /// One read from the socket: `Ok(None)` at the deadline, `Err` when
    /// the peer is gone (`Ok(0)` included).
    fn read_raw(&mut self, chunk: &mut [u8], deadline: Instant) -> Result<Option<usize>, String> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if self.stream.set_read_timeout(Some(deadline - now)).is_err() {
                return Err("the socket failed".into());
            }
            match self.stream.read(chunk) {
                Ok(0) => return Err("the peer closed the connection".into()),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(format!("the connection failed: {e}")),
            }
        }
    }

    /// Runs the TLS handshake with `conn` (a client connection whose
    /// ClientHello may already have been sent, or a server connection
    /// from [`accept_tls`](Self::accept_tls)), first feeding it `early`:
    /// bytes that arrived in clear after the banner. On success the
    /// connection carries its bytes inside TLS.
    pub(crate) fn handshake(
        &mut self,
        mut conn: rustls::Connection,
        early: &[u8],
        deadline: Instant,
    ) -> Result<TlsInfo, String> {
        conn.set_buffer_limit(None);
        if !early.is_empty() {
            feed(&mut conn, early, &mut self.stream)?;
        }
        let mut chunk = [0u8; 16 * 1024];
        while conn.is_handshaking() {
            flush_tls(&mut conn, &mut self.stream)
                .map_err(|e| format!("writing the handshake failed: {e}"))?;
            if !conn.is_handshaking() {
                break;
            }
            let n = match self.read_raw(&mut chunk, deadline) {
                Ok(Some(n)) => n,
                Ok(None) => return Err("the handshake did not complete in time".into()),
                Err(why) => return Err(format!("{why} during the handshake")),
            };
            feed(&mut conn, &chunk[..n], &mut self.stream)?;
        }
        // The client's Finished (and anything else owed) goes out now.
        flush_tls(&mut conn, &mut self.stream).map_err(|e| e.to_string())?;
        let mut channel_binding = [0u8; CHANNEL_BINDING_LEN];
        conn.export_keying_material(&mut channel_binding, EXPORTER_LABEL, None)
            .map_err(|e| format!("no channel binding: {e}"))?;
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            group: conn
                .negotiated_key_exchange_group()
                .map(|g| cmtp_proto::tls::group_name(g.name()))
                .unwrap_or_else(|| "none".into()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
            channel_binding,
        };
        self.tls = Some(conn);
        Ok(info)
    }

    /// The accepting side: reads the peer's ClientHello (the first bytes
    /// of which are `first`), picks the configuration for the certificate
    /// types it offers (a raw public key, or the self-issued certificate),
    /// and completes the handshake.
    pub(crate) fn accept_tls(
        &mut self,
        configs: &ServerTlsConfig,
        first: &[u8],
        deadline: Instant,
    ) -> Result<TlsInfo, String> {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut pending = first.to_vec();
        let mut chunk = [0u8; 16 * 1024];
        let accepted = loop {
            let mut rd = pending.as_slice();
            while !rd.is_empty() {
                acceptor
                    .read_tls(&mut rd)
                    .map_err(|e| format!("the ClientHello: {e}"))?;
            }
            pending.clear();
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => {}
                Err((e, mut alert)) => {
                    let _ = alert.write(&mut self.stream);
                    return Err(e.to_string());
                }
            }
            match self.read_raw(&mut chunk, deadline) {
                Ok(Some(n)) => pending.extend_from_slice(&chunk[..n]),
                Ok(None) => return Err("no ClientHello in time".into()),
                Err(why) => return Err(why),
            }
        };
        let config = configs.for_client(accepted.client_hello().server_cert_types());
        let conn = accepted.into_connection(config).map_err(|(e, mut alert)| {
            let _ = alert.write(&mut self.stream);
            e.to_string()
        })?;
        self.handshake(rustls::Connection::Server(conn), &[], deadline)
    }

    /// Closes our sending side (TLS's close_notify first, once TLS runs);
    /// the peer sees the end of the stream.
    pub(crate) fn shutdown_write(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = flush_tls(tls, &mut self.stream);
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// The bytes `conn` wants to send (a ClientHello, before anything arrived).
pub(crate) fn pending_output(conn: &mut rustls::Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

/// Writes what TLS has to send.
fn flush_tls(tls: &mut rustls::Connection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(stream)?;
    }
    Ok(())
}

/// Hands received bytes to TLS; on a TLS error, sends its alert and says why.
fn feed(tls: &mut rustls::Connection, mut rd: &[u8], stream: &mut TcpStream) -> Result<(), String> {
    while !rd.is_empty() {
        tls.read_tls(&mut rd).map_err(|e| format!("TLS: {e}"))?;
        if let Err(e) = tls.process_new_packets() {
            let _ = flush_tls(tls, stream);
            return Err(format!("TLS: {e}"));
        }
    }
    // Anything TLS owes the peer after what came (a key update, an alert).
    let _ = flush_tls(tls, stream);
    Ok(())
}

/// What [`take_plaintext`] found.
enum Plain {
    /// Bytes were appended.
    Data,
    /// Nothing yet.
    Nothing,
    /// The peer closed TLS in order (close_notify), nothing left.
    Closed,
}

/// Moves decrypted bytes into `buf`.
fn take_plaintext(tls: &mut rustls::Connection, buf: &mut Vec<u8>) -> io::Result<Plain> {
    let mut chunk = [0u8; 16 * 1024];
    let mut any = false;
    let done = |any: bool, otherwise: Plain| if any { Plain::Data } else { otherwise };
    loop {
        match tls.reader().read(&mut chunk) {
            // Ok(0): close_notify, after the last byte (rustls's reader).
            Ok(0) => return Ok(done(any, Plain::Closed)),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                any = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(done(any, Plain::Nothing));
            }
            // Hand over what came; the error shows on the next read.
            Err(_) if any => return Ok(Plain::Data),
            Err(e) => return Err(e),
        }
    }
}
