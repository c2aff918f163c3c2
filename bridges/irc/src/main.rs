//! `paracord-irc`: an IRC bridge for Matrix, as an application service.
//!
//! ```sh
//! paracord-irc --config irc.yaml --generate   # writes the registration file
//! paracord-irc --config irc.yaml              # runs the bridge
//! ```
//! See `bridges/README.md`.

mod bridge;
mod config;
mod conn;
mod format;
mod proto;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use paracord_appservice::{Appservice, JsonFileStore, Registration};

use crate::{bridge::Bridge, config::Config};

/// An IRC bridge for Matrix.
#[derive(Debug, Parser)]
#[command(name = "paracord-irc", version)]
struct Args {
    /// The configuration file (YAML).
    #[arg(short, long, default_value = "irc.yaml")]
    config: PathBuf,
    /// Write a new registration to the configured `registration` path (which must not exist
    /// yet) and exit.
    #[arg(long)]
    generate: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paracord-irc: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> paracord_appservice::Result<()> {
    let config = Config::load(&args.config)?;
    if args.generate {
        // New tokens would lock out the homeserver's copy of the old file.
        if config.registration.exists() {
            return Err(paracord_appservice::Error::Invalid(format!(
                "{} exists; delete it first to generate a new registration",
                config.registration.display()
            )));
        }
        config.registration().save(&config.registration)?;
        println!(
            "wrote {}; copy it to the homeserver's appservice directory",
            config.registration.display()
        );
        return Ok(());
    }
    let registration = Registration::load(&config.registration)?;
    let bridge_cell: Arc<std::sync::OnceLock<Arc<Bridge>>> = Arc::default();
    let cell = bridge_cell.clone();
    let (app, events) =
        Appservice::builder(registration, &config.homeserver_url, &config.server_name)
            .store(JsonFileStore::open(&config.state)?)
            .on_alias_query(move |_, alias| {
                let bridge = cell.get().cloned();
                async move {
                    match bridge {
                        Some(b) => b.on_alias_query(alias.alias()).await,
                        None => false,
                    }
                }
            })
            .build()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!("appservice listening on {}", config.listen);
    tokio::spawn(app.clone().serve_listener(listener));
    let (bridge, irc_events) = Bridge::start(app, config).await?;
    let _ = bridge_cell.set(bridge.clone());
    tokio::spawn(bridge.clone().run_irc(irc_events));
    bridge.run_matrix(events).await;
    Ok(())
}
