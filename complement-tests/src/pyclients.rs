//! Python clients of Paracord's Discord-compatible surfaces, from PyPI, for interoperability
//! tests: the `discord-webhook` package (webhook executions as Discord tools send them).
//!
//! It lives in a virtualenv at `$HOME/.cache/paracord/discord-webhook-venv`
//! (`PARACORD_DISCORD_WEBHOOK_VENV` points elsewhere). When it is missing it is installed there
//! first (`python3 -m venv` + `pip install discord-webhook`, once), built under a temporary
//! name next to it and renamed into place as the Synapse venv is ([`crate::synapse`]), so
//! concurrent test processes never see half an install.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Serialises installs within this process; across processes the rename decides.
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The virtualenv holding `discord-webhook`.
pub fn discord_webhook_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("PARACORD_DISCORD_WEBHOOK_VENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| panic!("expected HOME to be set"));
    PathBuf::from(home).join(".cache/paracord/discord-webhook-venv")
}

fn python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

fn importable(venv: &Path) -> bool {
    Command::new(python(venv))
        .args(["-c", "import discord_webhook"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("expected to run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs `discord-webhook` into [`discord_webhook_venv`] unless it is importable there;
/// returns the venv's Python.
pub fn ensure_discord_webhook() -> PathBuf {
    let venv = discord_webhook_venv();
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if importable(&venv) {
        return python(&venv);
    }
    let parent = venv
        .parent()
        .unwrap_or_else(|| panic!("expected {} to have a parent", venv.display()));
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("expected to create {}: {e}", parent.display()));
    let staging = tempfile::Builder::new()
        .prefix("discord-webhook-venv.partial-")
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("expected a staging directory in {}: {e}", parent.display()));
    eprintln!("installing discord-webhook into {} (once)", venv.display());
    run(
        Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(staging.path()),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    );
    run(
        Command::new(python(staging.path())).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "discord-webhook",
        ]),
        "pip install discord-webhook",
    );
    if venv.exists() && !importable(&venv) {
        std::fs::remove_dir_all(&venv)
            .unwrap_or_else(|e| panic!("expected to remove {}: {e}", venv.display()));
    }
    let staged = staging.keep();
    if std::fs::rename(&staged, &venv).is_err() {
        // Another process finished first; use its install.
        let _ = std::fs::remove_dir_all(&staged);
    }
    assert!(
        importable(&venv),
        "expected discord_webhook to be importable from {} after installing it",
        venv.display()
    );
    python(&venv)
}
