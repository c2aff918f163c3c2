//! Other servers' signing keys: fetched when needed, checked, cached in the database with their
//! validity, and used to verify `X-Matrix` request signatures (and, later, event signatures).
//!
//! Fetching goes through a [`KeyFetcher`] — the federation client, or a fake in tests — so this
//! module holds the rules and not the transport.
//!
//! Spec: https://spec.matrix.org/v1.19/server-server-api/#retrieving-server-keys

use std::{collections::BTreeMap, sync::Arc};

use futures::future::BoxFuture;
use paracord_core::{Error, ErrorKind, Result};
use paracord_storage::{Batch, Db, Table};
use ruma::{
    api::{
        federation::{
            authentication::XMatrix,
            discovery::{get_server_keys, ServerSigningKeys},
        },
        IncomingResponseExt, OutgoingRequestExt,
    },
    serde::{Base64, Raw},
    signatures::{
        to_canonical_json_string_for_signing, verify_canonical_json_bytes, SigningKeyAlgorithm,
    },
    CanonicalJsonObject, ServerName,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::ServerKeys;

/// Keys are trusted at most this far into the future, whatever `valid_until_ts` says (the
/// spec's rule for room versions 5 and later).
const MAX_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Fetches a server's `/_matrix/key/v2/server` response (as JSON).
pub type KeyFetcher =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Value>> + Send + Sync + 'static>;

/// A cached verify key of another server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedKey {
    /// Unpadded base64 ed25519 public key.
    pub key: String,
    /// Until when the key may be used (ms); for an old key, when it expired.
    pub valid_until_ts: u64,
    /// Whether the server listed it among its old keys.
    pub old: bool,
}

pub struct RemoteKeys {
    db: Arc<Db>,
    own_name: String,
    own: Arc<ServerKeys>,
    fetcher: Option<KeyFetcher>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(
        http::StatusCode::UNAUTHORIZED,
        ErrorKind::Unauthorized,
        message,
    )
}

fn b64(s: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
    STANDARD_NO_PAD.decode(s.trim_end_matches('='))
}

paracord_storage::key! {
    /// The key of `serverkeyid_verifykey` (another server's public keys):
    /// `server 0xFF key_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct VerifyKeyKey<'a> {
        server: str,
        key_id: last_str,
    }
}

fn cache_key(server: &str, key_id: &str) -> Vec<u8> {
    VerifyKeyKey { server, key_id }.encode()
}

/// Checks a `/_matrix/key/v2/server` response of `server` and returns its keys. It must name
/// the server and be signed by every one of its current keys.
pub fn validate_key_response(
    server: &str,
    response: &Value,
    now: u64,
) -> Result<BTreeMap<String, CachedKey>> {
    let bad = |m: &str| Error::bad_json(format!("key response of {server}: {m}"));
    if response.get("server_name").and_then(Value::as_str) != Some(server) {
        return Err(bad("server_name does not match"));
    }
    let valid_until = response
        .get("valid_until_ts")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no valid_until_ts"))?
        .min(now.saturating_add(MAX_VALIDITY_MS));
    let verify_keys = response
        .get("verify_keys")
        .and_then(Value::as_object)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("no verify_keys"))?;
    let object: CanonicalJsonObject =
        serde_json::from_value(response.clone()).map_err(|e| bad(&e.to_string()))?;
    let canonical =
        to_canonical_json_string_for_signing(&object).map_err(|e| bad(&e.to_string()))?;
    let mut out = BTreeMap::new();
    for (key_id, k) in verify_keys {
        let public = k
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a verify key has no `key`"))?;
        let sig = response
            .get("signatures")
            .and_then(|s| s.get(server))
            .and_then(|s| s.get(key_id))
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("not signed by its key {key_id}")))?;
        let (Ok(public_bytes), Ok(sig_bytes)) = (b64(public), b64(sig)) else {
            return Err(bad("keys and signatures are unpadded base64"));
        };
        if !key_id.starts_with("ed25519:")
            || verify_canonical_json_bytes(
                &SigningKeyAlgorithm::Ed25519,
                &public_bytes,
                &sig_bytes,
                canonical.as_bytes(),
            )
            .is_err()
        {
            return Err(bad(&format!("the signature by {key_id} does not verify")));
        }
        out.insert(
            key_id.clone(),
            CachedKey {
                key: public.to_owned(),
                valid_until_ts: valid_until,
                old: false,
            },
        );
    }
    if let Some(old) = response.get("old_verify_keys").and_then(Value::as_object) {
        for (key_id, k) in old {
            let (Some(public), Some(expired)) = (
                k.get("key").and_then(Value::as_str),
                k.get("expired_ts").and_then(Value::as_u64),
            ) else {
                continue;
            };
            out.entry(key_id.clone()).or_insert(CachedKey {
                key: public.to_owned(),
                valid_until_ts: expired,
                old: true,
            });
        }
    }
    Ok(out)
}

