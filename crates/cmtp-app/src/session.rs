//! Accounts and sessions: registration, OPAQUE password login, key login,
//! password change, and a connection to the own server that knows whose key
//! is whose (PROTOCOL.md §9, §12, §13).
//!
//! A [`Client`] is a home directory ([`crate::home`]) plus options. It finds
//! the own server (the `server` override, else DNS: SRV, MX, A), and
//!
//! - [`Client::register`] creates the account: a new identity key, OPAQUE
//!   registration, the xzibit sealed under the export key (REGISTER,
//!   REGFINISH); it saves the configuration and the identity key;
//! - [`Client::login`] recovers the identity key on a new device with only the
//!   password (LOGIN, LOGINFINISH, the released xzibit checked against the
//!   account's key statement) and saves it;
//! - [`Client::session`] logs in later without the password (KEYLOGIN: the
//!   identity key signs the connection nonce).
//!
//! Every connection pins the own server's key on first use and refuses a
//! changed key without a signed rotation chain ([`crate::trust`]). A
//! [`Session`] then answers "whose key is this" for any address: statements
//! are fetched through the own server (which proxies other domains and passes
//! their statements on unchanged) and verified against the pinned key of the
//! address's domain.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cmtp_proto::account::{self, AccountError};
use cmtp_proto::command::Command;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::names::{Address, Domain};
use cmtp_proto::payload::mailbox::{ChangeSet, FlagsResult, Folder, ListingPage};
use cmtp_proto::payload::{
    Greeting, ListingEntry, LoginChallenge, RegistrationOffer, XzibitRelease, decode_listing,
};
use cmtp_proto::reply::{Reply, Status};
use cmtp_proto::statements::{KeyStatement, Receipt, ServerKeyBundle};
use rand::rngs::OsRng;

use crate::failure::{Error, Result};
use crate::home::{Config, Home};
use crate::trust::{KnownDomains, PinStatus, StatementCache, verify_statement};
use cmtp_client::ClientError;
use cmtp_client::clock::now;
use cmtp_client::conn::{Connection, MAX_REPLY_BODY};
use cmtp_client::discovery::{Discovery, DiscoveryConfig};
use cmtp_client::error::PeerMisbehaved;

/// Options that override the home's configuration for one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The own server as `host:port` (or `host`, port 9001), instead of the
    /// configuration's `server` or DNS.
    pub server: Option<String>,
    /// The weakest Argon2id cost accepted at login and used at least at
    /// registration, instead of the configuration's `[security.min_ksf]`.
    pub min_ksf: Option<KsfParams>,
    /// Time allowed to connect and for each reply.
    pub timeout: Duration,
}

impl Options {
    /// The same options with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Options {
        self.timeout = timeout;
        self
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: None,
            min_ksf: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The home directory with its configuration, and the options of this run.
#[derive(Debug, Clone)]
pub struct Client {
    home: Home,
    config: Config,
    options: Options,
}

/// What a registration or a password login established.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// The address.
    pub address: Address,
    /// The account's key statement, verified.
    pub statement: KeyStatement,
    /// The own server's key.
    pub server_key: PublicKey,
    /// What happened to the own server's pin.
    pub pin: PinStatus,
}

/// A verified key: a user's statement, or a server's own key.
#[derive(Debug, Clone)]
pub struct VerifiedKey {
    /// The key.
    pub key: PublicKey,
    /// The statement, for a user (`None` for a server's own key).
    pub statement: Option<KeyStatement>,
    /// The key of the domain's server that vouches for it.
    pub domain_key: PublicKey,
    /// The pin status of that domain key.
    pub pin: PinStatus,
}

