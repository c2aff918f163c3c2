//! `paracord-load`: command-line front end of the load tool. Prints one JSON
//! line per scenario (per step for `growth`) to stdout; progress and errors
//! go to stderr.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use paracord_load::{
    appservice, fanout, growth, initial_sync, media, paginate, register, remote_join, rooms,
    rtc_token, run_all, search, send, AppserviceParams, AppserviceRegistration, FanoutParams,
    GrowthParams, InitialSyncParams, LoadError, MediaParams, PaginateParams, RegisterParams,
    Registration, RemoteJoinParams, Report, RoomsParams, RtcTokenParams, Scale, SearchParams,
    SendParams, Target,
};

#[derive(Parser, Debug)]
#[command(
    name = "paracord-load",
    about = "Drives a Matrix homeserver through the client-server API and reports rates and \
             latencies as JSON lines"
)]
struct Cli {
    /// The homeserver's client API base URL, e.g. http://127.0.0.1:8008.
    #[arg(long)]
    base_url: String,
    /// How to create users.
    #[arg(long, value_enum, default_value_t = RegisterMethod::Dummy)]
    register: RegisterMethod,
    /// The registration shared secret (with --register shared-secret).
    #[arg(long)]
    secret: Option<String>,
    /// PID of the server process, if local: reports include its peak RSS
    /// and CPU seconds.
    #[arg(long)]
    pid: Option<u32>,
    /// Requests kept in flight by batch phases (1..=64).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Time limit of each scenario, in seconds (1..=3600).
    #[arg(long, default_value_t = 600)]
    time_limit: u64,
    /// Allow a base URL that is not on loopback.
    #[arg(long)]
    allow_remote: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegisterMethod {
    /// POST /register completing the m.login.dummy stage.
    Dummy,
    /// Synapse's shared-secret admin API (needs --secret).
    SharedSecret,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Register and log in N users.
    Register(RegisterParams),
    /// Create R rooms and have U users join each.
    Rooms(RoomsParams),
    /// M messages into one room from S concurrent senders.
    Send(SendParams),
    /// K long-polling listeners, one sender: delivery latency.
    Fanout(FanoutParams),
    /// Initial and incremental /sync of a user in R rooms of H messages.
    InitialSync(InitialSyncParams),
    /// /messages backwards through H messages in pages of P.
    Paginate(PaginateParams),
    /// Rooms, members and history doubled step by step.
    Growth(GrowthParams),
    /// Q full-text searches over a room of H messages.
    Search(SearchParams),
    /// N uploads of B bytes, their downloads, and thumbnails of a small PNG.
    Media(MediaParams),
    /// A user of a second server (--joiner-url, same registration) joins a room of M members
    /// on this one over federation.
    RemoteJoin(RemoteJoinParams),
    /// M messages from S senders into a room an application service's bot is in: the tool is
    /// the appservice (the server's registration points at --appservice-listen) and measures
    /// delivery.
    Appservice(AppserviceParams),
    /// R LiveKit tokens from the server's MatrixRTC focus (MSC4195 get_token), asked for by
    /// C concurrent clients, each for a fresh member id; `unsupported` on a server that
    /// answers 404 M_UNRECOGNIZED.
    #[command(alias = "rtc_token")]
    RtcToken(RtcTokenParams),
    /// Every scenario at one scale (`appservice` after `media` when its registration is
    /// given, `rtc-token` last).
    All {
        #[arg(long, value_enum, default_value_t = Scale::Tiny)]
        scale: Scale,
        /// The appservice registration the server was started with (all four
        /// `--appservice-*` options, or none).
        #[arg(long, requires_all = ["as_token", "hs_token"])]
        appservice_listen: Option<std::net::SocketAddr>,
        #[arg(long = "appservice-as-token", id = "as_token")]
        appservice_as_token: Option<String>,
        #[arg(long = "appservice-hs-token", id = "hs_token")]
        appservice_hs_token: Option<String>,
        #[arg(long, default_value = "loadbot")]
        appservice_bot: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("paracord-load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen scenario; `Ok(false)` when a scenario failed outright or
/// counted errors (the JSON lines are printed either way).
async fn run(cli: Cli) -> Result<bool, LoadError> {
    let registration = match (cli.register, cli.secret.clone()) {
        (RegisterMethod::Dummy, _) => Registration::Dummy,
        (RegisterMethod::SharedSecret, Some(secret)) => Registration::SharedSecret(secret),
        (RegisterMethod::SharedSecret, None) => {
            return Err(LoadError::Params(
                "--register shared-secret needs --secret".into(),
            ))
        }
    };
    let target = if cli.allow_remote {
        Target::new_remote(&cli.base_url, registration)?
    } else {
        Target::new(&cli.base_url, registration)?
    };
    let target = target
        .with_pid(cli.pid)
        .with_concurrency(cli.concurrency)?
        .with_time_limit(Duration::from_secs(cli.time_limit))?;
    let print = |r: &Report| {
        println!("{}", r.to_json_line());
        if let Some(why) = &r.unsupported {
            eprintln!("paracord-load: {}: not supported: {why}", r.scenario);
        }
        if let Some(e) = &r.first_error {
            eprintln!(
                "paracord-load: {}: {} error(s), first: {e}",
                r.scenario, r.errors
            );
        }
    };
    let reports = match cli.scenario {
        Scenario::Register(p) => vec![register(&target, &p).await?],
        Scenario::Rooms(p) => vec![rooms(&target, &p).await?],
        Scenario::Send(p) => vec![send(&target, &p).await?],
        Scenario::Fanout(p) => vec![fanout(&target, &p).await?],
        Scenario::InitialSync(p) => vec![initial_sync(&target, &p).await?],
        Scenario::Paginate(p) => vec![paginate(&target, &p).await?],
        Scenario::Growth(p) => growth(&target, &p).await?,
        Scenario::Search(p) => vec![search(&target, &p).await?],
        Scenario::Media(p) => vec![media(&target, &p).await?],
        Scenario::Appservice(p) => vec![appservice(&target, &p).await?],
        Scenario::RtcToken(p) => vec![rtc_token(&target, &p).await?],
        Scenario::RemoteJoin(p) => {
            let joiner_registration = match (cli.register, cli.secret) {
                (RegisterMethod::SharedSecret, Some(secret)) => Registration::SharedSecret(secret),
                _ => Registration::Dummy,
            };
            let joiner = if cli.allow_remote {
                Target::new_remote(&p.joiner_url, joiner_registration)?
            } else {
                Target::new(&p.joiner_url, joiner_registration)?
            }
            .with_concurrency(cli.concurrency)?
            .with_time_limit(Duration::from_secs(cli.time_limit))?;
            vec![remote_join(&target, &joiner, &p).await?]
        }
        Scenario::All {
            scale,
            appservice_listen,
            appservice_as_token,
            appservice_hs_token,
            appservice_bot,
        } => {
            let registration = match (appservice_listen, appservice_as_token, appservice_hs_token) {
                (Some(listen), Some(as_token), Some(hs_token)) => Some(AppserviceRegistration {
                    listen,
                    as_token,
                    hs_token,
                    bot: appservice_bot,
                }),
                _ => None,
            };
            return Ok(run_all(&target, scale, registration.as_ref(), print)
                .await
                .iter()
                .all(|r| !r.failed && r.errors == 0));
        }
    };
    for r in &reports {
        print(r);
    }
    Ok(reports.iter().all(|r| !r.failed && r.errors == 0))
}
