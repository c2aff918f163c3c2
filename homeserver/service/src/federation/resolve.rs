//! Server discovery: where to connect for a server name.
//!
//! Follows "Resolving server names" of the server-server API
//! (https://spec.matrix.org/v1.19/server-server-api/#resolving-server-names): IP literals and
//! explicit ports are used as they are; otherwise `/.well-known/matrix/server` may delegate to
//! another name, then SRV records (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`),
//! then port 8448.
//!
//! DNS goes through the [`Dns`] trait so tests run without a network.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use ruma::ServerName;
use serde::Deserialize;

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a `.well-known` answer is kept when it carries no cache headers.
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a `.well-known` answer is kept, whatever its headers say.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 60 * 60);
/// The first wait after a failed `.well-known` lookup; it doubles with every further failure.
const WELL_KNOWN_ERROR_TTL_MIN: Duration = Duration::from_secs(2 * 60);
/// The longest a failed `.well-known` lookup is kept.
const WELL_KNOWN_ERROR_TTL_MAX: Duration = Duration::from_secs(60 * 60);
/// How many server names the `.well-known` cache holds.
const WELL_KNOWN_CACHE_CAPACITY: usize = 10_000;
/// How long an SRV answer (records found or none) is kept. Resolvers do not keep "no such
/// record" without an SOA to say for how long, and most servers have no SRV record, so without
/// this every transaction would wait for two DNS round trips.
const SRV_TTL: Duration = Duration::from_secs(5 * 60);
/// The largest `.well-known` body read.
pub(crate) const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;

/// A DNS failure (other than "no such record", which lookups report as an empty list).
#[derive(Debug, Clone, thiserror::Error)]
#[error("DNS lookup failed: {0}")]
pub struct DnsError(pub String);

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host, without the trailing dot.
    pub target: String,
}

/// The DNS lookups discovery needs.
pub trait Dns: Send + Sync + 'static {
    /// SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`); empty when there are none.
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>>;
    /// The addresses of `host` (CNAME, AAAA and A records, or the hosts file).
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>>;
}

/// The system's DNS: SRV records through hickory, addresses through the system resolver (so the
/// hosts file applies, as for every other program on the machine).
pub struct SystemDns {
    srv: Option<hickory_resolver::TokioResolver>,
}

impl SystemDns {
    pub fn new() -> Self {
        let srv = match hickory_resolver::TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration: SRV lookups are disabled");
                None
            }
        };
        Self { srv }
    }
}

impl Default for SystemDns {
    fn default() -> Self {
        Self::new()
    }
}

impl Dns for SystemDns {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
        Box::pin(async move {
            let Some(resolver) = &self.srv else {
                return Ok(Vec::new());
            };
            let lookup = match resolver.srv_lookup(format!("{name}.")).await {
                Ok(l) => l,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
                Err(e) => return Err(DnsError(e.to_string())),
            };
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                })
                .collect())
        })
    }

    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| DnsError(e.to_string()))?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Where and how to send requests for one server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host to connect to: an IP literal (IPv6 in brackets) or a hostname whose A/AAAA
    /// records give the address.
    pub connect_host: String,
    pub port: u16,
    /// The `Host` header of requests.
    pub host_header: String,
    /// The name the server's certificate must be valid for; also the SNI unless it is an IP
    /// literal (IPv6 in brackets).
    pub tls_name: String,
}

impl Destination {
    /// Whether the connection goes to another host than the certificate names (an SRV target).
    pub fn connects_elsewhere(&self) -> bool {
        self.connect_host != self.tls_name
    }
}

/// A cached `.well-known` answer: the delegated name, or `None` for a failure.
/// A cached SRV answer: the best target (`None`: no record) and when it was looked up.
type SrvEntry = (Option<(String, u16)>, Instant);

struct WellKnownEntry {
    delegated: Option<String>,
    expires: Instant,
    /// Failures in a row, for the backoff.
    failures: u32,
}

/// How `.well-known` is fetched: an HTTPS GET with the port to use (443; tests use another).
pub trait WellKnownFetcher: Send + Sync + 'static {
    /// Fetches `https://<hostname>/.well-known/matrix/server`: the status, the `Cache-Control`
    /// header and the body (at most [`WELL_KNOWN_MAX_BYTES`]).
    fn fetch<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Result<WellKnownResponse, String>>;
}

