//! Polls (MSC3381, spec/polls.md): what a poll start says, the checks of a new one, the
//! tally of its responses, and the end this server sends for its own users' polls when their
//! closing time (`chat.paracord.poll.closes_at`) comes.
//!
//! The events are read with ruma's types, in both namings: the stable `m.poll.*` and the
//! unstable `org.matrix.msc3381.poll.*`. The tally follows the MSC: a user's latest response
//! (by `origin_server_ts`) is their vote, even when it is invalid; one naming an unknown
//! answer is spoiled (no vote); selections past `max_selections` are dropped; responses sent
//! after the first valid end (the poll's sender's, or someone's at the room's `redact`
//! level) are ignored.
//!
//! Closing: the [`PollCloser`] observer writes a row of `dueevent_pollroom` in the batch of a
//! local user's poll start that has a closing time, and deletes it in the batch of that
//! user's end of the poll, so a poll is never ended twice nor forgotten across a crash. The
//! [`PollTimer`] sleeps until the earliest row is due and then sends the end as the poll's
//! sender, through [`Rooms`] like any local event; after a restart, whatever came due while
//! the server was down goes out at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Weak},
    time::Duration,
};

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{key, Batch, Db, KeyBuf, Table};
use ruma::{
    events::poll::{
        end::{PollEndEventContent, PollResultsContentBlock},
        response::PollResponseEventContent,
        start::{PollKind, PollStartEventContent},
        unstable_end::UnstablePollEndEventContent,
        unstable_response::UnstablePollResponseEventContent,
        unstable_start::UnstablePollStartEventContent,
    },
    EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    rooms::{
        hooks::{EventObserver, FollowUp},
        notify::Notification,
        relations::relates_to,
        NewEvent, Pdu, Rooms,
    },
    stream::Stream,
};

/// The Paracord key of a poll start: `{"closes_at": ms}` (spec/polls.md §2).
pub const POLL_KEY: &str = "chat.paracord.poll";
/// Fewest and most answers a poll of a guild channel may have (Discord's 10; MSC3381 allows
/// 20, which readers accept from elsewhere).
pub const MIN_ANSWERS: usize = 2;
pub const MAX_ANSWERS: usize = 10;
/// The longest a poll may stay open: 32 days, as on Discord.
pub const MAX_DURATION_MS: u64 = 32 * 24 * 60 * 60 * 1000;
/// Most bytes of an answer id.
const MAX_ID_BYTES: usize = 100;
/// Most due polls the timer reads at once (it reads again until none is due).
const DUE_BATCH: usize = 64;
/// How long the timer waits after its storage failed before it tries again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Which poll event a type is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollEvent {
    Start,
    Response,
    End,
}

/// The poll event an event type names, in either naming.
pub fn poll_event(kind: &str) -> Option<PollEvent> {
    match kind {
        "m.poll.start" | "org.matrix.msc3381.poll.start" => Some(PollEvent::Start),
        "m.poll.response" | "org.matrix.msc3381.poll.response" => Some(PollEvent::Response),
        "m.poll.end" | "org.matrix.msc3381.poll.end" => Some(PollEvent::End),
        _ => None,
    }
}

/// One answer of a poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub id: String,
    pub text: String,
}

/// A poll, as its start event describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poll {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub question: String,
    pub answers: Vec<Answer>,
    /// `m.disclosed`, `m.undisclosed` or a custom kind (the unstable names are read as the
    /// stable ones).
    pub kind: String,
    pub max_selections: u64,
    /// When this server ends it (`chat.paracord.poll.closes_at`), if it says.
    pub closes_at: Option<u64>,
    /// Sent with the unstable type: its end uses the unstable type too.
    pub unstable: bool,
}

