//! Path parameters whose failures are Matrix errors: axum's own rejection of a malformed path
//! (invalid percent-encoding or UTF-8) is a plain-text body.

use axum::extract::{FromRequestParts, Path};
use http::request::Parts;
use paracord_core::Error;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Like axum's `Path`, answering `400 M_INVALID_PARAM` when the path cannot be read.
pub(crate) struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Params(v)),
            Err(e) => Err(ApiError(Error::invalid_param(format!(
                "the request path cannot be read: {}",
                e.body_text()
            )))),
        }
    }
}
