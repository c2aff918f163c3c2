//! Room tags (spec: client-server API, room tagging), kept in the user's room account data.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::client::tag::{create_tag, delete_tag, get_tags},
    events::tag::{TagInfo, TagName, Tags},
};
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

fn own<T>(req: &Ruma<T>, user: &ruma::UserId) -> Result<(), Error> {
    match &req.ident {
        Some(id) if id.user_id == user => Ok(()),
        _ => Err(Error::forbidden("you may only access your own tags")),
    }
}

fn tags_of(
    state: &AppState,
    user: &ruma::UserId,
    room: &ruma::RoomId,
) -> Result<serde_json::Map<String, Value>, Error> {
    Ok(state
        .account_data
        .get(user, Some(room), "m.tag")?
        .and_then(|c| c.get("tags").and_then(|t| t.as_object()).cloned())
        .unwrap_or_default())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3useruseridroomsroomidtags
pub(crate) async fn get_tags_route(
    State(state): State<AppState>,
    req: Ruma<get_tags::v3::Request>,
) -> ApiResult<RumaResponse<get_tags::v3::Response>> {
    own(&req, &req.body.user_id)?;
    let tags: Tags = tags_of(&state, &req.body.user_id, &req.body.room_id)?
        .into_iter()
        .map(|(name, info)| {
            let info: TagInfo = serde_json::from_value(info).unwrap_or_default();
            (TagName::from(name), info)
        })
        .collect();
    Ok(RumaResponse(get_tags::v3::Response::new(tags)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3useruseridroomsroomidtagstag
pub(crate) async fn create_tag_route(
    State(state): State<AppState>,
    req: Ruma<create_tag::v3::Request>,
) -> ApiResult<RumaResponse<create_tag::v3::Response>> {
    own(&req, &req.body.user_id)?;
    if req.body.tag.is_empty() || req.body.tag.len() > 255 {
        return Err(Error::invalid_param("tag must be 1 to 255 bytes").into());
    }
    state.rooms.room_or_404(&req.body.room_id)?;
    // ruma has checked that `order`, if any, is a number.
    let info = serde_json::to_value(&req.body.tag_info).map_err(Error::from)?;
    let mut tags = tags_of(&state, &req.body.user_id, &req.body.room_id)?;
    tags.insert(req.body.tag.clone(), info);
    state.account_data.set(
        &req.body.user_id,
        Some(&req.body.room_id),
        "m.tag",
        json!({ "tags": tags }),
    )?;
    Ok(RumaResponse(create_tag::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3useruseridroomsroomidtagstag
pub(crate) async fn delete_tag_route(
    State(state): State<AppState>,
    req: Ruma<delete_tag::v3::Request>,
) -> ApiResult<RumaResponse<delete_tag::v3::Response>> {
    own(&req, &req.body.user_id)?;
    let mut tags = tags_of(&state, &req.body.user_id, &req.body.room_id)?;
    if tags.remove(&req.body.tag).is_some() {
        state.account_data.set(
            &req.body.user_id,
            Some(&req.body.room_id),
            "m.tag",
            json!({ "tags": tags }),
        )?;
    }
    Ok(RumaResponse(delete_tag::v3::Response::new()))
}