impl Poll {
    /// The poll a start event describes; `None` for anything else (another type, an edit, a
    /// redacted or malformed start).
    pub fn from_pdu(pdu: &Pdu) -> Option<Poll> {
        let kind = pdu.kind.to_string();
        let raw = pdu.content.get();
        let content: Value = serde_json::from_str(raw).ok()?;
        // An edit of a poll is no poll of its own.
        if relates_to(&content).is_some_and(|(rel, _, _)| rel == "m.replace") {
            return None;
        }
        let (question, answers, poll_kind, max, unstable) = match kind.as_str() {
            "m.poll.start" => {
                let poll = serde_json::from_str::<PollStartEventContent>(raw)
                    .ok()?
                    .poll;
                let answers = poll
                    .answers
                    .iter()
                    .map(|a| Answer {
                        id: a.id.clone(),
                        text: plain(a.text.find_plain(), a.text.first().map(|t| &*t.body)),
                    })
                    .collect();
                let question = plain(
                    poll.question.text.find_plain(),
                    poll.question.text.first().map(|t| &*t.body),
                );
                (question, answers, poll.kind, poll.max_selections, false)
            }
            "org.matrix.msc3381.poll.start" => {
                let c: UnstablePollStartEventContent = serde_json::from_str(raw).ok()?;
                let UnstablePollStartEventContent::New(c) = c else {
                    return None;
                };
                let poll = c.poll_start;
                let answers = poll
                    .answers
                    .iter()
                    .map(|a| Answer {
                        id: a.id.clone(),
                        text: a.text.clone(),
                    })
                    .collect();
                (
                    poll.question.text,
                    answers,
                    poll.kind,
                    poll.max_selections,
                    true,
                )
            }
            _ => return None,
        };
        Some(Poll {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone()?,
            sender: pdu.sender.clone(),
            question,
            answers,
            kind: poll_kind.as_str().to_owned(),
            max_selections: u64::from(max).max(1),
            closes_at: closes_at(&content),
            unstable,
        })
    }

    /// Whether counts are shown before the end: `m.disclosed` only (unknown kinds are read as
    /// `m.undisclosed`, MSC3381).
    pub fn disclosed(&self) -> bool {
        self.kind == PollKind::Disclosed.as_str()
    }
}

/// The plain text of a text block: its `text/plain` body, else its first.
fn plain(plain: Option<&str>, first: Option<&str>) -> String {
    plain.or(first).unwrap_or_default().to_owned()
}

/// `chat.paracord.poll.closes_at` of a start's content, when it is a non-negative integer.
pub fn closes_at(content: &Value) -> Option<u64> {
    content.get(POLL_KEY)?.get("closes_at")?.as_u64()
}

// ----- the checks of a new poll -----

fn bad_json(msg: impl Into<String>) -> Error {
    Error::bad_json(msg.into())
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid_param(msg.into())
}

/// A non-empty string at `field` of `obj`, for `what`.
fn text_field<'a>(obj: &'a Value, field: &str, what: &str) -> Result<&'a str> {
    match obj.get(field) {
        None => Err(bad_json(format!("{what} needs {field}"))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(format!("{what}'s {field} is empty")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad_json(format!("{what}'s {field} must be a string"))),
    }
}

/// A text block (MSC1767 `m.text`: an array of `{"body", "mimetype"?}`) at `field` of `obj`,
/// with a non-empty body.
fn text_block<'a>(obj: &'a Value, field: &str, what: &str) -> Result<&'a str> {
    let Some(block) = obj.get(field) else {
        return Err(bad_json(format!("{what} needs {field}")));
    };
    let Some(items) = block.as_array() else {
        return Err(bad_json(format!("{what}'s {field} must be an array")));
    };
    let mut first = None;
    for item in items {
        if !item.is_object() {
            return Err(bad_json(format!("{what}'s {field} must hold objects")));
        }
        let body = text_field(item, "body", &format!("{what}'s {field}"))?;
        first.get_or_insert(body);
    }
    first.ok_or_else(|| invalid(format!("{what}'s {field} is empty")))
}

