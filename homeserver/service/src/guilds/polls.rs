//! A poll of a channel as `GET /_paracord/v1/channels/{channelId}/polls/{eventId}` shows it
//! (spec/polls.md §4): the poll, its counts from the latest valid response of each member,
//! whether and by whom it ended, and the requester's own selection. Answered by the
//! requester's server from the events it holds, like every read (spec/rest.md §3).

use paracord_core::{Error, Result};
use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;

use super::channels::check_viewer;
use crate::{
    polls::{tally, Answer, Ended, Poll},
    rooms::{timeline::Reader, Rooms},
};

/// A poll and its tally, for one requester.
#[derive(Clone, Debug, Serialize)]
pub struct PollView {
    pub event_id: OwnedEventId,
    pub channel_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub question: String,
    pub answers: Vec<Answer>,
    pub kind: String,
    pub max_selections: u64,
    pub closes_at: Option<u64>,
    pub ended: bool,
    /// The end that counts: its event, sender and time.
    pub ended_by: Option<Ended>,
    /// How many members' votes count.
    pub voters: u64,
    /// Votes per answer id; `null` for an undisclosed poll before it ends, except to its
    /// sender.
    pub counts: Option<serde_json::Map<String, serde_json::Value>>,
    /// The requester's counted selection (empty: no vote).
    pub my_selections: Vec<String>,
}

fn no_poll() -> Error {
    Error::not_found("no such poll")
}

/// The poll `event_id` of channel `channel_id` for `user`, who must see the channel and the
/// event (history visibility and READ_MESSAGE_HISTORY, as for `/messages`); anything else is
/// `404`.
pub fn channel_poll(
    rooms: &Rooms,
    channel_id: &RoomId,
    user: &UserId,
    event_id: &EventId,
) -> Result<PollView> {
    check_viewer(rooms, channel_id, user)?;
    let reader = Reader { user, device: None };
    let (short, meta, _) = rooms
        .visible_event(reader, Some(channel_id), event_id)
        .map_err(|_| no_poll())?;
    if meta.hidden || meta.rejected || meta.outlier {
        return Err(no_poll());
    }
    let pdu = rooms.pdu_by_short(short)?.ok_or_else(no_poll)?;
    let poll = Poll::from_pdu(&pdu).ok_or_else(no_poll)?;
    let tally = tally(rooms, poll)?;
    let Poll {
        event_id,
        room_id,
        sender,
        question,
        answers,
        kind,
        max_selections,
        closes_at,
        ..
    } = tally.poll.clone();
    let shown = tally.ended.is_some() || tally.poll.disclosed() || sender == user;
    let counts = shown.then(|| {
        tally
            .votes
            .counts(&tally.poll)
            .into_iter()
            .map(|(id, n)| (id, n.into()))
            .collect()
    });
    Ok(PollView {
        event_id,
        channel_id: room_id,
        sender,
        question,
        answers,
        kind,
        max_selections,
        closes_at,
        ended: tally.ended.is_some(),
        ended_by: tally.ended,
        voters: tally.votes.by_user.len() as u64,
        counts,
        my_selections: tally.votes.by_user.get(user).cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The answer of spec/polls.md §4.2, built from the same values, is the example.
    #[test]
    fn the_spec_example_is_what_the_endpoint_answers() {
        let text = include_str!("../../../../spec/polls.md");
        let example: Value = text
            .split("```json")
            .skip(1)
            .filter_map(|b| serde_json::from_str::<Value>(b.split("```").next()?).ok())
            .find(|v| v.get("my_selections").is_some())
            .expect("an example answer in spec/polls.md");
        let view = PollView {
            event_id: OwnedEventId::try_from("$poll_start").unwrap(),
            channel_id: OwnedRoomId::try_from("!D-rhbVU2Ws8H_p-QmDQ2G6buYGhUdGU5IwvchKaiTO4")
                .unwrap(),
            sender: OwnedUserId::try_from("@alice:paracord.example").unwrap(),
            question: "Lunch?".into(),
            answers: ["Pizza", "Sushi", "Tacos"]
                .iter()
                .map(|t| Answer {
                    id: t.to_lowercase(),
                    text: (*t).into(),
                })
                .collect(),
            kind: "m.disclosed".into(),
            max_selections: 1,
            closes_at: Some(1_795_003_600_000),
            ended: true,
            ended_by: Some(Ended {
                event_id: OwnedEventId::try_from("$poll_end").unwrap(),
                sender: OwnedUserId::try_from("@alice:paracord.example").unwrap(),
                ts: 1_795_003_600_012,
            }),
            voters: 3,
            counts: json!({ "pizza": 1, "sushi": 2, "tacos": 0 })
                .as_object()
                .cloned(),
            my_selections: vec!["sushi".into()],
        };
        assert_eq!(serde_json::to_value(&view).unwrap(), example);
    }
}
