//! Push rules (`/pushrules`): the spec's default rule set and its changes, stored as the
//! `m.push_rules` account data. Server-side evaluation, notifications and pushers come later.

use axum::{extract::State, Json};
use paracord_core::Error;
use ruma::{
    api::client::push::{
        delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
        get_pushrules_all, get_pushrules_global_scope, set_pushrule, set_pushrule_actions,
        set_pushrule_enabled,
    },
    push::{RuleKind, Ruleset},
};
use serde_json::{json, Value};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState};

fn rule_json(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<Value, Error> {
    use ruma::push::AnyPushRule;
    let rule = rules
        .get(kind.clone(), rule_id)
        .ok_or_else(|| Error::not_found("push rule not found"))?;
    Ok(match rule.to_owned() {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => serde_json::to_value(r)?,
        AnyPushRule::Content(r) => serde_json::to_value(r)?,
        AnyPushRule::Room(r) => serde_json::to_value(r)?,
        AnyPushRule::Sender(r) => serde_json::to_value(r)?,
        _ => return Err(Error::not_found("push rule of an unknown kind")),
    })
}

/// `GET /_matrix/client/v3/pushrules/` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrules
pub(crate) async fn get_pushrules_all_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    Ok(Json(
        json!({ "global": &*state.account_data.push_rules(&id.user_id)? }),
    ))
}

/// `GET /_matrix/client/v3/pushrules/global/` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobal
pub(crate) async fn get_pushrules_global_scope_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    Ok(Json(
        serde_json::to_value(&*state.account_data.push_rules(&id.user_id)?).map_err(Error::from)?,
    ))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobalkindruleid
pub(crate) async fn get_pushrule_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    Ok(Json(rule_json(&rules, &req.body.kind, &req.body.rule_id)?))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3pushrulesglobalkindruleid
pub(crate) async fn set_pushrule_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    state.account_data.update_push_rules(&id.user_id, |rules| {
        rules
            .insert(
                req.body.rule.clone(),
                req.body.after.as_deref(),
                req.body.before.as_deref(),
            )
            .map_err(|e| Error::invalid_param(format!("cannot insert the rule: {e}")))
    })?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3pushrulesglobalkindruleid
pub(crate) async fn delete_pushrule_route(
    State(state): State<AppState>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    state.account_data.update_push_rules(&id.user_id, |rules| {
        rules
            .remove(req.body.kind.clone(), &req.body.rule_id)
            .map_err(|e| match e {
                ruma::push::RemovePushRuleError::NotFound => {
                    Error::not_found("push rule not found")
                }
                other => Error::invalid_param(format!("cannot delete the rule: {other}")),
            })
    })?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobalkindruleidenabled
pub(crate) async fn get_pushrule_enabled_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    let rule = rule_json(&rules, &req.body.kind, &req.body.rule_id)?;
    Ok(Json(json!({ "enabled": rule["enabled"] })))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3pushrulesglobalkindruleidenabled
pub(crate) async fn set_pushrule_enabled_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    state.account_data.update_push_rules(&id.user_id, |rules| {
        rules
            .set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled)
            .map_err(|_| Error::not_found("push rule not found"))
    })?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobalkindruleidactions
pub(crate) async fn get_pushrule_actions_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    let rule = rule_json(&rules, &req.body.kind, &req.body.rule_id)?;
    Ok(Json(json!({ "actions": rule["actions"] })))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3pushrulesglobalkindruleidactions
pub(crate) async fn set_pushrule_actions_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    state.account_data.update_push_rules(&id.user_id, |rules| {
        rules
            .set_actions(
                req.body.kind.clone(),
                &req.body.rule_id,
                req.body.actions.clone(),
            )
            .map_err(|_| Error::not_found("push rule not found"))
    })?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/notifications` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3notifications
pub(crate) async fn get_notifications_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::push::get_notifications::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let from = match &req.body.from {
        Some(t) => Some(
            paracord_service::tokens::parse_offset_token::<u64>('n', t)
                .ok_or_else(|| Error::invalid_param("invalid from token"))?,
        ),
        None => None,
    };
    let limit = req
        .body
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(50))
        .unwrap_or(50)
        .clamp(1, 100);
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    let (notifications, next) =
        state
            .rooms
            .notifications(&id.user_id, from, limit, only_highlight, |room| {
                state.sync.read_pos(room, &id.user_id).unwrap_or(0)
            })?;
    let mut body = json!({ "notifications": notifications });
    if let Some(n) = next {
        body["next_token"] = json!(format!("n{n}"));
    }
    Ok(Json(body))
}

/// `GET /_matrix/client/v3/pushers` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushers
pub(crate) async fn get_pushers_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::push::get_pushers::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    Ok(Json(json!({ "pushers": state.pushers.list(&id.user_id)? })))
}

/// `POST /_matrix/client/v3/pushers/set` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3pushersset
pub(crate) async fn set_pusher_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::push::set_pusher::v3::Request>,
) -> ApiResult<Json<Value>> {
    let id = req.user()?;
    let body = req
        .json
        .clone()
        .ok_or_else(|| Error::bad_json("missing body"))?;
    state
        .pushers
        .set(&id.user_id, id.device_id.as_str(), &body)?;
    Ok(Json(json!({})))
}