/// What a `.well-known` request answered.
#[derive(Debug, Clone)]
pub struct WellKnownResponse {
    pub status: u16,
    pub cache_control: Option<String>,
    pub body: Vec<u8>,
}

/// Server discovery with a bounded `.well-known` cache.
pub struct Resolver {
    dns: Arc<dyn Dns>,
    well_known: Arc<dyn WellKnownFetcher>,
    cache: Mutex<HashMap<String, WellKnownEntry>>,
    /// SRV answers by hostname: the best target, or `None` when there is no record.
    srv_cache: Mutex<HashMap<String, SrvEntry>>,
}

impl Resolver {
    pub fn new(dns: Arc<dyn Dns>, well_known: Arc<dyn WellKnownFetcher>) -> Self {
        Self {
            dns,
            well_known,
            cache: Mutex::new(HashMap::new()),
            srv_cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn dns(&self) -> &Arc<dyn Dns> {
        &self.dns
    }

    /// Resolves `server_name` to a [`Destination`], following the spec's steps.
    #[tracing::instrument(skip_all, fields(server_name = %server_name))]
    pub async fn resolve(&self, server_name: &ServerName) -> Destination {
        let host = server_name.host();
        let original = server_name.as_str();
        // 1. An IP literal, with or without a port.
        if server_name.is_ip_literal() {
            return Destination {
                connect_host: host.to_owned(),
                port: server_name.port().unwrap_or(DEFAULT_PORT),
                host_header: original.to_owned(),
                tls_name: host.to_owned(),
            };
        }
        // 2. A hostname with an explicit port.
        if let Some(port) = server_name.port() {
            return Destination {
                connect_host: host.to_owned(),
                port,
                host_header: original.to_owned(),
                tls_name: host.to_owned(),
            };
        }
        // 3. Delegation through /.well-known/matrix/server.
        if let Some(delegated) = self.well_known(host).await {
            if let Ok(delegated) = ServerName::parse(&delegated) {
                return self.resolve_delegated(&delegated).await;
            }
        }
        // 4 and 5. SRV records of the hostname; the certificate is still the hostname's.
        if let Some((target, port)) = self.srv(host).await {
            return Destination {
                connect_host: target,
                port,
                host_header: host.to_owned(),
                tls_name: host.to_owned(),
            };
        }
        // 6. The hostname on port 8448.
        Destination {
            connect_host: host.to_owned(),
            port: DEFAULT_PORT,
            host_header: host.to_owned(),
            tls_name: host.to_owned(),
        }
    }

    /// Step 3.1 to 3.5: the delegated name from `.well-known`.
    async fn resolve_delegated(&self, delegated: &ServerName) -> Destination {
        let host = delegated.host();
        if delegated.is_ip_literal() || delegated.port().is_some() {
            // 3.1 and 3.2: the delegated name is used as it is, `Host` with the port if any.
            return Destination {
                connect_host: host.to_owned(),
                port: delegated.port().unwrap_or(DEFAULT_PORT),
                host_header: delegated.as_str().to_owned(),
                tls_name: host.to_owned(),
            };
        }
        // 3.3 and 3.4: SRV records of the delegated hostname.
        if let Some((target, port)) = self.srv(host).await {
            return Destination {
                connect_host: target,
                port,
                host_header: host.to_owned(),
                tls_name: host.to_owned(),
            };
        }
        // 3.5: the delegated hostname on port 8448.
        Destination {
            connect_host: host.to_owned(),
            port: DEFAULT_PORT,
            host_header: host.to_owned(),
            tls_name: host.to_owned(),
        }
    }

    /// `_matrix-fed._tcp.<host>`, then the deprecated `_matrix._tcp.<host>`: the best target.
    async fn srv(&self, host: &str) -> Option<(String, u16)> {
        let now = Instant::now();
        if let Some((best, expires)) = self.srv_cache.lock().get(host) {
            if *expires > now {
                return best.clone();
            }
        }
        let mut answered = true;
        let mut found = None;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let name = format!("{service}.{host}");
            match self.dns.lookup_srv(&name).await {
                Ok(records) => {
                    if let Some(best) = best_srv(records) {
                        found = Some(best);
                        break;
                    }
                }
                Err(e) => {
                    // A failed lookup is asked again next time, not remembered as "none".
                    answered = false;
                    tracing::debug!(%name, error = %e, "SRV lookup failed");
                }
            }
        }
        if answered || found.is_some() {
            let mut cache = self.srv_cache.lock();
            if cache.len() >= WELL_KNOWN_CACHE_CAPACITY && !cache.contains_key(host) {
                cache.retain(|_, (_, expires)| *expires > now);
                if cache.len() >= WELL_KNOWN_CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(host.to_owned(), (found.clone(), now + SRV_TTL));
        }
        found
    }

    /// The delegated server name from `.well-known`, from the cache when it is fresh.
    async fn well_known(&self, hostname: &str) -> Option<String> {
        let now = Instant::now();
        let previous_failures = {
            let cache = self.cache.lock();
            match cache.get(hostname) {
                Some(entry) if entry.expires > now => return entry.delegated.clone(),
                Some(entry) => entry.failures,
                None => 0,
            }
        };
        let (delegated, ttl) = match self.well_known.fetch(hostname).await {
            Ok(resp) => match parse_well_known(&resp) {
                Some(delegated) => (Some(delegated), cache_ttl(resp.cache_control.as_deref())),
                None => (None, error_ttl(previous_failures)),
            },
            Err(e) => {
                tracing::debug!(%hostname, error = %e, "no .well-known/matrix/server");
                (None, error_ttl(previous_failures))
            }
        };
        let failures = if delegated.is_some() {
            0
        } else {
            previous_failures.saturating_add(1)
        };
        let mut cache = self.cache.lock();
        if cache.len() >= WELL_KNOWN_CACHE_CAPACITY && !cache.contains_key(hostname) {
            evict(&mut cache, now);
        }
        cache.insert(
            hostname.to_owned(),
            WellKnownEntry {
                delegated: delegated.clone(),
                expires: now + ttl,
                failures,
            },
        );
        delegated
    }
}

/// Makes room in a full cache: drops the expired entries, or else the one expiring first.
fn evict(cache: &mut HashMap<String, WellKnownEntry>, now: Instant) {
    cache.retain(|_, e| e.expires > now);
    if cache.len() >= WELL_KNOWN_CACHE_CAPACITY {
        if let Some(key) = cache
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| k.clone())
        {
            cache.remove(&key);
        }
    }
}

/// The `m.server` of a valid `.well-known` answer (200, a JSON object, a string server name).
fn parse_well_known(resp: &WellKnownResponse) -> Option<String> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(rename = "m.server")]
        server: String,
    }
    if resp.status != 200 {
        return None;
    }
    let body: Body = serde_json::from_slice(&resp.body).ok()?;
    ServerName::parse(&body.server).ok()?;
    Some(body.server)
}