/// Checks a new poll start of type `kind` sent at `ts` (spec/polls.md §1, §2): a fallback
/// text, a question, 2–10 answers with distinct non-empty ids and non-empty texts, a
/// `max_selections` between 1 and the number of answers, a kind that is a string, and a
/// closing time after `ts` and at most 32 days after it. A wrong type or a missing part is
/// `400 M_BAD_JSON`; a value out of range `400 M_INVALID_PARAM`.
pub fn check_start(kind: &str, content: &Value, ts: u64) -> Result<()> {
    let unstable = match kind {
        "m.poll.start" => false,
        "org.matrix.msc3381.poll.start" => true,
        _ => return Ok(()),
    };
    let (block_key, text_key, id_key) = if unstable {
        (
            "org.matrix.msc3381.poll.start",
            "org.matrix.msc1767.text",
            "id",
        )
    } else {
        ("m.poll", "m.text", "m.id")
    };
    let text = |obj: &Value, what: &str| -> Result<()> {
        if unstable {
            text_field(obj, text_key, what).map(drop)
        } else {
            text_block(obj, text_key, what).map(drop)
        }
    };
    if content
        .pointer("/m.relates_to/rel_type")
        .and_then(Value::as_str)
        == Some("m.replace")
    {
        // An edit of a poll: its new content is checked as a poll of its own.
        if let Some(new) = content.get("m.new_content") {
            return check_start(kind, new, ts);
        }
        return Ok(());
    }
    text(content, "the poll")?;
    let Some(poll) = content.get(block_key) else {
        return Err(bad_json(format!("{kind} needs {block_key}")));
    };
    if !poll.is_object() {
        return Err(bad_json(format!("{block_key} must be an object")));
    }
    match poll.get("question") {
        Some(q) if q.is_object() => text(q, "the question")?,
        Some(_) => return Err(bad_json("the question must be an object")),
        None => return Err(bad_json(format!("{block_key} needs a question"))),
    }
    let answers = match poll.get("answers") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad_json("answers must be an array")),
        None => return Err(bad_json(format!("{block_key} needs answers"))),
    };
    if !(MIN_ANSWERS..=MAX_ANSWERS).contains(&answers.len()) {
        return Err(invalid(format!(
            "a poll has {MIN_ANSWERS} to {MAX_ANSWERS} answers, not {}",
            answers.len()
        )));
    }
    let mut ids = BTreeSet::new();
    for answer in answers {
        if !answer.is_object() {
            return Err(bad_json("each answer must be an object"));
        }
        let id = text_field(answer, id_key, "an answer")?;
        if id.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "an answer's {id_key} is longer than {MAX_ID_BYTES} bytes"
            )));
        }
        if !ids.insert(id) {
            return Err(invalid(format!("two answers have the {id_key} {id:?}")));
        }
        text(answer, "an answer")?;
    }
    match poll.get("kind") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(bad_json("kind must be a string")),
    }
    match poll.get("max_selections") {
        None => {}
        Some(v) if v.is_i64() || v.is_u64() => {
            let n = v.as_i64().unwrap_or(i64::MAX);
            if n < 1 || n > answers.len() as i64 {
                return Err(invalid(format!(
                    "max_selections must be between 1 and the number of answers ({}), not {n}",
                    answers.len()
                )));
            }
        }
        Some(_) => return Err(bad_json("max_selections must be an integer")),
    }
    match content.get(POLL_KEY) {
        None => {}
        Some(p) if p.is_object() => match p.get("closes_at") {
            None => return Err(bad_json(format!("{POLL_KEY} needs closes_at"))),
            Some(v) if v.is_i64() || v.is_u64() => {
                let at = v.as_i64().unwrap_or(i64::MAX);
                let latest = ts.saturating_add(MAX_DURATION_MS);
                if at <= 0 || (at as u64) <= ts || (at as u64) > latest {
                    return Err(invalid(format!(
                        "closes_at must be after the poll is sent ({ts}) and at most 32 days later ({latest}), not {at}"
                    )));
                }
            }
            Some(_) => {
                return Err(bad_json(
                    "closes_at must be an integer (ms since the epoch)",
                ))
            }
        },
        Some(_) => return Err(bad_json(format!("{POLL_KEY} must be an object"))),
    }
    Ok(())
}

// ----- the tally -----

/// One response to a poll, as the tally reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub sender: OwnedUserId,
    pub ts: u64,
    /// The answers it names; `None` when it cannot be read (a spoiled vote).
    pub selections: Option<Vec<String>>,
}

/// The end of a poll that counts: the first valid one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ended {
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    /// Its `origin_server_ts`: responses sent after it do not count.
    pub ts: u64,
}

/// The counted votes: each voter's counted answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Votes {
    /// Voters whose latest response counts, with the answers it counts for (never empty).
    pub by_user: BTreeMap<OwnedUserId, Vec<String>>,
}

impl Votes {
    /// Votes per answer, in the poll's order.
    pub fn counts(&self, poll: &Poll) -> Vec<(String, u64)> {
        poll.answers
            .iter()
            .map(|a| {
                let n = self.by_user.values().filter(|s| s.contains(&a.id)).count();
                (a.id.clone(), n as u64)
            })
            .collect()
    }
}

/// Counts `responses` (in arrival order) to `poll`, ended at `end` (ms) if it has ended
/// (MSC3381): only responses sent at or before the end; each sender's latest response by
/// `origin_server_ts` (of two at the same time, the later to arrive); a response naming an
/// answer the poll does not have is spoiled and counts as no vote, as does one that cannot be
/// read; past `max_selections` selections are dropped, and repeats count once.
pub fn count(poll: &Poll, responses: &[Response], end: Option<u64>) -> Votes {
    let ids: BTreeSet<&str> = poll.answers.iter().map(|a| a.id.as_str()).collect();
    let mut latest: BTreeMap<&UserId, &Response> = BTreeMap::new();
    for r in responses {
        if end.is_some_and(|end| r.ts > end) {
            continue;
        }
        match latest.get(&*r.sender) {
            Some(prev) if prev.ts > r.ts => {}
            _ => {
                latest.insert(&r.sender, r);
            }
        }
    }
    let max = usize::try_from(poll.max_selections).unwrap_or(usize::MAX);
    let mut votes = Votes::default();
    for (user, r) in latest {
        let Some(selections) = &r.selections else {
            continue;
        };
        if selections.iter().any(|s| !ids.contains(s.as_str())) {
            continue;
        }
        let mut counted: Vec<String> = Vec::new();
        for s in selections.iter().take(max) {
            if !counted.contains(s) {
                counted.push(s.clone());
            }
        }
        if !counted.is_empty() {
            votes.by_user.insert(user.to_owned(), counted);
        }
    }
    votes
}

