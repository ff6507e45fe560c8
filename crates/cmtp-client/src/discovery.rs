//! Finding a domain's CMTP servers through DNS, like SMTP finds mail servers.
//!
//! # Rules
//!
//! These rules are normative (docs/PROTOCOL.md carries them):
//!
//! 1. **Static routes.** A static route table given by the configuration
//!    (`domain -> [(host or IP, port)]`) overrides DNS entirely for the
//!    domains it names; its entries are tried in the order given.
//! 2. **SRV.** Otherwise the SRV records at `_cmtp._tcp.<domain>` name the
//!    servers: targets ordered by priority ascending and, within one priority,
//!    by RFC 2782 weighted random selection (see [`order_srv`]: a weight-0
//!    target comes after every positive-weight target of its priority). An SRV
//!    answer whose only target is `"."` means the domain explicitly offers no
//!    CMTP service: permanent failure ([`DiscoveryError::NoService`]). A `"."`
//!    target beside real targets is ignored.
//! 3. **MX.** Without SRV records, the domain's MX hosts, by preference
//!    ascending (equal preferences in random order), on the default port
//!    [`DEFAULT_PORT`] (9001). A null MX (RFC 7505: a single MX whose exchange
//!    is `"."`) means the domain takes no mail: permanent failure
//!    ([`DiscoveryError::NullMx`]). When MX records exist, the domain's own
//!    A/AAAA records are never used.
//! 4. **Implicit MX.** With neither SRV nor MX records, the domain's own
//!    A/AAAA addresses on the default port.
//!
//! Every target host name is then resolved to its AAAA and A addresses (IPv6
//! first; an IP-literal target is used as is). A target whose name has no
//! address is left out; if no target has an address the lookup fails:
//! transiently if a lookup failed transiently, permanently
//! ([`DiscoveryError::NoAddresses`]) otherwise.
//!
//! # Errors
//!
//! NXDOMAIN for the domain itself ([`DiscoveryError::NoSuchDomain`]), an
//! explicit "no service" (SRV `"."`, null MX), and a domain with no SRV, MX, A
//! or AAAA records ([`DiscoveryError::NoRecords`]) are permanent: retrying
//! will not help. Timeouts, SERVFAIL, REFUSED and network errors are
//! transient ([`DiscoveryError::Temporary`]); a transient failure at any step
//! stops the lookup (a later step is not taken on a guess). NXDOMAIN for the
//! SRV name `_cmtp._tcp.<domain>` only means "no SRV records".
//!
//! # Key fingerprints
//!
//! [`Discovery::key_fingerprints`] reads the optional TXT records at
//! `_cmtpkey.<domain>` that publish the 32-byte fingerprints of the domain's
//! server keys, one per record (several during a key rotation), in
//! the form `v=cmtp1; k=ed25519; fp=<64 lowercase hex digits>` (see
//! [`parse_key_txt`]).
//!
//! # Caching
//!
//! Nothing is cached here; the DNS resolver caches answers for their TTL
//! unless [`DiscoveryConfig::cache`] is off.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::{Name, RData, RecordType},
};
use rand::{Rng, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};

/// The default CMTP port, used for MX and implicit-MX targets.
pub const DEFAULT_PORT: u16 = 9001;

/// The SRV owner prefix: SRV records live at `_cmtp._tcp.<domain>`.
pub const SRV_PREFIX: &str = "_cmtp._tcp";

/// The TXT owner prefix: key fingerprints live at `_cmtpkey.<domain>`.
pub const KEY_TXT_PREFIX: &str = "_cmtpkey";

