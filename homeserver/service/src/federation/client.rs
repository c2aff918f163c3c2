//! The outgoing federation client: HTTPS to other servers, found through [`Resolver`].
//!
//! Trust: the webpki roots plus `federation_ca_file`; `federation_verify_tls = false` turns
//! certificate checks off (tests only). The URL names the host the certificate must be valid
//! for (so the SNI is right), the `Host` header is the one discovery chose, and when an SRV
//! record points elsewhere the connection goes to the SRV target's addresses through a DNS
//! hook. Requests are not signed here; X-Matrix signing wraps [`FederationClient::send`].
//!
//! The outbound guard ([`crate::outbound`]) applies to every connection: the DNS hook drops
//! addresses the guard refuses (so the checked address is the one connected to), IP-literal
//! destinations are checked before the request, and `.well-known` redirects are checked at
//! every hop. Through a `federation_proxy`, which resolves names itself, the destination's
//! addresses are checked before the `CONNECT` (not pinned: the proxy looks the name up again).

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use http::header::{HeaderValue, CACHE_CONTROL, HOST};
use paracord_core::Config;
use parking_lot::Mutex;
use ruma::ServerName;

use crate::outbound::OutboundGuard;

use super::resolve::{
    socket_addrs, Destination, Dns, Resolver, SystemDns, WellKnownFetcher, WellKnownResponse,
    WELL_KNOWN_MAX_BYTES,
};

/// Largest response body accepted from another server.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Time for a whole federation request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a `.well-known` request.
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed for `.well-known` (a loop ends here too).
const WELL_KNOWN_MAX_REDIRECTS: usize = 5;

/// How the client is set up.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Extra CA certificates (PEM) trusted besides the webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Check certificates. Off only in tests.
    pub verify_tls: bool,
    /// The port of `.well-known` requests: 443 (tests point it elsewhere).
    pub well_known_port: u16,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    /// An HTTP proxy (`http://host:port`) every request is tunnelled through with `CONNECT`.
    pub proxy: Option<String>,
    /// Which addresses may be reached (`ip_range_allowlist`).
    pub guard: OutboundGuard,
}

impl ClientSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            ca_file: config.federation_ca_file.clone(),
            verify_tls: config.federation_verify_tls,
            well_known_port: 443,
            request_timeout: REQUEST_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            proxy: config.federation_proxy.clone(),
            guard: OutboundGuard::from_config(config),
        }
    }
}

/// Why a federation request failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("the request is not valid: {0}")]
    BadRequest(String),
    #[error("cannot reach {destination}: {detail}")]
    Unreachable { destination: String, detail: String },
    #[error("the response of {destination} is larger than {limit} bytes")]
    TooLarge { destination: String, limit: usize },
    #[error(transparent)]
    Refused(#[from] crate::outbound::Refused),
}

/// A response of another server.
#[derive(Debug, Clone)]
pub struct FederationResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// Host names that must connect to another host's addresses (SRV targets), by URL host.
type Overrides = Arc<Mutex<HashMap<String, String>>>;

/// The outgoing federation client.
pub struct FederationClient {
    resolver: Resolver,
    http: reqwest::Client,
    overrides: Overrides,
    max_response_bytes: usize,
    guard: OutboundGuard,
    /// Whether requests go through a `federation_proxy`.
    proxied: bool,
}

