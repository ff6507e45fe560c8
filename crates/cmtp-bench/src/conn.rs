//! A lean CMTP/2 connection for load generation (PROTOCOL.md §4.1, §5):
//! TLS 1.3 through rustls (the configuration of
//! `cmtp_proto::tls::ClientTlsConfig`, raw public keys, ALPN `cmtp/2`),
//! commands as pre-encoded bytes, replies decoded with
//! `cmtp_proto::reply::decode_reply`, and reply signatures checked only when
//! asked ([`BenchConn::verify`]), so that the generator's own crypto stays
//! out of the measurement. The TLS handshake itself is checked as the
//! client does it: the `cmtp/2` protocol agreed, an Ed25519 raw public key
//! shown, and the greeting signed by that same key. Setup (password login)
//! uses `cmtp_client::Connection`, which checks everything.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use cmtp_proto::account::key_login_signature;
use cmtp_proto::banner::{Banner, decode_banner};
use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::crypto::{IdentityKey, PublicKey, SignatureTag};
use cmtp_proto::names::Address;
use cmtp_proto::payload::Greeting;
use cmtp_proto::reply::{Reply, ReplyBinding, Status, body_hash, decode_reply};
use cmtp_proto::tls::{ALPN, ClientTlsConfig, NamedGroup, channel_binding, key_from_spki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest reply body the bench accepts (LIST of a big mailbox included).
pub(crate) const MAX_BODY: u64 = 64 << 20;

/// How long any single wait on the network may take before the bench gives up.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Size of the buffer a connection reads the socket into.
const READ_CHUNK: usize = 64 * 1024;

/// When the ClientHello goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hello {
    /// At once, before the banner arrives (what cmtp's client does: no
    /// round trip is lost).
    Early,
    /// After a `Ready` banner: a refused connection (`421`) costs the
    /// client no key share (the abuse scenario's attackers).
    AfterBanner,
}

/// How the TLS handshake of [`BenchConn::open`] went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handshake {
    /// The negotiated key-exchange group.
    pub(crate) group: Option<NamedGroup>,
}

