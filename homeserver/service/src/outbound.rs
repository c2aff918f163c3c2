//! The outbound guard: every request the server makes on someone else's say (federation and
//! its `.well-known` and key lookups, push gateways, remote media, URL previews) may only reach
//! public addresses, unless the operator allows a range (`ip_range_allowlist`).
//!
//! Four pieces, all here so every fetcher uses the same rules:
//! - [`special_range`], the classifier: which non-public range an address is in, if any;
//! - [`GuardedResolver`], a `reqwest` resolver that drops refused addresses, so the address
//!   checked is the address connected to (no second lookup a DNS rebinding could answer
//!   differently);
//! - [`OutboundGuard::check_url`], for hosts that are IP literals (reqwest does not ask the
//!   resolver for those);
//! - [`OutboundGuard::redirect_policy`], which checks every hop of a redirect the same way.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use paracord_core::{
    config::{cidr_contains, parse_cidr},
    Config, Error, ErrorKind,
};

/// How long a connection attempt to a remote host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An address range: network and prefix length.
type Cidr = (IpAddr, u8);

/// Which addresses may be reached.
#[derive(Debug, Default)]
struct Rules {
    /// Ranges reached even though they are special.
    allow: Vec<Cidr>,
    /// Ranges never reached, whatever `allow` says (URL previews' `url_preview_ip_denylist`).
    deny: Vec<Cidr>,
    /// Every address may be reached (the deprecated `url_preview_allow_private`).
    allow_all: bool,
}

/// The rules for outbound requests. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OutboundGuard(Arc<Rules>);

/// Why an outbound request was not made. Its text is for logs, never for clients (it would
/// tell them what a name resolves to inside the network): clients get [`unreachable`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("outbound request to {host} refused: {reason}")]
pub struct Refused {
    pub host: String,
    pub reason: String,
}

/// What clients are told when anything the server fetched for them failed: refused by the
/// guard, unreachable, or a bad answer, all alike.
pub fn unreachable() -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        "could not reach the remote server",
    )
}

fn cidrs(list: &[String]) -> Vec<Cidr> {
    // Config::validate refused unparsable ranges already.
    list.iter().filter_map(|c| parse_cidr(c)).collect()
}

impl OutboundGuard {
    /// A guard allowing `allow` (CIDR strings; unparsable ones are ignored) on top of the
    /// public internet.
    pub fn new(allow: &[String]) -> Self {
        Self(Arc::new(Rules {
            allow: cidrs(allow),
            ..Rules::default()
        }))
    }

