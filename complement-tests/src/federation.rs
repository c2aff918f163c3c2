//! Helpers for tests with several servers federating on loopback.

use serde_json::{json, Value};

use crate::{
    e2ee::{b64_decode, Ed25519Key},
    network::{ConnectProxy, TcpForwarder},
    Env, TestServer,
};

/// The server's own signing key, read from its key file (`ed25519 <version> <PKCS#8>`).
pub fn server_signing_key(server: &TestServer) -> Ed25519Key {
    let text = std::fs::read_to_string(server.data_dir().join("signing.key"))
        .unwrap_or_else(|e| panic!("expected the signing key file: {e}"));
    let mut parts = text.split_whitespace();
    let (Some("ed25519"), Some(version), Some(der)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("unexpected signing key file: {text}");
    };
    let der = b64_decode(der).unwrap_or_else(|| panic!("expected base64 PKCS#8, got {der}"));
    // PKCS#8 for Ed25519: the private key is an OCTET STRING (04 20 <seed>) inside the
    // privateKey OCTET STRING (04 22).
    let at = der
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .unwrap_or_else(|| panic!("no Ed25519 seed in the PKCS#8 document"));
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&der[at + 4..at + 36]);
    Ed25519Key::from_seed(&seed, version)
}

/// An `X-Matrix` authorization for `method uri` from `origin` to `destination`.
pub fn x_matrix(
    key: &Ed25519Key,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
) -> String {
    x_matrix_with_content(key, origin, destination, method, uri, None)
}

/// An `X-Matrix` authorization for a request with a JSON body, which the signature covers as
/// `content` (`PUT /send/{txnId}`, `POST /get_missing_events`, …).
pub fn x_matrix_with_content(
    key: &Ed25519Key,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> String {
    let mut object =
        json!({ "method": method, "uri": uri, "origin": origin, "destination": destination });
    if let Some(c) = content {
        object["content"] = c.clone();
    }
    format!(
        "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{}\",sig=\"{}\"",
        key.key_id(),
        key.signature(&object)
    )
}

/// A server named by its TLS address (so others find it without DNS) that does not check other
/// servers' certificates (they are self-signed; test-only switch).
pub async fn federating_server() -> (TestServer, String) {
    federating_server_with(|_| {}).await
}

/// [`federating_server`] with more of the environment set by `configure`.
pub async fn federating_server_with(configure: impl FnOnce(&mut Env)) -> (TestServer, String) {
    let tls = crate::free_port();
    let name = format!("127.0.0.1:{tls}");
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_SERVER_NAME", &name);
        TestServer::set_env(env, "PARACORD_TLS_LISTEN", &name);
        TestServer::set_env(env, "PARACORD_FEDERATION_VERIFY_TLS", "false");
        configure(env);
    })
    .await;
    (server, name)
}

/// A federating server whose federation traffic a test can cut, both ways. Its server name is
/// the address of a [`TcpForwarder`] to its TLS port, so every other server reaches it through
/// the forwarder; its own requests go out through a [`ConnectProxy`] (`federation_proxy`).
pub struct SplittableServer {
    pub server: TestServer,
    /// `127.0.0.1:<forwarder port>`: not the port the server listens on.
    pub name: String,
    incoming: TcpForwarder,
    outgoing: ConnectProxy,
}

impl SplittableServer {
    pub async fn start(configure: impl FnOnce(&mut Env)) -> SplittableServer {
        let tls = crate::free_port();
        let incoming = TcpForwarder::start(([127, 0, 0, 1], tls).into()).await;
        let outgoing = ConnectProxy::start().await;
        let name = format!("127.0.0.1:{}", incoming.port());
        let server = TestServer::start_with(|env| {
            TestServer::set_env(env, "PARACORD_SERVER_NAME", &name);
            TestServer::set_env(env, "PARACORD_TLS_LISTEN", &format!("127.0.0.1:{tls}"));
            TestServer::set_env(env, "PARACORD_FEDERATION_VERIFY_TLS", "false");
            TestServer::set_env(env, "PARACORD_FEDERATION_PROXY", &outgoing.url());
            configure(env);
        })
        .await;
        SplittableServer {
            server,
            name,
            incoming,
            outgoing,
        }
    }

    /// Cuts the server off: its open federation connections drop, and neither its requests
    /// nor other servers' requests to it get through until [`SplittableServer::heal`].
    pub fn split(&self) {
        self.incoming.close();
        self.outgoing.close();
    }

    /// Lets federation traffic through again.
    pub fn heal(&self) {
        self.incoming.open();
        self.outgoing.open();
    }

    /// How many connections other servers opened to this one since it started.
    pub fn connections_in(&self) -> usize {
        self.incoming.connections()
    }

    /// Other servers' connections to this one are accepted and never answered (a server that
    /// hangs), until [`SplittableServer::heal`]. Returns nothing; see
    /// [`SplittableServer::held_in`].
    pub fn hang(&self) {
        self.incoming.hold();
    }

    /// How many connections of other servers were held unanswered since the start.
    pub fn held_in(&self) -> usize {
        self.incoming.held()
    }

    /// Cuts only the server's own requests (its transactions, its fetches); other servers
    /// still reach it.
    pub fn cut_outgoing(&self) {
        self.outgoing.close();
    }
}
