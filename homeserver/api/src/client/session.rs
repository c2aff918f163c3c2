//! Login, logout and refresh.

use std::time::Duration;

use axum::extract::State;
use paracord_core::Error;
use paracord_service::ratelimit::Limit;
use ruma::{
    api::client::session::{
        get_login_types::{
            self,
            v3::{LoginType, PasswordLoginType},
        },
        login, logout, logout_all, refresh_token,
    },
    ServerName,
};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// `GET /_matrix/client/v3/login` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3login
pub(crate) async fn get_login_types_route(
    _req: Ruma<get_login_types::v3::Request>,
) -> RumaResponse<get_login_types::v3::Response> {
    RumaResponse(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::ApplicationService(get_login_types::v3::ApplicationServiceLoginType::new()),
    ]))
}

/// `POST /_matrix/client/v3/login` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3login
pub(crate) async fn login_route(
    State(state): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> ApiResult<RumaResponse<login::v3::Response>> {
    state.ratelimit.check(
        Limit::Auth,
        &req.client_ip.map(|i| i.to_string()).unwrap_or_default(),
    )?;
    if let login::v3::LoginInfo::ApplicationService(a) = &req.body.login_info {
        return appservice_login(&state, &req, a);
    }
    let login::v3::LoginInfo::Password(p) = &req.body.login_info else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            paracord_core::ErrorKind::Unknown,
            "unsupported login type",
        )
        .into());
    };
    let user = match &p.identifier {
        Some(ruma::api::client::uiaa::UserIdentifier::Matrix(m)) => m.user.clone(),
        // The deprecated `user` of r0 clients.
        #[allow(deprecated)]
        None => p
            .user
            .clone()
            .ok_or_else(|| Error::bad_json("missing identifier"))?,
        Some(_) => return Err(Error::forbidden("only user identifiers are supported").into()),
    };
    let user_id = state.accounts.resolve_login_user(&user)?;
    if let Some(d) = &req.body.device_id {
        // Devices may not take the id of a cross-signing key (the spec's MUST).
        if state.e2ee.is_cross_signing_key(&user_id, d.as_str())? {
            return Err(Error::invalid_param(
                "this device id is the public key of one of your cross-signing keys",
            )
            .into());
        }
    }
    let r = state
        .accounts
        .login_password(
            &user_id,
            &p.password,
            req.body.device_id.as_ref().map(|d| d.to_string()),
            req.body.initial_device_display_name.clone(),
            req.body.refresh_token,
        )
        .await?;
    let mut resp = login::v3::Response::new(r.user_id, r.access_token, r.device_id);
    #[allow(deprecated)]
    {
        resp.home_server = Some(
            ServerName::parse(&state.config.server_name)
                .map_err(|e| Error::internal(format!("own server name: {e}")))?,
        );
    }
    resp.well_known = Some(login::v3::DiscoveryInfo::new(
        login::v3::HomeserverInfo::new(state.config.public_baseurl()),
    ));
    resp.refresh_token = r.refresh_token;
    resp.expires_in = r.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(resp))
}

/// `m.login.application_service`: an appservice (by its `as_token`) logs in one of its users,
/// no password asked.
fn appservice_login(
    state: &AppState,
    req: &Ruma<login::v3::Request>,
    a: &login::v3::ApplicationService,
) -> ApiResult<RumaResponse<login::v3::Response>> {
    let Some(appservice) = req
        .ident
        .as_ref()
        .and_then(|i| i.appservice.as_deref())
        .and_then(|id| state.appservices.by_id(id))
    else {
        return Err(Error::missing_token().into());
    };
    let user = match &a.identifier {
        Some(ruma::api::client::uiaa::UserIdentifier::Matrix(m)) => m.user.clone(),
        #[allow(deprecated)]
        None => a
            .user
            .clone()
            .ok_or_else(|| Error::bad_json("missing identifier"))?,
        Some(_) => return Err(Error::forbidden("only user identifiers are supported").into()),
    };
    let user_id = state.accounts.resolve_login_user(&user)?;
    if !appservice.owns_user(&user_id) {
        return Err(
            Error::forbidden("the user is not in the application service's namespace").into(),
        );
    }
    let r = state.accounts.login_trusted(
        &user_id,
        req.body.device_id.as_ref().map(|d| d.to_string()),
        req.body.initial_device_display_name.clone(),
        req.body.refresh_token,
    )?;
    let mut resp = login::v3::Response::new(r.user_id, r.access_token, r.device_id);
    resp.well_known = Some(login::v3::DiscoveryInfo::new(
        login::v3::HomeserverInfo::new(state.config.public_baseurl()),
    ));
    resp.refresh_token = r.refresh_token;
    resp.expires_in = r.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(resp))
}

/// `POST /_matrix/client/v3/logout` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3logout
pub(crate) async fn logout_route(
    State(state): State<AppState>,
    req: Ruma<logout::v3::Request>,
) -> ApiResult<RumaResponse<logout::v3::Response>> {
    let id = req.user()?;
    state
        .accounts
        .delete_devices(&id.user_id, &[id.device_id.to_string()])?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

/// `POST /_matrix/client/v3/logout/all` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3logoutall
pub(crate) async fn logout_all_route(
    State(state): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> ApiResult<RumaResponse<logout_all::v3::Response>> {
    let id = req.user()?;
    state.accounts.delete_all_devices(&id.user_id, None)?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}

/// `POST /_matrix/client/v3/refresh` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3refresh
pub(crate) async fn refresh_token_route(
    State(state): State<AppState>,
    req: Ruma<refresh_token::v3::Request>,
) -> ApiResult<RumaResponse<refresh_token::v3::Response>> {
    let r = state.accounts.refresh(&req.body.refresh_token)?;
    let mut resp = refresh_token::v3::Response::new(r.access_token);
    resp.refresh_token = r.refresh_token;
    resp.expires_in_ms = r.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(resp))
}