impl Client {
    /// The client for `home` (its `config.toml` is read now).
    pub fn open(home: Home, options: Options) -> Result<Client> {
        let config = home.load_config()?;
        Ok(Client {
            home,
            config,
            options,
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The options of this run.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The configuration as read (and as saved by register/login).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether an account is set up: an address and an identity key.
    pub fn is_configured(&self) -> bool {
        self.config.address.is_some() && self.home.has_identity()
    }

    /// The configured address.
    pub fn address(&self) -> Result<Address> {
        self.config.address()?.ok_or_else(|| {
            Error::NotConfigured(format!(
                "no account is set up in {}: run `cmtp register you@your.domain --invite TOKEN` or `cmtp login you@your.domain` first",
                self.home.root().display()
            ))
        })
    }

    /// The identity key stored in the home.
    pub fn identity(&self) -> Result<IdentityKey> {
        self.home.load_identity()?.ok_or_else(|| {
            Error::NotConfigured(format!(
                "no identity key in {}: log in once with your password: `cmtp login {}`",
                self.home.root().display(),
                self.config.address.as_deref().unwrap_or("you@your.domain")
            ))
        })
    }

    /// The weakest Argon2id cost accepted at login: the option, else the
    /// configuration, else RFC 9106's second recommendation.
    pub fn ksf_floor(&self) -> KsfParams {
        self.options
            .min_ksf
            .or(self.config.min_ksf())
            .unwrap_or(KsfParams::RECOMMENDED)
    }

    /// Uses `server` (`host:port`) as the own server from now on, instead of
    /// DNS; saved to `config.toml` by [`register`](Self::register) and
    /// [`login`](Self::login).
    pub fn set_server(&mut self, server: &str) {
        self.options.server = Some(server.to_owned());
    }

    fn server_override(&self) -> Option<&str> {
        self.options
            .server
            .as_deref()
            .or(self.config.server.as_deref())
    }

    fn discovery(&self) -> Result<Discovery> {
        let mut routes = std::collections::HashMap::new();
        for (domain, list) in &self.config.dns.routes {
            let targets = list
                .iter()
                .map(|t| split_host_port(t))
                .collect::<Result<Vec<_>>>()?;
            routes.insert(
                Domain::parse(domain)
                    .map_err(|e| Error::Invalid(format!("[dns] routes: {domain:?}: {e}")))?
                    .to_string(),
                targets,
            );
        }
        let config = DiscoveryConfig {
            nameservers: if self.config.dns.nameservers.is_empty() {
                None
            } else {
                Some(self.config.dns.nameservers.clone())
            },
            static_routes: routes,
            timeout: Duration::from_millis(self.config.dns.timeout_ms.unwrap_or(5000)),
            ..DiscoveryConfig::default()
        };
        Discovery::new(config).map_err(|error| Error::Discovery {
            domain: "(configuration)".into(),
            error,
        })
    }

    /// The addresses to try for `domain`'s server.
    async fn targets(&self, domain: &Domain, discovery: &Discovery) -> Result<Vec<SocketAddr>> {
        if let Some(server) = self.server_override() {
            let (host, port) = split_host_port(server)?;
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| {
                    Error::Client(ClientError::Unreachable {
                        addr: server.to_owned(),
                        error: e.to_string(),
                    })
                })?
                .collect();
            return Ok(addrs);
        }
        let targets =
            discovery
                .resolve(domain.as_str())
                .await
                .map_err(|error| Error::Discovery {
                    domain: domain.to_string(),
                    error,
                })?;
        Ok(targets.into_iter().flat_map(|t| t.addrs).collect())
    }

    /// Connects to `domain`'s server (which must be the own server: the
    /// configured override or what DNS names), greets it, and checks its key
    /// against the pin (pinning it on first use). Not logged in.
    pub async fn connect(&self, domain: &Domain) -> Result<Session> {
        let discovery = self.discovery()?;
        let addrs = self.targets(domain, &discovery).await?;
        let mut last = None;
        let mut conn = None;
        for addr in addrs {
            match Connection::connect(addr, self.options.timeout).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                // The peer answered, and it is not CMTP: say so at once.
                Err(e @ (ClientError::SmtpServer { .. } | ClientError::NotCmtp { .. })) => {
                    return Err(e.into());
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut conn) = conn else {
            return Err(last
                .unwrap_or_else(|| ClientError::Unreachable {
                    addr: domain.to_string(),
                    error: "no address to connect to".into(),
                })
                .into());
        };
        let greeting = conn.ohai().await?;
        if greeting.domain != *domain {
            return Err(Error::Verification(format!(
                "the server at {} serves {}, not {domain}",
                conn.peer(),
                greeting.domain
            )));
        }
        let mut session = Session {
            conn,
            greeting: greeting.clone(),
            domain: domain.clone(),
            server_pin: PinStatus::NewlyPinned,
            known: KnownDomains::load(&self.home.known_domains_path())?,
            statements: StatementCache::new(self.home.cache_dir().join("keys")),
            discovery,
            check_key_txt: self.config.dns.check_key_txt.unwrap_or(true),
            address: None,
            identity: None,
            domain_keys: std::collections::HashMap::new(),
        };
        let pinned = session.known.get(domain).map(|p| p.key);
        session.server_pin = match pinned {
            Some(k) if k == greeting.key => session.known.admit(domain, k, None, now())?,
            Some(_) => {
                // A different key: only a rotation chain from the pinned key
                // makes it acceptable.
                let bundle = session.bundle(domain).await?;
                session
                    .known
                    .admit(domain, greeting.key, Some(&bundle), now())?
            }
            None => {
                session.check_txt(domain, &greeting.key).await?;
                session.known.admit(domain, greeting.key, None, now())?
            }
        };
        Ok(session)
    }

    /// Creates the account `address` with the invite token (empty under open
    /// registration) and password: generates the identity key, runs the
    /// OPAQUE registration, uploads the sealed xzibit, and saves the address
    /// (and the server override, if any) to `config.toml` and the key to
    /// `identity.key`.
    pub async fn register(
        &mut self,
        address: &Address,
        invite: &str,
        password: &[u8],
    ) -> Result<AccountInfo> {
        let cmd = |request: Vec<u8>| Command::Register {
            user: address.account.clone(),
            invite: invite.to_owned(),
            request,
        };
        self.enroll(address, password, cmd, "REGISTER").await
    }

    /// Replaces the forgotten password of `address` with a reset token from
    /// the administrator (PROTOCOL.md §12.6): a NEW identity key is made, as
    /// at registration, and saved (a different key already in the home is
    /// kept beside it, see [`Home::save_identity`](crate::home::Home::save_identity)). Mail sealed to the old
    /// key opens only with the old key.
    pub async fn reset(
        &mut self,
        address: &Address,
        token: &str,
        password: &[u8],
    ) -> Result<AccountInfo> {
        let cmd = |request: Vec<u8>| Command::Reset {
            user: address.account.clone(),
            token: token.to_owned(),
            request,
        };
        self.enroll(address, password, cmd, "RESET").await
    }

    /// REGISTER or RESET, then REGFINISH with a new identity key.
    async fn enroll(
        &mut self,
        address: &Address,
        password: &[u8],
        command: impl FnOnce(Vec<u8>) -> Command,
        what: &str,
    ) -> Result<AccountInfo> {
        let mut s = self.connect(&address.domain).await?;
        let (reg, request) =
            account::Registration::start(password, &mut OsRng).map_err(account_error)?;
        let reply = s.command(&command(request.to_vec())).await?;
        let offer = expect_success(&reply, what)
            .and_then(|body| decode(RegistrationOffer::decode(body), "registration offer"))?;
        let identity = IdentityKey::generate(&mut OsRng);
        let ksf = stronger(self.ksf_floor(), offer.floor);
        let binding = s.conn.channel_binding();
        let bundle = reg
            .finish(
                password,
                &offer,
                address,
                &identity,
                ksf,
                now(),
                &binding,
                &mut OsRng,
            )
            .map_err(account_error)?;
        let statement = s
            .upload_bundle(
                &bundle,
                address,
                &identity,
                "the server's key statement names another key than the one registered",
            )
            .await?;
        s.statements.put(address, &statement)?;
        self.save_account(address, &identity)?;
        crate::kt::login_check(&mut s, &self.home, now()).await;
        let account = AccountInfo {
            address: address.clone(),
            statement,
            server_key: s.greeting.key,
            pin: s.server_pin.clone(),
        };
        s.close().await;
        Ok(account)
    }

    /// Logs in with the password (OPAQUE), recovers the identity key from the
    /// released xzibit, checks it against the account's key statement, and
    /// saves address and key: this works from an empty home.
    pub async fn login(&mut self, address: &Address, password: &[u8]) -> Result<AccountInfo> {
        let mut s = self.connect(&address.domain).await?;
        let (identity, statement) = s
            .password_login(address, password, self.ksf_floor())
            .await?;
        self.save_account(address, &identity)?;
        let account = AccountInfo {
            address: address.clone(),
            statement,
            server_key: s.greeting.key,
            pin: s.server_pin.clone(),
        };
        s.close().await;
        Ok(account)
    }

    fn save_account(&mut self, address: &Address, identity: &IdentityKey) -> Result<()> {
        // The cache of earlier versions (files per message); the local store
        // (`mail.db`) empties itself when it meets another account.
        let messages = self.home.cache_dir().join("messages");
        if messages.exists() {
            std::fs::remove_dir_all(&messages).map_err(|e| Error::file(&messages, e))?;
        }
        self.home.save_identity(identity, address)?;
        self.config.address = Some(address.to_string());
        if let Some(server) = &self.options.server {
            self.config.server = Some(server.clone());
        }
        self.home.save_config(&self.config)
    }

    /// A logged-in session without the password: KEYLOGIN with the stored
    /// identity key (PROTOCOL.md §12.4).
    pub async fn session(&self) -> Result<Session> {
        let address = self.address()?;
        let identity = self.identity()?;
        let mut s = self.connect(&address.domain).await?;
        let signature =
            account::key_login_signature(&identity, &s.conn.channel_binding(), &address);
        let reply = s
            .command(&Command::KeyLogin {
                user: address.account.clone(),
                signature: signature.to_vec(),
            })
            .await?;
        match reply.status {
            Status::Success => {}
            Status::AuthFailed => {
                // The server holds another key for the account: what its
                // key directory says is kept as a warning.
                crate::kt::refused_login_check(&mut s, &self.home, &address, &identity, now())
                    .await;
                s.close().await;
                return Err(Error::DeviceKeyRefused {
                    address: address.to_string(),
                });
            }
            _ => return Err(Error::from_reply(&reply, "KEYLOGIN")),
        }
        s.address = Some(address);
        s.identity = Some(identity);
        crate::kt::login_check(&mut s, &self.home, now()).await;
        Ok(s)
    }

    /// A session logged in with the password (OPAQUE LOGIN, LOGINFINISH),
    /// which proves the person knows the current password: what a password
    /// change starts with. A wrong password is [`Error::WrongPassword`] (and
    /// counts against the login limits like any failed login); a password
    /// that opens another key than this home's is refused.
    pub async fn password_session(&self, password: &[u8]) -> Result<Session> {
        let address = self.address()?;
        let identity = self.identity()?;
        let mut s = self.connect(&address.domain).await?;
        let (key, _statement) = s
            .password_login(&address, password, self.ksf_floor())
            .await?;
        if key.public() != identity.public() {
            return Err(Error::Verification(format!(
                "the password of {address} opens another identity key than the one in {}",
                self.home.identity_path().display()
            )));
        }
        Ok(s)
    }

    /// Changes the password of the logged-in account (PASSWORD, REGFINISH):
    /// a new OPAQUE record and a new xzibit around the SAME identity key.
    /// The old password stops working at once.
    pub async fn change_password(&self, session: &mut Session, password: &[u8]) -> Result<()> {
        let (address, identity) = session.account()?;
        let (address, identity) = (address.clone(), identity.clone());
        let (reg, request) =
            account::Registration::start(password, &mut OsRng).map_err(account_error)?;
        let reply = session
            .command(&Command::Password {
                request: request.to_vec(),
            })
            .await?;
        let offer = expect_success(&reply, "PASSWORD")
            .and_then(|body| decode(RegistrationOffer::decode(body), "registration offer"))?;
        let ksf = stronger(self.ksf_floor(), offer.floor);
        let binding = session.conn.channel_binding();
        let bundle = reg
            .finish(
                password,
                &offer,
                &address,
                &identity,
                ksf,
                now(),
                &binding,
                &mut OsRng,
            )
            .map_err(account_error)?;
        session
            .upload_bundle(
                &bundle,
                &address,
                &identity,
                "after the password change the server states another key for the account",
            )
            .await?;
        Ok(())
    }
}

/// Each cost the larger of the two.
fn stronger(a: KsfParams, b: KsfParams) -> KsfParams {
    KsfParams {
        m_cost_kib: a.m_cost_kib.max(b.m_cost_kib),
        t_cost: a.t_cost.max(b.t_cost),
        p_cost: a.p_cost.max(b.p_cost),
    }
}

/// Splits `host:port`, `[v6]:port` or `host` (port 9001).
pub fn split_host_port(s: &str) -> Result<(String, u16)> {
    let bad = || Error::Invalid(format!("{s:?} is not host:port"));
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p.parse().map_err(|_| bad())?;
            let host = h.trim_matches(['[', ']']);
            if host.is_empty() {
                return Err(bad());
            }
            Ok((host.to_owned(), port))
        }
        None if !s.is_empty() => Ok((s.to_owned(), cmtp_proto::limits::DEFAULT_PORT)),
        _ => Err(bad()),
    }
}

fn account_error(e: AccountError) -> Error {
    match e {
        AccountError::WeakKsf(e) => Error::Policy(format!(
            "the server asks for Argon2id parameters this client refuses: {e} (the floor is set by [security.min_ksf] in config.toml, or --min-ksf)"
        )),
        AccountError::BadRelease(e) => Error::Verification(format!(
            "the key package is not signed by the server's key: {e}"
        )),
        AccountError::KeyMismatch => Error::Verification(
            "the key package holds a different key than the account's key statement".into(),
        ),
        other => Error::Verification(other.to_string()),
    }
}

fn expect_success<'a>(reply: &'a Reply, what: &str) -> Result<&'a [u8]> {
    if reply.status == Status::Success {
        Ok(&reply.body)
    } else {
        Err(Error::from_reply(reply, what))
    }
}

