//! A lean CMTP connection for load generation: commands are pre-encoded
//! bytes, replies are decoded with `cmtp_proto::reply::decode_reply`, and
//! signatures are checked only when asked ([`BenchConn::verify`]), so that
//! the generator's own crypto stays out of the measurement. Setup (password
//! login) uses `cmtp_client::Connection`, which checks everything.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest reply body the bench accepts (LIST of a big mailbox included).
pub(crate) const MAX_BODY: u64 = 64 << 20;

/// How long any single wait on the network may take before the bench gives up.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// One connection.
pub(crate) struct BenchConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Replies read so far (the sequence number of the next reply).
    seq: u64,
    /// The greeting, after [`ohai`](Self::ohai).
    pub(crate) greeting: Option<Greeting>,
}

impl BenchConn {
    /// Connects (from `source`, if given) and reads the banner.
    pub(crate) async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> anyhow::Result<BenchConn> {
        let stream = match source {
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
        .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = BenchConn {
            stream,
            buf: Vec::with_capacity(1024),
            seq: 0,
            greeting: None,
        };
        loop {
            match decode_banner(&c.buf) {
                Ok(Some((banner, n))) => {
                    c.buf.drain(..n);
                    match banner {
                        Banner::Ready { .. } => return Ok(c),
                        Banner::Busy { text, .. } => bail!("server busy: {text}"),
                        other => bail!("not a CMTP server: {other:?}"),
                    }
                }
                Ok(None) => c.fill().await?,
                Err(()) => bail!("not a CMTP banner"),
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.buf))
            .await
            .context("no answer from the server")??;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    /// Writes bytes (commands, messages, parts of messages).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .context("the server does not read")??;
        Ok(())
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
                Ok(None) => self.fill().await?,
                Err(e) => bail!("bad reply: {e}"),
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

    /// OHAI: learns the nonce and the server key; checks the greeting's signature.
    pub(crate) async fn ohai(&mut self) -> anyhow::Result<Greeting> {
        let frame = Command::Ohai.to_bytes();
        self.send(&frame).await?;
        let (reply, seq) = self.reply().await?;
        if reply.status != Status::Success {
            bail!("OHAI: {} {}", reply.status, reply.text());
        }
        let g = Greeting::parse(&reply.body).context("bad greeting")?;
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

    /// Logs in with the identity key (PROTOCOL.md §12.4); needs [`ohai`](Self::ohai).
    pub(crate) async fn key_login(
        &mut self,
        address: &Address,
        key: &IdentityKey,
    ) -> anyhow::Result<()> {
        let nonce = self
            .greeting
            .as_ref()
            .context("KEYLOGIN before OHAI")?
            .nonce;
        let r = self
            .command(&Command::KeyLogin {
                user: address.account.clone(),
                signature: key_login_signature(key, &nonce, address).to_vec(),
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

    /// Frees the read buffer (connections held idle by the thousand).
    pub(crate) fn shrink(&mut self) {
        self.buf.shrink_to_fit();
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
