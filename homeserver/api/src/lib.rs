//! Paracord HTTP API: axum routers, one module per API area. Handlers are thin: parse the ruma
//! request, authenticate (done once, by the [`Ruma`] extractor), call a service, answer.

pub mod client;
pub mod error;
pub mod federation;
pub mod federation_events;
pub mod federation_rooms;
pub mod fuzzing;
pub mod media;
pub mod paracord;
mod params;
pub mod router;
pub mod rtc;
pub mod ruma_wrapper;
pub mod synapse_admin;
pub mod web;
pub mod well_known;

use std::sync::Arc;

use paracord_service::Services;

pub use self::{
    error::ApiError,
    router::{app, app_with_web},
    ruma_wrapper::{public_join_rules, Patched, Ruma, RumaResponse},
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