/// Where the system's nameservers are read from when none are configured.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How discovery finds and asks nameservers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The nameservers to ask (UDP, falling back to TCP, on each address's
    /// port). `None` uses the `nameserver` lines of `/etc/resolv.conf` (and
    /// the hosts file for address lookups).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Static routes: domain (lower case, no trailing dot) to the servers to
    /// use, in order, as (host name or IP literal, port). A domain named here
    /// is never looked up in DNS for routing (its host names still are
    /// resolved to addresses).
    pub static_routes: HashMap<String, Vec<(String, u16)>>,
    /// How long to wait for one DNS answer.
    pub timeout: Duration,
    /// How many times a DNS query is retried after a timeout or failure
    /// (0: asked once). One query waits at most about
    /// `timeout × (attempts + 1)`; a resolve makes up to three rounds of
    /// queries (SRV, MX, addresses) plus one address round per target.
    pub attempts: usize,
    /// Whether the resolver caches answers (for their TTL). Tests that change
    /// records while running turn it off.
    pub cache: bool,
}

impl Default for DiscoveryConfig {
    /// System nameservers, no static routes, 5 s timeout, 2 attempts, cache
    /// on.
    fn default() -> Self {
        Self {
            nameservers: None,
            static_routes: HashMap::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            cache: true,
        }
    }
}

/// One server to try, in the order [`Discovery::resolve`] returns them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host name (lower case, no trailing dot) or IP literal.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// The host's addresses with the port, IPv6 first; never empty. Try them
    /// in turn.
    pub addrs: Vec<SocketAddr>,
}

/// One SRV record, as [`order_srv`] orders them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share within a priority (RFC 2782).
    pub weight: u16,
    /// The TCP port.
    pub port: u16,
    /// The target host name (lower case, no trailing dot).
    pub target: String,
}

/// Why discovery failed. [`DiscoveryError::is_permanent`] tells whether a
/// retry could help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The domain does not exist (NXDOMAIN). Permanent.
    #[error("domain {domain} does not exist (NXDOMAIN)")]
    NoSuchDomain {
        /// The domain looked up.
        domain: String,
    },
    /// The domain's SRV record has the target `"."`: it explicitly offers no
    /// CMTP service. Permanent.
    #[error("domain {domain} offers no CMTP service (SRV target \".\")")]
    NoService {
        /// The domain looked up.
        domain: String,
    },
    /// The domain has a null MX (RFC 7505): it accepts no mail. Permanent.
    #[error("domain {domain} accepts no mail (null MX, RFC 7505)")]
    NullMx {
        /// The domain looked up.
        domain: String,
    },
    /// The domain exists but has no SRV, MX, A or AAAA record. Permanent.
    #[error("domain {domain} has no CMTP server: no SRV, MX, A or AAAA records")]
    NoRecords {
        /// The domain looked up.
        domain: String,
    },
    /// The domain names servers, but none of their names has an address.
    /// Permanent.
    #[error("no server of {domain} has an address (tried {})", hosts.join(", "))]
    NoAddresses {
        /// The domain looked up.
        domain: String,
        /// The host names that have no A or AAAA record.
        hosts: Vec<String>,
    },
    /// A DNS lookup failed in a way that may pass: timeout, SERVFAIL,
    /// REFUSED, network error. Transient.
    #[error("DNS lookup of {name} {record_type} failed: {reason}")]
    Temporary {
        /// The name queried.
        name: String,
        /// The record type queried (`"MX"`, `"SRV"`, ...).
        record_type: String,
        /// What went wrong.
        reason: String,
    },
    /// A name handed in, or found in DNS, is not a valid domain name.
    /// Permanent.
    #[error("invalid domain name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The configuration is unusable. Permanent.
    #[error("invalid discovery configuration: {0}")]
    Config(String),
}

impl DiscoveryError {
    /// True when retrying later cannot help (the domain says no, or does not
    /// exist, or the configuration is wrong).
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// True when the failure may pass (timeouts, SERVFAIL, network errors):
    /// a sender keeps the message queued and retries.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Temporary { .. })
    }
}

/// The outcome of one DNS query, with NXDOMAIN and NOERROR/no-data told
/// apart.
enum Answer {
    Found(Vec<RData>),
    NoData,
    NxDomain,
}