impl FederationClient {
    /// The client for `config`, with the system's DNS.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Self::new(
            &ClientSettings::from_config(config),
            Arc::new(SystemDns::new()),
        )
    }

    pub fn new(settings: &ClientSettings, dns: Arc<dyn Dns>) -> Result<Self, String> {
        let overrides: Overrides = Arc::default();
        let bridge = Arc::new(DnsBridge {
            dns: dns.clone(),
            overrides: overrides.clone(),
            guard: settings.guard.clone(),
            trusted: settings.proxy.as_deref().and_then(proxy_host),
        });
        let http = builder(settings, bridge.clone())?
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout)
            .build()
            .map_err(|e| format!("cannot build the federation client: {e}"))?;
        let well_known_http = builder(settings, bridge)?
            .redirect(
                settings
                    .guard
                    .redirect_policy(WELL_KNOWN_MAX_REDIRECTS, true),
            )
            .timeout(WELL_KNOWN_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the federation client: {e}"))?;
        let fetcher = Arc::new(HttpsWellKnown {
            http: well_known_http,
            port: settings.well_known_port,
        });
        Ok(Self {
            resolver: Resolver::new(dns, fetcher),
            http,
            overrides,
            max_response_bytes: settings.max_response_bytes,
            guard: settings.guard.clone(),
            proxied: settings.proxy.is_some(),
        })
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Sends `request` (its URI is a path and query, e.g. `/_matrix/key/v2/server`) to the
    /// server `destination`, returning the status, headers and body of the answer.
    #[tracing::instrument(skip_all, fields(destination = %destination, method = %request.method()))]
    pub async fn send(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
    ) -> Result<FederationResponse, FederationError> {
        let target = self.resolver.resolve(destination).await;
        self.send_to(destination, &target, request).await
    }

    /// Sends `request` to an already resolved `target`.
    pub async fn send_to(
        &self,
        destination: &ServerName,
        target: &Destination,
        request: http::Request<Vec<u8>>,
    ) -> Result<FederationResponse, FederationError> {
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| FederationError::BadRequest("the URI has no path".to_owned()))?;
        self.check_destination(target).await?;
        if target.connects_elsewhere() {
            self.overrides
                .lock()
                .insert(target.tls_name.clone(), target.connect_host.clone());
        }
        let url = format!("https://{}:{}{path}", target.tls_name, target.port);
        let host = HeaderValue::from_str(&target.host_header)
            .map_err(|e| FederationError::BadRequest(format!("bad Host header: {e}")))?;
        let mut headers = parts.headers;
        headers.insert(HOST, host);
        let unreachable = |e: reqwest::Error| FederationError::Unreachable {
            destination: destination.to_string(),
            detail: error_chain(&e),
        };
        let response = self
            .http
            .request(parts.method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_capped(response, self.max_response_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => FederationError::TooLarge {
                    destination: destination.to_string(),
                    limit: self.max_response_bytes,
                },
                ReadError::Http(e) => unreachable(e),
            })?;
        Ok(FederationResponse {
            status,
            headers,
            body,
        })
    }
}

