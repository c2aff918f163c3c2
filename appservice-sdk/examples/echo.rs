//! Echo bot: answers `!echo some text` with `some text`, as its own user.
//!
//! ```sh
//! # 1. A registration for Paracord's appservice directory (prints the YAML):
//! cargo run -p paracord-appservice --example echo -- generate http://127.0.0.1:29318 example.org > echo.yaml
//! # 2. Run the bot next to Paracord:
//! REGISTRATION=echo.yaml HOMESERVER_URL=http://127.0.0.1:8008 SERVER_NAME=example.org \
//!     cargo run -p paracord-appservice --example echo
//! ```
//! Invite `@echobot:example.org` to a room and say `!echo hello`.

use paracord_appservice::{
    parse_command, user_namespace_on, Appservice, Events, Registration, Result,
};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("generate") {
        let url = args.get(2).map_or("http://127.0.0.1:29318", String::as_str);
        let server = args.get(3).map_or("localhost", String::as_str);
        let registration = Registration::generate(
            "echo",
            Some(url),
            "echobot",
            [user_namespace_on("echo_.*", server)],
        );
        print!("{}", registration.to_yaml()?);
        return Ok(());
    }
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let registration = Registration::load(env("REGISTRATION", "echo.yaml"))?;
    let listen = env("LISTEN", "127.0.0.1:29318");
    let (appservice, events) = Appservice::builder(
        registration,
        &env("HOMESERVER_URL", "http://127.0.0.1:8008"),
        &env("SERVER_NAME", "localhost"),
    )
    .build()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tokio::spawn(appservice.clone().serve_listener(listener));
    println!(
        "echo bot {} listening on {listen}",
        appservice.bot_user_id()?
    );
    run(appservice, events).await
}

/// The bot: joins rooms it is invited to and echoes `!echo …`.
pub(crate) async fn run(appservice: Appservice, mut events: Events) -> Result<()> {
    let bot = appservice.bot()?;
    bot.ensure_registered().await?;
    while let Some(event) = events.recv().await {
        let room_id = event.room_id();
        if let (Some(invited), Some(room_id)) = (event.invited_user(), &room_id) {
            if invited == bot.user_id() {
                if let Err(e) = bot.join(room_id.as_str()).await {
                    eprintln!("joining {room_id}: {e}");
                }
            }
            continue;
        }
        let Some(message) = event.message() else {
            continue;
        };
        if message.sender == bot.user_id() || message.is_edit {
            continue;
        }
        match parse_command(&message.body) {
            Some(command) if command.is("echo") && !command.rest.is_empty() => {
                if let Err(e) = bot.send_text(&message.room_id, &command.rest).await {
                    eprintln!("answering in {}: {e}", message.room_id);
                }
            }
            _ => {}
        }
    }
    Ok(())
}
