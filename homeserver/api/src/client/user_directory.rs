//! The user directory search.

use axum::{extract::State, Json};
use ruma::api::client::user_directory::search_users;
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

/// `POST /_matrix/client/v3/user_directory/search` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3user_directorysearch
pub(crate) async fn search_users_route(
    State(state): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(10)
        .clamp(1, 100);
    let (users, limited) = state
        .rooms
        .search_users(&id.user_id, &req.body.search_term, limit)?;
    let mut results: Vec<Value> = users
        .into_iter()
        .map(|u| json!({ "user_id": u.user_id, "display_name": u.display_name, "avatar_url": u.avatar_url }))
        .collect();
    // A search for the exact id of a user of this server finds them, rooms shared or not
    // (someone who knows the id already knows they exist).
    if let Ok(exact) = ruma::OwnedUserId::try_from(req.body.search_term.trim()) {
        let known = state.accounts.is_local(&exact)
            && state
                .accounts
                .account(&exact)?
                .is_some_and(|a| !a.deactivated);
        if known && exact != id.user_id && !results.iter().any(|r| r["user_id"] == exact.as_str()) {
            let (display_name, avatar_url) = state.accounts.profile(&exact)?;
            results.insert(
                0,
                json!({ "user_id": exact, "display_name": display_name, "avatar_url": avatar_url }),
            );
            results.truncate(limit);
        }
    }
    Ok(Json(json!({ "results": results, "limited": limited })))
}
