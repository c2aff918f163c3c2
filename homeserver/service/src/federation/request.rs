//! Signed requests to other servers: the `X-Matrix` authorization over method, URI, origin,
//! destination and body, then the federation client.

use paracord_core::{Error, ErrorKind, Result};
use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::Ed25519KeyPair,
    OwnedServerName, ServerName,
};
use serde_json::Value;

use crate::{federation::client::FederationClient, keys::ServerKeys};

/// Sends `method path` (with a JSON `body`) to `destination`, signed as `origin`, and returns
/// the status and the JSON answer (`Null` when the body is not JSON).
pub async fn signed_json(
    client: &FederationClient,
    keys: &ServerKeys,
    origin: &str,
    destination: &ServerName,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(http::StatusCode, Value)> {
    let response = signed_request(client, keys, origin, destination, method, path, body).await?;
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    Ok((response.status, json))
}

/// Like [`signed_json`], but the answer as it came: status, headers and body bytes.
pub async fn signed_request(
    client: &FederationClient,
    keys: &ServerKeys,
    origin: &str,
    destination: &ServerName,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<crate::federation::client::FederationResponse> {
    let bytes = match body {
        Some(b) => serde_json::to_vec(b)?,
        None => Vec::new(),
    };
    let request = signed_http_request(keys.keypair(), origin, destination, method, path, bytes)?;
    client.send(destination, request).await.map_err(|e| {
        // The detail (a connect error, an address the guard refused) is for the log only: it
        // would tell the client about this server's network.
        tracing::info!(%destination, error = %e, "federation request failed");
        Error::new(
            http::StatusCode::BAD_GATEWAY,
            ErrorKind::Unknown,
            format!("could not reach the remote server {destination}"),
        )
    })
}

/// The request `method path` with a JSON `body` from `origin` to `destination`, with its
/// `X-Matrix` authorization signed by `keypair`.
pub fn signed_http_request(
    keypair: &Ed25519KeyPair,
    origin: &str,
    destination: &ServerName,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<http::Request<Vec<u8>>> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| Error::internal(format!("federation request: {e}")))?;
    // What is signed includes the path; ruma panics on a request without one.
    if request.uri().path_and_query().is_none() {
        return Err(Error::internal(format!(
            "federation request to {path:?} without a path"
        )));
    }
    let origin = OwnedServerName::try_from(origin)
        .map_err(|e| Error::internal(format!("own server name: {e}")))?;
    let x = XMatrix::sign_http_request(
        &request,
        XMatrixSigningInput::new(origin, destination.to_owned(), keypair),
    )
    .map_err(|e| Error::internal(format!("signing a federation request: {e}")))?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, http::HeaderValue::from(&x));
    Ok(request)
}

/// Turns another server's error answer into ours: its 404 stays a 404, anything else is a
/// bad gateway naming the server.
pub fn remote_error(destination: &ServerName, status: http::StatusCode, body: &Value) -> Error {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    if status == http::StatusCode::NOT_FOUND {
        return Error::not_found(format!("{destination}: {message}"));
    }
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        format!("{destination} answered {status}: {message}"),
    )
}