/// The selections of a response event; `None` when it cannot be read.
fn selections(pdu: &Pdu) -> Option<Vec<String>> {
    let raw = pdu.content.get();
    match pdu.kind.to_string().as_str() {
        "m.poll.response" => serde_json::from_str::<PollResponseEventContent>(raw)
            .ok()
            .map(|c| c.selections.to_vec()),
        "org.matrix.msc3381.poll.response" => {
            serde_json::from_str::<UnstablePollResponseEventContent>(raw)
                .ok()
                .map(|c| c.poll_response.answers)
        }
        _ => None,
    }
}

/// A poll with its counted votes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub poll: Poll,
    pub votes: Votes,
    pub ended: Option<Ended>,
}

/// Reads a poll and its responses and ends from the room (the events related to its start by
/// `m.reference` that this server has accepted; redacted ones are gone from the index, so a
/// redacted response reverts its sender to their previous vote). An end counts when its
/// sender is the poll's or has the room's `redact` level; the first one by
/// `origin_server_ts` ends the poll.
pub fn tally(rooms: &Rooms, poll: Poll) -> Result<Tally> {
    let Some(short) = rooms.short_id(&poll.event_id)? else {
        return Err(Error::not_found("no such poll"));
    };
    let state = rooms.current_state(&poll.room_id)?;
    let version = rooms.room_or_404(&poll.room_id)?.version;
    let redact = rooms.required_level(&state, "redact", 50)?;
    let mut responses = Vec::new();
    let mut ended: Option<Ended> = None;
    for (_, child) in rooms.children(short, Some("m.reference"))? {
        let Some(pdu) = rooms.pdu_by_short(child)? else {
            continue;
        };
        if pdu.room_id.as_deref() != Some(&*poll.room_id) {
            continue;
        }
        let ts = u64::from(pdu.origin_server_ts.get());
        match poll_event(&pdu.kind.to_string()) {
            Some(PollEvent::Response) => responses.push(Response {
                selections: selections(&pdu),
                sender: pdu.sender,
                ts,
            }),
            Some(PollEvent::End) => {
                if ended.as_ref().is_some_and(|e| e.ts <= ts) {
                    continue;
                }
                let valid = pdu.sender == poll.sender
                    || rooms.power_level(&version, &state, &pdu.sender)? >= redact;
                if valid {
                    ended = Some(Ended {
                        event_id: pdu.event_id.clone(),
                        sender: pdu.sender,
                        ts,
                    });
                }
            }
            _ => {}
        }
    }
    let votes = count(&poll, &responses, ended.as_ref().map(|e| e.ts));
    Ok(Tally { poll, votes, ended })
}

/// The content of the end this server sends for `tally`'s poll: a reference to the start, a
/// fallback text naming the top answers and, in the stable naming, `m.poll.results`.
pub fn end_content(tally: &Tally) -> Result<(&'static str, Value)> {
    let counts = tally.votes.counts(&tally.poll);
    let top = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let text = if top == 0 {
        "The poll has closed with no votes.".to_owned()
    } else {
        let best: Vec<&str> = tally
            .poll
            .answers
            .iter()
            .zip(&counts)
            .filter(|(_, (_, n))| *n == top)
            .map(|(a, _)| a.text.as_str())
            .collect();
        let noun = if best.len() == 1 {
            "Top answer"
        } else {
            "Top answers"
        };
        format!("The poll has closed. {noun}: {}", best.join(", "))
    };
    let start = tally.poll.event_id.clone();
    if tally.poll.unstable {
        let content = UnstablePollEndEventContent::new(text, start);
        return Ok((
            "org.matrix.msc3381.poll.end",
            serde_json::to_value(content)?,
        ));
    }
    let mut content = PollEndEventContent::with_plain_text(text, start);
    content.poll_results = Some(PollResultsContentBlock::from_iter(
        counts
            .into_iter()
            .map(|(id, n)| (id, UInt::try_from(n).unwrap_or(UInt::MAX))),
    ));
    Ok(("m.poll.end", serde_json::to_value(content)?))
}

