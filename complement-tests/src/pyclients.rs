//! Python clients of Paracord's Discord-compatible surfaces, from PyPI, for interoperability
//! tests: the `discord-webhook` package (webhook executions as Discord tools send them).
//!
//! It lives in a virtualenv at `$HOME/.cache/paracord/discord-webhook-venv`
//! (`PARACORD_DISCORD_WEBHOOK_VENV` points elsewhere), installed there on first use
//! ([`crate::venv`]).

use std::path::PathBuf;

use crate::venv::{self, Venv};

/// The virtualenv holding `discord-webhook`.
pub fn discord_webhook_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("PARACORD_DISCORD_WEBHOOK_VENV") {
        return PathBuf::from(dir);
    }
    venv::cache_dir("discord-webhook-venv")
}

/// Installs `discord-webhook` unless it is importable; returns the venv's Python.
pub fn ensure_discord_webhook() -> PathBuf {
    Venv {
        dir: discord_webhook_venv(),
        packages: &["discord-webhook"],
        probe: "import discord_webhook",
    }
    .ensure()
}
