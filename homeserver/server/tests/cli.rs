#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test stops where it fails
//! The binary's first start, as an operator sees it. These tests also make `cargo test` build
//! the `paracord` binary that the black-box suites spawn, with the same features.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_paracord");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn zero_config_start_writes_config_key_and_database_and_prints_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("PARACORD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut printed = None;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.contains("http://") {
                printed = Some(line);
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let printed = printed.expect("the server printed its URL");
    assert!(
        printed.contains(&format!("http://127.0.0.1:{port}")),
        "printed: {printed}"
    );
    let config = std::fs::read_to_string(dir.path().join("config/paracord.toml")).unwrap();
    assert!(
        config.contains("#server_name = \"localhost\""),
        "every key commented: {config}"
    );
    let key = std::fs::read_to_string(dir.path().join("data/signing.key")).unwrap();
    assert!(key.starts_with("ed25519 a_"), "signing key written: {key}");
    assert!(
        dir.path().join("data/db/CURRENT").exists(),
        "RocksDB created"
    );
}

#[test]
fn bad_configuration_is_reported_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("PARACORD_DEFAULT_ROOM_VERSION", "99")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default_room_version"), "stderr: {err}");
}

#[test]
fn config_flag_selects_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, "server_name = \"not a valid name!\"\n").unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server_name"), "stderr: {err}");
    assert!(
        !dir.path().join("config/paracord.toml").exists(),
        "the default file is not written"
    );
}