/// Fetches keys with the federation client: `GET /_matrix/key/v2/server` on the server itself.
pub fn fetch_with(client: Arc<crate::federation::client::FederationClient>) -> KeyFetcher {
    Arc::new(move |server: String| {
        let client = client.clone();
        Box::pin(async move {
            let name = ruma::OwnedServerName::try_from(server.as_str())
                .map_err(|e| Error::invalid_param(format!("{server} is not a server name: {e}")))?;
            // Unsigned: the key endpoint takes no authentication.
            let request = get_server_keys::v2::Request::new()
                .try_into_http_request::<Vec<u8>>("", (), ())
                .map_err(|e| Error::internal(format!("key request: {e}")))?;
            let response = client
                .send(&name, request)
                .await
                .map_err(|e| Error::internal(format!("fetching the keys of {server}: {e}")))?;
            if !response.status.is_success() {
                return Err(Error::internal(format!(
                    "{server} answered {} to a key request",
                    response.status
                )));
            }
            let mut http_response = http::Response::new(response.body.as_slice());
            *http_response.status_mut() = response.status;
            let answer = get_server_keys::v2::Response::try_from_http_response(http_response)
                .map_err(|e| Error::bad_json(format!("key response of {server}: {e}")))?;
            // Kept as it came: its signature is checked over it, and a notary serves it so.
            serde_json::from_str(answer.server_key.json().get())
                .map_err(|e| Error::bad_json(format!("key response of {server}: {e}")))
        })
    })
}

impl RemoteKeys {
    /// `fetcher`: how other servers' keys are fetched (`None`: they are not).
    pub fn new(
        db: Arc<Db>,
        own_name: String,
        own: Arc<ServerKeys>,
        fetcher: Option<KeyFetcher>,
    ) -> Self {
        Self {
            db,
            own_name,
            own,
            fetcher,
        }
    }

