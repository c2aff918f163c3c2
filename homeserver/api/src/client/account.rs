//! Registration and account management.

use std::time::Duration;

use axum::extract::State;
use paracord_core::Error;
use paracord_service::{accounts::UiaFlow, ratelimit::Limit};
use ruma::api::client::account::{
    change_password, check_registration_token_validity, deactivate, get_username_availability,
    register, whoami,
};
use ruma::api::client::uiaa::AuthData;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

/// The UIA `auth` of a request as the JSON the accounts service reads.
pub(crate) fn auth_json(auth: &Option<AuthData>) -> Result<Option<serde_json::Value>, Error> {
    Ok(auth.as_ref().map(serde_json::to_value).transpose()?)
}

fn ip_key<T>(req: &Ruma<T>) -> String {
    req.client_ip.map(|i| i.to_string()).unwrap_or_default()
}

/// `POST /_matrix/client/v3/register` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3register
pub(crate) async fn register_route(
    State(state): State<AppState>,
    req: Ruma<register::v3::Request>,
) -> ApiResult<RumaResponse<register::v3::Response>> {
    if let Some(appservice) = req.ident.as_ref().and_then(|i| i.appservice.clone()) {
        return appservice_register(&state, req, &appservice).await;
    }
    if req.body.login_type == Some(register::LoginType::ApplicationService) {
        return Err(Error::missing_token().into());
    }
    let open = state.config.registration_enabled;
    // With registration closed, the one-time admin token (printed at start while the server
    // has no admin) is the only way in.
    if !open && !state.accounts.admin_token_waiting() {
        return Err(Error::forbidden("registration is disabled on this server").into());
    }
    if req.body.kind == register::RegistrationKind::Guest {
        return Err(Error::forbidden("guest access is not enabled").into());
    }
    state.ratelimit.check(Limit::Auth, &ip_key(&req))?;
    if let Some(u) = &req.body.username {
        // Report a bad or taken name before asking for auth, like Synapse.
        if !state.accounts.is_available(u)? {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                paracord_core::ErrorKind::UserInUse,
                "user id already taken",
            )
            .into());
        }
        check_not_exclusive(&state, u)?;
    }
    let auth = auth_json(&req.body.auth)?;
    let token = state
        .accounts
        .uia(auth.as_ref(), UiaFlow::Register { open })
        .await?;
    // The admin token is used up before the account is made, so two registrations cannot
    // both use it; it is put back if the registration fails.
    if let Some(t) = &token {
        if !state.accounts.take_admin_token(t)? {
            return Err(Error::forbidden("the registration token has been used").into());
        }
    }
    let b = req.body;
    let r = match state
        .accounts
        .register(
            b.username.as_deref(),
            b.password,
            b.device_id.map(|d| d.to_string()),
            b.initial_device_display_name,
            b.inhibit_login,
            b.refresh_token,
            Some(token.is_some()),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            if let Some(t) = &token {
                state.accounts.restore_admin_token(t)?;
            }
            return Err(e.into());
        }
    };
    if token.is_some() {
        tracing::info!(user = %r.user_id, "the first admin registered with the one-time token");
    }
    Ok(RumaResponse(registered(r, b.inhibit_login)))
}

/// A name in an application service's exclusive user namespace, or its sender's, is that
/// appservice's to register: anyone else gets `M_EXCLUSIVE`.
fn check_not_exclusive(state: &AppState, localpart: &str) -> Result<(), Error> {
    let user = state.accounts.user_id_for(localpart)?;
    let reserved = state
        .appservices
        .exclusive_user_owner(user.as_str())
        .is_some()
        || state.appservices.all().iter().any(|a| a.sender == user);
    if reserved {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            paracord_core::ErrorKind::Exclusive,
            "this user id is reserved by an application service",
        ));
    }
    Ok(())
}

/// `POST /register` with an application service's `as_token` (`m.login.application_service`):
/// a user in its namespace, no user-interactive auth, whether registration is open or not.
async fn appservice_register(
    state: &AppState,
    req: Ruma<register::v3::Request>,
    appservice: &str,
) -> ApiResult<RumaResponse<register::v3::Response>> {
    let Some(a) = state.appservices.by_id(appservice) else {
        return Err(Error::unknown_token(false).into());
    };
    let b = req.body;
    let Some(localpart) = b.username.as_deref() else {
        return Err(Error::missing_param("an application service must name the user").into());
    };
    let user = state.accounts.user_id_for(localpart)?;
    let other_owner = state
        .appservices
        .exclusive_user_owner(user.as_str())
        .is_some_and(|o| o.id() != a.id());
    if !a.owns_user(&user) || other_owner {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            paracord_core::ErrorKind::Exclusive,
            "this user id is not in the application service's namespace",
        )
        .into());
    }
    let device_id = b.device_id.map(|d| d.to_string());
    let r = if paracord_service::accounts::is_bot_localpart(localpart)
        && a.is_exclusive_user(user.as_str())
    {
        // An application's namespace in the bots' namespace (spec/applications.md §3).
        state
            .accounts
            .register_namespaced_bot(
                localpart,
                device_id,
                b.initial_device_display_name,
                b.inhibit_login,
                b.refresh_token,
            )
            .await?
    } else {
        state
            .accounts
            .register(
                Some(localpart),
                None,
                device_id,
                b.initial_device_display_name,
                b.inhibit_login,
                b.refresh_token,
                None,
            )
            .await?
    };
    Ok(RumaResponse(registered(r, b.inhibit_login)))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1registermloginregistration_tokenvalidity