/// Finds CMTP servers and key fingerprints in DNS. Cheap to clone (clones
/// share the resolver and its cache).
#[derive(Clone)]
pub struct Discovery {
    resolver: TokioResolver,
    static_routes: HashMap<String, Vec<(String, u16)>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("static_routes", &self.static_routes)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Builds a discovery service from its configuration. Fails on an empty
    /// nameserver list, an empty static route, or a static route with port 0
    /// or an empty host.
    pub fn new(config: DiscoveryConfig) -> Result<Discovery, DiscoveryError> {
        let DiscoveryConfig {
            nameservers,
            static_routes,
            timeout,
            attempts,
            cache,
        } = config;

        let mut routes = HashMap::with_capacity(static_routes.len());
        for (domain, servers) in static_routes {
            let domain = normalize(&domain);
            if servers.is_empty() {
                return Err(DiscoveryError::Config(format!(
                    "static route for {domain} lists no server"
                )));
            }
            for (host, port) in &servers {
                if host.trim().is_empty() || *port == 0 {
                    return Err(DiscoveryError::Config(format!(
                        "static route for {domain}: invalid server {host:?} port {port}"
                    )));
                }
            }
            routes.insert(domain, servers);
        }

        let (servers, hosts_file) = match nameservers {
            Some(list) if list.is_empty() => {
                return Err(DiscoveryError::Config(
                    "the nameserver list is empty".to_owned(),
                ));
            }
            Some(list) => (list, ResolveHosts::Never),
            None => (system_nameservers(), ResolveHosts::Auto),
        };
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();

        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = attempts;
        opts.use_hosts_file = hosts_file;
        // every name we ask is absolute: no search list
        opts.ndots = 0;
        if !cache {
            opts.cache_size = 0;
            opts.positive_max_ttl = Some(Duration::ZERO);
            opts.negative_max_ttl = Some(Duration::ZERO);
        }
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| DiscoveryError::Config(format!("building the DNS resolver: {e}")))?;

