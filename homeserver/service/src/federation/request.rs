//! Signed requests to other servers: the `X-Matrix` authorization over method, URI, origin,
//! destination and body, then the federation client.

use paracord_core::{Error, ErrorKind, Result};
use ruma::{
    api::{
        federation::authentication::{XMatrix, XMatrixSigningInput},
        path_builder::SinglePath,
        IncomingResponse, OutgoingBody, OutgoingRequest,
    },
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

/// Sends the ruma `request` to `destination`, signed as `origin` (X-Matrix over method, path
/// and query, and JSON body, exactly as [`signed_json`] signs), and reads the answer as the
/// endpoint's typed response. A failure to reach the server is the same 502 as
/// [`signed_request`]'s; an error answer goes through [`remote_error`] (its 404 stays a 404);
/// an answer that is not the endpoint's response is a 502 naming the server.
pub async fn send_typed<R>(
    client: &FederationClient,
    keys: &ServerKeys,
    origin: &str,
    destination: &ServerName,
    request: R,
) -> Result<R::IncomingResponse>
where
    R: OutgoingRequest<PathBuilder = SinglePath>,
{
    let request = typed_http_request(keys.keypair(), origin, destination, request)?;
    let response = send_signed(client, destination, request).await?;
    typed_answer(destination, response)
}

/// The ruma `request` as a signed http request from `origin` to `destination`: the path and
/// query and the body ruma serializes, the headers and signature of [`signed_http_request`].
/// No access token: a federation request carries X-Matrix only.
pub fn typed_http_request<R>(
    keypair: &Ed25519KeyPair,
    origin: &str,
    destination: &ServerName,
    request: R,
) -> Result<http::Request<Vec<u8>>>
where
    R: OutgoingRequest<PathBuilder = SinglePath>,
{
    let built = request
        .try_into_http_request_inner("", ())
        .map_err(|e| Error::internal(format!("building a federation request: {e}")))?;
    let (parts, body) = built.into_parts();
    let body: Vec<u8> = body.try_into_buf().map_err(|e| {
        let e: ruma::api::error::IntoHttpError = e.into();
        Error::internal(format!("serializing a federation request: {e}"))
    })?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .ok_or_else(|| Error::internal("federation request without a path"))?;
    signed_http_request(keypair, origin, destination, parts.method, &path, body)
}

/// Reads `response` from `destination` as the typed answer `T`: a non-success status becomes
/// [`remote_error`], a body that is not `T` a 502 naming the server.
pub fn typed_answer<T: IncomingResponse>(
    destination: &ServerName,
    response: crate::federation::client::FederationResponse,
) -> Result<T> {
    if !response.status.is_success() {
        let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        return Err(remote_error(destination, response.status, &body));
    }
    let mut http_response = http::Response::new(response.body.as_slice());
    *http_response.status_mut() = response.status;
    *http_response.headers_mut() = response.headers;
    T::try_from_http_response_inner(http_response).map_err(|e| {
        Error::new(
            http::StatusCode::BAD_GATEWAY,
            ErrorKind::Unknown,
            format!("{destination} sent an answer that could not be read: {e}"),
        )
    })
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
    send_signed(client, destination, request).await
}

/// Sends the signed `request` through the federation client (and so its outbound guard); a
/// failure to reach `destination` is a 502 that does not say why.
pub async fn send_signed(
    client: &FederationClient,
    destination: &ServerName,
    request: http::Request<Vec<u8>>,
) -> Result<crate::federation::client::FederationResponse> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ruma::{
        api::federation::{query::get_room_information, transactions::send_transaction_message},
        owned_room_alias_id, server_name, MilliSecondsSinceUnixEpoch, OwnedTransactionId,
    };

    use super::*;
    use crate::federation::client::FederationResponse;

    fn keypair() -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".to_owned()).unwrap()
    }

    fn answer(status: u16, body: &str) -> FederationResponse {
        FederationResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    type Directory = get_room_information::v1::Response;

    // Issue 16 item 5: a typed request goes out as the hand-written one did: method, path and
    // query, a JSON content type, and an X-Matrix authorization from origin to destination.
    #[test]
    fn a_typed_request_goes_out_signed_with_its_path_query_and_body() {
        let keys = keypair();
        let remote = server_name!("remote.test");
        let request =
            get_room_information::v1::Request::new(owned_room_alias_id!("#a:remote.test"));
        let http = typed_http_request(&keys, "local.test", remote, request).unwrap();
        assert_eq!(http.method(), http::Method::GET);
        assert_eq!(
            http.uri().to_string(),
            "/_matrix/federation/v1/query/directory?room_alias=%23a%3Aremote.test"
        );
        assert_eq!(
            http.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let x = XMatrix::extract_from_http_headers(http.headers()).unwrap();
        assert_eq!(x.origin, "local.test");
        assert_eq!(x.destination.as_deref(), Some(remote));

        let mut txn = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from("t1"),
            "local.test".try_into().unwrap(),
            MilliSecondsSinceUnixEpoch(1u32.into()),
        );
        txn.pdus = vec![serde_json::value::to_raw_value(&serde_json::json!({"a": 1})).unwrap()];
        let http = typed_http_request(&keys, "local.test", remote, txn).unwrap();
        assert_eq!(http.method(), http::Method::PUT);
        assert_eq!(http.uri().path(), "/_matrix/federation/v1/send/t1");
        let body: Value = serde_json::from_slice(http.body()).unwrap();
        assert_eq!(body["origin"], "local.test");
        assert_eq!(body["pdus"][0]["a"], 1);
    }

    // Issue 16 item 5: a typed answer's failures are today's errors: a remote 404 stays a
    // 404, another error status is a 502 naming the server and its message, and an answer
    // that is not the endpoint's response is a 502 too, never a panic.
    #[test]
    fn typed_answers_map_failures_to_our_errors() {
        let remote = server_name!("remote.test");
        let ok = typed_answer::<Directory>(
            remote,
            answer(
                200,
                r#"{"room_id": "!r:remote.test", "servers": ["remote.test"]}"#,
            ),
        )
        .unwrap();
        assert_eq!(ok.room_id, "!r:remote.test");
        assert_eq!(ok.servers, vec![remote.to_owned()]);

        let (status, body) = typed_answer::<Directory>(
            remote,
            answer(
                404,
                r#"{"errcode": "M_NOT_FOUND", "error": "no such alias"}"#,
            ),
        )
        .unwrap_err()
        .classify();
        assert_eq!(status, http::StatusCode::NOT_FOUND);
        assert!(body.to_string().contains("no such alias"), "{body}");

        let (status, body) = typed_answer::<Directory>(remote, answer(500, "not json"))
            .unwrap_err()
            .classify();
        assert_eq!(status, http::StatusCode::BAD_GATEWAY);
        assert!(
            body.to_string().contains("remote.test answered 500"),
            "{body}"
        );

        for bad in ["", "[]", r#"{"room_id": 3}"#, r#"{"servers": []}"#] {
            let (status, body) = typed_answer::<Directory>(remote, answer(200, bad))
                .unwrap_err()
                .classify();
            assert_eq!(status, http::StatusCode::BAD_GATEWAY, "{bad}");
            assert!(body.to_string().contains("could not be read"), "{body}");
        }
    }
}