/// Why [`BenchConn::open`] failed: a refusal banner is told apart from
/// everything else (the abuse scenario counts refusals, not errors).
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The server answered with its `421` banner.
    Busy(String),
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for OpenError {
    fn from(e: anyhow::Error) -> Self {
        OpenError::Other(e)
    }
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::Other(e.into())
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Busy(text) => write!(f, "server busy: {text}"),
            OpenError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// One protected connection.
pub(crate) struct BenchConn {
    stream: TcpStream,
    tls: Box<rustls::ClientConnection>,
    /// Decrypted bytes not yet decoded as replies.
    buf: Vec<u8>,
    /// TLS records to write.
    wire: Vec<u8>,
    /// What the socket gave, before TLS.
    rbuf: Vec<u8>,
    /// The server closed its side (close_notify or the end of the stream).
    eof: bool,
    /// Replies read so far (the sequence number of the next reply).
    seq: u64,
    /// Bytes read from the socket (the banner, TLS records).
    pub(crate) bytes_in: u64,
    /// Bytes written to the socket (TLS records).
    pub(crate) bytes_out: u64,
    /// The key the server showed in the TLS handshake.
    tls_key: Option<PublicKey>,
    /// The TLS exporter value logins bind to.
    pub(crate) channel_binding: [u8; 32],
    /// The greeting, after [`ohai`](Self::ohai).
    pub(crate) greeting: Option<Greeting>,
    /// What the handshake negotiated.
    pub(crate) handshake: Handshake,
}

impl BenchConn {
    /// Connects (from `source`, if given) with the default TLS configuration
    /// (hybrid post-quantum key exchange) and completes the handshake.
    pub(crate) async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> anyhow::Result<BenchConn> {
        BenchConn::open(
            addr,
            source,
            &ClientTlsConfig::default_shared(),
            Hello::Early,
        )
        .await
        .map_err(|e| match e {
            OpenError::Other(e) => e,
            busy => anyhow::anyhow!("{busy}"),
        })
    }

    /// Connects (from `source`, if given), reads the banner, completes the
    /// TLS handshake with `tls` and checks what it established.
    pub(crate) async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
        tls: &ClientTlsConfig,
        hello: Hello,
    ) -> Result<BenchConn, OpenError> {
        let stream = tokio::time::timeout(IO_TIMEOUT, tcp_connect(addr, source))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut session = tls.connect().context("a TLS client connection")?;
        session.set_buffer_limit(None);
        let mut c = BenchConn {
            stream,
            tls: Box::new(session),
            buf: Vec::with_capacity(1024),
            wire: Vec::new(),
            rbuf: Vec::new(),
            eof: false,
            seq: 0,
            bytes_in: 0,
            bytes_out: 0,
            tls_key: None,
            channel_binding: [0; 32],
            greeting: None,
            handshake: Handshake { group: None },
        };
        if hello == Hello::Early {
            c.flush_tls().await?;
        }
        // The banner, in clear; what follows it is TLS.
        let mut clear = Vec::with_capacity(256);
        loop {
            match decode_banner(&clear) {
                Ok(Some((banner, n))) => {
                    match banner {
                        Banner::Ready { .. } => {}
                        Banner::Busy { text, .. } => return Err(OpenError::Busy(text)),
                        other => {
                            return Err(anyhow::anyhow!("not a CMTP/2 server: {other:?}").into());
                        }
                    }
                    let rest = clear.split_off(n);
                    c.tls_input(&rest)?;
                    break;
                }
                Ok(None) => {
                    let n = c.read_socket().await?;
                    if n == 0 {
                        return Err(anyhow::anyhow!("the server closed before its banner").into());
                    }
                    clear.extend_from_slice(&c.rbuf[..n]);
                }
                Err(()) => return Err(anyhow::anyhow!("not a CMTP banner").into()),
            }
        }
        if hello == Hello::AfterBanner {
            c.flush_tls().await?;
        }
        while c.tls.is_handshaking() {
            c.fill_tls().await?;
            c.flush_tls().await?;
        }
        c.established()?;
        Ok(c)
    }

    /// The handshake is over: the protocol agreed, the key shown.
    fn established(&mut self) -> anyhow::Result<()> {
        if self.tls.alpn_protocol() != Some(ALPN) {
            bail!("the TLS handshake did not agree on cmtp/2");
        }
        self.tls_key = self
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| key_from_spki(c.as_ref()))
            .context("the server showed no Ed25519 raw public key")
            .map(Some)?;
        self.channel_binding = channel_binding(&self.tls).context("the TLS exporter")?;
        self.handshake.group = self.tls.negotiated_key_exchange_group().map(|g| g.name());
        Ok(())
    }

    /// Reads the socket into `rbuf`; the number of bytes (0: closed).
    async fn read_socket(&mut self) -> anyhow::Result<usize> {
        if self.rbuf.len() < READ_CHUNK {
            self.rbuf.resize(READ_CHUNK, 0);
        }
        let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut self.rbuf))
            .await
            .context("no answer from the server")??;
        self.bytes_in += n as u64;
        Ok(n)
    }

    /// Feeds TLS records to rustls and keeps the plaintext.
    fn tls_input(&mut self, mut rd: &[u8]) -> anyhow::Result<()> {
        while !rd.is_empty() {
            self.tls.read_tls(&mut rd).context("reading TLS")?;
            let io = match self.tls.process_new_packets() {
                Ok(io) => io,
                Err(e) => bail!("TLS: {e}"),
            };
            let n = io.plaintext_bytes_to_read();
            if n > 0 {
                let start = self.buf.len();
                self.buf.resize(start + n, 0);
                self.tls
                    .reader()
                    .read_exact(&mut self.buf[start..])
                    .context("TLS plaintext")?;
            }
            if io.peer_has_closed() {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Reads at least one more piece of the connection into TLS.
    async fn fill_tls(&mut self) -> anyhow::Result<()> {
        if self.eof {
            bail!("the server closed the connection");
        }
        let n = self.read_socket().await?;
        if n == 0 {
            self.eof = true;
            bail!("the server closed the connection");
        }
        let data = std::mem::take(&mut self.rbuf);
        let r = self.tls_input(&data[..n]);
        self.rbuf = data;
        r
    }

    /// Writes what TLS has to send.
    async fn flush_tls(&mut self) -> anyhow::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.wire).context("TLS output")?;
        }
        if !self.wire.is_empty() {
            tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(&self.wire))
                .await
                .context("the server does not read")??;
            self.bytes_out += self.wire.len() as u64;
            self.wire.clear();
        }
        Ok(())
    }

    /// Writes bytes (commands, messages, parts of messages), encrypted.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        // The buffer limit is lifted: this never writes short.
        self.tls.writer().write_all(bytes)?;
        self.flush_tls().await
    }

    /// Reads the next reply; returns it with its sequence number.
    pub(crate) async fn reply(&mut self) -> anyhow::Result<(Reply, u64)> {
        loop {
            match decode_reply(&self.buf, MAX_BODY) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    self.seq += 1;
                    return Ok((r, self.seq - 1));
                }
                Ok(None) => {
                    self.fill_tls().await?;
                    // A key update or an alert may be owed.
                    if self.tls.wants_write() {
                        self.flush_tls().await?;
                    }
                }
                Err(e) => bail!("bad reply: {e}"),
            }
        }
    }

    /// A reply that has already arrived, without waiting (an early refusal
    /// while a message is being sent).
    pub(crate) fn reply_now(&mut self) -> anyhow::Result<Option<Reply>> {
        loop {
            match decode_reply(&self.buf, MAX_BODY) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    self.seq += 1;
                    return Ok(Some(r));
                }
                Ok(None) => {}
                Err(e) => bail!("bad reply: {e}"),
            }
            if self.eof {
                bail!("the server closed the connection");
            }
            if self.rbuf.len() < READ_CHUNK {
                self.rbuf.resize(READ_CHUNK, 0);
            }
            match self.stream.try_read(&mut self.rbuf) {
                Ok(0) => {
                    self.eof = true;
                    bail!("the server closed the connection");
                }
                Ok(n) => {
                    self.bytes_in += n as u64;
                    let data = std::mem::take(&mut self.rbuf);
                    let r = self.tls_input(&data[..n]);
                    self.rbuf = data;
                    r?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a command and reads its reply, checking its signature.
    pub(crate) async fn command(&mut self, cmd: &Command) -> anyhow::Result<Reply> {
        let frame = cmd.to_bytes();
        self.send(&frame).await?;
        let (reply, seq) = self.reply().await?;
        self.verify(&reply, seq, &frame)?;
        Ok(reply)
    }

    /// OHAI: learns the nonce and the server key; checks that the greeting
    /// is signed by the key of the TLS handshake.
    pub(crate) async fn ohai(&mut self) -> anyhow::Result<Greeting> {
        let frame = Command::Ohai.to_bytes();
        self.send(&frame).await?;
        let (reply, seq) = self.reply().await?;
        if reply.status != Status::Success {
            bail!("OHAI: {} {}", reply.status, reply.text());
        }
        let g = Greeting::parse(&reply.body).context("bad greeting")?;
        if Some(g.key) != self.tls_key {
            bail!("the greeting's key is not the one of the TLS handshake");
        }
        self.greeting = Some(g.clone());
        self.verify(&reply, seq, &frame)?;
        Ok(g)
    }

    /// OHAI without checking or keeping anything (idle connections).
    pub(crate) async fn ohai_unchecked(&mut self) -> anyhow::Result<()> {
        self.send(&Command::Ohai.to_bytes()).await?;
        let (reply, _) = self.reply().await?;
        if reply.status != Status::Success {
            bail!("OHAI: {} {}", reply.status, reply.text());
        }
        Ok(())
    }

    /// Logs in with the identity key, bound to this connection's channel
    /// (PROTOCOL.md §12.4); needs [`ohai`](Self::ohai).
    pub(crate) async fn key_login(
        &mut self,
        address: &Address,
        key: &IdentityKey,
    ) -> anyhow::Result<()> {
        if self.greeting.is_none() {
            bail!("KEYLOGIN before OHAI");
        }
        let r = self
            .command(&Command::KeyLogin {
                user: address.account.clone(),
                signature: key_login_signature(key, &self.channel_binding, address).to_vec(),
            })
            .await?;
        if r.status != Status::Success {
            bail!("KEYLOGIN {address}: {} {}", r.status, r.text());
        }
        Ok(())
    }

    /// Checks the signature of reply number `seq`, the answer to `frame`
    /// (for MAIL, `frame` is `MAIL\0`). Without a greeting nothing is checked.
    pub(crate) fn verify(&self, reply: &Reply, seq: u64, frame: &[u8]) -> anyhow::Result<()> {
        let Some(g) = &self.greeting else {
            return Ok(());
        };
        verify_reply(&g.key, &g.nonce, seq, frame, reply)
    }

    /// Says goodbye in TLS (close_notify) and waits until the server has
    /// closed its side: everything sent before was processed by then.
    /// Returns the bytes read and written over the whole connection.
    pub(crate) async fn close(mut self) -> anyhow::Result<(u64, u64)> {
        self.tls.send_close_notify();
        self.flush_tls().await?;
        let _ = self.stream.shutdown().await;
        while !self.eof {
            let n = self.read_socket().await?;
            if n == 0 {
                break;
            }
            let data = std::mem::take(&mut self.rbuf);
            let r = self.tls_input(&data[..n]);
            self.rbuf = data;
            if r.is_err() {
                break;
            }
        }
        Ok((self.bytes_in, self.bytes_out))
    }

    /// Frees the buffers (connections held idle by the thousand).
    pub(crate) fn shrink(&mut self) {
        self.buf.shrink_to_fit();
        self.rbuf = Vec::new();
        self.wire = Vec::new();
    }
}

async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}

/// Checks a reply's signature for its position and request.
pub(crate) fn verify_reply(
    key: &PublicKey,
    nonce: &[u8; 32],
    seq: u64,
    frame: &[u8],
    reply: &Reply,
) -> anyhow::Result<()> {
    let binding = ReplyBinding {
        nonce: *nonce,
        seq,
        request: request_digest(frame),
    };
    let data = binding.signed_data(&reply.header(), &body_hash(&reply.body));
    key.verify(SignatureTag::Reply, &[&data], &reply.signature)
        .map_err(|_| anyhow::anyhow!("{} reply #{seq}: bad signature", reply.status))
}
