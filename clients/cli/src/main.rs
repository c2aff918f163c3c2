//! `paracord-cli`: a scriptable Matrix client with end-to-end encryption.
//!
//! Every subcommand is one non-interactive run: it opens the client state kept in
//! `--store DIR` (the login session plus matrix-sdk's SQLite state and crypto stores),
//! catches up with one incremental `/sync`, does its work, sends any pending end-to-end
//! encryption requests and exits. Exit status 0 means the command did what it says.

mod commands;
mod session;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Command-line Matrix client with end-to-end encryption (Olm/Megolm, cross-signing,
/// server-side key backup), for Paracord or any Matrix homeserver.
#[derive(Debug, Parser)]
#[command(name = "paracord-cli", version)]
struct Cli {
    /// Directory holding this client's session and encryption keys (created by `login`).
    #[arg(
        long,
        env = "PARACORD_CLI_STORE",
        global = true,
        default_value = ".paracord-cli"
    )]
    store: PathBuf,

    /// Print machine-readable JSON (one object per line for lists).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in with a password and create a new device in --store.
    Login {
        /// Homeserver base URL, e.g. https://chat.example.org.
        #[arg(long)]
        homeserver: String,
        /// User id (@name:server) or localpart.
        #[arg(long)]
        user: String,
        /// Account password.
        #[arg(long, env = "PARACORD_CLI_PASSWORD", hide_env_values = true)]
        password: String,
        /// Display name of the new device.
        #[arg(long, default_value = "paracord-cli")]
        device_name: String,
        /// Do not set up cross-signing for the account when it has none yet.
        #[arg(long)]
        no_cross_signing: bool,
    },
    /// List joined rooms and pending invites.
    Rooms,
    /// Join a room by id or alias (also accepts a pending invite).
    Join {
        /// Room id (!…) or alias (#…).
        room: String,
    },
    /// Send a text message (encrypted when the room is).
    Send {
        /// Room id (!…), alias (#…), or a user id (@…) for the direct chat with them.
        room: String,
        /// Message text.
        text: String,
    },
    /// Print the last messages of a room, decrypted.
    Tail {
        /// Room id (!…), alias (#…), or a user id (@…) for the direct chat with them.
        room: String,
        /// How many messages to print.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Keep syncing for up to this many seconds until `count` messages are there
        /// and all of them decrypt; exit status 1 if that does not happen in time.
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// Open (or reuse) an encrypted direct chat with a user; prints its room id.
    ///
    /// Reuses a joined direct room with the user, else joins their pending direct
    /// invite, else creates a room marked `is_direct` with `m.room.encryption`
    /// (`m.megolm.v1.aes-sha2`) and invites them.
    Dm {
        /// The other user's id (@name:server).
        user: String,
    },
    /// Mark a device as verified through cross-signing.
    ///
    /// Your own device is signed with your self-signing key; another user's
    /// identity is signed with your user-signing key, which verifies every device
    /// they cross-signed. Cross-signing is set up first when the account has none.
    Verify {
        /// Owner of the device.
        user: String,
        /// The device id.
        device: String,
        /// Account password, needed only when cross-signing must be set up.
        #[arg(long, env = "PARACORD_CLI_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Enable server-side key backup (with secret storage), upload the room keys,
    /// and print the recovery key.
    Backup {
        /// Account password, needed only when cross-signing must be set up.
        #[arg(long, env = "PARACORD_CLI_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Replace the recovery key when backup is already enabled.
        #[arg(long)]
        reset_key: bool,
    },
    /// Restore secrets and room keys from the server-side backup with a recovery key.
    Restore {
        /// The recovery key printed by `backup` (or by another client).
        recovery_key: String,
    },
    /// Show this device, the account's cross-signing state and the backup state.
    Whoami,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // reqwest 0.13 inside matrix-sdk is built without a TLS provider of its own: install
    // ring once for the process, even when every URL is http://.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("paracord-cli: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paracord-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, off unless `RUST_LOG` asks for them.
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}
