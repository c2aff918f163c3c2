//! Push-rule evaluation: which local members an event notifies, stored in the event's batch so
//! unread counts and `/notifications` never disagree with the timeline.

use std::collections::BTreeMap;

use ruma::{
    power_levels::NotificationPowerLevels,
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
    Int, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};

use paracord_core::{time::now_ms, Result};
use paracord_storage::{Batch, Table};

use super::{
    keys::{HighlightKey, NotificationKey},
    rules_for, Rooms, StateMap,
};

/// `(notification_count, highlight_count)`.
pub type Counts = (u64, u64);

/// One notification for one user.
#[derive(Debug, Clone)]
pub struct Notification {
    pub user: OwnedUserId,
    pub highlight: bool,
    pub actions: Vec<Action>,
    /// Short id of the thread root, for an event in a thread.
    pub thread_root: Option<u64>,
}

impl Rooms {
    fn power_levels_ctx(
        &self,
        version: &str,
        state: &StateMap,
    ) -> Result<Option<PushConditionPowerLevelsCtx>> {
        let Some(pl) = self.state_content(state, "m.room.power_levels", "")? else {
            return Ok(None);
        };
        let mut users = BTreeMap::new();
        if let Some(map) = pl["users"].as_object() {
            for (u, level) in map {
                if let (Ok(u), Some(l)) =
                    (OwnedUserId::try_from(u.as_str()), super::json_int(level))
                {
                    users.insert(u, Int::try_from(l).unwrap_or_default());
                }
            }
        }
        let users_default =
            Int::try_from(pl["users_default"].as_i64().unwrap_or(0)).unwrap_or_default();
        let notifications: NotificationPowerLevels =
            serde_json::from_value(pl["notifications"].clone()).unwrap_or_default();
        let rules = rules_for(version)?;
        let creators: Vec<OwnedUserId> =
            self.state_pdu(state, "m.room.create", "")?
                .map(|c| {
                    let mut v = vec![c.sender.clone()];
                    if let Some(extra) = c.content_value()["additional_creators"].as_array() {
                        v.extend(extra.iter().filter_map(|u| {
                            u.as_str().and_then(|u| OwnedUserId::try_from(u).ok())
                        }));
                    }
                    v
                })
                .unwrap_or_default();
        Ok(Some(PushConditionPowerLevelsCtx::new(
            users,
            users_default,
            notifications,
            RoomPowerLevelsRules::new(&rules.authorization, creators),
        )))
    }

    /// Evaluates every joined local member's push rules (the sender's excepted) for a new event
    /// against the state after it.
    pub(crate) fn evaluate_push(
        &self,
        room_id: &RoomId,
        version: &str,
        state: &StateMap,
        sender: &UserId,
        client_event: &Value,
    ) -> Result<Vec<Notification>> {
        let Some(account_data) = &self.account_data else {
            return Ok(vec![]);
        };
        let members = self.shared_members(room_id)?;
        let member_count = UInt::try_from(members.joined.len() as u64).unwrap_or_default();
        let pl_ctx = self.power_levels_ctx(version, state)?;
        let raw: Raw<ruma::events::AnySyncTimelineEvent> = super::pdu::raw(client_event);
        // Flattened once for every member: ruma's `get_actions` would flatten the event again
        // for each of them.
        let event = FlattenedJson::from_raw(&raw);
        let thread_root = match super::relations::relates_to(&client_event["content"]) {
            Some((rel, root, _)) if rel == "m.thread" => self.short_id(&root)?,
            _ => None,
        };
        let mut out = Vec::new();
        for user in &members.joined {
            if user == sender || user.server_name() != self.config.server_name.as_str() {
                continue;
            }
            let display_name = self
                .display_name_in(state, user)?
                .unwrap_or_else(|| user.localpart().to_owned());
            let mut ctx = PushConditionRoomCtx::new(
                room_id.to_owned(),
                member_count,
                user.clone(),
                display_name,
            );
            if let Some(p) = &pl_ctx {
                ctx = ctx.with_power_levels(p.clone());
            }
            let rules = account_data.push_rules(user)?;
            let Some(actions) = first_match(&rules, &event, &ctx) else {
                continue;
            };
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            let highlight = actions.iter().any(Action::is_highlight);
            out.push(Notification {
                user: user.clone(),
                highlight,
                actions: actions.to_vec(),
                thread_root,
            });
        }
        Ok(out)
    }

