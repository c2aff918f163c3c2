//! `/sync` and filters.

use std::time::Duration;

use axum::extract::State;
use paracord_core::Error;
use paracord_service::sync::{parse_sync_token, SyncRequest};
use ruma::{
    api::client::{
        filter::{create_filter, get_filter, FilterDefinition},
        sync::sync_events,
    },
    presence::PresenceState,
};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// Longest long-poll honoured.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /_matrix/client/v3/sync` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync
pub(crate) async fn sync_events_route(
    State(state): State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> ApiResult<RumaResponse<sync_events::v3::Response>> {
    let id = req.user()?.clone();
    let filter = match &req.body.filter {
        None => FilterDefinition::default(),
        Some(sync_events::v3::Filter::FilterDefinition(f)) => f.clone(),
        Some(sync_events::v3::Filter::FilterId(fid)) => {
            let raw = state
                .account_data
                .filter(&id.user_id, fid)?
                .ok_or_else(|| Error::not_found("filter not found"))?;
            stored_filter(raw)?
        }
        Some(_) => FilterDefinition::default(),
    };
    let since = req
        .body
        .since
        .as_deref()
        .map(parse_sync_token)
        .transpose()?;
    match req.body.set_presence {
        PresenceState::Offline => {}
        ref p => {
            state
                .ephemeral
                .set_presence(&id.user_id, p.as_str(), None, vec![])?;
        }
    }
    let timeout = req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let body = state
        .sync
        .sync(SyncRequest {
            user: &id.user_id,
            device: id.device_id.as_str(),
            since: since.map(|(pos, _)| pos),
            to_device_ack: since.map(|(_, ack)| ack),
            full_state: req.body.full_state,
            filter,
            timeout,
        })
        .await?;
    Ok(RumaResponse(body))
}

/// `POST /_matrix/client/v3/user/{userId}/filter` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3useruseridfilter
pub(crate) async fn create_filter_route(
    State(state): State<AppState>,
    req: Ruma<create_filter::v3::Request>,
) -> ApiResult<RumaResponse<create_filter::v3::Response>> {
    let id = req.user()?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only create filters for yourself").into());
    }
    let filter = serde_json::to_value(&req.body.filter).map_err(Error::from)?;
    let filter_id = state.account_data.create_filter(&id.user_id, &filter)?;
    Ok(RumaResponse(create_filter::v3::Response::new(filter_id)))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridfilterfilterid
pub(crate) async fn get_filter_route(
    State(state): State<AppState>,
    req: Ruma<get_filter::v3::Request>,
) -> ApiResult<RumaResponse<get_filter::v3::Response>> {
    let id = req.user()?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only read your own filters").into());
    }
    let f = state
        .account_data
        .filter(&id.user_id, &req.body.filter_id)?
        .ok_or_else(|| Error::not_found("filter not found"))?;
    Ok(RumaResponse(get_filter::v3::Response::new(stored_filter(
        f,
    )?)))
}

/// A filter as it was stored when it was created.
fn stored_filter(raw: serde_json::Value) -> Result<FilterDefinition, Error> {
    serde_json::from_value(raw)
        .map_err(|e| Error::internal(format!("stored filter unreadable: {e}")))
}