        Ok(Discovery {
            resolver,
            static_routes: routes,
        })
    }

    /// The servers of `domain` in the order to try them (see the module
    /// documentation for the rules). `domain` is a validated domain name
    /// (lower case, no trailing dot).
    pub async fn resolve(&self, domain: &str) -> Result<Vec<Target>, DiscoveryError> {
        let mut rng = StdRng::from_entropy();
        self.resolve_with_rng(domain, &mut rng).await
    }

    /// [`Discovery::resolve`] with the random source for SRV weights and MX
    /// ties given by the caller (a seeded rng makes the order reproducible).
    pub async fn resolve_with_rng<R: Rng + Send + ?Sized>(
        &self,
        domain: &str,
        rng: &mut R,
    ) -> Result<Vec<Target>, DiscoveryError> {
        let domain = normalize(domain);

        // (a) static routes override DNS
        if let Some(servers) = self.static_routes.get(&domain) {
            tracing::debug!(%domain, "using the static route");
            return self.resolve_targets(&domain, servers.clone()).await;
        }

        // (b) SRV
        let srv_name = fqdn(&format!("{SRV_PREFIX}.{domain}"))?;
        match self.query(&srv_name, RecordType::SRV).await? {
            Answer::Found(rdatas) => {
                let records: Vec<SrvRecord> = rdatas
                    .into_iter()
                    .filter_map(|rdata| match rdata {
                        RData::SRV(srv) => Some(SrvRecord {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: host_of(&srv.target),
                        }),
                        _ => None,
                    })
                    .collect();
                if !records.is_empty() {
                    let real: Vec<SrvRecord> = records
                        .into_iter()
                        .filter(|r| !r.target.is_empty())
                        .collect();
                    if real.is_empty() {
                        return Err(DiscoveryError::NoService { domain });
                    }
                    let ordered = order_srv(real, rng);
                    tracing::debug!(%domain, ?ordered, "SRV targets");
                    let servers = ordered.into_iter().map(|r| (r.target, r.port)).collect();
                    return self.resolve_targets(&domain, servers).await;
                }
            }
            Answer::NoData | Answer::NxDomain => {}
        }

        // (c) MX
        let domain_name = fqdn(&domain)?;
        match self.query(&domain_name, RecordType::MX).await? {
            Answer::NxDomain => return Err(DiscoveryError::NoSuchDomain { domain }),
            Answer::Found(rdatas) => {
                let mut records: Vec<(u16, String)> = rdatas
                    .into_iter()
                    .filter_map(|rdata| match rdata {
                        RData::MX(mx) => Some((mx.preference, host_of(&mx.exchange))),
                        _ => None,
                    })
                    .collect();
                if !records.is_empty() {
                    records.retain(|(_, host)| !host.is_empty());
                    if records.is_empty() {
                        return Err(DiscoveryError::NullMx { domain });
                    }
                    // equal preferences in random order (RFC 5321 §5.1)
                    records.shuffle(rng);
                    records.sort_by_key(|(preference, _)| *preference);
                    tracing::debug!(%domain, ?records, "MX hosts");
                    let servers = records
                        .into_iter()
                        .map(|(_, host)| (host, DEFAULT_PORT))
                        .collect();
                    return self.resolve_targets(&domain, servers).await;
                }
            }
            Answer::NoData => {}
        }

        // (d) implicit MX: the domain's own addresses
        match self.addresses(&domain, DEFAULT_PORT).await? {
            Addresses::Found(addrs) => Ok(vec![Target {
                host: domain,
                port: DEFAULT_PORT,
                addrs,
            }]),
            Addresses::NxDomain => Err(DiscoveryError::NoSuchDomain { domain }),
            Addresses::None => Err(DiscoveryError::NoRecords { domain }),
        }
    }

    /// The server-key fingerprints that `domain` publishes in TXT records at
    /// `_cmtpkey.<domain>` (see [`parse_key_txt`]), in DNS order, without
    /// duplicates. Records that are not `v=cmtp1` or are malformed are
    /// ignored. No such name, or no such record: `Ok` with an empty list (the
    /// record is optional). Transient DNS failures are errors.
    pub async fn key_fingerprints(&self, domain: &str) -> Result<Vec<[u8; 32]>, DiscoveryError> {
        let domain = normalize(domain);
        let name = fqdn(&format!("{KEY_TXT_PREFIX}.{domain}"))?;
        let rdatas = match self.query(&name, RecordType::TXT).await? {
            Answer::Found(rdatas) => rdatas,
            Answer::NoData | Answer::NxDomain => return Ok(Vec::new()),
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for rdata in rdatas {
            let RData::TXT(txt) = rdata else { continue };
            // the character-strings of one record are concatenated
            let bytes: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if let Some(fp) = parse_key_txt(&text) {
                if seen.insert(fp) {
                    out.push(fp);
                }
            } else {
                tracing::debug!(%domain, record = %text, "ignoring a _cmtpkey TXT record");
            }
        }
        Ok(out)
    }

    /// Resolves each (host, port) to a [`Target`], keeping the order and
    /// leaving out hosts without addresses (and repeated host/port pairs).
    async fn resolve_targets(
        &self,
        domain: &str,
        servers: Vec<(String, u16)>,
    ) -> Result<Vec<Target>, DiscoveryError> {
        let mut targets = Vec::with_capacity(servers.len());
        let mut seen = HashSet::new();
        let mut without_address = Vec::new();
        let mut transient = None;
        for (host, port) in servers {
            let host = normalize(&host);
            if !seen.insert((host.clone(), port)) {
                continue;
            }
            match self.addresses(&host, port).await {
                Ok(Addresses::Found(addrs)) => targets.push(Target { host, port, addrs }),
                Ok(Addresses::None | Addresses::NxDomain) => {
                    tracing::debug!(%domain, %host, "server name has no address");
                    without_address.push(host);
                }
                Err(e) if e.is_transient() => {
                    tracing::debug!(%domain, %host, error = %e, "server address lookup failed");
                    transient.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if !targets.is_empty() {
            return Ok(targets);
        }
        match transient {
            Some(e) => Err(e),
            None => Err(DiscoveryError::NoAddresses {
                domain: domain.to_owned(),
                hosts: without_address,
            }),
        }
    }

    /// The AAAA and A addresses of `host` (asked in parallel), or the IP
    /// literal itself. A transient failure of one family is ignored when the
    /// other has addresses.
    async fn addresses(&self, host: &str, port: u16) -> Result<Addresses, DiscoveryError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(Addresses::Found(vec![SocketAddr::new(ip, port)]));
        }
        let name = fqdn(host)?;
        let (v6, v4) = tokio::join!(
            self.query(&name, RecordType::AAAA),
            self.query(&name, RecordType::A)
        );
        let mut addrs = Vec::new();
        let mut nx = true;
        let mut error = None;
        for answer in [v6, v4] {
            match answer {
                Ok(Answer::Found(rdatas)) => {
                    nx = false;
                    addrs.extend(rdatas.into_iter().filter_map(|rdata| match rdata {
                        RData::A(a) => Some(SocketAddr::new(IpAddr::V4(a.0), port)),
                        RData::AAAA(aaaa) => Some(SocketAddr::new(IpAddr::V6(aaaa.0), port)),
                        _ => None,
                    }));
                }
                Ok(Answer::NoData) => nx = false,
                Ok(Answer::NxDomain) => {}
                Err(e) => {
                    nx = false;
                    error.get_or_insert(e);
                }
            }
        }
        if !addrs.is_empty() {
            return Ok(Addresses::Found(addrs));
        }
        if let Some(e) = error {
            return Err(e);
        }
        Ok(if nx {
            Addresses::NxDomain
        } else {
            Addresses::None
        })
    }

    /// One query; answers of other types (a CNAME chain) are dropped.
    async fn query(&self, name: &Name, record_type: RecordType) -> Result<Answer, DiscoveryError> {
        match self.resolver.lookup(name.clone(), record_type).await {
            Ok(lookup) => {
                let rdatas: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|record| record.record_type() == record_type)
                    .map(|record| record.data.clone())
                    .collect();
                Ok(if rdatas.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Found(rdatas)
                })
            }
            Err(e) if e.is_nx_domain() => Ok(Answer::NxDomain),
            Err(e) if e.is_no_records_found() => Ok(Answer::NoData),
            Err(e) => Err(temporary(name, record_type, &e)),
        }
    }
}