impl FederationClient {
    /// The guard's checks that the DNS hook cannot make: an IP-literal host (reqwest connects
    /// to it without asking the hook) and, through a proxy (which resolves names itself), the
    /// addresses the name has now.
    async fn check_destination(&self, target: &Destination) -> Result<(), FederationError> {
        let bare = target
            .tls_name
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            self.guard.check_ip(&target.tls_name, ip)?;
            return Ok(());
        }
        if self.proxied {
            let addrs = socket_addrs(self.resolver.dns().as_ref(), bare, target.port)
                .await
                .map_err(|e| FederationError::Unreachable {
                    destination: target.tls_name.clone(),
                    detail: e.to_string(),
                })?;
            let kept = self.guard.filter(bare, addrs.iter().copied())?;
            if kept.len() != addrs.len() {
                // The proxy may pick any of them.
                return Err(crate::outbound::Refused {
                    host: bare.to_owned(),
                    reason: "some of its addresses may not be reached".to_owned(),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// The host of a proxy URL (`http://user:pass@host:port`), which the DNS hook resolves without
/// the guard: the operator chose it.
fn proxy_host(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(uri.host()?.to_owned())
}

fn builder(
    settings: &ClientSettings,
    dns: Arc<DnsBridge>,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .dns_resolver(dns)
        .user_agent(concat!("Paracord/", env!("CARGO_PKG_VERSION")));
    // Trust: the compiled-in webpki roots, the system's CAs, and `federation_ca_file`.
    for cert in system_roots() {
        builder = builder.add_root_certificate(cert);
    }
    if let Some(path) = &settings.ca_file {
        for cert in load_ca_file(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if !settings.verify_tls {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(url) = &settings.proxy {
        // Every URL is https, so reqwest tunnels with CONNECT to `<tls_name>:<port>`: the
        // proxy resolves that name, and the DNS hook (SRV targets) is not consulted for it.
        let proxy = reqwest::Proxy::all(url.as_str())
            .map_err(|e| format!("federation_proxy is not a proxy URL: {e}"))?;
        builder = builder.proxy(proxy);
    } else {
        // One way to set a proxy: `HTTPS_PROXY` and friends in the environment are ignored.
        builder = builder.no_proxy();
    }
    Ok(builder)
}

/// The operating system's trusted CA certificates (on Debian, `/etc/ssl/certs`); none, with a
/// warning, when they cannot be read.
fn system_roots() -> Vec<reqwest::Certificate> {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(
            errors = found.errors.len(),
            "some system CA certificates could not be read: {}",
            found.errors[0]
        );
    }
    found
        .certs
        .iter()
        .filter_map(|c| reqwest::Certificate::from_der(c.as_ref()).ok())
        .collect()
}

/// The certificates of a PEM file; an error names the file.
fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read federation_ca_file {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("federation_ca_file {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "federation_ca_file {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// reqwest's name resolution through [`Dns`], sending SRV-delegated names to their targets
/// and dropping addresses the outbound guard refuses.
struct DnsBridge {
    dns: Arc<dyn Dns>,
    overrides: Overrides,
    guard: OutboundGuard,
    /// The proxy's host, resolved without the guard.
    trusted: Option<String>,
}

impl reqwest::dns::Resolve for DnsBridge {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.dns.clone();
        let guard = self.guard.clone();
        let trusted = self.trusted.as_deref() == Some(name.as_str());
        let host = self
            .overrides
            .lock()
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| name.as_str().to_owned());
        Box::pin(async move {
            let addrs = socket_addrs(dns.as_ref(), &host, 0).await?;
            let addrs = if trusted {
                addrs
            } else {
                guard.filter(&host, addrs)?
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `.well-known/matrix/server` over HTTPS.
struct HttpsWellKnown {
    http: reqwest::Client,
    port: u16,
}

impl WellKnownFetcher for HttpsWellKnown {
    fn fetch<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Result<WellKnownResponse, String>> {
        Box::pin(async move {
            let url = if self.port == 443 {
                format!("https://{hostname}/.well-known/matrix/server")
            } else {
                format!("https://{hostname}:{}/.well-known/matrix/server", self.port)
            };
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let cache_control = response
                .headers()
                .get(CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = read_capped(response, WELL_KNOWN_MAX_BYTES)
                .await
                .map_err(|e| match e {
                    ReadError::TooLarge => "the body is too large".to_owned(),
                    ReadError::Http(e) => error_chain(&e),
                })?;
            Ok(WellKnownResponse {
                status,
                cache_control,
                body,
            })
        })
    }
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// Reads a body, stopping as soon as it passes `limit` bytes.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes, for logs (reqwest's top-level message hides TLS details).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, path::PathBuf};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::federation::resolve::tests::FakeDns;

    #[test]
    fn the_systems_trusted_cas_are_loaded() {
        // Debian's ca-certificates (installed by scripts/install-deps with curl) provides
        // /etc/ssl/certs; the federation client trusts them besides its own roots.
        let roots = system_roots();
        assert!(
            roots.len() > 10,
            "expected the system's CA certificates, got {}",
            roots.len()
        );
    }

    /// An HTTPS server on loopback with a self-signed certificate for `names`. It answers
    /// `/.well-known/matrix/server` with `well_known` (404 when `None`), anything else with
    /// `{"host": <Host header>, "path": <path>}` padded to `pad` bytes.
    struct TestHttps {
        addr: SocketAddr,
        cert_file: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl TestHttps {
        async fn start(names: &[&str], well_known: Option<String>, pad: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.self_signed(&key).unwrap();
            let cert_file = dir.path().join("cert.pem");
            std::fs::write(&cert_file, cert.pem()).unwrap();
            let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let well_known = well_known.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        let host = head
                            .lines()
                            .find_map(|l| {
                                l.split_once(':')
                                    .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                                    .map(|(_, v)| v.trim().to_owned())
                            })
                            .unwrap_or_default();
                        let (status, body) = if path == "/.well-known/matrix/server" {
                            match &well_known {
                                Some(server) => {
                                    ("200 OK", serde_json::json!({ "m.server": server }))
                                }
                                None => ("404 Not Found", serde_json::json!({})),
                            }
                        } else {
                            (
                                "200 OK",
                                serde_json::json!({
                                    "host": host, "path": path, "pad": "x".repeat(pad)
                                }),
                            )
                        };
                        let body = body.to_string();
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            Self {
                addr,
                cert_file,
                _dir: dir,
            }
        }

        fn settings(&self) -> ClientSettings {
            ClientSettings {
                ca_file: Some(self.cert_file.clone()),
                verify_tls: true,
                well_known_port: self.addr.port(),
                request_timeout: Duration::from_secs(10),
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                proxy: None,
                guard: loopback(),
            }
        }
    }

    /// The guard of tests on loopback.
    fn loopback() -> OutboundGuard {
        OutboundGuard::new(&["127.0.0.0/8".to_owned(), "::1/128".to_owned()])
    }

    fn get(path: &str) -> http::Request<Vec<u8>> {
        http::Request::get(path).body(Vec::new()).unwrap()
    }

    async fn send(
        client: &FederationClient,
        server_name: &str,
        path: &str,
    ) -> Result<serde_json::Value, FederationError> {
        let name = <&ServerName>::try_from(server_name).unwrap();
        let resp = client.send(name, get(path)).await?;
        assert_eq!(resp.status, http::StatusCode::OK);
        Ok(serde_json::from_slice(&resp.body).unwrap())
    }

    #[tokio::test]
    async fn well_known_delegation_over_https_sets_host_and_certificate_name() {
        let server = TestHttps::start(&["remote.test", "delegated.test"], None, 0).await;
        // remote.test delegates to delegated.test:<port> through its .well-known.
        let delegating = TestHttps::start(
            &["remote.test"],
            Some(format!("delegated.test:{}", server.addr.port())),
            0,
        )
        .await;
        let dns = FakeDns::default()
            .with_host("remote.test", "127.0.0.1")
            .with_host("delegated.test", "127.0.0.1");
        let mut settings = delegating.settings();
        // Both test certificates are trusted: one CA file with both.
        let both = format!(
            "{}{}",
            std::fs::read_to_string(&delegating.cert_file).unwrap(),
            std::fs::read_to_string(&server.cert_file).unwrap()
        );
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), both).unwrap();
        settings.ca_file = Some(ca.path().to_owned());
        let client = FederationClient::new(&settings, Arc::new(dns)).unwrap();
        let body = send(&client, "remote.test", "/_matrix/federation/v1/version?x=1")
            .await
            .unwrap();
        assert_eq!(
            body["host"],
            format!("delegated.test:{}", server.addr.port())
        );
        assert_eq!(body["path"], "/_matrix/federation/v1/version?x=1");
    }

    #[tokio::test]
    async fn srv_target_is_reached_with_the_hostname_certificate() {
        // The certificate names srv.test only; the SRV target backend.test is merely where
        // the connection goes.
        let server = TestHttps::start(&["srv.test"], None, 0).await;
        let dns = FakeDns::default()
            .with_host("srv.test", "127.0.0.1")
            .with_host("backend.test", "127.0.0.1")
            .with_srv(
                "_matrix-fed._tcp.srv.test",
                "backend.test",
                server.addr.port(),
            );
        let client = FederationClient::new(&server.settings(), Arc::new(dns)).unwrap();
        let body = send(&client, "srv.test", "/_matrix/key/v2/server")
            .await
            .unwrap();
        assert_eq!(body["host"], "srv.test");
    }

    #[tokio::test]
    async fn ip_literal_with_port_is_verified_against_the_ip() {
        let server = TestHttps::start(&["127.0.0.1"], None, 0).await;
        let client =
            FederationClient::new(&server.settings(), Arc::new(FakeDns::default())).unwrap();
        let name = format!("127.0.0.1:{}", server.addr.port());
        let body = send(&client, &name, "/x").await.unwrap();
        assert_eq!(body["host"], name);
    }

    /// A `CONNECT` proxy on loopback that tunnels to the asked address and records each
    /// `CONNECT` target.
    async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if inbound.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                    record
                        .lock()
                        .push(head.lines().next().unwrap_or("").to_owned());
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn requests_are_tunnelled_through_the_configured_proxy() {
        let server = TestHttps::start(&["127.0.0.1"], None, 0).await;
        let (proxy, seen) = connect_proxy().await;
        let mut settings = server.settings();
        settings.proxy = Some(format!("http://{proxy}"));
        let client = FederationClient::new(&settings, Arc::new(FakeDns::default())).unwrap();
        let name = format!("127.0.0.1:{}", server.addr.port());
        // TLS is end to end: the certificate is still checked against the server name.
        let body = send(&client, &name, "/x").await.unwrap();
        assert_eq!(body["host"], name);
        assert_eq!(
            seen.lock().clone(),
            vec![format!("CONNECT {name} HTTP/1.1")]
        );
        // A proxy that is down is an unreachable destination, not a direct connection.
        settings.proxy = Some(format!("http://127.0.0.1:{}", free_port().await));
        let client = FederationClient::new(&settings, Arc::new(FakeDns::default())).unwrap();
        let err = send(&client, &name, "/x").await.unwrap_err();
        assert!(
            matches!(err, FederationError::Unreachable { .. }),
            "got {err}"
        );
    }

    /// A loopback port nothing listens on (bound, then released).
    async fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn untrusted_certificates_are_refused_unless_verification_is_off() {
        let server = TestHttps::start(&["localhost"], None, 0).await;
        let name = format!("localhost:{}", server.addr.port());
        let dns = || Arc::new(FakeDns::default().with_host("localhost", "127.0.0.1"));
        let mut settings = server.settings();
        settings.ca_file = None;
        let client = FederationClient::new(&settings, dns()).unwrap();
        let err = send(&client, &name, "/x").await.unwrap_err();
        assert!(
            matches!(err, FederationError::Unreachable { .. }),
            "got {err}"
        );
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "got {err}"
        );
        settings.verify_tls = false;
        let client = FederationClient::new(&settings, dns()).unwrap();
        assert_eq!(send(&client, &name, "/x").await.unwrap()["host"], name);
    }

    #[tokio::test]
    async fn responses_above_the_cap_are_refused() {
        let server = TestHttps::start(&["localhost"], None, 10_000).await;
        let name = format!("localhost:{}", server.addr.port());
        let mut settings = server.settings();
        settings.max_response_bytes = 5_000;
        let dns = Arc::new(FakeDns::default().with_host("localhost", "127.0.0.1"));
        let client = FederationClient::new(&settings, dns).unwrap();
        let err = send(&client, &name, "/x").await.unwrap_err();
        assert!(matches!(err, FederationError::TooLarge { .. }), "got {err}");
    }

    /// A TCP listener on loopback that counts the connections it gets.
    async fn counting_listener() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((_stream, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (addr, count)
    }

    // Issue 15: without an allowlist, federation reaches no special address: not an IP
    // literal, not a name resolving to one, not an SRV target resolving to one, not through
    // the proxy; and nothing connects.
    #[tokio::test]
    async fn special_destinations_are_refused_without_the_allowlist() {
        let (addr, connections) = counting_listener().await;
        let port = addr.port();
        let dns = || {
            Arc::new(
                FakeDns::default()
                    .with_host("inside.test", "127.0.0.1")
                    .with_host("backend.test", "10.0.0.1")
                    .with_srv("_matrix-fed._tcp.srv.test", "backend.test", port),
            )
        };
        let mut settings = ClientSettings {
            ca_file: None,
            verify_tls: false,
            well_known_port: port,
            request_timeout: Duration::from_secs(5),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            proxy: None,
            guard: OutboundGuard::default(),
        };
        let client = FederationClient::new(&settings, dns()).unwrap();
        for name in [
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
            format!("inside.test:{port}"),
            "srv.test".to_owned(),
        ] {
            let err = send(&client, &name, "/x").await.unwrap_err();
            assert!(
                matches!(
                    err,
                    FederationError::Refused(_) | FederationError::Unreachable { .. }
                ),
                "{name}: {err}"
            );
            assert!(error_chain(&err).contains("refused"), "{name}: {err}");
        }
        let (proxy, seen) = connect_proxy().await;
        settings.proxy = Some(format!("http://{proxy}"));
        let client = FederationClient::new(&settings, dns()).unwrap();
        for name in [format!("127.0.0.1:{port}"), format!("inside.test:{port}")] {
            let err = send(&client, &name, "/x").await.unwrap_err();
            assert!(matches!(err, FederationError::Refused(_)), "{name}: {err}");
        }
        assert!(seen.lock().is_empty(), "the proxy was asked for nothing");
        assert_eq!(
            connections.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no connection reached the listener"
        );
    }

    #[test]
    fn a_bad_ca_file_is_a_clear_error() {
        let mut settings = ClientSettings {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            verify_tls: true,
            well_known_port: 443,
            request_timeout: REQUEST_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            proxy: None,
            guard: OutboundGuard::default(),
        };
        let err = FederationClient::new(&settings, Arc::new(FakeDns::default()))
            .err()
            .unwrap();
        assert!(err.contains("federation_ca_file"), "got {err}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate").unwrap();
        settings.ca_file = Some(file.path().to_owned());
        let err = FederationClient::new(&settings, Arc::new(FakeDns::default()))
            .err()
            .unwrap();
        assert!(err.contains("federation_ca_file"), "got {err}");
    }
}
