//! Paracord HTTP API: axum routers, one module per API area. Handlers are thin: parse the ruma
//! request, authenticate (done once, by the [`Ruma`] extractor), call a service, answer.

pub mod client;
pub mod error;
pub mod federation;
pub mod federation_events;
pub mod media;
pub mod router;
pub mod ruma_wrapper;
pub mod synapse_admin;
pub mod well_known;

use std::sync::Arc;

use paracord_service::Services;

pub use self::{
    error::ApiError,
    router::app,
    ruma_wrapper::{Ruma, RumaResponse},
};

/// The state every handler gets.
#[derive(Clone)]
pub struct AppState(pub Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Percent-encodes everything but RFC 3986 unreserved characters (for ids in query strings
/// and paths of outgoing requests).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