/// How long to keep a successful `.well-known` answer: `max-age` (0 with `no-store` or
/// `no-cache`), 24 hours without one, never more than 48 hours.
fn cache_ttl(cache_control: Option<&str>) -> Duration {
    let Some(header) = cache_control else {
        return WELL_KNOWN_DEFAULT_TTL;
    };
    let mut ttl = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            ttl = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    ttl.unwrap_or(WELL_KNOWN_DEFAULT_TTL)
        .min(WELL_KNOWN_MAX_TTL)
}

/// How long to keep a failure: doubling from 2 minutes with each failure in a row, at most an
/// hour.
fn error_ttl(previous_failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(previous_failures.min(16))
        .unwrap_or(u32::MAX);
    WELL_KNOWN_ERROR_TTL_MIN
        .saturating_mul(factor)
        .min(WELL_KNOWN_ERROR_TTL_MAX)
}

/// The record to use: the lowest priority, then the highest weight. A target of `.` means the
/// service is not offered.
fn best_srv(mut records: Vec<SrvRecord>) -> Option<(String, u16)> {
    records.retain(|r| !r.target.is_empty() && r.target != ".");
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    records.into_iter().next().map(|r| (r.target, r.port))
}

/// The socket addresses of `host` (an IP literal, brackets allowed, or a hostname) at `port`.
pub async fn socket_addrs(
    dns: &dyn Dns,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, DnsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let ips = dns.lookup_ip(bare).await?;
    if ips.is_empty() {
        return Err(DnsError(format!("{host} has no address")));
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// DNS from tables: SRV records by name, addresses by host.
    #[derive(Default)]
    pub(crate) struct FakeDns {
        pub(crate) srv: HashMap<String, Vec<SrvRecord>>,
        pub(crate) hosts: HashMap<String, Vec<IpAddr>>,
        pub(crate) srv_queries: Mutex<Vec<String>>,
    }

    impl FakeDns {
        pub(crate) fn with_host(mut self, host: &str, ip: &str) -> Self {
            self.hosts
                .insert(host.to_owned(), vec![ip.parse().unwrap()]);
            self
        }

        pub(crate) fn with_srv(mut self, name: &str, target: &str, port: u16) -> Self {
            self.srv
                .entry(name.to_owned())
                .or_default()
                .push(SrvRecord {
                    priority: 10,
                    weight: 5,
                    port,
                    target: target.to_owned(),
                });
            self
        }
    }

    impl Dns for FakeDns {
        fn lookup_srv<'a>(
            &'a self,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Vec<SrvRecord>, DnsError>> {
            self.srv_queries.lock().push(name.to_owned());
            let records = self.srv.get(name).cloned().unwrap_or_default();
            Box::pin(async move { Ok(records) })
        }

        fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
            let ips = self.hosts.get(host).cloned().unwrap_or_default();
            Box::pin(async move { Ok(ips) })
        }
    }

    /// `.well-known` answers by hostname; a missing hostname is a connection failure.
    #[derive(Default)]
    struct FakeWellKnown {
        answers: HashMap<String, WellKnownResponse>,
        fetches: AtomicUsize,
    }

    impl FakeWellKnown {
        fn with(mut self, host: &str, status: u16, body: &str, cache: Option<&str>) -> Self {
            self.answers.insert(
                host.to_owned(),
                WellKnownResponse {
                    status,
                    cache_control: cache.map(str::to_owned),
                    body: body.as_bytes().to_vec(),
                },
            );
            self
        }
    }

    impl WellKnownFetcher for FakeWellKnown {
        fn fetch<'a>(
            &'a self,
            hostname: &'a str,
        ) -> BoxFuture<'a, Result<WellKnownResponse, String>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answers
                .get(hostname)
                .cloned()
                .ok_or_else(|| "connection refused".to_owned());
            Box::pin(async move { answer })
        }
    }

    fn resolver(dns: FakeDns, well_known: FakeWellKnown) -> (Resolver, Arc<FakeWellKnown>) {
        let well_known = Arc::new(well_known);
        (Resolver::new(Arc::new(dns), well_known.clone()), well_known)
    }

    async fn resolve(r: &Resolver, name: &str) -> Destination {
        r.resolve(<&ServerName>::try_from(name).unwrap()).await
    }

    fn dest(connect: &str, port: u16, host: &str, tls: &str) -> Destination {
        Destination {
            connect_host: connect.to_owned(),
            port,
            host_header: host.to_owned(),
            tls_name: tls.to_owned(),
        }
    }

    fn delegating(to: &str) -> FakeWellKnown {
        FakeWellKnown::default().with(
            "example.org",
            200,
            &format!(r#"{{"m.server": "{to}"}}"#),
            None,
        )
    }

    #[tokio::test]
    async fn srv_answers_are_kept_found_or_not() {
        let dns = Arc::new(FakeDns::default().with_srv(
            "_matrix-fed._tcp.srv.example",
            "backend.example.net",
            8501,
        ));
        let r = Resolver::new(dns.clone(), Arc::new(FakeWellKnown::default()));
        for _ in 0..3 {
            assert_eq!(
                resolve(&r, "srv.example").await.connect_host,
                "backend.example.net"
            );
            assert_eq!(
                resolve(&r, "plain.example").await.connect_host,
                "plain.example"
            );
        }
        // One query for the name with a record, two (both service names) for the one without.
        assert_eq!(
            *dns.srv_queries.lock(),
            [
                "_matrix-fed._tcp.srv.example",
                "_matrix-fed._tcp.plain.example",
                "_matrix._tcp.plain.example"
            ]
        );
    }

    #[tokio::test]
    async fn step_1_ip_literals_are_used_as_they_are() {
        let (r, wk) = resolver(FakeDns::default(), FakeWellKnown::default());
        assert_eq!(
            resolve(&r, "192.0.2.1").await,
            dest("192.0.2.1", 8448, "192.0.2.1", "192.0.2.1")
        );
        assert_eq!(
            resolve(&r, "192.0.2.1:1234").await,
            dest("192.0.2.1", 1234, "192.0.2.1:1234", "192.0.2.1")
        );
        assert_eq!(
            resolve(&r, "[2001:db8::1]:8449").await,
            dest("[2001:db8::1]", 8449, "[2001:db8::1]:8449", "[2001:db8::1]")
        );
        assert_eq!(
            wk.fetches.load(Ordering::SeqCst),
            0,
            "no .well-known for IPs"
        );
    }

    #[tokio::test]
    async fn step_2_explicit_port_skips_well_known_and_srv() {
        let dns = FakeDns::default().with_srv("_matrix-fed._tcp.example.org", "other.org", 1);
        let (r, wk) = resolver(dns, delegating("elsewhere.org"));
        assert_eq!(
            resolve(&r, "example.org:8000").await,
            dest("example.org", 8000, "example.org:8000", "example.org")
        );
        assert_eq!(wk.fetches.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn step_3_1_delegation_to_an_ip_literal() {
        let (r, _) = resolver(FakeDns::default(), delegating("192.0.2.7:4443"));
        assert_eq!(
            resolve(&r, "example.org").await,
            dest("192.0.2.7", 4443, "192.0.2.7:4443", "192.0.2.7")
        );
        let (r, _) = resolver(FakeDns::default(), delegating("192.0.2.7"));
        assert_eq!(
            resolve(&r, "example.org").await,
            dest("192.0.2.7", 8448, "192.0.2.7", "192.0.2.7")
        );
    }

    #[tokio::test]
    async fn step_3_2_delegation_with_a_port() {
        let dns = FakeDns::default().with_srv("_matrix-fed._tcp.matrix.example.org", "x.org", 1);
        let (r, _) = resolver(dns, delegating("matrix.example.org:443"));
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                "matrix.example.org",
                443,
                "matrix.example.org:443",
                "matrix.example.org"
            )
        );
    }

    #[tokio::test]
    async fn step_3_3_and_3_4_delegated_name_srv_records() {
        let dns = FakeDns::default().with_srv(
            "_matrix-fed._tcp.matrix.example.org",
            "backend.example.net",
            8501,
        );
        let (r, _) = resolver(dns, delegating("matrix.example.org"));
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                "backend.example.net",
                8501,
                "matrix.example.org",
                "matrix.example.org"
            )
        );
        // The deprecated service name, only when the new one has no record.
        let dns = FakeDns::default().with_srv(
            "_matrix._tcp.matrix.example.org",
            "legacy.example.net",
            8502,
        );
        let (r, _) = resolver(dns, delegating("matrix.example.org"));
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                "legacy.example.net",
                8502,
                "matrix.example.org",
                "matrix.example.org"
            )
        );
    }

    #[tokio::test]
    async fn step_3_5_delegated_name_on_port_8448() {
        let (r, _) = resolver(FakeDns::default(), delegating("matrix.example.org"));
        assert_eq!(
            resolve(&r, "example.org").await,
            dest(
                "matrix.example.org",
                8448,
                "matrix.example.org",
                "matrix.example.org"
            )
        );
    }

    #[tokio::test]
    async fn step_4_and_5_srv_of_the_hostname_keeps_its_certificate_name() {
        let dns = FakeDns::default()
            .with_srv("_matrix-fed._tcp.example.org", "fed.example.net", 8600)
            .with_srv("_matrix._tcp.example.org", "legacy.example.net", 8601);
        let (r, _) = resolver(dns, FakeWellKnown::default());
        assert_eq!(
            resolve(&r, "example.org").await,
            dest("fed.example.net", 8600, "example.org", "example.org")
        );
        let dns =
            FakeDns::default().with_srv("_matrix._tcp.example.org", "legacy.example.net", 8601);
        let (r, _) = resolver(dns, FakeWellKnown::default());
        assert_eq!(
            resolve(&r, "example.org").await,
            dest("legacy.example.net", 8601, "example.org", "example.org")
        );
    }

    #[tokio::test]
    async fn step_6_hostname_on_port_8448() {
        let dns = FakeDns::default();
        let (r, _) = resolver(dns, FakeWellKnown::default());
        assert_eq!(
            resolve(&r, "example.org").await,
            dest("example.org", 8448, "example.org", "example.org")
        );
    }

    #[tokio::test]
    async fn invalid_well_known_answers_fall_through_to_srv() {
        for (status, body) in [
            (200, "not json"),
            (200, r#"{"m.server": 5}"#),
            (200, r#"{"other": "x.org"}"#),
            (200, r#"{"m.server": "bad name!"}"#),
            (404, r#"{"m.server": "x.org"}"#),
        ] {
            let dns = FakeDns::default().with_srv("_matrix-fed._tcp.example.org", "fed.net", 9);
            let wk = FakeWellKnown::default().with("example.org", status, body, None);
            let (r, _) = resolver(dns, wk);
            assert_eq!(
                resolve(&r, "example.org").await,
                dest("fed.net", 9, "example.org", "example.org"),
                "for {status} {body}"
            );
        }
    }

    #[tokio::test]
    async fn well_known_answers_are_cached() {
        let wk = FakeWellKnown::default().with(
            "example.org",
            200,
            r#"{"m.server": "m.example.org:1"}"#,
            Some("public, max-age=600"),
        );
        let (r, wk) = resolver(FakeDns::default(), wk);
        for _ in 0..3 {
            assert_eq!(resolve(&r, "example.org").await.port, 1);
        }
        assert_eq!(wk.fetches.load(Ordering::SeqCst), 1);
        // Failures are cached too.
        for _ in 0..3 {
            assert_eq!(resolve(&r, "down.org").await.port, 8448);
        }
        assert_eq!(wk.fetches.load(Ordering::SeqCst), 2);
        // `no-store` is not kept.
        let wk = FakeWellKnown::default().with(
            "example.org",
            200,
            r#"{"m.server": "m.example.org:1"}"#,
            Some("no-store"),
        );
        let (r, wk) = resolver(FakeDns::default(), wk);
        resolve(&r, "example.org").await;
        resolve(&r, "example.org").await;
        assert_eq!(wk.fetches.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn cache_lifetimes_follow_the_spec() {
        assert_eq!(cache_ttl(None), Duration::from_secs(86_400));
        assert_eq!(cache_ttl(Some("max-age=60")), Duration::from_secs(60));
        assert_eq!(
            cache_ttl(Some("public, max-age=999999999")),
            Duration::from_secs(48 * 3600),
            "at most 48 hours"
        );
        assert_eq!(cache_ttl(Some("no-cache")), Duration::ZERO);
        assert_eq!(cache_ttl(Some("public")), Duration::from_secs(86_400));
        assert_eq!(error_ttl(0), Duration::from_secs(120));
        assert_eq!(error_ttl(1), Duration::from_secs(240));
        assert_eq!(error_ttl(10), Duration::from_secs(3600), "at most an hour");
        assert_eq!(error_ttl(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn cache_stays_bounded() {
        let now = Instant::now();
        let mut cache = HashMap::new();
        for i in 0..WELL_KNOWN_CACHE_CAPACITY {
            cache.insert(
                format!("h{i}"),
                WellKnownEntry {
                    delegated: None,
                    expires: now + Duration::from_secs(10 + i as u64),
                    failures: 0,
                },
            );
        }
        evict(&mut cache, now);
        assert_eq!(cache.len(), WELL_KNOWN_CACHE_CAPACITY - 1);
        assert!(!cache.contains_key("h0"), "the entry expiring first goes");
    }

    #[test]
    fn srv_records_by_priority_then_weight() {
        let rec = |priority, weight, target: &str| SrvRecord {
            priority,
            weight,
            port: priority,
            target: target.to_owned(),
        };
        assert_eq!(
            best_srv(vec![rec(20, 100, "b"), rec(10, 1, "c"), rec(10, 50, "a")]),
            Some(("a".to_owned(), 10))
        );
        assert_eq!(
            best_srv(vec![rec(10, 1, ".")]),
            None,
            "`.` means no service"
        );
        assert_eq!(best_srv(Vec::new()), None);
    }
}