    /// The guard of federation and push gateways: `ip_range_allowlist`.
    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.ip_range_allowlist)
    }

    /// The guard of application services: their URLs are the operator's own configuration
    /// (a file in `appservice_dir` or a server admin's API call), and bridges usually run on
    /// loopback or a private network next to the server, so every range is permitted, as in
    /// Synapse. Requests still go through [`GuardedClient`], which follows no redirect for
    /// them, so a registration's URL is the only place they go.
    pub fn for_appservices() -> Self {
        Self(Arc::new(Rules {
            allow_all: true,
            ..Rules::default()
        }))
    }

    /// The guard of URL previews: `url_preview_ip_denylist` first, then
    /// `ip_range_allowlist` and `url_preview_ip_allowlist` (or everything with the deprecated
    /// `url_preview_allow_private`), then public addresses.
    pub fn for_previews(config: &Config) -> Self {
        let mut allow = cidrs(&config.ip_range_allowlist);
        allow.extend(cidrs(&config.url_preview_ip_allowlist));
        Self(Arc::new(Rules {
            allow,
            deny: cidrs(&config.url_preview_ip_denylist),
            allow_all: config.url_preview_allow_private,
        }))
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let rules = &self.0;
        if rules.deny.iter().any(|r| cidr_contains(*r, ip)) {
            return Some("a denied range");
        }
        if rules.allow_all || rules.allow.iter().any(|r| cidr_contains(*r, ip)) {
            return None;
        }
        special_range(ip)
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// Checks a URL before it is requested: http or https, and an IP-literal host must be
    /// permitted (a hostname is checked when it is resolved, by [`GuardedResolver`]).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let refused = |reason: &str| Refused {
            host: host.clone(),
            reason: reason.to_owned(),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused("not an http(s) URL"));
        }
        if host.is_empty() {
            return Err(refused("no host"));
        }
        // The URL parser writes IPv4 hosts in dotted form (`127.1` and `0x7f.0.0.1` too) and
        // IPv6 hosts in brackets; anything else is a domain name.
        match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => self.check_ip(&host, ip),
            Err(_) => Ok(()),
        }
    }

    /// Checks one address, logging a refusal.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match self.refusal(ip) {
            None => Ok(()),
            Some(range) => {
                tracing::warn!(%host, %ip, range, "outbound request refused: {ip} is in {range}");
                Err(Refused {
                    host: host.to_owned(),
                    reason: format!("{ip} is in {range}"),
                })
            }
        }
    }

    /// The permitted addresses of `host`; an error when none is left.
    pub fn filter(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for addr in addrs {
            match self.refusal(addr.ip()) {
                None => kept.push(addr),
                Some(range) => dropped.push((addr.ip(), range)),
            }
        }
        if kept.is_empty() {
            if let Some((ip, range)) = dropped.first() {
                tracing::warn!(
                    %host, %ip, range,
                    "outbound request refused: {host} resolves only to addresses that may not be reached"
                );
                return Err(Refused {
                    host: host.to_owned(),
                    reason: format!("every address is special ({ip} is in {range})"),
                });
            }
            return Err(Refused {
                host: host.to_owned(),
                reason: "no address".to_owned(),
            });
        }
        if !dropped.is_empty() {
            tracing::debug!(%host, dropped = dropped.len(), "special addresses of a host dropped");
        }
        Ok(kept)
    }

    /// A redirect policy following at most `max` redirects, each to an http(s) URL (https
    /// only when `https_only`) whose host passes [`OutboundGuard::check_url`]. Hostnames are
    /// checked again when resolved.
    pub fn redirect_policy(&self, max: usize, https_only: bool) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(format!("more than {max} redirects"));
            }
            if https_only && attempt.url().scheme() != "https" {
                return attempt.error("a redirect to a URL that is not https");
            }
            match guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    }

    /// A client builder with the guard's resolver, no proxy from the environment
    /// (`HTTPS_PROXY` would bypass the guard) and `redirects` redirects at most, each checked.
    /// Requests must still pass [`OutboundGuard::check_url`] first; [`GuardedClient`] does that.
    pub fn client_builder(&self, redirects: usize) -> reqwest::ClientBuilder {
        let policy = if redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            self.redirect_policy(redirects, false)
        };
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(self.clone())))
            .redirect(policy)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("Paracord/", env!("CARGO_PKG_VERSION")))
    }
}

/// An HTTP client whose every request goes through the guard.
#[derive(Clone)]
pub struct GuardedClient {
    guard: OutboundGuard,
    http: reqwest::Client,
}

impl GuardedClient {
    /// A client following at most `redirects` redirects (0: none), each request limited to
    /// `timeout`.
    pub fn new(guard: OutboundGuard, redirects: usize, timeout: Duration) -> Result<Self, String> {
        let http = guard
            .client_builder(redirects)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self { guard, http })
    }

    /// A request to `url`, once the URL passed the guard.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, Refused> {
        self.guard.check_url(&url)?;
        Ok(self.http.request(method, url))
    }
}

/// Name resolution through the system's resolver, dropping addresses the guard refuses.
pub struct GuardedResolver {
    guard: OutboundGuard,
}

