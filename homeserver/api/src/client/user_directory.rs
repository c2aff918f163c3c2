//! The user directory search.

use axum::extract::State;
use ruma::{api::client::user_directory::search_users, OwnedMxcUri, OwnedUserId};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

fn user(
    user_id: OwnedUserId,
    display_name: Option<String>,
    avatar_url: Option<String>,
) -> search_users::v3::User {
    let mut u = search_users::v3::User::new(user_id);
    u.display_name = display_name;
    u.avatar_url = avatar_url.map(OwnedMxcUri::from);
    u
}

/// `POST /_matrix/client/v3/user_directory/search` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3user_directorysearch
pub(crate) async fn search_users_route(
    State(state): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> ApiResult<RumaResponse<search_users::v3::Response>> {
    let id = req.user()?;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(10)
        .clamp(1, 100);
    let (users, limited) = state
        .rooms
        .search_users(&id.user_id, &req.body.search_term, limit)?;
    let mut results: Vec<search_users::v3::User> = users
        .into_iter()
        .map(|u| user(u.user_id, u.display_name, u.avatar_url))
        .collect();
    // A search for the exact id of a user of this server finds them, rooms shared or not
    // (someone who knows the id already knows they exist).
    if let Ok(exact) = OwnedUserId::try_from(req.body.search_term.trim()) {
        let known = state.accounts.is_local(&exact)
            && state
                .accounts
                .account(&exact)?
                .is_some_and(|a| !a.deactivated);
        if known && exact != id.user_id && !results.iter().any(|r| r.user_id == exact) {
            let (display_name, avatar_url) = state.accounts.profile(&exact)?;
            results.insert(0, user(exact, display_name, avatar_url));
            results.truncate(limit);
        }
    }
    Ok(RumaResponse(search_users::v3::Response::new(
        results, limited,
    )))
}
