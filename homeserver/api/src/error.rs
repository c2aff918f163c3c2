//! The one error response.

use axum::{
    response::{IntoResponse, Response},
    Json,
};
use paracord_core::Error;

/// A [`paracord_core::Error`] as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

/// Put on a response whose request has to be carried out by the guild host named here.
#[derive(Clone, Debug)]
pub(crate) struct RelayTo(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self.0 {
            tracing::error!(%detail, "internal error");
        }
        let (status, body) = self.0.classify();
        let mut resp = (status, Json(body)).into_response();
        if let Error::HostedElsewhere(host) = &self.0 {
            // Picked up by the Paracord API's relay layer (paracord/relay.rs).
            resp.extensions_mut().insert(RelayTo(host.clone()));
        }
        if let Some(paracord_core::ErrorKind::LimitExceeded { retry_after_ms }) = self.0.kind() {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        if status == http::StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the oversized body is not read, so the connection cannot carry
            // another request: say so, or the client would reuse it and fail.
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