/// The addresses of one host.
enum Addresses {
    Found(Vec<SocketAddr>),
    /// The name exists but has no A or AAAA record.
    None,
    /// The name does not exist.
    NxDomain,
}

fn temporary(name: &Name, record_type: RecordType, error: &NetError) -> DiscoveryError {
    DiscoveryError::Temporary {
        name: host_of(name),
        record_type: record_type.to_string(),
        reason: error.to_string(),
    }
}

/// Orders SRV records as RFC 2782 asks: by priority ascending; within one
/// priority, by repeated weighted random selection: each remaining record is
/// picked with probability weight / (sum of remaining weights). Records of
/// weight 0 are picked only when no positive-weight record of their priority
/// remains, and then in uniformly random order (RFC 2782 gives them "a very
/// small chance" before that; we give none, as most implementations do).
pub fn order_srv<R: Rng + ?Sized>(mut records: Vec<SrvRecord>, rng: &mut R) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some(first) = rest.next() {
        let priority = first.priority;
        let mut group = vec![first];
        while let Some(r) = rest.next_if(|r| r.priority == priority) {
            group.push(r);
        }
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
            let index = if total == 0 {
                rng.gen_range(0..group.len())
            } else {
                let mut pick = rng.gen_range(1..=total);
                group
                    .iter()
                    .position(|r| {
                        let weight = u64::from(r.weight);
                        if pick <= weight {
                            true
                        } else {
                            pick -= weight;
                            false
                        }
                    })
                    .unwrap_or(group.len() - 1)
            };
            out.push(group.remove(index));
        }
    }
    out
}