impl GuardedResolver {
    pub fn new(guard: OutboundGuard) -> Self {
        Self { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = guard.filter(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The non-public range `ip` is in, by name, or `None` for an address on the public internet.
/// IPv4-mapped and IPv4-compatible IPv6 addresses are judged by their IPv4 address; NAT64,
/// 6to4 and Teredo addresses, which reach IPv4 hosts through a translator or tunnel, are
/// refused whatever they embed.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

const V4_RANGES: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" 0.0.0.0/8"),
    ([10, 0, 0, 0], 8, "private 10.0.0.0/8"),
    (
        [100, 64, 0, 0],
        10,
        "shared address space (CGNAT) 100.64.0.0/10",
    ),
    ([127, 0, 0, 0], 8, "loopback 127.0.0.0/8"),
    ([169, 254, 0, 0], 16, "link-local 169.254.0.0/16"),
    ([172, 16, 0, 0], 12, "private 172.16.0.0/12"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments 192.0.0.0/24"),
    ([192, 0, 2, 0], 24, "documentation 192.0.2.0/24"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast 192.88.99.0/24"),
    ([192, 168, 0, 0], 16, "private 192.168.0.0/16"),
    ([198, 18, 0, 0], 15, "benchmarking 198.18.0.0/15"),
    ([198, 51, 100, 0], 24, "documentation 198.51.100.0/24"),
    ([203, 0, 113, 0], 24, "documentation 203.0.113.0/24"),
    ([224, 0, 0, 0], 4, "multicast 224.0.0.0/4"),
    ([240, 0, 0, 0], 4, "reserved 240.0.0.0/4 (with broadcast)"),
];

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_RANGES
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|(_, _, name)| *name)
}

const V6_RANGES: &[([u16; 8], u32, &str)] = &[
    ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64 64:ff9b::/96"),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local NAT64 64:ff9b:1::/48",
    ),
    ([0, 0, 0, 0, 0, 0, 0, 0], 8, "reserved ::/8"),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only 100::/64"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo 2001::/32"),
    (
        [0x2001, 2, 0, 0, 0, 0, 0, 0],
        48,
        "benchmarking 2001:2::/48",
    ),
    ([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "ORCHID 2001:10::/28"),
    (
        [0x2001, 0x20, 0, 0, 0, 0, 0, 0],
        28,
        "ORCHIDv2 2001:20::/28",
    ),
    (
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation 2001:db8::/32",
    ),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 2002::/16"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation 3fff::/20"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local fc00::/7"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local fe80::/10"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local fec0::/10"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast ff00::/8"),
];

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified ::");
    }
    if ip.is_loopback() {
        return Some("loopback ::1");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated) carry an IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    if in_v6(ip, [0; 8], 96) {
        let [.., a, b, c, d] = ip.octets();
        return special_v4(Ipv4Addr::new(a, b, c, d));
    }
    V6_RANGES
        .iter()
        .find(|(net, len, _)| in_v6(ip, *net, *len))
        .map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Issue 15: every special range is refused, public addresses are not.
    #[test]
    fn special_ranges_are_refused() {
        let refused = [
            // IPv4
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b::808:808",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:808:808::1",
            "2002:7f00:1::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "2001:2::1",
            "2001:10::1",
            "3fff::1",
            "100::1",
            // IPv4-mapped and -compatible: the embedded IPv4 address decides.
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::192.168.0.1",
            // Elsewhere in ::/8.
            "::1:0:0:1",
        ];
        let guard = OutboundGuard::default();
        for s in refused {
            assert!(special_range(ip(s)).is_some(), "{s} should be special");
            assert!(!guard.permits(ip(s)), "{s} should be refused");
        }
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "2001:1::1",
        ];
        for s in public {
            assert_eq!(special_range(ip(s)), None, "{s} should be public");
            assert!(guard.permits(ip(s)), "{s} should be permitted");
        }
    }

    #[test]
    fn the_allowlist_admits_its_ranges_only() {
        let guard = OutboundGuard::new(&[
            "127.0.0.0/8".to_owned(),
            "::1/128".to_owned(),
            "10.1.0.0/16".to_owned(),
            "fd00::/8".to_owned(),
        ]);
        for s in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "fd00::5",
            "8.8.8.8",
        ] {
            assert!(guard.permits(ip(s)), "{s} is allowed");
        }
        for s in [
            "10.2.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "fe80::1",
            "fc00::1",
        ] {
            assert!(!guard.permits(ip(s)), "{s} is not allowed");
        }
    }

    #[test]
    fn preview_rules_deny_first_then_allow() {
        let config = Config {
            ip_range_allowlist: vec!["10.0.0.0/8".to_owned()],
            url_preview_ip_allowlist: vec!["192.168.0.0/16".to_owned()],
            url_preview_ip_denylist: vec!["10.9.0.0/16".to_owned(), "8.8.8.0/24".to_owned()],
            ..Config::default()
        };
        let previews = OutboundGuard::for_previews(&config);
        assert!(previews.permits(ip("10.1.1.1")));
        assert!(previews.permits(ip("192.168.1.1")));
        assert!(!previews.permits(ip("10.9.1.1")));
        assert!(!previews.permits(ip("8.8.8.8")));
        assert!(!previews.permits(ip("127.0.0.1")));
        // The preview allowlist is for previews only.
        assert!(!OutboundGuard::from_config(&config).permits(ip("192.168.1.1")));
        // The deprecated switch allows everything but the deny list.
        let open = OutboundGuard::for_previews(&Config {
            url_preview_allow_private: true,
            url_preview_ip_denylist: vec!["127.0.0.2/32".to_owned()],
            ..Config::default()
        });
        assert!(open.permits(ip("127.0.0.1")));
        assert!(!open.permits(ip("127.0.0.2")));
    }

    #[test]
    fn urls_with_ip_literal_hosts_are_checked() {
        let guard = OutboundGuard::default();
        let check = |u: &str| guard.check_url(&reqwest::Url::parse(u).unwrap());
        for u in [
            "http://127.0.0.1/",
            "http://127.1:8080/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "https://[::1]/",
            "https://[::ffff:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://169.254.169.254/latest/meta-data/",
            "ftp://example.org/",
            "file:///etc/passwd",
        ] {
            assert!(check(u).is_err(), "{u} should be refused");
        }
        for u in [
            "https://example.org/",
            "http://8.8.8.8/",
            "https://[2606:4700::1]/",
        ] {
            assert!(check(u).is_ok(), "{u} should pass");
        }
    }

    #[test]
    fn filtering_keeps_permitted_addresses_and_fails_without_any() {
        let guard = OutboundGuard::default();
        let addr = |s: &str| SocketAddr::new(ip(s), 443);
        let kept = guard
            .filter("mixed.test", [addr("127.0.0.1"), addr("8.8.8.8")])
            .unwrap();
        assert_eq!(kept, vec![addr("8.8.8.8")]);
        assert!(guard
            .filter("inside.test", [addr("10.0.0.1"), addr("::1")])
            .is_err());
        assert!(guard.filter("none.test", []).is_err());
    }

    /// An HTTP server on `ip` answering every request with `response`; counts requests.
    async fn http_server(
        ip: &str,
        response: String,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (addr, hits)
    }

    fn redirect_to(location: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    // Issue 15: names resolving to refused addresses, IP literals and redirect hops are all
    // checked; what the allowlist admits is reached.
    #[tokio::test]
    async fn requests_redirects_and_names_go_through_the_guard() {
        let (target, target_hits) = http_server("127.0.0.2", OK.to_owned()).await;
        let (hop, _) = http_server("127.0.0.1", redirect_to(&format!("http://{target}/"))).await;
        let get = |client: &GuardedClient, url: String| {
            let client = client.clone();
            async move {
                let req = client
                    .request(reqwest::Method::GET, reqwest::Url::parse(&url).unwrap())
                    .map_err(|e| e.to_string())?;
                let resp = req.send().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(resp.status().as_u16())
            }
        };
        let strict =
            GuardedClient::new(OutboundGuard::default(), 5, Duration::from_secs(5)).unwrap();
        assert!(get(&strict, format!("http://{hop}/")).await.is_err());
        // `localhost` resolves to loopback only: refused at resolution.
        let named = format!("http://localhost:{}/", hop.port());
        assert!(get(&strict, named.clone()).await.is_err());

        // 127.0.0.1 allowed, 127.0.0.2 not: the redirect hop is refused.
        let one = OutboundGuard::new(&["127.0.0.1/32".to_owned(), "::1/128".to_owned()]);
        let client = GuardedClient::new(one.clone(), 5, Duration::from_secs(5)).unwrap();
        assert!(get(&client, format!("http://{hop}/")).await.is_err());
        assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A hop by name is checked when resolved: localhost -> 127.0.0.1 passes.
        let (ok, ok_hits) = http_server("127.0.0.1", OK.to_owned()).await;
        let (by_name, _) = http_server(
            "127.0.0.1",
            redirect_to(&format!("http://localhost:{}/", ok.port())),
        )
        .await;
        assert_eq!(get(&client, format!("http://{by_name}/")).await, Ok(200));
        assert_eq!(ok_hits.load(std::sync::atomic::Ordering::SeqCst), 1);

        // With the whole of loopback allowed, the redirect is followed.
        let all = OutboundGuard::new(&["127.0.0.0/8".to_owned()]);
        let client = GuardedClient::new(all.clone(), 5, Duration::from_secs(5)).unwrap();
        assert_eq!(get(&client, format!("http://{hop}/")).await, Ok(200));
        assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Without redirects, the 302 is the answer.
        let client = GuardedClient::new(all, 0, Duration::from_secs(5)).unwrap();
        assert_eq!(get(&client, format!("http://{hop}/")).await, Ok(302));
        assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
