//! Push rules (`/pushrules`): the spec's default rule set and its changes, stored as the
//! `m.push_rules` account data. Server-side evaluation, notifications and pushers come later.

use axum::extract::State;
use paracord_core::Error;
use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher,
        set_pushrule, set_pushrule_actions, set_pushrule_enabled, PushRule,
    },
    push::{RuleKind, Ruleset},
};

use crate::{ruma_wrapper::Ruma, ApiResult, AppState, RumaResponse};

fn find_rule(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<PushRule, Error> {
    use ruma::push::AnyPushRule;
    let rule = rules
        .get(kind.clone(), rule_id)
        .ok_or_else(|| Error::not_found("push rule not found"))?;
    Ok(match rule.to_owned() {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => r.into(),
        AnyPushRule::Content(r) => r.into(),
        AnyPushRule::Room(r) => r.into(),
        AnyPushRule::Sender(r) => r.into(),
        _ => return Err(Error::not_found("push rule of an unknown kind")),
    })
}

/// `GET /_matrix/client/v3/pushrules/` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrules
pub(crate) async fn get_pushrules_all_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrules_all::v3::Response>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(
        (*rules).clone(),
    )))
}

/// `GET /_matrix/client/v3/pushrules/global/` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobal
pub(crate) async fn get_pushrules_global_scope_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrules_global_scope::v3::Response>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    Ok(RumaResponse(get_pushrules_global_scope::v3::Response::new(
        (*rules).clone(),
    )))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobalkindruleid
pub(crate) async fn get_pushrule_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrule::v3::Response>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(find_rule(
        &rules,
        &req.body.kind,
        &req.body.rule_id,
    )?)))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3pushrulesglobalkindruleid
pub(crate) async fn set_pushrule_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule::v3::Request>,
) -> ApiResult<RumaResponse<set_pushrule::v3::Response>> {
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
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` — https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3pushrulesglobalkindruleid
pub(crate) async fn delete_pushrule_route(
    State(state): State<AppState>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<RumaResponse<delete_pushrule::v3::Response>> {
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
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobalkindruleidenabled
pub(crate) async fn get_pushrule_enabled_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrule_enabled::v3::Response>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    let rule = find_rule(&rules, &req.body.kind, &req.body.rule_id)?;
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(
        rule.enabled,
    )))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3pushrulesglobalkindruleidenabled
pub(crate) async fn set_pushrule_enabled_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<RumaResponse<set_pushrule_enabled::v3::Response>> {
    let id = req.user()?;
    state.account_data.update_push_rules(&id.user_id, |rules| {
        rules
            .set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled)
            .map_err(|_| Error::not_found("push rule not found"))
    })?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushrulesglobalkindruleidactions
pub(crate) async fn get_pushrule_actions_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<RumaResponse<get_pushrule_actions::v3::Response>> {
    let id = req.user()?;
    let rules = state.account_data.push_rules(&id.user_id)?;
    let rule = find_rule(&rules, &req.body.kind, &req.body.rule_id)?;
    Ok(RumaResponse(get_pushrule_actions::v3::Response::new(
        rule.actions,
    )))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions` — https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3pushrulesglobalkindruleidactions
pub(crate) async fn set_pushrule_actions_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<RumaResponse<set_pushrule_actions::v3::Response>> {
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
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
}

/// `GET /_matrix/client/v3/notifications` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3notifications
pub(crate) async fn get_notifications_route(
    State(state): State<AppState>,
    req: Ruma<get_notifications::v3::Request>,
) -> ApiResult<RumaResponse<get_notifications::v3::Response>> {
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
    // The service builds each entry from a stored record and the event; one that does not
    // read as a notification (none should) is left out rather than failing the page.
    let notifications = notifications
        .into_iter()
        .filter_map(|n| serde_json::from_value(n).ok())
        .collect();
    let mut resp = get_notifications::v3::Response::new(notifications);
    resp.next_token = next.map(|n| format!("n{n}"));
    Ok(RumaResponse(resp))
}

/// `GET /_matrix/client/v3/pushers` — https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3pushers
pub(crate) async fn get_pushers_route(
    State(state): State<AppState>,
    req: Ruma<get_pushers::v3::Request>,
) -> ApiResult<RumaResponse<get_pushers::v3::Response>> {
    let id = req.user()?;
    // Stored pushers were set through `/pushers/set`, whose body ruma parsed as a pusher.
    let pushers = state
        .pushers
        .list(&id.user_id)?
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect();
    Ok(RumaResponse(get_pushers::v3::Response::new(pushers)))
}

/// `POST /_matrix/client/v3/pushers/set` — https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3pushersset
pub(crate) async fn set_pusher_route(
    State(state): State<AppState>,
    req: Ruma<set_pusher::v3::Request>,
) -> ApiResult<RumaResponse<set_pusher::v3::Response>> {
    let id = req.user()?;
    let body = serde_json::to_value(&req.body.action).map_err(Error::from)?;
    state
        .pushers
        .set(&id.user_id, id.device_id.as_str(), &body)?;
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}
