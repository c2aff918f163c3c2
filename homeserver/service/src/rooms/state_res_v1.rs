//! State resolution of room version 1, which ruma's `state_res` does not implement.
//!
//! Spec: https://spec.matrix.org/v1.19/rooms/v1/#state-resolution
//!
//! The resolved state `R` starts as the union of the states, leaving out conflicted keys (keys
//! for which the states that have them name different events; a key missing from some states
//! is not a conflict). Conflicts are then resolved in passes: `m.room.power_levels`, then
//! `m.room.join_rules`, then each `m.room.member` key. Each of those takes the candidates
//! in ascending depth and descending `sha1(event_id)`, puts the first in `R`, and keeps
//! replacing it with the next one for as long as the next one is allowed by the auth rules in
//! state `R`. Every other conflicted key gets the candidate of highest depth and lowest
//! `sha1(event_id)` that is allowed in `R` (when none is, the one of lowest depth, as other
//! servers do).

use std::collections::HashMap;

use ruma::{
    events::StateEventType,
    room_version_rules::AuthorizationRules,
    state_res::{check_state_dependent_auth_rules, StateMap},
    EventId, OwnedEventId,
};
use sha1::{Digest, Sha1};

use super::Pdu;

type Key = (StateEventType, String);

/// Resolves `maps` with the room version 1 algorithm. Candidates that cannot be fetched are
/// left out.
pub(crate) fn resolve(
    rules: &AuthorizationRules,
    maps: &[StateMap<OwnedEventId>],
    fetch: impl Fn(&EventId) -> Option<Pdu>,
) -> StateMap<OwnedEventId> {
    let mut candidates: HashMap<Key, Vec<OwnedEventId>> = HashMap::new();
    for map in maps {
        for (key, id) in map {
            let ids = candidates.entry(key.clone()).or_default();
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    let mut resolved: StateMap<OwnedEventId> = StateMap::new();
    let mut conflicted: HashMap<Key, Vec<Pdu>> = HashMap::new();
    for (key, ids) in candidates {
        if ids.len() == 1 {
            if let Some(id) = ids.into_iter().next() {
                resolved.insert(key, id);
            }
            continue;
        }
        let events: Vec<Pdu> = ids.iter().filter_map(|id| fetch(id)).collect();
        match events.len() {
            0 => {}
            1 => {
                if let Some(e) = events.into_iter().next() {
                    resolved.insert(key, e.event_id);
                }
            }
            _ => {
                conflicted.insert(key, events);
            }
        }
    }
    if conflicted.is_empty() {
        return resolved;
    }

    let allowed = |event: &Pdu, state: &StateMap<OwnedEventId>| -> bool {
        check_state_dependent_auth_rules(rules, event, |t: &StateEventType, k: &str| {
            state
                .get(&(t.clone(), k.to_owned()))
                .and_then(|id| fetch(id))
        })
        .is_ok()
    };

    // The passes over the events that affect authorization.
    let mut auth_keys: Vec<Key> = Vec::new();
    for kind in [
        StateEventType::RoomPowerLevels,
        StateEventType::RoomJoinRules,
    ] {
        auth_keys.extend(conflicted.keys().filter(|(t, _)| *t == kind).cloned());
    }
    let mut members: Vec<Key> = conflicted
        .keys()
        .filter(|(t, _)| *t == StateEventType::RoomMember)
        .cloned()
        .collect();
    members.sort();
    auth_keys.extend(members);
    for key in &auth_keys {
        let Some(mut events) = conflicted.remove(key) else {
            continue;
        };
        // Ascending depth, then descending sha1(event_id).
        events.sort_by(|a, b| {
            a.depth
                .cmp(&b.depth)
                .then_with(|| sha1_hex(&b.event_id).cmp(&sha1_hex(&a.event_id)))
        });
        let mut events = events.into_iter();
        let Some(first) = events.next() else {
            continue;
        };
        resolved.insert(key.clone(), first.event_id);
        for event in events {
            if !allowed(&event, &resolved) {
                break;
            }
            resolved.insert(key.clone(), event.event_id);
        }
    }

    // Everything else: the first allowed in descending depth, ascending sha1(event_id).
    let mut rest: Vec<(Key, Vec<Pdu>)> = conflicted.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, mut events) in rest {
        events.sort_by(|a, b| {
            b.depth
                .cmp(&a.depth)
                .then_with(|| sha1_hex(&a.event_id).cmp(&sha1_hex(&b.event_id)))
        });
        let chosen = events
            .iter()
            .find(|e| allowed(e, &resolved))
            .or_else(|| events.last())
            .map(|e| e.event_id.clone());
        if let Some(id) = chosen {
            resolved.insert(key, id);
        }
    }
    resolved
}

fn sha1_hex(id: &EventId) -> String {
    hex::encode(Sha1::digest(id.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use ruma::{room_version_rules::RoomVersionRules, MilliSecondsSinceUnixEpoch};
    use serde_json::json;

    use super::*;

    /// A PDU of a v1 room, for the resolution only (no signatures).
    fn pdu(
        id: &str,
        kind: &str,
        key: &str,
        sender: &str,
        depth: u64,
        content: serde_json::Value,
        auth: &[&str],
    ) -> Pdu {
        let v = json!({
            "room_id": "!r:a", "sender": sender, "type": kind, "state_key": key,
            "content": content, "origin_server_ts": 1, "depth": depth,
            "prev_events": [], "auth_events": auth.iter().map(|a| json!([a, {}])).collect::<Vec<_>>(),
        });
        let id = OwnedEventId::try_from(id).unwrap();
        let p = Pdu::from_json(id, &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(p.origin_server_ts, MilliSecondsSinceUnixEpoch(1u32.into()));
        p
    }

    fn key(t: &str, k: &str) -> Key {
        (StateEventType::from(t), k.to_owned())
    }

    /// A room of @a (creator, 100) and @b, where the two sides of a fork changed the name and
    /// where one side demoted @b and the other had @b (still a moderator there) change the
    /// power levels again.
    #[test]
    fn v1_resolution_passes_in_the_spec_order() {
        let rules = RoomVersionRules::V1.authorization;
        let events = vec![
            pdu(
                "$create:a",
                "m.room.create",
                "",
                "@a:a",
                1,
                json!({"creator": "@a:a"}),
                &[],
            ),
            pdu(
                "$ja:a",
                "m.room.member",
                "@a:a",
                "@a:a",
                2,
                json!({"membership": "join"}),
                &["$create:a"],
            ),
            pdu(
                "$pl1:a",
                "m.room.power_levels",
                "",
                "@a:a",
                3,
                json!({"users": {"@a:a": 100, "@b:a": 50}, "state_default": 50}),
                &["$create:a", "$ja:a"],
            ),
            pdu(
                "$jr:a",
                "m.room.join_rules",
                "",
                "@a:a",
                4,
                json!({"join_rule": "public"}),
                &["$create:a", "$ja:a", "$pl1:a"],
            ),
            pdu(
                "$jb:a",
                "m.room.member",
                "@b:a",
                "@b:a",
                5,
                json!({"membership": "join"}),
                &["$create:a", "$jr:a", "$pl1:a"],
            ),
            // Side 1: @a demotes @b, names the room.
            pdu(
                "$pl2:a",
                "m.room.power_levels",
                "",
                "@a:a",
                6,
                json!({"users": {"@a:a": 100}, "state_default": 50}),
                &["$create:a", "$ja:a", "$pl1:a"],
            ),
            pdu(
                "$name1:a",
                "m.room.name",
                "",
                "@a:a",
                7,
                json!({"name": "one"}),
                &["$create:a", "$ja:a", "$pl2:a"],
            ),
            // Side 2: @b (a moderator on that side) raises itself, names the room.
            pdu(
                "$pl3:a",
                "m.room.power_levels",
                "",
                "@b:a",
                7,
                json!({"users": {"@a:a": 100, "@b:a": 50, "@c:a": 10}, "state_default": 50}),
                &["$create:a", "$jb:a", "$pl1:a"],
            ),
            pdu(
                "$name2:a",
                "m.room.name",
                "",
                "@b:a",
                8,
                json!({"name": "two"}),
                &["$create:a", "$jb:a", "$pl3:a"],
            ),
        ];
        let fetch = |id: &EventId| events.iter().find(|e| e.event_id == id).cloned();
        let id = |s: &str| OwnedEventId::try_from(s).unwrap();
        let common = [
            (key("m.room.create", ""), id("$create:a")),
            (key("m.room.member", "@a:a"), id("$ja:a")),
            (key("m.room.join_rules", ""), id("$jr:a")),
            (key("m.room.member", "@b:a"), id("$jb:a")),
        ];
        let mut one: StateMap<OwnedEventId> = common.iter().cloned().collect();
        one.insert(key("m.room.power_levels", ""), id("$pl2:a"));
        one.insert(key("m.room.name", ""), id("$name1:a"));
        let mut two: StateMap<OwnedEventId> = common.iter().cloned().collect();
        two.insert(key("m.room.power_levels", ""), id("$pl3:a"));
        two.insert(key("m.room.name", ""), id("$name2:a"));

        let r = resolve(&rules, &[one.clone(), two.clone()], fetch);
        // Power levels: $pl2 (depth 6) first; $pl3 (depth 7) is by @b, who has no power
        // under $pl2: not allowed, so $pl2 stays.
        assert_eq!(r[&key("m.room.power_levels", "")], id("$pl2:a"));
        // Name: $name2 (deeper) is by @b, not allowed under $pl2; $name1 is.
        assert_eq!(r[&key("m.room.name", "")], id("$name1:a"));
        // Unconflicted keys are kept; the order of the states does not matter.
        assert_eq!(r[&key("m.room.member", "@b:a")], id("$jb:a"));
        assert_eq!(r, resolve(&rules, &[two, one], fetch));
    }

    /// Same depth: the power-levels pass starts from the larger sha1 and takes the other if
    /// allowed; a key only some states have is not a conflict.
    #[test]
    fn v1_ties_break_on_sha1_and_absent_keys_are_kept() {
        let rules = RoomVersionRules::V1.authorization;
        let events = [
            pdu(
                "$create:a",
                "m.room.create",
                "",
                "@a:a",
                1,
                json!({"creator": "@a:a"}),
                &[],
            ),
            pdu(
                "$ja:a",
                "m.room.member",
                "@a:a",
                "@a:a",
                2,
                json!({"membership": "join"}),
                &["$create:a"],
            ),
            pdu(
                "$x:a",
                "m.room.topic",
                "",
                "@a:a",
                3,
                json!({"topic": "x"}),
                &["$create:a", "$ja:a"],
            ),
            pdu(
                "$y:a",
                "m.room.topic",
                "",
                "@a:a",
                3,
                json!({"topic": "y"}),
                &["$create:a", "$ja:a"],
            ),
        ];
        let fetch = |id: &EventId| events.iter().find(|e| e.event_id == id).cloned();
        let id = |s: &str| OwnedEventId::try_from(s).unwrap();
        let base: StateMap<OwnedEventId> = [
            (key("m.room.create", ""), id("$create:a")),
            (key("m.room.member", "@a:a"), id("$ja:a")),
        ]
        .into_iter()
        .collect();
        let mut one = base.clone();
        one.insert(key("m.room.topic", ""), id("$x:a"));
        let mut two = base.clone();
        two.insert(key("m.room.topic", ""), id("$y:a"));
        two.insert(key("m.room.name", ""), id("$create:a"));
        let r = resolve(&rules, &[one, two], fetch);
        // Both allowed at the same depth: the lower sha1 wins.
        let lower = if sha1_hex(&id("$x:a")) < sha1_hex(&id("$y:a")) {
            "$x:a"
        } else {
            "$y:a"
        };
        assert_eq!(r[&key("m.room.topic", "")], id(lower));
        assert_eq!(r[&key("m.room.name", "")], id("$create:a"));
    }
}