fn decode<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| {
        Error::Client(ClientError::Protocol(PeerMisbehaved::BadPayload {
            what: what.to_owned(),
            error: e.to_string(),
        }))
    })
}

/// A connection to the own server, its key checked against the pin, possibly
/// logged in.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    greeting: Greeting,
    domain: Domain,
    server_pin: PinStatus,
    known: KnownDomains,
    statements: StatementCache,
    discovery: Discovery,
    check_key_txt: bool,
    address: Option<Address>,
    identity: Option<IdentityKey>,
    /// Other domains' keys already checked on this connection.
    domain_keys: std::collections::HashMap<Domain, (PublicKey, PinStatus)>,
}

impl Session {
    /// REGFINISH with `bundle`; checks that the key statement the server
    /// answers is signed by it and names `identity` (else `mismatch`).
    async fn upload_bundle(
        &mut self,
        bundle: &cmtp_proto::payload::RegistrationBundle,
        address: &Address,
        identity: &IdentityKey,
        mismatch: &str,
    ) -> Result<KeyStatement> {
        let reply = self
            .command(&Command::RegFinish {
                bundle: bundle.to_bytes(),
            })
            .await?;
        let body = expect_success(&reply, "REGFINISH")?;
        let statement = verify_statement(
            body,
            &self.greeting.key,
            Some(&address.account),
            &address.domain,
            now(),
        )?;
        if statement.key != identity.public() {
            return Err(Error::Verification(mismatch.into()));
        }
        Ok(statement)
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The own server's (pinned) key.
    pub fn server_key(&self) -> PublicKey {
        self.greeting.key
    }

    /// The own server's domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// What happened to the own server's pin on this connection.
    pub fn server_pin(&self) -> &PinStatus {
        &self.server_pin
    }

    /// The pinned server keys.
    pub fn known_domains(&self) -> &KnownDomains {
        &self.known
    }

    /// The logged-in address and identity key.
    pub fn account(&self) -> Result<(&Address, &IdentityKey)> {
        match (&self.address, &self.identity) {
            (Some(a), Some(i)) => Ok((a, i)),
            _ => Err(Error::Invalid("this session is not logged in".into())),
        }
    }

    /// The limits of the server, for decoding what it sends.
    pub fn message_limits(&self) -> MessageLimits {
        MessageLimits {
            max_message_size: self.greeting.max_message_size,
            max_attachments: self.greeting.max_attachments,
            ..MessageLimits::default()
        }
    }

    /// Sends a command and reads its (signature-checked) reply.
    pub async fn command(&mut self, cmd: &Command) -> Result<Reply> {
        Ok(self.conn.command(cmd, MAX_REPLY_BODY).await?)
    }

    async fn password_login(
        &mut self,
        address: &Address,
        password: &[u8],
        floor: KsfParams,
    ) -> Result<(IdentityKey, KeyStatement)> {
        let (login, ke1) = account::Login::start(password, &mut OsRng).map_err(account_error)?;
        let reply = self
            .command(&Command::Login {
                user: address.account.clone(),
                ke1: ke1.to_vec(),
            })
            .await?;
        let challenge = expect_success(&reply, "LOGIN")
            .and_then(|b| decode(LoginChallenge::decode(b), "login challenge"))?;
        let binding = self.conn.channel_binding();
        let proof = match login.finish(password, &challenge, address, &floor, &binding, &mut OsRng)
        {
            Ok(p) => p,
            Err(AccountError::WrongPassword) => {
                // Finish the exchange with a KE3 that cannot verify, so the
                // server counts the failure towards its rate limits, as it
                // would for a wrong KE3 (PROTOCOL.md §12.3).
                let mut junk = [0u8; 64];
                rand::RngCore::fill_bytes(&mut OsRng, &mut junk);
                let _ = self
                    .command(&Command::LoginFinish { ke3: junk.to_vec() })
                    .await;
                return Err(Error::WrongPassword {
                    address: address.to_string(),
                });
            }
            Err(e) => return Err(account_error(e)),
        };
        let reply = self
            .command(&Command::LoginFinish {
                ke3: proof.ke3.to_vec(),
            })
            .await?;
        let body = match reply.status {
            Status::Success => &reply.body,
            Status::AuthFailed => {
                return Err(Error::WrongPassword {
                    address: address.to_string(),
                });
            }
            _ => return Err(Error::from_reply(&reply, "LOGINFINISH")),
        };
        let release = decode(XzibitRelease::decode(body), "xzibit release")?;
        // Logged in now; the account's key statement says which key the
        // xzibit must hold.
        let statement = self.fetch_statement(address).await?;
        let (identity, _created) = account::open_release(
            &release,
            &self.greeting.key,
            address,
            &proof.export_key,
            Some(&statement.key),
        )
        .map_err(account_error)?;
        self.statements.put(address, &statement)?;
        self.address = Some(address.clone());
        self.identity = Some(identity.clone());
        Ok((identity, statement))
    }

    /// KEYREQUEST with an empty user for `domain` (own or, through the own
    /// server, another): the domain's key bundle, verified as self-signed.
    async fn bundle(&mut self, domain: &Domain) -> Result<ServerKeyBundle> {
        let reply = self
            .command(&Command::KeyRequest {
                user: None,
                domain: Some(domain.clone()),
            })
            .await?;
        let body = expect_success(&reply, &format!("the server key of {domain}"))?;
        let bundle = ServerKeyBundle::decode(body)
            .map_err(|e| Error::Verification(format!("key bundle of {domain}: {e}")))?;
        bundle
            .verify_self(domain, now())
            .map_err(|e| Error::Verification(format!("key bundle of {domain}: {e}")))?;
        Ok(bundle)
    }

    async fn check_txt(&self, domain: &Domain, key: &PublicKey) -> Result<()> {
        if !self.check_key_txt {
            return Ok(());
        }
        let published = self
            .discovery
            .key_fingerprints(domain.as_str())
            .await
            .map_err(|error| Error::Discovery {
                domain: domain.to_string(),
                error,
            })?;
        if !published.is_empty() && !published.contains(&key.fingerprint()) {
            return Err(Error::Verification(format!(
                "the server key of {domain} ({}) does not match its _cmtpkey DNS record",
                key.fingerprint_hex()
            )));
        }
        Ok(())
    }

    /// `domain`'s server key: the own server's pinned key, or another
    /// domain's bundle fetched through the own server, checked against the
    /// pin (pinned on first use; a change accepted only along a signed
    /// rotation chain).
    pub async fn domain_key(&mut self, domain: &Domain) -> Result<(PublicKey, PinStatus)> {
        if *domain == self.domain {
            return Ok((self.greeting.key, self.server_pin.clone()));
        }
        if let Some(known) = self.domain_keys.get(domain) {
            return Ok(known.clone());
        }
        let bundle = self.bundle(domain).await?;
        let key = bundle.statement.key;
        let pinned = self.known.get(domain).map(|p| p.key);
        if pinned.is_none() {
            self.check_txt(domain, &key).await?;
        }
        let status = self.known.admit(domain, key, Some(&bundle), now())?;
        self.domain_keys
            .insert(domain.clone(), (key, status.clone()));
        Ok((key, status))
    }

    /// Fetches and verifies `address`'s key statement (no cache).
    async fn fetch_statement(&mut self, address: &Address) -> Result<KeyStatement> {
        let (domain_key, _) = self.domain_key(&address.domain).await?;
        if self
            .greeting
            .extensions
            .iter()
            .any(|e| e == crate::kt::EXTENSION)
        {
            return Ok(crate::kt::fetch(self, address, &domain_key, now()).await?.0);
        }
        let reply = self
            .command(&Command::KeyRequest {
                user: Some(address.account.clone()),
                domain: Some(address.domain.clone()),
            })
            .await?;
        if reply.status == Status::KeyNotAvailable {
            return Err(Error::NotFound(format!(
                "no key for {address}: {}",
                reply.text()
            )));
        }
        let body = expect_success(&reply, &format!("the key of {address}"))?;
        verify_statement(
            body,
            &domain_key,
            Some(&address.account),
            &address.domain,
            now(),
        )
    }

    /// `address`'s key for sealing a message: fetched fresh through the own
    /// server, or — when that fails only for now (the recipient's server is
    /// down) — the cached statement that still verifies under the domain's
    /// pinned key. Mail can then be sealed and left in the own server's relay
    /// queue; without any key the error is returned (transient: the message
    /// waits in the outbox).
    pub async fn key_for_sealing(&mut self, address: &Address) -> Result<VerifiedKey> {
        match self.user_key(address, true).await {
            Ok(k) => Ok(k),
            Err(e) if e.is_transient() => {
                let pinned = self.known.get(&address.domain).map(|p| p.key);
                let cached =
                    pinned.and_then(|k| self.statements.get(address, &k, now()).map(|s| (k, s)));
                match cached {
                    Some((domain_key, s)) => {
                        tracing::info!(%address, error = %e, "using the cached key statement");
                        Ok(VerifiedKey {
                            key: s.key,
                            statement: Some(s),
                            domain_key,
                            pin: PinStatus::Known { first_seen: 0 },
                        })
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `address`'s key, verified: from the cache when a cached statement
    /// still verifies under the domain's pinned key (unless `fresh`), else
    /// fetched through the own server.
    pub async fn user_key(&mut self, address: &Address, fresh: bool) -> Result<VerifiedKey> {
        let (domain_key, pin) = self.domain_key(&address.domain).await?;
        if !fresh && let Some(s) = self.statements.get(address, &domain_key, now()) {
            return Ok(VerifiedKey {
                key: s.key,
                statement: Some(s),
                domain_key,
                pin,
            });
        }
        let s = self.fetch_statement(address).await?;
        self.statements.put(address, &s)?;
        Ok(VerifiedKey {
            key: s.key,
            statement: Some(s),
            domain_key,
            pin,
        })
    }

    /// The key that signs messages from `source`: a user's identity key, or
    /// for a notice (empty source account) the source server's own key.
    pub async fn sender_key(&mut self, source: &Source) -> Result<PublicKey> {
        match source.address() {
            Some(a) => Ok(self.user_key(&a, false).await?.key),
            None => Ok(self.domain_key(&source.domain).await?.0),
        }
    }

    /// LIST: the mailbox, oldest first.
    pub async fn list(&mut self) -> Result<Vec<ListingEntry>> {
        // A listing may hold up to MAX_LISTING entries of at most ~400 bytes.
        let max = (cmtp_proto::limits::MAX_LISTING as u64) * 400 + 4;
        let reply = self.conn.command(&Command::List, max).await?;
        let body = expect_success(&reply, "LIST")?;
        decode(decode_listing(body), "mailbox listing")
    }

    /// FETCH `id` into the file `path` (streamed; the reply's signature is
    /// checked at the end). Returns the number of bytes written.
    pub async fn fetch_to_file(&mut self, id: u64, path: &Path) -> Result<u64> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(|e| Error::file(path, e))?;
        let mut out = tokio::io::BufWriter::new(file);
        let max = self.greeting.max_message_size + MessageLimits::DEFAULT_MAX_LOG + 4096;
        match self.conn.fetch_into(id, max, &mut out).await? {
            Ok(n) => Ok(n),
            Err(reply) if reply.status == Status::Failure => {
                Err(Error::NotFound(format!("no message {id} in the mailbox")))
            }
            Err(reply) => Err(Error::from_reply(&reply, "FETCH")),
        }
    }

    /// LISTPAGE (PROTOCOL.md §13.3).
    pub async fn list_page(&mut self, before: u64, limit: u32) -> Result<ListingPage> {
        let reply = self.command(&Command::ListPage { before, limit }).await?;
        let body = expect_success(&reply, "LISTPAGE")?;
        decode(ListingPage::decode(body), "listing page")
    }

    /// CHANGES (PROTOCOL.md §13.4).
    pub async fn changes(&mut self, since: u64, limit: u32) -> Result<ChangeSet> {
        let reply = self.command(&Command::Changes { since, limit }).await?;
        let body = expect_success(&reply, "CHANGES")?;
        decode(ChangeSet::decode(body), "change set")
    }

    /// FLAGS (PROTOCOL.md §13.5), in commands of at most 1024 ids.
    pub async fn set_flags(&mut self, ids: &[u64], set: u32, clear: u32) -> Result<FlagsResult> {
        let mut last = FlagsResult {
            modseq: 0,
            changed: 0,
        };
        let mut changed = 0;
        for chunk in ids.chunks(cmtp_proto::payload::mailbox::MAX_FLAG_IDS) {
            let reply = self
                .command(&Command::Flags {
                    set,
                    clear,
                    ids: chunk.to_vec(),
                })
                .await?;
            let body = expect_success(&reply, "FLAGS")?;
            last = decode(FlagsResult::decode(body), "flags result")?;
            changed += last.changed;
        }
        last.changed = changed;
        Ok(last)
    }

    /// MOVE (PROTOCOL.md §13.7), in commands of at most 1024 ids.
    pub async fn move_to(&mut self, ids: &[u64], folder: &Folder) -> Result<FlagsResult> {
        let mut last = FlagsResult {
            modseq: 0,
            changed: 0,
        };
        let mut changed = 0;
        for chunk in ids.chunks(cmtp_proto::payload::mailbox::MAX_FLAG_IDS) {
            let reply = self
                .command(&Command::Move {
                    folder: folder.clone(),
                    ids: chunk.to_vec(),
                })
                .await?;
            let body = expect_success(&reply, "MOVE")?;
            last = decode(FlagsResult::decode(body), "move result")?;
            changed += last.changed;
        }
        last.changed = changed;
        Ok(last)
    }

    /// FETCH `id` into memory (bounded by the server's message size limit
    /// and the log limit); the reply's signature is checked at the end.
    pub async fn fetch_bytes(&mut self, id: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let max = self.greeting.max_message_size + MessageLimits::DEFAULT_MAX_LOG + 4096;
        match self.conn.fetch_into(id, max, &mut out).await? {
            Ok(_) => Ok(out),
            Err(reply) if reply.status == Status::Failure => {
                Err(Error::NotFound(format!("no message {id} in the mailbox")))
            }
            Err(reply) => Err(Error::from_reply(&reply, "FETCH")),
        }
    }

    /// Sends an encoded message after MAIL or APPEND and checks the receipt:
    /// the SUCCESS reply, signed by the own server's key (checked as every
    /// reply is), for `hash`. Returns the kept receipt.
    pub async fn submit_bytes(
        &mut self,
        cmd: &Command,
        bytes: &[u8],
        hash: &[u8; 32],
        destination: &str,
        progress: impl FnMut(u64),
    ) -> Result<Receipt> {
        let reply = self.conn.command_with_message(cmd, bytes, progress).await?;
        self.check_receipt(&reply, hash, destination)
    }

    fn check_receipt(&self, reply: &Reply, hash: &[u8; 32], destination: &str) -> Result<Receipt> {
        match reply.status {
            Status::Success => {}
            Status::DeliveryFailure => {
                let f = cmtp_proto::payload::DeliveryFailure::decode(&reply.body).ok();
                let text = f
                    .as_ref()
                    .map(|f| format!("{}: {}", f.word, f.text))
                    .unwrap_or_else(|| reply.text());
                return Err(match f.and_then(|f| f.reason) {
                    Some(cmtp_proto::payload::FailureReason::NoSuchUser) => {
                        Error::NotFound(format!("{destination}: {text}"))
                    }
                    _ => Error::Refused(format!("{destination}: {text}")),
                });
            }
            Status::TooBig => {
                return Err(Error::TooBig {
                    size: 0,
                    max: self.greeting.max_message_size,
                    detail: reply.text(),
                });
            }
            _ => return Err(Error::from_reply(reply, "MAIL")),
        }
        // The reply's signature, checked under the server's key as every
        // reply's is, is the receipt's (PROTOCOL.md §10.1).
        let receipt = self
            .conn
            .receipt(reply)
            .map_err(|e| Error::Verification(format!("receipt: {e}")))?;
        receipt.body.check_hash(hash).map_err(|_| {
            Error::Verification("the server's receipt is for another message".into())
        })?;
        if receipt.domain() != &self.domain {
            return Err(Error::Verification(format!(
                "the receipt names {}, not {}",
                receipt.domain(),
                self.domain
            )));
        }
        Ok(receipt)
    }

    /// DELETE `id`.
    pub async fn delete(&mut self, id: u64) -> Result<()> {
        let reply = self.command(&Command::Delete { id }).await?;
        match reply.status {
            Status::Success => Ok(()),
            Status::Failure => Err(Error::NotFound(format!("no message {id} in the mailbox"))),
            _ => Err(Error::from_reply(&reply, "DELETE")),
        }
    }

    /// Submits a message with MAIL and checks the receipt: the SUCCESS reply
    /// signed by the own server's key, for this message's hash.
    pub async fn submit(
        &mut self,
        message: &Message,
        progress: impl FnMut(u64),
    ) -> Result<Receipt> {
        let bytes = message.to_bytes();
        let hash = message.hash();
        let reply = self.conn.mail_with_progress(&bytes, progress).await?;
        self.check_receipt(&reply, &hash, &message.destination.to_string())
    }

    /// Says OBAI and closes.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_split() {
        assert_eq!(
            split_host_port("127.0.0.1:9001").unwrap(),
            ("127.0.0.1".into(), 9001)
        );
        assert_eq!(
            split_host_port("mx.a.test").unwrap(),
            ("mx.a.test".into(), 9001)
        );
        assert_eq!(split_host_port("[::1]:7").unwrap(), ("::1".into(), 7));
        assert!(split_host_port("a:b").is_err());
        assert!(split_host_port("").is_err());
    }

    #[test]
    fn the_stronger_cost_wins_per_component() {
        let a = KsfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 4,
        };
        let b = KsfParams {
            m_cost_kib: 256,
            t_cost: 3,
            p_cost: 1,
        };
        assert_eq!(
            stronger(a, b),
            KsfParams {
                m_cost_kib: 1024,
                t_cost: 3,
                p_cost: 4
            }
        );
    }
}