    /// The `displayname` of `user`'s member event in `state`, when it is a string.
    fn display_name_in(&self, state: &StateMap, user: &UserId) -> Result<Option<String>> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow, default)]
            displayname: Option<std::borrow::Cow<'a, str>>,
        }
        let Some(short) = state.get(&("m.room.member".to_owned(), user.as_str().to_owned())) else {
            return Ok(None);
        };
        let Some(pdu) = self.shared_pdu(*short)? else {
            return Ok(None);
        };
        Ok(serde_json::from_str::<Named<'_>>(pdu.content.get())
            .ok()
            .and_then(|n| n.displayname)
            .map(std::borrow::Cow::into_owned))
    }

    /// Adds the notifications of the event at `pos` to its batch.
    pub(crate) fn write_notifications(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        event_id: &str,
        pos: u64,
        notes: &[Notification],
    ) -> Result<()> {
        for n in notes {
            let record = json!({
                "room_id": room_id, "event_id": event_id, "highlight": n.highlight,
                "actions": n.actions, "ts": now_ms(),
            });
            batch.put(
                Table::UserposNotification,
                NotificationKey {
                    user_id: n.user.as_str(),
                    pos,
                }
                .encode(),
                serde_json::to_vec(&record)?,
            );
            batch.put(
                Table::UserroomposHighlight,
                HighlightKey {
                    user_id: n.user.as_str(),
                    room_id: room_id.as_str(),
                    pos,
                }
                .encode(),
                {
                    // highlight flag, then the thread root's short id for threaded events
                    let mut v = vec![u8::from(n.highlight)];
                    if let Some(root) = n.thread_root {
                        v.extend_from_slice(&root.to_be_bytes());
                    }
                    v
                },
            );
        }
        Ok(())
    }

    /// `(notification_count, highlight_count)` of a room for a user: notifications after
    /// stream position `read_pos` (their read receipt).
    pub fn unread_counts(&self, user: &UserId, room_id: &RoomId, read_pos: u64) -> Result<Counts> {
        let (main, threads) =
            self.unread_counts_by_thread(user, room_id, read_pos, read_pos, |_| read_pos)?;
        Ok(threads
            .values()
            .fold(main, |(n, h), (tn, th)| (n + tn, h + th)))
    }

    /// Unread counts split by thread: `(main timeline, per thread root)`. Rows after
    /// `unthreaded_read` are looked at; the main timeline counts after `main_read`, a thread
    /// after `thread_read(root)`.
    pub fn unread_counts_by_thread(
        &self,
        user: &UserId,
        room_id: &RoomId,
        unthreaded_read: u64,
        main_read: u64,
        thread_read: impl Fn(u64) -> u64,
    ) -> Result<(Counts, BTreeMap<u64, Counts>)> {
        let prefix = HighlightKey::prefix(user.as_str(), room_id.as_str());
        let lower = HighlightKey {
            user_id: user.as_str(),
            room_id: room_id.as_str(),
            pos: unthreaded_read.saturating_add(1),
        }
        .encode();
        let rows = self.db.scan(
            Table::UserroomposHighlight,
            &prefix,
            &lower,
            None,
            false,
            usize::MAX,
        )?;
        let mut main = (0, 0);
        let mut threads: BTreeMap<u64, Counts> = BTreeMap::new();
        for (k, v) in rows {
            let pos = HighlightKey::decode(&k)?.pos;
            let highlight = u64::from(v.first() == Some(&1));
            let root = v
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            match root {
                Some(root) if pos > thread_read(root) => {
                    let e = threads.entry(root).or_default();
                    e.0 += 1;
                    e.1 += highlight;
                }
                None if pos > main_read => {
                    main.0 += 1;
                    main.1 += highlight;
                }
                _ => {}
            }
        }
        Ok((main, threads))
    }

    /// `/notifications`: newest first from `from` (exclusive), at most `limit`; with the read
    /// state of each from `read_pos_of`.
    pub fn notifications(
        &self,
        user: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
        read_pos_of: impl Fn(&RoomId) -> u64,
    ) -> Result<(Vec<Value>, Option<u64>)> {
        let prefix = NotificationKey::prefix(user.as_str());
        let upper = from.map(|pos| {
            NotificationKey {
                user_id: user.as_str(),
                pos,
            }
            .encode()
        });
        let rows = self.db.scan(
            Table::UserposNotification,
            &prefix,
            &prefix,
            upper.as_deref(),
            true,
            10_000,
        )?;
        let mut out = Vec::new();
        let mut next = None;
        for (k, v) in rows {
            let pos = NotificationKey::decode(&k)?.pos;
            let rec: Value = serde_json::from_slice(&v)?;
            if only_highlight && rec["highlight"] != true {
                continue;
            }
            if out.len() >= limit {
                next = Some(pos.saturating_add(1));
                break;
            }
            let Ok(room_id) =
                ruma::OwnedRoomId::try_from(rec["room_id"].as_str().unwrap_or_default())
            else {
                continue;
            };
            let reader = super::timeline::Reader { user, device: None };
            let Ok(event_id) =
                ruma::OwnedEventId::try_from(rec["event_id"].as_str().unwrap_or_default())
            else {
                continue;
            };
            let Ok((_, _, event)) = self.visible_event(reader, Some(&room_id), &event_id) else {
                continue;
            };
            out.push(json!({
                "room_id": room_id,
                "event": event,
                "actions": rec["actions"],
                "ts": rec["ts"],
                "read": pos <= read_pos_of(&room_id),
            }));
        }
        Ok((out, next))
    }
}

/// The actions of the first rule of `rules` that applies to the flattened event, as ruma's
/// `Ruleset::get_actions` finds them (the sender is skipped by the caller).
fn first_match<'a>(
    rules: &'a Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<&'a [Action]> {
    // No condition here awaits anything: ruma's evaluation is async only for optional
    // thread-subscription lookups, which are not configured.
    futures::executor::block_on(async {
        for rule in rules {
            if rule.applies(event, ctx).await {
                return Some(rule.actions());
            }
        }
        None
    })
}
