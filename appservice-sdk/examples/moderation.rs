//! Moderation bot: redacts messages containing a banned word and warns their author.
//!
//! `BANNED_WORDS=spam,scam` (comma separated, matched case-insensitively as whole words),
//! plus the configuration of the echo example. The bot needs the power to redact other
//! people's messages (moderator, power level 50, by default).

use paracord_appservice::{Appservice, Events, Message, Registration, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let registration = Registration::load(env("REGISTRATION", "moderation.yaml"))?;
    let listen = env("LISTEN", "127.0.0.1:29320");
    let words = env("BANNED_WORDS", "spam")
        .split(',')
        .map(|w| w.trim().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let (appservice, events) = Appservice::builder(
        registration,
        &env("HOMESERVER_URL", "http://127.0.0.1:8008"),
        &env("SERVER_NAME", "localhost"),
    )
    .build()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tokio::spawn(appservice.clone().serve_listener(listener));
    run(appservice, events, words).await
}

/// The first banned word in `body`, matching whole words case-insensitively.
fn banned_word<'a>(body: &str, words: &'a [String]) -> Option<&'a str> {
    let lower = body.to_lowercase();
    let said: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .iter()
        .find(|w| said.contains(&w.as_str()))
        .map(String::as_str)
}

/// The bot: joins when invited, redacts and warns.
pub(crate) async fn run(
    appservice: Appservice,
    mut events: Events,
    words: Vec<String>,
) -> Result<()> {
    let bot = appservice.bot()?;
    bot.ensure_registered().await?;
    while let Some(event) = events.recv().await {
        if let (Some(invited), Some(room_id)) = (event.invited_user(), event.room_id()) {
            if invited == bot.user_id() {
                if let Err(e) = bot.join(room_id.as_str()).await {
                    eprintln!("joining {room_id}: {e}");
                }
            }
            continue;
        }
        let Some(Message {
            room_id,
            event_id,
            sender,
            body,
            ..
        }) = event.message()
        else {
            continue;
        };
        if sender == bot.user_id() {
            continue;
        }
        let Some(word) = banned_word(&body, &words) else {
            continue;
        };
        let reason = format!("contains the banned word {word:?}");
        let warned = async {
            bot.redact(&room_id, &event_id, Some(&reason)).await?;
            bot.send_notice(
                &room_id,
                &format!("{sender}: your message was removed because it {reason}."),
            )
            .await
        };
        if let Err(e) = warned.await {
            eprintln!("moderating {event_id} in {room_id}: {e}");
        }
    }
    Ok(())
}
