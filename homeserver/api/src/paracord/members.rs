//! Roles (modify, reorder, delete), members, bans and invites (spec/rest.md §7, §8, §9, §11).

use axum::Router;

use crate::AppState;

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r
}
