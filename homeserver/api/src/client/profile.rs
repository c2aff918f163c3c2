//! Profiles: display name and avatar, propagated into room membership.

use axum::extract::State;
use paracord_core::Error;
use ruma::api::client::profile::{
    get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name,
};
use serde_json::json;

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};
use paracord_service::ratelimit::Limit;

/// A local user that does not exist but is in an application service's namespace: the
/// appservice is asked (`GET /_matrix/app/v1/users/{userId}`) and may register it first.
async fn ask_appservice(state: &AppState, user: &ruma::UserId) -> Result<(), Error> {
    if state.accounts.account(user)?.is_none() {
        state.appservices.query_user(user).await;
    }
    Ok(())
}

/// `GET /_matrix/client/v3/profile/{userId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3profileuserid
pub(crate) async fn get_profile_route(
    State(state): State<AppState>,
    req: Ruma<get_profile::v3::Request>,
) -> ApiResult<RumaResponse<get_profile::v3::Response>> {
    if !state.accounts.is_local(&req.body.user_id) {
        // Another server's answer, every field of it (extended profiles included).
        let answer = state.queries.profile(&req.body.user_id, None).await?;
        return Ok(RumaResponse(answer.into_iter().collect()));
    }
    ask_appservice(&state, &req.body.user_id).await?;
    let (d, a) = state.accounts.profile(&req.body.user_id)?;
    let mut resp = get_profile::v3::Response::new();
    if let Some(d) = d {
        resp.set("displayname".to_owned(), json!(d));
    }
    if let Some(a) = a {
        resp.set("avatar_url".to_owned(), json!(a));
    }
    if paracord_service::accounts::is_bot_localpart(req.body.user_id.localpart()) {
        // An application's bot (spec/applications.md): clients show a BOT tag.
        resp.set("chat.paracord.bot".to_owned(), json!(true));
    }
    Ok(RumaResponse(resp))
}

/// `GET /_matrix/client/v3/profile/{userId}/displayname` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3profileuseriddisplayname
pub(crate) async fn get_display_name_route(
    State(state): State<AppState>,
    req: Ruma<get_display_name::v3::Request>,
) -> ApiResult<RumaResponse<get_display_name::v3::Response>> {
    if !state.accounts.is_local(&req.body.user_id) {
        let p = state
            .queries
            .profile(&req.body.user_id, Some("displayname"))
            .await?;
        let d = p
            .get("displayname")
            .ok_or_else(|| Error::not_found("no display name set"))?;
        return Ok(RumaResponse(get_display_name::v3::Response::new(
            d.as_str().map(str::to_owned),
        )));
    }
    ask_appservice(&state, &req.body.user_id).await?;
    let (d, _) = state.accounts.profile(&req.body.user_id)?;
    let d = d.ok_or_else(|| Error::not_found("no display name set"))?;
    Ok(RumaResponse(get_display_name::v3::Response::new(Some(d))))
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3profileuseridavatar_url
pub(crate) async fn get_avatar_url_route(
    State(state): State<AppState>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> ApiResult<RumaResponse<get_avatar_url::v3::Response>> {
    let (_, a) = state.accounts.profile(&req.body.user_id)?;
    let a = a.ok_or_else(|| Error::not_found("no avatar set"))?;
    Ok(RumaResponse(get_avatar_url::v3::Response::new(Some(
        a.into(),
    ))))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3profileuseriddisplayname
pub(crate) async fn set_display_name_route(
    State(state): State<AppState>,
    req: Ruma<set_display_name::v3::Request>,
) -> ApiResult<RumaResponse<set_display_name::v3::Response>> {
    let id = req.user()?;
    state.ratelimit.check(Limit::Profile, id.user_id.as_str())?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only change your own profile").into());
    }
    let name = req.body.displayname.clone();
    if name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(Error::invalid_param("display name too long").into());
    }
    let account = state.accounts.set_profile(&id.user_id, Some(name), None)?;
    state
        .rooms
        .update_profile(
            &id.user_id,
            account.displayname.as_deref(),
            account.avatar_url.as_deref(),
        )
        .await?;
    Ok(RumaResponse(set_display_name::v3::Response::new()))
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3profileuseridavatar_url
pub(crate) async fn set_avatar_url_route(
    State(state): State<AppState>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> ApiResult<RumaResponse<set_avatar_url::v3::Response>> {
    let id = req.user()?;
    state.ratelimit.check(Limit::Profile, id.user_id.as_str())?;
    if id.user_id != req.body.user_id {
        return Err(Error::forbidden("you may only change your own profile").into());
    }
    let url = req
        .body
        .avatar_url
        .as_ref()
        .map(|u| u.to_string())
        .filter(|u| !u.is_empty());
    if url.as_ref().is_some_and(|u| u.len() > 1024) {
        return Err(Error::invalid_param("avatar url too long").into());
    }
    let account = state.accounts.set_profile(&id.user_id, None, Some(url))?;
    state
        .rooms
        .update_profile(
            &id.user_id,
            account.displayname.as_deref(),
            account.avatar_url.as_deref(),
        )
        .await?;
    Ok(RumaResponse(set_avatar_url::v3::Response::new()))
}
