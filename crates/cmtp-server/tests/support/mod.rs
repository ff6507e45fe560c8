//! Fixtures for the server tests: an in-process cmtpd on a loopback port,
//! users registered over the wire, a raw byte-level client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cmtp_client::Connection;
use cmtp_proto::account::{Registration, key_login_signature};
use cmtp_proto::banner::{Banner, decode_banner};
use cmtp_proto::command::Command;
use cmtp_proto::content::{Attachment, Content};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::message::Message;
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::RegistrationOffer;
use cmtp_proto::reply::{Reply, Status, decode_reply};
use cmtp_server::Server;
use cmtp_server::config::Config;
use cmtp_server::state::Shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const T: Duration = Duration::from_secs(10);

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 20 s for `f` to hold.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Routes `domain` to `port` on loopback (a route may name any address).
pub fn route(c: &mut Config, domain: &str, port: u16) {
    c.dns
        .routes
        .insert(domain.into(), vec![format!("127.0.0.1:{port}")]);
}

/// A server for `domain` on 127.0.0.1 with fast Argon2 parameters.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub domain: String,
    pub cfg: Config,
}

pub fn test_config(domain: &str, dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(domain, dir);
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let k = KsfParams::INSECURE_TEST;
    cfg.accounts.ksf_min_memory_kib = k.m_cost_kib;
    cfg.accounts.ksf_min_passes = k.t_cost;
    cfg.accounts.ksf_min_lanes = k.p_cost;
    cfg.relay.poll_ms = 100;
    cfg
}

impl TestServer {
    pub async fn start(domain: &str) -> TestServer {
        Self::start_with(domain, |_| {}).await
    }

    pub async fn start_with(domain: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        // Logs of the server under test, shown for failing tests (RUST_LOG=debug for more).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(domain, dir.path());
        tweak(&mut cfg);
        let server = Server::start(cfg.clone()).await.unwrap();
        let addr = server.local_addrs()[0];
        TestServer {
            server: Some(server),
            addr,
            dir,
            domain: domain.to_owned(),
            cfg,
        }
    }

