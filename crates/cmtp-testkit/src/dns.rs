//! An in-process authoritative DNS server for tests, and a black hole.
//!
//! [`TestDns`] serves authoritative zones over UDP and TCP on one OS-chosen
//! loopback port. Zones and records can be added, changed and removed while
//! the server runs, so a test can change DNS mid-test. Names in the API are
//! absolute; the trailing dot is optional (`"example.org"` and
//! `"example.org."` are the same name).
//!
//! Answers follow the usual authoritative semantics:
//! - a name inside a served zone that owns records, but none of the asked
//!   type (or that is an empty non-terminal such as `_tcp.example.org` when
//!   `_cmtp._tcp.example.org` exists), gets NOERROR with no answer;
//! - a name inside a served zone that owns nothing gets NXDOMAIN;
//! - a name outside every served zone gets REFUSED.
//!
//! [`TestDns::set_mode`] makes the whole server answer SERVFAIL or REFUSED
//! instead, and [`Blackhole`] accepts queries and never answers (for resolver
//! timeouts).
//!
//! Records are served with TTL 0 unless [`TestDns::set_ttl`] says otherwise,
//! and negative answers carry an SOA whose minimum is 0, so a caching resolver
//! pointed at the server does not keep stale answers by default.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cmtp_testkit::dns::TestDns;
//! let dns = TestDns::start().await?;
//! dns.add_zone("example.org").await?;
//! dns.add_mx("example.org", 10, "mx1.example.org").await?;
//! dns.add_a("mx1.example.org", "127.0.0.1".parse()?).await?;
//! // point a resolver at dns.addr() ...
//! # Ok(()) }
//! ```

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Header, HeaderCounts, Metadata, ResponseCode},
        rr::{
            LowerName, Name, RData, Record, RecordType, RrKey,
            rdata::{A, AAAA, MX, SOA, SRV, TXT},
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType},
};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, UdpSocket},
    sync::RwLock,
    task::JoinSet,
};

/// How long the server keeps an idle TCP connection from a resolver open.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`TestDns`] answers queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// Answer from the served zones (the default).
    Serve,
    /// Answer every query with SERVFAIL (a broken authoritative server).
    ServFail,
    /// Answer every query with REFUSED.
    Refuse,
}

impl DnsMode {
    fn to_u8(self) -> u8 {
        match self {
            Self::Serve => 0,
            Self::ServFail => 1,
            Self::Refuse => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::ServFail,
            2 => Self::Refuse,
            _ => Self::Serve,
        }
    }
}

/// One served zone: its origin and the handler that holds its records.
struct Zone {
    origin: Name,
    handler: Arc<InMemoryZoneHandler>,
}

/// State shared between the [`TestDns`] handle and the request handler.
struct Shared {
    catalog: RwLock<Catalog>,
    zones: RwLock<Vec<Zone>>,
    mode: AtomicU8,
    ttl: AtomicU32,
}

/// The request handler registered with the hickory server: dispatches to the
/// catalog, or answers with an error code in the failure modes.
#[derive(Clone)]
struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let code = match DnsMode::from_u8(self.0.mode.load(Ordering::SeqCst)) {
            DnsMode::Serve => {
                let catalog = self.0.catalog.read().await;
                return catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
            }
            DnsMode::ServFail => ResponseCode::ServFail,
            DnsMode::Refuse => ResponseCode::Refused,
        };
        let response =
            MessageResponseBuilder::new(&request.queries, None).error_msg(&request.metadata, code);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "test DNS server failed to send an error response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// An in-process authoritative DNS server on 127.0.0.1 (UDP and TCP, same