/// Parses one `_cmtpkey` TXT record: `v=cmtp1; k=ed25519; fp=<64 lowercase
/// hex>`. Fields are separated by `;`, spaces around fields, names and values
/// are ignored, the order is free, unknown fields are ignored. Returns `None`
/// for a record that is not `v=cmtp1`, names another key type, lacks `fp`,
/// repeats a field, or whose `fp` is not exactly 64 lowercase hex digits.
pub fn parse_key_txt(text: &str) -> Option<[u8; 32]> {
    let (mut version, mut kind, mut fingerprint) = (None, None, None);
    for field in text.split(';') {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let Some((key, value)) = field.split_once('=') else {
            continue; // not a key=value field: ignored like an unknown field
        };
        let slot = match key.trim() {
            "v" => &mut version,
            "k" => &mut kind,
            "fp" => &mut fingerprint,
            _ => continue,
        };
        if slot.replace(value.trim()).is_some() {
            return None; // a repeated field makes the record ambiguous
        }
    }
    if version? != "cmtp1" || kind? != "ed25519" {
        return None;
    }
    let fp = fingerprint?;
    if fp.len() != 64 || !fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(fp, &mut out).ok()?;
    Some(out)
}

/// The nameservers of a resolv.conf text (`nameserver <IP>` lines, port 53;
/// a `%scope` suffix is dropped; comments start with `#` or `;`).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let addr = words.next()?;
            let addr = addr.split('%').next().unwrap_or(addr);
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The system's nameservers from [`RESOLV_CONF`]; like the C library, the
/// local host (127.0.0.1:53) when the file names none.
fn system_nameservers() -> Vec<SocketAddr> {
    let servers = std::fs::read_to_string(RESOLV_CONF)
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default();
    if servers.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        servers
    }
}

