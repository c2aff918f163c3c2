//! Relations: reactions, edits, replies in threads and references; their index, the rules a
//! new relation must follow, bundled aggregations and the `/relations` and `/threads` reads.

use ruma::{EventId, OwnedEventId, RoomId};
use serde_json::{json, Value};

use paracord_core::{Error, ErrorKind, Result};
use paracord_storage::{key::decode_u64, Batch, Table};

use super::{
    keys::{AnnotationKey, RelationKey, ThreadKey},
    timeline::{Dir, Reader, Sight},
    Pdu, Rooms,
};

/// Most edits, and most thread replies, that bundling an event's aggregations reads.
pub const MAX_BUNDLE_SCAN: usize = 1_000;
/// Most `m.reference` event ids bundled with an event (the newest).
pub const MAX_BUNDLED_REFERENCES: usize = 100;

/// A new event's relation, checked and ready to index.
#[derive(Debug, Clone)]
pub struct Relation {
    pub target_short: u64,
    pub rel_type: String,
    /// The thread root this event extends (for `m.thread`).
    pub thread_root: Option<u64>,
    /// `(key, sender)` of an annotation (a reaction).
    pub annotation: Option<(String, String)>,
}

/// The key of an annotation in `targetkeysender_pos` (for the tests, which build rows).
#[cfg(test)]
fn annotation_key(target_short: u64, key: &str, sender: &str) -> Vec<u8> {
    AnnotationKey {
        target: target_short,
        key,
        sender,
    }
    .encode()
}

/// `(rel_type, target, annotation key)` of an event's `m.relates_to`.
pub fn relates_to(content: &Value) -> Option<(String, OwnedEventId, Option<String>)> {
    let rel = content.get("m.relates_to")?;
    let rel_type = rel.get("rel_type")?.as_str()?.to_owned();
    let target = OwnedEventId::try_from(rel.get("event_id")?.as_str()?).ok()?;
    let key = rel.get("key").and_then(|k| k.as_str()).map(str::to_owned);
    Some((rel_type, target, key))
}

/// The key of a relation in `targetrelpos_shorteventid` (for the tests, which build rows).
#[cfg(test)]
fn index_key(target_short: u64, rel_type: &str, pos: u64) -> Vec<u8> {
    RelationKey {
        target: target_short,
        rel_type,
        pos,
    }
    .encode()
}

fn bad(msg: &str) -> Error {
    Error::invalid_param(msg)
}

/// One child in the index: `(rel_type, child short id)`.
type Child = (String, u64);

