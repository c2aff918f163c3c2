//! Network paths a test can cut: a TCP forwarder (for traffic into a server) and an HTTP
//! `CONNECT` proxy (for traffic out of a server, through its `federation_proxy`). Both run as
//! tasks of the test's runtime and have a gate: [`TcpForwarder::close`] /
//! [`ConnectProxy::close`] drop every connection passing through and refuse new ones (accepted,
//! then dropped at once) until `open` is called again. A [`StubHttp`] stands in for a page, a
//! push gateway or a remote server that a test needs to see (or not see) requests to.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{AbortHandle, JoinHandle},
};

/// Longest `CONNECT` request head the proxy reads.
const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// Whether connections may pass, and the tasks carrying the ones that do.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<GateState>>);

#[derive(Default)]
struct GateState {
    closed: bool,
    /// New connections are accepted and kept open, but nothing is carried or answered.
    holding: bool,
    connections: Vec<AbortHandle>,
    /// Connections let through since the start.
    admitted: usize,
    /// Connections held since the start.
    held: usize,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A test that panicked while holding the lock has failed already; keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `carry` for `inbound` in its own task, unless the gate is closed (then the
    /// connection is dropped). Decided and registered under the lock, so a `close` racing
    /// with an accept cannot miss the new connection.
    fn admit<F>(&self, inbound: TcpStream, carry: impl FnOnce(TcpStream) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.connections.retain(|c| !c.is_finished());
        let task = if state.holding {
            state.held += 1;
            tokio::spawn(hold(inbound))
        } else {
            state.admitted += 1;
            tokio::spawn(carry(inbound))
        };
        state.connections.push(task.abort_handle());
    }

    /// Drops the connections passing and holds new ones (see [`hold`]).
    fn hold(&self) {
        self.close();
        let mut state = self.lock();
        state.closed = false;
        state.holding = true;
    }

    fn held(&self) -> usize {
        self.lock().held
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for c in state.connections.drain(..) {
            c.abort();
        }
    }

    fn open(&self) {
        let mut state = self.lock();
        state.closed = false;
        state.holding = false;
    }

    fn admitted(&self) -> usize {
        self.lock().admitted
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("expected to bind a loopback port: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("expected a local address: {e}"));
    (listener, addr)
}

/// Reads what the client sends and never answers, until it gives up: a peer that accepted
/// the connection and then hangs.
async fn hold(mut inbound: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(inbound.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Copies both ways between two connections until either side ends.
async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// Forwards every connection to its port to `target` (another server's TLS port, say).
pub struct TcpForwarder {
    addr: SocketAddr,
    gate: Gate,
    accept: JoinHandle<()>,
}

impl TcpForwarder {
    /// Listens on a free loopback port; `target` need not accept connections yet.
    pub async fn start(target: SocketAddr) -> TcpForwarder {
        let (listener, addr) = listen().await;
        let gate = Gate::default();
        let accept = tokio::spawn({
            let gate = gate.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    gate.admit(inbound, move |inbound| async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            pipe(inbound, outbound).await;
                        }
                    });
                }
            }
        });
        TcpForwarder { addr, gate, accept }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops the connections being forwarded and refuses new ones.
    pub fn close(&self) {
        self.gate.close();
    }

    /// Forwards new connections again.
    pub fn open(&self) {
        self.gate.open();
    }

    /// Drops the connections being forwarded; new ones are accepted and held open, unanswered,
    /// until [`TcpForwarder::open`] or [`TcpForwarder::close`].
    pub fn hold(&self) {
        self.gate.hold();
    }

    /// How many connections were held since the start.
    pub fn held(&self) -> usize {
        self.gate.held()
    }

    /// How many connections were forwarded since the start (not requests: a client may send
    /// many over one connection), so a test can tell "none" from "some".
    pub fn connections(&self) -> usize {
        self.gate.admitted()
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.accept.abort();
        self.gate.close();
    }
}

/// An HTTP proxy that only tunnels (`CONNECT host:port`), as a server's `federation_proxy`.
pub struct ConnectProxy {
    addr: SocketAddr,
    gate: Gate,
    accept: JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        let (listener, addr) = listen().await;
        let gate = Gate::default();
        let accept = tokio::spawn({
            let gate = gate.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    gate.admit(inbound, tunnel);
                }
            }
        });
        ConnectProxy { addr, gate, accept }
    }

    /// The proxy's URL, for `PARACORD_FEDERATION_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops the tunnels and refuses new ones.
    pub fn close(&self) {
        self.gate.close();
    }

    /// Tunnels new connections again.
    pub fn open(&self) {
        self.gate.open();
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.gate.close();
    }
}

/// Reads a `CONNECT` request, connects to its target and pipes the rest through.
async fn tunnel(mut inbound: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_CONNECT_HEAD || !matches!(inbound.read(&mut byte).await, Ok(1)) {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split(' ');
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = inbound
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    match TcpStream::connect(target).await {
        Ok(outbound) => {
            if inbound
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_ok()
            {
                pipe(inbound, outbound).await;
            }
        }
        Err(_) => {
            let _ = inbound
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    }
}

/// What a [`StubHttp`] does with a request.
#[derive(Clone)]
pub enum StubAnswer {
    /// Answers with these raw bytes (status line, headers, body) and closes.
    Raw(String),
    /// Reads the request and never answers (a push gateway that hangs).
    Hang,
}

impl StubAnswer {
    /// A `status` answer with a `Location` header.
    pub fn redirect(status: u16, location: &str) -> StubAnswer {
        StubAnswer::Raw(format!(
            "HTTP/1.1 {status} Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n"
        ))
    }

    /// A 200 answer with `body` as `content_type`.
    pub fn ok(content_type: &str, body: &str) -> StubAnswer {
        StubAnswer::Raw(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        ))
    }
}

/// A minimal HTTP server on a loopback address (any of 127.0.0.0/8) for tests of what the
/// server fetches: it counts connections, records request lines and answers every request
/// the same way.
pub struct StubHttp {
    addr: SocketAddr,
    seen: Arc<Mutex<StubSeen>>,
    gate: Gate,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct StubSeen {
    connections: usize,
    requests: Vec<String>,
}

impl StubHttp {
    pub async fn start(ip: [u8; 4], answer: StubAnswer) -> StubHttp {
        let listener = TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
            .await
            .unwrap_or_else(|e| panic!("expected to bind {ip:?}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("expected a local address: {e}"));
        let seen: Arc<Mutex<StubSeen>> = Arc::default();
        let gate = Gate::default();
        let accept = tokio::spawn({
            let (seen, gate) = (seen.clone(), gate.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    lock(&seen).connections += 1;
                    let (seen, answer) = (seen.clone(), answer.clone());
                    gate.admit(inbound, move |mut inbound| async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match inbound.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                            if head.len() > MAX_CONNECT_HEAD {
                                return;
                            }
                        }
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        lock(&seen).requests.push(line);
                        match answer {
                            StubAnswer::Raw(raw) => {
                                let _ = inbound.write_all(raw.as_bytes()).await;
                                let _ = inbound.shutdown().await;
                            }
                            StubAnswer::Hang => {
                                // Keeps the connection open until the stub is dropped.
                                std::future::pending::<()>().await;
                            }
                        }
                    });
                }
            }
        });
        StubHttp {
            addr,
            seen,
            gate,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far (a TLS handshake counts, a request need not follow).
    pub fn connections(&self) -> usize {
        lock(&self.seen).connections
    }

    /// Request lines (`POST /path HTTP/1.1`) received so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.seen).requests.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for StubHttp {
    fn drop(&mut self) {
        self.accept.abort();
        self.gate.close();
    }
}
