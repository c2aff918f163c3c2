//! Application service endpoints of the Client-Server API.

use std::time::Duration;

use axum::extract::State;
use paracord_core::Error;
use ruma::api::client::appservice::request_ping;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv1appserviceappserviceidping
pub(crate) async fn request_ping_route(
    State(state): State<AppState>,
    req: Ruma<request_ping::v1::Request>,
) -> ApiResult<RumaResponse<request_ping::v1::Response>> {
    // Only an appservice's own token may ping it.
    let caller = req.user()?.appservice.clone();
    let Some(a) = caller
        .filter(|id| *id == req.body.appservice_id)
        .and_then(|id| state.appservices.by_id(&id).cloned())
    else {
        return Err(Error::forbidden("this token is not that application service's").into());
    };
    let ms = state
        .appservices
        .ping(&a, req.body.transaction_id.as_ref().map(|t| t.as_str()))
        .await?;
    Ok(RumaResponse(request_ping::v1::Response::new(
        Duration::from_millis(ms),
    )))
}