pub(crate) async fn registration_token_validity_route(
    State(state): State<AppState>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<RumaResponse<check_registration_token_validity::v1::Response>> {
    state.ratelimit.check(Limit::Auth, &ip_key(&req))?;
    if !state.accounts.admin_token_waiting() {
        return Err(Error::forbidden("this server has no registration tokens").into());
    }
    Ok(RumaResponse(
        check_registration_token_validity::v1::Response::new(
            state.accounts.admin_token_matches(&req.body.token),
        ),
    ))
}

/// `GET /_matrix/client/v3/register/available` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3registeravailable
pub(crate) async fn get_username_availability_route(
    State(state): State<AppState>,
    req: Ruma<get_username_availability::v3::Request>,
) -> ApiResult<RumaResponse<get_username_availability::v3::Response>> {
    if !state.accounts.is_available(&req.body.username)? {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            paracord_core::ErrorKind::UserInUse,
            "user id already taken",
        )
        .into());
    }
    check_not_exclusive(&state, &req.body.username)?;
    // A name in an application service's (non-exclusive) namespace: the appservice may
    // already have that user, and creates it if so.
    let user = state.accounts.user_id_for(&req.body.username)?;
    if state.appservices.query_user(&user).await
        && !state.accounts.is_available(&req.body.username)?
    {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            paracord_core::ErrorKind::UserInUse,
            "user id already taken",
        )
        .into());
    }
    Ok(RumaResponse(get_username_availability::v3::Response::new(
        true,
    )))
}

/// `GET /_matrix/client/v3/account/whoami` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3accountwhoami
pub(crate) async fn whoami_route(
    req: Ruma<whoami::v3::Request>,
) -> ApiResult<RumaResponse<whoami::v3::Response>> {
    let id = req.user()?;
    let mut resp = whoami::v3::Response::new(id.user_id.clone(), false);
    resp.device_id = Some(id.device_id.clone());
    Ok(RumaResponse(resp))
}

/// `POST /_matrix/client/v3/account/password` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3accountpassword
pub(crate) async fn change_password_route(
    State(state): State<AppState>,
    req: Ruma<change_password::v3::Request>,
) -> ApiResult<RumaResponse<change_password::v3::Response>> {
    let id = req.user()?.clone();
    let auth = auth_json(&req.body.auth)?;
    state
        .accounts
        .uia(auth.as_ref(), UiaFlow::Password(id.user_id.clone()))
        .await?;
    state
        .accounts
        .set_password(&id.user_id, req.body.new_password.clone())
        .await?;
    if req.body.logout_devices {
        state
            .accounts
            .delete_all_devices(&id.user_id, Some(id.device_id.as_str()))?;
    }
    Ok(RumaResponse(change_password::v3::Response::new()))
}

/// `POST /_matrix/client/v3/account/deactivate` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3accountdeactivate
pub(crate) async fn deactivate_route(
    State(state): State<AppState>,
    req: Ruma<deactivate::v3::Request>,
) -> ApiResult<RumaResponse<deactivate::v3::Response>> {
    let id = req.user()?.clone();
    let auth = auth_json(&req.body.auth)?;
    state
        .accounts
        .uia(auth.as_ref(), UiaFlow::Password(id.user_id.clone()))
        .await?;
    // Leave every room first, while the account can still send.
    state
        .rooms
        .leave_all(&id.user_id, Some("account deactivated"))
        .await?;
    state.backups.delete_all(&id.user_id)?;
    state.accounts.deactivate(&id.user_id)?;
    Ok(RumaResponse(deactivate::v3::Response::new(
        ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport,
    )))
}

/// The answer to a registration: the new user, and its session unless `inhibit_login`.
fn registered(
    r: paracord_service::accounts::LoginResult,
    inhibit_login: bool,
) -> register::v3::Response {
    let mut resp = register::v3::Response::new(r.user_id);
    if !inhibit_login {
        resp.access_token = Some(r.access_token);
        resp.device_id = Some(r.device_id);
        resp.refresh_token = r.refresh_token;
        resp.expires_in = r.expires_in_ms.map(Duration::from_millis);
    }
    resp
}
