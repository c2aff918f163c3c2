//! `paracord`: the Paracord homeserver binary.
//!
//! In an empty folder it writes `config/paracord.toml`, the signing key and the database, then
//! listens and prints the URL to open.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use axum::serve::ListenerExt;
use clap::Parser;
use paracord_core::Config;
use paracord_service::Services;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator: glibc's per-thread arenas kept freed memory
/// resident. It also serves RocksDB's C++ (unprefixed), with one arena and freed pages given
/// back within 100 ms by a background thread (`.cargo/config.toml`; `MALLOC_CONF` in the
/// environment overrides it). See docs/benchmarks.md for the peak RSS before and after.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod tls;

/// The web client embedded at compile time (build.rs; empty when `clients/web/dist` was not
/// built).
mod web_assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

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
    // ruma logs every passing auth check at info and opens info spans in push-rule evaluation
    // (one per member and JSON value of every message): quiet unless asked for. A directive
    // for `ruma` covers every `ruma_*` crate (targets match by prefix); a more specific one
    // in the configuration (`ruma_state_res=info`) still wins.
    let mut filter = config.log.clone();
    if !filter
        .split(',')
        .any(|d| d.trim() == "ruma" || d.trim().starts_with("ruma="))
    {
        filter.push_str(",ruma=warn");
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
    if config.sync_writes {
        tracing::info!("sync_writes = true: writes are on disk before they are acknowledged");
    } else {
        tracing::warn!(
            "sync_writes = false: an acknowledged write survives the server being killed, \
             not a power loss or an operating-system crash"
        );
    }
    if !config.federation_verify_tls {
        tracing::warn!(
            "federation_verify_tls = false: other servers' certificates are not checked; \
             this is for tests only"
        );
    }
    // Before the database opens, so a bad certificate fails the start at once.
    let tls = match config.tls_listen {
        Some(addr) => Some((addr, tls::server_config(&config)?)),
        None => None,
    };
    let services = Arc::new(Services::open(config).map_err(|e| format!("cannot start: {e}"))?);
    paracord_service::guilds::members::resume_timeouts(services.rooms.clone());
    let app = paracord_api::app_with_web(services.clone(), web_assets::WEB_ASSETS);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let tls_listener = match tls {
        Some((addr, tls)) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (tls_listen): {e}"))?;
            let listener = tls::TlsListener::new(tcp, tls)
                .map_err(|e| format!("cannot listen on {addr} (tls_listen): {e}"))?;
            tracing::info!(%addr, "listening for TLS");
            Some(listener)
        }
        None => None,
    };
    tracing::info!(%server_name, %listen, "listening");
    println!("Paracord is running for {server_name} at {url} (listening on {listen})");
    // A server without an admin hands admin to whoever holds this token, never to whoever
    // registers first: it is shown to the operator, on the console and in the log.
    match services.accounts.admin_registration_token() {
        Ok(Some(token)) => {
            tracing::warn!(
                "no admin account yet: register the first admin with the one-time \
                 registration token printed on the console"
            );
            println!(
                "No admin account yet. Register one with this one-time registration token \
                 (the registration token field of a Matrix client, or \
                 m.login.registration_token): {token}"
            );
        }
        Ok(None) => {}
        Err(e) => return Err(format!("cannot read the admin registration token: {e}")),
    }

    // One signal stops both listeners: each stops accepting and finishes its requests.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let services = services.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested: finishing in-flight requests");
            services.stream.notifier().shutdown();
            let _ = stop_tx.send(true);
        }
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let plain = axum::serve(
        listener,
        app.clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let secure = async {
        match tls_listener {
            // `tap_io` only to get axum's `ConnectInfo<SocketAddr>` for a custom listener.
            Some(listener) => {
                axum::serve(
                    listener.tap_io(|_| ()),
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopped(stop_rx))
                .await
            }
            None => Ok(()),
        }
    };
    let (plain, secure) = tokio::join!(plain, secure);
    plain.map_err(|e| format!("server error: {e}"))?;
    secure.map_err(|e| format!("TLS server error: {e}"))?;
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
