//! Application service endpoints of the Client-Server API.

use std::time::Duration;

use axum::{
    extract::{Path, State},
    Json,
};
use paracord_core::Error;
use ruma::api::client::appservice::request_ping;
use ruma::{api::appservice::Namespaces, OwnedUserId};
use serde::Serialize;

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
        .and_then(|id| state.appservices.by_id(&id))
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

/// The server admin behind a request to the appservice admin API.
fn admin(state: &AppState, parts: &http::request::Parts) -> Result<(), Error> {
    let token = crate::ruma_wrapper::access_token(parts).ok_or_else(Error::missing_token)?;
    if !state.accounts.authenticate(&token)?.admin {
        return Err(Error::forbidden(
            "only server admins may manage application services",
        ));
    }
    Ok(())
}

/// One registration as the admin API lists it: no tokens.
#[derive(Serialize)]
pub(crate) struct AppserviceEntry {
    id: String,
    url: Option<String>,
    sender: OwnedUserId,
    namespaces: Namespaces,
    protocols: Option<Vec<String>>,
    rate_limited: bool,
    receive_ephemeral: bool,
    /// `file` (from `appservice_dir`) or `admin` (added with this API).
    source: &'static str,
}

/// The answer of `GET /_paracord/v1/admin/appservices`.
#[derive(Serialize)]
pub(crate) struct AppserviceList {
    appservices: Vec<AppserviceEntry>,
}

/// The answer of `POST /_paracord/v1/admin/appservices`.
#[derive(Serialize)]
pub(crate) struct AddedAppservice {
    id: String,
    sender: OwnedUserId,
}

/// The answer of `DELETE /_paracord/v1/admin/appservices/{id}`: an empty object.
#[derive(Serialize)]
pub(crate) struct RemovedAppservice {}

/// `GET /_paracord/v1/admin/appservices` (server admins): every registration, without its
/// tokens, and where it came from (`file` or `admin`).
pub(crate) async fn admin_list_route(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Json<AppserviceList>> {
    let (parts, _) = req.into_parts();
    admin(&state, &parts)?;
    let appservices = state
        .appservices
        .all()
        .iter()
        .filter(|a| !a.builtin)
        .map(|a| {
            let r = &a.registration;
            AppserviceEntry {
                id: r.id.clone(),
                url: r.url.clone(),
                sender: a.sender.clone(),
                namespaces: r.namespaces.clone(),
                protocols: r.protocols.clone(),
                rate_limited: a.rate_limited(),
                receive_ephemeral: a.receive_ephemeral,
                source: if a.added { "admin" } else { "file" },
            }
        })
        .collect();
    Ok(Json(AppserviceList { appservices }))
}

/// `POST /_paracord/v1/admin/appservices` (server admins): adds the registration in the body
/// (YAML, as bridges generate it, or JSON), checked like the files of `appservice_dir`;
/// kept across restarts. Answer: `{"id", "sender"}`.
pub(crate) async fn admin_add_route(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<Json<AddedAppservice>> {
    let (parts, body) = req.into_parts();
    admin(&state, &parts)?;
    let bytes = axum::body::to_bytes(body, state.config.max_request_bytes)
        .await
        .map_err(|_| Error::too_large("request body too large"))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::invalid_param("the registration is not UTF-8"))?;
    let a = state.appservices.add(text)?;
    Ok(Json(AddedAppservice {
        id: a.id().to_owned(),
        sender: a.sender.clone(),
    }))
}

/// `DELETE /_paracord/v1/admin/appservices/{id}` (server admins): removes a registration
/// added with this API; its queue is dropped and its sender stops.
pub(crate) async fn admin_remove_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Json<RemovedAppservice>> {
    let (parts, _) = req.into_parts();
    admin(&state, &parts)?;
    state.appservices.remove(&id)?;
    Ok(Json(RemovedAppservice {}))
}