    /// Stops and starts the server again on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = Server::start(self.cfg.clone()).await.unwrap();
        self.addr = server.local_addrs()[0];
        self.server = Some(server);
    }

    pub fn shared(&self) -> &Arc<Shared> {
        self.server.as_ref().unwrap().shared()
    }

    pub fn address(&self, user: &str) -> Address {
        Address::parse(&format!("{user}@{}", self.domain)).unwrap()
    }

    /// A greeted connection that checks every reply's signature.
    pub async fn connect(&self) -> Connection {
        let mut c = Connection::connect(self.addr, T).await.unwrap();
        c.expect_key(self.shared().key.public());
        c.ohai().await.unwrap();
        c
    }

    /// Registers `user` over the wire with an invite; returns the identity key.
    pub async fn register(&self, user: &str, password: &str) -> IdentityKey {
        let identity = IdentityKey::generate(&mut rand_core::OsRng);
        self.register_with_key(user, password, &identity).await;
        identity
    }

    /// Registers `user` over the wire with an invite and a given identity key.
    pub async fn register_with_key(&self, user: &str, password: &str, identity: &IdentityKey) {
        let account = Account::parse(user).unwrap();
        let (token, _) = cmtp_server::admin::invite(&self.shared().store, &account, 3600)
            .await
            .unwrap();
        let mut c = self.connect().await;
        let rng = &mut rand_core::OsRng;
        let (reg, request) = Registration::start(password.as_bytes(), rng).unwrap();
        let r = c
            .command(
                &Command::Register {
                    user: account.clone(),
                    invite: token,
                    request: request.to_vec(),
                },
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
        let offer = RegistrationOffer::decode(&r.body).unwrap();
        let bundle = reg
            .finish(
                password.as_bytes(),
                &offer,
                &self.address(user),
                identity,
                KsfParams::INSECURE_TEST,
                1,
                &c.channel_binding(),
                rng,
            )
            .unwrap();
        let r = c
            .command(
                &Command::RegFinish {
                    bundle: bundle.to_bytes(),
                },
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
    }

    /// A connection logged in as `user` with its identity key.
    pub async fn login(&self, user: &str, key: &IdentityKey) -> Connection {
        let mut c = self.connect().await;
        let sig = key_login_signature(key, &c.channel_binding(), &self.address(user));
        let r = c
            .command(
                &Command::KeyLogin {
                    user: Account::parse(user).unwrap(),
                    signature: sig.to_vec(),
                },
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
        c
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A sealed message from `from` (signing with `sender`) to `to` (key `recipient`).
pub fn sealed(
    from: &Address,
    sender: &IdentityKey,
    to: &Address,
    recipient: &IdentityKey,
    text: &str,
) -> Message {
    Content {
        subject: "test".into(),
        date: "2026-11-26T00:00:00Z".into(),
        text: text.into(),
        attachments: vec![Attachment {
            name: "a.bin".into(),
            data: vec![7; 100],
        }],
        ..Content::default()
    }
    .seal(from, sender, to, &recipient.public(), &mut rand_core::OsRng)
    .unwrap()
}

/// A byte-level client for malformed input: TLS like any client (the
/// server speaks nothing else), then raw bytes inside it.
pub struct Raw {
    pub stream: TcpStream,
    /// TLS, unless the client speaks in clear (`connect_clear`).
    pub tls: Option<rustls::ClientConnection>,
    /// Plaintext received and not yet read.
    pub buf: Vec<u8>,
    pub banner: Banner,
    closed: bool,
}

impl Raw {
    /// Connects, reads the banner and completes the TLS handshake.
    pub async fn connect(addr: SocketAddr) -> Raw {
        Self::from_stream(TcpStream::connect(addr).await.unwrap(), true).await
    }

    /// Connects and reads the banner, without TLS: a peer that speaks in
    /// clear (an SMTP client, a CMTP/1 client).
    pub async fn connect_clear(addr: SocketAddr) -> Raw {
        Self::from_stream(TcpStream::connect(addr).await.unwrap(), false).await
    }

    /// Connects from the loopback address `source` (127.0.0.0/8 holds many:
    /// distinct peers on one machine).
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Self::from_stream(socket.connect(addr).await.unwrap(), true).await
    }

    async fn from_stream(stream: TcpStream, tls: bool) -> Raw {
        let mut raw = Raw {
            stream,
            tls: None,
            buf: Vec::new(),
            banner: Banner::Unknown {
                line: String::new(),
            },
            closed: false,
        };
        loop {
            if let Some((b, n)) = decode_banner(&raw.buf).unwrap() {
                raw.buf.drain(..n);
                raw.banner = b;
                break;
            }
            assert!(raw.fill().await, "closed before the banner");
        }
        if tls && matches!(raw.banner, Banner::Ready { .. }) {
            let mut c = cmtp_proto::tls::ClientTlsConfig::default_shared()
                .connect()
                .unwrap();
            c.set_buffer_limit(None);
            // What came after the banner is TLS already.
            let early = std::mem::take(&mut raw.buf);
            raw.tls = Some(c);
            raw.feed(&early);
            raw.flush().await;
            while raw.tls.as_ref().unwrap().is_handshaking() {
                assert!(raw.fill().await, "closed during the TLS handshake");
                raw.flush().await;
            }
        }
        raw
    }

    /// Decrypts TLS records into `buf`.
    fn feed(&mut self, mut data: &[u8]) {
        use std::io::Read;
        let Some(tls) = self.tls.as_mut() else {
            self.buf.extend_from_slice(data);
            return;
        };
        while !data.is_empty() {
            tls.read_tls(&mut data).unwrap();
            let io = match tls.process_new_packets() {
                Ok(io) => io,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            };
            let n = io.plaintext_bytes_to_read();
            let start = self.buf.len();
            self.buf.resize(start + n, 0);
            tls.reader().read_exact(&mut self.buf[start..]).unwrap();
            if io.peer_has_closed() {
                self.closed = true;
            }
        }
    }

    /// Writes what TLS has to send.
    async fn flush(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out).unwrap();
        }
        out.is_empty() || self.stream.write_all(&out).await.is_ok()
    }

    async fn fill(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(T, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                let before = self.buf.len();
                self.feed(&chunk[..n]);
                self.flush().await;
                self.buf.len() > before || !self.closed
            }
            Err(_) => panic!("no answer within {T:?}"),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> bool {
        match self.tls.as_mut() {
            Some(tls) => {
                use std::io::Write;
                tls.writer().write_all(bytes).unwrap();
                self.flush().await
            }
            None => self.stream.write_all(bytes).await.is_ok(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        assert!(self.write(bytes).await, "the connection is closed");
    }

    /// Sends, ignoring errors (the server may close first).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.write(bytes).await;
    }

    pub async fn reply(&mut self) -> Reply {
        loop {
            if let Some((r, n)) = decode_reply(&self.buf, 1 << 30).unwrap() {
                self.buf.drain(..n);
                return r;
            }
            assert!(
                self.fill().await,
                "connection closed before a reply; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    pub async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..=i]).into_owned();
                self.buf.drain(..=i);
                return line;
            }
            assert!(self.fill().await, "closed before a line");
        }
    }

    /// True when the server closes the connection (after any pending bytes).
    pub async fn is_closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}