// ----- closing polls at their time -----

key! {
    /// The key of `dueevent_pollroom`: `closes_at (ms) event_id`. Keys sort by closing time,
    /// so the timer's next poll is the first key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct DueKey<'a> {
        due: u64,
        event_id: last_str,
    }
}

/// The first key of `dueevent_pollroom` past every poll due by `now`.
fn due_upper_bound(now: u64) -> Vec<u8> {
    KeyBuf::new().u64(now.saturating_add(1)).into_vec()
}

/// The start a poll event relates to (`m.reference`).
fn start_of(content: &Value) -> Option<OwnedEventId> {
    relates_to(content)
        .filter(|(rel, _, _)| rel == "m.reference")
        .map(|(_, target, _)| target)
}

/// The observer that keeps `dueevent_pollroom`: a row in the batch of a local user's poll
/// start with a closing time, its deletion in the batch of that user's end of it; and, once
/// such a start is written, a wake-up of the timer.
pub struct PollCloser {
    server_name: String,
    rooms: Weak<Rooms>,
    wake: Arc<tokio::sync::Notify>,
}

impl PollCloser {
    /// The observer of this server's polls, waking the [`PollTimer`] through `wake`.
    pub fn new(server_name: String, rooms: Weak<Rooms>, wake: Arc<tokio::sync::Notify>) -> Self {
        Self {
            server_name,
            rooms,
            wake,
        }
    }

    /// The closing time of a local user's poll start.
    fn closing(&self, pdu: &Pdu) -> Option<u64> {
        if pdu.sender.server_name().as_str() != self.server_name {
            return None;
        }
        if poll_event(&pdu.kind.to_string()) != Some(PollEvent::Start) {
            return None;
        }
        let content: Value = serde_json::from_str(pdu.content.get()).ok()?;
        // An edit does not move the closing time of the poll it edits.
        if relates_to(&content).is_some_and(|(rel, _, _)| rel == "m.replace") {
            return None;
        }
        closes_at(&content)
    }
}

impl EventObserver for PollCloser {
    fn index(&self, batch: &mut Batch, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        if let Some(due) = self.closing(pdu) {
            batch.put(
                Table::DueeventPollroom,
                DueKey {
                    due,
                    event_id: pdu.event_id.as_str(),
                }
                .encode(),
                room_id.as_bytes().to_vec(),
            );
            return Ok(());
        }
        if poll_event(&pdu.kind.to_string()) != Some(PollEvent::End) {
            return Ok(());
        }
        let Some(rooms) = self.rooms.upgrade() else {
            return Ok(());
        };
        let Some(start) = start_of(&pdu.content_value()) else {
            return Ok(());
        };
        let Some(start) = rooms.pdu(&start)? else {
            return Ok(());
        };
        if start.sender != pdu.sender {
            return Ok(());
        }
        if let Some(due) = self.closing(&start) {
            batch.delete(
                Table::DueeventPollroom,
                DueKey {
                    due,
                    event_id: start.event_id.as_str(),
                }
                .encode(),
            );
        }
        Ok(())
    }

    fn committed(
        &self,
        _rooms: &Arc<Rooms>,
        _room_id: &RoomId,
        pdu: &Pdu,
        _notifications: &[Notification],
    ) -> Option<FollowUp> {
        if self.closing(pdu).is_some() {
            self.wake.notify_one();
        }
        None
    }
}

/// The timer that ends this server's users' polls at their closing time.
pub struct PollTimer {
    db: Arc<Db>,
    rooms: Arc<Rooms>,
    wake: Arc<tokio::sync::Notify>,
}

impl PollTimer {
    pub fn new(db: Arc<Db>, rooms: Arc<Rooms>, wake: Arc<tokio::sync::Notify>) -> Self {
        Self { db, rooms, wake }
    }