/// port). Stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Dropping the server aborts its listener tasks.
    _server: Server<Handler>,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestDns {
    /// Binds UDP and TCP on `127.0.0.1` with one OS-chosen port and starts
    /// serving (no zones yet: add them with [`TestDns::add_zone`]).
    ///
    /// Must be called inside a tokio runtime; the server runs on it.
    pub async fn start() -> anyhow::Result<TestDns> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let shared = Arc::new(Shared {
            catalog: RwLock::new(Catalog::new()),
            zones: RwLock::new(Vec::new()),
            mode: AtomicU8::new(DnsMode::Serve.to_u8()),
            ttl: AtomicU32::new(0),
        });
        let mut server = Server::new(Handler(shared.clone()));
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
        Ok(TestDns {
            addr,
            shared,
            _server: server,
        })
    }

    /// The address the server listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how the server answers from now on (see [`DnsMode`]).
    pub fn set_mode(&self, mode: DnsMode) {
        self.shared.mode.store(mode.to_u8(), Ordering::SeqCst);
    }

    /// The current answering mode.
    pub fn mode(&self) -> DnsMode {
        DnsMode::from_u8(self.shared.mode.load(Ordering::SeqCst))
    }

    /// Sets the TTL (seconds) of records added from now on (default 0).
    pub fn set_ttl(&self, ttl: u32) {
        self.shared.ttl.store(ttl, Ordering::SeqCst);
    }

    /// Starts serving the zone `origin` authoritatively, with an SOA record
    /// (an SOA is required by hickory; its minimum, the negative-caching TTL,
    /// is 0). Adding a zone that is already served is a no-op.
    pub async fn add_zone(&self, origin: &str) -> anyhow::Result<()> {
        let origin = parse_name(origin)?;
        let mut zones = self.shared.zones.write().await;
        if zones.iter().any(|z| z.origin == origin) {
            return Ok(());
        }
        let mut handler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_ascii("ns.invalid.")?,
            Name::from_ascii("hostmaster.invalid.")?,
            1,
            3600,
            600,
            86400,
            0,
        );
        if !handler.upsert_mut(Record::from_rdata(origin.clone(), 0, RData::SOA(soa)), 1) {
            bail!("could not insert the SOA of zone {origin}");
        }
        let handler = Arc::new(handler);
        self.shared.catalog.write().await.upsert(
            LowerName::new(&origin),
            vec![handler.clone() as Arc<dyn ZoneHandler>],
        );
        zones.push(Zone { origin, handler });
        Ok(())
    }

    /// Stops serving the zone `origin` (its names then get REFUSED).
    pub async fn remove_zone(&self, origin: &str) -> anyhow::Result<()> {
        let origin = parse_name(origin)?;
        let mut zones = self.shared.zones.write().await;
        let before = zones.len();
        zones.retain(|z| z.origin != origin);
        if zones.len() == before {
            bail!("zone {origin} is not served");
        }
        self.shared
            .catalog
            .write()
            .await
            .remove(&LowerName::new(&origin));
        Ok(())
    }

    /// Adds an SRV record `name SRV priority weight port target`
    /// (`target` `"."` means "no service", RFC 2782).
    pub async fn add_srv(
        &self,
        name: &str,
        priority: u16,
        weight: u16,
        port: u16,
        target: &str,
    ) -> anyhow::Result<()> {
        let rdata = RData::SRV(SRV::new(priority, weight, port, parse_name(target)?));
        self.add_record(name, rdata).await
    }

    /// Adds an MX record `name MX preference exchange`.
    pub async fn add_mx(&self, name: &str, preference: u16, exchange: &str) -> anyhow::Result<()> {
        let rdata = RData::MX(MX::new(preference, parse_name(exchange)?));
        self.add_record(name, rdata).await
    }

    /// Adds a null MX (RFC 7505: preference 0, exchange `"."`): the domain
    /// accepts no mail.
    pub async fn add_null_mx(&self, name: &str) -> anyhow::Result<()> {
        self.add_record(name, RData::MX(MX::new(0, Name::root())))
            .await
    }

    /// Adds an A record.
    pub async fn add_a(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        self.add_record(name, RData::A(A(addr))).await
    }

    /// Adds an AAAA record.
    pub async fn add_aaaa(&self, name: &str, addr: Ipv6Addr) -> anyhow::Result<()> {
        self.add_record(name, RData::AAAA(AAAA(addr))).await
    }

    /// Adds a TXT record holding `text`. Text longer than 255 bytes is split
    /// into several character-strings (which readers concatenate).
    pub async fn add_txt(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let chunks: Vec<&[u8]> = if text.is_empty() {
            vec![&[]]
        } else {
            text.as_bytes().chunks(255).collect()
        };
        self.add_record(name, RData::TXT(TXT::from_bytes(chunks)))
            .await
    }

    /// Adds any record (for types without a helper). The record joins the
    /// record set of its name and type; an identical record is not duplicated.
    pub async fn add_record(&self, name: &str, rdata: RData) -> anyhow::Result<()> {
        let name = parse_name(name)?;
        let handler = self.zone_for(&name).await?;
        let ttl = self.shared.ttl.load(Ordering::SeqCst);
        let serial = handler.serial().await;
        let record_type = rdata.record_type();
        if !handler
            .upsert(Record::from_rdata(name.clone(), ttl, rdata), serial)
            .await
        {
            // upsert returns false when an identical record already exists
            tracing::debug!(%name, ?record_type, "record already present");
        }
        Ok(())
    }

    /// Removes every record of `record_type` at `name`. Returns whether any
    /// record was removed.
    pub async fn remove(&self, name: &str, record_type: RecordType) -> anyhow::Result<bool> {
        let name = parse_name(name)?;
        let handler = self.zone_for(&name).await?;
        let key = RrKey::new(LowerName::new(&name), record_type);
        let removed = handler.records_mut().await.remove(&key).is_some();
        Ok(removed)
    }

    /// Removes every record at `name`, except the SOA of a zone apex. Returns
    /// how many record sets were removed. A name that owns nothing afterwards
    /// (and has nothing below it) gets NXDOMAIN.
    pub async fn clear(&self, name: &str) -> anyhow::Result<usize> {
        let name = parse_name(name)?;
        let handler = self.zone_for(&name).await?;
        let lower = LowerName::new(&name);
        let mut records = handler.records_mut().await;
        let before = records.len();
        records.retain(|key, _| !(key.name == lower && key.record_type != RecordType::SOA));
        Ok(before - records.len())
    }

    /// The handler of the most specific served zone that contains `name`.
    async fn zone_for(&self, name: &Name) -> anyhow::Result<Arc<InMemoryZoneHandler>> {
        let zones = self.shared.zones.read().await;
        zones
            .iter()
            .filter(|z| z.origin.zone_of(name))
            .max_by_key(|z| z.origin.num_labels())
            .map(|z| z.handler.clone())
            .ok_or_else(|| anyhow!("{name} is in no served zone: call add_zone first"))
    }
}

/// Parses an absolute name; the trailing dot is optional, `"."` is the root.
fn parse_name(name: &str) -> anyhow::Result<Name> {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Ok(Name::root());
    }
    let mut parsed =
        Name::from_ascii(trimmed).with_context(|| format!("invalid DNS name {name:?}"))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// Binds a UDP socket and a TCP listener on the same OS-chosen loopback port.
async fn bind_pair() -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(anyhow!(
        "could not bind UDP and TCP on one loopback port: {last_error:?}"
    ))
}

/// A UDP + TCP listener on 127.0.0.1 (same port) that accepts DNS queries and
/// never answers: a resolver pointed at it times out. TCP connections are
/// accepted and held open, silently. Stops when dropped.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Blackhole {
    /// Binds and starts swallowing queries. Must be called inside a tokio
    /// runtime.
    pub async fn start() -> anyhow::Result<Blackhole> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while udp.recv_from(&mut buf).await.is_ok() {}
        });
        tasks.spawn(async move {
            let mut held = JoinSet::new();
            while let Ok((mut stream, _)) = tcp.accept().await {
                held.spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Blackhole { addr, tasks })
    }

    /// The address it listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}