    fn cached(&self, server: &str, key_id: &str) -> Result<Option<CachedKey>> {
        match self
            .db
            .get(Table::ServerkeyidVerifykey, &cache_key(server, key_id))?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The public key `key_id` of `server`, valid at `at` (ms): from this server itself, the
    /// cache, or a fresh fetch. `None` if the server does not have such a key valid then.
    pub async fn key(&self, server: &str, key_id: &str, at: u64) -> Result<Option<String>> {
        if server == self.own_name {
            return Ok((key_id == self.own.key_id()).then(|| self.own.public_key_base64()));
        }
        if let Some(k) = self.cached(server, key_id)? {
            if k.valid_until_ts >= at {
                return Ok(Some(k.key));
            }
            if k.old {
                // Expired before `at`: a new fetch will not change that.
                return Ok(None);
            }
        }
        let (_, keys) = self.fetch(server).await?;
        Ok(keys
            .get(key_id)
            .filter(|k| k.valid_until_ts >= at)
            .map(|k| k.key.clone()))
    }

    /// Fetches `server`'s key response, checks it, and caches its keys and the response itself
    /// (which this server serves as a notary).
    async fn fetch(&self, server: &str) -> Result<(Value, BTreeMap<String, CachedKey>)> {
        let Some(fetcher) = &self.fetcher else {
            return Err(Error::unrecognized(
                "fetching other servers' keys needs federation, which is not available yet",
            ));
        };
        let response = fetcher(server.to_owned()).await?;
        let keys = validate_key_response(server, &response, now_ms())?;
        let mut batch = Batch::new();
        for (id, k) in &keys {
            batch.put(
                Table::ServerkeyidVerifykey,
                cache_key(server, id),
                serde_json::to_vec(k)?,
            );
        }
        batch.put(
            Table::ServernameKeyresponse,
            server.as_bytes().to_vec(),
            serde_json::to_vec(&response)?,
        );
        self.db.write(batch)?;
        Ok((response, keys))
    }

    /// As a notary (`/_matrix/key/v2/query`): `server`'s own key response, valid until at
    /// least `minimum_valid_until_ts` when it can be had — from the cache, else fetched — with
    /// this server's signature added. `None` when neither has one.
    pub async fn notary(
        &self,
        server: &str,
        minimum_valid_until_ts: u64,
    ) -> Result<Option<Raw<ServerSigningKeys>>> {
        let cached: Option<Value> = match self
            .db
            .get(Table::ServernameKeyresponse, server.as_bytes())?
        {
            Some(v) => Some(serde_json::from_slice(&v)?),
            None => None,
        };
        let wanted = minimum_valid_until_ts.max(now_ms());
        let fresh_enough = cached
            .as_ref()
            .and_then(|c| c["valid_until_ts"].as_u64())
            .is_some_and(|t| t >= wanted);
        let response = if fresh_enough {
            cached
        } else {
            match self.fetch(server).await {
                Ok((r, _)) => Some(r),
                Err(e) => {
                    tracing::debug!(server, "notary fetch failed: {e}");
                    cached
                }
            }
        };
        let Some(response) = response else {
            return Ok(None);
        };
        let mut obj: CanonicalJsonObject = serde_json::from_value(response)
            .map_err(|e| Error::internal(format!("cached key response: {e}")))?;
        ruma::signatures::sign_json(&self.own_name, self.own.keypair(), &mut obj)
            .map_err(|e| Error::internal(format!("signing as a notary: {e}")))?;
        Ok(Some(Raw::from_json(serde_json::value::to_raw_value(&obj)?)))
    }

    /// Verifies the `X-Matrix` authorization of an incoming federation request and returns the
    /// origin server. Anything wrong is `401 M_UNAUTHORIZED`.
    pub async fn verify_request(
        &self,
        request: &http::Request<Vec<u8>>,
    ) -> Result<ruma::OwnedServerName> {
        let (x, destination) = read_x_matrix(request, &self.own_name)?;
        let public = self
            .key(x.origin.as_str(), x.key.as_str(), now_ms())
            .await
            .map_err(|e| unauthorized(format!("cannot get the signing key of {}: {e}", x.origin)))?
            .ok_or_else(|| unauthorized(format!("{} has no valid key {}", x.origin, x.key)))?;
        verify_x_matrix(&x, request, &destination, &public)?;
        Ok(x.origin)
    }
}

/// The `X-Matrix` authorization of a request to `own_name`, read and checked to be addressed
/// here but not yet verified, with this server's name as the destination it is verified for.
pub fn read_x_matrix(
    request: &http::Request<Vec<u8>>,
    own_name: &str,
) -> Result<(XMatrix, ruma::OwnedServerName)> {
    let x = XMatrix::extract_from_http_headers(request.headers())
        .map_err(|e| unauthorized(format!("missing or malformed X-Matrix authorization: {e}")))?;
    let destination = ServerName::parse(own_name)
        .map_err(|e| Error::internal(format!("own server name: {e}")))?;
    if x.destination.as_deref().is_some_and(|d| d != destination) {
        return Err(unauthorized("the request is addressed to another server"));
    }
    Ok((x, destination))
}

/// Verifies the signature of an `X-Matrix` authorization (from [`read_x_matrix`]) over
/// `request` with the origin's public key `public` (unpadded base64).
pub fn verify_x_matrix(
    x: &XMatrix,
    request: &http::Request<Vec<u8>>,
    destination: &ServerName,
    public: &str,
) -> Result<()> {
    // What is signed includes the path; ruma panics on a request without one.
    if request.uri().path_and_query().is_none() {
        return Err(unauthorized("the request has no path"));
    }
    let public = b64(public).map_err(|_| unauthorized("the origin's key is not base64"))?;
    let map = BTreeMap::from([(
        x.origin.to_string(),
        BTreeMap::from([(x.key.to_string(), Base64::new(public))]),
    )]);
    x.verify_http_request(request, destination, &map)
        .map_err(|e| unauthorized(format!("bad X-Matrix signature: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ruma::api::federation::authentication::XMatrixSigningInput;

    use super::*;

    struct Setup {
        _dir: tempfile::TempDir,
        local: RemoteKeys,
        remote: Arc<ServerKeys>,
        fetches: Arc<AtomicUsize>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
        let db =
            Arc::new(Db::open(&dir.path().join("db")).unwrap_or_else(|e| unreachable!("db: {e}")));
        let key = |name: &str| {
            Arc::new(
                ServerKeys::load_or_generate(&dir.path().join(name))
                    .unwrap_or_else(|e| unreachable!("key: {e}"))
                    .0,
            )
        };
        let (own, remote) = (key("own.key"), key("remote.key"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (r, f) = (remote.clone(), fetches.clone());
        let fetcher: KeyFetcher = Arc::new(move |server: String| {
            let (r, f) = (r.clone(), f.clone());
            Box::pin(async move {
                f.fetch_add(1, Ordering::SeqCst);
                if server != "remote.test" {
                    return Err(Error::not_found("no such server"));
                }
                r.server_keys("remote.test", now_ms() + 3_600_000)
            })
        });
        let local = RemoteKeys::new(db, "local.test".to_owned(), own, Some(fetcher));
        Setup {
            _dir: dir,
            local,
            remote,
            fetches,
        }
    }

    fn signed_request(keys: &ServerKeys, destination: &str, body: &str) -> http::Request<Vec<u8>> {
        let mut req = http::Request::builder()
            .method("PUT")
            .uri("/_matrix/federation/v1/send/1")
            .body(body.as_bytes().to_vec())
            .unwrap_or_else(|e| unreachable!("request: {e}"));
        let origin = ruma::OwnedServerName::try_from("remote.test")
            .unwrap_or_else(|e| unreachable!("name: {e}"));
        let dest = ruma::OwnedServerName::try_from(destination)
            .unwrap_or_else(|e| unreachable!("name: {e}"));
        let x = XMatrix::sign_http_request(
            &req,
            XMatrixSigningInput::new(origin, dest, keys.keypair()),
        )
        .unwrap_or_else(|e| unreachable!("sign: {e}"));
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, http::HeaderValue::from(&x));
        req
    }

    fn is_unauthorized(r: &Result<ruma::OwnedServerName>) -> bool {
        matches!(r, Err(e) if e.kind() == Some(&ErrorKind::Unauthorized))
    }

    #[tokio::test]
    async fn a_signed_request_verifies_once_its_origin_keys_are_fetched_and_cached() {
        let s = setup();
        let req = signed_request(&s.remote, "local.test", r#"{"pdus":[]}"#);
        let origin = s.local.verify_request(&req).await;
        assert_eq!(
            origin.ok().map(|o| o.to_string()),
            Some("remote.test".to_owned())
        );
        assert!(s.local.verify_request(&req).await.is_ok());
        assert_eq!(s.fetches.load(Ordering::SeqCst), 1, "the key is cached");
    }

    #[tokio::test]
    async fn tampered_misaddressed_or_unsigned_requests_are_unauthorized() {
        let s = setup();
        let mut tampered = signed_request(&s.remote, "local.test", r#"{"pdus":[]}"#);
        *tampered.body_mut() = br#"{"pdus":[1]}"#.to_vec();
        assert!(is_unauthorized(&s.local.verify_request(&tampered).await));
        let elsewhere = signed_request(&s.remote, "other.test", "{}");
        assert!(is_unauthorized(&s.local.verify_request(&elsewhere).await));
        let mut unsigned = signed_request(&s.remote, "local.test", "{}");
        unsigned.headers_mut().remove(http::header::AUTHORIZATION);
        assert!(is_unauthorized(&s.local.verify_request(&unsigned).await));
        // Signed by a key the origin does not publish.
        let impostor = setup().remote;
        let forged = signed_request(&impostor, "local.test", "{}");
        assert!(is_unauthorized(&s.local.verify_request(&forged).await));
    }

    // Issue 15 (found by the x_matrix fuzz target): ruma panics on a request without a path;
    // such a request is unauthorized, and one is never signed.
    #[test]
    fn verify_key_key_round_trips_and_layout_is_stable() {
        let key = VerifyKeyKey {
            server: "x.test",
            key_id: "ed25519:a",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"x.test\xFFed25519:a");
        assert_eq!(
            bytes,
            paracord_storage::KeyBuf::new()
                .str("x.test")
                .last_str("ed25519:a")
                .into_vec()
        );
        assert_eq!(cache_key("x.test", "ed25519:a"), bytes);
        assert_eq!(VerifyKeyKey::decode(&bytes).unwrap(), key);
        assert!(VerifyKeyKey::decode(b"no separator").is_err());
    }

    #[test]
    fn requests_without_a_path_are_refused_not_a_panic() {
        let s = setup();
        let mut req = signed_request(&s.remote, "local.test", "{}");
        *req.uri_mut() = http::Uri::from_static("local.test");
        let (x, destination) = read_x_matrix(&req, "local.test")
            .unwrap_or_else(|e| unreachable!("the header reads: {e}"));
        let verified = verify_x_matrix(&x, &req, &destination, &s.remote.public_key_base64());
        assert!(matches!(verified, Err(e) if e.kind() == Some(&ErrorKind::Unauthorized)));
        let signed = crate::federation::request::signed_http_request(
            s.remote.keypair(),
            "remote.test",
            &destination,
            http::Method::GET,
            "local.test",
            Vec::new(),
        );
        assert!(signed.is_err());
    }

    #[test]
    fn key_responses_must_name_the_server_and_be_signed_by_its_keys() {
        let s = setup();
        let now = now_ms();
        let good = s
            .remote
            .server_keys("remote.test", now + 10 * MAX_VALIDITY_MS)
            .unwrap_or_else(|e| unreachable!("keys: {e}"));
        let keys = validate_key_response("remote.test", &good, now)
            .unwrap_or_else(|e| unreachable!("valid: {e}"));
        let k = &keys[&s.remote.key_id()];
        assert_eq!(k.key, s.remote.public_key_base64());
        assert!(
            k.valid_until_ts <= now + MAX_VALIDITY_MS,
            "validity is capped at 7 days"
        );
        assert!(validate_key_response("other.test", &good, now).is_err());
        let mut tampered = good.clone();
        tampered["valid_until_ts"] = serde_json::json!(1);
        assert!(validate_key_response("remote.test", &tampered, now).is_err());
        let mut unsigned = good;
        unsigned["signatures"] = serde_json::json!({});
        assert!(validate_key_response("remote.test", &unsigned, now).is_err());
    }
}