/// Lower case, without a trailing dot.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// An IP literal host (`192.0.2.1`, `2001:db8::1` or `[2001:db8::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// The absolute DNS name for a domain or host name.
fn fqdn(name: &str) -> Result<Name, DiscoveryError> {
    let mut parsed = Name::from_ascii(name).map_err(|e| DiscoveryError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// A DNS name as a host string: lower case, no trailing dot; the root name
/// gives the empty string.
fn host_of(name: &Name) -> String {
    normalize(&name.to_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 1,
            target: target.to_owned(),
        }
    }

    #[test]
    fn srv_priority_first_then_weight() {
        let mut rng = StdRng::seed_from_u64(7);
        let records = vec![
            srv(20, 5, "c"),
            srv(10, 0, "b"),
            srv(10, 10, "a"),
            srv(5, 0, "z"),
        ];
        for _ in 0..200 {
            let ordered = order_srv(records.clone(), &mut rng);
            let names: Vec<&str> = ordered.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(names, ["z", "a", "b", "c"]);
        }
    }

    #[test]
    fn srv_weights_are_proportional() {
        let mut rng = StdRng::seed_from_u64(42);
        let records = vec![
            srv(1, 10, "ten"),
            srv(1, 30, "thirty"),
            srv(1, 60, "sixty"),
            srv(1, 0, "zero"),
        ];
        let mut first = HashMap::new();
        let draws = 10_000;
        for _ in 0..draws {
            let ordered = order_srv(records.clone(), &mut rng);
            assert_eq!(ordered.len(), 4);
            assert_eq!(ordered[3].target, "zero");
            *first.entry(ordered[0].target.clone()).or_insert(0u32) += 1;
        }
        let share = |t: &str| f64::from(first.get(t).copied().unwrap_or(0)) / f64::from(draws);
        assert!((share("ten") - 0.1).abs() < 0.02, "{first:?}");
        assert!((share("thirty") - 0.3).abs() < 0.03, "{first:?}");
        assert!((share("sixty") - 0.6).abs() < 0.03, "{first:?}");
        assert_eq!(share("zero"), 0.0);
    }

    #[test]
    fn srv_all_zero_weights_are_shuffled() {
        let mut rng = StdRng::seed_from_u64(1);
        let records = vec![srv(1, 0, "a"), srv(1, 0, "b")];
        let mut a_first = 0;
        for _ in 0..1000 {
            if order_srv(records.clone(), &mut rng)[0].target == "a" {
                a_first += 1;
            }
        }
        assert!((350..650).contains(&a_first), "{a_first}");
    }

    #[test]
    fn key_txt_parsing() {
        let fp = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let want = {
            let mut b = [0u8; 32];
            hex::decode_to_slice(fp, &mut b).unwrap();
            b
        };
        for ok in [
            format!("v=cmtp1; k=ed25519; fp={fp}"),
            format!("v=cmtp1;k=ed25519;fp={fp}"),
            format!("  fp = {fp} ;k=ed25519; v=cmtp1; future=thing;"),
            format!("v=cmtp1; x; k=ed25519; fp={fp}"),
        ] {
            assert_eq!(parse_key_txt(&ok), Some(want), "{ok}");
        }
        for bad in [
            format!("k=ed25519; fp={fp}"),
            format!("v=cmtp2; k=ed25519; fp={fp}"),
            format!("v=cmtp1; k=rsa; fp={fp}"),
            format!("v=cmtp1; fp={fp}"),
            "v=cmtp1; k=ed25519".to_owned(),
            format!("v=cmtp1; k=ed25519; fp={}", fp.to_uppercase()),
            format!("v=cmtp1; k=ed25519; fp={}", &fp[..62]),
            format!("v=cmtp1; k=ed25519; fp={fp}00"),
            format!("v=cmtp1; k=ed25519; fp={}zz", &fp[..62]),
            format!("v=cmtp1; v=cmtp1; k=ed25519; fp={fp}"),
            format!("v=cmtp1; k=ed25519; fp={fp}; fp={fp}"),
            String::new(),
        ] {
            assert_eq!(parse_key_txt(&bad), None, "{bad}");
        }
    }

    #[test]
    fn resolv_conf_parsing() {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver  2001:db8::53 # v6\n\
                    nameserver fe80::1%eth0\nnameserver bogus\n;nameserver 192.0.2.9\noptions timeout:1\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn errors_classify() {
        let d = || "example.org".to_owned();
        assert!(DiscoveryError::NoSuchDomain { domain: d() }.is_permanent());
        assert!(DiscoveryError::NoService { domain: d() }.is_permanent());
        assert!(DiscoveryError::NullMx { domain: d() }.is_permanent());
        assert!(DiscoveryError::NoRecords { domain: d() }.is_permanent());
        let t = DiscoveryError::Temporary {
            name: d(),
            record_type: "MX".to_owned(),
            reason: "request timed out".to_owned(),
        };
        assert!(t.is_transient() && !t.is_permanent());
    }

    #[test]
    fn config_is_checked() {
        let mut config = DiscoveryConfig {
            nameservers: Some(vec![]),
            ..DiscoveryConfig::default()
        };
        assert!(matches!(
            Discovery::new(config.clone()),
            Err(DiscoveryError::Config(_))
        ));
        config.nameservers = Some(vec!["127.0.0.1:53".parse().unwrap()]);
        config.static_routes.insert("a.example".to_owned(), vec![]);
        assert!(matches!(
            Discovery::new(config.clone()),
            Err(DiscoveryError::Config(_))
        ));
        config
            .static_routes
            .insert("a.example".to_owned(), vec![("h".to_owned(), 0)]);
        assert!(matches!(
            Discovery::new(config),
            Err(DiscoveryError::Config(_))
        ));
    }

    #[test]
    fn resolve_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let discovery = Discovery::new(DiscoveryConfig {
            nameservers: Some(vec!["127.0.0.1:9".parse().unwrap()]),
            ..DiscoveryConfig::default()
        })
        .unwrap();
        assert_send(&discovery.resolve("example.org"));
        assert_send(&discovery.key_fingerprints("example.org"));
    }
}
