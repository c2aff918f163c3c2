//! OpenID tokens: requested by a user, checked by third parties (integration managers,
//! widgets) at the federation userinfo endpoint.

use axum::extract::{Query, State};
use paracord_core::Error;
use ruma::{
    api::{client::account::request_openid_token, federation::openid::get_openid_userinfo},
    authentication::TokenType,
    ServerName,
};
use serde::Deserialize;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3useruseridopenidrequest_token
pub(crate) async fn request_openid_token_route(
    State(state): State<AppState>,
    req: Ruma<request_openid_token::v3::Request>,
) -> ApiResult<RumaResponse<request_openid_token::v3::Response>> {
    let id = req.user()?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only request tokens for yourself").into());
    }
    let (token, expires_in) = state.accounts.request_openid_token(&id.user_id)?;
    let server_name = ServerName::parse(&state.config.server_name)
        .map_err(|e| Error::internal(format!("own server name: {e}")))?;
    Ok(RumaResponse(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        server_name,
        std::time::Duration::from_secs(expires_in),
    )))
}

#[derive(Deserialize)]
pub(crate) struct UserinfoQuery {
    access_token: Option<String>,
}

/// `GET /_matrix/federation/v1/openid/userinfo` — https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1openiduserinfo
///
/// Third parties (integration managers, widgets) check an OpenID token here; it needs no
/// server signature. The query is read by hand: a request without a token is
/// `M_MISSING_TOKEN`, not the missing parameter ruma's request would make it.
pub(crate) async fn openid_userinfo_route(
    State(state): State<AppState>,
    Query(q): Query<UserinfoQuery>,
) -> ApiResult<RumaResponse<get_openid_userinfo::v1::Response>> {
    let token = q.access_token.ok_or_else(Error::missing_token)?;
    let user = state
        .accounts
        .openid_user(&token)?
        .ok_or_else(|| Error::unknown_token(false))?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(user)))
}
