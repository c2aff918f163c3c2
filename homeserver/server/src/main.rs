//! `paracord`: the Paracord homeserver binary.
//!
//! In an empty folder it writes `config/paracord.toml`, the signing key and the database, then
//! listens and prints the URL to open.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use paracord_core::Config;
use paracord_service::Services;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: glibc's per-thread arenas kept freed memory
/// resident (see docs/benchmarks.md for the peak RSS before and after).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "paracord", version, about = "Paracord homeserver")]
struct Args {
    /// The configuration file (written with every key commented if it does not exist).
    #[arg(long, default_value = "config/paracord.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, created) = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paracord: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // ruma's auth checks log every passing event at info; keep them quiet unless asked for.
    let mut filter = config.log.clone();
    if !filter.contains("ruma_state_res") {
        filter.push_str(",ruma_state_res=warn");
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    if created {
        tracing::info!(path = %args.config.display(), "wrote a new configuration file");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paracord: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paracord: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let listen = config.listen;
    let url = config.public_baseurl();
    let server_name = config.server_name.clone();
    let services =
        Arc::new(Services::open(config).map_err(|e| format!("cannot open the database: {e:?}"))?);
    let app = paracord_api::app(services.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%server_name, %listen, "listening");
    println!("Paracord is running for {server_name} at {url} (listening on {listen})");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown({
        let services = services.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: finishing in-flight requests");
            services.stream.notifier().shutdown();
        }
    })
    .await
    .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("shutting down: flushing the database");
    services
        .db
        .flush()
        .map_err(|e| format!("flush failed: {e}"))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
