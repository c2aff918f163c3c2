//! The MatrixRTC focus (spec/voice.md): transport discovery (MSC4143), LiveKit tokens for
//! this server's users (MSC4195), the focus service URL Element Call's builds talk to (an
//! OpenID token for a LiveKit token, as lk-jwt-service does), LiveKit's webhook and the
//! stream presets. The voice moderation routes are `paracord::voice`'s.

use axum::{
    extract::{Request, State},
    routing::{get, post, MethodRouter},
    Json, Router,
};
use paracord_core::Error;
use paracord_service::rtc::model::{
    DelegateLeave, OpenIdToken, RtcMember, ServerTokenRequest, SlotTokenRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    paracord::{json_body, wire},
    ruma_wrapper::{caller_ip, identify},
    ApiResult, AppState,
};

/// The routes outside `/_paracord/v1` (not relayed: the focus answers for its own SFU).
pub(crate) fn routes() -> Router<AppState> {
    let r = at(
        Router::new(),
        &[
            "/_matrix/client/v1/rtc/transports",
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
        ],
        get(transports_route),
    );
    let r = at(
        r,
        &[
            "/_matrix/client/v1/rtc/livekit/get_token",
            "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token",
            "/_matrix/client/unstable/org.matrix.msc4195/rtc/livekit/get_token",
        ],
        post(get_token_route),
    );
    let r = at(
        r,
        &[
            "/_matrix/client/v1/rtc/livekit/delegate_delayed_leave",
            "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave",
        ],
        post(delegate_leave_route),
    );
    let r = at(
        r,
        &[
            "/_matrix/federation/v1/rtc/livekit/get_token",
            "/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token",
        ],
        post(server_get_token_route),
    );
    r.route(
        "/_paracord/livekit/get_token",
        post(service_get_token_route),
    )
    .route("/_paracord/livekit/sfu/get", post(service_sfu_get_route))
    .route("/_paracord/livekit/webhook", post(webhook_route))
    .route(
        "/_paracord/v1/voice/stream_presets",
        get(stream_presets_route),
    )
}

/// `route` at each of `paths` (a stable path and its unstable names).
fn at(mut r: Router<AppState>, paths: &[&str], route: MethodRouter<AppState>) -> Router<AppState> {
    for path in paths {
        r = r.route(path, route.clone());
    }
    r
}

/// `GET /_matrix/client/v1/rtc/transports` (MSC4143): LiveKit, when configured; none
/// otherwise.
async fn transports_route(State(state): State<AppState>, req: Request) -> ApiResult<Json<Value>> {
    let (parts, _) = req.into_parts();
    identify(&state, &parts, caller_ip(&state, &parts)).await?;
    // `transports` is MSC4195's name, `rtc_transports` MSC4143's first one.
    let transports = state.rtc.transports();
    Ok(Json(
        json!({ "transports": transports, "rtc_transports": transports }),
    ))
}

/// The first revisions' body of MSC4195's `get_token` (Element Call's builds send it).
#[derive(Deserialize)]
struct TokenRequest {
    room_id: String,
    slot_id: String,
    member: RtcMember,
}

#[derive(Deserialize)]
struct OpenIdTokenRequest {
    room_id: String,
    slot_id: String,
    member: RtcMember,
    openid_token: OpenIdToken,
}

#[derive(Deserialize)]
struct LegacyRequest {
    room: String,
    openid_token: OpenIdToken,
    device_id: String,
}

/// `POST /_matrix/client/v1/rtc/livekit/get_token` (MSC4195) for this server's users: a
/// token for this server's SFU, or, for another server's, one asked of that server. The
/// body of the current revision (`member_id`, `url`) or of the first ones (`member`).
async fn get_token_route(State(state): State<AppState>, req: Request) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let (id, _) = identify(&state, &parts, caller_ip(&state, &parts)).await?;
    let body = json_body(&state, body).await?;
    let answer = if body.get("member").is_some() {
        let body: TokenRequest = wire::read(body)?;
        state
            .rtc
            .token_for_device(
                &id.user_id,
                id.device_id.as_str(),
                &body.room_id,
                &body.slot_id,
                &body.member,
            )
            .await?
    } else {
        let body: SlotTokenRequest = wire::read(body)?;
        state
            .rtc
            .token_for_slot(&id.user_id, id.device_id.as_str(), &body)
            .await?
    };
    Ok(Json(json!(answer)))
}

/// `POST /_matrix/client/v1/rtc/livekit/delegate_delayed_leave` (MSC4195): the focus keeps
/// the user's delayed leave event alive while they are on the SFU and sends it when they
/// leave it.
async fn delegate_leave_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let (id, _) = identify(&state, &parts, caller_ip(&state, &parts)).await?;
    let body: DelegateLeave = wire::read(json_body(&state, body).await?)?;
    state
        .rtc
        .delegate_leave(&id.user_id, id.device_id.as_str(), &body)?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/federation/v1/rtc/livekit/get_token` (MSC4195): another server asks, for
/// one of its users, a token to subscribe on this server's SFU.
async fn server_get_token_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (origin, bytes) = crate::federation::signed_body(&state, req).await?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::not_json(format!("the body is not JSON: {e}")))?;
    let body: ServerTokenRequest = wire::read(body)?;
    let answer = state.rtc.token_for_server(&origin, &body).await?;
    Ok(Json(json!({ "jwt": answer.jwt })))
}

/// `POST /_paracord/livekit/get_token`: MSC4195's body with an OpenID token, from a user of
/// any server.
async fn service_get_token_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body: OpenIdTokenRequest = wire::read(json_body(&state, req.into_body()).await?)?;
    let answer = state
        .rtc
        .token_for_openid(
            &body.openid_token,
            &body.room_id,
            &body.slot_id,
            &body.member,
        )
        .await?;
    Ok(Json(json!(answer)))
}

/// `POST /_paracord/livekit/sfu/get`: lk-jwt-service's legacy exchange.
async fn service_sfu_get_route(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body: LegacyRequest = wire::read(json_body(&state, req.into_body()).await?)?;
    let answer = state
        .rtc
        .token_legacy(&body.openid_token, &body.room, &body.device_id)
        .await?;
    Ok(Json(json!(answer)))
}

/// `POST /_paracord/livekit/webhook`: LiveKit's events, signed with the API key.
async fn webhook_route(State(state): State<AppState>, req: Request) -> ApiResult<Json<Value>> {
    let (parts, body) = req.into_parts();
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(Error::missing_token)?
        .to_owned();
    let bytes = axum::body::to_bytes(body, state.config.max_request_bytes)
        .await
        .map_err(|_| Error::too_large("the webhook body is too large"))?;
    let body = std::str::from_utf8(&bytes).map_err(|_| Error::not_json("not UTF-8"))?;
    if !state.rtc.webhook(body, &authorization).await? {
        return Err(
            Error::forbidden("the webhook is not signed with this server's LiveKit key").into(),
        );
    }
    Ok(Json(json!({})))
}

/// `GET /_paracord/v1/voice/stream_presets` (spec/voice.md §4).
async fn stream_presets_route() -> Json<Value> {
    Json(paracord_service::rtc::presets::presets())
}