    /// Spawns the timer on the current tokio runtime (it stops when the server shuts down).
    pub fn start(self: &Arc<Self>, stream: Arc<Stream>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!("the poll timer was started outside a tokio runtime");
            return;
        };
        let me = self.clone();
        handle.spawn(async move {
            let shutdown = stream.notifier().shutting_down();
            tokio::pin!(shutdown);
            loop {
                let wait = match me.end_due().await {
                    Ok(Some(next)) => Some(Duration::from_millis(next.saturating_sub(now_ms()))),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!("cannot end due polls: {e}");
                        Some(RETRY_AFTER_FAILURE)
                    }
                };
                let sleep = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = me.wake.notified() => {}
                    () = sleep => {}
                }
            }
        });
    }

    /// Ends every poll that is due, the earliest first; returns when the next one is due
    /// (`None`: none is waiting).
    async fn end_due(&self) -> Result<Option<u64>> {
        loop {
            let due = self.db.scan(
                Table::DueeventPollroom,
                &[],
                &[],
                Some(&due_upper_bound(now_ms())),
                false,
                DUE_BATCH,
            )?;
            if due.is_empty() {
                let next = self
                    .db
                    .scan(Table::DueeventPollroom, &[], &[], None, false, 1)?;
                return match next.first() {
                    Some((key, _)) => Ok(Some(DueKey::decode(key)?.due)),
                    None => Ok(None),
                };
            }
            for (key, room) in &due {
                let key = DueKey::decode(key)?;
                if let Err(e) = self.end_one(key.event_id, room).await {
                    tracing::info!(event_id = key.event_id, error = %e, "a poll could not be ended at its closing time");
                }
                // Ended (the end's batch deleted the row already), ended by someone before,
                // or impossible to end: the row goes either way.
                let mut batch = Batch::new();
                batch.delete(Table::DueeventPollroom, key.encode());
                self.db.write(batch)?;
            }
        }
    }

    /// Sends the end of the poll `event_id` as its sender, unless it has ended already.
    async fn end_one(&self, event_id: &str, room: &[u8]) -> Result<()> {
        let room = std::str::from_utf8(room)
            .ok()
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| Error::internal("a poll timer row names no room"))?;
        let event_id = <&EventId>::try_from(event_id)
            .map_err(|_| Error::internal("a poll timer row names no event"))?;
        let Some(pdu) = self.rooms.pdu(event_id)? else {
            return Err(Error::not_found("the poll is gone"));
        };
        let Some(poll) = Poll::from_pdu(&pdu).filter(|p| p.room_id == room) else {
            return Err(Error::not_found("the event is no poll (redacted?)"));
        };
        let tally = tally(&self.rooms, poll)?;
        if tally.ended.is_some() {
            return Ok(());
        }
        let (kind, content) = end_content(&tally)?;
        self.rooms
            .append(
                &room,
                &tally.poll.sender,
                NewEvent::message(kind.into(), content),
            )
            .await
            .map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(id: &str) -> OwnedUserId {
        OwnedUserId::try_from(id).unwrap()
    }

    fn poll(max_selections: u64) -> Poll {
        Poll {
            event_id: OwnedEventId::try_from("$start").unwrap(),
            room_id: OwnedRoomId::try_from("!room:localhost").unwrap(),
            sender: user("@alice:localhost"),
            question: "Lunch?".into(),
            answers: ["pizza", "sushi", "tacos"]
                .iter()
                .map(|id| Answer {
                    id: (*id).into(),
                    text: id.to_uppercase(),
                })
                .collect(),
            kind: "m.disclosed".into(),
            max_selections,
            closes_at: None,
            unstable: false,
        }
    }

    fn vote(sender: &str, ts: u64, selections: &[&str]) -> Response {
        Response {
            sender: user(sender),
            ts,
            selections: Some(selections.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn counts(votes: &Votes, p: &Poll) -> Vec<u64> {
        votes.counts(p).into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn only_each_users_latest_response_counts() {
        let p = poll(1);
        let responses = [
            vote("@bob:localhost", 10, &["pizza"]),
            vote("@carol:localhost", 11, &["sushi"]),
            // Bob changes his mind; an older response arriving later does not undo it.
            vote("@bob:localhost", 20, &["tacos"]),
            vote("@bob:localhost", 15, &["sushi"]),
        ];
        let votes = count(&p, &responses, None);
        assert_eq!(counts(&votes, &p), [0, 1, 1]);
        assert_eq!(votes.by_user[&user("@bob:localhost")], ["tacos"]);
        // Of two at the same time, the later to arrive.
        let same = [
            vote("@bob:localhost", 10, &["pizza"]),
            vote("@bob:localhost", 10, &["sushi"]),
        ];
        assert_eq!(counts(&count(&p, &same, None), &p), [0, 1, 0]);
    }

    #[test]
    fn an_invalid_latest_response_spoils_the_vote() {
        let p = poll(1);
        let unknown = [
            vote("@bob:localhost", 10, &["pizza"]),
            vote("@bob:localhost", 11, &["pizza", "burgers"]),
        ];
        assert_eq!(counts(&count(&p, &unknown, None), &p), [0, 0, 0]);
        let unreadable = [
            vote("@bob:localhost", 10, &["pizza"]),
            Response {
                sender: user("@bob:localhost"),
                ts: 11,
                selections: None,
            },
        ];
        assert!(count(&p, &unreadable, None).by_user.is_empty());
        // An empty selection takes a vote back.
        let unvote = [
            vote("@bob:localhost", 10, &["pizza"]),
            vote("@bob:localhost", 11, &[]),
        ];
        assert!(count(&p, &unvote, None).by_user.is_empty());
    }

    #[test]
    fn selections_past_the_maximum_are_dropped_and_repeats_count_once() {
        let one = poll(1);
        let responses = [vote("@bob:localhost", 10, &["sushi", "pizza"])];
        assert_eq!(counts(&count(&one, &responses, None), &one), [0, 1, 0]);
        let two = poll(2);
        let responses = [
            vote("@bob:localhost", 10, &["sushi", "pizza", "tacos"]),
            vote("@carol:localhost", 10, &["tacos", "tacos"]),
        ];
        let votes = count(&two, &responses, None);
        assert_eq!(counts(&votes, &two), [1, 1, 1]);
        assert_eq!(votes.by_user[&user("@carol:localhost")], ["tacos"]);
    }

    #[test]
    fn responses_after_the_end_are_ignored() {
        let p = poll(1);
        let responses = [
            vote("@bob:localhost", 10, &["pizza"]),
            vote("@carol:localhost", 30, &["sushi"]),
            // At the end's very time still counts; Bob's change after it does not.
            vote("@dave:localhost", 20, &["sushi"]),
            vote("@bob:localhost", 21, &["tacos"]),
        ];
        assert_eq!(counts(&count(&p, &responses, Some(20)), &p), [1, 1, 0]);
        assert_eq!(counts(&count(&p, &responses, None), &p), [0, 2, 1]);
    }

    fn stable(answers: Value) -> Value {
        json!({
            "m.text": [{ "body": "Lunch?\n1. Pizza\n2. Sushi" }],
            "m.poll": {
                "kind": "m.disclosed",
                "max_selections": 1,
                "question": { "m.text": [{ "body": "Lunch?" }] },
                "answers": answers,
            },
        })
    }

    fn answers(n: usize) -> Value {
        (0..n)
            .map(|i| json!({ "m.id": format!("a{i}"), "m.text": [{ "body": format!("A{i}") }] }))
            .collect()
    }

    #[track_caller]
    fn refused(r: Result<()>, errcode: &str) {
        let e = r.expect_err("expected a refusal");
        let (status, body) = e.classify();
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], errcode, "{body}");
    }

    #[test]
    fn a_new_poll_has_two_to_ten_distinct_answers_and_a_sane_maximum() {
        let ok = |c: &Value| check_start("m.poll.start", c, 1_000);
        ok(&stable(answers(2))).unwrap();
        ok(&stable(answers(10))).unwrap();
        refused(ok(&stable(answers(1))), "M_INVALID_PARAM");
        refused(ok(&stable(answers(11))), "M_INVALID_PARAM");
        let mut dup = stable(answers(3));
        dup["m.poll"]["answers"][2]["m.id"] = json!("a0");
        refused(ok(&dup), "M_INVALID_PARAM");
        let mut empty = stable(answers(3));
        empty["m.poll"]["answers"][1]["m.text"] = json!([{ "body": " " }]);
        refused(ok(&empty), "M_INVALID_PARAM");
        let mut no_question = stable(answers(3));
        no_question["m.poll"]["question"]["m.text"] = json!([]);
        refused(ok(&no_question), "M_INVALID_PARAM");
        for (max, errcode) in [
            (json!(0), "M_INVALID_PARAM"),
            (json!(4), "M_INVALID_PARAM"),
            (json!("1"), "M_BAD_JSON"),
        ] {
            let mut c = stable(answers(3));
            c["m.poll"]["max_selections"] = max;
            refused(ok(&c), errcode);
        }
        let mut c = stable(answers(3));
        c["m.poll"]["max_selections"] = json!(3);
        ok(&c).unwrap();
        refused(ok(&json!({ "m.text": [{ "body": "x" }] })), "M_BAD_JSON");
        let mut no_fallback = stable(answers(2));
        no_fallback.as_object_mut().unwrap().remove("m.text");
        refused(ok(&no_fallback), "M_BAD_JSON");
    }

    #[test]
    fn unstable_polls_are_checked_the_same_way() {
        let c = |n: usize| {
            json!({
                "org.matrix.msc1767.text": "Lunch?",
                "org.matrix.msc3381.poll.start": {
                    "kind": "org.matrix.msc3381.poll.undisclosed",
                    "question": { "org.matrix.msc1767.text": "Lunch?" },
                    "answers": (0..n).map(|i| json!({ "id": format!("a{i}"), "org.matrix.msc1767.text": "x" })).collect::<Vec<_>>(),
                },
            })
        };
        let check = |v: &Value| check_start("org.matrix.msc3381.poll.start", v, 1_000);
        check(&c(2)).unwrap();
        refused(check(&c(11)), "M_INVALID_PARAM");
        let mut dup = c(2);
        dup["org.matrix.msc3381.poll.start"]["answers"][1]["id"] = json!("a0");
        refused(check(&dup), "M_INVALID_PARAM");
    }

    #[test]
    fn the_closing_time_is_after_the_start_and_at_most_32_days_later() {
        let at = |v: Value| {
            let mut c = stable(answers(2));
            c[POLL_KEY] = v;
            check_start("m.poll.start", &c, 1_000)
        };
        at(json!({ "closes_at": 1_001 })).unwrap();
        at(json!({ "closes_at": 1_000 + MAX_DURATION_MS })).unwrap();
        refused(at(json!({ "closes_at": 1_000 })), "M_INVALID_PARAM");
        refused(
            at(json!({ "closes_at": 1_001 + MAX_DURATION_MS })),
            "M_INVALID_PARAM",
        );
        refused(at(json!({ "closes_at": "soon" })), "M_BAD_JSON");
        refused(at(json!({})), "M_BAD_JSON");
        refused(at(json!(5)), "M_BAD_JSON");
    }

    /// The JSON examples of spec/polls.md: every start passes the checks of a new poll (sent
    /// a minute before it closes), and the end the server sends for the stable example's
    /// tally is the end example.
    #[test]
    fn the_spec_examples_are_what_the_server_checks_and_sends() {
        let text = include_str!("../../../spec/polls.md");
        let mut starts = 0;
        let mut end = None;
        for block in text.split("```json").skip(1) {
            let json = block.split("```").next().unwrap();
            let v: Value = serde_json::from_str(json).unwrap();
            let kind = v["type"].as_str().unwrap_or_default();
            match poll_event(kind) {
                Some(PollEvent::Start) => {
                    let at = closes_at(&v["content"]).unwrap();
                    check_start(kind, &v["content"], at - 60_000).unwrap();
                    starts += 1;
                }
                Some(PollEvent::End) => end = Some(v),
                _ => {}
            }
        }
        assert_eq!(starts, 2, "both namings have an example");
        let end = end.expect("an example of an end");
        let mut p = poll(1);
        p.event_id = OwnedEventId::try_from("$poll_start").unwrap();
        p.answers = ["Pizza", "Sushi", "Tacos"]
            .iter()
            .map(|t| Answer {
                id: t.to_lowercase(),
                text: (*t).into(),
            })
            .collect();
        let votes = count(
            &p,
            &[
                vote("@bob:localhost", 1, &["pizza"]),
                vote("@carol:localhost", 1, &["sushi"]),
                vote("@dave:localhost", 1, &["sushi"]),
            ],
            None,
        );
        let (kind, content) = end_content(&Tally {
            poll: p,
            votes,
            ended: None,
        })
        .unwrap();
        assert_eq!(end["type"], kind);
        assert_eq!(end["content"], content);
    }

    #[test]
    fn the_end_names_the_top_answers_and_carries_the_results() {
        let p = poll(1);
        let votes = count(
            &p,
            &[
                vote("@bob:localhost", 1, &["sushi"]),
                vote("@carol:localhost", 1, &["tacos"]),
            ],
            None,
        );
        let tally = Tally {
            poll: p,
            votes,
            ended: None,
        };
        let (kind, content) = end_content(&tally).unwrap();
        assert_eq!(kind, "m.poll.end");
        assert_eq!(
            content["m.relates_to"],
            json!({ "rel_type": "m.reference", "event_id": "$start" })
        );
        assert_eq!(
            content["m.text"][0]["body"],
            "The poll has closed. Top answers: SUSHI, TACOS"
        );
        assert_eq!(
            content["m.poll.results"],
            json!({ "pizza": 0, "sushi": 1, "tacos": 1 })
        );
        let unstable = Tally {
            poll: Poll {
                unstable: true,
                ..tally.poll.clone()
            },
            ..tally
        };
        let (kind, content) = end_content(&unstable).unwrap();
        assert_eq!(kind, "org.matrix.msc3381.poll.end");
        assert_eq!(content["org.matrix.msc3381.poll.end"], json!({}));
        assert!(content["org.matrix.msc1767.text"]
            .as_str()
            .unwrap()
            .starts_with("The poll has closed."));
    }
}
