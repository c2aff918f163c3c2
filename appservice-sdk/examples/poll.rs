//! Poll bot: `!poll Lunch? | pizza | sushi` posts a poll with one reaction per answer;
//! people vote by reacting, and the bot edits the poll with the counts.
//!
//! Configuration as for the echo example (`REGISTRATION`, `HOMESERVER_URL`, `SERVER_NAME`,
//! `LISTEN`, `STATE` for the JSON state file). Votes are counted once per person and
//! answer; taking a reaction back (a redaction) is not counted down.

use paracord_appservice::{
    parse_command,
    ruma::{OwnedEventId, RoomId},
    Appservice, Events, Intent, JsonFileStore, Registration, Result,
};
use serde_json::{json, Value};

const KEYS: [&str; 9] = ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣", "6️⃣", "7️⃣", "8️⃣", "9️⃣"];

#[tokio::main]
async fn main() -> Result<()> {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let registration = Registration::load(env("REGISTRATION", "poll.yaml"))?;
    let listen = env("LISTEN", "127.0.0.1:29319");
    let (appservice, events) = Appservice::builder(
        registration,
        &env("HOMESERVER_URL", "http://127.0.0.1:8008"),
        &env("SERVER_NAME", "localhost"),
    )
    .store(JsonFileStore::open(env("STATE", "poll-state.json"))?)
    .build()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tokio::spawn(appservice.clone().serve_listener(listener));
    run(appservice, events).await
}

/// The text of a poll with its counts.
fn render(poll: &Value) -> String {
    let mut text = format!("📊 {}", poll["question"].as_str().unwrap_or_default());
    let answers = poll["answers"].as_array().cloned().unwrap_or_default();
    for (i, answer) in answers.iter().enumerate() {
        let votes = poll["votes"][i.to_string()].as_array().map_or(0, Vec::len);
        text.push_str(&format!(
            "\n{} {} — {votes}",
            KEYS[i],
            answer.as_str().unwrap_or_default()
        ));
    }
    text
}

async fn start_poll(bot: &Intent, app: &Appservice, room_id: &RoomId, spec: &str) -> Result<()> {
    let mut parts = spec.split('|').map(str::trim).filter(|p| !p.is_empty());
    let question = parts.next().unwrap_or_default();
    let answers: Vec<&str> = parts.take(KEYS.len()).collect();
    if question.is_empty() || answers.len() < 2 {
        bot.send_notice(room_id, "usage: !poll question | answer | answer …")
            .await?;
        return Ok(());
    }
    let poll = json!({"room_id": room_id, "question": question, "answers": answers, "votes": {}});
    let event_id = bot.send_notice(room_id, &render(&poll)).await?;
    app.store().set(&format!("poll:{event_id}"), poll)?;
    for key in &KEYS[..answers.len()] {
        bot.react(room_id, &event_id, key).await?;
    }
    Ok(())
}

async fn vote(
    bot: &Intent,
    app: &Appservice,
    voter: &str,
    poll_id: &OwnedEventId,
    key: &str,
) -> Result<()> {
    let store_key = format!("poll:{poll_id}");
    let Some(mut poll) = app.store().get(&store_key)? else {
        return Ok(());
    };
    let count = poll["answers"].as_array().map_or(0, Vec::len);
    let Some(index) = KEYS[..count].iter().position(|k| *k == key) else {
        return Ok(());
    };
    let voters = &mut poll["votes"][index.to_string()];
    if !voters.is_array() {
        *voters = json!([]);
    }
    if let Some(list) = voters.as_array_mut() {
        if list.iter().any(|v| v == voter) {
            return Ok(());
        }
        list.push(json!(voter));
    }
    app.store().set(&store_key, poll.clone())?;
    let room_id: &RoomId = poll["room_id"]
        .as_str()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| paracord_appservice::Error::Invalid("poll without a room".into()))?;
    bot.edit(room_id, poll_id, &render(&poll)).await?;
    Ok(())
}

/// The bot: joins when invited, starts polls, counts reactions.
pub(crate) async fn run(appservice: Appservice, mut events: Events) -> Result<()> {
    let bot = appservice.bot()?;
    bot.ensure_registered().await?;
    while let Some(event) = events.recv().await {
        let (Some(sender), Some(room_id)) = (event.sender(), event.room_id()) else {
            continue;
        };
        if sender == bot.user_id() {
            continue;
        }
        let result = if event.invited_user().as_deref() == Some(bot.user_id()) {
            bot.join(room_id.as_str()).await.map(|_| ())
        } else if let Some((poll_id, key)) = event.reaction() {
            vote(&bot, &appservice, sender.as_str(), &poll_id, &key).await
        } else if let Some(command) = event.message().and_then(|m| parse_command(&m.body)) {
            if command.is("poll") {
                start_poll(&bot, &appservice, &room_id, &command.rest).await
            } else {
                Ok(())
            }
        } else {
            Ok(())
        };
        if let Err(e) = result {
            eprintln!("in {room_id}: {e}");
        }
    }
    Ok(())
}
