//! Third-party networks (bridges): protocol metadata and lookups, answered by the application
//! services that registered each protocol.

use std::collections::BTreeMap;

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::client::thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
        get_user_for_protocol, get_user_for_user_id,
    },
    thirdparty::{Location, User},
};
use serde::de::DeserializeOwned;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// `M_NOT_FOUND` unless an appservice registered `protocol`.
fn known(state: &AppState, protocol: &str) -> Result<(), Error> {
    if state.appservices.protocols().iter().any(|p| p == protocol) {
        Ok(())
    } else {
        Err(Error::not_found(
            "no application service handles this protocol",
        ))
    }
}

/// The items of the appservices' answers that have the spec's shape.
fn items<T: DeserializeOwned>(values: Vec<serde_json::Value>) -> Vec<T> {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

fn pairs(fields: &BTreeMap<String, String>) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `GET /_matrix/client/v3/thirdparty/protocols` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3thirdpartyprotocols
pub(crate) async fn get_protocols_route(
    State(state): State<AppState>,
    req: Ruma<get_protocols::v3::Request>,
) -> ApiResult<RumaResponse<get_protocols::v3::Response>> {
    req.user()?;
    let mut protocols = BTreeMap::new();
    for p in state.appservices.protocols() {
        if let Some(meta) = state.appservices.thirdparty_protocol(&p).await {
            protocols.insert(p, meta);
        }
    }
    Ok(RumaResponse(get_protocols::v3::Response::new(protocols)))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3thirdpartyprotocolprotocol
pub(crate) async fn get_protocol_route(
    State(state): State<AppState>,
    req: Ruma<get_protocol::v3::Request>,
) -> ApiResult<RumaResponse<get_protocol::v3::Response>> {
    req.user()?;
    known(&state, &req.body.protocol)?;
    let Some(protocol) = state
        .appservices
        .thirdparty_protocol(&req.body.protocol)
        .await
    else {
        return Err(Error::not_found("the protocol's application services did not answer").into());
    };
    Ok(RumaResponse(get_protocol::v3::Response::new(protocol)))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3thirdpartylocationprotocol
pub(crate) async fn get_location_for_protocol_route(
    State(state): State<AppState>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> ApiResult<RumaResponse<get_location_for_protocol::v3::Response>> {
    req.user()?;
    known(&state, &req.body.protocol)?;
    let found = state
        .appservices
        .thirdparty_lookup(
            "location",
            Some(&req.body.protocol),
            &pairs(&req.body.fields),
        )
        .await;
    Ok(RumaResponse(get_location_for_protocol::v3::Response::new(
        items::<Location>(found),
    )))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3thirdpartyuserprotocol
pub(crate) async fn get_user_for_protocol_route(
    State(state): State<AppState>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> ApiResult<RumaResponse<get_user_for_protocol::v3::Response>> {
    req.user()?;
    known(&state, &req.body.protocol)?;
    let found = state
        .appservices
        .thirdparty_lookup("user", Some(&req.body.protocol), &pairs(&req.body.fields))
        .await;
    Ok(RumaResponse(get_user_for_protocol::v3::Response::new(
        items::<User>(found),
    )))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3thirdpartylocation
pub(crate) async fn get_location_for_room_alias_route(
    State(state): State<AppState>,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> ApiResult<RumaResponse<get_location_for_room_alias::v3::Response>> {
    req.user()?;
    let found = state
        .appservices
        .thirdparty_lookup(
            "location",
            None,
            &[("alias".to_owned(), req.body.alias.to_string())],
        )
        .await;
    Ok(RumaResponse(
        get_location_for_room_alias::v3::Response::new(items::<Location>(found)),
    ))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3thirdpartyuser
pub(crate) async fn get_user_for_user_id_route(
    State(state): State<AppState>,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> ApiResult<RumaResponse<get_user_for_user_id::v3::Response>> {
    req.user()?;
    let found = state
        .appservices
        .thirdparty_lookup(
            "user",
            None,
            &[("userid".to_owned(), req.body.userid.to_string())],
        )
        .await;
    Ok(RumaResponse(get_user_for_user_id::v3::Response::new(
        items::<User>(found),
    )))
}
