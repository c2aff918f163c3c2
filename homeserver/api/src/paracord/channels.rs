//! Guild settings, channels and permission overwrites (spec/rest.md §5, §6, §10).

use axum::Router;

use crate::AppState;

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r
}