impl Rooms {
    /// The thread an event is in: the root of the `m.thread` relation reached by following
    /// its relations up to 3 hops (spec: threading), `None` for the main timeline.
    pub fn thread_of(&self, event_id: &EventId) -> Result<Option<OwnedEventId>> {
        let mut current = event_id.to_owned();
        for _ in 0..3 {
            let Some(pdu) = self.pdu(&current)? else {
                return Ok(None);
            };
            match relates_to(&pdu.content_value()) {
                Some((rel, target, _)) if rel == "m.thread" => return Ok(Some(target)),
                Some((_, target, _)) => current = target,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Whether `event_id` is the root of a thread (some event starts or extends a thread
    /// from it).
    pub fn is_thread_root(&self, event_id: &EventId) -> Result<bool> {
        match self.short_id(event_id)? {
            Some(short) => Ok(!self.children(short, Some("m.thread"))?.is_empty()),
            None => Ok(false),
        }
    }

    /// Checks the `thread_id` of a receipt for `event_id` (spec: 400 when it is empty, not a
    /// thread root or `main`, or `event_id` is not related to that thread).
    pub fn check_receipt_thread(&self, event_id: &EventId, thread_id: &str) -> Result<()> {
        if thread_id.is_empty() {
            return Err(bad("thread_id must be a non-empty string"));
        }
        let in_thread = self.thread_of(event_id)?;
        if thread_id == "main" {
            return match in_thread {
                None => Ok(()),
                Some(_) => Err(bad("the event is in a thread, not in the main timeline")),
            };
        }
        let root = OwnedEventId::try_from(thread_id)
            .map_err(|_| bad("thread_id must be \"main\" or a thread root's event id"))?;
        if !self.is_thread_root(&root)? {
            return Err(bad("thread_id is not the root of a thread"));
        }
        if event_id != root
            && in_thread.as_deref() != Some(&*root)
            && !self.relates_up_to(event_id, &root)?
        {
            return Err(bad("the event is not related to that thread"));
        }
        Ok(())
    }

    /// Whether following `event_id`'s relations (up to 3 hops, as for threads) leads to
    /// `target`: an annotation of a reference to a thread root is "related to" that thread
    /// (spec: a receipt's `event_id` must be related to its `thread_id`), though it is shown
    /// in the main timeline.
    fn relates_up_to(&self, event_id: &EventId, target: &EventId) -> Result<bool> {
        let mut current = event_id.to_owned();
        for _ in 0..3 {
            let Some(pdu) = self.pdu(&current)? else {
                return Ok(false);
            };
            match relates_to(&pdu.content_value()) {
                Some((_, next, _)) if next == target => return Ok(true),
                Some((_, next, _)) => current = next,
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Checks the relation a new event declares, if any.
    pub(crate) fn check_relation(&self, room_id: &RoomId, pdu: &Pdu) -> Result<Option<Relation>> {
        if pdu.kind == ruma::events::TimelineEventType::RoomRedaction {
            return Ok(None);
        }
        let content = pdu.content_value();
        let Some((rel_type, target_id, key)) = relates_to(&content) else {
            return Ok(None);
        };
        let target_short = self
            .short_id(&target_id)?
            .ok_or_else(|| bad("the related event is not known"))?;
        let target_meta = self
            .meta(target_short)?
            .ok_or_else(|| bad("the related event is not known"))?;
        if target_meta.room_id != room_id {
            return Err(bad("the related event is in another room"));
        }
        let target = self
            .pdu_by_short(target_short)?
            .ok_or_else(|| bad("the related event is not known"))?;
        let target_rel = relates_to(&target.content_value());
        let mut thread_root = None;
        let mut annotation = None;
        match rel_type.as_str() {
            "m.annotation" => {
                let key = key.ok_or_else(|| bad("an annotation needs a key"))?;
                // Issue 15: one read of the index, however many reactions the event has.
                if self.db.exists(
                    Table::TargetkeysenderPos,
                    &AnnotationKey {
                        target: target_short,
                        key: &key,
                        sender: pdu.sender.as_str(),
                    }
                    .encode(),
                )? {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ErrorKind::DuplicateAnnotation,
                        "you already reacted with this key",
                    ));
                }
                annotation = Some((key, pdu.sender.to_string()));
            }
            // An invalid replacement (another sender, another type, a state event, an edit of
            // an edit) is not refused: the spec has servers ignore it when they aggregate
            // edits (`aggregations`), as other servers will have sent such events too.
            "m.replace" => {}
            "m.thread" => {
                if target_rel.is_some() {
                    return Err(bad(
                        "a thread cannot start from an event that has a relation",
                    ));
                }
                thread_root = Some(target_short);
            }
            _ => {}
        }
        Ok(Some(Relation {
            target_short,
            rel_type,
            thread_root,
            annotation,
        }))
    }

    /// Adds a related event to the index.
    pub(crate) fn index_relation(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        rel: &Relation,
        pos: u64,
    ) -> Result<()> {
        batch.put(
            Table::TargetrelposShorteventid,
            RelationKey {
                target: rel.target_short,
                rel_type: &rel.rel_type,
                pos,
            }
            .encode(),
            pos.to_be_bytes().to_vec(),
        );
        if rel.rel_type == "m.thread" {
            self.add_to_thread_count(batch, rel.target_short, 1)?;
        }
        if let Some((key, sender)) = &rel.annotation {
            batch.put(
                Table::TargetkeysenderPos,
                AnnotationKey {
                    target: rel.target_short,
                    key,
                    sender,
                }
                .encode(),
                pos.to_be_bytes().to_vec(),
            );
        }
        if let Some(root) = rel.thread_root {
            batch.put(
                Table::RoomthreadLatest,
                ThreadKey {
                    room_id: room_id.as_str(),
                    root,
                }
                .encode(),
                pos.to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }

    /// Changes the count of a thread's replies by `delta` (in the same batch as the index
    /// row; the room's lock serializes the read and the write).
    fn add_to_thread_count(&self, batch: &mut Batch, root: u64, delta: i64) -> Result<()> {
        let key = root.to_be_bytes();
        let current = match batch.pending(Table::RootThreadcount, &key) {
            Some(v) => v.map(<[u8]>::to_vec),
            None => self.db.get(Table::RootThreadcount, &key)?,
        };
        let current = current.map(|v| decode_u64(&v)).transpose()?.unwrap_or(0);
        let next = current.saturating_add_signed(delta);
        batch.put(
            Table::RootThreadcount,
            key.to_vec(),
            next.to_be_bytes().to_vec(),
        );
        Ok(())
    }

    /// How many replies a thread has in the index (visible to anyone or not).
    fn thread_count(&self, root: u64) -> Result<u64> {
        Ok(self
            .db
            .get(Table::RootThreadcount, &root.to_be_bytes())?
            .map(|v| decode_u64(&v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Removes a redacted event from the index (its relation is gone with its content).
    pub(crate) fn unindex_relation(
        &self,
        batch: &mut Batch,
        original: &Value,
        pos: u64,
    ) -> Result<()> {
        if let Some((rel_type, target, key)) = relates_to(&original["content"]) {
            if let Some(target_short) = self.short_id(&target)? {
                let row = RelationKey {
                    target: target_short,
                    rel_type: &rel_type,
                    pos,
                }
                .encode();
                // Counted once: a second redaction of the same event finds no row.
                if rel_type == "m.thread" {
                    let indexed = match batch.pending(Table::TargetrelposShorteventid, &row) {
                        Some(v) => v.is_some(),
                        None => self.db.exists(Table::TargetrelposShorteventid, &row)?,
                    };
                    if indexed {
                        self.add_to_thread_count(batch, target_short, -1)?;
                    }
                }
                batch.delete(Table::TargetrelposShorteventid, row);
                if let (Some(key), Some(sender)) = (key, original["sender"].as_str()) {
                    if rel_type == "m.annotation" {
                        batch.delete(
                            Table::TargetkeysenderPos,
                            AnnotationKey {
                                target: target_short,
                                key: &key,
                                sender,
                            }
                            .encode(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether an event has an annotation (a reaction) with `key`: one that is in the
    /// timeline and not redacted (redactions and soft-failed events are not in the index).
    pub(crate) fn has_annotation(&self, target_short: u64, key: &str) -> Result<bool> {
        // Issue 15: one row of the index, however many reactions the event has.
        let prefix = AnnotationKey::key_prefix(target_short, key);
        Ok(!self
            .db
            .scan(Table::TargetkeysenderPos, &prefix, &prefix, None, false, 1)?
            .is_empty())
    }

    /// Fills the annotation index (`targetkeysender_pos`) from the relation index, once, for
    /// databases written before it existed. Returns how many annotations it indexed.
    pub fn migrate_annotation_index(&self) -> Result<usize> {
        crate::migrations::once(&self.db, b"annotation_index_v1", || {
            let mut rows = Vec::new();
            self.db
                .for_each_prefix(Table::TargetrelposShorteventid, b"", usize::MAX, |k, v| {
                    let Ok((target, rel)) = RelationKey::decode_target_rel(k) else {
                        return Ok(());
                    };
                    if rel == "m.annotation" {
                        if let Ok(short) = decode_u64(v) {
                            rows.push((target, short));
                        }
                    }
                    Ok(())
                })?;
            let mut batch = Batch::new();
            let mut count = 0;
            for (target, short) in rows {
                let Some(p) = self.pdu_by_short(short)? else {
                    continue;
                };
                if let Some((_, _, Some(key))) = relates_to(&p.content_value()) {
                    batch.put(
                        Table::TargetkeysenderPos,
                        AnnotationKey {
                            target,
                            key: &key,
                            sender: p.sender.as_str(),
                        }
                        .encode(),
                        short.to_be_bytes().to_vec(),
                    );
                    count += 1;
                }
            }
            self.db.write(batch)?;
            Ok(count)
        })
    }

    /// Counts the replies of every thread (`root_threadcount`) from the relation index, once,
    /// for databases written before the count existed. Returns how many threads it counted.
    pub fn migrate_thread_counts(&self) -> Result<usize> {
        crate::migrations::once(&self.db, b"thread_count_v1", || {
            let mut counts: std::collections::BTreeMap<u64, u64> = Default::default();
            self.db
                .for_each_prefix(Table::TargetrelposShorteventid, b"", usize::MAX, |k, _| {
                    if let Ok((target, "m.thread")) = RelationKey::decode_target_rel(k) {
                        *counts.entry(target).or_default() += 1;
                    }
                    Ok(())
                })?;
            let mut batch = Batch::new();
            for (root, n) in &counts {
                batch.put(
                    Table::RootThreadcount,
                    root.to_be_bytes().to_vec(),
                    n.to_be_bytes().to_vec(),
                );
            }
            self.db.write(batch)?;
            Ok(counts.len())
        })
    }

    /// Whether a thread has started from `root` (an `m.thread` event has been indexed).
    pub(crate) fn thread_started(&self, room_id: &RoomId, root_short: u64) -> Result<bool> {
        Ok(self.db.exists(
            Table::RoomthreadLatest,
            &ThreadKey {
                room_id: room_id.as_str(),
                root: root_short,
            }
            .encode(),
        )?)
    }

    /// Children of an event, oldest first, optionally of one relation type.
    pub fn children(&self, target_short: u64, rel_type: Option<&str>) -> Result<Vec<Child>> {
        let prefix = match rel_type {
            Some(r) => RelationKey::rel_prefix(target_short, r),
            None => RelationKey::prefix(target_short),
        };
        let mut out = Vec::new();
        for (k, v) in self
            .db
            .scan_prefix(Table::TargetrelposShorteventid, &prefix)?
        {
            let (_, rel) = RelationKey::decode_target_rel(&k)?;
            out.push((rel.to_owned(), decode_u64(&v)?));
        }
        Ok(out)
    }

    /// The newest `limit` children of an event of one relation type, newest first.
    fn newest_children(&self, target_short: u64, rel_type: &str, limit: usize) -> Result<Vec<u64>> {
        let prefix = RelationKey::rel_prefix(target_short, rel_type);
        let mut out = Vec::new();
        for (_, v) in self.db.scan(
            Table::TargetrelposShorteventid,
            &prefix,
            &prefix,
            None,
            true,
            limit,
        )? {
            out.push(decode_u64(&v)?);
        }
        Ok(out)
    }

    /// The `unsigned.m.relations` of an event for a reader: the latest edit, the thread
    /// summary and the references, each made of the related events the reader may see (a
    /// user who left sees none sent after their leave).
    ///
    /// Issue 15: the work is bounded whatever the event's relations. Only the three bundled
    /// relation types are read, each from its own part of the index, so reactions
    /// (`m.annotation`, possibly 100,000 of them) are never touched; at most
    /// [`MAX_BUNDLE_SCAN`] edits are looked at for the newest valid one, the thread's newest
    /// [`MAX_BUNDLE_SCAN`] replies are read, and at most [`MAX_BUNDLED_REFERENCES`]
    /// references are listed (the newest).
    pub(crate) fn aggregations(
        &self,
        target_short: u64,
        original_sender: &str,
        original_type: &str,
        reader: Reader<'_>,
    ) -> Result<Option<Value>> {
        let edits = self.newest_children(target_short, "m.replace", MAX_BUNDLE_SCAN)?;
        let thread_newest = self.newest_children(target_short, "m.thread", MAX_BUNDLE_SCAN)?;
        let mut references =
            self.newest_children(target_short, "m.reference", MAX_BUNDLED_REFERENCES)?;
        references.reverse();
        if edits.is_empty() && thread_newest.is_empty() && references.is_empty() {
            return Ok(None);
        }
        // Issue 15: every related event is judged for this reader.
        let mut sight = Sight::new(self, reader.user);
        let mut out = serde_json::Map::new();
        // The newest valid edit the reader may see, in full (`edits` is newest first). The
        // original must be a plain event that is not itself an edit.
        let original_editable = !edits.is_empty()
            && self.pdu_by_short(target_short)?.is_some_and(|o| {
                o.state_key.is_none()
                    && relates_to(&o.content_value()).is_none_or(|r| r.0 != "m.replace")
            });
        if original_editable {
            for edit in edits.iter().copied() {
                let Some(p) = self.pdu_by_short(edit)? else {
                    continue;
                };
                let valid = p.sender.as_str() == original_sender
                    && p.kind.to_string() == original_type
                    && p.state_key.is_none();
                if !valid || !sight.sees(edit)? {
                    continue;
                }
                if let Some((_, ev)) = self.client_event_plain(edit, Some(reader))? {
                    out.insert("m.replace".into(), ev);
                }
                break;
            }
        }
        // The thread's newest replies the reader may see (newest first). A longer thread is
        // counted by its reply count, less the scanned replies the reader may not see (older
        // replies are seen by whoever sees newer ones, history being read up to a point).
        let mut visible_thread = Vec::with_capacity(thread_newest.len());
        for child in thread_newest.iter().copied() {
            if sight.sees(child)? {
                visible_thread.push(child);
            }
        }
        let thread_count = if thread_newest.len() < MAX_BUNDLE_SCAN {
            visible_thread.len() as u64
        } else {
            self.thread_count(target_short)?
                .saturating_sub((thread_newest.len() - visible_thread.len()) as u64)
        };
        if let Some(newest) = visible_thread.first() {
            let mut participated = original_sender == reader.user.as_str();
            for c in &visible_thread {
                if participated {
                    break;
                }
                participated = self
                    .pdu_by_short(*c)?
                    .is_some_and(|p| p.sender == reader.user);
            }
            if let Some((_, ev)) = self.client_event_plain(*newest, Some(reader))? {
                out.insert(
                    "m.thread".into(),
                    json!({ "latest_event": ev, "count": thread_count, "current_user_participated": participated }),
                );
            }
        }
        let mut chunk = Vec::new();
        for r in references {
            if !sight.sees(r)? {
                continue;
            }
            if let Some(m) = self.meta(r)? {
                chunk.push(json!({ "event_id": m.event_id }));
            }
        }
        if !chunk.is_empty() {
            out.insert("m.reference".into(), json!({ "chunk": chunk }));
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }

    /// The newest reply in the thread from `root` that the reader may see: `indexed` (the
    /// newest of all) when they may see it, else found by walking the thread back.
    fn latest_visible_reply(
        &self,
        sight: &mut Sight<'_>,
        root: u64,
        indexed: u64,
    ) -> Result<Option<u64>> {
        if sight.sees(indexed)? {
            return Ok(Some(indexed));
        }
        for (_, child) in self.children(root, Some("m.thread"))?.into_iter().rev() {
            if sight.sees(child)? {
                return Ok(Some(child));
            }
        }
        Ok(None)
    }

    /// `/relations`: events relating to `target`, newest first by default, with tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn relations(
        &self,
        reader: Reader<'_>,
        room_id: &RoomId,
        target: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
        dir: Dir,
        limit: usize,
        recurse: bool,
    ) -> Result<(Vec<Value>, Option<u64>, u32)> {
        let (target_short, _, _) = self.visible_event(reader, Some(room_id), target)?;
        // Collect (pos, child) up to three levels deep when recursing.
        let max_depth = if recurse { 3 } else { 1 };
        let mut found: Vec<u64> = Vec::new();
        let mut frontier = vec![target_short];
        let mut depth = 0;
        while depth < max_depth && !frontier.is_empty() {
            depth += 1;
            let mut next = Vec::new();
            for t in frontier {
                for (rel, child) in self.children(t, None)? {
                    if rel_type.is_none_or(|r| r == rel) {
                        found.push(child);
                    }
                    next.push(child);
                }
            }
            frontier = next;
        }
        found.sort_unstable();
        found.dedup();
        if dir == Dir::Backward {
            found.reverse();
        }
        let mut chunk = Vec::new();
        let mut next = None;
        for pos in found {
            let in_range = match dir {
                Dir::Backward => from.is_none_or(|f| pos <= f) && to.is_none_or(|t| pos > t),
                Dir::Forward => from.is_none_or(|f| pos > f) && to.is_none_or(|t| pos <= t),
            };
            if !in_range {
                continue;
            }
            let Some((meta, ev)) = self.client_event(pos, Some(reader))? else {
                continue;
            };
            if event_type.is_some_and(|t| ev["type"].as_str() != Some(t))
                || !self.can_see(reader.user, &meta)?
            {
                continue;
            }
            if chunk.len() >= limit {
                next = Some(match dir {
                    Dir::Backward => pos,
                    Dir::Forward => pos.saturating_sub(1),
                });
                break;
            }
            chunk.push(ev);
        }
        Ok((chunk, next, depth))
    }

    /// `/threads`: thread roots of a room, most recently active first.
    pub fn threads(
        &self,
        reader: Reader<'_>,
        room_id: &RoomId,
        participated_only: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>)> {
        let prefix = ThreadKey::prefix(room_id.as_str());
        let mut roots: Vec<(u64, u64)> = Vec::new();
        for (k, v) in self.db.scan_prefix(Table::RoomthreadLatest, &prefix)? {
            let root = ThreadKey::decode(&k)?.root;
            roots.push((decode_u64(&v)?, root));
        }
        // Issue 15: a thread is listed, and ordered, by the newest reply the reader may see;
        // one with none (started after the reader left) is not listed.
        let mut sight = Sight::new(self, reader.user);
        let mut visible_roots = Vec::with_capacity(roots.len());
        for (latest, root) in roots {
            if let Some(latest) = self.latest_visible_reply(&mut sight, root, latest)? {
                visible_roots.push((latest, root));
            }
        }
        let mut roots = visible_roots;
        roots.sort_unstable_by(|a, b| b.cmp(a));
        let mut chunk = Vec::new();
        let mut next = None;
        for (latest, root) in roots {
            if from.is_some_and(|f| latest > f) {
                continue;
            }
            let Some((meta, ev)) = self.client_event(root, Some(reader))? else {
                continue;
            };
            if !self.can_see(reader.user, &meta)? {
                continue;
            }
            if participated_only
                && !ev["unsigned"]["m.relations"]["m.thread"]["current_user_participated"]
                    .as_bool()
                    .unwrap_or(false)
            {
                continue;
            }
            if chunk.len() >= limit {
                next = Some(latest);
                break;
            }
            chunk.push(ev);
        }
        Ok((chunk, next))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use ruma::OwnedUserId;

    use super::*;
    use crate::{
        rooms::{
            create::{CreateRoom, Preset},
            NewEvent,
        },
        Services,
    };

    /// A server on a fresh data directory and a private room of @alice there.
    pub(crate) async fn private_room(
    ) -> (tempfile::TempDir, Services, OwnedUserId, ruma::OwnedRoomId) {
        let (dir, s) = crate::rooms::tests::services();
        let alice = OwnedUserId::try_from("@alice:localhost").unwrap();
        let room = s
            .rooms
            .create_room(
                &alice,
                CreateRoom {
                    preset: Some(Preset::PrivateChat),
                    ..CreateRoom::default()
                },
            )
            .await
            .unwrap();
        (dir, s, alice, room)
    }

    /// `sender` sends an `m.room.message` with `content` to `room`.
    pub(crate) async fn send_message(
        s: &Services,
        room: &RoomId,
        sender: &ruma::UserId,
        content: Value,
    ) -> OwnedEventId {
        s.rooms
            .append(
                room,
                sender,
                NewEvent::message("m.room.message".into(), content),
            )
            .await
            .unwrap()
    }

    // Issue 15: bundling an event's aggregations does not read its reactions, however many:
    // 10,000 annotation rows that cannot even be decoded are never touched, and the edit and
    // the capped references still come out.
    #[tokio::test]
    async fn bundling_skips_reactions_and_caps_references() {
        let (_dir, s, alice, room) = private_room().await;
        let send = |content: Value| send_message(&s, &room, &alice, content);
        let target = send(json!({ "body": "hello", "msgtype": "m.text" })).await;
        let target_short = s.rooms.short_id(&target).unwrap().unwrap();
        let edit = send(json!({
            "body": "* hi", "msgtype": "m.text",
            "m.new_content": { "body": "hi", "msgtype": "m.text" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": target },
        }))
        .await;
        let references = MAX_BUNDLED_REFERENCES + 3;
        for n in 0..references {
            send(json!({
                "body": format!("see {n}"), "msgtype": "m.text",
                "m.relates_to": { "rel_type": "m.reference", "event_id": target },
            }))
            .await;
        }
        let mut batch = Batch::new();
        for pos in 0..10_000u64 {
            batch.put(
                Table::TargetrelposShorteventid,
                index_key(target_short, "m.annotation", pos),
                b"not a short id".to_vec(),
            );
        }
        s.db.write(batch).unwrap();
        let reader = Reader {
            user: &alice,
            device: None,
        };
        let bundle = s
            .rooms
            .aggregations(target_short, alice.as_str(), "m.room.message", reader)
            .unwrap()
            .unwrap();
        assert_eq!(bundle["m.replace"]["event_id"], edit.as_str());
        let chunk = bundle["m.reference"]["chunk"].as_array().unwrap();
        assert_eq!(chunk.len(), MAX_BUNDLED_REFERENCES);
    }

    // Issue 15 item 14: a reaction's duplicate check and `has_annotation` read one row of the
    // annotation index, however many reactions the event has (10,000 undecodable rows of the
    // relation index are never touched); redacting a reaction frees its key; databases from
    // before the index get it filled once.
    #[tokio::test]
    async fn reactions_are_checked_through_the_annotation_index() {
        let (_dir, s, alice, room) = private_room().await;
        let send = |kind: &'static str, content: Value| {
            let (s, room, alice) = (&s, room.clone(), alice.clone());
            async move {
                s.rooms
                    .append(&room, &alice, NewEvent::message(kind.into(), content))
                    .await
            }
        };
        let target = send(
            "m.room.message",
            json!({ "body": "hi", "msgtype": "m.text" }),
        )
        .await
        .unwrap();
        let target_short = s.rooms.short_id(&target).unwrap().unwrap();
        let mut batch = Batch::new();
        for pos in 0..10_000u64 {
            batch.put(
                Table::TargetrelposShorteventid,
                index_key(target_short, "m.annotation", 1_000_000 + pos),
                b"not a short id".to_vec(),
            );
        }
        s.db.write(batch).unwrap();
        let react = || json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": "👍" } });
        assert!(!s.rooms.has_annotation(target_short, "👍").unwrap());
        let first = send("m.reaction", react()).await.unwrap();
        assert!(s.rooms.has_annotation(target_short, "👍").unwrap());
        assert!(!s.rooms.has_annotation(target_short, "👎").unwrap());
        let again = send("m.reaction", react()).await.unwrap_err();
        assert!(matches!(again.kind(), Some(ErrorKind::DuplicateAnnotation)));

        // A database from before the index: its entries are filled again at start.
        let key = annotation_key(target_short, "👍", alice.as_str());
        let mut batch = Batch::new();
        batch.delete(Table::TargetkeysenderPos, key.clone());
        batch.delete(Table::GlobalValue, b"annotation_index_v1".to_vec());
        s.db.write(batch).unwrap();
        assert!(!s.rooms.has_annotation(target_short, "👍").unwrap());
        assert_eq!(s.rooms.migrate_annotation_index().unwrap(), 1);
        assert!(s.rooms.has_annotation(target_short, "👍").unwrap());

        // Redacted, the reaction's key is free again.
        let mut redaction = NewEvent::message("m.room.redaction".into(), json!({}));
        redaction.redacts = Some(first.clone());
        s.rooms.append(&room, &alice, redaction).await.unwrap();
        assert!(!s.rooms.has_annotation(target_short, "👍").unwrap());
        send("m.reaction", react()).await.unwrap();
    }

    // Issue 15 item 14: a long thread's reply count is a counter kept with the index, not a
    // walk of the thread's index rows: 50,000 extra rows do not change it (nor cost a read);
    // a redacted reply leaves it (once); a database from before the counter gets it at start.
    #[tokio::test]
    async fn thread_counts_are_kept_not_walked() {
        let (_dir, s, alice, room) = private_room().await;
        let send = |content: Value| send_message(&s, &room, &alice, content);
        let root = send(json!({ "body": "root", "msgtype": "m.text" })).await;
        let root_short = s.rooms.short_id(&root).unwrap().unwrap();
        let replies = MAX_BUNDLE_SCAN + 5;
        let mut first = None;
        for n in 0..replies {
            let id = send(json!({
                "body": format!("reply {n}"), "msgtype": "m.text",
                "m.relates_to": { "rel_type": "m.thread", "event_id": root },
            }))
            .await;
            first.get_or_insert(id);
        }
        let reader = Reader {
            user: &alice,
            device: None,
        };
        let count = || {
            s.rooms
                .aggregations(root_short, alice.as_str(), "m.room.message", reader)
                .unwrap()
                .unwrap()["m.thread"]["count"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(count(), replies as u64);
        // Rows under the thread's prefix, older than every reply (position 0, before the
        // room existed, and a suffix): a walk of the thread's rows would count them.
        let junk = |n: u32| {
            [
                index_key(root_short, "m.thread", 0),
                n.to_be_bytes().to_vec(),
            ]
            .concat()
        };
        let mut batch = Batch::new();
        for n in 0..50_000 {
            batch.put(Table::TargetrelposShorteventid, junk(n), b"junk".to_vec());
        }
        s.db.write(batch).unwrap();
        assert_eq!(count(), replies as u64);

        for _ in 0..2 {
            let mut redaction = NewEvent::message("m.room.redaction".into(), json!({}));
            redaction.redacts = first.clone();
            s.rooms.append(&room, &alice, redaction).await.unwrap();
            assert_eq!(count(), replies as u64 - 1);
        }

        let mut batch = Batch::new();
        batch.delete(Table::RootThreadcount, root_short.to_be_bytes().to_vec());
        batch.delete(Table::GlobalValue, b"thread_count_v1".to_vec());
        for n in 0..50_000 {
            batch.delete(Table::TargetrelposShorteventid, junk(n));
        }
        s.db.write(batch).unwrap();
        assert_eq!(s.rooms.migrate_thread_counts().unwrap(), 1);
        assert_eq!(count(), replies as u64 - 1);
    }
}
